//! The msgr2 banner: the first bytes each side sends, before any frame.
//!
//! Owns the banner's encoding, its incremental decoding and the msgr2 feature check. On the wire
//! (ProtocolV2::_banner_exchange / _handle_peer_banner):
//!
//! ```text
//! "ceph v2\n" | payload_len le16 | payload: supported le64 | required le64 | (ignored extra bytes)
//! ```
//!
//! Ceph sends a 16-byte payload; on receive it reads `payload_len` bytes, decodes the two words and
//! ignores the rest, so a longer payload (a future peer's extra feature words) is accepted here too,
//! up to [`MAX_PAYLOAD_LEN`]. A shorter one is an error.
//!
//! Invariants: decoding never panics and never consumes anything before the banner is complete; a peer
//! that is not speaking msgr2 is detected from the first byte that differs.

use bytes::{BufMut, BytesMut};

/// Banner prefix of msgr2 (`CEPH_BANNER_V2_PREFIX`).
pub const BANNER_PREFIX: &[u8; 8] = b"ceph v2\n";
/// Banner of msgr1 (`CEPH_BANNER`): a peer sending it speaks only the legacy protocol.
pub const LEGACY_BANNER_PREFIX: &[u8] = b"ceph v027";

/// Payload length Ceph sends: two le64 feature words.
pub const PAYLOAD_LEN: u16 = 16;
/// Largest banner payload we accept (Ceph's limit is the le16 itself; this keeps a hostile peer from
/// making us buffer 64 KiB of nothing before the first frame).
pub const MAX_PAYLOAD_LEN: u16 = 4096;

/// msgr2 feature bits exchanged in the banner (`CEPH_MSGR2_FEATURE_*`).
pub mod msgr2_feature {
    /// msgr2.1: rev1 frame layout (segment 0 crc inline, epilogue only for multi-segment frames).
    pub const REVISION_1: u64 = 1 << 0;
    /// On-wire compression (COMPRESSION_REQUEST/DONE frames). Not supported by msgr.
    pub const COMPRESSION: u64 = 1 << 1;
}

const LEN_OFFSET: usize = BANNER_PREFIX.len();
const PAYLOAD_OFFSET: usize = LEN_OFFSET + 2;

/// A banner's msgr2 feature words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Banner {
    pub supported: u64,
    pub required: u64,
}

/// Why a banner was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BannerError {
    #[error("peer sent the msgr1 banner \"ceph v027\": it speaks only the legacy protocol")]
    Legacy,
    #[error("peer did not send a Ceph banner")]
    NotCeph,
    #[error("bad banner payload length {0} (accepted {PAYLOAD_LEN}..={MAX_PAYLOAD_LEN})")]
    BadPayloadLength(u16),
    /// The peer lacks msgr2 features we require.
    #[error("peer lacks required msgr2 features {missing:#x}")]
    PeerMissingFeatures { missing: u64 },
    /// The peer requires msgr2 features we do not support.
    #[error("peer requires unsupported msgr2 features {missing:#x}")]
    UnsupportedRequired { missing: u64 },
    /// The peer does not speak msgr2.1 and msgr has no rev0 frame layout.
    #[error("peer does not support msgr2.1 (REVISION_1)")]
    NoRevision1,
}

impl Banner {
    /// Bytes of a banner with Ceph's 16-byte payload: prefix, le16 length, two le64.
    pub const LEN: usize = PAYLOAD_OFFSET + PAYLOAD_LEN as usize;

    /// What msgr sends: msgr2.1 supported, nothing required (as Ceph pacific does).
    pub const OURS: Banner = Banner {
        supported: msgr2_feature::REVISION_1,
        required: 0,
    };

