//! One connection of the worker: its [`Stream`] record (phase, credits, the buffers it holds, the
//! readiness to report) and the [`Link`] under it, which hides which wire made the QP (an rdma_cm id, or
//! Ceph's side channel with a hand-made QP).
//!
//! Invariants: `recv_slots` and `send_slots` count every pool slot the connection holds, wherever it is
//! (posted on the QP, in `send_free`, `open` or `rx`); `posted_seq - completed_seq` is the SENDs not yet
//! known complete; [`RdmaWorker::mark`] puts the id on the worker's `dirty` list when its `pending`
//! readiness goes from empty to non-empty; the first error is kept and is what later reads and writes
//! report ([`RdmaWorker::fail`] also disconnects and marks the stream dead).

use std::collections::VecDeque;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use super::side_channel::CephLink;
use super::RdmaWorker;
use crate::stack::rdma::credit::Credits;
use crate::stack::rdma::pool::{SendBuf, Slot};
use crate::stack::rdma::verbs::{CmId, Completion, OwnedQp, Qp, SendOptions};
use crate::stack::rdma::PeerParams;
use crate::stack::{Readiness, SocketId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Client: waiting for ADDR_RESOLVED.
    Resolving,
    /// Client: waiting for ROUTE_RESOLVED.
    Routing,
    /// Client: rdma_connect sent, waiting for ESTABLISHED.
    Connecting,
    /// Client on Ceph's wire: TCP side channel connecting, or queue-pair records being exchanged.
    CephConnecting,
    /// Server: taken by `accept`, not yet answered (may still be detached).
    AcceptPending,
    /// Server: rdma_accept sent, waiting for ESTABLISHED.
    Accepting,
    Established,
    /// The peer disconnected: remaining data can be read, then end of stream.
    PeerClosed,
    /// A connect failed (reported as ConnectFailed) or the connection failed (see `error`).
    Dead,
}

impl Phase {
    pub(super) fn is_connecting(self) -> bool {
        matches!(
            self,
            Phase::Resolving | Phase::Routing | Phase::Connecting | Phase::CephConnecting
        )
    }
}

/// A completed receive not yet read in full.
pub(super) struct RxBuf {
    pub(super) slot: Slot,
    pub(super) len: usize,
    pub(super) off: usize,
}

/// Where a connection's QP comes from: an rdma_cm id (msgr's wire) or Ceph's TCP side channel with a
/// QP set up by hand.
pub(super) enum Link {
    Cm(CmId),
    Ceph(Box<CephLink>),
}

impl Link {
    pub(super) fn qp(&self) -> io::Result<&Qp> {
        match self {
            Link::Cm(cm) => cm.qp(),
            Link::Ceph(c) => {
                c.qp.as_ref()
                    .map(OwnedQp::qp)
                    .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "no QP yet"))
            }
        }
    }

    pub(super) fn qp_mut(&mut self) -> io::Result<&mut Qp> {
        match self {
            Link::Cm(cm) => cm.qp_mut(),
            Link::Ceph(c) => {
                c.qp.as_mut()
                    .map(OwnedQp::qp_mut)
                    .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "no QP yet"))
            }
        }
    }

    pub(super) fn is_ceph(&self) -> bool {
        matches!(self, Link::Ceph(_))
    }

    pub(super) fn max_inline(&self) -> u32 {
        self.qp().map_or(0, Qp::max_inline)
    }

    pub(super) fn post_recv(&mut self, slot: Slot) -> Result<(), (Slot, io::Error)> {
        match self.qp_mut() {
            Ok(qp) => qp.post_recv(slot),
            Err(e) => Err((slot, e)),
        }
    }

    pub(super) fn post_send(
        &mut self,
        buf: SendBuf,
        opts: SendOptions,
    ) -> Result<Option<SendBuf>, (SendBuf, io::Error)> {
        match self.qp_mut() {
            Ok(qp) => qp.post_send(buf, opts),
            Err(e) => Err((buf, e)),
        }
    }

    pub(super) fn complete_recv(&mut self, c: &Completion) -> Option<Slot> {
        self.qp_mut().ok()?.complete_recv(c)
    }

    pub(super) fn complete_send(&mut self, c: &Completion, out: &mut Vec<SendBuf>) {
        if let Ok(qp) = self.qp_mut() {
            qp.complete_send(c, out);
        }
    }

    pub(super) fn force_error(&self) -> io::Result<()> {
        self.qp()?.force_error()
    }

    /// Tell the peer the connection is over: an rdma_cm disconnect, or on Ceph's wire the end of the
    /// side channel (what Ceph watches).
    pub(super) fn disconnect(&self) {
        match self {
            Link::Cm(cm) => cm.disconnect(),
            Link::Ceph(c) => {
                let _ = c.tcp.shutdown(Shutdown::Both);
            }
        }
    }

    pub(super) fn reject(&self) {
        match self {
            Link::Cm(cm) => cm.reject(),
            Link::Ceph(c) => {
                let _ = c.tcp.shutdown(Shutdown::Both);
            }
        }
    }

    pub(super) fn destroy_qp(&mut self) -> Vec<Slot> {
        match self {
            Link::Cm(cm) => cm.destroy_qp(),
            Link::Ceph(c) => c.qp.take().map(OwnedQp::destroy).unwrap_or_default(),
        }
    }

    pub(super) fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Link::Cm(cm) => cm.local_addr(),
            Link::Ceph(c) => c.tcp.local_addr().ok(),
        }
    }
}

