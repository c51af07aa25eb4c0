//! Shopify's toxiproxy, the fault-injecting TCP proxy the BMC fault tests put
//! between girder and a BMC. Its binary comes from GIRDER_TOXIPROXY (make test
//! sets it), else from `e2e/tools.sh toxiproxy` (built once from its Go
//! module, then cached). One server per test, on loopback; proxies and
//! toxics are made through its HTTP API.

use super::{free_port, repo_root};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Toxiproxy {
    child: Child,
    api: String,
    http: reqwest::Client,
}

fn binary() -> String {
    if let Ok(path) = std::env::var("GIRDER_TOXIPROXY") {
        return path;
    }
    let out = Command::new(repo_root().join("e2e/tools.sh"))
        .arg("toxiproxy")
        .stderr(Stdio::inherit())
        .output()
        .expect("run e2e/tools.sh toxiproxy");
    assert!(out.status.success(), "e2e/tools.sh toxiproxy failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Toxiproxy {
    pub async fn start() -> Self {
        let port = free_port();
        let child = Command::new(binary())
            .args(["-host", "127.0.0.1", "-port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start toxiproxy");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .tls_backend_preconfigured(super::sushy::tls_trusting(&[]))
            .build()
            .unwrap();
        let proxy = Toxiproxy { child, api: format!("http://127.0.0.1:{port}"), http };
        let deadline = Instant::now() + super::PATIENCE;
        while proxy.http.get(format!("{}/version", proxy.api)).send().await.is_err() {
            assert!(Instant::now() < deadline, "toxiproxy does not answer on {}", proxy.api);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        proxy
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method.clone(), format!("{}{path}", self.api));
        if let Some(body) = body {
            request = request.header("Content-Type", "application/json").body(body.to_string());
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("toxiproxy {method} {path}: {e}"));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "toxiproxy {method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// A proxy named `name` to `upstream` (host:port); returns the address
    /// it listens on.
    pub async fn proxy(&self, name: &str, upstream: &str) -> String {
        let body = json!({ "name": name, "listen": "127.0.0.1:0", "upstream": upstream, "enabled": true });
        let created = self.call(reqwest::Method::POST, "/proxies", Some(body)).await;
        created["listen"].as_str().expect("the proxy's listen address").to_string()
    }

    /// Adds the toxic `toxic` of `kind` to the proxy `proxy`, on its
    /// `stream`: `upstream` (the requests) or `downstream` (the answers).
    pub async fn add(&self, proxy: &str, toxic: &str, kind: &str, stream: &str, attributes: Value) {
        let body = json!({ "name": toxic, "type": kind, "stream": stream, "toxicity": 1.0, "attributes": attributes });
        self.call(reqwest::Method::POST, &format!("/proxies/{proxy}/toxics"), Some(body)).await;
    }

    pub async fn remove(&self, proxy: &str, toxic: &str) {
        self.call(reqwest::Method::DELETE, &format!("/proxies/{proxy}/toxics/{toxic}"), None).await;
    }
}

impl Drop for Toxiproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
