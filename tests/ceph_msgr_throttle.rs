//! Flow control as Ceph has it (issue 12, defect 7): receive throttles per peer type plus the dispatch
//! throttle pause reading only the connections whose budget is used up; each connection has its own
//! send budget (`try_send` / `send_timeout`), and every permit returns on every path.

mod common;

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::net::*;
use common::suite::wait_until;
use common::PayloadPool;
use msgr::proto::types::{entity_type, AddrVec, EntityAddr};
use msgr::proto::{Config, Message, Policy};
use msgr::stack::fault::{FaultConfig, FaultStack};
use msgr::stack::posix::PosixStack;
use msgr::{ConnectionRef, Dispatcher, Messenger, MessengerConfig, RecvThrottle, TrySendError};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// A started messenger of `proto`'s entity on loopback, configured by `tune`.
fn started(
    proto: Config,
    workers: usize,
    fault: FaultConfig,
    bind: bool,
    d: Arc<dyn Dispatcher>,
    tune: impl FnOnce(&mut MessengerConfig),
) -> PosixMessenger {
    let mut cfg = MessengerConfig::new(proto);
    cfg.workers.threads = workers;
    tune(&mut cfg);
    let mut m = Messenger::new(FaultStack::new(PosixStack::new(), fault), cfg, d);
    if bind {
        m.bind(&["127.0.0.1:0".parse().unwrap()]).unwrap();
    }
    m.start().unwrap();
    m
}

fn server_proto() -> Config {
    let mut p = proto_config(entity_type::OSD, "osd.0");
    p.default_policy = Policy::stateful_server();
    p
}

/// Holds the messages of peers of one entity type (a consumer that has stalled) and drops the others
/// at once, recording when each arrived.
struct Holder {
    hold_type: u8,
    holding: AtomicBool,
    held: Mutex<Vec<Message>>,
    held_total: AtomicU64,
    others: AtomicU64,
    last_other: Mutex<Option<Instant>>,
}

impl Holder {
    fn new(hold_type: u8) -> Arc<Self> {
        Arc::new(Holder {
            hold_type,
            holding: AtomicBool::new(true),
            held: Mutex::new(Vec::new()),
            held_total: AtomicU64::new(0),
            others: AtomicU64::new(0),
            last_other: Mutex::new(None),
        })
    }

    /// The consumer catches up: drop what it holds and hold nothing more.
    fn release(&self) {
        self.holding.store(false, Ordering::SeqCst);
        self.held.lock().unwrap().clear();
    }
}

impl Dispatcher for Holder {
    fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) {
        if conn.peer().entity_type == self.hold_type {
            self.held_total.fetch_add(1, Ordering::SeqCst);
            if self.holding.load(Ordering::SeqCst) {
                self.held.lock().unwrap().push(msg);
            }
        } else {
            self.others.fetch_add(1, Ordering::SeqCst);
            *self.last_other.lock().unwrap() = Some(Instant::now());
        }
    }
}

