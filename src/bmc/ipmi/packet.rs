//! The bytes on the wire: RMCP, the IPMI 1.5 and 2.0 (RMCP+) session
//! wrappers, IPMI LAN messages, and the RMCP+ session setup payloads.
//!
//! Pure functions, no I/O. Everything read from the network goes through a
//! [`Reader`], so truncated or malformed packets are errors, never panics.

use super::crypto::{CipherSuite, SessionKeys};

/// RMCP version 1.0, reserved, sequence 0xff (no RMCP ACK), class IPMI.
const RMCP_HEADER: [u8; 4] = [0x06, 0x00, 0xff, 0x07];
const RMCP_CLASS_ASF: u8 = 0x06;
const RMCP_CLASS_IPMI: u8 = 0x07;
/// The session header's authentication type / format byte for RMCP+.
const AUTH_TYPE_RMCP_PLUS: u8 = 0x06;
/// The payload type byte's flags.
const PAYLOAD_ENCRYPTED: u8 = 0x80;
const PAYLOAD_AUTHENTICATED: u8 = 0x40;
/// "Next header" of an authenticated RMCP+ packet (§13.28.4).
const NEXT_HEADER: u8 = 0x07;
/// The BMC's slave address and the remote console's software ID.
const BMC_ADDR: u8 = 0x20;
const CONSOLE_SWID: u8 = 0x81;

/// RMCP+ payload types (§13.27.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PayloadType {
    Ipmi = 0x00,
    OpenSessionRequest = 0x10,
    OpenSessionResponse = 0x11,
    Rakp1 = 0x12,
    Rakp2 = 0x13,
    Rakp3 = 0x14,
    Rakp4 = 0x15,
}

/// Reads a byte slice front to back; every read past the end is an error.
pub(super) struct Reader<'a> {
    data: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8], what: &'static str) -> Self {
        Self { data, what }
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.data.len() < n {
            return Err(format!("{} truncated: {} bytes left, {n} needed", self.what, self.data.len()));
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }
    pub fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    pub fn u16_le(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    pub fn u32_le(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// The two's complement checksum of IPMI messages.
fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)).wrapping_neg()
}

// ---------------------------------------------------------------------------
// IPMI messages

/// An IPMI request as a LAN message: to the BMC (0x20, LUN 0) from the remote
/// console (0x81, LUN 0).
pub(super) fn ipmi_request(rq_seq: u8, netfn: u8, cmd: u8, data: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(7 + data.len());
    msg.push(BMC_ADDR);
    msg.push(netfn << 2);
    msg.push(checksum(&msg[..2]));
    msg.push(CONSOLE_SWID);
    msg.push((rq_seq & 0x3f) << 2);
    msg.push(cmd);
    msg.extend_from_slice(data);
    msg.push(checksum(&msg[3..]));
    msg
}

/// An IPMI response, as read from a LAN message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct IpmiResponse {
    /// The response's network function (the request's, plus one).
    pub netfn: u8,
    pub rq_seq: u8,
    pub cmd: u8,
    pub completion_code: u8,
    pub data: Vec<u8>,
}

pub(super) fn parse_ipmi_response(msg: &[u8]) -> Result<IpmiResponse, String> {
    let mut r = Reader::new(msg, "IPMI response");
    let header = r.take(3)?;
    if checksum(&header[..2]) != header[2] {
        return Err("IPMI response header checksum mismatch".into());
    }
    let body = r.rest();
    // rsAddr, rqSeq/LUN, cmd, completion code, checksum.
    if body.len() < 5 {
        return Err(format!("IPMI response truncated: {} bytes", msg.len()));
    }
    let (body, sum) = body.split_at(body.len() - 1);
    if checksum(body) != sum[0] {
        return Err("IPMI response data checksum mismatch".into());
    }
    Ok(IpmiResponse {
        netfn: header[1] >> 2,
        rq_seq: body[1] >> 2,
        cmd: body[2],
        completion_code: body[3],
        data: body[4..].to_vec(),
    })
}

// ---------------------------------------------------------------------------
// Session wrappers

