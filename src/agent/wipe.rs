//! Disk cleaning when a node is deprovisioned, before it is Available again.
//!
//! [`wipe_metadata`] is what Metal3 and Ironic call metadata cleaning: it
//! zeroes the first and last MiB of the disk (the MBR, the primary and the
//! backup GPT) and of every partition the table lists (filesystem, LVM and
//! RAID superblocks sit there), plus the MiB before the GPT's other header
//! when an image left it in the middle of the disk. Without those, the next
//! installation's system could assemble an old RAID array or mount an old
//! filesystem. The table is read before anything is zeroed; a table that
//! cannot be read still gets the disk's ends zeroed, with a note. Logical
//! partitions inside an MBR extended partition are not walked: zeroing the
//! extended partition's first MiB removes the chain that leads to them.
//!
//! [`wipe_full`] zeroes every byte: with BLKZEROOUT on a block device (the
//! kernel uses the device's own zeroing command, e.g. NVMe Write Zeroes, or
//! writes zeros itself), writing zeros when the ioctl is refused; a regular
//! file has its blocks released (FALLOC_FL_PUNCH_HOLE) or zeros written.

use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::fcntl::{FallocateFlags, fallocate};
use thiserror::Error;
use tracing::{info, warn};

use super::partition::{Device, MIB, display_size, read_table};

/// BLKZEROOUT is issued over this much at a time, so that a multi-terabyte
/// wipe reports its progress and an error says roughly where it happened.
const ZEROOUT_CHUNK: u64 = 1 << 30;
/// Zeros are written this much at a time when they must be written.
const WRITE_CHUNK: u64 = 8 * MIB;
/// What [`wipe_metadata`] zeroes at each end of the disk and of every partition.
const METADATA_BYTES: u64 = MIB;

// BLKZEROOUT = _IO(0x12, 127), its argument a u64 [start, length] in bytes
// (include/uapi/linux/fs.h).
nix::ioctl_write_ptr_bad!(blk_zero_out, nix::request_code_none!(0x12, 127), [u64; 2]);

/// How the zeros got there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WipeMethod {
    /// Zeros written through the page cache.
    Written,
    /// The block device's BLKZEROOUT.
    ZeroOut,
    /// A regular file's blocks released with FALLOC_FL_PUNCH_HOLE.
    PunchHole,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WipeReport {
    pub bytes_zeroed: u64,
    pub elapsed: Duration,
    /// The byte ranges zeroed, in order, overlaps merged.
    pub regions: Vec<Range<u64>>,
    /// How most of the bytes were zeroed.
    pub method: WipeMethod,
    /// What could not be done as asked, e.g. a table that could not be read.
    pub notes: Vec<String>,
}

#[derive(Debug, Error)]
pub enum WipeError {
    #[error("cannot read disk {path} at byte {offset}: {source}")]
    ReadFailed { path: PathBuf, offset: u64, source: io::Error },
    #[error("cannot zero bytes {} to {} of disk {path}: {source}", .range.start, .range.end)]
    WriteFailed { path: PathBuf, range: Range<u64>, source: io::Error },
    #[error("cannot flush the wiped disk {path}: {source}")]
    SyncFailed { path: PathBuf, source: io::Error },
    #[error("bytes {offset} to {} are not all on disk {path} ({size} bytes)", .offset.saturating_add(*.len))]
    OutOfRange { path: PathBuf, offset: u64, len: u64, size: u64 },
}

impl WipeError {
    /// A stable CamelCase reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            WipeError::ReadFailed { .. } => "DiskReadFailed",
            WipeError::WriteFailed { .. } | WipeError::SyncFailed { .. } => "DiskWriteFailed",
            WipeError::OutOfRange { .. } => "InvalidWipeRange",
        }
    }
}

