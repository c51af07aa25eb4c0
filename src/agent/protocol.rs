//! The one exchange between `girder agent` and `girder pxe`: a nonce from the
//! iPXE script for a short-lived ServiceAccount token (see
//! `crate::pxe::enrol`). Everything else the agent does goes to the
//! Kubernetes API itself.

use serde::{Deserialize, Serialize};

/// Where the agent asks, under girder pxe's HTTP origin.
pub const TOKEN_PATH: &str = "/agent/v1/token";

/// What the agent sends: who it is and the nonce its kernel command line
/// carried (`girder.nonce=`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EnrolRequest {
    /// The MAC the machine booted from (`girder.mac=`).
    pub mac: String,
    pub nonce: String,
}

/// What the agent gets: enough to talk to the API server as its node.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    pub namespace: String,
    /// The BareMetalNode's name.
    pub node: String,
    /// The agent session the token belongs to.
    pub session: String,
    /// A ServiceAccount token bound to the node's agent Secret.
    pub token: String,
    /// When the token expires (RFC 3339); the agent renews it before.
    pub expiration: String,
    /// `https://host:port` of the API server as the machine reaches it
    /// (girder pxe's pass-through, or the API server itself).
    pub server: String,
    /// The name to verify the API server's certificate against, when it
    /// differs from the host in `server` (through the pass-through it does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    /// PEM bundle of the CAs that sign the API server's certificate.
    pub certificate_authority: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token never reaches a log line.
        f.debug_struct("Credentials")
            .field("namespace", &self.namespace)
            .field("node", &self.node)
            .field("session", &self.session)
            .field("token", &"<redacted>")
            .field("expiration", &self.expiration)
            .field("server", &self.server)
            .field("tls_server_name", &self.tls_server_name)
            .finish()
    }
}

/// The answer while the operator is not ready for the agent yet (HTTP 202).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Pending {
    pub retry_after_seconds: u64,
    pub message: String,
}
