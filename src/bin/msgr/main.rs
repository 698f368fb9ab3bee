//! The `msgr` command line: `bench`, `serve`, `ping`, `recon`, `counters`.
//!
//! Exit status: 0 success; 1 the operation failed (peer unreachable, benchmark failed, …); 2 bad usage
//! (clap's own errors included). Errors are printed as one line on stderr, `msgr <command>: <reason>`.
//! Logging goes to stderr through tracing: `RUST_LOG` if set, else warnings, `-v` info, `-vv` debug,
//! `-vvv` trace.
//!
//! Signals: the crate has no `unsafe`, so there are no signal handlers. `msgr serve` runs for
//! `--duration SECS`, or until killed; SIGINT/SIGTERM end it with the default action (an echo server
//! has nothing to flush), and a stale admin socket left behind is replaced on the next start.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use crossbeam_channel::Sender;

// Parts of the harness and the stack switch serve only the dpdk or rdma stacks; a build with both
// features checks them all.
#[cfg_attr(not(all(feature = "dpdk", feature = "rdma")), allow(dead_code))]
mod bench;
mod rados;
mod recon;
#[cfg_attr(not(all(feature = "dpdk", feature = "rdma")), allow(dead_code))]
mod stacks;

use crate::bench::{BenchCli, BenchCommand, EchoDispatcher};
use crate::recon::ReconArgs;
use crate::stacks::{Role, StackChoice, StackError, StackFn, StackKind, StackOptions, Stacks};
use msgr::proto::types::{
    entity_type, entity_type_from_name, entity_type_name, AddrVec, AuthEntityName, EntityAddr,
};
use msgr::proto::{self, Config, Policy};
use msgr::stack::NetworkStack;
use msgr::{ConnectionRef, Dispatcher, Messenger, MessengerConfig};

const EXIT_OK: u8 = 0;
const EXIT_FAIL: u8 = 1;
const EXIT_USAGE: u8 = 2;

/// Longest --timeout / --duration accepted, in seconds.
const MAX_SECS: f64 = 366.0 * 24.0 * 3600.0;

#[derive(Parser, Debug)]
#[command(
    name = "msgr",
    version,
    about = "A messenger speaking Ceph's msgr2.1 wire protocol: benchmark, serve, ping, probe, RADOS object I/O",
    long_about = "A messenger speaking Ceph's msgr2.1 wire protocol over pluggable network stacks.\n\n\
Exit status: 0 on success, 1 if the operation failed, 2 on bad usage.",
    propagate_version = true
)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true, display_order = 900)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Bench(Box<BenchCli>),
    Serve(ServeArgs),
    Ping(PingArgs),
    Recon(ReconArgs),
    Counters(CountersArgs),
    Rados(Box<rados::RadosArgs>),
}

/// `msgr serve --bind ADDR [--bind ADDR ...] [--type TYPE] [--workers N] [--admin-socket PATH]
/// [--duration SECS]`
#[derive(clap::Args, Debug)]
#[command(
    about = "Run an echo server: every message is sent back on the connection it came on",
    long_about = "Run an echo server: every message is sent back on the connection it came on.\n\n\
msgr serve listens on each --bind address as a msgr2.1 server of the given entity type (auth none, \
crc mode) and prints one line per address, \"listening on v2:IP:PORT/NONCE\" (the form `msgr ping` \
and `msgr recon` accept). It runs for --duration seconds, or until it is killed (Ctrl-C, SIGTERM).\n\n\
With --admin-socket PATH it also answers every connection to that unix socket with the messenger's \
counters as JSON (read them with `msgr counters --admin-socket PATH`).\n\n\
--stack dpdk (a build with the dpdk feature) serves on the DPDK port --dpdk-args describes, one worker \
per queue pair, --bind naming that stack's ip; --stack rdma (a build with the rdma feature) over RDMA.",
    after_help = "Examples:\n  \
msgr serve --bind 127.0.0.1:6800\n  \
msgr serve --bind 0.0.0.0:3300 --bind '[::]:3300' --type mon --admin-socket /tmp/msgr.asok\n  \
msgr serve --stack dpdk --bind 198.18.0.1:6800 --dpdk-args \"ip=198.18.0.1/24 --no-huge --no-pci \
-m 256 --vdev=net_memif0,role=server,id=0,socket=/msgr-memif,socket-abstract=yes\""
)]
struct ServeArgs {
    /// Network stack: posix (kernel TCP), dpdk (a build with --features dpdk; --dpdk-args describes the
    /// port and this end's ip, which --bind names) or rdma (a build with --features rdma; see
    /// --rdma-wire).
    #[arg(long, value_enum, default_value_t = StackKind::Posix)]
    stack: StackKind,

