//! Decisions for whole requests: Managed, Proxy, relays, the ProxyDHCP port.

use super::boot::BootConfig;
use super::decide::{Decision, Received, Reply, SnapshotIndex, decide};
use super::leases::LeaseStore;
use super::packet::tests::request;
use super::packet::{FLAG_BROADCAST, Message, MessageType, code};
use crate::api::network::DhcpMode;
use crate::pxe::model::{Ipv4Range, Mac, NetworkView, NodeBoot, Snapshot};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
const KNOWN: [u8; 6] = [0xaa, 0, 0, 0, 0, 1];
const KNOWN_DYNAMIC: [u8; 6] = [0xaa, 0, 0, 0, 0, 2];
const STRANGER: [u8; 6] = [0xbb, 0, 0, 0, 0, 9];
const DUPLICATE: [u8; 6] = [0xcc, 0, 0, 0, 0, 3];
const PXE_X64: &[(u8, &[u8])] =
    &[(code::VENDOR_CLASS, b"PXEClient:Arch:00007:UNDI:003016"), (code::CLIENT_ARCH, &[0, 7])];

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, 0, last)
}

fn network(mode: DhcpMode, allow_discovery: bool) -> NetworkView {
    NetworkView {
        namespace: "lab".into(),
        name: "prov".into(),
        network: ip(0),
        prefix: 24,
        gateway: Some(ip(1)),
        dns_servers: vec![ip(53), ip(54)],
        domain: Some("lab.example".into()),
        mtu: Some(9000),
        mode,
        lease_seconds: 3600,
        allow_discovery,
        static_ranges: vec![Ipv4Range { start: ip(10), end: ip(49) }],
        dhcp_ranges: vec![Ipv4Range { start: ip(100), end: ip(102) }],
        discovery_ranges: vec![Ipv4Range { start: ip(200), end: ip(201) }],
    }
}

fn node(name: &str, ipv4: Vec<(String, Ipv4Addr)>) -> NodeBoot {
    NodeBoot {
        namespace: "lab".into(),
        name: name.into(),
        phase: None,
        boot_mode: Default::default(),
        maintenance: false,
        boot_profile: None,
        ipv4,
        discovered: false,
        session: None,
        ramdisk: None,
    }
}

fn snapshot(mode: DhcpMode, allow_discovery: bool) -> SnapshotIndex {
    let mut snapshot = Snapshot { networks: vec![network(mode, allow_discovery)], ..Snapshot::default() };
    snapshot.nodes.insert(Mac(KNOWN), node("node-a", vec![("prov".into(), ip(10))]));
    snapshot.nodes.insert(Mac(KNOWN_DYNAMIC), node("node-b", vec![]));
    snapshot.duplicate_macs.push((Mac(DUPLICATE), vec!["lab/node-c".into(), "lab/node-d".into()]));
    SnapshotIndex::new(Arc::new(snapshot))
}

fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
}

fn on_port_67() -> Received {
    Received {
        server: SERVER,
        proxy_port: false,
        source: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
        server_port: 67,
        client_port: 68,
    }
}

struct Harness {
    index: SnapshotIndex,
    leases: LeaseStore,
    received: Received,
    now: SystemTime,
}

impl Harness {
    fn new(mode: DhcpMode, allow_discovery: bool) -> Harness {
        Harness {
            index: snapshot(mode, allow_discovery),
            leases: LeaseStore::in_memory(),
            received: on_port_67(),
            now: at(0),
        }
    }

    fn decide(&mut self, message: &Message) -> Decision {
        decide(message, &self.received, &self.index, &mut self.leases, &BootConfig::default(), self.now)
    }

    fn reply(&mut self, message: &Message) -> Reply {
        match self.decide(message) {
            Decision::Reply(reply) => *reply,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    /// DISCOVER then REQUEST the offered address; the ACK.
    fn dora(&mut self, mac: [u8; 6], extra: &[(u8, &[u8])]) -> Reply {
        let offer = self.reply(&request(MessageType::Discover, mac, extra));
        assert_eq!(offer.message.message_type(), Some(MessageType::Offer));
        let mut req = request(MessageType::Request, mac, extra);
        req.options.push_addr(code::SERVER_ID, SERVER);
        req.options.push_addr(code::REQUESTED_IP, offer.message.yiaddr);
        self.reply(&req)
    }
}

fn ignored(decision: Decision) -> (&'static str, String) {
    match decision {
        Decision::Ignore { reason, detail } => (reason, detail),
        other => panic!("expected ignore, got {other:?}"),
    }
}

fn broadcast() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)
}

