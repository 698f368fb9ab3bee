//! cephx, Ceph's ticket-based authentication, in its three msgr2 roles (sans-IO).
//!
//! Owns the cephx wire structures (src/auth/cephx/CephxProtocol.h: server challenge, request and
//! response headers, `CephXAuthenticate` v3, ticket blobs, service-ticket replies, authorizers and
//! their challenge / reply) and the logic of each role:
//! - client ([`CephxClient`]): with a monitor, `AUTH_REQUEST(mode mon, name, global_id)` →
//!   `AUTH_REPLY_MORE(server challenge)` → `AUTH_REQUEST_MORE(CephXAuthenticate, other_keys set)` →
//!   `AUTH_DONE(session key + AUTH ticket, connection secret, service tickets)`; with any other daemon,
//!   an authorizer built from the cached service ticket, answering the server's challenge;
//! - monitor ([`CephxMonitor`]): checks the client's proof against a keyring, issues the session key,
//!   the AUTH ticket, service tickets (sealed with each service's secret) and the connection secret;
//! - service ([`CephxService`]): opens authorizers with its service secret, challenges them, answers
//!   with `nonce + 1` and a fresh connection secret.
//!
//! Invariants: every input is attacker-controlled and decodes into errors, never panics; keys never
//! reach `Debug` output or error messages; wall-clock time comes in as an argument ([`WallAnchor`]),
//! randomness from a CSPRNG the caller passes.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use zeroize::Zeroize;

use bytes::{BufMut, Bytes, BytesMut};
use rand::{CryptoRng, Rng};

use super::crypto::{decode_decrypt, decrypt_envelope, encode_encrypt, encrypt_envelope};
use super::crypto::{CryptoError, CryptoKey};
use super::keyring::Keyring;
use super::{AUTH_MODE_AUTHORIZER, AUTH_MODE_MON};
use crate::proto::denc::{encode_len_prefixed, Decode, DecodeError, Decoder, Encode};
use crate::proto::types::{
    entity_type, entity_type_name, AuthEntityName, EntityType, EntityTypes, UTime,
};

/// `CEPHX_GET_AUTH_SESSION_KEY`: the request that authenticates with a monitor.
pub const CEPHX_GET_AUTH_SESSION_KEY: u16 = 0x0100;
/// `CEPHX_GET_PRINCIPAL_SESSION_KEY`: a request for more service tickets (not used by msgr2 clients).
pub const CEPHX_GET_PRINCIPAL_SESSION_KEY: u16 = 0x0200;
/// Service ids are entity types; a ticket for the AUTH "service" is the monitor session ticket.
pub const SERVICE_AUTH: u32 = entity_type::AUTH as u32;
/// The tickets a client asks for along with its session (MonClient's `want_keys`).
pub const DEFAULT_WANT_KEYS: EntityTypes = EntityTypes::of(&[
    EntityType::Mon,
    EntityType::Osd,
    EntityType::Mgr,
    EntityType::Mds,
]);
/// `secret_id` meaning "the service's long-term key" rather than a rotating one.
const SECRET_ID_GENERAL: u64 = u64::MAX;
/// `CEPH_AUTH_UID_DEFAULT`, written into tickets for old decoders.
const AUTH_UID_DEFAULT: u64 = u64::MAX;
/// Ceph's `-EPERM` / `-EACCES`, the results a refused authentication reports.
pub const EPERM: i32 = -1;
pub const EACCES: i32 = -13;

/// Why a cephx step failed. Messages name entities and reasons, never keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CephxError {
    #[error("{0}")]
    Crypto(#[from] CryptoError),
    #[error("malformed cephx payload: {0}")]
    Decode(#[from] DecodeError),
    /// The peer's proof or ticket is not acceptable (wrong key, unknown entity, expired, replayed).
    #[error("{0}")]
    Refused(String),
    /// We cannot go on (no ticket for the service, no key).
    #[error("{0}")]
    Unavailable(String),
}

impl CephxError {
    /// The errno Ceph reports for this refusal in AUTH_BAD_METHOD.
    pub fn errno(&self) -> i32 {
        match self {
            CephxError::Refused(_) => EACCES,
            _ => EPERM,
        }
    }
}

fn refused(why: impl Into<String>) -> CephxError {
    CephxError::Refused(why.into())
}

/// Maps an [`Instant`] to wall-clock time (`utime_t`) without reading a clock: the owner supplies one
/// matching pair once (at messenger start, or any fixed pair in tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallAnchor {
    pub instant: Instant,
    /// Time since the Unix epoch at `instant`.
    pub since_epoch: Duration,
}

impl WallAnchor {
    pub fn new(instant: Instant, since_epoch: Duration) -> Self {
        WallAnchor {
            instant,
            since_epoch,
        }
    }

    /// The wall-clock time at `now`.
    pub fn utime(&self, now: Instant) -> UTime {
        let t = self.since_epoch + now.saturating_duration_since(self.instant);
        UTime::new(
            t.as_secs().min(u64::from(u32::MAX)) as u32,
            t.subsec_nanos(),
        )
    }
}

fn utime_add(t: UTime, secs: u32) -> UTime {
    UTime::new(t.sec.saturating_add(secs), t.nsec)
}

fn utime_lt(a: UTime, b: UTime) -> bool {
    (a.sec, a.nsec) < (b.sec, b.nsec)
}

// ---- wire structures ----

/// `AuthCapsInfo`: `allow_all` and the encoded capability string of one service.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct AuthCapsInfo {
    pub allow_all: bool,
    pub caps: Bytes,
}

impl Encode for AuthCapsInfo {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(1);
        buf.put_u8(u8::from(self.allow_all));
        encode_len_prefixed(buf, &self.caps);
    }
}

