//! `msgr bench`: the benchmark harness.
//!
//! Owns the benchmark modes, their drivers and what they report:
//! - `latency`: ping-pong, one message in flight on one connection, per message size;
//! - `throughput`: one or more connections streaming with a window of messages in flight, each answered
//!   by an empty ack;
//! - `fanin`: many client connections (default 256, each its own client identity) against one server,
//!   echoed, reporting aggregate msgs/s and the latency distribution under that load, and the server's
//!   memory per idle session;
//! - `connect`: handshakes per second ([`connect`]).
//!
//! Every mode runs under a session policy (`--policy`, [`policy`]: lossy, lossless or lossless-peer),
//! which the server learns from the client's entity type; every report has the CPU each side spent per
//! message ([`cpu`]), the client's from its worker threads, the server's as it reports it (stats request).
//!
//! Every message's latency goes into an hdrhistogram in ns (no allocation per sample); `--rate` paces the
//! sends and measures from each message's intended send time (coordinated omission); warm-up messages are
//! never recorded. The server runs in this process (`msgr bench`) or in another (`msgr bench serve` +
//! `msgr bench run ADDR`). Output: a table on stdout, `--json FILE` ([`Report`]), `--svg FILE` ([`plot`]),
//! and a progress bar on stderr for runs over a second when stderr is a terminal ([`progress`]).
//!
//! Layout: [`BenchArgs`] is the command line, [`run_to`] checks it and runs it on the stack chosen
//! through the stack switch ([`crate::stacks`]; [`BenchStack`] adds the in-memory pair); [`driver`] is
//! the client side of every messenger run (the in-memory pair, [`latency::MemPingPong`], has latency
//! only); [`serve`] is the server; [`dpdk`] builds the one-command `--stack dpdk` link; [`report`] turns
//! histograms into [`SizeResult`]s, the table and the JSON.
//!
//! Invariants: warm-up samples never reach a histogram; every record in a report has the count asked
//! for (or, duration-bound, what was measured in that time); output files are created before the run,
//! so a bad path fails in a second, not after the run.

pub mod child;
pub mod connect;
pub mod cpu;
pub mod dpdk;
pub mod driver;
pub mod latency;
pub mod limits;
pub mod plot;
pub mod policy;
pub mod progress;
pub mod rados;
pub mod report;
pub mod security;
pub mod serve;
pub mod size;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use msgr::event::WorkerConfig;
use msgr::proto::types::{AddrVec, EntityAddr};
use msgr::stack::fault::{FaultConfig, FaultStack};
use msgr::stack::NetworkStack;

use crate::stacks::{
    self, rdma, Role, StackChoice, StackError, StackFn, StackKind, StackOptions, Stacks,
};

pub use dpdk::DpdkLink;
pub use driver::{Load, Measured, Shape, Traffic};
pub use latency::{EchoDispatcher, BENCH_ACK_TYPE, BENCH_MSG_TYPE, BENCH_STREAM_TYPE};
pub use policy::BenchPolicy;
pub use report::{Cpus, Header, Report, RunInfo, RunShape, SizeResult};
pub use serve::{BenchServeArgs, BenchServer};
pub use size::{format_size, parse_size};

/// Exit status for a benchmark that could not run or failed part way.
pub const EXIT_FAIL: i32 = 1;
/// Exit status for bad usage.
pub const EXIT_USAGE: i32 = 2;

/// Largest `--workers`.
pub const MAX_WORKERS: usize = 64;
/// Largest `--connections`.
pub const MAX_CONNECTIONS: usize = 65_536;
/// Largest `--window`.
pub const MAX_WINDOW: usize = 65_536;
/// Default `--connections` in fan-in mode.
pub const FANIN_CONNECTIONS: usize = 256;
/// Default `--window` in throughput mode.
pub const THROUGHPUT_WINDOW: usize = 16;
/// Default `--connections` (dialers at once) in connect mode.
pub const CONNECT_DIALERS: usize = 4;

const ABOUT: &str = "Measure the messenger: latency, throughput and fan-in, per message size";

