//! The dpdk stack (cargo feature `dpdk`): poll-mode workers, one per NIC queue pair, each running a
//! userspace TCP/IP stack (smoltcp) over mbufs and feeding the same `proto::Connection` as the posix path.
//!
//! ```text
//!   rx burst (≤32) ─► classify (validate, count drops, Toeplitz owner) ─┬─► mine: smoltcp ─► sockets
//!                                                                     ├─► other worker's ring (hand-off)
//!                     hand-off ring ─► smoltcp                        └─► ARP: every worker gets a copy
//!   writev ─► socket buffer ─► smoltcp egress ─► mbufs ─► tx burst (≤32)
//! ```
//!
//! Owns: the EAL (once per process), the port and its queues, one mempool per queue, the hand-off rings
//! between workers, and per-worker counters ([`DpdkStats`]). [`DpdkStack`] is the [`NetworkStack`];
//! [`DpdkWorker`] (module `worker`) is one worker's [`crate::stack::WorkerStack`].
//!
//! Flow steering. A connection belongs to the worker whose queue its 4-tuple hashes to: DPDK's software
//! Toeplitz (`rte_softrss`) with the port's key (or the common default key) over (src ip, dst ip, src port,
//! dst port) of received segments, then a 128-entry redirection table spread round-robin over the queues.
//! Hardware RSS is enabled where the port has it (none of the virtual PMDs here has usable RSS; real RSS is
//! untested); either way a segment that lands on the wrong queue is handed to its owner through a ring. A
//! client connection picks its local port so that replies hash to the worker that opened it (as Ceph's and
//! Seastar's DPDK stacks do); a listener exists on every worker ([`NetworkStack::per_worker_listen`]) and
//! each keeps the connections whose SYN hashes to it. Connections never move: `detach` is `Unsupported`.
//!
//! Limits: IPv4 only; one port per stack; the EAL exists once per process, so one `DpdkStack` per process;
//! mempools are never freed (see `ffi`). With several workers on the accepting side, a client's reconnect
//! hashes to any worker, not necessarily the one holding its session: the messenger moves the session
//! to the socket's worker, as it does on every stack (`msgr::worker`, counted as `sessions_moved`).

mod classify;
mod config;
mod device;
mod ffi;
mod listen;
mod poll_worker;
mod stats;
mod window;

use std::io;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

pub use config::DpdkConfig;
pub use ffi::PortStats;
pub use poll_worker::DpdkWorker;
pub use stats::{DpdkCounters, DpdkStats};

use super::NetworkStack;
use classify::Local;
use ffi::{Eal, Mbuf, Mempool, Port, PortSetup, Queue};

/// Capacity of each worker's hand-off ring (segments from other workers' queues).
const HANDOFF_RING: usize = 4096;

/// What one worker takes from the stack when it starts: its queue pair and the pool its RX queue fills from.
type WorkerParts = (Queue, Arc<Mempool>);
/// Raw frames to transmit (test hook): one channel per worker.
type FrameChannel = (Sender<Vec<u8>>, Receiver<Vec<u8>>);

/// State shared by the workers of one stack.
pub(crate) struct Shared {
    config: DpdkConfig,
    eal: &'static Eal,
    port: Arc<Port>,
    local: Local,
    /// Queue and pool of each worker, taken by `new_worker`.
    parts: Mutex<Vec<Option<WorkerParts>>>,
    handoff_tx: Vec<Sender<Mbuf>>,
    handoff_rx: Vec<Receiver<Mbuf>>,
    /// Each worker's thread, to wake it from its idle back-off.
    threads: Vec<OnceLock<Thread>>,
    counters: Vec<Arc<DpdkCounters>>,
    /// Bumped by `abort_all_connections`; each worker resets its connections when it sees a new value.
    abort_generation: AtomicU64,
    /// Ports given to port-0 listens, in order, so every worker's n-th such listen gets the same port.
    listen_ports: Mutex<Vec<u16>>,
    /// Raw frames to transmit, per worker (test hook).
    inject: Vec<FrameChannel>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // With the default `--no-shconf --file-prefix=msgr-<pid>` the EAL leaves an empty runtime
        // directory behind; remove it (a no-op for any other prefix or a non-empty directory).
        let _ = std::fs::remove_dir(format!("/var/run/dpdk/msgr-{}", std::process::id()));
    }
}

impl Shared {
    fn wake(&self, worker: usize) {
        if let Some(t) = self.threads.get(worker).and_then(OnceLock::get) {
            t.unpark();
        }
    }
}

/// The dpdk [`NetworkStack`]. Cheap to clone; all clones share one port.
#[derive(Clone)]
pub struct DpdkStack {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for DpdkStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpdkStack")
            .field("port", &self.shared.port.id())
            .field("driver", &self.shared.port.driver())
            .field("queues", &self.shared.port.queues())
            .field("ip", &self.shared.config.ip)
            .finish()
    }
}

impl DpdkStack {
    /// Build the stack from the CLI's `--dpdk-args` string (see [`DpdkConfig::parse`]).
    pub fn from_args(args: &str) -> io::Result<Self> {
        Self::new(DpdkConfig::parse(args)?)
    }

