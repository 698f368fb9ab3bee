//! Session-level behaviours of the messenger on loopback: several bound addresses, mark_down, and two
//! lossless peers dialling each other at once (the connection race ProtocolV2 resolves by address).

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::net::*;
use common::suite::wait_until;
use common::PayloadPool;
use msgr::proto::types::{entity_type, AddrVec};
use msgr::proto::Policy;

#[test]
fn binds_public_and_cluster_addresses_and_serves_both() {
    let pool = Arc::new(PayloadPool::new(1, 4096));
    let sink = Collector::new(pool.clone());
    let mut srv = messenger(
        proto_config(entity_type::OSD, "osd.0"),
        2,
        no_faults(),
        sink.clone(),
    );
    srv.bind(&["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()])
        .unwrap();
    srv.start().unwrap();
    assert_eq!(srv.my_addrs().len(), 2, "{}", srv.my_addrs());
    let cli = client(1, no_faults(), Collector::new(pool.clone()));
    for (k, a) in srv.my_addrs().0.clone().into_iter().enumerate() {
        let c = cli
            .connect_new(
                entity_type::OSD,
                &AddrVec(vec![a]),
                Policy::lossless_client(),
            )
            .unwrap();
        for i in 0..50 {
            c.send(pool.message(k as u64 * 1000 + i, 64)).unwrap();
        }
    }
    assert!(sink.wait_for(100, Duration::from_secs(20)));
    assert_eq!(sink.by_conn.lock().unwrap().len(), 2);
}

#[test]
fn binding_an_address_in_use_is_a_clear_error() {
    let pool = Arc::new(PayloadPool::new(1, 16));
    let srv = loopback_server(Collector::new(pool.clone()));
    let taken = srv.my_addrs().front().unwrap().sockaddr.unwrap();
    let mut other = messenger(
        proto_config(entity_type::OSD, "osd.1"),
        1,
        no_faults(),
        Collector::new(pool),
    );
    other.bind(&[taken]).unwrap();
    let err = other.start().unwrap_err().to_string();
    assert!(
        err.contains(&taken.to_string()) && err.to_lowercase().contains("in use"),
        "{err}"
    );
}

#[test]
fn mark_down_closes_and_refuses_further_sends() {
    let pool = Arc::new(PayloadPool::new(2, 4096));
    let sink = Collector::new(pool.clone());
    let (srv, cli, c) = loopback_pair(&pool, sink.clone());
    c.send(pool.message(0, 10)).unwrap();
    assert!(sink.wait_for(1, Duration::from_secs(10)));
    c.mark_down();
    assert!(wait_until(Duration::from_secs(5), || c.is_closed()));
    assert!(
        c.send(pool.message(1, 10)).is_err(),
        "send after mark_down must fail"
    );
    assert!(wait_until(Duration::from_secs(5), || cli
        .counters()
        .connections
        == 0));
    // A new connection to the same peer is a new session, served as usual.
    let c2 = cli
        .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossless_client())
        .unwrap();
    assert_ne!(c2.id(), c.id());
    c2.send(pool.message(2, 10)).unwrap();
    assert!(sink.wait_for(2, Duration::from_secs(10)));
}

#[test]
fn two_lossless_peers_dialling_each_other_at_once_deliver_everything_once() {
    for round in 0..5u64 {
        let pool = Arc::new(PayloadPool::new(round, 4096));
        let (sa, sb) = (Collector::new(pool.clone()), Collector::new(pool.clone()));
        let mk = |name: &str, sink: Arc<Collector>| {
            let mut p = proto_config(entity_type::OSD, name);
            p.accept_policies = vec![(entity_type::OSD, Policy::lossless_peer())];
            let mut m = messenger(p, 1, no_faults(), sink);
            m.bind(&["127.0.0.1:0".parse().unwrap()]).unwrap();
            m.start().unwrap();
            m
        };
        let a = mk("osd.1", sa.clone());
        let b = mk("osd.2", sb.clone());
        let (a_addrs, b_addrs) = (a.my_addrs().clone(), b.my_addrs().clone());
        std::thread::scope(|s| {
            s.spawn(|| {
                let c = a
                    .connect_to(entity_type::OSD, &b_addrs, Policy::lossless_peer())
                    .unwrap();
                for i in 0..200 {
                    c.send(pool.message(i, 100)).unwrap();
                }
            });
            s.spawn(|| {
                let c = b
                    .connect_to(entity_type::OSD, &a_addrs, Policy::lossless_peer())
                    .unwrap();
                for i in 0..200 {
                    c.send(pool.message(i, 100)).unwrap();
                }
            });
        });
        for (name, sink) in [("b", &sb), ("a", &sa)] {
            assert!(
                sink.wait_for(200, Duration::from_secs(30)),
                "round {round}: {name} got {} of 200",
                sink.received.load(Ordering::Relaxed)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
        for (name, sink) in [("b", &sb), ("a", &sa)] {
            let mut all = sink.all_tids();
            all.sort_unstable();
            assert_eq!(
                all,
                (0..200).collect::<Vec<_>>(),
                "round {round}: {name} lost or duplicated"
            );
            for tids in sink.by_conn.lock().unwrap().values() {
                assert!(
                    tids.windows(2).all(|w| w[0] < w[1]),
                    "round {round}: {name} reordered"
                );
            }
        }
    }
}

#[test]
fn refused_connects_are_reported_and_retried_until_the_peer_appears() {
    let pool = Arc::new(PayloadPool::new(9, 64));
    // A port that is free now: bind, learn it, release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut p = proto_config(entity_type::OSD, "osd.0");
    p.nonce = 4321;
    let target = AddrVec(vec![msgr::proto::types::EntityAddr::msgr2(addr, 4321)]);
    let cli_sink = Collector::new(pool.clone());
    let cli = client(1, no_faults(), cli_sink.clone());
    let conn = cli
        .connect_to(entity_type::OSD, &target, Policy::lossless_client())
        .unwrap();
    conn.send(pool.message(0, 10)).unwrap();
    assert!(wait_until(Duration::from_secs(10), || cli_sink
        .connect_failures
        .load(Ordering::Relaxed)
        >= 2));
    let reason = cli_sink.last_failure.lock().unwrap().clone();
    assert!(
        reason.to_lowercase().contains("refused") && reason.contains(&addr.to_string()),
        "{reason}"
    );
    // The peer comes up: the queued message is delivered.
    let sink = Collector::new(pool.clone());
    let mut srv = messenger(p, 1, no_faults(), sink.clone());
    srv.bind(&[addr]).unwrap();
    srv.start().unwrap();
    assert!(
        sink.wait_for(1, Duration::from_secs(10)),
        "queued message not delivered after the peer appeared"
    );
}
