//! `msgr recon` against in-process fake peers on loopback (a msgr2 server driving `proto::Connection`,
//! msgr1, HTTP, a silent listener, a closed port, a server that refuses auth none) and against a real
//! Ceph monitor started with scripts/ceph-mon.sh (skipped with a loud note when ceph-mon is missing,
//! unless MSGR_REQUIRE_CEPH=1). Every fake peer thread and every probe is bounded in time.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clap::{CommandFactory, Parser};
use msgr::proto::auth::{AUTH_METHOD_CEPHX, AUTH_METHOD_NONE, CON_MODE_CRC, CON_MODE_SECURE};
use msgr::proto::banner::Banner;
use msgr::proto::codec::{FrameDecoder, FrameEncoder, Tag};
use msgr::proto::conn::{Config, Connection, Event, Policy, CEPH_FEATURES_ALL, MSGR2_SUPPORTED};
use msgr::proto::control::{AuthBadMethod, ControlFrame, Hello};
use msgr::proto::sim::Sim;
use msgr::proto::types::{entity_type, AddrVec, AuthEntityName, EntityAddr};
// The `msgr recon` module itself (it lives in the binary), with the stack switch whose options it takes
// and the bench module (size parsing) that switch uses.
#[path = "../src/bin/msgr/bench/mod.rs"]
#[allow(dead_code, unused_imports)]
mod bench;
#[path = "../src/bin/msgr/recon.rs"]
#[allow(dead_code)]
mod recon;
#[path = "../src/bin/msgr/stacks/mod.rs"]
#[allow(dead_code)]
mod stacks;
use recon::{ReconArgs, Target, EXIT_FAIL, EXIT_OK};

/// Exit status of a usage error (clap's, and `msgr`'s own).
const EXIT_USAGE: i32 = 2;
use serde_json::Value;

/// How long any fake peer keeps a connection open at most.
const PEER_LIFETIME: Duration = Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(name = "msgr-recon")]
struct Cli {
    #[command(flatten)]
    args: ReconArgs,
}

fn args(argv: &[&str]) -> ReconArgs {
    let mut full = vec!["msgr-recon"];
    full.extend_from_slice(argv);
    Cli::try_parse_from(full)
        .unwrap_or_else(|e| panic!("{argv:?} should parse: {e}"))
        .args
}

/// Runs recon with `--json` added; returns the exit status and the parsed array.
fn run_json(argv: &[&str]) -> (i32, Vec<Value>) {
    let mut argv = argv.to_vec();
    argv.push("--json");
    let mut out = Vec::new();
    let code = recon::run_to(&args(&argv), &mut out).expect("usage is fine");
    let text = String::from_utf8(out).expect("utf-8 output");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON {e}: {text}"));
    let arr = v.as_array().expect("a JSON array").clone();
    (code, arr)
}

fn run_one(addr: &str, extra: &[&str]) -> (i32, Value) {
    let mut argv = vec![addr];
    argv.extend_from_slice(extra);
    let (code, mut arr) = run_json(&argv);
    assert_eq!(arr.len(), 1, "{arr:?}");
    (code, arr.remove(0))
}

fn s<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} not a string in {v}"))
}

fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let a = l.local_addr().expect("local addr");
    (l, a)
}

/// Reads and discards until EOF, an error, or `PEER_LIFETIME`.
fn drain_until_closed(mut s: TcpStream) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let end = Instant::now() + PEER_LIFETIME;
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// A listener that accepts `conns` connections and hands each to `serve` (on this one thread).
fn fake_peer(
    conns: usize,
    serve: impl Fn(TcpStream, SocketAddr, SocketAddr) + Send + 'static,
) -> (SocketAddr, JoinHandle<()>) {
    let (l, addr) = listener();
    let h = std::thread::spawn(move || {
        for _ in 0..conns {
            match l.accept() {
                Ok((stream, peer)) => serve(stream, peer, addr),
                Err(_) => return,
            }
        }
    });
    (addr, h)
}

