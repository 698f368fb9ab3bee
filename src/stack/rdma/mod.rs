//! The RDMA stack (cargo feature `rdma`): RC queue pairs through libibverbs, connection setup through
//! librdmacm, presented to the messenger as a byte stream per connection.
//!
//! # What it owns
//! Per worker ([`RdmaWorker`], created on the worker's thread): the device context as librdmacm opened it,
//! one protection domain, one completion queue (both directions of every QP) on one completion channel,
//! one rdma_cm event channel, one registered buffer pool (`pool::BufferPool`), and its connections keyed by
//! [`SocketId`](super::SocketId). Nothing is shared between workers on the data path; [`RdmaStack`] holds only the config,
//! the counters (atomics) and the fault-injection epoch.
//!
//! # Connections
//! Addresses stay IP:port: `listen` binds an rdma_cm id and listens; `connect` resolves address and route,
//! creates the RC QP on the resolved device (which must be the configured one), posts its receives and
//! calls `rdma_connect`. An accepted request is answered (`rdma_accept`) by the first `poll` after
//! `accept`, so the messenger can still [detach](super::WorkerStack::detach) it to another worker before that: the CM
//! id is parked on an event channel of its own and migrated (`rdma_migrate_id`) by `attach`. Established
//! connections cannot move (their QP lives on this worker's CQ and PD): `detach` says `Unsupported`.
//!
//! # Two wires ([`RdmaWire`], one per stack)
//! [`RdmaWire::Msgr`] (the default) is msgr's own format, described below: rdma_cm set-up, credits.
//! [`RdmaWire::Ceph`] is Ceph 16's async+rdma, so msgr is a peer of real Ceph daemons and clients that
//! run `ms_type = async+rdma` (`ceph_wire.rs` has the record and the exchange): `listen` opens a TCP
//! listener at the msgr2 address and `connect` a TCP connection to it (the side channel, open for the
//! connection's life); the QP is created and moved INIT → RTR → RTS by hand (`verbs::OwnedQp`, Ceph's
//! values) as the three queue-pair records pass; the byte stream then travels in plain SENDs of at most
//! [`RdmaConfig::ceph_buffer_size`] (the peer's receive buffers), with no immediate data and no credits
//! (the QP's infinite RNR retry waits out a full receive queue). End of file or any byte on the side
//! channel, a bad record, or a SEND without payload (Ceph's close message) ends the connection; closing
//! ours closes the side channel, which is how Ceph learns of it. Everything else (buffers, zero copy,
//! polling, faults) is shared with msgr's wire. Side channels are looked at on the rdma_cm channel's
//! cadence (see Polling).
//!
//! # Data path and wire format (msgr's wire)
//! On [`RdmaWire::Msgr`] both sides send
//! 12 bytes of private data with the CM handshake: magic `MRD1`, receive depth posted now (u16 LE), the
//! largest receive depth it may grow to (u16 LE; 0 from an older msgr: it never grows), receive buffer
//! size (u32 LE). After that every message is one SEND_WITH_IMM carrying up to the peer's
//! buffer size of the byte stream; the immediate data is the number of receive buffers the sender has
//! re-posted since its previous SEND (credits, see [`Credits`]). A SEND without payload only returns
//! credits. The byte stream is what `proto::Connection` reads and writes, exactly as on posix.
//!
//! # Registered buffers before authentication
//! A connection first holds only [`RdmaConfig::preauth_depth`] receive buffers and as many send
//! buffers (its peer is not authenticated yet: an unauthenticated peer must not pin much of the pool).
//! When the messenger says the peer authenticated
//! ([`WorkerStack::peer_authenticated`](super::WorkerStack::peer_authenticated)) it takes the rest of
//! its depth from the pool, posts the receives and returns them to the peer as credits (a credit-only
//! SEND at once, [`Credits::grant_more`]). A pool exhausted then is no error: the connection carries on
//! at the small depth (`promotions_refused`). On msgr's wire a peer that did not announce a larger
//! depth (an older msgr) is never granted more than our first receives; on Ceph's wire there are no
//! credits to announce and the peer's RNR retry (infinite, Ceph's `rnr_retry` 7) waits out a short
//! receive queue.
//!
//! `writev` copies the gather list into registered send buffers (coalescing small pieces into one SEND;
//! a message larger than a buffer is split). A full buffer is posted at once; a partly filled one stays
//! open and is posted by the next `poll` (doorbell batching: what one event-loop turn writes, such as an
//! ACK frame and the reply the dispatcher sent, leaves in one SEND). `read` copies out of completed
//! receive buffers and re-posts each as soon as it is drained. Sends are signaled selectively (every
//! `signal_every`-th, and whenever the last free send buffer or send-queue slot is taken); payloads up
//! to the QP's inline limit go inline.
//!
//! Zero copy: `write_bytes` (owned `Bytes`, what the messenger's flush path uses) sends each buffer of at
//! least [`RdmaConfig::zero_copy_min`] bytes straight from the caller's memory: SENDs of up to the peer's
//! buffer size whose SGE points into the `Bytes`, registered through the worker's region cache
//! (`mr_cache.rs`: bounded by [`RdmaConfig::zero_copy_pin_limit`], LRU, never evicting a region posted
//! work still holds). Each such SEND takes one credit like any other; the stream stays in order because
//! what is already in the open (copied) buffer leaves first, as the head of the first piece's SEND (two
//! SGEs). Each posted piece holds a `Bytes` clone and its region until
//! a completion covers it (the last piece of a buffer is always signaled). Shorter buffers are copied and
//! coalesced as by `writev`; a registration that fails or does not fit is copied too (counted, never an
//! error). `read_with` lends each completed receive buffer to the caller, then re-posts it (no copy).
//!
//! # Faults
//! A failed work completion (QP in error, flush), a CM disconnect, reject or unreachable peer becomes an
//! `io::Error` (or end of stream for an orderly disconnect) on that socket, so the messenger's lossless
//! sessions reconnect and replay exactly as on posix. [`RdmaStack::force_qp_errors`] moves every
//! established QP into the error state (a test hook for exactly that path). `ibv_reg_mr` failures name
//! `RLIMIT_MEMLOCK` (see `pool.rs`).
//!
//! # Polling
//! `is_busy_poll` is true: a zero-timeout `poll` polls the CQ (no syscall) and, every
//! [`CM_CHECK_EVERY`] turns or while connections are being set up, the CM channel. A `poll` with a
//! non-zero timeout (the event loop's idle back-off) arms the CQ, re-polls once, and blocks in epoll on
//! the completion channel, the CM channel and the waker (event-channel mode for idle periods).

