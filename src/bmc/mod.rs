//! Baseboard management controllers: one trait, [`Bmc`], that the
//! BareMetalNode controller drives, and its drivers (Redfish and IPMI).
//!
//! Everything here names the BMC it talks to (its address, never with
//! credentials) and never carries a password or a session token into an
//! error, a `Debug` rendering or a log line: secrets live in [`Secret`], whose
//! `Debug` is redacted and which has no `Display`.

pub mod ipmi;
pub mod probe;
pub mod redfish;

use crate::api::node::{BootMode, HardwareDetails};
use async_trait::async_trait;
use std::fmt;
use std::time::Duration;

pub use ipmi::{IpmiClient, IpmiOptions};
pub use redfish::{AuthMode, RedfishClient};

/// What the BareMetalNode controller needs from a BMC. Object safe, so the
/// controller holds a `Box<dyn Bmc>` whatever the protocol.
///
/// One value per BMC, kept between reconciles: it holds the session and the
/// per-BMC concurrency limit. Call [`Bmc::close`] before dropping it.
#[async_trait]
pub trait Bmc: Send + Sync + fmt::Debug {
    /// The address this value talks to.
    fn address(&self) -> &BmcAddress;
    /// The system's current power state, read from the BMC.
    async fn power_state(&self) -> Result<PowerState, BmcError>;
    /// Asks for a power change. Returns once the BMC accepted it: the state
    /// may take a while to follow (read it back with [`Bmc::power_state`]).
    /// Asking for the state the system is already in succeeds.
    async fn power(&self, action: PowerAction) -> Result<(), BmcError>;
    /// Boots from `boot.device`, in `boot.mode`, on the next boot only.
    async fn set_boot_override(&self, boot: BootOverride) -> Result<(), BmcError>;
    /// Vendor, model, serial number and UUID of the system.
    async fn identity(&self) -> Result<SystemIdentity, BmcError>;
    /// Out-of-band hardware inventory. Parts the BMC does not report are left
    /// empty rather than failing the whole inventory.
    async fn inventory(&self) -> Result<HardwareDetails, BmcError>;
    /// Ends the session with the BMC, if one is open. Idempotent; the value
    /// stays usable (a later call logs in again).
    async fn close(&self) -> Result<(), BmcError>;
    /// What the driver sees on the BMC beyond what it drives, and the
    /// variations from the standard it works around (`girder bmc probe`).
    /// Reads only.
    async fn describe(&self) -> Result<Description, BmcError>;
}

/// What a driver can say about a BMC, for a person meeting a new vendor.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Description {
    /// `(what, value)`, in the order worth reading.
    pub facts: Vec<(String, String)>,
    /// Each variation from the standard seen, and what girder does about it.
    pub quirks: Vec<String>,
}

impl Description {
    pub fn fact(&mut self, what: &str, value: impl Into<String>) {
        self.facts.push((what.to_string(), value.into()));
    }
}

/// Connects to the BMC at `address` with the driver its scheme names.
pub async fn connect(
    address: &BmcAddress,
    credentials: Credentials,
    options: BmcOptions,
) -> Result<Box<dyn Bmc>, BmcError> {
    match address.scheme {
        Scheme::RedfishHttps | Scheme::RedfishHttp => {
            Ok(Box::new(RedfishClient::connect(address.clone(), credentials, options).await?))
        }
        Scheme::Ipmi => Ok(Box::new(IpmiClient::connect(address.clone(), credentials, options).await?)),
    }
}

// ---------------------------------------------------------------------------
// Addresses

/// Which protocol, and for Redfish which transport, an address names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `redfish://` or `redfish+https://`: Redfish over HTTPS.
    RedfishHttps,
    /// `redfish+http://`: Redfish over plain HTTP (emulators, lab networks).
    RedfishHttp,
    /// `ipmi://`: IPMI 2.0 over RMCP+ (lanplus).
    Ipmi,
}

