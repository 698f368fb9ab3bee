//! The messenger over the RDMA stack on a real verbs device (soft-RoCE `rxe0` inside
//! `scripts/softroce-vm.sh`, or any RDMA NIC): handshake, 2,000 messages of random sizes up to 64 KiB
//! plus three of 4 MiB (larger than any registered buffer, sent without copying) in order and intact,
//! credits never exceeded, large messages copied instead when nothing may be pinned, a connection holding
//! only its pre-authentication buffers until the messenger says the peer authenticated (and keeping them
//! when the pool is exhausted then), a forced QP error survived by a lossless session with replay, a restarted peer seen as a remote reset,
//! and a refused connect.
//!
//! Needs the `rdma` feature (`required-features`), a device and an IPv4 address on it: taken from
//! `MSGR_RDMA_DEV` / `MSGR_RDMA_ADDR` / `MSGR_RDMA_GID_INDEX`, else from what softroce-vm.sh exports
//! (`SOFTROCE_DEV`, `SOFTROCE_ADDR`, `SOFTROCE_GID_INDEX`). Without them the tests fail with a message
//! saying how to get a device: they never skip.

mod common;

use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::net::{proto_config, Collector};
use common::PayloadPool;
use msgr::proto::types::entity_type;
use msgr::proto::{Config, Policy};
use msgr::stack::rdma::{RdmaConfig, RdmaStack, RdmaWorker};
use msgr::stack::{ConnectOptions, EventKind, ListenOptions, NetworkStack, SocketId, WorkerStack};
use msgr::{Dispatcher, Messenger, MessengerConfig};
use rand::{Rng, SeedableRng};

type RdmaMessenger = Messenger<RdmaStack>;

struct Env {
    device: Option<String>,
    addr: IpAddr,
    gid_index: i32,
}

fn var(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

fn env() -> Env {
    let addr = var(&["MSGR_RDMA_ADDR", "SOFTROCE_ADDR"]).unwrap_or_else(|| {
        panic!(
            "no RDMA environment: set MSGR_RDMA_ADDR (an IPv4 address on an RDMA device) and \
             MSGR_RDMA_DEV, or run inside scripts/softroce-vm.sh (e.g. `scripts/softroce-vm.sh -- \
             target/release/deps/rdma_softroce-…`), which sets SOFTROCE_ADDR/SOFTROCE_DEV"
        )
    });
    Env {
        device: var(&["MSGR_RDMA_DEV", "SOFTROCE_DEV"]),
        addr: addr
            .parse()
            .unwrap_or_else(|e| panic!("bad RDMA address {addr:?}: {e}")),
        gid_index: var(&["MSGR_RDMA_GID_INDEX", "SOFTROCE_GID_INDEX"])
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    }
}

fn stack(env: &Env) -> RdmaStack {
    stack_with(env, |_| {})
}

fn stack_with(env: &Env, tune: impl FnOnce(&mut RdmaConfig)) -> RdmaStack {
    let mut config = RdmaConfig::new(env.device.clone(), env.gid_index, 1);
    tune(&mut config);
    RdmaStack::new(config).unwrap_or_else(|e| {
        panic!(
            "RDMA device {:?} unusable: {e}",
            env.device.as_deref().unwrap_or("(first)")
        )
    })
}

fn messenger(env: &Env, proto: Config, workers: usize, d: Arc<dyn Dispatcher>) -> RdmaMessenger {
    messenger_on(stack(env), proto, workers, d)
}

fn messenger_on(
    stack: RdmaStack,
    proto: Config,
    workers: usize,
    d: Arc<dyn Dispatcher>,
) -> RdmaMessenger {
    let mut cfg = MessengerConfig::new(proto);
    cfg.workers.threads = workers;
    // Several messengers share the guest's two vCPUs: pinning each one's worker 0 to core 0 would
    // make their busy-polling threads take turns on one core.
    cfg.workers.pin_cores = false;
    Messenger::new(stack, cfg, d)
}

fn server(
    env: &Env,
    port: u16,
    workers: usize,
    policy: Policy,
    nonce: Option<u32>,
    d: Arc<dyn Dispatcher>,
) -> RdmaMessenger {
    let mut p = proto_config(entity_type::OSD, "osd.0");
    p.default_policy = policy;
    if let Some(n) = nonce {
        p.nonce = n;
    }
    let mut m = messenger(env, p, workers, d);
    m.bind(&[SocketAddr::new(env.addr, port)]).unwrap();
    m.start().unwrap();
    m
}

fn client(env: &Env, d: Arc<dyn Dispatcher>) -> RdmaMessenger {
    let mut m = messenger(env, proto_config(entity_type::CLIENT, "client.admin"), 1, d);
    m.start().unwrap();
    m
}

fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    done()
}

