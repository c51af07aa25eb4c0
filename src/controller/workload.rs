//! The Workload controller: validates the role graph a workload places and
//! publishes its plan, so the order is visible before anything runs.

use super::role::GuardedRole;
use super::{Context, Error, key};
use crate::api::condition::{self, Condition};
use crate::api::workload::RoleCounts;
use crate::api::{PlanLayer, Workload, WorkloadStatus};
use crate::graph::RoleGraph;
use crate::k8s::{apply_status, manager};
use futures::StreamExt;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, ReflectHandle, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

struct WorkloadContext {
    ctx: Arc<Context>,
    roles: Store<GuardedRole>,
}

/// Decides a Workload's status from the role graph of its namespace (pure).
pub fn decide(workload: &Workload, graph: &RoleGraph, existing: Option<&WorkloadStatus>) -> WorkloadStatus {
    let generation = workload.metadata.generation;
    let placed: Vec<String> = workload.spec.roles.iter().map(|r| r.role.clone()).collect();
    let (plan, decided) = match graph.plan(&placed) {
        Ok(layers) => {
            let plan: Vec<PlanLayer> = layers
                .into_iter()
                .enumerate()
                .map(|(i, layer)| PlanLayer {
                    layer: i32::try_from(i).unwrap_or(i32::MAX),
                    roles: layer.roles,
                    barrier: layer.barrier,
                })
                .collect();
            let summary = format!("{} roles in {} layers", placed.len(), plan.len());
            let conditions = vec![
                Condition::new(
                    "Blocked",
                    false,
                    "PlanReady",
                    format!("{summary}; nothing blocks the plan"),
                    generation,
                ),
                Condition::new(
                    "Ready",
                    false,
                    "AwaitingNodes",
                    format!("{summary}; roles run once nodes are provisioned"),
                    generation,
                ),
                Condition::new("Progressing", false, "AwaitingNodes", "no role is running yet", generation),
                Condition::new("Degraded", false, "AsExpected", "no binding is in Error", generation),
            ];
            (plan, conditions)
        }
        Err(err) => {
            let message = err.to_string();
            let conditions = vec![
                Condition::new("Blocked", true, err.reason(), message.clone(), generation),
                Condition::new("Ready", false, err.reason(), message.clone(), generation),
                Condition::new("Progressing", false, err.reason(), message, generation),
                Condition::new("Degraded", false, "AsExpected", "no binding is in Error", generation),
            ];
            (Vec::new(), conditions)
        }
    };
    let existing_conditions = existing.map(|s| s.conditions.as_slice()).unwrap_or_default();
    WorkloadStatus {
        conditions: condition::merge(existing_conditions, decided),
        observed_generation: generation,
        layer_count: (!plan.is_empty()).then(|| i32::try_from(plan.len()).unwrap_or(i32::MAX)),
        plan,
        roles: workload
            .spec
            .roles
            .iter()
            .map(|r| RoleCounts {
                role: r.role.clone(),
                desired: r.count.or_else(|| r.nodes.as_ref().map(|n| i32::try_from(n.len()).unwrap_or(i32::MAX))),
                ..Default::default()
            })
            .collect(),
    }
}

#[tracing::instrument(skip_all, fields(namespace = guard.namespace().unwrap_or_default(), workload = %guard.name_any()))]
async fn reconcile(guard: Arc<DeserializeGuard<Workload>>, wc: Arc<WorkloadContext>) -> Result<Action, Error> {
    let ctx = &wc.ctx;
    let Some(workload) = super::readable(ctx, guard.as_ref()).await else {
        return Ok(Action::await_change());
    };
    let started = Instant::now();
    let namespace =
        workload.namespace().ok_or_else(|| Error::NoNamespace { kind: "Workload", name: workload.name_any() })?;
    let graph = super::role::graph_of(&wc.roles, &namespace);
    let status = decide(workload, &graph, workload.status.as_ref());
    if workload.status.as_ref() != Some(&status) {
        let api: Api<Workload> = Api::namespaced(ctx.client.clone(), &namespace);
        apply_status(&api, workload, manager::WORKLOAD, &status).await.map_err(|source| Error::StatusWrite {
            kind: "Workload",
            namespace: namespace.clone(),
            name: workload.name_any(),
            source,
        })?;
        ctx.metrics.status_written("Workload");
        let before = workload.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
        super::announce_blocked(ctx, workload, before, &status.conditions, "Plan").await;
    }
    ctx.metrics.reconciled("Workload", started.elapsed());
    ctx.backoff.succeeded(&key(&ObjectRef::from_obj(guard.as_ref())));
    Ok(Action::requeue(Duration::from_secs(3600)))
}

