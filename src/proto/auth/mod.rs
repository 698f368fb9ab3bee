//! Authentication: auth method none and the AUTH_SIGNATURE that closes every msgr2 handshake.
//!
//! Owns: the auth method and connection mode numbers, the auth-none request payload carried in
//! AUTH_REQUEST ([`AuthNoneRequest`]), and [`auth_signature`], the HMAC-SHA256 each side sends over the
//! bytes it received before authentication finished.
//!
//! Invariants: decoding untrusted payloads returns errors, never panics; with no session key (auth none)
//! the signature is 32 zero bytes, exactly as Ceph sends it.

pub mod cephx;
pub mod crypto;
pub mod keyring;

use bytes::{BufMut, Bytes, BytesMut};

use super::denc::{Decode, DecodeError, Decoder, Encode};
use super::types::AuthEntityName;

pub use crypto::{CryptoError, CryptoKey};
pub use keyring::{Keyring, KeyringEntry, KeyringError};

/// `CEPH_AUTH_NONE`.
pub const AUTH_METHOD_NONE: u32 = 1;
/// `CEPH_AUTH_CEPHX`.
pub const AUTH_METHOD_CEPHX: u32 = 2;
/// `CEPH_CON_MODE_CRC`: frames protected by crc32c only.
pub const CON_MODE_CRC: u32 = 1;
/// `CEPH_CON_MODE_SECURE`: frames encrypted with AES-128-GCM.
pub const CON_MODE_SECURE: u32 = 2;
/// `AUTH_MODE_AUTHORIZER`: the auth payload is an authorizer for a daemon (OSD, MDS, MGR).
pub const AUTH_MODE_AUTHORIZER: u8 = 1;
/// `AUTH_MODE_MON`: the auth payload starts an authentication with a monitor.
pub const AUTH_MODE_MON: u8 = 10;

/// The AUTH_REQUEST payload of auth method none: a mode byte, the entity name and the global id.
///
/// To a monitor (MonClient) the mode is [`AUTH_MODE_MON`] and the global id is the one the client had
/// (0 the first time); to any other daemon it is the authorizer `AuthNoneAuthorizer::build_authorizer`
/// writes, whose leading "struct_v" 1 is [`AUTH_MODE_AUTHORIZER`], with the global id the monitor assigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthNoneRequest {
    Mon {
        name: AuthEntityName,
        global_id: u64,
    },
    Authorizer {
        name: AuthEntityName,
        global_id: u64,
    },
}

impl AuthNoneRequest {
    pub fn encode(&self) -> Bytes {
        let (mode, name, global_id) = match self {
            AuthNoneRequest::Mon { name, global_id } => (AUTH_MODE_MON, name, global_id),
            AuthNoneRequest::Authorizer { name, global_id } => {
                (AUTH_MODE_AUTHORIZER, name, global_id)
            }
        };
        let mut b = BytesMut::new();
        b.put_u8(mode);
        name.encode(&mut b);
        b.put_u64_le(*global_id);
        b.freeze()
    }

    /// Decode an auth-none AUTH_REQUEST payload. Bytes after the global id are ignored, as Ceph does.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let d = &mut Decoder::new(payload);
        let mode = d.u8()?;
        let name = AuthEntityName::decode(d)?;
        let global_id = d.u64()?;
        match mode {
            AUTH_MODE_MON => Ok(AuthNoneRequest::Mon { name, global_id }),
            AUTH_MODE_AUTHORIZER => Ok(AuthNoneRequest::Authorizer { name, global_id }),
            other => Err(DecodeError::invalid(
                "auth none request",
                format!("unknown auth mode {other}"),
            )),
        }
    }

    pub fn name(&self) -> &AuthEntityName {
        match self {
            AuthNoneRequest::Mon { name, .. } | AuthNoneRequest::Authorizer { name, .. } => name,
        }
    }

    pub fn global_id(&self) -> u64 {
        match self {
            AuthNoneRequest::Mon { global_id, .. }
            | AuthNoneRequest::Authorizer { global_id, .. } => *global_id,
        }
    }
}

/// The AUTH_SIGNATURE payload: HMAC-SHA256 keyed with the session key over `transcript` (every byte the
/// signer received from its peer up to AUTH_DONE). An empty session key (auth none) gives 32 zero bytes.
pub fn auth_signature(session_key: &[u8], transcript: &[u8]) -> [u8; 32] {
    crypto::hmac_sha256(session_key, transcript)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::Tag;
    use crate::proto::frames::capture::{payload, MON_C2S, MON_S2C, OSD_C2S};
    use crate::proto::frames::{AuthRequest, ControlFrame};
    use crate::proto::types::entity_type;

    fn admin() -> AuthEntityName {
        AuthEntityName::new(entity_type::CLIENT, "admin")
    }

    fn captured_auth_payload(stream: &[u8]) -> Bytes {
        let bytes = payload(stream, Tag::AuthRequest as u8, 0);
        match ControlFrame::decode(Tag::AuthRequest, &bytes).unwrap() {
            ControlFrame::AuthRequest(AuthRequest {
                method: AUTH_METHOD_NONE,
                preferred_modes,
                auth_payload,
            }) => {
                assert_eq!(preferred_modes, [CON_MODE_CRC]);
                auth_payload
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn golden_mon_request() {
        let p = captured_auth_payload(MON_C2S);
        let req = AuthNoneRequest::decode(&p).unwrap();
        assert_eq!(
            req,
            AuthNoneRequest::Mon {
                name: admin(),
                global_id: 0
            }
        );
        assert_eq!(req.name().to_string(), "client.admin");
        assert_eq!(req.encode(), p);
    }

    #[test]
    fn golden_osd_authorizer() {
        let p = captured_auth_payload(OSD_C2S);
        let req = AuthNoneRequest::decode(&p).unwrap();
        assert_eq!(
            req,
            AuthNoneRequest::Authorizer {
                name: admin(),
                global_id: 4216
            }
        );
        assert_eq!(req.global_id(), 4216);
        assert_eq!(req.encode(), p);
    }

    #[test]
    fn truncation_and_bad_mode() {
        let enc = AuthNoneRequest::Authorizer {
            name: AuthEntityName::new(entity_type::OSD, "0"),
            global_id: 7,
        }
        .encode();
        for n in 0..enc.len() {
            assert!(AuthNoneRequest::decode(&enc[..n]).is_err(), "prefix {n}");
        }
        let mut bad = enc.to_vec();
        bad[0] = 2;
        assert!(AuthNoneRequest::decode(&bad).is_err());
        let mut longer = enc.to_vec();
        longer.push(0);
        assert!(AuthNoneRequest::decode(&longer).is_ok());
    }

    #[test]
    fn auth_none_signature_is_zero_like_ceph() {
        for stream in [MON_C2S, MON_S2C] {
            let sig = payload(stream, Tag::AuthSignature as u8, 0);
            assert_eq!(auth_signature(&[], b"anything").as_slice(), sig.as_slice());
        }
    }

    #[test]
    fn hmac_sha256_rfc4231_case2() {
        let sig = auth_signature(b"Jefe", b"what do ya want for nothing?");
        let expect = [
            0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24, 0x26, 0x08, 0x95,
            0x75, 0xc7, 0x5a, 0x00, 0x3f, 0x08, 0x9d, 0x27, 0x39, 0x83, 0x9d, 0xec, 0x58, 0xb9,
            0x64, 0xec, 0x38, 0x43,
        ];
        assert_eq!(sig, expect);
        assert_ne!(
            auth_signature(b"Jefe", b"what do ya want for nothing!"),
            expect
        );
    }
}