/// All tids seen by `sink`, checked in order per connection.
fn delivered(sink: &Collector) -> Vec<u64> {
    let by = sink.by_conn.lock().unwrap();
    for tids in by.values() {
        assert!(tids.windows(2).all(|w| w[0] < w[1]), "reordered: {tids:?}");
    }
    let mut all: Vec<u64> = by.values().flatten().copied().collect();
    all.sort_unstable();
    all
}

#[test]
fn messages_of_every_size_arrive_in_order_and_intact_within_credits() {
    let env = env();
    let pool = Arc::new(PayloadPool::new(7, (4 << 20) + 1));
    let sink = Collector::new(pool.clone());
    // Two server workers: accepted connections are handed to the other worker before they are answered.
    let srv = server(&env, 0, 2, Policy::stateful_server(), None, sink.clone());
    let cli_sink = Collector::new(pool.clone());
    let cli = client(&env, cli_sink.clone());
    let conn = cli
        .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossless_client())
        .unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(2000);
    let n: u64 = 2003;
    let mut bytes = 0usize;
    for i in 0..n {
        let len = if matches!(i, 500 | 1000 | 1500) {
            4 << 20
        } else {
            rng.random_range(0..=64 * 1024)
        };
        bytes += len;
        conn.send(pool.message(i, len)).unwrap();
    }
    let started = Instant::now();
    assert!(
        sink.wait_for(n, Duration::from_secs(300)),
        "only {} of {n} arrived",
        sink.received.load(Ordering::Relaxed)
    );
    let took = started.elapsed();
    assert!(
        cli_sink.connects.load(Ordering::Relaxed) >= 1,
        "no handshake completed"
    );
    assert_eq!(
        sink.corrupted.load(Ordering::Relaxed),
        0,
        "corrupted payloads"
    );
    assert_eq!(
        delivered(&sink),
        (0..n).collect::<Vec<_>>(),
        "lost or duplicated"
    );

    let (c, s) = (
        cli.stack().counters().snapshot(),
        srv.stack().counters().snapshot(),
    );
    eprintln!(
        "{n} messages, {bytes} payload bytes in {took:?}\nclient counters {c:?}\nserver counters {s:?}"
    );
    assert_eq!(
        c.credit_violations + s.credit_violations,
        0,
        "credits exceeded"
    );
    assert_eq!(c.qp_errors + s.qp_errors, 0, "QP errors on a clean run");
    // The messenger gave each connection its full depth once the peer authenticated.
    assert!(c.promotions >= 1 && s.promotions >= 1, "{c:?} {s:?}");
    assert_eq!(c.promotions_refused + s.promotions_refused, 0);
    // Every SEND the client posted was received by the server and vice versa (wait for the last acks).
    assert!(wait_until(Duration::from_secs(10), || {
        let (c, s) = (
            cli.stack().counters().snapshot(),
            srv.stack().counters().snapshot(),
        );
        c.data_sends + c.credit_only_sends == s.recvs
            && s.data_sends + s.credit_only_sends == c.recvs
    }));
    let depth = RdmaConfig::default().recv_depth;
    let low = c.credit_low_water.expect("the client sent");
    assert!(
        low < depth,
        "credits were never used ({low} of {depth} left at worst)"
    );
    assert!(
        c.bytes_sent as usize >= bytes,
        "sent {} < payload {bytes}",
        c.bytes_sent
    );
    assert!(c.signaled_sends < c.data_sends, "every send was signaled");
    // The 4 MiB messages left without being copied (the smaller ones are under the zero-copy
    // threshold), but for a tail under the threshold when a write stopped part way (credits) and the
    // rest came back as a small buffer; all arrived intact and in order (checked above).
    let zero_copy_min = RdmaConfig::default().zero_copy_min as u64;
    assert!(
        c.zero_copy_bytes >= 3 * ((4 << 20) - zero_copy_min),
        "zero-copy path not taken for the 4 MiB messages: {c:?}"
    );
    assert!(c.copied_bytes > 0 && c.mr_registrations > 0, "{c:?}");
    assert_eq!(c.mr_register_failures, 0, "{c:?}");
    // Every byte posted was either copied or pinned (copies are counted when made, posts a turn later).
    assert!(
        wait_until(Duration::from_secs(10), || {
            let c = cli.stack().counters().snapshot();
            c.zero_copy_bytes + c.copied_bytes == c.bytes_sent
        }),
        "{:?}",
        cli.stack().counters().snapshot()
    );
    // Small messages are coalesced into shared SENDs, 4 MiB ones split over many buffers.
    let buf = RdmaConfig::default().buf_size as u64;
    assert!(
        c.data_sends >= c.bytes_sent / buf && c.data_sends < n,
        "{} SENDs for {} bytes of {n} messages",
        c.data_sends,
        c.bytes_sent
    );
}

