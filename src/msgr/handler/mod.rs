//! The per-worker half of the messenger: an [`EventHandler`] that owns this worker's sockets and the
//! `proto::Connection`s on them, moves bytes between the two, and turns protocol events into dispatcher
//! calls.
//!
//! Invariants: every connection in `conns` belongs to this worker; a socket id maps to at most one
//! connection; throttle budget is held only by permits inside messages, so it returns whenever a message
//! is dropped (acked, discarded, or with a command queue); a ready connection is read only while its
//! receive throttles have room, and one that paused is registered with the throttle it waits for
//! (`Conn::parked_on`) and comes back through the run list. A session moving between workers (to a reconnect that
//! landed on another worker, see `fetch_session`) is in no worker's maps while in flight, and its handle
//! already names the destination worker, which drains the command queue once it has adopted it.
//! Messages a connection's own dispatch queues to it skip the command queue (`REPLIES`): the pump moves
//! them into the connection after the round, behind what the command queue held.
//!
//! This file holds the [`Handler`], its per-connection pump (commands in, bytes out, protocol events to
//! the dispatcher) and the event-loop callbacks; [`conn`] the connection record and its commands,
//! [`accept`] admission and placement, [`session`] session requests and moves between workers, [`read`]
//! reading under the throttles and the read budget.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::Receiver;

use super::{
    ConnId, ConnShared, ConnectionRef, IdMap, PeerInfo, Shared, WorkerCounters, CURRENT_WORKER,
    DISPATCHING, IN_WORKER, REPLIES,
};
use crate::event::{EventCenter, EventHandler, Remote, TimerId};
use crate::proto::types::{AddrVec, EntityAddr};
use crate::proto::{
    self, ConnStats, Connection, Event, Limit, Phase, Policy, Resolution, Role, SessionRequest,
    SessionRequestKind, Settlement, TransportError, TransportErrorKind,
};
use crate::stack::{
    flush_queue, EventKind, ListenOptions, SocketEvent, SocketId, Wake, WorkerStack,
};
use crate::throttle::{Permit, Throttle};

mod accept;
mod conn;
mod read;
mod session;

use accept::release_half_open;
pub(crate) use conn::{new_handle, Command, Conn};

pub(crate) type RemoteOf<S> = Remote<S, Handler<S>>;

/// Events handed to the dispatcher before the first write of a pump; each later round doubles.
const FIRST_DISPATCH_ROUND: usize = 16;

/// Test interceptor: the connection reports its steps under its messenger id.
#[cfg(feature = "interceptor")]
fn with_intercept_id(mut proto: Connection, id: ConnId) -> Connection {
    proto.set_intercept_id(id);
    proto
}

/// The messenger's event handler on one worker.
pub(crate) struct Handler<S: WorkerStack> {
    index: usize,
    shared: Arc<Shared>,
    remotes: Arc<OnceLock<Vec<RemoteOf<S>>>>,
    counters: Arc<WorkerCounters>,
    /// Boxed: a `Conn` is a few KiB, and the map keeps spare slots.
    conns: IdMap<ConnId, Box<Conn>>,
    by_socket: IdMap<SocketId, ConnId>,
    by_timer: IdMap<TimerId, ConnId>,
    listeners: Vec<SocketId>,
    rbuf: Box<[u8]>,
    tx_scratch: Vec<Bytes>,
    ev_scratch: Vec<Event>,
    /// Connections other threads queued commands for.
    kicks: Receiver<ConnId>,
    /// The run list: connections that want to be read again later. A connection goes on it when a
    /// receive throttle it paused on has room again (`ConnShared::want_read`, set from any thread, reaches
    /// us through the kick queue), or when this worker stops reading it short of draining its socket
    /// for any other reason. `on_loop` runs what was on the list at its start, so a connection that
    /// goes back on the list waits for the next turn, and wakes the loop while the list is not empty
    /// (readiness is edge-triggered: nothing else would bring a connection back).
    run_list: VecDeque<ConnId>,
    /// Wakes this worker's own poll (for a run list left non-empty).
    waker: Arc<dyn Wake>,
    /// Session requests waiting for a connection that is on its way to this worker (being created by
    /// `connect_to`, or moving here from another worker), by that connection's id.
    parked: IdMap<ConnId, Vec<(ConnId, SessionRequest, u32)>>,
    /// Log lines about misbehaving peers, rate-limited.
    peer_log: super::loglimit::LogLimiter,
}

