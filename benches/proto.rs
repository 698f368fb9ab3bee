//! Benchmarks of the sans-IO protocol core: frame encode + decode, Ceph's crc32c, a full handshake
//! between two in-memory connections, message throughput through `proto::sim::Sim`, and the rate of
//! 64 B messages through two in-memory connections (`stream/64B_window64_lossless`).
//!
//! `cargo bench --bench proto` (add `-- --warm-up-time 1 --measurement-time 3` for a quick pass).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use msgr::proto::codec::{FrameDecoder, FrameEncoder, Segment, Tag};
use msgr::proto::conn::{Config, Connection, Policy};
use msgr::proto::crc::{ceph_crc32c, SEGMENT_SEED};
use msgr::proto::message::{Message, SEGMENT_ALIGNMENTS};
use msgr::proto::sim::Sim;
use msgr::proto::types::{entity_type, AddrVec, AuthEntityName, EntityAddr};
use msgr::proto::Event;

fn server_addr() -> EntityAddr {
    EntityAddr::msgr2("127.0.0.1:6800".parse().unwrap(), 7777)
}

fn server_config() -> Arc<Config> {
    let mut c = Config::new(entity_type::OSD, AuthEntityName::new(entity_type::OSD, "0"));
    c.my_addrs = AddrVec(vec![server_addr()]);
    c.rng_seed = Some(1);
    Arc::new(c)
}

fn client_config() -> Arc<Config> {
    let mut c = Config::new(
        entity_type::CLIENT,
        AuthEntityName::new(entity_type::CLIENT, "admin"),
    );
    c.gid = 4100;
    c.my_addrs = AddrVec(vec![EntityAddr::msgr2(
        "127.0.0.1:40000".parse().unwrap(),
        4242,
    )]);
    c.rng_seed = Some(2);
    Arc::new(c)
}

fn payload(len: usize) -> Bytes {
    Bytes::from((0..len).map(|i| (i * 31 + 7) as u8).collect::<Vec<u8>>())
}

/// A MESSAGE frame's four segments (header, front, empty middle, empty data) for a `len`-byte front.
fn message_segments(len: usize) -> Vec<Segment> {
    let mut m = Message::new(0x4000, payload(len));
    m.header.seq = 1;
    m.segments()
        .into_iter()
        .zip(SEGMENT_ALIGNMENTS)
        .map(|(d, a)| Segment::new(d, a))
        .collect()
}

/// Encode a MESSAGE frame to a gather list, copy it into a receive buffer (what a socket read does),
/// decode it and check its crcs.
fn frame_encode_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_encode_decode");
    for (name, len) in [("64B", 64), ("4KiB", 4 << 10), ("1MiB", 1 << 20)] {
        let segs = message_segments(len);
        let mut enc = FrameEncoder::new();
        let mut dec = FrameDecoder::new(64 << 20);
        let mut out: Vec<Bytes> = Vec::new();
        let mut rx = BytesMut::with_capacity(len + 4096);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                enc.encode(Tag::Message, black_box(&segs), &mut out)
                    .unwrap();
                for piece in &out {
                    rx.extend_from_slice(piece);
                }
                let f = dec.decode(&mut rx).unwrap().expect("a whole frame");
                black_box(f.segments[1].len())
            })
        });
    }
    g.finish();
}

fn crc32c(c: &mut Criterion) {
    let mut g = c.benchmark_group("ceph_crc32c");
    for (name, len) in [("4KiB", 4 << 10), ("1MiB", 1 << 20)] {
        let data = payload(len);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(name, |b| {
            b.iter(|| ceph_crc32c(SEGMENT_SEED, black_box(&data)))
        });
    }
    g.finish();
}