#[test]
fn managed_known_node_gets_its_static_allocation_hostname_and_boot_file() {
    let mut harness = Harness::new(DhcpMode::Managed, false);
    let offer = harness.reply(&request(MessageType::Discover, KNOWN, PXE_X64));
    assert_eq!(offer.to, broadcast());
    let message = &offer.message;
    assert_eq!(message.op, 2);
    assert_eq!(message.yiaddr, ip(10));
    assert_eq!(message.siaddr, SERVER);
    assert_eq!(message.file_name(), b"ipxe.efi");
    let options = &message.options;
    assert_eq!(options.get(code::SUBNET_MASK), Some(&[255, 255, 255, 0][..]));
    assert_eq!(options.get(code::ROUTER), Some(&[10, 1, 0, 1][..]));
    assert_eq!(options.get(code::DNS_SERVERS), Some(&[10, 1, 0, 53, 10, 1, 0, 54][..]));
    assert_eq!(options.get(code::HOST_NAME), Some(&b"node-a"[..]));
    assert_eq!(options.get(code::DOMAIN_NAME), Some(&b"lab.example"[..]));
    assert_eq!(options.get(code::MTU), Some(&9000u16.to_be_bytes()[..]));
    assert_eq!(options.get(code::BROADCAST), Some(&[10, 1, 0, 255][..]));
    assert_eq!(options.get(code::LEASE_TIME), Some(&3600u32.to_be_bytes()[..]));
    assert_eq!(options.get(code::RENEWAL_TIME), Some(&1800u32.to_be_bytes()[..]));
    assert_eq!(options.get(code::REBINDING_TIME), Some(&3150u32.to_be_bytes()[..]));
    assert_eq!(message.server_id(), Some(SERVER));
    assert!(!options.contains(code::VENDOR_CLASS) && !options.contains(code::VENDOR_SPECIFIC));
    assert!(offer.log.is_none());

    let ack = harness.dora(KNOWN, PXE_X64);
    assert_eq!(ack.message.message_type(), Some(MessageType::Ack));
    assert_eq!(ack.message.yiaddr, ip(10));
    let log = ack.log.unwrap();
    assert_eq!((log.node.as_deref(), log.network.as_str()), (Some("lab/node-a"), "lab/prov"));
    assert_eq!(log.boot.as_deref(), Some("ipxe.efi"));
    // Static allocations are not dynamic leases.
    assert!(harness.leases.is_empty());
}

#[test]
fn ipxe_gets_its_script_url_and_an_os_gets_no_boot_file() {
    let mut harness = Harness::new(DhcpMode::Managed, false);
    let ipxe = harness.dora(KNOWN, &[(code::USER_CLASS, b"iPXE"), (code::PARAMETER_LIST, &[1, 3, 67])]);
    let url = b"http://10.1.0.2:8080/boot/aa:00:00:00:00:01.ipxe";
    assert_eq!(ipxe.message.file_name(), url);
    assert_eq!(ipxe.message.options.get(code::BOOTFILE), Some(&url[..]));

    let os = harness.dora(KNOWN, &[]);
    assert_eq!(os.message.file_name(), b"");
    assert_eq!(os.message.siaddr, Ipv4Addr::UNSPECIFIED);
    assert!(!os.message.options.contains(code::BOOTFILE));
}

#[test]
fn http_boot_client_gets_url_and_httpclient_echo_in_managed_mode() {
    let mut harness = Harness::new(DhcpMode::Managed, false);
    let ack = harness.dora(KNOWN, &[(code::VENDOR_CLASS, b"HTTPClient:Arch:00016:UNDI:003001")]);
    assert_eq!(ack.message.file_name(), b"http://10.1.0.2:8080/ipxe/ipxe.efi");
    assert_eq!(ack.message.vendor_class(), Some(&b"HTTPClient"[..]));
}

#[test]
fn unsupported_arch_is_not_answered_and_named() {
    let mut harness = Harness::new(DhcpMode::Managed, false);
    let (reason, detail) =
        ignored(harness.decide(&request(MessageType::Discover, KNOWN, &[(code::CLIENT_ARCH, &[0, 10])])));
    assert_eq!(reason, "unsupported-arch");
    assert!(detail.contains("architecture 10") && detail.contains("aa:00:00:00:00:01"), "{detail}");
}

