//! Fault injection over any stack, like Ceph's `ms_inject_socket_failures` and `ms_inject_delay_*`.
//!
//! [`FaultStack`] wraps a [`NetworkStack`]; each of its workers is a [`FaultWorker`] over the inner worker.
//! It owns a seeded RNG per worker, the set of sockets whose readable data is being held back, and shared
//! [`FaultCounters`].
//!
//! * **Socket failures**: every `read` or `writev` on an established socket fails with probability
//!   `1 / socket_failure_one_in`. The socket is shut down in both directions first (so the peer sees end of
//!   stream too), then the call returns `ConnectionAborted` carrying [`TransportError::Injected`]
//!   (test with [`super::is_injected`]). Later calls see the shut-down socket as the inner stack reports it.
//! * **Armed failures**: [`FaultCounters::arm`] makes the next N reads or writevs fail the same way, for a
//!   test that must cut a connection at a chosen moment.
//! * **Read delay**: when the inner stack reports a socket readable, the event is held back and reads return
//!   `WouldBlock` until `read_delay` has passed; then one readable event is delivered and the socket reads
//!   until a read comes back short (drained at that moment). A read of a socket that is neither held nor
//!   released (the owner reads again before it polls) returns `WouldBlock` and holds the socket
//!   tentatively: data that arrived meanwhile waits too, and a readable event that follows restarts the
//!   delay from its own arrival, so no data is delivered sooner than `read_delay` after it was announced.
//!   Nothing sleeps: `poll` shortens its timeout to the earliest release. Writable events pass through
//!   untouched.
//!
//! Replay: worker `i` seeds its RNG with [`FaultConfig::worker_seed`]`(i)`; the base seed is in the config's
//! `Display` and logged when a worker starts. The same seed replays the same decisions for the same sequence
//! of calls (real sockets may split reads differently from run to run, so replays are close, not exact).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{self, IoSlice};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{
    ConnectOptions, EventKind, FaultOp, ListenOptions, NetworkStack, Readiness, SocketEvent,
    SocketId, TransportError, Wake, WorkerStack,
};

/// What to inject. The default injects nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultConfig {
    /// Fail one `read`/`writev` in this many (Ceph's `ms_inject_socket_failures`); 0 disables.
    pub socket_failure_one_in: u32,
    /// Hold readable data back this long after it arrives; zero disables.
    pub read_delay: Duration,
    /// Base seed of the per-worker RNGs.
    pub seed: u64,
}

impl FaultConfig {
    /// The seed worker `index` uses: the base seed mixed with the index (splitmix64 step).
    pub fn worker_seed(&self, index: usize) -> u64 {
        let mut z = self
            .seed
            .wrapping_add((index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn is_active(&self) -> bool {
        self.socket_failure_one_in > 0 || !self.read_delay.is_zero()
    }
}

impl fmt::Display for FaultConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.socket_failure_one_in > 0 {
            write!(f, "socket failures 1/{}", self.socket_failure_one_in)?;
        } else {
            f.write_str("no socket failures")?;
        }
        write!(
            f,
            ", read delay {:?}, seed {:#x}",
            self.read_delay, self.seed
        )
    }
}

/// What was injected, summed over all workers of one [`FaultStack`].
#[derive(Debug, Default)]
pub struct FaultCounters {
    pub injected_reads: AtomicU64,
    pub injected_writevs: AtomicU64,
    /// Readable edges held back by the read delay.
    pub delayed_reads: AtomicU64,
    /// Armed failures still to inject (see [`FaultCounters::arm`]).
    armed: AtomicU64,
}

impl FaultCounters {
    /// Fail the next `n` reads or writevs on established sockets of this stack, whatever
    /// `socket_failure_one_in` says: a test's deterministic cut of whichever connection does I/O next.
    pub fn arm(&self, n: u64) {
        self.armed.fetch_add(n, Ordering::AcqRel);
    }

    /// Armed failures not injected yet.
    pub fn armed(&self) -> u64 {
        self.armed.load(Ordering::Acquire)
    }

    fn take_armed(&self) -> bool {
        self.armed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Socket failures injected so far (reads and writevs).
    pub fn injected(&self) -> u64 {
        self.injected_reads.load(Ordering::Relaxed) + self.injected_writevs.load(Ordering::Relaxed)
    }
}

/// A [`NetworkStack`] whose workers inject faults.
pub struct FaultStack<S> {
    inner: S,
    config: FaultConfig,
    counters: Arc<FaultCounters>,
}

impl<S: NetworkStack> FaultStack<S> {
    pub fn new(inner: S, config: FaultConfig) -> Self {
        tracing::info!(stack = inner.name(), "fault injection: {config}");
        FaultStack {
            inner,
            config,
            counters: Arc::default(),
        }
    }

