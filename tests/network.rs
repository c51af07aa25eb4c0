//! IPAM end to end against a real API server: the Network controller
//! allocates, the node-network controller copies addresses onto the nodes.

mod support;

use futures::future::join_all;
use girder::api::condition::find;
use girder::api::network::{AddressRange, RangeType};
use girder::api::node::NodeNetwork;
use girder::api::{BareMetalNode, BareMetalNodeSpec, ConditionStatus, Network, NetworkSpec, NetworkStatus};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use support::*;

fn network(name: &str, cidr: &str, start: &str, end: &str, group: Option<&str>) -> Network {
    Network::new(
        name,
        NetworkSpec {
            cidr: Some(cidr.into()),
            group: group.map(String::from),
            ranges: vec![AddressRange {
                name: "nodes".into(),
                type_: RangeType::Static,
                start: start.into(),
                end: end.into(),
            }],
            ..Default::default()
        },
    )
}

fn node(name: &str, networks: &[&str]) -> BareMetalNode {
    let networks = networks
        .iter()
        .map(|n| NodeNetwork { network: n.to_string(), interface: None, ipv4_address: None, ipv6_address: None })
        .collect();
    BareMetalNode::new(name, BareMetalNodeSpec { networks, ..Default::default() })
}

fn names(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i:03}")).collect()
}

/// Creates the nodes all at once, as concurrent API calls.
async fn create_nodes(client: &Client, ns: &str, names: &[String], networks: &[&str]) {
    let api: Api<BareMetalNode> = Api::namespaced(client.clone(), ns);
    let creates = names.iter().map(|name| {
        let api = api.clone();
        let node = node(name, networks);
        async move { api.create(&PostParams::default(), &node).await.map_err(|e| format!("create {name}: {e}")) }
    });
    for result in join_all(creates).await {
        result.unwrap();
    }
}

async fn create_network(client: &Client, ns: &str, network: &Network) {
    let api: Api<Network> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), network).await.expect("create network");
}

fn v4(status: &NetworkStatus) -> BTreeMap<String, String> {
    status.allocations.iter().filter_map(|a| Some((a.node.clone(), a.ipv4.clone()?))).collect()
}

fn v6(status: &NetworkStatus) -> BTreeMap<String, String> {
    status.allocations.iter().filter_map(|a| Some((a.node.clone(), a.ipv6.clone()?))).collect()
}

/// Waits until `check` holds on the network's status; returns that status.
async fn network_status(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    check: impl Fn(&NetworkStatus) -> bool,
) -> NetworkStatus {
    let api: Api<Network> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("network {name}: {what}"), || {
        let api = api.clone();
        let check = &check;
        async move {
            let network = api.get_opt(name).await.ok()??;
            let status = network.status?;
            (status.observed_generation == network.metadata.generation && check(&status)).then_some(status)
        }
    })
    .await
}

/// Waits until every node of the namespace has a `NetworkReady` condition
/// for its current generation that satisfies `check`.
async fn settled_nodes(
    client: &Client,
    ns: &str,
    what: &str,
    check: impl Fn(&BareMetalNode) -> bool,
) -> Vec<BareMetalNode> {
    let api: Api<BareMetalNode> = Api::namespaced(client.clone(), ns);
    wait_for(what, || {
        let api = api.clone();
        let check = &check;
        async move {
            let nodes = api.list(&Default::default()).await.ok()?.items;
            let decided = |n: &BareMetalNode| {
                let ready = n.status.as_ref().and_then(|s| find(&s.conditions, "NetworkReady"));
                ready.is_some_and(|c| c.observed_generation == n.metadata.generation)
            };
            nodes.iter().all(|n| decided(n) && check(n)).then_some(nodes)
        }
    })
    .await
}

fn network_ready(node: &BareMetalNode) -> Option<(ConditionStatus, String)> {
    let c = find(&node.status.as_ref()?.conditions, "NetworkReady")?;
    Some((c.status, c.reason.clone()))
}

fn host_part(address: &str) -> String {
    address.splitn(3, '.').nth(2).unwrap_or_default().to_string()
}

fn assert_unique(status: &NetworkStatus, network: &str) {
    let addresses = v4(status);
    let distinct: BTreeSet<&String> = addresses.values().collect();
    assert_eq!(distinct.len(), addresses.len(), "duplicate addresses on {network}");
}

