//! The msgr2.1 connection state machine (Ceph's ProtocolV2), sans-IO.
//!
//! A [`Connection`] is one logical connection to one peer: a *session* (queues, seqs, cookies) that
//! outlives transports on a lossless policy, plus the state of the current transport (framing buffers,
//! handshake phase, transcript for AUTH_SIGNATURE).
//!
//! How to drive it: see [`Connection`].
//!
//! Time is always an argument; nothing here reads a clock, touches a socket or spawns a thread.
//!
//! The code is split by phase: this file holds the types, the public API, input dispatch, faults and
//! output; `auth` the authentication phase, `ident` identification, `resolve` the server's
//! session decisions and connection races.

/// A step the interceptor hears of in place (feature `interceptor`; nothing otherwise). In a function
/// returning `Result`: an injected fault returns from it.
macro_rules! intercept {
    ($conn:ident, $step:ident) => {
        #[cfg(feature = "interceptor")]
        $conn.intercept_now($crate::proto::intercept::InterceptStep::$step)?;
    };
}

/// A step the interceptor hears of once the owner has acted on it (see `proto::intercept`).
macro_rules! intercept_later {
    ($conn:ident, $step:ident) => {
        #[cfg(feature = "interceptor")]
        $conn.defer_intercept($crate::proto::intercept::InterceptStep::$step);
    };
}

mod auth;
mod ident;
#[cfg(feature = "interceptor")]
mod intercept;
mod resolve;

pub use resolve::ceph_addr_less;

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::auth::{
    auth_method_name, auth_signature, con_mode_name, AuthError, ClientAuth, ClientAuthContext,
    ClientAuthSession, ConModes, ServerAuth, ServerAuthContext, ServerAuthSession, ServerStep,
    SessionSecrets, CON_MODE_CRC, CON_MODE_SECURE,
};
use super::banner::{msgr2_feature, Banner};
use super::codec::secure::{session_ciphers, CONNECTION_SECRET_MIN};
use super::codec::{Frame, FrameDecoder, FrameEncoder, FrameError, Tag};
use super::control::*;
use super::error::{Error, Limit, TransportError, TransportErrorKind};
use super::message::Message;
use super::session::{GlobalSeq, Session};
use super::types::{
    entity_type, AddrType, AddrVec, AuthEntityName, EntityAddr, EntityName, EntityType, UTime,
};

/// `CEPH_MSG_CONNECT_LOSSY` in CLIENT_IDENT / SERVER_IDENT flags.
pub const FLAG_LOSSY: u64 = 1;

/// Ceph's `CEPH_FEATURES_ALL` for 16.x (pacific), what real daemons advertise.
pub const CEPH_FEATURES_ALL: u64 = 0x3f01_cfbd_fffd_ffff;
/// `CEPH_FEATURE_MSG_ADDR2`: required by any msgr2 peer.
pub const CEPH_FEATURE_MSG_ADDR2: u64 = 1 << 59;

/// The msgr2 features we support (REVISION_1 frames only; COMPRESSION is known, not used) and require of
/// the peer. Like Ceph 16 we advertise no required feature in our banner, so our banner is byte-identical
/// to Ceph's, and end the session ourselves with a peer that lacks REVISION_1.
pub const MSGR2_SUPPORTED: u64 = msgr2_feature::REVISION_1;
pub const MSGR2_REQUIRED: u64 = msgr2_feature::REVISION_1;

/// Ceph's `-EOPNOTSUPP` as AUTH_BAD_METHOD carries it.
const EOPNOTSUPP: i32 = -95;

/// How a connection behaves on faults (Ceph's `Messenger::Policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// A fault ends the session (messages may be lost), instead of reconnect and replay.
    pub lossy: bool,
    /// We never initiate a reconnect; the peer must come back to us.
    pub server: bool,
    /// With nothing to send, a faulted connection waits idle instead of reconnecting at once.
    pub standby: bool,
    /// A peer that comes back with a new session after we lost ours is told about the reset.
    pub resetcheck: bool,
}

impl Policy {
    pub const fn lossy_client() -> Self {
        Policy {
            lossy: true,
            server: false,
            standby: false,
            resetcheck: false,
        }
    }
    pub const fn lossless_client() -> Self {
        Policy {
            lossy: false,
            server: false,
            standby: false,
            resetcheck: true,
        }
    }
    pub const fn lossless_peer() -> Self {
        Policy {
            lossy: false,
            server: false,
            standby: true,
            resetcheck: false,
        }
    }
    pub const fn lossless_peer_reuse() -> Self {
        Policy {
            lossy: false,
            server: false,
            standby: true,
            resetcheck: true,
        }
    }
    pub const fn stateful_server() -> Self {
        Policy {
            lossy: false,
            server: true,
            standby: true,
            resetcheck: true,
        }
    }
    pub const fn stateless_server() -> Self {
        Policy {
            lossy: true,
            server: true,
            standby: false,
            resetcheck: false,
        }
    }
}

/// Configuration shared by the connections of one messenger.
#[derive(Debug, Clone)]
pub struct Config {
    /// Our entity type, said in HELLO (`entity_type::CLIENT`, `OSD`, …).
    pub entity_type: u8,
    /// Our entity number (`gid` in CLIENT_IDENT / SERVER_IDENT).
    pub gid: i64,
    /// Our addresses. A server must list the address clients dial; a client may leave this empty
    /// and learn its IP from the server's HELLO (sent as type ANY, port 0, with `nonce`).
    pub my_addrs: AddrVec,
    /// Our address nonce (in bound addresses and in a learned client address). Random by default,
    /// as Ceph picks one per messenger instance; monitors use 0 (they are known by address alone).
    pub nonce: u32,
    /// Our auth name (AUTH_REQUEST with method none; cephx takes it from its provider).
    pub auth_name: AuthEntityName,
    /// How we authenticate to servers: `ClientAuth::none()`, `cephx(..)`, or an application's method.
    pub auth_client: ClientAuth,
    /// How we verify clients: `ServerAuth::none()`, `cephx_monitor(..)`, `cephx_service(..)`, or the
    /// application's methods.
    pub auth_server: ServerAuth,
    /// Connection modes (crc / secure) offered and allowed, per connection type.
    pub con_modes: ConModes,
    /// Ceph feature bits we support / require of the peer.
    pub features_supported: u64,
    pub features_required: u64,
    /// Largest frame accepted on a ready session, checked before any allocation.
    pub max_frame_len: usize,
    /// Largest frame accepted before the session is ready (banner through ident): cephx frames are a
    /// few hundred bytes, so an unauthenticated peer cannot make us buffer more than this.
    pub max_handshake_frame_len: usize,
    /// AUTH_REQUESTs a peer may send on one transport (a refused method may be retried); each
    /// attempt takes at most `proto::auth::method::MAX_AUTH_ROUNDS` rounds.
    pub max_auth_attempts: u32,
    /// Bytes each direction of the pre-auth transcript (signed in AUTH_SIGNATURE) may hold.
    pub max_transcript_len: usize,
    /// Entries a peer's address vector (CLIENT_IDENT, SESSION_RECONNECT) may have.
    pub max_addrvec_len: usize,
    /// Policy for connections we accept, by the peer's entity type; `default_policy` otherwise.
    pub accept_policies: Vec<(u8, Policy)>,
    pub default_policy: Policy,
    /// Reconnect back-off (Ceph's ms_initial_backoff / ms_max_backoff).
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// A handshake not finished within this is a fault (Ceph's ms_connection_ready_timeout).
    pub handshake_timeout: Duration,
    /// A ready connection with no input for this long faults (ms_connection_idle_timeout); None = never.
    pub idle_timeout: Option<Duration>,
    /// A ready connection with neither input nor output for this long gives its receive and encode
    /// buffers back to the allocator (they come back with the next byte); None = keep them. What an
    /// idle session costs a server with many of them.
    pub idle_buffer_release: Option<Duration>,
    /// A session kept for a peer that must come back to us (policy `server`, e.g. stateful_server)
    /// ends after this long in Standby; None = kept until the peer returns. Sessions of other
    /// policies never expire here: ending one turns the peer's next reconnect into a reset.
    pub server_standby_expiry: Option<Duration>,
    /// Send KEEPALIVE2 this often on a ready connection; None = only on request.
    pub keepalive_interval: Option<Duration>,
    /// Bytes of messages encoded per `poll_transmit`, so that higher-priority messages can still
    /// overtake what is queued behind a slow socket.
    pub transmit_budget: usize,
    /// Messenger-wide counters shared by all its connections.
    pub global_seq: GlobalSeq,
    pub global_id_alloc: Arc<AtomicU64>,
    /// Seed for cookies; None = from the OS.
    pub rng_seed: Option<u64>,
    /// Test hook called at named protocol steps (see `proto::intercept`).
    #[cfg(feature = "interceptor")]
    pub interceptor: Option<Arc<dyn super::intercept::Interceptor>>,
}

