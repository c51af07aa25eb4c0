//! The image download: one GET, resumed with `Range` when the connection
//! breaks, and byte ranges fetched again for the qcow2 converter.
//!
//! Failures share one budget per [`Fetcher`] (the attempts of
//! [`super::WriteOptions::retry_delays`]), so a flaky server cannot stretch a
//! write forever by failing a little at a time. A resumed transfer asks for
//! the same version of the file with `If-Range`; when the server answers with
//! a different ETag or Last-Modified, the download stops with
//! [`ImageError::Changed`] rather than splicing two versions together.

use super::{ImageError, WriteOptions};
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap, HeaderValue};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;
use tokio_util::bytes::Bytes;

pub(super) struct Fetcher {
    client: reqwest::Client,
    url: reqwest::Url,
    /// The URL without its userinfo: the only form errors and logs see.
    shown: String,
    retry_delays: Vec<Duration>,
    failures: AtomicUsize,
    resumes: AtomicU32,
    /// How the first answer identified the file's version.
    version: Mutex<Option<Version>>,
}

/// What identifies the version of the file across requests.
#[derive(Clone, Debug, Default, PartialEq)]
struct Version {
    etag: Option<String>,
    last_modified: Option<String>,
}

impl Version {
    fn of(headers: &HeaderMap) -> Self {
        let text = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok()).map(str::to_owned);
        Version { etag: text(header::ETAG), last_modified: text(header::LAST_MODIFIED) }
    }

    /// The `If-Range` validator: a strong ETag, else the date (RFC 9110 §13.1.5).
    fn if_range(&self) -> Option<&str> {
        match (&self.etag, &self.last_modified) {
            (Some(etag), _) if !etag.starts_with("W/") => Some(etag),
            (_, Some(date)) => Some(date),
            _ => None,
        }
    }

    /// Why `later` is not the same file, if it is not.
    fn changed(&self, later: &Version) -> Option<String> {
        match (&self.etag, &later.etag, &self.last_modified, &later.last_modified) {
            (Some(a), Some(b), _, _) if a != b => Some(format!("ETag {a} became {b}")),
            (_, _, Some(a), Some(b)) if a != b => Some(format!("Last-Modified {a} became {b}")),
            _ => None,
        }
    }
}

/// Why one request failed.
enum Failure {
    /// Worth another attempt: the connection, a timeout, a 5xx.
    Transient(String),
    Fatal(ImageError),
}

impl Fetcher {
    pub(super) fn new(url: &str, options: &WriteOptions) -> Result<Self, ImageError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| ImageError::InvalidUrl { url: "(unparsable)".into(), detail: e.to_string() })?;
        let shown = without_userinfo(&parsed);
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ImageError::InvalidUrl { url: shown, detail: "only http and https are supported".into() });
        }
        let client = crate::agent::http_client()
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.stall_timeout)
            .build()
            .map_err(|e| ImageError::InvalidUrl { url: shown.clone(), detail: describe(e) })?;
        Ok(Fetcher {
            client,
            url: parsed,
            shown,
            retry_delays: options.retry_delays.clone(),
            failures: AtomicUsize::new(0),
            resumes: AtomicU32::new(0),
            version: Mutex::new(None),
        })
    }

    /// The URL as errors and logs show it.
    pub(super) fn shown(&self) -> &str {
        &self.shown
    }

    /// Requests that continued an interrupted transfer so far.
    pub(super) fn resumes(&self) -> u32 {
        self.resumes.load(Ordering::Relaxed)
    }

    /// Sends one GET for `[from, to)` (`to` open-ended when `None`).
    async fn request(&self, from: u64, to: Option<u64>) -> Result<Answer, Failure> {
        let mut request = self.client.get(self.url.clone());
        if from > 0 || to.is_some() {
            let last = to.map(|end| (end - 1).to_string()).unwrap_or_default();
            request = request.header(header::RANGE, format!("bytes={from}-{last}"));
            if let Some(validator) = self.first_version().as_ref().and_then(Version::if_range) {
                request = request.header(header::IF_RANGE, validator);
            }
        }
        let response = request.send().await.map_err(|e| Failure::Transient(describe(e)))?;
        let status = response.status();
        if status.is_success() {
            self.check_version(Version::of(response.headers()))?;
        }
        match status {
            StatusCode::OK => {
                let total = response.content_length();
                Ok(Answer { response, skip: from, total })
            }
            StatusCode::PARTIAL_CONTENT => {
                let (start, total) = content_range(response.headers()).ok_or_else(|| {
                    Failure::Fatal(self.unreachable("it answered a range request without a usable Content-Range"))
                })?;
                if start != from {
                    return Err(Failure::Fatal(self.unreachable(&format!(
                        "it answered a request for bytes from {from} with bytes from {start}"
                    ))));
                }
                Ok(Answer { response, skip: 0, total })
            }
            s if s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT || s == StatusCode::TOO_MANY_REQUESTS => {
                Err(Failure::Transient(format!("HTTP {s}")))
            }
            s => Err(Failure::Fatal(ImageError::Http { url: self.shown.clone(), status: s.as_u16() })),
        }
    }

    /// Remembers the first answer's version; refuses a later one that differs.
    fn check_version(&self, version: Version) -> Result<(), Failure> {
        let Ok(mut first) = self.version.lock() else { return Ok(()) };
        match first.as_ref().and_then(|first| first.changed(&version)) {
            Some(detail) => Err(Failure::Fatal(ImageError::Changed { url: self.shown.clone(), detail })),
            None => {
                first.get_or_insert(version);
                Ok(())
            }
        }
    }

    fn first_version(&self) -> Option<Version> {
        self.version.lock().ok().and_then(|v| v.clone())
    }

    /// Counts a failed attempt and waits before the next one, or gives up
    /// when the attempts are spent.
    async fn after_failure(&self, cause: String) -> Result<(), ImageError> {
        let failed = self.failures.fetch_add(1, Ordering::Relaxed);
        let Some(delay) = self.retry_delays.get(failed).copied() else {
            return Err(self.unreachable(&format!("{cause} (gave up after {} attempts)", failed + 1)));
        };
        tracing::warn!(url = %self.shown, %cause, retry_in = ?delay, "image download attempt failed");
        tokio::time::sleep(delay).await;
        Ok(())
    }

    fn unreachable(&self, detail: &str) -> ImageError {
        ImageError::Unreachable { url: self.shown.clone(), detail: detail.to_owned() }
    }
}

