//! What a benchmark run reports: a [`Header`] describing the run and the machine, one [`SizeResult`] per
//! message size, the text table and the JSON file.
//!
//! Invariants: every figure in a [`SizeResult`] comes from the measured (post-warm-up) samples only;
//! `msgs_per_sec` is `count / elapsed`; `gbit_per_sec` counts payload bits in every direction the payload
//! crosses (`directions`: 2 for echoed modes, latency and fan-in; 1 for streamed throughput).

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::size::format_size;

/// Quantiles kept in each record's `percentiles` (what the latency plot draws), besides min and max.
pub const PLOT_QUANTILES: [f64; 12] = [
    0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99995, 0.99999, 0.999999,
];

/// A whole run: the header, then one record per message size in the order they were measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub header: Header,
    pub results: Vec<SizeResult>,
}

/// The CPUs one side ran on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Cpus {
    /// CPUs the workers were pinned to, one per worker in order (empty: not pinned).
    pub pinned: Vec<usize>,
    /// CPUs the process was allowed to run on (its affinity mask, e.g. from taskset).
    pub allowed: Vec<usize>,
}

impl Cpus {
    /// The pinning asked for, with this process's affinity mask.
    pub fn of_this_process(pinned: &[usize]) -> Self {
        Cpus {
            pinned: pinned.to_vec(),
            allowed: core_affinity::get_core_ids()
                .map(|ids| ids.into_iter().map(|c| c.id).collect())
                .unwrap_or_default(),
        }
    }
}

/// How and where the run was made: enough to reproduce a figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// `CARGO_PKG_VERSION` of the msgr that ran.
    pub msgr_version: String,
    /// The build's git commit (`MSGR_GIT_COMMIT` at build time, else `git rev-parse HEAD` at run time).
    pub git_commit: Option<String>,
    pub stack: String,
    /// The device a kernel-bypass stack ran on (rdma: the verbs device); `None` for posix and mem.
    pub device: Option<String>,
    /// Kernel-bypass stacks: the link under the stack (dpdk: `memif`, `tap`, or the port's driver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// Kernel-bypass stacks: the client's effective stack arguments (dpdk: `--dpdk-args`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_args: Option<String>,
    pub mode: String,
    /// Session policy (`--policy`): `lossy`, `lossless` or `lossless-peer`.
    pub policy: String,
    /// The policy the server says it applied to the client's connection; `None` if it did not say
    /// (a server without stats, or the in-memory pair).
    pub server_policy: Option<String>,
    /// msgr2 connection mode (`crc`; `secure` needs cephx).
    pub conn_mode: String,
    /// `one` (server and client in this process) or `two` (`msgr bench run ADDR` against a server).
    pub processes: String,
    /// The server's address when it runs in another process.
    pub server_addr: Option<String>,
    /// Client worker threads; 0 for the in-memory pair, which has no threads.
    pub workers: usize,
    /// Server worker threads, when the server runs in this process.
    pub server_workers: Option<usize>,
    pub client_cpus: Cpus,
    /// Known when the server runs in this process.
    pub server_cpus: Option<Cpus>,
    pub connections: usize,
    /// Messages in flight per connection.
    pub window: usize,
    /// Paced runs: messages per second offered over all connections.
    pub rate: Option<f64>,
    pub warmup: u64,
    /// Messages measured per size (when not duration-bound).
    pub count: u64,
    /// Seconds measured per size, when duration-bound.
    pub duration_s: Option<f64>,
    /// Injected read delay on the client side (fault injection), ms.
    pub inject_delay_ms: Option<f64>,
    /// Injected socket failures on the client side: one read/write in this many fails.
    pub inject_socket_failures: Option<u32>,
    /// The open-file limit (RLIMIT_NOFILE, soft) the run had, after raising it if it had to.
    pub open_files_limit: Option<u64>,
    /// posix: µs the client's (and an in-process server's) workers poll after their last work before
    /// sleeping (`--spin-us`); absent when they sleep at once.
    pub spin_us: Option<u64>,
    /// The client messenger's counters at the end of the run.
    pub client_counters: Option<Counters>,
    /// The in-process server's counters at the end of the run.
    pub server_counters: Option<Counters>,
    /// Server memory per idle session, measured once all connections were up (before any traffic).
    pub memory: Option<SessionMemory>,
    /// Wall time of the whole run (set-up, warm-up and every size), ns.
    pub wall_ns: u64,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: Option<String>,
    /// /proc/sys/kernel/osrelease.
    pub kernel: Option<String>,
    pub cpus: usize,
    /// /proc/loadavg (1, 5, 15 minutes) when the run started and when it ended: other load on the machine.
    pub loadavg_start: Option<[f64; 3]>,
    pub loadavg_end: Option<[f64; 3]>,
    /// Seconds since the Unix epoch when the run started.
    pub started_unix: u64,
}