impl Config {
    pub fn new(entity_type: impl Into<EntityType>, auth_name: AuthEntityName) -> Self {
        Config {
            entity_type: entity_type.into().to_wire(),
            gid: 0,
            my_addrs: AddrVec::default(),
            // Ceph gives every messenger but a monitor's a random nonce, so that two instances on one
            // host never present the same address; monitors set 0 themselves.
            nonce: rand::random_range(1..=u32::MAX),
            auth_name,
            auth_client: ClientAuth::none(),
            auth_server: ServerAuth::none(),
            con_modes: ConModes::default(),
            features_supported: CEPH_FEATURES_ALL,
            features_required: CEPH_FEATURE_MSG_ADDR2,
            max_frame_len: 64 << 20,
            max_handshake_frame_len: 64 << 10,
            max_auth_attempts: 3,
            max_transcript_len: 128 << 10,
            max_addrvec_len: 16,
            accept_policies: Vec::new(),
            default_policy: Policy::stateful_server(),
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(15),
            handshake_timeout: Duration::from_secs(10),
            // Ceph's ms_connection_idle_timeout.
            idle_timeout: Some(Duration::from_secs(900)),
            idle_buffer_release: Some(Duration::from_secs(2)),
            // As long as an idle connection lives: a client gone for that long is not coming back
            // for its session, and a handshake-then-close loop cannot grow the server without bound.
            server_standby_expiry: Some(Duration::from_secs(900)),
            keepalive_interval: None,
            transmit_budget: 4 << 20,
            global_seq: GlobalSeq::new(),
            global_id_alloc: Arc::new(AtomicU64::new(4096)),
            rng_seed: None,
            #[cfg(feature = "interceptor")]
            interceptor: None,
        }
    }

    fn accept_policy(&self, peer_type: u8) -> Policy {
        self.accept_policies
            .iter()
            .find(|(t, _)| *t == peer_type)
            .map(|(_, p)| *p)
            .unwrap_or(self.default_policy)
    }
}

/// Which side of the handshake we play.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// Handshake and session phases (ProtocolV2's states, one transport at a time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Client: no transport; waiting for the back-off timer or for the owner to connect one.
    Connecting,
    /// Our banner is out; waiting for the peer's.
    Banner,
    /// Our HELLO is out; waiting for the peer's.
    Hello,
    /// Client: AUTH_REQUEST sent. Server: waiting for AUTH_REQUEST.
    Auth,
    /// AUTH_SIGNATURE sent; waiting for the peer's.
    AuthSignature,
    /// Client: CLIENT_IDENT sent. Server: waiting for CLIENT_IDENT / SESSION_RECONNECT.
    Session,
    /// Client: SESSION_RECONNECT sent.
    Reconnecting,
    /// Server: the peer identified itself; the owner must call `resolve_session`.
    AwaitingDecision,
    Ready,
    /// No transport; the session is kept until the peer (or a send, on a client) brings one.
    Standby,
    /// Client: the peer said WAIT (connection race); back off, then reconnect.
    Wait,
    Closed,
}

/// What a server connection learned from the peer's CLIENT_IDENT or SESSION_RECONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRequest {
    pub peer_addrs: AddrVec,
    pub peer_type: u8,
    pub kind: SessionRequestKind,
}

/// `Debug` leaves the cookies out: they authenticate a reconnect (and crc mode sends them in clear),
/// so they do not belong in logs.
#[derive(Clone, PartialEq, Eq)]
pub enum SessionRequestKind {
    /// CLIENT_IDENT: a new session (or the first attempt at one).
    New { client_cookie: u64, global_seq: u64 },
    /// SESSION_RECONNECT: resume an existing session.
    Reconnect {
        client_cookie: u64,
        server_cookie: u64,
        global_seq: u64,
        connect_seq: u64,
        msg_seq: u64,
    },
}

impl std::fmt::Debug for SessionRequestKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionRequestKind::New { global_seq, .. } => f
                .debug_struct("New")
                .field("global_seq", global_seq)
                .finish_non_exhaustive(),
            SessionRequestKind::Reconnect {
                global_seq,
                connect_seq,
                msg_seq,
                ..
            } => f
                .debug_struct("Reconnect")
                .field("global_seq", global_seq)
                .field("connect_seq", connect_seq)
                .field("msg_seq", msg_seq)
                .finish_non_exhaustive(),
        }
    }
}

/// How [`Connection::resolve_session`] settled a [`SessionRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// A new session runs on this connection. The existing one (if any) was reset and closed.
    NewSession,
    /// This connection took over the existing connection's session, which is now closed.
    TookOver,
    /// We answered WAIT / RETRY / RETRY_GLOBAL / RESET; the client will try again on this transport.
    Answered(Tag),
    /// This connection was stale and is closed.
    Dropped,
}

/// How a [`SessionRequest`] is settled without the existing session ([`Connection::settles_without_session`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// An attempt older than the existing session: dropped.
    Stale,
    /// The existing connection wins the race: WAIT.
    Wait,
    /// SESSION_RETRY with the existing connect_seq.
    Retry(u64),
    /// SESSION_RETRY_GLOBAL with the existing peer global_seq.
    RetryGlobal(u64),
    /// SESSION_RESET (`full`: the peer must drop its session too).
    Reset { full: bool },
}

/// Something the owner must act on or hand to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Client: open a transport to [`Connection::target_addr`] now, then call `on_transport_connected`.
    OpenTransport,
    /// The session is ready on the current transport (`reconnect`: an existing session resumed).
    Connected { reconnect: bool },
    /// Server: the peer identified itself; answer with [`Connection::resolve_session`].
    SessionRequest(SessionRequest),
    /// A message from the peer, in order, exactly once per session.
    Message(Message),
    /// The current transport is finished: close it. The session lives on (lossless) unless a
    /// `Reset` / `Closed` follows.
    TransportDown(Error),
    /// The peer reset the session: what we had queued for it is discarded (`dropped` messages).
    RemoteReset { dropped: usize },
    /// The session ended (a fault on a lossy connection, or a fatal error). Nothing more will happen.
    Reset(Error),
    /// The connection closed without a session fault (local close, replaced, stale attempt).
    Closed,
    /// A KEEPALIVE2_ACK came back.
    KeepaliveAck { rtt: Duration },
}

