//! [`Rados`]: a RADOS client (monitor session + objecter) and the object operations of `msgr rados`.
//!
//! Owns: two messengers over the same kind of network stack — one for the monitor session (our entity
//! number is not known before it), one for the OSD sessions, made once the monitor has given the
//! global id, which OSDs see as our entity number (`client.<global_id>`) and use in request ids —, the
//! timer thread that drives hunting, resends and op timeouts, and the convenience operations (put,
//! get, stat, remove, list, omap) built on [`Objecter::run`].
//!
//! Invariants: authentication is shared: with cephx the monitor session's tickets (the client asks for
//! OSD tickets too) let the OSD messenger present authorizers. Dropping a [`Rados`] fails what is in
//! flight and stops both messengers and the timer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::monc::{MonClient, MonClientConfig};
use super::objecter::{read_data, ObjecterConfig, OnComplete, OpReply, OpRequest, RadosError};
pub use super::objecter::{MapUpdate, Objecter};
use super::osdmap::OsdMap;
use crate::msgs::osd::{decode_omap_vals, decode_stat, HObject, OsdOp, PgNlsResponse};
use crate::proto::auth::{ClientAuth, ConModes};
use crate::proto::types::{AuthEntityName, UTime};
use crate::stack::NetworkStack;
use crate::{entity_type, AddrVec, EntityType, Messenger, MessengerConfig};

/// How to reach and talk to a cluster.
#[derive(Clone, Debug)]
pub struct RadosConfig {
    pub mon: MonClientConfig,
    /// Our name (`client.admin`).
    pub name: AuthEntityName,
    /// `ClientAuth::none()` or cephx (with OSD tickets wanted: the default).
    pub auth: ClientAuth,
    /// Connection modes offered (crc, secure).
    pub con_modes: ConModes,
    /// How long [`Rados::connect`] waits for a monitor session and the first OSD map.
    pub connect_timeout: Duration,
    pub objecter: ObjecterConfig,
    /// Worker threads of each messenger.
    pub workers: usize,
    /// Largest message accepted (a 16 MiB read plus headers fits the default).
    pub max_frame_len: usize,
}

impl RadosConfig {
    pub fn new(mon_addrs: Vec<AddrVec>) -> Self {
        let mut mon = MonClientConfig::new(mon_addrs);
        // Well inside cephx's default ticket lifetime (an hour).
        mon.renew_session_after = Some(Duration::from_secs(30 * 60));
        RadosConfig {
            mon,
            name: AuthEntityName::new(entity_type::CLIENT, "admin"),
            auth: ClientAuth::none(),
            con_modes: ConModes::default(),
            connect_timeout: Duration::from_secs(30),
            objecter: ObjecterConfig::default(),
            workers: 1,
            max_frame_len: 128 << 20,
        }
    }
}

/// Objects listed per `pgnls` round trip.
const LIST_CHUNK: u64 = 1024;
/// KEEPALIVE2 period on every session, and how long a session may hear nothing before it is reset.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const SILENT_PEER_TIMEOUT: Duration = Duration::from_secs(30);
/// Timer period: hunting, resends, op deadlines.
const TICK: Duration = Duration::from_millis(50);

/// A connected RADOS client over network stack `N`.
pub struct Rados<N: NetworkStack> {
    monc: Arc<MonClient<N>>,
    objecter: Arc<Objecter<N>>,
    mon_msgr: Messenger<N>,
    osd_msgr: Messenger<N>,
    stop: Arc<AtomicBool>,
    timer: Option<JoinHandle<()>>,
}

