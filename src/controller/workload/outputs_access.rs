//! Which Secrets of sensitive outputs each node's agent may touch, by name:
//! it writes those of its own bindings whose role declares
//! `task.sensitiveOutputs`, and reads those its bindings' runs name among
//! their parents (`parents.<role>.secretOutputs.secret`). A Role
//! `girder-outputs-<node>`, bound to the agent's ServiceAccount and owned by
//! the BareMetalNode, says so; the `girder-agent-outputs` admission policy
//! keeps what the agent writes there Opaque and annotated with its node.
//!
//! The names are decided here (pure); the Workload controller applies the
//! Role before it asks a run that needs it.

use crate::api::noderole::{NodeRole, secret_outputs_name};
use crate::controller::node::access;
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// Field manager of these Roles and RoleBindings.
pub const MANAGER: &str = "girder-operator/outputs-access";

/// The Role and RoleBinding of node `node`'s sensitive outputs.
pub fn role_name(node: &str) -> String {
    crate::api::noderole::fit_name(format!("girder-outputs-{node}"))
}

/// The Secrets the agent of a node writes and reads.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Names {
    pub write: BTreeSet<String>,
    pub read: BTreeSet<String>,
}

impl Names {
    pub fn is_empty(&self) -> bool {
        self.write.is_empty() && self.read.is_empty()
    }
}

/// The names for the bindings on one node (pure). `sensitive(role)` says
/// whether a role declares sensitive outputs.
pub fn names<'a>(bindings: impl IntoIterator<Item = &'a NodeRole>, sensitive: impl Fn(&str) -> bool) -> Names {
    let mut names = Names::default();
    for b in bindings {
        if sensitive(&b.spec.role) {
            names.write.insert(secret_outputs_name(&kube::ResourceExt::name_any(b)));
        }
        let inputs = b.status.as_ref().and_then(|s| s.run.as_ref()).map(|r| &r.inputs);
        if let Some(parents) = inputs.and_then(|i| i.get("parents")).and_then(Value::as_object) {
            names.read.extend(parents.values().flat_map(referenced));
        }
    }
    names
}

/// The Secrets a parent entry (or list of them) of the inputs refers to.
pub fn referenced(parent: &Value) -> Vec<String> {
    let one = |p: &Value| p.pointer("/secretOutputs/secret").and_then(Value::as_str).map(str::to_string);
    match parent {
        Value::Array(all) => all.iter().filter_map(one).collect(),
        other => one(other).into_iter().collect(),
    }
}

/// The Role granting `names` to the agent of `node` (pure). Never a rule
/// with no names: RBAC reads an empty `resourceNames` as every name.
pub fn role(node: &str, owner: Option<&Value>, names: &Names) -> Value {
    let mut rules = Vec::new();
    if !names.write.is_empty() {
        rules.push(json!({ "apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "patch"], "resourceNames": names.write }));
    }
    let read: Vec<&String> = names.read.difference(&names.write).collect();
    if !read.is_empty() {
        rules.push(json!({ "apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": read }));
    }
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": metadata(node, owner),
        "rules": rules,
    })
}

fn metadata(node: &str, owner: Option<&Value>) -> Value {
    json!({
        "name": role_name(node),
        "labels": { access::NODE_LABEL: node, "app.kubernetes.io/managed-by": "girder" },
        "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
    })
}

/// The RoleBinding of that Role to the agent's ServiceAccount (pure).
pub fn role_binding(node: &str, namespace: &str, owner: Option<&Value>) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": metadata(node, owner),
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role_name(node) },
        "subjects": [{ "kind": "ServiceAccount", "name": access::name(node), "namespace": namespace }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::noderole::{NodeRoleSpec, NodeRoleStatus, RoleRun};
    use crate::api::role::Task;

    fn binding(role: &str, node: &str, inputs: Value) -> NodeRole {
        let mut b = NodeRole::new(
            &format!("w.{role}.{node}"),
            NodeRoleSpec { workload: "w".into(), role: role.into(), node: node.into() },
        );
        b.status = Some(NodeRoleStatus {
            run: Some(RoleRun {
                id: "r".into(),
                task: Task {
                    script: "true".into(),
                    timeout_seconds: 60,
                    retries: 0,
                    destructive: false,
                    sensitive_outputs: Vec::new(),
                },
                inputs,
                inputs_hash: "h".into(),
                requested: None,
            }),
            ..Default::default()
        });
        b
    }

    #[test]
    fn an_agent_writes_its_own_sensitive_bindings_and_reads_what_its_runs_name() {
        let ca = binding("ca", "n1", json!({ "parents": {} }));
        let node_scoped = json!({ "node": "n1", "outputs": {}, "secretOutputs": { "secret": "girder-out-w.keys.n1", "version": "7", "keys": ["key"] } });
        let cluster = json!([
            { "node": "n1", "outputs": {}, "secretOutputs": { "secret": "girder-out-w.ca.n1", "version": "3", "keys": ["token"] } },
            { "node": "n2", "outputs": {} },
        ]);
        let child = binding("member", "n1", json!({ "parents": { "keys": node_scoped, "ca": cluster } }));
        let names = names([&ca, &child], |role| role == "ca");
        assert_eq!(names.write, BTreeSet::from(["girder-out-w.ca.n1".to_string()]));
        assert_eq!(names.read, BTreeSet::from(["girder-out-w.ca.n1".to_string(), "girder-out-w.keys.n1".to_string()]));
        let role = role("n1", None, &names);
        let rules = role["rules"].as_array().unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0]["verbs"], json!(["get", "patch"]));
        assert_eq!(rules[0]["resourceNames"], json!(["girder-out-w.ca.n1"]));
        // Its own Secret is not listed twice.
        assert_eq!(rules[1]["resourceNames"], json!(["girder-out-w.keys.n1"]));
    }

    #[test]
    fn no_names_no_rules_never_an_empty_name_list() {
        let plain = binding("plain", "n1", json!({ "parents": { "x": { "node": "n1", "outputs": {} } } }));
        let names = names([&plain], |_| false);
        assert!(names.is_empty());
        assert_eq!(role("n1", None, &names)["rules"], json!([]));
        let only_read = Names { write: BTreeSet::new(), read: BTreeSet::from(["girder-out-a".to_string()]) };
        let rules = role("n1", None, &only_read)["rules"].clone();
        assert_eq!(rules.as_array().unwrap().len(), 1);
        assert_eq!(rules[0]["resourceNames"], json!(["girder-out-a"]));
    }

    #[test]
    fn the_role_binds_the_nodes_agent() {
        let rb = role_binding("n1", "lab", None);
        assert_eq!(rb["subjects"][0]["name"], "girder-agent-n1");
        assert_eq!(rb["roleRef"]["name"], "girder-outputs-n1");
    }
}
