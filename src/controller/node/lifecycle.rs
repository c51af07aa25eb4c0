//! The BareMetalNode lifecycle as a pure state machine: from the spec, the
//! status and what this reconcile has learned so far ([`Facts`]), decide the
//! next status and the one piece of I/O to do next ([`Io`]).
//!
//! ```text
//!  Registering ──> Inspecting ──> Available ──> Provisioning ──> Provisioned
//!       │          (BMC or agent)   ^   │            │  ^              │
//!       └── IPMI / Disabled ────────┘   │            │  └─ new image ──┤
//!                                       │            v                 v
//!                                       └──── Deprovisioning <── image cleared
//!  Discovered: a machine girder pxe found; no BMC; its agent reports inventory.
//! ```
//!
//! Work on the machine itself (in-band inspection, image install, cleaning)
//! goes through its agent as a run inside an agent session
//! ([`crate::api::provisioning`]); [`operate`] is the sub-machine every such
//! operation shares: open a session, boot girder's ramdisk, wait for the
//! agent's report, retry with capped backoff (without a reboot while the
//! agent is still connected), or wait for a spec change after a failure that
//! retrying cannot fix.
//!
//! Everything that must survive an operator restart is in the status it
//! returns; [`Facts`] only carries what one reconcile learned (the BMC's
//! answers) and the moment it runs. The executor in `super` performs each
//! [`Io`], records its outcome in the facts and asks again, until no I/O is
//! left.

use crate::api::condition::{self, Condition};
use crate::api::node::{
    BareMetalNodeSpec, BareMetalNodeStatus, CleaningMode, HardwareDetails, InspectionMode, NodePhase, OperationHistory,
    OperationWindow, PowerOffMode,
};
use crate::api::provisioning::{AgentRun, BootSource, ProvisioningState, RunAction, RunReport, RunState, StepTiming};
use crate::bmc::{PowerAction, PowerState, SystemIdentity};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::time::Duration;

/// Tunables of the lifecycle.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// How often power is read while nothing else happens.
    pub power_poll_interval: Duration,
    /// How long a machine may take from the boot request until its agent
    /// reports (firmware, PXE, kernel, agent start).
    pub agent_boot_timeout: Duration,
    /// How long the installed system may take to start its agent after the
    /// image was written, before the node is called Provisioned without it.
    pub installed_agent_timeout: Duration,
    /// While waiting for an agent, how often to look again.
    pub agent_poll_interval: Duration,
    /// How long an installed system may take to shut down when asked,
    /// before power is forced off (spec.powerOffMode Soft).
    pub soft_power_off_timeout: Duration,
    /// How long a BMC may take to carry out a power request (BMCs apply
    /// them seconds later, some only after a minute) before it is asked
    /// again.
    pub power_change_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            power_poll_interval: Duration::from_secs(60),
            agent_boot_timeout: Duration::from_secs(20 * 60),
            installed_agent_timeout: Duration::from_secs(20 * 60),
            agent_poll_interval: Duration::from_secs(10),
            soft_power_off_timeout: Duration::from_secs(180),
            power_change_timeout: Duration::from_secs(60),
        }
    }
}

/// Whether the node's agent is alive, from its heartbeat Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// No heartbeat at all.
    Absent,
    /// Renewed within the Lease's duration, by an agent of `session`.
    Alive { session: String },
    /// Last renewed by an agent of `session`, longer ago than the Lease's duration.
    Lapsed { session: String },
}

impl Liveness {
    fn alive_in(&self, session: Option<&str>) -> bool {
        matches!((self, session), (Liveness::Alive { session: s }, Some(current)) if s == current)
    }
}

/// What one reconcile knows beyond the spec and the status.
#[derive(Clone, Debug)]
pub struct Facts {
    pub now: jiff::Timestamp,
    /// The BMC's address, credentials or TLS choice changed since this
    /// process last talked to it: register anew.
    pub bmc_changed: bool,
    /// Identity and power state read at registration, in this reconcile.
    pub registered: Option<(SystemIdentity, PowerState)>,
    /// Out-of-band inventory read in this reconcile.
    pub inventory: Option<HardwareDetails>,
    /// Power state read in this reconcile.
    pub power: Option<PowerState>,
    /// The power action asked for in this reconcile, if any.
    pub power_requested: Option<PowerAction>,
    /// The last power action this process asked of the node's BMC, and
    /// when (kept between reconciles, until the power is what it asked for).
    pub power_asked: Option<(PowerAction, jiff::Timestamp)>,
    /// The agent Secret of the session in status was (re)created in this reconcile.
    pub session_opened: bool,
    /// The boot into girder's ramdisk was asked of the BMC in this reconcile.
    pub booted_ramdisk: bool,
    /// The boot from the disk was asked of the BMC in this reconcile.
    pub booted_disk: bool,
    /// The agent's Role was re-applied for the run in status, in this reconcile.
    pub granted: bool,
    /// The session's agent Secret was deleted in this reconcile.
    pub session_closed: bool,
    /// The heartbeat of the node's agent.
    pub liveness: Liveness,
    /// A fresh random identifier, for a session opened in this reconcile.
    pub fresh_id: String,
}

impl Facts {
    pub fn new(now: jiff::Timestamp, fresh_id: String, liveness: Liveness) -> Self {
        Self {
            now,
            bmc_changed: false,
            registered: None,
            inventory: None,
            power: None,
            power_requested: None,
            power_asked: None,
            session_opened: false,
            booted_ramdisk: false,
            booted_disk: false,
            granted: false,
            session_closed: false,
            liveness,
            fresh_id,
        }
    }
}

