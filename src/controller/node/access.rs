//! What a node's agent may do in the Kubernetes API, and the switch that
//! revokes it.
//!
//! The agent talks to the API server itself, as its own node and nothing
//! else, in the manner of the kubelet's NodeRestriction:
//!
//! - a ServiceAccount `girder-agent-<node>` per node, and a Role (with its
//!   RoleBinding) that names every object it may touch by `resourceNames`:
//!   its BareMetalNode (read; status write), its heartbeat Lease, a token for
//!   itself (renewal), and the user-data Secret its run needs; and the
//!   NodeRoles of its namespace (read; status write), which the
//!   `girder-agent-roles` policy narrows to the report of its own;
//! - the ValidatingAdmissionPolicy `girder-agent` (config/rbac) does what RBAC
//!   cannot: an agent may change only `status.agent` of its node, and only
//!   for the session the operator expects; its tokens must be bound to its
//!   own agent Secret and live at most an hour;
//! - the agent Secret `girder-agent-<node>` is the session: every token is
//!   bound to it, so deleting it (deprovisioning, maintenance, deletion,
//!   a retry in a new session) revokes them all at once. It holds no data.
//!
//! Tokens are minted by girder pxe, which hands one out once per session in
//! exchange for the nonce of the node's iPXE script (see `crate::pxe::enrol`).

use crate::api::BareMetalNode;
use crate::api::provisioning::AgentRun;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

/// Field manager of the access objects.
pub const MANAGER: &str = "girder-operator/agent-access";
/// Prefix of every agent object's name.
pub const PREFIX: &str = "girder-agent-";
/// Label naming the node an agent object belongs to.
pub const NODE_LABEL: &str = "girder.dev/agent-node";
/// Annotation of the agent Secret: the session it stands for.
pub const SESSION_ANNOTATION: &str = "girder.dev/session";
/// Held while a node's agent objects exist, so deleting the node removes them
/// (owner references alone need the garbage collector, and revocation must
/// not wait for it).
pub const FINALIZER: &str = "girder.dev/agent-access";

/// `girder-agent-<node>`: the name of every agent object of a node.
pub fn name(node: &str) -> String {
    format!("{PREFIX}{node}")
}

/// Why the agent's access could not be arranged.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("node name {0:?} is too long for its agent's objects (girder-agent-<name> must fit in 253 characters)")]
    NameTooLong(String),
    #[error("cannot {what} {kind} {namespace}/{name}: {source}")]
    Api { what: &'static str, kind: &'static str, namespace: String, name: String, source: Box<kube::Error> },
}

impl AccessError {
    pub fn reason(&self) -> &'static str {
        match self {
            AccessError::NameTooLong(_) => "NodeNameTooLong",
            AccessError::Api { .. } => "AgentAccessFailed",
        }
    }
}

fn owner(node: &BareMetalNode) -> Option<OwnerReference> {
    node.controller_owner_ref(&())
}

fn labels(node: &str) -> serde_json::Value {
    json!({ NODE_LABEL: node, "app.kubernetes.io/managed-by": "girder" })
}

/// The Role of the node's agent, naming each object it may touch (pure).
pub fn role(node: &BareMetalNode, run: Option<&AgentRun>) -> serde_json::Value {
    let node_name = node.name_any();
    let own = name(&node_name);
    let mut rules = vec![
        json!({ "apiGroups": ["girder.dev"], "resources": ["baremetalnodes"], "verbs": ["get", "list", "watch"], "resourceNames": [node_name] }),
        json!({ "apiGroups": ["girder.dev"], "resources": ["baremetalnodes/status"], "verbs": ["get", "patch", "update"], "resourceNames": [node_name] }),
        json!({ "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "update", "patch"], "resourceNames": [own] }),
        json!({ "apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"], "resourceNames": [own] }),
        // Its role tasks: every NodeRole of the namespace may be read (the
        // agent selects its own by spec.node; inputs hold no secrets); the
        // girder-agent-roles policy lets it write only the report of its own.
        json!({ "apiGroups": ["girder.dev"], "resources": ["noderoles"], "verbs": ["get", "list", "watch"] }),
        json!({ "apiGroups": ["girder.dev"], "resources": ["noderoles/status"], "verbs": ["get", "patch", "update"] }),
    ];
    if let Some(secret) = run.and_then(|r| r.user_data.as_ref()) {
        rules.push(
            json!({ "apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": [secret.name] }),
        );
    }
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": { "name": own, "labels": labels(&node_name), "ownerReferences": owner(node).into_iter().collect::<Vec<_>>() },
        "rules": rules,
    })
}

