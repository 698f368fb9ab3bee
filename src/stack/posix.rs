//! The posix stack: kernel TCP through mio (epoll on Linux), IPv4 and IPv6.
//!
//! Owns one `mio::Poll` per worker, the worker's listeners and streams (keyed by [`SocketId`], which doubles
//! as the mio `Token`), the pending-connect deadlines, and the `mio::Waker`. Sockets are created with socket2
//! so options mio lacks can be set before `bind`/`connect` (`SO_REUSEADDR`, backlog, `TCP_NODELAY`,
//! `SO_RCVBUF`, `IPV6_V6ONLY`).
//!
//! Invariants: every socket is registered for both directions, edge-triggered, once (no re-registration on
//! the data path); token 0 is the waker and ids start at 1; writes use `sendmsg(MSG_NOSIGNAL)` so a peer
//! reset is `EPIPE`, never `SIGPIPE`; a connect past its deadline is reported as
//! [`TransportError::ConnectTimeout`] by the `poll` that notices it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, IoSlice, Read};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use rustc_hash::FxHashMap;
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

use super::{
    ConnectOptions, EventKind, ListenOptions, NetworkStack, Readiness, SocketEvent, SocketId,
    TransportError, Wake, WorkerStack,
};

const WAKER_TOKEN: Token = Token(0);
/// Capacity of the mio event buffer: events handled per poll call at most.
const EVENTS_PER_POLL: usize = 1024;

/// Kernel TCP. One listening worker hands accepted sockets to others (`per_worker_listen` is `false`).
#[derive(Clone, Debug, Default)]
pub struct PosixStack {}

impl PosixStack {
    pub fn new() -> Self {
        PosixStack {}
    }
}

impl NetworkStack for PosixStack {
    type Worker = PosixWorker;

    fn name(&self) -> &'static str {
        "posix"
    }

    fn new_worker(&self, index: usize) -> io::Result<PosixWorker> {
        PosixWorker::new(index)
    }

    fn per_worker_listen(&self) -> bool {
        false
    }
}

/// A stream moving between posix workers.
#[derive(Debug)]
pub struct PosixHandoff {
    stream: TcpStream,
    peer: SocketAddr,
    hangup: bool,
}

struct MioWake(mio::Waker);

impl Wake for MioWake {
    fn wake(&self) -> io::Result<()> {
        self.0.wake()
    }
}

enum Entry {
    Listener {
        listener: TcpListener,
        opts: ListenOptions,
    },
    Connecting {
        stream: TcpStream,
        peer: SocketAddr,
        timeout: Option<Duration>,
    },
    Stream {
        stream: TcpStream,
        peer: SocketAddr,
        /// The peer's FIN or an error was seen: a short read no longer means drained (EOF is behind it).
        hangup: bool,
    },
    /// A connect that failed; kept until the owner closes the id.
    Failed { peer: SocketAddr },
}

/// One worker's posix transport.
pub struct PosixWorker {
    index: usize,
    poll: Poll,
    mio_events: Events,
    /// Keyed by our own ids: FxHash, not SipHash.
    sockets: FxHashMap<SocketId, Entry>,
    next_id: u64,
    waker: Arc<MioWake>,
    /// Connect deadlines; entries whose socket is no longer connecting are skipped lazily.
    connect_deadlines: BinaryHeap<Reverse<(Instant, SocketId)>>,
    /// Events made up by the stack itself (connected at once, attached), delivered by the next poll.
    synthetic: Vec<SocketEvent>,
}

