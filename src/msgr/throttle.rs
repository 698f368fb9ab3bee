//! Back-pressure: a budget of bytes and messages that senders take before queueing and the messenger
//! returns when the protocol lets go of a message (acked, or sent on a lossy connection, or discarded).
//!
//! Invariant: `current` never exceeds `max` except by one message larger than the whole budget (which
//! is let through alone, so it cannot deadlock), or by sends from worker threads, which must not block
//! (a dispatcher replying from inside the event loop) and are counted in `overshoot`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// A bytes + messages budget with blocking acquire.
#[derive(Debug)]
pub struct Throttle {
    max_bytes: u64,
    max_msgs: u64,
    state: Mutex<(u64, u64)>,
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
            max_bytes: if max_bytes == 0 { u64::MAX } else { max_bytes },
            max_msgs: if max_msgs == 0 { u64::MAX } else { max_msgs },
            state: Mutex::new((0, 0)),
            cv: Condvar::new(),
            blocked: AtomicU64::new(0),
            overshoot: AtomicU64::new(0),
            peak_bytes: AtomicU64::new(0),
            peak_msgs: AtomicU64::new(0),
        }
    }

    fn fits(&self, cur: (u64, u64), bytes: u64) -> bool {
        let empty = cur.0 == 0 && cur.1 == 0;
        empty || (cur.0 + bytes <= self.max_bytes && cur.1 < self.max_msgs)
    }

    /// Take `bytes` and one message, waiting up to `timeout` for room. False on timeout.
    pub fn acquire(&self, bytes: u64, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !self.fits(*st, bytes) {
            self.blocked.fetch_add(1, Ordering::Relaxed);
            while !self.fits(*st, bytes) {
                st = match deadline {
                    None => self.cv.wait(st).unwrap_or_else(|e| e.into_inner()),
                    Some(d) => {
                        let now = Instant::now();
                        if now >= d {
                            return false;
                        }
                        self.cv
                            .wait_timeout(st, d - now)
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    }
                };
            }
        }
        self.take(&mut st, bytes);
        true
    }

    /// Take without waiting, going over budget if need be (for worker threads).
    pub fn force_acquire(&self, bytes: u64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !self.fits(*st, bytes) {
            self.overshoot.fetch_add(1, Ordering::Relaxed);
        }
        self.take(&mut st, bytes);
    }

    fn take(&self, st: &mut (u64, u64), bytes: u64) {
        st.0 += bytes;
        st.1 += 1;
        self.peak_bytes.fetch_max(st.0, Ordering::Relaxed);
        self.peak_msgs.fetch_max(st.1, Ordering::Relaxed);
    }

    /// Give back `msgs` messages carrying `bytes`.
    pub fn release(&self, msgs: u64, bytes: u64) {
        if msgs == 0 && bytes == 0 {
            return;
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.0 = st.0.saturating_sub(bytes);
        st.1 = st.1.saturating_sub(msgs);
        drop(st);
        self.cv.notify_all();
    }

    pub fn stats(&self) -> ThrottleStats {
        let st = *self.state.lock().unwrap_or_else(|e| e.into_inner());
        ThrottleStats {
            max_bytes: self.max_bytes,
            max_msgs: self.max_msgs,
            current_bytes: st.0,
            current_msgs: st.1,
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
