//! The download: resumes, misbehaving servers, HTTP errors, checksums.

use super::*;

const SIZE: usize = 3 << 20;

async fn image_server(behaviour: Behaviour) -> (Server, Vec<u8>) {
    let data = disk_contents(SIZE, 1);
    let server = Server::start(vec![("disk.raw", data.clone())], behaviour).await;
    (server, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_is_resumed_where_it_stopped() {
    let (server, data) =
        image_server(Behaviour { cut_once_at: Some(SIZE as u64 / 2 + 12345), ..Behaviour::default() }).await;
    let dir = TempDir::new();
    let target = dir.empty_file("disk");
    let report = write(&spec(&server.url("disk.raw"), &data, ImageFormat::Raw), &target, &quick()).await.unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), data);
    assert_eq!(report.resumes, 1);
    assert_eq!(report.downloaded_bytes, SIZE as u64);
    assert_eq!(report.digest, sha256_hex(&data));
    let seen = server.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let resumed_at = seen[1].range.as_deref().expect("the second request asks for a range");
    let start: u64 = resumed_at.trim_start_matches("bytes=").trim_end_matches('-').parse().unwrap();
    assert!(start > 0 && start <= SIZE as u64 / 2 + 12345, "{resumed_at}");
    assert_eq!(seen[1].if_range.as_deref(), Some("\"v1\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_ignoring_ranges_is_read_past_what_was_received() {
    let behaviour = Behaviour {
        cut_once_at: Some(SIZE as u64 / 3),
        ignore_range: true,
        piece: Some(50_000),
        ..Behaviour::default()
    };
    let (server, data) = image_server(behaviour).await;
    let dir = TempDir::new();
    let target = dir.empty_file("disk");
    let report = write(&spec(&server.url("disk.raw"), &data, ImageFormat::Raw), &target, &quick()).await.unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), data);
    assert_eq!((report.resumes, report.downloaded_bytes), (1, SIZE as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_without_length_is_resumed_too() {
    let behaviour = Behaviour { cut_once_at: Some(SIZE as u64 / 2), no_length: true, ..Behaviour::default() };
    let (server, data) = image_server(behaviour).await;
    let dir = TempDir::new();
    let target = dir.empty_file("disk");
    let report = write(&spec(&server.url("disk.raw"), &data, ImageFormat::Raw), &target, &quick()).await.unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), data);
    assert_eq!(report.resumes, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_answer_starting_elsewhere_is_refused() {
    let behaviour = Behaviour { cut_once_at: Some(SIZE as u64 / 2), wrong_range_start: true, ..Behaviour::default() };
    let (server, data) = image_server(behaviour).await;
    let dir = TempDir::new();
    let error = write(&spec(&server.url("disk.raw"), &data, ImageFormat::Raw), &dir.empty_file("disk"), &quick())
        .await
        .unwrap_err();
    assert_eq!(error.reason(), "ImageUnreachable", "{error}");
    assert!(error.to_string().contains("with bytes from"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_during_the_download_is_refused() {
    let behaviour = Behaviour { cut_once_at: Some(SIZE as u64 / 2), new_etag_later: true, ..Behaviour::default() };
    let (server, data) = image_server(behaviour).await;
    let dir = TempDir::new();
    let error = write(&spec(&server.url("disk.raw"), &data, ImageFormat::Raw), &dir.empty_file("disk"), &quick())
        .await
        .unwrap_err();
    assert_eq!(error.reason(), "ImageChanged", "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_file_names_the_url_and_the_status() {
    let (server, data) = image_server(Behaviour::default()).await;
    let dir = TempDir::new();
    let url = server.url("nothing.raw");
    let error = write(&spec(&url, &data, ImageFormat::Raw), &dir.empty_file("disk"), &quick()).await.unwrap_err();
    assert_eq!(error.reason(), "ImageUnreachable");
    let message = error.to_string();
    assert!(message.contains(&url) && message.contains("404"), "{message}");
    assert_eq!(server.seen().len(), 1, "a 404 is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_then_reported() {
    let behaviour = Behaviour { status: Some(StatusCode::SERVICE_UNAVAILABLE), ..Behaviour::default() };
    let (server, data) = image_server(behaviour).await;
    let dir = TempDir::new();
    let error = write(&spec(&server.url("disk.raw"), &data, ImageFormat::Raw), &dir.empty_file("disk"), &quick())
        .await
        .unwrap_err();
    assert_eq!(error.reason(), "ImageUnreachable");
    assert!(error.to_string().contains("503"), "{error}");
    assert_eq!(server.seen().len(), 5, "five attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_named_without_credentials() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let url = format!("http://agent:s3cret@127.0.0.1:{port}/disk.raw");
    let dir = TempDir::new();
    let error = write(&spec(&url, b"x", ImageFormat::Raw), &dir.empty_file("disk"), &quick()).await.unwrap_err();
    assert_eq!(error.reason(), "ImageUnreachable");
    let message = error.to_string();
    assert!(message.contains(&format!("127.0.0.1:{port}/disk.raw")), "{message}");
    assert!(!message.contains("s3cret") && !format!("{error:?}").contains("s3cret"), "{message}");
    assert!(message.contains("5 attempts"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checksum_mismatch_is_reported_with_both_digests() {
    let (server, data) = image_server(Behaviour::default()).await;
    let dir = TempDir::new();
    let mut spec = spec(&server.url("disk.raw"), &data, ImageFormat::Raw);
    let expected = "ab".repeat(32);
    spec.checksum = expected.to_uppercase();
    let error = write(&spec, &dir.empty_file("disk"), &quick()).await.unwrap_err();
    assert_eq!(error.reason(), "ImageChecksumMismatch");
    match error {
        ImageError::ChecksumMismatch { expected: e, actual } => {
            assert_eq!(e, expected);
            assert_eq!(actual, sha256_hex(&data));
        }
        other => panic!("{other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sha512_checksums_and_uppercase_hex_are_accepted() {
    let (server, data) = image_server(Behaviour::default()).await;
    let dir = TempDir::new();
    let target = dir.empty_file("disk");
    let digest = super::super::checksum::hex(&sha2::Sha512::digest(&data)).to_uppercase();
    let spec = ImageSpec {
        url: server.url("disk.raw"),
        checksum: digest.clone(),
        checksum_type: ChecksumType::Sha512,
        format: ImageFormat::Raw,
    };
    let report = write(&spec, &target, &quick()).await.unwrap();
    assert_eq!(report.digest, digest.to_lowercase());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checksum_of_the_wrong_length_is_refused_before_downloading() {
    let (server, data) = image_server(Behaviour::default()).await;
    let dir = TempDir::new();
    let mut spec = spec(&server.url("disk.raw"), &data, ImageFormat::Raw);
    spec.checksum_type = ChecksumType::Sha512;
    let error = write(&spec, &dir.empty_file("disk"), &quick()).await.unwrap_err();
    assert_eq!(error.reason(), "InvalidImageChecksum", "{error}");
    assert!(server.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_reported_up_to_the_whole_file() {
    let (server, data) = image_server(Behaviour { piece: Some(100_000), ..Behaviour::default() }).await;
    let dir = TempDir::new();
    let reports = Mutex::new(Vec::new());
    let progress = |p: Progress| reports.lock().unwrap().push(p);
    let spec = spec(&server.url("disk.raw"), &data, ImageFormat::Raw);
    let target = dir.empty_file("disk");
    // Options are copied at the call: a temporary will do.
    let writing = write_image(&spec, &target, &quick(), &progress);
    writing.await.unwrap();
    let reports = reports.into_inner().unwrap();
    assert!(reports.len() >= 2 && reports.len() <= 10, "{reports:?}");
    assert_eq!(reports.last(), Some(&Progress { downloaded_bytes: SIZE as u64, total_bytes: Some(SIZE as u64) }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_does_not_exist_is_not_created() {
    let (server, data) = image_server(Behaviour::default()).await;
    let dir = TempDir::new();
    let target = dir.path("missing");
    let error = write(&spec(&server.url("disk.raw"), &data, ImageFormat::Raw), &target, &quick()).await.unwrap_err();
    assert_eq!(error.reason(), "DiskUnusable", "{error}");
    assert!(!target.exists());
}