    /// Initialise the EAL (first call in the process only), create one mempool per queue, configure and
    /// start the port, and wait up to `config.link_wait` for its link (a memif link needs its peer; a
    /// link still down is logged, not an error: TCP retries until it comes up).
    pub fn new(config: DpdkConfig) -> io::Result<Self> {
        config.validate()?;
        let eal = Eal::init(&config.effective_eal_args())?;
        // DPDK's default data room (2048) at least: some PMDs (af_packet) size their frames to it.
        let data_room = (config.mtu + 14 + 4).max(2048);
        let pools = (0..config.queues)
            .map(|q| {
                Mempool::create(
                    eal,
                    &format!("msgr_p{}_q{q}", config.port),
                    config.mbufs_per_queue,
                    256,
                    data_room,
                )
            })
            .collect::<io::Result<Vec<_>>>()?;
        let setup = PortSetup {
            port: config.port,
            queues: config.queues,
            mtu: config.mtu,
            rx_desc: config.rx_desc,
            tx_desc: config.tx_desc,
            rss: config.hw_rss,
            tx_checksum: config.tx_checksum,
        };
        let (port, queues) = Port::start(eal, &setup, &pools)?;
        tracing::info!(
            port = port.id(),
            driver = port.driver(),
            queues = port.queues(),
            mac = %format_mac(port.mac()),
            ip = %config.ip,
            hw_rss = port.has_hw_rss(),
            tx_checksum_offload = port.has_tx_checksum(),
            "dpdk port started"
        );
        if !port.wait_link(config.link_wait) {
            tracing::warn!(port = port.id(), "link still down; continuing");
        }
        let local = Local {
            mac: port.mac(),
            ip: config.ip,
            prefix_len: config.prefix_len,
            queues: config.queues,
            rss_key: *port.rss_key(),
            verify_checksums: true,
        };
        let n = usize::from(config.queues);
        let (handoff_tx, handoff_rx) = (0..n)
            .map(|_| crossbeam_channel::bounded(HANDOFF_RING))
            .unzip();
        let parts = queues.into_iter().zip(pools).map(Some).collect();
        let shared = Shared {
            eal,
            port,
            local,
            parts: Mutex::new(parts),
            handoff_tx,
            handoff_rx,
            threads: (0..n).map(|_| OnceLock::new()).collect(),
            counters: (0..n).map(|_| Arc::default()).collect(),
            abort_generation: AtomicU64::new(0),
            listen_ports: Mutex::new(Vec::new()),
            inject: (0..n).map(|_| crossbeam_channel::unbounded()).collect(),
            config,
        };
        Ok(DpdkStack {
            shared: Arc::new(shared),
        })
    }

    /// Number of queue pairs, which is the number of workers the messenger must run.
    pub fn queues(&self) -> usize {
        usize::from(self.shared.port.queues())
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.shared.config.ip
    }

    pub fn mac(&self) -> [u8; 6] {
        self.shared.port.mac()
    }

    pub fn config(&self) -> &DpdkConfig {
        &self.shared.config
    }

    /// The port's driver name (`net_memif`, `net_tap`, `net_af_packet`, …).
    pub fn driver(&self) -> &str {
        self.shared.port.driver()
    }

    /// Whether the port does RSS / TX checksums in hardware.
    pub fn offloads(&self) -> (bool, bool) {
        (
            self.shared.port.has_hw_rss(),
            self.shared.port.has_tx_checksum(),
        )
    }

    pub fn link_up(&self) -> bool {
        self.shared.port.link_up()
    }

    pub fn wait_link(&self, timeout: Duration) -> bool {
        self.shared.port.wait_link(timeout)
    }

    /// Our counters summed over workers.
    pub fn stats(&self) -> DpdkStats {
        let mut total = DpdkStats::default();
        for c in &self.shared.counters {
            total.add(&c.snapshot());
        }
        total
    }

    /// One worker's counters.
    pub fn worker_stats(&self, worker: usize) -> Option<DpdkStats> {
        self.shared.counters.get(worker).map(|c| c.snapshot())
    }

    /// The driver's counters.
    pub fn port_stats(&self) -> PortStats {
        self.shared.port.stats()
    }

    /// Fault injection: every worker resets (RST) all its established and connecting TCP connections on
    /// its next poll. Listeners stay. The messenger sees the sockets fail and, per policy, reconnects.
    pub fn abort_all_connections(&self) {
        self.shared.abort_generation.fetch_add(1, Ordering::AcqRel);
        for w in 0..self.shared.threads.len() {
            self.shared.wake(w);
        }
    }

    /// Test hook: transmit `frame` (a whole Ethernet frame, sent as is) from `worker`'s TX queue on its
    /// next poll.
    pub fn inject_frame(&self, worker: usize, frame: Vec<u8>) -> io::Result<()> {
        let (tx, _) = self
            .shared
            .inject
            .get(worker)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no such worker"))?;
        tx.send(frame)
            .map_err(|_| io::Error::other("worker gone"))?;
        self.shared.wake(worker);
        Ok(())
    }
}

impl NetworkStack for DpdkStack {
    type Worker = DpdkWorker;

    fn name(&self) -> &'static str {
        "dpdk"
    }

    fn new_worker(&self, index: usize) -> io::Result<DpdkWorker> {
        DpdkWorker::new(self.shared.clone(), index)
    }

    fn per_worker_listen(&self) -> bool {
        true
    }
}

fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
