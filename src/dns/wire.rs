//! The DNS wire format of an RFC 2136 UPDATE with an RFC 8945 TSIG record,
//! and just enough of an answer's parsing to read its RCODE and TSIG error.

use hmac::{Hmac, KeyInit, Mac};
use std::net::{Ipv4Addr, Ipv6Addr};

const CLASS_IN: u16 = 1;
const CLASS_NONE: u16 = 254;
const CLASS_ANY: u16 = 255;
const TYPE_SOA: u16 = 6;
const TYPE_TSIG: u16 = 250;
const OPCODE_UPDATE: u16 = 5;
/// Seconds of clock difference the server tolerates (RFC 8945 recommends 300).
const FUDGE: u16 = 300;

/// A message that cannot be encoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{name:?} is not a valid DNS name: {why}")]
    InvalidName { name: String, why: &'static str },
    #[error("the update of zone {zone} is {size} bytes, over the 65535 a DNS message can hold")]
    TooLarge { zone: String, size: usize },
    #[error("the TSIG key {key} cannot be used: {why}")]
    InvalidKey { key: String, why: &'static str },
}

/// A parse failure of an answer.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(&'static str);

/// TSIG MAC algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    HmacSha256,
    HmacSha512,
}

impl Algorithm {
    /// From the name BIND and nsupdate use (`hmac-sha256`), with or without the trailing dot.
    pub fn from_name(name: &str) -> Option<Self> {
        match name.trim().trim_end_matches('.').to_ascii_lowercase().as_str() {
            "hmac-sha256" => Some(Self::HmacSha256),
            "hmac-sha512" => Some(Self::HmacSha512),
            _ => None,
        }
    }

    fn wire_name(self) -> &'static str {
        match self {
            Self::HmacSha256 => "hmac-sha256",
            Self::HmacSha512 => "hmac-sha512",
        }
    }

    fn mac(self, key: &[u8], data: &[u8]) -> Result<Vec<u8>, &'static str> {
        fn run<M: Mac + KeyInit>(key: &[u8], data: &[u8]) -> Result<Vec<u8>, &'static str> {
            let mut mac = <M as KeyInit>::new_from_slice(key).map_err(|_| "the secret has an invalid length")?;
            mac.update(data);
            Ok(mac.finalize().into_bytes().to_vec())
        }
        match self {
            Self::HmacSha256 => run::<Hmac<sha2::Sha256>>(key, data),
            Self::HmacSha512 => run::<Hmac<sha2::Sha512>>(key, data),
        }
    }
}

/// A TSIG key. `Debug` leaves the secret out.
#[derive(Clone)]
pub struct TsigKey {
    pub name: String,
    pub algorithm: Algorithm,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsigKey").field("name", &self.name).field("algorithm", &self.algorithm).finish_non_exhaustive()
    }
}

/// Record types girder publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RecordType {
    A,
    Aaaa,
    Ptr,
}

impl RecordType {
    fn code(self) -> u16 {
        match self {
            Self::A => 1,
            Self::Aaaa => 28,
            Self::Ptr => 12,
        }
    }
}

/// Record data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Ptr(String),
}

impl RData {
    fn record_type(&self) -> RecordType {
        match self {
            Self::A(_) => RecordType::A,
            Self::Aaaa(_) => RecordType::Aaaa,
            Self::Ptr(_) => RecordType::Ptr,
        }
    }
}

/// One change in the update section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Makes the RRset of `name` and `rtype` exactly `data`: deletes it, then
    /// adds each record (an empty `data` only deletes).
    Replace { name: String, rtype: RecordType, data: Vec<RData> },
    /// Deletes the RRset of `name` and `rtype`.
    Delete { name: String, rtype: RecordType },
    /// Deletes one record (class NONE).
    DeleteRecord { name: String, data: RData },
}

