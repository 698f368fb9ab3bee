//! Ceph's test_msgr.cc synthetic cases (SyntheticStressTest*, SyntheticInjectTest*), ported and scaled
//! to a 2-vCPU machine: several server and client messengers, random connect / mark_down / send of
//! pings carrying up to 4 MiB, each answered by a pong with the same payload, with socket failures and
//! read delays injected by the fault stack (Ceph's ms_inject_socket_failures / ms_inject_internal_delays
//! / ms_inject_delay_*).
//!
//! What is checked, stricter than Ceph (which forgets a connection's outstanding pings on every
//! reconnect): on a lossless session every ping is answered exactly once, in order, with its payload,
//! unless the session was reset or marked down; nothing is ever delivered twice (no ping seq seen twice
//! by a server, `duplicates_dropped == 0`); all outstanding pings are answered in the end.
//!
//! Each test prints its seed; `MSGR_SUITE_SEED=<seed>` replays its choices (thread timing aside). Each
//! is bounded: operations stop after 30 s, and the test ends (drained or failed) within 58 s.

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use common::net::PosixMessenger;
use common::suite::*;
use msgr::proto::types::entity_type;
use msgr::proto::{Error, Message, Policy};
use msgr::stack::fault::FaultConfig;
use msgr::{ConnId, ConnectionRef, Dispatcher};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Ceph's SyntheticWorkload limits, scaled: messages up to 4 MiB as in Ceph, fewer in flight.
const MAX_IN_FLIGHT: usize = 32;
const MAX_CONNECTIONS: usize = 64;
const MAX_MESSAGE_LEN: usize = 4 << 20;
/// Operations stop being issued after this long (Ceph runs all of them, however long they take).
const OPS_TIME: Duration = Duration::from_secs(30);
/// The whole test, outstanding pings answered included, ends by then (Ceph allows 5 minutes to drain).
const TEST_TIME: Duration = Duration::from_secs(58);

const PING: u8 = 0;
const PONG: u8 = 1;

fn seed() -> u64 {
    let s = std::env::var("MSGR_SUITE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("synthetic workload seed: MSGR_SUITE_SEED={s}");
    s
}

/// A ping or pong: who, seq, then the data segment (Ceph's Payload).
fn payload_message(who: u8, seq: u64, data: Bytes) -> Message {
    let mut front = BytesMut::with_capacity(9);
    front.put_u8(who);
    front.put_u64_le(seq);
    Message::new(CEPH_MSG_PING, front.freeze()).with_data(data)
}

fn decode(m: &Message) -> Option<(u8, u64)> {
    let f = &m.front;
    (f.len() == 9).then(|| (f[0], u64::from_le_bytes(f[1..9].try_into().unwrap())))
}

/// A connection across the workload: (messenger index, its id there). Connection ids are unique per
/// messenger only.
type Key = (usize, ConnId);

#[derive(Default)]
struct Tracking {
    /// Outstanding pings: seq -> payload, and per client connection in sending order.
    sent: HashMap<u64, Bytes>,
    conn_sent: HashMap<Key, VecDeque<u64>>,
    /// Every ping seq a server has seen: none twice.
    pings_seen: HashSet<u64>,
    pongs: u64,
    failures: Vec<String>,
    /// Connections that reset (lossy fault, mark_down on the peer): out of the workload.
    reset: Vec<Key>,
}

/// Ceph's SyntheticDispatcher, shared by every messenger of the workload.
struct SyntheticDispatcher {
    t: Mutex<Tracking>,
    next_seq: std::sync::atomic::AtomicU64,
}

impl SyntheticDispatcher {
    fn clear_pending(t: &mut Tracking, id: Key) {
        if let Some(q) = t.conn_sent.remove(&id) {
            for s in q {
                t.sent.remove(&s);
            }
        }
    }

    fn pending(&self) -> usize {
        self.t.lock().unwrap().sent.len()
    }
}

/// The shared dispatcher as one messenger (index `m`) sees it.
struct Side {
    m: usize,
    d: Arc<SyntheticDispatcher>,
}

impl Dispatcher for Side {
    fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) {
        self.d.dispatch((self.m, conn.id()), conn, msg)
    }
    fn ms_handle_reset(&self, conn: &ConnectionRef, _why: &Error) {
        let mut t = self.d.t.lock().unwrap();
        SyntheticDispatcher::clear_pending(&mut t, (self.m, conn.id()));
        t.reset.push((self.m, conn.id()));
    }
    fn ms_handle_remote_reset(&self, conn: &ConnectionRef) {
        let mut t = self.d.t.lock().unwrap();
        SyntheticDispatcher::clear_pending(&mut t, (self.m, conn.id()));
    }
}

