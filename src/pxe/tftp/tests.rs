//! End-to-end tests on 127.0.0.1 with a small client written for them, and with curl.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use super::packet::{Packet, Request, parse};
use super::{TftpConfig, bind, serve};
use crate::pxe::metrics::PxeMetrics;

/// How long any single wait in these tests may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// A directory under the system temp dir, removed on drop.
pub(super) struct TestDir(PathBuf);

impl TestDir {
    pub(super) fn new(label: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!("girder-{label}-{}-{unique}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create the test directory");
        Self(path)
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `contents` at `relative`, creating parent directories.
    pub(super) fn write(&self, relative: &str, contents: &[u8]) -> PathBuf {
        let path = self.0.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create parent directories");
        }
        std::fs::write(&path, contents).expect("write a test file");
        path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Deterministic bytes that are not periodic in any small block size.
fn content(len: usize) -> Vec<u8> {
    let mut state: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state.to_le_bytes()[0]
        })
        .collect()
}

struct TestServer {
    addr: SocketAddr,
    metrics: Arc<PxeMetrics>,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
    dir: TestDir,
}

impl TestServer {
    async fn start(dir: TestDir, configure: impl FnOnce(&mut TftpConfig)) -> Self {
        let socket = bind("127.0.0.1:0".parse().expect("address")).await.expect("bind the listener");
        let addr = socket.local_addr().expect("listener address");
        let mut config = TftpConfig::new(dir.path());
        // Long enough that a loaded machine causes no retransmission the tests do not expect.
        config.timeout = Duration::from_secs(2);
        configure(&mut config);
        let metrics = Arc::new(PxeMetrics::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(socket, config, metrics.clone(), shutdown.clone()));
        Self { addr, metrics, shutdown, task, dir }
    }

