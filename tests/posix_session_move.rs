//! Session moves between workers, forced on the posix stack: a wrapper stack lets a socket move to
//! another worker only before anything was read from it (so the Processor still spreads accepted
//! sockets), the way DPDK's sockets cannot move at all. A reconnect placed on another worker than its
//! session then cannot follow the session; the session must move to it instead (which is what the
//! messenger does on every stack; the wrapper keeps this test about the move whatever that policy).
//!
//! One lossless session under injected socket failures (client side) against a two-worker server: each
//! reconnect lands on the less loaded worker, which is the one not holding the session. Both directions
//! carry numbered messages (the server's from another thread, through its `ConnectionRef`, while the
//! session moves about): everything arrives exactly once, in order, on one connection handle, with no
//! reset, and the moves are counted.

mod common;

use std::collections::HashSet;
use std::io::{self, IoSlice};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::net::*;
use common::PayloadPool;
use msgr::proto::types::entity_type;
use msgr::proto::{Error, Message, Policy};
use msgr::stack::fault::FaultConfig;
use msgr::stack::posix::{PosixStack, PosixWorker};
use msgr::stack::{
    ConnectOptions, ListenOptions, NetworkStack, SocketEvent, SocketId, Wake, WorkerStack,
};
use msgr::{ConnectionRef, Dispatcher, Messenger, MessengerConfig};

/// Posix, except that a socket that has been read from cannot move between workers.
struct StickyStack(PosixStack);

struct StickyWorker {
    inner: PosixWorker,
    read_from: HashSet<SocketId>,
}

impl NetworkStack for StickyStack {
    type Worker = StickyWorker;

    fn name(&self) -> &'static str {
        "posix-sticky"
    }

    fn new_worker(&self, index: usize) -> io::Result<StickyWorker> {
        Ok(StickyWorker {
            inner: self.0.new_worker(index)?,
            read_from: HashSet::new(),
        })
    }

    fn per_worker_listen(&self) -> bool {
        false
    }
}

impl WorkerStack for StickyWorker {
    type Handoff = <PosixWorker as WorkerStack>::Handoff;

    fn listen(&mut self, addr: SocketAddr, opts: &ListenOptions) -> io::Result<SocketId> {
        self.inner.listen(addr, opts)
    }
    fn connect(&mut self, addr: SocketAddr, opts: &ConnectOptions) -> io::Result<SocketId> {
        self.inner.connect(addr, opts)
    }
    fn accept(&mut self, listener: SocketId) -> io::Result<Option<(SocketId, SocketAddr)>> {
        self.inner.accept(listener)
    }
    fn read(&mut self, id: SocketId, buf: &mut [u8]) -> io::Result<usize> {
        self.read_from.insert(id);
        self.inner.read(id, buf)
    }
    fn writev(&mut self, id: SocketId, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.inner.writev(id, bufs)
    }
    fn shutdown(&mut self, id: SocketId, how: Shutdown) -> io::Result<()> {
        self.inner.shutdown(id, how)
    }
    fn close(&mut self, id: SocketId) -> io::Result<()> {
        self.read_from.remove(&id);
        self.inner.close(id)
    }
    fn local_addr(&self, id: SocketId) -> io::Result<SocketAddr> {
        self.inner.local_addr(id)
    }
    fn peer_addr(&self, id: SocketId) -> io::Result<SocketAddr> {
        self.inner.peer_addr(id)
    }
    fn poll(&mut self, events: &mut Vec<SocketEvent>, timeout: Option<Duration>) -> io::Result<()> {
        self.inner.poll(events, timeout)
    }
    fn waker(&self) -> Arc<dyn Wake> {
        self.inner.waker()
    }
    fn detach(&mut self, id: SocketId) -> io::Result<Self::Handoff> {
        if self.read_from.contains(&id) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this socket stays on its worker",
            ));
        }
        self.inner.detach(id)
    }
    fn attach(&mut self, handoff: Self::Handoff) -> io::Result<SocketId> {
        self.inner.attach(handoff)
    }
}

/// A collector that keeps the first connection handle it sees.
struct Keeper {
    sink: Arc<Collector>,
    conn: Mutex<Option<ConnectionRef>>,
}

