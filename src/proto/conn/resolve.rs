//! Server-side session resolution (Ceph's `handle_existing_connection` / `handle_reconnect`): a new
//! transport's CLIENT_IDENT or SESSION_RECONNECT measured against the connection the owner already has
//! to that peer — new session, take-over, WAIT / RETRY / RETRY_GLOBAL / RESET, or drop — and the address
//! order Ceph uses to settle connection races.

use super::*;

impl Connection {
    // ---- server: session resolution ----

    /// Settle the pending [`SessionRequest`] the way ProtocolV2 does, given the connection the owner
    /// already has to the same peer addresses (if any). On [`Resolution::TookOver`], `existing`'s session
    /// has moved into `self` and `existing` is closed; the owner should re-point its handle to `self`.
    pub fn resolve_session(
        &mut self,
        now: Instant,
        existing: Option<&mut Connection>,
    ) -> Resolution {
        let Some(req) = self.pending_request.take() else {
            return Resolution::Dropped;
        };
        if self.phase != Phase::AwaitingDecision {
            return Resolution::Dropped;
        }
        self.phase = Phase::Session;
        let existing = existing.filter(|e| !e.is_closed());
        let settled = existing
            .as_deref()
            .and_then(|ex| ex.settles_without_session(&req));
        let res = match (settled, req.kind) {
            (Some(s), kind) => {
                if s == Settlement::Wait && matches!(kind, SessionRequestKind::New { .. }) {
                    // Make sure our own attempt goes through: the peer has something to say.
                    if let Some(ex) = existing {
                        ex.session.keepalive_pending = true;
                    }
                }
                Ok(self.settle(now, s))
            }
            (
                None,
                SessionRequestKind::New {
                    client_cookie,
                    global_seq,
                },
            ) => self.resolve_new(now, existing, client_cookie, global_seq),
            (
                None,
                SessionRequestKind::Reconnect {
                    global_seq,
                    connect_seq,
                    msg_seq,
                    ..
                },
            ) => self.resolve_reconnect(now, existing, global_seq, connect_seq, msg_seq),
        };
        let res = match res {
            Ok(r) => r,
            Err(e) => {
                self.fault(now, e);
                return Resolution::Dropped;
            }
        };
        // Input may have arrived while the decision was pending.
        if let Err(e) = self.process(now) {
            self.fault(now, e);
        }
        res
    }

    /// Answer the pending [`SessionRequest`] with WAIT without looking at any other connection: the
    /// owner's own connection to this peer is about to dial (it exists but has not started), so this
    /// attempt loses the race and the peer retries after its back-off.
    pub fn resolve_session_wait(&mut self, now: Instant) -> Resolution {
        self.resolve_session_settled(now, Settlement::Wait)
    }

    /// Settle the pending [`SessionRequest`] as the owner's existing connection to the peer said it
    /// would ([`Connection::settles_without_session`], asked where that connection lives).
    pub fn resolve_session_settled(&mut self, now: Instant, s: Settlement) -> Resolution {
        if self.phase != Phase::AwaitingDecision || self.pending_request.take().is_none() {
            return Resolution::Dropped;
        }
        self.phase = Phase::Session;
        let res = self.settle(now, s);
        if let Err(e) = self.process(now) {
            self.fault(now, e);
        }
        res
    }

    /// Answer (or drop) this connection's request as `s` says.
    fn settle(&mut self, now: Instant, s: Settlement) -> Resolution {
        let answer = match s {
            Settlement::Stale => {
                // A stale attempt from before the existing connection: drop it.
                self.shut(Event::Closed);
                return Resolution::Dropped;
            }
            Settlement::Wait => ControlFrame::Wait,
            Settlement::Retry(connect_seq) => {
                intercept_later!(self, Retry);
                ControlFrame::SessionRetry(SessionRetry { connect_seq })
            }
            Settlement::RetryGlobal(global_seq) => {
                intercept_later!(self, Retry);
                ControlFrame::SessionRetryGlobal(SessionRetryGlobal { global_seq })
            }
            Settlement::Reset { full } => ControlFrame::SessionReset(SessionReset { full }),
        };
        let tag = answer.tag();
        if let Err(e) = self.queue_control(&answer) {
            self.fault(now, e);
            return Resolution::Dropped;
        }
        Resolution::Answered(tag)
    }

