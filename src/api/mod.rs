//! The girder custom resources (group `girder.dev`, version `v1alpha1`).

// Repeated `printcolumn(type_ = ...)` entries in `#[kube(...)]` are separate
// columns, not duplicated attributes.
#![allow(clippy::duplicated_attributes)]

pub mod condition;
pub mod network;
pub mod node;
pub mod noderole;
pub mod provisioning;
pub mod role;
pub mod workload;

pub use condition::{Condition, ConditionStatus};
pub use network::{Network, NetworkSpec, NetworkStatus};
pub use node::{BareMetalNode, BareMetalNodeSpec, BareMetalNodeStatus};
pub use noderole::{NodeRole, NodeRoleSpec, NodeRoleStatus};
pub use role::{Role, RoleScope, RoleSpec, RoleStatus, Task};
pub use workload::{PlanLayer, Workload, WorkloadRole, WorkloadSpec, WorkloadStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every girder kind.
pub const GROUP: &str = "girder.dev";

/// Every girder CRD, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![BareMetalNode::crd(), Network::crd(), Role::crd(), Workload::crd(), NodeRole::crd()]
}
