//! The BareMetalNode controller: registers each node with its BMC, reads its
//! inventory out of band, and keeps its power where the spec says.
//!
//! Registering -> Inspecting -> Available, one status write per phase so a
//! slow BMC (30 s answers are common) shows where it is. Wrong credentials,
//! an unreachable BMC or a failed call become conditions and `status.error`,
//! retried with capped backoff; a change of the credentials Secret retries at
//! once. `maintenance` stops every BMC call. Deleting a node powers it off
//! first (finalizer), unless it is detached or in maintenance.

use super::{Context, Error, key};
use crate::api::condition::{self, Condition};
use crate::api::node::{BmcSpec, InspectionMode, NodeError, NodePhase, OperationHistory, OperationWindow};
use crate::api::{BareMetalNode, BareMetalNodeStatus};
use crate::bmc::{self, Bmc, BmcAddress, BmcError, BmcOptions, Credentials, PowerAction, PowerState, Scheme};
use crate::k8s::manager;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::utils::{Predicate, PredicateConfig};
use kube::runtime::{WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Resource, ResourceExt};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Held while girder owes the node a power-off before it goes.
pub const FINALIZER: &str = "girder.dev/power-off";
/// On a node: delete it without touching its power.
pub const DETACHED: &str = "girder.dev/detached";

/// How often the power state is read while nothing else happens.
#[derive(Clone, Copy, Debug)]
pub struct NodeSettings {
    pub power_poll_interval: Duration,
    pub bmc_timeout: Duration,
    /// Nodes reconciled at once (each is a conversation with its BMC).
    pub max_concurrent_reconciles: u16,
}

struct NodeContext {
    ctx: Arc<Context>,
    settings: NodeSettings,
    /// One BMC client per node, kept between reconciles (it holds the session).
    clients: tokio::sync::Mutex<HashMap<String, CachedBmc>>,
    /// The credentials Secrets' metadata, from the watch: while a Secret's
    /// resourceVersion is the one a client was made with, it is not read again.
    secrets: reflector::Store<PartialObjectMeta<Secret>>,
}

/// How a reconcile reaches the BMC.
enum Connection {
    /// The cached client, made from the Secret version the watch shows now.
    Cached(Arc<dyn Bmc>),
    /// A client to make (or the cached one, if its fingerprint still matches).
    New { credentials: Credentials, options: BmcOptions },
}

struct CachedBmc {
    /// Address, Secret version and TLS choice the client was made with.
    fingerprint: String,
    bmc: Arc<dyn Bmc>,
}

/// Why the credentials could not be used, before any BMC call.
#[derive(Debug, thiserror::Error)]
enum CredentialsProblem {
    #[error("credentials Secret {0} does not exist in the node's namespace; create it with keys username and password")]
    Missing(String),
    #[error("credentials Secret {secret} has no {key} key; it needs username and password")]
    Incomplete { secret: String, key: &'static str },
    #[error("cannot read credentials Secret {secret}: {source}")]
    Read { secret: String, source: kube::Error },
}

impl CredentialsProblem {
    fn reason(&self) -> &'static str {
        match self {
            CredentialsProblem::Missing(_) => "SecretNotFound",
            CredentialsProblem::Incomplete { .. } => "SecretIncomplete",
            CredentialsProblem::Read { .. } => "SecretUnreadable",
        }
    }
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

/// The power action that brings `actual` to `online`, if any (pure).
/// Transitions under way are left to finish.
pub fn power_action(online: bool, actual: PowerState) -> Option<PowerAction> {
    match (online, actual) {
        (true, PowerState::Off | PowerState::Unknown) => Some(PowerAction::On),
        (false, PowerState::On | PowerState::Unknown) => Some(PowerAction::ForceOff),
        _ => None,
    }
}

/// Conditions once the BMC answered with `power` (pure).
pub fn reachable_conditions(online: bool, power: PowerState, generation: Option<i64>) -> Vec<Condition> {
    let matches = power_action(online, power).is_none() && matches!(power, PowerState::On | PowerState::Off);
    let want = if online { "on" } else { "off" };
    vec![
        Condition::new("BMCReachable", true, "Answered", "the BMC answers", generation),
        Condition::new("CredentialsValid", true, "Accepted", "the BMC accepted the credentials", generation),
        Condition::new(
            "PoweredOn",
            power == PowerState::On,
            if power == PowerState::On { "On" } else { "NotOn" },
            format!("the BMC reports power {power}"),
            generation,
        ),
        Condition::new(
            "Ready",
            matches,
            if matches { "AsDesired" } else { "PowerChanging" },
            if matches {
                format!("power is {want}, as the spec asks")
            } else {
                format!("turning power {want}; the BMC reports {power}")
            },
            generation,
        ),
    ]
}

fn window_start(window: &mut Option<OperationWindow>, now: &Time) {
    *window = Some(OperationWindow { start: Some(now.clone()), end: None });
}

fn window_end(window: &mut Option<OperationWindow>, now: &Time) {
    if let Some(w) = window.as_mut()
        && w.end.is_none()
    {
        w.end = Some(now.clone());
    }
}

fn now() -> Time {
    Time(jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap_or_else(|_| jiff::Timestamp::now()))
}

impl NodeContext {
    /// How to talk to a node's BMC, and the fingerprint of what a cached
    /// client was made from (address, Secret version, TLS choice).
    fn connection(&self, bmc: &BmcSpec, address: &BmcAddress, secret_version: &str) -> (BmcOptions, String) {
        let options = BmcOptions {
            timeout: self.settings.bmc_timeout,
            disable_certificate_verification: bmc.disable_certificate_verification,
            ..BmcOptions::default()
        };
        (options, format!("{address}|{secret_version}|{}", bmc.disable_certificate_verification))
    }