impl SyntheticDispatcher {
    fn dispatch(&self, key: Key, conn: &ConnectionRef, msg: Message) {
        if msg.header.msg_type == MSG_COMMAND {
            return; // only there to disorganise the regular flow
        }
        let Some((who, seq)) = decode(&msg) else {
            self.t
                .lock()
                .unwrap()
                .failures
                .push(format!("undecodable message on {}", conn.id()));
            return;
        };
        if who == PING {
            {
                let mut t = self.t.lock().unwrap();
                if !t.pings_seen.insert(seq) {
                    t.failures.push(format!("ping {seq} delivered twice"));
                }
            }
            let _ = conn.send(payload_message(PONG, seq, msg.data.clone()));
            return;
        }
        let mut t = self.t.lock().unwrap();
        t.pongs += 1;
        if let Some(expected) = t.sent.get(&seq).cloned() {
            let front = t.conn_sent.get(&key).and_then(|q| q.front().copied());
            if front != Some(seq) {
                t.failures.push(format!(
                    "conn {}: pong {seq} out of order (expected {front:?})",
                    conn.id()
                ));
            } else if expected != msg.data {
                t.failures
                    .push(format!("conn {}: pong {seq} payload differs", conn.id()));
            }
            if let Some(q) = t.conn_sent.get_mut(&key) {
                q.retain(|&s| s != seq);
            }
            t.sent.remove(&seq);
        }
    }
}

/// What a workload is made of (Ceph's SyntheticWorkload constructor arguments, scaled).
struct Spec {
    servers: usize,
    clients: usize,
    srv_policy: Policy,
    cli_policy: Policy,
    fault: fn(u64) -> FaultConfig,
    /// Percent thresholds: above `connect` → new connection, above `drop` → mark one down, above
    /// `send` → send, else sleep (Ceph's `val > 90 / > 80 / > 10`).
    connect: u32,
    drop: u32,
    send: u32,
    seed_connections: usize,
    ops: usize,
}

struct Workload {
    rng: SmallRng,
    servers: Vec<PosixMessenger>,
    clients: Vec<PosixMessenger>,
    spec: Spec,
    d: Arc<SyntheticDispatcher>,
    /// Connection -> (client index, server index).
    conns: Vec<(ConnectionRef, usize, usize)>,
    rand_data: Vec<Bytes>,
    ops_end: Instant,
    test_end: Instant,
}

