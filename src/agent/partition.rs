//! The root disk's partition table: read it (MBR or GPT), and add one small
//! partition at the end of the disk for the cloud-init seed.
//!
//! The agent writes an OS image that was made for a smaller disk, so after the
//! write the partitions end well before the disk does and, with GPT, the
//! backup header sits where the image ended. [`append_partition`] moves the
//! backup GPT to the disk's real end (as the UEFI specification, chapter 5,
//! wants it), fixes the protective MBR's size, and adds the partition in the
//! last MiB-aligned space; with MBR it fills a free primary slot. It never
//! moves or resizes an existing partition.
//!
//! The layout code is written here from the UEFI specification rather than
//! taken from `gptman`/`mbrman`: those pull in serialization frameworks for a
//! few hundred lines of well-specified layout, and the agent is a static
//! binary in a ramdisk.
//!
//! A disk without a table reads as `Ok(None)` (wiping a blank disk is not an
//! error); [`append_partition`] turns it into [`PartitionError::NoPartitionTable`].
//! Every size read from the disk is bounded before it is used to allocate or
//! to address the disk: a corrupt table is an error, never a panic.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use thiserror::Error;
use tracing::{info, warn};

pub const MIB: u64 = 1 << 20;

/// Partitions are placed on 1 MiB boundaries, as every current partitioning
/// tool does: it is a multiple of every logical and physical sector size and
/// of the erase blocks of most SSDs.
const ALIGNMENT: u64 = MIB;

/// The MBR partition type of the seed: FAT32 with LBA addressing, which
/// firmware and Linux accept for FAT12/16 filesystems too.
pub const MBR_TYPE_FAT32_LBA: u8 = 0x0c;
/// The MBR type of a protective MBR's single entry (UEFI 2.10, 5.2.3).
const MBR_TYPE_PROTECTIVE: u8 = 0xee;
const MBR_SIGNATURE: [u8; 2] = [0x55, 0xaa];
const MBR_ENTRIES_OFFSET: usize = 446;
const MBR_ENTRY_SIZE: usize = 16;

const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
const GPT_REVISION_1_0: u32 = 0x0001_0000;
const GPT_HEADER_SIZE: u32 = 92;
/// Entries are 128 × 2^n bytes (UEFI 5.3.1); nothing uses more than 128, so
/// anything past this bound is taken for corruption.
const GPT_MAX_ENTRY_SIZE: u32 = 4096;
/// The entry array is read whole; 1 MiB is 8192 entries of 128 bytes, 64
/// times the usual 128 entries.
const GPT_MAX_ENTRIES_BYTES: u64 = MIB;
/// A GPT partition name is 36 UTF-16 code units.
const GPT_NAME_UNITS: usize = 36;

/// Smallest and largest logical sector sizes girder handles.
const MIN_SECTOR_SIZE: u64 = 512;
const MAX_SECTOR_SIZE: u64 = 4096;

/// A new partition this small or smaller is zeroed whole (the seed is
/// 16 MiB), so that nothing left from an earlier installation, such as a RAID
/// superblock near its end, is found in it; a larger one only at both ends.
const ZERO_WHOLE_PARTITION_UP_TO: u64 = 64 * MIB;

// Linux block device ioctls (include/uapi/linux/fs.h). BLKGETSIZE64 is
// declared with `size_t` but writes a u64.
nix::ioctl_read_bad!(blk_get_size64, nix::request_code_read!(0x12, 114, std::mem::size_of::<usize>()), u64);
nix::ioctl_read_bad!(blk_get_logical_sector_size, nix::request_code_none!(0x12, 104), std::ffi::c_int);

/// A disk, or a disk image in a regular file, opened for reading and writing,
/// with the geometry its partition table is laid out in.
#[derive(Debug)]
pub struct Device {
    file: File,
    path: PathBuf,
    size_bytes: u64,
    sector_size: u64,
    is_block_device: bool,
}

impl Device {
    /// Opens a disk (`/dev/vdb`) or an image file for reading and writing.
    pub fn open(path: &Path) -> Result<Self, PartitionError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| PartitionError::OpenFailed { path: path.to_path_buf(), source })?;
        Self::from_file(file, path)
    }

    /// Wraps a file already open for reading and writing; `path` names it in
    /// errors. The size and logical sector size come from the kernel for a
    /// block device; an image file has its length and 512-byte sectors.
    pub fn from_file(file: File, path: &Path) -> Result<Self, PartitionError> {
        let path = path.to_path_buf();
        let geometry_error = |source: io::Error| PartitionError::GeometryUnknown { path: path.clone(), source };
        let metadata = file.metadata().map_err(geometry_error)?;
        let is_block_device = metadata.file_type().is_block_device();
        let (size_bytes, sector_size) = if is_block_device {
            block_device_geometry(&file).map_err(geometry_error)?
        } else if metadata.is_file() {
            (metadata.len(), MIN_SECTOR_SIZE)
        } else {
            return Err(geometry_error(io::Error::new(
                io::ErrorKind::InvalidInput,
                "it is neither a block device nor a regular file",
            )));
        };
        if !(MIN_SECTOR_SIZE..=MAX_SECTOR_SIZE).contains(&sector_size) || !sector_size.is_power_of_two() {
            return Err(PartitionError::UnsupportedSectorSize { path, sector_size });
        }
        Ok(Self { file, path, size_bytes, sector_size, is_block_device })
    }

    /// Reads an image file as a disk with `sector_size`-byte logical sectors,
    /// e.g. an image made for a 4Kn disk. A block device keeps the kernel's
    /// value: asking for another one is an error.
    pub fn with_logical_sector_size(mut self, sector_size: u64) -> Result<Self, PartitionError> {
        let supported = (MIN_SECTOR_SIZE..=MAX_SECTOR_SIZE).contains(&sector_size) && sector_size.is_power_of_two();
        if !supported || (self.is_block_device && sector_size != self.sector_size) {
            return Err(PartitionError::UnsupportedSectorSize { path: self.path, sector_size });
        }
        self.sector_size = sector_size;
        Ok(self)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Logical sector size in bytes: 512 or 4096 on real disks.
    pub fn sector_size(&self) -> u64 {
        self.sector_size
    }

    pub fn is_block_device(&self) -> bool {
        self.is_block_device
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Whole logical sectors on the device.
    pub fn sectors(&self) -> u64 {
        self.size_bytes / self.sector_size
    }

    /// Reads exactly `buf.len()` bytes at `offset`, which must lie within the
    /// device.
    pub(crate) fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        self.file.read_exact_at(buf, offset)
    }

    /// Writes all of `buf` at `offset`; refuses anything that would reach past
    /// the end of the device (a regular file would silently grow).
    pub(crate) fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        self.file.write_all_at(buf, offset)
    }

    /// Writes `len` zero bytes at `offset`, in chunks of at most 1 MiB.
    pub(crate) fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check_range(offset, len)?;
        let chunk = vec![0u8; len.min(MIB) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(chunk.len() as u64);
            self.file.write_all_at(&chunk[..n as usize], offset + done)?;
            done += n;
        }
        Ok(())
    }

    /// Flushes data and metadata to the disk.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    fn check_range(&self, offset: u64, len: u64) -> io::Result<()> {
        let fits = offset.checked_add(len).is_some_and(|end| end <= self.size_bytes);
        if fits {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{len} bytes at byte {offset} reach past the end of the device ({} bytes)", self.size_bytes),
            ))
        }
    }
}

fn block_device_geometry(file: &File) -> io::Result<(u64, u64)> {
    use std::os::fd::AsRawFd;
    let mut size: u64 = 0;
    let mut sector_size: std::ffi::c_int = 0;
    // SAFETY: both ioctls write one value of the pointed-to type and the
    // descriptor is a block device kept open by `file`.
    unsafe {
        blk_get_size64(file.as_raw_fd(), &mut size).map_err(io::Error::from)?;
        blk_get_logical_sector_size(file.as_raw_fd(), &mut sector_size).map_err(io::Error::from)?;
    }
    let sector_size = u64::try_from(sector_size)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "the kernel reports a negative sector size"))?;
    Ok((size, sector_size))
}

