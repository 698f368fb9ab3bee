//! cephx and secure mode end to end.
//!
//! - msgr against a REAL Ceph monitor running cephx (scripts/ceph-mon.sh start --auth cephx: a keyring
//!   made by ceph-authtool, modes "secure crc" allowed): the messenger authenticates as client.admin,
//!   once asking for crc and once for secure, checks the mode AUTH_DONE chose, and fetches the MonMap
//!   (fsid checked); a wrong key is refused by the monitor and msgr says so clearly. Skipped with a
//!   loud note when ceph-mon is not installed, unless MSGR_REQUIRE_CEPH=1 (CI): then it fails.
//! - msgr ↔ msgr over posix sockets: a client gets its tickets from a msgr server in the monitor role,
//!   then talks to a msgr server in the service role in secure mode; a client without the key, with
//!   another entity's key, or without a ticket is refused.
//! - a tampering wire between two protocol cores in secure mode: a single flipped bit, or a replayed
//!   frame, makes the receiver drop the connection without delivering that message.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::net::{messenger, no_faults, proto_config};
use msgr::msgs::{CephMessage, MMonGetMap, MMonMap};
use msgr::proto::auth::{
    cephx_client_from_keyring, ClientAuth, ConModes, CryptoKey, Keyring, KeyringEntry,
    CON_MODE_CRC, CON_MODE_SECURE,
};
use msgr::proto::auth::{CephxClient, CephxMonitor, ServerAuth, ServiceSecrets, WallAnchor};
use msgr::proto::conn::{Config, Connection, Event};
use msgr::proto::message::Message as ProtoMessage;
use msgr::proto::types::{entity_type, AddrVec, AuthEntityName, EntityAddr, UTime};
use msgr::proto::{Error, Message, Policy};
use msgr::{ConnectionRef, Dispatcher};

/// Records messages and the reset reason.
#[derive(Default)]
struct Recorder {
    msgs: Mutex<Vec<Message>>,
    reset: Mutex<Option<Error>>,
}

impl Dispatcher for Recorder {
    fn ms_dispatch(&self, _conn: &ConnectionRef, msg: Message) {
        self.msgs.lock().unwrap().push(msg);
    }
    fn ms_handle_reset(&self, _conn: &ConnectionRef, why: &Error) {
        *self.reset.lock().unwrap() = Some(why.clone());
    }
}

fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Authenticate with `auth`, offering only `mode`, and ask for the MonMap.
fn fetch_monmap(auth: ClientAuth, mode: u32, mon: &AddrVec) -> (Arc<Recorder>, ConnectionRef) {
    let mut cfg = proto_config(entity_type::CLIENT, "client.admin");
    cfg.auth_client = auth;
    cfg.con_modes = ConModes::all(&[mode]);
    cfg.handshake_timeout = Duration::from_secs(10);
    let rec = Arc::new(Recorder::default());
    let mut m = messenger(cfg, 1, no_faults(), rec.clone());
    m.start().unwrap();
    let conn = m
        .connect_to(entity_type::MON, mon, Policy::lossy_client())
        .unwrap();
    conn.send(MMonGetMap.to_message()).unwrap();
    let got = wait_for(Duration::from_secs(15), || {
        let has_map = rec
            .msgs
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.header.msg_type == MMonMap::MSG_TYPE);
        (has_map || rec.reset.lock().unwrap().is_some()).then_some(())
    });
    assert!(got.is_some(), "neither a MonMap nor a reset within 15 s");
    std::mem::forget(m); // shut down with the process: the test only needs what it recorded
    (rec, conn)
}

