//! Pluggable authentication: the traits an auth method implements, in the style of rustls'
//! verifiers, and the provider types a [`Config`](crate::proto::conn::Config) holds.
//!
//! Owns: [`ClientAuthMethod`] / [`ClientAuthSession`] (how we authenticate to a server),
//! [`ServerAuthMethod`] / [`ServerAuthSession`] (how a server verifies us), what they exchange with the
//! connection ([`ClientAuthContext`], [`ServerAuthContext`], [`ServerStep`], [`AuthGranted`],
//! [`SessionSecrets`], [`AuthError`]) and the providers [`ClientAuth`] (one method) and [`ServerAuth`]
//! (the methods a server offers). Auth none and cephx (client, monitor and service roles) are
//! implementations like any other (see `builtin`).
//!
//! # The exchange
//! ```text
//! client                                   server
//! ClientAuthMethod::start ─ AUTH_REQUEST(method, modes, payload) ─▶ ServerAuthMethod::choose_mode,
//!                                                                   ServerAuthMethod::start
//! ClientAuthSession::handle_reply_more ◀─ AUTH_REPLY_MORE ─ ServerStep::More       (0..n rounds)
//!                     ─ AUTH_REQUEST_MORE ─▶ ServerAuthSession::handle_more
//! ClientAuthSession::handle_done ◀─ AUTH_DONE(global_id, mode, payload) ─ ServerStep::Done
//! ```
//! A refusal ([`AuthError::Refused`]) on the server answers AUTH_BAD_METHOD with its errno; the client
//! may try again on the same transport (up to `Config::max_auth_attempts`).
//!
//! # What the connection guarantees a method
//! - every payload it is handed came in one frame within `Config::max_handshake_frame_len`; AUTH_REQUESTs
//!   per transport are limited by `Config::max_auth_attempts`, and the rounds of one attempt by
//!   [`MAX_AUTH_ROUNDS`];
//! - a server method starts only with a mode (crc or secure) that it allows and the client offered,
//!   a client session finishes only with a mode it offered; a session never outlives its transport;
//! - the entity a server method grants is checked against the type the peer claimed in HELLO, and is
//!   what the messenger then checks session takeovers against (`Connection::peer_auth_name`).
//!
//! # What a method must guarantee
//! - no panic on any payload: untrusted input decodes into an [`AuthError`];
//! - in secure mode ([`CON_MODE_SECURE`]) both sides end with the same connection secret of at least
//!   [`CONNECTION_SECRET_MIN`] bytes (AES-128-GCM key and the two nonces; Ceph sends
//!   [`CONNECTION_SECRET_LEN`]): both return the same bytes, the connection itself swaps the nonces
//!   for the client's direction. A shorter secret fails the connection instead of running unprotected;
//! - the session key signs the pre-auth transcript (AUTH_SIGNATURE). An empty key gives the all-zero
//!   signature auth none sends: only a method that protects nothing may leave it empty;
//! - `Debug` never shows keys or secrets.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::cephx::{CephxClient, CephxMonitor, CephxService};
use super::{auth_method_name, ConModes, CON_MODE_CRC, CON_MODE_SECURE};
use crate::proto::denc::DecodeError;
use crate::proto::types::{entity_type, AuthEntityName};

pub use super::cephx::SessionSecrets;
/// Ceph's errnos for a refusal: `-EACCES` for a refused proof, `-EPERM` otherwise.
pub use super::cephx::{EACCES, EPERM};
pub use crate::proto::codec::secure::{CONNECTION_SECRET_LEN, CONNECTION_SECRET_MIN};

/// AUTH_REPLY_MORE / AUTH_REQUEST_MORE rounds one auth attempt may take (cephx takes one); a peer
/// that goes on fails the connection.
pub const MAX_AUTH_ROUNDS: u32 = 8;

/// Why an auth step failed. Messages name entities and reasons, never keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The credentials are not acceptable (wrong key, unknown entity, expired ticket). A server
    /// answers AUTH_BAD_METHOD with `errno` and the client may retry; a client fails with
    /// `Error::AuthFailed`.
    #[error("{reason}")]
    Refused { errno: i32, reason: String },
    /// A payload that does not decode: the connection fails as on any malformed frame.
    #[error("malformed auth payload: {0}")]
    Malformed(#[from] DecodeError),
    /// The peer broke the method's sequence (a frame the method does not expect now).
    #[error("{0}")]
    Protocol(String),
}

