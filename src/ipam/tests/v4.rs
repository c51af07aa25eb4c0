use super::{admin, cidr, group_address, ip, pool, range};
use crate::ipam::v4::{self, Allocations, Ipv4Cidr, Pool, Request, allocate, allocate_batch, conflicts, free_count};
use crate::ipam::{IpamError, Rule, Unusable, release, release_absent};
use std::collections::BTreeSet;
use std::net::IpAddr;

fn hinted(node: &str, hint: &str) -> Request {
    Request { hint: Some(ip(hint)), ..Request::new(node) }
}

fn aligned_with(node: &str, network: &str, net: &str, address: &str) -> Request {
    let mut request = Request::new(node);
    request.group_addresses.insert(network.to_string(), group_address(net, address));
    request
}

// --- CIDR and pool ---

#[test]
fn cidr_parses_and_prints() {
    let net: Ipv4Cidr = "10.1.2.0/23".parse().unwrap();
    assert_eq!(net.to_string(), "10.1.2.0/23");
    assert_eq!(net.broadcast(), ip("10.1.3.255"));
    assert_eq!(net.size(), 512);
    assert_eq!(net.host_part(ip("10.1.3.1")), Some(257));
    assert_eq!(net.with_host_part(257), Some(ip("10.1.3.1")));
    assert_eq!(net.with_host_part(512), None);
    assert_eq!(cidr("0.0.0.0/0").size(), 1 << 32);
    assert_eq!(cidr("0.0.0.0/0").broadcast(), ip("255.255.255.255"));
}

#[test]
fn cidr_refuses_what_is_not_a_network() {
    let message = |text: &str| text.parse::<Ipv4Cidr>().unwrap_err().to_string();
    assert_eq!(
        message("10.0.0.5/24"),
        "\"10.0.0.5/24\" is not an IPv4 CIDR such as 10.0.0.0/24: host bits are set; the network address is 10.0.0.0"
    );
    assert!(message("10.0.0.0").contains("no /prefix length"));
    assert!(message("10.0.0.0/33").contains("above 32"));
    assert!(message("10.0.0.0/x").contains("not a number"));
    assert!(message("fd00::/64").contains("not an IPv4 address"));
}

#[test]
fn pool_refuses_ranges_and_gateway_outside_the_cidr() {
    let net = cidr("10.0.0.0/24");
    let outside = Pool::new("admin", net, None, vec![range("nodes", "10.0.0.10", "10.0.1.5")]).unwrap_err();
    assert_eq!(
        outside.to_string(),
        "network admin cannot be allocated from: static range nodes 10.0.0.10-10.0.1.5 lies outside 10.0.0.0/24"
    );
    assert_eq!(outside.reason(), "InvalidNetwork");
    let backwards = Pool::new("admin", net, None, vec![range("nodes", "10.0.0.20", "10.0.0.10")]).unwrap_err();
    assert!(backwards.to_string().contains("starts after it ends"));
    let gateway = Pool::new("admin", net, Some(ip("10.0.1.1")), vec![]).unwrap_err();
    assert!(gateway.to_string().contains("gateway 10.0.1.1 lies outside 10.0.0.0/24"));
}

// --- first free ---

#[test]
fn first_free_is_the_lowest_address_of_the_first_range() {
    let pool = admin();
    let mut allocations = Allocations::new();
    let a = allocate(&pool, &mut allocations, &Request::new("a")).unwrap();
    let b = allocate(&pool, &mut allocations, &Request::new("b")).unwrap();
    assert_eq!((a.address, a.rule), (ip("10.0.0.10"), Rule::FirstFree));
    assert_eq!(b.address, ip("10.0.0.11"));
    assert_eq!(allocations.get("a"), Some(&ip("10.0.0.10")));
}

#[test]
fn ranges_are_searched_in_declared_order() {
    let pool =
        pool("admin", "10.0.0.0/24", None, &[("high", "10.0.0.200", "10.0.0.201"), ("low", "10.0.0.10", "10.0.0.20")]);
    let mut allocations = Allocations::new();
    let got: Vec<_> =
        ["a", "b", "c"].iter().map(|n| allocate(&pool, &mut allocations, &Request::new(*n)).unwrap().address).collect();
    assert_eq!(got, [ip("10.0.0.200"), ip("10.0.0.201"), ip("10.0.0.10")]);
}

