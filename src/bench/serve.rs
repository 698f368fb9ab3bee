//! The benchmark server: a messenger whose dispatcher is [`EchoDispatcher`] (echo, or an empty ack for
//! streamed messages), in this process for `msgr bench` or on its own for `msgr bench serve`.
//!
//! It accepts clients as a stateless server (each benchmark client session is lossy), so hundreds of
//! fan-in sessions, each its own client identity, cost it nothing beyond their sockets.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::event::WorkerConfig;
use crate::msgr::{Messenger, MessengerConfig};
use crate::proto::types::{entity_type, AddrVec, AuthEntityName};
use crate::proto::{Config, Policy};
use crate::stack::posix::PosixStack;
use crate::stack::NetworkStack;

use super::latency::EchoDispatcher;
use super::rdma::{self, RdmaArgs};
use super::report::Cpus;
use super::{BenchError, StackKind, MAX_WORKERS};

/// `--bind` when none is given (rdma: this port on the `--rdma-addr` address).
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
        // Replies are bounded by what clients keep in flight; the throttle must not be the limit.
        mc.throttle_bytes = 0;
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

/// `msgr bench serve [--stack posix|rdma] [--bind ADDR] [--workers N] [--cpus LIST] [--duration SECS]`
#[derive(clap::Args, Debug, Clone)]
#[command(
    long_about = "Run a benchmark server for `msgr bench run ADDR` in another process.\n\n\
It listens on --bind (a msgr2.1 OSD-type server, auth none, crc mode, address nonce 0 so that \
IP:PORT alone names it), prints \"listening on v2:IP:PORT/0\", echoes benchmark messages and acks streamed ones, and runs for \
--duration seconds or until killed.\n\n\
With --stack rdma (a build with `--features rdma`) it listens over RDMA on --rdma-device: on --bind, or \
else on port 6800 of --rdma-addr (default: $SOFTROCE_ADDR, else the IPv4 address in the device's GID); \
its workers spin without sleeping. Clients: `msgr bench run IP:6800 --stack rdma`.",
    after_help = "Examples:\n  taskset -c 1 msgr bench serve --bind 127.0.0.1:6800 --cpus 1\n  \
msgr bench serve --stack rdma --rdma-device rxe0 --rdma-addr 192.168.77.1"
)]
pub struct BenchServeArgs {
    /// Network stack: posix (kernel TCP) or rdma (needs a build with --features rdma).
    #[arg(long, value_enum, default_value_t = StackKind::Posix)]
    pub stack: StackKind,

    #[command(flatten)]
    pub rdma: RdmaArgs,

    /// Address to listen on, IP:PORT (IPv6 in brackets); port 0 picks a free port [default:
    /// 127.0.0.1:6800; rdma: port 6800 on --rdma-addr].
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
}

/// Where `msgr bench serve` listens, and on which RDMA device (rdma only).
fn bind_plan(args: &BenchServeArgs) -> Result<(SocketAddr, Option<rdma::Target>), BenchError> {
    match args.stack {
        StackKind::Posix => {
            rdma::check_unused(&args.rdma, "posix")?;
            Ok((args.bind.unwrap_or(DEFAULT_BIND), None))
        }
        StackKind::Mem => Err(BenchError::Usage(
            "bench serve runs over --stack posix or rdma (mem is an in-process pair)".into(),
        )),
        StackKind::Rdma if !cfg!(feature = "rdma") => Err(rdma::not_built()),
        StackKind::Rdma => {
            let sysfs = std::path::Path::new(rdma::SYSFS_INFINIBAND);
            match args.bind {
                Some(_) if args.rdma.addr.is_some() => Err(BenchError::Usage(
                    "give --bind IP:PORT or --rdma-addr IP, not both".into(),
                )),
                Some(bind) => Ok((bind, Some(rdma::resolve(&args.rdma, false, None, sysfs)?))),
                None => {
                    let env = std::env::var(rdma::ADDR_ENV).ok();
                    let target = rdma::resolve(&args.rdma, true, env.as_deref(), sysfs)?;
                    let ip = target.addr.ok_or_else(|| {
                        BenchError::Usage("--stack rdma needs --rdma-addr".into())
                    })?;
                    Ok((SocketAddr::new(ip, DEFAULT_BIND.port()), Some(target)))
                }
            }
        }
    }
}

/// Runs `msgr bench serve`: prints the address line, then serves until the duration ends.
pub fn serve(args: &BenchServeArgs, out: &mut dyn Write) -> Result<(), BenchError> {
    let (bind, target) = bind_plan(args)?;
    let workers = usize::try_from(args.workers).unwrap_or(1);
    let mut wc = super::worker_config(workers, &args.cpus, "bench-serve");
    if target.is_some() {
        rdma::tune(&mut wc);
    }
    let cpus = Cpus::of_this_process(&super::pinned(&wc));
    let failed = |e: String| BenchError::Failed(format!("bench server on {bind}: {e}"));
    // Nonce 0: clients may name this server by IP:PORT alone.
    let security = super::security::Security::default();
    match &target {
        None => serve_on(
            BenchServer::start(PosixStack::new(), &[bind], wc, 0, &security).map_err(failed)?,
            (workers, &cpus),
            args.duration,
            out,
        ),
        #[cfg(feature = "rdma")]
        Some(t) => {
            let stack = rdma::stack(t).map_err(failed)?;
            let _ = writeln!(out, "rdma device {}", stack.device_info().name);
            serve_on(
                BenchServer::start(stack, &[bind], wc, 0, &security).map_err(failed)?,
                (workers, &cpus),
                args.duration,
                out,
            )
        }
        #[cfg(not(feature = "rdma"))]
        Some(_) => Err(rdma::not_built()),
    }
}

/// Prints the address line, then serves until `duration` ends (or forever).
fn serve_on<N: NetworkStack>(
    server: BenchServer<N>,
    (workers, cpus): (usize, &Cpus),
    duration: Option<f64>,
    out: &mut dyn Write,
) -> Result<(), BenchError> {
    for a in &server.addrs().0 {
        let _ = writeln!(out, "osd listening on {a}");
    }
    let _ = writeln!(
        out,
        "workers {workers}, pinned to {:?}, allowed CPUs {:?}",
        cpus.pinned, cpus.allowed
    );
    let _ = out.flush();
    let started = Instant::now();
    let deadline = duration.map(|d| started + Duration::from_secs_f64(d));
    loop {
        let now = Instant::now();
        match deadline {
            Some(d) if now >= d => break,
            Some(d) => std::thread::sleep((d - now).min(Duration::from_millis(200))),
            None => std::thread::sleep(Duration::from_millis(200)),
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
