//! The public messenger API: [`Messenger`], [`ConnectionRef`], [`Dispatcher`].
//!
//! Owns: the workers (one event loop per thread, each owning its sockets and the `proto::Connection`s on
//! them), the Processor role (listen, accept, hand each accepted socket to the least-loaded worker), the
//! registry of sessions by peer address (consulted only during handshakes), the throttles and the perf
//! counters.
//!
//! Invariants:
//! - a connection lives on one worker at a time (a session moves only to meet a reconnect that landed
//!   on another worker); other threads reach it only through its command queue plus one
//!   external event per batch (`ConnectionRef::send` never touches a socket or a lock shared with the
//!   data path of another worker);
//! - dispatcher callbacks run on the connection's worker thread, in order;
//! - back-pressure is per peer, as in Ceph: a received message holds budget on its peer type's receive
//!   throttle and on the dispatch throttle until the application drops it; a connection whose budget is
//!   used up stops being read (only that one) until budget returns, so a slow consumer pushes back on
//!   its peers through TCP and on nobody else. Sending, each connection has its own budget of queued and
//!   unacknowledged messages, so a dead peer blocks only the senders to it;
//! - a message handed to `send` on a lossless connection is delivered exactly once, in order, until the
//!   peer resets the session (the protocol core guarantees it; the messenger never drops a queued message
//!   except on reset or `mark_down`).

mod counters;
mod dispatch;
mod handler;
pub(crate) mod loglimit;
mod registry;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::event::{WorkerConfig, Workers};
use crate::proto::types::{AddrVec, EntityAddr, EntityType};
use crate::proto::{self, Message, Policy};
use crate::stack::{ConnectOptions, ListenOptions, NetworkStack};

pub use crate::throttle::{Permit, Throttle, ThrottleStats};
pub use counters::{CountersSnapshot, PeerThrottleStats, ThrottlesSnapshot, WorkerCounters};
use handler::{Command, Handler};

/// Messenger-unique connection id.
pub type ConnId = u64;

/// Callbacks from the messenger, run on the connection's worker thread (Ceph's Dispatcher).
///
/// A dispatcher must not block for long: the worker that calls it serves other connections too.
///
/// # Example
/// An echo server's dispatcher: every message goes back on the connection it came on.
/// ```
/// use std::sync::Arc;
/// use msgr::{ConnectionRef, Dispatcher, Message, Messenger, MessengerConfig, Policy, PosixStack};
/// use msgr::{entity_type, AuthEntityName};
/// use msgr::proto::Config;
///
/// struct Echo;
/// impl Dispatcher for Echo {
///     fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) {
///         let reply = Message::new(msg.header.msg_type, msg.front.clone()).with_tid(msg.header.tid);
///         let _ = conn.send(reply); // a worker thread never waits for send budget
///     }
/// }
///
/// let mut cfg = MessengerConfig::new(Config::new(
///     entity_type::OSD,
///     AuthEntityName::parse("osd.0").unwrap(),
/// ));
/// cfg.workers.threads = 1;
/// let mut server = Messenger::new(PosixStack::new(), cfg, Arc::new(Echo));
/// server.bind(&["127.0.0.1:0".parse().unwrap()]).unwrap();
/// server.start().unwrap();
/// # // A client that hears the echo.
/// # struct Heard(std::sync::Mutex<std::sync::mpsc::Sender<Message>>);
/// # impl Dispatcher for Heard {
/// #     fn ms_dispatch(&self, _c: &ConnectionRef, m: Message) { let _ = self.0.lock().unwrap().send(m); }
/// # }
/// # let (tx, rx) = std::sync::mpsc::channel();
/// # let mut ccfg = MessengerConfig::new(Config::new(entity_type::CLIENT, AuthEntityName::parse("client.a").unwrap()));
/// # ccfg.workers.threads = 1;
/// # let mut client = Messenger::new(PosixStack::new(), ccfg, Arc::new(Heard(std::sync::Mutex::new(tx))));
/// # client.start().unwrap();
/// # let conn = client.connect_to(entity_type::OSD, server.my_addrs(), Policy::lossy_client()).unwrap();
/// # conn.send(Message::new(0x4000, bytes::Bytes::from_static(b"hi")).with_tid(7)).unwrap();
/// # let echo = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
/// # assert_eq!((&echo.front[..], echo.header.tid), (&b"hi"[..], 7));
/// ```
pub trait Dispatcher: Send + Sync + 'static {
    /// A message arrived.
    fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message);
    /// Whether this dispatcher takes `msg`: in a chain of several, a message goes to the first that
    /// does (Ceph's `ms_dispatch` returning true). Connection events go to every dispatcher.
    fn ms_handles(&self, _msg: &Message) -> bool {
        true
    }
    /// An outgoing connection completed its handshake (also after a reconnect).
    fn ms_handle_connect(&self, _conn: &ConnectionRef) {}
    /// An incoming connection completed its handshake.
    fn ms_handle_accept(&self, _conn: &ConnectionRef) {}
    /// The session ended (lossy fault, fatal error, idle close); undelivered messages are gone.
    fn ms_handle_reset(&self, _conn: &ConnectionRef, _why: &proto::Error) {}
    /// The peer reset the session (it restarted): queued messages to it were discarded.
    fn ms_handle_remote_reset(&self, _conn: &ConnectionRef) {}
    /// An attempt to open a transport to the peer failed (refused, unreachable, timed out). The
    /// connection keeps retrying with back-off (lossless) until `mark_down`; `reason` says why
    /// ([`proto::TransportError::kind`]: refused, unreachable, timed out, …).
    fn ms_handle_connect_failed(&self, _conn: &ConnectionRef, _reason: &proto::TransportError) {}
    /// A KEEPALIVE2 we sent came back.
    fn ms_handle_keepalive_ack(&self, _conn: &ConnectionRef, _rtt: Duration) {}
}

