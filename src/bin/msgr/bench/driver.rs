//! The client side of every messenger benchmark: a set of connections to one server, each with a window of
//! messages in flight, driven closed-loop (the next message goes out when a reply comes back) or paced
//! open-loop (`--rate`: messages are due at fixed intended times).
//!
//! The three modes are loads on this one driver ([`Load`]): latency is one connection with a window of one,
//! echoed; throughput is one or more connections with a wider window, streamed (the server answers each
//! message with an empty ack); fan-in is many connections (each its own client identity, through
//! [`Messenger::connect_new`]) with a window of one, echoed.
//!
//! Invariants:
//! - replies on a connection come back in the order their messages were sent (one session, in order), so
//!   the k-th reply on a connection answers its k-th message;
//! - closed loop: a message's latency runs from its send to its reply; paced: from its *intended* send
//!   time, so a stall that delays later sends is charged to them (coordinated omission);
//! - histograms are allocated before a run with fixed bounds; recording never allocates; per-connection
//!   send times live in a ring allocated once with the window's capacity;
//! - warm-up messages (the first `warmup` of the run, spread round-robin over the connections) are sent
//!   and answered like the others, in a phase of their own that ends when all are answered; they are
//!   never recorded and do not count in `elapsed` nor in the CPU figures, which are sampled (client:
//!   its worker threads in /proc; server: through a stats request, [`ServerStats`]) around the measured
//!   phase only;
//! - the session policy is the shape's (`--policy`); every throttle the bench does not measure is
//!   unlimited (send budget, dispatch throttle, receive throttles); the read budget keeps its default;
//! - all sending and recording happens on the client messenger's worker threads, inside the dispatcher,
//!   except the first window of each connection and, when paced, the sends the pacer makes due.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use hdrhistogram::Histogram;

use msgr::proto::types::{AddrVec, AuthEntityName};
use msgr::proto::{self, Config, Message};
use msgr::stack::NetworkStack;
use msgr::{ConnId, ConnectionRef, CountersSnapshot, Dispatcher, Messenger, MessengerConfig};

use super::cpu::{CpuSnapshot, CpuTime};
use super::latency::{
    check_echo, duration_ns, new_histogram, ServerStats, BENCH_STATS_REPLY_TYPE, BENCH_STATS_TYPE,
    STALL_TIMEOUT,
};
use super::policy::BenchPolicy;
use super::progress::Progress;
use super::{BENCH_ACK_TYPE, BENCH_MSG_TYPE, BENCH_STREAM_TYPE};

/// Most histograms recorded into at once (connections share them round-robin).
const MAX_HIST_SHARDS: usize = 8;

/// How the server answers each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    /// The server sends the message back (payload crosses the wire both ways).
    Echo,
    /// The server answers with an empty ack (payload crosses one way).
    Stream,
}

impl Traffic {
    /// The message type the client sends for this traffic.
    pub fn msg_type(self) -> u16 {
        match self {
            Traffic::Echo => BENCH_MSG_TYPE,
            Traffic::Stream => BENCH_STREAM_TYPE,
        }
    }

    /// Directions the payload crosses per message (for Gbit/s).
    pub fn directions(self) -> u32 {
        match self {
            Traffic::Echo => 2,
            Traffic::Stream => 1,
        }
    }
}

/// One size's run: how many messages, how fast.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// Messages before measuring (not recorded), over all connections.
    pub warmup: u64,
    /// Messages measured, over all connections; ignored when `duration` is set.
    pub count: u64,
    /// Measure for this long instead of a fixed count.
    pub duration: Option<Duration>,
    /// Paced: messages per second over all connections, sent at intended times.
    pub rate: Option<f64>,
}

