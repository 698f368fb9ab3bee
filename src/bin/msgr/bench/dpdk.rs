//! `msgr bench --stack dpdk`: the benchmark over the dpdk stack (cargo feature `dpdk`), in one command:
//! the link this command builds for itself. `bench serve` and `bench run ADDR` take the stack as
//! `--dpdk-args` describe it, through the stack switch (`stacks`), like every other stack.
//!
//! Links (`--dpdk-link`):
//! - `memif` (default): two msgr processes over net_memif, no hardware, no hugepages. The EAL exists once
//!   per process, so this process re-executes itself as `msgr bench serve --stack dpdk --stdin-control`
//!   (server end: 198.18.0.1/24, memif server role, which creates the link's abstract unix socket, named
//!   after this process), waits for that socket, brings up the client end here (198.18.0.2/24, memif
//!   client role), reads the address the child prints and runs the client against it. The child is
//!   stopped at the end by closing its stdin (it exits when its stdin ends, so it also goes when this
//!   process dies, Ctrl-C included: it has a process group of its own), killed by PID if it has not
//!   exited 10 s later, and always reaped.
//! - `tap`: the client runs on net_tap here (198.19.X.2/24, X from this process's ID); the server is a
//!   posix-stack messenger in this process bound to the kernel side of the tap (198.19.X.1/24, which this
//!   module assigns to the interface as soon as the port creates it). DPDK's userspace TCP against Linux
//!   TCP. Needs CAP_NET_ADMIN (root). The interface goes when the port closes; a leftover is deleted.
//!
//! `--dpdk-args "…"` adjusts the generated arguments of both ends ([`merge_args`]): its `key=value`
//! options replace the generated ones key by key (`ip`, `port` and `gateway` are the link's and cannot be
//! changed here; `queues` is `--workers`); EAL memory options (`-m`, `--no-huge`, `--huge-dir`,
//! `--socket-mem`, …) replace the generated `--no-huge -m 256`; device options (`--vdev`, `-a`, `--no-pci`,
//! …) are refused (the one-command form builds the link: for another device, run `msgr bench serve
//! --stack dpdk` and `msgr bench run ADDR --stack dpdk` with your own `--dpdk-args`); any other EAL
//! option is appended.
//!
//! Workers: one poll-mode worker per queue pair (`queues` = `--workers`), each with the event loop's
//! default idle policy (spin, then short back-offs when idle).

use std::net::Ipv4Addr;

use super::{BenchArgs, BenchError};

/// The memif link's server and client ends.
pub const MEMIF_SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const MEMIF_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The port `msgr bench serve --stack dpdk` listens on unless told otherwise.
pub const SERVE_PORT: u16 = 6800;
/// EAL memory for each generated end (no hugepages needed).
const MEMORY: &str = "--no-huge -m 256";
/// EAL logging for generated ends: the EAL's start-up notices, and the PMDs' notices about multi-process
/// and rte_flow support (neither is used here), are noise on a benchmark's stderr. A failing port is
/// still an error from the stack.
const LOG: &str = "--log-level=lib.eal:warning --log-level=pmd.net.memif:critical \
                   --log-level=pmd.net.tap:critical";

/// The link under `--stack dpdk` in the one-command form.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DpdkLink {
    /// net_memif between this process (client) and a `msgr bench serve` child (server).
    #[default]
    Memif,
    /// net_tap: the DPDK client here against a kernel-TCP (posix) server on the tap's kernel side.
    Tap,
}

/// The tap link's addresses: (kernel side, DPDK side), a /24 picked by this process's ID inside
/// 198.19.0.0/16 so that concurrent runs do not share a subnet.
pub fn tap_addrs() -> (Ipv4Addr, Ipv4Addr) {
    let x = (std::process::id() % 256) as u8;
    (Ipv4Addr::new(198, 19, x, 1), Ipv4Addr::new(198, 19, x, 2))
}

/// The kernel interface net_tap creates for this process.
pub fn tap_iface() -> String {
    format!("msgrb{}", std::process::id())
}

/// The memif link's abstract socket name for this process.
pub fn memif_socket() -> String {
    format!("/msgr-bench-{}", std::process::id())
}