/// Appends `name` in uncompressed wire form, lower-cased (the canonical form
/// TSIG needs for key and algorithm names).
fn put_name(out: &mut Vec<u8>, name: &str) -> Result<(), WireError> {
    let invalid = |why| WireError::InvalidName { name: name.to_string(), why };
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    let mut total = 1;
    if !trimmed.is_empty() {
        for label in trimmed.split('.') {
            if label.is_empty() {
                return Err(invalid("empty label"));
            }
            if label.len() > 63 {
                return Err(invalid("a label is longer than 63 bytes"));
            }
            if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err(invalid("only letters, digits, '-' and '_' are allowed"));
            }
            total += label.len() + 1;
            out.push(label.len() as u8);
            out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
    }
    if total > 255 {
        return Err(invalid("longer than 255 bytes"));
    }
    out.push(0);
    Ok(())
}

fn put_rr_head(out: &mut Vec<u8>, name: &str, rtype: u16, class: u16, ttl: u32) -> Result<(), WireError> {
    put_name(out, name)?;
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&class.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    Ok(())
}

fn put_rdata(out: &mut Vec<u8>, data: &RData) -> Result<(), WireError> {
    let mut rdata = Vec::new();
    match data {
        RData::A(a) => rdata.extend_from_slice(&a.octets()),
        RData::Aaaa(a) => rdata.extend_from_slice(&a.octets()),
        RData::Ptr(target) => put_name(&mut rdata, target)?,
    }
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(&rdata);
    Ok(())
}

/// Encodes the unsigned UPDATE: header, zone section, update section.
/// Returns the message and the number of update records.
pub fn encode_unsigned(id: u16, zone: &str, changes: &[Change], ttl: u32) -> Result<Vec<u8>, WireError> {
    let mut updates = Vec::new();
    let mut count: usize = 0;
    for change in changes {
        match change {
            Change::Replace { name, rtype, data } => {
                put_rr_head(&mut updates, name, rtype.code(), CLASS_ANY, 0)?;
                updates.extend_from_slice(&0u16.to_be_bytes());
                count += 1;
                for record in data.iter().filter(|d| d.record_type() == *rtype) {
                    put_rr_head(&mut updates, name, rtype.code(), CLASS_IN, ttl)?;
                    put_rdata(&mut updates, record)?;
                    count += 1;
                }
            }
            Change::Delete { name, rtype } => {
                put_rr_head(&mut updates, name, rtype.code(), CLASS_ANY, 0)?;
                updates.extend_from_slice(&0u16.to_be_bytes());
                count += 1;
            }
            Change::DeleteRecord { name, data } => {
                put_rr_head(&mut updates, name, data.record_type().code(), CLASS_NONE, 0)?;
                put_rdata(&mut updates, data)?;
                count += 1;
            }
        }
    }
    let too_large = || WireError::TooLarge { zone: zone.to_string(), size: updates.len() };
    let count = u16::try_from(count).map_err(|_| too_large())?;
    let mut out = Vec::with_capacity(updates.len() + 64);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(OPCODE_UPDATE << 11).to_be_bytes());
    for section_count in [1, 0, count, 0] {
        out.extend_from_slice(&section_count.to_be_bytes());
    }
    put_name(&mut out, zone)?;
    out.extend_from_slice(&TYPE_SOA.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&updates);
    Ok(out)
}

/// The MAC of a request (RFC 8945 section 4.3.3): the message without its
/// TSIG record, then the TSIG variables.
pub fn request_mac(message: &[u8], key: &TsigKey, time_signed: u64) -> Result<Vec<u8>, WireError> {
    let mut data = message.to_vec();
    put_name(&mut data, &key.name)?;
    data.extend_from_slice(&CLASS_ANY.to_be_bytes());
    data.extend_from_slice(&0u32.to_be_bytes());
    put_name(&mut data, key.algorithm.wire_name())?;
    data.extend_from_slice(&time_signed.to_be_bytes()[2..]);
    data.extend_from_slice(&FUDGE.to_be_bytes());
    data.extend_from_slice(&0u16.to_be_bytes()); // error
    data.extend_from_slice(&0u16.to_be_bytes()); // other len
    key.algorithm.mac(&key.secret, &data).map_err(|why| WireError::InvalidKey { key: key.name.clone(), why })
}

