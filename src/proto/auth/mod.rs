//! Authentication: the pluggable auth-method traits ([`method`]), auth method none, cephx
//! ([`cephx`], with its [`crypto`] and [`keyring`]), and the AUTH_SIGNATURE that closes every msgr2
//! handshake.
//!
//! Owns: the auth method and connection mode numbers, the providers a connection is configured with
//! ([`ClientAuth`]: one [`ClientAuthMethod`]; [`ServerAuth`]: the [`ServerAuthMethod`]s a server offers;
//! none and cephx in its client, monitor and service roles are built in, an application may add its
//! own), the connection modes each side allows per connection type ([`ConModes`], with Ceph's
//! negotiation: the client's preference order among the modes the server allows), the auth-none
//! request payload carried in AUTH_REQUEST ([`AuthNoneRequest`]), and [`auth_signature`], the
//! HMAC-SHA256 each side sends over the bytes it received before authentication finished.
//!
//! Invariants: decoding untrusted payloads returns errors, never panics; with no session key (auth none)
//! the signature is 32 zero bytes, exactly as Ceph sends it.

mod builtin;
pub mod cephx;
pub mod crypto;
pub mod keyring;
pub mod method;

use bytes::{BufMut, Bytes, BytesMut};

use super::denc::{Decode, DecodeError, Decoder, Encode};
use super::types::AuthEntityName;

use std::sync::Arc;

use super::types::entity_type;

pub use cephx::{CephxClient, CephxMonitor, CephxService, ServiceSecrets, WallAnchor};
pub use crypto::{CryptoError, CryptoKey};
pub use keyring::{Keyring, KeyringEntry, KeyringError};
pub use method::{
    AuthError, AuthGranted, ClientAuth, ClientAuthContext, ClientAuthMethod, ClientAuthSession,
    ServerAuth, ServerAuthContext, ServerAuthMethod, ServerAuthSession, ServerStep, SessionSecrets,
};

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

/// Connection modes in preference order, per connection type (Ceph's `ms_mon_client_mode`,
/// `ms_client_mode`, `ms_service_mode`). Auth method none only ever uses crc.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConModes {
    /// What we offer when dialling a monitor.
    pub to_mon: Vec<u32>,
    /// What we offer when dialling any other daemon.
    pub to_other: Vec<u32>,
    /// What we allow when accepting.
    pub accept: Vec<u32>,
}

impl Default for ConModes {
    /// Ceph's defaults: to monitors secure first (ms_mon_client_mode = "secure crc": what a client
    /// says to its monitor, tickets included, is worth protecting), to other daemons crc first
    /// (ms_client_mode = "crc secure": it is faster); both accepted.
    fn default() -> Self {
        ConModes {
            to_mon: vec![CON_MODE_SECURE, CON_MODE_CRC],
            to_other: vec![CON_MODE_CRC, CON_MODE_SECURE],
            accept: vec![CON_MODE_CRC, CON_MODE_SECURE],
        }
    }
}

impl ConModes {
    /// The same preference list everywhere.
    pub fn all(modes: &[u32]) -> Self {
        ConModes {
            to_mon: modes.to_vec(),
            to_other: modes.to_vec(),
            accept: modes.to_vec(),
        }
    }

    /// What a client offers to a peer of `peer_type` with auth method `method`.
    pub fn offer(&self, peer_type: u8, method: u32) -> Vec<u32> {
        if method == AUTH_METHOD_NONE {
            return vec![CON_MODE_CRC];
        }
        if peer_type == entity_type::MON {
            self.to_mon.clone()
        } else {
            self.to_other.clone()
        }
    }

    /// What a server allows with auth method `method`.
    pub fn allowed(&self, method: u32) -> Vec<u32> {
        if method == AUTH_METHOD_NONE {
            return vec![CON_MODE_CRC];
        }
        self.accept.clone()
    }

    /// Ceph's `AuthRegistry::pick_mode`: the first of the client's preferences the server allows.
    pub fn pick(preferred: &[u32], allowed: &[u32]) -> Option<u32> {
        preferred.iter().copied().find(|m| allowed.contains(m))
    }
}