impl PosixWorker {
    pub fn new(index: usize) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(MioWake(mio::Waker::new(poll.registry(), WAKER_TOKEN)?));
        Ok(PosixWorker {
            index,
            poll,
            mio_events: Events::with_capacity(EVENTS_PER_POLL),
            sockets: FxHashMap::default(),
            next_id: 1,
            waker,
            connect_deadlines: BinaryHeap::new(),
            synthetic: Vec::new(),
        })
    }

    /// Which worker this is (as given to [`NetworkStack::new_worker`]).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Number of open ids (listeners, streams, pending or failed connects).
    pub fn socket_count(&self) -> usize {
        self.sockets.len()
    }

    fn alloc_id(&mut self) -> SocketId {
        let id = SocketId(self.next_id);
        self.next_id += 1;
        id
    }

    fn entry(&self, id: SocketId) -> io::Result<&Entry> {
        self.sockets
            .get(&id)
            .ok_or_else(|| TransportError::UnknownSocket(id).into())
    }

    fn entry_mut(&mut self, id: SocketId) -> io::Result<&mut Entry> {
        self.sockets
            .get_mut(&id)
            .ok_or_else(|| TransportError::UnknownSocket(id).into())
    }

    /// Gives `stream` a new id and registers it for reading and writing under that id.
    fn register_stream_io(&mut self, stream: &mut TcpStream) -> io::Result<SocketId> {
        let id = self.alloc_id();
        self.poll.registry().register(
            stream,
            token(id),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        Ok(id)
    }

    fn register_stream(
        &mut self,
        mut stream: TcpStream,
        peer: SocketAddr,
        hangup: bool,
    ) -> io::Result<SocketId> {
        let id = self.register_stream_io(&mut stream)?;
        self.sockets.insert(
            id,
            Entry::Stream {
                stream,
                peer,
                hangup,
            },
        );
        Ok(id)
    }

    /// Turn a pending connect into `Connected` or `ConnectFailed` if the kernel has decided.
    fn check_connect(&mut self, id: SocketId, events: &mut Vec<SocketEvent>) {
        let Some(Entry::Connecting { stream, peer, .. }) = self.sockets.get(&id) else {
            return;
        };
        let peer = *peer;
        let outcome = match stream.take_error() {
            Ok(Some(err)) | Err(err) => Err(connect_error(peer, err)),
            Ok(None) => match stream.peer_addr() {
                Ok(_) => Ok(()),
                Err(err) if err.kind() == io::ErrorKind::NotConnected => return, // still in progress
                Err(err) => Err(connect_error(peer, err)),
            },
        };
        self.finish_connect(id, outcome, events);
    }

    fn finish_connect(
        &mut self,
        id: SocketId,
        outcome: io::Result<()>,
        events: &mut Vec<SocketEvent>,
    ) {
        let Some(entry) = self.sockets.remove(&id) else {
            return;
        };
        let Entry::Connecting {
            mut stream, peer, ..
        } = entry
        else {
            self.sockets.insert(id, entry);
            return;
        };
        match outcome {
            Ok(()) => {
                tracing::debug!(worker = self.index, %id, %peer, "connected");
                self.sockets.insert(
                    id,
                    Entry::Stream {
                        stream,
                        peer,
                        hangup: false,
                    },
                );
                events.push(SocketEvent {
                    id,
                    kind: EventKind::Connected,
                });
            }
            Err(err) => {
                tracing::debug!(worker = self.index, %id, %peer, error = %err, "connect failed");
                let _ = self.poll.registry().deregister(&mut stream);
                self.sockets.insert(id, Entry::Failed { peer });
                events.push(SocketEvent {
                    id,
                    kind: EventKind::ConnectFailed(err),
                });
            }
        }
    }

    fn expire_connects(&mut self, now: Instant, events: &mut Vec<SocketEvent>) {
        while let Some(Reverse((deadline, id))) = self.connect_deadlines.peek().copied() {
            if deadline > now {
                break;
            }
            self.connect_deadlines.pop();
            if let Some(Entry::Connecting {
                peer,
                timeout: Some(timeout),
                ..
            }) = self.sockets.get(&id)
            {
                let err = TransportError::ConnectTimeout {
                    addr: *peer,
                    timeout: *timeout,
                }
                .into();
                self.finish_connect(id, Err(err), events);
            }
        }
    }

    fn next_connect_deadline(&mut self) -> Option<Instant> {
        // Drop deadlines of sockets that are no longer connecting so they do not shorten the poll.
        while let Some(Reverse((deadline, id))) = self.connect_deadlines.peek().copied() {
            if matches!(self.sockets.get(&id), Some(Entry::Connecting { .. })) {
                return Some(deadline);
            }
            self.connect_deadlines.pop();
        }
        None
    }
}

