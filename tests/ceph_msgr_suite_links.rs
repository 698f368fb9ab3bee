//! Cluster backend links: the peer-session behaviours of ProtocolV2 (`_fault`, `handle_client_ident`,
//! `handle_reconnect`, `reuse_connection`) that two daemons keeping lossless sessions to each other rely
//! on, each checked end to end over the posix messenger on loopback (issue 12's named tests).
//!
//! Connections are cut at chosen moments with the fault stack's armed failures: the next read or write
//! of that messenger fails as an injected socket failure would (both directions shut down), so the peer
//! sees the cut too.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::net::*;
use common::suite::wait_until;
use common::PayloadPool;
use msgr::proto::types::{entity_type, AddrVec, AuthEntityName, EntityAddr};
use msgr::proto::{Config, Error, Message, Policy};
use msgr::{ConnId, ConnectionRef, Dispatcher};

/// A dispatcher that records what each side sees: messages (by connection, with arrival times), the
/// handles it met, and every callback.
#[derive(Default)]
struct Peer {
    tids: Mutex<HashMap<ConnId, Vec<u64>>>,
    arrivals: Mutex<HashMap<u64, Instant>>,
    handles: Mutex<Vec<ConnectionRef>>,
    received: AtomicU64,
    connects: AtomicU64,
    accepts: AtomicU64,
    resets: AtomicU64,
    remote_resets: AtomicU64,
    remote_reset_conns: Mutex<Vec<ConnId>>,
}

impl Peer {
    fn new() -> Arc<Self> {
        Arc::default()
    }

    fn note(&self, conn: &ConnectionRef) {
        let mut h = self.handles.lock().unwrap();
        if !h.contains(conn) {
            h.push(conn.clone());
        }
    }

    /// The first handle this side met (the accepted connection, on a server).
    fn handle(&self) -> ConnectionRef {
        self.handles.lock().unwrap()[0].clone()
    }

    fn has(&self, tid: u64) -> bool {
        self.arrivals.lock().unwrap().contains_key(&tid)
    }

    fn all_tids(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .tids
            .lock()
            .unwrap()
            .values()
            .flatten()
            .copied()
            .collect();
        v.sort_unstable();
        v
    }

    fn assert_in_order(&self, what: &str) {
        for tids in self.tids.lock().unwrap().values() {
            assert!(
                tids.windows(2).all(|w| w[0] < w[1]),
                "{what}: reordered or duplicated: {tids:?}"
            );
        }
    }
}

impl Dispatcher for Peer {
    fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) {
        self.note(conn);
        self.tids
            .lock()
            .unwrap()
            .entry(conn.id())
            .or_default()
            .push(msg.header.tid);
        self.arrivals
            .lock()
            .unwrap()
            .insert(msg.header.tid, Instant::now());
        self.received.fetch_add(1, Ordering::Release);
    }
    fn ms_handle_connect(&self, conn: &ConnectionRef) {
        self.note(conn);
        self.connects.fetch_add(1, Ordering::Relaxed);
    }
    fn ms_handle_accept(&self, conn: &ConnectionRef) {
        self.note(conn);
        self.accepts.fetch_add(1, Ordering::Relaxed);
    }
    fn ms_handle_reset(&self, _conn: &ConnectionRef, _why: &Error) {
        self.resets.fetch_add(1, Ordering::Relaxed);
    }
    fn ms_handle_remote_reset(&self, conn: &ConnectionRef) {
        self.remote_reset_conns.lock().unwrap().push(conn.id());
        self.remote_resets.fetch_add(1, Ordering::Relaxed);
    }
}

fn msg(pool: &PayloadPool, tid: u64) -> Message {
    pool.message(tid, 128)
}

/// Cut `from`'s next write and send message `tid` on `h` (a handle of `from`): the transport dies
/// with the message queued. True once `to` received it within 5 s; the cut must have happened.
fn cut_then_delivered(
    from: &PosixMessenger,
    h: &ConnectionRef,
    pool: &PayloadPool,
    tid: u64,
    to: &Peer,
) -> bool {
    from.stack().counters().arm(1);
    h.send(msg(pool, tid)).unwrap();
    let delivered = wait_until(Duration::from_secs(5), || to.has(tid));
    assert_eq!(
        from.stack().counters().armed(),
        0,
        "the cut was not injected"
    );
    delivered
}

