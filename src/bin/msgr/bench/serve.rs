//! The benchmark server: a messenger whose dispatcher is [`EchoDispatcher`] (echo, or an empty ack for
//! streamed messages), in this process for `msgr bench` or on its own for `msgr bench serve`.
//!
//! It serves every `--policy` at once, the client's choice deciding: its per-peer-type policy table
//! ([`BenchPolicy::accept_table`]) gives a `client.*` peer stateless_server (lossy sessions: fan-in
//! sessions, each its own client identity, cost it nothing beyond their sockets), a `mgr.*` peer
//! stateful_server (lossless) and an `osd.*` peer lossless_peer. Every throttle the bench does not
//! measure is unlimited, and the connection limits are set for the largest fan-in
//! ([`super::MAX_CONNECTIONS`] sessions from one loopback address).

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use msgr::event::WorkerConfig;
use msgr::proto::types::{entity_type, AddrVec, AuthEntityName};
use msgr::proto::{Config, Policy};
use msgr::stack::NetworkStack;
use msgr::{Messenger, MessengerConfig};

use super::latency::EchoDispatcher;
use super::policy::BenchPolicy;
use super::report::Cpus;
use super::{BenchError, BenchStack, MAX_WORKERS};
use crate::stacks::{rdma, Role, StackChoice, StackFn, StackKind, StackOptions, Stacks};

/// `--bind` when none is given (rdma: this port on the `--rdma-addr` address; dpdk: on the stack's ip).
pub const DEFAULT_BIND: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 6800);

/// A running benchmark server; stopped on drop.
pub struct BenchServer<N: NetworkStack> {
    messenger: Messenger<N>,
}

impl<N: NetworkStack> BenchServer<N> {
    /// Starts a server on `stack` listening on `bind` (port 0 picks one) with `workers`; `nonce` is its
    /// address nonce (0, as monitors use, lets clients name it by IP:PORT alone).
    pub fn start(
        stack: N,
        bind: &[SocketAddr],
        workers: WorkerConfig,
        nonce: u32,
        security: &super::security::Security,
    ) -> Result<Self, String> {
        let mut cfg = Config::new(entity_type::OSD, AuthEntityName::new(entity_type::OSD, "0"));
        cfg.nonce = nonce;
        security.apply_server(&mut cfg);
        cfg.default_policy = Policy::stateless_server();
        cfg.accept_policies = BenchPolicy::accept_table();
        let dispatcher = EchoDispatcher::with_stats(&workers.name_prefix);
        let mut mc = MessengerConfig::new(cfg);
        mc.workers = workers;
        // Replies are bounded by what clients keep in flight; no throttle may be the limit.
        super::driver::unlimited_throttles(&mut mc);
        // Every fan-in connection comes from one address and is half-open until authenticated: the
        // library's per-source default (256) would refuse a 10,000-connection fan-in.
        mc.max_connections = mc.max_connections.max(2 * super::MAX_CONNECTIONS);
        mc.max_sessions = mc.max_sessions.max(2 * super::MAX_CONNECTIONS);
        mc.max_half_open_per_source = super::MAX_CONNECTIONS;
        let mut messenger = Messenger::new(stack, mc, Arc::new(dispatcher));
        messenger.bind(bind).map_err(|e| e.to_string())?;
        messenger.start().map_err(|e| e.to_string())?;
        Ok(BenchServer { messenger })
    }

    /// The addresses it listens on, with its nonce.
    pub fn addrs(&self) -> &AddrVec {
        self.messenger.my_addrs()
    }

    pub fn messenger(&self) -> &Messenger<N> {
        &self.messenger
    }
}

impl<N: NetworkStack> Drop for BenchServer<N> {
    fn drop(&mut self) {
        let _ = self.messenger.shutdown();
    }
}