#[test]
fn cephx_against_a_real_monitor_crc_secure_and_wrong_key() {
    if !common::ceph::ceph_available("cephx_against_a_real_monitor_crc_secure_and_wrong_key") {
        return;
    }
    let v2 = common::ceph::free_port(&[]);
    let v1 = common::ceph::free_port(&[v2]);
    let mon_daemon = common::ceph::CephMon::start(
        "cephx-mon",
        &[
            "--v2-port".into(),
            v2.to_string(),
            "--v1-port".into(),
            v1.to_string(),
            "--auth".into(),
            "cephx".into(),
        ],
    );
    assert_eq!(mon_daemon.env("AUTH"), "cephx");
    let keyring = mon_daemon.env("KEYRING").to_string();
    let fsid = mon_daemon.env("FSID").to_string();
    let mon = AddrVec(vec![EntityAddr::msgr2(mon_daemon.sockaddr("V2_ADDR"), 0)]);

    for (mode, name) in [(CON_MODE_CRC, "crc"), (CON_MODE_SECURE, "secure")] {
        let auth = cephx_client_from_keyring(&keyring, "client.admin").unwrap();
        let (rec, conn) = fetch_monmap(auth, mode, &mon);
        assert!(
            rec.reset.lock().unwrap().is_none(),
            "{name}: {:?}",
            rec.reset.lock().unwrap()
        );
        assert_eq!(conn.peer().con_mode, mode, "{name}: AUTH_DONE's mode");
        assert_ne!(
            conn.peer().global_id,
            0,
            "{name}: the monitor gave a global id"
        );
        let msgs = rec.msgs.lock().unwrap();
        let map = msgs
            .iter()
            .find(|m| m.header.msg_type == MMonMap::MSG_TYPE)
            .unwrap();
        let map = MMonMap::from_message(map).unwrap();
        assert_eq!(map.monmap.fsid.to_string(), fsid, "{name}");
        eprintln!(
            "cephx + {name}: MonMap epoch {} fsid {fsid}",
            map.monmap.epoch
        );
    }

    // The right name with another key: the monitor refuses, msgr says who and why.
    let mut rng = rand::rng();
    let wrong = CryptoKey::generate(&mut rng, UTime::default());
    let mut kr = Keyring::default();
    kr.insert(KeyringEntry {
        name: AuthEntityName::new(entity_type::CLIENT, "admin"),
        key: wrong,
        caps: Vec::new(),
    });
    let path = mon_daemon.dir().join("wrong.keyring");
    std::fs::write(&path, kr.to_text()).unwrap();
    let auth = cephx_client_from_keyring(path.to_str().unwrap(), "client.admin").unwrap();
    let (rec, _conn) = fetch_monmap(auth, CON_MODE_SECURE, &mon);
    assert!(
        rec.msgs.lock().unwrap().is_empty(),
        "no message without the key"
    );
    let err = rec.reset.lock().unwrap().clone().expect("refused");
    let text = err.to_string();
    eprintln!("wrong key: {text}");
    assert!(matches!(err, Error::AuthFailed(_)), "{err:?}");
    assert!(
        text.contains("client.admin") && text.contains("refused"),
        "{text}"
    );
}

// ---- msgr <-> msgr ----

struct World {
    keyring: Keyring,
    secrets: ServiceSecrets,
    anchor: WallAnchor,
    admin_key: CryptoKey,
    other_key: CryptoKey,
}