const LONG_ABOUT: &str = "Measure the messenger: latency, throughput and fan-in, per message size.\n\n\
Modes: `latency` plays ping-pong with exactly one message in flight on one connection; `throughput` \
streams on --connections connections (default 1) with --window messages in flight each (default 16), \
the server answering each message with an empty ack; `fanin` opens --connections client sessions \
(default 256, each its own client identity) to one server and echoes with --window in flight each \
(default 1), and reports the server's resident memory per idle session (RSS before and after \
connecting); `connect` runs --connections dialers at once (default 4), each connecting, completing the \
full msgr2 handshake and closing, over and over: handshakes/s and handshake latency. The bench raises \
the open-file limit (RLIMIT_NOFILE) as far as the connections need, up to the hard limit, and says so.\n\n\
--policy picks the session policy: lossy (lossy_client against a stateless_server, the default), \
lossless (lossless_client against a stateful_server: reconnect and replay) or lossless-peer (both ends \
bound, lossless_peer each way, as between OSDs). The server serves all three at once and learns the \
policy from the entity type the client announces (client, mgr, osd). Every throttle the bench does not \
measure is unlimited (send budget, dispatch throttle, receive throttles); the read budget, a fairness \
knob between the connections of a worker, keeps its default.\n\n\
Every message's latency (send to reply) is recorded in ns in an hdrhistogram; warm-up messages are \
not. With --rate the sends are paced at that many messages per second (over all connections) and each \
latency runs from the message's intended send time, so stalls are not hidden (coordinated omission). \
--duration measures each size for that long instead of --count messages.\n\n\
With --stack posix the server is a messenger in this process on 127.0.0.1 (its own worker threads), or \
in another process: start `msgr bench serve`, then `msgr bench run ADDR`. With --stack mem the client \
and server are the protocol state machines back to back in memory (latency only: the protocol's cost \
alone). With --stack rdma (a build with `--features rdma`) both messengers run over RDMA (RC queue pairs, \
rdma_cm) on --rdma-device, the server listening on --rdma-addr, an address of the device's network \
interface (default: $SOFTROCE_ADDR, else the IPv4 address in the device's GID at --rdma-gid-index); \
its workers spin without sleeping, as perftest does. With --stack dpdk (a build with the dpdk feature) \
the client runs on the DPDK stack: --dpdk-link memif (default) starts the server as a child `msgr bench serve --stack dpdk` on the other \
end of a net_memif link; --dpdk-link tap (root) runs the client on net_tap against a kernel-TCP server \
in this process on the tap's kernel side; --dpdk-args adjusts the generated stack arguments.\n\n\
The table shows, per size, p50/p90/p99/p99.9/max in µs, msgs/s over all connections, payload Gbit/s \
(both directions for echoed modes, one for throughput), and the CPU per message of the client's and \
the server's worker threads (user and system µs, over the measured messages only, as netperf's service \
demand; \"n/a\" when the server does not report it). --json FILE writes the same figures, p99.99 too, \
with a header (version, commit, stack, pinning, load average, CPU, kernel); --svg FILE draws latency by \
percentile and throughput by size.";

const AFTER_HELP: &str = "Examples:\n  \
msgr bench --stack posix --mode latency --sizes 64,4k --json out.json --svg out.svg\n  \
msgr bench --mode throughput --sizes 4k,64k,1m --window 32 --duration 3\n  \
msgr bench --mode fanin --connections 10000 --sizes 64\n  \
msgr bench --policy lossless --sizes 64 --mode throughput --window 64\n  \
msgr bench --mode connect --connections 8 --count 2000\n  \
msgr bench --sizes 64 --rate 20000 --count 100000\n  \
msgr bench --stack rdma --rdma-device rxe0 --rdma-addr 192.168.77.1 --mode throughput --sizes 1m\n  \
msgr bench --stack dpdk --sizes 64,64k            (cargo build --release --features dpdk)\n  \
msgr bench --stack dpdk --dpdk-link tap --mode throughput --sizes 64k\n  \
taskset -c 1 msgr bench serve --bind 127.0.0.1:6800 &  taskset -c 0 msgr bench run 127.0.0.1:6800";

/// `msgr bench [OPTIONS]`, `msgr bench run ADDR [OPTIONS]`, `msgr bench serve [OPTIONS]`.
#[derive(clap::Args, Debug, Clone)]
#[command(
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct BenchCli {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    #[command(flatten)]
    pub args: BenchArgs,
}

/// The two-process form.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum BenchCommand {
    /// Run a benchmark server (echo and ack) for `msgr bench run` in another process.
    Serve(BenchServeArgs),
    /// Run the benchmark against a `msgr bench serve` (or `msgr serve`) at ADDR.
    Run(BenchRunArgs),
}

/// `msgr bench run ADDR [OPTIONS]`
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "Example:\n  msgr bench run 127.0.0.1:6800 --mode throughput --sizes 1m")]
pub struct BenchRunArgs {
    /// The server: IP:PORT (IPv6 in brackets), or v2:IP:PORT/NONCE as `msgr bench serve` prints it.
    #[arg(value_name = "ADDR")]
    pub addr: String,
    #[command(flatten)]
    pub args: BenchArgs,
}