/// A parsed BMC address: `redfish://host[:port][/redfish/v1/Systems/ID]`,
/// `redfish+http://...`, `redfish+https://...` or `ipmi://host[:port]`.
///
/// Addresses carry no credentials: one with a user name or password in it is
/// refused (and the refusal does not repeat them).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BmcAddress {
    pub scheme: Scheme,
    /// Host name or IP address; IPv6 addresses in brackets, as in a URL.
    pub host: String,
    /// Port, when the address gives one.
    pub port: Option<u16>,
    /// The system's Redfish ID, when the address names one
    /// (`/redfish/v1/Systems/ID`). Kept as written (percent-encoded).
    pub system_id: Option<String>,
}

const SYSTEMS_PREFIX: &str = "/redfish/v1/Systems/";

impl BmcAddress {
    /// Parses an address as the BareMetalNode spec accepts it.
    pub fn parse(address: &str) -> Result<Self, BmcError> {
        let invalid =
            |reason: &str| BmcError::InvalidAddress { address: redact_address(address), reason: reason.to_string() };
        let url = url::Url::parse(address.trim()).map_err(|e| invalid(&e.to_string()))?;
        let scheme = match url.scheme() {
            "redfish" | "redfish+https" => Scheme::RedfishHttps,
            "redfish+http" => Scheme::RedfishHttp,
            "ipmi" => Scheme::Ipmi,
            other => {
                return Err(invalid(&format!("unknown scheme {other:?}: use redfish://, redfish+http:// or ipmi://")));
            }
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid("credentials do not belong in the address: put them in the credentials Secret"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("a query or fragment is not allowed"));
        }
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
            Some(host) => host.to_string(),
            None => return Err(invalid("no host")),
        };
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        let path = url.path().trim_end_matches('/');
        let system_id = if path.is_empty() {
            None
        } else if scheme == Scheme::Ipmi {
            return Err(invalid("an ipmi:// address has no path"));
        } else if let Some(id) = path.strip_prefix(SYSTEMS_PREFIX) {
            if id.is_empty() || id.contains('/') {
                return Err(invalid("the path must be /redfish/v1/Systems/ID"));
            }
            Some(id.to_string())
        } else {
            return Err(invalid("the path must be /redfish/v1/Systems/ID"));
        };
        Ok(Self { scheme, host, port: url.port(), system_id })
    }

    /// `https://host[:port]` (or `http://`) for a Redfish address.
    pub fn redfish_base_url(&self) -> Option<url::Url> {
        let scheme = match self.scheme {
            Scheme::RedfishHttps => "https",
            Scheme::RedfishHttp => "http",
            Scheme::Ipmi => return None,
        };
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        url::Url::parse(&format!("{scheme}://{}{port}/", self.host)).ok()
    }

    /// The system's path on a Redfish BMC, when the address names one.
    pub fn system_path(&self) -> Option<String> {
        self.system_id.as_ref().map(|id| format!("{SYSTEMS_PREFIX}{id}"))
    }
}

impl fmt::Display for BmcAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::RedfishHttps => "redfish",
            Scheme::RedfishHttp => "redfish+http",
            Scheme::Ipmi => "ipmi",
        };
        write!(f, "{scheme}://{}", self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        if let Some(path) = self.system_path() {
            f.write_str(&path)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for BmcAddress {
    type Err = BmcError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// An address as a person wrote it, with any `user:password@` cut out, for
/// error messages about addresses that failed to parse.
fn redact_address(address: &str) -> String {
    let Some(scheme_end) = address.find("://") else {
        return address.to_string();
    };
    let rest = &address[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}://<redacted>@{}", &address[..scheme_end], &rest[at + 1..]),
        None => address.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Credentials and options

/// A secret string (password, session token). Its `Debug` is redacted and it
/// has no `Display`, so it cannot end up in a log line or an error by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// User name and password for a BMC, from the node's credentials Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self { username: username.into(), password: Secret::new(password) }
    }
}

/// How to talk to one BMC.
#[derive(Clone)]
pub struct BmcOptions {
    /// Limit on every call: connecting, sending and reading the answer.
    pub timeout: Duration,
    /// PEM bundle of the CAs that sign the BMC's certificate. When given, only
    /// these are trusted; otherwise the platform's trust store is used.
    pub ca_bundle: Option<Vec<u8>>,
    /// Accept any certificate (the spec's `disableCertificateVerification`).
    pub disable_certificate_verification: bool,
    /// Requests in flight to this BMC at once. BMCs are small computers.
    pub max_concurrent_requests: usize,
    /// How many times a request answered `503 Service Unavailable` is retried.
    pub max_retries: u32,
    /// Upper bound on one wait before a retry, whatever `Retry-After` says.
    pub max_retry_wait: Duration,
}

impl Default for BmcOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            ca_bundle: None,
            disable_certificate_verification: false,
            max_concurrent_requests: 1,
            max_retries: 3,
            max_retry_wait: Duration::from_secs(30),
        }
    }
}