impl Decode for AuthCapsInfo {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        let _v = d.u8()?;
        let allow_all = d.bool()?;
        let caps = Bytes::copy_from_slice(d.len_prefixed("AuthCapsInfo caps")?);
        Ok(AuthCapsInfo { allow_all, caps })
    }
}

/// `AuthTicket` (struct_v 2): who the ticket is for and until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthTicket {
    pub name: AuthEntityName,
    pub global_id: u64,
    pub created: UTime,
    pub expires: UTime,
    pub caps: AuthCapsInfo,
    pub flags: u32,
}

impl Encode for AuthTicket {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(2);
        self.name.encode(buf);
        buf.put_u64_le(self.global_id);
        buf.put_u64_le(AUTH_UID_DEFAULT);
        self.created.encode(buf);
        self.expires.encode(buf);
        self.caps.encode(buf);
        buf.put_u32_le(self.flags);
    }
}

impl Decode for AuthTicket {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        let v = d.u8()?;
        let name = AuthEntityName::decode(d)?;
        let global_id = d.u64()?;
        if v >= 2 {
            let _auid = d.u64()?;
        }
        Ok(AuthTicket {
            name,
            global_id,
            created: UTime::decode(d)?,
            expires: UTime::decode(d)?,
            caps: AuthCapsInfo::decode(d)?,
            flags: d.u32()?,
        })
    }
}

/// `CephXTicketBlob`: a ticket sealed with a service secret, opaque to the client.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TicketBlob {
    pub secret_id: u64,
    pub blob: Bytes,
}

impl Encode for TicketBlob {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(1);
        buf.put_u64_le(self.secret_id);
        encode_len_prefixed(buf, &self.blob);
    }
}

impl Decode for TicketBlob {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        let _v = d.u8()?;
        let secret_id = d.u64()?;
        let blob = Bytes::copy_from_slice(d.len_prefixed("ticket blob")?);
        Ok(TicketBlob { secret_id, blob })
    }
}

/// `CephXAuthenticate` v3: the client's answer to the monitor's challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authenticate {
    pub client_challenge: u64,
    /// The proof: [`challenge_key`] of the two challenges under the client's key.
    pub key: u64,
    pub old_ticket: TicketBlob,
    /// Services whose tickets (and, since nautilus, a connection secret) come back in AUTH_DONE.
    pub other_keys: u32,
}

impl Encode for Authenticate {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(3);
        buf.put_u64_le(self.client_challenge);
        buf.put_u64_le(self.key);
        self.old_ticket.encode(buf);
        buf.put_u32_le(self.other_keys);
    }
}

impl Decode for Authenticate {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        let v = d.u8()?;
        let client_challenge = d.u64()?;
        let key = d.u64()?;
        let old_ticket = TicketBlob::decode(d)?;
        let other_keys = if v >= 2 { d.u32()? } else { 0 };
        Ok(Authenticate {
            client_challenge,
            key,
            old_ticket,
            other_keys,
        })
    }
}

/// `CephXAuthorize` v2, sealed with the ticket's session key inside an authorizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Authorize {
    nonce: u64,
    have_challenge: bool,
    server_challenge_plus_one: u64,
}

impl Authorize {
    fn encode(&self) -> BytesMut {
        let mut b = BytesMut::with_capacity(18);
        b.put_u8(2);
        b.put_u64_le(self.nonce);
        b.put_u8(u8::from(self.have_challenge));
        b.put_u64_le(self.server_challenge_plus_one);
        b
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        let v = d.u8()?;
        let nonce = d.u64()?;
        let (have_challenge, server_challenge_plus_one) = if v >= 2 {
            (d.bool()?, d.u64()?)
        } else {
            (false, 0)
        };
        Ok(Authorize {
            nonce,
            have_challenge,
            server_challenge_plus_one,
        })
    }
}

/// Ceph's `cephx_calc_client_server_challenge`: encrypt `{server_challenge, client_challenge}` with
/// `encode_encrypt` under the client's key, then XOR the result (length prefix included) as
/// little-endian u64 words.
pub fn challenge_key(
    secret: &CryptoKey,
    server_challenge: u64,
    client_challenge: u64,
) -> Result<u64, CryptoError> {
    let mut blob = [0u8; 16];
    blob[..8].copy_from_slice(&server_challenge.to_le_bytes());
    blob[8..].copy_from_slice(&client_challenge.to_le_bytes());
    let mut enc = BytesMut::new();
    encode_encrypt(secret, &blob, &mut enc)?;
    Ok(enc
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
        .fold(0, |k, w| k ^ w))
}

/// One service ticket as the client keeps it: the session key for the service and the sealed ticket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceTicket {
    pub service_id: u32,
    pub session_key: CryptoKey,
    /// How long the ticket is valid from issue.
    pub validity: UTime,
    pub ticket: TicketBlob,
}

/// One grant for [`encode_ticket_reply`]: what the monitor seals into a service ticket.
struct Grant<'a> {
    service_id: u32,
    session_key: &'a CryptoKey,
    validity: UTime,
    ticket: TicketBlob,
}

