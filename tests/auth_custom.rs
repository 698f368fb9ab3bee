//! An auth method of the application's own, plugged into msgr through the public auth traits
//! (`msgr::proto::auth::{ClientAuthMethod, ServerAuthMethod, …}`): "psk", method id 0x10.
//!
//! The method: the client names itself and sends a nonce (AUTH_REQUEST); the server answers with its
//! own nonce (one AUTH_REPLY_MORE round); the client proves the pre-shared key with an HMAC over both
//! nonces (AUTH_REQUEST_MORE); the server checks it and proves the key back in AUTH_DONE. Session key
//! and the 64-byte connection secret are HMACs of the key over both nonces. Its mode choice is its
//! own: always secure, whatever order the client prefers.
//!
//! Covered: (a) two in-memory `proto::Connection`s authenticate and exchange messages, encrypted;
//! (b) two messengers over posix loopback do the same; (c) a wrong key is refused: the client gets an
//! error, the server counts the refusal (and the messenger counts the dropped peer); (d) a server
//! that does not offer the method answers AUTH_BAD_METHOD and the client reports it. Also: a server
//! offering psk alongside none serves both, and the connection's own guarantees toward a faulty
//! method (no endless rounds, no secure mode on a short secret).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use msgr::proto::auth::method::CONNECTION_SECRET_LEN;
use msgr::proto::auth::{
    AuthError, AuthGranted, ClientAuth, ClientAuthContext, ClientAuthMethod, ClientAuthSession,
    ConModes, ServerAuth, ServerAuthContext, ServerAuthMethod, ServerAuthSession, ServerStep,
    SessionSecrets, AUTH_METHOD_NONE, CON_MODE_CRC, CON_MODE_SECURE,
};
use msgr::proto::{Config, Connection, Error, Event};
use msgr::{
    entity_type, AddrVec, AuthEntityName, ConnectionRef, Dispatcher, EntityAddr, Message,
    Messenger, MessengerConfig, Policy, PosixStack,
};

const PSK: u32 = 0x10;
const NONCE_LEN: usize = 16;
const PING: u16 = 0x4010;
const PONG: u16 = 0x4011;

// ---------- the method ----------

fn hmac(key: &[u8], label: &[u8], client_nonce: &[u8], server_nonce: &[u8]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("hmac takes any key length");
    m.update(label);
    m.update(client_nonce);
    m.update(server_nonce);
    m.finalize().into_bytes().into()
}

fn nonce() -> [u8; NONCE_LEN] {
    rand::random()
}

/// Session key and connection secret (64 bytes) both sides derive.
fn derive(key: &[u8], cn: &[u8], sn: &[u8]) -> SessionSecrets {
    let mut connection_secret = hmac(key, b"psk secret 1", cn, sn).to_vec();
    connection_secret.extend_from_slice(&hmac(key, b"psk secret 2", cn, sn));
    assert_eq!(connection_secret.len(), CONNECTION_SECRET_LEN);
    SessionSecrets {
        session_key: hmac(key, b"psk session", cn, sn).to_vec(),
        connection_secret,
    }
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], AuthError> {
    if b.len() < n {
        return Err(AuthError::Protocol(format!(
            "psk payload too short: {} < {n}",
            b.len()
        )));
    }
    let (head, tail) = b.split_at(n);
    *b = tail;
    Ok(head)
}

/// Client side: who we are and our key.
struct PskClient {
    name: AuthEntityName,
    key: Vec<u8>,
}

impl std::fmt::Debug for PskClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PskClient({})", self.name)
    }
}

struct PskClientSession {
    key: Vec<u8>,
    client_nonce: [u8; NONCE_LEN],
    server_nonce: Option<Vec<u8>>,
}

impl ClientAuthMethod for PskClient {
    fn method(&self) -> u32 {
        PSK
    }
    fn name(&self) -> &str {
        "psk"
    }
    fn entity_name(&self) -> Option<&AuthEntityName> {
        Some(&self.name)
    }
    fn start(
        &self,
        _ctx: &ClientAuthContext<'_>,
    ) -> Result<(Bytes, Box<dyn ClientAuthSession>), AuthError> {
        let client_nonce = nonce();
        let name = self.name.to_string();
        let mut b = BytesMut::new();
        b.put_u8(name.len() as u8);
        b.put_slice(name.as_bytes());
        b.put_slice(&client_nonce);
        let session = PskClientSession {
            key: self.key.clone(),
            client_nonce,
            server_nonce: None,
        };
        Ok((b.freeze(), Box::new(session)))
    }
}

