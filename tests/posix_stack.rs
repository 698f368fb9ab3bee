//! Posix stack and event loop over loopback: echo with partial reads/writes, IPv4 and IPv6, typed errors,
//! fault injection with counters, read delay, external events, timers, worker start/stop.
//!
//! Every wait is bounded (`recv_timeout`), nothing leaves the machine.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use msgr::event::{EventCenter, EventHandler, LoopConfig, TimerId, Worker, WorkerConfig, Workers};
use msgr::stack::fault::{FaultConfig, FaultStack};
use msgr::stack::posix::{PosixStack, PosixWorker};
use msgr::stack::{
    flush_queue, is_injected, transport_error, ConnectOptions, EventKind, ListenOptions,
    NetworkStack, SocketEvent, SocketId, TransportError, WorkerStack,
};

const WAIT: Duration = Duration::from_secs(20);
const MAX_MSG: usize = 1 << 20;
const READ_CHUNK: usize = 64 * 1024;

// ---------- echo workload ----------

fn pattern() -> &'static Bytes {
    static PATTERN: OnceLock<Bytes> = OnceLock::new();
    PATTERN.get_or_init(|| {
        (0..MAX_MSG + 256)
            .map(|j| (j % 251) as u8)
            .collect::<Vec<u8>>()
            .into()
    })
}

fn msg_len(conn: usize, i: usize) -> usize {
    const SIZES: [usize; 10] = [0, 1, 3, 100, 1500, 4096, 9000, 65_535, 65_536 + 7, 300_000];
    if (i + conn) % 40 == 39 {
        MAX_MSG
    } else {
        SIZES[(i * 7 + conn * 3) % SIZES.len()]
    }
}

fn payload(conn: usize, i: usize) -> Bytes {
    let offset = (conn * 13 + i) % 251;
    pattern().slice(offset..offset + msg_len(conn, i))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Done,
    Eof,
    Injected,
    Failed(io::ErrorKind),
    Corrupt(String),
}

fn outcome_of(err: &io::Error) -> Outcome {
    if is_injected(err) {
        Outcome::Injected
    } else {
        Outcome::Failed(err.kind())
    }
}

#[derive(Debug)]
struct ConnEnd {
    client: bool,
    outcome: Outcome,
    verified: usize,
}

/// Echoes every byte back. Runs on one worker.
struct EchoServer {
    listener: Option<SocketId>,
    conns: HashMap<SocketId, VecDeque<Bytes>>,
    buf: Vec<u8>,
    ends: Sender<ConnEnd>,
}

impl EchoServer {
    fn new(ends: Sender<ConnEnd>) -> Self {
        EchoServer {
            listener: None,
            conns: HashMap::new(),
            buf: vec![0; READ_CHUNK],
            ends,
        }
    }

    fn end<S: WorkerStack>(&mut self, center: &mut EventCenter<S>, id: SocketId, outcome: Outcome) {
        self.conns.remove(&id);
        let _ = center.stack_mut().close(id);
        let _ = self.ends.send(ConnEnd {
            client: false,
            outcome,
            verified: 0,
        });
    }