/// What one size's run measured.
pub struct Measured {
    /// Latencies in ns, warm-up excluded.
    pub hist: Histogram<u64>,
    /// First measured send (paced: its intended time) to last measured reply.
    pub elapsed: Duration,
    /// Paced: the latest the pacer made a message due after its intended time (the load generator's
    /// own lag; already charged to the latencies).
    pub pacer_lag: Option<Duration>,
    /// CPU the client's worker threads used over the measured phase.
    pub client_cpu: Option<CpuTime>,
    /// CPU the server's worker threads used over the measured phase, if the server reports it.
    pub server_cpu: Option<CpuTime>,
    /// Frames the client messenger sent and received over the measured phase.
    pub client_frames: Option<Frames>,
}

/// Frames a messenger sent and received over an interval (its counters' difference).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Frames {
    pub sent: u64,
    pub received: u64,
    /// Bare ACK frames among those sent.
    pub acks_sent: u64,
}

impl Frames {
    pub fn between(before: &CountersSnapshot, after: &CountersSnapshot) -> Self {
        Frames {
            sent: after.frames_out.saturating_sub(before.frames_out),
            received: after.frames_in.saturating_sub(before.frames_in),
            acks_sent: after.acks_out.saturating_sub(before.acks_out),
        }
    }
}

/// How long a stats request may take before the server counts as one that does not report.
const STATS_TIMEOUT: Duration = Duration::from_secs(5);

/// What the driver tells the bench thread.
enum DriverEvent {
    Connected,
    Done,
    Failed(String),
    /// The answer to a stats request (`None`: the server echoed it, it does not report).
    Stats(Option<Box<ServerStats>>),
}

/// One connection's share of a run.
struct Slot {
    index: usize,
    msg: Message,
    /// Messages to send this run, warm-up included (`u64::MAX` until stopped when duration-bound).
    total: u64,
    /// The first `warm` replies are not recorded.
    warm: u64,
    sent: u64,
    acked: u64,
    /// Closed loop: send times of the messages in flight (capacity = window; never grows).
    sent_at: VecDeque<Instant>,
    /// Paced: messages whose intended time has come.
    due: u64,
    /// Paced: intended time of message 0 of the whole run, and the interval between messages.
    pace: Option<(Instant, f64)>,
    first_measured: Option<Instant>,
    last_reply: Option<Instant>,
    done: bool,
}

impl Slot {
    /// Intended send time of this connection's `k`-th message: global message `k * conns + index`.
    fn intended(&self, k: u64, conns: usize) -> Option<Instant> {
        let (origin, interval) = self.pace?;
        let global = k as f64 * conns as f64 + self.index as f64;
        Some(origin + Duration::from_secs_f64(global * interval))
    }
}

