//! msgr on the DPDK stack (net_af_packet on one end of a veth pair) talks to msgr on the posix stack
//! (Linux TCP, in a network namespace this test creates, on the other end) — the kernel is the TCP peer:
//!
//! - ARP resolves both ways (the namespace's neighbour table learns the DPDK side's MAC) and ICMP echo
//!   to the DPDK side's address is answered;
//! - the msgr2 handshake completes and 10,000 messages go each way (the posix server echoes every
//!   message), in order and intact;
//! - the same over net_tap with the roles swapped: a DPDK server (TX checksum offload on, when the tap
//!   port offers it) accepts a posix client's connection through the kernel and echoes 2,000 messages;
//! - the posix side's sockets fail now and then (injected failures: the kernel socket is closed under the
//!   session) and the lossless session survives them with replay;
//! - a real Ceph monitor (scripts/ceph-mon.sh, bound to the namespace's address) answers MMonGetMap from
//!   msgr on the DPDK stack: the msgr2 handshake and the MMonMap cross our userspace TCP. Skipped with a
//!   loud note without ceph-mon, unless MSGR_REQUIRE_CEPH=1 (ci/test.sh), where that fails.
//!
//! Needs root (network namespaces). The namespace and veth pair are the test's own and are deleted at the
//! end; traffic stays on them.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ceph::{ceph_available, CephMon};
use common::dpdk::{self, sh, Child, Netns};
use common::net::{proto_config, Collector};
use common::PayloadPool;
use msgr::msgs::{CephMessage, MMonGetMap, MMonMap};
use msgr::proto::message::MSG_MON_MAP;
use msgr::proto::types::{entity_type, AddrVec, EntityAddr};
use msgr::proto::Message;
use msgr::proto::Policy;
use msgr::stack::fault::{FaultConfig, FaultStack};
use msgr::stack::posix::PosixStack;
use msgr::stack::NetworkStack;
use msgr::{ConnectionRef, Dispatcher, Messenger, MessengerConfig};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const DPDK_IP: &str = "10.78.0.1";
const KERNEL_IP: &str = "10.78.0.2";
const PORT: u16 = 6800;
const NONCE: u32 = 778;
const SEED: u64 = 0x6b65726e656c;
const MAX_LEN: usize = 16 * 1024;
const COUNT: u64 = 10_000;

fn main() {
    if let Some(role) = dpdk::child_role() {
        let body: fn() = match role.as_str() {
            "posix_server" => posix_server,
            "dpdk_client" => dpdk_client,
            "dpdk_tap_server" => dpdk_tap_server,
            "posix_client" => posix_client,
            "dpdk_mon_client" => dpdk_mon_client,
            other => panic!("unknown role {other}"),
        };
        dpdk::run_child(&role, body);
    }
    dpdk::run_cases(&[
        (
            "dpdk_client_and_kernel_tcp_server_exchange_ten_thousand_each_way",
            dpdk_client_and_kernel_tcp_server_exchange_ten_thousand_each_way,
        ),
        (
            "dpdk_server_on_net_tap_serves_a_kernel_tcp_client",
            dpdk_server_on_net_tap_serves_a_kernel_tcp_client,
        ),
        (
            "real_ceph_mon_answers_mon_get_map_over_userspace_tcp",
            real_ceph_mon_answers_mon_get_map_over_userspace_tcp,
        ),
    ]);
}

/// A network namespace that receives net_tap's kernel interface. Deleted on drop (the tap goes away with
/// the DPDK process that owns it).
struct TapNs {
    name: String,
}

impl Drop for TapNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn json_of(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON from child ({e}): {s}"))
}

