//! The DNS registration controller: keeps the site's own DNS server in line
//! with the addresses the Network controller allocated, by RFC 2136 dynamic
//! updates signed with the TSIG key of `spec.dns.tsigSecretRef`.
//!
//! For each Network with `spec.dns`: `<node>.<zone>` gets the node's A and
//! AAAA records and each address its PTR (in `reverseZone`, or the zones
//! derived from the CIDR and the IPv6 prefix); each Workload `dnsPools` entry
//! on the network gets one name holding the addresses of the pool's members
//! (the nodes whose binding of the role is Active, from the Workload's
//! status; see [`plan::desired`]).
//!
//! **Reconciled from the Network side.** Records follow `status.allocations`:
//! a node that is deleted or leaves the network loses its allocation, and
//! then its records. What was published is recorded in the Network's
//! annotation `girder.dev/dns-published` (field manager `girder-operator/dns`,
//! no CRD change), so a removal survives an operator restart. Before an
//! update that adds names, the annotation first records the union of old and
//! new, so a failure half-way never forgets a name that may be in the DNS.
//!
//! **Failures never block allocation.** This controller only reads
//! allocations; it writes the `DNSRegistered` condition (its own entry of the
//! conditions list-map) and the annotation. A server that is down, a refused
//! TSIG key or a refused update sets `DNSRegistered=False` with reason
//! `ServerUnreachable`, `TSIGRefused`, `Refused`... and is retried with the
//! shared capped, jittered backoff (1 s up to 5 min). Everything is
//! re-asserted every [`RESYNC`], so records lost on the server come back.
//!
//! Not done: a Network that is deleted, or whose `spec.dns` is removed,
//! leaves its records in the DNS (deleting them would need a finalizer).

pub mod plan;

use super::{Context, Error};
use crate::api::condition::{self, Condition};
use crate::api::network::DnsRegistration;
use crate::api::{ConditionStatus, Network, Workload};
use crate::dns::{self, Algorithm, TsigKey};
use crate::k8s::apply_status;
use base64::Engine;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use plan::Records;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Field manager of this controller.
pub const MANAGER: &str = "girder-operator/dns";
/// Annotation recording what was published, as JSON.
pub const PUBLISHED: &str = "girder.dev/dns-published";
/// The condition this controller owns on a Network.
pub const CONDITION: &str = "DNSRegistered";
/// How often every record is sent again, even when nothing changed.
pub const RESYNC: Duration = Duration::from_secs(600);
/// Limit on one UPDATE exchange (connect, send, answer).
const TIMEOUT: Duration = Duration::from_secs(10);
/// TTL of the records when the spec sets none.
const DEFAULT_TTL: u32 = 300;

type GuardedNetwork = DeserializeGuard<Network>;
type GuardedWorkload = DeserializeGuard<Workload>;

/// Why the DNS could not be brought in line; becomes the condition.
#[derive(Debug, thiserror::Error)]
enum RegistrationError {
    #[error("cannot read TSIG Secret {name}: {detail}")]
    Secret { name: String, detail: String },
    #[error("TSIG Secret {name} is unusable: {detail}")]
    Key { name: String, detail: String },
    #[error(transparent)]
    Dns(#[from] dns::DnsError),
}

impl RegistrationError {
    fn reason(&self) -> &'static str {
        match self {
            RegistrationError::Secret { .. } => "SecretUnreadable",
            RegistrationError::Key { .. } => "InvalidTSIGKey",
            RegistrationError::Dns(err) => err.reason(),
        }
    }
}

struct DnsContext {
    ctx: Arc<Context>,
    workloads: kube::runtime::reflector::Store<GuardedWorkload>,
    /// When each Network was last fully re-asserted.
    synced: Mutex<HashMap<ObjectRef<GuardedNetwork>, Instant>>,
}

fn backoff_key(object: &ObjectRef<GuardedNetwork>) -> String {
    format!("dns/{}/{}", object.namespace.as_deref().unwrap_or(""), object.name)
}

/// Reads the TSIG key from the Secret (`keyName`, `algorithm`, `secret` in base64).
async fn tsig_key(ctx: &Context, namespace: &str, dns: &DnsRegistration) -> Result<TsigKey, RegistrationError> {
    let name = dns.tsig_secret_ref.name.clone();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let secret = match api.get_opt(&name).await {
        Ok(Some(secret)) => secret,
        Ok(None) => return Err(RegistrationError::Secret { name, detail: "it does not exist".into() }),
        Err(err) => return Err(RegistrationError::Secret { name, detail: err.to_string() }),
    };
    let data = secret.data.unwrap_or_default();
    let field = |key: &str| {
        data.get(key)
            .map(|v| String::from_utf8_lossy(&v.0).trim().to_string())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| RegistrationError::Key { name: name.clone(), detail: format!("key {key:?} is missing") })
    };
    let key_name = field("keyName")?;
    let algorithm_name = field("algorithm")?;
    let algorithm = Algorithm::from_name(&algorithm_name).ok_or_else(|| RegistrationError::Key {
        name: name.clone(),
        detail: format!("algorithm {algorithm_name:?} is not supported; use hmac-sha256 or hmac-sha512"),
    })?;
    let secret =
        base64::engine::general_purpose::STANDARD.decode(field("secret")?).map_err(|_| RegistrationError::Key {
            name: name.clone(),
            detail: "\"secret\" is not base64 (as tsig-keygen writes it)".into(),
        })?;
    if secret.is_empty() {
        return Err(RegistrationError::Key { name, detail: "\"secret\" is empty".into() });
    }
    Ok(TsigKey { name: key_name, algorithm, secret })
}

