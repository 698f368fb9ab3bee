//! `OSDMap::Incremental`: one epoch's changes, decoded and applied all or nothing.

use std::collections::BTreeMap;

use super::decode::{
    decode_pg_i32_map, decode_pg_i32_vec_map, decode_pg_set, decode_pool_id, decode_pool_names,
    decode_pools, decode_upmap_items, skip_profiles,
};
use super::{
    OsdMap, PgId, PgPool, DEFAULT_PRIMARY_AFFINITY, MAX_OSD, OSD_AUTOOUT, OSD_EXISTS, OSD_NEW,
    OSD_UP,
};
use crate::msgs::{decode_string_vec, Uuid};
use crate::proto::crc::ceph_crc32c;
use crate::proto::denc::{DecodeError, Decoder};
use crate::proto::types::AddrVec;
use crate::rados::crush::CrushMap;

const WRAPPER_MIN: u8 = 7;
const WRAPPER_COMPAT: u8 = 8;
const CLIENT_COMPAT: u8 = 8;

/// The client-relevant changes of one epoch.
#[derive(Clone, Debug, Default)]
pub struct OsdMapIncremental {
    pub fsid: Uuid,
    pub epoch: u32,
    pub new_pool_max: i64,
    pub new_flags: i32,
    /// A whole new map instead of changes (when not empty).
    pub fullmap: Vec<u8>,
    /// A whole new CRUSH map (when not empty).
    pub crush: Vec<u8>,
    pub new_max_osd: i32,
    pub new_pools: BTreeMap<u64, PgPool>,
    pub new_pool_names: BTreeMap<u64, String>,
    pub old_pools: Vec<u64>,
    pub new_up_client: BTreeMap<i32, AddrVec>,
    /// State bits to flip (xor); 0 means "up", as in old encodings.
    pub new_state: BTreeMap<i32, u32>,
    pub new_weight: BTreeMap<i32, u32>,
    /// An empty list removes the pg_temp.
    pub new_pg_temp: BTreeMap<PgId, Vec<i32>>,
    /// -1 removes the primary_temp.
    pub new_primary_temp: BTreeMap<PgId, i32>,
    pub new_primary_affinity: BTreeMap<i32, u32>,
    pub new_pg_upmap: BTreeMap<PgId, Vec<i32>>,
    pub old_pg_upmap: Vec<PgId>,
    pub new_pg_upmap_items: BTreeMap<PgId, Vec<(i32, i32)>>,
    pub old_pg_upmap_items: Vec<PgId>,
}

fn decode_i32_u32_map(
    d: &mut Decoder<'_>,
    what: &'static str,
) -> Result<BTreeMap<i32, u32>, DecodeError> {
    let n = d.count(8, what)?;
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let k = d.i32()?;
        m.insert(k, d.u32()?);
    }
    Ok(m)
}

impl OsdMapIncremental {
    /// `OSDMap::Incremental::decode` (luminous-and-later layout); the crc is verified.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut outer = Decoder::new(bytes);
        let struct_v = outer.u8()?;
        if struct_v < WRAPPER_MIN {
            return Err(DecodeError::invalid(
                "OSDMap::Incremental",
                format!("pre-luminous encoding v{struct_v}"),
            ));
        }
        let compat = outer.u8()?;
        if compat > WRAPPER_COMPAT {
            return Err(DecodeError::Incompatible {
                what: "OSDMap::Incremental",
                compat,
                supported: WRAPPER_COMPAT,
            });
        }
        let len = outer.u32()? as usize;
        let body_start = outer.position();
        let body = outer.take(len, "OSDMap::Incremental")?;
        let mut d = Decoder::new(body);
        let inc = d.versioned(
            "OSDMap::Incremental client data",
            CLIENT_COMPAT,
            decode_client,
        )?;
        d.u8()?;
        d.u8()?;
        d.len_prefixed("OSDMap::Incremental osd-only data")?;
        if struct_v >= 8 {
            let crc_at = body_start + d.position();
            let inc_crc = d.u32()?;
            // The tail (full_crc) is covered by the incremental's crc.
            let tail = &body[d.position()..];
            let actual = ceph_crc32c(ceph_crc32c(0xffff_ffff, &bytes[..crc_at]), tail);
            if actual != inc_crc {
                return Err(DecodeError::invalid(
                    "OSDMap::Incremental",
                    format!("bad crc {actual:#x}, expected {inc_crc:#x}"),
                ));
            }
        }
        Ok(inc)
    }
}