/// Generated `--dpdk-args` for one memif end: `server` is the msgr server (memif server role, creating the
/// socket).
pub fn memif_args(server: bool, queues: usize, socket: &str) -> String {
    let (ip, role, last) = if server {
        (MEMIF_SERVER_IP, "server", 1)
    } else {
        (MEMIF_CLIENT_IP, "client", 2)
    };
    format!(
        "ip={ip}/24 queues={queues} link_wait_ms=20000 {MEMORY} {LOG} --no-pci \
         --vdev=net_memif0,role={role},id=0,socket={socket},socket-abstract=yes,mac=02:00:c6:12:00:0{last}"
    )
}

/// Generated `--dpdk-args` for the DPDK end of the tap link.
pub fn tap_args(queues: usize) -> String {
    let (_, dpdk_ip) = tap_addrs();
    format!(
        "ip={dpdk_ip}/24 queues={queues} {MEMORY} {LOG} --no-pci --vdev=net_tap0,iface={}",
        tap_iface()
    )
}

/// One token group of a `--dpdk-args` string: a `key=value`, or an EAL option with its value if separate.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Key(String, String),
    Eal(Vec<String>),
}

/// Splits a `--dpdk-args` string as the stack's parser does (see `stack::dpdk` config docs).
fn tokens(args: &str) -> Result<Vec<Token>, String> {
    let mut out: Vec<Token> = Vec::new();
    let mut eal_only = false;
    let mut after_flag = false;
    for t in args.split_whitespace() {
        let value_of_flag = after_flag && !t.contains('=') && !t.starts_with('-');
        after_flag = false;
        if t == "--" && !eal_only {
            eal_only = true;
        } else if value_of_flag {
            if let Some(Token::Eal(v)) = out.last_mut() {
                v.push(t.to_string());
            }
        } else if eal_only || t.starts_with('-') {
            after_flag = t.starts_with('-') && !t.contains('=');
            out.push(Token::Eal(vec![t.to_string()]));
        } else {
            let (k, v) = t.split_once('=').ok_or_else(|| {
                format!("--dpdk-args: `{t}`: expected key=value or an EAL option")
            })?;
            out.push(Token::Key(k.to_string(), v.to_string()));
        }
    }
    Ok(out)
}

/// An EAL option's name: `--vdev=x` → `--vdev`, `-m512` → `-m`.
fn eal_name(opt: &[String]) -> &str {
    let first = opt.first().map_or("", String::as_str);
    let name = first.split('=').next().unwrap_or(first);
    if !name.starts_with("--") && name.len() > 2 {
        name.get(..2).unwrap_or(name)
    } else {
        name
    }
}

const MEMORY_OPTS: &[&str] = &[
    "-m",
    "--no-huge",
    "--huge-dir",
    "--socket-mem",
    "--socket-limit",
    "--in-memory",
    "--legacy-mem",
    "--single-file-segments",
    "--huge-unlink",
];
const DEVICE_OPTS: &[&str] = &["--vdev", "-a", "--allow", "-b", "--block", "--no-pci"];
/// Keys the one-command form generates per end and does not let `--dpdk-args` change.
const LINK_KEYS: &[&str] = &["ip", "port", "gateway"];

/// Merges the user's `--dpdk-args` into generated ones (see the module docs for the precedence).
/// `queues` must agree with the generated value when given.
pub fn merge_args(generated: &str, user: &str) -> Result<String, String> {
    let gen = tokens(generated)?;
    let usr = tokens(user)?;
    let mut keys: Vec<(String, String)> = Vec::new();
    let mut gen_eal: Vec<Vec<String>> = Vec::new();
    for t in gen {
        match t {
            Token::Key(k, v) => keys.push((k, v)),
            Token::Eal(o) => gen_eal.push(o),
        }
    }
    let mut usr_eal: Vec<Vec<String>> = Vec::new();
    for t in usr {
        match t {
            Token::Key(k, v) => {
                if LINK_KEYS.contains(&k.as_str()) {
                    return Err(format!(
                        "--dpdk-args: `{k}=` belongs to the link this command builds; use `msgr bench \
                         serve --stack dpdk` and `msgr bench run ADDR --stack dpdk` to choose it"
                    ));
                }
                match keys.iter_mut().find(|(gk, _)| *gk == k) {
                    Some((_, gv)) if k == "queues" && *gv != v => {
                        return Err(format!(
                            "--dpdk-args: queues={v} disagrees with --workers {gv} (one poll-mode worker \
                             per queue pair): set --workers instead"
                        ));
                    }
                    Some((_, gv)) => *gv = v,
                    None => keys.push((k, v)),
                }
            }
            Token::Eal(o) => {
                if DEVICE_OPTS.contains(&eal_name(&o)) {
                    return Err(format!(
                        "--dpdk-args: `{}` names a device; this command builds its own link (--dpdk-link). \
                         For another device run `msgr bench serve --stack dpdk` and `msgr bench run ADDR \
                         --stack dpdk` with your own --dpdk-args",
                        o.join(" ")
                    ));
                }
                usr_eal.push(o);
            }
        }
    }
    let user_memory = usr_eal.iter().any(|o| MEMORY_OPTS.contains(&eal_name(o)));
    let mut out: Vec<String> = keys.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    for o in gen_eal {
        if !(user_memory && MEMORY_OPTS.contains(&eal_name(&o))) {
            out.extend(o);
        }
    }
    for o in usr_eal {
        out.extend(o);
    }
    Ok(out.join(" "))
}

