//! One malformed object never stops the watch of the others: a Role stored
//! under a looser schema (as after a CRD change) is reported, the rest of
//! the namespace is still planned, and what depends on it says why it waits.
//!
//! This binary changes the Role CRD's schema for a moment, so it holds a
//! single test (cargo runs test binaries one after another).

mod support;

use girder::api::condition::find;
use girder::api::{ConditionStatus, Workload};
use kube::Api;
use support::*;

/// Puts the generated Role CRD back, whatever happens in the test.
struct RestoreRoleCrd;

impl RestoreRoleCrd {
    fn now(&self) {
        apply_file("crds/girder.dev_roles.yaml");
    }
}

impl Drop for RestoreRoleCrd {
    fn drop(&mut self) {
        self.now();
    }
}

const ROLES: &str = r#"
apiVersion: girder.dev/v1alpha1
kind: Role
metadata: {name: base}
spec: {}
---
apiVersion: girder.dev/v1alpha1
kind: Role
metadata: {name: app}
spec: {requires: [base]}
---
apiVersion: girder.dev/v1alpha1
kind: Role
metadata: {name: needs-broken}
spec: {requires: [broken]}
---
apiVersion: girder.dev/v1alpha1
kind: Workload
metadata: {name: healthy}
spec: {roles: [{role: base}, {role: app}]}
---
apiVersion: girder.dev/v1alpha1
kind: Workload
metadata: {name: waits}
spec: {roles: [{role: broken}, {role: needs-broken}]}
"#;

#[tokio::test]
async fn a_malformed_role_is_reported_and_the_rest_is_planned() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "malformed").await;
    apply_yaml(&ns.name, ROLES);

    // Loosen the Role schema, store a role the Rust type cannot read, restore.
    let restore = RestoreRoleCrd;
    run_ok(kubectl().args([
        "patch",
        "crd",
        "roles.girder.dev",
        "--type",
        "json",
        "-p",
        r#"[{"op":"remove","path":"/spec/versions/0/schema/openAPIV3Schema/x-kubernetes-validations"},
            {"op":"replace","path":"/spec/versions/0/schema/openAPIV3Schema/properties/spec",
             "value":{"type":"object","x-kubernetes-preserve-unknown-fields":true}}]"#,
    ]));
    let broken =
        "apiVersion: girder.dev/v1alpha1\nkind: Role\nmetadata: {name: broken}\nspec: {scope: Rack, requires: base}\n";
    wait_for("the loosened schema to accept a malformed role", || {
        let mut child = kubectl()
            .args(["create", "-n", &ns.name, "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("kubectl");
        use std::io::Write;
        let _ = child.stdin.take().expect("stdin").write_all(broken.as_bytes());
        let created = child.wait().map(|s| s.success()).unwrap_or(false);
        async move { created.then_some(()) }
    })
    .await;
    restore.now();
    drop(restore);

    let _operator = Operator::start(OperatorOptions::new(&ns.name, "solo"));
    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns.name);
    let planned = |name: &'static str| {
        let workloads = workloads.clone();
        async move {
            wait_for(&format!("workload {name} to get a status"), || {
                let workloads = workloads.clone();
                async move {
                    let w = workloads.get_opt(name).await.ok()??;
                    w.status.filter(|s| s.observed_generation == w.metadata.generation)
                }
            })
            .await
        }
    };
    let healthy = planned("healthy").await;
    assert_eq!(healthy.layer_count, Some(2), "{healthy:?}");
    let waits = planned("waits").await;
    let blocked = find(&waits.conditions, "Blocked").expect("Blocked");
    assert_eq!(blocked.status, ConditionStatus::True);
    assert_eq!(blocked.reason, "UnreadableRole");
    assert!(blocked.message.contains("role broken cannot be read"), "{}", blocked.message);

    let events = wait_for("an InvalidObject event on role broken", || {
        let out = kubectl()
            .args([
                "get",
                "events.events.k8s.io",
                "-n",
                &ns.name,
                "-o",
                "jsonpath={range .items[*]}{.reason} {.regarding.name} {.note}{\"\\n\"}{end}",
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        async move { out.lines().any(|l| l.starts_with("InvalidObject broken")).then_some(out) }
    })
    .await;
    assert!(events.contains("cannot read Role broken"), "{events}");
}
