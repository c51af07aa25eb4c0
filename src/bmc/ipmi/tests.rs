//! Unit tests of the IPMI client that need no BMC. The protocol itself is
//! proven against OpenIPMI's ipmi_sim in `tests/ipmi.rs`.

use super::*;
use std::time::{Duration, Instant};

const PASSWORD: &str = "Ipmi-Secret-42";

fn address(port: u16) -> BmcAddress {
    BmcAddress::parse(&format!("ipmi://127.0.0.1:{port}")).unwrap()
}

fn quick() -> BmcOptions {
    BmcOptions { timeout: Duration::from_millis(1500), ..Default::default() }
}

#[tokio::test]
async fn nothing_listening_is_a_connection_error_at_once() {
    // A port just freed: the kernel answers ICMP port unreachable.
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let started = Instant::now();
    let err = IpmiClient::connect(address(port), Credentials::new("admin", PASSWORD), quick()).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    assert!(err.is_unreachable(), "{err}");
    assert_eq!(err.reason(), "ConnectionFailed", "{err}");
    let text = format!("{err} {err:?}");
    assert!(text.contains(&format!("ipmi://127.0.0.1:{port}")), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");
}

#[tokio::test]
async fn a_silent_bmc_is_a_timeout_within_the_limit() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let started = Instant::now();
    let err = IpmiClient::connect(address(port), Credentials::new("admin", PASSWORD), quick()).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.reason(), "Timeout", "{err}");
    assert!(err.is_unreachable());
    assert!(took >= Duration::from_millis(1400) && took < Duration::from_secs(4), "took {took:?}");
    // It was asked more than once (retransmission).
    silent.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 512];
    let mut received = 0;
    while let Ok(n) = silent.recv(&mut buf) {
        assert!(n > 4 && buf[..4] == [0x06, 0x00, 0xff, 0x07], "an RMCP packet");
        received += 1;
    }
    assert!(received >= 2, "{received} packets");
    assert!(!format!("{err:?}").contains(PASSWORD));
}

#[tokio::test]
async fn bad_settings_are_refused_without_the_password() {
    let long = "p".repeat(21);
    let err = IpmiClient::connect(address(9), Credentials::new("admin", long.clone()), quick()).await.unwrap_err();
    assert_eq!(err.reason(), "InvalidConfiguration", "{err}");
    assert!(!format!("{err} {err:?}").contains(&long));
    let err = IpmiClient::connect(address(9), Credentials::new("u".repeat(17), "pw"), quick()).await.unwrap_err();
    assert_eq!(err.reason(), "InvalidConfiguration", "{err}");
    let none = IpmiOptions { cipher_suites: Vec::new() };
    let err = IpmiClient::connect_with(address(9), Credentials::new("admin", "pw"), quick(), none).await.unwrap_err();
    assert_eq!(err.reason(), "InvalidConfiguration", "{err}");
    let redfish = BmcAddress::parse("redfish://127.0.0.1").unwrap();
    let err = IpmiClient::connect(redfish, Credentials::new("admin", "pw"), quick()).await.unwrap_err();
    assert_eq!(err.reason(), "InvalidAddress", "{err}");
}

#[test]
fn new_errors_say_what_to_do_and_keep_secrets() {
    let err = BmcError::IpmiAuth {
        bmc: "ipmi://10.0.0.5".into(),
        what: "RAKP Message 1".into(),
        detail: "wrong password".into(),
    };
    assert!(err.is_auth());
    assert_eq!(err.reason(), "AuthenticationFailed");
    assert!(err.to_string().contains("credentials Secret"), "{err}");
    let err = BmcError::IpmiCommand {
        bmc: "ipmi://10.0.0.5".into(),
        what: "Chassis Control (On)".into(),
        code: 0xd5,
        meaning: "command not supported in the present state".into(),
    };
    assert!(err.to_string().contains("0xd5") && err.to_string().contains("ipmi://10.0.0.5"), "{err}");
    assert!(!err.is_auth() && !err.is_unreachable());
}
