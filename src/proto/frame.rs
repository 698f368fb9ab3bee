//! msgr2 frame layout (rev1, "msgr2.1"): preamble, segments, crcs and epilogue.

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
