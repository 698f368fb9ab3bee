//! The benchmark server: a messenger whose dispatcher is [`EchoDispatcher`] (echo, or an empty ack for
//! streamed messages), in this process for `msgr bench` or on its own for `msgr bench serve`.
//!
//! It accepts clients as a stateless server (each benchmark client session is lossy), so hundreds of
//! fan-in sessions, each its own client identity, cost it nothing beyond their sockets.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use msgr::event::WorkerConfig;
use msgr::proto::types::{entity_type, AddrVec, AuthEntityName};
use msgr::proto::{Config, Policy};
use msgr::stack::posix::PosixStack;
use msgr::stack::NetworkStack;
use msgr::{Messenger, MessengerConfig};

use super::latency::EchoDispatcher;
use super::rdma::{self, RdmaArgs};
use super::report::Cpus;
use super::{BenchError, StackKind, MAX_WORKERS};

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
        let mut mc = MessengerConfig::new(cfg);
        mc.workers = workers;
        // Replies are bounded by what clients keep in flight; the send budget must not be the limit.
        mc.send_budget_bytes = 0;
        let mut messenger = Messenger::new(stack, mc, Arc::new(EchoDispatcher));
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
--duration seconds or until killed.\n\n\
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
    #[arg(long, value_enum, default_value_t = StackKind::Posix)]
    pub stack: StackKind,

    #[command(flatten)]
    pub rdma: RdmaArgs,

    /// --stack dpdk: the stack's arguments (`ip=A.B.C.D/len`, options, EAL arguments with a --vdev).
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub dpdk_args: Option<String>,

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
    #[allow(unused_mut)]
    let mut wc = super::worker_config(workers, &args.cpus, "bench-serve");
    if args.stack != StackKind::Rdma {
        rdma::check_unused(&args.rdma, args.stack.name())?;
    }
    if args.stack != StackKind::Dpdk && args.dpdk_args.is_some() {
        return Err(BenchError::Usage(
            "--dpdk-args goes with --stack dpdk".into(),
        ));
    }
    match args.stack {
        StackKind::Posix => {
            let bind = args.bind.unwrap_or(DEFAULT_BIND);
            serve_on(&start(PosixStack::new(), bind, wc.clone())?, args, &wc, out)
        }
        #[cfg(feature = "dpdk")]
        StackKind::Dpdk => {
            let dpdk_args = args.dpdk_args.as_deref().ok_or_else(|| {
                BenchError::Usage(
                    "--stack dpdk needs --dpdk-args (ip=…, EAL options, --vdev=…)".into(),
                )
            })?;
            let stack = super::dpdk::build_stack(dpdk_args, workers)?;
            let bind = args
                .bind
                .unwrap_or_else(|| SocketAddr::from((stack.ip(), super::dpdk::SERVE_PORT)));
            serve_on(&start(stack, bind, wc.clone())?, args, &wc, out)
        }
        #[cfg(not(feature = "dpdk"))]
        StackKind::Dpdk => Err(BenchError::Usage(super::dpdk::BUILD_HINT.into())),
        #[cfg(feature = "rdma")]
        StackKind::Rdma => {
            let (bind, target) = rdma_bind(args)?;
            rdma::tune(&mut wc);
            let stack = rdma::stack(&target)
                .map_err(|e| BenchError::Failed(format!("bench server on {bind}: {e}")))?;
            let _ = writeln!(
                out,
                "rdma device {} ({} wire)",
                stack.device_info().name,
                target.wire.name()
            );
            serve_on(&start(stack, bind, wc.clone())?, args, &wc, out)
        }
        #[cfg(not(feature = "rdma"))]
        StackKind::Rdma => Err(rdma::not_built()),
        StackKind::Mem => Err(BenchError::Usage(
            "bench serve runs --stack posix, dpdk or rdma (mem is an in-process pair)".into(),
        )),
    }
}

/// Where `msgr bench serve --stack rdma` listens, and on which device.
#[cfg(feature = "rdma")]
fn rdma_bind(args: &BenchServeArgs) -> Result<(SocketAddr, rdma::Target), BenchError> {
    let sysfs = std::path::Path::new(rdma::SYSFS_INFINIBAND);
    match args.bind {
        Some(_) if args.rdma.addr.is_some() => Err(BenchError::Usage(
            "give --bind IP:PORT or --rdma-addr IP, not both".into(),
        )),
        Some(bind) => Ok((bind, rdma::resolve(&args.rdma, false, None, sysfs)?)),
        None => {
            let env = std::env::var(rdma::ADDR_ENV).ok();
            let target = rdma::resolve(&args.rdma, true, env.as_deref(), sysfs)?;
            let ip = target
                .addr
                .ok_or_else(|| BenchError::Usage("--stack rdma needs --rdma-addr".into()))?;
            Ok((SocketAddr::new(ip, DEFAULT_BIND.port()), target))
        }
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
