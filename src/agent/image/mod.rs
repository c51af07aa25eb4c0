//! Streams an OS image from an HTTP(S) URL onto a disk: [`write_image`].
//!
//! Three stages run at once, joined by bounded channels so the slowest one
//! sets the pace and memory stays flat: the download (in the caller's task),
//! the hash (a blocking thread) and the writer (another blocking thread,
//! which also decompresses and converts). A downloaded chunk goes to both
//! threads as a reference-counted buffer, never copied; the writer hands
//! large chunks straight to `pwrite` and gathers small ones into 4 MiB
//! writes. The queues hold at most 32 chunks each (hyper's chunks are at
//! most about 800 KiB). The target starts writeback every 32 MiB, so the
//! disk works during the download instead of all at the final fsync: on a
//! 2-core machine this writes a raw image faster than `curl | dd`, hashing
//! included.
//!
//! The checksum covers the file as served and is only known at the end, so
//! the writer finishes its work (qcow2 clusters fetched again, the final
//! fsync) only once the hash matched. After a mismatch the disk holds
//! whatever was written; the caller wipes it.
//!
//! The target is a block device, opened exclusively (the kernel refuses a
//! mounted disk), or an existing regular file: an empty file grows to the
//! image's size, a non-empty one keeps its size and behaves as a disk. The
//! image is refused before any write when its size is known up front (a
//! plain raw image with a Content-Length, a qcow2 header, a zstd frame
//! header), else at the first write past the end. Ranges a qcow2 image
//! leaves zero are zeroed on the target, once each (BLKZEROOUT, or a
//! punched hole; nothing on an empty file just grown, which reads as
//! zeros), never assumed zero; raw images are written byte for byte, zeros
//! included.
//!
//! Resuming, formats and the out-of-order qcow2 handling are described in
//! the `fetch`, `raw` and `qcow2` submodules.
//!
//! Dependencies beyond girder's usual ones: none. `rustls` (already
//! girder's) installs ring's TLS provider when the process has none, as
//! reqwest built without a provider panics otherwise; `Bytes` comes through
//! `tokio_util`'s re-export.

mod checksum;
pub mod command;
mod error;
mod fetch;
mod qcow2;
mod raw;
mod target;
#[cfg(test)]
mod tests;

pub use error::ImageError;

use crate::api::node::{ChecksumType, ImageFormat, ImageSpec};
use fetch::{Body, Fetcher};
use raw::Chunks;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use target::Target;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio_util::bytes::Bytes;

/// Chunks queued between the download and each worker.
const QUEUE_CHUNKS: usize = 32;
/// Least time between two progress reports.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// How [`write_image`] retries and how much it may hold.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    /// Waits after each failed attempt (connection, HTTP 5xx, a transfer
    /// cut short); their number plus one is the attempts of a whole write,
    /// resumes and re-fetches included.
    pub retry_delays: Vec<Duration>,
    /// Longest wait for a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of an answer before the attempt
    /// counts as failed.
    pub stall_timeout: Duration,
    /// Most memory for qcow2 data that precedes the table mapping it (see
    /// the `qcow2` module); beyond it, such data is fetched again.
    pub qcow2_reorder_memory: usize,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            retry_delays: [1, 2, 4, 8].map(Duration::from_secs).to_vec(),
            connect_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(60),
            qcow2_reorder_memory: 64 << 20,
        }
    }
}

/// How far the download is, for status updates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub downloaded_bytes: u64,
    /// The file's size, when the server said it.
    pub total_bytes: Option<u64>,
}