/// A GUID as GPT stores it: the first three fields little-endian, the last
/// two as bytes (UEFI Appendix A).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    pub const ZERO: Guid = Guid([0; 16]);

    /// Parses the usual text form, e.g. `EBD0A0A2-B9E5-4433-87C0-68B6B72699C7`.
    pub fn parse(text: &str) -> Option<Guid> {
        let groups: Vec<&str> = text.split('-').collect();
        let lengths = [8, 4, 4, 4, 12];
        if groups.len() != 5 || groups.iter().zip(lengths).any(|(g, n)| g.len() != n) {
            return None;
        }
        let hex: String = groups.concat();
        let mut text_order = [0u8; 16];
        for (i, byte) in text_order.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Guid::from_text_order(text_order))
    }

    /// A random (version 4, RFC 4122 variant) GUID.
    pub fn random() -> Guid {
        let mut text_order: [u8; 16] = rand::random();
        text_order[6] = (text_order[6] & 0x0f) | 0x40;
        text_order[8] = (text_order[8] & 0x3f) | 0x80;
        Guid::from_text_order(text_order)
    }

    fn from_text_order(t: [u8; 16]) -> Guid {
        Guid([t[3], t[2], t[1], t[0], t[5], t[4], t[7], t[6], t[8], t[9], t[10], t[11], t[12], t[13], t[14], t[15]])
    }

    fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9]
        )?;
        b[10..].iter().try_for_each(|byte| write!(f, "{byte:02X}"))
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Microsoft basic data, the GPT type of the seed: what a FAT filesystem
/// other than an EFI system partition carries. EBD0A0A2-B9E5-4433-87C0-68B6B72699C7.
pub const GPT_TYPE_BASIC_DATA: Guid =
    Guid([0xa2, 0xa0, 0xd0, 0xeb, 0xe5, 0xb9, 0x33, 0x44, 0x87, 0xc0, 0x68, 0xb6, 0xb7, 0x26, 0x99, 0xc7]);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableKind {
    Mbr,
    Gpt,
}

impl fmt::Display for TableKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TableKind::Mbr => "MBR",
            TableKind::Gpt => "GPT",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionType {
    /// The MBR system ID byte, e.g. 0x83 (Linux) or 0x05 (extended).
    Mbr(u8),
    /// The GPT partition type GUID.
    Gpt(Guid),
}

/// One partition the table lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// As Linux numbers it: the MBR slot (1 to 4) or the GPT entry index + 1.
    pub number: u32,
    pub start_bytes: u64,
    pub size_bytes: u64,
    pub partition_type: PartitionType,
    /// The GPT partition name; MBR partitions have none.
    pub name: Option<String>,
    /// The GPT unique partition GUID (what `PARTUUID=` names).
    pub guid: Option<Guid>,
}

impl Partition {
    pub fn end_bytes(&self) -> u64 {
        self.start_bytes + self.size_bytes
    }
}

/// The parts of a GPT header the agent reports or acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GptDetails {
    pub disk_guid: Guid,
    pub first_usable_lba: u64,
    pub last_usable_lba: u64,
    /// Where the header read says the other header is: for the primary, the
    /// backup's LBA (the end of the image, before [`append_partition`]).
    pub alternate_lba: u64,
    pub entry_count: u32,
    pub entry_size: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionTable {
    pub kind: TableKind,
    pub sector_size: u64,
    /// In table order (MBR slots, GPT entries), empty entries left out.
    pub partitions: Vec<Partition>,
    pub gpt: Option<GptDetails>,
    /// Why the primary GPT could not be used, when the table was read from
    /// the backup.
    pub primary_damage: Option<String>,
}

/// Why the partition table cannot be read or changed.
#[derive(Debug, Error)]
pub enum PartitionError {
    #[error("cannot open disk {path} for reading and writing: {source}")]
    OpenFailed { path: PathBuf, source: io::Error },
    #[error("cannot read the size of disk {path}: {source}")]
    GeometryUnknown { path: PathBuf, source: io::Error },
    #[error("disk {path} has {sector_size}-byte logical sectors; girder handles 512 to 4096 (a power of two)")]
    UnsupportedSectorSize { path: PathBuf, sector_size: u64 },
    #[error("cannot read {what} from disk {path}: {source}")]
    ReadFailed { path: PathBuf, what: String, source: io::Error },
    #[error("cannot write {what} to disk {path}: {source}")]
    WriteFailed { path: PathBuf, what: String, source: io::Error },
    #[error(
        "disk {path} has no partition table (no MBR or GPT); the image written to it should carry one, check that it is a whole-disk image"
    )]
    NoPartitionTable { path: PathBuf },
    #[error("the partition table on disk {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "the {kind} on disk {path} has no free entry for another partition (all {slots} are used); use an image that leaves one free"
    )]
    NoFreeSlot { path: PathBuf, kind: TableKind, slots: usize },
    #[error("disk {path} has no room for a {size} partition at its end: {detail}")]
    NoRoom { path: PathBuf, size: String, detail: String },
    #[error(
        "disk {path} ({size}) is larger than an MBR can address with {sector_size}-byte sectors ({limit}); use a GPT image on this disk"
    )]
    DiskTooLargeForMbr { path: PathBuf, size: String, sector_size: u64, limit: String },
    #[error("cannot add a partition to disk {path}: {detail}")]
    InvalidRequest { path: PathBuf, detail: String },
}

impl PartitionError {
    /// A stable CamelCase reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            PartitionError::OpenFailed { .. } => "DiskOpenFailed",
            PartitionError::GeometryUnknown { .. } => "DiskGeometryUnknown",
            PartitionError::UnsupportedSectorSize { .. } => "UnsupportedSectorSize",
            PartitionError::ReadFailed { .. } => "DiskReadFailed",
            PartitionError::WriteFailed { .. } => "DiskWriteFailed",
            PartitionError::NoPartitionTable { .. } => "NoPartitionTable",
            PartitionError::Corrupt { .. } => "PartitionTableCorrupt",
            PartitionError::NoFreeSlot { .. } => "NoFreePartitionSlot",
            PartitionError::NoRoom { .. } => "NoRoomForPartition",
            PartitionError::DiskTooLargeForMbr { .. } => "DiskTooLargeForMbr",
            PartitionError::InvalidRequest { .. } => "InvalidPartitionRequest",
        }
    }
}

/// Sizes in messages: exact MiB/GiB/TiB when they are, bytes otherwise.
pub(crate) fn display_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 40, "TiB"), (1 << 30, "GiB"), (MIB, "MiB")];
    for (unit, name) in UNITS {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{} {name}", bytes / unit);
        }
    }
    format!("{bytes} bytes")
}

fn read_bytes(device: &Device, offset: u64, len: usize, what: &str) -> Result<Vec<u8>, PartitionError> {
    let mut buf = vec![0u8; len];
    device.read_at(offset, &mut buf).map_err(|source| PartitionError::ReadFailed {
        path: device.path.clone(),
        what: format!("{what} (byte {offset})"),
        source,
    })?;
    Ok(buf)
}

fn write_bytes(device: &Device, offset: u64, buf: &[u8], what: &str) -> Result<(), PartitionError> {
    device.write_at(offset, buf).map_err(|source| PartitionError::WriteFailed {
        path: device.path.clone(),
        what: format!("{what} (byte {offset})"),
        source,
    })
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(bytes)
}

fn guid_at(b: &[u8], at: usize) -> Guid {
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&b[at..at + 16]);
    Guid(bytes)
}

/// Reads the partition table: `Ok(None)` when the disk has none.
pub fn read_table(device: &Device) -> Result<Option<PartitionTable>, PartitionError> {
    Ok(read_layout(device)?.map(|layout| layout.table))
}

