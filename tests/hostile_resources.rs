//! Hostile peers against a whole msgr server (issue 13): what one peer can make the server hold, and
//! whether it can touch another peer's session. Everything runs on loopback; servers are in-process
//! unless a case measures the server's memory, which then runs as a child process of this binary.

mod common;
mod msgr_bin;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::net::*;
use common::suite::wait_until;
use common::PayloadPool;
use common::RawPeer;
use msgr::proto::codec::{Tag, PREAMBLE_LEN};
use msgr::proto::control::{ControlFrame, Hello};
use msgr::proto::crc::{ceph_crc32c, PREAMBLE_SEED};
use msgr::proto::types::{entity_type, AddrVec, AuthEntityName, EntityAddr};
use msgr::proto::{Config, Connection, Error, Event, Message, Policy};
use msgr::{ConnectionRef, Dispatcher};

#[derive(Default)]
struct Sink {
    tids: Mutex<Vec<(u64, u64)>>,
    handles: Mutex<Vec<ConnectionRef>>,
    received: AtomicU64,
    resets: AtomicU64,
    remote_resets: AtomicU64,
}

impl Dispatcher for Sink {
    fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) {
        {
            let mut h = self.handles.lock().unwrap();
            if !h.contains(conn) {
                h.push(conn.clone());
            }
        }
        self.tids.lock().unwrap().push((conn.id(), msg.header.tid));
        self.received.fetch_add(1, Ordering::Release);
    }
    fn ms_handle_reset(&self, _conn: &ConnectionRef, _why: &Error) {
        self.resets.fetch_add(1, Ordering::Relaxed);
    }
    fn ms_handle_remote_reset(&self, _conn: &ConnectionRef) {
        self.remote_resets.fetch_add(1, Ordering::Relaxed);
    }
}

fn named_client(name: &str, nonce: u32, d: Arc<Sink>) -> PosixMessenger {
    let mut p = proto_config(entity_type::CLIENT, name);
    p.nonce = nonce;
    let mut m = messenger(p, 1, no_faults(), d);
    m.start().unwrap();
    m
}

/// A peer authenticated as client.a that claims client.b's addresses (same IP, same nonce) neither
/// resets client.b's session nor takes it over: the request is refused, logged and counted, and
/// client.b's session carries on in both directions on the same connection.
#[test]
fn a_peer_claiming_another_entitys_addresses_gets_nothing() {
    let pool = PayloadPool::new(31, 4096);
    let server_sink = Arc::new(Sink::default());
    let srv = server(
        "127.0.0.1:0".parse().unwrap(),
        1,
        Policy::stateful_server(),
        no_faults(),
        server_sink.clone(),
    );
    let nonce = 0x00b0_b0b0;
    let b_sink = Arc::new(Sink::default());
    let b = named_client("client.b", nonce, b_sink.clone());
    let hb = b
        .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossless_client())
        .unwrap();
    for t in 0..10 {
        hb.send(pool.message(t, 64)).unwrap();
    }
    assert!(wait_until(Duration::from_secs(10), || server_sink
        .received
        .load(Ordering::Acquire)
        >= 10));
    let server_side = server_sink.handles.lock().unwrap()[0].clone();

    // The impostor: another name, the same address.
    let a = named_client("client.a", nonce, Arc::new(Sink::default()));
    let ha = a
        .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossless_client())
        .unwrap();
    ha.send(pool.message(1000, 64)).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || srv
            .counters()
            .sessions_refused_identity
            >= 1),
        "the impostor's request was not refused: {:?}",
        srv.counters()
    );

    // client.b's session is intact: both directions, same server-side connection, no reset.
    for t in 10..20 {
        hb.send(pool.message(t, 64)).unwrap();
    }
    server_side.send(pool.message(500, 64)).unwrap();
    assert!(wait_until(Duration::from_secs(10), || server_sink
        .received
        .load(Ordering::Acquire)
        >= 20));
    assert!(wait_until(Duration::from_secs(10), || b_sink
        .received
        .load(Ordering::Acquire)
        >= 1));
    let tids = server_sink.tids.lock().unwrap().clone();
    assert!(
        tids.iter().all(|(conn, _)| *conn == server_side.id()),
        "the impostor got a session: {tids:?}"
    );
    assert_eq!(
        tids.iter().map(|(_, t)| *t).collect::<Vec<_>>(),
        (0..20).collect::<Vec<_>>()
    );
    assert_eq!(server_sink.remote_resets.load(Ordering::Relaxed), 0);
    assert_eq!(b_sink.remote_resets.load(Ordering::Relaxed), 0);
    assert_eq!(b_sink.resets.load(Ordering::Relaxed), 0);
    drop(a);
}

