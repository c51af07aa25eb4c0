//! The lifecycle without a cluster: a simulated BMC and agent answer the
//! I/O the decisions ask for, and each test walks a node through its phases.

use super::*;
use crate::api::ConditionStatus;
use crate::api::node::{BmcSpec, ImageSpec, PowerOffMode, RootDeviceHints, SecretReference};
use crate::api::provisioning::AgentStatus;

/// The machine, its BMC and its agent, as the tests play them.
struct World {
    power: PowerState,
    /// The installed system does not shut down when asked.
    ignores_shutdown: bool,
    /// The BMC takes power requests but carries them out later (the test
    /// sets `power` when it does).
    slow_power: bool,
    /// The last power action asked and when, as the controller keeps it.
    asked: Option<(PowerAction, jiff::Timestamp)>,
    /// Every I/O asked for, in order.
    log: Vec<Io>,
    sessions: u32,
    now: i64,
    liveness: Liveness,
}

impl World {
    fn new() -> Self {
        World {
            power: PowerState::Off,
            ignores_shutdown: false,
            slow_power: false,
            asked: None,
            log: Vec::new(),
            sessions: 0,
            now: 1_000_000,
            liveness: Liveness::Absent,
        }
    }

    fn facts(&mut self) -> Facts {
        self.sessions += 1;
        let mut facts = Facts::new(
            jiff::Timestamp::from_second(self.now).unwrap(),
            format!("s{}", self.sessions),
            self.liveness.clone(),
        );
        facts.power_asked = self.asked;
        facts
    }

    /// One reconcile: decide and do until nothing is left; returns the last decision.
    fn reconcile(&mut self, node: &Node, status: &mut BareMetalNodeStatus) -> Decision {
        let mut facts = self.facts();
        for _ in 0..24 {
            let d = decide(node, status, &facts, &settings());
            let Some(io) = d.io else {
                *status = d.status.clone();
                return d;
            };
            self.log.push(io);
            match io {
                Io::Register => {
                    facts.registered =
                        Some((SystemIdentity { vendor: Some("QEMU".into()), ..Default::default() }, self.power));
                    facts.bmc_changed = false;
                }
                Io::InspectOutOfBand => {
                    facts.inventory = Some(HardwareDetails { model: Some("Standard PC".into()), ..Default::default() })
                }
                Io::ReadPower => {
                    facts.power = Some(self.power);
                    // Forgotten once the power is what was asked for.
                    self.asked = self.asked.filter(|(action, _)| action.target_state() != self.power);
                    facts.power_asked = self.asked;
                }
                Io::Power(action) => {
                    let ignored = self.slow_power || (action == PowerAction::GracefulShutdown && self.ignores_shutdown);
                    if !ignored {
                        self.power = action.target_state();
                    }
                    facts.power_requested = Some(action);
                    self.asked = Some((action, facts.now));
                    facts.power_asked = self.asked;
                }
                Io::BootRamdisk => {
                    self.power = PowerState::On;
                    facts.booted_ramdisk = true;
                    facts.power_requested = Some(PowerAction::On);
                }
                Io::BootDisk => {
                    self.power = PowerState::On;
                    facts.booted_disk = true;
                    facts.power_requested = Some(PowerAction::On);
                }
                Io::OpenSession => facts.session_opened = true,
                Io::CloseSession => facts.session_closed = true,
                Io::Grant => facts.granted = true,
            }
            *status = d.status;
        }
        panic!("the decisions did not settle: {:?}", self.log);
    }

    fn later(&mut self, seconds: i64) {
        self.now += seconds;
    }

    fn count(&self, io: Io) -> usize {
        self.log.iter().filter(|i| **i == io).count()
    }
}

fn settings() -> Settings {
    Settings {
        power_poll_interval: Duration::from_secs(60),
        agent_boot_timeout: Duration::from_secs(600),
        installed_agent_timeout: Duration::from_secs(900),
        agent_poll_interval: Duration::from_secs(10),
        soft_power_off_timeout: Duration::from_secs(180),
        power_change_timeout: Duration::from_secs(60),
    }
}

fn spec() -> BareMetalNodeSpec {
    BareMetalNodeSpec {
        bmc: Some(BmcSpec {
            address: "redfish+http://127.0.0.1:8000/redfish/v1/Systems/n1".into(),
            credentials_secret_ref: SecretReference { name: "bmc".into() },
            disable_certificate_verification: false,
        }),
        boot_mac_address: Some("52:54:00:00:00:01".into()),
        ..Default::default()
    }
}