/// A messenger's counters that tell what a run went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counters {
    pub msgs_in: u64,
    pub msgs_out: u64,
    pub handshakes: u64,
    pub reconnects: u64,
    /// Messages sent again after a fault (lossless replay).
    pub replayed: u64,
    pub duplicates_dropped: u64,
    /// Sessions that ended (lossy faults).
    pub resets: u64,
    pub transport_faults: u64,
    pub injected_faults: u64,
    pub accepted: u64,
    /// Frames received and sent (every tag), and the bare ACK frames among those sent.
    pub frames_in: u64,
    pub frames_out: u64,
    pub acks_out: u64,
}

impl From<&msgr::CountersSnapshot> for Counters {
    fn from(c: &msgr::CountersSnapshot) -> Self {
        Counters {
            msgs_in: c.msgs_in,
            msgs_out: c.msgs_out,
            handshakes: c.handshakes,
            reconnects: c.reconnects,
            replayed: c.replayed,
            duplicates_dropped: c.duplicates_dropped,
            resets: c.resets,
            transport_faults: c.transport_faults,
            injected_faults: c.injected_faults,
            accepted: c.accepted,
            frames_in: c.frames_in,
            frames_out: c.frames_out,
            acks_out: c.acks_out,
        }
    }
}

/// Resident memory per idle session: the RSS when the server started and once every session was up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionMemory {
    /// Whose RSS: `server process` (`bench run` against `bench serve`), or `client and server` (both in
    /// this process: the figure covers both ends of every session).
    pub scope: String,
    pub sessions: usize,
    pub rss_before_bytes: u64,
    pub rss_after_bytes: u64,
    /// (after - before) / sessions.
    pub bytes_per_session: f64,
}

/// One point of a latency distribution.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentile {
    /// Quantile, 0..=1.
    pub q: f64,
    pub ns: u64,
}

/// What a record's figures were measured under.
#[derive(Debug, Clone, PartialEq)]
pub struct RunShape {
    pub stack: String,
    pub mode: String,
    pub policy: String,
    pub warmup: u64,
    pub connections: usize,
    pub window: usize,
    pub rate: Option<f64>,
    /// Directions the payload crosses per message: 2 echoed, 1 streamed.
    pub directions: u32,
}