/// `plan()`'s checks for `--stack dpdk` (`two_process`: `bench run ADDR`).
pub fn check(args: &BenchArgs, two_process: bool) -> Result<(), BenchError> {
    let usage = |m: String| Err(BenchError::Usage(m));
    crate::stacks::StackKind::Dpdk.check_built()?;
    let memif = !two_process && args.dpdk_link == DpdkLink::Memif;
    let unsupported = [
        (args.inject_delay_ms.is_some(), "--inject-delay-ms"),
        (
            (two_process || memif) && args.con_mode == super::security::ConMode::Secure,
            "--con-mode secure with a server in another process",
        ),
        (
            two_process && args.stack_options.dpdk_args.is_none(),
            "`bench run ADDR` without --dpdk-args (describe this end: ip=…, EAL options, --vdev=…)",
        ),
    ];
    if let Some((_, what)) = unsupported.iter().find(|(bad, _)| *bad) {
        return usage(format!("--stack dpdk does not take {what}"));
    }
    if !two_process {
        let user = args.stack_options.dpdk_args.as_deref().unwrap_or("");
        let workers = usize::try_from(args.workers).unwrap_or(1);
        let generated = match args.dpdk_link {
            DpdkLink::Memif => memif_args(false, workers, &memif_socket()),
            DpdkLink::Tap => tap_args(workers),
        };
        merge_args(&generated, user).map_err(BenchError::Usage)?;
    }
    Ok(())
}

/// CAP_NET_ADMIN in this process's effective set (from /proc/self/status; no syscall wrapper needed).
pub fn has_net_admin() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

#[cfg(feature = "dpdk")]
pub use imp::{start, Session};

#[cfg(not(feature = "dpdk"))]
pub use stub::{start, Session};

/// Without the feature: every entry point is a usage error naming the build (plan() rejects first).
#[cfg(not(feature = "dpdk"))]
mod stub {
    use super::super::driver::{Runner, Shape};
    use super::super::security::Security;
    use super::super::{BenchArgs, BenchError, Header};
    use msgr::event::WorkerConfig;

    /// The client of a dpdk run and what serves it.
    pub struct Session {
        pub client: Box<dyn Runner>,
        pub server: Box<dyn std::any::Any>,
    }

    impl Session {
        pub fn describe(&self, _header: &mut Header) {}
    }

    pub fn start(
        _args: &BenchArgs,
        _shape: Shape,
        _client: WorkerConfig,
        _server: WorkerConfig,
        _security: &Security,
    ) -> Result<Session, BenchError> {
        crate::stacks::StackKind::Dpdk.check_built()?;
        Err(BenchError::Failed("no dpdk stack in this build".into()))
    }
}

#[cfg(feature = "dpdk")]
mod imp {
    use std::collections::VecDeque;
    use std::io::{BufRead, BufReader};
    use std::net::{IpAddr, SocketAddr};
    use std::os::unix::process::CommandExt;
    use std::process::{Child, ChildStdin, Command, Stdio};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use crossbeam_channel::Receiver;

    use super::super::driver::{Client, Runner, Shape};
    use super::super::report::Cpus;
    use super::super::security::Security;
    use super::super::serve::BenchServer;
    use super::super::{BenchArgs, BenchError, Header};
    use super::*;
    use msgr::event::WorkerConfig;
    use msgr::proto::types::{AddrVec, EntityAddr};
    use msgr::stack::dpdk::DpdkStack;
    use msgr::stack::posix::PosixStack;

