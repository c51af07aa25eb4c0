//! IPv6 addresses derived from the node's identity.
//!
//! The address is the network's prefix with the low 64 bits replaced by an
//! interface identifier (IID) hashed from the node's identity, so a node gets
//! the same address every time, and the same IID on every network, without
//! coordination. For prefixes shorter than /64 the subnet bits stay zero: the
//! nodes live in the first /64 of the prefix.
//!
//! The IID is the first 64 bits of
//! `SHA-256("girder.dev/ipv6-iid\0" || attempt as 4 big-endian bytes || identity)`
//! with the universal/local bit cleared (RFC 4291: not derived from a
//! globally unique MAC). Attempt 0 is the node's address; a higher attempt is
//! used only when the candidate is a reserved IID (RFC 5453) or another node
//! holds it, which for 64 random bits does not happen in practice but is
//! still decided the same way on every run.

use super::{Assigned, BatchOutcome, IpamError, ParseError, Rule, Unusable, split_cidr};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

/// IPv6 allocations of one network: node name to address.
pub type Allocations = BTreeMap<String, Ipv6Addr>;

/// How many derived candidates are tried before giving up.
pub const MAX_ATTEMPTS: u32 = 64;

const PREFIX_EXPECTED: &str = "an IPv6 prefix of length /64 or shorter, such as fd00:10::/64";

/// An IPv6 prefix of length /64 or shorter, without host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv6Prefix {
    network: Ipv6Addr,
    prefix_len: u8,
}

impl Ipv6Prefix {
    /// Refuses a prefix longer than /64 and an address with host bits set.
    pub fn new(network: Ipv6Addr, prefix_len: u8) -> Result<Self, ParseError> {
        let error =
            |reason: String| ParseError { input: format!("{network}/{prefix_len}"), expected: PREFIX_EXPECTED, reason };
        if prefix_len > 64 {
            return Err(error(
                "the prefix is longer than /64, leaving no room for a 64-bit interface identifier".to_string(),
            ));
        }
        let masked = Ipv6Addr::from(u128::from(network) & mask(prefix_len));
        if masked != network {
            return Err(error(format!("host bits are set; the prefix is {masked}/{prefix_len}")));
        }
        Ok(Self { network, prefix_len })
    }

    pub fn network(&self) -> Ipv6Addr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn contains(&self, address: Ipv6Addr) -> bool {
        u128::from(address) & mask(self.prefix_len) == u128::from(self.network)
    }

    /// The address of interface identifier `iid` in the first /64 of the prefix.
    pub fn with_interface_id(&self, iid: u64) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.network) | u128::from(iid))
    }
}

fn mask(prefix_len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix_len)).unwrap_or(0)
}

impl FromStr for Ipv6Prefix {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (address, prefix_len) = split_cidr(text, PREFIX_EXPECTED)?;
        let network = address.parse::<Ipv6Addr>().map_err(|_| ParseError {
            input: text.to_string(),
            expected: PREFIX_EXPECTED,
            reason: format!("{address:?} is not an IPv6 address"),
        })?;
        Ipv6Prefix::new(network, prefix_len).map_err(|e| ParseError { input: text.to_string(), ..e })
    }
}

impl fmt::Display for Ipv6Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// The interface identifier derived from `identity` at `attempt` (see the
/// module documentation). May be reserved; [`allocate`] skips those.
pub fn interface_id(identity: &str, attempt: u32) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(b"girder.dev/ipv6-iid\0");
    hasher.update(attempt.to_be_bytes());
    hasher.update(identity.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first) & !UNIVERSAL_LOCAL_BIT
}

/// The "u" bit of a modified EUI-64 interface identifier (RFC 4291 2.5.1).
const UNIVERSAL_LOCAL_BIT: u64 = 0x0200_0000_0000_0000;

/// Whether an interface identifier is reserved (RFC 5453): the subnet-router
/// anycast (all zero), the IANA Ethernet block 0200:5EFF:FE00:0000 to
/// 0200:5EFF:FEFF:FFFF (including Proxy Mobile IPv6), and the reserved subnet
/// anycast identifiers FDFF:FFFF:FFFF:FF80 to FDFF:FFFF:FFFF:FFFF (RFC 2526).
pub fn is_reserved_interface_id(iid: u64) -> bool {
    iid == 0
        || (0x0200_5eff_fe00_0000..=0x0200_5eff_feff_ffff).contains(&iid)
        || (0xfdff_ffff_ffff_ff80..=0xfdff_ffff_ffff_ffff).contains(&iid)
}

/// What can be allocated on one network's IPv6 prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    network: String,
    prefix: Ipv6Prefix,
}

impl Pool {
    /// `network` is the Network's name, used in messages.
    pub fn new(network: impl Into<String>, prefix: Ipv6Prefix) -> Self {
        Self { network: network.into(), prefix }
    }

    pub fn network(&self) -> &str {
        &self.network
    }

