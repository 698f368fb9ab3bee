//! What a benchmark run reports: a [`Header`] describing the run and the machine, one [`SizeResult`] per
//! message size, the text table and the JSON file.
//!
//! Invariants: every figure in a [`SizeResult`] comes from the measured (post-warm-up) samples only;
//! `msgs_per_sec` is `count / elapsed`, and `gbit_per_sec` counts payload bits in both directions
//! (a ping-pong moves `msg_size` bytes each way per round trip).

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::size::format_size;

/// A whole run: the header, then one record per message size in the order they were measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub header: Header,
    pub results: Vec<SizeResult>,
}

/// How and where the run was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// `CARGO_PKG_VERSION` of the msgr that ran.
    pub msgr_version: String,
    /// The build's git commit (`MSGR_GIT_COMMIT` at build time, else `git rev-parse HEAD` at run time).
    pub git_commit: Option<String>,
    pub stack: String,
    pub mode: String,
    /// Worker threads per messenger (posix); 0 for the in-memory pair, which has no threads.
    pub workers: usize,
    pub warmup: u64,
    pub count: u64,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: Option<String>,
    /// /proc/sys/kernel/osrelease.
    pub kernel: Option<String>,
    pub cpus: usize,
    /// Seconds since the Unix epoch when the run started.
    pub started_unix: u64,
}

/// The latency figures of one message size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SizeResult {
    pub stack: String,
    pub mode: String,
    /// Payload bytes per message.
    pub msg_size: usize,
    /// Bytes of one MESSAGE frame on the wire (preamble, header, payload, crcs, epilogue).
    pub wire_bytes: usize,
    /// Measured round trips (warm-up excluded).
    pub count: u64,
    pub warmup: u64,
    /// Wall time of the measured round trips, first send to last reply.
    pub elapsed_ns: u64,
    pub min_ns: u64,
    pub mean_ns: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
    /// Round trips per second (`count / elapsed`).
    pub msgs_per_sec: f64,
    /// Payload bits per second, both directions together.
    pub gbit_per_sec: f64,
}

impl SizeResult {
    /// Summarises `hist` (round-trip times in ns) for a run that took `elapsed`.
    pub fn from_histogram(
        stack: &str,
        mode: &str,
        msg_size: usize,
        wire_bytes: usize,
        warmup: u64,
        hist: &Histogram<u64>,
        elapsed: Duration,
    ) -> Self {
        let count = hist.len();
        let secs = elapsed.as_secs_f64();
        let msgs_per_sec = if secs > 0.0 { count as f64 / secs } else { 0.0 };
        SizeResult {
            stack: stack.to_string(),
            mode: mode.to_string(),
            msg_size,
            wire_bytes,
            count,
            warmup,
            elapsed_ns: u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            min_ns: hist.min(),
            mean_ns: hist.mean() as u64,
            p50_ns: hist.value_at_quantile(0.50),
            p90_ns: hist.value_at_quantile(0.90),
            p99_ns: hist.value_at_quantile(0.99),
            p999_ns: hist.value_at_quantile(0.999),
            max_ns: hist.max(),
            msgs_per_sec,
            gbit_per_sec: msgs_per_sec * 2.0 * msg_size as f64 * 8.0 / 1e9,
        }
    }
}

/// The table's title and column heads.
pub fn table_header(stack: &str, mode: &str, count: u64, warmup: u64) -> String {
    format!(
        "# {stack} {mode}: one message in flight, {count} round trips per size after {warmup} warm-up\n\
         # times are round trips in µs; Gbit/s counts payload in both directions\n\
         {:>6} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>8}\n",
        "size", "wire B", "count", "p50", "p90", "p99", "p99.9", "max", "msgs/s", "Gbit/s"
    )
}

/// One table row.
pub fn table_row(r: &SizeResult) -> String {
    let us = |ns: u64| ns as f64 / 1000.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>6} {:>8} {:>8} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10.0} {:>8.3}",
        format_size(r.msg_size),
        r.wire_bytes,
        r.count,
        us(r.p50_ns),
        us(r.p90_ns),
        us(r.p99_ns),
        us(r.p999_ns),
        us(r.max_ns),
        r.msgs_per_sec,
        r.gbit_per_sec
    );
    s
}

impl Header {
    /// A header for a run starting now, with what can be learned about this machine and build.
    pub fn describe_host(stack: &str, mode: &str, workers: usize, warmup: u64, count: u64) -> Self {
        Header {
            msgr_version: env!("CARGO_PKG_VERSION").to_string(),
            git_commit: git_commit(),
            stack: stack.to_string(),
            mode: mode.to_string(),
            workers,
            warmup,
            count,
            cpu_model: cpu_model(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
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

    #[test]
    fn summary_follows_the_histogram() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let r = SizeResult::from_histogram(
            "mem",
            "latency",
            4096,
            4200,
            10,
            &h,
            Duration::from_secs(2),
        );
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
        let row = table_row(&r);
        assert!(row.trim_start().starts_with("4k"), "{row}");
        assert!(row.contains("1000"), "{row}");
    }

    #[test]
    fn header_round_trips_through_json() {
        let h = Header::describe_host("posix", "latency", 1, 5, 50);
        assert_eq!(h.msgr_version, env!("CARGO_PKG_VERSION"));
        let r = Report {
            header: h,
            results: Vec::new(),
        };
        let json = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }
}