fn published(network: &Network) -> Records {
    network.annotations().get(PUBLISHED).and_then(|json| serde_json::from_str(json).ok()).unwrap_or_default()
}

async fn write_published(api: &Api<Network>, network: &Network, records: &Records) -> Result<(), kube::Error> {
    let json = serde_json::to_string(records).unwrap_or_default();
    let body = serde_json::json!({
        "apiVersion": Network::api_version(&()),
        "kind": Network::kind(&()),
        "metadata": { "name": network.name_any(), "annotations": { PUBLISHED: json } },
    });
    api.patch(&network.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body)).await?;
    Ok(())
}

/// Why [`register`] stopped: an API write failed (retried as a reconcile
/// error), or the DNS could not be updated (reported as the condition).
enum Failure {
    Api(kube::Error),
    Registration(RegistrationError),
}

impl<E: Into<RegistrationError>> From<E> for Failure {
    fn from(err: E) -> Self {
        Failure::Registration(err.into())
    }
}

/// Records the intent (the union of what was and what will be published),
/// then sends the UPDATEs.
#[allow(clippy::too_many_arguments)]
async fn register(
    ctx: &Context,
    api: &Api<Network>,
    network: &Network,
    dns: &DnsRegistration,
    namespace: &str,
    before: &Records,
    records: &Records,
    messages: &[plan::Message],
) -> Result<(), Failure> {
    if messages.is_empty() {
        return Ok(());
    }
    let key = tsig_key(ctx, namespace, dns).await?;
    let intent = plan::prune(before.union(records));
    if &intent != before {
        write_published(api, network, &intent).await.map_err(Failure::Api)?;
    }
    send(dns, &key, messages).await?;
    Ok(())
}

/// Sends every UPDATE of the plan, stopping at the first failure.
async fn send(dns: &DnsRegistration, key: &TsigKey, messages: &[plan::Message]) -> Result<(), dns::DnsError> {
    let ttl = dns.ttl.and_then(|t| u32::try_from(t).ok()).unwrap_or(DEFAULT_TTL);
    for message in messages {
        dns::send_update(&dns.server, &message.zone, &message.changes, key, ttl, TIMEOUT).await?;
    }
    Ok(())
}