/// What to measure and how.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Network stack: posix (kernel TCP), mem (in-memory protocol pair, latency only), dpdk (needs a
    /// build with --features dpdk) or rdma (needs a build with --features rdma).
    #[arg(long, value_enum, default_value_t = BenchStack::Net(StackKind::Posix))]
    pub stack: BenchStack,

    // --rdma-*, --dpdk-args. `msgr bench` without ADDR merges --dpdk-args into the arguments it
    // generates for its link (see bench::dpdk); `bench run ADDR` takes them as this end's configuration.
    #[command(flatten)]
    pub stack_options: StackOptions,

    /// --stack dpdk: the link, memif (a server child process over net_memif) or tap (net_tap against a
    /// kernel-TCP server here; needs root).
    #[arg(long, value_enum, default_value_t = DpdkLink::Memif)]
    pub dpdk_link: DpdkLink,

    /// What to measure: latency, throughput, fanin or connect.
    #[arg(long, value_enum, default_value_t = Mode::Latency)]
    pub mode: Mode,

    /// Session policy: lossy, lossless (lossless_client to stateful_server) or lossless-peer (both
    /// ends bound, lossless_peer each way). Every throttle the bench does not measure is unlimited;
    /// the read budget (fairness between connections) keeps its default.
    #[arg(long, value_enum, default_value_t = BenchPolicy::Lossy)]
    pub policy: BenchPolicy,

    /// Message payload sizes, comma-separated: bytes, or with k (KiB) / m (MiB), e.g. 64,4k,64k,1m.
    #[arg(long, value_name = "SIZE,...", value_delimiter = ',', value_parser = parse_size,
          default_value = "64,4k,64k")]
    pub sizes: Vec<usize>,

    /// Messages measured per size, over all connections.
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub count: u64,

    /// Measure each size for SECS seconds instead of --count messages.
    #[arg(long, value_name = "SECS", value_parser = parse_positive_secs)]
    pub duration: Option<f64>,

    /// Messages per size before measuring (sent and answered, not recorded).
    #[arg(long, value_name = "N", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(0..=1_000_000_000))]
    pub warmup: u64,

    /// Client connections (default: 1; fanin: 256; connect: 4 dialers at once).
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=MAX_CONNECTIONS as u64))]
    pub connections: Option<u64>,

    /// Messages in flight per connection (default: 1; throughput: 16).
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=MAX_WINDOW as u64))]
    pub window: Option<u64>,

    /// Pace the sends at N messages per second over all connections; latency counts from each
    /// message's intended send time.
    #[arg(long, value_name = "N", value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Worker threads per messenger (client, and the in-process server).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=MAX_WORKERS as u64))]
    pub workers: u64,

    /// Pin the client's workers to these CPUs, e.g. 0 or 0,1.
    #[arg(long, value_name = "CPU,...", value_delimiter = ',')]
    pub client_cpus: Vec<usize>,

    /// Pin the in-process server's workers to these CPUs.
    #[arg(long, value_name = "CPU,...", value_delimiter = ',')]
    pub server_cpus: Vec<usize>,

    /// posix: after each burst of work the workers keep polling, without sleeping, for US
    /// microseconds (0 = sleep at once, the default and Ceph's behaviour). Spares the wake-up of a
    /// sleeping thread (an interrupt and a context switch; tens of µs on a VM) for CPU time. Applies
    /// to the client and an in-process server; give `msgr bench serve` its own --spin-us.
    #[arg(long, value_name = "US", default_value_t = 0)]
    pub spin_us: u64,

    /// Hold back every read on the client side this many ms (fault injection), so each round trip
    /// takes at least that long: a check that the figures are real.
    #[arg(long, value_name = "MS", value_parser = parse_delay_ms)]
    pub inject_delay_ms: Option<f64>,

    /// Fail one socket read or write in N on the client side (fault injection, Ceph's
    /// ms_inject_socket_failures): a lossless run must still lose nothing.
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(2..))]
    pub inject_socket_failures: Option<u32>,

    /// msgr2 connection mode: crc (auth none), or secure (cephx + AES-128-GCM; the in-process server
    /// plays the cephx monitor with an ephemeral key). Not with `bench run ADDR`.
    #[arg(long = "con-mode", value_enum, default_value_t = security::ConMode::Crc)]
    pub con_mode: security::ConMode,

    /// Also write the results as JSON to FILE (a header plus one record per size).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Also draw latency by percentile and throughput by size into FILE (SVG).
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,

    #[command(flatten)]
    pub rados: Box<rados::RadosBenchArgs>,
}

fn parse_positive_secs(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!(
            "{s:?}: expected seconds, more than 0 and at most 86400"
        )),
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (1.0..=1e9).contains(&v) => Ok(v),
        _ => Err(format!("{s:?}: expected messages per second, 1 to 1e9")),
    }
}

fn parse_delay_ms(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 60_000.0 => Ok(v),
        _ => Err(format!(
            "{s:?}: expected milliseconds, more than 0 and at most 60000"
        )),
    }
}

/// `--stack` of `msgr bench` and `bench serve`: a network stack ([`StackKind`], through the stack
/// switch), or the in-memory protocol pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchStack {
    /// The protocol state machines back to back in memory: no sockets, no threads.
    Mem,
    Net(StackKind),
}

impl BenchStack {
    pub fn name(self) -> &'static str {
        match self {
            BenchStack::Mem => "mem",
            BenchStack::Net(kind) => kind.name(),
        }
    }
}

