//! Compressed clusters: raw deflate (compression type 0) or a zstd frame
//! (type 1), each decompressing to exactly one cluster. The bytes after
//! the compressed data up to the end of its last sector are ignored, and
//! nothing beyond one cluster is ever produced, whatever the input claims.

use super::header::Compression;
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};
use std::io::Read;

/// The largest zstd window accepted in a cluster: a frame asking for more
/// is refused rather than allocated (qemu's frames are far smaller).
const ZSTD_MAX_WINDOW: u64 = 32 << 20;

#[derive(Default)]
pub(super) struct Decompressor {
    inflate: Option<flate2::Decompress>,
    zstd: Option<FrameDecoder>,
    cluster: Vec<u8>,
}

impl Decompressor {
    /// The cluster `input` decompresses to. The error completes a sentence
    /// about the cluster.
    pub(super) fn decompress(
        &mut self,
        compression: Compression,
        input: &[u8],
        cluster_size: usize,
    ) -> Result<&[u8], String> {
        self.cluster.resize(cluster_size, 0);
        let produced = match compression {
            Compression::Deflate => self.inflate(input)?,
            Compression::Zstd => self.unzstd(input)?,
        };
        if produced != cluster_size {
            return Err(format!("decompresses to {produced} bytes instead of a {cluster_size}-byte cluster"));
        }
        Ok(&self.cluster)
    }

    fn inflate(&mut self, input: &[u8]) -> Result<usize, String> {
        let inflate = self.inflate.get_or_insert_with(|| flate2::Decompress::new(false));
        inflate.reset(false);
        inflate
            .decompress(input, &mut self.cluster, flate2::FlushDecompress::Finish)
            .map_err(|e| format!("is not valid deflate data: {e}"))?;
        Ok(inflate.total_out() as usize)
    }

    fn unzstd(&mut self, mut input: &[u8]) -> Result<usize, String> {
        let decoder = self.zstd.get_or_insert_with(|| {
            let mut decoder = FrameDecoder::new();
            decoder.set_max_window_size(ZSTD_MAX_WINDOW);
            decoder
        });
        decoder.reset(&mut input).map_err(|e| format!("is not a valid zstd frame: {e}"))?;
        let mut filled = 0;
        while filled < self.cluster.len() {
            let n = decoder.read(&mut self.cluster[filled..]).map_err(|e| format!("is not valid zstd data: {e}"))?;
            filled += n;
            if n > 0 {
                continue;
            }
            if decoder.is_finished() {
                break;
            }
            let wanted = self.cluster.len() - filled;
            decoder
                .decode_blocks(&mut input, BlockDecodingStrategy::UptoBytes(wanted))
                .map_err(|e| format!("is not valid zstd data: {e}"))?;
        }
        Ok(filled)
    }
}
