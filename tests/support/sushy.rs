//! sushy-tools' Redfish emulator (`sushy-emulator --fake`) as a test peer,
//! started through `e2e/sushy.sh`, one per test, on loopback only.

pub use super::TempDir;
use super::{free_port, repo_root};
use girder::bmc::BmcAddress;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// sushy's fake driver applies a power change 1 to 11 s after it is asked.
pub const POWER_PATIENCE: Duration = Duration::from_secs(45);
/// Starting an emulator (and, the first time, installing it).
pub const START_PATIENCE: Duration = Duration::from_secs(120);

pub const USER: &str = "admin";
pub const PASSWORD: &str = "Sushy-Pa55-Do-Not-Log";

/// One fake system of the emulator.
pub struct FakeSystem {
    pub uuid: String,
    pub name: String,
    pub power: String,
    pub macs: Vec<String>,
    /// The fake driver PUTs the system to `SushyConfig::notify_url` on every change.
    pub notify: bool,
}

impl FakeSystem {
    pub fn new(uuid: &str, name: &str, power: &str, macs: &[&str]) -> Self {
        Self {
            uuid: uuid.into(),
            name: name.into(),
            power: power.into(),
            macs: macs.iter().map(|m| m.to_string()).collect(),
            notify: false,
        }
    }
}

#[derive(Default)]
pub struct SushyConfig {
    pub systems: Vec<FakeSystem>,
    pub basic_auth: bool,
    pub tls: bool,
    /// Where the fake driver reports each change of a notifying system
    /// (sushy-tools' `EXTERNAL_NOTIFICATION_URL`).
    pub notify_url: Option<String>,
}

/// A running `sushy-emulator --fake`, stopped when dropped.
pub struct Sushy {
    pub pid: String,
    pub port: u16,
    pub tls: bool,
    pub dir: TempDir,
    /// A client for raw reads that check what the driver did.
    pub raw: reqwest::Client,
}

impl Sushy {
    pub async fn start(config: SushyConfig) -> Self {
        let dir = TempDir::new("girder-sushy");
        let mut conf = format!("SUSHY_EMULATOR_STATE_DIR = {:?}\n", dir.0.join("state").display().to_string());
        if !config.systems.is_empty() {
            conf.push_str("SUSHY_EMULATOR_FAKE_SYSTEMS = [\n");
            for s in &config.systems {
                let nics: Vec<String> = s.macs.iter().map(|m| format!("{{'mac': '{m}'}}")).collect();
                conf.push_str(&format!(
                    "  {{'uuid': '{}', 'name': '{}', 'power_state': '{}', 'nics': [{}], 'external_notifier': {}}},\n",
                    s.uuid,
                    s.name,
                    s.power,
                    nics.join(", "),
                    if s.notify { "True" } else { "False" }
                ));
            }
            conf.push_str("]\n");
        }
        if let Some(url) = &config.notify_url {
            conf.push_str(&format!("EXTERNAL_NOTIFICATION_URL = {url:?}\n"));
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
        let pid = spawn(port, &dir.0);
        let sushy = Sushy { pid, port, tls: config.tls, dir, raw };
        sushy.wait_ready().await;
        sushy
    }

    pub fn base(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The driver's address for this emulator, optionally naming a system.
    pub fn address(&self, system: Option<&str>) -> BmcAddress {
        let scheme = if self.tls { "redfish" } else { "redfish+http" };
        let path = system.map(|s| format!("/redfish/v1/Systems/{s}")).unwrap_or_default();
        BmcAddress::parse(&format!("{scheme}://127.0.0.1:{}{path}", self.port)).unwrap()
    }

    pub fn alive(&self) -> bool {
        Command::new("kill").args(["-0", &self.pid]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("emulator.log")).unwrap_or_default()
    }

    /// Polls the service root until it answers.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + START_PATIENCE;
        loop {
            if let Ok(r) = self.raw.get(format!("{}/redfish/v1/", self.base())).send().await
                && r.status().is_success()
            {
                // The fake driver seeds its state store from the config the
                // first time it is used, and several first requests at once
                // can overwrite each other's changes with the seed: touch it
                // once before anyone else does.
                let (status, _) = self.get("/redfish/v1/Systems").await;
                assert_eq!(status, 200, "listing the emulator's systems:\n{}", self.log());
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
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
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

/// Starts the emulator of `dir` (its config and log there) on `port`; returns its PID.
fn spawn(port: u16, dir: &Path) -> String {
    let out = Command::new(repo_root().join("e2e/sushy.sh"))
        .arg("start")
        .arg(port.to_string())
        .arg(dir.join("emulator.conf"))
        .arg(dir.join("emulator.log"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run e2e/sushy.sh start");
    assert!(out.status.success(), "e2e/sushy.sh start failed");
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(pid.parse::<u32>().is_ok(), "e2e/sushy.sh printed no PID: {pid:?}");
    pid
}

impl Sushy {
    /// Kills the emulator (SIGKILL: a BMC that vanishes), keeping its state.
    pub fn kill(&self) {
        let _ = Command::new("kill").args(["-KILL", &self.pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        // Polls the condition "process gone", bounded.
        while self.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!self.alive(), "sushy-emulator {} survived SIGKILL", self.pid);
    }

    /// Starts it again on the same port with the same state.
    pub async fn restart(&mut self) {
        self.pid = spawn(self.port, &self.dir.0);
        self.wait_ready().await;
    }
}

impl Drop for Sushy {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("e2e/sushy.sh")).arg("stop").arg(&self.pid).status();
    }
}

pub fn run_with_stdin(cmd: &mut Command, input: &str) {
    use std::io::Write;
    let mut child = cmd.stdin(Stdio::piped()).spawn().expect("spawn command");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "{cmd:?} failed");
}

/// A self-signed certificate for 127.0.0.1, made with openssl.
pub fn self_signed_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
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
pub fn tls_trusting(pem: &[u8]) -> rustls::ClientConfig {
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
