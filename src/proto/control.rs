//! Control-frame payloads: what segment 0 of every non-MESSAGE msgr2 frame carries (frames_v2.h's
//! `ControlFrame` classes), field by field in Ceph's order.
//!
//! Owns: one struct per control frame, each with [`Encode`]/[`Decode`], and [`ControlFrame`], the sum type
//! the connection state machine matches on, with its [`Tag`].
//!
//! Invariants: frame layout (preamble, crcs, epilogue) is not here — see [`super::codec`]. Like Ceph's
//! `ControlFrame::Decode`, decoding reads the fields it knows and ignores bytes after them, so a newer
//! peer may append fields; a payload too short for the known fields is a [`DecodeError`].

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::Tag;
use super::denc::{encode_len_prefixed, encode_vec_u32, Decode, DecodeError, Decoder, Encode};
use super::types::{AddrVec, EntityAddr, UTime};

/// Implements `Encode`/`Decode` for a payload struct whose fields are each `Encode`/`Decode` or one of
/// the field kinds below, in declaration order.
macro_rules! payload {
    ($name:ident { $($field:ident : $kind:tt),* $(,)? }) => {
        impl Encode for $name {
            fn encode(&self, buf: &mut BytesMut) {
                $( payload!(@enc $kind, buf, &self.$field); )*
            }
        }
        impl Decode for $name {
            #[allow(unused_variables)]
            fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
                Ok($name { $( $field: payload!(@dec $kind, d, stringify!($field)), )* })
            }
        }
    };
    (@enc u8, $b:ident, $v:expr) => { $b.put_u8(*$v) };
    (@enc u32, $b:ident, $v:expr) => { $b.put_u32_le(*$v) };
    (@enc i32, $b:ident, $v:expr) => { $b.put_i32_le(*$v) };
    (@enc u64, $b:ident, $v:expr) => { $b.put_u64_le(*$v) };
    (@enc i64, $b:ident, $v:expr) => { $b.put_i64_le(*$v) };
    (@enc bool, $b:ident, $v:expr) => { $b.put_u8(u8::from(*$v)) };
    (@enc vec_u32, $b:ident, $v:expr) => { encode_vec_u32($b, $v) };
    (@enc bytes, $b:ident, $v:expr) => { encode_len_prefixed($b, $v) };
    (@enc sha256, $b:ident, $v:expr) => { $b.put_slice($v) };
    (@enc denc, $b:ident, $v:expr) => { Encode::encode($v, $b) };
    (@dec u8, $d:ident, $w:expr) => { $d.u8()? };
    (@dec u32, $d:ident, $w:expr) => { $d.u32()? };
    (@dec i32, $d:ident, $w:expr) => { $d.i32()? };
    (@dec u64, $d:ident, $w:expr) => { $d.u64()? };
    (@dec i64, $d:ident, $w:expr) => { $d.i64()? };
    (@dec bool, $d:ident, $w:expr) => { $d.bool()? };
    (@dec vec_u32, $d:ident, $w:expr) => { $d.vec_u32($w)? };
    (@dec bytes, $d:ident, $w:expr) => { Bytes::copy_from_slice($d.len_prefixed($w)?) };
    (@dec sha256, $d:ident, $w:expr) => {{
        let mut sig = [0u8; 32];
        sig.copy_from_slice($d.take(32, $w)?);
        sig
    }};
    (@dec denc, $d:ident, $w:expr) => { $d.decode()? };
}

/// HELLO: the sender's entity type and the address it sees its peer at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub entity_type: u8,
    pub peer_addr: EntityAddr,
}
payload!(Hello {
    entity_type: u8,
    peer_addr: denc
});

/// AUTH_REQUEST: the auth method, the connection modes the client prefers (best first), the method's
/// first payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthRequest {
    pub method: u32,
    pub preferred_modes: Vec<u32>,
    pub auth_payload: Bytes,
}
payload!(AuthRequest {
    method: u32,
    preferred_modes: vec_u32,
    auth_payload: bytes
});

