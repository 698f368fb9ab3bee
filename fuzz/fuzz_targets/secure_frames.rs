//! `FrameDecoder` in secure mode (AES-128-GCM, a fixed connection secret) over a stream the fuzzer
//! builds from records, sealed with the matching sender's key so the fuzzer gets past the tags:
//! - kind 0: a valid frame (tag, 1..4 segments of fuzz-chosen lengths and bytes), sealed here by an
//!   independent writer of the rev1 layout;
//! - kind 1: a hostile first block: 32 fuzz bytes as the preamble (crc fixed when asked) and 48 inline
//!   bytes, sealed; then fuzz bytes sealed as one more GCM message (lengths that disagree with the
//!   preamble, huge announced lengths, bad epilogues);
//! - kind 2: raw unsealed bytes; kind 3: a bit flip somewhere in what was built so far.
//!
//! Checked: no panic; whole and chunked decoding agree; fatal errors are sticky; no frame is longer
//! than the limit; and while the stream is untouched (no raw bytes, no flips, no hostile block yet),
//! every decoded frame is exactly the one sealed (a flip un-expects the frame it hits and the rest).
#![no_main]

#[path = "frame_reads.rs"]
mod frame_reads;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use msgr::proto::crc::{ceph_crc32c, PREAMBLE_SEED};
use msgr::proto::codec::secure::{session_ciphers, SecureTx, INLINE_LEN, TAG_LEN};
use msgr::proto::codec::{Frame, FrameDecoder, FrameError, Tag, PREAMBLE_LEN};

const MAX_FRAME_LEN: usize = 64 << 10;