    /// Lines of a child's stderr kept for an error message.
    const STDERR_TAIL: usize = 30;

    /// Builds the dpdk stack from generated `args`, checking that `workers` matches its queues.
    fn build_stack(args: &str, workers: usize) -> Result<DpdkStack, BenchError> {
        let config = crate::stacks::dpdk::config(args, Some(workers))?;
        Ok(crate::stacks::dpdk::build(config)?)
    }

    /// The client of a dpdk run and what serves it. Shut the client down first, then drop `server`.
    pub struct Session {
        pub client: Box<dyn Runner>,
        pub server: Box<dyn std::any::Any>,
        link: String,
        stack_args: String,
        server_addr: Option<String>,
        server_workers: usize,
        server_cpus: Cpus,
    }

    impl Session {
        /// Writes what this run is into the report's header.
        pub fn describe(&self, header: &mut Header) {
            header.link = Some(self.link.clone());
            header.stack_args = Some(self.stack_args.clone());
            if let Some(a) = &self.server_addr {
                header.processes = "two".into();
                header.server_addr = Some(a.clone());
            }
            header.server_workers = Some(self.server_workers);
            header.server_cpus = Some(self.server_cpus.clone());
        }
    }

    /// Starts the link, the server and the client of a one-command `--stack dpdk` run.
    pub fn start(
        args: &BenchArgs,
        shape: Shape,
        client_wc: WorkerConfig,
        server_wc: WorkerConfig,
        security: &Security,
    ) -> Result<Session, BenchError> {
        let workers = client_wc.threads;
        let failed = |e: String| BenchError::Failed(format!("dpdk set-up: {e}"));
        let user = args.stack_options.dpdk_args.as_deref().unwrap_or("");
        match args.dpdk_link {
            DpdkLink::Memif => {
                let socket = memif_socket();
                let server_args = merge_args(&memif_args(true, workers, &socket), user)
                    .map_err(BenchError::Usage)?;
                let client_args = merge_args(&memif_args(false, workers, &socket), user)
                    .map_err(BenchError::Usage)?;
                let child = ServeChild::spawn(&server_args, workers, &args.server_cpus)?;
                child.wait_for_socket(&socket, Duration::from_secs(60))?;
                let stack = build_stack(&client_args, workers)?;
                let addr = child.address(Duration::from_secs(60))?;
                let target = AddrVec(vec![EntityAddr::msgr2(addr.addr, addr.nonce)]);
                let client =
                    Client::boxed(stack, client_wc, &target, shape, security).map_err(failed)?;
                Ok(Session {
                    client,
                    server: Box::new(child),
                    link: "memif".into(),
                    stack_args: client_args,
                    server_addr: Some(addr.to_string()),
                    server_workers: workers,
                    server_cpus: Cpus::of_this_process(&args.server_cpus),
                })
            }
            DpdkLink::Tap => {
                if !has_net_admin() {
                    return Err(BenchError::Failed(
                        "--dpdk-link tap creates a network interface: it needs root (CAP_NET_ADMIN); \
                         --dpdk-link memif does not"
                            .into(),
                    ));
                }
                let client_args =
                    merge_args(&tap_args(workers), user).map_err(BenchError::Usage)?;
                let (kernel_ip, _) = tap_addrs();
                let mut guard = TapGuard {
                    server: None,
                    iface: tap_iface(),
                };
                // The port creates the interface and then waits for its link: give the kernel side its
                // address and bring it up meanwhile.
                let iface = guard.iface.clone();
                let configured = std::thread::spawn(move || configure_tap(&iface, kernel_ip));
                let stack = build_stack(&client_args, workers);
                let configured = configured
                    .join()
                    .unwrap_or_else(|_| Err("tap configuration thread panicked".into()));
                let stack = stack?;
                configured.map_err(failed)?;
                let server = BenchServer::start(
                    PosixStack::new(),
                    &[SocketAddr::new(IpAddr::V4(kernel_ip), 0)],
                    server_wc.clone(),
                    rand::random::<u32>() | 1,
                    security,
                )
                .map_err(|e| failed(format!("posix server on {kernel_ip}: {e}")))?;
                let target = server.addrs().clone();
                guard.server = Some(server);
                let client =
                    Client::boxed(stack, client_wc, &target, shape, security).map_err(failed)?;
                Ok(Session {
                    client,
                    server: Box::new(guard),
                    link: "tap".into(),
                    stack_args: client_args,
                    server_addr: None,
                    server_workers: server_wc.threads,
                    server_cpus: Cpus::of_this_process(&super::super::pinned(&server_wc)),
                })
            }
        }
    }