    #[command(flatten)]
    stack_options: StackOptions,

    /// Address to listen on, IP:PORT (IPv6 in brackets); port 0 picks a free port. Repeatable.
    #[arg(long = "bind", value_name = "ADDR", required = true, value_parser = parse_socket_addr)]
    bind: Vec<SocketAddr>,

    /// Entity type to announce: mon, osd, mgr, mds, client.
    #[arg(long = "type", value_name = "TYPE", default_value = "osd", value_parser = parse_entity_type)]
    entity_type: u8,

    /// Worker threads (event loops) [default: 3; --stack dpdk: its queues=, one worker per queue pair].
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=bench::MAX_WORKERS as u64))]
    workers: Option<u64>,

    /// Answer connections to this unix socket with the counters as JSON.
    #[arg(long, value_name = "PATH")]
    admin_socket: Option<PathBuf>,

    /// Stop after SECS seconds (fractions allowed); default: run until killed.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    duration: Option<f64>,

    /// Most sessions kept at once; beyond it the oldest daemon session parked in standby is evicted
    /// (default: the library's, 65536).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_sessions: Option<u64>,

    /// Most connections at once; further accepts are closed (default: the library's, 65536).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: Option<u64>,

    /// Most not-yet-authenticated connections from one IP (default: the library's, 256).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_half_open_per_source: Option<u64>,

    /// End a daemon session whose peer has been gone this long (default: the library's, 900 s).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    standby_expiry: Option<f64>,

    #[command(flatten)]
    auth: AuthArgs,
}

/// Authentication and connection-mode flags shared by `serve` and `ping`.
#[derive(clap::Args, Debug, Clone)]
struct AuthArgs {
    /// Authentication method: none, or cephx (needs --keyring). `serve --auth cephx` acts as the
    /// cephx authority (a monitor), so it needs --type mon.
    #[arg(long, value_name = "METHOD", default_value = "none", value_parser = proto::auth::parse_auth_method)]
    auth: u32,

    /// Keyring file as Ceph writes it (`[client.admin]` / `key = BASE64`): ping takes its own key from
    /// it (--name); serve verifies clients against every key in it.
    #[arg(long, value_name = "FILE")]
    keyring: Option<PathBuf>,

    /// Our cephx name, as in the keyring.
    #[arg(long, value_name = "NAME", default_value = "client.admin")]
    name: String,

    /// Connection modes, in order of preference: "crc", "secure", or both ("secure crc"). Secure mode
    /// (AES-128-GCM) needs cephx; with auth none only crc exists.
    #[arg(long = "con-mode", value_name = "MODES", default_value = "crc")]
    con_mode: String,
}

impl AuthArgs {
    fn modes(&self) -> Result<Vec<u32>, Failure> {
        let modes = proto::auth::parse_con_modes(&self.con_mode).map_err(Failure::usage)?;
        if self.auth == proto::auth::AUTH_METHOD_NONE
            && modes.contains(&proto::auth::CON_MODE_SECURE)
        {
            return Err(Failure::usage(
                "--con-mode secure needs --auth cephx (secure mode needs cephx's session key)",
            ));
        }
        Ok(modes)
    }

    fn keyring(&self) -> Result<&Path, Failure> {
        self.keyring
            .as_deref()
            .ok_or_else(|| Failure::usage("--auth cephx needs --keyring FILE"))
    }

    /// Client side: our key and the modes we offer.
    fn apply_client(&self, cfg: &mut Config) -> Result<(), Failure> {
        let modes = self.modes()?;
        if self.auth == proto::auth::AUTH_METHOD_CEPHX {
            let path = self.keyring()?;
            cfg.auth_client =
                proto::auth::cephx_client_from_keyring(&path.to_string_lossy(), &self.name)
                    .map_err(Failure::usage)?;
            cfg.auth_name =
                AuthEntityName::parse(&self.name).map_err(|e| Failure::usage(e.to_string()))?;
        }
        cfg.con_modes = proto::auth::ConModes::all(&modes);
        Ok(())
    }