/// A bound OSD-type messenger that treats OSD peers as lossless_peer, as OSDs do with each other.
fn osd(name: &str, workers: usize, d: Arc<Peer>) -> PosixMessenger {
    let mut p = proto_config(entity_type::OSD, name);
    p.accept_policies = vec![(entity_type::OSD, Policy::lossless_peer())];
    let mut m = messenger(p, workers, no_faults(), d);
    m.bind(&["127.0.0.1:0".parse().unwrap()]).unwrap();
    m.start().unwrap();
    m
}

/// Two OSDs with one lossless_peer session, dialled by `a`; both have exchanged a message, so `b`
/// holds the accepted side of the session.
struct PeerPair {
    a: PosixMessenger,
    b: PosixMessenger,
    pa: Arc<Peer>,
    pb: Arc<Peer>,
    /// `a`'s handle (it dialled).
    ha: ConnectionRef,
    /// `b`'s handle (it accepted).
    hb: ConnectionRef,
}

fn peer_pair(pool: &PayloadPool) -> PeerPair {
    let (pa, pb) = (Peer::new(), Peer::new());
    let a = osd("osd.1", 1, pa.clone());
    let b = osd("osd.2", 1, pb.clone());
    let ha = a
        .connect_to(entity_type::OSD, b.my_addrs(), Policy::lossless_peer())
        .unwrap();
    ha.send(msg(pool, 1)).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || pb.has(1)),
        "a → b never arrived"
    );
    let hb = pb.handle();
    hb.send(msg(pool, 2)).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || pa.has(2)),
        "b → a never arrived"
    );
    // Let the acks settle, so that the cut below lands on the next send.
    std::thread::sleep(Duration::from_millis(50));
    PeerPair {
        a,
        b,
        pa,
        pb,
        ha,
        hb,
    }
}

/// Defect 1: the accepting side of a lossless_peer session has a message queued when its transport
/// fails; it must re-dial the peer (at the address from CLIENT_IDENT), not wait in standby until the
/// other side happens to send.
#[test]
fn lossless_peer_accepting_side_redials() {
    let pool = PayloadPool::new(12, 4096);
    let p = peer_pair(&pool);
    let connects_before = p.pb.connects.load(Ordering::Relaxed);
    // b's next write fails: the transport dies with b's message queued; a, with nothing to send,
    // goes to standby (lossless_peer) and will not dial.
    assert!(
        cut_then_delivered(&p.b, &p.hb, &pool, 3, &p.pa),
        "the accepting side never re-dialled: its message is stuck"
    );
    assert!(
        p.pb.connects.load(Ordering::Relaxed) > connects_before,
        "b should have completed a connect (it dialled)"
    );
    // Still one session each way: same handles, nothing lost, nothing twice, no reset.
    assert_eq!(p.pa.all_tids(), vec![2, 3]);
    assert_eq!(p.pb.all_tids(), vec![1]);
    assert_eq!(
        p.pa.handles.lock().unwrap().len(),
        1,
        "a met a second connection"
    );
    assert_eq!(p.pb.handle(), p.hb);
    for side in [&p.pa, &p.pb] {
        assert_eq!(side.resets.load(Ordering::Relaxed), 0);
        assert_eq!(side.remote_resets.load(Ordering::Relaxed), 0);
    }
    for m in [&p.a, &p.b] {
        assert_eq!(m.counters().duplicates_dropped, 0);
    }
    assert!(!p.ha.is_closed());
}

/// Defect 1, second half: after the session of `a`'s dialled handle was taken over by a connection
/// `a` accepted (b re-dialled it), that handle must still be able to dial when it has something to
/// send and its transport fails.
#[test]
fn takeover_handle_redials() {
    let pool = PayloadPool::new(13, 4096);
    let p = peer_pair(&pool);
    // b re-dials a: a's handle now carries the session on a socket a accepted.
    assert!(
        cut_then_delivered(&p.b, &p.hb, &pool, 3, &p.pa),
        "b did not re-dial a"
    );
    std::thread::sleep(Duration::from_millis(50));
    // Now a's next write fails with a's message queued: a must dial b again.
    assert!(
        cut_then_delivered(&p.a, &p.ha, &pool, 4, &p.pb),
        "the taken-over handle never re-dialled"
    );
    assert_eq!(p.pb.all_tids(), vec![1, 4]);
    assert_eq!(p.pa.all_tids(), vec![2, 3]);
    p.pa.assert_in_order("a");
    p.pb.assert_in_order("b");
    for side in [&p.pa, &p.pb] {
        assert_eq!(side.resets.load(Ordering::Relaxed), 0);
        assert_eq!(side.remote_resets.load(Ordering::Relaxed), 0);
    }
}

