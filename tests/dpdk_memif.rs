//! Two msgr processes on the DPDK stack, linked by net_memif (no hardware, no hugepages): a server role
//! and a client role, each with its own poll-mode worker(s) and userspace TCP.
//!
//! - 100,000 lossless messages of random sizes up to 64 KiB arrive in order and intact, across a link
//!   break in the middle (every TCP connection reset while both processes live): the session resumes
//!   with replay, nothing lost, duplicated or reordered;
//! - a server killed (SIGKILL) and restarted is a remote reset for the surviving client, and nothing from
//!   the old session is delivered twice;
//! - two queue pairs and two workers on each side, 16 connections: the software RSS hand-off moves
//!   segments between workers and every message arrives intact;
//! - the same with every TCP connection reset half-way: reconnects hash to either server worker, and
//!   where that is not the one holding the session, the session moves to the new socket's worker and
//!   resumes with replay (nothing lost, duplicated or reordered, no remote reset);
//! - malformed frames injected on the link are dropped and counted and the worker keeps going;
//! - the replies to the first messages of one large read reach the client while the server is still
//!   dispatching the rest (the worker puts each dispatch round's replies on the wire, not the turn's end).
//!
//! Each DPDK endpoint is a child process (the EAL exists once per process): see `common/dpdk.rs`.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::dpdk::{self, Child};
use common::net::{proto_config, Arrivals, Collector, SlowOnceEcho};
use common::PayloadPool;
use msgr::proto::types::{entity_type, AddrVec, EntityAddr};
use msgr::proto::{Error, Message, Policy};
use msgr::{ConnectionRef, Dispatcher};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const SERVER_IP: &str = "10.77.0.1";
const CLIENT_IP: &str = "10.77.0.2";
const SERVER_MAC: &str = "02:00:00:77:00:01";
const CLIENT_MAC: &str = "02:00:00:77:00:02";
const SERVER_PORT: u16 = 6800;
const SERVER_NONCE: u32 = 777;
const SEED: u64 = 0x6d656d6966;
const MAX_LEN: usize = 64 * 1024;
/// The server's "all received" message to each connection.
const DONE_TID: u64 = 1 << 40;

fn main() {
    if let Some(role) = dpdk::child_role() {
        let body: fn() = match role.as_str() {
            "server" => server,
            "client_stream" => client_stream,
            "client_restart" => client_restart,
            "client_fanout" => client_fanout,
            "client_garbage" => client_garbage,
            "server_stall" => server_stall,
            "client_early" => client_early,
            other => panic!("unknown role {other}"),
        };
        dpdk::run_child(&role, body);
    }
    dpdk::run_cases(&[
        (
            "hundred_thousand_messages_then_link_break_resumes_with_replay",
            hundred_thousand_messages_then_link_break_resumes_with_replay,
        ),
        (
            "killed_and_restarted_server_is_a_remote_reset",
            killed_and_restarted_server_is_a_remote_reset,
        ),
        (
            "two_queues_two_workers_sixteen_connections_hand_off",
            two_queues_two_workers_sixteen_connections_hand_off,
        ),
        (
            "two_workers_reconnects_on_the_other_worker_move_the_session",
            two_workers_reconnects_on_the_other_worker_move_the_session,
        ),
        (
            "malformed_frames_are_dropped_counted_and_survived",
            malformed_frames_are_dropped_counted_and_survived,
        ),
        (
            "first_replies_of_a_large_read_leave_before_the_rest_are_dispatched",
            first_replies_of_a_large_read_leave_before_the_rest_are_dispatched,
        ),
    ]);
}

// ---- parent side ---------------------------------------------------------------------------------

/// A memif socket name no other run uses (abstract namespace: nothing to clean up).
fn socket_name(case: &str) -> String {
    format!("/msgr-test-{}-{case}", std::process::id())
}

fn server_env(
    case: &str,
    queues: u16,
    expect: u64,
    conns: u64,
    base_tid: u64,
) -> Vec<(&'static str, String)> {
    vec![
        (
            "ARGS",
            dpdk::memif_args(SERVER_IP, SERVER_MAC, "client", &socket_name(case), queues),
        ),
        ("EXPECT", expect.to_string()),
        ("CONNS", conns.to_string()),
        ("BASE_TID", base_tid.to_string()),
    ]
}