    /// Waits until the metrics say `result` happened `count` times.
    async fn wait_for_result(&self, result: &str, count: u64) {
        let expected = format!("tftp_transfers_total{{result=\"{result}\"}} {count}\n");
        let deadline = Instant::now() + PATIENCE;
        loop {
            let rendered = self.metrics.render();
            if rendered.contains(&expected) {
                return;
            }
            assert!(Instant::now() < deadline, "no {expected:?} in the metrics:\n{rendered}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let result = timeout(PATIENCE, self.task).await.expect("serve ends on shutdown").expect("serve task");
        result.expect("serve returns Ok");
    }
}

#[derive(Default)]
struct ClientOptions {
    netascii: bool,
    options: Vec<(&'static str, String)>,
    /// Do not send the first ACK (of the OACK or of block 1).
    drop_first_ack: bool,
    /// After the first DATA, poke the transfer's port from another socket.
    intruder: bool,
    /// Send every ACK twice.
    double_acks: bool,
}

#[derive(Debug, Default)]
struct Fetched {
    data: Vec<u8>,
    option_acks: Vec<Vec<(String, String)>>,
    /// DATA packets that were not the next block expected.
    out_of_order: usize,
    saw_block_zero: bool,
    last_payload_len: usize,
    transfer_port: u16,
}

/// A TFTP read as a client does it, with RFC 7440 windows: ACK at the end of each window,
/// and on a block out of order, ACK the last one in order.
async fn fetch(server: SocketAddr, filename: &str, client: ClientOptions) -> Result<Fetched, (u16, String)> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("client socket");
    let options = client.options.iter().map(|(name, value)| (*name, value.as_str())).collect();
    let mode = if client.netascii { "netascii" } else { "octet" };
    let request = Packet::ReadRequest(Request { filename, mode, options });
    socket.send_to(&request.to_bytes(), server).await.expect("send the request");

    let mut fetched = Fetched::default();
    let mut transfer: Option<SocketAddr> = None;
    let (mut blksize, mut window) = (512usize, 1usize);
    let mut expected: u16 = 1;
    let mut in_window = 0;
    let mut dropped = !client.drop_first_ack;
    let mut intruder = client.intruder;
    let mut buffer = vec![0u8; 70_000];
    loop {
        let (len, from) = timeout(PATIENCE, socket.recv_from(&mut buffer))
            .await
            .expect("the server answers in time")
            .expect("client receive");
        match transfer {
            Some(port) => assert_eq!(from, port, "every reply comes from the transfer's port"),
            None => transfer = Some(from),
        }
        fetched.transfer_port = from.port();
        let ack = |block: u16| Packet::Ack { block }.to_bytes();
        match parse(&buffer[..len]).expect("the server sends valid packets") {
            Packet::OptionAck { options } => {
                for (name, value) in &options {
                    let value: usize = value.parse().expect("numeric option value");
                    match *name {
                        "blksize" => blksize = value,
                        "windowsize" => window = value,
                        _ => {}
                    }
                }
                fetched.option_acks.push(options.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect());
                if !dropped {
                    dropped = true;
                    continue;
                }
                socket.send_to(&ack(0), from).await.expect("send ACK 0");
            }
            Packet::Data { block, payload } => {
                if block != expected {
                    fetched.out_of_order += 1;
                    in_window = 0;
                    socket.send_to(&ack(expected.wrapping_sub(1)), from).await.expect("send ACK");
                    continue;
                }
                if intruder {
                    intruder = false;
                    poke_as_intruder(from).await;
                }
                fetched.data.extend_from_slice(payload);
                fetched.saw_block_zero |= block == 0;
                fetched.last_payload_len = payload.len();
                expected = expected.wrapping_add(1);
                in_window += 1;
                let last = payload.len() < blksize;
                if last || in_window == window {
                    in_window = 0;
                    if !dropped {
                        dropped = true;
                    } else {
                        for _ in 0..if client.double_acks { 2 } else { 1 } {
                            socket.send_to(&ack(block), from).await.expect("send ACK");
                        }
                    }
                }
                if last {
                    return Ok(fetched);
                }
            }
            Packet::Error { code, message } => return Err((code, message.into_owned())),
            other => panic!("unexpected packet from the server: {other:?}"),
        }
    }
}

/// A packet to a transfer's port from elsewhere gets "unknown transfer ID".
async fn poke_as_intruder(transfer: SocketAddr) {
    let intruder = UdpSocket::bind("127.0.0.1:0").await.expect("intruder socket");
    intruder.send_to(&Packet::Ack { block: 1 }.to_bytes(), transfer).await.expect("intruder send");
    let mut buffer = [0u8; 512];
    let (len, _) = timeout(PATIENCE, intruder.recv_from(&mut buffer)).await.expect("an answer").expect("receive");
    match parse(&buffer[..len]) {
        Ok(Packet::Error { code: 5, message }) => assert_eq!(message, "unknown transfer ID"),
        other => panic!("expected error 5, got {other:?}"),
    }
}

/// Sends one datagram to the listener and returns the ERROR it answers with.
async fn error_reply(server: SocketAddr, datagram: &[u8]) -> (u16, String) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("client socket");
    socket.send_to(datagram, server).await.expect("send");
    let mut buffer = [0u8; 1024];
    let (len, _) = timeout(PATIENCE, socket.recv_from(&mut buffer)).await.expect("an answer").expect("receive");
    match parse(&buffer[..len]) {
        Ok(Packet::Error { code, message }) => (code, message.into_owned()),
        other => panic!("expected an ERROR packet, got {other:?}"),
    }
}

fn read_request(filename: &str, mode: &str) -> Vec<u8> {
    Packet::ReadRequest(Request { filename, mode, options: vec![] }).to_bytes()
}

fn opts(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|(name, value)| (*name, value.to_string())).collect()
}