/// Zeroes the first and last MiB of the disk and of every partition its
/// table lists, then syncs.
pub fn wipe_metadata(device: &mut Device) -> Result<WipeReport, WipeError> {
    let started = Instant::now();
    let size = device.size_bytes();
    let mut notes = Vec::new();
    let mut regions = ends(0..size);
    match read_table(device) {
        Ok(Some(table)) => {
            for partition in &table.partitions {
                regions.extend(ends(partition.start_bytes..partition.end_bytes()));
            }
            // The backup GPT of an image written to a larger disk is where the
            // image ended, not in the disk's last MiB.
            if let Some(gpt) = &table.gpt {
                let end = gpt.alternate_lba.saturating_add(1).saturating_mul(table.sector_size);
                regions.push(end.saturating_sub(METADATA_BYTES)..end);
            }
        }
        Ok(None) => {}
        Err(error) => {
            warn!(disk = %device.path().display(), %error, "cannot read the partition table; wiping the disk's ends only");
            notes.push(format!("{error}; only the first and last MiB of the disk were zeroed"));
        }
    }
    let regions = merge(regions, size);
    for region in &regions {
        device.zero_range(region.start, region.end - region.start).map_err(|source| WipeError::WriteFailed {
            path: device.path().to_path_buf(),
            range: region.clone(),
            source,
        })?;
    }
    sync(device)?;
    let report = WipeReport {
        bytes_zeroed: regions.iter().map(|r| r.end - r.start).sum(),
        elapsed: started.elapsed(),
        regions,
        method: WipeMethod::Written,
        notes,
    };
    info!(disk = %device.path().display(), bytes = report.bytes_zeroed, regions = report.regions.len(), "wiped the disk's metadata");
    Ok(report)
}

/// Zeroes every byte of the disk, then syncs.
pub fn wipe_full(device: &mut Device) -> Result<WipeReport, WipeError> {
    let started = Instant::now();
    let size = device.size_bytes();
    let mut notes = Vec::new();
    let method = if device.is_block_device() {
        zero_out_block_device(device, &mut notes)?
    } else {
        punch_or_write(device, &mut notes)?
    };
    sync(device)?;
    let report = WipeReport {
        bytes_zeroed: size,
        elapsed: started.elapsed(),
        regions: (size > 0).then_some(0..size).into_iter().collect(),
        method,
        notes,
    };
    info!(
        disk = %device.path().display(),
        size = %display_size(size),
        seconds = report.elapsed.as_secs(),
        method = ?report.method,
        "wiped the whole disk"
    );
    Ok(report)
}

/// Whether `len` bytes at `offset` are all zero.
pub fn is_zero(device: &Device, offset: u64, len: u64) -> Result<bool, WipeError> {
    let size = device.size_bytes();
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(WipeError::OutOfRange { path: device.path().to_path_buf(), offset, len, size });
    }
    let mut buf = vec![0u8; len.min(MIB) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        device.read_at(offset + done, &mut buf[..n]).map_err(|source| WipeError::ReadFailed {
            path: device.path().to_path_buf(),
            offset: offset + done,
            source,
        })?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        done += n as u64;
    }
    Ok(true)
}

/// The first and last MiB of a range (the whole range when it is shorter).
fn ends(range: Range<u64>) -> Vec<Range<u64>> {
    let len = range.end.saturating_sub(range.start).min(METADATA_BYTES);
    vec![range.start..range.start + len, range.end - len..range.end]
}

/// Sorted, overlaps and neighbours merged, clipped to the device, empty ones
/// dropped.
fn merge(mut regions: Vec<Range<u64>>, size: u64) -> Vec<Range<u64>> {
    regions.iter_mut().for_each(|r| *r = r.start.min(size)..r.end.min(size));
    regions.retain(|r| r.start < r.end);
    regions.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(regions.len());
    for region in regions {
        match merged.last_mut() {
            Some(last) if region.start <= last.end => last.end = last.end.max(region.end),
            _ => merged.push(region),
        }
    }
    merged
}

