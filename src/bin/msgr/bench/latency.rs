//! The pieces every mode shares, and the in-memory latency pair.
//!
//! [`EchoDispatcher`] is the server side of every benchmark (and of `msgr serve`): a benchmark message
//! ([`BENCH_MSG_TYPE`]) goes back on its connection as the very `Bytes` received (no copy); a streamed
//! message ([`BENCH_STREAM_TYPE`]) is answered with an empty ack ([`BENCH_ACK_TYPE`]); a stats request
//! ([`BENCH_STATS_TYPE`], when the dispatcher was built [`EchoDispatcher::with_stats`]) is answered with
//! [`ServerStats`] as JSON (the server's worker CPU counters, RSS and its view of the policy); anything
//! else is echoed too (so a server without stats echoes the request: the client reports "n/a"). [`MemPingPong`] is latency mode over the in-memory [`Sim`] pair: the protocol state
//! machines back to back, no sockets, no threads, the cost of the protocol core alone.
//!
//! Invariants: histograms are allocated before the first sample with fixed bounds (recording never
//! allocates); warm-up round trips are neither recorded nor timed; an echo is compared byte for byte with
//! what was sent at least once per size.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;

use serde::{Deserialize, Serialize};

use super::cpu::{rss_bytes, CpuSnapshot};
use super::driver::{Measured, Traffic};
use super::policy::BenchPolicy;
use msgr::proto::codec::{FrameEncoder, Segment, Tag};
use msgr::proto::message::SEGMENT_ALIGNMENTS;
use msgr::proto::sim::Sim;
use msgr::proto::types::{entity_type, AddrVec, AuthEntityName, EntityAddr};
use msgr::proto::{self, Config, Message, Policy};
use msgr::{ConnectionRef, Dispatcher};

/// The message type of echoed benchmark messages (not a Ceph message type).
pub const BENCH_MSG_TYPE: u16 = 0x7ff0;
/// A streamed benchmark message: the server answers with an empty [`BENCH_ACK_TYPE`].
pub const BENCH_STREAM_TYPE: u16 = 0x7ff1;
/// The server's answer to a [`BENCH_STREAM_TYPE`] message.
pub const BENCH_ACK_TYPE: u16 = 0x7ff2;

/// A request for the server's [`ServerStats`] (empty).
pub const BENCH_STATS_TYPE: u16 = 0x7ff3;
/// The answer to [`BENCH_STATS_TYPE`]: [`ServerStats`] as JSON in the front segment.
pub const BENCH_STATS_REPLY_TYPE: u16 = 0x7ff4;
/// Largest stats reply a client parses.
pub const MAX_STATS_REPLY: usize = 1 << 20;

/// Longest round trip a histogram records exactly; longer ones are recorded as this.
const HIST_MAX_NS: u64 = 60_000_000_000;

/// A run fails if no reply arrives for this long.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Most sim steps one message may take (a 32 MiB message needs ~130 at 256 KiB per step).
const SIM_STEP_LIMIT: usize = 100_000;

/// An empty histogram for round-trip times in ns, allocated up front: 1 ns .. 60 s at 3 significant
/// digits, fixed bounds, so recording never resizes it (longer times saturate at 60 s).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("constant histogram bounds are valid")
}

/// The benchmark message of `size` payload bytes (in the data segment, like object data), echoed.
pub fn bench_message(size: usize) -> Message {
    traffic_message(size, Traffic::Echo)
}

/// The benchmark message of `size` payload bytes for `traffic`.
pub fn traffic_message(size: usize, traffic: Traffic) -> Message {
    let payload: Bytes = (0..size).map(|i| (i.wrapping_mul(31) >> 3) as u8).collect();
    Message::new(traffic.msg_type(), Bytes::new()).with_data(payload)
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

/// What a benchmark server says about itself when asked ([`BENCH_STATS_TYPE`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStats {
    /// CPU counters of the server's worker threads now.
    pub cpu: CpuSnapshot,
    /// The server process's resident set size now, and when the server started (before any session).
    pub rss_bytes: Option<u64>,
    pub rss_at_start_bytes: Option<u64>,
    /// The policy the server applies to the asking connection (from the peer type it announced).
    pub policy: Option<String>,
    /// Its process id: the same as the client's when the server runs in-process.
    pub pid: u32,
}

