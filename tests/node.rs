//! The BareMetalNode lifecycle against real peers: a kube-apiserver and
//! sushy-tools' Redfish emulator. Registering -> Inspecting -> Available,
//! power under the spec's control, wrong credentials, unreachable and
//! self-signed BMCs, maintenance, and deletion.

mod support;

use girder::api::node::NodePhase;
use girder::api::{BareMetalNode, ConditionStatus};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use support::sushy::*;
use support::*;

fn system_name(i: usize) -> String {
    format!("node-{i:02}")
}

fn mac(i: usize) -> String {
    format!("52:54:00:10:00:{i:02x}")
}

/// An emulator with `count` systems, all powered off, each with one NIC.
async fn lab(count: usize, basic_auth: bool, tls: bool) -> Sushy {
    let systems = (0..count)
        .map(|i| {
            let mac = mac(i);
            FakeSystem::new(&format!("0000000a-0000-4000-8000-{i:012}"), &system_name(i), "Off", &[mac.as_str()])
        })
        .collect();
    Sushy::start(SushyConfig { systems, basic_auth, tls, ..Default::default() }).await
}

async fn create_secret(client: &Client, ns: &str, name: &str, password: &str) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": name },
        "stringData": { "username": USER, "password": password }
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &secret).await.expect("create Secret");
}

async fn create_node(client: &Client, ns: &str, name: &str, spec: serde_json::Value) {
    let nodes: Api<BareMetalNode> = Api::namespaced(client.clone(), ns);
    let node: BareMetalNode =
        serde_json::from_value(json!({ "apiVersion": "girder.dev/v1alpha1", "kind": "BareMetalNode", "metadata": { "name": name }, "spec": spec }))
            .expect("node");
    nodes.create(&PostParams::default(), &node).await.unwrap_or_else(|e| panic!("create {name}: {e}"));
}

fn node_spec(sushy: &Sushy, i: usize, secret: &str, online: bool) -> serde_json::Value {
    json!({
        "bmc": {
            "address": sushy.address(Some(&system_name(i))).to_string(),
            "credentialsSecretRef": { "name": secret },
        },
        "bootMACAddress": mac(i),
        "online": online,
    })
}

fn phase(node: &BareMetalNode) -> Option<NodePhase> {
    node.status.as_ref()?.phase
}

fn is_available(node: &BareMetalNode) -> bool {
    phase(node) == Some(NodePhase::Available) && condition(node, "Ready").is_some_and(|c| c.0 == ConditionStatus::True)
}

/// The power state the emulator reports for system `i`.
async fn emulator_power(sushy: &Sushy, i: usize) -> String {
    let (_, system) = sushy.get(&format!("/redfish/v1/Systems/{}", system_name(i))).await;
    system["PowerState"].as_str().unwrap_or_default().to_string()
}

async fn wait_emulator_power(sushy: &Sushy, i: usize, want: &str) {
    wait_for(&format!("{} to be powered {want} at the emulator", system_name(i)), || async move {
        (emulator_power(sushy, i).await == want).then_some(())
    })
    .await;
}

fn fast_operator(ns: &str) -> Operator {
    Operator::start_with(OperatorOptions::new(ns, "solo"), &["--power-poll-interval", "2", "--bmc-timeout", "5"])
}