/// The figures of one message size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SizeResult {
    pub stack: String,
    pub mode: String,
    pub policy: String,
    /// Payload bytes per message.
    pub msg_size: usize,
    /// Bytes of one MESSAGE frame on the wire (preamble, header, payload, crcs, epilogue).
    pub wire_bytes: usize,
    pub connections: usize,
    pub window: usize,
    /// Paced runs: offered messages per second.
    pub rate: Option<f64>,
    /// Directions the payload crosses per message (2 echoed, 1 streamed), as counted in `gbit_per_sec`.
    pub directions: u32,
    /// Messages measured (warm-up excluded).
    pub count: u64,
    pub warmup: u64,
    /// Wall time of the measured messages: first send (paced: its intended time) to last reply.
    pub elapsed_ns: u64,
    pub min_ns: u64,
    pub mean_ns: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub p9999_ns: u64,
    pub max_ns: u64,
    /// Messages per second (`count / elapsed`), over all connections.
    pub msgs_per_sec: f64,
    /// Payload bits per second, every direction counted.
    pub gbit_per_sec: f64,
    /// The distribution at [`PLOT_QUANTILES`].
    pub percentiles: Vec<Percentile>,
    /// Paced runs: the pacer's largest lag behind its schedule (charged to the latencies; large values
    /// mean the load generator itself was starved of CPU).
    pub pacer_lag_max_ns: Option<u64>,
    /// CPU per message of the client's worker threads over the measured messages, µs (user, system),
    /// as netperf's service demand. The in-memory pair runs both ends on one thread: its figure is here.
    pub client_user_us_per_msg: Option<f64>,
    pub client_sys_us_per_msg: Option<f64>,
    /// The same for the server's worker threads; `None` when the server does not report it.
    pub server_user_us_per_msg: Option<f64>,
    pub server_sys_us_per_msg: Option<f64>,
    /// Frames the client messenger sent and received per measured message (every tag: MESSAGE, ACK,
    /// KEEPALIVE2), and the bare ACK frames among those sent; the server's are the mirror image. The
    /// counters are published once per worker loop turn, so an interval's edges may be off by a frame.
    pub client_frames_out_per_msg: Option<f64>,
    pub client_frames_in_per_msg: Option<f64>,
    pub client_acks_out_per_msg: Option<f64>,
}

impl SizeResult {
    /// Summarises `hist` (latencies in ns) for a run of `shape` that took `elapsed`.
    pub fn from_histogram(
        shape: &RunShape,
        msg_size: usize,
        wire_bytes: usize,
        hist: &Histogram<u64>,
        elapsed: Duration,
    ) -> Self {
        let count = hist.len();
        let secs = elapsed.as_secs_f64();
        let msgs_per_sec = if secs > 0.0 { count as f64 / secs } else { 0.0 };
        SizeResult {
            stack: shape.stack.clone(),
            mode: shape.mode.clone(),
            policy: shape.policy.clone(),
            msg_size,
            wire_bytes,
            connections: shape.connections,
            window: shape.window,
            rate: shape.rate,
            directions: shape.directions,
            count,
            warmup: shape.warmup,
            elapsed_ns: u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            min_ns: hist.min(),
            mean_ns: hist.mean() as u64,
            p50_ns: hist.value_at_quantile(0.50),
            p90_ns: hist.value_at_quantile(0.90),
            p99_ns: hist.value_at_quantile(0.99),
            p999_ns: hist.value_at_quantile(0.999),
            p9999_ns: hist.value_at_quantile(0.9999),
            max_ns: hist.max(),
            msgs_per_sec,
            gbit_per_sec: msgs_per_sec * f64::from(shape.directions) * msg_size as f64 * 8.0 / 1e9,
            percentiles: PLOT_QUANTILES
                .iter()
                .map(|&q| Percentile {
                    q,
                    ns: hist.value_at_quantile(q),
                })
                .collect(),
            pacer_lag_max_ns: None,
            client_user_us_per_msg: None,
            client_sys_us_per_msg: None,
            server_user_us_per_msg: None,
            server_sys_us_per_msg: None,
            client_frames_out_per_msg: None,
            client_frames_in_per_msg: None,
            client_acks_out_per_msg: None,
        }
    }

    /// Sets the frame figures from what the client messenger counted over this record's messages.
    pub fn set_frames(&mut self, frames: Option<super::driver::Frames>) {
        let Some(f) = frames.filter(|_| self.count > 0) else {
            return;
        };
        let per = |n: u64| Some(n as f64 / self.count as f64);
        self.client_frames_out_per_msg = per(f.sent);
        self.client_frames_in_per_msg = per(f.received);
        self.client_acks_out_per_msg = per(f.acks_sent);
    }

