//! The cost of secure mode's cryptography alone: AES-128-GCM seal + open of one buffer (what the
//! frame codec does per GCM message), and whole secure frames through `FrameEncoder` / `FrameDecoder`
//! beside crc frames of the same size, so `msgr bench --con-mode secure` can be compared with it.
//!
//! `cargo bench --bench crypto` (add `-- --warm-up-time 1 --measurement-time 3` for a quick pass).

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use msgr::proto::codec::secure::session_ciphers;
use msgr::proto::codec::{FrameDecoder, FrameEncoder, Segment, Tag};

const SIZES: [usize; 4] = [64, 4096, 65536, 1 << 20];

fn secret() -> Vec<u8> {
    (0..64u8).collect()
}

fn gcm_alone(c: &mut Criterion) {
    let mut g = c.benchmark_group("aes128gcm");
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let (mut tx, _) = session_ciphers(&secret(), false).unwrap();
        let mut buf = vec![7u8; size];
        g.bench_function(format!("seal/{size}"), |b| {
            b.iter(|| black_box(tx.seal(black_box(&mut buf)).unwrap()))
        });
        // Seal and open in lockstep (the open needs a matching nonce stream).
        let (mut tx, _) = session_ciphers(&secret(), false).unwrap();
        let (_, mut rx) = session_ciphers(&secret(), true).unwrap();
        g.bench_function(format!("seal+open/{size}"), |b| {
            b.iter(|| {
                let tag = tx.seal(&mut buf).unwrap();
                rx.open(black_box(&mut buf), &tag).unwrap();
            })
        });
    }
    g.finish();
}

fn frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_roundtrip");
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let segs = [
            Segment::default_aligned(Bytes::from(vec![1u8; 53])),
            Segment::default_aligned(Bytes::from(vec![2u8; size])),
        ];
        for secure in [false, true] {
            let mut enc = FrameEncoder::new();
            let mut dec = FrameDecoder::new(64 << 20);
            if secure {
                let (tx, _) = session_ciphers(&secret(), false).unwrap();
                let (_, rx) = session_ciphers(&secret(), true).unwrap();
                enc.set_secure(tx);
                dec.set_secure(rx);
            }
            let name = if secure { "secure" } else { "crc" };
            let mut out = Vec::new();
            let mut rx = BytesMut::new();
            g.bench_function(format!("{name}/{size}"), |b| {
                b.iter(|| {
                    out.clear();
                    enc.encode(Tag::Message, &segs, &mut out).unwrap();
                    for part in &out {
                        rx.extend_from_slice(part);
                    }
                    black_box(dec.decode(&mut rx).unwrap().unwrap());
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, gcm_alone, frames);
criterion_main!(benches);
