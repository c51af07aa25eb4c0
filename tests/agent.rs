//! The node agent against the real API server, with girder pxe handing out
//! its token and the operator driving the node through sushy-tools'
//! Redfish emulator: the agent runs on this host, on a machine made of
//! files (see support/agent.rs), so every exchange with the control plane is
//! real and only the hardware is pretend. The same agent in a QEMU machine,
//! booted from girder's ramdisk by a real BMC, is tests/provision.rs.

mod support;

use girder::api::node::NodePhase;
use girder::api::provisioning::ProvisioningState;
use girder::api::{BareMetalNode, ConditionStatus};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use support::agent::{
    Agent, FakeMachine, FlakyServer, GIB, MIB, OPERATOR_FLAGS, boot_agent, boot_cmdline, disk_image, fat_file, pxe,
    secret, session, state,
};
use support::pxe::Pxe;
use support::sushy::{FakeSystem, Sushy, SushyConfig};
use support::*;

/// The control plane with the CRDs and the agents' admission policies.
async fn control_plane() -> Client {
    let client = client().await;
    install_crds(&client).await;
    install_agent_policy();
    client
}

fn error_type(node: &BareMetalNode) -> Option<String> {
    Some(node.status.as_ref()?.error.as_ref()?.type_.clone())
}

/// A client that authenticates with `token`, as an agent would.
async fn as_token(token: &str) -> Client {
    let mut config = kube::Config::infer().await.unwrap();
    config.auth_info = kube::config::AuthInfo { token: Some(token.to_string().into()), ..Default::default() };
    Client::try_from(config).unwrap()
}