/// Messenger configuration: the protocol knobs live in `proto` (Ceph's ms_* options map onto them).
#[derive(Debug, Clone)]
pub struct MessengerConfig {
    /// Protocol configuration template; `my_addrs` is filled in from the bound addresses at `start`.
    pub proto: proto::Config,
    /// Worker threads (ms_async_op_threads), pinning.
    pub workers: WorkerConfig,
    pub listen: ListenOptions,
    pub connect: ConnectOptions,
    /// Send budget of each connection: payload bytes of messages queued or unacknowledged on it.
    /// `send` waits and `try_send` fails while it is used up. 0 = unlimited.
    pub send_budget_bytes: u64,
    /// Send budget of each connection in messages. 0 = unlimited.
    pub send_budget_msgs: u64,
    /// Receive throttles by peer entity type (Ceph's `Policy::throttler_bytes` / `throttler_messages`),
    /// each shared by all peers of that type. Peer types not listed have none. Empty by default.
    pub recv_throttles: Vec<RecvThrottle>,
    /// Messenger-wide budget of payload bytes of received messages the application has not dropped yet
    /// (Ceph's `ms_dispatch_throttle_bytes`, 100 MiB by default). 0 = unlimited.
    pub dispatch_throttle_bytes: u64,
    /// Bytes asked for per read call on a socket (each worker keeps one such buffer).
    pub read_buffer: usize,
    /// Bytes a worker reads from one connection per turn of its event loop. A connection that used its
    /// budget goes on the worker's run list and is read again after the others had their turn, so one
    /// peer sending flat out cannot starve the other connections and timers of its worker. At least
    /// one read is made per turn.
    pub read_budget: usize,
    /// Connections (accepted and dialled) the messenger holds at once; an accept beyond it is closed
    /// at once and counted (`limits_tripped.max_connections`).
    pub max_connections: usize,
    /// Accepted connections from one source IP that have not authenticated yet; beyond it new ones
    /// from that IP are closed at once (a slow handshake flood from one host cannot crowd out others).
    pub max_half_open_per_source: usize,
    /// Sessions in the registry. A new session beyond it evicts the oldest server-policy session
    /// parked in Standby, or is refused when there is none (`limits_tripped.max_sessions`).
    pub max_sessions: usize,
}

impl MessengerConfig {
    pub fn new(proto: proto::Config) -> Self {
        MessengerConfig {
            proto,
            // Like Ceph's workers: one pinned thread per core while there are cores to go round.
            workers: WorkerConfig {
                pin_cores: true,
                ..WorkerConfig::default()
            },
            listen: ListenOptions::default(),
            connect: ConnectOptions::default(),
            send_budget_bytes: 64 << 20,
            send_budget_msgs: 0,
            recv_throttles: Vec::new(),
            dispatch_throttle_bytes: 100 << 20,
            read_buffer: 256 * 1024,
            // Two full reads: about 0.1 ms of copying and checksumming, so a worker revisits every
            // busy connection many times per millisecond while a large read stays one syscall.
            read_budget: 512 * 1024,
            // Room for the 10,000-session fan-in bench and for a loopback cluster; at ~15 KiB per
            // idle session these bound a messenger near 1 GiB.
            max_connections: 65_536,
            max_half_open_per_source: 256,
            max_sessions: 65_536,
        }
    }
}

/// A receive throttle for the peers of one entity type (a Ceph policy's throttlers): payload bytes and
/// messages received from them and not yet dropped by the application. When it is used up, msgr stops
/// reading from those peers until budget returns. A message larger than the whole budget still passes
/// when the throttle is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvThrottle {
    /// Peer entity type (`proto::types::entity_type`).
    pub entity_type: u8,
    /// Byte budget; 0 = unlimited.
    pub bytes: u64,
    /// Message budget; 0 = unlimited.
    pub msgs: u64,
}

/// Why [`ConnectionRef::try_send`] or [`ConnectionRef::send_timeout`] did not queue a message; each
/// variant gives the message back (without any permit).
#[derive(Debug, thiserror::Error)]
pub enum TrySendError {
    /// The connection's send budget is used up (`try_send`; `send_timeout` on a worker thread).
    #[error("the connection's send budget is used up")]
    WouldBlock(Message),
    /// The send budget stayed used up for the whole timeout.
    #[error("the connection's send budget stayed used up for the whole timeout")]
    Timeout(Message),
    /// The connection is closed.
    #[error("connection is closed")]
    Closed(Message),
}

impl TrySendError {
    /// The message that was not queued.
    pub fn into_message(self) -> Message {
        match self {
            TrySendError::WouldBlock(m) | TrySendError::Timeout(m) | TrySendError::Closed(m) => m,
        }
    }

    /// Out of budget (would block, or timed out), as opposed to closed.
    pub fn is_full(&self) -> bool {
        !matches!(self, TrySendError::Closed(_))
    }
}

/// Errors from messenger operations (not from the wire: those reach the [`Dispatcher`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MsgrError {
    #[error("connection is closed")]
    Closed,
    #[error("messenger is not started")]
    NotStarted,
    #[error("messenger is already started")]
    AlreadyStarted,
    #[error("no usable address in {0} (need a v2 or any-type address with an IP)")]
    NoAddress(String),
    #[error("bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("worker: {0}")]
    Worker(#[from] io::Error),
    #[error("no dispatcher: add one before start")]
    NoDispatcher,
}

