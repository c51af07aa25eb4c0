//! The cloud-init NoCloud seed: the files that tell the installed system its
//! identity, network and user data, on a small FAT filesystem labelled
//! `CIDATA` at the end of the root disk, where cloud-init's NoCloud source
//! looks for it on first boot.
//!
//! [`render`] is pure: it turns the node's facts into the three files.
//! `meta-data` and `network-config` are written as JSON, with serde_json:
//! JSON is YAML, and unlike the YAML serde_yaml emits it quotes every string.
//! cloud-init reads these files with PyYAML, a YAML 1.1 parser, which takes an
//! unquoted MAC made of digits such as `52:54:00:12:34:56` (QEMU's) for a
//! base-60 integer and `no` or `on` for booleans; serde_yaml follows YAML 1.2
//! and leaves them bare.
//!
//! `network-config` is cloud-init's network configuration version 2 (the
//! netplan format): one `ethernets` entry per address whose interface is one
//! NIC, matched by MAC and renamed to the interface's name; one `bonds` entry
//! (active-backup, which needs nothing from the switch) per address carried
//! by several NICs (`eth2+eth3`), its members matched by MAC. One IPv4 and one
//! IPv6 default route at most, each from the first network whose gateway is
//! of that family: two default routes of one family would make the kernel
//! pick between networks arbitrarily. A bond carries the MTU, which the
//! bonding driver passes to its members. Addresses girder cannot render (no
//! interface, no MAC, a malformed value) are left out and said so in
//! [`Seed::notes`]; with nothing to render there is no `network-config`, and
//! cloud-init falls back to DHCP on the first NIC.
//!
//! [`write()`] formats the partition through a [`Window`] over the disk that
//! cannot reach outside the partition, so a mistake in the filesystem code
//! can at worst damage the seed, never the installed system.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Seek, SeekFrom, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use serde::Serialize;
use thiserror::Error;

use super::partition::{Device, MIB, Partition, display_size};
use crate::api::node::NodeAddress;

/// What the NoCloud source looks for (it accepts `cidata` too).
pub const VOLUME_LABEL: &str = "CIDATA";
/// The size of the seed partition the agent asks for: ample for any
/// user-data a Secret can hold (1 MiB).
pub const SEED_PARTITION_BYTES: u64 = 16 * MIB;
/// A seed partition is FAT12 (under 4 MiB) or FAT16, which fatfs picks by
/// size; from 512 MiB it would pick FAT32, which no seed needs.
const MAX_SEED_PARTITION_BYTES: u64 = 256 * MIB;
const MIN_SEED_PARTITION_BYTES: u64 = MIB;
const BOND_MODE: &str = "active-backup";
/// Link monitoring every 100 ms, as bonding's documentation advises; without
/// it an active-backup bond never notices a dead link.
const BOND_MII_MONITOR_MS: u32 = 100;

/// The NoCloud files for one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seed {
    pub meta_data: String,
    /// None when no address could be rendered.
    pub network_config: Option<String>,
    pub user_data: Vec<u8>,
    /// Addresses (or parts of them) left out, and why, for the node's status.
    pub notes: Vec<String>,
}

impl Seed {
    /// The files by name, as [`write()`] takes them.
    pub fn files(&self) -> Vec<(&'static str, &[u8])> {
        let mut files = vec![("meta-data", self.meta_data.as_bytes())];
        if let Some(network) = &self.network_config {
            files.push(("network-config", network.as_bytes()));
        }
        files.push(("user-data", &self.user_data));
        files
    }
}

#[derive(Debug, Error)]
pub enum SeedError {
    #[error("cannot render the cloud-init seed: {0}")]
    InvalidInput(String),
    #[error("cannot render the cloud-init {file}: {source}")]
    RenderFailed { file: &'static str, source: serde_json::Error },
    #[error("cannot write the cloud-init seed to partition {number} of disk {path}: {detail}")]
    PartitionUnsuitable { path: PathBuf, number: u32, detail: String },
    #[error("cannot format partition {number} of disk {path} as FAT for the cloud-init seed: {source}")]
    FormatFailed { path: PathBuf, number: u32, source: io::Error },
    #[error("cannot write {file} to the cloud-init seed on partition {number} of disk {path}: {source}")]
    FileWriteFailed { path: PathBuf, number: u32, file: String, source: io::Error },
    #[error("cannot flush the cloud-init seed to disk {path}: {source}")]
    SyncFailed { path: PathBuf, source: io::Error },
}

impl SeedError {
    /// A stable CamelCase reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            SeedError::InvalidInput(_) => "InvalidSeedInput",
            SeedError::RenderFailed { .. } => "SeedRenderFailed",
            SeedError::PartitionUnsuitable { .. } => "SeedPartitionUnsuitable",
            SeedError::FormatFailed { .. } => "SeedFormatFailed",
            SeedError::FileWriteFailed { .. } => "SeedWriteFailed",
            SeedError::SyncFailed { .. } => "DiskWriteFailed",
        }
    }
}

#[derive(Serialize)]
struct MetaData<'a> {
    #[serde(rename = "instance-id")]
    instance_id: &'a str,
    #[serde(rename = "local-hostname")]
    local_hostname: &'a str,
}

#[derive(Serialize, Default)]
struct NetworkConfig {
    version: u8,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    ethernets: BTreeMap<String, Interface>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    bonds: BTreeMap<String, Interface>,
}

/// An `ethernets` or a `bonds` entry; the fields of the other kind stay empty.
#[derive(Serialize, Default, Clone, PartialEq)]
#[serde(rename_all = "kebab-case")]
struct Interface {
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    match_: Option<MacMatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    set_name: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    interfaces: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BondParameters>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    addresses: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    routes: Vec<Route>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nameservers: Option<Nameservers>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mtu: Option<u32>,
}

