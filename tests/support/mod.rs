//! Shared harness of the integration tests: a real API server (started by
//! `make test` through e2e/controlplane.sh, or any cluster in KUBECONFIG),
//! one namespace per test, and the real `girder` binary as a child process.
#![allow(dead_code)]

pub mod agent;
pub mod bind;
pub mod farm;
pub mod ipmi;
pub mod machine;
pub mod pxe;
pub mod pxe_lab;
pub mod site;
pub mod sushy;
pub mod toxiproxy;

use girder::api;
use girder::api::{BareMetalNode, ConditionStatus};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, ResourceExt};
use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long any condition may take before a test fails. Generous on purpose:
/// tests wait on conditions, and a slow machine only makes them wait longer.
pub const PATIENCE: Duration = Duration::from_secs(90);

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub async fn client() -> Client {
    if std::env::var_os("KUBECONFIG").is_none() {
        panic!(
            "KUBECONFIG is not set: run `make test`, or `make controlplane` and export KUBECONFIG=$GIRDER_HOME/kubeconfig"
        );
    }
    Client::try_default().await.expect("a client from KUBECONFIG")
}

/// Installs (server-side apply) the CRDs generated from the Rust types and
/// waits until each is Established.
pub async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in api::crds() {
        let name = crd.name_any();
        crds.patch(&name, &PatchParams::apply("girder-tests").force(), &Patch::Apply(&crd))
            .await
            .unwrap_or_else(|e| panic!("apply CRD {name}: {e}"));
        tokio::time::timeout(PATIENCE, await_condition(crds.clone(), &name, conditions::is_crd_established()))
            .await
            .unwrap_or_else(|_| panic!("CRD {name} not Established"))
            .unwrap_or_else(|e| panic!("watch CRD {name}: {e}"));
    }
}

/// Applies the agents' admission policies (config/rbac/agent_policy.yaml),
/// once per test process: tests run side by side, and two applies of a
/// policy that does not exist yet race to create it (AlreadyExists).
pub fn install_agent_policy() {
    static APPLIED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut applied = APPLIED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !*applied {
        apply_file("config/rbac/agent_policy.yaml");
        *applied = true;
    }
}

/// Server-side applies a manifest of the repository as the tests' manager.
pub fn apply_file(path: &str) {
    run_ok(kubectl().args([
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager",
        "girder-tests",
        "-f",
        path,
    ]));
}

/// A namespace of its own for one test, deleted when dropped.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub async fn new(client: &Client, prefix: &str) -> Self {
        let name = format!("{prefix}-{:08x}", rand_u32());
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { "girder.dev/test": "true" } }
        }))
        .unwrap();
        namespaces.create(&PostParams::default(), &ns).await.expect("create test namespace");
        Self { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // GIRDER_DUMP_DIR: girder's objects as the test left them, one file
        // per namespace (where the Argo CD health fixtures come from).
        if let Some(dir) = std::env::var_os("GIRDER_DUMP_DIR")
            && let Ok(out) = kubectl().args(["get", "girder", "-n", &self.name, "-o", "yaml"]).output()
        {
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::write(Path::new(&dir).join(format!("{}.yaml", self.name)), out.stdout);
        }
        // Best effort, without waiting: the control plane is thrown away anyway.
        let _ = kubectl()
            .args(["delete", "namespace", &self.name, "--wait=false", "--ignore-not-found"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn rand_u32() -> u32 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16) ^ (COUNTER.fetch_add(0x9e37_79b9, std::sync::atomic::Ordering::Relaxed))
}

static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

/// `kubectl` as the harness chose it (GIRDER_KUBECTL), against KUBECONFIG.
pub fn kubectl() -> Command {
    let mut cmd = Command::new(std::env::var("GIRDER_KUBECTL").unwrap_or_else(|_| "kubectl".into()));
    cmd.current_dir(repo_root());
    cmd
}

/// `helm` as the harness chose it (GIRDER_HELM).
pub fn helm() -> Command {
    let mut cmd = Command::new(std::env::var("GIRDER_HELM").unwrap_or_else(|_| "helm".into()));
    cmd.current_dir(repo_root());
    cmd
}

/// The value of fact `what` in `girder bmc probe`'s text report.
pub fn probe_fact<'a>(report: &'a str, what: &str) -> Vec<&'a str> {
    let seen = report.split("What girder sees:\n").nth(1).unwrap_or_default();
    let seen = seen.split("Quirks girder works around:").next().unwrap_or_default();
    seen.lines()
        .filter_map(|l| l.strip_prefix("  ")?.strip_prefix(what)?.strip_prefix(' '))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect()
}

