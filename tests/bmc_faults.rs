//! BMC faults through a real fault-injecting proxy: Shopify's toxiproxy
//! between the operator and one machine's BMC (sushy-tools' Redfish
//! emulator), the other machines' BMCs reached directly. For each fault:
//! the node's conditions say what is wrong and name the BMC, the calls back
//! off, no other machine waits for the faulty one, and the node recovers by
//! itself once the fault is gone.

mod support;

use girder::api::node::NodePhase;
use girder::api::{BareMetalNode, ConditionStatus};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use std::time::{Duration, Instant};
use support::agent::secret;
use support::sushy::*;
use support::toxiproxy::Toxiproxy;
use support::*;

const PROXY: &str = "bmc-0";

fn name(i: usize) -> String {
    format!("node-{i:02}")
}

/// A lab of `count` powered-off machines whose node-00 BMC is behind a
/// proxy, and an operator whose BMC calls give up after `bmc_timeout`
/// seconds.
struct Lab {
    client: Client,
    ns: TestNamespace,
    sushy: Sushy,
    toxiproxy: Toxiproxy,
    /// The address node-00's BMC is reached at: the proxy's.
    proxied: String,
    operator: Operator,
}

impl Lab {
    async fn new(prefix: &str, count: usize, bmc_timeout: &str) -> Lab {
        let client = client().await;
        install_crds(&client).await;
        let ns = TestNamespace::new(&client, prefix).await;
        let systems = (0..count)
            .map(|i| {
                let mac = format!("52:54:00:70:00:{i:02x}");
                FakeSystem::new(&format!("00000070-0000-4000-8000-{i:012}"), &name(i), "Off", &[mac.as_str()])
            })
            .collect();
        let sushy = Sushy::start(SushyConfig { systems, ..Default::default() }).await;
        let toxiproxy = Toxiproxy::start().await;
        let proxied = toxiproxy.proxy(PROXY, &format!("127.0.0.1:{}", sushy.port)).await;
        secret(&client, &ns.name, "bmc", json!({ "username": USER, "password": PASSWORD })).await;
        let mut yaml = String::new();
        for i in 0..count {
            let address = match i {
                0 => format!("redfish+http://{proxied}/redfish/v1/Systems/{}", name(0)),
                _ => sushy.address(Some(&name(i))).to_string(),
            };
            yaml.push_str(&format!(
                "---\napiVersion: girder.dev/v1alpha1\nkind: BareMetalNode\nmetadata: {{name: {}}}\nspec:\n  bmc: {{address: \"{address}\", credentialsSecretRef: {{name: bmc}}}}\n  bootMACAddress: \"52:54:00:70:00:{i:02x}\"\n  online: false\n",
                name(i)
            ));
        }
        apply_yaml(&ns.name, &yaml);
        let operator = Operator::start_with(
            OperatorOptions::new(&ns.name, prefix),
            &["--power-poll-interval", "2", "--bmc-timeout", bmc_timeout],
        );
        for i in 0..count {
            node_where(&client, &ns.name, &name(i), "Available", |n| {
                n.status.as_ref().and_then(|s| s.phase) == Some(NodePhase::Available)
            })
            .await;
        }
        Lab { client, ns, sushy, toxiproxy, proxied, operator }
    }

    async fn set_online(&self, i: usize, online: bool) {
        let nodes: Api<BareMetalNode> = Api::namespaced(self.client.clone(), &self.ns.name);
        let patch = Patch::Merge(json!({ "spec": { "online": online } }));
        nodes.patch(&name(i), &PatchParams::default(), &patch).await.unwrap();
    }

    /// Waits until the emulator reports machine `i` powered `want`.
    async fn wait_power(&self, i: usize, want: &str) {
        let sushy = &self.sushy;
        wait_for(&format!("{} powered {want} at the emulator", name(i)), || async move {
            let (_, system) = sushy.get(&format!("/redfish/v1/Systems/{}", name(i))).await;
            (system["PowerState"] == want).then_some(())
        })
        .await;
    }

    async fn node(&self, i: usize, what: &str, check: impl Fn(&BareMetalNode) -> bool) -> BareMetalNode {
        node_where(&self.client, &self.ns.name, &name(i), what, check).await
    }

    /// Waits until node-00's BMC is unreachable with `reason`; returns the
    /// condition's message.
    async fn unreachable(&self, reason: &str) -> String {
        let node = self
            .node(0, &format!("BMCReachable=False {reason}"), |n| {
                condition(n, "BMCReachable").is_some_and(|c| c.0 == ConditionStatus::False && c.1 == reason)
            })
            .await;
        assert_eq!(condition(&node, "Ready").map(|c| c.0), Some(ConditionStatus::False), "not Ready while unreachable");
        let (_, _, message) = condition(&node, "BMCReachable").unwrap();
        assert!(message.contains(&self.proxied), "the message names the BMC: {message}");
        assert!(!message.contains(PASSWORD), "{message}");
        message
    }