impl AuthError {
    /// Refused with Ceph's `-EACCES`.
    pub fn refused(reason: impl Into<String>) -> Self {
        AuthError::Refused {
            errno: EACCES,
            reason: reason.into(),
        }
    }
}

/// What a client's method learns about the connection it authenticates.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ClientAuthContext<'a> {
    /// The peer's entity type, as its HELLO said.
    pub peer_type: u8,
    /// `Config::auth_name`: who we are, for methods that do not carry their own identity.
    pub auth_name: &'a AuthEntityName,
    /// The global id we hold toward this peer: to a monitor, the one it gave us last on this
    /// connection (0 the first time); to anyone else, `Config::gid`.
    pub global_id: u64,
    /// The connection modes we offer, in preference order ([`ClientAuthMethod::offered_modes`]).
    pub offered_modes: &'a [u32],
}

impl<'a> ClientAuthContext<'a> {
    pub fn new(
        peer_type: u8,
        auth_name: &'a AuthEntityName,
        global_id: u64,
        offered_modes: &'a [u32],
    ) -> Self {
        ClientAuthContext {
            peer_type,
            auth_name,
            global_id,
            offered_modes,
        }
    }
}

/// How we authenticate to servers with one auth method; shared by every connection of a messenger
/// (per-connection state lives in the [`ClientAuthSession`] that [`start`](Self::start) returns).
pub trait ClientAuthMethod: fmt::Debug + Send + Sync {
    /// The method id sent in AUTH_REQUEST (`CEPH_AUTH_*`; ids Ceph does not use for a private method).
    fn method(&self) -> u32;

    /// The method's name in messages.
    fn name(&self) -> &str {
        auth_method_name(self.method())
    }

    /// The entity we authenticate as, for messages; `None`: `Config::auth_name`.
    fn entity_name(&self) -> Option<&AuthEntityName> {
        None
    }

    /// The connection modes we offer a peer of `peer_type`, in preference order. Default: what the
    /// configuration offers that peer type.
    fn offered_modes(&self, peer_type: u8, configured: &ConModes) -> Vec<u32> {
        if peer_type == entity_type::MON {
            configured.to_mon.clone()
        } else {
            configured.to_other.clone()
        }
    }

    /// Begin authenticating: the AUTH_REQUEST payload and the state that answers the server.
    fn start(
        &self,
        ctx: &ClientAuthContext<'_>,
    ) -> Result<(Bytes, Box<dyn ClientAuthSession>), AuthError>;
}

/// A client's auth state on one transport.
pub trait ClientAuthSession: Send {
    /// AUTH_REPLY_MORE: the AUTH_REQUEST_MORE payload that answers it.
    fn handle_reply_more(&mut self, payload: &[u8]) -> Result<Bytes, AuthError>;

    /// AUTH_DONE: check the server's answer and return the secrets of this connection. `con_mode` is
    /// one we offered; in secure mode the connection secret must have at least
    /// [`CONNECTION_SECRET_MIN`] bytes.
    fn handle_done(
        &mut self,
        global_id: u64,
        con_mode: u32,
        payload: &[u8],
    ) -> Result<SessionSecrets, AuthError>;
}

/// What a server's method learns about the connection it verifies.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ServerAuthContext<'a> {
    /// The entity type the peer claimed in HELLO (not proven: the connection checks the granted
    /// entity against it).
    pub peer_type: u8,
    /// The connection mode this attempt settled on ([`ServerAuthMethod::choose_mode`]).
    pub con_mode: u32,
    pub now: Instant,
    /// The messenger's global id counter (`Config::global_id_alloc`).
    pub global_ids: &'a AtomicU64,
}

impl<'a> ServerAuthContext<'a> {
    pub fn new(peer_type: u8, con_mode: u32, now: Instant, global_ids: &'a AtomicU64) -> Self {
        ServerAuthContext {
            peer_type,
            con_mode,
            now,
            global_ids,
        }
    }