/// 10.10.0.0/16 and 10.20.0.0/16 in group `rack`, static .0.10 to .3.250.
async fn rack(client: &Client, ns: &str) {
    create_network(client, ns, &network("admin", "10.10.0.0/16", "10.10.0.10", "10.10.3.250", Some("rack"))).await;
    create_network(client, ns, &network("storage", "10.20.0.0/16", "10.20.0.10", "10.20.3.250", Some("rack"))).await;
}

#[tokio::test]
async fn two_hundred_nodes_at_once_get_unique_aligned_addresses() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "ipam-200").await;
    rack(&client, &ns.name).await;
    let _operator = Operator::start(OperatorOptions::new(&ns.name, "solo"));
    create_nodes(&client, &ns.name, &names("node", 0..200), &["admin", "storage"]).await;

    let admin = network_status(&client, &ns.name, "admin", "200 allocations", |s| v4(s).len() == 200).await;
    let storage = network_status(&client, &ns.name, "storage", "200 allocations", |s| v4(s).len() == 200).await;
    assert_unique(&admin, "admin");
    assert_unique(&storage, "storage");
    let (on_admin, on_storage) = (v4(&admin), v4(&storage));
    for (node, address) in &on_admin {
        assert!(address.starts_with("10.10."), "{node}: {address}");
        assert_eq!(host_part(address), host_part(&on_storage[node]), "{node} is not aligned");
    }
    let capacity = 3 * 256 + 251 - 10;
    assert_eq!(admin.free, Some(capacity - 200));
    let names: Vec<&str> = admin.allocations.iter().map(|a| a.node.as_str()).collect();
    assert!(names.is_sorted(), "allocations are sorted by node");
    for status in [&admin, &storage] {
        let ready = find(&status.conditions, "Ready").expect("Ready");
        assert_eq!((ready.status, ready.reason.as_str()), (ConditionStatus::True, "Allocated"), "{}", ready.message);
    }

    // Every node carries a copy, with the prefix length.
    let nodes = settled_nodes(&client, &ns.name, "every node NetworkReady=True", |n| {
        network_ready(n).is_some_and(|(s, _)| s == ConditionStatus::True)
    })
    .await;
    assert_eq!(nodes.len(), 200);
    for node in &nodes {
        let name = node.metadata.name.clone().unwrap();
        let addresses = &node.status.as_ref().unwrap().addresses;
        let shown: Vec<(&str, Option<&str>)> =
            addresses.iter().map(|a| (a.network.as_str(), a.ipv4.as_deref())).collect();
        let expected = [
            ("admin", Some(format!("{}/16", on_admin[&name]))),
            ("storage", Some(format!("{}/16", on_storage[&name]))),
        ];
        let expected: Vec<(&str, Option<&str>)> = expected.iter().map(|(n, a)| (*n, a.as_deref())).collect();
        assert_eq!(shown, expected, "{name}");
    }
}

#[tokio::test]
async fn a_restart_mid_way_changes_no_allocation() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "ipam-restart").await;
    let fast = |identity| OperatorOptions {
        lease_duration: 4,
        renew_deadline: 3,
        retry_period: 1,
        ..OperatorOptions::new(&ns.name, identity)
    };
    rack(&client, &ns.name).await;
    let first = Operator::start(fast("first"));
    // The second half is named to sort first: a new operator that did not
    // keep the stored allocations would hand its first-free addresses out.
    create_nodes(&client, &ns.name, &names("node-b", 0..100), &["admin", "storage"]).await;
    let admin = network_status(&client, &ns.name, "admin", "100 allocations", |s| v4(s).len() == 100).await;
    let storage = network_status(&client, &ns.name, "storage", "100 allocations", |s| v4(s).len() == 100).await;
    first.signal("KILL");
    drop(first);

    create_nodes(&client, &ns.name, &names("node-a", 0..100), &["admin", "storage"]).await;
    let second = Operator::start(fast("second"));
    let admin_after = network_status(&client, &ns.name, "admin", "200 allocations", |s| v4(s).len() == 200).await;
    let storage_after = network_status(&client, &ns.name, "storage", "200 allocations", |s| v4(s).len() == 200).await;
    for (before, after, name) in [(&admin, &admin_after, "admin"), (&storage, &storage_after, "storage")] {
        assert_unique(after, name);
        let after = v4(after);
        for (node, address) in v4(before) {
            assert_eq!(after[&node], address, "{node} was renumbered on {name} by the restart");
        }
    }
    for (node, address) in v4(&admin_after) {
        assert_eq!(host_part(&address), host_part(&v4(&storage_after)[&node]), "{node} is not aligned");
    }
    settled_nodes(&client, &ns.name, "every node NetworkReady=True", |n| {
        network_ready(n).is_some_and(|(s, _)| s == ConditionStatus::True)
    })
    .await;

    // Once settled, a fresh operator decides the same and writes nothing.
    second.signal("TERM");
    drop(second);
    let third = Operator::start(fast("third"));
    wait_for("the third operator to reconcile both networks and every node", || {
        let networks = third.metric("girder_reconciles_total{kind=\"Network\"}");
        let nodes = third.metric("girder_reconciles_total{kind=\"NodeNetwork\"}");
        async move { (networks? >= 2.0 && nodes? >= 200.0).then_some(()) }
    })
    .await;
    assert_eq!(third.metric("girder_status_writes_total{kind=\"Network\"}"), Some(0.0));
    assert_eq!(third.metric("girder_status_writes_total{kind=\"NodeNetwork\"}"), Some(0.0));
}

