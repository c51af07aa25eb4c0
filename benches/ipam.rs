//! Benchmark: 1,000 BareMetalNodes on 3 aligned Networks, against a real API
//! server. Reports the wall time until all 3,000 allocations exist (and
//! until every node shows its addresses), and the API writes that took, from
//! the operator's `/metrics` and the API server's own request counters.
//!
//!     GIRDER_HOME=/tmp/bench e2e/controlplane.sh up
//!     KUBECONFIG=/tmp/bench/kubeconfig cargo bench --bench ipam
//!
//! `cargo test` builds this target and runs it without `--bench`, which only
//! prints how to run it: it is too slow for `make test`.

#[path = "../tests/support/mod.rs"]
mod support;

use futures::{StreamExt, TryStreamExt};
use girder::api::condition::find;
use girder::api::network::{AddressRange, RangeType};
use girder::api::node::NodeNetwork;
use girder::api::{BareMetalNode, BareMetalNodeSpec, ConditionStatus, Network, NetworkSpec};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use support::*;

const NODES: usize = 1000;
const NETWORKS: [(&str, &str); 3] = [("admin", "10.60"), ("storage", "10.61"), ("public", "10.62")];
const RUNS: usize = 3;
/// Node creates in flight at once: the API server refuses (429) beyond its
/// max-requests-inflight, and a real rollout (kubectl apply, Argo CD) is
/// not unbounded either.
const CREATE_CONCURRENCY: usize = 32;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("ipam benchmark skipped: run `cargo bench --bench ipam` with KUBECONFIG set (see BENCHMARKS.md)");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(bench());
}

#[derive(Debug, Clone, Copy)]
struct Run {
    create: Duration,
    allocated: Duration,
    shown: Duration,
    network_writes: f64,
    node_writes: f64,
    conflicts: f64,
}

async fn bench() {
    let client = client().await;
    install_crds(&client).await;
    let mut runs = Vec::new();
    for i in 1..=RUNS {
        let run = one_run(&client, i).await;
        eprintln!(
            "run {i}: creates {:.1} s; all {} allocations {:.1} s; all nodes NetworkReady {:.1} s; status writes: Network {}, node addresses {}; 409 Conflicts {}",
            run.create.as_secs_f64(),
            NODES * NETWORKS.len(),
            run.allocated.as_secs_f64(),
            run.shown.as_secs_f64(),
            run.network_writes,
            run.node_writes,
            run.conflicts,
        );
        runs.push(run);
    }
    let median = |f: fn(&Run) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    println!("IPAM: {NODES} nodes on {} aligned networks, median of {RUNS} runs", NETWORKS.len());
    println!("  creating the nodes ({CREATE_CONCURRENCY} at a time): {:.1} s", median(|r| r.create.as_secs_f64()));
    println!(
        "  until all {} allocations exist:   {:.1} s",
        NODES * NETWORKS.len(),
        median(|r| r.allocated.as_secs_f64())
    );
    println!("  until every node shows them:      {:.1} s", median(|r| r.shown.as_secs_f64()));
    println!("  Network status writes:            {}", median(|r| r.network_writes));
    println!("  node status writes (addresses):   {}", median(|r| r.node_writes));
    println!("  refused writes (409 Conflict):    {}", median(|r| r.conflicts));
}