/// What the server needs to answer stats requests.
#[derive(Debug)]
struct StatsSource {
    thread_prefix: String,
    rss_at_start: Option<u64>,
}

/// The benchmark server's dispatcher: every message goes back on its connection, the same `Bytes`, no
/// copy, except streamed ones, which get an empty ack, and stats requests (see the module docs).
#[derive(Debug, Default)]
pub struct EchoDispatcher {
    stats: Option<StatsSource>,
}

impl EchoDispatcher {
    /// A dispatcher that answers stats requests with the CPU of the threads named `{thread_prefix}-…`;
    /// build it before the messenger starts (its RSS now is the baseline).
    pub fn with_stats(thread_prefix: &str) -> Self {
        EchoDispatcher {
            stats: Some(StatsSource {
                thread_prefix: thread_prefix.to_string(),
                rss_at_start: rss_bytes(),
            }),
        }
    }

    fn stats_reply(&self, conn: &ConnectionRef) -> Option<Message> {
        let src = self.stats.as_ref()?;
        let stats = ServerStats {
            cpu: CpuSnapshot::of_threads(&src.thread_prefix),
            rss_bytes: rss_bytes(),
            rss_at_start_bytes: src.rss_at_start,
            policy: BenchPolicy::of_peer_type(conn.peer_type().to_wire())
                .map(|p| p.name().to_string()),
            pid: std::process::id(),
        };
        let json = serde_json::to_vec(&stats).ok()?;
        Some(Message::new(BENCH_STATS_REPLY_TYPE, Bytes::from(json)))
    }
}

impl ServerStats {
    /// Parses a [`BENCH_STATS_REPLY_TYPE`] message (peer input: bounded, never panics).
    pub fn parse(msg: &Message) -> Option<Self> {
        if msg.msg_type() != BENCH_STATS_REPLY_TYPE || msg.front.len() > MAX_STATS_REPLY {
            return None;
        }
        serde_json::from_slice(&msg.front).ok()
    }
}

impl Dispatcher for EchoDispatcher {
    fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) {
        let reply = match msg.msg_type() {
            BENCH_STREAM_TYPE => Message::new(BENCH_ACK_TYPE, Bytes::new()),
            BENCH_STATS_TYPE => self.stats_reply(conn).unwrap_or(msg),
            _ => msg,
        };
        if let Err(e) = conn.send(reply) {
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
    pub fn new(security: &super::security::Security) -> Result<Self, String> {
        let server_addr = EntityAddr::msgr2(std::net::SocketAddr::from(([127, 0, 0, 1], 6800)), 1);
        let mut server = Config::new(entity_type::OSD, AuthEntityName::new(entity_type::OSD, "0"));
        server.my_addrs = AddrVec(vec![server_addr.clone()]);
        server.default_policy = Policy::stateless_server();
        security.apply_server(&mut server);
        let mut client = Config::new(
            entity_type::CLIENT,
            AuthEntityName::new(entity_type::CLIENT, "bench"),
        );
        security.apply_client(&mut client);
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
        let cpu_before = CpuSnapshot::of_this_thread();
        let start = Instant::now();
        let mut last = None;
        for _ in 0..count {
            let t0 = Instant::now();
            let echoed = self.round_trip(msg)?;
            hist.saturating_record(duration_ns(t0.elapsed()));
            last = Some(echoed);
        }
        let elapsed = start.elapsed();
        // Both ends run on this thread: their CPU together is the client's figure.
        let client_cpu = CpuSnapshot::of_this_thread().since(&cpu_before);
        if let Some(echoed) = last {
            check_echo(msg, &echoed)?;
        }
        Ok(Measured {
            hist,
            elapsed,
            pacer_lag: None,
            client_cpu,
            server_cpu: None,
            client_frames: None,
        })
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

pub(crate) fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The echo must carry the payload we sent, byte for byte.
pub(crate) fn check_echo(sent: &Message, echoed: &Message) -> Result<(), String> {
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
        let mut pp = MemPingPong::new(&super::super::security::Security::default()).unwrap();
        let m = pp.run(&bench_message(4096), 5, 50).unwrap();
        assert_eq!(m.hist.len(), 50);
        assert!(m.hist.min() > 0);
        assert!(m.hist.value_at_quantile(0.5) <= m.hist.max());
        assert!(m.elapsed >= Duration::from_nanos(m.hist.max()));
    }
}
