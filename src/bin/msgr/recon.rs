//! `msgr recon`: check that Ceph-protocol peers answer, and what they say about themselves.
//!
//! For each address, open a TCP connection, run a msgr2.1 client handshake (entity type client, lossy
//! client policy, auth method none, crc mode) with [`msgr::proto::Connection`] in a small blocking loop,
//! and report what the peer revealed: its entity type and msgr2 banner features (HELLO), how it sees our
//! address, and with auth none also its Ceph feature bits, addresses and `global_seq` (SERVER_IDENT);
//! plus timings. A peer that fails is classified with a reason ([`Failure`]): refused, timeout, msgr1
//! only, not Ceph, auth refused, wrong type, reset/closed early, ….
//!
//! Owns: address parsing, the per-peer probe, the bounded thread pool that runs probes concurrently,
//! and the table / JSON output. It depends only on `proto` and `std::net` — not on the messenger or
//! its event loop — so it keeps working whatever happens there.
//!
//! Invariants: every probe ends within about twice `--timeout` (connect, then handshake), never panics
//! on what a peer sends, and never sends anything but our banner and handshake frames; results come
//! back in the order the addresses were given.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use msgr::proto::auth::{AUTH_METHOD_CEPHX, AUTH_METHOD_NONE, CON_MODE_CRC, CON_MODE_SECURE};
use msgr::proto::banner::{msgr2_feature, BannerError};
use msgr::proto::conn::{Config, Connection, Event, Phase, Policy};
use msgr::proto::types::{entity_type, entity_type_name, AuthEntityName, EntityAddr};
use msgr::proto::Error;

use crate::stacks::{StackKind, StackOptions};

/// Exit status: every peer answered as expected.
pub const EXIT_OK: i32 = 0;
/// Exit status: at least one peer failed.
pub const EXIT_FAIL: i32 = 1;

/// Most probes running at once, whatever `--parallel` says.
pub const MAX_PARALLEL: usize = 256;
/// Longest `--timeout` accepted, in seconds.
pub const MAX_TIMEOUT_SECS: f64 = 3600.0;

/// Bytes of a non-Ceph peer's first answer quoted in the reason.
const QUOTED_BYTES: usize = 32;

/// `msgr recon ADDR... [--expect TYPE] [--json] [--timeout SECS] [--parallel N]`
#[derive(clap::Args, Debug, Clone)]
#[command(
    about = "Check that Ceph msgr2 peers answer, and report what they say about themselves",
    long_about = "Check that Ceph msgr2 peers answer, and report what they say about themselves.\n\n\
For each ADDR, msgr recon opens a TCP connection and runs a msgr2.1 client handshake (as a client \
entity, auth method none, crc mode). It reports the peer's entity type and msgr2 banner features, \
its view of our address, and - when the peer accepts auth none - its Ceph feature bits, its \
addresses and global_seq, with the round-trip time (connect to the peer's banner) and the total \
handshake time. Peers are probed concurrently.\n\n\
A peer fails with a reason: connection refused; timeout (connect, or no answer); msgr1 only (it \
sent the legacy banner \"ceph v027\": point recon at its v2 port, usually 3300 for monitors); not \
Ceph (the first bytes it sent are quoted); auth refused (it does not allow auth none; the methods \
it allows, e.g. cephx, are listed - the peer is up and speaks msgr2); wrong type (with --expect); \
reset / closed early.\n\n\
Exit status: 0 if every peer is OK, 1 if any failed, 2 on bad usage.",
    after_help = "Examples:\n  \
msgr recon 10.0.0.1:3300 10.0.0.2:3300 10.0.0.3:3300 --expect mon\n  \
msgr recon '[fd00::5]:6800' --expect osd --timeout 2 --json"
)]
pub struct ReconArgs {
    /// Peers to probe: IP:PORT, IPv6 in brackets (`[::1]:3300`); host names are not resolved. Ceph's
    /// form "v2:IP:PORT/NONCE" (as `ceph osd dump` prints it) is accepted too, and its nonce is used:
    /// daemons other than monitors close a connection that names the wrong nonce.
    #[arg(value_name = "ADDR", required = true)]
    pub addrs: Vec<String>,

    /// Fail any peer that is not of this entity type (checked on its HELLO).
    #[arg(long, value_enum, value_name = "TYPE")]
    pub expect: Option<ExpectedType>,