impl ClientAuthSession for PskClientSession {
    fn handle_reply_more(&mut self, payload: &[u8]) -> Result<Bytes, AuthError> {
        if self.server_nonce.is_some() || payload.len() != NONCE_LEN {
            return Err(AuthError::Protocol("psk: one server nonce expected".into()));
        }
        self.server_nonce = Some(payload.to_vec());
        let proof = hmac(&self.key, b"psk client proof", &self.client_nonce, payload);
        Ok(Bytes::copy_from_slice(&proof))
    }

    fn handle_done(
        &mut self,
        _global_id: u64,
        con_mode: u32,
        payload: &[u8],
    ) -> Result<SessionSecrets, AuthError> {
        let Some(sn) = &self.server_nonce else {
            return Err(AuthError::Protocol(
                "psk: AUTH_DONE before the nonces".into(),
            ));
        };
        if con_mode != CON_MODE_SECURE {
            return Err(AuthError::refused("psk runs in secure mode only"));
        }
        let expected = hmac(&self.key, b"psk server proof", &self.client_nonce, sn);
        if payload != expected {
            return Err(AuthError::refused("server does not hold our key"));
        }
        Ok(derive(&self.key, &self.client_nonce, sn))
    }
}

/// Server side: the keys of the entities it knows; counts what it refused.
#[derive(Default)]
struct PskServer {
    keys: HashMap<String, Vec<u8>>,
    started: AtomicU64,
    refused: Arc<AtomicU64>,
}

impl std::fmt::Debug for PskServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PskServer")
            .field("entities", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

struct PskServerSession {
    name: AuthEntityName,
    key: Vec<u8>,
    client_nonce: Vec<u8>,
    server_nonce: [u8; NONCE_LEN],
    refused: Arc<AtomicU64>,
}

impl ServerAuthMethod for PskServer {
    fn method(&self) -> u32 {
        PSK
    }
    fn name(&self) -> &str {
        "psk"
    }
    /// Of the modes the configuration accepts (crc and secure by default), always secure when the
    /// client offers it, whatever its order of preference (Ceph's choice follows the client's order).
    fn choose_mode(&self, preferred: &[u32], _allowed: &[u32]) -> Option<u32> {
        preferred
            .contains(&CON_MODE_SECURE)
            .then_some(CON_MODE_SECURE)
    }
    fn start(&self, ctx: &ServerAuthContext<'_>, payload: &[u8]) -> Result<ServerStep, AuthError> {
        self.started.fetch_add(1, Ordering::Relaxed);
        assert_eq!(
            ctx.con_mode, CON_MODE_SECURE,
            "the connection kept our mode"
        );
        let mut p = payload;
        let len = take(&mut p, 1)?[0] as usize;
        let name = std::str::from_utf8(take(&mut p, len)?)
            .ok()
            .and_then(|s| AuthEntityName::parse(s).ok())
            .ok_or_else(|| AuthError::Protocol("psk: bad entity name".into()))?;
        let client_nonce = take(&mut p, NONCE_LEN)?.to_vec();
        let Some(key) = self.keys.get(&name.to_string()) else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(AuthError::refused(format!("psk: unknown entity {name}")));
        };
        let server_nonce = nonce();
        Ok(ServerStep::More {
            reply: Bytes::copy_from_slice(&server_nonce),
            session: Box::new(PskServerSession {
                name,
                key: key.clone(),
                client_nonce,
                server_nonce,
                refused: self.refused.clone(),
            }),
        })
    }
}

impl ServerAuthSession for PskServerSession {
    fn handle_more(
        self: Box<Self>,
        ctx: &ServerAuthContext<'_>,
        payload: &[u8],
    ) -> Result<ServerStep, AuthError> {
        let (cn, sn) = (&self.client_nonce[..], &self.server_nonce[..]);
        if payload != hmac(&self.key, b"psk client proof", cn, sn) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(AuthError::refused(format!(
                "psk: {} does not hold its key",
                self.name
            )));
        }
        Ok(ServerStep::Done(AuthGranted {
            entity: self.name.clone(),
            global_id: ctx.assign_global_id(),
            payload: Bytes::copy_from_slice(&hmac(&self.key, b"psk server proof", cn, sn)),
            secrets: derive(&self.key, cn, sn),
        }))
    }
}

