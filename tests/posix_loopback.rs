//! The messenger over the posix stack on loopback: many connections, many messages, sizes from empty to
//! 4 MiB, all delivered in order per connection and intact; also over IPv6.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::net::*;
use common::PayloadPool;
use msgr::proto::types::entity_type;
use msgr::proto::Policy;
use rand::{Rng, SeedableRng};

fn size_of(rng: &mut impl Rng, i: u64) -> usize {
    if i % 100 == 99 {
        rng.random_range(64 * 1024..=4 << 20)
    } else {
        rng.random_range(0..=64 * 1024)
    }
}

fn run(bind: &str, conns: usize, per_conn: u64) {
    let pool = Arc::new(PayloadPool::new(11, (4 << 20) + 1));
    let sink = Collector::new(pool.clone());
    let srv = server(
        bind.parse().unwrap(),
        2,
        Policy::stateful_server(),
        no_faults(),
        sink.clone(),
    );
    let cli_sink = Collector::new(pool.clone());
    let cli = client(2, no_faults(), cli_sink.clone());
    let addrs = srv.my_addrs().clone();
    let handles: Vec<_> = (0..conns)
        .map(|_| {
            cli.connect_new(entity_type::OSD, &addrs, Policy::lossless_client())
                .unwrap()
        })
        .collect();
    // Four sender threads, each feeding a quarter of the connections round-robin.
    std::thread::scope(|s| {
        for (t, chunk) in handles.chunks(conns.div_ceil(4)).enumerate() {
            let pool = pool.clone();
            s.spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64);
                for i in 0..per_conn {
                    for h in chunk {
                        let len = size_of(&mut rng, i);
                        h.send(pool.message(i, len)).unwrap();
                    }
                }
            });
        }
    });
    let total = conns as u64 * per_conn;
    assert!(
        sink.wait_for(total, Duration::from_secs(240)),
        "only {} of {total} arrived",
        sink.received.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert_eq!(sink.corrupted.load(std::sync::atomic::Ordering::Relaxed), 0);
    let by_conn = sink.by_conn.lock().unwrap();
    assert_eq!(
        by_conn.len(),
        conns,
        "one server-side session per client connection"
    );
    for (id, tids) in by_conn.iter() {
        assert_eq!(
            tids,
            &(0..per_conn).collect::<Vec<_>>(),
            "connection {id} out of order or incomplete"
        );
    }
    let c = srv.counters();
    assert_eq!(c.msgs_in, total);
    assert_eq!(c.accepted, conns as u64);
    assert_eq!(sink.resets.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn sixty_four_connections_thousand_messages_each_ipv4() {
    run("127.0.0.1:0", 64, 1000);
}

#[test]
fn ipv6_loopback_works_too() {
    run("[::1]:0", 8, 200);
}