    /// Print a JSON array (one object per peer, in the order given) instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Seconds allowed to connect, and again to complete the handshake (fractions allowed).
    #[arg(long, value_name = "SECS", default_value_t = 5.0, value_parser = parse_timeout)]
    pub timeout: f64,

    /// Most peers probed at the same time (1..=256).
    #[arg(long, short = 'j', value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..=MAX_PARALLEL as i64))]
    pub parallel: u16,

    /// Network stack: posix (kernel TCP, the full probe above), dpdk (a build with --features dpdk;
    /// --dpdk-args) or rdma (a build with --features rdma; see --rdma-wire): over dpdk and rdma each
    /// peer is reached by msgr's messenger, one after the other, and the table shows its type,
    /// addresses, features and handshake time.
    #[arg(long, value_enum, default_value_t = StackKind::Posix)]
    pub stack: StackKind,

    #[command(flatten)]
    pub stack_options: StackOptions,
}

/// Entity types `--expect` accepts.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedType {
    Mon,
    Osd,
    Mgr,
    Mds,
    Client,
}

impl ExpectedType {
    /// The `CEPH_ENTITY_TYPE_*` value.
    pub fn entity_type(self) -> u8 {
        match self {
            ExpectedType::Mon => entity_type::MON,
            ExpectedType::Osd => entity_type::OSD,
            ExpectedType::Mgr => entity_type::MGR,
            ExpectedType::Mds => entity_type::MDS,
            ExpectedType::Client => entity_type::CLIENT,
        }
    }
}

/// A peer to probe: its socket address and the nonce of the daemon we expect there (0: any/unknown;
/// monitors use 0, other daemons a random one that they check in CLIENT_IDENT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    pub addr: SocketAddr,
    pub nonce: u32,
}

impl std::fmt::Display for Target {
    /// `IP:PORT`, with `/NONCE` when the nonce is not 0.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.nonce {
            0 => write!(f, "{}", self.addr),
            n => write!(f, "{}/{n}", self.addr),
        }
    }
}

impl From<SocketAddr> for Target {
    fn from(addr: SocketAddr) -> Self {
        Target { addr, nonce: 0 }
    }
}

/// How one probe runs.
#[derive(Debug, Clone, Copy)]
pub struct ProbeOptions {
    /// Allowed for the TCP connect, and again for the handshake.
    pub timeout: Duration,
    /// Entity type the peer must have (`CEPH_ENTITY_TYPE_*`), if any.
    pub expect: Option<u8>,
}

/// Why a peer failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// The TCP connect was refused (nothing listens there).
    Refused,
    /// The TCP connect did not complete in time.
    ConnectTimeout,
    /// Any other connect error (no route, unreachable, …).
    Unreachable,
    /// Connected, but the handshake did not finish in time.
    Timeout,
    /// The peer sent the msgr1 banner "ceph v027".
    Msgr1Only,
    /// The peer's first bytes were not a Ceph banner.
    NotCeph,
    /// The peer refused auth method none (AUTH_BAD_METHOD) or authentication failed.
    AuthRefused,
    /// The peer's entity type is not the one `--expect` asked for.
    WrongType,
    /// The peer speaks msgr2 but cannot talk to us (features, modes).
    Incompatible,
    /// The peer broke the protocol (bad frame, unexpected frame).
    ProtocolError,
    /// The connection was reset or closed before the handshake finished.
    Reset,
}

/// What one probe learned. Serialized as one element of `--json`'s array.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerReport {
    /// The address probed (`IP:PORT`, IPv6 in brackets).
    pub addr: String,
    /// `"OK"` or `"FAIL"`.
    pub status: &'static str,
    pub ok: bool,
    /// The peer's entity type from its HELLO (`"mon"`, `"osd"`, …).
    pub entity_type: Option<String>,
    /// msgr2 features the peer's banner supports, hex (`"0x1"`).
    pub msgr2_features: Option<String>,
    /// The same, by name (`"revision_1"`, `"compression"`).
    pub msgr2_feature_names: Vec<String>,
    /// Ceph feature bits the peer supports (SERVER_IDENT), hex.
    pub ceph_features: Option<String>,
    /// The addresses the peer says it has (SERVER_IDENT), as Ceph prints them.
    pub addrs: Vec<String>,
    /// The peer's `global_seq` (SERVER_IDENT).
    pub global_seq: Option<u64>,
    /// Our address as the peer sees it (its HELLO).
    pub seen_as: Option<String>,
    /// TCP connect time.
    pub connect_ms: Option<f64>,
    /// From the connect completing to the peer's whole banner: about one round trip.
    pub banner_rtt_ms: Option<f64>,
    /// From starting the connect to SERVER_IDENT.
    pub handshake_ms: Option<f64>,
    pub failure: Option<Failure>,
    pub reason: Option<String>,
}