/// The client messenger's dispatcher.
struct Driver {
    traffic: Traffic,
    window: usize,
    conns: usize,
    index: OnceLock<HashMap<ConnId, usize>>,
    slots: Vec<Mutex<Slot>>,
    hists: Vec<Mutex<Histogram<u64>>>,
    /// Duration reached: send nothing new.
    stop: AtomicBool,
    /// Nothing is being measured: a reply now is a protocol error.
    running: AtomicBool,
    replies: AtomicU64,
    recorded: AtomicU64,
    slots_done: AtomicUsize,
    events: Sender<DriverEvent>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Driver {
    fn fail(&self, why: String) {
        self.running.store(false, Ordering::Release);
        let _ = self.events.send(DriverEvent::Failed(why));
    }

    /// Sends what the window, the plan and (paced) the schedule allow on `slot`.
    fn pump(&self, s: &mut Slot, conn: &ConnectionRef) -> Result<(), String> {
        while s.sent - s.acked < self.window as u64
            && s.sent < s.total
            && !self.stop.load(Ordering::Relaxed)
            && (s.pace.is_none() || s.sent < s.due)
        {
            let now = Instant::now();
            if s.pace.is_none() {
                s.sent_at.push_back(now);
            }
            if s.sent == s.warm && s.first_measured.is_none() {
                s.first_measured = Some(s.intended(s.sent, self.conns).unwrap_or(now));
            }
            s.sent += 1;
            conn.send(s.msg.clone()).map_err(|e| format!("send: {e}"))?;
        }
        Ok(())
    }

    /// Marks `slot` done if everything it will send has been answered.
    fn check_done(&self, s: &mut Slot) {
        let finished = s.sent == s.total || self.stop.load(Ordering::Relaxed);
        if !s.done && finished && s.acked == s.sent {
            s.done = true;
            if self.slots_done.fetch_add(1, Ordering::AcqRel) + 1 == self.conns {
                self.running.store(false, Ordering::Release);
                let _ = self.events.send(DriverEvent::Done);
            }
        }
    }

    fn on_reply(&self, conn: &ConnectionRef, msg: &Message, now: Instant) -> Result<(), String> {
        let j = self
            .index
            .get()
            .and_then(|m| m.get(&conn.id()))
            .copied()
            .ok_or("a reply on a connection the benchmark did not open")?;
        let mut s = lock(&self.slots[j]);
        if !self.running.load(Ordering::Acquire) || s.acked >= s.sent {
            return Err("a reply arrived with no message in flight".into());
        }
        let expect = match self.traffic {
            Traffic::Echo => (BENCH_MSG_TYPE, s.msg.payload_len()),
            Traffic::Stream => (BENCH_ACK_TYPE, 0),
        };
        if (msg.msg_type(), msg.payload_len()) != expect {
            return Err(format!(
                "reply does not match: type {:#x}, {} bytes (expected type {:#x}, {} bytes)",
                msg.msg_type(),
                msg.payload_len(),
                expect.0,
                expect.1
            ));
        }
        let k = s.acked;
        s.acked += 1;
        let start = match s.intended(k, self.conns) {
            Some(t) => t,
            None => s
                .sent_at
                .pop_front()
                .ok_or("send time missing for a reply")?,
        };
        if k >= s.warm {
            if k == s.warm && self.traffic == Traffic::Echo {
                check_echo(&s.msg, msg)?;
            }
            let shard = &self.hists[j % self.hists.len()];
            lock(shard).saturating_record(duration_ns(now.saturating_duration_since(start)));
            s.last_reply = Some(now);
            self.recorded.fetch_add(1, Ordering::Relaxed);
        }
        self.pump(&mut s, conn)?;
        self.check_done(&mut s);
        Ok(())
    }
}

impl Dispatcher for Driver {
    fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) {
        let now = Instant::now();
        if matches!(msg.msg_type(), BENCH_STATS_TYPE | BENCH_STATS_REPLY_TYPE) {
            let stats = ServerStats::parse(&msg).map(Box::new);
            let _ = self.events.send(DriverEvent::Stats(stats));
            return;
        }
        self.replies.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.on_reply(conn, &msg, now) {
            self.fail(e);
        }
    }

    fn ms_handle_connect(&self, _conn: &ConnectionRef) {
        let _ = self.events.send(DriverEvent::Connected);
    }

    fn ms_handle_reset(&self, _conn: &ConnectionRef, why: &proto::Error) {
        self.fail(format!("connection reset: {why}"));
    }

    fn ms_handle_remote_reset(&self, _conn: &ConnectionRef) {
        self.fail("the server reset the session".into());
    }

    fn ms_handle_connect_failed(
        &self,
        _conn: &ConnectionRef,
        reason: &msgr::proto::TransportError,
    ) {
        self.fail(format!("cannot connect: {reason}"));
    }
}

/// The connections' shape, fixed for the client's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub connections: usize,
    pub window: usize,
    pub traffic: Traffic,
    pub policy: BenchPolicy,
    /// The address the client binds when its policy needs one (lossless-peer), port 0.
    pub client_ip: Option<IpAddr>,
}

/// A connected client, whatever its stack: what [`super::run_to`] drives size after size.
pub trait Runner {
    /// Runs one size; see [`Client::run`].
    fn run(
        &mut self,
        msg: &Message,
        load: &Load,
        progress: &mut Progress,
    ) -> Result<Measured, String>;
    /// The server's stats now (`None`: it does not report them).
    fn server_stats(&mut self) -> Result<Option<ServerStats>, String>;
    /// The client messenger's counters.
    fn counters(&self) -> CountersSnapshot;
    /// Closes the connections and stops the messenger.
    fn shutdown(self: Box<Self>);
}

