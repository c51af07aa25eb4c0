//! The Workload controller: validates the role graph a workload places,
//! publishes its plan (which node holds which role, in which order), and
//! anneals its bindings (one NodeRole per role x node) until every one is
//! Active: it creates and deletes them, moves their states and asks the
//! nodes' agents for runs. The decisions are [`bindings::decide`] (pure);
//! this module reads the caches and applies them.

pub mod bindings;
pub mod outputs_access;

use super::cache::{OnDelete, reflect};
use super::role::GuardedRole;
use super::{Context, Error, key};
use crate::api::condition::{self, Condition};
use crate::api::node::NodePhase;
use crate::api::noderole::{
    NODE_LABEL, NodeRole, NodeRoleSpec, OUTPUTS_NODE_ANNOTATION, ROLE_LABEL, WORKLOAD_LABEL, secret_outputs_name,
};
use crate::api::workload::RoleCounts;
use crate::api::{BareMetalNode, ConditionStatus, PlanLayer, Role, RoleSpec, Workload, WorkloadStatus};
use crate::graph::RoleGraph;
use crate::k8s::{apply_status, apply_status_at, manager};
use bindings::{NodeFacts, Outcome, World};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::{DeserializeGuard, Selector, SelectorExt};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, ReflectHandle, Store};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How many binding writes (creations, statuses) one reconcile has in flight.
const STATUS_WRITES_AT_ONCE: usize = 16;

struct WorkloadContext {
    ctx: Arc<Context>,
    roles: Store<GuardedRole>,
    nodes: Store<DeserializeGuard<BareMetalNode>>,
    bindings: Store<NodeRole>,
    /// What each node's agent was last granted of sensitive outputs, by
    /// (namespace, node): only a change is written.
    granted: std::sync::Mutex<BTreeMap<(String, String), outputs_access::Names>>,
}

/// Decides a Workload's status from the role graph of its namespace and,
/// once its plan holds, what the annealer decided for its bindings (pure).
pub fn decide(
    workload: &Workload,
    graph: &RoleGraph,
    outcome: Option<&Outcome>,
    existing: Option<&WorkloadStatus>,
) -> WorkloadStatus {
    let generation = workload.metadata.generation;
    let placed: Vec<String> = workload.spec.roles.iter().map(|r| r.role.clone()).collect();
    let counts = || match outcome {
        Some(outcome) => outcome.counts.clone(),
        None => workload
            .spec
            .roles
            .iter()
            .map(|r| RoleCounts {
                role: r.role.clone(),
                desired: r.count.or_else(|| r.nodes.as_ref().map(|n| i32::try_from(n.len()).unwrap_or(i32::MAX))),
                ..Default::default()
            })
            .collect(),
    };
    let (plan, decided) = match graph.plan(&placed) {
        Ok(layers) => {
            let plan: Vec<PlanLayer> = layers
                .into_iter()
                .enumerate()
                .map(|(i, layer)| PlanLayer {
                    layer: i32::try_from(i).unwrap_or(i32::MAX),
                    roles: layer.roles,
                    barrier: layer.barrier,
                })
                .collect();
            let summary = format!("{} roles in {} layers", placed.len(), plan.len());
            (plan, annealed(&summary, outcome, generation))
        }
        Err(err) => {
            let message = err.to_string();
            let conditions = vec![
                Condition::new("Blocked", true, err.reason(), message.clone(), generation),
                Condition::new("Ready", false, err.reason(), message.clone(), generation),
                Condition::new("Progressing", false, err.reason(), message, generation),
                Condition::new("Degraded", false, "AsExpected", "no binding is in Error", generation),
            ];
            (Vec::new(), conditions)
        }
    };
    let existing_conditions = existing.map(|s| s.conditions.as_slice()).unwrap_or_default();
    WorkloadStatus {
        conditions: condition::merge(existing_conditions, decided),
        observed_generation: generation,
        layer_count: (!plan.is_empty()).then(|| i32::try_from(plan.len()).unwrap_or(i32::MAX)),
        plan,
        roles: counts(),
    }
}

