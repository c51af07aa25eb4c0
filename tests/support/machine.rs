//! QEMU machines whose power a BMC emulator controls (e2e/vm.sh): the
//! chassis behind ipmi_sim, or behind sushy-tools' fake driver through its
//! external notifier. Each machine boots from its NIC or its disks as its
//! BMC says, on the bridge of a PXE lab, and has two disks with serials.

use super::pxe_lab::{BRIDGE, Lab, accel};
use super::repo_root;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A machine: its chassis directory (e2e/vm.sh's DIR) and its disks.
pub struct Machine {
    pub dir: PathBuf,
    pub mac: String,
    /// (serial, file) of each disk.
    pub disks: Vec<(String, PathBuf)>,
}

impl Machine {
    /// Defines a machine in `lab` (not started: its BMC starts it). Disks
    /// are sparse files of `size` bytes.
    pub fn new(lab: &Lab, name: &str, mac: &str, disks: &[(&str, u64)]) -> Machine {
        let dir = lab.dir.0.join(format!("machine-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let tap = format!("t{name}");
        for step in [
            vec!["tuntap", "add", "dev", &tap, "mode", "tap"],
            vec!["link", "set", &tap, "master", BRIDGE],
            vec!["link", "set", &tap, "up"],
        ] {
            lab.ns_ip(&step).unwrap_or_else(|e| panic!("tap for {name}: {e}"));
        }
        let mut specs = Vec::new();
        let mut files = Vec::new();
        for (serial, size) in disks {
            let path = dir.join(format!("{serial}.raw"));
            std::fs::File::create(&path).unwrap().set_len(*size).unwrap();
            specs.push(format!("{serial}:{}", path.display()));
            files.push((serial.to_string(), path));
        }
        let config = format!(
            "NETNS={}\nTAP={tap}\nMAC={mac}\nACCEL={}\nMEMORY=768\nDISKS=\"{}\"\n",
            lab.netns,
            accel(),
            specs.join(" ")
        );
        std::fs::write(dir.join("config"), config).unwrap();
        Machine { dir, mac: mac.to_string(), disks: files }
    }

    /// Sets the firmware's boot order to try the disk with `serial` first, as
    /// a site sets it to the disk the OS goes on.
    pub fn firmware_boots(&self, serial: &str) {
        let mut config = std::fs::read_to_string(self.dir.join("config")).unwrap();
        config.push_str(&format!("BOOT_DISK={serial}\n"));
        std::fs::write(self.dir.join("config"), config).unwrap();
    }

    /// `e2e/vm.sh chassis DIR`: the chassis program of this machine.
    pub fn chassis_control(&self) -> String {
        format!("{} chassis {}", repo_root().join("e2e/vm.sh").display(), self.dir.display())
    }

    /// Runs the chassis program with `args` (e.g. `set power 1`).
    pub fn chassis(&self, args: &[&str]) -> String {
        chassis(&self.dir, args)
    }

    pub fn powered(&self) -> bool {
        self.chassis(&["get", "power"]).trim() == "power:1"
    }

    /// Waits until the machine is off (bounded by `patience`).
    pub async fn wait_off(&self, patience: Duration) -> Result<(), String> {
        let deadline = Instant::now() + patience;
        while self.powered() {
            if Instant::now() >= deadline {
                return Err(format!("the machine is still on after {patience:?}; its actions:\n{}", self.actions()));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(())
    }

    pub fn serial_log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.dir.join("serial.log")).unwrap_or_default()).into_owned()
    }

    /// Every start and stop of the machine so far.
    pub fn actions(&self) -> String {
        std::fs::read_to_string(self.dir.join("actions")).unwrap_or_default()
    }

    /// Waits until the serial console shows `needle` (bounded by `patience`).
    pub fn wait_for_serial(&self, needle: &str, patience: Duration) -> Result<String, String> {
        let deadline = Instant::now() + patience;
        loop {
            let log = self.serial_log();
            if log.contains(needle) {
                return Ok(log);
            }
            if Instant::now() >= deadline {
                return Err(format!("{needle:?} did not show on the serial console in {patience:?}:\n{log}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `len` bytes of the disk with `serial` from `offset`.
    pub fn read(&self, serial: &str, offset: u64, len: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let (_, path) = self.disks.iter().find(|(s, _)| s == serial).expect("a disk with that serial");
        let mut buf = vec![0u8; len];
        std::fs::File::open(path).unwrap().read_exact_at(&mut buf, offset).unwrap();
        buf
    }

    pub fn disk_size(&self, serial: &str) -> u64 {
        let (_, path) = self.disks.iter().find(|(s, _)| s == serial).expect("a disk with that serial");
        std::fs::metadata(path).unwrap().len()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = chassis(&self.dir, &["set", "power", "0"]);
        // The chassis acts in the background: wait (bounded) until QEMU is gone.
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.powered() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if std::thread::panicking() {
            eprintln!("--- serial console of {} ---\n{}", self.mac, self.serial_log());
            eprintln!("--- chassis actions ---\n{}", self.actions());
        }
    }
}

fn chassis(dir: &Path, args: &[&str]) -> String {
    let out =
        Command::new(repo_root().join("e2e/vm.sh")).arg("chassis").arg(dir).args(args).output().expect("run e2e/vm.sh");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Receives sushy-tools' notifications (a PUT of the whole fake system on
/// every change) and turns them into the chassis actions of the machines
/// they name: what a real server does when its BMC is asked.
pub struct Notifier {
    pub url: String,
    stop: Arc<AtomicBool>,
    addr: String,
}

impl Notifier {
    /// `machines` maps fake system names to chassis directories.
    pub fn start(machines: Vec<(String, PathBuf)>) -> Notifier {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            // What each system's last notification said, so that a repeat
            // (every write notifies, changed or not) does not act twice.
            let mut seen: std::collections::HashMap<String, (String, String)> = Default::default();
            for conn in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let body = read_request(&mut conn);
                // Answer first: the emulator waits for us within its own request.
                let _ = conn.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
                drop(conn);
                let Ok(system) = serde_json::from_slice::<serde_json::Value>(&body) else { continue };
                let Some((name, dir)) = machines.iter().find(|(name, _)| system["name"] == name.as_str()) else {
                    continue;
                };
                let now = (system["pending_power"].to_string(), system["power_state"].to_string());
                let before = seen.insert(name.clone(), now.clone());
                act(dir, &system, before.as_ref() != Some(&now));
            }
        });
        Notifier { url: format!("http://{addr}/"), stop, addr }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::net::TcpStream::connect(&self.addr);
    }
}

fn read_request(conn: &mut std::net::TcpStream) -> Vec<u8> {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 {
            break;
        }
        data.extend_from_slice(&buf[..n]);
        if let Some(end) = find(&data, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse::<usize>().ok()))
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                return data[end + 4..end + 4 + length].to_vec();
            }
        }
    }
    Vec::new()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One notification: the boot device, then the power change it carries
/// (when `power_changed`: the request, or its taking effect, is new).
fn act(dir: &Path, system: &serde_json::Value, power_changed: bool) {
    match system["boot_device"].as_str() {
        Some("Pxe") => {
            chassis(dir, &["set", "boot", "pxe"]);
        }
        Some("Hdd") => {
            chassis(dir, &["set", "boot", "default"]);
        }
        _ => {}
    }
    if !power_changed {
        return;
    }
    let running = chassis(dir, &["get", "power"]).trim() == "power:1";
    match (system["pending_power"]["power_state"].as_str(), system["power_state"].as_str()) {
        // A restart (ForceRestart, GracefulRestart): the fake driver says
        // Off at once and keeps the reset type pending until it applies it.
        (Some(reset), _) if reset.contains("Restart") && running => {
            chassis(dir, &["set", "reset", "1"]);
        }
        (Some(reset), _) if reset.contains("Restart") => {
            chassis(dir, &["set", "power", "1"]);
        }
        (Some("On"), _) => {
            chassis(dir, &["set", "power", "1"]);
        }
        (Some("Off"), _) | (None, Some("Off")) => {
            chassis(dir, &["set", "power", "0"]);
        }
        _ => {}
    }
}

/// girder's ramdisk (`ramdisk/build.sh`, or GIRDER_RAMDISK_DIR when the
/// harness built it already) and the test image built from it
/// (e2e/test-image.sh), once per test process.
pub fn ramdisk_and_image() -> (PathBuf, PathBuf) {
    static BUILT: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let ramdisk = match std::env::var_os("GIRDER_RAMDISK_DIR") {
                Some(dir) => PathBuf::from(dir),
                None => PathBuf::from(script(&["ramdisk/build.sh"]).trim()),
            };
            assert!(
                ramdisk.join("vmlinuz").is_file() && ramdisk.join("initrd.img").is_file(),
                "no ramdisk in {ramdisk:?}"
            );
            let image = PathBuf::from(script(&["e2e/test-image.sh", "build", ramdisk.to_str().unwrap()]).trim());
            assert!(image.join("disk.img").is_file(), "no test image in {image:?}");
            (ramdisk, image)
        })
        .clone()
}

fn script(args: &[&str]) -> String {
    let out = Command::new(repo_root().join(args[0]))
        .args(&args[1..])
        .current_dir(repo_root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", args[0]));
    assert!(out.status.success(), "{} failed; its output is above", args.join(" "));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The sha256 of `file` in `dir`'s SHA256SUMS.
pub fn sha256_of(dir: &Path, file: &str) -> String {
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    sums.lines().find(|l| l.ends_with(file)).and_then(|l| l.split_whitespace().next()).unwrap().to_string()
}

/// Links (or copies) `files` into `dir`, where girder pxe serves them.
pub fn serve_files(dir: &Path, files: &[(&str, PathBuf)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, from) in files {
        let to = dir.join(name);
        let _ = std::fs::remove_file(&to);
        if std::fs::hard_link(from, &to).is_err() {
            std::fs::copy(from, &to).unwrap();
        }
    }
}