    /// Server side: as a cephx monitor, verify clients against the keyring and issue tickets.
    fn apply_server(&self, cfg: &mut Config, entity: u8) -> Result<(), Failure> {
        let modes = self.modes()?;
        if self.auth == proto::auth::AUTH_METHOD_CEPHX {
            if entity != entity_type::MON {
                return Err(Failure::usage(
                    "serve --auth cephx needs --type mon: msgr serves cephx as the authority (monitor role);                      the service role verifies tickets a monitor issued with secrets it shares",
                ));
            }
            let path = self.keyring()?;
            let keyring = proto::auth::keyring::Keyring::load(path)
                .map_err(|e| Failure::usage(e.to_string()))?;
            let since_epoch = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let anchor = proto::auth::cephx::WallAnchor::new(Instant::now(), since_epoch);
            let secrets = proto::auth::cephx::ServiceSecrets::generate(
                &[
                    entity_type::MON,
                    entity_type::OSD,
                    entity_type::MGR,
                    entity_type::MDS,
                ],
                &mut rand::rng(),
                anchor.utime(Instant::now()),
            );
            cfg.auth_server = proto::auth::ServerAuth::cephx_monitor(Arc::new(
                proto::auth::cephx::CephxMonitor::new(keyring, secrets, anchor),
            ));
        }
        cfg.con_modes = proto::auth::ConModes::all(&modes);
        Ok(())
    }
}

/// `msgr ping ADDR [--count N] [--interval MS] [--timeout SECS]`
#[derive(clap::Args, Debug)]
#[command(
    about = "Connect to a msgr2 peer and measure KEEPALIVE2 round trips",
    long_about = "Connect to a msgr2 peer and measure KEEPALIVE2 round trips.\n\n\
msgr ping connects as a client (lossy; auth none and crc mode unless --auth cephx / --con-mode say \
otherwise), prints how long the connection and \
handshake took and what the peer is, then sends --count KEEPALIVE2 frames, --interval ms apart, and \
prints each round trip and their min/avg/max.\n\n\
Exit status: 0 if every keepalive was answered, 1 if the peer could not be reached (refused, \
timeout, reset) or a keepalive went unanswered within --timeout, 2 on bad usage.",
    after_help = "Examples:\n  \
msgr ping 127.0.0.1:6800\n  \
msgr ping v2:10.0.0.1:6802/12345 --count 10 --interval 200"
)]
struct PingArgs {
    /// The peer: IP:PORT (IPv6 in brackets), or Ceph's v2:IP:PORT/NONCE as `msgr serve` prints it.
    #[arg(value_name = "ADDR")]
    addr: String,

    /// Keepalives to send.
    #[arg(long, short = 'c', value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    count: u64,

    /// Milliseconds between keepalives.
    #[arg(long, short = 'i', value_name = "MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    interval: u64,

    /// Seconds allowed for the connection and handshake, and for each keepalive's answer.
    #[arg(long, value_name = "SECS", default_value_t = 5.0, value_parser = parse_secs)]
    timeout: f64,

    /// Network stack: posix (kernel TCP), dpdk (a build with --features dpdk; --dpdk-args describes the
    /// port and this end's ip) or rdma (a build with --features rdma; see --rdma-wire).
    #[arg(long, value_enum, default_value_t = StackKind::Posix)]
    stack: StackKind,

    #[command(flatten)]
    stack_options: StackOptions,

    #[command(flatten)]
    auth: AuthArgs,
}

/// `msgr counters --admin-socket PATH`
#[derive(clap::Args, Debug)]
#[command(
    about = "Print a running `msgr serve`'s counters (JSON), like Ceph's `perf dump`",
    after_help = "Example:\n  msgr counters --admin-socket /tmp/msgr.asok"
)]
struct CountersArgs {
    /// The admin socket `msgr serve --admin-socket` created.
    #[arg(long, value_name = "PATH")]
    admin_socket: PathBuf,

    /// Seconds to wait for the answer.
    #[arg(long, value_name = "SECS", default_value_t = 5.0, value_parser = parse_secs)]
    timeout: f64,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and succeed; real errors exit 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { EXIT_OK });
        }
    };
    init_logging(cli.verbose);
    let (name, result) = match &cli.command {
        Command::Bench(a) => ("bench", run_bench(a)),
        Command::Serve(a) => ("serve", serve(a)),
        Command::Ping(a) => ("ping", ping(a)),
        Command::Recon(a) => ("recon", run_recon(a)),
        Command::Counters(a) => ("counters", counters(a)),
        Command::Rados(a) => ("rados", rados::run(a)),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Failure { code, message }) => {
            eprintln!("msgr {name}: {message}");
            ExitCode::from(code)
        }
    }
}

/// A subcommand's failure: the exit status and one line saying why.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn fail(message: impl Into<String>) -> Self {
        Failure {
            code: EXIT_FAIL,
            message: message.into(),
        }
    }
    fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }
}