/// The conditions of a workload whose plan holds.
fn annealed(summary: &str, outcome: Option<&Outcome>, generation: Option<i64>) -> Vec<Condition> {
    let Some(outcome) = outcome else {
        return vec![
            Condition::new("Blocked", false, "PlanReady", format!("{summary}; nothing blocks the plan"), generation),
            Condition::new(
                "Ready",
                false,
                "AwaitingNodes",
                format!("{summary}; roles run once nodes are provisioned"),
                generation,
            ),
            Condition::new("Progressing", false, "AwaitingNodes", "no role is running yet", generation),
            Condition::new("Degraded", false, "AsExpected", "no binding is in Error", generation),
        ];
    };
    let total: i32 = outcome.counts.iter().map(|c| c.nodes.len() as i32).sum();
    let active: i32 = outcome.counts.iter().map(|c| c.active).sum();
    let running: Vec<String> = outcome
        .counts
        .iter()
        .filter(|c| c.running > 0)
        .map(|c| format!("{} ({} running)", c.role, c.running))
        .collect();
    let blocked = match outcome.invalid.first() {
        Some((binding, why)) => Condition::new(
            "Blocked",
            true,
            "InvalidAttributes",
            format!("{binding}: {why}{}", more(outcome.invalid.len())),
            generation,
        ),
        None => {
            Condition::new("Blocked", false, "PlanReady", format!("{summary}; nothing blocks the plan"), generation)
        }
    };
    let degraded = match outcome.errors.first() {
        Some((binding, why)) => Condition::new(
            "Degraded",
            true,
            "BindingFailed",
            format!("{binding} failed: {why}{}", more(outcome.errors.len())),
            generation,
        ),
        None => Condition::new("Degraded", false, "AsExpected", "no binding is in Error", generation),
    };
    let ready = if outcome.converged {
        Condition::new("Ready", true, "AllActive", format!("all {total} bindings are Active"), generation)
    } else if !outcome.shortfalls.is_empty() {
        Condition::new("Ready", false, "AwaitingNodes", outcome.shortfalls.join("; "), generation)
    } else {
        Condition::new("Ready", false, "Annealing", format!("{active} of {total} bindings Active"), generation)
    };
    let progressing = if outcome.converged {
        Condition::new("Progressing", false, "AllActive", "nothing left to run", generation)
    } else if !running.is_empty() {
        Condition::new(
            "Progressing",
            true,
            "Running",
            format!("{active} of {total} Active; {}", running.join(", ")),
            generation,
        )
    } else {
        Condition::new(
            "Progressing",
            false,
            "Waiting",
            format!("{active} of {total} Active; nothing is running"),
            generation,
        )
    };
    vec![blocked, ready, progressing, degraded]
}

fn more(n: usize) -> String {
    if n > 1 { format!(" (and {} more)", n - 1) } else { String::new() }
}

/// The workload's `spec.nodeSelector`, parsed; the error says what is wrong
/// with it.
pub fn node_selector(workload: &Workload) -> Result<Option<Selector>, String> {
    workload.spec.node_selector.clone().map(Selector::try_from).transpose().map_err(|e| e.to_string())
}

/// What the annealer knows of a node (pure).
pub fn node_facts(node: &BareMetalNode, selector: Option<&Selector>) -> NodeFacts {
    let status = node.status.as_ref();
    let connected = status
        .and_then(|s| condition::find(&s.conditions, "AgentConnected"))
        .is_some_and(|c| c.status == ConditionStatus::True);
    let mut addresses: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in status.map(|s| s.addresses.as_slice()).unwrap_or_default() {
        let list = addresses.entry(a.network.clone()).or_default();
        for ip in [&a.ipv4, &a.ipv6].into_iter().flatten() {
            list.push(ip.split('/').next().unwrap_or(ip).to_string());
        }
    }
    NodeFacts {
        name: node.name_any(),
        selected: selector.is_none_or(|s| s.matches(node.labels())),
        provisioned: status.and_then(|s| s.phase) == Some(NodePhase::Provisioned),
        connected,
        agent: status.and_then(|s| s.agent.as_ref()?.connected.as_ref()).map(|t| t.0.to_string()),
        addresses,
    }
}

