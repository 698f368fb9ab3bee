//! Shared by the frame decoder fuzz targets (included with `#[path]`): the owner loop that feeds a
//! `FrameDecoder` read by read and checks what it yields.

use bytes::BytesMut;
use msgr::proto::codec::{Frame, FrameDecoder, FrameError};

/// Feeds `dec` everything `reads` deliver; returns the frames and the error that stopped it, if any.
/// Checked: no frame is longer than `max_frame_len`; an error other than `Aborted` is fatal and sticky.
pub fn decode_reads(
    mut dec: FrameDecoder,
    max_frame_len: usize,
    reads: &mut dyn Iterator<Item = &[u8]>,
) -> (Vec<Frame>, Option<FrameError>) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for read in reads {
        buf.extend_from_slice(read);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(f)) => {
                    assert!(f.raw.len() <= max_frame_len);
                    frames.push(f);
                }
                Ok(None) => break,
                Err(FrameError::Aborted) => continue,
                Err(e) => {
                    assert!(e.is_fatal(), "{e}");
                    assert_eq!(dec.decode(&mut buf), Err(e.clone()));
                    return (frames, Some(e));
                }
            }
        }
    }
    (frames, None)
}