/// State shared by the messenger's threads (on the per-message path: only the throttles).
pub(crate) struct Shared {
    pub config: MessengerConfig,
    pub dispatcher: Arc<dispatch::DispatchChain>,
    pub proto_config: OnceLock<Arc<proto::Config>>,
    /// Sessions by peer address. `connect_to` checks and inserts under one lock, and a worker resolving an
    /// incoming session does its lookup, decision and insertion under it too, so one peer never ends up
    /// with two sessions because both sides dialled at once.
    pub registry: Mutex<registry::SessionRegistry>,
    /// Accepted, not yet authenticated connections by source IP (`max_half_open_per_source`).
    pub half_open: Mutex<HashMap<std::net::IpAddr, usize>>,
    pub next_id: AtomicU64,
    pub load: Vec<AtomicUsize>,
    pub counters: Vec<Arc<WorkerCounters>>,
    /// Parent of every connection's send budget: holds their sum (its limits are the per-connection ones).
    pub send_total: Arc<Throttle>,
    /// Receive throttles by peer entity type.
    pub recv_throttles: Vec<(u8, Arc<Throttle>)>,
    /// Messenger-wide dispatch throttle.
    pub dispatch_throttle: Arc<Throttle>,
    pub stopping: AtomicBool,
    /// Set by [`StopHandle::stop`]; [`Messenger::wait`] sleeps on it.
    pub stop_requested: (Mutex<bool>, std::sync::Condvar),
    /// Per worker: where other threads post "connection N has commands" (set when the worker starts,
    /// before any connection exists). Shared with every connection handle, which looks up its current
    /// worker's entry at kick time: a session can move between workers (see `handler::Handler::resolve`).
    pub kickers: Arc<[OnceLock<Kicker>]>,
}

/// A worker's kick queue and wake-up.
#[derive(Clone)]
pub(crate) struct Kicker {
    pub queue: crossbeam_channel::Sender<ConnId>,
    pub waker: Arc<dyn crate::stack::Wake>,
}

impl Shared {
    pub fn least_loaded(&self) -> usize {
        (0..self.load.len())
            .min_by_key(|&i| self.load[i].load(Ordering::Relaxed))
            .unwrap_or(0)
    }
}

/// Per-connection state shared between the owning worker and handles held by other threads.
///
/// `worker` changes only while the connection is in no worker's map (in flight between two workers, see
/// `handler::Handler::give_up_session`); the new owner drains the command queue after adopting it, so a
/// kick that reached the old worker (which ignores ids it does not have) loses nothing.
pub(crate) struct ConnShared {
    pub id: ConnId,
    /// The worker that owns (or is about to own) the connection.
    pub worker: AtomicUsize,
    pub commands: crossbeam_channel::Sender<Command>,
    pub scheduled: AtomicBool,
    pub closed: AtomicBool,
    /// The session is ready on a transport (set and cleared by the owning worker).
    pub connected: AtomicBool,
    /// The session waits in Standby for its peer (set by the owning worker; read for eviction).
    pub standby: AtomicBool,
    /// The messenger's kick queues, by worker (`Shared::kickers`).
    pub kickers: Arc<[OnceLock<Kicker>]>,
    /// The messenger's `Shared` address, to recognise its own worker threads (`CURRENT_WORKER`).
    pub messenger: usize,
    /// This connection's send budget (a child of `Shared::send_total`).
    pub send_budget: Arc<Throttle>,
    /// Set when a receive throttle the connection paused on has room again: the worker puts the
    /// connection on its run list (see `handler::Handler::run_list`).
    pub want_read: AtomicBool,
    pub peer: Mutex<PeerInfo>,
    /// The application's data on this connection (Ceph's `set_priv`).
    pub private: Mutex<Option<Arc<dyn std::any::Any + Send + Sync>>>,
}

/// What we know of the peer of a connection.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    pub entity_type: EntityType,
    pub addrs: AddrVec,
    pub global_id: u64,
    pub features: u64,
    pub last_keepalive_rtt: Option<Duration>,
    /// Connection mode of the current session (`CON_MODE_CRC` / `CON_MODE_SECURE`).
    pub con_mode: u32,
    /// Server side: the entity the peer authenticated as.
    pub auth_name: Option<proto::types::AuthEntityName>,
}

thread_local! {
    /// Set on worker threads: sends from there must not block on a send budget.
    pub(crate) static IN_WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// On a worker thread: (its messenger's `Shared` address, worker index). A kick for that very
    /// worker needs no wake-up: it drains its kick queue before it next sleeps.
    pub(crate) static CURRENT_WORKER: std::cell::Cell<(usize, usize)> = const { std::cell::Cell::new((0, usize::MAX)) };
    /// On a worker thread, while it hands a connection's messages to the dispatcher: that connection
    /// (its `ConnShared` address; 0 otherwise). Messages queued to it meanwhile go to `REPLIES`, which
    /// the worker moves into the connection right after the dispatch round: no command channel, no kick.
    pub(crate) static DISPATCHING: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Messages queued to the connection in `DISPATCHING`, in order, each with its send-budget permit.
    pub(crate) static REPLIES: std::cell::RefCell<Vec<Message>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A map keyed by our own integer ids (connection, socket, timer), looked up several times per message:
/// FxHash (a multiply) instead of SipHash. The ids are ours, not the peer's, so hash flooding is not a
/// concern.
pub(crate) type IdMap<K, V> = rustc_hash::FxHashMap<K, V>;

/// What [`Messenger::registry_stats`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistryStats {
    /// Sessions registered by peer address.
    pub sessions: usize,
    /// Registry entries looked at by connection closes since the messenger started.
    pub entries_visited: u64,
}