/// Adds a partition of `size_bytes` (rounded up to whole sectors) at the end
/// of the disk, 1 MiB-aligned, after every existing partition: a free primary
/// slot of type 0x0c (FAT32 LBA) on MBR, where `name` is not stored; a
/// Microsoft basic data entry named `name` on GPT, after moving the backup
/// GPT to the end of the disk. Syncs the disk before returning.
pub fn append_partition(device: &mut Device, size_bytes: u64, name: &str) -> Result<Partition, PartitionError> {
    let invalid = |detail: String| PartitionError::InvalidRequest { path: device.path.clone(), detail };
    if size_bytes == 0 {
        return Err(invalid("the partition size is zero".into()));
    }
    let size_bytes = size_bytes
        .checked_next_multiple_of(device.sector_size)
        .ok_or_else(|| invalid(format!("the partition size {size_bytes} is out of range")))?;
    let layout = read_layout(device)?.ok_or_else(|| PartitionError::NoPartitionTable { path: device.path.clone() })?;
    let partition = match layout.detail {
        LayoutDetail::Mbr { sector } => append_mbr(device, &layout.table, sector, size_bytes)?,
        LayoutDetail::Gpt(gpt) => append_gpt(device, &layout.table, *gpt, size_bytes, name)?,
    };
    device.sync().map_err(|source| PartitionError::WriteFailed {
        path: device.path.clone(),
        what: "the new partition table (sync)".into(),
        source,
    })?;
    // Read back what was written: the caller formats the partition next, and
    // must not do so on the strength of a table nobody can read.
    let written = read_table(device)?;
    if !written.is_some_and(|t| t.partitions.contains(&partition)) {
        return Err(PartitionError::Corrupt {
            path: device.path.clone(),
            detail: format!("partition {} is not in the table read back after writing it", partition.number),
        });
    }
    info!(
        disk = %device.path.display(),
        number = partition.number,
        start = partition.start_bytes,
        size = partition.size_bytes,
        "added a partition at the end of the disk"
    );
    Ok(partition)
}

struct Layout {
    table: PartitionTable,
    detail: LayoutDetail,
}

enum LayoutDetail {
    Mbr { sector: Vec<u8> },
    Gpt(Box<GptLayout>),
}

struct GptLayout {
    header: GptHeader,
    /// The raw entry array, kept whole so that attributes and reserved bytes
    /// of entries girder does not touch are written back unchanged.
    entries: Vec<u8>,
    protective_mbr: Vec<u8>,
    from_backup: bool,
}

#[derive(Clone, Debug)]
struct GptHeader {
    revision: u32,
    my_lba: u64,
    alternate_lba: u64,
    first_usable_lba: u64,
    last_usable_lba: u64,
    disk_guid: Guid,
    entries_lba: u64,
    entry_count: u32,
    entry_size: u32,
    entries_crc: u32,
}

impl GptHeader {
    fn entries_bytes(&self) -> u64 {
        u64::from(self.entry_count) * u64::from(self.entry_size)
    }

    fn entries_sectors(&self, sector_size: u64) -> u64 {
        self.entries_bytes().div_ceil(sector_size)
    }

    /// Parses and checks a header read from `lba`; the error says what is
    /// wrong with it, for the message that names the disk.
    fn parse(sector: &[u8], lba: u64, sectors: u64) -> Result<GptHeader, String> {
        if &sector[0..8] != GPT_SIGNATURE {
            return Err(format!("no GPT header signature at LBA {lba}"));
        }
        let header_size = le32(sector, 12);
        if header_size < GPT_HEADER_SIZE || header_size as usize > sector.len() {
            return Err(format!("the GPT header at LBA {lba} gives an impossible size of {header_size} bytes"));
        }
        let mut copy = sector[..header_size as usize].to_vec();
        copy[16..20].fill(0);
        let stored_crc = le32(sector, 16);
        if crc32fast::hash(&copy) != stored_crc {
            return Err(format!("the GPT header at LBA {lba} fails its checksum"));
        }
        let header = GptHeader {
            revision: le32(sector, 8),
            my_lba: le64(sector, 24),
            alternate_lba: le64(sector, 32),
            first_usable_lba: le64(sector, 40),
            last_usable_lba: le64(sector, 48),
            disk_guid: guid_at(sector, 56),
            entries_lba: le64(sector, 72),
            entry_count: le32(sector, 80),
            entry_size: le32(sector, 84),
            entries_crc: le32(sector, 88),
        };
        let h = &header;
        let ss = sector.len() as u64;
        if h.revision & 0xffff_0000 != GPT_REVISION_1_0 {
            return Err(format!("the GPT header at LBA {lba} has an unknown revision {:#010x}", h.revision));
        }
        if h.my_lba != lba {
            return Err(format!("the GPT header at LBA {lba} says it is at LBA {}", h.my_lba));
        }
        if h.entry_size < 128 || !h.entry_size.is_power_of_two() || h.entry_size > GPT_MAX_ENTRY_SIZE {
            return Err(format!(
                "the GPT header at LBA {lba} gives an impossible entry size of {} bytes",
                h.entry_size
            ));
        }
        if h.entries_bytes() > GPT_MAX_ENTRIES_BYTES {
            return Err(format!(
                "the GPT header at LBA {lba} gives {} entries of {} bytes, more than girder reads ({})",
                h.entry_count,
                h.entry_size,
                display_size(GPT_MAX_ENTRIES_BYTES)
            ));
        }
        if h.first_usable_lba > h.last_usable_lba || h.last_usable_lba >= sectors || h.first_usable_lba < 2 {
            return Err(format!(
                "the GPT header at LBA {lba} gives usable LBAs {} to {}, outside the disk's {sectors} sectors",
                h.first_usable_lba, h.last_usable_lba
            ));
        }
        if (h.first_usable_lba..=h.last_usable_lba).contains(&lba) {
            return Err(format!("the GPT header at LBA {lba} lies among its own usable LBAs"));
        }
        let entries_end = h.entries_lba.saturating_add(h.entries_sectors(ss));
        let among_partitions = h.entries_lba <= h.last_usable_lba && entries_end > h.first_usable_lba;
        let over_itself = (h.entries_lba..entries_end).contains(&lba);
        if h.entries_lba == 0 || entries_end > sectors || among_partitions || over_itself {
            return Err(format!(
                "the GPT header at LBA {lba} places its entries at LBA {}, outside the disk, over itself or among partitions",
                h.entries_lba
            ));
        }
        Ok(header)
    }

    fn encode(&self, sector_size: u64) -> Vec<u8> {
        let mut b = vec![0u8; sector_size as usize];
        b[0..8].copy_from_slice(GPT_SIGNATURE);
        b[8..12].copy_from_slice(&self.revision.to_le_bytes());
        b[12..16].copy_from_slice(&GPT_HEADER_SIZE.to_le_bytes());
        b[24..32].copy_from_slice(&self.my_lba.to_le_bytes());
        b[32..40].copy_from_slice(&self.alternate_lba.to_le_bytes());
        b[40..48].copy_from_slice(&self.first_usable_lba.to_le_bytes());
        b[48..56].copy_from_slice(&self.last_usable_lba.to_le_bytes());
        b[56..72].copy_from_slice(&self.disk_guid.0);
        b[72..80].copy_from_slice(&self.entries_lba.to_le_bytes());
        b[80..84].copy_from_slice(&self.entry_count.to_le_bytes());
        b[84..88].copy_from_slice(&self.entry_size.to_le_bytes());
        b[88..92].copy_from_slice(&self.entries_crc.to_le_bytes());
        let crc = crc32fast::hash(&b[..GPT_HEADER_SIZE as usize]);
        b[16..20].copy_from_slice(&crc.to_le_bytes());
        b
    }
}

fn corrupt(device: &Device, detail: impl Into<String>) -> PartitionError {
    PartitionError::Corrupt { path: device.path.clone(), detail: detail.into() }
}

