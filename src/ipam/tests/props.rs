//! Properties of allocation over random networks, states and requests.

use crate::ipam::conduit::{self, Conduit, Nic, Policy, Slot};
use crate::ipam::v4::{self, Allocations, GroupAddress, Ipv4Cidr, Pool, Range, Request};
use crate::ipam::v6;
use crate::ipam::{IpamError, Rule, release};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// A /22 to /30 at a random place, one to three static ranges (sometimes one
/// spanning the whole network, so network and broadcast addresses are in
/// range), maybe a gateway.
fn arb_pool() -> impl Strategy<Value = Pool> {
    (
        22u8..=30,
        any::<u32>(),
        prop::collection::vec((any::<u32>(), any::<u32>()), 1..=3),
        prop::bool::weighted(0.25),
        prop::option::of(any::<u32>()),
    )
        .prop_map(|(len, base, ranges, whole, gateway)| {
            let size = 1u32 << (32 - len);
            let network = base & (u32::MAX << (32 - len));
            let at = |offset: u32| Ipv4Addr::from(network + offset % size);
            let mut ranges: Vec<Range> = ranges
                .into_iter()
                .enumerate()
                .map(|(i, (a, b))| {
                    let (a, b) = (a % size, b % size);
                    Range { name: format!("r{i}"), start: at(a.min(b)), end: at(a.max(b)) }
                })
                .collect();
            if whole {
                ranges.push(Range { name: "all".to_string(), start: at(0), end: at(size - 1) });
            }
            let cidr = Ipv4Cidr::new(Ipv4Addr::from(network), len).unwrap();
            Pool::new("net", cidr, gateway.map(at), ranges).unwrap()
        })
}

/// A request before it is placed on a pool: offsets from the network address,
/// reduced to a little more than the network so some fall outside it.
#[derive(Clone, Debug)]
struct Raw {
    hint: Option<u32>,
    peers: Vec<(bool, u32)>,
}

fn arb_raw() -> impl Strategy<Value = Raw> {
    (prop::option::weighted(0.2, any::<u32>()), prop::collection::vec((any::<bool>(), any::<u32>()), 0..=2))
        .prop_map(|(hint, peers)| Raw { hint, peers })
}

fn spread(pool: &Pool) -> u32 {
    let size = u32::try_from(pool.cidr().size()).unwrap();
    size + size / 4
}

fn peer_cidr(second: bool) -> (String, Ipv4Cidr) {
    if second {
        ("beta".to_string(), "172.17.0.0/20".parse().unwrap())
    } else {
        ("alpha".to_string(), "172.16.0.0/20".parse().unwrap())
    }
}

fn place(pool: &Pool, node: String, raw: &Raw) -> Request {
    let base = u32::from(pool.cidr().network());
    let mut request = Request::new(node);
    request.hint = raw.hint.map(|h| Ipv4Addr::from(base.wrapping_add(h % spread(pool))));
    for (second, offset) in &raw.peers {
        let (network, cidr) = peer_cidr(*second);
        let address = cidr.with_host_part(offset % spread(pool)).unwrap();
        request.group_addresses.insert(network, GroupAddress { cidr, address });
    }
    request
}

/// A pool, a state some of the nodes already hold, and requests for all the
/// nodes (those already allocated included).
fn scenario() -> impl Strategy<Value = (Pool, Allocations, Vec<Request>)> {
    (arb_pool(), prop::collection::vec(arb_raw(), 0..48), any::<prop::sample::Index>()).prop_map(
        |(pool, raws, split)| {
            let requests: Vec<Request> =
                raws.iter().enumerate().map(|(i, raw)| place(&pool, format!("n{i:02}"), raw)).collect();
            let mut initial = Allocations::new();
            let held = split.index(requests.len() + 1);
            v4::allocate_batch(&pool, &mut initial, &requests[..held]);
            (pool, initial, requests)
        },
    )
}

