//! Messenger fixtures over the posix stack on loopback: collecting dispatchers and set-up helpers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use msgr::proto::types::{entity_type, AuthEntityName};
use msgr::proto::{Config, Error, Message, Policy};
use msgr::stack::fault::{FaultConfig, FaultStack};
use msgr::stack::posix::PosixStack;
use msgr::{ConnId, ConnectionRef, Dispatcher, Messenger, MessengerConfig};

use super::PayloadPool;

pub type PosixMessenger = Messenger<FaultStack<PosixStack>>;

/// Records what arrives, per connection, verifying payloads against a pool.
pub struct Collector {
    pub pool: Arc<PayloadPool>,
    pub by_conn: Mutex<HashMap<ConnId, Vec<u64>>>,
    pub received: AtomicU64,
    pub corrupted: AtomicU64,
    pub resets: AtomicU64,
    pub remote_resets: AtomicU64,
    pub connects: AtomicU64,
    pub accepts: AtomicU64,
    pub connect_failures: AtomicU64,
    pub last_failure: Mutex<String>,
    /// Echo every message back on the connection it came from.
    pub echo: bool,
    /// Sleep this long in every dispatch (a slow dispatcher).
    pub dispatch_delay: Duration,
}

impl Collector {
    pub fn new(pool: Arc<PayloadPool>) -> Arc<Self> {
        Self::with(pool, false, Duration::ZERO)
    }

    pub fn with(pool: Arc<PayloadPool>, echo: bool, dispatch_delay: Duration) -> Arc<Self> {
        Arc::new(Collector {
            pool,
            by_conn: Mutex::new(HashMap::new()),
            received: AtomicU64::new(0),
            corrupted: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            remote_resets: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            accepts: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            last_failure: Mutex::new(String::new()),
            echo,
            dispatch_delay,
        })
    }

    pub fn tids(&self, id: ConnId) -> Vec<u64> {
        self.by_conn
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }

    /// Every tid received, over all connections (connection order unspecified, in order within each).
    pub fn all_tids(&self) -> Vec<u64> {
        self.by_conn
            .lock()
            .unwrap()
            .values()
            .flatten()
            .copied()
            .collect()
    }

    /// Wait until `received` reaches `n`, or `timeout`.
    pub fn wait_for(&self, n: u64, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.received.load(Ordering::Acquire) >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.received.load(Ordering::Acquire) >= n
    }
}

