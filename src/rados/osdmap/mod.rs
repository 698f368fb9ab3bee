//! The OSD map: pools, OSD states / weights / addresses, the temp and upmap overrides and the CRUSH
//! map, decoded from `OSDMap::encode` as a monitor sends it in `MOSDMap` ([`OsdMap::decode`]), advanced
//! by incrementals ([`OsdMap::apply_incremental`]), and the placement computed from it: object name →
//! raw PG → PG → up and acting OSD sets ([`OsdMap::object_to_raw_pg`], [`OsdMap::pg_to_up_acting`]).
//!
//! Invariants: every OSD-indexed vector is read through bounds checks (a map may list fewer states or
//! weights than `max_osd`; missing ones mean "does not exist" / "out"); `max_osd` never exceeds
//! [`MAX_OSD`]; an incremental is applied all or nothing. Placement follows Ceph 16's
//! `OSDMap::_pg_to_up_acting_osds` step by step: temp overrides, raw CRUSH, upmaps, down OSDs removed
//! (replicated) or left as holes (erasure), primary affinity, then pg_temp / primary_temp.

mod decode;
mod incremental;

pub use incremental::OsdMapIncremental;

use std::collections::BTreeMap;

use crate::msgs::Uuid;
use crate::proto::denc::DecodeError;
use crate::proto::types::AddrVec;
use crate::rados::crush::hash::{hash32_2, str_hash};
use crate::rados::crush::{CrushMap, CRUSH_ITEM_NONE};

/// The largest `max_osd` accepted (Ceph's own default limit is 10 000).
pub const MAX_OSD: usize = 1 << 20;

/// `CEPH_OSD_*` state bits.
pub const OSD_EXISTS: u32 = 1;
pub const OSD_UP: u32 = 2;
pub const OSD_AUTOOUT: u32 = 4;
pub const OSD_NEW: u32 = 8;
/// Reweight (16.16) of an OSD that is fully in / out.
pub const OSD_IN: u32 = 0x10000;
pub const OSD_OUT: u32 = 0;
/// Primary affinity 1.0 (16.16): the default, and the maximum.
pub const DEFAULT_PRIMARY_AFFINITY: u32 = 0x10000;

/// Pool types (`pg_pool_t::TYPE_*`).
pub const POOL_TYPE_REPLICATED: u8 = 1;
pub const POOL_TYPE_ERASURE: u8 = 3;
/// `pg_pool_t::FLAG_HASHPSPOOL`: seed placement with the pool id.
pub const POOL_FLAG_HASHPSPOOL: u64 = 1;

/// A placement group (`pg_t`): a pool and a placement seed. As a *raw* PG the seed is the object's
/// full 32-bit hash; folded by [`OsdMap::raw_pg_to_pg`] it is below the pool's `pg_num`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgId {
    pub pool: u64,
    pub seed: u32,
}

impl std::fmt::Display for PgId {
    /// As Ceph prints a `pg_t`: `pool.seed-in-hex`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:x}", self.pool, self.seed)
    }
}

/// Where a PG lives: the up set (what CRUSH and the overrides give) and the acting set (what serves
/// I/O, after pg_temp), each with its primary (-1 when none). Erasure pools keep positions, with
/// [`CRUSH_ITEM_NONE`] for a missing shard.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct UpActing {
    pub up: Vec<i32>,
    pub up_primary: i32,
    pub acting: Vec<i32>,
    pub acting_primary: i32,
}

/// The placement-relevant part of a pool (`pg_pool_t`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PgPool {
    /// [`POOL_TYPE_REPLICATED`] or [`POOL_TYPE_ERASURE`].
    pub pool_type: u8,
    pub size: u8,
    pub min_size: u8,
    pub crush_rule: u8,
    /// The object name hash (`CEPH_STR_HASH_*`: 1 linux, 2 rjenkins).
    pub object_hash: u8,
    pub pg_num: u32,
    pub pgp_num: u32,
    pub flags: u64,
    pub last_change: u32,
    pub erasure_code_profile: String,
    pub(crate) pg_num_mask: u32,
    pub(crate) pgp_num_mask: u32,
}