/// Every free address, counted one by one.
fn census(pool: &Pool, allocations: &Allocations) -> u64 {
    let held: BTreeSet<Ipv4Addr> = allocations.values().copied().collect();
    let base = u32::from(pool.cidr().network());
    (0..u32::try_from(pool.cidr().size()).unwrap())
        .map(|offset| Ipv4Addr::from(base + offset))
        .filter(|a| pool.allocatable(*a) && !held.contains(a))
        .count() as u64
}

fn arb_nics() -> impl Strategy<Value = Vec<Nic>> {
    prop::collection::btree_map(
        0u8..12,
        prop::sample::select(vec![None, Some(1000), Some(10_000), Some(25_000), Some(100)]),
        0..8,
    )
    .prop_map(|nics| {
        nics.into_iter()
            .map(|(n, speed)| Nic {
                name: (n % 5 != 4).then(|| format!("eth{n}")),
                mac: format!("02:00:00:00:00:{n:02x}"),
                speed_mbps: speed,
            })
            .collect()
    })
}

fn arb_conduit() -> impl Strategy<Value = Conduit> {
    prop::collection::btree_set((prop::sample::select(vec![1u32, 10, 25]), 0u32..3), 1..=3).prop_map(|slots| {
        let text: Vec<String> = slots.iter().map(|(g, i)| format!("{g}g{i}")).collect();
        text.join(",").parse().unwrap()
    })
}

