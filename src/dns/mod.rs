//! Registration in the site's own DNS server: RFC 2136 dynamic UPDATE
//! messages signed with an RFC 8945 TSIG key, sent over TCP with a timeout.
//!
//! No Kubernetes in here. [`wire`] encodes the messages and parses the
//! answer, [`send_update`] carries one message to the server and turns the
//! answer's RCODE (and TSIG error) into a typed [`DnsError`]. A NOERROR
//! counts only when the answer's own TSIG MAC verifies (RFC 8945 5.3).
//! Errors name the server, the zone and the key name, never the key's secret.
//! hmac-sha256 and hmac-sha512 are supported (the `hmac` and `sha2` crates).
//!
//! Only what girder publishes is encoded: A, AAAA and PTR records, added to
//! or removed from RRsets, without prerequisites. Names are sent
//! uncompressed, which RFC 2136 allows and keeps the encoder small.

pub mod wire;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use wire::{Algorithm, Change, RData, RecordType, TsigKey};

/// Why a dynamic update did not take effect.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot reach DNS server {server}: {detail}")]
    Unreachable { server: String, detail: String },
    #[error("DNS server {server} did not answer the update of zone {zone} within {timeout:?}")]
    Timeout { server: String, zone: String, timeout: Duration },
    #[error(
        "DNS server {server} refused the TSIG signature of key {key} for zone {zone} ({detail}); check that the Secret's keyName, algorithm and secret match the server's key"
    )]
    TsigRefused { server: String, zone: String, key: String, detail: String },
    #[error(
        "DNS server {server} refused the update of zone {zone}; allow updates with key {key} (allow-update or update-policy)"
    )]
    Refused { server: String, zone: String, key: String },
    #[error("DNS server {server} is not authoritative for zone {zone} (NOTZONE/NOTAUTH)")]
    NotAuthoritative { server: String, zone: String },
    #[error("DNS server {server} failed to apply the update of zone {zone} (SERVFAIL); see the server's log")]
    ServerFailure { server: String, zone: String },
    #[error("DNS server {server} rejected the update of zone {zone} with RCODE {rcode}")]
    Rejected { server: String, zone: String, rcode: u16 },
    #[error(
        "the answer of DNS server {server} to the update of zone {zone} is not signed with key {key}; not trusting it"
    )]
    UnsignedAnswer { server: String, zone: String, key: String },
    #[error("DNS server {server} sent an answer that cannot be read: {detail}")]
    Malformed { server: String, detail: String },
    #[error("{0}")]
    Invalid(#[from] wire::WireError),
}

impl DnsError {
    /// Stable CamelCase reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            DnsError::Unreachable { .. } | DnsError::Timeout { .. } => "ServerUnreachable",
            DnsError::TsigRefused { .. } | DnsError::UnsignedAnswer { .. } => "TSIGRefused",
            DnsError::Refused { .. } => "Refused",
            DnsError::NotAuthoritative { .. } => "NotAuthoritative",
            DnsError::ServerFailure { .. } => "ServerFailure",
            DnsError::Rejected { .. } | DnsError::Malformed { .. } => "Rejected",
            DnsError::Invalid(_) => "InvalidRecord",
        }
    }
}

/// The socket address of `server`, given as `host`, `host:port`, an IP
/// address or `[v6]:port`; the port is 53 when absent.
pub async fn resolve(server: &str) -> Result<SocketAddr, DnsError> {
    let unreachable = |detail: String| DnsError::Unreachable { server: server.to_string(), detail };
    if let Ok(ip) = server.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    if let Ok(addr) = server.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let with_port = match server.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_ok() => server.to_string(),
        _ => format!("{server}:53"),
    };
    let mut addrs =
        tokio::net::lookup_host(&with_port).await.map_err(|e| unreachable(format!("cannot resolve: {e}")))?;
    addrs.next().ok_or_else(|| unreachable("the name has no address".into()))
}

