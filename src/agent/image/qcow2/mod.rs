//! qcow2 to raw, while the file streams past, in file order.
//!
//! The file is a set of regions: the header, the L1 table, L2 tables, data
//! clusters and compressed clusters. Each one becomes known when the table
//! that points to it has been read (the header points to the L1 table, the
//! L1 table to the L2 tables, those to the data). A region known before the
//! stream reaches it is simply waited for; its bytes are used as they pass,
//! data written straight to the target. That is the whole story for images
//! written by `qemu-img convert`, where tables precede what they map.
//!
//! A region learnt about after its bytes went past is *deferred*. The bytes
//! no known region claimed, and the last sector of every compressed cluster
//! (another compressed cluster, not known yet, may start inside it), are
//! offered to [`keep::Keep`], which stores the latest of them (a bounded
//! amount) and digests all of them per span. At
//! the end of the stream, deferred regions are served from the store when
//! it still holds them, else their spans are fetched again (with Range
//! requests), checked against the digests, and replayed; a replayed L2
//! table may defer more clusters, served in the next round.
//!
//! Memory: the L1 table (at most 32 MiB, qemu's limit too), region buffers
//! (an L2 table or compressed cluster each, at most 64 MiB in all), the
//! reorder store (`WriteOptions::qcow2_reorder_memory`), 48 bytes per MiB of
//! file for the span digests, and one entry per region known ahead of the
//! stream or deferred (at most 2^20 of those; contiguous clusters are one
//! region).

mod cluster;
pub(super) mod header;
mod keep;

use super::ImageError;
use super::target::Target;
use header::Header;
use keep::Keep;
use std::collections::BTreeMap;

/// Most regions known but not yet read (ahead of the stream or deferred).
const MAX_REGIONS: usize = 1 << 20;
/// Most bytes buffered for regions being read at once (L1 table apart).
const MAX_ACTIVE_BYTES: u64 = 64 << 20;
/// Rounds of re-fetching: L2 tables, then the data they map, then spare.
const MAX_ROUNDS: usize = 4;

