//! DNS registration end to end: the real operator against a real
//! kube-apiserver and a real BIND 9 (e2e/bind.sh) on 127.0.0.1, checked with
//! `dig` as a person would. Workload pools, which follow the bindings that
//! are Active, are proven with real agents in tests/roles.rs.

mod support;

use girder::api::condition::find;
use girder::api::{ConditionStatus, Network};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use support::bind::{Bind, dig_until, set, tsig_secret};
use support::*;

const ZONE: &str = "lab.test";
const REVERSE_V4: &str = "30.20.10.in-addr.arpa";
/// The nibble zone of fd00:20::/64.
const REVERSE_V6: &str = "0.0.0.0.0.0.0.0.0.2.0.0.0.0.d.f.ip6.arpa";

fn dns_network(ns: &str, name: &str, server: &str, secret: &str) {
    apply_yaml(
        ns,
        &format!(
            r#"apiVersion: girder.dev/v1alpha1
kind: Network
metadata:
  name: {name}
spec:
  cidr: 10.20.30.0/24
  ipv6Prefix: fd00:20::/64
  ranges:
    - {{name: nodes, type: static, start: 10.20.30.10, end: 10.20.30.50}}
  dns:
    server: "{server}"
    zone: {ZONE}
    tsigSecretRef: {{name: {secret}}}
    ttl: 60
"#
        ),
    );
}

fn node(ns: &str, name: &str, networks: &[&str]) {
    let networks: String = networks.iter().map(|n| format!("    - network: {n}\n")).collect();
    apply_yaml(
        ns,
        &format!(
            "apiVersion: girder.dev/v1alpha1\nkind: BareMetalNode\nmetadata:\n  name: {name}\nspec:\n  networks:\n{networks}"
        ),
    );
}

/// (node, ipv4, ipv6) once every one of `nodes` has both addresses on `network`.
async fn allocations(api: &Api<Network>, network: &str, nodes: &[&str]) -> Vec<(String, String, String)> {
    wait_for(&format!("addresses of {nodes:?} on {network}"), || async {
        let status = api.get_opt(network).await.ok()??.status?;
        let found: Vec<(String, String, String)> = status
            .allocations
            .iter()
            .filter_map(|a| Some((a.node.clone(), a.ipv4.clone()?, a.ipv6.clone()?)))
            .filter(|(n, _, _)| nodes.contains(&n.as_str()))
            .collect();
        (found.len() == nodes.len()).then_some(found)
    })
    .await
}

/// Waits for the DNSRegistered condition with `status` and `reason`; returns its message.
async fn registered(api: &Api<Network>, network: &str, status: ConditionStatus, reason: &str) -> String {
    wait_for(&format!("{network}: DNSRegistered={status:?} reason {reason}"), || async {
        let network = api.get_opt(network).await.ok()??;
        let c = find(&network.status?.conditions, "DNSRegistered")?.clone();
        (c.status == status && c.reason == reason).then_some(c.message)
    })
    .await
}

#[tokio::test]
async fn nodes_are_published_and_removed_with_their_allocations() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "dns").await;
    let bind = Bind::start(&[ZONE, REVERSE_V4, REVERSE_V6]);
    tsig_secret(&ns.name, "tsig", &bind.key("key.name"), &bind.key("key.algorithm"), &bind.key("key.secret"));
    dns_network(&ns.name, "admin", &bind.server(), "tsig");
    for n in ["n1", "n2", "n3"] {
        node(&ns.name, n, &["admin"]);
    }
    let _operator = Operator::start(OperatorOptions::new(&ns.name, "dns"));
    let networks: Api<Network> = Api::namespaced(client.clone(), &ns.name);
    let addresses = allocations(&networks, "admin", &["n1", "n2", "n3"]).await;

    for (node, v4, v6) in &addresses {
        let fqdn = format!("{node}.{ZONE}");
        let target = format!("{fqdn}.");
        dig_until(&bind, &[&fqdn, "A"], set(&[v4])).await;
        dig_until(&bind, &[&fqdn, "AAAA"], set(&[v6])).await;
        dig_until(&bind, &["-x", v4], set(&[&target])).await;
        dig_until(&bind, &["-x", v6], set(&[&target])).await;
    }
    let message = registered(&networks, "admin", ConditionStatus::True, "Registered").await;
    assert!(message.contains(ZONE), "{message}");

    // A node that goes loses its records, and its place in the pool.
    let nodes: Api<girder::api::BareMetalNode> = Api::namespaced(client.clone(), &ns.name);
    nodes.delete("n2", &DeleteParams::default()).await.expect("delete n2");
    let (_, n2_v4, n2_v6) = addresses.iter().find(|(n, _, _)| n == "n2").expect("n2").clone();
    dig_until(&bind, &["n2.lab.test", "A"], set(&[])).await;
    dig_until(&bind, &["n2.lab.test", "AAAA"], set(&[])).await;
    dig_until(&bind, &["-x", &n2_v4], set(&[])).await;
    dig_until(&bind, &["-x", &n2_v6], set(&[])).await;
    // The others stay.
    let (_, n1_v4, _) = addresses.iter().find(|(n, _, _)| n == "n1").expect("n1").clone();
    dig_until(&bind, &["n1.lab.test", "A"], set(&[&n1_v4])).await;
}

#[tokio::test]
async fn refused_tsig_and_unreachable_server_are_reported_and_never_block_allocation() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "dns-fail").await;
    // hmac-sha512 here, hmac-sha256 in the other test.
    let bind = Bind::start_with("hmac-sha512", &[ZONE, REVERSE_V4, REVERSE_V6]);
    // A well-formed key the server does not share.
    tsig_secret(
        &ns.name,
        "wrong",
        &bind.key("key.name"),
        &bind.key("key.algorithm"),
        "c2VjcmV0LXRoYXQtYmluZC1kb2VzLW5vdC1rbm93IQ==",
    );
    dns_network(&ns.name, "admin", &bind.server(), "wrong");
    // Nothing listens there.
    dns_network(&ns.name, "down", &format!("127.0.0.1:{}", free_port()), "wrong");
    node(&ns.name, "n1", &["admin", "down"]);
    let _operator = Operator::start(OperatorOptions::new(&ns.name, "dns-fail"));
    let networks: Api<Network> = Api::namespaced(client.clone(), &ns.name);

    // Allocation happens regardless.
    let addresses = allocations(&networks, "admin", &["n1"]).await;
    allocations(&networks, "down", &["n1"]).await;
    let message = registered(&networks, "admin", ConditionStatus::False, "TSIGRefused").await;
    assert!(message.contains("TSIG") && message.contains(&bind.server()) && message.contains(ZONE), "{message}");
    assert!(!message.contains("c2VjcmV0"), "the secret never appears: {message}");
    let message = registered(&networks, "down", ConditionStatus::False, "ServerUnreachable").await;
    assert!(message.contains("127.0.0.1"), "{message}");
    assert!(bind.dig(&["n1.lab.test", "A"]).is_empty());

    // Fixing the Secret is enough: the bounded retry publishes the records.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns.name);
    let patch = serde_json::json!({ "stringData": { "secret": bind.key("key.secret") } });
    secrets.patch("wrong", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("fix the secret");
    registered(&networks, "admin", ConditionStatus::True, "Registered").await;
    dig_until(&bind, &["n1.lab.test", "A"], set(&[&addresses[0].1])).await;
}
