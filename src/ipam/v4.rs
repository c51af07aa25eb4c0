//! IPv4 allocation from a network's static ranges.
//!
//! A node gets, in this order: the address it already holds; its explicit
//! hint (or an error saying why not, never a silent fallback); the host part
//! of its address on another network of the same group; the first free
//! address of the static ranges, ranges in declared order, each ascending.
//! The network address, the broadcast address and the gateway are never
//! given out.

use super::{Assigned, BatchOutcome, IpamError, ParseError, Rule, Unusable, split_cidr};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

/// IPv4 allocations of one network: node name to address.
pub type Allocations = BTreeMap<String, Ipv4Addr>;

/// An IPv4 network: an address with no host bits set, and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix_len: u8,
}

const CIDR_EXPECTED: &str = "an IPv4 CIDR such as 10.0.0.0/24";

impl Ipv4Cidr {
    /// Refuses a prefix length above 32 and an address with host bits set.
    pub fn new(network: Ipv4Addr, prefix_len: u8) -> Result<Self, ParseError> {
        let error =
            |reason: String| ParseError { input: format!("{network}/{prefix_len}"), expected: CIDR_EXPECTED, reason };
        if prefix_len > 32 {
            return Err(error("the prefix length is above 32".to_string()));
        }
        let masked = Ipv4Addr::from(u32::from(network) & mask(prefix_len));
        if masked != network {
            return Err(error(format!("host bits are set; the network address is {masked}")));
        }
        Ok(Self { network, prefix_len })
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The last address of the network.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !mask(self.prefix_len))
    }

    /// How many addresses the network spans.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix_len))
    }

    pub fn contains(&self, address: Ipv4Addr) -> bool {
        u32::from(address) & mask(self.prefix_len) == u32::from(self.network)
    }

    /// The address minus the network address, if the address is inside.
    pub fn host_part(&self, address: Ipv4Addr) -> Option<u32> {
        self.contains(address).then(|| u32::from(address) - u32::from(self.network))
    }

    /// The network address plus `host`, if that is still inside.
    pub fn with_host_part(&self, host: u32) -> Option<Ipv4Addr> {
        (u64::from(host) < self.size()).then(|| Ipv4Addr::from(u32::from(self.network) | host))
    }

    /// Whether the first and last addresses are special. On /31 (RFC 3021)
    /// and /32 every address is a host.
    fn has_network_and_broadcast(&self) -> bool {
        self.prefix_len <= 30
    }
}

fn mask(prefix_len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0)
}

impl FromStr for Ipv4Cidr {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (address, prefix_len) = split_cidr(text, CIDR_EXPECTED)?;
        let network = address.parse::<Ipv4Addr>().map_err(|_| ParseError {
            input: text.to_string(),
            expected: CIDR_EXPECTED,
            reason: format!("{address:?} is not an IPv4 address"),
        })?;
        Ipv4Cidr::new(network, prefix_len).map_err(|e| ParseError { input: text.to_string(), ..e })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// A static range, both ends included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    pub name: String,
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

impl Range {
    fn contains(&self, address: Ipv4Addr) -> bool {
        self.start <= address && address <= self.end
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}-{}", self.name, self.start, self.end)
    }
}

/// What can be allocated on one network: its CIDR, its gateway and its static
/// ranges (dhcp and discovery ranges are not allocated from). Built through
/// [`Pool::new`], which checks that everything lies inside the CIDR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    network: String,
    cidr: Ipv4Cidr,
    gateway: Option<Ipv4Addr>,
    ranges: Vec<Range>,
}

impl Pool {
    /// `network` is the Network's name, used in messages. The ranges keep
    /// their declared order: the first free address is searched in that order.
    pub fn new(
        network: impl Into<String>,
        cidr: Ipv4Cidr,
        gateway: Option<Ipv4Addr>,
        static_ranges: Vec<Range>,
    ) -> Result<Self, IpamError> {
        let network = network.into();
        let invalid = |reason: String| IpamError::InvalidNetwork { network: network.clone(), reason };
        if let Some(gateway) = gateway
            && !cidr.contains(gateway)
        {
            return Err(invalid(format!("gateway {gateway} lies outside {cidr}")));
        }
        for range in &static_ranges {
            if range.start > range.end {
                return Err(invalid(format!("static range {range} starts after it ends")));
            }
            if !cidr.contains(range.start) || !cidr.contains(range.end) {
                return Err(invalid(format!("static range {range} lies outside {cidr}")));
            }
        }
        Ok(Self { network, cidr, gateway, ranges: static_ranges })
    }

    pub fn network(&self) -> &str {
        &self.network
    }