impl Workload {
    fn new(spec: Spec, seed: u64) -> Workload {
        let started = Instant::now();
        let mut rng = SmallRng::seed_from_u64(seed);
        let d = Arc::new(SyntheticDispatcher {
            t: Mutex::new(Tracking::default()),
            next_seq: std::sync::atomic::AtomicU64::new(0),
        });
        let mut servers = Vec::new();
        for i in 0..spec.servers {
            let mut c = osd_config();
            c.default_policy = spec.srv_policy;
            servers.push(start(
                c,
                2,
                Some(loopback()),
                (spec.fault)(seed ^ (i as u64 + 1)),
                Arc::new(Side { m: i, d: d.clone() }),
            ));
        }
        let mut clients = Vec::new();
        for i in 0..spec.clients {
            let mut c = client_config();
            c.default_policy = spec.cli_policy;
            // A peer that may be dialled back (standby policies) needs an address.
            let bind = spec.cli_policy.standby.then(loopback);
            clients.push(start(
                c,
                2,
                bind,
                (spec.fault)(seed ^ (0x100 + i as u64)),
                Arc::new(Side {
                    m: spec.servers + i,
                    d: d.clone(),
                }),
            ));
        }
        // Payloads from 32 bytes to 4 MiB, spread log-uniformly (Ceph: uniform), each one recognisable.
        let rand_data = (0..24u32)
            .map(|i| {
                let bits = rng.random_range(5.0..22.0f64);
                let len = (2f64.powf(bits) as usize).clamp(32, MAX_MESSAGE_LEN);
                let mut v = vec![0u8; len];
                for (j, chunk) in v.chunks_mut(4096).enumerate() {
                    let tag = (i << 16 | j as u32).to_le_bytes();
                    let n = chunk.len().min(4);
                    chunk[..n].copy_from_slice(&tag[..n]);
                }
                Bytes::from(v)
            })
            .collect();
        Workload {
            rng,
            servers,
            clients,
            spec,
            d,
            conns: Vec::new(),
            rand_data,
            ops_end: started + OPS_TIME,
            test_end: started + TEST_TIME,
        }
    }

    /// The tracking key of a client's connection.
    fn key(&self, client: usize, conn: &ConnectionRef) -> Key {
        (self.spec.servers + client, conn.id())
    }

    fn forget_reset(&mut self) {
        let reset: Vec<Key> = std::mem::take(&mut self.d.t.lock().unwrap().reset);
        let servers = self.spec.servers;
        if !reset.is_empty() {
            self.conns
                .retain(|(x, c, _)| !reset.contains(&(servers + *c, x.id())));
        }
        self.conns.retain(|(x, _, _)| !x.is_closed());
    }

    fn generate_connection(&mut self) {
        if self.conns.len() >= MAX_CONNECTIONS {
            return;
        }
        let s = self.rng.random_range(0..self.servers.len());
        let c = self.rng.random_range(0..self.clients.len());
        let conn = self.clients[c]
            .connect_to(
                entity_type::OSD,
                self.servers[s].my_addrs(),
                self.spec.cli_policy,
            )
            .unwrap();
        if !self.conns.iter().any(|(x, xc, _)| *xc == c && *x == conn) {
            self.conns.push((conn, c, s));
        }
    }