fn dpdk_client_and_kernel_tcp_server_exchange_ten_thousand_each_way() {
    let ns = Netns::create("dpdk", "mdk", KERNEL_IP);
    // The posix server runs inside the namespace: `ip netns exec` re-executes this binary there.
    let exe = std::env::current_exe().unwrap();
    let mut posix = Child::spawn_command(
        "posix",
        "posix_server",
        Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(exe),
        &[],
    );
    posix.expect("READY", Duration::from_secs(30));
    let args = format!(
        "ip={DPDK_IP}/24 --no-huge --no-pci -m 256 --vdev=net_af_packet0,iface={}",
        ns.dpdk_if
    );
    let mut client = Child::spawn("dpdk", "dpdk_client", &[("ARGS", args)]);
    let done = json_of(&client.expect("DONE", Duration::from_secs(600)));
    posix.send("report");
    let server = json_of(&posix.expect("REPORT", Duration::from_secs(30)));
    let neigh = ns.neighbour(DPDK_IP);
    posix.send("exit");
    client.send("exit");
    eprintln!("dpdk: {done}\nposix: {server}\nneighbour: {neigh}");

    assert!(
        neigh.contains(&ns.mac_of_dpdk_if()),
        "the kernel did not resolve {DPDK_IP} to the DPDK port: {neigh:?}"
    );
    assert_eq!(server["icmp_echo_replied"], true, "ICMP echo unanswered");
    assert_eq!(server["received"], COUNT, "messages at the kernel side");
    assert_eq!(server["corrupted"], 0);
    assert_eq!(server["in_order"], true);
    assert_eq!(done["echoes"], COUNT, "echoes back at the DPDK side");
    assert_eq!(done["in_order"], true);
    assert_eq!(done["corrupted"], 0);
    assert!(
        server["injected_failures"].as_u64().unwrap_or(0) > 0,
        "no kernel-side socket failure was injected"
    );
    assert!(
        done["msgr"]["reconnects"].as_u64().unwrap_or(0) > 0,
        "the DPDK side never had to reconnect"
    );
    assert_eq!(done["msgr"]["remote_resets"], 0);
    posix.finish(Duration::from_secs(30));
    client.finish(Duration::from_secs(30));
}

const TAP_DPDK_IP: &str = "10.78.1.1";
const TAP_KERNEL_IP: &str = "10.78.1.2";
const TAP_COUNT: u64 = 2_000;

fn dpdk_server_on_net_tap_serves_a_kernel_tcp_client() {
    let id = std::process::id();
    let ns = TapNs {
        name: format!("msgr-tap-{id}"),
    };
    sh(&["ip", "netns", "add", &ns.name]);
    let tap = format!("mdk{id}t");
    let args = format!(
        "ip={TAP_DPDK_IP}/24 link_wait_ms=1000 --no-huge --no-pci -m 256 --vdev=net_tap0,iface={tap}"
    );
    let mut server = Child::spawn("dpdk", "dpdk_tap_server", &[("ARGS", args)]);
    let offloads = server.expect("READY", Duration::from_secs(60));
    // The tap exists once the port started: move it into the namespace and give the kernel its address.
    sh(&["ip", "link", "set", &tap, "netns", &ns.name]);
    let exec = |args: &[&str]| {
        let mut v = vec!["ip", "netns", "exec", ns.name.as_str()];
        v.extend_from_slice(args);
        sh(&v);
    };
    exec(&["ip", "link", "set", "lo", "up"]);
    exec(&[
        "ip",
        "addr",
        "add",
        &format!("{TAP_KERNEL_IP}/24"),
        "dev",
        &tap,
    ]);
    exec(&["ip", "link", "set", &tap, "up"]);
    let exe = std::env::current_exe().unwrap();
    let mut client = Child::spawn_command(
        "posix",
        "posix_client",
        Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(exe),
        &[],
    );
    let done = json_of(&client.expect("DONE", Duration::from_secs(300)));
    server.send("report");
    let report = json_of(&server.expect("REPORT", Duration::from_secs(30)));
    client.send("exit");
    server.send("exit");
    eprintln!("tap offloads (hw_rss, tx_checksum): {offloads}\nposix client: {done}\ndpdk server: {report}");
    // net_tap offers IPv4/TCP TX checksum offload: our frames reached the kernel with the checksums the
    // PMD filled in.
    assert_eq!(
        json_of(&offloads)[1],
        true,
        "TX checksum offload not in use on net_tap"
    );
    assert_eq!(done["echoes"], TAP_COUNT);
    assert_eq!(done["in_order"], true);
    assert_eq!(done["corrupted"], 0);
    assert_eq!(report["received"], TAP_COUNT);
    assert_eq!(report["accepted"], 1);
    client.finish(Duration::from_secs(30));
    server.finish(Duration::from_secs(30));
}

