//! The pure part of the Network controller: a Network's status from its
//! spec, its stored allocations, the nodes that join it and the other
//! networks of its group. No Kubernetes calls, no clock but the conditions'.

use crate::api::condition::{self, Condition};
use crate::api::network::{Allocation, RangeType};
use crate::api::node::NodeNetwork;
use crate::api::{BareMetalNode, ConditionStatus, Network, NetworkStatus};
use crate::ipam::{self, IpamError, ParseError, v4, v6};
use kube::ResourceExt;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// How many node names or problems a condition message lists before it says
/// "and N more", so a message stays readable with thousands of nodes.
const LISTED: usize = 5;

/// Why a Network's spec cannot be allocated from (what admission could not check).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("network {network}: cidr {source}")]
    Cidr { network: String, source: ParseError },
    #[error("network {network}: ipv6Prefix {source}")]
    Ipv6Prefix { network: String, source: ParseError },
    #[error("network {network}: gateway {gateway:?} is not an IPv4 address")]
    Gateway { network: String, gateway: String },
    #[error("network {network}: range {range} has {field} {value:?}, which is not an IP address")]
    RangeAddress { network: String, range: String, field: &'static str, value: String },
    #[error("network {network}: range {range} mixes IPv4 and IPv6 ({start} to {end})")]
    RangeFamilies { network: String, range: String, start: String, end: String },
    #[error("network {network}: static range {range} is IPv4 but the network has no cidr")]
    RangeWithoutCidr { network: String, range: String },
    #[error(transparent)]
    Pool(IpamError),
}

impl SpecError {
    /// Stable CamelCase reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        "InvalidNetwork"
    }
}

/// What can be allocated on a network: IPv4 from its static ranges, IPv6
/// derived in its prefix. Either may be absent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pools {
    pub v4: Option<v4::Pool>,
    pub v6: Option<v6::Pool>,
}

/// The pools of a network, from its spec. IPv6 ranges are not allocated from
/// (IPv6 addresses are derived from node identities) and dhcp and discovery
/// ranges are not static, so only IPv4 static ranges count.
pub fn pools(network: &Network) -> Result<Pools, SpecError> {
    let name = network.name_any();
    let spec = &network.spec;
    let mut ranges = Vec::new();
    for range in spec.ranges.iter().filter(|r| r.type_ == RangeType::Static) {
        let parse = |field: &'static str, value: &str| {
            value.parse::<IpAddr>().map_err(|_| SpecError::RangeAddress {
                network: name.clone(),
                range: range.name.clone(),
                field,
                value: value.to_string(),
            })
        };
        match (parse("start", &range.start)?, parse("end", &range.end)?) {
            (IpAddr::V4(start), IpAddr::V4(end)) => ranges.push(v4::Range { name: range.name.clone(), start, end }),
            (IpAddr::V6(_), IpAddr::V6(_)) => {}
            _ => {
                return Err(SpecError::RangeFamilies {
                    network: name.clone(),
                    range: range.name.clone(),
                    start: range.start.clone(),
                    end: range.end.clone(),
                });
            }
        }
    }
    let v4 = match &spec.cidr {
        Some(cidr) => {
            let cidr =
                cidr.parse::<v4::Ipv4Cidr>().map_err(|source| SpecError::Cidr { network: name.clone(), source })?;
            let gateway = match &spec.gateway {
                Some(gateway) => Some(
                    gateway
                        .parse::<Ipv4Addr>()
                        .map_err(|_| SpecError::Gateway { network: name.clone(), gateway: gateway.clone() })?,
                ),
                None => None,
            };
            Some(v4::Pool::new(name.clone(), cidr, gateway, ranges).map_err(SpecError::Pool)?)
        }
        None => match ranges.first() {
            Some(range) => return Err(SpecError::RangeWithoutCidr { network: name, range: range.name.clone() }),
            None => None,
        },
    };
    let v6 = match &spec.ipv6_prefix {
        Some(prefix) => {
            let prefix = prefix
                .parse::<v6::Ipv6Prefix>()
                .map_err(|source| SpecError::Ipv6Prefix { network: name.clone(), source })?;
            Some(v6::Pool::new(name.clone(), prefix))
        }
        None => None,
    };
    Ok(Pools { v4, v6 })
}