/// AUTH_BAD_METHOD: the server refused `method` (with error `result`) and lists what it allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthBadMethod {
    pub method: u32,
    pub result: i32,
    pub allowed_methods: Vec<u32>,
    pub allowed_modes: Vec<u32>,
}
payload!(AuthBadMethod {
    method: u32,
    result: i32,
    allowed_methods: vec_u32,
    allowed_modes: vec_u32
});

/// AUTH_REPLY_MORE: the server's next auth-method message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthReplyMore {
    pub auth_payload: Bytes,
}
payload!(AuthReplyMore {
    auth_payload: bytes
});

/// AUTH_REQUEST_MORE: the client's next auth-method message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthRequestMore {
    pub auth_payload: Bytes,
}
payload!(AuthRequestMore {
    auth_payload: bytes
});

/// AUTH_DONE: authentication succeeded; the client's global id, the chosen connection mode, the method's
/// final payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthDone {
    pub global_id: u64,
    pub con_mode: u32,
    pub auth_payload: Bytes,
}
payload!(AuthDone {
    global_id: u64,
    con_mode: u32,
    auth_payload: bytes
});

/// AUTH_SIGNATURE: HMAC-SHA256 over the peer's pre-auth bytes (see [`super::auth::auth_signature`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthSignature {
    pub signature: [u8; 32],
}
payload!(AuthSignature { signature: sha256 });

/// CLIENT_IDENT: who the client is and what session it wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdent {
    pub addrs: AddrVec,
    pub target_addr: EntityAddr,
    pub gid: i64,
    pub global_seq: u64,
    pub supported_features: u64,
    pub required_features: u64,
    pub flags: u64,
    pub cookie: u64,
}
payload!(ClientIdent {
    addrs: denc,
    target_addr: denc,
    gid: i64,
    global_seq: u64,
    supported_features: u64,
    required_features: u64,
    flags: u64,
    cookie: u64,
});

/// SERVER_IDENT: the server's answer to CLIENT_IDENT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerIdent {
    pub addrs: AddrVec,
    pub gid: i64,
    pub global_seq: u64,
    pub supported_features: u64,
    pub required_features: u64,
    pub flags: u64,
    pub cookie: u64,
}
payload!(ServerIdent {
    addrs: denc,
    gid: i64,
    global_seq: u64,
    supported_features: u64,
    required_features: u64,
    flags: u64,
    cookie: u64,
});

/// IDENT_MISSING_FEATURES: the features the peer requires and we lack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentMissingFeatures {
    pub features: u64,
}
payload!(IdentMissingFeatures { features: u64 });

/// SESSION_RECONNECT: the client asks to resume an existing session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionReconnect {
    pub addrs: AddrVec,
    pub client_cookie: u64,
    pub server_cookie: u64,
    pub global_seq: u64,
    pub connect_seq: u64,
    pub msg_seq: u64,
}
payload!(SessionReconnect {
    addrs: denc,
    client_cookie: u64,
    server_cookie: u64,
    global_seq: u64,
    connect_seq: u64,
    msg_seq: u64,
});

/// SESSION_RESET: the server has no such session; `full` also resets the client's cookie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionReset {
    pub full: bool,
}
payload!(SessionReset { full: bool });

/// SESSION_RETRY: reconnect race lost; retry with a connect_seq above this one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRetry {
    pub connect_seq: u64,
}
payload!(SessionRetry { connect_seq: u64 });

/// SESSION_RETRY_GLOBAL: retry with a global_seq above this one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRetryGlobal {
    pub global_seq: u64,
}
payload!(SessionRetryGlobal { global_seq: u64 });

/// SESSION_RECONNECT_OK: session resumed; the server has received messages up to `msg_seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionReconnectOk {
    pub msg_seq: u64,
}
payload!(SessionReconnectOk { msg_seq: u64 });

/// KEEPALIVE2: a timestamp the peer echoes back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keepalive2 {
    pub timestamp: UTime,
}
payload!(Keepalive2 { timestamp: denc });

/// KEEPALIVE2_ACK: the echoed KEEPALIVE2 timestamp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keepalive2Ack {
    pub timestamp: UTime,
}
payload!(Keepalive2Ack { timestamp: denc });

/// ACK: messages up to `seq` were received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    pub seq: u64,
}
payload!(Ack { seq: u64 });

