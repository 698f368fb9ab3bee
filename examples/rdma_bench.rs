//! A small messenger benchmark over the RDMA stack, for comparing with perftest in the same guest run
//! (`scripts/rdma-checks.sh` runs both) until `msgr bench --stack rdma` exists. Server and client are two
//! messengers in this process, one busy-polling worker each, like ib_send_lat's two processes.
//!
//!   rdma_bench lat --addr IP [--dev rxe0] [--gid-index 1] [--size 64] [--count 2000]
//!   rdma_bench bw  --addr IP [--dev rxe0] [--gid-index 1] [--size 1048576] [--count 300]
//!   (both also take --buf-size BYTES and --depth N: the stack's buffer size and queue depths)
//!
//! `lat`: closed-loop ping-pong driven from the dispatchers (no thread hand-off on the path): the round
//! trip of one message of `size` payload bytes and its echo; prints p50/avg/p99 in µs.
//! `bw`: the client streams `count` messages of `size` bytes; bandwidth from the first send to the
//! last arrival, in MiB/s (2^20 bytes, as perftest's MB/sec).
//! Workers spin without sleeping (the event loop's `idle_backoff` is zero), as perftest's tools do.
//! Prints one line `RESULT {json}`.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use msgr::msgr::{ConnectionRef, Dispatcher, Messenger, MessengerConfig};
use msgr::proto::types::{entity_type, AuthEntityName};
use msgr::proto::{Config, Message, Policy};
use msgr::stack::rdma::{RdmaConfig, RdmaStack};

struct Args {
    mode: String,
    addr: IpAddr,
    dev: Option<String>,
    gid_index: i32,
    size: usize,
    count: u64,
    buf_size: Option<u32>,
    depth: Option<u32>,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mode = it
        .next()
        .ok_or("usage: rdma_bench lat|bw --addr IP [options]")?;
    if mode != "lat" && mode != "bw" {
        return Err(format!("unknown mode {mode} (lat or bw)"));
    }
    let mut args = Args {
        size: if mode == "lat" { 64 } else { 1 << 20 },
        count: if mode == "lat" { 2000 } else { 300 },
        mode,
        addr: IpAddr::from([0, 0, 0, 0]),
        dev: None,
        gid_index: 0,
        buf_size: None,
        depth: None,
    };
    let mut have_addr = false;
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--addr" => {
                args.addr = value.parse().map_err(|e| bad(&e))?;
                have_addr = true;
            }
            "--dev" => args.dev = Some(value),
            "--gid-index" => args.gid_index = value.parse().map_err(|e| bad(&e))?,
            "--size" => args.size = value.parse().map_err(|e| bad(&e))?,
            "--count" => args.count = value.parse().map_err(|e| bad(&e))?,
            "--buf-size" => args.buf_size = Some(value.parse().map_err(|e| bad(&e))?),
            "--depth" => args.depth = Some(value.parse().map_err(|e| bad(&e))?),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if !have_addr {
        return Err("--addr IP (an address on the RDMA device) is required".into());
    }
    Ok(args)
}

fn proto(entity: u8, name: &str) -> Config {
    let mut c = Config::new(entity, AuthEntityName::parse(name).expect("valid name"));
    c.nonce = rand::random();
    c
}

/// A one-worker messenger; its worker is pinned to `core` (client and server get different cores, as
/// the scheduler would place perftest's two processes).
fn messenger(
    args: &Args,
    p: Config,
    core: usize,
    d: Arc<dyn Dispatcher>,
) -> std::io::Result<Messenger<RdmaStack>> {
    let mut rc = RdmaConfig::new(args.dev.clone(), args.gid_index, 1);
    if let Some(b) = args.buf_size {
        rc.buf_size = b;
    }
    if let Some(d) = args.depth {
        rc.recv_depth = d;
        rc.send_depth = d;
    }
    let stack = RdmaStack::new(rc)?;
    let mut cfg = MessengerConfig::new(p);
    cfg.workers.threads = 1;
    cfg.workers.pin_cores = true;
    cfg.workers.cores = vec![core];
    // Spin without ever sleeping, as perftest does: like is compared with like.
    cfg.workers.loop_config.idle_backoff = Duration::ZERO;
    Ok(Messenger::new(stack, cfg, d))
}

/// Server side: echo (lat) or count (bw).
struct Server {
    echo: bool,
    received: AtomicU64,
    bytes: AtomicU64,
    last: Mutex<Option<Instant>>,
}

impl Dispatcher for Server {
    fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) {
        self.bytes
            .fetch_add(msg.front.len() as u64, Ordering::Relaxed);
        if self.echo {
            let _ = conn.send(
                Message::new(msg.header.msg_type, msg.front.clone()).with_tid(msg.header.tid),
            );
        }
        *self.last.lock().expect("not poisoned") = Some(Instant::now());
        self.received.fetch_add(1, Ordering::Release);
    }
}

/// Client side of the ping-pong: on each echo, record the round trip and send the next ping.
struct Pinger {
    payload: Bytes,
    count: u64,
    sent_at: Mutex<Instant>,
    rtts_ns: Mutex<Vec<u64>>,
    done: AtomicU64,
}

