//! The Network status from its inputs, with no cluster.

use super::decide;
use crate::api::condition::find;
use crate::api::network::{AddressRange, Allocation, RangeType};
use crate::api::node::NodeNetwork;
use crate::api::{BareMetalNode, BareMetalNodeSpec, ConditionStatus, Network, NetworkSpec, NetworkStatus};
use std::collections::{BTreeMap, BTreeSet};

fn network(name: &str, cidr: &str, start: &str, end: &str) -> Network {
    let mut network = Network::new(
        name,
        NetworkSpec {
            cidr: Some(cidr.to_string()),
            ranges: vec![AddressRange {
                name: "static".into(),
                type_: RangeType::Static,
                start: start.into(),
                end: end.into(),
            }],
            ..Default::default()
        },
    );
    network.metadata.namespace = Some("lab".into());
    network.metadata.generation = Some(2);
    network
}

fn grouped(mut network: Network, group: &str) -> Network {
    network.spec.group = Some(group.into());
    network
}

fn node(name: &str, networks: &[&str]) -> BareMetalNode {
    let mut node = BareMetalNode::new(
        name,
        BareMetalNodeSpec {
            networks: networks
                .iter()
                .map(|n| NodeNetwork {
                    network: n.to_string(),
                    interface: None,
                    ipv4_address: None,
                    ipv6_address: None,
                })
                .collect(),
            ..Default::default()
        },
    );
    node.metadata.namespace = Some("lab".into());
    node
}

fn hinted(mut node: BareMetalNode, network: &str, ipv4: &str) -> BareMetalNode {
    for entry in node.spec.networks.iter_mut().filter(|e| e.network == network) {
        entry.ipv4_address = Some(ipv4.into());
    }
    node
}

fn nodes(prefix: &str, count: usize, networks: &[&str]) -> Vec<BareMetalNode> {
    (0..count).map(|i| node(&format!("{prefix}-{i:03}"), networks)).collect()
}

fn refs(nodes: &[BareMetalNode]) -> Vec<&BareMetalNode> {
    nodes.iter().collect()
}

fn with_status(mut network: Network, status: NetworkStatus) -> Network {
    network.status = Some(status);
    network
}

fn v4_of(status: &NetworkStatus) -> BTreeMap<String, String> {
    status.allocations.iter().filter_map(|a| Some((a.node.clone(), a.ipv4.clone()?))).collect()
}

fn condition<'a>(status: &'a NetworkStatus, type_: &str) -> (&'a str, ConditionStatus, &'a str) {
    let c = find(&status.conditions, type_).unwrap_or_else(|| panic!("no {type_} condition"));
    (c.reason.as_str(), c.status, c.message.as_str())
}

fn none() -> BTreeSet<String> {
    BTreeSet::new()
}

#[test]
fn members_get_first_free_addresses_sorted_by_node() {
    let admin = network("admin", "10.0.0.0/24", "10.0.0.10", "10.0.0.99");
    let all = [node("b", &["admin"]), node("a", &["admin"]), node("outsider", &["other"])];
    let status = decide(&admin, &refs(&all), &none(), &[]);
    let names: Vec<&str> = status.allocations.iter().map(|a| a.node.as_str()).collect();
    assert_eq!(names, ["a", "b"], "only members, sorted by node");
    assert_eq!(v4_of(&status)["a"], "10.0.0.10");
    assert_eq!(v4_of(&status)["b"], "10.0.0.11");
    assert_eq!(status.free, Some(88));
    assert_eq!(status.observed_generation, Some(2));
    let (reason, ready, message) = condition(&status, "Ready");
    assert_eq!((reason, ready), ("Allocated", ConditionStatus::True));
    assert!(message.contains("all 2 nodes") && message.contains("88"), "{message}");
    assert_eq!(condition(&status, "Exhausted").1, ConditionStatus::False);
    assert_eq!(condition(&status, "Conflict").1, ConditionStatus::False);
    assert!(status.conditions.iter().all(|c| c.observed_generation == Some(2)));
}

#[test]
fn deciding_again_from_the_written_status_changes_nothing() {
    // What a restarted operator does: read the status back and decide again.
    let admin = network("admin", "10.0.0.0/24", "10.0.0.10", "10.0.0.99");
    let all = nodes("n", 30, &["admin"]);
    let first = decide(&admin, &refs(&all), &none(), &[]);
    let again = decide(&with_status(admin, first.clone()), &refs(&all), &none(), &[]);
    assert_eq!(again, first);
}