    /// Waits until node-00 is reachable again, with no error left.
    async fn recovered(&self) {
        self.node(0, "recovered by itself", |n| {
            condition(n, "BMCReachable").is_some_and(|c| c.0 == ConditionStatus::True)
                && condition(n, "Ready").is_some_and(|c| c.0 == ConditionStatus::True)
                && n.status.as_ref().is_some_and(|s| s.error.is_none())
        })
        .await;
    }
}

/// Whether a TCP connection to 127.0.0.1:`port` is established.
fn established(port: &str) -> bool {
    let out = std::process::Command::new("ss")
        .args(["-Htn", "state", "established", &format!("( dport = :{port} )")])
        .output()
        .expect("run ss");
    !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

fn failures(node: &BareMetalNode) -> i32 {
    node.status.as_ref().and_then(|s| s.error.as_ref()).map_or(0, |e| e.count)
}

/// Latency below the call limit is only slowness; a BMC that stops
/// answering is a timeout, and while such a call hangs the other
/// machines' calls go on (each BMC has its own client, and nodes are
/// reconciled in parallel).
#[tokio::test]
async fn a_slow_bmc_works_a_silent_one_times_out_and_neither_holds_up_the_others() {
    let lab = Lab::new("bmc-hang", 2, "20").await;

    // 1 s on every answer: slow, but well within the 20 s limit.
    lab.toxiproxy.add(PROXY, "slow", "latency", "downstream", json!({ "latency": 1000 })).await;
    lab.set_online(0, true).await;
    lab.wait_power(0, "On").await;
    lab.node(0, "On, with no error", |n| {
        n.status.as_ref().is_some_and(|s| s.error.is_none() && s.power_state.as_deref() == Some("On"))
    })
    .await;
    lab.toxiproxy.remove(PROXY, "slow").await;

    // Requests stop reaching the BMC and nothing comes back: every call to
    // node-00's BMC hangs until the 20 s limit. Once a connection to the
    // proxy is open (the emulator closes each connection after its answer,
    // so an open one is a call that cannot finish), such a call is hanging.
    lab.toxiproxy.add(PROXY, "silent", "timeout", "upstream", json!({ "timeout": 0 })).await;
    let port = lab.proxied.rsplit(':').next().unwrap().to_string();
    wait_for("node-00's power read to hang in the proxy", || async { established(&port).then_some(()) }).await;
    // Meanwhile node-01 is switched on: its BMC is asked at once, not after
    // node-00's call gives up.
    let hung = Instant::now();
    lab.set_online(1, true).await;
    lab.node(1, "asked to power on", |n| {
        n.status.as_ref().and_then(|s| s.power_state.as_deref()).is_some_and(|p| p == "PoweringOn" || p == "On")
    })
    .await;
    let node = lab.node(0, "read", |_| true).await;
    assert!(
        condition(&node, "BMCReachable").is_some_and(|c| c.0 == ConditionStatus::True),
        "node-01 waited for node-00's hanging call: node-00 already failed after {:?}: {:?}",
        hung.elapsed(),
        condition(&node, "BMCReachable")
    );
    lab.wait_power(1, "On").await;
    let other = lab.node(1, "On", |n| n.status.as_ref().and_then(|s| s.power_state.as_deref()) == Some("On")).await;
    assert!(other.status.unwrap().error.is_none());

    let message = lab.unreachable("Timeout").await;
    assert!(message.contains("within 20s"), "the message says how long it waited: {message}");
    lab.toxiproxy.remove(PROXY, "silent").await;
    lab.recovered().await;
    assert!(!lab.operator.logs().contains(PASSWORD));
}

/// A BMC that resets every connection, then one that stops in the middle of
/// its answers: each is reported as what it is, retried ever more slowly
/// (never at the power poll's pace), and the node recovers once it is gone.
#[tokio::test]
async fn reset_and_cut_connections_are_reported_retried_with_backoff_and_recovered_from() {
    let lab = Lab::new("bmc-reset", 1, "5").await;

    lab.toxiproxy.add(PROXY, "reset", "reset_peer", "upstream", json!({ "timeout": 0 })).await;
    let message = lab.unreachable("ConnectionFailed").await;
    assert!(message.to_lowercase().contains("reset") || message.contains("closed"), "{message}");
    // The power poll asks every 2 s; failed calls are retried after 1, 2,
    // 4, 8, 16 s, each randomised to between half and all of it: five more
    // attempts take at least 15.5 s (10 s at the poll's pace).
    let first = lab.node(0, "a first failure", |n| failures(n) >= 1).await;
    let since = Instant::now();
    lab.node(0, "five more failures", |n| failures(n) >= failures(&first) + 5).await;
    let took = since.elapsed();
    assert!(took >= Duration::from_millis(15_500), "five retries after {took:?} of connection resets: no backoff");
    lab.toxiproxy.remove(PROXY, "reset").await;
    lab.recovered().await;

    // Answers cut after their first 100 bytes (headers, part of the body),
    // then the connection closed.
    lab.toxiproxy.add(PROXY, "cut", "limit_data", "downstream", json!({ "bytes": 100 })).await;
    let message = lab.unreachable("ConnectionFailed").await;
    assert!(!message.is_empty());
    lab.toxiproxy.remove(PROXY, "cut").await;
    lab.recovered().await;
}
