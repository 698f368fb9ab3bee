//! The messenger API a storage daemon builds on (issue 14): typed errors, a dispatcher chain built
//! after the messenger, mark_down_all / mark_down(addrs), wait + stop, a shutdown that flushes lossless
//! queues, and what a `ConnectionRef` tells. Only the crate's root API is used here.

mod common;

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::suite::wait_until;
use msgr::proto::{Config, TransportErrorKind};
use msgr::{
    entity_type, AddrVec, AuthEntityName, ConnectionRef, Dispatcher, Error, Message, Messenger,
    MessengerConfig, MessengerHandle, Policy, PosixStack,
};

const PING: u16 = 0x4001;
const OTHER: u16 = 0x4002;

fn config(entity: u8, name: &str) -> MessengerConfig {
    let mut p = Config::new(entity, AuthEntityName::parse(name).unwrap());
    p.initial_backoff = Duration::from_millis(5);
    p.max_backoff = Duration::from_millis(50);
    let mut c = MessengerConfig::new(p);
    c.workers.threads = 1;
    c.workers.pin_cores = false;
    c
}

/// Records everything it is told.
#[derive(Default)]
struct Recorder {
    /// Only messages of this type, if set.
    only: Option<u16>,
    msgs: Mutex<Vec<(ConnectionRef, Message)>>,
    accepts: AtomicU64,
    connects: AtomicU64,
    resets: Mutex<Vec<msgr::proto::Error>>,
    connect_failures: Mutex<Vec<TransportErrorKind>>,
}

impl Dispatcher for Recorder {
    fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) {
        self.msgs.lock().unwrap().push((conn.clone(), msg));
    }
    fn ms_handles(&self, msg: &Message) -> bool {
        self.only.is_none_or(|t| t == msg.header.msg_type)
    }
    fn ms_handle_accept(&self, _conn: &ConnectionRef) {
        self.accepts.fetch_add(1, Ordering::Relaxed);
    }
    fn ms_handle_connect(&self, _conn: &ConnectionRef) {
        self.connects.fetch_add(1, Ordering::Relaxed);
    }
    fn ms_handle_reset(&self, _conn: &ConnectionRef, why: &msgr::proto::Error) {
        self.resets.lock().unwrap().push(why.clone());
    }
    fn ms_handle_connect_failed(&self, _conn: &ConnectionRef, why: &msgr::proto::TransportError) {
        self.connect_failures.lock().unwrap().push(why.kind());
    }
}

impl Recorder {
    fn count(&self) -> usize {
        self.msgs.lock().unwrap().len()
    }
}

fn server(d: Arc<dyn Dispatcher>) -> Messenger<PosixStack> {
    server_with(Policy::stateful_server(), d)
}

fn server_with(policy: Policy, d: Arc<dyn Dispatcher>) -> Messenger<PosixStack> {
    let mut cfg = config(entity_type::OSD, "osd.0");
    cfg.proto.default_policy = policy;
    let mut m = Messenger::new(PosixStack::new(), cfg, d);
    m.bind(&["127.0.0.1:0".parse().unwrap()]).unwrap();
    m.start().unwrap();
    m
}

fn client(d: Arc<dyn Dispatcher>) -> Messenger<PosixStack> {
    let mut m = Messenger::new(
        PosixStack::new(),
        config(entity_type::CLIENT, "client.api"),
        d,
    );
    m.start().unwrap();
    m
}

fn msg(t: u16, tid: u64) -> Message {
    Message::new(t, Bytes::from(vec![7u8; 32])).with_tid(tid)
}

/// A port nothing listens on (bound then released).
fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[test]
fn a_refused_connect_is_reported_as_refused() {
    let rec = Arc::new(Recorder::default());
    let cli = client(rec.clone());
    let addrs = AddrVec(vec![msgr::EntityAddr::msgr2(closed_port(), 1)]);
    let conn = cli
        .connect_to(entity_type::OSD, &addrs, Policy::lossless_client())
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || !rec
        .connect_failures
        .lock()
        .unwrap()
        .is_empty()));
    let kinds = rec.connect_failures.lock().unwrap().clone();
    assert!(
        kinds.iter().all(|k| *k == TransportErrorKind::Refused),
        "{kinds:?}"
    );
    assert!(!conn.is_connected());
    conn.mark_down();
}

#[test]
fn a_lossy_session_to_a_server_that_goes_away_resets_with_a_transport_kind() {
    let srv_rec = Arc::new(Recorder::default());
    // The server decides (SERVER_IDENT flags): a stateless server makes the session lossy.
    let mut srv = server_with(Policy::stateless_server(), srv_rec.clone());
    let rec = Arc::new(Recorder::default());
    let cli = client(rec.clone());
    let conn = cli
        .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossy_client())
        .unwrap();
    conn.send(msg(PING, 1)).unwrap();
    assert!(wait_until(Duration::from_secs(5), || srv_rec.count() == 1));
    srv.shutdown().unwrap();
    assert!(wait_until(Duration::from_secs(5), || !rec
        .resets
        .lock()
        .unwrap()
        .is_empty()));
    let why = rec.resets.lock().unwrap()[0].clone();
    let kind = why.transport_kind();
    assert!(
        matches!(
            kind,
            Some(TransportErrorKind::ClosedByPeer | TransportErrorKind::Reset)
        ),
        "{why} ({kind:?})"
    );
}

