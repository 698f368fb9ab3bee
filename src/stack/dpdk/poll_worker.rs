//! One poll-mode worker of the dpdk stack: a [`WorkerStack`] over one queue pair and one smoltcp
//! `Interface`.
//!
//! Owns the worker's device (queue, mempool, TX batch), its smoltcp interface and socket set, the map from
//! [`SocketId`] to smoltcp sockets, the local ports its client connections use, and the sockets still
//! closing. Each [`WorkerStack::poll`]:
//!
//! ```text
//! resets (abort_all_connections) → injected frames → rx bursts → classify / hand off / copy ARP
//!   → hand-off ring → listen pools grow for the SYNs received → smoltcp ingress + egress rounds → tx burst → socket events → reap closed sockets
//!   → (nothing happened and the loop allows it) sleep until woken, the timeout, or smoltcp's next timer
//! ```
//!
//! Invariants: the worker runs on the thread that created it (it is registered there as an EAL lcore);
//! it only ever receives segments whose 4-tuple hashes to its queue (others go to their owner's ring);
//! its client connections use local ports chosen so that replies hash back to it; ids are never reused.
//! Readiness follows the stack contract: `Ready` with `readable` whenever a socket has unread bytes (or
//! once at end of stream), `writable` once after a `writev` that could not take everything once room
//! frees up.

use std::collections::HashSet;
use std::io::{self, IoSlice};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4};
use std::ops::RangeInclusive;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TrySendError};
use smoltcp::iface::{Config as IfaceConfig, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, State};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};

use super::classify::{syn_port, DropReason, Verdict};
use super::config::DpdkConfig;
use super::device::MbufDevice;
use super::ffi::{LcoreGuard, Mbuf, BURST};
use super::listen::{ListenPool, PoolReport};
use super::stats::DpdkCounters;
use super::Shared;
use crate::msgr::loglimit::LogLimiter;
use crate::stack::{
    ConnectOptions, EventKind, ListenOptions, Readiness, SocketEvent, SocketId, TransportError,
    Wake, WorkerStack,
};

/// Local ports for client connections.
const EPHEMERAL: RangeInclusive<u16> = 49152..=65535;
/// Ports handed out for listens on port 0.
const LISTEN_AUTO: RangeInclusive<u16> = 40000..=49151;
/// A closed socket that has not finished its FIN exchange by then is reset.
const CLOSE_LINGER: Duration = Duration::from_secs(5);
/// Rx bursts per poll at most (so one flood cannot starve timers and the messenger).
const RX_BURSTS_PER_POLL: usize = 4;
/// Segments taken from the hand-off ring per poll at most.
const HANDOFF_PER_POLL: usize = 4 * BURST;
/// smoltcp sends one segment per socket per egress round; rounds per poll at most.
const EGRESS_ROUNDS: usize = 512;

/// Wakes a worker sleeping in its idle back-off.
struct ParkWaker(Thread);

impl Wake for ParkWaker {
    fn wake(&self) -> io::Result<()> {
        self.0.unpark();
        Ok(())
    }
}

struct Stream {
    handle: SocketHandle,
    peer: SocketAddrV4,
    local: SocketAddrV4,
    /// Connect in progress: its deadline and timeout, if any.
    connecting: Option<Option<(Instant, Duration)>>,
    /// A writev could not take everything: report writable when room frees up.
    write_blocked: bool,
    eof_reported: bool,
    /// The local port is ours (client connection) and returns to the pool when the socket goes.
    owns_port: bool,
}

/// A connection's (peer, local port), as the window guard keys it.
type Flow = (SocketAddrV4, u16);

enum Entry {
    Listener(ListenPool),
    Stream(Stream),
    Failed { peer: SocketAddr },
}