/// `(1 << bits(n - 1)) - 1`: the smallest all-ones mask covering `0..n`.
fn pg_mask(n: u32) -> u32 {
    match n.saturating_sub(1) {
        0 => 0,
        m => u32::MAX >> m.leading_zeros(),
    }
}

/// `ceph_stable_mod`: `x mod b` that moves as few inputs as possible when `b` grows.
pub fn ceph_stable_mod(x: u32, b: u32, bmask: u32) -> u32 {
    if x & bmask < b {
        x & bmask
    } else {
        x & (bmask >> 1)
    }
}

impl PgPool {
    /// Recompute the masks after `pg_num` / `pgp_num` change (`calc_pg_masks`).
    pub fn calc_masks(&mut self) {
        self.pg_num_mask = pg_mask(self.pg_num);
        self.pgp_num_mask = pg_mask(self.pgp_num);
    }

    /// Erasure pools keep shard positions; replicated ones may drop members (`can_shift_osds`).
    pub fn can_shift_osds(&self) -> bool {
        self.pool_type == POOL_TYPE_REPLICATED
    }

    pub fn is_erasure(&self) -> bool {
        self.pool_type == POOL_TYPE_ERASURE
    }

    pub fn has_flag(&self, flag: u64) -> bool {
        self.flags & flag != 0
    }

    /// The PG a raw seed folds into.
    pub fn raw_pg_to_pg_seed(&self, seed: u32) -> u32 {
        ceph_stable_mod(seed, self.pg_num, self.pg_num_mask)
    }

    /// The CRUSH input for a PG of pool `pool` (`raw_pg_to_pps`).
    pub fn raw_pg_to_pps(&self, pool: u64, seed: u32) -> u32 {
        let ps = ceph_stable_mod(seed, self.pgp_num, self.pgp_num_mask);
        if self.has_flag(POOL_FLAG_HASHPSPOOL) {
            // Ceph passes the 64-bit pool id as a 32-bit hash input.
            hash32_2(ps, pool as u32)
        } else {
            ps.wrapping_add(pool as u32)
        }
    }
}

/// The decoded OSD map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OsdMap {
    pub(crate) fsid: Uuid,
    pub(crate) epoch: u32,
    pub pools: BTreeMap<u64, PgPool>,
    pub pool_names: BTreeMap<u64, String>,
    pub pool_max: i32,
    pub flags: u32,
    pub(crate) max_osd: usize,
    pub(crate) osd_state: Vec<u32>,
    pub(crate) osd_weight: Vec<u32>,
    pub(crate) osd_addrs: Vec<AddrVec>,
    /// Empty when every OSD has the default affinity.
    pub(crate) primary_affinity: Vec<u32>,
    pub pg_temp: BTreeMap<PgId, Vec<i32>>,
    pub primary_temp: BTreeMap<PgId, i32>,
    pub pg_upmap: BTreeMap<PgId, Vec<i32>>,
    pub pg_upmap_items: BTreeMap<PgId, Vec<(i32, i32)>>,
    pub crush: CrushMap,
    pub crush_version: i32,
}

fn osd_index(osd: i32) -> Option<usize> {
    usize::try_from(osd).ok()
}

impl OsdMap {
    /// Decode one full map (an entry of `MOSDMap`'s `maps`).
    pub fn decode(bytes: &[u8]) -> Result<OsdMap, DecodeError> {
        decode::decode_full(bytes)
    }

    /// Decode an incremental (an entry of `MOSDMap`'s `incremental_maps`) and apply it. It must be for
    /// the next epoch and the same cluster; on any error the map is unchanged.
    pub fn apply_incremental(&mut self, bytes: &[u8]) -> Result<(), DecodeError> {
        let inc = OsdMapIncremental::decode(bytes)?;
        self.apply(&inc)
    }

    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    pub fn fsid(&self) -> Uuid {
        self.fsid
    }

