use super::*;
use crate::api::{WorkloadSpec, workload::Rollout};
use crate::graph::RoleDef;
use serde_json::json;

fn role(requires: &[&str], task: Option<&str>) -> RoleSpec {
    RoleSpec {
        requires: requires.iter().map(|s| s.to_string()).collect(),
        task: task.map(|script| Task {
            script: script.into(),
            timeout_seconds: 60,
            retries: 0,
            destructive: false,
            sensitive_outputs: Vec::new(),
        }),
        ..Default::default()
    }
}

/// etcd (Node) on 3 nodes; etcd-cluster (Cluster, requires etcd) on the same
/// 3; apiserver (Node, requires etcd-cluster) on 2.
struct Lab {
    workload: Workload,
    roles: BTreeMap<String, RoleSpec>,
    scopes: BTreeMap<String, Scope>,
    nodes: Vec<NodeFacts>,
    bindings: Vec<NodeRole>,
    uid: u32,
}

impl Lab {
    fn new(nodes: usize) -> Lab {
        let mut roles = BTreeMap::new();
        roles.insert("etcd".to_string(), role(&[], Some("start etcd")));
        roles.insert("etcd-cluster".to_string(), role(&["etcd"], Some("check etcd")));
        roles.insert("apiserver".to_string(), role(&["etcd-cluster"], Some("start apiserver")));
        let scopes =
            BTreeMap::from([("etcd-cluster".to_string(), Scope::Cluster), ("apiserver".to_string(), Scope::Cluster)]);
        let workload = Workload::new(
            "k8s",
            WorkloadSpec {
                roles: vec![wr("etcd", Some(3)), wr("etcd-cluster", Some(3)), wr("apiserver", Some(2))],
                ..Default::default()
            },
        );
        let nodes = (0..nodes).map(|i| node(&format!("n{i}"), true, true)).collect();
        Lab { workload, roles, scopes, nodes, bindings: Vec::new(), uid: 0 }
    }

    fn graph(&self) -> RoleGraph {
        RoleGraph::new(self.roles.iter().map(|(name, spec)| RoleDef {
            name: name.clone(),
            requires: spec.requires.clone(),
            scope: self.scopes.get(name).copied().unwrap_or_default(),
        }))
    }

    fn decide(&self) -> Outcome {
        let graph = self.graph();
        decide(&World {
            workload: &self.workload,
            graph: &graph,
            roles: &self.roles,
            nodes: &self.nodes,
            bindings: &self.bindings,
            now: jiff::Timestamp::UNIX_EPOCH,
        })
    }

    /// Decides and applies, as the controller would.
    fn pass(&mut self) -> Outcome {
        let outcome = self.decide();
        self.bindings.retain(|b| !outcome.delete.contains(b.metadata.name.as_ref().unwrap()));
        for new in &outcome.create {
            self.uid += 1;
            let mut b = NodeRole::new(
                &new.name,
                crate::api::NodeRoleSpec { workload: "k8s".into(), role: new.role.clone(), node: new.node.clone() },
            );
            b.metadata.uid = Some(format!("uid{:04}-x", self.uid));
            self.bindings.push(b);
        }
        for b in &mut self.bindings {
            if let Some(status) = outcome.statuses.get(b.metadata.name.as_ref().unwrap()) {
                let report = b.status.as_ref().and_then(|s| s.report.clone());
                b.status = Some(NodeRoleStatus { report, ..status.clone() });
            }
        }
        outcome
    }

    fn get(&self, role: &str, node: &str) -> &NodeRole {
        self.bindings.iter().find(|b| b.spec.role == role && b.spec.node == node).unwrap()
    }

    fn state(&self, role: &str, node: &str) -> (BindingState, String) {
        let s = self.get(role, node).status.clone().unwrap_or_default();
        (s.state.unwrap_or(BindingState::Proposed), s.message.unwrap_or_default())
    }

    fn holders(&self, role: &str) -> Vec<String> {
        let mut held: Vec<(i32, String)> = self
            .bindings
            .iter()
            .filter(|b| b.spec.role == role)
            .map(|b| (b.status.as_ref().and_then(|s| s.index).unwrap_or(-1), b.spec.node.clone()))
            .collect();
        held.sort();
        held.into_iter().map(|h| h.1).collect()
    }

