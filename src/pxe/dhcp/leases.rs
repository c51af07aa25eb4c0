//! Dynamic leases (nodes without a static allocation, and discovery).
//!
//! In memory: MAC -> lease and address -> MAC, so one address never belongs
//! to two MACs. On disk: an append-only journal with one line per change,
//! `lease <mac> <addr> <expires unix seconds>` (expiry 0: forgotten), where
//! the last line about a MAC or an address wins. It is replayed and
//! compacted when the store opens.

use crate::pxe::model::{Ipv4Range, Mac};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write as _};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// How long an offered address is held for the client's REQUEST.
pub const OFFER_HOLD_SECONDS: u64 = 60;
/// How long a DECLINEd address (someone else uses it) is left alone.
pub const QUARANTINE_SECONDS: u64 = 600;
/// Expired leases are remembered this long, so a returning client gets its
/// address back; compaction forgets older ones.
const RETAIN_EXPIRED_SECONDS: u64 = 7 * 24 * 3600;
/// The most addresses one allocation looks at, so a huge range that is all
/// excluded cannot stall the server.
const MAX_SCAN: u64 = 1 << 20;
pub const JOURNAL_FILE: &str = "dhcp-leases";

pub fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub addr: Ipv4Addr,
    /// Unix seconds. An offer holds the address until then too.
    pub expires: u64,
    /// ACKed (an offer is not).
    pub bound: bool,
}

/// Where dynamic addresses may come from.
pub struct Pool<'a> {
    pub ranges: &'a [Ipv4Range],
    /// Addresses never leased: static allocations, the network, broadcast,
    /// gateway and server addresses.
    pub excluded: &'a dyn Fn(Ipv4Addr) -> bool,
}

impl Pool<'_> {
    pub fn eligible(&self, addr: Ipv4Addr) -> bool {
        self.ranges.iter().any(|r| r.contains(addr)) && !(self.excluded)(addr)
    }
}

#[derive(Default)]
pub struct LeaseStore {
    leases: HashMap<Mac, Lease>,
    holders: HashMap<Ipv4Addr, Mac>,
    quarantine: HashMap<Ipv4Addr, u64>,
    /// Next offset to try, by range start: allocation is O(1) amortised.
    cursors: HashMap<Ipv4Addr, u64>,
    journal: Option<Journal>,
}

struct Journal {
    path: PathBuf,
    file: File,
    lines: usize,
    line: String,
    failing: bool,
}

impl LeaseStore {
    /// A store that persists nothing (tests, or no state directory).
    pub fn in_memory() -> LeaseStore {
        LeaseStore::default()
    }

