//! Perf counters: one set per worker (only that worker writes it, so no cache line is shared on the data
//! path), summed into a [`CountersSnapshot`] on demand for `msgr counters` and tests.
//!
//! Invariant: a [`WorkerCounters`] is written by its worker thread only. Its [`Counter`]s therefore
//! count with a plain load and store (no locked read-modify-write on the data path); other threads
//! read them whenever they like and see a recent value.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::proto::{ConnStats, Limit};

use crate::throttle::ThrottleStats;

/// A counter with a single writer (its worker): see the module docs.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add `n` (writer thread only).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Subtract `n` (writer thread only).
    #[inline]
    pub fn sub(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_sub(n), Relaxed);
    }

    /// The value now (any thread).
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Counters of one worker.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    pub msgs_in: Counter,
    pub msgs_out: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub handshakes: Counter,
    pub reconnects: Counter,
    pub replayed: Counter,
    pub duplicates_dropped: Counter,
    pub resets: Counter,
    pub remote_resets: Counter,
    pub transport_faults: Counter,
    /// Frames received and sent (every tag), and the bare ACK frames among those sent.
    pub frames_in: Counter,
    pub frames_out: Counter,
    pub acks_out: Counter,
    /// Times a quiet connection gave its buffers back.
    pub buffer_releases: Counter,
    pub accepted: Counter,
    pub connections: Counter,
    pub dropped_bad_peers: Counter,
    /// Sessions moved to this worker because a reconnect for them arrived here.
    pub sessions_moved: Counter,
    /// Session requests refused because the requester is not the entity holding the session.
    pub sessions_refused_identity: Counter,
    /// Server-policy sessions ended after their time in Standby, or evicted for `max_sessions`.
    pub sessions_expired: Counter,
    /// Messages no dispatcher in the chain took (dropped).
    pub undispatched: Counter,
    /// Connections ended because the peer tripped a resource limit, by [`Limit::index`].
    pub limits_tripped: [Counter; Limit::ALL.len()],
}

impl WorkerCounters {
    /// Count a connection ended by `limit`.
    pub fn trip(&self, limit: Limit) {
        self.limits_tripped[limit.index()].add(1);
    }

    /// Add what a connection did since `last` (its previous stats) and remember `now`.
    pub fn add_conn_delta(&self, last: &mut ConnStats, now: ConnStats) {
        // Called on every pump: most turns change nothing, and then no counter is touched.
        if now == *last {
            return;
        }
        let d = |a: u64, b: u64| a.saturating_sub(b);
        self.msgs_in.add(d(now.msgs_in, last.msgs_in));
        self.msgs_out.add(d(now.msgs_out, last.msgs_out));
        self.bytes_in.add(d(now.bytes_in, last.bytes_in));
        self.bytes_out.add(d(now.bytes_out, last.bytes_out));
        self.frames_in.add(d(now.frames_in, last.frames_in));
        self.frames_out.add(d(now.frames_out, last.frames_out));
        self.acks_out.add(d(now.acks_out, last.acks_out));
        self.buffer_releases
            .add(d(now.buffer_releases, last.buffer_releases));
        self.handshakes.add(d(now.handshakes, last.handshakes));
        self.reconnects.add(d(now.reconnects, last.reconnects));
        self.replayed.add(d(now.replayed, last.replayed));
        self.transport_faults.add(d(now.faults, last.faults));
        self.duplicates_dropped
            .add(d(now.duplicates_dropped, last.duplicates_dropped));
        self.remote_resets
            .add(d(now.remote_resets, last.remote_resets));
        self.sessions_expired
            .add(d(now.standby_expired, last.standby_expired));
        *last = now;
    }
}