impl<N: NetworkStack> Runner for Client<N> {
    fn run(
        &mut self,
        msg: &Message,
        load: &Load,
        progress: &mut Progress,
    ) -> Result<Measured, String> {
        Client::run(self, msg, load, progress)
    }
    fn server_stats(&mut self) -> Result<Option<ServerStats>, String> {
        Client::server_stats(self)
    }
    fn counters(&self) -> CountersSnapshot {
        self.messenger.counters()
    }
    fn shutdown(self: Box<Self>) {
        Client::shutdown(*self)
    }
}

/// A client messenger with its connections open to one server.
pub struct Client<N: NetworkStack> {
    // Field order is drop order: connections, then the messenger.
    conns: Vec<ConnectionRef>,
    messenger: Messenger<N>,
    driver: Arc<Driver>,
    events: Receiver<DriverEvent>,
    /// Its worker threads' name prefix (for their CPU counters).
    thread_prefix: String,
}

impl<N: NetworkStack> Client<N> {
    /// Starts a client messenger on `stack` and opens `shape.connections` sessions to `server` (each its
    /// own client identity when there is more than one), waiting for every handshake.
    pub fn connect(
        stack: N,
        workers: msgr::event::WorkerConfig,
        server: &AddrVec,
        shape: Shape,
        security: &super::security::Security,
    ) -> Result<Self, String> {
        if shape.connections == 0 || shape.window == 0 {
            return Err("connections and window must be at least 1".into());
        }
        let (tx, events) = crossbeam_channel::unbounded();
        let driver = Arc::new(Driver {
            traffic: shape.traffic,
            window: shape.window,
            conns: shape.connections,
            index: OnceLock::new(),
            slots: (0..shape.connections)
                .map(|index| {
                    Mutex::new(Slot {
                        index,
                        msg: Message::new(shape.traffic.msg_type(), bytes::Bytes::new()),
                        total: 0,
                        warm: 0,
                        sent: 0,
                        acked: 0,
                        sent_at: VecDeque::with_capacity(shape.window),
                        due: 0,
                        pace: None,
                        first_measured: None,
                        last_reply: None,
                        done: true,
                    })
                })
                .collect(),
            hists: (0..shape.connections.min(MAX_HIST_SHARDS))
                .map(|_| Mutex::new(new_histogram()))
                .collect(),
            stop: AtomicBool::new(false),
            running: AtomicBool::new(false),
            replies: AtomicU64::new(0),
            recorded: AtomicU64::new(0),
            slots_done: AtomicUsize::new(0),
            events: tx,
        });
        // The entity type tells the server the policy (bench::policy).
        let me = shape.policy.entity_type();
        let mut cfg = Config::new(me, AuthEntityName::new(me, "bench"));
        cfg.nonce = rand::random::<u32>() | 1;
        security.apply_client(&mut cfg);
        let peer_type = security.server_type();
        let thread_prefix = workers.name_prefix.clone();
        let mut mc = MessengerConfig::new(cfg);
        mc.workers = workers;
        unlimited_throttles(&mut mc);
        let mut messenger = Messenger::new(stack, mc, driver.clone());
        if shape.policy.client_binds() {
            let ip = shape
                .client_ip
                .ok_or_else(|| format!("--policy {}: no address to bind", shape.policy.name()))?;
            messenger
                .bind(&[SocketAddr::new(ip, 0)])
                .map_err(|e| format!("client bind on {ip}: {e}"))?;
        }
        messenger.start().map_err(|e| format!("client: {e}"))?;
        let mut conns = Vec::with_capacity(shape.connections);
        let policy = shape.policy.client();
        for _ in 0..shape.connections {
            let c = if shape.connections == 1 {
                messenger.connect_to(peer_type, server, policy)
            } else {
                messenger.connect_new(peer_type, server, policy)
            };
            conns.push(c.map_err(|e| format!("connect: {e}"))?);
        }
        let index: HashMap<ConnId, usize> =
            conns.iter().enumerate().map(|(i, c)| (c.id(), i)).collect();
        if index.len() != conns.len() {
            return Err("the messenger returned one connection twice".into());
        }
        let _ = driver.index.set(index);
        // Handshakes: generous for hundreds of connections on a loaded machine.
        let limit = STALL_TIMEOUT + Duration::from_millis(20 * shape.connections as u64);
        let deadline = Instant::now() + limit;
        let mut connected = 0;
        while connected < shape.connections {
            let left = deadline.saturating_duration_since(Instant::now());
            match events.recv_timeout(left) {
                Ok(DriverEvent::Connected) => connected += 1,
                Ok(DriverEvent::Failed(why)) => return Err(why),
                Ok(DriverEvent::Done | DriverEvent::Stats(_)) => {
                    return Err("connect: unexpected reply".into())
                }
                Err(_) => {
                    return Err(format!(
                        "connect: {connected} of {} handshakes completed within {:.0}s (if the \
                         server closes every attempt, name it with its nonce, v2:IP:PORT/NONCE, \
                         as it prints it)",
                        shape.connections,
                        limit.as_secs_f64()
                    ))
                }
            }
        }
        Ok(Client {
            conns,
            messenger,
            driver,
            events,
            thread_prefix,
        })
    }