fn alice() -> AuthEntityName {
    AuthEntityName::new(entity_type::CLIENT, "alice")
}

fn psk_client(key: &[u8]) -> ClientAuth {
    ClientAuth::new(Arc::new(PskClient {
        name: alice(),
        key: key.to_vec(),
    }))
}

fn psk_server() -> Arc<PskServer> {
    let mut s = PskServer::default();
    s.keys
        .insert("client.alice".into(), b"alice's pre-shared key".to_vec());
    Arc::new(s)
}

const ALICE_KEY: &[u8] = b"alice's pre-shared key";

// ---------- (a) two in-memory connections ----------

fn server_addr() -> EntityAddr {
    EntityAddr::msgr2("127.0.0.1:6800".parse().unwrap(), 7)
}

fn client_config(auth: ClientAuth) -> Config {
    let mut c = Config::new(entity_type::CLIENT, alice());
    c.auth_client = auth;
    c
}

fn server_config(auth: ServerAuth) -> Config {
    let mut c = Config::new(entity_type::OSD, AuthEntityName::new(entity_type::OSD, "0"));
    c.my_addrs = AddrVec(vec![server_addr()]);
    c.auth_server = auth;
    c
}

/// A client and a server connection back to back, and everything each said and heard.
struct Pair {
    client: Connection,
    server: Connection,
    client_events: Vec<Event>,
    server_events: Vec<Event>,
    /// Every byte the client wrote.
    client_wire: Vec<u8>,
}

impl Pair {
    fn new(client: Config, server: Config) -> Pair {
        let now = Instant::now();
        Pair {
            client: Connection::client(
                Arc::new(client),
                Policy::lossless_client(),
                entity_type::OSD,
                server_addr(),
                now,
            ),
            server: Connection::server(
                Arc::new(server),
                EntityAddr::msgr2("127.0.0.1:40000".parse().unwrap(), 0),
                now,
            ),
            client_events: Vec::new(),
            server_events: Vec::new(),
            client_wire: Vec::new(),
        }
    }

    /// Move bytes and answer events until nothing moves (bounded).
    fn pump(&mut self) {
        let now = Instant::now();
        for _ in 0..1000 {
            let mut moved = false;
            while let Some(e) = self.client.poll_event() {
                moved = true;
                if e == Event::OpenTransport && self.client_events.is_empty() {
                    self.client.on_transport_connected(now);
                }
                self.client_events.push(e);
            }
            while let Some(e) = self.server.poll_event() {
                moved = true;
                if matches!(e, Event::SessionRequest(_)) {
                    self.server.resolve_session(now, None);
                }
                self.server_events.push(e);
            }
            let mut out = Vec::new();
            if self.client.poll_transmit(now, &mut out) > 0 {
                moved = true;
            }
            for b in out.drain(..) {
                self.client_wire.extend_from_slice(&b);
                self.server.handle_input(now, &b);
            }
            if self.server.poll_transmit(now, &mut out) > 0 {
                moved = true;
            }
            for b in out.drain(..) {
                self.client.handle_input(now, &b);
            }
            if !moved {
                return;
            }
        }
        panic!("the pair never went quiet");
    }

    fn client_error(&self) -> Option<&Error> {
        self.client_events.iter().find_map(|e| match e {
            Event::Reset(e) | Event::TransportDown(e) => Some(e),
            _ => None,
        })
    }

    fn server_error(&self) -> Option<&Error> {
        self.server_events.iter().find_map(|e| match e {
            Event::Reset(e) | Event::TransportDown(e) => Some(e),
            _ => None,
        })
    }