struct Apis {
    namespace: String,
    service_accounts: Api<ServiceAccount>,
    roles: Api<Role>,
    bindings: Api<RoleBinding>,
    leases: Api<Lease>,
    secrets: Api<Secret>,
}

impl Apis {
    fn new(client: &Client, namespace: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            service_accounts: Api::namespaced(client.clone(), namespace),
            roles: Api::namespaced(client.clone(), namespace),
            bindings: Api::namespaced(client.clone(), namespace),
            leases: Api::namespaced(client.clone(), namespace),
            secrets: Api::namespaced(client.clone(), namespace),
        }
    }

    fn error(&self, what: &'static str, kind: &'static str, name: &str) -> impl FnOnce(kube::Error) -> AccessError {
        let (namespace, name) = (self.namespace.clone(), name.to_string());
        move |source| AccessError::Api { what, kind, namespace, name, source: Box::new(source) }
    }
}

fn checked_name(node: &BareMetalNode) -> Result<String, AccessError> {
    let node_name = node.name_any();
    let own = name(&node_name);
    if own.len() > 253 {
        return Err(AccessError::NameTooLong(node_name));
    }
    Ok(own)
}

/// Makes sure the agent's ServiceAccount, Role, RoleBinding and heartbeat
/// Lease exist as they should for `run` (server-side apply; idempotent).
pub async fn grant(
    client: &Client,
    node: &BareMetalNode,
    run: Option<&AgentRun>,
    lease_seconds: i32,
) -> Result<(), AccessError> {
    let own = checked_name(node)?;
    let node_name = node.name_any();
    let apis = Apis::new(client, &node.namespace().unwrap_or_default());
    let params = PatchParams::apply(MANAGER).force();
    let owners: Vec<OwnerReference> = owner(node).into_iter().collect();
    let meta = json!({ "name": own, "labels": labels(&node_name), "ownerReferences": owners });
    let account = json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta, "automountServiceAccountToken": false });
    apis.service_accounts.patch(&own, &params, &Patch::Apply(&account)).await.map_err(apis.error(
        "apply",
        "ServiceAccount",
        &own,
    ))?;
    apis.roles
        .patch(&own, &params, &Patch::Apply(&role(node, run)))
        .await
        .map_err(apis.error("apply", "Role", &own))?;
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": meta,
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": own },
        "subjects": [{ "kind": "ServiceAccount", "name": own, "namespace": apis.namespace }],
    });
    apis.bindings.patch(&own, &params, &Patch::Apply(&binding)).await.map_err(apis.error(
        "apply",
        "RoleBinding",
        &own,
    ))?;
    // The agent renews it (holderIdentity, renewTime); the operator sets only
    // how long a renewal counts.
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": meta,
        "spec": { "leaseDurationSeconds": lease_seconds },
    });
    apis.leases.patch(&own, &params, &Patch::Apply(&lease)).await.map_err(apis.error("apply", "Lease", &own))?;
    Ok(())
}

