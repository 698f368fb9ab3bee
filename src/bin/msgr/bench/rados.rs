//! `msgr bench --mode rados`: object I/O against a real Ceph cluster through msgr's RADOS client, with
//! the figures `rados bench` prints (IOPS, MB/s, average and maximum latency) plus percentiles.
//!
//! Phases, as `rados bench` runs them: 4 KiB writes (write_full of new objects) and reads of those
//! objects at queue depth 1 and 16, then 4 MiB writes at depth 4. Each phase runs for --duration
//! seconds (default 5) or --count ops, whichever ends first. Every object written is removed at the
//! end, also after a failed phase.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use msgr::msgs::osd::OsdOp;
use msgr::rados::client::Rados;
use msgr::rados::objecter::{OpRequest, OpResult};
use msgr::PosixStack;

use msgr::proto::auth::{self, ClientAuth, ConModes};
use msgr::proto::types::AuthEntityName;
use msgr::rados::client::{parse_mon_host, RadosConfig};

use super::{BenchArgs, BenchError};

/// Why the connection options did not give a client: bad usage (exit 2) or a failure (exit 1).
#[derive(Debug)]
pub struct ConnError {
    pub usage: bool,
    pub message: String,
}

impl ConnError {
    fn usage(message: impl Into<String>) -> Self {
        ConnError {
            usage: true,
            message: message.into(),
        }
    }
    fn fail(message: impl Into<String>) -> Self {
        ConnError {
            usage: false,
            message: message.into(),
        }
    }
}

fn parse_timeout(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!(
            "{s:?}: expected seconds, more than 0 and at most 86400"
        )),
    }
}

/// How to reach the cluster: shared by `msgr rados` and `msgr bench --mode rados`.
#[derive(clap::Args, Debug, Clone)]
pub struct RadosConnArgs {
    /// The monitors, as in ceph.conf's mon_host: comma- or space-separated `IP:PORT`, `v2:IP:PORT` or
    /// `[v2:IP:PORT,v1:IP:PORT]` (msgr2 only: each needs a v2 address). The client hunts across them.
    #[arg(long = "mon-host", value_name = "ADDRS")]
    pub mon_host: Option<String>,

    /// Keyring file (Ceph's format); given, the client authenticates with cephx as --name, to the
    /// monitor and to the OSDs. Without it: auth none.
    #[arg(long, value_name = "FILE")]
    pub keyring: Option<PathBuf>,

    /// Our cephx name, as in the keyring.
    #[arg(long, value_name = "NAME", default_value = "client.admin")]
    pub name: String,

    /// Connection modes in order of preference: "crc", "secure", or "secure crc". Secure mode needs
    /// --keyring (cephx). [default: "secure crc" with --keyring, else "crc"]
    #[arg(long = "con-mode", value_name = "MODES")]
    pub con_mode: Option<String>,

    /// Seconds an operation may take, resends to new primaries included; also the connect timeout.
    #[arg(long, value_name = "SECS", default_value_t = 30.0, value_parser = parse_timeout)]
    pub timeout: f64,
}

impl RadosConnArgs {
    pub fn config(&self) -> Result<RadosConfig, ConnError> {
        let mon_host = self
            .mon_host
            .as_deref()
            .ok_or_else(|| ConnError::usage("--mon-host ADDRS is required"))?;
        let mons =
            parse_mon_host(mon_host).map_err(|e| ConnError::usage(format!("--mon-host: {e}")))?;
        let mut cfg = RadosConfig::new(mons);
        cfg.name = AuthEntityName::parse(&self.name)
            .map_err(|e| ConnError::usage(format!("--name: {e}")))?;
        let default_modes = if self.keyring.is_some() {
            "secure crc"
        } else {
            "crc"
        };
        let modes = auth::parse_con_modes(self.con_mode.as_deref().unwrap_or(default_modes))
            .map_err(ConnError::usage)?;
        if let Some(path) = &self.keyring {
            cfg.auth = auth::cephx_client_from_keyring(&path.to_string_lossy(), &self.name)
                .map_err(ConnError::usage)?;
        } else {
            if modes.contains(&auth::CON_MODE_SECURE) {
                return Err(ConnError::usage(
                    "--con-mode secure needs --keyring (secure mode needs cephx's session key)",
                ));
            }
            cfg.auth = ClientAuth::none();
        }
        cfg.con_modes = ConModes::all(&modes);
        let timeout = Duration::from_secs_f64(self.timeout);
        cfg.connect_timeout = timeout;
        cfg.objecter.op_timeout = timeout;
        Ok(cfg)
    }

    pub fn connect(&self) -> Result<Rados<PosixStack>, ConnError> {
        self.connect_with(|_| {})
    }

    /// As [`connect`](Self::connect), after `edit` adjusts the configuration.
    pub fn connect_with(
        &self,
        edit: impl FnOnce(&mut RadosConfig),
    ) -> Result<Rados<PosixStack>, ConnError> {
        let mut cfg = self.config()?;
        edit(&mut cfg);
        Rados::connect(|| Ok(PosixStack::new()), cfg).map_err(|e| ConnError::fail(e.to_string()))
    }
}

