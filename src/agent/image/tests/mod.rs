//! Tests against real peers: an in-process HTTP server (which can be made
//! to misbehave), qemu-img for qcow2 images, gzip and zstd.

mod download;
mod qcow2;
mod raw;

use super::{ImageError, Progress, WriteOptions, WriteReport, write_image};
use crate::api::node::{ChecksumType, ImageFormat, ImageSpec};
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use sha2::Digest;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A directory removed when dropped.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("girder-image-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir(path)
    }

    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// An empty file, which the writer grows.
    pub(super) fn empty_file(&self, name: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, b"").expect("create the target");
        path
    }

    /// A file of `len` bytes of `fill`, which behaves as a disk of that size.
    pub(super) fn disk(&self, name: &str, len: usize, fill: u8) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, vec![fill; len]).expect("create the target");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(super) fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| (self.next() >> 32) as u8).collect()
    }
}

/// A disk image with random data, explicit zeros and holes, in 64 KiB
/// blocks (some half data, half zeros), `len` bytes long.
pub(super) fn disk_contents(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut disk = vec![0u8; len];
    for block in disk.chunks_mut(64 << 10) {
        match rng.next() % 4 {
            0 => {} // zeros
            1 => {
                let half = block.len() / 2;
                block[..half].copy_from_slice(&rng.bytes(half));
            }
            _ => block.copy_from_slice(&rng.bytes(block.len())),
        }
    }
    disk
}

pub(super) fn sha256_hex(data: &[u8]) -> String {
    super::checksum::hex(&sha2::Sha256::digest(data))
}

pub(super) fn spec(url: &str, data: &[u8], format: ImageFormat) -> ImageSpec {
    ImageSpec { url: url.into(), checksum: sha256_hex(data), checksum_type: ChecksumType::Sha256, format }
}

/// Options for tests: retries without waiting.
pub(super) fn quick() -> WriteOptions {
    WriteOptions { retry_delays: vec![Duration::from_millis(1); 4], ..WriteOptions::default() }
}

pub(super) async fn write(spec: &ImageSpec, target: &Path, options: &WriteOptions) -> Result<WriteReport, ImageError> {
    write_image(spec, target, options, &|_: Progress| {}).await
}

/// Runs a tool the tests need, failing with the Debian package to install
/// when it is missing.
pub(super) fn run(tool: &str, package: &str, args: &[&str]) -> Vec<u8> {
    let output = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {tool} ({e}): install the Debian package {package}");
    });
    assert!(output.status.success(), "{tool} {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

pub(super) fn qemu_img(args: &[&str]) {
    run("qemu-img", "qemu-utils", args);
}

/// How the test server misbehaves.
#[derive(Clone, Default)]
pub(super) struct Behaviour {
    /// Answers 200 with the whole file to range requests.
    pub(super) ignore_range: bool,
    /// The first answer that would send this byte stops just before it and
    /// drops the connection.
    pub(super) cut_once_at: Option<u64>,
    /// Answers range requests with bytes starting one later than asked.
    pub(super) wrong_range_start: bool,
    /// Sends bodies in pieces of this size.
    pub(super) piece: Option<usize>,
    /// No Content-Length (chunked transfer).
    pub(super) no_length: bool,
    /// Answers after the first have another ETag: the file changed.
    pub(super) new_etag_later: bool,
    /// Answers after the first serve the file with one byte changed, under
    /// the same ETag.
    pub(super) corrupt_later: bool,
    /// Answers everything with this status.
    pub(super) status: Option<StatusCode>,
}

/// A request the test server saw.
#[derive(Clone, Debug)]
pub(super) struct Seen {
    pub(super) range: Option<String>,
    pub(super) if_range: Option<String>,
}

struct Shared {
    files: HashMap<String, Bytes>,
    behaviour: Behaviour,
    answers: AtomicU64,
    cut: AtomicBool,
    seen: Mutex<Vec<Seen>>,
}

pub(super) struct Server {
    base: String,
    shared: Arc<Shared>,
}

impl Server {
    pub(super) async fn start(files: Vec<(&str, Vec<u8>)>, behaviour: Behaviour) -> Server {
        let files = files.into_iter().map(|(name, data)| (name.to_owned(), Bytes::from(data))).collect();
        let shared = Arc::new(Shared {
            files,
            behaviour,
            answers: AtomicU64::new(0),
            cut: AtomicBool::new(false),
            seen: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new().route("/{name}", axum::routing::get(answer)).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the test server");
        let base = format!("http://{}", listener.local_addr().expect("its address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Server { base, shared }
    }

    pub(super) fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }

    pub(super) fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().expect("not poisoned").clone()
    }
}

async fn answer(State(shared): State<Arc<Shared>>, UrlPath(name): UrlPath<String>, headers: HeaderMap) -> Response {
    let text = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok()).map(str::to_owned);
    shared
        .seen
        .lock()
        .expect("not poisoned")
        .push(Seen { range: text(header::RANGE), if_range: text(header::IF_RANGE) });
    let behaviour = &shared.behaviour;
    let later = shared.answers.fetch_add(1, Ordering::Relaxed) > 0;
    if let Some(status) = behaviour.status {
        return Response::builder().status(status).body(Body::empty()).expect("a response");
    }
    let Some(file) = shared.files.get(&name) else {
        return Response::builder().status(StatusCode::NOT_FOUND).body(Body::empty()).expect("a response");
    };
    let mut data = file.to_vec();
    if later && behaviour.corrupt_later {
        let middle = data.len() / 2;
        data[middle] ^= 0xff;
    }
    let etag = if later && behaviour.new_etag_later { "\"v2\"" } else { "\"v1\"" };
    let len = data.len() as u64;
    let range = if behaviour.ignore_range || text(header::IF_RANGE).is_some_and(|v| v != etag) {
        None
    } else {
        text(header::RANGE).and_then(|r| requested_range(&r, len))
    };
    let mut response = Response::builder().header(header::ETAG, etag).header(header::ACCEPT_RANGES, "bytes");
    let (start, end) = match range {
        Some((start, end)) => {
            let start = if behaviour.wrong_range_start { start + 1 } else { start };
            response = response
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {start}-{}/{len}", end - 1));
            (start, end)
        }
        None => (0, len),
    };
    if !behaviour.no_length {
        response = response.header(header::CONTENT_LENGTH, end - start);
    }
    let cut = behaviour.cut_once_at.filter(|&at| at > start && at < end && !shared.cut.swap(true, Ordering::Relaxed));
    let piece = behaviour.piece.unwrap_or(256 << 10);
    let body = Bytes::from(data).slice(start as usize..cut.unwrap_or(end) as usize);
    let mut pieces: Vec<Result<Bytes, std::io::Error>> =
        (0..body.len()).step_by(piece).map(|at| Ok(body.slice(at..(at + piece).min(body.len())))).collect();
    if cut.is_some() {
        pieces.push(Err(std::io::Error::other("cut on purpose")));
    }
    response.body(Body::from_stream(futures::stream::iter(pieces))).expect("a response")
}

/// `bytes=START-` or `bytes=START-LAST`, as `[start, end)`.
fn requested_range(value: &str, len: u64) -> Option<(u64, u64)> {
    let (start, last) = value.strip_prefix("bytes=")?.split_once('-')?;
    let start: u64 = start.parse().ok()?;
    let end = if last.is_empty() { len } else { last.parse::<u64>().ok()? + 1 };
    (start < end && end <= len).then_some((start, end))
}