/// Client and server `Connection`s from creation to both Ready, bytes handed across in memory.
fn handshake(c: &mut Criterion) {
    c.bench_function("handshake_to_ready", |b| {
        b.iter_batched(
            || (client_config(), server_config()),
            |(ccfg, scfg)| {
                let now = Instant::now();
                let mut client = Connection::client(
                    ccfg,
                    Policy::lossless_client(),
                    entity_type::OSD,
                    server_addr(),
                    now,
                );
                let _ = client.poll_event(); // OpenTransport
                client.on_transport_connected(now);
                let mut server = Connection::server(scfg, server_addr(), now);
                let mut out = Vec::new();
                while !(client.is_ready() && server.is_ready()) {
                    client.poll_transmit(now, &mut out);
                    for piece in out.drain(..) {
                        server.handle_input(now, &piece);
                    }
                    server.poll_transmit(now, &mut out);
                    for piece in out.drain(..) {
                        client.handle_input(now, &piece);
                    }
                    while let Some(ev) = server.poll_event() {
                        if let Event::SessionRequest(_) = ev {
                            server.resolve_session(now, None);
                        }
                    }
                    while client.poll_event().is_some() {}
                    assert!(!client.is_closed() && !server.is_closed());
                }
                (client, server)
            },
            BatchSize::SmallInput,
        )
    });
}

/// A client and a server connection, handshaken, in memory.
fn ready_pair() -> (Connection, Connection) {
    let now = Instant::now();
    let mut client = Connection::client(
        client_config(),
        Policy::lossless_client(),
        entity_type::OSD,
        server_addr(),
        now,
    );
    let _ = client.poll_event(); // OpenTransport
    client.on_transport_connected(now);
    let mut server = Connection::server(server_config(), server_addr(), now);
    let mut out = Vec::new();
    while !(client.is_ready() && server.is_ready()) {
        pass(&mut client, &mut server, now, &mut out);
        pass(&mut server, &mut client, now, &mut out);
        while let Some(ev) = server.poll_event() {
            if let Event::SessionRequest(_) = ev {
                server.resolve_session(now, None);
            }
        }
        while client.poll_event().is_some() {}
    }
    (client, server)
}

/// Hand what `from` has to write to `to`, one piece per "read".
fn pass(from: &mut Connection, to: &mut Connection, now: Instant, out: &mut Vec<Bytes>) {
    from.poll_transmit(now, out);
    for piece in out.drain(..) {
        to.handle_input(now, &piece);
    }
}

/// The protocol alone for small messages (issue 15): 64 B lossless messages, 64 in flight, through two
/// in-memory connections on one thread — encode, crc, hand over, decode, deliver, ack. Elements/s is
/// messages per second.
fn stream_64b(c: &mut Criterion) {
    const WINDOW: u64 = 64;
    let front = payload(64);
    let mut g = c.benchmark_group("stream");
    g.throughput(Throughput::Elements(WINDOW));
    g.bench_function("64B_window64_lossless", |b| {
        let (mut client, mut server) = ready_pair();
        let mut out = Vec::new();
        let mut tid = 0u64;
        b.iter(|| {
            let now = Instant::now();
            for _ in 0..WINDOW {
                tid += 1;
                client
                    .send(now, Message::new(0x4000, front.clone()).with_tid(tid))
                    .unwrap();
            }
            pass(&mut client, &mut server, now, &mut out);
            let mut got = 0;
            while let Some(ev) = server.poll_event() {
                if let Event::Message(m) = ev {
                    black_box(m);
                    got += 1;
                }
            }
            assert_eq!(got, WINDOW);
            pass(&mut server, &mut client, now, &mut out);
            while client.poll_event().is_some() {}
        });
    });
    g.finish();
}

/// 1,000 messages of 4 KiB through `Sim` after the handshake: encode, crc, hand over, decode, deliver,
/// ack.
fn sim_throughput(c: &mut Criterion) {
    const N: usize = 1000;
    const LEN: usize = 4 << 10;
    let front = payload(LEN);
    let mut g = c.benchmark_group("sim");
    g.throughput(Throughput::Bytes((N * LEN) as u64));
    g.bench_function("1000x4KiB", |b| {
        b.iter_batched(
            || {
                let mut sim = Sim::new(
                    client_config(),
                    Policy::lossless_client(),
                    server_config(),
                    server_addr(),
                    Instant::now(),
                );
                assert!(sim.run_until(1000, |s| s.client.is_ready()));
                sim
            },
            |mut sim| {
                let now = sim.now;
                for i in 0..N {
                    let m = Message::new(0x4000, front.clone()).with_tid(i as u64);
                    sim.client.send(now, m).unwrap();
                }
                assert!(sim.run_until(1_000_000, |s| s.server_inbox.len() == N));
                sim
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1));
    targets = frame_encode_decode, crc32c, handshake, sim_throughput, stream_64b
}
criterion_main!(benches);
