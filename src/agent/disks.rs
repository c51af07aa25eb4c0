//! The machine's disks, read from sysfs, and the choice of the one to install
//! to.
//!
//! The agent runs in a ramdisk without udev, so it reads `/sys/block` itself
//! and works out the names an operator may put in root device hints: the
//! serial number, the WWN and the `/dev/disk/by-path/` name.
//!
//! - Serial: `/sys/block/<name>/serial` (virtio-blk), then `device/serial`
//!   (NVMe controllers, MMC), then the unit serial number VPD page
//!   `device/vpd_pg80` (SCSI, and ATA through libata's translation).
//! - WWN: `wwid` (NVMe namespaces) or `device/wwid` (SCSI, ATA), shown as the
//!   kernel writes it; hints compare it without its `naa.`, `eui.`, `t10.` or
//!   `0x` prefix and case, so `0x5000C500A1B2C3D4` (lsblk, Redfish) matches
//!   `naa.5000c500a1b2c3d4`.
//! - by-path: a subset of udev's naming for disks under a PCI device: virtio-blk
//!   (`pci-0000:00:05.0`), NVMe (`pci-0000:01:00.0-nvme-1`), SCSI hosts
//!   attached directly to the PCI device or through virtio-scsi
//!   (`pci-0000:00:07.0-scsi-0:0:1:0`) and libata ports (`pci-0000:00:1f.2-ata-1`,
//!   udev's compatible form; its newer `-ata-1.0` is accepted in hints too). SAS,
//!   Fibre Channel, iSCSI, USB, Hyper-V and non-PCI (platform) disks get none:
//!   a wrong name would be worse than no name.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use thiserror::Error;
use tracing::debug;

use super::inventory::{SystemRoot, read_trimmed};
use crate::api::node::{DiskDetails, RootDeviceHints};

const GIB: u64 = 1 << 30;

/// Without a size hint, a disk smaller than this is no root disk: it is a
/// SATA DOM, a BMC's virtual media or a leftover, and no OS image fits.
const MIN_ROOT_DISK_BYTES: u64 = 4 * GIB;

/// Block devices that are not disks: loop and RAM disks, device-mapper and md
/// (built on disks, and gone once the disks are rewritten), network block
/// devices, optical and floppy drives.
const NOT_DISKS: &[&str] = &["loop", "ram", "zram", "dm-", "md", "nbd", "sr", "fd"];

/// One disk as the kernel sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name, e.g. `sda`.
    pub name: String,
    /// Device node, under the [`SystemRoot`]'s `/dev`.
    pub path: PathBuf,
    pub size_bytes: u64,
    /// None when the kernel does not say.
    pub rotational: Option<bool>,
    pub model: Option<String>,
    pub vendor: Option<String>,
    pub serial: Option<String>,
    /// As the kernel writes it, e.g. `naa.5000c500a1b2c3d4`.
    pub wwn: Option<String>,
    /// The disk's `/dev/disk/by-path/` name, e.g. `pci-0000:00:05.0`.
    pub by_path: Option<String>,
    pub removable: bool,
    pub read_only: bool,
}

impl Disk {
    /// The name the machine knows the disk by, e.g. `/dev/sda`, whatever the
    /// [`SystemRoot`].
    pub fn device_name(&self) -> String {
        format!("/dev/{}", self.name)
    }
}

/// The disks under `root`, by name. Devices that are not disks (see
/// [`NOT_DISKS`]) and empty drives are left out.
pub fn list(root: &SystemRoot) -> Vec<Disk> {
    let block = root.sys().join("block");
    let entries = match fs::read_dir(&block) {
        Ok(entries) => entries,
        Err(error) => {
            debug!(file = %block.display(), %error, "cannot list block devices");
            return Vec::new();
        }
    };
    let mut disks: Vec<Disk> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| is_disk_name(name))
        .filter_map(|name| read_disk(root, &block, name))
        .collect();
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    disks
}

fn is_disk_name(name: &str) -> bool {
    // eMMC boot partitions show up as disks of their own, read-only and tiny.
    let mmc_boot = name.starts_with("mmcblk") && name.contains("boot");
    !mmc_boot && !NOT_DISKS.iter().any(|prefix| name.starts_with(prefix))
}