fn refused(result: kube::Result<impl std::fmt::Debug>) -> String {
    match result {
        Err(kube::Error::Api(status)) => format!("{} {}", status.code, status.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A machine of files with two disks (DISK-A, DISK-B), its Redfish BMC,
/// girder pxe serving the image, and the BMC credentials Secret.
struct Site {
    client: Client,
    ns: TestNamespace,
    lab: TempDir,
    image: std::path::PathBuf,
    digest: String,
    machine: FakeMachine,
    sushy: Sushy,
    pxe: Pxe,
}

impl Site {
    async fn new(prefix: &str, mac: &str, uuid: &str) -> Site {
        let client = control_plane().await;
        let ns = TestNamespace::new(&client, prefix).await;
        let lab = TempDir::new(&format!("girder-{prefix}"));
        let (image, digest) = disk_image(&lab.0);
        let machine = FakeMachine::new(mac, &[("vda", "DISK-A", 5 * GIB), ("vdb", "DISK-B", 6 * GIB)]);
        let sushy = Sushy::start(SushyConfig {
            systems: vec![FakeSystem::new(uuid, "machine", "Off", &[mac])],
            ..Default::default()
        })
        .await;
        let mut pxe = pxe(&ns.name, &lab, &[("os.img", &image)]);
        pxe.wait_ready().await;
        secret(&client, &ns.name, "bmc", json!({ "username": "admin", "password": "unused" })).await;
        Site { client, ns, lab, image, digest, machine, sushy, pxe }
    }

    /// The spec of the node `machine`, up to its image.
    fn machine_yaml(&self) -> String {
        format!(
            "apiVersion: girder.dev/v1alpha1\nkind: BareMetalNode\nmetadata: {{name: machine}}\nspec:\n  bmc: {{address: \"{}\", credentialsSecretRef: {{name: bmc}}}}\n  bootMACAddress: \"{}\"\n  online: true\n  rootDeviceHints: {{serialNumber: DISK-B}}\n",
            self.sushy.address(Some("machine")),
            self.machine.mac
        )
    }
}

#[tokio::test]
async fn the_agent_installs_an_image_reports_from_the_installed_system_and_cleans_the_disks() {
    let site = Site::new("agent", "52:54:00:a0:00:01", "0000000b-0000-4000-8000-000000000001").await;
    let Site { client, ns, lab, image, digest, machine, pxe, .. } = &site;
    let mac = machine.mac.as_str();
    secret(client, &ns.name, "user-data", json!({ "userData": "#cloud-config\ngirder-test-marker: m-42\n" })).await;
    apply_yaml(
        &ns.name,
        &format!(
            r#"{machine}  networks: [{{network: admin, interface: eth0}}]
  userData: {{name: user-data}}
  image:
    url: http://{pxe}/assets/os.img
    checksum: {digest}
---
apiVersion: girder.dev/v1alpha1
kind: Network
metadata: {{name: admin}}
spec:
  cidr: 10.88.0.0/24
  gateway: 10.88.0.1
  dnsServers: [10.88.0.2]
  ranges: [{{name: nodes, type: static, start: 10.88.0.10, end: 10.88.0.20}}]
---
apiVersion: girder.dev/v1alpha1
kind: BareMetalNode
metadata: {{name: other}}
spec: {{bootMACAddress: "52:54:00:a0:00:99"}}
"#,
            machine = site.machine_yaml(),
            pxe = pxe.http,
        ),
    );
    let operator = Operator::start_with(OperatorOptions::new(&ns.name, "agent"), &OPERATOR_FLAGS);

    // The ramdisk's agent enrols with the nonce of its script and installs.
    let mut ramdisk = boot_agent(client, &ns.name, "machine", pxe, machine, &lab.0.join("ramdisk")).await;
    let written = node_where(client, &ns.name, "machine", "the image written; booting the disk", |n| {
        state(n) == Some(ProvisioningState::BootingDisk)
    })
    .await;
    let provisioning = written.status.clone().unwrap().provisioning.unwrap();
    assert_eq!(provisioning.root_device.as_deref(), Some("/dev/vdb"), "the disk the hints name");
    let image_bytes = std::fs::read(image).unwrap();
    // All of it, but for the partition table, which now lists the seed too.
    let on_disk = machine.read("vdb", 0, image_bytes.len());
    assert!(on_disk[..446] == image_bytes[..446] && on_disk[512..] == image_bytes[512..], "vdb holds the image");
    assert!(machine.read("vda", 0, MIB as usize).iter().all(|b| *b == 0), "vda is untouched");
    let steps: Vec<&str> = provisioning.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(steps, ["download", "write", "verify", "seed"], "{provisioning:?}");
    let download = &provisioning.steps[0];
    assert_eq!(download.bytes, Some(image_bytes.len() as i64));

    // The seed: user-data, network-config from IPAM, the installed agent's credentials.
    let user_data = String::from_utf8(fat_file(machine, "vdb", "user-data")).unwrap();
    assert!(user_data.contains("girder-test-marker: m-42"), "{user_data}");
    let network = String::from_utf8(fat_file(machine, "vdb", "network-config")).unwrap();
    assert!(network.contains("10.88.0.") && network.contains(mac) && network.contains("10.88.0.1"), "{network}");
    let credentials = fat_file(machine, "vdb", "girder-agent.json");
    let given = lab.0.join("girder-agent.json");
    std::fs::write(&given, &credentials).unwrap();

    // The machine reboots into its installed system, whose agent reports from the disk.
    ramdisk.kill();
    let given_arg = given.to_str().unwrap();
    let installed =
        Agent::start(machine, "root=/dev/vdb1 console=ttyS0", &lab.0.join("installed"), &["--credentials", given_arg]);
    let done = node_where(client, &ns.name, "machine", "Provisioned", |n| {
        n.status.as_ref().and_then(|s| s.phase) == Some(NodePhase::Provisioned)
    })
    .await;
    assert_eq!(condition(&done, "Provisioned").map(|c| c.0), Some(ConditionStatus::True));
    assert_eq!(condition(&done, "AgentConnected").map(|c| c.0), Some(ConditionStatus::True));
    assert_eq!(condition(&done, "Inspected").map(|c| c.1), Some("InBand".to_string()));
    let status = done.status.clone().unwrap();
    let hardware = status.hardware.unwrap();
    assert_eq!(hardware.storage.len(), 2, "the agent's inventory");
    assert!(hardware.storage.iter().any(|d| d.serial_number.as_deref() == Some("DISK-B")));
    let steps: Vec<&str> = status.provisioning.as_ref().unwrap().steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(steps, ["download", "write", "verify", "seed", "boot"]);

    // The agent is its node and nothing else.
    let token = installed.token();
    let agent = as_token(&token).await;
    let nodes: Api<BareMetalNode> = Api::namespaced(agent.clone(), &ns.name);
    nodes.get("machine").await.expect("an agent reads its own node");
    let why = refused(nodes.get("other").await);
    assert!(why.starts_with("403"), "{why}");
    let why = refused(
        nodes
            .patch_status(
                "other",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"agent": {"session": "x"}}})),
            )
            .await,
    );
    assert!(why.starts_with("403"), "{why}");
    let why = refused(
        nodes
            .patch_status("machine", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Available"}})))
            .await,
    );
    assert!(why.contains("may change only status.agent"), "{why}");
    let why = refused(
        nodes
            .patch_status(
                "machine",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"agent": {"session": "forged"}}})),
            )
            .await,
    );
    assert!(why.contains("this agent session is over"), "{why}");
    let accounts: Api<ServiceAccount> = Api::namespaced(agent.clone(), &ns.name);
    let token_request = |name: &str, seconds: i64| {
        json!({ "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": { "expirationSeconds": seconds, "boundObjectRef": { "apiVersion": "v1", "kind": "Secret", "name": name } } })
    };
    let mint = |sa: &'static str, body: serde_json::Value| {
        let accounts = accounts.clone();
        async move { accounts.create_subresource::<_, serde_json::Value>("token", sa, &PostParams::default(), &body).await }
    };
    let why = refused(mint("girder-agent-other", token_request("girder-agent-other", 600)).await);
    assert!(why.starts_with("403"), "{why}");
    let why = refused(mint("girder-agent-machine", token_request("girder-agent-machine", 7200)).await);
    assert!(why.contains("at most 3600 s"), "{why}");
    let why = refused(mint("girder-agent-machine", token_request("bmc", 600)).await);
    assert!(why.contains("bound to its Secret"), "{why}");
    let secrets: Api<Secret> = Api::namespaced(agent.clone(), &ns.name);
    assert!(refused(secrets.get("bmc").await).starts_with("403"), "BMC credentials are not the agent's");

    // Deprovisioning revokes the installed system's token and cleans from the ramdisk.
    run_ok(kubectl().args([
        "patch",
        "bmn",
        "machine",
        "-n",
        &ns.name,
        "--type",
        "json",
        "-p",
        r#"[{"op":"remove","path":"/spec/image"}]"#,
    ]));
    let deprovisioning = node_where(client, &ns.name, "machine", "Deprovisioning in a new session", |n| {
        n.status.as_ref().and_then(|s| s.phase) == Some(NodePhase::Deprovisioning) && session(n).is_some()
    })
    .await;
    let nodes_old: Api<BareMetalNode> = Api::namespaced(as_token(&token).await, &ns.name);
    wait_for("the installed system's token to stop working", || {
        let nodes = nodes_old.clone();
        async move { matches!(nodes.get("machine").await, Err(kube::Error::Api(s)) if s.code == 401).then_some(()) }
    })
    .await;
    assert!(session(&deprovisioning) != session(&done));
    let mut cleaner = boot_agent(client, &ns.name, "machine", pxe, machine, &lab.0.join("clean")).await;
    let cleaned = node_where(client, &ns.name, "machine", "Available again", |n| {
        n.status.as_ref().and_then(|s| s.phase) == Some(NodePhase::Available)
    })
    .await;
    for disk in ["vda", "vdb"] {
        let size = std::fs::metadata(machine.disk(disk)).unwrap().len();
        assert!(machine.read(disk, 0, MIB as usize).iter().all(|b| *b == 0), "{disk}: first MiB");
        assert!(machine.read(disk, size - MIB, MIB as usize).iter().all(|b| *b == 0), "{disk}: last MiB");
    }
    assert!(
        machine.read("vdb", 4 * MIB, 4096) == image_bytes[4 * MIB as usize..4 * MIB as usize + 4096],
        "only metadata is wiped"
    );
    let steps: Vec<String> = cleaned.status.unwrap().provisioning.unwrap().steps.into_iter().map(|s| s.name).collect();
    assert_eq!(steps, ["wipe /dev/vda", "wipe /dev/vdb"]);
    // Its session closed, the cleaning agent is done.
    wait_for("the cleaning agent to finish", || {
        let exited = cleaner.exited();
        async move { exited }
    })
    .await;
    drop(installed);
    let logs = operator.logs() + &cleaner.logs();
    assert!(!logs.contains(&token), "a token in a log");
}

