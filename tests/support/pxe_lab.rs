//! A PXE lab: real QEMU VMs PXE-booting on a bridge in a network namespace of
//! their own, against a PXE server in the host namespace.
//!
//! ```text
//!   host namespace                       netns girder-<name>
//!   PXE server under test                ┌────────────── br0 ──────────────┐
//!   bound to gp-<name> 10.S.0.1/24 ══veth══ uplink      tap0 (VM)   tap1 (VM)
//!                                        │ [10.S.0.2/24: the "site DHCP"] │
//! ```
//!
//! The PXE server stays in the host namespace so that it also reaches the API
//! server on loopback. Nothing is routed or NATed: the lab's traffic stays on
//! the lab's link. What the VMs boot (Debian's kernel and a busybox initrd that
//! prints `GIRDER-PXE-BOOTED marker=<girder.marker=> mac=<girder.mac=>` and
//! powers off) comes from `e2e/pxe-assets.sh build`, see [`pxe_assets`].
//!
//! Needs root (namespaces, veth, taps) and QEMU; KVM when it works here, TCG
//! otherwise ([`accel`]). Each test names its own lab and picks its own subnet,
//! so tests run in parallel.

use super::TempDir;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long one PXE boot (firmware, DHCP, TFTP, kernel, marker) may take.
/// Generous for TCG; with KVM a boot takes seconds.
pub const BOOT_PATIENCE: Duration = Duration::from_secs(300);
/// How long a daemon may take to say it is serving.
pub const START_PATIENCE: Duration = Duration::from_secs(30);

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// iPXE's own binaries (Debian's `ipxe`), to serve over TFTP.
pub const IPXE_DIR: &str = "/usr/lib/ipxe";
/// The bridge inside the lab's namespace.
pub const BRIDGE: &str = "br0";

/// The directory holding `vmlinuz` and `initrd.img`, built (or found in the
/// cache) by `e2e/pxe-assets.sh build` once per process.
pub fn pxe_assets() -> PathBuf {
    static ASSETS: OnceLock<PathBuf> = OnceLock::new();
    ASSETS
        .get_or_init(|| {
            let dir = PathBuf::from(assets_script("build").trim());
            assert!(dir.join("vmlinuz").is_file() && dir.join("initrd.img").is_file(), "no assets in {dir:?}");
            dir
        })
        .clone()
}

/// The QEMU accelerator: "kvm", or "tcg" when /dev/kvm is missing or does not
/// boot the kernel (`e2e/pxe-assets.sh accel`, once per process).
pub fn accel() -> &'static str {
    static ACCEL: OnceLock<&'static str> = OnceLock::new();
    ACCEL.get_or_init(|| {
        let accel = assets_script("accel");
        let accel = match accel.trim() {
            "kvm" => "kvm",
            "tcg" => "tcg",
            other => panic!("e2e/pxe-assets.sh accel printed {other:?}"),
        };
        eprintln!("pxe lab: QEMU runs with {accel}");
        accel
    })
}

