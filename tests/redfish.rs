//! The Redfish driver against its real peer: sushy-tools' `sushy-emulator
//! --fake`, started through `e2e/sushy.sh` (which installs it into a cached
//! venv on first use), one emulator per test, on loopback only.
//!
//! What sushy-tools 2.2.0 offers, and so what is proven here: discovery,
//! power (with delayed transitions of 1-11 s), boot override, a small
//! inventory (vendor, UUID, NICs, BMC firmware), basic authentication and
//! HTTPS. It has **no SessionService**, no ETags and never answers 503: those
//! paths are proven against a local fake in `src/bmc/redfish/tests.rs`.

use girder::api::node::BootMode;
use girder::bmc::{
    AuthMode, Bmc, BmcAddress, BmcError, BmcOptions, BootDevice, BootOverride, Credentials, PowerAction, PowerState,
    RedfishClient,
};
mod support;

use std::time::{Duration, Instant};
use support::sushy::*;
use support::{free_port, probe_fact};

async fn connect(address: BmcAddress, options: BmcOptions) -> Result<RedfishClient, BmcError> {
    RedfishClient::connect(address, Credentials::new(USER, PASSWORD), options).await
}

const UUID_A: &str = "5a7e0000-0000-4000-8000-00000000000a";
const UUID_B: &str = "5a7e0000-0000-4000-8000-00000000000b";