#[derive(Serialize, Clone, PartialEq)]
struct MacMatch {
    macaddress: String,
}

#[derive(Serialize, Clone, PartialEq)]
#[serde(rename_all = "kebab-case")]
struct BondParameters {
    mode: &'static str,
    mii_monitor_interval: u32,
}

#[derive(Serialize, Clone, PartialEq)]
struct Route {
    to: &'static str,
    via: String,
}

#[derive(Serialize, Default, Clone, PartialEq)]
struct Nameservers {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    addresses: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    search: Vec<String>,
}

/// Renders the NoCloud files: `meta-data` from the instance ID and host
/// name, `network-config` from the node's addresses, `user-data` as given.
pub fn render(
    instance_id: &str,
    local_hostname: &str,
    addresses: &[NodeAddress],
    user_data: &[u8],
) -> Result<Seed, SeedError> {
    if instance_id.trim().is_empty() {
        return Err(SeedError::InvalidInput("the instance ID is empty".into()));
    }
    if local_hostname.trim().is_empty() {
        return Err(SeedError::InvalidInput("the host name is empty".into()));
    }
    let meta_data = serde_json::to_string_pretty(&MetaData { instance_id, local_hostname })
        .map_err(|source| SeedError::RenderFailed { file: "meta-data", source })?;
    let (config, notes) = network_config(addresses);
    let network_config = if config.ethernets.is_empty() {
        None
    } else {
        let text = serde_json::to_string_pretty(&config)
            .map_err(|source| SeedError::RenderFailed { file: "network-config", source })?;
        Some(text + "\n")
    };
    Ok(Seed { meta_data: meta_data + "\n", network_config, user_data: user_data.to_vec(), notes })
}

/// What one address asks for, once checked.
struct Wanted {
    addresses: Vec<String>,
    routes: Vec<Route>,
    nameservers: Option<Nameservers>,
    mtu: Option<u32>,
}

/// Where an interface named in the addresses was rendered, so that a second
/// network on the same interface joins it.
struct Rendered {
    macs: Vec<String>,
    bond: bool,
    key: String,
}

fn network_config(addresses: &[NodeAddress]) -> (NetworkConfig, Vec<String>) {
    let mut config = NetworkConfig { version: 2, ..NetworkConfig::default() };
    let mut notes = Vec::new();
    let mut rendered: BTreeMap<String, Rendered> = BTreeMap::new();
    let mut macs_used: BTreeSet<String> = BTreeSet::new();
    let mut names = Names::new(addresses);
    let mut defaults = DefaultRoutes::default();

    for address in addresses {
        let network = &address.network;
        let Some(interface) = address.interface.as_deref().map(str::trim).filter(|i| !i.is_empty()) else {
            notes.push(format!("network {network}: no interface, so it is not configured"));
            continue;
        };
        if address.macs.is_empty() {
            notes.push(format!("network {network}: interface {interface} has no MAC address, so it is not configured"));
            continue;
        }
        let Some(macs) = address.macs.iter().map(|m| normalize_mac(m)).collect::<Option<Vec<String>>>() else {
            notes.push(format!(
                "network {network}: interface {interface} has a malformed MAC address among {:?}, so it is not configured",
                address.macs
            ));
            continue;
        };
        // Checked before `wanted`, which hands out the default routes: a
        // network left out must not take one.
        let previous = rendered.get(interface);
        if previous.is_some_and(|p| p.macs != macs) {
            notes.push(format!(
                "network {network}: interface {interface} has other MAC addresses than on another network, so it is not configured"
            ));
            continue;
        }
        let distinct: BTreeSet<&String> = macs.iter().collect();
        let taken = macs.iter().find(|m| macs_used.contains(*m));
        if previous.is_none() && (distinct.len() != macs.len() || taken.is_some()) {
            notes.push(format!(
                "network {network}: a MAC address of interface {interface} appears twice or belongs to another interface, so it is not configured"
            ));
            continue;
        }
        let wanted = wanted(address, interface, &mut defaults, &mut notes);
        if let Some(previous) = previous {
            let entry = if previous.bond { &mut config.bonds } else { &mut config.ethernets }.get_mut(&previous.key);
            if let Some(entry) = entry {
                merge(entry, wanted, network, &mut notes);
            }
            continue;
        }
        macs_used.extend(macs.iter().cloned());

        let mut entry = Interface {
            addresses: wanted.addresses,
            routes: wanted.routes,
            nameservers: wanted.nameservers,
            mtu: wanted.mtu,
            ..Interface::default()
        };
        let (key, bond) = if let [mac] = &macs[..] {
            let (key, own) = names.own_or_generated(interface, "nic");
            entry.match_ = Some(MacMatch { macaddress: mac.clone() });
            entry.set_name = own.then(|| interface.to_string());
            config.ethernets.insert(key.clone(), entry);
            (key, false)
        } else {
            // `eth2+eth3` names the members; another name (`bond0`) names the bond.
            let members: Vec<&str> = interface.split('+').map(str::trim).collect();
            let named_members = members.len() == macs.len();
            let key = if interface.contains('+') {
                names.generated("bond")
            } else {
                names.own_or_generated(interface, "bond").0
            };
            for (index, mac) in macs.iter().enumerate() {
                let (member_key, own) = match named_members.then(|| members[index]) {
                    Some(name) => names.own_or_generated(name, "nic"),
                    None => (names.generated("nic"), false),
                };
                let ethernet = Interface {
                    match_: Some(MacMatch { macaddress: mac.clone() }),
                    set_name: own.then(|| member_key.clone()),
                    ..Interface::default()
                };
                config.ethernets.insert(member_key.clone(), ethernet);
                entry.interfaces.push(member_key);
            }
            entry.parameters = Some(BondParameters { mode: BOND_MODE, mii_monitor_interval: BOND_MII_MONITOR_MS });
            config.bonds.insert(key.clone(), entry);
            (key, true)
        };
        rendered.insert(interface.to_string(), Rendered { macs, bond, key });
    }
    (config, notes)
}