    /// The agent on `node` reports the current run of `role`.
    fn report(&mut self, role: &str, node: &str, state: RoleRunState, reason: Option<&str>, outputs: Value) {
        let lab_agent = self.nodes.iter().find(|n| n.name == node).and_then(|n| n.agent.clone());
        let b = self.bindings.iter_mut().find(|b| b.spec.role == role && b.spec.node == node).unwrap();
        let status = b.status.as_mut().unwrap();
        let id = status.run.as_ref().expect("a run was asked").id.clone();
        status.report = Some(RoleReport {
            id,
            state,
            attempt: Some(1),
            exit_code: Some(if state == RoleRunState::Succeeded { 0 } else { 1 }),
            reason: reason.map(str::to_string),
            message: Some(format!("{state:?}")),
            log_tail: None,
            started: None,
            milliseconds: Some(1500),
            outputs: Some(outputs),
            secret_outputs: None,
            agent: lab_agent,
        });
    }

    fn running(&self) -> Vec<(String, String)> {
        let mut r: Vec<(String, String)> = self
            .bindings
            .iter()
            .filter(|b| b.status.as_ref().and_then(|s| s.state) == Some(BindingState::Running))
            .map(|b| (b.spec.role.clone(), b.spec.node.clone()))
            .collect();
        r.sort();
        r
    }

    /// Reports success for everything running, with the node in the outputs.
    fn succeed_running(&mut self) {
        for (role, node) in self.running() {
            self.report(&role, &node, RoleRunState::Succeeded, None, json!({ "from": format!("{role}@{node}") }));
        }
    }

    fn run_id(&self, role: &str, node: &str) -> String {
        self.get(role, node).status.as_ref().unwrap().run.as_ref().unwrap().id.clone()
    }
}

fn wr(role: &str, count: Option<i32>) -> WorkloadRole {
    WorkloadRole { role: role.into(), count, nodes: None, attributes: None, node_attributes: None }
}

fn node(name: &str, provisioned: bool, connected: bool) -> NodeFacts {
    let last: u8 = name.trim_start_matches('n').parse().unwrap_or(0);
    NodeFacts {
        name: name.into(),
        selected: true,
        provisioned,
        connected,
        agent: Some("2026-01-01T00:00:00Z".into()),
        addresses: BTreeMap::from([("admin".to_string(), vec![format!("10.0.0.{}", 10 + last)])]),
    }
}

#[test]
fn placement_fills_each_role_and_is_stable() {
    let mut lab = Lab::new(4);
    let first = lab.pass();
    assert_eq!(first.create.len(), 8, "{:?}", first.create);
    assert!(first.statuses.is_empty(), "nothing exists yet to write to");
    lab.pass();
    assert_eq!(lab.holders("etcd"), ["n0", "n1", "n2"]);
    // The Node-scoped... etcd-cluster follows no Node parent but spreads by load: n3 holds nothing yet.
    assert_eq!(lab.holders("etcd-cluster").len(), 3);
    assert_eq!(lab.holders("apiserver").len(), 2);
    // Deciding again, with everything in place, changes nothing.
    let again = lab.pass();
    assert!(again.create.is_empty() && again.delete.is_empty(), "{again:?}");
    let indices: Vec<i32> =
        ["n0", "n1", "n2"].iter().map(|n| lab.get("etcd", n).status.as_ref().unwrap().index.unwrap()).collect();
    assert_eq!(indices, [0, 1, 2]);
}

#[test]
fn new_bindings_go_to_provisioned_nodes_and_a_shortfall_is_said() {
    let mut lab = Lab::new(2);
    lab.nodes.push(node("n2", false, false));
    lab.workload.spec.roles = vec![wr("etcd", Some(3))];
    let outcome = lab.pass();
    assert_eq!(outcome.create.len(), 2);
    assert_eq!(outcome.shortfalls, ["etcd wants 3 nodes, has 2: 2 selected nodes are Provisioned and free of it"]);
    assert!(!outcome.converged);
    // When n2 is Provisioned it gets the third, with the free index.
    lab.nodes[2].provisioned = true;
    lab.nodes[2].connected = true;
    lab.pass();
    lab.pass();
    assert_eq!(lab.holders("etcd"), ["n0", "n1", "n2"]);
}

