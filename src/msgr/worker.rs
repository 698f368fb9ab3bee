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

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::Receiver;

use super::{
    ConnId, ConnShared, ConnectionRef, IdMap, PeerInfo, Shared, WorkerCounters, CURRENT_WORKER,
    IN_WORKER,
};
use crate::event::{EventCenter, EventHandler, Remote, TimerId};
use crate::proto::types::{AddrVec, EntityAddr};
use crate::proto::{
    self, ConnStats, Connection, Event, Limit, Phase, Policy, Resolution, Role, SessionRequest,
    SessionRequestKind, Settlement,
};
use crate::stack::{
    flush_queue, EventKind, ListenOptions, SocketEvent, SocketId, Wake, WorkerStack,
};
use crate::throttle::{Permit, Throttle};

pub(crate) type RemoteOf<S> = Remote<S, Handler<S>>;

/// How many times one session request may fetch an existing session that had moved on again. Each
/// fetch that finds the session resolves the request, so chasing ends as soon as requests stop racing
/// for one session; the cap only guards against a livelock, and what it does then is ask the peer to
/// WAIT (it comes back after its back-off), never reset the session.
const MAX_SESSION_CHASES: u32 = 1024;

/// What other threads ask of a connection.
pub(crate) enum Command {
    Send(proto::Message),
    Keepalive,
    MarkDown,
    /// End the session if it is still a server-policy session in Standby (`max_sessions` eviction).
    Evict,
}

/// A new connection handle on worker `w`, with the receiving end of its command queue.
pub(crate) fn new_handle(shared: &Arc<Shared>, w: usize) -> (ConnectionRef, Receiver<Command>) {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = crossbeam_channel::unbounded();
    let shared_conn = ConnShared {
        id,
        worker: AtomicUsize::new(w),
        commands: tx,
        scheduled: std::sync::atomic::AtomicBool::new(false),
        closed: std::sync::atomic::AtomicBool::new(false),
        connected: std::sync::atomic::AtomicBool::new(false),
        standby: std::sync::atomic::AtomicBool::new(false),
        kickers: shared.kickers.clone(),
        messenger: Arc::as_ptr(shared) as usize,
        send_budget: Arc::new(Throttle::with_parent(
            shared.config.send_budget_bytes,
            shared.config.send_budget_msgs,
            Some(shared.send_total.clone()),
        )),
        want_read: AtomicBool::new(false),
        peer: Mutex::new(PeerInfo::default()),
    };
    (ConnectionRef(Arc::new(shared_conn)), rx)
}

/// Test interceptor: the connection reports its steps under its messenger id.
#[cfg(feature = "interceptor")]
fn with_intercept_id(mut proto: Connection, id: ConnId) -> Connection {
    proto.set_intercept_id(id);
    proto
}

/// Give back a half-open slot of source `ip` (`Handler::admit`).
fn release_half_open(shared: &Shared, ip: std::net::IpAddr) {
    let mut half = shared.half_open.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = half.get_mut(&ip) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            half.remove(&ip);
        }
    }
}

