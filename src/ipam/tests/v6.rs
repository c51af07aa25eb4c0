use super::{admin, ip};
use crate::ipam::v4;
use crate::ipam::v6::{
    Allocations, Ipv6Prefix, MAX_ATTEMPTS, Pool, Request, allocate, allocate_batch, conflicts, interface_id,
    is_reserved_interface_id,
};
use crate::ipam::{IpamError, Rule, Unusable};
use std::net::Ipv6Addr;

fn ip6(text: &str) -> Ipv6Addr {
    text.parse().unwrap()
}

fn lab() -> Pool {
    Pool::new("admin", "fd00:10::/64".parse().unwrap())
}

fn hinted(node: &str, hint: &str) -> Request {
    Request { hint: Some(ip6(hint)), ..Request::new(node, format!("default/{node}")) }
}

#[test]
fn prefix_parses_and_refuses_what_leaves_no_room_for_an_interface_id() {
    let prefix: Ipv6Prefix = "fd00:10::/48".parse().unwrap();
    assert_eq!(prefix.to_string(), "fd00:10::/48");
    assert!(prefix.contains(ip6("fd00:10:0:ff::1")));
    assert!(!prefix.contains(ip6("fd00:11::1")));
    let message = |text: &str| text.parse::<Ipv6Prefix>().unwrap_err().to_string();
    assert!(message("fd00:10::/80").contains("longer than /64"));
    assert_eq!(
        message("fd00:10::1/64"),
        "\"fd00:10::1/64\" is not an IPv6 prefix of length /64 or shorter, such as fd00:10::/64: host bits are set; the prefix is fd00:10::/64"
    );
    assert!(message("10.0.0.0/24").contains("not an IPv6 address"));
    assert!("::/0".parse::<Ipv6Prefix>().is_ok());
}

/// The derivation is part of the stored state of every site: changing it
/// would renumber every node that is allocated again. This pins it.
#[test]
fn the_interface_id_derivation_does_not_change() {
    assert_eq!(interface_id("default/node-1", 0), PINNED_NODE_1);
    assert_ne!(interface_id("default/node-1", 1), PINNED_NODE_1);
    let a = allocate(&lab(), &mut Allocations::new(), &Request::new("node-1", "default/node-1")).unwrap();
    assert_eq!(a.address, Ipv6Addr::from((0xfd00_0010_0000_0000_u128 << 64) | u128::from(PINNED_NODE_1)));
}

/// First 64 bits of SHA-256("girder.dev/ipv6-iid\0" || 0u32 || "default/node-1"), u bit cleared
/// (checked with Python's hashlib).
const PINNED_NODE_1: u64 = 0xb140_5de0_8fe3_1005;

#[test]
fn the_universal_local_bit_is_clear() {
    for i in 0..200 {
        assert_eq!(interface_id(&format!("n{i}"), 0) & 0x0200_0000_0000_0000, 0);
    }
}

#[test]
fn derived_addresses_are_stable_and_inside_the_prefix() {
    let pool = lab();
    let request = Request::new("a", "default/a");
    let first = allocate(&pool, &mut Allocations::new(), &request).unwrap();
    let second = allocate(&pool, &mut Allocations::new(), &request).unwrap();
    assert_eq!(first, second);
    assert_eq!(first.rule, Rule::Derived { attempt: 0 });
    assert!(pool.prefix().contains(first.address));
    let other = allocate(&pool, &mut Allocations::new(), &Request::new("b", "default/b")).unwrap();
    assert_ne!(first.address, other.address);
}

#[test]
fn a_short_prefix_puts_nodes_in_its_first_64() {
    let pool = Pool::new("wide", "fd00:20::/48".parse().unwrap());
    let a = allocate(&pool, &mut Allocations::new(), &Request::new("a", "default/a")).unwrap();
    assert_eq!(u128::from(a.address) >> 64, 0xfd00_0020_0000_0000);
}

#[test]
fn the_same_identity_has_the_same_interface_id_on_every_network() {
    let admin = allocate(&lab(), &mut Allocations::new(), &Request::new("a", "default/a")).unwrap();
    let storage = Pool::new("storage", "fd00:30::/64".parse().unwrap());
    let other = allocate(&storage, &mut Allocations::new(), &Request::new("a", "default/a")).unwrap();
    assert_eq!(u128::from(admin.address) as u64, u128::from(other.address) as u64);
}

#[test]
fn reserved_interface_ids_are_recognised() {
    for reserved in [
        0,
        0x0200_5eff_fe00_0000,
        0x0200_5eff_fe00_5213,
        0x0200_5eff_feff_ffff,
        0xfdff_ffff_ffff_ff80,
        0xfdff_ffff_ffff_ffff,
    ] {
        assert!(is_reserved_interface_id(reserved), "{reserved:x}");
    }
    for usable in [1, 0x0200_5eff_fdff_ffff, 0x0200_5eff_ff00_0000, 0xfdff_ffff_ffff_ff7f, 0xffff_ffff_ffff_ffff] {
        assert!(!is_reserved_interface_id(usable), "{usable:x}");
    }
}

