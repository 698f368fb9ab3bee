//! Ceph's SyntheticInjectTest over DPDK: one server process and one client process linked by net_memif
//! (the EAL exists once per process), two queues and two workers on each side, socket failures injected
//! on both sides by the fault stack wrapped around the DPDK stack.
//!
//! - The client process keeps CONNS (≥ 32) lossless_client sessions to the server (stateful_server) and
//!   does random sends and mark_downs; a marked-down session is replaced by a fresh one (`connect_new`).
//! - The server process dials the client process for one lossless_peer session (the client process
//!   accepts OSD peers as lossless_peer) and both sides send on it throughout, so faults cut a backend
//!   link from either side and either side re-dials.
//! - Every message's tid names its stream and place — (slot, generation, sequence) — and its payload is
//!   derived from the tid. Receivers check per stream: sequences 0, 1, 2, … on one connection handle,
//!   payloads intact.
//!
//! At the end: every live session delivered everything sent on it, a marked-down one a prefix of it, the
//! peer session everything both ways; no duplicate dropped, no reset; faults were injected on both sides
//! and sessions reconnected. The seed is printed (replay with MSGR_DPDK_STRESS_SEED=…); the whole case
//! is bounded by 60 s.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::dpdk::{self, Child};
use common::net::proto_config;
use common::PayloadPool;
use msgr::proto::types::{entity_type, AddrVec, EntityAddr};
use msgr::proto::{Error, Message, Policy};
use msgr::stack::dpdk::DpdkStack;
use msgr::stack::fault::{FaultConfig, FaultStack};
use msgr::{ConnId, ConnectionRef, Dispatcher, Messenger};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const SERVER_IP: &str = "10.78.0.1";
const CLIENT_IP: &str = "10.78.0.2";
const SERVER_MAC: &str = "02:00:00:78:00:01";
const CLIENT_MAC: &str = "02:00:00:78:00:02";
const SERVER_PORT: u16 = 6800;
/// The client process listens too: the server dials it for the lossless_peer session.
const CLIENT_PORT: u16 = 6801;
const SERVER_NONCE: u32 = 781;
const CLIENT_NONCE: u32 = 782;
const QUEUES: u16 = 2;

/// Lossless_client sessions the client process keeps open (the issue asks for at least 32).
const CONNS: u16 = 32;
/// Seconds of random traffic; the drain and checks follow.
const TRAFFIC_SECS: u64 = 8;
/// The whole case, processes started to processes gone.
const CASE_DEADLINE: Duration = Duration::from_secs(60);
/// One socket read or write in this many fails (Ceph's ms_inject_socket_failures), on both sides.
const SOCKET_FAILURE_ONE_IN: u32 = 400;
/// Of every 1000 client operations, this many mark a session down (the rest send).
const MARK_DOWN_PER_MILLE: u32 = 4;
/// Unacknowledged payload bytes a sender allows itself before it waits (keeps the drain short).
const BACKLOG_BYTES: u64 = 4 << 20;
/// Largest message; most are much smaller.
const MAX_LEN: usize = 256 * 1024;

/// The slot of the lossless_peer session's streams (one per direction, generation 0).
const PEER_SLOT: u16 = u16::MAX;

fn main() {
    if let Some(role) = dpdk::child_role() {
        let body: fn() = match role.as_str() {
            "stress_server" => stress_server,
            "stress_client" => stress_client,
            other => panic!("unknown role {other}"),
        };
        dpdk::run_child(&role, body);
    }
    dpdk::run_cases(&[(
        "synthetic_inject_test_over_memif",
        synthetic_inject_test_over_memif,
    )]);
}

// ---- streams: what a tid says and what a receiver checks -----------------------------------------

/// A stream is one session generation of one slot: `slot << 16 | generation`.
fn stream(slot: u16, gen: u16) -> u32 {
    u32::from(slot) << 16 | u32::from(gen)
}

fn tid(stream: u32, seq: u32) -> u64 {
    u64::from(stream) << 32 | u64::from(seq)
}

fn stream_name(stream: u32) -> String {
    match (stream >> 16) as u16 {
        PEER_SLOT => "peer".to_string(),
        slot => format!("slot {slot} gen {}", stream & 0xffff),
    }
}

struct StreamState {
    next: u32,
    conn: ConnId,
}