    pub fn cidr(&self) -> Ipv4Cidr {
        self.cidr
    }

    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.gateway
    }

    pub fn ranges(&self) -> &[Range] {
        &self.ranges
    }

    /// Why `address` can never be held on this network, if so. Addresses
    /// outside the static ranges but inside the CIDR are not unusable: a
    /// node keeps such an address when a range shrinks.
    pub fn unusable(&self, address: Ipv4Addr) -> Option<Unusable> {
        if !self.cidr.contains(address) {
            return Some(Unusable::OutsideNetwork { cidr: self.cidr.to_string() });
        }
        if self.cidr.has_network_and_broadcast() {
            if address == self.cidr.network() {
                return Some(Unusable::NetworkAddress);
            }
            if address == self.cidr.broadcast() {
                return Some(Unusable::BroadcastAddress);
            }
        }
        if Some(address) == self.gateway {
            return Some(Unusable::Gateway);
        }
        None
    }

    /// Whether `address` may be newly given out: usable and in a static range.
    pub fn allocatable(&self, address: Ipv4Addr) -> bool {
        self.unusable(address).is_none() && self.ranges.iter().any(|r| r.contains(address))
    }

    /// How many addresses of the static ranges can be given out at all.
    pub fn capacity(&self) -> u64 {
        free_count(self, &Allocations::new())
    }

    fn ranges_summary(&self) -> String {
        if self.ranges.is_empty() {
            return "the network has none".to_string();
        }
        let ranges: Vec<String> = self.ranges.iter().map(Range::to_string).collect();
        ranges.join(", ")
    }

    /// The static ranges as sorted, disjoint, inclusive intervals.
    fn merged_ranges(&self) -> Vec<(u32, u32)> {
        let mut intervals: Vec<(u32, u32)> =
            self.ranges.iter().map(|r| (u32::from(r.start), u32::from(r.end))).collect();
        intervals.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(intervals.len());
        for (start, end) in intervals {
            match merged.last_mut() {
                Some(last) if u64::from(start) <= u64::from(last.1) + 1 => {
                    last.1 = last.1.max(end);
                }
                _ => merged.push((start, end)),
            }
        }
        merged
    }
}

/// The node's address on another network of the same group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupAddress {
    /// That network's CIDR, to find the host part.
    pub cidr: Ipv4Cidr,
    pub address: Ipv4Addr,
}

/// One node asking for an address on the pool's network.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Request {
    pub node: String,
    /// The `ipv4Address` the node's spec asks for on this network.
    pub hint: Option<Ipv4Addr>,
    /// The node's addresses on the other networks of this network's group,
    /// by network name. Tried in name order; the first host part that is free
    /// here wins. An entry for the pool's own network is ignored.
    pub group_addresses: BTreeMap<String, GroupAddress>,
}

impl Request {
    pub fn new(node: impl Into<String>) -> Self {
        Self { node: node.into(), ..Self::default() }
    }
}

/// Gives `request.node` an address and records it in `allocations`; a node
/// that already holds one keeps it (even if its hint now differs: renumbering
/// a live node is an explicit [`super::release`] first). On error nothing
/// changes.
pub fn allocate(
    pool: &Pool,
    allocations: &mut Allocations,
    request: &Request,
) -> Result<Assigned<Ipv4Addr>, IpamError> {
    if let Some(held) = existing(pool, allocations, &request.node) {
        return held;
    }
    let taken = taken_index(allocations);
    let assigned = match request.hint {
        Some(hint) => by_hint(pool, &taken, &request.node, hint)?,
        None => match aligned(pool, &taken, request) {
            Some(assigned) => assigned,
            None => first_free(pool, &taken, &request.node)?,
        },
    };
    allocations.insert(request.node.clone(), assigned.address);
    Ok(assigned)
}

/// Allocates many nodes at once against the same state, in a fixed order that
/// does not depend on the order of `requests`: first the nodes that already
/// hold an address, then hints, then alignment, then first free, each phase
/// by node name. Hints and alignment go first so that no node's first-free
/// pick steals another node's hinted or aligned address. Nodes are keyed by
/// name; a later request for the same node replaces an earlier one.
pub fn allocate_batch(pool: &Pool, allocations: &mut Allocations, requests: &[Request]) -> BatchOutcome<Ipv4Addr> {
    let mut pending: BTreeMap<&str, &Request> = requests.iter().map(|r| (r.node.as_str(), r)).collect();
    let mut outcome = BatchOutcome::default();

    pending.retain(|node, _| match existing(pool, allocations, node) {
        Some(held) => {
            outcome.record(node, held);
            false
        }
        None => true,
    });
    let mut taken = taken_index(allocations);

    pending.retain(|node, request| match request.hint {
        Some(hint) => {
            let result = by_hint(pool, &taken, node, hint);
            if let Ok(assigned) = &result {
                claim(allocations, &mut taken, node, assigned.address);
            }
            outcome.record(node, result);
            false
        }
        None => true,
    });

    pending.retain(|node, request| match aligned(pool, &taken, request) {
        Some(assigned) => {
            claim(allocations, &mut taken, node, assigned.address);
            outcome.record(node, Ok(assigned));
            false
        }
        None => true,
    });

    for node in pending.into_keys() {
        let result = first_free(pool, &taken, node);
        if let Ok(assigned) = &result {
            claim(allocations, &mut taken, node, assigned.address);
        }
        outcome.record(node, result);
    }
    outcome
}

