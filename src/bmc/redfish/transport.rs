//! HTTP to one Redfish service: authentication (a session, reused; basic auth
//! where no session is offered), a concurrency limit, timeouts, bounded
//! retries on `503` honouring `Retry-After`, and errors that name the BMC.

use super::model::{ErrorBody, Session};
use crate::bmc::{BmcError, BmcOptions, Credentials, Secret};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use tokio::sync::Semaphore;
use url::Url;

/// The session token header of the Redfish specification.
const X_AUTH_TOKEN: &str = "X-Auth-Token";
/// Answers larger than this are refused: no BMC resource is anywhere near.
const MAX_BODY: usize = 8 * 1024 * 1024;
/// Where a session is created when the service root could not say.
pub(super) const DEFAULT_SESSIONS_PATH: &str = "/redfish/v1/SessionService/Sessions";

/// How requests are authenticated right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// Not logged in yet (or closed): the next request logs in.
    None,
    /// An `X-Auth-Token` session from the SessionService.
    Session,
    /// HTTP basic authentication, for BMCs that offer no sessions.
    Basic,
}

enum AuthState {
    None,
    Basic,
    Session {
        token: Secret,
        /// The session's URI, to delete it; `None` if the BMC gave none.
        uri: Option<Url>,
    },
}

struct AuthSlot {
    state: AuthState,
    /// Bumped at every login and close, so a task that saw a stale token does
    /// not log in a second time after another task already did.
    generation: u64,
}

/// An answer from the BMC, whatever its status (except `503`s, retried).
pub(super) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn etag(&self) -> Option<String> {
        self.headers.get(header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_string)
    }
}

/// What an authenticated request carries.
enum AuthHeader {
    None,
    Basic,
    Token(Secret),
}

pub(super) struct Transport {
    /// The BMC's address, for errors and logs.
    pub bmc: String,
    base: Url,
    http: reqwest::Client,
    credentials: Credentials,
    timeout: Duration,
    max_retries: u32,
    max_retry_wait: Duration,
    permits: Semaphore,
    auth: Mutex<AuthSlot>,
    /// Serialises logins and closes.
    login_lock: tokio::sync::Mutex<()>,
    /// Where sessions are created; `None` when the BMC offers none. Set once,
    /// from the service root, before the first authenticated request.
    sessions_path: OnceLock<Option<String>>,
}

/// HTTP clients shared by every BMC with the same TLS choice and timeout: a
/// client holds a TLS configuration and a connection pool, and a thousand
/// BMCs need neither a thousand times. Sessions, credentials and the
/// per-BMC concurrency limit stay per BMC, in [`Transport`].
fn shared_client(options: &BmcOptions) -> Result<reqwest::Client, String> {
    type Key = (bool, Option<Vec<u8>>, Duration);
    static CLIENTS: std::sync::Mutex<Vec<(Key, reqwest::Client)>> = std::sync::Mutex::new(Vec::new());
    let key: Key = (options.disable_certificate_verification, options.ca_bundle.clone(), options.timeout);
    let mut clients = CLIENTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, client)) = clients.iter().find(|(k, _)| *k == key) {
        return Ok(client.clone());
    }
    let tls = crate::tls::client_config(options.ca_bundle.as_deref(), options.disable_certificate_verification)?;
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(options.timeout)
        .connect_timeout(options.timeout)
        .no_proxy()
        // Some BMCs redirect a system's alias to its canonical path. A
        // redirect may not leave the BMC: the token would go with it.
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            let left = attempt.previous().first().is_some_and(|first| !same_origin(attempt.url(), first));
            if attempt.previous().len() >= 5 || left { attempt.stop() } else { attempt.follow() }
        }))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    clients.push((key, client.clone()));
    Ok(client)
}

impl Transport {
    pub fn new(bmc: String, base: Url, credentials: Credentials, options: &BmcOptions) -> Result<Self, BmcError> {
        let http = shared_client(options).map_err(|reason| BmcError::Config { bmc: bmc.clone(), reason })?;
        Ok(Self {
            bmc,
            base,
            http,
            credentials,
            timeout: options.timeout,
            max_retries: options.max_retries,
            max_retry_wait: options.max_retry_wait,
            permits: Semaphore::new(options.max_concurrent_requests.max(1)),
            auth: Mutex::new(AuthSlot { state: AuthState::None, generation: 0 }),
            login_lock: tokio::sync::Mutex::new(()),
            sessions_path: OnceLock::new(),
        })
    }

    /// Records where sessions are created (`None`: use basic auth).
    pub fn set_sessions_path(&self, path: Option<String>) {
        let _ = self.sessions_path.set(path);
    }