/// Messenger-wide counters at one moment (what `msgr counters` prints as JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CountersSnapshot {
    pub msgs_in: u64,
    pub msgs_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub handshakes: u64,
    pub reconnects: u64,
    /// Messages sent again after a fault (lossless replay).
    pub replayed: u64,
    pub duplicates_dropped: u64,
    /// Sessions that ended (lossy faults, fatal errors).
    pub resets: u64,
    pub remote_resets: u64,
    pub transport_faults: u64,
    /// Frames received and sent, every tag (MESSAGE, ACK, KEEPALIVE2, handshake frames).
    pub frames_in: u64,
    pub frames_out: u64,
    /// Bare ACK frames sent (acks that no outgoing message carried).
    pub acks_out: u64,
    /// Times a quiet connection gave its receive and encode buffers back
    /// (`proto::Config::idle_buffer_release`).
    pub buffer_releases: u64,
    pub accepted: u64,
    /// Connections currently open.
    pub connections: u64,
    /// Sessions in the registry (by peer address) now.
    pub sessions: u64,
    /// Peers dropped for bad input (garbage, bad banner, oversized frame, timeout mid-handshake).
    pub dropped_bad_peers: u64,
    /// Sessions moved between workers to meet a reconnect that landed on another worker.
    pub sessions_moved: u64,
    /// Socket failures injected by the fault-injection stack, if any.
    pub injected_faults: u64,
    /// Session requests refused because the requester is not the entity holding the session (it
    /// claimed another peer's addresses).
    pub sessions_refused_identity: u64,
    /// Server-policy sessions ended after their time in Standby (`server_standby_expiry`) or evicted
    /// to stay within `max_sessions`.
    pub sessions_expired: u64,
    /// Messages no dispatcher took (`Dispatcher::ms_handles` said no for all): dropped.
    pub undispatched: u64,
    /// Connections ended because the peer tripped a resource limit, by the limit's configuration name
    /// (only limits that tripped are listed).
    pub limits_tripped: std::collections::BTreeMap<&'static str, u64>,
    /// The messenger's throttles (filled in by `Messenger::counters`).
    pub throttles: Option<ThrottlesSnapshot>,
}

/// The throttles of a messenger at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ThrottlesSnapshot {
    /// The send budgets of all connections, summed (`max_*` is the budget of each connection;
    /// `blocked` counts sends that waited or failed for lack of budget).
    pub send: ThrottleStats,
    /// The messenger-wide dispatch throttle (`ms_dispatch_throttle_bytes`).
    pub dispatch: ThrottleStats,
    /// The receive throttles, by peer entity type (`blocked` counts pauses of a connection's reads).
    pub recv: Vec<PeerThrottleStats>,
}

impl ThrottlesSnapshot {
    /// No budget held anywhere: nothing queued, unacknowledged or undropped.
    pub fn is_idle(&self) -> bool {
        self.send.is_idle()
            && self.dispatch.is_idle()
            && self.recv.iter().all(|r| r.stats.is_idle())
    }
}

/// The receive throttle of one peer entity type.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeerThrottleStats {
    /// Peer entity type.
    pub entity_type: u8,
    /// Its throttle.
    #[serde(flatten)]
    pub stats: ThrottleStats,
}

impl CountersSnapshot {
    pub fn sum<'a>(workers: impl IntoIterator<Item = &'a WorkerCounters>) -> Self {
        let mut s = CountersSnapshot::default();
        for w in workers {
            s.msgs_in += w.msgs_in.get();
            s.msgs_out += w.msgs_out.get();
            s.bytes_in += w.bytes_in.get();
            s.bytes_out += w.bytes_out.get();
            s.handshakes += w.handshakes.get();
            s.reconnects += w.reconnects.get();
            s.replayed += w.replayed.get();
            s.duplicates_dropped += w.duplicates_dropped.get();
            s.resets += w.resets.get();
            s.remote_resets += w.remote_resets.get();
            s.transport_faults += w.transport_faults.get();
            s.frames_in += w.frames_in.get();
            s.frames_out += w.frames_out.get();
            s.acks_out += w.acks_out.get();
            s.buffer_releases += w.buffer_releases.get();
            s.accepted += w.accepted.get();
            s.connections += w.connections.get();
            s.dropped_bad_peers += w.dropped_bad_peers.get();
            s.sessions_moved += w.sessions_moved.get();
            s.sessions_refused_identity += w.sessions_refused_identity.get();
            s.sessions_expired += w.sessions_expired.get();
            s.undispatched += w.undispatched.get();
            for limit in Limit::ALL {
                let n = w.limits_tripped[limit.index()].get();
                if n > 0 {
                    *s.limits_tripped.entry(limit.name()).or_default() += n;
                }
            }
        }
        s
    }
}
