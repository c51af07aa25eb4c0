//! HTTP side of the PXE sidecar: per-MAC iPXE scripts, boot assets and the
//! iPXE binaries (for UEFI HTTP boot), with Range and HEAD; every refusal
//! says why in its body.

use super::enrol::{self, Enrolment, Verdict};
use super::metrics::PxeMetrics;
use super::model::{Mac, Snapshot};
use super::script::{self, DiscoveryImage};
use crate::agent::protocol::{EnrolRequest, TOKEN_PATH};
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::io::SeekFrom;
use std::net::{IpAddr, SocketAddr};
use std::path::{Component, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct HttpState {
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub metrics: Arc<PxeMetrics>,
    /// Set once the node and network caches are filled.
    pub ready: Arc<AtomicBool>,
    pub assets_dir: PathBuf,
    pub ipxe_dir: PathBuf,
    /// Files outside `ipxe_dir` that links in it may lead to: the configured
    /// iPXE binaries (Debian links `ipxe.efi` into /boot), and nothing else.
    pub ipxe_links: Vec<PathBuf>,
    pub discovery: DiscoveryImage,
    /// The origin put into scripts; the request's Host when unset.
    pub base_url: Option<String>,
    /// Nonces and agent tokens.
    pub enrolment: Arc<Enrolment>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/boot/{file}", get(boot_script))
        .route(TOKEN_PATH, axum::routing::post(agent_token))
        .route("/assets/{*path}", get(asset).head(asset))
        .route("/ipxe/{*path}", get(ipxe_binary).head(ipxe_binary))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves until `shutdown`.
pub async fn serve(listener: TcpListener, state: HttpState, shutdown: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router(state).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn readyz(State(state): State<HttpState>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "waiting for the BareMetalNode and Network caches\n").into_response()
    }
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let body = state.metrics.render();
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}

fn refuse(state: &HttpState, route: &'static str, status: StatusCode, reason: String) -> Response {
    state.metrics.http_request(route, status.as_u16());
    tracing::warn!(route, status = status.as_u16(), %reason, "HTTP request refused");
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{reason}\n")).into_response()
}

async fn boot_script(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(mac) = file.strip_suffix(".ipxe").and_then(Mac::parse) else {
        return refuse(
            &state,
            "script",
            StatusCode::NOT_FOUND,
            format!("no script {file:?}: scripts are named after the boot MAC, like /boot/52:54:00:12:34:56.ipxe"),
        );
    };
    if !state.ready.load(Ordering::Relaxed) {
        return refuse(
            &state,
            "script",
            StatusCode::SERVICE_UNAVAILABLE,
            "girder pxe is still reading the nodes and networks; try again in a few seconds".into(),
        );
    }
    let base = match &state.base_url {
        Some(base) => base.trim_end_matches('/').to_string(),
        None => match headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
            Some(host) => format!("http://{host}"),
            None => {
                return refuse(
                    &state,
                    "script",
                    StatusCode::BAD_REQUEST,
                    "the request has no Host header, and girder pxe has no --http-url to put in scripts".into(),
                );
            }
        },
    };
    let snapshot = state.snapshot.borrow().clone();
    let now = jiff::Timestamp::now().as_second();
    match script::render(mac, client_ipv4(peer), &snapshot, &state.discovery, &state.enrolment.key, &base, now) {
        Ok(rendered) => {
            state.metrics.http_request("script", 200);
            tracing::info!(
                mac = %mac,
                node = rendered.node.as_deref().unwrap_or("unknown"),
                action = rendered.action.as_str(),
                "served iPXE script"
            );
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], rendered.script).into_response()
        }
        Err(refusal) => {
            let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::NOT_FOUND);
            state.metrics.http_request("script", status.as_u16());
            tracing::warn!(mac = %mac, status = status.as_u16(), reason = %refusal.reason, "no iPXE script");
            (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{}\n", refusal.reason))
                .into_response()
        }
    }
}

