//! Hostile input against cephx and secure mode: the auth frames every unauthenticated peer may send,
//! and the encrypted frames after AUTH_DONE.
//!
//! - monitor role (`ServerAuth::cephx_monitor`): arbitrary, structured and mutated AUTH_REQUEST /
//!   AUTH_REQUEST_MORE payloads, raw and in transit between a real client and the monitor;
//! - service role (`ServerAuth::cephx_service`): arbitrary authorizers, mutations of real ones made by a
//!   client holding a valid ticket, a replayed authorizer;
//! - client role (`ClientAuth::cephx`): arbitrary AUTH_REPLY_MORE / AUTH_DONE, raw and in transit;
//! - secure mode: a real secure session (cephx client ↔ msgr monitor) recorded after AUTH_DONE, then
//!   bit flips, truncation, dropped, swapped, replayed and foreign frames fed to the peer;
//! - memory: an encrypted frame announcing a huge length, sealed with the session's real key by a
//!   hand-driven monitor, allocates nothing big (a per-thread counting allocator, as in hostile_input).
//!
//! The contract: no panic; nobody becomes ready without holding the key (AUTH_SIGNATURE covers every
//! auth byte, so a payload changed in transit never completes a handshake); the end is AUTH_BAD_METHOD
//! or a typed error; a message is delivered only if it is byte-identical to one its peer sent, in order.

mod common;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use common::hostile::{feed_in_chunks, outcome, Mutation, Outcome};
use common::*;
use msgr::proto::auth::cephx::{
    Authenticate, ServiceTicket, ServiceVerdict, TicketBlob, CEPHX_GET_AUTH_SESSION_KEY,
};
use msgr::proto::auth::{
    CephxClient, CephxMonitor, CephxService, ClientAuth, ConModes, CryptoKey, Keyring,
    KeyringEntry, ServerAuth, ServiceSecrets, WallAnchor, AUTH_METHOD_CEPHX, CON_MODE_CRC,
    CON_MODE_SECURE,
};
use msgr::proto::banner::Banner;
use msgr::proto::codec::secure::{session_ciphers, SecureTx, INLINE_LEN};
use msgr::proto::codec::{FrameDecoder, FrameError, Tag, PREAMBLE_LEN};
use msgr::proto::conn::{Config, Connection, Policy};
use msgr::proto::control::{
    AuthDone, AuthReplyMore, AuthRequest, AuthRequestMore, AuthSignature, ControlFrame, Hello,
};
use msgr::proto::crc::{ceph_crc32c, PREAMBLE_SEED};
use msgr::proto::denc::{Decode, Decoder, Encode};
use msgr::proto::message::Message;
use msgr::proto::types::{entity_type, AuthEntityName, UTime};
use msgr::proto::{Error, Event, Limit, Phase};
use proptest::collection::vec;
use proptest::prelude::*;

mod alloc_meter;
use alloc_meter::peak_during;

// ---------- a cephx world ----------

const MAX_FRAME: usize = 1 << 20;
/// As in hostile_input: the receive buffer's first 16 KiB, a 64 KiB read in flight, small allocations.
const SLACK: usize = 256 << 10;
/// What refusing an oversized announcement may cost at most.
const REFUSAL_BUDGET: usize = 64 << 10;
const IDLE: Duration = Duration::from_secs(30);
const SEED: u64 = 23;

struct World {
    admin: AuthEntityName,
    admin_key: CryptoKey,
    monitor: Arc<CephxMonitor>,
    service: Arc<CephxService>,
    /// The OSD ticket (and global id) the monitor issued to client.admin.
    osd_ticket: ServiceTicket,
    global_id: u64,
    /// A real first authorizer (no challenge yet) and a real answer to `answer_challenge`.
    authorizer: Bytes,
    answer: Bytes,
    answer_challenge: u64,
}

fn build_world() -> World {
    let mut rng = rand::rng();
    let now = Instant::now();
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let anchor = WallAnchor::new(now, since_epoch);
    let admin = AuthEntityName::new(entity_type::CLIENT, "admin");
    let admin_key = CryptoKey::generate(&mut rng, UTime::default());
    let mut keyring = Keyring::default();
    for (id, key) in [
        ("admin", admin_key.clone()),
        ("other", CryptoKey::generate(&mut rng, UTime::default())),
    ] {
        keyring.insert(KeyringEntry {
            name: AuthEntityName::new(entity_type::CLIENT, id),
            key,
            caps: vec![
                ("mon".into(), "allow *".into()),
                ("osd".into(), "allow *".into()),
            ],
        });
    }
    let secrets = ServiceSecrets::generate(
        &[entity_type::MON, entity_type::OSD],
        &mut rng,
        UTime::default(),
    );
    let service = Arc::new(secrets.service(entity_type::OSD, anchor).unwrap());
    let monitor = Arc::new(CephxMonitor::new(keyring, secrets, anchor));

    // One complete exchange through the public API gives the client its OSD ticket.
    let client = CephxClient::new(admin.clone(), admin_key.clone());
    let (req, mut s) = client.start(entity_type::MON, &mut rng).unwrap();
    let (challenge, ms) = monitor.start(&req, || 4321, &mut rng).unwrap();
    let proof = s.handle_reply_more(&client, &challenge, &mut rng).unwrap();
    let (done, global_id, _) = monitor.finish(&ms, &proof, 64, now, &mut rng).unwrap();
    s.handle_done(&client, global_id, &done).unwrap();
    let osd_ticket = client.ticket(u32::from(entity_type::OSD)).unwrap();

    let (authorizer, mut a) = client.start(entity_type::OSD, &mut rng).unwrap();
    let ServiceVerdict::Challenge {
        payload,
        server_challenge,
    } = service
        .verify(&authorizer, None, 64, now, &mut rng)
        .unwrap()
    else {
        panic!("a first authorizer is challenged");
    };
    let answer = a.handle_reply_more(&client, &payload, &mut rng).unwrap();
    World {
        admin,
        admin_key,
        monitor,
        service,
        osd_ticket,
        global_id,
        authorizer,
        answer,
        answer_challenge: server_challenge,
    }
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(build_world)
}

/// client.admin with its key; holding the OSD ticket when `with_ticket`.
fn admin_client(with_ticket: bool) -> Arc<CephxClient> {
    let w = world();
    let c = CephxClient::new(w.admin.clone(), w.admin_key.clone());
    if with_ticket {
        c.add_tickets(w.global_id, [w.osd_ticket.clone()]);
    }
    Arc::new(c)
}

