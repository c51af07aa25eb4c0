//! What to answer to one DHCP request. Pure apart from the lease store it
//! is handed: no sockets, no clock, no logging.

use super::boot::{self, Boot, BootConfig, UnsupportedArch};
use super::leases::{LeaseStore, Pool};
use super::packet::{BOOTREPLY, FLAG_BROADCAST, Message, MessageType, Options, code};
use crate::api::network::DhcpMode;
use crate::pxe::model::{Ipv4Range, Mac, NetworkView, NodeBoot, Snapshot};
use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::SystemTime;

/// PXE option 43 sub-option 6 (PXE_DISCOVERY_CONTROL) = 8: boot the file
/// named in the offer directly, no boot server discovery.
const PXE_DISCOVERY_CONTROL: [u8; 4] = [6, 1, 8, 255];

/// A snapshot with the lookups the per-packet path needs precomputed.
/// Build one per snapshot change, not per packet.
#[derive(Debug, Default)]
pub struct SnapshotIndex {
    snapshot: Arc<Snapshot>,
    /// Every node's static IPv4 allocation: never leased dynamically.
    static_addrs: HashSet<Ipv4Addr>,
}

impl SnapshotIndex {
    pub fn new(snapshot: Arc<Snapshot>) -> SnapshotIndex {
        let static_addrs = snapshot.nodes.values().flat_map(|node| node.ipv4.iter().map(|(_, addr)| *addr)).collect();
        SnapshotIndex { snapshot, static_addrs }
    }

    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    fn is_static(&self, addr: Ipv4Addr) -> bool {
        self.static_addrs.contains(&addr)
    }
}

/// Where a request came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// The IPv4 address of the interface it came in on.
    pub server: Ipv4Addr,
    /// On the ProxyDHCP port (4011) rather than the DHCP port (67).
    pub proxy_port: bool,
    /// The request's source.
    pub source: SocketAddrV4,
    /// Where relay agents listen (67; replies to giaddr go there).
    pub server_port: u16,
    /// Where clients listen (68).
    pub client_port: u16,
}

/// The outcome for one request.
#[derive(Debug, PartialEq)]
pub enum Decision {
    Reply(Box<Reply>),
    /// Handled, nothing to send (RELEASE, DECLINE).
    Handled {
        detail: String,
    },
    Ignore {
        /// A metric label.
        reason: &'static str,
        /// For the log: names the MAC and the network or field at fault.
        detail: String,
    },
}

#[derive(Debug, PartialEq)]
pub struct Reply {
    pub message: Message,
    pub to: SocketAddrV4,
    /// For the one info line per ACK (and per proxy offer).
    pub log: Option<ReplyLog>,
}

#[derive(Debug, PartialEq)]
pub struct ReplyLog {
    pub kind: MessageType,
    pub mac: Mac,
    pub address: Ipv4Addr,
    pub network: String,
    pub node: Option<String>,
    pub boot: Option<String>,
}

/// Reasons whose log lines stay at debug: normal traffic that is simply
/// not for us.
pub fn is_quiet(reason: &str) -> bool {
    matches!(reason, "other-server" | "not-pxe" | "not-ours")
}

fn ignore(reason: &'static str, detail: String) -> Decision {
    Decision::Ignore { reason, detail }
}

/// `Decision::Ignore` as an error, for `?` in the helpers.
struct Ignored(&'static str, String);

impl From<Ignored> for Decision {
    fn from(Ignored(reason, detail): Ignored) -> Decision {
        Decision::Ignore { reason, detail }
    }
}

/// Decides the answer to `request`. `leases` changes on OFFER (held
/// address), ACK, RELEASE and DECLINE.
pub fn decide(
    request: &Message,
    received: &Received,
    index: &SnapshotIndex,
    leases: &mut LeaseStore,
    boot_config: &BootConfig,
    now: SystemTime,
) -> Decision {
    let Some(mac) = request.mac() else {
        return ignore(
            "not-ethernet",
            format!("hardware type {} length {} is not Ethernet", request.htype, request.hlen),
        );
    };
    let Some(kind) = request.message_type() else {
        return ignore("no-message-type", format!("request from {mac} has no valid option 53"));
    };
    let snapshot = &index.snapshot;
    let relayed = !request.giaddr.is_unspecified();
    let anchor = if relayed { request.giaddr } else { received.server };
    let Some(network) = snapshot.network_containing(anchor) else {
        let via = if relayed { "relay giaddr" } else { "interface address" };
        return ignore("no-network", format!("no Network contains {anchor} ({via}) for {mac}"));
    };
    if network.mode == DhcpMode::Disabled {
        return ignore("dhcp-disabled", format!("Network {} has DHCP disabled; not answering {mac}", network.key()));
    }
    if let Some(claimants) = snapshot.duplicate(&mac) {
        return ignore(
            "duplicate-mac",
            format!("boot MAC {mac} is claimed by {}; not answering", claimants.join(" and ")),
        );
    }
    let client = Client { request, received, mac, kind, network, node: snapshot.node(&mac) };
    if received.proxy_port {
        return client.proxy_port_request(boot_config);
    }
    if network.mode == DhcpMode::Proxy {
        client.proxy(boot_config)
    } else {
        client.managed(index, leases, boot_config, now)
    }
}

struct Client<'a> {
    request: &'a Message,
    received: &'a Received,
    mac: Mac,
    kind: MessageType,
    network: &'a NetworkView,
    node: Option<&'a NodeBoot>,
}