/// A msgr2 server of `etype` at `addr` with `nonce`, one connection, driven like recon drives its
/// client: blocking reads with a short timeout, write what poll_transmit gives.
fn serve_msgr2(mut s: TcpStream, peer: SocketAddr, me: SocketAddr, etype: u8, nonce: u32) {
    let mut cfg = Config::new(etype, AuthEntityName::new(etype, "0"));
    cfg.my_addrs = AddrVec(vec![EntityAddr::msgr2(me, nonce)]);
    cfg.gid = 7;
    cfg.rng_seed = Some(1);
    cfg.default_policy = Policy::stateless_server();
    let start = Instant::now();
    let mut conn = Connection::server(Arc::new(cfg), EntityAddr::msgr2(peer, 0), start);
    let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = vec![0u8; 16 * 1024];
    let mut out: Vec<Bytes> = Vec::new();
    while start.elapsed() < PEER_LIFETIME {
        out.clear();
        conn.poll_transmit(Instant::now(), &mut out);
        for b in &out {
            if s.write_all(b).is_err() {
                return;
            }
        }
        let mut acted = false;
        while let Some(ev) = conn.poll_event() {
            match ev {
                Event::SessionRequest(_) => {
                    conn.resolve_session(Instant::now(), None);
                    acted = true;
                }
                Event::TransportDown(_) | Event::Reset(_) | Event::Closed => return,
                _ => {}
            }
        }
        if acted {
            continue;
        }
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => conn.handle_input(Instant::now(), &buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

fn msgr2_peer(etype: u8, nonce: u32, conns: usize) -> (SocketAddr, JoinHandle<()>) {
    fake_peer(conns, move |s, peer, me| {
        serve_msgr2(s, peer, me, etype, nonce)
    })
}

fn assert_bounded(started: Instant, limit: Duration) {
    assert!(
        started.elapsed() < limit,
        "took {:?}, limit {limit:?}",
        started.elapsed()
    );
}

// ---- fake peers ----

#[test]
fn msgr2_osd_is_ok_with_everything_it_said() {
    let (addr, h) = msgr2_peer(entity_type::OSD, 0, 1);
    let started = Instant::now();
    let (code, r) = run_one(&addr.to_string(), &["--expect", "osd", "--timeout", "5"]);
    assert_bounded(started, Duration::from_secs(5));
    assert_eq!(code, EXIT_OK, "{r}");
    assert_eq!(s(&r, "status"), "OK");
    assert_eq!(r["ok"], true);
    assert_eq!(s(&r, "addr"), addr.to_string());
    assert_eq!(s(&r, "entity_type"), "osd");
    assert_eq!(s(&r, "msgr2_features"), format!("{MSGR2_SUPPORTED:#x}"));
    assert_eq!(r["msgr2_feature_names"], serde_json::json!(["revision_1"]));
    assert_eq!(s(&r, "ceph_features"), format!("{CEPH_FEATURES_ALL:#x}"));
    assert_eq!(r["addrs"], serde_json::json!([format!("v2:{addr}/0")]));
    assert!(r["global_seq"].as_u64().is_some_and(|g| g > 0), "{r}");
    // The fake server tells us the socket address it accepted us from.
    assert!(s(&r, "seen_as").starts_with("v2:127.0.0.1:"), "{r}");
    for t in ["connect_ms", "banner_rtt_ms", "handshake_ms"] {
        let v = r[t].as_f64().unwrap_or_else(|| panic!("{t} missing: {r}"));
        assert!((0.0..5000.0).contains(&v), "{t} = {v}");
    }
    assert!(r["failure"].is_null() && r["reason"].is_null(), "{r}");
    h.join().unwrap();
}

#[test]
fn table_output_has_one_line_per_peer_and_a_summary() {
    let (ok_addr, h) = msgr2_peer(entity_type::MGR, 0, 1);
    let closed = closed_port();
    let a = ok_addr.to_string();
    let c = closed.to_string();
    let mut out = Vec::new();
    let code = recon::run_to(&args(&[&a, &c, "--timeout", "3"]), &mut out).unwrap();
    assert_eq!(code, EXIT_FAIL);
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[0].starts_with("ADDRESS") && lines[0].contains("REASON"),
        "{text}"
    );
    assert!(lines[1].starts_with(&a) && lines[1].contains(" OK ") && lines[1].contains("mgr"));
    assert!(
        lines[1].contains(&format!("{CEPH_FEATURES_ALL:#x}")),
        "{text}"
    );
    assert!(
        lines[2].starts_with(&c) && lines[2].contains("FAIL"),
        "{text}"
    );
    assert!(lines[2].ends_with("connection refused"), "{text}");
    assert_eq!(lines[3], "2 peers: 1 OK, 1 FAIL");
    h.join().unwrap();
}

#[test]
fn legacy_msgr1_banner_is_msgr1_only() {
    let (addr, h) = fake_peer(1, |mut s, _, _| {
        let mut junk = b"ceph v027".to_vec();
        junk.extend((0..100u8).map(|i| i.wrapping_mul(37)));
        let _ = s.write_all(&junk);
        drain_until_closed(s);
    });
    let (code, r) = run_one(&addr.to_string(), &["--timeout", "5"]);
    assert_eq!(code, EXIT_FAIL);
    assert_eq!(s(&r, "status"), "FAIL");
    assert_eq!(s(&r, "failure"), "msgr1_only");
    assert!(
        s(&r, "reason").starts_with("msgr1 only (legacy banner \"ceph v027\""),
        "{r}"
    );
    assert!(
        r["msgr2_features"].is_null() && r["banner_rtt_ms"].is_null(),
        "{r}"
    );
    h.join().unwrap();
}

#[test]
fn http_answer_is_not_ceph_and_quoted() {
    let (addr, h) = fake_peer(1, |mut s, _, _| {
        // Like a web server: read the "request", answer 400, close.
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        let _ = s.shutdown(std::net::Shutdown::Write);
        drain_until_closed(s);
    });
    let (code, r) = run_one(&addr.to_string(), &["--timeout", "5"]);
    assert_eq!(code, EXIT_FAIL);
    assert_eq!(s(&r, "failure"), "not_ceph");
    assert_eq!(
        s(&r, "reason"),
        "not Ceph: first bytes were \"HTTP/1.1 400 Bad Request\\r\\n\\r\\n\""
    );
    h.join().unwrap();
}

fn closed_port() -> SocketAddr {
    let (l, addr) = listener();
    drop(l);
    addr
}

#[test]
fn closed_port_is_refused() {
    let addr = closed_port();
    let (code, r) = run_one(&addr.to_string(), &["--timeout", "3"]);
    assert_eq!(code, EXIT_FAIL);
    assert_eq!(s(&r, "failure"), "refused");
    assert_eq!(s(&r, "reason"), "connection refused");
    assert!(r["connect_ms"].is_null(), "{r}");
}

#[test]
fn silent_listener_times_out_within_the_timeout() {
    let (addr, h) = fake_peer(1, |s, _, _| drain_until_closed(s));
    let started = Instant::now();
    let (code, r) = run_one(&addr.to_string(), &["--timeout", "1"]);
    let took = started.elapsed();
    assert_eq!(code, EXIT_FAIL);
    assert_eq!(s(&r, "failure"), "timeout");
    assert_eq!(
        s(&r, "reason"),
        "timeout: connected, but no answer within 1s"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "took {took:?}"
    );
    h.join().unwrap();
}

#[test]
fn mon_with_expect_osd_is_wrong_type() {
    let (addr, h) = msgr2_peer(entity_type::MON, 0, 1);
    let (code, r) = run_one(&addr.to_string(), &["--expect", "osd", "--timeout", "5"]);
    assert_eq!(code, EXIT_FAIL);
    assert_eq!(s(&r, "failure"), "wrong_type");
    assert_eq!(s(&r, "reason"), "wrong type: peer is mon, expected osd");
    assert_eq!(s(&r, "entity_type"), "mon");
    // The handshake itself went through: what the peer said is still reported.
    assert_eq!(s(&r, "ceph_features"), format!("{CEPH_FEATURES_ALL:#x}"));
    h.join().unwrap();
}

#[test]
fn mon_with_expect_mon_is_ok() {
    let (addr, h) = msgr2_peer(entity_type::MON, 0, 1);
    let (code, r) = run_one(&addr.to_string(), &["--expect", "mon"]);
    assert_eq!(code, EXIT_OK, "{r}");
    assert_eq!(s(&r, "entity_type"), "mon");
    h.join().unwrap();
}

/// A msgr2 peer (type osd) that refuses auth none the way a cephx-only daemon does.
fn cephx_only_peer(mut s: TcpStream, peer: SocketAddr) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let end = Instant::now() + PEER_LIFETIME;
    let mut wire = BytesMut::new();
    Banner {
        supported: MSGR2_SUPPORTED,
        required: 0,
    }
    .encode(&mut wire);
    if s.write_all(&wire).is_err() {
        return;
    }
    let mut enc = FrameEncoder::new();
    let mut dec = FrameDecoder::new(1 << 20);
    let mut rx = BytesMut::new();
    let mut banner_seen = false;
    let mut buf = [0u8; 4096];
    let send = |s: &mut TcpStream, enc: &mut FrameEncoder, cf: ControlFrame| {
        let mut payload = BytesMut::new();
        cf.encode_payload(&mut payload);
        let mut out = Vec::new();
        enc.encode_control(cf.tag(), &payload, &mut out).unwrap();
        out.iter().all(|b| s.write_all(b).is_ok())
    };
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => rx.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        }
        if !banner_seen {
            match Banner::decode(&rx) {
                Ok(Some((_, n))) => {
                    let _ = rx.split_to(n);
                    banner_seen = true;
                    let hello = ControlFrame::Hello(Hello {
                        entity_type: entity_type::OSD,
                        peer_addr: EntityAddr::msgr2(peer, 0),
                    });
                    if !send(&mut s, &mut enc, hello) {
                        return;
                    }
                }
                Ok(None) => continue,
                Err(_) => return,
            }
        }
        while let Ok(Some(frame)) = dec.decode(&mut rx) {
            if frame.tag == Tag::AuthRequest {
                let bad = ControlFrame::AuthBadMethod(AuthBadMethod {
                    method: AUTH_METHOD_NONE,
                    result: -95,
                    allowed_methods: vec![AUTH_METHOD_CEPHX],
                    allowed_modes: vec![CON_MODE_SECURE, CON_MODE_CRC],
                });
                if !send(&mut s, &mut enc, bad) {
                    return;
                }
            }
        }
    }
}

