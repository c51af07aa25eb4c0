//! Workload: a set of roles placed on a set of nodes.

use super::condition::{Condition, conditions_schema};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Roles placed on nodes, applied in dependency order until the whole thing is up.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "girder.dev",
    version = "v1alpha1",
    kind = "Workload",
    namespaced,
    doc = "A set of roles placed on a set of nodes, applied in dependency order.",
    status = "WorkloadStatus",
    shortname = "wl",
    category = "girder",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Every role Active"
    ),
    printcolumn(
        name = "Blocked",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Blocked\")].status",
        description = "Something must be fixed first"
    ),
    printcolumn(
        name = "Layers",
        type_ = "integer",
        json_path = ".status.layerCount",
        description = "Layers in the plan"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Blocked\")].reason",
        priority = 1,
        description = "Why blocked"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpec {
    /// Which BareMetalNodes (same namespace) the workload may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// The roles to place, each on a number of nodes or on named nodes.
    #[schemars(length(min = 1, max = 128))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["role"]))]
    pub roles: Vec<WorkloadRole>,
    /// DNS round-robin names whose records are the addresses of the nodes holding a role.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub dns_pools: Vec<DnsPool>,
    /// How changes roll out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
}

/// One role of a workload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("!(has(self.count) && has(self.nodes))").message("set either count or nodes, not both").field_path(".nodes"))]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRole {
    /// Name of the Role (same namespace).
    #[schemars(length(min = 1, max = 253))]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub role: String,
    /// On how many of the selected nodes; all of them when neither count nor nodes is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub count: Option<i32>,
    /// On exactly these BareMetalNodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 10000))]
    pub nodes: Option<Vec<String>>,
    /// Attribute overrides for this role in this workload (JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::role::free_form_object")]
    pub attributes: Option<serde_json::Value>,
    /// Attribute overrides for this role on one node, by node name (JSON);
    /// they override `attributes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::role::free_form_object")]
    pub node_attributes: Option<std::collections::BTreeMap<String, serde_json::Value>>,
}

/// A DNS round-robin pool.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DnsPool {
    /// Fully qualified DNS name of the pool, e.g. `etcd.lab.example.com`.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Role whose nodes' addresses make up the pool.
    #[schemars(length(min = 1, max = 253))]
    pub role: String,
    /// Network whose addresses are published.
    #[schemars(length(min = 1, max = 253))]
    pub network: String,
}

/// Rollout strategy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// At most this many tasks of this workload run at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_in_flight: Option<i32>,
}

/// Observed state of a Workload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    /// Ready, Progressing, Blocked, Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The generation of the spec last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The order roles run in: layer 0 first; a role starts only after its parents' layers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<PlanLayer>,
    /// Number of layers in the plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_count: Option<i32>,
    /// Per-role binding counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<RoleCounts>,
}

/// One layer of the plan.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanLayer {
    /// Position in the order, from 0.
    pub layer: i32,
    /// Roles in this layer, sorted by name.
    pub roles: Vec<String>,
    /// True when a role of this layer is Cluster-scoped: it waits for every
    /// binding of its parents in the workload, so the layer is a sync point.
    #[serde(default)]
    pub barrier: bool,
}

/// Binding counts of one role.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleCounts {
    /// Role name.
    pub role: String,
    /// How many nodes should hold it; absent means every selected node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<i32>,
    /// Bindings per annealer state.
    #[serde(default)]
    pub proposed: i32,
    /// Bindings waiting on a parent.
    #[serde(default)]
    pub blocked: i32,
    /// Bindings ready to run.
    #[serde(default)]
    pub todo: i32,
    /// Bindings running.
    #[serde(default)]
    pub running: i32,
    /// Bindings done.
    #[serde(default)]
    pub active: i32,
    /// Bindings failed.
    #[serde(default)]
    pub error: i32,
    /// The nodes holding the role, in index order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// The nodes whose binding of the role is Active and whose agent sends
    /// heartbeats: the members of the role's DNS pools. A node that goes
    /// down leaves them until its agent is back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active_nodes: Vec<String>,
}