impl<S: WorkerStack> Handler<S> {
    pub(crate) fn new(
        index: usize,
        shared: Arc<Shared>,
        remotes: Arc<OnceLock<Vec<RemoteOf<S>>>>,
        center: &EventCenter<S>,
    ) -> Self {
        IN_WORKER.with(|w| w.set(true));
        CURRENT_WORKER.with(|c| c.set((Arc::as_ptr(&shared) as usize, index)));
        let (queue, kicks) = crossbeam_channel::unbounded();
        if let Some(slot) = shared.kickers.get(index) {
            let _ = slot.set(super::Kicker {
                queue,
                waker: center.stack().waker(),
            });
        }
        let waker = center.stack().waker();
        let counters = shared.counters[index].clone();
        let rbuf = vec![0u8; shared.config.read_buffer.max(512)].into_boxed_slice();
        Handler {
            index,
            shared,
            remotes,
            counters,
            conns: IdMap::default(),
            by_socket: IdMap::default(),
            by_timer: IdMap::default(),
            listeners: Vec::new(),
            rbuf,
            tx_scratch: Vec::new(),
            ev_scratch: Vec::new(),
            kicks,
            run_list: VecDeque::new(),
            waker,
            parked: IdMap::default(),
            peer_log: super::loglimit::LogLimiter::new(10, std::time::Duration::from_secs(1)),
        }
    }

    fn proto_config(&self) -> Option<Arc<proto::Config>> {
        self.shared.proto_config.get().cloned()
    }

    /// Undo the provisional load count `Messenger::open` made for a connection now being created.
    pub(crate) fn shared_load_done(&self) {
        self.shared.load[self.index].fetch_sub(1, Ordering::Relaxed);
    }

    fn insert(&mut self, conn: Box<Conn>) {
        self.shared.load[self.index].fetch_add(1, Ordering::Relaxed);
        self.counters.connections.add(1);
        self.conns.insert(conn.handle.id(), conn);
    }

    /// Drain a connection's command queue into its protocol state, then pump.
    pub(crate) fn flush_conn(&mut self, c: &mut EventCenter<S>, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.handle.0.scheduled.store(false, Ordering::Release);
        Self::take_commands(conn, Instant::now());
        if conn.handle.0.want_read.swap(false, Ordering::AcqRel) {
            // Resumed by the throttle it paused on (which has let go of it).
            conn.parked_on = None;
            Self::queue_read(&mut self.run_list, conn, id);
        }
        self.pump(c, id);
    }

    /// Move what other threads (or this one's dispatcher) queued for `conn` into its protocol state.
    fn take_commands(conn: &mut Conn, now: Instant) {
        while let Ok(cmd) = conn.commands.try_recv() {
            match cmd {
                // Refused (closed): the message is dropped, and its permit with it.
                Command::Send(m) => {
                    let _ = conn.proto.send(now, m);
                }
                Command::Keepalive => conn.proto.send_keepalive(now),
                Command::MarkDown => conn.proto.close(),
                Command::Evict => conn.proto.expire_standby(),
            }
        }
    }