fn read_layout(device: &Device) -> Result<Option<Layout>, PartitionError> {
    let ss = device.sector_size;
    if device.sectors() < 2 {
        return Ok(None);
    }
    let sector0 = read_bytes(device, 0, ss as usize, "the MBR")?;
    if sector0[510..512] != MBR_SIGNATURE {
        return Ok(None);
    }
    let entries: Vec<&[u8]> = (0..4).map(|i| mbr_entry(&sector0, i)).collect();
    // A filesystem boot sector also ends in 55 AA; an MBR's boot indicators
    // are 0x00 or 0x80, where a boot sector has code.
    let flags_valid = entries.iter().all(|e| e[0] == 0 || e[0] == 0x80);
    let all_empty = entries.iter().all(|e| e[4] == 0);
    if !flags_valid || (all_empty && looks_like_boot_sector(&sector0)) {
        return Ok(None);
    }
    if entries.iter().any(|e| e[4] == MBR_TYPE_PROTECTIVE) {
        return read_gpt(device, sector0).map(Some);
    }
    let mut partitions = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let (kind, start, count) = (entry[4], u64::from(le32(entry, 8)), u64::from(le32(entry, 12)));
        if kind == 0 || count == 0 {
            continue;
        }
        let number = i as u32 + 1;
        if start == 0 || start + count > device.sectors() {
            return Err(corrupt(
                device,
                format!(
                    "MBR partition {number} spans sectors {start} to {} but the disk has {} sectors",
                    start + count - 1,
                    device.sectors()
                ),
            ));
        }
        partitions.push(Partition {
            number,
            start_bytes: start * ss,
            size_bytes: count * ss,
            partition_type: PartitionType::Mbr(kind),
            name: None,
            guid: None,
        });
    }
    check_overlaps(device, &partitions)?;
    let table = PartitionTable { kind: TableKind::Mbr, sector_size: ss, partitions, gpt: None, primary_damage: None };
    Ok(Some(Layout { table, detail: LayoutDetail::Mbr { sector: sector0 } }))
}

fn check_overlaps(device: &Device, partitions: &[Partition]) -> Result<(), PartitionError> {
    let mut sorted: Vec<&Partition> = partitions.iter().collect();
    sorted.sort_by_key(|p| p.start_bytes);
    for pair in sorted.windows(2) {
        if pair[0].end_bytes() > pair[1].start_bytes {
            return Err(corrupt(device, format!("partitions {} and {} overlap", pair[0].number, pair[1].number)));
        }
    }
    Ok(())
}

/// Reads a GPT header and its entries at `lba`, checking both checksums.
fn read_gpt_at(device: &Device, lba: u64) -> Result<Result<(GptHeader, Vec<u8>), String>, PartitionError> {
    let ss = device.sector_size;
    let sector = read_bytes(device, lba * ss, ss as usize, &format!("the GPT header at LBA {lba}"))?;
    let header = match GptHeader::parse(&sector, lba, device.sectors()) {
        Ok(header) => header,
        Err(why) => return Ok(Err(why)),
    };
    // Bounded by GptHeader::parse: at most GPT_MAX_ENTRIES_BYTES.
    let entries =
        read_bytes(device, header.entries_lba * ss, header.entries_bytes() as usize, "the GPT partition entries")?;
    if crc32fast::hash(&entries) != header.entries_crc {
        return Ok(Err(format!("the partition entries of the GPT header at LBA {lba} fail their checksum")));
    }
    Ok(Ok((header, entries)))
}

fn read_gpt(device: &Device, protective_mbr: Vec<u8>) -> Result<Layout, PartitionError> {
    let ss = device.sector_size;
    let last_lba = device.sectors() - 1;
    let (header, entries, primary_damage) = match read_gpt_at(device, 1)? {
        Ok((header, entries)) => (header, entries, None),
        Err(primary_damage) => {
            // The backup is at the disk's last LBA; for an image written to a
            // larger disk, it is at the image's end, which the protective
            // MBR's size (sectors after LBA 0) may still tell.
            let mut candidates = vec![last_lba];
            if let Some(image_last) = protective_mbr_last_lba(&protective_mbr)
                && image_last < last_lba
                && image_last > 1
            {
                candidates.push(image_last);
            }
            let mut found = None;
            let mut failures = vec![format!("primary: {primary_damage}")];
            for lba in candidates {
                match read_gpt_at(device, lba)? {
                    Ok(good) => {
                        found = Some(good);
                        break;
                    }
                    Err(why) => failures.push(format!("backup: {why}")),
                }
            }
            let Some((header, entries)) = found else {
                if let Some(hint) = other_sector_size_hint(device)? {
                    return Err(corrupt(device, hint));
                }
                return Err(corrupt(
                    device,
                    format!("the protective MBR announces a GPT but no GPT header is valid ({})", failures.join("; ")),
                ));
            };
            warn!(
                disk = %device.path.display(),
                damage = %primary_damage,
                backup_lba = header.my_lba,
                "the primary GPT is damaged; read the table from the backup"
            );
            (header, entries, Some(primary_damage))
        }
    };
    let mut partitions = Vec::new();
    for (index, entry) in entries.chunks_exact(header.entry_size as usize).enumerate() {
        let type_guid = guid_at(entry, 0);
        if type_guid.is_zero() {
            continue;
        }
        let number = index as u32 + 1;
        let (first, last) = (le64(entry, 32), le64(entry, 40));
        if first > last || first < header.first_usable_lba || last > header.last_usable_lba {
            return Err(corrupt(
                device,
                format!(
                    "GPT partition {number} spans LBAs {first} to {last}, outside the usable LBAs {} to {}",
                    header.first_usable_lba, header.last_usable_lba
                ),
            ));
        }
        let units: Vec<u16> = (0..GPT_NAME_UNITS).map(|i| le16(entry, 56 + 2 * i)).take_while(|&u| u != 0).collect();
        partitions.push(Partition {
            number,
            start_bytes: first * ss,
            size_bytes: (last - first + 1) * ss,
            partition_type: PartitionType::Gpt(type_guid),
            name: Some(String::from_utf16_lossy(&units)),
            guid: Some(guid_at(entry, 16)),
        });
    }
    check_overlaps(device, &partitions)?;
    let table = PartitionTable {
        kind: TableKind::Gpt,
        sector_size: ss,
        partitions,
        gpt: Some(GptDetails {
            disk_guid: header.disk_guid,
            first_usable_lba: header.first_usable_lba,
            last_usable_lba: header.last_usable_lba,
            alternate_lba: header.alternate_lba,
            entry_count: header.entry_count,
            entry_size: header.entry_size,
        }),
        primary_damage,
    };
    let from_backup = table.primary_damage.is_some();
    Ok(Layout {
        table,
        detail: LayoutDetail::Gpt(Box::new(GptLayout { header, entries, protective_mbr, from_backup })),
    })
}

fn mbr_entry(sector0: &[u8], slot: usize) -> &[u8] {
    &sector0[MBR_ENTRIES_OFFSET + slot * MBR_ENTRY_SIZE..][..MBR_ENTRY_SIZE]
}

/// The last LBA a protective MBR covers.
fn protective_mbr_last_lba(sector0: &[u8]) -> Option<u64> {
    let count = le32(mbr_entry(sector0, protective_slot(sector0)?), 12);
    (count > 0).then_some(u64::from(count))
}

/// The slot of the protective MBR's 0xEE entry, when it is the usual one:
/// the only entry, from LBA 1. A hybrid MBR, which lists other partitions
/// too, is left alone.
fn protective_slot(sector0: &[u8]) -> Option<usize> {
    let used: Vec<usize> = (0..4).filter(|&i| mbr_entry(sector0, i)[4] != 0).collect();
    match used[..] {
        [only] if mbr_entry(sector0, only)[4] == MBR_TYPE_PROTECTIVE && le32(mbr_entry(sector0, only), 8) == 1 => {
            Some(only)
        }
        _ => None,
    }
}

/// Whether sector 0 is a FAT or NTFS boot sector (a filesystem on the whole
/// disk) rather than an MBR: a jump instruction and a plausible sector size
/// where an MBR has boot code.
fn looks_like_boot_sector(sector0: &[u8]) -> bool {
    let jump = (sector0[0] == 0xeb && sector0[2] == 0x90) || sector0[0] == 0xe9;
    jump && matches!(le16(sector0, 11), 512 | 1024 | 2048 | 4096)
}

/// When no GPT header is found at LBA 1, says so plainly if there is one for
/// the other common sector size: an image made for 4Kn disks on a 512-byte
/// disk, or the reverse.
fn other_sector_size_hint(device: &Device) -> Result<Option<String>, PartitionError> {
    let other = if device.sector_size == 512 { 4096 } else { 512 };
    if device.size_bytes < 2 * other {
        return Ok(None);
    }
    let sector = read_bytes(device, other, 8, "the GPT header")?;
    Ok((sector == GPT_SIGNATURE).then(|| {
        format!(
            "its GPT was made for {other}-byte sectors but the disk has {}-byte sectors; use an image made for this disk's sector size",
            device.sector_size
        )
    }))
}

