//! msgr against a real Ceph monitor (Ceph 16, started with scripts/ceph-mon.sh), both ways:
//! - as a client (what Ceph's MonClient does): handshake, MMonGetMap + MMonSubscribe("monmap"), the
//!   MMonMap the monitor answers with (its fsid and addresses are what the script configured), and a
//!   KEEPALIVE2 round trip;
//! - as a server the real monitor dials: our messenger plays mon.b (entity type mon, nonce 0, the
//!   address the monmap lists for b); a monitor started with `--peer-mon b=PORT` completes the handshake
//!   and sends its first MMonProbe, which we decode.
//!
//! Skipped with a loud note when ceph-mon is missing, unless MSGR_REQUIRE_CEPH=1. Every wait is bounded;
//! on failure the monitor's log tail is printed (by the [`CephMon`] guard).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use msgr::msgs::mon::ProbeOp;
use msgr::msgs::{CephMessage, MMonGetMap, MMonMap, MMonProbe, MMonSubscribe, Uuid};
use msgr::proto::message::{MSG_MON_MAP, MSG_MON_PROBE};
use msgr::proto::types::{entity_type, AddrVec, EntityAddr};
use msgr::proto::{Error, Message, Policy};
use msgr::{ConnectionRef, Dispatcher, PeerInfo};

use common::ceph::{ceph_available, free_port, CephMon};
use common::net::{messenger, no_faults, proto_config};

/// Bound on every wait for the monitor.
const TIMEOUT: Duration = Duration::from_secs(30);

/// What the dispatcher saw, in order.
#[derive(Debug)]
enum Seen {
    Connect(PeerInfo),
    Accept(PeerInfo),
    Message(PeerInfo, Message),
    Reset(String),
    RemoteReset,
    KeepaliveAck(Duration),
}

/// Forwards every callback to a channel, with the time it happened.
struct Forward(Sender<(Instant, Seen)>);

impl Forward {
    fn tell(&self, s: Seen) {
        let _ = self.0.send((Instant::now(), s));
    }
}

impl Dispatcher for Forward {
    fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) {
        self.tell(Seen::Message(conn.peer(), msg));
    }
    fn ms_handle_connect(&self, conn: &ConnectionRef) {
        self.tell(Seen::Connect(conn.peer()));
    }
    fn ms_handle_accept(&self, conn: &ConnectionRef) {
        self.tell(Seen::Accept(conn.peer()));
    }
    fn ms_handle_reset(&self, _conn: &ConnectionRef, why: &Error) {
        self.tell(Seen::Reset(why.to_string()));
    }
    fn ms_handle_remote_reset(&self, _conn: &ConnectionRef) {
        self.tell(Seen::RemoteReset);
    }
    fn ms_handle_keepalive_ack(&self, _conn: &ConnectionRef, rtt: Duration) {
        self.tell(Seen::KeepaliveAck(rtt));
    }
}

fn forwarder() -> (Arc<Forward>, Receiver<(Instant, Seen)>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    (Arc::new(Forward(tx)), rx)
}