fn secret() -> Vec<u8> {
    (0..64u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect()
}

fn pad16(n: usize) -> usize {
    n.div_ceil(16) * 16
}

fn seal(tx: &mut SecureTx, plain: &mut Vec<u8>, out: &mut Vec<u8>) {
    let tag = tx.seal(plain).expect("nonce space");
    out.extend_from_slice(plain);
    out.extend_from_slice(&tag);
}

fn preamble(tag: u8, lens: &[usize]) -> [u8; PREAMBLE_LEN] {
    let mut b = [0u8; PREAMBLE_LEN];
    b[0] = tag;
    b[1] = lens.len() as u8;
    for (i, &l) in lens.iter().enumerate() {
        b[2 + i * 6..6 + i * 6].copy_from_slice(&(l as u32).to_le_bytes());
        b[6 + i * 6..8 + i * 6].copy_from_slice(&8u16.to_le_bytes());
    }
    let crc = ceph_crc32c(PREAMBLE_SEED, &b[..PREAMBLE_LEN - 4]);
    b[PREAMBLE_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Seals a frame in rev1's secure layout: [preamble | inline 48] tag, [rest of seg 0] tag,
/// [segs 1.. padded | epilogue] tag.
fn seal_frame(tx: &mut SecureTx, tag: u8, segs: &[&[u8]], out: &mut Vec<u8>) {
    let lens: Vec<usize> = segs.iter().map(|s| s.len()).collect();
    let mut first = preamble(tag, &lens).to_vec();
    let inline = segs[0].len().min(INLINE_LEN);
    first.extend_from_slice(&segs[0][..inline]);
    first.resize(PREAMBLE_LEN + INLINE_LEN, 0);
    seal(tx, &mut first, out);
    if pad16(segs[0].len()) > INLINE_LEN {
        let mut rest = segs[0][inline..].to_vec();
        rest.resize(pad16(segs[0].len()) - INLINE_LEN, 0);
        seal(tx, &mut rest, out);
    }
    if segs.len() > 1 {
        let mut rest = Vec::new();
        for s in &segs[1..] {
            rest.extend_from_slice(s);
            rest.resize(pad16(rest.len()), 0);
        }
        rest.push(0x0e); // late_status: complete
        rest.resize(rest.len() + 15, 0);
        seal(tx, &mut rest, out);
    }
}

fn decode(reads: &mut dyn Iterator<Item = &[u8]>) -> (Vec<Frame>, Option<FrameError>) {
    let (_, rx) = session_ciphers(&secret(), true).unwrap();
    let mut dec = FrameDecoder::new(MAX_FRAME_LEN);
    dec.set_secure(rx);
    frame_reads::decode_reads(dec, MAX_FRAME_LEN, reads)
}

fuzz_target!(|data: &[u8]| {
    let (mut tx, _) = session_ciphers(&secret(), false).unwrap();
    let mut stream = Vec::new();
    // What each clean kind-0 frame must decode to, while the stream is untouched.
    let mut expected: Vec<(Tag, Vec<Bytes>, usize)> = Vec::new(); // + end offset
    let mut clean = true;
    let mut rest = data;
    while let Some((&kind, tail)) = rest.split_first() {
        let take = |tail: &[u8], n: usize| -> (Vec<u8>, usize) {
            let n = n.min(tail.len());
            (tail[..n].to_vec(), n)
        };
        match kind % 4 {
            0 => {
                // tag, segment count, then per segment a le16 length; bytes come from the input.
                let (hdr, used) = take(tail, 2);
                let mut at = used;
                let tag = hdr.first().copied().unwrap_or(1) % 21;
                let nseg = 1 + usize::from(hdr.get(1).copied().unwrap_or(0) % 4);
                let mut segs: Vec<Vec<u8>> = Vec::new();
                for _ in 0..nseg {
                    let (l, used) = take(&tail[at..], 2);
                    at += used;
                    let len = match l[..] {
                        [a, b] => usize::from(u16::from_le_bytes([a, b])) % 3000,
                        _ => 0,
                    };
                    let (bytes, used) = take(&tail[at..], len);
                    at += used;
                    segs.push(bytes);
                }
                // Ceph never sends an empty last segment beyond the first: keep those frames valid.
                while segs.len() > 1 && segs.last().is_some_and(|s| s.is_empty()) {
                    segs.pop();
                }
                let refs: Vec<&[u8]> = segs.iter().map(|s| &s[..]).collect();
                seal_frame(&mut tx, tag, &refs, &mut stream);
                match Tag::try_from(tag) {
                    Ok(t) if clean => expected.push((
                        t,
                        segs.into_iter().map(Bytes::from).collect(),
                        stream.len(),
                    )),
                    _ => clean = false,
                }
                rest = &tail[at..];
            }
            1 => {
                let (mut first, used) = take(tail, PREAMBLE_LEN + INLINE_LEN + 3);
                let fix_crc = first.pop().unwrap_or(0) & 1 == 1;
                let (n_lo, n_hi) = (first.pop().unwrap_or(0), first.pop().unwrap_or(0));
                first.resize(PREAMBLE_LEN + INLINE_LEN, 0);
                if fix_crc {
                    let crc = ceph_crc32c(PREAMBLE_SEED, &first[..PREAMBLE_LEN - 4]);
                    first[PREAMBLE_LEN - 4..PREAMBLE_LEN].copy_from_slice(&crc.to_le_bytes());
                }
                seal(&mut tx, &mut first, &mut stream);
                let n = usize::from(u16::from_le_bytes([n_lo, n_hi]));
                let (mut more, used2) = take(&tail[used..], n);
                if n > 0 {
                    more.resize(n.saturating_sub(TAG_LEN), 0);
                    seal(&mut tx, &mut more, &mut stream);
                }
                clean = false;
                rest = &tail[used + used2..];
            }
            2 => {
                let n = usize::from(tail.first().copied().unwrap_or(0));
                let (bytes, used) = take(&tail[1.min(tail.len())..], n);
                stream.extend_from_slice(&bytes);
                clean = false;
                rest = &tail[(1 + used).min(tail.len())..];
            }
            _ => {
                let (pos, used) = take(tail, 3);
                if !stream.is_empty() && pos.len() == 3 {
                    let at = usize::from(u16::from_le_bytes([pos[0], pos[1]])) % stream.len();
                    stream[at] ^= 1 << (pos[2] % 8);
                    clean = false;
                    // The flipped frame and everything after it are no longer expected.
                    expected.retain(|e| e.2 <= at);
                }
                rest = &tail[used..];
            }
        }
    }
    let (whole, whole_err) = decode(&mut std::iter::once(&stream[..]));
    let read = 1 + usize::from(data.first().copied().unwrap_or(0)) % 97;
    let (chunked, chunked_err) = decode(&mut stream.chunks(read));
    assert_eq!(whole_err, chunked_err);
    assert_eq!(whole.len(), chunked.len());
    for (a, b) in whole.iter().zip(&chunked) {
        assert_eq!(a, b);
    }
    for (f, (tag, segs, _)) in whole.iter().zip(&expected) {
        assert_eq!(f.tag, *tag);
        assert_eq!(f.num_segments, segs.len());
        assert_eq!(&f.segments[..segs.len()], &segs[..]);
    }
    // Clean frames come first in the stream and all decode; a later hostile record may stop it.
    assert!(
        whole.len() >= expected.len(),
        "a clean sealed frame did not decode: {whole_err:?}"
    );
    if clean {
        assert_eq!((whole.len(), whole_err), (expected.len(), None));
    }
});
