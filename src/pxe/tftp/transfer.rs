//! One read transfer, from its own socket: refusal, or OACK then DATA until the last
//! block is acknowledged, windowed per RFC 7440.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::files::to_netascii;
use super::options::{Limits, Settings, negotiate};
use super::packet::{ErrorCode, Packet, Request, error_packet, parse};
use super::{Refusal, Shared, path, transient};

/// A read request copied out of the listener's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OwnedRequest {
    pub filename: String,
    pub mode: String,
    pub options: Vec<(String, String)>,
}

impl From<&Request<'_>> for OwnedRequest {
    fn from(request: &Request<'_>) -> Self {
        Self {
            filename: request.filename.to_owned(),
            mode: request.mode.to_owned(),
            options: request.options.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect(),
        }
    }
}

enum Outcome {
    Complete,
    Refused(Refusal),
    TimedOut,
    /// Longer than [`super::TftpConfig::max_transfer_time`].
    TooLong,
    PeerError {
        code: u16,
        message: String,
    },
    Shutdown,
    Failed(io::Error),
}

/// What the transfer socket brought, or why it brought nothing.
enum Event {
    Ack(u16),
    PeerError { code: u16, message: String },
    TimedOut,
    Shutdown,
    Failed(io::Error),
}

/// Serves `request` from `peer` to the end, then logs and counts the result.
pub(super) async fn run(shared: Arc<Shared>, peer: SocketAddr, request: OwnedRequest, shutdown: CancellationToken) {
    let started = Instant::now();
    let socket = match UdpSocket::bind(SocketAddr::new(shared.local_ip, 0)).await {
        Ok(socket) => socket,
        Err(error) => {
            warn!(%peer, file = ?request.filename, %error, "TFTP transfer failed: cannot bind its socket");
            shared.metrics.tftp_transfer("error", 0);
            return;
        }
    };
    let mut session = Session {
        socket,
        peer,
        settings: Settings::default(),
        timeout: shared.config.timeout,
        max_retries: shared.config.max_retries,
        data: Arc::from(Vec::new()),
        acked_bytes: 0,
        receive: vec![0; 2048],
        send: Vec::new(),
    };
    let limit = shared.config.max_transfer_time;
    let outcome = match tokio::time::timeout(limit, session.serve(&shared, &request, &shutdown)).await {
        Ok(outcome) => outcome,
        Err(_elapsed) => {
            let message = format!("transfer time limit ({} s) reached", limit.as_secs());
            session.send_error(peer, ErrorCode::NotDefined, &message).await;
            Outcome::TooLong
        }
    };

    let bytes = session.acked_bytes;
    let file = request.filename.as_str();
    let Settings { blksize, windowsize, .. } = session.settings;
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let result = match outcome {
        Outcome::Complete => {
            info!(%peer, ?file, bytes, blksize, windowsize, duration_ms, "TFTP transfer complete");
            "complete"
        }
        Outcome::Refused(refusal) => {
            warn!(%peer, ?file, code = refusal.code as u16, reason = %refusal.message, "TFTP read request refused");
            refusal.result
        }
        Outcome::TimedOut => {
            warn!(%peer, ?file, bytes, blksize, windowsize, duration_ms, "TFTP transfer timed out");
            "timeout"
        }
        Outcome::TooLong => {
            let limit_s = shared.config.max_transfer_time.as_secs();
            warn!(%peer, ?file, bytes, blksize, windowsize, duration_ms, limit_s, "TFTP transfer given up: the client is too slow");
            "timeout"
        }
        // PXE ROMs commonly ask for tsize only and abort after the OACK.
        Outcome::PeerError { code, message } => {
            info!(%peer, ?file, bytes, blksize, windowsize, duration_ms, code, ?message, "TFTP transfer aborted by the client");
            "error"
        }
        Outcome::Shutdown => {
            info!(%peer, ?file, bytes, blksize, windowsize, duration_ms, "TFTP transfer cut short by shutdown");
            "error"
        }
        Outcome::Failed(error) => {
            warn!(%peer, ?file, bytes, blksize, windowsize, duration_ms, %error, "TFTP transfer failed");
            "error"
        }
    };
    shared.metrics.tftp_transfer(result, bytes);
}

/// Which block a 16-bit ACK number means, counting blocks from 1 without wrapping, given
/// the last block sent: the most recent one with those low 16 bits. A window never
/// exceeds 65535 blocks, so that is unambiguous.
fn acked_block(ack: u16, last_sent: usize) -> Option<usize> {
    let behind = usize::from(wire_block(last_sent).wrapping_sub(ack));
    last_sent.checked_sub(behind)
}

