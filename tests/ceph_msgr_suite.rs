//! Ceph's src/test/msgr/test_msgr.cc (v16.2.15), its functional cases ported to msgr's posix messenger
//! over loopback: one test per TEST_P case, named after it. The race cases (which need the test
//! interceptor) are in ceph_msgr_suite_races.rs, the synthetic stress / injection cases in
//! ceph_msgr_suite_synthetic.rs. The README's "How it fits together" lists what is covered, what is
//! left out and why.
//!
//! Fixture as Ceph's MessengerTest: an OSD server messenger, stateless_server by default, and a client
//! messenger, lossy_client by default; Ceph's main() settings (ms_max_backoff 1 s, auth none; an old or
//! duplicate message fails the test: `duplicates_dropped == 0`). Ceph waits on condition variables
//! without end; every wait here is bounded.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::net::{no_faults, PosixMessenger};
use common::suite::*;
use msgr::proto::auth::{
    CephxClient, CephxMonitor, CephxService, ClientAuth, CryptoKey, Keyring, KeyringEntry,
    ServerAuth, ServiceSecrets, WallAnchor,
};
use msgr::proto::types::{entity_type, AddrVec, AuthEntityName, EntityAddr, UTime};
use msgr::proto::{Config, Error, Message, Policy};
use msgr::{ConnectionRef, Dispatcher};

/// Ceph's SetUp: server and client messengers (the client bound only when a test needs the server to
/// reach it), the server's dispatcher answering every message when `srv_replies`.
struct Fixture {
    srv: PosixMessenger,
    cli: PosixMessenger,
    srv_d: Arc<FakeDispatcher>,
    cli_d: Arc<FakeDispatcher>,
    cli_policy: Policy,
}

fn fixture(srv_policy: Policy, cli_policy: Policy) -> Fixture {
    fixture_with(srv_policy, cli_policy, |_, _| {})
}

fn fixture_with(
    srv_policy: Policy,
    cli_policy: Policy,
    tweak: impl Fn(&mut Config, &mut Config),
) -> Fixture {
    let mut sc = osd_config();
    sc.default_policy = srv_policy;
    let mut cc = client_config();
    cc.default_policy = cli_policy;
    tweak(&mut sc, &mut cc);
    let srv_d = FakeDispatcher::new(true);
    let cli_d = FakeDispatcher::new(false);
    let srv = start_bound(sc, 2, srv_d.clone());
    let cli = start(cc, 2, None, no_faults(), cli_d.clone());
    Fixture {
        srv,
        cli,
        srv_d,
        cli_d,
        cli_policy,
    }
}

impl Fixture {
    fn connect(&self) -> ConnectionRef {
        self.cli
            .connect_to(entity_type::OSD, self.srv.my_addrs(), self.cli_policy)
            .unwrap()
    }

    /// Send a ping on `c` and wait for the server's answer.
    fn round_trip(&self, c: &ConnectionRef) {
        c.send(ping()).unwrap();
        assert!(self.cli_d.wait_new(), "no answer from the server");
    }

    /// The server's end of the client's session (Ceph: `server_msgr->connect_to(client, last_accept)`).
    fn server_conn(&self) -> ConnectionRef {
        self.srv_d
            .last_accept()
            .expect("the server accepted a session")
    }

    fn assert_no_duplicates(&self) {
        assert_no_duplicates(&self.srv);
        assert_no_duplicates(&self.cli);
    }
}

#[test]
fn simple_test() {
    let mut f = fixture(Policy::stateless_server(), Policy::lossy_client());
    // 1. simple round trip
    let conn = f.connect();
    f.round_trip(&conn);
    assert!(conn.is_connected());
    assert_eq!(f.cli_d.count(&conn), 1);
    assert_eq!(conn.peer().entity_type, entity_type::OSD);

    // (2. rebind: msgr has no rebind, see the README.)

    // 3. mark down
    conn.mark_down();
    assert!(wait_until(WAIT, || !conn.is_connected() && conn.is_closed()));
    // A new session after mark_down.
    let conn = f.connect();
    f.round_trip(&conn);
    assert_eq!(f.cli_d.count(&conn), 1);
    conn.mark_down();

    // 4. failed connection: the server is gone.
    f.srv.shutdown().unwrap();
    assert!(wait_until(WAIT, || conn.is_closed()));
    let conn = f.connect();
    let _ = conn.send(ping());
    std::thread::sleep(Duration::from_millis(500));
    assert!(!conn.is_connected());
    assert_eq!(f.cli_d.count(&conn), 0);

    // (5. loopback connection: msgr has none, see the README.)
    f.assert_no_duplicates();
}