#[tracing::instrument(skip_all, fields(namespace = guard.namespace().unwrap_or_default(), workload = %guard.name_any()))]
async fn reconcile(guard: Arc<DeserializeGuard<Workload>>, wc: Arc<WorkloadContext>) -> Result<Action, Error> {
    let ctx = &wc.ctx;
    let Some(workload) = super::readable(ctx, guard.as_ref()).await else {
        return Ok(Action::await_change());
    };
    let started = Instant::now();
    let namespace =
        workload.namespace().ok_or_else(|| Error::NoNamespace { kind: "Workload", name: workload.name_any() })?;
    let graph = super::role::graph_of(&wc.roles, &namespace);
    let names: Vec<String> = workload.spec.roles.iter().map(|r| r.role.clone()).collect();
    let mut requeue = Duration::from_secs(3600);
    let outcome = match graph.plan(&names) {
        Ok(_) if workload.metadata.deletion_timestamp.is_none() => {
            let selector = node_selector(workload).map_err(|message| Error::Invalid {
                kind: "Workload",
                namespace: namespace.to_string(),
                name: workload.name_any(),
                field: "spec.nodeSelector",
                message,
            })?;
            let outcome = decide_bindings(&wc, workload, &graph, &namespace, selector.as_ref());
            apply_bindings(&wc, workload, &namespace, &outcome).await?;
            if !outcome.converged {
                // Reports and heartbeats wake it; this is the safety net.
                requeue = Duration::from_secs(60);
            }
            Some(outcome)
        }
        // A broken graph blocks before anything runs; bindings stay as they are.
        _ => None,
    };
    let status = decide(workload, &graph, outcome.as_ref(), workload.status.as_ref());
    if workload.status.as_ref() != Some(&status) {
        let api: Api<Workload> = Api::namespaced(ctx.client.clone(), &namespace);
        apply_status(&api, workload, manager::WORKLOAD, &status).await.map_err(|source| Error::StatusWrite {
            kind: "Workload",
            namespace: namespace.clone(),
            name: workload.name_any(),
            source,
        })?;
        ctx.metrics.status_written("Workload");
        let before = workload.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
        super::announce_blocked(ctx, workload, before, &status.conditions, "Plan").await;
    }
    ctx.metrics.reconciled("Workload", started.elapsed());
    ctx.backoff.succeeded(&key(&ObjectRef::from_obj(guard.as_ref())));
    Ok(Action::requeue(requeue))
}

/// Reads the caches into the annealer's world and decides.
fn decide_bindings(
    wc: &WorkloadContext,
    workload: &Workload,
    graph: &RoleGraph,
    namespace: &str,
    selector: Option<&Selector>,
) -> Outcome {
    let mut roles: BTreeMap<String, RoleSpec> = BTreeMap::new();
    for guard in wc.roles.state().iter().filter(|r| r.namespace().as_deref() == Some(namespace)) {
        if let Ok(role) = &guard.0 {
            roles.insert(role.name_any(), role.spec.clone());
        }
    }
    let nodes: Vec<NodeFacts> = wc
        .nodes
        .state()
        .iter()
        .filter(|n| n.namespace().as_deref() == Some(namespace))
        .filter_map(|g| g.0.as_ref().ok().map(|n| node_facts(n, selector)))
        .collect();
    let uid = workload.uid();
    let bindings: Vec<NodeRole> = wc
        .bindings
        .state()
        .iter()
        .filter(|b| b.namespace().as_deref() == Some(namespace) && b.spec.workload == workload.name_any())
        .filter(|b| b.owner_references().iter().any(|o| Some(&o.uid) == uid.as_ref()))
        .map(|b| b.as_ref().clone())
        .collect();
    bindings::decide(&World {
        workload,
        graph,
        roles: &roles,
        nodes: &nodes,
        bindings: &bindings,
        now: jiff::Timestamp::now(),
    })
}