/// Any control frame, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlFrame {
    Hello(Hello),
    AuthRequest(AuthRequest),
    AuthBadMethod(AuthBadMethod),
    AuthReplyMore(AuthReplyMore),
    AuthRequestMore(AuthRequestMore),
    AuthDone(AuthDone),
    AuthSignature(AuthSignature),
    ClientIdent(ClientIdent),
    ServerIdent(ServerIdent),
    IdentMissingFeatures(IdentMissingFeatures),
    SessionReconnect(SessionReconnect),
    SessionReset(SessionReset),
    SessionRetry(SessionRetry),
    SessionRetryGlobal(SessionRetryGlobal),
    SessionReconnectOk(SessionReconnectOk),
    /// WAIT: the server is busy with a racing connection; no payload.
    Wait,
    Keepalive2(Keepalive2),
    Keepalive2Ack(Keepalive2Ack),
    Ack(Ack),
}

/// Each variant with its payload, so encode and tag stay one table.
macro_rules! each_control_frame {
    ($self:ident, $p:ident => $with_payload:expr, wait => $wait:expr) => {
        match $self {
            ControlFrame::Hello($p) => $with_payload(Tag::Hello),
            ControlFrame::AuthRequest($p) => $with_payload(Tag::AuthRequest),
            ControlFrame::AuthBadMethod($p) => $with_payload(Tag::AuthBadMethod),
            ControlFrame::AuthReplyMore($p) => $with_payload(Tag::AuthReplyMore),
            ControlFrame::AuthRequestMore($p) => $with_payload(Tag::AuthRequestMore),
            ControlFrame::AuthDone($p) => $with_payload(Tag::AuthDone),
            ControlFrame::AuthSignature($p) => $with_payload(Tag::AuthSignature),
            ControlFrame::ClientIdent($p) => $with_payload(Tag::ClientIdent),
            ControlFrame::ServerIdent($p) => $with_payload(Tag::ServerIdent),
            ControlFrame::IdentMissingFeatures($p) => $with_payload(Tag::IdentMissingFeatures),
            ControlFrame::SessionReconnect($p) => $with_payload(Tag::SessionReconnect),
            ControlFrame::SessionReset($p) => $with_payload(Tag::SessionReset),
            ControlFrame::SessionRetry($p) => $with_payload(Tag::SessionRetry),
            ControlFrame::SessionRetryGlobal($p) => $with_payload(Tag::SessionRetryGlobal),
            ControlFrame::SessionReconnectOk($p) => $with_payload(Tag::SessionReconnectOk),
            ControlFrame::Wait => $wait,
            ControlFrame::Keepalive2($p) => $with_payload(Tag::Keepalive2),
            ControlFrame::Keepalive2Ack($p) => $with_payload(Tag::Keepalive2Ack),
            ControlFrame::Ack($p) => $with_payload(Tag::Ack),
        }
    };
}

impl ControlFrame {
    /// The preamble tag this frame travels under.
    pub fn tag(&self) -> Tag {
        each_control_frame!(self, _p => |t| t, wait => Tag::Wait)
    }

    /// Append the frame's segment-0 payload to `buf`.
    pub fn encode_payload(&self, buf: &mut BytesMut) {
        each_control_frame!(self, p => |_| p.encode(buf), wait => ())
    }

