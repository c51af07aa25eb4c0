//! The sockets: one DHCP socket (port 67) and one ProxyDHCP socket (port
//! 4011) per interface, each served by its own task; the lease store is
//! shared behind a mutex held only while deciding.

use super::boot::BootConfig;
use super::decide::{self, Decision, Received, Reply, SnapshotIndex};
use super::leases::{JOURNAL_FILE, LeaseStore};
use super::packet::{self, MessageType};
use crate::pxe::metrics::PxeMetrics;
use crate::pxe::model::{Mac, Snapshot};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
pub struct DhcpConfig {
    /// Interfaces to answer on (`eth1`...). Each needs an IPv4 address: it
    /// is the server identifier and picks the Network.
    pub interfaces: Vec<String>,
    /// DHCP server port (67); relay agents are answered on it too.
    pub port: u16,
    /// DHCP client port (68).
    pub client_port: u16,
    /// ProxyDHCP port (4011).
    pub proxy_port: u16,
    /// Holds the lease journal (`dhcp-leases`).
    pub state_dir: PathBuf,
    pub boot: BootConfig,
}

impl DhcpConfig {
    pub fn new(interfaces: Vec<String>, state_dir: PathBuf, boot: BootConfig) -> DhcpConfig {
        DhcpConfig { interfaces, port: 67, client_port: 68, proxy_port: 4011, state_dir, boot }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("no interface given to serve DHCP on")]
    NoInterfaces,
    #[error("cannot list the network interfaces: {0}")]
    Interfaces(#[source] nix::Error),
    #[error("interface {interface} does not exist")]
    NoSuchInterface { interface: String },
    #[error("interface {interface} has no IPv4 address")]
    NoIpv4 { interface: String },
    #[error("cannot bind the DHCP socket {addr} on interface {interface}: {source}")]
    Bind { interface: String, addr: SocketAddrV4, source: io::Error },
    #[error("cannot open the DHCP lease journal {}: {source}", path.display())]
    Leases { path: PathBuf, source: io::Error },
}

/// Serves DHCP on every configured interface until `shutdown`. Errors
/// finding interfaces, binding sockets or opening the lease journal
/// return at once; after that, nothing a client sends stops the loop.
pub async fn serve(
    config: DhcpConfig,
    mut snapshot: watch::Receiver<Arc<Snapshot>>,
    metrics: Arc<PxeMetrics>,
    shutdown: CancellationToken,
) -> Result<(), DhcpError> {
    if config.interfaces.is_empty() {
        return Err(DhcpError::NoInterfaces);
    }
    let mut sockets = Vec::with_capacity(config.interfaces.len() * 2);
    for interface in &config.interfaces {
        let server = interface_ipv4(interface)?;
        let dhcp = bind(interface, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, config.port))?;
        let proxy = bind(interface, SocketAddrV4::new(server, config.proxy_port))?;
        tracing::info!(
            interface = %interface,
            address = %server,
            port = config.port,
            proxy_port = config.proxy_port,
            "DHCP server listening"
        );
        for (socket, proxy_port) in [(dhcp, false), (proxy, true)] {
            let received = Received {
                server,
                proxy_port,
                source: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
                server_port: config.port,
                client_port: config.client_port,
            };
            sockets.push((socket, received));
        }
    }
    let leases = LeaseStore::open(&config.state_dir, SystemTime::now())
        .map_err(|source| DhcpError::Leases { path: config.state_dir.join(JOURNAL_FILE), source })?;
    tracing::info!(leases = leases.len(), dir = %config.state_dir.display(), "DHCP leases loaded");
    let shared = Arc::new(Shared { leases: Mutex::new(leases), boot: config.boot, metrics });
    let first = snapshot.borrow_and_update().clone();
    let mut tasks = JoinSet::new();
    for (socket, received) in sockets {
        let worker = Worker {
            socket,
            received,
            shared: shared.clone(),
            snapshot: snapshot.clone(),
            index: SnapshotIndex::new(first.clone()),
            throttle: LogThrottle::new(Duration::from_secs(300), 4096),
        };
        tasks.spawn(worker.run(shutdown.clone()));
    }
    while let Some(result) = tasks.join_next().await {
        if let Err(error) = result
            && error.is_panic()
        {
            tracing::error!(%error, "a DHCP socket task panicked");
        }
    }
    Ok(())
}