    /// Opens (creating) `<dir>/dhcp-leases`, replays it and compacts it.
    pub fn open(dir: &Path, now: SystemTime) -> io::Result<LeaseStore> {
        fs::create_dir_all(dir)?;
        let path = dir.join(JOURNAL_FILE);
        let mut store = LeaseStore::default();
        match File::open(&path) {
            Ok(file) => store.replay(BufReader::new(file), &path)?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        let now = unix_seconds(now);
        store.leases.retain(|_, lease| lease.expires.saturating_add(RETAIN_EXPIRED_SECONDS) > now);
        let leases = &store.leases;
        store.holders.retain(|_, mac| leases.contains_key(mac));
        let file = write_compacted(&path, &store.leases)?;
        store.journal =
            Some(Journal { path, file, lines: store.leases.len(), line: String::with_capacity(64), failing: false });
        Ok(store)
    }

    fn replay(&mut self, reader: impl BufRead, path: &Path) -> io::Result<()> {
        for (number, line) in reader.split(b'\n').enumerate() {
            let line = line?;
            let Some((mac, addr, expires)) = parse_line(&line) else {
                tracing::warn!(
                    file = %path.display(),
                    line = number + 1,
                    "skipping a corrupt line in the DHCP lease journal"
                );
                continue;
            };
            if expires == 0 {
                self.forget(mac, addr);
            } else {
                self.take(mac, Lease { addr, expires, bound: true });
            }
        }
        Ok(())
    }

    pub fn lease(&self, mac: &Mac) -> Option<Lease> {
        self.leases.get(mac).copied()
    }

    /// Who holds `addr` (offered or leased, expired or not).
    pub fn holder(&self, addr: Ipv4Addr) -> Option<Mac> {
        self.holders.get(&addr).copied()
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Whether `mac` may have `addr`: nobody else holds it unexpired and it
    /// is not quarantined.
    fn free_for(&self, addr: Ipv4Addr, mac: Mac, now: u64) -> bool {
        if self.quarantine.get(&addr).is_some_and(|until| *until > now) {
            return false;
        }
        match self.holders.get(&addr) {
            None => true,
            Some(holder) if *holder == mac => true,
            Some(holder) => self.leases.get(holder).is_none_or(|lease| lease.expires <= now),
        }
    }

    /// Picks an address for `mac` and holds it for `OFFER_HOLD_SECONDS`:
    /// its previous address (even expired) when still free, else the one
    /// it asked for, else the next free one. None: the pool is exhausted.
    pub fn offer(&mut self, mac: Mac, requested: Option<Ipv4Addr>, pool: &Pool, now: SystemTime) -> Option<Ipv4Addr> {
        let now = unix_seconds(now);
        let usable = |addr: Ipv4Addr| pool.eligible(addr) && self.free_for(addr, mac, now);
        let previous = self.leases.get(&mac).map(|lease| lease.addr).filter(|addr| usable(*addr));
        let addr = match previous.or_else(|| requested.filter(|addr| usable(*addr))) {
            Some(addr) => addr,
            None => self.scan(mac, pool, now)?,
        };
        let hold = now + OFFER_HOLD_SECONDS;
        let lease = match self.leases.get(&mac) {
            Some(current) if current.addr == addr => {
                Lease { addr, expires: current.expires.max(hold), bound: current.bound && current.expires > now }
            }
            _ => Lease { addr, expires: hold, bound: false },
        };
        self.take(mac, lease);
        Some(addr)
    }

    fn scan(&mut self, mac: Mac, pool: &Pool, now: u64) -> Option<Ipv4Addr> {
        let mut budget = MAX_SCAN;
        for range in pool.ranges.iter().filter(|r| !r.is_empty()) {
            let len = range.len();
            let start = u64::from(u32::from(range.start));
            let cursor = self.cursors.get(&range.start).copied().unwrap_or(0) % len;
            for step in 0..len.min(budget) {
                let offset = (cursor + step) % len;
                // start + offset <= end, so it fits in a u32.
                let addr = Ipv4Addr::from((start + offset) as u32);
                if !(pool.excluded)(addr) && self.free_for(addr, mac, now) {
                    self.cursors.insert(range.start, offset + 1);
                    return Some(addr);
                }
            }
            budget = budget.saturating_sub(len);
            if budget == 0 {
                break;
            }
        }
        None
    }

    /// ACK: `mac` gets `addr` for `seconds`, if the address is in the pool
    /// and nobody else holds it. Written to the journal.
    pub fn bind(&mut self, mac: Mac, addr: Ipv4Addr, pool: &Pool, seconds: u32, now: SystemTime) -> bool {
        let now = unix_seconds(now);
        if !pool.eligible(addr) || !self.free_for(addr, mac, now) {
            return false;
        }
        let expires = now + u64::from(seconds);
        self.take(mac, Lease { addr, expires, bound: true });
        self.record(mac, addr, expires);
        true
    }

    /// RELEASE: the lease ends now; the client keeps its claim to the
    /// address should it come back before anyone else needs it.
    pub fn release(&mut self, mac: Mac, addr: Ipv4Addr, now: SystemTime) -> bool {
        let now = unix_seconds(now).max(1);
        match self.leases.get_mut(&mac) {
            Some(lease) if lease.addr == addr => {
                lease.expires = now;
                lease.bound = false;
                self.record(mac, addr, now);
                true
            }
            _ => false,
        }
    }

    /// DECLINE: someone else answers on `addr`; forget the lease and leave
    /// the address alone for a while.
    pub fn decline(&mut self, mac: Mac, addr: Ipv4Addr, now: SystemTime) -> bool {
        if self.leases.get(&mac).is_none_or(|lease| lease.addr != addr) {
            return false;
        }
        let now = unix_seconds(now);
        self.quarantine.retain(|_, until| *until > now);
        self.quarantine.insert(addr, now + QUARANTINE_SECONDS);
        self.forget(mac, addr);
        self.record(mac, addr, 0);
        true
    }

    /// Gives `lease.addr` to `mac`, taking it from whoever held it and
    /// dropping `mac`'s previous address.
    fn take(&mut self, mac: Mac, lease: Lease) {
        if let Some(previous) = self.leases.insert(mac, lease)
            && previous.addr != lease.addr
            && self.holders.get(&previous.addr) == Some(&mac)
        {
            self.holders.remove(&previous.addr);
        }
        if let Some(other) = self.holders.insert(lease.addr, mac)
            && other != mac
        {
            self.leases.remove(&other);
        }
    }

    fn forget(&mut self, mac: Mac, addr: Ipv4Addr) {
        if self.leases.get(&mac).is_some_and(|lease| lease.addr == addr) {
            self.leases.remove(&mac);
            self.holders.remove(&addr);
        }
    }

    /// One journal line, one write(2). A failing disk does not stop DHCP:
    /// the lease lives in memory and the failure is logged once.
    fn record(&mut self, mac: Mac, addr: Ipv4Addr, expires: u64) {
        let Some(journal) = &mut self.journal else { return };
        journal.line.clear();
        let _ = writeln!(journal.line, "lease {mac} {addr} {expires}");
        match journal.file.write_all(journal.line.as_bytes()) {
            Ok(()) => {
                if journal.failing {
                    journal.failing = false;
                    tracing::info!(file = %journal.path.display(), "DHCP lease journal writable again");
                }
            }
            Err(error) => {
                if !journal.failing {
                    journal.failing = true;
                    tracing::warn!(file = %journal.path.display(), %error, "cannot write the DHCP lease journal");
                }
            }
        }
        journal.lines += 1;
        if journal.lines > 10_000 + 4 * self.leases.len() {
            self.compact();
        }
    }

    fn compact(&mut self) {
        let Some(journal) = &mut self.journal else { return };
        match write_compacted(&journal.path, &self.leases) {
            Ok(file) => {
                journal.file = file;
                journal.lines = self.leases.len();
            }
            Err(error) => {
                tracing::warn!(file = %journal.path.display(), %error, "cannot compact the DHCP lease journal")
            }
        }
    }
}

/// Writes every lease to `<path>.tmp`, renames it over `path` and returns
/// it opened for appending.
fn write_compacted(path: &Path, leases: &HashMap<Mac, Lease>) -> io::Result<File> {
    let tmp = path.with_extension("tmp");
    let mut text = String::with_capacity(leases.len() * 48);
    let mut sorted: Vec<_> = leases.iter().collect();
    sorted.sort_by_key(|(_, lease)| lease.expires);
    for (mac, lease) in sorted {
        let _ = writeln!(text, "lease {mac} {} {}", lease.addr, lease.expires);
    }
    let mut file = File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    OpenOptions::new().append(true).open(path)
}

fn parse_line(line: &[u8]) -> Option<(Mac, Ipv4Addr, u64)> {
    let line = std::str::from_utf8(line).ok()?;
    let mut fields = line.split_ascii_whitespace();
    if fields.next()? != "lease" {
        return None;
    }
    let mac = Mac::parse(fields.next()?)?;
    let addr = fields.next()?.parse().ok()?;
    let expires = fields.next()?.parse().ok()?;
    fields.next().is_none().then_some((mac, addr, expires))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
    }

    fn mac(n: u8) -> Mac {
        Mac([2, 0, 0, 0, 0, n])
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, last)
    }