    /// Sets the CPU figures from the CPU each side used over this record's `count` messages.
    pub fn set_cpu(
        &mut self,
        client: Option<super::cpu::CpuTime>,
        server: Option<super::cpu::CpuTime>,
    ) {
        let count = self.count;
        let per = |c: Option<super::cpu::CpuTime>| c.and_then(|c| c.per_message_us(count));
        (self.client_user_us_per_msg, self.client_sys_us_per_msg) = per(client).unzip();
        (self.server_user_us_per_msg, self.server_sys_us_per_msg) = per(server).unzip();
    }
}

/// The table's title and column heads.
pub fn table_header(shape: &RunShape, count: u64, duration: Option<Duration>) -> String {
    let what = match shape.mode.as_str() {
        "latency" => "one message in flight, times are round trips".to_string(),
        "throughput" => format!(
            "{} connection(s) streaming, {} in flight each, times are send to ack",
            shape.connections, shape.window
        ),
        "connect" => format!(
            "{} concurrent dialers, each connect, full msgr2 handshake to ready, close; times are \
             connect to ready, msgs/s is handshakes/s, CPU is per handshake",
            shape.connections
        ),
        _ => format!(
            "{} client connections, {} in flight each, times are round trips under load",
            shape.connections, shape.window
        ),
    };
    let amount = match duration {
        Some(d) => format!("{:.1}s per size", d.as_secs_f64()),
        None => format!("{count} messages per size"),
    };
    let paced = shape
        .rate
        .map_or(String::new(), |r| format!(", paced at {r:.0} msgs/s"));
    format!(
        "# {} {} {}: {what}; {amount} after {} warm-up{paced}\n\
         # times in µs; Gbit/s counts payload in {}; CPU in µs per message, user and system, of the \
         client's (c) and the server's (s) worker threads\n\
         {:>6} {:>8} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11} {:>8} {:>6} {:>6} {:>6} {:>6}\n",
        shape.stack,
        shape.mode,
        shape.policy,
        shape.warmup,
        match shape.directions {
            2 => "both directions",
            1 => "one direction",
            _ => "no direction (no payload)",
        },
        "size",
        "wire B",
        "conns",
        "count",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max",
        "msgs/s",
        "Gbit/s",
        "c.usr",
        "c.sys",
        "s.usr",
        "s.sys"
    )
}

/// A CPU figure for the table: µs with two decimals, or `n/a`.
pub fn cpu_cell(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.2}"))
}

/// One table row.
pub fn table_row(r: &SizeResult) -> String {
    let us = |ns: u64| ns as f64 / 1000.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>6} {:>8} {:>5} {:>9} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>11.0} {:>8.3} {:>6} {:>6} {:>6} {:>6}",
        format_size(r.msg_size),
        r.wire_bytes,
        r.connections,
        r.count,
        us(r.p50_ns),
        us(r.p90_ns),
        us(r.p99_ns),
        us(r.p999_ns),
        us(r.max_ns),
        r.msgs_per_sec,
        r.gbit_per_sec,
        cpu_cell(r.client_user_us_per_msg),
        cpu_cell(r.client_sys_us_per_msg),
        cpu_cell(r.server_user_us_per_msg),
        cpu_cell(r.server_sys_us_per_msg)
    );
    s
}

/// What the caller knows of the run, for [`Header::describe`].
#[derive(Debug, Clone, Default)]
pub struct RunInfo {
    pub processes: &'static str,
    pub server_addr: Option<String>,
    pub workers: usize,
    pub server_workers: Option<usize>,
    pub client_cpus: Cpus,
    pub server_cpus: Option<Cpus>,
    pub count: u64,
    pub duration_s: Option<f64>,
    pub inject_delay_ms: Option<f64>,
    pub inject_socket_failures: Option<u32>,
    pub open_files_limit: Option<u64>,
}

