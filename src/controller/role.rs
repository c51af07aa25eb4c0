//! The Role controller: says on each Role whether its dependencies resolve.

use super::{Context, Error, key};
use crate::api::condition::{self, Condition};
use crate::api::{Role, RoleScope, RoleStatus};
use crate::graph::{GraphError, RoleDef, RoleGraph, Scope};
use crate::k8s::{apply_status, manager};
use futures::StreamExt;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, ReflectHandle, Store};
use kube::{Api, ResourceExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A Role as the cache holds it: readable or not.
pub type GuardedRole = DeserializeGuard<Role>;

struct RoleContext {
    ctx: Arc<Context>,
    roles: Store<GuardedRole>,
}

/// The graph of the roles in `namespace`, from the cache; roles that cannot
/// be read are named as such.
pub fn graph_of(roles: &Store<GuardedRole>, namespace: &str) -> RoleGraph {
    let mut defs = Vec::new();
    let mut unreadable = Vec::new();
    for guard in roles.state().iter().filter(|r| r.namespace().as_deref() == Some(namespace)) {
        match &guard.0 {
            Ok(role) => defs.push(role_def(role)),
            Err(invalid) => unreadable.push((guard.name_any(), invalid.error.clone())),
        }
    }
    RoleGraph::new(defs).with_unreadable(unreadable)
}

/// A Role as the graph sees it.
pub fn role_def(role: &Role) -> RoleDef {
    RoleDef {
        name: role.name_any(),
        requires: role.spec.requires.clone(),
        scope: match role.spec.scope {
            RoleScope::Node => Scope::Node,
            RoleScope::Cluster => Scope::Cluster,
        },
    }
}

/// Decides a Role's status from the graph of its namespace (pure).
pub fn decide(role: &Role, graph: &RoleGraph, existing: Option<&RoleStatus>) -> RoleStatus {
    let generation = role.metadata.generation;
    let decided = match graph.check_role(&role.name_any()) {
        Ok(()) => {
            let parents = role.spec.requires.len();
            vec![
                Condition::new(
                    "Ready",
                    true,
                    "DependenciesResolved",
                    format!("all {parents} required roles exist and no dependency cycle runs through this role"),
                    generation,
                ),
                Condition::new("Blocked", false, "DependenciesResolved", "nothing blocks this role", generation),
            ]
        }
        Err(err) => blocked(&err, generation),
    };
    let existing_conditions = existing.map(|s| s.conditions.as_slice()).unwrap_or_default();
    RoleStatus { conditions: condition::merge(existing_conditions, decided), observed_generation: generation }
}

fn blocked(err: &GraphError, generation: Option<i64>) -> Vec<Condition> {
    vec![
        Condition::new("Ready", false, err.reason(), err.to_string(), generation),
        Condition::new("Blocked", true, err.reason(), err.to_string(), generation),
    ]
}

#[tracing::instrument(skip_all, fields(namespace = guard.namespace().unwrap_or_default(), role = %guard.name_any()))]
async fn reconcile(guard: Arc<GuardedRole>, rc: Arc<RoleContext>) -> Result<Action, Error> {
    let ctx = &rc.ctx;
    let Some(role) = super::readable(ctx, guard.as_ref()).await else {
        return Ok(Action::await_change());
    };
    let started = Instant::now();
    let namespace = role.namespace().ok_or_else(|| Error::NoNamespace { kind: "Role", name: role.name_any() })?;
    let graph = graph_of(&rc.roles, &namespace);
    let status = decide(role, &graph, role.status.as_ref());
    if role.status.as_ref() != Some(&status) {
        let api: Api<Role> = Api::namespaced(ctx.client.clone(), &namespace);
        apply_status(&api, role, manager::ROLE, &status).await.map_err(|source| Error::StatusWrite {
            kind: "Role",
            namespace: namespace.clone(),
            name: role.name_any(),
            source,
        })?;
        ctx.metrics.status_written("Role");
        let before = role.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
        super::announce_blocked(ctx, role, before, &status.conditions, "Resolve").await;
    }
    ctx.metrics.reconciled("Role", started.elapsed());
    ctx.backoff.succeeded(&key(&ObjectRef::from_obj(guard.as_ref())));
    Ok(Action::requeue(Duration::from_secs(3600)))
}

fn error_policy(guard: Arc<GuardedRole>, err: &Error, rc: Arc<RoleContext>) -> Action {
    tracing::warn!(role = %guard.name_any(), error = %err, "reconcile failed");
    rc.ctx.metrics.failed("Role", err.metric_label());
    super::warn_later(rc.ctx.clone(), guard.clone(), err);
    Action::requeue(rc.ctx.backoff.failed(&key(&ObjectRef::from_obj(guard.as_ref()))))
}

/// Runs the Role controller on the shared Role cache until `shutdown`.
pub async fn run(
    ctx: Arc<Context>,
    roles: Store<GuardedRole>,
    own: ReflectHandle<GuardedRole>,
    siblings: ReflectHandle<GuardedRole>,
    shutdown: CancellationToken,
) {
    let mapper_roles = roles.clone();
    Controller::for_shared_stream(own, roles.clone())
        // A role's status depends on its ancestors: re-check the namespace on any change.
        .watches_shared_stream(siblings, move |changed: Arc<GuardedRole>| {
            let namespace = changed.namespace();
            mapper_roles
                .state()
                .iter()
                .filter(|r| r.namespace() == namespace && r.name_any() != changed.name_any())
                .map(|r| ObjectRef::from_obj(r.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, Arc::new(RoleContext { ctx, roles }))
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ConditionStatus, RoleSpec};

    fn role(name: &str, requires: &[&str]) -> Role {
        let mut role = Role::new(
            name,
            RoleSpec { requires: requires.iter().map(|s| s.to_string()).collect(), ..Default::default() },
        );
        role.metadata.namespace = Some("lab".into());
        role.metadata.generation = Some(3);
        role
    }

    fn graph(roles: &[Role]) -> RoleGraph {
        RoleGraph::new(roles.iter().map(|r| RoleDef {
            name: r.name_any(),
            requires: r.spec.requires.clone(),
            scope: Scope::Node,
        }))
    }

    #[test]
    fn resolved_role_is_ready() {
        let roles = [role("a", &[]), role("b", &["a"])];
        let status = decide(&roles[1], &graph(&roles), None);
        let ready = condition::find(&status.conditions, "Ready").unwrap();
        assert_eq!(ready.status, ConditionStatus::True);
        assert_eq!(ready.observed_generation, Some(3));
        assert_eq!(status.observed_generation, Some(3));
    }

    #[test]
    fn cycle_blocks_and_names_members() {
        let roles = [role("a", &["b"]), role("b", &["a"])];
        let status = decide(&roles[0], &graph(&roles), None);
        let blocked = condition::find(&status.conditions, "Blocked").unwrap();
        assert_eq!(blocked.status, ConditionStatus::True);
        assert_eq!(blocked.reason, "DependencyCycle");
        assert!(blocked.message.contains("a -> b -> a"), "{}", blocked.message);
    }

    #[test]
    fn deciding_again_changes_nothing() {
        let roles = [role("a", &[]), role("b", &["a", "gone"])];
        let first = decide(&roles[1], &graph(&roles), None);
        let second = decide(&roles[1], &graph(&roles), Some(&first));
        assert_eq!(first, second);
    }
}