/// Sends one UPDATE of `zone` to `server` over TCP, signed with `key`, and
/// waits at most `timeout` for the whole exchange.
pub async fn send_update(
    server: &str,
    zone: &str,
    changes: &[Change],
    key: &TsigKey,
    ttl: u32,
    timeout: Duration,
) -> Result<(), DnsError> {
    let id: u16 = rand::random();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (message, request_mac) = wire::encode_signed(id, zone, changes, ttl, key, now)?;
    let exchange = async {
        let addr = resolve(server).await?;
        let unreachable =
            |e: std::io::Error| DnsError::Unreachable { server: server.to_string(), detail: e.to_string() };
        let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(unreachable)?;
        let length = u16::try_from(message.len())
            .map_err(|_| wire::WireError::TooLarge { zone: zone.to_string(), size: message.len() })?;
        let mut framed = Vec::with_capacity(message.len() + 2);
        framed.extend_from_slice(&length.to_be_bytes());
        framed.extend_from_slice(&message);
        stream.write_all(&framed).await.map_err(unreachable)?;
        let mut length = [0u8; 2];
        stream.read_exact(&mut length).await.map_err(unreachable)?;
        let mut answer = vec![0u8; u16::from_be_bytes(length) as usize];
        stream.read_exact(&mut answer).await.map_err(unreachable)?;
        Ok::<_, DnsError>(answer)
    };
    let answer = tokio::time::timeout(timeout, exchange).await.map_err(|_| DnsError::Timeout {
        server: server.to_string(),
        zone: zone.to_string(),
        timeout,
    })??;
    let (parsed, tsig) = wire::parse_answer(&answer)
        .map_err(|e| DnsError::Malformed { server: server.to_string(), detail: e.to_string() })?;
    if parsed.id != id {
        return Err(DnsError::Malformed {
            server: server.to_string(),
            detail: format!("answer id {} does not match request id {id}", parsed.id),
        });
    }
    // A success must carry the server's signature: an unsigned or forged
    // NOERROR would otherwise hide records that were never published.
    if parsed.rcode == 0 && parsed.tsig_error.is_none() {
        let verified = tsig.as_ref().is_some_and(|t| wire::verify_answer(&answer, t, &request_mac, key));
        if !verified {
            return Err(DnsError::UnsignedAnswer {
                server: server.to_string(),
                zone: zone.to_string(),
                key: key.name.clone(),
            });
        }
    }
    classify(server, zone, key, parsed)
}

/// Turns an answer's RCODE and TSIG error into a result.
fn classify(server: &str, zone: &str, key: &TsigKey, answer: wire::Response) -> Result<(), DnsError> {
    let (server, zone) = (server.to_string(), zone.to_string());
    let tsig_detail = match answer.tsig_error {
        Some(16) => Some("BADSIG: the MAC does not verify"),
        Some(17) => Some("BADKEY: the server does not know this key and algorithm"),
        Some(18) => Some("BADTIME: the clocks differ by more than the fudge"),
        Some(22) => Some("BADTRUNC"),
        _ => None,
    };
    if let Some(detail) = tsig_detail {
        return Err(DnsError::TsigRefused { server, zone, key: key.name.clone(), detail: detail.to_string() });
    }
    match answer.rcode {
        0 => Ok(()),
        2 => Err(DnsError::ServerFailure { server, zone }),
        5 => Err(DnsError::Refused { server, zone, key: key.name.clone() }),
        // NOTAUTH without a TSIG error: the server answered unsigned, as BIND
        // does when the key is unknown to it.
        9 if answer.tsig_error.is_none() && !answer.signed => Err(DnsError::TsigRefused {
            server,
            zone,
            key: key.name.clone(),
            detail: "NOTAUTH: the server did not accept the signature".into(),
        }),
        9 | 10 => Err(DnsError::NotAuthoritative { server, zone }),
        rcode => Err(DnsError::Rejected { server, zone, rcode }),
    }
}

/// The reverse zone holding PTR records of `cidr` (`a.b.c.in-addr.arpa`),
/// cut on the last octet boundary at or above the prefix length.
pub fn reverse_zone_v4(network: Ipv4Addr, prefix_len: u8) -> String {
    let octets = network.octets();
    let whole = usize::from(prefix_len.min(32) / 8).max(1);
    let mut labels: Vec<String> = octets[..whole].iter().map(|o| o.to_string()).collect();
    labels.reverse();
    format!("{}.in-addr.arpa", labels.join("."))
}