    fn delivered(events: &[Event]) -> Vec<&Message> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Message(m) => Some(m),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn a_custom_method_authenticates_two_connections_in_secure_mode() {
    let server = psk_server();
    let mut p = Pair::new(
        client_config(psk_client(ALICE_KEY)),
        server_config(ServerAuth::new(server.clone())),
    );
    p.pump();
    assert!(
        p.client.is_ready() && p.server.is_ready(),
        "client {:?}, server {:?}",
        p.client_error(),
        p.server_error()
    );
    assert_eq!(server.started.load(Ordering::Relaxed), 1);
    assert_eq!(server.refused.load(Ordering::Relaxed), 0);
    // Its own mode choice: the client prefers crc toward an OSD (Ceph's default), psk picks secure.
    assert_eq!(
        ConModes::default().to_other,
        vec![CON_MODE_CRC, CON_MODE_SECURE]
    );
    assert_eq!(p.client.con_mode(), CON_MODE_SECURE);
    assert_eq!(p.server.con_mode(), CON_MODE_SECURE);
    assert_eq!(p.server.peer_auth_name(), Some(&alice()));
    assert!(p.client.peer_global_id() > 0);
    assert_eq!(p.client.peer_global_id(), p.server.peer_global_id());

    // Messages both ways, and none of the client's payload shows on the wire.
    let secret = Bytes::from_static(b"the payload only the two ends may read");
    let now = Instant::now();
    let before = p.client_wire.len();
    p.client
        .send(now, Message::new(PING, secret.clone()).with_tid(1))
        .unwrap();
    p.server
        .send(
            now,
            Message::new(PONG, Bytes::from_static(b"pong")).with_tid(2),
        )
        .unwrap();
    p.pump();
    let got = Pair::delivered(&p.server_events);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].front, secret);
    let back = Pair::delivered(&p.client_events);
    assert_eq!(back.len(), 1);
    assert_eq!(&back[0].front[..], b"pong");
    let sent = &p.client_wire[before..];
    assert!(sent.len() > secret.len());
    assert!(
        !sent.windows(secret.len()).any(|w| w == &secret[..]),
        "the payload went out in clear"
    );
}

#[test]
fn a_wrong_key_is_refused_and_counted() {
    let server = psk_server();
    let mut p = Pair::new(
        client_config(psk_client(b"not alice's key")),
        server_config(ServerAuth::new(server.clone())),
    );
    p.pump();
    assert!(!p.client.is_ready() && !p.server.is_ready());
    assert_eq!(server.refused.load(Ordering::Relaxed), 1);
    assert_eq!(p.server.peer_auth_name(), None);
    let bad = p.client.peer_auth_bad_method().expect("AUTH_BAD_METHOD");
    assert_eq!(bad.method, PSK);
    assert_eq!(bad.allowed_methods, vec![PSK]);
    assert_eq!(bad.allowed_modes, vec![CON_MODE_CRC, CON_MODE_SECURE]);
    match p.client_error() {
        Some(Error::AuthFailed(why)) => {
            assert!(
                why.contains("refused our psk authentication as client.alice"),
                "{why}"
            );
        }
        other => panic!("client: {other:?}"),
    }
    assert!(Pair::delivered(&p.server_events).is_empty());
}

#[test]
fn a_server_without_the_method_answers_auth_bad_method() {
    for (auth, offered) in [
        (ServerAuth::none(), vec![AUTH_METHOD_NONE]),
        (ServerAuth::default(), vec![AUTH_METHOD_NONE]),
    ] {
        let mut p = Pair::new(client_config(psk_client(ALICE_KEY)), server_config(auth));
        p.pump();
        assert!(!p.client.is_ready() && !p.server.is_ready());
        let bad = p.client.peer_auth_bad_method().expect("AUTH_BAD_METHOD");
        assert_eq!(bad.method, PSK);
        assert_eq!(bad.allowed_methods, offered);
        assert_eq!(bad.allowed_modes, vec![CON_MODE_CRC]);
        match p.client_error() {
            Some(Error::AuthFailed(why)) => assert!(
                why.contains("refused auth method 16") && why.contains("we offer method 16 (psk)"),
                "{why}"
            ),
            other => panic!("client: {other:?}"),
        }
    }
}

#[test]
fn a_server_offering_psk_and_none_serves_both() {
    let server = psk_server();
    let both = || ServerAuth::none().with(server.clone());
    let mut p = Pair::new(client_config(psk_client(ALICE_KEY)), server_config(both()));
    p.pump();
    assert!(p.client.is_ready() && p.server.is_ready());
    assert_eq!(p.server.con_mode(), CON_MODE_SECURE);

    let mut p = Pair::new(client_config(ClientAuth::none()), server_config(both()));
    p.pump();
    assert!(p.client.is_ready() && p.server.is_ready());
    assert_eq!(p.server.con_mode(), CON_MODE_CRC);
    assert_eq!(server.started.load(Ordering::Relaxed), 1);
}

// ---------- what the connection guarantees toward a faulty method ----------

/// Grants in secure mode with `secret_len` bytes of secret, or asks for more forever (`None`).
#[derive(Debug)]
struct Faulty {
    secret_len: Option<usize>,
    rounds: Arc<AtomicU64>,
}

struct FaultySession(Option<usize>, Arc<AtomicU64>);

