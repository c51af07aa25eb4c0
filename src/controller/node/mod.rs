//! The BareMetalNode controller: drives each machine through its lifecycle
//! ([`lifecycle`], pure) by its BMC ([`pool`]) and its agent's access
//! ([`access`]).
//!
//! A reconcile asks [`lifecycle::decide`] what to do next, does that one
//! piece of I/O, records the outcome and asks again, until nothing is left
//! to do; the status is written when the phase changes (so a slow BMC, and
//! 30 s answers are common, shows where it is), before anything the machine
//! or its agent sees (a boot, a power change), and at the end. Wrong
//! credentials, an unreachable BMC or a failed call become conditions and
//! `status.error`, retried with capped backoff kept by this controller
//! alone; a change of the credentials Secret retries at once. `maintenance`
//! stops every BMC call and revokes the agent's session. Deleting a node
//! powers it off first (finalizer), unless it is detached or in maintenance,
//! and removes its agent's access.

pub mod access;
pub mod lifecycle;
pub mod pool;

use super::{Backoff, Context, Error, key};
use crate::api::condition::{self, Condition};
use crate::api::node::NodeError;
use crate::api::{BareMetalNode, BareMetalNodeStatus};
use crate::bmc::{Bmc, BmcAddress, BmcError, BootDevice, BootOverride, PowerAction, PowerState, Scheme};
use crate::k8s::manager;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::utils::{Predicate, PredicateConfig};
use kube::runtime::{WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Resource, ResourceExt};
use lifecycle::{Decision, Facts, Io, Liveness, Requeue};
use pool::{BmcPool, ConnectError};
use rand::Rng;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Held while girder owes the node a power-off before it goes.
pub const FINALIZER: &str = "girder.dev/power-off";
/// On a node: delete it without touching its power.
pub const DETACHED: &str = "girder.dev/detached";
/// On a node girder pxe created for a machine nobody declared.
pub const DISCOVERED_LABEL: &str = "girder.dev/discovered";

/// How the controller runs.
#[derive(Clone, Copy, Debug)]
pub struct NodeSettings {
    pub lifecycle: lifecycle::Settings,
    pub bmc_timeout: Duration,
    /// Nodes reconciled at once (each is a conversation with its BMC).
    pub max_concurrent_reconciles: u16,
    /// How long an agent's heartbeat counts (the Lease's duration).
    pub agent_lease_seconds: i32,
}

struct NodeContext {
    ctx: Arc<Context>,
    settings: NodeSettings,
    pool: BmcPool,
    /// The agents' heartbeat Leases.
    leases: Store<Lease>,
    /// This controller's own backoff: another controller's success must
    /// never reset it (a refused password would be retried every second).
    backoff: Backoff,
    /// The last power action asked of each node's BMC and when, until its
    /// power is what was asked for ([`lifecycle::Facts::power_asked`]).
    power_asked: std::sync::Mutex<HashMap<String, (PowerAction, jiff::Timestamp)>>,
}

/// Which condition a failure speaks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The credentials Secret is missing or incomplete: no BMC was asked.
    Secret,
    /// The BMC answered and refused the credentials.
    Refused,
    /// The BMC did not answer, or a call to it failed.
    Bmc,
    /// The agent's access objects could not be written.
    Access,
}

/// What a failed step means for the conditions and `status.error` (pure).
pub fn record_failure(
    status: &mut BareMetalNodeStatus,
    generation: Option<i64>,
    error_type: &str,
    (failure, reason, message): (Failure, &str, &str),
    now: Time,
) {
    let mut decided = vec![Condition::new("Ready", false, reason, message, generation)];
    match failure {
        Failure::Secret | Failure::Refused => {
            decided.push(Condition::new("CredentialsValid", false, reason, message, generation))
        }
        Failure::Bmc => decided.push(Condition::new("BMCReachable", false, reason, message, generation)),
        Failure::Access => {}
    }
    if failure == Failure::Refused {
        decided.push(Condition::new("BMCReachable", true, "Answered", "the BMC answers", generation));
    }
    status.conditions = condition::merge(&status.conditions, decided);
    let (count, since) = match &status.error {
        Some(previous) if previous.type_ == error_type && previous.message == message => {
            (previous.count.saturating_add(1), previous.since.clone())
        }
        _ => (1, now),
    };
    status.error = Some(NodeError { type_: error_type.to_string(), message: message.to_string(), count, since });
}

fn now() -> Time {
    Time(jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap_or_else(|_| jiff::Timestamp::now()))
}

