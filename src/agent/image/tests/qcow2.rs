//! qcow2 images made by qemu-img, and crafted ones (out of order,
//! malformed), checked against `qemu-img convert -O raw`.

use super::super::qcow2::{Converter, RangeSource};
use super::super::target::Target;
use super::*;
use std::io::Write;

/// Compressible disk contents (low-entropy data, zeros, holes), so that
/// `qemu-img convert -c` really compresses.
fn compressible(len: usize, seed: u64) -> Vec<u8> {
    let mut disk = disk_contents(len, seed);
    for byte in &mut disk {
        *byte &= 0x0f;
    }
    disk
}

/// Converts `raw` with `qemu-img convert -O qcow2 ARGS`, returning the
/// qcow2 file and qemu-img's own conversion of it back to raw.
fn make_qcow2(dir: &TempDir, raw: &[u8], args: &[&str]) -> (Vec<u8>, Vec<u8>) {
    let source = dir.path("source.raw");
    std::fs::write(&source, raw).unwrap();
    let image = dir.path("image.qcow2");
    let back = dir.path("back.raw");
    let mut convert = vec!["convert", "-f", "raw", "-O", "qcow2"];
    convert.extend_from_slice(args);
    convert.extend([source.to_str().unwrap(), image.to_str().unwrap()]);
    qemu_img(&convert);
    qemu_img(&["convert", "-f", "qcow2", "-O", "raw", image.to_str().unwrap(), back.to_str().unwrap()]);
    (std::fs::read(image).unwrap(), std::fs::read(back).unwrap())
}

/// qemu-img's raw conversion of a qcow2 file.
fn qemu_raw(dir: &TempDir, qcow2: &[u8]) -> Vec<u8> {
    let image = dir.path("crafted.qcow2");
    let back = dir.path("crafted.raw");
    std::fs::write(&image, qcow2).unwrap();
    qemu_img(&["convert", "-f", "qcow2", "-O", "raw", image.to_str().unwrap(), back.to_str().unwrap()]);
    std::fs::read(back).unwrap()
}

async fn write_qcow2(
    qcow2: &[u8],
    target: &Path,
    behaviour: Behaviour,
    options: &WriteOptions,
) -> (Result<WriteReport, ImageError>, Server) {
    let server = Server::start(vec![("image.qcow2", qcow2.to_vec())], behaviour).await;
    let result = write(&spec(&server.url("image.qcow2"), qcow2, ImageFormat::Qcow2), target, options).await;
    (result, server)
}

/// Converts with qemu-img, writes through the converter onto a disk full
/// of 0xff (so zeros must really be written), and compares.
async fn round_trip(raw: &[u8], args: &[&str], behaviour: Behaviour) -> WriteReport {
    round_trip_with(raw, args, behaviour, &quick()).await
}

