//! The Objecter: object operations sent to the right OSD and seen through to an answer.
//!
//! Owns: the newest [`OsdMap`] (full maps and incrementals from the monitor or from OSDs, applied in
//! epoch order), the operations in flight by tid, and one lossy session per OSD (Ceph's client↔OSD
//! policy). An op is targeted through the map (object name → raw PG → PG → up/acting → acting
//! primary → its address) and sent as an `MOSDOp` (v8) whose header tid the `MOSDOpReply` echoes.
//!
//! Resends, as Ceph's Objecter does them: when a new map changes an op's target (another primary, or
//! another acting/up set, PG count or pool size: a new interval, where OSDs drop what was sent
//! before), when the OSD answers `-EAGAIN`, and when the session to the OSD resets (every op on it goes
//! out again on a new session, with the RETRY flag and its attempt number). An op whose PG has no
//! primary waits for a map that gives it one. Every op has a deadline ([`ObjecterConfig::op_timeout`]),
//! and at most [`ObjecterConfig::max_in_flight`] ops are in flight (submitting waits for room). While
//! the map says the cluster is paused for reads or writes (`ceph osd pause`), such ops are held back,
//! and so are writes to a full pool; their timeout error says why they waited.
//!
//! Invariants: state is behind one mutex; nothing is sent, and no completion runs, while it is held
//! (both are collected in an `Outbox` and flushed after unlocking), so a completion may submit again
//! and a full send queue never blocks a messenger worker that holds replies. A reply counts only on
//! the connection its op was last sent on; a late reply from an earlier attempt is dropped. Maps whose
//! epoch is not newer than the one held are ignored and said so ([`MapUpdate::Stale`]).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::monc::MonClient;
use super::osdmap::{OsdMap, PgId};
use crate::msgs::osd::{
    flag, op, MOSDMap, MOSDOpReply, MOSDOpView, ObjectLocator, OsdOp, PgT, ReqId, SpgT, NOSNAP,
};
use crate::msgs::CephMessage;
use crate::proto::types::UTime;
use crate::proto::{self, Message, Policy};
use crate::stack::NetworkStack;
use crate::{AddrVec, ConnId, ConnectionRef, Dispatcher, EntityType, MessengerHandle};

/// `CEPH_OSDMAP_PAUSERD` / `CEPH_OSDMAP_PAUSEWR`: the cluster holds client reads / writes
/// (`ceph osd pause`); the client keeps them until a map lifts the flag.
pub const OSDMAP_PAUSERD: u32 = 1 << 2;
pub const OSDMAP_PAUSEWR: u32 = 1 << 3;

/// `pg_pool_t::FLAG_FULL`: writes to the pool wait (as Ceph's Objecter holds them) until it is not.
pub const POOL_FLAG_FULL: u64 = 1 << 1;

/// `ENOENT`, `EAGAIN` as OSDs return them (negated).
pub const ENOENT: i32 = 2;
pub const EAGAIN: i32 = 11;

/// Why an operation did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RadosError {
    #[error("pool {0} does not exist")]
    PoolNotFound(String),
    #[error("object {oid:?} does not exist (pool {pool})")]
    ObjectNotFound { pool: u64, oid: String },
    #[error("{op} on {oid:?} timed out after {after:?} ({detail})")]
    TimedOut {
        op: String,
        oid: String,
        after: Duration,
        detail: String,
    },
    #[error("osd.{osd} refused {op} on {oid:?}: {} (errno {errno})", errno_name(*.errno))]
    Refused {
        osd: i32,
        op: String,
        oid: String,
        errno: i32,
    },
    #[error("monitor: {0}")]
    Monitor(String),
    #[error("osd map: {0}")]
    Map(String),
    #[error("malformed reply: {0}")]
    Protocol(String),
    #[error("messenger: {0}")]
    Messenger(String),
    #[error("the client is shut down")]
    Shutdown,
}

/// A short name for an errno an OSD returns.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        1 => "EPERM (operation not permitted)",
        2 => "ENOENT (no such object)",
        5 => "EIO (I/O error)",
        11 => "EAGAIN (try again)",
        13 => "EACCES (permission denied)",
        17 => "EEXIST (exists)",
        22 => "EINVAL (invalid argument)",
        27 => "EFBIG (too large)",
        28 => "ENOSPC (no space)",
        34 => "ERANGE (out of range)",
        36 => "ENAMETOOLONG (name too long)",
        61 => "ENODATA (no data)",
        95 => "EOPNOTSUPP (operation not supported)",
        122 => "EDQUOT (quota exceeded)",
        125 => "ECANCELED (canceled)",
        _ => "error",
    }
}

