//! MonClient: one session with one monitor of a cluster, found by hunting across `mon_host`, and the
//! subscriptions a RADOS client keeps there (the OSD map).
//!
//! Owns: the hunt (as Ceph's MonClient: up to [`MonClientConfig::hunt_parallel`] monitors dialled at
//! once in random order; the first session that completes authentication wins and the others are
//! closed; when none answers within the hunt interval the next ones are tried, the interval growing by
//! [`MonClientConfig::hunt_backoff`] up to ten times), the global id the monitor gives, the osdmap
//! subscription (continuous, from the epoch after the newest one the client holds, renewed on every
//! new session) and the hand-off of every `MOSDMap` to the map's owner (the objecter).
//!
//! Invariants: at most one session is "active"; messages from any other monitor connection are
//! ignored. Authentication (none or cephx, with `want_keys` including the OSD service so that OSD
//! connections can present authorizers) is the messenger's: a session counts once its handshake is
//! done. Nothing here blocks a messenger worker: dispatch only records and notifies.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;

use crate::msgs::mon::SUBSCRIBE_ONETIME;
use crate::msgs::osd::MOSDMap;
use crate::msgs::{CephMessage, MMonMap, MMonSubscribe, MonMap};
use crate::proto::{self, Message, Policy};
use crate::stack::NetworkStack;
use crate::{AddrVec, ConnectionRef, Dispatcher, EntityType, MessengerHandle};

/// How the client finds and keeps its monitor session.
#[derive(Clone, Debug)]
pub struct MonClientConfig {
    /// The monitors (`mon_host`): each one's address vector (v2 addresses are dialled).
    pub mon_addrs: Vec<AddrVec>,
    /// Monitors dialled at once while hunting (Ceph's `mon_client_hunt_parallel`).
    pub hunt_parallel: usize,
    /// How long one round of the hunt waits for a session (Ceph's `mon_client_hunt_interval`).
    pub hunt_interval: Duration,
    /// The interval grows by this factor per fruitless round, to at most 10× (Ceph's
    /// `mon_client_hunt_interval_backoff` and `_max_multiple`).
    pub hunt_backoff: f64,
    /// Start a new monitor session this long after the current one began, so that authentication
    /// runs again and the service tickets (cephx: the OSD ticket, one hour by default in Ceph) are
    /// fresh; new OSD sessions present the new ones. None: keep a session as long as it lasts.
    pub renew_session_after: Option<Duration>,
}

impl MonClientConfig {
    pub fn new(mon_addrs: Vec<AddrVec>) -> Self {
        MonClientConfig {
            mon_addrs,
            hunt_parallel: 3,
            hunt_interval: Duration::from_secs(3),
            hunt_backoff: 1.5,
            renew_session_after: None,
        }
    }
}

/// Receives every `MOSDMap` the active monitor sends.
pub type OsdMapSink = Arc<dyn Fn(MOSDMap) + Send + Sync>;

#[derive(Default)]
struct State {
    /// The session in use, once its handshake is done.
    active: Option<ConnectionRef>,
    /// Connections opened by the current hunt round.
    hunting: Vec<ConnectionRef>,
    round_started: Option<Instant>,
    /// When the active session began.
    active_since: Option<Instant>,
    /// Fruitless rounds in a row (for the back-off).
    failed_rounds: u32,
    /// Next index into the shuffled monitor order.
    next_mon: usize,
    order: Vec<usize>,
    global_id: u64,
    /// The newest osdmap epoch the client holds (subscriptions start after it); None: not subscribed.
    osdmap_have: Option<u32>,
    monmap: Option<MonMap>,
    sessions: u64,
    last_error: Option<String>,
    stopped: bool,
}

/// The monitor session of a RADOS client over a messenger of stack `N`.
pub struct MonClient<N: NetworkStack> {
    cfg: MonClientConfig,
    msgr: OnceLock<MessengerHandle<N>>,
    osdmap_sink: OnceLock<OsdMapSink>,
    state: Mutex<State>,
    changed: Condvar,
}

impl<N: NetworkStack> MonClient<N> {
    pub fn new(cfg: MonClientConfig) -> Arc<Self> {
        let mut order: Vec<usize> = (0..cfg.mon_addrs.len()).collect();
        order.shuffle(&mut rand::rng());
        Arc::new(MonClient {
            cfg,
            msgr: OnceLock::new(),
            osdmap_sink: OnceLock::new(),
            state: Mutex::new(State {
                order,
                ..State::default()
            }),
            changed: Condvar::new(),
        })
    }

