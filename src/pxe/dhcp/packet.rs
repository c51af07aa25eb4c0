//! The DHCPv4 wire format (RFC 2131 header, RFC 2132 options).
//!
//! `parse` must never panic: it reads bytes straight from the network and is
//! fuzzed. Options are kept in the order they arrived, in one flat buffer, so
//! a packet costs two allocations however many options it carries.

use crate::pxe::model::Mac;
use std::net::Ipv4Addr;

pub const BOOTREQUEST: u8 = 1;
pub const BOOTREPLY: u8 = 2;
/// RFC 2131 §3: the first four octets of the options field.
pub const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// Fixed header (236 octets) plus the magic cookie.
const HEADER_LEN: usize = 240;
/// BOOTP relay agents and old clients drop shorter messages (RFC 1542).
const MIN_MESSAGE_LEN: usize = 300;
/// The broadcast bit of `flags`.
pub const FLAG_BROADCAST: u16 = 0x8000;

/// Option codes girder reads or writes.
pub mod code {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DNS_SERVERS: u8 = 6;
    pub const HOST_NAME: u8 = 12;
    pub const DOMAIN_NAME: u8 = 15;
    pub const MTU: u8 = 26;
    pub const BROADCAST: u8 = 28;
    pub const VENDOR_SPECIFIC: u8 = 43;
    pub const REQUESTED_IP: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const OVERLOAD: u8 = 52;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const PARAMETER_LIST: u8 = 55;
    pub const MAX_MESSAGE_SIZE: u8 = 57;
    pub const RENEWAL_TIME: u8 = 58;
    pub const REBINDING_TIME: u8 = 59;
    pub const VENDOR_CLASS: u8 = 60;
    pub const CLIENT_ID: u8 = 61;
    pub const TFTP_SERVER: u8 = 66;
    pub const BOOTFILE: u8 = 67;
    pub const USER_CLASS: u8 = 77;
    pub const RELAY_AGENT_INFO: u8 = 82;
    pub const CLIENT_ARCH: u8 = 93;
    pub const CLIENT_NDI: u8 = 94;
    pub const CLIENT_MACHINE_ID: u8 = 97;
    pub const IPXE_ENCAP: u8 = 175;
    pub const END: u8 = 255;
}

/// Option 53.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    Discover = 1,
    Offer = 2,
    Request = 3,
    Decline = 4,
    Ack = 5,
    Nak = 6,
    Release = 7,
    Inform = 8,
}

impl MessageType {
    pub fn from_u8(value: u8) -> Option<MessageType> {
        Some(match value {
            1 => MessageType::Discover,
            2 => MessageType::Offer,
            3 => MessageType::Request,
            4 => MessageType::Decline,
            5 => MessageType::Ack,
            6 => MessageType::Nak,
            7 => MessageType::Release,
            8 => MessageType::Inform,
            _ => return None,
        })
    }

    /// The metric label (`PxeMetrics::dhcp_received`/`dhcp_sent`).
    pub fn label(self) -> &'static str {
        match self {
            MessageType::Discover => "DISCOVER",
            MessageType::Offer => "OFFER",
            MessageType::Request => "REQUEST",
            MessageType::Decline => "DECLINE",
            MessageType::Ack => "ACK",
            MessageType::Nak => "NAK",
            MessageType::Release => "RELEASE",
            MessageType::Inform => "INFORM",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("message of {0} bytes is shorter than the 240-byte DHCP header")]
    TooShort(usize),
    #[error("op {0} is neither BOOTREQUEST (1) nor BOOTREPLY (2)")]
    BadOp(u8),
    #[error("op {0} is not a BOOTREQUEST")]
    NotRequest(u8),
    #[error("hardware address length {0} is longer than 16")]
    BadHlen(u8),
    #[error("no DHCP magic cookie (BOOTP-only client?)")]
    NoMagicCookie,
    #[error("option {code} is truncated: it claims {claimed} bytes, {left} left")]
    TruncatedOption { code: u8, claimed: usize, left: usize },
    #[error("option 52 (overload) has invalid value {0:?}")]
    BadOverload(Vec<u8>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct OptionEntry {
    code: u8,
    start: u32,
    len: u32,
}

/// Options in arrival order. A code may appear more than once (RFC 3396
/// split options are kept as their parts).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    entries: Vec<OptionEntry>,
    data: Vec<u8>,
}

impl Options {
    pub fn with_capacity(options: usize, bytes: usize) -> Options {
        Options { entries: Vec::with_capacity(options), data: Vec::with_capacity(bytes) }
    }