pub mod ceph_wire;
mod credit;
mod mr_cache;
mod pool;
mod qp_worker;
mod sys;
mod verbs;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::NetworkStack;
pub use credit::{CreditViolation, Credits};
pub use qp_worker::{RdmaWorker, MAX_WAIT};
use verbs::{Context, DetachedId};

/// A zero-timeout poll looks at the rdma_cm channel every this many turns (connections being set up are
/// checked every turn).
pub const CM_CHECK_EVERY: u64 = 64;
const HELLO_MAGIC: [u8; 4] = *b"MRD1";
/// The smallest receive depth on msgr's wire (a peer announcing less is refused).
const MIN_DEPTH: u32 = 4;
const HELLO_LEN: usize = 12;

/// How connections are set up and what the byte stream looks like on the QP (one choice per stack).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RdmaWire {
    /// msgr's own: rdma_cm with `MRD1` private data, SEND_WITH_IMM carrying credits (msgr ↔ msgr only).
    #[default]
    Msgr,
    /// Ceph 16's async+rdma (`ms_type = async+rdma`, `ms_async_rdma_cm = false`): a TCP side channel
    /// to the peer's msgr2 address carrying three queue-pair records, then plain SENDs of at most the
    /// peer's receive buffer size, no credits (see `ceph_wire.rs`). Talks to real Ceph daemons.
    Ceph,
}