/// The entry of `network` in a node's `spec.networks`, if it joins it.
pub fn membership<'a>(node: &'a BareMetalNode, network: &str) -> Option<&'a NodeNetwork> {
    node.spec.networks.iter().find(|n| n.network == network)
}

/// The allocations stored in a Network's status, by family; entries that do
/// not parse are kept verbatim (and reported), never silently replaced.
#[derive(Default)]
struct Stored {
    v4: v4::Allocations,
    v6: v6::Allocations,
    unparsable_v4: BTreeMap<String, String>,
    unparsable_v6: BTreeMap<String, String>,
}

impl Stored {
    fn read(status: Option<&NetworkStatus>) -> Self {
        let mut stored = Self::default();
        for allocation in status.map(|s| s.allocations.as_slice()).unwrap_or_default() {
            let node = &allocation.node;
            if let Some(text) = &allocation.ipv4 {
                match text.parse::<Ipv4Addr>() {
                    Ok(address) => {
                        stored.v4.insert(node.clone(), address);
                    }
                    Err(_) => {
                        stored.unparsable_v4.insert(node.clone(), text.clone());
                    }
                }
            }
            if let Some(text) = &allocation.ipv6 {
                match text.parse::<Ipv6Addr>() {
                    Ok(address) => {
                        stored.v6.insert(node.clone(), address);
                    }
                    Err(_) => {
                        stored.unparsable_v6.insert(node.clone(), text.clone());
                    }
                }
            }
        }
        stored
    }

    fn release_absent(&mut self, members: &BTreeSet<String>) {
        ipam::release_absent(&mut self.v4, members);
        ipam::release_absent(&mut self.v6, members);
        self.unparsable_v4.retain(|node, _| members.contains(node));
        self.unparsable_v6.retain(|node, _| members.contains(node));
    }

    /// The allocations to publish, sorted by node.
    fn allocations(&self) -> Vec<Allocation> {
        let mut by_node: BTreeMap<&str, Allocation> = BTreeMap::new();
        let v4 = self.v4.iter().map(|(node, address)| (node, address.to_string()));
        for (node, text) in v4.chain(self.unparsable_v4.iter().map(|(node, text)| (node, text.clone()))) {
            by_node.entry(node).or_insert_with(|| allocation(node)).ipv4 = Some(text);
        }
        let v6 = self.v6.iter().map(|(node, address)| (node, address.to_string()));
        for (node, text) in v6.chain(self.unparsable_v6.iter().map(|(node, text)| (node, text.clone()))) {
            by_node.entry(node).or_insert_with(|| allocation(node)).ipv6 = Some(text);
        }
        by_node.into_values().collect()
    }
}

fn allocation(node: &str) -> Allocation {
    Allocation { node: node.to_string(), ..Allocation::default() }
}

/// Another network of the same group, as far as alignment needs it.
struct Peer {
    name: String,
    /// Its CIDR, to find the host part of a node's address on it.
    cidr: Option<v4::Ipv4Cidr>,
    /// Its IPv4 pool, when its spec is usable: only then can it anchor.
    pool: Option<v4::Pool>,
    /// Its IPv4 allocations that parse.
    held: v4::Allocations,
    /// Every node with an IPv4 entry on it, parsable or not.
    holders: BTreeSet<String>,
    taken: BTreeSet<Ipv4Addr>,
    free: u64,
}

impl Peer {
    fn new(network: &Network) -> Self {
        let stored = Stored::read(network.status.as_ref());
        let pool = pools(network).ok().and_then(|p| p.v4);
        let free = pool.as_ref().map(|pool| v4::free_count(pool, &stored.v4)).unwrap_or(0);
        Self {
            name: network.name_any(),
            cidr: network.spec.cidr.as_deref().and_then(|c| c.parse().ok()),
            pool,
            taken: stored.v4.values().copied().collect(),
            holders: stored.v4.keys().chain(stored.unparsable_v4.keys()).cloned().collect(),
            held: stored.v4,
            free,
        }
    }

    /// Whether this network will give `node` an IPv4 address on its next
    /// reconcile: its hint there is free, or, without a hint, any address is.
    fn can_allocate(&self, node: &BareMetalNode) -> bool {
        let Some(pool) = &self.pool else {
            return false;
        };
        match membership(node, &self.name).and_then(|m| m.ipv4_address.as_deref()) {
            None => self.free > 0,
            Some(text) => {
                text.parse::<Ipv4Addr>().is_ok_and(|hint| pool.allocatable(hint) && !self.taken.contains(&hint))
            }
        }
    }
}