fn read_disk(root: &SystemRoot, block: &Path, name: String) -> Option<Disk> {
    let dir = block.join(&name);
    // `size` counts 512-byte sectors whatever the logical block size.
    let size_bytes = read_trimmed(&dir.join("size"))?.parse::<u64>().ok()?.saturating_mul(512);
    // Empty card readers and drives without media have size 0; multipath NVMe
    // paths are hidden behind their head device.
    if size_bytes == 0 || flag(&dir.join("hidden")) == Some(true) {
        return None;
    }
    let wwn = read_trimmed(&dir.join("wwid"))
        .or_else(|| read_trimmed(&dir.join("device/wwid")))
        .map(|wwid| wwid.split_whitespace().collect::<Vec<_>>().join(" "));
    Some(Disk {
        path: root.dev().join(&name),
        size_bytes,
        rotational: flag(&dir.join("queue/rotational")),
        model: read_trimmed(&dir.join("device/model")),
        vendor: read_trimmed(&dir.join("device/vendor")).filter(|vendor| is_disk_vendor(vendor)),
        serial: read_serial(&dir),
        wwn,
        by_path: by_path(root, &name),
        removable: flag(&dir.join("removable")).unwrap_or(false),
        read_only: flag(&dir.join("ro")).unwrap_or(false),
        name,
    })
}

