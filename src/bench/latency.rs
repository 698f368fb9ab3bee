//! Latency mode: ping-pong with exactly one message in flight, over the posix stack on loopback (a server
//! messenger and a client messenger in this process) or over the in-memory [`Sim`] pair (no sockets,
//! no threads: the cost of the protocol core alone).
//!
//! Invariants: the echo side sends back the very `Bytes` it received (no copy); round-trip times go into
//! a histogram allocated before the first sample (recording never allocates); warm-up round trips are
//! not recorded and not timed; the last echo of each size is compared byte for byte with what was sent.
//!
//! Over posix the ping-pong is driven from the client's dispatcher (on its worker thread): the reply
//! arrives, its round trip is recorded and the next message is sent, so the figures are the
//! messenger's, without a hand-off to an application thread per message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use hdrhistogram::Histogram;

use crate::msgr::{ConnectionRef, Dispatcher, Messenger, MessengerConfig};
use crate::proto::frame::{FrameEncoder, Segment, Tag};
use crate::proto::message::SEGMENT_ALIGNMENTS;
use crate::proto::sim::Sim;
use crate::proto::types::{entity_type, AddrVec, AuthEntityName, EntityAddr};
use crate::proto::{self, Config, Message, Policy};
use crate::stack::posix::PosixStack;

/// The message type of benchmark messages (not a Ceph message type).
pub const BENCH_MSG_TYPE: u16 = 0x7ff0;

/// Longest round trip a histogram records exactly; longer ones are recorded as this.
const HIST_MAX_NS: u64 = 60_000_000_000;

/// A run fails if no reply arrives for this long.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Most sim steps one message may take (a 32 MiB message needs ~130 at 256 KiB per step).
const SIM_STEP_LIMIT: usize = 100_000;

/// What one size's run measured.
pub struct Measured {
    /// Round-trip times in ns, warm-up excluded.
    pub hist: Histogram<u64>,
    /// First measured send to last measured reply.
    pub elapsed: Duration,
}

/// An empty histogram for round-trip times in ns, allocated up front: 1 ns .. 60 s at 3 significant
/// digits, fixed bounds, so recording never resizes it (longer times saturate at 60 s).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("constant histogram bounds are valid")
}

/// The benchmark message of `size` payload bytes (in the data segment, like object data).
pub fn bench_message(size: usize) -> Message {
    let payload: Bytes = (0..size).map(|i| (i.wrapping_mul(31) >> 3) as u8).collect();
    Message::new(BENCH_MSG_TYPE, Bytes::new()).with_data(payload)
}

/// Bytes of `msg`'s MESSAGE frame on the wire, crc mode (what one direction of a round trip carries).
pub fn wire_bytes(msg: &Message) -> usize {
    let segs = msg.segments();
    let segments: Vec<Segment> = segs
        .iter()
        .zip(SEGMENT_ALIGNMENTS)
        .map(|(data, align)| Segment::new(data.clone(), align))
        .collect();
    let mut out = Vec::new();
    match FrameEncoder::new().encode(Tag::Message, &segments, &mut out) {
        Ok(()) => out.iter().map(Bytes::len).sum(),
        Err(_) => 0,
    }
}

/// An echo server's dispatcher: every message goes back on its connection, the same `Bytes`, no copy.
#[derive(Debug, Default)]
pub struct EchoDispatcher;

impl Dispatcher for EchoDispatcher {
    fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) {
        if let Err(e) = conn.send(msg) {
            tracing::debug!(conn = conn.id(), error = %e, "echo: reply not sent");
        }
    }
    fn ms_handle_accept(&self, conn: &ConnectionRef) {
        tracing::info!(conn = conn.id(), peer = %conn.peer().addrs, "accepted");
    }
    fn ms_handle_reset(&self, conn: &ConnectionRef, why: &proto::Error) {
        tracing::info!(conn = conn.id(), reason = %why, "session ended");
    }
}

// ---------------------------------------------------------------- in memory

/// The in-memory pair: a client and a server `Connection` wired back to back.
pub struct MemPingPong {
    sim: Sim,
}