/// `cephx_build_service_ticket_reply` (unencrypted tickets): for each grant, `{session key,
/// validity}` sealed with `principal` and the ticket blob in the clear.
fn encode_ticket_reply(
    principal: &CryptoKey,
    grants: &[Grant<'_>],
    out: &mut BytesMut,
) -> Result<(), CryptoError> {
    out.put_u8(1);
    out.put_u32_le(grants.len() as u32);
    for g in grants {
        out.put_u32_le(g.service_id);
        out.put_u8(1);
        let mut a = BytesMut::new();
        a.put_u8(1);
        g.session_key.encode(&mut a);
        g.validity.encode(&mut a);
        encode_encrypt(principal, &a, out)?;
        out.put_u8(0); // ticket not encrypted
        let mut blob = BytesMut::new();
        g.ticket.encode(&mut blob);
        encode_len_prefixed(out, &blob);
    }
    Ok(())
}

/// `CephXTicketManager::verify_service_ticket_reply`: open each grant with `principal`.
/// `old_session_key` opens tickets the monitor encrypted (renewals).
pub fn decode_ticket_reply(
    principal: &CryptoKey,
    old_session_key: Option<&CryptoKey>,
    d: &mut Decoder<'_>,
) -> Result<Vec<ServiceTicket>, CephxError> {
    let _v = d.u8()?;
    let n = d.u32()?;
    // Each grant takes well over 16 bytes: bound the count by the input before allocating.
    if n as usize > d.remaining() / 16 {
        return Err(DecodeError::invalid("service ticket reply", format!("{n} tickets")).into());
    }
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let service_id = d.u32()?;
        let _v = d.u8()?;
        let a = decode_decrypt(principal, d)?;
        let ad = &mut Decoder::new(&a);
        let _v = ad.u8()?;
        let session_key = CryptoKey::decode(ad)?;
        let validity = UTime::decode(ad)?;
        let encrypted = d.bool()?;
        let blob = if encrypted {
            let key =
                old_session_key.ok_or_else(|| refused("encrypted ticket without a session"))?;
            decode_decrypt(key, d)?
        } else {
            zeroize::Zeroizing::new(d.len_prefixed("service ticket")?.to_vec())
        };
        let ticket = TicketBlob::decode(&mut Decoder::new(&blob))?;
        out.push(ServiceTicket {
            service_id,
            session_key,
            validity,
            ticket,
        });
    }
    Ok(out)
}

/// `CephXServiceTicketInfo`: what a ticket blob holds once opened with the service secret.
fn seal_ticket(
    service_secret: &CryptoKey,
    secret_id: u64,
    ticket: &AuthTicket,
    session_key: &CryptoKey,
) -> Result<TicketBlob, CryptoError> {
    let mut b = BytesMut::new();
    b.put_u8(1);
    ticket.encode(&mut b);
    session_key.encode(&mut b);
    Ok(TicketBlob {
        secret_id,
        blob: encrypt_envelope(service_secret, &b)?.into(),
    })
}

fn open_ticket(
    service_secret: &CryptoKey,
    blob: &TicketBlob,
) -> Result<(AuthTicket, CryptoKey), CephxError> {
    let pt = decrypt_envelope(service_secret, &blob.blob)?;
    let d = &mut Decoder::new(&pt);
    let _v = d.u8()?;
    let ticket = AuthTicket::decode(d)?;
    let session_key = CryptoKey::decode(d)?;
    Ok((ticket, session_key))
}

/// What authentication established for one connection: the AUTH_SIGNATURE key and, in secure mode,
/// the connection secret (AES-GCM key and nonces). Neither appears in `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SessionSecrets {
    pub session_key: Vec<u8>,
    pub connection_secret: Vec<u8>,
}

impl fmt::Debug for SessionSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionSecrets")
            .field(
                "session_key",
                &format_args!("<{} bytes>", self.session_key.len()),
            )
            .field(
                "connection_secret",
                &format_args!("<{} bytes>", self.connection_secret.len()),
            )
            .finish()
    }
}

impl Drop for SessionSecrets {
    fn drop(&mut self) {
        self.session_key.zeroize();
        self.connection_secret.zeroize();
    }
}

// ---- client ----

#[derive(Default)]
struct TicketCache {
    global_id: u64,
    tickets: HashMap<u32, ServiceTicket>,
}

/// A cephx client identity (name + key) and the tickets its monitor sessions earned, shared by every
/// connection of a messenger. A connection to a monitor refreshes the tickets; a connection to any
/// other daemon builds an authorizer from the ticket for that daemon's type.
pub struct CephxClient {
    name: AuthEntityName,
    key: CryptoKey,
    want_keys: EntityTypes,
    cache: Mutex<TicketCache>,
}

impl fmt::Debug for CephxClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CephxClient")
            .field("name", &self.name.to_string())
            .field("want_keys", &self.want_keys)
            .finish_non_exhaustive()
    }
}

impl CephxClient {
    pub fn new(name: AuthEntityName, key: CryptoKey) -> Self {
        CephxClient {
            name,
            key,
            want_keys: DEFAULT_WANT_KEYS,
            cache: Mutex::new(TicketCache::default()),
        }
    }

    /// `name`'s key from `keyring`.
    pub fn from_keyring(
        keyring: &Keyring,
        name: &AuthEntityName,
        keyring_path: &str,
    ) -> Result<Self, super::KeyringError> {
        Ok(CephxClient::new(
            name.clone(),
            keyring.key_for(name, keyring_path)?.clone(),
        ))
    }

    pub fn name(&self) -> &AuthEntityName {
        &self.name
    }

    /// The global id the monitor gave this client (0 before any monitor session).
    pub fn global_id(&self) -> u64 {
        self.lock().global_id
    }

    /// A copy of the cached ticket for `service_id`.
    pub fn ticket(&self, service_id: u32) -> Option<ServiceTicket> {
        self.lock().tickets.get(&service_id).cloned()
    }