// ---------- a `msgr serve` child, measured from outside ----------

/// A `msgr serve` child process with an admin socket; killed (by its PID, it is ours) when dropped.
struct Server {
    child: Child,
    addr: EntityAddr,
    asok: std::path::PathBuf,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let asok = std::env::temp_dir().join(format!(
            "msgr-hostile-{}-{}.asok",
            std::process::id(),
            rand::random::<u32>()
        ));
        let asok_s = asok.to_str().unwrap().to_string();
        let mut args = vec![
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--duration",
            "300",
            "--admin-socket",
            &asok_s,
        ];
        args.extend_from_slice(extra);
        let mut child = msgr_bin::spawn(&args);
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut addr = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(a) = line.split("listening on ").nth(1) {
                addr = Some(a.trim().to_string());
            }
            if line.starts_with("admin socket") {
                break;
            }
        }
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        let addr = addr.expect("msgr serve printed no address");
        // v2:IP:PORT/NONCE
        let rest = addr.trim_start_matches("v2:");
        let (sock, nonce) = rest.split_once('/').expect("address with nonce");
        Server {
            child,
            addr: EntityAddr::msgr2(sock.parse().unwrap(), nonce.parse().unwrap()),
            asok,
        }
    }

    fn sockaddr(&self) -> SocketAddr {
        self.addr.sockaddr.unwrap()
    }

    /// A `/proc/PID/status` field in KiB (VmRSS, VmHWM).
    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| {
                l.strip_prefix(field)?
                    .trim_start_matches(':')
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("{field} missing from status"))
    }

    fn counters(&self) -> serde_json::Value {
        let mut s = std::os::unix::net::UnixStream::connect(&self.asok).unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.asok);
    }
}