impl RdmaWire {
    pub fn name(self) -> &'static str {
        match self {
            RdmaWire::Msgr => "msgr",
            RdmaWire::Ceph => "ceph",
        }
    }
}

/// Ceph's default `ms_async_rdma_buffer_size`: the size of every receive buffer a Ceph peer posts.
pub const CEPH_DEFAULT_BUFFER_SIZE: u32 = 128 * 1024;

/// Configuration of the RDMA stack. [`RdmaConfig::new`] takes what the CLI asks for (device, GID index,
/// port); the rest are tuning knobs with defaults.
#[derive(Clone, Debug)]
pub struct RdmaConfig {
    /// Connection set-up and wire format ([`RdmaWire`]); [`RdmaConfig::with_wire`] also picks sizes
    /// that suit it.
    pub wire: RdmaWire,
    /// [`RdmaWire::Ceph`]: the peer's receive buffer size (Ceph's `ms_async_rdma_buffer_size`, not
    /// on the wire, so it is configuration; both sides must agree). No SEND is larger; our receive
    /// buffers are at least this large.
    pub ceph_buffer_size: u32,
    /// Verbs device name (`rxe0`, `mlx5_0`); `None`: the first device.
    pub device: Option<String>,
    /// Port number on the device (1-based).
    pub port: u8,
    /// GID index checked at start-up and reported (RoCE v2 over IPv4: the IPv4-mapped entry). rdma_cm
    /// picks the GID from the IP address it resolves; this index is for validation and display.
    pub gid_index: i32,
    /// Receive buffers posted per authenticated connection. At least 4 (see [`Credits`]: with fewer a
    /// one-way stream can stall).
    pub recv_depth: u32,
    /// Send buffers per authenticated connection (and send-queue depth).
    pub send_depth: u32,
    /// Receive buffers posted, and send buffers held, per connection until the messenger says its
    /// peer authenticated; then it gets `recv_depth` / `send_depth`. Default 4: a cephx handshake is a
    /// few small frames each way, which 4 buffers carry without stalling, and an unauthenticated peer
    /// pins 8 registered buffers (512 KiB at the default `buf_size`) instead of 64 (4 MiB).
    /// Clamped to 4..=`recv_depth` (the wire's smallest depth).
    pub preauth_depth: u32,
    /// Size of every registered buffer: the most one SEND carries.
    pub buf_size: u32,
    /// Inline data asked for on each QP (the device may grant less or none).
    pub max_inline: u32,
    /// Completion-queue entries per worker; bounds connections per worker to
    /// `cq_depth / (recv_depth + send_depth)`.
    pub cq_depth: u32,
    /// Buffers registered at a time when the pool grows.
    pub pool_chunk: u32,
    /// Most buffers one worker registers.
    pub max_pool_slots: u32,
    /// Request a completion every this many sends.
    pub signal_every: u32,
    /// rdma_cm address and route resolution timeout.
    pub resolve_timeout: Duration,
    /// `write_bytes` sends buffers at least this long without copying, straight from the caller's
    /// memory (registered through the worker's region cache); shorter ones are copied into pool buffers
    /// (and coalesced). 0 disables zero-copy sends.
    pub zero_copy_min: u32,
    /// Most bytes (page-rounded) one worker keeps registered for zero-copy sends; a buffer that does not
    /// fit, once idle regions are evicted, is copied.
    pub zero_copy_pin_limit: usize,
}

impl Default for RdmaConfig {
    fn default() -> Self {
        RdmaConfig {
            wire: RdmaWire::Msgr,
            ceph_buffer_size: CEPH_DEFAULT_BUFFER_SIZE,
            device: None,
            port: 1,
            gid_index: 0,
            recv_depth: 32,
            send_depth: 32,
            preauth_depth: 4,
            buf_size: 64 * 1024,
            max_inline: 220,
            cq_depth: 8192,
            pool_chunk: 64,
            max_pool_slots: 4096,
            signal_every: 16,
            resolve_timeout: Duration::from_secs(2),
            // Registering a buffer seen for the first time costs about what copying 64 KiB does.
            zero_copy_min: 64 * 1024,
            zero_copy_pin_limit: 64 << 20,
        }
    }
}