/// The server advertises a v1 and a v2 address (Ceph binds both); the client must speak msgr2 to the v2
/// one. msgr binds no v1 listener: the v1 entry points at a port nobody listens on.
#[test]
fn simple_msgr2_test() {
    let mut f = fixture(Policy::stateless_server(), Policy::lossy_client());
    let v2 = f.srv.my_addrs().msgr2().unwrap().clone();
    let dead = std::net::TcpListener::bind(loopback()).unwrap();
    let v1 = EntityAddr::legacy(dead.local_addr().unwrap(), v2.nonce);
    drop(dead);
    let both = AddrVec(vec![v1, v2]);

    // 1. simple round trip
    let conn = f
        .cli
        .connect_to(entity_type::OSD, &both, f.cli_policy)
        .unwrap();
    f.round_trip(&conn);
    assert!(conn.is_connected());
    assert_eq!(f.cli_d.count(&conn), 1);
    assert_eq!(conn.peer().entity_type, entity_type::OSD);

    // 3. mark down
    conn.mark_down();
    assert!(wait_until(WAIT, || !conn.is_connected() && conn.is_closed()));

    // 4. failed connection
    f.srv.shutdown().unwrap();
    let conn = f
        .cli
        .connect_to(entity_type::OSD, &both, f.cli_policy)
        .unwrap();
    let _ = conn.send(ping());
    std::thread::sleep(Duration::from_millis(500));
    assert!(!conn.is_connected());
    f.assert_no_duplicates();
}

#[test]
fn feature_test() {
    const SERVER_NAUTILUS: u64 = 1 << 61;
    let mut supported: u64 = (0..10).map(|i| 1u64 << i).sum();
    supported |= msgr::proto::conn::CEPH_FEATURE_MSG_ADDR2 | SERVER_NAUTILUS;
    let required = supported | 1 << 13;
    let all_supported = required | 1 << 14;

    let srv_d = FakeDispatcher::new(true);
    let mut sc = osd_config();
    sc.features_required = required;
    let srv = start_bound(sc, 2, srv_d.clone());

    // 1. The client supports less than the server requires: no session.
    let cli_d = FakeDispatcher::new(false);
    let mut cc = client_config();
    cc.features_supported = supported;
    let cli = start(cc, 2, None, no_faults(), cli_d.clone());
    let conn = cli
        .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossy_client())
        .unwrap();
    let _ = conn.send(ping());
    assert!(wait_until(WAIT, || conn.is_closed()));
    assert!(!conn.is_connected());
    assert_eq!(cli_d.connects_total(), 0);
    assert_eq!(srv_d.accepts_total(), 0);
    drop(cli);

    // 2. Supported meets required.
    let mut cc = client_config();
    cc.features_supported = all_supported;
    let cli = start(cc, 2, None, no_faults(), cli_d.clone());
    let conn = cli
        .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossy_client())
        .unwrap();
    conn.send(ping()).unwrap();
    assert!(cli_d.wait_new());
    assert_eq!(cli_d.count(&conn), 1);
    assert_eq!(conn.peer().features & required, required);
}

#[test]
fn timeout_test() {
    let idle = |sc: &mut Config, cc: &mut Config| {
        sc.idle_timeout = Some(Duration::from_secs(1));
        cc.idle_timeout = Some(Duration::from_secs(1));
    };
    let f = fixture_with(Policy::stateless_server(), Policy::lossy_client(), idle);
    // 1. build the connection
    let conn = f.connect();
    f.round_trip(&conn);
    assert!(conn.is_connected());
    assert_eq!(f.cli_d.count(&conn), 1);
    assert_eq!(conn.peer().entity_type, entity_type::OSD);
    // 2. wait for idle
    std::thread::sleep(Duration::from_millis(2500));
    assert!(!conn.is_connected());
    f.assert_no_duplicates();
}

