//! Network stacks: the transport half of msgr.
//!
//! This module owns the seam between the event loop ([`crate::event`]) and a byte-moving transport. It knows
//! nothing of frames; [`crate::proto`] knows nothing of it. The shape follows Demikernel's LibOS API: a
//! per-worker, token-based transport where every socket is a [`SocketId`] owned by one worker.
//!
//! - [`NetworkStack`] is shared by all workers (`Send + Sync`) and creates one [`WorkerStack`] per worker
//!   thread. It is created on the worker's own thread, so a `WorkerStack` need not be `Send` (a DPDK queue
//!   or an RDMA completion queue is bound to the thread that polls it).
//! - [`WorkerStack`] is the whole per-worker transport: listen, connect, accept, read, writev, close, and
//!   [`WorkerStack::poll`], which reports [`SocketEvent`]s.
//!
//! Implementations: [`posix`] (kernel TCP through mio; default, always built) and the [`fault`] wrapper, which
//! injects socket failures and read delays over any stack.
//!
//! # The contract every stack keeps
//!
//! * **Ids.** Every id returned by `listen`, `connect`, `accept` or `attach` belongs to the caller until it
//!   passes it to [`WorkerStack::close`] or [`WorkerStack::detach`]. Ids are never reused by one worker, so an
//!   event that names an id already closed (it can be queued in the same batch as the event whose handler
//!   closed it) is stale and must be ignored; calls on unknown ids fail with [`TransportError::UnknownSocket`].
//! * **Readiness is edge-triggered.** An event says that the state *may* have changed since the last event for
//!   that id; it is not repeated. After [`Readiness::readable`], call [`WorkerStack::read`] until it returns
//!   `WouldBlock` (or `Ok(0)`, end of stream, or an error); after [`Readiness::writable`], call
//!   [`WorkerStack::writev`] until your queue is empty or it returns `WouldBlock`. [`WorkerStack::read_with`]
//!   and [`WorkerStack::write_bytes`] (lending reads, owned-buffer writes) count as `read` and `writev`. If you stop early, no new
//!   event comes for the bytes you left. Spurious events are allowed: a read after an event may return
//!   `WouldBlock` at once. A hang-up or socket error is reported as readable (and writable): the next read
//!   returns `Ok(0)` or the error.
//! * **Connect** is non-blocking. [`WorkerStack::connect`] returns an id at once (or a synchronous error such
//!   as an invalid address); completion comes as [`EventKind::Connected`] or [`EventKind::ConnectFailed`]
//!   (refused, unreachable, or the [`ConnectOptions::timeout`] expired). Before completion, `read` and
//!   `writev` return `WouldBlock`. After `Connected`, treat the socket as readable and writable.
//! * **Accept.** [`EventKind::Acceptable`] on a listener means: call [`WorkerStack::accept`] until `Ok(None)`.
//!   A freshly accepted or attached socket is reported ready at least once by a later `poll`.
//! * **Poll.** [`WorkerStack::poll`] appends events to the caller's vector and returns. An interrupt-driven
//!   stack (posix) blocks up to `timeout` (`None`: until an event or a [`Wake::wake`]); a busy-poll stack
//!   ([`WorkerStack::is_busy_poll`]) checks its queues once and may return at once whatever the timeout.
//! * **Errors** are `io::Error`s whose kind is meaningful (`AddrInUse`, `ConnectionRefused`, `TimedOut`,
//!   `HostUnreachable`, …) and whose inner error, when the stack knows more, is a [`TransportError`] naming
//!   the address; get it with [`transport_error`].
//! * **Hand-off.** A socket accepted on one worker may be moved to another with [`WorkerStack::detach`] and
//!   [`WorkerStack::attach`] (posix: the Processor listens on one worker and spreads connections). Stacks
//!   whose connections cannot move (DPDK: RSS decides the queue) return `Unsupported` from `detach` and
//!   answer `true` to [`NetworkStack::per_worker_listen`]: every worker listens and keeps what it accepts.

#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod fault;
pub mod posix;
#[cfg(feature = "rdma")]
pub mod rdma;
mod sys;

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};

/// Ceph's `ms_tcp_listen_backlog` default.
pub const DEFAULT_LISTEN_BACKLOG: u32 = 512;
/// Default connect timeout (Ceph's `ms_connection_ready_timeout` is 10 s; the TCP part gets the same).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most buffers [`flush_queue`] hands to one `writev` (well under Linux's `IOV_MAX` of 1024).
pub const MAX_IOV: usize = 64;

/// A socket of one worker. Ids are never reused by that worker; they mean nothing to another worker.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId(pub u64);

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sock#{}", self.0)
    }
}

/// Which directions may have become ready. Both may be set; a hang-up or error sets both.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    pub readable: bool,
    pub writable: bool,
}

