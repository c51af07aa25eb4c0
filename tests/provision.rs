//! Provisioning end to end, through real parts: a QEMU machine whose power
//! a real BMC emulator controls (OpenIPMI's ipmi_sim, or sushy-tools' fake
//! Redfish driver notifying the harness), PXE-booted by girder pxe into
//! girder's ramdisk (Debian's kernel, busybox, the static agent), whose agent
//! enrols, reaches the API server through girder pxe's pass-through, writes
//! the test image to the disk the hints choose out of two, and adds the
//! cloud-init seed; the machine then boots the installed system from its
//! disk, which prints a marker from its user-data and whose own agent
//! reports from the disk; deprovisioning boots the ramdisk again and wipes
//! the disks' metadata.
//!
//! Needs root (namespaces, taps, ports 67/69) and QEMU; `make test` installs
//! the packages and builds the ramdisk and the test image.

mod support;

use girder::api::node::NodePhase;
use girder::api::provisioning::BootSource;
use girder::api::{BareMetalNode, ConditionStatus};
use kube::Api;
use std::time::Duration;
use support::ipmi::{Sim, SimConfig};
use support::machine::{Machine, Notifier};
use support::site::{Site, phase};
use support::sushy::{FakeSystem, Sushy, SushyConfig};
use support::*;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// Install, boot the installed system, deprovision: the whole way, for the
/// machine `name` behind whatever BMC the caller set up.
async fn provision_and_deprovision(site: &Site, name: &str, machine: &Machine, marker: &str) {
    // Installed: the system on the disk booted, printed its marker from the
    // user-data, found its network-config, and its agent reports from the disk.
    let provisioned = site.node_where(name, "Provisioned", |n| phase(n) == Some(NodePhase::Provisioned)).await;
    machine
        .wait_for_serial(&format!("GIRDER-INSTALLED marker={marker} network-config=yes"), Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    let status = provisioned.status.clone().unwrap();
    assert_eq!(status.agent.as_ref().and_then(|a| a.boot_source), Some(BootSource::Disk), "{:?}", status.agent);
    assert_eq!(condition(&provisioned, "AgentConnected").map(|c| c.0), Some(ConditionStatus::True));
    let p = status.provisioning.clone().unwrap();
    assert_eq!(p.root_device.as_deref(), Some("/dev/vdb"), "the disk with serial DISK-B");
    let steps: Vec<&str> = p.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(steps, ["download", "write", "verify", "seed", "boot"]);
    let hardware = status.hardware.unwrap();
    let serials: Vec<&str> = hardware.storage.iter().filter_map(|d| d.serial_number.as_deref()).collect();
    assert_eq!(serials, ["DISK-A", "DISK-B"], "inventory from the agent");
    assert!(hardware.nics.iter().any(|n| n.mac == machine.mac && n.driver.as_deref() == Some("virtio_net")));
    assert!(machine.read("DISK-A", 0, MIB as usize).iter().all(|b| *b == 0), "DISK-A untouched");
    assert!(machine.read("DISK-B", 510, 2) == [0x55, 0xaa], "DISK-B has the image's MBR");
    eprintln!("{name}: provisioned; steps {:?}", p.steps);

    // Deprovisioned: the ramdisk is booted again and wipes both disks' metadata.
    run_ok(kubectl().args([
        "patch",
        "bmn",
        name,
        "-n",
        &site.ns.name,
        "--type",
        "json",
        "-p",
        r#"[{"op":"remove","path":"/spec/image"}]"#,
    ]));
    let available = site.node_where(name, "Available after cleaning", |n| phase(n) == Some(NodePhase::Available)).await;
    for serial in ["DISK-A", "DISK-B"] {
        let size = machine.disk_size(serial);
        assert!(machine.read(serial, 0, MIB as usize).iter().all(|b| *b == 0), "{serial}: first MiB");
        assert!(machine.read(serial, size - MIB, MIB as usize).iter().all(|b| *b == 0), "{serial}: last MiB");
    }
    let steps: Vec<String> =
        available.status.unwrap().provisioning.unwrap().steps.into_iter().map(|s| s.name).collect();
    assert_eq!(steps, ["wipe /dev/vda", "wipe /dev/vdb"]);
}

#[tokio::test]
async fn a_machine_behind_ipmi_is_installed_from_raw_and_cleaned() {
    let site = Site::new("prov-ipmi", 151, false).await;
    let mac = "52:54:00:51:00:01";
    let machine = Machine::new(&site.lab, "ipmi", mac, &[("DISK-A", 4 * GIB), ("DISK-B", 5 * GIB)]);
    machine.firmware_boots("DISK-B");
    let sim = Sim::start(SimConfig { chassis_control: Some(machine.chassis_control()), ..Default::default() }).await;
    run_ok(kubectl().args(["create", "secret", "generic", "bmc", "-n", &site.ns.name]).args([
        &format!("--from-literal=username={}", support::ipmi::USER),
        &format!("--from-literal=password={}", support::ipmi::PASSWORD),
    ]));
    site.node("ipmi", mac, &format!("ipmi://127.0.0.1:{}", sim.port), Some("disk.img"), "ipmi-raw");
    provision_and_deprovision(&site, "ipmi", &machine, "ipmi-raw").await;
    // The real BMC says what the machine is: off (spec.online is false).
    machine.wait_off(Duration::from_secs(120)).await.unwrap_or_else(|e| panic!("{e}"));
    let actions = machine.actions();
    // Each boot asked once: the operator does not act twice on one decision.
    assert_eq!(actions.matches("start boot=pxe").count(), 2, "two ramdisk boots through the BMC:\n{actions}");
    assert_eq!(actions.matches("start boot=default").count(), 1, "one disk boot:\n{actions}");
}

#[tokio::test]
async fn a_machine_behind_redfish_is_installed_from_qcow2_and_cleaned() {
    let site = Site::new("prov-redfish", 152, false).await;
    let mac = "52:54:00:52:00:01";
    let machine = Machine::new(&site.lab, "redfish", mac, &[("DISK-A", 4 * GIB), ("DISK-B", 5 * GIB)]);
    machine.firmware_boots("DISK-B");
    let notifier = Notifier::start(vec![("redfish".to_string(), machine.dir.clone())]);
    let mut system = FakeSystem::new("0000000c-0000-4000-8000-000000000001", "redfish", "Off", &[mac]);
    system.notify = true;
    let sushy = Sushy::start(SushyConfig {
        systems: vec![system],
        notify_url: Some(notifier.url.clone()),
        ..Default::default()
    })
    .await;
    run_ok(kubectl().args([
        "create",
        "secret",
        "generic",
        "bmc",
        "-n",
        &site.ns.name,
        "--from-literal=username=admin",
        "--from-literal=password=unused",
    ]));
    site.node("redfish", mac, &sushy.address(Some("redfish")).to_string(), Some("disk.qcow2"), "redfish-qcow2");
    provision_and_deprovision(&site, "redfish", &machine, "redfish-qcow2").await;
    drop(notifier);
}

#[tokio::test]
async fn an_unknown_machine_is_discovered_where_its_network_allows_it() {
    let site = Site::new("prov-disc", 153, true).await;
    let mac = "52:54:00:53:00:01";
    let machine = Machine::new(&site.lab, "disc", mac, &[("DISK-D", 4 * GIB)]);
    machine.chassis(&["set", "boot", "pxe"]);
    machine.chassis(&["set", "power", "1"]);
    let name = "discovered-525400530001";
    let found = site
        .node_where(name, "discovered, with its inventory", |n| {
            condition(n, "Inspected").is_some_and(|c| c.0 == ConditionStatus::True)
        })
        .await;
    assert_eq!(phase(&found), Some(NodePhase::Discovered));
    let hardware = found.status.unwrap().hardware.unwrap();
    assert_eq!(hardware.storage.first().and_then(|d| d.serial_number.as_deref()), Some("DISK-D"));
    assert!(hardware.nics.iter().any(|n| n.mac == mac));
    assert!(hardware.memory_mebibytes.is_some_and(|m| m >= 512), "{hardware:?}");
    // Its session over, the ramdisk powers the machine off.
    machine.wait_off(Duration::from_secs(120)).await.unwrap_or_else(|e| panic!("the discovered machine: {e}"));
}

#[tokio::test]
async fn an_unknown_machine_on_a_network_without_discovery_gets_nothing() {
    let site = Site::new("prov-nodisc", 154, false).await;
    let mac = "52:54:00:54:00:01";
    let machine = Machine::new(&site.lab, "nodisc", mac, &[("DISK-E", 4 * GIB)]);
    machine.chassis(&["set", "boot", "pxe"]);
    machine.chassis(&["set", "power", "1"]);
    // girder pxe does not even answer its DHCP, and says why.
    let refused = || site.pxe.logs().lines().any(|l| l.contains("not answering DHCP") && l.contains(mac));
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while !refused() {
        assert!(
            std::time::Instant::now() < deadline,
            "girder pxe never refused the machine:\n{}",
            machine.serial_log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let nodes: Api<BareMetalNode> = Api::namespaced(site.client.clone(), &site.ns.name);
    assert!(nodes.list(&Default::default()).await.unwrap().items.is_empty(), "no node was created");
}