#[test]
fn cephx_only_peer_is_auth_refused_with_its_methods() {
    let (addr, h) = fake_peer(1, |s, peer, _| cephx_only_peer(s, peer));
    let (code, r) = run_one(&addr.to_string(), &["--expect", "osd", "--timeout", "5"]);
    assert_eq!(code, EXIT_FAIL);
    assert_eq!(s(&r, "failure"), "auth_refused");
    assert_eq!(
        s(&r, "reason"),
        "auth refused: peer allows cephx (modes secure, crc); recon offers only auth none"
    );
    // It got as far as HELLO: type and banner features are known, SERVER_IDENT's facts are not.
    assert_eq!(s(&r, "entity_type"), "osd");
    assert_eq!(s(&r, "msgr2_features"), "0x1");
    assert!(
        r["ceph_features"].is_null() && r["global_seq"].is_null(),
        "{r}"
    );
    h.join().unwrap();
}

#[test]
fn nonce_in_the_address_reaches_a_daemon_that_checks_it() {
    // A daemon with a nonce closes a CLIENT_IDENT aimed at another nonce; with the nonce it answers.
    let (addr, h) = msgr2_peer(entity_type::OSD, 4242, 2);
    let plain = addr.to_string();
    let with_nonce = format!("v2:{addr}/4242");
    let (code, r) = run_one(&plain, &["--timeout", "5"]);
    assert_eq!(code, EXIT_FAIL);
    assert_eq!(s(&r, "failure"), "reset");
    assert!(s(&r, "reason").contains("CLIENT_IDENT"), "{r}");
    assert!(s(&r, "reason").contains("v2:IP:PORT/NONCE"), "{r}");
    let (code, r) = run_one(&with_nonce, &["--timeout", "5"]);
    assert_eq!(code, EXIT_OK, "{r}");
    assert_eq!(s(&r, "addr"), format!("{addr}/4242"));
    assert_eq!(r["addrs"], serde_json::json!([format!("v2:{addr}/4242")]));
    h.join().unwrap();
}