impl PeerReport {
    /// A report for `target` that has not succeeded (yet).
    pub fn new(target: Target) -> Self {
        PeerReport {
            addr: target.to_string(),
            status: "FAIL",
            ok: false,
            entity_type: None,
            msgr2_features: None,
            msgr2_feature_names: Vec::new(),
            ceph_features: None,
            addrs: Vec::new(),
            global_seq: None,
            seen_as: None,
            connect_ms: None,
            banner_rtt_ms: None,
            handshake_ms: None,
            failure: None,
            reason: None,
        }
    }

    /// Mark the peer failed, with the reason.
    pub fn fail(&mut self, failure: Failure, reason: impl Into<String>) {
        self.ok = false;
        self.status = "FAIL";
        self.failure = Some(failure);
        self.reason = Some(reason.into());
    }

    /// Mark the peer OK.
    pub fn succeed(&mut self) {
        self.ok = true;
        self.status = "OK";
        self.failure = None;
        self.reason = None;
    }
}

/// Runs `msgr recon` and prints its table or JSON to stdout. `Ok` is the exit status ([`EXIT_OK`] or
/// [`EXIT_FAIL`]); `Err` is a bad-usage message: print it and exit with status 2 (usage).
pub fn run(args: &ReconArgs) -> Result<i32, String> {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    run_to(args, &mut out)
}

/// [`run`], writing the output to `out`.
pub fn run_to(args: &ReconArgs, out: &mut dyn Write) -> Result<i32, String> {
    crate::stacks::check(args.stack, &args.stack_options).map_err(|e| e.to_string())?;
    if args.stack != StackKind::Posix {
        let name = args.stack.name();
        return Err(format!(
            "recon --stack {name} reaches peers through the messenger: `msgr recon --stack {name}`"
        ));
    }
    let addrs = args
        .addrs
        .iter()
        .map(|a| parse_target(a))
        .collect::<Result<Vec<_>, _>>()?;
    if addrs.is_empty() {
        return Err("no address given (expected one or more IP:PORT)".into());
    }
    let timeout = check_timeout(args.timeout)?;
    let parallel = usize::from(args.parallel);
    if !(1..=MAX_PARALLEL).contains(&parallel) {
        return Err(format!(
            "--parallel {parallel}: expected 1..={MAX_PARALLEL}"
        ));
    }
    let opts = ProbeOptions {
        timeout,
        expect: args.expect.map(ExpectedType::entity_type),
    };
    let reports = probe_all(&addrs, &opts, parallel);
    let text = if args.json {
        render_json(&reports)
    } else {
        render_table(&reports)
    };
    // A closed stdout (`| head`) is not a reason to report the peers differently.
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    Ok(if reports.iter().all(|r| r.ok) {
        EXIT_OK
    } else {
        EXIT_FAIL
    })
}