    /// How `req` is settled against this connection — the owner's existing one to the peer — when the
    /// answer needs nothing of its session and leaves its transport alone: the request is stale, loses
    /// the connection or reconnect race (WAIT), must retry (RETRY / RETRY_GLOBAL) or is reset (RESET).
    /// `None` when the request takes the session over (or replaces it). The one place these decisions
    /// are made (`resolve_session` uses it too), after Ceph's handle_existing_connection /
    /// handle_reconnect. An owner whose existing connection lives elsewhere can ask it there and settle
    /// `req` where it arrived ([`Connection::resolve_session_settled`]) instead of bringing the session
    /// over, which would close the transport that is about to win.
    pub fn settles_without_session(&self, req: &SessionRequest) -> Option<Settlement> {
        if self.is_closed() {
            return None;
        }
        let me = req_msgr2(&self.config.my_addrs);
        let s = &self.session;
        match req.kind {
            SessionRequestKind::New {
                client_cookie,
                global_seq,
            } => {
                if s.peer_global_seq > global_seq {
                    return Some(Settlement::Stale);
                }
                let restarted = s.server_cookie != 0
                    && s.client_cookie != 0
                    && s.client_cookie != client_cookie;
                if self.policy.lossy
                    || restarted
                    // Establishment was interrupted between CLIENT_IDENT and SERVER_IDENT: carry on.
                    || s.client_cookie == client_cookie
                    // An established session the peer dialled again: the new transport replaces it.
                    || matches!(self.phase, Phase::Ready | Phase::Standby)
                {
                    return None;
                }
                // Connection race: both sides dialled. The lower address's connection wins, unless the
                // existing one is a server's.
                let peer = req_msgr2(&req.peer_addrs);
                (!(ceph_addr_less(peer, me) || self.policy.server)).then_some(Settlement::Wait)
            }
            SessionRequestKind::Reconnect {
                client_cookie,
                global_seq,
                connect_seq,
                ..
            } => {
                if s.client_cookie != client_cookie {
                    let full = self.config.accept_policy(req.peer_type).resetcheck;
                    return Some(Settlement::Reset { full });
                }
                if s.server_cookie == 0 {
                    // We were a client and never got SERVER_IDENT: resume establishing the session.
                    return Some(Settlement::Reset { full: false });
                }
                if s.peer_global_seq > global_seq {
                    return Some(Settlement::RetryGlobal(s.peer_global_seq));
                }
                if s.connect_seq > connect_seq {
                    return Some(Settlement::Retry(s.connect_seq));
                }
                // Both sides are reconnecting: the existing one wins if the peer's address is higher.
                let peer = req_msgr2(&self.peer_addrs);
                (s.connect_seq == connect_seq && ceph_addr_less(me, peer) && !self.policy.server)
                    .then_some(Settlement::Wait)
            }
        }
    }

    /// Refuse the pending [`SessionRequest`]: this transport ends (the owner found the request
    /// illegitimate, e.g. for another entity's session). Nothing is sent; the peer sees the close.
    pub fn refuse_session(&mut self, now: Instant, reason: &str) {
        if self.phase != Phase::AwaitingDecision || self.pending_request.take().is_none() {
            return;
        }
        self.fault(now, Error::PeerMisbehaved(reason.to_string()));
    }

    pub(super) fn resolve_new(
        &mut self,
        now: Instant,
        existing: Option<&mut Connection>,
        client_cookie: u64,
        peer_global_seq: u64,
    ) -> Result<Resolution, Error> {
        let Some(ex) = existing else {
            self.session.client_cookie = client_cookie;
            self.session.peer_global_seq = peer_global_seq;
            self.send_server_ident(now)?;
            return Ok(Resolution::NewSession);
        };
        // Stale attempts and races the existing connection wins were settled by
        // `settles_without_session`.
        if ex.policy.lossy {
            ex.shut(Event::Reset(Error::Transport(TransportError::new(
                TransportErrorKind::Replaced,
                "replaced by a new connection from the peer",
            ))));
            self.session.client_cookie = client_cookie;
            self.session.peer_global_seq = peer_global_seq;
            self.send_server_ident(now)?;
            return Ok(Resolution::NewSession);
        }
        if ex.session.server_cookie != 0
            && ex.session.client_cookie != 0
            && ex.session.client_cookie != client_cookie
        {
            // The peer restarted: its old session is gone. The session this connection takes over
            // reports it (the owner keeps the existing connection's handle for it, so the application
            // hears `RemoteReset` on the connection it knows).
            if self.policy.resetcheck {
                let dropped = ex.session.reset();
                self.stats.remote_resets += 1;
                self.events.push_back(Event::RemoteReset { dropped });
            }
        }
        // Otherwise: establishment interrupted between CLIENT_IDENT and SERVER_IDENT, an established
        // session the peer dialled again, or a connection race this transport wins.
        self.take_session_from(ex);
        self.session.client_cookie = client_cookie;
        self.session.peer_global_seq = peer_global_seq;
        self.send_server_ident(now)?;
        Ok(Resolution::TookOver)
    }