#[tokio::test]
async fn twenty_nodes_reach_available_with_inventory_and_power_follows_the_spec() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "nodes").await;
    // No basic auth here: sushy checks a bcrypt hash on every request, which
    // would make the emulator, not girder, the bottleneck (auth has its own test).
    let sushy = lab(20, false, false).await;
    create_secret(&client, &ns.name, "bmc", PASSWORD).await;
    for i in 0..20 {
        create_node(&client, &ns.name, &system_name(i), node_spec(&sushy, i, "bmc", false)).await;
    }
    let operator = fast_operator(&ns.name);

    for i in 0..20 {
        let node = node_where(&client, &ns.name, &system_name(i), "Available", is_available).await;
        let status = node.status.clone().unwrap();
        let hardware = status.hardware.expect("inventory");
        assert!(hardware.nics.iter().any(|n| n.mac.eq_ignore_ascii_case(&mac(i))), "{hardware:?}");
        assert!(hardware.uuid.is_some(), "{hardware:?}");
        assert_eq!(condition(&node, "Inspected").map(|c| c.0), Some(ConditionStatus::True));
        assert_eq!(condition(&node, "CredentialsValid").map(|c| c.0), Some(ConditionStatus::True));
        assert_eq!(status.power_state.as_deref(), Some("Off"));
        let history = status.operation_history.expect("history");
        assert!(history.register.and_then(|w| w.end).is_some() && history.inspect.and_then(|w| w.end).is_some());
        assert!(node.metadata.finalizers.unwrap_or_default().contains(&"girder.dev/power-off".to_string()));
    }

    // Power follows the spec, both ways.
    let nodes: Api<BareMetalNode> = Api::namespaced(client.clone(), &ns.name);
    nodes
        .patch(&system_name(3), &PatchParams::default(), &Patch::Merge(json!({"spec": {"online": true}})))
        .await
        .unwrap();
    wait_emulator_power(&sushy, 3, "On").await;
    let node = node_where(&client, &ns.name, &system_name(3), "powered on and Ready", |n| {
        is_available(n) && n.status.as_ref().and_then(|s| s.power_state.as_deref()) == Some("On")
    })
    .await;
    assert_eq!(condition(&node, "PoweredOn").map(|c| c.0), Some(ConditionStatus::True));
    nodes
        .patch(&system_name(3), &PatchParams::default(), &Patch::Merge(json!({"spec": {"online": false}})))
        .await
        .unwrap();
    wait_emulator_power(&sushy, 3, "Off").await;
    assert_eq!(emulator_power(&sushy, 4).await, "Off", "other systems are left alone");

    // Power polls reuse each node's BMC client while the credentials Secret
    // is unchanged (the metadata watch says so): no Secret read per poll.
    let reads = operator.metric("girder_credentials_reads_total").unwrap_or(0.0);
    let polls = operator.metric("girder_bmc_calls_total{call=\"power_state\"}").unwrap_or(0.0);
    wait_for("three more rounds of power polls", || {
        let now = operator.metric("girder_bmc_calls_total{call=\"power_state\"}").unwrap_or(0.0);
        async move { (now >= polls + 60.0).then_some(()) }
    })
    .await;
    assert_eq!(operator.metric("girder_credentials_reads_total").unwrap_or(0.0), reads, "Secret reads during polls");
    assert!(reads >= 20.0, "each node's client was made from a read of the Secret: {reads}");

    // Power actions are recorded as events; no password anywhere.
    let events = run_ok(kubectl().args(["get", "events.events.k8s.io", "-n", &ns.name, "-o", "json"]));
    assert!(events.contains("PowerOn") && events.contains("PowerOff"), "{events}");
    assert!(!events.contains(PASSWORD));
    let all = run_ok(kubectl().args(["get", "bmn", "-n", &ns.name, "-o", "json"]));
    assert!(!all.contains(PASSWORD));
    assert!(!operator.logs().contains(PASSWORD));

    let writes = operator.metric("girder_status_writes_total{kind=\"BareMetalNode\"}").unwrap_or(0.0);
    eprintln!("status writes: {writes} for 20 nodes to Available plus two power changes");
}

