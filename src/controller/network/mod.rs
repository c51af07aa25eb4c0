//! The Network controller: gives every node that joins a network its
//! addresses on it, and says on the Network how that went.
//!
//! **Where allocations live.** A Network's `status.allocations` is the record
//! of who holds what on it, written by this controller only (field manager
//! `girder-operator/network`). One object per address space means one
//! `resourceVersion` guards every address of that space: each write carries
//! the `resourceVersion` of the Network it was decided from, so a decision
//! made from a stale cache is refused with 409 Conflict and re-decided from
//! fresh state, and two reconciles can never hand out the same address. Node
//! status would spread one address space over many objects with no common
//! version to guard it. A node's `status.addresses` is a copy for its readers,
//! written by the node-network controller ([`super::node_network`]).
//!
//! A 409 is not a failure: the network is decided again from fresh state in
//! 200 to 800 ms, with no backoff and no Warning event. After its own write
//! the controller decides from the object that write returned until the cache
//! has caught up with it, so a burst of node events does not turn into a
//! burst of refused writes.
//!
//! **A restart changes nothing.** Allocations are read back from the Network's
//! status on every reconcile and the ipam rules keep a held address
//! (`Existing`); the decision is a pure function of the spec, the nodes and the
//! stored allocations, so a fresh operator decides the same status and writes
//! nothing.
//!
//! **Alignment under concurrency.** Networks of one `group` give a node the
//! same host part. The networks of a group reconcile concurrently, so they
//! must not each pick a first-free address for the same new node: a node's
//! *anchor* is the first network, by name, of the group that it joins and
//! that has a usable IPv4 definition. Only the anchor picks a first-free
//! address; the other networks wait (condition reason `Aligning`) until the
//! anchor has given the node an address, then align with it. They stop
//! waiting when the anchor cannot give the node one (exhausted, or its hint is
//! refused), so a full anchor never blocks the others.
//!
//! **Releases.** A node that was deleted or no longer lists the network loses
//! its addresses on it. A node that exists but cannot be read keeps what it
//! holds: its spec is unknown, and renumbering a live machine is never an
//! accident.
//!
//! **What the schema cannot check** (a range or CIDR that does not parse, a
//! range outside the CIDR) gives `Ready=False` with reason `InvalidNetwork`;
//! nothing is allocated or released until the spec is fixed.

mod decide;
#[cfg(test)]
mod tests;

pub(super) use decide::bounded_sentences;
pub use decide::{Pools, SpecError, decide, membership, pools};

use super::cache::Deleted;
use super::{Context, Error, key};
use crate::api::condition::{self, Condition};
use crate::api::{BareMetalNode, ConditionStatus, Network};
use crate::k8s::{apply_status_if_unchanged, is_conflict, manager};
use futures::StreamExt;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, ReflectHandle, Store};
use kube::{Api, Resource, ResourceExt};
use rand::Rng;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A Network as the cache holds it: readable or not.
pub type GuardedNetwork = DeserializeGuard<Network>;
/// A BareMetalNode as the cache holds it: readable or not.
pub type GuardedNode = DeserializeGuard<BareMetalNode>;

/// Records an event when a condition turns bad (Warning) or stops being bad
/// (Normal); `bad` says which states are worth a person's attention.
pub(super) async fn announce<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    obj: &K,
    before: &[Condition],
    after: &[Condition],
    type_: &str,
    bad: fn(&Condition) -> bool,
    action: &str,
) {
    let Some(now) = condition::find(after, type_) else {
        return;
    };
    let was = condition::find(before, type_);
    if was.is_some_and(|was| was.status == now.status && was.reason == now.reason) {
        return;
    }
    if bad(now) {
        ctx.event(obj, EventType::Warning, &now.reason, now.message.clone(), action).await;
    } else if was.is_some_and(bad) {
        ctx.event(obj, EventType::Normal, &now.reason, now.message.clone(), action).await;
    }
}

/// The Network a status write returned, while the cache may still hold the
/// version that write replaced.
struct Written {
    replaced: Option<String>,
    network: Arc<Network>,
}

struct NetworkContext {
    ctx: Arc<Context>,
    networks: Store<GuardedNetwork>,
    nodes: Store<GuardedNode>,
    written: Mutex<HashMap<ObjectRef<GuardedNetwork>, Written>>,
}

impl NetworkContext {
    /// What this controller last wrote to the network, if the cache has not
    /// caught up with that write yet: deciding from the cached version would
    /// only be refused with a 409.
    fn fresher_than_cache(&self, object: &ObjectRef<GuardedNetwork>, cached: &Network) -> Option<Arc<Network>> {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let fresher = written
            .get(object)
            .filter(|w| w.replaced == cached.metadata.resource_version && w.network.metadata.uid == cached.metadata.uid)
            .map(|w| w.network.clone());
        if fresher.is_none() {
            written.remove(object);
        }
        fresher
    }