    /// Waits for net_tap's interface `iface`, gives it `ip`/24 and brings it up.
    fn configure_tap(iface: &str, ip: Ipv4Addr) -> Result<(), String> {
        let end = Instant::now() + Duration::from_secs(30);
        let sys = format!("/sys/class/net/{iface}");
        while !std::path::Path::new(&sys).exists() {
            if Instant::now() >= end {
                return Err(format!("tap interface {iface} never appeared"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // No IPv6 chatter on the link (best effort).
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{iface}/disable_ipv6"), "1");
        let cidr = format!("{ip}/24");
        for cmd in [
            &["addr", "add", cidr.as_str(), "dev", iface][..],
            &["link", "set", iface, "up"][..],
        ] {
            let out = Command::new("ip")
                .args(cmd)
                .output()
                .map_err(|e| format!("ip {}: {e} (is iproute2 installed?)", cmd.join(" ")))?;
            if !out.status.success() {
                return Err(format!(
                    "ip {}: {}",
                    cmd.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(())
    }

    /// The tap run's posix server; on drop it stops it and makes sure the interface is gone (it goes
    /// with the DPDK port, which closes when the client's stack is dropped, before this).
    struct TapGuard {
        server: Option<BenchServer<PosixStack>>,
        iface: String,
    }

    impl Drop for TapGuard {
        fn drop(&mut self) {
            drop(self.server.take());
            let sys = format!("/sys/class/net/{}", self.iface);
            let end = Instant::now() + Duration::from_secs(2);
            while std::path::Path::new(&sys).exists() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(10));
            }
            if std::path::Path::new(&sys).exists() {
                tracing::warn!(iface = %self.iface, "tap interface still there; deleting it");
                let _ = Command::new("ip")
                    .args(["link", "del", &self.iface])
                    .status();
            }
        }
    }

    /// The memif run's server: `msgr bench serve --stack dpdk` as a child of this process.
    struct ServeChild {
        child: Child,
        stdin: Option<ChildStdin>,
        lines: Receiver<String>,
        stderr: Arc<Mutex<VecDeque<String>>>,
    }

    impl ServeChild {
        fn spawn(dpdk_args: &str, workers: usize, cpus: &[usize]) -> Result<Self, BenchError> {
            let exe = std::env::current_exe()
                .map_err(|e| BenchError::Failed(format!("cannot find this executable: {e}")))?;
            let mut cmd = Command::new(exe);
            cmd.args(["bench", "serve", "--stack", "dpdk", "--stdin-control"])
                .arg("--dpdk-args")
                .arg(dpdk_args)
                .arg("--bind")
                .arg(SocketAddr::from((MEMIF_SERVER_IP, SERVE_PORT)).to_string())
                .arg("--workers")
                .arg(workers.to_string());
            if !cpus.is_empty() {
                let list: Vec<String> = cpus.iter().map(usize::to_string).collect();
                cmd.arg("--cpus").arg(list.join(","));
            }
            // Its own process group: a Ctrl-C at the terminal stops this process, and the child then
            // sees its stdin end and shuts down cleanly (its EAL state removed) instead of dying mid-way.
            let mut child = cmd
                .process_group(0)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| BenchError::Failed(format!("cannot start the memif server: {e}")))?;
            let stdin = child.stdin.take();
            let (tx, lines) = crossbeam_channel::unbounded();
            if let Some(out) = child.stdout.take() {
                std::thread::spawn(move || {
                    for line in BufReader::new(out).lines().map_while(Result::ok) {
                        let _ = tx.send(line);
                    }
                });
            }
            let stderr = Arc::new(Mutex::new(VecDeque::new()));
            if let Some(err) = child.stderr.take() {
                let tail = stderr.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(err).lines().map_while(Result::ok) {
                        if let Ok(mut t) = tail.lock() {
                            if t.len() == STDERR_TAIL {
                                t.pop_front();
                            }
                            t.push_back(line);
                        }
                    }
                });
            }
            Ok(ServeChild {
                child,
                stdin,
                lines,
                stderr,
            })
        }

        /// The child's failure, with the end of its stderr.
        fn failure(&self, what: &str) -> BenchError {
            // Give the stderr reader a moment to catch the last lines.
            std::thread::sleep(Duration::from_millis(100));
            let tail = self
                .stderr
                .lock()
                .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n  "))
                .unwrap_or_default();
            BenchError::Failed(format!(
                "memif server (pid {}): {what}; its stderr:\n  {tail}",
                self.child.id()
            ))
        }

        fn exited(&mut self) -> Option<std::process::ExitStatus> {
            self.child.try_wait().ok().flatten()
        }

        /// Waits until the child's memif server role listens on the abstract socket `name`.
        fn wait_for_socket(&self, name: &str, timeout: Duration) -> Result<(), BenchError> {
            let wanted = format!("@{name}");
            let end = Instant::now() + timeout;
            loop {
                let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
                if table
                    .lines()
                    .any(|l| l.split_whitespace().last() == Some(wanted.as_str()))
                {
                    return Ok(());
                }
                // try_wait needs &mut; a clone of the handle is not available, so poll via /proc.
                if !std::path::Path::new(&format!("/proc/{}", self.child.id())).exists()
                    || Instant::now() >= end
                {
                    return Err(self.failure("its memif socket never appeared"));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }

        /// Waits for the `osd listening on v2:IP:PORT/NONCE` line.
        fn address(&self, timeout: Duration) -> Result<crate::recon::Target, BenchError> {
            let end = Instant::now() + timeout;
            loop {
                let left = end.saturating_duration_since(Instant::now());
                match self.lines.recv_timeout(left) {
                    Ok(line) => {
                        if let Some(addr) = line.strip_prefix("osd listening on ") {
                            return crate::recon::parse_target(addr.trim()).map_err(|e| {
                                self.failure(&format!("unreadable address {addr:?}: {e}"))
                            });
                        }
                    }
                    Err(_) => return Err(self.failure("no address line")),
                }
            }
        }
    }

    impl Drop for ServeChild {
        fn drop(&mut self) {
            // End of input stops `bench serve --stdin-control`; a child that does not go is killed.
            drop(self.stdin.take());
            let end = Instant::now() + Duration::from_secs(10);
            while self.exited().is_none() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(10));
            }
            if self.exited().is_none() {
                let _ = self.child.kill();
            }
            let _ = self.child.wait();
            let _ = std::fs::remove_dir(format!("/var/run/dpdk/msgr-{}", self.child.id()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_keys_replace_generated_ones_and_memory_options_replace_the_default() {
        let generated =
            "ip=198.18.0.2/24 queues=1 --no-huge -m 256 --no-pci --vdev=net_memif0,role=client";
        let merged = merge_args(
            generated,
            "mtu=9000 queues=1 --huge-dir=/dev/hugepages -m 1024 -l 1",
        )
        .unwrap();
        assert_eq!(
            merged,
            "ip=198.18.0.2/24 queues=1 mtu=9000 --no-pci --vdev=net_memif0,role=client \
             --huge-dir=/dev/hugepages -m 1024 -l 1"
        );
        // Without user memory options the generated ones stay; other EAL options are appended.
        assert_eq!(
            merge_args(generated, "tcp_buffer=1048576 --log-level=debug").unwrap(),
            "ip=198.18.0.2/24 queues=1 tcp_buffer=1048576 --no-huge -m 256 --no-pci \
             --vdev=net_memif0,role=client --log-level=debug"
        );
        assert_eq!(merge_args(generated, "").unwrap(), generated);
    }

    #[test]
    fn link_keys_devices_and_other_queue_counts_are_refused() {
        let generated = memif_args(false, 1, "/s");
        for bad in [
            "ip=10.0.0.1/24",
            "port=1",
            "queues=2",
            "--vdev=net_tap0",
            "-a 0000:01:00.0",
            "--no-pci",
            "stray",
        ] {
            assert!(
                merge_args(&generated, bad).is_err(),
                "{bad:?} must be refused"
            );
        }
        // The generated ends parse as the stack's arguments do: keys, then EAL options with values.
        let toks = tokens(&tap_args(2)).unwrap();
        assert!(toks.contains(&Token::Key("queues".into(), "2".into())));
        assert!(toks.contains(&Token::Eal(vec!["-m".into(), "256".into()])));
    }
}