/// Tunables of the objecter.
#[derive(Clone, Debug)]
pub struct ObjecterConfig {
    /// How long an op may take from submission to answer, resends included.
    pub op_timeout: Duration,
    /// Ops in flight at once (Ceph's `objecter_inflight_ops`); submitting waits for room.
    pub max_in_flight: usize,
    /// Feature bits written into each `MOSDOp` (the client's supported features).
    pub features: u64,
    /// How long to wait before dialling an OSD again after its session failed.
    pub reconnect_delay: Duration,
}

impl Default for ObjecterConfig {
    fn default() -> Self {
        ObjecterConfig {
            op_timeout: Duration::from_secs(30),
            max_in_flight: 1024,
            features: crate::proto::Config::new(
                EntityType::Client,
                crate::AuthEntityName::new(crate::entity_type::CLIENT, "admin"),
            )
            .features_supported,
            reconnect_delay: Duration::from_millis(100),
        }
    }
}

/// One request: ops on an object (or, for a PG op such as `pgnls`, on placement group `pg` of the pool).
#[derive(Clone, Debug)]
pub struct OpRequest {
    pub pool: u64,
    pub oid: String,
    pub nspace: String,
    pub key: String,
    /// For PG ops: the PG's seed (the op then has no object).
    pub pg: Option<u32>,
    pub ops: Vec<OsdOp>,
    /// Overrides [`ObjecterConfig::op_timeout`].
    pub timeout: Option<Duration>,
}

impl OpRequest {
    pub fn new(pool: u64, oid: &str, ops: Vec<OsdOp>) -> Self {
        OpRequest {
            pool,
            oid: oid.to_owned(),
            nspace: String::new(),
            key: String::new(),
            pg: None,
            ops,
            timeout: None,
        }
    }

    fn is_write(&self) -> bool {
        self.ops.iter().any(|o| op::is_write(o.code))
    }

    fn op_names(&self) -> String {
        let names: Vec<&str> = self.ops.iter().map(|o| op::name(o.code)).collect();
        names.join("+")
    }
}

/// A successful answer: each op with its return value and output.
#[derive(Clone, Debug)]
pub struct OpReply {
    pub result: i32,
    pub ops: Vec<OsdOp>,
    pub user_version: u64,
    pub map_epoch: u32,
    /// The OSD that answered.
    pub osd: i32,
    /// Sends it took (1 without resends).
    pub attempts: u32,
}

pub type OpResult = Result<OpReply, RadosError>;
/// Runs once when an op completes, outside the objecter's lock, usually on a messenger worker: it may
/// submit more ops but must not wait for one (that worker delivers the replies).
pub type OnComplete = Box<dyn FnOnce(OpResult) + Send>;

/// What an `MOSDMap` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapUpdate {
    /// The map moved from epoch `from` to `to`.
    Advanced { from: u32, to: u32 },
    /// Nothing newer than the epoch held: ignored.
    Stale { have: u32, got: u32 },
    /// The message skips epochs we lack; the missing ones were asked for.
    Gap { have: u32, first: u32 },
}

/// Where an op went: enough to tell whether a new map changes it (a new interval).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    pg: PgId,
    hash: u32,
    primary: i32,
    acting: Vec<i32>,
    up: Vec<i32>,
    up_primary: i32,
    pg_num: u32,
    size: u8,
    min_size: u8,
}

struct Inflight {
    req: OpRequest,
    deadline: Instant,
    timeout: Duration,
    attempts: u32,
    target: Option<Target>,
    /// The connection it was last sent on; None: waiting to be sent.
    conn: Option<ConnId>,
    done: Option<OnComplete>,
    why_waiting: String,
}

struct Session {
    conn: ConnectionRef,
    addrs: AddrVec,
}

#[derive(Default)]
struct State {
    map: Option<OsdMap>,
    ops: HashMap<u64, Inflight>,
    sessions: HashMap<i32, Session>,
    by_conn: HashMap<ConnId, i32>,
    /// OSDs whose session failed recently: not dialled again before this.
    backoff: HashMap<i32, Instant>,
    next_tid: u64,
    stopped: bool,
}

