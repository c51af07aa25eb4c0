//! What the PXE servers know of the API: nodes by boot MAC and the IPv4
//! networks, as one immutable snapshot rebuilt when a watched object changes.
//! Pure: built from API objects, no Kubernetes calls.

use crate::api::network::{DhcpMode, Network, RangeType};
use crate::api::node::{BareMetalNode, BootMode, BootProfile, NodePhase};
use crate::api::provisioning::{ProvisioningState, RunAction};
use kube::ResourceExt;
use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;

/// An Ethernet hardware address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Parses `aa:bb:cc:dd:ee:ff` or `aa-bb-cc-dd-ee-ff`, any case.
    pub fn parse(text: &str) -> Option<Mac> {
        let mut bytes = [0u8; 6];
        let mut parts = text.split([':', '-']);
        for byte in &mut bytes {
            let part = parts.next()?;
            if part.len() != 2 {
                return None;
            }
            *byte = u8::from_str_radix(part, 16).ok()?;
        }
        parts.next().is_none().then_some(Mac(bytes))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// An inclusive IPv4 range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Range {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

impl Ipv4Range {
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        self.start <= addr && addr <= self.end
    }

    pub fn len(&self) -> u64 {
        u64::from(u32::from(self.end)).saturating_sub(u64::from(u32::from(self.start))) + 1
    }

    pub fn is_empty(&self) -> bool {
        self.end < self.start
    }
}

/// What the PXE servers need of one BareMetalNode.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeBoot {
    pub namespace: String,
    pub name: String,
    pub phase: Option<NodePhase>,
    pub boot_mode: BootMode,
    pub maintenance: bool,
    pub boot_profile: Option<BootProfile>,
    /// IPv4 allocations by Network name (same namespace), from Network status.
    pub ipv4: Vec<(String, Ipv4Addr)>,
    /// Created by girder pxe for a machine nobody declared.
    pub discovered: bool,
    /// The agent session the operator opened, if any.
    pub session: Option<String>,
    /// The work the node's agent is to do from girder's ramdisk, while the
    /// operator waits for it: the machine should boot the ramdisk.
    pub ramdisk: Option<RunAction>,
}

impl NodeBoot {
    /// The node's allocated address on `network`, if any.
    pub fn address_on(&self, network: &NetworkView) -> Option<Ipv4Addr> {
        if network.namespace != self.namespace {
            return None;
        }
        self.ipv4.iter().find(|(name, _)| *name == network.name).map(|(_, addr)| *addr)
    }
}

/// What the PXE servers need of one Network with an IPv4 CIDR.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkView {
    pub namespace: String,
    pub name: String,
    pub network: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns_servers: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub mtu: Option<u16>,
    /// `Disabled` when the Network has no `dhcp` section: girder never
    /// answers DHCP on a network unless told to.
    pub mode: DhcpMode,
    pub lease_seconds: u32,
    pub allow_discovery: bool,
    pub static_ranges: Vec<Ipv4Range>,
    pub dhcp_ranges: Vec<Ipv4Range>,
    pub discovery_ranges: Vec<Ipv4Range>,
}

/// Lease time when the Network does not say.
pub const DEFAULT_LEASE_SECONDS: u32 = 3600;

impl NetworkView {
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0))
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !u32::from(self.netmask()))
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & u32::from(self.netmask()) == u32::from(self.network)
    }

    /// `namespace/name`, for logs and errors.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Everything the PXE servers read, at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub nodes: HashMap<Mac, NodeBoot>,
    pub networks: Vec<NetworkView>,
    /// Boot MACs claimed by more than one node: such MACs are not booted, so
    /// a typo cannot make one machine install another's image.
    pub duplicate_macs: Vec<(Mac, Vec<String>)>,
}

