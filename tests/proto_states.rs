//! State-by-state tests of the ProtocolV2 machine, smoltcp style: a fixture per state, one test per
//! (state, event), with a hand-driven raw peer on the other side. Names read `test_<state>_<event>`.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use msgr::proto::auth::{
    AuthNoneRequest, AUTH_METHOD_CEPHX, AUTH_METHOD_NONE, CON_MODE_CRC, CON_MODE_SECURE,
};
use msgr::proto::codec::Tag;
use msgr::proto::conn::{
    Config, Connection, Policy, Resolution, CEPH_FEATURES_ALL, CEPH_FEATURE_MSG_ADDR2,
};
use msgr::proto::control::*;
use msgr::proto::types::{entity_type, AddrVec, AuthEntityName, EntityAddr};
use msgr::proto::{Error, Event, Phase};

// ---------- client fixtures ----------

fn client_conn(policy: Policy) -> (Connection, RawPeer, Instant) {
    client_conn_with(client_config(1), policy)
}

fn client_conn_with(cfg: Config, policy: Policy) -> (Connection, RawPeer, Instant) {
    let now = Instant::now();
    let mut c = Connection::client(arc(cfg), policy, entity_type::OSD, server_addr(), now);
    assert_eq!(c.poll_event(), Some(Event::OpenTransport));
    c.on_transport_connected(now);
    (c, RawPeer::new(), now)
}

fn hello_from_server(p: &mut RawPeer) -> Vec<u8> {
    let mut v = RawPeer::banner();
    v.extend(p.frame(&ControlFrame::Hello(Hello {
        entity_type: entity_type::OSD,
        peer_addr: client_addr(),
    })));
    v
}

fn conn_after_hello(policy: Policy) -> (Connection, RawPeer, Instant) {
    conn_after_hello_with(client_config(1), policy)
}

fn conn_after_hello_with(cfg: Config, policy: Policy) -> (Connection, RawPeer, Instant) {
    let (mut c, mut p, now) = client_conn_with(cfg, policy);
    let bytes = hello_from_server(&mut p);
    c.handle_input(now, &bytes);
    let frames = p.recv_control(&mut c, now);
    assert!(
        matches!(
            frames[..],
            [ControlFrame::Hello(_), ControlFrame::AuthRequest(_)]
        ),
        "{frames:?}"
    );
    assert_eq!(c.phase(), Phase::Auth);
    (c, p, now)
}

fn auth_done_and_sig(p: &mut RawPeer) -> Vec<u8> {
    let mut v = p.frame(&ControlFrame::AuthDone(AuthDone {
        global_id: 77,
        con_mode: CON_MODE_CRC,
        auth_payload: Bytes::new(),
    }));
    v.extend(p.frame(&ControlFrame::AuthSignature(AuthSignature {
        signature: [0; 32],
    })));
    v
}

fn conn_after_auth(policy: Policy) -> (Connection, RawPeer, Instant) {
    conn_after_auth_with(client_config(1), policy)
}

fn conn_after_auth_with(cfg: Config, policy: Policy) -> (Connection, RawPeer, Instant) {
    let (mut c, mut p, now) = conn_after_hello_with(cfg, policy);
    let bytes = auth_done_and_sig(&mut p);
    c.handle_input(now, &bytes);
    let frames = p.recv_control(&mut c, now);
    assert!(
        matches!(
            frames[..],
            [ControlFrame::AuthSignature(_), ControlFrame::ClientIdent(_)]
        ),
        "{frames:?}"
    );
    assert_eq!(c.phase(), Phase::Session);
    (c, p, now)
}

fn server_ident(cookie: u64, flags: u64) -> ControlFrame {
    ControlFrame::ServerIdent(ServerIdent {
        addrs: AddrVec(vec![server_addr()]),
        gid: 0,
        global_seq: 5,
        supported_features: CEPH_FEATURES_ALL,
        required_features: CEPH_FEATURE_MSG_ADDR2,
        flags,
        cookie,
    })
}

fn conn_ready(policy: Policy) -> (Connection, RawPeer, Instant) {
    conn_ready_with(client_config(1), policy)
}

fn conn_ready_with(cfg: Config, policy: Policy) -> (Connection, RawPeer, Instant) {
    let (mut c, mut p, now) = conn_after_auth_with(cfg, policy);
    let bytes = p.frame(&server_ident(999, 0));
    c.handle_input(now, &bytes);
    assert_eq!(c.phase(), Phase::Ready);
    assert!(drain_events(&mut c).contains(&Event::Connected { reconnect: false }));
    (c, p, now)
}

/// From ready: fault, back off, reconnect and authenticate; the client has just sent SESSION_RECONNECT.
fn conn_reconnecting() -> (Connection, RawPeer, Instant, SessionReconnect) {
    let (mut c, _, now) = conn_ready(Policy::lossless_client());
    c.on_transport_error(now, "test");
    assert!(matches!(
        drain_events(&mut c)[..],
        [Event::TransportDown(_)]
    ));
    assert_eq!(c.phase(), Phase::Connecting);
    let t = c.poll_timeout().expect("reconnect timer");
    c.handle_timeout(t);
    assert_eq!(c.poll_event(), Some(Event::OpenTransport));
    let (p, frames) = reauthenticate(&mut c, t);
    let Some(ControlFrame::SessionReconnect(r)) = frames.last().cloned() else {
        panic!("{frames:?}")
    };
    assert_eq!(c.phase(), Phase::Reconnecting);
    (c, p, t, r)
}