    /// The node's BMC client, reusing the cached one while nothing it was
    /// made from changed; a stale one is closed.
    async fn client(
        &self,
        node_key: &str,
        fingerprint: &str,
        address: &BmcAddress,
        credentials: Credentials,
        options: BmcOptions,
    ) -> Result<Arc<dyn Bmc>, BmcError> {
        let stale = {
            let mut clients = self.clients.lock().await;
            match clients.get(node_key) {
                Some(cached) if cached.fingerprint == fingerprint => return Ok(cached.bmc.clone()),
                _ => clients.remove(node_key),
            }
        };
        if let Some(stale) = stale {
            let _ = stale.bmc.close().await;
        }
        self.ctx.metrics.bmc_call("connect");
        let bmc: Arc<dyn Bmc> = Arc::from(bmc::connect(address, credentials, options).await?);
        self.clients
            .lock()
            .await
            .insert(node_key.to_string(), CachedBmc { fingerprint: fingerprint.to_string(), bmc: bmc.clone() });
        Ok(bmc)
    }

    /// The node's cached client, when it was made from the same address, TLS
    /// choice and Secret version as the watch shows now: then the Secret need
    /// not be read (every power poll would otherwise cost an API request).
    async fn cached(
        &self,
        node_key: &str,
        namespace: &str,
        bmc: &BmcSpec,
        address: &BmcAddress,
    ) -> Option<(Arc<dyn Bmc>, String)> {
        let secret = self.secrets.get(&ObjectRef::new(&bmc.credentials_secret_ref.name).within(namespace))?;
        let (_, fingerprint) = self.connection(bmc, address, secret.resource_version().as_deref()?);
        let clients = self.clients.lock().await;
        let cached = clients.get(node_key).filter(|c| c.fingerprint == fingerprint)?;
        Some((cached.bmc.clone(), fingerprint))
    }

    /// Closes and forgets the node's client (the BMC keeps no session of ours).
    async fn forget(&self, node_key: &str) {
        let cached = self.clients.lock().await.remove(node_key);
        if let Some(cached) = cached {
            let _ = cached.bmc.close().await;
        }
    }

    async fn close_all(&self) {
        let all: Vec<CachedBmc> = self.clients.lock().await.drain().map(|(_, c)| c).collect();
        for cached in all {
            let _ = cached.bmc.close().await;
        }
    }
}

async fn read_credentials(secrets: &Api<Secret>, name: &str) -> Result<(Credentials, String), CredentialsProblem> {
    let secret = secrets
        .get_opt(name)
        .await
        .map_err(|source| CredentialsProblem::Read { secret: name.to_string(), source })?
        .ok_or_else(|| CredentialsProblem::Missing(name.to_string()))?;
    let data = secret.data.unwrap_or_default();
    let field = |key: &'static str| {
        data.get(key)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .map(|v| v.trim_end_matches(['\n', '\r']).to_string())
            .filter(|v| !v.is_empty())
            .ok_or(CredentialsProblem::Incomplete { secret: name.to_string(), key })
    };
    let credentials = Credentials::new(field("username")?, field("password")?);
    Ok((credentials, secret.metadata.resource_version.unwrap_or_default()))
}