fn image(checksum: &str) -> ImageSpec {
    ImageSpec {
        url: "http://10.0.0.1:8081/assets/os.img".into(),
        checksum: checksum.into(),
        checksum_type: Default::default(),
        format: Default::default(),
    }
}

fn node(spec: &BareMetalNodeSpec) -> Node<'_> {
    Node { spec, generation: Some(1), ipmi: false, discovered: false }
}

fn cond(status: &BareMetalNodeStatus, type_: &str) -> (ConditionStatus, String) {
    let c = condition::find(&status.conditions, type_).unwrap_or_else(|| panic!("no {type_}: {:?}", status.conditions));
    (c.status, c.reason.clone())
}

fn session(status: &BareMetalNodeStatus) -> String {
    status.provisioning.as_ref().and_then(|p| p.session.clone()).expect("a session")
}

fn run(status: &BareMetalNodeStatus) -> AgentRun {
    status.provisioning.as_ref().and_then(|p| p.run.clone()).expect("a run")
}

/// The agent of the current session, booted from `source`, reports `state` for the current run.
fn agent_reports(world: &mut World, status: &mut BareMetalNodeStatus, source: BootSource, state: Option<RunState>) {
    let session = session(status);
    let run = status.provisioning.as_ref().and_then(|p| p.run.clone());
    world.liveness = Liveness::Alive { session: session.clone() };
    status.agent = Some(AgentStatus {
        session,
        boot_source: Some(source),
        inventory: Some(HardwareDetails {
            serial_number: Some("SN1".into()),
            nics: vec![crate::api::node::NicDetails { mac: "52:54:00:00:00:01".into(), ..Default::default() }],
            ..Default::default()
        }),
        run: run.zip(state).map(|(run, state)| RunReport {
            id: run.id,
            state,
            step: Some("write".into()),
            reason: None,
            message: None,
            root_device: Some("/dev/vdb".into()),
            steps: vec![StepTiming {
                name: "download".into(),
                started: None,
                milliseconds: Some(1200),
                bytes: Some(1 << 20),
                message: None,
            }],
        }),
        ..Default::default()
    });
}

fn agent_fails(world: &mut World, status: &mut BareMetalNodeStatus, reason: &str) {
    agent_reports(world, status, BootSource::Network, Some(RunState::Failed));
    if let Some(run) = status.agent.as_mut().and_then(|a| a.run.as_mut()) {
        run.reason = Some(reason.into());
        run.message = Some(format!("it failed: {reason}"));
    }
}

/// A node taken to Available through registration and out-of-band inspection.
fn available(world: &mut World, spec: &BareMetalNodeSpec) -> BareMetalNodeStatus {
    let mut status = BareMetalNodeStatus::default();
    world.reconcile(&node(spec), &mut status);
    assert_eq!(status.phase, Some(NodePhase::Available));
    status
}

/// A node Available, then given `spec.image`: its ramdisk is booting.
fn deploying(world: &mut World, spec: &BareMetalNodeSpec) -> BareMetalNodeStatus {
    let mut status = available(world, &BareMetalNodeSpec { image: None, ..spec.clone() });
    world.reconcile(&node(spec), &mut status);
    status
}

/// A node taken through provisioning of `spec.image` to Provisioned.
fn provisioned(world: &mut World, spec: &BareMetalNodeSpec) -> BareMetalNodeStatus {
    let mut status = deploying(world, spec);
    agent_reports(world, &mut status, BootSource::Network, Some(RunState::Succeeded));
    world.reconcile(&node(spec), &mut status);
    agent_reports(world, &mut status, BootSource::Disk, None);
    world.reconcile(&node(spec), &mut status);
    assert_eq!(status.phase, Some(NodePhase::Provisioned));
    status
}

#[test]
fn a_redfish_node_registers_is_inspected_out_of_band_and_keeps_power_as_asked() {
    let mut world = World::new();
    let spec = BareMetalNodeSpec { online: true, ..spec() };
    let mut status = BareMetalNodeStatus::default();
    let d = world.reconcile(&node(&spec), &mut status);
    assert_eq!(world.log, [Io::Register, Io::InspectOutOfBand, Io::Power(PowerAction::On)]);
    assert_eq!(status.phase, Some(NodePhase::Available));
    assert_eq!(cond(&status, "Inspected"), (ConditionStatus::True, "OutOfBand".into()));
    assert_eq!(status.power_state.as_deref(), Some("PoweringOn"));
    assert_eq!(cond(&status, "Ready").1, "PowerChanging");
    assert_eq!(d.requeue, Requeue::After(Duration::from_secs(5)));
    let history = status.operation_history.clone().unwrap();
    assert!(history.register.unwrap().end.is_some() && history.inspect.unwrap().end.is_some());

    world.log.clear();
    let d = world.reconcile(&node(&spec), &mut status);
    assert_eq!(world.log, [Io::ReadPower], "steady state: one power read");
    assert_eq!(cond(&status, "Ready"), (ConditionStatus::True, "AsDesired".into()));
    assert_eq!(d.requeue, Requeue::After(Duration::from_secs(60)));
}