fn world() -> World {
    let mut rng = rand::rng();
    let anchor = WallAnchor::new(
        Instant::now(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap(),
    );
    let admin_key = CryptoKey::generate(&mut rng, UTime::default());
    let other_key = CryptoKey::generate(&mut rng, UTime::default());
    let mut keyring = Keyring::default();
    for (id, key) in [("admin", &admin_key), ("other", &other_key)] {
        keyring.insert(KeyringEntry {
            name: AuthEntityName::new(entity_type::CLIENT, id),
            key: key.clone(),
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
    World {
        keyring,
        secrets,
        anchor,
        admin_key,
        other_key,
    }
}

fn cephx_client(name: &str, key: &CryptoKey) -> Arc<CephxClient> {
    Arc::new(CephxClient::new(name.parse().unwrap(), key.clone()))
}

/// A started msgr server of `etype` authenticating with `auth`, allowing `modes`.
fn msgr_server(
    etype: u8,
    name: &str,
    auth: ServerAuth,
    modes: &[u32],
) -> (common::net::PosixMessenger, Arc<Recorder>) {
    let mut cfg = proto_config(etype, name);
    cfg.auth_server = auth;
    cfg.con_modes = ConModes::all(modes);
    let rec = Arc::new(Recorder::default());
    let mut m = messenger(cfg, 1, no_faults(), rec.clone());
    m.bind(&["127.0.0.1:0".parse().unwrap()]).unwrap();
    m.start().unwrap();
    (m, rec)
}

fn msgr_client(
    client: Arc<CephxClient>,
    modes: &[u32],
) -> (common::net::PosixMessenger, Arc<Recorder>) {
    let mut cfg = proto_config(entity_type::CLIENT, &client.name().to_string());
    cfg.auth_client = ClientAuth::cephx(client);
    cfg.con_modes = ConModes::all(modes);
    let rec = Arc::new(Recorder::default());
    let mut m = messenger(cfg, 1, no_faults(), rec.clone());
    m.start().unwrap();
    (m, rec)
}

fn ping(tid: u64) -> Message {
    let mut m = ProtoMessage::new(0x4242, Bytes::from(format!("ping {tid}")));
    m.header.tid = tid;
    m
}

fn count(rec: &Recorder) -> usize {
    rec.msgs.lock().unwrap().len()
}

#[test]
fn msgr_client_gets_tickets_from_msgr_monitor_then_talks_secure_to_msgr_service() {
    let w = world();
    let mon = Arc::new(CephxMonitor::new(
        w.keyring.clone(),
        w.secrets.clone(),
        w.anchor,
    ));
    let osd_auth = Arc::new(w.secrets.service(entity_type::OSD, w.anchor).unwrap());
    let (mon_m, mon_rec) = msgr_server(
        entity_type::MON,
        "mon.a",
        ServerAuth::cephx_monitor(mon),
        &[CON_MODE_SECURE, CON_MODE_CRC],
    );
    let (osd_m, osd_rec) = msgr_server(
        entity_type::OSD,
        "osd.0",
        ServerAuth::cephx_service(osd_auth),
        &[CON_MODE_SECURE],
    );

    let admin = cephx_client("client.admin", &w.admin_key);
    let (c, crec) = msgr_client(admin.clone(), &[CON_MODE_SECURE]);
    // Without a ticket the service cannot be reached.
    let early = c
        .connect_to(entity_type::OSD, osd_m.my_addrs(), Policy::lossy_client())
        .unwrap();
    // The refusal can close the connection before this send: either way nothing is delivered.
    let _ = early.send(ping(0));
    let e = wait_for(Duration::from_secs(10), || {
        crec.reset.lock().unwrap().take()
    })
    .expect("refused");
    assert!(
        e.to_string().contains("no cephx ticket for service osd"),
        "{e}"
    );

    let to_mon = c
        .connect_to(entity_type::MON, mon_m.my_addrs(), Policy::lossy_client())
        .unwrap();
    to_mon.send(ping(1)).unwrap();
    assert!(wait_for(Duration::from_secs(10), || (count(&mon_rec) == 1)
        .then_some(()))
    .is_some());
    assert_eq!(to_mon.peer().con_mode, CON_MODE_SECURE);
    assert_ne!(admin.global_id(), 0);
    assert!(
        admin.ticket(u32::from(entity_type::OSD)).is_some(),
        "OSD ticket from the monitor"
    );

    let to_osd = c
        .connect_new(
            entity_type::OSD,
            osd_m.my_addrs(),
            Policy::lossless_client(),
        )
        .unwrap();
    for tid in 1..=50 {
        to_osd.send(ping(tid)).unwrap();
    }
    assert!(
        wait_for(Duration::from_secs(10), || (count(&osd_rec) == 50)
            .then_some(()))
        .is_some(),
        "{} of 50 delivered",
        count(&osd_rec)
    );
    assert_eq!(to_osd.peer().con_mode, CON_MODE_SECURE);
    let tids: Vec<u64> = osd_rec
        .msgs
        .lock()
        .unwrap()
        .iter()
        .map(|m| m.header.tid)
        .collect();
    assert_eq!(tids, (1..=50).collect::<Vec<_>>());
    assert!(crec.reset.lock().unwrap().is_none());

    // Refused at the monitor: the right name with a wrong key, and another entity's key.
    for (name, key) in [
        ("client.admin", &w.other_key),
        (
            "client.admin",
            &CryptoKey::generate(&mut rand::rng(), UTime::default()),
        ),
        ("client.nobody", &w.admin_key),
    ] {
        let (c, crec) = msgr_client(cephx_client(name, key), &[CON_MODE_SECURE]);
        let conn = c
            .connect_to(entity_type::MON, mon_m.my_addrs(), Policy::lossy_client())
            .unwrap();
        // The refusal can close the connection before this send: either way nothing is delivered.
        let _ = conn.send(ping(99));
        let e = wait_for(Duration::from_secs(10), || {
            crec.reset.lock().unwrap().take()
        })
        .expect("refused");
        assert!(matches!(e, Error::AuthFailed(_)), "{name}: {e}");
        assert!(e.to_string().contains(name), "{e}");
    }
    assert_eq!(count(&mon_rec), 1, "nothing from refused clients");
}

// ---- a tampering wire between two protocol cores ----

struct Pair {
    client: Connection,
    server: Connection,
    client_events: Vec<Event>,
    server_events: Vec<Event>,
}

impl Pair {
    /// Move bytes both ways until quiet; `tamper` sees (and may change) each client→server batch of
    /// frames (in secure mode one `Bytes` per frame).
    fn pump(&mut self, now: Instant, tamper: &mut dyn FnMut(&mut Vec<Bytes>)) {
        for _ in 0..100 {
            let mut moved = false;
            let mut out = Vec::new();
            if self.client.poll_transmit(now, &mut out) > 0 {
                tamper(&mut out);
                for b in &out {
                    self.server.handle_input(now, b);
                }
                moved = true;
            }
            let mut back = Vec::new();
            if self.server.poll_transmit(now, &mut back) > 0 {
                for b in &back {
                    self.client.handle_input(now, b);
                }
                moved = true;
            }
            while let Some(e) = self.server.poll_event() {
                if let Event::SessionRequest(_) = e {
                    self.server.resolve_session(now, None);
                }
                self.server_events.push(e);
            }
            self.client_events
                .extend(std::iter::from_fn(|| self.client.poll_event()));
            if !moved {
                return;
            }
        }
    }

    fn delivered(&self) -> Vec<u64> {
        self.server_events
            .iter()
            .filter_map(|e| match e {
                Event::Message(m) => Some(m.header.tid),
                _ => None,
            })
            .collect()
    }
}

/// A client with tickets from an in-memory monitor, connected in secure mode to a service.
fn secure_pair() -> Pair {
    let w = world();
    let now = Instant::now();
    let admin = cephx_client("client.admin", &w.admin_key);
    let mut ccfg = common::client_config(1);
    ccfg.auth_client = ClientAuth::cephx(admin.clone());
    ccfg.con_modes = ConModes::all(&[CON_MODE_SECURE]);
    let ccfg = Arc::new(ccfg);

    let mut mcfg: Config = common::server_config(2);
    mcfg.entity_type = entity_type::MON;
    mcfg.auth_server = ServerAuth::cephx_monitor(Arc::new(CephxMonitor::new(
        w.keyring.clone(),
        w.secrets.clone(),
        w.anchor,
    )));
    let mut to_mon = Pair {
        client: Connection::client(
            ccfg.clone(),
            Policy::lossy_client(),
            entity_type::MON,
            common::server_addr(),
            now,
        ),
        server: Connection::server(Arc::new(mcfg), common::client_addr(), now),
        client_events: Vec::new(),
        server_events: Vec::new(),
    };
    to_mon.client.on_transport_connected(now);
    to_mon.pump(now, &mut |_| {});
    assert!(to_mon.client.is_ready(), "{:?}", to_mon.client_events);
    assert_eq!(to_mon.client.con_mode(), CON_MODE_SECURE);

    let mut scfg = common::server_config(3);
    scfg.auth_server = ServerAuth::cephx_service(Arc::new(
        w.secrets.service(entity_type::OSD, w.anchor).unwrap(),
    ));
    scfg.con_modes = ConModes::all(&[CON_MODE_SECURE]);
    let mut p = Pair {
        client: Connection::client(
            ccfg,
            Policy::lossy_client(),
            entity_type::OSD,
            common::server_addr(),
            now,
        ),
        server: Connection::server(Arc::new(scfg), common::client_addr(), now),
        client_events: Vec::new(),
        server_events: Vec::new(),
    };
    p.client.on_transport_connected(now);
    p.pump(now, &mut |_| {});
    assert!(
        p.client.is_ready() && p.server.is_ready(),
        "{:?}",
        p.client_events
    );
    assert_eq!(p.server.con_mode(), CON_MODE_SECURE);
    assert_eq!(
        p.server.peer_auth_name().map(|n| n.to_string()).as_deref(),
        Some("client.admin")
    );
    p
}

fn transport_dropped(events: &[Event]) -> Option<String> {
    events.iter().find_map(|e| match e {
        Event::TransportDown(err) | Event::Reset(err) => Some(err.to_string()),
        _ => None,
    })
}

#[test]
fn secure_messages_arrive_and_a_flipped_bit_anywhere_drops_the_connection() {
    let now = Instant::now();
    let mut p = secure_pair();
    p.client.send(now, ping(1)).unwrap();
    p.pump(now, &mut |_| {});
    assert_eq!(p.delivered(), [1]);

    // Every bit position class: preamble block, inline segment, segment rest, epilogue tag.
    for (k, at) in [0usize, 40, 95, 96, 150, usize::MAX]
        .into_iter()
        .enumerate()
    {
        let mut p = secure_pair();
        p.client.send(now, ping(10 + k as u64)).unwrap();
        let mut flipped = false;
        p.pump(now, &mut |frames| {
            if let Some(f) = frames.first_mut() {
                let mut v = f.to_vec();
                let i = at.min(v.len() - 1);
                v[i] ^= 0x01;
                *f = Bytes::from(v);
                flipped = true;
            }
        });
        assert!(flipped);
        assert!(p.delivered().is_empty(), "flip at {at}: delivered");
        let why = transport_dropped(&p.server_events).expect("server dropped the transport");
        assert!(why.contains("authentication"), "flip at {at}: {why}");
        assert!(!p.server.has_transport());
    }
}

#[test]
fn a_replayed_secure_frame_drops_the_connection_and_is_not_delivered_twice() {
    let now = Instant::now();
    let mut p = secure_pair();
    p.client.send(now, ping(7)).unwrap();
    p.pump(now, &mut |frames| {
        let copy = frames.clone();
        frames.extend(copy);
    });
    assert_eq!(p.delivered(), [7], "once, not twice");
    let why = transport_dropped(&p.server_events).expect("server dropped the transport");
    assert!(why.contains("authentication"), "{why}");
    // Nothing more gets through on that transport.
    p.client.send(now, ping(8)).unwrap();
    p.pump(now, &mut |_| {});
    assert_eq!(p.delivered(), [7]);
}