/// A client messenger with a fixed address nonce, as a restarted client instance would have if it
/// happened to draw the same one (Ceph daemons keep theirs across reconnects).
fn client_with_nonce(nonce: u32, d: Arc<Peer>) -> PosixMessenger {
    let mut p = proto_config(entity_type::CLIENT, "client.admin");
    p.nonce = nonce;
    let mut m = messenger(p, 1, no_faults(), d);
    m.start().unwrap();
    m
}

/// Defect 2: a client comes back with a new session (new client cookie) to a stateful_server: the
/// server must report the peer's reset (ms_handle_remote_reset) on the connection it knew, and serve
/// the new session.
#[test]
fn server_reports_remote_reset() {
    let pool = PayloadPool::new(14, 4096);
    let ps = Peer::new();
    let srv = server(
        "127.0.0.1:0".parse().unwrap(),
        1,
        Policy::stateful_server(),
        no_faults(),
        ps.clone(),
    );
    let nonce = 0x5eed_0001;
    let c1 = client_with_nonce(nonce, Peer::new());
    let h1 = c1
        .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossless_client())
        .unwrap();
    h1.send(msg(&pool, 1)).unwrap();
    assert!(wait_until(Duration::from_secs(10), || ps.has(1)));
    let server_side = ps.handle();
    // The client process "restarts": same address, new session.
    drop(c1);
    let c2 = client_with_nonce(nonce, Peer::new());
    let h2 = c2
        .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossless_client())
        .unwrap();
    h2.send(msg(&pool, 2)).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || ps.has(2)),
        "the new session was not served"
    );
    assert!(
        wait_until(Duration::from_secs(2), || ps
            .remote_resets
            .load(Ordering::Relaxed)
            == 1),
        "ms_handle_remote_reset fired {} times on the server",
        ps.remote_resets.load(Ordering::Relaxed)
    );
    assert_eq!(
        *ps.remote_reset_conns.lock().unwrap(),
        vec![server_side.id()]
    );
    assert_eq!(srv.counters().remote_resets, 1);
}

/// Defect 3: a fault from READY re-dials at once (ProtocolV2 resets the back-off there); with
/// `initial_backoff` at 10 s the queued message must still arrive within 2 s.
#[test]
fn reconnect_from_ready_is_immediate() {
    let pool = PayloadPool::new(15, 4096);
    let ps = Peer::new();
    let srv = server(
        "127.0.0.1:0".parse().unwrap(),
        1,
        Policy::stateful_server(),
        no_faults(),
        ps.clone(),
    );
    let mut p = proto_config(entity_type::CLIENT, "client.admin");
    p.initial_backoff = Duration::from_secs(10);
    p.max_backoff = Duration::from_secs(20);
    let mut cli = messenger(p, 1, no_faults(), Peer::new());
    cli.start().unwrap();
    let h = cli
        .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossless_client())
        .unwrap();
    h.send(msg(&pool, 1)).unwrap();
    assert!(wait_until(Duration::from_secs(10), || ps.has(1)));
    std::thread::sleep(Duration::from_millis(50));
    cli.stack().counters().arm(1);
    let sent = Instant::now();
    h.send(msg(&pool, 2)).unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || ps.has(2)),
        "the reconnect after a fault from READY waited for the back-off"
    );
    assert_eq!(
        cli.stack().counters().armed(),
        0,
        "the cut was not injected"
    );
    assert!(cli.counters().reconnects >= 1);
    let took = ps.arrivals.lock().unwrap()[&2] - sent;
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(ps.all_tids(), vec![1, 2]);
}