/// Creates, deletes and moves the bindings as decided. Each status is
/// written on the version it was decided from: a binding that changed since
/// (its agent reported) is decided again, so no run is asked twice.
async fn apply_bindings(
    wc: &WorkloadContext,
    workload: &Workload,
    namespace: &str,
    outcome: &Outcome,
) -> Result<(), Error> {
    let api: Api<NodeRole> = Api::namespaced(wc.ctx.client.clone(), namespace);
    let params = PatchParams::apply(manager::ANNEALER).force();
    let owner = workload.controller_owner_ref(&());
    let write_error = |name: &str, source: kube::Error| Error::Write {
        kind: "NodeRole",
        namespace: namespace.to_string(),
        name: name.to_string(),
        source,
    };
    let creates = outcome.create.iter().cloned().map(|new| {
        let mut binding = NodeRole::new(
            &new.name,
            NodeRoleSpec { workload: workload.name_any(), role: new.role.clone(), node: new.node.clone() },
        );
        let labels =
            [(WORKLOAD_LABEL, workload.name_any()), (ROLE_LABEL, new.role.clone()), (NODE_LABEL, new.node.clone())];
        binding.metadata.labels =
            Some(labels.into_iter().filter(|(_, v)| v.len() <= 63).map(|(k, v)| (k.to_string(), v)).collect());
        binding.metadata.owner_references = owner.clone().map(|o| vec![o]);
        let (api, params) = (api.clone(), params.clone());
        let binding = serde_json::to_value(&binding).unwrap_or_default();
        async move {
            let created = api.patch(&new.name, &params, &Patch::Apply(&binding)).await;
            (new, created)
        }
    });
    let mut creates = futures::stream::iter(creates).buffer_unordered(STATUS_WRITES_AT_ONCE);
    while let Some((new, created)) = creates.next().await {
        created.map_err(|e| write_error(&new.name, e))?;
        tracing::info!(binding = %new.name, role = %new.role, node = %new.node, "placed");
    }
    for name in &outcome.delete {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => tracing::info!(binding = %name, "removed"),
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => return Err(write_error(name, e)),
        }
    }
    // Before any run is asked: its agent may read the Secrets it names.
    grant_outputs(wc, workload, namespace, outcome).await?;
    // Written side by side (a few at a time): a large workload's agents are
    // asked at once, not one status write after another.
    let mut pending: Vec<(String, Option<String>, serde_json::Value, String)> = Vec::new();
    for (name, status) in &outcome.statuses {
        let Some(current) = wc.bindings.get(&ObjectRef::new(name).within(namespace)) else { continue };
        let mut body = serde_json::to_value(status).unwrap_or_default();
        // The agent's report is the agent's: never written back from a cache.
        if let Some(map) = body.as_object_mut() {
            map.remove("report");
        }
        let said = format!("{:?}: {}", status.state, status.message.as_deref().unwrap_or(""));
        pending.push((name.clone(), current.resource_version(), body, said));
    }
    let writes = pending.into_iter().map(|(name, version, body, said)| {
        let api = api.clone();
        async move {
            let written = apply_status_at(&api, &name, version.as_deref(), manager::ANNEALER, &body).await;
            (name, said, written)
        }
    });
    let mut writes = futures::stream::iter(writes).buffer_unordered(STATUS_WRITES_AT_ONCE);
    let mut failed = None;
    while let Some((name, said, written)) = writes.next().await {
        match written {
            Ok(_) => {
                wc.ctx.metrics.status_written("NodeRole");
                tracing::info!(binding = %name, state = %said, "binding");
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                failed.get_or_insert(Error::Stale {
                    kind: "NodeRole",
                    namespace: namespace.to_string(),
                    name: name.clone(),
                });
            }
            Err(source) => {
                failed = Some(Error::StatusWrite {
                    kind: "NodeRole",
                    namespace: namespace.to_string(),
                    name: name.clone(),
                    source,
                });
            }
        }
    }
    if let Some(err) = failed {
        return Err(err);
    }
    Ok(())
}

