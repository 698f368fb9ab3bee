//! One connection as its worker holds it ([`Conn`]), the commands other threads send it, and the
//! handle ([`ConnectionRef`]) they send them through.

use super::*;

/// What other threads ask of a connection.
pub(crate) enum Command {
    Send(proto::Message),
    Keepalive,
    MarkDown,
    /// End the session if it is still a server-policy session in Standby (`max_sessions` eviction).
    Evict,
}

/// A new connection handle on worker `w`, with the receiving end of its command queue.
pub(crate) fn new_handle(shared: &Arc<Shared>, w: usize) -> (ConnectionRef, Receiver<Command>) {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = crossbeam_channel::unbounded();
    let shared_conn = ConnShared {
        id,
        worker: AtomicUsize::new(w),
        commands: tx,
        scheduled: std::sync::atomic::AtomicBool::new(false),
        closed: std::sync::atomic::AtomicBool::new(false),
        connected: std::sync::atomic::AtomicBool::new(false),
        standby: std::sync::atomic::AtomicBool::new(false),
        kickers: shared.kickers.clone(),
        messenger: Arc::as_ptr(shared) as usize,
        send_budget: Arc::new(Throttle::with_parent(
            shared.config.send_budget_bytes,
            shared.config.send_budget_msgs,
            Some(shared.send_total.clone()),
        )),
        want_read: AtomicBool::new(false),
        peer: Mutex::new(PeerInfo::default()),
        private: Mutex::new(None),
    };
    (ConnectionRef(Arc::new(shared_conn)), rx)
}

/// One connection as its worker sees it.
pub(crate) struct Conn {
    pub(super) handle: ConnectionRef,
    pub(super) commands: Receiver<Command>,
    pub(super) proto: Connection,
    pub(super) socket: Option<SocketId>,
    pub(super) connecting: bool,
    pub(super) txq: VecDeque<Bytes>,
    pub(super) timer: Option<(TimerId, Instant)>,
    pub(super) last_stats: ConnStats,
    /// Client side: where to dial.
    pub(super) target: Option<SocketAddr>,
    /// The peer's socket address, for log lines.
    pub(super) peer_sock: Option<SocketAddr>,
    /// The dispatcher has been told about this connection (connect/accept), so it hears of its end.
    pub(super) announced: bool,
    /// The key this connection is registered under in the session registry, if it is.
    pub(super) reg_key: Option<AddrVec>,
    /// Accepted and not authenticated yet: its slot in `Shared::half_open`.
    pub(super) half_open: Option<std::net::IpAddr>,
    /// The receive throttle of the peer's entity type, if it has one.
    pub(super) recv_throttle: Option<Arc<Throttle>>,
    /// The throttle this connection paused reading on (it is parked there until that has room).
    pub(super) parked_on: Option<Arc<Throttle>>,
    /// On the worker's run list (at most once).
    pub(super) on_run_list: bool,
}

impl Conn {
    pub(super) fn new(
        handle: ConnectionRef,
        commands: Receiver<Command>,
        proto: Connection,
    ) -> Self {
        Conn {
            handle,
            commands,
            proto,
            socket: None,
            connecting: false,
            txq: VecDeque::new(),
            timer: None,
            last_stats: ConnStats::default(),
            target: None,
            peer_sock: None,
            announced: false,
            recv_throttle: None,
            parked_on: None,
            on_run_list: false,
            reg_key: None,
            half_open: None,
        }
    }

    /// Stop waiting on the throttle it paused on, if any.
    pub(super) fn unpark(&mut self) {
        if let Some(t) = self.parked_on.take() {
            t.unpark(self.handle.id());
        }
    }
}
