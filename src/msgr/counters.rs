//! Perf counters: one set per worker (only that worker writes it, so no cache line is shared on the data
//! path), summed into a [`CountersSnapshot`] on demand for `msgr counters` and tests.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::proto::{ConnStats, Limit};

use crate::throttle::ThrottleStats;

/// Counters of one worker.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    pub msgs_in: AtomicU64,
    pub msgs_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub handshakes: AtomicU64,
    pub reconnects: AtomicU64,
    pub replayed: AtomicU64,
    pub duplicates_dropped: AtomicU64,
    pub resets: AtomicU64,
    pub remote_resets: AtomicU64,
    pub transport_faults: AtomicU64,
    pub accepted: AtomicU64,
    pub connections: AtomicU64,
    pub dropped_bad_peers: AtomicU64,
    /// Sessions moved to this worker because a reconnect for them arrived here.
    pub sessions_moved: AtomicU64,
    /// Session requests refused because the requester is not the entity holding the session.
    pub sessions_refused_identity: AtomicU64,
    /// Server-policy sessions ended after their time in Standby, or evicted for `max_sessions`.
    pub sessions_expired: AtomicU64,
    /// Messages no dispatcher in the chain took (dropped).
    pub undispatched: AtomicU64,
    /// Connections ended because the peer tripped a resource limit, by [`Limit::index`].
    pub limits_tripped: [AtomicU64; Limit::ALL.len()],
}

impl WorkerCounters {
    /// Count a connection ended by `limit`.
    pub fn trip(&self, limit: Limit) {
        self.limits_tripped[limit.index()].fetch_add(1, Relaxed);
    }

    /// Add what a connection did since `last` (its previous stats) and remember `now`.
    pub fn add_conn_delta(&self, last: &mut ConnStats, now: ConnStats) {
        // Called on every pump: most turns change nothing, and then no atomic is touched.
        if now == *last {
            return;
        }
        let d = |a: u64, b: u64| a.saturating_sub(b);
        self.msgs_in
            .fetch_add(d(now.msgs_in, last.msgs_in), Relaxed);
        self.msgs_out
            .fetch_add(d(now.msgs_out, last.msgs_out), Relaxed);
        self.bytes_in
            .fetch_add(d(now.bytes_in, last.bytes_in), Relaxed);
        self.bytes_out
            .fetch_add(d(now.bytes_out, last.bytes_out), Relaxed);
        self.handshakes
            .fetch_add(d(now.handshakes, last.handshakes), Relaxed);
        self.reconnects
            .fetch_add(d(now.reconnects, last.reconnects), Relaxed);
        self.replayed
            .fetch_add(d(now.replayed, last.replayed), Relaxed);
        self.duplicates_dropped
            .fetch_add(d(now.duplicates_dropped, last.duplicates_dropped), Relaxed);
        self.remote_resets
            .fetch_add(d(now.remote_resets, last.remote_resets), Relaxed);
        self.transport_faults
            .fetch_add(d(now.faults, last.faults), Relaxed);
        if now.standby_expired != last.standby_expired {
            self.sessions_expired
                .fetch_add(d(now.standby_expired, last.standby_expired), Relaxed);
        }
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
            s.msgs_in += w.msgs_in.load(Relaxed);
            s.msgs_out += w.msgs_out.load(Relaxed);
            s.bytes_in += w.bytes_in.load(Relaxed);
            s.bytes_out += w.bytes_out.load(Relaxed);
            s.handshakes += w.handshakes.load(Relaxed);
            s.reconnects += w.reconnects.load(Relaxed);
            s.replayed += w.replayed.load(Relaxed);
            s.duplicates_dropped += w.duplicates_dropped.load(Relaxed);
            s.resets += w.resets.load(Relaxed);
            s.remote_resets += w.remote_resets.load(Relaxed);
            s.transport_faults += w.transport_faults.load(Relaxed);
            s.accepted += w.accepted.load(Relaxed);
            s.connections += w.connections.load(Relaxed);
            s.dropped_bad_peers += w.dropped_bad_peers.load(Relaxed);
            s.sessions_moved += w.sessions_moved.load(Relaxed);
            s.sessions_refused_identity += w.sessions_refused_identity.load(Relaxed);
            s.sessions_expired += w.sessions_expired.load(Relaxed);
            s.undispatched += w.undispatched.load(Relaxed);
            for limit in Limit::ALL {
                let n = w.limits_tripped[limit.index()].load(Relaxed);
                if n > 0 {
                    *s.limits_tripped.entry(limit.name()).or_default() += n;
                }
            }
        }
        s
    }
}
