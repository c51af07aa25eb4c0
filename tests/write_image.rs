//! `girder write-image`, the agent's image writer from a shell: an image
//! served over HTTP lands on an empty file with its checksum verified and the
//! figures printed as JSON; a wrong checksum or a missing target says so and
//! exits non-zero.

mod support;

use sha2::Digest;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output};
use support::TempDir;

/// Serves `body` to every GET on a loopback port until the test ends.
fn serve(body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut request = [0u8; 4096];
            let _ = conn.read(&mut request);
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = conn.write_all(head.as_bytes()).and_then(|()| conn.write_all(&body));
        }
    });
    format!("http://{addr}/disk.img")
}

fn write_image(url: &str, checksum: &str, target: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_girder"))
        .args(["write-image", "--url", url, "--checksum", checksum])
        .arg(target)
        .env("NO_COLOR", "1")
        .output()
        .expect("run girder write-image")
}

#[test]
fn an_image_is_written_verified_and_reported() {
    let dir = TempDir::new("girder-write-image");
    let image: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let digest: String = sha2::Sha256::digest(&image).iter().map(|b| format!("{b:02x}")).collect();
    let url = serve(image.clone());
    let target = dir.0.join("disk.raw");
    std::fs::File::create(&target).unwrap();

    let out = write_image(&url, &digest, &target);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&target).unwrap(), image, "the file holds the image");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(report["writtenBytes"], image.len() as u64);
    assert_eq!(report["digest"], digest.as_str());
    assert!(report["peakRssKiB"].as_u64().is_some_and(|kib| kib > 0), "{report}");

    let wrong = "0".repeat(64);
    let out = write_image(&url, &wrong, &target);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains(&wrong) && stderr.contains(&digest), "{stderr}");

    let out = write_image(&url, &digest, &dir.0.join("missing"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("missing"), "{stderr}");
}