fn messenger_config(cfg: &RadosConfig, gid: i64, prefix: &str) -> MessengerConfig {
    let mut p = crate::proto::Config::new(EntityType::Client, cfg.name.clone());
    p.gid = gid;
    p.nonce = rand::random::<u32>() | 1;
    p.auth_client = cfg.auth.clone();
    p.con_modes = cfg.con_modes.clone();
    p.max_frame_len = cfg.max_frame_len;
    p.handshake_timeout = cfg.mon.hunt_interval.max(Duration::from_secs(5));
    // As Ceph's MonClient pings its monitor (mon_client_ping_interval / _timeout) and the Objecter its
    // OSDs: a peer that went silent (no reset seen) is given up, and what waited on it goes elsewhere.
    p.keepalive_interval = Some(KEEPALIVE_INTERVAL);
    p.idle_timeout = Some(SILENT_PEER_TIMEOUT);
    let mut mc = MessengerConfig::new(p);
    mc.workers.threads = cfg.workers.max(1);
    mc.workers.pin_cores = false;
    mc.workers.name_prefix = prefix.into();
    mc
}

impl<N: NetworkStack> Rados<N> {
    /// Connect: hunt for a monitor, authenticate, subscribe to the OSD map and wait for the first one.
    /// `make_stack` builds each of the two messengers' stacks.
    pub fn connect(
        mut make_stack: impl FnMut() -> Result<N, String>,
        cfg: RadosConfig,
    ) -> Result<Self, RadosError> {
        if cfg.mon.mon_addrs.is_empty() {
            return Err(RadosError::Monitor("no monitor address given".into()));
        }
        let monc = MonClient::<N>::new(cfg.mon.clone());
        let objecter = Objecter::new(cfg.objecter.clone(), monc.clone());
        let weak = Arc::downgrade(&objecter);
        monc.set_osdmap_sink(Arc::new(move |m| {
            if let Some(o) = weak.upgrade() {
                if let Err(e) = o.handle_osd_map(&m) {
                    tracing::warn!("rados: osd map from the monitor: {e}");
                }
            }
        }));
        monc.subscribe_osdmap(0);

        let msgr_err = |e: crate::Error| RadosError::Messenger(e.to_string());
        let mut mon_msgr = Messenger::new(
            make_stack().map_err(RadosError::Messenger)?,
            messenger_config(&cfg, -1, "rados-mon"),
            monc.clone(),
        );
        mon_msgr.start().map_err(msgr_err)?;
        monc.start(mon_msgr.handle());
        let stop = Arc::new(AtomicBool::new(false));
        let timer = {
            let (monc, objecter, stop) = (monc.clone(), objecter.clone(), stop.clone());
            std::thread::Builder::new()
                .name("rados-timer".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        std::thread::sleep(TICK);
                        monc.tick();
                        objecter.tick();
                    }
                })
                .map_err(|e| RadosError::Messenger(format!("timer thread: {e}")))?
        };
        let t0 = Instant::now();
        let fail = |monc: &MonClient<N>, stop: &AtomicBool, e: RadosError| {
            stop.store(true, Ordering::Release);
            monc.shutdown();
            e
        };
        let global_id = match monc.wait_session(cfg.connect_timeout) {
            Ok(g) => g,
            Err(e) => return Err(fail(&monc, &stop, RadosError::Monitor(e))),
        };
        let gid = i64::try_from(global_id).unwrap_or(-1);
        let mut osd_msgr = Messenger::new(
            make_stack().map_err(RadosError::Messenger)?,
            messenger_config(&cfg, gid, "rados-osd"),
            objecter.clone(),
        );
        if let Err(e) = osd_msgr.start() {
            return Err(fail(&monc, &stop, msgr_err(e)));
        }
        objecter.set_messenger(osd_msgr.handle());
        let left = cfg.connect_timeout.saturating_sub(t0.elapsed());
        if let Err(e) = objecter.wait_for_epoch(1, left) {
            return Err(fail(&monc, &stop, e));
        }
        Ok(Rados {
            monc,
            objecter,
            mon_msgr,
            osd_msgr,
            stop,
            timer: Some(timer),
        })
    }

    pub fn objecter(&self) -> &Arc<Objecter<N>> {
        &self.objecter
    }

    pub fn monc(&self) -> &Arc<MonClient<N>> {
        &self.monc
    }

    /// The global id the monitor gave us.
    pub fn global_id(&self) -> u64 {
        self.monc.global_id()
    }

    /// Run `f` on the current OSD map.
    pub fn with_map<R>(&self, f: impl FnOnce(&OsdMap) -> R) -> R {
        self.objecter
            .with_map(|m| f(m.expect("connect waited for a map")))
    }

    /// The id of pool `name`.
    pub fn pool_id(&self, name: &str) -> Result<u64, RadosError> {
        self.with_map(|m| m.pool_id(name))
            .ok_or_else(|| RadosError::PoolNotFound(name.to_owned()))
    }

    /// Submit `req` without waiting; `done` runs with the outcome.
    pub fn submit(&self, req: OpRequest, done: OnComplete) -> u64 {
        self.objecter.submit(req, done)
    }

    pub fn run(&self, req: OpRequest) -> Result<OpReply, RadosError> {
        self.objecter.run(req)
    }

    /// Replace the object's data with `data` (creating it).
    pub fn write_full(&self, pool: u64, oid: &str, data: Bytes) -> Result<(), RadosError> {
        self.run(OpRequest::new(pool, oid, vec![OsdOp::write_full(data)]))
            .map(drop)
    }

    /// Write `data` at `offset`.
    pub fn write(&self, pool: u64, oid: &str, offset: u64, data: Bytes) -> Result<(), RadosError> {
        self.run(OpRequest::new(pool, oid, vec![OsdOp::write(offset, data)]))
            .map(drop)
    }

    /// Up to `len` bytes from `offset`.
    pub fn read(&self, pool: u64, oid: &str, offset: u64, len: u64) -> Result<Bytes, RadosError> {
        let r = self.run(OpRequest::new(pool, oid, vec![OsdOp::read(offset, len)]))?;
        Ok(read_data(&r))
    }

    /// The whole object (its size from a stat, then one read).
    pub fn read_all(&self, pool: u64, oid: &str) -> Result<Bytes, RadosError> {
        let (size, _) = self.stat(pool, oid)?;
        if size == 0 {
            return Ok(Bytes::new());
        }
        self.read(pool, oid, 0, size)
    }

    /// Size and modification time.
    pub fn stat(&self, pool: u64, oid: &str) -> Result<(u64, UTime), RadosError> {
        let r = self.run(OpRequest::new(pool, oid, vec![OsdOp::stat()]))?;
        decode_stat(&read_data(&r)).map_err(|e| RadosError::Protocol(format!("stat: {e}")))
    }

    pub fn remove(&self, pool: u64, oid: &str) -> Result<(), RadosError> {
        self.run(OpRequest::new(pool, oid, vec![OsdOp::delete()]))
            .map(drop)
    }

    /// Set omap keys.
    pub fn omap_set(
        &self,
        pool: u64,
        oid: &str,
        vals: &BTreeMap<String, Bytes>,
    ) -> Result<(), RadosError> {
        self.run(OpRequest::new(pool, oid, vec![OsdOp::omap_set_vals(vals)]))
            .map(drop)
    }

    /// Every omap key and value of the object.
    pub fn omap_get(&self, pool: u64, oid: &str) -> Result<BTreeMap<String, Bytes>, RadosError> {
        let mut all = BTreeMap::new();
        let mut after = String::new();
        loop {
            let r = self.run(OpRequest::new(
                pool,
                oid,
                vec![OsdOp::omap_get_vals(&after, "", 512)],
            ))?;
            let (vals, more) = decode_omap_vals(&read_data(&r))
                .map_err(|e| RadosError::Protocol(format!("omap-get-vals: {e}")))?;
            let last = vals.keys().next_back().cloned();
            all.extend(vals);
            match last {
                Some(k) if more => after = k,
                _ => return Ok(all),
            }
        }
    }

    /// Every object name in the pool (default namespace), through `pgnls` on each PG.
    pub fn list(&self, pool: u64) -> Result<Vec<String>, RadosError> {
        let (pg_num, epoch) = self.with_map(|m| (m.pool(pool).map(|p| p.pg_num), m.epoch()));
        let pg_num = pg_num.ok_or_else(|| RadosError::PoolNotFound(format!("id {pool}")))?;
        let mut names = Vec::new();
        for ps in 0..pg_num {
            let mut cursor = HObject::default();
            loop {
                let mut req =
                    OpRequest::new(pool, "", vec![OsdOp::pgnls(LIST_CHUNK, &cursor, epoch)]);
                req.pg = Some(ps);
                let r = self.run(req)?;
                let resp = PgNlsResponse::decode(&read_data(&r))
                    .map_err(|e| RadosError::Protocol(format!("pgnls: {e}")))?;
                names.extend(resp.entries.into_iter().map(|e| e.oid));
                // An OSD answers 1 (older ones: a MAX cursor) when the PG has no more objects.
                if resp.handle.max || r.result == 1 {
                    break;
                }
                cursor = resp.handle;
            }
        }
        Ok(names)
    }

    /// Fail what is in flight and stop (also done on drop).
    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.objecter.shutdown();
        self.monc.shutdown();
        if let Some(t) = self.timer.take() {
            let _ = t.join();
        }
        let _ = self.osd_msgr.shutdown();
        let _ = self.mon_msgr.shutdown();
    }
}