/// An IPMI 1.5 packet without authentication, for what comes before a
/// session (Get Channel Authentication Capabilities).
pub(super) fn v15_packet(payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(14 + payload.len());
    p.extend_from_slice(&RMCP_HEADER);
    p.push(0x00); // authentication type: none
    p.extend_from_slice(&0u32.to_le_bytes()); // session sequence
    p.extend_from_slice(&0u32.to_le_bytes()); // session ID
    p.push(payload.len() as u8);
    p.extend_from_slice(payload);
    p
}

/// An RMCP+ packet. With `keys` (an established session) the payload is
/// encrypted with `iv` and the packet carries an AuthCode.
pub(super) fn v20_packet(
    payload_type: PayloadType,
    session_id: u32,
    sequence: u32,
    payload: &[u8],
    keys: Option<(&SessionKeys, [u8; 16])>,
) -> Vec<u8> {
    let mut p = Vec::with_capacity(64 + payload.len());
    p.extend_from_slice(&RMCP_HEADER);
    p.push(AUTH_TYPE_RMCP_PLUS);
    let sealed;
    let body = match keys {
        Some((keys, iv)) => {
            p.push(payload_type as u8 | PAYLOAD_ENCRYPTED | PAYLOAD_AUTHENTICATED);
            sealed = keys.encrypt(iv, payload);
            &sealed[..]
        }
        None => {
            p.push(payload_type as u8);
            payload
        }
    };
    p.extend_from_slice(&session_id.to_le_bytes());
    p.extend_from_slice(&sequence.to_le_bytes());
    p.extend_from_slice(&(body.len() as u16).to_le_bytes());
    p.extend_from_slice(body);
    if let Some((keys, _)) = keys {
        // Pad so that everything from the auth type to the next header is a
        // multiple of 4 bytes.
        let signed_len = p.len() - RMCP_HEADER.len() + 2;
        let pad = (4 - signed_len % 4) % 4;
        p.extend(std::iter::repeat_n(0xff, pad));
        p.push(pad as u8);
        p.push(NEXT_HEADER);
        let code = keys.integrity(&p[RMCP_HEADER.len()..]);
        p.extend_from_slice(&code);
    }
    p
}

/// A packet from the BMC, its session wrapper checked (and, in a session,
/// its AuthCode verified and its payload decrypted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Inbound {
    /// An IPMI 1.5 packet (answers to pre-session requests).
    V15 { session_id: u32, payload: Vec<u8> },
    /// An RMCP+ packet.
    V20 { payload_type: u8, session_id: u32, sequence: u32, payload: Vec<u8> },
    /// An ASF packet (an RMCP ping answer): not for us.
    Asf,
}