impl Dispatcher for Collector {
    fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) {
        if !self.dispatch_delay.is_zero() {
            std::thread::sleep(self.dispatch_delay);
        }
        if !self.pool.verify(&msg) {
            self.corrupted.fetch_add(1, Ordering::Relaxed);
        }
        self.by_conn
            .lock()
            .unwrap()
            .entry(conn.id())
            .or_default()
            .push(msg.header.tid);
        if self.echo {
            let _ = conn.send(
                Message::new(msg.header.msg_type, msg.front.clone()).with_tid(msg.header.tid),
            );
        }
        self.received.fetch_add(1, Ordering::Release);
    }
    fn ms_handle_connect(&self, _conn: &ConnectionRef) {
        self.connects.fetch_add(1, Ordering::Relaxed);
    }
    fn ms_handle_accept(&self, _conn: &ConnectionRef) {
        self.accepts.fetch_add(1, Ordering::Relaxed);
    }
    fn ms_handle_reset(&self, _conn: &ConnectionRef, _why: &Error) {
        self.resets.fetch_add(1, Ordering::Relaxed);
    }
    fn ms_handle_remote_reset(&self, _conn: &ConnectionRef) {
        self.remote_resets.fetch_add(1, Ordering::Relaxed);
    }
    fn ms_handle_connect_failed(
        &self,
        _conn: &ConnectionRef,
        reason: &msgr::proto::TransportError,
    ) {
        *self.last_failure.lock().unwrap() = reason.to_string();
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// With MSGR_TEST_LOG set (e.g. `msgr=debug`), tests print the messenger's tracing to stderr.
pub fn init_log() {
    if let Ok(filter) = std::env::var("MSGR_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

pub fn proto_config(entity: u8, name: &str) -> Config {
    init_log();
    let mut c = Config::new(entity, AuthEntityName::parse(name).unwrap());
    c.initial_backoff = Duration::from_millis(1);
    c.max_backoff = Duration::from_millis(20);
    c.nonce = rand::random();
    c
}

pub fn messenger(
    proto: Config,
    workers: usize,
    fault: FaultConfig,
    d: Arc<dyn Dispatcher>,
) -> PosixMessenger {
    let mut cfg = MessengerConfig::new(proto);
    cfg.workers.threads = workers;
    if fault.socket_failure_one_in > 0 {
        // Small reads: more read calls, so injected failures land at many more points of the stream.
        cfg.read_buffer = 2048;
    }
    Messenger::new(FaultStack::new(PosixStack::new(), fault), cfg, d)
}

pub fn no_faults() -> FaultConfig {
    FaultConfig {
        socket_failure_one_in: 0,
        read_delay: Duration::ZERO,
        seed: 0,
    }
}

/// A started OSD-type server on `bind` with `policy` for clients.
pub fn server(
    bind: SocketAddr,
    workers: usize,
    policy: Policy,
    fault: FaultConfig,
    d: Arc<dyn Dispatcher>,
) -> PosixMessenger {
    let mut p = proto_config(entity_type::OSD, "osd.0");
    p.default_policy = policy;
    let mut m = messenger(p, workers, fault, d);
    m.bind(&[bind]).unwrap();
    m.start().unwrap();
    m
}

/// A started one-worker OSD-type server on an ephemeral loopback port, stateful for clients, no faults.
pub fn loopback_server(d: Arc<dyn Dispatcher>) -> PosixMessenger {
    server(
        "127.0.0.1:0".parse().unwrap(),
        1,
        Policy::stateful_server(),
        no_faults(),
        d,
    )
}

/// A `loopback_server` feeding `sink`, and a one-worker client (collecting into its own `Collector`)
/// with one lossless connection to it.
pub fn loopback_pair(
    pool: &Arc<PayloadPool>,
    sink: Arc<Collector>,
) -> (PosixMessenger, PosixMessenger, ConnectionRef) {
    let srv = loopback_server(sink);
    let cli = client(1, no_faults(), Collector::new(pool.clone()));
    let conn = cli
        .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossless_client())
        .unwrap();
    (srv, cli, conn)
}

pub fn client(workers: usize, fault: FaultConfig, d: Arc<dyn Dispatcher>) -> PosixMessenger {
    let mut m = messenger(
        proto_config(entity_type::CLIENT, "client.admin"),
        workers,
        fault,
        d,
    );
    m.start().unwrap();
    m
}

/// Echoes every message; the one with tid `slow_tid` waits `delay` first.
pub struct SlowOnceEcho {
    pub slow_tid: u64,
    pub delay: Duration,
}

impl Dispatcher for SlowOnceEcho {
    fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) {
        if msg.header.tid == self.slow_tid {
            std::thread::sleep(self.delay);
        }
        let reply = Message::new(msg.header.msg_type, msg.front.clone()).with_tid(msg.header.tid);
        let _ = conn.send(reply);
    }
}

/// Replies in arrival order: tid and arrival time.
pub struct Arrivals(pub Mutex<Vec<(u64, Instant)>>);

impl Dispatcher for Arrivals {
    fn ms_dispatch(&self, _conn: &ConnectionRef, msg: Message) {
        self.0
            .lock()
            .unwrap()
            .push((msg.header.tid, Instant::now()));
    }
}

impl Arrivals {
    /// How long before reply `slow` reply 0 arrived, and whether every reply with a smaller tid came
    /// before `slow` and every larger one after it. Panics if a tid is missing.
    pub fn lead_of_first_over(got: &[(u64, Instant)], slow: u64) -> (Duration, bool) {
        let at: HashMap<u64, Instant> = got.iter().copied().collect();
        let slow_at = at[&slow];
        let in_order = at
            .iter()
            .all(|(&tid, &t)| tid == slow || (tid < slow) == (t < slow_at));
        (slow_at.duration_since(at[&0]), in_order)
    }
}