/// Options of `--mode rados` (the rest come from `msgr bench`'s own: --duration, --count, --json,
/// --con-mode).
#[derive(clap::Args, Debug, Clone)]
pub struct RadosBenchArgs {
    /// --mode rados: the monitors (mon_host form, msgr2 addresses).
    #[arg(long = "mon-host", value_name = "ADDRS")]
    pub mon_host: Option<String>,
    /// --mode rados: keyring for cephx (else auth none).
    #[arg(long = "keyring", value_name = "FILE")]
    pub keyring: Option<PathBuf>,
    /// --mode rados: our cephx name.
    #[arg(
        long = "rados-name",
        value_name = "NAME",
        default_value = "client.admin"
    )]
    pub rados_name: String,
    /// --mode rados: the pool to write to (objects are removed afterwards).
    #[arg(long = "pool", value_name = "POOL", default_value = "test")]
    pub pool: String,
}

/// One phase's figures.
#[derive(Debug, Clone)]
pub struct PhaseResult {
    pub name: &'static str,
    pub size: usize,
    pub depth: usize,
    pub ops: u64,
    pub secs: f64,
    pub iops: f64,
    pub mb_per_s: f64,
    pub lat_avg_ms: f64,
    pub lat_max_ms: f64,
    pub lat_min_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

/// Phases of a default run: (name, op, size, depth).
const PHASES: [(&str, Kind, usize, usize); 5] = [
    ("write", Kind::Write, 4096, 1),
    ("read", Kind::Read, 4096, 1),
    ("write", Kind::Write, 4096, 16),
    ("read", Kind::Read, 4096, 16),
    ("write", Kind::Write, 4 << 20, 4),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Write,
    Read,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

struct Phase<'a> {
    rados: &'a Rados<PosixStack>,
    pool: u64,
    prefix: String,
    written: Vec<String>,
}

impl Phase<'_> {
    /// Run ops at `depth` until `limit` ops or `duration`; new objects for writes, the 4 KiB objects
    /// written so far (in turn) for reads.
    fn run(
        &mut self,
        kind: Kind,
        size: usize,
        depth: usize,
        duration: Duration,
        limit: u64,
    ) -> Result<(u64, f64, Vec<Duration>), BenchError> {
        let data = Bytes::from(vec![0x5au8; size]);
        let readable: Vec<String> = self
            .written
            .iter()
            .filter(|n| n.contains("-4096-"))
            .cloned()
            .collect();
        if kind == Kind::Read && readable.is_empty() {
            return Err(BenchError::Failed("no 4 KiB objects to read".into()));
        }
        let (tx, rx) = crossbeam_channel::unbounded::<(Instant, OpResult)>();
        let mut lats = Vec::new();
        let started = Instant::now();
        let mut issued = 0u64;
        let mut in_flight = 0usize;
        let mut done = 0u64;
        loop {
            while in_flight < depth && issued < limit && started.elapsed() < duration {
                let req = match kind {
                    Kind::Write => {
                        let name = format!("{}-{size}-{}", self.prefix, self.written.len());
                        self.written.push(name.clone());
                        OpRequest::new(self.pool, &name, vec![OsdOp::write_full(data.clone())])
                    }
                    Kind::Read => {
                        let name = &readable[(issued as usize) % readable.len()];
                        OpRequest::new(self.pool, name, vec![OsdOp::read(0, size as u64)])
                    }
                };
                let tx = tx.clone();
                let t0 = Instant::now();
                self.rados.submit(
                    req,
                    Box::new(move |r| {
                        let _ = tx.send((t0, r));
                    }),
                );
                issued += 1;
                in_flight += 1;
            }
            if in_flight == 0 {
                break;
            }
            let (t0, r) = rx
                .recv()
                .map_err(|_| BenchError::Failed("the client went away".into()))?;
            in_flight -= 1;
            let reply = r.map_err(|e| BenchError::Failed(format!("{kind:?} op failed: {e}")))?;
            if kind == Kind::Read {
                let got = reply.ops.first().map_or(0, |o| o.payload.len());
                if got != size {
                    return Err(BenchError::Failed(format!(
                        "read returned {got} bytes, expected {size}"
                    )));
                }
            }
            lats.push(t0.elapsed());
            done += 1;
        }
        Ok((done, started.elapsed().as_secs_f64(), lats))
    }

    /// Remove every object written, 16 at a time.
    fn cleanup(&mut self) -> Result<(), BenchError> {
        let (tx, rx) = crossbeam_channel::unbounded::<OpResult>();
        let mut in_flight = 0usize;
        let mut first_err = None;
        let names = std::mem::take(&mut self.written);
        let mut it = names.iter();
        loop {
            while in_flight < 16 {
                let Some(n) = it.next() else { break };
                let tx = tx.clone();
                self.rados.submit(
                    OpRequest::new(self.pool, n, vec![OsdOp::delete()]),
                    Box::new(move |r| {
                        let _ = tx.send(r);
                    }),
                );
                in_flight += 1;
            }
            if in_flight == 0 {
                break;
            }
            if let Ok(Err(e)) = rx.recv() {
                first_err.get_or_insert(e);
            }
            in_flight -= 1;
        }
        match first_err {
            Some(e) => Err(BenchError::Failed(format!("removing bench objects: {e}"))),
            None => Ok(()),
        }
    }
}