    /// Install tickets obtained elsewhere (another messenger of the same client).
    pub fn add_tickets(&self, global_id: u64, tickets: impl IntoIterator<Item = ServiceTicket>) {
        let mut c = self.lock();
        c.global_id = global_id;
        for t in tickets {
            c.tickets.insert(t.service_id, t);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TicketCache> {
        // A poisoned cache is still a valid map: keep using it.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Begin authenticating toward a daemon of `peer_type`. Returns the AUTH_REQUEST payload and the
    /// per-connection state that answers the server's next frames.
    pub fn start(
        &self,
        peer_type: u8,
        rng: &mut (impl Rng + CryptoRng),
    ) -> Result<(Bytes, CephxClientSession), CephxError> {
        if peer_type == entity_type::MON {
            let c = self.lock();
            // Reclaiming a global id needs the old AUTH ticket; without one, start afresh.
            let global_id = if c.tickets.contains_key(&SERVICE_AUTH) {
                c.global_id
            } else {
                0
            };
            let mut b = BytesMut::new();
            b.put_u8(AUTH_MODE_MON);
            self.name.encode(&mut b);
            b.put_u64_le(global_id);
            return Ok((b.freeze(), CephxClientSession::MonChallenge));
        }
        let service_id = u32::from(peer_type);
        let (global_id, t) = {
            let c = self.lock();
            let t = c.tickets.get(&service_id).cloned().ok_or_else(|| {
                CephxError::Unavailable(format!(
                    "no cephx ticket for service {} (authenticate with a monitor first)",
                    entity_type_name(peer_type)
                ))
            })?;
            (c.global_id, t)
        };
        let mut base = BytesMut::new();
        base.put_u8(AUTH_MODE_AUTHORIZER);
        base.put_u64_le(global_id);
        base.put_u32_le(service_id);
        t.ticket.encode(&mut base);
        let nonce: u64 = rng.random();
        let mut bl = base.clone();
        let msg = Authorize {
            nonce,
            have_challenge: false,
            server_challenge_plus_one: 0,
        };
        encode_encrypt(&t.session_key, &msg.encode(), &mut bl)?;
        Ok((
            bl.freeze(),
            CephxClientSession::Authorizer {
                base: base.freeze(),
                nonce,
                session_key: t.session_key,
            },
        ))
    }
}

/// A client's cephx state on one connection.
#[derive(Debug)]
pub enum CephxClientSession {
    /// Sent AUTH_REQUEST to a monitor; waiting for its challenge.
    MonChallenge,
    /// Answered the challenge; waiting for AUTH_DONE.
    MonAuthenticate,
    /// Sent an authorizer to a service.
    Authorizer {
        base: Bytes,
        nonce: u64,
        session_key: CryptoKey,
    },
}

impl CephxClientSession {
    /// AUTH_REPLY_MORE: returns the AUTH_REQUEST_MORE payload.
    pub fn handle_reply_more(
        &mut self,
        client: &CephxClient,
        payload: &[u8],
        rng: &mut (impl Rng + CryptoRng),
    ) -> Result<Bytes, CephxError> {
        match self {
            CephxClientSession::MonChallenge => {
                let d = &mut Decoder::new(payload);
                let _v = d.u8()?;
                let server_challenge = d.u64()?;
                let client_challenge: u64 = rng.random();
                let key = challenge_key(&client.key, server_challenge, client_challenge)?;
                let old_ticket = client
                    .lock()
                    .tickets
                    .get(&SERVICE_AUTH)
                    .map(|t| t.ticket.clone())
                    .unwrap_or_default();
                let mut b = BytesMut::new();
                b.put_u16_le(CEPHX_GET_AUTH_SESSION_KEY);
                Authenticate {
                    client_challenge,
                    key,
                    old_ticket,
                    other_keys: client.want_keys.bits() | SERVICE_AUTH,
                }
                .encode(&mut b);
                *self = CephxClientSession::MonAuthenticate;
                Ok(b.freeze())
            }
            CephxClientSession::MonAuthenticate => {
                Err(refused("monitor sent a second AUTH_REPLY_MORE"))
            }
            CephxClientSession::Authorizer {
                base,
                nonce,
                session_key,
            } => {
                let pt = decrypt_envelope(session_key, payload)?;
                let d = &mut Decoder::new(&pt);
                let _v = d.u8()?;
                let server_challenge = d.u64()?;
                let mut bl = BytesMut::from(&base[..]);
                let msg = Authorize {
                    nonce: *nonce,
                    have_challenge: true,
                    server_challenge_plus_one: server_challenge.wrapping_add(1),
                };
                encode_encrypt(session_key, &msg.encode(), &mut bl)?;
                Ok(bl.freeze())
            }
        }
    }

    /// AUTH_DONE: verify the server's answer, keep the tickets, return the session secrets.
    pub fn handle_done(
        &mut self,
        client: &CephxClient,
        global_id: u64,
        payload: &[u8],
    ) -> Result<SessionSecrets, CephxError> {
        match self {
            CephxClientSession::MonChallenge => {
                Err(refused("AUTH_DONE before the cephx challenge"))
            }
            CephxClientSession::MonAuthenticate => {
                let d = &mut Decoder::new(payload);
                let request_type = d.u16()?;
                let status = d.i32()?;
                if request_type != CEPHX_GET_AUTH_SESSION_KEY || status != 0 {
                    return Err(refused(format!(
                        "monitor answered request {request_type:#x} with status {status}"
                    )));
                }
                let old = client.ticket(SERVICE_AUTH).map(|t| t.session_key);
                let tickets = decode_ticket_reply(&client.key, old.as_ref(), d).map_err(|e| {
                    refused(format!(
                        "cannot open the monitor's reply with the key of {}: {e}",
                        client.name
                    ))
                })?;
                let auth = tickets
                    .iter()
                    .find(|t| t.service_id == SERVICE_AUTH)
                    .cloned()
                    .ok_or_else(|| refused("monitor's reply has no AUTH ticket"))?;
                let mut secrets = SessionSecrets {
                    session_key: auth.session_key.secret().to_vec(),
                    connection_secret: Vec::new(),
                };
                let mut all = tickets;
                // We always send other_keys, so a (nautilus+) monitor always answers with both.
                let cbl = d.len_prefixed("connection secret")?;
                if !cbl.is_empty() {
                    let pt = decode_decrypt(&auth.session_key, &mut Decoder::new(cbl))?;
                    secrets.connection_secret = Decoder::new(&pt)
                        .len_prefixed("connection secret")?
                        .to_vec();
                }
                let extra = d.len_prefixed("extra tickets")?;
                if !extra.is_empty() {
                    all.extend(decode_ticket_reply(
                        &auth.session_key,
                        None,
                        &mut Decoder::new(extra),
                    )?);
                }
                client.add_tickets(global_id, all);
                Ok(secrets)
            }
            CephxClientSession::Authorizer {
                nonce, session_key, ..
            } => {
                let d = &mut Decoder::new(payload);
                let pt = decode_decrypt(session_key, d)?;
                let r = &mut Decoder::new(&pt);
                let v = r.u8()?;
                let nonce_plus_one = r.u64()?;
                if nonce_plus_one != nonce.wrapping_add(1) {
                    return Err(refused("authorizer reply has the wrong nonce"));
                }
                let connection_secret = if v >= 2 {
                    r.len_prefixed("connection secret")?.to_vec()
                } else {
                    Vec::new()
                };
                Ok(SessionSecrets {
                    session_key: session_key.secret().to_vec(),
                    connection_secret,
                })
            }
        }
    }
}

// ---- monitor role ----

/// The long-term secret of each service (AUTH, MON, OSD, MGR, MDS) a monitor seals tickets with and
/// a service opens them with. `Debug` shows service ids and secret ids only.
#[derive(Clone, Default)]
pub struct ServiceSecrets {
    entries: Vec<(u32, u64, CryptoKey)>,
}

impl fmt::Debug for ServiceSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(s, id, _)| (s, id)))
            .finish()
    }
}

