//! The per-worker cache of memory regions registered over the caller's own buffers (`Bytes`), for SENDs
//! that read straight from them instead of from a copy in the buffer pool.
//!
//! What it owns: the regions it registered, each as an `Rc` whose region holds a clone of the `Bytes` it
//! covers (so that memory stays allocated and unchanged while registered; see `pool::MemoryRegion`), and
//! the count of bytes they pin. Posted work requests hold further `Rc`s of a region until their
//! completion.
//!
//! Invariants: the pinned total (page-rounded) never exceeds the limit; an entry is evicted only while no
//! work request holds its region (`Rc::strong_count == 1`), so a region in use is never deregistered;
//! a lookup hits only an entry whose range covers the whole buffer. Eviction is least-recently-used, but
//! entries whose buffer nobody else references any more (`Bytes::is_unique`: the message was sent and
//! dropped, it can never hit again) go first, and are dropped at every miss so the cache does not keep
//! freed messages alive longer than needed.

use std::collections::BTreeMap;
use std::io;
use std::rc::Rc;

use bytes::Bytes;

/// Pinning granularity assumed for the limit (registration pins whole pages).
const PAGE: usize = 4096;
/// Entries starting at or before a buffer that a lookup examines (overlapping registrations are rare).
const LOOKUP_SCAN: usize = 8;

/// A registered region over the memory of one `Bytes`.
pub trait Registered {
    /// The buffer the region covers (a clone it owns).
    fn bytes(&self) -> &Bytes;
}

/// Registers buffers (the protection domain in the stack, a mock in tests).
pub trait Registrar {
    type Region: Registered;
    fn register(&mut self, bytes: &Bytes) -> io::Result<Self::Region>;
}

/// Why a buffer was not given a region: the caller copies it instead.
#[derive(Debug)]
pub enum Refused {
    /// Larger than the whole pinning limit.
    TooLarge,
    /// The limit is reached and every region is in use by posted work.
    Full,
    /// The registration itself failed (e.g. `RLIMIT_MEMLOCK`).
    Failed(io::Error),
}

/// What the cache did, for the stack's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub registrations: u64,
    pub failures: u64,
    pub full: u64,
    pub evictions: u64,
}

struct Entry<R> {
    region: Rc<R>,
    pinned: usize,
    last_use: u64,
}

impl<R: Registered> Entry<R> {
    fn idle(&self) -> bool {
        Rc::strong_count(&self.region) == 1
    }

    fn dead(&self) -> bool {
        self.idle() && self.region.bytes().is_unique()
    }
}

/// Memory regions keyed by the address range they cover; see the module docs.
pub struct MrCache<G: Registrar> {
    registrar: G,
    entries: BTreeMap<(usize, usize), Entry<G::Region>>,
    pinned: usize,
    limit: usize,
    tick: u64,
    stats: CacheStats,
}

fn range_of(bytes: &Bytes) -> (usize, usize) {
    let start = bytes.as_ptr() as usize;
    (start, start + bytes.len())
}

/// Bytes of whole pages that `[start, end)` touches.
fn page_span((start, end): (usize, usize)) -> usize {
    let first = start / PAGE;
    let last = end.saturating_sub(1) / PAGE;
    (last + 1 - first) * PAGE
}

