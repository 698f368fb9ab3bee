//! The identification phase: CLIENT_IDENT / SERVER_IDENT / SESSION_RECONNECT and their answers, as
//! seen by each role before the owner decides (server side) or the session becomes ready (client side).

use super::resolve::addr_matches;
use super::*;

impl Connection {
    pub(super) fn send_client_ident(&mut self) -> Result<(), Error> {
        if !self.policy.lossy && self.session.client_cookie == 0 {
            self.session.client_cookie = self.new_cookie();
        }
        intercept!(self, ClientIdent);
        self.phase = Phase::Session;
        let ci = ClientIdent {
            addrs: self.my_addrs.clone(),
            target_addr: self.target_addr.clone(),
            gid: self.config.gid,
            global_seq: self.session.global_seq,
            supported_features: self.config.features_supported,
            required_features: self.config.features_required,
            flags: if self.policy.lossy { FLAG_LOSSY } else { 0 },
            cookie: self.session.client_cookie,
        };
        self.queue_control(&ControlFrame::ClientIdent(ci))
    }

    pub(super) fn send_reconnect(&mut self) -> Result<(), Error> {
        intercept!(self, Reconnect);
        self.phase = Phase::Reconnecting;
        let r = SessionReconnect {
            addrs: self.my_addrs.clone(),
            client_cookie: self.session.client_cookie,
            server_cookie: self.session.server_cookie,
            global_seq: self.session.global_seq,
            connect_seq: self.session.connect_seq,
            msg_seq: self.session.in_seq,
        };
        self.queue_control(&ControlFrame::SessionReconnect(r))
    }

    pub(super) fn client_server_ident(
        &mut self,
        now: Instant,
        s: ServerIdent,
    ) -> Result<(), Error> {
        if !s.addrs.0.iter().any(|a| addr_matches(&self.target_addr, a)) {
            return Err(Error::PeerMisbehaved(format!(
                "peer identifies as {}, which does not include {}",
                s.addrs, self.target_addr
            )));
        }
        let missing = self.config.features_required & !s.supported_features;
        if missing != 0 {
            return Err(Error::PeerIncompatible(format!(
                "server lacks required Ceph features 0x{missing:x}"
            )));
        }
        checked_peer_seq("SERVER_IDENT global_seq", s.global_seq)?;
        self.peer_supported_features = s.supported_features;
        self.session.server_cookie = s.cookie;
        self.session.peer_global_seq = s.global_seq;
        self.peer_addrs = s.addrs;
        self.peer_name = Some(EntityName {
            entity_type: self.peer_type,
            num: s.gid,
        });
        self.features = s.supported_features & self.config.features_supported;
        self.policy.lossy = s.flags & FLAG_LOSSY != 0;
        self.become_ready(now, false);
        Ok(())
    }

    pub(super) fn client_reconnect_ok(
        &mut self,
        now: Instant,
        ok: SessionReconnectOk,
    ) -> Result<(), Error> {
        self.session.discard_requeued_up_to(ok.msg_seq);
        self.stats.replayed += self.session.requeued.len() as u64;
        self.become_ready(now, true);
        Ok(())
    }

    pub(super) fn server_client_ident(&mut self, ci: ClientIdent) -> Result<(), Error> {
        if ci.addrs.front().is_none_or(|a| *a == EntityAddr::none()) {
            return Err(Error::PeerMisbehaved(
                "CLIENT_IDENT without addresses".into(),
            ));
        }
        if !self.config.my_addrs.0.is_empty() && !self.config.my_addrs.contains(&ci.target_addr) {
            return Err(Error::PeerMisbehaved(format!(
                "peer is trying to reach {} which is not us ({})",
                ci.target_addr, self.config.my_addrs
            )));
        }
        let missing = self.config.features_required & !ci.supported_features;
        if missing != 0 {
            return self.queue_control(&ControlFrame::IdentMissingFeatures(IdentMissingFeatures {
                features: missing,
            }));
        }
        checked_peer_seq("CLIENT_IDENT global_seq", ci.global_seq)?;
        self.check_addrvec(&ci.addrs)?;
        self.peer_supported_features = ci.supported_features;
        self.target_addr = ci.target_addr.clone();
        self.peer_addrs = ci.addrs.clone();
        self.peer_name = Some(EntityName {
            entity_type: self.peer_type,
            num: ci.gid,
        });
        self.features = ci.supported_features & self.config.features_supported;
        self.request_decision(SessionRequest {
            peer_addrs: ci.addrs,
            peer_type: self.peer_type,
            kind: SessionRequestKind::New {
                client_cookie: ci.cookie,
                global_seq: ci.global_seq,
            },
        });
        Ok(())
    }

    pub(super) fn server_reconnect(&mut self, r: SessionReconnect) -> Result<(), Error> {
        if r.addrs.front().is_none_or(|a| *a == EntityAddr::none()) {
            return Err(Error::PeerMisbehaved(
                "SESSION_RECONNECT without addresses".into(),
            ));
        }
        checked_peer_seq("SESSION_RECONNECT global_seq", r.global_seq)?;
        checked_peer_seq("SESSION_RECONNECT connect_seq", r.connect_seq)?;
        self.check_addrvec(&r.addrs)?;
        self.peer_addrs = r.addrs.clone();
        self.request_decision(SessionRequest {
            peer_addrs: r.addrs,
            peer_type: self.peer_type,
            kind: SessionRequestKind::Reconnect {
                client_cookie: r.client_cookie,
                server_cookie: r.server_cookie,
                global_seq: r.global_seq,
                connect_seq: r.connect_seq,
                msg_seq: r.msg_seq,
            },
        });
        Ok(())
    }

    fn check_addrvec(&self, addrs: &AddrVec) -> Result<(), Error> {
        let max = self.config.max_addrvec_len;
        if addrs.len() > max {
            return Err(Error::limit(Limit::AddrVec, addrs.len(), max));
        }
        Ok(())
    }

    pub(super) fn request_decision(&mut self, req: SessionRequest) {
        self.phase = Phase::AwaitingDecision;
        self.pending_request = Some(req.clone());
        self.events.push_back(Event::SessionRequest(req));
    }
}
