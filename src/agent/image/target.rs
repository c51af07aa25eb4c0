//! The disk the image goes to: a block device, or a regular file (tests,
//! benchmarks). Every write is positioned, checked against the capacity
//! first, and timed, so the report can say how long the disk kept us busy.

use super::ImageError;
use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, OFlag, fallocate};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
nix::ioctl_write_ptr_bad!(blkzeroout, nix::request_code_none!(0x12, 127), [u64; 2]);

/// Zeros for ranges the device cannot zero by itself; in .bss, so free
/// until used.
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// Writeback is started after every this many bytes written, so the disk
/// works while the download goes on instead of all at the final fsync.
const WRITEBACK_STEP: u64 = 32 << 20;

pub(super) struct Target {
    file: File,
    name: String,
    /// `None` for an empty regular file, which grows to what the image needs.
    capacity: Option<u64>,
    block_device: bool,
    /// Every byte not written yet reads as zero: an empty file extended to
    /// the image's size. Zeroing is then a no-op.
    zero_filled: bool,
    busy: Duration,
    /// Bytes written since writeback was last started.
    unflushed: u64,
}

impl Target {
    /// Opens `path` read-write. A block device is opened exclusively (the
    /// kernel refuses while it is mounted or held); a regular file must
    /// exist (a typo in a device path must not create a file in /dev) and
    /// keeps its size unless it is empty.
    pub(super) fn open(path: &Path) -> Result<Self, ImageError> {
        let name = path.display().to_string();
        let unusable = |detail: String| ImageError::TargetUnusable { target: name.clone(), detail };
        let kind = std::fs::metadata(path).map_err(|e| unusable(e.to_string()))?.file_type();
        let block_device = kind.is_block_device();
        if !block_device && !kind.is_file() {
            return Err(unusable("it is neither a block device nor a regular file".into()));
        }
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        if block_device {
            options.custom_flags(OFlag::O_EXCL.bits());
        }
        let file = options.open(path).map_err(|e| match e.raw_os_error() {
            Some(code) if code == Errno::EBUSY as i32 => {
                unusable("it is in use (mounted, or held by another process)".into())
            }
            _ => unusable(e.to_string()),
        })?;
        let capacity = if block_device {
            let mut size = 0u64;
            // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which
            // points to a live, writable u64.
            unsafe { blkgetsize64(file.as_raw_fd(), &mut size) }
                .map_err(|e| unusable(format!("cannot read its size: {e}")))?;
            Some(size)
        } else {
            let len = file.metadata().map_err(|e| unusable(e.to_string()))?.len();
            (len > 0).then_some(len)
        };
        Ok(Target { file, name, capacity, block_device, zero_filled: false, busy: Duration::ZERO, unflushed: 0 })
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// Refuses an image of `size` bytes that does not fit. An empty file
    /// is extended to `size`, after which it reads as zeros.
    pub(super) fn reserve(&mut self, size: u64) -> Result<(), ImageError> {
        match self.capacity {
            Some(capacity) if size > capacity => Err(self.too_large(size, false)),
            Some(_) => Ok(()),
            None => {
                self.timed(|file| file.set_len(size)).map_err(|source| self.write_error(0, source))?;
                self.capacity = Some(size);
                self.zero_filled = true;
                Ok(())
            }
        }
    }

    /// Refuses an image of `size` bytes (`at_least` when that is a lower
    /// bound) that does not fit; reserves nothing.
    pub(super) fn check_fits(&self, size: u64, at_least: bool) -> Result<(), ImageError> {
        match self.capacity {
            Some(capacity) if size > capacity => Err(self.too_large(size, at_least)),
            _ => Ok(()),
        }
    }

    pub(super) fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), ImageError> {
        let end = offset.saturating_add(data.len() as u64);
        if self.capacity.is_some_and(|capacity| end > capacity) {
            return Err(self.too_large(end, true));
        }
        self.timed(|file| file.write_all_at(data, offset)).map_err(|source| self.write_error(offset, source))?;
        self.unflushed += data.len() as u64;
        if self.unflushed >= WRITEBACK_STEP {
            self.unflushed = 0;
            let _ = self.timed(start_writeback);
        }
        Ok(())
    }

    /// Makes `len` bytes at `offset` read as zeros, by the cheapest means
    /// the target offers; the disk is never assumed to be zero already.
    pub(super) fn zero(&mut self, offset: u64, len: u64) -> Result<(), ImageError> {
        let end = offset.saturating_add(len);
        if self.capacity.is_some_and(|capacity| end > capacity) {
            return Err(self.too_large(end, true));
        }
        if self.zero_filled || len == 0 {
            return Ok(());
        }
        let block_device = self.block_device;
        let offloaded = self.timed(|file| {
            if !(offset | len).is_multiple_of(512) {
                Err(Errno::EINVAL)
            } else if block_device {
                // SAFETY: BLKZEROOUT reads a [start, length] pair of u64
                // through the pointer, which points to a live array.
                unsafe { blkzeroout(file.as_raw_fd(), &[offset, len]) }.map(drop)
            } else {
                let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
                fallocate(file, flags, offset as i64, len as i64)
            }
            .map_err(io::Error::from)
        });
        match offloaded {
            Ok(()) => Ok(()),
            // Unaligned, or a device or filesystem that cannot: write them.
            Err(_) => self.write_zeros(offset, len),
        }
    }

    fn write_zeros(&mut self, offset: u64, len: u64) -> Result<(), ImageError> {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(ZEROS.len() as u64);
            self.write_at(offset + done, &ZEROS[..n as usize])?;
            done += n;
        }
        Ok(())
    }

    /// Flushes everything to stable storage.
    pub(super) fn sync(&mut self) -> Result<(), ImageError> {
        self.timed(|file| file.sync_all()).map_err(|source| ImageError::DiskSync { target: self.name.clone(), source })
    }

    /// Time spent in writes, zeroing and syncs so far.
    pub(super) fn busy(&self) -> Duration {
        self.busy
    }

    fn timed<T>(&mut self, op: impl FnOnce(&File) -> io::Result<T>) -> io::Result<T> {
        let start = Instant::now();
        let result = op(&self.file);
        self.busy += start.elapsed();
        result
    }

    fn too_large(&self, image_bytes: u64, at_least: bool) -> ImageError {
        ImageError::TooLarge {
            target: self.name.clone(),
            image_bytes,
            at_least,
            target_bytes: self.capacity.unwrap_or(0),
        }
    }

    fn write_error(&self, offset: u64, source: io::Error) -> ImageError {
        ImageError::DiskWrite { target: self.name.clone(), offset, source }
    }
}

/// Starts writing the file's dirty pages out, without waiting for them.
/// Advisory: a failure here shows again, and is reported, at the fsync.
fn start_writeback(file: &File) -> io::Result<()> {
    // SAFETY: sync_file_range only reads its integer arguments; the fd is
    // open for the duration of the call.
    let result = unsafe { nix::libc::sync_file_range(file.as_raw_fd(), 0, 0, nix::libc::SYNC_FILE_RANGE_WRITE) };
    Errno::result(result).map(drop).map_err(io::Error::from)
}