#[tokio::test]
async fn plain_transfer_with_512_byte_blocks() {
    let dir = TestDir::new("tftp-plain");
    let file = content(512 * 5 + 100);
    dir.write("undionly.kpxe", &file);
    let server = TestServer::start(dir, |_| {}).await;

    let fetched = fetch(server.addr, "/undionly.kpxe", ClientOptions::default()).await.expect("transfer");
    assert_eq!(fetched.data, file);
    assert!(fetched.option_acks.is_empty(), "no options asked, no OACK");
    assert_eq!(fetched.last_payload_len, 100);
    assert_ne!(fetched.transfer_port, server.addr.port(), "the transfer has its own port");
    server.wait_for_result("complete", 1).await;
    assert!(server.metrics.render().contains(&format!("tftp_sent_bytes_total {}\n", file.len())));
    server.stop().await;
}

#[tokio::test]
async fn negotiated_blksize_tsize_and_window() {
    let dir = TestDir::new("tftp-negotiated");
    let file = content(1468 * 100 + 7);
    dir.write("sub/ipxe.efi", &file);
    let server = TestServer::start(dir, |_| {}).await;

    let client = ClientOptions {
        options: opts(&[
            ("blksize", "1468"),
            ("tsize", "0"),
            ("windowsize", "8"),
            ("timeout", "2"),
            ("x-unknown", "1"),
        ]),
        ..ClientOptions::default()
    };
    let fetched = fetch(server.addr, "sub/ipxe.efi", client).await.expect("transfer");
    assert!(fetched.data == file, "content differs");
    let expected: Vec<(String, String)> = [
        ("blksize", "1468".to_string()),
        ("tsize", file.len().to_string()),
        ("windowsize", "8".to_string()),
        ("timeout", "2".to_string()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value))
    .collect();
    assert_eq!(fetched.option_acks, vec![expected]);
    assert_eq!(fetched.out_of_order, 0);
    server.wait_for_result("complete", 1).await;
    server.stop().await;
}

#[tokio::test]
async fn size_a_multiple_of_blksize_ends_with_an_empty_block() {
    let dir = TestDir::new("tftp-multiple");
    let file = content(512 * 4);
    dir.write("f", &file);
    dir.write("empty", b"");
    let server = TestServer::start(dir, |_| {}).await;

    let fetched = fetch(server.addr, "f", ClientOptions::default()).await.expect("transfer");
    assert_eq!((fetched.data.len(), fetched.last_payload_len), (file.len(), 0));
    assert!(fetched.data == file);

    let client = ClientOptions { options: opts(&[("blksize", "1024"), ("windowsize", "3")]), ..Default::default() };
    let fetched = fetch(server.addr, "f", client).await.expect("windowed transfer");
    assert_eq!((fetched.data.len(), fetched.last_payload_len), (file.len(), 0));

    let fetched = fetch(server.addr, "empty", ClientOptions::default()).await.expect("empty file");
    assert!(fetched.data.is_empty());
    server.wait_for_result("complete", 3).await;
    server.stop().await;
}

#[tokio::test]
async fn block_numbers_roll_over_after_65535() {
    let dir = TestDir::new("tftp-rollover");
    let file = content(16 * 65_540 + 3);
    dir.write("big", &file);
    let server = TestServer::start(dir, |_| {}).await;

    for window in ["1", "16"] {
        let client =
            ClientOptions { options: opts(&[("blksize", "16"), ("windowsize", window)]), ..Default::default() };
        let fetched = fetch(server.addr, "big", client).await.expect("transfer");
        assert!(fetched.saw_block_zero, "block 65536 travels as block 0");
        assert!(fetched.data == file, "content differs with windowsize {window}");
    }
    server.wait_for_result("complete", 2).await;
    server.stop().await;
}

