//! IP address management: which address a node gets on a network, and which
//! NICs carry that network. Pure: no Kubernetes, no I/O, no randomness and no
//! hash-map iteration order, so the same inputs always give the same answer
//! and every rule is tested here.
//!
//! - [`v4`]: IPv4 from a network's static ranges: the node's explicit hint,
//!   else the host part of its address on another network of the same group
//!   (a node that is .23 on one is .23 on the others), else the first free
//!   address.
//! - [`v6`]: IPv6 with an interface identifier derived from the node's
//!   identity, stable without coordination.
//! - [`conduit`]: which interface (or bond) carries a network, from the node's
//!   NIC inventory and the network's `conduit` (`1g0`, `10g1`, `10g0,10g1`).
//!
//! The caller owns persistence: it reads a network's allocations, calls a
//! function here, and writes the result back with optimistic concurrency.
//! The record is the Network's `status.allocations`: one object per address
//! space, so its `resourceVersion` serialises writers and two reconciles that
//! pick the same address cannot both succeed. A node's `status.addresses` is a
//! copy for its readers (PXE, agent, DNS).
//! IPv4 and IPv6 allocations are separate maps, so allocating one family never
//! touches the other.

pub mod conduit;
pub mod v4;
pub mod v6;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

/// Which rule gave a node its address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// The node already held this address; nothing changed.
    Existing,
    /// The address the node asked for.
    Hint,
    /// The host part of the node's address on `network`, another network of
    /// the same group.
    Aligned { network: String },
    /// The first free address of the static ranges.
    FirstFree,
    /// IPv6: derived from the node's identity; `attempt` is above 0 only when
    /// earlier candidates were reserved or taken.
    Derived { attempt: u32 },
}

impl Rule {
    /// Stable CamelCase name, for condition reasons, events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Rule::Existing => "Existing",
            Rule::Hint => "Hint",
            Rule::Aligned { .. } => "Aligned",
            Rule::FirstFree => "FirstFree",
            Rule::Derived { .. } => "Derived",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Existing => f.write_str("already held"),
            Rule::Hint => f.write_str("as asked by the node's hint"),
            Rule::Aligned { network } => write!(f, "aligned with network {network}"),
            Rule::FirstFree => f.write_str("first free address"),
            Rule::Derived { attempt: 0 } => f.write_str("derived from the node's identity"),
            Rule::Derived { attempt } => {
                write!(f, "derived from the node's identity (attempt {attempt}, after collisions)")
            }
        }
    }
}

/// An address given to a node, and why that one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assigned<A> {
    pub address: A,
    pub rule: Rule,
}

/// What a batch allocation did, per node name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchOutcome<A> {
    /// Nodes that hold an address, including those that already held one.
    pub assigned: BTreeMap<String, Assigned<A>>,
    /// Nodes that got none, with why.
    pub failed: BTreeMap<String, IpamError>,
}

impl<A> Default for BatchOutcome<A> {
    fn default() -> Self {
        Self { assigned: BTreeMap::new(), failed: BTreeMap::new() }
    }
}

impl<A> BatchOutcome<A> {
    /// Whether any node got a new address, i.e. whether the allocations must
    /// be written back.
    pub fn changed(&self) -> bool {
        self.assigned.values().any(|a| a.rule != Rule::Existing)
    }

    fn record(&mut self, node: &str, result: Result<Assigned<A>, IpamError>) {
        match result {
            Ok(assigned) => {
                self.assigned.insert(node.to_string(), assigned);
            }
            Err(error) => {
                self.failed.insert(node.to_string(), error);
            }
        }
    }
}

/// Why an address cannot be given out on a network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unusable {
    /// Not inside the network's CIDR or prefix.
    OutsideNetwork { cidr: String },
    /// Inside the network but in none of its static ranges.
    OutsideStaticRanges { ranges: String },
    /// The network address (all host bits zero).
    NetworkAddress,
    /// The broadcast address (all host bits one).
    BroadcastAddress,
    /// The network's gateway.
    Gateway,
    /// An IPv6 interface identifier reserved by RFC 5453.
    ReservedInterfaceId,
}

impl fmt::Display for Unusable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unusable::OutsideNetwork { cidr } => write!(f, "outside {cidr}"),
            Unusable::OutsideStaticRanges { ranges } => {
                write!(f, "outside the static ranges ({ranges})")
            }
            Unusable::NetworkAddress => f.write_str("the network address"),
            Unusable::BroadcastAddress => f.write_str("the broadcast address"),
            Unusable::Gateway => f.write_str("the gateway"),
            Unusable::ReservedInterfaceId => f.write_str("a reserved IPv6 interface identifier (RFC 5453)"),
        }
    }
}

