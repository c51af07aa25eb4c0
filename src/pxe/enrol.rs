//! Agent enrolment: girder pxe trades the nonce of a node's iPXE script for
//! a short-lived ServiceAccount token, once per agent session.
//!
//! Why here: the machine reaches girder pxe before it can reach anything
//! else (the provisioning network may not route to the API server), and
//! girder pxe already decides what each MAC boots. Why a nonce: a token is
//! handed out only to the first caller that shows the nonce of the script
//! served for the session the operator opened, only while that session is
//! open, and only once (the issuance is journaled in `--state-dir`, so a
//! restart does not reopen it). A second caller gets a refusal that names
//! the first, and the real agent failing to enrol shows on the node
//! (`AgentConnected`): someone who could read the provisioning network
//! could race the machine, but not silently.
//!
//! Nonces are HMAC-SHA256 of the node and session under a key girder pxe
//! keeps in `--state-dir` (created on first start): nothing to store per
//! boot, and a nonce cannot be forged without the key. A machine nobody
//! declared gets a discovery nonce bound to its MAC and the time it was
//! served (valid for an hour); its first exchange registers a
//! BareMetalNode (label `girder.dev/discovered`), and once the operator has
//! opened that node's session the same nonce gets the token.
//!
//! The token is bound to the node's agent Secret, so the operator revokes it
//! by deleting that Secret; the ValidatingAdmissionPolicy `girder-agent`
//! limits what it may do (config/rbac/agent_policy.yaml).

use super::model::{Mac, NodeBoot, Snapshot};
use crate::agent::protocol::{Credentials, EnrolRequest, Pending};
use crate::api::BareMetalNode;
use crate::api::node::NodePhase;
use crate::controller::node::{DISCOVERED_LABEL, access};
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac as _};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::PostParams;
use kube::{Api, Client};
use sha2::Sha256;
use std::collections::HashMap;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// How long a discovery nonce stays good.
pub const DISCOVERY_NONCE_SECONDS: i64 = 3600;
/// How long the tokens girder pxe mints live (the agent renews them).
pub const TOKEN_SECONDS: i64 = 3600;
/// Issuance records older than this are dropped when the journal is read.
const JOURNAL_DAYS: i64 = 14;

/// The key nonces are made with.
pub struct NonceKey([u8; 32]);

impl NonceKey {
    /// Reads `<dir>/enrol.key`, or makes one (readable by this user only).
    pub fn load_or_create(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join("enrol.key");
        match std::fs::read(&path) {
            Ok(bytes) if bytes.len() == 32 => {
                let mut key = [0u8; 32];
                key.copy_from_slice(&bytes);
                Ok(Self(key))
            }
            Ok(_) => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is not a 32-byte key; delete it to make a new one", path.display()),
            )),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir)?;
                let key: [u8; 32] = rand::random();
                let tmp = dir.join("enrol.key.tmp");
                let mut file = {
                    use std::os::unix::fs::OpenOptionsExt;
                    std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?
                };
                file.write_all(&key)?;
                file.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                Ok(Self(key))
            }
            Err(err) => Err(err),
        }
    }

    pub fn from_bytes(key: [u8; 32]) -> Self {
        Self(key)
    }

    fn mac(&self, parts: &[&str]) -> String {
        let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0) else { return String::new() };
        for part in parts {
            mac.update(part.as_bytes());
            mac.update(&[0]);
        }
        let digest = mac.finalize().into_bytes();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16])
    }

    /// The nonce of `session` of node `namespace/name`.
    pub fn session_nonce(&self, namespace: &str, name: &str, session: &str) -> String {
        self.mac(&["girder-session", namespace, name, session])
    }

    /// The nonce of an unknown machine, served at `issued` (Unix seconds).
    pub fn discovery_nonce(&self, mac: Mac, issued: i64) -> String {
        format!("d{issued}.{}", self.mac(&["girder-discover", &mac.to_string(), &issued.to_string()]))
    }

    /// Whether `nonce` is a discovery nonce of `mac` still good at `now`.
    fn discovery_valid(&self, nonce: &str, mac: Mac, now: i64) -> Result<(), &'static str> {
        let Some((issued, _)) = nonce.strip_prefix('d').and_then(|rest| rest.split_once('.')) else {
            return Err("not a discovery nonce");
        };
        let issued: i64 = issued.parse().map_err(|_| "not a discovery nonce")?;
        if !equal(nonce, &self.discovery_nonce(mac, issued)) {
            return Err("the nonce does not belong to this MAC");
        }
        if now.saturating_sub(issued) > DISCOVERY_NONCE_SECONDS || issued > now.saturating_add(60) {
            return Err("the discovery nonce has expired; boot the machine again");
        }
        Ok(())
    }
}

