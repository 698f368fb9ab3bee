//! Real Ceph 16.2.15 connections (tests/data, see its README.md) through the banner and frame codec:
//! every byte decodes, every crc verifies, the tag sequence is what Ceph sent, and re-encoding each
//! frame reproduces the captured bytes exactly.

use bytes::{Bytes, BytesMut};
use msgr::proto::banner::{Banner, BannerError};
use msgr::proto::codec::{
    Frame, FrameDecoder, FrameEncoder, FrameError, Tag, EPILOGUE_CRC_REV1_LEN,
    LATE_STATUS_COMPLETE, MAX_NUM_SEGMENTS,
};
use msgr::proto::crc::{ceph_crc32c, SEGMENT_SEED};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const MAX_FRAME: usize = 16 << 20;

fn capture(path: &str) -> Vec<u8> {
    let full = format!("{}/tests/data/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// Feeds `bytes` in random-sized chunks (1..=max_chunk) to the banner decoder, then the frame
/// decoder; returns the banner and the frames, checking that every byte was consumed.
fn decode_capture(bytes: &[u8], seed: u64, max_chunk: usize) -> (Banner, Vec<Frame>) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut rx = BytesMut::new();
    let mut fed = 0;
    let mut feed = |rx: &mut BytesMut| -> bool {
        if fed == bytes.len() {
            return false;
        }
        let n = rng.random_range(1..=max_chunk).min(bytes.len() - fed);
        rx.extend_from_slice(&bytes[fed..fed + n]);
        fed += n;
        true
    };
    let banner = loop {
        match Banner::decode(&rx).expect("banner") {
            Some((banner, used)) => {
                assert_eq!(used, Banner::LEN);
                let _ = rx.split_to(used);
                break banner;
            }
            None => assert!(feed(&mut rx), "capture ends inside the banner"),
        }
    };
    let mut dec = FrameDecoder::new(MAX_FRAME);
    let mut frames = Vec::new();
    loop {
        match dec.decode(&mut rx).expect("frame") {
            Some(f) => frames.push(f),
            None => {
                if !feed(&mut rx) {
                    break;
                }
            }
        }
    }
    assert!(rx.is_empty(), "{} trailing bytes", rx.len());
    let framed: usize = frames.iter().map(|f| f.raw.len()).sum();
    assert_eq!(Banner::LEN + framed, bytes.len(), "file consumed exactly");
    let joined: Vec<u8> = frames.iter().flat_map(|f| f.raw.iter().copied()).collect();
    assert_eq!(
        &joined[..],
        &bytes[Banner::LEN..],
        "raw is the wire transcript"
    );
    (banner, frames)
}

/// Decodes a capture several ways (one chunk, byte by byte, random chunks) and checks they agree.
fn decode(path: &str) -> Vec<Frame> {
    let bytes = capture(path);
    let (banner, frames) = decode_capture(&bytes, 0, bytes.len());
    assert_eq!(
        banner,
        Banner {
            supported: 0x1,
            required: 0x0
        },
        "{path}"
    );
    assert_eq!(Banner::OURS.check_peer(&banner), Ok(()));
    assert_eq!(
        decode_capture(&bytes, 1, 1).1,
        frames,
        "{path} byte by byte"
    );
    for seed in 2..8 {
        assert_eq!(
            decode_capture(&bytes, seed, 97).1,
            frames,
            "{path} seed {seed}"
        );
    }
    for f in &frames {
        check_reencode(f);
    }
    frames
}

fn check_reencode(f: &Frame) {
    let mut enc = FrameEncoder::new();
    let mut out = Vec::new();
    enc.encode(f.tag, &f.to_segments(), &mut out).unwrap();
    assert_eq!(out.concat(), f.raw, "re-encoded {:?}", f.tag);
    if f.num_segments == 1 && f.aligns[0] == 8 {
        let mut out = Vec::new();
        enc.encode_control(f.tag, f.payload(), &mut out).unwrap();
        assert_eq!(out, vec![f.raw.clone()], "encode_control {:?}", f.tag);
    }
}

fn tags(frames: &[Frame]) -> Vec<Tag> {
    frames.iter().map(|f| f.tag).collect()
}

fn seg_lens(f: &Frame) -> [usize; MAX_NUM_SEGMENTS] {
    std::array::from_fn(|i| f.segments[i].len())
}

/// The rev1 epilogue of a multi-segment frame: late_status and the crcs of segments 1..3.
fn epilogue(f: &Frame) -> (u8, [u32; 3]) {
    assert!(f.num_segments > 1);
    let e = &f.raw[f.raw.len() - EPILOGUE_CRC_REV1_LEN..];
    let crc = |i: usize| u32::from_le_bytes(e[1 + 4 * i..5 + 4 * i].try_into().unwrap());
    (e[0], [crc(0), crc(1), crc(2)])
}

#[test]
fn mon_conn0_client_to_server() {
    use Tag::*;
    let frames = decode("ceph16-mon-crc/conn0-c2s.bin");
    assert_eq!(
        tags(&frames),
        [
            Hello,
            AuthRequest,
            AuthSignature,
            ClientIdent,
            Message,
            Message
        ]
    );
    assert_eq!(frames[2].payload().len(), 32);
    assert_eq!(frames[3].payload().len(), 123);
    // MMonGetMap: header only, empty front -> one segment, no epilogue.
    assert_eq!(frames[4].num_segments, 1);
    assert_eq!(seg_lens(&frames[4]), [41, 0, 0, 0]);
    assert_eq!(frames[4].raw.len(), 32 + 41 + 4);
    // MMonSubscribe: front 48 bytes.
    assert_eq!(frames[5].num_segments, 2);
    assert_eq!(seg_lens(&frames[5]), [41, 48, 0, 0]);
    let (late, crcs) = epilogue(&frames[5]);
    assert_eq!(late, LATE_STATUS_COMPLETE);
    assert_eq!(
        crcs,
        [ceph_crc32c(SEGMENT_SEED, &frames[5].segments[1]), 0, 0]
    );
    for f in &frames[..4] {
        assert_eq!((f.num_segments, f.aligns), (1, [8, 0, 0, 0]));
    }
}

#[test]
fn mon_conn0_server_to_client() {
    use Tag::*;
    let frames = decode("ceph16-mon-crc/conn0-s2c.bin");
    assert_eq!(
        tags(&frames),
        [
            Hello,
            AuthDone,
            AuthSignature,
            ServerIdent,
            Message,
            Message,
            Message
        ]
    );
    assert_eq!(frames[2].payload().len(), 32);
    assert_eq!(frames[3].payload().len(), 123);
    // MMonMap: front = u32 201 + the encoded MonMap.
    let front = &frames[4].segments[1];
    assert_eq!(front.len(), 205);
    assert_eq!(&front[..4], &201u32.to_le_bytes());
    assert_eq!(&front[4..], &capture("ceph16-mon-crc/monmap.wire.bin")[..]);
    // MConfig: front 4 bytes.
    assert_eq!(seg_lens(&frames[5]), [41, 4, 0, 0]);
    for f in &frames[4..] {
        assert_eq!(epilogue(f).0, LATE_STATUS_COMPLETE);
    }
}

#[test]
fn mon_conn1_both_directions() {
    for path in [
        "ceph16-mon-crc/conn1-c2s.bin",
        "ceph16-mon-crc/conn1-s2c.bin",
    ] {
        let frames = decode(path);
        assert!(frames.len() > 5, "{path}");
        assert_eq!(frames[0].tag, Tag::Hello);
        assert!(
            frames.iter().skip(4).all(|f| f.tag == Tag::Message),
            "{path}"
        );
    }
}

#[test]
fn osd_conn0_client_to_server() {
    use Tag::*;
    let frames = decode("ceph16-osd-crc/conn0-c2s.bin");
    assert_eq!(
        tags(&frames),
        [Hello, AuthRequest, AuthSignature, ClientIdent, Message]
    );
    assert_eq!(frames[2].payload().len(), 32);
    let op = &frames[4];
    assert_eq!(op.num_segments, 4);
    assert_eq!(seg_lens(op), [41, 213, 0, 3]);
    assert_eq!(op.aligns, [8, 8, 8, 4096]);
    assert_eq!(&op.segments[3][..], b"vm\n");
    let (late, crcs) = epilogue(op);
    assert_eq!(late, LATE_STATUS_COMPLETE);
    assert_eq!(crcs[1], 0xffff_ffff, "empty middle segment");
    assert_eq!(crcs[2], ceph_crc32c(SEGMENT_SEED, b"vm\n"));
}

#[test]
fn osd_conn0_server_to_client() {
    use Tag::*;
    let frames = decode("ceph16-osd-crc/conn0-s2c.bin");
    assert_eq!(
        tags(&frames),
        [Hello, AuthDone, AuthSignature, ServerIdent, Message]
    );
    assert_eq!(seg_lens(&frames[4]), [41, 148, 0, 0]);
}

/// The cephx capture is plaintext up to AUTH_DONE; after it every frame is encrypted, which a crc-mode
/// decoder must refuse rather than misread.
#[test]
fn cephx_secure_plaintext_prefix() {
    use Tag::*;
    for (path, want) in [
        (
            "ceph16-mon-cephx-secure/conn0-c2s.bin",
            [Hello, AuthRequest, AuthRequestMore],
        ),
        (
            "ceph16-mon-cephx-secure/conn0-s2c.bin",
            [Hello, AuthReplyMore, AuthDone],
        ),
    ] {
        let bytes = capture(path);
        let (banner, used) = Banner::decode(&bytes).unwrap().unwrap();
        assert_eq!(banner, Banner::OURS);
        let mut rx = BytesMut::from(&bytes[used..]);
        let mut dec = FrameDecoder::new(MAX_FRAME);
        for tag in want {
            let f = dec.decode(&mut rx).unwrap().unwrap();
            assert_eq!(f.tag, tag, "{path}");
            check_reencode(&f);
        }
        assert!(
            matches!(dec.decode(&mut rx), Err(FrameError::PreambleCrc { .. })),
            "{path}: encrypted bytes must not decode as a crc frame"
        );
    }
}

#[test]
fn a_capture_cut_short_waits_and_a_flipped_byte_fails() {
    let bytes = capture("ceph16-osd-crc/conn0-c2s.bin");
    let body = Bytes::copy_from_slice(&bytes[Banner::LEN..]);
    // Everything but the last byte: all frames but the last, then Ok(None).
    let mut rx = BytesMut::from(&body[..body.len() - 1]);
    let mut dec = FrameDecoder::new(MAX_FRAME);
    let mut n = 0;
    while dec.decode(&mut rx).unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 4);
    // The OSD's data byte 'v' flipped: the epilogue crc of segment 3 catches it.
    let mut bad = bytes.clone();
    let at = bytes.len() - EPILOGUE_CRC_REV1_LEN - 3;
    assert_eq!(bad[at], b'v');
    bad[at] ^= 0x20;
    let mut rx = BytesMut::from(&bad[Banner::LEN..]);
    let mut dec = FrameDecoder::new(MAX_FRAME);
    let err = loop {
        match dec.decode(&mut rx) {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("corruption not detected"),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(err, FrameError::SegmentCrc { index: 3, .. }),
        "{err:?}"
    );
    // And a legacy peer is told apart from the first bytes.
    assert_eq!(Banner::decode(b"ceph v027"), Err(BannerError::Legacy));
}
