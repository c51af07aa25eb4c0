//! What the annealer decides for one workload, as a pure function of what
//! the caches hold: which node holds which role (placement), what each
//! binding's task gets as inputs, and how each binding moves through
//! Proposed -> Blocked | Todo -> Running -> Active | Error.
//!
//! Placement is stable: a node keeps its bindings (and their index) while it
//! exists and matches the workload's selector, so a restarted operator
//! decides the same. New bindings go to Provisioned nodes only, spread over
//! the nodes that hold the fewest of this workload's bindings, preferring
//! nodes that hold the role's parents (its Node-scoped ones first).
//!
//! A binding runs again when its inputs change (a parent's outputs, the
//! members of its role, attributes) unless its task is `destructive`; a run
//! whose agent stopped sending heartbeats is lost and runs again the same
//! way. An Error stays until its inputs or its task change (the fix) or the
//! binding is deleted (an explicit re-run).

use crate::api::noderole::{NodeRole, NodeRoleStatus, RoleReport, RoleRun, RoleRunState, SecretOutputs, binding_name};
use crate::api::workload::RoleCounts;
use crate::api::{RoleSpec, Task, Workload, WorkloadRole};
use crate::graph::{Binding, BindingState, RoleGraph, Scope, anneal};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// What the annealer needs to know of a node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeFacts {
    pub name: String,
    /// Matches the workload's node selector.
    pub selected: bool,
    /// Provisioned: may be given new bindings.
    pub provisioned: bool,
    /// Its agent sends heartbeats: may run tasks.
    pub connected: bool,
    /// When its agent started (`status.agent.connected`).
    pub agent: Option<String>,
    /// Addresses per Network, without prefix length (IPv4 first).
    pub addresses: BTreeMap<String, Vec<String>>,
}

/// A binding to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewBinding {
    pub name: String,
    pub role: String,
    pub node: String,
}

/// What to do to one workload's bindings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    pub create: Vec<NewBinding>,
    /// Names of bindings to delete (their node or role left the workload).
    pub delete: Vec<String>,
    /// New statuses of the bindings whose status changes, by name.
    pub statuses: BTreeMap<String, NodeRoleStatus>,
    /// Per-role counts and placement, for the workload's status.
    pub counts: Vec<RoleCounts>,
    /// Why a role has fewer nodes than it asks for, per role.
    pub shortfalls: Vec<String>,
    /// Bindings whose inputs do not satisfy their role's schema: (binding, why).
    pub invalid: Vec<(String, String)>,
    /// Bindings in Error: (binding, message).
    pub errors: Vec<(String, String)>,
    /// Every placed binding is Active and every role has its nodes.
    pub converged: bool,
}

/// Everything the decision reads.
pub struct World<'a> {
    pub workload: &'a Workload,
    pub graph: &'a RoleGraph,
    pub roles: &'a BTreeMap<String, RoleSpec>,
    pub nodes: &'a [NodeFacts],
    pub bindings: &'a [NodeRole],
    pub now: jiff::Timestamp,
}

/// One placed binding during the decision.
struct Placed<'a> {
    name: String,
    role: &'a str,
    node: &'a str,
    index: i32,
    existing: Option<&'a NodeRole>,
}

