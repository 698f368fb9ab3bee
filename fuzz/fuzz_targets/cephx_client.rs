//! A cephx client `Connection` (byte 0 bit 0: toward a monitor, or toward an OSD with a valid ticket)
//! after a valid server banner and HELLO, fed AUTH_REPLY_MORE / AUTH_DONE frames (valid crcs) whose
//! payloads are arbitrary or the real ones of a complete exchange XORed with fuzz bytes, other
//! control frames and raw bytes. Checked: no panic; never ready, no message (nobody here can sign the
//! client's transcript); a consistent end state; timers fire cleanly.
#![no_main]

mod common;
#[path = "cephx_world.rs"]
mod world;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use msgr::proto::auth::{ClientAuth, ConModes, CON_MODE_CRC, CON_MODE_SECURE};
use msgr::proto::conn::{Connection, Policy};
use msgr::proto::codec::FrameEncoder;
use msgr::proto::control::{AuthDone, AuthReplyMore, ControlFrame};
use msgr::proto::types::entity_type;
use msgr::proto::{Event, Phase};

fuzz_target!(|data: &[u8]| {
    let Some((&steer, rest)) = data.split_first() else {
        return;
    };
    let w = world::world();
    let to_mon = steer & 1 == 0;
    let (peer_type, real_more, real_done) = if to_mon {
        (entity_type::MON, &w.mon_challenge, &w.mon_done)
    } else {
        (
            entity_type::OSD,
            &w.authorizer_challenge,
            &w.authorizer_done,
        )
    };
    let mut cfg = (*common::client_config()).clone();
    cfg.auth_client = ClientAuth::cephx(world::fresh_cephx_client(!to_mon));
    cfg.con_modes = ConModes::all(&[CON_MODE_SECURE, CON_MODE_CRC]);
    let now = Instant::now();
    let mut c = Connection::client(
        Arc::new(cfg),
        Policy::lossy_client(),
        peer_type,
        common::server_addr(),
        now,
    );
    assert_eq!(c.poll_event(), Some(Event::OpenTransport));
    c.on_transport_connected(now);

    let mut enc = FrameEncoder::new();
    let mut stream = world::hello_stream(&mut enc, peer_type, common::client_addr());
    for (kind, body) in world::Records(rest) {
        let more = |payload: Bytes| {
            ControlFrame::AuthReplyMore(AuthReplyMore {
                auth_payload: payload,
            })
        };
        let done = |mode: u8, payload: Bytes| {
            ControlFrame::AuthDone(AuthDone {
                global_id: world::GLOBAL_ID,
                con_mode: if mode & 1 == 0 {
                    CON_MODE_SECURE
                } else {
                    CON_MODE_CRC
                },
                auth_payload: payload,
            })
        };
        let bytes = match kind % 6 {
            0 => world::frame(&mut enc, &more(Bytes::copy_from_slice(body))),
            1 => world::frame(&mut enc, &more(world::xor(real_more, body))),
            2 => world::frame(&mut enc, &done(kind >> 3, Bytes::copy_from_slice(body))),
            3 => world::frame(&mut enc, &done(kind >> 3, world::xor(real_done, body))),
            _ => world::stray_record(&mut enc, kind, body),
        };
        stream.extend(bytes);
    }
    world::drive_unauthenticated(&mut c, now, &stream, world::read_size(steer));
    assert_ne!(
        c.phase(),
        Phase::Ready,
        "a cephx client became ready without a signed transcript"
    );
});