const MON_V2_PORT: u16 = 3300;
const MON_V1_PORT: u16 = 6789;

fn real_ceph_mon_answers_mon_get_map_over_userspace_tcp() {
    if !ceph_available("real_ceph_mon_answers_mon_get_map_over_userspace_tcp") {
        return;
    }
    let ns = Netns::create("dpdk", "mdk", KERNEL_IP);
    // Declared after `ns`, so dropped (stopped) before the namespace goes.
    let mon = CephMon::start_with(
        "dpdk-mon",
        &[
            "--host".into(),
            KERNEL_IP.into(),
            "--v2-port".into(),
            MON_V2_PORT.to_string(),
            "--v1-port".into(),
            MON_V1_PORT.to_string(),
        ],
        &["ip", "netns", "exec", &ns.name],
    );
    let v2 = mon.sockaddr("V2_ADDR");
    assert_eq!(
        v2,
        SocketAddr::from((KERNEL_IP.parse::<Ipv4Addr>().unwrap(), MON_V2_PORT))
    );
    let args = format!(
        "ip={DPDK_IP}/24 --no-huge --no-pci -m 256 --vdev=net_af_packet0,iface={}",
        ns.dpdk_if
    );
    let mut client = Child::spawn(
        "dpdk",
        "dpdk_mon_client",
        &[("ARGS", args), ("MON", v2.to_string())],
    );
    let got = json_of(&client.expect("MONMAP", Duration::from_secs(120)));
    client.send("exit");
    eprintln!("dpdk mon client: {got}");
    assert_eq!(got["fsid"], mon.env("FSID"), "the monmap's fsid");
    assert_eq!(got["mons"], 1, "one monitor in the map");
    assert_eq!(
        got["mon_a"],
        format!("[v2:{v2}/0,v1:{KERNEL_IP}:{MON_V1_PORT}/0]"),
        "mon.a's addresses in the map"
    );
    assert_eq!(
        got["peer_type"],
        entity_type::MON,
        "SERVER_IDENT entity type"
    );
    client.finish(Duration::from_secs(30));
    drop(mon);
}

/// Root namespace: msgr on DPDK asks the real monitor at MON for its map, as Ceph's MonClient does.
fn dpdk_mon_client() {
    struct Maps(crossbeam_channel::Sender<(u8, Message)>);
    impl Dispatcher for Maps {
        fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) {
            let _ = self.0.send((conn.peer().entity_type.into(), msg));
        }
    }
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut m = dpdk::messenger(
        &dpdk::param("ARGS"),
        proto_config(entity_type::CLIENT, "client.admin"),
        Arc::new(Maps(tx)),
    );
    m.start().unwrap();
    let mon: SocketAddr = dpdk::param("MON").parse().unwrap();
    let conn = m
        .connect_to(
            entity_type::MON,
            &AddrVec(vec![EntityAddr::msgr2(mon, 0)]),
            Policy::lossy_client(),
        )
        .unwrap();
    conn.send(MMonGetMap.to_message()).unwrap();
    let end = Instant::now() + Duration::from_secs(90);
    let (peer_type, map) = loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((t, msg)) if msg.header.msg_type == MSG_MON_MAP => {
                break (
                    t,
                    MMonMap::from_message(&msg).expect("MMonMap decodes").monmap,
                )
            }
            Ok(_) => {}
            Err(_) => panic!("no MMonMap from the monitor at {mon} within 90 s"),
        }
    };
    let a = map.get("a").map(|a| a.public_addrs.to_string());
    dpdk::say(
        "MONMAP",
        json!({
            "fsid": map.fsid.to_string(),
            "mons": map.len(),
            "mon_a": a,
            "peer_type": peer_type,
            "dpdk": serde_json::to_value(m.stack().stats()).unwrap(),
        }),
    );
    while dpdk::command() != "exit" {}
    m.shutdown().unwrap();
}