#[test]
fn known_node_without_allocation_leases_from_the_dhcp_ranges() {
    let mut harness = Harness::new(DhcpMode::Managed, false);
    let ack = harness.dora(KNOWN_DYNAMIC, PXE_X64);
    assert_eq!(ack.message.yiaddr, ip(100));
    assert_eq!(ack.message.options.get(code::HOST_NAME), Some(&b"node-b"[..]));
    assert_eq!(harness.leases.lease(&Mac(KNOWN_DYNAMIC)).map(|l| l.addr), Some(ip(100)));
}

#[test]
fn unknown_mac_is_ignored_without_discovery() {
    let mut harness = Harness::new(DhcpMode::Managed, false);
    let (reason, detail) = ignored(harness.decide(&request(MessageType::Discover, STRANGER, PXE_X64)));
    assert_eq!(reason, "unknown-mac");
    assert_eq!(detail, "no BareMetalNode has boot MAC bb:00:00:00:00:09; Network lab/prov does not allow discovery");
}

#[test]
fn unknown_mac_is_leased_from_the_discovery_ranges_with_discovery() {
    let mut harness = Harness::new(DhcpMode::Managed, true);
    let ack = harness.dora(STRANGER, PXE_X64);
    assert_eq!(ack.message.yiaddr, ip(200));
    assert!(!ack.message.options.contains(code::HOST_NAME));
    assert_eq!(ack.log.unwrap().node, None);
}

#[test]
fn exhausted_ranges_are_named() {
    let mut harness = Harness::new(DhcpMode::Managed, true);
    harness.dora([0xbb, 0, 0, 0, 0, 1], &[]);
    harness.dora([0xbb, 0, 0, 0, 0, 2], &[]);
    let (reason, detail) = ignored(harness.decide(&request(MessageType::Discover, [0xbb, 0, 0, 0, 0, 3], &[])));
    assert_eq!(reason, "exhausted");
    assert!(detail.contains("discovery ranges of Network lab/prov"), "{detail}");
}

#[test]
fn duplicate_mac_is_ignored_naming_both_nodes() {
    let mut harness = Harness::new(DhcpMode::Managed, true);
    let (reason, detail) = ignored(harness.decide(&request(MessageType::Discover, DUPLICATE, PXE_X64)));
    assert_eq!(reason, "duplicate-mac");
    assert!(detail.contains("lab/node-c and lab/node-d"), "{detail}");
}

#[test]
fn no_network_and_disabled_network_are_ignored() {
    let mut harness = Harness::new(DhcpMode::Managed, true);
    harness.received.server = Ipv4Addr::new(192, 168, 9, 1);
    let (reason, detail) = ignored(harness.decide(&request(MessageType::Discover, KNOWN, &[])));
    assert_eq!(reason, "no-network");
    assert!(detail.starts_with("no Network contains 192.168.9.1"), "{detail}");

    let mut harness = Harness::new(DhcpMode::Disabled, true);
    assert_eq!(ignored(harness.decide(&request(MessageType::Discover, KNOWN, &[]))).0, "dhcp-disabled");
}