/// The first IPv4 address of `interface`.
pub fn interface_ipv4(interface: &str) -> Result<Ipv4Addr, DhcpError> {
    let mut exists = false;
    for ifaddr in nix::ifaddrs::getifaddrs().map_err(DhcpError::Interfaces)? {
        if ifaddr.interface_name != interface {
            continue;
        }
        exists = true;
        if let Some(addr) = ifaddr.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
            return Ok(addr.ip());
        }
    }
    let interface = interface.to_owned();
    Err(if exists { DhcpError::NoIpv4 { interface } } else { DhcpError::NoSuchInterface { interface } })
}

/// A UDP socket bound to `interface` (SO_BINDTODEVICE), so several
/// interfaces can each hold port 67 and broadcasts leave by the right one.
fn bind(interface: &str, addr: SocketAddrV4) -> Result<UdpSocket, DhcpError> {
    let error = |source: io::Error| DhcpError::Bind { interface: interface.to_owned(), addr, source };
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(error)?;
    socket.set_reuse_address(true).map_err(error)?;
    socket.set_broadcast(true).map_err(error)?;
    socket.bind_device(Some(interface.as_bytes())).map_err(error)?;
    // Bursts of booting machines: a larger queue drops less. Best effort.
    let _ = socket.set_recv_buffer_size(1 << 20);
    socket.set_nonblocking(true).map_err(error)?;
    socket.bind(&SocketAddr::V4(addr).into()).map_err(error)?;
    UdpSocket::from_std(socket.into()).map_err(error)
}

struct Shared {
    leases: Mutex<LeaseStore>,
    boot: BootConfig,
    metrics: Arc<PxeMetrics>,
}

struct Worker {
    socket: UdpSocket,
    received: Received,
    shared: Arc<Shared>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    index: SnapshotIndex,
    throttle: LogThrottle,
}

impl Worker {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut buf = vec![0u8; 4096];
        let mut out = Vec::with_capacity(1024);
        loop {
            let received = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                received = self.socket.recv_from(&mut buf) => received,
            };
            let (len, source) = match received {
                Ok(received) => received,
                // An ICMP error from an earlier send surfaces here once; anything
                // else (the interface went away...) may repeat, so wait before
                // trying again rather than spin.
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(error) => {
                    tracing::warn!(%error, server = %self.received.server, "DHCP receive failed; retrying in 1 s");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            let SocketAddr::V4(source) = source else { continue };
            let Some(bytes) = buf.get(..len) else { continue };
            let Some(to) = self.handle(bytes, source, &mut out) else { continue };
            if let Err(error) = self.socket.send_to(&out, SocketAddr::V4(to)).await {
                tracing::warn!(%error, destination = %to, "DHCP send failed");
            }
        }
    }