#[test]
fn first_free_fills_gaps_left_by_released_nodes() {
    let pool = admin();
    let mut allocations = Allocations::new();
    for node in ["a", "b", "c"] {
        allocate(&pool, &mut allocations, &Request::new(node)).unwrap();
    }
    assert_eq!(release(&mut allocations, "b"), Some(ip("10.0.0.11")));
    assert_eq!(release(&mut allocations, "b"), None);
    let d = allocate(&pool, &mut allocations, &Request::new("d")).unwrap();
    assert_eq!(d.address, ip("10.0.0.11"));
}

#[test]
fn network_broadcast_and_gateway_are_never_given_out() {
    let pool = pool("admin", "10.0.0.0/29", Some("10.0.0.1"), &[("all", "10.0.0.0", "10.0.0.7")]);
    let mut allocations = Allocations::new();
    let requests: Vec<Request> = (0..8).map(|i| Request::new(format!("n{i}"))).collect();
    let outcome = allocate_batch(&pool, &mut allocations, &requests);
    let given: Vec<_> = outcome.assigned.values().map(|a| a.address).collect();
    assert_eq!(given, ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"].map(ip));
    assert_eq!(outcome.failed.len(), 3);
    assert_eq!(pool.capacity(), 5);
}

#[test]
fn point_to_point_networks_use_every_address() {
    let p2p = pool("p2p", "10.0.0.0/31", None, &[("both", "10.0.0.0", "10.0.0.1")]);
    assert_eq!(p2p.capacity(), 2);
    let mut allocations = Allocations::new();
    let a = allocate(&p2p, &mut allocations, &Request::new("a")).unwrap();
    assert_eq!(a.address, ip("10.0.0.0"));
    let host = pool("host", "10.0.0.9/32", None, &[("one", "10.0.0.9", "10.0.0.9")]);
    assert_eq!(host.capacity(), 1);
}

#[test]
fn exhaustion_is_an_error_that_names_the_network_and_node() {
    let pool = pool("tiny", "10.0.0.0/24", None, &[("nodes", "10.0.0.10", "10.0.0.11")]);
    let mut allocations = Allocations::new();
    allocate(&pool, &mut allocations, &Request::new("a")).unwrap();
    allocate(&pool, &mut allocations, &Request::new("b")).unwrap();
    let before = allocations.clone();
    let error = allocate(&pool, &mut allocations, &Request::new("c")).unwrap_err();
    assert_eq!(error, IpamError::Exhausted { network: "tiny".to_string(), node: "c".to_string(), capacity: 2 });
    assert_eq!(error.reason(), "Exhausted");
    assert_eq!(
        error.to_string(),
        "network tiny is exhausted (free: 0, all 2 usable addresses of its static ranges are allocated), so node c gets no address; widen a static range or remove a node from the network"
    );
    assert_eq!(allocations, before, "a failed allocation changes nothing");
    assert_eq!(free_count(&pool, &allocations), 0);
}

#[test]
fn a_network_without_static_ranges_is_exhausted_at_once() {
    let pool = pool("dhcp-only", "10.0.0.0/24", None, &[]);
    let error = allocate(&pool, &mut Allocations::new(), &Request::new("a")).unwrap_err();
    assert!(matches!(error, IpamError::Exhausted { capacity: 0, .. }));
}

// --- existing ---

#[test]
fn a_node_keeps_its_address_even_when_its_hint_changes() {
    let pool = admin();
    let mut allocations = Allocations::new();
    allocate(&pool, &mut allocations, &hinted("a", "10.0.0.50")).unwrap();
    let again = allocate(&pool, &mut allocations, &hinted("a", "10.0.0.60")).unwrap();
    assert_eq!((again.address, again.rule), (ip("10.0.0.50"), Rule::Existing));
    assert_eq!(allocations.len(), 1);
}

#[test]
fn an_address_outside_the_ranges_but_inside_the_network_is_kept() {
    let pool = admin();
    let mut allocations = Allocations::from([("a".to_string(), ip("10.0.0.200"))]);
    let kept = allocate(&pool, &mut allocations, &Request::new("a")).unwrap();
    assert_eq!((kept.address, kept.rule), (ip("10.0.0.200"), Rule::Existing));
}

#[test]
fn an_address_the_network_no_longer_allows_is_stale() {
    let pool = admin();
    let mut allocations = Allocations::from([("a".to_string(), ip("10.9.0.23")), ("b".to_string(), ip("10.0.0.1"))]);
    let error = allocate(&pool, &mut allocations, &Request::new("a")).unwrap_err();
    assert_eq!(error.reason(), "StaleAllocation");
    assert_eq!(
        error.to_string(),
        "node a holds 10.9.0.23 on network admin, which is now outside 10.0.0.0/24; release that allocation to renumber the node"
    );
    let gateway = allocate(&pool, &mut allocations, &Request::new("b")).unwrap_err();
    assert!(matches!(gateway, IpamError::Stale { why: Unusable::Gateway, .. }));
}

// --- hints ---

#[test]
fn a_free_hint_in_a_static_range_is_used() {
    let pool = admin();
    let mut allocations = Allocations::new();
    let a = allocate(&pool, &mut allocations, &hinted("a", "10.0.0.42")).unwrap();
    assert_eq!((a.address, a.rule), (ip("10.0.0.42"), Rule::Hint));
}

#[test]
fn a_hint_outside_the_static_ranges_is_refused_with_the_ranges() {
    let error = allocate(&admin(), &mut Allocations::new(), &hinted("a", "10.0.0.150")).unwrap_err();
    assert_eq!(error.reason(), "HintUnusable");
    assert_eq!(
        error.to_string(),
        "node a asks for 10.0.0.150 on network admin, but that address is outside the static ranges (nodes 10.0.0.10-10.0.0.99)"
    );
}

#[test]
fn a_hint_outside_the_network_is_refused() {
    let error = allocate(&admin(), &mut Allocations::new(), &hinted("a", "10.0.1.5")).unwrap_err();
    assert_eq!(error.to_string(), "node a asks for 10.0.1.5 on network admin, but that address is outside 10.0.0.0/24");
}

#[test]
fn a_hint_on_a_reserved_address_says_which() {
    let pool = pool("admin", "10.0.0.0/24", Some("10.0.0.1"), &[("all", "10.0.0.0", "10.0.0.255")]);
    let why = |hint: &str| match allocate(&pool, &mut Allocations::new(), &hinted("a", hint)) {
        Err(IpamError::HintUnusable { why, .. }) => why,
        other => panic!("{other:?}"),
    };
    assert_eq!(why("10.0.0.0"), Unusable::NetworkAddress);
    assert_eq!(why("10.0.0.1"), Unusable::Gateway);
    assert_eq!(why("10.0.0.255"), Unusable::BroadcastAddress);
}

#[test]
fn a_taken_hint_names_the_holder_and_does_not_fall_back() {
    let pool = admin();
    let mut allocations = Allocations::new();
    allocate(&pool, &mut allocations, &hinted("a", "10.0.0.42")).unwrap();
    let error = allocate(&pool, &mut allocations, &hinted("b", "10.0.0.42")).unwrap_err();
    assert_eq!(error.reason(), "HintTaken");
    assert_eq!(error.to_string(), "node b asks for 10.0.0.42 on network admin, but node a holds it");
    assert!(!allocations.contains_key("b"));
}

// --- alignment ---

#[test]
fn alignment_reuses_the_host_part_from_another_network_of_the_group() {
    let storage = pool("storage", "10.2.0.0/24", None, &[("nodes", "10.2.0.10", "10.2.0.99")]);
    let request = aligned_with("a", "admin", "10.0.0.0/24", "10.0.0.23");
    let a = allocate(&storage, &mut Allocations::new(), &request).unwrap();
    assert_eq!(a.address, ip("10.2.0.23"));
    assert_eq!(a.rule, Rule::Aligned { network: "admin".to_string() });
    assert_eq!(a.rule.to_string(), "aligned with network admin");
}

#[test]
fn alignment_uses_the_whole_host_part_across_prefix_sizes() {
    // 172.16.1.23 in a /16 has host part 1.23 (279): it fits a /23, not a /24.
    let wide = pool("wide", "10.4.0.0/23", None, &[("nodes", "10.4.0.10", "10.4.1.250")]);
    let request = aligned_with("a", "big", "172.16.0.0/16", "172.16.1.23");
    let a = allocate(&wide, &mut Allocations::new(), &request).unwrap();
    assert_eq!(a.address, ip("10.4.1.23"));
    let narrow = admin();
    let b = allocate(&narrow, &mut Allocations::new(), &request).unwrap();
    assert_eq!((b.address, b.rule), (ip("10.0.0.10"), Rule::FirstFree));
}

#[test]
fn alignment_falls_back_when_the_aligned_address_is_taken_reserved_or_outside() {
    let pool = admin();
    let mut allocations = Allocations::from([("holder".to_string(), ip("10.0.0.23"))]);
    let taken = aligned_with("a", "storage", "10.2.0.0/24", "10.2.0.23");
    let a = allocate(&pool, &mut allocations, &taken).unwrap();
    assert_eq!((a.address, a.rule), (ip("10.0.0.10"), Rule::FirstFree));
    let outside = aligned_with("b", "storage", "10.2.0.0/24", "10.2.0.150");
    assert_eq!(allocate(&pool, &mut allocations, &outside).unwrap().rule, Rule::FirstFree);
    let gateway = aligned_with("c", "storage", "10.2.0.0/24", "10.2.0.1");
    assert_eq!(allocate(&pool, &mut allocations, &gateway).unwrap().rule, Rule::FirstFree);
}

#[test]
fn alignment_tries_the_group_networks_in_name_order() {
    let pool = admin();
    let mut allocations = Allocations::from([("holder".to_string(), ip("10.0.0.30"))]);
    let mut request = Request::new("a");
    // "bmc" comes first but its host part is taken here; "storage" is next.
    request.group_addresses.insert("storage".to_string(), group_address("10.2.0.0/24", "10.2.0.40"));
    request.group_addresses.insert("bmc".to_string(), group_address("10.3.0.0/24", "10.3.0.30"));
    request.group_addresses.insert("admin".to_string(), group_address("10.0.0.0/24", "10.0.0.50"));
    let a = allocate(&pool, &mut allocations, &request).unwrap();
    assert_eq!(a.address, ip("10.0.0.40"));
    assert_eq!(
        a.rule,
        Rule::Aligned { network: "storage".to_string() },
        "the pool's own network is never a group peer"
    );
}

#[test]
fn a_hint_wins_over_alignment() {
    let mut request = aligned_with("a", "storage", "10.2.0.0/24", "10.2.0.23");
    request.hint = Some(ip("10.0.0.77"));
    let a = allocate(&admin(), &mut Allocations::new(), &request).unwrap();
    assert_eq!((a.address, a.rule), (ip("10.0.0.77"), Rule::Hint));
}

// --- batch ---

#[test]
fn batch_gives_hints_and_alignment_before_first_free_whatever_the_names() {
    let pool = admin();
    let mut allocations = Allocations::new();
    let requests = [
        Request::new("a"),
        Request::new("b"),
        hinted("y", "10.0.0.10"),
        aligned_with("z", "storage", "10.2.0.0/24", "10.2.0.11"),
    ];
    let outcome = allocate_batch(&pool, &mut allocations, &requests);
    let got: Vec<(&str, _, &str)> =
        outcome.assigned.iter().map(|(n, a)| (n.as_str(), a.address, a.rule.reason())).collect();
    assert_eq!(
        got,
        [
            ("a", ip("10.0.0.12"), "FirstFree"),
            ("b", ip("10.0.0.13"), "FirstFree"),
            ("y", ip("10.0.0.10"), "Hint"),
            ("z", ip("10.0.0.11"), "Aligned"),
        ]
    );
    assert!(outcome.failed.is_empty());
    assert!(outcome.changed());
    assert_eq!(allocations.len(), 4);
}

#[test]
fn batch_reports_failures_per_node_and_carries_on() {
    let pool = pool("tiny", "10.0.0.0/24", None, &[("nodes", "10.0.0.10", "10.0.0.11")]);
    let mut allocations = Allocations::new();
    let requests = [hinted("a", "10.0.0.50"), Request::new("b"), Request::new("c"), Request::new("d")];
    let outcome = allocate_batch(&pool, &mut allocations, &requests);
    let failed: Vec<(&str, &str)> = outcome.failed.iter().map(|(n, e)| (n.as_str(), e.reason())).collect();
    assert_eq!(failed, [("a", "HintUnusable"), ("d", "Exhausted")]);
    assert_eq!(outcome.assigned.len(), 2);
    assert!(!allocations.contains_key("a") && !allocations.contains_key("d"));
}

#[test]
fn a_batch_of_nodes_that_all_hold_addresses_changes_nothing() {
    let pool = admin();
    let mut allocations = Allocations::new();
    let requests: Vec<Request> = ["a", "b"].map(Request::new).to_vec();
    assert!(allocate_batch(&pool, &mut allocations, &requests).changed());
    let before = allocations.clone();
    let again = allocate_batch(&pool, &mut allocations, &requests);
    assert!(!again.changed());
    assert!(again.assigned.values().all(|a| a.rule == Rule::Existing));
    assert_eq!(allocations, before);
}

#[test]
fn a_later_request_for_the_same_node_replaces_an_earlier_one() {
    let requests = [hinted("a", "10.0.0.50"), hinted("a", "10.0.0.60")];
    let outcome = allocate_batch(&admin(), &mut Allocations::new(), &requests);
    assert_eq!(outcome.assigned.len(), 1);
    assert_eq!(outcome.assigned["a"].address, ip("10.0.0.60"));
}

#[test]
fn three_aligned_networks_keep_every_node_on_one_host_part() {
    let networks = [
        pool("admin", "10.0.0.0/22", Some("10.0.0.1"), &[("n", "10.0.0.10", "10.0.3.250")]),
        pool("bmc", "10.1.0.0/22", Some("10.1.0.1"), &[("n", "10.1.0.10", "10.1.3.250")]),
        pool("storage", "10.2.0.0/22", None, &[("n", "10.2.0.10", "10.2.3.250")]),
    ];
    let nodes: Vec<String> = (0..1000).map(|i| format!("node-{i:04}")).collect();
    let mut held: Vec<Allocations> = Vec::new();
    for pool in &networks {
        let requests: Vec<Request> = nodes
            .iter()
            .map(|node| {
                let mut request = Request::new(node.clone());
                for (earlier, allocations) in networks.iter().zip(&held) {
                    request.group_addresses.insert(
                        earlier.network().to_string(),
                        v4::GroupAddress { cidr: earlier.cidr(), address: allocations[node] },
                    );
                }
                request
            })
            .collect();
        let mut allocations = Allocations::new();
        let outcome = allocate_batch(pool, &mut allocations, &requests);
        assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
        held.push(allocations);
    }
    for node in &nodes {
        let hosts: BTreeSet<u32> = networks
            .iter()
            .zip(&held)
            .map(|(pool, allocations)| pool.cidr().host_part(allocations[node]).unwrap())
            .collect();
        assert_eq!(hosts.len(), 1, "{node} is not aligned: {hosts:?}");
    }
}

// --- free count, release, conflicts ---

#[test]
fn free_count_counts_overlaps_once_and_skips_reserved_and_held() {
    let pool = pool(
        "admin",
        "10.0.0.0/24",
        Some("10.0.0.1"),
        &[("a", "10.0.0.0", "10.0.0.9"), ("b", "10.0.0.5", "10.0.0.14")],
    );
    // .0 to .14 is 15 addresses, minus the network address and the gateway.
    assert_eq!(free_count(&pool, &Allocations::new()), 13);
    let allocations = Allocations::from([("in".to_string(), ip("10.0.0.7")), ("out".to_string(), ip("10.0.0.100"))]);
    assert_eq!(free_count(&pool, &allocations), 12);
}

#[test]
fn release_absent_frees_nodes_that_left() {
    let mut allocations = Allocations::from([
        ("a".to_string(), ip("10.0.0.10")),
        ("b".to_string(), ip("10.0.0.11")),
        ("c".to_string(), ip("10.0.0.12")),
    ]);
    let members = BTreeSet::from(["b".to_string()]);
    let freed = release_absent(&mut allocations, &members);
    assert_eq!(freed.keys().collect::<Vec<_>>(), ["a", "c"]);
    assert_eq!(allocations.keys().collect::<Vec<_>>(), ["b"]);
}

#[test]
fn conflicts_report_stale_then_duplicate_allocations() {
    let pool = admin();
    let allocations = Allocations::from([
        ("a".to_string(), ip("10.0.0.20")),
        ("b".to_string(), ip("10.0.0.20")),
        ("c".to_string(), ip("10.0.0.255")),
        ("d".to_string(), ip("10.0.0.21")),
    ]);
    let found = conflicts(&pool, &allocations);
    assert_eq!(
        found,
        [
            IpamError::Stale {
                network: "admin".to_string(),
                node: "c".to_string(),
                address: IpAddr::V4(ip("10.0.0.255")),
                why: Unusable::BroadcastAddress,
            },
            IpamError::Duplicate {
                network: "admin".to_string(),
                address: IpAddr::V4(ip("10.0.0.20")),
                nodes: vec!["a".to_string(), "b".to_string()],
            },
        ]
    );
    assert_eq!(found[1].to_string(), "nodes a, b all hold 10.0.0.20 on network admin; release all but one");
    assert!(conflicts(&pool, &Allocations::new()).is_empty());
}

#[test]
fn rules_have_stable_reasons() {
    let reasons: Vec<&str> = [
        Rule::Existing,
        Rule::Hint,
        Rule::Aligned { network: "x".to_string() },
        Rule::FirstFree,
        Rule::Derived { attempt: 0 },
    ]
    .iter()
    .map(Rule::reason)
    .collect();
    assert_eq!(reasons, ["Existing", "Hint", "Aligned", "FirstFree", "Derived"]);
}
