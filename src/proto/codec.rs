//! msgr2 frame layout (rev1, "msgr2.1"): preamble, segments, crcs and epilogue.
//!
//! Owns the on-wire framing only: segments are opaque bytes here (control-frame payloads live in
//! [`super::control`], messages in [`super::message`]). Layout in crc mode, as Ceph's `FrameAssembler`
//! (src/msg/async/frames_v2.{h,cc}) writes and checks it — the code, not doc/dev/msgr2.rst, is the reference:
//!
//! ```text
//! preamble (32 bytes):
//!   tag u8 | num_segments u8 | 4 x { length le32, alignment le16 } | flags u8 | reserved u8 | crc le32
//!   crc = ceph_crc32c(0, first 28 bytes); descriptors past num_segments are zero
//! segment 0 (if non-empty) | its crc le32 = ceph_crc32c(0xffffffff, segment 0)
//! segments 1..num_segments (empty ones take no bytes)
//! epilogue, only if num_segments > 1 (13 bytes):
//!   late_status u8 (low nibble 0x0e complete / 0x01 aborted) | 3 x crc le32 of segments 1..3
//! ```
//!
//! `num_segments` is the index of the last non-empty segment plus one, and at least 1: trailing empty
//! segments are dropped, empty ones in the middle stay (an OSD op's empty middle segment has crc
//! `0xffffffff`). A frame whose only segment is empty is the bare preamble.
//!
//! Invariants: decoding never panics and never allocates by a wire length before that length passed
//! the caller's `max_frame_len`; decoded segments are zero-copy slices of the received bytes; encoding
//! never copies a segment longer than [`COPY_SEGMENT_MAX`] (it goes out as a gather list of [`Bytes`]);
//! the frame's bytes on the wire are the same whichever segments were copied.
//! Secure mode (AES-128-GCM, [`FrameMode::Secure`]) lives in [`secure`]: the same preamble and
//! segments, encrypted and authenticated in rev1's layout; the codec switches to it after AUTH_DONE
//! ([`FrameEncoder::set_secure`], [`FrameDecoder::set_secure`]).

pub mod secure;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use secure::{SecureRx, SecureTx};

use super::crc::{ceph_crc32c, PREAMBLE_SEED, SEGMENT_SEED};
use super::message::{MsgHeader2, SEGMENT_ALIGNMENTS};

/// Segments a frame can carry (frames_v2.h `MAX_NUM_SEGMENTS`).
pub const MAX_NUM_SEGMENTS: usize = 4;
/// Size of the preamble block (`sizeof(preamble_block_t)`).
pub const PREAMBLE_LEN: usize = 32;
/// Size of a crc on the wire (`FRAME_CRC_SIZE`).
pub const CRC_LEN: usize = 4;
/// Size of the rev1 crc-mode epilogue (`sizeof(epilogue_crc_rev1_block_t)`): late_status + 3 crcs.
pub const EPILOGUE_CRC_REV1_LEN: usize = 1 + (MAX_NUM_SEGMENTS - 1) * CRC_LEN;
/// Alignment Ceph announces for control payloads and message header/front/middle (`sizeof(void*)`).
pub const DEFAULT_ALIGNMENT: u16 = 8;
/// Alignment Ceph announces for a message's data segment (`segment_t::PAGE_SIZE_ALIGNMENT`).
pub const PAGE_ALIGNMENT: u16 = 4096;

/// `late_status` low nibble: the sender aborted the frame after its first segment; drop it.
pub const LATE_STATUS_ABORTED: u8 = 0x1;
/// `late_status` low nibble: the frame is complete (what every sender writes today).
pub const LATE_STATUS_COMPLETE: u8 = 0xe;
/// Mask of the `late_status` nibble that must be [`LATE_STATUS_COMPLETE`] or [`LATE_STATUS_ABORTED`].
/// The high nibble is reserved and, as in Ceph, not checked.
pub const LATE_STATUS_ABORTED_MASK: u8 = 0xf;

/// Preamble `flags` bit: segments are compressed (`FRAME_EARLY_DATA_COMPRESSED`). We never negotiate
/// compression, so a frame carrying it is refused.
pub const FLAG_COMPRESSED: u8 = 1 << 0;

/// Offset of the preamble crc (everything before it is covered by it).
const PREAMBLE_CRC_OFFSET: usize = PREAMBLE_LEN - CRC_LEN;
/// Offset of the `flags` byte in the preamble.
const PREAMBLE_FLAGS_OFFSET: usize = 2 + MAX_NUM_SEGMENTS * 6;

/// A frame's tag: the first byte of its preamble (frames_v2.h `Tag`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Tag {
    Hello = 1,
    AuthRequest = 2,
    AuthBadMethod = 3,
    AuthReplyMore = 4,
    AuthRequestMore = 5,
    AuthDone = 6,
    AuthSignature = 7,
    ClientIdent = 8,
    ServerIdent = 9,
    IdentMissingFeatures = 10,
    SessionReconnect = 11,
    SessionReset = 12,
    SessionRetry = 13,
    SessionRetryGlobal = 14,
    SessionReconnectOk = 15,
    Wait = 16,
    Message = 17,
    Keepalive2 = 18,
    Keepalive2Ack = 19,
    Ack = 20,
    CompressionRequest = 21,
    CompressionDone = 22,
}

impl TryFrom<u8> for Tag {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        use Tag::*;
        Ok(match v {
            1 => Hello,
            2 => AuthRequest,
            3 => AuthBadMethod,
            4 => AuthReplyMore,
            5 => AuthRequestMore,
            6 => AuthDone,
            7 => AuthSignature,
            8 => ClientIdent,
            9 => ServerIdent,
            10 => IdentMissingFeatures,
            11 => SessionReconnect,
            12 => SessionReset,
            13 => SessionRetry,
            14 => SessionRetryGlobal,
            15 => SessionReconnectOk,
            16 => Wait,
            17 => Message,
            18 => Keepalive2,
            19 => Keepalive2Ack,
            20 => Ack,
            21 => CompressionRequest,
            22 => CompressionDone,
            other => return Err(other),
        })
    }
}

impl Tag {
    /// The tag's wire byte.
    #[inline]
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// How frames are protected on the wire. Chosen by AUTH_DONE's connection mode; both directions use
/// the same mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FrameMode {
    /// msgr2.1 crc mode: crc32c over the preamble, each segment, no encryption.
    #[default]
    Crc,
    /// msgr2.1 secure mode: AES-128-GCM over preamble, segments and epilogue.
    Secure,
}

/// One segment handed to the encoder: its bytes and the alignment announced for it in the preamble
/// (a hint for the receiver's buffer allocation; Ceph uses [`DEFAULT_ALIGNMENT`] and, for message
/// data, [`PAGE_ALIGNMENT`]).
#[derive(Clone, Debug)]
pub struct Segment {
    pub data: Bytes,
    pub align: u16,
}

impl Segment {
    pub fn new(data: impl Into<Bytes>, align: u16) -> Self {
        Segment {
            data: data.into(),
            align,
        }
    }

    /// A segment with [`DEFAULT_ALIGNMENT`].
    pub fn default_aligned(data: impl Into<Bytes>) -> Self {
        Segment::new(data, DEFAULT_ALIGNMENT)
    }
}

/// A received frame, every crc verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub tag: Tag,
    /// Segment contents, zero-copy slices of the received frame; those at or past `num_segments` are empty.
    pub segments: [Bytes; MAX_NUM_SEGMENTS],
    /// Alignments announced in the preamble; 0 at or past `num_segments`.
    pub aligns: [u16; MAX_NUM_SEGMENTS],
    /// Segments announced in the preamble, 1..=[`MAX_NUM_SEGMENTS`].
    pub num_segments: usize,
    /// The complete frame as it was on the wire (preamble to epilogue), for the AUTH_SIGNATURE transcript;
    /// empty in crc mode once the decoder no longer keeps it ([`FrameDecoder::keep_raw`]).
    pub raw: Bytes,
}

impl Frame {
    /// Segment 0: a control frame's payload, a message frame's header.
    #[inline]
    pub fn payload(&self) -> &Bytes {
        &self.segments[0]
    }

    /// The frame's segments as the encoder takes them (re-encoding them reproduces `raw`).
    pub fn to_segments(&self) -> [Segment; MAX_NUM_SEGMENTS] {
        std::array::from_fn(|i| Segment::new(self.segments[i].clone(), self.aligns[i]))
    }
}