/// Parses a peer address: `IP:PORT` with IPv6 in brackets, optionally in Ceph's `entity_addr_t` form
/// (`v2:` or `v1:` prefix, ignored; `/NONCE` suffix, kept). The error says what is wrong.
pub fn parse_target(input: &str) -> Result<Target, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty address (expected IP:PORT, e.g. 10.0.0.1:3300)".into());
    }
    let s = s
        .strip_prefix("v2:")
        .or_else(|| s.strip_prefix("v1:"))
        .unwrap_or(s);
    let (s, nonce) = match s.rsplit_once('/') {
        Some((head, nonce)) => match nonce.parse::<u32>() {
            Ok(n) => (head, n),
            Err(_) => {
                return Err(format!(
                    "{input:?}: bad nonce {nonce:?} after '/' (expected 0..=4294967295)"
                ))
            }
        },
        None => (s, 0),
    };
    if let Ok(addr) = s.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(format!("{input:?}: port 0 is not a port a peer listens on"));
        }
        return Ok(Target { addr, nonce });
    }
    if s.parse::<IpAddr>().is_ok() {
        return Err(if s.contains(':') {
            format!("{input:?}: IPv6 address without a port; write it as [{s}]:PORT")
        } else {
            format!("{input:?}: missing port (expected IP:PORT, e.g. {s}:3300)")
        });
    }
    let (host, port) = match s.rsplit_once(':') {
        Some(hp) => hp,
        None => {
            return Err(format!(
                "{input:?}: not an address (expected IP:PORT, e.g. 10.0.0.1:3300; host names are not resolved)"
            ))
        }
    };
    if port.parse::<u16>().is_err() {
        return Err(format!("{input:?}: bad port {port:?} (expected 1..=65535)"));
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<IpAddr>().is_err() {
        return Err(format!(
            "{input:?}: {host:?} is not an IP address (host names are not resolved; IPv6 goes in brackets: [::1]:3300)"
        ));
    }
    Err(format!(
        "{input:?}: not an address (expected IP:PORT; IPv6 goes in brackets: [::1]:3300)"
    ))
}

fn parse_timeout(s: &str) -> Result<f64, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    check_timeout(secs)?;
    Ok(secs)
}

fn check_timeout(secs: f64) -> Result<Duration, String> {
    if !secs.is_finite() || secs <= 0.0 || secs > MAX_TIMEOUT_SECS {
        return Err(format!(
            "--timeout {secs}: expected seconds in (0, {MAX_TIMEOUT_SECS}]"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Probes every address with at most `parallel` threads at once; reports come back in `addrs`' order.
pub fn probe_all(addrs: &[Target], opts: &ProbeOptions, parallel: usize) -> Vec<PeerReport> {
    let workers = parallel.clamp(1, MAX_PARALLEL).min(addrs.len());
    let next = AtomicUsize::new(0);
    let slots: Mutex<Vec<Option<PeerReport>>> = Mutex::new(vec![None; addrs.len()]);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(addr) = addrs.get(i) else {
                    return;
                };
                let report = probe(*addr, opts);
                if let Ok(mut slots) = slots.lock() {
                    if let Some(slot) = slots.get_mut(i) {
                        *slot = Some(report);
                    }
                }
            });
        }
    });
    let slots = slots.into_inner().unwrap_or_else(|p| p.into_inner());
    slots
        .into_iter()
        .zip(addrs)
        .map(|(r, a)| {
            r.unwrap_or_else(|| {
                // Only if a probe thread died, which a probe never should.
                let mut r = PeerReport::new(*a);
                r.fail(Failure::Reset, "probe thread failed");
                r
            })
        })
        .collect()
}

/// Probes one peer: connect, msgr2 handshake up to SERVER_IDENT, close.
pub fn probe(target: Target, opts: &ProbeOptions) -> PeerReport {
    let mut report = PeerReport::new(target);
    let started = Instant::now();
    let stream = match TcpStream::connect_timeout(&target.addr, opts.timeout) {
        Ok(s) => s,
        Err(e) => {
            let (failure, reason) = connect_failure(&e, opts.timeout);
            report.fail(failure, reason);
            return report;
        }
    };
    let connected = Instant::now();
    report.connect_ms = Some(millis(connected - started));
    let mut probe = Handshake::new(target, opts, connected);
    let outcome = probe.run(stream);
    probe.fill(&mut report, started);
    match outcome {
        Ok(()) => report.succeed(),
        Err((failure, reason)) => report.fail(failure, reason),
    }
    // The type check wins over whatever else happened: it is what the operator asked about.
    if let (Some(want), Some(got)) = (opts.expect, probe.peer_type) {
        if want != got {
            let mut reason = format!(
                "wrong type: peer is {}, expected {}",
                type_name(got),
                type_name(want)
            );
            if let Some(other) = report.reason.take() {
                reason.push_str(&format!(" (also: {other})"));
            }
            report.fail(Failure::WrongType, reason);
        }
    }
    report
}