    /// Where `MOSDMap`s go (set once, before [`start`](Self::start)).
    pub fn set_osdmap_sink(&self, sink: OsdMapSink) {
        let _ = self.osdmap_sink.set(sink);
    }

    /// Begin hunting through `msgr` (the messenger this client is the dispatcher of).
    pub fn start(&self, msgr: MessengerHandle<N>) {
        let _ = self.msgr.set(msgr);
        let mut st = self.lock();
        self.new_round(&mut st);
    }

    /// Close every monitor connection; the client hunts no more.
    pub fn shutdown(&self) {
        let mut st = self.lock();
        st.stopped = true;
        for c in st.active.take().into_iter().chain(st.hunting.drain(..)) {
            c.mark_down();
        }
        self.changed.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait up to `timeout` for a session; returns the global id the monitor gave, or why not.
    pub fn wait_session(&self, timeout: Duration) -> Result<u64, String> {
        let end = Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            if st.active.is_some() {
                return Ok(st.global_id);
            }
            let now = Instant::now();
            if now >= end {
                let why = st
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "no monitor answered".into());
                return Err(format!(
                    "no monitor session within {:.1} s ({} monitor(s) tried: {why})",
                    timeout.as_secs_f64(),
                    self.cfg.mon_addrs.len()
                ));
            }
            st = self
                .changed
                .wait_timeout(st, (end - now).min(Duration::from_millis(100)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
            self.tick_locked(&mut st);
        }
    }

    /// The global id of the first session (0 before one).
    pub fn global_id(&self) -> u64 {
        self.lock().global_id
    }

    /// Sessions established so far (a reconnect makes it grow).
    pub fn sessions(&self) -> u64 {
        self.lock().sessions
    }

    /// The monitor map, once the monitor sent one.
    pub fn monmap(&self) -> Option<MonMap> {
        self.lock().monmap.clone()
    }

    /// The active session's connection.
    pub fn active(&self) -> Option<ConnectionRef> {
        self.lock().active.clone()
    }

    /// Subscribe to the OSD map after epoch `have` (0: from the newest full map), continuously; renewed
    /// on every new session from the epoch then held.
    pub fn subscribe_osdmap(&self, have: u32) {
        let mut st = self.lock();
        st.osdmap_have = Some(have);
        if let Some(c) = st.active.clone() {
            send_osdmap_sub(&c, have, false);
        }
    }

    /// The client now holds osdmap `epoch` (`sub_got`): a later session subscribes after it.
    pub fn got_osdmap(&self, epoch: u32) {
        let mut st = self.lock();
        if st.osdmap_have.is_some_and(|h| h < epoch) {
            st.osdmap_have = Some(epoch);
        }
    }

    /// Ask once for the maps after `have` (a gap was found in what arrived).
    pub fn request_osdmap(&self, have: u32) {
        if let Some(c) = self.active() {
            send_osdmap_sub(&c, have, true);
        }
    }

    /// Hunting housekeeping: start another round when this one has gone on too long. Called by the
    /// client's timer thread.
    pub fn tick(&self) {
        let mut st = self.lock();
        self.tick_locked(&mut st);
    }

    fn tick_locked(&self, st: &mut State) {
        if st.stopped {
            return;
        }
        let renew = self
            .cfg
            .renew_session_after
            .zip(st.active_since)
            .is_some_and(|(after, since)| since.elapsed() >= after);
        if renew {
            if let Some(c) = &st.active {
                tracing::info!("monc: renewing the monitor session (fresh tickets)");
                c.mark_down();
            }
        }
        if st.active.as_ref().is_some_and(ConnectionRef::is_closed) {
            // Closed without a reset reaching us (marked down): hunt as after a reset.
            tracing::info!("monc: monitor session closed; hunting");
            st.active = None;
            st.round_started = None;
            self.changed.notify_all();
        }
        if st.active.is_some() {
            return;
        }
        let interval = self.cfg.hunt_interval.mul_f64(
            self.cfg
                .hunt_backoff
                .powi(st.failed_rounds as i32)
                .min(10.0),
        );
        let expired = st.round_started.is_none_or(|t| t.elapsed() >= interval);
        let all_failed = st.hunting.iter().all(|c| c.is_closed());
        if expired || all_failed {
            if st.round_started.is_some() {
                st.failed_rounds = st.failed_rounds.saturating_add(1);
            }
            self.new_round(st);
        }
    }

    /// Close this round's connections and dial the next monitors in the shuffled order.
    fn new_round(&self, st: &mut State) {
        for c in st.hunting.drain(..) {
            c.mark_down();
        }
        st.round_started = Some(Instant::now());
        let Some(msgr) = self.msgr.get() else { return };
        let n = self
            .cfg
            .hunt_parallel
            .clamp(1, self.cfg.mon_addrs.len().max(1));
        for _ in 0..n.min(st.order.len()) {
            let i = st.order[st.next_mon % st.order.len()];
            st.next_mon = st.next_mon.wrapping_add(1);
            match msgr.connect_to(
                EntityType::Mon,
                &self.cfg.mon_addrs[i],
                Policy::lossy_client(),
            ) {
                Ok(c) => st.hunting.push(c),
                Err(e) => st.last_error = Some(format!("{}: {e}", self.cfg.mon_addrs[i])),
            }
        }
        tracing::debug!("monc: hunting, {} connection(s) open", st.hunting.len());
    }

    fn is_ours(st: &State, conn: &ConnectionRef) -> bool {
        st.active.as_ref() == Some(conn) || st.hunting.contains(conn)
    }
}

fn send_osdmap_sub(conn: &ConnectionRef, have: u32, onetime: bool) {
    let start = if have == 0 { 0 } else { u64::from(have) + 1 };
    let flags = if onetime { SUBSCRIBE_ONETIME } else { 0 };
    let sub = MMonSubscribe::default().want("osdmap", start, flags);
    if let Err(e) = conn.send(sub.to_message()) {
        tracing::warn!("monc: cannot send the osdmap subscription: {e}");
    }
}

impl<N: NetworkStack> Dispatcher for MonClient<N> {
    fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) {
        {
            let st = self.lock();
            if st.active.as_ref() != Some(conn) {
                tracing::debug!(
                    "monc: message type {} from a monitor not in use",
                    msg.msg_type()
                );
                return;
            }
        }
        match msg.msg_type() {
            t if t == MOSDMap::MSG_TYPE => match MOSDMap::from_message(&msg) {
                Ok(m) => {
                    if let Some(sink) = self.osdmap_sink.get() {
                        sink(m);
                    }
                }
                Err(e) => tracing::warn!("monc: undecodable MOSDMap: {e}"),
            },
            t if t == MMonMap::MSG_TYPE => match MMonMap::from_message(&msg) {
                Ok(m) => {
                    self.lock().monmap = Some(m.monmap);
                    self.changed.notify_all();
                }
                Err(e) => tracing::warn!("monc: undecodable MMonMap: {e}"),
            },
            t => tracing::trace!("monc: ignoring message type {t}"),
        }
    }