/// The node as the lifecycle sees it.
pub struct Node<'a> {
    pub spec: &'a BareMetalNodeSpec,
    pub generation: Option<i64>,
    /// The BMC speaks IPMI, which gives no out-of-band inventory.
    pub ipmi: bool,
    /// Created by girder pxe for a machine nobody declared.
    pub discovered: bool,
}

/// I/O the executor does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Io {
    /// Connect to the BMC (anew if it changed), read identity and power.
    Register,
    /// Read the out-of-band inventory.
    InspectOutOfBand,
    /// Read the power state.
    ReadPower,
    /// Ask for a power change.
    Power(PowerAction),
    /// Boot girder's ramdisk: one-time network boot, then power on (or restart).
    BootRamdisk,
    /// Boot the installed system: one-time disk boot, then restart (or power on).
    BootDisk,
    /// Create the agent's access (once) and re-create its Secret for the
    /// session now in status, revoking every earlier token.
    OpenSession,
    /// Delete the agent's Secret: every token of the session stops working.
    CloseSession,
    /// Re-apply the agent's Role for the run now in status (a new run in
    /// the same session may need another user-data Secret).
    Grant,
}

impl Io {
    /// Whether the status that led to it must be written first: girder pxe
    /// and the agent read the session from it, and it must not be acted on
    /// if it was decided from a stale copy of the node.
    pub fn needs_status_first(self) -> bool {
        // Everything but reading the BMC: the status write (conditional on
        // the node's version) also proves the decision was made from the
        // node as it is, before anything is changed on its account.
        !matches!(self, Io::Register | Io::InspectOutOfBand | Io::ReadPower)
    }
}

/// When to look at the node again if nothing changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requeue {
    After(Duration),
    /// Only a change of the node brings it back.
    OnChange,
}

/// The next status, and the I/O to do before asking again.
#[derive(Clone, Debug)]
pub struct Decision {
    pub status: BareMetalNodeStatus,
    pub io: Option<Io>,
    pub requeue: Requeue,
}

/// Reasons of agent failures that retrying the same request cannot fix:
/// the next attempt waits for the spec to change.
const PERMANENT: [&str; 6] =
    ["NoMatchingDisk", "ImageFormat", "ImageTooLarge", "InvalidImageURL", "InvalidImageChecksum", "UserDataMissing"];

/// Capped exponential backoff between attempts of an agent operation:
/// 15 s, 30 s, 60 s ... 10 min. Kept in status, so a restart keeps it.
pub fn retry_delay(failures: i32) -> Duration {
    let exponent = u32::try_from(failures.saturating_sub(1).clamp(0, 10)).unwrap_or(10);
    Duration::from_secs(15).saturating_mul(1 << exponent).min(Duration::from_secs(600))
}

/// Decides the next step for `node` from `status` and `facts` (pure).
pub fn decide(node: &Node, status: &BareMetalNodeStatus, facts: &Facts, settings: &Settings) -> Decision {
    let mut d = Decision { status: status.clone(), io: None, requeue: Requeue::OnChange };
    if !node.spec.maintenance {
        // In maintenance nothing is acted on, so nothing is observed either.
        d.status.observed_generation = node.generation;
    }
    fold_agent_inventory(node, &mut d.status);
    let mut d = step(node, d, facts, settings);
    if facts.booted_ramdisk || facts.booted_disk {
        // Booted through the BMC: on (or restarting) now, whatever the
        // status showed before this operation.
        d.status.power_state = Some(PowerState::On.as_str().to_string());
    }
    agent_condition(node, facts, &mut d.status);
    d
}

fn step(node: &Node, mut d: Decision, facts: &Facts, settings: &Settings) -> Decision {
    if node.spec.maintenance {
        // No BMC call; the session's tokens are revoked, the rest stays.
        let open = d.status.provisioning.as_ref().is_some_and(|p| p.session.is_some());
        if open && !facts.session_closed {
            d.io = Some(Io::CloseSession);
        } else if let Some(p) = d.status.provisioning.as_mut() {
            p.session = None;
            if !matches!(p.state, Some(ProvisioningState::Complete) | None) {
                // Whatever ran starts over once maintenance ends.
                p.state = None;
                p.state_since = None;
            }
        }
        return d;
    }
    if node.spec.bmc.is_none() {
        return discovered(node, d, facts, settings);
    }
    let phase = match d.status.phase {
        Some(NodePhase::Discovered) | None => None,
        phase => phase,
    };
    match phase {
        None => start_registering(node, d, facts, settings),
        Some(_) if facts.bmc_changed && facts.registered.is_none() => start_registering(node, d, facts, settings),
        Some(NodePhase::Registering) => registering(node, d, facts, settings),
        Some(NodePhase::Inspecting) => inspecting(node, d, facts, settings),
        Some(NodePhase::Available) => available(node, d, facts, settings),
        Some(NodePhase::Provisioning) => provisioning(node, d, facts, settings),
        Some(NodePhase::Provisioned) => provisioned(node, d, facts, settings),
        Some(NodePhase::Deprovisioning) => deprovisioning(node, d, facts, settings),
        Some(NodePhase::Discovered) => unreachable_discovered(d),
    }
}

/// `Discovered` is handled before the match; kept total without a panic.
fn unreachable_discovered(d: Decision) -> Decision {
    d
}

