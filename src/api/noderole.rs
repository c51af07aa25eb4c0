//! NodeRole: one role of one workload bound to one node, with the
//! annealer's state, the run asked of the node's agent and what it reported.
//!
//! The operator creates and owns these (one per workload x role x node,
//! owned by the Workload); people read them (`kubectl get noderoles`) as the
//! as-left record of what ran where. Two writers share the status, each
//! through server-side apply with its own field manager: the operator
//! (`state`, `message`, `run`, `outputs`, ...) and the node's agent
//! (`report` only, enforced by the `girder-agent` admission policy).

use crate::graph::BindingState;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Label naming the workload of a binding.
pub const WORKLOAD_LABEL: &str = "girder.dev/workload";
/// Label naming the role of a binding.
pub const ROLE_LABEL: &str = "girder.dev/role";
/// Label naming the node of a binding (the agent selects its own by it).
pub const NODE_LABEL: &str = "girder.dev/node";
/// Annotation of a Secret of sensitive outputs: the node whose agent writes
/// it (the `girder-agent-outputs` admission policy checks it).
pub const OUTPUTS_NODE_ANNOTATION: &str = "girder.dev/node";

/// A role of a workload bound to a node.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "girder.dev",
    version = "v1alpha1",
    kind = "NodeRole",
    namespaced,
    doc = "One role of a workload bound to one node: the annealer's state, the run asked of the node's agent and its result.",
    status = "NodeRoleStatus",
    shortname = "nr",
    category = "girder",
    selectable = ".spec.workload",
    selectable = ".spec.node",
    validation = Rule::new("self.spec == oldSelf.spec").message("a binding's workload, role and node never change; delete it instead").field_path(".spec"),
    printcolumn(name = "Workload", type_ = "string", json_path = ".spec.workload", description = "Owning workload"),
    printcolumn(name = "Role", type_ = "string", json_path = ".spec.role", description = "Role"),
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.node", description = "BareMetalNode"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state", description = "Annealer state"),
    printcolumn(name = "Message", type_ = "string", json_path = ".status.message", priority = 1, description = "Why"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct NodeRoleSpec {
    /// The Workload that placed this binding.
    #[schemars(length(min = 1, max = 253))]
    pub workload: String,
    /// The Role applied.
    #[schemars(length(min = 1, max = 253))]
    pub role: String,
    /// The BareMetalNode it is applied to.
    #[schemars(length(min = 1, max = 253))]
    pub node: String,
}

/// Observed state of a binding.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeRoleStatus {
    /// The annealer's state: Proposed, Blocked, Todo, Running, Active or Error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<BindingState>,
    /// Why it is in that state, for people: what it waits on, which ancestor
    /// failed, what the task said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Position of the node among the nodes holding the role (0, 1, ...),
    /// stable while the node holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<i32>,
    /// Digest of the inputs the binding would run with now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs_hash: Option<String>,
    /// Digest of the inputs of the run that made the binding Active; a
    /// difference from `inputsHash` means a re-run is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_inputs_hash: Option<String>,
    /// The run asked of the node's agent (set by the operator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RoleRun>,
    /// What the node's agent reported of its latest run (set by the agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<RoleReport>,
    /// Output attributes of the run that made the binding Active; its
    /// children receive them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::role::free_form_object")]
    pub outputs: Option<serde_json::Value>,
    /// The agent that made it Active: when that agent started (the node's
    /// `status.agent.connected`). A node whose agent started again since (a
    /// reboot, a power loss) runs it again, unless it is destructive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_agent: Option<String>,
    /// Where the sensitive outputs of that run are (a Secret; never the
    /// values themselves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_outputs: Option<SecretOutputs>,
    /// Runs started for this binding, all told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs: Option<i32>,
}

/// One run of a role's task on a node, as the operator asks it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleRun {
    /// Unique per run; the agent does each id once.
    #[schemars(length(min = 1, max = 200))]
    pub id: String,
    /// The task, as the Role said when the run was asked.
    pub task: crate::api::Task,
    /// The inputs (JSON): attributes, the node's facts, the parents' outputs.
    #[schemars(schema_with = "super::role::free_form_object")]
    pub inputs: serde_json::Value,
    /// Digest of `inputs`.
    pub inputs_hash: String,
    /// When the operator asked for it (microseconds: the annealer's latency is measured from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<MicroTime>,
}

/// Where a run is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RoleRunState {
    Running,
    Succeeded,
    Failed,
}

/// What the agent reports of a run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleReport {
    /// The run this reports on.
    pub id: String,
    pub state: RoleRunState,
    /// Which attempt (1 for the first; retries count up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i32>,
    /// The task's exit code of the last attempt, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// CamelCase reason of a failure (TaskFailed, TaskTimedOut, AgentRestarted, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What happened, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The last few KiB of the task's output (stdout and stderr, interleaved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8192))]
    pub log_tail: Option<String>,
    /// When the run started on the node (microseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<MicroTime>,
    /// How long the run took, all attempts and pauses together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub milliseconds: Option<i64>,
    /// Output attributes the task declared (on success), less the sensitive ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::role::free_form_object")]
    pub outputs: Option<serde_json::Value>,
    /// Where the sensitive outputs went (on success, when the task declared any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_outputs: Option<SecretOutputs>,
    /// The agent that ran it: when that agent started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

/// A binding's sensitive outputs: which Secret holds them, at which
/// version, under which keys (a new version runs the children again).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretOutputs {
    /// The Secret, in the binding's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub secret: String,
    /// Its resourceVersion after the agent wrote them.
    pub version: String,
    /// The output keys it holds.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub keys: Vec<String>,
}

/// The name of the binding of `role` of `workload` on `node`:
/// `<workload>.<role>.<node>`, or, when that would not fit a name, a
/// shortened one with a digest of the three.
pub fn binding_name(workload: &str, role: &str, node: &str) -> String {
    fit_name(format!("{workload}.{role}.{node}"))
}

/// The Secret holding the sensitive outputs of binding `binding`.
pub fn secret_outputs_name(binding: &str) -> String {
    fit_name(format!("girder-out-{binding}"))
}

/// `full` if it fits an object name, else shortened with a digest of it.
pub fn fit_name(full: String) -> String {
    use sha2::Digest;
    if full.len() <= 253 {
        return full;
    }
    let digest = sha2::Sha256::digest(full.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let mut head: String = full.chars().take(253 - hex.len() - 1).collect();
    while head.ends_with(['.', '-']) {
        head.pop();
    }
    format!("{head}-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_names_are_the_three_names_and_always_fit() {
        assert_eq!(binding_name("k8s", "etcd", "n1"), "k8s.etcd.n1");
        let long = binding_name(&"w".repeat(200), "etcd", &"n".repeat(100));
        assert!(long.len() <= 253, "{}", long.len());
        assert_ne!(long, binding_name(&"w".repeat(200), "etcd", &"n".repeat(99)));
        assert_eq!(long, binding_name(&"w".repeat(200), "etcd", &"n".repeat(100)));
        assert_eq!(secret_outputs_name("k8s.etcd.n1"), "girder-out-k8s.etcd.n1");
        let secret = secret_outputs_name(&long);
        assert!(secret.len() <= 253 && secret.starts_with("girder-out-"), "{secret}");
    }
}