    /// A fresh global id for a peer that has none.
    pub fn assign_global_id(&self) -> u64 {
        self.global_ids.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Connection-secret bytes to generate for this mode (Ceph's `get_connection_secret_length`):
    /// [`CONNECTION_SECRET_LEN`] in secure mode, none in crc mode.
    pub fn connection_secret_len(&self) -> usize {
        if self.con_mode == CON_MODE_SECURE {
            CONNECTION_SECRET_LEN
        } else {
            0
        }
    }
}

/// The peer proved who it is: what AUTH_DONE carries and what the connection keeps.
pub struct AuthGranted {
    /// The authenticated entity (its type must be the one the peer claimed in HELLO).
    pub entity: AuthEntityName,
    /// The global id AUTH_DONE gives the peer.
    pub global_id: u64,
    /// The AUTH_DONE payload.
    pub payload: Bytes,
    /// The session key (AUTH_SIGNATURE) and, in secure mode, the connection secret.
    pub secrets: SessionSecrets,
}

impl fmt::Debug for AuthGranted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthGranted")
            .field("entity", &self.entity.to_string())
            .field("global_id", &self.global_id)
            .field("payload", &format_args!("<{} bytes>", self.payload.len()))
            .field("secrets", &self.secrets)
            .finish()
    }
}

/// Where a server's exchange stands after one request.
pub enum ServerStep {
    /// Send AUTH_REPLY_MORE with `reply`; `session` answers the client's AUTH_REQUEST_MORE.
    More {
        reply: Bytes,
        session: Box<dyn ServerAuthSession>,
    },
    /// Authenticated: AUTH_DONE.
    Done(AuthGranted),
}

impl fmt::Debug for ServerStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerStep::More { reply, .. } => f
                .debug_struct("More")
                .field("reply", &format_args!("<{} bytes>", reply.len()))
                .finish_non_exhaustive(),
            ServerStep::Done(g) => f.debug_tuple("Done").field(g).finish(),
        }
    }
}

/// How a server verifies clients with one auth method; shared by every connection of a messenger.
pub trait ServerAuthMethod: fmt::Debug + Send + Sync {
    /// The method id this accepts in AUTH_REQUEST.
    fn method(&self) -> u32;

    /// The method's name in messages.
    fn name(&self) -> &str {
        auth_method_name(self.method())
    }

    /// The connection modes this method allows (AUTH_BAD_METHOD lists them). Default: what the
    /// configuration accepts.
    fn allowed_modes(&self, configured: &ConModes) -> Vec<u32> {
        configured.accept.clone()
    }

    /// The mode for a client that prefers `preferred` (in its order), among `allowed`; `None` refuses
    /// the request. Default: Ceph's, the client's first preference we allow.
    fn choose_mode(&self, preferred: &[u32], allowed: &[u32]) -> Option<u32> {
        ConModes::pick(preferred, allowed)
    }

    /// AUTH_REQUEST with this method: its payload.
    fn start(&self, ctx: &ServerAuthContext<'_>, payload: &[u8]) -> Result<ServerStep, AuthError>;
}

/// A server's auth state on one transport, waiting for AUTH_REQUEST_MORE.
pub trait ServerAuthSession: Send {
    /// AUTH_REQUEST_MORE: its payload.
    fn handle_more(
        self: Box<Self>,
        ctx: &ServerAuthContext<'_>,
        payload: &[u8],
    ) -> Result<ServerStep, AuthError>;
}

/// How we authenticate to servers (Ceph's `auth_client_required`, one method): auth none by default.
#[derive(Clone)]
pub struct ClientAuth(Arc<dyn ClientAuthMethod>);

impl ClientAuth {
    /// Any method, ours or the application's.
    pub fn new(method: Arc<dyn ClientAuthMethod>) -> Self {
        ClientAuth(method)
    }

    /// Auth method none: name and global id in the clear, crc mode only.
    pub fn none() -> Self {
        ClientAuth(Arc::new(super::builtin::NoneClient))
    }

    /// cephx with a key: tickets from monitors, authorizers for other daemons.
    pub fn cephx(client: Arc<CephxClient>) -> Self {
        ClientAuth(Arc::new(super::builtin::CephxClientAuth(client)))
    }

    /// The method id.
    pub fn method(&self) -> u32 {
        self.0.method()
    }

    /// The method itself.
    pub fn auth_method(&self) -> &dyn ClientAuthMethod {
        &*self.0
    }
}

impl Default for ClientAuth {
    fn default() -> Self {
        ClientAuth::none()
    }
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ClientAuth").field(&self.0).finish()
    }
}

/// How we verify clients (Ceph's `auth_service_required` / `auth_cluster_required`): the methods we
/// offer, in order. Auth none by default.
#[derive(Clone)]
pub struct ServerAuth(Vec<Arc<dyn ServerAuthMethod>>);