impl clap::ValueEnum for BenchStack {
    fn value_variants<'a>() -> &'a [Self] {
        &[
            BenchStack::Net(StackKind::Posix),
            BenchStack::Mem,
            BenchStack::Net(StackKind::Rdma),
            BenchStack::Net(StackKind::Dpdk),
        ]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        match self {
            BenchStack::Mem => Some(clap::builder::PossibleValue::new("mem").help(
                "The protocol state machines back to back in memory: no sockets, no threads",
            )),
            BenchStack::Net(kind) => kind.to_possible_value(),
        }
    }
}

/// Benchmark modes.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Ping-pong, one message in flight: round-trip percentiles.
    Latency,
    /// Streaming with a window of messages in flight on one or more connections: throughput.
    Throughput,
    /// Many client connections (default 256) into one server: aggregate msgs/s and latency under load.
    Fanin,
    /// Object I/O on a real Ceph cluster (--mon-host, --pool): 4 KiB writes and reads at depth 1 and
    /// 16, 4 MiB writes at depth 4, as `rados bench` (see bench::rados).
    Rados,
    /// Connect, handshake, close, by --connections dialers at once: handshakes/s and their latency.
    Connect,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Latency => "latency",
            Mode::Throughput => "throughput",
            Mode::Fanin => "fanin",
            Mode::Rados => "rados",
            Mode::Connect => "connect",
        }
    }
}

/// Why a benchmark did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// Bad usage, or a mode this build does not have: exit status 2.
    #[error("{0}")]
    Usage(String),
    /// The run failed (could not start, stalled, echo mismatch, JSON not written): exit status 1.
    #[error("{0}")]
    Failed(String),
}

impl From<StackError> for BenchError {
    fn from(e: StackError) -> Self {
        match e {
            StackError::Usage(m) => BenchError::Usage(m),
            StackError::Failed(m) => BenchError::Failed(m),
        }
    }
}

impl BenchError {
    pub fn exit_code(&self) -> i32 {
        match self {
            BenchError::Usage(_) => EXIT_USAGE,
            BenchError::Failed(_) => EXIT_FAIL,
        }
    }
}

/// Runs the benchmark, printing the table to stdout; see [`run_to`].
pub fn run(args: &BenchArgs, server: Option<&str>) -> Result<Report, BenchError> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    run_to(args, server, &mut out)
}

/// A run's plan, checked.
struct Plan {
    sizes: Vec<usize>,
    mode: Mode,
    shape: Shape,
    run_shape: RunShape,
    load: Load,
    workers: usize,
    server: Option<(String, AddrVec)>,
    /// The stack, unless the run builds its own: the in-memory pair, or the one-command dpdk link.
    choice: Option<StackChoice>,
}