impl RdmaConfig {
    /// The configuration for `device` (or the first one), `gid_index` and `port`, defaults otherwise.
    pub fn new(device: Option<String>, gid_index: i32, port: u8) -> Self {
        RdmaConfig {
            device,
            gid_index,
            port,
            ..RdmaConfig::default()
        }
    }

    /// The same configuration on `wire`. For [`RdmaWire::Ceph`] the buffers are sized for Ceph's
    /// (see [`RdmaConfig::ceph_buffer_size`]) and the pool kept small: a Ceph peer pins its own buffer
    /// pool too, and soft-RoCE test guests have little memory (16 + 16 buffers of 128 KiB per
    /// authenticated connection, 4 + 4 before, registered 32 at a time, at most 256 per worker: 32 MiB).
    pub fn with_wire(mut self, wire: RdmaWire) -> Self {
        self.wire = wire;
        if wire == RdmaWire::Ceph {
            self.recv_depth = 16;
            self.send_depth = 16;
            self.pool_chunk = 32;
            self.max_pool_slots = 256;
            self.buf_size = self.ceph_buffer_size;
        }
        self
    }

    /// Registered buffers a connection holds until its peer authenticated: (receive, send). See
    /// [`RdmaConfig::preauth_depth`].
    pub fn preauth_slots(&self) -> (u32, u32) {
        let recv = self.preauth_depth.max(MIN_DEPTH).min(self.recv_depth);
        (recv, recv.min(self.send_depth))
    }

    /// The size of every registered buffer: [`RdmaConfig::buf_size`], and on Ceph's wire at least the
    /// peer's receive buffer size (what Ceph sends us is at most that).
    pub fn slot_size(&self) -> u32 {
        match self.wire {
            RdmaWire::Msgr => self.buf_size,
            RdmaWire::Ceph => self.buf_size.max(self.ceph_buffer_size),
        }
    }

    fn check(&self) -> io::Result<()> {
        let bad = |what: String| Err(io::Error::new(io::ErrorKind::InvalidInput, what));
        if self.recv_depth < MIN_DEPTH || self.recv_depth > u32::from(u16::MAX) {
            return bad(format!("recv_depth {} not in 4..=65535", self.recv_depth));
        }
        if self.send_depth < 2 {
            return bad(format!("send_depth {} < 2", self.send_depth));
        }
        if self.buf_size < 256 {
            return bad(format!("buf_size {} < 256", self.buf_size));
        }
        if self.wire == RdmaWire::Ceph && !(4096..=1 << 30).contains(&self.ceph_buffer_size) {
            return bad(format!(
                "ceph_buffer_size {} not in 4096..=1 GiB",
                self.ceph_buffer_size
            ));
        }
        if self.cq_depth < self.recv_depth + self.send_depth {
            return bad(format!(
                "cq_depth {} < recv_depth + send_depth",
                self.cq_depth
            ));
        }
        Ok(())
    }
}

/// What the stack found on the device at start-up.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub name: String,
    pub port: u8,
    pub mtu: u32,
    pub gid_index: i32,
    /// The GID at `gid_index`, formatted as an IPv6 address.
    pub gid: String,
}

