//! Raw images, plain or compressed (told apart by their first bytes),
//! written in order to the target: gzip through flate2's zlib-rs backend,
//! every member of a multi-member file; zstd through ruzstd (pure Rust, so
//! the static agent needs no C library), frame after frame, skippable
//! frames skipped.

use super::ImageError;
use super::target::Target;
use std::io::{self, BufRead, Read};
use tokio::sync::mpsc;
use tokio_util::bytes::Bytes;

/// Writes are gathered to this size: fewer, larger writes, one copy.
const WRITE_SIZE: usize = 4 << 20;
/// Chunks at least this large go to the disk as they are, uncopied.
const DIRECT_WRITE: usize = 256 << 10;
/// The largest zstd window accepted, as the zstd CLI's default limit: a
/// frame asking for more is refused rather than allocated.
const ZSTD_MAX_WINDOW: u64 = 128 << 20;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The image's bytes as the download delivers them, read by a worker
/// thread: chunk by chunk, or through `Read`/`BufRead` for decompressors.
pub(super) struct Chunks {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
    /// Offset in the file of `current[0]`.
    offset: u64,
}

impl Chunks {
    pub(super) fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        Chunks { rx, current: Bytes::new(), offset: 0 }
    }

    /// The next bytes and their offset in the file; `None` at the end.
    pub(super) fn next_chunk(&mut self) -> Option<(u64, Bytes)> {
        let chunk = if self.current.is_empty() { self.rx.blocking_recv()? } else { std::mem::take(&mut self.current) };
        let offset = self.offset;
        self.offset += chunk.len() as u64;
        Some((offset, chunk))
    }

    /// At least `n` bytes from the current position, unless the file is
    /// shorter; consumes nothing.
    fn peek(&mut self, n: usize) -> &[u8] {
        while self.current.len() < n {
            let Some(more) = self.rx.blocking_recv() else { break };
            let mut joined = Vec::with_capacity(self.current.len() + more.len());
            joined.extend_from_slice(&self.current);
            joined.extend_from_slice(&more);
            self.current = Bytes::from(joined);
        }
        &self.current
    }
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Chunks {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.current.is_empty() {
            self.current = self.rx.blocking_recv().unwrap_or_default();
        }
        Ok(&self.current)
    }

    fn consume(&mut self, n: usize) {
        let n = n.min(self.current.len());
        self.current = self.current.slice(n..);
        self.offset += n as u64;
    }
}

/// Writes a raw image, decompressing it if its first bytes say so.
/// Returns the number of bytes written.
pub(super) fn write(chunks: &mut Chunks, target: &mut Target, file_size: Option<u64>) -> Result<u64, ImageError> {
    let head = chunks.peek(ZSTD_MAGIC.len());
    if head.starts_with(&GZIP_MAGIC) {
        let mut gzip = flate2::bufread::MultiGzDecoder::new(chunks);
        copy_decoded(&mut gzip, target, 0, &mut vec![0; WRITE_SIZE])
    } else if head.starts_with(&ZSTD_MAGIC) {
        write_zstd(chunks, target)
    } else {
        if let Some(size) = file_size {
            target.check_fits(size, false)?;
        }
        write_plain(chunks, target)
    }
}

fn write_plain(chunks: &mut Chunks, target: &mut Target) -> Result<u64, ImageError> {
    let mut gathered = Vec::with_capacity(WRITE_SIZE);
    let mut gathered_at = 0;
    let mut end = 0;
    while let Some((offset, chunk)) = chunks.next_chunk() {
        end = offset + chunk.len() as u64;
        let direct = chunk.len() >= DIRECT_WRITE;
        if !gathered.is_empty() && (direct || gathered.len() + chunk.len() > WRITE_SIZE) {
            target.write_at(gathered_at, &gathered)?;
            gathered.clear();
        }
        if direct {
            target.write_at(offset, &chunk)?;
            continue;
        }
        if gathered.is_empty() {
            gathered_at = offset;
        }
        gathered.extend_from_slice(&chunk);
    }
    if !gathered.is_empty() {
        target.write_at(gathered_at, &gathered)?;
    }
    Ok(end)
}

/// Decompressed bytes from `decoder`, written from `start` on in pieces of
/// `buffer`'s size. Returns how many.
fn copy_decoded(
    decoder: &mut impl Read,
    target: &mut Target,
    start: u64,
    buffer: &mut [u8],
) -> Result<u64, ImageError> {
    let mut written = 0;
    loop {
        let filled = fill(decoder, buffer).map_err(|e| corrupt(&e))?;
        if filled == 0 {
            return Ok(written);
        }
        target.write_at(start + written, &buffer[..filled])?;
        written += filled as u64;
    }
}

/// Reads until `buffer` is full or the decoder ends.
fn fill(decoder: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match decoder.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// A zstd stream: one frame after another (as `zstd -T` and `pzstd` write
/// them), skippable frames skipped.
fn write_zstd(chunks: &mut Chunks, target: &mut Target) -> Result<u64, ImageError> {
    use ruzstd::decoding::FrameDecoder;
    use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};

    let mut buffer = vec![0; WRITE_SIZE];
    let mut written: u64 = 0;
    let mut decoder = FrameDecoder::new();
    decoder.set_max_window_size(ZSTD_MAX_WINDOW);
    while !chunks.fill_buf().map_err(|e| corrupt(&e))?.is_empty() {
        match decoder.reset(&mut *chunks) {
            Ok(()) => {}
            Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame { length, .. })) => {
                let skipped =
                    io::copy(&mut (&mut *chunks).take(u64::from(length)), &mut io::sink()).map_err(|e| corrupt(&e))?;
                if skipped < u64::from(length) {
                    return Err(corrupt(&"the stream ends inside a skippable frame"));
                }
                continue;
            }
            Err(e) => return Err(corrupt(&e)),
        }
        // The frame header may state the frame's size: a lower bound of the
        // image's, checked before writing a byte of it.
        target.check_fits(written.saturating_add(decoder.content_size()), true)?;
        let mut frame = ZstdFrame { decoder: &mut decoder, source: &mut *chunks };
        written += copy_decoded(&mut frame, target, written, &mut buffer)?;
    }
    Ok(written)
}

/// One zstd frame as a reader of its decompressed bytes.
struct ZstdFrame<'a> {
    decoder: &'a mut ruzstd::decoding::FrameDecoder,
    source: &'a mut Chunks,
}

impl Read for ZstdFrame<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use ruzstd::decoding::BlockDecodingStrategy;
        loop {
            let n = self.decoder.read(buf)?;
            if n > 0 || self.decoder.is_finished() {
                return Ok(n);
            }
            self.decoder
                .decode_blocks(&mut *self.source, BlockDecodingStrategy::UptoBytes(WRITE_SIZE))
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
    }
}

fn corrupt(cause: &dyn std::fmt::Display) -> ImageError {
    ImageError::Format { format: "raw", detail: format!("its compression is corrupt or truncated: {cause}") }
}
