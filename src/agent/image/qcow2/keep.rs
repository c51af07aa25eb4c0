//! What the converter keeps of bytes whose use is not known yet when they
//! stream past: the most recent ones themselves (bounded, oldest dropped
//! first), and for all of them a SHA-256 per span of at most 1 MiB, so that
//! bytes fetched again later can be checked to be the ones the image
//! checksum covered.
//!
//! A span starts at the first such byte and runs over every byte after it
//! (known or not) until it is 1 MiB long: one span per MiB of file at most,
//! 48 bytes each, whatever the layout.

use sha2::{Digest, Sha256};
use std::collections::VecDeque;

/// The longest span, and the longest stored segment.
pub(super) const SPAN: u64 = 1 << 20;

pub(super) struct Keep {
    /// Most bytes stored at once.
    limit: usize,
    /// Stored bytes: ascending, non-overlapping segments.
    segments: VecDeque<(u64, Vec<u8>)>,
    stored: usize,
    /// End of the last byte stored: nothing below it is stored twice.
    stored_end: u64,
    spans: Vec<Span>,
    open: Option<OpenSpan>,
    /// Off once every mapping is known: nothing unknown can matter then.
    enabled: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Span {
    pub(super) start: u64,
    pub(super) len: u64,
    digest: [u8; 32],
}

impl Span {
    pub(super) fn end(&self) -> u64 {
        self.start + self.len
    }

    pub(super) fn matches(&self, bytes: &[u8]) -> bool {
        bytes.len() as u64 == self.len && digest(Sha256::new_with_prefix(bytes)) == self.digest
    }
}

struct OpenSpan {
    start: u64,
    len: u64,
    hasher: Sha256,
}

impl Keep {
    pub(super) fn new(limit: usize) -> Self {
        Keep {
            limit,
            segments: VecDeque::new(),
            stored: 0,
            stored_end: 0,
            spans: Vec::new(),
            open: None,
            enabled: true,
        }
    }

    /// Sees the next bytes of the file; `unknown` when no known structure
    /// claimed them.
    pub(super) fn observe(&mut self, offset: u64, bytes: &[u8], unknown: bool) {
        if !self.enabled || bytes.is_empty() {
            return;
        }
        if unknown {
            self.store(offset, bytes);
            if self.open.is_none() {
                self.open_span(offset);
            }
        }
        self.hash(offset, bytes, unknown);
    }

    /// Keeps the last sector of a compressed cluster that just ended (its
    /// bytes end at the current position): another compressed cluster,
    /// unknown yet, may start inside it.
    pub(super) fn compressed_tail(&mut self, start: u64, bytes: &[u8]) {
        if self.enabled {
            self.store(start, bytes);
            self.cover_tail(start, bytes);
        }
    }

    /// Stops keeping (every mapping is known); what is kept stays.
    pub(super) fn disable(&mut self) {
        self.enabled = false;
        self.close_span();
    }

    /// Whether all of `[start, end)` is stored.
    pub(super) fn holds(&self, start: u64, end: u64) -> bool {
        let mut at = start;
        for (s, data) in self.segments.range(self.first_segment(start)..) {
            if at >= end || *s > at {
                break;
            }
            at = at.max(s + data.len() as u64);
        }
        at >= end
    }

    /// Appends the stored bytes of `[start, end)` to `out`; only what is
    /// stored, so check [`Keep::holds`] first.
    pub(super) fn copy(&self, start: u64, end: u64, out: &mut Vec<u8>) {
        let mut at = start;
        for (s, data) in self.segments.range(self.first_segment(start)..) {
            if at >= end || *s > at {
                break;
            }
            let from = (at - s) as usize;
            let to = ((end - s) as usize).min(data.len());
            if from < to {
                out.extend_from_slice(&data[from..to]);
                at = s + to as u64;
            }
        }
    }

    /// The index of the segment holding `offset`, or of the next one.
    fn first_segment(&self, offset: u64) -> usize {
        self.segments.partition_point(|(s, _)| *s <= offset).saturating_sub(1)
    }

    /// The spans that together cover `[start, end)`, if some do.
    pub(super) fn covering(&self, start: u64, end: u64) -> Option<std::ops::Range<usize>> {
        let first = self.spans.partition_point(|s| s.end() <= start);
        let mut at = start;
        let mut last = first;
        while at < end {
            let span = self.spans.get(last)?;
            if span.start > at {
                return None;
            }
            at = span.end();
            last += 1;
        }
        Some(first..last)
    }

    pub(super) fn spans(&self) -> &[Span] {
        &self.spans
    }

    fn store(&mut self, offset: u64, bytes: &[u8]) {
        let skip = self.stored_end.saturating_sub(offset).min(bytes.len() as u64) as usize;
        let (offset, bytes) = (offset + skip as u64, &bytes[skip..]);
        if bytes.is_empty() || self.limit == 0 {
            return;
        }
        match self.segments.back_mut() {
            Some((s, data)) if *s + data.len() as u64 == offset && (data.len() as u64) < SPAN => {
                data.extend_from_slice(bytes)
            }
            _ => self.segments.push_back((offset, bytes.to_vec())),
        }
        self.stored += bytes.len();
        self.stored_end = offset + bytes.len() as u64;
        while self.stored > self.limit {
            let Some((_, dropped)) = self.segments.pop_front() else { break };
            self.stored -= dropped.len();
        }
    }

    fn open_span(&mut self, start: u64) {
        self.open = Some(OpenSpan { start, len: 0, hasher: Sha256::new() });
    }

    /// Makes the spans cover a compressed tail, which streamed past before
    /// it was known to matter, and what follows it.
    fn cover_tail(&mut self, start: u64, tail: &[u8]) {
        if self.open.is_some() {
            return; // It started before the tail, so it hashed the tail already.
        }
        let from = self.spans.last().map_or(0, Span::end).max(start);
        let Some(uncovered) = tail.get((from - start) as usize..) else { return };
        self.open =
            Some(OpenSpan { start: from, len: uncovered.len() as u64, hasher: Sha256::new_with_prefix(uncovered) });
    }

    fn hash(&mut self, mut offset: u64, mut bytes: &[u8], unknown: bool) {
        while !bytes.is_empty() {
            let Some(open) = self.open.as_mut() else { return };
            let n = (SPAN - open.len).min(bytes.len() as u64) as usize;
            open.hasher.update(&bytes[..n]);
            open.len += n as u64;
            if open.len == SPAN {
                self.close_span();
                if unknown && n < bytes.len() {
                    self.open_span(offset + n as u64);
                }
            }
            offset += n as u64;
            bytes = &bytes[n..];
        }
    }

    fn close_span(&mut self) {
        if let Some(open) = self.open.take().filter(|open| open.len > 0) {
            self.spans.push(Span { start: open.start, len: open.len, digest: digest(open.hasher) });
        }
    }
}

fn digest(hasher: Sha256) -> [u8; 32] {
    hasher.finalize().into()
}
