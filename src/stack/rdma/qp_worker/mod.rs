//! One worker's RDMA transport ([`RdmaWorker`], the [`WorkerStack`] of the rdma stack): its verbs
//! objects, its connections (queue pairs) and the byte stream, credits and polling described in the
//! [module docs](super). A connection's `Link` says how its QP came to be: an rdma_cm id (msgr's wire)
//! or Ceph's TCP side channel with a hand-made QP (`CephLink`, driven by `service_ceph` through the
//! steps of `ceph_wire.rs`); the data path above it is the same.
//!
//! This file holds the worker (its verbs objects, its id table, the lazy waker) and its [`WorkerStack`]
//! impl, whose `poll` is the loop:
//!
//! ```text
//! forced QP errors (test hook) → accepts taken since the last turn get their QP → open send buffers
//!   posted → credit-only SENDs → CQ drained → what the completions unblocked posted
//!   → rdma_cm events and Ceph side channels (when idle, setting up, or every CM_CHECK_EVERY turns)
//!   → (nothing to report) wait on the completion channel, the CM channel and the waker (≤ MAX_WAIT)
//!   → connect deadlines → events out
//! ```
//!
//! The rest, by seam: [`conn`] the connection record and its link; [`lifecycle`] connect, QP set-up
//! and promotion to the full depth, finishing an accept, connect failures and deadlines, close, moving
//! a connect request to another worker; [`cm_events`] the rdma_cm events (msgr's wire);
//! [`side_channel`] Ceph's side channel and queue-pair exchange; [`listen`] listeners, their backlog
//! and `accept`; [`send`] the send path; [`receive`] the completion queue and the receive path.
//!
//! Invariants: a connection's QP lives on this worker's PD and CQ for its whole life (only connect
//! requests not yet accepted move, see [`WorkerStack::detach`]); every slot of the pool is in exactly one
//! place (the pool's free list, a QP's posted work, a stream's free send list, its open send buffer, or
//! its received-data queue) and returns to the pool when the stream closes; work-request ids carry the
//! [`SocketId`], so completions of a closed connection are recognised and dropped. A connection holds
//! [`RdmaConfig::preauth_slots`] until the messenger says its peer authenticated
//! ([`WorkerStack::peer_authenticated`]), then its full depth (if the pool has it): `recv_slots` and
//! `send_slots` count what it holds, wherever each slot is.

mod cm_events;
mod conn;
mod lifecycle;
mod listen;
mod receive;
mod send;
mod side_channel;

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Token};

use bytes::Bytes;

use self::conn::{Phase, Stream};
use self::listen::{Listening, Pending};
use super::mr_cache::MrCache;
use super::pool::{BufferPool, PdRegistrar, SendBuf};
use super::verbs::{
    self, CompChannel, Completion, CompletionQueue, Context, EventChannel, ProtectionDomain,
};
use super::{RdmaConfig, RdmaCounters, RdmaHandoff, CM_CHECK_EVERY};
use crate::stack::{
    ConnectOptions, ListenOptions, SocketEvent, SocketId, TransportError, Wake, WorkerStack,
};

const WAKER_TOKEN: Token = Token(0);
const COMP_TOKEN: Token = Token(1);
const CM_TOKEN: Token = Token(2);

/// Wakes the worker only when it is blocked in [`RdmaWorker::wait`]: a spinning worker sees new work on
/// its next turn anyway, so the common case costs no syscall. A wake that races with the worker going to
/// sleep is seen at the latest when the wait times out, and the wait is never longer than
/// [`MAX_WAIT`] (the event loop asks a busy-poll stack for its idle back-off, 50 µs by default).
struct LazyWake {
    waker: mio::Waker,
    sleeping: std::sync::atomic::AtomicBool,
}

impl Wake for LazyWake {
    fn wake(&self) -> io::Result<()> {
        if self.sleeping.load(Ordering::SeqCst) {
            self.waker.wake()
        } else {
            Ok(())
        }
    }
}

/// Longest blocking wait of one `poll`, whatever timeout it was given (bounds a missed lazy wake-up).
pub const MAX_WAIT: Duration = Duration::from_millis(1);