#[test]
fn slow_dispatcher_throttles_only_its_own_peers() {
    const BUDGET: u64 = 1 << 20;
    const READ_BUF: usize = 64 * 1024;
    const LEN: usize = 64 * 1024;
    let pool = Arc::new(PayloadPool::new(11, LEN));
    let holder = Holder::new(entity_type::OSD);
    // One worker: A and B share the thread, so only the throttle can keep them apart.
    let srv = started(server_proto(), 1, no_faults(), true, holder.clone(), |c| {
        c.read_buffer = READ_BUF;
        c.recv_throttles = vec![
            RecvThrottle {
                entity_type: entity_type::OSD,
                bytes: BUDGET,
                msgs: 0,
            },
            RecvThrottle {
                entity_type: entity_type::CLIENT,
                bytes: BUDGET,
                msgs: 0,
            },
        ];
    });
    let a = started(
        proto_config(entity_type::OSD, "osd.1"),
        1,
        no_faults(),
        false,
        Collector::new(pool.clone()),
        |c| c.send_budget_bytes = 0,
    );
    let b = client(1, no_faults(), Collector::new(pool.clone()));
    let to_a = a
        .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossless_client())
        .unwrap();
    let to_b = b
        .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossless_client())
        .unwrap();

    // Peer A floods the server, whose consumer of A's messages has stalled.
    const N_A: u64 = 200;
    for i in 0..N_A {
        to_a.send(pool.message(i, LEN)).unwrap();
    }
    let recv_a = |m: &PosixMessenger| {
        m.throttles()
            .recv
            .iter()
            .find(|r| r.entity_type == entity_type::OSD)
            .unwrap()
            .stats
    };
    assert!(
        wait_until(Duration::from_secs(10), || recv_a(&srv).blocked > 0),
        "the server never paused A: {:?}",
        srv.throttles()
    );
    // A's reads stay paused: what the server took of A stays within the budget plus what one read
    // can bring in beyond it.
    let bound = BUDGET + READ_BUF as u64 + LEN as u64;
    std::thread::sleep(Duration::from_millis(300));
    let held_then = holder.held_total.load(Ordering::SeqCst);
    let t = recv_a(&srv);
    assert!(
        t.current_bytes <= bound,
        "A's bytes in flight exceed the budget: {t:?}"
    );
    assert!(
        held_then * (LEN as u64) <= bound,
        "{held_then} of A's messages dispatched"
    );
    assert!(held_then < N_A);
    // The back-pressure reaches A: its messages stay queued or unacknowledged.
    assert!(to_a.send_budget().current_msgs >= N_A - held_then);

    // Meanwhile B, on the same server worker, is served promptly.
    let start = Instant::now();
    const N_B: u64 = 100;
    for i in 0..N_B {
        to_b.send(pool.message(i, 4096)).unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(5), || holder
            .others
            .load(Ordering::SeqCst)
            == N_B),
        "B got {} of {N_B} through",
        holder.others.load(Ordering::SeqCst)
    );
    let last = holder.last_other.lock().unwrap().unwrap();
    assert!(
        last.duration_since(start) < Duration::from_secs(5),
        "B was held up"
    );
    assert_eq!(
        holder.held_total.load(Ordering::SeqCst),
        held_then,
        "A stayed paused while B was served"
    );

    // The consumer catches up on this thread (not a worker): the release wakes the worker, which
    // reads A again through its run list.
    holder.release();
    assert!(
        wait_until(Duration::from_secs(30), || holder
            .held_total
            .load(Ordering::SeqCst)
            == N_A),
        "A was not resumed: {} of {N_A}",
        holder.held_total.load(Ordering::SeqCst)
    );
    assert!(wait_until(Duration::from_secs(10), || srv
        .throttles()
        .is_idle()
        && a.throttles().is_idle()
        && b.throttles().is_idle()));
}