impl Readiness {
    pub const READABLE: Readiness = Readiness {
        readable: true,
        writable: false,
    };
    pub const WRITABLE: Readiness = Readiness {
        readable: false,
        writable: true,
    };
    pub const BOTH: Readiness = Readiness {
        readable: true,
        writable: true,
    };

    pub fn is_empty(self) -> bool {
        !self.readable && !self.writable
    }
}

/// What [`WorkerStack::poll`] reports about one socket.
#[derive(Debug)]
#[non_exhaustive]
pub enum EventKind {
    /// A listener has connections waiting: call [`WorkerStack::accept`] until it returns `Ok(None)`.
    Acceptable,
    /// A connect finished; the socket is established. Treat it as readable and writable.
    Connected,
    /// A connect failed (refused, unreachable, timed out). The id is dead; close it.
    ConnectFailed(io::Error),
    /// Readiness changed on an established socket (edge-triggered; see the module contract).
    Ready(Readiness),
}

/// One event from [`WorkerStack::poll`].
#[derive(Debug)]
pub struct SocketEvent {
    pub id: SocketId,
    pub kind: EventKind,
}

impl SocketEvent {
    pub fn ready(id: SocketId, readiness: Readiness) -> Self {
        SocketEvent {
            id,
            kind: EventKind::Ready(readiness),
        }
    }
}

/// Options for [`WorkerStack::listen`].
#[derive(Clone, Debug)]
pub struct ListenOptions {
    /// `listen(2)` backlog (Ceph's `ms_tcp_listen_backlog`).
    pub backlog: u32,
    /// `SO_REUSEADDR`, so a restarted daemon can rebind while old connections sit in TIME_WAIT.
    pub reuse_addr: bool,
    /// `TCP_NODELAY` on accepted sockets (Ceph's `ms_tcp_nodelay`).
    pub nodelay: bool,
    /// For IPv6 addresses: accept IPv6 only (`IPV6_V6ONLY`), so an IPv4 listener on the same port can coexist.
    pub only_v6: bool,
    /// `SO_RCVBUF` for accepted sockets (Ceph's `ms_tcp_rcvbuf`); `None` keeps the kernel's autotuning.
    pub recv_buffer: Option<usize>,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions {
            backlog: DEFAULT_LISTEN_BACKLOG,
            reuse_addr: true,
            nodelay: true,
            only_v6: true,
            recv_buffer: None,
        }
    }
}

/// Options for [`WorkerStack::connect`].
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Give up (with [`TransportError::ConnectTimeout`]) if the connection is not established by then.
    pub timeout: Option<Duration>,
    /// `TCP_NODELAY` (Ceph's `ms_tcp_nodelay`).
    pub nodelay: bool,
    /// `SO_RCVBUF` (Ceph's `ms_tcp_rcvbuf`); `None` keeps the kernel's autotuning.
    pub recv_buffer: Option<usize>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            timeout: Some(DEFAULT_CONNECT_TIMEOUT),
            nodelay: true,
            recv_buffer: None,
        }
    }
}

/// Which I/O call a fault was injected into.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum FaultOp {
    Read,
    Writev,
}

impl fmt::Display for FaultOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultOp::Read => "read",
            FaultOp::Writev => "writev",
        })
    }
}

/// What a stack knows about a failure, carried inside the `io::Error` it returns (see [`transport_error`]).
/// The `io::ErrorKind` of that error is [`TransportError::kind`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    #[error("cannot listen on {addr}: address already in use")]
    AddrInUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: address not available on this host")]
    AddrNotAvailable { addr: SocketAddr },
    #[error("connection to {addr} refused")]
    ConnectionRefused { addr: SocketAddr },
    #[error("connection to {addr} timed out after {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    #[error("{addr} is unreachable: {source}")]
    Unreachable { addr: SocketAddr, source: io::Error },
    #[error("connect to {addr} failed: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("listen on {addr} failed: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("unknown socket {0}")]
    UnknownSocket(SocketId),
    #[error("{id} is not in a state that allows {op}")]
    WrongState { id: SocketId, op: &'static str },
    #[error("injected {op} failure on {id} (fault seed {seed:#x})")]
    Injected {
        op: FaultOp,
        id: SocketId,
        seed: u64,
    },
}

impl TransportError {
    /// The error for `op` on `id` when the worker's entry for it (`entry`, `None` if it has none) is not
    /// one `op` works on: [`TransportError::WrongState`] for an entry of another kind, else
    /// [`TransportError::UnknownSocket`].
    pub fn refused<T>(id: SocketId, op: &'static str, entry: Option<T>) -> io::Error {
        match entry {
            Some(_) => TransportError::WrongState { id, op }.into(),
            None => TransportError::UnknownSocket(id).into(),
        }
    }