/// `msgr bench serve [--bind ADDR] [--workers N] [--cpus LIST] [--duration SECS]`
#[derive(clap::Args, Debug, Clone)]
#[command(
    long_about = "Run a benchmark server for `msgr bench run ADDR` in another process.\n\n\
It listens on --bind (a msgr2.1 OSD-type server, auth none, crc mode, address nonce 0 so that \
IP:PORT alone names it), prints \"listening on v2:IP:PORT/0\", echoes benchmark messages and acks streamed ones, and runs for \
--duration seconds or until killed. It serves every `bench run --policy` at once (the client's entity \
type decides: client lossy, mgr lossless, osd lossless-peer), answers the client's stats requests \
(its workers' CPU, its RSS, the policy it applied), sets every throttle it does not measure to \
unlimited, and raises its open-file limit (RLIMIT_NOFILE) to the hard limit.\n\n\
With --stack dpdk (a build with the dpdk feature) it serves on the DPDK stack that --dpdk-args \
describes (one poll-mode worker per queue: --workers must equal queues=), on that stack's ip unless \
--bind says otherwise.\n\n\
With --stack rdma (a build with `--features rdma`) it listens over RDMA on --rdma-device: on --bind, or \
else on port 6800 of --rdma-addr (default: $SOFTROCE_ADDR, else the IPv4 address in the device's GID); \
its workers spin without sleeping. Clients: `msgr bench run IP:6800 --stack rdma`.\n\n\
With --stdin-control it reads commands on stdin: `count` prints \
\"messages in N out M\" (the counters, e.g. around a measurement window), and the end of stdin stops it.",
    after_help = "Examples:\n  taskset -c 1 msgr bench serve --bind 127.0.0.1:6800 --cpus 1\n  \
msgr bench serve --stack dpdk --dpdk-args \"ip=198.18.0.1/24 --no-huge --no-pci -m 256 \
--vdev=net_memif0,role=server,id=0,socket=/msgr-memif,socket-abstract=yes\"\n  \
msgr bench serve --stack rdma --rdma-device rxe0 --rdma-addr 192.168.77.1"
)]
pub struct BenchServeArgs {
    /// Network stack: posix (kernel TCP), dpdk (needs the dpdk feature and --dpdk-args) or rdma (needs
    /// the rdma feature).
    #[arg(long, value_enum, default_value_t = BenchStack::Net(StackKind::Posix))]
    pub stack: BenchStack,

    #[command(flatten)]
    pub stack_options: StackOptions,

    /// Address to listen on, IP:PORT (IPv6 in brackets); port 0 picks a free port. Default
    /// 127.0.0.1:6800; with --stack dpdk, the stack's ip, port 6800; with rdma, port 6800 on --rdma-addr.
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<SocketAddr>,

    /// Worker threads.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=MAX_WORKERS as u64))]
    pub workers: u64,

    /// Pin the workers to these CPUs, e.g. 1.
    #[arg(long, value_name = "CPU,...", value_delimiter = ',')]
    pub cpus: Vec<usize>,

    /// posix: after each burst of work the workers keep polling, without sleeping, for US
    /// microseconds (0 = sleep at once, the default): see `msgr bench --help`.
    #[arg(long, value_name = "US", default_value_t = 0)]
    pub spin_us: u64,

    /// Stop after SECS seconds; default: run until killed.
    #[arg(long, value_name = "SECS", value_parser = super::parse_positive_secs)]
    pub duration: Option<f64>,

    /// Read commands on stdin: `count` prints the message counters; end of input stops the server.
    #[arg(long)]
    pub stdin_control: bool,
}

/// Runs `msgr bench serve`: prints the address line, then serves until the duration ends (or, with
/// `--stdin-control`, stdin ends).
pub fn serve(args: &BenchServeArgs, out: &mut dyn Write) -> Result<(), BenchError> {
    let workers = usize::try_from(args.workers).unwrap_or(1);
    let kind = match args.stack {
        BenchStack::Net(kind) => kind,
        BenchStack::Mem => {
            return Err(BenchError::Usage(
                "bench serve runs --stack posix, dpdk or rdma (mem is an in-process pair)".into(),
            ))
        }
    };
    if kind == StackKind::Rdma && args.bind.is_some() && args.stack_options.rdma.addr.is_some() {
        return Err(BenchError::Usage(
            "give --bind IP:PORT or --rdma-addr IP, not both".into(),
        ));
    }
    let role = Role {
        listens_on_rdma_addr: args.bind.is_none(),
        workers: Some(workers),
    };
    let choice = StackChoice::new(kind, &args.stack_options, role)?;
    // Default: port 6800 on the stack's own address (dpdk: its ip; rdma: the device's), else loopback.
    let bind = args.bind.unwrap_or_else(|| match choice.own_ip() {
        Some(ip) => SocketAddr::new(ip, DEFAULT_BIND.port()),
        None => DEFAULT_BIND,
    });
    // Clients may come by the thousand: the soft open-file limit goes up to the hard one.
    if kind == StackKind::Posix {
        let files = super::limits::raise_to_hard().map_err(BenchError::Failed)?;
        if let Some(line) = files.report("") {
            let _ = writeln!(out, "{line}");
        }
    }
    let mut wc = super::worker_config(workers, &args.cpus, "bench-serve", args.spin_us);
    if kind == StackKind::Rdma {
        rdma::tune(&mut wc);
    }
    choice.run(ServeRun {
        args,
        bind,
        wc,
        out,
    })
}

