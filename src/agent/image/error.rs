//! Why writing an image failed, in words an operator can act on.

use std::io;

/// Why [`super::write_image`] failed. Download errors name the image URL
/// (never with the credentials of its userinfo), disk errors the target.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image URL {url} cannot be used: {detail}")]
    InvalidUrl { url: String, detail: String },

    #[error("image checksum cannot be used: {detail}")]
    InvalidChecksum { detail: String },

    #[error("cannot download {url}: {detail}")]
    Unreachable { url: String, detail: String },

    #[error("{url} answered HTTP {status}; check the URL and the image server")]
    Http { url: String, status: u16 },

    #[error("{url} changed on the server during the download ({detail}); write the image again")]
    Changed { url: String, detail: String },

    #[error(
        "image checksum mismatch: expected {expected}, the download has {actual}; the image or its checksum is wrong"
    )]
    ChecksumMismatch { expected: String, actual: String },

    #[error("the image is not a usable {format} image: {detail}")]
    Format { format: &'static str, detail: String },

    #[error(
        "the image needs {}{image_bytes} bytes but {target} holds {target_bytes} bytes; \
         use a larger disk or a smaller image",
        if *at_least { "at least " } else { "" }
    )]
    TooLarge { target: String, image_bytes: u64, at_least: bool, target_bytes: u64 },

    #[error("cannot use {target} as the target disk: {detail}")]
    TargetUnusable { target: String, detail: String },

    #[error("writing {target} failed at byte {offset}: {source}")]
    DiskWrite {
        target: String,
        offset: u64,
        #[source]
        source: io::Error,
    },

    #[error("flushing {target} to stable storage failed: {source}")]
    DiskSync {
        target: String,
        #[source]
        source: io::Error,
    },

    #[error("image writer failed internally: {detail}")]
    Internal { detail: String },
}

impl ImageError {
    /// A stable CamelCase reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            ImageError::InvalidUrl { .. } => "InvalidImageURL",
            ImageError::InvalidChecksum { .. } => "InvalidImageChecksum",
            ImageError::Unreachable { .. } | ImageError::Http { .. } => "ImageUnreachable",
            ImageError::Changed { .. } => "ImageChanged",
            ImageError::ChecksumMismatch { .. } => "ImageChecksumMismatch",
            ImageError::Format { .. } => "ImageFormat",
            ImageError::TooLarge { .. } => "ImageTooLarge",
            ImageError::TargetUnusable { .. } => "DiskUnusable",
            ImageError::DiskWrite { .. } | ImageError::DiskSync { .. } => "DiskWriteFailed",
            ImageError::Internal { .. } => "InternalError",
        }
    }
}