#[test]
fn stateful_test() {
    let f = fixture(Policy::stateful_server(), Policy::lossless_client());

    // 1. server standby: the client marks its session down; the server keeps its end.
    let conn = f.connect();
    f.round_trip(&conn);
    assert_eq!(f.cli_d.count(&conn), 1);
    conn.mark_down();
    assert!(wait_until(WAIT, || !conn.is_connected() && conn.is_closed()));
    let server_conn = f.server_conn();
    // Don't lose state.
    assert_eq!(f.srv_d.count(&server_conn), 1);

    // A new client session: the server hears that the peer reset.
    f.srv_d.clear_flags();
    let conn = f.connect();
    f.round_trip(&conn);
    assert_eq!(f.cli_d.count(&conn), 1);
    assert!(
        f.srv_d.wait_remote_reset(),
        "the server did not report the client's new session as a remote reset"
    );
    let server_conn = f.server_conn();

    // 2. client reconnect: the server marks its end down; the client sees the session reset.
    assert!(!f.cli_d.got_remote_reset());
    f.cli_d.clear_flags();
    server_conn.mark_down();
    assert!(wait_until(WAIT, || !server_conn.is_connected()));
    assert!(
        f.cli_d.wait_remote_reset(),
        "the client saw no remote reset"
    );
    assert!(f.cli_d.wait_connect(), "the client did not reconnect");
    assert!(wait_until(WAIT, || conn.is_connected()));
    conn.send(ping()).unwrap();
    assert!(conn.is_connected());
    assert!(f.cli_d.wait_new());
    // resetcheck happened: both ends count from a new session.
    assert_eq!(f.cli_d.count(&conn), 1);
    let server_conn = f.server_conn();
    assert_eq!(f.srv_d.count(&server_conn), 1);
    f.assert_no_duplicates();
}

#[test]
fn stateless_test() {
    let f = fixture(Policy::stateless_server(), Policy::lossy_client());

    // 1. the server loses state.
    let conn = f.connect();
    f.round_trip(&conn);
    assert_eq!(f.cli_d.count(&conn), 1);
    conn.mark_down();
    assert!(wait_until(WAIT, || !conn.is_connected() && conn.is_closed()));
    let first_accept = f.server_conn();

    f.srv_d.clear_flags();
    let conn = f.connect();
    f.round_trip(&conn);
    assert_eq!(f.cli_d.count(&conn), 1);
    let server_conn = f.server_conn();
    assert_ne!(server_conn, first_accept, "a new server-side connection");
    assert!(wait_until(WAIT, || f.srv_d.count(&server_conn) == 1));
    // The first session ended with the client's mark_down (lossy): reset, its count dropped.
    assert!(wait_until(WAIT, || first_accept.is_closed()));
    assert_eq!(f.srv_d.count(&first_accept), 0);

    // 2. the client is lossy: the server's mark_down ends its session.
    server_conn.mark_down();
    assert!(wait_until(WAIT, || !server_conn.is_connected()));
    let _ = conn.send_keepalive();
    assert!(wait_until(WAIT, || !conn.is_connected() && conn.is_closed()));
    let conn = f.connect();
    f.round_trip(&conn);
    assert_eq!(f.cli_d.count(&conn), 1);
    f.assert_no_duplicates();
}

#[test]
fn anon_test() {
    let f = fixture(Policy::stateless_server(), Policy::lossy_client());
    // Anonymous connections: separate sessions to the same server from one messenger.
    let anon = || {
        f.cli
            .connect_new(entity_type::OSD, f.srv.my_addrs(), f.cli_policy)
            .unwrap()
    };
    let con_a = anon();
    f.round_trip(&con_a);
    assert_eq!(f.cli_d.count(&con_a), 1);
    let server_con_a = f.server_conn();

    let con_b = anon();
    f.round_trip(&con_b);
    assert_eq!(f.cli_d.count(&con_b), 1);
    let server_con_b = f.server_conn();

    // These are distinct…
    assert_ne!(con_a, con_b);
    assert_ne!(server_con_a, server_con_b);
    // …and both connected.
    f.round_trip(&con_a);
    f.round_trip(&con_b);
    assert_eq!(f.cli_d.count(&con_a), 2);
    assert_eq!(f.cli_d.count(&con_b), 2);
    assert!(con_a.is_connected() && con_b.is_connected());

    con_a.mark_down();
    con_b.mark_down();
    assert!(wait_until(WAIT, || !con_a.is_connected() && !con_b.is_connected()));
    f.assert_no_duplicates();
}