    fn remember(&self, object: ObjectRef<GuardedNetwork>, replaced: Option<String>, network: Network) {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        written.insert(object, Written { replaced, network: Arc::new(network) });
    }

    fn forget(&self, object: &ObjectRef<GuardedNetwork>) {
        self.written.lock().unwrap_or_else(|e| e.into_inner()).remove(object);
    }
}

/// A short, jittered delay before deciding again after a 409 Conflict: the
/// cache is about to catch up, so this is not a failure to back off from.
fn soon() -> Duration {
    Duration::from_millis(rand::rng().random_range(200..=800))
}

#[tracing::instrument(skip_all, fields(namespace = guard.namespace().unwrap_or_default(), network = %guard.name_any()))]
async fn reconcile(guard: Arc<GuardedNetwork>, nc: Arc<NetworkContext>) -> Result<Action, Error> {
    let ctx = &nc.ctx;
    let Some(cached) = super::readable(ctx, guard.as_ref()).await else {
        return Ok(Action::await_change());
    };
    let started = Instant::now();
    let name = cached.name_any();
    let namespace = cached.namespace().ok_or_else(|| Error::NoNamespace { kind: "Network", name: name.clone() })?;
    let object = ObjectRef::from_obj(guard.as_ref());
    let fresher = nc.fresher_than_cache(&object, cached);
    let network: &Network = fresher.as_deref().unwrap_or(cached);

    let node_guards = nc.nodes.state();
    let mut nodes = Vec::new();
    let mut unreadable = BTreeSet::new();
    for guard in node_guards.iter().filter(|g| g.namespace().as_deref() == Some(namespace.as_str())) {
        match &guard.0 {
            Ok(node) => nodes.push(node),
            Err(_) => {
                unreadable.insert(guard.name_any());
            }
        }
    }
    let network_guards = nc.networks.state();
    let others: Vec<&Network> = network_guards
        .iter()
        .filter(|g| g.namespace().as_deref() == Some(namespace.as_str()) && g.name_any() != name)
        .filter_map(|g| g.0.as_ref().ok())
        .collect();
    let status = decide(network, &nodes, &unreadable, &others);

    if network.status.as_ref() != Some(&status) {
        let api: Api<Network> = Api::namespaced(ctx.client.clone(), &namespace);
        match apply_status_if_unchanged(&api, network, manager::NETWORK, &status).await {
            Ok(written) => {
                nc.remember(object.clone(), network.resource_version(), written);
                ctx.metrics.status_written("Network");
                let before = network.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
                let after = &status.conditions;
                let is_true = |c: &Condition| c.status == ConditionStatus::True;
                announce(ctx, network, before, after, "Exhausted", is_true, "Allocate").await;
                announce(ctx, network, before, after, "Conflict", is_true, "Allocate").await;
                let invalid = |c: &Condition| c.reason == "InvalidNetwork";
                announce(ctx, network, before, after, "Ready", invalid, "Allocate").await;
            }
            Err(err) if is_conflict(&err) => {
                tracing::debug!("the network changed since it was read; deciding again from fresh state");
                nc.forget(&object);
                ctx.metrics.reconciled("Network", started.elapsed());
                return Ok(Action::requeue(soon()));
            }
            Err(source) => return Err(Error::StatusWrite { kind: "Network", namespace, name, source }),
        }
    }
    ctx.metrics.reconciled("Network", started.elapsed());
    ctx.backoff.succeeded(&key(&object));
    // Aligning waits on another network's write, which triggers this one; the
    // short requeue only covers a missed trigger.
    let aligning = condition::find(&status.conditions, "Ready").is_some_and(|c| c.reason == "Aligning");
    Ok(Action::requeue(Duration::from_secs(if aligning { 10 } else { 3600 })))
}

fn error_policy(guard: Arc<GuardedNetwork>, err: &Error, nc: Arc<NetworkContext>) -> Action {
    tracing::warn!(network = %guard.name_any(), error = %err, "reconcile failed");
    nc.ctx.metrics.failed("Network", err.metric_label());
    super::warn_later(nc.ctx.clone(), guard.clone(), err);
    Action::requeue(nc.ctx.backoff.failed(&key(&ObjectRef::from_obj(guard.as_ref()))))
}