impl fmt::Debug for BmcOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BmcOptions")
            .field("timeout", &self.timeout)
            .field("ca_bundle", &self.ca_bundle.as_ref().map(|b| b.len()))
            .field("disable_certificate_verification", &self.disable_certificate_verification)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("max_retries", &self.max_retries)
            .field("max_retry_wait", &self.max_retry_wait)
            .finish()
    }
}

// ---------------------------------------------------------------------------
// Shared types

/// Power state as a BMC reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PowerState {
    On,
    Off,
    PoweringOn,
    PoweringOff,
    /// Not reported, or a value girder does not know.
    Unknown,
}

impl PowerState {
    /// The value written to `status.powerState`.
    pub fn as_str(self) -> &'static str {
        match self {
            PowerState::On => "On",
            PowerState::Off => "Off",
            PowerState::PoweringOn => "PoweringOn",
            PowerState::PoweringOff => "PoweringOff",
            PowerState::Unknown => "Unknown",
        }
    }
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A power change to ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PowerAction {
    On,
    ForceOff,
    /// Ask the operating system to shut down (ACPI power button).
    GracefulShutdown,
    ForceRestart,
    /// Off, then on. On a system that is off, this turns it on.
    PowerCycle,
}

impl PowerAction {
    /// The state the system ends up in once the action is done.
    pub fn target_state(self) -> PowerState {
        match self {
            PowerAction::ForceOff | PowerAction::GracefulShutdown => PowerState::Off,
            PowerAction::On | PowerAction::ForceRestart | PowerAction::PowerCycle => PowerState::On,
        }
    }
}

impl fmt::Display for PowerAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A device to boot from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BootDevice {
    /// Network boot (PXE).
    Pxe,
    /// UEFI HTTP boot.
    Http,
    /// The local disk.
    Disk,
    /// CD/DVD, including virtual media.
    Cd,
}

/// A one-time boot override: next boot only, then the normal boot order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootOverride {
    pub device: BootDevice,
    pub mode: BootMode,
}

/// Who made the system and which one it is.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SystemIdentity {
    pub vendor: Option<String>,
    pub model: Option<String>,
    pub serial_number: Option<String>,
    pub uuid: Option<String>,
}

// ---------------------------------------------------------------------------
// Errors

/// What went wrong talking to a BMC. Every variant names the BMC (its address,
/// which never holds credentials) and what was being done; none carries a
/// password or a session token.
#[derive(Debug, thiserror::Error)]
pub enum BmcError {
    #[error("invalid BMC address {address:?}: {reason}")]
    InvalidAddress { address: String, reason: String },

    #[error("BMC {bmc}: invalid configuration: {reason}")]
    Config { bmc: String, reason: String },

    #[error("BMC {bmc}: cannot connect ({what}): {detail}")]
    Connect { bmc: String, what: String, detail: String },