    /// [`Client::connect`], boxed as a [`Runner`].
    pub fn boxed(
        stack: N,
        workers: msgr::event::WorkerConfig,
        server: &AddrVec,
        shape: Shape,
        security: &super::security::Security,
    ) -> Result<Box<dyn Runner>, String> {
        Ok(Box::new(Self::connect(
            stack, workers, server, shape, security,
        )?))
    }

    /// Runs one size: `load.warmup` unrecorded messages (a phase of their own), then `load.count` (or
    /// `load.duration` worth) recorded ones, spread round-robin over the connections, with the CPU
    /// both sides used in the measured phase.
    pub fn run(
        &mut self,
        msg: &Message,
        load: &Load,
        progress: &mut Progress,
    ) -> Result<Measured, String> {
        let n = self.driver.conns as u64;
        if load.duration.is_none() && load.count < n {
            return Err(format!(
                "--count {} is less than the {n} connections",
                load.count
            ));
        }
        if load.warmup > 0 {
            let warm = Load {
                warmup: load.warmup,
                count: 0,
                duration: None,
                rate: load.rate,
            };
            self.phase(msg, &warm, &mut Progress::new(false))?;
        }
        let server_before = self.server_stats()?;
        let client_before = CpuSnapshot::of_threads(&self.thread_prefix);
        let counters_before = self.messenger.counters();
        let measured = Load { warmup: 0, ..*load };
        let m = self.phase(msg, &measured, progress)?;
        let counters_after = self.messenger.counters();
        let client_after = CpuSnapshot::of_threads(&self.thread_prefix);
        let server_after = self.server_stats()?;
        let mut m = m.ok_or("no message was measured")?;
        m.client_cpu = client_after.since(&client_before);
        m.client_frames = Some(Frames::between(&counters_before, &counters_after));
        m.server_cpu = match (server_before, server_after) {
            (Some(a), Some(b)) => b.cpu.since(&a.cpu),
            _ => None,
        };
        Ok(m)
    }