impl From<StackError> for Failure {
    fn from(e: StackError) -> Self {
        Failure {
            code: u8::try_from(e.exit_code()).unwrap_or(EXIT_FAIL),
            message: e.to_string(),
        }
    }
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(s) if !s.trim().is_empty() => EnvFilter::try_new(s).unwrap_or_else(|e| {
            eprintln!("msgr: ignoring RUST_LOG: {e}");
            EnvFilter::new("warn")
        }),
        _ => EnvFilter::new(match verbose {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .try_init();
}

/// Writes to stdout, ignoring errors (a closed pipe must not turn into a panic).
macro_rules! say {
    ($($arg:tt)*) => {{
        let mut out = io::stdout().lock();
        let _ = writeln!(out, $($arg)*);
        let _ = out.flush();
    }};
}

// ---------------------------------------------------------------- argument parsers

fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        format!("{s:?} is not IP:PORT (IPv6 in brackets, e.g. 127.0.0.1:6800 or [::1]:6800)")
    })
}

fn parse_entity_type(s: &str) -> Result<u8, String> {
    entity_type_from_name(s.trim())
        .ok_or_else(|| format!("unknown entity type {s:?} (expected mon, osd, mgr, mds or client)"))
}

fn parse_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !v.is_finite() || v <= 0.0 || v > MAX_SECS {
        return Err(format!(
            "{s:?}: expected more than 0 and at most {MAX_SECS} seconds"
        ));
    }
    Ok(v)
}

// ---------------------------------------------------------------- bench, recon

fn run_bench(cli: &BenchCli) -> Result<u8, Failure> {
    let to_failure = |e: bench::BenchError| Failure {
        code: u8::try_from(e.exit_code()).unwrap_or(EXIT_FAIL),
        message: e.to_string(),
    };
    let (args, server) = match &cli.command {
        Some(BenchCommand::Serve(a)) => {
            let stdout = io::stdout();
            return bench::serve::serve(a, &mut stdout.lock())
                .map(|()| EXIT_OK)
                .map_err(to_failure);
        }
        Some(BenchCommand::Run(r)) => (&r.args, Some(r.addr.as_str())),
        None => (&cli.args, None),
    };
    if args.mode == bench::Mode::Rados {
        let stdout = io::stdout();
        return bench::rados::run(args, &mut stdout.lock())
            .map(|_| EXIT_OK)
            .map_err(to_failure);
    }
    let report = bench::run(args, server).map_err(to_failure)?;
    if let Some(path) = &args.json {
        say!(
            "# wrote {} records to {}",
            report.results.len(),
            path.display()
        );
    }
    if let Some(path) = &args.svg {
        say!("# drew {}", path.display());
    }
    Ok(EXIT_OK)
}

/// `msgr recon`: on posix the messenger-free probe ([`recon::run`]); on another stack each peer is reached
/// by the messenger ([`ReconRun`]).
fn run_recon(args: &ReconArgs) -> Result<u8, Failure> {
    if args.stack != StackKind::Posix {
        let choice = StackChoice::new(args.stack, &args.stack_options, Role::default())?;
        let tcp_probe = choice.kernel_tcp_reaches_peer();
        return choice.run(ReconRun {
            args,
            workers: choice.fixed_workers().unwrap_or(1),
            tcp_probe,
        });
    }
    match recon::run(args) {
        Ok(code) => Ok(u8::try_from(code).unwrap_or(EXIT_FAIL)),
        Err(msg) => Err(Failure::usage(msg)),
    }
}

// ---------------------------------------------------------------- serve

/// `msgr recon --stack dpdk|rdma`: each peer reached by the messenger, one after the other.
struct ReconRun<'a> {
    args: &'a ReconArgs,
    workers: usize,
    /// Whether a kernel TCP connect tells why a peer failed ([`StackChoice::kernel_tcp_reaches_peer`]).
    tcp_probe: bool,
}

impl StackFn for ReconRun<'_> {
    type Output = Result<u8, Failure>;

    fn call<N: NetworkStack>(self, mut stacks: Stacks<'_, N>) -> Self::Output {
        let stack = stacks.build()?;
        recon_on(self.args, stack, self.workers, self.tcp_probe)
    }
}