#[test]
fn dead_peer_does_not_block_other_senders() {
    const BUDGET: u64 = 256 * 1024;
    const LEN: usize = 16 * 1024;
    let pool = Arc::new(PayloadPool::new(12, LEN));
    // Dead peer 1: a listener that accepts and never reads or writes.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    let acceptor = std::thread::spawn(move || {
        let (s, _) = dead.accept().unwrap();
        s
    });
    // Dead peer 2: a messenger whose consumer stalled, so it has stopped reading (its receive throttle
    // is used up) and never acks.
    let stalled = Holder::new(entity_type::CLIENT);
    let stuck = started(server_proto(), 1, no_faults(), true, stalled.clone(), |c| {
        c.recv_throttles = vec![RecvThrottle {
            entity_type: entity_type::CLIENT,
            bytes: 64 * 1024,
            msgs: 0,
        }];
    });
    let sink = Collector::new(pool.clone());
    let healthy = loopback_server(sink.clone());

    let cli = started(
        proto_config(entity_type::CLIENT, "client.admin"),
        1,
        no_faults(),
        false,
        Collector::new(pool.clone()),
        |c| c.send_budget_bytes = BUDGET,
    );
    let to_dead = cli
        .connect_to(
            entity_type::OSD,
            &AddrVec(vec![EntityAddr::msgr2(dead_addr, 0)]),
            Policy::lossless_client(),
        )
        .unwrap();
    let to_stuck = cli
        .connect_to(
            entity_type::OSD,
            stuck.my_addrs(),
            Policy::lossless_client(),
        )
        .unwrap();
    let to_healthy = cli
        .connect_to(
            entity_type::OSD,
            healthy.my_addrs(),
            Policy::lossless_client(),
        )
        .unwrap();

    // Fill both dead connections' budgets.
    for conn in [&to_dead, &to_stuck] {
        let mut i = 0;
        loop {
            match conn.send_timeout(pool.message(i, LEN), Duration::from_secs(2)) {
                Ok(()) => i += 1,
                Err(TrySendError::Timeout(m)) => {
                    assert_eq!(m.header.tid, i, "the message comes back");
                    assert!(m.permit().is_none());
                    break;
                }
                Err(e) => panic!("{e}"),
            }
            assert!(i < 1000, "the budget never filled up");
        }
        assert!(conn.send_budget().current_bytes >= BUDGET - LEN as u64);
        match conn.try_send(pool.message(0, LEN)) {
            Err(e @ TrySendError::WouldBlock(_)) => assert!(e.is_full()),
            other => panic!("try_send to a dead peer: {other:?}"),
        }
        let start = Instant::now();
        let r = conn.send_timeout(pool.message(0, LEN), Duration::from_millis(200));
        assert!(matches!(r, Err(TrySendError::Timeout(_))), "{r:?}");
        assert!(start.elapsed() >= Duration::from_millis(200));
    }
    // A lossy session (the server's policy decides: stateless_server) to a peer that stops reading
    // after the handshake: a lossy message lets go of its budget once encoded, but encoding waits for
    // the socket, so its budget fills too instead of its memory growing.
    let stalled_lossy = Holder::new(entity_type::CLIENT);
    let mut lossy_proto = server_proto();
    lossy_proto.default_policy = Policy::stateless_server();
    let stuck_lossy = started(
        lossy_proto,
        1,
        no_faults(),
        true,
        stalled_lossy.clone(),
        |c| {
            c.recv_throttles = vec![RecvThrottle {
                entity_type: entity_type::CLIENT,
                bytes: 1,
                msgs: 0,
            }];
        },
    );
    let to_stuck_lossy = cli
        .connect_to(
            entity_type::OSD,
            stuck_lossy.my_addrs(),
            Policy::lossy_client(),
        )
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || to_stuck_lossy.is_connected()));
    let mut queued = 0u64;
    loop {
        match to_stuck_lossy.send_timeout(pool.message(queued, LEN), Duration::from_millis(300)) {
            Ok(()) => queued += 1,
            Err(TrySendError::Timeout(_)) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(
            queued * (LEN as u64) < 64 << 20,
            "64 MiB queued to a lossy peer that does not read"
        );
    }
    assert!(matches!(
        to_stuck_lossy.try_send(pool.message(0, LEN)),
        Err(TrySendError::WouldBlock(_))
    ));
    // Budget held, for good: nothing of it returns.
    std::thread::sleep(Duration::from_millis(200));
    assert!(to_dead.send_budget().current_bytes >= BUDGET - LEN as u64);
    assert!(to_stuck.send_budget().current_bytes >= BUDGET - LEN as u64);

    // Sends to the healthy peer from the same messenger go through, blocking `send` included (in a
    // thread, so that a regression fails the test instead of hanging it).
    const N: u64 = 500;
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    let h = to_healthy.clone();
    let p2 = pool.clone();
    std::thread::spawn(move || {
        for i in 0..N {
            h.send(p2.message(i, LEN)).unwrap();
        }
        let _ = done_tx.send(());
    });
    assert!(
        done_rx.recv_timeout(Duration::from_secs(20)).is_ok(),
        "sends to the healthy peer blocked"
    );
    assert!(sink.wait_for(N, Duration::from_secs(20)));
    assert_eq!(sink.corrupted.load(Ordering::Relaxed), 0);

    // mark_down releases everything a connection holds.
    to_dead.mark_down();
    to_stuck.mark_down();
    to_stuck_lossy.mark_down();
    assert!(wait_until(Duration::from_secs(5), || to_dead
        .send_budget()
        .is_idle()
        && to_stuck.send_budget().is_idle()
        && to_stuck_lossy.send_budget().is_idle()));
    assert!(matches!(
        to_dead.try_send(pool.message(0, LEN)),
        Err(TrySendError::Closed(_))
    ));
    assert!(to_dead.send(pool.message(0, LEN)).is_err());
    stalled.release();
    stalled_lossy.release();
    assert!(wait_until(Duration::from_secs(10), || cli
        .throttles()
        .is_idle()
        && stuck.throttles().is_idle()
        && stuck_lossy.throttles().is_idle()
        && healthy.throttles().is_idle()));
    drop(acceptor.join().unwrap());
}

/// A server dispatcher for the leak test: keeps some messages a while (a slow consumer, on another
/// thread), answers some (so the servers' send budgets move with their sessions between workers too),
/// remembers the connections it accepted so that the test can mark them down.
struct Keeper {
    tx: crossbeam_channel::Sender<(Instant, Message)>,
    accepted: Mutex<Vec<ConnectionRef>>,
    got: AtomicU64,
    seed: AtomicU64,
}