    #[error(
        "BMC {bmc}: its TLS certificate is not trusted ({detail}); give the CA bundle that signs it, or set disableCertificateVerification if it cannot be replaced"
    )]
    Certificate { bmc: String, detail: String },

    #[error("BMC {bmc}: no answer to {what} within {}s", after.as_secs_f32())]
    Timeout { bmc: String, what: String, after: Duration },

    #[error(
        "BMC {bmc}: authentication failed ({what}: HTTP {status}); check the username and password in the credentials Secret"
    )]
    Auth { bmc: String, what: String, status: u16 },

    #[error(
        "BMC {bmc}: authentication failed ({what}: {detail}); check the username and password in the credentials Secret"
    )]
    IpmiAuth { bmc: String, what: String, detail: String },

    #[error("BMC {bmc}: {what} failed with HTTP {status}{}", message_suffix(message))]
    Http { bmc: String, what: String, status: u16, message: String },

    #[error("BMC {bmc}: {what} failed with IPMI completion code 0x{code:02x} ({meaning})")]
    IpmiCommand { bmc: String, what: String, code: u8, meaning: String },

    #[error("BMC {bmc}: {what} still answered 503 Service Unavailable after {attempts} attempts")]
    Busy { bmc: String, what: String, attempts: u32 },

    #[error("BMC {bmc}: unexpected answer to {what}: {detail}")]
    InvalidResponse { bmc: String, what: String, detail: String },

    #[error("BMC {bmc}: no system {wanted}; it has: {}", choices_list(choices))]
    SystemNotFound { bmc: String, wanted: String, choices: Vec<String> },

    #[error(
        "BMC {bmc}: it manages {} systems, name one in the address (redfish://host/redfish/v1/Systems/ID): {}",
        choices.len(),
        choices_list(choices)
    )]
    AmbiguousSystem { bmc: String, choices: Vec<String> },

    #[error("BMC {bmc}: {what} is not supported")]
    Unsupported { bmc: String, what: String },
}

fn message_suffix(message: &str) -> String {
    if message.is_empty() { String::new() } else { format!(": {message}") }
}

fn choices_list(choices: &[String]) -> String {
    if choices.is_empty() { "none".to_string() } else { choices.join(", ") }
}