/// The receiving side of every stream: checks order, payloads and the connection handle as messages
/// arrive, and remembers the lossless_peer session's handle to answer on it.
struct Streams {
    pool: Arc<PayloadPool>,
    streams: Mutex<HashMap<u32, StreamState>>,
    /// The first few things that went wrong (the parent asserts there are none).
    violations: Mutex<Vec<String>>,
    received: AtomicU64,
    /// The lossless_peer session, as this side knows it (dialled, or accepted).
    peer: Mutex<Option<ConnectionRef>>,
    resets: AtomicU64,
    remote_resets: AtomicU64,
}

impl Streams {
    fn new(pool: Arc<PayloadPool>) -> Arc<Self> {
        Arc::new(Streams {
            pool,
            streams: Mutex::new(HashMap::new()),
            violations: Mutex::new(Vec::new()),
            received: AtomicU64::new(0),
            peer: Mutex::new(None),
            resets: AtomicU64::new(0),
            remote_resets: AtomicU64::new(0),
        })
    }

    fn violation(&self, what: String) {
        let mut v = self.violations.lock().unwrap();
        if v.len() < 20 {
            v.push(what);
        }
    }

    /// Messages of `stream` received so far (all in order, or there is a violation).
    fn count(&self, stream: u32) -> u32 {
        self.streams
            .lock()
            .unwrap()
            .get(&stream)
            .map_or(0, |s| s.next)
    }

    fn note_peer(&self, conn: &ConnectionRef) {
        let mut peer = self.peer.lock().unwrap();
        match &*peer {
            None => *peer = Some(conn.clone()),
            Some(known) if known != conn => self.violation(format!(
                "the peer session appeared on a second handle ({:?}, first {:?})",
                conn.id(),
                known.id()
            )),
            Some(_) => {}
        }
    }

    fn peer(&self) -> Option<ConnectionRef> {
        self.peer.lock().unwrap().clone()
    }

    /// Every stream in `sent` (stream → messages sent) has delivered all of it (`live`) or a prefix of
    /// it; no stream arrived that nobody sent. Returns what is wrong, empty when all is well.
    fn check_against(&self, sent: &BTreeMap<u32, (u32, bool)>) -> Vec<String> {
        let streams = self.streams.lock().unwrap();
        let mut wrong = Vec::new();
        for (&s, &(n, live)) in sent {
            let got = streams.get(&s).map_or(0, |st| st.next);
            if got > n || (live && got != n) {
                wrong.push(format!(
                    "{}: {got} delivered of {n} sent ({})",
                    stream_name(s),
                    if live { "live" } else { "marked down" }
                ));
            }
        }
        for &s in streams.keys() {
            if !sent.contains_key(&s) {
                wrong.push(format!("{}: arrived but never sent", stream_name(s)));
            }
        }
        wrong.truncate(20);
        wrong
    }
}

impl Dispatcher for Streams {
    fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) {
        let (s, seq) = ((msg.header.tid >> 32) as u32, msg.header.tid as u32);
        if !self.pool.verify(&msg) {
            self.violation(format!("{} seq {seq}: corrupted payload", stream_name(s)));
        }
        if (s >> 16) as u16 == PEER_SLOT {
            self.note_peer(conn);
        }
        let mut wrong = Vec::new();
        {
            let mut streams = self.streams.lock().unwrap();
            let st = streams.entry(s).or_insert(StreamState {
                next: 0,
                conn: conn.id(),
            });
            if seq != st.next {
                let what = if seq < st.next {
                    "duplicate or reordered"
                } else {
                    "gap"
                };
                wrong.push(format!("seq {seq} where {} was due ({what})", st.next));
            }
            if st.conn != conn.id() {
                wrong.push(format!(
                    "seq {seq} on connection {:?}, the stream began on {:?}",
                    conn.id(),
                    st.conn
                ));
            }
            st.next = seq.wrapping_add(1);
        }
        for w in wrong {
            self.violation(format!("{}: {w}", stream_name(s)));
        }
        self.received.fetch_add(1, Ordering::Release);
    }
    fn ms_handle_accept(&self, conn: &ConnectionRef) {
        if conn.peer().entity_type == entity_type::OSD {
            self.note_peer(conn);
        }
    }
    fn ms_handle_reset(&self, _conn: &ConnectionRef, _why: &Error) {
        self.resets.fetch_add(1, Ordering::Relaxed);
    }
    fn ms_handle_remote_reset(&self, _conn: &ConnectionRef) {
        self.remote_resets.fetch_add(1, Ordering::Relaxed);
    }
}

// ---- parent side ---------------------------------------------------------------------------------

