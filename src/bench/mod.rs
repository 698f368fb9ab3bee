//! `msgr bench`: the benchmark harness.
//!
//! Owns the benchmark modes, their drivers and what they report. Today one mode exists, `latency`
//! ([`latency`]): ping-pong with one message in flight, per message size, over the posix stack on
//! loopback or over the in-memory protocol pair. Results are hdrhistogram percentiles, printed as a table
//! and optionally written as JSON ([`Report`]).
//!
//! Layout, ready for the full harness: [`BenchArgs`] is the command line, [`run`] picks the driver for
//! the mode and stack, drivers return [`latency::Measured`] samples, [`report`] turns them into
//! [`SizeResult`]s, the table and the JSON. Throughput (streaming) and fan-in modes, `--svg` plots and the
//! side-by-side comparison script plug in as further modes and outputs; until they exist they are
//! refused as usage errors, never approximated.
//!
//! Invariants: warm-up samples never reach a histogram; every record in a report has the count asked
//! for; the JSON file is opened before the run, so a bad path fails in a second, not after the run.

pub mod latency;
pub mod report;
pub mod size;

use std::io::Write;
use std::path::PathBuf;

pub use latency::EchoDispatcher;
pub use report::{Header, Report, SizeResult};
pub use size::{format_size, parse_size, parse_sizes};

/// Exit status for a benchmark that could not run or failed part way.
pub const EXIT_FAIL: i32 = 1;
/// Exit status for bad usage (including modes not built yet).
pub const EXIT_USAGE: i32 = 2;

/// Largest `--workers`.
pub const MAX_WORKERS: usize = 64;

/// `msgr bench [--stack posix|mem] [--mode latency] [--sizes 64,4k,64k] [--count N] [--warmup N]
/// [--workers N] [--json FILE]`
#[derive(clap::Args, Debug, Clone)]
#[command(
    about = "Measure the messenger: latency percentiles per message size",
    long_about = "Measure the messenger: latency percentiles per message size.\n\n\
Latency mode plays ping-pong with exactly one message in flight: a client sends a message of each \
size, an echo server sends the same bytes back, and every round trip is recorded (in ns, in an \
hdrhistogram). With --stack posix both ends are messengers in this process, talking msgr2.1 over \
TCP on 127.0.0.1; with --stack mem they are the protocol state machines wired back to back in memory \
(no sockets, no threads: the cost of the protocol alone).\n\n\
For each size the table shows the round trips measured (warm-up excluded), p50/p90/p99/p99.9/max \
round-trip time in µs, round trips per second, and payload Gbit/s counting both directions. \
--json FILE also writes them, with a header describing the build and the machine.",
    after_help = "Examples:\n  \
msgr bench\n  \
msgr bench --stack mem --sizes 64,4k,64k,1m --count 100000\n  \
msgr bench --stack posix --sizes 4k --count 50000 --warmup 5000 --json posix-4k.json"
)]
pub struct BenchArgs {
    /// Network stack: posix (kernel TCP over loopback) or mem (in-memory protocol pair).
    #[arg(long, value_enum, default_value_t = StackKind::Posix)]
    pub stack: StackKind,

    /// What to measure. Only latency is built so far.
    #[arg(long, value_enum, default_value_t = Mode::Latency)]
    pub mode: Mode,

    /// Message payload sizes, comma-separated: bytes, or with k (KiB) / m (MiB), e.g. 64,4k,64k,1m.
    #[arg(long, value_name = "SIZE,...", value_delimiter = ',', value_parser = parse_size,
          default_value = "64,4k,64k")]
    pub sizes: Vec<usize>,

    /// Round trips measured per size.
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub count: u64,

    /// Round trips per size before measuring (not recorded).
    #[arg(long, value_name = "N", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(0..=1_000_000_000))]
    pub warmup: u64,

    /// Worker threads per messenger (posix; the in-memory pair has none).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=MAX_WORKERS as u64))]
    pub workers: u64,

    /// Also write the results as JSON to FILE (a header plus one record per size).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// Stacks `msgr bench` runs over.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackKind {
    /// Kernel TCP over 127.0.0.1, a server and a client messenger in this process.
    Posix,
    /// The protocol state machines back to back in memory: no sockets, no threads.
    Mem,
}