#[test]
fn many_peers_in_order_with_bounded_parallelism() {
    // Five servers, two closed ports, one silent listener, probed two at a time; order is kept.
    let mut peers = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..5 {
        let (a, h) = msgr2_peer(entity_type::OSD, 0, 1);
        peers.push(h);
        addrs.push(a.to_string());
        if i == 1 || i == 3 {
            addrs.push(closed_port().to_string());
        }
    }
    let (silent, hs) = fake_peer(1, |s, _, _| drain_until_closed(s));
    addrs.push(silent.to_string());
    let mut argv: Vec<&str> = addrs.iter().map(String::as_str).collect();
    argv.extend_from_slice(&["--timeout", "1", "-j", "2"]);
    let started = Instant::now();
    let (code, arr) = run_json(&argv);
    assert_bounded(started, Duration::from_secs(8));
    assert_eq!(code, EXIT_FAIL);
    let got: Vec<(&str, &str)> = arr.iter().map(|r| (s(r, "addr"), s(r, "status"))).collect();
    let want: Vec<(&str, &str)> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let ok = !(i == 2 || i == 5 || i == addrs.len() - 1);
            (a.as_str(), if ok { "OK" } else { "FAIL" })
        })
        .collect();
    assert_eq!(got, want);
    for h in peers {
        h.join().unwrap();
    }
    hs.join().unwrap();
}