#[test]
fn a_held_address_is_kept_whatever_the_order_of_arrival() {
    let admin = network("admin", "10.0.0.0/24", "10.0.0.10", "10.0.0.99");
    let late = nodes("z", 3, &["admin"]);
    let first = decide(&admin, &refs(&late), &none(), &[]);
    let mut all = nodes("a", 5, &["admin"]);
    all.extend(late);
    let second = decide(&with_status(admin, first.clone()), &refs(&all), &none(), &[]);
    for (node, address) in v4_of(&first) {
        assert_eq!(v4_of(&second)[&node], address, "{node} was renumbered");
    }
    assert_eq!(v4_of(&second).len(), 8);
}

#[test]
fn deleted_nodes_and_nodes_that_left_are_released_unreadable_ones_keep_theirs() {
    let admin = network("admin", "10.0.0.0/24", "10.0.0.10", "10.0.0.99");
    let all = nodes("n", 4, &["admin"]);
    let first = decide(&admin, &refs(&all), &none(), &[]);
    assert_eq!(first.free, Some(86));
    // n-000 is deleted, n-001 leaves the network, n-002 can no longer be read.
    let remaining = [node("n-001", &["storage"]), all[3].clone()];
    let unreadable = BTreeSet::from(["n-002".to_string()]);
    let second = decide(&with_status(admin, first.clone()), &refs(&remaining), &unreadable, &[]);
    let held = v4_of(&second);
    assert_eq!(held.keys().collect::<Vec<_>>(), ["n-002", "n-003"]);
    assert_eq!(held["n-002"], v4_of(&first)["n-002"]);
    assert_eq!(second.free, Some(88));
}

#[test]
fn networks_of_a_group_align_host_parts() {
    let admin = grouped(network("admin", "10.0.0.0/24", "10.0.0.10", "10.0.0.250"), "rack");
    let storage = grouped(network("storage", "10.1.0.0/24", "10.1.0.10", "10.1.0.250"), "rack");
    let mut all = nodes("n", 20, &["admin", "storage"]);
    // A node that is .200 on admin by its hint is .200 on storage too.
    all.push(hinted(node("special", &["admin", "storage"]), "admin", "10.0.0.200"));
    let admin_status = decide(&admin, &refs(&all), &none(), &[&storage]);
    let admin = with_status(admin, admin_status.clone());
    let storage_status = decide(&storage, &refs(&all), &none(), &[&admin]);
    let (on_admin, on_storage) = (v4_of(&admin_status), v4_of(&storage_status));
    assert_eq!(on_storage.len(), 21);
    for (node, address) in &on_admin {
        let host = address.rsplit('.').next().unwrap();
        assert_eq!(on_storage[node], format!("10.1.0.{host}"), "{node} is not aligned");
    }
    assert_eq!(on_storage["special"], "10.1.0.200");
    assert_eq!(condition(&storage_status, "Ready").1, ConditionStatus::True);
}

#[test]
fn a_later_network_of_the_group_waits_for_the_first_instead_of_picking_its_own() {
    let admin = grouped(network("admin", "10.0.0.0/24", "10.0.0.10", "10.0.0.250"), "rack");
    let storage = grouped(network("storage", "10.1.0.0/24", "10.1.0.10", "10.1.0.250"), "rack");
    let all = [node("m", &["admin", "storage"]), node("only-storage", &["storage"])];
    // admin has not reconciled yet: storage must not pick first-free for m.
    let status = decide(&storage, &refs(&all), &none(), &[&admin]);
    let held = v4_of(&status);
    assert!(!held.contains_key("m"), "m must wait for admin: {held:?}");
    assert_eq!(held["only-storage"], "10.1.0.10", "a node not on admin is not held back");
    let (reason, ready, message) = condition(&status, "Ready");
    assert_eq!((reason, ready), ("Aligning", ConditionStatus::False));
    assert!(message.contains("m (on admin)"), "{message}");
    // The first network of the group never waits.
    let status = decide(&admin, &refs(&all), &none(), &[&storage]);
    assert_eq!(v4_of(&status)["m"], "10.0.0.10");
}