impl MemPingPong {
    /// Builds the pair and completes the handshake.
    pub fn new() -> Result<Self, String> {
        let server_addr = EntityAddr::msgr2(std::net::SocketAddr::from(([127, 0, 0, 1], 6800)), 1);
        let mut server = Config::new(entity_type::OSD, AuthEntityName::new(entity_type::OSD, "0"));
        server.my_addrs = AddrVec(vec![server_addr.clone()]);
        server.default_policy = Policy::stateless_server();
        let mut client = Config::new(
            entity_type::CLIENT,
            AuthEntityName::new(entity_type::CLIENT, "bench"),
        );
        client.my_addrs = AddrVec(vec![EntityAddr::msgr2(
            std::net::SocketAddr::from(([127, 0, 0, 1], 40000)),
            2,
        )]);
        let mut sim = Sim::new(
            Arc::new(client),
            Policy::lossy_client(),
            Arc::new(server),
            server_addr,
            Instant::now(),
        );
        // Deliver what one posix read would: up to the messenger's 256 KiB read buffer per step.
        sim.max_chunk = 256 * 1024;
        if !sim.run_until(10_000, |s| s.client.is_ready()) {
            return Err("in-memory handshake did not complete".into());
        }
        Ok(MemPingPong { sim })
    }

    /// `warmup` untimed round trips, then `count` timed ones, of `msg`.
    pub fn run(&mut self, msg: &Message, warmup: u64, count: u64) -> Result<Measured, String> {
        let mut hist = new_histogram();
        for _ in 0..warmup {
            self.round_trip(msg)?;
        }
        let start = Instant::now();
        let mut last = None;
        for _ in 0..count {
            let t0 = Instant::now();
            let echoed = self.round_trip(msg)?;
            hist.saturating_record(duration_ns(t0.elapsed()));
            last = Some(echoed);
        }
        let elapsed = start.elapsed();
        if let Some(echoed) = last {
            check_echo(msg, &echoed)?;
        }
        Ok(Measured { hist, elapsed })
    }

    fn round_trip(&mut self, msg: &Message) -> Result<Message, String> {
        let sim = &mut self.sim;
        sim.client
            .send(sim.now, msg.clone())
            .map_err(|e| format!("in-memory client: {e}"))?;
        if !sim.run_until(SIM_STEP_LIMIT, |s| !s.server_inbox.is_empty()) {
            return Err("in-memory server did not receive the message".into());
        }
        let Some(got) = sim.server_inbox.pop() else {
            return Err("in-memory server inbox is empty".into());
        };
        let now = sim.now;
        sim.server()
            .ok_or("in-memory server connection is gone")?
            .send(now, got)
            .map_err(|e| format!("in-memory server: {e}"))?;
        if !sim.run_until(SIM_STEP_LIMIT, |s| !s.client_inbox.is_empty()) {
            return Err("in-memory client did not receive the echo".into());
        }
        sim.client_inbox
            .pop()
            .ok_or_else(|| "in-memory client inbox is empty".into())
    }
}

// ---------------------------------------------------------------- posix loopback

/// What the pinging dispatcher tells the bench thread.
enum PingEvent {
    Connected,
    Done,
    Failed(String),
}

/// The ping-pong in progress (touched by the client's worker, and by the bench thread between sizes).
struct PingState {
    msg: Message,
    warmup_left: u64,
    measured_left: u64,
    sent_at: Instant,
    started: Option<Instant>,
    finished: Option<Instant>,
    hist: Histogram<u64>,
    running: bool,
}

/// The client side's dispatcher: records each round trip and sends the next message.
struct Pinger {
    state: Mutex<PingState>,
    events: Sender<PingEvent>,
    /// Replies received, for stall detection.
    replies: AtomicU64,
}

impl Pinger {
    fn fail(&self, why: String) {
        let _ = self.events.send(PingEvent::Failed(why));
    }
}

