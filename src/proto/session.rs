//! The session: what survives a transport fault on a lossless connection.
//!
//! Owns the outgoing queue (by priority), the sent-but-unacked list, the sequence numbers (`out_seq`,
//! `in_seq`), the cookies and the `global_seq` / `connect_seq` pair ProtocolV2 uses to order reconnects.
//!
//! Invariants:
//! - messages leave in `out_seq` order; every message in `sent` has a seq in `(acked, out_seq]`, ascending;
//! - after [`Session::requeue_sent`], `requeued` holds exactly the unacked messages in seq order and
//!   `out_seq` is rewound so that re-sending renumbers them with their original seqs;
//! - `in_seq` is the highest seq delivered; anything at or below it is a duplicate and is dropped.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::message::Message;

/// A messenger-wide `global_seq` counter (Ceph's `AsyncMessenger::get_global_seq`): every connection
/// attempt takes a fresh value, and a value from the peer moves it forward.
#[derive(Debug, Clone, Default)]
pub struct GlobalSeq(Arc<AtomicU64>);

impl GlobalSeq {
    pub fn new() -> Self {
        Self::default()
    }

    /// Next value, strictly above every value seen so far.
    pub fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Next value strictly above both our counter and `seen` (a value the peer sent in RETRY_GLOBAL).
    pub fn next_after(&self, seen: u64) -> u64 {
        self.0.fetch_max(seen, Ordering::Relaxed);
        self.next()
    }

    pub fn current(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Outgoing messages waiting to be encoded, highest priority first, FIFO within a priority.
/// The priority levels stay allocated once seen, so steady-state queueing does not allocate.
#[derive(Debug, Default)]
pub(crate) struct OutQueue {
    /// Sorted by priority, descending.
    levels: Vec<(u16, VecDeque<Message>)>,
    len: usize,
    bytes: usize,
}

impl OutQueue {
    #[inline]
    pub fn push(&mut self, m: Message) {
        let prio = m.header.priority;
        self.len += 1;
        self.bytes += m.payload_len();
        let idx = match self.levels.binary_search_by(|(p, _)| prio.cmp(p)) {
            Ok(i) => i,
            Err(i) => {
                self.levels.insert(i, (prio, VecDeque::new()));
                i
            }
        };
        self.levels[idx].1.push_back(m);
    }

    pub fn pop(&mut self) -> Option<Message> {
        for (_, q) in self.levels.iter_mut() {
            if let Some(m) = q.pop_front() {
                self.len -= 1;
                self.bytes -= m.payload_len();
                return Some(m);
            }
        }
        None
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        for (_, q) in self.levels.iter_mut() {
            q.clear();
        }
        self.len = 0;
        self.bytes = 0;
    }

    /// Drops the priority levels (and their queues' capacity) when nothing is queued.
    pub fn release_idle_capacity(&mut self) {
        if self.len == 0 {
            self.levels = Vec::new();
        }
    }
}

/// Session state of one logical connection to one peer.
#[derive(Debug, Default)]
pub(crate) struct Session {
    pub out_queue: OutQueue,
    /// Unacked messages put back for re-sending after a fault; drained before `out_queue`.
    pub requeued: VecDeque<Message>,
    /// Sent, not yet acknowledged (lossless only).
    pub sent: VecDeque<Message>,
    pub out_seq: u64,
    pub in_seq: u64,
    /// Messages received since the last ACK we sent.
    pub ack_left: u64,
    pub client_cookie: u64,
    pub server_cookie: u64,
    pub global_seq: u64,
    pub connect_seq: u64,
    pub peer_global_seq: u64,
    pub keepalive_pending: bool,
    /// Messages (and their payload bytes) that left our custody since the owner last asked: acked,
    /// sent on a lossy connection, or discarded. Lets a messenger release its send throttle.
    pub released: Released,
}

/// A count of messages and payload bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    pub msgs: u64,
    pub bytes: u64,
}

impl Released {
    pub fn add(&mut self, m: &Message) {
        self.msgs += 1;
        self.bytes += m.payload_len() as u64;
    }
}

impl Session {
    /// Gives back the capacity of queues that are empty (a quiet session).
    pub fn release_idle_capacity(&mut self) {
        self.out_queue.release_idle_capacity();
        for q in [&mut self.requeued, &mut self.sent] {
            if q.is_empty() {
                *q = VecDeque::new();
            }
        }
    }