#[tokio::test]
async fn deleting_a_node_releases_its_address() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "ipam-delete").await;
    create_network(&client, &ns.name, &network("admin", "10.30.0.0/24", "10.30.0.10", "10.30.0.19", None)).await;
    let _operator = Operator::start(OperatorOptions::new(&ns.name, "solo"));
    create_nodes(&client, &ns.name, &names("node", 0..3), &["admin"]).await;
    let before = network_status(&client, &ns.name, "admin", "3 allocations", |s| v4(s).len() == 3).await;
    assert_eq!(before.free, Some(7));
    let gone = v4(&before)["node-001"].clone();

    let nodes: Api<BareMetalNode> = Api::namespaced(client.clone(), &ns.name);
    nodes.delete("node-001", &DeleteParams::default()).await.expect("delete node-001");
    let after =
        network_status(&client, &ns.name, "admin", "node-001 released", |s| !v4(s).contains_key("node-001")).await;
    assert_eq!(after.free, Some(8), "the address went back to the free pool");
    assert_eq!(v4(&after).len(), 2);
    assert!(!v4(&after).values().any(|a| *a == gone));

    // A node that leaves the network releases its address too.
    nodes
        .patch("node-002", &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"networks": null}})))
        .await
        .expect("take node-002 off the network");
    let after = network_status(&client, &ns.name, "admin", "node-002 released", |s| v4(s).len() == 1).await;
    assert_eq!(after.free, Some(9));
}

#[tokio::test]
async fn exhaustion_is_reported_without_a_reconcile_loop_and_clears() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "ipam-full").await;
    // A /29 has six usable addresses; eight nodes want one.
    create_network(&client, &ns.name, &network("tiny", "10.40.0.0/29", "10.40.0.1", "10.40.0.6", None)).await;
    let operator = Operator::start(OperatorOptions::new(&ns.name, "solo"));
    create_nodes(&client, &ns.name, &names("node", 0..8), &["tiny"]).await;

    let status = network_status(&client, &ns.name, "tiny", "Exhausted=True", |s| {
        find(&s.conditions, "Exhausted").is_some_and(|c| c.status == ConditionStatus::True)
    })
    .await;
    assert_eq!(v4(&status).len(), 6);
    assert_eq!(status.free, Some(0));
    let exhausted = find(&status.conditions, "Exhausted").unwrap();
    let waiting: Vec<String> = names("node", 0..8).into_iter().filter(|n| !v4(&status).contains_key(n)).collect();
    assert_eq!(waiting.len(), 2);
    for node in &waiting {
        assert!(exhausted.message.contains(node.as_str()), "{} is not named: {}", node, exhausted.message);
    }
    let nodes = settled_nodes(&client, &ns.name, "NetworkReady decided on every node", |n| {
        let name = n.metadata.name.as_deref().unwrap_or_default();
        let expected = if waiting.iter().any(|w| w == name) {
            (ConditionStatus::False, "Exhausted".to_string())
        } else {
            (ConditionStatus::True, "AddressesAssigned".to_string())
        };
        network_ready(n) == Some(expected)
    })
    .await;
    let message = nodes
        .iter()
        .filter_map(|n| find(&n.status.as_ref()?.conditions, "NetworkReady"))
        .find(|c| c.status == ConditionStatus::False)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(message.contains("network tiny"), "{message}");

    // Settled: nothing keeps reconciling or writing. Other controllers (the
    // node lifecycle's own status) may still be finishing their first writes:
    // wait until a second passes without one (a loop never gets there), then
    // watch five seconds more.
    let reconciles = || operator.metric("girder_reconciles_total").unwrap_or(0.0);
    let writes = || operator.metric("girder_status_writes_total").unwrap_or(0.0);
    wait_for("status writes to stop", || {
        let before = writes();
        async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            (writes() == before).then_some(())
        }
    })
    .await;
    let (reconciles_before, writes_before) = (reconciles(), writes());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (reconciles_after, writes_after) = (reconciles(), writes());
    assert!(
        reconciles_after - reconciles_before <= 4.0,
        "{reconciles_before} reconciles, then {reconciles_after} five seconds later: a reconcile loop"
    );
    assert_eq!(writes_after, writes_before, "status writes while nothing changed");

    // Widening the range gives the waiting nodes their addresses.
    let networks: Api<Network> = Api::namespaced(client.clone(), &ns.name);
    let widen = serde_json::json!({"spec": {"cidr": "10.40.0.0/28",
        "ranges": [{"name": "nodes", "type": "static", "start": "10.40.0.1", "end": "10.40.0.14"}]}});
    networks.patch("tiny", &PatchParams::default(), &Patch::Merge(widen)).await.expect("widen tiny");
    let status = network_status(&client, &ns.name, "tiny", "Exhausted=False", |s| {
        find(&s.conditions, "Exhausted").is_some_and(|c| c.status == ConditionStatus::False)
    })
    .await;
    assert_eq!(v4(&status).len(), 8);
    assert_eq!(status.free, Some(6));
    settled_nodes(&client, &ns.name, "every node NetworkReady=True", |n| {
        network_ready(n).is_some_and(|(s, _)| s == ConditionStatus::True)
    })
    .await;
}