fn token(id: SocketId) -> Token {
    // Ids count up from 1 and never reach usize::MAX on a 64-bit target in practice; saturate otherwise.
    Token(usize::try_from(id.0).unwrap_or(usize::MAX))
}

fn new_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Map a connect failure to a typed error naming `addr`.
fn connect_error(addr: SocketAddr, err: io::Error) -> io::Error {
    use io::ErrorKind as K;
    if super::transport_error(&err).is_some() {
        return err;
    }
    let typed = match err.kind() {
        K::ConnectionRefused => TransportError::ConnectionRefused { addr },
        K::HostUnreachable | K::NetworkUnreachable => {
            TransportError::Unreachable { addr, source: err }
        }
        _ => TransportError::Connect { addr, source: err },
    };
    typed.into()
}

fn listen_error(addr: SocketAddr, err: io::Error) -> io::Error {
    match err.kind() {
        io::ErrorKind::AddrInUse => TransportError::AddrInUse { addr }.into(),
        io::ErrorKind::AddrNotAvailable => TransportError::AddrNotAvailable { addr }.into(),
        _ => TransportError::Listen { addr, source: err }.into(),
    }
}

impl WorkerStack for PosixWorker {
    type Handoff = PosixHandoff;

    fn listen(&mut self, addr: SocketAddr, opts: &ListenOptions) -> io::Result<SocketId> {
        let socket = new_socket(addr).map_err(|e| listen_error(addr, e))?;
        let setup = || -> io::Result<()> {
            socket.set_reuse_address(opts.reuse_addr)?;
            if addr.is_ipv6() {
                socket.set_only_v6(opts.only_v6)?;
            }
            socket.bind(&SockAddr::from(addr))?;
            // The kernel caps the backlog at net.core.somaxconn anyway.
            socket.listen(i32::try_from(opts.backlog).unwrap_or(i32::MAX))
        };
        setup().map_err(|e| listen_error(addr, e))?;
        let mut listener = TcpListener::from_std(socket.into());
        let id = self.alloc_id();
        self.poll
            .registry()
            .register(&mut listener, token(id), Interest::READABLE)?;
        let local = listener.local_addr()?;
        tracing::debug!(worker = self.index, %id, %local, backlog = opts.backlog, "listening");
        self.sockets.insert(
            id,
            Entry::Listener {
                listener,
                opts: opts.clone(),
            },
        );
        Ok(id)
    }

    fn connect(&mut self, addr: SocketAddr, opts: &ConnectOptions) -> io::Result<SocketId> {
        let socket = new_socket(addr).map_err(|e| connect_error(addr, e))?;
        socket.set_tcp_nodelay(opts.nodelay)?;
        if let Some(size) = opts.recv_buffer {
            socket.set_recv_buffer_size(size)?;
        }
        let in_progress = match socket.connect(&SockAddr::from(addr)) {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
            Err(e) => return Err(connect_error(addr, e)),
        };
        let mut stream = TcpStream::from_std(socket.into());
        let id = self.register_stream_io(&mut stream)?;
        self.sockets.insert(
            id,
            Entry::Connecting {
                stream,
                peer: addr,
                timeout: opts.timeout,
            },
        );
        if in_progress {
            if let Some(timeout) = opts.timeout {
                self.connect_deadlines
                    .push(Reverse((Instant::now() + timeout, id)));
            }
        } else {
            let mut done = Vec::new();
            self.finish_connect(id, Ok(()), &mut done);
            self.synthetic.append(&mut done);
        }
        Ok(id)
    }