impl<N: NetworkStack> Drop for Rados<N> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Parse a `mon_host` value: monitors separated by commas or spaces, each `IP:PORT`, `v2:IP:PORT`,
/// or a bracketed address vector `[v2:IP:PORT,v1:IP:PORT]` (its v2 address is used). v1-only entries
/// are refused (msgr speaks msgr2 only).
pub fn parse_mon_host(s: &str) -> Result<Vec<AddrVec>, String> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let (item, tail) = if let Some(r) = rest.strip_prefix('[') {
            let end = r
                .find(']')
                .ok_or_else(|| format!("{s:?}: '[' without ']'"))?;
            (&r[..end], &r[end + 1..])
        } else {
            let end = rest.find([',', ' ', ';']).unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        let mut v2 = None;
        for a in item.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            if a.starts_with("v1:") {
                continue;
            }
            let a = a.strip_prefix("v2:").unwrap_or(a);
            let a = a.split('/').next().unwrap_or(a);
            let sa: std::net::SocketAddr = a
                .parse()
                .map_err(|e| format!("{a:?} in mon host {s:?}: {e}"))?;
            v2 = Some(sa);
        }
        let sa = v2.ok_or_else(|| format!("{item:?} has no msgr2 (v2) address"))?;
        out.push(AddrVec(vec![crate::EntityAddr::msgr2(sa, 0)]));
        rest = tail.trim_start_matches([',', ' ', ';']);
    }
    if out.is_empty() {
        return Err("empty monitor list".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mon_host_forms() {
        let v =
            parse_mon_host("[v2:127.0.0.1:3300,v1:127.0.0.1:6789],v2:10.0.0.2:3301 10.0.0.3:3300")
                .unwrap();
        let shown: Vec<String> = v.iter().map(|a| a.to_string()).collect();
        assert_eq!(shown.len(), 3, "{shown:?}");
        assert!(shown[0].contains("127.0.0.1:3300"), "{shown:?}");
        assert!(shown[1].contains("10.0.0.2:3301"), "{shown:?}");
        assert!(shown[2].contains("10.0.0.3:3300"), "{shown:?}");
        assert!(parse_mon_host("").is_err());
        assert!(parse_mon_host("v1:127.0.0.1:6789").is_err());
        assert!(parse_mon_host("[v2:127.0.0.1:3300").is_err());
        assert!(parse_mon_host("nonsense").is_err());
    }
}
