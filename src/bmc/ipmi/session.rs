//! One RMCP+ session with one BMC, over UDP: the handshake (Get Channel
//! Authentication Capabilities, Open Session, RAKP 1-4, Set Session Privilege
//! Level), requests with sequence numbers and retransmission, re-establishment
//! when the BMC dropped the session, and Close Session.
//!
//! One request at a time per BMC: a session's sequence numbers and most BMCs'
//! tiny request buffers make that the norm for IPMI, so the whole state sits
//! behind one lock (`BmcOptions::max_concurrent_requests` does not apply).

use super::commands::{self, Privilege};
use super::crypto::{CipherSuite, SessionKeys};
use super::packet::{self, Inbound, IpmiResponse, PayloadType};
use crate::bmc::{BmcError, Credentials};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// IPMI 2.0 limits on user names and passwords (RAKP, §13.31).
const MAX_USERNAME: usize = 16;
const MAX_PASSWORD: usize = 20;
/// BMCs end a session after some inactivity (60 s is common; some are
/// shorter). One idle for this long is replaced rather than tried.
const IDLE_REOPEN: Duration = Duration::from_secs(20);
/// Retransmission: the first wait for an answer, doubled each time up to the cap.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(4);
/// Larger than any answer girder asks for.
const MAX_DATAGRAM: usize = 2048;
/// RAKP 3 status sent when the BMC's RAKP 2 did not verify.
const STATUS_INVALID_INTEGRITY_CHECK: u8 = 0x0f;

/// How often a request may reach the BMC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Delivery {
    /// Sent again until answered: reads, and requests whose repetition
    /// changes nothing (power up, power down, boot flags).
    Repeatable,
    /// Sent once, its answer waited for until the deadline: a request whose
    /// repetition would act twice (a hard reset, a power cycle). IPMI leaves
    /// duplicate detection to the BMC and many have none (ipmi_sim has
    /// none): a hard reset answered slowly and retransmitted resets the
    /// machine twice, and the second reset boots past the one-time boot
    /// device the first one used.
    AtMostOnce,
}

pub(super) struct Transport {
    /// The BMC's address, for errors and logs.
    pub bmc: String,
    host: String,
    port: u16,
    credentials: Credentials,
    timeout: Duration,
    suites: Vec<CipherSuite>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    socket: Option<UdpSocket>,
    session: Option<Session>,
    /// The IPMI request sequence number (6 bits) of the last request.
    rq_seq: u8,
    /// The RMCP+ message tag of the last session setup message.
    tag: u8,
}

struct Session {
    console_id: u32,
    bmc_id: u32,
    keys: SessionKeys,
    /// The last outbound session sequence number; every packet, including a
    /// retransmission, takes the next one.
    sequence: AtomicU32,
    suite: CipherSuite,
    last_used: Instant,
}

impl Session {
    fn next_packet(&self, message: &[u8]) -> Vec<u8> {
        // Only one task uses a session at a time (the state lock): a load and
        // a store are enough.
        let sequence = self.sequence.load(Ordering::Relaxed).wrapping_add(1).max(1);
        self.sequence.store(sequence, Ordering::Relaxed);
        packet::v20_packet(PayloadType::Ipmi, self.bmc_id, sequence, message, Some((&self.keys, rand::random())))
    }
}

/// Why a handshake attempt failed, and so what to try next.
enum Refused {
    /// The BMC does not offer this cipher suite: try the next one.
    Suite(BmcError),
    /// The user may not have this privilege: try a lower one.
    Privilege(BmcError),
    /// Nothing else to try.
    Fatal(BmcError),
}

impl Transport {
    pub fn new(
        bmc: String,
        host: String,
        port: u16,
        credentials: Credentials,
        timeout: Duration,
        suites: Vec<CipherSuite>,
    ) -> Result<Self, BmcError> {
        let config = |reason: String| BmcError::Config { bmc: bmc.clone(), reason };
        if credentials.username.len() > MAX_USERNAME {
            return Err(config(format!("the IPMI user name is longer than {MAX_USERNAME} bytes")));
        }
        if credentials.password.expose().len() > MAX_PASSWORD {
            return Err(config(format!("the IPMI password is longer than {MAX_PASSWORD} bytes")));
        }
        if suites.is_empty() {
            return Err(config("no IPMI cipher suite to offer".into()));
        }
        if timeout.is_zero() {
            return Err(config("the timeout is zero".into()));
        }
        Ok(Self { bmc, host, port, credentials, timeout, suites, state: Mutex::new(State::default()) })
    }