/// What an id names: a listener (with its backlog of connect requests) or a connection.
enum Entry {
    Listener {
        listening: Listening,
        local: SocketAddr,
        backlog: VecDeque<Pending>,
    },
    Stream(Box<Stream>),
}

/// One worker's RDMA transport. See the module docs.
pub struct RdmaWorker {
    index: usize,
    config: RdmaConfig,
    counters: Arc<RdmaCounters>,
    qp_error_epoch: Arc<AtomicU64>,
    seen_epoch: u64,
    pd: Rc<ProtectionDomain>,
    cq: Rc<CompletionQueue>,
    cm_channel: Rc<EventChannel>,
    pool: BufferPool,
    /// Regions registered over callers' buffers for zero-copy sends (see `mr_cache`).
    mr_cache: MrCache<PdRegistrar>,
    entries: rustc_hash::FxHashMap<SocketId, Entry>,
    next_id: u64,
    poll: mio::Poll,
    mio_events: mio::Events,
    waker: Arc<LazyWake>,
    /// Events made by the stack (connected, acceptable, failed), reported by the next poll.
    synthetic: Vec<SocketEvent>,
    /// Streams whose readiness changed in this poll.
    dirty: Vec<SocketId>,
    to_accept: Vec<SocketId>,
    credit_due: Vec<SocketId>,
    /// Streams with an open send buffer to post.
    tx_pending: Vec<SocketId>,
    /// A promotion refused for an exhausted pool was logged at warn level (once per worker).
    promotion_refusal_logged: bool,
    completions: Vec<Completion>,
    reclaimed: Vec<SendBuf>,
    turns: u64,
    cq_used: u32,
    /// Connections in a connect phase (their CM events are checked every turn).
    setting_up: usize,
    /// Our GID at the configured index and our port's LID (Ceph's queue-pair records).
    gid: [u8; 16],
    lid: u16,
    /// Scratch list of the side channels to look at (Ceph's wire).
    side_ids: Vec<SocketId>,
    /// When listeners and established side channels are looked at next.
    next_side_check: Instant,
}

// The worker's verbs objects must be dropped in order: streams (QPs, ids) before the pool, CQ, PD and
// channels. Field order does most of it; Drop makes it explicit for the entries.
impl Drop for RdmaWorker {
    fn drop(&mut self) {
        let ids: Vec<SocketId> = self.entries.keys().copied().collect();
        for id in ids {
            let _ = self.close(id);
        }
    }
}

impl RdmaWorker {
    pub(super) fn new(
        index: usize,
        config: RdmaConfig,
        counters: Arc<RdmaCounters>,
        qp_error_epoch: Arc<AtomicU64>,
    ) -> io::Result<Self> {
        config.check()?;
        let ctx = Context::open(config.device.as_deref())?;
        let gid = ctx.query_gid(config.port, config.gid_index)?;
        let lid = ctx.query_port(config.port)?.lid;
        let pd = ProtectionDomain::new(&ctx)?;
        let comp = CompChannel::new(&ctx)?;
        let cq = Rc::new(CompletionQueue::new(&ctx, &comp, config.cq_depth)?);
        let cm_channel = EventChannel::new()?;
        let poll = mio::Poll::new()?;
        let waker = Arc::new(LazyWake {
            waker: mio::Waker::new(poll.registry(), WAKER_TOKEN)?,
            sleeping: std::sync::atomic::AtomicBool::new(false),
        });
        let comp_fd = comp.fd();
        poll.registry()
            .register(&mut SourceFd(&comp_fd), COMP_TOKEN, Interest::READABLE)?;
        poll.registry().register(
            &mut SourceFd(&cm_channel.fd()),
            CM_TOKEN,
            Interest::READABLE,
        )?;
        let pool = BufferPool::new(
            &pd,
            config.slot_size(),
            config.pool_chunk,
            config.max_pool_slots,
        );
        let mr_cache = MrCache::new(PdRegistrar(pd.clone()), config.zero_copy_pin_limit);
        let seen_epoch = qp_error_epoch.load(Ordering::Acquire);
        Ok(RdmaWorker {
            index,
            config,
            counters,
            qp_error_epoch,
            seen_epoch,
            pd,
            cq,
            cm_channel,
            pool,
            mr_cache,
            entries: rustc_hash::FxHashMap::default(),
            next_id: 1,
            poll,
            mio_events: mio::Events::with_capacity(8),
            waker,
            synthetic: Vec::new(),
            dirty: Vec::new(),
            to_accept: Vec::new(),
            credit_due: Vec::new(),
            tx_pending: Vec::new(),
            promotion_refusal_logged: false,
            completions: Vec::with_capacity(verbs::POLL_BATCH),
            reclaimed: Vec::new(),
            turns: 0,
            cq_used: 0,
            setting_up: 0,
            gid,
            lid,
            side_ids: Vec::new(),
            next_side_check: Instant::now(),
        })
    }

