//! `--mode connect`: handshakes per second. `--connections` dialers at once, each: connect, the full
//! msgr2 handshake (banner, hello, auth, ident) to ready, close, and again. A handshake's latency runs
//! from the connect call to the messenger's `ms_handle_connect`.
//!
//! Invariants: every dialled connection gets its own client identity ([`Messenger::connect_new`]), so
//! each handshake is a new session, never a reconnect; warm-up handshakes are made and closed before the
//! measured ones and never recorded; one extra connection, opened first and kept, carries the stats
//! requests (the server's CPU and policy) and is not counted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use msgr::proto::types::{AddrVec, AuthEntityName};
use msgr::proto::{self, Config, Message};
use msgr::stack::NetworkStack;
use msgr::{ConnId, ConnectionRef, CountersSnapshot, Dispatcher, Messenger, MessengerConfig};

use super::cpu::CpuSnapshot;
use super::driver::{unlimited_throttles, Frames, Load, Measured, Runner, Shape};
use super::latency::{
    duration_ns, new_histogram, ServerStats, BENCH_STATS_REPLY_TYPE, BENCH_STATS_TYPE,
    STALL_TIMEOUT,
};
use super::progress::Progress;

/// How long a stats request may take before the server counts as one that does not report.
const STATS_TIMEOUT: Duration = Duration::from_secs(5);

enum Event {
    Connected(ConnId, Instant),
    Failed(String),
    Stats(Option<Box<ServerStats>>),
}

struct Watcher {
    events: Sender<Event>,
}

impl Dispatcher for Watcher {
    fn ms_dispatch(&self, _conn: &ConnectionRef, msg: Message) {
        if matches!(msg.msg_type(), BENCH_STATS_TYPE | BENCH_STATS_REPLY_TYPE) {
            let _ = self
                .events
                .send(Event::Stats(ServerStats::parse(&msg).map(Box::new)));
        } else {
            let _ = self.events.send(Event::Failed(format!(
                "unexpected message type {:#x} in connect mode",
                msg.msg_type()
            )));
        }
    }
    fn ms_handle_connect(&self, conn: &ConnectionRef) {
        let _ = self
            .events
            .send(Event::Connected(conn.id(), Instant::now()));
    }
    fn ms_handle_reset(&self, _conn: &ConnectionRef, why: &proto::Error) {
        let _ = self
            .events
            .send(Event::Failed(format!("connection reset: {why}")));
    }
    fn ms_handle_remote_reset(&self, _conn: &ConnectionRef) {
        let _ = self
            .events
            .send(Event::Failed("the server reset the session".into()));
    }
    fn ms_handle_connect_failed(&self, _conn: &ConnectionRef, why: &proto::TransportError) {
        let _ = self
            .events
            .send(Event::Failed(format!("cannot connect: {why}")));
    }
}

/// A client messenger that dials the server over and over.
pub struct Dialer<N: NetworkStack> {
    control: ConnectionRef,
    messenger: Messenger<N>,
    events: Receiver<Event>,
    target: AddrVec,
    peer_type: u8,
    shape: Shape,
    thread_prefix: String,
}

impl<N: NetworkStack> Dialer<N> {
    /// Starts the client messenger and its control connection to `server`.
    pub fn boxed(
        stack: N,
        workers: msgr::event::WorkerConfig,
        server: &AddrVec,
        shape: Shape,
        security: &super::security::Security,
    ) -> Result<Box<dyn Runner>, String> {
        let (tx, events) = crossbeam_channel::unbounded();
        let me = shape.policy.entity_type();
        let mut cfg = Config::new(me, AuthEntityName::new(me, "bench"));
        cfg.nonce = rand::random::<u32>() | 1;
        security.apply_client(&mut cfg);
        let thread_prefix = workers.name_prefix.clone();
        let mut mc = MessengerConfig::new(cfg);
        mc.workers = workers;
        unlimited_throttles(&mut mc);
        let mut messenger = Messenger::new(stack, mc, Arc::new(Watcher { events: tx }));
        if shape.policy.client_binds() {
            let ip = shape.client_ip.ok_or("no address to bind")?;
            messenger
                .bind(&[SocketAddr::new(ip, 0)])
                .map_err(|e| format!("client bind on {ip}: {e}"))?;
        }
        messenger.start().map_err(|e| format!("client: {e}"))?;
        let peer_type = security.server_type();
        let control = messenger
            .connect_new(peer_type, server, shape.policy.client())
            .map_err(|e| format!("connect: {e}"))?;
        match events.recv_timeout(STALL_TIMEOUT) {
            Ok(Event::Connected(..)) => {}
            Ok(Event::Failed(why)) => return Err(why),
            Ok(Event::Stats(_)) => return Err("connect: unexpected message".into()),
            Err(_) => return Err("connect: the first handshake did not complete".into()),
        }
        Ok(Box::new(Dialer {
            control,
            messenger,
            events,
            target: server.clone(),
            peer_type,
            shape,
            thread_prefix,
        }))
    }