fn monitor_cfg() -> Arc<Config> {
    let mut c = server_config(SEED);
    c.entity_type = entity_type::MON;
    c.auth_server = ServerAuth::cephx_monitor(world().monitor.clone());
    c.con_modes = ConModes::all(&[CON_MODE_SECURE, CON_MODE_CRC]);
    c.max_frame_len = MAX_FRAME;
    // One limit in every phase: these tests are about the decoder's bound, not the pre-auth default.
    c.max_handshake_frame_len = MAX_FRAME;
    c.idle_timeout = Some(IDLE);
    arc(c)
}

fn service_cfg() -> Arc<Config> {
    let mut c = server_config(SEED);
    c.auth_server = ServerAuth::cephx_service(world().service.clone());
    c.con_modes = ConModes::all(&[CON_MODE_SECURE, CON_MODE_CRC]);
    c.max_frame_len = MAX_FRAME;
    // One limit in every phase: these tests are about the decoder's bound, not the pre-auth default.
    c.max_handshake_frame_len = MAX_FRAME;
    c.idle_timeout = Some(IDLE);
    arc(c)
}

fn cephx_client_conn(now: Instant, peer_type: u8, modes: &[u32]) -> Connection {
    let mut c = client_config(SEED);
    c.auth_client = ClientAuth::cephx(admin_client(peer_type != entity_type::MON));
    c.con_modes = ConModes::all(modes);
    c.max_frame_len = MAX_FRAME;
    // One limit in every phase: these tests are about the decoder's bound, not the pre-auth default.
    c.max_handshake_frame_len = MAX_FRAME;
    c.idle_timeout = Some(IDLE);
    let mut conn = Connection::client(
        arc(c),
        Policy::lossy_client(),
        peer_type,
        server_addr(),
        now,
    );
    assert_eq!(conn.poll_event(), Some(Event::OpenTransport));
    conn.on_transport_connected(now);
    conn
}

// ---------- driving one connection ----------

/// What a connection said and did while fed: its events and its output bytes.
#[derive(Default)]
struct Seen {
    events: Vec<Event>,
    out: Vec<Bytes>,
}

impl Seen {
    /// The control frames in the crc-mode part of the output (the banner skipped; decoding stops at
    /// the first secure frame, which does not parse as a crc frame).
    fn control_frames(&self) -> Vec<ControlFrame> {
        let mut rx = BytesMut::from(&self.out.concat()[..]);
        if let Ok(Some((_, n))) = Banner::decode(&rx) {
            let _ = rx.split_to(n);
        }
        let mut dec = FrameDecoder::new(MAX_FRAME);
        let mut frames = Vec::new();
        while let Ok(Some(f)) = dec.decode(&mut rx) {
            match ControlFrame::decode(f.tag, f.payload()) {
                Ok(cf) => frames.push(cf),
                Err(_) => break,
            }
        }
        frames
    }

    fn sent(&self, tag: Tag) -> bool {
        self.control_frames().iter().any(|f| f.tag() == tag)
    }

    fn messages(&self) -> Vec<&Message> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Message(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    fn connected(&self) -> bool {
        self.events
            .iter()
            .any(|e| matches!(e, Event::Connected { .. }))
    }
}

/// Takes a connection's output and events, answering session requests as a lone messenger would.
fn pump(conn: &mut Connection, now: Instant, seen: &mut Seen) {
    loop {
        conn.poll_transmit(now, &mut seen.out);
        let Some(ev) = conn.poll_event() else { break };
        if let Event::SessionRequest(_) = ev {
            conn.resolve_session(now, None);
        }
        seen.events.push(ev);
    }
}

/// Feeds `stream` in chunks cycling through `chunks` (whole if empty), pumping after each.
fn feed(conn: &mut Connection, now: Instant, stream: &[u8], chunks: &[usize], seen: &mut Seen) {
    feed_in_chunks(conn, now, stream, chunks, |c| pump(c, now, seen));
}

/// Fires the pending timers of a waiting connection (earlier housekeeping ones, such as the idle
/// buffer release, first): it must end with a typed timeout.
fn expire(conn: &mut Connection, seen: &mut Seen) -> Error {
    for _ in 0..8 {
        let deadline = conn
            .poll_timeout()
            .expect("a waiting connection has a deadline");
        conn.handle_timeout(deadline);
        pump(conn, deadline, seen);
        match outcome(conn, &seen.events) {
            Outcome::Failed(e @ Error::TimedOut(_)) => return e,
            Outcome::Waiting => continue,
            other => panic!("after its deadline: {other:?}"),
        }
    }
    panic!("still waiting after 8 deadlines")
}

/// Errors that authentication input may end a connection with.
fn typed_auth_error(e: &Error) -> bool {
    matches!(
        e,
        Error::AuthFailed(_) | Error::Decode(_) | Error::PeerMisbehaved(_) | Error::InvalidFrame(_)
    )
}

fn assert_not_authenticated(conn: &Connection, seen: &Seen, what: &str) {
    assert!(!conn.is_ready(), "{what}: ready");
    assert!(!seen.connected(), "{what}: connected");
    assert!(seen.messages().is_empty(), "{what}: delivered a message");
}

fn enc_frame(cf: &ControlFrame) -> Vec<u8> {
    RawPeer::new().frame(cf)
}

/// What a client says before its auth payload: banner and HELLO.
fn client_hello() -> Vec<u8> {
    let mut v = RawPeer::banner();
    v.extend(enc_frame(&ControlFrame::Hello(Hello {
        entity_type: entity_type::CLIENT,
        peer_addr: server_addr(),
    })));
    v
}

/// What a server says before its auth answers: banner and HELLO.
fn server_hello(peer_type: u8) -> Vec<u8> {
    let mut v = RawPeer::banner();
    v.extend(enc_frame(&ControlFrame::Hello(Hello {
        entity_type: peer_type,
        peer_addr: client_addr(),
    })));
    v
}

fn auth_request(payload: Bytes) -> Vec<u8> {
    enc_frame(&ControlFrame::AuthRequest(AuthRequest {
        method: AUTH_METHOD_CEPHX,
        preferred_modes: vec![CON_MODE_SECURE, CON_MODE_CRC],
        auth_payload: payload,
    }))
}

fn auth_request_more(payload: Bytes) -> Vec<u8> {
    enc_frame(&ControlFrame::AuthRequestMore(AuthRequestMore {
        auth_payload: payload,
    }))
}

/// A real AUTH_REQUEST payload toward a monitor (mode mon, client.admin, global id 0).
fn real_mon_request() -> Bytes {
    admin_client(false)
        .start(entity_type::MON, &mut rand::rng())
        .unwrap()
        .0
}

fn chunking() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![Just(vec![]), Just(vec![1]), vec(1usize..300, 1..8)]
}