    /// Which worker this is.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Registered buffers: (free, total).
    pub fn pool_usage(&self) -> (usize, u32) {
        (self.pool.available(), self.pool.total())
    }

    /// Registered buffers connection `id` holds: (receive, send).
    pub fn slots_held(&self, id: SocketId) -> Option<(u32, u32)> {
        match self.entries.get(&id) {
            Some(Entry::Stream(s)) => Some((s.recv_slots, s.send_slots)),
            _ => None,
        }
    }

    /// Regions registered for zero-copy sends and the bytes they pin (page-rounded).
    pub fn zero_copy_pinned(&self) -> (usize, usize) {
        (self.mr_cache.len(), self.mr_cache.pinned())
    }

    /// Open ids (listeners and connections).
    pub fn socket_count(&self) -> usize {
        self.entries.len()
    }

    fn alloc_id(&mut self) -> SocketId {
        let id = SocketId(self.next_id);
        self.next_id += 1;
        id
    }

    fn stream_mut(&mut self, id: SocketId) -> io::Result<&mut Stream> {
        match self.entries.get_mut(&id) {
            Some(Entry::Stream(s)) => Ok(s),
            other => Err(TransportError::refused(id, "stream operation", other)),
        }
    }

    fn not_a_stream(&self, id: SocketId, op: &'static str) -> io::Error {
        TransportError::refused(id, op, self.entries.get(&id))
    }

    fn inject_qp_errors(&mut self) {
        let epoch = self.qp_error_epoch.load(Ordering::Acquire);
        if epoch == self.seen_epoch {
            return;
        }
        self.seen_epoch = epoch;
        for (id, e) in &self.entries {
            if let Entry::Stream(s) = e {
                if s.phase == Phase::Established {
                    tracing::info!(worker = self.index, %id, "forcing QP into the error state");
                    if let Err(err) = s.link.force_error() {
                        tracing::warn!(%id, error = %err, "forcing QP error failed");
                    }
                }
            }
        }
    }

    /// Block up to `timeout` on the completion channel, the CM channel and the waker.
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.cq.req_notify()?;
        // A completion that arrived before arming would not wake us: look once more.
        if self.drain_cq()? > 0 || !self.dirty.is_empty() {
            return Ok(());
        }
        let mut timeout = timeout.map_or(MAX_WAIT, |t| t.min(MAX_WAIT));
        if let Some(d) = self.next_connect_deadline() {
            timeout = timeout.min(d.saturating_duration_since(Instant::now()));
        }
        self.waker.sleeping.store(true, Ordering::SeqCst);
        let polled = self.poll.poll(&mut self.mio_events, Some(timeout));
        self.waker.sleeping.store(false, Ordering::SeqCst);
        match polled {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        let mut cm = false;
        for ev in self.mio_events.iter() {
            match ev.token() {
                COMP_TOKEN => while self.cq.take_event()? {},
                CM_TOKEN => cm = true,
                _ => {}
            }
        }
        self.drain_cq()?;
        if cm {
            self.drain_cm()?;
        }
        Ok(())
    }
}

impl WorkerStack for RdmaWorker {
    type Handoff = RdmaHandoff;

    fn listen(&mut self, addr: SocketAddr, opts: &ListenOptions) -> io::Result<SocketId> {
        self.listen_on(addr, opts)
    }