/// The UPDATE of `zone` with `changes`, signed with `key` at `time_signed`
/// (seconds since the epoch).
pub fn encode_update(
    id: u16,
    zone: &str,
    changes: &[Change],
    ttl: u32,
    key: &TsigKey,
    time_signed: u64,
) -> Result<Vec<u8>, WireError> {
    encode_signed(id, zone, changes, ttl, key, time_signed).map(|(message, _)| message)
}

/// Like [`encode_update`], also returning the request's MAC, which the
/// answer's MAC covers.
pub fn encode_signed(
    id: u16,
    zone: &str,
    changes: &[Change],
    ttl: u32,
    key: &TsigKey,
    time_signed: u64,
) -> Result<(Vec<u8>, Vec<u8>), WireError> {
    if key.secret.is_empty() {
        return Err(WireError::InvalidKey { key: key.name.clone(), why: "the secret is empty" });
    }
    let mut message = encode_unsigned(id, zone, changes, ttl)?;
    let mac = request_mac(&message, key, time_signed)?;
    let mut rdata = Vec::new();
    put_name(&mut rdata, key.algorithm.wire_name())?;
    rdata.extend_from_slice(&time_signed.to_be_bytes()[2..]);
    rdata.extend_from_slice(&FUDGE.to_be_bytes());
    rdata.extend_from_slice(&(mac.len() as u16).to_be_bytes());
    rdata.extend_from_slice(&mac);
    rdata.extend_from_slice(&id.to_be_bytes());
    rdata.extend_from_slice(&0u16.to_be_bytes()); // error
    rdata.extend_from_slice(&0u16.to_be_bytes()); // other len
    put_rr_head(&mut message, &key.name, TYPE_TSIG, CLASS_ANY, 0)?;
    message.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    message.extend_from_slice(&rdata);
    message[10..12].copy_from_slice(&1u16.to_be_bytes()); // ARCOUNT: the TSIG record
    if message.len() > usize::from(u16::MAX) {
        return Err(WireError::TooLarge { zone: zone.to_string(), size: message.len() });
    }
    Ok((message, mac))
}

/// What girder reads of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub id: u16,
    /// The RCODE (header bits only; TSIG errors are reported apart).
    pub rcode: u16,
    /// The error field of the answer's TSIG record, when it has one and it is not 0.
    pub tsig_error: Option<u16>,
    /// Whether the answer carries a TSIG record.
    pub signed: bool,
}