#[test]
fn a_collision_is_resolved_by_the_next_attempt() {
    let pool = lab();
    let squatter = pool.prefix().with_interface_id(interface_id("default/a", 0));
    let mut allocations = Allocations::from([("squatter".to_string(), squatter)]);
    let a = allocate(&pool, &mut allocations, &Request::new("a", "default/a")).unwrap();
    assert_eq!(a.rule, Rule::Derived { attempt: 1 });
    assert_eq!(a.address, pool.prefix().with_interface_id(interface_id("default/a", 1)));
    assert_eq!(a.rule.to_string(), "derived from the node's identity (attempt 1, after collisions)");
}

#[test]
fn when_every_attempt_collides_the_error_asks_for_a_hint() {
    let pool = lab();
    let mut allocations: Allocations = (0..MAX_ATTEMPTS)
        .map(|attempt| {
            (format!("squatter-{attempt}"), pool.prefix().with_interface_id(interface_id("default/a", attempt)))
        })
        .collect();
    let error = allocate(&pool, &mut allocations, &Request::new("a", "default/a")).unwrap_err();
    assert_eq!(error.reason(), "NoDerivedAddress");
    assert!(error.to_string().contains("give the node an ipv6Address hint"));
}

#[test]
fn hints_are_honoured_like_ipv4_hints() {
    let pool = lab();
    let mut allocations = Allocations::new();
    let a = allocate(&pool, &mut allocations, &hinted("a", "fd00:10::23")).unwrap();
    assert_eq!((a.address, a.rule), (ip6("fd00:10::23"), Rule::Hint));

    let taken = allocate(&pool, &mut allocations, &hinted("b", "fd00:10::23")).unwrap_err();
    assert_eq!(taken.to_string(), "node b asks for fd00:10::23 on network admin, but node a holds it");
    let outside = allocate(&pool, &mut allocations, &hinted("b", "fd00:11::23")).unwrap_err();
    assert_eq!(
        outside.to_string(),
        "node b asks for fd00:11::23 on network admin, but that address is outside fd00:10::/64"
    );
    let anycast = allocate(&pool, &mut allocations, &hinted("b", "fd00:10::")).unwrap_err();
    assert!(matches!(anycast, IpamError::HintUnusable { why: Unusable::ReservedInterfaceId, .. }));
}

#[test]
fn an_existing_address_is_kept_and_a_moved_prefix_makes_it_stale() {
    let pool = lab();
    let mut allocations = Allocations::from([("a".to_string(), ip6("fd00:10::99"))]);
    let kept = allocate(&pool, &mut allocations, &Request::new("a", "default/a")).unwrap();
    assert_eq!((kept.address, kept.rule), (ip6("fd00:10::99"), Rule::Existing));
    let moved = Pool::new("admin", "fd00:99::/64".parse().unwrap());
    let stale = allocate(&moved, &mut allocations, &Request::new("a", "default/a")).unwrap_err();
    assert_eq!(stale.reason(), "StaleAllocation");
    assert_eq!(conflicts(&moved, &allocations), [stale]);
}

#[test]
fn batch_order_does_not_matter_and_hints_go_first() {
    let pool = lab();
    let squatted = pool.prefix().with_interface_id(interface_id("default/a", 0));
    let mut requests = vec![
        Request::new("a", "default/a"),
        Request { hint: Some(squatted), ..Request::new("z", "default/z") },
        Request::new("m", "default/m"),
    ];
    let forward = allocate_batch(&pool, &mut Allocations::new(), &requests);
    requests.reverse();
    let backward = allocate_batch(&pool, &mut Allocations::new(), &requests);
    assert_eq!(forward, backward);
    assert_eq!(forward.assigned["z"].address, squatted);
    assert_eq!(forward.assigned["a"].rule, Rule::Derived { attempt: 1 });
}

#[test]
fn adding_a_prefix_to_a_live_network_leaves_every_ipv4_address_alone() {
    let v4_pool = admin();
    let mut v4_allocations = v4::Allocations::new();
    let nodes: Vec<String> = (0..50).map(|i| format!("node-{i:02}")).collect();
    let v4_requests: Vec<v4::Request> = nodes.iter().map(v4::Request::new).collect();
    v4::allocate_batch(&v4_pool, &mut v4_allocations, &v4_requests);
    let before = v4_allocations.clone();

    let v6_requests: Vec<Request> = nodes.iter().map(|n| Request::new(n.clone(), format!("default/{n}"))).collect();
    let mut v6_allocations = Allocations::new();
    let outcome = allocate_batch(&lab(), &mut v6_allocations, &v6_requests);
    assert_eq!(outcome.assigned.len(), 50);
    assert!(outcome.failed.is_empty());

    let again = v4::allocate_batch(&v4_pool, &mut v4_allocations, &v4_requests);
    assert!(!again.changed());
    assert_eq!(v4_allocations, before);
    assert_eq!(v4_allocations["node-00"], ip("10.0.0.10"));
}
