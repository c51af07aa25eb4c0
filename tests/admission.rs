//! The CRDs against a real API server: they install, valid objects are
//! accepted, and invalid ones are refused at admission with the field named.

mod support;

use girder::api::{BareMetalNode, Network, Role, Workload};
use kube::api::{ApiResource, DynamicObject, PostParams};
use kube::{Api, Client, Resource};
use serde_json::{Value, json};
use support::*;

fn resource_of(kind: &str) -> ApiResource {
    match kind {
        "BareMetalNode" => ApiResource::erase::<BareMetalNode>(&()),
        "Network" => ApiResource::erase::<Network>(&()),
        "Role" => ApiResource::erase::<Role>(&()),
        "Workload" => ApiResource::erase::<Workload>(&()),
        other => panic!("unknown kind {other}"),
    }
}

async fn create(client: &Client, ns: &str, kind: &str, name: &str, spec: Value) -> Result<DynamicObject, kube::Error> {
    let resource = resource_of(kind);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": BareMetalNode::api_version(&()),
        "kind": kind,
        "metadata": { "name": name },
        "spec": spec,
    }))
    .expect("object");
    api.create(&PostParams::default(), &obj).await
}

fn node(mut extra: Value) -> Value {
    let mut spec = json!({
        "bmc": {
            "address": "redfish://bmc-1.lab.example.com/redfish/v1/Systems/1",
            "credentialsSecretRef": { "name": "bmc-1" }
        },
        "bootMACAddress": "52:54:00:aa:bb:01",
        "online": true
    });
    merge(&mut spec, extra.take());
    spec
}

fn network(mut extra: Value) -> Value {
    let mut spec = json!({
        "cidr": "172.30.0.0/24",
        "gateway": "172.30.0.1",
        "ranges": [{ "name": "static", "type": "static", "start": "172.30.0.10", "end": "172.30.0.99" }]
    });
    merge(&mut spec, extra.take());
    spec
}