#[tokio::test]
async fn a_lost_ack_is_recovered_by_retransmission() {
    let dir = TestDir::new("tftp-lost-ack");
    let file = content(512 * 3 + 1);
    dir.write("f", &file);
    let server = TestServer::start(dir, |config| config.timeout = Duration::from_millis(100)).await;

    // Lockstep without options: the ACK of block 1 is lost, the server sends block 1 again.
    let client = ClientOptions { drop_first_ack: true, ..Default::default() };
    let fetched = fetch(server.addr, "f", client).await.expect("transfer");
    assert!(fetched.data == file);
    assert!(fetched.out_of_order >= 1, "block 1 was sent again");

    // With options: the ACK of the OACK is lost, the server sends the OACK again.
    let client = ClientOptions { drop_first_ack: true, options: opts(&[("blksize", "100")]), ..Default::default() };
    let fetched = fetch(server.addr, "f", client).await.expect("transfer");
    assert!(fetched.data == file);
    assert_eq!(fetched.option_acks.len(), 2);

    // Windowed: the ACK of the first window is lost, the whole window comes again.
    let client = ClientOptions {
        drop_first_ack: true,
        options: opts(&[("blksize", "64"), ("windowsize", "4")]),
        ..Default::default()
    };
    let fetched = fetch(server.addr, "f", client).await.expect("transfer");
    assert!(fetched.data == file);
    server.wait_for_result("complete", 3).await;
    server.stop().await;
}

#[tokio::test]
async fn duplicate_acks_do_not_trigger_resends() {
    let dir = TestDir::new("tftp-sorcerer");
    let file = content(64 * 200 + 5);
    dir.write("f", &file);
    let server = TestServer::start(dir, |_| {}).await;

    for window in ["1", "4"] {
        let client = ClientOptions {
            double_acks: true,
            options: opts(&[("blksize", "64"), ("windowsize", window)]),
            ..Default::default()
        };
        let fetched = fetch(server.addr, "f", client).await.expect("transfer");
        assert!(fetched.data == file);
        assert_eq!(fetched.out_of_order, 0, "no block was sent twice (windowsize {window})");
    }
    server.wait_for_result("complete", 2).await;
    server.stop().await;
}

