//! CPU time and memory of the benchmark's own threads, read from /proc: the service demand (CPU µs per
//! message, as netperf reports it) of each side, and the resident set size for memory per session.
//!
//! A [`CpuSnapshot`] holds, per worker thread (found by its name, `{prefix}-{index}`), the time it ran
//! (`/proc/self/task/TID/schedstat`, ns) and its user and system clock ticks (`stat`, fields 14 and 15).
//! [`CpuSnapshot::since`] charges each thread's precise run time to user and system in the proportion
//! of its tick counts over the same interval (the kernel splits getrusage the same way).
//!
//! Invariants: snapshots are taken by the bench thread (or the server's dispatcher) around the measured
//! interval only, never per message; a thread missing from the earlier snapshot counts from zero; a file
//! that cannot be read or parsed leaves that thread out rather than inventing figures.

use serde::{Deserialize, Serialize};

/// One thread's CPU counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadCpu {
    pub tid: u32,
    /// Time on CPU, ns (schedstat); `None` when the kernel does not provide it.
    pub run_ns: Option<u64>,
    /// User and system clock ticks.
    pub utime: u64,
    pub stime: u64,
}

/// The CPU counters of a set of threads at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CpuSnapshot {
    pub threads: Vec<ThreadCpu>,
    /// `sysconf(_SC_CLK_TCK)` of the machine the snapshot was taken on.
    pub ticks_per_sec: u64,
}

/// User and system CPU time over an interval, ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTime {
    pub user_ns: u64,
    pub sys_ns: u64,
}

impl CpuTime {
    /// (user, system) µs per message for `count` messages.
    pub fn per_message_us(self, count: u64) -> Option<(f64, f64)> {
        (count > 0).then(|| {
            (
                self.user_ns as f64 / 1000.0 / count as f64,
                self.sys_ns as f64 / 1000.0 / count as f64,
            )
        })
    }
}

impl CpuSnapshot {
    /// The threads of this process named `{prefix}-…` (a messenger's workers).
    pub fn of_threads(prefix: &str) -> Self {
        let want = format!("{prefix}-");
        let mut threads = Vec::new();
        if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
            for entry in dir.flatten() {
                let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                    continue;
                };
                let path = entry.path();
                let named = std::fs::read_to_string(path.join("comm"))
                    .is_ok_and(|c| c.trim_end().starts_with(&want));
                if named {
                    if let Some(t) = read_thread(&path, tid) {
                        threads.push(t);
                    }
                }
            }
        }
        threads.sort_by_key(|t| t.tid);
        CpuSnapshot {
            threads,
            ticks_per_sec: rustix::param::clock_ticks_per_second(),
        }
    }

    /// The calling thread alone.
    pub fn of_this_thread() -> Self {
        let path = std::path::Path::new("/proc/thread-self");
        let tid = std::fs::read_to_string(path.join("stat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok());
        CpuSnapshot {
            threads: tid
                .and_then(|tid| read_thread(path, tid))
                .into_iter()
                .collect(),
            ticks_per_sec: rustix::param::clock_ticks_per_second(),
        }
    }

    /// CPU time the threads used between `earlier` and this snapshot; `None` if no thread was seen.
    pub fn since(&self, earlier: &CpuSnapshot) -> Option<CpuTime> {
        if self.threads.is_empty() || self.ticks_per_sec == 0 {
            return None;
        }
        let tick_ns = 1e9 / self.ticks_per_sec as f64;
        let mut total = CpuTime::default();
        for now in &self.threads {
            let before = earlier.threads.iter().find(|t| t.tid == now.tid);
            let (du, ds) = match before {
                Some(b) => (
                    now.utime.saturating_sub(b.utime),
                    now.stime.saturating_sub(b.stime),
                ),
                None => (now.utime, now.stime),
            };
            let run_ns = match (now.run_ns, before.map_or(Some(0), |b| b.run_ns)) {
                (Some(a), Some(b)) => a.saturating_sub(b),
                _ => ((du + ds) as f64 * tick_ns) as u64,
            };
            // The split: this interval's ticks, else the thread's whole life's, else all user.
            let (u, s) = match (du + ds, now.utime + now.stime) {
                (0, 0) => (1, 0),
                (0, _) => (now.utime, now.stime),
                _ => (du, ds),
            };
            let user = (run_ns as f64 * u as f64 / (u + s) as f64) as u64;
            total.user_ns = total.user_ns.saturating_add(user);
            total.sys_ns = total.sys_ns.saturating_add(run_ns.saturating_sub(user));
        }
        Some(total)
    }
}

/// One thread's counters from its /proc directory.
fn read_thread(dir: &std::path::Path, tid: u32) -> Option<ThreadCpu> {
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    // The name (field 2) is in parentheses and may hold spaces: fields count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ')': field 3 (state) is index 0, so utime (14) is index 11 and stime (15) index 12.
    let utime = fields.nth(11)?.parse().ok()?;
    let stime = fields.next()?.parse().ok()?;
    let run_ns = std::fs::read_to_string(dir.join("schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok());
    Some(ThreadCpu {
        tid,
        run_ns,
        utime,
        stime,
    })
}

/// This process's resident set size in bytes (/proc/self/statm).
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    pages.checked_mul(rustix::param::page_size() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_thread_burns_user_time() {
        let before = CpuSnapshot::of_this_thread();
        assert_eq!(before.threads.len(), 1, "{before:?}");
        let t0 = std::time::Instant::now();
        let mut x = 1u64;
        while t0.elapsed() < std::time::Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let used = CpuSnapshot::of_this_thread().since(&before).expect("cpu");
        assert!(
            used.user_ns + used.sys_ns >= 30_000_000,
            "a 60 ms busy loop used {used:?}"
        );
        assert!(used.user_ns > used.sys_ns, "{used:?}");
    }

    #[test]
    fn split_follows_the_interval_ticks() {
        let t = |run_ns, utime, stime| ThreadCpu {
            tid: 7,
            run_ns: Some(run_ns),
            utime,
            stime,
        };
        let a = CpuSnapshot {
            threads: vec![t(1_000, 10, 10)],
            ticks_per_sec: 100,
        };
        let b = CpuSnapshot {
            threads: vec![t(4_001_000, 13, 11)],
            ticks_per_sec: 100,
        };
        let d = b.since(&a).unwrap();
        assert_eq!((d.user_ns, d.sys_ns), (3_000_000, 1_000_000));
        assert_eq!(CpuSnapshot::default().since(&a), None);
        let per = d.per_message_us(1000).unwrap();
        assert!((per.0 - 3.0).abs() < 1e-9 && (per.1 - 1.0).abs() < 1e-9);
    }

    #[test]
    fn rss_is_positive() {
        assert!(rss_bytes().unwrap() > 0);
    }
}
