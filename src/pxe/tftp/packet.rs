//! TFTP packets (RFC 1350, with the option extension of RFC 2347).
//!
//! [`parse`] faces the network (and a fuzzer): it never panics and borrows
//! from the datagram instead of copying.

use std::borrow::Cow;

const OP_READ: u16 = 1;
const OP_WRITE: u16 = 2;
const OP_DATA: u16 = 3;
const OP_ACK: u16 = 4;
const OP_ERROR: u16 = 5;
const OP_OPTION_ACK: u16 = 6;

/// Error codes of RFC 1350 and RFC 2347.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    NotDefined = 0,
    FileNotFound = 1,
    AccessViolation = 2,
    DiskFull = 3,
    IllegalOperation = 4,
    UnknownTransferId = 5,
    FileExists = 6,
    NoSuchUser = 7,
    OptionRefused = 8,
}

/// A read or write request: the filename, the mode and the options (RFC 2347) in the order sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub filename: &'a str,
    pub mode: &'a str,
    pub options: Vec<(&'a str, &'a str)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    ReadRequest(Request<'a>),
    WriteRequest(Request<'a>),
    Data {
        block: u16,
        payload: &'a [u8],
    },
    Ack {
        block: u16,
    },
    /// The message is decoded leniently: it is only ever logged.
    Error {
        code: u16,
        message: Cow<'a, str>,
    },
    OptionAck {
        options: Vec<(&'a str, &'a str)>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("a {0}-byte datagram is too short for this TFTP packet")]
    TooShort(usize),
    #[error("unknown TFTP opcode {0}")]
    UnknownOpcode(u16),
    #[error("the {0} is not terminated by a NUL byte")]
    Unterminated(&'static str),
    #[error("the {0} is not valid UTF-8")]
    NotUtf8(&'static str),
}

/// The opcode of a datagram, if it is long enough to have one.
pub fn opcode(datagram: &[u8]) -> Option<u16> {
    match datagram {
        [high, low, ..] => Some(u16::from_be_bytes([*high, *low])),
        _ => None,
    }
}

pub fn parse(datagram: &[u8]) -> Result<Packet<'_>, ParseError> {
    let too_short = || ParseError::TooShort(datagram.len());
    let Some(op) = opcode(datagram) else { return Err(too_short()) };
    let body = datagram.get(2..).unwrap_or_default();
    match op {
        OP_READ => parse_request(body).map(Packet::ReadRequest),
        OP_WRITE => parse_request(body).map(Packet::WriteRequest),
        OP_DATA => match body {
            [high, low, payload @ ..] => Ok(Packet::Data { block: u16::from_be_bytes([*high, *low]), payload }),
            _ => Err(too_short()),
        },
        // Bytes after the block number are tolerated: nothing in them could change the meaning.
        OP_ACK => match body {
            [high, low, ..] => Ok(Packet::Ack { block: u16::from_be_bytes([*high, *low]) }),
            _ => Err(too_short()),
        },
        OP_ERROR => match body {
            [high, low, text @ ..] => {
                // Lenient: a missing terminator still leaves a readable message.
                let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
                let message = String::from_utf8_lossy(text.get(..end).unwrap_or_default());
                Ok(Packet::Error { code: u16::from_be_bytes([*high, *low]), message })
            }
            _ => Err(too_short()),
        },
        OP_OPTION_ACK => parse_options(body).map(|options| Packet::OptionAck { options }),
        other => Err(ParseError::UnknownOpcode(other)),
    }
}

fn parse_request(mut body: &[u8]) -> Result<Request<'_>, ParseError> {
    let filename = next_string(&mut body, "filename")?;
    let mode = next_string(&mut body, "mode")?;
    let options = parse_options(body)?;
    Ok(Request { filename, mode, options })
}

/// Name/value pairs up to the end of the datagram. Trailing NUL padding is ignored.
fn parse_options(mut body: &[u8]) -> Result<Vec<(&str, &str)>, ParseError> {
    let mut options = Vec::new();
    while !body.iter().all(|&b| b == 0) {
        let name = next_string(&mut body, "option name")?;
        let value = next_string(&mut body, "option value")?;
        options.push((name, value));
    }
    Ok(options)
}

fn next_string<'a>(body: &mut &'a [u8], field: &'static str) -> Result<&'a str, ParseError> {
    let end = body.iter().position(|&b| b == 0).ok_or(ParseError::Unterminated(field))?;
    let bytes = body.get(..end).unwrap_or_default();
    *body = body.get(end + 1..).unwrap_or_default();
    std::str::from_utf8(bytes).map_err(|_| ParseError::NotUtf8(field))
}

impl Packet<'_> {
    /// Appends the wire form to `out`. NUL bytes inside strings would end them early, so
    /// error messages are cleaned of them; the other strings come from this crate.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Packet::ReadRequest(request) => encode_request(OP_READ, request, out),
            Packet::WriteRequest(request) => encode_request(OP_WRITE, request, out),
            Packet::Data { block, payload } => {
                out.extend_from_slice(&OP_DATA.to_be_bytes());
                out.extend_from_slice(&block.to_be_bytes());
                out.extend_from_slice(payload);
            }
            Packet::Ack { block } => {
                out.extend_from_slice(&OP_ACK.to_be_bytes());
                out.extend_from_slice(&block.to_be_bytes());
            }
            Packet::Error { code, message } => {
                out.extend_from_slice(&OP_ERROR.to_be_bytes());
                out.extend_from_slice(&code.to_be_bytes());
                out.extend(message.bytes().filter(|&b| b != 0));
                out.push(0);
            }
            Packet::OptionAck { options } => {
                out.extend_from_slice(&OP_OPTION_ACK.to_be_bytes());
                encode_options(options, out);
            }
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// An ERROR packet.
pub fn error_packet(code: ErrorCode, message: &str) -> Vec<u8> {
    Packet::Error { code: code as u16, message: Cow::Borrowed(message) }.to_bytes()
}

fn encode_request(op: u16, request: &Request<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(&op.to_be_bytes());
    for field in [request.filename, request.mode] {
        out.extend_from_slice(field.as_bytes());
        out.push(0);
    }
    encode_options(&request.options, out);
}

fn encode_options(options: &[(&str, &str)], out: &mut Vec<u8>) {
    for (name, value) in options {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(packet: Packet<'_>) {
        let bytes = packet.to_bytes();
        assert_eq!(parse(&bytes), Ok(packet));
    }

    #[test]
    fn every_kind_round_trips() {
        round_trip(Packet::ReadRequest(Request { filename: "undionly.kpxe", mode: "octet", options: vec![] }));
        round_trip(Packet::ReadRequest(Request {
            filename: "/efi/ipxe.efi",
            mode: "netascii",
            options: vec![("blksize", "1468"), ("tsize", "0"), ("windowsize", "8")],
        }));
        round_trip(Packet::WriteRequest(Request { filename: "x", mode: "octet", options: vec![("tsize", "9")] }));
        round_trip(Packet::Data { block: 65535, payload: b"hello" });
        round_trip(Packet::Data { block: 0, payload: b"" });
        round_trip(Packet::Ack { block: 7 });
        round_trip(Packet::Error { code: 1, message: Cow::Borrowed("file not found: x") });
        round_trip(Packet::OptionAck { options: vec![("blksize", "1468")] });
        round_trip(Packet::OptionAck { options: vec![] });
    }

    #[test]
    fn wire_form_of_a_read_request() {
        let bytes = b"\x00\x01/undionly.kpxe\x00octet\x00blksize\x001468\x00";
        let expected = Request { filename: "/undionly.kpxe", mode: "octet", options: vec![("blksize", "1468")] };
        assert_eq!(parse(bytes), Ok(Packet::ReadRequest(expected)));
    }

    #[test]
    fn malformed_and_truncated_packets_are_errors() {
        assert_eq!(parse(b""), Err(ParseError::TooShort(0)));
        assert_eq!(parse(b"\x00"), Err(ParseError::TooShort(1)));
        assert_eq!(parse(b"\x00\x09"), Err(ParseError::UnknownOpcode(9)));
        assert_eq!(parse(b"\x00\x00abc"), Err(ParseError::UnknownOpcode(0)));
        assert_eq!(parse(b"\x00\x01"), Err(ParseError::Unterminated("filename")));
        assert_eq!(parse(b"\x00\x01file"), Err(ParseError::Unterminated("filename")));
        assert_eq!(parse(b"\x00\x01file\x00oct"), Err(ParseError::Unterminated("mode")));
        assert_eq!(parse(b"\x00\x01file\x00octet\x00blksize"), Err(ParseError::Unterminated("option name")));
        assert_eq!(parse(b"\x00\x01file\x00octet\x00blksize\x00"), Err(ParseError::Unterminated("option value")));
        assert_eq!(parse(b"\x00\x01\xff\xfe\x00octet\x00"), Err(ParseError::NotUtf8("filename")));
        assert_eq!(parse(b"\x00\x03\x00"), Err(ParseError::TooShort(3)));
        assert_eq!(parse(b"\x00\x04\x00"), Err(ParseError::TooShort(3)));
        assert_eq!(parse(b"\x00\x05\x00"), Err(ParseError::TooShort(3)));
        assert_eq!(parse(b"\x00\x06tsize\x00"), Err(ParseError::Unterminated("option value")));
    }

    #[test]
    fn tolerated_oddities() {
        // NUL padding after the options, bytes after an ACK, an unterminated error message.
        let padded = parse(b"\x00\x01f\x00octet\x00tsize\x000\x00\x00\x00");
        assert_eq!(
            padded,
            Ok(Packet::ReadRequest(Request { filename: "f", mode: "octet", options: vec![("tsize", "0")] }))
        );
        assert_eq!(parse(b"\x00\x04\x00\x05junk"), Ok(Packet::Ack { block: 5 }));
        assert_eq!(parse(b"\x00\x05\x00\x08no nul"), Ok(Packet::Error { code: 8, message: Cow::Borrowed("no nul") }));
        let lossy = parse(b"\x00\x05\x00\x00\xffx\x00");
        assert_eq!(lossy, Ok(Packet::Error { code: 0, message: Cow::Owned("\u{fffd}x".to_string()) }));
    }

    #[test]
    fn encoded_error_messages_have_no_inner_nul() {
        assert_eq!(error_packet(ErrorCode::NotDefined, "a\0b"), b"\x00\x05\x00\x00ab\x00");
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn parse_never_panics_on_request_like_input(
            op in 0u8..8,
            body in proptest::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 0..80),
        ) {
            let mut bytes = vec![0, op];
            bytes.extend(body);
            let _ = parse(&bytes);
        }

        #[test]
        fn requests_round_trip(
            filename in "[^\x00]{0,40}",
            mode in "[a-zA-Z]{0,10}",
            options in proptest::collection::vec(("[^\x00]{0,12}", "[0-9]{0,6}"), 0..5),
        ) {
            let options: Vec<(&str, &str)> = options.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            // An empty last name with an empty value is indistinguishable from padding.
            prop_assume!(options.last().is_none_or(|(n, v)| !n.is_empty() || !v.is_empty()));
            let packet = Packet::ReadRequest(Request { filename: &filename, mode: &mode, options });
            let bytes = packet.to_bytes();
            prop_assert_eq!(parse(&bytes), Ok(packet.clone()));
        }

        #[test]
        fn data_round_trips(block in any::<u16>(), payload in proptest::collection::vec(any::<u8>(), 0..600)) {
            let packet = Packet::Data { block, payload: &payload };
            let bytes = packet.to_bytes();
            prop_assert_eq!(parse(&bytes), Ok(packet.clone()));
        }
    }
}