/// A sysfs boolean, `0` or `1`.
fn flag(path: &Path) -> Option<bool> {
    match read_trimmed(path)?.as_str() {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

/// libata answers every SCSI INQUIRY with the vendor `ATA`, and virtio's
/// `device/vendor` is the virtio vendor id (`0x1af4`): neither names who made
/// the disk.
fn is_disk_vendor(vendor: &str) -> bool {
    !vendor.eq_ignore_ascii_case("ATA") && !vendor.starts_with("0x")
}

fn read_serial(dir: &Path) -> Option<String> {
    read_trimmed(&dir.join("serial")).or_else(|| read_trimmed(&dir.join("device/serial"))).or_else(|| {
        let path = dir.join("device/vpd_pg80");
        match fs::read(&path) {
            Ok(page) => unit_serial(&page),
            Err(error) => {
                debug!(file = %path.display(), %error, "cannot read");
                None
            }
        }
    })
}

/// The serial in a unit serial number VPD page (0x80): a 4-byte header whose
/// last two bytes are the length, then ASCII, often padded with spaces.
fn unit_serial(page: &[u8]) -> Option<String> {
    let (header, rest) = page.split_first_chunk::<4>()?;
    if header[1] != 0x80 {
        return None;
    }
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let text = std::str::from_utf8(rest.get(..length)?).ok()?;
    let serial = text.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\0');
    let printable = serial.chars().all(|c| c.is_ascii_graphic() || c == ' ');
    (!serial.is_empty() && printable).then(|| serial.to_string())
}

/// A WWN as hints compare it: without the designator prefix, lower case.
fn normalize_wwn(wwn: &str) -> String {
    let wwn = wwn.trim().to_ascii_lowercase();
    let bare = ["naa.", "eui.", "t10.", "0x"].iter().find_map(|prefix| wwn.strip_prefix(prefix)).unwrap_or(&wwn);
    bare.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The disk's `/dev/disk/by-path/` name, from where `/sys/block/<name>` points
/// (e.g. `../devices/pci0000:00/0000:00:05.0/virtio2/block/vda`).
fn by_path(root: &SystemRoot, name: &str) -> Option<String> {
    let link = root.sys().join("block").join(name);
    let target = match fs::read_link(&link) {
        Ok(target) => target,
        Err(error) => {
            debug!(file = %link.display(), %error, "cannot read the block device link");
            return None;
        }
    };
    let target = target.to_str()?;
    let device: Vec<&str> = target.split('/').skip_while(|part| *part != "devices").skip(1).collect();
    path_id(&root.sys().join("devices"), &device, name)
}

/// `device` is the disk's path under `/sys/devices`, split at `/`.
fn path_id(devices: &Path, device: &[&str], name: &str) -> Option<String> {
    // The PCI root bus, the bridges, then the disk's controller: udev names
    // the disk after the controller alone.
    let (root_bus, rest) = device.split_first()?;
    if !root_bus.starts_with("pci") {
        return None;
    }
    let bridges_and_controller = rest.iter().take_while(|part| is_pci_address(part)).count();
    let controller = rest.get(bridges_and_controller.checked_sub(1)?)?;
    let controller_dir = devices.join(device[..=bridges_and_controller].join("/"));
    let below = &rest[bridges_and_controller..];
    let transport = match below {
        [virtio, "block", disk] if numbered(virtio, "virtio").is_some() && *disk == name => String::new(),
        ["nvme", nvme, disk] if numbered(nvme, "nvme").is_some() && *disk == name => {
            format!("-nvme-{}", namespace_id(&controller_dir.join(below.join("/")), name)?)
        }
        [between @ .., host, target, hctl, "block", disk] if *disk == name => {
            scsi(&controller_dir, between, host, target, hctl)?
        }
        _ => return None,
    };
    Some(format!("pci-{controller}{transport}"))
}

/// `0000:00:1f.2`: domain, bus, device.function, in hex.
fn is_pci_address(part: &str) -> bool {
    let mut fields = part.split(':');
    let (Some(domain), Some(bus), Some(slot), None) = (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return false;
    };
    let Some((device, function)) = slot.split_once('.') else {
        return false;
    };
    let hex = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit());
    [domain, bus, device, function].into_iter().all(hex)
}

/// `host2` with prefix `host` -> 2.
fn numbered(part: &str, prefix: &str) -> Option<u32> {
    part.strip_prefix(prefix)?.parse().ok()
}

/// The namespace id of an NVMe disk: its `nsid`, or the `n1` of `nvme0n1`.
fn namespace_id(namespace_dir: &Path, name: &str) -> Option<u32> {
    read_trimmed(&namespace_dir.join("nsid"))
        .and_then(|nsid| nsid.parse().ok())
        .or_else(|| name.rsplit_once('n')?.1.parse().ok())
}

/// The SCSI part of a by-path name: `between` is what sits between the PCI
/// controller and the SCSI host (nothing, `virtioN` or `ataN`).
fn scsi(controller_dir: &Path, between: &[&str], host: &str, target: &str, hctl: &str) -> Option<String> {
    let host_number = numbered(host, "host")?;
    let mut address = hctl.split(':').map(|n| n.parse::<u32>().ok());
    let (Some(Some(h)), Some(Some(channel)), Some(Some(id)), Some(Some(lun)), None) =
        (address.next(), address.next(), address.next(), address.next(), address.next())
    else {
        return None;
    };
    if h != host_number || !target.starts_with("target") {
        return None;
    }
    match between {
        [] => scsi_default(controller_dir, host_number, channel, id, lun),
        [virtio] if numbered(virtio, "virtio").is_some() => {
            scsi_default(&controller_dir.join(virtio), host_number, channel, id, lun)
        }
        [ata] if numbered(ata, "ata").is_some() => {
            // Port multipliers (channel) and PATA slaves (id) would share the
            // compatible name; leave them without one.
            if channel != 0 || id != 0 {
                return None;
            }
            let port = read_trimmed(&controller_dir.join(ata).join("ata_port").join(ata).join("port_no"))?;
            port.parse::<u32>().ok().map(|port| format!("-ata-{port}"))
        }
        _ => None,
    }
}

/// udev numbers SCSI hosts from the first host of their parent device, so
/// the name does not depend on the order drivers were loaded in.
fn scsi_default(parent: &Path, host: u32, channel: u32, id: u32, lun: u32) -> Option<String> {
    let entries = match fs::read_dir(parent) {
        Ok(entries) => entries,
        Err(error) => {
            debug!(file = %parent.display(), %error, "cannot list SCSI hosts");
            return None;
        }
    };
    let first = entries.filter_map(|entry| numbered(entry.ok()?.file_name().to_str()?, "host")).min()?;
    Some(format!("-scsi-{}:{channel}:{id}:{lun}", host.checked_sub(first)?))
}

/// The inventory view of a disk.
pub fn to_details(disk: &Disk) -> DiskDetails {
    DiskDetails {
        name: Some(disk.device_name()),
        size_bytes: i64::try_from(disk.size_bytes).ok(),
        model: disk.model.clone(),
        serial_number: disk.serial.clone(),
        rotational: disk.rotational,
        vendor: disk.vendor.clone(),
        wwn: disk.wwn.clone(),
        by_path: disk.by_path.clone(),
    }
}

/// The disk to install to: the smallest disk that is neither removable nor
/// read-only and matches every hint given (ties go by name). Unless
/// `minSizeGigabytes` says otherwise, disks under 4 GiB are not considered.
pub fn select<'a>(disks: &'a [Disk], hints: Option<&RootDeviceHints>) -> Result<&'a Disk, NoMatchingDisk> {
    let hints = hints.filter(|hints| **hints != RootDeviceHints::default());
    disks
        .iter()
        .filter(|disk| mismatches(disk, hints).is_empty())
        .min_by(|a, b| a.size_bytes.cmp(&b.size_bytes).then_with(|| a.name.cmp(&b.name)))
        .ok_or_else(|| NoMatchingDisk {
            hints: hints.map(|hints| serde_json::to_string(hints).unwrap_or_else(|_| format!("{hints:?}"))),
            seen: disks.iter().map(|disk| Rejected::new(disk, mismatches(disk, hints))).collect(),
        })
}