/// Compares without leaking where two nonces differ.
fn equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Which sessions got a token: an append-only journal, read at start.
pub struct Issued {
    path: PathBuf,
    entries: HashMap<String, (i64, String)>,
}

impl Issued {
    /// Reads `<dir>/enrol.journal`, dropping what is older than two weeks.
    pub fn open(dir: &Path, now: i64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("enrol.journal");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(err) => return Err(err),
        };
        let mut entries = HashMap::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(at), Some(key), Some(client)) = (words.next(), words.next(), words.next()) else { continue };
            let Ok(at) = at.parse::<i64>() else { continue };
            if now.saturating_sub(at) <= JOURNAL_DAYS * 86_400 {
                entries.insert(key.to_string(), (at, client.to_string()));
            }
        }
        let issued = Self { path, entries };
        issued.compact()?;
        Ok(issued)
    }

    fn compact(&self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("journal.tmp");
        let mut file = std::fs::File::create(&tmp)?;
        for (key, (at, client)) in &self.entries {
            writeln!(file, "{at} {key} {client}")?;
        }
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }

    /// When and to whom the token of `key` was issued, if it was.
    pub fn get(&self, key: &str) -> Option<&(i64, String)> {
        self.entries.get(key)
    }

    /// Records an issuance durably before the token leaves.
    pub fn record(&mut self, key: &str, at: i64, client: &str) -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        writeln!(file, "{at} {key} {client}")?;
        file.sync_all()?;
        self.entries.insert(key.to_string(), (at, client.to_string()));
        Ok(())
    }
}

/// The journal key of a node's session.
pub fn session_key(node: &NodeBoot, session: &str) -> String {
    format!("{}/{}/{session}", node.namespace, node.name)
}

/// What to do with an enrolment request (pure).
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Mint a token for this node's session.
    Issue { namespace: String, name: String, session: String },
    /// Register the unknown machine as a BareMetalNode in `namespace`.
    Register { namespace: String, name: String, mac: Mac },
    /// Not yet: ask again later.
    Pending(String),
    /// Never for this request: the HTTP status and why.
    Refuse(u16, String),
}

/// The name of the node girder pxe registers for an unknown `mac`.
pub fn discovered_name(mac: Mac) -> String {
    format!("discovered-{}", mac.to_string().replace(':', ""))
}

/// Decides an enrolment request from what the API says (pure).
pub fn decide(
    request: &EnrolRequest,
    client: Option<Ipv4Addr>,
    snapshot: &Snapshot,
    key: &NonceKey,
    issued: &Issued,
    now: i64,
) -> Verdict {
    let Some(mac) = Mac::parse(&request.mac) else {
        return Verdict::Refuse(400, format!("{:?} is not a MAC address", request.mac));
    };
    if let Some(claimants) = snapshot.duplicate(&mac) {
        let who = claimants.join(" and ");
        return Verdict::Refuse(409, format!("boot MAC {mac} is claimed by {who}; no agent enrols for it"));
    }
    let Some(node) = snapshot.node(&mac) else {
        if let Err(why) = key.discovery_valid(&request.nonce, mac, now) {
            return Verdict::Refuse(403, format!("no BareMetalNode has boot MAC {mac}, and {why}"));
        }
        let Some(network) = client.and_then(|ip| snapshot.network_containing(ip)) else {
            return Verdict::Refuse(
                403,
                format!("the machine {mac} is on no Network girder knows, so no Network allows its discovery"),
            );
        };
        if !network.allow_discovery {
            return Verdict::Refuse(
                403,
                format!("Network {} does not allow discovery (spec.dhcp.allowDiscovery)", network.key()),
            );
        }
        return Verdict::Register { namespace: network.namespace.clone(), name: discovered_name(mac), mac };
    };
    let key_name = format!("{}/{}", node.namespace, node.name);
    let Some(session) = node.session.clone() else {
        let waiting = node.discovered && node.phase == Some(NodePhase::Discovered);
        if waiting && key.discovery_valid(&request.nonce, mac, now).is_ok() {
            return Verdict::Pending(format!("node {key_name} is registered; waiting for girder to open its session"));
        }
        return Verdict::Refuse(
            410,
            format!("node {key_name} has no open agent session: the operator expects no agent now"),
        );
    };
    let by_session = equal(&request.nonce, &key.session_nonce(&node.namespace, &node.name, &session));
    let by_discovery = node.discovered && key.discovery_valid(&request.nonce, mac, now).is_ok();
    if !by_session && !by_discovery {
        return Verdict::Refuse(
            403,
            format!(
                "the nonce is not the one of node {key_name}'s session {session}; the machine booted a script of an earlier session (it is booted again)"
            ),
        );
    }
    if let Some((at, client)) = issued.get(&session_key(node, &session)) {
        return Verdict::Refuse(
            409,
            format!(
                "the token of node {key_name}'s session {session} was already issued ({}s ago, to {client}); a session's token is issued once",
                now.saturating_sub(*at)
            ),
        );
    }
    Verdict::Issue { namespace: node.namespace.clone(), name: node.name.clone(), session }
}