impl FaultySession {
    fn step(self: Box<Self>) -> ServerStep {
        self.1.fetch_add(1, Ordering::Relaxed);
        match self.0 {
            Some(n) => ServerStep::Done(AuthGranted {
                entity: alice(),
                global_id: 1,
                payload: Bytes::new(),
                secrets: SessionSecrets {
                    session_key: vec![1; 16],
                    connection_secret: vec![2; n],
                },
            }),
            None => ServerStep::More {
                reply: Bytes::from_static(b"more"),
                session: self,
            },
        }
    }
}

impl ServerAuthMethod for Faulty {
    fn method(&self) -> u32 {
        PSK
    }
    fn allowed_modes(&self, _: &ConModes) -> Vec<u32> {
        vec![CON_MODE_SECURE]
    }
    fn start(&self, _: &ServerAuthContext<'_>, _: &[u8]) -> Result<ServerStep, AuthError> {
        Ok(Box::new(FaultySession(self.secret_len, self.rounds.clone())).step())
    }
}

impl ServerAuthSession for FaultySession {
    fn handle_more(
        self: Box<Self>,
        _: &ServerAuthContext<'_>,
        _: &[u8],
    ) -> Result<ServerStep, AuthError> {
        Ok(self.step())
    }
}

/// A client that answers every AUTH_REPLY_MORE.
#[derive(Debug)]
struct Chatty;
struct ChattySession;

impl ClientAuthMethod for Chatty {
    fn method(&self) -> u32 {
        PSK
    }
    fn offered_modes(&self, _: u8, _: &ConModes) -> Vec<u32> {
        vec![CON_MODE_SECURE]
    }
    fn start(
        &self,
        _: &ClientAuthContext<'_>,
    ) -> Result<(Bytes, Box<dyn ClientAuthSession>), AuthError> {
        Ok((Bytes::from_static(b"hi"), Box::new(ChattySession)))
    }
}

impl ClientAuthSession for ChattySession {
    fn handle_reply_more(&mut self, _: &[u8]) -> Result<Bytes, AuthError> {
        Ok(Bytes::from_static(b"again"))
    }
    fn handle_done(&mut self, _: u64, _: u32, _: &[u8]) -> Result<SessionSecrets, AuthError> {
        Ok(SessionSecrets::default())
    }
}

#[test]
fn endless_rounds_end_the_connection() {
    let rounds = Arc::new(AtomicU64::new(0));
    let server = ServerAuth::new(Arc::new(Faulty {
        secret_len: None,
        rounds: rounds.clone(),
    }));
    let mut p = Pair::new(
        client_config(ClientAuth::new(Arc::new(Chatty))),
        server_config(server),
    );
    p.pump();
    assert!(!p.client.is_ready() && !p.server.is_ready());
    let n = rounds.load(Ordering::Relaxed);
    assert_eq!(
        n,
        u64::from(msgr::proto::auth::method::MAX_AUTH_ROUNDS) + 1,
        "rounds the method was asked for"
    );
    assert!(
        matches!(p.server_error(), Some(Error::PeerMisbehaved(w)) if w.contains("rounds")),
        "{:?}",
        p.server_error()
    );
}

#[test]
fn secure_mode_on_a_short_secret_is_refused() {
    for len in [0, 16, 39] {
        let server = ServerAuth::new(Arc::new(Faulty {
            secret_len: Some(len),
            rounds: Arc::default(),
        }));
        let mut p = Pair::new(
            client_config(ClientAuth::new(Arc::new(Chatty))),
            server_config(server),
        );
        p.pump();
        assert!(!p.client.is_ready() && !p.server.is_ready());
        assert!(
            matches!(p.server_error(), Some(Error::AuthFailed(w)) if w.contains("connection secret")),
            "{len}: {:?}",
            p.server_error()
        );
    }
}

// ---------- (b), (c) two messengers over posix loopback ----------

#[derive(Default)]
struct Recorder {
    msgs: Mutex<Vec<(ConnectionRef, Message)>>,
    resets: Mutex<Vec<Error>>,
    /// Answer every PING with a PONG of the same tid.
    echo: bool,
}

impl Dispatcher for Recorder {
    fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) {
        if self.echo && msg.header.msg_type == PING {
            let pong = Message::new(PONG, msg.front.clone()).with_tid(msg.header.tid);
            conn.send(pong).unwrap();
        }
        self.msgs.lock().unwrap().push((conn.clone(), msg));
    }
    fn ms_handle_reset(&self, _conn: &ConnectionRef, why: &Error) {
        self.resets.lock().unwrap().push(why.clone());
    }
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    f()
}