#[test]
fn client_standby_test() {
    let f = fixture(Policy::stateful_server(), Policy::lossless_peer());

    // 1. client standby, resetcheck
    let conn = f.connect();
    f.round_trip(&conn);
    assert_eq!(f.cli_d.count(&conn), 1);
    let server_conn = f.server_conn();
    assert!(!f.cli_d.got_remote_reset());
    f.cli_d.clear_flags();
    server_conn.mark_down();
    assert!(wait_until(WAIT, || !server_conn.is_connected()));
    // The client (lossless peer, nothing to send) goes to standby.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!conn.is_closed());
    assert!(!conn.is_connected());
    // A message brings it back: the server has no session, the client hears of the reset.
    conn.send(ping()).unwrap();
    assert!(
        f.cli_d.wait_remote_reset(),
        "the client saw no remote reset"
    );
    assert!(f.cli_d.wait_connect(), "the client did not reconnect");
    assert!(wait_until(WAIT, || conn.is_connected()));
    f.round_trip(&conn);
    assert_eq!(f.cli_d.count(&conn), 1);
    let server_conn = f.server_conn();
    assert_eq!(f.srv_d.count(&server_conn), 1);
    f.assert_no_duplicates();
}

/// Keys and tickets for a cephx round trip with an OSD-type msgr server (the service role); the
/// monitor exchange that issues the client its OSD ticket runs through the protocol API.
struct CephxWorld {
    client: Arc<CephxClient>,
    service: Arc<CephxService>,
}

fn cephx_world() -> &'static CephxWorld {
    static W: OnceLock<CephxWorld> = OnceLock::new();
    W.get_or_init(|| {
        let mut rng = rand::rng();
        let now = Instant::now();
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let anchor = WallAnchor::new(now, since_epoch);
        let admin = AuthEntityName::new(entity_type::CLIENT, "admin");
        let admin_key = CryptoKey::generate(&mut rng, UTime::default());
        let mut keyring = Keyring::default();
        keyring.insert(KeyringEntry {
            name: admin.clone(),
            key: admin_key.clone(),
            caps: vec![
                ("mon".into(), "allow *".into()),
                ("osd".into(), "allow *".into()),
            ],
        });
        let secrets = ServiceSecrets::generate(
            &[entity_type::MON, entity_type::OSD],
            &mut rng,
            UTime::default(),
        );
        let service = Arc::new(secrets.service(entity_type::OSD, anchor).unwrap());
        let monitor = CephxMonitor::new(keyring, secrets, anchor);
        let client = CephxClient::new(admin, admin_key);
        let (req, mut s) = client.start(entity_type::MON, &mut rng).unwrap();
        let (challenge, ms) = monitor.start(&req, || 4321, &mut rng).unwrap();
        let proof = s.handle_reply_more(&client, &challenge, &mut rng).unwrap();
        let (done, global_id, _) = monitor.finish(&ms, &proof, 64, now, &mut rng).unwrap();
        s.handle_done(&client, global_id, &done).unwrap();
        CephxWorld {
            client: Arc::new(client),
            service,
        }
    })
}

#[test]
fn auth_test() {
    // 1. simple auth round trip: cephx (Ceph sets auth_*_required = cephx).
    let w = cephx_world();
    let cephx = |sc: &mut Config, cc: &mut Config| {
        sc.auth_server = ServerAuth::cephx_service(w.service.clone());
        cc.auth_client = ClientAuth::cephx(w.client.clone());
    };
    let f = fixture_with(Policy::stateless_server(), Policy::lossy_client(), cephx);
    let conn = f.connect();
    f.round_trip(&conn);
    assert!(conn.is_connected());
    assert_eq!(f.cli_d.count(&conn), 1);
    assert_eq!(
        f.server_conn().peer().auth_name,
        Some(AuthEntityName::new(entity_type::CLIENT, "admin"))
    );

    // 2. mix auth: auth none on both sides (Ceph flips the config; msgr's is per messenger).
    conn.mark_down();
    assert!(wait_until(WAIT, || !conn.is_connected()));
    let g = fixture(Policy::stateless_server(), Policy::lossy_client());
    let conn = g.connect();
    g.round_trip(&conn);
    assert!(conn.is_connected());
    assert_eq!(g.cli_d.count(&conn), 1);
    f.assert_no_duplicates();
    g.assert_no_duplicates();
}