fn assets_script(subcommand: &str) -> String {
    let script = super::repo_root().join("e2e/pxe-assets.sh");
    let out = Command::new(&script)
        .arg(subcommand)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script:?}: {e}"));
    assert!(out.status.success(), "{script:?} {subcommand} failed ({}); its stderr is above", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails with a message saying why when the lab cannot run as this user.
pub fn require_root() -> Result<(), String> {
    let out = Command::new("id").arg("-u").output().map_err(|e| format!("cannot run id -u: {e}"))?;
    if String::from_utf8_lossy(&out.stdout).trim() != "0" {
        return Err("the PXE lab needs root (network namespaces, a bridge, veth and tap devices): \
                    run these tests as root, e.g. `sudo -E cargo test --test pxe_lab_smoke`"
            .into());
    }
    Ok(())
}

/// Runs a command to completion; the error names the command and its stderr.
pub fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("cannot run {}: {e}", show(cmd)))?;
    if !out.status.success() {
        return Err(format!(
            "`{}` failed ({}): {}",
            show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
}

fn ip(args: &[&str]) -> Result<String, String> {
    run(Command::new("ip").args(args))
}

/// One lab: netns `girder-<name>` with bridge `br0`, linked by a veth pair to
/// `gp-<name>` (10.S.0.1/24) in the host namespace. Dropping it kills what runs
/// in the namespace and deletes the namespace and the veth pair.
pub struct Lab {
    pub name: String,
    /// The network namespace, `girder-<name>`.
    pub netns: String,
    /// The host end of the veth pair, `gp-<name>`: where the PXE server binds.
    pub host_if: String,
    /// The second octet: the lab's network is 10.S.0.0/24.
    pub subnet: u8,
    /// The lab's files (logs, leases, firmware variables).
    pub dir: TempDir,
    taps: AtomicU32,
}

impl Lab {
    /// Creates the lab. `name` (at most 12 characters of [a-z0-9-]) and `subnet`
    /// must be unique among the tests that may run at the same time; a lab of the
    /// same name left behind by a killed run is removed first.
    pub fn create(name: &str, subnet: u8) -> Result<Lab, String> {
        require_root()?;
        if name.is_empty()
            || name.len() > 12
            || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(format!("lab name {name:?}: want 1 to 12 characters of [a-z0-9-]"));
        }
        let netns = format!("girder-{name}");
        let host_if = format!("gp-{name}");
        remove_leftover(&netns, &host_if)?;
        let net = format!("10.{subnet}.0.");
        let taken = ip(&["-o", "-4", "addr", "show"])?;
        if let Some(line) = taken.lines().find(|l| l.contains(&format!(" inet {net}"))) {
            return Err(format!("subnet 10.{subnet}.0.0/24 is in use on this host: {line}"));
        }
        // `ip netns add` fails when the name is taken: from here on the namespace
        // is this lab's, and `lab`'s Drop undoes whatever was made.
        ip(&["netns", "add", &netns])?;
        let lab = Lab {
            name: name.into(),
            netns: netns.clone(),
            host_if: host_if.clone(),
            subnet,
            dir: TempDir::new(&format!("girder-pxe-{name}")),
            taps: AtomicU32::new(0),
        };
        lab.ns_ip(&["link", "set", "lo", "up"])?;
        // STP stays off, so ports forward at once; forward_delay 0 all the same.
        lab.ns_ip(&["link", "add", BRIDGE, "type", "bridge", "forward_delay", "0"])?;
        lab.ns_ip(&["link", "set", BRIDGE, "up"])?;
        ip(&["link", "add", &host_if, "type", "veth", "peer", "name", "uplink", "netns", &netns])?;
        lab.ns_ip(&["link", "set", "uplink", "master", BRIDGE])?;
        lab.ns_ip(&["link", "set", "uplink", "up"])?;
        ip(&["addr", "add", &format!("{}/24", lab.host_ip()), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        Ok(lab)
    }

    /// 10.S.0.<host>
    pub fn addr(&self, host: u8) -> String {
        format!("10.{}.0.{host}", self.subnet)
    }

    /// The host end's address, 10.S.0.1: the PXE server's.
    pub fn host_ip(&self) -> String {
        self.addr(1)
    }

    /// `ip netns exec girder-<name> <program>`.
    pub fn ns_command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, program]);
        cmd
    }

    /// `ip <args>` inside the lab's namespace.
    pub fn ns_ip(&self, args: &[&str]) -> Result<String, String> {
        run(Command::new("ip").args(["-n", &self.netns]).args(args))
    }

    /// The site's own DHCP server, for proxy-mode tests: dnsmasq inside the
    /// namespace on br0 (10.S.0.2/24), handing out `range` with no PXE options.
    pub fn site_dnsmasq(&self, range: (&str, &str)) -> Daemon {
        self.ns_ip(&["addr", "replace", &format!("{}/24", self.addr(2)), "dev", BRIDGE])
            .unwrap_or_else(|e| panic!("{e}"));
        let leases = self.dir.0.join("site-dhcp.leases");
        let mut cmd = self.ns_command("dnsmasq");
        cmd.args(["--no-daemon", "--conf-file=/dev/null", "--port=0", "--bind-interfaces"])
            .arg(format!("--interface={BRIDGE}"))
            .arg(format!("--dhcp-range={},{},255.255.255.0,1h", range.0, range.1))
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            // --no-ping: no 3 s ICMP probe before each new address is offered.
            .args(["--no-ping", "--log-dhcp", "--log-facility=-", "--pid-file="]);
        Daemon::start("site-dhcp", cmd, &self.dir.0.join("site-dhcp.log"), "DHCP, IP range")
    }

    /// IPv6 router advertisements on br0 (a ULA prefix fd00:S::/64, address
    /// fd00:S::3 on br0; no DHCPv6, no route anywhere): iPXE configures IPv4 and
    /// IPv6 together and, with no router on the link, waits about 12 s for IPv6
    /// to time out at every `dhcp`/autoboot. With this, it does not.
    pub fn ipv6_router(&self) -> Daemon {
        let prefix = format!("fd00:{}::", self.subnet);
        self.ns_ip(&["-6", "addr", "replace", &format!("{prefix}3/64"), "dev", BRIDGE, "nodad"])
            .unwrap_or_else(|e| panic!("{e}"));
        let mut cmd = self.ns_command("dnsmasq");
        cmd.args(["--no-daemon", "--conf-file=/dev/null", "--port=0", "--bind-interfaces", "--pid-file="])
            .arg(format!("--interface={BRIDGE}"))
            .args(["--enable-ra", &format!("--dhcp-range={prefix},ra-only,64"), "--log-facility=-"]);
        Daemon::start("ipv6-ra", cmd, &self.dir.0.join("ipv6-ra.log"), "router advertisement on")
    }

    /// Starts a VM on the bridge that boots from its NIC (MAC `mac`). Its serial
    /// console goes to a file ([`Vm::wait_for_serial`]).
    pub fn vm(&self, mac: &str, firmware: Firmware) -> Vm {
        self.vm_on(BRIDGE, mac, firmware)
    }

    /// [`Lab::vm`] on another bridge of the namespace (a segment behind a relay, say).
    pub fn vm_on(&self, bridge: &str, mac: &str, firmware: Firmware) -> Vm {
        let n = self.taps.fetch_add(1, Ordering::Relaxed);
        let tap = format!("tap{n}");
        let dir = self.dir.0.join(format!("vm{n}"));
        std::fs::create_dir_all(&dir).expect("vm dir");
        let setup = || -> Result<(), String> {
            self.ns_ip(&["tuntap", "add", "dev", &tap, "mode", "tap"])?;
            self.ns_ip(&["link", "set", &tap, "master", bridge])?;
            self.ns_ip(&["link", "set", &tap, "up"])?;
            Ok(())
        };
        setup().unwrap_or_else(|e| panic!("tap for a VM in lab {}: {e}", self.name));

        let serial = dir.join("serial.log");
        let mut cmd = self.ns_command("qemu-system-x86_64");
        // -nographic (with -nodefaults: no monitor, no VGA) also tells SeaBIOS to
        // mirror its console, and so iPXE's, on the serial port.
        cmd.args(["-accel", accel(), "-nodefaults", "-nographic", "-no-reboot", "-boot", "n"])
            .args(["-serial", &format!("file:{}", serial.display())])
            .args(["-netdev", &format!("tap,id=net0,ifname={tap},script=no,downscript=no")]);
        match firmware {
            Firmware::Bios => {
                // QEMU's default ROM for virtio-net: iPXE from ipxe-qemu
                // (efi-virtio.rom, found through QEMU's data dirs). Naming any
                // romfile= explicitly, even that same file, left SeaBIOS with no
                // network boot entry here (QEMU 7.2), so none is named.
                cmd.args(["-machine", "pc", "-m", "256"])
                    .args(["-device", &format!("virtio-net-pci,netdev=net0,mac={mac},bootindex=1")]);
            }
            Firmware::Uefi => {
                let vars = dir.join("OVMF_VARS.fd");
                std::fs::copy(OVMF_VARS, &vars).unwrap_or_else(|e| panic!("copy {OVMF_VARS}: {e}"));
                // No option ROM: OVMF's own virtio-net driver and PXE client do the
                // first DHCP and TFTP.
                cmd.args(["-machine", "q35", "-m", "512"])
                    .args(["-drive", &format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}")])
                    .args(["-drive", &format!("if=pflash,format=raw,unit=1,file={}", vars.display())])
                    .args(["-device", &format!("virtio-net-pci,netdev=net0,mac={mac},bootindex=1,romfile=")]);
            }
        }
        let qemu_log = dir.join("qemu.log");
        let file = File::create(&qemu_log).expect("qemu log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("qemu log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", show(&cmd)));
        Vm { child: Mutex::new(child), serial, qemu_log, netns: self.netns.clone(), tap, started: Instant::now() }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        remove_lab(&self.netns, &self.host_if);
    }
}

/// A namespace (and host end) of this name left behind by a killed run is
/// removed; one with processes in it belongs to a running test: an error.
fn remove_leftover(netns: &str, host_if: &str) -> Result<(), String> {
    let exists = ip(&["netns", "list"])?.lines().any(|l| l.split_whitespace().next() == Some(netns));
    if exists {
        let pids = ip(&["netns", "pids", netns]).unwrap_or_default();
        if !pids.trim().is_empty() {
            return Err(format!(
                "network namespace {netns} is in use (pids {}): another lab of this name is running",
                pids.split_whitespace().collect::<Vec<_>>().join(" ")
            ));
        }
        ip(&["netns", "delete", netns])?;
    }
    if ip(&["link", "show", host_if]).is_ok() {
        ip(&["link", "delete", host_if])?;
    }
    Ok(())
}

/// Best effort: kills what runs in the namespace, deletes it (and with it the
/// bridge, the taps and the veth pair) and the host end of the veth.
fn remove_lab(netns: &str, host_if: &str) {
    if let Ok(pids) = ip(&["netns", "pids", netns]) {
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).stderr(Stdio::null()).status();
        }
    }
    let _ = ip(&["netns", "delete", netns]);
    let _ = ip(&["link", "delete", host_if]);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS with iPXE as the NIC's option ROM.
    Bios,
    /// OVMF with no option ROM: its own UEFI PXE client.
    Uefi,
}

