//! One listener's pool of smoltcp sockets on one worker: smoltcp has no accept queue, so a connection
//! request needs a socket already in LISTEN, which it then holds through SYN-RECEIVED until the handshake
//! completes. A spoofed SYN never completes, so a fixed pool is a door any 16 forged packets can shut.
//!
//! How the pool resists a SYN flood (defaults in `config`):
//! - it grows on demand: before smoltcp sees a batch of frames the worker counts the SYNs in it
//!   ([`ListenPool::provision`]) and adds LISTEN sockets for them, up to `listen_pool_max`;
//! - at the cap, each new SYN takes the socket of the oldest half-open connection (put back to LISTEN
//!   without a RST, so a forged source gets no backscatter): a real client finishes its handshake in one
//!   round trip, so it survives unless `listen_pool_max` new SYNs arrive within that round trip;
//! - a half-open connection keeps its socket `syn_timeout` at most ([`ListenPool::maintain`]);
//! - once no SYN asked for growth for [`SHRINK_AFTER`], free sockets beyond `listen_pool` are dropped
//!   (not at once, so a flood cannot make the worker allocate and free socket buffers per packet).
//!
//! Invariants: every slot's socket is in LISTEN or SYN-RECEIVED after `maintain` (established ones move
//! to `ready`, closed ones listen again); `slots.len() <= cap`; `syn_since` is set exactly for slots seen
//! in SYN-RECEIVED.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, State};
use smoltcp::socket::Socket;

/// Free sockets beyond the target are kept this long after the pool last grew.
pub const SHRINK_AFTER: Duration = Duration::from_secs(1);

struct Slot {
    handle: SocketHandle,
    /// When this socket was first seen in SYN-RECEIVED.
    syn_since: Option<Instant>,
}

/// What a `provision` or `maintain` pass did, for the worker's counters and logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PoolReport {
    /// Connections that completed their handshake and wait in `ready`.
    pub arrived: usize,
    pub grown: usize,
    pub shrunk: usize,
    pub timed_out: usize,
    pub evicted: usize,
}

/// One listener's sockets on one worker.
pub struct ListenPool {
    pub port: u16,
    nodelay: bool,
    slots: Vec<Slot>,
    /// Established connections waiting for `accept`.
    pub ready: VecDeque<SocketHandle>,
    /// Free (LISTEN) sockets to keep.
    target: usize,
    /// LISTEN + SYN-RECEIVED sockets at most.
    cap: usize,
    syn_timeout: Option<Duration>,
    last_grown: Instant,
}

impl ListenPool {
    /// A pool of `target` sockets listening on `port`; `new_socket` makes a fresh (closed) socket.
    pub fn new(
        port: u16,
        nodelay: bool,
        target: usize,
        cap: usize,
        syn_timeout: Option<Duration>,
        sockets: &mut SocketSet<'static>,
        new_socket: &mut dyn FnMut() -> tcp::Socket<'static>,
    ) -> Self {
        let target = target.max(1);
        let mut pool = ListenPool {
            port,
            nodelay,
            slots: Vec::with_capacity(target),
            ready: VecDeque::new(),
            target,
            cap: cap.max(target),
            syn_timeout,
            last_grown: Instant::now(),
        };
        for _ in 0..target {
            pool.add(sockets, new_socket);
        }
        pool
    }

    pub fn nodelay(&self) -> bool {
        self.nodelay
    }

