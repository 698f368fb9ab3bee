//! A client and a server `Connection` wired back to back in memory: handshake, then 10,000 messages
//! of random sizes up to 256 KiB each way-ish, in order and intact.

mod common;

use std::time::Instant;

use common::*;
use msgr::proto::conn::Policy;
use msgr::proto::sim::Sim;
use msgr::proto::{Event, Phase};
use rand::{Rng, SeedableRng};

#[test]
fn handshake_then_ten_thousand_messages_in_order_and_intact() {
    let now = Instant::now();
    let mut sim = Sim::new(
        arc(client_config(1)),
        Policy::lossless_client(),
        arc(server_config(2)),
        server_addr(),
        now,
    );
    assert!(
        sim.run_until(1000, |s| s.client.is_ready()),
        "handshake did not complete"
    );
    assert!(sim
        .events
        .iter()
        .any(|(_, e)| *e == Event::Connected { reconnect: false }));
    assert_eq!(sim.server().unwrap().phase(), Phase::Ready);

    let pool = PayloadPool::new(42, 256 * 1024 + 1);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    const N: u64 = 10_000;
    let sizes: Vec<usize> = (0..N).map(|_| rng.random_range(0..=256 * 1024)).collect();
    // Client -> server: all of them; server -> client: every tenth, interleaved.
    let mut sent_back = 0u64;
    for i in 0..N {
        sim.client
            .send(sim.now, pool.message(i, sizes[i as usize]))
            .unwrap();
        if i % 10 == 0 {
            let now = sim.now;
            sim.server()
                .unwrap()
                .send(now, pool.message(i, sizes[i as usize] / 4))
                .unwrap();
            sent_back += 1;
        }
        if i % 64 == 0 {
            sim.step();
        }
    }
    assert!(
        sim.run_until(10_000_000, |s| s.server_inbox.len() as u64 == N
            && s.client_inbox.len() as u64 == sent_back)
    );

    for (i, m) in sim.server_inbox.iter().enumerate() {
        assert_eq!(m.header.tid, i as u64, "out of order at {i}");
        assert_eq!(m.header.seq, i as u64 + 1);
        assert_eq!(m.front.len(), sizes[i]);
        assert!(pool.verify(m), "payload of message {i} corrupted");
    }
    for (k, m) in sim.client_inbox.iter().enumerate() {
        assert_eq!(m.header.tid, k as u64 * 10);
        assert!(pool.verify(m));
    }
    // Acks flowed: nothing is left unacknowledged once both sides are idle.
    sim.run_until(1000, |_| false);
    assert_eq!(
        sim.client.pending_messages(),
        0,
        "client still holds unacked messages"
    );
    assert_eq!(sim.server().unwrap().pending_messages(), 0);
    assert_eq!(sim.client.stats().msgs_out, N);
    assert_eq!(sim.transports, 1, "no reconnect should have happened");
}

#[test]
fn byte_by_byte_delivery_completes_the_handshake() {
    let now = Instant::now();
    let mut sim = Sim::new(
        arc(client_config(3)),
        Policy::lossy_client(),
        arc(server_config(4)),
        server_addr(),
        now,
    );
    sim.max_chunk = 1;
    let pool = PayloadPool::new(1, 4096);
    for i in 0..20 {
        sim.client
            .send(now, pool.message(i, (i as usize * 97) % 2000))
            .unwrap();
    }
    assert!(sim.run_until(1_000_000, |s| s.server_inbox.len() == 20));
    assert!(sim
        .server_inbox
        .iter()
        .enumerate()
        .all(|(i, m)| m.header.tid == i as u64 && pool.verify(m)));
}

#[test]
fn high_priority_overtakes_queued_normal_messages() {
    let now = Instant::now();
    let mut sim = Sim::new(
        arc(client_config(5)),
        Policy::lossless_client(),
        arc(server_config(6)),
        server_addr(),
        now,
    );
    assert!(sim.run_until(1000, |s| s.client.is_ready()));
    let pool = PayloadPool::new(9, 1024);
    // Queue normal ones, then a high-priority one, before the socket is polled.
    for i in 0..5 {
        sim.client.send(sim.now, pool.message(i, 100)).unwrap();
    }
    sim.client
        .send(
            sim.now,
            pool.message(99, 10)
                .with_priority(msgr::proto::message::MSG_PRIO_HIGH),
        )
        .unwrap();
    assert!(sim.run_until(1000, |s| s.server_inbox.len() == 6));
    assert_eq!(sim.server_inbox[0].header.tid, 99);
    let rest: Vec<u64> = sim.server_inbox[1..].iter().map(|m| m.header.tid).collect();
    assert_eq!(rest, vec![0, 1, 2, 3, 4]);
}

#[test]
fn keepalive_round_trip_reports_rtt() {
    let now = Instant::now();
    let mut sim = Sim::new(
        arc(client_config(7)),
        Policy::lossy_client(),
        arc(server_config(8)),
        server_addr(),
        now,
    );
    assert!(sim.run_until(1000, |s| s.client.is_ready()));
    let t = sim.now;
    sim.client.send_keepalive(t);
    assert!(sim.run_until(1000, |s| s
        .events
        .iter()
        .any(|(_, e)| matches!(e, Event::KeepaliveAck { .. }))));
}