/// A handle to a connection; cheap to clone, usable from any thread.
///
/// # Example
/// Send a message and wait for the answer (the server echoes).
/// ```
/// use std::sync::{mpsc, Arc, Mutex};
/// use std::time::Duration;
/// use bytes::Bytes;
/// use msgr::{entity_type, AuthEntityName, ConnectionRef, Dispatcher, Message, Messenger};
/// use msgr::{MessengerConfig, Policy, PosixStack};
/// use msgr::proto::Config;
///
/// struct Echo;
/// impl Dispatcher for Echo {
///     fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) {
///         let _ = conn.send(Message::new(msg.header.msg_type, msg.front.clone()));
///     }
/// }
/// struct Replies(Mutex<mpsc::Sender<Message>>);
/// impl Dispatcher for Replies {
///     fn ms_dispatch(&self, _conn: &ConnectionRef, msg: Message) {
///         let _ = self.0.lock().unwrap().send(msg);
///     }
/// }
/// fn config(t: u8, name: &str) -> MessengerConfig {
///     let mut c = MessengerConfig::new(Config::new(t, AuthEntityName::parse(name).unwrap()));
///     c.workers.threads = 1;
///     c
/// }
///
/// let mut server = Messenger::new(PosixStack::new(), config(entity_type::OSD, "osd.0"), Arc::new(Echo));
/// server.bind(&["127.0.0.1:0".parse().unwrap()]).unwrap();
/// server.start().unwrap();
///
/// let (tx, rx) = mpsc::channel();
/// let replies = Arc::new(Replies(Mutex::new(tx)));
/// let mut client = Messenger::new(PosixStack::new(), config(entity_type::CLIENT, "client.admin"), replies);
/// client.start().unwrap();
/// let conn = client
///     .connect_to(entity_type::OSD, server.my_addrs(), Policy::lossless_client())
///     .unwrap();
/// conn.send(Message::new(0x4000, Bytes::from_static(b"ping"))).unwrap();
/// let reply = rx.recv_timeout(Duration::from_secs(10)).unwrap();
/// assert_eq!(&reply.front[..], b"ping");
/// assert!(conn.is_connected());
/// assert_eq!(conn.peer_type(), entity_type::OSD);
/// ```
#[derive(Clone)]
pub struct ConnectionRef(pub(crate) Arc<ConnShared>);

impl std::fmt::Debug for ConnectionRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionRef")
            .field("id", &self.0.id)
            .field("worker", &self.0.worker.load(Ordering::Relaxed))
            .finish()
    }
}

/// Two handles are equal when they are handles of the same connection.
impl PartialEq for ConnectionRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ConnectionRef {}

impl std::hash::Hash for ConnectionRef {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.id.hash(state);
    }
}

impl ConnShared {
    /// Post this connection's id on its current worker's kick queue, waking that worker unless this is
    /// its own thread (it drains the queue before it sleeps again). No allocation: the queue allocates in
    /// blocks.
    fn kick(&self) {
        let w = self.worker.load(Ordering::Acquire);
        let Some(k) = self.kickers.get(w).and_then(|k| k.get()) else {
            // Not reachable once the messenger has started (handles exist only after that); leave the
            // commands queued and let the next send try again.
            self.scheduled.store(false, Ordering::Release);
            return;
        };
        if k.queue.send(self.id).is_ok() && CURRENT_WORKER.with(|c| c.get()) != (self.messenger, w)
        {
            let _ = k.waker.wake();
        }
    }
}

impl crate::throttle::Resume for ConnShared {
    fn resume_id(&self) -> u64 {
        self.id
    }

    /// A receive throttle has room again: have the owning worker read this connection again.
    fn resume(&self) {
        self.want_read.store(true, Ordering::Release);
        if !self.scheduled.swap(true, Ordering::AcqRel) {
            self.kick();
        }
    }
}

impl ConnectionRef {
    /// The messenger-unique id of this connection.
    pub fn id(&self) -> ConnId {
        self.0.id
    }

    /// Queue a message, waiting while this connection's send budget is used up (on a worker thread,
    /// where waiting could deadlock, it goes over budget instead). Fails only if the connection is
    /// closed (also while waiting).
    ///
    /// Budget returns as the peer acknowledges, and acks are read like messages: a thread that holds
    /// received messages (their receive budget) while it waits here may wait on itself. Such threads
    /// should use [`ConnectionRef::try_send`] or [`ConnectionRef::send_timeout`].
    pub fn send(&self, msg: Message) -> Result<(), MsgrError> {
        let r = if IN_WORKER.with(|w| w.get()) {
            self.queue_with(msg, |t, b| Some(t.force_acquire(b)))
        } else {
            let closed = || self.is_closed();
            self.queue_with(msg, |t, b| t.acquire(b, None, &closed))
        };
        r.map_err(|_| MsgrError::Closed)
    }

    /// Queue a message if this connection's send budget has room now; else give it back in
    /// [`TrySendError::WouldBlock`].
    // The error gives the message back by value, as crossbeam's `TrySendError<T>` does; boxing it would
    // allocate on the path that is short of memory budget.
    #[allow(clippy::result_large_err)]
    pub fn try_send(&self, msg: Message) -> Result<(), TrySendError> {
        self.queue_with(msg, |t, b| t.try_acquire(b))
            .map_err(|(m, closed)| {
                if closed {
                    TrySendError::Closed(m)
                } else {
                    TrySendError::WouldBlock(m)
                }
            })
    }

    /// Queue a message, waiting up to `timeout` for room in this connection's send budget; on a worker
    /// thread it does not wait (as [`ConnectionRef::try_send`]).
    #[allow(clippy::result_large_err)] // as `try_send`
    pub fn send_timeout(&self, msg: Message, timeout: Duration) -> Result<(), TrySendError> {
        if IN_WORKER.with(|w| w.get()) {
            return self.try_send(msg);
        }
        let deadline = std::time::Instant::now() + timeout;
        let closed = || self.is_closed();
        self.queue_with(msg, |t, b| t.acquire(b, Some(deadline), &closed))
            .map_err(|(m, closed)| {
                if closed || self.is_closed() {
                    TrySendError::Closed(m)
                } else {
                    TrySendError::Timeout(m)
                }
            })
    }