fn phase(node: &BareMetalNode) -> Option<NodePhase> {
    node.status.as_ref()?.phase
}

fn failures(node: &BareMetalNode) -> i32 {
    node.status.as_ref().and_then(|s| s.provisioning.as_ref()).map_or(0, |p| p.failures)
}

fn set_spec(ns: &str, name: &str, spec: serde_json::Value) {
    let patch = json!({ "spec": spec }).to_string();
    run_ok(kubectl().args(["patch", "bmn", name, "-n", ns, "--type", "merge", "-p", &patch]));
}

/// The agent's current run, once it reports `state` for a run other than `not`.
async fn run_report(
    client: &Client,
    ns: &str,
    what: &str,
    check: impl Fn(&girder::api::provisioning::RunReport) -> bool,
) -> BareMetalNode {
    node_where(client, ns, "machine", what, |n| {
        let current =
            n.status.as_ref().and_then(|s| s.provisioning.as_ref()).and_then(|p| p.run.as_ref()).map(|r| r.id.clone());
        n.status
            .as_ref()
            .and_then(|s| s.agent.as_ref())
            .and_then(|a| a.run.as_ref())
            .is_some_and(|r| Some(&r.id) == current.as_ref() && check(r))
    })
    .await
}

#[tokio::test]
async fn each_failure_says_what_went_wrong_and_nothing_unverified_is_booted() {
    let site = Site::new("agent-fail", "52:54:00:a0:00:02", "0000000b-0000-4000-8000-000000000002").await;
    let Site { client, ns, lab, image, digest, machine, pxe, .. } = &site;
    let wrong = "0".repeat(64);
    let image_spec = format!("  image: {{url: \"http://{}/assets/os.img\", checksum: \"{wrong}\"}}\n", pxe.http);
    apply_yaml(&ns.name, &(site.machine_yaml() + &image_spec));
    let _operator = Operator::start_with(OperatorOptions::new(&ns.name, "agent-fail"), &OPERATOR_FLAGS);
    let mut agent = boot_agent(client, &ns.name, "machine", pxe, machine, &lab.0.join("boot1")).await;

    // A wrong checksum: the disk is wiped, the run retried, nothing booted.
    let failed = node_where(client, &ns.name, "machine", "ImageChecksumMismatch", |n| {
        error_type(n).as_deref() == Some("ImageChecksumMismatch")
    })
    .await;
    let (_, reason, message) = condition(&failed, "Provisioned").unwrap();
    assert_eq!(reason, "ImageChecksumMismatch");
    assert!(message.contains("was wiped") && message.contains("trying again in 15 s"), "{message}");
    assert!(machine.read("vdb", 0, MIB as usize).iter().all(|b| *b == 0), "the unverified image is wiped");
    node_where(client, &ns.name, "machine", "the checksum retried in the same session", |n| {
        error_type(n).as_deref() == Some("ImageChecksumMismatch")
            && n.status.as_ref().and_then(|s| s.error.as_ref()).is_some_and(|e| e.count >= 2)
    })
    .await;

    // An unreachable image: its own reason, naming the URL; no reboot (same agent).
    set_spec(&ns.name, "machine", json!({ "image": { "url": "http://127.0.0.1:1/gone.img", "checksum": digest } }));
    let unreachable = node_where(client, &ns.name, "machine", "ImageUnreachable", |n| {
        error_type(n).as_deref() == Some("ImageUnreachable")
    })
    .await;
    assert!(condition(&unreachable, "Provisioned").unwrap().2.contains("127.0.0.1:1/gone.img"));
    assert!(agent.exited().is_none(), "the same agent took every run");

    // Hints that match no disk: every disk listed; waits for the spec.
    // Each of the three downloads below is cut once, after 5 MiB.
    let flaky = FlakyServer::start("127.0.0.1:0", image.clone(), 5 * MIB, 3, Some(2 * MIB));
    set_spec(
        &ns.name,
        "machine",
        json!({ "rootDeviceHints": { "serialNumber": "NOPE" }, "image": { "url": flaky.url("os.img"), "checksum": digest } }),
    );
    let nothing = node_where(client, &ns.name, "machine", "NoMatchingDisk", |n| {
        error_type(n).as_deref() == Some("NoMatchingDisk")
    })
    .await;
    let message = condition(&nothing, "Provisioned").unwrap().2;
    assert!(message.contains("/dev/vda") && message.contains("/dev/vdb") && message.contains("NOPE"), "{message}");
    assert!(message.contains("fix the spec"), "{message}");

    // The agent dies in the middle of the download and comes back: it says
    // so rather than guessing, and the run is done again.
    set_spec(&ns.name, "machine", json!({ "rootDeviceHints": { "serialNumber": "DISK-B" } }));
    run_report(client, &ns.name, "the download under way", |r| r.step.as_deref().is_some_and(|s| s.contains(" MiB")))
        .await;
    agent.kill();
    let mut agent = Agent::start(
        machine,
        &std::fs::read_to_string(lab.0.join("boot1.cmdline")).unwrap(),
        &lab.0.join("boot1"),
        &[],
    );
    let restarted = node_where(client, &ns.name, "machine", "AgentRestarted", |n| {
        error_type(n).as_deref() == Some("AgentRestarted")
    })
    .await;
    assert_ne!(phase(&restarted), Some(NodePhase::Provisioned));

    // It dies again, for good this time: its heartbeat lapses, the run is
    // lost, and the machine is booted again in a new session.
    run_report(client, &ns.name, "the download under way again", |r| {
        r.step.as_deref().is_some_and(|s| s.contains(" MiB"))
    })
    .await;
    let lost_session = session(&node_where(client, &ns.name, "machine", "a session", |n| session(n).is_some()).await);
    agent.kill();
    let lost =
        node_where(client, &ns.name, "machine", "AgentLost", |n| error_type(n).as_deref() == Some("AgentLost")).await;
    assert_eq!(condition(&lost, "AgentConnected").map(|c| c.0), Some(ConditionStatus::False));
    assert!(failures(&lost) >= 2);
    let _agent = boot_agent(client, &ns.name, "machine", pxe, machine, &lab.0.join("boot2")).await;
    let written = node_where(client, &ns.name, "machine", "the image written at last", |n| {
        state(n) == Some(ProvisioningState::BootingDisk)
    })
    .await;
    assert_ne!(session(&written), lost_session, "a new session after the lost one");
    let steps = written.status.unwrap().provisioning.unwrap().steps;
    assert_eq!(steps[0].message.as_deref(), Some("resumed 1 times"), "the cut download was resumed: {steps:?}");
    let image_bytes = std::fs::read(image).unwrap();
    assert!(machine.read("vdb", 512, image_bytes.len() - 512) == image_bytes[512..]);
}

