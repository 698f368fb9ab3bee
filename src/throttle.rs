//! Back-pressure: budgets of bytes and messages ([`Throttle`]) and the guards that hold them ([`Permit`]).
//!
//! The messenger uses throttles on both sides (see `msgr`): each connection has a send budget (messages
//! queued or unacknowledged on it), and received messages take budget on their peer type's receive
//! throttle and on the messenger-wide dispatch throttle until the application drops them. Budget is only
//! ever held by a [`Permit`], which gives it back when dropped, so no path that drops a message (acked,
//! discarded on reset or `mark_down`, a command queue dropped with its connection) can leak it. A
//! [`proto::Message`](crate::proto::Message) carries its permit.
//!
//! The fast path is lock-free: both counters live in one `AtomicU64` (bytes in the low 40 bits, messages
//! in the high 24) updated by compare-and-swap. Only a sender that must wait takes the mutex, to sleep on
//! the condition variable; a reader that must wait parks a [`Resume`] handle instead, and the release
//! that makes room resumes it.
//!
//! Invariants: `current` never exceeds `max` except by one message larger than the whole budget (let
//! through alone, so it cannot deadlock) or by forced takes (worker threads, which must not block, and
//! messages already read off a socket), which count in `overshoot` when they go over. A throttle with a
//! parent counts every take and release in the parent too, so the parent holds the sum of its children.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const BYTES_BITS: u32 = 40;
const BYTES_MASK: u64 = (1 << BYTES_BITS) - 1;
/// Largest budgets the packed representation holds: 1 TiB and 16 M messages.
const MAX_BYTES: u64 = BYTES_MASK;
const MAX_MSGS: u64 = (1 << (64 - BYTES_BITS)) - 1;

fn unpack(v: u64) -> (u64, u64) {
    (v & BYTES_MASK, v >> BYTES_BITS)
}

fn pack(bytes: u64, msgs: u64) -> u64 {
    (msgs.min(MAX_MSGS) << BYTES_BITS) | bytes.min(MAX_BYTES)
}

/// Something paused until a throttle has room again (a connection that stopped reading).
pub trait Resume: Send + Sync {
    /// Identifies the waiter, so that it can be taken off a throttle it no longer waits for.
    fn resume_id(&self) -> u64;
    /// The throttle has room: carry on. Called on whichever thread released the budget.
    fn resume(&self);
}

/// A bytes + messages budget.
pub struct Throttle {
    max_bytes: u64,
    max_msgs: u64,
    state: AtomicU64,
    /// Senders sleeping on `cv`.
    waiters: AtomicUsize,
    lock: Mutex<()>,
    cv: Condvar,
    /// Readers paused until there is room (`parked_len` mirrors the length, read without the lock).
    parked: Mutex<Vec<Arc<dyn Resume>>>,
    parked_len: AtomicUsize,
    blocked: AtomicU64,
    overshoot: AtomicU64,
    peak_bytes: AtomicU64,
    peak_msgs: AtomicU64,
    parent: Option<Arc<Throttle>>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("stats", &self.stats())
            .finish()
    }
}

/// A snapshot of a throttle, for counters and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct ThrottleStats {
    /// Byte budget (1 TiB when unlimited).
    pub max_bytes: u64,
    /// Message budget (16 M when unlimited).
    pub max_msgs: u64,
    /// Bytes held by permits now.
    pub current_bytes: u64,
    /// Messages held by permits now.
    pub current_msgs: u64,
    /// How many takes had to wait (or failed: `try_send`, a reader that paused).
    pub blocked: u64,
    /// Forced takes that went over the budget.
    pub overshoot: u64,
    /// Highest `current_bytes` seen.
    pub peak_bytes: u64,
    /// Highest `current_msgs` seen.
    pub peak_msgs: u64,
}

impl ThrottleStats {
    /// No budget held.
    pub fn is_idle(&self) -> bool {
        self.current_bytes == 0 && self.current_msgs == 0
    }
}

impl Throttle {
    /// A throttle of `max_bytes` and `max_msgs`; `0` means unlimited for either budget.
    pub fn new(max_bytes: u64, max_msgs: u64) -> Self {
        Self::with_parent(max_bytes, max_msgs, None)
    }