/// What a successful write did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteReport {
    /// Bytes of the file received (compressed bytes for compressed images).
    pub downloaded_bytes: u64,
    /// Bytes of the virtual disk now on the target, zeroed ranges included.
    pub written_bytes: u64,
    /// From the first request to the last byte of the file.
    pub download_time: Duration,
    /// Time the writer spent in writes, zeroing and the final fsync.
    pub write_busy_time: Duration,
    /// From the last byte of the file to the end: checksum verdict, qcow2
    /// clusters fetched again, final fsync.
    pub finish_time: Duration,
    /// Interrupted transfers continued with a Range request.
    pub resumes: u32,
    /// qcow2 bytes fetched a second time (data that preceded its mapping).
    pub refetched_bytes: u64,
    /// The file's digest, lowercase hex (it matched the spec's).
    pub digest: String,
}

/// Downloads `image` and writes its virtual disk to `target` (a block
/// device, or a regular file), verifying the checksum. `progress` is called
/// from the returned future a few times a second at most, and once at the
/// end of the download. `options` are copied at the call, so a temporary
/// will do.
pub fn write_image<'a>(
    image: &'a ImageSpec,
    target: &'a Path,
    options: &WriteOptions,
    progress: &'a (dyn Fn(Progress) + Send + Sync),
) -> impl Future<Output = Result<WriteReport, ImageError>> + Send + use<'a> {
    let options = options.clone();
    async move { write(image, target, &options, progress).await }
}

