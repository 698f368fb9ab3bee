//! The receive path and the completion queue. [`RdmaWorker::drain_cq`] takes the worker's completions
//! (both directions share one CQ): a receive's data joins the stream's `rx` queue and its immediate
//! data returns send credits; a send completion gives its slots back to the stream (pinned chunks
//! release their buffers and regions) and wakes a blocked writer; a failed work request fails the
//! connection (flushed ones after the peer closed are expected). `read` copies out of the received
//! buffers, `read_with` lends them; a buffer read in full is re-posted at once
//! ([`RdmaWorker::repost`]) and owed to the peer as a credit. On Ceph's wire a SEND without payload is
//! the peer's close, and data before the client's acknowledgement establishes the server's side.
//!
//! Invariants: a completion is routed by the [`SocketId`] its work-request id carries, so one of a
//! closed connection finds no entry and is dropped (its QP and buffers are gone); a receive buffer is
//! posted, in `rx`, or back in the pool (a dead stream's are not re-posted); a peer that breaks flow
//! control fails its connection.

use std::io;

use super::conn::{Link, Phase, RxBuf, Stream};
use super::send::SEQ_MASK;
use super::side_channel::CephStep;
use super::{Entry, RdmaWorker};
use crate::stack::rdma::bump;
use crate::stack::rdma::pool::{BufferPool, Slot};
use crate::stack::rdma::verbs::{self, Completion};
use crate::stack::{Readiness, SocketId};

/// CQ batches taken per poll at most (each up to 32 completions).
const CQ_BATCHES_PER_POLL: usize = 16;

impl RdmaWorker {
    pub(super) fn drain_cq(&mut self) -> io::Result<usize> {
        let mut total = 0;
        for _ in 0..CQ_BATCHES_PER_POLL {
            self.completions.clear();
            let n = self.cq.poll(&mut self.completions)?;
            total += n;
            for i in 0..self.completions.len() {
                let c = self.completions[i];
                self.on_completion(&c);
            }
            if n < verbs::POLL_BATCH {
                break;
            }
        }
        Ok(total)
    }

    fn on_completion(&mut self, c: &Completion) {
        let id = SocketId(verbs::wr_token(c.wr_id));
        let Some(Entry::Stream(s)) = self.entries.get_mut(&id) else {
            return; // a connection closed since; its QP and buffers are gone
        };
        let is_send = c.wr_id & (1 << 23) != 0;
        if !is_send {
            let Some(slot) = s.link.complete_recv(c) else {
                return;
            };
            if !c.is_success() {
                self.pool.give(slot);
                if s.phase != Phase::PeerClosed || !c.is_flush() {
                    bump(&self.counters.qp_errors, u64::from(s.error.is_none()));
                    let msg = format!("receive failed: {}", c.status_str());
                    Self::fail(&mut self.dirty, id, s, io::ErrorKind::ConnectionReset, msg);
                }
                return;
            }
            let imm = c.imm.unwrap_or(0);
            bump(&self.counters.recvs, 1);
            if let Err(violation) = s.credits.on_receive(imm) {
                bump(&self.counters.credit_violations, 1);
                self.pool.give(slot);
                let msg = format!("peer broke flow control: {violation}");
                Self::fail(&mut self.dirty, id, s, io::ErrorKind::InvalidData, msg);
                return;
            }
            if let Link::Ceph(link) = &mut s.link {
                if c.byte_len == 0 {
                    // Ceph's close: a SEND without payload. What came before it stays readable.
                    tracing::debug!(%id, peer = %s.peer, "ceph peer sent its close message");
                    if matches!(s.phase, Phase::Established | Phase::Accepting) {
                        s.phase = Phase::PeerClosed;
                    }
                    Self::repost(&mut self.pool, &mut self.credit_due, s, id, slot);
                    Self::mark(&mut self.dirty, id, s, Readiness::BOTH);
                    return;
                }
                if link.step == CephStep::AwaitAck {
                    // Data before the client's acknowledgement: its QP is ready, so the connection
                    // is (Ceph's server does the same); the acknowledgement may still follow.
                    link.step = CephStep::Done;
                    link.late_ack = true;
                    s.phase = Phase::Established;
                    bump(&self.counters.established, 1);
                    Self::mark(&mut self.dirty, id, s, Readiness::BOTH);
                }
            }
            if imm > 0 {
                Self::queue_open(&mut self.tx_pending, id, s);
                if s.write_blocked {
                    s.write_blocked = false;
                    Self::mark(&mut self.dirty, id, s, Readiness::WRITABLE);
                }
            }
            let len = (c.byte_len as usize).min(slot.capacity() as usize);
            if len == 0 {
                Self::repost(&mut self.pool, &mut self.credit_due, s, id, slot);
            } else {
                bump(&self.counters.bytes_received, len as u64);
                s.rx.push_back(RxBuf { slot, len, off: 0 });
                Self::mark(&mut self.dirty, id, s, Readiness::READABLE);
            }
        } else {
            self.reclaimed.clear();
            s.link.complete_send(c, &mut self.reclaimed);
            if !self.reclaimed.is_empty() {
                let seq_low = c.wr_id & SEQ_MASK;
                let last = s.posted_seq.wrapping_sub(1);
                let full = last - (last.wrapping_sub(seq_low) & SEQ_MASK);
                s.completed_seq = s.completed_seq.max(full + 1);
                // Slots go back to the stream; pinned chunks release their buffers and regions.
                for buf in self.reclaimed.drain(..) {
                    if let Some(slot) = buf.into_slot() {
                        s.send_free.push(slot);
                    }
                }
                Self::queue_open(&mut self.tx_pending, id, s);
                if s.write_blocked {
                    s.write_blocked = false;
                    Self::mark(&mut self.dirty, id, s, Readiness::WRITABLE);
                }
            }
            if !c.is_success() && (s.phase != Phase::PeerClosed || !c.is_flush()) {
                bump(&self.counters.qp_errors, u64::from(s.error.is_none()));
                let msg = format!("send failed: {}", c.status_str());
                Self::fail(&mut self.dirty, id, s, io::ErrorKind::ConnectionReset, msg);
            }
        }
    }