/// The `status.error` types of failed I/O, recorded by the executor.
const IO_ERRORS: [&str; 4] = ["RegistrationError", "InspectionError", "PowerManagementError", "AgentAccessError"];

/// The condition types this controller decides; others (NetworkReady...)
/// belong to other field managers and are never sent from here.
const OWN_CONDITIONS: [&str; 7] =
    ["AgentConnected", "BMCReachable", "CredentialsValid", "Inspected", "PoweredOn", "Provisioned", "Ready"];

/// The part of a node's status this controller owns, in a stable order.
pub fn owned(status: &BareMetalNodeStatus) -> BareMetalNodeStatus {
    let mut conditions: Vec<Condition> =
        status.conditions.iter().filter(|c| OWN_CONDITIONS.contains(&c.type_.as_str())).cloned().collect();
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    BareMetalNodeStatus {
        phase: status.phase,
        conditions,
        observed_generation: status.observed_generation,
        power_state: status.power_state.clone(),
        soft_power_off_since: status.soft_power_off_since.clone(),
        hardware: status.hardware.clone(),
        error: status.error.clone(),
        operation_history: status.operation_history.clone(),
        provisioning: status.provisioning.clone(),
        addresses: Vec::new(),
        roles: Vec::new(),
        agent: None,
    }
}

/// The node's status as this controller last saw it written, and the
/// object version it belongs to.
struct Written {
    status: BareMetalNodeStatus,
    version: Option<String>,
}

impl Written {
    fn of(node: &BareMetalNode) -> Self {
        Self { status: node.status.clone().unwrap_or_default(), version: node.resource_version() }
    }
}

impl NodeContext {
    /// The last power action asked of the node's BMC, if its power (when
    /// just read) is not yet what was asked for; forgotten once it is.
    fn power_asked(&self, node_key: &str, power: Option<PowerState>) -> Option<(PowerAction, jiff::Timestamp)> {
        let mut asked = self.power_asked.lock().unwrap_or_else(|e| e.into_inner());
        let last = asked.get(node_key).copied()?;
        if power == Some(last.0.target_state()) {
            asked.remove(node_key);
            return None;
        }
        Some(last)
    }

    /// Remembers that `action` was just asked of the node's BMC.
    fn asked_power(&self, node_key: &str, action: PowerAction) -> (PowerAction, jiff::Timestamp) {
        let asked = (action, jiff::Timestamp::now());
        self.power_asked.lock().unwrap_or_else(|e| e.into_inner()).insert(node_key.to_string(), asked);
        asked
    }

    /// Forgets everything kept about a node that is gone.
    async fn forget(&self, node_key: &str) {
        self.power_asked.lock().unwrap_or_else(|e| e.into_inner()).remove(node_key);
        self.pool.forget(node_key).await;
    }
}

/// Writes the part of the node's status this controller owns (server-side
/// apply) when it differs from what was last written, on the condition that
/// the node is still the version it was decided from: a decision made from a
/// cache that lags behind (this controller's own last write, an agent's
/// report) is refused with 409 and made again, never acted on.
///
/// `even_unchanged` (before a piece of I/O that changes something): the same
/// status is applied on the same condition also when nothing changed, which
/// the API server takes as a no-op when current and refuses when stale.
/// Without it, a reconcile whose cache still showed this controller's write
/// from before a boot found nothing to write and booted the machine again.
async fn write_status(
    nc: &NodeContext,
    api: &Api<BareMetalNode>,
    node: &BareMetalNode,
    written: &mut Written,
    status: &BareMetalNodeStatus,
    even_unchanged: bool,
) -> Result<(), Error> {
    let mine = owned(status);
    if owned(&written.status) == mine && !even_unchanged {
        return Ok(());
    }
    let (namespace, name) = (node.namespace().unwrap_or_default(), node.name_any());
    let updated = crate::k8s::apply_status_at(api, &name, written.version.as_deref(), manager::NODE, &mine)
        .await
        .map_err(|source| match crate::k8s::is_conflict(&source) {
            true => Error::Stale { kind: "BareMetalNode", namespace: namespace.clone(), name: name.clone() },
            false => {
                Error::StatusWrite { kind: "BareMetalNode", namespace: namespace.clone(), name: name.clone(), source }
            }
        })?;
    if updated.resource_version() != written.version {
        nc.ctx.metrics.status_written("BareMetalNode");
    }
    if written.status.phase != status.phase
        && let Some(phase) = status.phase
    {
        let note = format!("phase {phase:?}");
        nc.ctx.event(node, EventType::Normal, &format!("{phase:?}"), note, "Lifecycle").await;
    }
    written.status = status.clone();
    written.version = updated.resource_version();
    Ok(())
}