/// Root namespace: a DPDK msgr server on net_tap that echoes.
fn dpdk_tap_server() {
    let pool = pool();
    let sink = Collector::with(pool, true, Duration::ZERO);
    let mut p = proto_config(entity_type::OSD, "osd.0");
    p.nonce = NONCE;
    p.default_policy = Policy::stateful_server();
    let mut m = dpdk::messenger(&dpdk::param("ARGS"), p, sink.clone());
    m.bind(&[format!("{TAP_DPDK_IP}:{PORT}").parse().unwrap()])
        .unwrap();
    m.start().unwrap();
    let (rss, cksum) = m.stack().offloads();
    dpdk::say("READY", json!([rss, cksum]));
    assert_eq!(dpdk::command(), "report");
    dpdk::say(
        "REPORT",
        json!({
            "received": sink.received.load(Ordering::Relaxed),
            "accepted": m.counters().accepted,
            "dpdk": serde_json::to_value(m.stack().stats()).unwrap(),
        }),
    );
    while dpdk::command() != "exit" {}
    m.shutdown().unwrap();
}

/// In the namespace: a posix msgr client sending TAP_COUNT messages to the DPDK server and collecting
/// the echoes.
fn posix_client() {
    let pool = pool();
    let sink = Collector::new(pool.clone());
    let mut cfg = MessengerConfig::new(proto_config(entity_type::CLIENT, "client.admin"));
    cfg.workers.threads = 1;
    let mut m = Messenger::new(PosixStack::new(), cfg, sink.clone());
    m.start().unwrap();
    let server: SocketAddr = format!("{TAP_DPDK_IP}:{PORT}").parse().unwrap();
    send_and_await_echoes(
        &m,
        &pool,
        &sink,
        server,
        TAP_COUNT,
        Duration::from_secs(200),
    );
    dpdk::say(
        "DONE",
        json!({
            "echoes": sink.received.load(Ordering::Relaxed),
            "corrupted": sink.corrupted.load(Ordering::Relaxed),
            "in_order": in_order(&sink, TAP_COUNT),
        }),
    );
    while dpdk::command() != "exit" {}
    m.shutdown().unwrap();
}

