//! The authentication phase: AUTH_REQUEST / AUTH_REPLY_MORE / AUTH_REQUEST_MORE / AUTH_DONE /
//! AUTH_BAD_METHOD driven through the configured auth methods (`proto::auth::method`), in both roles,
//! and the AUTH_SIGNATURE exchange that binds the pre-auth transcript to the session key.
//!
//! The connection, not the method, enforces: the attempt and round limits, that the mode is one both
//! sides allow, that a granted entity matches the type its HELLO claimed, and that secure mode gets a
//! usable connection secret.

use crate::proto::auth::method::MAX_AUTH_ROUNDS;

use super::*;

impl Connection {
    /// Client: the server refused our auth method or proof; keep what it allows for the owner to report.
    pub(super) fn auth_bad_method(&mut self, b: AuthBadMethod) -> Error {
        let method = self.config.auth_client.method();
        let method_name = self.config.auth_client.auth_method().name().to_string();
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
                method_name,
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
                method_name,
                offered,
                names(&offered, con_mode_name),
            )
        };
        self.peer_auth_bad_method = Some(b);
        Error::AuthFailed(why)
    }

    pub(super) fn auth_identity(&self) -> String {
        let method = self.config.auth_client.auth_method();
        method
            .entity_name()
            .unwrap_or(&self.config.auth_name)
            .to_string()
    }

    /// A failure of our own auth method as the connection reports it.
    fn client_auth_failed(&self, e: AuthError) -> Error {
        match e {
            AuthError::Refused { reason, .. } => Error::AuthFailed(format!(
                "{} as {}: {reason}",
                self.config.auth_client.auth_method().name(),
                self.auth_identity()
            )),
            AuthError::Malformed(e) => Error::Decode(e),
            AuthError::Protocol(why) => Error::PeerMisbehaved(why),
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
        let config = self.config.clone();
        let method = config.auth_client.auth_method();
        let offered = method.offered_modes(self.peer_type, &config.con_modes);
        let global_id = if self.peer_type == entity_type::MON {
            self.peer_global_id
        } else {
            config.gid.max(0) as u64
        };
        let ctx = ClientAuthContext::new(self.peer_type, &config.auth_name, global_id, &offered);
        let (payload, session) = method.start(&ctx).map_err(|e| self.client_auth_failed(e))?;
        let t = self.transport.as_mut().ok_or(Error::Closed)?;
        t.auth = AuthState::Client {
            session,
            offered: offered.clone(),
            rounds: 0,
        };
        self.queue_control(&ControlFrame::AuthRequest(AuthRequest {
            method: method.method(),
            preferred_modes: offered,
            auth_payload: payload,
        }))
    }

    pub(super) fn client_auth_reply_more(&mut self, m: AuthReplyMore) -> Result<(), Error> {
        let t = self.transport.as_mut().ok_or(Error::Closed)?;
        let AuthState::Client {
            session, rounds, ..
        } = &mut t.auth
        else {
            return Err(Error::PeerMisbehaved("unexpected AUTH_REPLY_MORE".into()));
        };
        *rounds = rounds.saturating_add(1);
        if *rounds > MAX_AUTH_ROUNDS {
            return Err(too_many_rounds("AUTH_REPLY_MORE"));
        }
        let answer = session.handle_reply_more(&m.auth_payload);
        let payload = answer.map_err(|e| self.client_auth_failed(e))?;
        self.queue_control(&ControlFrame::AuthRequestMore(AuthRequestMore {
            auth_payload: payload,
        }))
    }

    pub(super) fn client_auth_done(&mut self, d: AuthDone) -> Result<(), Error> {
        let t = self.transport.as_mut().ok_or(Error::Closed)?;
        let AuthState::Client {
            mut session,
            offered,
            ..
        } = std::mem::take(&mut t.auth)
        else {
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
        let mut secrets = session
            .handle_done(d.global_id, d.con_mode, &d.auth_payload)
            .map_err(|e| self.client_auth_failed(e))?;
        self.peer_global_id = d.global_id;
        self.finish_auth(d.con_mode, &mut secrets, false)
    }

    /// Both sides, once AUTH_DONE is out (server) or in (client): keep the session key, switch to
    /// secure framing if that is the mode, then sign the transcript.
    pub(super) fn finish_auth(
        &mut self,
        mode: u32,
        secrets: &mut SessionSecrets,
        crossed: bool,
    ) -> Result<(), Error> {
        let t = self.transport.as_mut().ok_or(Error::Closed)?;
        t.session_key = zeroize::Zeroizing::new(std::mem::take(&mut secrets.session_key));
        if mode == CON_MODE_SECURE {
            let (tx, rx) = session_ciphers(&secrets.connection_secret, crossed).map_err(|e| {
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
        if let Some(t) = self.transport.as_mut() {
            t.auth = AuthState::Idle;
        }
        let server = &self.config.auth_server;
        let bad = AuthBadMethod {
            method,
            result,
            allowed_methods: server.methods(),
            allowed_modes: server.allowed_modes(&self.config.con_modes),
        };
        self.queue_control(&ControlFrame::AuthBadMethod(bad))
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
        t.auth = AuthState::Idle;
        let config = self.config.clone();
        let Some(method) = config.auth_server.find(r.method) else {
            return self.refuse_auth(r.method, EOPNOTSUPP);
        };
        let allowed = method.allowed_modes(&config.con_modes);
        let mode = method
            .choose_mode(&r.preferred_modes, &allowed)
            .filter(|m| allowed.contains(m) && r.preferred_modes.contains(m))
            .filter(|m| [CON_MODE_CRC, CON_MODE_SECURE].contains(m));
        let Some(mode) = mode else {
            return self.refuse_auth(r.method, EOPNOTSUPP);
        };
        let ctx = ServerAuthContext::new(self.peer_type, mode, now, &config.global_id_alloc);
        let step = method.start(&ctx, &r.auth_payload);
        self.server_auth_step(method.name(), r.method, mode, 0, step)
    }

    pub(super) fn server_auth_request_more(
        &mut self,
        now: Instant,
        r: AuthRequestMore,
    ) -> Result<(), Error> {
        let t = self.transport.as_mut().ok_or(Error::Closed)?;
        let AuthState::Server {
            session,
            method,
            mode,
            rounds,
        } = std::mem::take(&mut t.auth)
        else {
            return Err(Error::PeerMisbehaved(
                "AUTH_REQUEST_MORE without a pending auth exchange".into(),
            ));
        };
        let config = self.config.clone();
        let name = config.auth_server.find(method).map_or("", |m| m.name());
        let ctx = ServerAuthContext::new(self.peer_type, mode, now, &config.global_id_alloc);
        let step = session.handle_more(&ctx, &r.auth_payload);
        self.server_auth_step(name, method, mode, rounds, step)
    }

    /// Server: act on what the method made of the last request (`rounds` AUTH_REPLY_MORE sent so
    /// far for it).
    fn server_auth_step(
        &mut self,
        name: &str,
        method: u32,
        mode: u32,
        rounds: u32,
        step: Result<ServerStep, AuthError>,
    ) -> Result<(), Error> {
        match step {
            Ok(ServerStep::More { reply, session }) => {
                let rounds = rounds.saturating_add(1);
                if rounds > MAX_AUTH_ROUNDS {
                    return Err(too_many_rounds("AUTH_REQUEST_MORE"));
                }
                let t = self.transport.as_mut().ok_or(Error::Closed)?;
                t.auth = AuthState::Server {
                    session,
                    method,
                    mode,
                    rounds,
                };
                self.queue_control(&ControlFrame::AuthReplyMore(AuthReplyMore {
                    auth_payload: reply,
                }))
            }
            Ok(ServerStep::Done(mut granted)) => {
                if mode == CON_MODE_SECURE
                    && granted.secrets.connection_secret.len() < CONNECTION_SECRET_MIN
                {
                    return Err(Error::AuthFailed(format!(
                        "auth method {name} granted secure mode with a {}-byte connection secret (at least {CONNECTION_SECRET_MIN})",
                        granted.secrets.connection_secret.len()
                    )));
                }
                self.authenticated(granted.entity)?;
                self.send_auth_done(granted.global_id, mode, granted.payload)?;
                self.finish_auth(mode, &mut granted.secrets, true)
            }
            Err(AuthError::Refused { errno, reason }) => {
                // Per event and partly peer-chosen: debug only (the messenger logs dropped peers, rate-limited).
                tracing::debug!(peer = %self.target_addr, method = name, reason = ?reason, "auth: refused");
                self.refuse_auth(method, errno)
            }
            Err(AuthError::Malformed(e)) => Err(Error::Decode(e)),
            Err(AuthError::Protocol(why)) => Err(Error::PeerMisbehaved(why)),
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
        // No frame is recorded from now on.
        t.decoder.keep_raw(false);
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

fn too_many_rounds(frame: &str) -> Error {
    Error::PeerMisbehaved(format!(
        "more than {MAX_AUTH_ROUNDS} {frame} rounds in one auth attempt"
    ))
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