/// The condition types this controller decides; others (NetworkReady...)
/// belong to other field managers and are never sent from here.
const OWN_CONDITIONS: [&str; 5] = ["BMCReachable", "CredentialsValid", "Inspected", "PoweredOn", "Ready"];

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
        hardware: status.hardware.clone(),
        error: status.error.clone(),
        operation_history: status.operation_history.clone(),
        addresses: Vec::new(),
        roles: Vec::new(),
    }
}

/// Writes the part of the node's status this controller owns (server-side
/// apply) when it differs from what the node shows.
async fn write_status(
    nc: &NodeContext,
    api: &Api<BareMetalNode>,
    node: &BareMetalNode,
    before: &mut BareMetalNodeStatus,
    status: &BareMetalNodeStatus,
) -> Result<(), Error> {
    let mine = owned(status);
    if owned(before) == mine {
        return Ok(());
    }
    crate::k8s::apply_status(api, node, manager::NODE, &mine).await.map_err(|source| Error::StatusWrite {
        kind: "BareMetalNode",
        namespace: node.namespace().unwrap_or_default(),
        name: node.name_any(),
        source,
    })?;
    nc.ctx.metrics.status_written("BareMetalNode");
    if before.phase != status.phase
        && let Some(phase) = status.phase
    {
        let note = format!("phase {phase:?}");
        nc.ctx.event(node, EventType::Normal, &format!("{phase:?}"), note, "Lifecycle").await;
    }
    *before = status.clone();
    Ok(())
}

async fn set_finalizer(api: &Api<BareMetalNode>, node: &BareMetalNode, present: bool) -> Result<(), Error> {
    let finalizers: Vec<&str> = if present { vec![FINALIZER] } else { vec![] };
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
        finalize(&nc, &api, node, &namespace, &node_key).await?
    } else if node.spec.maintenance {
        // No BMC call at all; everything in status stays as it was.
        nc.forget(&node_key).await;
        Action::await_change()
    } else {
        lifecycle(&nc, &api, node, &namespace, &node_key).await?
    };
    ctx.metrics.reconciled("BareMetalNode", started.elapsed());
    Ok(action)
}

/// Registering -> Inspecting -> Available, then power enforcement.
async fn lifecycle(
    nc: &NodeContext,
    api: &Api<BareMetalNode>,
    node: &BareMetalNode,
    namespace: &str,
    node_key: &str,
) -> Result<Action, Error> {
    let ctx = &nc.ctx;
    let generation = node.metadata.generation;
    let mut shown = node.status.clone().unwrap_or_default();
    let mut status = shown.clone();
    status.observed_generation = generation;

    let Some(bmc_spec) = node.spec.bmc.as_ref() else {
        // A machine found by PXE: nothing to drive until a BMC is declared.
        status.phase = Some(NodePhase::Discovered);
        write_status(nc, api, node, &mut shown, &status).await?;
        return Ok(Action::await_change());
    };
    if !node.finalizers().iter().any(|f| f == FINALIZER) {
        set_finalizer(api, node, true).await?;
    }
    let fail = |status: &mut BareMetalNodeStatus, error_type: &str, failure: (Failure, &str, &str)| {
        record_failure(status, generation, error_type, failure, now());
    };
    let address = match BmcAddress::parse(&bmc_spec.address) {
        Ok(address) => address,
        Err(err) => {
            fail(&mut status, "RegistrationError", (Failure::Bmc, err.reason(), &err.to_string()));
            write_status(nc, api, node, &mut shown, &status).await?;
            return Ok(Action::await_change());
        }
    };
    let (connection, fingerprint) = match nc.cached(node_key, namespace, bmc_spec, &address).await {
        Some((bmc, fingerprint)) => (Connection::Cached(bmc), fingerprint),
        None => {
            let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
            ctx.metrics.credentials_read();
            let (credentials, secret_version) = match read_credentials(&secrets, &bmc_spec.credentials_secret_ref.name)
                .await
            {
                Ok(found) => found,
                Err(problem) => {
                    fail(&mut status, "RegistrationError", (Failure::Secret, problem.reason(), &problem.to_string()));
                    write_status(nc, api, node, &mut shown, &status).await?;
                    // The Secret watch brings the node back as soon as it changes.
                    return Ok(Action::requeue(ctx.backoff.failed(node_key)));
                }
            };
            let (options, fingerprint) = nc.connection(bmc_spec, &address, &secret_version);
            (Connection::New { credentials, options }, fingerprint)
        }
    };
    // Register anew when the address, credentials or TLS choice changed since
    // this process connected; after a restart the phase in status stands.
    let changed = nc.clients.lock().await.get(node_key).is_some_and(|c| c.fingerprint != fingerprint);
    if status.phase.is_none() || (changed && status.phase != Some(NodePhase::Registering)) {
        status.phase = Some(NodePhase::Registering);
        let history = status.operation_history.get_or_insert_with(OperationHistory::default);
        window_start(&mut history.register, &now());
        write_status(nc, api, node, &mut shown, &status).await?;
    }

    let result = drive(nc, node, &mut status, &address, connection, node_key, &fingerprint, api, &mut shown).await;
    match result {
        Ok(action) => {
            status.error = None;
            write_status(nc, api, node, &mut shown, &status).await?;
            ctx.backoff.succeeded(node_key);
            Ok(action)
        }
        Err(StepError::Bmc { error_type, error }) => {
            nc.ctx.metrics.failed("BareMetalNode", error.metric_label());
            let failure = if error.is_auth() { Failure::Refused } else { Failure::Bmc };
            fail(&mut status, error_type, (failure, error.reason(), &error.to_string()));
            write_status(nc, api, node, &mut shown, &status).await?;
            nc.forget(node_key).await;
            Ok(Action::requeue(ctx.backoff.failed(node_key)))
        }
        Err(StepError::Api(err)) => Err(err),
    }
}