/// The other Networks of the namespace in the same group as `changed`.
fn group_of(networks: &Store<GuardedNetwork>, changed: &GuardedNetwork) -> Vec<ObjectRef<GuardedNetwork>> {
    let Some(group) = changed.0.as_ref().ok().and_then(|n| n.spec.group.as_ref()) else {
        return Vec::new();
    };
    let namespace = changed.namespace();
    let name = changed.name_any();
    networks
        .state()
        .iter()
        .filter(|n| n.namespace() == namespace && n.name_any() != name)
        .filter(|n| n.0.as_ref().is_ok_and(|n| n.spec.group.as_ref() == Some(group)))
        .map(|n| ObjectRef::from_obj(n.as_ref()))
        .collect()
}

/// The Networks a node joins or holds an address on.
fn networks_of(networks: &Store<GuardedNetwork>, node: &GuardedNode) -> Vec<ObjectRef<GuardedNetwork>> {
    let namespace = node.namespace();
    let name = node.name_any();
    let joined: BTreeSet<&str> = match &node.0 {
        Ok(node) => node.spec.networks.iter().map(|n| n.network.as_str()).collect(),
        Err(_) => BTreeSet::new(),
    };
    networks
        .state()
        .iter()
        .filter(|n| n.namespace() == namespace)
        .filter(|n| {
            joined.contains(n.name_any().as_str())
                || n.0
                    .as_ref()
                    .is_ok_and(|n| n.status.as_ref().is_some_and(|s| s.allocations.iter().any(|a| a.node == name)))
        })
        .map(|n| ObjectRef::from_obj(n.as_ref()))
        .collect()
}

/// What the Network controller last saw of each node's spec: only a change
/// of spec (its generation), of identity or of readability can change a
/// network's allocations, so node status writes trigger nothing.
#[derive(Default)]
struct SeenSpecs(Mutex<HashMap<NodeKey, SpecVersion>>);

/// Namespace and name.
type NodeKey = (Option<String>, String);
/// UID, generation, and whether the object could be read.
type SpecVersion = (Option<String>, Option<i64>, bool);

impl SeenSpecs {
    fn changed(&self, node: &GuardedNode) -> bool {
        let key = (node.namespace(), node.name_any());
        let seen = (node.uid(), node.meta().generation, node.0.is_ok());
        let mut specs = self.0.lock().unwrap_or_else(|e| e.into_inner());
        specs.insert(key, seen.clone()) != Some(seen)
    }

    fn forget(&self, node: &GuardedNode) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&(node.namespace(), node.name_any()));
    }
}

/// The caches and change streams the Network controller runs on.
pub struct Watches {
    pub networks: Store<GuardedNetwork>,
    /// Changes of Networks, to reconcile them.
    pub network_changes: ReflectHandle<GuardedNetwork>,
    /// Changes of Networks, to reconcile the others of their group.
    pub group_changes: ReflectHandle<GuardedNetwork>,
    pub nodes: Store<GuardedNode>,
    pub node_changes: ReflectHandle<GuardedNode>,
    pub deleted_nodes: Deleted<GuardedNode>,
    pub deleted_networks: Deleted<GuardedNetwork>,
}

/// Runs the Network controller until `shutdown`. The caches must be ready:
/// an empty node cache would release every address.
pub async fn run(ctx: Arc<Context>, watches: Watches, shutdown: CancellationToken) {
    let Watches { networks, network_changes, group_changes, nodes, node_changes, deleted_nodes, deleted_networks } =
        watches;
    let seen = Arc::new(SeenSpecs::default());
    let (for_groups, for_nodes, for_deleted_nodes, for_deleted_networks) =
        (networks.clone(), networks.clone(), networks.clone(), networks.clone());
    let seen_changes = seen.clone();
    let deleted_nodes = super::cache::stream(deleted_nodes).flat_map(move |node| {
        seen.forget(&node);
        futures::stream::iter(networks_of(&for_deleted_nodes, &node))
    });
    let deleted_networks = super::cache::stream(deleted_networks)
        .flat_map(move |network| futures::stream::iter(group_of(&for_deleted_networks, &network)));
    let context = NetworkContext { ctx, networks: networks.clone(), nodes, written: Mutex::default() };
    Controller::for_shared_stream(network_changes, networks)
        .watches_shared_stream(group_changes, move |network: Arc<GuardedNetwork>| group_of(&for_groups, &network))
        .watches_shared_stream(node_changes, move |node: Arc<GuardedNode>| {
            if seen_changes.changed(&node) { networks_of(&for_nodes, &node) } else { Vec::new() }
        })
        .reconcile_on(deleted_nodes)
        .reconcile_on(deleted_networks)
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, Arc::new(context))
        .for_each(|_| futures::future::ready(()))
        .await;
}