/// A dispatcher that answers every PING by dialling the sender's messenger back through a
/// `MessengerHandle`: it is built before the messenger starts, without any OnceLock or Weak of its own.
struct Dialler {
    handle: MessengerHandle<PosixStack>,
    back_to: AddrVec,
    dialled: Mutex<Option<ConnectionRef>>,
}

impl Dispatcher for Dialler {
    fn ms_dispatch(&self, _conn: &ConnectionRef, m: Message) {
        let c = self
            .handle
            .connect_to(entity_type::OSD, &self.back_to, Policy::lossless_client())
            .unwrap();
        c.send(msg(OTHER, m.header.tid)).unwrap();
        *self.dialled.lock().unwrap() = Some(c);
    }
    fn ms_handles(&self, m: &Message) -> bool {
        m.header.msg_type == PING
    }
}

#[test]
fn dispatchers_added_after_creation_form_a_chain() {
    // The peer the dialler calls back.
    let far = Arc::new(Recorder::default());
    let far_srv = server(far.clone());

    let mut m = Messenger::create(PosixStack::new(), {
        let mut c = config(entity_type::OSD, "osd.1");
        c.proto.default_policy = Policy::stateful_server();
        c
    });
    assert!(matches!(m.start(), Err(Error::NoDispatcher)));
    let dialler = Arc::new(Dialler {
        handle: m.handle(),
        back_to: far_srv.my_addrs().clone(),
        dialled: Mutex::new(None),
    });
    let tail = Arc::new(Recorder::default());
    m.add_dispatcher_tail(tail.clone()).unwrap();
    m.add_dispatcher_head(dialler.clone()).unwrap();
    m.bind(&["127.0.0.1:0".parse().unwrap()]).unwrap();
    m.start().unwrap();
    assert!(matches!(
        m.add_dispatcher_tail(Arc::new(Recorder::default())),
        Err(Error::AlreadyStarted)
    ));

    let cli = client(Arc::new(Recorder::default()));
    let conn = cli
        .connect_to(entity_type::OSD, m.my_addrs(), Policy::lossless_client())
        .unwrap();
    conn.send(msg(PING, 5)).unwrap();
    conn.send(msg(OTHER, 6)).unwrap();
    // The head took the PING and dialled the far server from inside the dispatcher.
    assert!(wait_until(Duration::from_secs(5), || far.count() == 1));
    assert_eq!(far.msgs.lock().unwrap()[0].1.header.tid, 5);
    // The tail got what the head did not take, and both heard the accept.
    assert!(wait_until(Duration::from_secs(5), || tail.count() == 1));
    assert_eq!(tail.msgs.lock().unwrap()[0].1.header.tid, 6);
    assert_eq!(tail.accepts.load(Ordering::Relaxed), 1);
    assert!(dialler.dialled.lock().unwrap().is_some());
}

#[test]
fn a_message_no_dispatcher_takes_is_counted() {
    let picky = Arc::new(Recorder {
        only: Some(PING),
        ..Recorder::default()
    });
    let mut srv = Messenger::create(PosixStack::new(), config(entity_type::OSD, "osd.2"));
    srv.add_dispatcher_tail(picky.clone()).unwrap();
    srv.add_dispatcher_tail(Arc::new(Recorder {
        only: Some(PING),
        ..Recorder::default()
    }))
    .unwrap();
    srv.bind(&["127.0.0.1:0".parse().unwrap()]).unwrap();
    srv.start().unwrap();
    let cli = client(Arc::new(Recorder::default()));
    let conn = cli
        .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossless_client())
        .unwrap();
    conn.send(msg(OTHER, 1)).unwrap();
    conn.send(msg(PING, 2)).unwrap();
    assert!(wait_until(Duration::from_secs(5), || picky.count() == 1));
    assert_eq!(srv.counters().undispatched, 1);
}

#[test]
fn mark_down_all_and_mark_down_addrs_close_sessions() {
    let a_rec = Arc::new(Recorder::default());
    let a = server(a_rec.clone());
    let b = server(Arc::new(Recorder::default()));
    let cli = client(Arc::new(Recorder::default()));
    let to_a = cli
        .connect_to(entity_type::OSD, a.my_addrs(), Policy::lossless_client())
        .unwrap();
    let to_b = cli
        .connect_to(entity_type::OSD, b.my_addrs(), Policy::lossless_client())
        .unwrap();
    let extra = cli
        .connect_new(entity_type::OSD, a.my_addrs(), Policy::lossy_client())
        .unwrap();
    for c in [&to_a, &to_b, &extra] {
        assert!(wait_until(Duration::from_secs(5), || c.is_connected()));
    }
    assert!(cli.mark_down_addrs(b.my_addrs()));
    assert!(to_b.is_closed());
    assert!(!to_a.is_closed());
    cli.mark_down_all();
    assert!(to_a.is_closed() && extra.is_closed());
    // A new connect_to opens a new session.
    let again = cli
        .connect_to(entity_type::OSD, a.my_addrs(), Policy::lossless_client())
        .unwrap();
    assert_ne!(again, to_a);
    again.send(msg(PING, 9)).unwrap();
    assert!(wait_until(Duration::from_secs(5), || a_rec
        .msgs
        .lock()
        .unwrap()
        .iter()
        .any(|(_, m)| m.header.tid == 9)));
}