/// Per-connection counters (summed into the messenger's perf counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnStats {
    pub msgs_in: u64,
    pub msgs_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub handshakes: u64,
    pub reconnects: u64,
    /// Messages sent again after a fault.
    pub replayed: u64,
    /// Duplicates received (seq at or below in_seq) and dropped.
    pub duplicates_dropped: u64,
    pub remote_resets: u64,
    pub faults: u64,
    /// Frames decoded and encoded (every tag).
    pub frames_in: u64,
    pub frames_out: u64,
    /// Bare ACK frames encoded (acks no outgoing message carried).
    pub acks_out: u64,
    /// Server-policy sessions ended after `server_standby_expiry` in Standby.
    pub standby_expired: u64,
    /// Times a quiet connection gave its buffers back (`Config::idle_buffer_release`).
    pub buffer_releases: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    Reconnect,
    Handshake,
    Idle,
    Keepalive,
    /// A server-policy session parked in Standby expires.
    Standby,
    /// A ready connection quiet for `Config::idle_buffer_release` gives its buffers back.
    ReleaseBuffers,
}
const TIMERS: [Timer; 6] = [
    Timer::Reconnect,
    Timer::Handshake,
    Timer::Idle,
    Timer::Keepalive,
    Timer::Standby,
    Timer::ReleaseBuffers,
];

/// State scoped to one transport: dropped on every fault.
struct Transport {
    rx: BytesMut,
    decoder: FrameDecoder,
    encoder: FrameEncoder,
    tx: Vec<Bytes>,
    /// Where control-frame payloads are encoded before framing (reused: no allocation per ACK or
    /// keepalive).
    ctrl: BytesMut,
    /// Pre-auth transcript (banner through AUTH_DONE) for AUTH_SIGNATURE; None once auth is done.
    transcript: Option<(Vec<u8>, Vec<u8>)>,
    /// What we sent before AUTH_SIGNATURE, to check the peer's signature against.
    sent_transcript: Option<Vec<u8>>,
    /// Wiped when the transport goes.
    session_key: zeroize::Zeroizing<Vec<u8>>,
    /// Where the auth exchange on this transport stands.
    auth: AuthState,
    /// AUTH_REQUESTs received on this transport (server side).
    auth_attempts: u32,
}

/// Per-transport auth progress (the sans-IO side of Ceph's AuthClient / AuthServer calls).
#[derive(Default)]
enum AuthState {
    #[default]
    Idle,
    /// Client: AUTH_REQUEST sent with these modes; `rounds` AUTH_REPLY_MORE answered since.
    Client {
        session: Box<dyn ClientAuthSession>,
        offered: Vec<u32>,
        rounds: u32,
    },
    /// Server: AUTH_REPLY_MORE sent for `method` in `mode`; `rounds` of them for this request.
    Server {
        session: Box<dyn ServerAuthSession>,
        method: u32,
        mode: u32,
        rounds: u32,
    },
}

impl std::fmt::Debug for AuthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthState::Idle => f.write_str("Idle"),
            AuthState::Client {
                offered, rounds, ..
            } => f
                .debug_struct("Client")
                .field("offered", offered)
                .field("rounds", rounds)
                .finish_non_exhaustive(),
            AuthState::Server {
                method,
                mode,
                rounds,
                ..
            } => f
                .debug_struct("Server")
                .field("method", method)
                .field("mode", mode)
                .field("rounds", rounds)
                .finish_non_exhaustive(),
        }
    }
}

/// Receive buffer of a transport before its session is ready: what an unauthenticated peer costs.
const HANDSHAKE_RX_CAPACITY: usize = 1024;
/// Receive buffer of a ready session (it grows further for a large frame).
const READY_RX_CAPACITY: usize = 16 * 1024;

impl Transport {
    /// A ready session's receive buffer is allocated on its first input after the handshake or after
    /// an idle release (`Connection::release_idle_buffers`); before that its capacity is zero.
    fn allocate_rx_if_released(&mut self, capacity: usize) {
        if self.rx.capacity() == 0 {
            self.rx = BytesMut::with_capacity(capacity);
        }
    }

    fn new(max_frame_len: usize) -> Self {
        Transport {
            // Room for a banner and a handshake frame; a ready session gets READY_RX_CAPACITY.
            rx: BytesMut::with_capacity(HANDSHAKE_RX_CAPACITY),
            decoder: FrameDecoder::new(max_frame_len),
            encoder: FrameEncoder::new(),
            tx: Vec::new(),
            ctrl: BytesMut::new(),
            transcript: Some((Vec::new(), Vec::new())),
            sent_transcript: None,
            session_key: zeroize::Zeroizing::new(Vec::new()),
            auth: AuthState::Idle,
            auth_attempts: 0,
        }
    }

    /// Frame `cf` onto the transmit list (flushed: the handshake records what it sent).
    fn encode_control(&mut self, cf: &ControlFrame) -> Result<(), FrameError> {
        self.ctrl.clear();
        cf.encode_payload(&mut self.ctrl);
        self.encoder
            .encode_control(cf.tag(), &self.ctrl, &mut self.tx)
    }

    /// Frame `cf` after what is pending; [`Transport::take_tx`] hands it out.
    fn append_control(&mut self, cf: &ControlFrame) -> Result<(), FrameError> {
        self.ctrl.clear();
        cf.encode_payload(&mut self.ctrl);
        self.encoder
            .append_control(cf.tag(), &self.ctrl, &mut self.tx)
    }

    /// Everything encoded so far, in order.
    fn take_tx(&mut self, out: &mut Vec<Bytes>) -> usize {
        self.encoder.flush(&mut self.tx);
        let n: usize = self.tx.iter().map(|b| b.len()).sum();
        out.append(&mut self.tx);
        n
    }
}

