//! `girder plan WORKLOAD`: the annealer's plan of a workload, read from the
//! cluster and rehearsed without changing anything: which node holds which
//! role, in which order, in which state; and, given a changed version of the
//! workload (`-f`), what applying it would create, remove and run again.
//!
//! It runs the operator's own decision ([`bindings::decide`]) on what the
//! API server holds, so the rehearsal is the decision, not a model of it.

use crate::api::noderole::NodeRole;
use crate::api::{BareMetalNode, Role, RoleSpec, Workload};
use crate::controller::role::role_def;
use crate::controller::workload::bindings::{self, Outcome, World};
use crate::controller::workload::{node_facts, node_selector};
use crate::graph::{BindingState, RoleGraph, Scope};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    /// The Workload.
    workload: String,
    /// Its namespace (default: the kubeconfig's).
    #[arg(short, long)]
    namespace: Option<String>,
    /// A changed version of the Workload (YAML) to rehearse: what applying it
    /// would create, remove and run again. Nothing is applied.
    #[arg(short = 'f', long)]
    file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot reach the API server: {0}")]
    Client(kube::Error),
    #[error("cannot read {what}: {source}")]
    Read { what: String, source: kube::Error },
    #[error("workload {0} does not exist in namespace {1}")]
    NoWorkload(String, String),
    #[error("cannot read {path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error("{path} is Workload {found}, not {wanted}")]
    OtherWorkload { path: PathBuf, found: String, wanted: String },
    #[error("spec.nodeSelector: {0}")]
    Selector(String),
    #[error("the plan is blocked: {0}")]
    Blocked(String),
}

pub fn main(args: PlanArgs) -> Result<(), Box<dyn std::error::Error>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(PlanError::Runtime)?;
    let text = runtime.block_on(plan(args))?;
    print!("{text}");
    Ok(())
}

async fn plan(args: PlanArgs) -> Result<String, PlanError> {
    let client = Client::try_default().await.map_err(PlanError::Client)?;
    let namespace = args.namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
    let read = |what: &str| {
        let what = format!("{what} in namespace {namespace}");
        move |source| PlanError::Read { what, source }
    };
    let workloads: Api<Workload> = Api::namespaced(client.clone(), &namespace);
    let live = workloads.get_opt(&args.workload).await.map_err(read("the Workload"))?;
    let workload = match &args.file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| PlanError::File { path: path.clone(), detail: e.to_string() })?;
            let mut changed: Workload = serde_yaml::from_str(&text)
                .map_err(|e| PlanError::File { path: path.clone(), detail: e.to_string() })?;
            if changed.name_any() != args.workload {
                return Err(PlanError::OtherWorkload {
                    path: path.clone(),
                    found: changed.name_any(),
                    wanted: args.workload.clone(),
                });
            }
            // The live object's identity: its bindings are owned by it.
            changed.metadata.uid = live.as_ref().and_then(|w| w.metadata.uid.clone());
            changed
        }
        None => live.clone().ok_or_else(|| PlanError::NoWorkload(args.workload.clone(), namespace.clone()))?,
    };
    let roles: Vec<Role> = Api::<Role>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default())
        .await
        .map_err(read("Roles"))?
        .items;
    let nodes: Vec<BareMetalNode> = Api::<BareMetalNode>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default())
        .await
        .map_err(read("BareMetalNodes"))?
        .items;
    let all: Vec<NodeRole> = Api::<NodeRole>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default().fields(&format!("spec.workload={}", args.workload)))
        .await
        .map_err(read("NodeRoles"))?
        .items;
    let uid = live.as_ref().and_then(|w| w.metadata.uid.clone());
    let existing: Vec<NodeRole> =
        all.into_iter().filter(|b| b.owner_references().iter().any(|o| Some(&o.uid) == uid.as_ref())).collect();

    let graph = RoleGraph::new(roles.iter().map(role_def));
    let names: Vec<String> = workload.spec.roles.iter().map(|r| r.role.clone()).collect();
    let layers = graph.plan(&names).map_err(|e| PlanError::Blocked(e.to_string()))?;
    let selector = node_selector(&workload).map_err(PlanError::Selector)?;
    let facts: Vec<_> = nodes.iter().map(|n| node_facts(n, selector.as_ref())).collect();
    let specs: BTreeMap<String, RoleSpec> = roles.iter().map(|r| (r.name_any(), r.spec.clone())).collect();
    let outcome = bindings::decide(&World {
        workload: &workload,
        graph: &graph,
        roles: &specs,
        nodes: &facts,
        bindings: &existing,
        now: jiff::Timestamp::now(),
    });
    let layers: Vec<Vec<String>> = layers.into_iter().map(|l| l.roles).collect();
    Ok(render(&namespace, &workload, &graph, &layers, &existing, &outcome, args.file.is_some()))
}

