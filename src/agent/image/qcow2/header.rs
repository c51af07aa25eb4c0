//! The qcow2 header (QEMU's docs/interop/qcow2.txt), checked for everything
//! a standalone image must not use and bounded before anything is allocated
//! from it.

/// Bytes of the header read: the version 3 fields through
/// `compression_type` (byte 104), rounded up to a multiple of 8.
pub(super) const LEN: usize = 112;

const MAGIC: &[u8; 4] = b"QFI\xfb";
const MIN_CLUSTER_BITS: u32 = 9;
/// QEMU's implementation limit (2 MiB clusters).
const MAX_CLUSTER_BITS: u32 = 21;
/// QEMU's implementation limit on the L1 table; it also bounds the
/// virtual size this converter accepts for a given cluster size.
pub(super) const MAX_L1_BYTES: u64 = 32 << 20;

/// Host offsets are below 64 PB (56 bits) in every qcow2 table.
const MAX_OFFSET: u64 = 1 << 56;

const DIRTY: u64 = 1 << 0;
const CORRUPT: u64 = 1 << 1;
const EXTERNAL_DATA_FILE: u64 = 1 << 2;
const COMPRESSION_TYPE: u64 = 1 << 3;
const EXTENDED_L2: u64 = 1 << 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Compression {
    Deflate,
    Zstd,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Header {
    pub(super) version: u32,
    pub(super) cluster_bits: u32,
    pub(super) virtual_size: u64,
    pub(super) l1_offset: u64,
    /// L1 entries that map the virtual disk (the table may have more).
    pub(super) l1_entries: u64,
    pub(super) compression: Compression,
}

impl Header {
    pub(super) fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Guest bytes one L2 table maps.
    pub(super) fn l2_span(&self) -> u64 {
        self.cluster_size() * (self.cluster_size() / 8)
    }
}

/// Parses the first bytes of the file (up to [`LEN`], fewer if the file is
/// shorter). The error is a sentence naming what is wrong.
pub(super) fn parse(bytes: &[u8]) -> Result<Header, String> {
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err("it does not start with the qcow2 magic QFI\\xfb".into());
    }
    let version = be32(bytes, 4);
    let fixed_len = match version {
        2 => 72,
        3 => 104,
        v => return Err(format!("qcow2 version {v} is not supported (only 2 and 3)")),
    };
    if bytes.len() < fixed_len {
        return Err(format!("the file ends inside its {fixed_len}-byte header"));
    }
    let header_len = if version == 3 { be32(bytes, 100) } else { 72 };
    if header_len < fixed_len as u32 {
        return Err(format!("its header length {header_len} is below the {fixed_len} bytes of version {version}"));
    }
    if be64(bytes, 8) != 0 {
        return Err("it has a backing file; flatten it first (qemu-img convert -O qcow2 without -B)".into());
    }
    let cluster_bits = be32(bytes, 20);
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
        return Err(format!(
            "its cluster_bits {cluster_bits} is outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS} (512 B to 2 MiB clusters)"
        ));
    }
    if be32(bytes, 32) != 0 {
        return Err("it is encrypted; decrypt it first (qemu-img convert --object secret,...)".into());
    }
    let compression = if version == 3 { v3_features(bytes, header_len)? } else { Compression::Deflate };
    let virtual_size = be64(bytes, 24);
    let cluster_size = 1u64 << cluster_bits;
    let l2_span = cluster_size * (cluster_size / 8);
    let l1_entries = virtual_size.div_ceil(l2_span);
    let l1_size = u64::from(be32(bytes, 36));
    if l1_size * 8 > MAX_L1_BYTES || l1_entries * 8 > MAX_L1_BYTES {
        return Err(format!(
            "its L1 table ({} entries) exceeds the {} MiB limit qemu also has",
            l1_size.max(l1_entries),
            MAX_L1_BYTES >> 20
        ));
    }
    if l1_size < l1_entries {
        return Err(format!(
            "its L1 table has {l1_size} entries but a virtual size of {virtual_size} bytes needs {l1_entries}"
        ));
    }
    let l1_offset = be64(bytes, 40);
    if l1_entries > 0 && (!l1_offset.is_multiple_of(cluster_size) || l1_offset == 0 || l1_offset >= MAX_OFFSET) {
        return Err(format!(
            "its L1 table offset {l1_offset} is not a cluster boundary past the header and below 64 PB"
        ));
    }
    Ok(Header { version, cluster_bits, virtual_size, l1_offset, l1_entries, compression })
}

/// The incompatible features of a version 3 header: refuses every one
/// this converter cannot honour, and returns the compression type.
fn v3_features(bytes: &[u8], header_len: u32) -> Result<Compression, String> {
    let incompatible = be64(bytes, 72);
    let refuse = [
        (DIRTY, "it is marked dirty (not closed cleanly); repair it with qemu-img check -r all"),
        (CORRUPT, "it is marked corrupt; repair it with qemu-img check -r all"),
        (EXTERNAL_DATA_FILE, "its data is in an external data file"),
        (EXTENDED_L2, "it uses extended L2 entries (subclusters); convert it without extended_l2"),
    ];
    for (bit, why) in refuse {
        if incompatible & bit != 0 {
            return Err(why.into());
        }
    }
    let unknown = incompatible & !(DIRTY | CORRUPT | EXTERNAL_DATA_FILE | COMPRESSION_TYPE | EXTENDED_L2);
    if unknown != 0 {
        return Err(format!("it uses incompatible features this writer does not know (bits {unknown:#x})"));
    }
    let refcount_order = be32(bytes, 96);
    if refcount_order > 6 {
        return Err(format!("its refcount_order {refcount_order} is above the maximum of 6"));
    }
    let compression_type = if header_len > 104 { bytes.get(104).copied() } else { Some(0) };
    match (incompatible & COMPRESSION_TYPE != 0, compression_type) {
        (false, Some(0)) => Ok(Compression::Deflate),
        (false, Some(t)) => Err(format!("its compression type is {t} without the compression type feature bit")),
        (true, Some(1)) => Ok(Compression::Zstd),
        (true, Some(t)) => Err(format!("its compression type {t} is not supported (0 zlib and 1 zstd are)")),
        (_, None) => Err("the file ends inside its header".into()),
    }
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    if let Some(field) = bytes.get(at..at + 4) {
        word.copy_from_slice(field);
    }
    u32::from_be_bytes(word)
}

pub(super) fn be64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    if let Some(field) = bytes.get(at..at + 8) {
        word.copy_from_slice(field);
    }
    u64::from_be_bytes(word)
}