#[tokio::test]
async fn wrong_credentials_wait_for_the_secret_to_change() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "creds").await;
    let sushy = lab(1, true, false).await;
    create_secret(&client, &ns.name, "bmc", "not-the-password").await;
    create_node(&client, &ns.name, "node-00", node_spec(&sushy, 0, "bmc", false)).await;
    create_node(&client, &ns.name, "lost", node_spec(&sushy, 0, "no-such-secret", false)).await;
    let operator = fast_operator(&ns.name);

    let node = node_where(&client, &ns.name, "node-00", "credentials refused", |n| {
        condition(n, "CredentialsValid").is_some_and(|c| c.0 == ConditionStatus::False)
    })
    .await;
    let (_, reason, message) = condition(&node, "CredentialsValid").unwrap();
    assert_eq!(reason, "AuthenticationFailed");
    assert!(message.contains("127.0.0.1") && !message.contains("not-the-password"), "{message}");
    assert_eq!(condition(&node, "BMCReachable").map(|c| c.0), Some(ConditionStatus::True));
    assert_eq!(node.status.unwrap().error.unwrap().type_, "RegistrationError");

    let lost =
        node_where(&client, &ns.name, "lost", "secret missing", |n| condition(n, "CredentialsValid").is_some()).await;
    let (_, reason, message) = condition(&lost, "CredentialsValid").unwrap();
    assert_eq!(reason, "SecretNotFound");
    assert!(message.contains("no-such-secret"), "{message}");

    // No retry storm: backoff keeps the BMC calls few.
    let calls_before = operator.metric("girder_bmc_calls_total").unwrap_or(0.0);
    node_where(&client, &ns.name, "node-00", "a few retries", |n| {
        n.status.as_ref().and_then(|s| s.error.as_ref()).is_some_and(|e| e.count >= 3)
    })
    .await;
    let calls_after = operator.metric("girder_bmc_calls_total").unwrap_or(0.0);
    assert!(calls_after - calls_before <= 10.0, "{calls_before} -> {calls_after} BMC calls across two retries");

    // Fixing the Secret registers the node without anyone touching it.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    secrets
        .patch("bmc", &PatchParams::default(), &Patch::Merge(json!({"stringData": {"password": PASSWORD}})))
        .await
        .unwrap();
    let node = node_where(&client, &ns.name, "node-00", "Available after the fix", is_available).await;
    assert!(node.status.unwrap().error.is_none());

    assert!(!operator.logs().contains(PASSWORD) && !operator.logs().contains("not-the-password"));
}

/// The node controller's backoff is its own: the node-network controller,
/// which reconciles the same node after every status write, must not reset
/// it (it once did, and a refused password was retried about once a second,
/// the way BMCs lock accounts).
#[tokio::test]
async fn refused_credentials_are_retried_ever_more_slowly() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "lockout").await;
    let sushy = lab(1, true, false).await;
    apply_yaml(
        &ns.name,
        r#"apiVersion: girder.dev/v1alpha1
kind: Network
metadata: {name: admin}
spec:
  cidr: 10.77.0.0/24
  ranges: [{name: nodes, type: static, start: 10.77.0.10, end: 10.77.0.20}]
"#,
    );
    create_secret(&client, &ns.name, "bmc", "not-the-password").await;
    let mut spec = node_spec(&sushy, 0, "bmc", false);
    spec["networks"] = json!([{ "network": "admin" }]);
    create_node(&client, &ns.name, "node-00", spec).await;
    let _operator = fast_operator(&ns.name);

    let count = |n: &BareMetalNode| n.status.as_ref().and_then(|s| s.error.as_ref()).map_or(0, |e| e.count);
    node_where(&client, &ns.name, "node-00", "the first refusal", |n| count(n) >= 1).await;
    let first = std::time::Instant::now();
    let node = node_where(&client, &ns.name, "node-00", "five more refusals", |n| count(n) >= 6).await;
    let took = first.elapsed();
    // 1, 2, 4, 8, 16 s, each randomised to between half and all of it: at
    // least 15.5 s for five retries (at a second each, they took about 5).
    assert!(took >= std::time::Duration::from_millis(15_500), "five retries after {took:?}: no backoff");
    assert_eq!(condition(&node, "NetworkReady").map(|c| c.0), Some(ConditionStatus::True), "node-network ran");
}