fn client_ipv4(peer: SocketAddr) -> Option<std::net::Ipv4Addr> {
    match peer.ip() {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(ip) => ip.to_ipv4_mapped(),
    }
}

/// An agent trades its nonce for a token (see [`enrol`]).
async fn agent_token(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let request: EnrolRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            state.enrolment_result("refused");
            return refuse(&state, "token", StatusCode::BAD_REQUEST, format!("the request is not an enrolment: {err}"));
        }
    };
    if !state.ready.load(Ordering::Relaxed) {
        state.enrolment_result("pending");
        return pending(&state, "girder pxe is still reading the nodes and networks".into());
    }
    let snapshot = state.snapshot.borrow().clone();
    let now = jiff::Timestamp::now().as_second();
    let enrolment = state.enrolment.clone();
    // One exchange at a time: the decision and the journal must agree.
    let mut issued = enrolment.issued.lock().await;
    let verdict = enrol::decide(&request, client_ipv4(peer), &snapshot, &enrolment.key, &issued, now);
    match verdict {
        Verdict::Refuse(code, reason) => {
            state.enrolment_result("refused");
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::FORBIDDEN);
            tracing::warn!(mac = %request.mac, client = %peer.ip(), %reason, "agent enrolment refused");
            state.metrics.http_request("token", status.as_u16());
            (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{reason}\n")).into_response()
        }
        Verdict::Pending(message) => {
            state.enrolment_result("pending");
            pending(&state, message)
        }
        Verdict::Register { namespace, name, mac } => match enrolment.register(&namespace, &name, mac).await {
            Ok(()) => {
                tracing::info!(mac = %mac, node = %format!("{namespace}/{name}"), "registered a discovered machine");
                state.enrolment_result("pending");
                pending(
                    &state,
                    format!("registered as BareMetalNode {namespace}/{name}; waiting for girder to open its session"),
                )
            }
            Err(err) => {
                state.enrolment_result("error");
                tracing::warn!(mac = %mac, error = %err, "cannot register a discovered machine");
                refuse(&state, "token", StatusCode::SERVICE_UNAVAILABLE, format!("cannot register {mac} yet: {err}"))
            }
        },
        Verdict::Issue { namespace, name, session } => {
            let node = format!("{namespace}/{name}");
            let token = match enrolment.mint(&namespace, &name).await {
                Ok(token) => token,
                Err(enrol::MintError::NotReady(why)) => {
                    state.enrolment_result("pending");
                    return pending(&state, why);
                }
                Err(err) => {
                    state.enrolment_result("error");
                    tracing::warn!(node = %node, error = %err, "cannot mint an agent token");
                    return refuse(&state, "token", StatusCode::SERVICE_UNAVAILABLE, err.to_string());
                }
            };
            let key = format!("{node}/{session}");
            if let Err(err) = issued.record(&key, now, &peer.ip().to_string()) {
                state.enrolment_result("error");
                return refuse(
                    &state,
                    "token",
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot record the issuance in the state directory: {err}"),
                );
            }
            drop(issued);
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
            let credentials = enrolment.credentials(&namespace, &name, &session, token, host);
            state.enrolment_result("issued");
            state.metrics.http_request("token", 200);
            tracing::info!(node = %node, session = %session, client = %peer.ip(), server = %credentials.server, "issued an agent token");
            json(StatusCode::OK, &credentials)
        }
    }
}

fn pending(state: &HttpState, message: String) -> Response {
    state.metrics.http_request("token", 202);
    json(StatusCode::ACCEPTED, &enrol::pending(message))
}

fn json(status: StatusCode, body: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the answer: {err}\n")).into_response(),
    }
}

impl HttpState {
    fn enrolment_result(&self, result: &'static str) {
        self.metrics.enrolment(result);
    }
}

async fn asset(
    State(state): State<HttpState>,
    method: Method,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    let root = state.assets_dir.clone();
    send_file(&state, "assets", &root, &[], "assets directory", &method, &path, &headers).await
}