/// Opens session `session`: grants the access, then re-creates the agent
/// Secret, which revokes every token of an earlier session.
pub async fn open_session(
    client: &Client,
    node: &BareMetalNode,
    session: &str,
    run: Option<&AgentRun>,
    lease_seconds: i32,
) -> Result<(), AccessError> {
    grant(client, node, run, lease_seconds).await?;
    close_session(client, node).await?;
    let own = checked_name(node)?;
    let apis = Apis::new(client, &node.namespace().unwrap_or_default());
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {
            "name": own,
            "labels": labels(&node.name_any()),
            "annotations": { SESSION_ANNOTATION: session },
            "ownerReferences": owner(node).into_iter().collect::<Vec<_>>(),
        },
        "type": "Opaque",
    }))
    .map_err(|e| AccessError::Api {
        what: "build",
        kind: "Secret",
        namespace: apis.namespace.clone(),
        name: own.clone(),
        source: Box::new(kube::Error::SerdeError(e)),
    })?;
    apis.secrets.create(&PostParams::default(), &secret).await.map_err(apis.error("create", "Secret", &own))?;
    Ok(())
}

/// Deletes the agent Secret: every token of the session stops working.
pub async fn close_session(client: &Client, node: &BareMetalNode) -> Result<(), AccessError> {
    let own = checked_name(node)?;
    let apis = Apis::new(client, &node.namespace().unwrap_or_default());
    delete(&apis.secrets, &own, "Secret", &apis).await
}

/// Removes everything the agent had (the node is going).
pub async fn revoke_all(client: &Client, node: &BareMetalNode) -> Result<(), AccessError> {
    let Ok(own) = checked_name(node) else { return Ok(()) };
    let apis = Apis::new(client, &node.namespace().unwrap_or_default());
    delete(&apis.secrets, &own, "Secret", &apis).await?;
    delete(&apis.bindings, &own, "RoleBinding", &apis).await?;
    delete(&apis.roles, &own, "Role", &apis).await?;
    delete(&apis.service_accounts, &own, "ServiceAccount", &apis).await?;
    delete(&apis.leases, &own, "Lease", &apis).await
}

async fn delete<K>(api: &Api<K>, name: &str, kind: &'static str, apis: &Apis) -> Result<(), AccessError>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(err) => Err(apis.error("delete", kind, name)(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::BareMetalNodeSpec;
    use crate::api::node::SecretReference;
    use crate::api::provisioning::RunAction;

    fn node() -> BareMetalNode {
        let mut node = BareMetalNode::new("n1", BareMetalNodeSpec::default());
        node.metadata.namespace = Some("lab".into());
        node.metadata.uid = Some("uid-1".into());
        node
    }

    #[test]
    fn the_role_names_every_object_and_nothing_else() {
        let role = role(&node(), None);
        let rules = role["rules"].as_array().unwrap();
        let named = |r: &&serde_json::Value| r["resources"][0].as_str().is_some_and(|r| !r.starts_with("noderoles"));
        assert!(
            rules.iter().filter(named).all(|r| r["resourceNames"].as_array().is_some_and(|n| n.len() == 1)),
            "{role}"
        );
        assert_eq!(rules.iter().filter(named).count(), 4, "{role}");
        assert_eq!(rules[0]["resourceNames"][0], "n1");
        assert_eq!(rules[2]["resourceNames"][0], "girder-agent-n1");
        assert!(!role.to_string().contains("secrets"), "no Secret without user-data: {role}");
        assert_eq!(role["metadata"]["ownerReferences"][0]["uid"], "uid-1");

        let run = AgentRun {
            id: "r".into(),
            action: RunAction::Deploy,
            image: None,
            root_device_hints: None,
            user_data: Some(SecretReference { name: "n1-user-data".into() }),
            cleaning: None,
        };
        let role = super::role(&node(), Some(&run));
        let secrets = role["rules"].as_array().unwrap().iter().find(|r| r["resources"][0] == "secrets").unwrap();
        assert_eq!(secrets["resourceNames"], json!(["n1-user-data"]));
        assert_eq!(secrets["verbs"], json!(["get"]));
    }

    #[test]
    fn names_that_do_not_fit_are_refused() {
        let mut long = node();
        long.metadata.name = Some("x".repeat(250));
        assert_eq!(checked_name(&long).unwrap_err().reason(), "NodeNameTooLong");
        assert_eq!(checked_name(&node()).unwrap(), "girder-agent-n1");
    }
}