impl Dispatcher for Keeper {
    fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) {
        self.got.fetch_add(1, Ordering::Relaxed);
        let s = self.seed.fetch_add(0x9e37_79b9, Ordering::Relaxed);
        let reply = Message::new(0x4001, msg.front.clone()).with_tid(msg.header.tid);
        // On a worker thread `send` goes over budget rather than wait; `try_send` may refuse.
        match (s >> 8) % 4 {
            0 => {
                let _ = conn.send(reply);
            }
            1 => {
                let _ = conn.try_send(reply);
            }
            _ => {}
        }
        if s % 3 != 0 {
            let _ = self
                .tx
                .send((Instant::now() + Duration::from_millis(s % 20), msg));
        }
    }
    fn ms_handle_accept(&self, conn: &ConnectionRef) {
        self.accepted.lock().unwrap().push(conn.clone());
    }
}

fn keeper() -> (Arc<Keeper>, std::thread::JoinHandle<()>) {
    let (tx, rx) = crossbeam_channel::unbounded::<(Instant, Message)>();
    let consumer = std::thread::spawn(move || {
        while let Ok((until, m)) = rx.recv() {
            let now = Instant::now();
            if until > now {
                std::thread::sleep(until - now);
            }
            drop(m);
        }
    });
    let k = Arc::new(Keeper {
        tx,
        accepted: Mutex::new(Vec::new()),
        got: AtomicU64::new(0),
        seed: AtomicU64::new(1),
    });
    (k, consumer)
}