/// Why `disk` cannot be the root disk; empty when it can.
fn mismatches(disk: &Disk, hints: Option<&RootDeviceHints>) -> Vec<String> {
    let mut why = Vec::new();
    if disk.removable {
        why.push("removable".to_string());
    }
    if disk.read_only {
        why.push("read-only".to_string());
    }
    let hints = hints.cloned().unwrap_or_default();
    let min_gib = hints.min_size_gigabytes.map_or(MIN_ROOT_DISK_BYTES / GIB, |n| u64::try_from(n).unwrap_or(0));
    if disk.size_bytes < min_gib.saturating_mul(GIB) {
        why.push(format!("smaller than {min_gib} GiB"));
    }
    if let Some(wanted) = &hints.device_name {
        let wanted = wanted.trim();
        if !names_disk(disk, wanted) {
            match (wanted.strip_prefix(BY_PATH), &disk.by_path) {
                (Some(wanted), Some(by_path)) => why.push(format!("by-path {by_path:?} != {wanted:?}")),
                (Some(wanted), None) => why.push(format!("no by-path name (wanted {wanted:?})")),
                (None, _) => why.push(format!("not {wanted:?}")),
            }
        }
    }
    if let Some(wanted) = &hints.serial_number {
        let wanted = wanted.trim();
        match disk.serial.as_deref().map(str::trim) {
            Some(serial) if serial == wanted => {}
            Some(serial) => why.push(format!("serial {serial:?} != {wanted:?}")),
            None => why.push(format!("no serial (wanted {wanted:?})")),
        }
    }
    for (field, value, wanted) in [("model", &disk.model, &hints.model), ("vendor", &disk.vendor, &hints.vendor)] {
        let Some(wanted) = wanted else { continue };
        match value {
            Some(value) if value.to_lowercase().contains(&wanted.to_lowercase()) => {}
            Some(value) => why.push(format!("{field} {value:?} does not contain {wanted:?}")),
            None => why.push(format!("no {field} (wanted {wanted:?})")),
        }
    }
    if let Some(wanted) = &hints.wwn {
        match &disk.wwn {
            Some(wwn) if normalize_wwn(wwn) == normalize_wwn(wanted) => {}
            Some(wwn) => why.push(format!("wwn {wwn:?} != {wanted:?}")),
            None => why.push(format!("no wwn (wanted {wanted:?})")),
        }
    }
    if let Some(wanted) = hints.rotational {
        match disk.rotational {
            Some(rotational) if rotational == wanted => {}
            Some(true) => why.push("rotational (wanted solid state)".to_string()),
            Some(false) => why.push("solid state (wanted rotational)".to_string()),
            None => why.push("not known whether rotational".to_string()),
        }
    }
    why
}

const BY_PATH: &str = "/dev/disk/by-path/";

/// Whether `/dev/...` names the disk: its kernel name or its by-path link.
fn names_disk(disk: &Disk, wanted: &str) -> bool {
    if wanted == disk.device_name() {
        return true;
    }
    let (Some(by_path), Some(wanted)) = (&disk.by_path, wanted.strip_prefix(BY_PATH)) else {
        return false;
    };
    // Since systemd 252 the main by-path name of an ATA disk ends in the
    // device number (`-ata-1.0`); ours is the older, compatible `-ata-1`.
    wanted == by_path || (by_path.contains("-ata-") && wanted.strip_suffix(".0") == Some(by_path.as_str()))
}

/// At most this many disks are described in a [`NoMatchingDisk`] message.
const MAX_DISKS_LISTED: usize = 16;
/// Longer serials, models and hints are cut in a [`NoMatchingDisk`] message.
const MAX_FIELD_CHARS: usize = 64;

/// No disk can be the root disk. The message names the hints and every disk
/// seen, with why it was not chosen.
#[derive(Debug, Clone, Error)]
#[error("{}", describe(.hints.as_deref(), .seen))]
pub struct NoMatchingDisk {
    /// As JSON, the way they are written in the spec.
    hints: Option<String>,
    seen: Vec<Rejected>,
}

impl NoMatchingDisk {
    /// The condition reason for this failure.
    pub fn reason(&self) -> &'static str {
        "NoMatchingDisk"
    }
}

/// A disk that was not chosen, and why.
#[derive(Debug, Clone)]
struct Rejected {
    name: String,
    size_bytes: u64,
    serial: Option<String>,
    model: Option<String>,
    wwn: Option<String>,
    why: Vec<String>,
}

impl Rejected {
    fn new(disk: &Disk, why: Vec<String>) -> Self {
        Self {
            name: disk.device_name(),
            size_bytes: disk.size_bytes,
            serial: disk.serial.clone(),
            model: disk.model.clone(),
            wwn: disk.wwn.clone(),
            why,
        }
    }
}