    /// Appends the [`Banner::LEN`]-byte banner to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(Self::LEN);
        out.put_slice(BANNER_PREFIX);
        out.put_u16_le(PAYLOAD_LEN);
        out.put_u64_le(self.supported);
        out.put_u64_le(self.required);
    }

    /// Decodes a banner from the start of `input`.
    ///
    /// `Ok(None)`: too few bytes yet. `Ok(Some((banner, consumed)))`: `consumed` bytes (the whole
    /// banner, payload extras included) belong to it. Errors come as soon as the bytes seen prove them.
    pub fn decode(input: &[u8]) -> Result<Option<(Banner, usize)>, BannerError> {
        let seen = input.len().min(BANNER_PREFIX.len());
        if input[..seen] != BANNER_PREFIX[..seen] {
            let seen = input.len().min(LEGACY_BANNER_PREFIX.len());
            return if input[..seen] != LEGACY_BANNER_PREFIX[..seen] {
                Err(BannerError::NotCeph)
            } else if seen == LEGACY_BANNER_PREFIX.len() {
                Err(BannerError::Legacy)
            } else {
                Ok(None)
            };
        }
        let Some(len_bytes) = input.get(LEN_OFFSET..PAYLOAD_OFFSET) else {
            return Ok(None);
        };
        let payload_len = u16::from_le_bytes([len_bytes[0], len_bytes[1]]);
        if !(PAYLOAD_LEN..=MAX_PAYLOAD_LEN).contains(&payload_len) {
            return Err(BannerError::BadPayloadLength(payload_len));
        }
        let total = PAYLOAD_OFFSET + usize::from(payload_len);
        let Some(payload) = input.get(PAYLOAD_OFFSET..total) else {
            return Ok(None);
        };
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&payload[at..at + 8]);
            u64::from_le_bytes(w)
        };
        let banner = Banner {
            supported: word(0),
            required: word(8),
        };
        Ok(Some((banner, total)))
    }

    /// Checks a peer's banner against ours as Ceph's `_handle_peer_banner_payload` does (each side
    /// must support what the other requires), and that the peer speaks msgr2.1.
    pub fn check_peer(&self, peer: &Banner) -> Result<(), BannerError> {
        let missing = self.required & !peer.supported;
        if missing != 0 {
            return Err(BannerError::PeerMissingFeatures { missing });
        }
        let missing = peer.required & !self.supported;
        if missing != 0 {
            return Err(BannerError::UnsupportedRequired { missing });
        }
        if peer.supported & msgr2_feature::REVISION_1 == 0 {
            return Err(BannerError::NoRevision1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(b: Banner) -> Vec<u8> {
        let mut out = BytesMut::new();
        b.encode(&mut out);
        out.to_vec()
    }

    #[test]
    fn encodes_like_ceph() {
        // The first 26 bytes of tests/data/ceph16-mon-crc/conn0-c2s.bin.
        let mut want = b"ceph v2\n".to_vec();
        want.extend_from_slice(&[0x10, 0x00, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encoded(Banner::OURS), want);
        assert_eq!(want.len(), Banner::LEN);
    }

    #[test]
    fn round_trip_and_partial_input() {
        let b = Banner {
            supported: 0x0102_0304_0506_0708,
            required: u64::MAX,
        };
        let bytes = encoded(b);
        for n in 0..bytes.len() {
            assert_eq!(Banner::decode(&bytes[..n]), Ok(None), "prefix of {n} bytes");
        }
        let mut more = bytes.clone();
        more.extend_from_slice(b"next frame");
        assert_eq!(Banner::decode(&more), Ok(Some((b, Banner::LEN))));
    }

    #[test]
    fn longer_payload_is_consumed_and_ignored() {
        let mut bytes = b"ceph v2\n".to_vec();
        bytes.extend_from_slice(&24u16.to_le_bytes());
        bytes.extend_from_slice(&1u64.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(&[0xaa; 8]);
        assert_eq!(Banner::decode(&bytes[..bytes.len() - 1]), Ok(None));
        let (b, used) = Banner::decode(&bytes).unwrap().unwrap();
        assert_eq!(used, 34);
        assert_eq!(b, Banner::OURS);
    }

    #[test]
    fn bad_payload_lengths() {
        for len in [0u16, 15, MAX_PAYLOAD_LEN + 1, u16::MAX] {
            let mut bytes = b"ceph v2\n".to_vec();
            bytes.extend_from_slice(&len.to_le_bytes());
            assert_eq!(
                Banner::decode(&bytes),
                Err(BannerError::BadPayloadLength(len))
            );
        }
    }

    #[test]
    fn legacy_detected_from_nine_bytes() {
        let legacy = b"ceph v027\x00\x00\x00";
        // "ceph v" and "ceph v0", "ceph v02" could still be either: wait.
        for n in 0..9 {
            assert_eq!(Banner::decode(&legacy[..n]), Ok(None), "{n} bytes");
        }
        for n in 9..legacy.len() {
            assert_eq!(Banner::decode(&legacy[..n]), Err(BannerError::Legacy));
        }
    }

    #[test]
    fn not_ceph_detected_at_first_differing_byte() {
        assert_eq!(Banner::decode(b"G"), Err(BannerError::NotCeph));
        assert_eq!(
            Banner::decode(b"GET / HTTP/1.1\r\n"),
            Err(BannerError::NotCeph)
        );
        assert_eq!(Banner::decode(b"cepx"), Err(BannerError::NotCeph));
        assert_eq!(Banner::decode(b"ceph v3"), Err(BannerError::NotCeph));
        assert_eq!(Banner::decode(b"ceph v2\r"), Err(BannerError::NotCeph));
        assert_eq!(Banner::decode(b"ceph v01"), Err(BannerError::NotCeph));
        assert_eq!(Banner::decode(b"ceph v028"), Err(BannerError::NotCeph));
        assert_eq!(Banner::decode(b"ceph v02"), Ok(None));
    }

    #[test]
    fn feature_checks() {
        let ours = Banner::OURS;
        assert_eq!(ours.check_peer(&ours), Ok(()));
        let needs_compression = Banner {
            supported: 3,
            required: msgr2_feature::COMPRESSION,
        };
        assert_eq!(
            ours.check_peer(&needs_compression),
            Err(BannerError::UnsupportedRequired { missing: 2 })
        );
        let rev0 = Banner {
            supported: 0,
            required: 0,
        };
        assert_eq!(ours.check_peer(&rev0), Err(BannerError::NoRevision1));
        let strict = Banner {
            supported: 1,
            required: 1,
        };
        assert_eq!(
            strict.check_peer(&rev0),
            Err(BannerError::PeerMissingFeatures { missing: 1 })
        );
    }
}