#[test]
fn send_permits_never_leak() {
    let seed: u64 = std::env::var("MSGR_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("send_permits_never_leak seed {seed}");
    const LEN: usize = 32 * 1024;
    let pool = Arc::new(PayloadPool::new(seed, LEN));
    let tight = |c: &mut MessengerConfig| {
        c.read_buffer = 4096;
        c.dispatch_throttle_bytes = 512 * 1024;
        c.recv_throttles = vec![RecvThrottle {
            entity_type: entity_type::CLIENT,
            bytes: 128 * 1024,
            msgs: 16,
        }];
    };
    // Two servers of two workers each (sessions move between workers on reconnects); one of them has
    // its end of sessions marked down now and then, so the client sees session resets.
    let (k1, c1) = keeper();
    let (k2, c2) = keeper();
    let s1 = started(server_proto(), 2, no_faults(), true, k1.clone(), tight);
    let s2 = started(server_proto(), 2, no_faults(), true, k2.clone(), tight);
    // The client's sockets fail now and then: replay, reconnects, lossy resets.
    let faults = FaultConfig {
        socket_failure_one_in: 400,
        read_delay: Duration::ZERO,
        seed,
    };
    let cli = Arc::new(started(
        proto_config(entity_type::CLIENT, "client.admin"),
        2,
        faults,
        false,
        Collector::new(pool.clone()),
        |c| {
            c.read_buffer = 2048;
            c.send_budget_bytes = 256 * 1024;
            c.send_budget_msgs = 24;
        },
    ));
    let targets = [s1.my_addrs().clone(), s2.my_addrs().clone()];
    let open = |rng: &mut SmallRng| -> ConnectionRef {
        let addrs = &targets[rng.random_range(0..2)];
        let policy = if rng.random_bool(0.25) {
            Policy::lossy_client()
        } else {
            Policy::lossless_client()
        };
        if rng.random_bool(0.5) {
            cli.connect_to(entity_type::OSD, addrs, policy).unwrap()
        } else {
            cli.connect_new(entity_type::OSD, addrs, policy).unwrap()
        }
    };
    let mut rng = SmallRng::seed_from_u64(seed);
    let conns: Arc<Mutex<Vec<ConnectionRef>>> =
        Arc::new(Mutex::new((0..6).map(|_| open(&mut rng)).collect()));

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let would_block = Arc::new(AtomicU64::new(0));
    // Senders race the controller's mark_downs: a send may pass the closed check just as the worker
    // drops the connection's queue.
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<()>();
    let senders: Vec<_> = (0..2u64)
        .map(|t| {
            let (conns, stop, sent, wb, pool, done) = (
                conns.clone(),
                stop.clone(),
                sent.clone(),
                would_block.clone(),
                pool.clone(),
                done_tx.clone(),
            );
            std::thread::spawn(move || {
                let mut rng = SmallRng::seed_from_u64(seed ^ (t + 1));
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let conn = {
                        let c = conns.lock().unwrap();
                        c[rng.random_range(0..c.len())].clone()
                    };
                    let len = rng.random_range(1..=LEN);
                    let m = pool.message(i, len);
                    i += 1;
                    // Err(true): out of budget; Err(false): closed.
                    let queued = match rng.random_range(0..3) {
                        0 => conn.try_send(m).map_err(|e| e.is_full()),
                        1 => conn
                            .send_timeout(m, Duration::from_millis(rng.random_range(0..20)))
                            .map_err(|e| e.is_full()),
                        _ => conn.send(m).map_err(|_| false),
                    };
                    match queued {
                        Ok(()) => sent.fetch_add(1, Ordering::Relaxed),
                        Err(true) => wb.fetch_add(1, Ordering::Relaxed),
                        Err(false) => 0,
                    };
                }
                let _ = done.send(());
            })
        })
        .collect();

    let end = Instant::now() + Duration::from_secs(6);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(rng.random_range(1..30)));
        let mut c = conns.lock().unwrap();
        let n = rng.random_range(0..c.len());
        match rng.random_range(0..10) {
            // mark_down, and open another.
            0..=2 => {
                c[n].mark_down();
                c[n] = open(&mut rng);
            }
            // Drop the handle (the connection lives on in the messenger).
            3..=4 => c[n] = open(&mut rng),
            // The server ends the session: the client's next reconnect is reset.
            5 => {
                let k = if rng.random_bool(0.5) { &k1 } else { &k2 };
                let acc = k.accepted.lock().unwrap();
                if !acc.is_empty() {
                    acc[rng.random_range(0..acc.len())].mark_down();
                }
            }
            _ => {}
        }
    }
    stop.store(true, Ordering::Relaxed);
    // A blocking `send` returns once budget comes back; if it never does, fail rather than hang.
    for _ in 0..senders.len() {
        assert!(
            done_rx.recv_timeout(Duration::from_secs(30)).is_ok(),
            "seed {seed}: a sender stayed blocked: {:?}",
            cli.throttles()
        );
    }
    for s in senders {
        s.join().unwrap();
    }
    let sent = sent.load(Ordering::Relaxed);
    let wb = would_block.load(Ordering::Relaxed);
    println!("sent {sent}, would block {wb}");
    assert!(sent > 100, "too few sends to mean anything: {sent}");
    assert!(wb > 0, "the send budgets were never used up");
    assert!(k1.got.load(Ordering::Relaxed) + k2.got.load(Ordering::Relaxed) > 0);
    let paused: u64 = [&s1, &s2]
        .iter()
        .map(|s| s.throttles().recv[0].stats.blocked)
        .sum();
    println!("server reads paused {paused} times");

    println!(
        "sessions moved between server workers: {}",
        s1.counters().sessions_moved + s2.counters().sessions_moved
    );
    // Everything still open drains (acked, or discarded by a reset) and consumers drop what they
    // hold. Servers keep the sessions of clients that went away (in Standby, with their replies) until
    // they expire; marking them down stands in for that. Then every budget is back to zero.
    let client_idle = wait_until(Duration::from_secs(30), || cli.throttles().is_idle());
    for k in [&k1, &k2] {
        for conn in k.accepted.lock().unwrap().iter() {
            conn.mark_down();
        }
    }
    let report = |m: &PosixMessenger| format!("{:?}", m.throttles());
    assert!(
        client_idle
            && wait_until(Duration::from_secs(30), || s1.throttles().is_idle()
                && s2.throttles().is_idle()),
        "seed {seed}: budget leaked: client {} s1 {} s2 {}",
        report(&cli),
        report(&s1),
        report(&s2)
    );
    // The same after a shutdown with messages still queued to a peer that never answers.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let to_dead = cli
        .connect_to(
            entity_type::OSD,
            &AddrVec(vec![EntityAddr::msgr2(dead.local_addr().unwrap(), 0)]),
            Policy::lossless_client(),
        )
        .unwrap();
    for i in 0..8 {
        to_dead.try_send(pool.message(i, LEN)).unwrap();
    }
    assert!(!cli.throttles().send.is_idle());
    let mut cli = Arc::into_inner(cli).expect("only this thread holds the client");
    cli.shutdown().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || cli.throttles().is_idle()),
        "seed {seed}: shutdown leaked: {}",
        report(&cli)
    );
    assert!(to_dead.is_closed());
    assert!(to_dead.try_send(pool.message(0, LEN)).is_err());
    drop((s1, s2, k1, k2));
    c1.join().unwrap();
    c2.join().unwrap();
}
