//! Session requests against the registry: new, reconnect, takeover and the identity check, and the
//! moves of a session between workers (`fetch_session`, `give_up_session`, `adopt_session`).
//!
//! Invariant: a session moving between workers is in no worker's maps while in flight, and its handle
//! already names the destination worker.

use super::*;

/// How many times one session request may fetch an existing session that had moved on again. Each
/// fetch that finds the session resolves the request, so chasing ends as soon as requests stop racing
/// for one session; the cap only guards against a livelock, and what it does then is ask the peer to
/// WAIT (it comes back after its back-off), never reset the session.
const MAX_SESSION_CHASES: u32 = 1024;

/// Whether a connection that authenticated as `auth` (an entity of type `peer_type`) may take over
/// or replace the session described by `held`: the same entity type, and the same name where both
/// are known (a session we dialled knows only the type it asked for). Not the global_id, which a
/// client gets anew each time it authenticates with a monitor.
pub(super) fn same_identity(
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

impl<S: WorkerStack> Handler<S> {
    /// Server side: settle a CLIENT_IDENT / SESSION_RECONNECT against the session registry. Lookup,
    /// decision and registration happen under the registry lock (see `Shared::registry`); dispatcher
    /// callbacks run only after it is released.
    pub(super) fn resolve(&mut self, c: &mut EventCenter<S>, id: ConnId, req: SessionRequest) {
        self.resolve_chasing(c, id, req, 0);
    }

    /// [`Self::resolve`], after `chases` trips to fetch an existing session that had moved on.
    ///
    /// When the existing session lives on another worker, the session moves here
    /// ([`Self::fetch_session`]) and the request is resolved again, now as a same-worker one. The
    /// session moves rather than the socket because not every stack's sockets can move (DPDK: RSS
    /// steers a flow's packets to one worker's queue); one mechanism serves all stacks.
    pub(super) fn resolve_chasing(
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
                self.counters.sessions_refused_identity.add(1);
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
    pub(super) fn take_over(&mut self, c: &mut EventCenter<S>, ex_id: ConnId, mut new: Box<Conn>) {
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
        self.counters.connections.sub(1);
        self.pump(c, ex_id);
    }

    /// The end of a request [`Self::give_up_session`] settled where the session lives.
    pub(super) fn settle_without_session(
        &mut self,
        c: &mut EventCenter<S>,
        id: ConnId,
        settled: Settlement,
    ) {
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
    pub(super) fn answer_wait(&mut self, c: &mut EventCenter<S>, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.proto.resolve_session_wait(Instant::now());
        }
        self.pump(c, id);
    }

    /// Settle the session requests that were waiting for connection `id` to arrive on this worker.
    pub(super) fn resume_parked(&mut self, c: &mut EventCenter<S>, id: ConnId) {
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
    pub(super) fn fetch_session(
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
    pub(super) fn give_up_session(
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
    pub(super) fn release_conn(
        &mut self,
        c: &mut EventCenter<S>,
        id: ConnId,
        to: usize,
    ) -> Option<Box<Conn>> {
        let mut conn = self.conns.remove(&id)?;
        if let Some((tid, _)) = conn.timer.take() {
            c.cancel_timer(tid);
            self.by_timer.remove(&tid);
        }
        if let Some(sid) = conn.socket.take() {
            let _ = c.stack_mut().close(sid);
            self.by_socket.remove(&sid);
            conn.proto.on_transport_error(
                Instant::now(),
                TransportError::new(
                    TransportErrorKind::Replaced,
                    format!("session moved to worker {to}"),
                ),
            );
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
        self.counters.connections.sub(1);
        Some(conn)
    }

    /// The end of a [`Self::fetch_session`]: adopt the session (if it was still there), run what was
    /// queued for it meanwhile, and resolve the waiting request again (the registry may have changed).
    pub(super) fn adopt_session(
        &mut self,
        c: &mut EventCenter<S>,
        conn: Option<Box<Conn>>,
        waiting: ConnId,
        req: SessionRequest,
        chases: u32,
    ) {
        if let Some(conn) = conn {
            let ex_id = conn.handle.id();
            self.counters.sessions_moved.add(1);
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
}