#[tokio::test]
async fn adding_an_ipv6_prefix_gives_every_node_an_ipv6_address_and_keeps_ipv4() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "ipam-dual").await;
    create_network(&client, &ns.name, &network("admin", "10.50.0.0/24", "10.50.0.10", "10.50.0.200", None)).await;
    let _operator = Operator::start(OperatorOptions::new(&ns.name, "solo"));
    create_nodes(&client, &ns.name, &names("node", 0..20), &["admin"]).await;
    let before = network_status(&client, &ns.name, "admin", "20 allocations", |s| v4(s).len() == 20).await;
    assert!(v6(&before).is_empty());

    let networks: Api<Network> = Api::namespaced(client.clone(), &ns.name);
    let dual = serde_json::json!({"spec": {"ipv6Prefix": "fd00:50::/64"}});
    networks.patch("admin", &PatchParams::default(), &Patch::Merge(dual)).await.expect("add ipv6Prefix");
    let after = network_status(&client, &ns.name, "admin", "20 IPv6 allocations", |s| v6(s).len() == 20).await;
    assert_eq!(v4(&after), v4(&before), "an IPv4 address changed");
    let on_network = v6(&after);
    let distinct: BTreeSet<&String> = on_network.values().collect();
    assert_eq!(distinct.len(), 20);
    assert!(distinct.iter().all(|a| a.starts_with("fd00:50::")), "{distinct:?}");

    settled_nodes(&client, &ns.name, "every node shows its IPv6 address", |n| {
        let name = n.metadata.name.as_deref().unwrap_or_default();
        let shown = n.status.as_ref().and_then(|s| s.addresses.first()).and_then(|a| a.ipv6.clone());
        shown == on_network.get(name).map(|a| format!("{a}/64"))
            && network_ready(n).is_some_and(|(s, _)| s == ConditionStatus::True)
    })
    .await;
}

#[tokio::test]
async fn a_status_write_decided_from_a_stale_read_is_refused() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "ipam-stale").await;
    create_network(&client, &ns.name, &network("admin", "10.70.0.0/24", "10.70.0.10", "10.70.0.19", None)).await;
    let api: Api<Network> = Api::namespaced(client.clone(), &ns.name);
    let stale = api.get("admin").await.expect("read admin");
    api.patch("admin", &PatchParams::default(), &Patch::Merge(serde_json::json!({"metadata": {"labels": {"x": "y"}}})))
        .await
        .expect("change admin");
    let status = NetworkStatus { free: Some(10), ..Default::default() };
    let refused = girder::k8s::apply_status_if_unchanged(&api, &stale, "girder-tests", &status).await;
    assert!(refused.as_ref().is_err_and(girder::k8s::is_conflict), "{refused:?}");
    let fresh = api.get("admin").await.expect("read admin again");
    let written = girder::k8s::apply_status_if_unchanged(&api, &fresh, "girder-tests", &status).await;
    assert_eq!(written.expect("a write from a fresh read").status.and_then(|s| s.free), Some(10));
}