/// Run the phases and print (and with --json write) the figures.
pub fn run(args: &BenchArgs, out: &mut dyn Write) -> Result<Vec<PhaseResult>, BenchError> {
    if args.stack != super::BenchStack::Net(crate::stacks::StackKind::Posix) {
        return Err(BenchError::Usage(
            "--mode rados runs over --stack posix only (the RADOS client over DPDK is not done yet)"
                .into(),
        ));
    }
    let conn = RadosConnArgs {
        mon_host: args.rados.mon_host.clone(),
        keyring: args.rados.keyring.clone(),
        name: args.rados.rados_name.clone(),
        con_mode: Some(args.con_mode.name().to_string()),
        timeout: 30.0,
    };
    let workers = usize::try_from(args.workers).unwrap_or(1);
    let rados = conn
        .connect_with(|cfg| cfg.workers = workers)
        .map_err(|e| {
            if e.usage {
                BenchError::Usage(e.message)
            } else {
                BenchError::Failed(e.message)
            }
        })?;
    let pool = rados
        .pool_id(&args.rados.pool)
        .map_err(|e| BenchError::Failed(e.to_string()))?;
    let duration = Duration::from_secs_f64(args.duration.unwrap_or(5.0));
    let mut phase = Phase {
        rados: &rados,
        pool,
        prefix: format!(
            "msgr-bench-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ),
        written: Vec::new(),
    };
    let _ = writeln!(
        out,
        "# msgr bench --mode rados: pool {} ({pool}), {:.1} s or {} ops per phase, global_id {}",
        args.rados.pool,
        duration.as_secs_f64(),
        args.count,
        rados.global_id()
    );
    let _ = writeln!(
        out,
        "{:<6} {:>8} {:>5} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "phase",
        "size",
        "depth",
        "ops",
        "IOPS",
        "MB/s",
        "avg ms",
        "max ms",
        "p50 ms",
        "p99 ms",
        "p99.9 ms"
    );
    let mut results = Vec::new();
    let mut failure = None;
    for (name, kind, size, depth) in PHASES {
        match phase.run(kind, size, depth, duration, args.count) {
            Ok((ops, secs, mut lats)) => {
                lats.sort_unstable();
                let total: Duration = lats.iter().sum();
                let avg = if lats.is_empty() {
                    0.0
                } else {
                    total.as_secs_f64() * 1e3 / lats.len() as f64
                };
                let r = PhaseResult {
                    name,
                    size,
                    depth,
                    ops,
                    secs,
                    iops: ops as f64 / secs.max(1e-9),
                    mb_per_s: ops as f64 * size as f64 / secs.max(1e-9) / (1 << 20) as f64,
                    lat_avg_ms: avg,
                    lat_max_ms: lats.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
                    lat_min_ms: lats.first().map_or(0.0, |d| d.as_secs_f64() * 1e3),
                    p50_ms: percentile(&lats, 50.0),
                    p90_ms: percentile(&lats, 90.0),
                    p99_ms: percentile(&lats, 99.0),
                    p999_ms: percentile(&lats, 99.9),
                };
                let _ = writeln!(
                    out,
                    "{:<6} {:>8} {:>5} {:>8} {:>9.0} {:>9.2} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                    r.name, r.size, r.depth, r.ops, r.iops, r.mb_per_s, r.lat_avg_ms, r.lat_max_ms,
                    r.p50_ms, r.p99_ms, r.p999_ms
                );
                results.push(r);
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let cleaned = phase.cleanup();
    if let Some(e) = failure {
        return Err(e);
    }
    cleaned?;
    if let Some(path) = &args.json {
        std::fs::write(path, to_json(&args.rados.pool, &results))
            .map_err(|e| BenchError::Failed(format!("cannot write {}: {e}", path.display())))?;
        let _ = writeln!(
            out,
            "# wrote {} records to {}",
            results.len(),
            path.display()
        );
    }
    Ok(results)
}

fn to_json(pool: &str, results: &[PhaseResult]) -> String {
    let recs: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            serde_json::json!({
                "phase": r.name, "size": r.size, "depth": r.depth, "ops": r.ops, "secs": r.secs,
                "iops": r.iops, "mb_per_s": r.mb_per_s, "lat_avg_ms": r.lat_avg_ms,
                "lat_min_ms": r.lat_min_ms, "lat_max_ms": r.lat_max_ms, "p50_ms": r.p50_ms,
                "p90_ms": r.p90_ms, "p99_ms": r.p99_ms, "p999_ms": r.p999_ms,
            })
        })
        .collect();
    let doc = serde_json::json!({ "mode": "rados", "pool": pool, "results": recs });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}
