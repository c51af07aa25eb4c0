//! The agent's link to the API server: its credentials (from girder pxe,
//! once per session, or from the file the installed system was given), the
//! client built from them, the token's renewal and the heartbeat Lease.
//!
//! Credentials are kept in the state directory before they are used, so an
//! agent that restarts in the same boot goes on with them instead of asking
//! girder pxe again (which would refuse: a session's token is issued once).

use super::protocol::{Credentials, EnrolRequest, Pending, TOKEN_PATH};
use crate::controller::node::access;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why the agent cannot talk to the API server.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("girder pxe refused the enrolment (HTTP {status}): {reason}")]
    Refused { status: u16, reason: String },
    #[error("cannot reach girder pxe at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("girder pxe answered something that is not credentials: {0}")]
    Garbled(String),
    #[error("cannot keep the credentials in {path}: {source}")]
    State { path: PathBuf, source: std::io::Error },
    #[error("the credentials are unusable: {0}")]
    Unusable(String),
    #[error("the session's access is revoked (the agent Secret is gone): {0}")]
    Revoked(String),
    #[error("the API server refused: {0}")]
    Api(Box<kube::Error>),
}

impl LinkError {
    /// Whether the API says this agent's session is over.
    pub fn from_api(err: kube::Error) -> Self {
        match &err {
            kube::Error::Api(status) if status.code == 401 => LinkError::Revoked(status.message.clone()),
            _ => LinkError::Api(Box::new(err)),
        }
    }
}

/// Where the credentials live in the state directory.
fn credentials_path(state: &Path) -> PathBuf {
    state.join("credentials.json")
}

/// The token file the client reads (kube re-reads it at least every minute).
pub fn token_path(state: &Path) -> PathBuf {
    state.join("token")
}

/// Writes `bytes` to `path` atomically, readable by this user only.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Keeps `credentials` (the token apart, in its own file) in `state`.
pub fn store(state: &Path, credentials: &Credentials) -> Result<(), LinkError> {
    let error = |path: PathBuf| move |source| LinkError::State { path, source };
    let json = serde_json::to_vec_pretty(credentials).map_err(|e| LinkError::Garbled(e.to_string()))?;
    write_private(&credentials_path(state), &json).map_err(error(credentials_path(state)))?;
    write_private(&token_path(state), credentials.token.as_bytes()).map_err(error(token_path(state)))
}