async fn ipxe_binary(
    State(state): State<HttpState>,
    method: Method,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (root, links) = (state.ipxe_dir.clone(), state.ipxe_links.clone());
    send_file(&state, "ipxe", &root, &links, "iPXE directory", &method, &path, &headers).await
}

/// Where `requested` lives under `root`, or why it may not be served.
pub(crate) fn resolve(
    root: &std::path::Path,
    links: &[PathBuf],
    requested: &str,
    what: &str,
) -> Result<PathBuf, (StatusCode, String)> {
    let relative = std::path::Path::new(requested.trim_start_matches('/'));
    let escapes = relative.components().any(|c| !matches!(c, Component::Normal(_)))
        || requested.contains('\0')
        || requested.contains('\\');
    if relative.as_os_str().is_empty() {
        return Err((StatusCode::NOT_FOUND, format!("name a file in the {what}, like /assets/vmlinuz")));
    }
    if escapes {
        return Err((
            StatusCode::FORBIDDEN,
            format!("{requested:?} escapes the {what}; only files below it are served"),
        ));
    }
    let canonical_root = std::fs::canonicalize(root)
        .map_err(|err| (StatusCode::NOT_FOUND, format!("the {what} {} cannot be read: {err}", root.display())))?;
    let target = canonical_root.join(relative);
    let canonical = match std::fs::canonicalize(&target) {
        Ok(path) => path,
        Err(_) => {
            return Err((StatusCode::NOT_FOUND, format!("no file {requested:?} in the {what} {}", root.display())));
        }
    };
    if !canonical.starts_with(&canonical_root) && !links.contains(&canonical) {
        return Err((
            StatusCode::FORBIDDEN,
            format!("{requested:?} is a link leading out of the {what}; only files below it are served"),
        ));
    }
    if !canonical.is_file() {
        return Err((StatusCode::NOT_FOUND, format!("{requested:?} in the {what} is not a regular file")));
    }
    Ok(canonical)
}

/// A single byte range, inclusive, within a file of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RangeRequest {
    Whole,
    Part { start: u64, end: u64 },
    Unsatisfiable,
}

/// Parses `Range: bytes=a-b`, `bytes=a-` and `bytes=-n`. Several ranges, or
/// another unit, are answered with the whole file (RFC 9110 allows ignoring
/// Range).
pub(crate) fn parse_range(value: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else { return RangeRequest::Whole };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = spec.split_once('-') else { return RangeRequest::Whole };
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        let Ok(suffix) = last.parse::<u64>() else { return RangeRequest::Whole };
        if suffix == 0 || size == 0 {
            return RangeRequest::Unsatisfiable;
        }
        (size.saturating_sub(suffix), size - 1)
    } else {
        let Ok(start) = first.parse::<u64>() else { return RangeRequest::Whole };
        let end = if last.is_empty() {
            size.saturating_sub(1)
        } else {
            match last.parse::<u64>() {
                Ok(end) if end >= start => end.min(size.saturating_sub(1)),
                _ => return RangeRequest::Whole,
            }
        };
        if start >= size {
            return RangeRequest::Unsatisfiable;
        }
        (start, end)
    };
    RangeRequest::Part { start: range.0, end: range.1 }
}