    pub fn auth_mode(&self) -> AuthMode {
        match self.slot().state {
            AuthState::None => AuthMode::None,
            AuthState::Basic => AuthMode::Basic,
            AuthState::Session { .. } => AuthMode::Session,
        }
    }

    fn slot(&self) -> MutexGuard<'_, AuthSlot> {
        // A poisoned lock only means another task panicked mid-update of a
        // plain enum; the value is still whole.
        self.auth.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A path or URL the BMC gave, resolved against it. Links that leave the
    /// BMC are refused: credentials would follow them.
    pub fn resolve(&self, target: &str) -> Result<Url, BmcError> {
        let url = self.base.join(target).map_err(|e| self.invalid(&format!("link {target:?}"), e.to_string()))?;
        if !same_origin(&url, &self.base) {
            return Err(self.invalid(&format!("link {target:?}"), "it points outside the BMC".into()));
        }
        Ok(url)
    }

    pub fn invalid(&self, what: &str, detail: String) -> BmcError {
        BmcError::InvalidResponse { bmc: self.bmc.clone(), what: what.to_string(), detail }
    }

    /// A request without credentials (the service root).
    pub async fn send_anonymous(&self, method: Method, target: &str) -> Result<Reply, BmcError> {
        let url = self.resolve(target)?;
        self.exchange(&method, &url, None, None, &AuthHeader::None).await
    }

    /// An authenticated request. Logs in first if needed, and once more if the
    /// session was dropped by the BMC (`401`).
    pub async fn send(
        &self,
        method: Method,
        target: &str,
        body: Option<&serde_json::Value>,
        if_match: Option<&str>,
    ) -> Result<Reply, BmcError> {
        let url = self.resolve(target)?;
        let body = body.map(|b| b.to_string().into_bytes());
        let mut logged_in_again = false;
        loop {
            let (auth, generation) = self.auth_header().await?;
            let reply = self.exchange(&method, &url, body.as_deref(), if_match, &auth).await?;
            if reply.status == StatusCode::UNAUTHORIZED && matches!(auth, AuthHeader::Token(_)) && !logged_in_again {
                tracing::info!(bmc = %self.bmc, "session refused by the BMC; logging in again");
                self.login(generation).await?;
                logged_in_again = true;
                continue;
            }
            return Ok(reply);
        }
    }

    /// Turns a non-success answer into an error naming the BMC and the request.
    pub fn check(&self, reply: Reply, what: &str) -> Result<Reply, BmcError> {
        if reply.status.is_success() {
            return Ok(reply);
        }
        Err(self.status_error(&reply, what))
    }

    pub fn status_error(&self, reply: &Reply, what: &str) -> BmcError {
        let status = reply.status.as_u16();
        if matches!(reply.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return BmcError::Auth { bmc: self.bmc.clone(), what: what.to_string(), status };
        }
        let mut message = ErrorBody::message(&reply.body).unwrap_or_default();
        if message.len() > 300 {
            let cut = (0..=300).rev().find(|&i| message.is_char_boundary(i)).unwrap_or(0);
            message.truncate(cut);
            message.push('…');
        }
        BmcError::Http { bmc: self.bmc.clone(), what: what.to_string(), status, message }
    }

    /// The header for the next request, logging in first if nobody has.
    async fn auth_header(&self) -> Result<(AuthHeader, u64), BmcError> {
        loop {
            {
                let slot = self.slot();
                let header = match &slot.state {
                    AuthState::Basic => Some(AuthHeader::Basic),
                    AuthState::Session { token, .. } => Some(AuthHeader::Token(token.clone())),
                    AuthState::None => None,
                };
                if let Some(header) = header {
                    return Ok((header, slot.generation));
                }
            }
            let generation = self.slot().generation;
            self.login(generation).await?;
        }
    }

    /// Logs in, unless someone did since `seen_generation`: creates a session
    /// where the BMC offers them, else settles on basic auth.
    async fn login(&self, seen_generation: u64) -> Result<(), BmcError> {
        let _serial = self.login_lock.lock().await;
        if self.slot().generation != seen_generation {
            return Ok(());
        }
        let sessions_path = self.sessions_path.get().cloned().flatten();
        let (state, stale) = match sessions_path {
            None => (AuthState::Basic, None),
            Some(path) => {
                let state = self.create_session(&path).await?;
                // The session the BMC refused is probably gone; delete it
                // anyway, in case the 401 meant something else, so none leaks.
                let stale = std::mem::replace(&mut self.slot().state, AuthState::None);
                (state, Some(stale))
            }
        };
        {
            let mut slot = self.slot();
            slot.state = state;
            slot.generation += 1;
        }
        if let Some(AuthState::Session { token, uri: Some(uri) }) = stale {
            let _ = self.delete_session(&uri, &token).await;
        }
        Ok(())
    }

