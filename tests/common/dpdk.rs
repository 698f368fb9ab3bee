//! Fixtures for the DPDK tests. The EAL can be initialised once per process, so every DPDK endpoint is a
//! child process: the test binary re-executes itself (`std::env::current_exe()`) with `MSGR_DPDK_CHILD`
//! naming the role. Children talk to the parent in lines on stdout (`MSGR <key> <value>`) and take
//! commands as lines on stdin. The test binaries use `harness = false`: `run_cases` plays libtest's part
//! and prints its summary line.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use msgr::proto::Config;
use msgr::stack::dpdk::DpdkStack;
use msgr::stack::fault::{FaultConfig, FaultStack};
use msgr::{Dispatcher, Messenger, MessengerConfig};

pub const CHILD_ENV: &str = "MSGR_DPDK_CHILD";

/// The role this process plays, when it is a child.
pub fn child_role() -> Option<String> {
    std::env::var(CHILD_ENV).ok()
}

/// A child's parameter (panics with a clear message when missing: a harness bug).
pub fn param(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("child needs {name}"))
}

/// Tell the parent something.
pub fn say(key: &str, value: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "MSGR {key} {value}");
    let _ = out.flush();
}

/// The next command line from the parent (empty at end of input).
pub fn command() -> String {
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    line.trim().to_string()
}

/// `--dpdk-args` for one end of a memif link. `role` is memif's (`server` creates the socket).
pub fn memif_args(ip: &str, mac: &str, role: &str, socket: &str, queues: u16) -> String {
    format!(
        "ip={ip}/24 queues={queues} link_wait_ms=20000 --no-huge --no-pci -m 256 \
         --vdev=net_memif0,role={role},id=0,socket={socket},socket-abstract=yes,mac={mac}"
    )
}