/// `bench serve` on the chosen stack.
struct ServeRun<'a> {
    args: &'a BenchServeArgs,
    bind: SocketAddr,
    wc: WorkerConfig,
    out: &'a mut dyn Write,
}

impl StackFn for ServeRun<'_> {
    type Output = Result<(), BenchError>;

    fn call<N: NetworkStack>(self, mut stacks: Stacks<'_, N>) -> Self::Output {
        let bind = self.bind;
        let stack = stacks
            .build()
            .map_err(|e| BenchError::Failed(format!("bench server on {bind}: {e}")))?;
        if stacks.choice().kind() == StackKind::Rdma {
            let device = stacks.device().unwrap_or("?");
            let _ = writeln!(self.out, "rdma device {device}");
        }
        let server = start(stack, bind, self.wc.clone())?;
        serve_on(&server, self.args, &self.wc, self.out)
    }
}

/// A server for `bench serve` on `stack`; nonce 0, so clients may name it by IP:PORT alone.
fn start<N: NetworkStack>(
    stack: N,
    bind: SocketAddr,
    wc: WorkerConfig,
) -> Result<BenchServer<N>, BenchError> {
    BenchServer::start(stack, &[bind], wc, 0, &super::security::Security::default())
        .map_err(|e| BenchError::Failed(format!("bench server: {e}")))
}

/// Serves on a started `server` until the duration ends or the stdin control says so.
fn serve_on<N: NetworkStack>(
    server: &BenchServer<N>,
    args: &BenchServeArgs,
    wc: &WorkerConfig,
    out: &mut dyn Write,
) -> Result<(), BenchError> {
    let cpus = Cpus::of_this_process(&super::pinned(wc));
    for a in &server.addrs().0 {
        let _ = writeln!(out, "osd listening on {a}");
    }
    let _ = writeln!(
        out,
        "workers {}, pinned to {:?}, allowed CPUs {:?}",
        wc.threads, cpus.pinned, cpus.allowed
    );
    if let Some(spin) = wc.loop_config.spin_before_sleep {
        let _ = writeln!(
            out,
            "workers poll {} µs after their last work before sleeping",
            spin.as_micros()
        );
    }
    let _ = out.flush();
    let commands = args.stdin_control.then(|| {
        let (tx, rx) = crossbeam_channel::unbounded::<String>();
        std::thread::spawn(move || {
            let stdin = std::io::stdin();
            for line in stdin.lock().lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rx
    });
    let started = Instant::now();
    let deadline = args.duration.map(|d| started + Duration::from_secs_f64(d));
    loop {
        let now = Instant::now();
        let nap = match deadline {
            Some(d) if now >= d => break,
            Some(d) => (d - now).min(Duration::from_millis(200)),
            None => Duration::from_millis(200),
        };
        match &commands {
            None => std::thread::sleep(nap),
            Some(rx) => match rx.recv_timeout(nap) {
                Ok(cmd) if cmd.trim() == "count" => {
                    let c = server.messenger().counters();
                    let _ = writeln!(out, "messages in {} out {}", c.msgs_in, c.msgs_out);
                    let _ = out.flush();
                }
                Ok(_) | Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            },
        }
    }
    let c = server.messenger().counters();
    let _ = writeln!(
        out,
        "served {:.1}s: {} connections accepted, {} messages in, {} out",
        started.elapsed().as_secs_f64(),
        c.accepted,
        c.msgs_in,
        c.msgs_out
    );
    Ok(())
}