/// What a decision found besides the allocations, for the conditions.
#[derive(Default)]
struct Findings {
    /// (reason, message), in the order found.
    conflicts: Vec<(&'static str, String)>,
    /// Nodes without an IPv4 address because the static ranges are full.
    exhausted: Vec<String>,
    /// Nodes waiting for their anchor network, with its name.
    aligning: Vec<(String, String)>,
}

impl Findings {
    fn conflict(&mut self, reason: &'static str, message: String) {
        self.conflicts.push((reason, message));
    }

    fn failed(&mut self, failed: BTreeMap<String, IpamError>) {
        for (node, error) in failed {
            match error {
                IpamError::Exhausted { .. } => self.exhausted.push(node),
                // Reported once, by `conflicts`.
                IpamError::Stale { .. } => {}
                other => self.conflict(other.reason(), other.to_string()),
            }
        }
    }

    fn stored_conflicts(&mut self, found: Vec<IpamError>) {
        for error in found {
            let mut message = error.to_string();
            if matches!(error, IpamError::Stale { .. }) {
                message.push_str(" (take the network out of the node's spec.networks, then put it back)");
            }
            self.conflict(error.reason(), message);
        }
    }
}

/// Decides a Network's status (pure): releases the addresses of nodes that
/// left, allocates to the nodes that joined, and says what is wrong.
///
/// `nodes` are the readable BareMetalNodes of the network's namespace (the
/// members are those that list the network), `unreadable_nodes` the names of
/// those that cannot be read (they keep what they hold), `others` the other
/// Networks of the namespace (those of the same group align with it).
pub fn decide(
    network: &Network,
    nodes: &[&BareMetalNode],
    unreadable_nodes: &BTreeSet<String>,
    others: &[&Network],
) -> NetworkStatus {
    let name = network.name_any();
    let generation = network.metadata.generation;
    let existing = network.status.as_ref();
    let existing_conditions = existing.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let pools = match pools(network) {
        Ok(pools) => pools,
        Err(err) => {
            return NetworkStatus {
                conditions: condition::merge(existing_conditions, invalid(&err, generation)),
                observed_generation: generation,
                allocations: existing.map(|s| s.allocations.clone()).unwrap_or_default(),
                free: None,
            };
        }
    };

    let members: Vec<(&BareMetalNode, &NodeNetwork)> =
        nodes.iter().filter_map(|node| membership(node, &name).map(|m| (*node, m))).collect();
    let mut keep: BTreeSet<String> = members.iter().map(|(node, _)| node.name_any()).collect();
    keep.extend(unreadable_nodes.iter().cloned());
    let mut stored = Stored::read(existing);
    stored.release_absent(&keep);

    let mut findings = Findings::default();
    let peers: Vec<Peer> = match &network.spec.group {
        Some(group) => others
            .iter()
            .filter(|other| other.spec.group.as_ref() == Some(group) && other.name_any() != name)
            .map(|other| Peer::new(other))
            .collect(),
        None => Vec::new(),
    };
    match &pools.v4 {
        Some(pool) => allocate_v4(pool, &mut stored, &members, &peers, &mut findings),
        None => {
            stored.v4.clear();
            stored.unparsable_v4.clear();
        }
    }
    match &pools.v6 {
        Some(pool) => {
            let namespace = network.namespace().unwrap_or_default();
            allocate_v6(pool, &namespace, &mut stored, &members, &mut findings);
        }
        None => {
            stored.v6.clear();
            stored.unparsable_v6.clear();
        }
    }

    let free = pools.v4.as_ref().map(|pool| v4::free_count(pool, &stored.v4));
    let held = stored.allocations();
    let decided = conditions(&name, network.spec.group.as_deref(), &pools, free, members.len(), &findings, generation);
    NetworkStatus {
        conditions: condition::merge(existing_conditions, decided),
        observed_generation: generation,
        allocations: held,
        free: free.map(|f| i64::try_from(f).unwrap_or(i64::MAX)),
    }
}

fn allocate_v4(
    pool: &v4::Pool,
    stored: &mut Stored,
    members: &[(&BareMetalNode, &NodeNetwork)],
    peers: &[Peer],
    findings: &mut Findings,
) {
    let network = pool.network();
    for (node, text) in &stored.unparsable_v4 {
        findings.conflict(
            "InvalidAllocation",
            format!(
                "node {node} holds {text:?} on network {network}, which is not an IPv4 address; take the network out of the node's spec.networks, then put it back"
            ),
        );
    }
    let mut requests = Vec::with_capacity(members.len());
    for (node, entry) in members {
        let node_name = node.name_any();
        if stored.unparsable_v4.contains_key(&node_name) {
            continue;
        }
        if stored.v4.contains_key(&node_name) {
            requests.push(v4::Request::new(node_name));
            continue;
        }
        let hint = match entry.ipv4_address.as_deref().map(str::parse::<Ipv4Addr>) {
            None => None,
            Some(Ok(hint)) => Some(hint),
            Some(Err(_)) => {
                findings.conflict("InvalidHint", invalid_hint(&node_name, network, entry.ipv4_address.as_deref(), 4));
                continue;
            }
        };
        let group_addresses: BTreeMap<String, v4::GroupAddress> = peers
            .iter()
            .filter_map(|peer| {
                let address = *peer.held.get(&node_name)?;
                Some((peer.name.clone(), v4::GroupAddress { cidr: peer.cidr?, address }))
            })
            .collect();
        if hint.is_none()
            && group_addresses.is_empty()
            && let Some(anchor) = anchor_to_wait_for(network, node, &node_name, peers)
        {
            findings.aligning.push((node_name, anchor.to_string()));
            continue;
        }
        requests.push(v4::Request { node: node_name, hint, group_addresses });
    }
    let outcome = v4::allocate_batch(pool, &mut stored.v4, &requests);
    findings.failed(outcome.failed);
    findings.stored_conflicts(v4::conflicts(pool, &stored.v4));
}

/// The network of the group this node's first-free address must come from,
/// if that is not `network` and it will give the node one: the first network
/// by name that the node joins and whose IPv4 definition is usable.
fn anchor_to_wait_for<'p>(network: &str, node: &BareMetalNode, node_name: &str, peers: &'p [Peer]) -> Option<&'p str> {
    let anchor = peers
        .iter()
        .filter(|peer| peer.name.as_str() < network && peer.pool.is_some())
        .filter(|peer| membership(node, &peer.name).is_some())
        .min_by(|a, b| a.name.cmp(&b.name))?;
    // It holds something (perhaps unparsable): nothing more will come from it.
    if anchor.holders.contains(node_name) || !anchor.can_allocate(node) {
        return None;
    }
    Some(anchor.name.as_str())
}

