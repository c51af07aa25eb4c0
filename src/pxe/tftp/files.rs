//! File contents for transfers. A whole file is read into memory once and shared by all
//! transfers (a rack booting fetches the same iPXE binary many times, at once and one
//! after the other); it is kept while in use and for a while after, within a memory
//! budget, and read again when its size or modification time changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How long an unused file stays in memory.
const KEEP: Duration = Duration::from_secs(60);
/// Bytes of unused files kept at most (files in use are never dropped).
const BUDGET: u64 = 64 * 1024 * 1024;

use super::Refusal;
use super::packet::ErrorCode;
use super::path::open_error;

#[derive(Default)]
pub(crate) struct FileCache {
    entries: Mutex<HashMap<PathBuf, Entry>>,
}

struct Entry {
    len: u64,
    modified: Option<SystemTime>,
    data: Arc<[u8]>,
    used: Instant,
}

impl FileCache {
    /// The contents of `path` (canonical), refused when it is not a regular file or is
    /// larger than `max_size`. `filename` is the name the client asked for, for messages.
    pub(crate) async fn load(&self, path: &Path, filename: &str, max_size: u64) -> Result<Arc<[u8]>, Refusal> {
        // A stat of a local file takes microseconds; a hop to the blocking pool
        // costs more than that on every request of a lock-step client.
        let metadata = std::fs::metadata(path).map_err(|error| open_error(filename, &error))?;
        if metadata.is_dir() {
            return Err(Refusal::not_found(format!("{filename} is a directory, not a file")));
        }
        if !metadata.is_file() {
            return Err(Refusal::access(format!("{filename} is not a regular file")));
        }
        if metadata.len() > max_size {
            return Err(too_large(filename, metadata.len(), max_size));
        }
        let modified = metadata.modified().ok();
        if let Some(data) = self.lookup(path, metadata.len(), modified) {
            return Ok(data);
        }
        let bytes = tokio::fs::read(path).await.map_err(|error| open_error(filename, &error))?;
        // The file may have grown since the metadata was read.
        let len = bytes.len() as u64;
        if len > max_size {
            return Err(too_large(filename, len, max_size));
        }
        let data: Arc<[u8]> = bytes.into();
        self.insert(path, Entry { len, modified, data: data.clone(), used: Instant::now() });
        Ok(data)
    }

    fn lookup(&self, path: &Path, len: u64, modified: Option<SystemTime>) -> Option<Arc<[u8]>> {
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = entries.get_mut(path)?;
        if entry.len != len || entry.modified != modified || modified.is_none() {
            return None;
        }
        entry.used = Instant::now();
        Some(entry.data.clone())
    }

    fn insert(&self, path: &Path, entry: Entry) {
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.insert(path.to_path_buf(), entry);
        // Files in use stay; unused ones go after KEEP, and beyond the budget the
        // least recently used go first.
        let now = Instant::now();
        entries.retain(|_, e| Arc::strong_count(&e.data) > 1 || now.duration_since(e.used) < KEEP);
        let mut unused: Vec<(Instant, PathBuf, u64)> = entries
            .iter()
            .filter(|(_, e)| Arc::strong_count(&e.data) == 1)
            .map(|(path, e)| (e.used, path.clone(), e.len))
            .collect();
        let mut kept: u64 = unused.iter().map(|(_, _, len)| len).sum();
        unused.sort();
        for (_, path, len) in unused {
            if kept <= BUDGET {
                break;
            }
            entries.remove(&path);
            kept -= len;
        }
    }
}

fn too_large(filename: &str, len: u64, max_size: u64) -> Refusal {
    Refusal {
        code: ErrorCode::DiskFull,
        message: format!("{filename} is too large to serve ({len} bytes, the limit is {max_size})"),
        result: "refused",
    }
}

/// Netascii as RFC 764 wants it from a Unix file: LF becomes CR LF, a bare CR becomes CR NUL.
pub(crate) fn to_netascii(data: &[u8]) -> Vec<u8> {
    let extra = data.iter().filter(|&&b| b == b'\n' || b == b'\r').count();
    let mut out = Vec::with_capacity(data.len() + extra);
    for &byte in data {
        match byte {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::TestDir;
    use super::*;

    #[test]
    fn netascii_conversion() {
        assert_eq!(to_netascii(b"a\nb\rc\r\n"), b"a\r\nb\r\0c\r\0\r\n");
        assert_eq!(to_netascii(b""), b"");
    }

    #[tokio::test]
    async fn shared_while_in_use_and_refusals() {
        let dir = TestDir::new("tftp-files");
        let file = dir.write("ipxe.efi", b"0123456789");
        dir.write("sub/x", b"");
        let cache = FileCache::default();

        let first = cache.load(&file, "ipxe.efi", 100).await.expect("load");
        let second = cache.load(&file, "ipxe.efi", 100).await.expect("load again");
        assert!(Arc::ptr_eq(&first, &second), "a file in use is read once");
        assert_eq!(&first[..], b"0123456789");
        drop((first, second));
        let third = cache.load(&file, "ipxe.efi", 100).await.expect("load after use");
        assert_eq!(&third[..], b"0123456789", "kept for the next transfer");
        // A changed file is read again.
        std::thread::sleep(Duration::from_millis(20));
        let file = dir.write("ipxe.efi", b"changed, and longer");
        let fourth = cache.load(&file, "ipxe.efi", 100).await.expect("load the new content");
        assert_eq!(&fourth[..], b"changed, and longer");
        assert!(!Arc::ptr_eq(&third, &fourth));

        let too_large = cache.load(&file, "ipxe.efi", 9).await.expect_err("too large");
        assert_eq!(too_large.code, ErrorCode::DiskFull);
        assert!(too_large.message.contains("too large"), "{}", too_large.message);

        let directory = cache.load(&dir.path().join("sub"), "sub", 100).await.expect_err("directory");
        assert_eq!(directory.code, ErrorCode::FileNotFound);
        assert!(directory.message.contains("is a directory"), "{}", directory.message);
    }
}