    /// Move bytes and events until the connection has nothing more to say.
    ///
    /// Events go to the dispatcher in rounds, and what it queues in reply is written after each round:
    /// on a lossless session the replies carry the ack, and a bare ACK frame goes out only when nothing
    /// else did. The first round is [`FIRST_DISPATCH_ROUND`] events and each next one twice the last, so
    /// a large read's first replies leave early and the peer works on them while we handle the rest
    /// (a streaming peer with a window of 64 would otherwise wait for all 64 replies, each end idle
    /// while the other works), at a few writes per read at most.
    fn pump(&mut self, c: &mut EventCenter<S>, id: ConnId) {
        let mut evs = std::mem::take(&mut self.ev_scratch);
        let mut round = FIRST_DISPATCH_ROUND;
        // A round was just dispatched: write its replies before the next.
        let mut write_first = false;
        while let Some(conn) = self.conns.get_mut(&id) {
            let now = Instant::now();
            if !std::mem::take(&mut write_first) {
                evs.extend(std::iter::from_fn(|| conn.proto.poll_event()).take(round));
            }
            if !evs.is_empty() {
                round = round.saturating_mul(2);
                // Counted before the dispatcher sees them: whoever it tells reads counters that include them.
                self.counters
                    .add_conn_delta(&mut conn.last_stats, conn.proto.stats());
                for ev in evs.drain(..) {
                    self.on_proto_event(c, id, ev);
                }
                REPLIES.with(|r| {
                    let mut replies = r.borrow_mut();
                    if let Some(conn) = self.conns.get_mut(&id) {
                        Self::take_commands(conn, now);
                        for m in replies.drain(..) {
                            // Refused (closed): dropped, and its permit with it.
                            let _ = conn.proto.send(now, m);
                        }
                    } else {
                        replies.clear();
                    }
                });
                write_first = true;
                continue;
            }
            // Encode more only once the socket has taken what was encoded before: messages wait in the
            // session's queue, holding their send budget, rather than pile up here as bytes (a lossy
            // message lets go of its budget once encoded, so a peer that stops reading would otherwise
            // grow this queue without bound).
            let mut wrote = false;
            loop {
                if conn.txq.is_empty() {
                    conn.proto.poll_transmit(now, &mut self.tx_scratch);
                    conn.txq.extend(self.tx_scratch.drain(..));
                }
                let (Some(sid), false) = (conn.socket, conn.connecting) else {
                    break;
                };
                if conn.txq.is_empty() {
                    break;
                }
                wrote = true;
                if let Err(e) = flush_queue(c.stack_mut(), sid, &mut conn.txq) {
                    conn.proto
                        .on_transport_error(now, TransportError::io("write", &e));
                    break;
                }
                // Still queued: the socket is full, and its writable event brings us back.
                if !conn.txq.is_empty() || !conn.proto.wants_transmit() {
                    break;
                }
            }
            self.counters
                .add_conn_delta(&mut conn.last_stats, conn.proto.stats());
            if conn.proto.has_events() {
                // The next round waits: what this one wrote leaves first (a DPDK worker would hold it
                // until the end of its turn).
                if wrote {
                    c.stack_mut().flush_writes();
                }
                continue;
            }
            // Test interceptor: steps held until the connection's events were handled.
            #[cfg(feature = "interceptor")]
            if conn.proto.run_deferred_intercepts(now) {
                continue;
            }
            Self::arm_timer(c, &mut self.by_timer, id, conn);
            break;
        }
        self.ev_scratch = evs;
    }

    fn arm_timer(
        c: &mut EventCenter<S>,
        by_timer: &mut IdMap<TimerId, ConnId>,
        id: ConnId,
        conn: &mut Conn,
    ) {
        let want = conn.proto.poll_timeout();
        match (conn.timer, want) {
            (Some((_, at)), Some(w)) if at == w => {}
            (old, want) => {
                if let Some((tid, _)) = old {
                    c.cancel_timer(tid);
                    by_timer.remove(&tid);
                }
                conn.timer = want.map(|w| {
                    let tid = c.add_timer_at(w);
                    by_timer.insert(tid, id);
                    (tid, w)
                });
            }
        }
    }