struct Answer {
    response: reqwest::Response,
    /// Leading bytes of the body to drop: a 200 to a range request.
    skip: u64,
    total: Option<u64>,
}

/// The bytes `[position, end)` of the image, resumed across broken
/// connections. `end` is the file's length for the whole image, learned
/// from the first answer when the server tells it.
pub(super) struct Body<'a> {
    fetcher: &'a Fetcher,
    position: u64,
    end: Option<u64>,
    /// Whether `end` was asked for (a range) or learned (the whole file).
    ranged: bool,
    answer: Option<Answer>,
    interrupted: bool,
}

impl<'a> Body<'a> {
    /// The whole file, with the first request already answered, so that a
    /// 404 or an unreachable server is known before anything else starts.
    pub(super) async fn whole(fetcher: &'a Fetcher) -> Result<Body<'a>, ImageError> {
        let mut body = Body { fetcher, position: 0, end: None, ranged: false, answer: None, interrupted: false };
        body.reopen().await?;
        Ok(body)
    }

    /// The bytes `[start, end)`.
    pub(super) fn range(fetcher: &'a Fetcher, start: u64, end: u64) -> Body<'a> {
        Body { fetcher, position: start, end: Some(end), ranged: true, answer: None, interrupted: false }
    }

    /// The file's length, when the server said it.
    pub(super) fn total(&self) -> Option<u64> {
        if self.ranged { None } else { self.end }
    }

    /// The next bytes, in order; `None` at the end.
    pub(super) async fn next_chunk(&mut self) -> Result<Option<Bytes>, ImageError> {
        loop {
            if self.end.is_some_and(|end| self.position >= end) {
                return Ok(None);
            }
            let Some(answer) = self.answer.as_mut() else {
                self.reopen().await?;
                continue;
            };
            let cause = match answer.response.chunk().await {
                Ok(Some(chunk)) => match self.take(chunk) {
                    Some(chunk) => return Ok(Some(chunk)),
                    None => continue,
                },
                Ok(None) if self.end.is_none() => return Ok(None),
                Ok(None) => format!("the connection ended after {} of {} bytes", self.position, self.end.unwrap_or(0)),
                Err(e) => format!("the transfer broke after {} bytes: {}", self.position, describe(e)),
            };
            self.answer = None;
            self.interrupted = true;
            self.fetcher.after_failure(cause).await?;
        }
    }

    /// Drops what a 200 sent before `position` and what it sent past `end`.
    fn take(&mut self, mut chunk: Bytes) -> Option<Bytes> {
        let answer = self.answer.as_mut()?;
        if answer.skip > 0 {
            let drop = answer.skip.min(chunk.len() as u64);
            answer.skip -= drop;
            chunk = chunk.slice(drop as usize..);
        }
        if let Some(end) = self.end {
            chunk.truncate(usize::try_from(end - self.position).unwrap_or(usize::MAX).min(chunk.len()));
        }
        if chunk.is_empty() {
            return None;
        }
        self.position += chunk.len() as u64;
        Some(chunk)
    }

    async fn reopen(&mut self) -> Result<(), ImageError> {
        loop {
            let to = if self.ranged { self.end } else { None };
            match self.fetcher.request(self.position, to).await {
                Ok(answer) => {
                    if std::mem::take(&mut self.interrupted) {
                        self.fetcher.resumes.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(url = %self.fetcher.shown, from = self.position, "image download resumed");
                    }
                    if !self.ranged && self.end.is_none() {
                        self.end = answer.total;
                    }
                    self.answer = Some(answer);
                    return Ok(());
                }
                Err(Failure::Transient(cause)) => self.fetcher.after_failure(cause).await?,
                Err(Failure::Fatal(error)) => return Err(error),
            }
        }
    }
}

/// `Content-Range: bytes START-LAST/TOTAL` (TOTAL may be `*`): START, TOTAL.
fn content_range(headers: &HeaderMap) -> Option<(u64, Option<u64>)> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let (range, total) = value.strip_prefix("bytes ")?.split_once('/')?;
    let (start, last) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let last: u64 = last.trim().parse().ok()?;
    if last < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        n => Some(n.parse().ok()?),
    };
    Some((start, total))
}

fn without_userinfo(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    // Both only fail for URLs that cannot have userinfo, which have none.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

/// A reqwest error and its causes, without the URL (which may carry
/// credentials and is named by the caller anyway).
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