impl Dispatcher for Keeper {
    fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) {
        self.conn
            .lock()
            .unwrap()
            .get_or_insert_with(|| conn.clone());
        self.sink.ms_dispatch(conn, msg)
    }
    fn ms_handle_reset(&self, conn: &ConnectionRef, why: &Error) {
        self.sink.ms_handle_reset(conn, why)
    }
    fn ms_handle_remote_reset(&self, conn: &ConnectionRef) {
        self.sink.ms_handle_remote_reset(conn)
    }
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Every tid of `0..n` exactly once and in order, all on one connection.
fn assert_one_ordered_stream(sink: &Collector, n: u64, side: &str, seed: u64) {
    let by = sink.by_conn.lock().unwrap();
    assert_eq!(
        by.len(),
        1,
        "seed {seed}: {side} saw {} connection handles",
        by.len()
    );
    let tids = by.values().next().unwrap();
    assert!(
        tids.iter().copied().eq(0..n),
        "seed {seed}: {side}: {} tids, not exactly 0..{n} in order",
        tids.len()
    );
    assert_eq!(sink.corrupted.load(Ordering::Relaxed), 0, "seed {seed}");
}

#[test]
fn reconnects_on_another_worker_move_the_session_to_their_socket() {
    let seed = std::env::var("MSGR_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("fault injection seed: MSGR_FAULT_SEED={seed}");
    let (to_server, to_client) = (20_000u64, 5_000u64);
    let pool = Arc::new(PayloadPool::new(seed, 4096));

    let srv_sink = Collector::new(pool.clone());
    let keeper = Arc::new(Keeper {
        sink: srv_sink.clone(),
        conn: Mutex::new(None),
    });
    let mut p = proto_config(entity_type::OSD, "osd.0");
    p.default_policy = Policy::stateful_server();
    let mut cfg = MessengerConfig::new(p);
    cfg.workers.threads = 2;
    cfg.workers.pin_cores = false;
    let mut srv = Messenger::new(StickyStack(PosixStack::new()), cfg, keeper.clone());
    srv.bind(&["127.0.0.1:0".parse().unwrap()]).unwrap();
    srv.start().unwrap();

    let cli_sink = Collector::new(pool.clone());
    let cli = client(
        1,
        FaultConfig {
            socket_failure_one_in: 200,
            read_delay: Duration::ZERO,
            seed,
        },
        cli_sink.clone(),
    );
    let conn = cli
        .connect_to(entity_type::OSD, srv.my_addrs(), Policy::lossless_client())
        .unwrap();
    conn.send(pool.message(0, 100)).unwrap();
    wait_until("the first message", Duration::from_secs(30), || {
        keeper.conn.lock().unwrap().is_some()
    });
    let back = keeper.conn.lock().unwrap().clone().unwrap();

    // The server talks back from its own thread while the session moves between its workers.
    let replies = {
        let pool = pool.clone();
        std::thread::spawn(move || {
            for i in 0..to_client {
                back.send(pool.message(i, (i as usize * 53) % 2048))
                    .unwrap();
                if i % 16 == 0 {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        })
    };
    for i in 1..to_server {
        conn.send(pool.message(i, (i as usize * 37) % 4096))
            .unwrap();
        if i % 8 == 0 {
            std::thread::sleep(Duration::from_micros(20));
        }
    }
    replies.join().unwrap();
    assert!(
        srv_sink.wait_for(to_server, Duration::from_secs(120)),
        "seed {seed}: only {} of {to_server} reached the server",
        srv_sink.received.load(Ordering::Relaxed)
    );
    assert!(
        cli_sink.wait_for(to_client, Duration::from_secs(120)),
        "seed {seed}: only {} of {to_client} reached the client",
        cli_sink.received.load(Ordering::Relaxed)
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_one_ordered_stream(&srv_sink, to_server, "server", seed);
    assert_one_ordered_stream(&cli_sink, to_client, "client", seed);

    let (sc, cc) = (srv.counters(), cli.counters());
    eprintln!(
        "injected {}, client reconnects {}, sessions moved {}, replayed {} + {}",
        cli.stack().counters().injected(),
        cc.reconnects,
        sc.sessions_moved,
        cc.replayed,
        sc.replayed
    );
    assert!(cc.reconnects >= 3, "seed {seed}: too few reconnects");
    assert!(
        sc.sessions_moved > 0,
        "seed {seed}: no session moved: the path was not exercised"
    );
    for s in [&srv_sink, &cli_sink] {
        assert_eq!(s.resets.load(Ordering::Relaxed), 0, "seed {seed}: a reset");
        assert_eq!(
            s.remote_resets.load(Ordering::Relaxed),
            0,
            "seed {seed}: a remote reset"
        );
    }
    assert_eq!(sc.connections, 1, "seed {seed}: server connections left");
}