/// On a fresh transport at `t`: a new raw server peer sends HELLO, AUTH_DONE and AUTH_SIGNATURE;
/// returns that peer and the control frames the client answered with.
fn reauthenticate(c: &mut Connection, t: Instant) -> (RawPeer, Vec<ControlFrame>) {
    c.on_transport_connected(t);
    let mut p = RawPeer::new();
    let mut bytes = hello_from_server(&mut p);
    bytes.extend(auth_done_and_sig(&mut p));
    c.handle_input(t, &bytes);
    let frames = p.recv_control(c, t);
    (p, frames)
}

/// The header seqs of MESSAGE frames, in order.
fn message_seqs(frames: &[msgr::proto::codec::Frame]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| {
            msgr::proto::Message::from_segments(&f.segments[..f.num_segments])
                .unwrap()
                .header
                .seq
        })
        .collect()
}

fn closed_with(c: &mut Connection) -> Error {
    let evs = drain_events(c);
    assert!(c.is_closed(), "not closed: {evs:?}");
    evs.into_iter()
        .find_map(|e| {
            if let Event::Reset(e) = e {
                Some(e)
            } else {
                None
            }
        })
        .expect("a Reset event")
}

// ---------- banner / hello ----------

#[test]
fn test_banner_legacy_peer_is_refused() {
    let (mut c, _, now) = client_conn(Policy::lossless_client());
    c.handle_input(now, b"ceph v027\0\0\0\0\0\0\0\0\0");
    assert!(matches!(closed_with(&mut c), Error::Banner(_)));
}

#[test]
fn test_banner_peer_without_revision_1_names_the_feature() {
    let (mut c, _, now) = client_conn(Policy::lossless_client());
    c.handle_input(now, &RawPeer::banner_with(0, 0));
    let e = closed_with(&mut c);
    assert!(
        matches!(e, Error::PeerIncompatible(ref s) if s.contains("REVISION_1")),
        "{e}"
    );
}

#[test]
fn test_hello_wrong_entity_type_is_refused() {
    let (mut c, mut p, now) = client_conn(Policy::lossless_client());
    let mut v = RawPeer::banner();
    v.extend(p.frame(&ControlFrame::Hello(Hello {
        entity_type: entity_type::MON,
        peer_addr: client_addr(),
    })));
    c.handle_input(now, &v);
    assert!(matches!(closed_with(&mut c), Error::PeerIncompatible(_)));
}

#[test]
fn test_hello_auth_request_is_method_none_authorizer_form() {
    let (mut c, mut p, now) = client_conn(Policy::lossless_client());
    let v = hello_from_server(&mut p);
    c.handle_input(now, &v);
    let frames = p.recv_control(&mut c, now);
    let ControlFrame::AuthRequest(r) = &frames[1] else {
        panic!()
    };
    assert_eq!(r.method, AUTH_METHOD_NONE);
    assert_eq!(r.preferred_modes, vec![CON_MODE_CRC]);
    assert!(matches!(
        AuthNoneRequest::decode(&r.auth_payload).unwrap(),
        AuthNoneRequest::Authorizer {
            global_id: 4100,
            ..
        }
    ));
}

// ---------- auth ----------

#[test]
fn test_auth_bad_method_ends_with_clear_error() {
    let (mut c, mut p, now) = conn_after_hello(Policy::lossless_client());
    let v = p.frame(&ControlFrame::AuthBadMethod(AuthBadMethod {
        method: AUTH_METHOD_NONE,
        result: -95,
        allowed_methods: vec![AUTH_METHOD_CEPHX],
        allowed_modes: vec![CON_MODE_SECURE],
    }));
    c.handle_input(now, &v);
    let e = closed_with(&mut c);
    assert!(
        matches!(e, Error::AuthFailed(ref s) if s.contains("[2]")),
        "{e}"
    );
}

#[test]
fn test_auth_signature_mismatch_ends_connection() {
    let (mut c, mut p, now) = conn_after_hello(Policy::lossless_client());
    let mut v = p.frame(&ControlFrame::AuthDone(AuthDone {
        global_id: 1,
        con_mode: CON_MODE_CRC,
        auth_payload: Bytes::new(),
    }));
    v.extend(p.frame(&ControlFrame::AuthSignature(AuthSignature {
        signature: [1; 32],
    })));
    c.handle_input(now, &v);
    assert!(matches!(closed_with(&mut c), Error::AuthFailed(_)));
}

#[test]
fn test_auth_done_secure_mode_refused_without_cephx() {
    let (mut c, mut p, now) = conn_after_hello(Policy::lossless_client());
    let v = p.frame(&ControlFrame::AuthDone(AuthDone {
        global_id: 1,
        con_mode: CON_MODE_SECURE,
        auth_payload: Bytes::new(),
    }));
    c.handle_input(now, &v);
    assert!(matches!(closed_with(&mut c), Error::PeerIncompatible(_)));
}

// ---------- session connecting ----------