/// Grants the agent of each node holding this workload's bindings the
/// Secrets of sensitive outputs it writes and reads (`outputs_access`), as
/// the bindings on the node will be once `outcome` is written. Only a
/// change is written; a node left with none loses its Role.
async fn grant_outputs(
    wc: &WorkloadContext,
    workload: &Workload,
    namespace: &str,
    outcome: &Outcome,
) -> Result<(), Error> {
    let sensitive = |role: &Role| role.spec.task.as_ref().is_some_and(|t| !t.sensitive_outputs.is_empty());
    let any_sensitive = wc
        .roles
        .state()
        .iter()
        .any(|g| g.namespace().as_deref() == Some(namespace) && g.0.as_ref().is_ok_and(sensitive));
    let any_granted = wc.granted.lock().is_ok_and(|g| g.keys().any(|(ns, _)| ns == namespace));
    if !any_sensitive && !any_granted {
        // The common case: no role here has sensitive outputs.
        return Ok(());
    }
    let mine = |b: &NodeRole| b.spec.workload == workload.name_any();
    let cached: Vec<Arc<NodeRole>> =
        wc.bindings.state().into_iter().filter(|b| b.namespace().as_deref() == Some(namespace)).collect();
    let touched: std::collections::BTreeSet<&str> = cached
        .iter()
        .filter(|b| mine(b))
        .map(|b| b.spec.node.as_str())
        .chain(outcome.create.iter().map(|c| c.node.as_str()))
        .collect();
    let mut on_node: BTreeMap<String, Vec<NodeRole>> = BTreeMap::new();
    for b in cached.iter().filter(|b| touched.contains(b.spec.node.as_str())) {
        let mut b = b.as_ref().clone();
        if let Some(status) = outcome.statuses.get(&b.name_any()).filter(|_| mine(&b)) {
            b.status = Some(status.clone());
        }
        on_node.entry(b.spec.node.clone()).or_default().push(b);
    }
    let sensitive = |role: &str| {
        wc.roles.get(&ObjectRef::new(role).within(namespace)).is_some_and(|g| g.0.as_ref().is_ok_and(sensitive))
    };
    let params = PatchParams::apply(outputs_access::MANAGER).force();
    let roles: Api<k8s_openapi::api::rbac::v1::Role> = Api::namespaced(wc.ctx.client.clone(), namespace);
    let role_bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> = Api::namespaced(wc.ctx.client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(wc.ctx.client.clone(), namespace);
    for node in touched {
        let names = outputs_access::names(on_node.get(node).into_iter().flatten(), sensitive);
        let key = (namespace.to_string(), node.to_string());
        let before = wc.granted.lock().map(|g| g.get(&key).cloned()).unwrap_or_default();
        if before.as_ref() == Some(&names) || (before.is_none() && names.is_empty()) {
            continue;
        }
        let name = outputs_access::role_name(node);
        let write_error = |kind: &'static str| {
            let (namespace, name) = (namespace.to_string(), name.clone());
            move |source| Error::Write { kind, namespace, name, source }
        };
        if names.is_empty() {
            for result in [
                roles.delete(&name, &DeleteParams::default()).await.map(|_| ()),
                role_bindings.delete(&name, &DeleteParams::default()).await.map(|_| ()),
            ] {
                match result {
                    Ok(()) => {}
                    Err(kube::Error::Api(s)) if s.is_not_found() => {}
                    Err(e) => return Err(write_error("Role")(e)),
                }
            }
        } else {
            let Some(owner) = wc
                .nodes
                .get(&ObjectRef::new(node).within(namespace))
                .and_then(|g| g.0.as_ref().ok().and_then(|n| n.controller_owner_ref(&())))
                .and_then(|o| serde_json::to_value(o).ok())
            else {
                // The node is gone: so are its agent and its bindings.
                continue;
            };
            let role = outputs_access::role(node, Some(&owner), &names);
            roles.patch(&name, &params, &Patch::Apply(&role)).await.map_err(write_error("Role"))?;
            let binding = outputs_access::role_binding(node, namespace, Some(&owner));
            role_bindings.patch(&name, &params, &Patch::Apply(&binding)).await.map_err(write_error("RoleBinding"))?;
            tracing::info!(%node, writes = names.write.len(), reads = names.read.len(), "granted the agent its sensitive outputs");
            // The Secrets it writes exist, owned by their bindings: an agent
            // may update them by name, never create a Secret.
            let mut made_all = true;
            for secret in names.write.iter().filter(|s| !before.as_ref().is_some_and(|b| b.write.contains(*s))) {
                let binding =
                    on_node.get(node).into_iter().flatten().find(|b| &secret_outputs_name(&b.name_any()) == secret);
                let Some(owner) = binding.and_then(|b| b.controller_owner_ref(&())) else {
                    // Created in this pass: not cached yet, so no uid; next pass.
                    made_all = false;
                    continue;
                };
                let mut empty = Secret { type_: Some("Opaque".into()), ..Default::default() };
                empty.metadata.name = Some(secret.clone());
                empty.metadata.annotations =
                    Some(BTreeMap::from([(OUTPUTS_NODE_ANNOTATION.to_string(), node.to_string())]));
                empty.metadata.owner_references = Some(vec![owner]);
                match secrets.create(&PostParams::default(), &empty).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => {
                        return Err(Error::Write {
                            kind: "Secret",
                            namespace: namespace.to_string(),
                            name: secret.clone(),
                            source: e,
                        });
                    }
                }
            }
            if !made_all {
                continue;
            }
        }
        if let Ok(mut granted) = wc.granted.lock() {
            granted.insert(key, names);
        }
    }
    Ok(())
}