impl StackKind {
    pub fn name(self) -> &'static str {
        match self {
            StackKind::Posix => "posix",
            StackKind::Mem => "mem",
        }
    }
}

/// Benchmark modes.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Ping-pong, one message in flight: round-trip percentiles.
    Latency,
    /// Streaming, many messages in flight: throughput (not yet implemented).
    Throughput,
    /// Many client connections into one server (not yet implemented).
    Fanin,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Latency => "latency",
            Mode::Throughput => "throughput",
            Mode::Fanin => "fanin",
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

impl BenchError {
    pub fn exit_code(&self) -> i32 {
        match self {
            BenchError::Usage(_) => EXIT_USAGE,
            BenchError::Failed(_) => EXIT_FAIL,
        }
    }
}

/// Runs the benchmark, printing the table to stdout; see [`run_to`].
pub fn run(args: &BenchArgs) -> Result<Report, BenchError> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    run_to(args, &mut out)
}

/// Runs the benchmark described by `args`, writing the table to `out` as each size completes (write
/// errors on `out` are ignored: a closed pipe does not stop the run), and the JSON file if asked.
pub fn run_to(args: &BenchArgs, out: &mut dyn Write) -> Result<Report, BenchError> {
    if args.mode != Mode::Latency {
        return Err(BenchError::Usage(format!(
            "--mode {} is not yet implemented in this build (available: latency)",
            args.mode.name()
        )));
    }
    if args.sizes.is_empty() {
        return Err(BenchError::Usage("no message size given (--sizes)".into()));
    }
    if args.count == 0 {
        return Err(BenchError::Usage("--count must be at least 1".into()));
    }
    let workers = usize::try_from(args.workers)
        .ok()
        .filter(|w| (1..=MAX_WORKERS).contains(w))
        .ok_or_else(|| BenchError::Usage(format!("--workers: expected 1..={MAX_WORKERS}")))?;
    let json_file = match &args.json {
        Some(path) => Some((
            path,
            std::fs::File::create(path)
                .map_err(|e| BenchError::Failed(format!("cannot write {}: {e}", path.display())))?,
        )),
        None => None,
    };

    let stack = args.stack.name();
    let mode = args.mode.name();
    let header = Header::describe_host(
        stack,
        mode,
        if args.stack == StackKind::Mem {
            0
        } else {
            workers
        },
        args.warmup,
        args.count,
    );
    let _ = out.write_all(report::table_header(stack, mode, args.count, args.warmup).as_bytes());
    let _ = out.flush();

    let mut results = Vec::with_capacity(args.sizes.len());
    let mut record = |size: usize, m: latency::Measured, wire: usize, out: &mut dyn Write| {
        let r =
            SizeResult::from_histogram(stack, mode, size, wire, args.warmup, &m.hist, m.elapsed);
        let _ = out.write_all(report::table_row(&r).as_bytes());
        let _ = out.flush();
        results.push(r);
    };
    let failed = |size: usize, e: String| {
        BenchError::Failed(format!("{stack} {mode} at size {}: {e}", format_size(size)))
    };
    match args.stack {
        StackKind::Mem => {
            let mut pp = latency::MemPingPong::new().map_err(BenchError::Failed)?;
            for &size in &args.sizes {
                let msg = latency::bench_message(size);
                let m = pp
                    .run(&msg, args.warmup, args.count)
                    .map_err(|e| failed(size, e))?;
                record(size, m, latency::wire_bytes(&msg), out);
            }
        }
        StackKind::Posix => {
            let mut pp = latency::PosixPingPong::new(workers)
                .map_err(|e| BenchError::Failed(format!("posix loopback set-up: {e}")))?;
            for &size in &args.sizes {
                let msg = latency::bench_message(size);
                let m = pp
                    .run(&msg, args.warmup, args.count)
                    .map_err(|e| failed(size, e))?;
                record(size, m, latency::wire_bytes(&msg), out);
            }
            pp.shutdown();
        }
    }

    let report = Report { header, results };
    if let Some((path, mut file)) = json_file {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| BenchError::Failed(format!("JSON report: {e}")))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.flush())
            .map_err(|e| BenchError::Failed(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(report)
}
