//! Fixtures for the ports of Ceph's src/test/msgr/test_msgr.cc (tests/ceph_msgr_suite*.rs): Ceph's
//! settings from its main(), its FakeDispatcher (per-connection message counts, a server that answers
//! every message with a ping, callback counts) and, with the `interceptor` feature, its TestInterceptor
//! (breakpoints, wait, proceed, step history).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use msgr::proto::types::{entity_type, AuthEntityName};
use msgr::proto::{Config, Error, Message};
use msgr::stack::fault::{FaultConfig, FaultStack};
use msgr::stack::posix::PosixStack;
use msgr::{ConnId, ConnectionRef, Dispatcher, Messenger, MessengerConfig};

use super::net::{init_log, no_faults, PosixMessenger};

/// `CEPH_MSG_PING` (MPing).
pub const CEPH_MSG_PING: u16 = 2;
/// `MSG_COMMAND` (MCommand).
pub const MSG_COMMAND: u16 = 97;

/// How long a test waits for anything before failing (Ceph waits forever; we must end).
pub const WAIT: Duration = Duration::from_secs(20);

pub fn ping() -> Message {
    Message::new(CEPH_MSG_PING, Bytes::new())
}

/// Ceph's main() for test_msgr: ms_max_backoff = 1 s; ms_initial_backoff at its default (0.2 s); auth
/// none; a random address nonce per messenger. Old or duplicate messages are failures: the tests check
/// `duplicates_dropped == 0` (Ceph: ms_die_on_old_message).
pub fn ceph_config(entity: u8, name: &str) -> Config {
    init_log();
    let mut c = Config::new(entity, AuthEntityName::parse(name).unwrap());
    c.initial_backoff = Duration::from_millis(200);
    c.max_backoff = Duration::from_secs(1);
    c.nonce = rand::random::<u32>() | 1;
    c
}

/// Ceph's server_msgr: an OSD.
pub fn osd_config() -> Config {
    ceph_config(entity_type::OSD, "osd.0")
}

/// Ceph's client_msgr: a client.
pub fn client_config() -> Config {
    ceph_config(entity_type::CLIENT, "client.admin")
}

/// A started messenger over the (fault-injecting) posix stack, bound to `bind` if given.
pub fn start(
    proto: Config,
    workers: usize,
    bind: Option<SocketAddr>,
    fault: FaultConfig,
    d: Arc<dyn Dispatcher>,
) -> PosixMessenger {
    let mut cfg = MessengerConfig::new(proto);
    cfg.workers.threads = workers;
    cfg.workers.pin_cores = false;
    let mut m = Messenger::new(FaultStack::new(PosixStack::new(), fault), cfg, d);
    if let Some(b) = bind {
        m.bind(&[b]).unwrap();
    }
    m.start().unwrap();
    m
}

/// A started messenger on an ephemeral loopback port, no faults.
pub fn start_bound(proto: Config, workers: usize, d: Arc<dyn Dispatcher>) -> PosixMessenger {
    start(proto, workers, Some(loopback()), no_faults(), d)
}

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Poll `cond` every millisecond until it holds or `timeout` passes (Ceph's CHECK_AND_WAIT_TRUE, bounded).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Duplicates the messenger dropped: a lossless session that delivered an old message again fails the
/// test (Ceph's ms_die_on_old_message).
pub fn assert_no_duplicates(m: &PosixMessenger) {
    let c = m.counters();
    assert_eq!(c.duplicates_dropped, 0, "old or duplicate messages: {c:?}");
}

/// Established TCP connections (one end listening on one of `ports`): how many sockets survive between
/// messengers whose listeners are `ports` (each connection has exactly one end on a listener's port).
pub fn established_tcp(ports: &[u16]) -> usize {
    let mut n = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 || f[3] != "01" {
                continue;
            }
            let port = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if port.is_some_and(|p| ports.contains(&p)) {
                n += 1;
            }
        }
    }
    n
}

pub fn port_of(m: &PosixMessenger) -> u16 {
    m.my_addrs()
        .msgr2()
        .and_then(|a| a.sockaddr)
        .map(|s| s.port())
        .expect("a bound messenger")
}