fn sync(device: &Device) -> Result<(), WipeError> {
    device.sync().map_err(|source| WipeError::SyncFailed { path: device.path().to_path_buf(), source })
}

fn zero_out_block_device(device: &Device, notes: &mut Vec<String>) -> Result<WipeMethod, WipeError> {
    let size = device.size_bytes();
    let mut offset = 0;
    let mut last_reported = 0;
    while offset < size {
        let len = (size - offset).min(ZEROOUT_CHUNK);
        let range = [offset, len];
        // SAFETY: BLKZEROOUT reads two u64 from the pointer, which `range`
        // provides for the duration of the call.
        if let Err(errno) = unsafe { blk_zero_out(device.file().as_raw_fd(), &range) } {
            warn!(disk = %device.path().display(), offset, %errno, "BLKZEROOUT refused; writing zeros instead");
            notes.push(format!("the disk refused BLKZEROOUT at byte {offset} ({errno}); zeros were written instead"));
            write_zeros(device, offset..size)?;
            return Ok(if offset == 0 { WipeMethod::Written } else { WipeMethod::ZeroOut });
        }
        offset += len;
        if offset - last_reported >= size / 10 {
            info!(disk = %device.path().display(), done = %display_size(offset), of = %display_size(size), "wiping");
            last_reported = offset;
        }
    }
    Ok(WipeMethod::ZeroOut)
}

fn punch_or_write(device: &Device, notes: &mut Vec<String>) -> Result<WipeMethod, WipeError> {
    let size = device.size_bytes();
    if size == 0 {
        return Ok(WipeMethod::PunchHole);
    }
    let punch = i64::try_from(size).map_err(|_| nix::errno::Errno::EFBIG).and_then(|len| {
        fallocate(device.file(), FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE, 0, len)
    });
    match punch {
        Ok(()) => Ok(WipeMethod::PunchHole),
        Err(errno) => {
            notes.push(format!("the filesystem cannot punch holes ({errno}); zeros were written instead"));
            write_zeros(device, 0..size)?;
            Ok(WipeMethod::Written)
        }
    }
}