// ---------- mutations ----------

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        1 => (any::<usize>(), 1usize..16).prop_map(|(at, len)| Mutation::Delete { at, len }),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Overwrite { at, byte }),
        1 => any::<usize>().prop_map(|at| Mutation::Truncate { at }),
    ]
}

fn mutated(original: &[u8], muts: &[Mutation]) -> Bytes {
    let mut v = original.to_vec();
    for m in muts {
        m.apply(&mut v);
    }
    v.into()
}

// ---------- a live pair with a tampering wire ----------

/// Which auth frame the wire tampers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Request,
    RequestMore,
    ReplyMore,
    Done,
}

/// What the wire saw of the frame it tampered with: the original payload and what it forwarded.
#[derive(Debug, Default)]
struct Tampered {
    original: Option<Bytes>,
    forwarded: Option<Bytes>,
}

impl Tampered {
    fn changed(&self) -> bool {
        self.original.is_some() && self.original != self.forwarded
    }
}

/// If `piece` is exactly one crc-mode frame carrying `target`, returns it re-encoded (valid crcs)
/// with its auth payload mutated, and records both payloads.
fn tamper_piece(piece: &Bytes, target: Target, muts: &[Mutation], t: &mut Tampered) -> Bytes {
    let mut rx = BytesMut::from(&piece[..]);
    let Ok(Some(f)) = FrameDecoder::new(MAX_FRAME).decode(&mut rx) else {
        return piece.clone();
    };
    if !rx.is_empty() || t.original.is_some() {
        return piece.clone();
    }
    let Ok(cf) = ControlFrame::decode(f.tag, f.payload()) else {
        return piece.clone();
    };
    let (orig, rebuilt) = match (target, cf) {
        (Target::Request, ControlFrame::AuthRequest(mut r)) => {
            let orig = r.auth_payload.clone();
            r.auth_payload = mutated(&orig, muts);
            (orig, ControlFrame::AuthRequest(r))
        }
        (Target::RequestMore, ControlFrame::AuthRequestMore(mut r)) => {
            let orig = r.auth_payload.clone();
            r.auth_payload = mutated(&orig, muts);
            (orig, ControlFrame::AuthRequestMore(r))
        }
        (Target::ReplyMore, ControlFrame::AuthReplyMore(mut r)) => {
            let orig = r.auth_payload.clone();
            r.auth_payload = mutated(&orig, muts);
            (orig, ControlFrame::AuthReplyMore(r))
        }
        (Target::Done, ControlFrame::AuthDone(mut r)) => {
            let orig = r.auth_payload.clone();
            r.auth_payload = mutated(&orig, muts);
            (orig, ControlFrame::AuthDone(r))
        }
        _ => return piece.clone(),
    };
    let payload = match &rebuilt {
        ControlFrame::AuthRequest(r) => r.auth_payload.clone(),
        ControlFrame::AuthRequestMore(r) => r.auth_payload.clone(),
        ControlFrame::AuthReplyMore(r) => r.auth_payload.clone(),
        ControlFrame::AuthDone(r) => r.auth_payload.clone(),
        _ => unreachable!(),
    };
    t.original = Some(orig);
    t.forwarded = Some(payload);
    Bytes::from(enc_frame(&rebuilt))
}

struct LivePair {
    client: Connection,
    server: Connection,
    c: Seen,
    s: Seen,
}

/// A cephx client (toward `server_cfg`'s role) and that server, with the wire between them
/// tampering with the `target` frame once; pumped until quiet.
fn live_pair(
    server_cfg: Arc<Config>,
    peer_type: u8,
    target: Target,
    muts: &[Mutation],
) -> (LivePair, Tampered) {
    let now = Instant::now();
    let mut p = LivePair {
        client: cephx_client_conn(now, peer_type, &[CON_MODE_SECURE, CON_MODE_CRC]),
        server: Connection::server(server_cfg, client_addr(), now),
        c: Seen::default(),
        s: Seen::default(),
    };
    let mut t = Tampered::default();
    let c2s = matches!(target, Target::Request | Target::RequestMore);
    for _ in 0..100 {
        let (nc, ns) = (p.c.out.len(), p.s.out.len());
        pump(&mut p.client, now, &mut p.c);
        pump(&mut p.server, now, &mut p.s);
        let from_client: Vec<Bytes> = p.c.out[nc..].to_vec();
        let from_server: Vec<Bytes> = p.s.out[ns..].to_vec();
        if from_client.is_empty() && from_server.is_empty() {
            break;
        }
        for b in &from_client {
            let b = if c2s {
                tamper_piece(b, target, muts, &mut t)
            } else {
                b.clone()
            };
            p.server.handle_input(now, &b);
        }
        for b in &from_server {
            let b = if c2s {
                b.clone()
            } else {
                tamper_piece(b, target, muts, &mut t)
            };
            p.client.handle_input(now, &b);
        }
    }
    assert!(t.original.is_some(), "the wire never saw {target:?}");
    (p, t)
}

/// The tampering-wire contract: unchanged → both ready; changed → neither ready, nothing delivered,
/// each side refused (AUTH_BAD_METHOD), failed with a typed error, or is waiting (its deadline then
/// ends it with a typed timeout).
fn check_tampered_pair(mut p: LivePair, t: &Tampered) -> Result<(), TestCaseError> {
    if !t.changed() {
        prop_assert!(
            p.client.is_ready() && p.server.is_ready(),
            "untouched, yet not ready"
        );
        return Ok(());
    }
    assert_not_authenticated(&p.server, &p.s, "server");
    assert_not_authenticated(&p.client, &p.c, "client");
    for (conn, seen) in [(&mut p.server, &mut p.s), (&mut p.client, &mut p.c)] {
        match outcome(conn, &seen.events) {
            Outcome::Failed(e) => prop_assert!(typed_auth_error(&e), "{e:?}"),
            Outcome::Waiting => {
                expire(conn, seen);
            }
        }
    }
    Ok(())
}

