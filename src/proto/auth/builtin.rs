//! The built-in auth methods as implementations of the [`method`](super::method) traits: auth none
//! (both roles) and cephx (client; monitor and service roles).
//!
//! Owns only the glue: the wire formats and checks are [`AuthNoneRequest`]'s and [`cephx`](super::cephx)'s,
//! so the bytes on the wire are exactly theirs. Every cephx failure is a refusal carrying cephx's errno
//! (as Ceph answers AUTH_BAD_METHOD); an undecodable auth-none request is a malformed frame.

use std::sync::Arc;

use bytes::Bytes;

use super::cephx::{
    CephxClient, CephxClientSession, CephxError, CephxMonSession, CephxMonitor, CephxService,
    ServiceVerdict,
};
use super::method::{
    crc_only, AuthError, AuthGranted, ClientAuthContext, ClientAuthMethod, ClientAuthSession,
    ServerAuthContext, ServerAuthMethod, ServerAuthSession, ServerStep, SessionSecrets, EACCES,
};
use super::{AuthNoneRequest, ConModes, AUTH_METHOD_CEPHX, AUTH_METHOD_NONE};
use crate::proto::types::{entity_type, AuthEntityName};

impl From<CephxError> for AuthError {
    fn from(e: CephxError) -> Self {
        AuthError::Refused {
            errno: e.errno(),
            reason: e.to_string(),
        }
    }
}

// ---- none ----

/// Auth none, client: `Config::auth_name` and our global id in the clear.
#[derive(Debug)]
pub(super) struct NoneClient;

struct NoneClientSession;

impl ClientAuthMethod for NoneClient {
    fn method(&self) -> u32 {
        AUTH_METHOD_NONE
    }

    fn offered_modes(&self, _peer_type: u8, _configured: &ConModes) -> Vec<u32> {
        crc_only()
    }

    fn start(
        &self,
        ctx: &ClientAuthContext<'_>,
    ) -> Result<(Bytes, Box<dyn ClientAuthSession>), AuthError> {
        let name = ctx.auth_name.clone();
        let global_id = ctx.global_id;
        let request = if ctx.peer_type == entity_type::MON {
            AuthNoneRequest::Mon { name, global_id }
        } else {
            AuthNoneRequest::Authorizer { name, global_id }
        };
        Ok((request.encode(), Box::new(NoneClientSession)))
    }
}

impl ClientAuthSession for NoneClientSession {
    fn handle_reply_more(&mut self, _payload: &[u8]) -> Result<Bytes, AuthError> {
        Err(AuthError::Protocol(
            "AUTH_REPLY_MORE for auth method none".into(),
        ))
    }

    fn handle_done(
        &mut self,
        _global_id: u64,
        _con_mode: u32,
        _payload: &[u8],
    ) -> Result<SessionSecrets, AuthError> {
        Ok(SessionSecrets::default())
    }
}

/// Auth none, server: whoever the request names; a global id for a peer that has none.
#[derive(Debug)]
pub(super) struct NoneServer;

impl ServerAuthMethod for NoneServer {
    fn method(&self) -> u32 {
        AUTH_METHOD_NONE
    }

    fn allowed_modes(&self, _configured: &ConModes) -> Vec<u32> {
        crc_only()
    }

    fn start(&self, ctx: &ServerAuthContext<'_>, payload: &[u8]) -> Result<ServerStep, AuthError> {
        let req = AuthNoneRequest::decode(payload)?;
        let global_id = match req.global_id() {
            0 => ctx.assign_global_id(),
            claimed => claimed,
        };
        Ok(ServerStep::Done(AuthGranted {
            entity: req.name().clone(),
            global_id,
            payload: Bytes::new(),
            secrets: SessionSecrets::default(),
        }))
    }
}

// ---- cephx ----

/// cephx, client.
#[derive(Debug)]
pub(super) struct CephxClientAuth(pub(super) Arc<CephxClient>);

struct CephxClientConn {
    client: Arc<CephxClient>,
    session: CephxClientSession,
}

impl ClientAuthMethod for CephxClientAuth {
    fn method(&self) -> u32 {
        AUTH_METHOD_CEPHX
    }

    fn entity_name(&self) -> Option<&AuthEntityName> {
        Some(self.0.name())
    }

