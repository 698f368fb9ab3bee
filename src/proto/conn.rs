//! The msgr2.1 connection state machine (Ceph's ProtocolV2), sans-IO.
//!
//! A [`Connection`] is one logical connection to one peer: a *session* (queues, seqs, cookies) that
//! outlives transports on a lossless policy, plus the state of the current transport (framing buffers,
//! handshake phase, transcript for AUTH_SIGNATURE).
//!
//! # Driving it
//! The owner (a worker of some network stack) calls, in any order:
//! - inputs: [`Connection::on_transport_connected`] when a transport is up, [`Connection::handle_input`]
//!   with the bytes read from it, [`Connection::on_transport_error`] when it failed,
//!   [`Connection::handle_timeout`] when [`Connection::poll_timeout`]'s deadline passed;
//! - commands: [`Connection::send`], [`Connection::send_keepalive`], [`Connection::close`], and on the
//!   server side [`Connection::resolve_session`] after an [`Event::SessionRequest`];
//! - outputs, after any input or command: [`Connection::poll_transmit`] (a gather list of bytes to write,
//!   in order), [`Connection::poll_event`] until `None`, [`Connection::poll_timeout`].
//!
//! Time is always an argument; nothing here reads a clock, touches a socket or spawns a thread.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::auth::cephx::{CephxClientSession, CephxError, CephxMonSession, ServiceVerdict};
use super::auth::{
    auth_method_name, auth_signature, con_mode_name, AuthNoneRequest, ClientAuth, ConModes,
    ServerAuth, CON_MODE_SECURE,
};
use super::banner::{msgr2_feature, Banner};
use super::error::Error;
use super::frame::secure::{session_ciphers, CONNECTION_SECRET_LEN};
use super::frame::{Frame, FrameDecoder, FrameEncoder, FrameError, Segment, Tag};
use super::frames::*;
use super::message::{Message, SEGMENT_ALIGNMENTS};
use super::session::{GlobalSeq, Session};
use super::types::{entity_type, AddrType, AddrVec, AuthEntityName, EntityAddr, EntityName, UTime};

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
    /// Nonce for a learned client address.
    pub nonce: u32,
    /// Our auth name (AUTH_REQUEST with method none; cephx takes it from its provider).
    pub auth_name: AuthEntityName,
    /// How we authenticate to servers: none, or cephx with a key.
    pub auth_client: ClientAuth,
    /// How we verify clients: none, cephx monitor role, or cephx service role.
    pub auth_server: ServerAuth,
    /// Connection modes (crc / secure) offered and allowed, per connection type.
    pub con_modes: ConModes,
    /// Ceph feature bits we support / require of the peer.
    pub features_supported: u64,
    pub features_required: u64,
    /// Largest frame accepted, checked before any allocation.
    pub max_frame_len: usize,
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
}