impl Header {
    /// A header for a run of `shape` starting now, with what can be learned about this machine and
    /// build. `wall_ns` and `loadavg_end` are filled in when the run ends ([`Header::finish`]).
    pub fn describe(shape: &RunShape, info: RunInfo) -> Self {
        Header {
            msgr_version: env!("CARGO_PKG_VERSION").to_string(),
            git_commit: git_commit(),
            stack: shape.stack.clone(),
            device: None,
            link: None,
            stack_args: None,
            mode: shape.mode.clone(),
            policy: shape.policy.clone(),
            server_policy: None,
            conn_mode: "crc".into(),
            processes: info.processes.to_string(),
            server_addr: info.server_addr,
            workers: info.workers,
            server_workers: info.server_workers,
            client_cpus: info.client_cpus,
            server_cpus: info.server_cpus,
            connections: shape.connections,
            window: shape.window,
            rate: shape.rate,
            warmup: shape.warmup,
            count: info.count,
            duration_s: info.duration_s,
            inject_delay_ms: info.inject_delay_ms,
            inject_socket_failures: info.inject_socket_failures,
            open_files_limit: info.open_files_limit,
            spin_us: None,
            client_counters: None,
            server_counters: None,
            memory: None,
            wall_ns: 0,
            cpu_model: cpu_model(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            loadavg_start: loadavg(),
            loadavg_end: None,
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// Records the run's end: its wall time and the load average then.
    pub fn finish(&mut self, wall: Duration) {
        self.wall_ns = u64::try_from(wall.as_nanos()).unwrap_or(u64::MAX);
        self.loadavg_end = loadavg();
    }
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// The commit this binary was built from: `MSGR_GIT_COMMIT` if the build set it, else what
/// `git rev-parse HEAD` says in the source tree (if git and the tree are there).
fn git_commit() -> Option<String> {
    if let Some(c) = option_env!("MSGR_GIT_COMMIT").filter(|c| !c.is_empty()) {
        return Some(c.to_string());
    }
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let c = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !c.is_empty()).then_some(c)
}

fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == "model name")
        .map(|(_, v)| v.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(directions: u32) -> RunShape {
        RunShape {
            stack: "mem".into(),
            mode: "latency".into(),
            policy: "lossy".into(),
            warmup: 10,
            connections: 1,
            window: 1,
            rate: None,
            directions,
        }
    }

    #[test]
    fn summary_follows_the_histogram() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let r = SizeResult::from_histogram(&shape(2), 4096, 4200, &h, Duration::from_secs(2));
        assert_eq!(r.count, 1000);
        assert_eq!(r.msgs_per_sec, 500.0);
        assert!((r.gbit_per_sec - 500.0 * 2.0 * 4096.0 * 8.0 / 1e9).abs() < 1e-12);
        assert!(r.min_ns <= r.p50_ns && r.p50_ns <= r.p90_ns && r.p90_ns <= r.p99_ns);
        assert!(r.p99_ns <= r.p999_ns && r.p999_ns <= r.max_ns);
        // hdrhistogram keeps 3 significant digits.
        assert!(
            (r.p50_ns as f64 - 500_000.0).abs() / 500_000.0 < 0.002,
            "{}",
            r.p50_ns
        );
        assert_eq!(r.percentiles.len(), PLOT_QUANTILES.len());
        assert!(r.percentiles.windows(2).all(|w| w[0].ns <= w[1].ns));
        let row = table_row(&r);
        assert!(row.trim_start().starts_with("4k"), "{row}");
        assert!(row.contains("1000"), "{row}");
        // Streamed: payload counted once.
        let one = SizeResult::from_histogram(&shape(1), 4096, 4200, &h, Duration::from_secs(2));
        assert!((one.gbit_per_sec * 2.0 - r.gbit_per_sec).abs() < 1e-12);
    }

    #[test]
    fn header_round_trips_through_json() {
        let mut h = Header::describe(
            &shape(2),
            RunInfo {
                processes: "one",
                workers: 1,
                count: 50,
                ..RunInfo::default()
            },
        );
        h.finish(Duration::from_millis(3));
        assert_eq!(h.msgr_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(h.wall_ns, 3_000_000);
        let r = Report {
            header: h,
            results: Vec::new(),
        };
        let json = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn loadavg_reads_three_figures() {
        if std::path::Path::new("/proc/loadavg").exists() {
            let l = loadavg().expect("three load averages");
            assert!(l.iter().all(|v| *v >= 0.0), "{l:?}");
        }
    }
}
