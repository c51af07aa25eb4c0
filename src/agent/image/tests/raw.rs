//! Raw images: plain, gzip, zstd; sizes.

use super::*;

const SIZE: usize = 5 << 20;

/// `data` compressed by `tool` (gzip or zstd, from Debian packages of the
/// same names), as two concatenated members/frames when `halves`.
fn compressed(tool: &str, data: &[u8], dir: &TempDir, halves: bool) -> Vec<u8> {
    let parts: Vec<&[u8]> = if halves { vec![&data[..data.len() / 3], &data[data.len() / 3..]] } else { vec![data] };
    let mut out = Vec::new();
    for (index, part) in parts.iter().enumerate() {
        let path = dir.path(&format!("part{index}"));
        std::fs::write(&path, part).unwrap();
        let path = path.to_str().unwrap();
        out.extend(run(tool, tool, &["-c", "-q", path]));
    }
    out
}

async fn write_served(image: &[u8], target: &Path) -> Result<WriteReport, ImageError> {
    let server = Server::start(vec![("image", image.to_vec())], Behaviour::default()).await;
    write(&spec(&server.url("image"), image, ImageFormat::Raw), target, &quick()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_image_is_written_byte_for_byte_zeros_included() {
    let data = disk_contents(SIZE, 2);
    let dir = TempDir::new();
    let target = dir.disk("disk", SIZE + 4096, 0xaa);
    let report = write_served(&data, &target).await.unwrap();
    let written = std::fs::read(&target).unwrap();
    assert!(written[..SIZE] == data[..], "the image reads back");
    assert!(written[SIZE..].iter().all(|&b| b == 0xaa), "the rest of the disk is untouched");
    assert_eq!((report.downloaded_bytes, report.written_bytes, report.resumes), (SIZE as u64, SIZE as u64, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_image_of_several_members_is_decompressed() {
    let data = disk_contents(SIZE, 3);
    let dir = TempDir::new();
    let gzip = compressed("gzip", &data, &dir, true);
    let target = dir.empty_file("disk");
    let report = write_served(&gzip, &target).await.unwrap();
    assert!(std::fs::read(&target).unwrap() == data);
    assert_eq!((report.downloaded_bytes, report.written_bytes), (gzip.len() as u64, SIZE as u64));
    assert_eq!(report.digest, sha256_hex(&gzip), "the checksum is of the file as served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zstd_image_of_several_frames_is_decompressed() {
    let data = disk_contents(SIZE, 4);
    let dir = TempDir::new();
    let mut zstd = compressed("zstd", &data[..SIZE / 2], &dir, false);
    // A skippable frame between the two data frames.
    zstd.extend_from_slice(&0x184d_2a50u32.to_le_bytes());
    zstd.extend_from_slice(&5u32.to_le_bytes());
    zstd.extend_from_slice(b"skip!");
    zstd.extend(compressed("zstd", &data[SIZE / 2..], &dir, false));
    let target = dir.empty_file("disk");
    let report = write_served(&zstd, &target).await.unwrap();
    assert!(std::fs::read(&target).unwrap() == data);
    assert_eq!(report.written_bytes, SIZE as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_gzip_image_is_a_format_error() {
    let data = disk_contents(SIZE, 5);
    let dir = TempDir::new();
    let mut gzip = compressed("gzip", &data, &dir, false);
    let middle = gzip.len() / 2;
    gzip[middle..middle + 64].fill(0x55);
    let error = write_served(&gzip, &dir.empty_file("disk")).await.unwrap_err();
    assert_eq!(error.reason(), "ImageFormat", "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_image_larger_than_the_disk_is_refused_before_writing() {
    let data = disk_contents(SIZE, 6);
    let dir = TempDir::new();
    let target = dir.disk("disk", SIZE - 512, 0xaa);
    let error = write_served(&data, &target).await.unwrap_err();
    assert_eq!(error.reason(), "ImageTooLarge");
    let message = error.to_string();
    assert!(message.contains(&SIZE.to_string()) && message.contains(&(SIZE - 512).to_string()), "{message}");
    assert!(!message.contains("at least"), "the size is exact: {message}");
    assert!(std::fs::read(&target).unwrap().iter().all(|&b| b == 0xaa), "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_image_larger_than_the_disk_stops_at_the_end_of_the_disk() {
    let data = disk_contents(SIZE, 7);
    let dir = TempDir::new();
    let gzip = compressed("gzip", &data, &dir, false);
    let error = write_served(&gzip, &dir.disk("disk", SIZE / 2, 0)).await.unwrap_err();
    assert_eq!(error.reason(), "ImageTooLarge", "{error}");
    assert!(error.to_string().contains("at least"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zstd_frame_stating_a_size_larger_than_the_disk_is_refused_before_writing() {
    let data = disk_contents(SIZE, 8);
    let dir = TempDir::new();
    let zstd = compressed("zstd", &data, &dir, false);
    let target = dir.disk("disk", SIZE / 2, 0xaa);
    let error = write_served(&zstd, &target).await.unwrap_err();
    assert_eq!(error.reason(), "ImageTooLarge", "{error}");
    assert!(std::fs::read(&target).unwrap().iter().all(|&b| b == 0xaa), "nothing was written");
}