/// Defect 4: two clients built with the library's default configuration on one host must present
/// different addresses (a random nonce each), so a server keeps two sessions and resets neither.
#[test]
fn two_library_clients_on_one_host_do_not_collide() {
    let pool = PayloadPool::new(16, 4096);
    let ps = Peer::new();
    let srv = server(
        "127.0.0.1:0".parse().unwrap(),
        1,
        Policy::stateful_server(),
        no_faults(),
        ps.clone(),
    );
    let mk = |d: Arc<Peer>| {
        // The library's defaults, not the tests' proto_config (which sets its own nonce).
        let p = Config::new(
            entity_type::CLIENT,
            AuthEntityName::parse("client.admin").unwrap(),
        );
        let mut m = messenger(p, 1, no_faults(), d);
        m.start().unwrap();
        m
    };
    let (p1, p2) = (Peer::new(), Peer::new());
    let (c1, c2) = (mk(p1.clone()), mk(p2.clone()));
    let h1 = c1
        .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossless_client())
        .unwrap();
    for t in 0..50 {
        h1.send(msg(&pool, t)).unwrap();
    }
    assert!(wait_until(Duration::from_secs(10), || ps
        .received
        .load(Ordering::Acquire)
        >= 50));
    let h2 = c2
        .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossless_client())
        .unwrap();
    for t in 100..150 {
        h2.send(msg(&pool, t)).unwrap();
    }
    for t in 50..100 {
        h1.send(msg(&pool, t)).unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(10), || ps
            .received
            .load(Ordering::Acquire)
            >= 150),
        "server got {} of 150",
        ps.received.load(Ordering::Acquire)
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(ps.all_tids(), (0..150).collect::<Vec<_>>());
    assert_eq!(
        ps.tids.lock().unwrap().len(),
        2,
        "two sessions on the server"
    );
    for (name, side) in [("server", &ps), ("client 1", &p1), ("client 2", &p2)] {
        assert_eq!(
            side.remote_resets.load(Ordering::Relaxed),
            0,
            "{name} saw a remote reset"
        );
        assert_eq!(side.resets.load(Ordering::Relaxed), 0, "{name} saw a reset");
    }
    let seen: Vec<AddrVec> = ps
        .handles
        .lock()
        .unwrap()
        .iter()
        .map(|h| h.peer().addrs)
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_ne!(seen[0], seen[1], "both clients present the same address");
    let _ = (h1, h2);
    assert_eq!(srv.registry_stats().sessions, 2);
}