impl Snapshot {
    /// From the API objects (slices, or the `Arc`s of a reflector store).
    pub fn build<'a, N, W>(nodes: N, networks: W) -> Snapshot
    where
        N: IntoIterator<Item = &'a BareMetalNode>,
        W: IntoIterator<Item = &'a Network>,
    {
        let networks: Vec<&Network> = networks.into_iter().collect();
        let mut allocations: HashMap<(String, String), Vec<(String, Ipv4Addr)>> = HashMap::new();
        for (namespace, network, node, addr) in ipv4_allocations(&networks) {
            allocations.entry((namespace, node)).or_default().push((network, addr));
        }
        let networks: Vec<NetworkView> = networks.iter().copied().filter_map(network_view).collect();
        let mut by_mac: HashMap<Mac, Vec<NodeBoot>> = HashMap::new();
        for node in nodes {
            let Some(mac) = node.spec.boot_mac_address.as_deref().and_then(Mac::parse) else { continue };
            let namespace = node.namespace().unwrap_or_default();
            let name = node.name_any();
            let status = node.status.as_ref();
            let mut ipv4 = allocations.remove(&(namespace.clone(), name.clone())).unwrap_or_default();
            ipv4.sort();
            let provisioning = status.and_then(|s| s.provisioning.as_ref());
            let waiting = provisioning.is_some_and(|p| {
                matches!(
                    p.state,
                    Some(
                        ProvisioningState::BootingRamdisk
                            | ProvisioningState::WaitingForAgent
                            | ProvisioningState::Failed
                    )
                )
            });
            by_mac.entry(mac).or_default().push(NodeBoot {
                namespace,
                name,
                phase: status.and_then(|s| s.phase),
                boot_mode: node.spec.boot_mode,
                maintenance: node.spec.maintenance,
                boot_profile: node.spec.boot_profile.clone(),
                ipv4,
                discovered: node.labels().get(crate::controller::node::DISCOVERED_LABEL).is_some_and(|v| v == "true"),
                session: provisioning.and_then(|p| p.session.clone()),
                ramdisk: provisioning.filter(|_| waiting).and_then(|p| p.run.as_ref()).map(|r| r.action),
            });
        }
        let mut snapshot = Snapshot { networks, ..Snapshot::default() };
        for (mac, mut claimants) in by_mac {
            if claimants.len() == 1 {
                if let Some(node) = claimants.pop() {
                    snapshot.nodes.insert(mac, node);
                }
            } else {
                let mut names: Vec<String> = claimants.iter().map(|n| format!("{}/{}", n.namespace, n.name)).collect();
                names.sort();
                snapshot.duplicate_macs.push((mac, names));
            }
        }
        snapshot.duplicate_macs.sort();
        snapshot
    }

    pub fn node(&self, mac: &Mac) -> Option<&NodeBoot> {
        self.nodes.get(mac)
    }

    /// Which nodes claim `mac`, when more than one does.
    pub fn duplicate(&self, mac: &Mac) -> Option<&[String]> {
        self.duplicate_macs.iter().find(|(m, _)| m == mac).map(|(_, names)| names.as_slice())
    }

    /// The most specific Network containing `addr` (longest prefix; ties by
    /// namespace/name so the answer is deterministic).
    pub fn network_containing(&self, addr: Ipv4Addr) -> Option<&NetworkView> {
        self.networks
            .iter()
            .filter(|n| n.contains(addr))
            .max_by(|a, b| a.prefix.cmp(&b.prefix).then_with(|| b.key().cmp(&a.key())))
    }

    /// Whether any network lets unknown machines boot the discovery image.
    pub fn discovery_allowed(&self) -> bool {
        self.networks.iter().any(|n| n.allow_discovery)
    }
}

/// (namespace, network, node, address) for every IPv4 allocation in the
/// Networks' status.
fn ipv4_allocations<'a>(networks: &'a [&Network]) -> impl Iterator<Item = (String, String, String, Ipv4Addr)> + 'a {
    networks.iter().flat_map(|network| {
        let namespace = network.namespace().unwrap_or_default();
        let name = network.name_any();
        network.status.iter().flat_map(|s| &s.allocations).filter_map(move |allocation| {
            let addr = allocation.ipv4.as_deref()?.parse().ok()?;
            Some((namespace.clone(), name.clone(), allocation.node.clone(), addr))
        })
    })
}

fn network_view(network: &Network) -> Option<NetworkView> {
    let spec = &network.spec;
    let (addr, prefix) = spec.cidr.as_deref()?.split_once('/')?;
    let network_addr: Ipv4Addr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    let namespace = network.namespace().unwrap_or_default();
    let name = network.name_any();
    let ranges_of = |kind: RangeType| -> Vec<Ipv4Range> {
        spec.ranges
            .iter()
            .filter(|r| r.type_ == kind)
            .filter_map(|r| Some(Ipv4Range { start: r.start.parse().ok()?, end: r.end.parse().ok()? }))
            .collect()
    };
    Some(NetworkView {
        gateway: spec.gateway.as_deref().and_then(|g| g.parse().ok()),
        dns_servers: spec.dns_servers.iter().filter_map(|s| s.parse().ok()).collect(),
        domain: spec.domain.clone(),
        mtu: spec.mtu.and_then(|m| u16::try_from(m).ok()),
        mode: spec.dhcp.as_ref().map_or(DhcpMode::Disabled, |d| d.mode),
        lease_seconds: spec
            .dhcp
            .as_ref()
            .and_then(|d| d.lease_seconds)
            .and_then(|s| u32::try_from(s).ok())
            .unwrap_or(DEFAULT_LEASE_SECONDS),
        allow_discovery: spec.dhcp.as_ref().is_some_and(|d| d.allow_discovery),
        static_ranges: ranges_of(RangeType::Static),
        dhcp_ranges: ranges_of(RangeType::Dhcp),
        discovery_ranges: ranges_of(RangeType::Discovery),
        network: network_addr,
        prefix,
        namespace,
        name,
    })
}