/// The reverse zone of an IPv6 prefix in nibble format under `ip6.arpa`,
/// cut on the last nibble boundary at or above the prefix length.
pub fn reverse_zone_v6(prefix: Ipv6Addr, prefix_len: u8) -> String {
    let nibbles = usize::from(prefix_len.min(128) / 4).max(1);
    let all = nibbles_of(prefix);
    let mut labels: Vec<String> = all[..nibbles].iter().map(|n| format!("{n:x}")).collect();
    labels.reverse();
    format!("{}.ip6.arpa", labels.join("."))
}

/// The PTR owner name of an address (`d.c.b.a.in-addr.arpa`, or 32 nibbles
/// under `ip6.arpa`).
pub fn reverse_name(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut labels: Vec<String> = nibbles_of(v6).iter().map(|n| format!("{n:x}")).collect();
            labels.reverse();
            format!("{}.ip6.arpa", labels.join("."))
        }
    }
}

fn nibbles_of(addr: Ipv6Addr) -> Vec<u8> {
    addr.octets().iter().flat_map(|b| [b >> 4, b & 0x0f]).collect()
}

/// Whether `name` is `zone` or lies under it (case-insensitive, trailing dots ignored).
pub fn in_zone(name: &str, zone: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let zone = zone.trim_end_matches('.').to_ascii_lowercase();
    name == zone || name.ends_with(&format!(".{zone}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_zones_follow_octet_and_nibble_boundaries() {
        assert_eq!(reverse_zone_v4("10.20.30.0".parse().unwrap(), 24), "30.20.10.in-addr.arpa");
        assert_eq!(reverse_zone_v4("10.20.16.0".parse().unwrap(), 20), "20.10.in-addr.arpa");
        assert_eq!(reverse_zone_v4("10.0.0.0".parse().unwrap(), 8), "10.in-addr.arpa");
        assert_eq!(reverse_zone_v6("fd00:10::".parse().unwrap(), 64), "0.0.0.0.0.0.0.0.0.1.0.0.0.0.d.f.ip6.arpa");
        assert_eq!(reverse_zone_v6("2001:db8::".parse().unwrap(), 32), "8.b.d.0.1.0.0.2.ip6.arpa");
    }

    #[test]
    fn reverse_names() {
        assert_eq!(reverse_name("10.20.30.5".parse().unwrap()), "5.30.20.10.in-addr.arpa");
        let v6 = reverse_name("2001:db8::1".parse().unwrap());
        assert_eq!(v6, "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa");
        assert!(in_zone(&v6, "8.b.d.0.1.0.0.2.ip6.arpa."));
        assert!(!in_zone("a.example.org", "ample.org"));
        assert!(in_zone("A.Example.org.", "example.org"));
    }

    fn key() -> TsigKey {
        TsigKey { name: "k".into(), algorithm: Algorithm::HmacSha256, secret: vec![1; 32] }
    }

    fn answer(rcode: u16, tsig_error: Option<u16>, signed: bool) -> wire::Response {
        wire::Response { id: 1, rcode, tsig_error, signed }
    }

    #[test]
    fn rcodes_become_typed_errors_without_the_secret() {
        let k = key();
        assert!(classify("s", "z", &k, answer(0, None, true)).is_ok());
        let err = classify("s:53", "lab.", &k, answer(9, Some(16), true)).unwrap_err();
        assert_eq!(err.reason(), "TSIGRefused");
        assert!(err.to_string().contains("s:53") && err.to_string().contains("lab."));
        assert!(!err.to_string().contains("AQEB"), "never the secret");
        assert_eq!(classify("s", "z", &k, answer(9, None, false)).unwrap_err().reason(), "TSIGRefused");
        assert_eq!(classify("s", "z", &k, answer(5, None, true)).unwrap_err().reason(), "Refused");
        assert_eq!(classify("s", "z", &k, answer(2, None, true)).unwrap_err().reason(), "ServerFailure");
        assert_eq!(classify("s", "z", &k, answer(10, None, true)).unwrap_err().reason(), "NotAuthoritative");
    }
}