    fn ms_handle_connect(&self, conn: &ConnectionRef) {
        let mut st = self.lock();
        if st.stopped || st.active.is_some() || !st.hunting.contains(conn) {
            return;
        }
        // The first monitor to finish the handshake wins; the rest of the round is closed.
        for c in st.hunting.drain(..) {
            if &c != conn {
                c.mark_down();
            }
        }
        let peer = conn.peer();
        if st.global_id == 0 {
            st.global_id = peer.global_id;
        }
        st.active = Some(conn.clone());
        st.failed_rounds = 0;
        st.sessions += 1;
        st.active_since = Some(Instant::now());
        tracing::info!(
            "monc: session with {} (global_id {})",
            peer.addrs,
            peer.global_id
        );
        let sub = match st.osdmap_have {
            Some(have) => MMonSubscribe::default().want("monmap", 0, 0).want(
                "osdmap",
                if have == 0 { 0 } else { u64::from(have) + 1 },
                0,
            ),
            None => MMonSubscribe::default().want("monmap", 0, 0),
        };
        if let Err(e) = conn.send(sub.to_message()) {
            tracing::warn!("monc: cannot subscribe: {e}");
        }
        self.changed.notify_all();
    }

    fn ms_handle_reset(&self, conn: &ConnectionRef, why: &proto::Error) {
        let mut st = self.lock();
        if !Self::is_ours(&st, conn) {
            return;
        }
        st.last_error = Some(why.to_string());
        if st.active.as_ref() == Some(conn) {
            tracing::info!("monc: monitor session lost ({why}); hunting");
            st.active = None;
            if !st.stopped {
                self.new_round(&mut st);
            }
        }
        self.changed.notify_all();
    }

    fn ms_handle_connect_failed(&self, conn: &ConnectionRef, reason: &proto::TransportError) {
        let mut st = self.lock();
        if Self::is_ours(&st, conn) {
            st.last_error = Some(format!("{}: {reason}", conn.peer().addrs));
            self.changed.notify_all();
        }
    }
}