/// One handshake over one TCP stream, and what it learned.
struct Handshake {
    conn: Connection,
    target_nonce: u32,
    timeout: Duration,
    connected: Instant,
    /// The first bytes the peer sent, quoted when it is not Ceph.
    first_bytes: Vec<u8>,
    bytes_in: usize,
    banner_at: Option<Instant>,
    ready_at: Option<Instant>,
    peer_type: Option<u8>,
    /// Read at SERVER_IDENT: closing the connection resets the session that holds it.
    global_seq: Option<u64>,
}

type Failed = (Failure, String);

impl Handshake {
    fn new(target: Target, opts: &ProbeOptions, now: Instant) -> Self {
        let mut cfg = Config::new(
            entity_type::CLIENT,
            AuthEntityName::new(entity_type::CLIENT, "admin"),
        );
        cfg.nonce = rand::random();
        cfg.handshake_timeout = opts.timeout;
        let conn = Connection::client(
            Arc::new(cfg),
            Policy::lossy_client(),
            entity_type::ANY,
            EntityAddr::msgr2(target.addr, target.nonce),
            now,
        );
        Handshake {
            conn,
            target_nonce: target.nonce,
            timeout: opts.timeout,
            connected: now,
            first_bytes: Vec::new(),
            bytes_in: 0,
            banner_at: None,
            ready_at: None,
            peer_type: None,
            global_seq: None,
        }
    }