/// Whether a connection that authenticated as `auth` (an entity of type `peer_type`) may take over
/// or replace the session described by `held`: the same entity type, and the same name where both
/// are known (a session we dialled knows only the type it asked for). Not the global_id, which a
/// client gets anew each time it authenticates with a monitor.
fn same_identity(
    held: &PeerInfo,
    peer_type: u8,
    auth: Option<&crate::proto::types::AuthEntityName>,
) -> bool {
    if held.entity_type != peer_type && held.entity_type != crate::proto::types::entity_type::ANY {
        return false;
    }
    match (&held.auth_name, auth) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// One connection as its worker sees it.
pub(crate) struct Conn {
    handle: ConnectionRef,
    commands: Receiver<Command>,
    proto: Connection,
    socket: Option<SocketId>,
    connecting: bool,
    txq: VecDeque<Bytes>,
    timer: Option<(TimerId, Instant)>,
    last_stats: ConnStats,
    /// Client side: where to dial.
    target: Option<SocketAddr>,
    /// The peer's socket address, for log lines.
    peer_sock: Option<SocketAddr>,
    /// The dispatcher has been told about this connection (connect/accept), so it hears of its end.
    announced: bool,
    /// The key this connection is registered under in the session registry, if it is.
    reg_key: Option<AddrVec>,
    /// Accepted and not authenticated yet: its slot in `Shared::half_open`.
    half_open: Option<std::net::IpAddr>,
    /// The receive throttle of the peer's entity type, if it has one.
    recv_throttle: Option<Arc<Throttle>>,
    /// The throttle this connection paused reading on (it is parked there until that has room).
    parked_on: Option<Arc<Throttle>>,
    /// On the worker's run list (at most once).
    on_run_list: bool,
}

impl Conn {
    fn new(handle: ConnectionRef, commands: Receiver<Command>, proto: Connection) -> Self {
        Conn {
            handle,
            commands,
            proto,
            socket: None,
            connecting: false,
            txq: VecDeque::new(),
            timer: None,
            last_stats: ConnStats::default(),
            target: None,
            peer_sock: None,
            announced: false,
            recv_throttle: None,
            parked_on: None,
            on_run_list: false,
            reg_key: None,
            half_open: None,
        }
    }

    /// Stop waiting on the throttle it paused on, if any.
    fn unpark(&mut self) {
        if let Some(t) = self.parked_on.take() {
            t.unpark(self.handle.id());
        }
    }
}

/// The messenger's event handler on one worker.
pub(crate) struct Handler<S: WorkerStack> {
    index: usize,
    shared: Arc<Shared>,
    remotes: Arc<OnceLock<Vec<RemoteOf<S>>>>,
    counters: Arc<WorkerCounters>,
    conns: IdMap<ConnId, Conn>,
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

    pub(crate) fn listen(
        &mut self,
        c: &mut EventCenter<S>,
        addr: SocketAddr,
        opts: &ListenOptions,
    ) -> std::io::Result<SocketAddr> {
        let sid = c.stack_mut().listen(addr, opts)?;
        self.listeners.push(sid);
        c.stack().local_addr(sid)
    }

    /// Accept everything pending on our listeners and place each socket on the least-loaded worker.
    pub(crate) fn accept_all(&mut self, c: &mut EventCenter<S>) {
        if self.proto_config().is_none() {
            return; // addresses not learned yet; `start` calls us again
        }
        for li in self.listeners.clone() {
            loop {
                match c.stack_mut().accept(li) {
                    Ok(Some((sid, peer))) => self.place_accepted(c, sid, peer),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(worker = self.index, error = %e, "accept failed");
                        break;
                    }
                }
            }
        }
    }

    fn place_accepted(&mut self, c: &mut EventCenter<S>, sid: SocketId, peer: SocketAddr) {
        if let Some(limit) = self.admit(peer) {
            let _ = c.stack_mut().close(sid);
            self.counters.trip(limit);
            let (log, suppressed) = self.peer_log.allow(Instant::now());
            if log {
                tracing::info!(%peer, %limit, suppressed, "accept refused: limit reached");
            }
            return;
        }
        let target = self.shared.least_loaded();
        if target != self.index {
            if let Some(remote) = self.remotes.get().and_then(|r| r.get(target)).cloned() {
                match c.stack_mut().detach(sid) {
                    Ok(handoff) => {
                        // Count it now so that a burst of accepts spreads out.
                        self.shared.load[target].fetch_add(1, Ordering::Relaxed);
                        let sent = remote.submit(move |h: &mut Handler<S>, c| {
                            h.shared.load[h.index].fetch_sub(1, Ordering::Relaxed);
                            match c.stack_mut().attach(handoff) {
                                Ok(sid) => h.create_server(c, sid, peer),
                                Err(e) => {
                                    release_half_open(&h.shared, peer.ip());
                                    tracing::warn!(error = %e, "attach of accepted socket failed")
                                }
                            }
                        });
                        if sent.is_err() {
                            self.shared.load[target].fetch_sub(1, Ordering::Relaxed);
                            release_half_open(&self.shared, peer.ip());
                        }
                        return;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "detach failed; keeping the socket here");
                    }
                }
            }
        }
        self.create_server(c, sid, peer);
    }

    /// Whether one more accepted connection from `peer` fits: the messenger's connections and the
    /// source's half-open ones. On success the half-open slot is taken (released by the connection).
    fn admit(&self, peer: SocketAddr) -> Option<crate::proto::Limit> {
        let cfg = &self.shared.config;
        let open: u64 = self
            .shared
            .counters
            .iter()
            .map(|w| w.connections.load(Ordering::Relaxed))
            .sum();
        if open >= cfg.max_connections as u64 {
            return Some(crate::proto::Limit::Connections);
        }
        let mut half = self
            .shared
            .half_open
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let n = half.entry(peer.ip()).or_default();
        if *n >= cfg.max_half_open_per_source {
            return Some(crate::proto::Limit::HalfOpenPerSource);
        }
        *n += 1;
        None
    }

    fn create_server(&mut self, c: &mut EventCenter<S>, sid: SocketId, peer: SocketAddr) {
        let Some(cfg) = self.proto_config() else {
            release_half_open(&self.shared, peer.ip());
            let _ = c.stack_mut().close(sid);
            return;
        };
        let (handle, rx) = new_handle(&self.shared, self.index);
        let proto = Connection::server(cfg, EntityAddr::msgr2(peer, 0), Instant::now());
        let id = handle.id();
        #[cfg(feature = "interceptor")]
        let proto = with_intercept_id(proto, id);
        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
        let mut conn = Conn::new(handle, rx, proto);
        conn.socket = Some(sid);
        conn.peer_sock = Some(peer);
        conn.half_open = Some(peer.ip());
        self.insert(conn);
        self.by_socket.insert(sid, id);
        self.pump(c, id);
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create_client(
        &mut self,
        c: &mut EventCenter<S>,
        handle: ConnectionRef,
        commands: Receiver<Command>,
        peer_type: u8,
        target: EntityAddr,
        addrs: AddrVec,
        policy: Policy,
        nonce: Option<u32>,
    ) {
        let Some(mut cfg) = self.proto_config() else {
            return;
        };
        if let Some(n) = nonce {
            // A separate client identity: same config, its own nonce, learned address.
            let mut own = (*cfg).clone();
            own.nonce = n;
            own.my_addrs = AddrVec::default();
            cfg = Arc::new(own);
        }
        let proto = Connection::client(cfg, policy, peer_type, target.clone(), Instant::now());
        let id = handle.id();
        #[cfg(feature = "interceptor")]
        let proto = with_intercept_id(proto, id);
        let addrs_key = addrs.clone();
        {
            let mut p = handle.0.peer.lock().unwrap_or_else(|e| e.into_inner());
            p.entity_type = peer_type;
            p.addrs = addrs;
        }
        let mut conn = Conn::new(handle, commands, proto);
        conn.target = target.sockaddr;
        conn.peer_sock = target.sockaddr;
        // The application holds the handle from connect_to: it hears of resets from the start.
        conn.announced = true;
        // connect_to registered it under the addresses it was given (connect_new does not).
        conn.reg_key = nonce.is_none().then_some(addrs_key);
        conn.recv_throttle = Self::recv_throttle_for(&self.shared, peer_type);
        self.insert(conn);
        self.flush_conn(c, id);
        self.resume_parked(c, id);
    }

    /// The receive throttle for peers of `entity_type`, if one is configured.
    fn recv_throttle_for(shared: &Shared, entity_type: u8) -> Option<Arc<Throttle>> {
        shared
            .recv_throttles
            .iter()
            .find(|(t, _)| *t == entity_type)
            .map(|(_, th)| th.clone())
    }

    /// Undo the provisional load count `Messenger::open` made for a connection now being created.
    pub(crate) fn shared_load_done(&self) {
        self.shared.load[self.index].fetch_sub(1, Ordering::Relaxed);
    }

    fn insert(&mut self, conn: Conn) {
        self.shared.load[self.index].fetch_add(1, Ordering::Relaxed);
        self.counters.connections.fetch_add(1, Ordering::Relaxed);
        self.conns.insert(conn.handle.id(), conn);
    }

    /// Drain a connection's command queue into its protocol state, then pump.
    pub(crate) fn flush_conn(&mut self, c: &mut EventCenter<S>, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.handle.0.scheduled.store(false, Ordering::Release);
        let now = Instant::now();
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
        if conn.handle.0.want_read.swap(false, Ordering::AcqRel) {
            // Resumed by the throttle it paused on (which has let go of it).
            conn.parked_on = None;
            Self::queue_read(&mut self.run_list, conn, id);
        }
        self.pump(c, id);
    }

    /// Move bytes and events until the connection has nothing more to say.
    fn pump(&mut self, c: &mut EventCenter<S>, id: ConnId) {
        let mut evs = std::mem::take(&mut self.ev_scratch);
        while let Some(conn) = self.conns.get_mut(&id) {
            let now = Instant::now();
            // Encode more only once the socket has taken what was encoded before: messages wait in the
            // session's queue, holding their send budget, rather than pile up here as bytes (a lossy
            // message lets go of its budget once encoded, so a peer that stops reading would otherwise
            // grow this queue without bound).
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
                if let Err(e) = flush_queue(c.stack_mut(), sid, &mut conn.txq) {
                    conn.proto.on_transport_error(now, format!("write: {e}"));
                    break;
                }
                // Still queued: the socket is full, and its writable event brings us back.
                if !conn.txq.is_empty() || !conn.proto.wants_transmit() {
                    break;
                }
            }
            self.counters
                .add_conn_delta(&mut conn.last_stats, conn.proto.stats());
            evs.extend(std::iter::from_fn(|| conn.proto.poll_event()));
            if evs.is_empty() {
                // Test interceptor: steps held until the connection's events were handled.
                #[cfg(feature = "interceptor")]
                if conn.proto.run_deferred_intercepts(now) {
                    continue;
                }
                Self::arm_timer(c, &mut self.by_timer, id, conn);
                break;
            }
            for ev in evs.drain(..) {
                self.on_proto_event(c, id, ev);
            }
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
                dispatcher.ms_dispatch(&handle, m)
            }
            Event::OpenTransport => {
                let now = Instant::now();
                // A connection we accepted dials the address the protocol took from the peer's
                // CLIENT_IDENT (lossless_peer sessions re-dial from either side).
                let Some(target) = conn.proto.target_addr().sockaddr.or(conn.target) else {
                    conn.proto
                        .on_transport_error(now, "no address to connect to");
                    return;
                };
                match c.stack_mut().connect(target, &self.shared.config.connect) {
                    Ok(sid) => {
                        conn.socket = Some(sid);
                        conn.connecting = true;
                        self.by_socket.insert(sid, id);
                    }
                    Err(e) => {
                        let reason = format!("connect {target}: {e}");
                        dispatcher.ms_handle_connect_failed(&handle, &reason);
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
                    p.entity_type = conn.proto.peer_type();
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
                    Role::Client => dispatcher.ms_handle_connect(&handle),
                    Role::Server => dispatcher.ms_handle_accept(&handle),
                }
            }
            Event::SessionRequest(req) => self.resolve(c, id, req),
            Event::TransportDown(err) => {
                handle.0.connected.store(false, Ordering::Release);
                if let Some(limit) = err.tripped_limit() {
                    self.counters.trip(limit);
                }
                if !conn.announced {
                    self.counters
                        .dropped_bad_peers
                        .fetch_add(1, Ordering::Relaxed);
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
            Event::RemoteReset { .. } => dispatcher.ms_handle_remote_reset(&handle),
            Event::Reset(err) => {
                let announced = conn.announced;
                if announced {
                    self.counters.resets.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(conn = id, reason = %err, "session reset");
                }
                self.remove(c, id);
                if announced {
                    dispatcher.ms_handle_reset(&handle, &err);
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
                dispatcher.ms_handle_keepalive_ack(&handle, rtt);
            }
        }
    }

    /// Server side: settle a CLIENT_IDENT / SESSION_RECONNECT against the session registry. Lookup,
    /// decision and registration happen under the registry lock (see `Shared::registry`); dispatcher
    /// callbacks run only after it is released.
    fn resolve(&mut self, c: &mut EventCenter<S>, id: ConnId, req: SessionRequest) {
        self.resolve_chasing(c, id, req, 0);
    }

    /// [`Self::resolve`], after `chases` trips to fetch an existing session that had moved on.
    ///
    /// When the existing session lives on another worker, the session moves here
    /// ([`Self::fetch_session`]) and the request is resolved again, now as a same-worker one. The
    /// session moves rather than the socket because not every stack's sockets can move (DPDK: RSS
    /// steers a flow's packets to one worker's queue); one mechanism serves all stacks.
    fn resolve_chasing(
        &mut self,
        c: &mut EventCenter<S>,
        id: ConnId,
        req: SessionRequest,
        chases: u32,
    ) {
        let now = Instant::now();
        let shared = self.shared.clone();
        let mut reg = shared.registry.lock().unwrap_or_else(|e| e.into_inner());
        let existing = reg
            .get(&req.peer_addrs)
            .filter(|h| h.id() != id && !h.is_closed());
        // A session is reused or replaced only by the entity that holds it: claiming another peer's
        // addresses (and cookie) gets that peer's session neither reset nor replayed to you.
        if let (Some(ex), Some(conn)) = (existing, self.conns.get_mut(&id)) {
            let held = ex.peer();
            let claimant = (conn.proto.peer_type(), conn.proto.peer_auth_name().cloned());
            if !same_identity(&held, claimant.0, claimant.1.as_ref()) {
                drop(reg);
                self.counters
                    .sessions_refused_identity
                    .fetch_add(1, Ordering::Relaxed);
                let (log, suppressed) = self.peer_log.allow(now);
                if log {
                    tracing::info!(
                        peer = ?conn.peer_sock,
                        claimed = ?claimant.1.map(|n| n.to_string()),
                        held_by = ?held.auth_name.map(|n| n.to_string()),
                        suppressed,
                        "refused a session request for another entity's session"
                    );
                }
                conn.proto.refuse_session(
                    now,
                    "the session for these addresses belongs to another entity",
                );
                self.pump(c, id);
                return;
            }
        }
        let found = existing.map(|h| (h.0.worker.load(Ordering::Acquire), h.id()));
        match found {
            Some((w, ex_id)) if w == self.index && self.conns.contains_key(&ex_id) => {
                let Some(mut new) = self.conns.remove(&id) else {
                    return;
                };
                let (res, ex_phase) = {
                    let ex = self.conns.get_mut(&ex_id).map(|e| &mut e.proto);
                    let ex_phase = ex.as_ref().map(|e| e.phase());
                    (new.proto.resolve_session(now, ex), ex_phase)
                };
                if res == Resolution::NewSession {
                    let evictable = new.proto.policy().server;
                    reg.insert(req.peer_addrs.clone(), new.handle.clone(), evictable);
                    new.reg_key = Some(req.peer_addrs.clone());
                }
                drop(reg);
                tracing::debug!(worker = self.index, conn = id, existing = ex_id, ?ex_phase, ?req.kind, ?res, "session request resolved");
                match res {
                    Resolution::TookOver => self.take_over(c, ex_id, new),
                    Resolution::NewSession => {
                        self.conns.insert(id, new);
                        self.pump(c, ex_id);
                        self.pump(c, id);
                    }
                    Resolution::Answered(_) | Resolution::Dropped => {
                        self.conns.insert(id, new);
                        self.pump(c, id);
                    }
                }
            }
            Some((w, ex_id)) if w == self.index => {
                // The existing connection is on its way here: `connect_to` registered it and its
                // creation is queued on this worker, or it is moving here for another request. Park
                // the request until it arrives (`resume_parked`), then settle it as Ceph would.
                drop(reg);
                tracing::debug!(
                    worker = self.index,
                    conn = id,
                    existing = ex_id,
                    "session request parked until the existing connection arrives"
                );
                self.parked
                    .entry(ex_id)
                    .or_default()
                    .push((id, req, chases));
            }
            Some((w, ex_id)) => {
                drop(reg);
                // The session lives on another worker: bring it here.
                if chases < MAX_SESSION_CHASES {
                    self.fetch_session(c, id, w, ex_id, req, chases);
                } else {
                    tracing::warn!(
                        worker = self.index,
                        conn = id,
                        existing = ex_id,
                        chases,
                        "session request kept losing the race for its session; asking the peer to wait"
                    );
                    self.answer_wait(c, id);
                }
            }
            None => {
                let Some(conn) = self.conns.get_mut(&id) else {
                    return;
                };
                let new_session = matches!(req.kind, SessionRequestKind::New { .. });
                if new_session && reg.len() >= self.shared.config.max_sessions {
                    // Make room: end the oldest server-policy session parked in Standby.
                    match reg.evict_oldest() {
                        Some(victim) => {
                            let _ = victim.command(Command::Evict);
                        }
                        None => {
                            let n = reg.len();
                            drop(reg);
                            self.counters.trip(Limit::Sessions);
                            conn.proto.refuse_session(
                                now,
                                "session limit reached and no session to evict",
                            );
                            tracing::debug!(
                                conn = id,
                                sessions = n,
                                "session refused: max_sessions"
                            );
                            self.pump(c, id);
                            return;
                        }
                    }
                }
                let res = conn.proto.resolve_session(now, None);
                if res == Resolution::NewSession {
                    let evictable = conn.proto.policy().server;
                    reg.insert(req.peer_addrs.clone(), conn.handle.clone(), evictable);
                    conn.reg_key = Some(req.peer_addrs.clone());
                }
                drop(reg);
                tracing::debug!(worker = self.index, conn = id, ?req.kind, ?res, "session request resolved (no existing)");
                self.pump(c, id);
            }
        }
    }

    /// `new` took over the session of connection `ex_id`: the session (now in `new.proto`) moves into
    /// `ex_id`'s slot with `new`'s socket, so the application's handle keeps working.
    fn take_over(&mut self, c: &mut EventCenter<S>, ex_id: ConnId, mut new: Conn) {
        let Some(ex) = self.conns.get_mut(&ex_id) else {
            return;
        };
        std::mem::swap(&mut ex.proto, &mut new.proto);
        if let Some(old) = ex.socket.take() {
            let _ = c.stack_mut().close(old);
            self.by_socket.remove(&old);
        }
        ex.socket = new.socket.take();
        ex.connecting = false;
        ex.txq = std::mem::take(&mut new.txq);
        ex.last_stats = new.last_stats;
        ex.peer_sock = new.peer_sock;
        if let Some(sid) = ex.socket {
            self.by_socket.insert(sid, ex_id);
            // What the peer sent after its request is read under the session's own id.
            Self::queue_read(&mut self.run_list, ex, ex_id);
        }
        // The temporary connection is gone; its handle was never shown to anyone.
        if let Some(ip) = new.half_open.take() {
            release_half_open(&self.shared, ip);
        }
        if let Some((tid, _)) = new.timer {
            c.cancel_timer(tid);
            self.by_timer.remove(&tid);
        }
        new.handle.0.closed.store(true, Ordering::Release);
        new.unpark();
        self.shared.load[self.index].fetch_sub(1, Ordering::Relaxed);
        self.counters.connections.fetch_sub(1, Ordering::Relaxed);
        self.pump(c, ex_id);
    }

    /// The end of a request [`Self::give_up_session`] settled where the session lives.
    fn settle_without_session(&mut self, c: &mut EventCenter<S>, id: ConnId, settled: Settlement) {
        if let Some(conn) = self.conns.get_mut(&id) {
            let res = conn.proto.resolve_session_settled(Instant::now(), settled);
            tracing::debug!(
                worker = self.index,
                conn = id,
                ?settled,
                ?res,
                "session request settled"
            );
        }
        self.pump(c, id);
    }

    /// Answer connection `id`'s pending session request with WAIT: the last resort when its session
    /// cannot be brought here (the messenger is stopping, or requests keep racing for it). Never a
    /// reset: the session and its queue stay; the peer retries after its back-off.
    fn answer_wait(&mut self, c: &mut EventCenter<S>, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.proto.resolve_session_wait(Instant::now());
        }
        self.pump(c, id);
    }

    /// Settle the session requests that were waiting for connection `id` to arrive on this worker.
    fn resume_parked(&mut self, c: &mut EventCenter<S>, id: ConnId) {
        let Some(waiting) = self.parked.remove(&id) else {
            return;
        };
        for (waiter, req, chases) in waiting {
            self.resolve_chasing(c, waiter, req, chases);
        }
    }

    /// Ask worker `w` to give up the existing session `ex_id` (see [`Self::give_up_session`]); it comes back to
    /// [`Self::adopt_session`], which resolves request `req` of connection `id` again. `id` stays here,
    /// waiting for its decision, meanwhile.
    fn fetch_session(
        &mut self,
        c: &mut EventCenter<S>,
        id: ConnId,
        w: usize,
        ex_id: ConnId,
        req: SessionRequest,
        chases: u32,
    ) {
        let here = self.index;
        let sent = self.remotes.get().and_then(|r| r.get(w)).map(|remote| {
            let req = req.clone();
            remote.submit(move |h: &mut Handler<S>, c| {
                h.give_up_session(c, ex_id, here, id, req, chases)
            })
        });
        tracing::debug!(
            worker = here,
            conn = id,
            existing = ex_id,
            from = w,
            "fetching session"
        );
        if !matches!(sent, Some(Ok(()))) {
            self.answer_wait(c, id);
        }
    }

    /// Worker side of a [`Self::fetch_session`] from worker `to`: take connection `ex_id` out of this
    /// worker (its socket is closed: the peer's new transport is on `to`) and send it, or `None` if it is
    /// no longer here, to `to` together with the request waiting for it. The registry, the throttle and
    /// the dispatcher are not involved: the session, its handle and its command queue stay the same.
    fn give_up_session(
        &mut self,
        c: &mut EventCenter<S>,
        ex_id: ConnId,
        to: usize,
        waiting: ConnId,
        req: SessionRequest,
        chases: u32,
    ) {
        let Some(remote) = self.remotes.get().and_then(|r| r.get(to)).cloned() else {
            return;
        };
        if let Some(ex) = self.conns.get_mut(&ex_id) {
            if let Some(settled) = ex.proto.settles_without_session(&req) {
                // The answer (stale, WAIT, RETRY, RESET) needs nothing of the session, and moving it
                // would close its transport, which may be about to win.
                if settled == Settlement::Wait && matches!(req.kind, SessionRequestKind::New { .. })
                {
                    // Make sure our own attempt goes through: the peer has something to say.
                    ex.proto.send_keepalive(Instant::now());
                }
                tracing::debug!(
                    worker = self.index,
                    conn = ex_id,
                    waiting,
                    ?settled,
                    "session request settled without moving the session"
                );
                self.pump(c, ex_id);
                let _ = remote.submit(move |h: &mut Handler<S>, c| {
                    h.settle_without_session(c, waiting, settled)
                });
                return;
            }
        }
        let conn = self.release_conn(c, ex_id, to);
        tracing::debug!(
            worker = self.index,
            conn = ex_id,
            to,
            found = conn.is_some(),
            "giving up session"
        );
        let _ = remote.submit(move |h: &mut Handler<S>, c| {
            h.adopt_session(c, conn, waiting, req, chases + 1)
        });
    }

    /// Take connection `id` out of this worker's maps for worker `to`: cancel its timer, close its
    /// socket (the protocol sees a transport fault), settle its counters here and point its handle at
    /// `to`. Its load and connection count leave with it.
    fn release_conn(&mut self, c: &mut EventCenter<S>, id: ConnId, to: usize) -> Option<Conn> {
        let mut conn = self.conns.remove(&id)?;
        if let Some((tid, _)) = conn.timer.take() {
            c.cancel_timer(tid);
            self.by_timer.remove(&tid);
        }
        if let Some(sid) = conn.socket.take() {
            let _ = c.stack_mut().close(sid);
            self.by_socket.remove(&sid);
            conn.proto
                .on_transport_error(Instant::now(), format!("session moved to worker {to}"));
        }
        conn.connecting = false;
        conn.txq.clear();
        // Its new socket on `to` is read as budget allows; nothing waits here any more.
        conn.unpark();
        conn.handle.0.want_read.store(false, Ordering::Release);
        conn.on_run_list = false;
        self.counters
            .add_conn_delta(&mut conn.last_stats, conn.proto.stats());
        // Kicks from now on go to `to`; the ones that still reach us find no connection and are
        // ignored, and `to` drains the command queue once it has adopted the connection.
        conn.handle.0.worker.store(to, Ordering::Release);
        self.shared.load[self.index].fetch_sub(1, Ordering::Relaxed);
        self.counters.connections.fetch_sub(1, Ordering::Relaxed);
        Some(conn)
    }

    /// The end of a [`Self::fetch_session`]: adopt the session (if it was still there), run what was
    /// queued for it meanwhile, and resolve the waiting request again (the registry may have changed).
    fn adopt_session(
        &mut self,
        c: &mut EventCenter<S>,
        conn: Option<Conn>,
        waiting: ConnId,
        req: SessionRequest,
        chases: u32,
    ) {
        if let Some(conn) = conn {
            let ex_id = conn.handle.id();
            self.counters.sessions_moved.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                worker = self.index,
                conn = ex_id,
                waiting,
                "adopted session"
            );
            self.insert(conn);
            self.flush_conn(c, ex_id);
            self.resolve_chasing(c, waiting, req, chases);
            self.resume_parked(c, ex_id);
        } else {
            self.resolve_chasing(c, waiting, req, chases);
        }
    }

    fn remove(&mut self, c: &mut EventCenter<S>, id: ConnId) {
        let Some(mut conn) = self.conns.remove(&id) else {
            return;
        };
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
        self.counters.connections.fetch_sub(1, Ordering::Relaxed);
        conn.unpark();
        // Dropping the session's messages and the queued commands returns their budget; a send that
        // lands in the queue after this is dropped with the queue's receiver (at the end of this
        // function), so it cannot leak either.
        conn.proto.close();
        while conn.commands.try_recv().is_ok() {}
    }

    /// Whether connection `conn` may read now. A ready connection whose receive throttle or the
    /// dispatch throttle is used up may not: it parks on that throttle (once) and comes back through the
    /// run list when it has room. Handshake frames are never held back.
    fn may_read(dispatch: &Arc<Throttle>, conn: &mut Conn) -> bool {
        if !conn.proto.is_ready() {
            return true;
        }
        let full = conn
            .recv_throttle
            .iter()
            .chain(std::iter::once(dispatch))
            .find(|t| t.is_full());
        let Some(full) = full else {
            return true;
        };
        if conn.parked_on.is_none() {
            conn.parked_on = Some(full.clone());
            tracing::trace!(
                conn = conn.handle.id(),
                "receive budget used up: pausing reads"
            );
            full.park(conn.handle.0.clone());
        }
        false
    }

    /// Put `conn` on the run list unless it is on it already.
    fn queue_read(run_list: &mut VecDeque<ConnId>, conn: &mut Conn, id: ConnId) {
        if !conn.on_run_list {
            conn.on_run_list = true;
            run_list.push_back(id);
        }
    }

    /// Read a connection from the run list again (if it still has a socket to read).
    fn read_again(&mut self, c: &mut EventCenter<S>, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.on_run_list = false;
        if let (Some(sid), false) = (conn.socket, conn.connecting) {
            self.on_readable(c, id, sid);
        }
    }

    fn on_readable(&mut self, c: &mut EventCenter<S>, id: ConnId, sid: SocketId) {
        let mut pumped = false;
        let mut read = 0usize;
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            if conn.socket != Some(sid) {
                return;
            }
            if read >= self.shared.config.read_budget.max(1) {
                // Budget used, socket maybe not drained: come back after the others.
                Self::queue_read(&mut self.run_list, conn, id);
                return;
            }
            if !Self::may_read(&self.shared.dispatch_throttle, conn) {
                break;
            }
            let now = Instant::now();
            let proto = &mut conn.proto;
            // The stack lends its receive buffers where it can (RDMA); otherwise it reads into rbuf.
            let mut feed = |data: &[u8]| proto.handle_input(now, data);
            match c.stack_mut().read_with(sid, &mut self.rbuf, &mut feed) {
                Ok(0) => {
                    conn.proto
                        .on_transport_error(now, "connection closed by peer");
                    break;
                }
                Ok(n) => {
                    read = read.saturating_add(n);
                    // Dispatch as we go, so one busy socket cannot buffer without bound.
                    self.pump(c, id);
                    pumped = true;
                }
                // Drained: the last read was pumped already; with nothing read, pump once below
                // (the event may also say writable).
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && pumped => return,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    conn.proto.on_transport_error(now, format!("read: {e}"));
                    break;
                }
            }
        }
        self.pump(c, id);
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
                        Some(t) => format!("connect {t}: {e}"),
                        None => format!("connect: {e}"),
                    };
                    self.shared
                        .dispatcher
                        .ms_handle_connect_failed(&conn.handle, &reason);
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