fn write_zeros(device: &Device, range: Range<u64>) -> Result<(), WipeError> {
    let mut offset = range.start;
    let mut last_reported = offset;
    while offset < range.end {
        let len = (range.end - offset).min(WRITE_CHUNK);
        device.zero_range(offset, len).map_err(|source| WipeError::WriteFailed {
            path: device.path().to_path_buf(),
            range: offset..offset + len,
            source,
        })?;
        offset += len;
        if offset - last_reported >= (range.end - range.start) / 10 && offset - last_reported >= ZEROOUT_CHUNK {
            info!(disk = %device.path().display(), done = %display_size(offset), of = %display_size(range.end), "wiping");
            last_reported = offset;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::partition::testing::{TempDisk, command, output, pattern};

    /// The regions are zero and every byte between them still holds the
    /// pattern the disk was filled with.
    fn assert_zeroed_exactly(disk: &TempDisk, regions: &[Range<u64>]) {
        let device = disk.device();
        let size = device.size_bytes();
        let mut kept = 0;
        for region in regions {
            assert!(is_zero(&device, region.start, region.end - region.start).unwrap(), "{region:?} is zero");
            let mut offset = kept;
            while offset < region.start {
                let len = (region.start - offset).min(MIB);
                assert!(disk.bytes(offset, len as usize) == pattern(offset, len), "bytes at {offset} are untouched");
                offset += len;
            }
            kept = region.end;
        }
        assert!(disk.bytes(kept, (size - kept) as usize) == pattern(kept, size - kept), "the end is untouched");
    }

    #[test]
    fn metadata_cleaning_zeroes_the_ends_of_the_disk_and_of_every_partition() {
        let disk = TempDisk::filled("wipe-gpt", 64 * MIB);
        // A third partition smaller than 2 MiB is zeroed whole.
        disk.sfdisk("label: gpt\nsize=8MiB\nsize=16MiB\nsize=1024\n");
        // The image on a larger disk: its backup GPT is now mid-disk.
        disk.grow(128 * MIB);
        disk.fill(64 * MIB..128 * MIB);
        let report = wipe_metadata(&mut disk.device()).unwrap();
        let expected =
            [0..2 * MIB, 8 * MIB..10 * MIB, 24 * MIB..25 * MIB + 512 * 1024, 63 * MIB..64 * MIB, 127 * MIB..128 * MIB];
        assert_eq!(report.regions, expected);
        assert_eq!(report.bytes_zeroed, 7 * MIB + 512 * 1024);
        assert_eq!((report.method, report.notes.len()), (WipeMethod::Written, 0));
        assert_zeroed_exactly(&disk, &expected);
        assert_eq!(read_table(&disk.device()).unwrap(), None);
    }

    #[test]
    fn metadata_cleaning_of_an_mbr_disk_lists_the_extended_partition() {
        let disk = TempDisk::filled("wipe-mbr", 64 * MIB);
        disk.sfdisk("label: dos\nstart=4MiB, size=8MiB, type=83\nstart=20MiB, size=20MiB, type=5\n");
        let report = wipe_metadata(&mut disk.device()).unwrap();
        let expected =
            [0..MIB, 4 * MIB..5 * MIB, 11 * MIB..12 * MIB, 20 * MIB..21 * MIB, 39 * MIB..40 * MIB, 63 * MIB..64 * MIB];
        assert_eq!(report.regions, expected);
        assert_zeroed_exactly(&disk, &expected);
    }

    #[test]
    fn a_disk_without_a_table_has_its_ends_zeroed() {
        let disk = TempDisk::filled("wipe-blank", 16 * MIB);
        let report = wipe_metadata(&mut disk.device()).unwrap();
        assert_eq!(report.regions, [0..MIB, 15 * MIB..16 * MIB]);
        assert!(report.notes.is_empty());
        assert_zeroed_exactly(&disk, &report.regions);

        let tiny = TempDisk::filled("wipe-tiny", 1536 * 1024);
        let whole = 0..1536 * 1024;
        assert_eq!(wipe_metadata(&mut tiny.device()).unwrap().regions, [whole]);
    }

    #[test]
    fn a_corrupt_table_still_gets_the_disk_ends_zeroed_with_a_note() {
        let disk = TempDisk::filled("wipe-corrupt", 64 * MIB);
        disk.sfdisk("label: gpt\nsize=8MiB\n");
        disk.put(512, b"NOT PART");
        disk.put(64 * MIB - 512, b"NOT PART");
        let report = wipe_metadata(&mut disk.device()).unwrap();
        assert_eq!(report.regions, [0..MIB, 63 * MIB..64 * MIB]);
        assert_eq!(report.notes.len(), 1);
        assert!(report.notes[0].contains("is corrupt") && report.notes[0].contains("only the first and last MiB"));
        assert_zeroed_exactly(&disk, &report.regions);
    }

    #[test]
    fn a_full_wipe_zeroes_every_byte() {
        let disk = TempDisk::filled("wipe-full", 32 * MIB + 4096);
        let report = wipe_full(&mut disk.device()).unwrap();
        let whole = 0..32 * MIB + 4096;
        assert_eq!((report.bytes_zeroed, report.regions.clone()), (32 * MIB + 4096, vec![whole]));
        assert_eq!(report.method, WipeMethod::PunchHole);
        assert!(is_zero(&disk.device(), 0, 32 * MIB + 4096).unwrap());
        assert_eq!(std::fs::metadata(&disk.path).unwrap().len(), 32 * MIB + 4096, "the size is kept");
    }

    #[test]
    fn zeros_are_written_where_they_must_be() {
        let disk = TempDisk::filled("wipe-write", 20 * MIB);
        write_zeros(&disk.device(), MIB + 8..17 * MIB).unwrap();
        let written = MIB + 8..17 * MIB;
        assert_zeroed_exactly(&disk, &[written]);
    }

    #[test]
    fn is_zero_sees_one_byte_and_refuses_ranges_off_the_disk() {
        let disk = TempDisk::new("wipe-is-zero", 3 * MIB);
        let device = disk.device();
        assert!(is_zero(&device, 0, 3 * MIB).unwrap());
        disk.put(3 * MIB - 1, &[1]);
        assert!(!is_zero(&device, 0, 3 * MIB).unwrap());
        assert!(is_zero(&device, 0, 3 * MIB - 1).unwrap());
        let error = is_zero(&device, 3 * MIB - 1, 2).unwrap_err();
        assert_eq!(error.reason(), "InvalidWipeRange");
        assert!(error.to_string().contains(&disk.path.display().to_string()), "{error}");
        assert_eq!(is_zero(&device, u64::MAX, 2).unwrap_err().reason(), "InvalidWipeRange");
    }

    #[test]
    fn regions_merge() {
        assert_eq!(merge(vec![5..9, 0..2, 2..3, 8..12, 20..20, 30..40], 35), [0..3, 5..12, 30..35]);
        assert_eq!(ends(0..3 * MIB), [0..MIB, 2 * MIB..3 * MIB]);
        assert_eq!(ends(10..20), [10..20, 10..20]);
    }

    /// The agent's disk work on loop devices with 512- and 4096-byte
    /// sectors, through the block-device paths (BLKGETSIZE64, BLKSSZGET,
    /// BLKZEROOUT): add the seed to an image, check it with blkid, wipe.
    /// Needs root (loop devices) and losetup, as `make test` has.
    #[test]
    fn on_loop_devices() {
        use crate::agent::{partition, seed};
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "attaching loop devices needs root: run the tests as root (make test does)"
        );
        for sector_size in ["512", "4096"] {
            let disk = TempDisk::filled("wipe-loop", 64 * MIB);
            let image = "g\nn\n1\n\n+8M\nw\n";
            let mut fdisk = command("fdisk", "fdisk");
            fdisk.args(["-b", sector_size]).arg(&disk.path);
            assert!(output(fdisk, Some(image)).status.success());
            let mut attach = command("losetup", "mount");
            attach.args(["--find", "--show", "--sector-size", sector_size]).arg(&disk.path);
            let attached = output(attach, None);
            assert!(attached.status.success(), "{}", String::from_utf8_lossy(&attached.stderr));
            let loop_device = PathBuf::from(String::from_utf8_lossy(&attached.stdout).trim());
            let result = std::panic::catch_unwind(|| {
                let mut device = Device::open(&loop_device).unwrap();
                assert!(device.is_block_device());
                assert_eq!(
                    (device.size_bytes(), device.sector_size().to_string()),
                    (64 * MIB, sector_size.to_string())
                );
                let added = partition::append_partition(&mut device, seed::SEED_PARTITION_BYTES, "config-2").unwrap();
                seed::write(&mut device, &added, &[("meta-data", b"{}"), ("user-data", b"")]).unwrap();
                let mut blkid = command("blkid", "util-linux");
                blkid.args(["-p", "-O", &added.start_bytes.to_string()]).arg(&loop_device);
                let probed = String::from_utf8_lossy(&output(blkid, None).stdout).to_string();
                assert!(probed.contains(r#" LABEL="CIDATA""#), "{probed}");

                let report = wipe_full(&mut device).unwrap();
                assert_eq!(report.method, WipeMethod::ZeroOut);
                assert!(is_zero(&device, 0, 64 * MIB).unwrap());
            });
            let mut detach = command("losetup", "mount");
            detach.arg("--detach").arg(&loop_device);
            output(detach, None);
            if let Err(panic) = result {
                std::panic::resume_unwind(panic);
            }
            assert!(is_zero(&disk.device(), 0, 64 * MIB).unwrap(), "the zeros reached the backing file");
        }
    }
}