fn client_env(
    case: &str,
    queues: u16,
    extra: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    let mut env = vec![(
        "ARGS",
        dpdk::memif_args(CLIENT_IP, CLIENT_MAC, "server", &socket_name(case), queues),
    )];
    env.extend_from_slice(extra);
    env
}

/// Start the client (memif server role) and wait until its memif socket exists.
fn spawn_client(case: &str, role: &str, queues: u16, extra: &[(&'static str, String)]) -> Child {
    let child = Child::spawn("client", role, &client_env(case, queues, extra));
    dpdk::wait_for_abstract_socket(&socket_name(case), Duration::from_secs(60));
    child
}

/// Runs client role `role` and a server (its environment `server`) to the end: the server's RECEIVED
/// report (waited for up to `wait`) and the client's DONE report, both processes gone.
fn run_pair(
    case: &str,
    role: &str,
    queues: u16,
    client: &[(&'static str, String)],
    server: &[(&'static str, String)],
    wait: Duration,
) -> (Value, Value) {
    let mut cli = spawn_client(case, role, queues, client);
    let mut srv = Child::spawn("server", "server", server);
    srv.expect("READY", Duration::from_secs(60));
    let received = json_of(&srv.expect("RECEIVED", wait));
    let done = json_of(&cli.expect("DONE", Duration::from_secs(120)));
    eprintln!("server: {received}\nclient: {done}");
    srv.exit_before(cli, Duration::from_secs(30));
    (received, done)
}

fn json_of(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON from child ({e}): {s}"))
}

fn hundred_thousand_messages_then_link_break_resumes_with_replay() {
    let count: u64 = std::env::var("MSGR_DPDK_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let case = "stream";
    // memif: the client process creates the socket (memif server role) and survives link breaks.
    let mut cli = spawn_client(case, "client_stream", 1, &[("COUNT", count.to_string())]);
    let mut srv = Child::spawn("server", "server", &server_env(case, 1, count, 1, 0));
    srv.expect("READY", Duration::from_secs(60));
    let received = json_of(&srv.expect("RECEIVED", Duration::from_secs(900)));
    let client = json_of(&cli.expect("DONE", Duration::from_secs(120)));
    eprintln!("server: {received}\nclient: {client}");
    assert_eq!(received["received"], count);
    assert!(
        client["dpdk"]["aborted"].as_u64().unwrap_or(0) >= 1,
        "the link break did not happen"
    );
    assert!(
        client["msgr"]["reconnects"].as_u64().unwrap_or(0) >= 1,
        "the client never reconnected"
    );
    assert!(
        client["msgr"]["replayed"].as_u64().unwrap_or(0) > 0,
        "nothing was in flight at the break: no replay exercised"
    );
    assert_eq!(client["msgr"]["remote_resets"], 0);
    assert_eq!(received["msgr"]["remote_resets"], 0);
    srv.exit_before(cli, Duration::from_secs(30));
}

fn killed_and_restarted_server_is_a_remote_reset() {
    let case = "restart";
    let mut cli = spawn_client(case, "client_restart", 1, &[]);
    let mut s1 = Child::spawn("server-1", "server", &server_env(case, 1, 100, 1, 0));
    s1.expect("READY", Duration::from_secs(60));
    let first = json_of(&s1.expect("RECEIVED", Duration::from_secs(120)));
    assert_eq!(first["received"], 100);
    cli.expect("ACKED", Duration::from_secs(60));
    s1.kill();
    let mut s2 = Child::spawn("server-2", "server", &server_env(case, 1, 100, 1, 100));
    s2.expect("READY", Duration::from_secs(60));
    cli.send("go");
    let second = json_of(&s2.expect("RECEIVED", Duration::from_secs(120)));
    let client = json_of(&cli.expect("DONE", Duration::from_secs(120)));
    eprintln!("server-2: {second}\nclient: {client}");
    assert_eq!(second["received"], 100, "the new session's messages");
    assert_eq!(
        client["remote_resets"], 1,
        "the client must see exactly one remote reset"
    );
    s2.exit_before(cli, Duration::from_secs(30));
}

fn two_queues_two_workers_sixteen_connections_hand_off() {
    let case = "fanout";
    let (conns, per_conn) = (16u64, 300u64);
    let (received, client) = run_pair(
        case,
        "client_fanout",
        2,
        &[
            ("CONNS", conns.to_string()),
            ("COUNT", per_conn.to_string()),
        ],
        &server_env(case, 2, conns * per_conn, conns, 0),
        Duration::from_secs(300),
    );
    assert_eq!(received["received"], conns * per_conn);
    assert_eq!(received["connections"], conns);
    let handoffs = received["dpdk"]["handoff_out"].as_u64().unwrap_or(0)
        + client["dpdk"]["handoff_out"].as_u64().unwrap_or(0);
    assert!(handoffs > 0, "no segment was handed between workers");
    assert_eq!(received["dpdk"]["handoff_dropped"], 0);
    // Both workers of each side carried connections.
    for side in [&received, &client] {
        let per_worker = side["workers"].as_array().expect("per-worker stats");
        assert_eq!(per_worker.len(), 2);
        assert!(
            per_worker
                .iter()
                .all(|w| w["rx_packets"].as_u64().unwrap_or(0) > 0),
            "a worker saw no traffic: {side}"
        );
    }
}

fn two_workers_reconnects_on_the_other_worker_move_the_session() {
    let case = "move";
    let (conns, per_conn) = (16u64, 300u64);
    // A few seconds when it works; without the move, sessions are reset and never complete.
    let (received, client) = run_pair(
        case,
        "client_fanout",
        2,
        &[
            ("CONNS", conns.to_string()),
            ("COUNT", per_conn.to_string()),
            ("MSGR_FANOUT_ABORT_AT", (per_conn / 2).to_string()),
        ],
        &server_env(case, 2, conns * per_conn, conns, 0),
        Duration::from_secs(120),
    );
    // The server checked every session got exactly tids 0..per_conn, in order and intact, on one
    // connection handle each: nothing lost, duplicated or reordered, no session started afresh.
    assert_eq!(received["received"], conns * per_conn);
    assert_eq!(received["connections"], conns);
    assert!(
        client["dpdk"]["aborted"].as_u64().unwrap_or(0) >= conns,
        "the resets did not happen"
    );
    let (cm, sm) = (&client["msgr"], &received["msgr"]);
    assert!(
        cm["reconnects"].as_u64().unwrap_or(0) >= conns,
        "not every session reconnected"
    );
    assert!(
        cm["replayed"].as_u64().unwrap_or(0) + sm["replayed"].as_u64().unwrap_or(0) > 0,
        "nothing was replayed"
    );
    for m in [cm, sm] {
        assert_eq!(m["remote_resets"], 0, "a session was reset: {m}");
        assert_eq!(m["resets"], 0, "a session ended: {m}");
    }
    assert!(
        sm["sessions_moved"].as_u64().unwrap_or(0) > 0,
        "no reconnect landed on the other server worker: the move was not exercised"
    );
    assert_eq!(sm["connections"], conns, "server connections left open");
}

fn malformed_frames_are_dropped_counted_and_survived() {
    let case = "garbage";
    let (received, client) = run_pair(
        case,
        "client_garbage",
        1,
        &[],
        &server_env(case, 1, 200, 1, 0),
        Duration::from_secs(120),
    );
    assert_eq!(received["received"], 200);
    let d = &received["dpdk"];
    let injected = &client["injected"];
    for key in [
        "drop_short",
        "drop_bad_ip_header",
        "drop_bad_ip_checksum",
        "drop_bad_tcp_offset",
        "drop_bad_tcp_checksum",
        "drop_not_ipv4",
        "drop_unsupported",
    ] {
        let want = injected[key].as_u64().unwrap_or(0);
        assert!(want > 0, "nothing injected for {key}");
        assert!(
            d[key].as_u64().unwrap_or(0) >= want,
            "{key}: {} counted, {want} injected",
            d[key]
        );
    }
    assert!(
        d["drop_not_for_us"].as_u64().unwrap_or(0) > 0,
        "random garbage must be counted too"
    );
}

// ---- child side ----------------------------------------------------------------------------------

/// The server's dispatcher stalls this long on message [`STALL_TID`].
const STALL: Duration = Duration::from_millis(400);
const STALL_TID: u64 = 20;

/// The replies to the first messages of one large read leave before the rest are dispatched, on a
/// stack that sends at the end of its loop turn: 64 messages queued during the handshake go out
/// together and are read at once; the server's dispatcher stalls on the 20th, and the first replies
/// must not wait for it (the worker flushes its TCP egress between dispatch rounds).
fn first_replies_of_a_large_read_leave_before_the_rest_are_dispatched() {
    let case = "early";
    let mut cli = spawn_client(case, "client_early", 1, &[]);
    let server_args = dpdk::memif_args(SERVER_IP, SERVER_MAC, "client", &socket_name(case), 1);
    let mut srv = Child::spawn("server", "server_stall", &[("ARGS", server_args)]);
    srv.expect("READY", Duration::from_secs(60));
    let done = json_of(&cli.expect("DONE", Duration::from_secs(120)));
    eprintln!("client: {done}");
    srv.exit_before(cli, Duration::from_secs(30));
    let lead_ms = done["lead_ms"].as_f64().unwrap();
    assert!(
        lead_ms >= STALL.as_secs_f64() * 1000.0 / 2.0,
        "reply 0 arrived only {lead_ms:.3} ms before reply {STALL_TID} (the server stalled {STALL:?} on it)"
    );
    assert_eq!(done["in_order"], true, "a reply overtook the stalled one");
}

fn env_u64(name: &str) -> u64 {
    dpdk::param(name)
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number"))
}

fn pool() -> Arc<PayloadPool> {
    Arc::new(PayloadPool::new(SEED, MAX_LEN + 1))
}

fn server_addrs() -> AddrVec {
    let addr: SocketAddr = format!("{SERVER_IP}:{SERVER_PORT}").parse().unwrap();
    AddrVec(vec![EntityAddr::msgr2(addr, SERVER_NONCE)])
}

/// A collector that also remembers each connection, to answer on it.
struct Tracker {
    sink: Arc<Collector>,
    conns: Mutex<Vec<ConnectionRef>>,
}

impl Dispatcher for Tracker {
    fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) {
        {
            let mut conns = self.conns.lock().unwrap();
            if !conns.contains(conn) {
                conns.push(conn.clone());
            }
        }
        self.sink.ms_dispatch(conn, msg)
    }
    fn ms_handle_connect(&self, conn: &ConnectionRef) {
        self.sink.ms_handle_connect(conn)
    }
    fn ms_handle_accept(&self, conn: &ConnectionRef) {
        self.sink.ms_handle_accept(conn)
    }
    fn ms_handle_reset(&self, conn: &ConnectionRef, why: &Error) {
        self.sink.ms_handle_reset(conn, why)
    }
    fn ms_handle_remote_reset(&self, conn: &ConnectionRef) {
        self.sink.ms_handle_remote_reset(conn)
    }
}

fn dpdk_json(stack: &msgr::stack::dpdk::DpdkStack) -> Value {
    let workers: Vec<Value> = (0..stack.queues())
        .filter_map(|w| stack.worker_stats(w))
        .map(|s| serde_json::to_value(s).unwrap())
        .collect();
    json!({ "total": serde_json::to_value(stack.stats()).unwrap(), "workers": workers })
}

/// Server role: receive EXPECT messages over CONNS connections, check every connection got exactly the
/// tids BASE_TID.. in order with intact payloads, report, answer DONE on each connection, wait for "exit".
fn server() {
    let (expect, conns, base) = (env_u64("EXPECT"), env_u64("CONNS"), env_u64("BASE_TID"));
    let pool = pool();
    let sink = Collector::new(pool.clone());
    let tracker = Arc::new(Tracker {
        sink: sink.clone(),
        conns: Mutex::new(Vec::new()),
    });
    let mut p = proto_config(entity_type::OSD, "osd.0");
    p.nonce = SERVER_NONCE;
    p.default_policy = Policy::stateful_server();
    let mut m = dpdk::messenger(&dpdk::param("ARGS"), p, tracker.clone());
    m.bind(&[format!("0.0.0.0:{SERVER_PORT}").parse().unwrap()])
        .unwrap();
    m.start().unwrap();
    dpdk::say("READY", m.stack().driver());
    let t0 = Instant::now();
    assert!(
        sink.wait_for(expect, Duration::from_secs(900)),
        "only {} of {expect} messages arrived",
        sink.received.load(Ordering::Relaxed)
    );
    let elapsed = t0.elapsed();
    assert_eq!(
        sink.corrupted.load(Ordering::Relaxed),
        0,
        "corrupted payloads"
    );
    let by_conn: BTreeMap<_, _> = sink.by_conn.lock().unwrap().clone().into_iter().collect();
    assert_eq!(by_conn.len() as u64, conns, "sessions seen by the server");
    let per_conn = expect / conns;
    for (id, tids) in &by_conn {
        let want: Vec<u64> = (base..base + per_conn).collect();
        assert!(
            tids == &want,
            "connection {id}: {} tids, first {:?}, not exactly {base}..{} in order",
            tids.len(),
            tids.first(),
            base + per_conn
        );
    }
    let c = m.counters();
    let stats = dpdk_json(m.stack());
    dpdk::say(
        "RECEIVED",
        json!({
            "received": sink.received.load(Ordering::Relaxed),
            "connections": by_conn.len(),
            "seconds": elapsed.as_secs_f64(),
            "bytes": c.bytes_in,
            "msgr": serde_json::to_value(&c).unwrap(),
            "dpdk": stats["total"],
            "workers": stats["workers"],
        }),
    );
    for conn in tracker.conns.lock().unwrap().iter() {
        conn.send(pool.message(DONE_TID, 0)).unwrap();
    }
    while dpdk::command() != "exit" {}
    m.shutdown().unwrap();
}

fn client_messenger(sink: Arc<Collector>) -> msgr::Messenger<msgr::stack::dpdk::DpdkStack> {
    let mut m = dpdk::messenger(
        &dpdk::param("ARGS"),
        proto_config(entity_type::CLIENT, "client.admin"),
        sink,
    );
    m.start().unwrap();
    m
}

/// A started client messenger with one lossless connection to the server, and what it collects.
fn connected_client() -> (
    Arc<PayloadPool>,
    Arc<Collector>,
    msgr::Messenger<msgr::stack::dpdk::DpdkStack>,
    ConnectionRef,
) {
    let pool = pool();
    let sink = Collector::new(pool.clone());
    let m = client_messenger(sink.clone());
    let conn = m
        .connect_to(entity_type::OSD, &server_addrs(), Policy::lossless_client())
        .unwrap();
    (pool, sink, m, conn)
}

/// Sends messages 0..100 of `len` bytes on `conn` and waits until every one is acknowledged.
fn send_and_await_acks(
    m: &msgr::Messenger<msgr::stack::dpdk::DpdkStack>,
    conn: &ConnectionRef,
    pool: &PayloadPool,
    len: usize,
) {
    for i in 0..100 {
        conn.send(pool.message(i, len)).unwrap();
    }
    wait_until("acks", Duration::from_secs(60), || {
        m.throttles().send.current_msgs == 0
    });
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// COUNT messages of random sizes on one lossless connection; every connection reset half-way.
fn client_stream() {
    let count = env_u64("COUNT");
    let (pool, sink, m, conn) = connected_client();
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    for i in 0..count {
        let len = rng.random_range(0..=MAX_LEN);
        conn.send(pool.message(i, len)).unwrap();
        if i == count / 2 {
            m.stack().abort_all_connections();
        }
    }
    wait_until("the server's DONE", Duration::from_secs(900), || {
        sink.received.load(Ordering::Relaxed) >= 1
    });
    let stats = dpdk_json(m.stack());
    dpdk::say(
        "DONE",
        json!({
            "msgr": serde_json::to_value(m.counters()).unwrap(),
            "dpdk": stats["total"],
        }),
    );
    while dpdk::command() != "exit" {}
}

/// 100 messages to the first server; when told, 100 more (tids 100..200) after the restarted server's
/// remote reset.
fn client_restart() {
    let (pool, sink, m, conn) = connected_client();
    // Everything acknowledged by the first server: nothing of the old session is left to replay.
    send_and_await_acks(&m, &conn, &pool, 1000);
    dpdk::say("ACKED", 100);
    assert_eq!(dpdk::command(), "go");
    // The old TCP connection is dead but idle; a keepalive makes the client notice (the new server
    // answers with RST), reconnect, and hear RESET_SESSION.
    let end = Instant::now() + Duration::from_secs(60);
    while sink.remote_resets.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < end, "no remote reset");
        let _ = conn.send_keepalive();
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 100..200 {
        conn.send(pool.message(i, 1000)).unwrap();
    }
    wait_until("the server's DONE", Duration::from_secs(60), || {
        sink.received.load(Ordering::Relaxed) >= 1
    });
    std::thread::sleep(Duration::from_millis(200));
    dpdk::say(
        "DONE",
        json!({ "remote_resets": sink.remote_resets.load(Ordering::Relaxed) }),
    );
    while dpdk::command() != "exit" {}
}

/// CONNS separate sessions (own client identities), COUNT messages each. With MSGR_FANOUT_ABORT_AT=i
/// every connection is reset after message i (with two server workers a reconnect can land on another
/// worker than its session, which then moves there).
fn client_fanout() {
    let (conns, count) = (env_u64("CONNS"), env_u64("COUNT"));
    let pool = pool();
    let sink = Collector::new(pool.clone());
    let m = client_messenger(sink.clone());
    let handles: Vec<_> = (0..conns)
        .map(|_| {
            m.connect_new(entity_type::OSD, &server_addrs(), Policy::lossless_client())
                .unwrap()
        })
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let abort_at = std::env::var("MSGR_FANOUT_ABORT_AT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    for i in 0..count {
        for h in &handles {
            h.send(pool.message(i, rng.random_range(0..=MAX_LEN / 4)))
                .unwrap();
        }
        if abort_at == Some(i) {
            wait_until("every session", Duration::from_secs(60), || {
                sink.connects.load(Ordering::Relaxed) >= conns
            });
            std::thread::sleep(Duration::from_millis(20));
            m.stack().abort_all_connections();
        }
    }
    wait_until(
        "the server's DONE on every connection",
        Duration::from_secs(300),
        || sink.received.load(Ordering::Relaxed) >= conns,
    );
    let stats = dpdk_json(m.stack());
    dpdk::say(
        "DONE",
        json!({
            "dpdk": stats["total"],
            "workers": stats["workers"],
            "msgr": serde_json::to_value(m.counters()).unwrap(),
        }),
    );
    while dpdk::command() != "exit" {}
}

/// Malformed frames (each class several times, plus random garbage) injected towards the server between
/// two batches of 100 messages.
fn client_garbage() {
    let (pool, sink, m, conn) = connected_client();
    send_and_await_acks(&m, &conn, &pool, 3000);
    let mut injected: BTreeMap<&str, u64> = BTreeMap::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    for round in 0..20u16 {
        for (key, frame) in garbage::frames(round) {
            m.stack().inject_frame(0, frame).unwrap();
            *injected.entry(key).or_default() += 1;
        }
        // Random bytes after a random prefix of a valid header.
        for _ in 0..20 {
            let len = rng.random_range(0..1600);
            let mut f: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if f.len() >= 6 && rng.random_bool(0.5) {
                f[..6].copy_from_slice(&garbage::SERVER_MAC_BYTES);
            }
            m.stack().inject_frame(0, f).unwrap();
            *injected.entry("random").or_default() += 1;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    for i in 100..200 {
        conn.send(pool.message(i, 3000)).unwrap();
    }
    wait_until("the server's DONE", Duration::from_secs(60), || {
        sink.received.load(Ordering::Relaxed) >= 1
    });
    dpdk::say("DONE", json!({ "injected": injected }));
    while dpdk::command() != "exit" {}
}

/// Server role: echoes every message, stalling [`STALL`] on tid [`STALL_TID`]; waits for "exit".
fn server_stall() {
    let mut p = proto_config(entity_type::OSD, "osd.0");
    p.nonce = SERVER_NONCE;
    p.default_policy = Policy::stateful_server();
    let echo = Arc::new(SlowOnceEcho {
        slow_tid: STALL_TID,
        delay: STALL,
    });
    let mut m = dpdk::messenger(&dpdk::param("ARGS"), p, echo);
    m.bind(&[format!("0.0.0.0:{SERVER_PORT}").parse().unwrap()])
        .unwrap();
    m.start().unwrap();
    dpdk::say("READY", m.stack().driver());
    while dpdk::command() != "exit" {}
    m.shutdown().unwrap();
}

/// 64 messages of 64 bytes queued before the session is up (they leave in one write); reports how long
/// before reply [`STALL_TID`] reply 0 arrived.
fn client_early() {
    let replies = Arc::new(Arrivals(Mutex::default()));
    let mut m = dpdk::messenger(
        &dpdk::param("ARGS"),
        proto_config(entity_type::CLIENT, "client.admin"),
        replies.clone(),
    );
    m.start().unwrap();
    let conn = m
        .connect_to(entity_type::OSD, &server_addrs(), Policy::lossless_client())
        .unwrap();
    for tid in 0..64 {
        let msg = Message::new(42, bytes::Bytes::from(vec![tid as u8; 64]));
        conn.send(msg.with_tid(tid)).unwrap();
    }
    wait_until("64 replies", Duration::from_secs(60), || {
        replies.0.lock().unwrap().len() >= 64
    });
    let (lead, in_order) = Arrivals::lead_of_first_over(&replies.0.lock().unwrap(), STALL_TID);
    dpdk::say(
        "DONE",
        json!({ "lead_ms": lead.as_secs_f64() * 1000.0, "in_order": in_order }),
    );
    while dpdk::command() != "exit" {}
}

/// Hand-made bad frames addressed to the server.
mod garbage {
    pub const SERVER_MAC_BYTES: [u8; 6] = [0x02, 0, 0, 0x77, 0, 0x01];
    const CLIENT_MAC_BYTES: [u8; 6] = [0x02, 0, 0, 0x77, 0, 0x02];
    const SRC: [u8; 4] = [10, 77, 0, 2];
    const DST: [u8; 4] = [10, 77, 0, 1];

    fn sum(initial: u32, data: &[u8]) -> u16 {
        let mut s = initial;
        for c in data.chunks(2) {
            s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    /// A valid frame to the server's port 6800 (its TCP would answer with RST or ignore it).
    fn valid(sport: u16) -> Vec<u8> {
        let payload = b"not a real segment";
        let mut f = Vec::new();
        f.extend_from_slice(&SERVER_MAC_BYTES);
        f.extend_from_slice(&CLIENT_MAC_BYTES);
        f.extend_from_slice(&[0x08, 0x00]);
        let total = (40 + payload.len()) as u16;
        let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&SRC);
        ip.extend_from_slice(&DST);
        let c = sum(0, &ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        let mut tcp = Vec::new();
        tcp.extend_from_slice(&sport.to_be_bytes());
        tcp.extend_from_slice(&6800u16.to_be_bytes());
        tcp.extend_from_slice(&[0, 0, 0, 9, 0, 0, 0, 0, 0x50, 0x10, 0x10, 0, 0, 0, 0, 0]);
        tcp.extend_from_slice(payload);
        let pseudo = u32::from(u16::from_be_bytes([SRC[0], SRC[1]]))
            + u32::from(u16::from_be_bytes([SRC[2], SRC[3]]))
            + u32::from(u16::from_be_bytes([DST[0], DST[1]]))
            + u32::from(u16::from_be_bytes([DST[2], DST[3]]))
            + 6
            + tcp.len() as u32;
        let c = sum(pseudo, &tcp);
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&tcp);
        f
    }

    fn fix_ip_checksum(f: &mut [u8]) {
        f[24..26].copy_from_slice(&[0, 0]);
        let c = sum(0, &f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
    }

    /// One of each malformation, with the stat that must count it.
    pub fn frames(round: u16) -> Vec<(&'static str, Vec<u8>)> {
        let sport = 1000 + round;
        let good = valid(sport);
        let mut out = Vec::new();
        // Shorter than Ethernet; shorter than IPv4; IPv4 total length past the frame.
        out.push(("drop_short", good[..10].to_vec()));
        out.push(("drop_short", good[..30].to_vec()));
        let mut f = good.clone();
        f[16..18].copy_from_slice(&1400u16.to_be_bytes());
        fix_ip_checksum(&mut f);
        out.push(("drop_short", f));
        // Bad IPv4 headers.
        let mut f = good.clone();
        f[14] = 0x42; // ihl 8 bytes
        out.push(("drop_bad_ip_header", f));
        let mut f = good.clone();
        f[14] = 0x65; // version 6
        out.push(("drop_bad_ip_header", f));
        let mut f = good.clone();
        f[24] ^= 0x5a;
        out.push(("drop_bad_ip_checksum", f));
        // Bad TCP.
        let mut f = good.clone();
        f[34 + 16] ^= 0x01;
        out.push(("drop_bad_tcp_checksum", f));
        let mut f = good.clone();
        f[34 + 12] = 0x30; // 12-byte header
        out.push(("drop_bad_tcp_offset", f));
        let mut f = good.clone();
        f[34 + 12] = 0xf0; // 60-byte header in a 38-byte segment
        out.push(("drop_bad_tcp_offset", f));
        // Not IPv4; not TCP/ICMP.
        let mut f = good.clone();
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        out.push(("drop_not_ipv4", f));
        let mut f = good;
        f[23] = 17;
        fix_ip_checksum(&mut f);
        out.push(("drop_unsupported", f));
        out
    }
}