async fn one_run(client: &Client, run: usize) -> Run {
    let ns = TestNamespace::new(client, &format!("bench-ipam-{run}")).await;
    let networks: Api<Network> = Api::namespaced(client.clone(), &ns.name);
    for (name, prefix) in NETWORKS {
        let network = Network::new(
            name,
            NetworkSpec {
                cidr: Some(format!("{prefix}.0.0/16")),
                group: Some("rack".into()),
                ranges: vec![AddressRange {
                    name: "nodes".into(),
                    type_: RangeType::Static,
                    start: format!("{prefix}.0.10"),
                    end: format!("{prefix}.7.250"),
                }],
                ..Default::default()
            },
        );
        networks.create(&PostParams::default(), &network).await.expect("create network");
    }
    let operator = Operator::start(OperatorOptions::new(&ns.name, "bench"));
    // Measure from a running operator that has seen the empty networks.
    for (name, _) in NETWORKS {
        wait_for(&format!("network {name} reconciled"), || {
            let networks = networks.clone();
            async move { networks.get_opt(name).await.ok()??.status.map(|_| ()) }
        })
        .await;
    }
    let conflicts_before = api_server_conflicts();

    let nodes: Api<BareMetalNode> = Api::namespaced(client.clone(), &ns.name);
    let started = Instant::now();
    futures::stream::iter((0..NODES).map(|i| {
        let nodes = nodes.clone();
        async move {
            let networks = NETWORKS.iter().map(|(n, _)| NodeNetwork { network: n.to_string(), ..no_hints() }).collect();
            let node =
                BareMetalNode::new(&format!("node-{i:04}"), BareMetalNodeSpec { networks, ..Default::default() });
            nodes.create(&PostParams::default(), &node).await.map(|_| ())
        }
    }))
    .buffer_unordered(CREATE_CONCURRENCY)
    .try_collect::<Vec<()>>()
    .await
    .expect("create nodes");
    let create = started.elapsed();

    for (name, _) in NETWORKS {
        wait_long(&format!("{NODES} allocations on {name}"), || {
            let networks = networks.clone();
            async move {
                let status = networks.get_opt(name).await.ok()??.status?;
                let held = status.allocations.iter().filter(|a| a.ipv4.is_some()).count();
                (held == NODES).then_some(())
            }
        })
        .await;
    }
    let allocated = started.elapsed();
    wait_long("every node NetworkReady=True", || {
        let nodes = nodes.clone();
        async move {
            let list = nodes.list(&ListParams::default()).await.ok()?;
            let ready = list.items.iter().filter(|n| {
                let condition = n.status.as_ref().and_then(|s| find(&s.conditions, "NetworkReady"));
                condition.is_some_and(|c| c.status == ConditionStatus::True)
            });
            (ready.count() == NODES).then_some(())
        }
    })
    .await;
    let shown = started.elapsed();

    check_alignment(&networks).await;
    let result = Run {
        create,
        allocated,
        shown,
        network_writes: operator.metric("girder_status_writes_total{kind=\"Network\"}").unwrap_or(0.0),
        node_writes: operator.metric("girder_status_writes_total{kind=\"NodeNetwork\"}").unwrap_or(0.0),
        conflicts: api_server_conflicts() - conflicts_before,
    };
    drop(operator);
    // This control plane runs no namespace controller: delete the objects
    // themselves so the next run starts from the same etcd size.
    nodes.delete_collection(&DeleteParams::default(), &ListParams::default()).await.expect("delete nodes");
    networks.delete_collection(&DeleteParams::default(), &ListParams::default()).await.expect("delete networks");
    result
}

fn no_hints() -> NodeNetwork {
    NodeNetwork { network: String::new(), interface: None, ipv4_address: None, ipv6_address: None }
}

/// Every node has the same host part everywhere, and no address is held twice.
async fn check_alignment(networks: &Api<Network>) {
    let mut host_parts: Option<Vec<(String, String)>> = None;
    for (name, _) in NETWORKS {
        let status = networks.get(name).await.expect("get network").status.expect("status");
        let parts: Vec<(String, String)> = status
            .allocations
            .iter()
            .map(|a| {
                let address = a.ipv4.clone().unwrap_or_default();
                (a.node.clone(), address.splitn(3, '.').nth(2).unwrap_or_default().to_string())
            })
            .collect();
        let distinct: BTreeSet<&String> = parts.iter().map(|(_, p)| p).collect();
        assert_eq!(distinct.len(), NODES, "duplicate addresses on {name}");
        match &host_parts {
            None => host_parts = Some(parts),
            Some(first) => assert_eq!(first, &parts, "{name} is not aligned with {}", NETWORKS[0].0),
        }
    }
}

/// `wait_for` with a patience fit for a thousand nodes on a small machine.
async fn wait_long<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<()>>,
{
    let deadline = Instant::now() + Duration::from_secs(600);
    while check().await.is_none() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Status writes to Networks the API server refused with 409 Conflict.
fn api_server_conflicts() -> f64 {
    let metrics = run_ok(kubectl().args(["get", "--raw", "/metrics"]));
    metrics
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{") && l.contains("code=\"409\""))
        .filter(|l| l.contains("resource=\"networks\"") && l.contains("subresource=\"status\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