/// Why a node gets no address, or why the allocations of a network are wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// The network's own definition cannot be allocated from.
    #[error("network {network} cannot be allocated from: {reason}")]
    InvalidNetwork { network: String, reason: String },
    /// The node's hint is outside the network, reserved, or outside the static ranges.
    #[error("node {node} asks for {address} on network {network}, but that address is {why}")]
    HintUnusable { network: String, node: String, address: IpAddr, why: Unusable },
    /// The node's hint is held by another node.
    #[error("node {node} asks for {address} on network {network}, but node {holder} holds it")]
    HintTaken { network: String, node: String, address: IpAddr, holder: String },
    /// Every usable address of the static ranges is allocated.
    #[error(
        "network {network} is exhausted (free: 0, all {capacity} usable addresses of its static ranges are allocated), so node {node} gets no address; widen a static range or remove a node from the network"
    )]
    Exhausted { network: String, node: String, capacity: u64 },
    /// A node holds an address the network's current definition no longer allows.
    #[error(
        "node {node} holds {address} on network {network}, which is now {why}; release that allocation to renumber the node"
    )]
    Stale { network: String, node: String, address: IpAddr, why: Unusable },
    /// Several nodes hold the same address (the stored allocations were edited by hand).
    #[error("nodes {} all hold {address} on network {network}; release all but one", .nodes.join(", "))]
    Duplicate { network: String, address: IpAddr, nodes: Vec<String> },
    /// IPv6: every candidate derived from the node's identity is reserved or taken.
    #[error(
        "network {network} has no IPv6 address for node {node}: the first {attempts} interface identifiers derived from its identity are all reserved or taken; give the node an ipv6Address hint"
    )]
    NoDerivedAddress { network: String, node: String, attempts: u32 },
}

impl IpamError {
    /// Stable CamelCase reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            IpamError::InvalidNetwork { .. } => "InvalidNetwork",
            IpamError::HintUnusable { .. } => "HintUnusable",
            IpamError::HintTaken { .. } => "HintTaken",
            IpamError::Exhausted { .. } => "Exhausted",
            IpamError::Stale { .. } => "StaleAllocation",
            IpamError::Duplicate { .. } => "DuplicateAllocation",
            IpamError::NoDerivedAddress { .. } => "NoDerivedAddress",
        }
    }
}

/// A CIDR or prefix string that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not {expected}: {reason}")]
pub struct ParseError {
    pub input: String,
    /// What was expected, e.g. "an IPv4 CIDR such as 10.0.0.0/24".
    pub expected: &'static str,
    pub reason: String,
}

/// Frees a node's address; returns it if the node held one.
pub fn release<A>(allocations: &mut BTreeMap<String, A>, node: &str) -> Option<A> {
    allocations.remove(node)
}

/// Frees the addresses of every node that is not in `members` (deleted, or no
/// longer on the network); returns what was freed, by node name.
pub fn release_absent<A>(allocations: &mut BTreeMap<String, A>, members: &BTreeSet<String>) -> BTreeMap<String, A> {
    let absent: Vec<String> = allocations.keys().filter(|node| !members.contains(*node)).cloned().collect();
    absent.into_iter().filter_map(|node| allocations.remove(&node).map(|a| (node, a))).collect()
}

/// Splits `text` at the first `/` into an address and a prefix length.
fn split_cidr<'a>(text: &'a str, expected: &'static str) -> Result<(&'a str, u8), ParseError> {
    let error = |reason: String| ParseError { input: text.to_string(), expected, reason };
    let (address, length) = text.split_once('/').ok_or_else(|| error("no /prefix length".to_string()))?;
    let length =
        length.parse::<u8>().map_err(|_| error(format!("prefix length {length:?} is not a number from 0 to 128")))?;
    Ok((address, length))
}

/// Held addresses and who holds them; with duplicates, the first node by name.
fn taken_index<A: Copy + Ord>(allocations: &BTreeMap<String, A>) -> BTreeMap<A, String> {
    let mut taken = BTreeMap::new();
    for (node, address) in allocations {
        taken.entry(*address).or_insert_with(|| node.clone());
    }
    taken
}

/// Stored allocations the network no longer allows (`unusable`), then
/// addresses held by several nodes; for either address family.
fn conflicts<A>(
    network: &str,
    allocations: &BTreeMap<String, A>,
    unusable: impl Fn(A) -> Option<Unusable>,
) -> Vec<IpamError>
where
    A: Copy + Ord + Into<IpAddr>,
{
    let mut found: Vec<IpamError> = allocations
        .iter()
        .filter_map(|(node, &address)| {
            unusable(address).map(|why| IpamError::Stale {
                network: network.to_string(),
                node: node.clone(),
                address: address.into(),
                why,
            })
        })
        .collect();
    let mut holders: BTreeMap<A, Vec<String>> = BTreeMap::new();
    for (node, address) in allocations {
        holders.entry(*address).or_default().push(node.clone());
    }
    found.extend(
        holders.into_iter().filter(|(_, nodes)| nodes.len() > 1).map(|(address, nodes)| IpamError::Duplicate {
            network: network.to_string(),
            address: address.into(),
            nodes,
        }),
    );
    found
}