/// Fetches bytes of the image file again.
pub(super) trait RangeSource {
    /// Delivers the bytes `[start, end)` to `sink`, in order.
    fn fetch(
        &mut self,
        start: u64,
        end: u64,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), ImageError>,
    ) -> Result<(), ImageError>;

    /// The error for bytes that came back different the second time.
    fn changed(&self, detail: String) -> ImageError;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    L1,
    /// An L2 table; `guest` is the first guest offset it maps.
    L2 {
        guest: u64,
    },
    /// Contiguous data clusters, mapped to contiguous guest clusters.
    Data {
        guest: u64,
    },
    Compressed {
        guest: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Region {
    start: u64,
    end: u64,
    kind: Kind,
}

impl Region {
    fn describe(&self) -> String {
        let what = match self.kind {
            Kind::L1 => "the L1 table",
            Kind::L2 { .. } => "an L2 table",
            Kind::Data { .. } => "a data cluster",
            Kind::Compressed { .. } => "a compressed cluster",
        };
        format!("{what} at file offset {}", self.start)
    }

    fn buffered(&self) -> bool {
        !matches!(self.kind, Kind::Data { .. })
    }
}

/// A region whose bytes are arriving.
struct Active {
    region: Region,
    buffer: Vec<u8>,
}

pub(super) struct Converter {
    head: Vec<u8>,
    header: Option<Header>,
    /// Bytes of the file dispatched so far (or the replay position).
    position: u64,
    /// Known at the end of the stream.
    file_size: Option<u64>,
    /// Known regions the stream has not reached, by start.
    ahead: BTreeMap<(u64, u64), Region>,
    next_id: u64,
    active: Vec<Active>,
    active_bytes: u64,
    deferred: Vec<Region>,
    /// Tables not read yet; the mapping is complete at zero.
    unread_tables: usize,
    streaming: bool,
    keep: Keep,
    cluster: cluster::Decompressor,
    refetched: u64,
}

impl Converter {
    /// `reorder_memory`: most bytes kept of unclaimed data.
    pub(super) fn new(reorder_memory: usize) -> Self {
        Converter {
            head: Vec::with_capacity(header::LEN),
            header: None,
            position: 0,
            file_size: None,
            ahead: BTreeMap::new(),
            next_id: 0,
            active: Vec::new(),
            active_bytes: 0,
            deferred: Vec::new(),
            unread_tables: 1,
            streaming: true,
            keep: Keep::new(reorder_memory),
            cluster: cluster::Decompressor::default(),
            refetched: 0,
        }
    }

    /// The virtual disk size, once the header is read.
    pub(super) fn virtual_size(&self) -> Option<u64> {
        self.header.as_ref().map(|h| h.virtual_size)
    }

    /// Bytes fetched again after the stream.
    pub(super) fn refetched(&self) -> u64 {
        self.refetched
    }

    /// The next bytes of the file, from `offset` (the bytes so far).
    pub(super) fn feed(&mut self, offset: u64, mut data: &[u8], target: &mut Target) -> Result<(), ImageError> {
        let mut offset = offset;
        if self.header.is_none() {
            let take = (header::LEN - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..take]);
            (offset, data) = (offset + take as u64, &data[take..]);
            self.position = offset;
            if self.head.len() == header::LEN {
                self.start(target)?;
            }
        }
        if !data.is_empty() {
            self.dispatch(offset, data, target)?;
        }
        Ok(())
    }

    /// The stream ended: finishes what it left open. Deferred regions
    /// remain for [`Converter::resolve`].
    pub(super) fn end_of_stream(&mut self, target: &mut Target) -> Result<(), ImageError> {
        if self.header.is_none() {
            self.start(target)?;
        }
        self.file_size = Some(self.position);
        self.streaming = false;
        self.keep.disable();
        for active in std::mem::take(&mut self.active) {
            self.finish_truncated(active, target)?;
        }
        if let Some(region) = self.ahead.values().next() {
            return Err(truncated(region));
        }
        Ok(())
    }

    /// Serves deferred regions: from the reorder store, else fetched again
    /// from `source`, span by span, each checked against its digest.
    pub(super) fn resolve(&mut self, source: &mut dyn RangeSource, target: &mut Target) -> Result<(), ImageError> {
        for _ in 0..MAX_ROUNDS {
            let mut fetch = Vec::new();
            while let Some(region) = self.deferred.pop() {
                let region = self.clip_to_file(region, target)?;
                if self.keep.holds(region.start, region.end) {
                    self.replay(region, target)?;
                } else {
                    fetch.push(region);
                }
            }
            if fetch.is_empty() {
                return Ok(());
            }
            self.refetch(fetch, source, target)?;
        }
        match self.deferred.first() {
            Some(region) => Err(format_error(format!(
                "{} is still unresolved after {MAX_ROUNDS} re-fetch rounds",
                region.describe()
            ))),
            None => Ok(()),
        }
    }

    fn start(&mut self, target: &mut Target) -> Result<(), ImageError> {
        let header = header::parse(&self.head).map_err(format_error)?;
        target.reserve(header.virtual_size)?;
        if header.l1_entries == 0 {
            self.unread_tables = 0;
            self.keep.disable();
        } else {
            let l1 = Region { start: header.l1_offset, end: header.l1_offset + header.l1_entries * 8, kind: Kind::L1 };
            self.want(l1)?;
        }
        self.header = Some(header);
        Ok(())
    }

    /// Hands `data`, the file's bytes from `offset`, to the regions they
    /// belong to, finishing each region at its last byte.
    fn dispatch(&mut self, offset: u64, data: &[u8], target: &mut Target) -> Result<(), ImageError> {
        let end = offset + data.len() as u64;
        let mut at = offset;
        while at < end {
            self.activate(at)?;
            let next_start = self.ahead.keys().next().map_or(u64::MAX, |&(start, _)| start);
            let next_end = self.active.iter().map(|a| a.region.end).min().unwrap_or(u64::MAX);
            let stop = end.min(next_start).min(next_end);
            let piece = &data[(at - offset) as usize..(stop - offset) as usize];
            if self.streaming {
                self.keep.observe(at, piece, self.active.is_empty());
            }
            for index in 0..self.active.len() {
                self.accept(index, at, piece, target)?;
            }
            self.position = stop;
            self.retire(stop, target)?;
            at = stop;
        }
        Ok(())
    }

    /// Starts the regions that begin at `at`; one that began before `at`
    /// missed bytes and is deferred.
    fn activate(&mut self, at: u64) -> Result<(), ImageError> {
        while let Some(entry) = self.ahead.first_entry() {
            if entry.key().0 > at {
                break;
            }
            let region = entry.remove();
            if region.start < at {
                self.deferred.push(region);
                continue;
            }
            let len = region.end - region.start;
            let buffered = if region.buffered() { len } else { 0 };
            if region.kind != Kind::L1 && self.active_bytes + buffered > MAX_ACTIVE_BYTES {
                return Err(format_error(format!(
                    "{} overlaps too many other clusters (more than {} MiB being read at once)",
                    region.describe(),
                    MAX_ACTIVE_BYTES >> 20
                )));
            }
            self.active_bytes += buffered;
            self.active.push(Active { region, buffer: Vec::with_capacity(buffered as usize) });
        }
        Ok(())
    }

    fn accept(&mut self, index: usize, at: u64, piece: &[u8], target: &mut Target) -> Result<(), ImageError> {
        let active = &mut self.active[index];
        match active.region.kind {
            Kind::Data { guest } => {
                let guest = guest + (at - active.region.start);
                write_guest(target, self.header.as_ref(), guest, piece)
            }
            _ => {
                active.buffer.extend_from_slice(piece);
                Ok(())
            }
        }
    }

    /// Finishes the regions that end at or before `at`, in file order (so
    /// compressed clusters sharing a last sector keep it once, whole).
    fn retire(&mut self, at: u64, target: &mut Target) -> Result<(), ImageError> {
        if self.active.iter().all(|a| a.region.end > at) {
            return Ok(());
        }
        let (mut done, active): (Vec<Active>, Vec<Active>) =
            std::mem::take(&mut self.active).into_iter().partition(|a| a.region.end <= at);
        self.active = active;
        done.sort_by_key(|a| a.region.start);
        for finished in done {
            if finished.region.buffered() {
                self.active_bytes -= finished.region.end - finished.region.start;
            }
            self.complete(finished.region, &finished.buffer, target)?;
        }
        Ok(())
    }

    /// Uses a region whose bytes are all there (`bytes` is empty for data,
    /// already written).
    fn complete(&mut self, region: Region, bytes: &[u8], target: &mut Target) -> Result<(), ImageError> {
        match region.kind {
            Kind::L1 => self.read_l1(bytes, target)?,
            Kind::L2 { guest } => self.read_l2(guest, bytes, target)?,
            Kind::Data { .. } => {}
            Kind::Compressed { guest } => {
                if self.streaming {
                    let tail_start = ((region.end - 1) & !511).max(region.start);
                    if let Some(tail) = bytes.get((tail_start - region.start) as usize..) {
                        self.keep.compressed_tail(tail_start, tail);
                    }
                }
                self.write_compressed(guest, bytes, target)?;
            }
        }
        if matches!(region.kind, Kind::L1 | Kind::L2 { .. }) {
            self.unread_tables -= 1;
            if self.unread_tables == 0 {
                self.keep.disable();
            }
        }
        Ok(())
    }

    fn read_l1(&mut self, table: &[u8], target: &mut Target) -> Result<(), ImageError> {
        let header = self.header.clone().ok_or_else(|| internal("L1 table read before the header"))?;
        let mut zeros = ZeroRun::default();
        for (index, entry) in table.chunks_exact(8).map(|e| header::be64(e, 0)).enumerate() {
            let guest = index as u64 * header.l2_span();
            if entry & L1_RESERVED != 0 {
                return Err(format_error(format!("L1 entry {index} has reserved bits set ({entry:#018x})")));
            }
            let offset = entry & OFFSET_MASK;
            if offset == 0 {
                if let Some((start, len)) = zeros.extend(guest, header.l2_span()) {
                    zero_guest(target, &header, start, len)?;
                }
                continue;
            }
            self.check_host_offset(offset, &header, "an L2 table")?;
            self.unread_tables += 1;
            self.want(Region { start: offset, end: offset + header.cluster_size(), kind: Kind::L2 { guest } })?;
        }
        match zeros.0 {
            Some((start, len)) => zero_guest(target, &header, start, len),
            None => Ok(()),
        }
    }

    fn read_l2(&mut self, guest_base: u64, table: &[u8], target: &mut Target) -> Result<(), ImageError> {
        let header = self.header.clone().ok_or_else(|| internal("L2 table read before the header"))?;
        let cluster_size = header.cluster_size();
        let mut zeros = ZeroRun::default();
        let mut data = DataRun::default();
        for (index, entry) in table.chunks_exact(8).map(|e| header::be64(e, 0)).enumerate() {
            let guest = guest_base + index as u64 * cluster_size;
            if guest >= header.virtual_size {
                break;
            }
            match l2_entry(entry, &header)
                .map_err(|e| format_error(format!("the L2 entry of guest offset {guest} {e}")))?
            {
                L2Entry::Zero => {
                    if let Some((start, len)) = zeros.extend(guest, cluster_size) {
                        zero_guest(target, &header, start, len)?;
                    }
                }
                L2Entry::Data(host) => {
                    self.check_host_offset(host, &header, "a data cluster")?;
                    if let Some(region) = data.extend(host, guest, cluster_size) {
                        self.want(region)?;
                    }
                }
                L2Entry::Compressed { start, end } => {
                    self.check_host_offset(start, &header, "a compressed cluster")?;
                    self.want(Region { start, end, kind: Kind::Compressed { guest } })?;
                }
            }
        }
        if let Some((start, len)) = zeros.0 {
            zero_guest(target, &header, start, len)?;
        }
        if let Some(region) = data.0 {
            self.want(region)?;
        }
        Ok(())
    }

    fn check_host_offset(&self, offset: u64, header: &Header, what: &str) -> Result<(), ImageError> {
        if offset < header.cluster_size() {
            return Err(format_error(format!("{what} is mapped at file offset {offset}, inside the header cluster")));
        }
        Ok(())
    }

    /// Waits for `region`, or defers it when the stream is past its start.
    fn want(&mut self, region: Region) -> Result<(), ImageError> {
        if self.ahead.len() + self.deferred.len() >= MAX_REGIONS {
            return Err(format_error(format!(
                "more than {MAX_REGIONS} clusters are mapped ahead of their data or behind it; \
                 rewrite the image with qemu-img convert"
            )));
        }
        if region.start >= self.position {
            self.ahead.insert((region.start, self.next_id), region);
            self.next_id += 1;
        } else {
            self.deferred.push(region);
        }
        Ok(())
    }

    fn write_compressed(&mut self, guest: u64, bytes: &[u8], target: &mut Target) -> Result<(), ImageError> {
        let header = self.header.as_ref().ok_or_else(|| internal("cluster read before the header"))?;
        let cluster = self
            .cluster
            .decompress(header.compression, bytes, header.cluster_size() as usize)
            .map_err(|e| format_error(format!("the compressed cluster for guest offset {guest} {e}")))?;
        write_guest(target, Some(header), guest, cluster)
    }

    /// A region the stream ended inside of: a data cluster or a compressed
    /// cluster may end past the end of the file (what is missing reads as
    /// zeros, as qemu reads it); a table may not.
    fn finish_truncated(&mut self, active: Active, target: &mut Target) -> Result<(), ImageError> {
        let file_size = self.position;
        match active.region.kind {
            Kind::Data { guest } => {
                let written = file_size - active.region.start;
                let header = self.header.clone().ok_or_else(|| internal("data read before the header"))?;
                zero_guest(target, &header, guest + written, active.region.end - file_size)
            }
            Kind::Compressed { guest } => self.write_compressed(guest, &active.buffer, target),
            Kind::L1 | Kind::L2 { .. } => Err(truncated(&active.region)),
        }
    }

    /// `region` cut at the end of the file; the cut part of a data region
    /// reads as zeros. A table must be whole.
    fn clip_to_file(&self, region: Region, target: &mut Target) -> Result<Region, ImageError> {
        let file_size = self.file_size.unwrap_or(u64::MAX);
        if region.start >= file_size
            || (region.kind == Kind::L1 || matches!(region.kind, Kind::L2 { .. })) && region.end > file_size
        {
            return Err(truncated(&region));
        }
        if region.end <= file_size {
            return Ok(region);
        }
        if let (Kind::Data { guest }, Some(header)) = (region.kind, self.header.as_ref()) {
            zero_guest(target, header, guest + (file_size - region.start), region.end - file_size)?;
        }
        Ok(Region { end: file_size, ..region })
    }

    /// Replays `region` from the reorder store, as if it streamed past now,
    /// a piece at a time (a data region may be large).
    fn replay(&mut self, region: Region, target: &mut Target) -> Result<(), ImageError> {
        self.position = region.start;
        self.ahead.insert((region.start, self.next_id), region);
        self.next_id += 1;
        let mut piece = Vec::new();
        let mut at = region.start;
        while at < region.end {
            let end = region.end.min(at + keep::SPAN);
            piece.clear();
            self.keep.copy(at, end, &mut piece);
            self.dispatch(at, &piece, target)?;
            at = end;
        }
        self.defer_ahead();
        Ok(())
    }

    /// Regions a replay learnt about wait for the next round.
    fn defer_ahead(&mut self) {
        let ahead = std::mem::take(&mut self.ahead);
        self.deferred.extend(ahead.into_values());
    }

    fn refetch(
        &mut self,
        regions: Vec<Region>,
        source: &mut dyn RangeSource,
        target: &mut Target,
    ) -> Result<(), ImageError> {
        let mut spans = Vec::new();
        for region in &regions {
            let covering = self.keep.covering(region.start, region.end).ok_or_else(|| {
                format_error(format!(
                    "{} is mapped after it streamed past and was neither kept nor digested, \
                     so it cannot be fetched again safely",
                    region.describe()
                ))
            })?;
            spans.extend(covering);
        }
        spans.sort_unstable();
        spans.dedup();
        for region in regions {
            self.ahead.insert((region.start, self.next_id), region);
            self.next_id += 1;
        }
        for run in contiguous_runs(&spans, self.keep.spans()) {
            self.refetch_run(run, source, target)?;
        }
        // Regions learnt during this round that reach past what was fetched
        // start again in the next one.
        for active in std::mem::take(&mut self.active) {
            self.deferred.push(active.region);
        }
        self.active_bytes = 0;
        self.defer_ahead();
        Ok(())
    }

    /// Fetches the spans `run` (contiguous in the file) and replays each
    /// one once its digest matches.
    fn refetch_run(
        &mut self,
        run: std::ops::Range<usize>,
        source: &mut dyn RangeSource,
        target: &mut Target,
    ) -> Result<(), ImageError> {
        let spans: Vec<keep::Span> = self.keep.spans()[run].to_vec();
        let (Some(first), Some(last)) = (spans.first().copied(), spans.last().copied()) else { return Ok(()) };
        tracing::info!(
            from = first.start,
            to = last.end(),
            "fetching qcow2 clusters again that preceded their mapping"
        );
        let mut next = 0;
        let mut buffer = Vec::with_capacity(keep::SPAN as usize);
        let mut differs = None;
        let fetched = source.fetch(first.start, last.end(), &mut |mut bytes: &[u8]| {
            while !bytes.is_empty() {
                let span = spans.get(next).ok_or_else(|| internal("re-fetch delivered more than asked"))?;
                let n = ((span.len as usize) - buffer.len()).min(bytes.len());
                buffer.extend_from_slice(&bytes[..n]);
                bytes = &bytes[n..];
                if buffer.len() as u64 == span.len {
                    if !span.matches(&buffer) {
                        differs = Some(*span);
                        return Err(internal("re-fetched bytes differ"));
                    }
                    self.refetched += span.len;
                    self.position = span.start;
                    self.dispatch(span.start, &buffer, target)?;
                    buffer.clear();
                    next += 1;
                }
            }
            Ok(())
        });
        if let Some(span) = differs {
            let detail = format!("its bytes {}..{} came back different when fetched again", span.start, span.end());
            return Err(source.changed(detail));
        }
        fetched?;
        if next < spans.len() {
            return Err(internal("re-fetch delivered less than asked"));
        }
        Ok(())
    }
}