#[tokio::test]
async fn an_unreachable_bmc_is_reported_and_recovers_by_itself() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "flap").await;
    let mut sushy = lab(2, false, false).await;
    create_secret(&client, &ns.name, "bmc", PASSWORD).await;
    for i in 0..2 {
        create_node(&client, &ns.name, &system_name(i), node_spec(&sushy, i, "bmc", i == 1)).await;
    }
    let _operator = fast_operator(&ns.name);
    for i in 0..2 {
        node_where(&client, &ns.name, &system_name(i), "Available", is_available).await;
    }

    sushy.kill();
    let node = node_where(&client, &ns.name, "node-00", "BMC unreachable", |n| {
        condition(n, "BMCReachable").is_some_and(|c| c.0 == ConditionStatus::False)
    })
    .await;
    let (_, reason, message) = condition(&node, "BMCReachable").unwrap();
    assert!(["ConnectionFailed", "Timeout"].contains(&reason.as_str()), "{reason}: {message}");
    assert!(message.contains(&format!("127.0.0.1:{}", sushy.port)), "{message}");
    assert_eq!(condition(&node, "Ready").map(|c| c.0), Some(ConditionStatus::False));

    sushy.restart().await;
    for i in 0..2 {
        let node = node_where(&client, &ns.name, &system_name(i), "recovered", |n| {
            is_available(n) && condition(n, "BMCReachable").is_some_and(|c| c.0 == ConditionStatus::True)
        })
        .await;
        assert!(node.status.unwrap().error.is_none());
    }
    wait_emulator_power(&sushy, 1, "On").await;
}

#[tokio::test]
async fn a_self_signed_bmc_is_refused_unless_verification_is_disabled() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "tls").await;
    let sushy = lab(1, false, true).await;
    create_secret(&client, &ns.name, "bmc", PASSWORD).await;
    create_node(&client, &ns.name, "verified", node_spec(&sushy, 0, "bmc", false)).await;
    let mut trusting = node_spec(&sushy, 0, "bmc", false);
    trusting["bmc"]["disableCertificateVerification"] = json!(true);
    create_node(&client, &ns.name, "trusting", trusting).await;
    let _operator = fast_operator(&ns.name);

    node_where(&client, &ns.name, "trusting", "Available", is_available).await;
    let node = node_where(&client, &ns.name, "verified", "certificate refused", |n| {
        condition(n, "BMCReachable").is_some_and(|c| c.0 == ConditionStatus::False)
    })
    .await;
    let (_, reason, message) = condition(&node, "BMCReachable").unwrap();
    assert_eq!(reason, "CertificateNotTrusted", "{message}");
    assert!(message.contains("disableCertificateVerification"), "{message}");
}

#[tokio::test]
async fn maintenance_stops_every_bmc_call_and_keeps_the_state() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "maint").await;
    let sushy = lab(1, false, false).await;
    create_secret(&client, &ns.name, "bmc", PASSWORD).await;
    create_node(&client, &ns.name, "node-00", node_spec(&sushy, 0, "bmc", false)).await;
    let operator = fast_operator(&ns.name);
    let before = node_where(&client, &ns.name, "node-00", "Available", is_available).await;

    let nodes: Api<BareMetalNode> = Api::namespaced(client.clone(), &ns.name);
    // Counted before the change: the reconcile it causes can complete before
    // the patch call returns, and in maintenance no other one follows.
    let reconciles = operator.metric("girder_reconciles_total{kind=\"BareMetalNode\"}").unwrap_or(0.0);
    nodes
        .patch(
            "node-00",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"maintenance": true, "online": true}})),
        )
        .await
        .unwrap();
    wait_for("the maintenance change to be reconciled", || {
        let now = operator.metric("girder_reconciles_total{kind=\"BareMetalNode\"}");
        async move { (now? > reconciles).then_some(()) }
    })
    .await;
    let calls = operator.metric("girder_bmc_calls_total").unwrap_or(0.0);
    // Several poll intervals go by: still no BMC call, power untouched.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(6);
    while std::time::Instant::now() < deadline {
        assert_eq!(emulator_power(&sushy, 0).await, "Off");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(operator.metric("girder_bmc_calls_total").unwrap_or(0.0), calls, "BMC calls in maintenance");
    let during = nodes.get("node-00").await.unwrap();
    let lifecycle = |n: &BareMetalNode| n.status.as_ref().map(girder::controller::node::owned);
    assert_eq!(lifecycle(&during), lifecycle(&before), "lifecycle status kept in maintenance");

    nodes
        .patch("node-00", &PatchParams::default(), &Patch::Merge(json!({"spec": {"maintenance": false}})))
        .await
        .unwrap();
    wait_emulator_power(&sushy, 0, "On").await;
}