/// Defect 5: reconnects that land on another server worker than their session move the session
/// there; under load (many sessions, two workers, cuts on every client) no reconnect may be answered
/// with a reset, and each message still arrives within 2 s of its send at the default back-off
/// (a WAIT would cost the peer `max_backoff`, 15 s).
#[test]
fn session_move_never_resets() {
    let pool = Arc::new(PayloadPool::new(17, 4096));
    let ps = Peer::new();
    let mut sp = proto_config(entity_type::OSD, "osd.0");
    sp.default_policy = Policy::stateful_server();
    let mut srv = messenger(sp, 2, no_faults(), ps.clone());
    srv.bind(&["127.0.0.1:0".parse().unwrap()]).unwrap();
    srv.start().unwrap();
    const CLIENTS: u64 = 6;
    const PER: u64 = 300;
    let mut clients = Vec::new();
    for k in 0..CLIENTS {
        let d = Peer::new();
        // Library defaults for back-off (200 ms doubling to 15 s).
        let mut p = Config::new(
            entity_type::CLIENT,
            AuthEntityName::parse("client.admin").unwrap(),
        );
        p.nonce = 0x1000 + k as u32;
        let mut m = messenger(p, 1, no_faults(), d.clone());
        m.start().unwrap();
        let h = m
            .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossless_client())
            .unwrap();
        clients.push((m, h, d));
    }
    let sent_at: Mutex<HashMap<u64, Instant>> = Mutex::default();
    for round in 0..PER {
        for (k, (m, h, _)) in clients.iter().enumerate() {
            // One cut at a time: a cut that lands on a reconnect's handshake is a failed attempt,
            // which backs off (that is not what this test measures).
            if round % 25 == 10 && m.stack().counters().armed() == 0 {
                m.stack().counters().arm(1);
            }
            let tid = k as u64 * 1_000_000 + round;
            sent_at.lock().unwrap().insert(tid, Instant::now());
            h.send(msg(&pool, tid)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let total = CLIENTS * PER;
    assert!(
        wait_until(Duration::from_secs(30), || ps
            .received
            .load(Ordering::Acquire)
            >= total),
        "server got {} of {total}",
        ps.received.load(Ordering::Acquire)
    );
    std::thread::sleep(Duration::from_millis(100));
    let want: Vec<u64> = (0..CLIENTS)
        .flat_map(|k| (0..PER).map(move |r| k * 1_000_000 + r))
        .collect();
    let mut want = want;
    want.sort_unstable();
    assert_eq!(ps.all_tids(), want, "lost or duplicated");
    ps.assert_in_order("server");
    let sent = sent_at.lock().unwrap();
    let arrivals = ps.arrivals.lock().unwrap();
    let worst = sent
        .iter()
        .map(|(tid, at)| arrivals[tid].saturating_duration_since(*at))
        .max()
        .unwrap();
    assert!(worst < Duration::from_secs(2), "a message took {worst:?}");
    assert_eq!(ps.remote_resets.load(Ordering::Relaxed), 0);
    for (_, _, d) in &clients {
        assert_eq!(
            d.remote_resets.load(Ordering::Relaxed),
            0,
            "a client's session was reset"
        );
        assert_eq!(d.resets.load(Ordering::Relaxed), 0);
    }
    let injected: u64 = clients
        .iter()
        .map(|(m, _, _)| m.stack().counters().injected())
        .sum();
    assert!(injected >= CLIENTS, "only {injected} cuts injected");
    assert!(
        srv.counters().sessions_moved > 0,
        "no session moved between workers"
    );
    assert_eq!(srv.counters().duplicates_dropped, 0);
}

/// Defect 8: closing one session of 10,000 touches only its own registry entry (counted, not timed).
#[test]
fn registry_close_is_constant_time() {
    // 10,000 lossless sessions to a port nobody listens on, told apart by their nonces: each is
    // registered, fails to connect and waits out a long back-off, holding no socket.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut p = proto_config(entity_type::CLIENT, "client.admin");
    p.initial_backoff = Duration::from_secs(60);
    p.max_backoff = Duration::from_secs(60);
    let mut cli = messenger(p, 2, no_faults(), Peer::new());
    cli.start().unwrap();
    const N: usize = 10_000;
    let mut handles = Vec::with_capacity(N);
    for i in 0..N {
        let addr = EntityAddr::msgr2(format!("127.0.0.1:{port}").parse().unwrap(), i as u32 + 1);
        handles.push(
            cli.connect_to(
                entity_type::OSD,
                &AddrVec(vec![addr]),
                Policy::lossless_client(),
            )
            .unwrap(),
        );
    }
    assert_eq!(cli.registry_stats().sessions, N);
    let before = cli.registry_stats().entries_visited;
    handles[N / 2].mark_down();
    assert!(wait_until(Duration::from_secs(10), || cli
        .registry_stats()
        .sessions
        == N - 1));
    let visited = cli.registry_stats().entries_visited - before;
    assert_eq!(
        visited, 1,
        "closing one session visited {visited} registry entries"
    );
    // A second close, same cost.
    handles[7].mark_down();
    assert!(wait_until(Duration::from_secs(10), || cli
        .registry_stats()
        .sessions
        == N - 2));
    assert_eq!(cli.registry_stats().entries_visited - before, 2);
}

/// A lossless_peer session keeps the policy its application chose however often it is taken over.
/// Here the two ends see each other as different entity types (an OSD dials a bound CLIENT-type
/// messenger that accepts OSDs as lossless_peer), so the OSD's accept policy for the re-dials it
/// accepts is stateful_server. After two take-overs by accepted sockets, the OSD's handle must still
/// re-dial with a message queued (ProtocolV2's reuse_connection keeps the existing connection's
/// policy); found by tests/dpdk_memif_stress.rs, where the session stalled parked as a server.
#[test]
fn twice_taken_over_peer_session_keeps_its_policy() {
    let pool = PayloadPool::new(16, 4096);
    let (pa, pb) = (Peer::new(), Peer::new());
    let a = osd("osd.1", 1, pa.clone());
    let mut p = proto_config(entity_type::CLIENT, "client.peer");
    p.accept_policies = vec![(entity_type::OSD, Policy::lossless_peer())];
    let mut b = messenger(p, 1, no_faults(), pb.clone());
    b.bind(&["127.0.0.1:0".parse().unwrap()]).unwrap();
    b.start().unwrap();
    let ha = a
        .connect_to(entity_type::CLIENT, b.my_addrs(), Policy::lossless_peer())
        .unwrap();
    ha.send(msg(&pool, 1)).unwrap();
    assert!(wait_until(Duration::from_secs(10), || pb.has(1)));
    let hb = pb.handle();
    // Twice: b's write fails with its message queued, b re-dials, a's accepted socket takes the session.
    for tid in [2, 3] {
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            cut_then_delivered(&b, &hb, &pool, tid, &pa),
            "b did not re-dial a (message {tid})"
        );
    }
    std::thread::sleep(Duration::from_millis(50));
    // Now a's write fails with a's message queued; b has nothing to send and waits in standby.
    assert!(
        cut_then_delivered(&a, &ha, &pool, 4, &pb),
        "a's session parked as a server: it never re-dialled"
    );
    assert_eq!(pb.all_tids(), vec![1, 4]);
    assert_eq!(pa.all_tids(), vec![2, 3]);
    for side in [&pa, &pb] {
        assert_eq!(side.resets.load(Ordering::Relaxed), 0);
        assert_eq!(side.remote_resets.load(Ordering::Relaxed), 0);
    }
}