/// Wait until a process listens on the abstract unix socket `name` (a memif server role is up), so the
/// memif client role that starts next finds it.
pub fn wait_for_abstract_socket(name: &str, timeout: Duration) {
    let end = Instant::now() + timeout;
    let wanted = format!("@{name}");
    loop {
        let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
        if table
            .lines()
            .any(|l| l.split_whitespace().last() == Some(wanted.as_str()))
        {
            return;
        }
        assert!(Instant::now() < end, "memif socket {name} never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A messenger over a DPDK stack built from `args`, one worker per queue, busy-polling with a short
/// idle back-off (the CI machine is shared).
pub fn messenger(
    args: &str,
    proto: Config,
    dispatcher: Arc<dyn Dispatcher>,
) -> Messenger<DpdkStack> {
    let stack = DpdkStack::from_args(args).expect("dpdk stack");
    let cfg = messenger_config(proto, stack.queues());
    Messenger::new(stack, cfg, dispatcher)
}

/// `messenger`, with the fault stack over the DPDK stack injecting socket failures per `fault`.
pub fn fault_messenger(
    args: &str,
    proto: Config,
    fault: FaultConfig,
    dispatcher: Arc<dyn Dispatcher>,
) -> Messenger<FaultStack<DpdkStack>> {
    let stack = DpdkStack::from_args(args).expect("dpdk stack");
    let cfg = messenger_config(proto, stack.queues());
    Messenger::new(FaultStack::new(stack, fault), cfg, dispatcher)
}

fn messenger_config(proto: Config, queues: usize) -> MessengerConfig {
    let mut cfg = MessengerConfig::new(proto);
    cfg.workers.threads = queues;
    cfg.workers.loop_config.busy_poll_idle_spins = 256;
    cfg.workers.loop_config.idle_backoff = Duration::from_micros(200);
    cfg
}

/// A child process playing one role.
pub struct Child {
    name: String,
    proc: std::process::Child,
    lines: Receiver<String>,
}

impl Child {
    /// Start `current_exe()` as role `role` with extra environment `env`.
    pub fn spawn(name: &str, role: &str, env: &[(&str, String)]) -> Child {
        let exe = std::env::current_exe().expect("current_exe");
        Self::spawn_command(name, role, &mut Command::new(exe), env)
    }

    /// Start `cmd` (which must run `current_exe()`, e.g. under `ip netns exec`) as role `role`.
    pub fn spawn_command(
        name: &str,
        role: &str,
        cmd: &mut Command,
        env: &[(&str, String)],
    ) -> Child {
        cmd.env(CHILD_ENV, role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut proc = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdout = proc.stdout.take().expect("child stdout");
        let (tx, rx) = crossbeam_channel::unbounded();
        let tag = name.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("MSGR ") {
                    let _ = tx.send(rest.to_string());
                } else {
                    eprintln!("[{tag}] {line}");
                }
            }
        });
        Child {
            name: name.to_string(),
            proc,
            lines: rx,
        }
    }

    /// Wait for the child to say `key`; returns the value. Panics on timeout or if the child exits.
    pub fn expect(&mut self, key: &str, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let (k, v) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                    if k == key {
                        return v.to_string();
                    }
                    if k == "FAIL" {
                        panic!("{} failed: {v}", self.name);
                    }
                }
                Err(_) => {
                    let status = self.proc.try_wait().ok().flatten();
                    panic!(
                        "{}: no `{key}` within {timeout:?} (exit status {status:?})",
                        self.name
                    );
                }
            }
        }
    }

    /// Send a command line.
    pub fn send(&mut self, line: &str) {
        if let Some(stdin) = self.proc.stdin.as_mut() {
            let _ = writeln!(stdin, "{line}");
            let _ = stdin.flush();
        }
    }

    /// Wait for a clean exit.
    pub fn finish(mut self, timeout: Duration) {
        let end = Instant::now() + timeout;
        loop {
            if let Some(status) = self.proc.try_wait().expect("wait child") {
                self.remove_runtime_dir();
                assert!(status.success(), "{} exited with {status}", self.name);
                return;
            }
            assert!(
                Instant::now() < end,
                "{} did not exit within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Tell `self` to exit and wait for it, then the same for `other`. Two memif ends must not close
    /// at once: DPDK 22.11's memif driver can free a region twice (`EAL: Error: Invalid memory`, or
    /// SIGSEGV) when a port closes while its interrupt thread handles the peer's disconnect. One at
    /// a time, the second end has handled the first's disconnect, idle, before it closes.
    pub fn exit_before(mut self, mut other: Child, timeout: Duration) {
        self.send("exit");
        self.finish(timeout);
        other.send("exit");
        other.finish(timeout);
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
        self.remove_runtime_dir();
    }

    /// The EAL's (empty, with `--no-shconf`) runtime directory of a child that did not remove it.
    fn remove_runtime_dir(&self) {
        let _ = std::fs::remove_dir(format!("/var/run/dpdk/msgr-{}", self.proc.id()));
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.proc.try_wait() {
            self.kill();
        }
    }
}

/// Run a child role, reporting a panic to the parent as `FAIL` and exiting non-zero.
pub fn run_child(role: &str, body: impl FnOnce() + std::panic::UnwindSafe) -> ! {
    // MSGR_LOG=debug (an EnvFilter) shows the stack's and messenger's logs on stderr.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("MSGR_LOG"))
        .with_writer(std::io::stderr)
        .try_init();
    match std::panic::catch_unwind(body) {
        Ok(()) => {
            say("EXIT", role);
            std::process::exit(0)
        }
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            say("FAIL", format!("{role}: {msg}"));
            std::process::exit(1)
        }
    }
}

/// libtest's part for `harness = false` binaries: run the cases matching the command-line filter (all
/// without one), one after another, and print libtest's summary line. Exits non-zero if any failed.
pub fn run_cases(cases: &[(&str, fn())]) -> ! {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let selected: Vec<_> = cases
        .iter()
        .filter(|(name, _)| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str())))
        .collect();
    println!("\nrunning {} tests", selected.len());
    let (mut passed, mut failed) = (0, Vec::new());
    let start = Instant::now();
    for (name, case) in selected {
        let t0 = Instant::now();
        let ok = std::panic::catch_unwind(case).is_ok();
        println!(
            "test {name} ... {} ({:.1}s)",
            if ok { "ok" } else { "FAILED" },
            t0.elapsed().as_secs_f64()
        );
        if ok {
            passed += 1;
        } else {
            failed.push(*name);
        }
    }
    if !failed.is_empty() {
        println!("\nfailures:");
        for f in &failed {
            println!("    {f}");
        }
    }
    println!(
        "\ntest result: {}. {passed} passed; {} failed; 0 ignored; 0 measured; {} filtered out; finished in {:.2}s\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        failed.len(),
        cases.len() - passed - failed.len(),
        start.elapsed().as_secs_f64()
    );
    std::process::exit(if failed.is_empty() { 0 } else { 101 })
}