/// Parses a datagram. `keys` are the session's, when one is established:
/// then an RMCP+ packet that is not both authenticated and encrypted is
/// refused, as is one whose AuthCode does not match.
pub(super) fn parse_packet(datagram: &[u8], keys: Option<&SessionKeys>) -> Result<Inbound, String> {
    let mut r = Reader::new(datagram, "RMCP packet");
    let rmcp = r.take(4)?;
    if rmcp[0] != RMCP_HEADER[0] {
        return Err(format!("RMCP version 0x{:02x} (want 0x06)", rmcp[0]));
    }
    match rmcp[3] & 0x1f {
        RMCP_CLASS_IPMI => {}
        RMCP_CLASS_ASF => return Ok(Inbound::Asf),
        other => return Err(format!("RMCP class 0x{other:02x} is not IPMI")),
    }
    let signed_start = datagram.len() - r.data.len();
    let auth_type = r.u8()?;
    if auth_type != AUTH_TYPE_RMCP_PLUS {
        let _sequence = r.u32_le()?;
        let session_id = r.u32_le()?;
        if auth_type != 0 {
            r.take(16)?; // AuthCode of an IPMI 1.5 session: girder opens none.
        }
        let len = usize::from(r.u8()?);
        let payload = r.take(len)?.to_vec();
        return Ok(Inbound::V15 { session_id, payload });
    }
    let type_byte = r.u8()?;
    let payload_type = type_byte & 0x3f;
    if payload_type == 0x02 {
        r.take(6)?; // OEM IANA and payload ID
    }
    let session_id = r.u32_le()?;
    let sequence = r.u32_le()?;
    let len = usize::from(r.u16_le()?);
    let body = r.take(len)?;
    let encrypted = type_byte & PAYLOAD_ENCRYPTED != 0;
    let authenticated = type_byte & PAYLOAD_AUTHENTICATED != 0;

    let Some(keys) = keys.filter(|_| session_id != 0) else {
        if encrypted || authenticated {
            return Err("a protected RMCP+ packet outside a session".into());
        }
        return Ok(Inbound::V20 { payload_type, session_id, sequence, payload: body.to_vec() });
    };
    if !(encrypted && authenticated) {
        return Err("an unprotected RMCP+ packet in an encrypted session".into());
    }
    // Integrity pad, pad length, next header, AuthCode.
    let trailer = r.rest();
    let code_len = keys.suite.integrity_len();
    if trailer.len() < code_len + 2 {
        return Err(format!("RMCP+ trailer truncated: {} bytes", trailer.len()));
    }
    let (head, code) = trailer.split_at(trailer.len() - code_len);
    let pad_len = usize::from(head[head.len() - 2]);
    if head[head.len() - 1] != NEXT_HEADER || pad_len + 2 != head.len() || pad_len > 3 {
        return Err("RMCP+ integrity trailer is malformed".into());
    }
    let signed = &datagram[signed_start..datagram.len() - code_len];
    if !constant_time_eq(&keys.integrity(signed), code) {
        return Err("RMCP+ AuthCode does not match (integrity check failed)".into());
    }
    let payload = keys.decrypt(body)?;
    Ok(Inbound::V20 { payload_type, session_id, sequence, payload })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ---------------------------------------------------------------------------
// RMCP+ session setup (§13.17-13.23)

/// The Open Session Request payload.
pub(super) fn open_session_request(tag: u8, console_session_id: u32, suite: CipherSuite) -> Vec<u8> {
    let (auth, integrity, confidentiality) = suite.algorithms();
    let mut p = Vec::with_capacity(32);
    p.push(tag);
    p.push(0x00); // maximum privilege: the highest the proposed algorithms allow
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&console_session_id.to_le_bytes());
    for (kind, algorithm) in [(0u8, auth), (1, integrity), (2, confidentiality)] {
        p.extend_from_slice(&[kind, 0, 0, 0x08, algorithm, 0, 0, 0]);
    }
    p
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OpenSessionResponse {
    pub tag: u8,
    pub status: u8,
    pub console_session_id: u32,
    pub bmc_session_id: u32,
    /// Authentication, integrity and confidentiality algorithms chosen.
    pub algorithms: (u8, u8, u8),
}

pub(super) fn parse_open_session_response(payload: &[u8]) -> Result<OpenSessionResponse, String> {
    let mut r = Reader::new(payload, "Open Session Response");
    let tag = r.u8()?;
    let status = r.u8()?;
    if status != 0 {
        // An error answer may stop here.
        return Ok(OpenSessionResponse {
            tag,
            status,
            console_session_id: 0,
            bmc_session_id: 0,
            algorithms: (0, 0, 0),
        });
    }
    r.take(2)?; // maximum privilege, reserved
    let console_session_id = r.u32_le()?;
    let bmc_session_id = r.u32_le()?;
    let mut algorithms = [0u8; 3];
    for (i, algorithm) in algorithms.iter_mut().enumerate() {
        let record = r.take(8)?;
        if usize::from(record[0]) != i {
            return Err(format!("Open Session Response: algorithm record {i} has type {}", record[0]));
        }
        *algorithm = record[4] & 0x3f;
    }
    Ok(OpenSessionResponse {
        tag,
        status,
        console_session_id,
        bmc_session_id,
        algorithms: (algorithms[0], algorithms[1], algorithms[2]),
    })
}

/// RAKP Message 1.
pub(super) fn rakp1(tag: u8, bmc_session_id: u32, console_random: &[u8; 16], role: u8, username: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(28 + username.len());
    p.push(tag);
    p.extend_from_slice(&[0, 0, 0]);
    p.extend_from_slice(&bmc_session_id.to_le_bytes());
    p.extend_from_slice(console_random);
    p.push(role);
    p.extend_from_slice(&[0, 0]);
    p.push(username.len() as u8);
    p.extend_from_slice(username);
    p
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rakp2 {
    pub tag: u8,
    pub status: u8,
    pub console_session_id: u32,
    pub bmc_random: [u8; 16],
    pub bmc_guid: [u8; 16],
    pub auth_code: Vec<u8>,
}

pub(super) fn parse_rakp2(payload: &[u8], suite: CipherSuite) -> Result<Rakp2, String> {
    let mut r = Reader::new(payload, "RAKP Message 2");
    let tag = r.u8()?;
    let status = r.u8()?;
    if status != 0 {
        return Ok(Rakp2 {
            tag,
            status,
            console_session_id: 0,
            bmc_random: [0; 16],
            bmc_guid: [0; 16],
            auth_code: Vec::new(),
        });
    }
    r.take(2)?;
    let console_session_id = r.u32_le()?;
    let bmc_random = r.array::<16>()?;
    let bmc_guid = r.array::<16>()?;
    let auth_code = r.take(suite.auth_code_len())?.to_vec();
    Ok(Rakp2 { tag, status, console_session_id, bmc_random, bmc_guid, auth_code })
}

/// RAKP Message 3.
pub(super) fn rakp3(tag: u8, status: u8, bmc_session_id: u32, auth_code: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + auth_code.len());
    p.push(tag);
    p.push(status);
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&bmc_session_id.to_le_bytes());
    p.extend_from_slice(auth_code);
    p
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rakp4 {
    pub tag: u8,
    pub status: u8,
    pub console_session_id: u32,
    pub integrity_check: Vec<u8>,
}

pub(super) fn parse_rakp4(payload: &[u8], suite: CipherSuite) -> Result<Rakp4, String> {
    let mut r = Reader::new(payload, "RAKP Message 4");
    let tag = r.u8()?;
    let status = r.u8()?;
    if status != 0 {
        return Ok(Rakp4 { tag, status, console_session_id: 0, integrity_check: Vec::new() });
    }
    r.take(2)?;
    let console_session_id = r.u32_le()?;
    let integrity_check = r.take(suite.integrity_len())?.to_vec();
    Ok(Rakp4 { tag, status, console_session_id, integrity_check })
}

/// What an RMCP+ status code (Open Session Response, RAKP 2 and 4) means.
pub(super) fn rmcp_status_text(status: u8) -> &'static str {
    match status {
        0x00 => "no errors",
        0x01 => "insufficient resources to create a session",
        0x02 => "invalid session ID",
        0x03 => "invalid payload type",
        0x04 => "invalid authentication algorithm",
        0x05 => "invalid integrity algorithm",
        0x06 => "no matching authentication payload",
        0x07 => "no matching integrity payload",
        0x08 => "inactive session ID",
        0x09 => "invalid role",
        0x0a => "unauthorized role or privilege level requested",
        0x0b => "insufficient resources to create a session at the requested role",
        0x0c => "invalid name length",
        0x0d => "unauthorized name",
        0x0e => "unauthorized GUID",
        0x0f => "invalid integrity check value",
        0x10 => "invalid confidentiality algorithm",
        0x11 => "no cipher suite match with proposed security algorithms",
        0x12 => "illegal or unrecognized parameter",
        _ => "unknown status",
    }
}