/// Credentials kept earlier in `state`, or in the file at `path`.
pub fn load(path: &Path) -> Option<Credentials> {
    let text = std::fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The credentials kept in `state` by an earlier run of the agent in this boot.
pub fn kept(state: &Path) -> Option<Credentials> {
    let mut credentials = load(&credentials_path(state))?;
    // The token file is newer when the token was renewed.
    if let Ok(token) = std::fs::read_to_string(token_path(state)) {
        credentials.token = token.trim().to_string();
    }
    Some(credentials)
}

/// Asks girder pxe at `pxe` for credentials, until it gives them or refuses
/// for good. `pause` says how long to wait between attempts.
pub async fn enrol(
    http: &reqwest::Client,
    pxe: &str,
    request: &EnrolRequest,
    pause: impl Fn(u32) -> Duration,
) -> Result<Credentials, LinkError> {
    let url = format!("{pxe}{TOKEN_PATH}");
    let mut attempt = 0u32;
    loop {
        attempt = attempt.saturating_add(1);
        let body = serde_json::to_vec(request).map_err(|e| LinkError::Garbled(e.to_string()))?;
        let post = http.post(&url).header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
        let wait = match post.send().await {
            Err(err) => {
                tracing::warn!(%url, error = %err, "cannot reach girder pxe; trying again");
                pause(attempt)
            }
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.bytes().await.unwrap_or_default();
                match status {
                    200 => return serde_json::from_slice(&body).map_err(|e| LinkError::Garbled(e.to_string())),
                    202 => {
                        let pending: Option<Pending> = serde_json::from_slice(&body).ok();
                        let message = pending.as_ref().map(|p| p.message.as_str()).unwrap_or("not yet");
                        tracing::info!(%message, "girder pxe asks to wait");
                        Duration::from_secs(pending.map_or(3, |p| p.retry_after_seconds.clamp(1, 60)))
                    }
                    400..=499 => {
                        let reason = String::from_utf8_lossy(&body).trim().to_string();
                        return Err(LinkError::Refused { status, reason });
                    }
                    _ => {
                        let reason = String::from_utf8_lossy(&body).trim().to_string();
                        tracing::warn!(status, %reason, "girder pxe cannot enrol the agent now; trying again");
                        pause(attempt)
                    }
                }
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// The certificates of a PEM bundle, DER encoded.
fn pem_certificates(pem: &str) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in pem.lines().map(str::trim) {
        match line {
            "-----BEGIN CERTIFICATE-----" => current = Some(String::new()),
            "-----END CERTIFICATE-----" => {
                if let Some(body) = current.take()
                    && let Ok(der) = base64::engine::general_purpose::STANDARD.decode(body)
                {
                    out.push(der);
                }
            }
            line => {
                if let Some(body) = current.as_mut() {
                    body.push_str(line);
                }
            }
        }
    }
    out
}

/// A client that talks to the API server as the node's agent.
pub fn client(credentials: &Credentials, state: &Path) -> Result<Client, LinkError> {
    let url =
        credentials.server.parse().map_err(|e| LinkError::Unusable(format!("server {}: {e}", credentials.server)))?;
    let mut config = kube::Config::new(url);
    config.default_namespace = credentials.namespace.clone();
    let roots = pem_certificates(&credentials.certificate_authority);
    if roots.is_empty() {
        return Err(LinkError::Unusable("no CA certificate to verify the API server with".into()));
    }
    config.root_cert = Some(roots);
    config.tls_server_name = credentials.tls_server_name.clone();
    config.auth_info.token_file = Some(token_path(state).to_string_lossy().into_owned());
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = Some(Duration::from_secs(330));
    Client::try_from(config).map_err(|e| LinkError::Unusable(e.to_string()))
}

/// Mints a fresh token for this agent, bound to its session's Secret, and
/// puts it where the client reads it. The API server refuses once the
/// session is revoked.
pub async fn renew(client: &Client, credentials: &Credentials, state: &Path) -> Result<(), LinkError> {
    let account = access::name(&credentials.node);
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &credentials.namespace);
    let request = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "expirationSeconds": crate::pxe::enrol::TOKEN_SECONDS,
            "boundObjectRef": { "apiVersion": "v1", "kind": "Secret", "name": account },
        },
    });
    let answer: TokenRequest =
        api.create_subresource("token", &account, &PostParams::default(), &request).await.map_err(|err| match err {
            kube::Error::Api(status) if status.code == 404 || status.code == 401 => LinkError::Revoked(status.message),
            err => LinkError::from_api(err),
        })?;
    let token = answer.status.and_then(|s| s.token).filter(|t| !t.is_empty());
    let token = token.ok_or_else(|| LinkError::Unusable("the API server returned no token".into()))?;
    write_private(&token_path(state), token.as_bytes())
        .map_err(|source| LinkError::State { path: token_path(state), source })
}

/// Renews the heartbeat Lease `girder-agent-<node>` as `session`; returns how
/// long a renewal counts (the Lease's duration).
pub async fn heartbeat(client: &Client, credentials: &Credentials) -> Result<Duration, LinkError> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &credentials.namespace);
    let name = access::name(&credentials.node);
    let now = MicroTime(jiff::Timestamp::now());
    let body = serde_json::json!({ "spec": { "holderIdentity": credentials.session, "renewTime": now } });
    let lease = api.patch(&name, &PatchParams::default(), &Patch::Merge(&body)).await.map_err(LinkError::from_api)?;
    let seconds = lease.spec.and_then(|s| s.lease_duration_seconds).unwrap_or(60).clamp(10, 3600);
    Ok(Duration::from_secs(u64::try_from(seconds).unwrap_or(60)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_bundles_become_der_certificates() {
        let pem = "junk\n-----BEGIN CERTIFICATE-----\nAAEC\nAwQ=\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nBQY=\n-----END CERTIFICATE-----\n";
        assert_eq!(pem_certificates(pem), vec![vec![0, 1, 2, 3, 4], vec![5, 6]]);
        assert!(pem_certificates("").is_empty());
    }

    #[test]
    fn kept_credentials_take_the_renewed_token_and_stay_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("girder-agent-link-{:08x}", rand::random::<u32>()));
        let credentials = Credentials {
            namespace: "lab".into(),
            node: "n1".into(),
            session: "s1".into(),
            token: "first".into(),
            expiration: String::new(),
            server: "https://10.0.0.1:6443".into(),
            tls_server_name: Some("127.0.0.1".into()),
            certificate_authority: String::new(),
        };
        store(&dir, &credentials).unwrap();
        assert_eq!(kept(&dir).unwrap().token, "first");
        write_private(&token_path(&dir), b"second\n").unwrap();
        assert_eq!(kept(&dir).unwrap().token, "second");
        for file in ["credentials.json", "token"] {
            let mode = std::fs::metadata(dir.join(file)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        assert!(!format!("{credentials:?}").contains("first"), "Debug hides the token");
        let _ = std::fs::remove_dir_all(dir);
    }
}
