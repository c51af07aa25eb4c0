//! `girder agent` as a process on this host, on a machine made of files: a
//! system root with just enough of /sys, /proc and /dev for the agent's
//! inventory and disks (regular files stand in for the disks). The agent
//! talks to the real API server and girder pxe as it would from a machine;
//! only the hardware is pretend.

use super::pxe::Pxe;
use super::{TempDir, http_get, node_where, run_ok, wait_for};
use girder::api::BareMetalNode;
use girder::api::provisioning::ProvisioningState;
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The operator's flags for tests with agents: quick power polls, and
/// heartbeats whose lapse shows within seconds.
pub const OPERATOR_FLAGS: [&str; 10] = [
    "--power-poll-interval",
    "2",
    "--bmc-timeout",
    "5",
    "--agent-lease-duration",
    "10",
    "--agent-boot-timeout",
    "60",
    "--installed-agent-timeout",
    "120",
];

pub const GIB: u64 = 1 << 30;
pub const MIB: u64 = 1 << 20;

/// A pretend machine: a system root with disks, a NIC and DMI data.
pub struct FakeMachine {
    pub root: TempDir,
    pub mac: String,
}

impl FakeMachine {
    /// Disks are `(name, serial, size)`; each is a sparse file under dev/.
    pub fn new(mac: &str, disks: &[(&str, &str, u64)]) -> Self {
        let root = TempDir::new("girder-machine");
        let put = |path: &str, text: &str| {
            let path = root.0.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        for (name, serial, size) in disks {
            put(&format!("sys/block/{name}/size"), &format!("{}\n", size / 512));
            put(&format!("sys/block/{name}/serial"), &format!("{serial}\n"));
            put(&format!("sys/block/{name}/queue/rotational"), "0\n");
            put(&format!("sys/block/{name}/removable"), "0\n");
            put(&format!("sys/block/{name}/ro"), "0\n");
            std::fs::create_dir_all(root.0.join("dev")).unwrap();
            let disk = std::fs::File::create(root.0.join("dev").join(name)).unwrap();
            disk.set_len(*size).unwrap();
        }
        put("sys/class/net/eth0/address", &format!("{mac}\n"));
        put("sys/class/net/eth0/carrier", "1\n");
        put("sys/class/net/eth0/speed", "1000\n");
        std::fs::create_dir_all(root.0.join("sys/class/net/eth0/device")).unwrap();
        put("sys/class/dmi/id/sys_vendor", "girder tests\n");
        put("sys/class/dmi/id/product_name", "fake machine\n");
        put("sys/class/dmi/id/product_serial", &format!("SN-{}\n", mac.replace(':', "")));
        put("proc/cpuinfo", "processor\t: 0\nmodel name\t: Test CPU\nphysical id\t: 0\ncpu cores\t: 1\n\n");
        put("proc/meminfo", "MemTotal:        2048000 kB\n");
        FakeMachine { root, mac: mac.to_string() }
    }

    /// The file standing in for disk `name`.
    pub fn disk(&self, name: &str) -> PathBuf {
        self.root.0.join("dev").join(name)
    }

    /// `len` bytes of disk `name` from `offset`.
    pub fn read(&self, name: &str, offset: u64, len: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        let file = std::fs::File::open(self.disk(name)).unwrap();
        file.read_exact_at(&mut buf, offset).unwrap();
        buf
    }
}

/// The kernel command line girder pxe's script for `mac` boots with (the
/// arguments of its `kernel` line), as the machine would get it.
pub fn boot_cmdline(pxe_http: &str, mac: &str) -> Option<(String, String)> {
    let (code, script) = http_get(pxe_http, &format!("/boot/{mac}.ipxe"))?;
    if code != 200 {
        return None;
    }
    let kernel = script.lines().find(|l| l.starts_with("kernel "))?;
    let args = kernel.split_whitespace().skip(3).take_while(|w| *w != "||").collect::<Vec<_>>().join(" ");
    Some((script, args))
}

/// A running `girder agent`, killed when dropped.
pub struct Agent {
    child: Child,
    pub log: PathBuf,
    pub state: PathBuf,
}

impl Agent {
    /// Starts the agent of `machine` with `cmdline` as its kernel command
    /// line, keeping its state in `state`, with `extra` arguments.
    pub fn start(machine: &FakeMachine, cmdline: &str, state: &Path, extra: &[&str]) -> Agent {
        std::fs::create_dir_all(state).unwrap();
        let cmdline_file = state.with_extension("cmdline");
        std::fs::write(&cmdline_file, cmdline).unwrap();
        let log = state.with_extension("log");
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_girder"))
            .args(["agent", "--log-format", "text", "--cmdline"])
            .arg(&cmdline_file)
            .arg("--root")
            .arg(&machine.root.0)
            .arg("--state-dir")
            .arg(state)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start girder agent");
        Agent { child, log, state: state.to_path_buf() }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The token the agent uses now.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.state.join("token")).unwrap_or_default().trim().to_string()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- girder agent log ({}) ---\n{}", self.log.display(), self.logs());
        }
    }
}