    /// Take budget with `take` and queue `msg` holding it. On failure the message comes back without a
    /// permit, with whether that is because the connection is closed (else: no budget).
    #[allow(clippy::result_large_err)] // as `try_send`
    fn queue_with(
        &self,
        mut msg: Message,
        take: impl FnOnce(&Arc<Throttle>, u64) -> Option<Permit>,
    ) -> Result<(), (Message, bool)> {
        if self.is_closed() {
            return Err((msg, true));
        }
        let Some(permit) = take(&self.0.send_budget, msg.payload_len() as u64) else {
            return Err((msg, false));
        };
        if self.is_closed() {
            return Err((msg, true));
        }
        msg.attach_permit(permit);
        // A reply from this connection's own dispatch: the worker takes it straight after the round (in
        // order with anything this thread queued before, which the command channel holds).
        let me = Arc::as_ptr(&self.0) as usize;
        if DISPATCHING.with(|d| d.get()) == me {
            REPLIES.with(|r| r.borrow_mut().push(msg));
            return Ok(());
        }
        // If the worker drops the queue from now on (the connection closes), the message goes with it
        // and its permit returns the budget.
        if let Err(e) = self.0.commands.send(Command::Send(msg)) {
            let Command::Send(mut m) = e.into_inner() else {
                unreachable!("sent a Send")
            };
            m.take_permit();
            return Err((m, true));
        }
        self.schedule();
        Ok(())
    }

    /// This connection's send budget: bytes and messages queued or unacknowledged on it now.
    pub fn send_budget(&self) -> ThrottleStats {
        self.0.send_budget.stats()
    }

    /// Send a KEEPALIVE2; its ack reaches `Dispatcher::ms_handle_keepalive_ack`.
    pub fn send_keepalive(&self) -> Result<(), MsgrError> {
        self.command(Command::Keepalive)
    }

    /// Close the connection now, discarding what is queued (Ceph's mark_down): everything it holds of
    /// its send budget returns. Takes effect for callers at once, as in Ceph: later sends fail (a
    /// sender waiting for budget gives up) and `connect_to` opens a new session; the worker closes the
    /// transport.
    pub fn mark_down(&self) {
        let _ = self.command(Command::MarkDown);
        self.0.closed.store(true, Ordering::Release);
        self.0.connected.store(false, Ordering::Release);
    }

    /// Whether the connection has ended (reset, closed, marked down).
    pub fn is_closed(&self) -> bool {
        self.0.closed.load(Ordering::Acquire)
    }

    /// The session is ready on a live transport (Ceph's `is_connected`): false before the handshake
    /// completes, while reconnecting or in standby, and once closed.
    pub fn is_connected(&self) -> bool {
        self.0.connected.load(Ordering::Acquire)
    }

    /// The peer's entity type (`entity_type::*`): the type it announced once the session is up, the
    /// type asked for before that on a connection we dialled.
    pub fn peer_type(&self) -> EntityType {
        self.lock_peer().entity_type
    }

    /// The Ceph feature bits both sides share on the current session (0 before the first handshake).
    pub fn features(&self) -> u64 {
        self.lock_peer().features
    }

    /// Attach the application's data to this connection (Ceph's `set_priv`), replacing what was there.
    pub fn set_priv(&self, data: Arc<dyn std::any::Any + Send + Sync>) {
        *self.0.private.lock().unwrap_or_else(|e| e.into_inner()) = Some(data);
    }

    /// The application's data on this connection, if it is a `T`.
    pub fn get_priv<T: std::any::Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let data = self
            .0
            .private
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        data.downcast::<T>().ok()
    }

    /// Remove and return the application's data (Ceph's `set_priv(nullptr)`).
    pub fn take_priv(&self) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        self.0
            .private
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    fn lock_peer(&self) -> std::sync::MutexGuard<'_, PeerInfo> {
        self.0.peer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What is known of the peer.
    pub fn peer(&self) -> PeerInfo {
        self.lock_peer().clone()
    }

    pub(crate) fn command(&self, c: Command) -> Result<(), MsgrError> {
        if self.is_closed() {
            return Err(MsgrError::Closed);
        }
        self.0.commands.send(c).map_err(|_| MsgrError::Closed)?;
        self.schedule();
        Ok(())
    }

    fn schedule(&self) {
        if !self.0.scheduled.swap(true, Ordering::AcqRel) {
            self.0.kick();
        }
    }
}

/// A messenger over network stack `N`: it listens on the addresses it is bound to, dials peers with
/// [`Messenger::connect_to`], keeps one session per peer, and hands what arrives to its
/// [`Dispatcher`]s on its worker threads.
///
/// # Example
/// A server and a client on loopback (port 0), one lossless session, one message each way.
/// ```
/// use std::sync::{mpsc, Arc, Mutex};
/// use std::time::Duration;
/// use bytes::Bytes;
/// use msgr::{entity_type, AuthEntityName, ConnectionRef, Dispatcher, Message, Messenger};
/// use msgr::{MessengerConfig, Policy, PosixStack};
/// use msgr::proto::Config;
///
/// /// Passes what arrives to a channel, and answers "ping" with "pong".
/// struct Inbox(Mutex<mpsc::Sender<Vec<u8>>>);
/// impl Dispatcher for Inbox {
///     fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) {
///         if &msg.front[..] == b"ping" {
///             let _ = conn.send(Message::new(0x4000, Bytes::from_static(b"pong")));
///         }
///         let _ = self.0.lock().unwrap().send(msg.front.to_vec());
///     }
/// }
/// fn messenger(t: u8, name: &str, tx: mpsc::Sender<Vec<u8>>) -> Messenger<PosixStack> {
///     let mut c = MessengerConfig::new(Config::new(t, AuthEntityName::parse(name).unwrap()));
///     c.workers.threads = 1;
///     Messenger::new(PosixStack::new(), c, Arc::new(Inbox(Mutex::new(tx))))
/// }
///
/// let (server_tx, server_rx) = mpsc::channel();
/// let mut server = messenger(entity_type::OSD, "osd.0", server_tx);
/// server.bind(&["127.0.0.1:0".parse().unwrap()]).unwrap();
/// server.start().unwrap();
///
/// let (client_tx, client_rx) = mpsc::channel();
/// let mut client = messenger(entity_type::CLIENT, "client.admin", client_tx);
/// client.start().unwrap();
/// let conn = client
///     .connect_to(entity_type::OSD, server.my_addrs(), Policy::lossless_client())
///     .unwrap();
/// conn.send(Message::new(0x4000, Bytes::from_static(b"ping"))).unwrap();
///
/// let wait = Duration::from_secs(10);
/// assert_eq!(server_rx.recv_timeout(wait).unwrap(), b"ping");
/// assert_eq!(client_rx.recv_timeout(wait).unwrap(), b"pong");
/// // Everything sent was acknowledged: nothing is lost by shutting down now.
/// assert!(client.shutdown_flush(wait).unwrap());
/// ```
pub struct Messenger<N: NetworkStack> {
    stack: Arc<N>,
    shared: Arc<Shared>,
    workers: Option<Workers<N::Worker, Handler<N::Worker>>>,
    remotes: Arc<OnceLock<Vec<handler::RemoteOf<N::Worker>>>>,
    bind_addrs: Vec<SocketAddr>,
    my_addrs: AddrVec,
    /// The dispatcher chain until `start` fixes it.
    dispatchers: Vec<Arc<dyn Dispatcher>>,
}

