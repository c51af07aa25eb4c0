//! The small surface girder uses to talk to the API server: server-side
//! apply of status, and waiting for the CRDs.

use crate::api;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, CustomResourceExt, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::time::Duration;

/// Field manager of each component, so `managedFields` says who wrote what.
pub mod manager {
    pub const NODE: &str = "girder-operator/node";
    pub const ROLE: &str = "girder-operator/role";
    pub const WORKLOAD: &str = "girder-operator/workload";
    /// The Workload controller's writes to the NodeRoles it owns.
    pub const ANNEALER: &str = "girder-operator/annealer";
    pub const NETWORK: &str = "girder-operator/network";
    pub const NODE_NETWORK: &str = "girder-operator/node-network";
}

/// Writes `status` with server-side apply, `apiVersion` and `kind` in the body.
pub async fn apply_status<K>(api: &Api<K>, obj: &K, manager: &str, status: &impl Serialize) -> kube::Result<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(&obj.name_any(), &PatchParams::apply(manager).force(), &Patch::Apply(&body)).await
}

/// Like [`apply_status`], with the `resourceVersion` of `obj` as a precondition:
/// if the object changed since it was read, the API server refuses the write
/// with 409 Conflict instead of applying a decision made from stale state.
pub async fn apply_status_if_unchanged<K>(
    api: &Api<K>,
    obj: &K,
    manager: &str,
    status: &impl Serialize,
) -> kube::Result<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    apply_status_at(api, &obj.name_any(), obj.resource_version().as_deref(), manager, status).await
}

/// [`apply_status`] to the object `name` as it was at `resource_version`
/// (no precondition when `None`).
pub async fn apply_status_at<K>(
    api: &Api<K>,
    name: &str,
    resource_version: Option<&str>,
    manager: &str,
    status: &impl Serialize,
) -> kube::Result<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": { "name": name, "resourceVersion": resource_version },
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(manager).force(), &Patch::Apply(&body)).await
}

/// Whether a write was refused because the object changed since it was read.
pub fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.is_conflict())
}

/// Waits until every girder CRD is Established, logging what it waits for
/// every `every`, until `shutdown` fires.
pub async fn wait_for_crds(client: Client, every: Duration, shutdown: tokio_util::sync::CancellationToken) -> bool {
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    let names: Vec<String> =
        [api::BareMetalNode::crd_name(), api::Network::crd_name(), api::Role::crd_name(), api::Workload::crd_name()]
            .iter()
            .map(|s| s.to_string())
            .collect();
    for name in names {
        loop {
            let wait =
                tokio::time::timeout(every, await_condition(crds.clone(), &name, conditions::is_crd_established()));
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                done = wait => match done {
                    Ok(Ok(_)) => break,
                    Ok(Err(err)) => tracing::warn!(crd = %name, error = %err, "cannot watch the CRD; retrying"),
                    Err(_) => tracing::warn!(crd = %name, "waiting for the CRD to be installed and Established (kubectl apply -f crds/)"),
                },
            }
        }
        tracing::info!(crd = %name, "CRD established");
    }
    true
}
