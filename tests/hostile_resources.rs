//! Hostile peers against a whole msgr server (issue 13): what one peer can make the server hold, and
//! whether it can touch another peer's session. Everything runs on loopback; servers are in-process
//! unless a case measures the server's memory, which then runs as a child process of this binary.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::net::*;
use common::PayloadPool;
use msgr::msgr::{ConnectionRef, Dispatcher};
use msgr::proto::types::entity_type;
use msgr::proto::{Error, Message, Policy};

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    f()
}

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