/// The MBR cylinder-head-sector address of `lba`, with the geometry every
/// tool uses (255 heads, 63 sectors per track), or the "too large" marker
/// 1023/254/63 when it cannot be expressed.
fn chs(lba: u64) -> [u8; 3] {
    let (heads, sectors) = (255u64, 63u64);
    let cylinder = lba / (heads * sectors);
    if cylinder > 1023 {
        return [0xfe, 0xff, 0xff];
    }
    let head = (lba / sectors) % heads;
    let sector = lba % sectors + 1;
    [head as u8, (sector as u8) | (((cylinder >> 2) & 0xc0) as u8), (cylinder & 0xff) as u8]
}

/// Start of the new partition: its end is `end_limit` (bytes) or less, its
/// start 1 MiB-aligned, after every existing partition and `lowest`.
fn place(
    device: &Device,
    table: &PartitionTable,
    size_bytes: u64,
    end_limit: u64,
    lowest: u64,
) -> Result<u64, PartitionError> {
    let last_end = table.partitions.iter().map(Partition::end_bytes).max().unwrap_or(0).max(lowest);
    let no_room =
        |detail: String| PartitionError::NoRoom { path: device.path.clone(), size: display_size(size_bytes), detail };
    let Some(unaligned) = end_limit.checked_sub(size_bytes) else {
        return Err(no_room(format!("space for partitions ends at byte {end_limit}")));
    };
    let start = unaligned - unaligned % ALIGNMENT;
    if start < last_end {
        return Err(no_room(format!(
            "the partitions and the table end at byte {last_end} and the space for partitions at byte {end_limit}"
        )));
    }
    Ok(start)
}

fn append_mbr(
    device: &Device,
    table: &PartitionTable,
    mut sector0: Vec<u8>,
    size_bytes: u64,
) -> Result<Partition, PartitionError> {
    let ss = device.sector_size;
    // MBR start and size are 32-bit sector counts.
    let limit = (u64::from(u32::MAX) + 1) * ss;
    if device.size_bytes > limit {
        return Err(PartitionError::DiskTooLargeForMbr {
            path: device.path.clone(),
            size: display_size(device.size_bytes),
            sector_size: ss,
            limit: display_size(limit),
        });
    }
    let slot = (0..4).find(|&i| mbr_entry(&sector0, i)[4] == 0).ok_or_else(|| PartitionError::NoFreeSlot {
        path: device.path.clone(),
        kind: TableKind::Mbr,
        slots: 4,
    })?;
    let start = place(device, table, size_bytes, device.sectors() * ss, ss)?;
    let (first_lba, count) = (start / ss, size_bytes / ss);
    let entry = &mut sector0[MBR_ENTRIES_OFFSET + slot * MBR_ENTRY_SIZE..][..MBR_ENTRY_SIZE];
    entry[0] = 0;
    entry[1..4].copy_from_slice(&chs(first_lba));
    entry[4] = MBR_TYPE_FAT32_LBA;
    entry[5..8].copy_from_slice(&chs(first_lba + count - 1));
    // Both fit: the disk is no larger than 2^32 sectors.
    entry[8..12].copy_from_slice(&(first_lba as u32).to_le_bytes());
    entry[12..16].copy_from_slice(&(count as u32).to_le_bytes());
    zero_new_partition(device, start, size_bytes)?;
    write_bytes(device, 0, &sector0, "the MBR")?;
    Ok(Partition {
        number: slot as u32 + 1,
        start_bytes: start,
        size_bytes,
        partition_type: PartitionType::Mbr(MBR_TYPE_FAT32_LBA),
        name: None,
        guid: None,
    })
}

fn zero_new_partition(device: &Device, start: u64, size: u64) -> Result<(), PartitionError> {
    let ranges = if size <= ZERO_WHOLE_PARTITION_UP_TO {
        vec![(start, size)]
    } else {
        vec![(start, MIB), (start + size - MIB, MIB)]
    };
    for (offset, len) in ranges {
        device.zero_range(offset, len).map_err(|source| PartitionError::WriteFailed {
            path: device.path.clone(),
            what: format!("zeros over the new partition (bytes {offset} to {})", offset + len),
            source,
        })?;
    }
    Ok(())
}

