//! `msgr bench --stack dpdk` end to end (feature `dpdk`), through the `msgr` binary:
//!
//! - over memif (a `msgr bench serve --stack dpdk` child on the other end): latency at 64 B and 4 KiB and
//!   throughput at 64 KiB, every count as asked, non-zero latencies, the header naming stack and link,
//!   and the child gone afterwards (its memif socket closed);
//! - over tap (net_tap against a kernel-TCP server in the same process; needs root): the same figures,
//!   and the tap interface gone afterwards;
//! - a bench killed mid-run (SIGKILL, no clean-up of its own) does not leave its server child running;
//! - options that do not apply to the dpdk stack are usage errors (exit 2);
//! - `msgr serve --stack dpdk` answers `msgr ping --stack dpdk` and `msgr recon --stack dpdk` over memif
//!   (each its own process: the EAL exists once per process).
//! - `msgr bench run ADDR --stack dpdk` against `msgr bench serve --stack dpdk` over memif (the
//!   two-process form, through the stack switch): every count, the header naming link and arguments.
//!
//! Every msgr process is bounded by a deadline and killed past it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod msgr_bin;
use msgr_bin::{msgr, wait_bounded, MSGR};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn abstract_socket_open(name: &str) -> bool {
    let wanted = format!("@{name}");
    std::fs::read_to_string("/proc/net/unix")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().last() == Some(wanted.as_str()))
}

/// Runs `msgr bench --stack dpdk ARGS --json FILE`; returns the report and the bench's PID.
fn bench(args: &[&str], name: &str) -> (serde_json::Value, u32) {
    let json = std::env::temp_dir().join(format!(
        "msgr-bench-dpdk-{}-{name}.json",
        std::process::id()
    ));
    let mut all = vec!["bench", "--stack", "dpdk", "--json", json.to_str().unwrap()];
    all.extend_from_slice(args);
    let child = msgr_bin::spawn(&all);
    let pid = child.id();
    let out = wait_bounded(child, Duration::from_secs(180), &all);
    assert!(
        out.status.success(),
        "{all:?} failed\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written")).unwrap();
    let _ = std::fs::remove_file(&json);
    (report, pid)
}

/// Every record: the count asked for, the size, and real latencies.
fn check_results(report: &serde_json::Value, mode: &str, sizes: &[u64], count: u64) {
    let results = report["results"].as_array().expect("results");
    assert_eq!(results.len(), sizes.len(), "{report}");
    for (r, &size) in results.iter().zip(sizes) {
        assert_eq!(r["stack"], "dpdk");
        assert_eq!(r["mode"], mode);
        assert_eq!(r["msg_size"], size);
        assert_eq!(r["count"], count);
        for key in ["min_ns", "p50_ns", "p99_ns", "max_ns"] {
            assert!(r[key].as_u64().unwrap_or(0) > 0, "{key} is zero: {r}");
        }
        assert!(r["p50_ns"].as_u64() <= r["p99_ns"].as_u64());
        assert!(r["msgs_per_sec"].as_f64().unwrap_or(0.0) > 0.0);
    }
}

#[test]
fn bench_over_memif_reports_and_stops_its_server_child() {
    let (report, pid) = bench(&["--sizes", "64,4k", "--count", "500"], "memif");
    let h = &report["header"];
    assert_eq!(h["stack"], "dpdk");
    assert_eq!(h["link"], "memif");
    assert_eq!(h["processes"], "two");
    assert!(
        h["server_addr"]
            .as_str()
            .unwrap_or("")
            .contains("198.18.0.1"),
        "{h}"
    );
    assert!(h["stack_args"].as_str().unwrap_or("").contains("net_memif"));
    check_results(&report, "latency", &[64, 4096], 500);
    assert!(
        !abstract_socket_open(&format!("/msgr-bench-{pid}")),
        "the memif server child outlived the bench"
    );

    let (report, _) = bench(
        &["--mode", "throughput", "--sizes", "64k", "--count", "500"],
        "memif-tp",
    );
    check_results(&report, "throughput", &[65536], 500);
}