fn describe(hints: Option<&str>, seen: &[Rejected]) -> String {
    let mut message = match hints {
        Some(hints) => format!("no disk matches the root device hints {}", clip(hints, 4 * MAX_FIELD_CHARS)),
        None => "no disk of at least 4 GiB that is neither removable nor read-only (no root device hints)".to_string(),
    };
    if seen.is_empty() {
        message.push_str(
            "; no disks seen (loop, RAM, device-mapper, md, network, optical and floppy devices and empty drives \
             are not counted)",
        );
        return message;
    }
    message.push_str("; disks seen:");
    for (i, disk) in seen.iter().take(MAX_DISKS_LISTED).enumerate() {
        let field = |label: &str, value: &Option<String>| match value {
            Some(value) => format!("{label} {:?}", clip(value, MAX_FIELD_CHARS)),
            None => format!("no {label}"),
        };
        let why = if disk.why.is_empty() { "matches".to_string() } else { disk.why.join(", ") };
        let _ = write!(
            message,
            "{} {} ({}, {}, {}, {}): {}",
            if i == 0 { "" } else { ";" },
            disk.name,
            size(disk.size_bytes),
            field("serial", &disk.serial),
            field("model", &disk.model),
            field("wwn", &disk.wwn),
            clip(&why, 4 * MAX_FIELD_CHARS),
        );
    }
    if seen.len() > MAX_DISKS_LISTED {
        let _ = write!(message, "; and {} more", seen.len() - MAX_DISKS_LISTED);
    }
    message
}