/// One worker's dpdk transport. Created on, and used only by, the worker's thread.
pub struct DpdkWorker {
    index: usize,
    shared: Arc<Shared>,
    device: MbufDevice,
    iface: Interface,
    sockets: SocketSet<'static>,
    entries: rustc_hash::FxHashMap<SocketId, Entry>,
    next_id: u64,
    rx_batch: Vec<Mbuf>,
    classify_scratch: Box<[u8]>,
    handoff_rx: Receiver<Mbuf>,
    inject_rx: Receiver<Vec<u8>>,
    woken: Vec<bool>,
    waker: Arc<ParkWaker>,
    counters: Arc<DpdkCounters>,
    /// Closed sockets finishing their FIN exchange: handle, reset deadline, local port to release, and
    /// the flow (peer, local port) the window guard forgets when the socket goes.
    closing: Vec<(SocketHandle, Instant, Option<u16>, Option<Flow>)>,
    ports_in_use: HashSet<u16>,
    next_port: u16,
    auto_listens: usize,
    epoch: Instant,
    abort_seen: u64,
    synthetic: Vec<SocketEvent>,
    /// SYNs per destination port in the frames waiting for smoltcp (scratch of `provision_listeners`).
    syn_ports: Vec<(u16, usize)>,
    /// Log lines about hostile traffic (impossible sources, SYN floods), rate-limited.
    hostile_log: LogLimiter,
    _lcore: LcoreGuard,
}

fn smol_duration(d: Duration) -> smoltcp::time::Duration {
    smoltcp::time::Duration::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A closed TCP socket configured per `config`, its receive buffer `recv_buffer` (else `tcp_buffer`).
fn tcp_socket(
    config: &DpdkConfig,
    nodelay: bool,
    recv_buffer: Option<usize>,
) -> tcp::Socket<'static> {
    let rx = recv_buffer
        .unwrap_or(config.tcp_buffer)
        .clamp(4096, 64 << 20);
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; rx]),
        tcp::SocketBuffer::new(vec![0; config.tcp_buffer]),
    );
    s.set_nagle_enabled(!nodelay);
    s.set_ack_delay(config.ack_delay.map(smol_duration));
    s.set_keep_alive(config.keepalive.map(smol_duration));
    s.set_timeout(config.tcp_timeout.map(smol_duration));
    s
}