/// Checks an address's values, leaving out (with a note) what is malformed.
fn wanted(address: &NodeAddress, interface: &str, defaults: &mut DefaultRoutes, notes: &mut Vec<String>) -> Wanted {
    let network = &address.network;
    let mut addresses = Vec::new();
    if let Some(ipv4) = &address.ipv4 {
        match parse_cidr(ipv4, 32) {
            Some(IpAddr::V4(_)) => addresses.push(ipv4.trim().to_string()),
            _ => notes.push(format!("network {network}: IPv4 address {ipv4:?} is not an address with a prefix length")),
        }
    }
    if let Some(ipv6) = &address.ipv6 {
        match parse_cidr(ipv6, 128) {
            Some(IpAddr::V6(_)) => addresses.push(ipv6.trim().to_string()),
            _ => notes.push(format!("network {network}: IPv6 address {ipv6:?} is not an address with a prefix length")),
        }
    }
    let mut routes = Vec::new();
    if let Some(gateway) = &address.gateway {
        match gateway.trim().parse::<IpAddr>() {
            Ok(gateway) => {
                let has_family =
                    addresses.iter().any(|a| parse_cidr(a, 128).is_some_and(|ip| ip.is_ipv4() == gateway.is_ipv4()));
                if !has_family {
                    notes.push(format!(
                        "network {network}: gateway {gateway} is not used, {interface} has no address of its family"
                    ));
                } else if let Some(first) = defaults.claim(gateway, network) {
                    notes.push(format!(
                        "network {network}: gateway {gateway} is not used as a default route; network {first} provides it"
                    ));
                } else {
                    routes.push(Route { to: "default", via: gateway.to_string() });
                }
            }
            Err(_) => notes.push(format!("network {network}: gateway {gateway:?} is not an IP address")),
        }
    }
    let mut servers = Vec::new();
    for server in &address.dns_servers {
        match server.trim().parse::<IpAddr>() {
            Ok(ip) => servers.push(ip.to_string()),
            Err(_) => notes.push(format!("network {network}: DNS server {server:?} is not an IP address")),
        }
    }
    let search: Vec<String> =
        address.domain.iter().map(|d| d.trim().trim_end_matches('.').to_string()).filter(|d| !d.is_empty()).collect();
    let nameservers = (!servers.is_empty() || !search.is_empty()).then_some(Nameservers { addresses: servers, search });
    let mtu = address.mtu.and_then(|mtu| match u32::try_from(mtu) {
        Ok(mtu @ 68..=65535) => Some(mtu),
        _ => {
            notes.push(format!("network {network}: MTU {mtu} is out of range (68 to 65535)"));
            None
        }
    });
    Wanted { addresses, routes, nameservers, mtu }
}

/// A second network on an interface already rendered adds its addresses,
/// route and name servers; the first network's MTU stays.
fn merge(entry: &mut Interface, wanted: Wanted, network: &str, notes: &mut Vec<String>) {
    entry.addresses.extend(wanted.addresses);
    entry.routes.extend(wanted.routes);
    if let Some(more) = wanted.nameservers {
        let servers = entry.nameservers.get_or_insert_with(Nameservers::default);
        for address in more.addresses {
            if !servers.addresses.contains(&address) {
                servers.addresses.push(address);
            }
        }
        for domain in more.search {
            if !servers.search.contains(&domain) {
                servers.search.push(domain);
            }
        }
    }
    match (entry.mtu, wanted.mtu) {
        (None, Some(mtu)) => entry.mtu = Some(mtu),
        (Some(first), Some(mtu)) if first != mtu => notes.push(format!(
            "network {network}: MTU {mtu} is not used; the interface keeps {first} from another network"
        )),
        _ => {}
    }
}

/// The networks that provide the IPv4 and the IPv6 default route.
#[derive(Default)]
struct DefaultRoutes {
    ipv4: Option<String>,
    ipv6: Option<String>,
}

impl DefaultRoutes {
    /// Takes the default route of the gateway's family for `network`, or
    /// returns the network that already has it.
    fn claim(&mut self, gateway: IpAddr, network: &str) -> Option<String> {
        let slot = if gateway.is_ipv4() { &mut self.ipv4 } else { &mut self.ipv6 };
        match slot {
            Some(first) => Some(first.clone()),
            None => {
                *slot = Some(network.to_string());
                None
            }
        }
    }
}

/// Keys of `ethernets` and `bonds`: an interface's own name when it is a
/// valid Linux name, else a generated one (`nic0`, `bond0`) that no address
/// names. Keys double as interface names for cloud-init's non-netplan
/// renderers, so generated ones are valid names too.
struct Names {
    /// Every name the addresses give, and every generated one.
    taken: BTreeSet<String>,
    /// Keys handed out.
    used: BTreeSet<String>,
    next: BTreeMap<&'static str, usize>,
}

impl Names {
    fn new(addresses: &[NodeAddress]) -> Self {
        let taken = addresses
            .iter()
            .filter_map(|a| a.interface.as_deref())
            .flat_map(|i| i.split('+'))
            .map(|i| i.trim().to_string())
            .collect();
        Names { taken, used: BTreeSet::new(), next: BTreeMap::new() }
    }