/// Decides the bindings of a workload whose role graph planned (check it
/// with [`RoleGraph::plan`] first).
pub fn decide(world: &World<'_>) -> Outcome {
    let mut outcome = Outcome::default();
    let placement = place(world, &mut outcome);
    let placed: Vec<Placed<'_>> = placement;
    let placed_names: BTreeSet<&str> = placed.iter().map(|p| p.name.as_str()).collect();
    for b in world.bindings {
        let name = b.metadata.name.as_deref().unwrap_or_default();
        if !placed_names.contains(name) && b.metadata.deletion_timestamp.is_none() {
            outcome.delete.push(name.to_string());
        }
    }
    for p in placed.iter().filter(|p| p.existing.is_none()) {
        outcome.create.push(NewBinding { name: p.name.clone(), role: p.role.to_string(), node: p.node.to_string() });
    }

    let nodes: BTreeMap<&str, &NodeFacts> = world.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let max_in_flight = world
        .workload
        .spec
        .rollout
        .as_ref()
        .and_then(|r| r.max_in_flight)
        .and_then(|m| usize::try_from(m).ok())
        .unwrap_or(usize::MAX);

    // 1. Fold in what the agents reported, and what changed underneath.
    let mut states: Vec<(BindingState, String)> = Vec::with_capacity(placed.len());
    let mut inputs: Vec<Result<(Value, String), String>> = Vec::with_capacity(placed.len());
    // One validator per role, not per binding.
    let validators: BTreeMap<&str, Result<Option<jsonschema::Validator>, String>> =
        placed.iter().map(|p| (p.role, validator(&world.roles[p.role]))).collect();
    for p in &placed {
        let spec = &world.roles[p.role];
        let input = binding_inputs(world, &placed, p, &nodes).and_then(|v| {
            validate(&validators[p.role], &v)?;
            let hash = digest(&v);
            Ok((v, hash))
        });
        let status = p.existing.and_then(|b| b.status.as_ref());
        let node = nodes.get(p.node);
        let connected = node.is_some_and(|n| n.connected);
        let agent = node.and_then(|n| n.agent.as_deref()).filter(|_| connected);
        states.push(fold(status, spec.task.as_ref(), input.as_ref().ok().map(|(_, h)| h.as_str()), connected, agent));
        inputs.push(input);
    }

    // 2. One annealer pass.
    let bindings: Vec<Binding> = placed
        .iter()
        .zip(&states)
        .zip(&inputs)
        .map(|((p, (state, _)), input)| {
            let connected = nodes.get(p.node).is_some_and(|n| n.connected);
            let hold = if p.existing.is_none() {
                Some("being created".to_string())
            } else if let Err(why) = input {
                Some(format!("its inputs are invalid: {why}"))
            } else if !connected {
                Some(format!("waiting for the agent on {} to connect", p.node))
            } else {
                None
            };
            Binding { role: p.role.to_string(), node: p.node.to_string(), state: *state, hold }
        })
        .collect();
    let decisions = anneal(world.graph, &bindings, max_in_flight);

    // 3. The statuses that follow.
    let mut counts: BTreeMap<&str, RoleCounts> = BTreeMap::new();
    // Nothing placed is nothing done, not done.
    let mut converged = outcome.shortfalls.is_empty() && !placed.is_empty();
    for (((p, (folded, folded_message)), input), decision) in placed.iter().zip(&states).zip(&inputs).zip(&decisions) {
        let spec = &world.roles[p.role];
        let old = p.existing.and_then(|b| b.status.clone()).unwrap_or_default();
        let mut status = old.clone();
        status.index = Some(p.index);
        let mut state = decision.state;
        let mut message = if decision.message.is_empty() { folded_message.clone() } else { decision.message.clone() };
        match input {
            Ok((value, hash)) => {
                status.inputs_hash = Some(hash.clone());
                if state == BindingState::Running && *folded != BindingState::Running && spec.task.is_none() {
                    // Nothing to run: applied as soon as it may start.
                    state = BindingState::Active;
                    message = "applied (the role has no task)".into();
                    status.outputs = Some(json!({}));
                    status.applied_inputs_hash = Some(hash.clone());
                } else if state == BindingState::Running && *folded != BindingState::Running {
                    // Started in this pass: ask the agent.
                    let runs = old.runs.unwrap_or(0) + 1;
                    let uid = p.existing.and_then(|b| b.metadata.uid.as_deref()).unwrap_or_default();
                    let prefix: String = uid.chars().filter(|c| c.is_ascii_alphanumeric()).take(12).collect();
                    status.runs = Some(runs);
                    status.run = Some(RoleRun {
                        id: format!("{prefix}-{runs}"),
                        task: spec.task.clone().unwrap_or_else(no_task),
                        inputs: value.clone(),
                        inputs_hash: hash.clone(),
                        requested: Some(MicroTime(world.now)),
                    });
                    message = format!("running on {} (run {runs})", p.node);
                }
            }
            Err(why) => {
                outcome.invalid.push((p.name.clone(), why.clone()));
                if state == BindingState::Todo {
                    state = BindingState::Blocked;
                    message = format!("inputs invalid: {why}");
                }
            }
        }
        if old.state == Some(BindingState::Running) && state == BindingState::Active {
            // The run that just succeeded: its outputs and the inputs it had.
            (status.outputs, status.secret_outputs) = current_outputs(&old);
            status.applied_inputs_hash = old.run.as_ref().map(|r| r.inputs_hash.clone());
            status.applied_agent = old.report.as_ref().and_then(|r| r.agent.clone());
        }
        if state == BindingState::Error {
            outcome.errors.push((p.name.clone(), message.clone()));
        }
        converged &= state == BindingState::Active;
        status.state = Some(state);
        status.message = Some(message);
        if p.existing.is_some() && status != old {
            outcome.statuses.insert(p.name.clone(), status);
        }
        let c = counts.entry(p.role).or_insert_with(|| RoleCounts { role: p.role.to_string(), ..Default::default() });
        c.nodes.push(p.node.to_string());
        match state {
            BindingState::Proposed => c.proposed += 1,
            BindingState::Blocked => c.blocked += 1,
            BindingState::Todo => c.todo += 1,
            BindingState::Running => c.running += 1,
            BindingState::Active => {
                c.active += 1;
                // A node that is down (its agent's heartbeat lapsed) leaves
                // the role's DNS pools until it is back.
                if nodes.get(p.node).is_some_and(|n| n.connected) {
                    c.active_nodes.push(p.node.to_string());
                }
            }
            BindingState::Error => c.error += 1,
        }
    }
    outcome.converged = converged;
    outcome.counts = world
        .workload
        .spec
        .roles
        .iter()
        .map(|r| {
            let mut c = counts
                .remove(r.role.as_str())
                .unwrap_or_else(|| RoleCounts { role: r.role.clone(), ..Default::default() });
            c.desired = r.count.or_else(|| r.nodes.as_ref().map(|n| i32::try_from(n.len()).unwrap_or(i32::MAX)));
            c
        })
        .collect();
    outcome
}

