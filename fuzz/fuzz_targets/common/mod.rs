//! Shared by the connection fuzz targets: configs, valid handshake prefixes built with the public API,
//! an owner loop that feeds input in chunks, and the invariants checked after every input.
//!
//! Input layout: if it starts with `c` (as a banner does) it is fed whole, as is, so the real Ceph
//! streams in tests/data seed the corpus directly. Otherwise byte 0 steers: bit 0 set = prepend a valid
//! prefix of the handshake, bits 1..4 = how deep (banner, + HELLO, + auth, + ident), bits 4..8 = the
//! read size pattern; the rest is the hostile stream.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use msgr::proto::auth::{AuthNoneRequest, AUTH_METHOD_NONE, CON_MODE_CRC};
use msgr::proto::banner::Banner;
use msgr::proto::conn::{
    Config, Connection, Policy, CEPH_FEATURES_ALL, CEPH_FEATURE_MSG_ADDR2, MSGR2_REQUIRED,
    MSGR2_SUPPORTED,
};
use msgr::proto::codec::{FrameEncoder, Tag};
use msgr::proto::control::*;
use msgr::proto::types::{entity_type, AddrVec, AuthEntityName, EntityAddr};
use msgr::proto::{Event, Phase};

pub fn server_addr() -> EntityAddr {
    EntityAddr::msgr2("127.0.0.1:6800".parse().unwrap(), 7777)
}

pub fn client_addr() -> EntityAddr {
    EntityAddr::msgr2("127.0.0.1:40000".parse().unwrap(), 4242)
}

pub fn server_config() -> Arc<Config> {
    let mut c = Config::new(entity_type::OSD, AuthEntityName::new(entity_type::OSD, "0"));
    c.my_addrs = AddrVec(vec![server_addr()]);
    c.rng_seed = Some(1);
    c.max_frame_len = 1 << 20;
    c.idle_timeout = Some(Duration::from_secs(30));
    Arc::new(c)
}

pub fn client_config() -> Arc<Config> {
    let mut c = Config::new(
        entity_type::CLIENT,
        AuthEntityName::new(entity_type::CLIENT, "admin"),
    );
    c.gid = 4100;
    c.my_addrs = AddrVec(vec![client_addr()]);
    c.rng_seed = Some(2);
    c.max_frame_len = 1 << 20;
    c.idle_timeout = Some(Duration::from_secs(30));
    Arc::new(c)
}

/// The msgr2 banner both sides send first.
pub fn banner() -> Vec<u8> {
    let mut b = BytesMut::new();
    Banner {
        supported: MSGR2_SUPPORTED,
        required: MSGR2_REQUIRED,
    }
    .encode(&mut b);
    b.to_vec()
}

pub fn frame(enc: &mut FrameEncoder, cf: &ControlFrame) -> Vec<u8> {
    let mut p = BytesMut::new();
    cf.encode_payload(&mut p);
    raw_frame(enc, cf.tag(), &p)
}

/// A control frame with valid crcs around an arbitrary payload.
pub fn raw_frame(enc: &mut FrameEncoder, tag: Tag, payload: &[u8]) -> Vec<u8> {
    let mut out: Vec<Bytes> = Vec::new();
    enc.encode_control(tag, payload, &mut out).unwrap();
    out.concat()
}

/// The first `depth` steps of a handshake: the banner, then `frames` in order.
fn prefix(depth: usize, frames: &[ControlFrame]) -> Vec<u8> {
    let mut enc = FrameEncoder::new();
    let mut steps = vec![banner()];
    steps.extend(frames.iter().map(|cf| frame(&mut enc, cf)));
    steps[..depth.min(steps.len())].concat()
}