fn plan(args: &BenchArgs, server: Option<&str>) -> Result<Plan, BenchError> {
    let usage = |m: String| Err(BenchError::Usage(m));
    if args.sizes.is_empty() {
        return usage("no message size given (--sizes)".into());
    }
    if args.count == 0 {
        return usage("--count must be at least 1".into());
    }
    if server.is_some() && args.con_mode == security::ConMode::Secure {
        return usage(
            "--con-mode secure runs with the in-process server (its ephemeral cephx key); \
             `bench run ADDR` supports crc only"
                .into(),
        );
    }
    let workers = usize::try_from(args.workers)
        .ok()
        .filter(|w| (1..=MAX_WORKERS).contains(w))
        .ok_or_else(|| BenchError::Usage(format!("--workers: expected 1..={MAX_WORKERS}")))?;
    let as_usize = |v: Option<u64>, default: usize| {
        v.map_or(Some(default), |v| usize::try_from(v).ok())
            .unwrap_or(usize::MAX)
    };
    let (connections, window, traffic) = match args.mode {
        Mode::Latency => (
            as_usize(args.connections, 1),
            as_usize(args.window, 1),
            Traffic::Echo,
        ),
        Mode::Throughput => (
            as_usize(args.connections, 1),
            as_usize(args.window, THROUGHPUT_WINDOW),
            Traffic::Stream,
        ),
        Mode::Rados => return usage("--mode rados runs through `msgr bench --mode rados`".into()),
        Mode::Fanin => (
            as_usize(args.connections, FANIN_CONNECTIONS),
            as_usize(args.window, 1),
            Traffic::Echo,
        ),
        Mode::Connect => (
            as_usize(args.connections, CONNECT_DIALERS),
            1,
            Traffic::Echo,
        ),
    };
    if args.mode == Mode::Connect && (args.window.is_some() || args.rate.is_some()) {
        return usage("--mode connect takes neither --window nor --rate".into());
    }
    let bound_many = connections > 1 || args.mode == Mode::Connect;
    if args.policy.client_binds() && bound_many {
        return usage(format!(
            "--policy {} binds the client, and a bound messenger keeps one session per peer: one \
             connection only (not --mode connect or fanin, nor --connections over 1)",
            args.policy.name()
        ));
    }
    if args.policy != BenchPolicy::Lossy && args.stack == BenchStack::Mem {
        return usage("--stack mem (the in-memory pair) runs --policy lossy only".into());
    }
    if args.stack == BenchStack::Net(StackKind::Dpdk)
        && (args.policy.client_binds() || args.mode == Mode::Connect)
    {
        return usage(
            "--stack dpdk runs --policy lossy or lossless, and not --mode connect".into(),
        );
    }
    if args.mode == Mode::Latency && (connections != 1 || window != 1) {
        return usage(
            "--mode latency has one connection with one message in flight; use --mode throughput \
             (--window, --connections) or --mode fanin for more"
                .into(),
        );
    }
    if connections > MAX_CONNECTIONS || window > MAX_WINDOW {
        return usage(format!(
            "--connections at most {MAX_CONNECTIONS}, --window at most {MAX_WINDOW}"
        ));
    }
    if args.duration.is_none() && args.count < connections as u64 && args.mode != Mode::Connect {
        return usage(format!(
            "--count {} is less than --connections {connections}: every connection needs a message",
            args.count
        ));
    }
    let server = match server {
        Some(addr) => {
            let t = crate::recon::parse_target(addr).map_err(BenchError::Usage)?;
            Some((
                t.to_string(),
                AddrVec(vec![EntityAddr::msgr2(t.addr, t.nonce)]),
            ))
        }
        None => None,
    };
    if args.stack == BenchStack::Mem {
        let unsupported = [
            (args.mode != Mode::Latency, "--mode other than latency"),
            (args.rate.is_some(), "--rate"),
            (args.duration.is_some(), "--duration"),
            (args.inject_delay_ms.is_some(), "--inject-delay-ms"),
            (
                args.inject_socket_failures.is_some(),
                "--inject-socket-failures",
            ),
            (server.is_some(), "a server address (bench run)"),
            (
                !args.client_cpus.is_empty() || !args.server_cpus.is_empty(),
                "--client-cpus/--server-cpus",
            ),
        ];
        if let Some((_, what)) = unsupported.iter().find(|(bad, _)| *bad) {
            return usage(format!(
                "--stack mem (the in-memory pair, latency only) does not take {what}"
            ));
        }
    }
    let choice = match args.stack {
        BenchStack::Mem => {
            stacks::check_none("mem", &args.stack_options)?;
            None
        }
        BenchStack::Net(kind) => {
            stacks::check(kind, &args.stack_options)?;
            if kind == StackKind::Dpdk {
                dpdk::check(args, server.is_some())?;
            } else if args.dpdk_link != DpdkLink::Memif {
                return usage(format!(
                    "--dpdk-link goes with --stack dpdk, not --stack {}",
                    kind.name()
                ));
            }
            // The one-command dpdk run builds its own link (dpdk::start).
            let own_link = kind == StackKind::Dpdk && server.is_none();
            let role = Role {
                listens_on_rdma_addr: server.is_none(),
                workers: Some(workers),
            };
            match own_link {
                true => None,
                false => Some(StackChoice::new(kind, &args.stack_options, role)?),
            }
        }
    };
    if args.stack == BenchStack::Mem && args.dpdk_link != DpdkLink::Memif {
        return usage("--dpdk-link goes with --stack dpdk, not --stack mem".into());
    }
    if server.is_some() && !args.server_cpus.is_empty() {
        return usage(
            "--server-cpus pins an in-process server; pin `msgr bench serve` itself".into(),
        );
    }
    let run_shape = RunShape {
        stack: args.stack.name().to_string(),
        mode: args.mode.name().to_string(),
        policy: args.policy.name().to_string(),
        warmup: args.warmup,
        connections,
        window,
        rate: args.rate,
        directions: match args.mode {
            Mode::Connect => 0,
            _ => traffic.directions(),
        },
    };
    Ok(Plan {
        // Connect mode sends no benchmark message: one record, size 0.
        sizes: match args.mode {
            Mode::Connect => vec![0],
            _ => args.sizes.clone(),
        },
        mode: args.mode,
        shape: Shape {
            connections,
            window,
            traffic,
            policy: args.policy,
            client_ip: None,
        },
        run_shape,
        load: Load {
            warmup: args.warmup,
            count: args.count,
            duration: args.duration.map(Duration::from_secs_f64),
            rate: args.rate,
        },
        workers,
        server,
        choice,
    })
}

/// Worker threads `threads`, pinned to `cpus` if any are given.
fn worker_config(threads: usize, cpus: &[usize], name: &str, spin_us: u64) -> WorkerConfig {
    let mut wc = WorkerConfig {
        threads,
        pin_cores: !cpus.is_empty(),
        cores: cpus.to_vec(),
        name_prefix: name.to_string(),
        ..WorkerConfig::default()
    };
    wc.loop_config.spin_before_sleep = (spin_us > 0).then(|| Duration::from_micros(spin_us));
    wc
}