fn allocate_v6(
    pool: &v6::Pool,
    namespace: &str,
    stored: &mut Stored,
    members: &[(&BareMetalNode, &NodeNetwork)],
    findings: &mut Findings,
) {
    let network = pool.network();
    for (node, text) in &stored.unparsable_v6 {
        findings.conflict(
            "InvalidAllocation",
            format!(
                "node {node} holds {text:?} on network {network}, which is not an IPv6 address; take the network out of the node's spec.networks, then put it back"
            ),
        );
    }
    let mut requests = Vec::with_capacity(members.len());
    for (node, entry) in members {
        let node_name = node.name_any();
        if stored.unparsable_v6.contains_key(&node_name) {
            continue;
        }
        let hint = match entry.ipv6_address.as_deref().map(str::parse::<Ipv6Addr>) {
            None => None,
            Some(Ok(hint)) => Some(hint),
            Some(Err(_)) => {
                findings.conflict("InvalidHint", invalid_hint(&node_name, network, entry.ipv6_address.as_deref(), 6));
                continue;
            }
        };
        // The identity outlives a re-created object: the same name in the
        // same namespace gets the same address.
        let identity = format!("{namespace}/{node_name}");
        requests.push(v6::Request { node: node_name, identity, hint });
    }
    let outcome = v6::allocate_batch(pool, &mut stored.v6, &requests);
    findings.failed(outcome.failed);
    findings.stored_conflicts(v6::conflicts(pool, &stored.v6));
}

fn invalid_hint(node: &str, network: &str, hint: Option<&str>, family: u8) -> String {
    format!(
        "node {node} asks for {:?} on network {network}, which is not an IPv{family} address; fix ipv{family}Address in the node's spec.networks",
        hint.unwrap_or_default()
    )
}