/// The first `depth` steps of what a client says: banner, HELLO, AUTH_REQUEST, AUTH_SIGNATURE,
/// CLIENT_IDENT (which makes a server ready).
pub fn client_prefix(depth: usize) -> Vec<u8> {
    prefix(
        depth,
        &[
            ControlFrame::Hello(Hello {
                entity_type: entity_type::CLIENT,
                peer_addr: server_addr(),
            }),
            ControlFrame::AuthRequest(AuthRequest {
                method: AUTH_METHOD_NONE,
                preferred_modes: vec![CON_MODE_CRC],
                auth_payload: AuthNoneRequest::Authorizer {
                    name: AuthEntityName::new(entity_type::CLIENT, "admin"),
                    global_id: 4100,
                }
                .encode(),
            }),
            // Auth method none has no session key: the signature is all zeros.
            ControlFrame::AuthSignature(AuthSignature { signature: [0; 32] }),
            ControlFrame::ClientIdent(ClientIdent {
                addrs: AddrVec(vec![client_addr()]),
                target_addr: server_addr(),
                gid: 4100,
                global_seq: 1,
                supported_features: CEPH_FEATURES_ALL,
                required_features: CEPH_FEATURE_MSG_ADDR2,
                flags: 0,
                cookie: 99,
            }),
        ],
    )
}

/// The first `depth` steps of what a server says: banner, HELLO, AUTH_DONE, AUTH_SIGNATURE,
/// SERVER_IDENT (which makes a client ready).
pub fn server_prefix(depth: usize) -> Vec<u8> {
    prefix(
        depth,
        &[
            ControlFrame::Hello(Hello {
                entity_type: entity_type::OSD,
                peer_addr: client_addr(),
            }),
            ControlFrame::AuthDone(AuthDone {
                global_id: 4100,
                con_mode: CON_MODE_CRC,
                auth_payload: Bytes::new(),
            }),
            ControlFrame::AuthSignature(AuthSignature { signature: [0; 32] }),
            ControlFrame::ServerIdent(ServerIdent {
                addrs: AddrVec(vec![server_addr()]),
                gid: 0,
                global_seq: 1,
                supported_features: CEPH_FEATURES_ALL,
                required_features: CEPH_FEATURE_MSG_ADDR2,
                flags: 0,
                cookie: 77,
            }),
        ],
    )
}

/// Splits a fuzz input into (prefix depth, read size, hostile stream); see the module docs.
pub fn steer(data: &[u8]) -> (usize, usize, &[u8]) {
    match data.split_first() {
        None => (0, 0, data),
        Some((b'c', _)) => (0, 0, data),
        Some((&mode, rest)) => {
            let depth = if mode & 1 == 1 {
                1 + usize::from((mode >> 1) & 7) % 5
            } else {
                0
            };
            let read = match mode >> 4 {
                0 => 0, // whole
                1 => 1,
                k => usize::from(k) * 37,
            };
            (depth, read, rest)
        }
    }
}

/// Acts as the connection's owner: answers session requests as a messenger with no other
/// connection would, takes the output, and checks what every event may and may not say.
pub fn pump(conn: &mut Connection, now: Instant, messages_allowed: bool) -> bool {
    let mut out = Vec::new();
    let mut failed = false;
    loop {
        out.clear();
        conn.poll_transmit(now, &mut out);
        let Some(ev) = conn.poll_event() else { break };
        match ev {
            Event::SessionRequest(_) => {
                conn.resolve_session(now, None);
            }
            Event::Message(_) => assert!(messages_allowed, "a message from unframed garbage"),
            Event::TransportDown(_) | Event::Reset(_) => failed = true,
            _ => {}
        }
    }
    failed
}

/// Feeds `stream` in reads of `read` bytes (0 = whole), then checks the end state: failed with a
/// typed error and no transport, or waiting with its transport; then fires the timers.
pub fn drive(conn: &mut Connection, now: Instant, stream: &[u8], read: usize) {
    let mut failed = pump(conn, now, true);
    let read = if read == 0 { stream.len().max(1) } else { read };
    for chunk in stream.chunks(read) {
        conn.handle_input(now, chunk);
        failed |= pump(conn, now, true);
    }
    if failed {
        assert!(!conn.has_transport(), "failed but kept its transport");
    } else {
        assert!(conn.has_transport() && conn.phase() != Phase::Closed);
    }
    // A stall: whatever deadline is pending fires without panicking.
    if let Some(t) = conn.poll_timeout() {
        conn.handle_timeout(t);
        pump(conn, t, true);
    }
}

pub fn fresh_client(now: Instant) -> Connection {
    let mut c = Connection::client(
        client_config(),
        Policy::lossless_client(),
        entity_type::OSD,
        server_addr(),
        now,
    );
    assert_eq!(c.poll_event(), Some(Event::OpenTransport));
    c.on_transport_connected(now);
    c
}
