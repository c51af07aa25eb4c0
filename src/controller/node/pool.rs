//! One BMC client per node, kept between reconciles: it holds the BMC
//! session and the per-BMC concurrency limit. A client is reused while the
//! address, the credentials Secret's version and the TLS choice it was made
//! from are unchanged (its *fingerprint*); the Secret is then not even read
//! (the Secret watch says when its version changes).

use crate::api::node::BmcSpec;
use crate::bmc::{self, Bmc, BmcAddress, BmcError, BmcOptions, Credentials};
use crate::operator::metrics::Metrics;
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// Why the credentials could not be used, before any BMC call.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsProblem {
    #[error("credentials Secret {0} does not exist in the node's namespace; create it with keys username and password")]
    Missing(String),
    #[error("credentials Secret {secret} has no {key} key; it needs username and password")]
    Incomplete { secret: String, key: &'static str },
    #[error("cannot read credentials Secret {secret}: {source}")]
    Read { secret: String, source: kube::Error },
}

impl CredentialsProblem {
    pub fn reason(&self) -> &'static str {
        match self {
            CredentialsProblem::Missing(_) => "SecretNotFound",
            CredentialsProblem::Incomplete { .. } => "SecretIncomplete",
            CredentialsProblem::Read { .. } => "SecretUnreadable",
        }
    }
}

/// Why a node's BMC client could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Credentials(#[from] CredentialsProblem),
    #[error(transparent)]
    Bmc(#[from] BmcError),
}

struct Cached {
    fingerprint: String,
    bmc: Arc<dyn Bmc>,
}

/// The cached BMC clients of every node this process drives.
pub struct BmcPool {
    clients: Mutex<HashMap<String, Cached>>,
    /// The credentials Secrets' metadata, from the watch.
    secrets: Store<PartialObjectMeta<Secret>>,
    client: kube::Client,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl BmcPool {
    pub fn new(
        client: kube::Client,
        secrets: Store<PartialObjectMeta<Secret>>,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self { clients: Mutex::new(HashMap::new()), secrets, client, timeout, metrics }
    }

    fn options(&self, spec: &BmcSpec) -> BmcOptions {
        BmcOptions {
            timeout: self.timeout,
            disable_certificate_verification: spec.disable_certificate_verification,
            ..BmcOptions::default()
        }
    }

    fn fingerprint(spec: &BmcSpec, address: &BmcAddress, secret_version: &str) -> String {
        format!("{address}|{secret_version}|{}", spec.disable_certificate_verification)
    }

    /// Whether the client cached for `node_key` (if any) was made from
    /// something other than what the spec and the Secret watch say now.
    pub async fn changed(&self, node_key: &str, namespace: &str, spec: &BmcSpec, address: &BmcAddress) -> bool {
        let clients = self.clients.lock().await;
        let Some(cached) = clients.get(node_key) else { return false };
        match self.watched_version(namespace, spec) {
            Some(version) => cached.fingerprint != Self::fingerprint(spec, address, &version),
            // Not in the watch (yet): decided when the Secret is read.
            None => !cached.fingerprint.starts_with(&format!("{address}|")),
        }
    }

    fn watched_version(&self, namespace: &str, spec: &BmcSpec) -> Option<String> {
        let secret = self.secrets.get(&ObjectRef::new(&spec.credentials_secret_ref.name).within(namespace))?;
        secret.resource_version()
    }

    /// The node's client: the cached one while nothing it was made from
    /// changed (no Secret read), else a new one (the stale one is closed).
    pub async fn get(
        &self,
        node_key: &str,
        namespace: &str,
        spec: &BmcSpec,
        address: &BmcAddress,
    ) -> Result<Arc<dyn Bmc>, ConnectError> {
        if let Some(version) = self.watched_version(namespace, spec) {
            let fingerprint = Self::fingerprint(spec, address, &version);
            if let Some(cached) = self.clients.lock().await.get(node_key).filter(|c| c.fingerprint == fingerprint) {
                return Ok(cached.bmc.clone());
            }
        }
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        self.metrics.credentials_read();
        let (credentials, version) = read_credentials(&secrets, &spec.credentials_secret_ref.name).await?;
        let fingerprint = Self::fingerprint(spec, address, &version);
        let stale = {
            let mut clients = self.clients.lock().await;
            match clients.get(node_key) {
                Some(cached) if cached.fingerprint == fingerprint => return Ok(cached.bmc.clone()),
                _ => clients.remove(node_key),
            }
        };
        if let Some(stale) = stale {
            let _ = stale.bmc.close().await;
        }
        self.metrics.bmc_call("connect");
        let bmc: Arc<dyn Bmc> = Arc::from(bmc::connect(address, credentials, self.options(spec)).await?);
        self.clients.lock().await.insert(node_key.to_string(), Cached { fingerprint, bmc: bmc.clone() });
        Ok(bmc)
    }

    /// Closes and forgets the node's client (the BMC keeps no session of ours).
    pub async fn forget(&self, node_key: &str) {
        let cached = self.clients.lock().await.remove(node_key);
        if let Some(cached) = cached {
            let _ = cached.bmc.close().await;
        }
    }

    pub async fn close_all(&self) {
        let all: Vec<Cached> = self.clients.lock().await.drain().map(|(_, c)| c).collect();
        for cached in all {
            let _ = cached.bmc.close().await;
        }
    }
}

pub(crate) async fn read_credentials(
    secrets: &Api<Secret>,
    name: &str,
) -> Result<(Credentials, String), CredentialsProblem> {
    let secret = secrets
        .get_opt(name)
        .await
        .map_err(|source| CredentialsProblem::Read { secret: name.to_string(), source })?
        .ok_or_else(|| CredentialsProblem::Missing(name.to_string()))?;
    let data = secret.data.unwrap_or_default();
    let field = |key: &'static str| {
        data.get(key)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .map(|v| v.trim_end_matches(['\n', '\r']).to_string())
            .filter(|v| !v.is_empty())
            .ok_or(CredentialsProblem::Incomplete { secret: name.to_string(), key })
    };
    let credentials = Credentials::new(field("username")?, field("password")?);
    Ok((credentials, secret.metadata.resource_version.unwrap_or_default()))
}