/// Block numbers roll over from 65535 to 0.
fn wire_block(block: usize) -> u16 {
    (block & 0xffff) as u16
}

struct Session {
    socket: UdpSocket,
    peer: SocketAddr,
    settings: Settings,
    timeout: Duration,
    max_retries: u32,
    data: Arc<[u8]>,
    /// File bytes the client has acknowledged.
    acked_bytes: u64,
    receive: Vec<u8>,
    send: Vec<u8>,
}

impl Session {
    async fn serve(&mut self, shared: &Shared, request: &OwnedRequest, shutdown: &CancellationToken) -> Outcome {
        let accepted = match self.prepare(shared, request).await {
            Ok(accepted) => accepted,
            Err(refusal) => {
                self.send_error(self.peer, refusal.code, &refusal.message).await;
                return Outcome::Refused(refusal);
            }
        };
        if !accepted.is_empty() {
            let options = accepted.iter().map(|(name, value)| (*name, value.as_str())).collect();
            let option_ack = Packet::OptionAck { options }.to_bytes();
            if let Some(outcome) = self.send_option_ack(&option_ack, shutdown).await {
                return outcome;
            }
        }
        self.send_data(shutdown).await
    }

    /// Checks the request, loads the file and negotiates; returns the OACK options.
    async fn prepare(
        &mut self,
        shared: &Shared,
        request: &OwnedRequest,
    ) -> Result<Vec<(&'static str, String)>, Refusal> {
        let netascii = if request.mode.eq_ignore_ascii_case("octet") {
            false
        } else if request.mode.eq_ignore_ascii_case("netascii") {
            true
        } else {
            return Err(Refusal {
                code: ErrorCode::IllegalOperation,
                message: format!("unsupported transfer mode {:?}: use octet or netascii", request.mode),
                result: "refused",
            });
        };
        let path = path::resolve(&shared.root, &shared.symlink_targets, &request.filename).await?;
        let data = shared.files.load(&path, &request.filename, shared.config.max_file_size).await?;
        // The netascii size is only known after conversion, so it gets no tsize.
        let (data, tsize) = if netascii {
            (to_netascii(&data).into(), None)
        } else {
            let size = data.len() as u64;
            (data, Some(size))
        };
        let options: Vec<(&str, &str)> =
            request.options.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
        let limits = Limits { max_blksize: shared.config.max_blksize, max_windowsize: shared.config.max_windowsize };
        let negotiation = negotiate(&options, limits, tsize);
        self.data = data;
        self.settings = negotiation.settings;
        if let Some(timeout) = negotiation.settings.timeout {
            self.timeout = timeout;
        }
        Ok(negotiation.accepted)
    }

    /// Sends the OACK until ACK 0 comes; `None` means go on with the data.
    async fn send_option_ack(&mut self, option_ack: &[u8], shutdown: &CancellationToken) -> Option<Outcome> {
        let mut retries = 0;
        loop {
            if let Err(error) = self.socket.send_to(option_ack, self.peer).await {
                return Some(Outcome::Failed(error));
            }
            let deadline = Instant::now() + self.timeout;
            loop {
                match self.next_event(deadline, shutdown).await {
                    Event::Ack(0) => return None,
                    Event::Ack(_) => continue,
                    Event::TimedOut if retries < self.max_retries => {
                        retries += 1;
                        break;
                    }
                    other => return Some(self.end(other).await),
                }
            }
        }
    }

    async fn send_data(&mut self, shutdown: &CancellationToken) -> Outcome {
        let blksize = usize::from(self.settings.blksize);
        let window = usize::from(self.settings.windowsize);
        // The last block is shorter than blksize, empty when the size is a multiple of it.
        let last = self.data.len() / blksize + 1;
        let mut acked = 0;
        let mut next = 1;
        let mut retries = 0;
        loop {
            let window_end = last.min(acked + window);
            while next <= window_end {
                if let Err(error) = self.send_block(next).await {
                    return Outcome::Failed(error);
                }
                next += 1;
            }
            let deadline = Instant::now() + self.timeout;
            loop {
                match self.next_event(deadline, shutdown).await {
                    Event::Ack(ack) => {
                        // Duplicates and old ACKs change nothing and trigger nothing: answering
                        // them is the Sorcerer's Apprentice bug.
                        let Some(block) = acked_block(ack, next - 1).filter(|&block| block > acked) else {
                            continue;
                        };
                        acked = block;
                        retries = 0;
                        self.acked_bytes = (acked * blksize).min(self.data.len()) as u64;
                        if acked == last {
                            return Outcome::Complete;
                        }
                        // Short of the window's end, the client missed the block after (RFC 7440).
                        next = acked + 1;
                        break;
                    }
                    Event::TimedOut if retries < self.max_retries => {
                        retries += 1;
                        next = acked + 1;
                        break;
                    }
                    other => return self.end(other).await,
                }
            }
        }
    }