    /// A random live connection, once fewer than MAX_IN_FLIGHT pings are outstanding.
    fn random_connection(&mut self) -> Option<(ConnectionRef, usize, usize)> {
        let end = self.ops_end;
        while self.d.pending() > MAX_IN_FLIGHT && Instant::now() < end {
            std::thread::sleep(Duration::from_micros(500));
        }
        self.forget_reset();
        if self.conns.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..self.conns.len());
        Some(self.conns[i].clone())
    }

    fn send_message(&mut self) {
        let Some((conn, c, _)) = self.random_connection() else {
            return;
        };
        let key = self.key(c, &conn);
        if self.rng.random_range(0..100) >= 95 {
            let m = Message::new(MSG_COMMAND, Bytes::from_static(b"command")).with_priority(200);
            let _ = conn.send(m);
            return;
        }
        let data = self.rand_data[self.rng.random_range(0..self.rand_data.len())].clone();
        let seq = self
            .d
            .next_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !self.spec.cli_policy.lossy {
            let mut t = self.d.t.lock().unwrap();
            t.sent.insert(seq, data.clone());
            t.conn_sent.entry(key).or_default().push_back(seq);
        }
        if conn.send(payload_message(PING, seq, data)).is_err() {
            // Closed under us (a reset): nothing outstanding on it any more.
            let mut t = self.d.t.lock().unwrap();
            SyntheticDispatcher::clear_pending(&mut t, key);
        }
    }

    fn drop_connection(&mut self) {
        if self.conns.len() < 10 {
            return;
        }
        let Some((conn, c, s)) = self.random_connection() else {
            return;
        };
        {
            let key = self.key(c, &conn);
            let mut t = self.d.t.lock().unwrap();
            SyntheticDispatcher::clear_pending(&mut t, key);
        }
        conn.mark_down();
        let p = self.spec.cli_policy;
        if !p.server && !p.lossy && p.standby && !self.spec.srv_policy.server {
            // A lossless peer policy: mark down each side (Ceph: the server's connect_to the client
            // is its end of the session).
            if let Ok(peer) = self.servers[s].connect_to(
                entity_type::CLIENT,
                self.clients[c].my_addrs(),
                self.spec.srv_policy,
            ) {
                peer.mark_down();
            }
        }
        self.conns.retain(|(x, xc, _)| !(*xc == c && *x == conn));
    }

    fn run(&mut self) {
        for _ in 0..self.spec.seed_connections {
            self.generate_connection();
        }
        eprintln!("synthetic: {} connections seeded", self.conns.len());
        for op in 0..self.spec.ops {
            if op == self.spec.ops / 2 && (self.spec.fault)(0).socket_failure_one_in > 0 {
                // Besides the random ones (a rate per socket call, and short runs make few calls): one
                // armed failure per client messenger, so every injecting run cuts connections mid-traffic.
                for m in &self.clients {
                    m.stack().counters().arm(1);
                }
            }
            if Instant::now() >= self.ops_end {
                eprintln!("synthetic: operations stopped after {OPS_TIME:?}");
                break;
            }
            let val = self.rng.random_range(0..100u32);
            if val > self.spec.connect {
                self.generate_connection();
            } else if val > self.spec.drop {
                self.drop_connection();
            } else if val > self.spec.send {
                self.send_message();
            } else {
                std::thread::sleep(Duration::from_micros(self.rng.random_range(100..600)));
            }
        }
    }

    /// Ceph's wait_for_done: every outstanding ping answered, then the checks.
    fn wait_for_done(mut self) {
        let end = self.test_end;
        while self.d.pending() > 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(100));
        }
        // Lossy sessions track nothing: let what is in flight settle.
        let mut last = u64::MAX;
        while Instant::now() < end {
            let pongs = self.d.t.lock().unwrap().pongs;
            if pongs == last {
                break;
            }
            last = pongs;
            std::thread::sleep(Duration::from_millis(300));
        }
        let (unanswered, stuck, failures, seen, pongs) = {
            let t = self.d.t.lock().unwrap();
            let stuck: Vec<(Key, usize)> = t
                .conn_sent
                .iter()
                .filter(|(_, q)| !q.is_empty())
                .map(|(id, q)| (*id, q.len()))
                .collect();
            (
                t.sent.len(),
                stuck,
                t.failures.clone(),
                t.pings_seen.len(),
                t.pongs,
            )
        };
        eprintln!(
            "synthetic: {seen} pings seen by servers, {pongs} pongs, {} connections left",
            self.conns.len()
        );
        assert_eq!(
            unanswered, 0,
            "pings unanswered {TEST_TIME:?} into the test on (conn, count) {stuck:?}"
        );
        assert!(failures.is_empty(), "{failures:?}");
        assert!(pongs > 0, "no ping was ever answered");
        let injected: u64 = self
            .servers
            .iter()
            .chain(self.clients.iter())
            .map(|m| m.stack().counters().injected())
            .sum();
        eprintln!("synthetic: {injected} socket failures injected");
        if (self.spec.fault)(0).socket_failure_one_in > 0 {
            assert!(injected > 0, "no fault was injected");
        }
        for m in self.servers.iter().chain(self.clients.iter()) {
            assert_no_duplicates(m);
        }
        for m in self.servers.iter_mut().chain(self.clients.iter_mut()) {
            m.shutdown().unwrap();
        }
    }
}

fn no_injection(_: u64) -> FaultConfig {
    common::net::no_faults()
}

/// ms_inject_socket_failures = 30, ms_inject_internal_delays = 0.1 (scaled to a millisecond).
fn inject_30(seed: u64) -> FaultConfig {
    FaultConfig {
        socket_failure_one_in: 30,
        read_delay: Duration::from_millis(1),
        seed,
    }
}