impl<'a> Client<'a> {
    /// Known nodes are answered; unknown MACs only where discovery is on.
    fn admitted(&self) -> Result<(), Ignored> {
        if self.node.is_some() || self.network.allow_discovery {
            return Ok(());
        }
        Err(Ignored(
            "unknown-mac",
            format!(
                "no BareMetalNode has boot MAC {}; Network {} does not allow discovery",
                self.mac,
                self.network.key()
            ),
        ))
    }

    fn boot(&self, config: &BootConfig) -> Result<Option<Boot>, Ignored> {
        boot::boot_file(self.request, self.mac, self.received.server, config).map_err(|UnsupportedArch(arch)| {
            Ignored(
                "unsupported-arch",
                format!("{} boots with client architecture {arch}, for which girder has no boot file", self.mac),
            )
        })
    }

    fn node_name(&self) -> Option<String> {
        self.node.map(|n| format!("{}/{}", n.namespace, n.name))
    }

    // ---- Managed ------------------------------------------------------

    fn managed(
        &self,
        index: &SnapshotIndex,
        leases: &mut LeaseStore,
        config: &BootConfig,
        now: SystemTime,
    ) -> Decision {
        let request = self.request;
        if let Some(server_id) = request.server_id()
            && server_id != self.received.server
            && matches!(self.kind, MessageType::Request | MessageType::Decline | MessageType::Release)
        {
            return ignore("other-server", format!("{} chose DHCP server {server_id}", self.mac));
        }
        if let Err(ignored) = self.admitted() {
            return ignored.into();
        }
        let boot = match self.boot(config) {
            Ok(boot) => boot,
            Err(ignored) => return ignored.into(),
        };
        let static_addr = self.node.and_then(|node| node.address_on(self.network));
        let network = self.network;
        let server = self.received.server;
        let excluded = |addr: Ipv4Addr| {
            addr == network.network
                || addr == network.broadcast()
                || Some(addr) == network.gateway
                || addr == server
                || index.is_static(addr)
                || network.static_ranges.iter().any(|r| r.contains(addr))
        };
        let (ranges, range_kind) = self.dynamic_ranges();
        let pool = Pool { ranges, excluded: &excluded };
        match self.kind {
            MessageType::Discover => {
                let addr = match static_addr {
                    Some(addr) => addr,
                    None => match leases.offer(self.mac, request.requested_ip(), &pool, now) {
                        Some(addr) => addr,
                        None => {
                            return ignore(
                                "exhausted",
                                format!(
                                    "no free address for {} in the {range_kind} ranges of Network {}",
                                    self.mac,
                                    network.key()
                                ),
                            );
                        }
                    },
                };
                self.reply_managed(MessageType::Offer, addr, boot.as_ref())
            }
            MessageType::Request => {
                let requested = request.requested_ip().unwrap_or(request.ciaddr);
                if requested.is_unspecified() {
                    return ignore("no-address", format!("REQUEST from {} names no address", self.mac));
                }
                let granted = match static_addr {
                    Some(addr) => addr == requested,
                    None => {
                        network.contains(requested)
                            && leases.bind(self.mac, requested, &pool, network.lease_seconds, now)
                    }
                };
                if granted { self.reply_managed(MessageType::Ack, requested, boot.as_ref()) } else { self.nak() }
            }
            MessageType::Inform => self.reply_managed(MessageType::Ack, Ipv4Addr::UNSPECIFIED, boot.as_ref()),
            MessageType::Release => {
                let released = static_addr.is_none() && leases.release(self.mac, request.ciaddr, now);
                Decision::Handled {
                    detail: format!("{} released {} (known lease: {released})", self.mac, request.ciaddr),
                }
            }
            MessageType::Decline => {
                let addr = request.requested_ip().unwrap_or(request.ciaddr);
                let declined = static_addr.is_none() && leases.decline(self.mac, addr, now);
                Decision::Handled {
                    detail: format!(
                        "{} declined {addr} on Network {}: another host uses it (quarantined: {declined})",
                        self.mac,
                        network.key()
                    ),
                }
            }
            other => ignore("unexpected-type", format!("{} sent a {} to the server", self.mac, other.label())),
        }
    }

