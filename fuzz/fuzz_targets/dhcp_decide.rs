//! Any datagram through what the DHCP server does with it: parse_request,
//! decide (on each interface, on the DHCP and the ProxyDHCP port), encode the
//! reply and parse it again. Nothing may panic, and every reply must hold up:
//! a BOOTREPLY for the same transaction that survives a round trip, handing
//! out only addresses of the Managed network that no one else holds.
//!
//! The lease store lives in a temporary directory for the whole run and the
//! clock moves one second per input, as in a server that keeps running: a
//! crash may depend on the inputs before it (rerun the corpus to reproduce).

#![no_main]

use girder::api::network::{AddressRange, Allocation, DhcpMode, DhcpSpec, RangeType};
use girder::api::{BareMetalNode, BareMetalNodeSpec, Network, NetworkSpec, NetworkStatus};
use girder::pxe::dhcp::BootConfig;
use girder::pxe::dhcp::decide::{Decision, Received, SnapshotIndex, decide};
use girder::pxe::dhcp::leases::LeaseStore;
use girder::pxe::dhcp::packet::{BOOTREPLY, Message, MessageType};
use girder::pxe::dhcp::parse_request;
use girder::pxe::model::{Mac, Snapshot};
use girder_fuzz::dhcp_round_trip;
use libfuzzer_sys::fuzz_target;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const NAMESPACE: &str = "lab";
/// The Managed network 10.0.0.0/24 and this server's address on it.
const MANAGED: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 0);
const MANAGED_BROADCAST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 255);
const MANAGED_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const MANAGED_SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
/// This server's address on the Proxy network 192.168.50.0/24.
const PROXY_SERVER: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);
/// node-a: its boot MAC and its static allocation on the Managed network.
const KNOWN_MAC: Mac = Mac([0x52, 0x54, 0x00, 0x00, 0x00, 0x01]);
const KNOWN_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);

struct World {
    index: SnapshotIndex,
    leases: LeaseStore,
    boot: BootConfig,
    now: SystemTime,
}

static WORLD: LazyLock<Mutex<World>> = LazyLock::new(|| {
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    // Under the fuzz script's TMPDIR, which it removes afterwards.
    let dir = std::env::temp_dir().join(format!("girder-fuzz-dhcp-decide-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let leases = LeaseStore::open(&dir, now).unwrap_or_else(|e| panic!("lease store in {}: {e}", dir.display()));
    let snapshot = Snapshot::build(&nodes(), &networks());
    assert_eq!(snapshot.networks.len(), 2, "the fixed snapshot lost a network");
    assert!(snapshot.node(&KNOWN_MAC).is_some(), "the fixed snapshot lost node-a");
    Mutex::new(World { index: SnapshotIndex::new(Arc::new(snapshot)), leases, boot: BootConfig::default(), now })
});

fn node(name: &str, mac: &str) -> BareMetalNode {
    let mut node =
        BareMetalNode::new(name, BareMetalNodeSpec { boot_mac_address: Some(mac.into()), ..Default::default() });
    node.metadata.namespace = Some(NAMESPACE.into());
    node
}

/// node-a has a static address, node-b leases one, and node-c and node-d
/// claim the same MAC (never answered).
fn nodes() -> Vec<BareMetalNode> {
    vec![
        node("node-a", "52:54:00:00:00:01"),
        node("node-b", "52:54:00:00:00:02"),
        node("node-c", "52:54:00:00:00:03"),
        node("node-d", "52:54:00:00:00:03"),
    ]
}

fn range(name: &str, type_: RangeType, start: &str, end: &str) -> AddressRange {
    AddressRange { name: name.into(), type_, start: start.into(), end: end.into() }
}

fn networks() -> Vec<Network> {
    let mut managed = Network::new(
        "prov",
        NetworkSpec {
            cidr: Some("10.0.0.0/24".into()),
            gateway: Some(MANAGED_GATEWAY.to_string()),
            dns_servers: vec!["10.0.0.53".into()],
            domain: Some("lab.example".into()),
            mtu: Some(9000),
            ranges: vec![
                range("static", RangeType::Static, "10.0.0.10", "10.0.0.49"),
                range("dhcp", RangeType::Dhcp, "10.0.0.100", "10.0.0.149"),
                range("discovery", RangeType::Discovery, "10.0.0.200", "10.0.0.219"),
            ],
            dhcp: Some(DhcpSpec { mode: DhcpMode::Managed, lease_seconds: Some(600), allow_discovery: true }),
            ..Default::default()
        },
    );
    managed.metadata.namespace = Some(NAMESPACE.into());
    managed.status = Some(NetworkStatus {
        allocations: vec![Allocation { node: "node-a".into(), ipv4: Some(KNOWN_ADDR.to_string()), ipv6: None }],
        ..Default::default()
    });
    let mut proxy = Network::new(
        "site",
        NetworkSpec {
            cidr: Some("192.168.50.0/24".into()),
            gateway: Some("192.168.50.1".into()),
            dhcp: Some(DhcpSpec { mode: DhcpMode::Proxy, lease_seconds: None, allow_discovery: false }),
            ..Default::default()
        },
    );
    proxy.metadata.namespace = Some(NAMESPACE.into());
    vec![managed, proxy]
}

fn in_managed(addr: Ipv4Addr) -> bool {
    u32::from(addr) & 0xffff_ff00 == u32::from(MANAGED)
}

fn check(request: &Message, decision: &Decision, leases: &LeaseStore) {
    let Decision::Reply(reply) = decision else { return };
    let message = &reply.message;
    assert_eq!(message.op, BOOTREPLY, "a reply must be a BOOTREPLY");
    assert_eq!(message.xid, request.xid, "a reply must carry the request's xid");
    assert_eq!(message.chaddr, request.chaddr, "a reply must carry the request's chaddr");
    let kind = message.message_type();
    assert!(matches!(kind, Some(MessageType::Offer | MessageType::Ack | MessageType::Nak)), "a reply of type {kind:?}");
    let yiaddr = message.yiaddr;
    if !yiaddr.is_unspecified() {
        assert!(in_managed(yiaddr), "{yiaddr} handed out outside the Managed network");
        assert!(
            ![MANAGED, MANAGED_BROADCAST, MANAGED_GATEWAY, MANAGED_SERVER].contains(&yiaddr),
            "{yiaddr} is the network, broadcast, gateway or server address"
        );
        let mac = request.mac().expect("a reply to a request without an Ethernet MAC");
        if mac == KNOWN_MAC {
            assert_eq!(yiaddr, KNOWN_ADDR, "node-a was not given its static address");
        } else {
            assert_ne!(yiaddr, KNOWN_ADDR, "node-a's static address handed to {mac}");
            assert_eq!(leases.holder(yiaddr), Some(mac), "{yiaddr} handed to {mac} but not held by it");
        }
    }
    dhcp_round_trip(message);
}

fuzz_target!(|data: &[u8]| {
    let Ok(request) = parse_request(data) else { return };
    let mut world = WORLD.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let world = &mut *world;
    world.now += Duration::from_secs(1);
    let source = SocketAddrV4::new(request.ciaddr, 68);
    for (server, proxy_port) in
        [(MANAGED_SERVER, false), (MANAGED_SERVER, true), (PROXY_SERVER, false), (PROXY_SERVER, true)]
    {
        let received = Received { server, proxy_port, source, server_port: 67, client_port: 68 };
        let decision = decide(&request, &received, &world.index, &mut world.leases, &world.boot, world.now);
        check(&request, &decision, &world.leases);
    }
});