/// Counters shared by all workers of one [`RdmaStack`] (relaxed atomics).
#[derive(Debug, Default)]
pub struct RdmaCounters {
    pub data_sends: AtomicU64,
    pub credit_only_sends: AtomicU64,
    pub inline_sends: AtomicU64,
    pub signaled_sends: AtomicU64,
    pub recvs: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    /// `writev` found no credit (the peer's buffers were all in use): flow control at work.
    pub credit_stalls: AtomicU64,
    /// A peer sent beyond the credits we granted (must stay 0).
    pub credit_violations: AtomicU64,
    /// Fewest send credits any connection had left after a send (starts at `u32::MAX`).
    pub credit_low_water: AtomicU32,
    /// Connections that ended with a work-completion error (QP in error, flush, retry exceeded).
    pub qp_errors: AtomicU64,
    /// Connections given their full depth once their peer authenticated.
    pub promotions: AtomicU64,
    /// Authenticated connections left at the pre-authentication depth: the pool was exhausted.
    pub promotions_refused: AtomicU64,
    pub established: AtomicU64,
    /// Connect requests moved to another worker before being accepted.
    pub handoffs: AtomicU64,
    /// Payload bytes sent straight from the caller's buffers (`write_bytes`, zero copy).
    pub zero_copy_bytes: AtomicU64,
    /// Payload bytes copied into pool buffers before sending.
    pub copied_bytes: AtomicU64,
    /// Times a buffer long enough for zero copy was copied instead (it does not fit the pinning limit,
    /// every registered region was in use at the limit, or the registration failed).
    pub zero_copy_fallbacks: AtomicU64,
    pub mr_cache_hits: AtomicU64,
    pub mr_cache_misses: AtomicU64,
    pub mr_registrations: AtomicU64,
    pub mr_register_failures: AtomicU64,
    pub mr_evictions: AtomicU64,
}

/// A copy of [`RdmaCounters`].
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RdmaCountersSnapshot {
    pub data_sends: u64,
    pub credit_only_sends: u64,
    pub inline_sends: u64,
    pub signaled_sends: u64,
    pub recvs: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub credit_stalls: u64,
    pub credit_violations: u64,
    pub credit_low_water: Option<u32>,
    pub qp_errors: u64,
    pub promotions: u64,
    pub promotions_refused: u64,
    pub established: u64,
    pub handoffs: u64,
    pub zero_copy_bytes: u64,
    pub copied_bytes: u64,
    pub zero_copy_fallbacks: u64,
    pub mr_cache_hits: u64,
    pub mr_cache_misses: u64,
    pub mr_registrations: u64,
    pub mr_register_failures: u64,
    pub mr_evictions: u64,
}

impl RdmaCounters {
    fn new() -> Self {
        let c = RdmaCounters::default();
        c.credit_low_water.store(u32::MAX, Ordering::Relaxed);
        c
    }