/// Waits until `pick` accepts an event, at most until `deadline`; returns what `pick` made of it and
/// when it happened. Panics listing everything seen.
fn wait_for<T>(
    rx: &Receiver<(Instant, Seen)>,
    deadline: Instant,
    what: &str,
    mut pick: impl FnMut(&Seen) -> Option<T>,
) -> (T, Instant) {
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((at, ev)) => {
                if let Some(v) = pick(&ev) {
                    return (v, at);
                }
                seen.push(ev);
            }
            Err(_) => panic!(
                "timed out waiting for {what}; the dispatcher saw {} events: {}",
                seen.len(),
                seen.iter().map(short).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

fn short(s: &Seen) -> String {
    match s {
        Seen::Connect(p) => format!("connect({})", p.addrs),
        Seen::Accept(p) => format!("accept({} type {})", p.addrs, p.entity_type),
        Seen::Message(_, m) => format!("message(type {})", m.header.msg_type),
        Seen::Reset(why) => format!("reset({why})"),
        Seen::RemoteReset => "remote_reset".into(),
        Seen::KeepaliveAck(rtt) => format!("keepalive_ack({rtt:?})"),
    }
}

/// `[v2:V2_ADDR/0,v1:V1_ADDR/0]`: what ceph-mon.sh puts in the monmap for mon.a.
fn mon_a_addrs(mon: &CephMon) -> AddrVec {
    AddrVec(vec![
        EntityAddr::msgr2(mon.sockaddr("V2_ADDR"), 0),
        EntityAddr::legacy(mon.sockaddr("V1_ADDR"), 0),
    ])
}

fn parse_fsid(mon: &CephMon) -> Uuid {
    let s = mon.env("FSID");
    s.parse()
        .unwrap_or_else(|e| panic!("FSID={s} is not a uuid: {e}"))
}

#[test]
fn client_gets_monmap_and_keepalive_from_real_monitor() {
    if !ceph_available("client_gets_monmap_and_keepalive_from_real_monitor") {
        return;
    }
    let t0 = Instant::now();
    let v2 = free_port(&[]);
    let v1 = free_port(&[v2]);
    let mon = CephMon::start(
        "interop-client",
        &[
            "--v2-port".into(),
            v2.to_string(),
            "--v1-port".into(),
            v1.to_string(),
        ],
    );
    let dir = mon.dir().to_path_buf();
    let fsid = parse_fsid(&mon);
    let want_addrs = mon_a_addrs(&mon);
    assert_eq!(
        mon.env("MON_ADDRS"),
        want_addrs.to_string().replace("/0", "")
    );
    let started = Instant::now();

    let (dispatcher, rx) = forwarder();
    let mut client = messenger(
        proto_config(entity_type::CLIENT, "client.admin"),
        1,
        no_faults(),
        dispatcher,
    );
    client.start().expect("start the client messenger");
    let target = AddrVec(vec![EntityAddr::msgr2(mon.sockaddr("V2_ADDR"), 0)]);
    let conn = client
        .connect_to(entity_type::MON, &target, Policy::lossy_client())
        .expect("connect_to the monitor");
    // Queued before the handshake ends, as MonClient does; sent once the session is ready.
    conn.send(MMonGetMap.to_message()).expect("send MMonGetMap");
    conn.send(MMonSubscribe::default().want("monmap", 0, 0).to_message())
        .expect("send MMonSubscribe");

    let deadline = Instant::now() + TIMEOUT;
    let (peer, connected_at) =
        wait_for(
            &rx,
            deadline,
            "the handshake (ms_handle_connect)",
            |s| match s {
                Seen::Connect(p) => Some(p.clone()),
                Seen::Reset(why) => panic!("session reset before the handshake finished: {why}"),
                _ => None,
            },
        );
    let handshake = connected_at - started;
    assert_eq!(peer.entity_type, entity_type::MON, "{peer:?}");
    assert_eq!(peer.addrs, want_addrs, "SERVER_IDENT addrs");

    let (monmap, map_at) = wait_for(&rx, deadline, "MMonMap (type 4)", |s| match s {
        Seen::Message(_, m) if m.header.msg_type == MSG_MON_MAP => Some(
            MMonMap::from_message(m)
                .unwrap_or_else(|e| panic!("MMonMap does not decode: {e}"))
                .monmap,
        ),
        Seen::Reset(why) => panic!("session reset before MMonMap: {why}"),
        _ => None,
    });
    let got_map = map_at - started;
    assert_eq!(monmap.fsid, fsid, "monmap fsid\n{monmap}");
    assert_eq!(monmap.len(), 1, "one monitor\n{monmap}");
    let a = monmap
        .get("a")
        .unwrap_or_else(|| panic!("no mon.a in\n{monmap}"));
    assert_eq!(a.public_addrs, want_addrs, "mon.a's addresses\n{monmap}");
    assert_eq!(monmap.rank("a"), Some(0));

    conn.send_keepalive().expect("send KEEPALIVE2");
    let (rtt, _) = wait_for(&rx, deadline, "KEEPALIVE2_ACK", |s| match s {
        Seen::KeepaliveAck(rtt) => Some(*rtt),
        Seen::Reset(why) => panic!("session reset before KEEPALIVE2_ACK: {why}"),
        _ => None,
    });
    assert!(rtt < TIMEOUT, "{rtt:?}");
    assert_eq!(conn.peer().last_keepalive_rtt, Some(rtt));
    assert!(!conn.is_closed());

    conn.mark_down();
    client.shutdown().expect("shut down the client messenger");
    let start_time = mon.start_time;
    drop(mon);
    assert!(!dir.exists(), "{} not removed", dir.display());
    eprintln!(
        "client interop: monitor start {start_time:?}, handshake {handshake:?}, MMonMap after \
         {got_map:?}, keepalive rtt {rtt:?}, total {:?}",
        t0.elapsed()
    );
}

#[test]
fn real_monitor_dials_msgr_server_and_probes_it() {
    if !ceph_available("real_monitor_dials_msgr_server_and_probes_it") {
        return;
    }
    let t0 = Instant::now();
    // Our mon.b: entity type mon, nonce 0, on a port chosen by the kernel before the monmap is written,
    // so its SERVER_IDENT addrs are exactly the monmap's [v2:127.0.0.1:PORTB/0].
    let (dispatcher, rx) = forwarder();
    let mut p = proto_config(entity_type::MON, "mon.b");
    p.nonce = 0;
    // Ceph's monitor: stateless_server by default, lossless_peer_reuse for other monitors.
    p.default_policy = Policy::stateless_server();
    p.accept_policies = vec![(entity_type::MON, Policy::lossless_peer_reuse())];
    let mut server = messenger(p, 1, no_faults(), dispatcher);
    server
        .bind(&["127.0.0.1:0".parse().unwrap()])
        .expect("bind mon.b");
    server.start().expect("start mon.b");
    let b_addr = server
        .my_addrs()
        .msgr2()
        .cloned()
        .expect("mon.b has a v2 address");
    let port_b = b_addr.port();
    assert_eq!(b_addr.nonce, 0);

    let v2 = free_port(&[port_b]);
    let v1 = free_port(&[port_b, v2]);
    // mon.a dials us while the script is still waiting for it: time from the launch.
    let launched = Instant::now();
    let mon = CephMon::start(
        "interop-server",
        &[
            "--v2-port".into(),
            v2.to_string(),
            "--v1-port".into(),
            v1.to_string(),
            "--peer-mon".into(),
            format!("b={port_b}"),
            "--debug-ms".into(),
            "20".into(),
        ],
    );
    let dir = mon.dir().to_path_buf();
    let fsid = parse_fsid(&mon);
    assert_eq!(mon.env("PEER_b_V2_ADDR"), format!("127.0.0.1:{port_b}"));
    assert_eq!(
        AddrVec(vec![EntityAddr::msgr2(mon.sockaddr("PEER_b_V2_ADDR"), 0)]),
        *server.my_addrs(),
        "our addrs must be what the monmap lists for mon.b"
    );

    let deadline = Instant::now() + TIMEOUT;
    let (peer, accepted_at) = wait_for(
        &rx,
        deadline,
        "mon.a's handshake (ms_handle_accept)",
        |s| match s {
            Seen::Accept(p) => Some(p.clone()),
            _ => None,
        },
    );
    let handshake = accepted_at - launched;
    assert_eq!(peer.entity_type, entity_type::MON, "{peer:?}");
    assert_eq!(peer.addrs, mon_a_addrs(&mon), "mon.a's CLIENT_IDENT addrs");

    let ((from, probe), probe_at) = wait_for(&rx, deadline, "MMonProbe (type 67)", |s| match s {
        Seen::Message(from, m) if m.header.msg_type == MSG_MON_PROBE => Some((
            from.clone(),
            MMonProbe::from_message(m).unwrap_or_else(|e| panic!("MMonProbe does not decode: {e}")),
        )),
        _ => None,
    });
    let got_probe = probe_at - launched;
    assert_eq!(from.entity_type, entity_type::MON);
    assert_eq!(probe.fsid, fsid, "{probe:?}");
    assert_eq!(probe.name, "a", "{probe:?}");
    assert_eq!(probe.op, ProbeOp::Probe, "{probe:?}");
    assert!(probe.quorum.is_empty(), "{probe:?}");
    assert!(
        probe.monmap_bl.is_empty(),
        "a probe carries no map: {probe:?}"
    );
    assert!(mon.is_running(), "mon.a exited");

    let start_time = mon.start_time;
    drop(mon);
    server.shutdown().expect("shut down mon.b");
    assert!(!dir.exists(), "{} not removed", dir.display());
    eprintln!(
        "server interop: monitor start {start_time:?}; from its launch: handshake done after \
         {handshake:?}, MMonProbe after {got_probe:?}; total {:?}",
        t0.elapsed()
    );
}

/// A tmpfs mounted on a fresh directory for one test; unmounted and removed on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size_mib` MiB, or says why it could not (no permission to mount, say).
    fn mount(tag: &str, size_mib: u32) -> Result<Tmpfs, String> {
        let dir = std::env::temp_dir().join(format!("msgr-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}M"), "tmpfs"])
            .arg(&dir)
            .output()
            .map_err(|e| format!("run mount: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir(&dir);
            return Err(format!(
                "mount tmpfs: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs(dir))
    }

    /// (size, available) in KiB, as df reports them.
    fn usage_kib(&self) -> (u64, u64) {
        let out = std::process::Command::new("df")
            .args(["-k", "--output=size,avail"])
            .arg(&self.0)
            .output()
            .expect("run df");
        let text = String::from_utf8_lossy(&out.stdout);
        let nums: Vec<u64> = text
            .lines()
            .nth(1)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        assert_eq!(nums.len(), 2, "df output: {text}");
        (nums[0], nums[1])
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// CI machines share a disk that is sometimes more than 99% full. ceph-mon reads the free space of its
/// data directory as a whole percentage and refuses to start at or below `mon_data_avail_crit`; the
/// scripts set it so a throwaway monitor starts at 0% (a CI run once failed every Ceph test this way).
#[test]
fn monitor_starts_on_a_disk_with_under_one_percent_free() {
    if !ceph_available("monitor_starts_on_a_disk_with_under_one_percent_free") {
        return;
    }
    let fs = match Tmpfs::mount("fulldisk", 256) {
        Ok(fs) => fs,
        Err(e) if std::env::var("MSGR_REQUIRE_CEPH").as_deref() != Ok("1") => {
            eprintln!(
                "\n!!!!!!!! NOTE: {e}: SKIPPING the nearly-full-disk monitor test !!!!!!!!\n"
            );
            return;
        }
        Err(e) => panic!("MSGR_REQUIRE_CEPH=1 but {e}"),
    };
    // Leave 2 MiB of 256 (0.8%): ceph-mon's whole-percent reading is 0.
    let status = std::process::Command::new("fallocate")
        .args(["-l", "254M"])
        .arg(fs.0.join("fill"))
        .status()
        .expect("run fallocate");
    assert!(status.success(), "fallocate failed");
    let (size, avail) = fs.usage_kib();
    assert!(
        avail * 100 < size,
        "{avail} KiB free of {size}: not under 1%"
    );

    let v2 = free_port(&[]);
    let v1 = free_port(&[v2]);
    let args = [
        "--v2-port".to_string(),
        v2.to_string(),
        "--v1-port".to_string(),
        v1.to_string(),
    ];
    let mon = CephMon::start_in(&fs.0, "fulldisk-mon", &args, &[]);
    assert!(mon.is_running(), "mon.a exited after start");
    let (_, avail) = fs.usage_kib();
    assert!(avail > 0, "the monitor filled the disk");
    drop(mon);
}