    pub fn max_osd(&self) -> usize {
        self.max_osd
    }

    pub fn pool_id(&self, name: &str) -> Option<u64> {
        self.pool_names
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .map(|(id, _)| *id)
    }

    pub fn pool(&self, id: u64) -> Option<&PgPool> {
        self.pools.get(&id)
    }

    /// The state bits of `osd` (0 for one beyond the map).
    pub fn osd_state(&self, osd: i32) -> u32 {
        osd_index(osd)
            .filter(|&i| i < self.max_osd)
            .and_then(|i| self.osd_state.get(i).copied())
            .unwrap_or(0)
    }

    pub fn exists(&self, osd: i32) -> bool {
        self.osd_state(osd) & OSD_EXISTS != 0
    }

    pub fn is_up(&self, osd: i32) -> bool {
        self.exists(osd) && self.osd_state(osd) & OSD_UP != 0
    }

    /// The reweight of `osd` (16.16; 0 = out).
    pub fn osd_weight(&self, osd: i32) -> u32 {
        osd_index(osd)
            .filter(|&i| i < self.max_osd)
            .and_then(|i| self.osd_weight.get(i).copied())
            .unwrap_or(OSD_OUT)
    }

    pub fn primary_affinity(&self, osd: i32) -> u32 {
        osd_index(osd)
            .and_then(|i| self.primary_affinity.get(i).copied())
            .unwrap_or(DEFAULT_PRIMARY_AFFINITY)
    }

    /// The public (client-facing) addresses of `osd`.
    pub fn osd_addrs(&self, osd: i32) -> Option<&AddrVec> {
        let a = self.osd_addrs.get(osd_index(osd)?)?;
        (!a.is_empty()).then_some(a)
    }

    /// Set an OSD's state bits, as `osdmaptool --mark-up` does in memory.
    pub fn set_state(&mut self, osd: i32, state: u32) {
        if let Some(s) = osd_index(osd).and_then(|i| self.osd_state.get_mut(i)) {
            *s = state;
        }
    }

    /// Set an OSD's reweight (16.16), as `osdmaptool --mark-out` / `--mark-in` do in memory. As in
    /// Ceph, a non-zero weight also marks the OSD as existing.
    pub fn set_weight(&mut self, osd: i32, weight: u32) {
        let Some(i) = osd_index(osd) else {
            return;
        };
        if let Some(w) = self.osd_weight.get_mut(i) {
            *w = weight;
            if weight != 0 {
                if let Some(s) = self.osd_state.get_mut(i) {
                    *s |= OSD_EXISTS;
                }
            }
        }
    }

    /// Set an OSD's primary affinity (16.16).
    pub fn set_primary_affinity(&mut self, osd: i32, affinity: u32) {
        let Some(i) = osd_index(osd).filter(|&i| i < self.max_osd) else {
            return;
        };
        if self.primary_affinity.is_empty() {
            if affinity == DEFAULT_PRIMARY_AFFINITY {
                return;
            }
            self.primary_affinity = vec![DEFAULT_PRIMARY_AFFINITY; self.max_osd];
        }
        if let Some(a) = self.primary_affinity.get_mut(i) {
            *a = affinity;
        }
    }

    /// Resize the OSD vectors (`set_max_osd`): new OSDs do not exist and are out.
    pub(crate) fn set_max_osd(&mut self, n: usize) {
        self.max_osd = n;
        self.osd_state.resize(n, 0);
        self.osd_weight.resize(n, OSD_OUT);
        self.osd_addrs.resize(n, AddrVec::default());
        if !self.primary_affinity.is_empty() {
            self.primary_affinity.resize(n, DEFAULT_PRIMARY_AFFINITY);
        }
    }

    // ---- placement ----