    /// Decode the segment-0 payload of a frame with `tag`. Bytes after the known fields are ignored, as Ceph
    /// does. MESSAGE and the compression tags are not control frames here and are refused.
    pub fn decode(tag: Tag, payload: &[u8]) -> Result<ControlFrame, DecodeError> {
        let d = &mut Decoder::new(payload);
        Ok(match tag {
            Tag::Hello => ControlFrame::Hello(d.decode()?),
            Tag::AuthRequest => ControlFrame::AuthRequest(d.decode()?),
            Tag::AuthBadMethod => ControlFrame::AuthBadMethod(d.decode()?),
            Tag::AuthReplyMore => ControlFrame::AuthReplyMore(d.decode()?),
            Tag::AuthRequestMore => ControlFrame::AuthRequestMore(d.decode()?),
            Tag::AuthDone => ControlFrame::AuthDone(d.decode()?),
            Tag::AuthSignature => ControlFrame::AuthSignature(d.decode()?),
            Tag::ClientIdent => ControlFrame::ClientIdent(d.decode()?),
            Tag::ServerIdent => ControlFrame::ServerIdent(d.decode()?),
            Tag::IdentMissingFeatures => ControlFrame::IdentMissingFeatures(d.decode()?),
            Tag::SessionReconnect => ControlFrame::SessionReconnect(d.decode()?),
            Tag::SessionReset => ControlFrame::SessionReset(d.decode()?),
            Tag::SessionRetry => ControlFrame::SessionRetry(d.decode()?),
            Tag::SessionRetryGlobal => ControlFrame::SessionRetryGlobal(d.decode()?),
            Tag::SessionReconnectOk => ControlFrame::SessionReconnectOk(d.decode()?),
            Tag::Wait => ControlFrame::Wait,
            Tag::Keepalive2 => ControlFrame::Keepalive2(d.decode()?),
            Tag::Keepalive2Ack => ControlFrame::Keepalive2Ack(d.decode()?),
            Tag::Ack => ControlFrame::Ack(d.decode()?),
            Tag::Message | Tag::CompressionRequest | Tag::CompressionDone => {
                return Err(DecodeError::invalid(
                    "control frame",
                    format!("{tag:?} is not a control frame"),
                ))
            }
        })
    }

    /// The encoded payload in a fresh buffer.
    pub fn payload_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode_payload(&mut b);
        b.freeze()
    }
}

/// Test-only: walk a captured msgr2.1 crc-mode byte stream frame by frame using the preamble lengths
/// (no crc checks; the frame codec owns those).
#[cfg(test)]
pub(crate) mod capture {
    /// One frame: its tag byte and its segments (only the first `num_segments` are listed).
    pub(crate) struct CapturedFrame {
        pub tag: u8,
        pub segments: Vec<Vec<u8>>,
    }

    const BANNER_LEN: usize = 26;
    const PREAMBLE_LEN: usize = 32;
    /// rev1 epilogue: late flags and the crcs of segments 1..=3.
    const EPILOGUE_LEN: usize = 13;

    pub(crate) fn frames(stream: &[u8]) -> Vec<CapturedFrame> {
        let mut out = Vec::new();
        let mut at = BANNER_LEN;
        while at < stream.len() {
            let p = &stream[at..at + PREAMBLE_LEN];
            at += PREAMBLE_LEN;
            let tag = p[0];
            let nsegs = p[1] as usize;
            let mut segments = Vec::new();
            for i in 0..nsegs {
                let o = 2 + 6 * i;
                let len = u32::from_le_bytes([p[o], p[o + 1], p[o + 2], p[o + 3]]) as usize;
                segments.push(stream[at..at + len].to_vec());
                at += len;
                if i == 0 {
                    at += 4; // rev1: segment 0's crc follows it inline
                }
            }
            if nsegs > 1 {
                at += EPILOGUE_LEN;
            }
            out.push(CapturedFrame { tag, segments });
        }
        assert_eq!(at, stream.len(), "capture ends on a frame boundary");
        out
    }

    /// The `n`th frame with `tag`'s segment 0.
    pub(crate) fn payload(stream: &[u8], tag: u8, n: usize) -> Vec<u8> {
        frames(stream)
            .into_iter()
            .filter(|f| f.tag == tag)
            .nth(n)
            .expect("frame present in capture")
            .segments
            .swap_remove(0)
    }

    pub(crate) const MON_C2S: &[u8] =
        include_bytes!("../../tests/data/ceph16-mon-crc/conn0-c2s.bin");
    pub(crate) const MON_S2C: &[u8] =
        include_bytes!("../../tests/data/ceph16-mon-crc/conn0-s2c.bin");
    pub(crate) const OSD_C2S: &[u8] =
        include_bytes!("../../tests/data/ceph16-osd-crc/conn0-c2s.bin");
    pub(crate) const OSD_S2C: &[u8] =
        include_bytes!("../../tests/data/ceph16-osd-crc/conn0-s2c.bin");
    pub(crate) const CEPHX_C2S: &[u8] =
        include_bytes!("../../tests/data/ceph16-mon-cephx-secure/conn0-c2s.bin");
    pub(crate) const CEPHX_S2C: &[u8] =
        include_bytes!("../../tests/data/ceph16-mon-cephx-secure/conn0-s2c.bin");