impl ServiceSecrets {
    /// Fresh random secrets (secret id 1) for AUTH and every service in `services`.
    pub fn generate(services: &[u8], rng: &mut (impl Rng + CryptoRng), created: UTime) -> Self {
        let mut s = ServiceSecrets::default();
        s.insert(SERVICE_AUTH, 1, CryptoKey::generate(rng, created));
        for &svc in services {
            s.insert(u32::from(svc), 1, CryptoKey::generate(rng, created));
        }
        s
    }

    pub fn insert(&mut self, service_id: u32, secret_id: u64, key: CryptoKey) {
        self.entries.retain(|(s, _, _)| *s != service_id);
        self.entries.push((service_id, secret_id, key));
    }

    pub fn get(&self, service_id: u32) -> Option<(u64, &CryptoKey)> {
        self.entries
            .iter()
            .find(|(s, _, _)| *s == service_id)
            .map(|(_, id, k)| (*id, k))
    }

    /// The [`CephxService`] that verifies authorizers for `service_id` with the same secret.
    pub fn service(&self, service_id: u8, anchor: WallAnchor) -> Option<CephxService> {
        let (secret_id, key) = self.get(u32::from(service_id))?;
        Some(CephxService::new(
            u32::from(service_id),
            secret_id,
            key.clone(),
            anchor,
        ))
    }
}

/// msgr as a cephx authority: checks clients against a keyring and issues session keys, tickets and
/// connection secrets.
#[derive(Debug)]
pub struct CephxMonitor {
    keyring: Keyring,
    services: ServiceSecrets,
    anchor: WallAnchor,
    /// Lifetime of the AUTH ticket (`auth_mon_ticket_ttl`, 12 h) and service tickets
    /// (`auth_service_ticket_ttl`, 1 h), in seconds.
    pub mon_ticket_ttl: u32,
    pub service_ticket_ttl: u32,
}

/// A monitor's cephx state on one connection: the challenge it sent.
#[derive(Debug)]
pub struct CephxMonSession {
    name: AuthEntityName,
    global_id: u64,
    server_challenge: u64,
}

impl CephxMonSession {
    pub fn name(&self) -> &AuthEntityName {
        &self.name
    }
}

impl CephxMonitor {
    pub fn new(keyring: Keyring, services: ServiceSecrets, anchor: WallAnchor) -> Self {
        CephxMonitor {
            keyring,
            services,
            anchor,
            mon_ticket_ttl: 12 * 3600,
            service_ticket_ttl: 3600,
        }
    }

    pub fn services(&self) -> &ServiceSecrets {
        &self.services
    }

    /// AUTH_REQUEST (mode mon): `name` asks to authenticate. Returns the challenge for AUTH_REPLY_MORE.
    pub fn start(
        &self,
        payload: &[u8],
        assign_global_id: impl FnOnce() -> u64,
        rng: &mut (impl Rng + CryptoRng),
    ) -> Result<(Bytes, CephxMonSession), CephxError> {
        let d = &mut Decoder::new(payload);
        let mode = d.u8()?;
        if mode != AUTH_MODE_MON {
            return Err(refused(format!(
                "this monitor accepts only mode mon (10) requests, got mode {mode}"
            )));
        }
        let name = AuthEntityName::decode(d)?;
        let _claimed_global_id = d.u64()?;
        // As Ceph's CephxServiceHandler::start_session: challenge whoever asks, without looking the
        // name up, so that the answer does not tell a prober which entities exist. An unknown entity
        // fails at the proof, like a wrong key.
        let server_challenge = rng.random_range(1..=u64::MAX);
        let mut b = BytesMut::with_capacity(9);
        b.put_u8(1);
        b.put_u64_le(server_challenge);
        Ok((
            b.freeze(),
            CephxMonSession {
                name,
                global_id: assign_global_id(),
                server_challenge,
            },
        ))
    }