    async fn create_session(&self, path: &str) -> Result<AuthState, BmcError> {
        let what = format!("POST {path} (log in)");
        let url = self.resolve(path)?;
        let body = serde_json::json!({
            "UserName": self.credentials.username,
            "Password": self.credentials.password.expose(),
        })
        .to_string()
        .into_bytes();
        let reply = self.exchange(&Method::POST, &url, Some(&body), None, &AuthHeader::None).await?;
        match reply.status {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED => {
                tracing::info!(bmc = %self.bmc, status = reply.status.as_u16(), "the BMC offers no sessions; using basic authentication");
                return Ok(AuthState::Basic);
            }
            _ => return Err(self.status_error(&reply, &what)),
        }
        let Some(token) = reply.headers.get(X_AUTH_TOKEN).and_then(|v| v.to_str().ok()).filter(|t| !t.is_empty())
        else {
            tracing::warn!(bmc = %self.bmc, "the BMC created a session but sent no X-Auth-Token; using basic authentication");
            return Ok(AuthState::Basic);
        };
        let token = Secret::new(token);
        let location = reply
            .headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| serde_json::from_slice::<Session>(&reply.body).ok().and_then(|s| s.odata_id));
        let uri = match location.as_deref().map(|l| self.resolve(l)) {
            Some(Ok(uri)) => Some(uri),
            Some(Err(e)) => {
                tracing::warn!(bmc = %self.bmc, error = %e, "unusable session URI; the session cannot be deleted and will expire on the BMC");
                None
            }
            None => {
                tracing::warn!(bmc = %self.bmc, "the BMC gave no session URI; the session cannot be deleted and will expire on the BMC");
                None
            }
        };
        tracing::debug!(bmc = %self.bmc, session = uri.as_ref().map(|u| u.path()), "session created");
        Ok(AuthState::Session { token, uri })
    }

    async fn delete_session(&self, uri: &Url, token: &Secret) -> Result<(), BmcError> {
        let what = format!("DELETE {} (log out)", uri.path());
        let reply = self.exchange(&Method::DELETE, uri, None, None, &AuthHeader::Token(token.clone())).await?;
        // Gone already (404) or expired (401): nothing is left open either way.
        if reply.status.is_success() || matches!(reply.status, StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED) {
            tracing::debug!(bmc = %self.bmc, session = uri.path(), "session deleted");
            Ok(())
        } else {
            Err(self.status_error(&reply, &what))
        }
    }

    /// Deletes the session, if one is open. If the BMC cannot be reached, the
    /// session is kept, so a later `close` (or the drop) tries again.
    pub async fn close(&self) -> Result<(), BmcError> {
        let _serial = self.login_lock.lock().await;
        let state = {
            let mut slot = self.slot();
            slot.generation += 1;
            std::mem::replace(&mut slot.state, AuthState::None)
        };
        let AuthState::Session { token, uri } = state else {
            return Ok(());
        };
        let Some(uri) = uri else {
            return Ok(());
        };
        match self.delete_session(&uri, &token).await {
            Ok(()) => Ok(()),
            Err(e) => {
                if !matches!(e, BmcError::Http { .. }) {
                    let mut slot = self.slot();
                    if matches!(slot.state, AuthState::None) {
                        slot.state = AuthState::Session { token, uri: Some(uri) };
                    }
                }
                Err(e)
            }
        }
    }

    /// One request, with the concurrency limit, the timeout, and bounded
    /// retries while the BMC answers `503`.
    async fn exchange(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&[u8]>,
        if_match: Option<&str>,
        auth: &AuthHeader,
    ) -> Result<Reply, BmcError> {
        let what = format!("{method} {}", url.path());
        let mut attempt = 0;
        loop {
            attempt += 1;
            let reply = {
                let _permit = self.permits.acquire().await.map_err(|_| BmcError::Config {
                    bmc: self.bmc.clone(),
                    reason: "the client was shut down".into(),
                })?;
                self.exchange_once(method, url, body, if_match, auth, &what).await?
            };
            tracing::debug!(bmc = %self.bmc, request = %what, status = reply.status.as_u16(), "redfish");
            if reply.status != StatusCode::SERVICE_UNAVAILABLE {
                return Ok(reply);
            }
            if attempt > self.max_retries {
                return Err(BmcError::Busy { bmc: self.bmc.clone(), what, attempts: attempt });
            }
            let wait = reply
                .headers
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| retry_after(v, jiff::Timestamp::now()))
                .unwrap_or_else(|| Duration::from_secs(1 << (attempt - 1).min(5)))
                .min(self.max_retry_wait);
            tracing::info!(bmc = %self.bmc, request = %what, wait_ms = wait.as_millis() as u64, attempt, "BMC busy (503); retrying");
            tokio::time::sleep(wait).await;
        }
    }

    async fn exchange_once(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&[u8]>,
        if_match: Option<&str>,
        auth: &AuthHeader,
        what: &str,
    ) -> Result<Reply, BmcError> {
        let mut request = self
            .http
            .request(method.clone(), url.as_str())
            .header(header::ACCEPT, "application/json")
            .header("OData-Version", "4.0");
        request = match auth {
            AuthHeader::None => request,
            AuthHeader::Basic => {
                request.basic_auth(&self.credentials.username, Some(self.credentials.password.expose()))
            }
            AuthHeader::Token(token) => {
                let mut value = HeaderValue::from_str(token.expose())
                    .map_err(|_| self.invalid(what, "the session token is not a valid header value".into()))?;
                value.set_sensitive(true);
                request.header(X_AUTH_TOKEN, value)
            }
        };
        if let Some(tag) = if_match {
            request = request.header(header::IF_MATCH, tag);
        }
        if let Some(body) = body {
            request = request.header(header::CONTENT_TYPE, "application/json").body(body.to_vec());
        }
        let mut response = request.send().await.map_err(|e| self.transport_error(&e, what))?;
        let status = response.status();
        let headers = response.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.transport_error(&e, what))? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(self.invalid(what, format!("answer larger than {MAX_BODY} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Reply { status, headers, body })
    }

    fn transport_error(&self, error: &reqwest::Error, what: &str) -> BmcError {
        let bmc = self.bmc.clone();
        let what = what.to_string();
        if error.is_timeout() {
            return BmcError::Timeout { bmc, what, after: self.timeout };
        }
        let detail = causes(error);
        if let Some(tls) = find_rustls_error(error)
            && matches!(tls, rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
        {
            return BmcError::Certificate { bmc, detail };
        }
        BmcError::Connect { bmc, what, detail }
    }
}

impl Drop for Transport {
    /// The last resort against a leaked session: whoever forgot `close()`,
    /// the session is deleted in the background, if a runtime is there to
    /// run it.
    fn drop(&mut self) {
        let state = std::mem::replace(&mut self.slot().state, AuthState::None);
        let AuthState::Session { token, uri: Some(uri) } = state else {
            return;
        };
        let bmc = self.bmc.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(%bmc, session = uri.path(), "dropped without close() and outside a runtime: the session is left to expire on the BMC");
            return;
        };
        tracing::warn!(%bmc, session = uri.path(), "dropped without close(); deleting the session in the background");
        let http = self.http.clone();
        runtime.spawn(async move {
            let mut value = match HeaderValue::from_str(token.expose()) {
                Ok(v) => v,
                Err(_) => return,
            };
            value.set_sensitive(true);
            let result = http
                .delete(uri.as_str())
                .header(X_AUTH_TOKEN, value)
                .send()
                .await;
            match result {
                Ok(r) if r.status().is_success() || r.status() == StatusCode::NOT_FOUND => {
                    tracing::debug!(%bmc, session = uri.path(), "session deleted");
                }
                Ok(r) => {
                    tracing::warn!(%bmc, session = uri.path(), status = r.status().as_u16(), "could not delete the session");
                }
                Err(e) => {
                    tracing::warn!(%bmc, session = uri.path(), error = %causes(&e), "could not delete the session");
                }
            }
        });
    }
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme() && a.host_str() == b.host_str() && a.port_or_known_default() == b.port_or_known_default()
}

/// The causes of an error, innermost last, without reqwest's own top line
/// (which repeats the URL).
fn causes(error: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    if parts.is_empty() { error.to_string() } else { parts.join(": ") }
}

fn find_rustls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // io::Error::source() skips the error it wraps; look inside.
        if let Some(inner) = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref())
            && let Some(tls) = find_rustls_error(inner)
        {
            return Some(tls);
        }
        current = e.source();
    }
    None
}

/// `Retry-After`: seconds, or an HTTP date. A date in the past means now.
pub(super) fn retry_after(value: &str, now: jiff::Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = jiff::fmt::rfc2822::DateTimeParser::new().parse_timestamp(value).ok()?;
    Some(Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(retry_after("Thu, 01 Jan 2026 00:00:12 GMT", now), Some(Duration::from_secs(12)));
        assert_eq!(retry_after("Wed, 31 Dec 2025 23:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(retry_after("soon", now), None);
    }

    #[test]
    fn origins() {
        let base = Url::parse("https://bmc:8443/").unwrap();
        assert!(same_origin(&Url::parse("https://bmc:8443/redfish/v1").unwrap(), &base));
        assert!(!same_origin(&Url::parse("https://evil:8443/").unwrap(), &base));
        assert!(!same_origin(&Url::parse("http://bmc:8443/").unwrap(), &base));
        assert!(!same_origin(&Url::parse("https://bmc/").unwrap(), &base));
    }
}