#[derive(Default)]
struct FakeState {
    got_new: bool,
    got_remote_reset: bool,
    got_connect: bool,
    /// Messages received per connection since its session began (Ceph's Session::count, dropped on
    /// reset / remote reset).
    counts: HashMap<ConnId, u64>,
    connects: HashMap<ConnId, u64>,
    accepts: HashMap<ConnId, u64>,
    resets: HashMap<ConnId, u64>,
    remote_resets: HashMap<ConnId, u64>,
    last_accept: Option<ConnectionRef>,
    /// Payload bytes received, over all connections.
    bytes: u64,
}

/// Ceph's FakeDispatcher: counts messages per connection; a server answers each message with a ping.
pub struct FakeDispatcher {
    is_server: bool,
    state: Mutex<FakeState>,
    cond: Condvar,
}

impl FakeDispatcher {
    pub fn new(is_server: bool) -> Arc<Self> {
        Arc::new(FakeDispatcher {
            is_server,
            state: Mutex::new(FakeState::default()),
            cond: Condvar::new(),
        })
    }

    fn wait_flag(&self, timeout: Duration, flag: impl Fn(&mut FakeState) -> &mut bool) -> bool {
        let mut s = self.state.lock().unwrap();
        let end = Instant::now() + timeout;
        while !*flag(&mut s) {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self.cond.wait_timeout(s, left).unwrap().0;
        }
        *flag(&mut s) = false;
        true
    }

    /// Wait for a message (Ceph: `cond.wait(l, [&] { return got_new; }); got_new = false`).
    pub fn wait_new(&self) -> bool {
        self.wait_flag(WAIT, |s| &mut s.got_new)
    }
    pub fn wait_remote_reset(&self) -> bool {
        self.wait_flag(WAIT, |s| &mut s.got_remote_reset)
    }
    pub fn wait_connect(&self) -> bool {
        self.wait_flag(WAIT, |s| &mut s.got_connect)
    }
    pub fn clear_flags(&self) {
        let mut s = self.state.lock().unwrap();
        s.got_new = false;
        s.got_remote_reset = false;
        s.got_connect = false;
    }
    pub fn got_remote_reset(&self) -> bool {
        self.state.lock().unwrap().got_remote_reset
    }

    /// Messages received on `c` in its current session.
    pub fn count(&self, c: &ConnectionRef) -> u64 {
        self.count_id(c.id())
    }
    pub fn count_id(&self, id: ConnId) -> u64 {
        *self.state.lock().unwrap().counts.get(&id).unwrap_or(&0)
    }
    pub fn connects(&self, c: &ConnectionRef) -> u64 {
        *self
            .state
            .lock()
            .unwrap()
            .connects
            .get(&c.id())
            .unwrap_or(&0)
    }
    pub fn accepts_total(&self) -> u64 {
        self.state.lock().unwrap().accepts.values().sum()
    }
    pub fn connects_total(&self) -> u64 {
        self.state.lock().unwrap().connects.values().sum()
    }
    pub fn resets_total(&self) -> u64 {
        self.state.lock().unwrap().resets.values().sum()
    }
    pub fn remote_resets_total(&self) -> u64 {
        self.state.lock().unwrap().remote_resets.values().sum()
    }
    pub fn bytes(&self) -> u64 {
        self.state.lock().unwrap().bytes
    }
    pub fn last_accept(&self) -> Option<ConnectionRef> {
        self.state.lock().unwrap().last_accept.clone()
    }
}

impl Dispatcher for FakeDispatcher {
    fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) {
        if self.is_server {
            let _ = conn.send(ping());
        }
        let mut s = self.state.lock().unwrap();
        *s.counts.entry(conn.id()).or_default() += 1;
        s.bytes += msg.payload_len() as u64;
        s.got_new = true;
        self.cond.notify_all();
    }
    fn ms_handle_connect(&self, conn: &ConnectionRef) {
        let mut s = self.state.lock().unwrap();
        *s.connects.entry(conn.id()).or_default() += 1;
        s.got_connect = true;
        self.cond.notify_all();
    }
    fn ms_handle_accept(&self, conn: &ConnectionRef) {
        let mut s = self.state.lock().unwrap();
        *s.accepts.entry(conn.id()).or_default() += 1;
        s.last_accept = Some(conn.clone());
        self.cond.notify_all();
    }
    fn ms_handle_reset(&self, conn: &ConnectionRef, _why: &Error) {
        let mut s = self.state.lock().unwrap();
        *s.resets.entry(conn.id()).or_default() += 1;
        s.counts.remove(&conn.id());
        self.cond.notify_all();
    }
    fn ms_handle_remote_reset(&self, conn: &ConnectionRef) {
        let mut s = self.state.lock().unwrap();
        *s.remote_resets.entry(conn.id()).or_default() += 1;
        s.counts.remove(&conn.id());
        s.got_remote_reset = true;
        self.cond.notify_all();
    }
}

