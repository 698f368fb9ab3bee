//! A real Ceph monitor for interop tests, started and stopped with scripts/ceph-mon.sh.
//!
//! [`CephMon`] owns one monitor and its directory: dropping it stops the monitor by pid (the script
//! checks `/proc/PID/cmdline` first) and removes the directory, also when the test panics; on a panic it
//! first prints the tail of the monitor's log so that CI failures can be diagnosed from the test output.
//!
//! [`ceph_available`] implements the MSGR_REQUIRE_CEPH convention: without `ceph-mon` a test is skipped
//! with a loud note, unless MSGR_REQUIRE_CEPH=1 (set by ci/test.sh), where it fails.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

/// Lines of the monitor log shown when a test fails.
const LOG_TAIL_LINES: usize = 60;

/// Whether `cmd` is an executable file on PATH.
pub fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

/// True if ceph-mon and the ceph CLI are installed. Otherwise: panics if MSGR_REQUIRE_CEPH=1, else
/// prints a loud note naming `test` and returns false (the caller returns, skipping the test).
pub fn ceph_available(test: &str) -> bool {
    if on_path("ceph-mon") && on_path("ceph") && on_path("monmaptool") && on_path("ceph-authtool") {
        return true;
    }
    let msg = "ceph-mon / ceph / monmaptool not installed \
               (apt-get install --no-install-recommends ceph-mon ceph-common)";
    if std::env::var("MSGR_REQUIRE_CEPH").as_deref() == Ok("1") {
        panic!("MSGR_REQUIRE_CEPH=1 but {msg}");
    }
    eprintln!("\n!!!!!!!! NOTE: {msg}: SKIPPING {test} !!!!!!!!\n");
    false
}

/// A free loopback port in 21000..29000 (outside the usual ephemeral range), not in `avoid`.
pub fn free_port(avoid: &[u16]) -> u16 {
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let seed = u64::from(std::process::id())
        ^ u64::from(CALLS.fetch_add(1, Ordering::Relaxed)) << 32
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()));
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for _ in 0..200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 21_000 + (x % 8_000) as u16;
        if !avoid.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 21000..29000");
}

/// One running monitor ("mon.a") and its directory; stopped and removed on drop.
pub struct CephMon {
    script: PathBuf,
    dir: PathBuf,
    env: HashMap<String, String>,
    /// How long `ceph-mon.sh start` took.
    pub start_time: std::time::Duration,
}

impl CephMon {
    /// Start a monitor in a fresh temporary directory named after `tag`, with `args` for
    /// `ceph-mon.sh start` (ports, `--peer-mon`, `--debug-ms`). Panics with the script's output if it
    /// fails.
    pub fn start(tag: &str, args: &[String]) -> CephMon {
        Self::start_with(tag, args, &[])
    }

    /// [`CephMon::start`] with the script run under `wrapper` (e.g. `ip netns exec NS`, so the monitor
    /// lives in that network namespace; stopping goes by pid and works from anywhere).
    pub fn start_with(tag: &str, args: &[String], wrapper: &[&str]) -> CephMon {
        Self::start_in(&std::env::temp_dir(), tag, args, wrapper)
    }

    /// [`CephMon::start_with`] with the monitor's directory made under `parent` instead of the
    /// temporary directory (a filesystem the test prepared).
    pub fn start_in(parent: &Path, tag: &str, args: &[String], wrapper: &[&str]) -> CephMon {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ceph-mon.sh");
        let dir = parent.join(format!(
            "msgr-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        // From here on the guard owns the directory, even if starting fails.
        let mut mon = CephMon {
            script,
            dir,
            env: HashMap::new(),
            start_time: std::time::Duration::ZERO,
        };
        let t0 = Instant::now();
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg("bash");
                c
            }
            None => Command::new("bash"),
        };
        let out = cmd
            .arg(&mon.script)
            .arg("start")
            .arg(&mon.dir)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", mon.script.display()));
        mon.start_time = t0.elapsed();
        assert!(
            out.status.success(),
            "ceph-mon.sh start {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(mon.dir.join("env"))
            .unwrap_or_else(|e| panic!("read {}/env: {e}", mon.dir.display()));
        mon.env = env
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        mon
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A value from DIR/env (FSID, V2_ADDR, V1_ADDR, PID, MON_ADDRS, PEER_b_V2_ADDR, ...).
    pub fn env(&self, key: &str) -> &str {
        self.env.get(key).unwrap_or_else(|| {
            panic!(
                "{key} missing from {}/env: {:?}",
                self.dir.display(),
                self.env
            )
        })
    }

    /// A socket address from DIR/env (V2_ADDR, V1_ADDR, ...).
    pub fn sockaddr(&self, key: &str) -> SocketAddr {
        let v = self.env(key);
        v.parse()
            .unwrap_or_else(|e| panic!("{key}={v} is not an address: {e}"))
    }

    /// The last `lines` lines of the monitor's log (empty if there is none yet).
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.dir.join("log/ceph-mon.a.log");
        let text = std::fs::read(&log).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Whether the monitor process still runs (`ceph-mon.sh status`).
    pub fn is_running(&self) -> bool {
        Command::new("bash")
            .arg(&self.script)
            .arg("status")
            .arg(&self.dir)
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for CephMon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- last {LOG_TAIL_LINES} lines of {}/log/ceph-mon.a.log:\n{}\n---",
                self.dir.display(),
                self.log_tail(LOG_TAIL_LINES)
            );
        }
        let out = Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "ceph-mon.sh stop {} failed: {}",
                self.dir.display(),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("ceph-mon.sh stop: {e}"),
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