fn no_task() -> Task {
    Task { script: "true".into(), timeout_seconds: 60, retries: 0, destructive: false, sensitive_outputs: Vec::new() }
}

/// The state a binding is in before this pass's annealing, from its last
/// status and what its agent reported: (state, message).
fn fold(
    status: Option<&NodeRoleStatus>,
    task: Option<&Task>,
    inputs_hash: Option<&str>,
    connected: bool,
    agent: Option<&str>,
) -> (BindingState, String) {
    let Some(status) = status else { return (BindingState::Proposed, "placed".into()) };
    let destructive = task.is_some_and(|t| t.destructive);
    let state = status.state.unwrap_or(BindingState::Proposed);
    let run = status.run.as_ref();
    let report = status.report.as_ref().filter(|r| run.is_some_and(|run| run.id == r.id));
    let task_changed = run.is_some_and(|run| Some(&run.task) != task);
    match state {
        BindingState::Running => {
            let Some(run) = run else {
                return (BindingState::Proposed, "the run request was lost; asking again".into());
            };
            match report {
                Some(RoleReport { state: RoleRunState::Succeeded, milliseconds, .. }) => {
                    let took = milliseconds.map(|ms| format!(" in {:.1} s", ms as f64 / 1000.0)).unwrap_or_default();
                    (BindingState::Active, format!("applied{took} (run {})", run.id))
                }
                Some(RoleReport { state: RoleRunState::Failed, reason, message, .. }) => {
                    let why = message.clone().unwrap_or_default();
                    if reason.as_deref() == Some("AgentRestarted") && !destructive {
                        (BindingState::Proposed, format!("run {} was interrupted ({why}); running it again", run.id))
                    } else if reason.as_deref() == Some("AgentRestarted") {
                        (
                            BindingState::Error,
                            format!(
                                "run {} was interrupted and its task is destructive, so it is not run again by itself; delete this NodeRole to run it again",
                                run.id
                            ),
                        )
                    } else {
                        let reason = reason.clone().unwrap_or_else(|| "TaskFailed".into());
                        (BindingState::Error, format!("{reason}: {why}"))
                    }
                }
                _ if !connected && destructive => (
                    BindingState::Error,
                    format!(
                        "run {} was lost: the agent stopped sending heartbeats mid-run, and a destructive task is not run again by itself; delete this NodeRole to run it again",
                        run.id
                    ),
                ),
                _ if !connected => (
                    BindingState::Proposed,
                    format!(
                        "run {} was lost: the agent stopped sending heartbeats; it runs again when the agent is back",
                        run.id
                    ),
                ),
                _ => (BindingState::Running, status.message.clone().unwrap_or_default()),
            }
        }
        BindingState::Active => {
            let applied = status.applied_inputs_hash.as_deref();
            let changed = inputs_hash.is_some() && applied.is_some() && applied != inputs_hash;
            // A node whose agent started again (a reboot, a power loss) may
            // have lost what the task set up: daemons, mounts.
            let restarted = started_since(agent, status.applied_agent.as_deref());
            match (changed || task_changed || restarted, destructive) {
                (true, false) => {
                    let what = if task_changed {
                        "its task changed".to_string()
                    } else if changed {
                        "its inputs changed".to_string()
                    } else {
                        format!("the node's agent started again (at {}) since it ran", agent.unwrap_or_default())
                    };
                    (BindingState::Proposed, format!("{what}; running it again"))
                }
                (true, true) => (
                    BindingState::Active,
                    "its inputs changed, but its task is destructive and does not run again by itself; delete this NodeRole to run it again".into(),
                ),
                (false, _) => (BindingState::Active, status.message.clone().unwrap_or_default()),
            }
        }
        BindingState::Error => {
            let changed = run.is_some_and(|r| Some(r.inputs_hash.as_str()) != inputs_hash);
            if (changed || task_changed) && !destructive {
                (BindingState::Proposed, "its inputs or task changed since it failed; running it again".into())
            } else {
                (BindingState::Error, status.message.clone().unwrap_or_default())
            }
        }
        other => (other, status.message.clone().unwrap_or_default()),
    }
}