fn now_time(facts: &Facts) -> Time {
    Time(jiff::Timestamp::from_second(facts.now.as_second()).unwrap_or(facts.now))
}

fn set_phase(d: &mut Decision, phase: NodePhase) {
    d.status.phase = Some(phase);
}

fn history(status: &mut BareMetalNodeStatus) -> &mut OperationHistory {
    status.operation_history.get_or_insert_with(OperationHistory::default)
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

fn merge(d: &mut Decision, decided: Vec<Condition>) {
    d.status.conditions = condition::merge(&d.status.conditions, decided);
}

fn ready(d: &mut Decision, generation: Option<i64>, ok: bool, reason: &str, message: impl Into<String>) {
    merge(d, vec![Condition::new("Ready", ok, reason, message, generation)]);
}

// ---------------------------------------------------------------------------
// Registering and out-of-band inspection

fn start_registering(node: &Node, mut d: Decision, facts: &Facts, settings: &Settings) -> Decision {
    if d.status.phase != Some(NodePhase::Registering) {
        set_phase(&mut d, NodePhase::Registering);
        window_start(&mut history(&mut d.status).register, &now_time(facts));
    }
    registering(node, d, facts, settings)
}

fn registering(node: &Node, mut d: Decision, facts: &Facts, settings: &Settings) -> Decision {
    let Some((identity, power)) = &facts.registered else {
        d.io = Some(Io::Register);
        return d;
    };
    let generation = node.generation;
    let hardware = d.status.hardware.get_or_insert_with(Default::default);
    hardware.vendor = identity.vendor.clone().or(hardware.vendor.take());
    hardware.model = identity.model.clone().or(hardware.model.take());
    hardware.serial_number = identity.serial_number.clone().or(hardware.serial_number.take());
    hardware.uuid = identity.uuid.clone().or(hardware.uuid.take());
    let now = now_time(facts);
    window_end(&mut history(&mut d.status).register, &now);
    d.status.power_state = Some(power.as_str().to_string());
    merge(&mut d, reachable_conditions(node.spec.online, *power, generation));
    let already_inspected = condition::find(&d.status.conditions, "Inspected")
        .is_some_and(|c| c.status == crate::api::ConditionStatus::True);
    match node.spec.inspection {
        InspectionMode::OutOfBand if !node.ipmi => {
            set_phase(&mut d, NodePhase::Inspecting);
            window_start(&mut history(&mut d.status).inspect, &now);
            ready(&mut d, generation, false, "Inspecting", "reading the inventory through the BMC");
            d.io = Some(Io::InspectOutOfBand);
        }
        InspectionMode::InBand if !already_inspected => {
            set_phase(&mut d, NodePhase::Inspecting);
            window_start(&mut history(&mut d.status).inspect, &now);
            d.status.provisioning.get_or_insert_with(Default::default).state = None;
            ready(&mut d, generation, false, "Inspecting", "booting girder's ramdisk to read the inventory");
            d = inspecting(node, d, facts, settings);
        }
        mode => {
            set_phase(&mut d, NodePhase::Available);
            if !already_inspected {
                let (reason, message) = match mode {
                    InspectionMode::Disabled => ("InspectionDisabled", "inspection is disabled in the spec"),
                    _ => (
                        "InBandInspectionRequired",
                        "this BMC gives no out-of-band inventory; it comes from the node agent once the node boots girder's ramdisk (set inspection: InBand to do it now)",
                    ),
                };
                merge(&mut d, vec![Condition::new("Inspected", false, reason, message, generation)]);
            }
            d = available(node, d, facts, settings);
        }
    }
    d
}

fn inspecting(node: &Node, mut d: Decision, facts: &Facts, settings: &Settings) -> Decision {
    let generation = node.generation;
    if node.spec.inspection != InspectionMode::InBand {
        // Out of band (also after a restart in this phase).
        let Some(inventory) = &facts.inventory else {
            d.io = Some(Io::InspectOutOfBand);
            return d;
        };
        let identity = d.status.hardware.take().unwrap_or_default();
        d.status.hardware = Some(HardwareDetails {
            vendor: inventory.vendor.clone().or(identity.vendor),
            model: inventory.model.clone().or(identity.model),
            serial_number: inventory.serial_number.clone().or(identity.serial_number),
            uuid: inventory.uuid.clone().or(identity.uuid),
            ..inventory.clone()
        });
        let nics = d.status.hardware.as_ref().map_or(0, |h| h.nics.len());
        merge(
            &mut d,
            vec![Condition::new(
                "Inspected",
                true,
                "OutOfBand",
                format!("inventory read through the BMC ({nics} NICs)"),
                generation,
            )],
        );
        window_end(&mut history(&mut d.status).inspect, &now_time(facts));
        set_phase(&mut d, NodePhase::Available);
        return power(node, d, facts, settings);
    }
    match operate(node, &mut d, facts, settings, RunAction::Inspect) {
        Operation::Pending => d,
        Operation::Succeeded(_) => {
            if close_session(&mut d, facts) {
                return d;
            }
            window_end(&mut history(&mut d.status).inspect, &now_time(facts));
            finish_operation(&mut d);
            set_phase(&mut d, NodePhase::Available);
            power(node, d, facts, settings)
        }
    }
}

// ---------------------------------------------------------------------------
// Available, Provisioning, Provisioned, Deprovisioning

fn available(node: &Node, mut d: Decision, facts: &Facts, settings: &Settings) -> Decision {
    if node.spec.image.is_some() || node.spec.boot_profile.is_some() {
        start_provisioning(&mut d, node, facts);
        return provisioning(node, d, facts, settings);
    }
    power(node, d, facts, settings)
}

fn start_provisioning(d: &mut Decision, node: &Node, facts: &Facts) {
    set_phase(d, NodePhase::Provisioning);
    window_start(&mut history(&mut d.status).provision, &now_time(facts));
    let p = d.status.provisioning.get_or_insert_with(Default::default);
    p.image = node.spec.image.clone();
    p.state = None;
    p.state_since = None;
    p.failures = 0;
    p.retry_after = None;
    p.root_device = None;
    p.steps.clear();
    d.status.error = None;
    merge(
        d,
        vec![Condition::new(
            "Provisioned",
            false,
            "Provisioning",
            "installing what the spec asks for",
            node.generation,
        )],
    );
    ready(d, node.generation, false, "Provisioning", "installing the node");
}

fn provisioning(node: &Node, mut d: Decision, facts: &Facts, settings: &Settings) -> Decision {
    let generation = node.generation;
    if node.spec.image.is_none() && node.spec.boot_profile.is_none() {
        start_deprovisioning(&mut d, node, facts);
        return deprovisioning(node, d, facts, settings);
    }
    if node.spec.boot_profile.is_some() {
        // Nothing is written: the profile is booted from the network on
        // every boot; power it on (or restart it) once through PXE.
        if !facts.booted_ramdisk {
            d.io = Some(Io::BootRamdisk);
            return d;
        }
        let p = d.status.provisioning.get_or_insert_with(Default::default);
        p.state = Some(ProvisioningState::Complete);
        p.image = None;
        return provisioned_now(node, d, facts, settings, "booting the boot profile from the network");
    }
    // A new image while provisioning starts over with it.
    if d.status.provisioning.as_ref().and_then(|p| p.image.as_ref()) != node.spec.image.as_ref() {
        start_provisioning(&mut d, node, facts);
    }
    let state = d.status.provisioning.as_ref().and_then(|p| p.state);
    if state == Some(ProvisioningState::BootingDisk) {
        return booting_disk(node, d, facts, settings);
    }
    match operate(node, &mut d, facts, settings, RunAction::Deploy) {
        Operation::Pending => {
            if let Some(error) = d.status.error.clone() {
                merge(&mut d, vec![Condition::new("Provisioned", false, &error.type_, error.message, generation)]);
            }
            d
        }
        Operation::Succeeded(report) => {
            // The state moves on only once the BMC took the request, so a
            // restart in between asks again rather than never.
            if !facts.booted_disk {
                d.io = Some(Io::BootDisk);
                return d;
            }
            let p = d.status.provisioning.get_or_insert_with(Default::default);
            p.root_device = report.root_device.clone();
            p.steps = report.steps.clone();
            p.state = Some(ProvisioningState::BootingDisk);
            p.state_since = Some(now_time(facts));
            p.failures = 0;
            p.retry_after = None;
            d.status.error = None;
            merge(
                &mut d,
                vec![Condition::new(
                    "Provisioned",
                    false,
                    "BootingDisk",
                    format!(
                        "image written to {}; booting the installed system",
                        report.root_device.as_deref().unwrap_or("the root disk")
                    ),
                    generation,
                )],
            );
            booting_disk(node, d, facts, settings)
        }
    }
}

fn booting_disk(node: &Node, mut d: Decision, facts: &Facts, settings: &Settings) -> Decision {
    let p = d.status.provisioning.clone().unwrap_or_default();
    let since = p.state_since.as_ref().map(|t| t.0).unwrap_or(facts.now);
    let agent = d.status.agent.as_ref();
    let installed = agent
        .is_some_and(|a| Some(a.session.as_str()) == p.session.as_deref() && a.boot_source == Some(BootSource::Disk))
        && facts.liveness.alive_in(p.session.as_deref());
    let boot_ms = facts.now.duration_since(since).as_millis().try_into().unwrap_or(i64::MAX);
    if installed {
        let p = d.status.provisioning.get_or_insert_with(Default::default);
        p.steps.retain(|s| s.name != "boot");
        p.steps.push(StepTiming {
            name: "boot".into(),
            started: Some(Time(since)),
            milliseconds: Some(boot_ms),
            bytes: None,
            message: Some("from the request to boot the disk until the installed system's agent reported".into()),
        });
        p.state = Some(ProvisioningState::Complete);
        let message = "the installed system booted from its disk and its agent reported";
        return provisioned_now(node, d, facts, settings, message);
    }
    if facts.now >= since + settings.installed_agent_timeout {
        let p = d.status.provisioning.get_or_insert_with(Default::default);
        p.state = Some(ProvisioningState::Complete);
        let minutes = settings.installed_agent_timeout.as_secs() / 60;
        return provisioned_now(
            node,
            d,
            facts,
            settings,
            &format!(
                "the image is written and the disk was booted, but the installed system did not start girder agent within {minutes} min"
            ),
        );
    }
    d.requeue = Requeue::After(settings.agent_poll_interval);
    d
}

fn provisioned_now(node: &Node, mut d: Decision, facts: &Facts, settings: &Settings, message: &str) -> Decision {
    set_phase(&mut d, NodePhase::Provisioned);
    window_end(&mut history(&mut d.status).provision, &now_time(facts));
    d.status.error = None;
    merge(&mut d, vec![Condition::new("Provisioned", true, "Provisioned", message, node.generation)]);
    power(node, d, facts, settings)
}

fn provisioned(node: &Node, mut d: Decision, facts: &Facts, settings: &Settings) -> Decision {
    let installed = d.status.provisioning.as_ref().and_then(|p| p.image.clone());
    match (&node.spec.image, &node.spec.boot_profile) {
        (None, None) => {
            start_deprovisioning(&mut d, node, facts);
            deprovisioning(node, d, facts, settings)
        }
        (Some(image), _) if Some(image) != installed.as_ref() => {
            // A different image: install it (the disk is overwritten anyway).
            start_provisioning(&mut d, node, facts);
            provisioning(node, d, facts, settings)
        }
        _ => power(node, d, facts, settings),
    }
}

fn start_deprovisioning(d: &mut Decision, node: &Node, facts: &Facts) {
    set_phase(d, NodePhase::Deprovisioning);
    window_start(&mut history(&mut d.status).deprovision, &now_time(facts));
    let p = d.status.provisioning.get_or_insert_with(Default::default);
    p.state = None;
    p.state_since = None;
    p.failures = 0;
    p.retry_after = None;
    p.steps.clear();
    d.status.error = None;
    merge(
        d,
        vec![Condition::new("Provisioned", false, "Deprovisioning", "removing the installation", node.generation)],
    );
    ready(d, node.generation, false, "Deprovisioning", "removing the installation");
}

fn deprovisioning(node: &Node, mut d: Decision, facts: &Facts, settings: &Settings) -> Decision {
    let wrote_image = d.status.provisioning.as_ref().is_some_and(|p| p.image.is_some());
    if node.spec.cleaning == CleaningMode::Disabled || !wrote_image {
        if close_session(&mut d, facts) {
            return d;
        }
        return deprovisioned(node, d, facts, settings);
    }
    match operate(node, &mut d, facts, settings, RunAction::Clean) {
        Operation::Pending => d,
        Operation::Succeeded(report) => {
            if close_session(&mut d, facts) {
                return d;
            }
            if let Some(p) = d.status.provisioning.as_mut() {
                p.steps = report.steps.clone();
            }
            deprovisioned(node, d, facts, settings)
        }
    }
}

fn deprovisioned(node: &Node, mut d: Decision, facts: &Facts, settings: &Settings) -> Decision {
    finish_operation(&mut d);
    if let Some(p) = d.status.provisioning.as_mut() {
        p.image = None;
        p.root_device = None;
    }
    window_end(&mut history(&mut d.status).deprovision, &now_time(facts));
    set_phase(&mut d, NodePhase::Available);
    merge(&mut d, vec![Condition::new("Provisioned", false, "Deprovisioned", "nothing is installed", node.generation)]);
    // A new image asked for meanwhile is installed next.
    if node.spec.image.is_some() || node.spec.boot_profile.is_some() {
        d.requeue = Requeue::After(Duration::ZERO);
        return d;
    }
    power(node, d, facts, settings)
}

fn finish_operation(d: &mut Decision) {
    if let Some(p) = d.status.provisioning.as_mut() {
        p.state = Some(ProvisioningState::Complete);
        p.state_since = None;
        p.failures = 0;
        p.retry_after = None;
        p.run = None;
    }
    d.status.error = None;
}

/// Asks for the session's Secret to go, once; true while that is pending.
fn close_session(d: &mut Decision, facts: &Facts) -> bool {
    let open = d.status.provisioning.as_ref().is_some_and(|p| p.session.is_some());
    if open && !facts.session_closed {
        d.io = Some(Io::CloseSession);
        return true;
    }
    if let Some(p) = d.status.provisioning.as_mut() {
        p.session = None;
    }
    false
}

// ---------------------------------------------------------------------------
// Power

/// The power action that brings `actual` to `online`, if any (pure).
/// Transitions under way are left to finish.
pub fn power_action(online: bool, actual: PowerState) -> Option<PowerAction> {
    match (online, actual) {
        (true, PowerState::Off | PowerState::Unknown) => Some(PowerAction::On),
        (false, PowerState::On | PowerState::Unknown) => Some(PowerAction::ForceOff),
        _ => None,
    }
}

/// Whether turning `status`'s node off asks its operating system first: an
/// installed system shuts down cleanly; girder's ramdisk, or a machine with
/// nothing installed, has nothing to lose.
fn soft_off(node: &Node, status: &BareMetalNodeStatus) -> bool {
    node.spec.power_off_mode == PowerOffMode::Soft && status.phase == Some(NodePhase::Provisioned)
}

/// The power action to send for `action` (pure): a forced power-off is
/// first a request to shut down where `soft`, and forced once that has had
/// `timeout` since `since`; `None` while it still may.
pub fn power_off_step(
    action: PowerAction,
    soft: bool,
    since: Option<jiff::Timestamp>,
    now: jiff::Timestamp,
    timeout: Duration,
) -> Option<PowerAction> {
    if action != PowerAction::ForceOff || !soft {
        return Some(action);
    }
    match since {
        None => Some(PowerAction::GracefulShutdown),
        Some(since) if now.duration_since(since).as_secs_f64() >= timeout.as_secs_f64() => Some(PowerAction::ForceOff),
        Some(_) => None,
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

/// Available and Provisioned: keep power where the spec says.
fn power(node: &Node, mut d: Decision, facts: &Facts, settings: &Settings) -> Decision {
    let generation = node.generation;
    let requested = facts.power_requested.map(|a| a.target_state());
    let known = facts.power.or(facts.registered.as_ref().map(|(_, p)| *p)).or(requested);
    let Some(actual) = known else {
        d.io = Some(Io::ReadPower);
        return d;
    };
    let mut shown = actual;
    let mut shutting_down = None;
    if let Some(action) = facts.power_requested {
        shown = if action.target_state() == PowerState::On { PowerState::PoweringOn } else { PowerState::PoweringOff };
    } else if let Some(action) = power_action(node.spec.online, actual) {
        let since = d.status.soft_power_off_since.as_ref().map(|t| t.0);
        match power_off_step(action, soft_off(node, &d.status), since, facts.now, settings.soft_power_off_timeout) {
            // Asked already, and the BMC may still be carrying it out: asking
            // again would not make it sooner (some BMCs start over).
            Some(action) if awaiting(facts, action, settings.power_change_timeout) => {
                shown = if action.target_state() == PowerState::On {
                    PowerState::PoweringOn
                } else {
                    PowerState::PoweringOff
                };
            }
            Some(action) => {
                if action == PowerAction::GracefulShutdown {
                    d.status.soft_power_off_since = Some(Time(facts.now));
                }
                d.io = Some(Io::Power(action));
                return d;
            }
            None => {
                shown = PowerState::PoweringOff;
                shutting_down = since;
            }
        }
    }
    if node.spec.online || actual == PowerState::Off {
        d.status.soft_power_off_since = None;
    }
    d.status.power_state = Some(shown.as_str().to_string());
    merge(&mut d, reachable_conditions(node.spec.online, shown, generation));
    if let Some(since) = shutting_down {
        let forced = settings.soft_power_off_timeout.as_secs();
        let message = format!(
            "asked the operating system to shut down at {since} (spec.powerOffMode Soft); power is forced off if it is still on {forced} s after"
        );
        merge(&mut d, vec![Condition::new("Ready", false, "ShuttingDown", message, generation)]);
    }
    let changing = matches!(shown, PowerState::PoweringOn | PowerState::PoweringOff);
    d.requeue = Requeue::After(if changing { Duration::from_secs(5) } else { settings.power_poll_interval });
    d
}

/// Whether `action` was asked of the BMC less than `timeout` ago.
fn awaiting(facts: &Facts, action: PowerAction, timeout: Duration) -> bool {
    facts.power_asked.is_some_and(|(asked, at)| asked == action && facts.now < at + timeout)
}

// ---------------------------------------------------------------------------
// Work through the agent

/// Where an agent operation stands after one decision.
enum Operation {
    /// Still under way (the decision says what to do or when to look again).
    Pending,
    /// The agent reported success for the current run.
    Succeeded(RunReport),
}

/// The run the spec asks for now (pure).
fn request(node: &Node, action: RunAction, id: String) -> AgentRun {
    let spec = node.spec;
    match action {
        RunAction::Inspect => {
            AgentRun { id, action, image: None, root_device_hints: None, user_data: None, cleaning: None }
        }
        RunAction::Deploy => AgentRun {
            id,
            action,
            image: spec.image.clone(),
            root_device_hints: spec.root_device_hints.clone(),
            user_data: spec.user_data.clone(),
            cleaning: None,
        },
        RunAction::Clean => AgentRun {
            id,
            action,
            image: None,
            root_device_hints: None,
            user_data: None,
            cleaning: Some(spec.cleaning),
        },
    }
}

/// Whether two runs ask for the same thing (ids aside).
fn same_request(a: &AgentRun, b: &AgentRun) -> bool {
    AgentRun { id: String::new(), ..a.clone() } == AgentRun { id: String::new(), ..b.clone() }
}

/// The shared sub-machine of every operation done through the agent.
fn operate(node: &Node, d: &mut Decision, facts: &Facts, settings: &Settings, action: RunAction) -> Operation {
    let generation = node.generation;
    let now = now_time(facts);
    let has_bmc = node.spec.bmc.is_some();
    let p = d.status.provisioning.get_or_insert_with(Default::default).clone();
    let session = p.session.clone();
    let alive = facts.liveness.alive_in(session.as_deref());
    // Work on the disks runs only in girder's ramdisk, never from the
    // installed system: a new run may reuse the session only then.
    let in_ramdisk = alive
        && d.status.agent.as_ref().is_some_and(|a| {
            Some(a.session.as_str()) == session.as_deref() && a.boot_source == Some(BootSource::Network)
        });
    let current_run = p.run.clone().filter(|r| r.action == action);
    match p.state {
        None | Some(ProvisioningState::Complete) => {
            begin(node, d, facts, settings, action, in_ramdisk);
            Operation::Pending
        }
        Some(ProvisioningState::BootingRamdisk) => {
            if session.is_some() && !facts.session_opened && p.run.is_none() {
                // Should not happen; open a fresh session rather than guess.
                begin(node, d, facts, settings, action, false);
                return Operation::Pending;
            }
            if !has_bmc || facts.booted_ramdisk {
                set_state(d, ProvisioningState::WaitingForAgent, &now);
                d.requeue = Requeue::After(settings.agent_poll_interval);
            } else {
                d.io = Some(Io::BootRamdisk);
            }
            Operation::Pending
        }
        Some(ProvisioningState::WaitingForAgent) => {
            let Some(run) = current_run else {
                begin(node, d, facts, settings, action, in_ramdisk);
                return Operation::Pending;
            };
            let report = d
                .status
                .agent
                .as_ref()
                .filter(|a| Some(a.session.as_str()) == session.as_deref())
                .and_then(|a| a.run.as_ref())
                .filter(|r| r.id == run.id)
                .cloned();
            if let Some(report) = &report {
                match report.state {
                    RunState::Succeeded => return Operation::Succeeded(report.clone()),
                    RunState::Failed => {
                        let reason = report.reason.as_deref().unwrap_or("RunFailed");
                        let fallback = format!("the agent's {action:?} run failed");
                        let message = report.message.as_deref().unwrap_or(&fallback);
                        fail(d, facts, generation, reason, message);
                        if let Some(p) = d.status.provisioning.as_mut() {
                            p.steps = report.steps.clone();
                        }
                        return Operation::Pending;
                    }
                    RunState::Running => {}
                }
            }
            let since = p.state_since.as_ref().map(|t| t.0).unwrap_or(facts.now);
            let lapsed =
                matches!(&facts.liveness, Liveness::Lapsed { session: s } if Some(s.as_str()) == session.as_deref());
            if lapsed {
                let what = if report.is_some() { "while it ran" } else { "before it took up the run" };
                fail(
                    d,
                    facts,
                    generation,
                    "AgentLost",
                    &format!("the agent stopped sending heartbeats {what}; the machine is booted again"),
                );
                lose_session(d);
            } else if !alive && report.is_none() && has_bmc && facts.now >= since + settings.agent_boot_timeout {
                let minutes = settings.agent_boot_timeout.as_secs() / 60;
                fail(
                    d,
                    facts,
                    generation,
                    "AgentBootTimeout",
                    &format!(
                        "no agent connected within {minutes} min of booting girder's ramdisk; check the machine's console (firmware boot order, PXE, girder pxe's log)"
                    ),
                );
                lose_session(d);
            } else {
                let (reason, message) = match (&report, alive) {
                    (Some(r), _) => (
                        "Running",
                        format!("the agent is running {action:?}: {}", r.step.as_deref().unwrap_or("starting")),
                    ),
                    (None, true) => ("AgentConnected", format!("the agent is connected; {action:?} starts shortly")),
                    (None, false) => ("WaitingForAgent", "waiting for the machine to boot girder's ramdisk".into()),
                };
                ready(d, generation, false, reason, message);
                d.requeue = Requeue::After(settings.agent_poll_interval);
            }
            Operation::Pending
        }
        Some(ProvisioningState::Failed) => {
            let wanted = request(node, action, String::new());
            let reason = d.status.error.as_ref().map(|e| e.type_.clone()).unwrap_or_default();
            let unchanged = current_run.as_ref().is_some_and(|r| same_request(r, &wanted));
            if PERMANENT.contains(&reason.as_str()) && unchanged {
                // Retrying cannot help until the spec changes; a spec change brings us back.
                d.requeue = Requeue::OnChange;
                return Operation::Pending;
            }
            if !unchanged && let Some(p) = d.status.provisioning.as_mut() {
                // A new request: its attempts are counted afresh.
                p.failures = 0;
                p.retry_after = None;
            }
            let retry_at = p.retry_after.as_ref().map(|t| t.0);
            if let Some(at) = retry_at.filter(|at| *at > facts.now && unchanged) {
                let wait = facts.now.duration_until(at).unsigned_abs();
                d.requeue = Requeue::After(wait.min(Duration::from_secs(600)));
                return Operation::Pending;
            }
            begin(node, d, facts, settings, action, in_ramdisk);
            Operation::Pending
        }
        Some(ProvisioningState::BootingDisk) => Operation::Pending,
    }
}

/// Starts a run: in the current session while its agent is alive (no
/// reboot), else in a new session with a boot into the ramdisk.
fn begin(node: &Node, d: &mut Decision, facts: &Facts, settings: &Settings, action: RunAction, reuse: bool) {
    let now = now_time(facts);
    let p = d.status.provisioning.get_or_insert_with(Default::default);
    // Unique within the session, whatever was asked before (an agent
    // re-sends the report of a run id it already did).
    let tag = &facts.fresh_id[..facts.fresh_id.len().min(6)];
    if reuse && let Some(session) = p.session.clone() {
        p.run = Some(request(node, action, format!("{session}-{}-{tag}", action_word(action))));
        set_state(d, ProvisioningState::WaitingForAgent, &now);
        d.requeue = Requeue::After(settings.agent_poll_interval);
        if !facts.granted {
            d.io = Some(Io::Grant);
        }
        return;
    }
    let session = facts.fresh_id.clone();
    p.run = Some(request(node, action, format!("{session}-{}-{tag}", action_word(action))));
    p.session = Some(session);
    set_state(d, ProvisioningState::BootingRamdisk, &now);
    if !facts.session_opened {
        d.io = Some(Io::OpenSession);
    }
}

fn action_word(action: RunAction) -> &'static str {
    match action {
        RunAction::Inspect => "inspect",
        RunAction::Deploy => "deploy",
        RunAction::Clean => "clean",
    }
}

fn set_state(d: &mut Decision, state: ProvisioningState, now: &Time) {
    let p = d.status.provisioning.get_or_insert_with(Default::default);
    if p.state != Some(state) {
        p.state = Some(state);
        p.state_since = Some(now.clone());
    }
}

/// The session's agent is gone: the next attempt opens a new session.
fn lose_session(d: &mut Decision) {
    if let Some(p) = d.status.provisioning.as_mut() {
        p.session = None;
    }
}

/// Records a failed attempt: condition, `status.error`, backoff.
fn fail(d: &mut Decision, facts: &Facts, generation: Option<i64>, reason: &str, message: &str) {
    let now = now_time(facts);
    let p = d.status.provisioning.get_or_insert_with(Default::default);
    p.failures = p.failures.saturating_add(1);
    let delay = retry_delay(p.failures);
    p.retry_after = Some(Time(facts.now + jiff::SignedDuration::try_from(delay).unwrap_or_default()));
    set_state(d, ProvisioningState::Failed, &now);
    let permanent = PERMANENT.contains(&reason);
    let next = if permanent {
        "fix the spec to try again".to_string()
    } else {
        format!("trying again in {} s", delay.as_secs())
    };
    let full = format!("{message}; {next}");
    let (count, since) = match &d.status.error {
        Some(previous) if previous.type_ == reason => (previous.count.saturating_add(1), previous.since.clone()),
        _ => (1, now.clone()),
    };
    d.status.error =
        Some(crate::api::node::NodeError { type_: reason.to_string(), message: full.clone(), count, since });
    ready(d, generation, false, reason, full);
    d.requeue = if permanent { Requeue::OnChange } else { Requeue::After(delay) };
}

// ---------------------------------------------------------------------------
// Discovered machines and what every agent reports

fn discovered(node: &Node, mut d: Decision, facts: &Facts, settings: &Settings) -> Decision {
    set_phase(&mut d, NodePhase::Discovered);
    if node.spec.image.is_some() || node.spec.boot_profile.is_some() {
        merge(
            &mut d,
            vec![Condition::new(
                "Provisioned",
                false,
                "NoBMC",
                "declare spec.bmc: girder installs a machine only through its BMC (it boots and restarts it)",
                node.generation,
            )],
        );
    }
    let inspected = condition::find(&d.status.conditions, "Inspected")
        .is_some_and(|c| c.status == crate::api::ConditionStatus::True);
    if !node.discovered || inspected {
        // Once inspected, a discovered machine's agent has nothing left to do.
        if node.discovered {
            close_session(&mut d, facts);
        }
        return d;
    }
    match operate(node, &mut d, facts, settings, RunAction::Inspect) {
        Operation::Pending => d,
        Operation::Succeeded(_) => {
            finish_operation(&mut d);
            close_session(&mut d, facts);
            d
        }
    }
}

/// The inventory an agent of the current session reported becomes the
/// node's hardware (BMC identity fills what the agent could not read).
fn fold_agent_inventory(node: &Node, status: &mut BareMetalNodeStatus) {
    let session = status.provisioning.as_ref().and_then(|p| p.session.clone());
    let Some(inventory) = status
        .agent
        .as_ref()
        .filter(|a| session.as_deref() == Some(a.session.as_str()))
        .and_then(|a| a.inventory.clone())
    else {
        return;
    };
    let old = status.hardware.clone().unwrap_or_default();
    let mut merged = HardwareDetails {
        vendor: inventory.vendor.clone().or(old.vendor),
        model: inventory.model.clone().or(old.model),
        serial_number: inventory.serial_number.clone().or(old.serial_number),
        uuid: inventory.uuid.clone().or(old.uuid),
        ..inventory
    };
    if let (Some(firmware), Some(bmc)) = (merged.firmware.as_mut(), old.firmware.and_then(|f| f.bmc)) {
        firmware.bmc.get_or_insert(bmc);
    }
    if status.hardware.as_ref() != Some(&merged) {
        status.hardware = Some(merged);
    }
    let nics = status.hardware.as_ref().map_or(0, |h| h.nics.len());
    let disks = status.hardware.as_ref().map_or(0, |h| h.storage.len());
    status.conditions = condition::merge(
        &status.conditions,
        vec![Condition::new(
            "Inspected",
            true,
            "InBand",
            format!("inventory reported by the node agent ({nics} NICs, {disks} disks)"),
            node.generation,
        )],
    );
}

/// `AgentConnected`, once the node has had an agent session.
fn agent_condition(node: &Node, facts: &Facts, status: &mut BareMetalNodeStatus) {
    let Some(p) = status.provisioning.as_ref() else { return };
    let session = p.session.as_deref();
    let expected = matches!(
        p.state,
        Some(ProvisioningState::BootingRamdisk | ProvisioningState::WaitingForAgent | ProvisioningState::Failed)
    );
    let reported = status.agent.as_ref().filter(|a| Some(a.session.as_str()) == session);
    let source = reported.and_then(|a| a.boot_source).map_or("", |s| match s {
        BootSource::Network => " from girder's ramdisk",
        BootSource::Disk => " from the installed system",
    });
    let (ok, reason, message) = match (&facts.liveness, session) {
        (_, None) if node.spec.maintenance => {
            (false, "Revoked", "maintenance revoked the agent's credentials".to_string())
        }
        (_, None) => (false, "NoSession", "no agent is expected now".to_string()),
        (Liveness::Alive { session: s }, Some(current)) if s == current => {
            (true, "Heartbeat", format!("the agent{source} sends heartbeats"))
        }
        (Liveness::Lapsed { session: s }, Some(current)) if s == current => {
            (false, "HeartbeatLapsed", "the agent stopped sending heartbeats".to_string())
        }
        _ if expected => (false, "WaitingForAgent", "waiting for the machine's agent to connect".to_string()),
        _ => (false, "NotConnected", "the installed system's agent is not connected".to_string()),
    };
    status.conditions = condition::merge(
        &status.conditions,
        vec![Condition::new("AgentConnected", ok, reason, message, node.generation)],
    );
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;