    /// Decides the answer to one datagram; the reply is encoded into `out`.
    fn handle(&mut self, bytes: &[u8], source: SocketAddrV4, out: &mut Vec<u8>) -> Option<SocketAddrV4> {
        let metrics = &self.shared.metrics;
        let request = match packet::parse_request(bytes) {
            Ok(request) => request,
            Err(error) => {
                metrics.dhcp_ignored("malformed");
                tracing::debug!(%source, %error, "malformed DHCP packet");
                return None;
            }
        };
        metrics.dhcp_received(request.type_label());
        if self.snapshot.has_changed().unwrap_or(false) {
            self.index = SnapshotIndex::new(self.snapshot.borrow_and_update().clone());
        }
        let received = Received { source, ..self.received };
        let decision = {
            let mut leases = self.shared.leases.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            decide::decide(&request, &received, &self.index, &mut leases, &self.shared.boot, SystemTime::now())
        };
        let mac = request.mac().unwrap_or(Mac([0; 6]));
        match decision {
            Decision::Reply(reply) => {
                let Reply { message, to, log } = *reply;
                packet::encode(&message, out);
                metrics.dhcp_sent(message.type_label());
                if let Some(log) = log {
                    let what = match log.kind {
                        MessageType::Offer => "ProxyDHCP offer",
                        _ => "DHCP ACK",
                    };
                    tracing::info!(
                        mac = %log.mac,
                        address = %log.address,
                        network = %log.network,
                        node = log.node.as_deref().unwrap_or("unknown"),
                        boot = log.boot.as_deref().unwrap_or(""),
                        "{what}"
                    );
                } else {
                    tracing::trace!(mac = %mac, destination = %to, kind = message.type_label(), "DHCP reply");
                }
                Some(to)
            }
            Decision::Handled { detail } => {
                tracing::info!(mac = %mac, "{detail}");
                None
            }
            Decision::Ignore { reason, detail } => {
                metrics.dhcp_ignored(reason);
                if self.throttle.should_log(mac, reason, Instant::now()) {
                    if decide::is_quiet(reason) {
                        tracing::debug!(mac = %mac, reason, "not answering DHCP: {detail}");
                    } else {
                        tracing::info!(mac = %mac, reason, "not answering DHCP: {detail}");
                    }
                }
                None
            }
        }
    }
}

/// Logs each (MAC, reason) at most once per window, in bounded memory: a
/// machine PXE-booting in a loop on the wrong network is one line, not a
/// flood.
struct LogThrottle {
    seen: HashMap<(Mac, &'static str), Instant>,
    window: Duration,
    capacity: usize,
}

impl LogThrottle {
    fn new(window: Duration, capacity: usize) -> LogThrottle {
        LogThrottle { seen: HashMap::new(), window, capacity }
    }

