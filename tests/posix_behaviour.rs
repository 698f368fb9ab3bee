//! Messenger behaviours over posix loopback (IPv4 and IPv6): hostile peers are dropped while others are
//! served, idle connections close, quiet ones give their buffers back, a slow dispatcher pushes back on
//! senders through the send budget, high-priority messages overtake queued normal ones, the first
//! replies to a large read leave before the rest of it is dispatched, and replies queued from a
//! dispatch keep their order.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::net::*;
use common::suite::wait_until;
use common::PayloadPool;
use msgr::proto::banner::Banner;
use msgr::proto::codec::{FrameEncoder, Segment, Tag};
use msgr::proto::message::MSG_PRIO_HIGH;
use msgr::proto::types::entity_type;
use msgr::proto::Policy;
use msgr::stack::fault::FaultStack;
use msgr::stack::posix::PosixStack;
use msgr::MessengerConfig;

const LOOPBACKS: [&str; 2] = ["127.0.0.1:0", "[::1]:0"];

fn banner() -> Vec<u8> {
    let mut b = BytesMut::new();
    Banner {
        supported: 1,
        required: 0,
    }
    .encode(&mut b);
    b.to_vec()
}

/// A preamble announcing a 4 GiB segment, with a valid crc so only the size check can stop it.
fn huge_preamble() -> Vec<u8> {
    let mut out = Vec::new();
    FrameEncoder::new()
        .encode(Tag::Hello, &[Segment::new(vec![0u8; 8], 8)], &mut out)
        .unwrap();
    let mut p = out.concat()[..32].to_vec();
    p[2..6].copy_from_slice(&u32::MAX.to_le_bytes());
    let crc = msgr::proto::crc::ceph_crc32c(0, &p[..28]);
    p[28..32].copy_from_slice(&crc.to_le_bytes());
    p
}

#[test]
fn hostile_peers_are_dropped_and_others_still_served() {
    for bind in LOOPBACKS {
        let pool = Arc::new(PayloadPool::new(1, 4096));
        let sink = Collector::new(pool.clone());
        let mut p = proto_config(entity_type::OSD, "osd.0");
        p.handshake_timeout = Duration::from_millis(500);
        let mut srv = messenger(p, 2, no_faults(), sink.clone());
        srv.bind(&[bind.parse().unwrap()]).unwrap();
        srv.start().unwrap();
        let addr: SocketAddr = srv.my_addrs().front().unwrap().sockaddr.unwrap();

        let mut garbage = TcpStream::connect(addr).unwrap();
        garbage
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut truncated = TcpStream::connect(addr).unwrap();
        truncated.write_all(&banner()[..10]).unwrap();
        drop(truncated);
        let mut huge = TcpStream::connect(addr).unwrap();
        huge.write_all(&banner()).unwrap();
        huge.write_all(&huge_preamble()).unwrap();
        let mut stall = TcpStream::connect(addr).unwrap();
        stall.write_all(&banner()).unwrap();
        stall.write_all(&huge_preamble()[..16]).unwrap(); // half a preamble, then silence

        // Meanwhile a real client is served.
        let cli = client(1, no_faults(), Collector::new(pool.clone()));
        let conn = cli
            .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossless_client())
            .unwrap();
        for i in 0..100 {
            conn.send(pool.message(i, 1000)).unwrap();
        }
        assert!(
            sink.wait_for(100, Duration::from_secs(20)),
            "{bind}: good client not served"
        );
        assert!(
            wait_until(Duration::from_secs(10), || srv.counters().dropped_bad_peers
                >= 4),
            "{bind}: dropped {} of 4 bad peers",
            srv.counters().dropped_bad_peers
        );
        // The server closed them: reads see EOF or reset.
        for s in [&mut garbage, &mut huge, &mut stall] {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 4096];
            let mut total = 0;
            let closed = loop {
                match s.read(&mut buf) {
                    Ok(0) => break true,
                    Ok(n) => total += n,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                    Err(_) => break false,
                }
                if total > 1 << 20 {
                    break false;
                }
            };
            assert!(closed, "{bind}: hostile socket left open");
        }
        assert_eq!(sink.corrupted.load(Ordering::Relaxed), 0);
        assert_eq!(
            sink.resets.load(Ordering::Relaxed),
            0,
            "{bind}: bad peers must not reach the dispatcher"
        );
    }
}

