//! OpenIPMI's `ipmi_sim` as a test peer, started through `e2e/ipmi.sh`, with
//! `ipmitool -I lanplus` as the reference client, on loopback only.

use super::TempDir;
use super::repo_root;
use girder::bmc::ipmi::IpmiClient;
use girder::bmc::{BmcAddress, BmcOptions, Credentials, PowerState};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Starting a simulator (and, the first time, installing it).
pub const START_PATIENCE: Duration = Duration::from_secs(300);
/// ipmi_sim powers a cycled system back on one second after powering it off.
pub const POWER_PATIENCE: Duration = Duration::from_secs(20);

pub const USER: &str = "girder";
pub const PASSWORD: &str = "Ipmi-Pa55-No-Log";

/// What the simulated machine is.
#[derive(Default)]
pub struct SimConfig {
    /// The system GUID, as ipmi_sim's `guid` takes it (32 hex digits).
    pub guid: Option<&'static str>,
    /// FRU 0 of the BMC.
    pub fru: Option<Vec<u8>>,
    /// The chassis program (ipmi_sim's `chassis_control`): by default the
    /// files of e2e/ipmi.sh; `e2e/vm.sh chassis DIR` powers a QEMU machine.
    pub chassis_control: Option<String>,
}

/// A running ipmi_sim, stopped when dropped.
pub struct Sim {
    pub pid: String,
    pub port: u16,
    pub dir: TempDir,
}

impl Sim {
    pub async fn start(config: SimConfig) -> Self {
        let dir = TempDir::new("girder-ipmi");
        if let Some(guid) = config.guid {
            std::fs::write(dir.0.join("guid"), guid).unwrap();
        }
        if let Some(control) = &config.chassis_control {
            std::fs::write(dir.0.join("chassis_control"), control).unwrap();
        }
        if let Some(fru) = &config.fru {
            let bytes: Vec<String> = fru.iter().map(|b| format!("0x{b:02x}")).collect();
            let command = format!("mc_add_fru_data 0x20 0 {} data {}\n", fru.len(), bytes.join(" "));
            std::fs::write(dir.0.join("extra.emu"), command).unwrap();
        }
        let mut sim = Sim { pid: String::new(), port: free_udp_port(), dir };
        sim.launch().await;
        sim
    }

    /// Starts ipmi_sim on this port and directory, and waits until ipmitool
    /// gets an answer from it.
    pub async fn launch(&mut self) {
        use std::io::Write;
        let mut child = Command::new(repo_root().join("e2e/ipmi.sh"))
            .args(["start", &self.port.to_string()])
            .arg(&self.dir.0)
            .arg(USER)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run e2e/ipmi.sh start");
        child.stdin.take().unwrap().write_all(format!("{PASSWORD}\n").as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "e2e/ipmi.sh start failed");
        self.pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(self.pid.parse::<u32>().is_ok(), "e2e/ipmi.sh printed no PID: {:?}", self.pid);
        self.wait_ready().await;
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + START_PATIENCE;
        loop {
            if self.ipmitool_output(&["-N", "1", "-R", "1", "chassis", "power", "status"]).status.success() {
                return;
            }
            assert!(self.alive(), "ipmi_sim exited:\n{}", self.log());
            assert!(Instant::now() < deadline, "ipmi_sim not answering after {START_PATIENCE:?}:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn stop(&self) {
        let _ = Command::new(repo_root().join("e2e/ipmi.sh")).arg("stop").arg(&self.pid).status();
    }

    pub fn alive(&self) -> bool {
        Command::new("kill").args(["-0", &self.pid]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("sim.log")).unwrap_or_default()
    }

    /// What the simulator's chassis control program was asked, one line each.
    pub fn actions(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.0.join("actions")).unwrap_or_default().lines().map(str::to_string).collect()
    }

    pub fn address(&self) -> BmcAddress {
        BmcAddress::parse(&format!("ipmi://127.0.0.1:{}", self.port)).unwrap()
    }

    pub async fn connect(&self) -> IpmiClient {
        IpmiClient::connect(self.address(), Credentials::new(USER, PASSWORD), BmcOptions::default())
            .await
            .unwrap_or_else(|e| panic!("connect: {e}\n{}", self.log()))
    }

    /// `ipmitool -I lanplus` against this simulator; the password goes
    /// through the environment (`-E`), not the command line.
    pub fn ipmitool_output(&self, args: &[&str]) -> Output {
        Command::new("ipmitool")
            .args(["-I", "lanplus", "-H", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER, "-E"])
            // Cipher suite 3: ipmitool's default, 17, is not in ipmi_sim, and
            // finding that out costs it ten seconds a call.
            .args(["-C", "3"])
            .args(args)
            .env("IPMI_PASSWORD", PASSWORD)
            .stdin(Stdio::null())
            .output()
            .expect("run ipmitool (e2e/ipmi.sh install)")
    }

    pub fn ipmitool(&self, args: &[&str]) -> String {
        let out = self.ipmitool_output(args);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "ipmitool {args:?} failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        stdout
    }

    /// `chassis power status` as ipmitool reads it.
    pub fn ipmitool_power(&self) -> PowerState {
        let out = self.ipmitool(&["chassis", "power", "status"]);
        match out.trim() {
            "Chassis Power is on" => PowerState::On,
            "Chassis Power is off" => PowerState::Off,
            other => panic!("ipmitool says {other:?}"),
        }
    }

    /// The number of active sessions, from ipmitool's own (so one more than
    /// the others).
    pub fn active_sessions(&self) -> usize {
        let out = self.ipmitool(&["session", "info", "active"]);
        field(&out, "active sessions").parse().unwrap_or_else(|_| panic!("no session count in {out}"))
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The value of `name : value` in ipmitool's output.
pub fn field(output: &str, name: &str) -> String {
    output
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no {name:?} in:\n{output}"))
}

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