#[tokio::test]
async fn an_unknown_machine_becomes_a_discovered_node_only_where_discovery_is_allowed() {
    let client = control_plane().await;
    let open = TestNamespace::new(&client, "discover").await;
    let closed = TestNamespace::new(&client, "no-discover").await;
    let network = |allow: bool| {
        format!(
            "apiVersion: girder.dev/v1alpha1\nkind: Network\nmetadata: {{name: loopback}}\nspec:\n  cidr: 127.0.0.0/8\n  dhcp: {{mode: Managed, allowDiscovery: {allow}}}\n"
        )
    };
    apply_yaml(&open.name, &network(true));
    apply_yaml(&closed.name, &network(false));
    let _operator = Operator::start_with(OperatorOptions::new(&open.name, "discover"), &OPERATOR_FLAGS);
    let mac = "52:54:00:a0:00:03";
    let machine = FakeMachine::new(mac, &[("vda", "DISK-D", 5 * GIB)]);

    // Where discovery is not allowed: no script, no enrolment, no node.
    let lab = TempDir::new("girder-no-discover");
    let mut refusing = pxe(&closed.name, &lab, &[]);
    refusing.wait_ready().await;
    let (code, body) = http_get(&refusing.http, &format!("/boot/{mac}.ipxe")).unwrap();
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("does not allow discovery"), "{body}");
    let forged =
        format!("girder.mode=discover girder.pxe=http://{} girder.nonce=d1.AAAA girder.mac={mac}", refusing.http);
    let mut stranger = Agent::start(&machine, &forged, &lab.0.join("stranger"), &[]);
    wait_for("the stranger's agent to be refused", || {
        let exited = stranger.exited();
        async move { exited }
    })
    .await;
    assert!(stranger.logs().contains("refused the enrolment (HTTP 403)"), "{}", stranger.logs());
    let nodes: Api<BareMetalNode> = Api::namespaced(client.clone(), &closed.name);
    assert!(nodes.list(&Default::default()).await.unwrap().items.is_empty(), "nothing was created");

    // Where it is: the machine enrols, becomes a node, and reports its inventory.
    let lab = TempDir::new("girder-discover");
    let mut pxe = pxe(&open.name, &lab, &[]);
    pxe.wait_ready().await;
    let (script, cmdline) = boot_cmdline(&pxe.http, mac).expect("a discovery script");
    assert!(script.contains("girder.mode=discover"), "{script}");
    let mut agent = Agent::start(&machine, &cmdline, &lab.0.join("agent"), &[]);
    let name = "discovered-525400a00003";
    let nodes: Api<BareMetalNode> = Api::namespaced(client.clone(), &open.name);
    let found = wait_for("the discovered node with its inventory", || {
        let nodes = nodes.clone();
        async move {
            let node = nodes.get_opt(name).await.ok().flatten()?;
            (condition(&node, "Inspected")?.0 == ConditionStatus::True).then_some(node)
        }
    })
    .await;
    assert_eq!(phase(&found), Some(NodePhase::Discovered));
    assert_eq!(found.labels().get("girder.dev/discovered").map(String::as_str), Some("true"));
    assert_eq!(found.spec.boot_mac_address.as_deref(), Some(mac));
    let hardware = found.status.unwrap().hardware.unwrap();
    assert_eq!(hardware.serial_number.as_deref(), Some("SN-525400a00003"));
    assert_eq!(hardware.storage[0].serial_number.as_deref(), Some("DISK-D"));
    assert_eq!(hardware.nics[0].mac, mac);
    // Inspected, the machine has nothing left to do: its session ends.
    wait_for("the discovery agent to finish", || {
        let exited = agent.exited();
        async move { exited }
    })
    .await;
}
