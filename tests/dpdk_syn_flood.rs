//! A SYN flood against a msgr server on the DPDK stack (issue 13, defect 6): the server (net_af_packet on
//! one end of a veth pair) gets spoofed SYNs written by a raw packet socket on the other end, inside a
//! network namespace this test creates, and a real client (Linux TCP, posix msgr, same namespace) must
//! still connect and be served:
//!
//! - 200 SYNs from forged sources that exist nowhere (their SYN-ACKs can never be answered), then 60 from
//!   impossible sources (10 each: 255.255.255.255, the subnet broadcast, multicast, the server's own
//!   address, 0.0.0.0/8, 127.0.0.0/8), which classify must drop and count by reason;
//! - the forged SYNs keep coming (about 2,000 per second) while the client connects and 200 messages go
//!   each way;
//! - the server runs with `listen_pool=4 listen_pool_max=64 syn_timeout_ms=2000`, so the flood fills the
//!   pool to its cap and the oldest half-open connections must give their sockets to new SYNs (before the
//!   pool grew and evicted, 16 forged SYNs held every listening socket for `tcp_timeout`, 30 s, and the
//!   client was refused for as long as the flood lasted);
//! - once the flood stops, the half-open connections left expire after `syn_timeout` and the pool shrinks
//!   back to `listen_pool`.
//!
//! Needs root (network namespaces, AF_PACKET). The namespace and veth pair are the test's own and are
//! deleted at the end; traffic stays on them.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dpdk::{self, Child, Netns};
use common::net::{proto_config, Collector};
use common::PayloadPool;
use msgr::proto::types::{entity_type, AddrVec, EntityAddr};
use msgr::proto::Policy;
use msgr::stack::posix::PosixStack;
use msgr::{Messenger, MessengerConfig};
use serde_json::{json, Value};

const DPDK_IP: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 1);
const KERNEL_IP: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 2);
const PORT: u16 = 6800;
const NONCE: u32 = 7913;
const SEED: u64 = 0x73796e;
const MAX_LEN: usize = 4096;
const COUNT: u64 = 200;
const SPOOFED: usize = 200;
const PER_IMPOSSIBLE_KIND: usize = 10;
const POOL: usize = 4;
const POOL_MAX: usize = 64;
const SYN_TIMEOUT_MS: u64 = 2000;
/// Forged SYNs per 10 ms while the client connects.
const FLOOD_PER_TICK: usize = 20;

fn main() {
    if let Some(role) = dpdk::child_role() {
        let body: fn() = match role.as_str() {
            "dpdk_server" => dpdk_server,
            "flooder" => flooder,
            "posix_client" => posix_client,
            other => panic!("unknown role {other}"),
        };
        dpdk::run_child(&role, body);
    }
    dpdk::run_cases(&[(
        "real_client_is_served_through_a_spoofed_syn_flood",
        real_client_is_served_through_a_spoofed_syn_flood,
    )]);
}

/// Spawn this test binary in role `role` inside `ns`.
fn spawn_in(ns: &Netns, role: &str, env: &[(&str, String)]) -> Child {
    let exe = std::env::current_exe().unwrap();
    Child::spawn_command(
        role,
        role,
        Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(exe),
        env,
    )
}

fn json_of(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON from child ({e}): {s}"))
}