#[test]
fn request_for_a_wrong_address_is_naked() {
    let mut harness = Harness::new(DhcpMode::Managed, false);
    // Init-reboot asking for someone else's address.
    let nak = harness.reply(&request(MessageType::Request, KNOWN, &[(code::REQUESTED_IP, &[10, 1, 0, 77])]));
    assert_eq!(nak.message.message_type(), Some(MessageType::Nak));
    assert_eq!(nak.message.yiaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(nak.to, broadcast());

    // A dynamic client asking for an address another client holds.
    harness.dora(KNOWN_DYNAMIC, &[]);
    let mut stranger = Harness { index: snapshot(DhcpMode::Managed, true), ..harness };
    let nak = stranger.reply(&request(MessageType::Request, STRANGER, &[(code::REQUESTED_IP, &[10, 1, 0, 100])]));
    assert_eq!(nak.message.message_type(), Some(MessageType::Nak));
    // Outside the Network altogether (moved to another subnet).
    let nak = stranger.reply(&request(MessageType::Request, KNOWN_DYNAMIC, &[(code::REQUESTED_IP, &[192, 168, 0, 5])]));
    assert_eq!(nak.message.message_type(), Some(MessageType::Nak));
}

#[test]
fn request_for_another_server_is_ignored_quietly() {
    let mut harness = Harness::new(DhcpMode::Managed, false);
    let message = request(
        MessageType::Request,
        KNOWN,
        &[(code::SERVER_ID, &[10, 1, 0, 99]), (code::REQUESTED_IP, &[10, 1, 0, 10])],
    );
    let (reason, _) = ignored(harness.decide(&message));
    assert_eq!(reason, "other-server");
    assert!(super::decide::is_quiet(reason));
}

#[test]
fn renewal_is_acked_to_the_client_address() {
    let mut harness = Harness::new(DhcpMode::Managed, false);
    harness.dora(KNOWN_DYNAMIC, &[]);
    let mut renew = request(MessageType::Request, KNOWN_DYNAMIC, &[]);
    renew.ciaddr = ip(100);
    harness.now = at(1800);
    let ack = harness.reply(&renew);
    assert_eq!(ack.message.message_type(), Some(MessageType::Ack));
    assert_eq!(ack.message.ciaddr, ip(100));
    assert_eq!(ack.to, SocketAddrV4::new(ip(100), 68));
    assert_eq!(harness.leases.lease(&Mac(KNOWN_DYNAMIC)).map(|l| l.expires), Some(1_700_000_000 + 1800 + 3600));
}

#[test]
fn release_frees_and_decline_quarantines() {
    let mut harness = Harness::new(DhcpMode::Managed, true);
    harness.dora(KNOWN_DYNAMIC, &[]);
    let mut release = request(MessageType::Release, KNOWN_DYNAMIC, &[(code::SERVER_ID, &[10, 1, 0, 2])]);
    release.ciaddr = ip(100);
    assert!(matches!(harness.decide(&release), Decision::Handled { .. }));
    assert!(harness.leases.lease(&Mac(KNOWN_DYNAMIC)).is_some_and(|l| !l.bound));

    let other = [0xaa, 0, 0, 0, 0, 0x77];
    harness.index = {
        let mut snapshot = (**harness.index.snapshot()).clone();
        snapshot.nodes.insert(Mac(other), node("node-e", vec![]));
        SnapshotIndex::new(Arc::new(snapshot))
    };
    // The released address is free: the other client may have it once expired.
    harness.now = at(10);
    let ack = harness.dora(other, &[]);
    assert_eq!(ack.message.yiaddr, ip(101), "the releasing client keeps a claim while others are free");
    let decline = request(
        MessageType::Decline,
        other,
        &[(code::SERVER_ID, &[10, 1, 0, 2]), (code::REQUESTED_IP, &[10, 1, 0, 101])],
    );
    assert!(matches!(harness.decide(&decline), Decision::Handled { .. }));
    assert_eq!(harness.leases.holder(ip(101)), None);
    let offer = harness.reply(&request(MessageType::Discover, other, &[(code::REQUESTED_IP, &[10, 1, 0, 101])]));
    assert_eq!(offer.message.yiaddr, ip(102));
}

#[test]
fn inform_is_acked_without_an_address() {
    let mut harness = Harness::new(DhcpMode::Managed, false);
    let mut inform = request(MessageType::Inform, KNOWN, &[]);
    inform.ciaddr = ip(10);
    let ack = harness.reply(&inform);
    assert_eq!(ack.message.message_type(), Some(MessageType::Ack));
    assert_eq!(ack.message.yiaddr, Ipv4Addr::UNSPECIFIED);
    assert!(!ack.message.options.contains(code::LEASE_TIME));
    assert_eq!(ack.to, SocketAddrV4::new(ip(10), 68));
}

#[test]
fn relayed_request_goes_back_to_the_relay_with_option_82() {
    let mut harness = Harness::new(DhcpMode::Managed, false);
    // Received on an interface of another subnet; the relay picks the Network.
    harness.received.server = Ipv4Addr::new(192, 168, 50, 2);
    let agent_info: &[u8] = &[1, 4, b'p', b'o', b'r', b't', 2, 2, 0, 7];
    let mut discover = request(MessageType::Discover, KNOWN, &[(code::RELAY_AGENT_INFO, agent_info)]);
    discover.giaddr = ip(1);
    discover.hops = 1;
    let offer = harness.reply(&discover);
    assert_eq!(offer.to, SocketAddrV4::new(ip(1), 67));
    assert_eq!(offer.message.giaddr, ip(1));
    assert_eq!(offer.message.yiaddr, ip(10));
    assert_eq!(offer.message.relay_agent_info(), Some(agent_info));
    let last = offer.message.options.iter().last().map(|(code, _)| code);
    assert_eq!(last, Some(code::RELAY_AGENT_INFO));

    let mut wrong = request(MessageType::Request, KNOWN, &[(code::REQUESTED_IP, &[10, 1, 0, 11])]);
    wrong.giaddr = ip(1);
    let nak = harness.reply(&wrong);
    assert_eq!(nak.to, SocketAddrV4::new(ip(1), 67));
    assert_eq!(nak.message.flags & FLAG_BROADCAST, FLAG_BROADCAST);
}

#[test]
fn proxy_answers_only_pxe_clients_with_boot_information() {
    let mut harness = Harness::new(DhcpMode::Proxy, false);
    let (reason, _) = ignored(harness.decide(&request(MessageType::Discover, KNOWN, &[])));
    assert_eq!(reason, "not-pxe");

    let machine_id: &[u8] = &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
    let offer = harness.reply(&request(
        MessageType::Discover,
        KNOWN,
        &[(code::VENDOR_CLASS, b"PXEClient:Arch:00000:UNDI:002001"), (code::CLIENT_MACHINE_ID, machine_id)],
    ));
    let message = &offer.message;
    assert_eq!(message.message_type(), Some(MessageType::Offer));
    assert_eq!(message.yiaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(message.siaddr, SERVER);
    assert_eq!(message.server_id(), Some(SERVER));
    assert_eq!(message.vendor_class(), Some(&b"PXEClient"[..]));
    assert_eq!(message.vendor_specific(), Some(&[6, 1, 8, 255][..]));
    assert_eq!(message.client_machine_id(), Some(machine_id));
    assert_eq!(message.file_name(), b"undionly.kpxe");
    assert!(!message.options.contains(code::LEASE_TIME));
    assert_eq!(offer.to, broadcast());
    assert!(offer.log.is_some());

    // The site's DHCP server handles REQUESTs on port 67.
    let (reason, _) = ignored(harness.decide(&request(MessageType::Request, KNOWN, PXE_X64)));
    assert_eq!(reason, "not-ours");
    // Same admission rule as Managed.
    let (reason, _) = ignored(harness.decide(&request(MessageType::Discover, STRANGER, PXE_X64)));
    assert_eq!(reason, "unknown-mac");
    assert!(harness.leases.is_empty());
}

#[test]
fn proxy_offer_to_ipxe_names_the_script() {
    let mut harness = Harness::new(DhcpMode::Proxy, true);
    let offer = harness.reply(&request(MessageType::Discover, STRANGER, &[(code::IPXE_ENCAP, &[])]));
    assert_eq!(offer.message.file_name(), b"http://10.1.0.2:8080/boot/bb:00:00:00:00:09.ipxe");
}

#[test]
fn proxy_port_request_is_acked_to_its_source() {
    let mut harness = Harness::new(DhcpMode::Proxy, false);
    let source = SocketAddrV4::new(ip(150), 4011);
    harness.received.proxy_port = true;
    harness.received.source = source;
    let mut message = request(MessageType::Request, KNOWN, PXE_X64);
    message.ciaddr = ip(150);
    let ack = harness.reply(&message);
    assert_eq!(ack.to, source);
    assert_eq!(ack.message.message_type(), Some(MessageType::Ack));
    assert_eq!(ack.message.yiaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(ack.message.ciaddr, ip(150));
    assert_eq!(ack.message.siaddr, SERVER);
    assert_eq!(ack.message.file_name(), b"ipxe.efi");
    assert_eq!(ack.message.vendor_class(), Some(&b"PXEClient"[..]));
    assert_eq!(ack.message.vendor_specific(), Some(&[6, 1, 8, 255][..]));

    let (reason, _) = ignored(harness.decide(&request(MessageType::Discover, KNOWN, PXE_X64)));
    assert_eq!(reason, "not-ours");
}

#[test]
fn dynamic_leases_never_take_static_or_special_addresses() {
    let mut index = snapshot(DhcpMode::Managed, true);
    // A node's static allocation inside the dhcp range, and the server's own
    // address as the range start.
    let mut snapshot = (**index.snapshot()).clone();
    snapshot.networks[0].dhcp_ranges = vec![Ipv4Range { start: ip(0), end: ip(3) }];
    snapshot.networks[0].discovery_ranges.clear();
    snapshot.nodes.insert(Mac([0xaa, 0, 0, 0, 0, 5]), node("node-f", vec![("prov".into(), ip(3))]));
    index = SnapshotIndex::new(Arc::new(snapshot));
    let mut harness = Harness { index, ..Harness::new(DhcpMode::Managed, true) };
    // .0 network, .1 gateway, .2 server, .3 static: nothing left.
    let (reason, _) = ignored(harness.decide(&request(MessageType::Discover, STRANGER, &[])));
    assert_eq!(reason, "exhausted");
}