    /// The `io::ErrorKind` this error travels as.
    pub fn kind(&self) -> io::ErrorKind {
        use io::ErrorKind as K;
        match self {
            TransportError::AddrInUse { .. } => K::AddrInUse,
            TransportError::AddrNotAvailable { .. } => K::AddrNotAvailable,
            TransportError::ConnectionRefused { .. } => K::ConnectionRefused,
            TransportError::ConnectTimeout { .. } => K::TimedOut,
            TransportError::Unreachable { source, .. }
            | TransportError::Connect { source, .. }
            | TransportError::Listen { source, .. } => source.kind(),
            TransportError::UnknownSocket(_) => K::NotFound,
            TransportError::WrongState { .. } => K::InvalidInput,
            TransportError::Injected { .. } => K::ConnectionAborted,
        }
    }
}

impl From<TransportError> for io::Error {
    fn from(err: TransportError) -> io::Error {
        io::Error::new(err.kind(), err)
    }
}

/// The [`TransportError`] inside an `io::Error` returned by a stack, if there is one.
pub fn transport_error(err: &io::Error) -> Option<&TransportError> {
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<TransportError>())
}

/// Whether `err` was injected by [`fault::FaultWorker`].
pub fn is_injected(err: &io::Error) -> bool {
    matches!(transport_error(err), Some(TransportError::Injected { .. }))
}

/// Wakes a worker blocked in [`WorkerStack::poll`] from any thread.
pub trait Wake: Send + Sync + 'static {
    /// Make the current or next `poll` of the worker return soon. Cheap and idempotent.
    fn wake(&self) -> io::Result<()>;
}

/// Creates the per-worker transports. Shared by all workers.
pub trait NetworkStack: Send + Sync + 'static {
    type Worker: WorkerStack;

    /// Short name for logs and configs: `"posix"`, `"dpdk"`, `"rdma"`.
    fn name(&self) -> &'static str;

    /// Create worker `index`'s transport. Called on that worker's thread.
    fn new_worker(&self, index: usize) -> io::Result<Self::Worker>;

    /// `true` if every worker must listen itself (connections cannot move between workers, e.g. DPDK where
    /// RSS picks the queue); `false` if one worker listens and hands accepted sockets to others.
    fn per_worker_listen(&self) -> bool;
}