#[test]
fn wait_returns_once_a_stop_handle_stops() {
    let mut srv = server(Arc::new(Recorder::default()));
    let stop = srv.stop_handle();
    let t0 = Instant::now();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        stop.stop();
    });
    srv.wait().unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(100));
    stopper.join().unwrap();
    // Shut down: a handle taken earlier can no longer dial.
    let h = srv.handle();
    assert!(h
        .connect_to(
            entity_type::OSD,
            &AddrVec::default(),
            Policy::lossy_client()
        )
        .is_err());
}

/// A server whose dispatcher takes 1 ms per message, so a burst is still unacknowledged when the
/// client shuts down.
struct Slow(Arc<Recorder>);

impl Dispatcher for Slow {
    fn ms_dispatch(&self, conn: &ConnectionRef, m: Message) {
        std::thread::sleep(Duration::from_millis(1));
        self.0.ms_dispatch(conn, m);
    }
}

#[test]
fn shutdown_flush_delivers_every_lossless_message_or_says_it_did_not() {
    let rec = Arc::new(Recorder::default());
    let srv = server(Arc::new(Slow(rec.clone())));
    let mut cli = client(Arc::new(Recorder::default()));
    let conn = cli
        .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossless_client())
        .unwrap();
    const N: u64 = 300;
    for tid in 1..=N {
        conn.send(msg(PING, tid)).unwrap();
    }
    assert!(
        rec.count() < N as usize,
        "the burst was not still in flight"
    );
    assert!(cli.shutdown_flush(Duration::from_secs(20)).unwrap());
    // Acknowledged means the peer's messenger has them; its slow dispatcher gets them all.
    assert!(wait_until(Duration::from_secs(10), || rec.count() == N as usize));
    let tids: Vec<u64> = rec
        .msgs
        .lock()
        .unwrap()
        .iter()
        .map(|(_, m)| m.header.tid)
        .collect();
    assert_eq!(tids, (1..=N).collect::<Vec<_>>());

    // A peer that never answers: the flush gives up at its deadline and says so.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addrs = AddrVec(vec![msgr::EntityAddr::msgr2(
        silent.local_addr().unwrap(),
        1,
    )]);
    let mut cli = client(Arc::new(Recorder::default()));
    let conn = cli
        .connect_to(entity_type::OSD, &addrs, Policy::lossless_client())
        .unwrap();
    conn.send(msg(PING, 1)).unwrap();
    let t0 = Instant::now();
    assert!(!cli.shutdown_flush(Duration::from_millis(200)).unwrap());
    assert!(t0.elapsed() >= Duration::from_millis(200));
}

#[test]
fn a_connection_ref_tells_its_peer_and_carries_private_data() {
    let rec = Arc::new(Recorder::default());
    let srv = server(rec.clone());
    let cli = client(Arc::new(Recorder::default()));
    let conn = cli
        .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossless_client())
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || conn.is_connected()));
    assert_eq!(conn.peer_type(), msgr::EntityType::Osd);
    assert_eq!(conn.peer_type(), entity_type::OSD);
    assert_ne!(conn.features(), 0);
    conn.send(msg(PING, 1)).unwrap();
    assert!(wait_until(Duration::from_secs(5), || rec.count() == 1));
    let accepted = rec.msgs.lock().unwrap()[0].0.clone();
    assert_eq!(accepted.peer_type(), msgr::EntityType::Client);

    #[derive(Debug, PartialEq)]
    struct Session(u32);
    assert!(conn.get_priv::<Session>().is_none());
    conn.set_priv(Arc::new(Session(42)));
    assert_eq!(
        conn.clone().get_priv::<Session>().as_deref(),
        Some(&Session(42))
    );
    assert!(
        conn.get_priv::<String>().is_none(),
        "wrong type downcasts to nothing"
    );
    assert!(conn.take_priv().is_some());
    assert!(conn.get_priv::<Session>().is_none());

    // A handle hashes by its connection id, which never changes (clippy cannot know that).
    #[allow(clippy::mutable_key_type)]
    let mut set = HashSet::new();
    set.insert(conn.clone());
    set.insert(conn.clone());
    set.insert(accepted.clone());
    assert_eq!(set.len(), 2);
    assert!(set.contains(&conn));
}
