//! DPDK (net_memif, two processes) against posix (kernel loopback, two processes), same harness, same run:
//! 64 B ping-pong round trips, 64 KiB streaming throughput, and syscalls per message on the server in
//! steady state (`strace -c -f -p` over a window of the ping-pong).
//!
//! ```text
//! cargo run --release --features dpdk --example dpdk_bench -- [seconds_of_pingpong] [messages_64k]
//! ```
//!
//! Until `msgr bench --stack dpdk` exists this is how the closing note's numbers were taken. Each endpoint is
//! a child process (the EAL exists once per process); this binary re-executes itself for the roles.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use msgr::msgr::{ConnectionRef, Dispatcher, Messenger, MessengerConfig};
use msgr::proto::types::{entity_type, AddrVec, AuthEntityName, EntityAddr};
use msgr::proto::{Config, Message, Policy};
use msgr::stack::dpdk::DpdkStack;
use msgr::stack::posix::PosixStack;
use msgr::stack::NetworkStack;

const LAT: u16 = 0x7001;
const TPUT: u16 = 0x7002;
const DONE: u16 = 0x7003;
const NONCE: u32 = 4242;

fn main() {
    match std::env::var("MSGR_BENCH_ROLE").as_deref() {
        Ok("server") => return role(true),
        Ok("client") => return role(false),
        _ => {}
    }
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(6);
    let big: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let mut rows = Vec::new();
    let stacks = std::env::var("MSGR_BENCH_STACKS").unwrap_or_else(|_| "posix,dpdk".into());
    for stack in ["posix", "dpdk"] {
        if stacks.contains(stack) {
            rows.push((stack, run_pair(stack, seconds, big)));
        }
    }
    println!(
        "\n{:<6} {:>10} {:>10} {:>10} {:>12} {:>14}",
        "stack", "p50 us", "p99 us", "RTTs", "64K MB/s", "syscalls/msg"
    );
    for (stack, r) in &rows {
        println!(
            "{:<6} {:>10.1} {:>10.1} {:>10} {:>12.0} {:>14.4}",
            stack,
            r["p50_ns"].as_f64().unwrap_or(0.0) / 1000.0,
            r["p99_ns"].as_f64().unwrap_or(0.0) / 1000.0,
            r["rtts"],
            r["mb_per_s"].as_f64().unwrap_or(0.0),
            r["syscalls_per_msg"].as_f64().unwrap_or(f64::NAN),
        );
    }
    let [(_, p), (_, d)] = &rows[..] else {
        return;
    };
    let ratio = |k: &str| d[k].as_f64().unwrap_or(0.0) / p[k].as_f64().unwrap_or(1.0);
    println!(
        "\ndpdk/posix: p50 RTT {:.2}x, 64 KiB throughput {:.2}x",
        ratio("p50_ns"),
        ratio("mb_per_s")
    );
}

/// A child process speaking `MSGR key value` lines.
struct Child {
    proc: std::process::Child,
    lines: crossbeam_channel::Receiver<String>,
}

