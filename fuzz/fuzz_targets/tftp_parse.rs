//! Any datagram through the TFTP parser: it never panics, whatever it accepts
//! encodes and parses back to the same packet, and the options of a request
//! go through the negotiation, whose answer must stay within the limits and
//! make an OACK that parses back too.

#![no_main]

use girder::pxe::tftp::options::{DEFAULT_BLKSIZE, Limits, MAX_BLKSIZE, MIN_BLKSIZE, negotiate};
use girder::pxe::tftp::packet::{Packet, opcode, parse};
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

/// The server's defaults (TftpConfig::new), values the negotiation clamps,
/// and the largest ones.
const LIMITS: [Limits; 3] = [
    Limits { max_blksize: 1468, max_windowsize: 64 },
    Limits { max_blksize: 0, max_windowsize: 0 },
    Limits { max_blksize: u16::MAX, max_windowsize: u16::MAX },
];

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = parse(data) else { return };
    let op = opcode(data);
    assert!(op.is_some_and(|op| (1..=6).contains(&op)), "parsed a packet with opcode {op:?}");
    round_trip(&packet);
    if let Packet::ReadRequest(request) | Packet::WriteRequest(request) = &packet {
        for limits in LIMITS {
            for tsize in [None, Some(data.len() as u64), Some(u64::MAX)] {
                check_negotiation(&request.options, limits, tsize);
            }
        }
    }
});

fn round_trip(packet: &Packet<'_>) {
    let bytes = packet.to_bytes();
    match parse(&bytes) {
        Ok(again) => assert_eq!(&again, packet, "the packet changed through encode and parse"),
        Err(error) => panic!("an encoded packet does not parse again: {error}\npacket: {packet:?}"),
    }
    let mut appended = vec![0xa5];
    packet.encode(&mut appended);
    assert_eq!(appended[1..], bytes[..], "encode must append what to_bytes returns");
}

fn check_negotiation(requested: &[(&str, &str)], limits: Limits, tsize: Option<u64>) {
    let negotiation = negotiate(requested, limits, tsize);
    let settings = negotiation.settings;
    let accepted = &negotiation.accepted;
    assert!(accepted.len() <= requested.len(), "more options granted than asked for");
    for (i, (name, value)) in accepted.iter().enumerate() {
        assert!(accepted[..i].iter().all(|(seen, _)| seen != name), "option {name} granted twice");
        assert!(requested.iter().any(|(asked, _)| asked.eq_ignore_ascii_case(name)), "option {name} granted unasked");
        assert!(!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()), "option {name} granted as {value:?}");
    }
    let granted = |name: &str| accepted.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str());
    let max_blksize = limits.max_blksize.clamp(MIN_BLKSIZE, MAX_BLKSIZE);
    match granted("blksize") {
        Some(value) => {
            assert_eq!(value, settings.blksize.to_string());
            assert!((MIN_BLKSIZE..=max_blksize).contains(&settings.blksize), "blksize {}", settings.blksize);
        }
        None => assert_eq!(settings.blksize, DEFAULT_BLKSIZE),
    }
    match granted("windowsize") {
        Some(value) => {
            assert_eq!(value, settings.windowsize.to_string());
            assert!((1..=limits.max_windowsize.max(1)).contains(&settings.windowsize));
        }
        None => assert_eq!(settings.windowsize, 1),
    }
    match granted("timeout") {
        Some(value) => {
            assert_eq!(Some(value.to_string()), settings.timeout.map(|t| t.as_secs().to_string()));
            assert!(settings.timeout.is_some_and(|t| (Duration::from_secs(1)..=Duration::from_secs(255)).contains(&t)));
        }
        None => assert_eq!(settings.timeout, None),
    }
    match granted("tsize") {
        Some(value) => assert_eq!(Some(value.to_string()), tsize.map(|t| t.to_string())),
        None => {
            let valid = |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && v.parse::<u64>().is_ok();
            let asked = requested.iter().any(|(n, v)| n.eq_ignore_ascii_case("tsize") && valid(v));
            assert!(tsize.is_none() || !asked, "a valid tsize request left unanswered");
        }
    }
    // The answer goes out as an OACK, which must parse back as sent.
    let options: Vec<(&str, &str)> = accepted.iter().map(|(name, value)| (*name, value.as_str())).collect();
    round_trip(&Packet::OptionAck { options });
}