/// Messages and completions gathered under the lock, acted on after it.
#[derive(Default)]
pub(crate) struct Outbox {
    sends: Vec<(ConnectionRef, Message)>,
    done: Vec<(OnComplete, OpResult)>,
}

impl Outbox {
    fn flush(self) {
        for (conn, m) in self.sends {
            if let Err(e) = conn.send(m) {
                // The reset that follows puts the op back in line.
                tracing::debug!("objecter: send failed: {e}");
            }
        }
        for (f, r) in self.done {
            f(r);
        }
    }
}

/// Object I/O over a messenger of stack `N` whose dispatcher it is.
pub struct Objecter<N: NetworkStack> {
    cfg: ObjecterConfig,
    msgr: OnceLock<MessengerHandle<N>>,
    monc: Arc<MonClient<N>>,
    state: Mutex<State>,
    /// Signalled when the map changes or an op leaves (room in flight).
    changed: Condvar,
}

impl<N: NetworkStack> Objecter<N> {
    pub fn new(cfg: ObjecterConfig, monc: Arc<MonClient<N>>) -> Arc<Self> {
        Arc::new(Objecter {
            cfg,
            msgr: OnceLock::new(),
            monc,
            state: Mutex::new(State {
                next_tid: 1,
                ..State::default()
            }),
            changed: Condvar::new(),
        })
    }