    async fn send_block(&mut self, block: usize) -> io::Result<()> {
        let blksize = usize::from(self.settings.blksize);
        let start = block.saturating_sub(1).saturating_mul(blksize);
        let end = start.saturating_add(blksize).min(self.data.len());
        let payload = self.data.get(start..end).unwrap_or_default();
        self.send.clear();
        Packet::Data { block: wire_block(block), payload }.encode(&mut self.send);
        self.socket.send_to(&self.send, self.peer).await.map(drop)
    }

    /// The outcome of an event that ends the transfer.
    async fn end(&mut self, event: Event) -> Outcome {
        match event {
            Event::TimedOut => {
                self.send_error(self.peer, ErrorCode::NotDefined, "transfer timed out").await;
                Outcome::TimedOut
            }
            Event::Shutdown => {
                self.send_error(self.peer, ErrorCode::NotDefined, "server shutting down, retry").await;
                Outcome::Shutdown
            }
            Event::PeerError { code, message } => Outcome::PeerError { code, message },
            Event::Failed(error) => Outcome::Failed(error),
            // Callers handle ACKs themselves.
            Event::Ack(ack) => Outcome::Failed(io::Error::other(format!("unexpected ACK {ack}"))),
        }
    }

    /// The next ACK or ERROR from the peer before `deadline`. Anything else from the peer
    /// is ignored; packets from other ports get "unknown transfer ID" and change nothing.
    async fn next_event(&mut self, deadline: Instant, shutdown: &CancellationToken) -> Event {
        loop {
            let received = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Event::Shutdown,
                received = tokio::time::timeout_at(deadline, self.socket.recv_from(&mut self.receive)) => received,
            };
            let (len, from) = match received {
                Err(_elapsed) => return Event::TimedOut,
                Ok(Ok(received)) => received,
                Ok(Err(error)) if transient(&error) => continue,
                Ok(Err(error)) => return Event::Failed(error),
            };
            if from != self.peer {
                debug!(peer = %self.peer, %from, "TFTP: packet from an unknown transfer ID");
                self.send_error(from, ErrorCode::UnknownTransferId, "unknown transfer ID").await;
                continue;
            }
            match parse(self.receive.get(..len).unwrap_or_default()) {
                Ok(Packet::Ack { block }) => return Event::Ack(block),
                Ok(Packet::Error { code, message }) => {
                    return Event::PeerError { code, message: message.into_owned() };
                }
                Ok(other) => debug!(peer = %self.peer, packet = ?other, "TFTP: unexpected packet ignored"),
                Err(error) => debug!(peer = %self.peer, %error, "TFTP: malformed packet ignored"),
            }
        }
    }

    async fn send_error(&self, to: SocketAddr, code: ErrorCode, message: &str) {
        if let Err(error) = self.socket.send_to(&error_packet(code, message), to).await {
            debug!(%to, %error, "TFTP: cannot send an error packet");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_numbers_map_to_blocks_across_the_rollover() {
        assert_eq!(acked_block(1, 1), Some(1));
        assert_eq!(acked_block(0, 1), Some(0));
        assert_eq!(acked_block(2, 1), None, "an ACK ahead of what was sent is no block of ours");
        assert_eq!(acked_block(65535, 65535), Some(65535));
        assert_eq!(acked_block(0, 65536), Some(65536));
        assert_eq!(acked_block(65535, 65536), Some(65535));
        assert_eq!(acked_block(3, 65536 + 10), Some(65536 + 3));
        assert_eq!(acked_block(65530, 65536 + 10), Some(65530));
        assert_eq!(acked_block(5, 2 * 65536 + 5), Some(2 * 65536 + 5));
    }

    #[test]
    fn wire_blocks_roll_over_to_zero() {
        assert_eq!(wire_block(65535), 65535);
        assert_eq!(wire_block(65536), 0);
        assert_eq!(wire_block(65537), 1);
    }
}