fn decode_client(v: u8, d: &mut Decoder<'_>) -> Result<OsdMapIncremental, DecodeError> {
    let mut inc = OsdMapIncremental {
        fsid: d.decode()?,
        epoch: d.u32()?,
        ..Default::default()
    };
    d.skip(8, "modified")?;
    inc.new_pool_max = d.i64()?;
    inc.new_flags = d.i32()?;
    inc.fullmap = d.len_prefixed("fullmap")?.to_vec();
    inc.crush = d.len_prefixed("crush")?.to_vec();
    inc.new_max_osd = d.i32()?;
    inc.new_pools = decode_pools(d)?;
    inc.new_pool_names = decode_pool_names(d)?;
    let n = d.count(8, "old_pools")?;
    inc.old_pools = (0..n)
        .map(|_| decode_pool_id(d))
        .collect::<Result<_, _>>()?;
    let n = d.count(5, "new_up_client")?;
    for _ in 0..n {
        let osd = d.i32()?;
        inc.new_up_client.insert(osd, d.decode()?);
    }
    inc.new_state = if v >= 5 {
        decode_i32_u32_map(d, "new_state")?
    } else {
        let n = d.count(5, "new_state")?;
        let mut m = BTreeMap::new();
        for _ in 0..n {
            let k = d.i32()?;
            m.insert(k, u32::from(d.u8()?));
        }
        m
    };
    inc.new_weight = decode_i32_u32_map(d, "new_weight")?;
    inc.new_pg_temp = decode_pg_i32_vec_map(d, "new_pg_temp")?;
    inc.new_primary_temp = decode_pg_i32_map(d, "new_primary_temp")?;
    if v >= 2 {
        inc.new_primary_affinity = decode_i32_u32_map(d, "new_primary_affinity")?;
    }
    if v >= 3 {
        skip_profiles(d)?;
        decode_string_vec(d, "old_erasure_code_profiles")?;
    }
    if v >= 4 {
        inc.new_pg_upmap = decode_pg_i32_vec_map(d, "new_pg_upmap")?;
        inc.old_pg_upmap = decode_pg_set(d, "old_pg_upmap")?;
        inc.new_pg_upmap_items = decode_upmap_items(d)?;
        inc.old_pg_upmap_items = decode_pg_set(d, "old_pg_upmap_items")?;
    }
    Ok(inc)
}

fn bad(detail: String) -> DecodeError {
    DecodeError::invalid("OSDMap::Incremental", detail)
}