#[tracing::instrument(skip_all, fields(namespace = guard.namespace().unwrap_or_default(), network = %guard.name_any()))]
async fn reconcile(guard: Arc<GuardedNetwork>, dc: Arc<DnsContext>) -> Result<Action, Error> {
    let ctx = &dc.ctx;
    let Some(network) = super::readable(ctx, guard.as_ref()).await else {
        return Ok(Action::await_change());
    };
    let Some(dns) = network.spec.dns.as_ref() else {
        return Ok(Action::await_change());
    };
    if network.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    // Deciding pools from a half-filled Workload cache would delete their records.
    if tokio::time::timeout(Duration::from_secs(1), dc.workloads.wait_until_ready()).await.is_err() {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let started = Instant::now();
    let name = network.name_any();
    let namespace = network.namespace().ok_or_else(|| Error::NoNamespace { kind: "Network", name: name.clone() })?;
    let object = ObjectRef::from_obj(guard.as_ref());
    let api: Api<Network> = Api::namespaced(ctx.client.clone(), &namespace);

    let workload_guards = dc.workloads.state();
    let workloads: Vec<&Workload> = workload_guards
        .iter()
        .filter(|w| w.namespace().as_deref() == Some(namespace.as_str()))
        .filter_map(|w| w.0.as_ref().ok())
        .collect();
    let desired = plan::desired(network, dns, &workloads);
    let records = plan::prune(desired.records);
    let before = published(network);
    let conditions = network.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let generation = network.meta().generation;
    let registered = condition::find(conditions, CONDITION)
        .is_some_and(|c| c.status == ConditionStatus::True && c.observed_generation == generation);
    let due = dc.synced.lock().unwrap_or_else(|e| e.into_inner()).get(&object).is_none_or(|at| at.elapsed() >= RESYNC);
    let full = due || !registered;
    let messages = plan::plan(&records, &before, full);

    let outcome = match register(ctx, &api, network, dns, &namespace, &before, &records, &messages).await {
        Err(Failure::Api(source)) => return Err(Error::StatusWrite { kind: "Network", namespace, name, source }),
        Err(Failure::Registration(failure)) => Err(failure),
        Ok(()) => Ok(()),
    };
    let (condition, action) = match &outcome {
        Ok(()) => {
            if records != before {
                write_published(&api, network, &records).await.map_err(|source| Error::StatusWrite {
                    kind: "Network",
                    namespace: namespace.clone(),
                    name: name.clone(),
                    source,
                })?;
            }
            if full {
                dc.synced.lock().unwrap_or_else(|e| e.into_inner()).insert(object.clone(), Instant::now());
            }
            ctx.backoff.succeeded(&backoff_key(&object));
            let mut message = format!(
                "{} names published to {} (zone {}{})",
                records.names(),
                dns.server,
                dns.zone,
                plan::reverse_zones(network, dns)
                    .0
                    .into_iter()
                    .chain(plan::reverse_zones(network, dns).1)
                    .map(|z| format!(", {z}"))
                    .collect::<String>()
            );
            if !desired.skipped.is_empty() {
                message.push_str("; not published: ");
                message.push_str(&desired.skipped.join("; "));
            }
            (Condition::new(CONDITION, true, "Registered", message, generation), Action::requeue(RESYNC))
        }
        Err(failure) => {
            tracing::warn!(error = %failure, "DNS registration failed; retrying with backoff");
            dc.synced.lock().unwrap_or_else(|e| e.into_inner()).remove(&object);
            let retry = ctx.backoff.failed(&backoff_key(&object));
            let message = format!("{failure}; retrying in {}s", retry.as_secs().max(1));
            (Condition::new(CONDITION, false, failure.reason(), message, generation), Action::requeue(retry))
        }
    };
    let changed = condition::find(conditions, CONDITION).is_none_or(|old| {
        old.status != condition.status
            || old.reason != condition.reason
            || old.observed_generation != condition.observed_generation
            // The retry delay in a failure message changes on every attempt:
            // compare failure messages without it, so a retry writes nothing.
            || old.message.split("; retrying in").next() != condition.message.split("; retrying in").next()
    });
    if changed {
        let merged = condition::merge(conditions, vec![condition]);
        let mine: Vec<&Condition> = merged.iter().filter(|c| c.type_ == CONDITION).collect();
        let status = serde_json::json!({ "conditions": mine });
        apply_status(&api, network, MANAGER, &status).await.map_err(|source| Error::StatusWrite {
            kind: "Network",
            namespace: namespace.clone(),
            name: name.clone(),
            source,
        })?;
        ctx.metrics.status_written("Network");
        let after = merged;
        let bad = |c: &Condition| c.status == ConditionStatus::False;
        super::network::announce(ctx, network, conditions, &after, CONDITION, bad, "RegisterDNS").await;
    }
    ctx.metrics.reconciled("NetworkDNS", started.elapsed());
    Ok(action)
}

fn error_policy(guard: Arc<GuardedNetwork>, err: &Error, dc: Arc<DnsContext>) -> Action {
    tracing::warn!(network = %guard.name_any(), error = %err, "DNS reconcile failed");
    dc.ctx.metrics.failed("NetworkDNS", err.metric_label());
    super::warn_later(dc.ctx.clone(), guard.clone(), err);
    Action::requeue(dc.ctx.backoff.failed(&backoff_key(&ObjectRef::from_obj(guard.as_ref()))))
}

/// The Networks a Workload's DNS pools live on.
fn pool_networks(workload: &GuardedWorkload) -> Vec<ObjectRef<GuardedNetwork>> {
    let Ok(w) = &workload.0 else {
        return Vec::new();
    };
    let namespace = workload.namespace();
    let mut names: Vec<&str> = w.spec.dns_pools.iter().map(|p| p.network.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|n| {
            let r = ObjectRef::new(n);
            match &namespace {
                Some(ns) => r.within(ns),
                None => r,
            }
        })
        .collect()
}

/// Runs the DNS registration controller until `shutdown`.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let (networks, workloads): (Api<GuardedNetwork>, Api<GuardedWorkload>) = match &ctx.namespace {
        Some(ns) => (Api::namespaced(ctx.client.clone(), ns), Api::namespaced(ctx.client.clone(), ns)),
        None => (Api::all(ctx.client.clone()), Api::all(ctx.client.clone())),
    };
    let controller = Controller::new(networks, watcher::Config::default());
    let (store, writer) = kube::runtime::reflector::store();
    // A deleted Workload's pools are removed too; a pool moved to another
    // network leaves the old one until its next change or RESYNC.
    let workload_changes = watcher(workloads, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .filter_map(|event| {
            futures::future::ready(match event {
                Ok(watcher::Event::Apply(w) | watcher::Event::InitApply(w) | watcher::Event::Delete(w)) => Some(w),
                _ => None,
            })
        })
        .flat_map(|w| futures::stream::iter(pool_networks(&w)));
    let dc = DnsContext { ctx, workloads: store, synced: Mutex::default() };
    controller
        .reconcile_on(workload_changes)
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, Arc::new(dc))
        .for_each(|_| futures::future::ready(()))
        .await;
}