async fn set_finalizers(api: &Api<BareMetalNode>, node: &BareMetalNode, finalizers: &[&str]) -> Result<(), Error> {
    let body = serde_json::json!({
        "apiVersion": BareMetalNode::api_version(&()),
        "kind": BareMetalNode::kind(&()),
        "metadata": { "name": node.name_any(), "finalizers": finalizers },
    });
    api.patch(&node.name_any(), &PatchParams::apply(manager::NODE).force(), &Patch::Apply(&body))
        .await
        .map(|_| ())
        .map_err(|source| Error::StatusWrite {
            kind: "BareMetalNode",
            namespace: node.namespace().unwrap_or_default(),
            name: node.name_any(),
            source,
        })
}

/// The finalizers this controller holds on `node`, given what it has made.
fn wanted_finalizers(node: &BareMetalNode, status: &BareMetalNodeStatus) -> Vec<&'static str> {
    let mut wanted = Vec::new();
    if node.spec.bmc.is_some() {
        wanted.push(FINALIZER);
    }
    if status.provisioning.is_some() || node.finalizers().iter().any(|f| f == access::FINALIZER) {
        wanted.push(access::FINALIZER);
    }
    wanted
}

/// The heartbeat of the node's agent, from its Lease (pure).
pub fn liveness(lease: Option<&Lease>, now: jiff::Timestamp) -> Liveness {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else { return Liveness::Absent };
    let Some(session) = spec.holder_identity.clone().filter(|h| !h.is_empty()) else { return Liveness::Absent };
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(60).max(1));
    match spec.renew_time.as_ref() {
        Some(renewed) if renewed.0.as_second().saturating_add(duration) >= now.as_second() => {
            Liveness::Alive { session }
        }
        _ => Liveness::Lapsed { session },
    }
}

#[tracing::instrument(skip_all, fields(namespace = guard.namespace().unwrap_or_default(), node = %guard.name_any()))]
async fn reconcile(guard: Arc<DeserializeGuard<BareMetalNode>>, nc: Arc<NodeContext>) -> Result<Action, Error> {
    let ctx = &nc.ctx;
    let Some(node) = super::readable(ctx, guard.as_ref()).await else {
        return Ok(Action::await_change());
    };
    let started = Instant::now();
    let namespace =
        node.namespace().ok_or_else(|| Error::NoNamespace { kind: "BareMetalNode", name: node.name_any() })?;
    let node_key = key(&ObjectRef::from_obj(guard.as_ref()));
    let api: Api<BareMetalNode> = Api::namespaced(ctx.client.clone(), &namespace);
    let action = if node.meta().deletion_timestamp.is_some() {
        finalize(&nc, &api, node, &node_key).await?
    } else {
        Executor { nc: &nc, api: &api, node, namespace: &namespace, node_key: &node_key }.run().await?
    };
    ctx.metrics.reconciled("BareMetalNode", started.elapsed());
    Ok(action)
}

/// One reconcile: decide, do, record, until nothing is left to do.
struct Executor<'a> {
    nc: &'a NodeContext,
    api: &'a Api<BareMetalNode>,
    node: &'a BareMetalNode,
    namespace: &'a str,
    node_key: &'a str,
}