    /// `goal` handshakes (or, with `until`, as many as fit before it), `shape.connections` at once;
    /// their latencies recorded when `record`.
    fn handshakes(
        &mut self,
        goal: u64,
        until: Option<Duration>,
        record: bool,
        progress: &mut Progress,
    ) -> Result<Measured, String> {
        let mut hist = new_histogram();
        let mut open: HashMap<ConnId, (ConnectionRef, Instant)> = HashMap::new();
        let started = Instant::now();
        let end = until.map(|d| started + d);
        let (mut begun, mut done) = (0u64, 0u64);
        let mut last_progress = Instant::now();
        loop {
            let more = match end {
                Some(e) => Instant::now() < e,
                None => begun < goal,
            };
            while more && open.len() < self.shape.connections && (end.is_some() || begun < goal) {
                let t0 = Instant::now();
                let c = self
                    .messenger
                    .connect_new(self.peer_type, &self.target, self.shape.policy.client())
                    .map_err(|e| format!("connect: {e}"))?;
                open.insert(c.id(), (c, t0));
                begun += 1;
            }
            if open.is_empty() {
                break;
            }
            match self.events.recv_timeout(Duration::from_millis(100)) {
                Ok(Event::Connected(id, at)) => {
                    // Not ours: the control connection (a reconnect after a fault).
                    let Some((c, t0)) = open.remove(&id) else {
                        continue;
                    };
                    if record {
                        hist.saturating_record(duration_ns(at.saturating_duration_since(t0)));
                    }
                    c.mark_down();
                    done += 1;
                    last_progress = Instant::now();
                    if record {
                        progress.update(done);
                    }
                }
                Ok(Event::Failed(why)) => return Err(why),
                Ok(Event::Stats(_)) => {}
                Err(RecvTimeoutError::Timeout) => {
                    if last_progress.elapsed() >= STALL_TIMEOUT {
                        return Err(format!(
                            "no handshake completed for {}s ({done} done, {} open)",
                            STALL_TIMEOUT.as_secs(),
                            open.len()
                        ));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Err("dispatcher is gone".into()),
            }
        }
        Ok(Measured {
            hist,
            elapsed: started.elapsed(),
            pacer_lag: None,
            client_cpu: None,
            server_cpu: None,
            client_frames: None,
        })
    }
}

impl<N: NetworkStack> Runner for Dialer<N> {
    fn run(
        &mut self,
        _msg: &Message,
        load: &Load,
        progress: &mut Progress,
    ) -> Result<Measured, String> {
        if load.rate.is_some() {
            return Err("--mode connect is closed-loop (no --rate)".into());
        }
        if load.warmup > 0 {
            self.handshakes(load.warmup, None, false, &mut Progress::new(false))?;
        }
        let server_before = self.server_stats()?;
        let client_before = CpuSnapshot::of_threads(&self.thread_prefix);
        let counters_before = self.messenger.counters();
        progress.start(load.count, load.duration);
        let m = self.handshakes(load.count, load.duration, true, progress);
        progress.finish();
        let mut m = m?;
        let counters_after = self.messenger.counters();
        let client_after = CpuSnapshot::of_threads(&self.thread_prefix);
        let server_after = self.server_stats()?;
        m.client_cpu = client_after.since(&client_before);
        m.client_frames = Some(Frames::between(&counters_before, &counters_after));
        m.server_cpu = match (server_before, server_after) {
            (Some(a), Some(b)) => b.cpu.since(&a.cpu),
            _ => None,
        };
        if m.hist.is_empty() {
            return Err("no handshake was measured".into());
        }
        Ok(m)
    }

    fn server_stats(&mut self) -> Result<Option<ServerStats>, String> {
        self.control
            .send(Message::new(BENCH_STATS_TYPE, Bytes::new()))
            .map_err(|e| format!("stats request: {e}"))?;
        let deadline = Instant::now() + STATS_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Event::Stats(s)) => return Ok(s.map(|b| *b)),
                Ok(Event::Failed(why)) => return Err(why),
                Ok(Event::Connected(..)) => {}
                Err(RecvTimeoutError::Timeout) => return Ok(None),
                Err(RecvTimeoutError::Disconnected) => return Err("dispatcher is gone".into()),
            }
        }
    }

    fn counters(&self) -> CountersSnapshot {
        self.messenger.counters()
    }

    fn shutdown(mut self: Box<Self>) {
        self.control.mark_down();
        let _ = self.messenger.shutdown();
    }
}