fn recon_on<N: NetworkStack>(
    args: &ReconArgs,
    stack: N,
    workers: usize,
    tcp_probe: bool,
) -> Result<u8, Failure> {
    let targets = args
        .addrs
        .iter()
        .map(|a| recon::parse_target(a))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure::usage)?;
    let timeout = Duration::from_secs_f64(args.timeout);
    let mut cfg = Config::new(
        entity_type::CLIENT,
        AuthEntityName::new(entity_type::CLIENT, "admin"),
    );
    cfg.nonce = rand::random::<u32>() | 1;
    cfg.handshake_timeout = timeout;
    let mut mc = MessengerConfig::new(cfg);
    mc.workers.threads = workers;
    mc.workers.name_prefix = "msgr-recon".into();
    mc.connect.timeout = Some(timeout);
    let (tx, events) = crossbeam_channel::unbounded();
    let mut m = Messenger::new(stack, mc, Arc::new(PingDispatcher { events: tx }));
    m.start().map_err(|e| Failure::fail(e.to_string()))?;
    let mut reports = Vec::new();
    for target in targets {
        let mut report = recon::PeerReport::new(target);
        let addrs = AddrVec(vec![EntityAddr::msgr2(target.addr, target.nonce)]);
        let t0 = Instant::now();
        match m.connect_to(entity_type::ANY, &addrs, Policy::lossy_client()) {
            Err(e) => report.fail(recon::Failure::Unreachable, e.to_string()),
            Ok(conn) => {
                match wait_connected(&m, &events, target.addr, timeout, tcp_probe) {
                    Ok(()) => {
                        let peer = conn.peer();
                        report.handshake_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
                        report.entity_type = Some(peer.entity_type.name().to_string());
                        report.ceph_features = Some(format!("{:#x}", peer.features));
                        report.addrs = peer.addrs.0.iter().map(ToString::to_string).collect();
                        let expected = args.expect.map(recon::ExpectedType::entity_type);
                        match expected {
                            Some(want) if want != peer.entity_type => report.fail(
                                recon::Failure::WrongType,
                                format!("expected {}", entity_type_name(want)),
                            ),
                            _ => report.succeed(),
                        }
                    }
                    Err(why) => {
                        let failure = if why.contains("refused") {
                            recon::Failure::Refused
                        } else if why.starts_with("timeout") {
                            recon::Failure::Timeout
                        } else {
                            recon::Failure::Reset
                        };
                        report.fail(failure, why);
                    }
                }
                conn.mark_down();
            }
        }
        // Events of this peer's connection must not answer for the next one.
        while events.try_recv().is_ok() {}
        reports.push(report);
    }
    let _ = m.shutdown();
    let text = if args.json {
        recon::render_json(&reports)
    } else {
        recon::render_table(&reports)
    };
    let mut out = io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    Ok(if reports.iter().all(|r| r.ok) {
        EXIT_OK
    } else {
        EXIT_FAIL
    })
}

/// Default `msgr serve --workers`.
const SERVE_WORKERS: usize = 3;

fn serve(args: &ServeArgs) -> Result<u8, Failure> {
    let asked = args.workers.map(|n| usize::try_from(n).unwrap_or(1));
    let role = Role {
        listens_on_rdma_addr: false,
        workers: asked,
    };
    let choice = StackChoice::new(args.stack, &args.stack_options, role)?;
    let workers = choice.fixed_workers().or(asked).unwrap_or(SERVE_WORKERS);
    choice.run(ServeRun { args, workers })
}

/// `msgr serve` on the chosen stack.
struct ServeRun<'a> {
    args: &'a ServeArgs,
    workers: usize,
}

impl StackFn for ServeRun<'_> {
    type Output = Result<u8, Failure>;

    fn call<N: NetworkStack>(self, mut stacks: Stacks<'_, N>) -> Self::Output {
        let stack = stacks.build()?;
        serve_on(stack, self.args, self.workers)
    }
}

