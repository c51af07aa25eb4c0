//! A BIND 9 (e2e/bind.sh) started for one test on 127.0.0.1, and `dig`.

use super::{apply_yaml, free_port, repo_root, run_ok, wait_for};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A BIND started for one test, stopped when dropped.
pub struct Bind {
    dir: PathBuf,
    port: u16,
}

impl Bind {
    pub fn start(zones: &[&str]) -> Self {
        Self::start_with("hmac-sha256", zones)
    }

    pub fn start_with(algorithm: &str, zones: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("girder-bind-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).expect("bind dir");
        let port = free_port();
        let mut cmd = Command::new(repo_root().join("e2e/bind.sh"));
        cmd.arg("start").arg(&dir).arg(port.to_string()).args(zones).env("GIRDER_BIND_ALGORITHM", algorithm);
        run_ok(&mut cmd);
        Self { dir, port }
    }

    pub fn key(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).expect("key file").trim().to_string()
    }

    pub fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A resolver a `resolv.conf` can name (it names no port): port 53 of
    /// `address`, a loopback address of the test's own, passing each query
    /// to this BIND and its answer back. named itself listens only on the
    /// addresses of an interface.
    pub fn resolver(&self, address: &str) -> Resolver {
        let socket = std::net::UdpSocket::bind((address, 53)).unwrap_or_else(|e| panic!("port 53 of {address}: {e}"));
        socket.set_read_timeout(Some(Duration::from_millis(200))).expect("read timeout");
        let upstream = self.server();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut query = [0u8; 4096];
            let mut answer = [0u8; 65535];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((n, client)) = socket.recv_from(&mut query) else { continue };
                let Ok(up) = std::net::UdpSocket::bind("127.0.0.1:0") else { continue };
                let _ = up.set_read_timeout(Some(Duration::from_secs(2)));
                if up.send_to(&query[..n], &upstream).is_ok()
                    && let Ok(m) = up.recv(&mut answer)
                {
                    let _ = socket.send_to(&answer[..m], client);
                }
            }
        });
        Resolver { stop, thread: Some(thread) }
    }

    /// The answers of `dig` for `name` and `rtype` (`-x` for a reverse lookup).
    pub fn dig(&self, args: &[&str]) -> BTreeSet<String> {
        let out = Command::new("dig")
            .args(["+short", "+time=2", "+tries=1", "@127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run dig (e2e/bind.sh install)");
        String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect()
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("e2e/bind.sh")).arg("stop").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The Secret holding a TSIG key, as girder reads it.
pub fn tsig_secret(ns: &str, name: &str, key_name: &str, algorithm: &str, secret: &str) {
    apply_yaml(
        ns,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\nstringData:\n  keyName: {key_name}\n  algorithm: {algorithm}\n  secret: \"{secret}\"\n"
        ),
    );
}

/// Waits until `dig` answers `want`.
pub async fn dig_until(bind: &Bind, args: &[&str], want: BTreeSet<String>) {
    wait_for(&format!("dig {args:?} to answer {want:?}"), || {
        let got = bind.dig(args);
        let want = &want;
        async move { (&got == want).then_some(()) }
    })
    .await
}

/// A stub resolver in front of a [`Bind`] (UDP), stopped when dropped.
pub struct Resolver {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