/// ms_inject_socket_failures = 600.
fn inject_600(seed: u64) -> FaultConfig {
    FaultConfig {
        socket_failure_one_in: 600,
        read_delay: Duration::from_millis(1),
        seed,
    }
}

/// SyntheticInjectTest4: failures 1 in 30 and every message delayed (ms_inject_delay_probability 1,
/// ms_inject_delay_max 5 s, scaled to 20 ms).
fn inject_30_delayed(seed: u64) -> FaultConfig {
    FaultConfig {
        socket_failure_one_in: 30,
        read_delay: Duration::from_millis(20),
        seed,
    }
}

fn run(spec: Spec) {
    let started = Instant::now();
    let mut w = Workload::new(spec, seed());
    w.run();
    w.wait_for_done();
    eprintln!("synthetic: took {:?}", started.elapsed());
}

/// Ceph: 8 servers, 32 clients, stateful_server / lossless_client, 100 connections, 5000 ops.
#[test]
fn synthetic_stress_test() {
    run(Spec {
        servers: 3,
        clients: 6,
        srv_policy: Policy::stateful_server(),
        cli_policy: Policy::lossless_client(),
        fault: no_injection,
        connect: 90,
        drop: 80,
        send: 10,
        seed_connections: 20,
        ops: 3000,
    });
}

/// Ceph: 16 servers, 32 clients, lossless_peer_reuse both ways, 10 connections, 10000 ops.
#[test]
fn synthetic_stress_test1() {
    run(Spec {
        servers: 3,
        clients: 6,
        srv_policy: Policy::lossless_peer_reuse(),
        cli_policy: Policy::lossless_peer_reuse(),
        fault: no_injection,
        connect: 80,
        drop: 60,
        send: 10,
        seed_connections: 10,
        ops: 4000,
    });
}

/// Ceph: 8 servers, 32 clients, stateful_server / lossless_client, failures 1 in 30, 1000 ops.
#[test]
fn synthetic_inject_test() {
    run(Spec {
        servers: 3,
        clients: 6,
        srv_policy: Policy::stateful_server(),
        cli_policy: Policy::lossless_client(),
        fault: inject_30,
        connect: 90,
        drop: 80,
        send: 10,
        seed_connections: 20,
        ops: 400,
    });
}

/// Ceph: 8 servers, 16 clients, lossless_peer_reuse both ways, failures 1 in 30, 1000 ops.
#[test]
fn synthetic_inject_test2() {
    run(Spec {
        servers: 3,
        clients: 5,
        srv_policy: Policy::lossless_peer_reuse(),
        cli_policy: Policy::lossless_peer_reuse(),
        fault: inject_30,
        connect: 90,
        drop: 80,
        send: 10,
        seed_connections: 20,
        ops: 400,
    });
}

/// Ceph: 8 servers, 16 clients, stateless_server / lossy_client, failures 1 in 600, 1000 ops. Lossy:
/// nothing is tracked but that no ping is delivered twice.
#[test]
fn synthetic_inject_test3() {
    run(Spec {
        servers: 3,
        clients: 5,
        srv_policy: Policy::stateless_server(),
        cli_policy: Policy::lossy_client(),
        fault: inject_600,
        connect: 90,
        drop: 80,
        send: 10,
        seed_connections: 20,
        ops: 400,
    });
}

/// Ceph: 16 servers, 32 clients, lossless_peer both ways, failures 1 in 30, every message delayed, no
/// mark_down (commented out in Ceph), 1000 ops.
#[test]
fn synthetic_inject_test4() {
    run(Spec {
        servers: 3,
        clients: 6,
        srv_policy: Policy::lossless_peer(),
        cli_policy: Policy::lossless_peer(),
        fault: inject_30_delayed,
        connect: 95,
        drop: 95,
        send: 10,
        seed_connections: 20,
        ops: 400,
    });
}