pub(super) struct Stream {
    pub(super) link: Link,
    pub(super) phase: Phase,
    pub(super) peer: SocketAddr,
    pub(super) connect_timeout: Option<Duration>,
    pub(super) deadline: Option<Instant>,
    pub(super) params: Option<PeerParams>,
    pub(super) credits: Credits,
    /// Largest SEND payload: min(our buffer, the peer's buffer).
    pub(super) chunk: usize,
    pub(super) send_free: Vec<Slot>,
    /// The send buffer being filled by `writev` and its length; posted by the next poll.
    pub(super) open: Option<(Slot, usize)>,
    pub(super) open_queued: bool,
    pub(super) rx: VecDeque<RxBuf>,
    pub(super) posted_seq: u64,
    pub(super) completed_seq: u64,
    pub(super) unsignaled: u32,
    pub(super) write_blocked: bool,
    pub(super) credit_queued: bool,
    /// Receive buffers this connection holds (posted or being read): the pre-authentication depth,
    /// then the full one.
    pub(super) recv_slots: u32,
    /// Send buffers this connection holds (free, open or posted).
    pub(super) send_slots: u32,
    /// The messenger said the peer authenticated (the connection was offered its full depth).
    pub(super) authenticated: bool,
    /// Readiness to report at the end of this poll.
    pub(super) pending: Readiness,
    pub(super) error: Option<(io::ErrorKind, String)>,
    /// CQ entries reserved for this connection's QP.
    pub(super) cq_share: u32,
}

impl Stream {
    pub(super) fn new(link: Link, phase: Phase, peer: SocketAddr) -> Self {
        Stream {
            link,
            phase,
            peer,
            connect_timeout: None,
            deadline: None,
            params: None,
            credits: Credits::new(0, 4),
            chunk: 0,
            send_free: Vec::new(),
            open: None,
            open_queued: false,
            rx: VecDeque::new(),
            posted_seq: 0,
            completed_seq: 0,
            unsignaled: 0,
            write_blocked: false,
            credit_queued: false,
            recv_slots: 0,
            send_slots: 0,
            authenticated: false,
            pending: Readiness::default(),
            error: None,
            cq_share: 0,
        }
    }

    pub(super) fn outstanding(&self) -> u64 {
        self.posted_seq - self.completed_seq
    }

    pub(super) fn error(&self) -> Option<io::Error> {
        self.error
            .as_ref()
            .map(|(kind, msg)| io::Error::new(*kind, msg.clone()))
    }
}

impl RdmaWorker {
    pub(super) fn mark(dirty: &mut Vec<SocketId>, id: SocketId, s: &mut Stream, r: Readiness) {
        if s.pending.is_empty() {
            dirty.push(id);
        }
        s.pending.readable |= r.readable;
        s.pending.writable |= r.writable;
    }

    /// Record a fatal error on an established (or accepting) stream and make the owner look.
    pub(super) fn fail(
        dirty: &mut Vec<SocketId>,
        id: SocketId,
        s: &mut Stream,
        kind: io::ErrorKind,
        msg: String,
    ) {
        if s.error.is_none() {
            tracing::debug!(%id, peer = %s.peer, %msg, "rdma connection failed");
            s.error = Some((kind, msg));
        }
        if s.phase != Phase::Dead {
            s.link.disconnect();
        }
        s.phase = Phase::Dead;
        Self::mark(dirty, id, s, Readiness::BOTH);
    }
}