fn error_policy(guard: Arc<DeserializeGuard<Workload>>, err: &Error, wc: Arc<WorkloadContext>) -> Action {
    if matches!(err, Error::Stale { .. }) {
        // The cache is a moment behind a write: decide again shortly.
        return Action::requeue(Duration::from_millis(200));
    }
    tracing::warn!(workload = %guard.name_any(), error = %err, "reconcile failed");
    wc.ctx.metrics.failed("Workload", err.metric_label());
    super::warn_later(wc.ctx.clone(), guard.clone(), err);
    Action::requeue(wc.ctx.backoff.failed(&key(&ObjectRef::from_obj(guard.as_ref()))))
}

/// The caches the Workload controller reads besides its own.
pub struct Watches {
    pub roles: Store<GuardedRole>,
    pub role_changes: ReflectHandle<GuardedRole>,
    pub nodes: Store<DeserializeGuard<BareMetalNode>>,
    pub node_changes: ReflectHandle<DeserializeGuard<BareMetalNode>>,
}

/// Runs the Workload controller until `shutdown`: a change of a Role or a
/// BareMetalNode re-decides every workload of its namespace, a change of a
/// NodeRole its workload.
pub async fn run(ctx: Arc<Context>, watches: Watches, shutdown: CancellationToken) {
    let Watches { roles, role_changes, nodes, node_changes } = watches;
    let (workload_api, binding_api): (Api<DeserializeGuard<Workload>>, Api<NodeRole>) = match &ctx.namespace {
        Some(ns) => (Api::namespaced(ctx.client.clone(), ns), Api::namespaced(ctx.client.clone(), ns)),
        None => (Api::all(ctx.client.clone()), Api::all(ctx.client.clone())),
    };
    // Bindings are large (their inputs): a small buffer bounds the versions
    // held for a subscriber that lags (the reflector waits instead).
    let (bindings, writer) = reflector::store_shared(256);
    let Some(binding_changes) = writer.subscribe() else {
        tracing::error!("cannot subscribe to the NodeRole cache; the Workload controller does not run");
        return;
    };
    let binding_reflector = reflect("NodeRole", binding_api, writer, OnDelete::default(), shutdown.clone());
    let controller = Controller::new(workload_api, watcher::Config::default());
    let workloads = controller.store();
    let in_namespace = move |namespace: Option<String>| {
        workloads
            .state()
            .iter()
            .filter(|w| w.namespace() == namespace)
            .map(|w| ObjectRef::from_obj(w.as_ref()))
            .collect::<Vec<_>>()
    };
    let for_nodes = in_namespace.clone();
    let stop = shutdown.clone();
    let wait_for = bindings.clone();
    let controller = async move {
        // Deciding from a half-filled cache would create bindings twice.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wait_for.wait_until_ready() => {}
        }
        controller
            .watches_shared_stream(role_changes, move |role: Arc<GuardedRole>| in_namespace(role.namespace()))
            .watches_shared_stream(node_changes, move |node: Arc<DeserializeGuard<BareMetalNode>>| {
                for_nodes(node.namespace())
            })
            .owns_shared_stream(binding_changes)
            .graceful_shutdown_on(async move { stop.cancelled().await })
            .run(
                reconcile,
                error_policy,
                Arc::new(WorkloadContext { ctx, roles, nodes, bindings, granted: Default::default() }),
            )
            .for_each(|_| futures::future::ready(()))
            .await;
    };
    tokio::join!(binding_reflector, controller);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ConditionStatus, WorkloadRole, WorkloadSpec};
    use crate::graph::{RoleDef, Scope};

    fn workload(roles: &[&str]) -> Workload {
        let mut w = Workload::new(
            "lab",
            WorkloadSpec {
                roles: roles
                    .iter()
                    .map(|r| WorkloadRole {
                        role: r.to_string(),
                        count: Some(3),
                        nodes: None,
                        attributes: None,
                        node_attributes: None,
                    })
                    .collect(),
                ..Default::default()
            },
        );
        w.metadata.generation = Some(7);
        w
    }

    fn graph() -> RoleGraph {
        let def = |name: &str, requires: &[&str], scope| RoleDef {
            name: name.into(),
            requires: requires.iter().map(|s| s.to_string()).collect(),
            scope,
        };
        RoleGraph::new([
            def("etcd", &[], Scope::Node),
            def("etcd-sync", &["etcd"], Scope::Cluster),
            def("loop-a", &["loop-b"], Scope::Node),
            def("loop-b", &["loop-a"], Scope::Node),
        ])
    }

    #[test]
    fn plan_is_published_with_observed_generation() {
        let status = decide(&workload(&["etcd-sync", "etcd"]), &graph(), None, None);
        assert_eq!(status.plan.len(), 2);
        assert_eq!(status.plan[1].roles, ["etcd-sync"]);
        assert!(status.plan[1].barrier);
        assert_eq!(status.layer_count, Some(2));
        assert_eq!(status.observed_generation, Some(7));
        assert!(status.conditions.iter().all(|c| c.observed_generation == Some(7)));
        assert_eq!(status.roles[0].desired, Some(3));
        let blocked = condition::find(&status.conditions, "Blocked").unwrap();
        assert_eq!(blocked.status, ConditionStatus::False);
    }

    #[test]
    fn cycle_blocks_with_the_cycle_named_and_no_plan() {
        let status = decide(&workload(&["loop-a", "loop-b"]), &graph(), None, None);
        assert!(status.plan.is_empty());
        let blocked = condition::find(&status.conditions, "Blocked").unwrap();
        assert_eq!(blocked.status, ConditionStatus::True);
        assert_eq!(blocked.reason, "DependencyCycle");
        assert!(blocked.message.contains("loop-a -> loop-b -> loop-a"));
    }

    #[test]
    fn same_inputs_give_an_identical_status() {
        let w = workload(&["etcd", "etcd-sync"]);
        let first = decide(&w, &graph(), None, None);
        assert_eq!(decide(&w, &graph(), None, Some(&first)), first);
    }
}