/// Why a frame could not be decoded or encoded.
///
/// Every decode error except [`FrameError::Aborted`] is fatal for the connection: the decoder keeps
/// returning it. The last two variants are caller bugs on the encode side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("bad preamble crc: calculated {got:#010x}, expected {expected:#010x}")]
    PreambleCrc { expected: u32, got: u32 },
    #[error("bad crc of segment {index}: calculated {got:#010x}, expected {expected:#010x}")]
    SegmentCrc {
        index: usize,
        expected: u32,
        got: u32,
    },
    #[error("unknown frame tag {0}")]
    BadTag(u8),
    #[error("bad number of segments {0}")]
    BadSegmentCount(u8),
    #[error("last of {0} segments is empty")]
    EmptyLastSegment(u8),
    #[error("frame is compressed but compression was not negotiated")]
    Compressed,
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: u64, max: usize },
    /// The sender aborted this frame (late_status ABORTED). Not fatal: the frame was consumed and
    /// must be dropped; decoding continues with the next frame.
    #[error("frame aborted by the sender")]
    Aborted,
    #[error("bad epilogue late_status {0:#04x}")]
    BadEpilogue(u8),
    /// A secure frame's GCM tag did not verify: tampered, replayed, or encrypted with another key.
    #[error("secure frame failed authentication (bad AES-GCM tag)")]
    AuthFailed,
    /// The AES-GCM nonce came back to its initial value: msgr2 has no rekeying, the connection ends.
    #[error("AES-GCM nonces exhausted")]
    NonceExhausted,
    /// The connection secret is too short for secure mode.
    #[error("connection secret of {0} bytes is too short for secure mode (need 40)")]
    BadConnectionSecret(usize),
    /// Encoder misuse: a frame has 1..=4 segments.
    #[error("cannot encode a frame of {0} segments")]
    InvalidSegmentCount(usize),
    /// Encoder misuse: a segment length must fit the preamble's le32.
    #[error("segment {index} of {len} bytes is longer than u32::MAX")]
    SegmentTooLong { index: usize, len: usize },
}

impl FrameError {
    /// Whether the connection must be faulted. Only an aborted frame is survivable.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, FrameError::Aborted)
    }
}

/// A parsed and verified preamble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Preamble {
    tag: Tag,
    num_segments: usize,
    lens: [u32; MAX_NUM_SEGMENTS],
    aligns: [u16; MAX_NUM_SEGMENTS],
}

#[inline]
fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

#[inline]
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Preamble {
    /// Parses and checks a preamble as Ceph's `disassemble_preamble` does: crc first, then the segment
    /// count (1..=4) and a non-empty last segment; plus what Ceph checks later (a known tag) or asserts
    /// (no compression without negotiation). The reserved byte and other flag bits are ignored.
    fn parse(b: &[u8; PREAMBLE_LEN]) -> Result<Preamble, FrameError> {
        let expected = le32(b, PREAMBLE_CRC_OFFSET);
        let got = ceph_crc32c(PREAMBLE_SEED, &b[..PREAMBLE_CRC_OFFSET]);
        if got != expected {
            return Err(FrameError::PreambleCrc { expected, got });
        }
        let count = b[1];
        if count == 0 || usize::from(count) > MAX_NUM_SEGMENTS {
            return Err(FrameError::BadSegmentCount(count));
        }
        let num_segments = usize::from(count);
        let mut lens = [0u32; MAX_NUM_SEGMENTS];
        let mut aligns = [0u16; MAX_NUM_SEGMENTS];
        for i in 0..num_segments {
            lens[i] = le32(b, 2 + i * 6);
            aligns[i] = le16(b, 2 + i * 6 + 4);
        }
        if num_segments > 1 && lens[num_segments - 1] == 0 {
            return Err(FrameError::EmptyLastSegment(count));
        }
        if b[PREAMBLE_FLAGS_OFFSET] & FLAG_COMPRESSED != 0 {
            return Err(FrameError::Compressed);
        }
        let tag = Tag::try_from(b[0]).map_err(FrameError::BadTag)?;
        Ok(Preamble {
            tag,
            num_segments,
            lens,
            aligns,
        })
    }

    /// Bytes of segment 0 on the wire including its crc (crc mode: none when it is empty).
    fn first_segment_onwire_len(&self) -> u64 {
        match self.lens[0] {
            0 => 0,
            n => u64::from(n) + CRC_LEN as u64,
        }
    }

    fn epilogue_len(&self) -> u64 {
        if self.num_segments > 1 {
            EPILOGUE_CRC_REV1_LEN as u64
        } else {
            0
        }
    }

    /// Secure mode: bytes on the wire after the first 96-byte block (u64, cannot overflow).
    fn secure_rest_len(&self) -> u64 {
        let tag = secure::TAG_LEN as u64;
        let p0 = secure::padded(u64::from(self.lens[0]));
        let mut n = if p0 > secure::INLINE_LEN as u64 {
            p0 - secure::INLINE_LEN as u64 + tag
        } else {
            0
        };
        if self.num_segments > 1 {
            n += self.lens[1..self.num_segments]
                .iter()
                .map(|&l| secure::padded(u64::from(l)))
                .sum::<u64>()
                + secure::EPILOGUE_LEN as u64
                + tag;
        }
        n
    }

    /// The whole frame's length on the wire (u64: four u32 lengths cannot overflow it).
    fn onwire_len(&self) -> u64 {
        let rest: u64 = self.lens[1..self.num_segments]
            .iter()
            .map(|&l| u64::from(l))
            .sum();
        PREAMBLE_LEN as u64 + self.first_segment_onwire_len() + rest + self.epilogue_len()
    }
}

/// Writes a preamble for segments of the given lengths and alignments into `out`.
fn put_preamble(
    out: &mut BytesMut,
    tag: Tag,
    lens: &[u32; MAX_NUM_SEGMENTS],
    aligns: &[u16; MAX_NUM_SEGMENTS],
    num_segments: usize,
) {
    out.put_slice(&preamble_bytes(tag, lens, aligns, num_segments));
}