/// Runs of consecutive span indices whose spans touch.
fn contiguous_runs(indices: &[usize], spans: &[keep::Span]) -> Vec<std::ops::Range<usize>> {
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    for &index in indices {
        match runs.last_mut() {
            Some(run) if run.end == index && spans[index - 1].end() == spans[index].start => run.end = index + 1,
            _ => runs.push(index..index + 1),
        }
    }
    runs
}

const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L1_RESERVED: u64 = 0x7f00_0000_0000_01ff;
const L2_RESERVED: u64 = 0x3f00_0000_0000_01fe;
const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;
const ZERO: u64 = 1;

enum L2Entry {
    Zero,
    Data(u64),
    /// The bytes holding the compressed data: from its offset to the end of
    /// its last 512-byte sector.
    Compressed {
        start: u64,
        end: u64,
    },
}

/// What one L2 entry says about its guest cluster.
fn l2_entry(entry: u64, header: &Header) -> Result<L2Entry, String> {
    let cluster_size = header.cluster_size();
    if entry & COMPRESSED != 0 {
        let offset_bits = 62 - (header.cluster_bits - 8);
        let start = entry & ((1 << offset_bits) - 1);
        let sectors = ((entry & !(COPIED | COMPRESSED)) >> offset_bits) + 1;
        return Ok(L2Entry::Compressed { start, end: (start & !511) + sectors * 512 });
    }
    if entry & L2_RESERVED != 0 {
        return Err(format!("has reserved bits set ({entry:#018x})"));
    }
    if entry & ZERO != 0 {
        if header.version < 3 {
            return Err(format!("sets the zero bit, which version 2 does not have ({entry:#018x})"));
        }
        return Ok(L2Entry::Zero);
    }
    let host = entry & OFFSET_MASK;
    match host {
        0 if entry & COPIED != 0 => Err("maps host offset 0, which only external data files may".into()),
        0 => Ok(L2Entry::Zero),
        h if !h.is_multiple_of(cluster_size) => Err(format!("maps file offset {h}, which is not a cluster boundary")),
        h => Ok(L2Entry::Data(h)),
    }
}

