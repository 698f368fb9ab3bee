//! The timer queue of one event center.
//!
//! Owns a min-heap of `(deadline, TimerId)` and the set of live timers. Cancelling is O(1) and lazy: the heap
//! entry stays until it reaches the top, where it is dropped. Invariants: the heap's top is always live (or
//! the heap is empty), so [`Timers::next_deadline`] is a peek; timers with equal deadlines fire in the order
//! they were added (ids grow); the heap is rebuilt when dead entries outnumber live ones, so a pattern of
//! add-then-cancel (keepalive re-arming) does not grow memory.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rustc_hash::FxHashSet;
use std::fmt;
use std::time::Instant;

/// A timer of one event center. Ids are never reused by that center.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(pub u64);

impl fmt::Display for TimerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "timer#{}", self.0)
    }
}

/// A queue of one-shot timers.
#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, TimerId)>>,
    live: FxHashSet<TimerId>,
    next_id: u64,
}

impl Timers {
    pub fn new() -> Self {
        Timers::default()
    }

    /// Arm a timer for `deadline`.
    pub fn add(&mut self, deadline: Instant) -> TimerId {
        let id = TimerId(self.next_id);
        self.next_id += 1;
        self.heap.push(Reverse((deadline, id)));
        self.live.insert(id);
        id
    }

    /// Disarm `id`. Returns `false` if it already fired or was cancelled.
    pub fn cancel(&mut self, id: TimerId) -> bool {
        if !self.live.remove(&id) {
            return false;
        }
        self.drop_dead_top();
        if self.heap.len() > 2 * self.live.len() + 64 {
            let live = &self.live;
            self.heap.retain(|Reverse((_, id))| live.contains(id));
        }
        true
    }

    /// The earliest live deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((deadline, _))| *deadline)
    }

    /// Remove and return the earliest timer if its deadline is at or before `now`.
    pub fn pop_expired(&mut self, now: Instant) -> Option<TimerId> {
        let Reverse((deadline, id)) = *self.heap.peek()?;
        if deadline > now {
            return None;
        }
        self.heap.pop();
        self.live.remove(&id);
        self.drop_dead_top();
        Some(id)
    }

    /// The earliest live timer, without removing it.
    pub fn peek(&self) -> Option<(Instant, TimerId)> {
        self.heap.peek().map(|Reverse(entry)| *entry)
    }

    /// The id the next [`Timers::add`] will return; every armed timer's id is below it.
    pub fn next_id(&self) -> TimerId {
        TimerId(self.next_id)
    }

    pub fn is_armed(&self, id: TimerId) -> bool {
        self.live.contains(&id)
    }

    /// Number of armed timers.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    fn drop_dead_top(&mut self) {
        while let Some(Reverse((_, id))) = self.heap.peek() {
            if self.live.contains(id) {
                break;
            }
            self.heap.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fire_in_deadline_order_then_insertion_order() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut timers = Timers::new();
        let c = timers.add(t0 + ms(30));
        let a = timers.add(t0 + ms(10));
        let b1 = timers.add(t0 + ms(20));
        let b2 = timers.add(t0 + ms(20));
        assert_eq!(timers.next_deadline(), Some(t0 + ms(10)));
        assert_eq!(timers.pop_expired(t0 + ms(5)), None);
        let fired: Vec<_> = std::iter::from_fn(|| timers.pop_expired(t0 + ms(30))).collect();
        assert_eq!(fired, vec![a, b1, b2, c]);
        assert!(timers.is_empty());
        assert_eq!(timers.next_deadline(), None);
    }

    #[test]
    fn cancelled_timers_do_not_fire_and_do_not_hold_the_deadline() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut timers = Timers::new();
        let early = timers.add(t0 + ms(1));
        let middle = timers.add(t0 + ms(2));
        let late = timers.add(t0 + ms(3));
        assert!(timers.cancel(early));
        assert!(!timers.cancel(early));
        assert_eq!(timers.next_deadline(), Some(t0 + ms(2)));
        assert!(timers.cancel(middle));
        assert_eq!(timers.pop_expired(t0 + ms(10)), Some(late));
        assert_eq!(timers.pop_expired(t0 + ms(10)), None);
        assert!(!timers.cancel(late), "a fired timer cannot be cancelled");
    }

    #[test]
    fn add_cancel_churn_keeps_heap_small() {
        let t0 = Instant::now();
        let mut timers = Timers::new();
        let keep = timers.add(t0);
        for i in 0..10_000u64 {
            let id = timers.add(t0 + Duration::from_secs(60 + i));
            timers.cancel(id);
        }
        assert_eq!(timers.len(), 1);
        assert!(
            timers.heap.len() < 200,
            "heap has {} entries",
            timers.heap.len()
        );
        assert_eq!(timers.pop_expired(t0), Some(keep));
    }
}