    /// The raw PG of an object: its name (or locator `key` when not empty) hashed with the pool's
    /// object hash, in namespace `nspace` (`object_locator_to_pg`). `None` for an unknown pool or hash.
    pub fn object_to_raw_pg(&self, pool: u64, oid: &str, nspace: &str, key: &str) -> Option<PgId> {
        let p = self.pools.get(&pool)?;
        let name = if key.is_empty() { oid } else { key };
        let seed = if nspace.is_empty() {
            str_hash(p.object_hash, name.as_bytes())?
        } else {
            // Ceph hashes "nspace\x1fname".
            let mut buf = Vec::with_capacity(nspace.len() + 1 + name.len());
            buf.extend_from_slice(nspace.as_bytes());
            buf.push(0x1f);
            buf.extend_from_slice(name.as_bytes());
            str_hash(p.object_hash, &buf)?
        };
        Some(PgId { pool, seed })
    }

    /// Fold a raw PG into its pool's `pg_num` (`ceph_stable_mod`); unchanged for an unknown pool.
    pub fn raw_pg_to_pg(&self, raw: PgId) -> PgId {
        match self.pools.get(&raw.pool) {
            Some(p) => PgId {
                pool: raw.pool,
                seed: p.raw_pg_to_pg_seed(raw.seed),
            },
            None => raw,
        }
    }

    /// CRUSH's result for a PG, before upmaps (`_pg_to_raw_osds`): OSDs that do not exist are removed
    /// (replicated) or become holes (erasure). Also returns the placement seed `pps`.
    pub fn pg_to_raw_osds(&self, pool: &PgPool, pg: PgId) -> (Vec<i32>, u32) {
        let pps = pool.raw_pg_to_pps(pg.pool, pg.seed);
        let size = i32::from(pool.size);
        let mut osds =
            match self
                .crush
                .find_rule(i32::from(pool.crush_rule), i32::from(pool.pool_type), size)
            {
                Some(rule) => {
                    let weights = &self.osd_weight[..self.max_osd.min(self.osd_weight.len())];
                    let args = i64::try_from(pg.pool)
                        .ok()
                        .and_then(|id| self.crush.choose_args_for(id));
                    self.crush
                        .do_rule(rule, pps as i32, usize::from(pool.size), weights, args)
                }
                None => Vec::new(),
            };
        if pool.can_shift_osds() {
            osds.retain(|&o| self.exists(o));
        } else {
            for o in osds.iter_mut() {
                if !self.exists(*o) {
                    *o = CRUSH_ITEM_NONE;
                }
            }
        }
        (osds, pps)
    }

    /// Apply `pg_upmap` and `pg_upmap_items` to a raw set (`_apply_upmap`).
    fn apply_upmap(&self, pg: PgId, raw: &mut Vec<i32>) {
        let is_out_target = |osd: i32| {
            osd != CRUSH_ITEM_NONE
                && osd_index(osd).is_some_and(|i| i < self.max_osd)
                && self.osd_weight(osd) == 0
        };
        if let Some(explicit) = self.pg_upmap.get(&pg) {
            // An explicit mapping onto an out OSD is ignored entirely.
            if explicit.iter().any(|&o| is_out_target(o)) {
                return;
            }
            *raw = explicit.clone();
        }
        if let Some(items) = self.pg_upmap_items.get(&pg) {
            for &(from, to) in items {
                let mut pos = None;
                let mut exists = false;
                for (i, &osd) in raw.iter().enumerate() {
                    if osd == to {
                        exists = true;
                        break;
                    }
                    if osd == from && pos.is_none() && !is_out_target(to) {
                        pos = Some(i);
                    }
                }
                if let (false, Some(i)) = (exists, pos) {
                    raw[i] = to;
                }
            }
        }
    }

    /// Down OSDs removed (replicated) or replaced by holes (erasure) (`_raw_to_up_osds`).
    fn raw_to_up(&self, pool: &PgPool, raw: &[i32]) -> Vec<i32> {
        if pool.can_shift_osds() {
            raw.iter().copied().filter(|&o| self.is_up(o)).collect()
        } else {
            raw.iter()
                .map(|&o| if self.is_up(o) { o } else { CRUSH_ITEM_NONE })
                .collect()
        }
    }