/// Why a piece of I/O failed.
enum IoError {
    Bmc { error_type: &'static str, error: BmcError },
    Credentials(pool::CredentialsProblem),
    Access(access::AccessError),
    Api(Error),
}

impl From<Error> for IoError {
    fn from(err: Error) -> Self {
        IoError::Api(err)
    }
}

impl Executor<'_> {
    async fn run(&self) -> Result<Action, Error> {
        let (nc, node) = (self.nc, self.node);
        let generation = node.metadata.generation;
        let mut written = Written::of(node);
        let mut status = written.status.clone();
        let address = match node.spec.bmc.as_ref().map(|b| BmcAddress::parse(&b.address)) {
            Some(Err(err)) => {
                let failure = (Failure::Bmc, err.reason(), err.to_string());
                record_failure(&mut status, generation, "RegistrationError", (failure.0, failure.1, &failure.2), now());
                write_status(nc, self.api, node, &mut written, &status, false).await?;
                return Ok(Action::await_change());
            }
            Some(Ok(address)) => Some(address),
            None => None,
        };
        if node.spec.maintenance {
            self.nc.pool.forget(self.node_key).await;
        }
        let finalizers = wanted_finalizers(node, &status);
        if finalizers.iter().any(|f| !node.finalizers().iter().any(|have| have == f)) {
            set_finalizers(self.api, node, &finalizers).await?;
        }
        let lease = nc.leases.get(&ObjectRef::new(&access::name(&node.name_any())).within(self.namespace));
        let fresh_id = format!("{:012x}", rand::rng().random::<u64>() & 0xffff_ffff_ffff);
        let mut facts =
            Facts::new(jiff::Timestamp::now(), fresh_id, liveness(lease.as_deref(), jiff::Timestamp::now()));
        facts.power_asked = nc.power_asked(self.node_key, None);
        if let (Some(spec), Some(address)) = (node.spec.bmc.as_ref(), address.as_ref())
            && !node.spec.maintenance
        {
            facts.bmc_changed = nc.pool.changed(self.node_key, self.namespace, spec, address).await;
        }
        let view = lifecycle::Node {
            spec: &node.spec,
            generation,
            ipmi: address.as_ref().is_some_and(|a| a.scheme == Scheme::Ipmi),
            discovered: node.labels().get(DISCOVERED_LABEL).is_some_and(|v| v == "true"),
        };
        // Each step does one piece of I/O; a reconcile never needs many.
        for _ in 0..24 {
            let decision: Decision = lifecycle::decide(&view, &status, &facts, &nc.settings.lifecycle);
            let Some(io) = decision.io else {
                tracing::debug!(phase = ?decision.status.phase, state = ?decision.status.provisioning.as_ref().and_then(|p| p.state), requeue = ?decision.requeue, "decided");
                status = decision.status;
                // Every piece of I/O this reconcile needed worked: a BMC or
                // access failure recorded earlier is over (the agent's own
                // failures are the lifecycle's to clear).
                if status.error.as_ref().is_some_and(|e| IO_ERRORS.contains(&e.type_.as_str())) {
                    status.error = None;
                }
                write_status(nc, self.api, node, &mut written, &status, false).await?;
                nc.backoff.succeeded(self.node_key);
                return Ok(requeue(decision.requeue));
            };
            if io.needs_status_first() {
                write_status(nc, self.api, node, &mut written, &decision.status, true).await?;
            } else if decision.status.phase != written.status.phase {
                write_status(nc, self.api, node, &mut written, &decision.status, false).await?;
            }
            tracing::debug!(?io, phase = ?decision.status.phase, state = ?decision.status.provisioning.as_ref().and_then(|p| p.state), "doing");
            match self.perform(io, address.as_ref(), &decision, &mut facts).await {
                Ok(()) => status = decision.status,
                Err(err) => return self.failed(err, &mut status, &mut written).await,
            }
        }
        write_status(nc, self.api, node, &mut written, &status, false).await?;
        Ok(Action::requeue(Duration::from_secs(1)))
    }

    async fn bmc(&self, address: Option<&BmcAddress>, error_type: &'static str) -> Result<Arc<dyn Bmc>, IoError> {
        let (Some(spec), Some(address)) = (self.node.spec.bmc.as_ref(), address) else {
            return Err(IoError::Bmc {
                error_type,
                error: BmcError::Config { bmc: "none".into(), reason: "the node has no BMC".into() },
            });
        };
        self.nc.pool.get(self.node_key, self.namespace, spec, address).await.map_err(|err| match err {
            ConnectError::Credentials(problem) => IoError::Credentials(problem),
            ConnectError::Bmc(error) => IoError::Bmc { error_type, error },
        })
    }