    /// AUTH_REQUEST_MORE: verify the proof, then build the AUTH_DONE payload (`con_secret_len` bytes of
    /// connection secret: 64 in secure mode, 0 in crc mode). Returns the payload, the global id and
    /// the secrets.
    pub fn finish(
        &self,
        s: &CephxMonSession,
        payload: &[u8],
        con_secret_len: usize,
        now: Instant,
        rng: &mut (impl Rng + CryptoRng),
    ) -> Result<(Bytes, u64, SessionSecrets), CephxError> {
        let d = &mut Decoder::new(payload);
        let request_type = d.u16()?;
        if request_type != CEPHX_GET_AUTH_SESSION_KEY {
            return Err(refused(format!(
                "unsupported cephx request {request_type:#x}"
            )));
        }
        let req = Authenticate::decode(d)?;
        let entry = self
            .keyring
            .get(&s.name)
            .ok_or_else(|| refused(format!("unknown entity {}", s.name)))?;
        let expected = challenge_key(&entry.key, s.server_challenge, req.client_challenge)?;
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            &req.key.to_le_bytes()[..],
            &expected.to_le_bytes()[..],
        )) {
            return Err(refused(format!(
                "{} did not prove its key (wrong key)",
                s.name
            )));
        }
        if !req.old_ticket.blob.is_empty() {
            // A reclaim: the old AUTH ticket must be ours and for the same entity.
            let (_, auth_secret) = self.auth_secret()?;
            let (old, _) = open_ticket(auth_secret, &req.old_ticket)
                .map_err(|_| refused("old ticket does not open"))?;
            if old.name != s.name {
                return Err(refused("old ticket belongs to another entity"));
            }
        }
        let wall = self.anchor.utime(now);
        let session_key = CryptoKey::generate(rng, wall);
        let ticket = AuthTicket {
            name: s.name.clone(),
            global_id: s.global_id,
            created: wall,
            expires: utime_add(wall, self.mon_ticket_ttl),
            caps: caps_info(entry.caps_for("mon")),
            flags: 0,
        };
        let (auth_id, auth_secret) = self.auth_secret()?;
        let mut out = BytesMut::new();
        out.put_u16_le(CEPHX_GET_AUTH_SESSION_KEY);
        out.put_i32_le(0);
        encode_ticket_reply(
            &entry.key,
            &[Grant {
                service_id: SERVICE_AUTH,
                session_key: &session_key,
                validity: UTime::new(self.mon_ticket_ttl, 0),
                ticket: seal_ticket(auth_secret, auth_id, &ticket, &session_key)?,
            }],
            &mut out,
        )?;
        let mut connection_secret = vec![0u8; con_secret_len];
        rng.fill(connection_secret.as_mut_slice());
        let mut secret_str = BytesMut::new();
        encode_len_prefixed(&mut secret_str, &connection_secret);
        let mut cbl = BytesMut::new();
        encode_encrypt(&session_key, &secret_str, &mut cbl)?;
        encode_len_prefixed(&mut out, &cbl);
        // Service tickets for what the client asked, each with its own session key.
        let keys: Vec<(u32, CryptoKey)> = (0..6)
            .map(|b| 1u32 << b)
            .filter(|svc| req.other_keys & svc != 0 && *svc != SERVICE_AUTH)
            .filter(|svc| self.services.get(*svc).is_some())
            .map(|svc| (svc, CryptoKey::generate(rng, wall)))
            .collect();
        let mut grants = Vec::new();
        for (svc, key) in &keys {
            let Some((secret_id, secret)) = self.services.get(*svc) else {
                continue;
            };
            let svc_name = u8::try_from(*svc).map_or("unknown", entity_type_name);
            let t = AuthTicket {
                expires: utime_add(wall, self.service_ticket_ttl),
                caps: caps_info(entry.caps_for(svc_name)),
                ..ticket.clone()
            };
            grants.push(Grant {
                service_id: *svc,
                session_key: key,
                validity: UTime::new(self.service_ticket_ttl, 0),
                ticket: seal_ticket(secret, secret_id, &t, key)?,
            });
        }
        let mut extra = BytesMut::new();
        if !grants.is_empty() {
            encode_ticket_reply(&session_key, &grants, &mut extra)?;
        }
        encode_len_prefixed(&mut out, &extra);
        Ok((
            out.freeze(),
            s.global_id,
            SessionSecrets {
                session_key: session_key.secret().to_vec(),
                connection_secret,
            },
        ))
    }

    fn auth_secret(&self) -> Result<(u64, &CryptoKey), CephxError> {
        self.services
            .get(SERVICE_AUTH)
            .ok_or_else(|| CephxError::Unavailable("no AUTH service secret configured".into()))
    }
}

/// `AuthCapsInfo` for a capability string (encoded as Ceph stores it: a length-prefixed string).
fn caps_info(cap: Option<&str>) -> AuthCapsInfo {
    let mut b = BytesMut::new();
    if let Some(c) = cap {
        encode_len_prefixed(&mut b, c.as_bytes());
    }
    AuthCapsInfo {
        allow_all: false,
        caps: b.freeze(),
    }
}

// ---- service role ----

/// msgr as a cephx service (an OSD-like server): opens authorizers made from tickets a monitor sealed
/// with this service's secret.
#[derive(Debug)]
pub struct CephxService {
    service_id: u32,
    secret_id: u64,
    secret: CryptoKey,
    anchor: WallAnchor,
}