// ---------- (a) monitor role ----------

/// An Authenticate with arbitrary fields, as a forger without the key would send.
fn forged_proof() -> impl Strategy<Value = Bytes> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        vec(any::<u8>(), 0..64),
        any::<u32>(),
    )
        .prop_map(|(client_challenge, key, secret_id, blob, other_keys)| {
            let mut b = BytesMut::new();
            b.put_u16_le(CEPHX_GET_AUTH_SESSION_KEY);
            Authenticate {
                client_challenge,
                key,
                old_ticket: TicketBlob {
                    secret_id,
                    blob: blob.into(),
                },
                other_keys,
            }
            .encode(&mut b);
            b.freeze()
        })
}

fn arbitrary_payload() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..400).prop_map(Bytes::from)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// AUTH_REQUEST (method cephx) with an arbitrary payload: refused with AUTH_BAD_METHOD; an
    /// AUTH_REQUEST_MORE after the refusal is a typed error.
    #[test]
    fn monitor_refuses_arbitrary_auth_requests(
        payload in arbitrary_payload(),
        more in proptest::option::of(arbitrary_payload()),
        chunks in chunking(),
    ) {
        let now = Instant::now();
        let mut s = Connection::server(monitor_cfg(), client_addr(), now);
        let mut stream = client_hello();
        stream.extend(auth_request(payload));
        let mut seen = Seen::default();
        feed(&mut s, now, &stream, &chunks, &mut seen);
        if let Some(m) = &more {
            feed(&mut s, now, &auth_request_more(m.clone()), &chunks, &mut seen);
        }
        assert_not_authenticated(&s, &seen, "monitor");
        let frames = seen.control_frames();
        prop_assert!(frames.iter().any(|f| matches!(f, ControlFrame::AuthBadMethod(b) if b.method == AUTH_METHOD_CEPHX && b.allowed_methods == [AUTH_METHOD_CEPHX])), "{frames:?}");
        prop_assert!(!seen.sent(Tag::AuthReplyMore) && !seen.sent(Tag::AuthDone));
        match (outcome(&s, &seen.events), more) {
            (Outcome::Waiting, None) => prop_assert_eq!(s.phase(), Phase::Auth),
            (Outcome::Failed(e), Some(_)) => prop_assert!(matches!(e, Error::PeerMisbehaved(_)), "{e:?}"),
            (o, more) => prop_assert!(false, "{o:?} with more = {more:?}"),
        }
    }

    /// A valid AUTH_REQUEST (client.admin) then an arbitrary, forged or mutated-request proof: the
    /// monitor challenges, then refuses with AUTH_BAD_METHOD; never AUTH_DONE.
    #[test]
    fn monitor_refuses_arbitrary_and_forged_proofs(
        request_muts in proptest::option::of(vec(mutation(), 1..4)),
        proof in prop_oneof![arbitrary_payload(), forged_proof()],
        chunks in chunking(),
    ) {
        let now = Instant::now();
        let mut s = Connection::server(monitor_cfg(), client_addr(), now);
        let real = real_mon_request();
        let request = match &request_muts {
            Some(m) => mutated(&real, m),
            None => real.clone(),
        };
        let mut stream = client_hello();
        stream.extend(auth_request(request.clone()));
        stream.extend(auth_request_more(proof));
        let mut seen = Seen::default();
        feed(&mut s, now, &stream, &chunks, &mut seen);
        assert_not_authenticated(&s, &seen, "monitor");
        prop_assert!(!seen.sent(Tag::AuthDone), "a proof without the key was accepted");
        let challenged = seen.sent(Tag::AuthReplyMore);
        if request == real {
            prop_assert!(challenged);
        }
        prop_assert!(seen.sent(Tag::AuthBadMethod) || !challenged);
        match outcome(&s, &seen.events) {
            Outcome::Waiting => prop_assert!(seen.sent(Tag::AuthBadMethod)),
            Outcome::Failed(e) => prop_assert!(typed_auth_error(&e), "{e:?}"),
        }
    }

    /// A real client and the monitor, the wire mutating AUTH_REQUEST or AUTH_REQUEST_MORE: never
    /// ready. When the monitor still answered AUTH_DONE, the changed payload carried client.admin's
    /// genuine proof (the mutation hit a field cephx does not cover: the claimed global id, the wanted
    /// services, trailing bytes), and the client's AUTH_SIGNATURE check ends it.
    #[test]
    fn monitor_payloads_changed_in_transit_never_authenticate(
        target in prop_oneof![Just(Target::Request), Just(Target::RequestMore)],
        muts in vec(mutation(), 1..4),
    ) {
        let (p, t) = live_pair(monitor_cfg(), entity_type::MON, target, &muts);
        if t.changed() && p.s.sent(Tag::AuthDone) {
            let (orig, fwd) = (t.original.clone().unwrap(), t.forwarded.clone().unwrap());
            match target {
                Target::Request => {
                    let name = |b: &[u8]| {
                        let d = &mut Decoder::new(b);
                        d.u8().ok()?;
                        AuthEntityName::decode(d).ok()
                    };
                    prop_assert_eq!(name(&fwd), name(&orig));
                }
                _ => {
                    let proof = |b: &[u8]| {
                        let d = &mut Decoder::new(b);
                        d.u16().ok()?;
                        Authenticate::decode(d).ok().map(|a| (a.client_challenge, a.key))
                    };
                    prop_assert!(proof(&fwd).is_some());
                    prop_assert_eq!(proof(&fwd), proof(&orig));
                }
            }
            prop_assert!(
                p.c.events.iter().any(|e| matches!(e, Event::Reset(Error::AuthFailed(w)) | Event::TransportDown(Error::AuthFailed(w)) if w.contains("AUTH_SIGNATURE"))),
                "{:?}", p.c.events
            );
        }
        check_tampered_pair(p, &t)?;
    }
}

// ---------- (b) service role ----------