#[test]
fn forced_qp_error_is_survived_by_a_lossless_session_with_replay() {
    let env = env();
    let pool = Arc::new(PayloadPool::new(9, 70_000));
    let sink = Collector::new(pool.clone());
    let srv = server(&env, 0, 1, Policy::lossless_peer(), None, sink.clone());
    let cli = client(&env, Collector::new(pool.clone()));
    let conn = cli
        .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossless_peer())
        .unwrap();
    let n: u64 = 3000;
    for i in 0..n {
        conn.send(pool.message(i, (i as usize * 131) % 65_536))
            .unwrap();
        if i == 1000 || i == 2000 {
            // Let some traffic be in flight, then break every QP of the client.
            assert!(wait_until(Duration::from_secs(60), || sink
                .received
                .load(Ordering::Relaxed)
                > i / 2));
            cli.stack().force_qp_errors();
        }
    }
    assert!(
        sink.wait_for(n, Duration::from_secs(300)),
        "only {} of {n} arrived",
        sink.received.load(Ordering::Relaxed)
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        sink.received.load(Ordering::Relaxed),
        n,
        "duplicates delivered"
    );
    assert_eq!(sink.corrupted.load(Ordering::Relaxed), 0);
    assert_eq!(
        delivered(&sink),
        (0..n).collect::<Vec<_>>(),
        "lost or duplicated"
    );
    let (cc, sc) = (cli.counters(), srv.counters());
    let rc = cli.stack().counters().snapshot();
    eprintln!(
        "client reconnects {}, replayed {} + {}, rdma {rc:?}",
        cc.reconnects, cc.replayed, sc.replayed
    );
    assert!(rc.qp_errors >= 1, "no QP error was seen");
    assert!(cc.reconnects >= 1, "the client never reconnected");
    assert_eq!(sink.remote_resets.load(Ordering::Relaxed), 0);
    assert_eq!(rc.credit_violations, 0);
}

#[test]
fn restarted_server_is_a_remote_reset() {
    let env = env();
    let pool = Arc::new(PayloadPool::new(5, 4096));
    let first = Collector::new(pool.clone());
    let mut s1 = server(
        &env,
        0,
        1,
        Policy::stateful_server(),
        Some(777),
        first.clone(),
    );
    let addrs = s1.my_addrs().clone();
    let port = addrs.front().unwrap().port();
    let cli_sink = Collector::new(pool.clone());
    let cli = client(&env, cli_sink.clone());
    let conn = cli
        .connect_to(entity_type::OSD, &addrs, Policy::lossless_client())
        .unwrap();
    for i in 0..100 {
        conn.send(pool.message(i, 100)).unwrap();
    }
    assert!(first.wait_for(100, Duration::from_secs(60)));
    std::thread::sleep(Duration::from_millis(200));
    // The server goes away: its QPs and CM ids are destroyed, the client sees a disconnect.
    s1.shutdown().unwrap();
    drop(s1);
    let second = Collector::new(pool.clone());
    let _s2 = server(
        &env,
        port,
        1,
        Policy::stateful_server(),
        Some(777),
        second.clone(),
    );
    assert!(
        wait_until(Duration::from_secs(60), || cli_sink
            .remote_resets
            .load(Ordering::Relaxed)
            >= 1),
        "the client saw no remote reset"
    );
    for i in 100..150 {
        conn.send(pool.message(i, 100)).unwrap();
    }
    assert!(second.wait_for(50, Duration::from_secs(60)));
    assert!(
        delivered(&second).iter().all(|t| *t >= 100),
        "old session replayed"
    );
}