impl Config {
    pub fn new(entity_type: u8, auth_name: AuthEntityName) -> Self {
        Config {
            entity_type,
            gid: 0,
            my_addrs: AddrVec::default(),
            nonce: 0,
            auth_name,
            auth_client: ClientAuth::None,
            auth_server: ServerAuth::None,
            con_modes: ConModes::default(),
            features_supported: CEPH_FEATURES_ALL,
            features_required: CEPH_FEATURE_MSG_ADDR2,
            max_frame_len: 64 << 20,
            accept_policies: Vec::new(),
            default_policy: Policy::stateful_server(),
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(15),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: None,
            keepalive_interval: None,
            transmit_budget: 4 << 20,
            global_seq: GlobalSeq::new(),
            global_id_alloc: Arc::new(AtomicU64::new(4096)),
            rng_seed: None,
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

#[derive(Debug, Clone, PartialEq, Eq)]
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    Reconnect,
    Handshake,
    Idle,
    Keepalive,
}
const TIMERS: [Timer; 4] = [
    Timer::Reconnect,
    Timer::Handshake,
    Timer::Idle,
    Timer::Keepalive,
];

/// State scoped to one transport: dropped on every fault.
struct Transport {
    rx: BytesMut,
    decoder: FrameDecoder,
    encoder: FrameEncoder,
    tx: Vec<Bytes>,
    /// Pre-auth transcript (banner through AUTH_DONE) for AUTH_SIGNATURE; None once auth is done.
    transcript: Option<(Vec<u8>, Vec<u8>)>,
    /// What we sent before AUTH_SIGNATURE, to check the peer's signature against.
    sent_transcript: Option<Vec<u8>>,
    session_key: Vec<u8>,
    /// Where the auth exchange on this transport stands.
    auth: AuthState,
}

/// Per-transport auth progress (the sans-IO side of Ceph's AuthClient / AuthServer calls).
#[derive(Debug, Default)]
enum AuthState {
    #[default]
    Idle,
    /// Client: AUTH_REQUEST sent with these modes.
    Client {
        cephx: Option<CephxClientSession>,
        offered: Vec<u32>,
    },
    /// Server, monitor role: challenge sent.
    Monitor { session: CephxMonSession, mode: u32 },
    /// Server, service role: challenge sent.
    Service { challenge: u64, mode: u32 },
}

impl Transport {
    fn new(max_frame_len: usize) -> Self {
        Transport {
            rx: BytesMut::with_capacity(16 * 1024),
            decoder: FrameDecoder::new(max_frame_len),
            encoder: FrameEncoder::new(),
            tx: Vec::new(),
            transcript: Some((Vec::new(), Vec::new())),
            sent_transcript: None,
            session_key: Vec::new(),
            auth: AuthState::Idle,
        }
    }
}

/// One msgr2.1 connection. See the module docs for the call order.
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
    timers: [Option<Instant>; 4],
    backoff: Duration,
    /// Set when the current transport saw its peer banner (used to pick reconnect vs. standby).
    last_input: Option<Instant>,
    epoch: Instant,
    rng: SmallRng,
    stats: ConnStats,
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
        let rng = match config.rng_seed {
            Some(s) => SmallRng::seed_from_u64(s),
            None => SmallRng::from_os_rng(),
        };
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
            timers: [None; 4],
            backoff: Duration::ZERO,
            last_input: None,
            epoch: now,
            rng,
            stats: ConnStats::default(),
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

    /// The earliest deadline at which [`Connection::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.iter().flatten().min().copied()
    }