    /// Known nodes lease from the dhcp ranges; unknown MACs from the
    /// discovery ranges, else the dhcp ranges.
    fn dynamic_ranges(&self) -> (&'a [Ipv4Range], &'static str) {
        if self.node.is_none() && !self.network.discovery_ranges.is_empty() {
            (&self.network.discovery_ranges, "discovery")
        } else {
            (&self.network.dhcp_ranges, "dhcp")
        }
    }

    fn reply_managed(&self, kind: MessageType, addr: Ipv4Addr, boot: Option<&Boot>) -> Decision {
        let network = self.network;
        let server = self.received.server;
        let mut reply = reply_header(self.request, 12);
        reply.options.push_u8(code::MESSAGE_TYPE, kind as u8);
        reply.options.push_addr(code::SERVER_ID, server);
        if kind == MessageType::Offer || !addr.is_unspecified() {
            reply.yiaddr = addr;
            let lease = network.lease_seconds;
            reply.options.push_u32(code::LEASE_TIME, lease);
            reply.options.push_u32(code::RENEWAL_TIME, lease / 2);
            reply.options.push_u32(code::REBINDING_TIME, (u64::from(lease) * 7 / 8) as u32);
        }
        if kind == MessageType::Offer {
            reply.ciaddr = Ipv4Addr::UNSPECIFIED;
        }
        reply.options.push_addr(code::SUBNET_MASK, network.netmask());
        if let Some(gateway) = network.gateway {
            reply.options.push_addr(code::ROUTER, gateway);
        }
        if !network.dns_servers.is_empty() {
            reply.options.push_addrs(code::DNS_SERVERS, &network.dns_servers);
        }
        if let Some(node) = self.node {
            reply.options.push(code::HOST_NAME, node.name.as_bytes());
        }
        if let Some(domain) = &network.domain {
            reply.options.push(code::DOMAIN_NAME, domain.as_bytes());
        }
        if let Some(mtu) = network.mtu {
            reply.options.push_u16(code::MTU, mtu);
        }
        reply.options.push_addr(code::BROADCAST, network.broadcast());
        if let Some(boot) = boot {
            boot::apply(boot, self.request, server, &mut reply);
        }
        self.echo(&mut reply);
        let address = if addr.is_unspecified() { self.request.ciaddr } else { addr };
        let log = (kind == MessageType::Ack).then(|| self.log(kind, address, boot));
        Decision::Reply(Box::new(Reply { to: self.destination(), message: reply, log }))
    }

    fn nak(&self) -> Decision {
        let mut reply = reply_header(self.request, 3);
        reply.ciaddr = Ipv4Addr::UNSPECIFIED;
        reply.options.push_u8(code::MESSAGE_TYPE, MessageType::Nak as u8);
        reply.options.push_addr(code::SERVER_ID, self.received.server);
        self.echo(&mut reply);
        // RFC 2131 4.3.2: a NAK is broadcast, or sent to the relay with the
        // broadcast bit set.
        let to = if self.request.giaddr.is_unspecified() {
            SocketAddrV4::new(Ipv4Addr::BROADCAST, self.received.client_port)
        } else {
            reply.flags |= FLAG_BROADCAST;
            SocketAddrV4::new(self.request.giaddr, self.received.server_port)
        };
        Decision::Reply(Box::new(Reply { message: reply, to, log: None }))
    }

    // ---- Proxy --------------------------------------------------------