    /// The interface's own name, and true, unless it is not a valid name or
    /// is a key already (contradictory addresses): then a generated one.
    fn own_or_generated(&mut self, name: &str, prefix: &'static str) -> (String, bool) {
        if is_interface_name(name) && self.used.insert(name.to_string()) {
            (name.to_string(), true)
        } else {
            (self.generated(prefix), false)
        }
    }

    fn generated(&mut self, prefix: &'static str) -> String {
        let next = self.next.entry(prefix).or_insert(0);
        loop {
            let candidate = format!("{prefix}{next}");
            *next += 1;
            if self.taken.insert(candidate.clone()) {
                self.used.insert(candidate.clone());
                return candidate;
            }
        }
    }
}

/// What Linux accepts as an interface name: 1 to 15 bytes, no `/`, `:` or
/// white space, not `.` or `..`.
fn is_interface_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| b == b'/' || b == b':' || b == b'+' || b.is_ascii_whitespace() || b.is_ascii_control())
}

/// `aa:bb:cc:dd:ee:ff` in lower case, or None when it is not a MAC address.
fn normalize_mac(mac: &str) -> Option<String> {
    let mac = mac.trim().to_ascii_lowercase();
    let octets: Vec<&str> = mac.split([':', '-']).collect();
    let valid = octets.len() == 6 && octets.iter().all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()));
    valid.then(|| octets.join(":"))
}

/// The address of `addr/prefix` when the prefix is within `max`.
fn parse_cidr(text: &str, max: u8) -> Option<IpAddr> {
    let (address, prefix) = text.trim().split_once('/')?;
    let prefix: u8 = prefix.parse().ok()?;
    let ip = match address.parse::<Ipv4Addr>() {
        Ok(v4) => IpAddr::V4(v4),
        Err(_) => IpAddr::V6(address.parse::<Ipv6Addr>().ok()?),
    };
    let limit = if ip.is_ipv4() { 32 } else { 128 };
    (prefix <= limit.min(max)).then_some(ip)
}

/// A Read + Write + Seek view of one byte range of a device: reads stop at
/// its end and writes past it fail, so the filesystem code given it cannot
/// touch anything outside the partition.
pub struct Window<'a> {
    device: &'a Device,
    start: u64,
    len: u64,
    position: u64,
}

impl<'a> Window<'a> {
    /// A window over `len` bytes at `start`, which must lie within the device.
    pub fn new(device: &'a Device, start: u64, len: u64) -> io::Result<Self> {
        if start.checked_add(len).is_none_or(|end| end > device.size_bytes()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bytes {start} to {} are not all on the device", start.saturating_add(len)),
            ));
        }
        Ok(Window { device, start, len, position: 0 })
    }
}

impl Read for Window<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.position)) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.device.read_at(self.start + self.position, &mut buf[..n])?;
        self.position += n as u64;
        Ok(n)
    }
}

impl io::Write for Window<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.position)) as usize;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("a write at byte {} of the partition would pass its end ({} bytes)", self.position, self.len),
            ));
        }
        self.device.write_at(self.start + self.position, &buf[..n])?;
        self.position += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Window<'_> {
    fn seek(&mut self, target: SeekFrom) -> io::Result<u64> {
        let position = match target {
            SeekFrom::Start(offset) => Some(offset),
            SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
            SeekFrom::End(delta) => self.len.checked_add_signed(delta),
        };
        let position = position.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "a seek before the start of the partition or out of range")
        })?;
        self.position = position;
        Ok(position)
    }
}

/// Formats `partition` as FAT labelled `CIDATA`, with the device's logical
/// sector size (Linux will not mount a FAT whose sectors are smaller than the
/// disk's), writes `files` at its root, and syncs the disk.
pub fn write(device: &mut Device, partition: &Partition, files: &[(&str, &[u8])]) -> Result<(), SeedError> {
    let path = device.path().to_path_buf();
    let number = partition.number;
    let unsuitable = |detail: String| SeedError::PartitionUnsuitable { path: path.clone(), number, detail };
    let sector_size = device.sector_size();
    let size = partition.size_bytes;
    if !(MIN_SEED_PARTITION_BYTES..=MAX_SEED_PARTITION_BYTES).contains(&size) {
        return Err(unsuitable(format!(
            "it is {}, a seed partition is {} to {}",
            display_size(size),
            display_size(MIN_SEED_PARTITION_BYTES),
            display_size(MAX_SEED_PARTITION_BYTES)
        )));
    }
    if !partition.start_bytes.is_multiple_of(sector_size) || !size.is_multiple_of(sector_size) {
        return Err(unsuitable(format!("it is not aligned to the disk's {sector_size}-byte sectors")));
    }
    for (name, _) in files {
        let valid = !name.is_empty()
            && name.len() <= 255
            && *name != "."
            && *name != ".."
            && !name.chars().any(|c| matches!(c, '/' | '\\' | '\0'));
        if !valid {
            return Err(SeedError::InvalidInput(format!("{name:?} is not a file name")));
        }
    }
    let mut window = Window::new(device, partition.start_bytes, size).map_err(|e| unsuitable(e.to_string()))?;

    let format_failed = |source: io::Error| SeedError::FormatFailed { path: path.clone(), number, source };
    let mut label = [b' '; 11];
    label[..VOLUME_LABEL.len()].copy_from_slice(VOLUME_LABEL.as_bytes());
    // Both fit: the sector size is 512 to 4096 and the partition at most 256 MiB.
    let options = fatfs::FormatVolumeOptions::new()
        .bytes_per_sector(sector_size as u16)
        .total_sectors((size / sector_size) as u32)
        .volume_label(label)
        .volume_id(rand::random());
    fatfs::format_volume(&mut window, options).map_err(format_failed)?;
    window.seek(SeekFrom::Start(0)).map_err(format_failed)?;
    let options = fatfs::FsOptions::new().time_provider(&CLOCK);
    let filesystem = fatfs::FileSystem::new(&mut window, options).map_err(format_failed)?;
    {
        let root = filesystem.root_dir();
        for (name, contents) in files {
            let write_failed = |source: io::Error| SeedError::FileWriteFailed {
                path: path.clone(),
                number,
                file: name.to_string(),
                source,
            };
            let mut file = root.create_file(name).map_err(write_failed)?;
            file.truncate().map_err(write_failed)?;
            file.write_all(contents).map_err(write_failed)?;
            file.flush().map_err(write_failed)?;
        }
    }
    filesystem.unmount().map_err(format_failed)?;
    device.sync().map_err(|source| SeedError::SyncFailed { path: path.clone(), source })?;
    tracing::info!(disk = %path.display(), partition = number, files = files.len(), "wrote the cloud-init seed");
    Ok(())
}