    fn connect(&mut self, addr: SocketAddr, opts: &ConnectOptions) -> io::Result<SocketId> {
        self.start_connect(addr, opts)
    }

    fn accept(&mut self, listener: SocketId) -> io::Result<Option<(SocketId, SocketAddr)>> {
        self.accept_from_backlog(listener)
    }

    fn read(&mut self, id: SocketId, buf: &mut [u8]) -> io::Result<usize> {
        self.read_copied(id, buf)
    }

    fn read_with(
        &mut self,
        id: SocketId,
        scratch: &mut [u8],
        f: &mut dyn FnMut(&[u8]),
    ) -> io::Result<usize> {
        self.read_lent(id, scratch, f)
    }

    fn writev(&mut self, id: SocketId, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.write_copied(id, bufs)
    }

    fn write_bytes(&mut self, id: SocketId, bufs: &[Bytes]) -> io::Result<usize> {
        self.write_zero_copy(id, bufs)
    }

    /// Posts the open send buffers now instead of at the next poll.
    fn flush_writes(&mut self) {
        self.flush_open();
    }

    fn shutdown(&mut self, id: SocketId, _how: Shutdown) -> io::Result<()> {
        // An RC connection has no half-close: either direction shuts the whole connection.
        let s = self.stream_mut(id)?;
        s.link.disconnect();
        Ok(())
    }

    fn close(&mut self, id: SocketId) -> io::Result<()> {
        self.close_entry(id)
    }

    fn peer_authenticated(&mut self, id: SocketId) {
        self.promote(id);
    }

    fn local_addr(&self, id: SocketId) -> io::Result<SocketAddr> {
        match self.entries.get(&id) {
            Some(Entry::Listener { local, .. }) => Ok(*local),
            Some(Entry::Stream(s)) => s
                .link
                .local_addr()
                .ok_or_else(|| io::ErrorKind::NotConnected.into()),
            None => Err(TransportError::UnknownSocket(id).into()),
        }
    }

    fn peer_addr(&self, id: SocketId) -> io::Result<SocketAddr> {
        match self.entries.get(&id) {
            Some(Entry::Stream(s)) => Ok(s.peer),
            other => Err(TransportError::refused(id, "peer_addr", other)),
        }
    }

    fn poll(&mut self, events: &mut Vec<SocketEvent>, timeout: Option<Duration>) -> io::Result<()> {
        self.turns += 1;
        self.inject_qp_errors();
        for id in std::mem::take(&mut self.to_accept) {
            self.finish_accept(id);
        }
        self.flush_open();
        for id in std::mem::take(&mut self.credit_due) {
            self.send_credit_only(id);
        }
        self.drain_cq()?;
        if !self.tx_pending.is_empty() {
            // Credits or send-queue room came back: post what waited for them.
            self.flush_open();
        }
        let idle_wait = timeout != Some(Duration::ZERO);
        if idle_wait || self.setting_up > 0 || self.turns % CM_CHECK_EVERY == 0 {
            self.drain_cm()?;
            self.drain_side_channels();
        }
        if idle_wait
            && self.dirty.is_empty()
            && self.synthetic.is_empty()
            && self.to_accept.is_empty()
            && self.credit_due.is_empty()
            && self.tx_pending.is_empty()
        {
            self.wait(timeout)?;
        }
        if self.setting_up > 0 {
            self.expire_connects(Instant::now());
        }
        events.append(&mut self.synthetic);
        for id in self.dirty.drain(..) {
            if let Some(Entry::Stream(s)) = self.entries.get_mut(&id) {
                let r = std::mem::take(&mut s.pending);
                if !r.is_empty() {
                    events.push(SocketEvent::ready(id, r));
                }
            }
        }
        Ok(())
    }

    fn is_busy_poll(&self) -> bool {
        true
    }

    fn waker(&self) -> Arc<dyn Wake> {
        self.waker.clone()
    }

    fn detach(&mut self, id: SocketId) -> io::Result<RdmaHandoff> {
        self.detach_pending(id)
    }

    fn attach(&mut self, handoff: RdmaHandoff) -> io::Result<SocketId> {
        self.attach_pending(handoff)
    }
}
