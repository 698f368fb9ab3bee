//! The authentication phase: AUTH_REQUEST / AUTH_REPLY_MORE / AUTH_REQUEST_MORE / AUTH_DONE /
//! AUTH_BAD_METHOD for methods none and cephx in both roles, and the AUTH_SIGNATURE exchange that binds
//! the pre-auth transcript to the session key.

use super::*;

impl Connection {
    /// Client: the server refused our auth method or proof; keep what it allows for the owner to report.
    pub(super) fn auth_bad_method(&mut self, b: AuthBadMethod) -> Error {
        let method = self.config.auth_client.method();
        let offered = match self.transport.as_ref().map(|t| &t.auth) {
            Some(AuthState::Client { offered, .. }) => offered.clone(),
            _ => Vec::new(),
        };
        let names = |v: &[u32], f: fn(u32) -> &'static str| {
            v.iter().map(|&m| f(m)).collect::<Vec<_>>().join(", ")
        };
        let why = if b.allowed_methods.contains(&method)
            && offered.iter().any(|m| b.allowed_modes.contains(m))
        {
            format!(
                "server refused our {} authentication as {} (result {} {}): wrong or unknown key",
                auth_method_name(method),
                self.auth_identity(),
                b.result,
                errno_name(b.result)
            )
        } else {
            format!(
                "server refused auth method {} (result {} {}): it allows methods {:?} ({}) with modes {:?} ({}); we offer method {} ({}) with modes {:?} ({})",
                b.method,
                b.result,
                errno_name(b.result),
                b.allowed_methods,
                names(&b.allowed_methods, auth_method_name),
                b.allowed_modes,
                names(&b.allowed_modes, con_mode_name),
                method,
                auth_method_name(method),
                offered,
                names(&offered, con_mode_name),
            )
        };
        self.peer_auth_bad_method = Some(b);
        Error::AuthFailed(why)
    }

    pub(super) fn auth_identity(&self) -> String {
        match &self.config.auth_client {
            ClientAuth::None => self.config.auth_name.to_string(),
            ClientAuth::Cephx(c) => c.name().to_string(),
        }
    }

    pub(super) fn handle_hello(&mut self, h: Hello) -> Result<(), Error> {
        self.addr_seen_by_peer = Some(h.peer_addr.clone());
        match self.role {
            Role::Client => {
                if self.peer_type != entity_type::ANY && h.entity_type != self.peer_type {
                    return Err(Error::PeerIncompatible(format!(
                        "peer is a {} (type {}), expected a {}",
                        crate::proto::types::entity_type_name(h.entity_type),
                        h.entity_type,
                        crate::proto::types::entity_type_name(self.peer_type)
                    )));
                }
                self.peer_type = h.entity_type;
                self.learn_my_addr(&h.peer_addr);
                self.phase = Phase::Auth;
                self.send_auth_request()
            }
            Role::Server => {
                // The policy follows the authenticated entity, not this claim (`authenticated`).
                self.peer_type = h.entity_type;
                self.phase = Phase::Auth;
                Ok(())
            }
        }
    }

    /// A client with no configured address learns its IP from the server's HELLO, as Ceph does.
    pub(super) fn learn_my_addr(&mut self, seen: &EntityAddr) {
        let blank = self.my_addrs.front().is_none_or(|a| a.is_blank_ip());
        if blank {
            if let Some(sa) = seen.sockaddr {
                let mut sa = sa;
                sa.set_port(0);
                self.my_addrs = AddrVec(vec![EntityAddr {
                    addr_type: AddrType::Any,
                    nonce: self.config.nonce,
                    sockaddr: Some(sa),
                }]);
            }
        }
    }

    /// Client: AUTH_REQUEST with our method, the modes we offer this peer type, and the payload.
    pub(super) fn send_auth_request(&mut self) -> Result<(), Error> {
        let method = self.config.auth_client.method();
        let offered = self.config.con_modes.offer(self.peer_type, method);
        let (payload, cephx) = match &self.config.auth_client {
            ClientAuth::None => {
                let payload = if self.peer_type == entity_type::MON {
                    AuthNoneRequest::Mon {
                        name: self.config.auth_name.clone(),
                        global_id: self.peer_global_id,
                    }
                } else {
                    AuthNoneRequest::Authorizer {
                        name: self.config.auth_name.clone(),
                        global_id: self.config.gid.max(0) as u64,
                    }
                };
                (payload.encode(), None)
            }
            ClientAuth::Cephx(c) => {
                let (payload, session) = c
                    .start(self.peer_type, &mut rand::rng())
                    .map_err(|e| Error::AuthFailed(format!("cephx as {}: {e}", c.name())))?;
                (payload, Some(session))
            }
        };
        let t = self.transport.as_mut().ok_or(Error::Closed)?;
        t.auth = AuthState::Client {
            cephx,
            offered: offered.clone(),
        };
        self.queue_control(&ControlFrame::AuthRequest(AuthRequest {
            method,
            preferred_modes: offered,
            auth_payload: payload,
        }))
    }

    pub(super) fn client_auth_reply_more(&mut self, m: AuthReplyMore) -> Result<(), Error> {
        let ClientAuth::Cephx(client) = &self.config.auth_client else {
            return Err(Error::PeerMisbehaved(
                "AUTH_REPLY_MORE for auth method none".into(),
            ));
        };
        let client = client.clone();
        let t = self.transport.as_mut().ok_or(Error::Closed)?;
        let AuthState::Client {
            cephx: Some(session),
            ..
        } = &mut t.auth
        else {
            return Err(Error::PeerMisbehaved("unexpected AUTH_REPLY_MORE".into()));
        };
        let payload = session
            .handle_reply_more(&client, &m.auth_payload, &mut rand::rng())
            .map_err(|e| cephx_failed(&client, e))?;
        self.queue_control(&ControlFrame::AuthRequestMore(AuthRequestMore {
            auth_payload: payload,
        }))
    }

    pub(super) fn client_auth_done(&mut self, d: AuthDone) -> Result<(), Error> {
        let t = self.transport.as_mut().ok_or(Error::Closed)?;
        let AuthState::Client { cephx, offered } = std::mem::take(&mut t.auth) else {
            return Err(Error::PeerMisbehaved(
                "AUTH_DONE before AUTH_REQUEST".into(),
            ));
        };
        if !offered.contains(&d.con_mode) {
            return Err(Error::PeerIncompatible(format!(
                "server chose connection mode {} ({}) but we offered [{}]",
                d.con_mode,
                con_mode_name(d.con_mode),
                offered
                    .iter()
                    .map(|&m| con_mode_name(m))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let (session_key, connection_secret) = match (cephx, &self.config.auth_client) {
            (Some(mut session), ClientAuth::Cephx(client)) => {
                let s = session
                    .handle_done(client, d.global_id, &d.auth_payload)
                    .map_err(|e| cephx_failed(client, e))?;
                (s.session_key.clone(), s.connection_secret.clone())
            }
            _ => (Vec::new(), Vec::new()),
        };
        self.peer_global_id = d.global_id;
        self.finish_auth(d.con_mode, session_key, &connection_secret, false)
    }

    /// Both sides, once AUTH_DONE is out (server) or in (client): keep the session key, switch to
    /// secure framing if that is the mode, then sign the transcript.
    pub(super) fn finish_auth(
        &mut self,
        mode: u32,
        session_key: Vec<u8>,
        connection_secret: &[u8],
        crossed: bool,
    ) -> Result<(), Error> {
        let t = self.transport.as_mut().ok_or(Error::Closed)?;
        t.session_key = zeroize::Zeroizing::new(session_key);
        if mode == CON_MODE_SECURE {
            let (tx, rx) = session_ciphers(connection_secret, crossed).map_err(|e| {
                Error::AuthFailed(format!(
                    "secure mode without a usable connection secret: {e}"
                ))
            })?;
            t.encoder.set_secure(tx);
            t.decoder.set_secure(rx);
        }
        self.con_mode = mode;
        self.send_auth_signature()
    }

    /// Server: the peer proved it is `name`. Its HELLO must have said the same entity type, and the
    /// session policy is chosen for that type only now, so an unauthenticated claim picks nothing.
    fn authenticated(&mut self, name: AuthEntityName) -> Result<(), Error> {
        if name.entity_type != u32::from(self.peer_type) {
            return Err(Error::PeerMisbehaved(format!(
                "HELLO said entity type {} but the peer authenticated as {:?}",
                self.peer_type,
                name.to_string()
            )));
        }
        self.policy = self.config.accept_policy(self.peer_type);
        self.peer_auth_name = Some(name);
        Ok(())
    }

    /// Server: refuse the request with AUTH_BAD_METHOD (what we allow); the client may try again.
    pub(super) fn refuse_auth(&mut self, method: u32, result: i32) -> Result<(), Error> {
        let ours = self.config.auth_server.method();
        if let Some(t) = self.transport.as_mut() {
            t.auth = AuthState::Idle;
        }
        self.queue_control(&ControlFrame::AuthBadMethod(AuthBadMethod {
            method,
            result,
            allowed_methods: vec![ours],
            allowed_modes: self.config.con_modes.allowed(ours),
        }))
    }

    pub(super) fn server_auth_request(
        &mut self,
        now: Instant,
        r: AuthRequest,
    ) -> Result<(), Error> {
        let max = self.config.max_auth_attempts;
        let t = self.transport.as_mut().ok_or(Error::Closed)?;
        t.auth_attempts = t.auth_attempts.saturating_add(1);
        if t.auth_attempts > max {
            return Err(Error::limit(Limit::AuthAttempts, t.auth_attempts, max));
        }
        let ours = self.config.auth_server.method();
        let mode = ConModes::pick(&r.preferred_modes, &self.config.con_modes.allowed(ours));
        let (true, Some(mode)) = (r.method == ours, mode) else {
            return self.refuse_auth(r.method, EOPNOTSUPP);
        };
        match self.config.auth_server.clone() {
            ServerAuth::None => {
                let req = AuthNoneRequest::decode(&r.auth_payload)?;
                self.authenticated(req.name().clone())?;
                let claimed = req.global_id();
                let gid = if claimed != 0 {
                    claimed
                } else {
                    self.config.global_id_alloc.fetch_add(1, Ordering::Relaxed) + 1
                };
                self.send_auth_done(gid, mode, Bytes::new())?;
                self.finish_auth(mode, Vec::new(), &[], true)
            }
            ServerAuth::CephxMonitor(mon) => {
                let alloc = self.config.global_id_alloc.clone();
                match mon.start(
                    &r.auth_payload,
                    || alloc.fetch_add(1, Ordering::Relaxed) + 1,
                    &mut rand::rng(),
                ) {
                    Ok((challenge, session)) => {
                        let t = self.transport.as_mut().ok_or(Error::Closed)?;
                        t.auth = AuthState::Monitor { session, mode };
                        self.queue_control(&ControlFrame::AuthReplyMore(AuthReplyMore {
                            auth_payload: challenge,
                        }))
                    }
                    Err(e) => {
                        // Per event and partly peer-chosen: debug only (the messenger logs dropped peers, rate-limited).
                        tracing::debug!(peer = %self.target_addr, reason = ?e.to_string(), "cephx: refused");
                        self.refuse_auth(r.method, e.errno())
                    }
                }
            }
            ServerAuth::CephxService(svc) => {
                match svc.verify(&r.auth_payload, None, 0, now, &mut rand::rng()) {
                    Ok(ServiceVerdict::Challenge {
                        payload,
                        server_challenge,
                    }) => {
                        let t = self.transport.as_mut().ok_or(Error::Closed)?;
                        t.auth = AuthState::Service {
                            challenge: server_challenge,
                            mode,
                        };
                        self.queue_control(&ControlFrame::AuthReplyMore(AuthReplyMore {
                            auth_payload: payload,
                        }))
                    }
                    Ok(ServiceVerdict::Done { .. }) => self.refuse_auth(r.method, EACCES),
                    Err(e) => {
                        tracing::debug!(peer = %self.target_addr, reason = ?e.to_string(), "cephx: refused authorizer");
                        self.refuse_auth(r.method, e.errno())
                    }
                }
            }
        }
    }

    pub(super) fn server_auth_request_more(
        &mut self,
        now: Instant,
        r: AuthRequestMore,
    ) -> Result<(), Error> {
        let t = self.transport.as_mut().ok_or(Error::Closed)?;
        let state = std::mem::take(&mut t.auth);
        let method = self.config.auth_server.method();
        let result = match (state, self.config.auth_server.clone()) {
            (AuthState::Monitor { session, mode }, ServerAuth::CephxMonitor(mon)) => {
                let len = secret_len(mode);
                mon.finish(&session, &r.auth_payload, len, now, &mut rand::rng())
                    .map(|(payload, gid, secrets)| {
                        (payload, gid, secrets, mode, session.name().clone())
                    })
            }
            (AuthState::Service { challenge, mode }, ServerAuth::CephxService(svc)) => {
                let len = secret_len(mode);
                match svc.verify(&r.auth_payload, Some(challenge), len, now, &mut rand::rng()) {
                    Ok(ServiceVerdict::Done {
                        payload,
                        name,
                        global_id,
                        secrets,
                    }) => Ok((payload, global_id, secrets, mode, name)),
                    Ok(ServiceVerdict::Challenge { .. }) => Err(CephxError::Refused(
                        "authorizer did not answer our challenge".into(),
                    )),
                    Err(e) => Err(e),
                }
            }
            _ => {
                return Err(Error::PeerMisbehaved(
                    "AUTH_REQUEST_MORE without a pending auth exchange".into(),
                ))
            }
        };
        match result {
            Ok((payload, gid, secrets, mode, name)) => {
                self.peer_global_id = gid;
                self.authenticated(name)?;
                self.send_auth_done(gid, mode, payload)?;
                self.finish_auth(
                    mode,
                    secrets.session_key.clone(),
                    &secrets.connection_secret,
                    true,
                )
            }
            Err(e) => {
                // Per event and partly peer-chosen: debug only (the messenger logs dropped peers, rate-limited).
                tracing::debug!(peer = %self.target_addr, reason = ?e.to_string(), "cephx: refused");
                self.refuse_auth(method, e.errno())
            }
        }
    }

    pub(super) fn send_auth_done(
        &mut self,
        global_id: u64,
        mode: u32,
        payload: Bytes,
    ) -> Result<(), Error> {
        self.peer_global_id = global_id;
        self.queue_control(&ControlFrame::AuthDone(AuthDone {
            global_id,
            con_mode: mode,
            auth_payload: payload,
        }))
    }

    /// Both sides: stop recording the transcript and sign what we received.
    pub(super) fn send_auth_signature(&mut self) -> Result<(), Error> {
        let t = self.transport.as_mut().ok_or(Error::Closed)?;
        let (tx, rx) = t.transcript.take().unwrap_or_default();
        let sig = auth_signature(&t.session_key, &rx);
        t.sent_transcript = Some(tx);
        self.phase = Phase::AuthSignature;
        self.queue_control(&ControlFrame::AuthSignature(AuthSignature {
            signature: sig,
        }))
    }

    pub(super) fn handle_auth_signature(&mut self, s: AuthSignature) -> Result<(), Error> {
        let t = self.transport.as_mut().ok_or(Error::Closed)?;
        let tx = t.sent_transcript.take().unwrap_or_default();
        let expected = auth_signature(&t.session_key, &tx);
        // Constant time: how much of the signature matched must not show in how long we took.
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            &s.signature[..],
            &expected[..],
        )) {
            return Err(Error::AuthFailed(
                "AUTH_SIGNATURE does not match the transcript we sent".into(),
            ));
        }
        match self.role {
            Role::Client => {
                if self.session.server_cookie == 0 {
                    self.send_client_ident()
                } else {
                    self.send_reconnect()
                }
            }
            Role::Server => {
                self.phase = Phase::Session;
                Ok(())
            }
        }
    }
}

/// Ceph's `-EACCES`.
pub(super) const EACCES: i32 = -13;

/// Connection-secret bytes the server generates for `mode` (`get_connection_secret_length`).
pub(super) fn secret_len(mode: u32) -> usize {
    if mode == CON_MODE_SECURE {
        CONNECTION_SECRET_LEN
    } else {
        0
    }
}

/// A client-side cephx failure as the connection reports it.
pub(super) fn cephx_failed(client: &crate::proto::auth::CephxClient, e: CephxError) -> Error {
    Error::AuthFailed(format!("cephx as {}: {e}", client.name()))
}

/// The errno names AUTH_BAD_METHOD results carry.
pub(super) fn errno_name(result: i32) -> &'static str {
    match result {
        -1 => "EPERM",
        -2 => "ENOENT",
        -13 => "EACCES",
        -22 => "EINVAL",
        -95 => "EOPNOTSUPP",
        _ => "",
    }
}