    /// The cipher suite of the open session, if one is open.
    pub async fn cipher_suite(&self) -> Option<CipherSuite> {
        self.state.lock().await.session.as_ref().map(|s| s.suite)
    }

    /// Opens a session now, unless one is open.
    pub async fn login(&self) -> Result<(), BmcError> {
        let mut state = self.state.lock().await;
        if state.session.is_none() {
            self.open(&mut state, Instant::now() + self.timeout).await?;
        }
        Ok(())
    }

    /// Sends one IPMI request in the session and returns the answer, whatever
    /// its completion code. Opens the session first if needed; if a session
    /// that was in use gets no answer, it is replaced once (the BMC may have
    /// dropped it, or restarted).
    pub async fn request(&self, what: &str, netfn: u8, cmd: u8, data: &[u8]) -> Result<IpmiResponse, BmcError> {
        self.request_with(what, netfn, cmd, data, Delivery::Repeatable).await
    }

    /// [`Transport::request`], for a request whose repetition would act
    /// twice: sent once and waited for until the timeout, never sent again
    /// (neither retransmitted nor re-sent in a new session). The caller
    /// should have used the session just before (a read), so that a session
    /// the BMC dropped is found out by the read, not by this request.
    pub async fn request_once(&self, what: &str, netfn: u8, cmd: u8, data: &[u8]) -> Result<IpmiResponse, BmcError> {
        self.request_with(what, netfn, cmd, data, Delivery::AtMostOnce).await
    }

    async fn request_with(
        &self,
        what: &str,
        netfn: u8,
        cmd: u8,
        data: &[u8],
        delivery: Delivery,
    ) -> Result<IpmiResponse, BmcError> {
        let mut state = self.state.lock().await;
        let started = Instant::now();
        let deadline = started + self.timeout;
        let reusable = state.session.as_ref().map(|s| s.last_used.elapsed() < IDLE_REOPEN);
        if reusable == Some(false) {
            tracing::debug!(bmc = %self.bmc, "session idle for long: replacing it");
            self.abandon(&mut state);
        }
        let reused = reusable == Some(true);
        if !reused {
            self.open(&mut state, deadline).await?;
        }
        // A reused session gets half the time: enough for any live BMC, and
        // it leaves time to open a new one if this one is gone.
        let retry_elsewhere = reused && delivery == Delivery::Repeatable;
        let first_deadline = if retry_elsewhere { started + self.timeout / 2 } else { deadline };
        let response = match self.send(&mut state, what, (netfn, cmd, data), first_deadline, delivery).await {
            Err(BmcError::Timeout { .. } | BmcError::InvalidResponse { .. }) if retry_elsewhere => {
                tracing::info!(bmc = %self.bmc, what, "no answer in the session: the BMC may have dropped it; opening a new one");
                state.session = None;
                self.open(&mut state, deadline).await?;
                self.send(&mut state, what, (netfn, cmd, data), deadline, delivery).await?
            }
            other => other?,
        };
        if let Some(session) = &mut state.session {
            session.last_used = Instant::now();
        }
        Ok(response)
    }