/// Whether the node's agent (`agent`: when it started) started after the
/// one that applied a binding (`applied`), to the second (what the API
/// server keeps of a time). Anything unreadable is no restart: a re-run is
/// never asked on a difference that running cannot settle.
fn started_since(agent: Option<&str>, applied: Option<&str>) -> bool {
    let second = |t: Option<&str>| t?.parse::<jiff::Timestamp>().ok().map(|t| t.as_second());
    matches!((second(agent), second(applied)), (Some(now), Some(then)) if now > then)
}

/// Which nodes hold which role: existing bindings first (stable), then new
/// ones on Provisioned nodes.
fn place<'a>(world: &World<'a>, outcome: &mut Outcome) -> Vec<Placed<'a>> {
    let workload = world.workload.metadata.name.as_deref().unwrap_or_default();
    let nodes: BTreeMap<&str, &NodeFacts> = world.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    // How many of this workload's bindings each node holds, for spreading.
    let mut load: BTreeMap<&str, usize> = BTreeMap::new();
    let mut placed: Vec<Placed<'a>> = Vec::new();
    // Parents first, so children can follow their Node-scoped parents.
    let order = placement_order(world);
    for wr in order {
        let role = wr.role.as_str();
        let explicit = wr.nodes.as_ref();
        let keeps = |node: &str| match explicit {
            Some(list) => list.iter().any(|n| n == node) && nodes.contains_key(node),
            None => nodes.get(node).is_some_and(|n| n.selected),
        };
        let mut existing: Vec<&'a NodeRole> = world
            .bindings
            .iter()
            .filter(|b| b.spec.role == role && b.metadata.deletion_timestamp.is_none() && keeps(&b.spec.node))
            .collect();
        existing.sort_by_key(|b| (b.status.as_ref().and_then(|s| s.index).unwrap_or(i32::MAX), b.spec.node.clone()));
        let candidates: Vec<&NodeFacts> = match explicit {
            Some(list) => list.iter().filter_map(|n| nodes.get(n.as_str()).copied()).collect(),
            None => world.nodes.iter().filter(|n| n.selected).collect(),
        };
        let want = match (wr.count, explicit) {
            (Some(count), _) => usize::try_from(count).unwrap_or(0),
            (None, Some(list)) => list.len(),
            (None, None) => candidates.len(),
        };
        // Lowering the count removes the members with the highest index.
        existing.truncate(want);
        let mut holders: Vec<(&'a str, i32, Option<&'a NodeRole>)> = existing
            .iter()
            .map(|b| (b.spec.node.as_str(), b.status.as_ref().and_then(|s| s.index).unwrap_or(-1), Some(*b)))
            .collect();
        let taken: BTreeSet<&str> = holders.iter().map(|h| h.0).collect();
        // A node that holds a role's parents is where its files are (keys,
        // binaries): Node-scoped parents must be there, Cluster-scoped ones
        // are welcome.
        let parents_here = |node: &str| -> (usize, usize) {
            let Some(def) = world.graph.get(role) else { return (0, 0) };
            let here =
                def.requires.iter().filter(|p| placed.iter().any(|x| x.role == p.as_str() && x.node == node)).count();
            if def.scope == Scope::Node { (here, 0) } else { (0, here) }
        };
        let mut fresh: Vec<&NodeFacts> =
            candidates.iter().copied().filter(|n| n.provisioned && !taken.contains(n.name.as_str())).collect();
        fresh.sort_by_key(|n| {
            (std::cmp::Reverse(parents_here(&n.name)), load.get(n.name.as_str()).copied().unwrap_or(0), n.name.clone())
        });
        for n in fresh.into_iter().take(want.saturating_sub(holders.len())) {
            holders.push((n.name.as_str(), -1, None));
        }
        if holders.len() < want {
            let missing: Vec<String> = match explicit {
                Some(list) => list
                    .iter()
                    .filter(|n| !holders.iter().any(|h| h.0 == n.as_str()))
                    .map(|n| match nodes.get(n.as_str()) {
                        None => format!("{n} does not exist"),
                        Some(_) => format!("{n} is not Provisioned"),
                    })
                    .collect(),
                None => vec![format!(
                    "{} selected nodes are Provisioned and free of it",
                    candidates.iter().filter(|n| n.provisioned).count()
                )],
            };
            let nodes = if want == 1 { "node" } else { "nodes" };
            outcome.shortfalls.push(format!(
                "{role} wants {want} {nodes}, has {}: {}",
                holders.len(),
                missing.join(", ")
            ));
        }
        // Indices: kept where held, else the lowest free one.
        let mut used: BTreeSet<i32> = holders.iter().map(|h| h.1).filter(|i| *i >= 0).collect();
        let mut seen_index = BTreeSet::new();
        for holder in holders.iter_mut() {
            if holder.1 < 0 || !seen_index.insert(holder.1) {
                let free = (0..).find(|i| !used.contains(i)).unwrap_or(0);
                used.insert(free);
                seen_index.insert(free);
                holder.1 = free;
            }
        }
        holders.sort_by_key(|h| h.1);
        for (node, index, existing) in holders {
            *load.entry(node).or_default() += 1;
            placed.push(Placed {
                name: existing
                    .and_then(|b| b.metadata.name.clone())
                    .unwrap_or_else(|| binding_name(workload, role, node)),
                role,
                node,
                index,
                existing,
            });
        }
    }
    placed
}