/// Sends `count` messages of seeded random sizes on one lossless connection to `server`, then waits up
/// to `wait` for `sink` to have collected their echoes.
fn send_and_await_echoes<N: NetworkStack>(
    m: &Messenger<N>,
    pool: &PayloadPool,
    sink: &Collector,
    server: SocketAddr,
    count: u64,
    wait: Duration,
) {
    let conn = m
        .connect_to(
            entity_type::OSD,
            &AddrVec(vec![EntityAddr::msgr2(server, NONCE)]),
            Policy::lossless_client(),
        )
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    for i in 0..count {
        conn.send(pool.message(i, rng.random_range(0..=MAX_LEN)))
            .unwrap();
    }
    let end = Instant::now() + wait;
    while sink.received.load(Ordering::Relaxed) < count && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn pool() -> Arc<PayloadPool> {
    Arc::new(PayloadPool::new(SEED, MAX_LEN + 1))
}

fn in_order(sink: &Collector, count: u64) -> bool {
    let by_conn = sink.by_conn.lock().unwrap();
    by_conn.len() == 1
        && by_conn
            .values()
            .all(|tids| *tids == (0..count).collect::<Vec<_>>())
}

/// In the namespace: a posix msgr server that echoes, with injected socket failures.
fn posix_server() {
    let pool = pool();
    let sink = Collector::with(pool.clone(), true, Duration::ZERO);
    let mut p = proto_config(entity_type::OSD, "osd.0");
    p.nonce = NONCE;
    p.default_policy = Policy::stateful_server();
    let mut cfg = MessengerConfig::new(p);
    cfg.workers.threads = 1;
    cfg.read_buffer = 4096; // more reads, more places for a failure to land
    let fault = FaultConfig {
        socket_failure_one_in: 1500,
        read_delay: Duration::ZERO,
        seed: SEED,
    };
    let mut m = Messenger::new(FaultStack::new(PosixStack::new(), fault), cfg, sink.clone());
    m.bind(&[format!("{KERNEL_IP}:{PORT}").parse().unwrap()])
        .unwrap();
    m.start().unwrap();
    dpdk::say("READY", KERNEL_IP);
    let icmp = icmp_echo(DPDK_IP.parse().unwrap(), Duration::from_secs(30));
    assert_eq!(dpdk::command(), "report");
    dpdk::say(
        "REPORT",
        json!({
            "received": sink.received.load(Ordering::Relaxed),
            "corrupted": sink.corrupted.load(Ordering::Relaxed),
            "in_order": in_order(&sink, COUNT),
            "icmp_echo_replied": icmp,
            "injected_failures": m.stack().counters().injected(),
            "msgr": serde_json::to_value(m.counters()).unwrap(),
        }),
    );
    while dpdk::command() != "exit" {}
    m.shutdown().unwrap();
}

/// Root namespace: the DPDK client sends COUNT messages and collects the echoes.
fn dpdk_client() {
    let pool = pool();
    let sink = Collector::new(pool.clone());
    let mut m = dpdk::messenger(
        &dpdk::param("ARGS"),
        proto_config(entity_type::CLIENT, "client.admin"),
        sink.clone(),
    );
    m.start().unwrap();
    let server: SocketAddr = format!("{KERNEL_IP}:{PORT}").parse().unwrap();
    send_and_await_echoes(&m, &pool, &sink, server, COUNT, Duration::from_secs(500));
    let stack = m.stack();
    dpdk::say(
        "DONE",
        json!({
            "echoes": sink.received.load(Ordering::Relaxed),
            "corrupted": sink.corrupted.load(Ordering::Relaxed),
            "in_order": in_order(&sink, COUNT),
            "msgr": serde_json::to_value(m.counters()).unwrap(),
            "dpdk": serde_json::to_value(stack.stats()).unwrap(),
            "driver": stack.driver(),
        }),
    );
    while dpdk::command() != "exit" {}
    m.shutdown().unwrap();
}

/// Send ICMP echo requests to `dst` from a raw socket until one is answered or `timeout`.
fn icmp_echo(dst: Ipv4Addr, timeout: Duration) -> bool {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let Ok(sock) = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)) else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    let ident: u16 = 0x6d73;
    let end = Instant::now() + timeout;
    let mut seq: u16 = 0;
    while Instant::now() < end {
        seq = seq.wrapping_add(1);
        let mut pkt = vec![8u8, 0, 0, 0];
        pkt.extend_from_slice(&ident.to_be_bytes());
        pkt.extend_from_slice(&seq.to_be_bytes());
        pkt.extend_from_slice(b"msgr dpdk icmp echo");
        let mut sum: u32 = pkt
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        pkt[2..4].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        let to = SockAddr::from(SocketAddr::new(dst.into(), 0));
        if sock.send_to(&pkt, &to).is_err() {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let mut buf = [0u8; 1500];
        while let Ok(n) = std::io::Read::read(&mut &sock, &mut buf) {
            let bytes = &buf[..n];
            let ihl = usize::from(bytes.first().copied().unwrap_or(0) & 0x0f) * 4;
            let icmp = bytes.get(ihl..).unwrap_or(&[]);
            if icmp.len() >= 8
                && icmp[0] == 0
                && icmp[4..6] == ident.to_be_bytes()
                && bytes.get(12..16) == Some(&dst.octets()[..])
            {
                return true;
            }
        }
    }
    false
}