    /// Asks the server for its stats on the first connection (between phases: nothing in flight).
    pub fn server_stats(&mut self) -> Result<Option<ServerStats>, String> {
        let conn = self.conns.first().ok_or("no connection")?;
        conn.send(Message::new(BENCH_STATS_TYPE, bytes::Bytes::new()))
            .map_err(|e| format!("stats request: {e}"))?;
        let deadline = Instant::now() + STATS_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(DriverEvent::Stats(s)) => return Ok(s.map(|b| *b)),
                Ok(DriverEvent::Failed(why)) => return Err(why),
                Ok(DriverEvent::Connected | DriverEvent::Done) => {}
                Err(RecvTimeoutError::Timeout) => return Ok(None),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err("client dispatcher is gone".into())
                }
            }
        }
    }

    /// One phase: `load.warmup` unrecorded then `load.count` (or `load.duration` worth) recorded
    /// messages. `None` when nothing was to be recorded (a warm-up phase).
    fn phase(
        &mut self,
        msg: &Message,
        load: &Load,
        progress: &mut Progress,
    ) -> Result<Option<Measured>, String> {
        let d = &self.driver;
        let n = d.conns as u64;
        let interval = match load.rate {
            Some(r) if r.is_finite() && r > 0.0 => Some(1.0 / r),
            Some(r) => return Err(format!("bad rate {r}")),
            None => None,
        };
        let total = load.warmup.saturating_add(load.count);
        // Paced runs start a little ahead so that every slot is ready before message 0 is due.
        let origin = Instant::now() + Duration::from_millis(2);
        d.stop.store(false, Ordering::Relaxed);
        d.replies.store(0, Ordering::Relaxed);
        d.recorded.store(0, Ordering::Relaxed);
        d.slots_done.store(0, Ordering::Relaxed);
        for h in &d.hists {
            lock(h).reset();
        }
        for (j, slot) in d.slots.iter().enumerate() {
            let mut s = lock(slot);
            let share = |all: u64| all / n + u64::from((j as u64) < all % n);
            s.msg = msg.clone();
            s.warm = share(load.warmup);
            s.total = if load.duration.is_some() {
                u64::MAX
            } else {
                share(total)
            };
            s.sent = 0;
            s.acked = 0;
            s.sent_at.clear();
            s.due = 0;
            s.pace = interval.map(|i| (origin, i));
            s.first_measured = None;
            s.last_reply = None;
            s.done = false;
        }
        d.running.store(true, Ordering::Release);
        let measured_goal = load.duration.map_or(load.count, |_| 0);
        progress.start(load.count, load.duration);

        let mut pacer_lag = None;
        let outcome = match interval {
            None => {
                for (slot, conn) in d.slots.iter().zip(&self.conns) {
                    let mut s = lock(slot);
                    d.pump(&mut s, conn)?;
                    // A connection with no share of this phase is done at once.
                    d.check_done(&mut s);
                }
                let deadline = load.duration.map(|dur| (dur, None));
                self.wait(deadline, progress)
            }
            Some(interval) => self
                .pace(origin, interval, load, progress)
                .map(|lag| pacer_lag = Some(lag)),
        };
        progress.finish();
        outcome?;
        if load.count == 0 && load.duration.is_none() {
            return Ok(None);
        }

        let mut hist = new_histogram();
        for h in &d.hists {
            hist.add(&*lock(h))
                .map_err(|e| format!("merging histograms: {e}"))?;
        }
        let mut first: Option<Instant> = None;
        let mut last: Option<Instant> = None;
        for slot in &d.slots {
            let s = lock(slot);
            first = match (first, s.first_measured) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            last = match (last, s.last_reply) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
        let (Some(first), Some(last)) = (first, last) else {
            return Err("no message was measured".into());
        };
        if measured_goal > 0 && hist.len() != measured_goal {
            return Err(format!(
                "recorded {} latencies, expected {measured_goal}",
                hist.len()
            ));
        }
        Ok(Some(Measured {
            hist,
            elapsed: last.saturating_duration_since(first),
            pacer_lag,
            client_cpu: None,
            server_cpu: None,
            client_frames: None,
        }))
    }

    /// Paced sending: message `i` (over all connections) is due at `origin + i * interval`. Returns the
    /// pacer's largest lag behind the schedule.
    fn pace(
        &self,
        origin: Instant,
        interval: f64,
        load: &Load,
        progress: &mut Progress,
    ) -> Result<Duration, String> {
        let d = &self.driver;
        let n = d.conns;
        let end = load
            .duration
            .map(|dur| origin + Duration::from_secs_f64(load.warmup as f64 * interval) + dur);
        let total = load.warmup.saturating_add(load.count);
        let mut i: u64 = 0;
        let mut last_check = Instant::now();
        let mut lag = Duration::ZERO;
        loop {
            let due_at = origin + Duration::from_secs_f64(i as f64 * interval);
            if end.is_some_and(|e| due_at >= e) || (end.is_none() && i >= total) {
                break;
            }
            let now = Instant::now();
            if due_at > now {
                std::thread::sleep((due_at - now).min(Duration::from_millis(50)));
                continue;
            }
            lag = lag.max(now - due_at);
            let j = (i % n as u64) as usize;
            {
                let mut s = lock(&d.slots[j]);
                s.due += 1;
                d.pump(&mut s, &self.conns[j])?;
            }
            i += 1;
            if now.duration_since(last_check) >= Duration::from_millis(100) {
                last_check = now;
                self.check_events(progress)?;
            }
        }
        // Everything due is sent or queued behind the window (the dispatcher sends the rest as replies
        // free it): what remains is to wait for the replies.
        for slot in &d.slots {
            let mut s = lock(slot);
            s.total = s.due;
            d.check_done(&mut s);
        }
        self.wait(None, progress).map(|()| lag)
    }

    /// Polls for progress and errors without blocking.
    fn check_events(&self, progress: &mut Progress) -> Result<(), String> {
        progress.update(self.driver.recorded.load(Ordering::Relaxed));
        while let Ok(ev) = self.events.try_recv() {
            match ev {
                DriverEvent::Failed(why) => return Err(why),
                DriverEvent::Connected | DriverEvent::Done | DriverEvent::Stats(_) => {}
            }
        }
        Ok(())
    }

    /// Waits until every connection is done (stopping new sends at the deadline, if any).
    fn wait(
        &self,
        mut deadline: Option<(Duration, Option<Instant>)>,
        progress: &mut Progress,
    ) -> Result<(), String> {
        let d = &self.driver;
        let mut seen = d.replies.load(Ordering::Relaxed);
        let mut last_progress = Instant::now();
        loop {
            // The measured phase begins when the first measured message goes out.
            if let Some((dur, None)) = deadline {
                let started = d.slots.iter().filter_map(|s| lock(s).first_measured).min();
                if let Some(t) = started {
                    deadline = Some((dur, Some(t + dur)));
                }
            }
            if let Some((_, Some(end))) = deadline {
                if Instant::now() >= end && !d.stop.swap(true, Ordering::Relaxed) {
                    for slot in &d.slots {
                        d.check_done(&mut lock(slot));
                    }
                }
            }
            match self.events.recv_timeout(Duration::from_millis(100)) {
                Ok(DriverEvent::Done) => return Ok(()),
                Ok(DriverEvent::Failed(why)) => return Err(why),
                Ok(DriverEvent::Connected | DriverEvent::Stats(_)) => {}
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err("client dispatcher is gone".into())
                }
            }
            progress.update(d.recorded.load(Ordering::Relaxed));
            let now_seen = d.replies.load(Ordering::Relaxed);
            if now_seen != seen {
                seen = now_seen;
                last_progress = Instant::now();
            } else if last_progress.elapsed() >= STALL_TIMEOUT {
                d.running.store(false, Ordering::Release);
                return Err(format!(
                    "no reply for {}s ({} messages answered; client counters: {:?})",
                    STALL_TIMEOUT.as_secs(),
                    now_seen,
                    self.messenger.counters()
                ));
            }
        }
    }

    /// Closes the connections and stops the messenger.
    pub fn shutdown(mut self) {
        for c in &self.conns {
            c.mark_down();
        }
        let _ = self.messenger.shutdown();
    }
}

/// Every throttle the bench does not measure, unlimited: the window bounds what is in flight. The read
/// budget (a fairness knob between connections of one worker) keeps its default.
pub fn unlimited_throttles(mc: &mut MessengerConfig) {
    mc.send_budget_bytes = 0;
    mc.send_budget_msgs = 0;
    mc.dispatch_throttle_bytes = 0;
    mc.recv_throttles = Vec::new();
}
