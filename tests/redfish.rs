//! The Redfish driver against its real peer: sushy-tools' `sushy-emulator
//! --fake`, started through `e2e/sushy.sh` (which installs it into a cached
//! venv on first use), one emulator per test, on loopback only.
//!
//! What sushy-tools 2.2.0 offers, and so what is proven here: discovery,
//! power (with delayed transitions of 1-11 s), boot override, a small
//! inventory (vendor, UUID, NICs, BMC firmware), basic authentication and
//! HTTPS. It has **no SessionService**, no ETags and never answers 503: those
//! paths are proven against a local fake in `src/bmc/redfish/tests.rs`.

use girder::api::node::BootMode;
use girder::bmc::{
    AuthMode, Bmc, BmcAddress, BmcError, BmcOptions, BootDevice, BootOverride, Credentials, PowerAction, PowerState,
    RedfishClient,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// sushy's fake driver applies a power change 1 to 11 s after it is asked.
const POWER_PATIENCE: Duration = Duration::from_secs(45);
/// Starting an emulator (and, the first time, installing it).
const START_PATIENCE: Duration = Duration::from_secs(120);

const USER: &str = "admin";
const PASSWORD: &str = "Sushy-Pa55-Do-Not-Log";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A directory of its own, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{prefix}-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One fake system of the emulator.
struct FakeSystem {
    uuid: &'static str,
    name: &'static str,
    power: &'static str,
    macs: &'static [&'static str],
}

#[derive(Default)]
struct SushyConfig {
    systems: Vec<FakeSystem>,
    basic_auth: bool,
    tls: bool,
}

/// A running `sushy-emulator --fake`, stopped when dropped.
struct Sushy {
    pid: String,
    port: u16,
    tls: bool,
    dir: TempDir,
    /// A client for raw reads that check what the driver did.
    raw: reqwest::Client,
}

impl Sushy {
    async fn start(config: SushyConfig) -> Self {
        let dir = TempDir::new("girder-sushy");
        let mut conf = format!("SUSHY_EMULATOR_STATE_DIR = {:?}\n", dir.0.join("state").display().to_string());
        if !config.systems.is_empty() {
            conf.push_str("SUSHY_EMULATOR_FAKE_SYSTEMS = [\n");
            for s in &config.systems {
                let nics: Vec<String> = s.macs.iter().map(|m| format!("{{'mac': '{m}'}}")).collect();
                conf.push_str(&format!(
                    "  {{'uuid': '{}', 'name': '{}', 'power_state': '{}', 'nics': [{}]}},\n",
                    s.uuid,
                    s.name,
                    s.power,
                    nics.join(", ")
                ));
            }
            conf.push_str("]\n");
        }
        if config.basic_auth {
            let htpasswd = dir.0.join("htpasswd");
            run_with_stdin(
                Command::new(repo_root().join("e2e/sushy.sh")).arg("htpasswd").arg(&htpasswd).arg(USER),
                &format!("{PASSWORD}\n"),
            );
            conf.push_str(&format!("SUSHY_EMULATOR_AUTH_FILE = {:?}\n", htpasswd.display().to_string()));
        }
        // reqwest is built without a default crypto provider (girder uses
        // ring, as kube does): every client brings its TLS configuration.
        let mut trusted = Vec::new();
        if config.tls {
            let (cert, key) = self_signed_cert(&dir.0, "server");
            conf.push_str(&format!(
                "SUSHY_EMULATOR_SSL_CERT = {:?}\nSUSHY_EMULATOR_SSL_KEY = {:?}\n",
                cert.display().to_string(),
                key.display().to_string()
            ));
            trusted = std::fs::read(&cert).unwrap();
        }
        let raw = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .tls_backend_preconfigured(tls_trusting(&trusted))
            .build()
            .unwrap();
        let conf_path = dir.0.join("emulator.conf");
        std::fs::write(&conf_path, conf).unwrap();

        let port = free_port();
        let log = dir.0.join("emulator.log");
        let out = Command::new(repo_root().join("e2e/sushy.sh"))
            .arg("start")
            .arg(port.to_string())
            .arg(&conf_path)
            .arg(&log)
            .stderr(Stdio::inherit())
            .output()
            .expect("run e2e/sushy.sh start");
        assert!(out.status.success(), "e2e/sushy.sh start failed");
        let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(pid.parse::<u32>().is_ok(), "e2e/sushy.sh printed no PID: {pid:?}");
        let sushy = Sushy { pid, port, tls: config.tls, dir, raw };
        sushy.wait_ready().await;
        sushy
    }