#[test]
fn a_power_request_is_not_repeated_while_the_bmc_may_still_carry_it_out() {
    let mut world = World::new();
    let mut status = available(&mut world, &spec());
    world.slow_power = true;
    let spec = BareMetalNodeSpec { online: true, ..spec() };
    world.log.clear();
    world.reconcile(&node(&spec), &mut status);
    assert_eq!(world.log, [Io::ReadPower, Io::Power(PowerAction::On)]);
    // Every 5 s the power is read, and the request not sent again for the
    // 60 s the BMC is given to carry it out.
    for _ in 0..11 {
        world.later(5);
        world.log.clear();
        let d = world.reconcile(&node(&spec), &mut status);
        assert_eq!(world.log, [Io::ReadPower]);
        assert_eq!(status.power_state.as_deref(), Some("PoweringOn"));
        assert_eq!(d.requeue, Requeue::After(Duration::from_secs(5)));
    }
    world.later(5);
    world.log.clear();
    world.reconcile(&node(&spec), &mut status);
    assert_eq!(world.log, [Io::ReadPower, Io::Power(PowerAction::On)], "asked again after 60 s");
    // The BMC does it: the request is forgotten, and a later change of the
    // spec is asked for at once.
    world.power = PowerState::On;
    world.later(5);
    world.log.clear();
    world.reconcile(&node(&spec), &mut status);
    assert_eq!((world.log.as_slice(), status.power_state.as_deref()), ([Io::ReadPower].as_slice(), Some("On")));
    assert_eq!(world.asked, None);
    let off = BareMetalNodeSpec { online: false, power_off_mode: PowerOffMode::Hard, ..spec };
    world.log.clear();
    world.reconcile(&node(&off), &mut status);
    assert_eq!(world.log, [Io::ReadPower, Io::Power(PowerAction::ForceOff)]);
}

#[test]
fn ipmi_and_disabled_inspection_go_straight_to_available_and_say_why() {
    let mut world = World::new();
    let spec = spec();
    let mut status = BareMetalNodeStatus::default();
    world.reconcile(&Node { ipmi: true, ..node(&spec) }, &mut status);
    assert_eq!(world.log, [Io::Register]);
    assert_eq!(status.phase, Some(NodePhase::Available));
    assert_eq!(cond(&status, "Inspected"), (ConditionStatus::False, "InBandInspectionRequired".into()));

    let spec = BareMetalNodeSpec { inspection: InspectionMode::Disabled, ..spec };
    let mut status = BareMetalNodeStatus::default();
    World::new().reconcile(&node(&spec), &mut status);
    assert_eq!(cond(&status, "Inspected").1, "InspectionDisabled");
}

#[test]
fn a_changed_bmc_registers_again() {
    let mut world = World::new();
    let spec = spec();
    let mut status = available(&mut world, &spec);
    world.log.clear();
    let mut facts = world.facts();
    facts.bmc_changed = true;
    let d = decide(&node(&spec), &status, &facts, &settings());
    assert_eq!((d.io, d.status.phase), (Some(Io::Register), Some(NodePhase::Registering)));
    status.phase = Some(NodePhase::Provisioned);
    assert_eq!(decide(&node(&spec), &status, &facts, &settings()).io, Some(Io::Register));
}