fn serve_on<N: NetworkStack>(stack: N, args: &ServeArgs, workers: usize) -> Result<u8, Failure> {
    let entity = args.entity_type;
    let mut cfg = Config::new(entity, AuthEntityName::new(entity, "0"));
    // Monitors are known by address alone (nonce 0); other daemons pick a nonce per instance.
    cfg.nonce = if entity == entity_type::MON {
        0
    } else {
        rand::random::<u32>() | 1
    };
    cfg.default_policy = Policy::stateful_server();
    cfg.accept_policies = vec![(entity_type::CLIENT, Policy::stateless_server())];
    args.auth.apply_server(&mut cfg, entity)?;
    if let Some(secs) = args.standby_expiry {
        cfg.server_standby_expiry = Some(Duration::from_secs_f64(secs));
    }
    let mut mc = MessengerConfig::new(cfg);
    mc.workers.threads = workers;
    mc.workers.name_prefix = "msgr-serve".into();
    let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    if let Some(n) = args.max_sessions {
        mc.max_sessions = to_usize(n);
    }
    if let Some(n) = args.max_connections {
        mc.max_connections = to_usize(n);
    }
    if let Some(n) = args.max_half_open_per_source {
        mc.max_half_open_per_source = to_usize(n);
    }

    // Claim the admin socket first: a second server must fail before it binds any port.
    let admin = match &args.admin_socket {
        Some(path) => Some(AdminSocket::bind(path)?),
        None => None,
    };

    let mut m = Messenger::new(stack, mc, Arc::new(EchoDispatcher::default()));
    m.bind(&args.bind)
        .map_err(|e| Failure::fail(e.to_string()))?;
    m.start().map_err(|e| Failure::fail(e.to_string()))?;
    for a in &m.my_addrs().0 {
        say!("{} listening on {}", entity_type_name(entity), a);
    }
    if let Some(a) = &admin {
        say!("admin socket {}", a.path.display());
    }

    let started = Instant::now();
    let deadline = args.duration.map(|d| started + Duration::from_secs_f64(d));
    loop {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            break;
        }
        let nap = deadline.map_or(Duration::from_millis(50), |d| {
            (d - now).min(Duration::from_millis(50))
        });
        if let Some(a) = &admin {
            a.serve_pending(&m);
        }
        std::thread::sleep(nap);
    }
    let c = m.counters();
    let _ = m.shutdown();
    drop(admin);
    say!(
        "served {:.1}s: {} connections accepted, {} messages in, {} out",
        started.elapsed().as_secs_f64(),
        c.accepted,
        c.msgs_in,
        c.msgs_out
    );
    Ok(EXIT_OK)
}

/// The admin socket: a unix socket whose every connection gets the counters as JSON. Served from the
/// main thread between naps (the messenger stays owned by that thread); removed on drop.
struct AdminSocket {
    path: PathBuf,
    listener: UnixListener,
}

impl AdminSocket {
    /// Bind the socket, mode 0600 (it answers anyone who can connect). In a world-writable directory
    /// (/tmp) an existing file at `path` is used only if it is ours: another user may have planted it.
    fn bind(path: &Path) -> Result<Self, Failure> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let world_writable = std::fs::metadata(dir)
            .map(|m| m.permissions().mode() & 0o002 != 0)
            .unwrap_or(false);
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            // The process's own uid, read off /proc/self (no libc call needed).
            let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
            if world_writable && Some(meta.uid()) != me {
                return Err(Failure::fail(format!(
                    "admin socket {}: exists in world-writable {} and belongs to uid {}, not us; \
                     remove it or choose another path",
                    path.display(),
                    dir.display(),
                    meta.uid()
                )));
            }
            if !meta.file_type().is_socket() {
                return Err(Failure::fail(format!(
                    "admin socket {}: exists and is not a socket",
                    path.display()
                )));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(Failure::fail(format!(
                    "admin socket {}: another process is serving it",
                    path.display()
                )));
            }
            // A socket nobody answers: left behind by a server that was killed.
            std::fs::remove_file(path).map_err(|e| {
                Failure::fail(format!(
                    "admin socket {}: cannot remove stale socket: {e}",
                    path.display()
                ))
            })?;
        }
        let listener = UnixListener::bind(path)
            .map_err(|e| Failure::fail(format!("admin socket {}: {e}", path.display())))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
            Failure::fail(format!("admin socket {}: chmod 0600: {e}", path.display()))
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Failure::fail(format!("admin socket {}: {e}", path.display())))?;
        Ok(AdminSocket {
            path: path.to_path_buf(),
            listener,
        })
    }

    /// Answers every connection waiting to be accepted.
    fn serve_pending<N: NetworkStack>(&self, m: &Messenger<N>) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let json = match serde_json::to_string(&m.counters()) {
                        Ok(j) => j,
                        Err(e) => {
                            tracing::warn!(error = %e, "counters not serializable");
                            continue;
                        }
                    };
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                    if let Err(e) = stream
                        .write_all(json.as_bytes())
                        .and_then(|()| stream.write_all(b"\n"))
                    {
                        tracing::debug!(error = %e, "admin socket client went away");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket accept failed");
                    return;
                }
            }
        }
    }
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

// ---------------------------------------------------------------- counters