#[test]
fn a_full_first_network_does_not_hold_the_others_back() {
    let tiny = grouped(network("a-tiny", "10.0.0.0/29", "10.0.0.1", "10.0.0.1"), "rack");
    let storage = grouped(network("storage", "10.1.0.0/24", "10.1.0.1", "10.1.0.250"), "rack");
    let all = nodes("n", 3, &["a-tiny", "storage"]);
    let tiny = with_status(tiny.clone(), decide(&tiny, &refs(&all), &none(), &[&storage]));
    assert_eq!(tiny.status.as_ref().unwrap().free, Some(0));
    let status = decide(&storage, &refs(&all), &none(), &[&tiny]);
    let held = v4_of(&status);
    assert_eq!(held.len(), 3, "{held:?}");
    assert_eq!(held["n-000"], "10.1.0.1", "aligned with a-tiny's .1");
}

#[test]
fn exhaustion_names_the_waiting_nodes_and_is_stable() {
    // A /29 has six usable addresses.
    let tiny = network("tiny", "10.9.0.0/29", "10.9.0.0", "10.9.0.7");
    let all = nodes("n", 8, &["tiny"]);
    let status = decide(&tiny, &refs(&all), &none(), &[]);
    assert_eq!(v4_of(&status).len(), 6);
    assert_eq!(status.free, Some(0));
    let (reason, exhausted, message) = condition(&status, "Exhausted");
    assert_eq!((reason, exhausted), ("Exhausted", ConditionStatus::True));
    assert!(message.contains("2 nodes: n-006, n-007"), "{message}");
    assert!(message.contains("all 6 usable addresses"), "{message}");
    assert_eq!(condition(&status, "Ready").0, "Exhausted");
    // Nothing changes on the next round: no write, no loop.
    let tiny = with_status(tiny, status.clone());
    assert_eq!(decide(&tiny, &refs(&all), &none(), &[]), status);
}

#[test]
fn a_long_list_of_waiting_nodes_is_bounded() {
    let tiny = network("tiny", "10.9.0.0/29", "10.9.0.1", "10.9.0.6");
    let all = nodes("n", 500, &["tiny"]);
    let status = decide(&tiny, &refs(&all), &none(), &[]);
    let (_, _, message) = condition(&status, "Exhausted");
    assert!(message.contains("494 nodes") && message.contains("and 489 more"), "{message}");
    assert!(message.len() < 400, "{} characters", message.len());
}

#[test]
fn an_invalid_spec_is_a_condition_and_changes_no_allocation() {
    let admin = network("admin", "10.0.0.0/24", "10.0.0.10", "10.0.0.99");
    let all = nodes("n", 2, &["admin"]);
    let written = decide(&admin, &refs(&all), &none(), &[]);
    for (field, broken) in [
        ("cidr", {
            let mut n = admin.clone();
            n.spec.cidr = Some("10.0.0.1/24".into());
            n
        }),
        ("start", {
            let mut n = admin.clone();
            n.spec.ranges[0].start = "ten".into();
            n
        }),
        ("outside", {
            let mut n = admin.clone();
            n.spec.ranges[0].end = "10.0.1.5".into();
            n
        }),
    ] {
        let broken = with_status(broken, written.clone());
        let status = decide(&broken, &refs(&nodes("n", 5, &["admin"])), &none(), &[]);
        assert_eq!(status.allocations, written.allocations, "{field}: allocations changed");
        let (reason, ready, message) = condition(&status, "Ready");
        assert_eq!((reason, ready), ("InvalidNetwork", ConditionStatus::False), "{field}");
        assert!(message.contains("network admin") && message.contains("until the spec is fixed"), "{message}");
        assert_eq!(condition(&status, "Exhausted").1, ConditionStatus::Unknown);
    }
}

#[test]
fn adding_an_ipv6_prefix_keeps_every_ipv4_address() {
    let admin = network("admin", "10.0.0.0/24", "10.0.0.10", "10.0.0.99");
    let all = nodes("n", 10, &["admin"]);
    let v4_only = decide(&admin, &refs(&all), &none(), &[]);
    assert!(v4_only.allocations.iter().all(|a| a.ipv6.is_none()));
    let mut dual = with_status(admin, v4_only.clone());
    dual.spec.ipv6_prefix = Some("fd00:10::/64".into());
    dual.metadata.generation = Some(3);
    let status = decide(&dual, &refs(&all), &none(), &[]);
    assert_eq!(v4_of(&status), v4_of(&v4_only));
    let v6: BTreeSet<&str> = status.allocations.iter().filter_map(|a| a.ipv6.as_deref()).collect();
    assert_eq!(v6.len(), 10, "one distinct IPv6 address per node");
    assert!(v6.iter().all(|a| a.starts_with("fd00:10::")), "{v6:?}");
    assert_eq!(status.observed_generation, Some(3));
}