#[test]
fn in_band_inspection_boots_the_ramdisk_and_takes_the_agents_inventory() {
    let mut world = World::new();
    let spec = BareMetalNodeSpec { inspection: InspectionMode::InBand, ..spec() };
    let mut status = BareMetalNodeStatus::default();
    world.reconcile(&node(&spec), &mut status);
    assert_eq!(world.log, [Io::Register, Io::OpenSession, Io::BootRamdisk]);
    assert_eq!(status.phase, Some(NodePhase::Inspecting));
    assert_eq!(run(&status).action, RunAction::Inspect);
    let p = status.provisioning.clone().unwrap();
    assert_eq!(p.state, Some(ProvisioningState::WaitingForAgent));
    assert_eq!(cond(&status, "AgentConnected"), (ConditionStatus::False, "WaitingForAgent".into()));

    world.later(60);
    agent_reports(&mut world, &mut status, BootSource::Network, Some(RunState::Succeeded));
    world.log.clear();
    world.reconcile(&node(&spec), &mut status);
    assert_eq!(world.log, [Io::CloseSession, Io::ReadPower, Io::Power(PowerAction::ForceOff)]);
    assert_eq!(status.phase, Some(NodePhase::Available));
    assert_eq!(cond(&status, "Inspected"), (ConditionStatus::True, "InBand".into()));
    let hardware = status.hardware.clone().unwrap();
    assert_eq!(hardware.serial_number.as_deref(), Some("SN1"));
    assert_eq!(hardware.vendor.as_deref(), Some("QEMU"), "BMC identity fills what the agent lacks");
    assert_eq!(status.provisioning.as_ref().unwrap().session, None);
}

#[test]
fn provisioning_writes_the_image_boots_the_disk_and_waits_for_the_installed_agent() {
    let mut world = World::new();
    let mut spec = spec();
    let mut status = available(&mut world, &spec);
    spec.image = Some(image(&"a".repeat(64)));
    spec.user_data = Some(SecretReference { name: "ud".into() });
    world.log.clear();
    world.reconcile(&node(&spec), &mut status);
    assert_eq!(world.log, [Io::OpenSession, Io::BootRamdisk]);
    assert_eq!(status.phase, Some(NodePhase::Provisioning));
    assert_eq!(status.power_state.as_deref(), Some("On"), "booted through the BMC");
    let asked = run(&status);
    assert_eq!(asked.action, RunAction::Deploy);
    assert_eq!(asked.image, spec.image);
    assert_eq!(asked.user_data, spec.user_data);
    assert_eq!(cond(&status, "Provisioned"), (ConditionStatus::False, "Provisioning".into()));

    // Running: nothing to do but wait, and say so.
    world.later(30);
    agent_reports(&mut world, &mut status, BootSource::Network, Some(RunState::Running));
    world.log.clear();
    let d = world.reconcile(&node(&spec), &mut status);
    assert!(world.log.is_empty(), "{:?}", world.log);
    assert_eq!(d.requeue, Requeue::After(Duration::from_secs(10)));
    assert_eq!(cond(&status, "Ready").1, "Running");
    assert_eq!(cond(&status, "AgentConnected"), (ConditionStatus::True, "Heartbeat".into()));

    world.later(30);
    agent_reports(&mut world, &mut status, BootSource::Network, Some(RunState::Succeeded));
    world.reconcile(&node(&spec), &mut status);
    assert_eq!(world.log, [Io::BootDisk]);
    let p = status.provisioning.clone().unwrap();
    assert_eq!((p.state, p.root_device.as_deref()), (Some(ProvisioningState::BootingDisk), Some("/dev/vdb")));
    assert_eq!(cond(&status, "Provisioned").1, "BootingDisk");

    // The ramdisk's agent is gone; the installed system's agent reports in the same session.
    world.later(40);
    world.liveness = Liveness::Lapsed { session: session(&status) };
    world.log.clear();
    world.reconcile(&node(&spec), &mut status);
    assert!(world.log.is_empty(), "waiting for the installed system: {:?}", world.log);
    agent_reports(&mut world, &mut status, BootSource::Disk, None);
    world.reconcile(&node(&spec), &mut status);
    assert_eq!(status.phase, Some(NodePhase::Provisioned));
    assert_eq!(cond(&status, "Provisioned"), (ConditionStatus::True, "Provisioned".into()));
    let steps: Vec<String> = status.provisioning.unwrap().steps.iter().map(|s| s.name.clone()).collect();
    assert_eq!(steps, ["download", "boot"]);
    assert_eq!(world.count(Io::BootRamdisk), 0, "the machine was not booted into the ramdisk again");
}

#[test]
fn an_installed_system_without_an_agent_is_provisioned_after_the_timeout() {
    let mut world = World::new();
    let mut spec = spec();
    spec.image = Some(image(&"a".repeat(64)));
    let mut status = deploying(&mut world, &spec);
    agent_reports(&mut world, &mut status, BootSource::Network, Some(RunState::Succeeded));
    world.reconcile(&node(&spec), &mut status);
    world.liveness = Liveness::Lapsed { session: session(&status) };
    world.later(899);
    world.reconcile(&node(&spec), &mut status);
    assert_eq!(status.phase, Some(NodePhase::Provisioning));
    world.later(2);
    world.reconcile(&node(&spec), &mut status);
    assert_eq!(status.phase, Some(NodePhase::Provisioned));
    let (_, reason) = cond(&status, "AgentConnected");
    assert_eq!(reason, "HeartbeatLapsed");
    assert!(condition::find(&status.conditions, "Provisioned").unwrap().message.contains("did not start girder agent"));
}