/// Asks a messenger to stop, from any thread (a dispatcher, a signal handler): [`Messenger::wait`]
/// returns and shuts the messenger down.
#[derive(Clone)]
pub struct StopHandle(Arc<Shared>);

impl StopHandle {
    pub fn stop(&self) {
        let (lock, cv) = &self.0.stop_requested;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
    }
}

impl<N: NetworkStack> Messenger<N> {
    /// A messenger with one dispatcher. See [`Messenger::create`] for one whose dispatchers are added
    /// later.
    pub fn new(stack: N, config: MessengerConfig, dispatcher: Arc<dyn Dispatcher>) -> Self {
        let mut m = Messenger::create(stack, config);
        m.dispatchers.push(dispatcher);
        m
    }

    /// A messenger without dispatchers yet: add them with [`Messenger::add_dispatcher_head`] /
    /// [`Messenger::add_dispatcher_tail`] before [`Messenger::start`] (a dispatcher that needs the
    /// messenger, e.g. to dial other peers, can be built after it).
    pub fn create(stack: N, config: MessengerConfig) -> Self {
        let threads = config.workers.threads.max(1);
        let send_total = Arc::new(Throttle::new(
            config.send_budget_bytes,
            config.send_budget_msgs,
        ));
        let mut recv_throttles: Vec<(u8, Arc<Throttle>)> = Vec::new();
        for r in &config.recv_throttles {
            // The last entry for a type wins.
            recv_throttles.retain(|(t, _)| *t != r.entity_type);
            recv_throttles.push((r.entity_type, Arc::new(Throttle::new(r.bytes, r.msgs))));
        }
        let dispatch_throttle = Arc::new(Throttle::new(config.dispatch_throttle_bytes, 0));
        let shared = Shared {
            dispatcher: Arc::new(dispatch::DispatchChain::default()),
            proto_config: OnceLock::new(),
            registry: Mutex::new(registry::SessionRegistry::default()),
            half_open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            load: (0..threads).map(|_| AtomicUsize::new(0)).collect(),
            counters: (0..threads)
                .map(|_| Arc::new(WorkerCounters::default()))
                .collect(),
            send_total,
            recv_throttles,
            dispatch_throttle,
            stopping: AtomicBool::new(false),
            stop_requested: (Mutex::new(false), std::sync::Condvar::new()),
            kickers: (0..threads)
                .map(|_| OnceLock::new())
                .collect::<Vec<_>>()
                .into(),
            config,
        };
        Messenger {
            stack: Arc::new(stack),
            shared: Arc::new(shared),
            workers: None,
            remotes: Arc::new(OnceLock::new()),
            bind_addrs: Vec::new(),
            my_addrs: AddrVec::default(),
            dispatchers: Vec::new(),
        }
    }

    /// Put `d` first in the dispatcher chain (Ceph's `add_dispatcher_head`); before `start` only.
    pub fn add_dispatcher_head(&mut self, d: Arc<dyn Dispatcher>) -> Result<(), MsgrError> {
        if self.workers.is_some() {
            return Err(MsgrError::AlreadyStarted);
        }
        self.dispatchers.insert(0, d);
        Ok(())
    }

    /// Put `d` last in the dispatcher chain (Ceph's `add_dispatcher_tail`); before `start` only.
    pub fn add_dispatcher_tail(&mut self, d: Arc<dyn Dispatcher>) -> Result<(), MsgrError> {
        if self.workers.is_some() {
            return Err(MsgrError::AlreadyStarted);
        }
        self.dispatchers.push(d);
        Ok(())
    }

    /// Addresses to listen on (public and cluster addrvecs alike); call before `start`. Port 0 picks one.
    pub fn bind(&mut self, addrs: &[SocketAddr]) -> Result<(), MsgrError> {
        if self.workers.is_some() {
            return Err(MsgrError::AlreadyStarted);
        }
        self.bind_addrs.extend_from_slice(addrs);
        Ok(())
    }