fn append_gpt(
    device: &Device,
    table: &PartitionTable,
    gpt: GptLayout,
    size_bytes: u64,
    name: &str,
) -> Result<Partition, PartitionError> {
    let ss = device.sector_size;
    let GptLayout { header: old, mut entries, mut protective_mbr, from_backup } = gpt;
    let units: Vec<u16> = name.encode_utf16().collect();
    if units.len() > GPT_NAME_UNITS || units.contains(&0) {
        return Err(PartitionError::InvalidRequest {
            path: device.path.clone(),
            detail: format!(
                "the partition name {name:?} is longer than GPT's {GPT_NAME_UNITS} characters or has a NUL"
            ),
        });
    }
    let entry_size = old.entry_size as usize;
    let slot = entries.chunks_exact(entry_size).position(|e| e[..16] == [0; 16]).ok_or_else(|| {
        PartitionError::NoFreeSlot { path: device.path.clone(), kind: TableKind::Gpt, slots: old.entry_count as usize }
    })?;

    // The backup header on the last LBA, its entries just before it.
    let entries_sectors = old.entries_sectors(ss);
    let last_lba = device.sectors() - 1;
    let backup_entries_lba = last_lba
        .checked_sub(entries_sectors)
        .filter(|&lba| lba > old.first_usable_lba)
        .ok_or_else(|| corrupt(device, "the disk is too small for its GPT"))?;
    let last_usable_lba = backup_entries_lba - 1;
    if let Some(p) = table.partitions.iter().find(|p| p.end_bytes() > (last_usable_lba + 1) * ss) {
        return Err(PartitionError::NoRoom {
            path: device.path.clone(),
            size: display_size(size_bytes),
            detail: format!(
                "partition {} ends at byte {}, where the backup GPT must go (the disk is smaller than the image?)",
                p.number,
                p.end_bytes()
            ),
        });
    }
    let start = place(device, table, size_bytes, (last_usable_lba + 1) * ss, old.first_usable_lba * ss)?;

    let guid = loop {
        let candidate = Guid::random();
        let taken = candidate == old.disk_guid || table.partitions.iter().any(|p| p.guid == Some(candidate));
        if !taken {
            break candidate;
        }
    };
    let entry = &mut entries[slot * entry_size..][..entry_size];
    entry.fill(0);
    entry[0..16].copy_from_slice(&GPT_TYPE_BASIC_DATA.0);
    entry[16..32].copy_from_slice(&guid.0);
    entry[32..40].copy_from_slice(&(start / ss).to_le_bytes());
    entry[40..48].copy_from_slice(&((start + size_bytes) / ss - 1).to_le_bytes());
    for (i, unit) in units.iter().enumerate() {
        entry[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
    }

    // When the primary was damaged, it is rebuilt with its entries in the
    // usual place, LBA 2, if they fit before the first usable LBA.
    let primary_entries_lba = if from_backup { 2 } else { old.entries_lba };
    if primary_entries_lba + entries_sectors > old.first_usable_lba {
        return Err(corrupt(device, "the primary GPT is damaged and its entries do not fit where they belong"));
    }
    let entries_crc = crc32fast::hash(&entries);
    let primary = GptHeader {
        my_lba: 1,
        alternate_lba: last_lba,
        last_usable_lba,
        entries_lba: primary_entries_lba,
        entries_crc,
        ..old.clone()
    };
    let backup = GptHeader { my_lba: last_lba, alternate_lba: 1, entries_lba: backup_entries_lba, ..primary.clone() };

    zero_new_partition(device, start, size_bytes)?;
    // Backup first: until the primary is rewritten, the primary (which still
    // describes the image) is what every tool reads.
    write_bytes(device, backup_entries_lba * ss, &entries, "the backup GPT entries")?;
    write_bytes(device, last_lba * ss, &backup.encode(ss), "the backup GPT header")?;
    write_bytes(device, primary_entries_lba * ss, &entries, "the primary GPT entries")?;
    write_bytes(device, ss, &primary.encode(ss), "the primary GPT header")?;

    // The protective MBR covers the whole disk, capped at what 32 bits hold
    // (UEFI 5.2.3); an image's covers only the image.
    let covered = (device.sectors() - 1).min(u64::from(u32::MAX));
    if let Some(slot) = protective_slot(&protective_mbr) {
        let e = &mut protective_mbr[MBR_ENTRIES_OFFSET + slot * MBR_ENTRY_SIZE..][..MBR_ENTRY_SIZE];
        if u64::from(le32(e, 12)) != covered {
            e[5..8].copy_from_slice(&chs(covered));
            e[12..16].copy_from_slice(&(covered as u32).to_le_bytes());
            write_bytes(device, 0, &protective_mbr, "the protective MBR")?;
        }
    }

    // The image's backup header, now in free space in the middle of the disk,
    // is erased so that no tool finds a second, stale table.
    let stale = if from_backup { old.my_lba } else { old.alternate_lba };
    let stale_bytes = stale.saturating_mul(ss);
    let in_partition = table.partitions.iter().any(|p| (p.start_bytes..p.end_bytes()).contains(&stale_bytes))
        || (start..start + size_bytes).contains(&stale_bytes);
    if stale > old.last_usable_lba && stale < backup_entries_lba && !in_partition {
        write_bytes(device, stale_bytes, &vec![0u8; ss as usize], "zeros over the image's old backup GPT header")?;
    }

    Ok(Partition {
        number: slot as u32 + 1,
        start_bytes: start,
        size_bytes,
        partition_type: PartitionType::Gpt(GPT_TYPE_BASIC_DATA),
        name: Some(name.to_string()),
        guid: Some(guid),
    })
}

/// Temporary disk images and the external tools the tests cross-check with.
#[cfg(test)]
pub(crate) mod testing {
    use super::Device;
    use std::fs::{File, OpenOptions};
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A disk image in the temporary directory, removed when dropped unless
    /// `GIRDER_KEEP_TEST_FILES` is set.
    pub(crate) struct TempDisk {
        pub(crate) path: PathBuf,
    }

    impl TempDisk {
        /// A sparse image of `size` bytes, all zero.
        pub(crate) fn new(label: &str, size: u64) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let unique = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("girder-{label}-{}-{unique}.img", std::process::id()));
            let file = File::create(&path).unwrap();
            file.set_len(size).unwrap();
            Self { path }
        }

        /// An image with data everywhere: no byte of it is zero.
        pub(crate) fn filled(label: &str, size: u64) -> Self {
            let disk = Self::new(label, size);
            disk.fill(0..size);
            disk
        }

        /// Writes the pattern of [`TempDisk::filled`] over a range.
        pub(crate) fn fill(&self, range: std::ops::Range<u64>) {
            let file = OpenOptions::new().write(true).open(&self.path).unwrap();
            let mut offset = range.start;
            while offset < range.end {
                let len = (1 << 20).min(range.end - offset);
                file.write_all_at(&pattern(offset, len), offset).unwrap();
                offset += len;
            }
        }

        /// The image as a larger disk would hold it.
        pub(crate) fn grow(&self, size: u64) {
            OpenOptions::new().write(true).open(&self.path).unwrap().set_len(size).unwrap();
        }

        pub(crate) fn device(&self) -> Device {
            Device::open(&self.path).unwrap()
        }

        pub(crate) fn bytes(&self, offset: u64, len: usize) -> Vec<u8> {
            let mut buf = vec![0; len];
            File::open(&self.path).unwrap().read_exact_at(&mut buf, offset).unwrap();
            buf
        }

        pub(crate) fn put(&self, offset: u64, bytes: &[u8]) {
            OpenOptions::new().write(true).open(&self.path).unwrap().write_all_at(bytes, offset).unwrap();
        }

        /// Inverts the byte at `offset`.
        pub(crate) fn flip(&self, offset: u64) {
            let byte = self.bytes(offset, 1)[0];
            self.put(offset, &[!byte]);
        }

        /// Partitions the image with sfdisk from a script.
        pub(crate) fn sfdisk(&self, script: &str) {
            let output = run("sfdisk", "fdisk", &["--no-reread", "--no-tell-kernel", "-q"], &self.path, Some(script));
            assert!(output.status.success(), "sfdisk failed: {}", String::from_utf8_lossy(&output.stderr));
        }

        /// What sfdisk reads from the image.
        pub(crate) fn sfdisk_json(&self) -> serde_json::Value {
            let output = run("sfdisk", "fdisk", &["--json"], &self.path, None);
            assert!(output.status.success(), "sfdisk --json failed: {}", String::from_utf8_lossy(&output.stderr));
            serde_json::from_slice(&output.stdout).unwrap()
        }
    }

    /// The bytes [`TempDisk::filled`] puts at `offset`: each 4 KiB block
    /// repeats a non-zero byte that depends on where the block is, so data
    /// moved or zeroed shows.
    pub(crate) fn pattern(offset: u64, len: u64) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(len as usize);
        let mut at = offset;
        while at < offset + len {
            let block_end = (at / 4096 + 1) * 4096;
            let n = block_end.min(offset + len) - at;
            bytes.resize(bytes.len() + n as usize, (at / 4096 % 251 + 1) as u8);
            at += n;
        }
        bytes
    }

    impl Drop for TempDisk {
        fn drop(&mut self) {
            if std::env::var_os("GIRDER_KEEP_TEST_FILES").is_none() {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }

    /// Runs `tool args... path`.
    pub(crate) fn run(tool: &str, package: &str, args: &[&str], path: &Path, stdin: Option<&str>) -> Output {
        let mut command = command(tool, package);
        command.args(args).arg(path);
        output(command, stdin)
    }

    /// A command for `tool`, from PATH or the sbin directories a non-root
    /// PATH may lack; a missing tool fails the test with the Debian package
    /// that has it.
    pub(crate) fn command(tool: &str, package: &str) -> Command {
        let found = std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
            .map(|dir| dir.join(tool))
            .find(|candidate| candidate.is_file());
        let Some(program) = found else {
            panic!("{tool} is not installed; install it (Debian: apt-get install {package}) to run this test");
        };
        Command::new(program)
    }

    /// Runs a command to its end, feeding it `stdin`.
    pub(crate) fn output(mut command: Command, stdin: Option<&str>) -> Output {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        command.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        let mut child = command.spawn().unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{TempDisk, run};
    use super::*;
    use serde_json::Value;

    const SECTOR: u64 = 512;

    fn sfdisk_partitions(disk: &TempDisk) -> Vec<Value> {
        disk.sfdisk_json()["partitiontable"]["partitions"].as_array().cloned().unwrap_or_default()
    }

    /// sfdisk --verify finds nothing to say about the table: no size
    /// mismatch of the protective MBR, no misplaced backup.
    fn assert_sfdisk_verifies(disk: &TempDisk) {
        let output = run("sfdisk", "fdisk", &["--verify"], &disk.path, None);
        let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(
            output.status.success() && stdout.contains("No errors detected") && stderr.is_empty(),
            "{stdout}{stderr}"
        );
    }

    fn assert_sgdisk_verifies(disk: &TempDisk) {
        let output = run("sgdisk", "gdisk", &["-v"], &disk.path, None);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("No problems found"), "{stdout}");
    }

    /// The reader agrees with sfdisk on every partition.
    fn assert_matches_sfdisk(disk: &TempDisk, table: &PartitionTable) {
        let theirs = sfdisk_partitions(disk);
        assert_eq!(theirs.len(), table.partitions.len(), "{theirs:?}");
        for (mine, theirs) in table.partitions.iter().zip(&theirs) {
            assert_eq!(mine.start_bytes / table.sector_size, theirs["start"].as_u64().unwrap());
            assert_eq!(mine.size_bytes / table.sector_size, theirs["size"].as_u64().unwrap());
            assert!(theirs["node"].as_str().unwrap().ends_with(&mine.number.to_string()));
            match mine.partition_type {
                PartitionType::Mbr(kind) => assert_eq!(format!("{kind:x}"), theirs["type"].as_str().unwrap()),
                PartitionType::Gpt(guid) => {
                    assert_eq!(guid.to_string(), theirs["type"].as_str().unwrap());
                    assert_eq!(mine.guid.unwrap().to_string(), theirs["uuid"].as_str().unwrap());
                    assert_eq!(mine.name.as_deref().unwrap_or(""), theirs["name"].as_str().unwrap_or(""));
                }
            }
        }
    }

    fn gpt_image(label: &str) -> TempDisk {
        let disk = TempDisk::new(label, 64 * MIB);
        disk.sfdisk("label: gpt\nsize=8MiB, type=uefi, name=esp\nsize=16MiB, type=linux, name=root\n");
        disk
    }

    #[test]
    fn guids_read_and_print_as_the_uefi_specification_writes_them() {
        assert_eq!(GPT_TYPE_BASIC_DATA.to_string(), "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7");
        assert_eq!(Guid::parse("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"), Some(GPT_TYPE_BASIC_DATA));
        assert_eq!(Guid::parse("ebd0a0a2-b9e5-4433-87c0-68b6b72699c7"), Some(GPT_TYPE_BASIC_DATA));
        assert_eq!(Guid::parse("EBD0A0A2B9E5-4433-87C0-68B6B72699C7"), None);
        let random = Guid::random().to_string();
        assert_eq!(&random[14..15], "4", "{random}");
        assert!("89AB".contains(&random[19..20]), "{random}");
        assert_ne!(Guid::random(), Guid::random());
    }

    #[test]
    fn chs_addresses_follow_the_255_head_63_sector_convention() {
        assert_eq!(chs(0), [0, 1, 0]);
        assert_eq!(chs(2048), [32, 33, 0]);
        assert_eq!(chs(1024 * 255 * 63 - 1), [254, 63 | 0xc0, 0xff]);
        assert_eq!(chs(1024 * 255 * 63), [0xfe, 0xff, 0xff]);
    }

    #[test]
    fn sizes_in_messages_are_exact() {
        assert_eq!(display_size(16 * MIB), "16 MiB");
        assert_eq!(display_size(2 << 40), "2 TiB");
        assert_eq!(display_size(1000), "1000 bytes");
    }

    #[test]
    fn a_blank_disk_has_no_table_and_gets_no_partition() {
        let disk = TempDisk::new("blank", 16 * MIB);
        let mut device = disk.device();
        assert_eq!(read_table(&device).unwrap(), None);
        let error = append_partition(&mut device, MIB, "seed").unwrap_err();
        assert_eq!(error.reason(), "NoPartitionTable");
        assert!(error.to_string().contains(&disk.path.display().to_string()), "{error}");
    }

    #[test]
    fn a_filesystem_on_the_whole_disk_is_not_an_mbr() {
        let disk = TempDisk::new("superfloppy", 16 * MIB);
        let mut boot = vec![0u8; 512];
        boot[0..3].copy_from_slice(&[0xeb, 0x3c, 0x90]);
        boot[11..13].copy_from_slice(&512u16.to_le_bytes());
        boot[510..512].copy_from_slice(&MBR_SIGNATURE);
        disk.put(0, &boot);
        assert_eq!(read_table(&disk.device()).unwrap(), None);
    }

    #[test]
    fn an_mbr_image_on_a_larger_disk_gets_the_partition_at_the_end() {
        let disk = TempDisk::new("mbr-append", 64 * MIB);
        disk.sfdisk("label: dos\nsize=8MiB, type=83, bootable\nsize=16MiB, type=83\n");
        let before = read_table(&disk.device()).unwrap().unwrap();
        assert_eq!(before.kind, TableKind::Mbr);
        assert_matches_sfdisk(&disk, &before);
        let image = disk.bytes(SECTOR, (64 * MIB - SECTOR) as usize);

        disk.grow(256 * MIB);
        let mut device = disk.device();
        let added = append_partition(&mut device, 16 * MIB, "config-2").unwrap();
        assert_eq!(
            added,
            Partition {
                number: 3,
                start_bytes: 240 * MIB,
                size_bytes: 16 * MIB,
                partition_type: PartitionType::Mbr(0x0c),
                name: None,
                guid: None,
            }
        );
        let after = read_table(&device).unwrap().unwrap();
        assert_eq!(after.partitions[..2], before.partitions[..]);
        assert_eq!(after.partitions[2], added);
        assert_matches_sfdisk(&disk, &after);
        assert_eq!(sfdisk_partitions(&disk)[2]["type"], "c");
        assert_sfdisk_verifies(&disk);
        assert_eq!(disk.bytes(SECTOR, image.len()), image, "only the MBR sector of the image may change");
    }

    #[test]
    fn a_gpt_image_on_a_larger_disk_gets_its_backup_moved_and_the_partition_at_the_end() {
        let disk = gpt_image("gpt-append");
        let before = read_table(&disk.device()).unwrap().unwrap();
        assert_eq!(before.kind, TableKind::Gpt);
        assert_matches_sfdisk(&disk, &before);
        let image_last_lba = 64 * MIB / SECTOR - 1;
        assert_eq!(before.gpt.as_ref().unwrap().alternate_lba, image_last_lba);
        let partitions = disk.bytes(MIB, 24 * MIB as usize);

        disk.grow(256 * MIB);
        let mut device = disk.device();
        let added = append_partition(&mut device, 16 * MIB, "config-2").unwrap();
        let last_lba = 256 * MIB / SECTOR - 1;
        // The backup entries (32 sectors) end the usable space; the partition
        // starts on the last MiB boundary that leaves it 16 MiB.
        let usable_end = (last_lba - 32) * SECTOR;
        assert_eq!(added.start_bytes, (usable_end - 16 * MIB) / MIB * MIB);
        assert_eq!((added.number, added.size_bytes), (3, 16 * MIB));
        assert_eq!(added.partition_type, PartitionType::Gpt(GPT_TYPE_BASIC_DATA));
        assert_eq!(added.name.as_deref(), Some("config-2"));

        let after = read_table(&device).unwrap().unwrap();
        assert_eq!(after.partitions[..2], before.partitions[..]);
        assert_eq!(after.partitions[2], added);
        let gpt = after.gpt.as_ref().unwrap();
        assert_eq!((gpt.alternate_lba, gpt.last_usable_lba), (last_lba, last_lba - 33));
        assert_eq!(gpt.disk_guid, before.gpt.as_ref().unwrap().disk_guid);
        assert_matches_sfdisk(&disk, &after);
        assert_eq!(disk.sfdisk_json()["partitiontable"]["lastlba"], last_lba - 33);
        assert_sfdisk_verifies(&disk);
        assert_sgdisk_verifies(&disk);

        assert_eq!(disk.bytes(last_lba * SECTOR, 8), b"EFI PART", "the backup header is on the last LBA");
        assert_eq!(disk.bytes(image_last_lba * SECTOR, 8), [0; 8], "the image's backup header is gone");
        assert_eq!(le32(&disk.bytes(446 + 12, 4), 0), (last_lba) as u32, "the protective MBR covers the disk");
        assert_eq!(disk.bytes(MIB, partitions.len()), partitions, "the image's partitions are untouched");
    }

    #[test]
    fn a_gpt_with_4096_byte_sectors() {
        // sfdisk always uses 512-byte sectors on a file; fdisk -b does not.
        let disk = TempDisk::new("gpt-4k", 64 * MIB);
        let script = "g\nn\n1\n\n+8M\nn\n2\n\n+16M\nw\n";
        let output = run("fdisk", "fdisk", &["-b", "4096"], &disk.path, Some(script));
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        disk.grow(256 * MIB);
        let mut device = disk.device().with_logical_sector_size(4096).unwrap();
        let before = read_table(&device).unwrap().unwrap();
        assert_eq!(before.sector_size, 4096);
        assert_eq!(before.partitions.len(), 2);
        assert_eq!((before.partitions[1].start_bytes, before.partitions[1].size_bytes), (9 * MIB, 16 * MIB));

        let added = append_partition(&mut device, 16 * MIB, "config-2").unwrap();
        // 128 entries of 128 bytes are four 4 KiB sectors.
        let last_lba = 256 * MIB / 4096 - 1;
        assert_eq!(read_table(&device).unwrap().unwrap().gpt.unwrap().last_usable_lba, last_lba - 5);
        assert_eq!(added.start_bytes, 239 * MIB);
        assert_eq!(disk.bytes(last_lba * 4096, 8), b"EFI PART");

        let listing =
            run("fdisk", "fdisk", &["-b", "4096", "-l", "-o", "Device,Start,Sectors,Type-UUID,Name"], &disk.path, None);
        let listing = String::from_utf8_lossy(&listing.stdout);
        let line = listing.lines().find(|l| l.contains("config-2")).unwrap_or_else(|| panic!("{listing}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[1..], ["61184", "4096", "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", "config-2"], "{listing}");
        let verify = run("fdisk", "fdisk", &["-b", "4096"], &disk.path, Some("v\nq\n"));
        let (stdout, stderr) = (String::from_utf8_lossy(&verify.stdout), String::from_utf8_lossy(&verify.stderr));
        assert!(stdout.contains("No errors detected") && stderr.is_empty(), "{stdout}{stderr}");

        // Read with the wrong sector size, the table is refused with the reason.
        let error = read_table(&disk.device()).unwrap_err();
        assert_eq!(error.reason(), "PartitionTableCorrupt");
        assert!(error.to_string().contains("made for 4096-byte sectors"), "{error}");
    }

    #[test]
    fn a_damaged_primary_gpt_is_read_from_the_backup_and_rebuilt() {
        for (what, offset) in [("header", SECTOR + 60), ("entries", 2 * SECTOR + 3)] {
            let disk = gpt_image("gpt-damaged");
            let good = read_table(&disk.device()).unwrap().unwrap();
            disk.flip(offset);
            let mut device = disk.device();
            let table = read_table(&device).unwrap().unwrap();
            assert_eq!(table.partitions, good.partitions);
            let damage = table.primary_damage.unwrap_or_default();
            assert!(
                damage.contains("checksum") && damage.contains(if what == "header" { "header" } else { "entries" })
            );

            append_partition(&mut device, 4 * MIB, "config-2").unwrap();
            let repaired = read_table(&device).unwrap().unwrap();
            assert_eq!(repaired.primary_damage, None);
            assert_eq!(repaired.partitions[..2], good.partitions[..]);
            assert_sgdisk_verifies(&disk);
        }
    }

    #[test]
    fn on_a_larger_disk_the_backup_is_found_where_the_protective_mbr_says_the_image_ends() {
        let disk = gpt_image("gpt-damaged-grown");
        let good = read_table(&disk.device()).unwrap().unwrap();
        disk.grow(256 * MIB);
        disk.put(SECTOR, b"NOT PART");
        let mut device = disk.device();
        let table = read_table(&device).unwrap().unwrap();
        assert_eq!(table.partitions, good.partitions);
        assert!(table.primary_damage.unwrap().contains("no GPT header signature at LBA 1"));

        append_partition(&mut device, 16 * MIB, "config-2").unwrap();
        assert_eq!(disk.bytes(64 * MIB - SECTOR, 8), [0; 8], "the image's backup header is gone");
        assert_eq!(read_table(&device).unwrap().unwrap().primary_damage, None);
        assert_sfdisk_verifies(&disk);
        assert_sgdisk_verifies(&disk);
    }

    #[test]
    fn with_both_gpt_headers_damaged_the_table_is_corrupt() {
        let disk = gpt_image("gpt-both-damaged");
        disk.put(SECTOR, b"NOT PART");
        disk.flip(64 * MIB - SECTOR + 60);
        let error = read_table(&disk.device()).unwrap_err();
        assert_eq!(error.reason(), "PartitionTableCorrupt");
        let message = error.to_string();
        assert!(message.contains(&disk.path.display().to_string()) && message.contains("checksum"), "{message}");
    }

    #[test]
    fn full_tables_have_no_free_slot() {
        let mbr = TempDisk::new("mbr-full", 64 * MIB);
        mbr.sfdisk("label: dos\nsize=1MiB\nsize=1MiB\nsize=1MiB\nsize=1MiB\n");
        let gpt = TempDisk::new("gpt-full", 64 * MIB);
        gpt.sfdisk("label: gpt\ntable-length: 4\nsize=1MiB\nsize=1MiB\nsize=1MiB\nsize=1MiB\n");
        for (disk, kind) in [(mbr, "MBR"), (gpt, "GPT")] {
            disk.grow(128 * MIB);
            let error = append_partition(&mut disk.device(), MIB, "seed").unwrap_err();
            assert_eq!(error.reason(), "NoFreePartitionSlot");
            assert!(error.to_string().contains(&format!("the {kind} on disk")), "{error}");
        }
    }

    #[test]
    fn a_gpt_with_few_entries_is_laid_out_from_its_own_header() {
        let disk = TempDisk::new("gpt-short", 64 * MIB);
        disk.sfdisk("label: gpt\ntable-length: 8\nsize=1MiB\n");
        disk.grow(128 * MIB);
        let added = append_partition(&mut disk.device(), MIB, "seed").unwrap();
        assert_eq!((added.number, added.start_bytes), (2, 126 * MIB));
        // Eight entries of 128 bytes take two sectors before the backup header.
        assert_eq!(disk.sfdisk_json()["partitiontable"]["lastlba"], 128 * MIB / SECTOR - 4);
        assert_sfdisk_verifies(&disk);
        assert_sgdisk_verifies(&disk);
    }

    #[test]
    fn a_disk_without_space_at_its_end_gets_no_partition() {
        let mbr = TempDisk::new("mbr-no-room", 64 * MIB);
        mbr.sfdisk("label: dos\nsize=8MiB\n,\n");
        let gpt = TempDisk::new("gpt-no-room", 64 * MIB);
        gpt.sfdisk("label: gpt\nsize=8MiB\n,\n");
        for disk in [mbr, gpt] {
            let error = append_partition(&mut disk.device(), 16 * MIB, "seed").unwrap_err();
            assert_eq!(error.reason(), "NoRoomForPartition");
            assert!(error.to_string().contains("no room for a 16 MiB partition"), "{error}");
        }
        let small = gpt_image("gpt-too-big");
        small.grow(128 * MIB);
        let error = append_partition(&mut small.device(), 200 * MIB, "seed").unwrap_err();
        assert_eq!(error.reason(), "NoRoomForPartition");
    }

    #[test]
    fn an_mbr_is_refused_on_a_disk_beyond_its_reach() {
        let disk = TempDisk::new("mbr-3tib", 3 << 40);
        disk.sfdisk("label: dos\nsize=8MiB, type=83\n");
        let error = append_partition(&mut disk.device(), 16 * MIB, "seed").unwrap_err();
        assert_eq!(error.reason(), "DiskTooLargeForMbr");
        assert!(error.to_string().contains("(3 TiB) is larger than an MBR can address"), "{error}");
    }

    #[test]
    fn an_mbr_entry_past_the_end_of_the_disk_is_corrupt() {
        let disk = TempDisk::new("mbr-past-end", 64 * MIB);
        disk.sfdisk("label: dos\nsize=8MiB, type=83\n");
        disk.put(446 + 12, &(200_000u32).to_le_bytes());
        let error = read_table(&disk.device()).unwrap_err();
        assert_eq!(error.reason(), "PartitionTableCorrupt");
        assert!(error.to_string().contains("MBR partition 1 spans sectors 2048 to 202047"), "{error}");
    }

    #[test]
    fn gpt_names_longer_than_36_characters_are_refused() {
        let disk = gpt_image("gpt-long-name");
        disk.grow(128 * MIB);
        let error = append_partition(&mut disk.device(), MIB, &"x".repeat(37)).unwrap_err();
        assert_eq!(error.reason(), "InvalidPartitionRequest");
        let zero = append_partition(&mut disk.device(), 0, "seed").unwrap_err();
        assert_eq!(zero.reason(), "InvalidPartitionRequest");
    }

    #[test]
    fn writes_past_the_end_of_the_device_are_refused() {
        let disk = TempDisk::new("past-end", MIB);
        let device = disk.device();
        assert!(device.write_at(MIB - 1, &[1, 2]).is_err());
        assert!(device.write_at(u64::MAX, &[1]).is_err());
        assert_eq!(std::fs::metadata(&disk.path).unwrap().len(), MIB);
    }

    #[test]
    fn unsupported_sector_sizes_are_refused() {
        let disk = TempDisk::new("sector-size", MIB);
        for size in [256, 1000, 8192] {
            let error = disk.device().with_logical_sector_size(size).unwrap_err();
            assert_eq!(error.reason(), "UnsupportedSectorSize");
        }
    }
}
