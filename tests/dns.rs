//! DNS registration end to end: the real operator against a real
//! kube-apiserver and a real BIND 9 (e2e/bind.sh) on 127.0.0.1, checked with
//! `dig` as a person would.

mod support;

use girder::api::condition::find;
use girder::api::{ConditionStatus, Network};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use support::*;

const ZONE: &str = "lab.test";
const REVERSE_V4: &str = "30.20.10.in-addr.arpa";
/// The nibble zone of fd00:20::/64.
const REVERSE_V6: &str = "0.0.0.0.0.0.0.0.0.2.0.0.0.0.d.f.ip6.arpa";

/// A BIND started for one test, stopped when dropped.
struct Bind {
    dir: PathBuf,
    port: u16,
}

impl Bind {
    fn start(zones: &[&str]) -> Self {
        Self::start_with("hmac-sha256", zones)
    }

    fn start_with(algorithm: &str, zones: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("girder-bind-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).expect("bind dir");
        let port = free_port();
        let mut cmd = Command::new(repo_root().join("e2e/bind.sh"));
        cmd.arg("start").arg(&dir).arg(port.to_string()).args(zones).env("GIRDER_BIND_ALGORITHM", algorithm);
        run_ok(&mut cmd);
        Self { dir, port }
    }

    fn key(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).expect("key file").trim().to_string()
    }

    fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The answers of `dig` for `name` and `rtype` (`-x` for a reverse lookup).
    fn dig(&self, args: &[&str]) -> BTreeSet<String> {
        let out = Command::new("dig")
            .args(["+short", "+time=2", "+tries=1", "@127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run dig (e2e/bind.sh install)");
        String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect()
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("e2e/bind.sh")).arg("stop").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn tsig_secret(ns: &str, name: &str, key_name: &str, algorithm: &str, secret: &str) {
    apply_yaml(
        ns,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\nstringData:\n  keyName: {key_name}\n  algorithm: {algorithm}\n  secret: \"{secret}\"\n"
        ),
    );
}

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

async fn dig_until(bind: &Bind, args: &[&str], want: BTreeSet<String>) {
    wait_for(&format!("dig {args:?} to answer {want:?}"), || {
        let got = bind.dig(args);
        let want = &want;
        async move { (&got == want).then_some(()) }
    })
    .await
}

#[tokio::test]
async fn nodes_and_pools_are_published_and_removed_with_their_allocations() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "dns").await;
    let bind = Bind::start(&[ZONE, REVERSE_V4, REVERSE_V6]);
    tsig_secret(&ns.name, "tsig", &bind.key("key.name"), &bind.key("key.algorithm"), &bind.key("key.secret"));
    dns_network(&ns.name, "admin", &bind.server(), "tsig");
    apply_yaml(
        &ns.name,
        r#"apiVersion: girder.dev/v1alpha1
kind: Workload
metadata:
  name: etcd
spec:
  roles:
    - {role: etcd, nodes: [n1, n2]}
  dnsPools:
    - {name: etcd.lab.test, role: etcd, network: admin}
"#,
    );
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
    let pool_v4: Vec<&str> = addresses.iter().filter(|(n, _, _)| n != "n3").map(|(_, a, _)| a.as_str()).collect();
    let pool_v6: Vec<&str> = addresses.iter().filter(|(n, _, _)| n != "n3").map(|(_, _, a)| a.as_str()).collect();
    dig_until(&bind, &["etcd.lab.test", "A"], set(&pool_v4)).await;
    dig_until(&bind, &["etcd.lab.test", "AAAA"], set(&pool_v6)).await;
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
    dig_until(
        &bind,
        &["etcd.lab.test", "A"],
        set(&pool_v4.iter().copied().filter(|a| *a != n2_v4).collect::<Vec<_>>()),
    )
    .await;
    // The others stay.
    let (_, n1_v4, _) = addresses.iter().find(|(n, _, _)| n == "n1").expect("n1").clone();
    dig_until(&bind, &["n1.lab.test", "A"], set(&[&n1_v4])).await;

    // A node removed from the pool's role leaves the pool but keeps its own name.
    apply_yaml(
        &ns.name,
        "apiVersion: girder.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: etcd\nspec:\n  roles:\n    - {role: etcd, nodes: [n3]}\n  dnsPools:\n    - {name: etcd.lab.test, role: etcd, network: admin}\n",
    );
    let (_, n3_v4, _) = addresses.iter().find(|(n, _, _)| n == "n3").expect("n3").clone();
    dig_until(&bind, &["etcd.lab.test", "A"], set(&[&n3_v4])).await;
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