/// A preamble for segments of the given lengths and alignments, crc included.
fn preamble_bytes(
    tag: Tag,
    lens: &[u32; MAX_NUM_SEGMENTS],
    aligns: &[u16; MAX_NUM_SEGMENTS],
    num_segments: usize,
) -> [u8; PREAMBLE_LEN] {
    let mut b = [0u8; PREAMBLE_LEN];
    b[0] = tag.as_u8();
    // num_segments is 1..=4, checked by the callers.
    b[1] = num_segments as u8;
    for i in 0..num_segments {
        b[2 + i * 6..6 + i * 6].copy_from_slice(&lens[i].to_le_bytes());
        b[6 + i * 6..8 + i * 6].copy_from_slice(&aligns[i].to_le_bytes());
    }
    // flags and reserved stay zero.
    let crc = ceph_crc32c(PREAMBLE_SEED, &b[..PREAMBLE_CRC_OFFSET]);
    b[PREAMBLE_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// `num_segments` for a list of segment lengths: trailing empty segments dropped, at least 1.
fn count_segments(lens: impl DoubleEndedIterator<Item = usize> + ExactSizeIterator) -> usize {
    let n = lens.len();
    lens.rev()
        .position(|l| l != 0)
        .map_or(1, |from_end| n - from_end)
}

/// Turns a byte stream into [`Frame`]s.
///
/// Call [`FrameDecoder::decode`] whenever bytes were appended to the receive buffer, until it returns
/// `Ok(None)`. A preamble is verified once and remembered, so waiting for a large frame costs O(1)
/// per call; the frame's crcs are checked once it is complete.
#[derive(Debug)]
pub struct FrameDecoder {
    max_frame_len: usize,
    /// Secure mode's receiving cipher; None in crc mode. Boxed: a crc-mode connection does not carry
    /// the key schedule's size.
    secure: Option<Box<SecureRx>>,
    /// Preamble of the frame being waited for, with its on-wire length (≤ `max_frame_len`).
    pending: Option<(Preamble, usize)>,
    /// Secure mode: the decrypted inline part of segment 0 of the pending frame.
    inline: [u8; secure::INLINE_LEN],
    /// The fatal error that stopped this decoder, returned again by every later call.
    failed: Option<FrameError>,
    /// Whether crc-mode frames keep their wire bytes in [`Frame::raw`] (for the transcript).
    keep_raw: bool,
}

impl FrameDecoder {
    /// A crc-mode decoder refusing frames longer than `max_frame_len` bytes on the wire.
    pub fn new(max_frame_len: usize) -> Self {
        FrameDecoder {
            max_frame_len,
            secure: None,
            pending: None,
            inline: [0; secure::INLINE_LEN],
            failed: None,
            keep_raw: true,
        }
    }

    /// Whether crc-mode frames from now on keep their wire bytes in [`Frame::raw`] (the default; the
    /// pre-auth transcript needs them). Without, `raw` is empty and a frame costs one reference count
    /// less on its receive buffer.
    pub fn keep_raw(&mut self, keep: bool) {
        self.keep_raw = keep;
    }

    /// Switch to secure mode: every frame from now on is decrypted and authenticated with `rx`.
    pub fn set_secure(&mut self, rx: SecureRx) {
        self.secure = Some(Box::new(rx));
    }

    pub fn mode(&self) -> FrameMode {
        if self.secure.is_some() {
            FrameMode::Secure
        } else {
            FrameMode::Crc
        }
    }

    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Change the limit for frames whose preamble has not arrived yet (a connection raises it once
    /// the peer is authenticated). The decoder never reserves more than the limit it enforces.
    pub fn set_max_frame_len(&mut self, max_frame_len: usize) {
        self.max_frame_len = max_frame_len;
    }

    /// Forgets any partial frame and error (for a new connection).
    pub fn reset(&mut self) {
        self.pending = None;
        self.failed = None;
        self.keep_raw = true;
    }

    /// Takes the next complete frame off the front of `rx`.
    ///
    /// `Ok(None)`: more bytes are needed and nothing was consumed (once the preamble is known, `rx`
    /// has been reserved to hold the whole frame). `Ok(Some)`: the frame's bytes were split off `rx`.
    /// `Err(Aborted)`: the frame was consumed and must be dropped; call again. Any other error is
    /// fatal and sticky.
    pub fn decode(&mut self, rx: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.decode_inner(rx);
        if let Err(e) = &result {
            if e.is_fatal() {
                self.failed = Some(e.clone());
            }
        }
        result
    }

    fn decode_inner(&mut self, rx: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let (preamble, frame_len) = match self.pending {
            Some(p) => p,
            None => {
                let (preamble, len) = match self.secure.as_mut() {
                    None => {
                        let Some(head) = rx.first_chunk::<PREAMBLE_LEN>() else {
                            return Ok(None);
                        };
                        let preamble = Preamble::parse(head)?;
                        (preamble, preamble.onwire_len())
                    }
                    Some(cipher) => {
                        let Some(head) = rx.first_chunk::<{ secure::FIRST_BLOCK_LEN }>() else {
                            return Ok(None);
                        };
                        let mut block = [0u8; secure::PREAMBLE_WITH_INLINE];
                        block.copy_from_slice(&head[..secure::PREAMBLE_WITH_INLINE]);
                        cipher.open(&mut block, &head[secure::PREAMBLE_WITH_INLINE..])?;
                        let mut p = [0u8; PREAMBLE_LEN];
                        p.copy_from_slice(&block[..PREAMBLE_LEN]);
                        let preamble = Preamble::parse(&p)?;
                        self.inline.copy_from_slice(&block[PREAMBLE_LEN..]);
                        (
                            preamble,
                            secure::FIRST_BLOCK_LEN as u64 + preamble.secure_rest_len(),
                        )
                    }
                };
                let frame_len = match usize::try_from(len) {
                    Ok(l) if l <= self.max_frame_len => l,
                    _ => {
                        return Err(FrameError::TooLarge {
                            len,
                            max: self.max_frame_len,
                        })
                    }
                };
                rx.reserve(frame_len.saturating_sub(rx.len()));
                self.pending = Some((preamble, frame_len));
                (preamble, frame_len)
            }
        };
        if rx.len() < frame_len {
            return Ok(None);
        }
        self.pending = None;
        let raw = rx.split_to(frame_len).freeze();
        match self.secure.as_mut() {
            None => disassemble_crc(&preamble, raw, self.keep_raw).map(Some),
            Some(cipher) => disassemble_secure(&preamble, &self.inline, raw, cipher).map(Some),
        }
    }
}

/// Decrypts the rest of a secure frame whose first block was opened already (`inline` holds segment 0's
/// first 48 bytes), checking each tag, in Ceph's order (segment 0's rest, then segments 1.. with the
/// epilogue).
fn disassemble_secure(
    p: &Preamble,
    inline: &[u8; secure::INLINE_LEN],
    raw: Bytes,
    cipher: &mut SecureRx,
) -> Result<Frame, FrameError> {
    let tag_len = secure::TAG_LEN;
    // All lengths below were summed into raw.len() by secure_rest_len (checked against max_frame_len).
    let len0 = p.lens[0] as usize;
    let p0 = secure::padded(len0 as u64) as usize;
    let mut at = secure::FIRST_BLOCK_LEN;
    let mut plain = BytesMut::with_capacity(raw.len());
    if p0 > secure::INLINE_LEN {
        let n = p0 - secure::INLINE_LEN;
        plain.extend_from_slice(inline);
        plain.extend_from_slice(&raw[at..at + n]);
        cipher.open(
            &mut plain[secure::INLINE_LEN..],
            &raw[at + n..at + n + tag_len],
        )?;
        at += n + tag_len;
        plain.truncate(len0);
    } else {
        plain.extend_from_slice(&inline[..len0]);
    }
    let mut segments: [Bytes; MAX_NUM_SEGMENTS] = Default::default();
    let seg0 = plain.split().freeze();
    segments[0] = seg0;
    if p.num_segments > 1 {
        let n = raw.len() - at - tag_len;
        plain.extend_from_slice(&raw[at..at + n]);
        cipher.open(&mut plain[..], &raw[at + n..])?;
        let rest = plain.freeze();
        let mut off = 0;
        for (i, seg) in segments.iter_mut().enumerate().take(p.num_segments).skip(1) {
            let len = p.lens[i] as usize;
            *seg = rest.slice(off..off + len);
            off += secure::padded(len as u64) as usize;
        }
        let late_status = rest[off];
        match late_status & LATE_STATUS_ABORTED_MASK {
            LATE_STATUS_COMPLETE => {}
            LATE_STATUS_ABORTED => return Err(FrameError::Aborted),
            _ => return Err(FrameError::BadEpilogue(late_status)),
        }
    }
    let mut aligns = [0u16; MAX_NUM_SEGMENTS];
    aligns[..p.num_segments].copy_from_slice(&p.aligns[..p.num_segments]);
    Ok(Frame {
        tag: p.tag,
        segments,
        aligns,
        num_segments: p.num_segments,
        raw,
    })
}

/// Slices a complete crc-mode frame into its segments and checks every crc and the late status, in
/// Ceph's order (segment 0, segments 1.., late_status). Without `keep_raw` the frame's `raw` is empty
/// and it costs one reference count less.
fn disassemble_crc(p: &Preamble, mut raw: Bytes, keep_raw: bool) -> Result<Frame, FrameError> {
    // Lengths below sum to raw.len() (checked by onwire_len against max_frame_len, which fits usize).
    let mut ranges = [(0usize, 0usize); MAX_NUM_SEGMENTS];
    let mut at = PREAMBLE_LEN;
    let len0 = p.lens[0] as usize;
    if len0 > 0 {
        ranges[0] = (at, at + len0);
        at += len0;
        check_crc(0, &raw[ranges[0].0..ranges[0].1], le32(&raw, at))?;
        at += CRC_LEN;
    }
    for (i, range) in ranges.iter_mut().enumerate().take(p.num_segments).skip(1) {
        let len = p.lens[i] as usize;
        *range = (at, at + len);
        at += len;
    }
    if p.num_segments > 1 {
        let epilogue = &raw[at..at + EPILOGUE_CRC_REV1_LEN];
        for (i, &(from, to)) in ranges.iter().enumerate().take(p.num_segments).skip(1) {
            check_crc(i, &raw[from..to], le32(epilogue, 1 + (i - 1) * CRC_LEN))?;
        }
        let late_status = epilogue[0];
        match late_status & LATE_STATUS_ABORTED_MASK {
            LATE_STATUS_COMPLETE => {}
            LATE_STATUS_ABORTED => return Err(FrameError::Aborted),
            _ => return Err(FrameError::BadEpilogue(late_status)),
        }
    }
    // Without keep_raw the last non-empty segment is `raw` itself, cut down; the others share it.
    let last = ranges.iter().rposition(|&(from, to)| to > from);
    let mut segments: [Bytes; MAX_NUM_SEGMENTS] = Default::default();
    for (i, (seg, &(from, to))) in segments.iter_mut().zip(&ranges).enumerate() {
        if keep_raw || Some(i) != last {
            *seg = raw.slice(from..to);
        }
    }
    if !keep_raw {
        let mut rest = std::mem::take(&mut raw);
        if let Some(i) = last {
            let (from, to) = ranges[i];
            rest.truncate(to);
            rest.advance(from);
            segments[i] = rest;
        }
    }
    let mut aligns = [0u16; MAX_NUM_SEGMENTS];
    aligns[..p.num_segments].copy_from_slice(&p.aligns[..p.num_segments]);
    Ok(Frame {
        tag: p.tag,
        segments,
        aligns,
        num_segments: p.num_segments,
        raw,
    })
}

fn check_crc(index: usize, data: &[u8], expected: u32) -> Result<(), FrameError> {
    let got = ceph_crc32c(SEGMENT_SEED, data);
    if got == expected {
        Ok(())
    } else {
        Err(FrameError::SegmentCrc {
            index,
            expected,
            got,
        })
    }
}

/// Size of each scratch block the encoder writes preambles, crcs, epilogues and small segments into.
const SCRATCH_BLOCK: usize = 16 * 1024;
/// The first scratch block: enough for the handshake's frames.
const FIRST_SCRATCH_BLOCK: usize = 1024;
/// Segments up to this many bytes are copied into the scratch buffer next to their preamble and crc;
/// longer ones go out by reference. A copy this small costs less than the `Bytes` handle (refcount,
/// iovec) it saves, and consecutive small frames leave as one contiguous piece.
pub const COPY_SEGMENT_MAX: usize = 1024;

/// Turns segments into on-wire frames, as gather lists of [`Bytes`].
///
/// Segments longer than [`COPY_SEGMENT_MAX`] are never copied: they are pushed as they are. Everything
/// else — preambles, crcs, epilogues and small segments — is written into one scratch buffer owned by
/// the encoder, so a run of small frames becomes one contiguous [`Bytes`] and encoding allocates only
/// when a scratch block is used up (reusing it in place once every piece carved from it was dropped).
///
/// [`append`](FrameEncoder::append) and [`append_message`](FrameEncoder::append_message) may keep the
/// tail of what they wrote in the scratch buffer (so the next small frame joins it);
/// [`flush`](FrameEncoder::flush) hands it out. [`encode`](FrameEncoder::encode) and
/// [`encode_control`](FrameEncoder::encode_control) flush before returning.
#[derive(Debug)]
pub struct FrameEncoder {
    /// Secure mode's sending cipher; None in crc mode. Boxed, as the decoder's.
    secure: Option<Box<SecureTx>>,
    /// Bytes written but not handed out yet (they follow everything already in the caller's list).
    scratch: BytesMut,
}

impl Default for FrameEncoder {
    fn default() -> Self {
        FrameEncoder::new()
    }
}

impl FrameEncoder {
    /// A crc-mode encoder.
    pub fn new() -> Self {
        FrameEncoder {
            secure: None,
            // Allocated on first use: a handshake needs only a small block.
            scratch: BytesMut::new(),
        }
    }

    /// Switch to secure mode: every frame from now on is encrypted with `tx`.
    pub fn set_secure(&mut self, tx: SecureTx) {
        self.secure = Some(Box::new(tx));
    }

    pub fn mode(&self) -> FrameMode {
        if self.secure.is_some() {
            FrameMode::Secure
        } else {
            FrameMode::Crc
        }
    }

    /// Secure mode: the whole frame as one buffer, encrypted in place region by region.
    fn encode_secure(
        &mut self,
        tag: Tag,
        datas: &[&[u8]],
        aligns: &[u16; MAX_NUM_SEGMENTS],
        out: &mut Vec<Bytes>,
    ) -> Result<(), FrameError> {
        let Some(cipher) = self.secure.as_mut() else {
            return Err(FrameError::BadConnectionSecret(0));
        };
        let mut lens = [0u32; MAX_NUM_SEGMENTS];
        for (i, d) in datas.iter().enumerate() {
            lens[i] = u32::try_from(d.len()).map_err(|_| FrameError::SegmentTooLong {
                index: i,
                len: d.len(),
            })?;
        }
        let num_segments = count_segments(datas.iter().map(|d| d.len()));
        let p = Preamble {
            tag,
            num_segments,
            lens,
            aligns: *aligns,
        };
        let total = secure::FIRST_BLOCK_LEN as u64 + p.secure_rest_len();
        let total = usize::try_from(total).map_err(|_| FrameError::TooLarge {
            len: total,
            max: usize::MAX,
        })?;
        let mut buf = BytesMut::zeroed(total);
        buf[..PREAMBLE_LEN].copy_from_slice(&preamble_bytes(tag, &lens, aligns, num_segments));
        let first = datas[0];
        let inline = first.len().min(secure::INLINE_LEN);
        buf[PREAMBLE_LEN..PREAMBLE_LEN + inline].copy_from_slice(&first[..inline]);
        let t = cipher.seal(&mut buf[..secure::PREAMBLE_WITH_INLINE])?;
        buf[secure::PREAMBLE_WITH_INLINE..secure::FIRST_BLOCK_LEN].copy_from_slice(&t);
        let mut at = secure::FIRST_BLOCK_LEN;
        let p0 = secure::padded(first.len() as u64) as usize;
        if p0 > secure::INLINE_LEN {
            let n = p0 - secure::INLINE_LEN;
            buf[at..at + first.len() - inline].copy_from_slice(&first[inline..]);
            let t = cipher.seal(&mut buf[at..at + n])?;
            buf[at + n..at + n + secure::TAG_LEN].copy_from_slice(&t);
            at += n + secure::TAG_LEN;
        }
        if num_segments > 1 {
            let start = at;
            for d in &datas[1..num_segments] {
                buf[at..at + d.len()].copy_from_slice(d);
                at += secure::padded(d.len() as u64) as usize;
            }
            buf[at] = LATE_STATUS_COMPLETE;
            at += secure::EPILOGUE_LEN;
            let t = cipher.seal(&mut buf[start..at])?;
            buf[at..at + secure::TAG_LEN].copy_from_slice(&t);
        }
        out.push(buf.freeze());
        Ok(())
    }

    /// Makes room for `n` more bytes in the scratch buffer. A large pending run is handed out first,
    /// so that pieces stay around a block and growing never copies much.
    fn scratch_room(&mut self, n: usize, out: &mut Vec<Bytes>) {
        if self.scratch.capacity() - self.scratch.len() < n {
            self.flush(out);
            let block = if self.scratch.capacity() == 0 {
                FIRST_SCRATCH_BLOCK
            } else {
                SCRATCH_BLOCK
            };
            self.scratch.reserve(n.max(block));
        }
    }

    /// Gives the scratch block back to the allocator when nothing waits in it (a quiet connection); the
    /// next frame allocates a new one.
    pub fn release_scratch(&mut self) {
        if self.scratch.is_empty() {
            self.scratch = BytesMut::new();
        }
    }

    /// Capacity of the scratch block in use (0 when released or not allocated yet).
    pub fn scratch_capacity(&self) -> usize {
        self.scratch.capacity()
    }

    /// Whether bytes are waiting for [`flush`](FrameEncoder::flush).
    pub fn has_pending(&self) -> bool {
        !self.scratch.is_empty()
    }

    /// Hands out what earlier calls left in the scratch buffer.
    pub fn flush(&mut self, out: &mut Vec<Bytes>) {
        if !self.scratch.is_empty() {
            out.push(self.scratch.split().freeze());
        }
    }

    /// Writes `data` after what is pending: copied if small, else pushed by reference.
    fn put_segment(&mut self, data: &Bytes, out: &mut Vec<Bytes>) {
        if data.len() <= COPY_SEGMENT_MAX {
            self.scratch.put_slice(data);
        } else {
            self.flush(out);
            out.push(data.clone());
        }
    }

    /// Appends the frame made of `segments` (1..=4; trailing empty ones are dropped as Ceph does) to
    /// `out` and flushes: preamble, segment 0, its crc, the other non-empty segments, the epilogue.
    pub fn encode(
        &mut self,
        tag: Tag,
        segments: &[Segment],
        out: &mut Vec<Bytes>,
    ) -> Result<(), FrameError> {
        self.append(tag, segments, out)?;
        self.flush(out);
        Ok(())
    }

    /// [`encode`](FrameEncoder::encode) without the flush: the frame's tail may stay pending.
    pub fn append(
        &mut self,
        tag: Tag,
        segments: &[Segment],
        out: &mut Vec<Bytes>,
    ) -> Result<(), FrameError> {
        if segments.is_empty() || segments.len() > MAX_NUM_SEGMENTS {
            return Err(FrameError::InvalidSegmentCount(segments.len()));
        }
        let mut lens = [0u32; MAX_NUM_SEGMENTS];
        for (i, s) in segments.iter().enumerate() {
            lens[i] = u32::try_from(s.data.len()).map_err(|_| FrameError::SegmentTooLong {
                index: i,
                len: s.data.len(),
            })?;
        }
        let num_segments = count_segments(segments.iter().map(|s| s.data.len()));
        let mut aligns = [0u16; MAX_NUM_SEGMENTS];
        for (a, s) in aligns.iter_mut().zip(&segments[..num_segments]) {
            *a = s.align;
        }
        if self.secure.is_some() {
            let mut datas: [&[u8]; MAX_NUM_SEGMENTS] = [&[]; MAX_NUM_SEGMENTS];
            for (d, s) in datas.iter_mut().zip(segments) {
                *d = &s.data;
            }
            self.flush(out);
            return self.encode_secure(tag, &datas[..segments.len()], &aligns, out);
        }
        let copied: usize = segments[..num_segments]
            .iter()
            .map(|s| s.data.len())
            .filter(|&l| l <= COPY_SEGMENT_MAX)
            .sum();
        self.scratch_room(PREAMBLE_LEN + CRC_LEN + EPILOGUE_CRC_REV1_LEN + copied, out);
        put_preamble(&mut self.scratch, tag, &lens, &aligns, num_segments);
        let first = &segments[0].data;
        if !first.is_empty() {
            self.put_segment(first, out);
            self.scratch.put_u32_le(ceph_crc32c(SEGMENT_SEED, first));
        }
        if num_segments > 1 {
            self.put_rest(segments[1..num_segments].iter().map(|s| &s.data), out);
        }
        Ok(())
    }

    /// Segments 1.. and the epilogue with their crcs.
    fn put_rest<'a>(&mut self, rest: impl Iterator<Item = &'a Bytes>, out: &mut Vec<Bytes>) {
        let mut epilogue = [0u8; EPILOGUE_CRC_REV1_LEN];
        epilogue[0] = LATE_STATUS_COMPLETE;
        for (i, data) in rest.enumerate() {
            let crc = ceph_crc32c(SEGMENT_SEED, data);
            epilogue[1 + i * CRC_LEN..1 + (i + 1) * CRC_LEN].copy_from_slice(&crc.to_le_bytes());
            if !data.is_empty() {
                self.put_segment(data, out);
            }
        }
        self.scratch.put_slice(&epilogue);
    }

    /// Appends a MESSAGE frame for `header` and the payloads `[front, middle, data]`, writing the
    /// header straight into the scratch buffer (no header segment of its own). Like
    /// [`append`](FrameEncoder::append), the tail may stay pending.
    pub fn append_message(
        &mut self,
        header: &MsgHeader2,
        payloads: [&Bytes; 3],
        out: &mut Vec<Bytes>,
    ) -> Result<(), FrameError> {
        if self.secure.is_some() {
            let mut h = BytesMut::with_capacity(MsgHeader2::LEN);
            header.encode(&mut h);
            let segs = [
                Segment::new(h.freeze(), SEGMENT_ALIGNMENTS[0]),
                Segment::new(payloads[0].clone(), SEGMENT_ALIGNMENTS[1]),
                Segment::new(payloads[1].clone(), SEGMENT_ALIGNMENTS[2]),
                Segment::new(payloads[2].clone(), SEGMENT_ALIGNMENTS[3]),
            ];
            return self.append(Tag::Message, &segs, out);
        }
        let mut lens = [MsgHeader2::LEN as u32, 0, 0, 0];
        for (i, p) in payloads.iter().enumerate() {
            lens[i + 1] = u32::try_from(p.len()).map_err(|_| FrameError::SegmentTooLong {
                index: i + 1,
                len: p.len(),
            })?;
        }
        let num_segments = 1 + payloads
            .iter()
            .rposition(|p| !p.is_empty())
            .map_or(0, |i| i + 1);
        let mut aligns = [0u16; MAX_NUM_SEGMENTS];
        aligns[..num_segments].copy_from_slice(&SEGMENT_ALIGNMENTS[..num_segments]);
        let copied: usize = payloads
            .iter()
            .map(|p| p.len())
            .filter(|&l| l <= COPY_SEGMENT_MAX)
            .sum();
        self.scratch_room(
            PREAMBLE_LEN + MsgHeader2::LEN + CRC_LEN + EPILOGUE_CRC_REV1_LEN + copied,
            out,
        );
        put_preamble(
            &mut self.scratch,
            Tag::Message,
            &lens,
            &aligns,
            num_segments,
        );
        let at = self.scratch.len();
        header.encode(&mut self.scratch);
        let crc = ceph_crc32c(SEGMENT_SEED, &self.scratch[at..]);
        self.scratch.put_u32_le(crc);
        if num_segments > 1 {
            self.put_rest(payloads[..num_segments - 1].iter().copied(), out);
        }
        Ok(())
    }

    /// Appends a single-segment frame (a control frame) and flushes: preamble, `payload`, crc. The
    /// payload is copied, so this is meant for small payloads.
    pub fn encode_control(
        &mut self,
        tag: Tag,
        payload: &[u8],
        out: &mut Vec<Bytes>,
    ) -> Result<(), FrameError> {
        self.append_control(tag, payload, out)?;
        self.flush(out);
        Ok(())
    }

    /// [`encode_control`](FrameEncoder::encode_control) without the flush.
    pub fn append_control(
        &mut self,
        tag: Tag,
        payload: &[u8],
        out: &mut Vec<Bytes>,
    ) -> Result<(), FrameError> {
        let len = u32::try_from(payload.len()).map_err(|_| FrameError::SegmentTooLong {
            index: 0,
            len: payload.len(),
        })?;
        if self.secure.is_some() {
            let aligns = [DEFAULT_ALIGNMENT, 0, 0, 0];
            self.flush(out);
            return self.encode_secure(tag, &[payload], &aligns, out);
        }
        let crc_len = if payload.is_empty() { 0 } else { CRC_LEN };
        self.scratch_room(PREAMBLE_LEN + payload.len() + crc_len, out);
        let lens = [len, 0, 0, 0];
        let aligns = [DEFAULT_ALIGNMENT, 0, 0, 0];
        put_preamble(&mut self.scratch, tag, &lens, &aligns, 1);
        if !payload.is_empty() {
            self.scratch.put_slice(payload);
            self.scratch.put_u32_le(ceph_crc32c(SEGMENT_SEED, payload));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(data: &[u8], align: u16) -> Segment {
        Segment::new(Bytes::copy_from_slice(data), align)
    }

    fn wire(enc: &mut FrameEncoder, tag: Tag, segments: &[Segment]) -> Vec<u8> {
        let mut out = Vec::new();
        enc.encode(tag, segments, &mut out).unwrap();
        out.concat()
    }

    fn decode_all(dec: &mut FrameDecoder, bytes: &[u8]) -> Vec<Frame> {
        let mut rx = BytesMut::from(bytes);
        let mut frames = Vec::new();
        while let Some(f) = dec.decode(&mut rx).unwrap() {
            frames.push(f);
        }
        assert!(rx.is_empty(), "{} bytes left over", rx.len());
        frames
    }

    /// Recomputes the preamble crc after a test edited the preamble.
    fn reseal(bytes: &mut [u8]) {
        let crc = ceph_crc32c(PREAMBLE_SEED, &bytes[..PREAMBLE_CRC_OFFSET]);
        bytes[PREAMBLE_CRC_OFFSET..PREAMBLE_LEN].copy_from_slice(&crc.to_le_bytes());
    }

    /// (segments, expected num_segments, expected on-wire length)
    fn cases() -> Vec<(Vec<Segment>, usize, usize)> {
        let a = seg(b"header bytes", 8);
        let b = seg(&[7u8; 300], 8);
        let c = seg(b"mid", 8);
        let d = seg(b"data", PAGE_ALIGNMENT);
        let e = |align| seg(b"", align);
        let p = PREAMBLE_LEN;
        let epi = EPILOGUE_CRC_REV1_LEN;
        vec![
            (vec![e(8)], 1, p),
            (vec![a.clone()], 1, p + 12 + 4),
            (vec![a.clone(), b.clone()], 2, p + 16 + 300 + epi),
            (vec![a.clone(), b.clone(), c.clone()], 3, p + 16 + 303 + epi),
            (
                vec![a.clone(), b.clone(), c.clone(), d.clone()],
                4,
                p + 16 + 307 + epi,
            ),
            // Empty middle segment (an OSD op without middle).
            (
                vec![a.clone(), b.clone(), e(8), d.clone()],
                4,
                p + 16 + 304 + epi,
            ),
            // Trailing empty segments are dropped.
            (vec![a.clone(), e(8), e(8), e(4096)], 1, p + 16),
            (
                vec![a.clone(), b.clone(), e(8), e(4096)],
                2,
                p + 16 + 300 + epi,
            ),
            // Empty segment 0 takes no bytes and has no crc.
            (vec![e(8), b.clone()], 2, p + 300 + epi),
            (vec![e(8), e(8), e(8), d.clone()], 4, p + 4 + epi),
            (vec![e(8), e(8), e(8), e(8)], 1, p),
        ]
    }

    #[test]
    fn round_trips() {
        let mut enc = FrameEncoder::new();
        // With the wire bytes kept (the transcript's form) and without (after auth).
        for keep_raw in [true, false] {
            let mut dec = FrameDecoder::new(1 << 20);
            dec.keep_raw(keep_raw);
            round_trip_cases(&mut enc, &mut dec, keep_raw);
            // A corrupted segment is still refused without the wire bytes kept.
            let (segments, _, _) = &cases()[2];
            let mut bad = wire(&mut enc, Tag::Message, segments);
            let at = bad.len() - EPILOGUE_CRC_REV1_LEN - 1;
            bad[at] ^= 1;
            let mut rx = BytesMut::from(&bad[..]);
            assert!(matches!(
                dec.decode(&mut rx),
                Err(FrameError::SegmentCrc { .. })
            ));
        }
    }

    fn round_trip_cases(enc: &mut FrameEncoder, dec: &mut FrameDecoder, keep_raw: bool) {
        for (segments, num, len) in cases() {
            let bytes = wire(enc, Tag::Message, &segments);
            assert_eq!(bytes.len(), len, "{segments:?}");
            let frames = decode_all(dec, &bytes);
            assert_eq!(frames.len(), 1);
            let f = &frames[0];
            assert_eq!(f.tag, Tag::Message);
            assert_eq!(f.num_segments, num);
            if keep_raw {
                assert_eq!(f.raw, bytes);
            } else {
                assert!(f.raw.is_empty());
            }
            for i in 0..MAX_NUM_SEGMENTS {
                let (want, align) = match segments.get(i) {
                    Some(s) if i < num => (&s.data[..], s.align),
                    _ => (&b""[..], 0),
                };
                assert_eq!(f.segments[i], want, "segment {i} of {segments:?}");
                assert_eq!(f.aligns[i], align, "align {i} of {segments:?}");
            }
            // Re-encoding the decoded frame reproduces it.
            assert_eq!(wire(enc, f.tag, &f.to_segments()), bytes);
        }
    }

    fn secure_pair() -> (FrameEncoder, FrameDecoder) {
        let secret: Vec<u8> = (100..164).collect();
        let (tx, _) = secure::session_ciphers(&secret, false).unwrap();
        let (_, rx) = secure::session_ciphers(&secret, true).unwrap();
        let mut enc = FrameEncoder::new();
        enc.set_secure(tx);
        let mut dec = FrameDecoder::new(1 << 20);
        dec.set_secure(rx);
        (enc, dec)
    }

    #[test]
    fn secure_round_trips_byte_by_byte() {
        let (mut enc, mut dec) = secure_pair();
        assert_eq!(
            (enc.mode(), dec.mode()),
            (FrameMode::Secure, FrameMode::Secure)
        );
        let big = seg(&[5u8; 100], 8);
        let mut all = cases();
        all.push((vec![big.clone()], 1, 0));
        all.push((vec![seg(&[1; 48], 8)], 1, 0));
        all.push((vec![seg(&[1; 49], 8), seg(b"x", 8)], 2, 0));
        for (segments, num, _) in all {
            let bytes = wire(&mut enc, Tag::Message, &segments);
            let len0 = segments[0].data.len() as u64;
            let rest: u64 = segments[1..num]
                .iter()
                .map(|s| secure::padded(s.data.len() as u64))
                .sum();
            let mut want = 96
                + if secure::padded(len0) > 48 {
                    secure::padded(len0) - 48 + 16
                } else {
                    0
                };
            if num > 1 {
                want += rest + 32;
            }
            assert_eq!(bytes.len() as u64, want, "{segments:?}");
            let mut rx = BytesMut::new();
            let mut got = None;
            for b in &bytes {
                assert!(got.is_none());
                rx.extend_from_slice(&[*b]);
                got = dec.decode(&mut rx).unwrap();
            }
            let f = got.expect("frame after its last byte");
            assert!(rx.is_empty());
            assert_eq!(f.num_segments, num);
            for (i, s) in segments.iter().enumerate().take(num) {
                assert_eq!(f.segments[i], s.data, "segment {i}");
                assert_eq!(f.aligns[i], s.align);
            }
            assert_eq!(f.raw, bytes);
        }
    }

    #[test]
    fn secure_bit_flips_and_replays_fail_authentication() {
        let frame = [
            seg(&[3u8; 70], 8),
            seg(b"front", 8),
            seg(b"", 8),
            seg(b"data", 4096),
        ];
        let (mut enc, _) = secure_pair();
        let good = wire(&mut enc, Tag::Message, &frame);
        for at in (0..good.len()).step_by(7) {
            let (mut enc, mut dec) = secure_pair();
            let bytes = wire(&mut enc, Tag::Message, &frame);
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            let mut rx = BytesMut::from(&bad[..]);
            let r = dec.decode(&mut rx);
            assert!(
                matches!(
                    r,
                    Err(FrameError::AuthFailed) | Err(FrameError::TooLarge { .. })
                ) || matches!(r, Ok(None)),
                "flip at {at}: {r:?}"
            );
            if at >= 96 {
                assert_eq!(r, Err(FrameError::AuthFailed), "flip at {at}");
            }
        }
        // A replayed frame: the second copy uses an old nonce.
        let (mut enc, mut dec) = secure_pair();
        let bytes = wire(&mut enc, Tag::Message, &frame);
        let mut rx = BytesMut::from(&bytes[..]);
        rx.extend_from_slice(&bytes);
        assert!(dec.decode(&mut rx).unwrap().is_some());
        assert_eq!(dec.decode(&mut rx), Err(FrameError::AuthFailed));
        assert_eq!(dec.decode(&mut rx), Err(FrameError::AuthFailed), "sticky");
    }

    #[test]
    fn layout_matches_ceph() {
        let mut enc = FrameEncoder::new();
        let bytes = wire(
            &mut enc,
            Tag::Message,
            &[seg(b"h", 8), seg(b"", 8), seg(b"m", 8), seg(b"", 4096)],
        );
        assert_eq!(bytes[0], 17);
        assert_eq!(bytes[1], 3);
        assert_eq!(&bytes[2..8], &[1, 0, 0, 0, 8, 0]);
        assert_eq!(&bytes[8..14], &[0, 0, 0, 0, 8, 0]);
        assert_eq!(&bytes[14..20], &[1, 0, 0, 0, 8, 0]);
        // Dropped segment: zero descriptor, flags and reserved zero.
        assert_eq!(&bytes[20..28], &[0; 8]);
        assert_eq!(bytes[32], b'h');
        assert_eq!(le32(&bytes, 33), ceph_crc32c(SEGMENT_SEED, b"h"));
        assert_eq!(bytes[37], b'm');
        let epilogue = &bytes[38..];
        assert_eq!(epilogue.len(), EPILOGUE_CRC_REV1_LEN);
        assert_eq!(epilogue[0], LATE_STATUS_COMPLETE);
        assert_eq!(le32(epilogue, 1), 0xffff_ffff);
        assert_eq!(le32(epilogue, 5), ceph_crc32c(SEGMENT_SEED, b"m"));
        assert_eq!(le32(epilogue, 9), 0);
    }

    #[test]
    fn encode_control_matches_encode() {
        let mut enc = FrameEncoder::new();
        for payload in [&b""[..], b"x", &[9u8; 123]] {
            let mut out = Vec::new();
            enc.encode_control(Tag::ClientIdent, payload, &mut out)
                .unwrap();
            assert_eq!(out.len(), 1, "one contiguous Bytes");
            let want = wire(
                &mut enc,
                Tag::ClientIdent,
                &[Segment::default_aligned(payload.to_vec())],
            );
            assert_eq!(out[0], want);
        }
    }

    #[test]
    fn gather_list_shares_large_segments_and_copies_small_ones() {
        let mut enc = FrameEncoder::new();
        let front = Bytes::from(vec![1u8; 64]);
        let data = Bytes::from(vec![2u8; COPY_SEGMENT_MAX + 1]);
        let mut out = Vec::new();
        let segments = [
            seg(b"hdr", 8),
            Segment::new(front.clone(), 8),
            seg(b"", 8),
            Segment::new(data.clone(), 4096),
        ];
        enc.encode(Tag::Message, &segments, &mut out).unwrap();
        // preamble + header + crc + front (copied), data (shared), epilogue
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].len(), PREAMBLE_LEN + 3 + CRC_LEN + 64);
        assert_eq!(out[1].as_ptr(), data.as_ptr());
        assert_eq!(out[2].len(), EPILOGUE_CRC_REV1_LEN);
        // Same bytes as a frame whose segments are all small.
        let wire_bytes: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        let frames = decode_all(&mut FrameDecoder::new(1 << 20), &wire_bytes);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].segments[1], front);
        assert_eq!(frames[0].segments[3], data);
        // Small frames appended without a flush join one contiguous piece.
        let mut out2 = Vec::new();
        enc.append(Tag::Message, &[seg(b"h", 8), seg(b"f", 8)], &mut out2)
            .unwrap();
        enc.append_control(Tag::Ack, &[0u8; 8], &mut out2).unwrap();
        assert!(out2.is_empty() && enc.has_pending());
        enc.flush(&mut out2);
        assert_eq!(out2.len(), 1);
        let frames = decode_all(&mut FrameDecoder::new(1 << 20), &out2[0]);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1].tag, Tag::Ack);
    }

    #[test]
    fn append_message_matches_encode_of_its_segments() {
        let header = MsgHeader2 {
            seq: 7,
            tid: 9,
            msg_type: 42,
            priority: 127,
            version: 8,
            ack_seq: 3,
            flags: 3,
            compat_version: 3,
            ..MsgHeader2::default()
        };
        let mut h = BytesMut::new();
        header.encode(&mut h);
        let h = h.freeze();
        for lens in [
            [5, 0, 0],
            [0, 0, 3],
            [64, 0, 4096],
            [2000, 10, 0],
            [0, 0, 0],
        ] {
            let payloads = lens.map(|n| Bytes::from(vec![n as u8; n]));
            let mut a = Vec::new();
            let mut enc = FrameEncoder::new();
            enc.append_message(&header, [&payloads[0], &payloads[1], &payloads[2]], &mut a)
                .unwrap();
            enc.flush(&mut a);
            let segs: Vec<Segment> = std::iter::once(Segment::new(h.clone(), 8))
                .chain(
                    payloads
                        .iter()
                        .zip(&SEGMENT_ALIGNMENTS[1..])
                        .map(|(p, &al)| Segment::new(p.clone(), al)),
                )
                .collect();
            let b = wire(&mut FrameEncoder::new(), Tag::Message, &segs);
            let a: Vec<u8> = a.iter().flat_map(|b| b.iter().copied()).collect();
            assert_eq!(a, b, "payload lengths {lens:?}");
        }
    }

    #[test]
    fn encoder_rejects_bad_segment_counts() {
        let mut enc = FrameEncoder::new();
        let mut out = Vec::new();
        assert_eq!(
            enc.encode(Tag::Message, &[], &mut out),
            Err(FrameError::InvalidSegmentCount(0))
        );
        let five = vec![seg(b"a", 8); 5];
        assert_eq!(
            enc.encode(Tag::Message, &five, &mut out),
            Err(FrameError::InvalidSegmentCount(5))
        );
        assert!(out.is_empty());
    }

    fn stream() -> (Vec<u8>, Vec<Frame>) {
        let mut enc = FrameEncoder::new();
        let mut bytes = Vec::new();
        for (i, (segments, _, _)) in cases().into_iter().enumerate() {
            let tag = if i % 2 == 0 { Tag::Message } else { Tag::Hello };
            bytes.extend(wire(&mut enc, tag, &segments));
        }
        let frames = decode_all(&mut FrameDecoder::new(1 << 20), &bytes);
        (bytes, frames)
    }

    #[test]
    fn byte_by_byte_feed_gives_same_frames() {
        let (bytes, want) = stream();
        let mut dec = FrameDecoder::new(1 << 20);
        let mut rx = BytesMut::new();
        let mut got = Vec::new();
        for &b in &bytes {
            rx.put_u8(b);
            while let Some(f) = dec.decode(&mut rx).unwrap() {
                got.push(f);
            }
        }
        assert!(rx.is_empty());
        assert_eq!(got, want);
        assert_eq!(got.len(), cases().len());
    }

    #[test]
    fn every_bit_flip_is_caught_or_harmless() {
        let mut enc = FrameEncoder::new();
        for (segments, _, _) in cases() {
            let good = wire(&mut enc, Tag::AuthRequest, &segments);
            let original = &decode_all(&mut FrameDecoder::new(1 << 20), &good)[0];
            for bit in 0..good.len() * 8 {
                let mut bad = good.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                let mut dec = FrameDecoder::new(1 << 20);
                let mut rx = BytesMut::from(&bad[..]);
                let result = dec.decode(&mut rx);
                let in_epilogue =
                    original.num_segments > 1 && bit / 8 >= good.len() - EPILOGUE_CRC_REV1_LEN;
                if !in_epilogue {
                    // Preamble, segments and segment 0's crc are all covered by a crc.
                    assert!(result.is_err(), "bit {bit} of {segments:?} not caught");
                }
                match result {
                    Err(_) | Ok(None) => {}
                    Ok(Some(f)) => {
                        // Only bytes no check covers may change (unused epilogue crc slots, the late
                        // status's reserved nibble): the content must be the original's.
                        assert_eq!(f.raw, bad);
                        assert_eq!(f.tag, original.tag, "bit {bit}");
                        assert_eq!(f.segments, original.segments, "bit {bit}");
                        assert_eq!(f.aligns, original.aligns, "bit {bit}");
                    }
                }
            }
        }
    }

    #[test]
    fn huge_segment_refused_without_allocating() {
        let mut p = [0u8; PREAMBLE_LEN];
        p[0] = Tag::Message.as_u8();
        p[1] = 1;
        p[2..6].copy_from_slice(&u32::MAX.to_le_bytes());
        reseal(&mut p);
        let mut rx = BytesMut::with_capacity(64);
        rx.put_slice(&p);
        let mut dec = FrameDecoder::new(16 << 20);
        let err = dec.decode(&mut rx).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: u64::from(u32::MAX) + 36,
                max: 16 << 20
            }
        );
        assert!(rx.capacity() <= 64, "capacity grew to {}", rx.capacity());
        assert_eq!(rx.len(), PREAMBLE_LEN, "nothing consumed");
        // Sticky.
        assert_eq!(dec.decode(&mut rx), Err(err));
    }

    #[test]
    fn four_max_segments_do_not_overflow() {
        let mut p = [0u8; PREAMBLE_LEN];
        p[0] = Tag::Message.as_u8();
        p[1] = 4;
        for i in 0..4 {
            p[2 + i * 6..6 + i * 6].copy_from_slice(&u32::MAX.to_le_bytes());
        }
        reseal(&mut p);
        let want =
            4 * u64::from(u32::MAX) + (PREAMBLE_LEN + CRC_LEN + EPILOGUE_CRC_REV1_LEN) as u64;
        assert_eq!(Preamble::parse(&p).unwrap().onwire_len(), want);
        let mut rx = BytesMut::from(&p[..]);
        let got = FrameDecoder::new(u32::MAX as usize).decode(&mut rx);
        assert_eq!(
            got,
            Err(FrameError::TooLarge {
                len: want,
                max: u32::MAX as usize
            })
        );
    }

    #[test]
    fn waits_for_big_frame_without_consuming() {
        let mut enc = FrameEncoder::new();
        let bytes = wire(
            &mut enc,
            Tag::Message,
            &[seg(b"hdr", 8), seg(&[5u8; 100_000], 8)],
        );
        let mut dec = FrameDecoder::new(1 << 20);
        let mut rx = BytesMut::new();
        rx.put_slice(&bytes[..PREAMBLE_LEN + 10]);
        assert_eq!(dec.decode(&mut rx), Ok(None));
        assert_eq!(rx.len(), PREAMBLE_LEN + 10);
        assert!(rx.capacity() >= bytes.len(), "reserved the whole frame");
        // The preamble is remembered: corrupting it now is not re-checked (it was verified once).
        rx[PREAMBLE_CRC_OFFSET] ^= 0xff;
        rx.put_slice(&bytes[PREAMBLE_LEN + 10..bytes.len() - 1]);
        assert_eq!(dec.decode(&mut rx), Ok(None));
        rx.put_slice(&bytes[bytes.len() - 1..]);
        let f = dec.decode(&mut rx).unwrap().unwrap();
        assert_eq!(f.segments[1].len(), 100_000);
        assert!(rx.is_empty());
    }

    #[test]
    fn preamble_checks() {
        let mut enc = FrameEncoder::new();
        let good = wire(&mut enc, Tag::Message, &[seg(b"a", 8), seg(b"b", 8)]);
        let check = |edit: &dyn Fn(&mut Vec<u8>), want: FrameError| {
            let mut bytes = good.clone();
            edit(&mut bytes);
            reseal(&mut bytes);
            let mut rx = BytesMut::from(&bytes[..]);
            assert_eq!(FrameDecoder::new(1 << 20).decode(&mut rx), Err(want));
        };
        check(&|b| b[1] = 0, FrameError::BadSegmentCount(0));
        check(&|b| b[1] = 5, FrameError::BadSegmentCount(5));
        check(&|b| b[1] = 3, FrameError::EmptyLastSegment(3));
        check(&|b| b[0] = 0, FrameError::BadTag(0));
        check(&|b| b[0] = 23, FrameError::BadTag(23));
        check(
            &|b| b[PREAMBLE_FLAGS_OFFSET] = FLAG_COMPRESSED,
            FrameError::Compressed,
        );
        // Unknown flag bits and the reserved byte are ignored, as Ceph does.
        let mut bytes = good.clone();
        bytes[PREAMBLE_FLAGS_OFFSET] = 0x80;
        bytes[PREAMBLE_FLAGS_OFFSET + 1] = 0xff;
        reseal(&mut bytes);
        let f = decode_all(&mut FrameDecoder::new(1 << 20), &bytes);
        assert_eq!(f[0].segments[1], &b"b"[..]);
        // A bad preamble crc is reported before anything else.
        let mut bytes = good.clone();
        bytes[1] = 9;
        let mut rx = BytesMut::from(&bytes[..]);
        assert!(matches!(
            FrameDecoder::new(1 << 20).decode(&mut rx),
            Err(FrameError::PreambleCrc { .. })
        ));
    }

    #[test]
    fn late_status() {
        let mut enc = FrameEncoder::new();
        let two = wire(&mut enc, Tag::Message, &[seg(b"a", 8), seg(b"b", 8)]);
        let next = wire(&mut enc, Tag::Keepalive2, &[seg(b"k", 8)]);
        let late_at = two.len() - EPILOGUE_CRC_REV1_LEN;
        for (status, want) in [
            (0x0e, None),
            (0xfe, None),
            (0x01, Some(FrameError::Aborted)),
            (0xe1, Some(FrameError::Aborted)),
            (0x00, Some(FrameError::BadEpilogue(0x00))),
            (0x0f, Some(FrameError::BadEpilogue(0x0f))),
            (0x0c, Some(FrameError::BadEpilogue(0x0c))),
        ] {
            let mut bytes = two.clone();
            bytes[late_at] = status;
            bytes.extend_from_slice(&next);
            let mut rx = BytesMut::from(&bytes[..]);
            let mut dec = FrameDecoder::new(1 << 20);
            match want {
                None => assert_eq!(dec.decode(&mut rx).unwrap().unwrap().tag, Tag::Message),
                Some(FrameError::Aborted) => {
                    assert_eq!(dec.decode(&mut rx), Err(FrameError::Aborted));
                    assert!(!FrameError::Aborted.is_fatal());
                    // The aborted frame was consumed; the next one decodes.
                    assert_eq!(dec.decode(&mut rx).unwrap().unwrap().tag, Tag::Keepalive2);
                }
                Some(e) => {
                    assert_eq!(dec.decode(&mut rx), Err(e.clone()));
                    assert_eq!(dec.decode(&mut rx), Err(e), "fatal errors are sticky");
                }
            }
        }
    }

    #[test]
    fn segment_crc_errors_name_the_segment() {
        let mut enc = FrameEncoder::new();
        let bytes = wire(
            &mut enc,
            Tag::Message,
            &[seg(b"a", 8), seg(b"", 8), seg(b"c", 8)],
        );
        let mut bad = bytes.clone();
        bad[PREAMBLE_LEN + 5] ^= 1; // segment 2's only byte
        let mut rx = BytesMut::from(&bad[..]);
        assert_eq!(
            FrameDecoder::new(1 << 20).decode(&mut rx),
            Err(FrameError::SegmentCrc {
                index: 2,
                expected: ceph_crc32c(SEGMENT_SEED, b"c"),
                got: ceph_crc32c(SEGMENT_SEED, &[b'c' ^ 1]),
            })
        );
    }

    #[test]
    fn reset_clears_error_and_partial_frame() {
        let mut dec = FrameDecoder::new(1 << 20);
        let mut rx = BytesMut::from(&[0u8; PREAMBLE_LEN][..]);
        rx[0] = 1;
        assert!(dec.decode(&mut rx).is_err());
        dec.reset();
        let bytes = wire(&mut FrameEncoder::new(), Tag::Hello, &[seg(b"hi", 8)]);
        assert_eq!(decode_all(&mut dec, &bytes)[0].payload(), &b"hi"[..]);
    }
}