#[test]
fn message_test() {
    let f = fixture(Policy::stateful_server(), Policy::lossless_peer());
    let conn = f.connect();
    let abc = b"abcdefghijklmnopqrstuvwxyz";
    let big: Bytes = abc.repeat(1024 * 30).into();

    // 1. A very large front (Ceph: an MCommand with 30720 strings).
    conn.send(Message::new(MSG_COMMAND, big.clone())).unwrap();
    assert!(f.cli_d.wait_new(), "no answer to a large front");

    // 2. A very large data segment.
    conn.send(ping().with_data(big.clone())).unwrap();
    assert!(f.cli_d.wait_new(), "no answer to a large data segment");

    assert_eq!(f.srv_d.bytes(), 2 * big.len() as u64);
    assert_eq!(f.srv_d.count(&f.server_conn()), 2);
    f.assert_no_duplicates();
}

/// Ceph's MarkdownDispatcher: once it has seen two connections, every message makes it mark down one
/// of the others (with small random sleeps), from the dispatch thread.
struct MarkdownDispatcher {
    conns: Mutex<(Vec<ConnectionRef>, bool)>,
    count: AtomicU64,
}

impl Dispatcher for MarkdownDispatcher {
    fn ms_dispatch(&self, conn: &ConnectionRef, _msg: Message) {
        self.count.fetch_add(1, Ordering::AcqRel);
        let mut g = self.conns.lock().unwrap();
        let (conns, last_mark) = &mut *g;
        if !conns.contains(conn) {
            conns.push(conn.clone());
        }
        if conns.len() < 2 && !*last_mark {
            return;
        }
        *last_mark = true;
        std::thread::sleep(Duration::from_micros(rand::random_range(0..500)));
        if let Some(i) = conns.iter().position(|c| c != conn) {
            conns.remove(i).mark_down();
        }
        if conns.is_empty() {
            *last_mark = false;
        }
    }
    fn ms_handle_connect(&self, conn: &ConnectionRef) {
        self.remember(conn);
    }
    fn ms_handle_accept(&self, conn: &ConnectionRef) {
        self.remember(conn);
    }
    fn ms_handle_reset(&self, conn: &ConnectionRef, _why: &Error) {
        self.forget(conn);
        std::thread::sleep(Duration::from_micros(rand::random_range(0..500)));
    }
    fn ms_handle_remote_reset(&self, conn: &ConnectionRef) {
        self.forget(conn);
    }
}

impl MarkdownDispatcher {
    fn new() -> Arc<Self> {
        Arc::new(MarkdownDispatcher {
            conns: Mutex::new((Vec::new(), false)),
            count: AtomicU64::new(0),
        })
    }
    fn remember(&self, conn: &ConnectionRef) {
        let mut g = self.conns.lock().unwrap();
        if !g.0.contains(conn) {
            g.0.push(conn.clone());
        }
    }
    fn forget(&self, conn: &ConnectionRef) {
        self.conns.lock().unwrap().0.retain(|c| c != conn);
    }
}

/// Markdown with external lock: two servers share a dispatcher that marks connections down from
/// dispatch; the client keeps sending to both. Ceph runs 1000 rounds; 300 here.
#[test]
fn markdown_test() {
    const ROUNDS: u32 = 300;
    let srv_d = MarkdownDispatcher::new();
    let cli_d = MarkdownDispatcher::new();
    let server = || {
        let mut c = osd_config();
        c.default_policy = Policy::stateless_server();
        start_bound(c, 2, srv_d.clone())
    };
    let (srv1, srv2) = (server(), server());
    let cli = start(client_config(), 2, None, no_faults(), cli_d.clone());

    let mut last = 0;
    let mut equal_count = 0;
    for round in 0..ROUNDS {
        let conn1 = cli
            .connect_to(entity_type::OSD, srv1.my_addrs(), Policy::lossy_client())
            .unwrap();
        let conn2 = cli
            .connect_to(entity_type::OSD, srv2.my_addrs(), Policy::lossy_client())
            .unwrap();
        // A connection being marked down may refuse the message; Ceph ignores that too.
        let _ = conn1.send(ping());
        let _ = conn2.send(ping());
        wait_until(Duration::from_secs(1), || {
            srv_d.count.load(Ordering::Acquire) > last + 1
        });
        let now = srv_d.count.load(Ordering::Acquire);
        if now == last {
            equal_count += 1;
            std::thread::sleep(Duration::from_millis(500));
        } else {
            equal_count = 0;
        }
        last = now;
        assert!(
            equal_count <= 3,
            "round {round}: no message reached the servers for 4 rounds ({last} so far)"
        );
    }
    assert!(
        last >= u64::from(ROUNDS),
        "{last} messages in {ROUNDS} rounds"
    );
    for m in [&srv1, &srv2, &cli] {
        assert_no_duplicates(m);
    }
}