#[test]
fn test_session_connecting_ident_missing_features() {
    let (mut c, mut p, now) = conn_after_auth(Policy::lossless_client());
    let v = p.frame(&ControlFrame::IdentMissingFeatures(IdentMissingFeatures {
        features: 1 << 40,
    }));
    c.handle_input(now, &v);
    let e = closed_with(&mut c);
    assert!(
        matches!(e, Error::PeerIncompatible(ref s) if s.contains("10000000000")),
        "{e}"
    );
}

#[test]
fn test_session_connecting_wait_backs_off_to_max() {
    let (mut c, mut p, now) = conn_after_auth(Policy::lossless_client());
    let v = p.frame(&ControlFrame::Wait);
    c.handle_input(now, &v);
    assert!(matches!(
        drain_events(&mut c)[..],
        [Event::TransportDown(_)]
    ));
    assert_eq!(c.phase(), Phase::Wait);
    assert_eq!(c.poll_timeout(), Some(now + Duration::from_millis(8)));
    c.handle_timeout(now + Duration::from_millis(8));
    assert_eq!(c.poll_event(), Some(Event::OpenTransport));
}

#[test]
fn test_session_connecting_server_ident_for_another_address_is_refused() {
    let (mut c, mut p, now) = conn_after_auth(Policy::lossless_client());
    let other = EntityAddr::msgr2("127.0.0.2:6800".parse().unwrap(), 7777);
    let v = p.frame(&ControlFrame::ServerIdent(ServerIdent {
        addrs: AddrVec(vec![other]),
        gid: 0,
        global_seq: 1,
        supported_features: CEPH_FEATURES_ALL,
        required_features: 0,
        flags: 0,
        cookie: 1,
    }));
    c.handle_input(now, &v);
    assert!(matches!(
        drain_events(&mut c)[0],
        Event::TransportDown(Error::PeerMisbehaved(_))
    ));
}

#[test]
fn test_session_connecting_server_ident_lossy_flag_sets_policy() {
    let (mut c, mut p, now) = conn_after_auth(Policy::lossless_client());
    let v = p.frame(&server_ident(0, 1));
    c.handle_input(now, &v);
    assert!(c.is_ready());
    assert!(c.policy().lossy);
}

// ---------- ready ----------

#[test]
fn test_ready_message_before_ready_is_a_protocol_error() {
    let (mut c, mut p, now) = conn_after_hello(Policy::lossy_client());
    let mut out = Vec::new();
    let m = msgr::proto::Message::new(1, Bytes::from_static(b"x"));
    let segs = [
        msgr::proto::codec::Segment::new(m.header_segment(), 8),
        msgr::proto::codec::Segment::new(m.front.clone(), 8),
    ];
    p.enc.encode(Tag::Message, &segs, &mut out).unwrap();
    c.handle_input(now, &out.concat());
    // Lossy client still connecting: it faults and retries rather than resetting.
    assert!(matches!(
        drain_events(&mut c)[0],
        Event::TransportDown(Error::PeerMisbehaved(_))
    ));
}

#[test]
fn test_ready_keepalive_is_answered_with_same_timestamp() {
    let (mut c, mut p, now) = conn_ready(Policy::lossless_client());
    let ts = msgr::proto::types::UTime { sec: 12, nsec: 34 };
    let v = p.frame(&ControlFrame::Keepalive2(Keepalive2 { timestamp: ts }));
    c.handle_input(now, &v);
    let frames = p.recv_control(&mut c, now);
    assert_eq!(
        frames,
        vec![ControlFrame::Keepalive2Ack(Keepalive2Ack { timestamp: ts })]
    );
}

#[test]
fn test_ready_ack_trims_sent_messages() {
    let (mut c, mut p, now) = conn_ready(Policy::lossless_client());
    for i in 0..3 {
        c.send(now, msgr::proto::Message::new(1, Bytes::from(vec![i])))
            .unwrap();
    }
    let frames = p.recv_from(&mut c, now);
    assert_eq!(frames.len(), 3);
    assert_eq!(c.pending_messages(), 3);
    let v = p.frame(&ControlFrame::Ack(Ack { seq: 2 }));
    c.handle_input(now, &v);
    assert_eq!(c.pending_messages(), 1);
}

#[test]
fn test_ready_idle_timeout_faults() {
    let mut cfg = client_config(1);
    cfg.idle_timeout = Some(Duration::from_secs(5));
    cfg.idle_buffer_release = None;
    let (mut c, mut p, now) = client_conn_with(cfg, Policy::lossy_client());
    let mut v = hello_from_server(&mut p);
    v.extend(auth_done_and_sig(&mut p));
    v.extend(p.frame(&server_ident(0, 1)));
    c.handle_input(now, &v);
    assert!(c.is_ready());
    assert_eq!(c.poll_timeout(), Some(now + Duration::from_secs(5)));
    c.handle_timeout(now + Duration::from_secs(5));
    assert!(matches!(closed_with(&mut c), Error::TimedOut(_)));
}

// ---------- reconnecting ----------

#[test]
fn test_reconnecting_sends_cookies_and_seqs() {
    let (_, _, _, r) = conn_reconnecting();
    assert_eq!(r.server_cookie, 999);
    assert_ne!(r.client_cookie, 0);
    assert_eq!(r.connect_seq, 1);
    assert_eq!(r.msg_seq, 0);
}