    async fn perform(
        &self,
        io: Io,
        address: Option<&BmcAddress>,
        decision: &Decision,
        facts: &mut Facts,
    ) -> Result<(), IoError> {
        let metrics = &self.nc.ctx.metrics;
        let bmc_error = |error_type| move |error| IoError::Bmc { error_type, error };
        match io {
            Io::Register => {
                let bmc = self.bmc(address, "RegistrationError").await?;
                metrics.bmc_call("identity");
                let identity = bmc.identity().await.map_err(bmc_error("RegistrationError"))?;
                metrics.bmc_call("power_state");
                let power = bmc.power_state().await.map_err(bmc_error("RegistrationError"))?;
                facts.registered = Some((identity, power));
                facts.bmc_changed = false;
            }
            Io::InspectOutOfBand => {
                let bmc = self.bmc(address, "InspectionError").await?;
                metrics.bmc_call("inventory");
                facts.inventory = Some(bmc.inventory().await.map_err(bmc_error("InspectionError"))?);
            }
            Io::ReadPower => {
                let bmc = self.bmc(address, "PowerManagementError").await?;
                metrics.bmc_call("power_state");
                let power = bmc.power_state().await.map_err(bmc_error("PowerManagementError"))?;
                facts.power = Some(power);
                facts.power_asked = self.nc.power_asked(self.node_key, Some(power));
            }
            Io::Power(action) => {
                let bmc = self.bmc(address, "PowerManagementError").await?;
                metrics.bmc_call("power");
                let action = match bmc.power(action).await {
                    // Nothing to ask the system to shut down with: forced.
                    Err(BmcError::Unsupported { what, .. }) if action == PowerAction::GracefulShutdown => {
                        tracing::info!(%what, "the BMC cannot ask the system to shut down; forcing power off");
                        metrics.bmc_call("power");
                        bmc.power(PowerAction::ForceOff).await.map_err(bmc_error("PowerManagementError"))?;
                        PowerAction::ForceOff
                    }
                    result => result.map(|()| action).map_err(bmc_error("PowerManagementError"))?,
                };
                facts.power_requested = Some(action);
                facts.power_asked = Some(self.nc.asked_power(self.node_key, action));
                let reason = if action == PowerAction::On { "PowerOn" } else { "PowerOff" };
                let note = format!(
                    "asked the BMC {} for {action:?} (spec.online is {})",
                    bmc.address(),
                    self.node.spec.online
                );
                self.nc.ctx.event(self.node, EventType::Normal, reason, note, "Power").await;
            }
            Io::BootRamdisk | Io::BootDisk => {
                let (device, what) = match io {
                    Io::BootRamdisk => (BootDevice::Pxe, "girder's ramdisk from the network"),
                    _ => (BootDevice::Disk, "the installed system from its disk"),
                };
                let bmc = self.bmc(address, "PowerManagementError").await?;
                metrics.bmc_call("boot_override");
                let boot = BootOverride { device, mode: self.node.spec.boot_mode };
                bmc.set_boot_override(boot).await.map_err(bmc_error("PowerManagementError"))?;
                metrics.bmc_call("power_state");
                let power = bmc.power_state().await.map_err(bmc_error("PowerManagementError"))?;
                let action = if power == PowerState::Off { PowerAction::On } else { PowerAction::ForceRestart };
                metrics.bmc_call("power");
                bmc.power(action).await.map_err(bmc_error("PowerManagementError"))?;
                if io == Io::BootRamdisk {
                    facts.booted_ramdisk = true;
                } else {
                    facts.booted_disk = true;
                }
                let note = format!("booting {what} ({action:?} through the BMC {})", bmc.address());
                self.nc.ctx.event(self.node, EventType::Normal, "Boot", note, "Boot").await;
            }
            Io::OpenSession => {
                let provisioning = decision.status.provisioning.as_ref();
                let session = provisioning.and_then(|p| p.session.clone()).unwrap_or_default();
                let run = provisioning.and_then(|p| p.run.as_ref());
                let lease_seconds = self.nc.settings.agent_lease_seconds;
                access::open_session(&self.nc.ctx.client, self.node, &session, run, lease_seconds)
                    .await
                    .map_err(IoError::Access)?;
                facts.session_opened = true;
                let note = format!("opened agent session {session}; earlier agent tokens are revoked");
                self.nc.ctx.event(self.node, EventType::Normal, "AgentSession", note, "Agent").await;
            }
            Io::Grant => {
                let run = decision.status.provisioning.as_ref().and_then(|p| p.run.as_ref());
                access::grant(&self.nc.ctx.client, self.node, run, self.nc.settings.agent_lease_seconds)
                    .await
                    .map_err(IoError::Access)?;
                facts.granted = true;
            }
            Io::CloseSession => {
                access::close_session(&self.nc.ctx.client, self.node).await.map_err(IoError::Access)?;
                facts.session_closed = true;
                let note = "closed the agent session; its tokens no longer work".to_string();
                self.nc.ctx.event(self.node, EventType::Normal, "AgentSessionClosed", note, "Agent").await;
            }
        }
        Ok(())
    }