#[test]
fn lowering_a_count_removes_the_highest_index_and_raising_it_adds_one() {
    let mut lab = Lab::new(5);
    lab.workload.spec.roles = vec![wr("etcd", Some(3))];
    lab.pass();
    lab.workload.spec.roles = vec![wr("etcd", Some(2))];
    let outcome = lab.pass();
    assert_eq!(outcome.delete, ["k8s.etcd.n2"]);
    lab.workload.spec.roles = vec![wr("etcd", Some(4))];
    let outcome = lab.pass();
    assert_eq!(outcome.create.len(), 2);
    lab.pass();
    assert_eq!(lab.holders("etcd").len(), 4);
}

#[test]
fn explicit_nodes_are_used_and_missing_ones_are_named() {
    let mut lab = Lab::new(3);
    lab.workload.spec.roles = vec![WorkloadRole { nodes: Some(vec!["n2".into(), "ghost".into()]), ..wr("etcd", None) }];
    let outcome = lab.pass();
    assert_eq!(outcome.create, [NewBinding { name: "k8s.etcd.n2".into(), role: "etcd".into(), node: "n2".into() }]);
    assert_eq!(outcome.shortfalls, ["etcd wants 2 nodes, has 1: ghost does not exist"]);
}

#[test]
fn roles_run_in_order_with_the_cluster_barrier_and_outputs_flow_to_children() {
    let mut lab = Lab::new(3);
    lab.pass();
    lab.pass();
    // Layer 0 everywhere; nothing of the later layers.
    assert_eq!(
        lab.running(),
        [("etcd".into(), "n0".into()), ("etcd".into(), "n1".into()), ("etcd".into(), "n2".into())]
    );
    let (state, message) = lab.state("etcd-cluster", "n0");
    assert_eq!(state, BindingState::Blocked);
    assert!(message.contains("etcd (0 of 3 nodes Active)"), "{message}");
    // The run carries the inputs: the node's facts and the members of its role.
    let run = lab.get("etcd", "n1").status.clone().unwrap().run.unwrap();
    assert_eq!(run.inputs["node"]["name"], "n1");
    assert_eq!(run.inputs["node"]["index"], 1);
    assert_eq!(run.inputs["node"]["addresses"]["admin"][0], "10.0.0.11");
    assert_eq!(run.inputs["members"].as_array().unwrap().len(), 3, "every member's address before any starts");
    assert_eq!(run.inputs["members"][2]["addresses"]["admin"][0], "10.0.0.12");
    assert_eq!(run.task.script, "start etcd");

    // Two of three Active: the barrier holds.
    lab.report("etcd", "n0", RoleRunState::Succeeded, None, json!({ "peer": "n0:2380" }));
    lab.report("etcd", "n1", RoleRunState::Succeeded, None, json!({ "peer": "n1:2380" }));
    lab.pass();
    assert_eq!(lab.state("etcd", "n0").0, BindingState::Active);
    assert_eq!(lab.get("etcd", "n0").status.as_ref().unwrap().outputs, Some(json!({ "peer": "n0:2380" })));
    assert!(lab.state("etcd-cluster", "n0").1.contains("2 of 3"), "{:?}", lab.state("etcd-cluster", "n0"));
    lab.report("etcd", "n2", RoleRunState::Succeeded, None, json!({ "peer": "n2:2380" }));
    lab.pass();
    lab.pass();
    assert_eq!(lab.running().len(), 3, "{:?}", lab.running());
    let run = lab.get("etcd-cluster", "n2").status.clone().unwrap().run.unwrap();
    let parents = run.inputs["parents"]["etcd"].as_array().unwrap();
    assert_eq!(parents.len(), 3, "a Cluster role gets every parent binding");
    assert_eq!(parents[1]["outputs"]["peer"], "n1:2380");
    assert_eq!(parents[1]["addresses"]["admin"][0], "10.0.0.11");
    lab.succeed_running();
    lab.pass();
    lab.pass();
    lab.succeed_running();
    let last = lab.pass();
    assert!(last.converged, "{last:?}");
    assert_eq!(last.counts.iter().map(|c| c.active).sum::<i32>(), 8);
}