/// What an IPMI completion code means (§5.2).
pub(super) fn completion_code_text(code: u8) -> &'static str {
    match code {
        0x00 => "success",
        0xc0 => "node busy",
        0xc1 => "invalid command",
        0xc2 => "command invalid for the given LUN",
        0xc3 => "timeout while processing the command",
        0xc4 => "out of space",
        0xc5 => "reservation cancelled or invalid",
        0xc6 => "request data truncated",
        0xc7 => "request data length invalid",
        0xc8 => "request data field length limit exceeded",
        0xc9 => "parameter out of range",
        0xca => "cannot return the number of requested data bytes",
        0xcb => "requested sensor, data or record not present",
        0xcc => "invalid data field in request",
        0xcd => "command illegal for the specified sensor or record type",
        0xce => "command response could not be provided",
        0xcf => "cannot execute a duplicated request",
        0xd0 => "SDR repository in update mode",
        0xd1 => "device in firmware update mode",
        0xd2 => "BMC initialization in progress",
        0xd3 => "destination unavailable",
        0xd4 => "insufficient privilege level",
        0xd5 => "command not supported in the present state",
        0xd6 => "command sub-function disabled or unavailable",
        0xff => "unspecified error",
        _ => "unknown completion code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipmi_request_carries_both_checksums() {
        // Get Chassis Status, as ipmitool sends it: 20 00 e0 81 04 01 7a.
        let msg = ipmi_request(1, 0x00, 0x01, &[]);
        assert_eq!(msg, [0x20, 0x00, 0xe0, 0x81, 0x04, 0x01, 0x7a]);
        // Get Channel Authentication Capabilities (channel 0x0e + v2 bit, admin).
        let msg = ipmi_request(0, 0x06, 0x38, &[0x8e, 0x04]);
        assert_eq!(msg, [0x20, 0x18, 0xc8, 0x81, 0x00, 0x38, 0x8e, 0x04, 0xb5]);
    }

    #[test]
    fn an_ipmi_response_is_checked() {
        let resp = [0x81, 0x04, 0x7b, 0x20, 0x04, 0x01, 0x00, 0x01, 0x00, 0x40, 0x9a];
        let parsed = parse_ipmi_response(&resp).unwrap();
        assert_eq!(parsed.netfn, 0x01);
        assert_eq!(parsed.rq_seq, 1);
        assert_eq!(parsed.cmd, 0x01);
        assert_eq!(parsed.completion_code, 0);
        assert_eq!(parsed.data, [0x01, 0x00, 0x40]);
        // Every truncation is an error, as is a bad checksum.
        for len in 0..resp.len() {
            assert!(parse_ipmi_response(&resp[..len]).is_err(), "len {len}");
        }
        let mut bad = resp;
        bad[7] ^= 1;
        assert!(parse_ipmi_response(&bad).unwrap_err().contains("checksum"));
        let mut bad = resp;
        bad[1] ^= 1;
        assert!(parse_ipmi_response(&bad).unwrap_err().contains("checksum"));
    }

    #[test]
    fn session_packets_round_trip_and_refuse_tampering() {
        let keys = SessionKeys::derive(CipherSuite::Suite3, &[3u8; 20]);
        let payload = ipmi_request(5, 0x00, 0x02, &[0x01]);
        let packet = v20_packet(PayloadType::Ipmi, 0x1122_3344, 7, &payload, Some((&keys, [0x5a; 16])));
        // RMCP header, auth type, payload type with both flags, IDs.
        assert_eq!(&packet[..6], &[0x06, 0x00, 0xff, 0x07, 0x06, 0xc0]);
        assert_eq!((packet.len() - 4 - 12) % 4, 0, "signed part is 4-byte aligned");
        match parse_packet(&packet, Some(&keys)).unwrap() {
            Inbound::V20 { payload_type, session_id, sequence, payload: got } => {
                assert_eq!((payload_type, session_id, sequence), (0, 0x1122_3344, 7));
                assert_eq!(got, payload);
            }
            other => panic!("{other:?}"),
        }
        // A flipped bit anywhere is refused, never a panic.
        for i in 4..packet.len() {
            let mut bad = packet.clone();
            bad[i] ^= 0x10;
            assert!(parse_packet(&bad, Some(&keys)).is_err(), "byte {i}");
        }
        // Another session's keys do not verify it.
        let other = SessionKeys::derive(CipherSuite::Suite3, &[4u8; 20]);
        assert!(parse_packet(&packet, Some(&other)).unwrap_err().contains("AuthCode"));
        // An unprotected packet is refused inside a session.
        let plain = v20_packet(PayloadType::Ipmi, 0x1122_3344, 8, &payload, None);
        assert!(parse_packet(&plain, Some(&keys)).is_err());
    }

    #[test]
    fn truncated_packets_are_errors_not_panics() {
        let keys = SessionKeys::derive(CipherSuite::Suite3, &[3u8; 20]);
        let sealed = v20_packet(PayloadType::Ipmi, 9, 1, &[1, 2, 3, 4, 5, 6, 7, 8], Some((&keys, [1; 16])));
        let plain = v20_packet(PayloadType::OpenSessionResponse, 0, 0, &[0u8; 36], None);
        let v15 = v15_packet(&ipmi_request(0, 0x06, 0x38, &[0x8e, 0x04]));
        for packet in [&sealed, &plain, &v15] {
            for len in 0..packet.len() {
                assert!(parse_packet(&packet[..len], Some(&keys)).is_err(), "len {len} of {packet:02x?}");
            }
        }
        for len in 0..plain.len() {
            assert!(parse_packet(&plain[..len], None).is_err(), "len {len}");
        }
        // Garbage of every length: errors or ignorable packets, never a panic.
        for len in 0..80 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 6) as u8).collect();
            let _ = parse_packet(&junk, Some(&keys));
            let _ = parse_packet(&junk, None);
        }
    }

    #[test]
    fn session_setup_payloads() {
        let req = open_session_request(0x42, 0xa0a2_a3a4, CipherSuite::Suite3);
        // What ipmitool sends for suite 3 (from ipmi_sim's log).
        assert_eq!(
            req,
            [
                0x42, 0x00, 0x00, 0x00, 0xa4, 0xa3, 0xa2, 0xa0, 0x00, 0x00, 0x00, 0x08, 0x01, 0x00, 0x00, 0x00, 0x01,
                0x00, 0x00, 0x08, 0x01, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x08, 0x01, 0x00, 0x00, 0x00
            ]
        );
        let mut resp = vec![0x42, 0x00, 0x04, 0x00];
        resp.extend_from_slice(&0xa0a2_a3a4u32.to_le_bytes());
        resp.extend_from_slice(&0x0102_0304u32.to_le_bytes());
        resp.extend_from_slice(&req[8..]);
        let parsed = parse_open_session_response(&resp).unwrap();
        assert_eq!(parsed.status, 0);
        assert_eq!(parsed.console_session_id, 0xa0a2_a3a4);
        assert_eq!(parsed.bmc_session_id, 0x0102_0304);
        assert_eq!(parsed.algorithms, (1, 1, 1));
        for len in 2..resp.len() {
            assert!(parse_open_session_response(&resp[..len]).is_err(), "len {len}");
        }
        assert!(parse_open_session_response(&[]).is_err());
        // An error answer may be short.
        assert_eq!(parse_open_session_response(&[0x42, 0x11]).unwrap().status, 0x11);

        let mut rakp2 = vec![0x01, 0x00, 0, 0, 4, 3, 2, 1];
        rakp2.extend_from_slice(&[0xaa; 16]);
        rakp2.extend_from_slice(&[0xbb; 16]);
        rakp2.extend_from_slice(&[0xcc; 20]);
        let parsed = parse_rakp2(&rakp2, CipherSuite::Suite3).unwrap();
        assert_eq!(parsed.console_session_id, 0x0102_0304);
        assert_eq!(parsed.bmc_random, [0xaa; 16]);
        assert_eq!(parsed.bmc_guid, [0xbb; 16]);
        assert_eq!(parsed.auth_code, [0xcc; 20]);
        for len in 2..rakp2.len() {
            assert!(parse_rakp2(&rakp2[..len], CipherSuite::Suite3).is_err(), "len {len}");
        }
        // SHA-256 wants 32 bytes of auth code.
        assert!(parse_rakp2(&rakp2, CipherSuite::Suite17).is_err());

        let mut rakp4 = vec![0x01, 0x00, 0, 0, 4, 3, 2, 1];
        rakp4.extend_from_slice(&[0xdd; 12]);
        assert_eq!(parse_rakp4(&rakp4, CipherSuite::Suite3).unwrap().integrity_check, [0xdd; 12]);
        for len in 0..rakp4.len() {
            assert!(parse_rakp4(&rakp4[..len], CipherSuite::Suite3).is_err(), "len {len}");
        }
    }
}