enum StepError {
    Bmc { error_type: &'static str, error: BmcError },
    Api(Error),
}

impl From<Error> for StepError {
    fn from(err: Error) -> Self {
        StepError::Api(err)
    }
}

/// The BMC calls of one reconcile, writing status after each phase.
#[allow(clippy::too_many_arguments)]
async fn drive(
    nc: &NodeContext,
    node: &BareMetalNode,
    status: &mut BareMetalNodeStatus,
    address: &BmcAddress,
    connection: Connection,
    node_key: &str,
    fingerprint: &str,
    api: &Api<BareMetalNode>,
    shown: &mut BareMetalNodeStatus,
) -> Result<Action, StepError> {
    let generation = node.metadata.generation;
    let registration = |error| StepError::Bmc { error_type: "RegistrationError", error };
    let bmc = match connection {
        Connection::Cached(bmc) => bmc,
        Connection::New { credentials, options } => {
            nc.client(node_key, fingerprint, address, credentials, options).await.map_err(registration)?
        }
    };
    let mut known_power = None;

    if status.phase == Some(NodePhase::Registering) {
        nc.ctx.metrics.bmc_call("identity");
        let identity = bmc.identity().await.map_err(registration)?;
        let hardware = status.hardware.get_or_insert_with(Default::default);
        hardware.vendor = identity.vendor.or(hardware.vendor.take());
        hardware.model = identity.model.or(hardware.model.take());
        hardware.serial_number = identity.serial_number.or(hardware.serial_number.take());
        hardware.uuid = identity.uuid.or(hardware.uuid.take());
        let now = now();
        let history = status.operation_history.get_or_insert_with(OperationHistory::default);
        window_end(&mut history.register, &now);
        let out_of_band = node.spec.inspection == InspectionMode::OutOfBand && address.scheme != Scheme::Ipmi;
        if out_of_band {
            status.phase = Some(NodePhase::Inspecting);
            window_start(&mut history.inspect, &now);
        } else {
            status.phase = Some(NodePhase::Available);
            let (reason, message) = match node.spec.inspection {
                InspectionMode::Disabled => ("InspectionDisabled", "inspection is disabled in the spec"),
                _ => (
                    "InBandInspectionRequired",
                    "this BMC gives no out-of-band inventory; it comes from the node agent once the node boots the discovery image",
                ),
            };
            status.conditions = condition::merge(
                &status.conditions,
                vec![Condition::new("Inspected", false, reason, message, generation)],
            );
        }
        nc.ctx.metrics.bmc_call("power_state");
        let power = bmc.power_state().await.map_err(registration)?;
        known_power = Some(power);
        status.power_state = Some(power.as_str().to_string());
        let mut decided = reachable_conditions(node.spec.online, power, generation);
        if status.phase == Some(NodePhase::Inspecting) {
            decided.retain(|c| c.type_ != "Ready");
            decided.push(Condition::new(
                "Ready",
                false,
                "Inspecting",
                "reading the inventory through the BMC",
                generation,
            ));
        }
        status.conditions = condition::merge(&status.conditions, decided);
        write_status(nc, api, node, shown, status).await?;
    }

    if status.phase == Some(NodePhase::Inspecting) {
        nc.ctx.metrics.bmc_call("inventory");
        let inventory =
            bmc.inventory().await.map_err(|error| StepError::Bmc { error_type: "InspectionError", error })?;
        let identity = status.hardware.take().unwrap_or_default();
        status.hardware = Some(crate::api::node::HardwareDetails {
            vendor: inventory.vendor.clone().or(identity.vendor),
            model: inventory.model.clone().or(identity.model),
            serial_number: inventory.serial_number.clone().or(identity.serial_number),
            uuid: inventory.uuid.clone().or(identity.uuid),
            ..inventory
        });
        let nics = status.hardware.as_ref().map_or(0, |h| h.nics.len());
        status.conditions = condition::merge(
            &status.conditions,
            vec![Condition::new(
                "Inspected",
                true,
                "OutOfBand",
                format!("inventory read through the BMC ({nics} NICs)"),
                generation,
            )],
        );
        let history = status.operation_history.get_or_insert_with(OperationHistory::default);
        window_end(&mut history.inspect, &now());
        status.phase = Some(NodePhase::Available);
        // Written together with the power state below: one write for the phase.
    }

    // Available (and later phases): keep power where the spec says.
    let power_error = |error| StepError::Bmc { error_type: "PowerManagementError", error };
    let mut power = match known_power {
        Some(power) => power,
        None => {
            nc.ctx.metrics.bmc_call("power_state");
            bmc.power_state().await.map_err(power_error)?
        }
    };
    let mut changing = matches!(power, PowerState::PoweringOn | PowerState::PoweringOff);
    if let Some(action) = power_action(node.spec.online, power) {
        nc.ctx.metrics.bmc_call("power");
        bmc.power(action).await.map_err(power_error)?;
        nc.ctx
            .event(
                node,
                EventType::Normal,
                if action == PowerAction::On { "PowerOn" } else { "PowerOff" },
                format!("asked the BMC {address} for {action:?} (spec.online is {})", node.spec.online),
                "Power",
            )
            .await;
        power = if node.spec.online { PowerState::PoweringOn } else { PowerState::PoweringOff };
        changing = true;
    }
    status.power_state = Some(power.as_str().to_string());
    status.conditions = condition::merge(&status.conditions, reachable_conditions(node.spec.online, power, generation));
    Ok(if changing {
        Action::requeue(Duration::from_secs(5))
    } else {
        Action::requeue(nc.settings.power_poll_interval)
    })
}

/// Deletion: power off through the BMC, then let the node go. A node that is
/// detached, in maintenance or without a BMC goes at once.
async fn finalize(
    nc: &NodeContext,
    api: &Api<BareMetalNode>,
    node: &BareMetalNode,
    namespace: &str,
    node_key: &str,
) -> Result<Action, Error> {
    if !node.finalizers().iter().any(|f| f == FINALIZER) {
        nc.forget(node_key).await;
        return Ok(Action::await_change());
    }
    let detached = node.annotations().get(DETACHED).is_some_and(|v| v != "false");
    let release = |why: &'static str| async move {
        nc.forget(node_key).await;
        nc.ctx.event(node, EventType::Normal, "Released", why.to_string(), "Delete").await;
        set_finalizer(api, node, false).await.map(|_| Action::await_change())
    };
    let Some(bmc_spec) = node.spec.bmc.as_ref().filter(|_| !detached && !node.spec.maintenance) else {
        return release("deleted without touching power (detached, in maintenance, or no BMC)").await;
    };
    let outcome: Result<bool, String> = async {
        let address = BmcAddress::parse(&bmc_spec.address).map_err(|e| e.to_string())?;
        let secrets: Api<Secret> = Api::namespaced(nc.ctx.client.clone(), namespace);
        let (credentials, version) =
            read_credentials(&secrets, &bmc_spec.credentials_secret_ref.name).await.map_err(|e| e.to_string())?;
        let (options, fingerprint) = nc.connection(bmc_spec, &address, &version);
        let bmc = nc.client(node_key, &fingerprint, &address, credentials, options).await.map_err(|e| e.to_string())?;
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
            let mut shown = node.status.clone().unwrap_or_default();
            let mut status = shown.clone();
            let why = format!(
                "waiting to power the node off before deleting it: {message}. To delete it without powering off, annotate it {DETACHED}=true or set spec.maintenance"
            );
            status.conditions = condition::merge(
                &status.conditions,
                vec![Condition::new("Ready", false, "DeletionBlocked", why, node.metadata.generation)],
            );
            write_status(nc, api, node, &mut shown, &status).await?;
            Ok(Action::requeue(nc.ctx.backoff.failed(node_key)))
        }
    }
}