#[tokio::test]
async fn discovery_picks_the_named_or_the_only_system_and_lists_choices_otherwise() {
    let two = Sushy::start(SushyConfig {
        systems: vec![
            FakeSystem::new(UUID_A, "node-a", "Off", &["52:54:00:00:0a:01"]),
            FakeSystem::new(UUID_B, "node-b", "On", &["52:54:00:00:0b:01"]),
        ],
        ..Default::default()
    })
    .await;
    let one = Sushy::start(SushyConfig::default()).await;

    // Two systems and none named: refused, with both listed.
    let err = connect(two.address(None), BmcOptions::default()).await.unwrap_err();
    assert_eq!(err.reason(), "AmbiguousSystem", "{err}");
    let text = err.to_string();
    assert!(text.contains(&format!("/redfish/v1/Systems/{UUID_A}")), "{text}");
    assert!(text.contains(&format!("/redfish/v1/Systems/{UUID_B}")), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{}", two.port)), "names the BMC: {text}");

    // Named by ID.
    let client = connect(two.address(Some(UUID_B)), BmcOptions::default()).await.unwrap();
    assert_eq!(client.system_path(), format!("/redfish/v1/Systems/{UUID_B}"));
    assert_eq!(client.identity().await.unwrap().uuid.as_deref(), Some(UUID_B));
    assert_eq!(client.power_state().await.unwrap(), PowerState::On);
    client.close().await.unwrap();

    // Named by its alias: sushy redirects to the canonical path, which is kept.
    let client = connect(two.address(Some("node-a")), BmcOptions::default()).await.unwrap();
    assert_eq!(client.system_path(), format!("/redfish/v1/Systems/{UUID_A}"));
    assert_eq!(client.power_state().await.unwrap(), PowerState::Off);
    client.close().await.unwrap();

    // Named but absent: refused, with the choices.
    let err = connect(two.address(Some("node-z")), BmcOptions::default()).await.unwrap_err();
    assert_eq!(err.reason(), "SystemNotFound", "{err}");
    assert!(err.to_string().contains(UUID_A) && err.to_string().contains(UUID_B), "{err}");

    // One system and none named: that one (sushy's default fake system).
    let client = connect(one.address(None), BmcOptions::default()).await.unwrap();
    let (_, collection) = one.get("/redfish/v1/Systems").await;
    assert_eq!(collection["Members"][0]["@odata.id"].as_str(), Some(client.system_path()));
    client.close().await.unwrap();
}

/// Polls the driver until the system is in `want`, and checks the emulator
/// says the same on a raw read.
async fn wait_power(sushy: &Sushy, client: &RedfishClient, want: PowerState) {
    let deadline = Instant::now() + POWER_PATIENCE;
    loop {
        let state = client.power_state().await.unwrap();
        if state == want {
            let (_, raw) = sushy.get(client.system_path()).await;
            assert_eq!(raw["PowerState"].as_str(), Some(want.as_str()), "raw read of {}", client.system_path());
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} still {state} after {POWER_PATIENCE:?}, want {want}",
            client.system_path()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn power_actions_reach_the_emulator() {
    // One system per case, all at once: each transition takes sushy 1-11 s.
    let cases: [(&str, &str, PowerAction, PowerState); 5] = [
        ("5a7e0000-0000-4000-8000-000000000101", "Off", PowerAction::On, PowerState::On),
        ("5a7e0000-0000-4000-8000-000000000102", "On", PowerAction::ForceOff, PowerState::Off),
        ("5a7e0000-0000-4000-8000-000000000103", "On", PowerAction::GracefulShutdown, PowerState::Off),
        // Nothing else turns these on: the restart reached the emulator.
        ("5a7e0000-0000-4000-8000-000000000104", "Off", PowerAction::ForceRestart, PowerState::On),
        // sushy offers no PowerCycle: the driver turns an off system on.
        ("5a7e0000-0000-4000-8000-000000000105", "Off", PowerAction::PowerCycle, PowerState::On),
    ];
    let sushy = Sushy::start(SushyConfig {
        systems: cases.iter().map(|&(uuid, power, _, _)| FakeSystem::new(uuid, uuid, power, &[])).collect(),
        ..Default::default()
    })
    .await;
    let runs = cases.iter().map(|(uuid, initial, action, want)| {
        let sushy = &sushy;
        async move {
            let client = connect(sushy.address(Some(uuid)), BmcOptions::default()).await.unwrap();
            let before = if *initial == "On" { PowerState::On } else { PowerState::Off };
            assert_eq!(client.power_state().await.unwrap(), before);
            client.power(*action).await.unwrap();
            wait_power(sushy, &client, *want).await;
            // Asking again for the state it is in is fine.
            if *action == PowerAction::On {
                client.power(PowerAction::On).await.unwrap();
            }
            client.close().await.unwrap();
        }
    });
    futures::future::join_all(runs).await;
}

#[tokio::test]
async fn boot_override_and_inventory() {
    let sushy = Sushy::start(SushyConfig {
        systems: vec![FakeSystem::new(UUID_A, "inventory", "Off", &["52:54:00:AA:00:01", "52:54:00:aa:00:02"])],
        ..Default::default()
    })
    .await;
    let client = connect(sushy.address(None), BmcOptions::default()).await.unwrap();

    for (device, mode, target, mode_name) in [
        (BootDevice::Pxe, BootMode::UEFI, "Pxe", "UEFI"),
        (BootDevice::Cd, BootMode::Legacy, "Cd", "Legacy"),
        (BootDevice::Disk, BootMode::UEFI, "Hdd", "UEFI"),
        (BootDevice::Pxe, BootMode::Legacy, "Pxe", "Legacy"),
    ] {
        client.set_boot_override(BootOverride { device, mode }).await.unwrap();
        let (_, raw) = sushy.get(client.system_path()).await;
        assert_eq!(raw["Boot"]["BootSourceOverrideTarget"].as_str(), Some(target), "{raw}");
        assert_eq!(raw["Boot"]["BootSourceOverrideMode"].as_str(), Some(mode_name), "{raw}");
    }

    let identity = client.identity().await.unwrap();
    assert_eq!(identity.vendor.as_deref(), Some("Sushy Emulator"));
    assert_eq!(identity.uuid.as_deref(), Some(UUID_A));

    // sushy's fake driver has no processors (501), storage (500) or memory
    // (404): the inventory does without them.
    let hw = client.inventory().await.unwrap();
    assert_eq!(hw.vendor.as_deref(), Some("Sushy Emulator"));
    assert_eq!(hw.uuid.as_deref(), Some(UUID_A));
    let macs: Vec<&str> = hw.nics.iter().map(|n| n.mac.as_str()).collect();
    assert_eq!(macs, ["52:54:00:aa:00:01", "52:54:00:aa:00:02"]);
    assert_eq!(hw.firmware.and_then(|f| f.bmc).as_deref(), Some("1.00"));
    assert!(hw.cpu.is_none() && hw.storage.is_empty());
    client.close().await.unwrap();
}

#[tokio::test]
async fn sushy_offers_no_sessions_so_basic_auth_is_used_and_nothing_is_left_open() {
    let sushy = Sushy::start(SushyConfig { basic_auth: true, ..Default::default() }).await;
    let (_, root) = sushy.get("/redfish/v1/").await;
    assert!(root.get("SessionService").is_none(), "sushy-tools grew sessions: test them here: {root}");
    assert_eq!(sushy.get("/redfish/v1/SessionService/Sessions").await.0, 404);

    let client = connect(sushy.address(None), BmcOptions::default()).await.unwrap();
    assert_eq!(client.auth_mode(), AuthMode::Basic);
    assert_eq!(client.power_state().await.unwrap(), PowerState::Off);
    client.close().await.unwrap();
    assert_eq!(sushy.get("/redfish/v1/SessionService/Sessions").await.0, 404, "no session exists after close()");

    // The emulator really checks: without credentials it refuses.
    let status = sushy.raw.get(format!("{}/redfish/v1/Systems", sushy.base())).send().await.unwrap().status();
    assert_eq!(status.as_u16(), 401);
}

#[tokio::test]
async fn a_wrong_password_is_an_auth_error_that_names_the_bmc_but_not_the_password() {
    let sushy = Sushy::start(SushyConfig { basic_auth: true, ..Default::default() }).await;
    let wrong = "Wr0ng-Pa55word-Not-In-Errors";
    let err = RedfishClient::connect(sushy.address(None), Credentials::new(USER, wrong), BmcOptions::default())
        .await
        .unwrap_err();
    assert!(err.is_auth(), "{err}");
    let text = format!("{err} {err:?}");
    assert!(text.contains(&format!("redfish+http://127.0.0.1:{}", sushy.port)), "{text}");
    assert!(!text.contains(wrong) && !text.contains(PASSWORD), "{text}");
}

#[tokio::test]
async fn an_unreachable_bmc_fails_fast_with_a_connection_or_timeout_error() {
    let options = BmcOptions { timeout: Duration::from_secs(2), ..Default::default() };

    // Nothing listens.
    let port = free_port();
    let address = BmcAddress::parse(&format!("redfish+http://127.0.0.1:{port}")).unwrap();
    let started = Instant::now();
    let err = connect(address, options.clone()).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(err.reason(), "ConnectionFailed", "{err}");
    assert!(err.is_unreachable());
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");

    // Something listens and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let address = BmcAddress::parse(&format!("redfish+http://127.0.0.1:{port}")).unwrap();
    let started = Instant::now();
    let err = connect(address, options).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.reason(), "Timeout", "{err}");
    assert!(err.is_unreachable());
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(8), "took {took:?}");
    drop(silent);
}

#[tokio::test]
async fn https_is_verified_unless_told_otherwise() {
    let sushy = Sushy::start(SushyConfig { tls: true, ..Default::default() }).await;

    // Verified by default: a self-signed certificate is refused.
    let err = connect(sushy.address(None), BmcOptions::default()).await.unwrap_err();
    assert_eq!(err.reason(), "CertificateNotTrusted", "{err}");
    assert!(err.to_string().contains("disableCertificateVerification"), "{err}");

    // A bundle with another CA does not help.
    let other = TempDir::new("girder-other-ca");
    let (other_cert, _) = self_signed_cert(&other.0, "other");
    let options = BmcOptions { ca_bundle: Some(std::fs::read(other_cert).unwrap()), ..Default::default() };
    let err = connect(sushy.address(None), options).await.unwrap_err();
    assert_eq!(err.reason(), "CertificateNotTrusted", "{err}");

    // Its own certificate as the CA bundle: trusted.
    let options =
        BmcOptions { ca_bundle: Some(std::fs::read(sushy.dir.0.join("server.crt")).unwrap()), ..Default::default() };
    let client = connect(sushy.address(None), options).await.unwrap();
    assert_eq!(client.power_state().await.unwrap(), PowerState::Off);
    client.close().await.unwrap();

    // The explicit opt-out.
    let options = BmcOptions { disable_certificate_verification: true, ..Default::default() };
    let client = connect(sushy.address(None), options).await.unwrap();
    assert_eq!(client.power_state().await.unwrap(), PowerState::Off);
    client.close().await.unwrap();
}

#[tokio::test]
async fn girder_bmc_probe_shows_what_the_driver_sees_and_creates_nothing() {
    let sushy = Sushy::start(SushyConfig {
        systems: vec![
            FakeSystem::new(UUID_A, "node-a", "Off", &["52:54:00:00:0a:01"]),
            FakeSystem::new(UUID_B, "node-b", "On", &["52:54:00:00:0b:01"]),
        ],
        basic_auth: true,
        ..Default::default()
    })
    .await;
    let address = sushy.address(Some("node-b")).to_string();
    let (ok, report, err) = support::girder_cli(
        &["bmc", "probe", &address, "--username", USER, "--password-stdin"],
        &format!("{PASSWORD}\n"),
    );
    assert!(ok, "{report}\n{err}");
    assert!(!report.contains(PASSWORD) && !err.contains(PASSWORD), "the password shows:\n{report}\n{err}");
    for step in ["connect", "identity", "power state", "inventory", "describe", "close"] {
        let line =
            report.lines().find(|l| l.trim_start().starts_with(step)).unwrap_or_else(|| panic!("{step}: {report}"));
        assert!(line.contains(" s  ok "), "{line}");
    }
    // What the emulator says, read raw, is what the probe shows.
    let (_, system) = sushy.get(&format!("/redfish/v1/Systems/{UUID_B}")).await;
    let (_, root) = sushy.get("/redfish/v1/").await;
    assert_eq!(probe_fact(&report, "system"), [format!("/redfish/v1/Systems/{UUID_B}")], "{report}");
    let systems = probe_fact(&report, "systems");
    assert!(systems[0].contains(UUID_A) && systems[0].contains(UUID_B), "{report}");
    assert_eq!(probe_fact(&report, "power"), [system["PowerState"].as_str().unwrap()], "{report}");
    assert!(
        probe_fact(&report, "service")[0].starts_with(&format!("Redfish {}", root["RedfishVersion"].as_str().unwrap()))
    );
    let targets = system["Boot"]["BootSourceOverrideTarget@Redfish.AllowableValues"].as_array().unwrap();
    let shown = probe_fact(&report, "boot targets")[0];
    assert!(targets.iter().all(|t| shown.contains(t.as_str().unwrap())), "{shown} vs {targets:?}");
    let resets = system["Actions"]["#ComputerSystem.Reset"]["ResetType@Redfish.AllowableValues"].as_array().unwrap();
    let shown = probe_fact(&report, "reset types")[0];
    assert!(resets.iter().all(|t| shown.contains(t.as_str().unwrap())), "{shown} vs {resets:?}");
    // sushy offers no sessions: basic authentication, said as a quirk.
    assert_eq!(probe_fact(&report, "authentication"), ["HTTP basic on every request"], "{report}");
    assert!(report.contains("- no session service"), "{report}");
    // Its manager's virtual media: a CD and a floppy drive, empty. sushy's
    // fake driver keeps no BIOS (only its libvirt driver does).
    let media = probe_fact(&report, "virtual media");
    assert!(media.iter().any(|m| m.starts_with("Cd (") && m.contains("empty; InsertMedia")), "{report}");
    assert!(media.iter().any(|m| m.starts_with("Floppy (")), "{report}");
    assert_eq!(probe_fact(&report, "BIOS"), ["(not offered)"], "{report}");
    // The machine was left as it was: still on, no override set.
    let (_, after) = sushy.get(&format!("/redfish/v1/Systems/{UUID_B}")).await;
    assert_eq!(after["PowerState"], system["PowerState"]);
    assert_eq!(after["Boot"], system["Boot"]);

    // JSON for scripts: the same steps and facts.
    let (ok, json, err) = support::girder_cli(
        &["bmc", "probe", &address, "--username", USER, "--password-stdin", "-o", "json"],
        &format!("{PASSWORD}\n"),
    );
    assert!(ok, "{json}\n{err}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["steps"].as_array().unwrap().len(), 6, "{json}");
    assert!(json["description"]["facts"].as_array().unwrap().iter().any(|f| f[0] == "boot targets"), "{json}");

    // A wrong password: the connect step fails, says why, and the command
    // exits non-zero without showing either password.
    let (ok, report, err) =
        support::girder_cli(&["bmc", "probe", &address, "--username", USER, "--password-stdin"], "Wrong-Pa55\n");
    assert!(!ok, "{report}");
    let line = report.lines().find(|l| l.contains("connect")).unwrap();
    assert!(line.contains("FAILED") && line.contains("401"), "{report}");
    assert!(err.contains("1 of 1 steps failed"), "{err}");
    assert!(!report.contains("Wrong-Pa55") && !err.contains("Wrong-Pa55"), "{report}\n{err}");
    // No credentials at all: clap says which flags give them.
    let (ok, _, err) = support::girder_cli(&["bmc", "probe", &address], "");
    assert!(!ok && err.contains("--credentials-secret") && err.contains("--username"), "{err}");
}