    const RANGE: [Ipv4Range; 1] = [Ipv4Range { start: Ipv4Addr::new(10, 0, 0, 10), end: Ipv4Addr::new(10, 0, 0, 13) }];

    fn with_pool<T>(f: impl FnOnce(&Pool) -> T) -> T {
        let excluded = |addr: Ipv4Addr| addr == ip(11);
        f(&Pool { ranges: &RANGE, excluded: &excluded })
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("girder-leases-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn offers_skip_excluded_and_held_addresses_and_exhaust() {
        let mut store = LeaseStore::in_memory();
        with_pool(|pool| {
            assert_eq!(store.offer(mac(1), None, pool, at(0)), Some(ip(10)));
            assert_eq!(store.offer(mac(2), None, pool, at(0)), Some(ip(12)));
            assert_eq!(store.offer(mac(3), None, pool, at(0)), Some(ip(13)));
            assert_eq!(store.offer(mac(4), None, pool, at(0)), None);
            // The same client is offered the same address again.
            assert_eq!(store.offer(mac(2), None, pool, at(1)), Some(ip(12)));
            // Unrequested offers lapse.
            assert_eq!(store.offer(mac(4), None, pool, at(OFFER_HOLD_SECONDS + 1)), Some(ip(10)));
            assert_eq!(store.lease(&mac(1)), None);
        });
    }

    #[test]
    fn bind_refuses_what_another_client_holds_or_the_pool_lacks() {
        let mut store = LeaseStore::in_memory();
        with_pool(|pool| {
            assert!(store.bind(mac(1), ip(10), pool, 3600, at(0)));
            assert!(!store.bind(mac(2), ip(10), pool, 3600, at(10)));
            assert!(!store.bind(mac(2), ip(11), pool, 3600, at(10)));
            assert!(!store.bind(mac(2), ip(99), pool, 3600, at(10)));
            // Expired: free for another client.
            assert!(store.bind(mac(2), ip(10), pool, 3600, at(3601)));
            assert_eq!(store.lease(&mac(1)), None);
            assert_eq!(store.holder(ip(10)), Some(mac(2)));
        });
    }

    #[test]
    fn released_address_is_preferred_by_its_client() {
        let mut store = LeaseStore::in_memory();
        with_pool(|pool| {
            assert_eq!(store.offer(mac(1), None, pool, at(0)), Some(ip(10)));
            assert!(store.bind(mac(1), ip(10), pool, 3600, at(0)));
            assert!(store.release(mac(1), ip(10), at(5)));
            assert_eq!(store.offer(mac(1), None, pool, at(100)), Some(ip(10)));
        });
    }

    #[test]
    fn declined_address_is_quarantined() {
        let mut store = LeaseStore::in_memory();
        with_pool(|pool| {
            assert!(store.bind(mac(1), ip(10), pool, 3600, at(0)));
            assert!(store.decline(mac(1), ip(10), at(1)));
            assert_eq!(store.offer(mac(2), Some(ip(10)), pool, at(2)), Some(ip(12)));
            assert!(!store.bind(mac(3), ip(10), pool, 3600, at(2)));
            assert!(store.bind(mac(3), ip(10), pool, 3600, at(2 + QUARANTINE_SECONDS)));
        });
    }

    #[test]
    fn leases_survive_a_reopen_and_corrupt_lines_are_skipped() {
        let dir = temp_dir("reopen");
        {
            let mut store = LeaseStore::open(&dir, at(0)).unwrap();
            with_pool(|pool| {
                for n in 1..=3 {
                    let addr = store.offer(mac(n), None, pool, at(0)).unwrap();
                    assert!(store.bind(mac(n), addr, pool, 3600, at(0)));
                }
                assert!(store.release(mac(2), ip(12), at(1)));
            });
        }
        let mut journal = OpenOptions::new().append(true).open(dir.join(JOURNAL_FILE)).unwrap();
        journal.write_all(b"garbage\nlease zz:00 1.2.3.4 5\nlease 02:00:00:00:00:09 10.0.0").unwrap();
        drop(journal);

        let mut store = LeaseStore::open(&dir, at(100)).unwrap();
        assert_eq!(store.lease(&mac(1)).map(|l| l.addr), Some(ip(10)));
        assert_eq!(store.lease(&mac(3)).map(|l| l.addr), Some(ip(13)));
        with_pool(|pool| {
            // Released but still free: the client gets it back.
            assert_eq!(store.offer(mac(2), None, pool, at(200)), Some(ip(12)));
            assert_eq!(store.offer(mac(1), None, pool, at(200)), Some(ip(10)));
        });
        // Compacted: three lines, no garbage.
        let text = fs::read_to_string(dir.join(JOURNAL_FILE)).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Discover(u8),
        Request(u8, u8),
        Release(u8),
        Decline(u8),
        Wait(u16),
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..8).prop_map(Op::Discover),
            (0u8..8, 8u8..16).prop_map(|(m, a)| Op::Request(m, a)),
            (0u8..8).prop_map(Op::Release),
            (0u8..8).prop_map(Op::Decline),
            (0u16..4000).prop_map(Op::Wait),
            Just(Op::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn no_address_is_ever_held_by_two_macs(ops in proptest::collection::vec(op(), 1..60)) {
            let dir = temp_dir("prop");
            let mut store = LeaseStore::open(&dir, at(0)).unwrap();
            let mut now = 0u64;
            for op in ops {
                with_pool(|pool| match op {
                    Op::Discover(m) => { store.offer(mac(m), None, pool, at(now)); }
                    Op::Request(m, a) => { store.bind(mac(m), ip(a), pool, 600, at(now)); }
                    Op::Release(m) => if let Some(l) = store.lease(&mac(m)) { store.release(mac(m), l.addr, at(now)); },
                    Op::Decline(m) => if let Some(l) = store.lease(&mac(m)) { store.decline(mac(m), l.addr, at(now)); },
                    Op::Wait(s) => now += u64::from(s),
                    Op::Reopen => {}
                });
                if matches!(op, Op::Reopen) {
                    let before: Vec<_> = (0..8).map(|m| store.lease(&mac(m)).filter(|l| l.bound).map(|l| l.addr)).collect();
                    store = LeaseStore::open(&dir, at(now)).unwrap();
                    for (m, addr) in before.iter().enumerate() {
                        if let Some(addr) = addr {
                            prop_assert_eq!(store.lease(&mac(m as u8)).map(|l| l.addr), Some(*addr));
                        }
                    }
                }
                // Both maps agree: each address has one MAC and back.
                prop_assert_eq!(store.leases.len(), store.holders.len());
                for (m, lease) in &store.leases {
                    prop_assert_eq!(store.holders.get(&lease.addr), Some(m));
                }
                // Unexpired leases never share an address (implied by the maps).
                let mut live: Vec<_> = store.leases.values().filter(|l| l.expires > now).map(|l| l.addr).collect();
                live.sort();
                let count = live.len();
                live.dedup();
                prop_assert_eq!(live.len(), count);
            }
            let _ = fs::remove_dir_all(&dir);
        }
    }
}