#[test]
fn ipv6_loopback_is_probed_in_brackets() {
    let Ok(l) = TcpListener::bind("[::1]:0") else {
        eprintln!("NOTE: no IPv6 loopback here; ipv6 test skipped");
        return;
    };
    let addr = l.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        if let Ok((s, peer)) = l.accept() {
            serve_msgr2(s, peer, addr, entity_type::OSD, 0);
        }
    });
    let (code, r) = run_one(&format!("[::1]:{}", addr.port()), &["--timeout", "5"]);
    assert_eq!(code, EXIT_OK, "{r}");
    assert_eq!(s(&r, "addr"), format!("[::1]:{}", addr.port()));
    assert!(s(&r, "seen_as").starts_with("v2:[::1]:"), "{r}");
    h.join().unwrap();
}

// ---- usage ----

#[test]
fn bad_addresses_are_usage_errors_with_clear_messages() {
    let cases = [
        ("localhost:3300", "not an IP address"),
        ("10.0.0.1", "missing port"),
        ("10.0.0.1:99999", "bad port"),
        ("10.0.0.1:0", "port 0"),
        ("fe80::1", "write it as [fe80::1]:PORT"),
        ("", "empty address"),
        ("v2:10.0.0.1:3300/x", "bad nonce"),
    ];
    for (input, want) in cases {
        let err = recon::run_to(&args(&["127.0.0.1:1", input]), &mut Vec::new()).expect_err(input);
        assert!(err.contains(want), "{input:?}: {err}");
        let err = recon::parse_target(input).expect_err(input);
        assert!(err.contains(want), "{input:?}: {err}");
    }
    assert_eq!(
        recon::parse_target("v2:[::1]:3300/7").unwrap(),
        Target {
            addr: "[::1]:3300".parse().unwrap(),
            nonce: 7
        }
    );
    assert_eq!(
        recon::parse_target(" 10.1.2.3:6789 ").unwrap(),
        Target::from("10.1.2.3:6789".parse::<SocketAddr>().unwrap())
    );
}

#[test]
fn bad_flags_are_rejected_by_clap_with_exit_status_2() {
    for argv in [
        vec!["msgr-recon"],
        vec!["msgr-recon", "127.0.0.1:3300", "--expect", "rgw"],
        vec!["msgr-recon", "127.0.0.1:3300", "--timeout", "0"],
        vec!["msgr-recon", "127.0.0.1:3300", "--timeout", "soon"],
        vec!["msgr-recon", "127.0.0.1:3300", "-j", "0"],
    ] {
        let err = Cli::try_parse_from(&argv).expect_err("should be refused");
        assert_eq!(err.exit_code(), EXIT_USAGE, "{argv:?}: {err}");
    }
    let help = Cli::command().render_long_help().to_string();
    for want in [
        "--expect",
        "--json",
        "--timeout",
        "msgr1 only",
        "auth refused",
        "Exit status: 0",
        "[::1]:3300",
    ] {
        assert!(help.contains(want), "help lacks {want:?}:\n{help}");
    }
}

// ---- the getters recon relies on ----