    /// Sockets in the pool (LISTEN and SYN-RECEIVED).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    fn add(
        &mut self,
        sockets: &mut SocketSet<'static>,
        new_socket: &mut dyn FnMut() -> tcp::Socket<'static>,
    ) -> bool {
        let mut s = new_socket();
        if s.listen(self.port).is_err() {
            return false;
        }
        self.slots.push(Slot {
            handle: sockets.add(s),
            syn_since: None,
        });
        true
    }

    fn free(&self, sockets: &SocketSet<'static>) -> usize {
        self.slots
            .iter()
            .filter(|s| sockets.get::<tcp::Socket>(s.handle).state() == State::Listen)
            .count()
    }

    /// Make room for `syns` connection requests about to reach smoltcp: grow up to the cap, then put the
    /// oldest half-open connections back to LISTEN.
    pub fn provision(
        &mut self,
        syns: usize,
        now: Instant,
        sockets: &mut SocketSet<'static>,
        new_socket: &mut dyn FnMut() -> tcp::Socket<'static>,
        report: &mut PoolReport,
    ) {
        let mut missing = syns.saturating_sub(self.free(sockets));
        if missing == 0 {
            return;
        }
        self.last_grown = now;
        while missing > 0 && self.slots.len() < self.cap && self.add(sockets, new_socket) {
            missing -= 1;
            report.grown += 1;
        }
        if missing == 0 {
            return;
        }
        // Oldest first; a socket not yet stamped went half-open during the last poll: youngest.
        let mut half_open: Vec<(Instant, usize)> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| sockets.get::<tcp::Socket>(s.handle).state() == State::SynReceived)
            .map(|(i, s)| (s.syn_since.unwrap_or(now), i))
            .collect();
        half_open.sort_unstable();
        for &(_, i) in half_open.iter().take(missing) {
            self.relisten(i, sockets);
            report.evicted += 1;
        }
    }

    /// Back to LISTEN, with no RST (the socket forgets its peer before it could send one), and re-added to
    /// the set: smoltcp keeps "waiting for this neighbour, silent for 1 s" in the set's entry, not in the
    /// socket, and a forged source never answers ARP — reused in place, the socket would hold the next
    /// (real) peer's SYN-ACK back for up to a second, longer than a flood lets a half-open socket live.
    fn relisten(&mut self, i: usize, sockets: &mut SocketSet<'static>) {
        let slot = &mut self.slots[i];
        slot.syn_since = None;
        let s = sockets.get_mut::<tcp::Socket>(slot.handle);
        s.abort();
        let _ = s.listen(self.port);
        #[allow(irrefutable_let_patterns)]
        if let Socket::Tcp(s) = sockets.remove(slot.handle) {
            slot.handle = sockets.add(s);
        }
    }

    /// After smoltcp ran: move established connections to `ready`, re-listen closed sockets, expire
    /// half-open ones, refill to the target and shrink back to it once the pool has been idle a while.
    pub fn maintain(
        &mut self,
        now: Instant,
        sockets: &mut SocketSet<'static>,
        new_socket: &mut dyn FnMut() -> tcp::Socket<'static>,
        report: &mut PoolReport,
    ) {
        let mut free = 0;
        let mut i = 0;
        while i < self.slots.len() {
            let slot = &mut self.slots[i];
            match sockets.get::<tcp::Socket>(slot.handle).state() {
                State::Listen => free += 1,
                State::SynReceived => {
                    let since = *slot.syn_since.get_or_insert(now);
                    if self
                        .syn_timeout
                        .is_some_and(|t| now.saturating_duration_since(since) >= t)
                    {
                        self.relisten(i, sockets);
                        report.timed_out += 1;
                        free += 1;
                    }
                }
                State::Closed | State::TimeWait => {
                    self.relisten(i, sockets);
                    free += 1;
                }
                _ => {
                    let slot = self.slots.swap_remove(i);
                    self.ready.push_back(slot.handle);
                    report.arrived += 1;
                    continue;
                }
            }
            i += 1;
        }
        while free < self.target && self.slots.len() < self.cap && self.add(sockets, new_socket) {
            free += 1;
            report.grown += 1;
        }
        if free > self.target && now.saturating_duration_since(self.last_grown) >= SHRINK_AFTER {
            let mut excess = free - self.target;
            let mut i = 0;
            while excess > 0 && i < self.slots.len() {
                let h = self.slots[i].handle;
                if sockets.get::<tcp::Socket>(h).state() == State::Listen {
                    sockets.remove(h);
                    self.slots.swap_remove(i);
                    excess -= 1;
                    report.shrunk += 1;
                } else {
                    i += 1;
                }
            }
        }
    }

    /// Remove the pool's sockets; returns the established connections nobody accepted.
    pub fn close(self, sockets: &mut SocketSet<'static>) -> VecDeque<SocketHandle> {
        for slot in self.slots {
            sockets.remove(slot.handle);
        }
        self.ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket() -> tcp::Socket<'static> {
        tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 4096]),
            tcp::SocketBuffer::new(vec![0; 4096]),
        )
    }

    #[test]
    fn grows_for_waiting_syns_up_to_the_cap_and_shrinks_back_once_idle() {
        let mut sockets = SocketSet::new(Vec::new());
        let mut make = socket;
        let mut pool = ListenPool::new(6800, true, 4, 32, None, &mut sockets, &mut make);
        assert_eq!(pool.len(), 4);
        let t0 = Instant::now();
        let mut report = PoolReport::default();
        pool.provision(3, t0, &mut sockets, &mut make, &mut report);
        assert_eq!(
            (pool.len(), report.grown),
            (4, 0),
            "4 free sockets serve 3 SYNs"
        );
        pool.provision(20, t0, &mut sockets, &mut make, &mut report);
        assert_eq!((pool.len(), report.grown), (20, 16));
        pool.provision(100, t0, &mut sockets, &mut make, &mut report);
        assert_eq!((pool.len(), report.grown), (32, 28), "capped");
        assert_eq!(report.evicted, 0, "no half-open socket to evict");
        // No SYN took them: the free sockets stay until SHRINK_AFTER, then go back to the target.
        pool.maintain(t0, &mut sockets, &mut make, &mut report);
        assert_eq!(pool.len(), 32);
        pool.maintain(t0 + SHRINK_AFTER, &mut sockets, &mut make, &mut report);
        assert_eq!((pool.len(), report.shrunk), (4, 28));
        assert_eq!(sockets.iter().count(), 4);
        assert!(pool.close(&mut sockets).is_empty());
        assert_eq!(sockets.iter().count(), 0);
    }

    #[test]
    fn closed_sockets_listen_again() {
        let mut sockets = SocketSet::new(Vec::new());
        let mut make = socket;
        let mut pool = ListenPool::new(6800, false, 2, 2, None, &mut sockets, &mut make);
        let h = pool.slots[0].handle;
        sockets.get_mut::<tcp::Socket>(h).abort();
        let mut report = PoolReport::default();
        pool.maintain(Instant::now(), &mut sockets, &mut make, &mut report);
        for slot in &pool.slots {
            assert_eq!(
                sockets.get::<tcp::Socket>(slot.handle).state(),
                State::Listen
            );
        }
        assert_eq!(sockets.iter().count(), 2);
        assert_eq!(report, PoolReport::default());
    }
}