    /// The frames of a secure-mode stream that travel in the clear: up to the client's last auth request
    /// (`server == false`) or the server's AUTH_DONE (`server == true`); later preambles are ciphertext.
    pub(crate) fn plaintext_frames(stream: &[u8], server: bool) -> Vec<CapturedFrame> {
        let mut out = Vec::new();
        let mut at = BANNER_LEN;
        loop {
            let p = &stream[at..at + PREAMBLE_LEN];
            at += PREAMBLE_LEN;
            let tag = p[0];
            assert_eq!(p[1], 1, "handshake frames have one segment");
            let len = u32::from_le_bytes([p[2], p[3], p[4], p[5]]) as usize;
            out.push(CapturedFrame {
                tag,
                segments: vec![stream[at..at + len].to_vec()],
            });
            at += len + 4;
            let last_clear_tag = if server { 6 } else { 5 };
            if tag == last_clear_tag {
                return out;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::capture::{payload, MON_C2S, MON_S2C, OSD_C2S, OSD_S2C};
    use super::*;
    use crate::proto::types::{entity_type, AddrType};
    use core::net::SocketAddr;
    use proptest::prelude::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Decode a captured payload, check it equals `expect` and re-encodes to the same bytes.
    fn golden(stream: &[u8], tag: Tag, expect: ControlFrame) {
        let bytes = payload(stream, tag as u8, 0);
        let got = ControlFrame::decode(tag, &bytes).unwrap();
        assert_eq!(got, expect);
        assert_eq!(got.tag(), tag);
        assert_eq!(got.payload_bytes().as_ref(), bytes.as_slice());
    }

    const FEATURES: u64 = 0x3f01_cfbd_fffd_ffff;

    #[test]
    fn golden_mon_client_side() {
        golden(
            MON_C2S,
            Tag::Hello,
            ControlFrame::Hello(Hello {
                entity_type: entity_type::CLIENT,
                peer_addr: EntityAddr::msgr2(sa("127.0.0.1:3300"), 0),
            }),
        );
        let req = payload(MON_C2S, Tag::AuthRequest as u8, 0);
        let ControlFrame::AuthRequest(r) = ControlFrame::decode(Tag::AuthRequest, &req).unwrap()
        else {
            panic!("not an auth request")
        };
        assert_eq!((r.method, r.preferred_modes.as_slice()), (1, &[1u32][..]));
        assert_eq!(r.auth_payload.len(), 22);
        assert_eq!(
            ControlFrame::AuthRequest(r).payload_bytes().as_ref(),
            &req[..]
        );
        golden(
            MON_C2S,
            Tag::AuthSignature,
            ControlFrame::AuthSignature(AuthSignature { signature: [0; 32] }),
        );
        let ident = payload(MON_C2S, Tag::ClientIdent as u8, 0);
        assert_eq!(ident.len(), 123);
        let ControlFrame::ClientIdent(ci) = ControlFrame::decode(Tag::ClientIdent, &ident).unwrap()
        else {
            panic!("not a client ident")
        };
        assert_eq!(ci.addrs.to_string(), "127.0.0.1:0/550859949");
        assert_eq!(
            ci.addrs,
            AddrVec(vec![EntityAddr::any(sa("127.0.0.1:0"), 550859949)])
        );
        assert_eq!(ci.addrs.0[0].addr_type, AddrType::Any);
        assert_eq!(ci.target_addr.to_string(), "v2:127.0.0.1:3300/0");
        assert_eq!(ci.gid, -1);
        assert_eq!(ci.global_seq, 1);
        assert_eq!(ci.supported_features, FEATURES);
        assert_eq!(ci.required_features, 0x0800_0000_0000_0000);
        assert_eq!(ci.flags, 0);
        assert_ne!(ci.cookie, 0);
        assert_eq!(
            ControlFrame::ClientIdent(ci).payload_bytes().as_ref(),
            &ident[..]
        );
    }

    #[test]
    fn golden_mon_server_side() {
        golden(
            MON_S2C,
            Tag::Hello,
            ControlFrame::Hello(Hello {
                entity_type: entity_type::MON,
                peer_addr: EntityAddr::msgr2(sa("127.0.0.1:41124"), 0),
            }),
        );
        golden(
            MON_S2C,
            Tag::AuthDone,
            ControlFrame::AuthDone(AuthDone {
                global_id: 14099,
                con_mode: 1,
                auth_payload: Bytes::new(),
            }),
        );
        golden(
            MON_S2C,
            Tag::AuthSignature,
            ControlFrame::AuthSignature(AuthSignature { signature: [0; 32] }),
        );
        let ident = payload(MON_S2C, Tag::ServerIdent as u8, 0);
        assert_eq!(ident.len(), 123);
        golden(
            MON_S2C,
            Tag::ServerIdent,
            ControlFrame::ServerIdent(ServerIdent {
                addrs: AddrVec(vec![
                    EntityAddr::msgr2(sa("127.0.0.1:3300"), 0),
                    EntityAddr::legacy(sa("127.0.0.1:6789"), 0),
                ]),
                gid: 0,
                global_seq: 3,
                supported_features: FEATURES,
                required_features: 0x0c01_0200_0204_0000,
                flags: 1,
                cookie: 0,
            }),
        );
    }

    #[test]
    fn golden_osd() {
        let hello = payload(OSD_C2S, Tag::Hello as u8, 0);
        let ControlFrame::Hello(h) = ControlFrame::decode(Tag::Hello, &hello).unwrap() else {
            panic!("not a hello")
        };
        assert_eq!(h.entity_type, entity_type::CLIENT);
        assert_eq!(h.peer_addr.to_string(), "v2:127.0.0.1:6800/21085");
        golden(
            OSD_S2C,
            Tag::Hello,
            ControlFrame::Hello(Hello {
                entity_type: entity_type::OSD,
                peer_addr: EntityAddr::msgr2(sa("127.0.0.1:47910"), 0),
            }),
        );
        golden(
            OSD_S2C,
            Tag::AuthDone,
            ControlFrame::AuthDone(AuthDone {
                global_id: 4216,
                con_mode: 1,
                auth_payload: Bytes::new(),
            }),
        );
        let ident = payload(OSD_C2S, Tag::ClientIdent as u8, 0);
        let ControlFrame::ClientIdent(ci) = ControlFrame::decode(Tag::ClientIdent, &ident).unwrap()
        else {
            panic!("not a client ident")
        };
        assert_eq!(ci.gid, 4216);
        assert_eq!(ci.target_addr, h.peer_addr);
        assert_eq!(ci.supported_features, FEATURES);
        assert_eq!(
            ControlFrame::ClientIdent(ci).payload_bytes().as_ref(),
            &ident[..]
        );
        let ident = payload(OSD_S2C, Tag::ServerIdent as u8, 0);
        let ControlFrame::ServerIdent(si) = ControlFrame::decode(Tag::ServerIdent, &ident).unwrap()
        else {
            panic!("not a server ident")
        };
        assert_eq!(
            si.addrs.to_string(),
            "[v2:127.0.0.1:6800/21085,v1:127.0.0.1:6801/21085]"
        );
        assert_eq!(si.flags, 1);
        assert_eq!(
            ControlFrame::ServerIdent(si).payload_bytes().as_ref(),
            &ident[..]
        );
    }

    #[test]
    fn golden_cephx_handshake_in_the_clear() {
        use super::capture::{plaintext_frames, CEPHX_C2S, CEPHX_S2C};
        let decode = |f: &super::capture::CapturedFrame| {
            let tag = Tag::try_from(f.tag).unwrap();
            let frame = ControlFrame::decode(tag, &f.segments[0]).unwrap();
            assert_eq!(frame.payload_bytes().as_ref(), f.segments[0].as_slice());
            frame
        };
        let c2s: Vec<ControlFrame> = plaintext_frames(CEPHX_C2S, false)
            .iter()
            .map(decode)
            .collect();
        assert!(matches!(&c2s[0], ControlFrame::Hello(h) if h.entity_type == entity_type::CLIENT));
        assert!(
            matches!(&c2s[1], ControlFrame::AuthRequest(r) if r.method == 2 && !r.auth_payload.is_empty())
        );
        assert!(matches!(&c2s[2], ControlFrame::AuthRequestMore(r) if !r.auth_payload.is_empty()));
        let s2c: Vec<ControlFrame> = plaintext_frames(CEPHX_S2C, true)
            .iter()
            .map(decode)
            .collect();
        assert!(matches!(&s2c[0], ControlFrame::Hello(h) if h.entity_type == entity_type::MON));
        assert!(matches!(&s2c[1], ControlFrame::AuthReplyMore(r) if !r.auth_payload.is_empty()));
        let ControlFrame::AuthDone(done) = &s2c[2] else {
            panic!("expected AUTH_DONE, got {:?}", s2c[2])
        };
        assert_eq!((done.global_id, done.con_mode), (4097, 2));
        assert!(!done.auth_payload.is_empty());
    }

    #[test]
    fn captured_payload_prefixes_fail() {
        for (stream, tag) in [
            (MON_C2S, Tag::Hello),
            (MON_C2S, Tag::AuthRequest),
            (MON_C2S, Tag::ClientIdent),
            (MON_S2C, Tag::AuthDone),
            (MON_S2C, Tag::ServerIdent),
            (OSD_C2S, Tag::AuthSignature),
        ] {
            let b = payload(stream, tag as u8, 0);
            for n in 0..b.len() {
                assert!(
                    ControlFrame::decode(tag, &b[..n]).is_err(),
                    "{tag:?} prefix {n}"
                );
            }
        }
    }

    fn sample_addrs() -> AddrVec {
        AddrVec(vec![
            EntityAddr::msgr2(sa("[2001:db8::1]:3300"), 17),
            EntityAddr::legacy(sa("10.0.0.2:6789"), 17),
        ])
    }

    fn every_frame() -> Vec<ControlFrame> {
        vec![
            ControlFrame::Hello(Hello {
                entity_type: entity_type::OSD,
                peer_addr: EntityAddr::msgr2(sa("10.0.0.1:50000"), 0),
            }),
            ControlFrame::AuthRequest(AuthRequest {
                method: 2,
                preferred_modes: vec![2, 1],
                auth_payload: Bytes::from_static(b"cephx says hi"),
            }),
            ControlFrame::AuthBadMethod(AuthBadMethod {
                method: 2,
                result: -13,
                allowed_methods: vec![1],
                allowed_modes: vec![1, 2],
            }),
            ControlFrame::AuthReplyMore(AuthReplyMore {
                auth_payload: Bytes::from_static(&[1, 2, 3]),
            }),
            ControlFrame::AuthRequestMore(AuthRequestMore {
                auth_payload: Bytes::new(),
            }),
            ControlFrame::AuthDone(AuthDone {
                global_id: u64::MAX,
                con_mode: 2,
                auth_payload: Bytes::from_static(b"key"),
            }),
            ControlFrame::AuthSignature(AuthSignature {
                signature: [0xa5; 32],
            }),
            ControlFrame::ClientIdent(ClientIdent {
                addrs: sample_addrs(),
                target_addr: EntityAddr::msgr2(sa("10.0.0.3:3300"), 0),
                gid: 4123,
                global_seq: 9,
                supported_features: FEATURES,
                required_features: 1,
                flags: 1,
                cookie: 0xfeed,
            }),
            ControlFrame::ServerIdent(ServerIdent {
                addrs: sample_addrs(),
                gid: -1,
                global_seq: 10,
                supported_features: 2,
                required_features: 3,
                flags: 0,
                cookie: 7,
            }),
            ControlFrame::IdentMissingFeatures(IdentMissingFeatures { features: 1 << 59 }),
            ControlFrame::SessionReconnect(SessionReconnect {
                addrs: sample_addrs(),
                client_cookie: 1,
                server_cookie: 2,
                global_seq: 3,
                connect_seq: 4,
                msg_seq: 5,
            }),
            ControlFrame::SessionReset(SessionReset { full: true }),
            ControlFrame::SessionReset(SessionReset { full: false }),
            ControlFrame::SessionRetry(SessionRetry { connect_seq: 6 }),
            ControlFrame::SessionRetryGlobal(SessionRetryGlobal { global_seq: 7 }),
            ControlFrame::SessionReconnectOk(SessionReconnectOk { msg_seq: 8 }),
            ControlFrame::Wait,
            ControlFrame::Keepalive2(Keepalive2 {
                timestamp: UTime::new(1_700_000_000, 5),
            }),
            ControlFrame::Keepalive2Ack(Keepalive2Ack {
                timestamp: UTime::new(1, 2),
            }),
            ControlFrame::Ack(Ack { seq: 99 }),
        ]
    }

    #[test]
    fn every_frame_round_trips_and_every_prefix_fails() {
        for f in every_frame() {
            let b = f.payload_bytes();
            assert_eq!(ControlFrame::decode(f.tag(), &b).unwrap(), f);
            for n in 0..b.len() {
                assert!(
                    ControlFrame::decode(f.tag(), &b[..n]).is_err(),
                    "{:?}: prefix {n} of {} decoded",
                    f.tag(),
                    b.len()
                );
            }
        }
    }

    #[test]
    fn tags_match_variants() {
        let tags: Vec<u8> = every_frame().iter().map(|f| f.tag() as u8).collect();
        assert_eq!(
            tags,
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 12, 13, 14, 15, 16, 18, 19, 20]
        );
    }

    #[test]
    fn trailing_bytes_are_ignored_like_ceph() {
        for f in every_frame() {
            let mut b = BytesMut::new();
            f.encode_payload(&mut b);
            b.put_slice(&[0xee; 9]);
            assert_eq!(ControlFrame::decode(f.tag(), &b).unwrap(), f);
        }
    }

    #[test]
    fn fixed_layouts() {
        let b = ControlFrame::Ack(Ack { seq: 0x0102 }).payload_bytes();
        assert_eq!(b.as_ref(), &[2, 1, 0, 0, 0, 0, 0, 0]);
        let b = ControlFrame::SessionReset(SessionReset { full: true }).payload_bytes();
        assert_eq!(b.as_ref(), &[1]);
        assert!(ControlFrame::Wait.payload_bytes().is_empty());
        let b = ControlFrame::Keepalive2(Keepalive2 {
            timestamp: UTime::new(3, 4),
        })
        .payload_bytes();
        assert_eq!(b.as_ref(), &[3, 0, 0, 0, 4, 0, 0, 0]);
    }

    #[test]
    fn message_and_compression_tags_are_not_control_frames() {
        for t in [Tag::Message, Tag::CompressionRequest, Tag::CompressionDone] {
            assert!(matches!(
                ControlFrame::decode(t, &[0; 64]),
                Err(DecodeError::Invalid { .. })
            ));
        }
    }

    #[test]
    fn hostile_vector_counts_are_refused() {
        // AUTH_REQUEST claiming 2^32-1 preferred modes in a 12-byte payload.
        let b = [1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        assert!(ControlFrame::decode(Tag::AuthRequest, &b).is_err());
        // An auth payload longer than the frame.
        let b = [1, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f];
        assert!(ControlFrame::decode(Tag::AuthRequest, &b).is_err());
    }

    proptest! {
        #[test]
        fn prop_client_ident_round_trip(
            addrs in crate::proto::types::tests::arb_addrvec(),
            target in crate::proto::types::tests::arb_addr(),
            nums in any::<(i64, u64, u64, u64, u64, u64)>(),
        ) {
            let f = ControlFrame::ClientIdent(ClientIdent {
                addrs,
                target_addr: target,
                gid: nums.0,
                global_seq: nums.1,
                supported_features: nums.2,
                required_features: nums.3,
                flags: nums.4,
                cookie: nums.5,
            });
            let b = f.payload_bytes();
            prop_assert_eq!(ControlFrame::decode(Tag::ClientIdent, &b).unwrap(), f);
        }

        #[test]
        fn prop_decode_never_panics(tag in 1u8..=22, bytes in proptest::collection::vec(any::<u8>(), 0..160)) {
            let tag = Tag::try_from(tag).unwrap();
            let _ = ControlFrame::decode(tag, &bytes);
        }
    }
}