impl OsdMap {
    /// `OSDMap::apply_incremental` for the client-relevant fields. All checks happen before the
    /// first change, so an error leaves `self` untouched.
    pub fn apply(&mut self, inc: &OsdMapIncremental) -> Result<(), DecodeError> {
        if inc.epoch != 1 && inc.fsid != self.fsid {
            return Err(bad(format!("fsid {} is not {}", inc.fsid, self.fsid)));
        }
        if Some(inc.epoch) != self.epoch.checked_add(1) {
            return Err(bad(format!(
                "epoch {} does not follow {}",
                inc.epoch, self.epoch
            )));
        }
        if !inc.fullmap.is_empty() {
            let full = OsdMap::decode(&inc.fullmap)?;
            if full.epoch != inc.epoch {
                return Err(bad(format!(
                    "embedded full map has epoch {}, not {}",
                    full.epoch, inc.epoch
                )));
            }
            *self = full;
            return Ok(());
        }
        let new_crush = if inc.crush.is_empty() {
            None
        } else {
            Some(CrushMap::decode(&inc.crush)?)
        };
        let max_osd = if inc.new_max_osd >= 0 {
            usize::try_from(inc.new_max_osd)
                .ok()
                .filter(|&n| n <= MAX_OSD)
                .ok_or_else(|| bad(format!("new_max_osd {}", inc.new_max_osd)))?
        } else {
            self.max_osd
        };
        let in_range = |osd: i32| usize::try_from(osd).is_ok_and(|i| i < max_osd);
        for osd in inc
            .new_weight
            .keys()
            .chain(inc.new_state.keys())
            .chain(inc.new_up_client.keys())
            .chain(inc.new_primary_affinity.keys())
        {
            if !in_range(*osd) {
                return Err(bad(format!("osd.{osd} beyond max_osd {max_osd}")));
            }
        }

        // Validated: apply.
        let mut m = self.clone();
        m.epoch = inc.epoch;
        if inc.epoch == 1 {
            m.fsid = inc.fsid;
        }
        if inc.new_flags >= 0 {
            m.flags = inc.new_flags as u32;
        }
        if inc.new_max_osd >= 0 {
            m.set_max_osd(max_osd);
        }
        if inc.new_pool_max != -1 {
            m.pool_max = i32::try_from(inc.new_pool_max).unwrap_or(i32::MAX);
        }
        for (id, pool) in &inc.new_pools {
            let mut p = pool.clone();
            p.last_change = inc.epoch;
            m.pools.insert(*id, p);
        }
        for (id, name) in &inc.new_pool_names {
            m.pool_names.insert(*id, name.clone());
        }
        for id in &inc.old_pools {
            m.pools.remove(id);
            m.pool_names.remove(id);
        }
        for (&osd, &w) in &inc.new_weight {
            m.set_weight(osd, w);
            if w != 0 {
                // Marked in: no longer new or automatically out.
                let s = m.osd_state(osd);
                m.set_state(osd, s & !(OSD_AUTOOUT | OSD_NEW));
            }
        }
        for (&osd, &a) in &inc.new_primary_affinity {
            m.set_primary_affinity(osd, a);
        }
        for (&osd, &s) in &inc.new_state {
            let s = if s == 0 { OSD_UP } else { s };
            let cur = m.osd_state(osd);
            if cur & OSD_EXISTS != 0 && s & OSD_EXISTS != 0 {
                // The OSD is destroyed: forget everything about it.
                m.set_state(osd, 0);
                m.set_primary_affinity(osd, DEFAULT_PRIMARY_AFFINITY);
                if let Some(a) = usize::try_from(osd)
                    .ok()
                    .and_then(|i| m.osd_addrs.get_mut(i))
                {
                    *a = AddrVec::default();
                }
            } else {
                m.set_state(osd, cur ^ s);
            }
        }
        for (&osd, addrs) in &inc.new_up_client {
            let cur = m.osd_state(osd);
            m.set_state(osd, cur | OSD_EXISTS | OSD_UP);
            if let Some(a) = usize::try_from(osd)
                .ok()
                .and_then(|i| m.osd_addrs.get_mut(i))
            {
                *a = addrs.clone();
            }
        }
        for (pg, osds) in &inc.new_pg_temp {
            if osds.is_empty() {
                m.pg_temp.remove(pg);
            } else {
                m.pg_temp.insert(*pg, osds.clone());
            }
        }
        for (pg, &osd) in &inc.new_primary_temp {
            if osd == -1 {
                m.primary_temp.remove(pg);
            } else {
                m.primary_temp.insert(*pg, osd);
            }
        }
        for (pg, osds) in &inc.new_pg_upmap {
            m.pg_upmap.insert(*pg, osds.clone());
        }
        for pg in &inc.old_pg_upmap {
            m.pg_upmap.remove(pg);
        }
        for (pg, items) in &inc.new_pg_upmap_items {
            m.pg_upmap_items.insert(*pg, items.clone());
        }
        for pg in &inc.old_pg_upmap_items {
            m.pg_upmap_items.remove(pg);
        }
        if let Some(c) = new_crush {
            m.crush = c;
        }
        *self = m;
        Ok(())
    }
}