    fn on_proto_event(&mut self, c: &mut EventCenter<S>, id: ConnId, ev: Event) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let handle = conn.handle.clone();
        let dispatcher = self.shared.dispatcher.clone();
        match ev {
            Event::Message(mut m) => {
                // Read already: it takes its budget even over the limit (the reader pauses before the
                // next read instead). The application returns it by dropping the message.
                m.attach_permit(Permit::force(
                    &self.shared.dispatch_throttle,
                    conn.recv_throttle.as_ref(),
                    m.payload_len() as u64,
                ));
                DISPATCHING.with(|d| d.set(Arc::as_ptr(&handle.0) as usize));
                let undispatched = dispatcher.dispatch(&handle, m).is_err();
                DISPATCHING.with(|d| d.set(0));
                if undispatched {
                    self.counters.undispatched.add(1);
                    tracing::debug!(conn = id, "no dispatcher takes the message: dropped");
                }
            }
            Event::OpenTransport => {
                let now = Instant::now();
                // A connection we accepted dials the address the protocol took from the peer's
                // CLIENT_IDENT (lossless_peer sessions re-dial from either side).
                let Some(target) = conn.proto.target_addr().sockaddr.or(conn.target) else {
                    conn.proto.on_transport_error(
                        now,
                        TransportError::new(
                            TransportErrorKind::AddrNotAvailable,
                            "no address to connect to",
                        ),
                    );
                    return;
                };
                match c.stack_mut().connect(target, &self.shared.config.connect) {
                    Ok(sid) => {
                        conn.socket = Some(sid);
                        conn.connecting = true;
                        self.by_socket.insert(sid, id);
                    }
                    Err(e) => {
                        let reason = TransportError::io(format_args!("connect {target}"), &e);
                        dispatcher.connect_failed(&handle, &reason);
                        conn.proto.on_transport_error(now, reason);
                    }
                }
            }
            Event::Connected { reconnect } => {
                if let Some(ip) = conn.half_open.take() {
                    release_half_open(&self.shared, ip);
                }
                if let Some(sid) = conn.socket {
                    c.stack_mut().peer_authenticated(sid);
                }
                handle.0.standby.store(false, Ordering::Relaxed);
                {
                    let mut p = handle.0.peer.lock().unwrap_or_else(|e| e.into_inner());
                    p.entity_type = conn.proto.peer_type().into();
                    p.addrs = conn.proto.peer_addrs().clone();
                    p.global_id = conn.proto.peer_global_id();
                    p.features = conn.proto.features();
                    p.con_mode = conn.proto.con_mode();
                    p.auth_name = conn.proto.peer_auth_name().cloned();
                }
                conn.recv_throttle = Self::recv_throttle_for(&self.shared, conn.proto.peer_type());
                tracing::debug!(conn = id, reconnect, role = ?conn.proto.role(), "session ready");
                conn.announced = true;
                handle.0.connected.store(true, Ordering::Release);
                match conn.proto.role() {
                    Role::Client => dispatcher.connect(&handle),
                    Role::Server => dispatcher.accept(&handle),
                }
            }
            Event::SessionRequest(req) => self.resolve(c, id, req),
            Event::TransportDown(err) => {
                handle.0.connected.store(false, Ordering::Release);
                if let Some(limit) = err.tripped_limit() {
                    self.counters.trip(limit);
                }
                if !conn.announced {
                    self.counters.dropped_bad_peers.add(1);
                    // Rate-limited, and the reason (which may quote the peer) escaped.
                    let (log, suppressed) = self.peer_log.allow(Instant::now());
                    if suppressed > 0 {
                        tracing::info!(suppressed, "dropped peers not logged");
                    }
                    if log {
                        tracing::info!(peer = ?conn.peer_sock, reason = ?err.to_string(), "dropping peer");
                    }
                } else {
                    tracing::debug!(conn = id, peer = ?conn.peer_sock, reason = %err, "transport down");
                }
                if let Some(sid) = conn.socket.take() {
                    let _ = c.stack_mut().close(sid);
                    self.by_socket.remove(&sid);
                }
                conn.connecting = false;
                conn.txq.clear();
                handle
                    .0
                    .standby
                    .store(conn.proto.phase() == Phase::Standby, Ordering::Relaxed);
            }
            Event::RemoteReset { .. } => dispatcher.remote_reset(&handle),
            Event::Reset(err) => {
                let announced = conn.announced;
                if announced {
                    self.counters.resets.add(1);
                    tracing::debug!(conn = id, reason = %err, "session reset");
                }
                self.remove(c, id);
                if announced {
                    dispatcher.reset(&handle, &err);
                }
            }
            Event::Closed => self.remove(c, id),
            Event::KeepaliveAck { rtt } => {
                handle
                    .0
                    .peer
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .last_keepalive_rtt = Some(rtt);
                dispatcher.keepalive_ack(&handle, rtt);
            }
        }
    }

    /// Handles of every connection on this worker.
    pub(crate) fn handles(&self) -> Vec<ConnectionRef> {
        self.conns.values().map(|c| c.handle.clone()).collect()
    }

    fn remove(&mut self, c: &mut EventCenter<S>, id: ConnId) {
        let Some(mut conn) = self.conns.remove(&id) else {
            return;
        };
        // Settle what the connection did since the last pump (it may end while its events are handled).
        self.counters
            .add_conn_delta(&mut conn.last_stats, conn.proto.stats());
        if let Some(sid) = conn.socket.take() {
            let _ = c.stack_mut().close(sid);
            self.by_socket.remove(&sid);
        }
        if let Some((tid, _)) = conn.timer.take() {
            c.cancel_timer(tid);
            self.by_timer.remove(&tid);
        }
        if let Some(ip) = conn.half_open.take() {
            release_half_open(&self.shared, ip);
        }
        if let Some(key) = conn.reg_key.take() {
            let mut reg = self
                .shared
                .registry
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            reg.remove_conn(&key, id);
        }
        // Requests parked for this connection: settle them without it.
        self.resume_parked(c, id);
        conn.handle.0.closed.store(true, Ordering::Release);
        conn.handle.0.connected.store(false, Ordering::Release);
        self.shared.load[self.index].fetch_sub(1, Ordering::Relaxed);
        self.counters.connections.sub(1);
        conn.unpark();
        // Dropping the session's messages and the queued commands returns their budget; a send that
        // lands in the queue after this is dropped with the queue's receiver (at the end of this
        // function), so it cannot leak either.
        conn.proto.close();
        while conn.commands.try_recv().is_ok() {}
    }
}