async fn round_trip_with(raw: &[u8], args: &[&str], behaviour: Behaviour, options: &WriteOptions) -> WriteReport {
    let dir = TempDir::new();
    let (qcow2, expected) = make_qcow2(&dir, raw, args);
    assert!(expected == raw, "qemu-img round trip");
    let target = dir.disk("disk", raw.len() + 8192, 0xff);
    let (report, _) = write_qcow2(&qcow2, &target, behaviour, options).await;
    let report = report.unwrap_or_else(|e| panic!("qemu-img convert {args:?}: {e}"));
    let written = std::fs::read(&target).unwrap();
    assert!(written[..raw.len()] == expected[..], "qemu-img convert {args:?}: contents differ");
    assert!(written[raw.len()..].iter().all(|&b| b == 0xff), "past the virtual disk is untouched");
    assert_eq!(report.written_bytes, raw.len() as u64);
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_default_images_convert_in_odd_pieces() {
    let raw = disk_contents(6 << 20, 10);
    let report = round_trip(&raw, &[], Behaviour { piece: Some(77_777), ..Behaviour::default() }).await;
    assert_eq!(report.refetched_bytes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zlib_compressed_images_convert() {
    let raw = compressible(6 << 20, 11);
    round_trip(&raw, &["-c"], Behaviour::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_compressed_images_convert() {
    let raw = compressible(6 << 20, 12);
    round_trip(&raw, &["-c", "-o", "compression_type=zstd"], Behaviour { piece: Some(4099), ..Behaviour::default() })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_compressed_clusters_that_precede_their_l2_table_convert() {
    // With 4 KiB clusters, qemu packs the first compressed cluster of each
    // new L2 table into the previous cluster: before the table.
    let raw = compressible(6 << 20, 13);
    for compression in ["zlib", "zstd"] {
        let args = ["-c", "-o", &format!("cluster_size=4096,compression_type={compression}")];
        // Kept in memory: the end of the previous compressed cluster and
        // what followed it.
        let report = round_trip(&raw, &args, Behaviour::default()).await;
        assert_eq!(report.refetched_bytes, 0, "{compression}");
        // Fetched again and checked.
        let options = WriteOptions { qcow2_reorder_memory: 0, ..quick() };
        let report = round_trip_with(&raw, &args, Behaviour::default(), &options).await;
        assert!(report.refetched_bytes > 0, "{compression}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_clusters_with_many_l1_entries_convert() {
    // 512-byte clusters: an L2 table maps 32 KiB, most L1 entries are empty.
    let mut raw = vec![0u8; (3 << 20) + 1536];
    let data = disk_contents(256 << 10, 14);
    raw[1 << 20..(1 << 20) + data.len()].copy_from_slice(&data);
    let end = raw.len();
    raw[end - 700..].fill(7);
    round_trip(&raw, &["-o", "cluster_size=512"], Behaviour::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_2_images_with_large_clusters_convert() {
    let raw = disk_contents((5 << 20) + 4096, 15);
    round_trip(&raw, &["-o", "compat=0.10,cluster_size=2M"], Behaviour::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preallocated_metadata_with_zero_clusters_converts() {
    // Every L2 table precedes all data; zero ranges carry the zero flag.
    let raw = disk_contents(4 << 20, 16);
    round_trip(&raw, &["-o", "preallocation=metadata"], Behaviour::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_target_file_grows_to_the_virtual_size() {
    let raw = disk_contents(3 << 20, 17);
    let dir = TempDir::new();
    let (qcow2, expected) = make_qcow2(&dir, &raw, &[]);
    let target = dir.empty_file("disk");
    let (report, _) = write_qcow2(&qcow2, &target, Behaviour::default(), &quick()).await;
    report.unwrap();
    assert!(std::fs::read(&target).unwrap() == expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtual_disk_larger_than_the_target_is_refused_before_writing() {
    let raw = disk_contents(3 << 20, 18);
    let dir = TempDir::new();
    let (qcow2, _) = make_qcow2(&dir, &raw, &[]);
    let target = dir.disk("disk", 2 << 20, 0xaa);
    let (report, _) = write_qcow2(&qcow2, &target, Behaviour::default(), &quick()).await;
    let error = report.unwrap_err();
    assert_eq!(error.reason(), "ImageTooLarge");
    assert!(error.to_string().contains(&(3 << 20).to_string()), "{error}");
    assert!(std::fs::read(&target).unwrap().iter().all(|&b| b == 0xaa));
}

/// A hand-made image whose data mostly precedes the L2 table mapping it:
/// 4 KiB clusters, 64 KiB virtual disk. File clusters: 0 header, 1 L1,
/// 2 data of guest 3, 3 data of guest 0, 4 two compressed clusters (guests
/// 5 and 6, sharing a sector), 5 the L2 table, 6 data of guest 8 (after its
/// table), 7 refcount table, 8 refcount block. Guest 7 has the zero flag,
/// the others are unallocated.
fn out_of_order_image() -> (Vec<u8>, Vec<u8>) {
    const C: usize = 4096;
    let mut rng = Rng::new(20);
    let mut guest = vec![0u8; 16 * C];
    let mut file = vec![0u8; 9 * C];
    file[..104].copy_from_slice(&header_v3(12, guest.len() as u64, C as u64, 1, 7 * C as u64, 1));
    put64(&mut file, C, (5 * C as u64) | 1 << 63);
    let mut data = |guest: &mut Vec<u8>, index: usize, at: usize| {
        let bytes = rng.bytes(C);
        guest[index * C..(index + 1) * C].copy_from_slice(&bytes);
        file[at..at + C].copy_from_slice(&bytes);
    };
    data(&mut guest, 3, 2 * C);
    data(&mut guest, 0, 3 * C);
    data(&mut guest, 8, 6 * C);
    let mut l2 = vec![0u64; C / 8];
    l2[3] = (2 * C as u64) | 1 << 63;
    l2[0] = (3 * C as u64) | 1 << 63;
    l2[8] = (6 * C as u64) | 1 << 63;
    l2[7] = 1;
    let mut at = 4 * C;
    for index in [5, 6] {
        let cluster: Vec<u8> = (0..C).map(|i| (i / 7 + index) as u8).collect();
        guest[index * C..(index + 1) * C].copy_from_slice(&cluster);
        let compressed = deflate(&cluster);
        file[at..at + compressed.len()].copy_from_slice(&compressed);
        l2[index] = compressed_entry(at, compressed.len());
        at += compressed.len();
    }
    assert!(at < 5 * C);
    for (index, entry) in l2.iter().enumerate() {
        put64(&mut file, 5 * C + index * 8, *entry);
    }
    put64(&mut file, 7 * C, 8 * C as u64);
    for cluster in 0..9 {
        file[8 * C + cluster * 2 + 1] = 1;
    }
    (file, guest)
}

/// Raw deflate, as qcow2 compressed clusters hold it.
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut deflate = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    deflate.write_all(data).unwrap();
    deflate.finish().unwrap()
}

/// The L2 entry of a compressed cluster at `at` of `len` bytes (4 KiB
/// clusters).
fn compressed_entry(at: usize, len: usize) -> u64 {
    let sectors = ((at + len - 1) >> 9) - (at >> 9) + 1;
    1 << 62 | ((sectors as u64 - 1) << 58) | at as u64
}

/// Two compressed clusters sharing a last sector, the first mapped by a
/// table before them, the second by a table right after them: that
/// second table claims the bytes following the shared sector. 4 KiB
/// clusters, 4 MiB virtual disk (two L2 tables). File clusters: 0 header,
/// 1 L1, 2 first L2 (guest 0 is A), 3 A then B, 4 second L2 (guest 512
/// is B), 5 refcount table, 6 refcount block.
fn shared_sector_image() -> (Vec<u8>, Vec<u8>) {
    const C: usize = 4096;
    let mut guest = vec![0u8; 1024 * C];
    let mut file = vec![0u8; 7 * C];
    file[..104].copy_from_slice(&header_v3(12, guest.len() as u64, C as u64, 2, 5 * C as u64, 1));
    put64(&mut file, C, (2 * C as u64) | 1 << 63);
    put64(&mut file, C + 8, (4 * C as u64) | 1 << 63);
    let a: Vec<u8> = Rng::new(26).bytes(C).iter().map(|b| b & 3).collect();
    let b: Vec<u8> = (0..C).map(|i| (i % 3) as u8).collect();
    guest[..C].copy_from_slice(&a);
    guest[512 * C..513 * C].copy_from_slice(&b);
    let (a, b) = (deflate(&a), deflate(&b));
    let b_at = 4 * C - b.len() - 10;
    let a_at = b_at - a.len();
    assert!(!b_at.is_multiple_of(512) && (b_at - 1) / 512 == (4 * C - 1) / 512, "B starts inside A's last sector");
    file[a_at..b_at].copy_from_slice(&a);
    file[b_at..b_at + b.len()].copy_from_slice(&b);
    put64(&mut file, 2 * C, compressed_entry(a_at, a.len()));
    put64(&mut file, 4 * C, compressed_entry(b_at, b.len()));
    put64(&mut file, 5 * C, 6 * C as u64);
    for cluster in 0..7 {
        file[6 * C + cluster * 2 + 1] = 1;
    }
    (file, guest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_cluster_inside_the_last_sector_of_another_is_kept_or_fetched_again() {
    let (qcow2, guest) = shared_sector_image();
    let dir = TempDir::new();
    assert!(qemu_raw(&dir, &qcow2) == guest, "qemu-img reads the crafted image as intended");
    for reorder in [1 << 20, 0] {
        let target = dir.disk("disk", guest.len(), 0xff);
        let options = WriteOptions { qcow2_reorder_memory: reorder, ..quick() };
        let (report, _) = write_qcow2(&qcow2, &target, Behaviour::default(), &options).await;
        let report = report.unwrap_or_else(|e| panic!("reorder memory {reorder}: {e}"));
        assert_eq!(report.refetched_bytes > 0, reorder == 0);
        assert!(std::fs::read(&target).unwrap() == guest, "reorder memory {reorder}");
    }
}

/// A version 3 header of 104 bytes.
fn header_v3(
    cluster_bits: u32,
    size: u64,
    l1_offset: u64,
    l1_size: u32,
    refcount_offset: u64,
    rc_clusters: u32,
) -> Vec<u8> {
    let mut header = vec![0u8; 104];
    header[..4].copy_from_slice(b"QFI\xfb");
    header[4..8].copy_from_slice(&3u32.to_be_bytes());
    header[20..24].copy_from_slice(&cluster_bits.to_be_bytes());
    header[24..32].copy_from_slice(&size.to_be_bytes());
    header[36..40].copy_from_slice(&l1_size.to_be_bytes());
    header[40..48].copy_from_slice(&l1_offset.to_be_bytes());
    header[48..56].copy_from_slice(&refcount_offset.to_be_bytes());
    header[56..60].copy_from_slice(&rc_clusters.to_be_bytes());
    header[96..100].copy_from_slice(&4u32.to_be_bytes());
    header[100..104].copy_from_slice(&104u32.to_be_bytes());
    header
}

fn put64(file: &mut [u8], at: usize, value: u64) {
    file[at..at + 8].copy_from_slice(&value.to_be_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_before_its_l2_table_is_kept_in_memory() {
    let (qcow2, guest) = out_of_order_image();
    let dir = TempDir::new();
    assert!(qemu_raw(&dir, &qcow2) == guest, "qemu-img reads the crafted image as intended");
    let target = dir.disk("disk", guest.len(), 0xff);
    let (report, _) =
        write_qcow2(&qcow2, &target, Behaviour { piece: Some(1000), ..Behaviour::default() }, &quick()).await;
    assert_eq!(report.unwrap().refetched_bytes, 0);
    assert!(std::fs::read(&target).unwrap() == guest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_before_its_l2_table_is_fetched_again_without_reorder_memory() {
    let (qcow2, guest) = out_of_order_image();
    let dir = TempDir::new();
    let target = dir.disk("disk", guest.len(), 0xff);
    let options = WriteOptions { qcow2_reorder_memory: 0, ..quick() };
    let (report, server) = write_qcow2(&qcow2, &target, Behaviour::default(), &options).await;
    let report = report.unwrap();
    assert!(report.refetched_bytes > 0);
    assert!(std::fs::read(&target).unwrap() == guest);
    let ranges: Vec<_> = server.seen().into_iter().filter_map(|s| s.range).collect();
    assert!(!ranges.is_empty() && ranges.iter().all(|r| r.starts_with("bytes=") && !r.ends_with('-')), "{ranges:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_is_fetched_again_from_a_server_ignoring_ranges() {
    let (qcow2, guest) = out_of_order_image();
    let dir = TempDir::new();
    let target = dir.disk("disk", guest.len(), 0xff);
    let options = WriteOptions { qcow2_reorder_memory: 0, ..quick() };
    let (report, _) =
        write_qcow2(&qcow2, &target, Behaviour { ignore_range: true, ..Behaviour::default() }, &options).await;
    report.unwrap();
    assert!(std::fs::read(&target).unwrap() == guest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_fetched_again_must_be_what_the_checksum_covered() {
    let (qcow2, guest) = out_of_order_image();
    let dir = TempDir::new();
    let options = WriteOptions { qcow2_reorder_memory: 0, ..quick() };
    let behaviour = Behaviour { corrupt_later: true, ..Behaviour::default() };
    let (report, _) = write_qcow2(&qcow2, &dir.disk("disk", guest.len(), 0), behaviour, &options).await;
    let error = report.unwrap_err();
    assert_eq!(error.reason(), "ImageChanged", "{error}");
}

/// A qemu-img image with one header field changed.
fn patched(patch: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let dir = TempDir::new();
    let (mut qcow2, _) = make_qcow2(&dir, &disk_contents(1 << 20, 21), &[]);
    patch(&mut qcow2);
    qcow2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_headers_are_format_errors() {
    let dir = TempDir::new();
    let (whole, _) = make_qcow2(&dir, &disk_contents(1 << 20, 22), &[]);
    let (extended, _) = make_qcow2(&dir, &disk_contents(1 << 20, 22), &["-o", "extended_l2=on"]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated header", whole[..50].to_vec(), "header"),
        ("truncated file", whole[..whole.len() / 2].to_vec(), "file ends before"),
        ("cluster_bits 40", patched(|f| f[20..24].copy_from_slice(&40u32.to_be_bytes())), "cluster_bits"),
        ("cluster_bits 8", patched(|f| f[20..24].copy_from_slice(&8u32.to_be_bytes())), "cluster_bits"),
        ("huge L1", patched(|f| f[36..40].copy_from_slice(&u32::MAX.to_be_bytes())), "L1 table"),
        ("short L1", patched(|f| f[36..40].copy_from_slice(&0u32.to_be_bytes())), "L1 table"),
        ("huge size", patched(|f| f[24..32].copy_from_slice(&(1u64 << 62).to_be_bytes())), "L1 table"),
        (
            "absurd L1 offset",
            patched(|f| f[40..48].copy_from_slice(&(u64::MAX - 0xffff).to_be_bytes())),
            "L1 table offset",
        ),
        ("backing file", patched(|f| f[8..16].copy_from_slice(&512u64.to_be_bytes())), "backing file"),
        ("encrypted", patched(|f| f[32..36].copy_from_slice(&1u32.to_be_bytes())), "encrypted"),
        ("dirty", patched(|f| f[79] |= 1), "dirty"),
        ("corrupt", patched(|f| f[79] |= 2), "corrupt"),
        ("external data file", patched(|f| f[79] |= 4), "external data file"),
        ("unknown feature", patched(|f| f[72] |= 0x80), "incompatible features"),
        ("version 4", patched(|f| f[4..8].copy_from_slice(&4u32.to_be_bytes())), "version 4"),
        ("not qcow2", vec![0x55; 4096], "magic"),
        ("extended L2", extended, "subclusters"),
    ];
    for (name, qcow2, words) in cases {
        let target = dir.disk("disk", 2 << 20, 0);
        let (report, _) = write_qcow2(&qcow2, &target, Behaviour::default(), &quick()).await;
        let error = report.expect_err(name);
        assert_eq!(error.reason(), "ImageFormat", "{name}: {error}");
        assert!(error.to_string().contains(words), "{name}: {error}");
    }
}

/// Serves re-fetches from memory.
struct Memory<'a>(&'a [u8]);

impl RangeSource for Memory<'_> {
    fn fetch(
        &mut self,
        start: u64,
        end: u64,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), ImageError>,
    ) -> Result<(), ImageError> {
        let bytes = self
            .0
            .get(start as usize..end as usize)
            .ok_or_else(|| ImageError::Internal { detail: "past the end".into() })?;
        sink(bytes)
    }

    fn changed(&self, detail: String) -> ImageError {
        ImageError::Changed { url: "memory".into(), detail }
    }
}

/// Converts in memory, without HTTP.
fn convert(qcow2: &[u8], target: &Path, piece: usize, reorder: usize) -> Result<(), ImageError> {
    let mut target = Target::open(target)?;
    let mut converter = Converter::new(reorder);
    for (index, chunk) in qcow2.chunks(piece).enumerate() {
        converter.feed((index * piece) as u64, chunk, &mut target)?;
    }
    converter.end_of_stream(&mut target)?;
    converter.resolve(&mut Memory(qcow2), &mut target)
}

#[test]
fn corrupted_images_never_panic() {
    let dir = TempDir::new();
    let (clean, _) = make_qcow2(&dir, &compressible(512 << 10, 23), &["-c", "-o", "cluster_size=4096"]);
    let (plain, _) = make_qcow2(&dir, &disk_contents(512 << 10, 24), &["-o", "cluster_size=512"]);
    let mut rng = Rng::new(25);
    for round in 0..150 {
        let mut qcow2 = if round % 2 == 0 { clean.clone() } else { plain.clone() };
        for _ in 0..(1 + rng.next() % 8) {
            // Mostly the metadata near the start, sometimes anywhere.
            let span = if rng.next().is_multiple_of(4) { qcow2.len() } else { 40 << 10 };
            let at = (rng.next() as usize) % span.min(qcow2.len());
            qcow2[at] = rng.next() as u8;
        }
        let cut = if round % 5 == 0 { (rng.next() as usize) % qcow2.len() } else { qcow2.len() };
        let target = dir.disk("disk", 1 << 20, 0);
        let _ = convert(&qcow2[..cut], &target, 1 + (rng.next() as usize % 70_000), (rng.next() % 3) as usize * 4096);
    }
}

#[test]
fn the_crafted_image_converts_in_memory_with_any_piece_size() {
    let (qcow2, guest) = out_of_order_image();
    let dir = TempDir::new();
    for (piece, reorder) in [(1, 1 << 20), (511, 0), (4096, 0), (5000, 8192), (1 << 20, 0)] {
        let target = dir.disk("disk", guest.len(), 0xff);
        convert(&qcow2, &target, piece, reorder).unwrap_or_else(|e| panic!("piece {piece}, reorder {reorder}: {e}"));
        assert!(std::fs::read(&target).unwrap() == guest, "piece {piece}, reorder {reorder}");
    }
}