fn counters(args: &CountersArgs) -> Result<u8, Failure> {
    let path = &args.admin_socket;
    let timeout = Duration::from_secs_f64(args.timeout);
    let mut stream = UnixStream::connect(path).map_err(|e| {
        Failure::fail(format!(
            "cannot connect to admin socket {}: {e} (is `msgr serve --admin-socket` running?)",
            path.display()
        ))
    })?;
    let _ = stream.set_read_timeout(Some(timeout));
    // Bounded: counters are a few hundred bytes; a peer that streams forever is cut off.
    let mut text = String::new();
    Read::by_ref(&mut stream)
        .take(1 << 20)
        .read_to_string(&mut text)
        .map_err(|e| Failure::fail(format!("admin socket {}: {e}", path.display())))?;
    let value: serde_json::Value = serde_json::from_str(text.trim()).map_err(|e| {
        Failure::fail(format!(
            "admin socket {} did not answer with JSON: {e}",
            path.display()
        ))
    })?;
    let pretty = serde_json::to_string_pretty(&value).map_err(|e| Failure::fail(e.to_string()))?;
    say!("{pretty}");
    Ok(EXIT_OK)
}

// ---------------------------------------------------------------- ping

/// What the ping dispatcher reports to the main thread.
enum PingEvent {
    Connected,
    KeepaliveAck(Duration),
    Reset(String),
}

struct PingDispatcher {
    events: Sender<PingEvent>,
}

impl Dispatcher for PingDispatcher {
    fn ms_dispatch(&self, _conn: &ConnectionRef, msg: proto::Message) {
        tracing::debug!(
            msg_type = msg.msg_type(),
            "ping: ignoring a message from the peer"
        );
    }
    fn ms_handle_connect(&self, _conn: &ConnectionRef) {
        let _ = self.events.send(PingEvent::Connected);
    }
    fn ms_handle_reset(&self, _conn: &ConnectionRef, why: &proto::Error) {
        let _ = self.events.send(PingEvent::Reset(why.to_string()));
    }
    fn ms_handle_remote_reset(&self, _conn: &ConnectionRef) {
        let _ = self
            .events
            .send(PingEvent::Reset("the peer reset the session".into()));
    }
    fn ms_handle_keepalive_ack(&self, _conn: &ConnectionRef, rtt: Duration) {
        let _ = self.events.send(PingEvent::KeepaliveAck(rtt));
    }
}

/// Waits for the handshake to complete. The messenger retries a failed connect with back-off and tells
/// the dispatcher nothing until the session is up, so when its counters show a transport fault, one
/// plain TCP connect finds out why (refused, timeout, unreachable) — only on that failure path.
fn wait_connected<N: NetworkStack>(
    m: &Messenger<N>,
    events: &crossbeam_channel::Receiver<PingEvent>,
    addr: SocketAddr,
    timeout: Duration,
    tcp_probe: bool,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut tcp_ok = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left.min(Duration::from_millis(20))) {
            Ok(PingEvent::Connected) => return Ok(()),
            Ok(PingEvent::Reset(why)) => return Err(why),
            Ok(PingEvent::KeepaliveAck(_)) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                return Err("messenger stopped".into())
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let faulted = m.counters().transport_faults > 0;
        if !tcp_probe && left.is_zero() {
            return Err(format!(
                "timeout (no msgr2 session within {:.1}s; {} transport faults)",
                timeout.as_secs_f64(),
                m.counters().transport_faults
            ));
        }
        if tcp_probe && !tcp_ok && (faulted || left.is_zero()) {
            match std::net::TcpStream::connect_timeout(&addr, left.max(Duration::from_millis(100)))
            {
                Ok(_) => tcp_ok = true,
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    return Err("connection refused".into())
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    return Err(format!(
                        "timeout (no TCP connection within {:.1}s)",
                        timeout.as_secs_f64()
                    ))
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        if left.is_zero() {
            return Err(format!(
                "timeout (TCP connects, but no msgr2 session within {:.1}s)",
                timeout.as_secs_f64()
            ));
        }
    }
}

fn ping(args: &PingArgs) -> Result<u8, Failure> {
    let choice = StackChoice::new(args.stack, &args.stack_options, Role::default())?;
    choice.run(PingRun {
        args,
        workers: choice.fixed_workers().unwrap_or(1),
        tcp_probe: choice.kernel_tcp_reaches_peer(),
    })
}

/// `msgr ping` on the chosen stack.
struct PingRun<'a> {
    args: &'a PingArgs,
    workers: usize,
    /// Whether a kernel TCP connect tells why the peer failed ([`StackChoice::kernel_tcp_reaches_peer`]).
    tcp_probe: bool,
}