#[test]
fn attributes_merge_role_then_workload_then_node_and_are_validated() {
    let mut lab = Lab::new(2);
    let etcd = lab.roles.get_mut("etcd").unwrap();
    etcd.attributes = Some(json!({ "port": 2379, "tls": { "enabled": true, "cipher": "a" } }));
    etcd.attributes_schema = Some(json!({
        "type": "object",
        "properties": { "port": { "type": "integer", "maximum": 65535 } }
    }));
    lab.workload.spec.roles = vec![WorkloadRole {
        attributes: Some(json!({ "tls": { "cipher": "b" } })),
        node_attributes: Some(BTreeMap::from([("n1".to_string(), json!({ "port": 70000 }))])),
        ..wr("etcd", Some(2))
    }];
    lab.pass();
    let outcome = lab.pass();
    let run = lab.get("etcd", "n0").status.clone().unwrap().run.unwrap();
    assert_eq!(run.inputs["attributes"], json!({ "port": 2379, "tls": { "enabled": true, "cipher": "b" } }));
    // n1's override breaks the schema: Blocked, the field named, nothing run.
    let (state, message) = lab.state("etcd", "n1");
    assert_eq!(state, BindingState::Blocked);
    assert!(message.contains("attributes.port") && message.contains("65535"), "{message}");
    assert!(lab.get("etcd", "n1").status.as_ref().unwrap().run.is_none());
    assert_eq!(outcome.invalid.len(), 1);
}

#[test]
fn a_failure_blocks_the_descendants_and_names_the_ancestor() {
    let mut lab = Lab::new(3);
    lab.pass();
    lab.pass();
    lab.report("etcd", "n1", RoleRunState::Failed, Some("TaskFailed"), json!({}));
    lab.report("etcd", "n0", RoleRunState::Succeeded, None, json!({}));
    lab.report("etcd", "n2", RoleRunState::Succeeded, None, json!({}));
    let outcome = lab.pass();
    assert_eq!(lab.state("etcd", "n1").0, BindingState::Error);
    assert_eq!(outcome.errors.len(), 1);
    for n in ["n0", "n1", "n2"] {
        let (state, message) = lab.state("etcd-cluster", n);
        assert_eq!(state, BindingState::Blocked);
        assert!(message.contains("etcd failed on n1"), "{message}");
    }
    let apiserver = lab.holders("apiserver");
    assert!(lab.state("apiserver", &apiserver[0]).1.contains("etcd failed on n1"));
    // It stays failed on its own...
    lab.pass();
    assert_eq!(lab.state("etcd", "n1").0, BindingState::Error);
    // ...and a fixed task runs again.
    lab.roles.get_mut("etcd").unwrap().task.as_mut().unwrap().script = "start etcd, fixed".into();
    lab.pass();
    assert_eq!(lab.state("etcd", "n1").0, BindingState::Running);
    assert_eq!(lab.get("etcd", "n1").status.as_ref().unwrap().runs, Some(2));
}