fn invalid(err: &SpecError, generation: Option<i64>) -> Vec<Condition> {
    let message = format!("{err}; nothing is allocated or released until the spec is fixed");
    let unknown = "cannot tell while the network's spec is invalid";
    vec![
        Condition::new("Ready", false, err.reason(), message, generation),
        Condition::new("Exhausted", ConditionStatus::Unknown, err.reason(), unknown, generation),
        Condition::new("Conflict", ConditionStatus::Unknown, err.reason(), unknown, generation),
    ]
}

fn conditions(
    name: &str,
    group: Option<&str>,
    pools: &Pools,
    free: Option<u64>,
    members: usize,
    findings: &Findings,
    generation: Option<i64>,
) -> Vec<Condition> {
    let capacity = pools.v4.as_ref().map(v4::Pool::capacity);
    let exhausted = match (&pools.v4, findings.exhausted.is_empty()) {
        (Some(_), false) => {
            let why = match capacity {
                Some(0) | None => "its static ranges hold no usable address; add a range of type static".to_string(),
                Some(capacity) => format!(
                    "all {capacity} usable addresses of its static ranges are allocated; widen a static range or remove nodes from the network"
                ),
            };
            let count = findings.exhausted.len();
            let message = format!(
                "network {name} has no free IPv4 address for {count} {}: {}; {why}",
                plural(count, "node"),
                bounded(&findings.exhausted)
            );
            Condition::new("Exhausted", true, "Exhausted", message, generation)
        }
        (Some(_), true) => Condition::new(
            "Exhausted",
            false,
            "AddressesFree",
            format!(
                "{} of the {} usable addresses of the static ranges are free",
                free.unwrap_or(0),
                capacity.unwrap_or(0)
            ),
            generation,
        ),
        (None, _) => Condition::new(
            "Exhausted",
            false,
            "DerivedAddresses",
            "the network is IPv6 only; its addresses are derived from node identities and do not run out",
            generation,
        ),
    };
    let conflict = match findings.conflicts.first() {
        Some((reason, _)) => {
            let messages: Vec<String> = findings.conflicts.iter().map(|(_, m)| m.clone()).collect();
            Condition::new("Conflict", true, reason, bounded_sentences(&messages), generation)
        }
        None => Condition::new(
            "Conflict",
            false,
            "NoConflict",
            "every allocation fits the network and no address is held twice",
            generation,
        ),
    };
    let ready = if conflict.status == ConditionStatus::True {
        Condition::new("Ready", false, &conflict.reason, conflict.message.clone(), generation)
    } else if exhausted.status == ConditionStatus::True {
        Condition::new("Ready", false, "Exhausted", exhausted.message.clone(), generation)
    } else if !findings.aligning.is_empty() {
        let count = findings.aligning.len();
        let nodes: Vec<String> =
            findings.aligning.iter().map(|(node, anchor)| format!("{node} (on {anchor})")).collect();
        let message = format!(
            "{count} {} of group {} wait for an address on the group's first network to align with: {}",
            plural(count, "node"),
            group.unwrap_or_default(),
            bounded(&nodes)
        );
        Condition::new("Ready", false, "Aligning", message, generation)
    } else {
        let mut message = format!("all {members} {} of network {name} hold their addresses", plural(members, "node"));
        if let Some(free) = free {
            message.push_str(&format!("; {free} static IPv4 addresses free"));
        }
        Condition::new("Ready", true, "Allocated", message, generation)
    };
    vec![ready, exhausted, conflict]
}

fn plural(count: usize, word: &str) -> String {
    if count == 1 { word.to_string() } else { format!("{word}s") }
}

/// "a, b, c, d, e and 12 more".
fn bounded(items: &[String]) -> String {
    let shown = items.iter().take(LISTED).cloned().collect::<Vec<_>>().join(", ");
    match items.len().saturating_sub(LISTED) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// The first few messages, then how many more there are.
pub(crate) fn bounded_sentences(messages: &[String]) -> String {
    const SHOWN: usize = 3;
    let shown = messages.iter().take(SHOWN).cloned().collect::<Vec<_>>().join("; ");
    match messages.len().saturating_sub(SHOWN) {
        0 => shown,
        more => format!("{shown}; and {more} more"),
    }
}