/// Quiet sessions give their buffers back on both ends after `idle_buffer_release` (the workers fire
/// the protocol's timer) and carry on afterwards, in order and intact, on the same connection.
#[test]
fn quiet_sessions_release_their_buffers_and_carry_on() {
    let pool = Arc::new(PayloadPool::new(3, 64 * 1024));
    let sink = Collector::new(pool.clone());
    let release = Some(Duration::from_millis(200));
    let mut p = proto_config(entity_type::OSD, "osd.0");
    p.idle_buffer_release = release;
    p.default_policy = Policy::stateful_server();
    let mut srv = messenger(p, 1, no_faults(), sink.clone());
    srv.bind(&[LOOPBACKS[0].parse().unwrap()]).unwrap();
    srv.start().unwrap();
    let mut c = proto_config(entity_type::CLIENT, "client.admin");
    c.idle_buffer_release = release;
    let mut cli = messenger(c, 1, no_faults(), Collector::new(pool.clone()));
    cli.start().unwrap();
    let conn = cli
        .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossless_client())
        .unwrap();
    let send = |range: std::ops::Range<u64>| {
        for i in range {
            conn.send(pool.message(i, 1000 + (i as usize * 613) % 60_000))
                .unwrap();
        }
    };
    send(0..100);
    assert!(sink.wait_for(100, Duration::from_secs(10)));
    assert!(
        wait_until(Duration::from_secs(10), || {
            srv.counters().buffer_releases >= 1 && cli.counters().buffer_releases >= 1
        }),
        "no release: server {}, client {}",
        srv.counters().buffer_releases,
        cli.counters().buffer_releases
    );
    send(100..200);
    assert!(sink.wait_for(200, Duration::from_secs(10)));
    assert_eq!(sink.corrupted.load(Ordering::Relaxed), 0);
    let got = sink.by_conn.lock().unwrap();
    let seqs: Vec<u64> = got.values().flatten().copied().collect();
    assert_eq!(
        seqs,
        (0..200).collect::<Vec<u64>>(),
        "lost, duplicated or out of order"
    );
    assert_eq!(srv.counters().transport_faults, 0);
    assert_eq!(
        cli.counters().handshakes,
        1,
        "the connection was not redone"
    );
}

#[test]
fn idle_connection_closes_after_the_idle_timeout() {
    for bind in LOOPBACKS {
        let pool = Arc::new(PayloadPool::new(2, 4096));
        let sink = Collector::new(pool.clone());
        let mut p = proto_config(entity_type::OSD, "osd.0");
        p.idle_timeout = Some(Duration::from_millis(300));
        p.default_policy = Policy::stateless_server();
        let mut srv = messenger(p, 1, no_faults(), sink.clone());
        srv.bind(&[bind.parse().unwrap()]).unwrap();
        srv.start().unwrap();
        let cli_sink = Collector::new(pool.clone());
        let cli = client(1, no_faults(), cli_sink.clone());
        let conn = cli
            .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossy_client())
            .unwrap();
        conn.send(pool.message(0, 10)).unwrap();
        assert!(sink.wait_for(1, Duration::from_secs(10)));
        let t0 = Instant::now();
        assert!(
            wait_until(Duration::from_secs(10), || conn.is_closed()),
            "{bind}: idle connection not closed"
        );
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(250),
            "{bind}: closed too early ({took:?})"
        );
        assert_eq!(
            srv.counters().connections,
            0,
            "{bind}: server still holds the idle connection"
        );
        assert!(
            cli_sink.resets.load(Ordering::Relaxed) >= 1,
            "{bind}: the client's dispatcher hears of it"
        );
    }
}

#[test]
fn slow_dispatcher_blocks_senders_on_the_throttle_and_memory_stays_bounded() {
    let pool = Arc::new(PayloadPool::new(3, 64 * 1024));
    let sink = Collector::with(pool.clone(), false, Duration::from_millis(2));
    let srv = loopback_server(sink.clone());
    let mut cfg = MessengerConfig::new(proto_config(entity_type::CLIENT, "client.admin"));
    cfg.workers.threads = 1;
    cfg.send_budget_bytes = 1 << 20;
    let mut cli = msgr::Messenger::new(
        FaultStack::new(PosixStack::new(), no_faults()),
        cfg,
        Collector::new(pool.clone()),
    );
    cli.start().unwrap();
    let conn = cli
        .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossless_client())
        .unwrap();
    const N: u64 = 400;
    for i in 0..N {
        conn.send(pool.message(i, 64 * 1024)).unwrap();
    }
    assert!(sink.wait_for(N, Duration::from_secs(60)));
    let t = cli.throttles().send;
    assert!(t.blocked > 0, "the sender never waited: {t:?}");
    assert!(
        t.peak_bytes <= (1 << 20) + 64 * 1024,
        "queued bytes exceeded the budget: {t:?}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || cli
            .throttles()
            .send
            .current_bytes
            == 0),
        "budget not returned after acks"
    );
}

