//! A server `Connection` in a cephx role (byte 0 bit 0: monitor or OSD-like service) after a valid
//! banner and HELLO, fed AUTH_REQUEST / AUTH_REQUEST_MORE frames (valid crcs) whose payloads are
//! arbitrary or real ones from a complete exchange XORed with fuzz bytes, other control frames and raw
//! bytes. Checked: no panic; the server never becomes ready (nobody here holds a key for the
//! challenge it sends) and delivers nothing; the end state is consistent; timers fire cleanly.
#![no_main]

mod common;
#[path = "cephx_world.rs"]
mod world;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use msgr::proto::auth::{ConModes, ServerAuth, AUTH_METHOD_CEPHX, CON_MODE_CRC, CON_MODE_SECURE};
use msgr::proto::conn::Connection;
use msgr::proto::codec::FrameEncoder;
use msgr::proto::control::{AuthRequest, AuthRequestMore, ControlFrame};
use msgr::proto::types::entity_type;
use msgr::proto::Phase;

fuzz_target!(|data: &[u8]| {
    let Some((&steer, rest)) = data.split_first() else {
        return;
    };
    let w = world::world();
    let monitor = steer & 1 == 0;
    let (mut cfg, real_request, real_more) = if monitor {
        let mut c = (*common::server_config()).clone();
        c.entity_type = entity_type::MON;
        c.auth_server = ServerAuth::cephx_monitor(w.monitor.clone());
        (c, &w.mon_request, &w.mon_proof)
    } else {
        let mut c = (*common::server_config()).clone();
        c.auth_server = ServerAuth::cephx_service(w.service.clone());
        (c, &w.authorizer, &w.authorizer_answer)
    };
    cfg.con_modes = ConModes::all(&[CON_MODE_SECURE, CON_MODE_CRC]);
    let now = Instant::now();
    let mut s = Connection::server(Arc::new(cfg), common::server_addr(), now);

    let mut enc = FrameEncoder::new();
    let mut stream = world::hello_stream(&mut enc, entity_type::CLIENT, common::server_addr());
    for (kind, body) in world::Records(rest) {
        let request = |payload: Bytes| {
            ControlFrame::AuthRequest(AuthRequest {
                method: AUTH_METHOD_CEPHX,
                preferred_modes: vec![CON_MODE_SECURE, CON_MODE_CRC],
                auth_payload: payload,
            })
        };
        let more = |payload: Bytes| {
            ControlFrame::AuthRequestMore(AuthRequestMore {
                auth_payload: payload,
            })
        };
        let bytes = match kind % 6 {
            0 => world::frame(&mut enc, &request(Bytes::copy_from_slice(body))),
            1 => world::frame(&mut enc, &request(world::xor(real_request, body))),
            2 => world::frame(&mut enc, &more(Bytes::copy_from_slice(body))),
            3 => world::frame(&mut enc, &more(world::xor(real_more, body))),
            _ => world::stray_record(&mut enc, kind, body),
        };
        stream.extend(bytes);
    }
    world::drive_unauthenticated(&mut s, now, &stream, world::read_size(steer));
    assert_ne!(
        s.phase(),
        Phase::Ready,
        "a cephx server became ready without a key holder"
    );
    assert!(!s.is_ready());
});