    /// Give a drained receive buffer back to the QP; it is owed to the peer as a credit.
    pub(super) fn repost(
        pool: &mut BufferPool,
        credit_due: &mut Vec<SocketId>,
        s: &mut Stream,
        id: SocketId,
        slot: Slot,
    ) {
        if s.phase == Phase::Dead {
            pool.give(slot);
            return;
        }
        match s.link.post_recv(slot) {
            Ok(()) => {
                s.credits.on_reposted();
                if !s.credit_queued && s.credits.credit_only_due() {
                    s.credit_queued = true;
                    credit_due.push(id);
                }
            }
            Err((slot, _)) => pool.give(slot),
        }
    }

    /// What a read that found no data returns: the stream's error, end of stream, or `WouldBlock`.
    fn nothing_read(s: &Stream) -> io::Result<usize> {
        if let Some(err) = s.error() {
            return Err(err);
        }
        match s.phase {
            Phase::PeerClosed => Ok(0),
            _ => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// `WorkerStack::read`: copy out of the received buffers.
    pub(super) fn read_copied(&mut self, id: SocketId, buf: &mut [u8]) -> io::Result<usize> {
        let Some(Entry::Stream(s)) = self.entries.get_mut(&id) else {
            return Err(self.not_a_stream(id, "read"));
        };
        let mut n = 0;
        while n < buf.len() {
            let Some(front) = s.rx.front_mut() else { break };
            let take = (front.len - front.off).min(buf.len() - n);
            buf[n..n + take].copy_from_slice(&front.slot.bytes()[front.off..front.off + take]);
            front.off += take;
            n += take;
            if front.off == front.len {
                if let Some(done) = s.rx.pop_front() {
                    Self::repost(&mut self.pool, &mut self.credit_due, s, id, done.slot);
                }
            }
        }
        if n > 0 || buf.is_empty() {
            return Ok(n);
        }
        Self::nothing_read(s)
    }

    /// `WorkerStack::read_with`: lend the received buffers to `f`.
    pub(super) fn read_lent(
        &mut self,
        id: SocketId,
        scratch: &mut [u8],
        f: &mut dyn FnMut(&[u8]),
    ) -> io::Result<usize> {
        let Some(Entry::Stream(s)) = self.entries.get_mut(&id) else {
            return Err(self.not_a_stream(id, "read"));
        };
        // Lend whole receive buffers (the rest of one a `read` left partly drained, then whole ones)
        // until the budget is reached; each is re-posted as soon as `f` is done with it.
        let mut n = 0;
        while n < scratch.len() {
            let Some(rx) = s.rx.pop_front() else { break };
            let data = rx.slot.bytes().get(rx.off..rx.len).unwrap_or(&[]);
            if !data.is_empty() {
                f(data);
                n += data.len();
            }
            Self::repost(&mut self.pool, &mut self.credit_due, s, id, rx.slot);
        }
        if n > 0 || scratch.is_empty() {
            return Ok(n);
        }
        Self::nothing_read(s)
    }
}