    /// Records a failed piece of I/O and retries it after this controller's backoff.
    async fn failed(
        &self,
        err: IoError,
        status: &mut BareMetalNodeStatus,
        written: &mut Written,
    ) -> Result<Action, Error> {
        let (nc, node) = (self.nc, self.node);
        let generation = node.metadata.generation;
        match err {
            IoError::Api(err) => return Err(err),
            IoError::Credentials(problem) => {
                let failure = (Failure::Secret, problem.reason(), problem.to_string());
                record_failure(status, generation, "RegistrationError", (failure.0, failure.1, &failure.2), now());
            }
            IoError::Bmc { error_type, error } => {
                nc.ctx.metrics.failed("BareMetalNode", error.metric_label());
                let failure = if error.is_auth() { Failure::Refused } else { Failure::Bmc };
                record_failure(status, generation, error_type, (failure, error.reason(), &error.to_string()), now());
                nc.pool.forget(self.node_key).await;
            }
            IoError::Access(error) => {
                nc.ctx.metrics.failed("BareMetalNode", error.reason());
                record_failure(
                    status,
                    generation,
                    "AgentAccessError",
                    (Failure::Access, error.reason(), &error.to_string()),
                    now(),
                );
            }
        }
        write_status(nc, self.api, node, written, status, false).await?;
        // The Secret watch brings a node with a credentials problem back as soon as it changes.
        Ok(Action::requeue(nc.backoff.failed(self.node_key)))
    }
}

/// Jitter spreads the periodic re-reads of many nodes over time, so they
/// never arrive at their BMCs (or the API server) in step.
fn requeue(requeue: Requeue) -> Action {
    match requeue {
        Requeue::OnChange => Action::await_change(),
        Requeue::After(d) if d.is_zero() => Action::requeue(Duration::from_millis(10)),
        Requeue::After(d) => Action::requeue(d.mul_f64(rand::rng().random_range(0.9..=1.1))),
    }
}

/// Deletion: revoke the agent, power off through the BMC, then let the node
/// go. A node that is detached, in maintenance or without a BMC is not
/// powered off.
async fn finalize(
    nc: &NodeContext,
    api: &Api<BareMetalNode>,
    node: &BareMetalNode,
    node_key: &str,
) -> Result<Action, Error> {
    let has = |f: &str| node.finalizers().iter().any(|have| have == f);
    if has(access::FINALIZER) {
        if let Err(err) = access::revoke_all(&nc.ctx.client, node).await {
            tracing::warn!(error = %err, "cannot remove the agent's access; retrying");
            return Ok(Action::requeue(nc.backoff.failed(node_key)));
        }
        let left: Vec<&str> =
            node.finalizers().iter().map(String::as_str).filter(|f| *f != access::FINALIZER).collect();
        set_finalizers(api, node, &left).await?;
        return Ok(Action::requeue(Duration::from_millis(10)));
    }
    if !has(FINALIZER) {
        nc.forget(node_key).await;
        return Ok(Action::await_change());
    }
    let detached = node.annotations().get(DETACHED).is_some_and(|v| v != "false");
    let release = |why: &'static str| async move {
        nc.forget(node_key).await;
        nc.ctx.event(node, EventType::Normal, "Released", why.to_string(), "Delete").await;
        set_finalizers(api, node, &[]).await.map(|_| Action::await_change())
    };
    let Some(bmc_spec) = node.spec.bmc.as_ref().filter(|_| !detached && !node.spec.maintenance) else {
        return release("deleted without touching power (detached, in maintenance, or no BMC)").await;
    };
    let namespace = node.namespace().unwrap_or_default();
    let outcome: Result<bool, String> = async {
        let address = BmcAddress::parse(&bmc_spec.address).map_err(|e| e.to_string())?;
        let bmc = nc.pool.get(node_key, &namespace, bmc_spec, &address).await.map_err(|e| e.to_string())?;
        nc.ctx.metrics.bmc_call("power_state");
        match bmc.power_state().await.map_err(|e| e.to_string())? {
            PowerState::Off => Ok(true),
            PowerState::PoweringOff => Ok(false),
            _ => {
                nc.ctx.metrics.bmc_call("power");
                bmc.power(PowerAction::ForceOff).await.map_err(|e| e.to_string())?;
                Ok(false)
            }
        }
    }
    .await;
    match outcome {
        Ok(true) => release("powered off; deleted").await,
        Ok(false) => Ok(Action::requeue(Duration::from_secs(5))),
        Err(message) => {
            let mut written = Written::of(node);
            let mut status = written.status.clone();
            let why = format!(
                "waiting to power the node off before deleting it: {message}. To delete it without powering off, annotate it {DETACHED}=true or set spec.maintenance"
            );
            status.conditions = condition::merge(
                &status.conditions,
                vec![Condition::new("Ready", false, "DeletionBlocked", why, node.metadata.generation)],
            );
            write_status(nc, api, node, &mut written, &status, false).await?;
            Ok(Action::requeue(nc.backoff.failed(node_key)))
        }
    }
}