/// Consecutive zero guest clusters, zeroed with one call.
#[derive(Default)]
struct ZeroRun(Option<(u64, u64)>);

impl ZeroRun {
    /// Adds a zero cluster; returns the previous run when it does not
    /// continue it.
    fn extend(&mut self, guest: u64, len: u64) -> Option<(u64, u64)> {
        match &mut self.0 {
            Some((start, run)) if *start + *run == guest => {
                *run += len;
                None
            }
            _ => self.0.replace((guest, len)),
        }
    }
}

/// Data clusters contiguous both in the file and in the guest: one region.
#[derive(Default)]
struct DataRun(Option<Region>);

impl DataRun {
    /// Adds a data cluster; returns the previous region when it does not
    /// continue it.
    fn extend(&mut self, host: u64, guest: u64, len: u64) -> Option<Region> {
        if let Some(region) = &mut self.0
            && let Kind::Data { guest: first } = region.kind
            && region.end == host
            && first + (region.end - region.start) == guest
        {
            region.end += len;
            return None;
        }
        self.0.replace(Region { start: host, end: host + len, kind: Kind::Data { guest } })
    }
}

/// Writes guest bytes, cut at the virtual size (the last cluster may
/// reach past it).
fn write_guest(target: &mut Target, header: Option<&Header>, guest: u64, data: &[u8]) -> Result<(), ImageError> {
    let size = header.map_or(0, |h| h.virtual_size);
    let len = size.saturating_sub(guest).min(data.len() as u64) as usize;
    if len == 0 {
        return Ok(());
    }
    target.write_at(guest, &data[..len])
}

fn zero_guest(target: &mut Target, header: &Header, guest: u64, len: u64) -> Result<(), ImageError> {
    let len = header.virtual_size.saturating_sub(guest).min(len);
    if len == 0 {
        return Ok(());
    }
    target.zero(guest, len)
}

fn truncated(region: &Region) -> ImageError {
    format_error(format!("the file ends before {}", region.describe()))
}

fn format_error(detail: String) -> ImageError {
    ImageError::Format { format: "qcow2", detail }
}

fn internal(detail: &str) -> ImageError {
    ImageError::Internal { detail: format!("qcow2 conversion: {detail}") }
}