impl ServerAuth {
    /// Any method, ours or the application's.
    pub fn new(method: Arc<dyn ServerAuthMethod>) -> Self {
        ServerAuth(vec![method])
    }

    /// Also offer `method`. For an id offered twice the first one serves.
    pub fn with(mut self, method: Arc<dyn ServerAuthMethod>) -> Self {
        self.0.push(method);
        self
    }

    /// Anyone may connect (auth method none).
    pub fn none() -> Self {
        ServerAuth::new(Arc::new(super::builtin::NoneServer))
    }

    /// msgr as a monitor: clients prove their key and get session keys and tickets.
    pub fn cephx_monitor(monitor: Arc<CephxMonitor>) -> Self {
        ServerAuth::new(Arc::new(super::builtin::CephxMonitorAuth(monitor)))
    }

    /// msgr as a service (OSD-like): clients present authorizers from monitor-issued tickets.
    pub fn cephx_service(service: Arc<CephxService>) -> Self {
        ServerAuth::new(Arc::new(super::builtin::CephxServiceAuth(service)))
    }

    /// The method ids offered, in order.
    pub fn methods(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = Vec::with_capacity(self.0.len());
        for m in &self.0 {
            if !ids.contains(&m.method()) {
                ids.push(m.method());
            }
        }
        ids
    }

    /// The method serving id `method`, if offered.
    pub fn find(&self, method: u32) -> Option<&Arc<dyn ServerAuthMethod>> {
        self.0.iter().find(|m| m.method() == method)
    }

    /// The modes any offered method allows, in order of first mention (AUTH_BAD_METHOD).
    pub fn allowed_modes(&self, configured: &ConModes) -> Vec<u32> {
        let mut modes: Vec<u32> = Vec::new();
        for m in &self.0 {
            for mode in m.allowed_modes(configured) {
                if !modes.contains(&mode) {
                    modes.push(mode);
                }
            }
        }
        modes
    }
}

impl Default for ServerAuth {
    fn default() -> Self {
        ServerAuth::none()
    }
}

impl fmt::Debug for ServerAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ServerAuth").field(&self.0).finish()
    }
}

/// The modes auth none allows: crc only.
pub(super) fn crc_only() -> Vec<u32> {
    vec![CON_MODE_CRC]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::auth::{AUTH_METHOD_CEPHX, AUTH_METHOD_NONE};

    /// A method under any id, allowing what the configuration accepts.
    #[derive(Debug)]
    struct Other(u32);

    impl ServerAuthMethod for Other {
        fn method(&self) -> u32 {
            self.0
        }
        fn start(&self, _: &ServerAuthContext<'_>, _: &[u8]) -> Result<ServerStep, AuthError> {
            Err(AuthError::refused("not asked here"))
        }
    }

    #[test]
    fn a_server_lists_each_method_once_and_the_union_of_their_modes() {
        let s = ServerAuth::none()
            .with(Arc::new(Other(0x10)))
            .with(Arc::new(Other(AUTH_METHOD_NONE)));
        assert_eq!(s.methods(), vec![AUTH_METHOD_NONE, 0x10]);
        let modes = ConModes::all(&[CON_MODE_SECURE, CON_MODE_CRC]);
        assert_eq!(s.allowed_modes(&modes), vec![CON_MODE_CRC, CON_MODE_SECURE]);
        // The first method offered under an id serves it: none's crc-only, not Other's.
        let none = s.find(AUTH_METHOD_NONE).unwrap();
        assert_eq!(none.allowed_modes(&modes), vec![CON_MODE_CRC]);
        assert_eq!(s.find(0x10).unwrap().allowed_modes(&modes), modes.accept);
        assert!(s.find(AUTH_METHOD_CEPHX).is_none());
        assert_eq!(ServerAuth::default().methods(), vec![AUTH_METHOD_NONE]);
        assert_eq!(ClientAuth::default().method(), AUTH_METHOD_NONE);
    }

    #[test]
    fn context_secret_length_follows_the_mode() {
        let ids = AtomicU64::new(41);
        let now = Instant::now();
        let secure = ServerAuthContext::new(0, CON_MODE_SECURE, now, &ids);
        assert_eq!(secure.connection_secret_len(), CONNECTION_SECRET_LEN);
        assert_eq!(
            ServerAuthContext::new(0, CON_MODE_CRC, now, &ids).connection_secret_len(),
            0
        );
        assert_eq!(secure.assign_global_id(), 42);
        assert_eq!(secure.assign_global_id(), 43);
    }
}