    /// Like [`Throttle::new`], also counting everything in `parent` (which is never waited on).
    pub fn with_parent(max_bytes: u64, max_msgs: u64, parent: Option<Arc<Throttle>>) -> Self {
        let limit = |v: u64, max: u64| if v == 0 { max } else { v.min(max) };
        Throttle {
            max_bytes: limit(max_bytes, MAX_BYTES),
            max_msgs: limit(max_msgs, MAX_MSGS),
            state: AtomicU64::new(0),
            waiters: AtomicUsize::new(0),
            lock: Mutex::new(()),
            cv: Condvar::new(),
            parked: Mutex::new(Vec::new()),
            parked_len: AtomicUsize::new(0),
            blocked: AtomicU64::new(0),
            overshoot: AtomicU64::new(0),
            peak_bytes: AtomicU64::new(0),
            peak_msgs: AtomicU64::new(0),
            parent,
        }
    }

    fn fits(&self, (b, m): (u64, u64), bytes: u64) -> bool {
        (b == 0 && m == 0) || (b.saturating_add(bytes) <= self.max_bytes && m < self.max_msgs)
    }

    /// One compare-and-swap loop; false if the budget has no room (and `force` is not set).
    fn try_take(&self, bytes: u64, force: bool) -> bool {
        let mut cur = self.state.load(Ordering::SeqCst);
        loop {
            let (b, m) = unpack(cur);
            if !force && !self.fits((b, m), bytes) {
                return false;
            }
            let next = pack(b.saturating_add(bytes), m + 1);
            match self
                .state
                .compare_exchange_weak(cur, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    let (nb, nm) = unpack(next);
                    // Read before writing: peaks rarely move, and a write would bounce the cache line
                    // between the threads that take and release.
                    if nb > self.peak_bytes.load(Ordering::Relaxed) {
                        self.peak_bytes.fetch_max(nb, Ordering::Relaxed);
                    }
                    if nm > self.peak_msgs.load(Ordering::Relaxed) {
                        self.peak_msgs.fetch_max(nm, Ordering::Relaxed);
                    }
                    if let Some(p) = &self.parent {
                        p.try_take(bytes, true);
                    }
                    return true;
                }
                Err(actual) => cur = actual,
            }
        }
    }

    fn count_blocked(&self) {
        self.blocked.fetch_add(1, Ordering::Relaxed);
        if let Some(p) = &self.parent {
            p.count_blocked();
        }
    }

    fn count_overshoot(&self) {
        self.overshoot.fetch_add(1, Ordering::Relaxed);
        if let Some(p) = &self.parent {
            p.count_overshoot();
        }
    }

    fn permit(self: &Arc<Self>, bytes: u64) -> Permit {
        Permit {
            first: self.clone(),
            second: None,
            bytes,
        }
    }

    /// Take `bytes` and one message if they fit now.
    pub fn try_acquire(self: &Arc<Self>, bytes: u64) -> Option<Permit> {
        if self.try_take(bytes, false) {
            Some(self.permit(bytes))
        } else {
            self.count_blocked();
            None
        }
    }

    /// Take `bytes` and one message, waiting for room until `deadline` (`None`: no limit) or until
    /// `give_up` says so (checked at least every 50 ms). `None` if it did not get them.
    pub fn acquire(
        self: &Arc<Self>,
        bytes: u64,
        deadline: Option<Instant>,
        give_up: &dyn Fn() -> bool,
    ) -> Option<Permit> {
        if self.try_take(bytes, false) {
            return Some(self.permit(bytes));
        }
        self.count_blocked();
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let ok = loop {
            if self.try_take(bytes, false) {
                break true;
            }
            if give_up() {
                break false;
            }
            // A bounded wait as well as the notification: `give_up` is polled, and it guards against a
            // missed wake-up.
            let mut wait = Duration::from_millis(50);
            if let Some(d) = deadline {
                let now = Instant::now();
                if now >= d {
                    break false;
                }
                wait = wait.min(d - now);
            }
            guard = self
                .cv
                .wait_timeout(guard, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        drop(guard);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        ok.then(|| self.permit(bytes))
    }

    /// Take without waiting, going over budget if need be (counted in `overshoot`).
    pub fn force_acquire(self: &Arc<Self>, bytes: u64) -> Permit {
        self.force_take(bytes);
        self.permit(bytes)
    }

    fn force_take(&self, bytes: u64) {
        if !self.try_take(bytes, false) {
            self.count_overshoot();
            self.try_take(bytes, true);
        }
    }

    /// Give back one message carrying `bytes`: wake waiting senders, resume parked readers if there is
    /// room now. Lock-free unless someone waits.
    fn release(&self, bytes: u64) {
        let mut cur = self.state.load(Ordering::SeqCst);
        loop {
            let (b, m) = unpack(cur);
            let next = pack(b.saturating_sub(bytes), m.saturating_sub(1));
            match self
                .state
                .compare_exchange_weak(cur, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break,
                Err(actual) => cur = actual,
            }
        }
        if let Some(p) = &self.parent {
            p.release(bytes);
        }
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.cv.notify_all();
        }
        if self.parked_len.load(Ordering::SeqCst) > 0 && !self.is_full() {
            self.resume_parked();
        }
    }

    /// Whether the budget is used up (in bytes or in messages): a reader should pause before it reads
    /// more. An empty throttle is never full.
    pub fn is_full(&self) -> bool {
        let (b, m) = unpack(self.state.load(Ordering::SeqCst));
        (b, m) != (0, 0) && (b >= self.max_bytes || m >= self.max_msgs)
    }

    /// Register `who` to be resumed once the throttle has room (at once if it has room already: the
    /// release that made it may have come before the registration). Counts as a blocked take.
    pub fn park(&self, who: Arc<dyn Resume>) {
        self.count_blocked();
        {
            let mut p = self.parked.lock().unwrap_or_else(|e| e.into_inner());
            p.push(who);
            self.parked_len.store(p.len(), Ordering::SeqCst);
        }
        if !self.is_full() {
            self.resume_parked();
        }
    }

    /// Take `id` off the parked list (it went away without waiting for room).
    pub fn unpark(&self, id: u64) {
        if self.parked_len.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut p = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        p.retain(|w| w.resume_id() != id);
        self.parked_len.store(p.len(), Ordering::SeqCst);
    }

    /// How many readers are parked.
    pub fn parked(&self) -> usize {
        self.parked_len.load(Ordering::SeqCst)
    }

    fn resume_parked(&self) {
        let woken = {
            let mut p = self.parked.lock().unwrap_or_else(|e| e.into_inner());
            self.parked_len.store(0, Ordering::SeqCst);
            std::mem::take(&mut *p)
        };
        // Outside the lock: a resumed reader may park again at once.
        for w in woken {
            w.resume();
        }
    }

    /// Current use, limits and history.
    pub fn stats(&self) -> ThrottleStats {
        let (b, m) = unpack(self.state.load(Ordering::SeqCst));
        ThrottleStats {
            max_bytes: self.max_bytes,
            max_msgs: self.max_msgs,
            current_bytes: b,
            current_msgs: m,
            blocked: self.blocked.load(Ordering::Relaxed),
            overshoot: self.overshoot.load(Ordering::Relaxed),
            peak_bytes: self.peak_bytes.load(Ordering::Relaxed),
            peak_msgs: self.peak_msgs.load(Ordering::Relaxed),
        }
    }
}