    fn service<S: WorkerStack>(&mut self, center: &mut EventCenter<S>, id: SocketId) {
        loop {
            match center.stack_mut().read(id, &mut self.buf) {
                Ok(0) => return self.end(center, id, Outcome::Eof),
                Ok(n) => {
                    let Some(out) = self.conns.get_mut(&id) else {
                        return;
                    };
                    out.push_back(Bytes::copy_from_slice(&self.buf[..n]));
                    if let Err(err) = flush_queue(center.stack_mut(), id, out) {
                        return self.end(center, id, outcome_of(&err));
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => return self.end(center, id, outcome_of(&err)),
            }
        }
        let Some(out) = self.conns.get_mut(&id) else {
            return;
        };
        if let Err(err) = flush_queue(center.stack_mut(), id, out) {
            self.end(center, id, outcome_of(&err));
        }
    }
}

impl<S: WorkerStack> EventHandler<S> for EchoServer {
    fn on_socket(&mut self, center: &mut EventCenter<S>, event: SocketEvent) {
        match event.kind {
            EventKind::Acceptable if Some(event.id) == self.listener => loop {
                match center.stack_mut().accept(event.id) {
                    Ok(Some((id, _peer))) => {
                        self.conns.insert(id, VecDeque::new());
                    }
                    Ok(None) => break,
                    Err(err) => panic!("accept failed: {err}"),
                }
            },
            EventKind::Ready(_) if self.conns.contains_key(&event.id) => {
                self.service(center, event.id)
            }
            _ => {}
        }
    }

    fn on_timer(&mut self, _: &mut EventCenter<S>, _: TimerId) {}
}

struct ClientConn {
    index: usize,
    out: VecDeque<Bytes>,
    recv: Vec<u8>,
    sent: usize,
    verified: usize,
    connected: bool,
}

/// Opens `conns` connections and ping-pongs `msgs` length-prefixed messages on each, `window` in flight.
struct EchoClient {
    conns: HashMap<SocketId, ClientConn>,
    msgs: usize,
    window: usize,
    ends: Sender<ConnEnd>,
}

impl EchoClient {
    fn new(msgs: usize, window: usize, ends: Sender<ConnEnd>) -> Self {
        EchoClient {
            conns: HashMap::new(),
            msgs,
            window,
            ends,
        }
    }

    fn start<S: WorkerStack>(
        &mut self,
        center: &mut EventCenter<S>,
        addr: SocketAddr,
        conns: usize,
    ) {
        for index in 0..conns {
            let id = center
                .stack_mut()
                .connect(addr, &ConnectOptions::default())
                .expect("connect");
            let conn = ClientConn {
                index,
                out: VecDeque::new(),
                recv: Vec::new(),
                sent: 0,
                verified: 0,
                connected: false,
            };
            self.conns.insert(id, conn);
        }
    }

    fn end<S: WorkerStack>(&mut self, center: &mut EventCenter<S>, id: SocketId, outcome: Outcome) {
        let verified = self.conns.remove(&id).map_or(0, |c| c.verified);
        let _ = center.stack_mut().close(id);
        let _ = self.ends.send(ConnEnd {
            client: true,
            outcome,
            verified,
        });
    }

    /// Read what is there, verify whole messages, refill the window, flush. Returns the outcome if it ended.
    fn service<S: WorkerStack>(&mut self, stack: &mut S, id: SocketId) -> Option<Outcome> {
        let msgs = self.msgs;
        let window = self.window;
        let conn = self.conns.get_mut(&id)?;
        loop {
            let start = conn.recv.len();
            conn.recv.resize(start + READ_CHUNK, 0);
            let result = stack.read(id, &mut conn.recv[start..]);
            conn.recv.truncate(start + *result.as_ref().unwrap_or(&0));
            match result {
                Ok(0) => return Some(Outcome::Eof),
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => return Some(outcome_of(&err)),
            }
        }
        let mut pos = 0;
        while let Some(header) = conn.recv.get(pos..pos + 4) {
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            if len > MAX_MSG {
                return Some(Outcome::Corrupt(format!(
                    "conn {} msg {}: length {len}",
                    conn.index, conn.verified
                )));
            }
            let Some(body) = conn.recv.get(pos + 4..pos + 4 + len) else {
                break;
            };
            if body != &payload(conn.index, conn.verified)[..] {
                return Some(Outcome::Corrupt(format!(
                    "conn {} msg {} ({len} bytes) differs",
                    conn.index, conn.verified
                )));
            }
            conn.verified += 1;
            pos += 4 + len;
        }
        conn.recv.drain(..pos);
        if conn.verified == msgs {
            return Some(Outcome::Done);
        }
        while conn.sent < msgs && conn.sent - conn.verified < window {
            let body = payload(conn.index, conn.sent);
            conn.out
                .push_back(Bytes::copy_from_slice(&(body.len() as u32).to_le_bytes()));
            conn.out.push_back(body);
            conn.sent += 1;
        }
        match flush_queue(stack, id, &mut conn.out) {
            Ok(_) => None,
            Err(err) => Some(outcome_of(&err)),
        }
    }
}

impl<S: WorkerStack> EventHandler<S> for EchoClient {
    fn on_socket(&mut self, center: &mut EventCenter<S>, event: SocketEvent) {
        let id = event.id;
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match event.kind {
            EventKind::Connected => conn.connected = true,
            EventKind::ConnectFailed(err) => return self.end(center, id, outcome_of(&err)),
            EventKind::Ready(_) if conn.connected => {}
            _ => return,
        }
        if let Some(outcome) = self.service(center.stack_mut(), id) {
            self.end(center, id, outcome);
        }
    }

    fn on_timer(&mut self, _: &mut EventCenter<S>, _: TimerId) {}
}

struct EchoRun {
    client_ends: Vec<ConnEnd>,
    server_ends: Vec<ConnEnd>,
    elapsed: Duration,
}

/// Server on worker 0, clients on worker 1, both from `stack`. Waits until every connection ended on both
/// sides.
fn run_echo<N: NetworkStack>(
    stack: N,
    listen_addr: SocketAddr,
    conns: usize,
    msgs: usize,
    window: usize,
) -> io::Result<EchoRun> {
    let stack = Arc::new(stack);
    let (end_tx, end_rx) = crossbeam_channel::unbounded();
    let (addr_tx, addr_rx) = crossbeam_channel::bounded(1);
    let server_ends = end_tx.clone();
    let server = Worker::spawn(
        stack.clone(),
        0,
        None,
        "echo-server".into(),
        LoopConfig::default(),
        move |center| {
            let listener = center
                .stack_mut()
                .listen(listen_addr, &ListenOptions::default())?;
            addr_tx
                .send(center.stack().local_addr(listener)?)
                .expect("test waits for the address");
            let mut server = EchoServer::new(server_ends);
            server.listener = Some(listener);
            Ok(server)
        },
    )?;
    let addr = addr_rx.recv_timeout(WAIT).expect("server address");
    let client_ends = end_tx.clone();
    let client = Worker::spawn(
        stack.clone(),
        1,
        None,
        "echo-client".into(),
        LoopConfig::default(),
        move |_| Ok(EchoClient::new(msgs, window, client_ends)),
    )?;
    drop(end_tx);
    let started = Instant::now();
    client
        .submit(move |handler, center| handler.start(center, addr, conns))
        .expect("client running");

    let mut run = EchoRun {
        client_ends: Vec::new(),
        server_ends: Vec::new(),
        elapsed: Duration::ZERO,
    };
    while run.client_ends.len() < conns || run.server_ends.len() < conns {
        let end = end_rx.recv_timeout(WAIT).unwrap_or_else(|_| {
            panic!(
                "timed out: {} client and {} server ends so far",
                run.client_ends.len(),
                run.server_ends.len()
            )
        });
        if end.client {
            run.client_ends.push(end);
        } else {
            run.server_ends.push(end);
        }
    }
    run.elapsed = started.elapsed();
    client.join()?;
    server.join()?;
    Ok(run)
}

fn assert_all_done(run: &EchoRun, msgs: usize) {
    for end in &run.client_ends {
        assert_eq!(end.outcome, Outcome::Done, "{end:?}");
        assert_eq!(end.verified, msgs);
    }
    for end in &run.server_ends {
        assert_eq!(end.outcome, Outcome::Eof, "{end:?}");
    }
}

#[test]
fn echo_16_connections_ipv4() {
    let run = run_echo(
        PosixStack::new(),
        "127.0.0.1:0".parse().unwrap(),
        16,
        200,
        2,
    )
    .unwrap();
    assert_all_done(&run, 200);
    eprintln!("ipv4 echo took {:?}", run.elapsed);
}

#[test]
fn echo_16_connections_ipv6() {
    let run = run_echo(PosixStack::new(), "[::1]:0".parse().unwrap(), 16, 200, 2).unwrap();
    assert_all_done(&run, 200);
    eprintln!("ipv6 echo took {:?}", run.elapsed);
}

#[test]
fn fault_injection_one_in_50_fails_both_ends_and_counts() {
    let config = FaultConfig {
        socket_failure_one_in: 50,
        read_delay: Duration::ZERO,
        seed: 0x5eed_0050,
    };
    let description = config.to_string();
    assert!(
        description.contains("0x5eed0050") && description.contains("1/50"),
        "{description}"
    );
    let stack = FaultStack::new(PosixStack::new(), config);
    let counters = stack.counters();
    let run = run_echo(stack, "127.0.0.1:0".parse().unwrap(), 16, 200, 2).unwrap();

    let injected_seen = |ends: &[ConnEnd]| {
        ends.iter()
            .filter(|e| e.outcome == Outcome::Injected)
            .count() as u64
    };
    let client_injected = injected_seen(&run.client_ends);
    let server_injected = injected_seen(&run.server_ends);
    eprintln!(
        "injected: {} (client saw {client_injected}, server saw {server_injected}); ends: {:?}",
        counters.injected(),
        run.client_ends
            .iter()
            .chain(&run.server_ends)
            .map(|e| &e.outcome)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        client_injected + server_injected,
        counters.injected(),
        "every injected fault reached a handler"
    );
    assert!(
        client_injected > 0 && server_injected > 0,
        "faults on both ends: {client_injected} / {server_injected}"
    );
    for end in run.client_ends.iter().chain(&run.server_ends) {
        assert!(!matches!(end.outcome, Outcome::Corrupt(_)), "{end:?}");
        assert_ne!(
            end.outcome,
            Outcome::Done,
            "1/50 cannot let 200 messages through: {end:?}"
        );
    }
    // Every connection ended on both sides: the peer of an injected failure saw it as EOF or an error.
    assert_eq!(run.client_ends.len(), 16);
    assert_eq!(run.server_ends.len(), 16);
}

#[test]
fn read_delay_holds_data_back_without_sleeping_the_loop() {
    let delay = Duration::from_millis(30);
    let config = FaultConfig {
        socket_failure_one_in: 0,
        read_delay: delay,
        seed: 1,
    };
    let stack = FaultStack::new(PosixStack::new(), config);
    let counters = stack.counters();
    let msgs = 3;
    let run = run_echo(stack, "127.0.0.1:0".parse().unwrap(), 1, msgs, 1).unwrap();
    assert_all_done(&run, msgs);
    // Each round trip is held back on the server (every arrival there is announced by a readable
    // event first) and normally on the client too; but the client reads before it polls (right after
    // connecting), and a reply arriving just as that tentative hold ends is read at once (the hold
    // must end with a readable event: it is how data whose event was consumed elsewhere gets read).
    assert!(
        run.elapsed >= delay * msgs as u32,
        "took only {:?}",
        run.elapsed
    );
    assert!(counters.delayed_reads.load(Ordering::Relaxed) >= msgs as u64);
    assert_eq!(counters.injected(), 0);
}

// ---------- typed errors, directly on one worker's stack ----------

/// Poll `stack` until an event for `id` that is not plain readiness arrives.
fn wait_connect_outcome(stack: &mut PosixWorker, id: SocketId) -> Result<(), io::Error> {
    let deadline = Instant::now() + WAIT;
    let mut events = Vec::new();
    while Instant::now() < deadline {
        stack
            .poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        for event in events.drain(..) {
            if event.id != id {
                continue;
            }
            match event.kind {
                EventKind::Connected => return Ok(()),
                EventKind::ConnectFailed(err) => return Err(err),
                _ => {}
            }
        }
    }
    panic!("no connect outcome for {id} within {WAIT:?}");
}

#[test]
fn listen_on_address_in_use_names_it() {
    let mut stack = PosixStack::new().new_worker(0).unwrap();
    for any in ["127.0.0.1:0", "[::1]:0"] {
        let first = stack
            .listen(any.parse().unwrap(), &ListenOptions::default())
            .unwrap();
        let addr = stack.local_addr(first).unwrap();
        let err = stack.listen(addr, &ListenOptions::default()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(
            matches!(transport_error(&err), Some(TransportError::AddrInUse { addr: a }) if *a == addr)
        );
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
        stack.close(first).unwrap();
    }
}

#[test]
fn connect_to_closed_port_is_refused() {
    let addr = {
        let probe = StdListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let mut stack = PosixStack::new().new_worker(0).unwrap();
    let err = match stack.connect(addr, &ConnectOptions::default()) {
        Ok(id) => {
            let err = wait_connect_outcome(&mut stack, id).unwrap_err();
            assert_eq!(
                stack.read(id, &mut [0; 8]).unwrap_err().kind(),
                io::ErrorKind::InvalidInput
            );
            stack.close(id).unwrap();
            err
        }
        Err(err) => err,
    };
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    assert!(
        matches!(transport_error(&err), Some(TransportError::ConnectionRefused { addr: a }) if *a == addr)
    );
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[test]
fn connect_times_out_against_a_full_backlog() {
    // A listener that never accepts, with backlog 0: Linux queues one connection, then drops SYNs, so a
    // later connect hangs in SYN_SENT until our timer fires. Nothing leaves loopback.
    let mut stack = PosixStack::new().new_worker(0).unwrap();
    let listener = stack
        .listen(
            "127.0.0.1:0".parse().unwrap(),
            &ListenOptions {
                backlog: 0,
                ..ListenOptions::default()
            },
        )
        .unwrap();
    let addr = stack.local_addr(listener).unwrap();
    let timeout = Duration::from_millis(200);
    let opts = ConnectOptions {
        timeout: Some(timeout),
        ..ConnectOptions::default()
    };
    let mut open = Vec::new();
    for _ in 0..8 {
        let started = Instant::now();
        let id = stack.connect(addr, &opts).unwrap();
        match wait_connect_outcome(&mut stack, id) {
            Ok(()) => open.push(id),
            Err(err) => {
                assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
                let typed = transport_error(&err);
                let expected = matches!(typed, Some(TransportError::ConnectTimeout { addr: a, timeout: t })
                    if *a == addr && *t == timeout);
                assert!(expected, "{typed:?}");
                assert!(
                    started.elapsed() >= timeout,
                    "timed out early: {:?}",
                    started.elapsed()
                );
                assert!(err.to_string().contains(&addr.to_string()), "{err}");
                assert!(
                    !open.is_empty(),
                    "the first connection should fit in the backlog"
                );
                return;
            }
        }
    }
    panic!(
        "no connect timed out after {} connections to a full backlog",
        open.len()
    );
}

#[test]
fn shutdown_is_seen_by_the_peer_and_unknown_ids_are_errors() {
    let mut stack = PosixStack::new().new_worker(0).unwrap();
    let listener = stack
        .listen("127.0.0.1:0".parse().unwrap(), &ListenOptions::default())
        .unwrap();
    let addr = stack.local_addr(listener).unwrap();
    let client = stack.connect(addr, &ConnectOptions::default()).unwrap();
    wait_connect_outcome(&mut stack, client).unwrap();
    let deadline = Instant::now() + WAIT;
    let server = loop {
        let mut events = Vec::new();
        stack
            .poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        if let Some((id, peer)) = stack.accept(listener).unwrap() {
            assert_eq!(peer, stack.local_addr(client).unwrap());
            break id;
        }
        assert!(Instant::now() < deadline, "no connection accepted");
    };
    stack.shutdown(client, Shutdown::Both).unwrap();
    let mut buf = [0u8; 16];
    let eof = loop {
        match stack.read(server, &mut buf) {
            Ok(n) => break n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                stack
                    .poll(&mut Vec::new(), Some(Duration::from_millis(50)))
                    .unwrap();
                assert!(Instant::now() < deadline, "peer never saw the shutdown");
            }
            Err(err) => panic!("{err}"),
        }
    };
    assert_eq!(eof, 0);
    stack.close(client).unwrap();
    let err = stack.read(client, &mut buf).unwrap_err();
    assert!(
        matches!(transport_error(&err), Some(TransportError::UnknownSocket(id)) if *id == client)
    );
    assert!(stack.close(client).is_err());
}

#[test]
fn handoff_moves_an_accepted_socket_to_another_worker() {
    let stack = PosixStack::new();
    let mut a = stack.new_worker(0).unwrap();
    let mut b = stack.new_worker(1).unwrap();
    let listener = a
        .listen("127.0.0.1:0".parse().unwrap(), &ListenOptions::default())
        .unwrap();
    let addr = a.local_addr(listener).unwrap();
    let client = a.connect(addr, &ConnectOptions::default()).unwrap();
    wait_connect_outcome(&mut a, client).unwrap();
    let deadline = Instant::now() + WAIT;
    let accepted = loop {
        a.poll(&mut Vec::new(), Some(Duration::from_millis(50)))
            .unwrap();
        if let Some((id, _)) = a.accept(listener).unwrap() {
            break id;
        }
        assert!(Instant::now() < deadline);
    };
    let written = a
        .writev(
            client,
            &[io::IoSlice::new(b"hello "), io::IoSlice::new(b"worker")],
        )
        .unwrap();
    assert_eq!(written, 12);
    let handoff = a.detach(accepted).unwrap();
    assert!(
        a.read(accepted, &mut [0; 4]).is_err(),
        "detached id is gone from worker a"
    );
    let moved = b.attach(handoff).unwrap();
    let mut events = Vec::new();
    b.poll(&mut events, Some(Duration::from_secs(1))).unwrap();
    assert!(events
        .iter()
        .any(|e| e.id == moved && matches!(e.kind, EventKind::Ready(r) if r.readable)));
    let mut buf = [0u8; 32];
    let n = b.read(moved, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello worker");
}

// ---------- event loop: external events, timers, workers ----------

#[derive(Default)]
struct Recorder {
    thread: Option<ThreadId>,
    log: Vec<u32>,
    fired: Vec<(TimerId, Instant)>,
    last_timer: Option<TimerId>,
    report: Option<Sender<Vec<(TimerId, Instant)>>>,
}

impl<S: WorkerStack> EventHandler<S> for Recorder {
    fn on_socket(&mut self, _: &mut EventCenter<S>, _: SocketEvent) {}

    fn on_timer(&mut self, _: &mut EventCenter<S>, timer: TimerId) {
        self.fired.push((timer, Instant::now()));
        if Some(timer) == self.last_timer {
            if let Some(report) = &self.report {
                let _ = report.send(self.fired.clone());
            }
        }
    }
}

fn spawn_recorder(index: usize) -> Worker<PosixWorker, Recorder> {
    Worker::spawn(
        Arc::new(PosixStack::new()),
        index,
        None,
        format!("rec-{index}"),
        LoopConfig::default(),
        |_| {
            Ok(Recorder {
                thread: Some(thread::current().id()),
                ..Recorder::default()
            })
        },
    )
    .unwrap()
}

#[test]
fn external_events_run_on_the_worker_thread_in_order() {
    let worker = spawn_recorder(7);
    for i in 0..100u32 {
        worker.submit(move |rec, _| rec.log.push(i)).unwrap();
    }
    let (tx, rx) = crossbeam_channel::bounded(1);
    worker
        .submit(
            move |rec: &mut Recorder, center: &mut EventCenter<PosixWorker>| {
                let me = thread::current();
                tx.send((
                    rec.log.clone(),
                    rec.thread,
                    me.id(),
                    me.name().map(str::to_owned),
                    center.index(),
                ))
                .unwrap();
            },
        )
        .unwrap();
    let (log, handler_thread, ran_on, name, index) = rx.recv_timeout(WAIT).unwrap();
    assert_eq!(log, (0..100).collect::<Vec<_>>());
    assert_eq!(
        handler_thread,
        Some(ran_on),
        "ran on the thread that built the handler"
    );
    assert_ne!(ran_on, thread::current().id());
    assert_eq!(name.as_deref(), Some("rec-7"));
    assert_eq!(index, 7);
    let remote = worker.remote().clone();
    worker.join().unwrap();
    assert!(
        remote.submit(|_, _| {}).is_err(),
        "a stopped worker refuses work"
    );
}

#[test]
fn timers_fire_in_order_and_cancelled_ones_do_not() {
    let worker = spawn_recorder(0);
    let (tx, rx) = crossbeam_channel::bounded(1);
    let (ids_tx, ids_rx) = crossbeam_channel::bounded(1);
    worker
        .submit(
            move |rec: &mut Recorder, center: &mut EventCenter<PosixWorker>| {
                let ms = Duration::from_millis;
                let t30 = center.add_timer(ms(30));
                let t10 = center.add_timer(ms(10));
                let t15 = center.add_timer(ms(15));
                let base = Instant::now();
                let t20a = center.add_timer_at(base + ms(20));
                let t20b = center.add_timer_at(base + ms(20));
                let t5 = center.add_timer(ms(5));
                let last = center.add_timer(ms(45));
                assert!(center.cancel_timer(t15));
                assert!(center.cancel_timer(t5));
                rec.last_timer = Some(last);
                rec.report = Some(tx);
                ids_tx
                    .send((vec![t10, t20a, t20b, t30, last], base))
                    .unwrap();
            },
        )
        .unwrap();
    let (expected, base) = ids_rx.recv_timeout(WAIT).unwrap();
    let fired = rx.recv_timeout(WAIT).unwrap();
    let order: Vec<TimerId> = fired.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        order, expected,
        "deadline order, ties in arming order, cancelled timers absent"
    );
    let (_, at) = fired[1];
    assert!(at >= base + Duration::from_millis(20), "t20 fired early");
    worker.join().unwrap();
}

#[test]
fn pool_starts_more_pinned_workers_than_cores_and_shuts_down() {
    let cores = core_affinity::get_core_ids().map_or(1, |c| c.len());
    let threads = cores + 1;
    let config = WorkerConfig {
        threads,
        pin_cores: true,
        ..WorkerConfig::default()
    };
    let plan = config.core_plan();
    assert_eq!(plan.len(), threads);
    assert!(
        plan[threads - 1].is_none(),
        "the extra worker runs unpinned"
    );
    let started = Arc::new(AtomicU64::new(0));
    let counter = started.clone();
    let workers = Workers::start(
        Arc::new(PosixStack::new()),
        &config,
        move |index, center| {
            assert_eq!(index, center.index());
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(Recorder::default())
        },
    )
    .unwrap();
    assert_eq!(workers.len(), threads);
    assert_eq!(started.load(Ordering::SeqCst), threads as u64);
    let (tx, rx): (Sender<usize>, Receiver<usize>) = crossbeam_channel::unbounded();
    for remote in workers.remotes() {
        let tx = tx.clone();
        remote
            .submit(move |_, center| tx.send(center.index()).unwrap())
            .unwrap();
    }
    let mut seen: Vec<usize> = (0..threads)
        .map(|_| rx.recv_timeout(WAIT).unwrap())
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..threads).collect::<Vec<_>>());
    workers.shutdown().unwrap();

    // Pinning to cores that do not exist is not an error either.
    let config = WorkerConfig {
        threads: 2,
        pin_cores: true,
        cores: vec![100_000],
        ..WorkerConfig::default()
    };
    assert!(config.core_plan().iter().all(Option::is_none));
    Workers::start(Arc::new(PosixStack::new()), &config, |_, _| {
        Ok(Recorder::default())
    })
    .unwrap()
    .shutdown()
    .unwrap();
}

#[test]
fn handler_construction_errors_reach_the_caller() {
    let busy = StdListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let err = Worker::<PosixWorker, Recorder>::spawn(
        Arc::new(PosixStack::new()),
        0,
        None,
        "bad".into(),
        LoopConfig::default(),
        move |center| {
            center.stack_mut().listen(addr, &ListenOptions::default())?;
            Ok(Recorder::default())
        },
    )
    .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
}

/// The Processor pattern: worker 0 listens and accepts, hands each socket to worker 1 through its Remote.
struct Acceptor {
    listener: SocketId,
    target: msgr::event::Remote<PosixWorker, EchoServer>,
}

impl EventHandler<PosixWorker> for Acceptor {
    fn on_socket(&mut self, center: &mut EventCenter<PosixWorker>, event: SocketEvent) {
        if event.id != self.listener {
            return;
        }
        while let Ok(Some((id, _))) = center.stack_mut().accept(self.listener) {
            let handoff = center
                .stack_mut()
                .detach(id)
                .expect("detach accepted socket");
            self.target
                .submit(move |server, center| {
                    let id = center.stack_mut().attach(handoff).expect("attach");
                    server.conns.insert(id, VecDeque::new());
                })
                .expect("echo worker running");
        }
    }

    fn on_timer(&mut self, _: &mut EventCenter<PosixWorker>, _: TimerId) {}
}

#[test]
fn accepted_sockets_handed_to_another_worker_keep_working() {
    use std::io::{Read, Write};
    let stack = Arc::new(PosixStack::new());
    let (end_tx, end_rx) = crossbeam_channel::unbounded();
    let echo = Worker::spawn(
        stack.clone(),
        1,
        None,
        "echo".into(),
        LoopConfig::default(),
        move |_| Ok(EchoServer::new(end_tx)),
    )
    .unwrap();
    let target = echo.remote().clone();
    let (addr_tx, addr_rx) = crossbeam_channel::bounded(1);
    let acceptor = Worker::spawn(
        stack,
        0,
        None,
        "acceptor".into(),
        LoopConfig::default(),
        move |center| {
            let listener = center
                .stack_mut()
                .listen("[::1]:0".parse().unwrap(), &ListenOptions::default())?;
            addr_tx.send(center.stack().local_addr(listener)?).unwrap();
            Ok(Acceptor { listener, target })
        },
    )
    .unwrap();
    let addr = addr_rx.recv_timeout(WAIT).unwrap();
    for round in 0..3u8 {
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        client.set_read_timeout(Some(WAIT)).unwrap();
        let msg = [round; 5000];
        client.write_all(&msg).unwrap();
        let mut back = [0u8; 5000];
        client.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
        drop(client);
        assert_eq!(end_rx.recv_timeout(WAIT).unwrap().outcome, Outcome::Eof);
    }
    acceptor.join().unwrap();
    echo.join().unwrap();
}

#[test]
fn remotes_cross_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<msgr::event::Remote<PosixWorker, Recorder>>();
    assert_send_sync::<PosixStack>();
    fn assert_send<T: Send>() {}
    assert_send::<<PosixWorker as WorkerStack>::Handoff>();
}