impl<G: Registrar> MrCache<G> {
    /// A cache pinning at most `limit` bytes (page-rounded).
    pub fn new(registrar: G, limit: usize) -> Self {
        MrCache {
            registrar,
            entries: BTreeMap::new(),
            pinned: 0,
            limit,
            tick: 0,
            stats: CacheStats::default(),
        }
    }

    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Bytes pinned now (page-rounded).
    pub fn pinned(&self) -> usize {
        self.pinned
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// A region covering all of `buf` (non-empty): a cached one, or a new registration of `buf`.
    pub fn get(&mut self, buf: &Bytes) -> Result<Rc<G::Region>, Refused> {
        self.tick += 1;
        let (start, end) = range_of(buf);
        let found = self
            .entries
            .range(..=(start, usize::MAX))
            .rev()
            .take(LOOKUP_SCAN)
            .find(|(&(_, e), _)| e >= end)
            .map(|(&key, _)| key);
        if let Some(key) = found {
            if let Some(entry) = self.entries.get_mut(&key) {
                entry.last_use = self.tick;
                self.stats.hits += 1;
                return Ok(entry.region.clone());
            }
        }
        self.stats.misses += 1;
        let need = page_span((start, end));
        if need > self.limit {
            return Err(Refused::TooLarge);
        }
        self.drop_dead();
        while self.pinned + need > self.limit {
            if !self.evict_one() {
                self.stats.full += 1;
                return Err(Refused::Full);
            }
        }
        let region = match self.registrar.register(buf) {
            Ok(region) => Rc::new(region),
            Err(err) => {
                self.stats.failures += 1;
                return Err(Refused::Failed(err));
            }
        };
        self.stats.registrations += 1;
        // An entry with this exact range would have hit; replacing one is only defensive.
        if let Some(old) = self.entries.insert(
            (start, end),
            Entry {
                region: region.clone(),
                pinned: need,
                last_use: self.tick,
            },
        ) {
            self.pinned -= old.pinned;
        }
        self.pinned += need;
        Ok(region)
    }

    /// Evict every idle entry whose buffer nobody else holds (it can never hit again).
    fn drop_dead(&mut self) {
        let before = self.entries.len();
        let mut freed = 0;
        self.entries.retain(|_, e| {
            let dead = e.dead();
            if dead {
                freed += e.pinned;
            }
            !dead
        });
        self.pinned -= freed;
        self.stats.evictions += (before - self.entries.len()) as u64;
    }

    /// Drop the least recently used idle entry; `false` if every entry is in use.
    fn evict_one(&mut self) -> bool {
        let victim = self
            .entries
            .iter()
            .filter(|(_, e)| e.idle())
            .min_by_key(|(_, e)| e.last_use)
            .map(|(&key, _)| key);
        match victim.and_then(|key| self.entries.remove(&key)) {
            Some(entry) => {
                self.pinned -= entry.pinned;
                self.stats.evictions += 1;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    struct MockRegion {
        bytes: Bytes,
        live: Rc<Cell<usize>>,
    }

    impl Registered for MockRegion {
        fn bytes(&self) -> &Bytes {
            &self.bytes
        }
    }

    impl Drop for MockRegion {
        fn drop(&mut self) {
            self.live.set(self.live.get() - 1);
        }
    }

    #[derive(Default)]
    struct MockRegistrar {
        live: Rc<Cell<usize>>,
        fail: bool,
        calls: usize,
    }

    impl Registrar for MockRegistrar {
        type Region = MockRegion;
        fn register(&mut self, bytes: &Bytes) -> io::Result<MockRegion> {
            self.calls += 1;
            if self.fail {
                return Err(io::Error::from_raw_os_error(libc::ENOMEM));
            }
            self.live.set(self.live.get() + 1);
            Ok(MockRegion {
                bytes: bytes.clone(),
                live: self.live.clone(),
            })
        }
    }

    /// A page-aligned buffer of `pages` pages (so it pins exactly that many).
    fn buf(pages: usize) -> Bytes {
        let whole = Bytes::from(vec![7u8; (pages + 1) * PAGE]);
        let skip = (PAGE - whole.as_ptr() as usize % PAGE) % PAGE;
        whole.slice(skip..skip + pages * PAGE)
    }

    #[test]
    fn slices_of_a_registered_buffer_hit() {
        let mut cache = MrCache::new(MockRegistrar::default(), 1 << 20);
        let b = buf(4);
        let r1 = cache.get(&b).unwrap();
        let r2 = cache.get(&b.slice(100..9000)).unwrap();
        assert!(Rc::ptr_eq(&r1, &r2));
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.registrations), (1, 1, 1));
        // A different buffer misses.
        let other = buf(1);
        let r3 = cache.get(&other).unwrap();
        assert!(!Rc::ptr_eq(&r1, &r3));
        assert_eq!(cache.stats().misses, 2);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn pinned_bytes_stay_bounded_and_lru_goes_first() {
        let reg = MockRegistrar::default();
        let live = reg.live.clone();
        let mut cache = MrCache::new(reg, 8 * PAGE);
        let keep: Vec<Bytes> = (0..4).map(|_| buf(2)).collect();
        for b in &keep {
            drop(cache.get(b).unwrap());
        }
        assert_eq!(cache.pinned(), 8 * PAGE);
        // Touch the first, so the second is least recently used.
        drop(cache.get(&keep[0]).unwrap());
        let extra = buf(2);
        drop(cache.get(&extra).unwrap());
        assert!(cache.pinned() <= 8 * PAGE);
        assert_eq!(live.get(), 4, "one region was deregistered");
        assert_eq!(cache.stats().evictions, 1);
        drop(cache.get(&keep[0]).unwrap());
        assert_eq!(cache.stats().hits, 2, "the recently used entry stayed");
        drop(cache.get(&keep[1]).unwrap());
        assert_eq!(
            cache.stats().registrations,
            6,
            "the LRU entry was the one evicted"
        );
        assert!(cache.pinned() <= 8 * PAGE);
    }

    #[test]
    fn regions_in_use_are_never_evicted() {
        let reg = MockRegistrar::default();
        let live = reg.live.clone();
        let mut cache = MrCache::new(reg, 4 * PAGE);
        let a = buf(2);
        let b = buf(2);
        let in_use_a = cache.get(&a).unwrap();
        let in_use_b = cache.get(&b).unwrap();
        let c = buf(1);
        assert!(matches!(cache.get(&c), Err(Refused::Full)));
        assert_eq!(cache.stats().full, 1);
        assert_eq!(live.get(), 2);
        assert_eq!(in_use_a.bytes().len(), 2 * PAGE);
        // Once b's work completes, b may go.
        drop(in_use_b);
        let rc = cache.get(&c).unwrap();
        assert_eq!(live.get(), 2);
        assert!(cache.pinned() <= 4 * PAGE);
        assert!(Rc::ptr_eq(&cache.get(&a).unwrap(), &in_use_a));
        drop(rc);
    }

    #[test]
    fn dropped_buffers_are_released_at_the_next_miss() {
        let reg = MockRegistrar::default();
        let live = reg.live.clone();
        let mut cache = MrCache::new(reg, 64 * PAGE);
        let a = buf(2);
        drop(cache.get(&a).unwrap());
        drop(a); // the message was sent and freed: only the cache holds it
        let b = buf(2);
        drop(cache.get(&b).unwrap());
        assert_eq!(live.get(), 1);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.pinned(), 2 * PAGE);
    }

    #[test]
    fn oversized_and_failed_registrations_are_refused() {
        let mut cache = MrCache::new(MockRegistrar::default(), 4 * PAGE);
        assert!(matches!(cache.get(&buf(5)), Err(Refused::TooLarge)));
        cache.registrar.fail = true;
        assert!(matches!(cache.get(&buf(1)), Err(Refused::Failed(_))));
        assert_eq!(cache.stats().failures, 1);
        assert_eq!(cache.registrar.calls, 1);
        assert_eq!(cache.pinned(), 0);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn page_span_rounds_to_touched_pages() {
        assert_eq!(page_span((0, 1)), PAGE);
        assert_eq!(page_span((PAGE - 1, PAGE + 1)), 2 * PAGE);
        assert_eq!(page_span((PAGE, 2 * PAGE)), PAGE);
    }
}