    /// Closes the session, if one is open. Whatever the BMC answers, the
    /// session is forgotten here; only a BMC that does not answer is an error.
    pub async fn close(&self) -> Result<(), BmcError> {
        let mut state = self.state.lock().await;
        let Some(session) = &state.session else {
            return Ok(());
        };
        let id = session.bmc_id.to_le_bytes();
        let deadline = Instant::now() + self.timeout;
        let result = self
            .send(
                &mut state,
                "Close Session",
                (commands::NETFN_APP, commands::CLOSE_SESSION, &id),
                deadline,
                Delivery::Repeatable,
            )
            .await;
        state.session = None;
        match result {
            Ok(response) if response.completion_code != 0 => {
                tracing::debug!(
                    bmc = %self.bmc,
                    code = response.completion_code,
                    "Close Session answered {}: the session is gone anyway",
                    packet::completion_code_text(response.completion_code)
                );
                Ok(())
            }
            Ok(_) => {
                tracing::debug!(bmc = %self.bmc, "session closed");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Forgets the session, asking the BMC to close it without waiting for
    /// the answer (if it is still there, it frees a slot; if not, nothing lost).
    fn abandon(&self, state: &mut State) {
        if let (Some(socket), Some(session)) = (&state.socket, state.session.take()) {
            let _ = socket.try_send(&close_packet(&session, &mut state.rq_seq));
        }
    }

    // -----------------------------------------------------------------------
    // Errors

    fn timeout_error(&self, what: &str) -> BmcError {
        BmcError::Timeout { bmc: self.bmc.clone(), what: what.to_string(), after: self.timeout }
    }

    pub fn invalid(&self, what: &str, detail: String) -> BmcError {
        BmcError::InvalidResponse { bmc: self.bmc.clone(), what: what.to_string(), detail }
    }

    fn auth_error(&self, what: &str, detail: String) -> BmcError {
        BmcError::IpmiAuth { bmc: self.bmc.clone(), what: what.to_string(), detail }
    }

    fn io_error(&self, what: &str, e: std::io::Error) -> BmcError {
        let detail = if e.kind() == std::io::ErrorKind::ConnectionRefused {
            format!("nothing listens on UDP port {} (ICMP port unreachable)", self.port)
        } else {
            e.to_string()
        };
        BmcError::Connect { bmc: self.bmc.clone(), what: what.to_string(), detail }
    }

    // -----------------------------------------------------------------------
    // Sending and receiving

    async fn ensure_socket(&self, state: &mut State) -> Result<(), BmcError> {
        if state.socket.is_some() {
            return Ok(());
        }
        let what = "resolve the BMC address";
        let target = format!("{}:{}", self.host, self.port);
        let addr = tokio::time::timeout(self.timeout, tokio::net::lookup_host(target))
            .await
            .map_err(|_| self.timeout_error(what))?
            .map_err(|e| self.io_error(what, e))?
            .next()
            .ok_or_else(|| BmcError::Connect {
                bmc: self.bmc.clone(),
                what: what.into(),
                detail: "the name resolves to no address".into(),
            })?;
        let local = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let socket = UdpSocket::bind(local).await.map_err(|e| self.io_error("open a UDP socket", e))?;
        socket.connect(addr).await.map_err(|e| self.io_error("open a UDP socket", e))?;
        state.socket = Some(socket);
        Ok(())
    }

    /// Sends what `build` makes until `accept` takes an answer, again at
    /// growing intervals (each retransmission built anew, so it takes a new
    /// sequence number) unless `delivery` says once, until `deadline`.
    /// Datagrams `accept` passes over (`Ok(None)`: late answers to earlier
    /// requests) are dropped; malformed ones too, and the last such problem
    /// is the error if nothing better arrives in time.
    async fn exchange<T>(
        &self,
        socket: &UdpSocket,
        what: &str,
        deadline: Instant,
        delivery: Delivery,
        mut build: impl FnMut() -> Vec<u8>,
        mut accept: impl FnMut(&[u8]) -> Result<Option<T>, String>,
    ) -> Result<T, BmcError> {
        let mut wait = FIRST_RETRY;
        let mut problem: Option<String> = None;
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(match problem {
                    Some(detail) => self.invalid(what, detail),
                    None => self.timeout_error(what),
                });
            }
            socket.send(&build()).await.map_err(|e| self.io_error(what, e))?;
            let resend_at = match delivery {
                Delivery::Repeatable => (now + wait).min(deadline),
                Delivery::AtMostOnce => deadline,
            };
            wait = (wait * 2).min(MAX_RETRY);
            loop {
                let received = match tokio::time::timeout_at(resend_at, socket.recv(&mut buf)).await {
                    Err(_elapsed) => break,
                    Ok(received) => received.map_err(|e| self.io_error(what, e))?,
                };
                match accept(&buf[..received]) {
                    Ok(Some(answer)) => return Ok(answer),
                    Ok(None) => {}
                    Err(detail) => {
                        tracing::debug!(bmc = %self.bmc, what, %detail, "dropped an unusable datagram");
                        problem = Some(detail);
                    }
                }
            }
        }
    }

    /// One request in the open session.
    async fn send(
        &self,
        state: &mut State,
        what: &str,
        (netfn, cmd, data): (u8, u8, &[u8]),
        deadline: Instant,
        delivery: Delivery,
    ) -> Result<IpmiResponse, BmcError> {
        let State { socket: Some(socket), session: Some(session), rq_seq, .. } = state else {
            return Err(self.invalid(what, "no session is open".into()));
        };
        *rq_seq = (*rq_seq + 1) & 0x3f;
        let seq = *rq_seq;
        let message = packet::ipmi_request(seq, netfn, cmd, data);
        let session = &*session;
        self.exchange(
            socket,
            what,
            deadline,
            delivery,
            || session.next_packet(&message),
            |datagram| match packet::parse_packet(datagram, Some(&session.keys))? {
                Inbound::V20 { payload_type: 0x00, session_id, payload, .. } if session_id == session.console_id => {
                    let response = packet::parse_ipmi_response(&payload)?;
                    Ok((response.rq_seq == seq && response.cmd == cmd && response.netfn == netfn + 1)
                        .then_some(response))
                }
                _ => Ok(None),
            },
        )
        .await
    }

    // -----------------------------------------------------------------------
    // Session setup

    /// Opens a session: the strongest privilege the user has (Administrator,
    /// else Operator, which is enough for chassis control), with the first
    /// cipher suite the BMC accepts.
    async fn open(&self, state: &mut State, deadline: Instant) -> Result<(), BmcError> {
        self.ensure_socket(state).await?;
        self.check_capabilities(state, deadline).await?;
        let mut last = None;
        'privileges: for privilege in [Privilege::Administrator, Privilege::Operator] {
            for &suite in &self.suites {
                match self.handshake(state, suite, privilege, deadline).await {
                    Ok(session) => {
                        state.session = Some(session);
                        return self.set_privilege(state, privilege, deadline).await;
                    }
                    Err(Refused::Suite(e)) => {
                        tracing::debug!(bmc = %self.bmc, suite = suite.id(), error = %e, "cipher suite refused");
                        last = Some(e);
                    }
                    Err(Refused::Privilege(e)) => {
                        tracing::debug!(bmc = %self.bmc, ?privilege, error = %e, "privilege refused");
                        last = Some(e);
                        continue 'privileges;
                    }
                    Err(Refused::Fatal(e)) => return Err(e),
                }
            }
            // No suite was accepted: a lower privilege will not change that.
            break;
        }
        Err(last.unwrap_or_else(|| self.invalid("open a session", "nothing was tried".into())))
    }