async fn write(
    image: &ImageSpec,
    target: &Path,
    options: &WriteOptions,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<WriteReport, ImageError> {
    let expected = checksum::expected_digest(&image.checksum, image.checksum_type)?;
    let fetcher = Arc::new(Fetcher::new(&image.url, options)?);
    let disk = Target::open(target)?;
    tracing::info!(url = fetcher.shown(), target = disk.name(), format = ?image.format, "writing image");
    let started = Instant::now();
    let mut body = Body::whole(&fetcher).await?;
    let total = body.total();

    let (hash_tx, hash_rx) = mpsc::channel(QUEUE_CHUNKS);
    let (data_tx, data_rx) = mpsc::channel(QUEUE_CHUNKS);
    let (verdict_tx, verdict_rx) = oneshot::channel();
    let hasher = tokio::task::spawn_blocking({
        let kind = image.checksum_type;
        move || hash_all(hash_rx, kind)
    });
    let job = WriterJob {
        format: image.format,
        chunks: Chunks::new(data_rx),
        target: disk,
        file_size: total,
        verdict: verdict_rx,
        ranges: HttpRanges { fetcher: fetcher.clone(), runtime: Handle::current() },
        reorder_memory: options.qcow2_reorder_memory,
    };
    let writer = tokio::task::spawn_blocking(move || job.run());

    let streamed = stream(&mut body, total, &hash_tx, &data_tx, progress).await;
    drop((hash_tx, data_tx));
    let download_time = started.elapsed();
    let finishing = Instant::now();
    let digest = hasher.await.map_err(|e| internal_error("the hash thread", &e))?;
    let verified = streamed.is_ok() && digest == expected;
    // The writer waits for this before fetching clusters again and syncing.
    let _ = verdict_tx.send(verified);
    let written = writer.await.map_err(|e| internal_error("the writer thread", &e))?;

    let downloaded_bytes = match streamed {
        Ok(bytes) => bytes,
        Err(Stop::Download(error)) => return Err(error),
        Err(Stop::WriterGone) => {
            return Err(written.err().unwrap_or_else(|| internal_error("the writer thread", &"it stopped early")));
        }
    };
    if !verified {
        return Err(ImageError::ChecksumMismatch { expected, actual: digest });
    }
    let outcome = written?;
    let report = WriteReport {
        downloaded_bytes,
        written_bytes: outcome.written,
        download_time,
        write_busy_time: outcome.busy,
        finish_time: finishing.elapsed(),
        resumes: fetcher.resumes(),
        refetched_bytes: outcome.refetched,
        digest,
    };
    tracing::info!(url = fetcher.shown(), target = target.display().to_string(), ?report, "image written");
    Ok(report)
}

/// Why the download loop stopped early.
enum Stop {
    Download(ImageError),
    /// The writer stopped reading: it failed, and says why.
    WriterGone,
}

/// Sends every chunk of the file to both workers. Returns its size.
async fn stream(
    body: &mut Body<'_>,
    total: Option<u64>,
    hash_tx: &mpsc::Sender<Bytes>,
    data_tx: &mpsc::Sender<Bytes>,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<u64, Stop> {
    let mut downloaded = 0;
    let mut reported = Instant::now();
    progress(Progress { downloaded_bytes: 0, total_bytes: total });
    while let Some(chunk) = body.next_chunk().await.map_err(Stop::Download)? {
        downloaded += chunk.len() as u64;
        if hash_tx.send(chunk.clone()).await.is_err() || data_tx.send(chunk).await.is_err() {
            return Err(Stop::WriterGone);
        }
        if reported.elapsed() >= PROGRESS_INTERVAL {
            progress(Progress { downloaded_bytes: downloaded, total_bytes: total });
            reported = Instant::now();
        }
    }
    progress(Progress { downloaded_bytes: downloaded, total_bytes: total });
    Ok(downloaded)
}

fn hash_all(mut chunks: mpsc::Receiver<Bytes>, kind: ChecksumType) -> String {
    let mut hasher = checksum::Hasher::new(kind);
    while let Some(chunk) = chunks.blocking_recv() {
        hasher.update(&chunk);
    }
    hasher.finish()
}

/// Everything the writer thread owns.
struct WriterJob {
    format: ImageFormat,
    chunks: Chunks,
    target: Target,
    file_size: Option<u64>,
    /// Whether the download completed and its checksum matched.
    verdict: oneshot::Receiver<bool>,
    ranges: HttpRanges,
    reorder_memory: usize,
}

struct WriterOutcome {
    written: u64,
    busy: Duration,
    refetched: u64,
}

impl WriterJob {
    fn run(self) -> Result<WriterOutcome, ImageError> {
        let WriterJob { format, mut chunks, mut target, file_size, verdict, mut ranges, reorder_memory } = self;
        // A dropped sender (the caller went away) counts as a no.
        let verified = move || verdict.blocking_recv().unwrap_or(false);
        let (written, refetched) = match format {
            ImageFormat::Raw => {
                let written = raw::write(&mut chunks, &mut target, file_size)?;
                if !verified() {
                    return Ok(WriterOutcome { written, busy: target.busy(), refetched: 0 });
                }
                (written, 0)
            }
            ImageFormat::Qcow2 => {
                let mut converter = qcow2::Converter::new(reorder_memory);
                while let Some((offset, chunk)) = chunks.next_chunk() {
                    converter.feed(offset, &chunk, &mut target)?;
                }
                if !verified() {
                    return Ok(WriterOutcome { written: 0, busy: target.busy(), refetched: 0 });
                }
                converter.end_of_stream(&mut target)?;
                converter.resolve(&mut ranges, &mut target)?;
                (converter.virtual_size().unwrap_or(0), converter.refetched())
            }
        };
        target.sync()?;
        Ok(WriterOutcome { written, busy: target.busy(), refetched })
    }
}

/// Byte ranges of the image fetched again, from the writer thread.
struct HttpRanges {
    fetcher: Arc<Fetcher>,
    runtime: Handle,
}

impl qcow2::RangeSource for HttpRanges {
    fn fetch(
        &mut self,
        start: u64,
        end: u64,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), ImageError>,
    ) -> Result<(), ImageError> {
        self.runtime.block_on(async {
            let mut body = Body::range(&self.fetcher, start, end);
            while let Some(chunk) = body.next_chunk().await? {
                sink(&chunk)?;
            }
            Ok(())
        })
    }

    fn changed(&self, detail: String) -> ImageError {
        ImageError::Changed { url: self.fetcher.shown().to_owned(), detail }
    }
}

fn internal_error(what: &str, cause: &dyn std::fmt::Display) -> ImageError {
    ImageError::Internal { detail: format!("{what} failed: {cause}") }
}