    fn base(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The driver's address for this emulator, optionally naming a system.
    fn address(&self, system: Option<&str>) -> BmcAddress {
        let scheme = if self.tls { "redfish" } else { "redfish+http" };
        let path = system.map(|s| format!("/redfish/v1/Systems/{s}")).unwrap_or_default();
        BmcAddress::parse(&format!("{scheme}://127.0.0.1:{}{path}", self.port)).unwrap()
    }

    fn alive(&self) -> bool {
        Command::new("kill").args(["-0", &self.pid]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("emulator.log")).unwrap_or_default()
    }

    /// Polls the service root until it answers.
    async fn wait_ready(&self) {
        let deadline = Instant::now() + START_PATIENCE;
        loop {
            if let Ok(r) = self.raw.get(format!("{}/redfish/v1/", self.base())).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(self.alive(), "sushy-emulator exited:\n{}", self.log());
            assert!(
                Instant::now() < deadline,
                "sushy-emulator not answering after {START_PATIENCE:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A raw GET, as JSON, with the test credentials.
    async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .raw
            .get(format!("{}{path}", self.base()))
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .await
            .expect("raw GET");
        let status = r.status().as_u16();
        let body = r.bytes().await.unwrap_or_default();
        (status, serde_json::from_slice(&body).unwrap_or_default())
    }
}

impl Drop for Sushy {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("e2e/sushy.sh")).arg("stop").arg(&self.pid).status();
    }
}

fn run_with_stdin(cmd: &mut Command, input: &str) {
    use std::io::Write;
    let mut child = cmd.stdin(Stdio::piped()).spawn().expect("spawn command");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "{cmd:?} failed");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A self-signed certificate for 127.0.0.1, made with openssl.
fn self_signed_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .args(["-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("run openssl (apt-get install openssl)");
    assert!(status.success(), "openssl could not make a certificate");
    (cert, key)
}

/// A TLS configuration that trusts exactly `pem`, for the raw client.
fn tls_trusting(pem: &[u8]) -> rustls::ClientConfig {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

async fn connect(address: BmcAddress, options: BmcOptions) -> Result<RedfishClient, BmcError> {
    RedfishClient::connect(address, Credentials::new(USER, PASSWORD), options).await
}

const UUID_A: &str = "5a7e0000-0000-4000-8000-00000000000a";
const UUID_B: &str = "5a7e0000-0000-4000-8000-00000000000b";

#[tokio::test]
async fn discovery_picks_the_named_or_the_only_system_and_lists_choices_otherwise() {
    let two = Sushy::start(SushyConfig {
        systems: vec![
            FakeSystem { uuid: UUID_A, name: "node-a", power: "Off", macs: &["52:54:00:00:0a:01"] },
            FakeSystem { uuid: UUID_B, name: "node-b", power: "On", macs: &["52:54:00:00:0b:01"] },
        ],
        ..Default::default()
    })
    .await;
    let one = Sushy::start(SushyConfig::default()).await;

    // Two systems and none named: refused, with both listed.
    let err = connect(two.address(None), BmcOptions::default()).await.unwrap_err();
    assert_eq!(err.reason(), "AmbiguousSystem", "{err}");
    let text = err.to_string();
    assert!(text.contains(&format!("/redfish/v1/Systems/{UUID_A}")), "{text}");
    assert!(text.contains(&format!("/redfish/v1/Systems/{UUID_B}")), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{}", two.port)), "names the BMC: {text}");

    // Named by ID.
    let client = connect(two.address(Some(UUID_B)), BmcOptions::default()).await.unwrap();
    assert_eq!(client.system_path(), format!("/redfish/v1/Systems/{UUID_B}"));
    assert_eq!(client.identity().await.unwrap().uuid.as_deref(), Some(UUID_B));
    assert_eq!(client.power_state().await.unwrap(), PowerState::On);
    client.close().await.unwrap();

    // Named by its alias: sushy redirects to the canonical path, which is kept.
    let client = connect(two.address(Some("node-a")), BmcOptions::default()).await.unwrap();
    assert_eq!(client.system_path(), format!("/redfish/v1/Systems/{UUID_A}"));
    assert_eq!(client.power_state().await.unwrap(), PowerState::Off);
    client.close().await.unwrap();

    // Named but absent: refused, with the choices.
    let err = connect(two.address(Some("node-z")), BmcOptions::default()).await.unwrap_err();
    assert_eq!(err.reason(), "SystemNotFound", "{err}");
    assert!(err.to_string().contains(UUID_A) && err.to_string().contains(UUID_B), "{err}");

    // One system and none named: that one (sushy's default fake system).
    let client = connect(one.address(None), BmcOptions::default()).await.unwrap();
    let (_, collection) = one.get("/redfish/v1/Systems").await;
    assert_eq!(collection["Members"][0]["@odata.id"].as_str(), Some(client.system_path()));
    client.close().await.unwrap();
}

/// Polls the driver until the system is in `want`, and checks the emulator
/// says the same on a raw read.
async fn wait_power(sushy: &Sushy, client: &RedfishClient, want: PowerState) {
    let deadline = Instant::now() + POWER_PATIENCE;
    loop {
        let state = client.power_state().await.unwrap();
        if state == want {
            let (_, raw) = sushy.get(client.system_path()).await;
            assert_eq!(raw["PowerState"].as_str(), Some(want.as_str()), "raw read of {}", client.system_path());
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} still {state} after {POWER_PATIENCE:?}, want {want}",
            client.system_path()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn power_actions_reach_the_emulator() {
    // One system per case, all at once: each transition takes sushy 1-11 s.
    let cases: [(&str, &str, PowerAction, PowerState); 5] = [
        ("5a7e0000-0000-4000-8000-000000000101", "Off", PowerAction::On, PowerState::On),
        ("5a7e0000-0000-4000-8000-000000000102", "On", PowerAction::ForceOff, PowerState::Off),
        ("5a7e0000-0000-4000-8000-000000000103", "On", PowerAction::GracefulShutdown, PowerState::Off),
        // Nothing else turns these on: the restart reached the emulator.
        ("5a7e0000-0000-4000-8000-000000000104", "Off", PowerAction::ForceRestart, PowerState::On),
        // sushy offers no PowerCycle: the driver turns an off system on.
        ("5a7e0000-0000-4000-8000-000000000105", "Off", PowerAction::PowerCycle, PowerState::On),
    ];
    let sushy = Sushy::start(SushyConfig {
        systems: cases.iter().map(|&(uuid, power, _, _)| FakeSystem { uuid, name: uuid, power, macs: &[] }).collect(),
        ..Default::default()
    })
    .await;
    let runs = cases.iter().map(|(uuid, initial, action, want)| {
        let sushy = &sushy;
        async move {
            let client = connect(sushy.address(Some(uuid)), BmcOptions::default()).await.unwrap();
            let before = if *initial == "On" { PowerState::On } else { PowerState::Off };
            assert_eq!(client.power_state().await.unwrap(), before);
            client.power(*action).await.unwrap();
            wait_power(sushy, &client, *want).await;
            // Asking again for the state it is in is fine.
            if *action == PowerAction::On {
                client.power(PowerAction::On).await.unwrap();
            }
            client.close().await.unwrap();
        }
    });
    futures::future::join_all(runs).await;
}

#[tokio::test]
async fn boot_override_and_inventory() {
    let sushy = Sushy::start(SushyConfig {
        systems: vec![FakeSystem {
            uuid: UUID_A,
            name: "inventory",
            power: "Off",
            macs: &["52:54:00:AA:00:01", "52:54:00:aa:00:02"],
        }],
        ..Default::default()
    })
    .await;
    let client = connect(sushy.address(None), BmcOptions::default()).await.unwrap();

    for (device, mode, target, mode_name) in [
        (BootDevice::Pxe, BootMode::UEFI, "Pxe", "UEFI"),
        (BootDevice::Cd, BootMode::Legacy, "Cd", "Legacy"),
        (BootDevice::Disk, BootMode::UEFI, "Hdd", "UEFI"),
        (BootDevice::Pxe, BootMode::Legacy, "Pxe", "Legacy"),
    ] {
        client.set_boot_override(BootOverride { device, mode }).await.unwrap();
        let (_, raw) = sushy.get(client.system_path()).await;
        assert_eq!(raw["Boot"]["BootSourceOverrideTarget"].as_str(), Some(target), "{raw}");
        assert_eq!(raw["Boot"]["BootSourceOverrideMode"].as_str(), Some(mode_name), "{raw}");
    }

    let identity = client.identity().await.unwrap();
    assert_eq!(identity.vendor.as_deref(), Some("Sushy Emulator"));
    assert_eq!(identity.uuid.as_deref(), Some(UUID_A));

    // sushy's fake driver has no processors (501), storage (500) or memory
    // (404): the inventory does without them.
    let hw = client.inventory().await.unwrap();
    assert_eq!(hw.vendor.as_deref(), Some("Sushy Emulator"));
    assert_eq!(hw.uuid.as_deref(), Some(UUID_A));
    let macs: Vec<&str> = hw.nics.iter().map(|n| n.mac.as_str()).collect();
    assert_eq!(macs, ["52:54:00:aa:00:01", "52:54:00:aa:00:02"]);
    assert_eq!(hw.firmware.and_then(|f| f.bmc).as_deref(), Some("1.00"));
    assert!(hw.cpu.is_none() && hw.storage.is_empty());
    client.close().await.unwrap();
}

#[tokio::test]
async fn sushy_offers_no_sessions_so_basic_auth_is_used_and_nothing_is_left_open() {
    let sushy = Sushy::start(SushyConfig { basic_auth: true, ..Default::default() }).await;
    let (_, root) = sushy.get("/redfish/v1/").await;
    assert!(root.get("SessionService").is_none(), "sushy-tools grew sessions: test them here: {root}");
    assert_eq!(sushy.get("/redfish/v1/SessionService/Sessions").await.0, 404);

    let client = connect(sushy.address(None), BmcOptions::default()).await.unwrap();
    assert_eq!(client.auth_mode(), AuthMode::Basic);
    assert_eq!(client.power_state().await.unwrap(), PowerState::Off);
    client.close().await.unwrap();
    assert_eq!(sushy.get("/redfish/v1/SessionService/Sessions").await.0, 404, "no session exists after close()");

    // The emulator really checks: without credentials it refuses.
    let status = sushy.raw.get(format!("{}/redfish/v1/Systems", sushy.base())).send().await.unwrap().status();
    assert_eq!(status.as_u16(), 401);
}

#[tokio::test]
async fn a_wrong_password_is_an_auth_error_that_names_the_bmc_but_not_the_password() {
    let sushy = Sushy::start(SushyConfig { basic_auth: true, ..Default::default() }).await;
    let wrong = "Wr0ng-Pa55word-Not-In-Errors";
    let err = RedfishClient::connect(sushy.address(None), Credentials::new(USER, wrong), BmcOptions::default())
        .await
        .unwrap_err();
    assert!(err.is_auth(), "{err}");
    let text = format!("{err} {err:?}");
    assert!(text.contains(&format!("redfish+http://127.0.0.1:{}", sushy.port)), "{text}");
    assert!(!text.contains(wrong) && !text.contains(PASSWORD), "{text}");
}

#[tokio::test]
async fn an_unreachable_bmc_fails_fast_with_a_connection_or_timeout_error() {
    let options = BmcOptions { timeout: Duration::from_secs(2), ..Default::default() };

    // Nothing listens.
    let port = free_port();
    let address = BmcAddress::parse(&format!("redfish+http://127.0.0.1:{port}")).unwrap();
    let started = Instant::now();
    let err = connect(address, options.clone()).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(err.reason(), "ConnectionFailed", "{err}");
    assert!(err.is_unreachable());
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");

    // Something listens and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let address = BmcAddress::parse(&format!("redfish+http://127.0.0.1:{port}")).unwrap();
    let started = Instant::now();
    let err = connect(address, options).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.reason(), "Timeout", "{err}");
    assert!(err.is_unreachable());
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(8), "took {took:?}");
    drop(silent);
}

#[tokio::test]
async fn https_is_verified_unless_told_otherwise() {
    let sushy = Sushy::start(SushyConfig { tls: true, ..Default::default() }).await;

    // Verified by default: a self-signed certificate is refused.
    let err = connect(sushy.address(None), BmcOptions::default()).await.unwrap_err();
    assert_eq!(err.reason(), "CertificateNotTrusted", "{err}");
    assert!(err.to_string().contains("disableCertificateVerification"), "{err}");

    // A bundle with another CA does not help.
    let other = TempDir::new("girder-other-ca");
    let (other_cert, _) = self_signed_cert(&other.0, "other");
    let options = BmcOptions { ca_bundle: Some(std::fs::read(other_cert).unwrap()), ..Default::default() };
    let err = connect(sushy.address(None), options).await.unwrap_err();
    assert_eq!(err.reason(), "CertificateNotTrusted", "{err}");

    // Its own certificate as the CA bundle: trusted.
    let options =
        BmcOptions { ca_bundle: Some(std::fs::read(sushy.dir.0.join("server.crt")).unwrap()), ..Default::default() };
    let client = connect(sushy.address(None), options).await.unwrap();
    assert_eq!(client.power_state().await.unwrap(), PowerState::Off);
    client.close().await.unwrap();

    // The explicit opt-out.
    let options = BmcOptions { disable_certificate_verification: true, ..Default::default() };
    let client = connect(sushy.address(None), options).await.unwrap();
    assert_eq!(client.power_state().await.unwrap(), PowerState::Off);
    client.close().await.unwrap();
}