#[tokio::test]
async fn deletion_powers_off_unless_detached_and_says_why_it_waits() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "delete").await;
    let mut sushy = lab(3, false, false).await;
    create_secret(&client, &ns.name, "bmc", PASSWORD).await;
    for i in 0..3 {
        create_node(&client, &ns.name, &system_name(i), node_spec(&sushy, i, "bmc", true)).await;
    }
    let _operator = fast_operator(&ns.name);
    for i in 0..3 {
        wait_emulator_power(&sushy, i, "On").await;
    }
    let nodes: Api<BareMetalNode> = Api::namespaced(client.clone(), &ns.name);
    let gone = |name: String| {
        let nodes = nodes.clone();
        async move {
            wait_for(&format!("{name} to be deleted"), || {
                let nodes = nodes.clone();
                let name = name.clone();
                async move { nodes.get_opt(&name).await.ok().and_then(|n| n.is_none().then_some(())) }
            })
            .await
        }
    };

    // Plain deletion powers the machine off first.
    nodes.delete(&system_name(0), &DeleteParams::default()).await.unwrap();
    gone(system_name(0)).await;
    assert_eq!(emulator_power(&sushy, 0).await, "Off");

    // Detached: deleted with the power left alone.
    nodes
        .patch(
            &system_name(1),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"girder.dev/detached": "true"}}})),
        )
        .await
        .unwrap();
    nodes.delete(&system_name(1), &DeleteParams::default()).await.unwrap();
    gone(system_name(1)).await;
    assert_eq!(emulator_power(&sushy, 1).await, "On");

    // BMC gone: the deletion waits, says why and how to get out.
    sushy.kill();
    nodes.delete(&system_name(2), &DeleteParams::default()).await.unwrap();
    let waiting = node_where(&client, &ns.name, &system_name(2), "deletion blocked", |n| {
        condition(n, "Ready").is_some_and(|c| c.1 == "DeletionBlocked")
    })
    .await;
    let (_, _, message) = condition(&waiting, "Ready").unwrap();
    assert!(message.contains("girder.dev/detached=true") && message.contains("maintenance"), "{message}");
    nodes
        .patch(
            &system_name(2),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"girder.dev/detached": "true"}}})),
        )
        .await
        .unwrap();
    gone(system_name(2)).await;
    sushy.restart().await;
}

#[tokio::test]
async fn an_ipmi_node_reaches_available_and_its_power_is_cross_checked_with_ipmitool() {
    use support::ipmi::{Sim, SimConfig};
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "ipmi").await;
    let sim = Sim::start(SimConfig::default()).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": "ipmi" },
        "stringData": { "username": support::ipmi::USER, "password": support::ipmi::PASSWORD }
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let spec = json!({
        "bmc": { "address": format!("ipmi://127.0.0.1:{}", sim.port), "credentialsSecretRef": { "name": "ipmi" } },
        "bootMode": "Legacy",
        "online": true,
    });
    create_node(&client, &ns.name, "rack-ipmi", spec).await;
    let operator = fast_operator(&ns.name);

    let node = node_where(&client, &ns.name, "rack-ipmi", "Available and on", |n| {
        is_available(n) && n.status.as_ref().and_then(|s| s.power_state.as_deref()) == Some("On")
    })
    .await;
    let (status, reason, _) = condition(&node, "Inspected").unwrap();
    assert_eq!((status, reason.as_str()), (ConditionStatus::False, "InBandInspectionRequired"));
    assert_eq!(sim.ipmitool_power(), girder::bmc::PowerState::On, "ipmitool reads the same simulator");

    let nodes: Api<BareMetalNode> = Api::namespaced(client.clone(), &ns.name);
    nodes.patch("rack-ipmi", &PatchParams::default(), &Patch::Merge(json!({"spec": {"online": false}}))).await.unwrap();
    wait_for("ipmitool to see the power off", || async {
        (sim.ipmitool_power() == girder::bmc::PowerState::Off).then_some(())
    })
    .await;
    assert!(!operator.logs().contains(support::ipmi::PASSWORD));
}