/// The workload's roles, parents before children (the plan's order).
fn placement_order<'a>(world: &World<'a>) -> Vec<&'a WorkloadRole> {
    let roles = &world.workload.spec.roles;
    let names: Vec<String> = roles.iter().map(|r| r.role.clone()).collect();
    let layers = world.graph.plan(&names).unwrap_or_default();
    let mut ordered: Vec<&WorkloadRole> = Vec::with_capacity(roles.len());
    for layer in layers {
        // A role the graph knows but the caller's specs lack (read a moment
        // apart) waits for the next pass.
        for name in layer.roles.into_iter().filter(|n| world.roles.contains_key(n)) {
            if let Some(r) = roles.iter().find(|r| r.role == name) {
                ordered.push(r);
            }
        }
    }
    ordered
}

/// The inputs of one binding: merged attributes, the node's facts, the
/// members of its role and its parents' outputs.
fn binding_inputs(
    world: &World<'_>,
    placed: &[Placed<'_>],
    me: &Placed<'_>,
    nodes: &BTreeMap<&str, &NodeFacts>,
) -> Result<Value, String> {
    let spec = &world.roles[me.role];
    let wr = world.workload.spec.roles.iter().find(|r| r.role == me.role);
    let mut attributes = spec.attributes.clone().unwrap_or_else(|| json!({}));
    if let Some(over) = wr.and_then(|r| r.attributes.as_ref()) {
        merge(&mut attributes, over);
    }
    if let Some(over) = wr.and_then(|r| r.node_attributes.as_ref()).and_then(|m| m.get(me.node)) {
        merge(&mut attributes, over);
    }
    let facts = |p: &Placed<'_>| {
        let addresses = nodes.get(p.node).map(|n| json!(n.addresses)).unwrap_or_else(|| json!({}));
        json!({ "node": p.node, "index": p.index, "addresses": addresses })
    };
    let with_outputs = |p: &Placed<'_>| {
        let mut v = facts(p);
        let (outputs, secret) = p.existing.and_then(|b| b.status.as_ref()).map(current_outputs).unwrap_or_default();
        v["outputs"] = outputs.unwrap_or_else(|| json!({}));
        if let Some(secret) = secret {
            // Where the agent finds the rest (it adds them to "outputs"); the
            // version makes a change of them a change of the inputs.
            v["secretOutputs"] = json!(secret);
        }
        v
    };
    let members: Vec<Value> = placed.iter().filter(|p| p.role == me.role).map(facts).collect();
    let mut parents = Map::new();
    if let Some(def) = world.graph.get(me.role) {
        for parent in &def.requires {
            let of_parent = placed.iter().filter(|p| p.role == parent.as_str());
            let value = match def.scope {
                Scope::Node => of_parent.filter(|p| p.node == me.node).map(with_outputs).next().unwrap_or(Value::Null),
                Scope::Cluster => Value::Array(of_parent.map(with_outputs).collect()),
            };
            parents.insert(parent.clone(), value);
        }
    }
    let mut me_facts = facts(me);
    me_facts["name"] = json!(me.node);
    Ok(json!({
        "workload": world.workload.metadata.name,
        "role": me.role,
        "attributes": attributes,
        "node": me_facts,
        "members": members,
        "parents": parents,
    }))
}

