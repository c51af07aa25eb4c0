//! `girder operator` against a real API server: leader election, health
//! endpoints, graceful shutdown, the Role and Workload controllers.

mod support;

use girder::api::condition::find;
use girder::api::{ConditionStatus, Role, Workload};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use std::time::Instant;
use support::*;

const CYCLE: &str = r#"
apiVersion: girder.dev/v1alpha1
kind: Role
metadata: {name: alpha}
spec: {requires: [gamma]}
---
apiVersion: girder.dev/v1alpha1
kind: Role
metadata: {name: beta}
spec: {requires: [alpha]}
---
apiVersion: girder.dev/v1alpha1
kind: Role
metadata: {name: gamma}
spec: {requires: [beta]}
---
apiVersion: girder.dev/v1alpha1
kind: Workload
metadata: {name: loop}
spec:
  roles: [{role: alpha}, {role: beta}, {role: gamma}]
"#;

async fn lease_holder(client: &Client, ns: &str, name: &str) -> Option<(String, i32)> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let spec = leases.get_opt(name).await.ok()??.spec?;
    Some((spec.holder_identity?, spec.lease_transitions.unwrap_or(0)))
}

async fn workload_status(client: &Client, ns: &str, name: &str) -> Option<girder::api::WorkloadStatus> {
    let api: Api<Workload> = Api::namespaced(client.clone(), ns);
    api.get_opt(name).await.ok()??.status
}

/// Waits until the workload's status was decided for its current generation.
async fn settled_workload(client: &Client, ns: &str, name: &str) -> Workload {
    let api: Api<Workload> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("workload {name} to get a status"), || {
        let api = api.clone();
        async move {
            let w = api.get_opt(name).await.ok()??;
            let status = w.status.as_ref()?;
            (status.observed_generation == w.metadata.generation).then_some(w)
        }
    })
    .await
}

#[tokio::test]
async fn sample_workload_plan_has_the_expected_layers() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "samples").await;
    run_ok(kubectl().args(["apply", "-k", "config/samples", "-n", &ns.name]));
    let _operator = Operator::start(OperatorOptions::new(&ns.name, "solo"));

    let workload = settled_workload(&client, &ns.name, "lab-k8s").await;
    let status = workload.status.expect("status");
    let layers: Vec<Vec<String>> = status.plan.iter().map(|l| l.roles.clone()).collect();
    let expected: [&[&str]; 5] =
        [&["etcd-keys", "kube-keys"], &["etcd-ca", "kube-ca"], &["etcd"], &["etcd-healthy"], &["kube-apiserver"]];
    assert_eq!(layers, expected.map(|l| l.iter().map(|r| r.to_string()).collect::<Vec<_>>()));
    let barriers: Vec<bool> = status.plan.iter().map(|l| l.barrier).collect();
    assert_eq!(barriers, [false, true, true, true, true], "Cluster-scoped roles are sync points");
    assert_eq!(status.layer_count, Some(5));
    let blocked = find(&status.conditions, "Blocked").expect("Blocked condition");
    assert_eq!(blocked.status, ConditionStatus::False);
    assert!(status.conditions.iter().all(|c| c.observed_generation == workload.metadata.generation));

    // Every sample role resolves.
    let roles: Api<Role> = Api::namespaced(client.clone(), &ns.name);
    for name in ["etcd-keys", "etcd-ca", "etcd", "etcd-healthy", "kube-keys", "kube-ca", "kube-apiserver"] {
        wait_for(&format!("role {name} Ready"), || {
            let roles = roles.clone();
            async move {
                let role = roles.get_opt(name).await.ok()??;
                let ready = find(&role.status?.conditions, "Ready")?.status == ConditionStatus::True;
                ready.then_some(())
            }
        })
        .await;
    }
}

#[tokio::test]
async fn a_cycle_blocks_the_workload_and_names_the_cycle() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "cycle").await;
    apply_yaml(&ns.name, CYCLE);
    let _operator = Operator::start(OperatorOptions::new(&ns.name, "solo"));

    let workload = settled_workload(&client, &ns.name, "loop").await;
    let status = workload.status.expect("status");
    let blocked = find(&status.conditions, "Blocked").expect("Blocked");
    assert_eq!(blocked.status, ConditionStatus::True);
    assert_eq!(blocked.reason, "DependencyCycle");
    assert!(blocked.message.contains("alpha -> gamma -> beta -> alpha"), "{}", blocked.message);
    assert!(status.plan.is_empty());

    let roles: Api<Role> = Api::namespaced(client.clone(), &ns.name);
    let role = wait_for("role beta Blocked", || {
        let roles = roles.clone();
        async move {
            let role = roles.get_opt("beta").await.ok()??;
            let blocked = find(&role.status.as_ref()?.conditions, "Blocked")?.status == ConditionStatus::True;
            blocked.then_some(role)
        }
    })
    .await;
    assert_eq!(find(&role.status.unwrap().conditions, "Blocked").unwrap().reason, "DependencyCycle");

    // Breaking the cycle unblocks the workload with no other change.
    roles
        .patch("alpha", &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"requires": null}})))
        .await
        .expect("patch alpha");
    let status = wait_for("the workload to be planned", || {
        let client = client.clone();
        let ns = ns.name.clone();
        async move {
            let status = workload_status(&client, &ns, "loop").await?;
            (find(&status.conditions, "Blocked")?.status == ConditionStatus::False).then_some(status)
        }
    })
    .await;
    let layers: Vec<Vec<String>> = status.plan.iter().map(|l| l.roles.clone()).collect();
    assert_eq!(layers, [["alpha"], ["beta"], ["gamma"]].map(|l| l.map(String::from).to_vec()));

    // A Warning event says why it was blocked.
    let events = run_ok(kubectl().args([
        "get",
        "events.events.k8s.io",
        "-n",
        &ns.name,
        "-o",
        "jsonpath={range .items[*]}{.reason} {.type} {.note}{\"\\n\"}{end}",
    ]));
    assert!(events.lines().any(|l| l.starts_with("DependencyCycle Warning") && l.contains("alpha")), "{events}");
}