/// An authorizer shaped like a real one (mode 1, global id, service OSD, a ticket blob with the
/// right secret id) with arbitrary sealed parts.
fn forged_authorizer() -> impl Strategy<Value = Bytes> {
    (
        any::<u64>(),
        vec(any::<u8>(), 0..200),
        vec(any::<u8>(), 0..80),
    )
        .prop_map(|(global_id, blob, sealed)| {
            let mut b = BytesMut::new();
            b.put_u8(1);
            b.put_u64_le(global_id);
            b.put_u32_le(u32::from(entity_type::OSD));
            TicketBlob {
                secret_id: 1,
                blob: blob.into(),
            }
            .encode(&mut b);
            b.put_u32_le(sealed.len() as u32);
            b.put_slice(&sealed);
            b.freeze()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary, forged and mutated authorizers in AUTH_REQUEST, then an arbitrary (or replayed
    /// real) AUTH_REQUEST_MORE: never AUTH_DONE, never ready; refused with AUTH_BAD_METHOD or a typed
    /// error.
    #[test]
    fn service_refuses_arbitrary_and_mutated_authorizers(
        authorizer in prop_oneof![
            arbitrary_payload(),
            forged_authorizer(),
            vec(mutation(), 1..4).prop_map(|m| mutated(&world().authorizer, &m)),
        ],
        more in prop_oneof![
            arbitrary_payload(),
            forged_authorizer(),
            Just(world().answer.clone()),
        ],
        chunks in chunking(),
    ) {
        let now = Instant::now();
        let mut s = Connection::server(service_cfg(), client_addr(), now);
        let mut stream = client_hello();
        stream.extend(auth_request(authorizer));
        stream.extend(auth_request_more(more));
        let mut seen = Seen::default();
        feed(&mut s, now, &stream, &chunks, &mut seen);
        assert_not_authenticated(&s, &seen, "service");
        prop_assert!(!seen.sent(Tag::AuthDone), "an authorizer without a live challenge answer was accepted");
        match outcome(&s, &seen.events) {
            Outcome::Waiting => prop_assert!(seen.sent(Tag::AuthBadMethod)),
            Outcome::Failed(e) => prop_assert!(typed_auth_error(&e), "{e:?}"),
        }
    }

    /// A client holding a valid ticket and the service, the wire mutating its authorizer (first or
    /// challenge answer): ready if and only if the authorizer went through unmodified.
    #[test]
    fn service_is_ready_only_with_the_unmodified_authorizer(
        target in prop_oneof![Just(Target::Request), Just(Target::RequestMore)],
        muts in vec(mutation(), 1..4),
    ) {
        let (p, t) = live_pair(service_cfg(), entity_type::OSD, target, &muts);
        prop_assert_eq!(p.server.is_ready(), !t.changed());
        check_tampered_pair(p, &t)?;
    }

    /// One layer down, `CephxService::verify` with the challenge the real answer was made for: a
    /// mutated answer is accepted only for the same entity and global id. (cephx seals tickets with
    /// AES-CBC and no MAC, as Ceph does: a flip in an unchecked ticket field can survive here; the
    /// connection still refuses it, see the test above, because AUTH_SIGNATURE covers every byte.)
    #[test]
    fn a_mutated_authorizer_never_authenticates_someone_else(muts in vec(mutation(), 1..4)) {
        let w = world();
        let m = mutated(&w.answer, &muts);
        let verdict = w.service.verify(&m, Some(w.answer_challenge), 64, Instant::now(), &mut rand::rng());
        if let Ok(ServiceVerdict::Done { name, global_id, .. }) = verdict {
            prop_assert_eq!(&name, &w.admin);
            prop_assert_eq!(global_id, w.global_id);
        }
    }
}

/// A real client's whole pre-AUTH_DONE stream to a service (banner, HELLO, authorizer, challenge
/// answer) replayed to a fresh service connection: the replayed answer is for the old challenge.
#[test]
fn a_replayed_authorizer_exchange_is_refused() {
    let (p, t) = live_pair(service_cfg(), entity_type::OSD, Target::Request, &[]);
    assert!(!t.changed() && p.server.is_ready());
    // Everything the client sent up to and including AUTH_REQUEST_MORE (crc mode, before secure).
    let mut rx = BytesMut::from(&p.c.out.concat()[..]);
    let (_, n) = Banner::decode(&rx).unwrap().unwrap();
    let mut replay = rx.split_to(n).to_vec();
    let mut dec = FrameDecoder::new(MAX_FRAME);
    loop {
        let before = rx.clone();
        let f = dec.decode(&mut rx).unwrap().unwrap();
        replay.extend_from_slice(&before[..before.len() - rx.len()]);
        if f.tag == Tag::AuthRequestMore {
            break;
        }
    }
    let now = Instant::now();
    let mut s = Connection::server(service_cfg(), client_addr(), now);
    let mut seen = Seen::default();
    feed(&mut s, now, &replay, &[], &mut seen);
    assert_not_authenticated(&s, &seen, "replay");
    let frames = seen.control_frames();
    assert!(
        matches!(frames.last(), Some(ControlFrame::AuthBadMethod(_))),
        "{frames:?}"
    );
    assert!(!seen.sent(Tag::AuthDone));
    assert_eq!(outcome(&s, &seen.events), Outcome::Waiting);
}

// ---------- (c) client role ----------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A cephx client (to a monitor, or to an OSD with a ticket) fed arbitrary AUTH_REPLY_MORE and
    /// AUTH_DONE payloads, then an arbitrary AUTH_SIGNATURE: a typed error, never ready.
    #[test]
    fn cephx_client_refuses_arbitrary_replies(
        to_mon in any::<bool>(),
        reply_more in proptest::option::of(arbitrary_payload()),
        done in arbitrary_payload(),
        secure in any::<bool>(),
        signature in any::<[u8; 32]>(),
        chunks in chunking(),
    ) {
        let now = Instant::now();
        let peer_type = if to_mon { entity_type::MON } else { entity_type::OSD };
        let mut c = cephx_client_conn(now, peer_type, &[CON_MODE_SECURE, CON_MODE_CRC]);
        let mut stream = server_hello(peer_type);
        if let Some(m) = reply_more {
            stream.extend(enc_frame(&ControlFrame::AuthReplyMore(AuthReplyMore { auth_payload: m })));
        }
        stream.extend(enc_frame(&ControlFrame::AuthDone(AuthDone {
            global_id: 4321,
            con_mode: if secure { CON_MODE_SECURE } else { CON_MODE_CRC },
            auth_payload: done,
        })));
        stream.extend(enc_frame(&ControlFrame::AuthSignature(AuthSignature { signature })));
        let mut seen = Seen::default();
        feed(&mut c, now, &stream, &chunks, &mut seen);
        assert_not_authenticated(&c, &seen, "client");
        match outcome(&c, &seen.events) {
            Outcome::Failed(e) => prop_assert!(typed_auth_error(&e), "{e:?}"),
            Outcome::Waiting => prop_assert!(false, "still waiting after AUTH_DONE and a forged signature"),
        }
    }

    /// A real client and monitor, the wire mutating AUTH_REPLY_MORE or AUTH_DONE: never ready.
    #[test]
    fn monitor_replies_changed_in_transit_never_authenticate(
        target in prop_oneof![Just(Target::ReplyMore), Just(Target::Done)],
        muts in vec(mutation(), 1..4),
    ) {
        let (p, t) = live_pair(monitor_cfg(), entity_type::MON, target, &muts);
        check_tampered_pair(p, &t)?;
    }

    /// The same toward a service with a ticket.
    #[test]
    fn service_replies_changed_in_transit_never_authenticate(
        target in prop_oneof![Just(Target::ReplyMore), Just(Target::Done)],
        muts in vec(mutation(), 1..4),
    ) {
        let (p, t) = live_pair(service_cfg(), entity_type::OSD, target, &muts);
        check_tampered_pair(p, &t)?;
    }
}

// ---------- (d) secure mode: a recorded session, tampered ----------

/// Which direction's encrypted frames a recording captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// The monitor's frames after its AUTH_SIGNATURE (SERVER_IDENT, messages), for the client.
    ServerToClient,
    /// The ready client's MESSAGE frames, for the ready monitor.
    ClientToServer,
}

/// A real secure session between a cephx client and a msgr monitor, cut at a direction's encrypted
/// frames: `peer` has not seen `pieces` (one element per frame), which carry `messages`.
struct SecureRecording {
    peer: Connection,
    pieces: Vec<Bytes>,
    messages: Vec<Message>,
}

fn secure_messages(pool: &PayloadPool, base: u64) -> Vec<Message> {
    vec![
        pool.message(base, 0),
        pool.message(base + 1, 100),
        pool.message(base + 2, 4096)
            .with_middle(pool.payload(base + 3, 10))
            .with_data(pool.payload(base + 4, 20_000)),
        pool.message(base + 5, 1),
        pool.message(base + 6, 3000),
    ]
}

fn is_frame(piece: &[u8], tag: Tag) -> bool {
    let mut rx = BytesMut::from(piece);
    matches!(FrameDecoder::new(MAX_FRAME).decode(&mut rx), Ok(Some(f)) if f.tag == tag)
}

fn record_secure(dir: Direction) -> SecureRecording {
    let now = Instant::now();
    let pool = PayloadPool::new(SEED, 64 << 10);
    let mut client = cephx_client_conn(now, entity_type::MON, &[CON_MODE_SECURE]);
    let mut server = Connection::server(monitor_cfg(), client_addr(), now);
    let (mut cs, mut ss) = (Seen::default(), Seen::default());
    // ServerToClient: the server's pieces after AUTH_DONE are held back from the client.
    let mut held = Vec::new();
    let mut holding = false;
    let mut after_done = false;
    let mut sent = false;
    let to_client = secure_messages(&pool, 100);
    for _ in 0..100 {
        let (nc, ns) = (cs.out.len(), ss.out.len());
        pump(&mut client, now, &mut cs);
        pump(&mut server, now, &mut ss);
        if dir == Direction::ServerToClient && !sent && ss.connected() {
            for m in to_client.clone() {
                server.send(now, m).unwrap();
            }
            sent = true;
            pump(&mut server, now, &mut ss);
        }
        let from_client: Vec<Bytes> = cs.out[nc..].to_vec();
        let from_server: Vec<Bytes> = ss.out[ns..].to_vec();
        if from_client.is_empty() && from_server.is_empty() {
            break;
        }
        for b in &from_client {
            server.handle_input(now, b);
        }
        for b in from_server {
            if holding {
                held.push(b);
                continue;
            }
            client.handle_input(now, &b);
            // Hold back from the frame after the server's AUTH_SIGNATURE (which follows AUTH_DONE):
            // the client needs that signature to send CLIENT_IDENT, the server that to get ready.
            if dir == Direction::ServerToClient {
                if after_done {
                    holding = true;
                }
                after_done |= is_frame(&b, Tag::AuthDone);
            }
        }
    }
    match dir {
        Direction::ServerToClient => {
            assert!(server.is_ready() && !client.is_ready());
            assert_eq!(client.phase(), Phase::Session);
            assert_eq!(client.con_mode(), CON_MODE_SECURE);
            SecureRecording {
                peer: client,
                pieces: held,
                messages: to_client,
            }
        }
        Direction::ClientToServer => {
            assert!(server.is_ready() && client.is_ready(), "{:?}", cs.events);
            assert_eq!(server.con_mode(), CON_MODE_SECURE);
            let messages = secure_messages(&pool, 200);
            for m in messages.clone() {
                client.send(now, m).unwrap();
            }
            let mut pieces = Vec::new();
            client.poll_transmit(now, &mut pieces);
            assert!(pieces.len() >= messages.len());
            SecureRecording {
                peer: server,
                pieces,
                messages,
            }
        }
    }
}

/// A change to the recorded encrypted frames: byte-level or whole frames.
#[derive(Debug, Clone)]
enum WireChange {
    Flip {
        at: usize,
        bit: u8,
    },
    Truncate {
        at: usize,
    },
    /// A copy of frame `piece` inserted before frame `to` (a replay).
    Replay {
        piece: usize,
        to: usize,
    },
    Drop {
        piece: usize,
    },
    Swap {
        a: usize,
        b: usize,
    },
    /// A frame of another session's recording inserted before frame `to`.
    Foreign {
        piece: usize,
        to: usize,
    },
}

fn wire_change() -> impl Strategy<Value = WireChange> {
    let i = || any::<usize>();
    prop_oneof![
        3 => (i(), 0u8..8).prop_map(|(at, bit)| WireChange::Flip { at, bit }),
        1 => i().prop_map(|at| WireChange::Truncate { at }),
        2 => (i(), i()).prop_map(|(piece, to)| WireChange::Replay { piece, to }),
        1 => i().prop_map(|piece| WireChange::Drop { piece }),
        1 => (i(), i()).prop_map(|(a, b)| WireChange::Swap { a, b }),
        1 => (i(), i()).prop_map(|(piece, to)| WireChange::Foreign { piece, to }),
    ]
}

fn apply_changes(pieces: &[Bytes], foreign: &[Bytes], changes: &[WireChange]) -> Vec<u8> {
    let mut p: Vec<Vec<u8>> = pieces.iter().map(|b| b.to_vec()).collect();
    for c in changes {
        if p.is_empty() {
            break;
        }
        let n = p.len();
        match *c {
            WireChange::Flip { at, bit } => {
                let total: usize = p.iter().map(Vec::len).sum();
                if total == 0 {
                    continue;
                }
                let mut at = at % total;
                for piece in p.iter_mut() {
                    if at < piece.len() {
                        piece[at] ^= 1 << bit;
                        break;
                    }
                    at -= piece.len();
                }
            }
            WireChange::Truncate { at } => {
                let mut all = p.concat();
                all.truncate(at % all.len().max(1));
                p = vec![all];
            }
            WireChange::Replay { piece, to } => {
                let copy = p[piece % n].clone();
                p.insert(to % (n + 1), copy);
            }
            WireChange::Drop { piece } => {
                p.remove(piece % n);
            }
            WireChange::Swap { a, b } => p.swap(a % n, b % n),
            WireChange::Foreign { piece, to } => {
                p.insert(to % (n + 1), foreign[piece % foreign.len()].to_vec());
            }
        }
    }
    p.concat()
}

/// What a message carries end to end: type, tid and its three payload segments (the sender fills in
/// seq and the header crcs when it encodes, so whole `Message`s are compared only after the wire).
fn contents<'a>(
    msgs: impl IntoIterator<Item = &'a Message>,
) -> Vec<(u16, u64, Bytes, Bytes, Bytes)> {
    msgs.into_iter()
        .map(|m| {
            (
                m.header.msg_type,
                m.header.tid,
                m.front.clone(),
                m.middle.clone(),
                m.data.clone(),
            )
        })
        .collect()
}

