//! Read-only TFTP server for the iPXE binaries.
//!
//! RFC 1350 read requests with option negotiation (RFC 2347): blksize (RFC 2348), tsize
//! and timeout (RFC 2349) and windowsize (RFC 7440); octet and netascii modes. Every
//! transfer gets its own task and its own socket on the listener's address, so replies
//! come from the address clients sent their request to. Write requests are refused.

mod files;
pub mod options;
pub mod packet;
mod path;
#[cfg(test)]
mod tests;
mod transfer;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use self::files::FileCache;
use self::packet::{ErrorCode, Packet, error_packet};
use crate::pxe::metrics::PxeMetrics;

/// Largest UDP payload: requests are read whole, whatever their size.
const MAX_DATAGRAM: usize = 65536;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TftpConfig {
    /// The directory served. Files below it (symlinks included) are served; nothing else is.
    pub root: PathBuf,
    /// The largest blksize granted; clamped to 8..=65464. The default 1468 fills a
    /// 1500-byte Ethernet frame without fragments.
    pub max_blksize: u16,
    /// The largest windowsize granted (at least 1).
    pub max_windowsize: u16,
    /// Transfers running at once; beyond it requests get "server busy, retry".
    pub max_transfers: usize,
    /// The retransmission timeout when the client does not negotiate one.
    pub timeout: Duration,
    /// Retransmissions of the same packet before a transfer is given up.
    pub max_retries: u32,
    /// The longest one transfer may take: a client that acknowledges just
    /// often enough never times out, and would hold its transfer slot for
    /// as long as it likes.
    pub max_transfer_time: Duration,
    /// Files larger than this are refused (each served file is held in memory).
    pub max_file_size: u64,
    /// Directories outside the root that symlinks inside it may point into; none by
    /// default. Debian's ipxe package, for one, links /usr/lib/ipxe/ipxe.efi to
    /// /boot/ipxe.efi, so serving /usr/lib/ipxe as it is needs "/boot" here.
    pub symlink_targets: Vec<PathBuf>,
}

impl TftpConfig {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            max_blksize: 1468,
            max_windowsize: 64,
            max_transfers: 256,
            timeout: Duration::from_secs(1),
            max_retries: 5,
            max_transfer_time: Duration::from_secs(600),
            max_file_size: 256 * 1024 * 1024,
            symlink_targets: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot bind the TFTP socket to {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: io::Error,
}

/// The listener socket, for [`serve`]. Bind it to the PXE network's own address (not
/// 0.0.0.0) so each transfer's replies leave from that address.
pub async fn bind(addr: SocketAddr) -> Result<UdpSocket, BindError> {
    UdpSocket::bind(addr).await.map_err(|source| BindError { addr, source })
}

/// Answers read requests on `socket` until `shutdown` is cancelled; transfers still
/// running then are told the server is shutting down and awaited. Fails when the root
/// is not a readable directory or the listener socket fails.
pub async fn serve(
    socket: UdpSocket,
    config: TftpConfig,
    metrics: Arc<PxeMetrics>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let root = tokio::fs::canonicalize(&config.root)
        .await
        .map_err(|error| io::Error::new(error.kind(), format!("TFTP root {}: {error}", config.root.display())))?;
    if !tokio::fs::metadata(&root).await?.is_dir() {
        let message = format!("TFTP root {} is not a directory", config.root.display());
        return Err(io::Error::new(io::ErrorKind::NotADirectory, message));
    }
    let mut symlink_targets = Vec::new();
    for target in &config.symlink_targets {
        match tokio::fs::canonicalize(target).await {
            Ok(canonical) => symlink_targets.push(canonical),
            // Nothing can point into a directory that does not exist.
            Err(error) => warn!(target = %target.display(), %error, "TFTP: symlink target directory ignored"),
        }
    }
    let local_ip = socket.local_addr()?.ip();
    let slots = Arc::new(Semaphore::new(config.max_transfers.max(1)));
    let files = FileCache::default();
    let shared = Arc::new(Shared { config, root, symlink_targets, local_ip, metrics, files });
    let mut transfers = JoinSet::new();
    let mut buffer = vec![0u8; MAX_DATAGRAM];
    loop {
        let received = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            received = socket.recv_from(&mut buffer) => received,
        };
        let (len, peer) = match received {
            Ok(received) => received,
            Err(error) if transient(&error) => {
                debug!(%error, "TFTP listener: receive error ignored");
                continue;
            }
            Err(error) => return Err(error),
        };
        // Reap finished transfers so the set does not grow.
        while transfers.try_join_next().is_some() {}
        let datagram = buffer.get(..len).unwrap_or_default();
        match packet::parse(datagram) {
            Ok(Packet::ReadRequest(request)) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    warn!(%peer, file = ?request.filename, "TFTP request refused: server busy");
                    shared.metrics.tftp_transfer("error", 0);
                    reply(&socket, peer, ErrorCode::NotDefined, "server busy, retry").await;
                    continue;
                };
                let request = transfer::OwnedRequest::from(&request);
                let task = transfer::run(shared.clone(), peer, request, shutdown.clone());
                transfers.spawn(async move {
                    task.await;
                    drop(slot);
                });
            }
            Ok(Packet::WriteRequest(request)) => {
                warn!(%peer, file = ?request.filename, reason = "read-only server", "TFTP write request refused");
                shared.metrics.tftp_transfer("refused", 0);
                reply(&socket, peer, ErrorCode::AccessViolation, "read-only server: writes are not accepted").await;
            }
            Ok(other) => debug!(%peer, packet = ?other, "TFTP listener: not a request, ignored"),
            Err(error) => {
                debug!(%peer, %error, "TFTP listener: malformed packet");
                // Only what looks like a request gets an answer, not arbitrary garbage.
                if matches!(packet::opcode(datagram), Some(1 | 2)) {
                    reply(&socket, peer, ErrorCode::IllegalOperation, &format!("malformed request: {error}")).await;
                }
            }
        }
    }
    while transfers.join_next().await.is_some() {}
    Ok(())
}

async fn reply(socket: &UdpSocket, peer: SocketAddr, code: ErrorCode, message: &str) {
    if let Err(error) = socket.send_to(&error_packet(code, message), peer).await {
        debug!(%peer, %error, "TFTP: cannot send an error packet");
    }
}

/// Receive errors that say something about one peer (an ICMP error), not the socket.
fn transient(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::Interrupted
    )
}

/// What every transfer needs.
struct Shared {
    config: TftpConfig,
    /// The canonical root.
    root: PathBuf,
    /// Canonical [`TftpConfig::symlink_targets`] that exist.
    symlink_targets: Vec<PathBuf>,
    /// The listener's address, for the transfer sockets.
    local_ip: IpAddr,
    metrics: Arc<PxeMetrics>,
    files: FileCache,
}

/// Why a request is not served: the ERROR packet to send and the metric result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub code: ErrorCode,
    pub message: String,
    /// `not_found`, `refused` or `error`.
    pub result: &'static str,
}

impl Refusal {
    fn not_found(message: String) -> Self {
        Self { code: ErrorCode::FileNotFound, message, result: "not_found" }
    }

    fn access(message: String) -> Self {
        Self { code: ErrorCode::AccessViolation, message, result: "refused" }
    }

    fn failed(message: String) -> Self {
        Self { code: ErrorCode::NotDefined, message, result: "error" }
    }
}