#[test]
fn a_failed_checksum_is_retried_with_backoff_in_the_same_session_while_the_agent_lives() {
    let mut world = World::new();
    let mut spec = spec();
    spec.image = Some(image(&"a".repeat(64)));
    let mut status = deploying(&mut world, &spec);
    let first = run(&status).id;
    agent_fails(&mut world, &mut status, "ImageChecksumMismatch");
    let d = world.reconcile(&node(&spec), &mut status);
    assert_eq!(d.requeue, Requeue::After(Duration::from_secs(15)));
    assert_eq!(cond(&status, "Provisioned"), (ConditionStatus::False, "ImageChecksumMismatch".into()));
    let error = status.error.clone().unwrap();
    assert_eq!((error.type_.as_str(), error.count), ("ImageChecksumMismatch", 1));
    assert!(error.message.contains("trying again in 15 s"), "{}", error.message);
    assert_ne!(status.phase, Some(NodePhase::Provisioned));

    // Not before the backoff.
    world.later(10);
    world.log.clear();
    world.reconcile(&node(&spec), &mut status);
    assert!(world.log.is_empty());
    assert_eq!(run(&status).id, first);

    // Then a new run, in the same session, without a reboot.
    world.later(6);
    world.reconcile(&node(&spec), &mut status);
    assert_eq!(world.log, [Io::Grant]);
    let second = run(&status).id;
    assert_ne!(second, first);
    assert!(second.starts_with(&session(&status)));

    // It fails again: the wait doubles; the machine is gone meanwhile, so the
    // next attempt boots it again in a new session.
    agent_fails(&mut world, &mut status, "ImageChecksumMismatch");
    let d = world.reconcile(&node(&spec), &mut status);
    assert_eq!(d.requeue, Requeue::After(Duration::from_secs(30)));
    assert_eq!(status.error.clone().unwrap().count, 2);
    let old = session(&status);
    world.liveness = Liveness::Lapsed { session: old.clone() };
    world.later(31);
    world.log.clear();
    world.reconcile(&node(&spec), &mut status);
    assert_eq!(world.log, [Io::OpenSession, Io::BootRamdisk]);
    assert_ne!(session(&status), old);
}

#[test]
fn a_failure_retrying_cannot_fix_waits_for_the_spec_to_change() {
    let mut world = World::new();
    let mut spec = spec();
    let mut status = available(&mut world, &spec);
    spec.image = Some(image(&"a".repeat(64)));
    spec.root_device_hints = Some(RootDeviceHints { serial_number: Some("NOPE".into()), ..Default::default() });
    world.reconcile(&node(&spec), &mut status);
    agent_fails(&mut world, &mut status, "NoMatchingDisk");
    let d = world.reconcile(&node(&spec), &mut status);
    assert_eq!(d.requeue, Requeue::OnChange);
    assert!(status.error.clone().unwrap().message.contains("fix the spec"));
    world.later(3600);
    world.log.clear();
    let d = world.reconcile(&node(&spec), &mut status);
    assert!(world.log.is_empty());
    assert_eq!(d.requeue, Requeue::OnChange);

    spec.root_device_hints = Some(RootDeviceHints { serial_number: Some("DISK2".into()), ..Default::default() });
    world.reconcile(&node(&spec), &mut status);
    assert_eq!(world.log, [Io::Grant], "the connected agent gets the new run at once");
    assert_eq!(run(&status).root_device_hints, spec.root_device_hints);
    assert_eq!(status.provisioning.as_ref().unwrap().failures, 0, "a new request counts its attempts afresh");
    agent_fails(&mut world, &mut status, "ImageUnreachable");
    let d = world.reconcile(&node(&spec), &mut status);
    assert_eq!(d.requeue, Requeue::After(Duration::from_secs(15)), "the first backoff, not the second");
}