#[test]
fn ipv6_addresses_are_the_same_on_every_network_and_every_run() {
    let mut a = network("a", "10.0.0.0/24", "10.0.0.10", "10.0.0.99");
    a.spec.ipv6_prefix = Some("fd00:a::/64".into());
    let mut b = network("b", "10.1.0.0/24", "10.1.0.10", "10.1.0.99");
    b.spec.ipv6_prefix = Some("fd00:b::/64".into());
    let all = nodes("n", 3, &["a", "b"]);
    let (on_a, on_b) = (decide(&a, &refs(&all), &none(), &[]), decide(&b, &refs(&all), &none(), &[]));
    for (x, y) in on_a.allocations.iter().zip(&on_b.allocations) {
        let iid = |s: &Option<String>| s.as_deref().unwrap().trim_start_matches("fd00:a::").replace("fd00:b::", "");
        assert_eq!(iid(&x.ipv6), iid(&y.ipv6), "{} has different interface identifiers", x.node);
    }
    assert_eq!(decide(&a, &refs(&all), &none(), &[]).allocations, on_a.allocations);
}

#[test]
fn an_ipv6_only_network_never_runs_out() {
    let mut v6 = Network::new("v6", NetworkSpec { ipv6_prefix: Some("fd00:6::/64".into()), ..Default::default() });
    v6.metadata.namespace = Some("lab".into());
    let all = nodes("n", 3, &["v6"]);
    let status = decide(&v6, &refs(&all), &none(), &[]);
    assert_eq!(status.free, None);
    assert!(status.allocations.iter().all(|a| a.ipv4.is_none() && a.ipv6.is_some()));
    assert_eq!(condition(&status, "Exhausted").0, "DerivedAddresses");
    assert_eq!(condition(&status, "Ready").1, ConditionStatus::True);
}

#[test]
fn conflicts_are_reported_not_resolved() {
    let admin = network("admin", "10.0.0.0/24", "10.0.0.10", "10.0.0.99");
    let allocation = |node: &str, ipv4: &str| Allocation { node: node.into(), ipv4: Some(ipv4.into()), ipv6: None };
    // Hand-edited status: two nodes on one address, and one that is not an address.
    let edited = with_status(
        admin,
        NetworkStatus {
            allocations: vec![allocation("a", "10.0.0.10"), allocation("b", "10.0.0.10"), allocation("c", "not-an-ip")],
            ..Default::default()
        },
    );
    let all = [
        node("a", &["admin"]),
        node("b", &["admin"]),
        node("c", &["admin"]),
        hinted(node("d", &["admin"]), "admin", "10.0.0.10"),
    ];
    let status = decide(&edited, &refs(&all), &none(), &[]);
    let held = v4_of(&status);
    assert_eq!(held["a"], "10.0.0.10");
    assert_eq!(held["b"], "10.0.0.10");
    assert_eq!(held["c"], "not-an-ip", "kept verbatim, never silently replaced");
    assert!(!held.contains_key("d"));
    let (_, conflict, message) = condition(&status, "Conflict");
    assert_eq!(conflict, ConditionStatus::True);
    assert!(message.contains("not-an-ip"), "{message}");
    assert!(message.contains("node d asks for 10.0.0.10") && message.contains("node a holds it"), "{message}");
    assert!(message.contains("nodes a, b all hold 10.0.0.10"), "{message}");
    assert_eq!(condition(&status, "Ready").1, ConditionStatus::False);
}

#[test]
fn a_node_that_cannot_be_read_is_never_allocated_to_and_a_network_only_sees_its_namespace_members() {
    let admin = network("admin", "10.0.0.0/24", "10.0.0.10", "10.0.0.99");
    let unreadable = BTreeSet::from(["ghost".to_string()]);
    let status = decide(&admin, &[], &unreadable, &[]);
    assert!(status.allocations.is_empty());
    assert_eq!(condition(&status, "Ready").0, "Allocated");
}