#[cfg(feature = "interceptor")]
#[allow(unused_imports)]
pub use interceptor::*;

#[cfg(feature = "interceptor")]
mod interceptor {
    use std::collections::{HashMap, HashSet};
    use std::sync::{Condvar, Mutex};
    use std::time::{Duration, Instant};

    use msgr::proto::intercept::{InterceptAction, InterceptPoint, InterceptStep, Interceptor};
    use msgr::proto::Role;

    use super::WAIT;

    /// A paused step gives up after this long (so a failed test cannot wedge a worker for ever).
    const PAUSE_LIMIT: Duration = Duration::from_secs(30);

    #[derive(Debug, Default)]
    struct State {
        history: Vec<InterceptPoint>,
        /// The latest step of each connection (Ceph's current_step).
        current: HashMap<u64, InterceptPoint>,
        breakpoints: HashSet<InterceptStep>,
        decisions: HashMap<InterceptStep, InterceptAction>,
    }

    /// Ceph's TestInterceptor: steps at a breakpoint wait for `proceed`; `wait` finds a connection whose
    /// latest step is the one asked for; the history counts steps per connection.
    #[derive(Debug, Default)]
    pub struct TestInterceptor {
        state: Mutex<State>,
        cond: Condvar,
    }

    impl TestInterceptor {
        pub fn breakpoint(&self, step: InterceptStep) {
            self.state.lock().unwrap().breakpoints.insert(step);
        }

        pub fn remove_bp(&self, step: InterceptStep) {
            self.state.lock().unwrap().breakpoints.remove(&step);
        }

        /// Decide the (next) pause at `step`.
        pub fn proceed(&self, step: InterceptStep, action: InterceptAction) {
            self.state.lock().unwrap().decisions.insert(step, action);
            self.cond.notify_all();
        }

        /// Wait until a connection (matching `filter`) has `step` as its latest step; that point.
        pub fn wait_for(
            &self,
            step: InterceptStep,
            filter: impl Fn(&InterceptPoint) -> bool,
        ) -> InterceptPoint {
            let end = Instant::now() + WAIT;
            let mut s = self.state.lock().unwrap();
            loop {
                let mut hits: Vec<&InterceptPoint> = s
                    .current
                    .values()
                    .filter(|p| p.step == step && filter(p))
                    .collect();
                hits.sort_by_key(|p| p.id);
                if let Some(p) = hits.first() {
                    return (*p).clone();
                }
                let left = end.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    // Not while holding the lock: the workers still call in.
                    drop(s);
                    panic!("no connection reached {step:?} in {WAIT:?}");
                }
                s = self.cond.wait_timeout(s, left).unwrap().0;
            }
        }

        /// `wait_for` any connection.
        pub fn wait(&self, step: InterceptStep) -> InterceptPoint {
            self.wait_for(step, |_| true)
        }

        /// `wait_for` connection `id`.
        pub fn wait_conn(&self, step: InterceptStep, id: u64) -> InterceptPoint {
            self.wait_for(step, |p| p.id == id)
        }

        /// How often connection `id` reached `step`.
        pub fn count_step(&self, id: u64, step: InterceptStep) -> usize {
            self.count_where(|p| p.id == id && p.step == step)
        }

        /// How often a connection of `role` reached `step`.
        pub fn count_role(&self, role: Role, step: InterceptStep) -> usize {
            self.count_where(|p| p.role == role && p.step == step)
        }

        pub fn count_where(&self, f: impl Fn(&InterceptPoint) -> bool) -> usize {
            self.state
                .lock()
                .unwrap()
                .history
                .iter()
                .filter(|p| f(p))
                .count()
        }