fn error_policy(guard: Arc<DeserializeGuard<Workload>>, err: &Error, wc: Arc<WorkloadContext>) -> Action {
    tracing::warn!(workload = %guard.name_any(), error = %err, "reconcile failed");
    wc.ctx.metrics.failed("Workload", err.metric_label());
    super::warn_later(wc.ctx.clone(), guard.clone(), err);
    Action::requeue(wc.ctx.backoff.failed(&key(&ObjectRef::from_obj(guard.as_ref()))))
}

/// Runs the Workload controller until `shutdown`; `role_changes` re-plans
/// every workload of a namespace whose roles changed.
pub async fn run(
    ctx: Arc<Context>,
    roles: Store<GuardedRole>,
    role_changes: ReflectHandle<GuardedRole>,
    shutdown: CancellationToken,
) {
    let api: Api<DeserializeGuard<Workload>> = match &ctx.namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let controller = Controller::new(api, watcher::Config::default());
    let workloads = controller.store();
    controller
        .watches_shared_stream(role_changes, move |role: Arc<GuardedRole>| {
            let namespace = role.namespace();
            workloads
                .state()
                .iter()
                .filter(|w| w.namespace() == namespace)
                .map(|w| ObjectRef::from_obj(w.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, Arc::new(WorkloadContext { ctx, roles }))
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ConditionStatus, WorkloadRole, WorkloadSpec};
    use crate::graph::{RoleDef, Scope};

    fn workload(roles: &[&str]) -> Workload {
        let mut w = Workload::new(
            "lab",
            WorkloadSpec {
                roles: roles
                    .iter()
                    .map(|r| WorkloadRole { role: r.to_string(), count: Some(3), nodes: None, attributes: None })
                    .collect(),
                ..Default::default()
            },
        );
        w.metadata.generation = Some(7);
        w
    }

    fn graph() -> RoleGraph {
        let def = |name: &str, requires: &[&str], scope| RoleDef {
            name: name.into(),
            requires: requires.iter().map(|s| s.to_string()).collect(),
            scope,
        };
        RoleGraph::new([
            def("etcd", &[], Scope::Node),
            def("etcd-sync", &["etcd"], Scope::Cluster),
            def("loop-a", &["loop-b"], Scope::Node),
            def("loop-b", &["loop-a"], Scope::Node),
        ])
    }

    #[test]
    fn plan_is_published_with_observed_generation() {
        let status = decide(&workload(&["etcd-sync", "etcd"]), &graph(), None);
        assert_eq!(status.plan.len(), 2);
        assert_eq!(status.plan[1].roles, ["etcd-sync"]);
        assert!(status.plan[1].barrier);
        assert_eq!(status.layer_count, Some(2));
        assert_eq!(status.observed_generation, Some(7));
        assert!(status.conditions.iter().all(|c| c.observed_generation == Some(7)));
        assert_eq!(status.roles[0].desired, Some(3));
        let blocked = condition::find(&status.conditions, "Blocked").unwrap();
        assert_eq!(blocked.status, ConditionStatus::False);
    }

    #[test]
    fn cycle_blocks_with_the_cycle_named_and_no_plan() {
        let status = decide(&workload(&["loop-a", "loop-b"]), &graph(), None);
        assert!(status.plan.is_empty());
        let blocked = condition::find(&status.conditions, "Blocked").unwrap();
        assert_eq!(blocked.status, ConditionStatus::True);
        assert_eq!(blocked.reason, "DependencyCycle");
        assert!(blocked.message.contains("loop-a -> loop-b -> loop-a"));
    }

    #[test]
    fn same_inputs_give_an_identical_status() {
        let w = workload(&["etcd", "etcd-sync"]);
        let first = decide(&w, &graph(), None);
        assert_eq!(decide(&w, &graph(), Some(&first)), first);
    }
}