    pub fn prefix(&self) -> Ipv6Prefix {
        self.prefix
    }

    /// Why `address` can never be held on this network, if so.
    pub fn unusable(&self, address: Ipv6Addr) -> Option<Unusable> {
        if !self.prefix.contains(address) {
            return Some(Unusable::OutsideNetwork { cidr: self.prefix.to_string() });
        }
        // Truncation keeps the low 64 bits: the interface identifier.
        let iid = u128::from(address) as u64;
        is_reserved_interface_id(iid).then_some(Unusable::ReservedInterfaceId)
    }
}

/// One node asking for an IPv6 address on the pool's network.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Request {
    pub node: String,
    /// What the address is derived from: stable for the node's whole life,
    /// e.g. `namespace/name`.
    pub identity: String,
    /// The `ipv6Address` the node's spec asks for on this network: any usable
    /// address inside the prefix.
    pub hint: Option<Ipv6Addr>,
}

impl Request {
    pub fn new(node: impl Into<String>, identity: impl Into<String>) -> Self {
        Self { node: node.into(), identity: identity.into(), hint: None }
    }
}

/// Gives `request.node` an IPv6 address and records it in `allocations`; a
/// node that already holds one keeps it. On error nothing changes.
pub fn allocate(
    pool: &Pool,
    allocations: &mut Allocations,
    request: &Request,
) -> Result<Assigned<Ipv6Addr>, IpamError> {
    if let Some(held) = existing(pool, allocations, &request.node) {
        return held;
    }
    let taken = taken_index(allocations);
    let assigned = match request.hint {
        Some(hint) => by_hint(pool, &taken, &request.node, hint)?,
        None => derived(pool, &taken, request)?,
    };
    allocations.insert(request.node.clone(), assigned.address);
    Ok(assigned)
}

/// Allocates many nodes against the same state, independent of the order of
/// `requests`: nodes that already hold an address, then hints, then derived
/// addresses, each phase by node name. A later request for the same node
/// replaces an earlier one.
pub fn allocate_batch(pool: &Pool, allocations: &mut Allocations, requests: &[Request]) -> BatchOutcome<Ipv6Addr> {
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

    for hinted in [true, false] {
        pending.retain(|node, request| {
            if request.hint.is_some() != hinted {
                return true;
            }
            let result = match request.hint {
                Some(hint) => by_hint(pool, &taken, node, hint),
                None => derived(pool, &taken, request),
            };
            if let Ok(assigned) = &result {
                allocations.insert(node.to_string(), assigned.address);
                taken.insert(assigned.address, node.to_string());
            }
            outcome.record(node, result);
            false
        });
    }
    outcome
}

/// What is wrong with stored allocations: addresses outside the prefix or
/// with a reserved IID, then addresses held by several nodes.
pub fn conflicts(pool: &Pool, allocations: &Allocations) -> Vec<IpamError> {
    super::conflicts(&pool.network, allocations, |address| pool.unusable(address))
}

type Taken = BTreeMap<Ipv6Addr, String>;

fn taken_index(allocations: &Allocations) -> Taken {
    super::taken_index(allocations)
}

fn existing(pool: &Pool, allocations: &Allocations, node: &str) -> Option<Result<Assigned<Ipv6Addr>, IpamError>> {
    let address = *allocations.get(node)?;
    Some(match pool.unusable(address) {
        None => Ok(Assigned { address, rule: Rule::Existing }),
        Some(why) => Err(IpamError::Stale {
            network: pool.network.clone(),
            node: node.to_string(),
            address: IpAddr::V6(address),
            why,
        }),
    })
}

fn by_hint(pool: &Pool, taken: &Taken, node: &str, hint: Ipv6Addr) -> Result<Assigned<Ipv6Addr>, IpamError> {
    if let Some(why) = pool.unusable(hint) {
        return Err(IpamError::HintUnusable {
            network: pool.network.clone(),
            node: node.to_string(),
            address: IpAddr::V6(hint),
            why,
        });
    }
    if let Some(holder) = taken.get(&hint) {
        return Err(IpamError::HintTaken {
            network: pool.network.clone(),
            node: node.to_string(),
            address: IpAddr::V6(hint),
            holder: holder.clone(),
        });
    }
    Ok(Assigned { address: hint, rule: Rule::Hint })
}

fn derived(pool: &Pool, taken: &Taken, request: &Request) -> Result<Assigned<Ipv6Addr>, IpamError> {
    (0..MAX_ATTEMPTS)
        .find_map(|attempt| {
            let iid = interface_id(&request.identity, attempt);
            let address = pool.prefix.with_interface_id(iid);
            (!is_reserved_interface_id(iid) && !taken.contains_key(&address))
                .then_some(Assigned { address, rule: Rule::Derived { attempt } })
        })
        .ok_or_else(|| IpamError::NoDerivedAddress {
            network: pool.network.clone(),
            node: request.node.clone(),
            attempts: MAX_ATTEMPTS,
        })
}