/// Another session's client→server frames: a valid-looking secure frame under another key.
fn foreign_pieces() -> &'static [Bytes] {
    static F: OnceLock<Vec<Bytes>> = OnceLock::new();
    F.get_or_init(|| record_secure(Direction::ClientToServer).pieces)
}

#[test]
fn clean_secure_recordings_deliver_everything() {
    for dir in [Direction::ServerToClient, Direction::ClientToServer] {
        let now = Instant::now();
        let mut r = record_secure(dir);
        let mut seen = Seen::default();
        feed(
            &mut r.peer,
            now,
            &r.pieces.concat(),
            &[7, 300, 4096],
            &mut seen,
        );
        assert_eq!(contents(seen.messages()), contents(&r.messages), "{dir:?}");
        assert!(r.peer.is_ready(), "{dir:?}");
        assert_eq!(outcome(&r.peer, &seen.events), Outcome::Waiting);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Bit flips, truncation, dropped / swapped / replayed frames and frames from another session,
    /// fed after AUTH_DONE to the peer of a real secure session: no panic; the messages delivered are
    /// byte-identical to the originals, in order, each once (a prefix of what was sent); a changed
    /// stream ends in a typed error (a failed GCM tag, or the deadline for a stream cut short).
    #[test]
    fn tampered_secure_frames_are_never_delivered(
        to_client in any::<bool>(),
        changes in vec(wire_change(), 1..4),
        chunks in chunking(),
    ) {
        let dir = if to_client { Direction::ServerToClient } else { Direction::ClientToServer };
        let now = Instant::now();
        let mut r = record_secure(dir);
        let original = r.pieces.concat();
        let stream = apply_changes(&r.pieces, foreign_pieces(), &changes);
        let mut seen = Seen::default();
        feed(&mut r.peer, now, &stream, &chunks, &mut seen);
        let got = contents(seen.messages());
        let sent = contents(&r.messages);
        prop_assert!(got.len() <= sent.len() && got[..] == sent[..got.len()],
            "delivered {} messages that are not a prefix of the {} sent", got.len(), r.messages.len());
        if stream == original {
            prop_assert_eq!(got.len(), sent.len());
            return Ok(());
        }
        match outcome(&r.peer, &seen.events) {
            Outcome::Failed(e) => prop_assert_eq!(e, Error::InvalidFrame(FrameError::AuthFailed)),
            // A frame cut short (truncation, or a change inside the last, incomplete frame) cannot be
            // checked before it completes: the deadline ends the connection.
            Outcome::Waiting => {
                expire(&mut r.peer, &mut seen);
            }
        }
    }
}

// ---------- (e) memory: a huge length announced inside an authenticated secure frame ----------

/// A cephx client in secure mode, authenticated by a monitor driven by hand through the public
/// `CephxMonitor` API, so the test holds the connection secret: returns the client (its AUTH_DONE
/// processed) and the monitor's sending cipher.
fn secure_client_with_known_key(now: Instant) -> (Connection, SecureTx) {
    let w = world();
    let mut rng = rand::rng();
    let mut c = cephx_client_conn(now, entity_type::MON, &[CON_MODE_SECURE]);
    let mut peer = RawPeer::new();
    c.handle_input(now, &server_hello(entity_type::MON));
    let frames = peer.recv_control(&mut c, now);
    let Some(ControlFrame::AuthRequest(req)) = frames.last() else {
        panic!("{frames:?}");
    };
    let (challenge, session) = w
        .monitor
        .start(&req.auth_payload, || 4444, &mut rng)
        .unwrap();
    c.handle_input(
        now,
        &peer.frame(&ControlFrame::AuthReplyMore(AuthReplyMore {
            auth_payload: challenge,
        })),
    );
    let frames = peer.recv_control(&mut c, now);
    let Some(ControlFrame::AuthRequestMore(more)) = frames.last() else {
        panic!("{frames:?}");
    };
    let (done, gid, secrets) = w
        .monitor
        .finish(&session, &more.auth_payload, 64, now, &mut rng)
        .unwrap();
    c.handle_input(
        now,
        &peer.frame(&ControlFrame::AuthDone(AuthDone {
            global_id: gid,
            con_mode: CON_MODE_SECURE,
            auth_payload: done,
        })),
    );
    let mut seen = Seen::default();
    pump(&mut c, now, &mut seen);
    assert_eq!(outcome(&c, &seen.events), Outcome::Waiting);
    assert_eq!(
        (c.phase(), c.con_mode()),
        (Phase::AuthSignature, CON_MODE_SECURE)
    );
    let (tx, _) = session_ciphers(&secrets.connection_secret, true).unwrap();
    (c, tx)
}

/// The first GCM block of a secure frame: a preamble (valid crc) announcing MESSAGE segments of
/// `lens`, 48 zero inline bytes, sealed with `tx` when given (else left in the clear, as a peer
/// without the key would send it), then the tag.
fn first_block(tx: Option<&mut SecureTx>, lens: &[u32]) -> Vec<u8> {
    let mut b = vec![0u8; PREAMBLE_LEN + INLINE_LEN];
    b[0] = Tag::Message.as_u8();
    b[1] = lens.len() as u8;
    for (i, len) in lens.iter().enumerate() {
        b[2 + i * 6..6 + i * 6].copy_from_slice(&len.to_le_bytes());
        b[6 + i * 6..8 + i * 6].copy_from_slice(&8u16.to_le_bytes());
    }
    let crc = ceph_crc32c(PREAMBLE_SEED, &b[..PREAMBLE_LEN - 4]);
    b[PREAMBLE_LEN - 4..PREAMBLE_LEN].copy_from_slice(&crc.to_le_bytes());
    let tag = match tx {
        Some(tx) => tx.seal(&mut b).unwrap(),
        None => [0x5a; 16],
    };
    b.extend_from_slice(&tag);
    b
}

#[test]
fn an_authenticated_4_gib_announcement_is_refused_allocating_under_64_kib() {
    let now = Instant::now();
    for lens in [
        vec![u32::MAX],
        vec![16, u32::MAX],
        vec![u32::MAX, u32::MAX, u32::MAX, u32::MAX],
    ] {
        let (mut c, mut tx) = secure_client_with_known_key(now);
        let block = first_block(Some(&mut tx), &lens);
        let mut seen = Seen::default();
        let ((), peak) = peak_during(|| feed(&mut c, now, &block, &[], &mut seen));
        match outcome(&c, &seen.events) {
            // Before SERVER_IDENT: the handshake frame limit (set to MAX_FRAME here) applies.
            Outcome::Failed(Error::LimitExceeded {
                limit: Limit::HandshakeFrame,
                value,
                max,
            }) => {
                assert!(
                    value > u64::from(u32::MAX) && max == MAX_FRAME as u64,
                    "{value} {max}"
                );
            }
            other => panic!("{lens:?}: {other:?}"),
        }
        assert!(peak < REFUSAL_BUDGET, "{lens:?}: peak {peak} B");
    }
}

#[test]
fn a_4_gib_announcement_without_the_key_fails_its_tag_allocating_under_64_kib() {
    let now = Instant::now();
    let (mut c, _) = secure_client_with_known_key(now);
    let block = first_block(None, &[u32::MAX, u32::MAX, u32::MAX, u32::MAX]);
    let mut seen = Seen::default();
    let ((), peak) = peak_during(|| feed(&mut c, now, &block.repeat(16), &[], &mut seen));
    assert_eq!(
        outcome(&c, &seen.events),
        Outcome::Failed(Error::InvalidFrame(FrameError::AuthFailed))
    );
    assert!(peak < REFUSAL_BUDGET, "peak {peak} B");
}

/// On the wire, a one-segment secure frame of `len` bytes takes 96 + (pad16(len) - 48) + 16 bytes.
#[test]
fn an_authenticated_max_size_announcement_holds_one_frame_and_one_over_is_refused() {
    let now = Instant::now();
    let exact = (MAX_FRAME - 64) as u32;
    let (mut c, mut tx) = secure_client_with_known_key(now);
    let mut bytes = first_block(Some(&mut tx), &[exact]);
    bytes.resize(MAX_FRAME - 1, 0x5a); // all but the last byte of the frame
    let mut seen = Seen::default();
    let ((), peak) = peak_during(|| feed(&mut c, now, &bytes, &[64 << 10], &mut seen));
    assert_eq!(outcome(&c, &seen.events), Outcome::Waiting);
    assert!(peak < MAX_FRAME + SLACK, "peak {peak} B");
    assert!(
        peak >= MAX_FRAME - 64,
        "the meter missed the frame buffer: {peak} B"
    );
    assert!(matches!(expire(&mut c, &mut seen), Error::TimedOut(_)));

    let (mut c, mut tx) = secure_client_with_known_key(now);
    let block = first_block(Some(&mut tx), &[exact + 16]);
    let mut seen = Seen::default();
    let ((), peak) = peak_during(|| feed(&mut c, now, &block, &[], &mut seen));
    assert_eq!(
        outcome(&c, &seen.events),
        Outcome::Failed(Error::LimitExceeded {
            limit: Limit::HandshakeFrame,
            value: MAX_FRAME as u64 + 16,
            max: MAX_FRAME as u64
        })
    );
    assert!(peak < REFUSAL_BUDGET, "peak {peak} B");
}

/// Issue 13: before any proof, the cephx monitor answers a name it does not know exactly as it
/// answers a known one (a challenge of the same shape), as Ceph's CephxServiceHandler does: probing
/// which entities exist gets nothing.
#[test]
fn monitor_answers_unknown_and_known_names_with_the_same_frames() {
    let now = Instant::now();
    let mut answers = Vec::new();
    for name in [
        world().admin.clone(),
        AuthEntityName::new(entity_type::CLIENT, "nobody"),
    ] {
        let client = Arc::new(CephxClient::new(name, world().admin_key.clone()));
        let (request, _) = client.start(entity_type::MON, &mut rand::rng()).unwrap();
        let mut server = Connection::server(monitor_cfg(), server_addr(), now);
        let mut p = RawPeer::new();
        let mut v = RawPeer::banner();
        v.extend(p.frame(&ControlFrame::Hello(Hello {
            entity_type: entity_type::CLIENT,
            peer_addr: server_addr(),
        })));
        v.extend(p.frame(&ControlFrame::AuthRequest(AuthRequest {
            method: AUTH_METHOD_CEPHX,
            preferred_modes: vec![CON_MODE_CRC],
            auth_payload: request,
        })));
        server.handle_input(now, &v);
        let frames: Vec<(Tag, usize)> = p
            .recv_from(&mut server, now)
            .iter()
            .map(|f| (f.tag, f.payload().len()))
            .collect();
        assert!(!server.is_closed());
        answers.push(frames);
    }
    assert_eq!(answers[0], answers[1], "the answers tell the names apart");
    assert!(
        answers[0].iter().any(|(t, _)| *t == Tag::AuthReplyMore),
        "{:?}",
        answers[0]
    );
}