/// A preamble announcing one segment of `len` bytes for `tag`.
fn preamble(tag: Tag, len: u32) -> Vec<u8> {
    let mut b = [0u8; PREAMBLE_LEN];
    b[0] = tag.as_u8();
    b[1] = 1;
    b[2..6].copy_from_slice(&len.to_le_bytes());
    b[6..8].copy_from_slice(&8u16.to_le_bytes());
    let crc = ceph_crc32c(PREAMBLE_SEED, &b[..PREAMBLE_LEN - 4]);
    b[PREAMBLE_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
    b.to_vec()
}

/// Whether the server closed `s` (EOF or reset) within `limit`, reading and dropping what it sent.
fn closed_by_peer(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let end = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// A dispatcher counting keepalive acks and echoed messages (msgr serve echoes).
#[derive(Default)]
struct Probe {
    acks: AtomicU64,
    echoes: AtomicU64,
}

impl Dispatcher for Probe {
    fn ms_dispatch(&self, _conn: &ConnectionRef, _msg: Message) {
        self.echoes.fetch_add(1, Ordering::Release);
    }
    fn ms_handle_keepalive_ack(&self, _conn: &ConnectionRef, _rtt: Duration) {
        self.acks.fetch_add(1, Ordering::Release);
    }
}

/// Issue 13: 64 unauthenticated connections each announce a 60 MiB AUTH_REQUEST and stream 8 MiB of
/// it. Each is closed after its preamble, the server process grows by less than 4 MiB in all, and a
/// well-behaved client is served meanwhile.
#[test]
fn sixty_four_huge_pre_auth_announcements_cost_the_server_almost_nothing() {
    let srv = Server::start(&[]);
    let pool = PayloadPool::new(33, 4096);
    let probe = Arc::new(Probe::default());
    let cli = client(1, no_faults(), probe.clone());
    let good = cli
        .connect_to(
            entity_type::OSD,
            &AddrVec(vec![srv.addr.clone()]),
            Policy::lossy_client(),
        )
        .unwrap();
    good.send(pool.message(0, 64)).unwrap();
    assert!(wait_until(Duration::from_secs(10), || probe
        .echoes
        .load(Ordering::Acquire)
        >= 1));
    std::thread::sleep(Duration::from_millis(200));
    let before = srv.status_kib("VmRSS");

    let mut hello = RawPeer::banner();
    hello.extend(RawPeer::new().frame(&ControlFrame::Hello(Hello {
        entity_type: entity_type::CLIENT,
        peer_addr: srv.addr.clone(),
    })));
    hello.extend(preamble(Tag::AuthRequest, 60 << 20));
    let target = srv.sockaddr();
    let attackers: Vec<_> = (0..64)
        .map(|_| {
            let head = hello.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(target).unwrap();
                s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
                let _ = s.write_all(&head);
                let chunk = vec![0x5au8; 64 << 10];
                let mut sent = 0usize;
                while sent < 8 << 20 {
                    if s.write_all(&chunk).is_err() {
                        break;
                    }
                    sent += chunk.len();
                }
                closed_by_peer(&mut s, Duration::from_secs(10))
            })
        })
        .collect();
    // Meanwhile the well-behaved client is served.
    for i in 0..20 {
        good.send_keepalive().unwrap();
        good.send(pool.message(i + 1, 64)).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let closed = attackers
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|c| *c)
        .count();
    assert_eq!(closed, 64, "every attacker must be closed by the server");
    assert!(
        wait_until(Duration::from_secs(10), || probe
            .echoes
            .load(Ordering::Acquire)
            >= 21
            && probe.acks.load(Ordering::Acquire) >= 1),
        "the well-behaved client was not served: {} echoes, {} acks",
        probe.echoes.load(Ordering::Acquire),
        probe.acks.load(Ordering::Acquire)
    );
    let peak = srv.status_kib("VmHWM");
    let grew = peak.saturating_sub(before);
    assert!(
        grew < 4 * 1024,
        "server grew by {grew} KiB (RSS {before} KiB before, peak {peak} KiB)"
    );
    let c = srv.counters();
    assert!(
        c["limits_tripped"]["max_handshake_frame_len"]
            .as_u64()
            .unwrap_or(0)
            >= 64,
        "{c}"
    );
    println!("64 x 60 MiB announcements: server peak grew {grew} KiB over {before} KiB");
}

/// One raw handshake as an OSD with its own address nonce, then close: what a handshake-then-close
/// loop does to a server.
fn handshake_and_close(target: &EntityAddr, nonce: u32) {
    if let Err(e) = raw_handshake(target, nonce, AddrVec::default()) {
        panic!("handshake {nonce} failed: {e}");
    }
}