fn json_of(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON from child ({e}): {s}"))
}

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn synthetic_inject_test_over_memif() {
    let deadline = Instant::now() + CASE_DEADLINE;
    let seed: u64 = std::env::var("MSGR_DPDK_STRESS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("dpdk memif stress seed: MSGR_DPDK_STRESS_SEED={seed}");
    let socket = format!("/msgr-stress-{}", std::process::id());
    let common = |ip, mac, memif_role| {
        vec![
            (
                "ARGS",
                dpdk::memif_args(ip, mac, memif_role, &socket, QUEUES),
            ),
            ("SEED", seed.to_string()),
        ]
    };
    // memif: the client process creates the socket (memif server role), the server process joins it.
    let mut cli = Child::spawn(
        "client",
        "stress_client",
        &common(CLIENT_IP, CLIENT_MAC, "server"),
    );
    dpdk::wait_for_abstract_socket(&socket, left(deadline));
    let mut srv = Child::spawn(
        "server",
        "stress_server",
        &common(SERVER_IP, SERVER_MAC, "client"),
    );
    srv.expect("READY", left(deadline));
    cli.expect("READY", left(deadline));
    srv.send("go");
    cli.send("go");
    // Traffic, then each side says what it sent; each receiver learns what to expect.
    let client_sent = json_of(&cli.expect("SENT", left(deadline)));
    let server_sent = json_of(&srv.expect("SENT", left(deadline)));
    srv.send(&format!("expect {client_sent}"));
    cli.send(&format!("expect {server_sent}"));
    let sr = json_of(&srv.expect("RESULT", left(deadline)));
    let cr = json_of(&cli.expect("RESULT", left(deadline)));
    eprintln!("client sent: {}", client_sent["summary"]);
    eprintln!("server: {sr}\nclient: {cr}");
    srv.exit_before(cli, left(deadline).max(Duration::from_secs(5)));

    // Every message exactly once and in order: nothing reordered, duplicated, corrupted or moved to
    // another handle on the way (checked as messages arrived), every live stream complete.
    for (side, r) in [("server", &sr), ("client", &cr)] {
        assert_eq!(
            r["violations"],
            json!([]),
            "{side}: delivery violations (seed {seed})"
        );
        assert_eq!(
            r["msgr"]["duplicates_dropped"], 0,
            "{side}: old or duplicate messages arrived (seed {seed})"
        );
        assert_eq!(
            r["remote_resets"], 0,
            "{side}: a session was reset (seed {seed})"
        );
        assert_eq!(r["resets"], 0, "{side}: a session ended (seed {seed})");
        assert!(
            r["faults"]["injected"].as_u64().unwrap_or(0) > 0,
            "{side}: no socket failure was injected (seed {seed})"
        );
        assert!(
            r["msgr"]["reconnects"].as_u64().unwrap_or(0) > 0,
            "{side}: nothing reconnected after the faults (seed {seed})"
        );
        assert!(
            r["peer_received"].as_u64().unwrap_or(0) > 0,
            "{side}: nothing arrived on the lossless_peer session (seed {seed})"
        );
    }
    let summary = &client_sent["summary"];
    assert!(
        summary["sessions"].as_u64().unwrap_or(0) >= u64::from(CONNS),
        "fewer than {CONNS} lossless sessions"
    );
    assert!(
        summary["mark_downs"].as_u64().unwrap_or(0) > 0,
        "no session was marked down (seed {seed})"
    );
    assert!(
        sr["received"].as_u64().unwrap_or(0) > summary["mark_downs"].as_u64().unwrap_or(0),
        "hardly any traffic (seed {seed})"
    );
}

// ---- child side ----------------------------------------------------------------------------------

type StressMessenger = Messenger<FaultStack<DpdkStack>>;

fn seed() -> u64 {
    dpdk::param("SEED").parse().expect("SEED is a number")
}

fn pool() -> Arc<PayloadPool> {
    Arc::new(PayloadPool::new(0x5354_5245_5353, MAX_LEN + 1))
}

fn addrs(ip: &str, port: u16, nonce: u32) -> AddrVec {
    let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
    AddrVec(vec![EntityAddr::msgr2(addr, nonce)])
}

/// Socket failures on this side; `salt` gives each process its own decisions from the one seed.
fn faults(salt: u64) -> FaultConfig {
    FaultConfig {
        socket_failure_one_in: SOCKET_FAILURE_ONE_IN,
        read_delay: Duration::ZERO,
        seed: seed() ^ salt,
    }
}

/// Mostly small messages, one in fifty up to MAX_LEN.
fn random_len(rng: &mut StdRng) -> usize {
    if rng.random_ratio(1, 50) {
        rng.random_range(0..=MAX_LEN)
    } else {
        rng.random_range(0..=4096)
    }
}

/// Wait while this messenger has more than BACKLOG_BYTES sent but not acknowledged.
fn pace(m: &StressMessenger) {
    while m.throttles().send.current_bytes > BACKLOG_BYTES {
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The next command from the parent, which must be `expect <json>`.
fn expectation() -> Value {
    let line = dpdk::command();
    let body = line
        .strip_prefix("expect ")
        .unwrap_or_else(|| panic!("expected `expect …`, got {line:?}"));
    json_of(body)
}

/// Wait until `done` (at most `timeout`), then report RESULT: violations (those seen in flight plus
/// `final_check`'s), counters, injected faults.
fn report(
    m: &StressMessenger,
    sink: &Streams,
    timeout: Duration,
    done: impl Fn() -> bool,
    final_check: impl Fn() -> Vec<String>,
) {
    let end = Instant::now() + timeout;
    while !done() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    // A moment for anything late (a duplicate would show up now).
    std::thread::sleep(Duration::from_millis(100));
    let mut violations = sink.violations.lock().unwrap().clone();
    violations.extend(final_check());
    let faults = m.stack().counters();
    let peer_received = u64::from(sink.count(stream(PEER_SLOT, 0)));
    dpdk::say(
        "RESULT",
        json!({
            "violations": violations,
            "received": sink.received.load(Ordering::Relaxed),
            "peer_received": peer_received,
            "resets": sink.resets.load(Ordering::Relaxed),
            "remote_resets": sink.remote_resets.load(Ordering::Relaxed),
            "msgr": serde_json::to_value(m.counters()).unwrap(),
            "faults": {
                "injected": faults.injected(),
                "reads": faults.injected_reads.load(Ordering::Relaxed),
                "writevs": faults.injected_writevs.load(Ordering::Relaxed),
            },
            "dpdk": serde_json::to_value(m.stack().inner().stats()).unwrap(),
        }),
    );
}

const DRAIN: Duration = Duration::from_secs(20);

/// Server process: stateful_server for the client sessions; dials the client process for the
/// lossless_peer session and sends on it for TRAFFIC_SECS.
fn stress_server() {
    let pool = pool();
    let sink = Streams::new(pool.clone());
    let mut p = proto_config(entity_type::OSD, "osd.0");
    p.nonce = SERVER_NONCE;
    p.default_policy = Policy::stateful_server();
    let mut m = dpdk::fault_messenger(&dpdk::param("ARGS"), p, faults(0x5e), sink.clone());
    m.bind(&[format!("0.0.0.0:{SERVER_PORT}").parse().unwrap()])
        .unwrap();
    m.start().unwrap();
    dpdk::say("READY", m.stack().inner().driver());
    assert_eq!(dpdk::command(), "go");

    let peer = m
        .connect_to(
            entity_type::CLIENT,
            &addrs(CLIENT_IP, CLIENT_PORT, CLIENT_NONCE),
            Policy::lossless_peer(),
        )
        .unwrap();
    let mut rng = StdRng::seed_from_u64(seed() ^ 0x5e);
    let end = Instant::now() + Duration::from_secs(TRAFFIC_SECS);
    let mut sent = 0u32;
    while Instant::now() < end {
        pace(&m);
        peer.send(pool.message(tid(stream(PEER_SLOT, 0), sent), random_len(&mut rng)))
            .expect("the lossless_peer session closed");
        sent += 1;
        std::thread::sleep(Duration::from_micros(rng.random_range(0..500)));
    }
    dpdk::say("SENT", json!({ "peer_sent": sent }));

    // What the client sent: [stream, count, live] per stream, and on the peer session.
    let exp = expectation();
    let mut want: BTreeMap<u32, (u32, bool)> = BTreeMap::new();
    for s in exp["streams"].as_array().expect("streams") {
        let n = |i: usize| s[i].as_u64().expect("number");
        want.insert(n(0) as u32, (n(1) as u32, s[2].as_bool().expect("live")));
    }
    let peer_want = exp["peer_sent"].as_u64().expect("peer_sent") as u32;
    // The peer stream counts only once something was sent on it.
    if peer_want > 0 {
        want.insert(stream(PEER_SLOT, 0), (peer_want, true));
    }
    let live: Vec<(u32, u32)> = want
        .iter()
        .filter(|(_, (_, live))| *live)
        .map(|(&s, &(n, _))| (s, n))
        .collect();
    report(
        &m,
        &sink,
        DRAIN,
        || live.iter().all(|&(s, n)| sink.count(s) >= n),
        || sink.check_against(&want),
    );
    while dpdk::command() != "exit" {}
    m.shutdown().unwrap();
}

/// One lossless_client slot of the client process: its current session and what was sent so far.
struct Slot {
    conn: ConnectionRef,
    gen: u16,
    sent: u32,
}

/// Client process: CONNS lossless_client sessions with random send / mark_down for TRAFFIC_SECS, and
/// the accepted side of the server's lossless_peer session, on which it sends too.
fn stress_client() {
    let pool = pool();
    let sink = Streams::new(pool.clone());
    let mut p = proto_config(entity_type::CLIENT, "client.admin");
    p.nonce = CLIENT_NONCE;
    p.accept_policies = vec![(entity_type::OSD, Policy::lossless_peer())];
    let mut m = dpdk::fault_messenger(&dpdk::param("ARGS"), p, faults(0xc1), sink.clone());
    m.bind(&[format!("0.0.0.0:{CLIENT_PORT}").parse().unwrap()])
        .unwrap();
    m.start().unwrap();
    dpdk::say("READY", m.stack().inner().driver());
    assert_eq!(dpdk::command(), "go");

    let server = addrs(SERVER_IP, SERVER_PORT, SERVER_NONCE);
    let open = || {
        m.connect_new(entity_type::OSD, &server, Policy::lossless_client())
            .unwrap()
    };
    let mut slots: Vec<Slot> = (0..CONNS)
        .map(|_| Slot {
            conn: open(),
            gen: 0,
            sent: 0,
        })
        .collect();
    // Every stream ever used: [stream, sent, live].
    let mut finished: Vec<(u32, u32)> = Vec::new();
    let (mut mark_downs, mut peer_sent) = (0u64, 0u32);
    let mut rng = StdRng::seed_from_u64(seed() ^ 0xc1);
    let end = Instant::now() + Duration::from_secs(TRAFFIC_SECS);
    let mut ops = 0u64;
    while Instant::now() < end {
        pace(&m);
        ops += 1;
        let i = rng.random_range(0..slots.len());
        let op = rng.random_range(0..1000);
        if op < MARK_DOWN_PER_MILLE {
            // Ceph's mark_down: what is queued on it may or may not arrive; a fresh session replaces it.
            let slot = &mut slots[i];
            slot.conn.mark_down();
            finished.push((stream(i as u16, slot.gen), slot.sent));
            slot.gen = slot.gen.checked_add(1).expect("generations fit in 16 bits");
            slot.sent = 0;
            slot.conn = open();
            mark_downs += 1;
        } else if op < 150 {
            if let Some(peer) = sink.peer() {
                peer.send(pool.message(tid(stream(PEER_SLOT, 0), peer_sent), random_len(&mut rng)))
                    .expect("the lossless_peer session closed");
                peer_sent += 1;
            }
        } else {
            let slot = &mut slots[i];
            slot.conn
                .send(pool.message(
                    tid(stream(i as u16, slot.gen), slot.sent),
                    random_len(&mut rng),
                ))
                .expect("a lossless_client session closed");
            slot.sent += 1;
        }
        if ops % 8 == 0 {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    let mut streams: Vec<Value> = finished
        .iter()
        .map(|&(s, n)| json!([s, n, false]))
        .collect();
    streams.extend(
        slots
            .iter()
            .enumerate()
            .map(|(i, sl)| json!([stream(i as u16, sl.gen), sl.sent, true])),
    );
    let total: u64 = finished.iter().map(|&(_, n)| u64::from(n)).sum::<u64>()
        + slots.iter().map(|s| u64::from(s.sent)).sum::<u64>();
    dpdk::say(
        "SENT",
        json!({
            "streams": streams,
            "peer_sent": peer_sent,
            "summary": {
                "sessions": slots.len() as u64 + mark_downs,
                "mark_downs": mark_downs,
                "messages": total,
                "peer_sent": peer_sent,
                "ops": ops,
            },
        }),
    );

    let exp = expectation();
    let peer_want = exp["peer_sent"].as_u64().expect("peer_sent") as u32;
    let mut want = BTreeMap::new();
    if peer_want > 0 {
        want.insert(stream(PEER_SLOT, 0), (peer_want, true));
    }
    report(
        &m,
        &sink,
        DRAIN,
        || sink.count(stream(PEER_SLOT, 0)) >= peer_want,
        || sink.check_against(&want),
    );
    while dpdk::command() != "exit" {}
    m.shutdown().unwrap();
}