    /// Drives the connection until SERVER_IDENT, a failure, or the deadline.
    fn run(&mut self, mut stream: TcpStream) -> Result<(), Failed> {
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(self.timeout));
        // Client connections announce OpenTransport at once; ours is already open.
        while self.conn.poll_event().is_some() {}
        self.conn.on_transport_connected(self.connected);
        let deadline = self.connected + self.timeout;
        let result = self.drive(&mut stream, deadline);
        self.conn.close();
        let _ = stream.shutdown(std::net::Shutdown::Both);
        result
    }

    fn drive(&mut self, stream: &mut TcpStream, deadline: Instant) -> Result<(), Failed> {
        let mut buf = vec![0u8; 16 * 1024];
        let mut out: Vec<Bytes> = Vec::new();
        loop {
            let now = Instant::now();
            out.clear();
            self.conn.poll_transmit(now, &mut out);
            for b in &out {
                if let Err(e) = stream.write_all(b) {
                    return Err(self.io_failure(&e, "sending"));
                }
            }
            while let Some(ev) = self.conn.poll_event() {
                match ev {
                    Event::Connected { .. } => {
                        self.ready_at = Some(Instant::now());
                        self.global_seq = Some(self.conn.peer_global_seq());
                        return Ok(());
                    }
                    Event::TransportDown(e) | Event::Reset(e) => return Err(self.classify(&e)),
                    Event::Closed => {
                        return Err((Failure::Reset, "connection closed by msgr".into()))
                    }
                    _ => {}
                }
            }
            if now >= deadline {
                return Err(self.timed_out());
            }
            let mut wait = deadline - now;
            if let Some(at) = self.conn.poll_timeout() {
                if at <= now {
                    self.conn.handle_timeout(now);
                    continue;
                }
                wait = wait.min(at - now);
            }
            let _ = stream.set_read_timeout(Some(wait.max(Duration::from_millis(1))));
            match stream.read(&mut buf) {
                Ok(0) => return Err(self.closed_early()),
                Ok(n) => {
                    let data = buf.get(..n).unwrap_or_default();
                    self.input(data);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(self.io_failure(&e, "receiving")),
            }
        }
    }

    fn input(&mut self, data: &[u8]) {
        let now = Instant::now();
        let room = QUOTED_BYTES.saturating_sub(self.first_bytes.len());
        self.first_bytes
            .extend_from_slice(data.get(..room.min(data.len())).unwrap_or_default());
        self.bytes_in += data.len();
        let was_banner = self.conn.phase() == Phase::Banner;
        self.conn.handle_input(now, data);
        if was_banner && self.conn.phase() != Phase::Banner && self.banner_at.is_none() {
            // Cleared again in `classify` if the "banner" was refused as not msgr2.
            self.banner_at = Some(now);
        }
        if self.peer_type.is_none() && self.conn.peer_type() != entity_type::ANY {
            self.peer_type = Some(self.conn.peer_type());
        }
    }

    fn classify(&mut self, e: &Error) -> Failed {
        match e {
            Error::Banner(b) => {
                self.banner_at = None;
                match b {
                    BannerError::Legacy => (
                        Failure::Msgr1Only,
                        "msgr1 only (legacy banner \"ceph v027\"; msgr2 usually listens on port 3300 for monitors)"
                            .into(),
                    ),
                    BannerError::NotCeph => (
                        Failure::NotCeph,
                        format!("not Ceph: first bytes were \"{}\"", quote(&self.first_bytes)),
                    ),
                    other => (Failure::Incompatible, format!("bad msgr2 banner: {other}")),
                }
            }
            Error::AuthFailed(msg) => match self.conn.peer_auth_bad_method() {
                Some(bad) => (
                    Failure::AuthRefused,
                    format!(
                        "auth refused: peer allows {} (modes {}); recon offers only auth none",
                        name_list(&bad.allowed_methods, auth_method_name),
                        name_list(&bad.allowed_modes, con_mode_name)
                    ),
                ),
                None => (Failure::AuthRefused, format!("auth refused: {msg}")),
            },
            Error::TimedOut(_) => self.timed_out(),
            Error::PeerIncompatible(msg) => (Failure::Incompatible, format!("incompatible: {msg}")),
            Error::Transport(msg) => (Failure::Reset, format!("transport: {msg}")),
            Error::Closed => (Failure::Reset, "connection closed".into()),
            other => (
                Failure::ProtocolError,
                format!(
                    "protocol error in {}: {other}",
                    phase_name(self.conn.phase())
                ),
            ),
        }
    }

    fn timed_out(&self) -> Failed {
        let secs = self.timeout.as_secs_f64();
        if self.bytes_in == 0 {
            (
                Failure::Timeout,
                format!("timeout: connected, but no answer within {secs}s"),
            )
        } else {
            (
                Failure::Timeout,
                format!(
                    "timeout: handshake stalled in {} after {} bytes from the peer ({secs}s)",
                    phase_name(self.conn.phase()),
                    self.bytes_in
                ),
            )
        }
    }

    fn closed_early(&self) -> Failed {
        if self.bytes_in == 0 {
            (
                Failure::Reset,
                "closed early: peer closed the connection without sending anything".into(),
            )
        } else {
            let hint = if self.conn.phase() == Phase::Session && self.target_nonce == 0 {
                " (a daemon closes here if the address we dialled is not its own: give its nonce, v2:IP:PORT/NONCE)"
            } else {
                ""
            };
            (
                Failure::Reset,
                format!(
                    "closed early: peer closed the connection in {} after {} bytes{hint}",
                    phase_name(self.conn.phase()),
                    self.bytes_in
                ),
            )
        }
    }

    fn io_failure(&self, e: &io::Error, doing: &str) -> Failed {
        match e.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => (
                Failure::Reset,
                format!(
                    "reset: {e} while {doing} in {} after {} bytes from the peer",
                    phase_name(self.conn.phase()),
                    self.bytes_in
                ),
            ),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => self.timed_out(),
            _ => (Failure::Reset, format!("I/O error while {doing}: {e}")),
        }
    }

    /// Copies what the handshake learned into `r` (`started`: when the connect began).
    fn fill(&self, r: &mut PeerReport, started: Instant) {
        r.entity_type = self.peer_type.map(type_name);
        if let Some(at) = self.banner_at {
            let f = self.conn.peer_msgr2_features();
            r.msgr2_features = Some(format!("{f:#x}"));
            r.msgr2_feature_names = msgr2_feature_names(f);
            r.banner_rtt_ms = Some(millis(at - self.connected));
        }
        r.seen_as = self.conn.addr_seen_by_peer().map(|a| a.to_string());
        if let Some(at) = self.ready_at {
            r.ceph_features = Some(format!("{:#x}", self.conn.peer_supported_features()));
            r.addrs = self
                .conn
                .peer_addrs()
                .0
                .iter()
                .map(|a| a.to_string())
                .collect();
            r.global_seq = self.global_seq;
            r.handshake_ms = Some(millis(at - started));
        }
    }
}

