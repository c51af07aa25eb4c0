//! `girder pxe` as a child process of a test.

use super::pxe_lab::{IPXE_DIR, Lab, pxe_assets};
use super::{free_port, wait_for};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running `girder pxe`, killed when dropped.
pub struct Pxe {
    child: Child,
    args: Vec<String>,
    pub http: String,
    log: PathBuf,
    restarts: u32,
}

impl Pxe {
    /// Serves `namespace`; DHCP and TFTP on the lab's host interface when a
    /// lab is given (HTTP on its address), else HTTP only on loopback.
    pub fn start(namespace: &str, lab: Option<&Lab>, state: &Path, extra: &[&str]) -> Pxe {
        Self::start_in(namespace, lab, state, &pxe_assets(), extra)
    }

    /// [`Pxe::start`] serving `assets` under /assets/.
    pub fn start_in(namespace: &str, lab: Option<&Lab>, state: &Path, assets: &Path, extra: &[&str]) -> Pxe {
        let host = lab.map_or("127.0.0.1".to_string(), |lab| lab.host_ip());
        let http = format!("{host}:{}", free_port());
        let mut args: Vec<String> = vec![
            "pxe".into(),
            "--namespace".into(),
            namespace.into(),
            "--http-addr".into(),
            http.clone(),
            "--ipxe-dir".into(),
            IPXE_DIR.into(),
            "--assets-dir".into(),
            assets.display().to_string(),
            "--state-dir".into(),
            state.display().to_string(),
            "--log-format".into(),
            "json".into(),
        ];
        match lab {
            Some(lab) => args.extend(["--interface".into(), lab.host_if.clone()]),
            None => args.extend(["--tftp-port".into(), "0".into()]),
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = state.join("pxe.log");
        let child = spawn(&args, &log);
        Pxe { child, args, http, log, restarts: 0 }
    }

    pub async fn wait_ready(&mut self) {
        let http = self.http.clone();
        let log = self.log.clone();
        let child = &mut self.child;
        wait_for("girder pxe to be ready", || {
            let exited = child.try_wait().ok().flatten();
            let ready = super::http_get(&http, "/readyz").map(|(code, _)| code);
            let log = log.clone();
            async move {
                if let Some(status) = exited {
                    panic!("girder pxe exited ({status}): {}", std::fs::read_to_string(&log).unwrap_or_default());
                }
                (ready == Some(200)).then_some(())
            }
        })
        .await;
    }

    /// SIGTERM, wait, start again with the same arguments (and state dir).
    pub async fn restart(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let child = &mut self.child;
        wait_for("girder pxe to stop on SIGTERM", || {
            let exited = child.try_wait().ok().flatten();
            async move { exited }
        })
        .await;
        self.restarts += 1;
        let previous = std::fs::read_to_string(&self.log).unwrap_or_default();
        std::fs::write(self.log.with_extension(format!("log.{}", self.restarts)), previous).expect("keep the old log");
        self.child = spawn(&self.args, &self.log);
        self.wait_ready().await;
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// JSON log lines whose message is `message` and whose `mac` is `mac`.
    pub fn log_lines(&self, message: &str, mac: &str) -> Vec<Value> {
        self.logs()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|v| v["message"] == message && v["mac"] == mac)
            .collect()
    }

    pub fn metric(&self, prefix: &str) -> f64 {
        let (code, body) = super::http_get(&self.http, "/metrics").unwrap_or((0, String::new()));
        assert_eq!(code, 200, "GET /metrics");
        body.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    }
}

fn spawn(args: &[String], log: &Path) -> Child {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("pxe log");
    Command::new(env!("CARGO_BIN_EXE_girder"))
        .args(args)
        .env("RUST_LOG", "info,girder::pxe=debug")
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("start girder pxe")
}

impl Drop for Pxe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- girder pxe log ({}) ---\n{}", self.log.display(), self.logs());
        }
    }
}