#[test]
fn test_reconnecting_session_retry_bumps_connect_seq() {
    let (mut c, mut p, now, _) = conn_reconnecting();
    let v = p.frame(&ControlFrame::SessionRetry(SessionRetry { connect_seq: 5 }));
    c.handle_input(now, &v);
    let frames = p.recv_control(&mut c, now);
    let [ControlFrame::SessionReconnect(r)] = &frames[..] else {
        panic!("{frames:?}")
    };
    assert_eq!(r.connect_seq, 6);
}

#[test]
fn test_reconnecting_retry_global_moves_global_seq_past_peer() {
    let (mut c, mut p, now, first) = conn_reconnecting();
    let v = p.frame(&ControlFrame::SessionRetryGlobal(SessionRetryGlobal {
        global_seq: first.global_seq + 100,
    }));
    c.handle_input(now, &v);
    let frames = p.recv_control(&mut c, now);
    let [ControlFrame::SessionReconnect(r)] = &frames[..] else {
        panic!("{frames:?}")
    };
    assert!(r.global_seq > first.global_seq + 100);
}

#[test]
fn test_reconnecting_full_reset_reports_remote_reset_and_starts_new_session() {
    let (mut c, mut p, now, _) = conn_reconnecting();
    c.send(
        now,
        msgr::proto::Message::new(1, Bytes::from_static(b"lost")),
    )
    .unwrap();
    let v = p.frame(&ControlFrame::SessionReset(SessionReset { full: true }));
    c.handle_input(now, &v);
    assert!(drain_events(&mut c).contains(&Event::RemoteReset { dropped: 1 }));
    let frames = p.recv_control(&mut c, now);
    assert!(
        matches!(frames[..], [ControlFrame::ClientIdent(_)]),
        "{frames:?}"
    );
    assert_eq!(c.phase(), Phase::Session);
}

#[test]
fn test_reconnecting_partial_reset_keeps_queue() {
    let (mut c, mut p, now, _) = conn_reconnecting();
    c.send(
        now,
        msgr::proto::Message::new(1, Bytes::from_static(b"kept")),
    )
    .unwrap();
    let v = p.frame(&ControlFrame::SessionReset(SessionReset { full: false }));
    c.handle_input(now, &v);
    assert!(!drain_events(&mut c)
        .iter()
        .any(|e| matches!(e, Event::RemoteReset { .. })));
    assert_eq!(c.pending_messages(), 1);
    assert_eq!(c.connect_seq(), 0);
}

#[test]
fn test_reconnecting_reconnect_ok_replays_unacked() {
    let (mut c, mut p0, now) = conn_ready(Policy::lossless_client());
    for i in 0..4 {
        c.send(now, msgr::proto::Message::new(1, Bytes::from(vec![i])))
            .unwrap();
    }
    assert_eq!(p0.recv_from(&mut c, now).len(), 4);
    c.on_transport_error(now, "cut");
    let t = c.poll_timeout().unwrap();
    c.handle_timeout(t);
    let (mut p, _) = reauthenticate(&mut c, t);
    // The server got the first two.
    let v = p.frame(&ControlFrame::SessionReconnectOk(SessionReconnectOk {
        msg_seq: 2,
    }));
    c.handle_input(t, &v);
    assert!(drain_events(&mut c).contains(&Event::Connected { reconnect: true }));
    let frames = p.recv_from(&mut c, t);
    assert_eq!(message_seqs(&frames), vec![3, 4]);
    assert_eq!(c.stats().replayed, 2);
}

// ---------- server side ----------

fn client_ident(cookie: u64, global_seq: u64, addr: EntityAddr) -> ControlFrame {
    ControlFrame::ClientIdent(ClientIdent {
        addrs: AddrVec(vec![addr]),
        target_addr: server_addr(),
        gid: 4100,
        global_seq,
        supported_features: CEPH_FEATURES_ALL,
        required_features: CEPH_FEATURE_MSG_ADDR2,
        flags: 0,
        cookie,
    })
}

/// A fresh server connection that has read the banner, a client HELLO and `auth`.
fn server_given_auth_request(seed: u64, auth: AuthRequest) -> (Connection, RawPeer, Instant) {
    let now = Instant::now();
    let mut s = Connection::server(arc(server_config(seed)), server_addr(), now);
    let mut p = RawPeer::new();
    let mut v = RawPeer::banner();
    v.extend(p.frame(&ControlFrame::Hello(Hello {
        entity_type: entity_type::CLIENT,
        peer_addr: server_addr(),
    })));
    v.extend(p.frame(&ControlFrame::AuthRequest(auth)));
    s.handle_input(now, &v);
    (s, p, now)
}

fn server_after_auth(seed: u64) -> (Connection, RawPeer, Instant) {
    let auth = AuthNoneRequest::Authorizer {
        name: AuthEntityName::new(8, "admin"),
        global_id: 4100,
    };
    let (mut s, mut p, now) = server_given_auth_request(
        seed,
        AuthRequest {
            method: AUTH_METHOD_NONE,
            preferred_modes: vec![CON_MODE_CRC],
            auth_payload: auth.encode(),
        },
    );
    let frames = p.recv_control(&mut s, now);
    assert!(
        matches!(
            frames[..],
            [
                ControlFrame::Hello(_),
                ControlFrame::AuthDone(_),
                ControlFrame::AuthSignature(_)
            ]
        ),
        "{frames:?}"
    );
    let v = p.frame(&ControlFrame::AuthSignature(AuthSignature {
        signature: [0; 32],
    }));
    s.handle_input(now, &v);
    assert_eq!(s.phase(), Phase::Session);
    (s, p, now)
}