#[tokio::test]
async fn a_missing_role_blocks_and_is_named() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "missing").await;
    apply_yaml(
        &ns.name,
        "apiVersion: girder.dev/v1alpha1\nkind: Role\nmetadata: {name: app}\nspec: {requires: [database]}\n---\napiVersion: girder.dev/v1alpha1\nkind: Workload\nmetadata: {name: shop}\nspec: {roles: [{role: app}]}\n",
    );
    let _operator = Operator::start(OperatorOptions::new(&ns.name, "solo"));
    let status = settled_workload(&client, &ns.name, "shop").await.status.unwrap();
    let blocked = find(&status.conditions, "Blocked").unwrap();
    assert_eq!((blocked.status, blocked.reason.as_str()), (ConditionStatus::True, "MissingRole"));
    assert!(blocked.message.contains("app requires database"), "{}", blocked.message);
}

#[tokio::test]
async fn a_standby_takes_over_when_the_leader_dies() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "lease").await;
    let fast = |identity| OperatorOptions {
        lease_duration: 4,
        renew_deadline: 3,
        retry_period: 1,
        ..OperatorOptions::new(&ns.name, identity)
    };
    let first = Operator::start(fast("first"));
    let (holder, transitions) = wait_for("the first replica to lead", || {
        let client = client.clone();
        let ns = ns.name.clone();
        async move { lease_holder(&client, &ns, "girder-operator").await.filter(|(h, _)| h == "first") }
    })
    .await;
    assert_eq!(holder, "first");
    let second = Operator::start(fast("second"));
    wait_for("the second replica to stand by", || {
        let logs = second.logs();
        async move { logs.contains("standing by").then_some(()) }
    })
    .await;
    assert_eq!(second.metric("girder_leader"), Some(0.0), "the standby does not lead");
    assert_eq!(first.metric("girder_leader"), Some(1.0));
    // The standby is healthy and ready too: it can take over at any time.
    assert_eq!(second.get("/readyz").map(|r| r.0), Some(200));

    first.signal("KILL");
    let killed = Instant::now();
    let (_, after) = wait_for("the second replica to take over", || {
        let client = client.clone();
        let ns = ns.name.clone();
        async move { lease_holder(&client, &ns, "girder-operator").await.filter(|(h, _)| h == "second") }
    })
    .await;
    eprintln!("takeover {:?} after the leader was killed (lease duration 4 s)", killed.elapsed());
    assert_eq!(after, transitions + 1);

    // The new leader runs the controllers.
    apply_yaml(
        &ns.name,
        "apiVersion: girder.dev/v1alpha1\nkind: Role\nmetadata: {name: base}\nspec: {}\n---\napiVersion: girder.dev/v1alpha1\nkind: Workload\nmetadata: {name: after}\nspec: {roles: [{role: base}]}\n",
    );
    let status = settled_workload(&client, &ns.name, "after").await.status.unwrap();
    assert_eq!(status.layer_count, Some(1));
    assert_eq!(second.metric("girder_leader"), Some(1.0));
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_hands_the_lease_over() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "sigterm").await;
    let mut first = Operator::start(OperatorOptions::new(&ns.name, "first"));
    wait_for("the first replica to lead", || {
        let client = client.clone();
        let ns = ns.name.clone();
        async move { lease_holder(&client, &ns, "girder-operator").await.filter(|(h, _)| h == "first") }
    })
    .await;
    // Probes and metrics.
    assert_eq!(first.get("/healthz").map(|r| r.0), Some(200));
    assert_eq!(first.get("/readyz").map(|r| r.0), Some(200));
    let metrics = first.get("/metrics").expect("metrics").1;
    assert!(metrics.contains("girder_leader 1"), "{metrics}");
    let logs = first.logs();
    let line = logs.lines().next().expect("a log line");
    let parsed: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("JSON log line {line:?}: {e}"));
    assert!(parsed.get("level").is_some() && parsed.get("message").is_some(), "{line}");

    // With the default 15 s lease the standby would wait; a clean stop releases it.
    let second = Operator::start(OperatorOptions::new(&ns.name, "second"));
    wait_for("the second replica to stand by", || {
        let logs = second.logs();
        async move { logs.contains("standing by").then_some(()) }
    })
    .await;
    first.signal("TERM");
    assert_eq!(first.wait_exit().await, Some(0), "exit code after SIGTERM; logs:\n{}", first.logs());
    assert!(first.logs().contains("released the Lease"));
    let (holder, _) = wait_for("the second replica to lead", || {
        let client = client.clone();
        let ns = ns.name.clone();
        async move { lease_holder(&client, &ns, "girder-operator").await.filter(|(h, _)| h == "second") }
    })
    .await;
    assert_eq!(holder, "second");
}