impl BmcError {
    /// A stable CamelCase reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            BmcError::InvalidAddress { .. } => "InvalidAddress",
            BmcError::Config { .. } => "InvalidConfiguration",
            BmcError::Connect { .. } => "ConnectionFailed",
            BmcError::Certificate { .. } => "CertificateNotTrusted",
            BmcError::Timeout { .. } => "Timeout",
            BmcError::Auth { .. } | BmcError::IpmiAuth { .. } => "AuthenticationFailed",
            BmcError::Http { .. } | BmcError::IpmiCommand { .. } => "RequestFailed",
            BmcError::Busy { .. } => "BMCBusy",
            BmcError::InvalidResponse { .. } => "InvalidResponse",
            BmcError::SystemNotFound { .. } => "SystemNotFound",
            BmcError::AmbiguousSystem { .. } => "AmbiguousSystem",
            BmcError::Unsupported { .. } => "Unsupported",
        }
    }

    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            BmcError::InvalidAddress { .. } => "invalid_address",
            BmcError::Config { .. } => "config",
            BmcError::Connect { .. } => "connect",
            BmcError::Certificate { .. } => "certificate",
            BmcError::Timeout { .. } => "timeout",
            BmcError::Auth { .. } | BmcError::IpmiAuth { .. } => "auth",
            BmcError::Http { .. } => "http",
            BmcError::IpmiCommand { .. } => "ipmi",
            BmcError::Busy { .. } => "busy",
            BmcError::InvalidResponse { .. } => "invalid_response",
            BmcError::SystemNotFound { .. } => "system_not_found",
            BmcError::AmbiguousSystem { .. } => "ambiguous_system",
            BmcError::Unsupported { .. } => "unsupported",
        }
    }

    /// The credentials were refused (`CredentialsValid=False`): retrying with
    /// the same ones only risks a lockout.
    pub fn is_auth(&self) -> bool {
        matches!(self, BmcError::Auth { .. } | BmcError::IpmiAuth { .. })
    }

    /// The BMC could not be reached or did not answer in time
    /// (`BMCReachable=False`): worth retrying with backoff.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            BmcError::Connect { .. } | BmcError::Timeout { .. } | BmcError::Busy { .. } | BmcError::Certificate { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_redfish_addresses() {
        let a = BmcAddress::parse("redfish://bmc-1.lab:8443/redfish/v1/Systems/System.Embedded.1").unwrap();
        assert_eq!(a.scheme, Scheme::RedfishHttps);
        assert_eq!(a.host, "bmc-1.lab");
        assert_eq!(a.port, Some(8443));
        assert_eq!(a.system_id.as_deref(), Some("System.Embedded.1"));
        assert_eq!(a.system_path().as_deref(), Some("/redfish/v1/Systems/System.Embedded.1"));
        assert_eq!(a.redfish_base_url().unwrap().as_str(), "https://bmc-1.lab:8443/");
        assert_eq!(a.to_string(), "redfish://bmc-1.lab:8443/redfish/v1/Systems/System.Embedded.1");

        let a = BmcAddress::parse("redfish+http://127.0.0.1:8000").unwrap();
        assert_eq!(a.scheme, Scheme::RedfishHttp);
        assert_eq!(a.system_id, None);
        assert_eq!(a.redfish_base_url().unwrap().as_str(), "http://127.0.0.1:8000/");

        let a = BmcAddress::parse("redfish+https://[fd00::1]/").unwrap();
        assert_eq!(a.scheme, Scheme::RedfishHttps);
        assert_eq!(a.host, "[fd00::1]");
        assert_eq!(a.port, None);
        assert_eq!(a.redfish_base_url().unwrap().as_str(), "https://[fd00::1]/");
        assert_eq!(a.to_string(), "redfish://[fd00::1]");

        let a = BmcAddress::parse("ipmi://10.0.0.5:623").unwrap();
        assert_eq!(a.scheme, Scheme::Ipmi);
        assert_eq!(a.port, Some(623));
        assert!(a.redfish_base_url().is_none());
        assert_eq!(a.to_string(), "ipmi://10.0.0.5:623");
    }

    #[test]
    fn refuses_bad_addresses() {
        for bad in [
            "http://bmc",
            "redfish://",
            "redfish://bmc/redfish/v1",
            "redfish://bmc/redfish/v1/Systems/",
            "redfish://bmc/redfish/v1/Systems/a/b",
            "redfish://bmc?x=1",
            "ipmi://bmc/redfish/v1/Systems/1",
            "not a url",
        ] {
            let err = BmcAddress::parse(bad).unwrap_err();
            assert_eq!(err.reason(), "InvalidAddress", "{bad}: {err}");
        }
    }

    #[test]
    fn an_address_with_credentials_is_refused_without_repeating_them() {
        let err = BmcAddress::parse("redfish://admin:hunter2@bmc/redfish/v1/Systems/1").unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(text.contains("credentials Secret"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("admin"), "{text}");
        assert!(text.contains("@bmc/redfish/v1/Systems/1"), "{text}");
    }

    #[test]
    fn secrets_do_not_show() {
        let credentials = Credentials::new("root", "calvin-secret");
        let text = format!("{credentials:?}");
        assert!(text.contains("root"));
        assert!(!text.contains("calvin-secret"), "{text}");
    }

    #[tokio::test]
    async fn ipmi_addresses_reach_the_ipmi_driver() {
        // Nothing listens on this port: the IPMI driver's own answer to that
        // (ICMP port unreachable), not "unsupported", and fast.
        let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let address = BmcAddress::parse(&format!("ipmi://127.0.0.1:{port}")).unwrap();
        let options = BmcOptions { timeout: Duration::from_secs(2), ..Default::default() };
        let err = connect(&address, Credentials::new("u", "p4ss-not-shown"), options).await.unwrap_err();
        assert_eq!(err.reason(), "ConnectionFailed", "{err}");
        let text = format!("{err} {err:?}");
        assert!(text.contains("UDP port") && text.contains(&address.to_string()), "{text}");
        assert!(!text.contains("p4ss-not-shown"), "{text}");
    }

    #[test]
    fn errors_name_the_bmc_and_a_reason() {
        let err = BmcError::Auth {
            bmc: "redfish://bmc-7".into(),
            what: "POST /redfish/v1/SessionService/Sessions".into(),
            status: 401,
        };
        assert!(err.to_string().contains("redfish://bmc-7"));
        assert!(err.is_auth());
        assert!(!err.is_unreachable());
        let err = BmcError::AmbiguousSystem {
            bmc: "redfish://bmc-7".into(),
            choices: vec!["/redfish/v1/Systems/a".into(), "/redfish/v1/Systems/b".into()],
        };
        let text = err.to_string();
        assert!(text.contains("2 systems") && text.contains("/redfish/v1/Systems/b"), "{text}");
    }
}
