//! A BIND 9 (e2e/bind.sh) started for one test on 127.0.0.1, and `dig`.

use super::{apply_yaml, free_port, repo_root, run_ok, wait_for};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

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