/// A QEMU VM, killed when dropped.
pub struct Vm {
    child: Mutex<Child>,
    /// The serial console, written by QEMU as the VM runs.
    pub serial: PathBuf,
    /// QEMU's own stdout and stderr.
    pub qemu_log: PathBuf,
    netns: String,
    tap: String,
    pub started: Instant,
}

impl Vm {
    /// Polls the serial log until it contains `needle` and returns the log; the
    /// error (on timeout, or when QEMU exited without it) carries the log.
    pub fn wait_for_serial(&self, needle: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.serial_log();
            if log.contains(needle) {
                return Ok(log);
            }
            let exited = self.try_wait();
            if exited.is_some() || Instant::now() >= deadline {
                // The last write may have landed after the read above.
                let log = self.serial_log();
                if log.contains(needle) {
                    return Ok(log);
                }
                let why = match exited {
                    Some(status) => format!("QEMU exited ({status})"),
                    None => format!("timed out after {timeout:?}"),
                };
                let qemu = std::fs::read_to_string(&self.qemu_log).unwrap_or_default();
                return Err(format!(
                    "{why} before {needle:?} showed on the serial console ({}).\nQEMU:\n{qemu}\nserial:\n{log}",
                    self.serial.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The serial console so far (escape sequences and carriage returns kept).
    pub fn serial_log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// Waits (bounded) for QEMU to exit by itself, e.g. after the guest powered off.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn try_wait(&self) -> Option<ExitStatus> {
        self.child.lock().unwrap_or_else(|e| e.into_inner()).try_wait().ok().flatten()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
        let _ = ip(&["-n", &self.netns, "link", "delete", &self.tap]);
    }
}

/// A daemon (dnsmasq, say) with its output in a log file; killed when dropped.
pub struct Daemon {
    child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Daemon {
    /// Spawns `cmd` with stdout and stderr to `log` and waits until the log shows
    /// `ready` (panics, with the log, when it exits first or takes too long).
    pub fn start(name: &str, mut cmd: Command, log: &Path, ready: &str) -> Daemon {
        let file = File::create(log).unwrap_or_else(|e| panic!("create {log:?}: {e}"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", show(&cmd)));
        let mut daemon = Daemon { child, name: name.into(), log: log.into() };
        let deadline = Instant::now() + START_PATIENCE;
        while !daemon.logs().contains(ready) {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("{name} ({}) exited ({status}):\n{}", show(&cmd), daemon.logs());
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not log {ready:?} in {START_PATIENCE:?}:\n{}",
                daemon.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