impl Child {
    fn spawn(role: &str, stack: &str, args: &str, seconds: u64, big: u64) -> Child {
        let mut proc = Command::new(std::env::current_exe().unwrap())
            .env("MSGR_BENCH_ROLE", role)
            .env("MSGR_BENCH_STACK", stack)
            .env("MSGR_BENCH_ARGS", args)
            .env("MSGR_BENCH_SECONDS", seconds.to_string())
            .env("MSGR_BENCH_BIG", big.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("MSGR_BENCH_VERBOSE").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("spawn");
        let out = proc.stdout.take().unwrap();
        let (tx, lines) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("MSGR ") {
                    let _ = tx.send(rest.to_string());
                }
            }
        });
        Child { proc, lines }
    }

    fn expect(&self, key: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(600))
                .unwrap_or_else(|_| panic!("no {key}"));
            if let Some(v) = line.strip_prefix(&format!("{key} ")) {
                return v.to_string();
            }
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.proc.stdin.as_mut().unwrap();
        let _ = writeln!(stdin, "{line}");
        let _ = stdin.flush();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
        let pid = self.proc.id();
        let _ = std::fs::remove_dir(format!("/var/run/dpdk/msgr-{pid}"));
        // A killed hugepage run leaves its map files holding pages.
        if let Ok(dir) = std::fs::read_dir("/dev/hugepages") {
            let prefix = format!("msgr-{pid}map_");
            for entry in dir.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

fn run_pair(stack: &str, seconds: u64, big: u64) -> serde_json::Value {
    let sock = format!("/msgr-bench-{}", std::process::id());
    // MSGR_BENCH_HUGE=1: EAL memory from hugepages (reserve them first) instead of --no-huge.
    let memory = if std::env::var_os("MSGR_BENCH_HUGE").is_some() {
        "--huge-dir=/dev/hugepages -m 256"
    } else {
        "--no-huge -m 512"
    };
    // MSGR_BENCH_MTU=9000: jumbo frames on the memif link (default 1500).
    let mtu = std::env::var("MSGR_BENCH_MTU").unwrap_or_else(|_| "1500".into());
    // MSGR_BENCH_DPDK_OPTS: more stack options (`tcp_buffer=1048576 ack_delay_ms=0`, …).
    let opts = std::env::var("MSGR_BENCH_DPDK_OPTS").unwrap_or_default();
    let memif = |ip: &str, mac: &str, role: &str| {
        format!(
            "ip={ip}/24 mtu={mtu} {opts} {memory} --no-pci \
             --vdev=net_memif0,role={role},id=0,socket={sock},socket-abstract=yes,mac={mac}"
        )
    };
    let (sargs, cargs) = if stack == "dpdk" {
        (
            memif("10.79.0.1", "02:00:00:79:00:01", "client"),
            memif("10.79.0.2", "02:00:00:79:00:02", "server"),
        )
    } else {
        (String::new(), String::new())
    };
    let mut client = Child::spawn("client", stack, &cargs, seconds, big);
    if stack == "dpdk" {
        std::thread::sleep(Duration::from_millis(500)); // the memif server role's socket
    }
    let mut server = Child::spawn("server", stack, &sargs, seconds, big);
    server.expect("READY");
    client.send("go");
    client.expect("PINGPONG");
    // Steady state: trace the server for a window in the middle of the ping-pong.
    std::thread::sleep(Duration::from_secs(seconds / 3));
    server.send("count");
    let before: u64 = server.expect("COUNT").parse().unwrap();
    let window = (seconds / 3).max(1);
    let out = Command::new("timeout")
        .args([
            "-s",
            "INT",
            &window.to_string(),
            "strace",
            "-c",
            "-f",
            "-p",
            &server.proc.id().to_string(),
        ])
        .output();
    server.send("count");
    let after: u64 = server.expect("COUNT").parse().unwrap();
    let syscalls = out.ok().and_then(|o| {
        let text = String::from_utf8_lossy(&o.stderr).to_string();
        let total = text
            .lines()
            .find(|l| l.trim_end().ends_with("total"))
            .and_then(|l| {
                l.split_whitespace()
                    .nth(3)
                    .and_then(|n| n.parse::<u64>().ok())
            });
        total.or(Some(0)).map(|t| (t, text))
    });
    let result: serde_json::Value = serde_json::from_str(&client.expect("RESULT")).unwrap();
    let mut result = result;
    let msgs = after.saturating_sub(before).max(1);
    if let Some((calls, text)) = syscalls {
        eprintln!("strace of the {stack} server over {window}s ({msgs} messages):\n{text}");
        result["syscalls_per_msg"] = serde_json::json!(calls as f64 / msgs as f64);
    }
    server.send("exit");
    client.send("exit");
    eprintln!("{stack}: {result}");
    result
}

fn line() -> String {
    let mut s = String::new();
    let _ = std::io::stdin().lock().read_line(&mut s);
    s.trim().to_string()
}

fn say(k: &str, v: impl std::fmt::Display) {
    println!("MSGR {k} {v}");
    let _ = std::io::stdout().flush();
}

fn role(server: bool) {
    let stack = std::env::var("MSGR_BENCH_STACK").unwrap();
    if stack == "dpdk" {
        let s = DpdkStack::from_args(&std::env::var("MSGR_BENCH_ARGS").unwrap()).expect("dpdk");
        run_role(s, server, "10.79.0.1");
    } else {
        run_role(PosixStack::new(), server, "127.0.0.1");
    }
}

struct ServerD {
    received: AtomicU64,
    big: u64,
}

impl Dispatcher for ServerD {
    fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) {
        self.received.fetch_add(1, Ordering::Relaxed);
        match msg.header.msg_type {
            LAT => {
                let _ = conn.send(Message::new(LAT, msg.front).with_tid(msg.header.tid));
            }
            TPUT if msg.header.tid + 1 == self.big => {
                let _ = conn.send(Message::new(DONE, Bytes::new()));
            }
            _ => {}
        }
    }
}

struct ClientD {
    sent_at: Mutex<Instant>,
    until: Mutex<Option<Instant>>,
    warm_until: Mutex<Instant>,
    hist: Mutex<Histogram<u64>>,
    payload: Bytes,
    done: crossbeam_channel::Sender<u16>,
}