    /// The first occurrence of `code`.
    pub fn get(&self, code: u8) -> Option<&[u8]> {
        self.entries.iter().find(|e| e.code == code).map(|e| self.slice(e))
    }

    pub fn contains(&self, code: u8) -> bool {
        self.entries.iter().any(|e| e.code == code)
    }

    pub fn iter(&self) -> impl Iterator<Item = (u8, &[u8])> {
        self.entries.iter().map(|e| (e.code, self.slice(e)))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn push(&mut self, code: u8, value: &[u8]) {
        let start = self.data.len() as u32;
        self.data.extend_from_slice(value);
        self.entries.push(OptionEntry { code, start, len: value.len() as u32 });
    }

    pub fn push_u8(&mut self, code: u8, value: u8) {
        self.push(code, &[value]);
    }

    pub fn push_u16(&mut self, code: u8, value: u16) {
        self.push(code, &value.to_be_bytes());
    }

    pub fn push_u32(&mut self, code: u8, value: u32) {
        self.push(code, &value.to_be_bytes());
    }

    pub fn push_addr(&mut self, code: u8, addr: Ipv4Addr) {
        self.push(code, &addr.octets());
    }

    pub fn push_addrs(&mut self, code: u8, addrs: &[Ipv4Addr]) {
        let start = self.data.len() as u32;
        for addr in addrs {
            self.data.extend_from_slice(&addr.octets());
        }
        self.entries.push(OptionEntry { code, start, len: (addrs.len() * 4) as u32 });
    }

    fn slice(&self, entry: &OptionEntry) -> &[u8] {
        let start = entry.start as usize;
        self.data.get(start..start + entry.len as usize).unwrap_or(&[])
    }
}

/// One DHCP message, request or reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub op: u8,
    pub htype: u8,
    pub hlen: u8,
    pub hops: u8,
    pub xid: u32,
    pub secs: u16,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 16],
    pub sname: [u8; 64],
    pub file: [u8; 128],
    pub options: Options,
}

impl Default for Message {
    fn default() -> Self {
        Message {
            op: BOOTREQUEST,
            htype: 1,
            hlen: 6,
            hops: 0,
            xid: 0,
            secs: 0,
            flags: 0,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr: [0; 16],
            sname: [0; 64],
            file: [0; 128],
            options: Options::default(),
        }
    }
}

