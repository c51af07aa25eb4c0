//! The machine's hardware inventory as the agent reports it: DMI, CPUs,
//! memory, NICs and disks, read from sysfs and procfs.
//!
//! The agent is a static binary in a busybox ramdisk, without dmidecode,
//! lshw or udev, so it reads the kernel's files itself. Everything is read
//! under a [`SystemRoot`] so tests run against fixture trees. Collection never
//! fails: what cannot be read is left out, and the file is named in a debug
//! log.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use tracing::debug;

use super::disks;
use crate::api::node::{CpuDetails, FirmwareDetails, HardwareDetails, NicDetails};

/// Where the agent reads the machine from: `/` on the machine, a fixture
/// tree in tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemRoot {
    root: PathBuf,
}

impl SystemRoot {
    /// The machine the agent runs on.
    pub fn host() -> Self {
        Self::new("/")
    }

    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn sys(&self) -> PathBuf {
        self.root.join("sys")
    }

    pub fn proc(&self) -> PathBuf {
        self.root.join("proc")
    }

    pub fn dev(&self) -> PathBuf {
        self.root.join("dev")
    }
}

/// A kernel attribute file, trimmed; None (logged) when it cannot be read,
/// None when it is empty.
pub(crate) fn read_trimmed(path: &Path) -> Option<String> {
    match fs::read_to_string(path) {
        Ok(text) => Some(text.trim().to_string()).filter(|text| !text.is_empty()),
        Err(error) => {
            debug!(file = %path.display(), %error, "cannot read");
            None
        }
    }
}

/// The hardware inventory of the machine under `root`.
pub fn collect(root: &SystemRoot) -> HardwareDetails {
    let dmi = root.sys().join("class/dmi/id");
    let dmi_field = |file: &str| read_trimmed(&dmi.join(file)).filter(|value| !is_placeholder(value));
    let cpuinfo = read_trimmed(&root.proc().join("cpuinfo")).unwrap_or_default();
    HardwareDetails {
        vendor: dmi_field("sys_vendor"),
        model: dmi_field("product_name"),
        serial_number: dmi_field("product_serial"),
        uuid: dmi_field("product_uuid").map(|uuid| uuid.to_lowercase()),
        board_serial_number: dmi_field("board_serial"),
        cpu: Some(CpuDetails { architecture: Some(kernel_architecture().to_string()), ..parse_cpuinfo(&cpuinfo) }),
        memory_mebibytes: installed_memory_mebibytes(root).or_else(|| {
            read_trimmed(&root.proc().join("meminfo")).and_then(|meminfo| parse_meminfo_mebibytes(&meminfo))
        }),
        nics: nics(root),
        storage: disks::list(root).iter().map(disks::to_details).collect(),
        firmware: dmi_field("bios_version").map(|bios| FirmwareDetails { bios: Some(bios), bmc: None }),
    }
}

/// What firmware writes into DMI fields nobody filled in. Compared without
/// case; besides these, an all-zero or all-F UUID is no value either.
const PLACEHOLDERS: &[&str] = &[
    "To Be Filled By O.E.M.",
    "Not Specified",
    "Not Applicable",
    "Not Available",
    "N/A",
    "Default string",
    "System Serial Number",
    "System Product Name",
    "System manufacturer",
    "None",
    "0",
    "0123456789",
    // The UUID of many AMI boards that were never given one of their own.
    "03000200-0400-0500-0006-000700080009",
];

fn is_placeholder(value: &str) -> bool {
    let value = value.trim();
    let hex: String = value.chars().filter(|c| *c != '-').collect();
    let blank_uuid = hex.len() == 32 && (hex.chars().all(|c| c == '0') || hex.chars().all(|c| c == 'f' || c == 'F'));
    value.is_empty() || blank_uuid || PLACEHOLDERS.iter().any(|placeholder| value.eq_ignore_ascii_case(placeholder))
}