#[test]
fn test_server_auth_request_cephx_gets_bad_method() {
    let (mut s, mut p, now) = server_given_auth_request(
        1,
        AuthRequest {
            method: AUTH_METHOD_CEPHX,
            preferred_modes: vec![CON_MODE_SECURE],
            auth_payload: Bytes::new(),
        },
    );
    let frames = p.recv_control(&mut s, now);
    let ControlFrame::AuthBadMethod(b) = &frames[1] else {
        panic!("{frames:?}")
    };
    assert_eq!(b.allowed_methods, vec![AUTH_METHOD_NONE]);
    assert_eq!(b.allowed_modes, vec![CON_MODE_CRC]);
}

#[test]
fn test_server_client_ident_for_another_target_is_refused() {
    let (mut s, mut p, now) = server_after_auth(1);
    let mut ci = client_ident(5, 1, client_addr());
    if let ControlFrame::ClientIdent(c) = &mut ci {
        c.target_addr = EntityAddr::msgr2("10.1.2.3:6800".parse().unwrap(), 1);
    }
    let v = p.frame(&ci);
    s.handle_input(now, &v);
    assert!(s.is_closed());
}

#[test]
fn test_server_client_ident_missing_features_is_answered() {
    let (mut s, mut p, now) = server_after_auth(1);
    let mut ci = client_ident(5, 1, client_addr());
    if let ControlFrame::ClientIdent(c) = &mut ci {
        c.supported_features = 0;
    }
    let v = p.frame(&ci);
    s.handle_input(now, &v);
    let frames = p.recv_control(&mut s, now);
    assert!(matches!(
        frames[..],
        [ControlFrame::IdentMissingFeatures(IdentMissingFeatures {
            features: CEPH_FEATURE_MSG_ADDR2
        })]
    ));
}

#[test]
fn test_server_new_session_without_existing() {
    let (mut s, mut p, now) = server_after_auth(1);
    let v = p.frame(&client_ident(5, 1, client_addr()));
    s.handle_input(now, &v);
    assert!(matches!(
        drain_events(&mut s)[..],
        [Event::SessionRequest(_)]
    ));
    assert_eq!(s.resolve_session(now, None), Resolution::NewSession);
    let frames = p.recv_control(&mut s, now);
    let [ControlFrame::ServerIdent(si)] = &frames[..] else {
        panic!("{frames:?}")
    };
    assert_ne!(si.cookie, 0);
    assert!(s.is_ready());
}

/// A server past auth that has read `ident` and had its events drained; the session is not yet resolved.
fn server_given_ident(seed: u64, ident: ControlFrame) -> (Connection, RawPeer, Instant) {
    let (mut s, mut p, now) = server_after_auth(seed);
    let v = p.frame(&ident);
    s.handle_input(now, &v);
    drain_events(&mut s);
    (s, p, now)
}

/// Our own outgoing attempt to `peer` under `policy`, transport up, still in the handshake.
fn outgoing_attempt(policy: Policy, peer: EntityAddr, now: Instant) -> Connection {
    let mut mine = Connection::client(
        arc(server_config(4)),
        policy,
        entity_type::CLIENT,
        peer,
        now,
    );
    mine.on_transport_connected(now);
    mine
}

fn server_with_session(seed: u64) -> (Connection, Instant) {
    let (mut s, mut p, now) = server_given_ident(seed, client_ident(5, 10, client_addr()));
    assert_eq!(s.resolve_session(now, None), Resolution::NewSession);
    p.recv_control(&mut s, now);
    drain_events(&mut s);
    (s, now)
}

fn reconnect(client_cookie: u64, server_cookie: u64, gs: u64, cs: u64, ms: u64) -> ControlFrame {
    ControlFrame::SessionReconnect(SessionReconnect {
        addrs: AddrVec(vec![client_addr()]),
        client_cookie,
        server_cookie,
        global_seq: gs,
        connect_seq: cs,
        msg_seq: ms,
    })
}

fn resolve_reconnect(
    existing: Option<&mut Connection>,
    frame: ControlFrame,
) -> (Resolution, Vec<ControlFrame>, Connection) {
    let (r, frames, _, s) = resolve_reconnect_all(existing, frame);
    (r, frames, s)
}

/// Like `resolve_reconnect`, also returning the MESSAGE frames that followed the control frames.
fn resolve_reconnect_all(
    existing: Option<&mut Connection>,
    frame: ControlFrame,
) -> (
    Resolution,
    Vec<ControlFrame>,
    Vec<msgr::proto::codec::Frame>,
    Connection,
) {
    let (mut s, mut p, now) = server_after_auth(2);
    let v = p.frame(&frame);
    s.handle_input(now, &v);
    assert!(matches!(
        drain_events(&mut s)[..],
        [Event::SessionRequest(_)]
    ));
    let r = s.resolve_session(now, existing);
    let (messages, control): (Vec<_>, Vec<_>) = p
        .recv_from(&mut s, now)
        .into_iter()
        .partition(|f| f.tag == Tag::Message);
    let control = control
        .into_iter()
        .map(|f| ControlFrame::decode(f.tag, f.payload()).unwrap())
        .collect();
    (r, control, messages, s)
}

