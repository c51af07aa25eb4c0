//! Role: a unit of configuration applied to a node.

use super::condition::{Condition, conditions_schema};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A piece of configuration with its dependencies, applied to nodes by a Workload.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "girder.dev",
    version = "v1alpha1",
    kind = "Role",
    namespaced,
    doc = "A unit of configuration applied to nodes, with the roles it requires.",
    status = "RoleStatus",
    shortname = "grole",
    category = "girder",
    validation = Rule::new("!has(self.spec.requires) || !(self.metadata.name in self.spec.requires)").message("a role cannot require itself").field_path(".spec.requires"),
    printcolumn(name = "Scope", type_ = "string", json_path = ".spec.scope", description = "Where parents must be Active"),
    printcolumn(name = "Requires", type_ = "string", json_path = ".spec.requires", description = "Parent roles"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status", description = "Dependencies resolved"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct RoleSpec {
    /// Roles (same namespace) that must be Active before this one runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub requires: Vec<RoleName>,
    /// Node: parents must be Active on the same node. Cluster: every binding
    /// of each parent in the workload must be Active first (a sync point).
    #[serde(default)]
    pub scope: RoleScope,
    /// What the node agent runs to apply the role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
    /// Default input attributes (JSON), overridden by the workload, then by the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub attributes: Option<serde_json::Value>,
    /// JSON Schema the merged attributes must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub attributes_schema: Option<serde_json::Value>,
}

/// A role name: a DNS-1123 subdomain.
pub type RoleName = String;

/// Where a role's parents must be Active.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum RoleScope {
    /// On the same node.
    #[default]
    Node,
    /// Everywhere in the workload.
    Cluster,
}

/// What the agent runs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    /// Shell script run by the node agent; it reads its inputs as JSON on stdin
    /// and may print output attributes as JSON on stdout.
    #[schemars(length(min = 1, max = 65536))]
    pub script: String,
    /// How long one run may take before it counts as failed.
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: i32,
    /// How many times a failed run is retried before the binding goes to Error.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    pub retries: i32,
    /// Never re-run once Active (e.g. formatting a disk).
    #[serde(default)]
    pub destructive: bool,
    /// Output keys that are secret (keys, tokens, kubeconfigs): the agent
    /// keeps them out of status and puts them, as strings, in the Secret
    /// `girder-out-<binding>` (owned by the binding). Children find them
    /// among the parent's outputs in their inputs; only their nodes' agents
    /// may read that Secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub sensitive_outputs: Vec<String>,
}

fn default_timeout() -> i32 {
    600
}

/// The schema of a free-form JSON object (attributes, inputs, outputs).
pub(crate) fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Observed state of a Role.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleStatus {
    /// Ready (every required role exists and no cycle runs through this one) and Blocked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The generation of the spec last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