    /// Get Channel Authentication Capabilities, outside a session: is the BMC
    /// there, and does it speak IPMI 2.0?
    async fn check_capabilities(&self, state: &mut State, deadline: Instant) -> Result<(), BmcError> {
        let what = "Get Channel Authentication Capabilities";
        let Some(socket) = &state.socket else {
            return Err(self.invalid(what, "no socket".into()));
        };
        state.rq_seq = (state.rq_seq + 1) & 0x3f;
        let seq = state.rq_seq;
        // Channel 0x0e (this one) with the "IPMI 2.0 data" bit; Administrator.
        let message = packet::ipmi_request(
            seq,
            commands::NETFN_APP,
            commands::GET_CHANNEL_AUTH_CAPABILITIES,
            &[0x8e, Privilege::Administrator as u8],
        );
        let response = self
            .exchange(
                socket,
                what,
                deadline,
                Delivery::Repeatable,
                || packet::v15_packet(&message),
                |datagram| match packet::parse_packet(datagram, None)? {
                    Inbound::V15 { payload, .. } => {
                        let response = packet::parse_ipmi_response(&payload)?;
                        Ok((response.rq_seq == seq && response.cmd == commands::GET_CHANNEL_AUTH_CAPABILITIES)
                            .then_some(response))
                    }
                    _ => Ok(None),
                },
            )
            .await?;
        if response.completion_code != 0 {
            // Some BMCs refuse the IPMI 2.0 bit; RMCP+ may work all the same.
            tracing::debug!(bmc = %self.bmc, code = response.completion_code, "{what} refused; trying RMCP+ anyway");
            return Ok(());
        }
        let data = &response.data;
        if data.len() >= 4 && (data[1] & 0x80 == 0 || data[3] & 0x02 == 0) {
            return Err(BmcError::Unsupported {
                bmc: self.bmc.clone(),
                what: "IPMI 1.5 without RMCP+ (girder speaks IPMI 2.0 lanplus only)".into(),
            });
        }
        Ok(())
    }