    /// Port 67 on a Proxy network: offer boot information to PXE clients;
    /// the site's DHCP server hands out the addresses.
    fn proxy(&self, config: &BootConfig) -> Decision {
        if self.kind != MessageType::Discover {
            return ignore(
                "not-ours",
                format!(
                    "{} from {} on proxy Network {} is for the site's DHCP server",
                    self.kind.label(),
                    self.mac,
                    self.network.key()
                ),
            );
        }
        let boot = match self.proxy_boot(config) {
            Ok(boot) => boot,
            Err(ignored) => return ignored.into(),
        };
        let reply = self.proxy_reply(MessageType::Offer, &boot);
        let log = Some(self.log(MessageType::Offer, Ipv4Addr::UNSPECIFIED, Some(&boot)));
        Decision::Reply(Box::new(Reply { message: reply, to: self.destination(), log }))
    }

    /// Port 4011: a PXE client asks the boot server directly; the ACK goes
    /// back to where the request came from.
    fn proxy_port_request(&self, config: &BootConfig) -> Decision {
        if !matches!(self.kind, MessageType::Request | MessageType::Inform) {
            return ignore("not-ours", format!("{} from {} on the ProxyDHCP port", self.kind.label(), self.mac));
        }
        let boot = match self.proxy_boot(config) {
            Ok(boot) => boot,
            Err(ignored) => return ignored.into(),
        };
        let reply = self.proxy_reply(MessageType::Ack, &boot);
        let log = Some(self.log(MessageType::Ack, self.request.ciaddr, Some(&boot)));
        Decision::Reply(Box::new(Reply { message: reply, to: self.received.source, log }))
    }

    fn proxy_boot(&self, config: &BootConfig) -> Result<Boot, Ignored> {
        if !boot::is_boot_client(self.request) {
            return Err(Ignored("not-pxe", format!("{} is not a PXE client", self.mac)));
        }
        self.admitted()?;
        self.boot(config)?.ok_or_else(|| Ignored("not-pxe", format!("{} is not a PXE client", self.mac)))
    }

    fn proxy_reply(&self, kind: MessageType, boot: &Boot) -> Message {
        let server = self.received.server;
        let mut reply = reply_header(self.request, 8);
        reply.yiaddr = Ipv4Addr::UNSPECIFIED;
        if kind == MessageType::Offer {
            reply.ciaddr = Ipv4Addr::UNSPECIFIED;
        }
        reply.options.push_u8(code::MESSAGE_TYPE, kind as u8);
        reply.options.push_addr(code::SERVER_ID, server);
        if !boot.http_client {
            reply.options.push(code::VENDOR_CLASS, b"PXEClient");
        }
        reply.options.push(code::VENDOR_SPECIFIC, &PXE_DISCOVERY_CONTROL);
        boot::apply(boot, self.request, server, &mut reply);
        self.echo(&mut reply);
        reply
    }

    // ---- Common -------------------------------------------------------

    /// Options 97 and 82 come back as they came; 82 last (RFC 3046).
    fn echo(&self, reply: &mut Message) {
        if let Some(id) = self.request.client_machine_id() {
            reply.options.push(code::CLIENT_MACHINE_ID, id);
        }
        if let Some(info) = self.request.relay_agent_info() {
            reply.options.push(code::RELAY_AGENT_INFO, info);
        }
    }

    /// To the relay, else to the client's address, else broadcast.
    fn destination(&self) -> SocketAddrV4 {
        let request = self.request;
        if !request.giaddr.is_unspecified() {
            SocketAddrV4::new(request.giaddr, self.received.server_port)
        } else if !request.ciaddr.is_unspecified() {
            SocketAddrV4::new(request.ciaddr, self.received.client_port)
        } else {
            SocketAddrV4::new(Ipv4Addr::BROADCAST, self.received.client_port)
        }
    }

    fn log(&self, kind: MessageType, address: Ipv4Addr, boot: Option<&Boot>) -> ReplyLog {
        ReplyLog {
            kind,
            mac: self.mac,
            address,
            network: self.network.key(),
            node: self.node_name(),
            boot: boot.map(|b| b.file.clone()),
        }
    }
}

/// A BOOTREPLY for `request` with room for `options` options.
fn reply_header(request: &Message, options: usize) -> Message {
    Message {
        op: BOOTREPLY,
        htype: request.htype,
        hlen: request.hlen,
        hops: 0,
        xid: request.xid,
        secs: 0,
        flags: request.flags,
        ciaddr: request.ciaddr,
        yiaddr: Ipv4Addr::UNSPECIFIED,
        siaddr: Ipv4Addr::UNSPECIFIED,
        giaddr: request.giaddr,
        chaddr: request.chaddr,
        sname: [0; 64],
        file: [0; 128],
        options: Options::with_capacity(options, 128),
    }
}