        pub fn history(&self) -> Vec<InterceptPoint> {
            self.state.lock().unwrap().history.clone()
        }
    }

    impl Interceptor for TestInterceptor {
        fn intercept(&self, at: &InterceptPoint) -> InterceptAction {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            s.history.push(at.clone());
            s.current.insert(at.id, at.clone());
            self.cond.notify_all();
            let step = at.step;
            if s.breakpoints.contains(&step) {
                let end = Instant::now() + PAUSE_LIMIT;
                while !s.decisions.contains_key(&step) {
                    let left = end.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        eprintln!("interceptor: {at:?} paused for {PAUSE_LIMIT:?}; continuing");
                        return InterceptAction::Continue;
                    }
                    s = self.cond.wait_timeout(s, left).unwrap().0;
                }
            }
            let action = s
                .decisions
                .remove(&step)
                .unwrap_or(InterceptAction::Continue);
            if step == InterceptStep::Message {
                // Ceph's next step, READ_MESSAGE_COMPLETE, moves the connection on: a later `wait`
                // for a message must wait for the next one.
                s.current.remove(&at.id);
            }
            action
        }
    }
}

/// Two free loopback ports, lower first (Ceph's race tests bind the server at 3300 and the client at
/// 3301: the server's address is the lower one, which decides connection races).
pub fn two_ports_ascending() -> (u16, u16) {
    let a = std::net::TcpListener::bind(loopback()).unwrap();
    let b = std::net::TcpListener::bind(loopback()).unwrap();
    let (pa, pb) = (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    );
    (pa.min(pb), pa.max(pb))
}

/// Ceph's MessengerTest fixture for two bound messengers: `srv` an OSD with `srv_policy` for clients
/// (accepting and dialling), `cli` a client with `cli_policy` for OSDs, the server on the lower
/// address, both with the same nonce (Ceph: getpid()) so that the port decides races, each with
/// `workers` workers and its own interceptor hook `tweak`.
pub struct Pair {
    pub srv: PosixMessenger,
    pub cli: PosixMessenger,
    pub srv_d: Arc<FakeDispatcher>,
    pub cli_d: Arc<FakeDispatcher>,
    pub srv_policy: msgr::proto::Policy,
    pub cli_policy: msgr::proto::Policy,
}

impl Pair {
    pub fn new(
        srv_policy: msgr::proto::Policy,
        cli_policy: msgr::proto::Policy,
        srv_replies: bool,
        workers: usize,
        tweak: impl Fn(&mut Config, &mut Config),
    ) -> Pair {
        let (lo, hi) = two_ports_ascending();
        let nonce = rand::random::<u32>() | 1;
        let mut sc = osd_config();
        sc.nonce = nonce;
        sc.default_policy = srv_policy;
        sc.accept_policies = vec![(entity_type::CLIENT, srv_policy)];
        let mut cc = client_config();
        cc.nonce = nonce;
        cc.default_policy = cli_policy;
        cc.accept_policies = vec![(entity_type::OSD, cli_policy)];
        tweak(&mut sc, &mut cc);
        let srv_d = FakeDispatcher::new(srv_replies);
        let cli_d = FakeDispatcher::new(false);
        let at = |p: u16| Some(SocketAddr::from(([127, 0, 0, 1], p)));
        let srv = start(sc, workers, at(lo), no_faults(), srv_d.clone());
        let cli = start(cc, workers, at(hi), no_faults(), cli_d.clone());
        Pair {
            srv,
            cli,
            srv_d,
            cli_d,
            srv_policy,
            cli_policy,
        }
    }

    /// client_msgr->connect_to(server)
    pub fn c2s(&self) -> ConnectionRef {
        self.cli
            .connect_to(entity_type::OSD, self.srv.my_addrs(), self.cli_policy)
            .unwrap()
    }

    /// server_msgr->connect_to(client): the existing session to the client if there is one.
    pub fn s2c(&self) -> ConnectionRef {
        self.srv
            .connect_to(entity_type::CLIENT, self.cli.my_addrs(), self.srv_policy)
            .unwrap()
    }

    pub fn ports(&self) -> (u16, u16) {
        (port_of(&self.srv), port_of(&self.cli))
    }

    pub fn assert_no_duplicates(&self) {
        assert_no_duplicates(&self.srv);
        assert_no_duplicates(&self.cli);
    }
}