impl Dispatcher for Pinger {
    fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) {
        let now = Instant::now();
        self.replies.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !st.running {
            return self.fail("a reply arrived with no message in flight".into());
        }
        if msg.msg_type() != BENCH_MSG_TYPE || msg.payload_len() != st.msg.payload_len() {
            st.running = false;
            return self.fail(format!(
                "echo does not match: type {:#x}, {} bytes (sent {} bytes)",
                msg.msg_type(),
                msg.payload_len(),
                st.msg.payload_len()
            ));
        }
        let rtt = now.saturating_duration_since(st.sent_at);
        if st.warmup_left > 0 {
            st.warmup_left -= 1;
        } else {
            st.hist.saturating_record(duration_ns(rtt));
            st.measured_left = st.measured_left.saturating_sub(1);
        }
        if st.warmup_left == 0 && st.measured_left == 0 {
            st.running = false;
            st.finished = Some(now);
            let verdict = check_echo(&st.msg, &msg);
            drop(st);
            match verdict {
                Ok(()) => {
                    let _ = self.events.send(PingEvent::Done);
                }
                Err(e) => self.fail(e),
            }
            return;
        }
        let next = st.msg.clone();
        let sent_at = Instant::now();
        if st.warmup_left == 0 && st.started.is_none() {
            st.started = Some(sent_at);
        }
        st.sent_at = sent_at;
        if let Err(e) = conn.send(next) {
            st.running = false;
            drop(st);
            self.fail(format!("send: {e}"));
        }
    }

    fn ms_handle_connect(&self, _conn: &ConnectionRef) {
        let _ = self.events.send(PingEvent::Connected);
    }

    fn ms_handle_reset(&self, _conn: &ConnectionRef, why: &proto::Error) {
        self.fail(format!("connection reset: {why}"));
    }

    fn ms_handle_remote_reset(&self, _conn: &ConnectionRef) {
        self.fail("the server reset the session".into());
    }
}

/// A server messenger (echo) and a client messenger in this process, connected over loopback TCP.
pub struct PosixPingPong {
    // Field order is drop order: the client goes first so the server sees an orderly close.
    conn: ConnectionRef,
    client: Messenger<PosixStack>,
    server: Messenger<PosixStack>,
    pinger: Arc<Pinger>,
    events: Receiver<PingEvent>,
}

impl PosixPingPong {
    /// Starts both messengers (`workers` threads each) on 127.0.0.1 and completes the handshake.
    pub fn new(workers: usize) -> Result<Self, String> {
        let mut scfg = Config::new(entity_type::OSD, AuthEntityName::new(entity_type::OSD, "0"));
        scfg.nonce = rand::random::<u32>() | 1;
        scfg.default_policy = Policy::stateless_server();
        let mut smc = MessengerConfig::new(scfg);
        smc.workers.threads = workers;
        smc.workers.name_prefix = "bench-server".into();
        let mut server = Messenger::new(PosixStack::new(), smc, Arc::new(EchoDispatcher));
        server
            .bind(&[std::net::SocketAddr::from(([127, 0, 0, 1], 0))])
            .map_err(|e| format!("server: {e}"))?;
        server.start().map_err(|e| format!("server: {e}"))?;

        let (tx, events) = crossbeam_channel::unbounded();
        let pinger = Arc::new(Pinger {
            state: Mutex::new(PingState {
                msg: bench_message(0),
                warmup_left: 0,
                measured_left: 0,
                sent_at: Instant::now(),
                started: None,
                finished: None,
                hist: new_histogram(),
                running: false,
            }),
            events: tx,
            replies: AtomicU64::new(0),
        });
        let mut ccfg = Config::new(
            entity_type::CLIENT,
            AuthEntityName::new(entity_type::CLIENT, "bench"),
        );
        ccfg.nonce = rand::random::<u32>() | 1;
        let mut cmc = MessengerConfig::new(ccfg);
        cmc.workers.threads = workers;
        cmc.workers.name_prefix = "bench-client".into();
        let mut client = Messenger::new(PosixStack::new(), cmc, pinger.clone());
        client.start().map_err(|e| format!("client: {e}"))?;
        let conn = client
            .connect_to(entity_type::OSD, server.my_addrs(), Policy::lossy_client())
            .map_err(|e| format!("connect: {e}"))?;
        match events.recv_timeout(STALL_TIMEOUT) {
            Ok(PingEvent::Connected) => {}
            Ok(PingEvent::Failed(why)) => return Err(format!("connect: {why}")),
            Ok(PingEvent::Done) => return Err("connect: unexpected reply".into()),
            Err(_) => {
                return Err(format!(
                    "connect: no handshake within {}s",
                    STALL_TIMEOUT.as_secs()
                ))
            }
        }
        Ok(PosixPingPong {
            conn,
            client,
            server,
            pinger,
            events,
        })
    }