fn error_policy(guard: Arc<DeserializeGuard<BareMetalNode>>, err: &Error, nc: Arc<NodeContext>) -> Action {
    tracing::warn!(node = %guard.name_any(), error = %err, "reconcile failed");
    nc.ctx.metrics.failed("BareMetalNode", err.metric_label());
    super::warn_later(nc.ctx.clone(), guard.clone(), err);
    Action::requeue(nc.ctx.backoff.failed(&key(&ObjectRef::from_obj(guard.as_ref()))))
}

/// Runs the BareMetalNode controller until `shutdown`, then closes every BMC session.
pub async fn run(ctx: Arc<Context>, settings: NodeSettings, shutdown: CancellationToken) {
    type SecretMeta = PartialObjectMeta<Secret>;
    let (nodes, secrets): (Api<DeserializeGuard<BareMetalNode>>, Api<SecretMeta>) = match &ctx.namespace {
        Some(ns) => (Api::namespaced(ctx.client.clone(), ns), Api::namespaced(ctx.client.clone(), ns)),
        None => (Api::all(ctx.client.clone()), Api::all(ctx.client.clone())),
    };
    // Reconcile on spec (generation) and annotation changes only: the
    // controller's own status writes must not trigger it again, or a failing
    // BMC would be retried at the speed of the API server instead of backoff.
    let (store, writer) = reflector::store();
    let changes = watcher(nodes, watcher::Config::default())
        .default_backoff()
        // managedFields are the bulk of an object and nothing here reads them.
        .modify(|node| node.meta_mut().managed_fields = None)
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation.combine(predicates::annotations), PredicateConfig::default());
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
    let nc = Arc::new(NodeContext {
        ctx,
        settings,
        clients: tokio::sync::Mutex::new(HashMap::new()),
        secrets: secret_store,
    });
    controller
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
        .for_each(|_| futures::future::ready(()))
        .await;
    nc.close_all().await;
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
            ..Default::default()
        };
        let mine = owned(&status);
        let types: Vec<&str> = mine.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["BMCReachable", "Ready"]);
        assert!(mine.addresses.is_empty());
        status.conditions.reverse();
        assert_eq!(owned(&status), mine, "order does not matter");
    }

    #[test]
    fn power_follows_the_spec_and_waits_for_transitions() {
        assert_eq!(power_action(true, PowerState::Off), Some(PowerAction::On));
        assert_eq!(power_action(false, PowerState::On), Some(PowerAction::ForceOff));
        assert_eq!(power_action(true, PowerState::On), None);
        assert_eq!(power_action(false, PowerState::Off), None);
        assert_eq!(power_action(true, PowerState::PoweringOn), None);
        assert_eq!(power_action(false, PowerState::PoweringOff), None);
        assert_eq!(power_action(true, PowerState::Unknown), Some(PowerAction::On));
    }

    #[test]
    fn ready_only_when_power_is_as_asked() {
        let find = |conditions: &[Condition], t: &str| condition::find(conditions, t).unwrap().status;
        let on = reachable_conditions(true, PowerState::On, Some(2));
        assert_eq!(find(&on, "Ready"), ConditionStatus::True);
        assert_eq!(find(&on, "PoweredOn"), ConditionStatus::True);
        let changing = reachable_conditions(true, PowerState::PoweringOn, Some(2));
        assert_eq!(find(&changing, "Ready"), ConditionStatus::False);
        assert_eq!(condition::find(&changing, "Ready").unwrap().reason, "PowerChanging");
        let off = reachable_conditions(false, PowerState::Off, Some(2));
        assert_eq!(find(&off, "Ready"), ConditionStatus::True);
        assert_eq!(find(&off, "PoweredOn"), ConditionStatus::False);
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
}
