//! The image checksum: what the spec expects and what the download hashes to.

use super::ImageError;
use crate::api::node::ChecksumType;
use sha2::Digest;

/// The expected digest, lowercase hex, checked for length and alphabet
/// before anything is downloaded.
pub(super) fn expected_digest(checksum: &str, kind: ChecksumType) -> Result<String, ImageError> {
    let (name, want) = match kind {
        ChecksumType::Sha256 => ("sha256", 64),
        ChecksumType::Sha512 => ("sha512", 128),
    };
    let hex = checksum.trim();
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ImageError::InvalidChecksum { detail: "it is not hexadecimal".into() });
    }
    if hex.len() != want {
        return Err(ImageError::InvalidChecksum {
            detail: format!("a {name} checksum has {want} hex digits, this one has {}", hex.len()),
        });
    }
    Ok(hex.to_ascii_lowercase())
}

/// A running hash of the image as served.
pub(super) enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub(super) fn new(kind: ChecksumType) -> Self {
        match kind {
            ChecksumType::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            ChecksumType::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    pub(super) fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// The digest, lowercase hex.
    pub(super) fn finish(self) -> String {
        match self {
            Hasher::Sha256(h) => hex(&h.finalize()),
            Hasher::Sha512(h) => hex(&h.finalize()),
        }
    }
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