impl Dispatcher for ClientD {
    fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) {
        match msg.header.msg_type {
            LAT => {
                let now = Instant::now();
                let rtt = now.duration_since(*self.sent_at.lock().unwrap());
                if now >= *self.warm_until.lock().unwrap() {
                    let _ = self.hist.lock().unwrap().record(rtt.as_nanos() as u64);
                }
                if self.until.lock().unwrap().is_some_and(|u| now < u) {
                    *self.sent_at.lock().unwrap() = Instant::now();
                    let _ = conn.send(Message::new(LAT, self.payload.clone()));
                } else {
                    let _ = self.done.send(LAT);
                }
            }
            other => {
                let _ = self.done.send(other);
            }
        }
    }
}

fn config(entity: u8, name: &str, threads: usize) -> MessengerConfig {
    let mut c = Config::new(entity, AuthEntityName::new(entity, name));
    c.nonce = NONCE;
    c.default_policy = Policy::stateful_server();
    let mut mc = MessengerConfig::new(c);
    mc.workers.threads = threads;
    // Poll mode proper never sleeps (the default here); on a shared machine a short idle back-off
    // (MSGR_BENCH_SPINS idle turns, then MSGR_BENCH_BACKOFF_US sleeps) gives the CPU back.
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    mc.workers.loop_config.busy_poll_idle_spins =
        env("MSGR_BENCH_SPINS").map_or(u32::MAX, |v| v as u32);
    mc.workers.loop_config.idle_backoff =
        Duration::from_micros(env("MSGR_BENCH_BACKOFF_US").unwrap_or(0));
    mc
}

fn run_role<N: NetworkStack>(stack: N, server: bool, server_ip: &str) {
    let seconds: u64 = std::env::var("MSGR_BENCH_SECONDS")
        .unwrap()
        .parse()
        .unwrap();
    let big: u64 = std::env::var("MSGR_BENCH_BIG").unwrap().parse().unwrap();
    let addr: SocketAddr = format!("{server_ip}:6800").parse().unwrap();
    if server {
        let d = Arc::new(ServerD {
            received: AtomicU64::new(0),
            big,
        });
        let cfg = config(entity_type::OSD, "0", 1);
        let mut m = Messenger::new(stack, cfg, d.clone());
        m.bind(&[addr]).unwrap();
        m.start().unwrap();
        say("READY", "");
        while line() == "count" {
            say("COUNT", d.received.load(Ordering::Relaxed));
        }
        let _ = m.shutdown();
        return;
    }
    let (tx, rx) = crossbeam_channel::unbounded();
    let payload = Bytes::from(vec![7u8; 64]);
    let d = Arc::new(ClientD {
        sent_at: Mutex::new(Instant::now()),
        until: Mutex::new(None),
        warm_until: Mutex::new(Instant::now()),
        hist: Mutex::new(Histogram::new(3).unwrap()),
        payload: payload.clone(),
        done: tx,
    });
    let cfg = config(entity_type::CLIENT, "bench", 1);
    let mut m = Messenger::new(stack, cfg, d.clone());
    m.start().unwrap();
    assert_eq!(line(), "go");
    let conn = m
        .connect_to(
            entity_type::OSD,
            &AddrVec(vec![EntityAddr::msgr2(addr, NONCE)]),
            Policy::lossless_client(),
        )
        .unwrap();
    // Ping-pong for `seconds` (the first second is warm-up), one message in flight.
    let start = Instant::now();
    *d.warm_until.lock().unwrap() = start + Duration::from_secs(1);
    *d.until.lock().unwrap() = Some(start + Duration::from_secs(seconds));
    *d.sent_at.lock().unwrap() = Instant::now();
    conn.send(Message::new(LAT, payload)).unwrap();
    say("PINGPONG", "");
    assert_eq!(rx.recv().unwrap(), LAT);
    let hist = d.hist.lock().unwrap().clone();
    // Streaming: `big` messages of 64 KiB; the server answers DONE after the last.
    let block = Bytes::from(vec![9u8; 64 * 1024]);
    let t0 = Instant::now();
    for i in 0..big {
        conn.send(Message::new(TPUT, block.clone()).with_tid(i))
            .unwrap();
    }
    assert_eq!(rx.recv().unwrap(), DONE);
    let secs = t0.elapsed().as_secs_f64();
    say(
        "RESULT",
        serde_json::json!({
            "p50_ns": hist.value_at_quantile(0.5),
            "p99_ns": hist.value_at_quantile(0.99),
            "rtts": hist.len(),
            "mb_per_s": (big * 64 * 1024) as f64 / secs / 1e6,
        }),
    );
    while line() != "exit" {}
    let _ = m.shutdown();
}
