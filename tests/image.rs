//! girder's container image (`make image`, e2e/image.sh) against real peers:
//! pushed to the CNCF distribution registry with skopeo, pulled back by
//! digest, unpacked by umoci and run by runc as the chart's securityContext
//! runs it (its non-root user, no capabilities, no new privileges, a
//! read-only root): `girder --version`, then `girder operator` reaching the
//! local API server and serving /readyz.
//!
//! The image is built before the tests (e2e/test.sh builds it twice and
//! compares the digests: the same commit gives the same image) and found
//! through GIRDER_IMAGE_DIR; the registry through GIRDER_REGISTRY (e2e/tools.sh
//! registry). skopeo, umoci and runc are Debian's.

mod support;

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{TempDir, TestNamespace, client, free_port, http_get, install_crds, run_ok};

fn layout() -> PathBuf {
    PathBuf::from(
        std::env::var("GIRDER_IMAGE_DIR").expect("GIRDER_IMAGE_DIR: the image make image built (make test sets it)"),
    )
}

/// A blob of the layout, as JSON.
fn blob(dir: &Path, digest: &str) -> Value {
    let path = dir.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// The distribution registry on a free loopback port, storing below `dir`.
struct Registry {
    child: Child,
    address: String,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\nhttp:\n  addr: {address}\n",
            dir.join("storage").display()
        );
        std::fs::write(dir.join("registry.yml"), config).unwrap();
        let binary =
            std::env::var("GIRDER_REGISTRY").expect("GIRDER_REGISTRY: e2e/tools.sh registry (make test sets it)");
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new(binary)
            .arg("serve")
            .arg(dir.join("registry.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the registry");
        let deadline = Instant::now() + Duration::from_secs(60);
        while http_get(&address, "/v2/").map(|(code, _)| code) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "the registry does not answer:\n{}",
                std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Registry { child, address }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An unpacked image (umoci) whose runtime configuration runc runs.
struct Bundle {
    dir: PathBuf,
}

impl Bundle {
    /// The runtime configuration, changed by `edit`, as the chart's
    /// securityContext asks: the image's user (checked, not set here), no
    /// capabilities, no new privileges, a read-only root. It shares this
    /// host's network (the API server listens on loopback), as a pod's
    /// containers share the pod's.
    fn configure(&self, edit: impl FnOnce(&mut Value)) {
        let path = self.dir.join("config.json");
        let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let process = &mut config["process"];
        process["terminal"] = json!(false);
        process["noNewPrivileges"] = json!(true);
        process["capabilities"] =
            json!({"bounding": [], "effective": [], "permitted": [], "inheritable": [], "ambient": []});
        config["root"]["readonly"] = json!(true);
        let namespaces = config["linux"]["namespaces"].as_array_mut().unwrap();
        namespaces.retain(|n| n["type"] != "network");
        edit(&mut config);
        std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    }

    fn run(&self, id: &str) -> Command {
        let mut cmd = Command::new("runc");
        cmd.args(["run", "--bundle"]).arg(&self.dir).arg(id);
        cmd
    }
}

#[tokio::test]
async fn the_image_goes_through_a_registry_and_runs_the_operator_under_runc() {
    let image = layout();
    let index = blob_index(&image);
    let entry = &index["manifests"][0];
    assert_eq!(entry["platform"], json!({"architecture": "amd64", "os": "linux"}), "{index}");
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(entry["annotations"]["org.opencontainers.image.ref.name"], version);
    let digest = entry["digest"].as_str().unwrap().to_string();
    let manifest = blob(&image, &digest);
    let config = blob(&image, manifest["config"]["digest"].as_str().unwrap());
    assert_eq!((config["architecture"].as_str(), config["os"].as_str()), (Some("amd64"), Some("linux")), "{config}");
    assert_eq!(config["config"]["User"], "65532:65532", "non-root: {config}");
    assert_eq!(config["config"]["Entrypoint"], json!(["/usr/bin/girder"]));
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], version);
    let head = run_ok(Command::new("git").args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"]));
    assert!(labels["org.opencontainers.image.revision"].as_str().unwrap().starts_with(head.trim()), "{labels}");
    assert!(labels["org.opencontainers.image.source"].is_string(), "{labels}");

    // Pushed to the registry and read back: the same manifest, by digest.
    let work = TempDir::new("girder-image");
    let registry = Registry::start(&work.0);
    let reference = format!("{}/girder", registry.address);
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{version}", image.display()))
            .arg(format!("docker://{reference}:{version}")),
    );
    let raw = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{reference}:{version}")),
    );
    let pushed = format!("sha256:{}", sha256_hex(raw.as_bytes()));
    assert_eq!(pushed, digest, "the registry holds another manifest: {raw}");
    let inspected: Value = serde_json::from_str(&run_ok(
        Command::new("skopeo").args(["inspect", "--tls-verify=false"]).arg(format!("docker://{reference}@{digest}")),
    ))
    .unwrap();
    assert_eq!(
        (inspected["Architecture"].as_str(), inspected["Os"].as_str()),
        (Some("amd64"), Some("linux")),
        "{inspected}"
    );
    let pulled = work.0.join("pulled");
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{reference}@{digest}"))
            .arg(format!("oci:{}:girder", pulled.display())),
    );
    let bundle = Bundle { dir: work.0.join("bundle") };
    run_ok(
        Command::new("umoci").args(["unpack", "--image"]).arg(format!("{}:girder", pulled.display())).arg(&bundle.dir),
    );
    let unpacked: Value = serde_json::from_slice(&std::fs::read(bundle.dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(unpacked["process"]["user"]["uid"], 65532, "{unpacked}");
    assert_eq!(unpacked["process"]["user"]["gid"], 65532, "{unpacked}");

    // girder --version, as its non-root user.
    let id = format!("girder-version-{}", std::process::id());
    bundle.configure(|c| c["process"]["args"] = json!(["/usr/bin/girder", "--version"]));
    let out = run_ok(&mut bundle.run(&id));
    assert_eq!(out.trim(), format!("girder {version}"));

    // girder operator against the local API server: it serves /readyz.
    let kube = client().await;
    install_crds(&kube).await;
    let ns = TestNamespace::new(&kube, "image").await;
    let kubeconfig = work.0.join("kubeconfig");
    std::fs::copy(std::env::var("KUBECONFIG").expect("KUBECONFIG"), &kubeconfig).unwrap();
    // Readable by the image's user, as a mounted Secret would be.
    std::fs::set_permissions(&kubeconfig, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    bundle.configure(|c| {
        c["process"]["args"] = json!([
            "/usr/bin/girder",
            "operator",
            "--namespace",
            ns.name,
            "--lease-namespace",
            ns.name,
            "--identity",
            "in-runc",
            "--http-addr",
            http
        ]);
        c["process"]["env"].as_array_mut().unwrap().push(json!("KUBECONFIG=/etc/girder/kubeconfig"));
        c["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/etc/girder/kubeconfig", "type": "bind", "source": kubeconfig, "options": ["bind", "ro"]
        }));
    });
    let id = format!("girder-operator-{}", std::process::id());
    let log = std::fs::File::create(work.0.join("operator.log")).unwrap();
    let mut operator = bundle.run(&id).stdout(Stdio::null()).stderr(log).spawn().expect("runc run");
    let deadline = Instant::now() + Duration::from_secs(120);
    let ready = loop {
        if let Some((200, body)) = http_get(&http, "/readyz") {
            break body;
        }
        if let Some(status) = operator.try_wait().unwrap() {
            panic!(
                "the operator in runc exited ({status}):\n{}",
                std::fs::read_to_string(work.0.join("operator.log")).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no /readyz from the operator in runc:\n{}",
            std::fs::read_to_string(work.0.join("operator.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(ready.contains("ok"), "{ready}");
    // It runs as the image's user.
    let state: Value = serde_json::from_str(&run_ok(Command::new("runc").args(["state", &id]))).unwrap();
    let pid = state["pid"].as_i64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uid.split_whitespace().skip(1).all(|u| u == "65532"), "{uid}");
    let caps = status.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    assert!(caps.ends_with("0000000000000000"), "{caps}");
    run_ok(Command::new("runc").args(["kill", &id, "TERM"]));
    let code = operator.wait().unwrap();
    assert!(code.success(), "the operator stopped on SIGTERM with {code}");
    let _ = Command::new("runc").args(["delete", "--force", &id]).status();
}

fn blob_index(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(bytes);
    hash.iter().map(|b| format!("{b:02x}")).collect()
}