/// One worker's transport. Owned and used by one thread. See the module docs for the contract.
pub trait WorkerStack: 'static {
    /// An accepted socket in transit between workers (see [`WorkerStack::detach`]).
    type Handoff: Send + 'static;

    /// Bind and listen. The error names the address (e.g. [`TransportError::AddrInUse`]).
    fn listen(&mut self, addr: SocketAddr, opts: &ListenOptions) -> io::Result<SocketId>;

    /// Start a non-blocking connect; completion is reported by `poll` (see [`EventKind::Connected`]).
    fn connect(&mut self, addr: SocketAddr, opts: &ConnectOptions) -> io::Result<SocketId>;

    /// Take one pending connection from `listener`: `Ok(None)` when there is none left.
    fn accept(&mut self, listener: SocketId) -> io::Result<Option<(SocketId, SocketAddr)>>;

    /// Read into `buf`. `Ok(0)` is end of stream (for a non-empty `buf`); `WouldBlock` means drained.
    fn read(&mut self, id: SocketId, buf: &mut [u8]) -> io::Result<usize>;

    /// Write a gather list; may write only part of it. `WouldBlock` means wait for writable.
    fn writev(&mut self, id: SocketId, bufs: &[IoSlice<'_>]) -> io::Result<usize>;

    /// Read like [`WorkerStack::read`], but lend the bytes: `f` is called with the next received bytes,
    /// possibly in several pieces (in stream order, each non-empty), and the sum of their lengths is
    /// returned. `scratch` is where a copying stack reads into (the default: one `read` into it); a stack
    /// that owns its receive buffers (RDMA) hands them to `f` directly and treats `scratch.len()` only as
    /// the budget of one call (it may exceed it by at most one of its receive buffers). `Ok(0)` (with a
    /// non-empty `scratch`), `WouldBlock` and errors mean what they mean for `read`; `f` is not called then.
    fn read_with(
        &mut self,
        id: SocketId,
        scratch: &mut [u8],
        f: &mut dyn FnMut(&[u8]),
    ) -> io::Result<usize> {
        let n = self.read(id, scratch)?;
        if n > 0 {
            f(&scratch[..n]);
        }
        Ok(n)
    }

    /// Read like [`WorkerStack::read`] straight into `buf`'s free capacity, appending at most `max`
    /// bytes (the caller reserved room for them). The default reads into `scratch` (up to `max`)
    /// through [`WorkerStack::read_with`] and appends, a copy; the posix stack receives into `buf`.
    /// Returns and fails as `read` does.
    fn read_into(
        &mut self,
        id: SocketId,
        buf: &mut bytes::BytesMut,
        max: usize,
        scratch: &mut [u8],
    ) -> io::Result<usize> {
        let len = max.min(scratch.len());
        self.read_with(id, &mut scratch[..len], &mut |d| buf.extend_from_slice(d))
    }

    /// `true` if a read that returns fewer bytes than asked means the socket is drained for now, and a
    /// later arrival brings a new readable event (edge-triggered kernel sockets): the owner then stops
    /// without the read that would only say `WouldBlock`.
    fn short_read_drains(&self, id: SocketId) -> bool {
        let _ = id;
        false
    }

    /// Write owned buffers, like [`WorkerStack::writev`] (may write only part; `WouldBlock` means wait for
    /// writable). A stack may keep clones of the buffers (cheap: `Bytes` is reference counted) to send
    /// them without copying (RDMA); the default copies through `writev`, at most [`MAX_IOV`] at a time.
    fn write_bytes(&mut self, id: SocketId, bufs: &[Bytes]) -> io::Result<usize> {
        let mut slices = [IoSlice::new(&[]); MAX_IOV];
        let mut count = 0;
        for (slot, buf) in slices.iter_mut().zip(bufs.iter()) {
            *slot = IoSlice::new(buf);
            count += 1;
        }
        self.writev(id, &slices[..count])
    }

    /// Put what the writes so far have queued on the wire now, not at the end of the loop turn. The
    /// messenger calls it between the dispatch rounds of one large read, so the first replies reach the
    /// peer while the rest are worked on. A stack whose writes leave as they are made (the kernel's)
    /// has nothing to do: the default. DPDK runs its TCP egress and a tx burst; RDMA posts its open
    /// send buffers.
    fn flush_writes(&mut self) {}

    /// Shut down one or both directions; the peer sees end of stream.
    fn shutdown(&mut self, id: SocketId, how: Shutdown) -> io::Result<()>;

    /// Release the socket. Its id is dead afterwards; events still queued for it are stale.
    fn close(&mut self, id: SocketId) -> io::Result<()>;

    /// The messenger's word that the peer on `id` has authenticated (its session is ready). A stack
    /// that holds back per-connection resources from unauthenticated peers (RDMA's registered
    /// buffers) gives the connection its full share now. Called once per connection; never fails
    /// (a stack that cannot grant more carries on as it was). Default: nothing.
    fn peer_authenticated(&mut self, _id: SocketId) {}

    fn local_addr(&self, id: SocketId) -> io::Result<SocketAddr>;
    fn peer_addr(&self, id: SocketId) -> io::Result<SocketAddr>;

    /// Append what happened since the last call to `events` (see the module docs for blocking rules).
    fn poll(&mut self, events: &mut Vec<SocketEvent>, timeout: Option<Duration>) -> io::Result<()>;

    /// `true` if `poll` never blocks in the kernel and must be called in a tight loop (DPDK, RDMA).
    fn is_busy_poll(&self) -> bool {
        false
    }

    /// A handle other threads use to interrupt a blocking `poll`.
    fn waker(&self) -> Arc<dyn Wake>;

    /// Remove an established socket from this worker so another can [`WorkerStack::attach`] it.
    /// Stacks whose connections cannot move return `Unsupported`.
    fn detach(&mut self, id: SocketId) -> io::Result<Self::Handoff>;

    /// Adopt a socket detached by another worker of the same stack; it is reported ready by a later poll.
    fn attach(&mut self, handoff: Self::Handoff) -> io::Result<SocketId>;
}

/// Write as much of a gather queue as the socket takes, dropping what was written and trimming a partly
/// written front buffer. Returns the bytes written; stops early (without error) on `WouldBlock`, so an
/// edge-triggered caller waits for the next writable event when `queue` is still non-empty afterwards.
pub fn flush_queue<W: WorkerStack + ?Sized>(
    stack: &mut W,
    id: SocketId,
    queue: &mut VecDeque<Bytes>,
) -> io::Result<usize> {
    let mut total = 0;
    loop {
        // Empty buffers would make writev return 0 and look like a dead socket.
        while queue.front().is_some_and(|b| b.is_empty()) {
            queue.pop_front();
        }
        if queue.is_empty() {
            break;
        }
        let result = {
            if queue.as_slices().0.len() < MAX_IOV.min(queue.len()) {
                queue.make_contiguous(); // the ring wrapped: one run (moves handles, not bytes)
            }
            let run = queue.as_slices().0;
            stack.write_bytes(id, &run[..run.len().min(MAX_IOV)])
        };
        let written = match result {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        total += written;
        let mut left = written;
        while left > 0 {
            let Some(front) = queue.front_mut() else {
                break;
            };
            if front.len() <= left {
                left -= front.len();
                queue.pop_front();
            } else {
                front.advance(left);
                left = 0;
            }
        }
    }
    Ok(total)
}