/// What girder pxe needs to mint and hand out tokens.
pub struct Enrolment {
    pub key: NonceKey,
    pub issued: tokio::sync::Mutex<Issued>,
    pub client: Client,
    /// PEM of the CAs of the API server's certificate.
    pub ca_pem: String,
    /// The API server's host as its certificate names it.
    pub api_host: String,
    /// The API server's own URL.
    pub api_url: String,
    /// Port of the pass-through to the API server on the provisioning
    /// network, if girder pxe runs one.
    pub passthrough_port: Option<u16>,
    /// The API server URL to give agents instead (`--agent-api-server`).
    pub server_override: Option<String>,
}

/// Why a token could not be had.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("the agent access of {0} is not there yet (the operator creates it with the session)")]
    NotReady(String),
    #[error("cannot mint a token for {node}: {source}")]
    Api { node: String, source: Box<kube::Error> },
    #[error("the API server returned no token for {0}")]
    Empty(String),
}

impl Enrolment {
    /// Mints a token bound to the node's agent Secret.
    pub async fn mint(&self, namespace: &str, name: &str) -> Result<(String, String), MintError> {
        let account = access::name(name);
        let node = format!("{namespace}/{name}");
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let request = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": TOKEN_SECONDS,
                "boundObjectRef": { "apiVersion": "v1", "kind": "Secret", "name": account },
            },
        });
        let answer: TokenRequest =
            match api.create_subresource("token", &account, &PostParams::default(), &request).await {
                Ok(answer) => answer,
                Err(kube::Error::Api(status)) if status.is_not_found() => return Err(MintError::NotReady(node)),
                Err(source) => return Err(MintError::Api { node, source: Box::new(source) }),
            };
        let status = answer.status.ok_or_else(|| MintError::Empty(node.clone()))?;
        let token = status.token.filter(|t| !t.is_empty()).ok_or_else(|| MintError::Empty(node.clone()))?;
        let expires = status.expiration_timestamp.map(|t| t.0.to_string()).unwrap_or_default();
        Ok((token, expires))
    }

    /// The credentials for the agent, which reached girder pxe at `host`.
    pub fn credentials(
        &self,
        namespace: &str,
        name: &str,
        session: &str,
        token: (String, String),
        host: &str,
    ) -> Credentials {
        let (server, tls_server_name) = match (&self.server_override, self.passthrough_port) {
            (Some(server), _) => (server.clone(), None),
            (None, Some(port)) => {
                let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
                (format!("https://{host}:{port}"), Some(self.api_host.clone()))
            }
            (None, None) => (self.api_url.clone(), None),
        };
        Credentials {
            namespace: namespace.to_string(),
            node: name.to_string(),
            session: session.to_string(),
            token: token.0,
            expiration: token.1,
            server,
            tls_server_name,
            certificate_authority: self.ca_pem.clone(),
        }
    }

    /// Registers an unknown machine: a BareMetalNode with its boot MAC and
    /// the discovered label, and nothing else (no BMC, nothing to install).
    pub async fn register(&self, namespace: &str, name: &str, mac: Mac) -> Result<(), kube::Error> {
        let api: Api<BareMetalNode> = Api::namespaced(self.client.clone(), namespace);
        let node: BareMetalNode = serde_json::from_value(serde_json::json!({
            "apiVersion": "girder.dev/v1alpha1",
            "kind": "BareMetalNode",
            "metadata": { "name": name, "labels": { DISCOVERED_LABEL: "true" } },
            "spec": { "bootMACAddress": mac.to_string() },
        }))
        .map_err(kube::Error::SerdeError)?;
        match api.create(&PostParams { field_manager: Some("girder-pxe".into()), ..Default::default() }, &node).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(()),
            Err(err) => Err(err),
        }
    }
}