#[test]
fn reading_into_the_receive_buffer_delivers_the_same_messages() {
    let now = Instant::now();
    let mut sim = Sim::new(
        arc(client_config(11)),
        Policy::lossless_client(),
        arc(server_config(12)),
        server_addr(),
        now,
    );
    sim.read_into = true;
    sim.max_chunk = 5000;
    let pool = PayloadPool::new(13, 64 * 1024 + 1);
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    const N: u64 = 2000;
    let sizes: Vec<usize> = (0..N)
        .map(|i| {
            if i % 50 == 0 {
                rng.random_range(16 * 1024..=64 * 1024)
            } else {
                rng.random_range(0..=300)
            }
        })
        .collect();
    for i in 0..N {
        sim.client
            .send(sim.now, pool.message(i, sizes[i as usize]))
            .unwrap();
        if i % 16 == 0 {
            sim.step();
        }
    }
    assert!(sim.run_until(1_000_000, |s| s.server_inbox.len() as u64 == N));
    for (i, m) in sim.server_inbox.iter().enumerate() {
        assert_eq!(m.header.tid, i as u64, "out of order at {i}");
        assert_eq!(m.front.len(), sizes[i]);
        assert!(pool.verify(m), "payload of message {i} corrupted");
    }
    assert_eq!(sim.transports, 1);
}

/// A ready session holds no receive buffer until input arrives; after `idle_buffer_release` without
/// input or output both ends give their buffers back, except a receive buffer holding part of a frame;
/// nothing is lost either way and traffic afterwards flows as before.
#[test]
fn quiet_connections_give_their_buffers_back_and_lose_nothing() {
    let now = Instant::now();
    let release = std::time::Duration::from_secs(2);
    let mut client_cfg = client_config(21);
    client_cfg.idle_buffer_release = Some(release);
    let mut server_cfg = server_config(22);
    server_cfg.idle_buffer_release = Some(release);
    let mut sim = Sim::new(
        arc(client_cfg),
        Policy::lossless_client(),
        arc(server_cfg),
        server_addr(),
        now,
    );
    sim.read_into = true;
    assert!(sim.run_until(1000, |s| s.client.is_ready()));
    assert!(sim.run_until(1000, |s| s.server_inbox.is_empty()));
    let server_ready = sim.server().unwrap().buffer_capacity();
    assert!(
        server_ready < 4096,
        "a fresh ready session holds {server_ready} B of buffers: no receive buffer before input"
    );

    let pool = PayloadPool::new(23, 4096);
    let mut next = 0u64;
    let mut send = |sim: &mut Sim, n: u64, size: usize| {
        for _ in 0..n {
            sim.client.send(sim.now, pool.message(next, size)).unwrap();
            next += 1;
        }
    };
    send(&mut sim, 50, 100);
    assert!(sim.run_until(10_000, |s| s.server_inbox.len() == 50));
    assert!(
        sim.server().unwrap().buffer_capacity() > server_ready,
        "the receive buffer comes with the first input"
    );

    // Half a frame in the server's receive buffer when the quiet spell ends: it is kept.
    send(&mut sim, 1, 3000);
    sim.max_chunk = 1000;
    let before = sim.server().unwrap().stats().buffer_releases;
    sim.step();
    assert_eq!(sim.server_inbox.len(), 50, "the frame arrived whole");
    let later = sim.now + release * 2;
    sim.now = later;
    sim.client.handle_timeout(later);
    sim.server().unwrap().handle_timeout(later);
    assert_eq!(sim.server().unwrap().stats().buffer_releases, before + 1);
    assert!(
        sim.server().unwrap().buffer_capacity() >= 1000,
        "the receive buffer holding a partial frame was released"
    );
    sim.max_chunk = 64 * 1024;
    assert!(sim.run_until(10_000, |s| s.server_inbox.len() == 51));

    // Quiet again, nothing in flight: both ends hold no buffers at all.
    assert!(sim.run_until(100, |s| s.in_flight() == 0));
    let later = sim.now + release * 2;
    sim.now = later;
    sim.client.handle_timeout(later);
    sim.server().unwrap().handle_timeout(later);
    assert_eq!(sim.client.buffer_capacity(), 0, "client kept its buffers");
    assert_eq!(
        sim.server().unwrap().buffer_capacity(),
        0,
        "server kept its buffers"
    );
    assert!(sim.client.stats().buffer_releases >= 1);

    // And traffic resumes as if nothing happened.
    send(&mut sim, 200, 1500);
    assert!(sim.run_until(100_000, |s| s.server_inbox.len() == 251));
    for (i, m) in sim.server_inbox.iter().enumerate() {
        assert_eq!(m.header.tid, i as u64, "out of order at {i}");
        assert!(pool.verify(m), "payload of message {i} corrupted");
    }
    assert_eq!(sim.transports, 1, "no fault on the way");
}