impl Dispatcher for Pinger {
    fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) {
        let now = Instant::now();
        let mut sent = self.sent_at.lock().expect("not poisoned");
        let rtt = now.duration_since(*sent).as_nanos() as u64;
        let mut rtts = self.rtts_ns.lock().expect("not poisoned");
        rtts.push(rtt);
        let next = msg.header.tid + 1;
        if next < self.count {
            *sent = Instant::now();
            let _ = conn.send(Message::new(0x4000, self.payload.clone()).with_tid(next));
        } else {
            self.done.store(1, Ordering::Release);
        }
    }
}

fn wait(timeout: Duration, done: impl Fn() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    done()
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

fn run(args: Args) -> Result<(), String> {
    let server = Arc::new(Server {
        echo: args.mode == "lat",
        received: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        last: Mutex::new(None),
    });
    let mut sp = proto(entity_type::OSD, "osd.0");
    sp.default_policy = Policy::stateful_server();
    let mut srv = messenger(&args, sp, 1, server.clone()).map_err(|e| format!("server: {e}"))?;
    srv.bind(&[SocketAddr::new(args.addr, 0)])
        .map_err(|e| e.to_string())?;
    srv.start().map_err(|e| e.to_string())?;
    let payload = Bytes::from(vec![0x5au8; args.size]);
    let pinger = Arc::new(Pinger {
        payload: payload.clone(),
        count: args.count,
        sent_at: Mutex::new(Instant::now()),
        rtts_ns: Mutex::new(Vec::with_capacity(args.count as usize)),
        done: AtomicU64::new(0),
    });
    let mut cli = messenger(
        &args,
        proto(entity_type::CLIENT, "client.bench"),
        0,
        pinger.clone(),
    )
    .map_err(|e| format!("client: {e}"))?;
    cli.start().map_err(|e| e.to_string())?;
    let conn = cli
        .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossless_client())
        .map_err(|e| e.to_string())?;
    // Warm up: the handshake and a first exchange.
    if args.mode == "lat" {
        *pinger.sent_at.lock().expect("not poisoned") = Instant::now();
        conn.send(Message::new(0x4000, payload.clone()).with_tid(0))
            .map_err(|e| e.to_string())?;
        if !wait(Duration::from_secs(600), || {
            pinger.done.load(Ordering::Acquire) == 1
        }) {
            return Err(format!(
                "ping-pong stalled after {} round trips",
                pinger.rtts_ns.lock().expect("not poisoned").len()
            ));
        }
        let mut rtts = pinger.rtts_ns.lock().expect("not poisoned").clone();
        // Drop the first tenth (handshake, cold caches).
        let skip = rtts.len() / 10;
        rtts.drain(..skip);
        rtts.sort_unstable();
        let avg = rtts.iter().sum::<u64>() as f64 / rtts.len().max(1) as f64 / 1000.0;
        println!(
            "RESULT {{\"mode\":\"lat\",\"size\":{},\"count\":{},\"rtt_p50_us\":{:.2},\"rtt_avg_us\":{:.2},\"rtt_p99_us\":{:.2},\"rtt_min_us\":{:.2}}}",
            args.size,
            rtts.len(),
            pct(&rtts, 0.5),
            avg,
            pct(&rtts, 0.99),
            pct(&rtts, 0.0)
        );
    } else {
        // Connect and exchange one message first so setup is not timed.
        conn.send(Message::new(0x4000, Bytes::from_static(b"hi")).with_tid(0))
            .map_err(|e| e.to_string())?;
        if !wait(Duration::from_secs(120), || {
            server.received.load(Ordering::Acquire) >= 1
        }) {
            return Err("no connection".into());
        }
        let base = server.bytes.load(Ordering::Acquire);
        let start = Instant::now();
        for i in 0..args.count {
            conn.send(Message::new(0x4000, payload.clone()).with_tid(i + 1))
                .map_err(|e| e.to_string())?;
        }
        if !wait(Duration::from_secs(900), || {
            server.received.load(Ordering::Acquire) > args.count
        }) {
            return Err(format!(
                "stream stalled at {} of {}",
                server.received.load(Ordering::Relaxed),
                args.count
            ));
        }
        let last = server
            .last
            .lock()
            .expect("not poisoned")
            .unwrap_or_else(Instant::now);
        let secs = last.duration_since(start).as_secs_f64();
        let bytes = server.bytes.load(Ordering::Acquire) - base;
        println!(
            "RESULT {{\"mode\":\"bw\",\"size\":{},\"count\":{},\"seconds\":{:.3},\"mib_per_s\":{:.2}}}",
            args.size,
            args.count,
            secs,
            bytes as f64 / secs / (1024.0 * 1024.0)
        );
    }
    let c = cli.stack().counters().snapshot();
    eprintln!(
        "client rdma counters: {}",
        serde_json::to_string(&c).unwrap_or_default()
    );
    Ok(())
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rdma_bench: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args) {
        eprintln!("rdma_bench: {e}");
        std::process::exit(1);
    }
}