    /// Open Session Request/Response and RAKP 1-4 with one cipher suite.
    async fn handshake(
        &self,
        state: &mut State,
        suite: CipherSuite,
        privilege: Privilege,
        deadline: Instant,
    ) -> Result<Session, Refused> {
        let State { socket: Some(socket), tag: tag_counter, .. } = state else {
            return Err(Refused::Fatal(self.invalid("open a session", "no socket".into())));
        };
        *tag_counter = tag_counter.wrapping_add(1);
        let tag = *tag_counter;
        let console_id = loop {
            let id: u32 = rand::random();
            if id != 0 {
                break id;
            }
        };

        // Open Session.
        let what = format!("Open Session Request (cipher suite {})", suite.id());
        let request = packet::open_session_request(tag, console_id, suite);
        let opened = self
            .exchange(
                socket,
                &what,
                deadline,
                Delivery::Repeatable,
                || packet::v20_packet(PayloadType::OpenSessionRequest, 0, 0, &request, None),
                |datagram| match packet::parse_packet(datagram, None)? {
                    Inbound::V20 { payload_type, payload, .. }
                        if payload_type == PayloadType::OpenSessionResponse as u8 =>
                    {
                        let response = packet::parse_open_session_response(&payload)?;
                        Ok((response.tag == tag).then_some(response))
                    }
                    _ => Ok(None),
                },
            )
            .await
            .map_err(Refused::Fatal)?;
        if opened.status != 0 {
            let detail = format!("status 0x{:02x}: {}", opened.status, packet::rmcp_status_text(opened.status));
            return Err(match opened.status {
                0x04..=0x07 | 0x10 | 0x11 => Refused::Suite(BmcError::Unsupported {
                    bmc: self.bmc.clone(),
                    what: format!("cipher suite {} ({detail})", suite.id()),
                }),
                0x09 | 0x0a => Refused::Privilege(self.auth_error(&what, detail)),
                _ => Refused::Fatal(self.invalid(&what, detail)),
            });
        }
        if opened.console_session_id != console_id {
            return Err(Refused::Fatal(self.invalid(&what, "the answer is for another session".into())));
        }
        if opened.algorithms != suite.algorithms() {
            return Err(Refused::Suite(
                self.invalid(&what, format!("the BMC chose algorithms {:?}, not those proposed", opened.algorithms)),
            ));
        }
        let bmc_id = opened.bmc_session_id;
        if bmc_id == 0 {
            return Err(Refused::Fatal(self.invalid(&what, "the BMC gave session ID 0".into())));
        }

        // RAKP 1 and 2: the BMC proves it knows the password.
        let what = "RAKP Message 1";
        let console_random: [u8; 16] = rand::random();
        // Name-only lookup, the requested privilege.
        let role = 0x10 | privilege as u8;
        let user = self.credentials.username.as_bytes();
        let user_len = [user.len() as u8];
        let mut kuid = [0u8; MAX_PASSWORD];
        let password = self.credentials.password.expose().as_bytes();
        kuid[..password.len()].copy_from_slice(password);
        let rakp1 = packet::rakp1(tag, bmc_id, &console_random, role, user);
        let rakp2 = self
            .exchange(
                socket,
                what,
                deadline,
                Delivery::Repeatable,
                || packet::v20_packet(PayloadType::Rakp1, 0, 0, &rakp1, None),
                |datagram| match packet::parse_packet(datagram, None)? {
                    Inbound::V20 { payload_type, payload, .. } if payload_type == PayloadType::Rakp2 as u8 => {
                        let response = packet::parse_rakp2(&payload, suite)?;
                        Ok((response.tag == tag).then_some(response))
                    }
                    _ => Ok(None),
                },
            )
            .await
            .map_err(Refused::Fatal)?;
        if rakp2.status != 0 {
            let detail = format!("RAKP 2 status 0x{:02x}: {}", rakp2.status, packet::rmcp_status_text(rakp2.status));
            return Err(match rakp2.status {
                0x09 | 0x0a => Refused::Privilege(self.auth_error(what, detail)),
                0x0d | 0x0c => Refused::Fatal(self.auth_error(what, format!("{detail} (unknown or disabled user)"))),
                _ => Refused::Fatal(self.invalid(what, detail)),
            });
        }
        if rakp2.console_session_id != console_id {
            return Err(Refused::Fatal(self.invalid(what, "RAKP 2 is for another session".into())));
        }
        let console_id_le = console_id.to_le_bytes();
        let bmc_id_le = bmc_id.to_le_bytes();
        let expected = suite.hmac(
            &kuid,
            &[
                &console_id_le,
                &bmc_id_le,
                &console_random,
                &rakp2.bmc_random,
                &rakp2.bmc_guid,
                &[role],
                &user_len,
                user,
            ],
        );
        if !constant_time_eq(&expected, &rakp2.auth_code) {
            // Tell the BMC to drop the half-open session; no answer comes.
            let refusal = packet::rakp3(tag, STATUS_INVALID_INTEGRITY_CHECK, bmc_id, &[]);
            let _ = socket.send(&packet::v20_packet(PayloadType::Rakp3, 0, 0, &refusal, None)).await;
            return Err(Refused::Fatal(self.auth_error(
                what,
                "the BMC's RAKP 2 key exchange code does not match the password (wrong password)".into(),
            )));
        }

        // RAKP 3 and 4: girder proves it knows the password; both derive the
        // session integrity key.
        let what = "RAKP Message 3";
        let auth_code = suite.hmac(&kuid, &[&rakp2.bmc_random, &console_id_le, &[role], &user_len, user]);
        let sik = suite.hmac(&kuid, &[&console_random, &rakp2.bmc_random, &[role], &user_len, user]);
        let rakp3 = packet::rakp3(tag, 0, bmc_id, &auth_code);
        let rakp4 = self
            .exchange(
                socket,
                what,
                deadline,
                Delivery::Repeatable,
                || packet::v20_packet(PayloadType::Rakp3, 0, 0, &rakp3, None),
                |datagram| match packet::parse_packet(datagram, None)? {
                    Inbound::V20 { payload_type, payload, .. } if payload_type == PayloadType::Rakp4 as u8 => {
                        let response = packet::parse_rakp4(&payload, suite)?;
                        Ok((response.tag == tag).then_some(response))
                    }
                    _ => Ok(None),
                },
            )
            .await
            .map_err(Refused::Fatal)?;
        if rakp4.status != 0 {
            let detail = format!("RAKP 4 status 0x{:02x}: {}", rakp4.status, packet::rmcp_status_text(rakp4.status));
            return Err(Refused::Fatal(match rakp4.status {
                0x0f | 0x0d | 0x09 | 0x0a => self.auth_error(what, detail),
                _ => self.invalid(what, detail),
            }));
        }
        if rakp4.console_session_id != console_id {
            return Err(Refused::Fatal(self.invalid(what, "RAKP 4 is for another session".into())));
        }
        let mut check = suite.hmac(&sik, &[&console_random, &bmc_id_le, &rakp2.bmc_guid]);
        check.truncate(suite.integrity_len());
        if !constant_time_eq(&check, &rakp4.integrity_check) {
            return Err(Refused::Fatal(self.invalid(what, "the RAKP 4 integrity check value does not match".into())));
        }
        tracing::debug!(bmc = %self.bmc, suite = suite.id(), ?privilege, "RMCP+ session open");
        Ok(Session {
            console_id,
            bmc_id,
            keys: SessionKeys::derive(suite, &sik),
            sequence: AtomicU32::new(0),
            suite,
            last_used: Instant::now(),
        })
    }