impl StackFn for PingRun<'_> {
    type Output = Result<u8, Failure>;

    fn call<N: NetworkStack>(self, mut stacks: Stacks<'_, N>) -> Self::Output {
        let stack = stacks.build()?;
        ping_on(stack, self.args, self.workers, self.tcp_probe)
    }
}

fn ping_on<N: NetworkStack>(
    stack: N,
    args: &PingArgs,
    workers: usize,
    tcp_probe: bool,
) -> Result<u8, Failure> {
    let target = recon::parse_target(&args.addr).map_err(Failure::usage)?;
    let timeout = Duration::from_secs_f64(args.timeout);
    let mut cfg = Config::new(
        entity_type::CLIENT,
        AuthEntityName::new(entity_type::CLIENT, "admin"),
    );
    cfg.nonce = rand::random::<u32>() | 1;
    cfg.handshake_timeout = timeout;
    args.auth.apply_client(&mut cfg)?;
    let mut mc = MessengerConfig::new(cfg);
    mc.workers.threads = workers;
    mc.workers.name_prefix = "msgr-ping".into();
    mc.connect.timeout = Some(timeout);
    let (tx, events) = crossbeam_channel::unbounded();
    let mut m = Messenger::new(stack, mc, Arc::new(PingDispatcher { events: tx }));
    m.start().map_err(|e| Failure::fail(e.to_string()))?;

    let addrs = AddrVec(vec![EntityAddr::msgr2(target.addr, target.nonce)]);
    let t0 = Instant::now();
    let conn = m
        .connect_to(entity_type::ANY, &addrs, Policy::lossy_client())
        .map_err(|e| Failure::fail(e.to_string()))?;
    wait_connected(&m, &events, target.addr, timeout, tcp_probe).map_err(|why| {
        // Daemons other than monitors close a session that names a nonce other than theirs.
        let hint = if target.nonce == 0 && why.starts_with("timeout (TCP connects") {
            "; a daemon other than a monitor wants its nonce too: v2:IP:PORT/NONCE, as `msgr serve` \
             and `ceph osd dump` print it"
        } else {
            ""
        };
        Failure::fail(format!("cannot reach {target}: {why}{hint}"))
    })?;
    let handshake = t0.elapsed();
    let peer = conn.peer();
    say!(
        "connected to {} ({}{}, {} mode) in {:.3} ms (TCP connect + msgr2.1 handshake)",
        target,
        peer.entity_type.name(),
        if peer.global_id != 0 {
            format!(", global_id {}", peer.global_id)
        } else {
            String::new()
        },
        proto::auth::con_mode_name(peer.con_mode),
        handshake.as_secs_f64() * 1e3
    );

    let mut rtts = Vec::with_capacity(usize::try_from(args.count).unwrap_or(0).min(1 << 16));
    let mut lost = 0u64;
    for seq in 0..args.count {
        if seq > 0 && args.interval > 0 {
            std::thread::sleep(Duration::from_millis(args.interval));
        }
        conn.send_keepalive()
            .map_err(|e| Failure::fail(format!("keepalive to {target}: {e}")))?;
        match events.recv_timeout(timeout) {
            Ok(PingEvent::KeepaliveAck(rtt)) => {
                say!(
                    "keepalive ack from {target}: seq={seq} rtt={:.1} µs",
                    rtt.as_secs_f64() * 1e6
                );
                rtts.push(rtt);
            }
            Ok(PingEvent::Reset(why)) => {
                return Err(Failure::fail(format!("connection to {target} lost: {why}")))
            }
            Ok(PingEvent::Connected) | Err(_) => {
                say!(
                    "keepalive to {target}: seq={seq} no answer within {:.1}s",
                    args.timeout
                );
                lost += 1;
            }
        }
    }
    if args.count > 0 {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let (min, max) = (rtts.iter().min(), rtts.iter().max());
        let avg = (!rtts.is_empty()).then(|| rtts.iter().sum::<Duration>() / rtts.len() as u32);
        match (min, avg, max) {
            (Some(&mn), Some(av), Some(&mx)) => say!(
                "--- {target}: {} keepalives, {} answered, rtt min/avg/max = {:.1}/{:.1}/{:.1} µs",
                args.count,
                rtts.len(),
                us(mn),
                us(av),
                us(mx)
            ),
            _ => say!("--- {target}: {} keepalives, none answered", args.count),
        }
    }
    conn.mark_down();
    let _ = m.shutdown();
    if lost > 0 {
        return Err(Failure::fail(format!(
            "{lost} of {} keepalives to {target} went unanswered",
            args.count
        )));
    }
    Ok(EXIT_OK)
}