    fn start(
        &self,
        ctx: &ClientAuthContext<'_>,
    ) -> Result<(Bytes, Box<dyn ClientAuthSession>), AuthError> {
        let (payload, session) = self.0.start(ctx.peer_type, &mut rand::rng())?;
        let conn = CephxClientConn {
            client: self.0.clone(),
            session,
        };
        Ok((payload, Box::new(conn)))
    }
}

impl ClientAuthSession for CephxClientConn {
    fn handle_reply_more(&mut self, payload: &[u8]) -> Result<Bytes, AuthError> {
        Ok(self
            .session
            .handle_reply_more(&self.client, payload, &mut rand::rng())?)
    }

    fn handle_done(
        &mut self,
        global_id: u64,
        _con_mode: u32,
        payload: &[u8],
    ) -> Result<SessionSecrets, AuthError> {
        Ok(self.session.handle_done(&self.client, global_id, payload)?)
    }
}

/// cephx, monitor role.
#[derive(Debug)]
pub(super) struct CephxMonitorAuth(pub(super) Arc<CephxMonitor>);

struct CephxMonitorConn {
    monitor: Arc<CephxMonitor>,
    session: CephxMonSession,
}

impl ServerAuthMethod for CephxMonitorAuth {
    fn method(&self) -> u32 {
        AUTH_METHOD_CEPHX
    }

    fn start(&self, ctx: &ServerAuthContext<'_>, payload: &[u8]) -> Result<ServerStep, AuthError> {
        let (reply, session) =
            self.0
                .start(payload, || ctx.assign_global_id(), &mut rand::rng())?;
        Ok(ServerStep::More {
            reply,
            session: Box::new(CephxMonitorConn {
                monitor: self.0.clone(),
                session,
            }),
        })
    }
}

impl ServerAuthSession for CephxMonitorConn {
    fn handle_more(
        self: Box<Self>,
        ctx: &ServerAuthContext<'_>,
        payload: &[u8],
    ) -> Result<ServerStep, AuthError> {
        let (payload, global_id, secrets) = self.monitor.finish(
            &self.session,
            payload,
            ctx.connection_secret_len(),
            ctx.now,
            &mut rand::rng(),
        )?;
        Ok(ServerStep::Done(AuthGranted {
            entity: self.session.name().clone(),
            global_id,
            payload,
            secrets,
        }))
    }
}

/// cephx, service role: always challenges the authorizer first, as Ceph's msgr2 services do.
#[derive(Debug)]
pub(super) struct CephxServiceAuth(pub(super) Arc<CephxService>);

struct CephxServiceConn {
    service: Arc<CephxService>,
    challenge: u64,
}

impl ServerAuthMethod for CephxServiceAuth {
    fn method(&self) -> u32 {
        AUTH_METHOD_CEPHX
    }

    fn start(&self, ctx: &ServerAuthContext<'_>, payload: &[u8]) -> Result<ServerStep, AuthError> {
        match self.0.verify(payload, None, 0, ctx.now, &mut rand::rng())? {
            ServiceVerdict::Challenge {
                payload,
                server_challenge,
            } => Ok(ServerStep::More {
                reply: payload,
                session: Box::new(CephxServiceConn {
                    service: self.0.clone(),
                    challenge: server_challenge,
                }),
            }),
            ServiceVerdict::Done { .. } => Err(AuthError::Refused {
                errno: EACCES,
                reason: "authorizer accepted without a challenge".into(),
            }),
        }
    }
}

impl ServerAuthSession for CephxServiceConn {
    fn handle_more(
        self: Box<Self>,
        ctx: &ServerAuthContext<'_>,
        payload: &[u8],
    ) -> Result<ServerStep, AuthError> {
        let verdict = self.service.verify(
            payload,
            Some(self.challenge),
            ctx.connection_secret_len(),
            ctx.now,
            &mut rand::rng(),
        )?;
        match verdict {
            ServiceVerdict::Done {
                payload,
                name,
                global_id,
                secrets,
            } => Ok(ServerStep::Done(AuthGranted {
                entity: name,
                global_id,
                payload,
                secrets,
            })),
            ServiceVerdict::Challenge { .. } => {
                Err(CephxError::Refused("authorizer did not answer our challenge".into()).into())
            }
        }
    }
}