/// The TSIG record of an answer, as far as verifying its MAC needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerTsig {
    /// Offset of the TSIG record in the answer.
    pub start: usize,
    pub time_signed: u64,
    pub fudge: u16,
    pub mac: Vec<u8>,
    pub error: u16,
    pub other: Vec<u8>,
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], ParseError> {
        let end = self.at.checked_add(n).filter(|end| *end <= self.data.len()).ok_or(ParseError("truncated"))?;
        let slice = &self.data[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u16(&mut self) -> Result<u16, ParseError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Skips a (possibly compressed) name.
    fn skip_name(&mut self) -> Result<(), ParseError> {
        for _ in 0..128 {
            let len = self.take(1)?[0];
            match len {
                0 => return Ok(()),
                l if l & 0xc0 == 0xc0 => {
                    self.take(1)?;
                    return Ok(());
                }
                l if l & 0xc0 == 0 => {
                    self.take(usize::from(l))?;
                }
                _ => return Err(ParseError("unknown label type")),
            }
        }
        Err(ParseError("name too long"))
    }
}

/// Reads the id, RCODE and TSIG error of an answer.
pub fn parse_response(data: &[u8]) -> Result<Response, ParseError> {
    parse_answer(data).map(|(response, _)| response)
}

/// Reads an answer and its TSIG record, if any (it must be the last record).
pub fn parse_answer(data: &[u8]) -> Result<(Response, Option<AnswerTsig>), ParseError> {
    let mut r = Reader { data, at: 0 };
    let id = r.u16()?;
    let flags = r.u16()?;
    if flags & 0x8000 == 0 {
        return Err(ParseError("not a response"));
    }
    let counts = [r.u16()?, r.u16()?, r.u16()?, r.u16()?];
    for _ in 0..counts[0] {
        r.skip_name()?;
        r.take(4)?;
    }
    let mut tsig = None;
    let records = u32::from(counts[1]) + u32::from(counts[2]) + u32::from(counts[3]);
    for _ in 0..records {
        let start = r.at;
        r.skip_name()?;
        let rtype = r.u16()?;
        r.take(6)?;
        let len = usize::from(r.u16()?);
        let rdata = r.take(len)?;
        if tsig.is_some() {
            return Err(ParseError("the TSIG record is not the last one"));
        }
        if rtype == TYPE_TSIG {
            let mut t = Reader { data: rdata, at: 0 };
            t.skip_name()?;
            let time = t.take(6)?;
            let time_signed = time.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            let fudge = t.u16()?;
            let mac_len = usize::from(t.u16()?);
            let mac = t.take(mac_len)?.to_vec();
            t.take(2)?; // original id
            let error = t.u16()?;
            let other_len = usize::from(t.u16()?);
            let other = t.take(other_len)?.to_vec();
            tsig = Some(AnswerTsig { start, time_signed, fudge, mac, error, other });
        }
    }
    let response = Response {
        id,
        rcode: flags & 0x000f,
        tsig_error: tsig.as_ref().map(|t| t.error).filter(|e| *e != 0),
        signed: tsig.is_some(),
    };
    Ok((response, tsig))
}

/// Whether the answer's MAC is the one `key` gives (RFC 8945 section
/// 5.3.1): over the request's MAC, the answer without its TSIG record, and
/// the answer's TSIG variables.
pub fn verify_answer(answer: &[u8], tsig: &AnswerTsig, request_mac: &[u8], key: &TsigKey) -> bool {
    let Some(body) = answer.get(..tsig.start) else {
        return false;
    };
    let mut data = Vec::with_capacity(body.len() + request_mac.len() + 64);
    data.extend_from_slice(&(request_mac.len() as u16).to_be_bytes());
    data.extend_from_slice(request_mac);
    data.extend_from_slice(body);
    // The ARCOUNT the answer had before its TSIG record was added.
    let arcount = u16::from_be_bytes([data[request_mac.len() + 12], data[request_mac.len() + 13]]);
    let Some(arcount) = arcount.checked_sub(1) else {
        return false;
    };
    data[request_mac.len() + 12..request_mac.len() + 14].copy_from_slice(&arcount.to_be_bytes());
    if put_name(&mut data, &key.name).is_err() {
        return false;
    }
    data.extend_from_slice(&CLASS_ANY.to_be_bytes());
    data.extend_from_slice(&0u32.to_be_bytes());
    if put_name(&mut data, key.algorithm.wire_name()).is_err() {
        return false;
    }
    data.extend_from_slice(&tsig.time_signed.to_be_bytes()[2..]);
    data.extend_from_slice(&tsig.fudge.to_be_bytes());
    data.extend_from_slice(&tsig.error.to_be_bytes());
    data.extend_from_slice(&(tsig.other.len() as u16).to_be_bytes());
    data.extend_from_slice(&tsig.other);
    match key.algorithm.mac(&key.secret, &data) {
        // Constant time is not needed: the answer's MAC is no secret.
        Ok(expected) => !tsig.mac.is_empty() && expected == tsig.mac,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TsigKey {
        // "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0IQ==" in BIND's key file.
        TsigKey {
            name: "girder-test".into(),
            algorithm: Algorithm::HmacSha256,
            secret: b"secret-secret-secret-secret!".to_vec(),
        }
    }

    #[test]
    fn names_are_length_prefixed_and_lower_cased() {
        let mut out = Vec::new();
        put_name(&mut out, "Node-1.Lab.").unwrap();
        assert_eq!(out, b"\x06node-1\x03lab\x00");
        let mut root = Vec::new();
        put_name(&mut root, ".").unwrap();
        assert_eq!(root, b"\x00");
        assert!(put_name(&mut Vec::new(), "a..b").is_err());
        assert!(put_name(&mut Vec::new(), &"x".repeat(64)).is_err());
        assert!(put_name(&mut Vec::new(), "a b").is_err());
    }

    #[test]
    fn update_structure_field_by_field() {
        let changes = vec![
            Change::Replace { name: "n1.lab".into(), rtype: RecordType::A, data: vec![RData::A([10, 0, 0, 5].into())] },
            Change::Delete { name: "n2.lab".into(), rtype: RecordType::Aaaa },
        ];
        let m = encode_unsigned(0x1234, "lab", &changes, 300).unwrap();
        let expected: Vec<u8> = [
            &[0x12, 0x34, 0x28, 0x00, 0, 1, 0, 0, 0, 3, 0, 0][..], // id, opcode UPDATE, ZO=1 PR=0 UP=3 AD=0
            b"\x03lab\x00\x00\x06\x00\x01",                        // zone lab. SOA IN
            b"\x02n1\x03lab\x00\x00\x01\x00\xff\x00\x00\x00\x00\x00\x00", // delete RRset A
            b"\x02n1\x03lab\x00\x00\x01\x00\x01\x00\x00\x01\x2c\x00\x04\x0a\x00\x00\x05", // add A 10.0.0.5 ttl 300
            b"\x02n2\x03lab\x00\x00\x1c\x00\xff\x00\x00\x00\x00\x00\x00", // delete RRset AAAA
        ]
        .concat();
        assert_eq!(m, expected);
    }

    #[test]
    fn ptr_rdata_is_an_uncompressed_name() {
        let changes = vec![Change::Replace {
            name: "5.0.0.10.in-addr.arpa".into(),
            rtype: RecordType::Ptr,
            data: vec![RData::Ptr("n1.lab.".into())],
        }];
        let m = encode_unsigned(1, "0.0.10.in-addr.arpa", &changes, 60).unwrap();
        assert!(m.ends_with(b"\x00\x0c\x00\x01\x00\x00\x00\x3c\x00\x08\x02n1\x03lab\x00"));
    }

    #[test]
    fn signed_update_carries_a_verifiable_tsig() {
        let k = key();
        let changes = vec![Change::Delete { name: "n1.lab".into(), rtype: RecordType::A }];
        let signed = encode_update(7, "lab", &changes, 60, &k, 0x0000_1234_5678).unwrap();
        let unsigned = encode_unsigned(7, "lab", &changes, 60).unwrap();
        assert_eq!(&signed[..10], &unsigned[..10]);
        assert_eq!(&signed[10..12], &[0, 1], "ARCOUNT 1");
        assert_eq!(&signed[12..unsigned.len()], &unsigned[12..]);
        let tsig = &signed[unsigned.len()..];
        let head: Vec<u8> = [&b"\x0bgirder-test\x00"[..], &[0, 250, 0, 255, 0, 0, 0, 0]].concat();
        assert!(tsig.starts_with(&head));
        let rdata = &tsig[head.len() + 2..];
        assert!(rdata.starts_with(b"\x0bhmac-sha256\x00\x00\x00\x12\x34\x56\x78\x01\x2c\x00\x20"));
        let mac = &rdata[13 + 6 + 2 + 2..13 + 6 + 2 + 2 + 32];
        // The MAC, recomputed independently over the RFC 8945 digest input.
        let mut digest = unsigned.clone();
        digest.extend_from_slice(b"\x0bgirder-test\x00\x00\xff\x00\x00\x00\x00\x0bhmac-sha256\x00");
        digest.extend_from_slice(&[0x00, 0x00, 0x12, 0x34, 0x56, 0x78, 0x01, 0x2c, 0, 0, 0, 0]);
        let mut expected = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&k.secret).unwrap();
        expected.update(&digest);
        assert_eq!(mac, expected.finalize().into_bytes().as_slice());
        assert_eq!(&rdata[rdata.len() - 6..], &[0, 7, 0, 0, 0, 0], "original id, error, other len");
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231_case_2() {
        let mac = Algorithm::HmacSha256.mac(b"Jefe", b"what do ya want for nothing?").unwrap();
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        assert_eq!(Algorithm::HmacSha512.mac(b"Jefe", b"x").unwrap().len(), 64);
        assert_eq!(Algorithm::from_name("HMAC-SHA256."), Some(Algorithm::HmacSha256));
        assert_eq!(Algorithm::from_name("hmac-md5"), None);
    }

    #[test]
    fn an_answer_mac_verifies_and_tampering_is_caught() {
        let k = key();
        let request_mac = [0xaa; 32];
        let body: Vec<u8> = [&[0, 7, 0xa8, 0, 0, 1, 0, 0, 0, 0, 0, 1][..], b"\x03lab\x00\x00\x06\x00\x01"].concat();
        // RFC 8945 5.3.1 digest input, written out independently.
        let mut digest: Vec<u8> = [&[0, 32][..], &request_mac].concat();
        digest.extend_from_slice(&body);
        digest[34 + 10..34 + 12].copy_from_slice(&[0, 0]); // ARCOUNT without the TSIG record
        digest.extend_from_slice(b"\x0bgirder-test\x00\x00\xff\x00\x00\x00\x00\x0bhmac-sha256\x00");
        digest.extend_from_slice(&[0, 0, 0, 0, 0, 9, 1, 44, 0, 0, 0, 0]);
        let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&k.secret).unwrap();
        mac.update(&digest);
        let mac = mac.finalize().into_bytes().to_vec();
        let mut answer = body.clone();
        answer.extend_from_slice(b"\x0bgirder-test\x00\x00\xfa\x00\xff\x00\x00\x00\x00");
        let rdata: Vec<u8> =
            [&b"\x0bhmac-sha256\x00"[..], &[0, 0, 0, 0, 0, 9, 1, 44, 0, 32], &mac, &[0, 7, 0, 0, 0, 0]].concat();
        answer.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        answer.extend_from_slice(&rdata);
        let (response, tsig) = parse_answer(&answer).unwrap();
        assert_eq!(response, Response { id: 7, rcode: 0, tsig_error: None, signed: true });
        let tsig = tsig.unwrap();
        assert!(verify_answer(&answer, &tsig, &request_mac, &k));
        assert!(!verify_answer(&answer, &tsig, &[0xab; 32], &k), "bound to the request");
        let mut forged = answer.clone();
        forged[3] = 5; // REFUSED
        assert!(!verify_answer(&forged, &parse_answer(&forged).unwrap().1.unwrap(), &request_mac, &k));
        let other = TsigKey { secret: vec![7; 32], ..k };
        assert!(!verify_answer(&answer, &tsig, &request_mac, &other));
    }

    #[test]
    fn answers_give_rcode_and_tsig_error() {
        // NOTAUTH answer with a TSIG record whose error is BADSIG (16).
        let mut a = vec![0x00, 0x07, 0xa8, 0x09, 0, 1, 0, 0, 0, 0, 0, 1];
        a.extend_from_slice(b"\x03lab\x00\x00\x06\x00\x01");
        a.extend_from_slice(b"\x0bgirder-test\x00\x00\xfa\x00\xff\x00\x00\x00\x00");
        let rdata: Vec<u8> =
            [&b"\x0bhmac-sha256\x00"[..], &[0, 0, 0, 0, 0, 1, 1, 44, 0, 0, 0, 7, 0, 16, 0, 0]].concat();
        a.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        a.extend_from_slice(&rdata);
        let r = parse_response(&a).unwrap();
        assert_eq!(r, Response { id: 7, rcode: 9, tsig_error: Some(16), signed: true });
        assert!(parse_response(&a[..a.len() - 3]).is_err());
        assert!(parse_response(&[0, 7, 0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err(), "a query is not an answer");
    }
}