    /// Start the workers and listen on the bound addresses. Errors name the address (in use, …).
    pub fn start(&mut self) -> Result<(), MsgrError> {
        if self.workers.is_some() {
            return Err(MsgrError::AlreadyStarted);
        }
        if self.dispatchers.is_empty() {
            return Err(MsgrError::NoDispatcher);
        }
        self.shared.dispatcher.set(self.dispatchers.clone());
        let mut wc = self.shared.config.workers.clone();
        wc.threads = self.shared.load.len();
        let shared = self.shared.clone();
        let remotes = self.remotes.clone();
        let workers = Workers::start(self.stack.clone(), &wc, move |i, center| {
            Ok(Handler::new(i, shared.clone(), remotes.clone(), center))
        })?;
        let _ = self.remotes.set(workers.remotes());
        self.workers = Some(workers);

        // Processor: listen (on worker 0, or on every worker for stacks that steer flows in hardware).
        let nonce = self.shared.config.proto.nonce;
        let listeners: Vec<usize> = if self.stack.per_worker_listen() {
            (0..self.shared.load.len()).collect()
        } else {
            vec![0]
        };
        let mut my_addrs = Vec::new();
        for addr in self.bind_addrs.clone() {
            let mut bound = None;
            for &w in &listeners {
                let (tx, rx) = crossbeam_channel::bounded(1);
                let opts = self.shared.config.listen.clone();
                self.remote(w)?
                    .submit(move |h: &mut Handler<N::Worker>, c| {
                        let _ = tx.send(h.listen(c, addr, &opts));
                    })
                    .map_err(|e| MsgrError::Worker(e.into()))?;
                let got = rx.recv_timeout(Duration::from_secs(10)).map_err(|_| {
                    MsgrError::Worker(io::Error::other("worker did not answer listen"))
                })?;
                let local = got.map_err(|source| MsgrError::Bind { addr, source })?;
                // Like a Ceph Processor's reference on its worker: a listener is load, so connections go
                // to the other workers while they are less busy and accepting stays responsive.
                self.shared.load[w].fetch_add(1, Ordering::Relaxed);
                bound.get_or_insert(local);
            }
            if let Some(local) = bound {
                my_addrs.push(EntityAddr::msgr2(local, nonce));
            }
        }
        self.my_addrs = AddrVec(my_addrs);
        let mut pc = self.shared.config.proto.clone();
        pc.my_addrs = self.my_addrs.clone();
        let _ = self.shared.proto_config.set(Arc::new(pc));
        // Accept whatever queued up while the addresses were being learned.
        for &w in &listeners {
            let _ = self
                .remote(w)?
                .submit(|h: &mut Handler<N::Worker>, c| h.accept_all(c));
        }
        Ok(())
    }

    /// Our addresses, as bound (empty for a client-only messenger).
    pub fn my_addrs(&self) -> &AddrVec {
        &self.my_addrs
    }

    /// The connection to the peer at `addrs` of type `peer_type`: the existing one if there is one
    /// (one session per peer, as in Ceph), else a new one.
    pub fn connect_to(
        &self,
        peer_type: impl Into<EntityType>,
        addrs: &AddrVec,
        policy: Policy,
    ) -> Result<ConnectionRef, MsgrError> {
        open(
            &self.shared,
            &self.remotes,
            peer_type.into(),
            addrs,
            policy,
            None,
        )
    }

    /// A new, separate session to `addrs` under its own client identity (a fresh address nonce), as if
    /// from another client instance: for benchmarks and fan-in tests that need many connections to one
    /// peer from one process. Only for messengers that are not bound (pure clients).
    pub fn connect_new(
        &self,
        peer_type: impl Into<EntityType>,
        addrs: &AddrVec,
        policy: Policy,
    ) -> Result<ConnectionRef, MsgrError> {
        let nonce = (self.shared.config.proto.nonce as u64
            + self.shared.next_id.load(Ordering::Relaxed)) as u32;
        open(
            &self.shared,
            &self.remotes,
            peer_type.into(),
            addrs,
            policy,
            Some(nonce),
        )
    }

    /// A handle that dials peers through this messenger from anywhere, e.g. from a dispatcher built
    /// before [`Messenger::start`]. It does not keep the messenger alive: once the messenger is gone
    /// it fails with [`MsgrError::NotStarted`].
    pub fn handle(&self) -> MessengerHandle<N> {
        MessengerHandle {
            shared: Arc::downgrade(&self.shared),
            remotes: Arc::downgrade(&self.remotes),
        }
    }

    fn remote(&self, w: usize) -> Result<&handler::RemoteOf<N::Worker>, MsgrError> {
        self.remotes
            .get()
            .and_then(|r| r.get(w))
            .ok_or(MsgrError::NotStarted)
    }

    /// Counters summed over all workers, with the throttles.
    pub fn counters(&self) -> CountersSnapshot {
        let mut s = CountersSnapshot::sum(self.shared.counters.iter().map(|c| c.as_ref()));
        s.sessions = self.registry_stats().sessions as u64;
        s.throttles = Some(self.throttles());
        s
    }

    /// The session registry: sessions registered, and entries visited by closes since start (a close
    /// touches only its own entry; see the registry's invariant).
    pub fn registry_stats(&self) -> RegistryStats {
        let reg = self
            .shared
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        RegistryStats {
            sessions: reg.len(),
            entries_visited: reg.entries_visited(),
        }
    }

    /// Every throttle of the messenger now: the send budgets summed over connections, the dispatch
    /// throttle and the receive throttles by peer type.
    pub fn throttles(&self) -> ThrottlesSnapshot {
        ThrottlesSnapshot {
            send: self.shared.send_total.stats(),
            dispatch: self.shared.dispatch_throttle.stats(),
            recv: self
                .shared
                .recv_throttles
                .iter()
                .map(|(t, th)| PeerThrottleStats {
                    entity_type: *t,
                    stats: th.stats(),
                })
                .collect(),
        }
    }

    /// The network stack.
    pub fn stack(&self) -> &N {
        &self.stack
    }

