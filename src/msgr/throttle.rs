//! Back-pressure: a budget of bytes and messages that senders take before queueing and the messenger
//! returns when the protocol lets go of a message (acked, or sent on a lossy connection, or discarded).
//!
//! The fast path is lock-free: both counters live in one `AtomicU64` (bytes in the low 40 bits,
//! messages in the high 24) updated by compare-and-swap, so workers releasing budget never contend on a
//! lock. Only a sender that must wait takes the mutex, to sleep on the condition variable.
//!
//! Invariant: `current` never exceeds `max` except by one message larger than the whole budget (which
//! is let through alone, so it cannot deadlock), or by sends from worker threads, which must not block
//! (a dispatcher replying from inside the event loop) and are counted in `overshoot`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
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

/// A bytes + messages budget with blocking acquire.
#[derive(Debug)]
pub struct Throttle {
    max_bytes: u64,
    max_msgs: u64,
    state: AtomicU64,
    waiters: AtomicUsize,
    lock: Mutex<()>,
    cv: Condvar,
    blocked: AtomicU64,
    overshoot: AtomicU64,
    peak_bytes: AtomicU64,
    peak_msgs: AtomicU64,
}

/// A snapshot of a throttle, for counters and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ThrottleStats {
    pub max_bytes: u64,
    pub max_msgs: u64,
    pub current_bytes: u64,
    pub current_msgs: u64,
    /// How many acquires had to wait.
    pub blocked: u64,
    /// Acquires from worker threads that went over the budget instead of blocking.
    pub overshoot: u64,
    pub peak_bytes: u64,
    pub peak_msgs: u64,
}

impl Throttle {
    /// `0` means unlimited for either budget.
    pub fn new(max_bytes: u64, max_msgs: u64) -> Self {
        Throttle {
            max_bytes: if max_bytes == 0 {
                MAX_BYTES
            } else {
                max_bytes.min(MAX_BYTES)
            },
            max_msgs: if max_msgs == 0 {
                MAX_MSGS
            } else {
                max_msgs.min(MAX_MSGS)
            },
            state: AtomicU64::new(0),
            waiters: AtomicUsize::new(0),
            lock: Mutex::new(()),
            cv: Condvar::new(),
            blocked: AtomicU64::new(0),
            overshoot: AtomicU64::new(0),
            peak_bytes: AtomicU64::new(0),
            peak_msgs: AtomicU64::new(0),
        }
    }

    fn fits(&self, (b, m): (u64, u64), bytes: u64) -> bool {
        (b == 0 && m == 0) || (b + bytes <= self.max_bytes && m < self.max_msgs)
    }

    /// One compare-and-swap attempt loop; false if the budget has no room.
    fn try_take(&self, bytes: u64, force: bool) -> bool {
        let mut cur = self.state.load(Ordering::SeqCst);
        loop {
            let (b, m) = unpack(cur);
            if !force && !self.fits((b, m), bytes) {
                return false;
            }
            let next = pack(b + bytes, m + 1);
            match self
                .state
                .compare_exchange_weak(cur, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    let (nb, nm) = unpack(next);
                    self.peak_bytes.fetch_max(nb, Ordering::Relaxed);
                    self.peak_msgs.fetch_max(nm, Ordering::Relaxed);
                    return true;
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Take `bytes` and one message, waiting up to `timeout` for room. False on timeout.
    pub fn acquire(&self, bytes: u64, timeout: Option<Duration>) -> bool {
        if self.try_take(bytes, false) {
            return true;
        }
        self.blocked.fetch_add(1, Ordering::Relaxed);
        let deadline = timeout.map(|t| Instant::now() + t);
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let ok = loop {
            if self.try_take(bytes, false) {
                break true;
            }
            // A bounded wait as well as the notification: belt and braces against a missed wake-up.
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
        ok
    }

    /// Take without waiting, going over budget if need be (for worker threads).
    pub fn force_acquire(&self, bytes: u64) {
        if !self.try_take(bytes, false) {
            self.overshoot.fetch_add(1, Ordering::Relaxed);
            self.try_take(bytes, true);
        }
    }

    /// Give back `msgs` messages carrying `bytes`. Lock-free unless a sender is waiting.
    pub fn release(&self, msgs: u64, bytes: u64) {
        if msgs == 0 && bytes == 0 {
            return;
        }
        let mut cur = self.state.load(Ordering::SeqCst);
        loop {
            let (b, m) = unpack(cur);
            let next = pack(b.saturating_sub(bytes), m.saturating_sub(msgs));
            match self
                .state
                .compare_exchange_weak(cur, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break,
                Err(actual) => cur = actual,
            }
        }
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.cv.notify_all();
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn blocks_until_released_and_counts() {
        let t = Arc::new(Throttle::new(100, 0));
        assert!(t.acquire(60, None));
        assert!(
            !t.acquire(60, Some(Duration::from_millis(20))),
            "over budget must wait"
        );
        let t2 = t.clone();
        let h = std::thread::spawn(move || t2.acquire(60, Some(Duration::from_secs(5))));
        std::thread::sleep(Duration::from_millis(20));
        t.release(1, 60);
        assert!(h.join().unwrap());
        let s = t.stats();
        assert_eq!((s.current_bytes, s.current_msgs), (60, 1));
        assert!(s.blocked >= 2);
        assert!(s.peak_bytes <= 100);
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
                        assert!(t.acquire(b, Some(Duration::from_secs(10))));
                        t.release(1, b);
                    }
                });
            }
        });
        let s = t.stats();
        assert!(s.peak_bytes <= 10_000, "{s:?}");
        assert_eq!((s.current_bytes, s.current_msgs), (0, 0));
    }

    #[test]
    fn oversized_message_passes_alone_and_force_counts_overshoot() {
        let t = Throttle::new(10, 2);
        assert!(t.acquire(1000, Some(Duration::ZERO)));
        t.force_acquire(5);
        assert_eq!(t.stats().overshoot, 1);
        t.release(2, 1005);
        assert!(t.acquire(5, Some(Duration::ZERO)));
        assert!(t.acquire(5, Some(Duration::ZERO)));
        assert!(!t.acquire(0, Some(Duration::ZERO)), "message budget of 2");
    }
}