    fn should_log(&mut self, mac: Mac, reason: &'static str, now: Instant) -> bool {
        if let Some(last) = self.seen.get(&(mac, reason))
            && now.duration_since(*last) < self.window
        {
            return false;
        }
        if self.seen.len() >= self.capacity {
            let window = self.window;
            self.seen.retain(|_, last| now.duration_since(*last) < window);
            if self.seen.len() >= self.capacity {
                // Too many distinct offenders: stay quiet until some age out.
                return false;
            }
        }
        self.seen.insert((mac, reason), now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::network::DhcpMode;
    use crate::pxe::dhcp::packet::{Message, code};
    use crate::pxe::model::NetworkView;

    #[test]
    fn throttle_logs_once_per_window_and_stays_bounded() {
        let mut throttle = LogThrottle::new(Duration::from_secs(60), 2);
        let start = Instant::now();
        let mac = |n| Mac([0, 0, 0, 0, 0, n]);
        assert!(throttle.should_log(mac(1), "unknown-mac", start));
        assert!(!throttle.should_log(mac(1), "unknown-mac", start + Duration::from_secs(10)));
        assert!(throttle.should_log(mac(1), "exhausted", start));
        assert!(!throttle.should_log(mac(2), "unknown-mac", start));
        assert_eq!(throttle.seen.len(), 2);
        assert!(throttle.should_log(mac(2), "unknown-mac", start + Duration::from_secs(61)));
        assert!(throttle.should_log(mac(1), "unknown-mac", start + Duration::from_secs(61)));
    }

    #[test]
    fn missing_interface_is_a_clear_error() {
        let error = interface_ipv4("girder-nope0").unwrap_err();
        assert_eq!(error.to_string(), "interface girder-nope0 does not exist");
    }

    fn loopback_snapshot(mode: DhcpMode) -> Snapshot {
        Snapshot {
            networks: vec![NetworkView {
                namespace: "lab".into(),
                name: "loop".into(),
                network: Ipv4Addr::new(127, 0, 0, 0),
                prefix: 8,
                gateway: None,
                dns_servers: vec![],
                domain: None,
                mtu: None,
                mode,
                lease_seconds: 600,
                allow_discovery: true,
                static_ranges: vec![],
                dhcp_ranges: vec![],
                discovery_ranges: vec![],
            }],
            ..Snapshot::default()
        }
    }

    /// The real socket path on `lo` (needs root for SO_BINDTODEVICE; skipped
    /// otherwise): a ProxyDHCP request on the proxy port gets its ACK back,
    /// then, after a snapshot change, an INFORM on the DHCP port.
    #[tokio::test]
    async fn proxy_port_request_is_answered_over_loopback() {
        let base = 20000 + (std::process::id() % 20000) as u16;
        let state_dir = std::env::temp_dir().join(format!("girder-dhcp-serve-{}", std::process::id()));
        let config = DhcpConfig {
            interfaces: vec!["lo".into()],
            port: base,
            client_port: base + 1,
            proxy_port: base + 2,
            state_dir: state_dir.clone(),
            boot: BootConfig::default(),
        };
        let (tx, rx) = watch::channel(Arc::new(loopback_snapshot(DhcpMode::Proxy)));
        let metrics = Arc::new(PxeMetrics::default());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(config, rx, metrics.clone(), shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        if server.is_finished() {
            let result = server.await;
            if let Ok(Err(DhcpError::Bind { source, .. })) = &result
                && source.kind() == io::ErrorKind::PermissionDenied
            {
                eprintln!("skipped: binding to a device needs CAP_NET_RAW");
                return;
            }
            panic!("server stopped: {result:?}");
        }

        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut request = Message { xid: 42, ciaddr: Ipv4Addr::LOCALHOST, ..Message::default() };
        request.chaddr[..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        request.options.push_u8(code::MESSAGE_TYPE, MessageType::Request as u8);
        request.options.push(code::VENDOR_CLASS, b"PXEClient:Arch:00007:UNDI:003016");
        client.send_to(&[1, 2, 3], ("127.0.0.1", base + 2)).await.unwrap();
        client.send_to(&packet::to_bytes(&request), ("127.0.0.1", base + 2)).await.unwrap();
        let mut buf = [0u8; 1500];
        let (len, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf)).await.unwrap().unwrap();
        let reply = packet::parse(&buf[..len]).unwrap();
        assert_eq!(reply.xid, 42);
        assert_eq!(reply.message_type(), Some(MessageType::Ack));
        assert_eq!(reply.file_name(), b"ipxe.efi");
        assert_eq!(reply.yiaddr, Ipv4Addr::UNSPECIFIED);

        // A new snapshot reaches the running server: the Network turns
        // Managed, and an INFORM on the DHCP port is answered to ciaddr:68.
        tx.send(Arc::new(loopback_snapshot(DhcpMode::Managed))).unwrap();
        let client = UdpSocket::bind(("127.0.0.1", base + 1)).await.unwrap();
        let mut inform = Message { xid: 43, ciaddr: Ipv4Addr::LOCALHOST, ..Message::default() };
        inform.chaddr[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        inform.options.push_u8(code::MESSAGE_TYPE, MessageType::Inform as u8);
        client.send_to(&packet::to_bytes(&inform), ("127.0.0.1", base)).await.unwrap();
        let (len, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf)).await.unwrap().unwrap();
        let reply = packet::parse(&buf[..len]).unwrap();
        assert_eq!((reply.xid, reply.message_type()), (43, Some(MessageType::Ack)));
        assert_eq!(reply.options.get(code::SUBNET_MASK), Some(&[255, 0, 0, 0][..]));

        shutdown.cancel();
        server.await.unwrap().unwrap();
        assert!(metrics.render().contains("malformed"));
        let _ = std::fs::remove_dir_all(&state_dir);
    }
}