    /// Close every connection (Ceph's `mark_down_all`), as [`ConnectionRef::mark_down`] does each.
    pub fn mark_down_all(&self) {
        let Some(remotes) = self.remotes.get() else {
            return;
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut asked = 0;
        for r in remotes {
            let tx = tx.clone();
            if r.submit(move |h: &mut Handler<N::Worker>, _| {
                let _ = tx.send(h.handles());
            })
            .is_ok()
            {
                asked += 1;
            }
        }
        // Handles moving between workers are in no worker's map; the registry has the registered ones.
        let registered: Vec<ConnectionRef> = self
            .shared
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .handles();
        registered.iter().for_each(ConnectionRef::mark_down);
        for handles in rx.iter().take(asked) {
            handles.iter().for_each(ConnectionRef::mark_down);
        }
    }

    /// Close the session with the peer at `addrs` (Ceph's `mark_down(addrs)`); whether there was one.
    pub fn mark_down_addrs(&self, addrs: &AddrVec) -> bool {
        let found = self
            .shared
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(addrs)
            .cloned();
        found.map(|c| c.mark_down()).is_some()
    }

    /// A handle that asks this messenger to stop, from any thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.shared.clone())
    }

    /// Block until a [`StopHandle`] asks to stop, then shut down (Ceph's `wait`).
    pub fn wait(&mut self) -> Result<(), MsgrError> {
        {
            let (lock, cv) = &self.shared.stop_requested;
            let mut stop = lock.lock().unwrap_or_else(|e| e.into_inner());
            while !*stop {
                stop = cv.wait(stop).unwrap_or_else(|e| e.into_inner());
            }
        }
        self.shutdown()
    }

    /// Wait up to `timeout` for every message sent so far to be acknowledged by its peer (lossless) or
    /// written (lossy), then shut down. Returns whether everything was flushed; what was not is dropped
    /// with the connections.
    pub fn shutdown_flush(&mut self, timeout: Duration) -> Result<bool, MsgrError> {
        let deadline = std::time::Instant::now() + timeout;
        let flushed = loop {
            if self.shared.send_total.stats().is_idle() {
                break true;
            }
            if std::time::Instant::now() >= deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        self.shutdown()?;
        Ok(flushed)
    }

    /// Stop all workers; connections are closed without notifying the dispatcher, and what they had
    /// queued is dropped (see [`Messenger::shutdown_flush`]).
    pub fn shutdown(&mut self) -> Result<(), MsgrError> {
        self.shared.stopping.store(true, Ordering::Release);
        if let Some(w) = self.workers.take() {
            w.shutdown()?;
        }
        Ok(())
    }
}

impl<N: NetworkStack> Drop for Messenger<N> {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Dial `addrs` through a messenger (its shared state and workers): see [`Messenger::connect_to`].
fn open<W: crate::stack::WorkerStack>(
    shared: &Arc<Shared>,
    remotes: &OnceLock<Vec<handler::RemoteOf<W>>>,
    peer_type: EntityType,
    addrs: &AddrVec,
    policy: Policy,
    nonce: Option<u32>,
) -> Result<ConnectionRef, MsgrError> {
    let remotes = remotes.get().ok_or(MsgrError::NotStarted)?;
    let target = addrs
        .msgr2()
        .filter(|a| a.sockaddr.is_some())
        .cloned()
        .ok_or_else(|| MsgrError::NoAddress(addrs.to_string()))?;
    let w = shared.least_loaded();
    let (conn, cmd_rx) = if nonce.is_none() {
        let mut reg = shared.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Reuse the session with these addresses only if it is with the entity type we want to
        // reach: a peer that connected to us claiming these addresses is not necessarily that.
        if let Some(existing) = reg.get(addrs).filter(|c| {
            !c.is_closed()
                && (peer_type == proto::types::entity_type::ANY
                    || c.peer().entity_type == peer_type)
        }) {
            return Ok(existing.clone());
        }
        let (conn, rx) = handler::new_handle(shared, w);
        {
            // Known from now on, for the identity check of a session request racing this dial.
            let mut p = conn.0.peer.lock().unwrap_or_else(|e| e.into_inner());
            p.entity_type = peer_type;
            p.addrs = addrs.clone();
        }
        reg.insert(addrs.clone(), conn.clone(), policy.server);
        (conn, rx)
    } else {
        handler::new_handle(shared, w)
    };
    // Count it now so that a burst of connects spreads over the workers.
    shared.load[w].fetch_add(1, Ordering::Relaxed);
    let handle = conn.clone();
    let addrs2 = addrs.clone();
    remotes[w]
        .submit(move |h: &mut Handler<W>, c| {
            h.shared_load_done();
            h.create_client(
                c,
                handle,
                cmd_rx,
                peer_type.to_wire(),
                target,
                addrs2,
                policy,
                nonce,
            )
        })
        .map_err(|e| MsgrError::Worker(e.into()))?;
    Ok(conn)
}

/// Dials peers through a messenger without owning it: see [`Messenger::handle`].
pub struct MessengerHandle<N: NetworkStack> {
    shared: std::sync::Weak<Shared>,
    remotes: std::sync::Weak<OnceLock<Vec<handler::RemoteOf<N::Worker>>>>,
}

impl<N: NetworkStack> Clone for MessengerHandle<N> {
    fn clone(&self) -> Self {
        MessengerHandle {
            shared: self.shared.clone(),
            remotes: self.remotes.clone(),
        }
    }
}

impl<N: NetworkStack> MessengerHandle<N> {
    /// As [`Messenger::connect_to`].
    pub fn connect_to(
        &self,
        peer_type: impl Into<EntityType>,
        addrs: &AddrVec,
        policy: Policy,
    ) -> Result<ConnectionRef, MsgrError> {
        let (Some(shared), Some(remotes)) = (self.shared.upgrade(), self.remotes.upgrade()) else {
            return Err(MsgrError::NotStarted);
        };
        if shared.stopping.load(Ordering::Acquire) {
            return Err(MsgrError::NotStarted);
        }
        open(&shared, &remotes, peer_type.into(), addrs, policy, None)
    }
}