/// The processors as /proc/cpuinfo lists them. Architecture is left out: it
/// is the agent's own.
fn parse_cpuinfo(cpuinfo: &str) -> CpuDetails {
    #[derive(Default)]
    struct Processor<'a> {
        physical_id: Option<&'a str>,
        core_id: Option<&'a str>,
        cores: Option<&'a str>,
    }
    // Other architectures name the model differently: "Processor" (32-bit
    // ARM), "cpu model" (MIPS), "cpu" (POWER), "uarch" (RISC-V).
    const MODEL_KEYS: [&str; 5] = ["model name", "Processor", "cpu model", "cpu", "uarch"];
    let mut models: [Option<&str>; 5] = [None; 5];
    let mut processors: Vec<Processor> = Vec::new();
    for line in cpuinfo.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let (key, value) = (key.trim(), value.trim());
        if key == "processor" {
            processors.push(Processor::default());
        }
        if let Some(i) = MODEL_KEYS.iter().position(|model_key| *model_key == key) {
            models[i] = models[i].or(Some(value).filter(|value| !value.is_empty()));
        }
        let Some(processor) = processors.last_mut() else { continue };
        match key {
            "physical id" => processor.physical_id = Some(value),
            "core id" => processor.core_id = Some(value),
            "cpu cores" => processor.cores = Some(value),
            _ => {}
        }
    }
    let model = models.into_iter().flatten().next().map(str::to_string);
    if processors.is_empty() {
        return CpuDetails { model, ..CpuDetails::default() };
    }
    let sockets: BTreeSet<&str> = processors.iter().filter_map(|p| p.physical_id).collect();
    let cores_per_socket: BTreeMap<&str, i32> =
        processors.iter().filter_map(|p| Some((p.physical_id?, p.cores?.parse().ok()?))).collect();
    let core_pairs: BTreeSet<(&str, &str)> =
        processors.iter().filter_map(|p| Some((p.physical_id.unwrap_or(""), p.core_id?))).collect();
    let threads = i32::try_from(processors.len()).ok();
    let cores = if !sockets.is_empty() && cores_per_socket.len() == sockets.len() {
        cores_per_socket.values().try_fold(0i32, |sum, cores| sum.checked_add(*cores))
    } else if !core_pairs.is_empty() {
        i32::try_from(core_pairs.len()).ok()
    } else {
        threads
    };
    CpuDetails {
        model,
        sockets: Some(i32::try_from(sockets.len().max(1)).unwrap_or(i32::MAX)),
        cores,
        threads,
        architecture: None,
    }
}

/// The machine's architecture as the kernel (`uname -m`) names it, which is
/// the agent's own: it runs natively.
fn kernel_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86" => "i686",
        "arm" => "armv7l",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "powerpc" => "ppc",
        // x86_64, aarch64, riscv64, s390x, loongarch64... are the kernel's names too.
        other => other,
    }
}

/// The memory installed, from the SMBIOS memory device structures (type 17)
/// the kernel exposes: /proc/meminfo leaves out what the firmware and the
/// kernel keep.
fn installed_memory_mebibytes(root: &SystemRoot) -> Option<i64> {
    let entries_dir = root.sys().join("firmware/dmi/entries");
    let entries = match fs::read_dir(&entries_dir) {
        Ok(entries) => entries,
        Err(error) => {
            debug!(file = %entries_dir.display(), %error, "cannot list DMI entries");
            return None;
        }
    };
    let mut kib: u64 = 0;
    for entry in entries.filter_map(Result::ok) {
        if !entry.file_name().to_str().is_some_and(|name| name.starts_with("17-")) {
            continue;
        }
        let raw_path = entry.path().join("raw");
        match fs::read(&raw_path) {
            Ok(raw) => kib = kib.saturating_add(memory_device_kib(&raw).unwrap_or(0)),
            Err(error) => debug!(file = %raw_path.display(), %error, "cannot read"),
        }
    }
    i64::try_from(kib.div_ceil(1024)).ok().filter(|mib| *mib > 0)
}