#[test]
fn a_lost_or_interrupted_run_runs_again_unless_destructive() {
    let mut lab = Lab::new(2);
    lab.workload.spec.roles = vec![wr("etcd", Some(2))];
    lab.pass();
    lab.pass();
    let first = lab.run_id("etcd", "n0");
    // n0's agent stops sending heartbeats mid-run.
    lab.nodes[0].connected = false;
    lab.pass();
    let (state, message) = lab.state("etcd", "n0");
    assert_eq!(state, BindingState::Todo, "{message}");
    assert!(message.contains("waiting for the agent on n0"), "{message}");
    lab.nodes[0].connected = true;
    lab.pass();
    assert_eq!(lab.state("etcd", "n0").0, BindingState::Running);
    assert_ne!(lab.run_id("etcd", "n0"), first, "a new run, not the lost one");

    // A restarted agent says its run was interrupted: run again.
    lab.report("etcd", "n1", RoleRunState::Failed, Some("AgentRestarted"), json!({}));
    lab.pass();
    assert_eq!(lab.state("etcd", "n1").0, BindingState::Running);

    // Destructive tasks never run again by themselves.
    lab.roles.get_mut("etcd").unwrap().task.as_mut().unwrap().destructive = true;
    let before = lab.run_id("etcd", "n1");
    lab.report("etcd", "n1", RoleRunState::Failed, Some("AgentRestarted"), json!({}));
    lab.nodes[0].connected = false;
    lab.pass();
    let (state, message) = lab.state("etcd", "n1");
    assert_eq!(state, BindingState::Error);
    assert!(message.contains("destructive"), "{message}");
    assert_eq!(lab.run_id("etcd", "n1"), before);
    let (state, message) = lab.state("etcd", "n0");
    assert_eq!(state, BindingState::Error, "lost mid-run, destructive: {message}");
}

#[test]
fn a_node_whose_agent_started_again_runs_its_roles_again_unless_destructive() {
    let mut lab = Lab::new(2);
    lab.workload.spec.roles = vec![wr("etcd", Some(2))];
    let mut outcome = lab.pass();
    while !outcome.converged {
        lab.succeed_running();
        outcome = lab.pass();
    }
    let first = lab.run_id("etcd", "n1");
    // n1 lost power and came back: a new agent.
    lab.nodes[1].agent = Some("2026-01-01T01:00:00Z".into());
    lab.pass();
    let (state, message) = lab.state("etcd", "n1");
    assert_eq!(state, BindingState::Running, "{message}");
    assert_ne!(lab.run_id("etcd", "n1"), first);
    assert_eq!(lab.state("etcd", "n0").0, BindingState::Active, "n0's agent did not restart");
    lab.succeed_running();
    lab.pass();
    // Run by the new agent: settled, nothing more.
    assert!(lab.pass().converged);
    assert_eq!(lab.state("etcd", "n1").0, BindingState::Active);
    assert_eq!(lab.get("etcd", "n1").status.as_ref().unwrap().applied_agent.as_deref(), Some("2026-01-01T01:00:00Z"));

    // Destructive: not again.
    lab.roles.get_mut("etcd").unwrap().task.as_mut().unwrap().destructive = true;
    lab.nodes[0].agent = Some("2026-01-01T02:00:00Z".into());
    lab.pass();
    let (state, message) = lab.state("etcd", "n0");
    assert_eq!(state, BindingState::Active, "{message}");
}

#[test]
fn a_node_that_is_down_leaves_the_pool_and_comes_back_with_its_agent() {
    let mut lab = Lab::new(3);
    lab.workload.spec.roles = vec![wr("etcd", Some(3))];
    let pool = |outcome: &Outcome| outcome.counts[0].active_nodes.clone();
    let mut outcome = lab.pass();
    while !outcome.converged {
        lab.succeed_running();
        outcome = lab.pass();
    }
    assert_eq!(pool(&outcome), ["n0", "n1", "n2"]);
    // n1's heartbeat lapses: its binding stays Active (nothing re-runs), but
    // the pool no longer names it.
    lab.nodes[1].connected = false;
    let outcome = lab.pass();
    assert_eq!(lab.state("etcd", "n1").0, BindingState::Active);
    assert_eq!(outcome.counts[0].active, 3);
    assert_eq!(pool(&outcome), ["n0", "n2"]);
    lab.nodes[1].connected = true;
    assert_eq!(pool(&lab.pass()), ["n0", "n1", "n2"]);
}