#[test]
fn a_lost_agent_or_a_machine_that_never_boots_is_booted_again_in_a_new_session() {
    let mut world = World::new();
    let mut spec = spec();
    spec.image = Some(image(&"a".repeat(64)));
    let mut status = deploying(&mut world, &spec);
    agent_reports(&mut world, &mut status, BootSource::Network, Some(RunState::Running));
    world.reconcile(&node(&spec), &mut status);
    let first = session(&status);
    world.liveness = Liveness::Lapsed { session: first.clone() };
    world.reconcile(&node(&spec), &mut status);
    assert_eq!(status.error.clone().unwrap().type_, "AgentLost");
    assert_eq!(status.provisioning.as_ref().unwrap().session, None, "a lost session is not reused");
    world.later(16);
    world.log.clear();
    world.reconcile(&node(&spec), &mut status);
    assert_eq!(world.log, [Io::OpenSession, Io::BootRamdisk]);
    assert_ne!(session(&status), first);

    // This time no agent ever connects.
    world.liveness = Liveness::Absent;
    world.later(599);
    world.log.clear();
    world.reconcile(&node(&spec), &mut status);
    assert!(world.log.is_empty());
    world.later(2);
    world.reconcile(&node(&spec), &mut status);
    assert_eq!(status.error.clone().unwrap().type_, "AgentBootTimeout");
    assert!(status.error.clone().unwrap().message.contains("girder pxe"));
}

#[test]
fn deprovisioning_cleans_from_the_ramdisk_never_from_the_installed_system() {
    let mut world = World::new();
    let mut spec = spec();
    spec.image = Some(image(&"a".repeat(64)));
    let mut status = provisioned(&mut world, &spec);
    assert_eq!(status.phase, Some(NodePhase::Provisioned));
    let installed = session(&status);

    spec.image = None;
    world.log.clear();
    world.reconcile(&node(&spec), &mut status);
    assert_eq!(world.log, [Io::OpenSession, Io::BootRamdisk], "a new session revokes the installed agent");
    assert_eq!(status.phase, Some(NodePhase::Deprovisioning));
    assert_ne!(session(&status), installed);
    assert_eq!(run(&status).action, RunAction::Clean);
    assert_eq!(run(&status).cleaning, Some(CleaningMode::Metadata));

    agent_reports(&mut world, &mut status, BootSource::Network, Some(RunState::Succeeded));
    world.log.clear();
    world.reconcile(&node(&spec), &mut status);
    assert_eq!(world.log, [Io::CloseSession, Io::ReadPower, Io::Power(PowerAction::ForceOff)]);
    assert_eq!(status.phase, Some(NodePhase::Available));
    assert_eq!(cond(&status, "Provisioned"), (ConditionStatus::False, "Deprovisioned".into()));
    assert_eq!(status.provisioning.clone().unwrap().image, None);
}

#[test]
fn without_cleaning_deprovisioning_only_revokes_the_agent() {
    let mut world = World::new();
    let mut spec = BareMetalNodeSpec { cleaning: CleaningMode::Disabled, ..spec() };
    spec.image = Some(image(&"a".repeat(64)));
    let mut status = provisioned(&mut world, &spec);
    spec.image = None;
    world.log.clear();
    world.reconcile(&node(&spec), &mut status);
    // spec.online is false: the provisioned machine was powered off already.
    assert_eq!(world.log, [Io::CloseSession, Io::ReadPower]);
    assert_eq!(status.phase, Some(NodePhase::Available));
}

#[test]
fn clearing_the_image_mid_deploy_cleans_with_the_connected_ramdisk_agent() {
    let mut world = World::new();
    let mut spec = spec();
    spec.image = Some(image(&"a".repeat(64)));
    let mut status = deploying(&mut world, &spec);
    agent_reports(&mut world, &mut status, BootSource::Network, Some(RunState::Running));
    world.reconcile(&node(&spec), &mut status);
    let deploying = session(&status);
    spec.image = None;
    world.log.clear();
    world.reconcile(&node(&spec), &mut status);
    assert_eq!(world.log, [Io::Grant], "no reboot: the ramdisk agent cleans");
    assert_eq!((status.phase, session(&status)), (Some(NodePhase::Deprovisioning), deploying));
    assert_eq!(run(&status).action, RunAction::Clean);
}

#[test]
fn a_new_image_on_a_provisioned_node_installs_it() {
    let mut world = World::new();
    let mut spec = spec();
    spec.image = Some(image(&"a".repeat(64)));
    let mut status = provisioned(&mut world, &spec);
    spec.image = Some(image(&"b".repeat(64)));
    world.log.clear();
    world.reconcile(&node(&spec), &mut status);
    assert_eq!(status.phase, Some(NodePhase::Provisioning));
    assert_eq!(world.log, [Io::OpenSession, Io::BootRamdisk]);
    assert_eq!(run(&status).image, spec.image);
}