/// One msgr2.1 connection: a *session* (queues, seqs, cookies) that outlives transports on a
/// lossless policy, plus the state of the current transport (framing, handshake phase, transcript).
///
/// # Driving it
/// The owner (a worker of some network stack) calls, in any order:
/// - inputs: [`Connection::on_transport_connected`] when a transport is up, [`Connection::handle_input`]
///   with the bytes read from it, [`Connection::on_transport_error`] when it failed,
///   [`Connection::handle_timeout`] when [`Connection::poll_timeout`]'s deadline passed;
/// - commands: [`Connection::send`], [`Connection::send_keepalive`], [`Connection::close`], and on the
///   server side [`Connection::resolve_session`] after an [`Event::SessionRequest`];
/// - outputs, after any input or command: [`Connection::poll_transmit`] (a gather list of bytes to write,
///   in order), [`Connection::poll_event`] until `None`, [`Connection::poll_timeout`].
///
/// # Example
/// ```
/// use std::sync::Arc;
/// use std::time::Instant;
/// use bytes::Bytes;
/// use msgr::proto::{Config, Connection, Event, Message, Policy};
/// use msgr::{entity_type, AuthEntityName, EntityAddr};
///
/// // Two in-memory connections: a client and a server, bytes passed by hand.
/// let now = Instant::now();
/// let server_addr = EntityAddr::msgr2("127.0.0.1:6800".parse().unwrap(), 1);
/// let mut scfg = Config::new(entity_type::OSD, AuthEntityName::parse("osd.0").unwrap());
/// scfg.my_addrs = msgr::AddrVec(vec![server_addr.clone()]);
/// let ccfg = Config::new(entity_type::CLIENT, AuthEntityName::parse("client.admin").unwrap());
/// let mut client = Connection::client(
///     Arc::new(ccfg), Policy::lossy_client(), entity_type::OSD, server_addr, now);
/// // The server side starts when its transport is accepted, from the peer's socket address.
/// let peer = EntityAddr::msgr2("127.0.0.1:50000".parse().unwrap(), 0);
/// let mut server = Connection::server(Arc::new(scfg), peer, now);
/// client.on_transport_connected(now);
/// client.send(now, Message::new(0x4000, Bytes::from_static(b"hello"))).unwrap();
///
/// // Move what one side has to write into the other.
/// fn pass(from: &mut Connection, to: &mut Connection, now: Instant) {
///     let mut out = Vec::new();
///     from.poll_transmit(now, &mut out);
///     for b in out {
///         to.handle_input(now, &b);
///     }
/// }
/// let mut got = None;
/// for _ in 0..20 {
///     pass(&mut client, &mut server, now);
///     pass(&mut server, &mut client, now);
///     while let Some(ev) = server.poll_event() {
///         match ev {
///             // The server decides whether this new session may exist (the messenger checks its
///             // session registry here).
///             Event::SessionRequest(_) => { server.resolve_session(now, None); }
///             Event::Message(m) => got = Some(m),
///             _ => {}
///         }
///     }
///     while client.poll_event().is_some() {}
/// }
/// assert_eq!(&got.expect("delivered").front[..], b"hello");
/// ```
pub struct Connection {
    role: Role,
    config: Arc<Config>,
    phase: Phase,
    policy: Policy,
    /// Client: the type we expect (or `entity_type::ANY`). Server: what the peer said in HELLO.
    peer_type: u8,
    /// Client: where we dial. Server: the peer's socket address until CLIENT_IDENT, then the address
    /// the client says it dialled.
    target_addr: EntityAddr,
    peer_addrs: AddrVec,
    peer_name: Option<EntityName>,
    peer_global_id: u64,
    features: u64,
    /// What the peer told us during the current (or last) handshake, kept for diagnostics.
    peer_msgr2_features: u64,
    addr_seen_by_peer: Option<EntityAddr>,
    peer_supported_features: u64,
    peer_auth_bad_method: Option<AuthBadMethod>,
    /// The entity the peer authenticated as (server side; cephx and none).
    peer_auth_name: Option<AuthEntityName>,
    /// Connection mode AUTH_DONE settled on the current (or last) transport; 0 before.
    con_mode: u32,
    my_addrs: AddrVec,
    session: Session,
    transport: Option<Transport>,
    pending_request: Option<SessionRequest>,
    events: VecDeque<Event>,
    timers: [Option<Instant>; TIMERS.len()],
    backoff: Duration,
    /// Set when the current transport saw its peer banner (used to pick reconnect vs. standby).
    last_input: Option<Instant>,
    /// When bytes last went out (for the idle buffer release).
    last_output: Option<Instant>,
    epoch: Instant,
    /// Seeded cookie source for reproducible tests; None: cookies from the OS-seeded CSPRNG.
    rng: Option<SmallRng>,
    stats: ConnStats,
    #[cfg(feature = "interceptor")]
    intercept: super::intercept::Hook,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("role", &self.role)
            .field("phase", &self.phase)
            .field("peer", &self.peer_addrs)
            .field("out_seq", &self.session.out_seq)
            .field("in_seq", &self.session.in_seq)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A client connection to `target` (whose entity type we expect to be `peer_type`, or
    /// `entity_type::ANY`). Emits [`Event::OpenTransport`] at once.
    pub fn client(
        config: Arc<Config>,
        policy: Policy,
        peer_type: u8,
        target: EntityAddr,
        now: Instant,
    ) -> Self {
        let mut c = Self::new(Role::Client, config, policy, now);
        c.peer_type = peer_type;
        c.target_addr = target;
        c.phase = Phase::Connecting;
        c.events.push_back(Event::OpenTransport);
        c
    }

    /// A server connection on a freshly accepted transport. `peer_addr` is the peer's socket address as
    /// accepted (Ceph sends it back in HELLO so the client learns how we see it): pass
    /// `EntityAddr::msgr2(peer_socket_addr, 0)`.
    pub fn server(config: Arc<Config>, peer_addr: EntityAddr, now: Instant) -> Self {
        let policy = config.default_policy;
        let mut c = Self::new(Role::Server, config, policy, now);
        c.target_addr = peer_addr;
        c.on_transport_connected(now);
        c
    }

    fn new(role: Role, config: Arc<Config>, policy: Policy, now: Instant) -> Self {
        let rng = config.rng_seed.map(SmallRng::seed_from_u64);
        Connection {
            role,
            phase: Phase::Closed,
            policy,
            peer_type: entity_type::ANY,
            target_addr: EntityAddr::none(),
            peer_addrs: AddrVec::default(),
            peer_name: None,
            peer_global_id: 0,
            features: 0,
            peer_msgr2_features: 0,
            addr_seen_by_peer: None,
            peer_supported_features: 0,
            peer_auth_bad_method: None,
            peer_auth_name: None,
            con_mode: 0,
            my_addrs: config.my_addrs.clone(),
            session: Session::default(),
            transport: None,
            pending_request: None,
            events: VecDeque::new(),
            timers: [None; TIMERS.len()],
            backoff: Duration::ZERO,
            last_input: None,
            last_output: None,
            epoch: now,
            rng,
            stats: ConnStats::default(),
            #[cfg(feature = "interceptor")]
            intercept: Default::default(),
            config,
        }
    }

    // ---- getters ----

    pub fn role(&self) -> Role {
        self.role
    }
    pub fn phase(&self) -> Phase {
        self.phase
    }
    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }
    pub fn policy(&self) -> Policy {
        self.policy
    }
    pub fn peer_type(&self) -> u8 {
        self.peer_type
    }
    pub fn target_addr(&self) -> &EntityAddr {
        &self.target_addr
    }
    pub fn peer_addrs(&self) -> &AddrVec {
        &self.peer_addrs
    }
    pub fn peer_name(&self) -> Option<&EntityName> {
        self.peer_name.as_ref()
    }
    /// The global_id the server assigned to (client) / accepted from (server) the peer.
    pub fn peer_global_id(&self) -> u64 {
        self.peer_global_id
    }
    /// Our addresses, as learned from the peer if the config had none.
    pub fn my_addrs(&self) -> &AddrVec {
        &self.my_addrs
    }
    /// Negotiated Ceph feature bits.
    pub fn features(&self) -> u64 {
        self.features
    }
    /// The msgr2 feature bits the peer's banner says it supports on the current (or last) transport;
    /// 0 before its banner arrived. Set even when the banner is then refused as incompatible.
    pub fn peer_msgr2_features(&self) -> u64 {
        self.peer_msgr2_features
    }
    /// The `peer_addr` of the peer's HELLO on the current (or last) transport: how it sees us (a
    /// client: our IP and port as the server accepted us; a server: the address the client dialled).
    pub fn addr_seen_by_peer(&self) -> Option<&EntityAddr> {
        self.addr_seen_by_peer.as_ref()
    }
    /// The Ceph feature bits the peer said it supports in its latest SERVER_IDENT / CLIENT_IDENT, not
    /// masked by ours as [`Connection::features`] is; 0 before any ident arrived.
    pub fn peer_supported_features(&self) -> u64 {
        self.peer_supported_features
    }
    /// The peer's `global_seq` from its SERVER_IDENT (client) or CLIENT_IDENT (server, once resolved).
    pub fn peer_global_seq(&self) -> u64 {
        self.session.peer_global_seq
    }
    /// The AUTH_BAD_METHOD the server refused our auth method with (which methods and modes it allows),
    /// if it did on the current (or last) transport.
    pub fn peer_auth_bad_method(&self) -> Option<&AuthBadMethod> {
        self.peer_auth_bad_method.as_ref()
    }
    /// The connection mode (`CON_MODE_CRC` / `CON_MODE_SECURE`) AUTH_DONE chose on the current (or
    /// last) transport; 0 before any AUTH_DONE.
    pub fn con_mode(&self) -> u32 {
        self.con_mode
    }
    /// Server side: the entity name the peer authenticated as.
    pub fn peer_auth_name(&self) -> Option<&AuthEntityName> {
        self.peer_auth_name.as_ref()
    }
    /// Bytes of buffer this connection holds for its transport: the receive buffer, the encoder's
    /// scratch block and the control-frame buffer (capacity, not contents). Zero for the receive
    /// buffer of a ready session until its first input, and again after a quiet spell
    /// ([`Config::idle_buffer_release`]).
    pub fn buffer_capacity(&self) -> usize {
        self.transport.as_ref().map_or(0, |t| {
            t.rx.capacity() + t.encoder.scratch_capacity() + t.ctrl.capacity()
        })
    }