#[test]
fn changed_inputs_run_again_at_most_max_in_flight_at_a_time() {
    let mut lab = Lab::new(4);
    lab.workload.spec.roles = vec![wr("etcd", Some(4))];
    lab.workload.spec.rollout = Some(Rollout { max_in_flight: Some(2) });
    lab.pass();
    lab.pass();
    assert_eq!(lab.running().len(), 2, "the rollout limit holds from the start");
    lab.succeed_running();
    lab.pass();
    lab.succeed_running();
    lab.pass();
    let outcome = lab.pass();
    assert!(outcome.converged, "{outcome:?}");
    // A configuration change: every member re-runs, two at a time.
    lab.workload.spec.roles = vec![WorkloadRole { attributes: Some(json!({ "version": 2 })), ..wr("etcd", Some(4)) }];
    lab.pass();
    assert_eq!(lab.running().len(), 2);
    let waiting = lab.holders("etcd").into_iter().filter(|n| lab.state("etcd", n).0 != BindingState::Running).count();
    assert_eq!(waiting, 2);
    lab.succeed_running();
    lab.pass();
    assert_eq!(lab.running().len(), 2);
    lab.succeed_running();
    lab.pass();
    assert!(lab.pass().converged);
    // A destructive task does not run again for a change.
    lab.roles.get_mut("etcd").unwrap().task.as_mut().unwrap().destructive = true;
    lab.workload.spec.roles = vec![WorkloadRole { attributes: Some(json!({ "version": 3 })), ..wr("etcd", Some(4)) }];
    lab.pass();
    assert!(lab.running().is_empty());
    assert!(lab.state("etcd", "n0").1.contains("destructive"));
}

#[test]
fn one_task_per_node_at_a_time() {
    let mut lab = Lab::new(1);
    lab.roles.insert("ntp".to_string(), role(&[], Some("ntp")));
    lab.workload.spec.roles = vec![wr("etcd", Some(1)), wr("ntp", Some(1))];
    lab.pass();
    lab.pass();
    assert_eq!(lab.running().len(), 1);
    let waiting = if lab.running()[0].0 == "etcd" { "ntp" } else { "etcd" };
    assert!(lab.state(waiting, "n0").1.contains("waiting for the task running on n0"));
}

#[test]
fn a_role_without_a_task_is_active_once_its_parents_are() {
    let mut lab = Lab::new(1);
    lab.roles.insert("group".to_string(), role(&["etcd"], None));
    lab.workload.spec.roles = vec![wr("etcd", Some(1)), wr("group", Some(1))];
    lab.pass();
    lab.pass();
    lab.succeed_running();
    lab.pass();
    let outcome = lab.pass();
    assert_eq!(lab.state("group", "n0").0, BindingState::Active);
    assert!(outcome.converged);
}

#[test]
fn digests_ignore_key_order_and_merge_is_deep() {
    assert_eq!(
        digest(&json!({ "a": 1, "b": [1, { "c": 2, "d": 3 }] })),
        digest(&json!({ "b": [1, { "d": 3, "c": 2 }], "a": 1 }))
    );
    assert_ne!(digest(&json!({ "a": 1 })), digest(&json!({ "a": 2 })));
    let mut base = json!({ "a": { "b": 1, "c": 2 }, "d": [1] });
    merge(&mut base, &json!({ "a": { "c": 3 }, "d": [2] }));
    assert_eq!(base, json!({ "a": { "b": 1, "c": 3 }, "d": [2] }));
}

#[test]
fn an_agent_restart_is_a_later_second_and_nothing_else() {
    let at = |t: &str| Some(t.to_string());
    assert!(started_since(at("2026-01-01T00:00:01Z").as_deref(), at("2026-01-01T00:00:00Z").as_deref()));
    assert!(!started_since(at("2026-01-01T00:00:00Z").as_deref(), at("2026-01-01T00:00:00Z").as_deref()));
    // The same start, at two precisions: no restart (never a re-run that
    // running again cannot settle).
    assert!(!started_since(at("2026-01-01T00:00:00Z").as_deref(), at("2026-01-01T00:00:00.734Z").as_deref()));
    assert!(!started_since(at("not a time").as_deref(), at("2026-01-01T00:00:00Z").as_deref()));
    assert!(!started_since(None, at("2026-01-01T00:00:00Z").as_deref()));
    assert!(!started_since(at("2026-01-01T00:00:01Z").as_deref(), None));
}