/// An HTTP file server that misbehaves on purpose: it cuts the first `cuts`
/// answers for the whole file after `cut_after` bytes, and sends at most
/// `bytes_per_second`. Ranges (`bytes=N-`) are honoured.
pub struct FlakyServer {
    pub addr: String,
    stop: Arc<AtomicBool>,
}

impl FlakyServer {
    pub fn start(bind: &str, file: PathBuf, cut_after: u64, cuts: u32, bytes_per_second: Option<u64>) -> FlakyServer {
        let listener = TcpListener::bind(bind).expect("bind the flaky server");
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let cut = Arc::new(std::sync::Mutex::new((cut_after, cuts)));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (file, cut) = (file.clone(), cut.clone());
                std::thread::spawn(move || serve(conn, &file, &cut, bytes_per_second));
            }
        });
        FlakyServer { addr, stop }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }
}

impl Drop for FlakyServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(&self.addr);
    }
}

fn serve(mut conn: TcpStream, file: &Path, cut: &std::sync::Mutex<(u64, u32)>, rate: Option<u64>) {
    let mut request = Vec::new();
    let mut byte = [0u8; 1];
    while !request.ends_with(b"\r\n\r\n") && request.len() < 16 * 1024 {
        if conn.read(&mut byte).unwrap_or(0) == 0 {
            return;
        }
        request.push(byte[0]);
    }
    let request = String::from_utf8_lossy(&request).to_string();
    let data = std::fs::read(file).unwrap_or_default();
    let start = request
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("range: bytes=").map(str::to_string))
        .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok());
    let head = match start {
        Some(start) => format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nAccept-Ranges: bytes\r\nETag: \"fixed\"\r\nConnection: close\r\n\r\n",
            data.len() - start,
            data.len() - 1,
            data.len()
        ),
        None => format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nETag: \"fixed\"\r\nConnection: close\r\n\r\n",
            data.len()
        ),
    };
    if conn.write_all(head.as_bytes()).is_err() {
        return;
    }
    let body = &data[start.unwrap_or(0).min(data.len())..];
    let limit = match (start, cut.lock()) {
        (None, Ok(mut cut)) if cut.1 > 0 => {
            cut.1 -= 1;
            Some(cut.0)
        }
        _ => None,
    };
    let end = limit.map_or(body.len(), |l| (l as usize).min(body.len()));
    for chunk in body[..end].chunks(64 * 1024) {
        if conn.write_all(chunk).is_err() {
            return;
        }
        if let Some(rate) = rate {
            std::thread::sleep(Duration::from_secs_f64(chunk.len() as f64 / rate as f64));
        }
    }
    // A cut answer: the connection closes before Content-Length bytes.
}