    pub fn stats(&self) -> ConnStats {
        self.stats
    }
    pub fn in_seq(&self) -> u64 {
        self.session.in_seq
    }
    pub fn out_seq(&self) -> u64 {
        self.session.out_seq
    }
    /// Messages queued or sent-but-unacked.
    pub fn pending_messages(&self) -> usize {
        self.session.out_queue.len() + self.session.requeued.len() + self.session.sent.len()
    }
    /// Messages and payload bytes that left this connection's custody (acked, sent lossy, discarded)
    /// since the last call. A messenger uses it to release its send throttle.
    pub fn take_released(&mut self) -> super::session::Released {
        std::mem::take(&mut self.session.released)
    }

    /// Payload bytes waiting in the send queue (not yet encoded).
    pub fn queued_bytes(&self) -> usize {
        self.session.out_queue.bytes()
    }
    pub fn client_cookie(&self) -> u64 {
        self.session.client_cookie
    }
    pub fn server_cookie(&self) -> u64 {
        self.session.server_cookie
    }
    pub fn connect_seq(&self) -> u64 {
        self.session.connect_seq
    }
    pub fn has_transport(&self) -> bool {
        self.transport.is_some()
    }

    // ---- outputs ----

    /// Next event for the owner.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether [`Connection::poll_event`] has something.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The earliest deadline at which [`Connection::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.iter().flatten().min().copied()
    }

    /// Append the bytes to write, in order, to `out`; returns how many bytes were appended.
    /// Messages are encoded here (not in `send`), so priorities apply to everything not yet handed out.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<Bytes>) -> usize {
        #[cfg(feature = "interceptor")]
        if self.intercept_pending() {
            return 0;
        }
        if self.phase == Phase::Ready {
            self.encode_outgoing(now);
        }
        let Some(t) = self.transport.as_mut() else {
            return 0;
        };
        let n = t.take_tx(out);
        self.stats.bytes_out += n as u64;
        if n > 0 {
            self.last_output = Some(now);
            self.arm_buffer_release(now);
        }
        n
    }

    /// Whether `poll_transmit` would produce anything now.
    pub fn wants_transmit(&self) -> bool {
        let Some(t) = self.transport.as_ref() else {
            return false;
        };
        #[cfg(feature = "interceptor")]
        if self.intercept_pending() {
            return false;
        }
        !t.tx.is_empty()
            || t.encoder.has_pending()
            || (self.phase == Phase::Ready
                && (self.session.has_outgoing()
                    || self.session.ack_left > 0
                    || self.session.keepalive_pending))
    }

    // ---- commands ----

    /// Queue a message. On a closed connection the message is dropped and `Err(Closed)` returned.
    #[inline]
    pub fn send(&mut self, now: Instant, msg: Message) -> Result<(), Error> {
        match self.phase {
            Phase::Closed => return Err(Error::Closed),
            Phase::Standby => self.begin_reconnect(now),
            _ => {}
        }
        self.session.out_queue.push(msg);
        Ok(())
    }

    /// Ask for a KEEPALIVE2 (its ack yields [`Event::KeepaliveAck`]).
    pub fn send_keepalive(&mut self, now: Instant) {
        if self.phase == Phase::Closed {
            return;
        }
        self.session.keepalive_pending = true;
        if self.phase == Phase::Standby {
            self.begin_reconnect(now);
        }
    }

    /// End a server-policy session waiting in Standby, as its expiry would (the owner evicts it to
    /// make room for a new session). Anything else is left alone.
    pub fn expire_standby(&mut self) {
        if self.phase == Phase::Standby && self.policy.server {
            self.stats.standby_expired += 1;
            self.session.reset();
            self.shut(Event::Reset(Error::TimedOut("session in standby expired")));
        }
    }

    /// Close locally (mark_down): queued messages are discarded, the transport should be closed.
    pub fn close(&mut self) {
        if self.phase == Phase::Closed {
            return;
        }
        self.session.reset();
        self.shut(Event::Closed);
    }

    // ---- inputs ----

    /// A transport is up (client: the connect completed; server: called by [`Connection::server`]).
    pub fn on_transport_connected(&mut self, now: Instant) {
        let expected = match self.role {
            Role::Client => matches!(self.phase, Phase::Connecting | Phase::Wait),
            Role::Server => {
                self.transport.is_none()
                    && self.phase == Phase::Closed
                    && self.stats.handshakes == 0
            }
        };
        if !expected {
            return;
        }
        let mut t = Transport::new(
            self.config
                .max_handshake_frame_len
                .min(self.config.max_frame_len),
        );
        let mut b = BytesMut::with_capacity(Banner::LEN);
        Banner {
            supported: MSGR2_SUPPORTED,
            required: 0, // as Ceph 16 advertises; REVISION_1 is enforced in handle_banner
        }
        .encode(&mut b);
        let b = b.freeze();
        if let Some((tx, _)) = t.transcript.as_mut() {
            tx.extend_from_slice(&b);
        }
        t.tx.push(b);
        self.transport = Some(t);
        self.phase = Phase::Banner;
        self.peer_msgr2_features = 0;
        self.addr_seen_by_peer = None;
        self.peer_auth_bad_method = None;
        self.con_mode = 0;
        self.timers = [None; TIMERS.len()];
        self.set_timer(Timer::Handshake, now + self.config.handshake_timeout);
        if self.role == Role::Client {
            self.session.global_seq = self.config.global_seq.next();
        }
        intercept_later!(self, Banner);
    }

    /// The transport failed (I/O error, EOF, connect refused). Applies the policy: reconnect with
    /// back-off, standby, or reset.
    pub fn on_transport_error(&mut self, now: Instant, reason: impl Into<TransportError>) {
        if self.transport.is_none() && self.phase != Phase::Connecting {
            return;
        }
        self.fault(now, Error::Transport(reason.into()));
    }

    /// Read from the transport straight into the receive buffer, then handle what arrived: one copy,
    /// where [`Connection::handle_input`] takes bytes the owner read elsewhere.
    ///
    /// `read(buf, max)` should append at most `max` bytes to `buf` (which has room for them) and return
    /// how many, as a read would: `Ok(0)` for end of stream, an error for `WouldBlock` and failures. Its
    /// result is returned unchanged; the caller reacts to `Ok(0)` and errors as it would for a read.
    /// `max` is the buffer's free space: at least a quarter of 16 KiB once ready (more when a large
    /// frame's room was reserved at its preamble), at least half of 1 KiB during the handshake.
    pub fn read_input<F>(&mut self, now: Instant, read: F) -> std::io::Result<usize>
    where
        F: FnOnce(&mut BytesMut, usize) -> std::io::Result<usize>,
    {
        let ready = self.phase == Phase::Ready;
        let Some(t) = self.transport.as_mut() else {
            return Err(std::io::ErrorKind::NotConnected.into());
        };
        let (target, min_room) = if ready {
            (READY_RX_CAPACITY, READY_RX_CAPACITY / 4)
        } else {
            (HANDSHAKE_RX_CAPACITY, HANDSHAKE_RX_CAPACITY / 2)
        };
        t.allocate_rx_if_released(target);
        if t.rx.capacity() - t.rx.len() < min_room {
            // Room for the frame being waited for was reserved when its preamble arrived.
            t.rx.reserve(target.saturating_sub(t.rx.len()).max(min_room));
        }
        let before = t.rx.len();
        let max = t.rx.capacity() - before;
        let n = read(&mut t.rx, max)?;
        // (A stack that lends its own buffers may append a little more than `max`; the buffer grows.)
        if n == 0 || t.rx.len() != before + n {
            t.rx.truncate(before);
            if n == 0 {
                return Ok(0);
            }
            return Err(std::io::Error::other(
                "read_input: the reader appended other than it reported",
            ));
        }
        self.stats.bytes_in += n as u64;
        self.last_input = Some(now);
        self.arm_buffer_release(now);
        if self.phase != Phase::Ready
            && self.timers[Timer::Handshake as usize].is_some_and(|d| now >= d)
        {
            self.fault(now, Error::TimedOut("handshake"));
            return Ok(n);
        }
        if let Err(e) = self.process(now) {
            self.fault(now, e);
        }
        Ok(n)
    }

    /// Bytes read from the transport.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        if self.transport.is_none() {
            return;
        }
        self.stats.bytes_in += data.len() as u64;
        self.last_input = Some(now);
        self.arm_buffer_release(now);
        if let Some(t) = self.transport.as_mut() {
            t.allocate_rx_if_released(READY_RX_CAPACITY);
        }
        // The deadline holds even when input keeps the owner from ever returning to its timers.
        if self.phase != Phase::Ready
            && self.timers[Timer::Handshake as usize].is_some_and(|d| now >= d)
        {
            self.fault(now, Error::TimedOut("handshake"));
            return;
        }
        // The idle deadline is not moved here (that would re-arm the owner's timer on every read): it
        // fires at its old time and re-arms itself from `last_input` if there was input since.
        // Append no more than the receive buffer has room for (the decoder sized it for the frame being
        // waited for), decode, repeat: a read straddling two frames must not double a frame-sized buffer.
        let mut rest = data;
        loop {
            let Some(t) = self.transport.as_mut() else {
                return;
            };
            let room = t.rx.capacity() - t.rx.len();
            let n = if room == 0 {
                rest.len()
            } else {
                room.min(rest.len())
            };
            let (now_part, later) = rest.split_at(n);
            t.rx.extend_from_slice(now_part);
            rest = later;
            if let Err(e) = self.process(now) {
                self.fault(now, e);
                return;
            }
            if rest.is_empty() {
                return;
            }
        }
    }

    /// Fire whatever timers are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        for timer in TIMERS {
            let i = timer as usize;
            if self.timers[i].is_none_or(|d| d > now) {
                continue;
            }
            self.timers[i] = None;
            match timer {
                Timer::Reconnect => {
                    if matches!(self.phase, Phase::Connecting | Phase::Wait) {
                        self.phase = Phase::Connecting;
                        self.events.push_back(Event::OpenTransport);
                    }
                }
                Timer::Handshake => {
                    if self.transport.is_some() && self.phase != Phase::Ready {
                        self.fault(now, Error::TimedOut("handshake"));
                    }
                }
                Timer::Idle => {
                    if self.phase == Phase::Ready {
                        let (Some(idle), Some(last)) = (self.config.idle_timeout, self.last_input)
                        else {
                            continue;
                        };
                        match last.checked_add(idle) {
                            Some(until) if until > now => self.set_timer(Timer::Idle, until),
                            _ => self.fault(now, Error::TimedOut("idle connection")),
                        }
                    }
                }
                Timer::Standby => self.expire_standby(),
                Timer::ReleaseBuffers => {
                    let Some(after) = self.config.idle_buffer_release else {
                        continue;
                    };
                    if self.phase != Phase::Ready {
                        continue;
                    }
                    let last = self.last_input.max(self.last_output);
                    match last.and_then(|l| l.checked_add(after)) {
                        Some(until) if until > now => self.set_timer(Timer::ReleaseBuffers, until),
                        _ => self.release_idle_buffers(),
                    }
                }
                Timer::Keepalive => {
                    if self.phase == Phase::Ready {
                        self.session.keepalive_pending = true;
                        if let Some(k) = self.config.keepalive_interval {
                            self.set_timer(Timer::Keepalive, now + k);
                        }
                    }
                }
            }
        }
    }

    // ---- internals: input processing ----

    fn process(&mut self, now: Instant) -> Result<(), Error> {
        let max_transcript = self.config.max_transcript_len;
        loop {
            if self.phase == Phase::Closed || self.phase == Phase::AwaitingDecision {
                return Ok(());
            }
            #[cfg(feature = "interceptor")]
            if self.intercept_pending() {
                return Ok(());
            }
            let Some(t) = self.transport.as_mut() else {
                return Ok(());
            };
            if self.phase == Phase::Banner {
                let Some((banner, n)) = Banner::decode(&t.rx)? else {
                    return Ok(());
                };
                let raw = t.rx.split_to(n);
                record_transcript(
                    t.transcript.as_mut().map(|(_, rx)| rx),
                    &raw,
                    max_transcript,
                )?;
                self.handle_banner(banner)?;
                continue;
            }
            let mut frame = match t.decoder.decode(&mut t.rx) {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                // The sender gave up on that frame after starting it: skip it.
                Err(FrameError::Aborted) => continue,
                Err(FrameError::TooLarge { len, max }) => {
                    let limit = if self.phase == Phase::Ready {
                        Limit::Frame
                    } else {
                        Limit::HandshakeFrame
                    };
                    return Err(Error::limit(limit, len, max));
                }
                Err(e) => return Err(e.into()),
            };
            record_transcript(
                t.transcript.as_mut().map(|(_, rx)| rx),
                &frame.raw,
                max_transcript,
            )?;
            self.stats.frames_in += 1;
            self.handle_frame(now, &mut frame)?;
        }
    }

    fn handle_banner(&mut self, peer: Banner) -> Result<(), Error> {
        self.peer_msgr2_features = peer.supported;
        let missing = MSGR2_REQUIRED & !peer.supported;
        if missing != 0 {
            return Err(Error::PeerIncompatible(format!(
                "peer lacks msgr2 feature(s) {} (0x{missing:x})",
                msgr2_feature_names(missing)
            )));
        }
        let unsupported = peer.required & !MSGR2_SUPPORTED;
        if unsupported != 0 {
            return Err(Error::PeerIncompatible(format!(
                "peer requires msgr2 feature(s) we lack: {} (0x{unsupported:x})",
                msgr2_feature_names(unsupported)
            )));
        }
        intercept!(self, Hello);
        self.phase = Phase::Hello;
        let hello = ControlFrame::Hello(Hello {
            entity_type: self.config.entity_type,
            peer_addr: self.target_addr.clone(),
        });
        self.queue_control(&hello)?;
        Ok(())
    }

    fn handle_frame(&mut self, now: Instant, frame: &mut Frame) -> Result<(), Error> {
        if frame.tag == Tag::Message {
            return self.handle_message(now, frame);
        }
        let cf = ControlFrame::decode(frame.tag, frame.payload())?;
        match (self.role, self.phase, cf) {
            (_, Phase::Hello, ControlFrame::Hello(h)) => self.handle_hello(h),
            // ---- client side ----
            (Role::Client, Phase::Auth, ControlFrame::AuthDone(d)) => self.client_auth_done(d),
            (Role::Client, Phase::Auth, ControlFrame::AuthBadMethod(b)) => {
                Err(self.auth_bad_method(b))
            }
            (Role::Client, Phase::Auth, ControlFrame::AuthReplyMore(m)) => {
                self.client_auth_reply_more(m)
            }
            (_, Phase::AuthSignature, ControlFrame::AuthSignature(s)) => {
                self.handle_auth_signature(s)
            }
            (Role::Client, Phase::Session, ControlFrame::ServerIdent(s)) => {
                self.client_server_ident(now, s)
            }
            (Role::Client, Phase::Session, ControlFrame::IdentMissingFeatures(m)) => {
                Err(Error::PeerIncompatible(format!(
                    "server requires Ceph features we lack: 0x{:x}",
                    m.features
                )))
            }
            (Role::Client, Phase::Session | Phase::Reconnecting, ControlFrame::Wait) => {
                self.phase = Phase::Wait;
                Err(Error::Transport(TransportError::new(
                    TransportErrorKind::Replaced,
                    "peer asked us to WAIT (connection race)",
                )))
            }
            (Role::Client, Phase::Reconnecting, ControlFrame::SessionReconnectOk(ok)) => {
                self.client_reconnect_ok(now, ok)
            }
            (Role::Client, Phase::Reconnecting, ControlFrame::SessionRetry(r)) => {
                self.session.connect_seq =
                    checked_peer_seq("SESSION_RETRY connect_seq", r.connect_seq)?
                        .checked_add(1)
                        .ok_or_else(|| absurd_seq("SESSION_RETRY connect_seq", r.connect_seq))?;
                self.send_reconnect()
            }
            (Role::Client, Phase::Reconnecting, ControlFrame::SessionRetryGlobal(r)) => {
                let seen = checked_peer_seq("SESSION_RETRY_GLOBAL global_seq", r.global_seq)?;
                self.session.global_seq = self.config.global_seq.next_after(seen);
                self.send_reconnect()
            }
            (Role::Client, Phase::Reconnecting, ControlFrame::SessionReset(r)) => {
                if r.full {
                    self.reset_session_remote();
                } else {
                    self.session.server_cookie = 0;
                    self.session.connect_seq = 0;
                    self.session.in_seq = 0;
                }
                self.send_client_ident()
            }
            // ---- server side ----
            (Role::Server, Phase::Auth, ControlFrame::AuthRequest(r)) => {
                self.server_auth_request(now, r)
            }
            (Role::Server, Phase::Auth, ControlFrame::AuthRequestMore(r)) => {
                self.server_auth_request_more(now, r)
            }
            (Role::Server, Phase::Session, ControlFrame::ClientIdent(ci)) => {
                self.server_client_ident(ci)
            }
            (Role::Server, Phase::Session, ControlFrame::SessionReconnect(r)) => {
                self.server_reconnect(r)
            }
            // ---- ready ----
            (_, Phase::Ready, ControlFrame::Ack(a)) => {
                if !self.policy.lossy {
                    self.session.handle_ack(a.seq);
                }
                Ok(())
            }
            (_, Phase::Ready, ControlFrame::Keepalive2(k)) => {
                self.queue_control(&ControlFrame::Keepalive2Ack(Keepalive2Ack {
                    timestamp: k.timestamp,
                }))
            }
            (_, Phase::Ready, ControlFrame::Keepalive2Ack(k)) => {
                let sent = self.epoch
                    + Duration::new(
                        u64::from(k.timestamp.sec),
                        k.timestamp.nsec.min(999_999_999),
                    );
                let rtt = now.checked_duration_since(sent).unwrap_or_default();
                self.events.push_back(Event::KeepaliveAck { rtt });
                Ok(())
            }
            (role, phase, cf) => Err(Error::PeerMisbehaved(format!(
                "unexpected {:?} frame as {role:?} in phase {phase:?}",
                cf.tag()
            ))),
        }
    }

    fn handle_message(&mut self, now: Instant, frame: &mut Frame) -> Result<(), Error> {
        if self.phase != Phase::Ready {
            return Err(Error::PeerMisbehaved(format!(
                "MESSAGE frame in phase {:?}",
                self.phase
            )));
        }
        intercept!(self, Message);
        let n = frame.num_segments.min(frame.segments.len());
        let msg = Message::take_from_segments(&mut frame.segments[..n])?;
        if !self.policy.lossy {
            self.session.handle_ack(msg.header.ack_seq);
        }
        if msg.header.seq <= self.session.in_seq {
            self.stats.duplicates_dropped += 1;
            return Ok(());
        }
        self.session.in_seq = msg.header.seq;
        if !self.policy.lossy {
            self.session.ack_left += 1;
        }
        self.stats.msgs_in += 1;
        let _ = now;
        self.events.push_back(Event::Message(msg));
        Ok(())
    }

    // ---- internals: state changes ----

    fn become_ready(&mut self, now: Instant, reconnect: bool) {
        self.phase = Phase::Ready;
        if let Some(t) = self.transport.as_mut() {
            t.decoder.set_max_frame_len(self.config.max_frame_len);
            // A new buffer rather than `reserve`: `BytesMut` sizes every later reallocation by the
            // capacity it was created with. None at all while nothing is buffered: the first read
            // allocates it, and an idle session costs no receive buffer.
            if t.rx.is_empty() {
                t.rx = BytesMut::new();
            } else {
                let mut rx = BytesMut::with_capacity(READY_RX_CAPACITY.max(t.rx.len()));
                rx.extend_from_slice(&t.rx);
                t.rx = rx;
            }
        }
        self.backoff = Duration::ZERO;
        self.stats.handshakes += 1;
        self.timers[Timer::Handshake as usize] = None;
        self.last_input = Some(now);
        if let Some(idle) = self.config.idle_timeout {
            self.set_timer(Timer::Idle, now + idle);
        }
        if let Some(k) = self.config.keepalive_interval {
            self.set_timer(Timer::Keepalive, now + k);
        }
        self.timers[Timer::ReleaseBuffers as usize] = None;
        self.arm_buffer_release(now);
        self.events.push_back(Event::Connected { reconnect });
        intercept_later!(self, Ready);
    }

    /// Ceph's `_fault`: the transport is gone; keep, park or end the session by policy.
    ///
    /// As in ProtocolV2::_fault: a lossless side parks in Standby only when its policy is `server`, or
    /// when it has nothing to send and its policy is `standby`; any other lossless side re-dials, also
    /// one that accepted the session (it dials the addresses the peer gave in CLIENT_IDENT). A fault
    /// outside a connection attempt (READY, accepting) re-dials at once; only failed attempts back off,
    /// doubling up to `max_backoff`.
    fn fault(&mut self, now: Instant, err: Error) {
        if self.phase == Phase::Closed {
            return;
        }
        self.stats.faults += 1;
        #[cfg(feature = "interceptor")]
        self.intercept.deferred.clear();
        let had_transport = self.transport.take().is_some();
        self.pending_request = None;
        self.timers = [None; TIMERS.len()];
        if had_transport {
            self.events.push_back(Event::TransportDown(err.clone()));
        }
        // Ceph's START_CONNECT..SESSION_RECONNECTING: a connection attempt of ours was under way.
        let attempting = matches!(
            self.phase,
            Phase::Connecting
                | Phase::Banner
                | Phase::Hello
                | Phase::Auth
                | Phase::AuthSignature
                | Phase::Session
                | Phase::Reconnecting
        ) && self.role == Role::Client;
        if err.is_fatal() {
            self.session.reset();
            self.shut(Event::Reset(err));
            return;
        }
        if self.policy.lossy && !attempting {
            self.session.reset();
            self.shut(Event::Reset(err));
            return;
        }
        self.session.requeue_sent();
        if self.role == Role::Server && self.session.server_cookie == 0 {
            // Half-accepted, no session yet: nothing to keep.
            self.shut(Event::Closed);
            return;
        }
        let has_outgoing = self.session.has_outgoing() || self.session.keepalive_pending;
        if self.policy.standby && !has_outgoing && self.phase != Phase::Wait {
            self.park(now);
            return;
        }
        if self.policy.server || !self.become_dialer() {
            self.park(now);
            return;
        }
        if self.session.server_cookie != 0 {
            self.session.connect_seq = self.session.connect_seq.saturating_add(1);
        }
        self.stats.reconnects += 1;
        if !attempting && self.phase != Phase::Wait {
            // The session was up (or being accepted): re-dial at once.
            self.backoff = Duration::ZERO;
            self.phase = Phase::Connecting;
            self.set_timer(Timer::Reconnect, now);
            return;
        }
        self.backoff = if self.phase == Phase::Wait {
            self.config.max_backoff
        } else if self.backoff.is_zero() {
            self.config.initial_backoff
        } else {
            (self.backoff * 2).min(self.config.max_backoff)
        };
        if self.phase != Phase::Wait {
            self.phase = Phase::Connecting;
        }
        self.set_timer(Timer::Reconnect, now + self.backoff);
    }

    /// Go to Standby; a server-policy session starts its expiry there.
    fn park(&mut self, now: Instant) {
        self.phase = Phase::Standby;
        if self.policy.server {
            if let Some(expiry) = self.config.server_standby_expiry {
                self.set_timer(Timer::Standby, now + expiry);
            }
        }
    }

    /// Make this connection the side that dials. A connection we accepted dials the peer's msgr2
    /// address from its CLIENT_IDENT (Ceph's `_infer_target_addr`); false when there is none to dial
    /// (a pure client peer, which must come back to us).
    fn become_dialer(&mut self) -> bool {
        if self.role == Role::Client {
            return true;
        }
        let Some(target) = self
            .peer_addrs
            .msgr2()
            .filter(|a| a.sockaddr.is_some_and(|s| s.port() != 0))
            .cloned()
        else {
            return false;
        };
        self.role = Role::Client;
        self.target_addr = target;
        true
    }

    /// Leave standby because something needs sending (any policy but `server`).
    fn begin_reconnect(&mut self, now: Instant) {
        if self.policy.server || !self.become_dialer() {
            return;
        }
        if self.session.server_cookie != 0 {
            self.session.connect_seq = self.session.connect_seq.saturating_add(1);
        }
        self.phase = Phase::Connecting;
        self.set_timer(Timer::Reconnect, now);
    }

    fn reset_session_remote(&mut self) {
        let dropped = self.session.reset();
        self.stats.remote_resets += 1;
        self.events.push_back(Event::RemoteReset { dropped });
    }

    fn shut(&mut self, ev: Event) {
        #[cfg(feature = "interceptor")]
        self.intercept.deferred.clear();
        self.phase = Phase::Closed;
        self.transport = None;
        self.pending_request = None;
        self.timers = [None; TIMERS.len()];
        self.events.push_back(ev);
    }

    fn set_timer(&mut self, t: Timer, at: Instant) {
        self.timers[t as usize] = Some(at);
    }

    /// Arms the idle buffer release if it is not armed: once per quiet spell, not per input (it
    /// re-arms itself from the last input or output when it fires early).
    fn arm_buffer_release(&mut self, now: Instant) {
        if self.phase != Phase::Ready || self.timers[Timer::ReleaseBuffers as usize].is_some() {
            return;
        }
        if let Some(at) = self
            .config
            .idle_buffer_release
            .and_then(|after| now.checked_add(after))
        {
            self.set_timer(Timer::ReleaseBuffers, at);
        }
    }

    /// Gives what a quiet connection holds back to the allocator: the receive buffer when no frame is
    /// partly received, the encoder's scratch block when nothing is pending in it, the control-frame
    /// staging buffer, and the capacity of empty queues. Each comes back when next needed.
    fn release_idle_buffers(&mut self) {
        if let Some(t) = self.transport.as_mut() {
            // An empty receive buffer means the decoder waits at a frame boundary.
            if t.rx.is_empty() {
                t.rx = BytesMut::new();
            }
            t.encoder.release_scratch();
            // Only a staging area: what it held was framed (copied) already.
            t.ctrl = BytesMut::new();
            if t.tx.is_empty() {
                t.tx = Vec::new();
            }
        }
        if self.events.is_empty() {
            self.events = VecDeque::new();
        }
        self.session.release_idle_capacity();
        self.stats.buffer_releases += 1;
    }

    // ---- internals: output ----

    fn queue_control(&mut self, cf: &ControlFrame) -> Result<(), Error> {
        let t = self.transport.as_mut().ok_or(Error::Closed)?;
        let start = t.tx.len();
        t.encode_control(cf)?;
        self.stats.frames_out += 1;
        let max = self.config.max_transcript_len;
        if let Some((tx, _)) = t.transcript.as_mut() {
            for b in &t.tx[start..] {
                record_transcript(Some(&mut *tx), b, max)?;
            }
        }
        Ok(())
    }

    fn encode_outgoing(&mut self, now: Instant) {
        let Some(t) = self.transport.as_mut() else {
            return;
        };
        if self.session.keepalive_pending {
            self.session.keepalive_pending = false;
            let d = now.saturating_duration_since(self.epoch);
            let ts = UTime {
                sec: d.as_secs() as u32,
                nsec: d.subsec_nanos(),
            };
            if t.append_control(&ControlFrame::Keepalive2(Keepalive2 { timestamp: ts }))
                .is_err()
            {
                return;
            }
            self.stats.frames_out += 1;
        }
        let mut budget = self.config.transmit_budget;
        let mut carried_ack = false;
        while budget > 0 {
            let Some(mut m) = self.session.next_outgoing() else {
                break;
            };
            self.session.out_seq += 1;
            m.header.seq = self.session.out_seq;
            m.header.ack_seq = self.session.in_seq;
            if t.encoder
                .append_message(&m.header, [&m.front, &m.middle, &m.data], &mut t.tx)
                .is_err()
            {
                // Unencodable (a segment over 4 GiB): drop it rather than wedge the queue.
                self.session.out_seq -= 1;
                self.session.released.add(&m);
                continue;
            }
            budget = budget.saturating_sub(m.payload_len() + 64);
            carried_ack = true;
            self.stats.msgs_out += 1;
            self.stats.frames_out += 1;
            if self.policy.lossy {
                self.session.released.add(&m);
            } else {
                self.session.sent.push_back(m);
            }
        }
        if carried_ack {
            self.session.ack_left = 0;
        } else if self.session.ack_left > 0 {
            self.session.ack_left = 0;
            if t.append_control(&ControlFrame::Ack(Ack {
                seq: self.session.in_seq,
            }))
            .is_ok()
            {
                self.stats.frames_out += 1;
                self.stats.acks_out += 1;
            }
        }
    }
}