/// Run a command, panicking with its stderr if it fails (test set-up: `ip`, `ethtool`).
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace holding one end of a veth pair (`kernel_if`, address `kernel_ip`/24); the
/// other end (`dpdk_if`) stays here for DPDK. Deleted on drop (with the namespace goes its veth end,
/// and with it the pair).
pub struct Netns {
    pub name: String,
    pub dpdk_if: String,
    pub kernel_if: String,
}

impl Netns {
    /// Names are `msgr-{tag}-PID` and `{ifp}PIDa` / `{ifp}PIDb` (`ifp`: 3 letters, so the names fit
    /// IFNAMSIZ).
    pub fn create(tag: &str, ifp: &str, kernel_ip: &str) -> Netns {
        let id = std::process::id();
        let ns = Netns {
            name: format!("msgr-{tag}-{id}"),
            dpdk_if: format!("{ifp}{id}a"),
            kernel_if: format!("{ifp}{id}b"),
        };
        sh(&["ip", "netns", "add", &ns.name]);
        sh(&[
            "ip",
            "link",
            "add",
            &ns.dpdk_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.kernel_if,
        ]);
        sh(&["ip", "link", "set", &ns.kernel_if, "netns", &ns.name]);
        // No IPv6 chatter on the link, no kernel address on the DPDK end.
        let _ = Command::new("sysctl")
            .args([
                "-qw",
                &format!("net.ipv6.conf.{}.disable_ipv6=1", ns.dpdk_if),
            ])
            .status();
        sh(&["ip", "link", "set", &ns.dpdk_if, "up"]);
        ns.sh(&["ip", "link", "set", "lo", "up"]);
        ns.sh(&[
            "ip",
            "addr",
            "add",
            &format!("{kernel_ip}/24"),
            "dev",
            &ns.kernel_if,
        ]);
        ns.sh(&["ip", "link", "set", &ns.kernel_if, "up"]);
        // veth leaves TCP checksums to "hardware" that never computes them; AF_PACKET on the peer
        // would see partial sums. Make the kernel compute real ones.
        ns.sh(&["ethtool", "-K", &ns.kernel_if, "tx", "off"]);
        ns
    }

    /// [`sh`] inside the namespace.
    pub fn sh(&self, args: &[&str]) {
        let mut v = vec!["ip", "netns", "exec", self.name.as_str()];
        v.extend_from_slice(args);
        sh(&v);
    }

    /// What the namespace's neighbour table says of `ip`.
    pub fn neighbour(&self, ip: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "ip", "neigh", "show", ip])
            .output()
            .expect("ip neigh");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The MAC address of the DPDK end.
    pub fn mac_of_dpdk_if(&self) -> String {
        std::fs::read_to_string(format!("/sys/class/net/{}/address", self.dpdk_if))
            .expect("veth address")
            .trim()
            .to_string()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.dpdk_if])
            .stderr(Stdio::null())
            .status();
    }
}