    pub(super) fn resolve_reconnect(
        &mut self,
        now: Instant,
        existing: Option<&mut Connection>,
        global_seq: u64,
        connect_seq: u64,
        msg_seq: u64,
    ) -> Result<Resolution, Error> {
        let Some(ex) = existing else {
            self.queue_control(&ControlFrame::SessionReset(SessionReset { full: true }))?;
            return Ok(Resolution::Answered(Tag::SessionReset));
        };
        // RESET / RETRY / RETRY_GLOBAL / WAIT were settled by `settles_without_session`.
        self.take_session_from(ex);
        self.session.connect_seq = connect_seq;
        self.session.peer_global_seq = global_seq;
        // Everything up to msg_seq arrived; re-send the rest.
        self.session.discard_requeued_up_to(msg_seq);
        self.stats.replayed += self.session.requeued.len() as u64;
        let ms = self.session.in_seq;
        intercept_later!(self, ReconnectOk);
        self.queue_control(&ControlFrame::SessionReconnectOk(SessionReconnectOk {
            msg_seq: ms,
        }))?;
        self.stats.reconnects += 1;
        self.become_ready(now, true);
        Ok(Resolution::TookOver)
    }

    /// Move `ex`'s session (queues, seqs, cookies, peer identity) into `self`; `ex` closes quietly.
    pub(super) fn take_session_from(&mut self, ex: &mut Connection) {
        ex.session.requeue_sent();
        self.session = std::mem::take(&mut ex.session);
        #[cfg(feature = "interceptor")]
        {
            // The session keeps the id of the connection it lived on (Ceph's reuse_connection: the
            // existing connection takes the new socket).
            self.intercept.id = ex.intercept.id;
        }
        if self.peer_name.is_none() {
            self.peer_name = ex.peer_name.clone();
            self.features = ex.features;
        }
        // The session keeps its policy, as ProtocolV2::reuse_connection keeps the existing connection's:
        // the one the application chose when it dialled, carried over by every earlier take-over. Not
        // only when `ex` dialled: a session taken over before sits in a server-role `ex`, and our accept
        // policy for the peer's type may differ (e.g. stateful_server), which would park a lossless_peer
        // session for good with its messages queued.
        self.policy = ex.policy;
        ex.shut(Event::Closed);
    }

    pub(super) fn send_server_ident(&mut self, now: Instant) -> Result<(), Error> {
        // A new session: whatever was queued keeps its order but is numbered afresh.
        self.session.requeue_sent();
        self.session.discard_requeued_up_to(0);
        self.session.in_seq = 0;
        if !self.policy.lossy {
            self.session.server_cookie = self.new_cookie();
        }
        let si = ServerIdent {
            addrs: self.config.my_addrs.clone(),
            gid: self.config.gid,
            global_seq: self.config.global_seq.next(),
            supported_features: self.config.features_supported,
            required_features: self.config.features_required,
            flags: if self.policy.lossy { FLAG_LOSSY } else { 0 },
            cookie: self.session.server_cookie,
        };
        intercept_later!(self, ServerIdent);
        self.queue_control(&ControlFrame::ServerIdent(si))?;
        self.become_ready(now, false);
        Ok(())
    }
}

/// The msgr2 address Ceph compares in connection races (`msgr2_addr()`), or a blank one.
pub(super) fn req_msgr2(v: &AddrVec) -> EntityAddr {
    v.msgr2()
        .cloned()
        .or_else(|| v.front().cloned())
        .unwrap_or_else(EntityAddr::none)
}

/// Ceph orders `entity_addr_t` by `memcmp` of its in-memory image: type, nonce (host order, little
/// endian here), then the sockaddr (family, port in network order, address bytes).
pub fn ceph_addr_less(a: EntityAddr, b: EntityAddr) -> bool {
    addr_image(&a) < addr_image(&b)
}

pub(super) fn addr_image(a: &EntityAddr) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + 28);
    v.extend_from_slice(&(a.addr_type as u32).to_le_bytes());
    v.extend_from_slice(&a.nonce.to_le_bytes());
    match a.sockaddr {
        None => v.extend_from_slice(&[0u8; 28]),
        Some(core::net::SocketAddr::V4(s)) => {
            v.extend_from_slice(&2u16.to_le_bytes());
            v.extend_from_slice(&s.port().to_be_bytes());
            v.extend_from_slice(&s.ip().octets());
            v.extend_from_slice(&[0u8; 20]);
        }
        Some(core::net::SocketAddr::V6(s)) => {
            v.extend_from_slice(&10u16.to_le_bytes());
            v.extend_from_slice(&s.port().to_be_bytes());
            v.extend_from_slice(&s.flowinfo().to_be_bytes());
            v.extend_from_slice(&s.ip().octets());
            v.extend_from_slice(&s.scope_id().to_le_bytes());
        }
    }
    v
}

/// Does a server's advertised address match the one we dialled? Like Ceph, but forgiving of a
/// nonce we did not know (0) and of ANY vs. MSGR2.
pub(super) fn addr_matches(target: &EntityAddr, candidate: &EntityAddr) -> bool {
    target.sockaddr == candidate.sockaddr
        && (target.nonce == 0 || target.nonce == candidate.nonce)
        && (target.addr_type == candidate.addr_type
            || matches!(target.addr_type, AddrType::Any | AddrType::Msgr2)
                && matches!(candidate.addr_type, AddrType::Any | AddrType::Msgr2))
}