#[tokio::test]
async fn a_silent_client_times_out_after_bounded_retries() {
    let dir = TestDir::new("tftp-timeout");
    dir.write("f", &content(2000));
    let server = TestServer::start(dir, |config| {
        config.timeout = Duration::from_millis(50);
        config.max_retries = 2;
    })
    .await;

    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("client socket");
    socket.send_to(&read_request("f", "octet"), server.addr).await.expect("send");
    let mut buffer = [0u8; 1024];
    let mut data_packets = 0;
    loop {
        let (len, _) = timeout(PATIENCE, socket.recv_from(&mut buffer)).await.expect("an answer").expect("receive");
        match parse(&buffer[..len]) {
            Ok(Packet::Data { block: 1, .. }) => data_packets += 1,
            Ok(Packet::Error { code: 0, message }) => {
                assert_eq!(message, "transfer timed out");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(data_packets, 3, "the first send and two retransmissions");
    server.wait_for_result("timeout", 1).await;
    server.stop().await;
}

#[tokio::test]
async fn a_stranger_on_the_transfer_port_gets_error_5_and_changes_nothing() {
    let dir = TestDir::new("tftp-tid");
    let file = content(512 * 4 + 9);
    dir.write("f", &file);
    let server = TestServer::start(dir, |_| {}).await;

    let fetched = fetch(server.addr, "f", ClientOptions { intruder: true, ..Default::default() }).await;
    assert!(fetched.expect("transfer").data == file);
    server.wait_for_result("complete", 1).await;
    server.stop().await;
}

#[tokio::test]
async fn refusals_and_errors() {
    let dir = TestDir::new("tftp-refusals");
    dir.write("f", b"data");
    dir.write("sub/x", b"data");
    let server = TestServer::start(dir, |_| {}).await;
    let addr = server.addr;

    let write = Packet::WriteRequest(Request { filename: "f", mode: "octet", options: vec![] }).to_bytes();
    let (code, message) = error_reply(addr, &write).await;
    assert_eq!(code, 2);
    assert!(message.contains("read-only"), "{message}");

    let (code, message) = fetch(addr, "missing.efi", ClientOptions::default()).await.expect_err("missing");
    assert_eq!(code, 1);
    assert!(message.contains("missing.efi"), "{message}");

    let (code, message) = fetch(addr, "../etc/passwd", ClientOptions::default()).await.expect_err("escape");
    assert_eq!(code, 2);
    assert!(message.contains("path escapes the TFTP root"), "{message}");

    let (code, message) = fetch(addr, "sub", ClientOptions::default()).await.expect_err("directory");
    assert_eq!(code, 1);
    assert!(message.contains("directory"), "{message}");

    let (code, message) = error_reply(addr, &read_request("f", "mail")).await;
    assert_eq!(code, 4);
    assert!(message.contains("mode"), "{message}");

    server.wait_for_result("refused", 3).await;
    server.wait_for_result("not_found", 2).await;
    server.stop().await;
}

#[tokio::test]
async fn netascii_converts_line_ends_and_reports_no_tsize() {
    let dir = TestDir::new("tftp-netascii");
    dir.write("script", b"#!ipxe\nchain x\r\n");
    let server = TestServer::start(dir, |_| {}).await;

    let client = ClientOptions { netascii: true, options: opts(&[("tsize", "0")]), ..Default::default() };
    let fetched = fetch(server.addr, "script", client).await.expect("transfer");
    assert_eq!(fetched.data, b"#!ipxe\r\nchain x\r\0\r\n");
    assert!(fetched.option_acks.is_empty(), "tsize alone is not granted in netascii, so no OACK");
    server.stop().await;
}

#[tokio::test]
async fn garbage_does_not_disturb_the_listener() {
    let dir = TestDir::new("tftp-garbage");
    let file = content(3000);
    dir.write("f", &file);
    let server = TestServer::start(dir, |_| {}).await;

    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("client socket");
    let garbage: [&[u8]; 9] = [
        b"",
        b"\x00",
        b"\xff\xff\xff",
        b"\x00\x09hello",
        b"\x00\x03\x00\x01data to the listener",
        b"\x00\x04\x00\x01",
        b"\x00\x05\x00\x00oops\x00",
        b"\x00\x06blksize\x00512\x00",
        &content(1400),
    ];
    for datagram in garbage {
        socket.send_to(datagram, server.addr).await.expect("send garbage");
    }
    // A truncated request is answered with error 4; it also shows the garbage was read.
    let (code, message) = error_reply(server.addr, b"\x00\x01f\x00oct").await;
    assert_eq!(code, 4);
    assert!(message.contains("malformed request"), "{message}");
    let (code, _) = error_reply(server.addr, b"\x00\x01\xff\xfe\x00octet\x00").await;
    assert_eq!(code, 4);

    let fetched = fetch(server.addr, "f", ClientOptions::default()).await.expect("a transfer after garbage");
    assert!(fetched.data == file);
    server.stop().await;
}

#[tokio::test]
async fn beyond_max_transfers_the_server_is_busy() {
    let dir = TestDir::new("tftp-busy");
    dir.write("f", &content(5000));
    let server = TestServer::start(dir, |config| config.max_transfers = 1).await;

    // A client that takes block 1 and never acknowledges it holds the only slot.
    let holder = UdpSocket::bind("127.0.0.1:0").await.expect("client socket");
    holder.send_to(&read_request("f", "octet"), server.addr).await.expect("send");
    let mut buffer = [0u8; 1024];
    let (len, _) = timeout(PATIENCE, holder.recv_from(&mut buffer)).await.expect("block 1").expect("receive");
    assert!(matches!(parse(&buffer[..len]), Ok(Packet::Data { block: 1, .. })));

    let (code, message) = error_reply(server.addr, &read_request("f", "octet")).await;
    assert_eq!((code, message.as_str()), (0, "server busy, retry"));
    // Shutdown ends the held transfer too.
    server.stop().await;
}

/// A client that acknowledges every block, but slowly, never times out:
/// the transfer time limit ends it, with an error packet, and frees its slot.
#[tokio::test]
async fn a_slow_but_alive_client_gives_up_its_slot_at_the_time_limit() {
    let dir = TestDir::new("tftp-slow");
    dir.write("f", &content(5000));
    let server = TestServer::start(dir, |config| {
        config.max_transfers = 1;
        config.max_transfer_time = Duration::from_secs(1);
    })
    .await;

    // Ten 512-byte blocks, each acknowledged 300 ms after it came (the
    // server would retransmit after 1 s): about 3 s in all.
    let slow = UdpSocket::bind("127.0.0.1:0").await.expect("client socket");
    slow.send_to(&read_request("f", "octet"), server.addr).await.expect("send");
    let mut buffer = [0u8; 1024];
    let (code, message) = loop {
        let (len, from) = timeout(PATIENCE, slow.recv_from(&mut buffer)).await.expect("a packet").expect("receive");
        match parse(&buffer[..len]) {
            Ok(Packet::Data { block, .. }) => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                slow.send_to(&Packet::Ack { block }.to_bytes(), from).await.expect("ack");
            }
            Ok(Packet::Error { code, message }) => break (code, message.into_owned()),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, 0);
    assert!(message.contains("time limit"), "{message}");
    // The slot is free again.
    let fetched = fetch(server.addr, "f", ClientOptions::default()).await.expect("a transfer after the slow one");
    assert_eq!(fetched.data.len(), 5000);
    server.stop().await;
}

#[tokio::test]
async fn serve_fails_for_a_missing_root() {
    let socket = bind("127.0.0.1:0".parse().expect("address")).await.expect("bind");
    let config = TftpConfig::new("/nonexistent/girder-tftp-root");
    let result = serve(socket, config, Arc::new(PxeMetrics::default()), CancellationToken::new()).await;
    let error = result.expect_err("a missing root is an error");
    assert!(error.to_string().contains("/nonexistent/girder-tftp-root"), "{error}");
}

#[tokio::test]
async fn bind_errors_name_the_address() {
    let taken = bind("127.0.0.1:0".parse().expect("address")).await.expect("bind");
    let addr = taken.local_addr().expect("address");
    let error = bind(addr).await.expect_err("the port is taken");
    assert!(error.to_string().contains(&addr.to_string()), "{error}");
}

/// Runs curl as a real TFTP client against the server.
fn curl(url: &str, output: &Path, extra: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new("curl");
    command.args(["-s", "-S", "--max-time", "30", "-o"]).arg(output).args(extra).arg(url);
    match command.output() {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            panic!(
                "curl is not installed; install it (Debian: apt-get install curl) to run the TFTP interoperability test"
            )
        }
        Err(error) => panic!("cannot run curl: {error}"),
    }
}

#[tokio::test]
async fn curl_downloads_byte_for_byte() {
    let dir = TestDir::new("tftp-curl");
    let file = content(1_048_576 + 1234);
    dir.write("ipxe.efi", &file);
    let server = TestServer::start(dir, |_| {}).await;
    let url = format!("tftp://{}/ipxe.efi", server.addr);

    for (name, extra) in [("blksize-1468", &["--tftp-blksize", "1468"][..]), ("default", &[][..])] {
        let output = server.dir.path().join(format!("out-{name}"));
        let (url, target) = (url.clone(), output.clone());
        let extra: Vec<&'static str> = extra.to_vec();
        let result = tokio::task::spawn_blocking(move || curl(&url, &target, &extra)).await.expect("curl task");
        assert!(result.status.success(), "curl ({name}) failed: {}", String::from_utf8_lossy(&result.stderr));
        let downloaded = std::fs::read(&output).expect("curl's output");
        assert!(downloaded == file, "curl ({name}) got {} bytes, want {}", downloaded.len(), file.len());
    }

    let missing = format!("tftp://{}/missing", server.addr);
    let target = server.dir.path().join("out-missing");
    let result = tokio::task::spawn_blocking(move || curl(&missing, &target, &[])).await.expect("curl task");
    assert!(!result.status.success(), "curl must fail for a missing file");
    server.wait_for_result("complete", 2).await;
    server.stop().await;
}