#[test]
fn high_priority_overtakes_queued_normal_messages() {
    let pool = Arc::new(PayloadPool::new(4, 256 * 1024));
    let sink = Collector::with(pool.clone(), false, Duration::from_millis(1));
    let (_srv, _cli, conn) = loopback_pair(&pool, sink.clone());
    for i in 0..200 {
        conn.send(pool.message(i, 256 * 1024)).unwrap();
    }
    conn.send(pool.message(1000, 16).with_priority(MSG_PRIO_HIGH))
        .unwrap();
    assert!(sink.wait_for(201, Duration::from_secs(60)));
    let order: Vec<u64> = sink
        .by_conn
        .lock()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    let pos = order.iter().position(|t| *t == 1000).unwrap();
    assert!(pos < 200, "the high-priority message arrived last");
    let normal: Vec<u64> = order.iter().copied().filter(|t| *t != 1000).collect();
    assert_eq!(
        normal,
        (0..200).collect::<Vec<_>>(),
        "normal messages keep their order"
    );
}

impl Arrivals {
    /// From a client with this recorder, `count` messages of `len` bytes (tids 0..count) to `srv` on one
    /// lossless session; then wait for `replies` replies and return them, with the client (still
    /// connected).
    fn exchange(
        self: &Arc<Self>,
        srv: &PosixMessenger,
        count: u64,
        len: usize,
        replies: usize,
    ) -> (PosixMessenger, Vec<(u64, Instant)>) {
        let cli = client(1, no_faults(), self.clone());
        let conn = cli
            .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossless_client())
            .unwrap();
        for tid in 0..count {
            let msg = msgr::proto::Message::new(42, bytes::Bytes::from(vec![tid as u8; len]));
            conn.send(msg.with_tid(tid)).unwrap();
        }
        assert!(
            wait_until(Duration::from_secs(20), || self.0.lock().unwrap().len()
                >= replies),
            "replies missing: got {} of {replies}",
            self.0.lock().unwrap().len()
        );
        let got = self.0.lock().unwrap().clone();
        (cli, got)
    }
}

/// Replies to the first messages of a large read leave before the rest are dispatched: 64 messages
/// queued during the handshake go out in one write and are read at once; the server's dispatcher
/// stalls on the 20th, and the first replies must not wait for it.
#[test]
fn first_replies_of_a_large_read_leave_before_the_rest_are_dispatched() {
    let delay = Duration::from_millis(400);
    let srv = loopback_server(Arc::new(SlowOnceEcho {
        slow_tid: 20,
        delay,
    }));
    let (_cli, got) = Arc::new(Arrivals(Default::default())).exchange(&srv, 64, 64, 64);
    assert_eq!(got.len(), 64);
    let (lead, in_order) = Arrivals::lead_of_first_over(&got, 20);
    assert!(
        lead >= delay / 2,
        "reply 0 arrived only {lead:?} before reply 20 (its dispatcher stalled {delay:?} on 20)"
    );
    // Still in order: nothing overtook the stalled one.
    assert!(in_order);
    assert_eq!(srv.counters().transport_faults, 0);
}

/// Answers each message three times, through `send`, `try_send` and `send_timeout` in that order.
struct ThreeWays;

impl msgr::Dispatcher for ThreeWays {
    fn ms_dispatch(&self, conn: &msgr::ConnectionRef, msg: msgr::proto::Message) {
        let t = msg.header.tid * 3;
        let reply = |tid| msgr::proto::Message::new(43, bytes::Bytes::new()).with_tid(tid);
        conn.send(reply(t)).unwrap();
        assert!(conn.try_send(reply(t + 1)).is_ok());
        assert!(conn
            .send_timeout(reply(t + 2), Duration::from_secs(1))
            .is_ok());
    }
}

/// Replies queued from a connection's own dispatch, by every way of queueing, leave in the order
/// they were queued (they skip the command channel, so each way must).
#[test]
fn replies_from_the_dispatcher_keep_their_order_whichever_way_they_are_queued() {
    let srv = loopback_server(Arc::new(ThreeWays));
    let (_cli, got) = Arc::new(Arrivals(Default::default())).exchange(&srv, 200, 1, 600);
    let tids: Vec<u64> = got.iter().map(|&(tid, _)| tid).collect();
    assert_eq!(tids, (0..600).collect::<Vec<u64>>());
}