#[test]
fn bench_over_tap_reports_and_removes_the_interface() {
    let (report, pid) = bench(
        &["--dpdk-link", "tap", "--sizes", "64,4k", "--count", "500"],
        "tap",
    );
    let h = &report["header"];
    assert_eq!(h["link"], "tap");
    assert_eq!(h["processes"], "one");
    check_results(&report, "latency", &[64, 4096], 500);
    assert!(
        !std::path::Path::new(&format!("/sys/class/net/msgrb{pid}")).exists(),
        "tap interface msgrb{pid} left behind"
    );
}

#[test]
fn a_killed_bench_does_not_leave_its_server_child_running() {
    let mut child = Command::new(MSGR)
        .args([
            "bench",
            "--stack",
            "dpdk",
            "--sizes",
            "64",
            "--duration",
            "60",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn msgr");
    let socket = format!("/msgr-bench-{}", child.id());
    let end = Instant::now() + Duration::from_secs(60);
    while !abstract_socket_open(&socket) {
        assert!(Instant::now() < end, "the memif server never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(2));
    child.kill().expect("kill");
    let _ = child.wait();
    // SIGKILL leaves the bench's own (empty) EAL runtime directory behind: not the server's.
    let _ = std::fs::remove_dir(format!("/var/run/dpdk/msgr-{}", child.id()));
    let end = Instant::now() + Duration::from_secs(20);
    while abstract_socket_open(&socket) {
        assert!(
            Instant::now() < end,
            "the server child still runs 20 s after its bench was killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn options_that_do_not_apply_are_usage_errors() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["bench", "--stack", "dpdk", "--inject-delay-ms", "5"],
            "--inject-delay-ms",
        ),
        (
            &["bench", "--stack", "dpdk", "--con-mode", "secure"],
            "secure",
        ),
        (
            &["bench", "--stack", "dpdk", "--dpdk-args", "ip=10.0.0.1/24"],
            "ip=",
        ),
        (
            &["bench", "--stack", "dpdk", "--dpdk-args", "--vdev=net_tap0"],
            "device",
        ),
        (
            &[
                "bench",
                "--stack",
                "dpdk",
                "--workers",
                "2",
                "--dpdk-args",
                "queues=1",
            ],
            "--workers",
        ),
        (
            &["bench", "run", "198.18.0.1:6800", "--stack", "dpdk"],
            "--dpdk-args",
        ),
        (&["bench", "serve", "--stack", "dpdk"], "--dpdk-args"),
        (
            &[
                "bench",
                "serve",
                "--stack",
                "dpdk",
                "--workers",
                "2",
                "--dpdk-args",
                "ip=10.0.0.1/24 --no-huge --vdev=net_null0",
            ],
            "queues=1",
        ),
    ];
    for (args, reason) in cases {
        let out = msgr(args, Duration::from_secs(30));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
}

/// One end of a memif link for `--dpdk-args`: `server` takes memif's server role (it creates the socket).
fn memif_end(server: bool, socket: &str, link_wait_ms: u32) -> String {
    let (ip, role, last) = if server {
        ("198.18.0.1", "server", 1)
    } else {
        ("198.18.0.2", "client", 2)
    };
    format!(
        "ip={ip}/24 queues=1 link_wait_ms={link_wait_ms} --no-huge -m 256 --no-pci \
         --log-level=lib.eal:warning --log-level=pmd.net.memif:critical \
         --vdev=net_memif0,role={role},id=0,socket={socket},socket-abstract=yes,mac=02:00:c6:12:00:0{last}"
    )
}

/// A `msgr serve` / `msgr bench serve` on the server end of a memif link; killed (and its EAL
/// directory removed) on drop.
struct DpdkServe {
    child: std::process::Child,
    socket: String,
}

impl DpdkServe {
    /// Starts `msgr COMMAND --stack dpdk --dpdk-args SERVER-END ARGS` and waits for its
    /// `<type> listening on ADDR` line; returns it with ADDR. The server does not wait for its link (it
    /// comes up when a client connects): it prints its address at once, and each client waits instead.
    fn start(command: &[&str], args: &[&str], name: &str) -> (Self, String) {
        let socket = format!("/msgr-{name}-{}", std::process::id());
        let server_args = memif_end(true, &socket, 0);
        let child = Command::new(MSGR)
            .args(command)
            .args(["--stack", "dpdk", "--dpdk-args", &server_args])
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn msgr");
        let mut serve = DpdkServe { child, socket };
        let stdout = serve.child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let end = Instant::now() + Duration::from_secs(60);
        let addr = loop {
            let left = end.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("msgr {command:?} printed no address within 60 s"));
            if let Some((_, a)) = line.split_once(" listening on ") {
                break a.trim().to_string();
            }
        };
        assert!(abstract_socket_open(&serve.socket), "no memif socket");
        (serve, addr)
    }
}

impl Drop for DpdkServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir(format!("/var/run/dpdk/msgr-{}", self.child.id()));
        assert!(
            std::thread::panicking() || !abstract_socket_open(&self.socket),
            "the memif server outlived the test"
        );
    }
}

#[test]
fn serve_answers_ping_and_recon_over_memif() {
    let (serve, addr) = DpdkServe::start(
        &["serve"],
        &[
            "--bind",
            "198.18.0.1:6800",
            "--type",
            "osd",
            "--duration",
            "120",
        ],
        "serve-test",
    );
    assert!(addr.starts_with("v2:198.18.0.1:6800/"), "{addr}");

    // Each client is its own process on the client end of the link, one after the other.
    let client_args = memif_end(false, &serve.socket, 20_000);
    let ping = [
        "ping",
        addr.as_str(),
        "--stack",
        "dpdk",
        "--dpdk-args",
        &client_args,
        "--count",
        "3",
        "--interval",
        "50",
        "--timeout",
        "30",
    ];
    let out = msgr(&ping, Duration::from_secs(90));
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{ping:?}\nstdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    assert!(stdout.contains("connected to 198.18.0.1:6800/"), "{stdout}");
    assert!(
        stdout.contains("(osd, ") && stdout.contains("crc mode)"),
        "{stdout}"
    );
    assert!(stdout.contains("3 keepalives, 3 answered"), "{stdout}");

    let recon = [
        "recon",
        addr.as_str(),
        "--stack",
        "dpdk",
        "--dpdk-args",
        &client_args,
        "--expect",
        "osd",
        "--timeout",
        "30",
        "--json",
    ];
    let out = msgr(&recon, Duration::from_secs(90));
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{recon:?}\nstdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    let peers: serde_json::Value = serde_json::from_str(&stdout).expect("recon JSON");
    let peer = &peers[0];
    assert_eq!(peer["status"], "OK", "{peer}");
    assert_eq!(peer["entity_type"], "osd", "{peer}");
    assert!(peer["handshake_ms"].as_f64().unwrap_or(0.0) > 0.0, "{peer}");

    drop(serve);
}

/// The two-process form over the switch: `bench run ADDR --stack dpdk` against `bench serve --stack dpdk`.
#[test]
fn bench_run_against_bench_serve_over_memif() {
    let (serve, addr) = DpdkServe::start(
        &["bench", "serve"],
        &["--bind", "198.18.0.1:6800", "--stdin-control"],
        "bench-run-test",
    );
    assert_eq!(addr, "v2:198.18.0.1:6800/0");
    let json =
        std::env::temp_dir().join(format!("msgr-bench-dpdk-{}-run.json", std::process::id()));
    let client_args = memif_end(false, &serve.socket, 20_000);
    let run = [
        "bench",
        "run",
        "198.18.0.1:6800",
        "--stack",
        "dpdk",
        "--dpdk-args",
        &client_args,
        "--sizes",
        "64,4k",
        "--count",
        "300",
        "--json",
        json.to_str().unwrap(),
    ];
    let out = msgr(&run, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{run:?}\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written")).unwrap();
    let _ = std::fs::remove_file(&json);
    let h = &report["header"];
    assert_eq!(h["stack"], "dpdk");
    assert_eq!(h["link"], "memif", "{h}");
    assert_eq!(h["processes"], "two", "{h}");
    assert_eq!(h["stack_args"], client_args.as_str(), "{h}");
    check_results(&report, "latency", &[64, 4096], 300);
    drop(serve);
}