/// JSON merge patch semantics: objects merge, anything else replaces, null removes.
fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            for (k, v) in patch {
                if v.is_null() {
                    base.remove(&k);
                } else {
                    merge(base.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (base, patch) => *base = patch,
    }
}

struct Invalid {
    what: &'static str,
    kind: &'static str,
    name: &'static str,
    spec: Value,
    /// The field path the API server's message must name.
    field: &'static str,
    /// A fragment of the message a person reads.
    says: &'static str,
}

fn catalog() -> Vec<Invalid> {
    vec![
        Invalid {
            what: "BMC scheme outside redfish, redfish+http, ipmi",
            kind: "BareMetalNode",
            name: "bad-scheme",
            spec: node(json!({ "bmc": { "address": "http://bmc-1.lab.example.com" } })),
            field: "spec.bmc.address",
            says: "must be redfish://",
        },
        Invalid {
            what: "BMC address without a host",
            kind: "BareMetalNode",
            name: "no-host",
            spec: node(json!({ "bmc": { "address": "redfish:///redfish/v1/Systems/1" } })),
            field: "spec.bmc.address",
            says: "must be redfish://",
        },
        Invalid {
            what: "IPMI address with a path",
            kind: "BareMetalNode",
            name: "ipmi-path",
            spec: node(json!({ "bmc": { "address": "ipmi://10.0.0.5/redfish/v1" } })),
            field: "spec.bmc.address",
            says: "ipmi://host[:port]",
        },
        Invalid {
            what: "credentials Secret without a name",
            kind: "BareMetalNode",
            name: "no-secret",
            spec: node(json!({ "bmc": { "credentialsSecretRef": { "name": null } } })),
            field: "spec.bmc.credentialsSecretRef.name",
            says: "Required value",
        },
        Invalid {
            what: "malformed MAC",
            kind: "BareMetalNode",
            name: "bad-mac",
            spec: node(json!({ "bootMACAddress": "52:54:00:zz:bb:01" })),
            field: "spec.bootMACAddress",
            says: "should match",
        },
        Invalid {
            what: "unknown boot mode",
            kind: "BareMetalNode",
            name: "bad-boot-mode",
            spec: node(json!({ "bootMode": "BIOS" })),
            field: "spec.bootMode",
            says: "Unsupported value",
        },
        Invalid {
            what: "unknown inspection mode",
            kind: "BareMetalNode",
            name: "bad-inspection",
            spec: node(json!({ "inspection": "Sometimes" })),
            field: "spec.inspection",
            says: "Unsupported value",
        },
        Invalid {
            what: "online is not a boolean",
            kind: "BareMetalNode",
            name: "bad-online",
            spec: node(json!({ "online": "yes" })),
            field: "spec.online",
            says: "boolean",
        },
        Invalid {
            what: "both image and boot profile",
            kind: "BareMetalNode",
            name: "image-and-profile",
            spec: node(json!({
                "image": { "url": "http://images.lab/os.img", "checksum": "0123456789abcdef0123456789abcdef" },
                "bootProfile": { "kernel": "vmlinuz", "initrd": "initrd.img" }
            })),
            field: "spec.image",
            says: "either image or bootProfile",
        },
        Invalid {
            what: "image URL that is not HTTP",
            kind: "BareMetalNode",
            name: "ftp-image",
            spec: node(
                json!({ "image": { "url": "ftp://images.lab/os.img", "checksum": "0123456789abcdef0123456789abcdef" } }),
            ),
            field: "spec.image.url",
            says: "http:// or https://",
        },
        Invalid {
            what: "image without a checksum",
            kind: "BareMetalNode",
            name: "no-checksum",
            spec: node(json!({ "image": { "url": "http://images.lab/os.img" } })),
            field: "spec.image.checksum",
            says: "Required value",
        },
        Invalid {
            what: "address hint that is not IPv4",
            kind: "BareMetalNode",
            name: "bad-hint",
            spec: node(json!({ "networks": [{ "network": "prov", "ipv4Address": "172.30.0.300" }] })),
            field: "spec.networks[0].ipv4Address",
            says: "must be an IPv4 address",
        },
        Invalid {
            what: "the same network twice",
            kind: "BareMetalNode",
            name: "dup-network",
            spec: node(json!({ "networks": [{ "network": "prov" }, { "network": "prov" }] })),
            field: "spec.networks[1]",
            says: "Duplicate value",
        },
        Invalid {
            what: "CIDR with a prefix longer than 32",
            kind: "Network",
            name: "bad-prefix",
            spec: network(json!({ "cidr": "172.30.0.0/33", "ranges": null, "gateway": null })),
            field: "spec.cidr",
            says: "must be an IPv4 CIDR",
        },
        Invalid {
            what: "CIDR with host bits set",
            kind: "Network",
            name: "host-bits",
            spec: network(json!({ "cidr": "172.30.0.5/24" })),
            field: "spec.cidr",
            says: "network address",
        },
        Invalid {
            what: "range outside its CIDR",
            kind: "Network",
            name: "range-outside",
            spec: network(
                json!({ "ranges": [{ "name": "static", "type": "static", "start": "172.30.1.10", "end": "172.30.1.20" }] }),
            ),
            field: "spec.ranges",
            says: "inside cidr",
        },
        Invalid {
            what: "reversed range",
            kind: "Network",
            name: "range-reversed",
            spec: network(
                json!({ "ranges": [{ "name": "static", "type": "static", "start": "172.30.0.99", "end": "172.30.0.10" }] }),
            ),
            field: "spec.ranges[0].end",
            says: "start must not come after end",
        },
        Invalid {
            what: "range start that is not an address",
            kind: "Network",
            name: "range-garbage",
            spec: network(
                json!({ "ranges": [{ "name": "static", "type": "static", "start": "first", "end": "172.30.0.10" }] }),
            ),
            field: "spec.ranges[0].start",
            says: "must be an IP address",
        },
        Invalid {
            what: "unknown range type",
            kind: "Network",
            name: "range-type",
            spec: network(
                json!({ "ranges": [{ "name": "static", "type": "reserved", "start": "172.30.0.10", "end": "172.30.0.20" }] }),
            ),
            field: "spec.ranges[0].type",
            says: "Unsupported value",
        },
        Invalid {
            what: "gateway outside the CIDR",
            kind: "Network",
            name: "gateway-outside",
            spec: network(json!({ "gateway": "172.31.0.1" })),
            field: "spec.gateway",
            says: "inside cidr",
        },
        Invalid {
            what: "VLAN above 4094",
            kind: "Network",
            name: "vlan",
            spec: network(json!({ "vlan": 5000 })),
            field: "spec.vlan",
            says: "less than or equal to 4094",
        },
        Invalid {
            what: "MTU out of range",
            kind: "Network",
            name: "mtu",
            spec: network(json!({ "mtu": 100000 })),
            field: "spec.mtu",
            says: "less than or equal to 9216",
        },
        Invalid {
            what: "unknown DHCP mode",
            kind: "Network",
            name: "dhcp-mode",
            spec: network(json!({ "dhcp": { "mode": "Relay" } })),
            field: "spec.dhcp.mode",
            says: "Unsupported value",
        },
        Invalid {
            what: "conduit not by speed and order",
            kind: "Network",
            name: "conduit",
            spec: network(json!({ "conduit": "eth0" })),
            field: "spec.conduit",
            says: "by speed and order",
        },
        Invalid {
            what: "DNS server that is not an address",
            kind: "Network",
            name: "dns-server",
            spec: network(json!({ "dnsServers": ["ns1.lab"] })),
            field: "spec.dnsServers",
            says: "must be an IP address",
        },
        Invalid {
            what: "IPv6 prefix longer than /64",
            kind: "Network",
            name: "ipv6-prefix",
            spec: network(json!({ "ipv6Prefix": "fd00:10::/96" })),
            field: "spec.ipv6Prefix",
            says: "/64 or shorter",
        },
        Invalid {
            what: "neither cidr nor ipv6Prefix",
            kind: "Network",
            name: "no-prefix",
            spec: json!({ "category": "admin" }),
            field: "spec.cidr",
            says: "set cidr, ipv6Prefix or both",
        },
        Invalid {
            what: "role that requires itself",
            kind: "Role",
            name: "narcissus",
            spec: json!({ "requires": ["base", "narcissus"] }),
            field: "spec.requires",
            says: "cannot require itself",
        },
        Invalid {
            what: "unknown role scope",
            kind: "Role",
            name: "bad-scope",
            spec: json!({ "scope": "Rack" }),
            field: "spec.scope",
            says: "Unsupported value",
        },
        Invalid {
            what: "task timeout of zero",
            kind: "Role",
            name: "zero-timeout",
            spec: json!({ "task": { "script": "true", "timeoutSeconds": 0 } }),
            field: "spec.task.timeoutSeconds",
            says: "greater than or equal to 1",
        },
        Invalid {
            what: "negative retries",
            kind: "Role",
            name: "negative-retries",
            spec: json!({ "task": { "script": "true", "retries": -1 } }),
            field: "spec.task.retries",
            says: "greater than or equal to 0",
        },
        Invalid {
            what: "negative count",
            kind: "Workload",
            name: "negative-count",
            spec: json!({ "roles": [{ "role": "etcd", "count": -1 }] }),
            field: "spec.roles[0].count",
            says: "greater than or equal to 0",
        },
        Invalid {
            what: "both count and nodes",
            kind: "Workload",
            name: "count-and-nodes",
            spec: json!({ "roles": [{ "role": "etcd", "count": 1, "nodes": ["n1"] }] }),
            field: "spec.roles[0].nodes",
            says: "either count or nodes",
        },
        Invalid {
            what: "no roles at all",
            kind: "Workload",
            name: "empty",
            spec: json!({ "roles": [] }),
            field: "spec.roles",
            says: "at least 1",
        },
        Invalid {
            what: "the same role twice",
            kind: "Workload",
            name: "dup-role",
            spec: json!({ "roles": [{ "role": "etcd" }, { "role": "etcd" }] }),
            field: "spec.roles[1]",
            says: "Duplicate value",
        },
        Invalid {
            what: "role name that is not a DNS name",
            kind: "Workload",
            name: "bad-role-name",
            spec: json!({ "roles": [{ "role": "Etcd_Install" }] }),
            field: "spec.roles[0].role",
            says: "should match",
        },
    ]
}

#[tokio::test]
async fn crds_install_and_become_established() {
    let client = client().await;
    install_crds(&client).await;
    let out = run_ok(kubectl().args(["get", "crd", "-o", "name"]));
    for kind in ["baremetalnodes", "networks", "roles", "workloads"] {
        assert!(out.contains(&format!("{kind}.girder.dev")), "{out}");
    }
}

#[tokio::test]
async fn valid_objects_are_accepted() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "valid").await;
    create(&client, &ns.name, "BareMetalNode", "redfish", node(json!({}))).await.expect("redfish node");
    for (name, address) in [
        ("redfish-http", "redfish+http://127.0.0.1:8000/redfish/v1/Systems/abc"),
        ("ipmi", "ipmi://10.0.0.5:623"),
        ("ipmi-v6", "ipmi://[fd00::5]"),
        ("redfish-no-system", "redfish://bmc.lab:8443"),
    ] {
        create(&client, &ns.name, "BareMetalNode", name, node(json!({ "bmc": { "address": address } })))
            .await
            .unwrap_or_else(|e| panic!("{address}: {e}"));
    }
    create(&client, &ns.name, "BareMetalNode", "discovered", json!({ "bootMACAddress": "52:54:00:aa:bb:02" }))
        .await
        .expect("node without a BMC");
    create(
        &client,
        &ns.name,
        "Network",
        "dual",
        network(json!({ "ipv6Prefix": "fd00:10::/64", "ranges": [
            { "name": "static", "type": "static", "start": "172.30.0.10", "end": "172.30.0.99" },
            { "name": "static6", "type": "static", "start": "fd00:10::10", "end": "fd00:10::ff" }
        ], "conduit": "10g0,10g1", "vlan": 0, "dnsServers": ["172.30.0.1", "fd00:10::1"] })),
    )
    .await
    .expect("dual-stack network");
    create(&client, &ns.name, "Network", "v6only", json!({ "ipv6Prefix": "fd00:20::/48" }))
        .await
        .expect("IPv6-only network");
    create(&client, &ns.name, "Role", "base", json!({})).await.expect("empty role");
    create(&client, &ns.name, "Workload", "w", json!({ "roles": [{ "role": "base", "count": 0 }] }))
        .await
        .expect("workload");
}

#[tokio::test]
async fn invalid_objects_are_refused_naming_the_field() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "invalid").await;
    let catalog = catalog();
    assert!(catalog.len() >= 20);
    let mut failures = Vec::new();
    for case in &catalog {
        match create(&client, &ns.name, case.kind, case.name, case.spec.clone()).await {
            Ok(_) => failures.push(format!("{}: accepted", case.what)),
            Err(kube::Error::Api(status)) => {
                let message = status.message.clone();
                if status.code != 422 || !message.contains(case.field) || !message.contains(case.says) {
                    failures.push(format!(
                        "{}: got {} {message:?}, wanted field {:?} and {:?}",
                        case.what, status.code, case.field, case.says
                    ));
                }
            }
            Err(other) => failures.push(format!("{}: {other}", case.what)),
        }
    }
    assert!(failures.is_empty(), "{} of {} cases wrong:\n{}", failures.len(), catalog.len(), failures.join("\n"));
}