/// A raw handshake as an OSD claiming `my_addrs` (learnt from the server when empty): Ok once the
/// session is up, Err with the reason when the server ends it first.
fn raw_handshake(target: &EntityAddr, nonce: u32, my_addrs: AddrVec) -> Result<(), String> {
    let mut cfg = Config::new(
        entity_type::OSD,
        AuthEntityName::new(entity_type::OSD, format!("{nonce}")),
    );
    cfg.nonce = nonce;
    cfg.my_addrs = my_addrs;
    let now = Instant::now();
    let mut c = Connection::client(
        Arc::new(cfg),
        Policy::lossless_peer(),
        entity_type::OSD,
        target.clone(),
        now,
    );
    let mut s = TcpStream::connect(target.sockaddr.unwrap()).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    while c.poll_event().is_some() {}
    c.on_transport_connected(now);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        out.clear();
        c.poll_transmit(Instant::now(), &mut out);
        let batch: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        s.write_all(&batch).map_err(|e| format!("write: {e}"))?;
        while let Some(e) = c.poll_event() {
            match e {
                Event::Connected { .. } => return Ok(()),
                Event::Reset(e) | Event::TransportDown(e) => return Err(e.to_string()),
                _ => {}
            }
        }
        match s.read(&mut buf) {
            Ok(0) => return Err("closed by the server".into()),
            Ok(n) => c.handle_input(Instant::now(), &buf[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// Issue 13: a CLIENT_IDENT well under the frame limit that claims one address more than
/// `max_addrvec_len` (16) is refused: the server closes that connection and counts the trip under the
/// cap's name. Sixteen addresses pass.
#[test]
fn a_client_ident_with_one_address_too_many_is_refused_and_counted() {
    let srv = Server::start(&[]);
    let addrs = |n: u16| {
        AddrVec(
            (0..n)
                .map(|i| EntityAddr::msgr2(format!("127.0.0.1:{}", 7000 + i).parse().unwrap(), 99))
                .collect(),
        )
    };
    raw_handshake(&srv.addr, 99, addrs(16)).expect("16 addresses are within the cap");
    let tripped =
        |c: &serde_json::Value| c["limits_tripped"]["max_addrvec_len"].as_u64().unwrap_or(0);
    assert_eq!(tripped(&srv.counters()), 0);
    let err = raw_handshake(&srv.addr, 100, addrs(17)).expect_err("17 addresses accepted");
    println!("17 addresses: {err}");
    assert!(
        wait_until(Duration::from_secs(5), || tripped(&srv.counters()) == 1),
        "{}",
        srv.counters()
    );
    // The server still serves others.
    raw_handshake(&srv.addr, 101, AddrVec::default()).expect("a good peer after the refusal");
}

/// Issue 13: with max_sessions = 1,000, 10,000 handshake-then-close cycles as OSDs (sessions the
/// server keeps in Standby for their peer): never more than 1,000 sessions, the server's memory flat
/// between cycle 2,000 and 10,000 (under 1 MiB), and at least 9,000 evictions counted.
#[test]
fn ten_thousand_handshake_then_close_cycles_stay_within_max_sessions() {
    let srv = Server::start(&["--max-sessions", "1000"]);
    let mut rss_at_2000 = 0;
    let mut most = 0;
    for i in 0..10_000u32 {
        handshake_and_close(&srv.addr, 10_000 + i);
        if i % 500 == 499 {
            let n = srv.counters()["sessions"].as_u64().unwrap();
            most = most.max(n);
            assert!(n <= 1000, "{n} sessions after cycle {i}");
        }
        if i == 1999 {
            std::thread::sleep(Duration::from_millis(100));
            rss_at_2000 = srv.status_kib("VmRSS");
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let rss_end = srv.status_kib("VmRSS");
    let c = srv.counters();
    let expired = c["sessions_expired"].as_u64().unwrap();
    assert!(expired >= 9000, "only {expired} evictions: {c}");
    assert!(c["sessions"].as_u64().unwrap() <= 1000, "{c}");
    let grew = rss_end.saturating_sub(rss_at_2000);
    assert!(
        grew < 1024,
        "server grew by {grew} KiB between cycle 2,000 and 10,000 ({rss_at_2000} -> {rss_end} KiB)"
    );
    println!("10,000 cycles: at most {most} sessions, {expired} evicted, RSS {rss_at_2000} -> {rss_end} KiB");
}

/// The server side of the flood test: verifies and counts what each connection delivers.
#[derive(Default)]
struct FloodSink {
    pool: Option<Arc<PayloadPool>>,
    msgs: AtomicU64,
    bytes: AtomicU64,
    corrupt: AtomicU64,
    work: Duration,
}

impl Dispatcher for FloodSink {
    fn ms_dispatch(&self, _conn: &ConnectionRef, msg: Message) {
        if let Some(pool) = &self.pool {
            if !pool.verify(&msg) {
                self.corrupt.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.bytes
            .fetch_add(msg.front.len() as u64, Ordering::Relaxed);
        self.msgs.fetch_add(1, Ordering::Release);
        // A dispatcher slower than the sender (1 ms per message, about 1 GB/s), so the flooder's
        // socket never drains while the flood lasts.
        let t = Instant::now();
        while t.elapsed() < self.work {
            std::hint::spin_loop();
        }
    }
}

/// The median of `n` keepalive round trips on `conn`, timed by the caller (send to ack), or None if
/// one of them is not answered by `deadline`.
fn keepalive_median(
    conn: &ConnectionRef,
    probe: &Probe,
    n: usize,
    deadline: Instant,
) -> Option<Duration> {
    let mut rtts = Vec::with_capacity(n);
    for _ in 0..n {
        let before = probe.acks.load(Ordering::Acquire);
        let t0 = Instant::now();
        conn.send_keepalive().unwrap();
        while probe.acks.load(Ordering::Acquire) == before {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::yield_now();
        }
        rtts.push(t0.elapsed());
    }
    rtts.sort();
    Some(rtts[n / 2])
}

/// Issue 13: with one server worker, a peer keeping its socket readable flat out (1 MiB messages as
/// fast as its worker encodes them, to a dispatcher that takes 1 ms for each) does not starve a second
/// connection: the median of 50 keepalive round trips stays within max(10x the median without the
/// flood, 20 ms), measured while the flood runs, and every message the flooder sent arrives intact.
#[test]
fn a_flooding_peer_does_not_starve_its_worker() {
    const MSG: usize = 1 << 20;
    let pool = Arc::new(PayloadPool::new(77, 4 * MSG));
    let sink = Arc::new(FloodSink {
        pool: Some(pool.clone()),
        work: Duration::from_millis(1),
        ..FloodSink::default()
    });
    let srv = loopback_server(sink.clone());
    let probe = Arc::new(Probe::default());
    let prober = client(1, no_faults(), probe.clone());
    let pconn = prober
        .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossless_client())
        .unwrap();
    // Warm up: the session exists before anything is timed.
    let quiet = keepalive_median(&pconn, &probe, 50, Instant::now() + Duration::from_secs(10))
        .expect("keepalives answered without a flood");

    let flooder = client(1, no_faults(), Arc::new(FloodSink::default()));
    let fconn = flooder
        .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossless_client())
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (stop, pool, fconn) = (stop.clone(), pool.clone(), fconn.clone());
        std::thread::spawn(move || {
            let cap = Instant::now() + Duration::from_secs(30);
            let mut sent = 0u64;
            while !stop.load(Ordering::Acquire) && Instant::now() < cap {
                fconn.send(pool.message(sent, MSG)).unwrap();
                sent += 1;
            }
            sent
        })
    };
    // The flood is on once the server has taken a good many messages.
    assert!(
        wait_until(Duration::from_secs(10), || sink
            .msgs
            .load(Ordering::Acquire)
            >= 64),
        "the flood never got going"
    );
    let during = sink.msgs.load(Ordering::Acquire);
    let flooded = keepalive_median(&pconn, &probe, 50, Instant::now() + Duration::from_secs(20));
    let after = sink.msgs.load(Ordering::Acquire);
    stop.store(true, Ordering::Release);
    let sent = sender.join().unwrap();
    let flooded = flooded.expect("keepalives starved for 20 s by the flood");
    assert!(
        after > during,
        "the flood stopped while the keepalives were timed ({during} -> {after} messages)"
    );
    let bound = (quiet * 10).max(Duration::from_millis(20));
    assert!(
        flooded <= bound,
        "keepalive median {flooded:?} under the flood, {quiet:?} without (bound {bound:?})"
    );
    assert!(
        wait_until(Duration::from_secs(30), || sink
            .msgs
            .load(Ordering::Acquire)
            >= sent),
        "{} of {sent} flood messages arrived",
        sink.msgs.load(Ordering::Acquire)
    );
    assert_eq!(sink.msgs.load(Ordering::Acquire), sent);
    assert_eq!(sink.bytes.load(Ordering::Acquire), sent * MSG as u64);
    assert_eq!(sink.corrupt.load(Ordering::Relaxed), 0);
    println!(
        "keepalive median {quiet:?} quiet, {flooded:?} under a flood of {sent} x 1 MiB ({} during the timing)",
        after - during
    );
}