#[tokio::test]
async fn an_unchanged_object_gets_no_status_write() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "nowrite").await;
    run_ok(kubectl().args(["apply", "-k", "config/samples", "-n", &ns.name]));
    let mut first = Operator::start(OperatorOptions::new(&ns.name, "first"));
    let workload = settled_workload(&client, &ns.name, "lab-k8s").await;
    let roles: Api<Role> = Api::namespaced(client.clone(), &ns.name);
    let role_versions = || {
        let roles = roles.clone();
        async move {
            let list = roles.list(&Default::default()).await.ok()?;
            let all_settled = list
                .items
                .iter()
                .all(|r| r.status.as_ref().is_some_and(|s| s.observed_generation == r.metadata.generation));
            all_settled.then(|| list.items.iter().map(|r| r.metadata.resource_version.clone()).collect::<Vec<_>>())
        }
    };
    let roles_before = wait_for("every role to get a status", role_versions).await;
    let settled_addresses = || async {
        let networks: Api<girder::api::Network> = Api::namespaced(client.clone(), &ns.name);
        let nodes: Api<girder::api::BareMetalNode> = Api::namespaced(client.clone(), &ns.name);
        let network = networks.get_opt("provisioning").await.ok()??;
        let planned = network.status.as_ref()?.observed_generation == network.metadata.generation;
        let nodes = nodes.list(&Default::default()).await.ok()?;
        let addressed = nodes
            .items
            .iter()
            // True, not just present: a node still Pending gets its final
            // write from whichever operator runs next.
            .all(|n| {
                n.status.as_ref().is_some_and(|s| {
                    find(&s.conditions, "NetworkReady").is_some_and(|c| c.status == ConditionStatus::True)
                })
            });
        (planned && addressed).then_some(())
    };
    wait_for("the network and every node's addresses to settle", settled_addresses).await;
    first.signal("TERM");
    assert_eq!(first.wait_exit().await, Some(0));

    // A fresh operator reconciles everything again and must write nothing.
    let second = Operator::start(OperatorOptions::new(&ns.name, "second"));
    wait_for("the new operator to reconcile the workload and the roles", || {
        let workloads = second.metric("girder_reconciles_total{kind=\"Workload\"}");
        let roles = second.metric("girder_reconciles_total{kind=\"Role\"}");
        async move { (workloads? >= 1.0 && roles? >= 7.0).then_some(()) }
    })
    .await;
    // Touching a role (not its spec) triggers every workload of the namespace again.
    let reconciles = second.metric("girder_reconciles_total{kind=\"Workload\"}").unwrap();
    roles
        .patch(
            "etcd-healthy",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"touched": "yes"}}})),
        )
        .await
        .expect("label a role");
    wait_for("the workload to be reconciled after the role changed", || {
        let now = second.metric("girder_reconciles_total{kind=\"Workload\"}");
        async move { (now? > reconciles).then_some(()) }
    })
    .await;

    let api: Api<Workload> = Api::namespaced(client.clone(), &ns.name);
    let after = api.get("lab-k8s").await.unwrap();
    assert_eq!(after.metadata.resource_version, workload.metadata.resource_version, "the workload was rewritten");
    // The sample machines' BMCs do not exist here, so their nodes keep
    // counting failed retries; everything else must be left alone.
    for kind in ["Workload", "Role", "Network", "NodeNetwork"] {
        let writes = second.metric(&format!("girder_status_writes_total{{kind=\"{kind}\"}}"));
        assert_eq!(writes, Some(0.0), "{kind} status writes by the second operator");
    }
    let mut roles_after = roles_versions_now(&roles).await;
    let mut expected = roles_before;
    // Only the label patch itself moved etcd-healthy's resourceVersion.
    let list = roles.list(&Default::default()).await.unwrap();
    for (i, r) in list.items.iter().enumerate() {
        if r.metadata.name.as_deref() == Some("etcd-healthy") {
            roles_after.remove(i);
            expected.remove(i);
        }
    }
    assert_eq!(roles_after, expected, "a role status was rewritten");
}

async fn roles_versions_now(roles: &Api<Role>) -> Vec<Option<String>> {
    roles.list(&Default::default()).await.unwrap().items.iter().map(|r| r.metadata.resource_version.clone()).collect()
}