    /// Re-pick the primary by primary affinity (`_apply_primary_affinity`); for replicated pools the
    /// chosen primary moves to the front.
    fn apply_primary_affinity(&self, pps: u32, pool: &PgPool, osds: &mut [i32], primary: &mut i32) {
        if self.primary_affinity.is_empty() {
            return;
        }
        let any = osds
            .iter()
            .any(|&o| o != CRUSH_ITEM_NONE && self.primary_affinity(o) != DEFAULT_PRIMARY_AFFINITY);
        if !any {
            return;
        }
        let mut pos: Option<usize> = None;
        for (i, &o) in osds.iter().enumerate() {
            if o == CRUSH_ITEM_NONE {
                continue;
            }
            let a = self.primary_affinity(o);
            if a < DEFAULT_PRIMARY_AFFINITY && (hash32_2(pps, o as u32) >> 16) >= a {
                // Rejected as primary; remember it as the fallback.
                if pos.is_none() {
                    pos = Some(i);
                }
            } else {
                pos = Some(i);
                break;
            }
        }
        let Some(pos) = pos else {
            return;
        };
        *primary = osds[pos];
        if pool.can_shift_osds() && pos > 0 {
            osds[..=pos].rotate_right(1);
        }
    }

    /// pg_temp (down members dropped, or holes for erasure) and its primary (`_get_temp_osds`).
    fn temp_osds(&self, pool: &PgPool, pg: PgId) -> (Vec<i32>, i32) {
        let mut temp = Vec::new();
        if let Some(osds) = self.pg_temp.get(&pg) {
            for &o in osds {
                if !self.exists(o) || !self.is_up(o) {
                    if !pool.can_shift_osds() {
                        temp.push(CRUSH_ITEM_NONE);
                    }
                } else {
                    temp.push(o);
                }
            }
        }
        let primary = match self.primary_temp.get(&pg) {
            Some(&p) => p,
            None => temp
                .iter()
                .copied()
                .find(|&o| o != CRUSH_ITEM_NONE)
                .unwrap_or(-1),
        };
        (temp, primary)
    }

    /// The up and acting sets of a PG (raw or folded) with their primaries, as Ceph 16's
    /// `OSDMap::pg_to_up_acting_osds`. An unknown pool gives empty sets and primaries -1.
    pub fn pg_to_up_acting(&self, pg: PgId) -> UpActing {
        let none = UpActing {
            up_primary: -1,
            acting_primary: -1,
            ..UpActing::default()
        };
        let Some(pool) = self.pools.get(&pg.pool) else {
            return none;
        };
        let pg = self.raw_pg_to_pg(pg);
        let (temp, temp_primary) = self.temp_osds(pool, pg);
        let (mut raw, pps) = self.pg_to_raw_osds(pool, pg);
        self.apply_upmap(pg, &mut raw);
        let mut up = self.raw_to_up(pool, &raw);
        let mut up_primary = up
            .iter()
            .copied()
            .find(|&o| o != CRUSH_ITEM_NONE)
            .unwrap_or(-1);
        self.apply_primary_affinity(pps, pool, &mut up, &mut up_primary);
        let (acting, acting_primary) = if temp.is_empty() {
            let p = if temp_primary == -1 {
                up_primary
            } else {
                temp_primary
            };
            (up.clone(), p)
        } else {
            (temp, temp_primary)
        };
        UpActing {
            up,
            up_primary,
            acting,
            acting_primary,
        }
    }

    /// The raw CRUSH set after upmaps, as `osdmaptool --test-map-pgs-dump-all` prints it ("raw").
    pub fn pg_to_raw_upmapped(&self, pg: PgId) -> Vec<i32> {
        let Some(pool) = self.pools.get(&pg.pool) else {
            return Vec::new();
        };
        let pg = self.raw_pg_to_pg(pg);
        let (mut raw, _) = self.pg_to_raw_osds(pool, pg);
        self.apply_upmap(pg, &mut raw);
        raw
    }
}

#[cfg(test)]
mod tests;