/// A binding's outputs (and where its sensitive ones are) as of this pass:
/// those of a run that has just succeeded (its children may start in the
/// same pass), else the last ones.
fn current_outputs(status: &NodeRoleStatus) -> (Option<Value>, Option<SecretOutputs>) {
    let run = status.run.as_ref();
    let succeeded =
        status.report.as_ref().filter(|r| r.state == RoleRunState::Succeeded && run.is_some_and(|run| run.id == r.id));
    match (status.state, succeeded) {
        (Some(BindingState::Running), Some(report)) => {
            (Some(report.outputs.clone().unwrap_or_else(|| json!({}))), report.secret_outputs.clone())
        }
        _ => (status.outputs.clone(), status.secret_outputs.clone()),
    }
}

/// The validator of a role's `attributesSchema`, if it has one.
fn validator(spec: &RoleSpec) -> Result<Option<jsonschema::Validator>, String> {
    let Some(schema) = spec.attributes_schema.as_ref() else { return Ok(None) };
    jsonschema::validator_for(schema)
        .map(Some)
        .map_err(|e| format!("the role's attributesSchema is not a valid schema: {e}"))
}

/// Checks the merged attributes against the role's `attributesSchema`;
/// the error names the field.
fn validate(validator: &Result<Option<jsonschema::Validator>, String>, inputs: &Value) -> Result<(), String> {
    let validator = match validator {
        Ok(Some(v)) => v,
        Ok(None) => return Ok(()),
        Err(why) => return Err(why.clone()),
    };
    let attributes = &inputs["attributes"];
    let errors: Vec<String> = validator
        .iter_errors(attributes)
        .take(3)
        .map(|e| {
            let path = e.instance_path().to_string();
            let field = if path.is_empty() {
                "attributes".to_string()
            } else {
                format!("attributes{}", path.replace('/', "."))
            };
            format!("{field}: {e}")
        })
        .collect();
    if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
}

/// Deep merge: objects merge key by key, anything else replaces.
pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// sha256 of the canonical JSON (keys sorted), first 16 bytes in hex.
pub fn digest(value: &Value) -> String {
    use sha2::Digest;
    fn canonical(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                out.push('{');
                let sorted: BTreeMap<&String, &Value> = m.iter().collect();
                for (i, (k, v)) in sorted.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    canonical(v, out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    canonical(v, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut text = String::new();
    canonical(value, &mut text);
    let hash = sha2::Sha256::digest(text.as_bytes());
    hash.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[path = "bindings_tests.rs"]
mod tests;