fn connect_failure(e: &io::Error, timeout: Duration) -> Failed {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => (Failure::Refused, "connection refused".into()),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => (
            Failure::ConnectTimeout,
            format!("timeout: connect took over {}s", timeout.as_secs_f64()),
        ),
        _ => (Failure::Unreachable, format!("connect failed: {e}")),
    }
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn type_name(t: u8) -> String {
    match entity_type_name(t) {
        "unknown" => format!("unknown({t:#x})"),
        name => name.to_string(),
    }
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Connecting => "connect",
        Phase::Banner => "banner exchange",
        Phase::Hello => "HELLO",
        Phase::Auth => "auth",
        Phase::AuthSignature => "AUTH_SIGNATURE",
        Phase::Session => "CLIENT_IDENT",
        Phase::Reconnecting => "SESSION_RECONNECT",
        Phase::AwaitingDecision => "session decision",
        Phase::Ready => "ready",
        Phase::Standby => "standby",
        Phase::Wait => "WAIT",
        Phase::Closed => "closed connection",
    }
}

fn msgr2_feature_names(bits: u64) -> Vec<String> {
    let mut names = Vec::new();
    if bits & msgr2_feature::REVISION_1 != 0 {
        names.push("revision_1".to_string());
    }
    if bits & msgr2_feature::COMPRESSION != 0 {
        names.push("compression".to_string());
    }
    let rest = bits & !(msgr2_feature::REVISION_1 | msgr2_feature::COMPRESSION);
    if rest != 0 {
        names.push(format!("unknown({rest:#x})"));
    }
    names
}

fn auth_method_name(m: u32) -> String {
    match m {
        0 => "unknown".into(),
        AUTH_METHOD_NONE => "none".into(),
        AUTH_METHOD_CEPHX => "cephx".into(),
        4 => "gss".into(),
        other => format!("method {other}"),
    }
}

fn con_mode_name(m: u32) -> String {
    match m {
        CON_MODE_CRC => "crc".into(),
        CON_MODE_SECURE => "secure".into(),
        other => format!("mode {other}"),
    }
}

fn name_list(items: &[u32], name: fn(u32) -> String) -> String {
    if items.is_empty() {
        return "nothing".into();
    }
    items
        .iter()
        .map(|&i| name(i))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Bytes as readable text: printable ASCII as is, the rest escaped (`\r`, `\n`, `\xNN`).
fn quote(bytes: &[u8]) -> String {
    let mut s = String::new();
    for &b in bytes {
        match b {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(char::from(b)),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s
}

/// The `--json` output: a pretty-printed array, one object per peer, and a newline.
pub fn render_json(reports: &[PeerReport]) -> String {
    let mut s = serde_json::to_string_pretty(reports).unwrap_or_else(|e| {
        // Serializing plain strings and numbers cannot fail; say so if it ever does.
        format!("{{\"error\": \"{}\"}}", quote(e.to_string().as_bytes()))
    });
    s.push('\n');
    s
}

/// The default output: one aligned line per peer, then a summary line.
pub fn render_table(reports: &[PeerReport]) -> String {
    const HEADER: [&str; 10] = [
        "ADDRESS", "STATUS", "TYPE", "MSGR2", "FEATURES", "ADDRS", "GSEQ", "RTT", "TOTAL", "REASON",
    ];
    let dash = || "-".to_string();
    let ms = |v: Option<f64>| v.map_or_else(dash, |v| format!("{v:.2}ms"));
    let rows: Vec<[String; 10]> = reports
        .iter()
        .map(|r| {
            [
                r.addr.clone(),
                r.status.to_string(),
                r.entity_type.clone().unwrap_or_else(dash),
                r.msgr2_features.clone().unwrap_or_else(dash),
                r.ceph_features.clone().unwrap_or_else(dash),
                if r.addrs.is_empty() {
                    dash()
                } else {
                    format!("[{}]", r.addrs.join(","))
                },
                r.global_seq.map_or_else(dash, |g| g.to_string()),
                ms(r.banner_rtt_ms),
                ms(r.handshake_ms),
                r.reason.clone().unwrap_or_else(dash),
            ]
        })
        .collect();
    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&HEADER.map(String::from));
    for row in &rows {
        line(row);
    }
    let failed = reports.iter().filter(|r| !r.ok).count();
    out.push_str(&format!(
        "{} peer{}: {} OK, {} FAIL\n",
        reports.len(),
        if reports.len() == 1 { "" } else { "s" },
        reports.len() - failed,
        failed
    ));
    out
}