/// Budget held on one or two throttles: one message and `bytes` on each. Dropping it gives the budget
/// back. A message carries one (see [`crate::proto::Message::attach_permit`]).
pub struct Permit {
    // Not an array of options: a non-null first keeps `Option<Permit>` (in every message) small.
    first: Arc<Throttle>,
    second: Option<Arc<Throttle>>,
    bytes: u64,
}

impl Permit {
    /// Take one message and `bytes` on `first` and on `second` without waiting (going over budget if
    /// need be, counted in `overshoot`): for what has been read off a socket already.
    pub fn force(first: &Arc<Throttle>, second: Option<&Arc<Throttle>>, bytes: u64) -> Permit {
        first.force_take(bytes);
        if let Some(t) = second {
            t.force_take(bytes);
        }
        Permit {
            first: first.clone(),
            second: second.cloned(),
            bytes,
        }
    }

    /// The bytes held (on each throttle).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether this permit holds budget on `t`.
    pub fn holds(&self, t: &Arc<Throttle>) -> bool {
        Arc::ptr_eq(&self.first, t) || self.second.as_ref().is_some_and(|s| Arc::ptr_eq(s, t))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.first.release(self.bytes);
        if let Some(t) = self.second.take() {
            t.release(self.bytes);
        }
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("bytes", &self.bytes)
            .field("throttles", &(1 + usize::from(self.second.is_some())))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn never() -> bool {
        false
    }

    #[test]
    fn blocks_until_released_and_counts() {
        let t = Arc::new(Throttle::new(100, 0));
        let p = t.acquire(60, None, &never).unwrap();
        assert!(
            t.acquire(60, Some(Instant::now() + Duration::from_millis(20)), &never)
                .is_none(),
            "over budget must wait"
        );
        let t2 = t.clone();
        let h = std::thread::spawn(move || {
            t2.acquire(60, Some(Instant::now() + Duration::from_secs(5)), &never)
        });
        std::thread::sleep(Duration::from_millis(20));
        drop(p);
        let p2 = h.join().unwrap().expect("woken by the release");
        let s = t.stats();
        assert_eq!((s.current_bytes, s.current_msgs), (60, 1));
        assert!(s.blocked >= 2);
        assert!(s.peak_bytes <= 100);
        drop(p2);
        assert!(t.stats().is_idle());
    }

    #[test]
    fn give_up_ends_the_wait() {
        let t = Arc::new(Throttle::new(10, 0));
        let _p = t.try_acquire(10).unwrap();
        let stop = AtomicBool::new(true);
        let start = Instant::now();
        assert!(t
            .acquire(5, None, &|| stop.load(Ordering::Relaxed))
            .is_none());
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn many_threads_never_exceed_the_budget() {
        let t = Arc::new(Throttle::new(10_000, 0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                let t = t.clone();
                s.spawn(move || {
                    for i in 0..2000u64 {
                        let b = 100 + i % 900;
                        let p = t
                            .acquire(b, Some(Instant::now() + Duration::from_secs(10)), &never)
                            .unwrap();
                        drop(p);
                    }
                });
            }
        });
        let s = t.stats();
        assert!(s.peak_bytes <= 10_000, "{s:?}");
        assert!(s.is_idle(), "{s:?}");
    }

    #[test]
    fn oversized_message_passes_alone_and_force_counts_overshoot() {
        let t = Arc::new(Throttle::new(10, 2));
        let big = t
            .try_acquire(1000)
            .expect("an empty throttle lets anything through");
        let forced = t.force_acquire(5);
        assert_eq!(t.stats().overshoot, 1);
        assert!(t.is_full());
        drop((big, forced));
        let a = t.try_acquire(5).unwrap();
        let b = t.try_acquire(5).unwrap();
        assert!(t.try_acquire(0).is_none(), "message budget of 2");
        drop((a, b));
        assert!(t.stats().is_idle());
    }

    #[test]
    fn permit_on_two_throttles_releases_both_once() {
        let a = Arc::new(Throttle::new(0, 0));
        let b = Arc::new(Throttle::new(100, 0));
        let p = Permit::force(&a, Some(&b), 40);
        assert!(p.holds(&a) && p.holds(&b));
        assert_eq!(p.bytes(), 40);
        assert_eq!(a.stats().current_bytes, 40);
        assert_eq!(b.stats().current_msgs, 1);
        drop(p);
        assert!(a.stats().is_idle() && b.stats().is_idle());
        let only = Permit::force(&b, None, 7);
        assert!(!only.holds(&a));
        drop(only);
        assert!(b.stats().is_idle());
    }

    #[test]
    fn parent_holds_the_sum_of_its_children() {
        let total = Arc::new(Throttle::new(0, 0));
        let c1 = Arc::new(Throttle::with_parent(10, 0, Some(total.clone())));
        let c2 = Arc::new(Throttle::with_parent(10, 0, Some(total.clone())));
        let p1 = c1.try_acquire(10).unwrap();
        let p2 = c2.try_acquire(4).unwrap();
        assert!(
            c1.try_acquire(1).is_none(),
            "children keep their own budget"
        );
        let s = total.stats();
        assert_eq!((s.current_bytes, s.current_msgs, s.blocked), (14, 2, 1));
        drop((p1, p2));
        assert!(total.stats().is_idle());
    }

    struct Flag(u64, AtomicUsize);
    impl Resume for Flag {
        fn resume_id(&self) -> u64 {
            self.0
        }
        fn resume(&self) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn parked_reader_resumes_when_room_returns_from_another_thread() {
        let t = Arc::new(Throttle::new(100, 0));
        let held = t.force_acquire(100);
        assert!(t.is_full());
        let w = Arc::new(Flag(1, AtomicUsize::new(0)));
        t.park(w.clone());
        assert_eq!((t.parked(), w.1.load(Ordering::SeqCst)), (1, 0));
        std::thread::spawn(move || drop(held)).join().unwrap();
        assert_eq!(w.1.load(Ordering::SeqCst), 1, "the release resumed it");
        assert_eq!(t.parked(), 0);
        // Parking on a throttle with room resumes at once: no lost wake-up.
        t.park(w.clone());
        assert_eq!(w.1.load(Ordering::SeqCst), 2);
        // Unpark removes only the one named.
        let _full = t.force_acquire(100);
        let other = Arc::new(Flag(2, AtomicUsize::new(0)));
        t.park(w.clone());
        t.park(other.clone());
        t.unpark(1);
        assert_eq!(t.parked(), 1);
        drop(_full);
        assert_eq!(
            (w.1.load(Ordering::SeqCst), other.1.load(Ordering::SeqCst)),
            (2, 1)
        );
    }
}