/// The size of the module in one SMBIOS memory device structure, in KiB;
/// None for an empty slot, an unknown size or a structure that is not one.
fn memory_device_kib(raw: &[u8]) -> Option<u64> {
    const MEMORY_DEVICE: u8 = 17;
    let (&kind, &length) = (raw.first()?, raw.get(1)?);
    if kind != MEMORY_DEVICE {
        return None;
    }
    let formatted = raw.get(..usize::from(length))?;
    let size = u16::from_le_bytes(*formatted.get(0x0C..0x0E)?.first_chunk()?);
    let kib = match size {
        // No module, or the firmware does not know.
        0 | 0xFFFF => return None,
        // Too large for 15 bits: the size is in the extended field, in MiB.
        0x7FFF => {
            let extended = u32::from_le_bytes(*formatted.get(0x1C..0x20)?.first_chunk()?);
            u64::from(extended & 0x7FFF_FFFF) * 1024
        }
        kib if kib & 0x8000 != 0 => u64::from(kib & 0x7FFF),
        mib => u64::from(mib) * 1024,
    };
    Some(kib).filter(|kib| *kib > 0)
}

/// `MemTotal` (in kB, which is KiB), rounded up to a whole MiB.
fn parse_meminfo_mebibytes(meminfo: &str) -> Option<i64> {
    let line = meminfo.lines().find_map(|line| line.strip_prefix("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().next()?.parse().ok()?;
    i64::try_from(kib.div_ceil(1024)).ok().filter(|mib| *mib > 0)
}

/// The physical NICs, by name. Physical ones have a `device`; loopback,
/// bridges, bonds, VLANs, veth and tun devices do not.
fn nics(root: &SystemRoot) -> Vec<NicDetails> {
    let net = root.sys().join("class/net");
    let entries = match fs::read_dir(&net) {
        Ok(entries) => entries,
        Err(error) => {
            debug!(file = %net.display(), %error, "cannot list network interfaces");
            return Vec::new();
        }
    };
    let mut nics: Vec<NicDetails> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name != "lo")
        .filter_map(|name| nic(&net.join(&name), name))
        .collect();
    nics.sort_by(|a, b| a.name.cmp(&b.name));
    nics
}

fn nic(dir: &Path, name: String) -> Option<NicDetails> {
    fs::symlink_metadata(dir.join("device")).ok()?;
    let mac = read_trimmed(&dir.join("address")).map(|mac| mac.to_lowercase()).filter(|mac| !is_zero_mac(mac))?;
    let driver_link = dir.join("device/driver");
    let driver = match fs::read_link(&driver_link) {
        Ok(target) => target.file_name().and_then(|driver| driver.to_str()).map(str::to_string),
        Err(error) => {
            debug!(file = %driver_link.display(), %error, "cannot read");
            None
        }
    };
    Some(NicDetails {
        name: Some(name),
        mac,
        // Reading `speed` and `carrier` fails (EINVAL) while the interface is down.
        speed_mbps: read_trimmed(&dir.join("speed")).and_then(|speed| parse_speed(&speed)),
        pxe: None,
        link: read_trimmed(&dir.join("carrier")).and_then(|carrier| match carrier.as_str() {
            "1" => Some(true),
            "0" => Some(false),
            _ => None,
        }),
        driver,
    })
}

fn is_zero_mac(mac: &str) -> bool {
    mac.chars().all(|c| c == '0' || c == ':')
}

/// Drivers say "unknown" with -1, 0 or 65535 (and -1 printed unsigned by
/// older kernels).
fn parse_speed(speed: &str) -> Option<i64> {
    speed.parse::<i64>().ok().filter(|mbps| *mbps > 0 && *mbps != 65535 && *mbps < i64::from(u32::MAX))
}

/// Fixture trees for the agent's tests: files and symlinks under a temporary
/// root, removed on drop.
#[cfg(test)]
pub(crate) mod fixture {
    use super::SystemRoot;
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub(crate) struct Fixture {
        dir: PathBuf,
    }

    impl Fixture {
        pub(crate) fn new(label: &str) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let unique = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("girder-{label}-{}-{unique}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self { dir }
        }

        pub(crate) fn root(&self) -> SystemRoot {
            SystemRoot::new(&self.dir)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.dir
        }

        pub(crate) fn file(&self, path: &str, contents: impl AsRef<[u8]>) {
            let path = self.dir.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, contents).unwrap();
        }

        pub(crate) fn dir(&self, path: &str) {
            fs::create_dir_all(self.dir.join(path)).unwrap();
        }

        pub(crate) fn link(&self, path: &str, target: &str) {
            let path = self.dir.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, path).unwrap();
        }

        /// A block device at `sys/devices/<device>` (which ends in its name),
        /// listed in `sys/block`; returns its directory.
        pub(crate) fn block(&self, device: &str, bytes: u64, rotational: bool, removable: bool, ro: bool) -> String {
            let name = device.rsplit('/').next().unwrap();
            let dir = format!("sys/devices/{device}");
            let bit = |b: bool| if b { "1\n" } else { "0\n" };
            self.file(&format!("{dir}/size"), format!("{}\n", bytes / 512));
            self.file(&format!("{dir}/queue/rotational"), bit(rotational));
            self.file(&format!("{dir}/removable"), bit(removable));
            self.file(&format!("{dir}/ro"), bit(ro));
            self.link(&format!("sys/block/{name}"), &format!("../devices/{device}"));
            dir
        }

        /// A network interface at `sys/devices/<device>` (which ends in its
        /// name), listed in `sys/class/net`; returns its directory.
        pub(crate) fn net(&self, device: &str, address: &str) -> String {
            let name = device.rsplit('/').next().unwrap();
            let dir = format!("sys/devices/{device}");
            self.file(&format!("{dir}/address"), format!("{address}\n"));
            self.link(&format!("sys/class/net/{name}"), &format!("../../devices/{device}"));
            dir
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    pub(crate) const GIB: u64 = 1 << 30;

    /// A SMBIOS 2.8 memory device structure (type 17) with its strings.
    pub(crate) fn memory_device(size: u16, extended_mib: u32) -> Vec<u8> {
        let mut raw = vec![0u8; 0x28];
        raw[0] = 17;
        raw[1] = 0x28;
        raw[0x0C..0x0E].copy_from_slice(&size.to_le_bytes());
        raw[0x1C..0x20].copy_from_slice(&extended_mib.to_le_bytes());
        raw.extend_from_slice(b"DIMM 0\0BANK 0\0\0");
        raw
    }

    /// A QEMU-like machine with a little of everything: virtio disks and
    /// NICs, a virtio-scsi disk, a SATA SSD, an NVMe SSD, a USB stick, a loop
    /// device, a CD-ROM, an empty card reader; DMI, CPUs and memory.
    pub(crate) fn machine() -> Fixture {
        let fx = Fixture::new("machine");

        // DMI, with the placeholders firmware leaves behind.
        let dmi = "sys/class/dmi/id";
        fx.file(&format!("{dmi}/sys_vendor"), "QEMU\n");
        fx.file(&format!("{dmi}/product_name"), "Standard PC (Q35 + ICH9, 2009)\n");
        fx.file(&format!("{dmi}/product_serial"), "To Be Filled By O.E.M.\n");
        fx.file(&format!("{dmi}/product_uuid"), "8F1A2B3C-4D5E-6F70-8192-A3B4C5D6E7F8\n");
        fx.file(&format!("{dmi}/board_serial"), "   \n");
        fx.file(&format!("{dmi}/bios_version"), "1.16.3-debian-1.16.3-2\n");
        // 8 GiB, an empty slot, 8 GiB in the extended size field; a type 16
        // structure (the memory array) that is not counted.
        let entries = "sys/firmware/dmi/entries";
        fx.file(&format!("{entries}/17-0/raw"), memory_device(0x2000, 0));
        fx.file(&format!("{entries}/17-1/raw"), memory_device(0, 0));
        fx.file(&format!("{entries}/17-2/raw"), memory_device(0x7FFF, 8192));
        fx.file(&format!("{entries}/16-0/raw"), [16u8, 0x17, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0, 0]);

        // 2 sockets x 2 cores x 2 threads.
        let mut cpuinfo = String::new();
        for processor in 0..8 {
            cpuinfo.push_str(&format!(
                "processor\t: {processor}\nvendor_id\t: GenuineIntel\nmodel name\t: Intel Xeon Processor (Icelake)\n\
                 physical id\t: {}\nsiblings\t: 4\ncore id\t\t: {}\ncpu cores\t: 2\nflags\t\t: fpu vme\n\n",
                processor / 4,
                (processor / 2) % 2
            ));
        }
        fx.file("proc/cpuinfo", cpuinfo);
        fx.file("proc/meminfo", "MemTotal:       16369604 kB\nMemFree:        15000000 kB\n");

        // Disks.
        let vda = fx.block("pci0000:00/0000:00:05.0/virtio2/block/vda", 20 * GIB, true, false, false);
        fx.file(&format!("{vda}/serial"), "QM-ROOT-1\n");
        fx.link(&format!("{vda}/device"), "../../../virtio2");
        fx.file("sys/devices/pci0000:00/0000:00:05.0/virtio2/vendor", "0x1af4\n");
        let vdb = fx.block("pci0000:00/0000:00:06.0/virtio3/block/vdb", 10 * GIB, true, false, false);
        fx.file(&format!("{vdb}/serial"), "QM-DATA-2\n");
        fx.link(&format!("{vdb}/device"), "../../../virtio3");
        let vdc = fx.block("pci0000:00/0000:00:08.0/virtio5/block/vdc", GIB, true, false, false);
        fx.file(&format!("{vdc}/serial"), "QM-TINY-3\n");
        fx.block("pci0000:00/0000:00:09.0/virtio6/block/vdd", 6 * GIB, true, false, true);

        let scsi = "pci0000:00/0000:00:07.0/virtio4/host2/target2:0:1/2:0:1:0";
        fx.block(&format!("{scsi}/block/sda"), 100 * GIB, true, false, false);
        fx.link(&format!("sys/devices/{scsi}/block/sda/device"), "../../../2:0:1:0");
        fx.file(&format!("sys/devices/{scsi}/vendor"), "QEMU    \n");
        fx.file(&format!("sys/devices/{scsi}/model"), "QEMU HARDDISK   \n");
        fx.file(&format!("sys/devices/{scsi}/wwid"), "naa.5000c500a1b2c3d4\n");
        fx.file(&format!("sys/devices/{scsi}/vpd_pg80"), b"\x00\x80\x00\x0cSCSI-0001   ");

        let ata = "pci0000:00/0000:00:1f.2/ata3/host4/target4:0:0/4:0:0:0";
        fx.block(&format!("{ata}/block/sdb"), 500_107_862_016, false, false, false);
        fx.link(&format!("sys/devices/{ata}/block/sdb/device"), "../../../4:0:0:0");
        fx.file(&format!("sys/devices/{ata}/vendor"), "ATA     \n");
        fx.file(&format!("sys/devices/{ata}/model"), "Samsung SSD 870 EVO 500GB\n");
        fx.file(&format!("sys/devices/{ata}/wwid"), "naa.5002538e40a1b2c3\n");
        fx.file(&format!("sys/devices/{ata}/vpd_pg80"), b"\x00\x80\x00\x14      S5Y1NX0R123456");
        fx.file("sys/devices/pci0000:00/0000:00:1f.2/ata3/ata_port/ata3/port_no", "1\n");
        fx.block("pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sr0", 700 << 20, false, true, true);

        let nvme = "pci0000:00/0000:00:1d.0/0000:01:00.0/nvme/nvme0";
        let nvme0n1 = fx.block(&format!("{nvme}/nvme0n1"), 256 * GIB, false, false, false);
        fx.link(&format!("{nvme0n1}/device"), "../../nvme0");
        fx.file(&format!("{nvme0n1}/wwid"), "eui.002538b711b1c2d3\n");
        fx.file(&format!("{nvme0n1}/nsid"), "1\n");
        fx.file(&format!("sys/devices/{nvme}/model"), "Samsung SSD 980 PRO 1TB                 \n");
        fx.file(&format!("sys/devices/{nvme}/serial"), "S6B0NX0R654321      \n");

        let usb = "pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0";
        fx.block(&format!("{usb}/block/sdc"), 8 * GIB, false, true, false);
        fx.link(&format!("sys/devices/{usb}/block/sdc/device"), "../../../6:0:0:0");
        fx.file(&format!("sys/devices/{usb}/vendor"), "SanDisk \n");
        fx.file(&format!("sys/devices/{usb}/model"), "Cruzer Blade    \n");
        fx.block("pci0000:00/0000:00:14.0/usb2/2-2/2-2:1.0/host7/target7:0:0/7:0:0:0/block/sdd", 0, false, true, false);
        fx.block("virtual/block/loop0", 2 * GIB, false, false, false);

        // NICs.
        let eth0 = fx.net("pci0000:00/0000:00:03.0/virtio0/net/eth0", "52:54:00:12:34:56");
        fx.link(&format!("{eth0}/device"), "../../../virtio0");
        fx.link("sys/devices/pci0000:00/0000:00:03.0/virtio0/driver", "../../../../bus/virtio/drivers/virtio_net");
        fx.file(&format!("{eth0}/speed"), "-1\n");
        fx.file(&format!("{eth0}/carrier"), "1\n");
        // Up, no cable.
        let eth1 = fx.net("pci0000:00/0000:00:04.0/net/eth1", "52:54:00:AB:CD:EF");
        fx.link(&format!("{eth1}/device"), "../../../0000:00:04.0");
        fx.link("sys/devices/pci0000:00/0000:00:04.0/driver", "../../../bus/pci/drivers/e1000e");
        fx.file(&format!("{eth1}/speed"), "-1\n");
        fx.file(&format!("{eth1}/carrier"), "0\n");
        let eno1 = fx.net("pci0000:00/0000:00:1c.0/0000:02:00.0/net/eno1", "3c:ec:ef:00:11:22");
        fx.link(&format!("{eno1}/device"), "../../../0000:02:00.0");
        fx.link("sys/devices/pci0000:00/0000:00:1c.0/0000:02:00.0/driver", "../../../../bus/pci/drivers/igb");
        fx.file(&format!("{eno1}/speed"), "1000\n");
        fx.file(&format!("{eno1}/carrier"), "1\n");
        // Administratively down: speed and carrier cannot be read (a directory
        // stands in for the EINVAL).
        let eno2 = fx.net("pci0000:00/0000:00:1c.0/0000:02:00.1/net/eno2", "3c:ec:ef:00:11:23");
        fx.link(&format!("{eno2}/device"), "../../../0000:02:00.1");
        fx.dir(&format!("{eno2}/speed"));
        // A physical function with no address yet.
        let usb0 = fx.net("pci0000:00/0000:00:14.0/usb1/1-3/1-3:1.0/net/usb0", "00:00:00:00:00:00");
        fx.link(&format!("{usb0}/device"), "../../../1-3:1.0");
        fx.net("virtual/net/lo", "00:00:00:00:00:00");
        fx.net("virtual/net/br0", "52:54:00:00:00:01");
        fx.net("virtual/net/veth0", "52:54:00:00:00:02");
        fx
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::{Fixture, machine, memory_device};
    use super::*;

    #[test]
    fn collects_a_machine() {
        let fx = machine();
        let hardware = collect(&fx.root());
        let nic = |name: &str, mac: &str, speed: Option<i64>, link: Option<bool>, driver: Option<&str>| NicDetails {
            name: Some(name.to_string()),
            mac: mac.to_string(),
            speed_mbps: speed,
            pxe: None,
            link,
            driver: driver.map(str::to_string),
        };
        let expected = HardwareDetails {
            vendor: Some("QEMU".to_string()),
            model: Some("Standard PC (Q35 + ICH9, 2009)".to_string()),
            serial_number: None,
            uuid: Some("8f1a2b3c-4d5e-6f70-8192-a3b4c5d6e7f8".to_string()),
            board_serial_number: None,
            cpu: Some(CpuDetails {
                model: Some("Intel Xeon Processor (Icelake)".to_string()),
                sockets: Some(2),
                cores: Some(4),
                threads: Some(8),
                architecture: Some(kernel_architecture().to_string()),
            }),
            memory_mebibytes: Some(16384),
            nics: vec![
                nic("eno1", "3c:ec:ef:00:11:22", Some(1000), Some(true), Some("igb")),
                nic("eno2", "3c:ec:ef:00:11:23", None, None, None),
                nic("eth0", "52:54:00:12:34:56", None, Some(true), Some("virtio_net")),
                nic("eth1", "52:54:00:ab:cd:ef", None, Some(false), Some("e1000e")),
            ],
            storage: disks::list(&fx.root()).iter().map(disks::to_details).collect(),
            firmware: Some(FirmwareDetails { bios: Some("1.16.3-debian-1.16.3-2".to_string()), bmc: None }),
        };
        assert_eq!(hardware, expected);
        let names: Vec<_> = hardware.storage.iter().filter_map(|disk| disk.name.as_deref()).collect();
        assert_eq!(
            names,
            ["/dev/nvme0n1", "/dev/sda", "/dev/sdb", "/dev/sdc", "/dev/vda", "/dev/vdb", "/dev/vdc", "/dev/vdd"]
        );
    }

    #[test]
    fn an_empty_root_gives_an_empty_inventory() {
        let fx = Fixture::new("empty");
        let hardware = collect(&fx.root());
        let cpu = CpuDetails { architecture: Some(kernel_architecture().to_string()), ..CpuDetails::default() };
        assert_eq!(hardware, HardwareDetails { cpu: Some(cpu), ..HardwareDetails::default() });
    }

    #[test]
    fn memory_falls_back_to_meminfo_rounded_up() {
        let fx = Fixture::new("meminfo");
        fx.file("proc/meminfo", "MemTotal:       16369604 kB\n");
        assert_eq!(collect(&fx.root()).memory_mebibytes, Some(15986));
        // DMI entries with only empty or unknown slots do not count.
        fx.file("sys/firmware/dmi/entries/17-0/raw", memory_device(0, 0));
        fx.file("sys/firmware/dmi/entries/17-1/raw", memory_device(0xFFFF, 0));
        assert_eq!(collect(&fx.root()).memory_mebibytes, Some(15986));
        assert_eq!(parse_meminfo_mebibytes("MemTotal: 1024 kB\n"), Some(1));
        assert_eq!(parse_meminfo_mebibytes("MemTotal: 1025 kB\n"), Some(2));
        assert_eq!(parse_meminfo_mebibytes("MemFree: 1025 kB\n"), None);
        assert_eq!(parse_meminfo_mebibytes("MemTotal: lots kB\n"), None);
    }

    #[test]
    fn memory_device_sizes() {
        assert_eq!(memory_device_kib(&memory_device(0x4000, 0)), Some(16 << 20));
        // Bit 15: KiB.
        assert_eq!(memory_device_kib(&memory_device(0x8000 | 512, 0)), Some(512));
        assert_eq!(memory_device_kib(&memory_device(0x7FFF, 65536)), Some(64 << 20));
        // Bit 31 of the extended size is reserved.
        assert_eq!(memory_device_kib(&memory_device(0x7FFF, 0x8000_0000 | 1024)), Some(1 << 20));
        assert_eq!(memory_device_kib(&memory_device(0, 0)), None);
        assert_eq!(memory_device_kib(&memory_device(0xFFFF, 0)), None);
        assert_eq!(memory_device_kib(&memory_device(0x7FFF, 0)), None);
        // Truncated, or too short for the extended size (SMBIOS 2.3, 0x1B bytes).
        assert_eq!(memory_device_kib(&memory_device(0x2000, 0)[..0x0D]), None);
        let mut old = memory_device(0x7FFF, 8192);
        old[1] = 0x1B;
        assert_eq!(memory_device_kib(&old), None);
        let mut other = memory_device(0x2000, 0);
        other[0] = 16;
        assert_eq!(memory_device_kib(&other), None);
        assert_eq!(memory_device_kib(&[]), None);
    }

    #[test]
    fn placeholders_are_no_values() {
        for value in [
            "To Be Filled By O.E.M.",
            "to be filled by o.e.m.",
            "Not Specified",
            "Default string",
            "System Serial Number",
            "None",
            "0",
            "0123456789",
            "",
            "  \t",
            "00000000-0000-0000-0000-000000000000",
            "00000000000000000000000000000000",
            "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
            "ffffffffffffffffffffffffffffffff",
            "03000200-0400-0500-0006-000700080009",
        ] {
            assert!(is_placeholder(value), "{value:?}");
        }
        for value in ["QEMU", "CZ20310ABC", "4c4c4544-0042-3510-8051-b4c04f4b4e32", "00", "F"] {
            assert!(!is_placeholder(value), "{value:?}");
        }
    }

    #[test]
    fn cpuinfo_of_other_architectures() {
        // arm64: no sockets, no cores, no model.
        let arm64 = "processor\t: 0\nBogoMIPS\t: 50.00\nCPU part\t: 0xd0c\n\nprocessor\t: 1\nBogoMIPS\t: 50.00\n";
        assert_eq!(
            parse_cpuinfo(arm64),
            CpuDetails { model: None, sockets: Some(1), cores: Some(2), threads: Some(2), architecture: None }
        );
        // 32-bit ARM names the model once, before the processors.
        let arm =
            "Processor\t: ARMv7 Processor rev 4 (v7l)\nprocessor\t: 0\nBogoMIPS\t: 38.40\n\nHardware\t: BCM2835\n";
        let cpu = parse_cpuinfo(arm);
        assert_eq!((cpu.model.as_deref(), cpu.threads), (Some("ARMv7 Processor rev 4 (v7l)"), Some(1)));
        // POWER.
        let power = "processor\t: 0\ncpu\t\t: POWER9 (architected), altivec supported\n\n";
        assert_eq!(parse_cpuinfo(power).model.as_deref(), Some("POWER9 (architected), altivec supported"));
        // Sockets and core ids without "cpu cores": distinct (socket, core) pairs.
        let no_cpu_cores = "processor: 0\nphysical id: 0\ncore id: 0\n\nprocessor: 1\nphysical id: 0\ncore id: 0\n\n\
                            processor: 2\nphysical id: 0\ncore id: 1\n\nprocessor: 3\nphysical id: 1\ncore id: 0\n";
        assert_eq!(
            parse_cpuinfo(no_cpu_cores),
            CpuDetails { model: None, sockets: Some(2), cores: Some(3), threads: Some(4), architecture: None }
        );
        assert_eq!(parse_cpuinfo(""), CpuDetails::default());
        assert_eq!(parse_cpuinfo("garbage\n:::\n"), CpuDetails::default());
    }

    #[test]
    fn link_speeds() {
        assert_eq!(parse_speed("25000"), Some(25000));
        for unknown in ["-1", "0", "65535", "4294967295", "fast", ""] {
            assert_eq!(parse_speed(unknown), None, "{unknown:?}");
        }
    }

    #[test]
    fn system_root_paths() {
        let host = SystemRoot::host();
        assert_eq!((host.sys(), host.proc(), host.dev()), ("/sys".into(), "/proc".into(), "/dev".into()));
        let fx = Fixture::new("paths");
        assert_eq!(fx.root().dev(), fx.path().join("dev"));
    }

    /// Whatever this machine is, collecting its inventory does not panic and
    /// finds memory and a processor.
    #[test]
    fn collects_this_host() {
        let hardware = collect(&SystemRoot::host());
        assert!(hardware.memory_mebibytes.is_some_and(|mib| mib > 0), "{hardware:?}");
        let cpu = hardware.cpu.unwrap_or_default();
        assert!(cpu.threads.is_some_and(|threads| threads >= 1), "{cpu:?}");
        assert!(cpu.architecture.is_some());
    }
}