    pub fn snapshot(&self) -> RdmaCountersSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let low = self.credit_low_water.load(Ordering::Relaxed);
        RdmaCountersSnapshot {
            data_sends: get(&self.data_sends),
            credit_only_sends: get(&self.credit_only_sends),
            inline_sends: get(&self.inline_sends),
            signaled_sends: get(&self.signaled_sends),
            recvs: get(&self.recvs),
            bytes_sent: get(&self.bytes_sent),
            bytes_received: get(&self.bytes_received),
            credit_stalls: get(&self.credit_stalls),
            credit_violations: get(&self.credit_violations),
            credit_low_water: (low != u32::MAX).then_some(low),
            qp_errors: get(&self.qp_errors),
            promotions: get(&self.promotions),
            promotions_refused: get(&self.promotions_refused),
            established: get(&self.established),
            handoffs: get(&self.handoffs),
            zero_copy_bytes: get(&self.zero_copy_bytes),
            copied_bytes: get(&self.copied_bytes),
            zero_copy_fallbacks: get(&self.zero_copy_fallbacks),
            mr_cache_hits: get(&self.mr_cache_hits),
            mr_cache_misses: get(&self.mr_cache_misses),
            mr_registrations: get(&self.mr_registrations),
            mr_register_failures: get(&self.mr_register_failures),
            mr_evictions: get(&self.mr_evictions),
        }
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// The RDMA network stack: shared by all workers, creates one [`RdmaWorker`] per worker thread.
#[derive(Debug)]
pub struct RdmaStack {
    config: RdmaConfig,
    info: DeviceInfo,
    counters: Arc<RdmaCounters>,
    qp_error_epoch: Arc<AtomicU64>,
}

impl RdmaStack {
    /// Check the device (it exists, the port is active, the GID index is valid) and build the stack.
    /// Errors say what is missing (no device: how to get a soft-RoCE one).
    pub fn new(config: RdmaConfig) -> io::Result<Self> {
        config.check()?;
        let ctx = Context::open(config.device.as_deref())?;
        let port = ctx.query_port(config.port).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{}: port {}: {e}", ctx.name(), config.port),
            )
        })?;
        if !port.active {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!(
                    "{} port {} is not active (state {}); is the netdev up?",
                    ctx.name(),
                    config.port,
                    port.state
                ),
            ));
        }
        let gid = ctx.query_gid(config.port, config.gid_index).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{} port {}: GID index {} ({} entries): {e}",
                    ctx.name(),
                    config.port,
                    config.gid_index,
                    port.gid_table_len
                ),
            )
        })?;
        let info = DeviceInfo {
            name: ctx.name().to_string(),
            port: config.port,
            mtu: port.mtu,
            gid_index: config.gid_index,
            gid: std::net::Ipv6Addr::from(gid).to_string(),
        };
        tracing::info!(device = %info.name, port = info.port, mtu = info.mtu, gid_index = info.gid_index,
            gid = %info.gid, "RDMA stack ready");
        Ok(RdmaStack {
            config,
            info,
            counters: Arc::new(RdmaCounters::new()),
            qp_error_epoch: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn config(&self) -> &RdmaConfig {
        &self.config
    }

    pub fn device_info(&self) -> &DeviceInfo {
        &self.info
    }

    pub fn counters(&self) -> &Arc<RdmaCounters> {
        &self.counters
    }

    /// Test hook: every worker moves each of its established QPs into the error state at its next poll,
    /// as a device or link failure would. The messenger sees socket errors and reconnects.
    pub fn force_qp_errors(&self) {
        self.qp_error_epoch.fetch_add(1, Ordering::AcqRel);
    }
}

impl NetworkStack for RdmaStack {
    type Worker = RdmaWorker;

    fn name(&self) -> &'static str {
        "rdma"
    }

    fn new_worker(&self, index: usize) -> io::Result<RdmaWorker> {
        RdmaWorker::new(
            index,
            self.config.clone(),
            self.counters.clone(),
            self.qp_error_epoch.clone(),
        )
    }

    fn per_worker_listen(&self) -> bool {
        false
    }
}

/// A connection not yet accepted, moving between workers (see the module docs): a connect request's
/// rdma_cm id, or, on Ceph's wire, the accepted TCP side channel (its QP does not exist yet).
pub struct RdmaHandoff {
    peer: SocketAddr,
    pending: PendingAccept,
}

enum PendingAccept {
    Cm { id: DetachedId, params: PeerParams },
    Ceph { tcp: mio::net::TcpStream },
}

impl std::fmt::Debug for RdmaHandoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaHandoff")
            .field("peer", &self.peer)
            .field(
                "wire",
                &match self.pending {
                    PendingAccept::Cm { .. } => "msgr",
                    PendingAccept::Ceph { .. } => "ceph",
                },
            )
            .finish()
    }
}

/// What the peer said in its CM private data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PeerParams {
    /// Receive buffers it posted for us: our first credits.
    depth: u32,
    /// The most it may grow to (returns up to this are accepted); `depth` from an older msgr.
    max_depth: u32,
    /// It announced `max_depth`, so it accepts growth from us too (an older msgr refuses returns
    /// beyond what we first announced).
    grows: bool,
    buf_size: u32,
}

/// Our private data: the receive depth we post now (until the peer authenticated), the full one, and
/// our buffer size.
fn hello(config: &RdmaConfig) -> [u8; HELLO_LEN] {
    let mut out = [0u8; HELLO_LEN];
    out[..4].copy_from_slice(&HELLO_MAGIC);
    let depth = u16::try_from(config.preauth_slots().0).unwrap_or(u16::MAX);
    let max_depth = u16::try_from(config.recv_depth).unwrap_or(u16::MAX);
    out[4..6].copy_from_slice(&depth.to_le_bytes());
    out[6..8].copy_from_slice(&max_depth.to_le_bytes());
    out[8..12].copy_from_slice(&config.buf_size.to_le_bytes());
    out
}