#[test]
fn connection_getters_report_what_the_peer_said() {
    let now = Instant::now();
    let server_addr = EntityAddr::msgr2("127.0.0.1:6800".parse().unwrap(), 0);
    let mut ccfg = Config::new(
        entity_type::CLIENT,
        AuthEntityName::new(entity_type::CLIENT, "admin"),
    );
    ccfg.features_supported = CEPH_FEATURES_ALL & !(1 << 3);
    ccfg.rng_seed = Some(3);
    let mut scfg = Config::new(entity_type::OSD, AuthEntityName::new(entity_type::OSD, "0"));
    scfg.my_addrs = AddrVec(vec![server_addr.clone()]);
    scfg.rng_seed = Some(4);
    let mut sim = Sim::new(
        Arc::new(ccfg),
        Policy::lossy_client(),
        Arc::new(scfg),
        server_addr.clone(),
        now,
    );
    assert_eq!(sim.client.peer_msgr2_features(), 0);
    assert_eq!(sim.client.addr_seen_by_peer(), None);
    assert!(sim.run_until(1000, |s| s.client.is_ready()));
    let c = &sim.client;
    assert_eq!(c.peer_msgr2_features(), MSGR2_SUPPORTED);
    // Sim's server sees the client at the address its HELLO names.
    assert!(c.addr_seen_by_peer().is_some());
    assert_eq!(c.peer_supported_features(), CEPH_FEATURES_ALL);
    assert_eq!(c.features(), CEPH_FEATURES_ALL & !(1 << 3));
    assert!(c.peer_global_seq() > 0);
    assert!(c.peer_auth_bad_method().is_none());
    let client_gseq = sim.client.peer_global_seq();
    let srv = sim.server().unwrap();
    assert_eq!(srv.peer_msgr2_features(), MSGR2_SUPPORTED);
    assert_eq!(srv.addr_seen_by_peer(), Some(&server_addr));
    assert_eq!(srv.peer_supported_features(), CEPH_FEATURES_ALL & !(1 << 3));
    assert!(srv.peer_global_seq() > 0);
    assert!(client_gseq > 0);
}

// ---- a real Ceph monitor ----

#[test]
fn real_ceph_monitor_v2_is_ok_and_v1_is_msgr1_only() {
    if !common::ceph::ceph_available("real_ceph_monitor_v2_is_ok_and_v1_is_msgr1_only") {
        return;
    }
    let v2 = common::ceph::free_port(&[]);
    let v1 = common::ceph::free_port(&[v2]);
    let mon = common::ceph::CephMon::start(
        "recon-mon",
        &[
            "--v2-port".into(),
            v2.to_string(),
            "--v1-port".into(),
            v1.to_string(),
        ],
    );
    let dir = mon.dir().to_path_buf();
    let v2_addr = mon.env("V2_ADDR").to_string();
    let v1_addr = mon.env("V1_ADDR").to_string();
    assert_eq!(v2_addr, format!("127.0.0.1:{v2}"));

    // Both at once: v2 answers as a monitor, v1 only speaks msgr1.
    let (code, arr) = run_json(&[&v2_addr, &v1_addr, "--timeout", "10"]);
    assert_eq!(code, EXIT_FAIL, "{arr:?}");
    let (r2, r1) = (&arr[0], &arr[1]);
    assert_eq!(s(r2, "status"), "OK", "{r2}");
    assert_eq!(s(r2, "entity_type"), "mon");
    assert_eq!(s(r2, "msgr2_features"), "0x1", "{r2}");
    let feats = u64::from_str_radix(s(r2, "ceph_features").trim_start_matches("0x"), 16).unwrap();
    assert_ne!(feats & (1 << 59), 0, "MSG_ADDR2 missing from {feats:#x}");
    assert_eq!(
        r2["addrs"],
        serde_json::json!([format!("v2:{v2_addr}/0"), format!("v1:{v1_addr}/0")]),
        "{r2}"
    );
    assert!(r2["global_seq"].as_u64().is_some(), "{r2}");
    assert!(s(r2, "seen_as").contains("127.0.0.1:"), "{r2}");
    assert_eq!(s(r1, "failure"), "msgr1_only", "{r1}");

    // --expect mon passes; --expect osd does not.
    let (code, r) = run_one(&v2_addr, &["--expect", "mon", "--timeout", "10"]);
    assert_eq!(code, EXIT_OK, "{r}");
    let (code, r) = run_one(&v2_addr, &["--expect", "osd", "--timeout", "10"]);
    assert_eq!(code, EXIT_FAIL);
    assert_eq!(s(&r, "failure"), "wrong_type", "{r}");

    // What an operator sees (shown with --nocapture).
    let mut table = Vec::new();
    recon::run_to(&args(&[&v2_addr, &v1_addr, "--expect", "mon"]), &mut table).unwrap();
    eprintln!("{}", String::from_utf8_lossy(&table));

    drop(mon);
    assert!(!dir.exists(), "{} not removed", dir.display());
    // Stopped: the port no longer answers.
    assert!(TcpStream::connect_timeout(&v2_addr.parse().unwrap(), Duration::from_secs(1)).is_err());
}