impl Connection {
    /// A fresh, non-zero session cookie. Cookies authenticate a reconnect, so they come from a
    /// cryptographic RNG unless the config asked for a seeded one (tests).
    pub(super) fn new_cookie(&mut self) -> u64 {
        match self.rng.as_mut() {
            Some(r) => r.random_range(1..=u64::MAX),
            None => rand::rng().random_range(1..=u64::MAX),
        }
    }
}

/// Append `bytes` to one direction of the pre-auth transcript, within `max` bytes.
fn record_transcript(to: Option<&mut Vec<u8>>, bytes: &[u8], max: usize) -> Result<(), Error> {
    let Some(to) = to else {
        return Ok(());
    };
    let len = to.len().saturating_add(bytes.len());
    if len > max {
        return Err(Error::limit(Limit::Transcript, len, max));
    }
    to.extend_from_slice(bytes);
    Ok(())
}

/// The largest sequence number (`global_seq`, `connect_seq`) we take from a peer: far beyond any real
/// count, and low enough that incrementing it can never overflow.
pub const MAX_PEER_SEQ: u64 = 1 << 62;

/// A peer-supplied sequence number, or a protocol error when it is absurd (see [`MAX_PEER_SEQ`]).
pub(super) fn checked_peer_seq(what: &'static str, v: u64) -> Result<u64, Error> {
    if v > MAX_PEER_SEQ {
        return Err(absurd_seq(what, v));
    }
    Ok(v)
}

fn absurd_seq(what: &'static str, v: u64) -> Error {
    Error::PeerMisbehaved(format!("{what} {v} is out of range (max {MAX_PEER_SEQ})"))
}

fn msgr2_feature_names(bits: u64) -> String {
    let mut names = Vec::new();
    if bits & msgr2_feature::REVISION_1 != 0 {
        names.push("REVISION_1");
    }
    if bits & msgr2_feature::COMPRESSION != 0 {
        names.push("COMPRESSION");
    }
    let rest = bits & !(msgr2_feature::REVISION_1 | msgr2_feature::COMPRESSION);
    if rest != 0 {
        names.push("unknown");
    }
    names.join("|")
}