/// Parse the peer's private data (it may be padded by the CM). `None` if it is not msgr's.
fn parse_hello(data: &[u8]) -> Option<PeerParams> {
    let head = data.get(..HELLO_LEN)?;
    if head.get(..4)? != HELLO_MAGIC {
        return None;
    }
    let depth = u32::from(u16::from_le_bytes([*head.get(4)?, *head.get(5)?]));
    let max_field = u32::from(u16::from_le_bytes([*head.get(6)?, *head.get(7)?]));
    let buf_size = u32::from_le_bytes(head.get(8..12)?.try_into().ok()?);
    let grows = max_field != 0;
    let max_depth = if grows { max_field } else { depth };
    (depth >= MIN_DEPTH && max_depth >= depth && buf_size >= 64).then_some(PeerParams {
        depth,
        max_depth,
        grows,
        buf_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips() {
        let config = RdmaConfig::default();
        let params = parse_hello(&hello(&config)).unwrap();
        assert_eq!(
            params,
            PeerParams {
                depth: 4,
                max_depth: 32,
                grows: true,
                buf_size: 64 * 1024
            }
        );
        // The CM may pad private data: trailing bytes are ignored.
        let mut padded = hello(&config).to_vec();
        padded.extend_from_slice(&[0; 44]);
        assert_eq!(parse_hello(&padded), Some(params));
    }

    #[test]
    fn foreign_or_short_private_data_is_refused() {
        assert_eq!(parse_hello(b""), None);
        assert_eq!(parse_hello(b"MRD1"), None);
        let mut other = hello(&RdmaConfig::default());
        other[0] = b'X';
        assert_eq!(parse_hello(&other), None);
        let mut shallow = hello(&RdmaConfig::default());
        shallow[4] = 1;
        shallow[5] = 0;
        assert_eq!(parse_hello(&shallow), None);
        // A largest depth below the posted one is nonsense.
        let mut shrinking = hello(&RdmaConfig::default());
        shrinking[4] = 8;
        shrinking[6] = 5;
        shrinking[7] = 0;
        assert_eq!(parse_hello(&shrinking), None);
    }

    #[test]
    fn older_peer_without_a_largest_depth_never_grows() {
        let mut old = hello(&RdmaConfig::default());
        old[4] = 32;
        old[6] = 0;
        old[7] = 0;
        let params = parse_hello(&old).unwrap();
        assert_eq!((params.depth, params.max_depth), (32, 32));
        assert!(!params.grows);
    }

    #[test]
    fn preauth_slots_are_few_and_clamped() {
        let c = RdmaConfig::default();
        let (recv, send) = c.preauth_slots();
        assert_eq!((recv, send), (4, 4));
        assert!(recv + send <= c.recv_depth + c.send_depth);
        // Never below the wire's smallest depth, never above the full depth.
        let c = RdmaConfig {
            preauth_depth: 1,
            ..RdmaConfig::default()
        };
        assert_eq!(c.preauth_slots(), (4, 4));
        let c = RdmaConfig {
            preauth_depth: 1000,
            recv_depth: 16,
            send_depth: 8,
            ..RdmaConfig::default()
        };
        assert_eq!(c.preauth_slots(), (16, 8));
        let c = RdmaConfig {
            send_depth: 2,
            ..RdmaConfig::default()
        };
        assert_eq!(c.preauth_slots(), (4, 2));
        // On Ceph's wire too: 4 + 4 of its 16 + 16.
        let c = RdmaConfig::default().with_wire(RdmaWire::Ceph);
        assert_eq!(c.preauth_slots(), (4, 4));
    }

    #[test]
    fn config_is_checked() {
        let mut c = RdmaConfig::new(Some("rxe0".into()), 1, 1);
        assert!(c.check().is_ok());
        c.recv_depth = 2;
        assert!(c.check().is_err());
        let c = RdmaConfig {
            cq_depth: 8,
            ..RdmaConfig::default()
        };
        assert!(c.check().is_err());
    }
}