fn messenger_config(proto: Config) -> MessengerConfig {
    let mut c = MessengerConfig::new(proto);
    c.workers.threads = 1;
    c.workers.pin_cores = false;
    c
}

/// A psk server messenger (echoing PINGs) and a client messenger holding `client_key`.
struct Messengers {
    srv: Messenger<PosixStack>,
    srv_rec: Arc<Recorder>,
    cli: Messenger<PosixStack>,
    cli_rec: Arc<Recorder>,
    psk: Arc<PskServer>,
}

fn psk_messengers(client_key: &[u8]) -> Messengers {
    let psk = psk_server();
    let mut scfg = Config::new(entity_type::OSD, AuthEntityName::new(entity_type::OSD, "0"));
    scfg.auth_server = ServerAuth::new(psk.clone());
    let srv_rec = Arc::new(Recorder {
        echo: true,
        ..Recorder::default()
    });
    let mut srv = Messenger::new(PosixStack::new(), messenger_config(scfg), srv_rec.clone());
    srv.bind(&["127.0.0.1:0".parse().unwrap()]).unwrap();
    srv.start().unwrap();
    let cli_rec = Arc::new(Recorder::default());
    let mut cli = Messenger::new(
        PosixStack::new(),
        messenger_config(client_config(psk_client(client_key))),
        cli_rec.clone(),
    );
    cli.start().unwrap();
    Messengers {
        srv,
        srv_rec,
        cli,
        cli_rec,
        psk,
    }
}

#[test]
fn two_messengers_exchange_messages_over_a_custom_method_in_secure_mode() {
    let Messengers {
        srv,
        srv_rec,
        cli,
        cli_rec,
        psk,
    } = psk_messengers(ALICE_KEY);
    let conn = cli
        .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossless_client())
        .unwrap();
    const N: u64 = 20;
    for tid in 1..=N {
        let body = Bytes::from(format!("ping {tid}"));
        conn.send(Message::new(PING, body).with_tid(tid)).unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(10), || cli_rec
            .msgs
            .lock()
            .unwrap()
            .len()
            == N as usize),
        "pongs: {}, client resets: {:?}",
        cli_rec.msgs.lock().unwrap().len(),
        cli_rec.resets.lock().unwrap()
    );
    let pongs = cli_rec.msgs.lock().unwrap();
    for (i, (_, m)) in pongs.iter().enumerate() {
        let tid = i as u64 + 1;
        assert_eq!((m.header.msg_type, m.header.tid), (PONG, tid));
        assert_eq!(m.front, Bytes::from(format!("ping {tid}")));
    }
    assert_eq!(conn.peer().con_mode, CON_MODE_SECURE);
    let msgs = srv_rec.msgs.lock().unwrap();
    assert_eq!(msgs.len(), N as usize);
    let server_side = msgs[0].0.peer();
    assert_eq!(server_side.con_mode, CON_MODE_SECURE);
    assert_eq!(server_side.auth_name, Some(alice()));
    assert_eq!(psk.refused.load(Ordering::Relaxed), 0);
    assert!(cli_rec.resets.lock().unwrap().is_empty());
}

#[test]
fn a_messenger_with_the_wrong_key_is_refused_and_the_server_counts_it() {
    let Messengers {
        srv,
        srv_rec,
        cli,
        cli_rec,
        psk,
    } = psk_messengers(b"a guess");
    let conn = cli
        .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossless_client())
        .unwrap();
    // Refused or queued, it must never reach the server's dispatcher.
    let _ = conn.send(Message::new(PING, Bytes::from_static(b"let me in")).with_tid(1));
    assert!(wait_until(Duration::from_secs(10), || !cli_rec
        .resets
        .lock()
        .unwrap()
        .is_empty()));
    let why = cli_rec.resets.lock().unwrap()[0].clone();
    assert!(
        matches!(&why, Error::AuthFailed(w) if w.contains("refused our psk authentication")),
        "{why}"
    );
    assert!(wait_until(Duration::from_secs(10), || srv
        .counters()
        .dropped_bad_peers
        >= 1));
    assert_eq!(psk.refused.load(Ordering::Relaxed), 1);
    assert!(srv_rec.msgs.lock().unwrap().is_empty());
    assert!(!conn.is_connected());
}