#[test]
fn maintenance_revokes_the_session_and_the_operation_starts_over_after() {
    let mut world = World::new();
    let mut spec = spec();
    spec.image = Some(image(&"a".repeat(64)));
    let mut status = deploying(&mut world, &spec);
    agent_reports(&mut world, &mut status, BootSource::Network, Some(RunState::Running));
    spec.maintenance = true;
    world.log.clear();
    world.reconcile(&node(&spec), &mut status);
    assert_eq!(world.log, [Io::CloseSession]);
    let p = status.provisioning.clone().unwrap();
    assert_eq!((p.session, p.state), (None, None));
    assert_eq!(cond(&status, "AgentConnected"), (ConditionStatus::False, "Revoked".into()));
    world.log.clear();
    world.reconcile(&node(&spec), &mut status);
    assert!(world.log.is_empty(), "no BMC call in maintenance");

    spec.maintenance = false;
    world.liveness = Liveness::Absent;
    world.reconcile(&node(&spec), &mut status);
    assert_eq!(world.log, [Io::OpenSession, Io::BootRamdisk]);
}

#[test]
fn a_boot_profile_is_booted_from_the_network_and_nothing_is_cleaned() {
    let mut world = World::new();
    let mut spec = spec();
    let mut status = available(&mut world, &spec);
    spec.boot_profile = Some(crate::api::node::BootProfile {
        kernel: "vmlinuz".into(),
        initrd: "initrd.img".into(),
        cmdline: String::new(),
    });
    spec.online = true;
    world.log.clear();
    world.reconcile(&node(&spec), &mut status);
    assert_eq!(world.log, [Io::BootRamdisk]);
    assert_eq!(status.phase, Some(NodePhase::Provisioned));
    spec.boot_profile = None;
    spec.online = false;
    world.log.clear();
    world.reconcile(&node(&spec), &mut status);
    assert_eq!(world.log, [Io::ReadPower, Io::Power(PowerAction::ForceOff)]);
    assert_eq!(status.phase, Some(NodePhase::Available));
}

#[test]
fn a_discovered_machine_reports_its_inventory_without_a_bmc() {
    let mut world = World::new();
    let spec = BareMetalNodeSpec { boot_mac_address: Some("52:54:00:00:00:09".into()), ..Default::default() };
    let discovered = Node { discovered: true, ..node(&spec) };
    let mut status = BareMetalNodeStatus::default();
    world.reconcile(&discovered, &mut status);
    assert_eq!(world.log, [Io::OpenSession], "no BMC: no boot, the machine is already in the ramdisk");
    assert_eq!(status.phase, Some(NodePhase::Discovered));
    assert_eq!(run(&status).action, RunAction::Inspect);
    agent_reports(&mut world, &mut status, BootSource::Network, Some(RunState::Succeeded));
    world.log.clear();
    world.reconcile(&discovered, &mut status);
    assert_eq!(world.log, [Io::CloseSession]);
    assert_eq!(cond(&status, "Inspected"), (ConditionStatus::True, "InBand".into()));
    assert_eq!(status.hardware.clone().unwrap().serial_number.as_deref(), Some("SN1"));
    world.log.clear();
    world.reconcile(&discovered, &mut status);
    assert!(world.log.is_empty());

    // A node without a BMC that girder pxe did not create gets no session.
    let mut status = BareMetalNodeStatus::default();
    let mut world = World::new();
    world.reconcile(&node(&spec), &mut status);
    assert!(world.log.is_empty());
    assert_eq!(status.phase, Some(NodePhase::Discovered));
    assert!(status.provisioning.is_none());
}

#[test]
fn an_image_without_a_bmc_says_a_bmc_is_needed() {
    let mut world = World::new();
    let spec = BareMetalNodeSpec { image: Some(image(&"a".repeat(64))), ..Default::default() };
    let mut status = BareMetalNodeStatus::default();
    world.reconcile(&Node { discovered: true, ..node(&spec) }, &mut status);
    assert_eq!(status.phase, Some(NodePhase::Discovered));
    assert_eq!(cond(&status, "Provisioned"), (ConditionStatus::False, "NoBMC".into()));
}