fn real_client_is_served_through_a_spoofed_syn_flood() {
    let ns = Netns::create("syn", "msy", &KERNEL_IP.to_string());
    let dpdk_mac = ns.mac_of_dpdk_if();
    let args = format!(
        "ip={DPDK_IP}/24 listen_pool={POOL} listen_pool_max={POOL_MAX} syn_timeout_ms={SYN_TIMEOUT_MS} \
         --no-huge --no-pci -m 256 \
         --vdev=net_af_packet0,iface={}",
        ns.dpdk_if
    );
    let mut server = Child::spawn("dpdk", "dpdk_server", &[("ARGS", args)]);
    server.expect("READY", Duration::from_secs(60));
    let mut flooder = spawn_in(
        &ns,
        "flooder",
        &[("IFACE", ns.kernel_if.clone()), ("DST_MAC", dpdk_mac)],
    );
    let burst = json_of(&flooder.expect("SENT", Duration::from_secs(30)));
    assert_eq!(burst["spoofed"], SPOOFED as u64, "forged SYNs written");
    // Let the server take the burst in before the client's SYN joins the (continuing) flood.
    let end = Instant::now() + Duration::from_secs(10);
    let before = loop {
        server.send("report");
        let r = json_of(&server.expect("REPORT", Duration::from_secs(30)));
        let seen = r["dpdk"]["listen_pool_peak"].as_u64().unwrap_or(0);
        if seen >= POOL_MAX as u64 || Instant::now() >= end {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The flood goes on: let the pool churn at its cap for a while before the client comes.
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let mut client = spawn_in(&ns, "posix_client", &[]);
    let done = json_of(&client.expect("DONE", Duration::from_secs(60)));
    let served_in = started.elapsed();
    flooder.send("stop");
    let flood = json_of(&flooder.expect("STOPPED", Duration::from_secs(30)));
    server.send("report");
    let after = json_of(&server.expect("REPORT", Duration::from_secs(30)));
    // Flood over: the half-open connections expire and the pool shrinks back to its target. Its size is
    // POOL + grown - shrunk - accepted (an established connection leaves the pool).
    let end = Instant::now() + Duration::from_secs(15);
    let settled = loop {
        server.send("report");
        let r = json_of(&server.expect("REPORT", Duration::from_secs(30)));
        let d = &r["dpdk"];
        let n = |k: &str| d[k].as_u64().unwrap_or(0);
        let pool_len = (POOL as u64 + n("listen_pool_grown"))
            .saturating_sub(n("listen_pool_shrunk") + r["accepted"].as_u64().unwrap_or(0));
        if (n("syn_received_timeouts") > 0 && pool_len == POOL as u64) || Instant::now() >= end {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    client.send("exit");
    server.send("exit");
    eprintln!(
        "after the burst: {before}\nflood: {flood}\nclient (served in {served_in:?}): {done}\n\
         server: {after}\nsettled: {settled}"
    );

    assert_eq!(done["echoes"], COUNT, "echoes at the client");
    assert_eq!(done["corrupted"], 0);
    assert_eq!(after["received"], COUNT, "messages at the server");
    assert!(
        flood["spoofed"].as_u64().unwrap_or(0) > SPOOFED as u64,
        "the flood went on while the client connected: {flood}"
    );
    let d = &after["dpdk"];
    for kind in [
        "drop_src_broadcast",
        "drop_src_multicast",
        "drop_src_ours",
        "drop_src_this_network",
        "drop_src_loopback",
    ] {
        let expected = if kind == "drop_src_broadcast" {
            2 * PER_IMPOSSIBLE_KIND
        } else {
            PER_IMPOSSIBLE_KIND
        };
        assert_eq!(d[kind], expected as u64, "{kind}: {d}");
    }
    assert_eq!(
        d["listen_pool_peak"], POOL_MAX as u64,
        "the pool grew to its cap and no further"
    );
    assert!(
        d["listen_pool_grown"].as_u64().unwrap_or(0) >= (POOL_MAX - POOL) as u64,
        "{d}"
    );
    let evicted = |r: &Value| r["dpdk"]["syn_received_evicted"].as_u64().unwrap_or(0);
    assert!(
        evicted(&after) > evicted(&before),
        "at the cap, new SYNs took the oldest half-open sockets, during the client's connect too: \
         {before} then {after}"
    );
    let s = &settled["dpdk"];
    assert!(
        s["syn_received_timeouts"].as_u64().unwrap_or(0) > 0,
        "half-open connections expired after syn_timeout: {s}"
    );
    assert_eq!(
        s["listen_pool_grown"].as_u64().unwrap_or(0),
        s["listen_pool_shrunk"].as_u64().unwrap_or(0) + settled["accepted"].as_u64().unwrap_or(0),
        "the pool shrank back to listen_pool={POOL}: {s}"
    );
    client.finish(Duration::from_secs(30));
    server.finish(Duration::from_secs(30));
    flooder.finish(Duration::from_secs(30));
}

fn pool() -> Arc<PayloadPool> {
    Arc::new(PayloadPool::new(SEED, MAX_LEN + 1))
}

/// Root namespace: a DPDK msgr server that echoes.
fn dpdk_server() {
    let sink = Collector::with(pool(), true, Duration::ZERO);
    let mut p = proto_config(entity_type::OSD, "osd.0");
    p.nonce = NONCE;
    p.default_policy = Policy::stateful_server();
    let mut m = dpdk::messenger(&dpdk::param("ARGS"), p, sink.clone());
    m.bind(&[SocketAddr::from((DPDK_IP, PORT))]).unwrap();
    m.start().unwrap();
    dpdk::say("READY", "");
    while dpdk::command() == "report" {
        dpdk::say(
            "REPORT",
            json!({
                "received": sink.received.load(Ordering::Relaxed),
                "accepted": m.counters().accepted,
                "dpdk": serde_json::to_value(m.stack().stats()).unwrap(),
            }),
        );
    }
    m.shutdown().unwrap();
}

/// In the namespace: a posix msgr client sends COUNT messages to the DPDK server and collects the echoes.
fn posix_client() {
    let pool = pool();
    let sink = Collector::new(pool.clone());
    let mut cfg = MessengerConfig::new(proto_config(entity_type::CLIENT, "client.admin"));
    cfg.workers.threads = 1;
    let mut m = Messenger::new(PosixStack::new(), cfg, sink.clone());
    m.start().unwrap();
    let conn = m
        .connect_to(
            entity_type::OSD,
            &AddrVec(vec![EntityAddr::msgr2(
                SocketAddr::from((DPDK_IP, PORT)),
                NONCE,
            )]),
            Policy::lossless_client(),
        )
        .unwrap();
    for i in 0..COUNT {
        conn.send(pool.message(i, (i as usize * 37) % MAX_LEN))
            .unwrap();
    }
    let end = Instant::now() + Duration::from_secs(30);
    while sink.received.load(Ordering::Relaxed) < COUNT && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    dpdk::say(
        "DONE",
        json!({
            "echoes": sink.received.load(Ordering::Relaxed),
            "corrupted": sink.corrupted.load(Ordering::Relaxed),
            "connect_failures": sink.connect_failures.load(Ordering::Relaxed),
            "msgr": serde_json::to_value(m.counters()).unwrap(),
        }),
    );
    while dpdk::command() != "exit" {}
    m.shutdown().unwrap();
}

/// In the namespace: write SYNs to the DPDK side's MAC with a raw packet socket on IFACE — SPOOFED from
/// forged sources, then PER_IMPOSSIBLE_KIND from each impossible source — say SENT, keep writing forged
/// SYNs until told to stop, say STOPPED with the total.
fn flooder() {
    let iface = dpdk::param("IFACE");
    let dst_mac = parse_mac(&dpdk::param("DST_MAC"));
    let src_mac = parse_mac(
        std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))
            .expect("own MAC")
            .trim(),
    );
    let sock = raw::PacketSocket::open(&iface, dst_mac);
    let mut rng_state = SEED;
    let mut next = move || {
        // xorshift64: reproducible forged sources and ports.
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    let mut forged = move || {
        let r = next();
        // 10.79.0.3 ..= 10.79.0.254: on the link, so the server ARPs for them and nobody answers.
        let host = 3 + (r % 252) as u8;
        let src = Ipv4Addr::new(10, 79, 0, host);
        let sport = 1024 + ((r >> 16) % 60000) as u16;
        (src, sport, (r >> 32) as u32)
    };
    let mut spoofed = 0u64;
    for _ in 0..SPOOFED {
        let (src, sport, seq) = forged();
        sock.send(&syn_frame(src_mac, dst_mac, src, sport, seq));
        spoofed += 1;
    }
    let impossible = [
        Ipv4Addr::BROADCAST,
        Ipv4Addr::new(10, 79, 0, 255),
        Ipv4Addr::new(224, 0, 0, 1),
        DPDK_IP,
        Ipv4Addr::new(0, 1, 2, 3),
        Ipv4Addr::new(127, 0, 0, 1),
    ];
    for src in impossible {
        for i in 0..PER_IMPOSSIBLE_KIND {
            sock.send(&syn_frame(src_mac, dst_mac, src, 2000 + i as u16, 1));
        }
    }
    dpdk::say("SENT", json!({ "spoofed": spoofed }));
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    std::thread::spawn(move || {
        while dpdk::command() != "stop" {}
        let _ = stop_tx.send(());
    });
    let end = Instant::now() + Duration::from_secs(120);
    while stop_rx.recv_timeout(Duration::from_millis(10)).is_err() && Instant::now() < end {
        for _ in 0..FLOOD_PER_TICK {
            let (src, sport, seq) = forged();
            sock.send(&syn_frame(src_mac, dst_mac, src, sport, seq));
            spoofed += 1;
        }
    }
    dpdk::say("STOPPED", json!({ "spoofed": spoofed }));
}

fn parse_mac(s: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (b, part) in mac.iter_mut().zip(s.split(':')) {
        *b = u8::from_str_radix(part, 16).expect("MAC");
    }
    mac
}

/// An Ethernet/IPv4/TCP SYN from `src`:`sport` to the server's port, checksums filled in.
fn syn_frame(src_mac: [u8; 6], dst_mac: [u8; 6], src: Ipv4Addr, sport: u16, seq: u32) -> Vec<u8> {
    let mut f = Vec::with_capacity(58);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 44, 0, 1, 0x40, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&DPDK_IP.octets());
    let c = !sum16(0, &ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut tcp = Vec::with_capacity(24);
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&PORT.to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0]);
    // Data offset 6 words (one MSS option), SYN, window 64240.
    tcp.extend_from_slice(&[0x60, 0x02, 0xfa, 0xf0, 0, 0, 0, 0]);
    tcp.extend_from_slice(&[2, 4, 0x05, 0xb4]);
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&DPDK_IP.octets());
    pseudo.extend_from_slice(&[0, 6, 0, tcp.len() as u8]);
    let c = !sum16(sum16(0, &pseudo), &tcp);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&tcp);
    f
}