/// Counts a listen pool pass; says (rate-limited) when a pool is under a SYN flood.
fn count_pool(
    worker: usize,
    port: u16,
    pool_len: usize,
    r: &PoolReport,
    counters: &DpdkCounters,
    log: &mut LogLimiter,
) {
    let add = |c: &std::sync::atomic::AtomicU64, n: usize| {
        if n > 0 {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    add(&counters.listen_pool_grown, r.grown);
    add(&counters.listen_pool_shrunk, r.shrunk);
    add(&counters.syn_received_timeouts, r.timed_out);
    add(&counters.syn_received_evicted, r.evicted);
    counters
        .listen_pool_peak
        .fetch_max(pool_len as u64, Ordering::Relaxed);
    if r.evicted > 0 || r.timed_out > 0 {
        let (log_it, suppressed) = log.allow(Instant::now());
        if log_it {
            tracing::warn!(
                worker,
                port,
                pool = pool_len,
                evicted = r.evicted,
                syn_timeouts = r.timed_out,
                suppressed,
                "half-open connections put back to LISTEN (SYN flood?)"
            );
        }
    }
}

impl DpdkWorker {
    pub(super) fn new(shared: Arc<Shared>, index: usize) -> io::Result<Self> {
        let (queue, pool) = shared
            .parts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(index)
            .and_then(Option::take)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "dpdk worker {index}: no such queue, or already taken (the port has {} queues; \
                         run as many workers)",
                        shared.port.queues()
                    ),
                )
            })?;
        let lcore = LcoreGuard::register(shared.eal)?;
        let me = std::thread::current();
        let _ = shared.threads[index].set(me.clone());
        let counters = shared.counters[index].clone();
        let config = &shared.config;
        let mut device = MbufDevice::new(
            queue,
            pool,
            config.mtu,
            shared.port.has_tx_checksum(),
            counters.clone(),
        );
        let epoch = Instant::now();
        let mut iface_config = IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(
            shared.port.mac(),
        )));
        iface_config.random_seed = rand::random();
        let mut iface = Interface::new(
            iface_config,
            &mut device,
            smoltcp::time::Instant::from_micros(0),
        );
        let cidr = IpCidr::new(IpAddress::Ipv4(config.ip), config.prefix_len);
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(cidr);
        });
        if let Some(gw) = config.gateway {
            iface
                .routes_mut()
                .add_default_ipv4_route(gw)
                .map_err(|_| io::Error::other("cannot add the default route"))?;
        }
        let span = u32::from(*EPHEMERAL.end() - *EPHEMERAL.start()) + 1;
        let next_port = *EPHEMERAL.start() + (rand::random::<u32>() % span) as u16;
        tracing::debug!(
            worker = index,
            lcore = lcore.lcore(),
            queue = device.tx.queue_mut().id(),
            "dpdk worker ready"
        );
        Ok(DpdkWorker {
            index,
            handoff_rx: shared.handoff_rx[index].clone(),
            inject_rx: shared.inject[index].1.clone(),
            woken: vec![false; shared.handoff_tx.len()],
            abort_seen: shared.abort_generation.load(Ordering::Acquire),
            shared,
            device,
            iface,
            sockets: SocketSet::new(Vec::new()),
            entries: rustc_hash::FxHashMap::default(),
            next_id: 1,
            rx_batch: Vec::with_capacity(RX_BURSTS_PER_POLL * BURST),
            classify_scratch: vec![0; 64 * 1024].into_boxed_slice(),
            waker: Arc::new(ParkWaker(me)),
            counters,
            closing: Vec::new(),
            ports_in_use: HashSet::new(),
            next_port,
            auto_listens: 0,
            epoch,
            synthetic: Vec::new(),
            syn_ports: Vec::new(),
            hostile_log: LogLimiter::new(5, Duration::from_secs(10)),
            _lcore: lcore,
        })
    }

    /// Which worker (and queue) this is.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Number of live smoltcp sockets (listening pools, streams, sockets still closing).
    pub fn socket_count(&self) -> usize {
        self.sockets.iter().count()
    }

    fn now(&self) -> smoltcp::time::Instant {
        self.smol_time(Instant::now())
    }

    /// `at` on smoltcp's clock (time since this worker began).
    fn smol_time(&self, at: Instant) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(
            i64::try_from(at.saturating_duration_since(self.epoch).as_micros()).unwrap_or(i64::MAX),
        )
    }

    fn alloc_id(&mut self) -> SocketId {
        let id = SocketId(self.next_id);
        self.next_id += 1;
        id
    }

    fn new_socket(&self, nodelay: bool, recv_buffer: Option<usize>) -> tcp::Socket<'static> {
        tcp_socket(&self.shared.config, nodelay, recv_buffer)
    }

    /// Before smoltcp sees the received frames: give every listener a free socket per SYN waiting for it.
    fn provision_listeners(&mut self) {
        self.syn_ports.clear();
        for m in &self.device.rx {
            let Some(port) = syn_port(m.data()) else {
                continue;
            };
            match self.syn_ports.iter_mut().find(|(p, _)| *p == port) {
                Some((_, n)) => *n += 1,
                None => self.syn_ports.push((port, 1)),
            }
        }
        if self.syn_ports.is_empty() {
            return;
        }
        let now = Instant::now();
        let config = &self.shared.config;
        for entry in self.entries.values_mut() {
            let Entry::Listener(pool) = entry else {
                continue;
            };
            let Some(&(_, syns)) = self.syn_ports.iter().find(|(p, _)| *p == pool.port) else {
                continue;
            };
            let nodelay = pool.nodelay();
            let mut report = PoolReport::default();
            pool.provision(
                syns,
                now,
                &mut self.sockets,
                &mut || tcp_socket(config, nodelay, None),
                &mut report,
            );
            count_pool(
                self.index,
                pool.port,
                pool.len(),
                &report,
                &self.counters,
                &mut self.hostile_log,
            );
        }
    }

    fn stream_mut(&mut self, id: SocketId, op: &'static str) -> io::Result<&mut Stream> {
        match self.entries.get_mut(&id) {
            Some(Entry::Stream(s)) => Ok(s),
            other => Err(TransportError::refused(id, op, other)),
        }
    }

    /// A local port for a connection to `remote` whose replies hash to this worker's queue.
    fn pick_port(&mut self, remote: SocketAddrV4) -> io::Result<u16> {
        let local = &self.shared.local;
        let span = u32::from(*EPHEMERAL.end() - *EPHEMERAL.start()) + 1;
        for _ in 0..span {
            let p = self.next_port;
            self.next_port = if p == *EPHEMERAL.end() {
                *EPHEMERAL.start()
            } else {
                p + 1
            };
            if self.ports_in_use.contains(&p) {
                continue;
            }
            if usize::from(local.owner(*remote.ip(), local.ip, remote.port(), p)) == self.index {
                self.ports_in_use.insert(p);
                return Ok(p);
            }
        }
        Err(TransportError::Connect {
            addr: SocketAddr::V4(remote),
            source: io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "no free local port hashes to this worker",
            ),
        }
        .into())
    }

    /// The port for this worker's next listen on port 0: the same for every worker's n-th such listen.
    fn auto_listen_port(&mut self) -> u16 {
        let n = self.auto_listens;
        self.auto_listens += 1;
        let mut ports = self
            .shared
            .listen_ports
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while ports.len() <= n {
            let span = u32::from(*LISTEN_AUTO.end() - *LISTEN_AUTO.start()) + 1;
            let p = *LISTEN_AUTO.start() + (rand::random::<u32>() % span) as u16;
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        ports[n]
    }

    /// Rx bursts, classification, hand-off. Returns the frames taken from the NIC and the ring.
    fn receive(&mut self) -> usize {
        let mut got = 0;
        for _ in 0..RX_BURSTS_PER_POLL {
            let n = self.device.tx.queue_mut().rx_burst(&mut self.rx_batch);
            got += n;
            if n < BURST {
                break;
            }
        }
        if got > 0 {
            self.counters
                .rx_packets
                .fetch_add(got as u64, Ordering::Relaxed);
        }
        let me = self.index as u16;
        let mut batch = std::mem::take(&mut self.rx_batch);
        for m in batch.drain(..) {
            let verdict = if m.segments() <= 1 {
                self.shared.local.classify(m.data(), m.rx_checksum())
            } else {
                let n = m.copy_out(&mut self.classify_scratch);
                self.shared
                    .local
                    .classify(&self.classify_scratch[..n], m.rx_checksum())
            };
            match verdict {
                Verdict::Tcp { owner } if owner == me => self.device.rx.push_back(m),
                Verdict::Tcp { owner } => self.hand_off(usize::from(owner), m),
                Verdict::Arp => {
                    for other in 0..self.woken.len() {
                        if other != self.index {
                            self.copy_to(other, &m);
                        }
                    }
                    self.device.rx.push_back(m);
                }
                Verdict::Local => self.device.rx.push_back(m),
                Verdict::Drop(reason) => {
                    self.counters.count_drop(reason);
                    tracing::trace!(worker = self.index, ?reason, "dropped frame");
                    if is_impossible_source(reason) {
                        let (log_it, suppressed) = self.hostile_log.allow(Instant::now());
                        if log_it {
                            tracing::warn!(
                                worker = self.index,
                                ?reason,
                                suppressed,
                                "dropped a frame from an impossible source address"
                            );
                        }
                    }
                }
            }
        }
        self.rx_batch = batch;
        let mut handed = 0;
        while handed < HANDOFF_PER_POLL {
            match self.handoff_rx.try_recv() {
                Ok(m) => {
                    self.device.rx.push_back(m);
                    handed += 1;
                }
                Err(_) => break,
            }
        }
        if handed > 0 {
            self.counters
                .handoff_in
                .fetch_add(handed as u64, Ordering::Relaxed);
        }
        for (w, woken) in self.woken.iter_mut().enumerate() {
            if std::mem::take(woken) {
                self.shared.wake(w);
            }
        }
        got + handed
    }

    fn hand_off(&mut self, owner: usize, m: Mbuf) {
        let Some(tx) = self.shared.handoff_tx.get(owner) else {
            return;
        };
        match tx.try_send(m) {
            Ok(()) => {
                self.counters.handoff_out.fetch_add(1, Ordering::Relaxed);
                if let Some(w) = self.woken.get_mut(owner) {
                    *w = true;
                }
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters
                    .handoff_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn copy_to(&mut self, owner: usize, m: &Mbuf) {
        let Some(mut copy) = self.device.tx.pool().alloc() else {
            return;
        };
        let n = m.pkt_len();
        let Some(buf) = copy.append(n) else {
            return;
        };
        if m.copy_out(buf) == n {
            self.counters.arp_copies.fetch_add(1, Ordering::Relaxed);
            self.hand_off(owner, copy);
        }
    }

    /// Reset every connection (fault injection).
    fn abort_streams(&mut self) {
        for entry in self.entries.values() {
            if let Entry::Stream(st) = entry {
                self.sockets.get_mut::<tcp::Socket>(st.handle).abort();
                self.counters.aborted.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Turn socket state into events (see the module docs for the readiness rules).
    fn scan(&mut self, events: &mut Vec<SocketEvent>, now: Instant) {
        let mut failed = Vec::new();
        let config = &self.shared.config;
        for (&id, entry) in self.entries.iter_mut() {
            match entry {
                Entry::Listener(pool) => {
                    let nodelay = pool.nodelay();
                    let mut report = PoolReport::default();
                    pool.maintain(
                        now,
                        &mut self.sockets,
                        &mut || tcp_socket(config, nodelay, None),
                        &mut report,
                    );
                    count_pool(
                        self.index,
                        pool.port,
                        pool.len(),
                        &report,
                        &self.counters,
                        &mut self.hostile_log,
                    );
                    if !pool.ready.is_empty() {
                        events.push(SocketEvent {
                            id,
                            kind: EventKind::Acceptable,
                        });
                    }
                }
                Entry::Stream(st) => {
                    let s = self.sockets.get_mut::<tcp::Socket>(st.handle);
                    if let Some(deadline) = st.connecting {
                        match s.state() {
                            State::SynSent | State::SynReceived => {
                                if let Some((at, timeout)) = deadline {
                                    if now >= at {
                                        s.abort();
                                        let err = TransportError::ConnectTimeout {
                                            addr: SocketAddr::V4(st.peer),
                                            timeout,
                                        };
                                        failed.push((id, err.into()));
                                    }
                                }
                            }
                            State::Closed | State::TimeWait | State::Listen => {
                                let err = TransportError::ConnectionRefused {
                                    addr: SocketAddr::V4(st.peer),
                                };
                                failed.push((id, err.into()));
                            }
                            _ => {
                                st.connecting = None;
                                events.push(SocketEvent {
                                    id,
                                    kind: EventKind::Connected,
                                });
                            }
                        }
                        continue;
                    }
                    let eof = !s.may_recv() && !st.eof_reported;
                    let readable = s.recv_queue() > 0 || eof;
                    if eof {
                        st.eof_reported = true;
                    }
                    let writable = st.write_blocked && (s.can_send() || !s.may_send());
                    if writable {
                        st.write_blocked = false;
                    }
                    if readable || writable {
                        events.push(SocketEvent::ready(id, Readiness { readable, writable }));
                    }
                }
                Entry::Failed { .. } => {}
            }
        }
        for (id, err) in failed {
            if let Some(Entry::Stream(st)) = self.entries.remove(&id) {
                let port = st.owns_port.then_some(st.local.port());
                let flow = Some((st.peer, st.local.port()));
                self.closing.push((st.handle, now, port, flow));
                self.entries.insert(
                    id,
                    Entry::Failed {
                        peer: SocketAddr::V4(st.peer),
                    },
                );
                events.push(SocketEvent {
                    id,
                    kind: EventKind::ConnectFailed(err),
                });
            }
        }
    }

    /// Drop sockets that finished closing; reset those past their linger deadline.
    fn reap(&mut self, now: Instant) {
        if self.closing.is_empty() {
            return;
        }
        let sockets = &mut self.sockets;
        let ports = &mut self.ports_in_use;
        let window = &self.device.window;
        self.closing.retain(|&(h, deadline, port, flow)| {
            let s = sockets.get_mut::<tcp::Socket>(h);
            match s.state() {
                State::Closed | State::TimeWait => {
                    sockets.remove(h);
                    if let Some(p) = port {
                        ports.remove(&p);
                    }
                    if let Some((peer, local_port)) = flow {
                        window.borrow_mut().forget(peer, local_port);
                    }
                    false
                }
                _ => {
                    if now >= deadline {
                        s.abort();
                    }
                    true
                }
            }
        });
    }

    /// smoltcp's egress rounds (segments and ACKs the sockets owe), then one tx burst of what they built.
    fn egress(&mut self, now: smoltcp::time::Instant) {
        for _ in 0..EGRESS_ROUNDS {
            if self
                .iface
                .poll_egress(now, &mut self.device, &mut self.sockets)
                == PollResult::None
            {
                break;
            }
        }
        self.device.tx.flush();
    }

    fn idle_sleep(&mut self, timeout: Option<Duration>) {
        let Some(timeout) = timeout.filter(|t| !t.is_zero()) else {
            return;
        };
        let now = self.now();
        let until_smoltcp = self
            .iface
            .poll_delay(now, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()));
        let sleep = until_smoltcp.map_or(timeout, |d| d.min(timeout));
        if !sleep.is_zero() {
            self.counters.idle_sleeps.fetch_add(1, Ordering::Relaxed);
            std::thread::park_timeout(sleep);
        }
    }
}

impl WorkerStack for DpdkWorker {
    /// DPDK connections never move between workers: RSS decides the queue.
    type Handoff = std::convert::Infallible;

    fn listen(&mut self, addr: SocketAddr, opts: &ListenOptions) -> io::Result<SocketId> {
        let SocketAddr::V4(v4) = addr else {
            return Err(TransportError::AddrNotAvailable { addr }.into());
        };
        if !v4.ip().is_unspecified() && *v4.ip() != self.shared.config.ip {
            return Err(TransportError::AddrNotAvailable { addr }.into());
        }
        let port = if v4.port() == 0 {
            self.auto_listen_port()
        } else {
            v4.port()
        };
        let taken = self
            .entries
            .values()
            .any(|e| matches!(e, Entry::Listener(pool) if pool.port == port));
        if taken {
            return Err(TransportError::AddrInUse { addr }.into());
        }
        let config = &self.shared.config;
        let size = usize::try_from(opts.backlog)
            .unwrap_or(usize::MAX)
            .clamp(1, config.listen_pool.max(1));
        let nodelay = opts.nodelay;
        let pool = ListenPool::new(
            port,
            nodelay,
            size,
            config.listen_pool_max,
            config.syn_timeout,
            &mut self.sockets,
            &mut || tcp_socket(config, nodelay, None),
        );
        if pool.len() == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot listen on port {port}"),
            ));
        }
        let id = self.alloc_id();
        tracing::debug!(worker = self.index, %id, port, backlog = size, "listening");
        self.entries.insert(id, Entry::Listener(pool));
        Ok(id)
    }

    fn connect(&mut self, addr: SocketAddr, opts: &ConnectOptions) -> io::Result<SocketId> {
        let SocketAddr::V4(remote) = addr else {
            return Err(TransportError::Unreachable {
                addr,
                source: io::Error::new(io::ErrorKind::Unsupported, "the dpdk stack is IPv4 only"),
            }
            .into());
        };
        let local_port = self.pick_port(remote)?;
        let mut s = self.new_socket(opts.nodelay, opts.recv_buffer);
        let endpoint = IpEndpoint::new(IpAddress::Ipv4(*remote.ip()), remote.port());
        if let Err(e) = s.connect(self.iface.context(), endpoint, local_port) {
            self.ports_in_use.remove(&local_port);
            return Err(TransportError::Connect {
                addr,
                source: io::Error::new(io::ErrorKind::InvalidInput, e.to_string()),
            }
            .into());
        }
        let handle = self.sockets.add(s);
        let id = self.alloc_id();
        tracing::debug!(worker = self.index, %id, %addr, local_port, "connecting");
        self.entries.insert(
            id,
            Entry::Stream(Stream {
                handle,
                peer: remote,
                local: SocketAddrV4::new(self.shared.config.ip, local_port),
                connecting: Some(opts.timeout.map(|t| (Instant::now() + t, t))),
                write_blocked: false,
                eof_reported: false,
                owns_port: true,
            }),
        );
        Ok(id)
    }

    fn accept(&mut self, listener: SocketId) -> io::Result<Option<(SocketId, SocketAddr)>> {
        let handle = match self.entries.get_mut(&listener) {
            Some(Entry::Listener(pool)) => match pool.ready.pop_front() {
                Some(h) => h,
                None => return Ok(None),
            },
            other => return Err(TransportError::refused(listener, "accept", other)),
        };
        let s = self.sockets.get::<tcp::Socket>(handle);
        let endpoint_v4 = |e: Option<IpEndpoint>| match e {
            Some(IpEndpoint {
                addr: IpAddress::Ipv4(ip),
                port,
            }) => SocketAddrV4::new(ip, port),
            _ => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        };
        let peer = endpoint_v4(s.remote_endpoint());
        let local = endpoint_v4(s.local_endpoint());
        let id = self.alloc_id();
        tracing::debug!(worker = self.index, %listener, %id, %peer, "accepted");
        self.entries.insert(
            id,
            Entry::Stream(Stream {
                handle,
                peer,
                local,
                connecting: None,
                write_blocked: false,
                eof_reported: false,
                owns_port: false,
            }),
        );
        self.synthetic.push(SocketEvent::ready(id, Readiness::BOTH));
        Ok(Some((id, SocketAddr::V4(peer))))
    }

    fn read(&mut self, id: SocketId, buf: &mut [u8]) -> io::Result<usize> {
        let st = self.stream_mut(id, "read")?;
        if st.connecting.is_some() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let handle = st.handle;
        let s = self.sockets.get_mut::<tcp::Socket>(handle);
        if s.can_recv() {
            return match s.recv_slice(buf) {
                Ok(0) if !buf.is_empty() => Err(io::ErrorKind::WouldBlock.into()),
                Ok(n) => Ok(n),
                Err(tcp::RecvError::Finished) => Ok(0),
                Err(tcp::RecvError::InvalidState) => Err(io::ErrorKind::NotConnected.into()),
            };
        }
        if !s.may_recv() {
            return Ok(0);
        }
        Err(io::ErrorKind::WouldBlock.into())
    }

    fn writev(&mut self, id: SocketId, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let st = self.stream_mut(id, "writev")?;
        if st.connecting.is_some() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let handle = st.handle;
        let s = self.sockets.get_mut::<tcp::Socket>(handle);
        if !s.may_send() {
            let kind = if s.state() == State::Closed {
                io::ErrorKind::ConnectionReset
            } else {
                io::ErrorKind::BrokenPipe
            };
            return Err(kind.into());
        }
        let mut total = 0;
        let wanted: usize = bufs.iter().map(|b| b.len()).sum();
        for b in bufs {
            if b.is_empty() {
                continue;
            }
            let n = s
                .send_slice(b)
                .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
            total += n;
            if n < b.len() {
                break;
            }
        }
        if total < wanted {
            if let Ok(st) = self.stream_mut(id, "writev") {
                st.write_blocked = true;
            }
        }
        if total == 0 && wanted > 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(total)
    }

    fn flush_writes(&mut self) {
        let now = self.now();
        self.egress(now);
    }

    fn shutdown(&mut self, id: SocketId, how: Shutdown) -> io::Result<()> {
        let handle = self.stream_mut(id, "shutdown")?.handle;
        if how != Shutdown::Read {
            self.sockets.get_mut::<tcp::Socket>(handle).close();
        }
        Ok(())
    }

    fn close(&mut self, id: SocketId) -> io::Result<()> {
        let entry = self
            .entries
            .remove(&id)
            .ok_or(TransportError::UnknownSocket(id))?;
        let deadline = Instant::now() + CLOSE_LINGER;
        match entry {
            Entry::Stream(st) => {
                let s = self.sockets.get_mut::<tcp::Socket>(st.handle);
                if st.connecting.is_some() || s.recv_queue() > 0 {
                    // Unread data or a half-open connect: reset, as the kernel does.
                    s.abort();
                } else {
                    s.close();
                }
                let port = st.owns_port.then_some(st.local.port());
                let flow = Some((st.peer, st.local.port()));
                self.closing.push((st.handle, deadline, port, flow));
            }
            Entry::Listener(pool) => {
                for h in pool.close(&mut self.sockets) {
                    self.sockets.get_mut::<tcp::Socket>(h).abort();
                    // Aborted: the RST it sends ends its flow in the window guard.
                    self.closing.push((h, deadline, None, None));
                }
            }
            Entry::Failed { .. } => {}
        }
        tracing::trace!(worker = self.index, %id, "closed");
        Ok(())
    }

    fn local_addr(&self, id: SocketId) -> io::Result<SocketAddr> {
        match self.entries.get(&id) {
            Some(Entry::Listener(pool)) => Ok(SocketAddr::V4(SocketAddrV4::new(
                self.shared.config.ip,
                pool.port,
            ))),
            Some(Entry::Stream(st)) => Ok(SocketAddr::V4(st.local)),
            other => Err(TransportError::refused(id, "local_addr", other)),
        }
    }

    fn peer_addr(&self, id: SocketId) -> io::Result<SocketAddr> {
        match self.entries.get(&id) {
            Some(Entry::Stream(st)) => Ok(SocketAddr::V4(st.peer)),
            Some(Entry::Failed { peer }) => Ok(*peer),
            other => Err(TransportError::refused(id, "peer_addr", other)),
        }
    }

    fn poll(&mut self, events: &mut Vec<SocketEvent>, timeout: Option<Duration>) -> io::Result<()> {
        let before = events.len();
        let mut activity = false;
        let generation = self.shared.abort_generation.load(Ordering::Acquire);
        if generation != self.abort_seen {
            self.abort_seen = generation;
            self.abort_streams();
            activity = true;
        }
        while let Ok(frame) = self.inject_rx.try_recv() {
            self.device.tx.send_raw(&frame);
            activity = true;
        }
        activity |= self.receive() > 0;
        self.provision_listeners();
        // One clock read per poll: smoltcp's, the connect deadlines' and the closing sockets'.
        let clock = Instant::now();
        let now = self.smol_time(clock);
        if self.iface.poll(now, &mut self.device, &mut self.sockets)
            == PollResult::SocketStateChanged
        {
            activity = true;
        }
        self.egress(now);
        events.append(&mut self.synthetic);
        self.scan(events, clock);
        self.reap(clock);
        if !activity && events.len() == before && self.device.tx.pending() == 0 {
            self.idle_sleep(timeout);
        }
        Ok(())
    }

    fn is_busy_poll(&self) -> bool {
        true
    }

    fn waker(&self) -> Arc<dyn Wake> {
        self.waker.clone()
    }

    fn detach(&mut self, id: SocketId) -> io::Result<Self::Handoff> {
        if !self.entries.contains_key(&id) {
            return Err(TransportError::UnknownSocket(id).into());
        }
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "dpdk connections cannot move between workers (RSS decides the queue)",
        ))
    }

    fn attach(&mut self, handoff: Self::Handoff) -> io::Result<SocketId> {
        match handoff {}
    }
}

fn is_impossible_source(reason: DropReason) -> bool {
    matches!(
        reason,
        DropReason::SrcBroadcast
            | DropReason::SrcMulticast
            | DropReason::SrcOurs
            | DropReason::SrcThisNetwork
            | DropReason::SrcLoopback
            | DropReason::SrcReserved
    )
}
