//! Benchmark: the annealer's latency on many nodes with trivial tasks.
//! GIRDER_BENCH_NODES machines made of files (default 100) are provisioned
//! for real (tests/support/farm.rs: sushy-tools, girder pxe, the operator,
//! each machine's ramdisk agent then its installed agent, all on this host);
//! then one workload of three roles, `a` (Node) -> `b` (Node) -> `c`
//! (Cluster: waits for every `b`), each task `echo '{}'`, is applied and the
//! clock runs until every binding is Active. Reported:
//!
//! - wall time from `kubectl apply` to all Active, and per role;
//! - pickup: the agent starting a run after the operator asked for it
//!   (`status.report.started - status.run.requested`), p50/p99;
//! - hand-off: a child asked to run after its parents finished
//!   (`run.requested` of `b` minus the end of `a` on the same node; of `c`
//!   minus the last end of `b`), p50/p99;
//! - the operator's and the agents' peak RSS.
//!
//!     cargo bench --bench anneal
//!
//! As root, with KUBECONFIG naming a control plane (`make controlplane`) and
//! GIRDER_KUBECTL as `make test` sets it. `cargo test` does not run it.

#[path = "../tests/support/mod.rs"]
mod support;

use girder::api::noderole::NodeRole;
use girder::graph::BindingState;
use kube::Api;
use kube::api::ListParams;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::farm::Farm;
use support::*;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("anneal benchmark skipped: run `cargo bench --bench anneal` as root (see BENCHMARKS.md)");
        return;
    }
    let nodes: usize = std::env::var("GIRDER_BENCH_NODES").ok().and_then(|n| n.parse().ok()).unwrap_or(100);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(bench(nodes));
}

fn micros(t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime>) -> Option<i64> {
    t.as_ref().map(|t| t.0.as_microsecond())
}

fn percentile(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

async fn bench(count: usize) {
    let started = Instant::now();
    let farm = Farm::new("anneal", count, "127.95.0").await;
    eprintln!("{count} nodes provisioned with their agents in {:.1} s", started.elapsed().as_secs_f64());
    let ns = farm.ns.name.clone();
    let task = "    timeoutSeconds: 60\n    script: |\n      echo '{}'\n";
    let yaml = format!(
        "apiVersion: girder.dev/v1alpha1\nkind: Role\nmetadata: {{name: a}}\nspec:\n  scope: Node\n  task:\n{task}---\napiVersion: girder.dev/v1alpha1\nkind: Role\nmetadata: {{name: b}}\nspec:\n  scope: Node\n  requires: [a]\n  task:\n{task}---\napiVersion: girder.dev/v1alpha1\nkind: Role\nmetadata: {{name: c}}\nspec:\n  scope: Cluster\n  requires: [b]\n  task:\n{task}---\napiVersion: girder.dev/v1alpha1\nkind: Workload\nmetadata: {{name: bench}}\nspec:\n  roles: [{{role: a}}, {{role: b}}, {{role: c}}]\n"
    );
    let clock = Instant::now();
    let applied = jiff::Timestamp::now().as_microsecond();
    apply_yaml(&ns, &yaml);
    let api: Api<NodeRole> = Api::namespaced(farm.client.clone(), &ns);
    let want = count * 3;
    let list = loop {
        let list = api.list(&ListParams::default()).await.unwrap().items;
        if list.len() == want
            && list.iter().all(|b| b.status.as_ref().and_then(|s| s.state) == Some(BindingState::Active))
        {
            break list;
        }
        assert!(clock.elapsed() < Duration::from_secs(1800), "not all Active after 30 minutes");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let wall = clock.elapsed();

    // (role, node) -> (requested, started, ended) in microseconds.
    let mut runs: BTreeMap<(String, String), (i64, i64, i64)> = BTreeMap::new();
    for b in &list {
        let status = b.status.as_ref().unwrap();
        let (run, report) = (status.run.as_ref().unwrap(), status.report.as_ref().unwrap());
        let requested = micros(&run.requested).unwrap();
        let start = micros(&report.started).unwrap();
        let end = start + report.milliseconds.unwrap_or(0) * 1000;
        runs.insert((b.spec.role.clone(), b.spec.node.clone()), (requested, start, end));
    }
    let mut pickup: Vec<i64> = runs.values().map(|(r, s, _)| s - r).collect();
    pickup.sort();
    let last_b = runs.iter().filter(|((r, _), _)| r == "b").map(|(_, v)| v.2).max().unwrap();
    let mut handoff: Vec<i64> = Vec::new();
    for ((role, node), (requested, _, _)) in &runs {
        match role.as_str() {
            "b" => handoff.push(requested - runs[&("a".to_string(), node.clone())].2),
            "c" => handoff.push(requested - last_b),
            _ => {}
        }
    }
    handoff.sort();
    let done_by_role = |role: &str| {
        let end = runs.iter().filter(|((r, _), _)| r == role).map(|(_, v)| v.2).max().unwrap();
        (end - applied) as f64 / 1e6
    };
    let operator_rss = farm.operator.as_ref().and_then(|o| peak_rss_kib(o.pid())).unwrap_or(0);
    let mut agent_rss: Vec<u64> = farm.agents.iter().flatten().filter_map(|a| peak_rss_kib(a.pid())).collect();
    agent_rss.sort();
    println!(
        "| nodes | bindings | apply -> all Active | a done | b done | c done | pickup p50 / p99 | hand-off p50 / p99 | operator peak RSS | agent peak RSS (median / max) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| {count} | {want} | {:.1} s | {:.1} s | {:.1} s | {:.1} s | {:.0} / {:.0} ms | {:.0} / {:.0} ms | {} MiB | {} / {} MiB |",
        wall.as_secs_f64(),
        done_by_role("a"),
        done_by_role("b"),
        done_by_role("c"),
        percentile(&pickup, 0.5),
        percentile(&pickup, 0.99),
        percentile(&handoff, 0.5),
        percentile(&handoff, 0.99),
        operator_rss / 1024,
        agent_rss.get(agent_rss.len() / 2).copied().unwrap_or(0) / 1024,
        agent_rss.last().copied().unwrap_or(0) / 1024,
    );
}