    /// `warmup` untimed round trips, then `count` timed ones, of `msg`.
    pub fn run(&mut self, msg: &Message, warmup: u64, count: u64) -> Result<Measured, String> {
        if count == 0 {
            return Err("count must be at least 1".into());
        }
        {
            let mut st = self.pinger.state.lock().unwrap_or_else(|e| e.into_inner());
            st.msg = msg.clone();
            st.warmup_left = warmup;
            st.measured_left = count;
            st.started = None;
            st.finished = None;
            st.hist.reset();
            st.running = true;
            let now = Instant::now();
            if warmup == 0 {
                st.started = Some(now);
            }
            st.sent_at = now;
            // Sent under the lock: the reply's dispatch waits until the state above is in place.
            self.conn
                .send(msg.clone())
                .map_err(|e| format!("send: {e}"))?;
        }
        let mut seen = self.pinger.replies.load(Ordering::Relaxed);
        let mut last_progress = Instant::now();
        loop {
            match self.events.recv_timeout(Duration::from_millis(500)) {
                Ok(PingEvent::Done) => break,
                Ok(PingEvent::Failed(why)) => return Err(why),
                Ok(PingEvent::Connected) => {}
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    let now_seen = self.pinger.replies.load(Ordering::Relaxed);
                    if now_seen != seen {
                        seen = now_seen;
                        last_progress = Instant::now();
                    } else if last_progress.elapsed() >= STALL_TIMEOUT {
                        return Err(format!(
                            "no reply for {}s (server counters: {:?})",
                            STALL_TIMEOUT.as_secs(),
                            self.server.counters()
                        ));
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return Err("client dispatcher is gone".into())
                }
            }
        }
        let mut st = self.pinger.state.lock().unwrap_or_else(|e| e.into_inner());
        let (Some(start), Some(end)) = (st.started, st.finished) else {
            return Err("run finished without timestamps".into());
        };
        let hist = std::mem::replace(&mut st.hist, new_histogram());
        Ok(Measured {
            hist,
            elapsed: end.saturating_duration_since(start),
        })
    }

    /// Stops both messengers.
    pub fn shutdown(mut self) {
        self.conn.mark_down();
        let _ = self.client.shutdown();
        let _ = self.server.shutdown();
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The echo must carry the payload we sent, byte for byte.
fn check_echo(sent: &Message, echoed: &Message) -> Result<(), String> {
    if echoed.msg_type() != sent.msg_type()
        || echoed.front != sent.front
        || echoed.middle != sent.middle
        || echoed.data != sent.data
    {
        return Err(format!(
            "echo differs from what was sent ({} bytes sent, {} bytes back)",
            sent.payload_len(),
            echoed.payload_len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_bytes_is_payload_plus_framing() {
        // preamble 32 + header 41 + crc 4 + payload + epilogue 13
        assert_eq!(wire_bytes(&bench_message(0)), 32 + 41 + 4);
        assert_eq!(wire_bytes(&bench_message(64)), 32 + 41 + 4 + 64 + 13);
        assert_eq!(wire_bytes(&bench_message(4096)), 32 + 41 + 4 + 4096 + 13);
    }

    #[test]
    fn mem_ping_pong_counts_and_orders() {
        let mut pp = MemPingPong::new().unwrap();
        let m = pp.run(&bench_message(4096), 5, 50).unwrap();
        assert_eq!(m.hist.len(), 50);
        assert!(m.hist.min() > 0);
        assert!(m.hist.value_at_quantile(0.5) <= m.hist.max());
        assert!(m.elapsed >= Duration::from_nanos(m.hist.max()));
    }
}