#[test]
fn test_server_reconnect_without_existing_gets_full_reset() {
    let (r, frames, _) = resolve_reconnect(None, reconnect(5, 9, 11, 1, 0));
    assert_eq!(r, Resolution::Answered(Tag::SessionReset));
    assert_eq!(
        frames,
        vec![ControlFrame::SessionReset(SessionReset { full: true })]
    );
}

#[test]
fn test_server_reconnect_cookie_mismatch_gets_reset() {
    let (mut ex, _) = server_with_session(3);
    let sc = ex.server_cookie();
    let (r, frames, _) = resolve_reconnect(Some(&mut ex), reconnect(6, sc, 11, 1, 0));
    assert_eq!(r, Resolution::Answered(Tag::SessionReset));
    assert!(matches!(frames[..], [ControlFrame::SessionReset(_)]));
}

#[test]
fn test_server_reconnect_stale_global_seq_gets_retry_global() {
    let (mut ex, _) = server_with_session(3);
    let sc = ex.server_cookie();
    let (r, frames, _) = resolve_reconnect(Some(&mut ex), reconnect(5, sc, 3, 1, 0));
    assert_eq!(r, Resolution::Answered(Tag::SessionRetryGlobal));
    assert_eq!(
        frames,
        vec![ControlFrame::SessionRetryGlobal(SessionRetryGlobal {
            global_seq: 10
        })]
    );
}

#[test]
fn test_server_reconnect_stale_connect_seq_gets_retry() {
    let (mut ex, now) = server_with_session(3);
    let sc = ex.server_cookie();
    // Take it over once with connect_seq 2, so the session's connect_seq is 2.
    let (r, _, mut holder) = resolve_reconnect(Some(&mut ex), reconnect(5, sc, 11, 2, 0));
    assert_eq!(r, Resolution::TookOver);
    holder.on_transport_error(now, "cut");
    let (r, frames, _) = resolve_reconnect(Some(&mut holder), reconnect(5, sc, 12, 1, 0));
    assert_eq!(r, Resolution::Answered(Tag::SessionRetry));
    assert_eq!(
        frames,
        vec![ControlFrame::SessionRetry(SessionRetry { connect_seq: 2 })]
    );
}

#[test]
fn test_server_reconnect_ok_takes_over_session_and_replays() {
    let (mut ex, now) = server_with_session(3);
    for i in 0..3 {
        ex.send(now, msgr::proto::Message::new(1, Bytes::from(vec![i])))
            .unwrap();
    }
    let mut sink = Vec::new();
    ex.poll_transmit(now, &mut sink);
    ex.on_transport_error(now, "cut");
    assert_eq!(ex.phase(), Phase::Standby);
    let sc = ex.server_cookie();
    let (r, frames, frames_after, holder) =
        resolve_reconnect_all(Some(&mut ex), reconnect(5, sc, 11, 1, 1));
    assert_eq!(r, Resolution::TookOver);
    assert!(ex.is_closed());
    assert_eq!(
        frames[0],
        ControlFrame::SessionReconnectOk(SessionReconnectOk { msg_seq: 0 })
    );
    assert!(holder.is_ready());
    // The two unacknowledged messages follow at once, with their original seqs.
    assert_eq!(message_seqs(&frames_after), vec![2, 3]);
    assert_eq!(
        holder.pending_messages(),
        2,
        "message 1 was acknowledged by msg_seq"
    );
}

#[test]
fn test_server_connection_race_lower_peer_address_wins() {
    // Ceph orders addresses by memcmp of entity_addr_t: type, then the nonce in little-endian bytes.
    // nonce 1 is below server_addr's 7777 (0x61 0x1e …), so the peer's address is lower.
    let lower = EntityAddr::msgr2("127.0.0.1:40000".parse().unwrap(), 1);
    assert!(msgr::proto::conn::ceph_addr_less(
        lower.clone(),
        server_addr()
    ));
    // Our own outgoing attempt to the peer, still connecting, with a message queued.
    let now = Instant::now();
    let mut mine = outgoing_attempt(Policy::lossless_peer(), lower.clone(), now);
    mine.send(now, msgr::proto::Message::new(1, Bytes::from_static(b"q")))
        .unwrap();
    let (mut s, _, now2) = server_given_ident(5, client_ident(5, 10, lower));
    assert_eq!(
        s.resolve_session(now2, Some(&mut mine)),
        Resolution::TookOver
    );
    assert!(mine.is_closed());
    assert_eq!(
        s.pending_messages(),
        1,
        "the queued message moved with the session"
    );
}

#[test]
fn test_server_connection_race_higher_peer_address_gets_wait() {
    let now = Instant::now();
    let higher = EntityAddr::msgr2("127.0.0.1:40000".parse().unwrap(), 9_999_999);
    let mut mine = outgoing_attempt(Policy::lossless_peer(), higher.clone(), now);
    let (mut s, mut p, now2) = server_given_ident(5, client_ident(5, 10, higher));
    assert_eq!(
        s.resolve_session(now2, Some(&mut mine)),
        Resolution::Answered(Tag::Wait)
    );
    assert!(!mine.is_closed());
    assert_eq!(p.recv_control(&mut s, now2), vec![ControlFrame::Wait]);
}