    /// An RMCP+ session starts at User privilege: raise it.
    async fn set_privilege(&self, state: &mut State, privilege: Privilege, deadline: Instant) -> Result<(), BmcError> {
        let what = "Set Session Privilege Level";
        let result = self
            .send(
                state,
                what,
                (commands::NETFN_APP, commands::SET_SESSION_PRIVILEGE_LEVEL, &[privilege as u8]),
                deadline,
                Delivery::Repeatable,
            )
            .await;
        let refusal = match result {
            Ok(response) if response.completion_code == 0 => return Ok(()),
            Ok(response) => self.auth_error(
                what,
                format!(
                    "completion code 0x{:02x}: {}",
                    response.completion_code,
                    packet::completion_code_text(response.completion_code)
                ),
            ),
            Err(e) => e,
        };
        self.abandon(state);
        Err(refusal)
    }
}

impl Drop for Transport {
    /// A session nobody closed is closed now, without waiting for the answer.
    fn drop(&mut self) {
        let state = self.state.get_mut();
        if let (Some(socket), Some(session)) = (&state.socket, &state.session) {
            let _ = socket.try_send(&close_packet(session, &mut state.rq_seq));
        }
    }
}

fn close_packet(session: &Session, rq_seq: &mut u8) -> Vec<u8> {
    *rq_seq = (*rq_seq + 1) & 0x3f;
    let message =
        packet::ipmi_request(*rq_seq, commands::NETFN_APP, commands::CLOSE_SESSION, &session.bmc_id.to_le_bytes());
    session.next_packet(&message)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