#[test]
fn large_messages_are_copied_when_nothing_may_be_pinned() {
    // A pinning limit of two pages refuses every large buffer: each one falls back to the copy path
    // (counted), and the connection carries on.
    let env = env();
    let pool = Arc::new(PayloadPool::new(11, (4 << 20) + 1));
    let sink = Collector::new(pool.clone());
    let srv = server(&env, 0, 1, Policy::stateful_server(), None, sink.clone());
    let tiny = stack_with(&env, |c| c.zero_copy_pin_limit = 8192);
    let p = proto_config(entity_type::CLIENT, "client.admin");
    let mut cli = messenger_on(tiny, p, 1, Collector::new(pool.clone()));
    cli.start().unwrap();
    let conn = cli
        .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossless_client())
        .unwrap();
    let sizes = [4 << 20, 100, 1 << 20, 50_000, 4 << 20];
    for (i, len) in sizes.iter().enumerate() {
        conn.send(pool.message(i as u64, *len)).unwrap();
    }
    let n = sizes.len() as u64;
    assert!(
        sink.wait_for(n, Duration::from_secs(120)),
        "only {} of {n} arrived",
        sink.received.load(Ordering::Relaxed)
    );
    assert_eq!(sink.corrupted.load(Ordering::Relaxed), 0);
    assert_eq!(delivered(&sink), (0..n).collect::<Vec<_>>());
    let c = cli.stack().counters().snapshot();
    assert_eq!(c.zero_copy_bytes, 0, "{c:?}");
    assert!(c.zero_copy_fallbacks >= 4, "{c:?}");
    assert_eq!(c.mr_registrations, 0, "{c:?}");
    assert_eq!(c.qp_errors + c.credit_violations, 0, "{c:?}");
}

#[test]
fn connections_spread_over_server_workers() {
    // The server listens on worker 0; every other accepted connection request is handed to worker 1
    // before it is answered (detach/attach: rdma_migrate_id), so both paths carry traffic here.
    let env = env();
    let pool = Arc::new(PayloadPool::new(3, 70_000));
    let sink = Collector::new(pool.clone());
    let srv = server(&env, 0, 2, Policy::stateful_server(), None, sink.clone());
    let clients: Vec<RdmaMessenger> = (0..4)
        .map(|_| client(&env, Collector::new(pool.clone())))
        .collect();
    let per: u64 = 100;
    for (c, m) in clients.iter().enumerate() {
        let conn = m
            .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossless_client())
            .unwrap();
        for i in 0..per {
            let tid = c as u64 * per + i;
            conn.send(pool.message(tid, (tid as usize * 977) % 60_000))
                .unwrap();
        }
    }
    let n = per * clients.len() as u64;
    assert!(
        sink.wait_for(n, Duration::from_secs(120)),
        "only {} of {n} arrived",
        sink.received.load(Ordering::Relaxed)
    );
    assert_eq!(sink.corrupted.load(Ordering::Relaxed), 0);
    assert_eq!(delivered(&sink), (0..n).collect::<Vec<_>>());
    assert_eq!(sink.by_conn.lock().unwrap().len(), clients.len());
    let s = srv.stack().counters().snapshot();
    assert_eq!(s.established, clients.len() as u64, "{s:?}");
    assert_eq!(s.promotions, clients.len() as u64, "{s:?}");
    assert!(
        s.handoffs >= 1,
        "no connection was handed to the other worker: {s:?}"
    );
    assert_eq!(s.credit_violations, 0);
}