#[test]
fn test_server_connection_race_existing_server_policy_loses() {
    let now = Instant::now();
    let higher = EntityAddr::msgr2("127.0.0.1:40000".parse().unwrap(), 9_999_999);
    let mut mine = outgoing_attempt(Policy::stateful_server(), higher.clone(), now);
    let (mut s, _, now2) = server_given_ident(5, client_ident(5, 10, higher));
    assert_eq!(
        s.resolve_session(now2, Some(&mut mine)),
        Resolution::TookOver
    );
}

#[test]
fn test_server_stale_client_ident_is_dropped() {
    let (mut ex, _) = server_with_session(3);
    // global_seq 2 < existing 10
    let (mut s, _, now) = server_given_ident(6, client_ident(77, 2, client_addr()));
    assert_eq!(s.resolve_session(now, Some(&mut ex)), Resolution::Dropped);
    assert!(s.is_closed());
    assert!(!ex.is_closed());
}

// ---------- peer-controlled sequence numbers ----------

/// Issue 12, defect 6: `connect_seq + 1` after SESSION_RETRY and the global_seq after
/// SESSION_RETRY_GLOBAL come from the peer. An absurd value (u64::MAX, or anything past
/// `MAX_PEER_SEQ`) ends that connection with a protocol error: no panic (debug builds check
/// overflow), no wrapped messenger-wide counter, no SESSION_RECONNECT sent with it. The same values
/// in SESSION_RECONNECT and CLIENT_IDENT are refused on the server side.
#[test]
fn sequence_overflow_is_a_protocol_error() {
    use msgr::proto::conn::MAX_PEER_SEQ;
    for absurd in [u64::MAX, MAX_PEER_SEQ + 1] {
        // SESSION_RETRY.
        let (mut c, mut p, now, _) = conn_reconnecting();
        let v = p.frame(&ControlFrame::SessionRetry(SessionRetry {
            connect_seq: absurd,
        }));
        c.handle_input(now, &v);
        let sent = p.recv_control(&mut c, now);
        assert!(
            !sent
                .iter()
                .any(|f| matches!(f, ControlFrame::SessionReconnect(_))),
            "{sent:?}"
        );
        let evs = drain_events(&mut c);
        assert!(
            evs.iter().any(|e| matches!(e, Event::TransportDown(Error::PeerMisbehaved(m)) if m.contains("connect_seq"))),
            "{evs:?}"
        );

        // SESSION_RETRY_GLOBAL: the shared counter must not move (let alone wrap).
        let cfg = client_config(1);
        let counter = cfg.global_seq.clone();
        let (mut c, _, now) = conn_ready_with(cfg, Policy::lossless_client());
        c.on_transport_error(now, "test");
        drain_events(&mut c);
        let t = c.poll_timeout().expect("reconnect timer");
        c.handle_timeout(t);
        assert_eq!(c.poll_event(), Some(Event::OpenTransport));
        let (mut p, frames) = reauthenticate(&mut c, t);
        assert!(matches!(
            frames.last(),
            Some(ControlFrame::SessionReconnect(_))
        ));
        let before = counter.current();
        let v = p.frame(&ControlFrame::SessionRetryGlobal(SessionRetryGlobal {
            global_seq: absurd,
        }));
        c.handle_input(t, &v);
        assert_eq!(
            counter.current(),
            before,
            "global_seq moved to a peer's absurd value"
        );
        let evs = drain_events(&mut c);
        assert!(
            evs.iter().any(|e| matches!(e, Event::TransportDown(Error::PeerMisbehaved(m)) if m.contains("global_seq"))),
            "{evs:?}"
        );

        // Server side: SESSION_RECONNECT with an absurd connect_seq or global_seq.
        for frame in [
            reconnect(5, 9, absurd, 1, 0),
            reconnect(5, 9, 11, absurd, 0),
        ] {
            let (mut s, mut p, now) = server_after_auth(3);
            let v = p.frame(&frame);
            s.handle_input(now, &v);
            let evs = drain_events(&mut s);
            assert!(
                !evs.iter().any(|e| matches!(e, Event::SessionRequest(_))),
                "{evs:?}"
            );
            assert!(
                evs.iter().any(|e| matches!(
                    e,
                    Event::TransportDown(Error::PeerMisbehaved(_)) | Event::Closed
                )),
                "{evs:?}"
            );
        }
    }
}

// ---------- reconnect back-off ----------

/// Issue 12, defect 3 (ProtocolV2::_fault): a fault from READY re-dials at once; only failed attempts
/// back off, from `initial_backoff` doubling to `max_backoff`; READY again resets it.
#[test]
fn test_ready_fault_redials_at_once_then_backs_off_on_failed_attempts() {
    let mut cfg = client_config(1);
    cfg.initial_backoff = Duration::from_secs(10);
    cfg.max_backoff = Duration::from_secs(35);
    let (mut c, _, now) = conn_ready_with(cfg, Policy::lossless_client());
    c.on_transport_error(now, "cut");
    drain_events(&mut c);
    assert_eq!(
        c.poll_timeout(),
        Some(now),
        "a fault from READY re-dials at once"
    );
    let mut t = now;
    for want in [10, 20, 35, 35] {
        c.handle_timeout(t);
        assert_eq!(c.poll_event(), Some(Event::OpenTransport));
        c.on_transport_error(t, "refused");
        drain_events(&mut c);
        let next = c.poll_timeout().expect("reconnect timer");
        assert_eq!(next - t, Duration::from_secs(want));
        t = next;
    }
}