/// Parse a mode list as Ceph's config writes it: `"secure crc"`, `"crc"`, or comma-separated.
pub fn parse_con_modes(s: &str) -> Result<Vec<u32>, String> {
    let modes = s
        .split([' ', ',', ';'])
        .filter(|w| !w.is_empty())
        .map(|w| match w {
            "crc" => Ok(CON_MODE_CRC),
            "secure" => Ok(CON_MODE_SECURE),
            other => Err(format!("unknown connection mode {other:?} (crc, secure)")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if modes.is_empty() {
        return Err("no connection mode given".into());
    }
    Ok(modes)
}

/// Parse an auth method name (`none`, `cephx`).
pub fn parse_auth_method(s: &str) -> Result<u32, String> {
    match s {
        "none" => Ok(AUTH_METHOD_NONE),
        "cephx" => Ok(AUTH_METHOD_CEPHX),
        other => Err(format!("unknown auth method {other:?} (none, cephx)")),
    }
}

/// A connection mode's name.
pub fn con_mode_name(mode: u32) -> &'static str {
    match mode {
        CON_MODE_CRC => "crc",
        CON_MODE_SECURE => "secure",
        _ => "unknown",
    }
}

/// An auth method's name.
pub fn auth_method_name(method: u32) -> &'static str {
    match method {
        AUTH_METHOD_NONE => "none",
        AUTH_METHOD_CEPHX => "cephx",
        _ => "unknown",
    }
}

/// Build the client's cephx provider from `--keyring FILE --name TYPE.ID`: a clear error for a missing,
/// unreadable or malformed keyring and for a name it lacks.
pub fn cephx_client_from_keyring(path: &str, name: &str) -> Result<ClientAuth, String> {
    let name: AuthEntityName = name
        .parse()
        .map_err(|e| format!("bad entity name {name:?}: {e}"))?;
    let kr = Keyring::load(path).map_err(|e| e.to_string())?;
    let c = CephxClient::from_keyring(&kr, &name, path).map_err(|e| e.to_string())?;
    Ok(ClientAuth::cephx(Arc::new(c)))
}

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

    #[test]
    fn default_modes_are_cephs_secure_first_to_monitors() {
        let m = ConModes::default();
        assert_eq!(
            m.offer(entity_type::MON, AUTH_METHOD_CEPHX),
            vec![CON_MODE_SECURE, CON_MODE_CRC]
        );
        assert_eq!(
            m.offer(entity_type::OSD, AUTH_METHOD_CEPHX),
            vec![CON_MODE_CRC, CON_MODE_SECURE]
        );
    }

    use super::*;
    use crate::proto::codec::Tag;
    use crate::proto::control::capture::{payload, MON_C2S, MON_S2C, OSD_C2S};
    use crate::proto::control::{AuthRequest, ControlFrame};
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
    fn mode_negotiation_follows_the_clients_order() {
        let crc_secure = [CON_MODE_CRC, CON_MODE_SECURE];
        let secure_crc = [CON_MODE_SECURE, CON_MODE_CRC];
        assert_eq!(
            ConModes::pick(&secure_crc, &crc_secure),
            Some(CON_MODE_SECURE)
        );
        assert_eq!(ConModes::pick(&crc_secure, &secure_crc), Some(CON_MODE_CRC));
        assert_eq!(ConModes::pick(&[CON_MODE_SECURE], &[CON_MODE_CRC]), None);
        let m = ConModes {
            to_mon: secure_crc.to_vec(),
            to_other: vec![CON_MODE_CRC],
            accept: vec![CON_MODE_SECURE],
        };
        assert_eq!(m.offer(entity_type::MON, AUTH_METHOD_CEPHX), secure_crc);
        assert_eq!(m.offer(entity_type::OSD, AUTH_METHOD_CEPHX), [CON_MODE_CRC]);
        assert_eq!(m.offer(entity_type::MON, AUTH_METHOD_NONE), [CON_MODE_CRC]);
        assert_eq!(m.allowed(AUTH_METHOD_NONE), [CON_MODE_CRC]);
        assert_eq!(parse_con_modes("secure crc").unwrap(), secure_crc);
        assert_eq!(parse_con_modes("crc,secure").unwrap(), crc_secure);
        assert!(parse_con_modes("fast").is_err());
        assert!(parse_con_modes("").is_err());
        assert_eq!(parse_auth_method("cephx"), Ok(AUTH_METHOD_CEPHX));
        assert!(parse_auth_method("krb").is_err());
        let e = cephx_client_from_keyring("/nonexistent", "client.admin").unwrap_err();
        assert!(e.contains("/nonexistent"), "{e}");
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