    /// Anything waiting to go out (new, or re-sent after a fault)?
    pub fn has_outgoing(&self) -> bool {
        !self.out_queue.is_empty() || !self.requeued.is_empty()
    }

    /// The next message to encode: re-sent ones first, then by priority.
    pub fn next_outgoing(&mut self) -> Option<Message> {
        self.requeued.pop_front().or_else(|| self.out_queue.pop())
    }

    /// A fault: everything sent but unacked goes back for re-sending, `out_seq` rewinds with it.
    pub fn requeue_sent(&mut self) {
        self.out_seq -= self.sent.len() as u64;
        while let Some(m) = self.sent.pop_back() {
            self.requeued.push_front(m);
        }
    }

    /// The peer told us (RECONNECT_OK / reconnect msg_seq) it has everything up to `seq`: drop those
    /// from the re-send list and move `out_seq` past them. Returns how many were dropped.
    pub fn discard_requeued_up_to(&mut self, seq: u64) -> u64 {
        let mut n = 0;
        while let Some(m) = self.requeued.front() {
            if m.header.seq == 0 || m.header.seq > seq {
                break;
            }
            if let Some(m) = self.requeued.pop_front() {
                self.released.add(&m);
            }
            n += 1;
        }
        self.out_seq += n;
        n
    }

    /// The peer acknowledged everything up to `seq`.
    pub fn handle_ack(&mut self, seq: u64) {
        // `sent` ascends by seq. Counted, then dropped where they lie (not moved out one by one).
        let acked = self.sent.partition_point(|m| m.header.seq <= seq);
        for m in self.sent.range(..acked) {
            self.released.add(m);
        }
        self.sent.drain(..acked);
    }

    /// Forget everything: the peer reset the session (or we did). Returns how many undelivered
    /// outgoing messages were discarded.
    pub fn reset(&mut self) -> usize {
        let dropped = self.out_queue.len() + self.requeued.len() + self.sent.len();
        for m in self.requeued.iter().chain(self.sent.iter()) {
            self.released.add(m);
        }
        self.released.msgs += self.out_queue.len() as u64;
        self.released.bytes += self.out_queue.bytes() as u64;
        self.out_queue.clear();
        self.requeued.clear();
        self.sent.clear();
        self.out_seq = 0;
        self.in_seq = 0;
        self.ack_left = 0;
        self.client_cookie = 0;
        self.server_cookie = 0;
        self.connect_seq = 0;
        self.peer_global_seq = 0;
        self.keepalive_pending = false;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(prio: u16, tag: u8) -> Message {
        Message::new(1, Bytes::from(vec![tag])).with_priority(prio)
    }

    #[test]
    fn out_queue_orders_by_priority_then_fifo() {
        let mut q = OutQueue::default();
        q.push(msg(127, 1));
        q.push(msg(127, 2));
        q.push(msg(196, 3));
        q.push(msg(64, 4));
        q.push(msg(196, 5));
        let order: Vec<u8> = std::iter::from_fn(|| q.pop()).map(|m| m.front[0]).collect();
        assert_eq!(order, vec![3, 5, 1, 2, 4]);
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn requeue_then_discard_renumbers_like_ceph() {
        let mut s = Session::default();
        for i in 1..=5u64 {
            let mut m = msg(127, i as u8);
            s.out_seq += 1;
            m.header.seq = s.out_seq;
            s.sent.push_back(m);
        }
        s.handle_ack(2);
        assert_eq!(s.sent.len(), 3);
        s.requeue_sent();
        assert_eq!(s.out_seq, 2);
        assert_eq!(s.requeued.len(), 3);
        // The peer says it got up to 3 after all.
        assert_eq!(s.discard_requeued_up_to(3), 1);
        assert_eq!(s.out_seq, 3);
        let next = s.next_outgoing().unwrap();
        assert_eq!(next.header.seq, 4);
    }

    #[test]
    fn global_seq_moves_past_peer_value() {
        let g = GlobalSeq::new();
        assert_eq!(g.next(), 1);
        assert_eq!(g.next_after(10), 11);
        assert_eq!(g.next(), 12);
        assert_eq!(g.next_after(3), 13);
    }
}