/// Parses a DHCP message (request or reply). Never panics.
pub fn parse(bytes: &[u8]) -> Result<Message, ParseError> {
    if bytes.len() < HEADER_LEN {
        return Err(ParseError::TooShort(bytes.len()));
    }
    let (header, rest) = bytes.split_at(HEADER_LEN);
    let op = header[0];
    if op != BOOTREQUEST && op != BOOTREPLY {
        return Err(ParseError::BadOp(op));
    }
    let hlen = header[2];
    if hlen > 16 {
        return Err(ParseError::BadHlen(hlen));
    }
    if header[236..240] != MAGIC_COOKIE {
        return Err(ParseError::NoMagicCookie);
    }
    let u16_at = |at: usize| u16::from_be_bytes([header[at], header[at + 1]]);
    let u32_at = |at: usize| u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
    let addr_at = |at: usize| Ipv4Addr::from(u32_at(at));
    let mut message = Message {
        op,
        htype: header[1],
        hlen,
        hops: header[3],
        xid: u32_at(4),
        secs: u16_at(8),
        flags: u16_at(10),
        ciaddr: addr_at(12),
        yiaddr: addr_at(16),
        siaddr: addr_at(20),
        giaddr: addr_at(24),
        chaddr: [0; 16],
        sname: [0; 64],
        file: [0; 128],
        options: Options::with_capacity(16, rest.len()),
    };
    message.chaddr.copy_from_slice(&header[28..44]);
    message.sname.copy_from_slice(&header[44..108]);
    message.file.copy_from_slice(&header[108..236]);

    let mut overload = 0u8;
    read_options(rest, &mut message.options, &mut overload)?;
    // RFC 2131 §4.1: with option 52, `file` then `sname` carry options too.
    if overload != 0 {
        let (file, sname) = (message.file, message.sname);
        let mut nested = 0u8;
        if overload & 1 != 0 {
            read_options(&file, &mut message.options, &mut nested)?;
            message.file = [0; 128];
        }
        if overload & 2 != 0 {
            read_options(&sname, &mut message.options, &mut nested)?;
            message.sname = [0; 64];
        }
    }
    Ok(message)
}

/// Parses a message the server must answer: a BOOTREQUEST.
pub fn parse_request(bytes: &[u8]) -> Result<Message, ParseError> {
    let message = parse(bytes)?;
    if message.op != BOOTREQUEST {
        return Err(ParseError::NotRequest(message.op));
    }
    Ok(message)
}

/// Reads TLV options until END or the end of `bytes` (a missing END is
/// tolerated). Option 52 is recorded in `overload`, not kept.
fn read_options(bytes: &[u8], options: &mut Options, overload: &mut u8) -> Result<(), ParseError> {
    let mut at = 0;
    while let Some(&code) = bytes.get(at) {
        match code {
            code::PAD => at += 1,
            code::END => return Ok(()),
            _ => {
                let Some(&len) = bytes.get(at + 1) else {
                    return Err(ParseError::TruncatedOption { code, claimed: 1, left: 0 });
                };
                let len = usize::from(len);
                let value = bytes.get(at + 2..at + 2 + len).ok_or(ParseError::TruncatedOption {
                    code,
                    claimed: len,
                    left: bytes.len().saturating_sub(at + 2),
                })?;
                if code == code::OVERLOAD {
                    match value {
                        [v @ 1..=3] => *overload = *v,
                        _ => return Err(ParseError::BadOverload(value.to_vec())),
                    }
                } else {
                    options.push(code, value);
                }
                at += 2 + len;
            }
        }
    }
    Ok(())
}

/// Writes `message` into `out` (cleared first), so the server can reuse
/// one buffer. Options longer than 255 bytes are split (RFC 3396).
pub fn encode(message: &Message, out: &mut Vec<u8>) {
    out.clear();
    out.push(message.op);
    out.push(message.htype);
    out.push(message.hlen);
    out.push(message.hops);
    out.extend_from_slice(&message.xid.to_be_bytes());
    out.extend_from_slice(&message.secs.to_be_bytes());
    out.extend_from_slice(&message.flags.to_be_bytes());
    for addr in [message.ciaddr, message.yiaddr, message.siaddr, message.giaddr] {
        out.extend_from_slice(&addr.octets());
    }
    out.extend_from_slice(&message.chaddr);
    out.extend_from_slice(&message.sname);
    out.extend_from_slice(&message.file);
    out.extend_from_slice(&MAGIC_COOKIE);
    for (code, value) in message.options.iter() {
        if value.is_empty() {
            out.push(code);
            out.push(0);
        }
        for chunk in value.chunks(255) {
            out.push(code);
            out.push(chunk.len() as u8);
            out.extend_from_slice(chunk);
        }
    }
    out.push(code::END);
    if out.len() < MIN_MESSAGE_LEN {
        out.resize(MIN_MESSAGE_LEN, code::PAD);
    }
}