    fn accept(&mut self, listener: SocketId) -> io::Result<Option<(SocketId, SocketAddr)>> {
        let (stream, peer, opts) = loop {
            let Entry::Listener { listener: l, opts } = self.entry(listener)? else {
                return Err(TransportError::WrongState {
                    id: listener,
                    op: "accept",
                }
                .into());
            };
            match l.accept() {
                Ok((stream, peer)) => break (stream, peer, opts.clone()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The peer gave up before we accepted; try the next one.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => return Err(e),
            }
        };
        stream.set_nodelay(opts.nodelay)?;
        if let Some(size) = opts.recv_buffer {
            SockRef::from(&stream).set_recv_buffer_size(size)?;
        }
        let id = self.register_stream(stream, peer, false)?;
        tracing::debug!(worker = self.index, %listener, %id, %peer, "accepted");
        self.synthetic.push(SocketEvent::ready(id, Readiness::BOTH));
        Ok(Some((id, peer)))
    }

    fn read(&mut self, id: SocketId, buf: &mut [u8]) -> io::Result<usize> {
        match self.entry_mut(id)? {
            Entry::Stream { stream, .. } => stream.read(buf),
            Entry::Connecting { .. } => Err(io::ErrorKind::WouldBlock.into()),
            Entry::Listener { .. } | Entry::Failed { .. } => {
                Err(TransportError::WrongState { id, op: "read" }.into())
            }
        }
    }

    fn read_into(
        &mut self,
        id: SocketId,
        buf: &mut bytes::BytesMut,
        max: usize,
        _scratch: &mut [u8],
    ) -> io::Result<usize> {
        match self.entry_mut(id)? {
            Entry::Stream { stream, .. } => {
                super::sys::recv_into(SockRef::from(&*stream), buf, max)
            }
            Entry::Connecting { .. } => Err(io::ErrorKind::WouldBlock.into()),
            Entry::Listener { .. } | Entry::Failed { .. } => {
                Err(TransportError::WrongState { id, op: "read" }.into())
            }
        }
    }

    /// epoll is edge-triggered here (mio), and a TCP socket that returned less than asked had no more
    /// at that moment: anything later raises a new edge. Not after the peer's FIN was seen: its edge
    /// came already, and only another read finds the EOF behind the data.
    fn short_read_drains(&self, id: SocketId) -> bool {
        matches!(
            self.sockets.get(&id),
            Some(Entry::Stream { hangup: false, .. })
        )
    }

    fn writev(&mut self, id: SocketId, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self.entry(id)? {
            Entry::Stream { stream, .. } => {
                SockRef::from(stream).send_vectored_with_flags(bufs, libc::MSG_NOSIGNAL)
            }
            Entry::Connecting { .. } => Err(io::ErrorKind::WouldBlock.into()),
            Entry::Listener { .. } | Entry::Failed { .. } => {
                Err(TransportError::WrongState { id, op: "writev" }.into())
            }
        }
    }

    fn shutdown(&mut self, id: SocketId, how: Shutdown) -> io::Result<()> {
        match self.entry(id)? {
            Entry::Stream { stream, .. } | Entry::Connecting { stream, .. } => {
                match stream.shutdown(how) {
                    // Already shut down or reset by the peer: the goal is reached.
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
                    other => other,
                }
            }
            Entry::Listener { .. } | Entry::Failed { .. } => {
                Err(TransportError::WrongState { id, op: "shutdown" }.into())
            }
        }
    }

    fn close(&mut self, id: SocketId) -> io::Result<()> {
        let entry = self
            .sockets
            .remove(&id)
            .ok_or(TransportError::UnknownSocket(id))?;
        let registry = self.poll.registry();
        match entry {
            Entry::Listener { mut listener, .. } => registry.deregister(&mut listener)?,
            Entry::Connecting { mut stream, .. } | Entry::Stream { mut stream, .. } => {
                registry.deregister(&mut stream)?
            }
            Entry::Failed { .. } => {}
        }
        tracing::trace!(worker = self.index, %id, "closed");
        Ok(())
    }

    fn local_addr(&self, id: SocketId) -> io::Result<SocketAddr> {
        match self.entry(id)? {
            Entry::Listener { listener, .. } => listener.local_addr(),
            Entry::Connecting { stream, .. } | Entry::Stream { stream, .. } => stream.local_addr(),
            Entry::Failed { .. } => Err(TransportError::WrongState {
                id,
                op: "local_addr",
            }
            .into()),
        }
    }

    fn peer_addr(&self, id: SocketId) -> io::Result<SocketAddr> {
        match self.entry(id)? {
            Entry::Connecting { peer, .. }
            | Entry::Stream { peer, .. }
            | Entry::Failed { peer } => Ok(*peer),
            Entry::Listener { .. } => Err(TransportError::WrongState {
                id,
                op: "peer_addr",
            }
            .into()),
        }
    }

    fn poll(&mut self, events: &mut Vec<SocketEvent>, timeout: Option<Duration>) -> io::Result<()> {
        let mut timeout = if self.synthetic.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        if let Some(deadline) = self.next_connect_deadline() {
            let until = deadline.saturating_duration_since(Instant::now());
            timeout = Some(timeout.map_or(until, |t| t.min(until)));
        }
        match self.poll.poll(&mut self.mio_events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => self.mio_events.clear(),
            Err(e) => return Err(e),
        }
        events.append(&mut self.synthetic);
        let mut connecting = Vec::new();
        for event in self.mio_events.iter() {
            if event.token() == WAKER_TOKEN {
                continue;
            }
            let id = SocketId(event.token().0 as u64);
            match self.sockets.get_mut(&id) {
                Some(Entry::Listener { .. }) => events.push(SocketEvent {
                    id,
                    kind: EventKind::Acceptable,
                }),
                Some(Entry::Stream { hangup, .. }) => {
                    let failed = event.is_error();
                    *hangup |= failed || event.is_read_closed();
                    let readiness = Readiness {
                        readable: failed || event.is_readable() || event.is_read_closed(),
                        writable: failed || event.is_writable() || event.is_write_closed(),
                    };
                    if !readiness.is_empty() {
                        events.push(SocketEvent::ready(id, readiness));
                    }
                }
                Some(Entry::Connecting { .. }) => {
                    connecting.push((id, event.is_error() || event.is_read_closed()))
                }
                Some(Entry::Failed { .. }) | None => {}
            }
        }
        for (id, hup) in connecting {
            self.check_connect(id, events);
            if let Some(Entry::Stream { hangup, .. }) = self.sockets.get_mut(&id) {
                *hangup |= hup;
            }
        }
        self.expire_connects(Instant::now(), events);
        Ok(())
    }

    fn waker(&self) -> Arc<dyn Wake> {
        self.waker.clone()
    }

    fn detach(&mut self, id: SocketId) -> io::Result<PosixHandoff> {
        match self.sockets.remove(&id) {
            Some(Entry::Stream {
                mut stream,
                peer,
                hangup,
            }) => {
                self.poll.registry().deregister(&mut stream)?;
                Ok(PosixHandoff {
                    stream,
                    peer,
                    hangup,
                })
            }
            Some(other) => {
                self.sockets.insert(id, other);
                Err(TransportError::WrongState { id, op: "detach" }.into())
            }
            None => Err(TransportError::UnknownSocket(id).into()),
        }
    }

    fn attach(&mut self, handoff: PosixHandoff) -> io::Result<SocketId> {
        let id = self.register_stream(handoff.stream, handoff.peer, handoff.hangup)?;
        // The previous owner may have consumed the last edge; make the new owner look.
        self.synthetic.push(SocketEvent::ready(id, Readiness::BOTH));
        Ok(id)
    }
}