/// The CPUs `wc`'s workers will be pinned to.
fn pinned(wc: &WorkerConfig) -> Vec<usize> {
    wc.core_plan().into_iter().flatten().map(|c| c.id).collect()
}

/// A benchmark run on the chosen stack ([`with_client`]); its output is the device the stack ran on.
struct ClientRun<'a> {
    plan: &'a Plan,
    faults: FaultConfig,
    wcs: (WorkerConfig, WorkerConfig),
    security: &'a security::Security,
    body: &'a mut dyn FnMut(&mut dyn driver::Runner) -> Result<(), BenchError>,
}

impl StackFn for ClientRun<'_> {
    /// The device the stack ran on, and the in-process server's counters.
    type Output = Result<(Option<String>, Option<report::Counters>), BenchError>;

    fn call<N: NetworkStack>(self, mut stacks: Stacks<'_, N>) -> Self::Output {
        // The in-process server listens on the stack's own address (RDMA), else on loopback.
        let ip = stacks.choice().own_ip();
        let bind = SocketAddr::new(ip.unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()), 0);
        let counters = with_client(
            &mut stacks,
            bind,
            self.plan,
            self.faults,
            self.wcs,
            self.security,
            self.body,
        )?;
        Ok((stacks.device().map(str::to_string), counters))
    }
}