/// Ones' complement sum of 16-bit big-endian words (RFC 1071), folded.
fn sum16(initial: u16, data: &[u8]) -> u16 {
    let mut sum = u32::from(initial);
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The test's raw packet socket (AF_PACKET): the library has no use for one, so it lives here.
mod raw {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    pub struct PacketSocket {
        fd: OwnedFd,
        addr: libc::sockaddr_ll,
    }

    impl PacketSocket {
        /// A send-only packet socket on `iface`, frames addressed to `dst_mac`.
        pub fn open(iface: &str, dst_mac: [u8; 6]) -> PacketSocket {
            let name = CString::new(iface).expect("interface name");
            // SAFETY: plain syscalls on a NUL-terminated name; the returned descriptor is checked and
            // owned from here on.
            let (fd, ifindex) = unsafe {
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
                (fd, libc::if_nametoindex(name.as_ptr()))
            };
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: `fd` is a fresh descriptor nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            assert!(ifindex > 0, "no interface {iface}");
            // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&dst_mac);
            PacketSocket { fd, addr }
        }

        /// Write one whole Ethernet frame.
        pub fn send(&self, frame: &[u8]) {
            // SAFETY: `frame` and `addr` are valid for the lengths given for the whole call.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&self.addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            assert_eq!(
                n,
                frame.len() as isize,
                "sendto: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}
