//! `FrameDecoder` over arbitrary bytes, whole and in reads of every size pattern: both must yield the
//! same frames and the same final error, and every frame must survive a re-encode and decode.
#![no_main]

#[path = "frame_reads.rs"]
mod frame_reads;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use msgr::proto::codec::{Frame, FrameDecoder, FrameEncoder, FrameError};

/// Small enough that the fuzzer reaches the limit with short inputs.
const MAX_FRAME_LEN: usize = 64 << 10;

/// Decodes everything `reads` deliver; returns the frames and the error that stopped it, if any.
fn decode(reads: &mut dyn Iterator<Item = &[u8]>) -> (Vec<Frame>, Option<FrameError>) {
    frame_reads::decode_reads(FrameDecoder::new(MAX_FRAME_LEN), MAX_FRAME_LEN, reads)
}

fuzz_target!(|data: &[u8]| {
    let (whole, whole_err) = decode(&mut std::iter::once(data));
    let read = 1 + usize::from(data.first().copied().unwrap_or(0)) % 61;
    let (chunked, chunked_err) = decode(&mut data.chunks(read));
    assert_eq!(whole.len(), chunked.len());
    assert_eq!(whole_err, chunked_err);
    let mut enc = FrameEncoder::new();
    for (a, b) in whole.iter().zip(&chunked) {
        assert_eq!(a, b);
        let segs = a.to_segments();
        let mut out: Vec<Bytes> = Vec::new();
        enc.encode(a.tag, &segs[..a.num_segments], &mut out)
            .unwrap();
        let mut rx = BytesMut::from(&out.concat()[..]);
        let again = FrameDecoder::new(MAX_FRAME_LEN)
            .decode(&mut rx)
            .unwrap()
            .expect("a re-encoded frame decodes");
        assert_eq!(
            (again.tag, &again.segments, again.num_segments),
            (a.tag, &a.segments, a.num_segments)
        );
        assert!(rx.is_empty());
    }
});