impl<S: WorkerStack> EventHandler<S> for Handler<S> {
    fn on_socket(&mut self, c: &mut EventCenter<S>, ev: SocketEvent) {
        if self.listeners.contains(&ev.id) {
            self.accept_all(c);
            return;
        }
        let Some(&id) = self.by_socket.get(&ev.id) else {
            return;
        };
        match ev.kind {
            EventKind::Connected => {
                if let Some(conn) = self.conns.get_mut(&id) {
                    conn.connecting = false;
                    conn.proto.on_transport_connected(Instant::now());
                }
                self.pump(c, id);
                self.on_readable(c, id, ev.id);
            }
            EventKind::ConnectFailed(e) => {
                if let Some(conn) = self.conns.get_mut(&id) {
                    if let Some(sid) = conn.socket.take() {
                        let _ = c.stack_mut().close(sid);
                        self.by_socket.remove(&sid);
                    }
                    conn.connecting = false;
                    let reason = match conn.proto.target_addr().sockaddr.or(conn.target) {
                        Some(t) => TransportError::io(format_args!("connect {t}"), &e),
                        None => TransportError::io("connect", &e),
                    };
                    self.shared.dispatcher.connect_failed(&conn.handle, &reason);
                    conn.proto.on_transport_error(Instant::now(), reason);
                }
                self.pump(c, id);
            }
            EventKind::Ready(r) => {
                if r.readable {
                    self.on_readable(c, id, ev.id);
                } else if r.writable {
                    self.pump(c, id);
                }
            }
            _ => {}
        }
    }

    fn on_timer(&mut self, c: &mut EventCenter<S>, timer: TimerId) {
        let Some(id) = self.by_timer.remove(&timer) else {
            return;
        };
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.timer = None;
            conn.proto.handle_timeout(Instant::now());
        }
        self.pump(c, id);
    }

    fn on_loop(&mut self, c: &mut EventCenter<S>) {
        while let Ok(id) = self.kicks.try_recv() {
            self.flush_conn(c, id);
        }
        // The run list as it is now; what goes back on it waits for the next turn.
        for _ in 0..self.run_list.len() {
            let Some(id) = self.run_list.pop_front() else {
                break;
            };
            self.read_again(c, id);
        }
        // Reading may have queued commands (a dispatcher replying).
        while let Ok(id) = self.kicks.try_recv() {
            self.flush_conn(c, id);
        }
        if !self.run_list.is_empty() {
            let _ = self.waker.wake();
        }
    }

    fn on_stop(&mut self, c: &mut EventCenter<S>) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.remove(c, id);
        }
        for li in self.listeners.drain(..) {
            let _ = c.stack_mut().close(li);
        }
    }
}