fn error_policy(guard: Arc<DeserializeGuard<BareMetalNode>>, err: &Error, nc: Arc<NodeContext>) -> Action {
    if matches!(err, Error::Stale { .. }) {
        // Not a failure: the cache catches up within moments.
        nc.ctx.metrics.failed("BareMetalNode", err.metric_label());
        return Action::requeue(Duration::from_millis(rand::rng().random_range(200..800)));
    }
    tracing::warn!(node = %guard.name_any(), error = %err, "reconcile failed");
    nc.ctx.metrics.failed("BareMetalNode", err.metric_label());
    super::warn_later(nc.ctx.clone(), guard.clone(), err);
    Action::requeue(nc.backoff.failed(&key(&ObjectRef::from_obj(guard.as_ref()))))
}

/// What of an agent's report should wake the controller: a new session,
/// boot source, run or run state (not the progress within a step).
fn agent_report(guard: &DeserializeGuard<BareMetalNode>) -> Option<u64> {
    let agent = guard.0.as_ref().ok()?.status.as_ref()?.agent.as_ref()?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    agent.session.hash(&mut hasher);
    format!("{:?}", agent.boot_source).hash(&mut hasher);
    agent.inventory.is_some().hash(&mut hasher);
    if let Some(run) = &agent.run {
        run.id.hash(&mut hasher);
        format!("{:?}", run.state).hash(&mut hasher);
    }
    Some(hasher.finish())
}