proptest! {
    #[test]
    fn no_address_is_given_twice_nor_outside_the_static_ranges(
        (pool, initial, requests) in scenario()
    ) {
        let mut allocations = initial.clone();
        let outcome = v4::allocate_batch(&pool, &mut allocations, &requests);

        let distinct: BTreeSet<Ipv4Addr> = allocations.values().copied().collect();
        prop_assert_eq!(distinct.len(), allocations.len(), "duplicate in {:?}", allocations);

        let nodes: BTreeSet<&String> = requests.iter().map(|r| &r.node).collect();
        let answered: BTreeSet<&String> =
            outcome.assigned.keys().chain(outcome.failed.keys()).collect();
        prop_assert_eq!(answered.len(), outcome.assigned.len() + outcome.failed.len());
        prop_assert_eq!(answered, nodes);

        let cidr = pool.cidr();
        for (node, assigned) in &outcome.assigned {
            prop_assert_eq!(allocations.get(node), Some(&assigned.address));
            if assigned.rule == Rule::Existing {
                prop_assert_eq!(initial.get(node), Some(&assigned.address));
                continue;
            }
            let a = assigned.address;
            prop_assert!(pool.ranges().iter().any(|r| r.start <= a && a <= r.end), "{} outside the ranges", a);
            prop_assert_ne!(a, cidr.network());
            prop_assert_ne!(a, cidr.broadcast());
            prop_assert_ne!(Some(a), pool.gateway());
        }
        for node in outcome.failed.keys() {
            prop_assert!(!allocations.contains_key(node));
        }
        let free = v4::free_count(&pool, &allocations);
        prop_assert_eq!(free, census(&pool, &allocations));
        let new = outcome.assigned.values().filter(|a| a.rule != Rule::Existing).count() as u64;
        prop_assert_eq!(free, v4::free_count(&pool, &initial) - new);
        if outcome.failed.values().any(|e| matches!(e, IpamError::Exhausted { .. })) {
            prop_assert_eq!(free, 0);
        }
    }

    #[test]
    fn the_same_inputs_give_the_same_allocations_in_any_order(
        ((pool, initial, requests), shuffled) in scenario().prop_flat_map(|s| {
            let requests = s.2.clone();
            (Just(s), Just(requests).prop_shuffle())
        })
    ) {
        let mut first = initial.clone();
        let mut second = initial.clone();
        let mut third = initial.clone();
        let a = v4::allocate_batch(&pool, &mut first, &requests);
        let b = v4::allocate_batch(&pool, &mut second, &requests);
        let c = v4::allocate_batch(&pool, &mut third, &shuffled);
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(&a, &c);
        prop_assert_eq!(&first, &second);
        prop_assert_eq!(&first, &third);
    }

    #[test]
    fn alignment_is_kept_whenever_the_aligned_address_is_free(
        (pool, initial, _) in scenario(),
        offset in any::<u32>(),
        second in any::<bool>(),
    ) {
        let (network, cidr) = peer_cidr(second);
        let host = offset % spread(&pool);
        let mut request = Request::new("x");
        request.group_addresses.insert(
            network.clone(),
            GroupAddress { cidr, address: cidr.with_host_part(host).unwrap() },
        );
        let candidate = pool.cidr().with_host_part(host);
        let free = candidate
            .filter(|c| pool.allocatable(*c) && !initial.values().any(|a| a == c));
        let mut allocations = initial.clone();
        let result = v4::allocate(&pool, &mut allocations, &request);
        match free {
            Some(c) => {
                let assigned = result.unwrap();
                prop_assert_eq!(assigned.address, c);
                prop_assert_eq!(assigned.rule, Rule::Aligned { network });
            }
            None => {
                if let Ok(assigned) = result {
                    prop_assert_eq!(assigned.rule, Rule::FirstFree);
                }
            }
        }
    }

    #[test]
    fn a_batch_keeps_the_alignment_of_every_node_whose_aligned_address_is_free(
        (pool, initial, _) in scenario(),
        hosts in prop::collection::btree_set(any::<u32>(), 0..40),
    ) {
        let (network, cidr) = peer_cidr(false);
        let hosts: BTreeSet<u32> = hosts.into_iter().map(|h| h % spread(&pool)).collect();
        let requests: Vec<Request> = hosts
            .iter()
            .map(|&host| {
                let mut request = Request::new(format!("x{host:05}"));
                request.group_addresses.insert(
                    network.clone(),
                    GroupAddress { cidr, address: cidr.with_host_part(host).unwrap() },
                );
                request
            })
            .collect();
        let mut allocations = initial.clone();
        let outcome = v4::allocate_batch(&pool, &mut allocations, &requests);
        for (request, host) in requests.iter().zip(&hosts) {
            let candidate = pool.cidr().with_host_part(*host);
            if let Some(c) = candidate.filter(|c| pool.allocatable(*c) && !initial.values().any(|a| a == c)) {
                let assigned = &outcome.assigned[&request.node];
                prop_assert_eq!(assigned.address, c);
                prop_assert_eq!(&assigned.rule, &Rule::Aligned { network: network.clone() });
            }
        }
    }

    #[test]
    fn releasing_then_allocating_again_gives_the_same_addresses(
        (pool, initial, requests) in scenario()
    ) {
        let mut allocations = initial.clone();
        let first = v4::allocate_batch(&pool, &mut allocations, &requests);
        let after_first = allocations.clone();
        for (node, assigned) in &first.assigned {
            if assigned.rule != Rule::Existing {
                release(&mut allocations, node);
            }
        }
        prop_assert_eq!(&allocations, &initial);
        let second = v4::allocate_batch(&pool, &mut allocations, &requests);
        prop_assert_eq!(first, second);
        prop_assert_eq!(allocations, after_first);
    }

    #[test]
    fn a_batch_of_one_is_a_single_allocation((pool, initial, requests) in scenario()) {
        for request in &requests {
            let mut single = initial.clone();
            let mut batch = initial.clone();
            let one = v4::allocate(&pool, &mut single, request);
            let outcome = v4::allocate_batch(&pool, &mut batch, std::slice::from_ref(request));
            match one {
                Ok(assigned) => prop_assert_eq!(Some(&assigned), outcome.assigned.get(&request.node)),
                Err(error) => prop_assert_eq!(Some(&error), outcome.failed.get(&request.node)),
            }
            prop_assert_eq!(single, batch);
        }
    }

    #[test]
    fn ipv6_addresses_are_stable_inside_the_prefix_and_never_reserved(
        len in 0u8..=64,
        base in any::<u128>(),
        identity in "[a-z0-9/-]{1,40}",
    ) {
        let network = std::net::Ipv6Addr::from(base & u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0));
        let pool = v6::Pool::new("net", v6::Ipv6Prefix::new(network, len).unwrap());
        let request = v6::Request::new("x", identity);
        let a = v6::allocate(&pool, &mut v6::Allocations::new(), &request).unwrap();
        let b = v6::allocate(&pool, &mut v6::Allocations::new(), &request).unwrap();
        prop_assert_eq!(&a, &b);
        prop_assert!(pool.prefix().contains(a.address));
        prop_assert!(!v6::is_reserved_interface_id(u128::from(a.address) as u64));
        prop_assert_eq!(pool.unusable(a.address), None);
    }

    #[test]
    fn different_identities_get_different_ipv6_addresses(
        identities in prop::collection::btree_set("[a-z0-9/-]{1,24}", 2..60),
    ) {
        let pool = v6::Pool::new("net", "fd00:10::/64".parse().unwrap());
        let requests: Vec<v6::Request> = identities
            .iter()
            .enumerate()
            .map(|(i, identity)| v6::Request::new(format!("n{i:02}"), identity.clone()))
            .collect();
        let mut allocations = v6::Allocations::new();
        let outcome = v6::allocate_batch(&pool, &mut allocations, &requests);
        prop_assert!(outcome.failed.is_empty());
        let distinct: BTreeSet<_> = allocations.values().collect();
        prop_assert_eq!(distinct.len(), identities.len());
        // Alone, each identity gets the same address as in the crowd.
        for request in &requests {
            let alone = v6::allocate(&pool, &mut v6::Allocations::new(), request).unwrap();
            prop_assert_eq!(alone.address, allocations[&request.node]);
        }
    }

    #[test]
    fn conduit_selection_ignores_inventory_order_and_matches_speeds(
        (nics, shuffled) in arb_nics().prop_flat_map(|n| (Just(n.clone()), Just(n).prop_shuffle())),
        conduit in arb_conduit(),
    ) {
        let strict = conduit::select("net", "node", &conduit, &nics, Policy::Strict);
        let again = conduit::select("net", "node", &conduit, &shuffled, Policy::Strict);
        prop_assert_eq!(&strict, &again);
        let count = |slot: &Slot| nics.iter().filter(|n| n.speed_mbps == Some(slot.speed_mbps())).count();
        match strict {
            Ok(selection) => {
                let macs: BTreeSet<String> = selection.macs().into_iter().collect();
                prop_assert_eq!(macs.len(), conduit.slots().len());
                for member in &selection.members {
                    let slot = member.slot.unwrap();
                    prop_assert_eq!(member.speed_mbps, Some(slot.speed_mbps()));
                    prop_assert!(!member.substitute);
                }
            }
            Err(conduit::ConduitError::Missing { missing, .. }) => {
                prop_assert!(!missing.is_empty());
                for slot in &missing {
                    prop_assert!(count(slot) <= slot.index as usize);
                }
            }
            Err(other) => prop_assert!(false, "{other}"),
        }

        let fallback = conduit::select("net", "node", &conduit, &nics, Policy::FallbackToFastest);
        prop_assert_eq!(&fallback, &conduit::select("net", "node", &conduit, &shuffled, Policy::FallbackToFastest));
        if nics.len() >= conduit.slots().len() {
            let selection = fallback.unwrap();
            let macs: BTreeSet<String> = selection.macs().into_iter().collect();
            prop_assert_eq!(macs.len(), conduit.slots().len());
            // Where the strict choice exists, the fallback makes the same one.
            let exact: BTreeMap<Slot, String> = selection
                .members
                .iter()
                .filter(|m| !m.substitute)
                .map(|m| (m.slot.unwrap(), m.mac.clone()))
                .collect();
            for slot in conduit.slots() {
                prop_assert_eq!(exact.contains_key(slot), count(slot) > slot.index as usize);
            }
        } else {
            prop_assert!(fallback.is_err());
        }
    }
}
