//! Shared by the cephx fuzz targets (included with `#[path]`): a fixed cephx world (keys from constant
//! bytes, so runs are reproducible), real payloads of one complete exchange made with the public API
//! (the monitor's challenge, the client's proof, AUTH_DONE, an authorizer and its answers), and a
//! record reader that turns fuzz input into control frames with valid crcs.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use msgr::proto::auth::cephx::{ServiceTicket, SERVICE_AUTH};
use msgr::proto::auth::{
    CephxClient, CephxMonitor, CephxService, CryptoKey, Keyring, KeyringEntry, ServiceSecrets,
    WallAnchor,
};
use msgr::proto::codec::{FrameEncoder, Tag};
use msgr::proto::control::{ControlFrame, Hello};
use msgr::proto::types::{entity_type, AuthEntityName, EntityAddr, UTime};

pub const GLOBAL_ID: u64 = 4100;

pub struct World {
    pub admin: AuthEntityName,
    pub admin_key: CryptoKey,
    pub monitor: Arc<CephxMonitor>,
    pub service: Arc<CephxService>,
    /// The OSD ticket the monitor issued to client.admin.
    pub osd_ticket: ServiceTicket,
    pub mon_request: Bytes,
    pub mon_challenge: Bytes,
    pub mon_proof: Bytes,
    pub mon_done: Bytes,
    pub authorizer: Bytes,
    pub authorizer_challenge: Bytes,
    pub authorizer_answer: Bytes,
    pub authorizer_done: Bytes,
}

fn key(b: u8) -> CryptoKey {
    CryptoKey::new_aes([b; 16], UTime::default())
}

fn build() -> World {
    let mut rng = rand::rng();
    let now = Instant::now();
    let anchor = WallAnchor::new(now, Duration::from_secs(1_700_000_000));
    let admin = AuthEntityName::new(entity_type::CLIENT, "admin");
    let admin_key = key(1);
    let mut keyring = Keyring::default();
    keyring.insert(KeyringEntry {
        name: admin.clone(),
        key: admin_key.clone(),
        caps: vec![
            ("mon".into(), "allow *".into()),
            ("osd".into(), "allow *".into()),
        ],
    });
    let mut secrets = ServiceSecrets::default();
    secrets.insert(SERVICE_AUTH, 1, key(2));
    secrets.insert(u32::from(entity_type::MON), 1, key(3));
    secrets.insert(u32::from(entity_type::OSD), 1, key(4));
    let service = Arc::new(secrets.service(entity_type::OSD, anchor).unwrap());
    let monitor = Arc::new(CephxMonitor::new(keyring, secrets, anchor));

    let client = CephxClient::new(admin.clone(), admin_key.clone());
    let (mon_request, mut s) = client.start(entity_type::MON, &mut rng).unwrap();
    let (mon_challenge, ms) = monitor.start(&mon_request, || GLOBAL_ID, &mut rng).unwrap();
    let mon_proof = s
        .handle_reply_more(&client, &mon_challenge, &mut rng)
        .unwrap();
    let (mon_done, gid, _) = monitor.finish(&ms, &mon_proof, 64, now, &mut rng).unwrap();
    s.handle_done(&client, gid, &mon_done).unwrap();
    let osd_ticket = client.ticket(u32::from(entity_type::OSD)).unwrap();

    let (authorizer, mut a) = client.start(entity_type::OSD, &mut rng).unwrap();
    let (authorizer_challenge, challenge) = match service
        .verify(&authorizer, None, 64, now, &mut rng)
        .unwrap()
    {
        msgr::proto::auth::cephx::ServiceVerdict::Challenge {
            payload,
            server_challenge,
        } => (payload, server_challenge),
        other => panic!("{other:?}"),
    };
    let authorizer_answer = a
        .handle_reply_more(&client, &authorizer_challenge, &mut rng)
        .unwrap();
    let authorizer_done = match service
        .verify(&authorizer_answer, Some(challenge), 64, now, &mut rng)
        .unwrap()
    {
        msgr::proto::auth::cephx::ServiceVerdict::Done { payload, .. } => payload,
        other => panic!("{other:?}"),
    };
    a.handle_done(&client, GLOBAL_ID, &authorizer_done).unwrap();
    World {
        admin,
        admin_key,
        monitor,
        service,
        osd_ticket,
        mon_request,
        mon_challenge,
        mon_proof,
        mon_done,
        authorizer,
        authorizer_challenge,
        authorizer_answer,
        authorizer_done,
    }
}

pub fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(build)
}