    /// Append the bytes to write, in order, to `out`; returns how many bytes were appended.
    /// Messages are encoded here (not in `send`), so priorities apply to everything not yet handed out.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<Bytes>) -> usize {
        if self.phase == Phase::Ready {
            self.encode_outgoing(now);
        }
        let Some(t) = self.transport.as_mut() else {
            return 0;
        };
        let n: usize = t.tx.iter().map(|b| b.len()).sum();
        out.append(&mut t.tx);
        self.stats.bytes_out += n as u64;
        n
    }

    /// Whether `poll_transmit` would produce anything now.
    pub fn wants_transmit(&self) -> bool {
        let Some(t) = self.transport.as_ref() else {
            return false;
        };
        !t.tx.is_empty()
            || (self.phase == Phase::Ready
                && (self.session.has_outgoing()
                    || self.session.ack_left > 0
                    || self.session.keepalive_pending))
    }

    // ---- commands ----

    /// Queue a message. On a closed connection the message is dropped and `Err(Closed)` returned.
    pub fn send(&mut self, now: Instant, msg: Message) -> Result<(), Error> {
        match self.phase {
            Phase::Closed => return Err(Error::Closed),
            Phase::Standby if self.role == Role::Client && !self.policy.server => {
                self.begin_reconnect(now);
            }
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
        if self.phase == Phase::Standby && self.role == Role::Client {
            self.begin_reconnect(now);
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
        let mut t = Transport::new(self.config.max_frame_len);
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
        self.timers = [None; 4];
        self.set_timer(Timer::Handshake, now + self.config.handshake_timeout);
        if self.role == Role::Client {
            self.session.global_seq = self.config.global_seq.next();
        }
    }

    /// The transport failed (I/O error, EOF, connect refused). Applies the policy: reconnect with
    /// back-off, standby, or reset.
    pub fn on_transport_error(&mut self, now: Instant, reason: impl Into<String>) {
        if self.transport.is_none() && self.phase != Phase::Connecting {
            return;
        }
        self.fault(now, Error::Transport(reason.into()));
    }

    /// Bytes read from the transport.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        if self.transport.is_none() {
            return;
        }
        self.stats.bytes_in += data.len() as u64;
        self.last_input = Some(now);
        if self.phase == Phase::Ready {
            if let Some(idle) = self.config.idle_timeout {
                self.set_timer(Timer::Idle, now + idle);
            }
        }
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
                        self.fault(now, Error::TimedOut("idle connection"));
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
        loop {
            if self.phase == Phase::Closed || self.phase == Phase::AwaitingDecision {
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
                if let Some((_, rx)) = t.transcript.as_mut() {
                    rx.extend_from_slice(&raw);
                }
                self.handle_banner(banner)?;
                continue;
            }
            let frame = match t.decoder.decode(&mut t.rx) {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                // The sender gave up on that frame after starting it: skip it.
                Err(FrameError::Aborted) => continue,
                Err(e) => return Err(e.into()),
            };
            if let Some((_, rx)) = t.transcript.as_mut() {
                rx.extend_from_slice(&frame.raw);
            }
            self.handle_frame(now, frame)?;
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
        self.phase = Phase::Hello;
        let hello = ControlFrame::Hello(Hello {
            entity_type: self.config.entity_type,
            peer_addr: self.target_addr.clone(),
        });
        self.queue_control(&hello)?;
        Ok(())
    }

    fn handle_frame(&mut self, now: Instant, frame: Frame) -> Result<(), Error> {
        if frame.tag == Tag::Message {
            return self.handle_message(now, &frame);
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
                Err(Error::Transport(
                    "peer asked us to WAIT (connection race)".into(),
                ))
            }
            (Role::Client, Phase::Reconnecting, ControlFrame::SessionReconnectOk(ok)) => {
                self.client_reconnect_ok(now, ok)
            }
            (Role::Client, Phase::Reconnecting, ControlFrame::SessionRetry(r)) => {
                self.session.connect_seq = r.connect_seq + 1;
                self.send_reconnect()
            }
            (Role::Client, Phase::Reconnecting, ControlFrame::SessionRetryGlobal(r)) => {
                self.session.global_seq = self.config.global_seq.next_after(r.global_seq);
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

    /// Client: the server refused our auth method or proof; keep what it allows for the owner to report.
    fn auth_bad_method(&mut self, b: AuthBadMethod) -> Error {
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

    fn auth_identity(&self) -> String {
        match &self.config.auth_client {
            ClientAuth::None => self.config.auth_name.to_string(),
            ClientAuth::Cephx(c) => c.name().to_string(),
        }
    }

    fn handle_hello(&mut self, h: Hello) -> Result<(), Error> {
        self.addr_seen_by_peer = Some(h.peer_addr.clone());
        match self.role {
            Role::Client => {
                if self.peer_type != entity_type::ANY && h.entity_type != self.peer_type {
                    return Err(Error::PeerIncompatible(format!(
                        "peer is a {} (type {}), expected a {}",
                        super::types::entity_type_name(h.entity_type),
                        h.entity_type,
                        super::types::entity_type_name(self.peer_type)
                    )));
                }
                self.peer_type = h.entity_type;
                self.learn_my_addr(&h.peer_addr);
                self.phase = Phase::Auth;
                self.send_auth_request()
            }
            Role::Server => {
                self.peer_type = h.entity_type;
                self.policy = self.config.accept_policy(h.entity_type);
                self.phase = Phase::Auth;
                Ok(())
            }
        }
    }

    /// A client with no configured address learns its IP from the server's HELLO, as Ceph does.
    fn learn_my_addr(&mut self, seen: &EntityAddr) {
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
    fn send_auth_request(&mut self) -> Result<(), Error> {
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

    fn client_auth_reply_more(&mut self, m: AuthReplyMore) -> Result<(), Error> {
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

    fn client_auth_done(&mut self, d: AuthDone) -> Result<(), Error> {
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
    fn finish_auth(
        &mut self,
        mode: u32,
        session_key: Vec<u8>,
        connection_secret: &[u8],
        crossed: bool,
    ) -> Result<(), Error> {
        let t = self.transport.as_mut().ok_or(Error::Closed)?;
        t.session_key = session_key;
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

    /// Server: refuse the request with AUTH_BAD_METHOD (what we allow); the client may try again.
    fn refuse_auth(&mut self, method: u32, result: i32) -> Result<(), Error> {
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

    fn server_auth_request(&mut self, now: Instant, r: AuthRequest) -> Result<(), Error> {
        let ours = self.config.auth_server.method();
        let mode = ConModes::pick(&r.preferred_modes, &self.config.con_modes.allowed(ours));
        let (true, Some(mode)) = (r.method == ours, mode) else {
            return self.refuse_auth(r.method, EOPNOTSUPP);
        };
        match self.config.auth_server.clone() {
            ServerAuth::None => {
                let req = AuthNoneRequest::decode(&r.auth_payload)?;
                self.peer_auth_name = Some(req.name().clone());
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
                        tracing::info!(peer = %self.target_addr, "cephx: refused: {e}");
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
                        tracing::info!(peer = %self.target_addr, "cephx: refused authorizer: {e}");
                        self.refuse_auth(r.method, e.errno())
                    }
                }
            }
        }
    }

    fn server_auth_request_more(&mut self, now: Instant, r: AuthRequestMore) -> Result<(), Error> {
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
                self.peer_auth_name = Some(name);
                self.send_auth_done(gid, mode, payload)?;
                self.finish_auth(
                    mode,
                    secrets.session_key.clone(),
                    &secrets.connection_secret,
                    true,
                )
            }
            Err(e) => {
                tracing::info!(peer = %self.target_addr, "cephx: refused: {e}");
                self.refuse_auth(method, e.errno())
            }
        }
    }

    fn send_auth_done(&mut self, global_id: u64, mode: u32, payload: Bytes) -> Result<(), Error> {
        self.peer_global_id = global_id;
        self.queue_control(&ControlFrame::AuthDone(AuthDone {
            global_id,
            con_mode: mode,
            auth_payload: payload,
        }))
    }

    /// Both sides: stop recording the transcript and sign what we received.
    fn send_auth_signature(&mut self) -> Result<(), Error> {
        let t = self.transport.as_mut().ok_or(Error::Closed)?;
        let (tx, rx) = t.transcript.take().unwrap_or_default();
        let sig = auth_signature(&t.session_key, &rx);
        t.sent_transcript = Some(tx);
        self.phase = Phase::AuthSignature;
        self.queue_control(&ControlFrame::AuthSignature(AuthSignature {
            signature: sig,
        }))
    }

    fn handle_auth_signature(&mut self, s: AuthSignature) -> Result<(), Error> {
        let t = self.transport.as_mut().ok_or(Error::Closed)?;
        let tx = t.sent_transcript.take().unwrap_or_default();
        let expected = auth_signature(&t.session_key, &tx);
        if s.signature != expected {
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

    fn send_client_ident(&mut self) -> Result<(), Error> {
        if !self.policy.lossy && self.session.client_cookie == 0 {
            self.session.client_cookie = self.rng.random_range(1..=u64::MAX);
        }
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

    fn send_reconnect(&mut self) -> Result<(), Error> {
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

    fn client_server_ident(&mut self, now: Instant, s: ServerIdent) -> Result<(), Error> {
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

    fn client_reconnect_ok(&mut self, now: Instant, ok: SessionReconnectOk) -> Result<(), Error> {
        self.session.discard_requeued_up_to(ok.msg_seq);
        self.stats.replayed += self.session.requeued.len() as u64;
        self.become_ready(now, true);
        Ok(())
    }

    fn server_client_ident(&mut self, ci: ClientIdent) -> Result<(), Error> {
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

    fn server_reconnect(&mut self, r: SessionReconnect) -> Result<(), Error> {
        if r.addrs.front().is_none_or(|a| *a == EntityAddr::none()) {
            return Err(Error::PeerMisbehaved(
                "SESSION_RECONNECT without addresses".into(),
            ));
        }
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

    fn request_decision(&mut self, req: SessionRequest) {
        self.phase = Phase::AwaitingDecision;
        self.pending_request = Some(req.clone());
        self.events.push_back(Event::SessionRequest(req));
    }

    fn handle_message(&mut self, now: Instant, frame: &Frame) -> Result<(), Error> {
        if self.phase != Phase::Ready {
            return Err(Error::PeerMisbehaved(format!(
                "MESSAGE frame in phase {:?}",
                self.phase
            )));
        }
        let segs = &frame.segments[..frame.num_segments.min(frame.segments.len())];
        let msg = Message::from_segments(segs)?;
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
        let res = match req.kind {
            SessionRequestKind::New {
                client_cookie,
                global_seq,
            } => self.resolve_new(now, existing, client_cookie, global_seq),
            SessionRequestKind::Reconnect {
                client_cookie,
                global_seq,
                connect_seq,
                msg_seq,
                ..
            } => self.resolve_reconnect(
                now,
                existing,
                client_cookie,
                global_seq,
                connect_seq,
                msg_seq,
            ),
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
        if self.phase != Phase::AwaitingDecision || self.pending_request.take().is_none() {
            return Resolution::Dropped;
        }
        self.phase = Phase::Session;
        if let Err(e) = self.queue_control(&ControlFrame::Wait) {
            self.fault(now, e);
            return Resolution::Dropped;
        }
        Resolution::Answered(Tag::Wait)
    }

    fn resolve_new(
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
        if ex.session.peer_global_seq > peer_global_seq {
            // A stale attempt from before the existing connection: drop it.
            self.shut(Event::Closed);
            return Ok(Resolution::Dropped);
        }
        if ex.policy.lossy {
            ex.shut(Event::Reset(Error::Transport(
                "replaced by a new connection from the peer".into(),
            )));
            self.session.client_cookie = client_cookie;
            self.session.peer_global_seq = peer_global_seq;
            self.send_server_ident(now)?;
            return Ok(Resolution::NewSession);
        }
        if ex.session.server_cookie != 0
            && ex.session.client_cookie != 0
            && ex.session.client_cookie != client_cookie
        {
            // The peer restarted: its old session is gone.
            if self.policy.resetcheck {
                ex.reset_session_remote();
            }
        } else if ex.session.client_cookie == client_cookie {
            // Establishment was interrupted between CLIENT_IDENT and SERVER_IDENT: carry on.
        } else if matches!(ex.phase, Phase::Ready | Phase::Standby) {
            // An established session the peer dialled again: this transport replaces its old one.
        } else {
            // Connection race: both sides dialled. The lower address's connection wins, unless the
            // existing one is a server's.
            let peer = req_msgr2(&self.peer_addrs);
            let me = req_msgr2(&self.config.my_addrs);
            if !(ceph_addr_less(peer, me) || ex.policy.server) {
                // Make sure our own attempt goes through: the peer has something to say.
                ex.session.keepalive_pending = true;
                self.queue_control(&ControlFrame::Wait)?;
                return Ok(Resolution::Answered(Tag::Wait));
            }
        }
        self.take_session_from(ex);
        self.session.client_cookie = client_cookie;
        self.session.peer_global_seq = peer_global_seq;
        self.send_server_ident(now)?;
        Ok(Resolution::TookOver)
    }

    fn resolve_reconnect(
        &mut self,
        now: Instant,
        existing: Option<&mut Connection>,
        client_cookie: u64,
        global_seq: u64,
        connect_seq: u64,
        msg_seq: u64,
    ) -> Result<Resolution, Error> {
        let Some(ex) = existing else {
            self.queue_control(&ControlFrame::SessionReset(SessionReset { full: true }))?;
            return Ok(Resolution::Answered(Tag::SessionReset));
        };
        if ex.session.client_cookie != client_cookie {
            self.queue_control(&ControlFrame::SessionReset(SessionReset {
                full: self.policy.resetcheck,
            }))?;
            return Ok(Resolution::Answered(Tag::SessionReset));
        }
        if ex.session.server_cookie == 0 {
            self.queue_control(&ControlFrame::SessionReset(SessionReset { full: false }))?;
            return Ok(Resolution::Answered(Tag::SessionReset));
        }
        if ex.session.peer_global_seq > global_seq {
            let g = ex.session.peer_global_seq;
            self.queue_control(&ControlFrame::SessionRetryGlobal(SessionRetryGlobal {
                global_seq: g,
            }))?;
            return Ok(Resolution::Answered(Tag::SessionRetryGlobal));
        }
        if ex.session.connect_seq > connect_seq {
            let cs = ex.session.connect_seq;
            self.queue_control(&ControlFrame::SessionRetry(SessionRetry {
                connect_seq: cs,
            }))?;
            return Ok(Resolution::Answered(Tag::SessionRetry));
        }
        if ex.session.connect_seq == connect_seq {
            // Both sides are reconnecting: the existing one wins if the peer's address is higher.
            let peer = req_msgr2(&ex.peer_addrs);
            let me = req_msgr2(&self.config.my_addrs);
            if ceph_addr_less(me, peer) && !ex.policy.server {
                self.queue_control(&ControlFrame::Wait)?;
                return Ok(Resolution::Answered(Tag::Wait));
            }
        }
        self.take_session_from(ex);
        self.session.connect_seq = connect_seq;
        self.session.peer_global_seq = global_seq;
        // Everything up to msg_seq arrived; re-send the rest.
        self.session.discard_requeued_up_to(msg_seq);
        self.stats.replayed += self.session.requeued.len() as u64;
        let ms = self.session.in_seq;
        self.queue_control(&ControlFrame::SessionReconnectOk(SessionReconnectOk {
            msg_seq: ms,
        }))?;
        self.stats.reconnects += 1;
        self.become_ready(now, true);
        Ok(Resolution::TookOver)
    }

    /// Move `ex`'s session (queues, seqs, cookies, peer identity) into `self`; `ex` closes quietly.
    fn take_session_from(&mut self, ex: &mut Connection) {
        ex.session.requeue_sent();
        self.session = std::mem::take(&mut ex.session);
        if self.peer_name.is_none() {
            self.peer_name = ex.peer_name.clone();
            self.features = ex.features;
        }
        if ex.role == Role::Client {
            // Our own outgoing attempt lost the race; keep its policy for the session.
            self.policy.lossy = ex.policy.lossy;
        }
        ex.shut(Event::Closed);
    }

    fn send_server_ident(&mut self, now: Instant) -> Result<(), Error> {
        // A new session: whatever was queued keeps its order but is numbered afresh.
        self.session.requeue_sent();
        self.session.discard_requeued_up_to(0);
        self.session.in_seq = 0;
        if !self.policy.lossy {
            self.session.server_cookie = self.rng.random_range(1..=u64::MAX);
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
        self.queue_control(&ControlFrame::ServerIdent(si))?;
        self.become_ready(now, false);
        Ok(())
    }

    // ---- internals: state changes ----

    fn become_ready(&mut self, now: Instant, reconnect: bool) {
        self.phase = Phase::Ready;
        self.backoff = Duration::ZERO;
        self.stats.handshakes += 1;
        self.timers[Timer::Handshake as usize] = None;
        if let Some(idle) = self.config.idle_timeout {
            self.set_timer(Timer::Idle, now + idle);
        }
        if let Some(k) = self.config.keepalive_interval {
            self.set_timer(Timer::Keepalive, now + k);
        }
        self.events.push_back(Event::Connected { reconnect });
    }

    /// Ceph's `_fault`: the transport is gone; keep, park or end the session by policy.
    fn fault(&mut self, now: Instant, err: Error) {
        if self.phase == Phase::Closed {
            return;
        }
        self.stats.faults += 1;
        let had_transport = self.transport.take().is_some();
        self.pending_request = None;
        self.timers = [None; 4];
        if had_transport {
            self.events.push_back(Event::TransportDown(err.clone()));
        }
        let connecting = matches!(
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
        if self.policy.lossy && !connecting {
            self.session.reset();
            self.shut(Event::Reset(err));
            return;
        }
        self.session.requeue_sent();
        if self.role == Role::Server {
            if self.session.server_cookie == 0 {
                // Half-accepted, no session yet: nothing to keep.
                self.shut(Event::Closed);
            } else {
                self.phase = Phase::Standby;
            }
            return;
        }
        if self.policy.standby
            && !self.session.has_outgoing()
            && !self.session.keepalive_pending
            && self.phase != Phase::Wait
        {
            self.phase = Phase::Standby;
            return;
        }
        if self.policy.server {
            self.phase = Phase::Standby;
            return;
        }
        self.backoff = if self.phase == Phase::Wait {
            self.config.max_backoff
        } else if self.backoff.is_zero() {
            self.config.initial_backoff
        } else {
            (self.backoff * 2).min(self.config.max_backoff)
        };
        if self.session.server_cookie != 0 {
            self.session.connect_seq += 1;
        }
        if self.phase != Phase::Wait {
            self.phase = Phase::Connecting;
        }
        self.stats.reconnects += 1;
        self.set_timer(Timer::Reconnect, now + self.backoff);
    }

    /// Client: leave standby because something needs sending.
    fn begin_reconnect(&mut self, now: Instant) {
        if self.session.server_cookie != 0 {
            self.session.connect_seq += 1;
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
        self.phase = Phase::Closed;
        self.transport = None;
        self.pending_request = None;
        self.timers = [None; 4];
        self.events.push_back(ev);
    }

    fn set_timer(&mut self, t: Timer, at: Instant) {
        self.timers[t as usize] = Some(at);
    }

    // ---- internals: output ----

    fn queue_control(&mut self, cf: &ControlFrame) -> Result<(), Error> {
        let t = self.transport.as_mut().ok_or(Error::Closed)?;
        let mut payload = BytesMut::new();
        cf.encode_payload(&mut payload);
        let start = t.tx.len();
        t.encoder.encode_control(cf.tag(), &payload, &mut t.tx)?;
        if let Some((tx, _)) = t.transcript.as_mut() {
            for b in &t.tx[start..] {
                tx.extend_from_slice(b);
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
            let mut p = BytesMut::new();
            ControlFrame::Keepalive2(Keepalive2 { timestamp: ts }).encode_payload(&mut p);
            if t.encoder
                .encode_control(Tag::Keepalive2, &p, &mut t.tx)
                .is_err()
            {
                return;
            }
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
            let segs = [
                Segment {
                    data: m.header_segment(),
                    align: SEGMENT_ALIGNMENTS[0],
                },
                Segment {
                    data: m.front.clone(),
                    align: SEGMENT_ALIGNMENTS[1],
                },
                Segment {
                    data: m.middle.clone(),
                    align: SEGMENT_ALIGNMENTS[2],
                },
                Segment {
                    data: m.data.clone(),
                    align: SEGMENT_ALIGNMENTS[3],
                },
            ];
            if t.encoder.encode(Tag::Message, &segs, &mut t.tx).is_err() {
                // Unencodable (a segment over 4 GiB): drop it rather than wedge the queue.
                self.session.out_seq -= 1;
                self.session.released.add(&m);
                continue;
            }
            budget = budget.saturating_sub(m.payload_len() + 64);
            carried_ack = true;
            self.stats.msgs_out += 1;
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
            let mut p = BytesMut::new();
            ControlFrame::Ack(Ack {
                seq: self.session.in_seq,
            })
            .encode_payload(&mut p);
            let _ = t.encoder.encode_control(Tag::Ack, &p, &mut t.tx);
        }
    }
}

/// Ceph's `-EACCES`.
const EACCES: i32 = -13;

/// Connection-secret bytes the server generates for `mode` (`get_connection_secret_length`).
fn secret_len(mode: u32) -> usize {
    if mode == CON_MODE_SECURE {
        CONNECTION_SECRET_LEN
    } else {
        0
    }
}

/// A client-side cephx failure as the connection reports it.
fn cephx_failed(client: &super::auth::CephxClient, e: CephxError) -> Error {
    Error::AuthFailed(format!("cephx as {}: {e}", client.name()))
}

/// The errno names AUTH_BAD_METHOD results carry.
fn errno_name(result: i32) -> &'static str {
    match result {
        -1 => "EPERM",
        -2 => "ENOENT",
        -13 => "EACCES",
        -22 => "EINVAL",
        -95 => "EOPNOTSUPP",
        _ => "",
    }
}

/// The msgr2 address Ceph compares in connection races (`msgr2_addr()`), or a blank one.
fn req_msgr2(v: &AddrVec) -> EntityAddr {
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

fn addr_image(a: &EntityAddr) -> Vec<u8> {
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
fn addr_matches(target: &EntityAddr, candidate: &EntityAddr) -> bool {
    target.sockaddr == candidate.sockaddr
        && (target.nonce == 0 || target.nonce == candidate.nonce)
        && (target.addr_type == candidate.addr_type
            || matches!(target.addr_type, AddrType::Any | AddrType::Msgr2)
                && matches!(candidate.addr_type, AddrType::Any | AddrType::Msgr2))
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