    /// The messenger OSD sessions go through (set once, after it started).
    pub fn set_messenger(&self, msgr: MessengerHandle<N>) {
        let _ = self.msgr.set(msgr);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run `f` on the current map (None before the first one).
    pub fn with_map<R>(&self, f: impl FnOnce(Option<&OsdMap>) -> R) -> R {
        f(self.lock().map.as_ref())
    }

    /// The epoch held (0 before the first map).
    pub fn epoch(&self) -> u32 {
        self.lock().map.as_ref().map_or(0, OsdMap::epoch)
    }

    /// Wait up to `timeout` for a map of at least epoch `min` (1: any map).
    pub fn wait_for_epoch(&self, min: u32, timeout: Duration) -> Result<u32, RadosError> {
        let end = Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            let have = st.map.as_ref().map_or(0, OsdMap::epoch);
            if have >= min {
                return Ok(have);
            }
            let now = Instant::now();
            if now >= end {
                return Err(RadosError::Map(format!(
                    "no osd map of epoch {min} or newer within {:.1} s (have {have})",
                    timeout.as_secs_f64()
                )));
            }
            st = self
                .changed
                .wait_timeout(st, end - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The open OSD sessions: OSD id and connection.
    pub fn osd_sessions(&self) -> Vec<(i32, ConnectionRef)> {
        let st = self.lock();
        let mut v: Vec<(i32, ConnectionRef)> = st
            .sessions
            .iter()
            .map(|(osd, s)| (*osd, s.conn.clone()))
            .collect();
        v.sort_by_key(|(osd, _)| *osd);
        v
    }

    /// Ops in flight now.
    pub fn in_flight(&self) -> usize {
        self.lock().ops.len()
    }

    /// Submit `req`; `done` runs once with its outcome (from a messenger worker, the timer thread or,
    /// for an immediate failure, this thread). Waits while [`ObjecterConfig::max_in_flight`] ops are
    /// in flight. Returns the tid.
    pub fn submit(&self, req: OpRequest, done: OnComplete) -> u64 {
        let mut out = Outbox::default();
        let tid;
        {
            let mut st = self.lock();
            while !st.stopped && st.ops.len() >= self.cfg.max_in_flight.max(1) {
                st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            tid = st.next_tid;
            st.next_tid += 1;
            if st.stopped {
                out.done.push((done, Err(RadosError::Shutdown)));
            } else {
                let timeout = req.timeout.unwrap_or(self.cfg.op_timeout);
                st.ops.insert(
                    tid,
                    Inflight {
                        req,
                        deadline: Instant::now() + timeout,
                        timeout,
                        attempts: 0,
                        target: None,
                        conn: None,
                        done: Some(done),
                        why_waiting: "no osd map yet".into(),
                    },
                );
                self.send_op(&mut st, tid, &mut out);
            }
        }
        out.flush();
        tid
    }

    /// Submit and wait for the outcome.
    pub fn run(&self, req: OpRequest) -> OpResult {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.submit(
            req,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        // Every op completes (answer, error, timeout or shutdown); the channel only closes if the
        // objecter itself is gone.
        rx.recv().unwrap_or(Err(RadosError::Shutdown))
    }

    /// Fail every op and close every OSD session.
    pub fn shutdown(&self) {
        let mut out = Outbox::default();
        {
            let mut st = self.lock();
            st.stopped = true;
            for (_, mut o) in st.ops.drain() {
                if let Some(f) = o.done.take() {
                    out.done.push((f, Err(RadosError::Shutdown)));
                }
            }
            for (_, s) in st.sessions.drain() {
                s.conn.mark_down();
            }
            st.by_conn.clear();
        }
        self.changed.notify_all();
        out.flush();
    }

    /// Timeouts, and ops waiting to be (re)sent. Called by the client's timer thread.
    pub fn tick(&self) {
        // Sessions that closed without a reset reaching us (marked down) fail like a reset.
        let closed: Vec<ConnectionRef> = self
            .lock()
            .sessions
            .values()
            .filter(|s| s.conn.is_closed())
            .map(|s| s.conn.clone())
            .collect();
        for conn in closed {
            self.session_failed(&conn, "the session closed");
        }
        let mut out = Outbox::default();
        {
            let mut st = self.lock();
            let now = Instant::now();
            let expired: Vec<u64> = st
                .ops
                .iter()
                .filter(|(_, o)| o.deadline <= now)
                .map(|(t, _)| *t)
                .collect();
            for tid in expired {
                if let Some(o) = st.ops.get(&tid) {
                    let err = RadosError::TimedOut {
                        op: o.req.op_names(),
                        oid: o.req.oid.clone(),
                        after: o.timeout,
                        detail: if o.conn.is_some() {
                            format!("sent {} time(s), no answer", o.attempts)
                        } else {
                            o.why_waiting.clone()
                        },
                    };
                    self.complete(&mut st, tid, Err(err), &mut out);
                }
            }
            let waiting: Vec<u64> = st
                .ops
                .iter()
                .filter(|(_, o)| o.conn.is_none())
                .map(|(t, _)| *t)
                .collect();
            for tid in waiting {
                self.send_op(&mut st, tid, &mut out);
            }
        }
        out.flush();
    }

    fn complete(&self, st: &mut State, tid: u64, r: OpResult, out: &mut Outbox) {
        if let Some(mut o) = st.ops.remove(&tid) {
            if let Some(f) = o.done.take() {
                out.done.push((f, r));
            }
            self.changed.notify_all();
        }
    }

    /// Where `req` goes under `map`: Ok(None) when its PG has no primary now.
    fn calc_target(map: &OsdMap, req: &OpRequest) -> Result<Option<Target>, RadosError> {
        let pool = map
            .pool(req.pool)
            .ok_or_else(|| RadosError::PoolNotFound(format!("id {}", req.pool)))?;
        let raw = match req.pg {
            Some(seed) => PgId {
                pool: req.pool,
                seed,
            },
            None => map
                .object_to_raw_pg(req.pool, &req.oid, &req.nspace, &req.key)
                .ok_or_else(|| RadosError::PoolNotFound(format!("id {}", req.pool)))?,
        };
        let pg = map.raw_pg_to_pg(raw);
        let ua = map.pg_to_up_acting(pg);
        if ua.acting_primary < 0 {
            return Ok(None);
        }
        Ok(Some(Target {
            pg,
            hash: raw.seed,
            primary: ua.acting_primary,
            acting: ua.acting,
            up: ua.up,
            up_primary: ua.up_primary,
            pg_num: pool.pg_num,
            size: pool.size,
            min_size: pool.min_size,
        }))
    }

    /// (Re)target op `tid` with the current map and send it, or leave it waiting with the reason.
    fn send_op(&self, st: &mut State, tid: u64, out: &mut Outbox) {
        let Some(map) = st.map.as_ref() else { return };
        let epoch = map.epoch();
        let Some(o) = st.ops.get(&tid) else { return };
        let pause = if o.req.is_write() {
            OSDMAP_PAUSEWR
        } else {
            OSDMAP_PAUSERD
        };
        let full = o.req.is_write()
            && map
                .pool(o.req.pool)
                .is_some_and(|p| p.has_flag(POOL_FLAG_FULL));
        if map.flags & pause != 0 || full {
            let o = st.ops.get_mut(&tid).expect("op present");
            o.conn = None;
            o.why_waiting = if full {
                format!("pool {} is full (osd map epoch {epoch})", o.req.pool)
            } else {
                format!("the cluster is paused (osd map epoch {epoch})")
            };
            return;
        }
        let target = match Self::calc_target(map, &o.req) {
            Ok(Some(t)) => t,
            Ok(None) => {
                let o = st.ops.get_mut(&tid).expect("op present");
                o.target = None;
                o.conn = None;
                o.why_waiting = format!("its PG has no primary in osd map epoch {epoch}");
                return;
            }
            Err(e) => return self.complete(st, tid, Err(e), out),
        };
        let osd = target.primary;
        let Some(conn) = self.session(st, osd) else {
            let o = st.ops.get_mut(&tid).expect("op present");
            o.target = Some(target);
            o.conn = None;
            o.why_waiting = format!("osd.{osd} (its primary) unreachable");
            return;
        };
        let o = st.ops.get_mut(&tid).expect("op present");
        let mut flags = flag::KNOWN_REDIR;
        let mut mtime = UTime::default();
        if o.req.is_write() {
            flags |= flag::ONDISK | flag::WRITE;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            mtime = UTime::new(now.as_secs() as u32, now.subsec_nanos());
        } else {
            flags |= flag::ACK | flag::READ;
        }
        if o.req.pg.is_some() {
            flags |= flag::PGOP;
        }
        if o.attempts > 0 {
            flags |= flag::RETRY;
        }
        let mut oloc = ObjectLocator::new(o.req.pool);
        oloc.key.clone_from(&o.req.key);
        oloc.nspace.clone_from(&o.req.nspace);
        let msg = MOSDOpView {
            pgid: SpgT::new(PgT {
                pool: target.pg.pool,
                seed: target.pg.seed,
            }),
            hash: target.hash,
            map_epoch: epoch,
            flags,
            reqid: ReqId::default(),
            trace: [0; 3],
            client_inc: 0,
            mtime,
            oloc: &oloc,
            oid: &o.req.oid,
            ops: &o.req.ops,
            snapid: NOSNAP,
            snap_seq: 0,
            snaps: &[],
            retry_attempt: o.attempts as i32,
            features: self.cfg.features,
        }
        .to_message()
        .with_tid(tid);
        o.attempts += 1;
        o.target = Some(target);
        o.conn = Some(conn.id());
        out.sends.push((conn, msg));
    }

    /// The session to `osd`, opened if need be; None if the map has no address for it, it is down,
    /// or it failed a moment ago.
    fn session(&self, st: &mut State, osd: i32) -> Option<ConnectionRef> {
        let map = st.map.as_ref()?;
        if !map.is_up(osd) {
            return None;
        }
        let addrs = map.osd_addrs(osd)?.clone();
        if let Some(s) = st.sessions.get(&osd) {
            if s.addrs == addrs && !s.conn.is_closed() {
                return Some(s.conn.clone());
            }
            let old = st.sessions.remove(&osd).expect("session present");
            st.by_conn.remove(&old.conn.id());
            old.conn.mark_down();
        }
        if st.backoff.get(&osd).is_some_and(|t| *t > Instant::now()) {
            return None;
        }
        let msgr = self.msgr.get()?;
        match msgr.connect_to(EntityType::Osd, &addrs, Policy::lossy_client()) {
            Ok(conn) => {
                st.by_conn.insert(conn.id(), osd);
                st.sessions.insert(
                    osd,
                    Session {
                        conn: conn.clone(),
                        addrs,
                    },
                );
                Some(conn)
            }
            Err(e) => {
                tracing::warn!("objecter: cannot dial osd.{osd} at {addrs}: {e}");
                None
            }
        }
    }

    /// Apply an `MOSDMap` (from the monitor, an OSD, or a test); resend what the new map moved.
    pub fn handle_osd_map(&self, m: &MOSDMap) -> Result<MapUpdate, RadosError> {
        let mut out = Outbox::default();
        let r = {
            let mut st = self.lock();
            self.apply_map(&mut st, m, &mut out)
        };
        out.flush();
        if let Ok(MapUpdate::Advanced { to, .. }) = &r {
            self.monc.got_osdmap(*to);
        }
        r
    }

    fn apply_map(
        &self,
        st: &mut State,
        m: &MOSDMap,
        out: &mut Outbox,
    ) -> Result<MapUpdate, RadosError> {
        let have = st.map.as_ref().map_or(0, OsdMap::epoch);
        let last = m.last_epoch();
        if let Some(map) = &st.map {
            if map.fsid() != m.fsid {
                return Err(RadosError::Map(format!(
                    "map for cluster {} but ours is {}: ignored",
                    m.fsid,
                    map.fsid()
                )));
            }
        }
        if last <= have {
            tracing::info!("objecter: ignoring osd map epochs up to {last}: we have {have}");
            return Ok(MapUpdate::Stale { have, got: last });
        }
        if st.map.is_none() {
            let Some((&e, full)) = m.maps.iter().next_back() else {
                self.monc.request_osdmap(0);
                let first = m.incremental_maps.keys().next().copied().unwrap_or(0);
                return Ok(MapUpdate::Gap { have, first });
            };
            let map = OsdMap::decode(full)
                .map_err(|err| RadosError::Map(format!("full map epoch {e}: {err}")))?;
            st.map = Some(map);
        }
        let map = st.map.as_mut().expect("map present");
        let mut epoch = map.epoch();
        let mut gap = None;
        while epoch < last {
            let next = epoch + 1;
            if let Some(inc) = m.incremental_maps.get(&next) {
                if let Err(err) = map.apply_incremental(inc) {
                    tracing::warn!("objecter: incremental osd map {next}: {err}; asking again");
                    gap = Some(next);
                    break;
                }
            } else if let Some(full) = m.maps.get(&next) {
                match OsdMap::decode(full) {
                    Ok(full) => *map = full,
                    Err(err) => {
                        tracing::warn!("objecter: full osd map {next}: {err}");
                        gap = Some(next);
                        break;
                    }
                }
            } else {
                gap = Some(next);
                break;
            }
            epoch = map.epoch();
        }
        if let Some(first) = gap {
            self.monc.request_osdmap(epoch);
            if epoch == have {
                return Ok(MapUpdate::Gap { have, first });
            }
        }
        tracing::debug!("objecter: osd map epoch {have} -> {epoch}");
        self.scan_ops(st, out);
        self.changed.notify_all();
        Ok(MapUpdate::Advanced {
            from: have,
            to: epoch,
        })
    }

    /// After a map change: close sessions to OSDs now down or moved; resend ops whose target moved.
    fn scan_ops(&self, st: &mut State, out: &mut Outbox) {
        let Some(map) = st.map.as_ref() else { return };
        let stale: Vec<i32> = st
            .sessions
            .iter()
            .filter(|(osd, s)| !map.is_up(**osd) || map.osd_addrs(**osd) != Some(&s.addrs))
            .map(|(osd, _)| *osd)
            .collect();
        for osd in stale {
            if let Some(s) = st.sessions.remove(&osd) {
                st.by_conn.remove(&s.conn.id());
                s.conn.mark_down();
                for o in st.ops.values_mut() {
                    if o.conn == Some(s.conn.id()) {
                        o.conn = None;
                    }
                }
            }
        }
        let mut resend = Vec::new();
        let mut failed = Vec::new();
        for (tid, o) in &st.ops {
            match Self::calc_target(map, &o.req) {
                Ok(t) => {
                    if o.conn.is_none() || t != o.target {
                        resend.push(*tid);
                    }
                }
                Err(e) => failed.push((*tid, e)),
            }
        }
        for (tid, e) in failed {
            self.complete(st, tid, Err(e), out);
        }
        for tid in resend {
            self.send_op(st, tid, out);
        }
    }

    fn handle_reply(&self, conn: &ConnectionRef, msg: &Message) {
        let tid = msg.header.tid;
        let reply = match MOSDOpReply::from_message(msg) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("objecter: undecodable MOSDOpReply tid {tid}: {e}");
                return;
            }
        };
        let mut out = Outbox::default();
        {
            let mut st = self.lock();
            let Some(o) = st.ops.get_mut(&tid) else {
                tracing::debug!("objecter: reply to tid {tid}, which is no longer in flight");
                return;
            };
            if o.conn != Some(conn.id()) {
                tracing::debug!("objecter: reply to tid {tid} from an earlier attempt: dropped");
                return;
            }
            let osd = o.target.as_ref().map_or(-1, |t| t.primary);
            if reply.result == -EAGAIN {
                o.conn = None;
                o.why_waiting = format!("osd.{osd} answered EAGAIN");
                self.send_op(&mut st, tid, &mut out);
            } else if reply.redirect.is_some() {
                let err = RadosError::Refused {
                    osd,
                    op: o.req.op_names(),
                    oid: o.req.oid.clone(),
                    errno: 95,
                };
                self.complete(&mut st, tid, Err(err), &mut out);
            } else {
                let r = self.outcome(o, osd, reply);
                self.complete(&mut st, tid, r, &mut out);
            }
        }
        out.flush();
    }

    fn outcome(&self, o: &Inflight, osd: i32, reply: MOSDOpReply) -> OpResult {
        if reply.ops.len() != o.req.ops.len() {
            return Err(RadosError::Protocol(format!(
                "osd.{osd} answered {} ops to {} sent",
                reply.ops.len(),
                o.req.ops.len()
            )));
        }
        if reply.result < 0 {
            let errno = reply.result.checked_neg().unwrap_or(i32::MAX);
            if errno == ENOENT && o.req.pg.is_none() {
                return Err(RadosError::ObjectNotFound {
                    pool: o.req.pool,
                    oid: o.req.oid.clone(),
                });
            }
            return Err(RadosError::Refused {
                osd,
                op: o.req.op_names(),
                oid: o.req.oid.clone(),
                errno,
            });
        }
        Ok(OpReply {
            result: reply.result,
            ops: reply.ops,
            user_version: reply.user_version,
            map_epoch: reply.map_epoch,
            osd,
            attempts: o.attempts,
        })
    }

    /// The session to an OSD failed: its ops go out again (after a short pause for that OSD).
    fn session_failed(&self, conn: &ConnectionRef, why: &str) {
        let mut out = Outbox::default();
        {
            let mut st = self.lock();
            let Some(osd) = st.by_conn.remove(&conn.id()) else {
                return;
            };
            if st.sessions.get(&osd).is_some_and(|s| &s.conn == conn) {
                st.sessions.remove(&osd);
            }
            tracing::info!("objecter: session to osd.{osd} reset ({why}); resending its ops");
            let now = Instant::now();
            // The first failure resends at once on a new session; an OSD failing again within the
            // back-off is retried by the timer once it is over, so a dead OSD is not dialled in a loop.
            let recent = st.backoff.get(&osd).is_some_and(|t| *t > now);
            let mut again = Vec::new();
            for (tid, o) in st.ops.iter_mut() {
                if o.conn == Some(conn.id()) {
                    o.conn = None;
                    o.why_waiting = format!("session to osd.{osd} reset: {why}");
                    again.push(*tid);
                }
            }
            if !recent {
                for tid in again {
                    self.send_op(&mut st, tid, &mut out);
                }
            }
            st.backoff.insert(osd, now + self.cfg.reconnect_delay);
        }
        out.flush();
    }
}

impl<N: NetworkStack> Dispatcher for Objecter<N> {
    fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) {
        match msg.msg_type() {
            t if t == MOSDOpReply::MSG_TYPE => self.handle_reply(conn, &msg),
            t if t == MOSDMap::MSG_TYPE => match MOSDMap::from_message(&msg) {
                Ok(m) => {
                    if let Err(e) = self.handle_osd_map(&m) {
                        tracing::warn!("objecter: osd map from an OSD: {e}");
                    }
                }
                Err(e) => tracing::warn!("objecter: undecodable MOSDMap from an OSD: {e}"),
            },
            t => tracing::debug!("objecter: ignoring message type {t} from an OSD"),
        }
    }

    fn ms_handle_reset(&self, conn: &ConnectionRef, why: &proto::Error) {
        self.session_failed(conn, &why.to_string());
    }

    fn ms_handle_remote_reset(&self, conn: &ConnectionRef) {
        self.session_failed(conn, "the OSD reset the session");
    }

    fn ms_handle_connect_failed(&self, conn: &ConnectionRef, reason: &proto::TransportError) {
        self.session_failed(conn, &reason.to_string());
    }
}

/// Data of a successful read (the op's output, shared with the received message).
pub fn read_data(reply: &OpReply) -> Bytes {
    reply
        .ops
        .first()
        .map(|o| o.payload.clone())
        .unwrap_or_default()
}