/// Set in a child copy of this test binary: serve (echoing) on this port...
const CHILD_SERVER_ENV: &str = "MSGR_RDMA_CHILD_SERVER_PORT";
/// ...and write the bound port to this file when ready.
const CHILD_READY_ENV: &str = "MSGR_RDMA_CHILD_READY_FILE";

fn spawn_server_process(port: u16) -> (std::process::Child, u16) {
    let ready = std::env::temp_dir().join(format!(
        "msgr-rdma-child-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(exe)
        .args([
            "--exact",
            "killed_server_process_is_a_remote_reset",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_SERVER_ENV, port.to_string())
        .env(CHILD_READY_ENV, &ready)
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    let port = loop {
        if let Some(p) = std::fs::read_to_string(&ready)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            break p;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the server process exited before it was ready: {status}");
        }
        assert!(
            Instant::now() < end,
            "the server process was not ready in 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = std::fs::remove_file(&ready);
    (child, port)
}

#[test]
fn killed_server_process_is_a_remote_reset() {
    let env = env();
    let pool = Arc::new(PayloadPool::new(13, 4096));
    if let Some(port) = std::env::var(CHILD_SERVER_ENV)
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
    {
        // The child: an echoing server until it is killed.
        eprintln!(
            "server process {}: starting on port {port}",
            std::process::id()
        );
        let echo = Collector::with(pool, true, Duration::ZERO);
        let srv = server(&env, port, 1, Policy::stateful_server(), Some(4242), echo);
        let bound = srv.my_addrs().front().unwrap().port();
        if let Ok(path) = std::env::var(CHILD_READY_ENV) {
            let tmp = format!("{path}.tmp");
            std::fs::write(&tmp, bound.to_string()).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        }
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let (mut first, port) = spawn_server_process(0);
    let addrs = msgr::proto::types::AddrVec(vec![msgr::proto::types::EntityAddr::msgr2(
        SocketAddr::new(env.addr, port),
        4242,
    )]);
    let replies = Collector::new(pool.clone());
    let cli = client(&env, replies.clone());
    let conn = cli
        .connect_to(entity_type::OSD, &addrs, Policy::lossless_client())
        .unwrap();
    for i in 0..100 {
        conn.send(pool.message(i, 100)).unwrap();
    }
    let got_first = replies.wait_for(100, Duration::from_secs(60));
    eprintln!(
        "first server: {} echoes; killing it",
        replies.received.load(Ordering::Relaxed)
    );
    // SIGKILL: the kernel tears down the process's QPs and CM ids, nothing of msgr runs.
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(
        got_first,
        "only {} echoes from the first server",
        replies.received.load(Ordering::Relaxed)
    );
    let (mut second, _) = spawn_server_process(port);
    eprintln!("second server process ready on port {port}");
    let reset = wait_until(Duration::from_secs(60), || {
        replies.remote_resets.load(Ordering::Relaxed) >= 1
    });
    for i in 100..150 {
        conn.send(pool.message(i, 100)).unwrap();
    }
    let got_second = replies.wait_for(150, Duration::from_secs(60));
    second.kill().unwrap();
    second.wait().unwrap();
    assert!(
        reset,
        "the client saw no remote reset after the server process was killed"
    );
    assert!(
        got_second,
        "only {} echoes in all",
        replies.received.load(Ordering::Relaxed)
    );
    assert_eq!(replies.corrupted.load(Ordering::Relaxed), 0);
}

#[test]
fn connect_to_a_port_nobody_listens_on_is_refused() {
    let env = env();
    let stack = stack(&env);
    let mut w = stack.new_worker(0).unwrap();
    let target = SocketAddr::new(env.addr, 9); // nothing listens there
    let id = w.connect(target, &ConnectOptions::default()).unwrap();
    let mut events = Vec::new();
    let end = Instant::now() + Duration::from_secs(30);
    let outcome = loop {
        w.poll(&mut events, Some(Duration::from_millis(10)))
            .unwrap();
        if let Some(ev) = events.drain(..).find(|e| e.id == id) {
            break ev.kind;
        }
        assert!(Instant::now() < end, "no connect outcome in 30 s");
    };
    match outcome {
        EventKind::ConnectFailed(err) => {
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
            assert!(err.to_string().contains(&target.to_string()), "{err}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    w.close(id).unwrap();
}

/// Two raw workers of `stack` on this thread: `b` connected to a listener on `a`, both established.
struct RawPair {
    a: RdmaWorker,
    b: RdmaWorker,
    listener: SocketId,
    aid: SocketId,
    bid: SocketId,
}

impl RawPair {
    fn connect(env: &Env, stack: &RdmaStack) -> Self {
        let mut a = stack.new_worker(0).unwrap();
        let mut b = stack.new_worker(1).unwrap();
        let listener = a
            .listen(SocketAddr::new(env.addr, 0), &ListenOptions::default())
            .unwrap();
        let target = a.local_addr(listener).unwrap();
        let bid = b.connect(target, &ConnectOptions::default()).unwrap();
        let (mut aid, mut connected, mut ready) = (None, false, false);
        let end = Instant::now() + Duration::from_secs(30);
        while !(connected && ready) {
            assert!(Instant::now() < end, "no connection in 30 s");
            let (mut ea, mut eb) = (Vec::new(), Vec::new());
            a.poll(&mut ea, Some(Duration::from_millis(1))).unwrap();
            b.poll(&mut eb, Some(Duration::from_millis(1))).unwrap();
            for ev in ea {
                match ev.kind {
                    EventKind::Acceptable if ev.id == listener => {
                        while let Some((id, _)) = a.accept(listener).unwrap() {
                            aid = Some(id);
                        }
                    }
                    EventKind::Ready(_) if Some(ev.id) == aid => ready = true,
                    _ => {}
                }
            }
            for ev in eb {
                match ev.kind {
                    EventKind::Connected if ev.id == bid => connected = true,
                    EventKind::ConnectFailed(err) => panic!("connect failed: {err}"),
                    _ => {}
                }
            }
        }
        RawPair {
            a,
            b,
            listener,
            aid: aid.unwrap(),
            bid,
        }
    }

    fn poll(&mut self) {
        let mut events = Vec::new();
        self.a.poll(&mut events, Some(Duration::ZERO)).unwrap();
        self.b.poll(&mut events, Some(Duration::ZERO)).unwrap();
    }

    /// Registered buffers each worker has handed out (its only connection holds them all).
    fn in_use(&self) -> (u32, u32) {
        let used = |w: &RdmaWorker| {
            let (free, total) = w.pool_usage();
            total - free as u32
        };
        (used(&self.a), used(&self.b))
    }

    /// `b` writes 64 KiB pieces of the pattern while `a` never reads, until nothing more is taken
    /// for 300 turns: the bytes taken (what `a`'s credits, `b`'s send buffers and one open buffer
    /// hold). `sent` is the pattern offset, advanced.
    fn burst_unread(&mut self, sent: &mut usize) -> usize {
        let start = *sent;
        let mut idle = 0;
        while idle < 300 {
            let piece: Vec<u8> = (*sent..*sent + 65536).map(pattern).collect();
            match self.b.writev(self.bid, &[IoSlice::new(&piece)]) {
                Ok(n) => {
                    *sent += n;
                    idle = 0;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => idle += 1,
                Err(e) => panic!("write failed: {e}"),
            }
            self.poll();
            assert!(*sent - start < 64 << 20, "the writer was never stopped");
        }
        *sent - start
    }

    /// `a` reads until it has everything up to `sent`, checking the pattern from `*got`.
    fn read_all(&mut self, got: &mut usize, sent: usize) {
        let mut buf = vec![0u8; 256 * 1024];
        let end = Instant::now() + Duration::from_secs(60);
        while *got < sent {
            assert!(
                Instant::now() < end,
                "read {} of {sent} bytes in 60 s",
                *got
            );
            match self.a.read(self.aid, &mut buf) {
                Ok(0) => panic!("end of stream after {} of {sent} bytes", *got),
                Ok(n) => {
                    for (i, byte) in buf[..n].iter().enumerate() {
                        assert_eq!(*byte, pattern(*got + i), "byte {} corrupted", *got + i);
                    }
                    *got += n;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("read failed: {e}"),
            }
            self.poll();
        }
    }

    fn close(mut self) {
        self.b.close(self.bid).unwrap();
        self.a.close(self.aid).unwrap();
        self.a.close(self.listener).unwrap();
    }
}

fn pattern(offset: usize) -> u8 {
    (offset % 251) as u8
}

#[test]
fn connection_holds_few_registered_buffers_until_authenticated() {
    let env = env();
    let stack = stack(&env);
    let config = stack.config().clone();
    let (pre_recv, pre_send) = config.preauth_slots();
    let full = config.recv_depth + config.send_depth;
    let buf = config.buf_size as usize;
    let mut p = RawPair::connect(&env, &stack);
    // Established, not authenticated: the pre-authentication depth on both sides.
    assert_eq!(p.a.slots_held(p.aid), Some((pre_recv, pre_send)));
    assert_eq!(p.b.slots_held(p.bid), Some((pre_recv, pre_send)));
    let before = p.in_use();
    eprintln!(
        "registered buffers per connection before authentication: {before:?} (full depth {full})"
    );
    assert_eq!(before, (pre_recv + pre_send, pre_recv + pre_send));
    assert!(pre_recv + pre_send <= 8 && pre_recv + pre_send < full);

    // The small window carries a stream (credits come back) but never more than it granted.
    let (mut sent, mut got) = (0usize, 0usize);
    let small = p.burst_unread(&mut sent);
    assert!(
        small <= pre_recv as usize * buf,
        "{small} bytes in flight to {pre_recv} receive buffers"
    );
    p.read_all(&mut got, sent);
    for _ in 0..4 {
        p.burst_unread(&mut sent);
        p.read_all(&mut got, sent);
    }

    // Authenticated: both take their full depth and the peer hears of the new receive buffers.
    p.a.peer_authenticated(p.aid);
    p.b.peer_authenticated(p.bid);
    for _ in 0..50 {
        p.poll();
    }
    assert_eq!(
        p.a.slots_held(p.aid),
        Some((config.recv_depth, config.send_depth))
    );
    assert_eq!(p.in_use(), (full, full));
    let large = p.burst_unread(&mut sent);
    eprintln!("bytes taken while the reader waits: {small} before, {large} after authentication");
    assert!(
        large >= 16 * buf,
        "the window did not grow: {large} bytes (was {small})"
    );
    p.read_all(&mut got, sent);
    let c = stack.counters().snapshot();
    assert_eq!(c.credit_violations + c.qp_errors, 0, "{c:?}");
    assert_eq!((c.promotions, c.promotions_refused), (2, 0), "{c:?}");
    assert!(
        c.credit_only_sends >= 2,
        "the grants were not announced: {c:?}"
    );
    p.close();
}

#[test]
fn exhausted_pool_at_authentication_keeps_the_small_depth() {
    let env = env();
    // Each worker registers exactly what one connection needs before authentication.
    let stack = stack_with(&env, |c| {
        let (recv, send) = c.preauth_slots();
        c.pool_chunk = recv + send;
        c.max_pool_slots = recv + send;
    });
    let (pre_recv, pre_send) = stack.config().preauth_slots();
    let mut p = RawPair::connect(&env, &stack);
    p.a.peer_authenticated(p.aid);
    p.b.peer_authenticated(p.bid);
    assert_eq!(p.a.slots_held(p.aid), Some((pre_recv, pre_send)));
    let c = stack.counters().snapshot();
    assert_eq!((c.promotions, c.promotions_refused), (0, 2), "{c:?}");
    // The connection carries on at the small depth.
    let (mut sent, mut got) = (0usize, 0usize);
    for _ in 0..4 {
        p.burst_unread(&mut sent);
        p.read_all(&mut got, sent);
    }
    assert!(got > 0);
    let c = stack.counters().snapshot();
    assert_eq!(c.credit_violations + c.qp_errors, 0, "{c:?}");
    p.close();
}