    pub fn config(&self) -> &FaultConfig {
        &self.config
    }

    pub fn counters(&self) -> Arc<FaultCounters> {
        self.counters.clone()
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: NetworkStack> NetworkStack for FaultStack<S> {
    type Worker = FaultWorker<S::Worker>;

    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn new_worker(&self, index: usize) -> io::Result<Self::Worker> {
        let inner = self.inner.new_worker(index)?;
        Ok(FaultWorker::new(
            inner,
            self.config.clone(),
            index,
            self.counters.clone(),
        ))
    }

    fn per_worker_listen(&self) -> bool {
        self.inner.per_worker_listen()
    }
}

/// A [`WorkerStack`] that injects failures and read delays into `W`.
/// A socket's held-back data.
#[derive(Clone, Copy, Debug)]
struct Hold {
    release: Instant,
    /// Held by a readable event (data known to be there), not tentatively by a read.
    announced: bool,
}

pub struct FaultWorker<W> {
    inner: W,
    config: FaultConfig,
    seed: u64,
    rng: SmallRng,
    counters: Arc<FaultCounters>,
    /// Sockets with readable data held back.
    held: HashMap<SocketId, Hold>,
    /// Sockets whose held data was released: they read freely until a read comes back short. A read
    /// of any other socket holds its data back (data that arrived without a readable event, because
    /// the owner reads again before it polls, waits like the rest).
    released: HashSet<SocketId>,
}

impl<W: WorkerStack> FaultWorker<W> {
    pub fn new(inner: W, config: FaultConfig, index: usize, counters: Arc<FaultCounters>) -> Self {
        let seed = config.worker_seed(index);
        tracing::info!(
            worker = index,
            worker_seed = format_args!("{seed:#x}"),
            "fault injection: {config}"
        );
        FaultWorker {
            inner,
            config,
            seed,
            rng: SmallRng::seed_from_u64(seed),
            counters,
            held: HashMap::new(),
            released: HashSet::new(),
        }
    }

    pub fn inner(&self) -> &W {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The seed of this worker's RNG.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn roll_failure(&mut self, id: SocketId, op: FaultOp) -> io::Result<()> {
        let one_in = self.config.socket_failure_one_in;
        let rolled = one_in != 0 && self.rng.random_ratio(1, one_in);
        if !rolled && !self.counters.take_armed() {
            return Ok(());
        }
        let counter = match op {
            FaultOp::Read => &self.counters.injected_reads,
            FaultOp::Writev => &self.counters.injected_writevs,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%id, %op, seed = format_args!("{:#x}", self.seed), "injecting socket failure");
        // Best effort: the socket may already be dead, which is what we want anyway.
        let _ = self.inner.shutdown(id, Shutdown::Both);
        self.held.remove(&id);
        self.released.remove(&id);
        Err(TransportError::Injected {
            op,
            id,
            seed: self.seed,
        }
        .into())
    }

    /// What every read does first: `WouldBlock` while the socket's data is held back, then maybe a failure.
    fn check_read(&mut self, id: SocketId) -> io::Result<()> {
        if !self.config.read_delay.is_zero() {
            let now = Instant::now();
            match self.held.get(&id) {
                Some(hold) if hold.release > now => return Err(io::ErrorKind::WouldBlock.into()),
                Some(_) => {
                    self.held.remove(&id);
                    self.released.insert(id);
                }
                None if !self.released.contains(&id) => {
                    let hold = Hold {
                        release: now + self.config.read_delay,
                        announced: false,
                    };
                    self.held.insert(id, hold);
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                None => {}
            }
        }
        self.roll_failure(id, FaultOp::Read)
    }

    /// After a read of up to `asked` bytes: a socket found drained — a short read, `WouldBlock`, an
    /// error — holds its next data back again.
    fn after_read(&mut self, id: SocketId, asked: usize, r: &io::Result<usize>) {
        if !matches!(r, Ok(n) if *n >= asked) {
            self.released.remove(&id);
        }
    }

    fn next_release(&self) -> Option<Instant> {
        self.held.values().map(|hold| hold.release).min()
    }
}

impl<W: WorkerStack> WorkerStack for FaultWorker<W> {
    type Handoff = W::Handoff;

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
        self.check_read(id)?;
        let r = self.inner.read(id, buf);
        self.after_read(id, buf.len(), &r);
        r
    }

    fn writev(&mut self, id: SocketId, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.roll_failure(id, FaultOp::Writev)?;
        self.inner.writev(id, bufs)
    }

    fn read_with(
        &mut self,
        id: SocketId,
        scratch: &mut [u8],
        f: &mut dyn FnMut(&[u8]),
    ) -> io::Result<usize> {
        self.check_read(id)?;
        let r = self.inner.read_with(id, scratch, f);
        self.after_read(id, scratch.len(), &r);
        r
    }

    fn read_into(
        &mut self,
        id: SocketId,
        buf: &mut bytes::BytesMut,
        max: usize,
        scratch: &mut [u8],
    ) -> io::Result<usize> {
        self.check_read(id)?;
        let r = self.inner.read_into(id, buf, max, scratch);
        self.after_read(id, max, &r);
        r
    }

    fn short_read_drains(&self, id: SocketId) -> bool {
        self.inner.short_read_drains(id)
    }

    fn write_bytes(&mut self, id: SocketId, bufs: &[Bytes]) -> io::Result<usize> {
        self.roll_failure(id, FaultOp::Writev)?;
        self.inner.write_bytes(id, bufs)
    }

    fn flush_writes(&mut self) {
        self.inner.flush_writes()
    }

    fn shutdown(&mut self, id: SocketId, how: Shutdown) -> io::Result<()> {
        self.inner.shutdown(id, how)
    }

    fn close(&mut self, id: SocketId) -> io::Result<()> {
        self.held.remove(&id);
        self.released.remove(&id);
        self.inner.close(id)
    }

    fn peer_authenticated(&mut self, id: SocketId) {
        self.inner.peer_authenticated(id)
    }

    fn local_addr(&self, id: SocketId) -> io::Result<SocketAddr> {
        self.inner.local_addr(id)
    }

    fn peer_addr(&self, id: SocketId) -> io::Result<SocketAddr> {
        self.inner.peer_addr(id)
    }

    fn poll(&mut self, events: &mut Vec<SocketEvent>, timeout: Option<Duration>) -> io::Result<()> {
        let mut timeout = timeout;
        if let Some(release) = self.next_release() {
            let until = release.saturating_duration_since(Instant::now());
            timeout = Some(timeout.map_or(until, |t| t.min(until)));
        }
        let start = events.len();
        self.inner.poll(events, timeout)?;
        if self.config.read_delay.is_zero() {
            return Ok(());
        }
        let now = Instant::now();
        let mut kept = start;
        for i in start..events.len() {
            let id = events[i].id;
            if let EventKind::Ready(readiness) = &mut events[i].kind {
                if readiness.readable {
                    readiness.readable = false;
                    // A tentative hold started before this data was announced: restart it from now.
                    if !self.held.get(&id).is_some_and(|hold| hold.announced) {
                        let hold = Hold {
                            release: now + self.config.read_delay,
                            announced: true,
                        };
                        self.held.insert(id, hold);
                        self.counters.delayed_reads.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if readiness.is_empty() {
                    continue;
                }
            }
            events.swap(kept, i);
            kept += 1;
        }
        events.truncate(kept);
        let released: Vec<SocketId> = self
            .held
            .iter()
            .filter(|(_, hold)| hold.release <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in released {
            self.held.remove(&id);
            self.released.insert(id);
            events.push(SocketEvent::ready(id, Readiness::READABLE));
        }
        Ok(())
    }

    fn is_busy_poll(&self) -> bool {
        self.inner.is_busy_poll()
    }

    fn waker(&self) -> Arc<dyn Wake> {
        self.inner.waker()
    }

    fn detach(&mut self, id: SocketId) -> io::Result<W::Handoff> {
        let handoff = self.inner.detach(id)?;
        // The new owner gets a ready event on attach, so held data is not lost.
        self.held.remove(&id);
        Ok(handoff)
    }

    fn attach(&mut self, handoff: W::Handoff) -> io::Result<SocketId> {
        self.inner.attach(handoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_seeds_differ_and_are_stable() {
        let config = FaultConfig {
            socket_failure_one_in: 50,
            read_delay: Duration::ZERO,
            seed: 42,
        };
        assert_ne!(config.worker_seed(0), config.worker_seed(1));
        assert_eq!(config.worker_seed(3), config.clone().worker_seed(3));
    }

    #[test]
    fn display_names_the_seed() {
        let config = FaultConfig {
            socket_failure_one_in: 50,
            read_delay: Duration::from_millis(5),
            seed: 0xbeef,
        };
        let text = config.to_string();
        assert!(text.contains("1/50"), "{text}");
        assert!(text.contains("0xbeef"), "{text}");
        assert!(config.is_active());
        assert!(!FaultConfig::default().is_active());
    }
}