/// File times in UTC from the system clock: fatfs without its `chrono`
/// feature would write the invalid date 1980-00-00.
#[derive(Debug)]
struct UtcClock;

static CLOCK: UtcClock = UtcClock;

impl fatfs::TimeProvider for UtcClock {
    fn get_current_date(&self) -> fatfs::Date {
        self.get_current_date_time().date
    }

    fn get_current_date_time(&self) -> fatfs::DateTime {
        let seconds =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let (year, month, day) = civil_date(seconds / 86_400);
        let time_of_day = seconds % 86_400;
        let (hour, min, sec) = (time_of_day / 3600, time_of_day / 60 % 60, time_of_day % 60);
        // FAT dates span 1980 to 2107.
        let date = match year {
            ..1980 => fatfs::Date { year: 1980, month: 1, day: 1 },
            2108.. => fatfs::Date { year: 2107, month: 12, day: 31 },
            _ => fatfs::Date { year: year as u16, month: month as u16, day: day as u16 },
        };
        let time = fatfs::Time { hour: hour as u16, min: min as u16, sec: sec as u16, millis: 0 };
        fatfs::DateTime { date, time }
    }
}

/// The proleptic Gregorian (year, month, day) of a count of days since
/// 1970-01-01, by counting 400-year eras of 146,097 days from 0000-03-01.
fn civil_date(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months from March, so that February (and a leap day) comes last.
    let march_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * march_month + 2) / 5 + 1;
    let month = if march_month < 10 { march_month + 3 } else { march_month - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::partition::testing::{TempDisk, command, output, run};
    use crate::agent::partition::{append_partition, read_table};
    use serde_yaml::Value;

    fn address(network: &str, interface: &str, macs: &[&str]) -> NodeAddress {
        NodeAddress {
            network: network.into(),
            interface: Some(interface.into()),
            macs: macs.iter().map(|m| m.to_string()).collect(),
            ..NodeAddress::default()
        }
    }

    fn network_yaml(seed: &Seed) -> Value {
        serde_yaml::from_str(seed.network_config.as_deref().expect("a network-config")).unwrap()
    }

    #[test]
    fn one_network() {
        let provisioning = NodeAddress {
            ipv4: Some("10.0.0.23/24".into()),
            gateway: Some("10.0.0.1".into()),
            dns_servers: vec!["10.0.0.2".into(), "10.0.0.3".into()],
            domain: Some("lab.example".into()),
            mtu: Some(9000),
            ..address("provisioning", "eth0", &["52:54:00:12:34:56"])
        };
        let seed = render("lab/node-1", "node-1", &[provisioning], b"#cloud-config\nruncmd: []\n").unwrap();
        assert_eq!(seed.notes, Vec::<String>::new());
        assert_eq!(seed.user_data, b"#cloud-config\nruncmd: []\n");

        let meta: Value = serde_yaml::from_str(&seed.meta_data).unwrap();
        assert_eq!(meta["instance-id"], "lab/node-1");
        assert_eq!(meta["local-hostname"], "node-1");

        let network = network_yaml(&seed);
        assert_eq!(network["version"], 2);
        let eth0 = &network["ethernets"]["eth0"];
        assert_eq!(eth0["match"]["macaddress"], "52:54:00:12:34:56");
        assert_eq!(eth0["set-name"], "eth0");
        assert_eq!(eth0["addresses"], serde_yaml::from_str::<Value>("[10.0.0.23/24]").unwrap());
        assert_eq!(eth0["routes"], serde_yaml::from_str::<Value>("[{to: default, via: 10.0.0.1}]").unwrap());
        assert_eq!(eth0["nameservers"]["addresses"], serde_yaml::from_str::<Value>("[10.0.0.2, 10.0.0.3]").unwrap());
        assert_eq!(eth0["nameservers"]["search"], serde_yaml::from_str::<Value>("[lab.example]").unwrap());
        assert_eq!(eth0["mtu"], 9000);
        assert!(network.get("bonds").is_none());

        let names: Vec<&str> = seed.files().iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["meta-data", "network-config", "user-data"]);
    }

    /// cloud-init reads the seed with PyYAML, which takes a bare
    /// `52:54:00:12:34:56` for a base-60 number and `no` for false.
    #[test]
    fn cloud_inits_yaml_parser_reads_macs_and_names_as_strings() {
        let seed = render("no", "on", &[address("p", "eth0", &["52:54:00:12:34:56"])], b"").unwrap();
        let script = "import json, sys, yaml\nprint(json.dumps([yaml.safe_load(open(p)) for p in sys.argv[1:]]))";
        let dir = TempDisk::new("seed-pyyaml", 0);
        let (meta, network) = (dir.path.with_extension("meta"), dir.path.with_extension("network"));
        std::fs::write(&meta, &seed.meta_data).unwrap();
        std::fs::write(&network, seed.network_config.as_deref().unwrap()).unwrap();
        let mut python = command("python3", "python3-yaml");
        python.args(["-c", script]).arg(&meta).arg(&network);
        let result = output(python, None);
        let _ = (std::fs::remove_file(&meta), std::fs::remove_file(&network));
        assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
        let parsed: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
        assert_eq!(parsed[0]["instance-id"], "no");
        assert_eq!(parsed[0]["local-hostname"], "on");
        assert_eq!(parsed[1]["ethernets"]["eth0"]["match"]["macaddress"], "52:54:00:12:34:56");
    }

    #[test]
    fn two_networks_with_a_gateway_each_get_one_default_route() {
        let first = NodeAddress {
            ipv4: Some("10.0.0.23/24".into()),
            gateway: Some("10.0.0.1".into()),
            ..address("provisioning", "eth0", &["aa:00:00:00:00:01"])
        };
        let second = NodeAddress {
            ipv4: Some("10.1.0.23/24".into()),
            gateway: Some("10.1.0.1".into()),
            ..address("storage", "eth1", &["AA-00-00-00-00-02"])
        };
        let seed = render("id", "host", &[first, second], b"").unwrap();
        let network = network_yaml(&seed);
        assert_eq!(network["ethernets"]["eth0"]["routes"][0]["via"], "10.0.0.1");
        assert!(network["ethernets"]["eth1"].get("routes").is_none());
        assert_eq!(network["ethernets"]["eth1"]["match"]["macaddress"], "aa:00:00:00:00:02");
        assert_eq!(
            seed.notes,
            ["network storage: gateway 10.1.0.1 is not used as a default route; network provisioning provides it"]
        );
    }

    #[test]
    fn a_bond_matches_its_members_by_mac() {
        let bond = NodeAddress {
            ipv4: Some("10.2.0.5/24".into()),
            mtu: Some(9000),
            ..address("storage", "eth2+eth3", &["cc:00:00:00:00:01", "cc:00:00:00:00:02"])
        };
        let seed = render("id", "host", &[bond], b"").unwrap();
        assert_eq!(seed.notes, Vec::<String>::new());
        let network = network_yaml(&seed);
        for (member, mac) in [("eth2", "cc:00:00:00:00:01"), ("eth3", "cc:00:00:00:00:02")] {
            let ethernet = &network["ethernets"][member];
            assert_eq!(ethernet["match"]["macaddress"], mac);
            assert_eq!(ethernet["set-name"], member);
            assert!(ethernet.get("addresses").is_none());
        }
        let bond0 = &network["bonds"]["bond0"];
        assert_eq!(bond0["interfaces"], serde_yaml::from_str::<Value>("[eth2, eth3]").unwrap());
        assert_eq!(bond0["parameters"]["mode"], "active-backup");
        assert_eq!(bond0["parameters"]["mii-monitor-interval"], 100);
        assert_eq!(bond0["addresses"][0], "10.2.0.5/24");
        assert_eq!(bond0["mtu"], 9000);
    }

    #[test]
    fn a_bond_of_nics_without_names_gets_generated_member_names() {
        // The conduit names a NIC without a name by its MAC.
        let bond =
            address("storage", "cc:00:00:00:00:01+cc:00:00:00:00:02", &["cc:00:00:00:00:01", "cc:00:00:00:00:02"]);
        let network = network_yaml(&render("id", "host", &[bond], b"").unwrap());
        assert_eq!(network["bonds"]["bond0"]["interfaces"], serde_yaml::from_str::<Value>("[nic0, nic1]").unwrap());
        assert_eq!(network["ethernets"]["nic1"]["match"]["macaddress"], "cc:00:00:00:00:02");
        assert!(network["ethernets"]["nic1"].get("set-name").is_none());
    }

    #[test]
    fn ipv6_only() {
        let v6 = NodeAddress {
            ipv6: Some("2001:db8::10/64".into()),
            gateway: Some("2001:db8::1".into()),
            dns_servers: vec!["2001:db8::53".into()],
            ..address("v6", "eno1", &["aa:00:00:00:00:01"])
        };
        let seed = render("id", "host", &[v6], b"").unwrap();
        let eno1 = &network_yaml(&seed)["ethernets"]["eno1"];
        assert_eq!(eno1["addresses"], serde_yaml::from_str::<Value>("['2001:db8::10/64']").unwrap());
        assert_eq!(eno1["routes"][0]["to"], "default");
        assert_eq!(eno1["routes"][0]["via"], "2001:db8::1");
        assert_eq!(eno1["nameservers"]["addresses"][0], "2001:db8::53");
    }

    #[test]
    fn one_default_route_per_address_family() {
        let v6 = NodeAddress {
            ipv6: Some("2001:db8::10/64".into()),
            gateway: Some("2001:db8::1".into()),
            ..address("v6", "eth0", &["aa:00:00:00:00:01"])
        };
        let v4 = NodeAddress {
            ipv4: Some("10.0.0.5/24".into()),
            gateway: Some("10.0.0.1".into()),
            ..address("v4", "eth1", &["aa:00:00:00:00:02"])
        };
        let seed = render("id", "host", &[v6, v4], b"").unwrap();
        let network = network_yaml(&seed);
        assert_eq!(network["ethernets"]["eth0"]["routes"][0]["via"], "2001:db8::1");
        assert_eq!(network["ethernets"]["eth1"]["routes"][0]["via"], "10.0.0.1");
        assert!(seed.notes.is_empty(), "{:?}", seed.notes);
    }

    #[test]
    fn a_network_left_out_takes_no_default_route() {
        let first = NodeAddress { ipv4: Some("10.0.0.5/24".into()), ..address("a", "eth0", &["aa:00:00:00:00:01"]) };
        let clash = NodeAddress {
            ipv4: Some("10.1.0.5/24".into()),
            gateway: Some("10.1.0.1".into()),
            ..address("b", "eth1", &["aa:00:00:00:00:01"])
        };
        let third = NodeAddress {
            ipv4: Some("10.2.0.5/24".into()),
            gateway: Some("10.2.0.1".into()),
            ..address("c", "eth2", &["aa:00:00:00:00:03"])
        };
        let seed = render("id", "host", &[first, clash, third], b"").unwrap();
        let network = network_yaml(&seed);
        assert!(network["ethernets"].get("eth1").is_none());
        assert_eq!(network["ethernets"]["eth2"]["routes"][0]["via"], "10.2.0.1");
        assert_eq!(seed.notes.len(), 1, "{:?}", seed.notes);
        assert!(seed.notes[0].contains("belongs to another interface"));
    }

    #[test]
    fn two_networks_on_one_interface_share_its_entry() {
        let first = NodeAddress {
            ipv4: Some("10.0.0.5/24".into()),
            dns_servers: vec!["10.0.0.2".into()],
            ..address("a", "eth0", &["aa:00:00:00:00:01"])
        };
        let second = NodeAddress {
            ipv4: Some("10.9.0.5/24".into()),
            dns_servers: vec!["10.0.0.2".into(), "10.9.0.2".into()],
            domain: Some("b.example".into()),
            ..address("b", "eth0", &["aa:00:00:00:00:01"])
        };
        let network = network_yaml(&render("id", "host", &[first, second], b"").unwrap());
        let eth0 = &network["ethernets"]["eth0"];
        assert_eq!(eth0["addresses"], serde_yaml::from_str::<Value>("[10.0.0.5/24, 10.9.0.5/24]").unwrap());
        assert_eq!(eth0["nameservers"]["addresses"], serde_yaml::from_str::<Value>("[10.0.0.2, 10.9.0.2]").unwrap());
        assert_eq!(eth0["nameservers"]["search"][0], "b.example");
    }

    #[test]
    fn addresses_without_interface_or_mac_are_skipped_with_a_note() {
        let no_interface = NodeAddress { network: "a".into(), ipv4: Some("10.0.0.5/24".into()), ..Default::default() };
        let no_mac = NodeAddress { ipv4: Some("10.1.0.5/24".into()), ..address("b", "eth1", &[]) };
        let bad_mac = NodeAddress { ipv4: Some("10.2.0.5/24".into()), ..address("c", "eth2", &["not-a-mac"]) };
        let seed = render("id", "host", &[no_interface, no_mac, bad_mac], b"user").unwrap();
        assert_eq!(seed.network_config, None, "cloud-init keeps its own default");
        assert_eq!(seed.notes.len(), 3, "{:?}", seed.notes);
        assert!(seed.notes[0].starts_with("network a: no interface"));
        assert!(seed.notes[1].starts_with("network b: interface eth1 has no MAC address"));
        assert!(seed.notes[2].starts_with("network c: interface eth2 has a malformed MAC address"));
        let names: Vec<&str> = seed.files().iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["meta-data", "user-data"]);
    }

    #[test]
    fn malformed_values_are_left_out_with_a_note() {
        let odd = NodeAddress {
            ipv4: Some("10.0.0.5".into()),
            ipv6: Some("2001:db8::5/64".into()),
            gateway: Some("10.0.0.1".into()),
            dns_servers: vec!["dns.example".into()],
            mtu: Some(0),
            ..address("odd", "eth0", &["aa:00:00:00:00:01"])
        };
        let seed = render("id", "host", &[odd], b"").unwrap();
        let eth0 = &network_yaml(&seed)["ethernets"]["eth0"];
        assert_eq!(eth0["addresses"], serde_yaml::from_str::<Value>("['2001:db8::5/64']").unwrap());
        assert!(eth0.get("routes").is_none() && eth0.get("nameservers").is_none() && eth0.get("mtu").is_none());
        assert_eq!(seed.notes.len(), 4, "{:?}", seed.notes);
        assert!(seed.notes[1].contains("gateway 10.0.0.1 is not used, eth0 has no address of its family"));
    }

    #[test]
    fn an_empty_instance_id_is_refused() {
        assert_eq!(render(" ", "host", &[], b"").unwrap_err().reason(), "InvalidSeedInput");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(19_723), (2024, 1, 1));
        assert_eq!(civil_date(20_000), (2024, 10, 4));
    }

    /// Writes a seed to the end of a disk image and reads it back with
    /// blkid, mtools and fsck.fat.
    fn write_and_check(disk: &TempDisk, sector_size: u64, files: &[(&str, &[u8])]) {
        let mut device = disk.device().with_logical_sector_size(sector_size).unwrap();
        let partition = append_partition(&mut device, SEED_PARTITION_BYTES, "config-2").unwrap();
        let size = std::fs::metadata(&disk.path).unwrap().len();
        let outside = || {
            let after = partition.end_bytes();
            let head = crc32fast::hash(&disk.bytes(0, partition.start_bytes as usize));
            (head, crc32fast::hash(&disk.bytes(after, (size - after) as usize)))
        };
        let before = outside();
        write(&mut device, &partition, files).unwrap();
        assert_eq!(outside(), before, "nothing outside the partition changed");

        let offset = partition.start_bytes.to_string();
        let blkid = run("blkid", "util-linux", &["-p", "-O", &offset], &disk.path, None);
        let blkid = String::from_utf8_lossy(&blkid.stdout);
        assert!(blkid.contains(r#" LABEL="CIDATA""#) && blkid.contains(r#" TYPE="vfat""#), "{blkid}");
        assert!(blkid.contains(&format!(r#"BLOCK_SIZE="{sector_size}""#)), "{blkid}");

        let image = format!("{}@@{offset}", disk.path.display());
        let mut mdir = command("mdir", "mtools");
        mdir.args(["-i", &image, "-b", "::"]);
        let listing = output(mdir, None);
        let mut listed: Vec<String> =
            String::from_utf8_lossy(&listing.stdout).lines().map(|l| l.trim_start_matches("::/").to_string()).collect();
        listed.sort();
        let mut expected: Vec<String> = files.iter().map(|(name, _)| name.to_string()).collect();
        expected.sort();
        assert_eq!(listed, expected, "{}", String::from_utf8_lossy(&listing.stderr));
        for (name, contents) in files {
            let mut mtype = command("mtype", "mtools");
            mtype.args(["-i", &image, &format!("::{name}")]);
            assert_eq!(output(mtype, None).stdout, *contents, "{name}");
        }

        // fsck.fat checks a filesystem image, not a range of one.
        let copy = TempDisk::new("seed-fsck", 0);
        std::fs::write(&copy.path, disk.bytes(partition.start_bytes, partition.size_bytes as usize)).unwrap();
        let fsck = run("fsck.fat", "dosfstools", &["-n"], &copy.path, None);
        assert!(fsck.status.success(), "{}", String::from_utf8_lossy(&fsck.stdout));
        assert_eq!(read_table(&device).unwrap().unwrap().partitions.last(), Some(&partition));
    }

    #[test]
    fn a_seed_written_at_the_end_of_a_gpt_disk_is_a_cidata_fat() {
        let disk = TempDisk::new("seed-gpt", 64 * MIB);
        disk.sfdisk("label: gpt\nsize=8MiB, type=uefi\nsize=16MiB, type=linux\n");
        disk.grow(128 * MIB);
        let seed = render("lab/node-1", "node-1", &[address("p", "eth0", &["52:54:00:12:34:56"])], b"#cloud-config\n")
            .unwrap();
        write_and_check(&disk, 512, &seed.files());
    }

    #[test]
    fn a_seed_on_an_mbr_disk_with_large_user_data() {
        let disk = TempDisk::new("seed-mbr", 64 * MIB);
        disk.sfdisk("label: dos\nsize=8MiB, type=83\n");
        disk.grow(128 * MIB);
        let user_data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        write_and_check(&disk, 512, &[("meta-data", b"{}\n"), ("user-data", &user_data)]);
    }

    #[test]
    fn a_seed_on_a_disk_with_4096_byte_sectors() {
        let disk = TempDisk::new("seed-4k", 64 * MIB);
        let created = run("fdisk", "fdisk", &["-b", "4096"], &disk.path, Some("g\nn\n1\n\n+8M\nw\n"));
        assert!(created.status.success());
        disk.grow(128 * MIB);
        write_and_check(&disk, 4096, &[("meta-data", b"{}\n"), ("user-data", b"#cloud-config\n")]);
    }

    #[test]
    fn the_window_keeps_writes_inside_the_partition() {
        let disk = TempDisk::filled("seed-window", 4 * MIB);
        let device = disk.device();
        let before = disk.bytes(0, 4 * MIB as usize);
        let mut window = Window::new(&device, MIB, MIB).unwrap();
        window.seek(SeekFrom::End(-2)).unwrap();
        assert_eq!(window.write(&[0, 0, 0, 0]).unwrap(), 2, "a write stops at the end");
        assert_eq!(window.write(&[0]).unwrap_err().kind(), io::ErrorKind::WriteZero);
        window.seek(SeekFrom::Start(3 * MIB)).unwrap();
        assert!(window.write_all(&[0]).is_err(), "far past the end");
        assert!(window.seek(SeekFrom::Current(-(4 * MIB as i64))).is_err(), "before the start");
        let mut after = before.clone();
        after[2 * MIB as usize - 2..2 * MIB as usize].fill(0);
        assert_eq!(disk.bytes(0, 4 * MIB as usize), after);

        window.seek(SeekFrom::End(-3)).unwrap();
        let mut buf = [0xffu8; 8];
        assert_eq!(window.read(&mut buf).unwrap(), 3, "a read stops at the end");
        assert_eq!(window.read(&mut buf).unwrap(), 0);
        assert!(Window::new(&device, 3 * MIB, 2 * MIB).is_err(), "a window past the device");
    }

    #[test]
    fn unsuitable_partitions_are_refused() {
        let disk = TempDisk::new("seed-unsuitable", 64 * MIB);
        let mut device = disk.device();
        let partition = |start_bytes, size_bytes| Partition {
            number: 3,
            start_bytes,
            size_bytes,
            partition_type: crate::agent::partition::PartitionType::Mbr(0x0c),
            name: None,
            guid: None,
        };
        for (start, size) in [(MIB, 64 * 1024), (60 * MIB, 16 * MIB), (MIB + 1, 16 * MIB), (0, 512 * MIB)] {
            let error = write(&mut device, &partition(start, size), &[]).unwrap_err();
            assert_eq!(error.reason(), "SeedPartitionUnsuitable", "{start} {size}: {error}");
            assert!(error.to_string().contains("partition 3 of disk"), "{error}");
        }
        let error = write(&mut device, &partition(MIB, 16 * MIB), &[("a/b", b"")]).unwrap_err();
        assert_eq!(error.reason(), "InvalidSeedInput");
    }
}