/// How many addresses of the static ranges are still free: usable, and held
/// by no node. Overlapping ranges count once.
pub fn free_count(pool: &Pool, allocations: &Allocations) -> u64 {
    let merged = pool.merged_ranges();
    let in_ranges = |address: Ipv4Addr| {
        let a = u32::from(address);
        merged.iter().any(|&(start, end)| start <= a && a <= end)
    };
    let total: u64 = merged.iter().map(|&(start, end)| u64::from(end) - u64::from(start) + 1).sum();
    let mut unavailable: BTreeSet<Ipv4Addr> = allocations.values().copied().filter(|&a| in_ranges(a)).collect();
    let cidr = pool.cidr;
    if cidr.has_network_and_broadcast() {
        unavailable.extend([cidr.network(), cidr.broadcast()].into_iter().filter(|&a| in_ranges(a)));
    }
    unavailable.extend(pool.gateway.filter(|&a| in_ranges(a)));
    total.saturating_sub(unavailable.len() as u64)
}

/// What is wrong with stored allocations: addresses the network no longer
/// allows (its CIDR or gateway changed), then addresses held by several
/// nodes. Empty when all is well. Nothing here releases anything: the
/// controller reports these (a `Conflict` condition) and decides.
pub fn conflicts(pool: &Pool, allocations: &Allocations) -> Vec<IpamError> {
    super::conflicts(&pool.network, allocations, |address| pool.unusable(address))
}

/// Held addresses and who holds them; with duplicates, the first node by name.
type Taken = BTreeMap<Ipv4Addr, String>;

fn taken_index(allocations: &Allocations) -> Taken {
    super::taken_index(allocations)
}

fn claim(allocations: &mut Allocations, taken: &mut Taken, node: &str, address: Ipv4Addr) {
    allocations.insert(node.to_string(), address);
    taken.insert(address, node.to_string());
}

fn existing(pool: &Pool, allocations: &Allocations, node: &str) -> Option<Result<Assigned<Ipv4Addr>, IpamError>> {
    let address = *allocations.get(node)?;
    Some(match pool.unusable(address) {
        None => Ok(Assigned { address, rule: Rule::Existing }),
        Some(why) => Err(IpamError::Stale {
            network: pool.network.clone(),
            node: node.to_string(),
            address: IpAddr::V4(address),
            why,
        }),
    })
}

fn by_hint(pool: &Pool, taken: &Taken, node: &str, hint: Ipv4Addr) -> Result<Assigned<Ipv4Addr>, IpamError> {
    let unusable = |why| IpamError::HintUnusable {
        network: pool.network.clone(),
        node: node.to_string(),
        address: IpAddr::V4(hint),
        why,
    };
    if let Some(why) = pool.unusable(hint) {
        return Err(unusable(why));
    }
    if !pool.ranges.iter().any(|r| r.contains(hint)) {
        return Err(unusable(Unusable::OutsideStaticRanges { ranges: pool.ranges_summary() }));
    }
    if let Some(holder) = taken.get(&hint) {
        return Err(IpamError::HintTaken {
            network: pool.network.clone(),
            node: node.to_string(),
            address: IpAddr::V4(hint),
            holder: holder.clone(),
        });
    }
    Ok(Assigned { address: hint, rule: Rule::Hint })
}

fn aligned(pool: &Pool, taken: &Taken, request: &Request) -> Option<Assigned<Ipv4Addr>> {
    request.group_addresses.iter().filter(|(network, _)| **network != pool.network).find_map(|(network, peer)| {
        let host = peer.cidr.host_part(peer.address)?;
        let candidate = pool.cidr.with_host_part(host)?;
        (pool.allocatable(candidate) && !taken.contains_key(&candidate))
            .then(|| Assigned { address: candidate, rule: Rule::Aligned { network: network.clone() } })
    })
}

fn first_free(pool: &Pool, taken: &Taken, node: &str) -> Result<Assigned<Ipv4Addr>, IpamError> {
    pool.ranges
        .iter()
        .find_map(|range| first_free_in(pool, taken, range))
        .map(|address| Assigned { address, rule: Rule::FirstFree })
        .ok_or_else(|| IpamError::Exhausted {
            network: pool.network.clone(),
            node: node.to_string(),
            capacity: pool.capacity(),
        })
}

/// Walks the range and the held addresses inside it side by side, so the cost
/// is the number of held addresses before the gap, not the range's size.
fn first_free_in(pool: &Pool, taken: &Taken, range: &Range) -> Option<Ipv4Addr> {
    let mut held = taken.range(range.start..=range.end).map(|(a, _)| *a).peekable();
    let mut candidate = u64::from(u32::from(range.start));
    let end = u64::from(u32::from(range.end));
    while candidate <= end {
        let address = Ipv4Addr::from(u32::try_from(candidate).ok()?);
        while held.next_if(|&h| h < address).is_some() {}
        if pool.unusable(address).is_none() && held.peek() != Some(&address) {
            return Some(address);
        }
        candidate += 1;
    }
    None
}