/// `encode` into a new buffer.
pub fn to_bytes(message: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(MIN_MESSAGE_LEN);
    encode(message, &mut out);
    out
}

fn addr_option(value: Option<&[u8]>) -> Option<Ipv4Addr> {
    let bytes: [u8; 4] = value?.try_into().ok()?;
    Some(Ipv4Addr::from(bytes))
}

impl Message {
    /// The client's Ethernet address, when the hardware is Ethernet.
    pub fn mac(&self) -> Option<Mac> {
        if self.htype != 1 || self.hlen != 6 {
            return None;
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&self.chaddr[..6]);
        Some(Mac(mac))
    }

    /// Option 53.
    pub fn message_type(&self) -> Option<MessageType> {
        match self.options.get(code::MESSAGE_TYPE)? {
            [value] => MessageType::from_u8(*value),
            _ => None,
        }
    }

    /// Option 53 as a metric label (`other` when absent or unknown).
    pub fn type_label(&self) -> &'static str {
        self.message_type().map_or("other", MessageType::label)
    }

    /// Option 50.
    pub fn requested_ip(&self) -> Option<Ipv4Addr> {
        addr_option(self.options.get(code::REQUESTED_IP))
    }

    /// Option 54.
    pub fn server_id(&self) -> Option<Ipv4Addr> {
        addr_option(self.options.get(code::SERVER_ID))
    }

    /// Option 55 (empty when absent).
    pub fn parameter_list(&self) -> &[u8] {
        self.options.get(code::PARAMETER_LIST).unwrap_or(&[])
    }

    /// Whether the client listed `option` in option 55.
    pub fn requested(&self, option: u8) -> bool {
        self.parameter_list().contains(&option)
    }

    /// Option 57.
    pub fn max_message_size(&self) -> Option<u16> {
        let bytes: [u8; 2] = self.options.get(code::MAX_MESSAGE_SIZE)?.try_into().ok()?;
        Some(u16::from_be_bytes(bytes))
    }

    /// Option 60.
    pub fn vendor_class(&self) -> Option<&[u8]> {
        self.options.get(code::VENDOR_CLASS)
    }

    /// Option 61.
    pub fn client_id(&self) -> Option<&[u8]> {
        self.options.get(code::CLIENT_ID)
    }

    /// Option 77 says "iPXE", either as RFC 3004 user class data
    /// (length-prefixed instances) or as the plain string iPXE sends.
    pub fn user_class_is_ipxe(&self) -> bool {
        let Some(value) = self.options.get(code::USER_CLASS) else { return false };
        if value == b"iPXE" {
            return true;
        }
        let mut rest = value;
        while let Some((&len, tail)) = rest.split_first() {
            let Some(instance) = tail.get(..usize::from(len)) else { return false };
            if instance == b"iPXE" {
                return true;
            }
            rest = &tail[instance.len()..];
        }
        false
    }

    /// Option 93: the first architecture type listed (RFC 4578).
    pub fn client_arch(&self) -> Option<u16> {
        match self.options.get(code::CLIENT_ARCH)? {
            [high, low, ..] => Some(u16::from_be_bytes([*high, *low])),
            _ => None,
        }
    }

    /// Option 94.
    pub fn client_ndi(&self) -> Option<&[u8]> {
        self.options.get(code::CLIENT_NDI)
    }

    /// Option 97 (echoed in replies).
    pub fn client_machine_id(&self) -> Option<&[u8]> {
        self.options.get(code::CLIENT_MACHINE_ID)
    }

    /// Option 82 (echoed verbatim in replies).
    pub fn relay_agent_info(&self) -> Option<&[u8]> {
        self.options.get(code::RELAY_AGENT_INFO)
    }

    /// Option 175: only iPXE sends it.
    pub fn has_ipxe_encap(&self) -> bool {
        self.options.contains(code::IPXE_ENCAP)
    }

    /// Option 43.
    pub fn vendor_specific(&self) -> Option<&[u8]> {
        self.options.get(code::VENDOR_SPECIFIC)
    }

    /// The boot file name in the `file` field, up to the first NUL.
    pub fn file_name(&self) -> &[u8] {
        let end = self.file.iter().position(|b| *b == 0).unwrap_or(self.file.len());
        &self.file[..end]
    }

    /// Sets the `file` field; false (field left empty) when `name` does not
    /// fit with its terminating NUL.
    pub fn set_file_name(&mut self, name: &str) -> bool {
        self.file = [0; 128];
        let bytes = name.as_bytes();
        if bytes.len() >= self.file.len() {
            return false;
        }
        self.file[..bytes.len()].copy_from_slice(bytes);
        true
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A DISCOVER from `mac` with the given extra options.
    pub(crate) fn request(kind: MessageType, mac: [u8; 6], extra: &[(u8, &[u8])]) -> Message {
        let mut message = Message { xid: 0x1234_5678, ..Message::default() };
        message.chaddr[..6].copy_from_slice(&mac);
        message.options.push_u8(code::MESSAGE_TYPE, kind as u8);
        for (code, value) in extra {
            message.options.push(*code, value);
        }
        message
    }

    #[test]
    fn round_trip_keeps_every_field_and_option_order() {
        let mut message = request(
            MessageType::Request,
            [0xaa, 0xbb, 0xcc, 0, 1, 2],
            &[(code::CLIENT_ARCH, &[0, 7]), (code::VENDOR_CLASS, b"PXEClient:Arch:00007:UNDI:003016")],
        );
        message.hops = 2;
        message.secs = 9;
        message.flags = FLAG_BROADCAST;
        message.ciaddr = Ipv4Addr::new(10, 0, 0, 5);
        message.giaddr = Ipv4Addr::new(10, 0, 0, 1);
        message.options.push_addr(code::REQUESTED_IP, Ipv4Addr::new(10, 0, 0, 9));
        message.options.push(code::RELAY_AGENT_INFO, &[1, 3, b'e', b't', b'h']);
        assert!(message.set_file_name("undionly.kpxe"));
        let bytes = to_bytes(&message);
        assert_eq!(bytes.len(), MIN_MESSAGE_LEN);
        let parsed = parse(&bytes).unwrap();
        assert_eq!(parsed, message);
        assert_eq!(parsed.message_type(), Some(MessageType::Request));
        assert_eq!(parsed.client_arch(), Some(7));
        assert_eq!(parsed.requested_ip(), Some(Ipv4Addr::new(10, 0, 0, 9)));
        assert_eq!(parsed.mac(), Mac::parse("aa:bb:cc:00:01:02"));
        assert_eq!(parsed.file_name(), b"undionly.kpxe");
        let codes: Vec<u8> = parsed.options.iter().map(|(c, _)| c).collect();
        assert_eq!(codes, [53, 93, 60, 50, 82]);
    }

    #[test]
    fn long_options_are_split_and_kept_as_parts() {
        let mut message = Message::default();
        let long = vec![7u8; 300];
        message.options.push(code::VENDOR_SPECIFIC, &long);
        let parsed = parse(&to_bytes(&message)).unwrap();
        let parts: Vec<usize> = parsed.options.iter().map(|(_, v)| v.len()).collect();
        assert_eq!(parts, [255, 45]);
    }

    #[test]
    fn pad_and_missing_end_are_tolerated() {
        let mut bytes = to_bytes(&request(MessageType::Discover, [1; 6], &[]));
        bytes.truncate(HEADER_LEN);
        bytes.extend_from_slice(&[0, 0, 53, 1, 1, 0, 61, 2, 1, 2]);
        let parsed = parse(&bytes).unwrap();
        assert_eq!(parsed.message_type(), Some(MessageType::Discover));
        assert_eq!(parsed.client_id(), Some(&[1u8, 2][..]));
    }

    #[test]
    fn malformed_messages_are_rejected_with_a_reason() {
        let good = to_bytes(&request(MessageType::Discover, [1; 6], &[]));
        assert_eq!(parse(&good[..100]), Err(ParseError::TooShort(100)));

        let mut bad_op = good.clone();
        bad_op[0] = 3;
        assert_eq!(parse(&bad_op), Err(ParseError::BadOp(3)));

        let mut reply = good.clone();
        reply[0] = BOOTREPLY;
        assert!(parse(&reply).is_ok());
        assert_eq!(parse_request(&reply), Err(ParseError::NotRequest(2)));

        let mut bad_hlen = good.clone();
        bad_hlen[2] = 17;
        assert_eq!(parse(&bad_hlen), Err(ParseError::BadHlen(17)));

        let mut no_cookie = good.clone();
        no_cookie[236] = 0;
        assert_eq!(parse(&no_cookie), Err(ParseError::NoMagicCookie));

        let mut truncated = good[..HEADER_LEN].to_vec();
        truncated.extend_from_slice(&[53, 1, 1, 60, 10, b'P', b'X']);
        assert_eq!(parse(&truncated), Err(ParseError::TruncatedOption { code: 60, claimed: 10, left: 2 }));

        let mut no_len = good[..HEADER_LEN].to_vec();
        no_len.push(53);
        assert!(matches!(parse(&no_len), Err(ParseError::TruncatedOption { code: 53, .. })));
    }

    #[test]
    fn overloaded_file_and_sname_carry_options() {
        let mut bytes = to_bytes(&request(MessageType::Discover, [1; 6], &[]));
        bytes.truncate(HEADER_LEN);
        bytes.extend_from_slice(&[53, 1, 1, 52, 1, 3, 255]);
        bytes[108..112].copy_from_slice(&[93, 2, 0, 11]);
        bytes[112] = 255;
        bytes[44..50].copy_from_slice(&[60, 4, b'i', b'P', b'X', b'E']);
        let parsed = parse(&bytes).unwrap();
        assert_eq!(parsed.client_arch(), Some(11));
        assert_eq!(parsed.vendor_class(), Some(&b"iPXE"[..]));
        assert!(!parsed.options.contains(code::OVERLOAD));
        assert_eq!(parsed.file_name(), b"");

        bytes[HEADER_LEN + 5] = 9;
        assert!(matches!(parse(&bytes), Err(ParseError::BadOverload(_))));
    }

    #[test]
    fn user_class_ipxe_is_recognised_in_both_forms() {
        let plain = request(MessageType::Discover, [1; 6], &[(code::USER_CLASS, b"iPXE")]);
        assert!(plain.user_class_is_ipxe());
        let rfc3004 = request(MessageType::Discover, [1; 6], &[(code::USER_CLASS, b"\x03foo\x04iPXE")]);
        assert!(rfc3004.user_class_is_ipxe());
        let other = request(MessageType::Discover, [1; 6], &[(code::USER_CLASS, b"\x03foo\x09")]);
        assert!(!other.user_class_is_ipxe());
    }

    #[test]
    fn non_ethernet_has_no_mac() {
        let message = Message { htype: 32, hlen: 0, ..Message::default() };
        assert_eq!(message.mac(), None);
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn parse_never_panics_after_a_valid_header(tail in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut bytes = to_bytes(&Message::default());
            bytes.truncate(HEADER_LEN);
            bytes.extend_from_slice(&tail);
            if let Ok(message) = parse(&bytes) {
                // Whatever parses must encode and parse again to the same options.
                let again = parse(&to_bytes(&message)).unwrap();
                prop_assert_eq!(again.options.iter().filter(|(_, v)| !v.is_empty()).count(),
                    message.options.iter().filter(|(_, v)| !v.is_empty()).count());
                let _ = (message.user_class_is_ipxe(), message.client_arch(), message.mac(), message.message_type());
            }
        }
    }
}