fn clip(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

/// `8 GiB`, `465.8 GiB`, `512 MiB`.
fn size(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    let (unit, name) = if bytes >= GIB { (GIB, "GiB") } else { (MIB, "MiB") };
    if bytes.is_multiple_of(unit) {
        format!("{} {name}", bytes / unit)
    } else {
        // Precision does not matter in a message, so f64 is fine.
        format!("{:.1} {name}", bytes as f64 / unit as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::super::inventory::fixture::{Fixture, GIB as FIXTURE_GIB, machine};
    use super::*;

    fn disk(name: &str, gib: u64) -> Disk {
        Disk {
            name: name.to_string(),
            path: PathBuf::from(format!("/dev/{name}")),
            size_bytes: gib * GIB,
            rotational: Some(false),
            model: None,
            vendor: None,
            serial: None,
            wwn: None,
            by_path: None,
            removable: false,
            read_only: false,
        }
    }

    fn pick<'a>(disks: &'a [Disk], hints: &RootDeviceHints) -> &'a str {
        match select(disks, Some(hints)) {
            Ok(disk) => &disk.name,
            Err(error) => panic!("{error}"),
        }
    }

    #[test]
    fn lists_the_disks_of_a_machine() {
        let fx = machine();
        let disks = list(&fx.root());
        let names: Vec<&str> = disks.iter().map(|disk| disk.name.as_str()).collect();
        // Not loop0 (loop), sr0 (CD-ROM), sdd (no medium).
        assert_eq!(names, ["nvme0n1", "sda", "sdb", "sdc", "vda", "vdb", "vdc", "vdd"]);
        let by_name = |name: &str| disks.iter().find(|disk| disk.name == name).unwrap();
        let s = |text: &str| Some(text.to_string());

        assert_eq!(
            *by_name("vda"),
            Disk {
                name: "vda".to_string(),
                path: fx.path().join("dev/vda"),
                size_bytes: 20 * FIXTURE_GIB,
                rotational: Some(true),
                model: None,
                // The virtio vendor id is not the disk's vendor.
                vendor: None,
                serial: s("QM-ROOT-1"),
                wwn: None,
                by_path: s("pci-0000:00:05.0"),
                removable: false,
                read_only: false,
            }
        );
        assert_eq!(
            *by_name("sda"),
            Disk {
                name: "sda".to_string(),
                path: fx.path().join("dev/sda"),
                size_bytes: 100 * FIXTURE_GIB,
                rotational: Some(true),
                model: s("QEMU HARDDISK"),
                vendor: s("QEMU"),
                serial: s("SCSI-0001"),
                wwn: s("naa.5000c500a1b2c3d4"),
                by_path: s("pci-0000:00:07.0-scsi-0:0:1:0"),
                removable: false,
                read_only: false,
            }
        );
        let sdb = by_name("sdb");
        assert_eq!(
            (sdb.vendor.as_deref(), sdb.model.as_deref(), sdb.serial.as_deref(), sdb.by_path.as_deref()),
            (None, Some("Samsung SSD 870 EVO 500GB"), Some("S5Y1NX0R123456"), Some("pci-0000:00:1f.2-ata-1"))
        );
        assert_eq!((sdb.size_bytes, sdb.rotational), (500_107_862_016, Some(false)));
        let nvme = by_name("nvme0n1");
        assert_eq!(
            (nvme.model.as_deref(), nvme.serial.as_deref(), nvme.wwn.as_deref(), nvme.by_path.as_deref()),
            (
                Some("Samsung SSD 980 PRO 1TB"),
                Some("S6B0NX0R654321"),
                Some("eui.002538b711b1c2d3"),
                Some("pci-0000:01:00.0-nvme-1")
            )
        );
        let stick = by_name("sdc");
        assert_eq!((stick.removable, stick.by_path.as_deref(), stick.vendor.as_deref()), (true, None, Some("SanDisk")));
        assert!(by_name("vdd").read_only);
    }

    #[test]
    fn by_path_names() {
        let fx = Fixture::new("by-path");
        // Two SCSI hosts on one HBA: numbered from the first. The second NVMe
        // namespace has no nsid file: its name says 2.
        fx.dir("sys/devices/pci0000:00/0000:00:10.0/host0");
        let hba = "pci0000:00/0000:00:10.0/host1/target1:0:3/1:0:3:0/block/sda";
        fx.block(hba, GIB, false, false, false);
        fx.block("pci0000:00/0000:00:01.0/0000:02:00.0/nvme/nvme1/nvme1n2", GIB, false, false, false);
        // Behind a port multiplier (channel 1), on SAS, on a platform bus,
        // and a /sys/block entry that is no link: no name.
        fx.block("pci0000:00/0000:00:1f.2/ata2/host3/target3:1:0/3:1:0:0/block/sdb", GIB, false, false, false);
        fx.file("sys/devices/pci0000:00/0000:00:1f.2/ata2/ata_port/ata2/port_no", "2\n");
        let sas = "pci0000:00/0000:00:11.0/host5/port-5:0/end_device-5:0/target5:0:0/5:0:0:0/block/sdc";
        fx.block(sas, GIB, false, false, false);
        fx.block("platform/a003e00.virtio_mmio/virtio1/block/vda", GIB, false, false, false);
        fx.file("sys/block/vdb/size", "2097152\n");
        let paths: Vec<(String, Option<String>)> =
            list(&fx.root()).into_iter().map(|disk| (disk.name, disk.by_path)).collect();
        let s = |text: &str| Some(text.to_string());
        assert_eq!(
            paths,
            [
                ("nvme1n2".to_string(), s("pci-0000:02:00.0-nvme-2")),
                ("sda".to_string(), s("pci-0000:00:10.0-scsi-1:0:3:0")),
                ("sdb".to_string(), None),
                ("sdc".to_string(), None),
                ("vda".to_string(), None),
                ("vdb".to_string(), None),
            ]
        );
        assert!(is_pci_address("0000:00:1f.2") && is_pci_address("10000:e1:00.7"));
        assert!(!is_pci_address("pci0000:00") && !is_pci_address("0000:00:1f") && !is_pci_address("virtio0"));
    }

    #[test]
    fn unit_serial_pages() {
        assert_eq!(unit_serial(b"\x00\x80\x00\x08 ABC123 ").as_deref(), Some("ABC123"));
        // The length bounds the serial; a NUL-padded one is trimmed.
        assert_eq!(unit_serial(b"\x00\x80\x00\x04ABC\0trailing").as_deref(), Some("ABC"));
        // Not page 0x80, shorter than it says, empty, not text.
        assert_eq!(unit_serial(b"\x00\x83\x00\x03ABC"), None);
        assert_eq!(unit_serial(b"\x00\x80\x00\x10ABC"), None);
        assert_eq!(unit_serial(b"\x00\x80\x00\x00"), None);
        assert_eq!(unit_serial(b"\x00\x80\x00\x02\x01\x02"), None);
        assert_eq!(unit_serial(b"\x00\x80"), None);
    }

    #[test]
    fn wwns_compare_without_prefix_or_case() {
        assert_eq!(normalize_wwn("naa.5000C500A1B2C3D4"), "5000c500a1b2c3d4");
        assert_eq!(normalize_wwn(" 0x5000c500a1b2c3d4 "), "5000c500a1b2c3d4");
        assert_eq!(normalize_wwn("eui.002538B711B1C2D3"), "002538b711b1c2d3");
        assert_eq!(normalize_wwn("t10.ATA     QEMU HARDDISK   QM00001"), "ata qemu harddisk qm00001");
    }

    #[test]
    fn without_hints_the_smallest_fixed_disk_of_at_least_4_gib() {
        let fx = machine();
        let disks = list(&fx.root());
        // Not vdc (1 GiB), vdd (read-only, 6 GiB), sdc (removable, 8 GiB).
        assert_eq!(select(&disks, None).unwrap().name, "vdb");
        // Hints with nothing in them are no hints.
        assert_eq!(pick(&disks, &RootDeviceHints::default()), "vdb");
        // Ties go by name.
        assert_eq!(select(&[disk("sdb", 8), disk("sda", 8), disk("sdc", 9)], None).unwrap().name, "sda");
    }

    #[test]
    fn each_hint_alone() {
        let fx = machine();
        let disks = list(&fx.root());
        let hints = RootDeviceHints::default;
        let text = |s: &str| Some(s.to_string());
        assert_eq!(pick(&disks, &RootDeviceHints { device_name: text("/dev/sda"), ..hints() }), "sda");
        assert_eq!(pick(&disks, &RootDeviceHints { serial_number: text(" S5Y1NX0R123456 "), ..hints() }), "sdb");
        // Case-insensitive substrings; the smaller of the two Samsungs.
        assert_eq!(pick(&disks, &RootDeviceHints { model: text("samsung ssd"), ..hints() }), "nvme0n1");
        assert_eq!(pick(&disks, &RootDeviceHints { vendor: text("qem"), ..hints() }), "sda");
        assert_eq!(pick(&disks, &RootDeviceHints { wwn: text("0x5000C500A1B2C3D4"), ..hints() }), "sda");
        assert_eq!(pick(&disks, &RootDeviceHints { wwn: text("eui.002538B711B1C2D3"), ..hints() }), "nvme0n1");
        assert_eq!(pick(&disks, &RootDeviceHints { min_size_gigabytes: Some(200), ..hints() }), "nvme0n1");
        assert_eq!(pick(&disks, &RootDeviceHints { rotational: Some(false), ..hints() }), "nvme0n1");
        assert_eq!(pick(&disks, &RootDeviceHints { rotational: Some(true), ..hints() }), "vdb");
    }

    #[test]
    fn hints_combine() {
        let fx = machine();
        let disks = list(&fx.root());
        let hints = RootDeviceHints {
            model: Some("Samsung".to_string()),
            rotational: Some(false),
            min_size_gigabytes: Some(300),
            ..RootDeviceHints::default()
        };
        assert_eq!(pick(&disks, &hints), "sdb");
        let hints =
            RootDeviceHints { vendor: Some("QEMU".to_string()), rotational: Some(false), ..RootDeviceHints::default() };
        assert!(select(&disks, Some(&hints)).is_err());
        // A size hint replaces the 4 GiB floor.
        let tiny = RootDeviceHints { device_name: Some("/dev/vdc".to_string()), ..RootDeviceHints::default() };
        let error = select(&disks, Some(&tiny)).unwrap_err().to_string();
        assert!(
            error.contains("/dev/vdc (1 GiB, serial \"QM-TINY-3\", no model, no wwn): smaller than 4 GiB"),
            "{error}"
        );
        assert_eq!(pick(&disks, &RootDeviceHints { min_size_gigabytes: Some(1), ..tiny }), "vdc");
    }

    #[test]
    fn device_names_by_path() {
        let fx = machine();
        let disks = list(&fx.root());
        let by = |name: &str| RootDeviceHints { device_name: Some(name.to_string()), ..RootDeviceHints::default() };
        assert_eq!(pick(&disks, &by("/dev/disk/by-path/pci-0000:00:05.0")), "vda");
        assert_eq!(pick(&disks, &by("/dev/disk/by-path/pci-0000:00:07.0-scsi-0:0:1:0")), "sda");
        assert_eq!(pick(&disks, &by("/dev/disk/by-path/pci-0000:00:1f.2-ata-1")), "sdb");
        assert_eq!(pick(&disks, &by("/dev/disk/by-path/pci-0000:00:1f.2-ata-1.0")), "sdb");
        assert_eq!(pick(&disks, &by("/dev/disk/by-path/pci-0000:01:00.0-nvme-1")), "nvme0n1");
        assert!(select(&disks, Some(&by("/dev/disk/by-path/pci-0000:00:05.0.0"))).is_err());
        assert!(select(&disks, Some(&by("/dev/disk/by-path/pci-0000:00:07.0-scsi-0:0:1:0.0"))).is_err());
        // Never the removable stick or the read-only disk, even by name.
        assert!(select(&disks, Some(&by("/dev/sdc"))).is_err());
        assert!(select(&disks, Some(&by("/dev/vdd"))).is_err());
    }

    #[test]
    fn no_match_says_why_for_every_disk() {
        let fx = machine();
        let disks = list(&fx.root());
        let hints = RootDeviceHints { serial_number: Some("NOPE".to_string()), ..RootDeviceHints::default() };
        let error = select(&disks, Some(&hints)).unwrap_err();
        assert_eq!(error.reason(), "NoMatchingDisk");
        let message = error.to_string();
        for expected in [
            "no disk matches the root device hints {\"serialNumber\":\"NOPE\"}; disks seen: /dev/nvme0n1 (256 GiB, ",
            "/dev/sda (100 GiB, serial \"SCSI-0001\", model \"QEMU HARDDISK\", wwn \"naa.5000c500a1b2c3d4\"): \
             serial \"SCSI-0001\" != \"NOPE\";",
            "/dev/sdb (465.8 GiB, serial \"S5Y1NX0R123456\",",
            "/dev/sdc (8 GiB, no serial, model \"Cruzer Blade\", no wwn): removable, no serial (wanted \"NOPE\");",
            "/dev/vdc (1 GiB, serial \"QM-TINY-3\", no model, no wwn): smaller than 4 GiB, \
             serial \"QM-TINY-3\" != \"NOPE\";",
            "/dev/vdd (6 GiB, no serial, no model, no wwn): read-only, no serial (wanted \"NOPE\")",
        ] {
            assert!(message.contains(expected), "{expected:?} not in {message}");
        }

        let hints = RootDeviceHints {
            device_name: Some("/dev/sdz".to_string()),
            model: Some("X".to_string()),
            vendor: Some("Y".to_string()),
            wwn: Some("naa.1".to_string()),
            rotational: Some(true),
            ..RootDeviceHints::default()
        };
        let message = select(&disks, Some(&hints)).unwrap_err().to_string();
        for expected in [
            "/dev/nvme0n1 (256 GiB, serial \"S6B0NX0R654321\", model \"Samsung SSD 980 PRO 1TB\", \
             wwn \"eui.002538b711b1c2d3\"): not \"/dev/sdz\", ",
            "model \"Samsung SSD 980 PRO 1TB\" does not contain \"X\"",
            "no vendor (wanted \"Y\")",
            "wwn \"naa.5000c500a1b2c3d4\" != \"naa.1\"",
            "solid state (wanted rotational)",
        ] {
            assert!(message.contains(expected), "{expected:?} not in {message}");
        }

        let hints = RootDeviceHints { device_name: Some("/dev/disk/by-path/pci-0000:00:04.0".to_string()), ..hints };
        let message = select(&disks, Some(&hints)).unwrap_err().to_string();
        for expected in [
            "by-path \"pci-0000:01:00.0-nvme-1\" != \"pci-0000:00:04.0\"",
            "/dev/sdc (8 GiB, no serial, model \"Cruzer Blade\", no wwn): removable, \
             no by-path name (wanted \"pci-0000:00:04.0\")",
        ] {
            assert!(message.contains(expected), "{expected:?} not in {message}");
        }

        let message = select(&[], None).unwrap_err().to_string();
        assert!(message.starts_with("no disk of at least 4 GiB") && message.contains("no disks seen"), "{message}");
    }

    #[test]
    fn no_match_messages_stay_short() {
        let disks: Vec<Disk> = (0..200)
            .map(|i| Disk {
                serial: Some("S".repeat(500)),
                model: Some("M".repeat(500)),
                ..disk(&format!("sd{i:03}"), 1)
            })
            .collect();
        let hints = RootDeviceHints { model: Some("Z".repeat(5000)), ..RootDeviceHints::default() };
        let message = select(&disks, Some(&hints)).unwrap_err().to_string();
        assert!(message.len() < 16_000, "{} bytes", message.len());
        assert!(message.ends_with("; and 184 more"), "{message}");
        assert!(message.contains("/dev/sd015") && !message.contains("/dev/sd016"));
    }

    #[test]
    fn details() {
        let disk = Disk {
            serial: Some("S1".to_string()),
            wwn: Some("naa.5000c500a1b2c3d4".to_string()),
            by_path: Some("pci-0000:00:05.0".to_string()),
            model: Some("M".to_string()),
            vendor: Some("V".to_string()),
            ..disk("sda", 8)
        };
        assert_eq!(
            to_details(&disk),
            DiskDetails {
                name: Some("/dev/sda".to_string()),
                size_bytes: Some(8 << 30),
                model: Some("M".to_string()),
                serial_number: Some("S1".to_string()),
                rotational: Some(false),
                vendor: Some("V".to_string()),
                wwn: Some("naa.5000c500a1b2c3d4".to_string()),
                by_path: Some("pci-0000:00:05.0".to_string()),
            }
        );
    }
}