/// A fresh client identity holding the OSD ticket (when `with_ticket`), as after a monitor session.
pub fn fresh_cephx_client(with_ticket: bool) -> Arc<CephxClient> {
    let w = world();
    let c = CephxClient::new(w.admin.clone(), w.admin_key.clone());
    if with_ticket {
        c.add_tickets(GLOBAL_ID, [w.osd_ticket.clone()]);
    }
    Arc::new(c)
}

// Frames with valid crcs are built as in the connection targets.
pub use crate::common::{banner, frame, raw_frame};

/// The banner and a HELLO from an `entity_type` peer that sees us at `peer_addr`: where every cephx
/// target's stream starts.
pub fn hello_stream(enc: &mut FrameEncoder, entity_type: u8, peer_addr: EntityAddr) -> Vec<u8> {
    let mut stream = banner();
    stream.extend(frame(
        enc,
        &ControlFrame::Hello(Hello {
            entity_type,
            peer_addr,
        }),
    ));
    stream
}

/// Records of kinds 4 and 5 (mod 6), the same in every cephx target: kind 4, a control frame with
/// valid crcs whose tag is the body's first byte and whose payload is the rest; kind 5, the body as
/// raw bytes.
pub fn stray_record(enc: &mut FrameEncoder, kind: u8, body: &[u8]) -> Vec<u8> {
    if kind % 6 != 4 {
        return body.to_vec();
    }
    match body.split_first() {
        Some((&t, p)) => raw_frame(enc, Tag::try_from(t % 21).unwrap_or(Tag::Hello), p),
        None => Vec::new(),
    }
}

/// The read size steered by bits 4..8 of byte 0: 0 feeds the stream whole, else in reads of 29 * k.
pub fn read_size(steer: u8) -> usize {
    match steer >> 4 {
        0 => 0,
        k => usize::from(k) * 29,
    }
}

/// `real` with `mask` XORed over it (cyclically); mask bytes past `real`'s length are appended, so
/// the fuzzer can both corrupt and extend a real payload. An empty mask leaves it unchanged.
pub fn xor(real: &[u8], mask: &[u8]) -> Bytes {
    let mut v = real.to_vec();
    if v.is_empty() {
        return Bytes::copy_from_slice(mask);
    }
    for (i, m) in mask.iter().enumerate() {
        let n = v.len();
        if i < n || i >= 2 * real.len() {
            v[i % n] ^= m;
        } else {
            v.push(*m);
        }
    }
    v.into()
}

/// Reads fuzz input as records `kind u8 | len le16 | len bytes` (the last record takes what is left).
pub struct Records<'a>(pub &'a [u8]);

impl<'a> Iterator for Records<'a> {
    type Item = (u8, &'a [u8]);
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (&kind, rest) = self.0.split_first()?;
        let len = match rest {
            [a, b, ..] => usize::from(u16::from_le_bytes([*a, *b])),
            _ => 0,
        };
        let rest = rest.get(2..).unwrap_or(&[]);
        let len = len.min(rest.len());
        let (body, tail) = rest.split_at(len);
        self.0 = tail;
        Some((kind, body))
    }
}

/// As `common::drive`, for a connection that must never authenticate: feeds `stream` in reads of
/// `read` bytes (0 = whole), refuses any `Connected` / `Message` / `SessionRequest` event, checks the
/// end state (failed without transport, or waiting with it), then fires the pending timer.
pub fn drive_unauthenticated(
    conn: &mut msgr::proto::conn::Connection,
    now: Instant,
    stream: &[u8],
    read: usize,
) {
    let mut failed = pump_unauthenticated(conn, now);
    let read = if read == 0 { stream.len().max(1) } else { read };
    for chunk in stream.chunks(read) {
        conn.handle_input(now, chunk);
        failed |= pump_unauthenticated(conn, now);
    }
    if failed {
        assert!(!conn.has_transport(), "failed but kept its transport");
    } else {
        assert!(conn.has_transport() && conn.phase() != msgr::proto::Phase::Closed);
    }
    if let Some(t) = conn.poll_timeout() {
        conn.handle_timeout(t);
        pump_unauthenticated(conn, t);
    }
}

/// Takes output and events; true if the transport failed.
fn pump_unauthenticated(conn: &mut msgr::proto::conn::Connection, now: Instant) -> bool {
    use msgr::proto::Event;
    let mut failed = false;
    let mut out = Vec::new();
    loop {
        out.clear();
        conn.poll_transmit(now, &mut out);
        let Some(ev) = conn.poll_event() else { break };
        match ev {
            Event::Connected { .. } | Event::Message(_) | Event::SessionRequest(_) => {
                panic!("got past authentication: {ev:?}")
            }
            Event::TransportDown(_) | Event::Reset(_) => failed = true,
            _ => {}
        }
    }
    assert_ne!(conn.phase(), msgr::proto::Phase::Ready);
    failed
}