#[cfg(test)]
mod prop_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any segments round-trip, whatever the chunking of the byte stream.
        #[test]
        fn round_trip_any_segments(
            segs in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..200), any::<u16>()), 1..=4),
            chunk in 1usize..64,
        ) {
            let segments: Vec<Segment> = segs.iter().map(|(d, a)| Segment::new(d.clone(), *a)).collect();
            let mut out = Vec::new();
            FrameEncoder::new().encode(Tag::Message, &segments, &mut out).unwrap();
            let bytes = out.concat();
            let mut dec = FrameDecoder::new(1 << 20);
            let mut rx = BytesMut::new();
            let mut got = None;
            for piece in bytes.chunks(chunk) {
                prop_assert!(got.is_none());
                rx.extend_from_slice(piece);
                got = dec.decode(&mut rx).unwrap();
            }
            let f = got.unwrap();
            prop_assert_eq!(&f.raw[..], &bytes[..]);
            for (i, s) in segments.iter().enumerate() {
                if i < f.num_segments {
                    prop_assert_eq!(&f.segments[i], &s.data);
                } else {
                    prop_assert!(s.data.is_empty());
                }
            }
        }

        /// Arbitrary bytes behind a preamble with a valid crc never panic the decoder.
        #[test]
        fn arbitrary_input_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 32..400), max in 0usize..512) {
            // Keep lengths small so some frames complete, then reseal the preamble.
            for i in 0..MAX_NUM_SEGMENTS {
                bytes[2 + i * 6 + 1] = 0;
                bytes[2 + i * 6 + 2] = 0;
                bytes[2 + i * 6 + 3] = 0;
            }
            bytes[1] %= 6;
            let crc = ceph_crc32c(PREAMBLE_SEED, &bytes[..PREAMBLE_CRC_OFFSET]);
            bytes[PREAMBLE_CRC_OFFSET..PREAMBLE_LEN].copy_from_slice(&crc.to_le_bytes());
            let mut dec = FrameDecoder::new(max);
            let mut rx = BytesMut::from(&bytes[..]);
            for _ in 0..4 {
                let before = rx.len();
                match dec.decode(&mut rx) {
                    Ok(Some(f)) => prop_assert_eq!(before - rx.len(), f.raw.len()),
                    Ok(None) => prop_assert_eq!(before, rx.len()),
                    Err(_) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tag_tests {
    use super::Tag;

    #[test]
    fn tag_round_trip() {
        for v in 0u8..=255 {
            match Tag::try_from(v) {
                Ok(t) => assert_eq!(t as u8, v),
                Err(e) => {
                    assert_eq!(e, v);
                    assert!(v == 0 || v > 22);
                }
            }
        }
    }
}