#[allow(clippy::too_many_arguments)]
async fn send_file(
    state: &HttpState,
    route: &'static str,
    root: &std::path::Path,
    links: &[PathBuf],
    what: &str,
    method: &Method,
    requested: &str,
    headers: &HeaderMap,
) -> Response {
    let path = match resolve(root, links, requested, what) {
        Ok(path) => path,
        Err((status, reason)) => return refuse(state, route, status, reason),
    };
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(err) => return refuse(state, route, StatusCode::FORBIDDEN, format!("{requested:?} cannot be read: {err}")),
    };
    let size = match file.metadata().await {
        Ok(meta) => meta.len(),
        Err(err) => return refuse(state, route, StatusCode::FORBIDDEN, format!("{requested:?} cannot be read: {err}")),
    };
    let range = parse_range(headers.get(header::RANGE).and_then(|v| v.to_str().ok()), size);
    let (status, start, length) = match range {
        RangeRequest::Whole => (StatusCode::OK, 0, size),
        RangeRequest::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        RangeRequest::Unsatisfiable => {
            state.metrics.http_request(route, 416);
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{size}"))],
                format!("the requested range is outside {requested:?}, which has {size} bytes\n"),
            )
                .into_response();
        }
    };
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, length)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if status == StatusCode::PARTIAL_CONTENT {
        response = response.header(header::CONTENT_RANGE, format!("bytes {start}-{}/{size}", start + length - 1));
    }
    state.metrics.http_request(route, status.as_u16());
    if *method == Method::HEAD {
        return response.body(Body::empty()).unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    if start > 0
        && let Err(err) = file.seek(SeekFrom::Start(start)).await
    {
        return refuse(state, route, StatusCode::FORBIDDEN, format!("{requested:?} cannot be read: {err}"));
    }
    state.metrics.http_sent(length);
    tracing::debug!(route, file = %requested, bytes = length, "serving file");
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(length), 256 * 1024);
    let mut response =
        response.body(Body::from_stream(stream)).unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range(None, 100), RangeRequest::Whole);
        assert_eq!(parse_range(Some("bytes=0-9"), 100), RangeRequest::Part { start: 0, end: 9 });
        assert_eq!(parse_range(Some("bytes=90-"), 100), RangeRequest::Part { start: 90, end: 99 });
        assert_eq!(parse_range(Some("bytes=-10"), 100), RangeRequest::Part { start: 90, end: 99 });
        assert_eq!(parse_range(Some("bytes=-500"), 100), RangeRequest::Part { start: 0, end: 99 });
        assert_eq!(parse_range(Some("bytes=50-500"), 100), RangeRequest::Part { start: 50, end: 99 });
        assert_eq!(parse_range(Some("bytes=100-"), 100), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 100), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=9-1"), 100), RangeRequest::Whole);
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), RangeRequest::Whole);
        assert_eq!(parse_range(Some("items=0-1"), 100), RangeRequest::Whole);
        assert_eq!(parse_range(Some("bytes=x-1"), 100), RangeRequest::Whole);
    }

    #[test]
    fn paths_that_escape_the_root_are_refused_with_a_reason() {
        let root = std::env::temp_dir().join(format!("girder-http-resolve-{}", std::process::id()));
        let outside = std::env::temp_dir().join(format!("girder-http-outside-{}", std::process::id()));
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/kernel"), b"k").unwrap();
        std::fs::write(&outside, b"secret").unwrap();
        let _ = std::os::unix::fs::symlink(&outside, root.join("leak"));

        assert!(resolve(&root, &[], "sub/kernel", "assets directory").is_ok());
        assert!(resolve(&root, &[], "/sub/kernel", "assets directory").is_ok());
        for bad in ["../etc/passwd", "sub/../../x", "/..", "a\\..\\b"] {
            let (status, reason) = resolve(&root, &[], bad, "assets directory").unwrap_err();
            assert_eq!(status, StatusCode::FORBIDDEN, "{bad}: {reason}");
            assert!(reason.contains("escapes the assets directory"), "{reason}");
        }
        let (status, reason) = resolve(&root, &[], "leak", "assets directory").unwrap_err();
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(reason.contains("link leading out"), "{reason}");
        // Unless that very file is allowed (Debian links ipxe.efi into /boot).
        let allowed = [std::fs::canonicalize(&outside).unwrap()];
        assert!(resolve(&root, &allowed, "leak", "assets directory").is_ok());
        let (status, reason) = resolve(&root, &[], "missing", "assets directory").unwrap_err();
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(reason.contains("no file \"missing\""), "{reason}");
        let (status, _) = resolve(&root, &[], "sub", "assets directory").unwrap_err();
        assert_eq!(status, StatusCode::NOT_FOUND);

        let _ = std::fs::remove_dir_all(&root);
        let _ = std::fs::remove_file(&outside);
    }
}