/// `girder ARGS` with `stdin` as its input: (succeeded, stdout, stderr).
pub fn girder_cli(args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_girder"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run girder");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// Runs a command, panicking with its output when it fails; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Polls `check` until it returns `Some`, or fails the test after `PATIENCE`
/// naming what it waited for.
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {PATIENCE:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A `girder operator` child process, watching one namespace.
pub struct Operator {
    child: Child,
    pub identity: String,
    pub http: String,
    pub log: PathBuf,
}

pub struct OperatorOptions<'a> {
    pub namespace: &'a str,
    /// Namespace of the Lease; the watched namespace when `None`.
    pub lease_namespace: Option<&'a str>,
    /// Credentials to run with; the harness's KUBECONFIG when `None`.
    pub kubeconfig: Option<&'a Path>,
    pub lease_name: &'a str,
    pub identity: &'a str,
    pub lease_duration: u64,
    pub renew_deadline: u64,
    pub retry_period: u64,
}

impl<'a> OperatorOptions<'a> {
    pub fn new(namespace: &'a str, identity: &'a str) -> Self {
        Self {
            namespace,
            lease_namespace: None,
            kubeconfig: None,
            lease_name: "girder-operator",
            identity,
            lease_duration: 15,
            renew_deadline: 10,
            retry_period: 2,
        }
    }
}

impl Operator {
    pub fn start(opts: OperatorOptions<'_>) -> Self {
        Self::start_with(opts, &[])
    }

    /// Starts it with `extra` arguments after the harness's own.
    pub fn start_with(opts: OperatorOptions<'_>, extra: &[&str]) -> Self {
        let port = free_port();
        let http = format!("127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!("girder-{}-{}.log", opts.namespace, opts.identity));
        let log_file = std::fs::File::create(&log).expect("operator log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_girder"));
        if let Some(kubeconfig) = opts.kubeconfig {
            cmd.env("KUBECONFIG", kubeconfig);
        }
        let lease_namespace = opts.lease_namespace.unwrap_or(opts.namespace);
        let child = cmd
            .args(["operator", "--namespace", opts.namespace, "--lease-namespace", lease_namespace])
            .args(["--lease-name", opts.lease_name, "--identity", opts.identity, "--http-addr", &http])
            .args(["--lease-duration", &opts.lease_duration.to_string()])
            .args(["--renew-deadline", &opts.renew_deadline.to_string()])
            .args(["--retry-period", &opts.retry_period.to_string()])
            .args(extra)
            .env("RUST_LOG", std::env::var("GIRDER_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start girder operator");
        Self { child, identity: opts.identity.to_string(), http, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (e.g. "TERM", "KILL") to the process.
    pub fn signal(&self, signal: &str) {
        let status =
            Command::new("kill").args([&format!("-{signal}"), &self.pid().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    /// Waits for the process to exit and returns its exit code (None if killed by a signal).
    pub async fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            if Instant::now() >= deadline {
                let logs = self.logs();
                let tail: Vec<&str> = logs.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!("the operator did not exit within {PATIENCE:?}; its last log lines:\n{}", tail.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET a path on the operator's HTTP endpoint: (status code, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&self.http, path)
    }

    /// The sum of the samples of a metric whose line starts with `prefix`.
    pub fn metric(&self, prefix: &str) -> Option<f64> {
        let (code, body) = self.get("/metrics")?;
        if code != 200 {
            return None;
        }
        Some(
            body.lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The log stays for a failed test to be read; otherwise it goes.
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// A file in the temporary directory, removed when dropped.
/// A directory of its own (logs, state, certificates), removed when dropped;
/// kept when the test fails, or when GIRDER_KEEP_TEST_FILES is set, so that
/// what is in it can be read.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{prefix}-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("GIRDER_KEEP_TEST_FILES").is_some() {
            eprintln!("test files kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(name: &str) -> Self {
        TempFile(std::env::temp_dir().join(name))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((code, body))
}

/// Applies a YAML document (with `kubectl apply -f -`) into `namespace`.
pub fn apply_yaml(namespace: &str, yaml: &str) -> String {
    let mut child = kubectl()
        .args(["apply", "-n", namespace, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child.stdin.take().expect("stdin").write_all(yaml.as_bytes()).expect("write yaml");
    let out = child.wait_with_output().expect("kubectl output");
    assert!(out.status.success(), "kubectl apply failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Waits until `check` holds for the node's status; returns the node.
pub async fn node_where(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    check: impl Fn(&BareMetalNode) -> bool,
) -> BareMetalNode {
    let nodes: Api<BareMetalNode> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("{name}: {what}"), || {
        let nodes = nodes.clone();
        let found = async move { nodes.get_opt(name).await.ok().flatten() };
        let check = &check;
        async move { found.await.filter(|n| check(n)) }
    })
    .await
}

pub fn condition(node: &BareMetalNode, type_: &str) -> Option<(ConditionStatus, String, String)> {
    let c = girder::api::condition::find(&node.status.as_ref()?.conditions, type_)?;
    Some((c.status, c.reason.clone(), c.message.clone()))
}

/// The peak resident memory (VmHWM, KiB) of process `pid`, where /proc says it.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    girder::agent::peak_rss_kib_of(&pid.to_string())
}