#[test]
fn an_installed_system_is_asked_to_shut_down_and_forced_off_after_the_timeout() {
    let mut world = World::new();
    let mut spec = BareMetalNodeSpec { image: Some(image(&"a".repeat(64))), online: true, ..spec() };
    let mut status = provisioned(&mut world, &spec);
    assert_eq!(world.power, PowerState::On);
    world.ignores_shutdown = true;
    spec.online = false;
    world.log.clear();
    world.reconcile(&node(&spec), &mut status);
    assert_eq!(world.log, [Io::ReadPower, Io::Power(PowerAction::GracefulShutdown)]);
    assert!(status.soft_power_off_since.is_some());
    // Still on a minute later: waiting, and saying so.
    world.later(60);
    world.log.clear();
    world.reconcile(&node(&spec), &mut status);
    assert_eq!(world.log, [Io::ReadPower]);
    assert_eq!(cond(&status, "Ready"), (ConditionStatus::False, "ShuttingDown".into()));
    assert_eq!(status.power_state.as_deref(), Some("PoweringOff"));
    // The timeout: forced.
    world.later(121);
    world.log.clear();
    world.reconcile(&node(&spec), &mut status);
    assert_eq!(world.log, [Io::ReadPower, Io::Power(PowerAction::ForceOff)]);
    world.later(5);
    world.reconcile(&node(&spec), &mut status);
    assert_eq!(status.soft_power_off_since, None, "off: nothing pending");
    assert_eq!(cond(&status, "Ready").1, "AsDesired");

    // A system that does shut down is off without being forced.
    world.ignores_shutdown = false;
    spec.online = true;
    world.reconcile(&node(&spec), &mut status);
    spec.online = false;
    world.log.clear();
    world.reconcile(&node(&spec), &mut status);
    assert_eq!(world.log, [Io::ReadPower, Io::Power(PowerAction::GracefulShutdown)]);
    assert_eq!(world.count(Io::Power(PowerAction::ForceOff)), 0);

    // Hard: forced at once.
    spec.online = true;
    world.reconcile(&node(&spec), &mut status);
    spec.power_off_mode = PowerOffMode::Hard;
    spec.online = false;
    world.log.clear();
    world.reconcile(&node(&spec), &mut status);
    assert_eq!(world.log, [Io::ReadPower, Io::Power(PowerAction::ForceOff)]);
}

#[test]
fn power_off_steps() {
    let t0 = jiff::Timestamp::from_second(1_000).unwrap();
    let later = |s: i64| jiff::Timestamp::from_second(1_000 + s).unwrap();
    let timeout = Duration::from_secs(180);
    assert_eq!(power_off_step(PowerAction::On, true, None, t0, timeout), Some(PowerAction::On));
    assert_eq!(power_off_step(PowerAction::ForceOff, false, None, t0, timeout), Some(PowerAction::ForceOff));
    assert_eq!(power_off_step(PowerAction::ForceOff, true, None, t0, timeout), Some(PowerAction::GracefulShutdown));
    assert_eq!(power_off_step(PowerAction::ForceOff, true, Some(t0), later(179), timeout), None);
    assert_eq!(power_off_step(PowerAction::ForceOff, true, Some(t0), later(180), timeout), Some(PowerAction::ForceOff));
}

#[test]
fn a_restart_at_any_point_resumes_from_the_status() {
    // Walk a provisioning, and after every reconcile decide again with fresh
    // facts (as a restarted operator would): it never repeats a finished
    // step other than a boot request, and never goes backwards.
    let mut world = World::new();
    let mut spec = spec();
    spec.image = Some(image(&"a".repeat(64)));
    let mut status = deploying(&mut world, &spec);
    for _ in 0..3 {
        world.log.clear();
        world.reconcile(&node(&spec), &mut status);
        assert!(world.log.is_empty(), "waiting for the agent after a restart: {:?}", world.log);
    }
    agent_reports(&mut world, &mut status, BootSource::Network, Some(RunState::Succeeded));
    world.reconcile(&node(&spec), &mut status);
    world.log.clear();
    world.reconcile(&node(&spec), &mut status);
    assert!(world.log.is_empty(), "the disk boot is not requested twice: {:?}", world.log);
    assert_eq!(status.phase, Some(NodePhase::Provisioning));
}

#[test]
fn the_backoff_doubles_and_is_capped() {
    let delays: Vec<u64> = (1..=8).map(|n| retry_delay(n).as_secs()).collect();
    assert_eq!(delays, [15, 30, 60, 120, 240, 480, 600, 600]);
    assert_eq!(retry_delay(i32::MAX).as_secs(), 600);
    assert_eq!(retry_delay(0).as_secs(), 15);
}