// ---------- the policy follows the authenticated entity ----------

fn auth_none_as(name: AuthEntityName) -> AuthRequest {
    AuthRequest {
        method: AUTH_METHOD_NONE,
        preferred_modes: vec![CON_MODE_CRC],
        auth_payload: AuthNoneRequest::Authorizer {
            name,
            global_id: 4100,
        }
        .encode(),
    }
}

/// Issue 13: a HELLO claim picks no policy; the authenticated entity does, and a HELLO that claims
/// another type than the peer then authenticates as is refused.
#[test]
fn test_server_auth_policy_follows_the_authenticated_entity() {
    // HELLO says client, the peer authenticates as client: the client policy.
    let mut cfg = server_config(4);
    cfg.default_policy = Policy::stateless_server();
    cfg.accept_policies = vec![(entity_type::CLIENT, Policy::stateful_server())];
    let now = Instant::now();
    let mut s = Connection::server(arc(cfg.clone()), server_addr(), now);
    assert_eq!(
        s.policy(),
        Policy::stateless_server(),
        "no policy before auth"
    );
    let mut p = RawPeer::new();
    let mut v = RawPeer::banner();
    v.extend(p.frame(&ControlFrame::Hello(Hello {
        entity_type: entity_type::CLIENT,
        peer_addr: server_addr(),
    })));
    s.handle_input(now, &v);
    assert_eq!(s.phase(), Phase::Auth);
    assert_eq!(
        s.policy(),
        Policy::stateless_server(),
        "a HELLO claim must not pick the policy"
    );
    let v = p.frame(&ControlFrame::AuthRequest(auth_none_as(
        AuthEntityName::new(entity_type::CLIENT, "admin"),
    )));
    s.handle_input(now, &v);
    assert_eq!(s.policy(), Policy::stateful_server());

    // HELLO says osd, the peer authenticates as a client: refused.
    let mut s = Connection::server(arc(cfg), server_addr(), now);
    let mut p = RawPeer::new();
    let mut v = RawPeer::banner();
    v.extend(p.frame(&ControlFrame::Hello(Hello {
        entity_type: entity_type::OSD,
        peer_addr: server_addr(),
    })));
    v.extend(p.frame(&ControlFrame::AuthRequest(auth_none_as(
        AuthEntityName::new(entity_type::CLIENT, "admin"),
    ))));
    s.handle_input(now, &v);
    let evs = drain_events(&mut s);
    assert!(
        evs.iter().any(|e| matches!(e, Event::TransportDown(Error::PeerMisbehaved(m)) if m.contains("authenticated as"))),
        "{evs:?}"
    );
    assert!(s.is_closed());
}

/// Issue 13: at most `max_auth_attempts` AUTH_REQUESTs per transport.
#[test]
fn test_server_auth_attempts_are_capped() {
    let now = Instant::now();
    let mut cfg = server_config(5);
    cfg.max_auth_attempts = 3;
    let mut s = Connection::server(arc(cfg), server_addr(), now);
    let mut p = RawPeer::new();
    let mut v = RawPeer::banner();
    v.extend(p.frame(&ControlFrame::Hello(Hello {
        entity_type: entity_type::CLIENT,
        peer_addr: server_addr(),
    })));
    s.handle_input(now, &v);
    // cephx is not what this server speaks: each attempt is refused with AUTH_BAD_METHOD.
    let bad = AuthRequest {
        method: AUTH_METHOD_CEPHX,
        preferred_modes: vec![CON_MODE_CRC],
        auth_payload: Bytes::from_static(b"x"),
    };
    for attempt in 1..=4 {
        let v = p.frame(&ControlFrame::AuthRequest(bad.clone()));
        s.handle_input(now, &v);
        let evs = drain_events(&mut s);
        if attempt <= 3 {
            assert!(!s.is_closed(), "attempt {attempt}: {evs:?}");
        } else {
            assert!(
                evs.iter().any(|e| matches!(
                    e,
                    Event::TransportDown(Error::LimitExceeded {
                        limit: msgr::proto::Limit::AuthAttempts,
                        value: 4,
                        max: 3
                    })
                )),
                "{evs:?}"
            );
        }
    }
}

/// Issue 13: input that keeps coming cannot keep a handshake alive past its deadline, even if the
/// owner never gets to run its timers.
#[test]
fn test_server_handshake_deadline_is_checked_on_input() {
    let now = Instant::now();
    let mut s = Connection::server(arc(server_config(6)), server_addr(), now);
    let deadline = s.poll_timeout().expect("handshake deadline");
    // One byte of banner at a time, the last one after the deadline: no timer call in between.
    let banner = RawPeer::banner();
    s.handle_input(now, &banner[..4]);
    assert!(!s.is_closed());
    s.handle_input(deadline, &banner[4..8]);
    let evs = drain_events(&mut s);
    assert!(
        evs.iter()
            .any(|e| matches!(e, Event::TransportDown(Error::TimedOut(_)) | Event::Closed)),
        "{evs:?}"
    );
    assert!(s.is_closed());
}
