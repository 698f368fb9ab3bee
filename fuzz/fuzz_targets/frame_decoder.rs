//! `FrameDecoder` over arbitrary bytes, whole and in reads of every size pattern: both must yield the
//! same frames and the same final error, and every frame must survive a re-encode and decode.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use msgr::proto::frame::{Frame, FrameDecoder, FrameEncoder, FrameError};

/// Small enough that the fuzzer reaches the limit with short inputs.
const MAX_FRAME_LEN: usize = 64 << 10;

/// Decodes everything `reads` deliver; returns the frames and the error that stopped it, if any.
fn decode(reads: &mut dyn Iterator<Item = &[u8]>) -> (Vec<Frame>, Option<FrameError>) {
    let mut dec = FrameDecoder::new(MAX_FRAME_LEN);
    let mut rx = BytesMut::new();
    let mut frames = Vec::new();
    for read in reads {
        rx.extend_from_slice(read);
        loop {
            match dec.decode(&mut rx) {
                Ok(Some(f)) => {
                    assert!(f.raw.len() <= MAX_FRAME_LEN);
                    frames.push(f);
                }
                Ok(None) => break,
                Err(FrameError::Aborted) => continue,
                Err(e) => {
                    // Fatal errors are sticky.
                    assert_eq!(dec.decode(&mut rx), Err(e.clone()));
                    return (frames, Some(e));
                }
            }
        }
    }
    (frames, None)
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