/// girder pxe on loopback (HTTP only), its assets in `lab`: a pretend
/// ramdisk (the agent runs here, not in it) and `files`.
pub fn pxe(namespace: &str, lab: &TempDir, files: &[(&str, &Path)]) -> Pxe {
    let assets = lab.0.join("assets");
    std::fs::create_dir_all(&assets).unwrap();
    std::fs::write(assets.join("vmlinuz"), b"kernel").unwrap();
    std::fs::write(assets.join("initrd.img"), b"initrd").unwrap();
    for (name, file) in files {
        std::fs::copy(file, assets.join(name)).unwrap();
    }
    let state = lab.0.join("pxe-state");
    std::fs::create_dir_all(&state).unwrap();
    let flags =
        ["--discovery-kernel", "vmlinuz", "--discovery-initrd", "initrd.img", "--discovery-cmdline", "console=ttyS0"];
    Pxe::start_in(namespace, None, &state, &assets, &flags)
}

/// A raw disk image: an MBR with one partition, and a recognisable pattern.
pub fn disk_image(dir: &Path) -> (std::path::PathBuf, String) {
    let path = dir.join("os.img");
    let mut bytes = vec![0u8; (16 * MIB) as usize];
    for (i, b) in bytes.iter_mut().enumerate().skip(MIB as usize) {
        *b = (i % 251) as u8;
    }
    std::fs::write(&path, &bytes).unwrap();
    let mut sfdisk = std::process::Command::new("sfdisk");
    sfdisk.args(["--quiet", path.to_str().unwrap()]);
    let mut child = sfdisk.stdin(std::process::Stdio::piped()).spawn().expect("sfdisk (Debian fdisk)");
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(b"label: dos\nstart=2048, type=83\n").unwrap();
    assert!(child.wait().unwrap().success());
    let digest = sha256_file(&path);
    (path, digest)
}

pub fn sha256_file(path: &Path) -> String {
    let out = run_ok(std::process::Command::new("sha256sum").arg(path));
    out.split_whitespace().next().unwrap().to_string()
}

pub async fn secret(client: &Client, ns: &str, name: &str, data: serde_json::Value) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret: Secret = serde_json::from_value(json!({ "metadata": { "name": name }, "stringData": data })).unwrap();
    secrets.create(&PostParams::default(), &secret).await.expect("create Secret");
}

pub fn session(node: &BareMetalNode) -> Option<String> {
    node.status.as_ref()?.provisioning.as_ref()?.session.clone()
}

pub fn state(node: &BareMetalNode) -> Option<ProvisioningState> {
    node.status.as_ref()?.provisioning.as_ref()?.state
}

/// Waits for a session the operator expects an agent in, then starts the
/// agent with the command line girder pxe's script gives the machine.
pub async fn boot_agent(client: &Client, ns: &str, name: &str, pxe: &Pxe, machine: &FakeMachine, dir: &Path) -> Agent {
    let node = node_where(client, ns, name, "an agent session waiting for its agent", |n| {
        session(n).is_some() && state(n) == Some(ProvisioningState::WaitingForAgent)
    })
    .await;
    // girder pxe follows the node through its own watch, a moment behind.
    let (script, cmdline) = wait_for("the node's ramdisk script from girder pxe", || {
        let found = boot_cmdline(&pxe.http, &machine.mac).filter(|(script, _)| script.contains("girder.nonce="));
        async move { found }
    })
    .await;
    let session = session(&node).unwrap();
    assert!(cmdline.contains("girder.nonce=") && !cmdline.contains(&session), "{script}");
    Agent::start(machine, &cmdline, dir, &[])
}

pub fn fat_file(machine: &FakeMachine, disk: &str, name: &str) -> Vec<u8> {
    use std::io::Read as _;
    let device = girder::agent::partition::Device::open(&machine.disk(disk)).unwrap();
    let table = girder::agent::partition::read_table(&device).unwrap().expect("a partition table");
    let seed = table.partitions.last().expect("the seed partition").clone();
    let window = girder::agent::seed::Window::new(&device, seed.start_bytes, seed.size_bytes).unwrap();
    let fs = fatfs::FileSystem::new(window, fatfs::FsOptions::new()).expect("a FAT filesystem");
    assert_eq!(fs.volume_label().trim(), "CIDATA");
    let mut bytes = Vec::new();
    fs.root_dir().open_file(name).unwrap_or_else(|e| panic!("{name}: {e}")).read_to_end(&mut bytes).unwrap();
    bytes
}
