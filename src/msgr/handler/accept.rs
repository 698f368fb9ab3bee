//! Listening, accepting and placement: admission limits (connections, half-open per source) and the
//! creation of server- and client-side connections on the least-loaded worker.

use super::*;

/// Give back a half-open slot of source `ip` (`Handler::admit`).
pub(super) fn release_half_open(shared: &Shared, ip: std::net::IpAddr) {
    let mut half = shared.half_open.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = half.get_mut(&ip) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            half.remove(&ip);
        }
    }
}

impl<S: WorkerStack> Handler<S> {
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

    pub(super) fn place_accepted(
        &mut self,
        c: &mut EventCenter<S>,
        sid: SocketId,
        peer: SocketAddr,
    ) {
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
    pub(super) fn admit(&self, peer: SocketAddr) -> Option<crate::proto::Limit> {
        let cfg = &self.shared.config;
        let open: u64 = self
            .shared
            .counters
            .iter()
            .map(|w| w.connections.get())
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

    pub(super) fn create_server(
        &mut self,
        c: &mut EventCenter<S>,
        sid: SocketId,
        peer: SocketAddr,
    ) {
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
        self.counters.accepted.add(1);
        let mut conn = Conn::new(handle, rx, proto);
        conn.socket = Some(sid);
        conn.peer_sock = Some(peer);
        conn.half_open = Some(peer.ip());
        self.insert(Box::new(conn));
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
            p.entity_type = peer_type.into();
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
        self.insert(Box::new(conn));
        self.flush_conn(c, id);
        self.resume_parked(c, id);
    }

    /// The receive throttle for peers of `entity_type`, if one is configured.
    pub(super) fn recv_throttle_for(shared: &Shared, entity_type: u8) -> Option<Arc<Throttle>> {
        shared
            .recv_throttles
            .iter()
            .find(|(t, _)| *t == entity_type)
            .map(|(_, th)| th.clone())
    }
}
