//! The IPMI driver against its real peer: OpenIPMI's `ipmi_sim` (Debian
//! `openipmi`), started through `e2e/ipmi.sh` (which installs it, and
//! `ipmitool`, when missing), one simulator per test, on loopback only.
//! Every result is cross-checked with `ipmitool -I lanplus` reading the same
//! simulator.
//!
//! What ipmi_sim 2.0.33 offers, and so what is proven here: RMCP+ with
//! cipher suites 0-11 (SHA-1 and MD5; no SHA-256 suite 17), Get Chassis
//! Status and Chassis Control through its `chassis_control` program (which
//! e2e/ipmi.sh provides), the boot device of the boot flags (but not their
//! valid/persistent/EFI bits: it answers them as 0), Get Device ID, Get
//! System GUID, FRU data, and session counts through Get Session Info.

use girder::api::node::BootMode;
use girder::bmc::ipmi::{CipherSuite, IpmiClient, IpmiOptions, boot_flags};
use girder::bmc::{Bmc, BmcAddress, BmcOptions, BootDevice, BootOverride, Credentials, PowerAction, PowerState};
mod support;

use support::ipmi::*;

use std::time::{Duration, Instant};

/// Polls until both the driver and ipmitool see `want`.
async fn wait_power(sim: &Sim, client: &IpmiClient, want: PowerState) {
    let deadline = Instant::now() + POWER_PATIENCE;
    loop {
        let state = client.power_state().await.unwrap();
        if state == want {
            assert_eq!(sim.ipmitool_power(), want, "ipmitool disagrees with the driver");
            return;
        }
        assert!(Instant::now() < deadline, "still {state} after {POWER_PATIENCE:?}, want {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn power_actions_reach_the_simulator_and_ipmitool_sees_them() {
    let sim = Sim::start(SimConfig::default()).await;
    let client = sim.connect().await;
    assert_eq!(client.cipher_suite().await, Some(CipherSuite::Suite3));
    assert_eq!(client.power_state().await.unwrap(), PowerState::Off);
    assert_eq!(sim.ipmitool_power(), PowerState::Off);

    client.power(PowerAction::On).await.unwrap();
    wait_power(&sim, &client, PowerState::On).await;
    // Asking for the state it is in is fine.
    client.power(PowerAction::On).await.unwrap();
    assert_eq!(sim.ipmitool_power(), PowerState::On);

    client.power(PowerAction::ForceOff).await.unwrap();
    wait_power(&sim, &client, PowerState::Off).await;

    // A power cycle of a system that is off turns it on.
    client.power(PowerAction::PowerCycle).await.unwrap();
    wait_power(&sim, &client, PowerState::On).await;

    // A power cycle of a running system: ipmi_sim powers it off, then on a
    // second later.
    let before = sim.actions().len();
    client.power(PowerAction::PowerCycle).await.unwrap();
    let deadline = Instant::now() + POWER_PATIENCE;
    while sim.actions()[before..].join(",") != "power 0,power 1" {
        assert!(Instant::now() < deadline, "power cycle: {:?}", &sim.actions()[before..]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_power(&sim, &client, PowerState::On).await;

    // A hard reset of a running system: a reset pulse, still on.
    let before = sim.actions().len();
    client.power(PowerAction::ForceRestart).await.unwrap();
    assert_eq!(sim.actions()[before..], ["reset 1"]);
    wait_power(&sim, &client, PowerState::On).await;

    // A soft shutdown: the simulated OS obeys the ACPI request.
    let before = sim.actions().len();
    client.power(PowerAction::GracefulShutdown).await.unwrap();
    assert_eq!(sim.actions()[before..], ["shutdown 1"]);
    wait_power(&sim, &client, PowerState::Off).await;
    // Again, when off: nothing is sent.
    client.power(PowerAction::GracefulShutdown).await.unwrap();
    assert_eq!(sim.actions().len(), before + 1);

    // A hard reset of a system that is off turns it on.
    client.power(PowerAction::ForceRestart).await.unwrap();
    wait_power(&sim, &client, PowerState::On).await;
    client.close().await.unwrap();
}

/// A hard reset whose answer is slow (ipmi_sim answers a Chassis Control
/// only when its chassis program is done: here after two seconds, longer
/// than the driver waits before sending a request again) happens once: a
/// reset is never sent twice, as ipmi_sim, like many BMCs, runs every copy
/// it receives (a power cycle is sent the same way).
#[tokio::test]
async fn a_slowly_answered_hard_reset_happens_once() {
    let chassis = support::TempDir::new("girder-chassis");
    let program = chassis.0.join("chassis");
    let script = format!(
        "#!/bin/sh\n[ \"$1\" != set ] || sleep 2\nexec {} chassis {} \"$@\"\n",
        support::repo_root().join("e2e/ipmi.sh").display(),
        chassis.0.display()
    );
    std::fs::write(&program, script).unwrap();
    std::fs::set_permissions(&program, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(chassis.0.join("power"), "1\n").unwrap();
    let sim =
        Sim::start(SimConfig { chassis_control: Some(program.display().to_string()), ..Default::default() }).await;
    let client = sim.connect().await;
    let actions = || std::fs::read_to_string(chassis.0.join("actions")).unwrap_or_default();

    client.power(PowerAction::ForceRestart).await.unwrap();
    // ipmi_sim takes requests in order: once it has answered a later one,
    // it has run every copy of the reset it received.
    client.power_state().await.unwrap();
    assert_eq!(actions(), "reset 1\n");
    client.close().await.unwrap();
}

/// The `data : 0x05 ...` ipmitool sends for Set System Boot Options
/// parameter 5, read from its `-vvvv` trace.
fn ipmitool_boot_flags_request(sim: &Sim, args: &[&str]) -> Vec<u8> {
    let mut full = vec!["-vvvv"];
    full.extend_from_slice(args);
    let out = sim.ipmitool_output(&full);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let line = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix(">>    data    :"))
        .find(|d| d.trim().starts_with("0x05 "))
        .unwrap_or_else(|| panic!("no boot flags request in ipmitool's trace:\n{text}"));
    line.split_whitespace().map(|b| u8::from_str_radix(b.trim_start_matches("0x"), 16).unwrap()).collect()
}

#[tokio::test]
async fn boot_device_reaches_the_simulator_and_ipmitool_reads_it_back() {
    let sim = Sim::start(SimConfig::default()).await;
    let client = sim.connect().await;

    // PXE, UEFI, next boot only.
    client.set_boot_override(BootOverride { device: BootDevice::Pxe, mode: BootMode::UEFI }).await.unwrap();
    let out = sim.ipmitool(&["chassis", "bootparam", "get", "5"]);
    assert!(out.contains("Boot Device Selector : Force PXE"), "{out}");
    let flags = client.boot_flags().await.unwrap();
    assert_eq!(flags.device, Some(BootDevice::Pxe));
    // ipmi_sim keeps only the device; girder reads what ipmitool reads.
    let data = field(&out, "Boot parameter data");
    assert_eq!(data, format!("00{:02x}000000", flags.selector << 2));

    // Disk, Legacy, persistent.
    client.set_boot_device(BootDevice::Disk, BootMode::Legacy, true).await.unwrap();
    let out = sim.ipmitool(&["chassis", "bootparam", "get", "5"]);
    assert!(out.contains("Boot Device Selector : Force Boot from default Hard-Drive"), "{out}");
    assert_eq!(client.boot_flags().await.unwrap().device, Some(BootDevice::Disk));

    // CD.
    client.set_boot_override(BootOverride { device: BootDevice::Cd, mode: BootMode::Legacy }).await.unwrap();
    let out = sim.ipmitool(&["chassis", "bootparam", "get", "5"]);
    assert!(out.contains("Boot Device Selector : Force Boot from CD/DVD"), "{out}");
    assert_eq!(std::fs::read_to_string(sim.dir.0.join("boot")).unwrap().trim(), "cdrom");

    // The flags girder sends (valid, persistent, EFI, device) are the bytes
    // ipmitool sends for the same request: ipmi_sim cannot show those bits.
    for (args, device, mode, persistent) in [
        (&["chassis", "bootdev", "pxe", "options=efiboot"][..], BootDevice::Pxe, BootMode::UEFI, false),
        (&["chassis", "bootdev", "disk", "options=persistent"][..], BootDevice::Disk, BootMode::Legacy, true),
        (&["chassis", "bootdev", "disk", "options=efiboot,persistent"][..], BootDevice::Disk, BootMode::UEFI, true),
        (&["chassis", "bootdev", "cdrom"][..], BootDevice::Cd, BootMode::Legacy, false),
    ] {
        let ours = boot_flags(device, mode, persistent).unwrap();
        let theirs = ipmitool_boot_flags_request(&sim, args);
        assert_eq!(theirs[0], 0x05);
        assert_eq!(&theirs[1..], &ours[..], "{args:?}");
    }

    // UEFI HTTP boot has no IPMI selector.
    let err =
        client.set_boot_override(BootOverride { device: BootDevice::Http, mode: BootMode::UEFI }).await.unwrap_err();
    assert_eq!(err.reason(), "Unsupported", "{err}");
    client.close().await.unwrap();
}

/// A FRU image with a chassis, a board and a product area.
fn fru_image() -> Vec<u8> {
    fn area(fixed: &[u8], fields: &[&[u8]]) -> Vec<u8> {
        let mut a = fixed.to_vec();
        for f in fields {
            a.push(0xc0 | f.len() as u8);
            a.extend_from_slice(f);
        }
        a.push(0xc1);
        while !(a.len() + 1).is_multiple_of(8) {
            a.push(0);
        }
        a[1] = ((a.len() + 1) / 8) as u8;
        let sum = a.iter().fold(0u8, |s, b| s.wrapping_add(*b));
        a.push(sum.wrapping_neg());
        a
    }
    let chassis = area(&[0x01, 0, 0x17], &[b"CH-PART-1", b"CH-SERIAL-1"]);
    let board = area(&[0x01, 0, 0x19, 0, 0, 0], &[b"Board Maker", b"Board X1", b"BRD-SN-1", b"BRD-PN-1", b""]);
    let product = area(&[0x01, 0, 0x19], &[b"Girder Labs", b"Sim Server 1", b"GS-1", b"1.0", b"SIM-0001", b"", b""]);
    let board_at = 1 + chassis.len() / 8;
    let product_at = board_at + board.len() / 8;
    let mut header = vec![0x01, 0x00, 1, board_at as u8, product_at as u8, 0x00, 0x00];
    let sum = header.iter().fold(0u8, |s, b| s.wrapping_add(*b));
    header.push(sum.wrapping_neg());
    [header, chassis, board, product].concat()
}

#[tokio::test]
async fn identity_and_inventory_match_ipmitool() {
    let sim = Sim::start(SimConfig {
        guid: Some("4c4c4544003252108030b4c04f4e4e32"),
        fru: Some(fru_image()),
        chassis_control: None,
    })
    .await;
    let client = sim.connect().await;

    let identity = client.identity().await.unwrap();
    let fru = sim.ipmitool(&["fru", "print", "0"]);
    assert_eq!(identity.vendor.as_deref(), Some(field(&fru, "Product Manufacturer").as_str()));
    assert_eq!(identity.model.as_deref(), Some(field(&fru, "Product Name").as_str()));
    assert_eq!(identity.serial_number.as_deref(), Some(field(&fru, "Product Serial").as_str()));
    assert_eq!(identity.vendor.as_deref(), Some("Girder Labs"));
    assert_eq!(identity.serial_number.as_deref(), Some("SIM-0001"));

    let guid = sim.ipmitool(&["mc", "guid"]);
    assert_eq!(identity.uuid.as_deref(), Some(field(&guid, "System GUID").as_str()), "{guid}");

    let info = sim.ipmitool(&["mc", "info"]);
    let device = client.device_id().await.unwrap();
    assert_eq!(device.firmware, field(&info, "Firmware Revision"));
    assert_eq!(device.ipmi_version, field(&info, "IPMI Version"));
    assert_eq!(device.manufacturer_id.to_string(), field(&info, "Manufacturer ID"));

    let hardware = client.inventory().await.unwrap();
    assert_eq!(hardware.vendor, identity.vendor);
    assert_eq!(hardware.uuid, identity.uuid);
    assert_eq!(hardware.firmware.and_then(|f| f.bmc), Some(device.firmware));
    // IPMI says nothing of CPUs, memory, NICs or disks: the agent will.
    assert!(hardware.cpu.is_none() && hardware.nics.is_empty() && hardware.storage.is_empty());
    client.close().await.unwrap();

    // Without FRU data: those fields are empty, not an error. (ipmi_sim
    // needs a GUID for RMCP+; this one is in RFC 4122 byte order.)
    let bare =
        Sim::start(SimConfig { guid: Some("1571d3525a1043f99eef975924d1ae75"), fru: None, chassis_control: None })
            .await;
    let client = bare.connect().await;
    let identity = client.identity().await.unwrap();
    assert_eq!(identity.model, None);
    assert_eq!(identity.serial_number, None);
    assert_eq!(identity.uuid.as_deref(), Some("1571d352-5a10-43f9-9eef-975924d1ae75"));
    assert_eq!(identity.uuid.as_deref(), Some(field(&bare.ipmitool(&["mc", "guid"]), "System GUID").as_str()));
    client.close().await.unwrap();
}

#[tokio::test]
async fn wrong_credentials_are_an_auth_error_that_names_the_bmc_but_not_the_password() {
    let sim = Sim::start(SimConfig::default()).await;
    let wrong = "Wr0ng-Pa55-Not-Shown";
    let err =
        IpmiClient::connect(sim.address(), Credentials::new(USER, wrong), BmcOptions::default()).await.unwrap_err();
    assert!(err.is_auth(), "{err}");
    assert_eq!(err.reason(), "AuthenticationFailed");
    let text = format!("{err} {err:?}");
    assert!(text.contains(&format!("ipmi://127.0.0.1:{}", sim.port)), "{text}");
    assert!(!text.contains(wrong) && !text.contains(PASSWORD), "{text}");

    let err = IpmiClient::connect(sim.address(), Credentials::new("nobody", PASSWORD), BmcOptions::default())
        .await
        .unwrap_err();
    assert!(err.is_auth(), "{err}");
    assert!(!format!("{err} {err:?}").contains(PASSWORD));

    // The refused attempts left no session behind: only ipmitool's own.
    assert_eq!(sim.active_sessions(), 1);
}

#[tokio::test]
async fn an_unused_port_fails_fast_as_unreachable() {
    let port = free_udp_port();
    let address = BmcAddress::parse(&format!("ipmi://127.0.0.1:{port}")).unwrap();
    let options = BmcOptions { timeout: Duration::from_secs(2), ..Default::default() };
    let started = Instant::now();
    let err = girder::bmc::connect(&address, Credentials::new(USER, PASSWORD), options).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert!(err.is_unreachable(), "{err}");
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(!format!("{err:?}").contains(PASSWORD));
}

#[tokio::test]
async fn close_ends_the_session_and_so_does_drop() {
    let sim = Sim::start(SimConfig::default()).await;
    assert_eq!(sim.active_sessions(), 1, "only ipmitool's own");

    let client = sim.connect().await;
    client.power_state().await.unwrap();
    assert_eq!(sim.active_sessions(), 2);
    client.close().await.unwrap();
    assert_eq!(sim.active_sessions(), 1);
    assert!(sim.log().contains("Session closed: Closed due to request"));
    // Closing again is fine, and the client logs in again when used.
    client.close().await.unwrap();
    assert_eq!(client.power_state().await.unwrap(), PowerState::Off);
    assert_eq!(sim.active_sessions(), 2);
    client.close().await.unwrap();

    // Dropped without close(): the session is closed all the same (the drop
    // sends Close Session without waiting, so poll).
    let client = sim.connect().await;
    assert_eq!(sim.active_sessions(), 2);
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sim.active_sessions() != 1 {
        assert!(Instant::now() < deadline, "the dropped client's session is still open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Through the trait object `connect()` gives.
    let bmc: Box<dyn Bmc> =
        girder::bmc::connect(&sim.address(), Credentials::new(USER, PASSWORD), BmcOptions::default()).await.unwrap();
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
    assert!(!format!("{bmc:?}").contains(PASSWORD));
    bmc.close().await.unwrap();
    assert_eq!(sim.active_sessions(), 1);
}

#[tokio::test]
async fn a_restarted_bmc_gets_a_new_session_by_itself() {
    let mut sim = Sim::start(SimConfig::default()).await;
    let client = sim.connect().await;
    client.power(PowerAction::On).await.unwrap();
    wait_power(&sim, &client, PowerState::On).await;

    // The BMC restarts: its sessions are gone. Same port, same state.
    sim.stop();
    sim.launch().await;
    assert_eq!(client.power_state().await.unwrap(), PowerState::On);
    client.power(PowerAction::ForceOff).await.unwrap();
    wait_power(&sim, &client, PowerState::Off).await;
    client.close().await.unwrap();
    assert_eq!(sim.active_sessions(), 1);
}

#[tokio::test]
async fn cipher_suites_are_negotiated_in_order() {
    let sim = Sim::start(SimConfig::default()).await;
    // ipmi_sim has no SHA-256 suite: 17 is refused and 3 is used.
    let options = IpmiOptions { cipher_suites: vec![CipherSuite::Suite17, CipherSuite::Suite3] };
    let client =
        IpmiClient::connect_with(sim.address(), Credentials::new(USER, PASSWORD), BmcOptions::default(), options)
            .await
            .unwrap();
    assert_eq!(client.cipher_suite().await, Some(CipherSuite::Suite3));
    assert_eq!(client.power_state().await.unwrap(), PowerState::Off);
    client.close().await.unwrap();

    let only_17 = IpmiOptions { cipher_suites: vec![CipherSuite::Suite17] };
    let err = IpmiClient::connect_with(sim.address(), Credentials::new(USER, PASSWORD), BmcOptions::default(), only_17)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "Unsupported", "{err}");
    assert!(err.to_string().contains("cipher suite 17"), "{err}");
}

#[tokio::test]
async fn concurrent_callers_share_one_session_one_request_at_a_time() {
    let sim = Sim::start(SimConfig::default()).await;
    let client = sim.connect().await;
    let calls = (0..16).map(|_| client.power_state());
    for result in futures::future::join_all(calls).await {
        assert_eq!(result.unwrap(), PowerState::Off);
    }
    assert_eq!(sim.active_sessions(), 2, "one session for all of them");
    client.close().await.unwrap();
}

#[tokio::test]
async fn girder_bmc_probe_reads_the_simulator_as_ipmitool_does_with_a_nodes_credentials_secret() {
    let sim = Sim::start(SimConfig {
        guid: Some("4c4c4544003252108030b4c04f4e4e32"),
        fru: Some(fru_image()),
        chassis_control: None,
    })
    .await;
    // The credentials as a BareMetalNode names them: a Secret, read through
    // the kubeconfig.
    let client = support::client().await;
    let ns = support::TestNamespace::new(&client, "probe").await;
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> = kube::Api::namespaced(client.clone(), &ns.name);
    let secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "bmc"}, "stringData": {"username": USER, "password": PASSWORD}
    }))
    .unwrap();
    secrets.create(&Default::default(), &secret).await.unwrap();
    let address = sim.address().to_string();
    let args = ["bmc", "probe", &address, "--credentials-secret", "bmc", "-n", &ns.name];
    let (ok, report, err) = support::girder_cli(&args, "");
    assert!(ok, "{report}\n{err}\n{}", sim.log());
    assert!(!report.contains(PASSWORD) && !err.contains(PASSWORD), "the password shows:\n{report}\n{err}");
    let fact = |what: &str| -> String {
        let values = support::probe_fact(&report, what);
        values.first().unwrap_or_else(|| panic!("{what}: {report}")).to_string()
    };
    let info = sim.ipmitool(&["mc", "info"]);
    let bmc = fact("BMC");
    assert!(
        bmc.starts_with(&format!(
            "IPMI {}, firmware {}",
            field(&info, "IPMI Version"),
            field(&info, "Firmware Revision")
        )),
        "{bmc}\n{info}"
    );
    assert!(bmc.contains(&format!("(IANA {})", field(&info, "Manufacturer ID"))), "{bmc}\n{info}");
    assert_eq!(fact("system GUID"), field(&sim.ipmitool(&["mc", "guid"]), "System GUID"));
    assert_eq!(fact("power"), sim.ipmitool_power().as_str());
    assert!(fact("session").starts_with("RMCP+ cipher suite 3"), "{report}");
    let identity = report.lines().find(|l| l.trim_start().starts_with("identity")).unwrap();
    assert!(identity.contains("Girder Labs") && identity.contains("SIM-0001"), "{identity}");
    // It closed its session, and changed nothing.
    assert_eq!(sim.active_sessions(), 1, "only ipmitool's own: {report}");
    assert!(sim.actions().is_empty(), "the probe acted on the chassis: {:?}", sim.actions());

    // A Secret that does not exist: said before any call to the BMC.
    let args = ["bmc", "probe", &address, "--credentials-secret", "absent", "-n", &ns.name];
    let (ok, _, err) = support::girder_cli(&args, "");
    assert!(!ok && err.contains("credentials Secret absent does not exist"), "{err}");
}