/// Runs the BareMetalNode controller until `shutdown`, then closes every BMC session.
pub async fn run(ctx: Arc<Context>, settings: NodeSettings, shutdown: CancellationToken) {
    type SecretMeta = PartialObjectMeta<Secret>;
    let (nodes, secrets, leases): (Api<DeserializeGuard<BareMetalNode>>, Api<SecretMeta>, Api<Lease>) =
        match &ctx.namespace {
            Some(ns) => (
                Api::namespaced(ctx.client.clone(), ns),
                Api::namespaced(ctx.client.clone(), ns),
                Api::namespaced(ctx.client.clone(), ns),
            ),
            None => (Api::all(ctx.client.clone()), Api::all(ctx.client.clone()), Api::all(ctx.client.clone())),
        };
    // Reconcile on spec (generation), annotation and agent-report changes
    // only: the controller's own status writes must not trigger it again, or
    // a failing BMC would be retried at the speed of the API server instead
    // of backoff.
    let (store, writer) = reflector::store();
    let changes = watcher(nodes, watcher::Config::default())
        .default_backoff()
        // managedFields are the bulk of an object and nothing here reads them.
        .modify(|node| node.meta_mut().managed_fields = None)
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            predicates::generation.combine(predicates::annotations).combine(agent_report),
            PredicateConfig::default(),
        );
    // A bound on reconciles in flight: each holds a BMC conversation, and a
    // thousand at once cost memory without finishing sooner.
    let controller = Controller::for_stream(changes, store.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(settings.max_concurrent_reconciles));
    // Only Secrets' metadata is watched: a changed credentials Secret re-registers its nodes at once,
    // and an unchanged one is not read again.
    let (secret_store, secret_writer) = reflector::store();
    let secret_changes = watcher(secrets, watcher::Config::default())
        .default_backoff()
        .modify(|secret| secret.meta_mut().managed_fields = None)
        .reflect(secret_writer)
        .touched_objects();
    // The agents' heartbeats are read from this store when a node is
    // reconciled; a renewal alone wakes nothing.
    let (lease_store, lease_writer) = reflector::store();
    let lease_config = watcher::Config::default().labels(access::NODE_LABEL);
    let stop = shutdown.clone();
    let lease_reflector = watcher(leases, lease_config)
        .default_backoff()
        .modify(|lease| lease.meta_mut().managed_fields = None)
        .reflect(lease_writer)
        .take_until(async move { stop.cancelled().await })
        .for_each(|event| {
            if let Err(err) = event {
                tracing::warn!(error = %err, "agent Lease watch failed; retrying with backoff");
            }
            futures::future::ready(())
        });
    let pool = BmcPool::new(ctx.client.clone(), secret_store, settings.bmc_timeout, ctx.metrics.clone());
    let nc = Arc::new(NodeContext {
        ctx,
        settings,
        pool,
        leases: lease_store,
        backoff: Backoff::default(),
        power_asked: Default::default(),
    });
    let nodes = controller
        .watches_stream(secret_changes, move |secret| {
            let (namespace, name) = (secret.namespace(), secret.name_any());
            store
                .state()
                .iter()
                .filter(|n| n.namespace() == namespace)
                .filter(|n| {
                    n.0.as_ref()
                        .ok()
                        .and_then(|node| node.spec.bmc.as_ref())
                        .is_some_and(|b| b.credentials_secret_ref.name == name)
                })
                .map(|n| ObjectRef::from_obj(n.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, nc.clone())
        .for_each(|_| futures::future::ready(()));
    tokio::join!(nodes, lease_reflector);
    nc.pool.close_all().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ConditionStatus;

    fn at(second: i64) -> Time {
        Time(jiff::Timestamp::from_second(second).unwrap())
    }

    #[test]
    fn only_owned_fields_are_sent_in_a_stable_order() {
        let mut status = BareMetalNodeStatus {
            conditions: vec![
                Condition::new("Ready", true, "AsDesired", "", Some(1)),
                Condition::new("NetworkReady", false, "Pending", "", Some(1)),
                Condition::new("BMCReachable", true, "Answered", "", Some(1)),
            ],
            addresses: vec![Default::default()],
            agent: Some(Default::default()),
            ..Default::default()
        };
        let mine = owned(&status);
        let types: Vec<&str> = mine.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["BMCReachable", "Ready"]);
        assert!(mine.addresses.is_empty());
        assert!(mine.agent.is_none(), "the agent's report is the agent's");
        status.conditions.reverse();
        assert_eq!(owned(&status), mine, "order does not matter");
    }

    #[test]
    fn repeated_failures_count_up_and_keep_their_start() {
        let mut status = BareMetalNodeStatus::default();
        let timeout = (Failure::Bmc, "Timeout", "no answer");
        record_failure(&mut status, Some(1), "RegistrationError", timeout, at(10));
        record_failure(&mut status, Some(1), "RegistrationError", timeout, at(20));
        let error = status.error.clone().unwrap();
        assert_eq!((error.count, error.since), (2, at(10)));
        let reachable = condition::find(&status.conditions, "BMCReachable").unwrap();
        assert_eq!((reachable.status, reachable.reason.as_str()), (ConditionStatus::False, "Timeout"));

        let refused = (Failure::Refused, "AuthenticationFailed", "refused");
        record_failure(&mut status, Some(1), "RegistrationError", refused, at(30));
        let error = status.error.unwrap();
        assert_eq!((error.count, error.since), (1, at(30)));
        let credentials = condition::find(&status.conditions, "CredentialsValid").unwrap();
        assert_eq!(credentials.status, ConditionStatus::False);
        let reachable = condition::find(&status.conditions, "BMCReachable").unwrap();
        assert_eq!(reachable.status, ConditionStatus::True, "a BMC that refuses credentials answered");

        let mut fresh = BareMetalNodeStatus::default();
        record_failure(
            &mut fresh,
            Some(1),
            "RegistrationError",
            (Failure::Secret, "SecretNotFound", "no Secret"),
            at(40),
        );
        assert!(condition::find(&fresh.conditions, "BMCReachable").is_none(), "no BMC was asked");
    }

    #[test]
    fn a_heartbeat_counts_for_the_lease_duration() {
        let lease = |holder: Option<&str>, renewed: i64| -> Lease {
            serde_json::from_value(serde_json::json!({
                "metadata": { "name": "girder-agent-n1" },
                "spec": {
                    "holderIdentity": holder,
                    "leaseDurationSeconds": 30,
                    "renewTime": jiff::Timestamp::from_second(renewed).unwrap().to_string(),
                },
            }))
            .unwrap()
        };
        let now = jiff::Timestamp::from_second(1_000).unwrap();
        assert_eq!(liveness(None, now), Liveness::Absent);
        assert_eq!(liveness(Some(&lease(None, 990)), now), Liveness::Absent);
        assert_eq!(liveness(Some(&lease(Some("s1"), 990)), now), Liveness::Alive { session: "s1".into() });
        assert_eq!(liveness(Some(&lease(Some("s1"), 970)), now), Liveness::Alive { session: "s1".into() });
        assert_eq!(liveness(Some(&lease(Some("s1"), 969)), now), Liveness::Lapsed { session: "s1".into() });
    }
}
