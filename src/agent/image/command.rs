//! `girder write-image`: what the agent does to a disk when it installs an
//! image, from a shell — to try an image URL and checksum before a node gets
//! them, or to write a disk by hand. It prints the same figures the agent
//! puts in a node's status (download, write, verify), plus the process's
//! peak memory, as one JSON line on stdout.

use super::{WriteOptions, write_image};
use crate::api::node::{ChecksumType, ImageFormat, ImageSpec};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct WriteImageArgs {
    /// The image's http:// or https:// URL.
    #[arg(long)]
    url: String,
    /// Checksum of the file as served, hex.
    #[arg(long)]
    checksum: String,
    /// Algorithm of --checksum.
    #[arg(long, value_enum, default_value = "sha256")]
    checksum_type: ChecksumArg,
    /// Image format; a raw image may be gzip- or zstd-compressed.
    #[arg(long, value_enum, default_value = "raw")]
    format: FormatArg,
    /// The block device, or an existing regular file (an empty one grows to
    /// the image's size), to write.
    target: PathBuf,
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum ChecksumArg {
    Sha256,
    Sha512,
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum FormatArg {
    Raw,
    Qcow2,
}

pub fn main(args: WriteImageArgs) -> Result<(), Box<dyn std::error::Error>> {
    crate::operator::init_logging(crate::operator::LogFormat::Text);
    let image = ImageSpec {
        url: args.url,
        checksum: args.checksum,
        checksum_type: match args.checksum_type {
            ChecksumArg::Sha256 => ChecksumType::Sha256,
            ChecksumArg::Sha512 => ChecksumType::Sha512,
        },
        format: match args.format {
            FormatArg::Raw => ImageFormat::Raw,
            FormatArg::Qcow2 => ImageFormat::Qcow2,
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(write_image(&image, &args.target, &WriteOptions::default(), &|_| {}))?;
    let summary = serde_json::json!({
        "target": args.target.display().to_string(),
        "downloadedBytes": report.downloaded_bytes,
        "writtenBytes": report.written_bytes,
        "downloadMilliseconds": report.download_time.as_millis() as u64,
        "writeBusyMilliseconds": report.write_busy_time.as_millis() as u64,
        "finishMilliseconds": report.finish_time.as_millis() as u64,
        "resumes": report.resumes,
        "refetchedBytes": report.refetched_bytes,
        "digest": report.digest,
        "peakRssKiB": crate::agent::peak_rss_kib(),
    });
    println!("{summary}");
    Ok(())
}