/// The plan as text (pure).
pub fn render(
    namespace: &str,
    workload: &Workload,
    graph: &RoleGraph,
    layers: &[Vec<String>],
    existing: &[NodeRole],
    outcome: &Outcome,
    rehearsal: bool,
) -> String {
    let mut out = String::new();
    let limit = workload.spec.rollout.as_ref().and_then(|r| r.max_in_flight);
    let limit = limit.map(|m| format!("; at most {m} tasks at once")).unwrap_or_default();
    let _ = writeln!(
        out,
        "Workload {} in {namespace}: {} roles in {} layers{limit}; one task per node at a time",
        workload.name_any(),
        workload.spec.roles.len(),
        layers.len()
    );
    let by_place: BTreeMap<(&str, &str), &NodeRole> =
        existing.iter().map(|b| ((b.spec.role.as_str(), b.spec.node.as_str()), b)).collect();
    let mut rerun = Vec::new();
    let mut kept = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        for role in layer {
            let how = match graph.get(role) {
                Some(def) if def.requires.is_empty() => "no parents".to_string(),
                Some(def) if def.scope == Scope::Cluster => {
                    format!("Cluster: waits for every binding of {}", def.requires.join(", "))
                }
                Some(def) => format!("Node: waits for {} on the same node", def.requires.join(", ")),
                None => String::new(),
            };
            let _ = writeln!(out, "layer {i}: {role} ({how})");
            let placed = outcome.counts.iter().find(|c| &c.role == role).map(|c| c.nodes.clone()).unwrap_or_default();
            if placed.is_empty() {
                let _ = writeln!(out, "    (no node yet)");
            }
            for (index, node) in placed.iter().enumerate() {
                let Some(binding) = by_place.get(&(role.as_str(), node.as_str())) else {
                    let _ = writeln!(out, "    {node:<24} #{index:<3} new");
                    continue;
                };
                let name = binding.name_any();
                let now = binding.status.as_ref().and_then(|s| s.state);
                let next = outcome.statuses.get(&name).or(binding.status.as_ref());
                let (state, message) = next
                    .map(|s| (s.state, s.message.clone().unwrap_or_default()))
                    .unwrap_or((Some(BindingState::Proposed), String::new()));
                let state = state.map(|s| format!("{s:?}")).unwrap_or_else(|| "Proposed".into());
                let _ = writeln!(out, "    {node:<24} #{index:<3} {state:<9} {message}");
                let runs_again = now == Some(BindingState::Active)
                    && next.and_then(|s| s.state).is_some_and(|s| s != BindingState::Active);
                if runs_again {
                    rerun.push(format!("{name} ({message})"));
                } else if now == Some(BindingState::Active) && message.contains("destructive") {
                    kept.push(name);
                }
            }
        }
    }
    for shortfall in &outcome.shortfalls {
        let _ = writeln!(out, "short of nodes: {shortfall}");
    }
    for (binding, why) in &outcome.invalid {
        let _ = writeln!(out, "blocked: {binding}: {why}");
    }
    let verb = if rehearsal { "Applying it would" } else { "Next, the operator will" };
    let list = |items: &[String]| if items.is_empty() { String::new() } else { format!(": {}", items.join(", ")) };
    let creates: Vec<String> = outcome.create.iter().map(|b| b.name.clone()).collect();
    let _ = writeln!(
        out,
        "{verb} create {} bindings{}; remove {}{}; run {} again{}; leave {} destructive ones as they are{}",
        creates.len(),
        list(&creates),
        outcome.delete.len(),
        list(&outcome.delete),
        rerun.len(),
        list(&rerun),
        kept.len(),
        list(&kept),
    );
    out
}