/// What a service concluded from one authorizer.
#[derive(Debug)]
pub enum ServiceVerdict {
    /// Valid so far; send this challenge in AUTH_REPLY_MORE and wait for the answer.
    Challenge {
        payload: Bytes,
        server_challenge: u64,
    },
    /// Authenticated: AUTH_DONE with `payload`.
    Done {
        payload: Bytes,
        name: AuthEntityName,
        global_id: u64,
        secrets: SessionSecrets,
    },
}

impl CephxService {
    pub fn new(service_id: u32, secret_id: u64, secret: CryptoKey, anchor: WallAnchor) -> Self {
        CephxService {
            service_id,
            secret_id,
            secret,
            anchor,
        }
    }

    /// Verify an authorizer (AUTH_REQUEST or AUTH_REQUEST_MORE payload). `challenge` is the one we
    /// sent on this connection, if any: without it the answer is always a challenge (as Ceph's
    /// msgr2 services do), with it the authorizer must carry `challenge + 1`.
    pub fn verify(
        &self,
        payload: &[u8],
        challenge: Option<u64>,
        con_secret_len: usize,
        now: Instant,
        rng: &mut (impl Rng + CryptoRng),
    ) -> Result<ServiceVerdict, CephxError> {
        let d = &mut Decoder::new(payload);
        let v = d.u8()?;
        if v != AUTH_MODE_AUTHORIZER {
            return Err(refused(format!(
                "expected a cephx authorizer (mode 1), got mode {v}"
            )));
        }
        let global_id = d.u64()?;
        let service_id = d.u32()?;
        let blob = TicketBlob::decode(d)?;
        if service_id != self.service_id {
            return Err(refused(format!(
                "authorizer is for service {service_id}, we are service {}",
                self.service_id
            )));
        }
        if blob.secret_id != self.secret_id && blob.secret_id != SECRET_ID_GENERAL {
            return Err(refused(format!(
                "ticket sealed with secret id {}, we have {}",
                blob.secret_id, self.secret_id
            )));
        }
        let (ticket, session_key) = open_ticket(&self.secret, &blob)
            .map_err(|e| refused(format!("ticket does not open with our service secret: {e}")))?;
        if ticket.global_id != global_id {
            return Err(refused(format!(
                "authorizer claims global id {global_id}, its ticket says {}",
                ticket.global_id
            )));
        }
        let wall = self.anchor.utime(now);
        if utime_lt(ticket.expires, wall) {
            return Err(refused(format!("ticket of {} expired", ticket.name)));
        }
        let auth = decode_decrypt(&session_key, d).map_err(|e| {
            refused(format!(
                "authorizer does not open with the ticket's session key: {e}"
            ))
        })?;
        let auth = Authorize::decode(&mut Decoder::new(&auth))?;
        let Some(c) = challenge.filter(|_| auth.have_challenge) else {
            let server_challenge: u64 = rng.random();
            let mut b = BytesMut::with_capacity(9);
            b.put_u8(1);
            b.put_u64_le(server_challenge);
            let ct = encrypt_envelope(&session_key, &b)?;
            return Ok(ServiceVerdict::Challenge {
                payload: ct.into(),
                server_challenge,
            });
        };
        if auth.server_challenge_plus_one != c.wrapping_add(1) {
            return Err(refused(
                "authorizer answered the wrong challenge (replayed?)",
            ));
        }
        let mut connection_secret = vec![0u8; con_secret_len];
        rng.fill(connection_secret.as_mut_slice());
        let mut reply = BytesMut::new();
        reply.put_u8(if con_secret_len > 0 { 2 } else { 1 });
        reply.put_u64_le(auth.nonce.wrapping_add(1));
        if con_secret_len > 0 {
            encode_len_prefixed(&mut reply, &connection_secret);
        }
        let mut out = BytesMut::new();
        encode_encrypt(&session_key, &reply, &mut out)?;
        Ok(ServiceVerdict::Done {
            payload: out.freeze(),
            name: ticket.name,
            global_id,
            secrets: SessionSecrets {
                session_key: session_key.secret().to_vec(),
                connection_secret,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn admin() -> AuthEntityName {
        AuthEntityName::new(entity_type::CLIENT, "admin")
    }

    fn setup() -> (CephxMonitor, CephxClient, StdRng, Instant) {
        let mut rng = StdRng::seed_from_u64(7);
        let now = Instant::now();
        let anchor = WallAnchor::new(now, Duration::from_secs(1_700_000_000));
        let key = CryptoKey::generate(&mut rng, UTime::default());
        let mut kr = Keyring::default();
        kr.insert(super::super::KeyringEntry {
            name: admin(),
            key: key.clone(),
            caps: vec![("mon".into(), "allow *".into())],
        });
        let secrets = ServiceSecrets::generate(
            &[entity_type::MON, entity_type::OSD],
            &mut rng,
            UTime::default(),
        );
        (
            CephxMonitor::new(kr, secrets, anchor),
            CephxClient::new(admin(), key),
            rng,
            now,
        )
    }

    fn mon_session(
        mon: &CephxMonitor,
        client: &CephxClient,
        rng: &mut StdRng,
        now: Instant,
    ) -> Result<(SessionSecrets, SessionSecrets), CephxError> {
        let (req, mut cs) = client.start(entity_type::MON, rng)?;
        let (challenge, ms) = mon.start(&req, || 4100, rng)?;
        let more = cs.handle_reply_more(client, &challenge, rng)?;
        let (done, gid, server) = mon.finish(&ms, &more, 64, now, rng)?;
        let client_secrets = cs.handle_done(client, gid, &done)?;
        Ok((client_secrets, server))
    }

    #[test]
    fn client_and_monitor_agree_then_service_accepts_authorizer() {
        let (mon, client, mut rng, now) = setup();
        let (c, s) = mon_session(&mon, &client, &mut rng, now).unwrap();
        assert_eq!(c, s);
        assert_eq!(c.connection_secret.len(), 64);
        assert_eq!(client.global_id(), 4100);
        assert!(client.ticket(u32::from(entity_type::OSD)).is_some());
        assert!(
            client.ticket(u32::from(entity_type::MGR)).is_none(),
            "no MGR secret configured"
        );
        assert!(!format!("{c:?}").contains(&format!("{:?}", c.session_key)));

        let osd = mon
            .services()
            .service(entity_type::OSD, mon.anchor)
            .unwrap();
        let (authz, mut cs) = client.start(entity_type::OSD, &mut rng).unwrap();
        let ServiceVerdict::Challenge {
            payload,
            server_challenge,
        } = osd.verify(&authz, None, 64, now, &mut rng).unwrap()
        else {
            panic!("expected a challenge")
        };
        let answer = cs.handle_reply_more(&client, &payload, &mut rng).unwrap();
        // The first authorizer (no challenge answered) cannot finish the handshake.
        assert!(matches!(
            osd.verify(&authz, Some(server_challenge), 64, now, &mut rng),
            Ok(ServiceVerdict::Challenge { .. })
        ));
        let ServiceVerdict::Done {
            payload,
            name,
            global_id,
            secrets,
        } = osd
            .verify(&answer, Some(server_challenge), 64, now, &mut rng)
            .unwrap()
        else {
            panic!("expected done")
        };
        assert_eq!((name, global_id), (admin(), 4100));
        assert_eq!(
            cs.handle_done(&client, global_id, &payload).unwrap(),
            secrets
        );
        // A wrong challenge is refused; an expired ticket too.
        assert!(osd
            .verify(&answer, Some(server_challenge ^ 1), 64, now, &mut rng)
            .is_err());
        let later = now + Duration::from_secs(2 * 3600);
        assert!(osd
            .verify(&answer, Some(server_challenge), 64, later, &mut rng)
            .is_err());
        // Another service's secret does not open the ticket.
        let other = CephxService::new(
            u32::from(entity_type::OSD),
            1,
            CryptoKey::generate(&mut rng, UTime::default()),
            mon.anchor,
        );
        let e = other
            .verify(&answer, Some(server_challenge), 64, now, &mut rng)
            .unwrap_err();
        assert!(e.to_string().contains("does not open"), "{e}");
    }

    #[test]
    fn wrong_key_is_refused_by_the_monitor() {
        let (mon, _, mut rng, now) = setup();
        let impostor = CephxClient::new(admin(), CryptoKey::generate(&mut rng, UTime::default()));
        let e = mon_session(&mon, &impostor, &mut rng, now).unwrap_err();
        assert!(e.to_string().contains("wrong key"), "{e}");
        let stranger = CephxClient::new(
            AuthEntityName::new(entity_type::CLIENT, "bob"),
            CryptoKey::generate(&mut rng, UTime::default()),
        );
        let e = mon_session(&mon, &stranger, &mut rng, now).unwrap_err();
        assert!(e.to_string().contains("unknown entity client.bob"), "{e}");
    }

    #[test]
    fn monitor_challenges_unknown_and_known_names_alike() {
        let (mon, client, mut rng, _) = setup();
        let stranger = CephxClient::new(
            AuthEntityName::new(entity_type::CLIENT, "bob"),
            CryptoKey::generate(&mut rng, UTime::default()),
        );
        let mut challenges = Vec::new();
        for c in [&client, &stranger] {
            let (req, _) = c.start(entity_type::MON, &mut rng).unwrap();
            let (challenge, _) = mon
                .start(&req, || 1, &mut rng)
                .expect("a challenge for any name");
            challenges.push(challenge);
        }
        assert_eq!(challenges[0].len(), challenges[1].len());
        assert_eq!(challenges[0][0], challenges[1][0]);
    }

    #[test]
    fn reclaim_with_old_ticket_and_crc_mode_secret() {
        let (mon, client, mut rng, now) = setup();
        mon_session(&mon, &client, &mut rng, now).unwrap();
        let (req, mut cs) = client.start(entity_type::MON, &mut rng).unwrap();
        let d = &mut Decoder::new(&req[1..]);
        AuthEntityName::decode(d).unwrap();
        assert_eq!(d.u64().unwrap(), 4100, "reclaims its global id");
        let (challenge, ms) = mon.start(&req, || 4100, &mut rng).unwrap();
        let more = cs.handle_reply_more(&client, &challenge, &mut rng).unwrap();
        let (done, gid, server) = mon.finish(&ms, &more, 0, now, &mut rng).unwrap();
        assert!(server.connection_secret.is_empty());
        assert_eq!(cs.handle_done(&client, gid, &done).unwrap(), server);
    }

    #[test]
    fn truncated_payloads_are_errors() {
        let (mon, client, mut rng, now) = setup();
        let (req, mut cs) = client.start(entity_type::MON, &mut rng).unwrap();
        let (challenge, ms) = mon.start(&req, || 1, &mut rng).unwrap();
        let more = cs.handle_reply_more(&client, &challenge, &mut rng).unwrap();
        let (done, gid, _) = mon.finish(&ms, &more, 64, now, &mut rng).unwrap();
        for n in 0..req.len() {
            assert!(mon.start(&req[..n], || 1, &mut rng).is_err());
        }
        for n in 0..more.len() {
            assert!(mon.finish(&ms, &more[..n], 64, now, &mut rng).is_err());
        }
        for n in 0..done.len() {
            let mut s = CephxClientSession::MonAuthenticate;
            assert!(
                s.handle_done(&client, gid, &done[..n]).is_err(),
                "prefix {n}"
            );
        }
    }
}