/// A `202 Accepted` body telling the agent to ask again.
pub fn pending(message: String) -> Pending {
    Pending { retry_after_seconds: 3, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::network::{DhcpMode, DhcpSpec, Network, NetworkSpec};
    use crate::api::node::BareMetalNodeSpec;
    use crate::api::provisioning::{AgentRun, ProvisioningState, ProvisioningStatus, RunAction};

    const MAC: &str = "52:54:00:12:34:56";

    fn key() -> NonceKey {
        NonceKey::from_bytes([7; 32])
    }

    fn mac() -> Mac {
        Mac::parse(MAC).unwrap_or(Mac([0; 6]))
    }

    fn node(session: Option<&str>, discovered: bool, phase: NodePhase) -> BareMetalNode {
        let mut node = BareMetalNode::new(
            "n1",
            BareMetalNodeSpec { boot_mac_address: Some(MAC.into()), ..BareMetalNodeSpec::default() },
        );
        node.metadata.namespace = Some("lab".into());
        if discovered {
            node.metadata.labels = Some([(DISCOVERED_LABEL.to_string(), "true".to_string())].into());
        }
        node.status = Some(crate::api::node::BareMetalNodeStatus {
            phase: Some(phase),
            provisioning: Some(ProvisioningStatus {
                session: session.map(String::from),
                state: Some(ProvisioningState::WaitingForAgent),
                run: Some(AgentRun {
                    id: "r1".into(),
                    action: RunAction::Deploy,
                    image: None,
                    root_device_hints: None,
                    user_data: None,
                    cleaning: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        node
    }

    fn network(allow: bool) -> Network {
        let mut net = Network::new(
            "prov",
            NetworkSpec {
                cidr: Some("10.0.0.0/24".into()),
                dhcp: Some(DhcpSpec { mode: DhcpMode::Managed, lease_seconds: None, allow_discovery: allow }),
                ..NetworkSpec::default()
            },
        );
        net.metadata.namespace = Some("lab".into());
        net
    }

    fn journal() -> (crate::pxe::enrol::Issued, PathBuf) {
        let dir = std::env::temp_dir().join(format!("girder-enrol-{:08x}", rand::random::<u32>()));
        (Issued::open(&dir, 1_000).unwrap(), dir)
    }

    fn ask(nonce: &str) -> EnrolRequest {
        EnrolRequest { mac: MAC.into(), nonce: nonce.into() }
    }

    const CLIENT: Option<Ipv4Addr> = Some(Ipv4Addr::new(10, 0, 0, 50));

    #[test]
    fn the_sessions_nonce_gets_the_token_once() {
        let snapshot = Snapshot::build(&[node(Some("s1"), false, NodePhase::Provisioning)], &[network(false)]);
        let (mut issued, dir) = journal();
        let good = key().session_nonce("lab", "n1", "s1");
        let verdict = decide(&ask(&good), CLIENT, &snapshot, &key(), &issued, 1_000);
        assert_eq!(verdict, Verdict::Issue { namespace: "lab".into(), name: "n1".into(), session: "s1".into() });

        issued.record("lab/n1/s1", 1_000, "10.0.0.50").unwrap();
        match decide(&ask(&good), CLIENT, &snapshot, &key(), &issued, 1_010) {
            Verdict::Refuse(409, why) => assert!(why.contains("already issued (10s ago, to 10.0.0.50)"), "{why}"),
            other => panic!("{other:?}"),
        }
        // The journal survives a restart.
        let reopened = Issued::open(&dir, 1_020).unwrap();
        assert!(matches!(decide(&ask(&good), CLIENT, &snapshot, &key(), &reopened, 1_020), Verdict::Refuse(409, _)));
        // Two weeks on, the record is gone (the session is long over anyway).
        assert!(Issued::open(&dir, 1_000 + 15 * 86_400).unwrap().get("lab/n1/s1").is_none());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_nonce_of_another_session_node_or_key_is_refused() {
        let snapshot = Snapshot::build(&[node(Some("s2"), false, NodePhase::Provisioning)], &[network(false)]);
        let (issued, dir) = journal();
        for nonce in [
            key().session_nonce("lab", "n1", "s1"),
            key().session_nonce("lab", "n2", "s2"),
            NonceKey::from_bytes([8; 32]).session_nonce("lab", "n1", "s2"),
            key().discovery_nonce(mac(), 1_000),
            String::new(),
        ] {
            match decide(&ask(&nonce), CLIENT, &snapshot, &key(), &issued, 1_000) {
                Verdict::Refuse(403, why) => assert!(why.contains("session s2"), "{why}"),
                other => panic!("{nonce}: {other:?}"),
            }
        }
        let closed = Snapshot::build(&[node(None, false, NodePhase::Provisioning)], &[]);
        let nonce = key().session_nonce("lab", "n1", "s2");
        assert!(matches!(decide(&ask(&nonce), CLIENT, &closed, &key(), &issued, 1_000), Verdict::Refuse(410, _)));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_unknown_machine_is_registered_only_where_discovery_is_allowed() {
        let (issued, dir) = journal();
        let nonce = key().discovery_nonce(mac(), 900);
        let open = Snapshot::build(&[], &[network(true)]);
        assert_eq!(
            decide(&ask(&nonce), CLIENT, &open, &key(), &issued, 1_000),
            Verdict::Register { namespace: "lab".into(), name: "discovered-525400123456".into(), mac: mac() }
        );
        let closed = Snapshot::build(&[], &[network(false)]);
        match decide(&ask(&nonce), CLIENT, &closed, &key(), &issued, 1_000) {
            Verdict::Refuse(403, why) => assert!(why.contains("lab/prov does not allow discovery"), "{why}"),
            other => panic!("{other:?}"),
        }
        let elsewhere = Some(Ipv4Addr::new(192, 168, 1, 5));
        assert!(matches!(decide(&ask(&nonce), elsewhere, &open, &key(), &issued, 1_000), Verdict::Refuse(403, _)));
        // Expired, or for another MAC.
        match decide(&ask(&nonce), CLIENT, &open, &key(), &issued, 900 + DISCOVERY_NONCE_SECONDS + 1) {
            Verdict::Refuse(403, why) => assert!(why.contains("expired"), "{why}"),
            other => panic!("{other:?}"),
        }
        let other = EnrolRequest { mac: "52:54:00:00:00:01".into(), nonce: nonce.clone() };
        assert!(matches!(decide(&other, CLIENT, &open, &key(), &issued, 1_000), Verdict::Refuse(403, _)));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_registered_machine_waits_for_its_session_then_gets_the_token_with_its_discovery_nonce() {
        let (issued, dir) = journal();
        let nonce = key().discovery_nonce(mac(), 900);
        let registered = Snapshot::build(&[node(None, true, NodePhase::Discovered)], &[network(true)]);
        assert!(matches!(decide(&ask(&nonce), CLIENT, &registered, &key(), &issued, 1_000), Verdict::Pending(_)));
        let opened = Snapshot::build(&[node(Some("s1"), true, NodePhase::Discovered)], &[network(true)]);
        assert_eq!(
            decide(&ask(&nonce), CLIENT, &opened, &key(), &issued, 1_000),
            Verdict::Issue { namespace: "lab".into(), name: "n1".into(), session: "s1".into() }
        );
        // A declared node never takes a discovery nonce.
        let declared = Snapshot::build(&[node(Some("s1"), false, NodePhase::Provisioning)], &[network(true)]);
        assert!(matches!(decide(&ask(&nonce), CLIENT, &declared, &key(), &issued, 1_000), Verdict::Refuse(403, _)));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_key_is_made_once_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("girder-enrol-key-{:08x}", rand::random::<u32>()));
        let first = NonceKey::load_or_create(&dir).unwrap();
        let again = NonceKey::load_or_create(&dir).unwrap();
        assert_eq!(first.session_nonce("a", "b", "c"), again.session_nonce("a", "b", "c"));
        let mode = std::fs::metadata(dir.join("enrol.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.join("enrol.key"), b"short").unwrap();
        assert!(NonceKey::load_or_create(&dir).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