/// The local address a kernel socket to `server` would leave from (for a client that binds).
fn route_ip(server: &AddrVec) -> Option<std::net::IpAddr> {
    let to = server.0.first()?.sockaddr?;
    let any: SocketAddr = match to {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let probe = std::net::UdpSocket::bind(any).ok()?;
    probe.connect(to).ok()?;
    Some(probe.local_addr().ok()?.ip())
}

/// Starts the in-process server on a stack from `stacks` listening on `bind` (unless `plan` names a
/// server), connects the client (on another stack from `stacks`, behind a [`FaultStack`] with
/// `faults` if any), hands it to `body`, then shuts the client down and the server after it, returning
/// the in-process server's counters.
fn with_client<N: NetworkStack>(
    stacks: &mut Stacks<'_, N>,
    bind: SocketAddr,
    plan: &Plan,
    faults: FaultConfig,
    (server_wc, client_wc): (WorkerConfig, WorkerConfig),
    security: &security::Security,
    body: &mut dyn FnMut(&mut dyn driver::Runner) -> Result<(), BenchError>,
) -> Result<Option<report::Counters>, BenchError> {
    let stack_name = &plan.run_shape.stack;
    let set_up = |e: String| BenchError::Failed(format!("{stack_name} set-up: {e}"));
    let mut new_stack = || stacks.build().map_err(|e| set_up(e.to_string()));
    // The in-process server, unless one was named; dropped (stopped) after the client.
    let local = match &plan.server {
        Some(_) => None,
        None => Some(
            BenchServer::start(
                new_stack()?,
                &[bind],
                server_wc,
                rand::random::<u32>() | 1,
                security,
            )
            .map_err(|e| BenchError::Failed(format!("{stack_name} server on {bind}: {e}")))?,
        ),
    };
    let target = match (&plan.server, &local) {
        (Some((_, addrs)), _) => addrs.clone(),
        (None, Some(s)) => s.addrs().clone(),
        (None, None) => return Err(BenchError::Failed("no server".into())),
    };
    let stack = new_stack()?;
    let mut shape = plan.shape;
    // A client that binds: on the stack's own address (rdma), on the server's if it is ours, else on
    // the address the route to the server leaves from.
    shape.client_ip = stacks
        .choice()
        .own_ip()
        .or(local.as_ref().map(|_| bind.ip()))
        .or_else(|| route_ip(&target));
    let connect = |stack, wc| match plan.mode {
        Mode::Connect => connect::Dialer::boxed(stack, wc, &target, shape, security),
        _ => driver::Client::boxed(stack, wc, &target, shape, security),
    };
    let mut client = match faults.is_active() {
        false => connect(stack, client_wc),
        true => match plan.mode {
            Mode::Connect => connect::Dialer::boxed(
                FaultStack::new(stack, faults),
                client_wc,
                &target,
                shape,
                security,
            ),
            _ => driver::Client::boxed(
                FaultStack::new(stack, faults),
                client_wc,
                &target,
                shape,
                security,
            ),
        },
    }
    .map_err(set_up)?;
    let outcome = body(&mut *client);
    client.shutdown();
    let counters = local
        .as_ref()
        .map(|s| report::Counters::from(&s.messenger().counters()));
    drop(local);
    outcome.map(|()| counters)
}

/// What the run learns from the client and the server before and after the sizes.
#[derive(Default)]
struct Learned {
    server_policy: Option<String>,
    memory: Option<report::SessionMemory>,
    client_counters: Option<report::Counters>,
}

impl Learned {
    /// Asks the server for its stats once every connection is up: the policy it applied (which must
    /// be the one asked for) and, in fan-in, its memory per idle session.
    fn first_stats(
        &mut self,
        client: &mut dyn driver::Runner,
        plan: &Plan,
        out: &mut dyn Write,
    ) -> Result<(), BenchError> {
        let Some(stats) = client.server_stats().map_err(BenchError::Failed)? else {
            return Ok(());
        };
        if let Some(p) = &stats.policy {
            if *p != plan.run_shape.policy {
                return Err(BenchError::Failed(format!(
                    "the server applied policy {p} to a --policy {} client",
                    plan.run_shape.policy
                )));
            }
        }
        self.server_policy = stats.policy.clone();
        if plan.mode == Mode::Fanin {
            if let (Some(before), Some(after)) = (stats.rss_at_start_bytes, stats.rss_bytes) {
                let sessions = plan.shape.connections;
                let m = report::SessionMemory {
                    scope: if stats.pid == std::process::id() {
                        "client and server".into()
                    } else {
                        "server process".into()
                    },
                    sessions,
                    rss_before_bytes: before,
                    rss_after_bytes: after,
                    bytes_per_session: after.saturating_sub(before) as f64 / sessions as f64,
                };
                let _ = writeln!(
                    out,
                    "# RSS ({}): {:.1} MiB at start, {:.1} MiB with {sessions} idle sessions: {:.1} KiB per session",
                    m.scope,
                    before as f64 / 1048576.0,
                    after as f64 / 1048576.0,
                    m.bytes_per_session / 1024.0
                );
                self.memory = Some(m);
            }
        }
        Ok(())
    }
}

/// Runs the benchmark described by `args` (against `server`, an address, when given; else against a
/// server in this process), writing the table to `out` as each size completes (write errors on `out` are
/// ignored: a closed pipe does not stop the run), then the JSON and SVG files if asked.
pub fn run_to(
    args: &BenchArgs,
    server: Option<&str>,
    out: &mut dyn Write,
) -> Result<Report, BenchError> {
    let mut plan = plan(args, server)?;
    let started = Instant::now();
    let create = |path: &PathBuf| {
        std::fs::File::create(path)
            .map_err(|e| BenchError::Failed(format!("cannot write {}: {e}", path.display())))
    };
    let json_file = match &args.json {
        Some(path) => Some((path, create(path)?)),
        None => None,
    };
    if let Some(path) = &args.svg {
        create(path)?;
    }
    // Sockets in this process: one per connection, two with the server here; plus the stats link.
    // When both ends do not fit one process's hard limit, the server runs in a child process.
    let mut child_server = None;
    let open_files = match args.stack {
        BenchStack::Net(kind @ (StackKind::Posix | StackKind::Rdma)) => {
            let conns = plan.shape.connections + 1;
            let each = if plan.server.is_some() { 1 } else { 2 };
            let need = limits::needed(conns, each);
            let got = match limits::ensure_open_files(need) {
                Ok(got) => got,
                Err(_) if each == 2 && kind == StackKind::Posix => {
                    let got = limits::ensure_open_files(limits::needed(conns, 1))
                        .map_err(BenchError::Failed)?;
                    let child = child::ServeChild::spawn(plan.workers, &args.server_cpus)?;
                    let _ = writeln!(
                        out,
                        "# both ends in one process need about {need} open files, more than the hard \
                         limit (RLIMIT_NOFILE) allows: the server runs in a child process (msgr bench \
                         serve) on {}",
                        child.addr
                    );
                    let t = crate::recon::parse_target(&child.addr).map_err(BenchError::Failed)?;
                    plan.server = Some((
                        t.to_string(),
                        AddrVec(vec![EntityAddr::msgr2(t.addr, t.nonce)]),
                    ));
                    child_server = Some(child);
                    got
                }
                Err(e) => return Err(BenchError::Failed(e)),
            };
            if let Some(line) = got.report(&format!(" for {} connections", plan.shape.connections))
            {
                let _ = writeln!(out, "{line}");
            }
            got.limit
        }
        _ => None,
    };

    let mut client_wc = worker_config(
        plan.workers,
        &args.client_cpus,
        "bench-client",
        args.spin_us,
    );
    let mut server_wc = worker_config(
        plan.workers,
        &args.server_cpus,
        "bench-server",
        args.spin_us,
    );
    if args.stack == BenchStack::Net(StackKind::Rdma) {
        rdma::tune(&mut client_wc);
        rdma::tune(&mut server_wc);
    }
    let mem = args.stack == BenchStack::Mem;
    let mut header = Header::describe(
        &plan.run_shape,
        RunInfo {
            processes: if plan.server.is_some() { "two" } else { "one" },
            server_addr: plan.server.as_ref().map(|s| s.0.clone()),
            workers: if mem { 0 } else { plan.workers },
            server_workers: (!mem && plan.server.is_none()).then_some(plan.workers),
            client_cpus: Cpus::of_this_process(&pinned(&client_wc)),
            server_cpus: (!mem && plan.server.is_none())
                .then(|| Cpus::of_this_process(&pinned(&server_wc))),
            count: args.count,
            duration_s: args.duration,
            inject_delay_ms: args.inject_delay_ms,
            inject_socket_failures: args.inject_socket_failures,
            open_files_limit: open_files,
        },
    );
    header.conn_mode = args.con_mode.name().to_string();
    header.spin_us = (args.spin_us > 0).then_some(args.spin_us);
    if args.spin_us > 0 {
        let _ = writeln!(
            out,
            "# workers poll {} µs after their last work before sleeping (--spin-us)",
            args.spin_us
        );
    }
    let _ = out.write_all(
        report::table_header(&plan.run_shape, args.count, plan.load.duration).as_bytes(),
    );
    let _ = out.flush();

    let mut results = Vec::with_capacity(args.sizes.len());
    let mut record = |size: usize, m: Measured, wire: usize, out: &mut dyn Write| {
        let mut r = SizeResult::from_histogram(&plan.run_shape, size, wire, &m.hist, m.elapsed);
        r.pacer_lag_max_ns = m
            .pacer_lag
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        r.set_cpu(m.client_cpu, m.server_cpu);
        r.set_frames(m.client_frames);
        let _ = out.write_all(report::table_row(&r).as_bytes());
        let _ = out.flush();
        results.push(r);
    };
    let failed = |size: usize, e: String| {
        BenchError::Failed(format!(
            "{} {} at size {}: {e}",
            plan.run_shape.stack,
            plan.run_shape.mode,
            format_size(size)
        ))
    };
    let security = security::Security::new(args.con_mode);
    let mut progress = progress::Progress::new(true);
    let mut learned = Learned::default();
    let mut sizes = |client: &mut dyn driver::Runner| -> Result<(), BenchError> {
        learned.first_stats(client, &plan, out)?;
        let outcome = (|| {
            for &size in &plan.sizes {
                let msg = latency::traffic_message(size, plan.shape.traffic);
                progress.label(&format_size(size));
                let m = client
                    .run(&msg, &plan.load, &mut progress)
                    .map_err(|e| failed(size, e))?;
                let wire = match plan.mode {
                    Mode::Connect => 0,
                    _ => latency::wire_bytes(&msg),
                };
                record(size, m, wire, out);
            }
            Ok(())
        })();
        learned.client_counters = Some(report::Counters::from(&client.counters()));
        outcome
    };
    let faults = FaultConfig {
        read_delay: args
            .inject_delay_ms
            .map_or(Duration::ZERO, |ms| Duration::from_secs_f64(ms / 1000.0)),
        socket_failure_one_in: args.inject_socket_failures.unwrap_or(0),
        seed: rand::random(),
    };
    let wcs = (server_wc, client_wc);
    match (args.stack, &plan.choice) {
        (BenchStack::Mem, _) => {
            let mut pp = latency::MemPingPong::new(&security).map_err(BenchError::Failed)?;
            for &size in &plan.sizes {
                let msg = latency::bench_message(size);
                let m = pp
                    .run(&msg, args.warmup, args.count)
                    .map_err(|e| failed(size, e))?;
                record(size, m, latency::wire_bytes(&msg), out);
            }
        }
        (_, Some(choice)) => {
            let (device, server_counters) = choice.run(ClientRun {
                plan: &plan,
                faults,
                wcs,
                security: &security,
                body: &mut sizes,
            })?;
            header.server_counters = server_counters;
            match choice.kind() {
                StackKind::Posix => {}
                StackKind::Rdma => header.device = device,
                // `bench run ADDR --stack dpdk`: this end's link and configuration.
                StackKind::Dpdk => {
                    header.link = device.map(|d| d.trim_start_matches("net_").to_string());
                    header.stack_args = choice.dpdk_args(&args.stack_options).map(str::to_string);
                }
            }
        }
        // The one-command dpdk run: its own link, server and client.
        (_, None) => {
            let (server_wc, client_wc) = wcs;
            let session = dpdk::start(args, plan.shape, client_wc, server_wc, &security)?;
            session.describe(&mut header);
            let dpdk::Session {
                mut client, server, ..
            } = session;
            let outcome = sizes(&mut *client);
            client.shutdown();
            drop(server);
            outcome?
        }
    }

    header.server_policy = learned.server_policy;
    header.client_counters = learned.client_counters;
    header.memory = learned.memory;
    drop(child_server);
    header.finish(started.elapsed());
    let report = Report { header, results };
    if let Some((path, mut file)) = json_file {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| BenchError::Failed(format!("JSON report: {e}")))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.flush())
            .map_err(|e| BenchError::Failed(format!("cannot write {}: {e}", path.display())))?;
    }
    if let Some(path) = &args.svg {
        plot::write_svg(&report, path).map_err(BenchError::Failed)?;
    }
    Ok(report)
}
