//! `OSDMap::encode` / `pg_pool_t::encode` decoding (the luminous-and-later layout, struct_v ≥ 7).
//!
//! Layout: a wrapper (v8) holding the client-usable part (decoded), the OSD-only part (skipped by its
//! length) and a crc32c over the wrapper, which is verified.

use std::collections::BTreeMap;

use super::{OsdMap, PgId, PgPool, MAX_OSD};
use crate::msgs::{decode_string, decode_string_map, Uuid};
use crate::proto::crc::ceph_crc32c;
use crate::proto::denc::{DecodeError, Decoder};
use crate::proto::types::AddrVec;
use crate::rados::crush::CrushMap;

/// The wrapper versions we read; older ones are the pre-luminous "classic" layout.
const WRAPPER_MIN: u8 = 7;
const WRAPPER_COMPAT: u8 = 8;
/// The highest compat of the client part we understand (Ceph 16 writes compat 1).
const CLIENT_COMPAT: u8 = 9;
const POOL_COMPAT: u8 = 29;

/// Smallest encodings, for count checks before allocating.
const PG_T_LEN: usize = 17;
const MIN_POOL_LEN: usize = 6;

/// A `pg_t`: version byte 1, pool u64, seed u32, preferred i32 (always -1).
pub(super) fn decode_pg_t(d: &mut Decoder<'_>) -> Result<PgId, DecodeError> {
    let v = d.u8()?;
    if v != 1 {
        return Err(DecodeError::invalid("pg_t", format!("version {v}")));
    }
    let pool = d.u64()?;
    let seed = d.u32()?;
    let _preferred = d.i32()?;
    Ok(PgId { pool, seed })
}

pub(super) fn decode_pool_id(d: &mut Decoder<'_>) -> Result<u64, DecodeError> {
    let id = d.i64()?;
    u64::try_from(id).map_err(|_| DecodeError::invalid("pool id", format!("{id}")))
}

pub(super) fn decode_i32_vec(
    d: &mut Decoder<'_>,
    what: &'static str,
) -> Result<Vec<i32>, DecodeError> {
    let n = d.count(4, what)?;
    (0..n).map(|_| d.i32()).collect()
}

pub(super) fn decode_pg_i32_vec_map(
    d: &mut Decoder<'_>,
    what: &'static str,
) -> Result<BTreeMap<PgId, Vec<i32>>, DecodeError> {
    let n = d.count(PG_T_LEN + 4, what)?;
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let pg = decode_pg_t(d)?;
        m.insert(pg, decode_i32_vec(d, what)?);
    }
    Ok(m)
}

pub(super) fn decode_pg_i32_map(
    d: &mut Decoder<'_>,
    what: &'static str,
) -> Result<BTreeMap<PgId, i32>, DecodeError> {
    let n = d.count(PG_T_LEN + 4, what)?;
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let pg = decode_pg_t(d)?;
        m.insert(pg, d.i32()?);
    }
    Ok(m)
}

pub(super) fn decode_upmap_items(
    d: &mut Decoder<'_>,
) -> Result<BTreeMap<PgId, Vec<(i32, i32)>>, DecodeError> {
    let n = d.count(PG_T_LEN + 4, "pg_upmap_items")?;
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let pg = decode_pg_t(d)?;
        let k = d.count(8, "pg_upmap_items pairs")?;
        let pairs = (0..k)
            .map(|_| Ok((d.i32()?, d.i32()?)))
            .collect::<Result<Vec<_>, DecodeError>>()?;
        m.insert(pg, pairs);
    }
    Ok(m)
}

pub(super) fn decode_pg_set(
    d: &mut Decoder<'_>,
    what: &'static str,
) -> Result<Vec<PgId>, DecodeError> {
    let n = d.count(PG_T_LEN, what)?;
    (0..n).map(|_| decode_pg_t(d)).collect()
}

pub(super) fn decode_pool_names(d: &mut Decoder<'_>) -> Result<BTreeMap<u64, String>, DecodeError> {
    let n = d.count(12, "pool names")?;
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let id = decode_pool_id(d)?;
        m.insert(id, decode_string(d, "pool name")?);
    }
    Ok(m)
}

pub(super) fn decode_pools(d: &mut Decoder<'_>) -> Result<BTreeMap<u64, PgPool>, DecodeError> {
    let n = d.count(8 + MIN_POOL_LEN, "pools")?;
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let id = decode_pool_id(d)?;
        m.insert(id, decode_pool(d)?);
    }
    Ok(m)
}

/// Skip an `erasure_code_profiles`-shaped `map<string, map<string,string>>`.
pub(super) fn skip_profiles(d: &mut Decoder<'_>) -> Result<(), DecodeError> {
    let n = d.count(8, "erasure_code_profiles")?;
    for _ in 0..n {
        decode_string(d, "erasure_code_profile name")?;
        decode_string_map(d, "erasure_code_profile")?;
    }
    Ok(())
}

/// `pg_pool_t::decode` (`DECODE_START_LEGACY_COMPAT_LEN(29, 5, 5)`), keeping what placement needs.
pub(super) fn decode_pool(d: &mut Decoder<'_>) -> Result<PgPool, DecodeError> {
    let struct_v = d.u8()?;
    if struct_v < 5 {
        return Err(DecodeError::invalid(
            "pg_pool_t",
            format!("pre-v5 encoding {struct_v}"),
        ));
    }
    let compat = d.u8()?;
    if compat > POOL_COMPAT {
        return Err(DecodeError::Incompatible {
            what: "pg_pool_t",
            compat,
            supported: POOL_COMPAT,
        });
    }
    let len = d.u32()? as usize;
    let mut d = Decoder::new(d.take(len, "pg_pool_t")?);
    let d = &mut d;
    let mut p = PgPool {
        pool_type: d.u8()?,
        size: d.u8()?,
        crush_rule: d.u8()?,
        object_hash: d.u8()?,
        pg_num: d.u32()?,
        pgp_num: d.u32()?,
        ..PgPool::default()
    };
    let _lpg_num = d.u32()?;
    let _lpgp_num = d.u32()?;
    p.last_change = d.u32()?;
    let _snap_seq = d.u64()?;
    let _snap_epoch = d.u32()?;
    // snaps: map<snapid, pool_snap_info_t (versioned)>
    let n = d.count(8 + 6, "pool snaps")?;
    for _ in 0..n {
        d.u64()?;
        d.versioned("pool_snap_info_t", u8::MAX, |_, _| Ok(()))?;
    }
    // removed_snaps: interval_set<snapid> as (start, len) pairs
    let n = d.count(16, "removed_snaps")?;
    d.skip(n * 16, "removed_snaps")?;
    let _auid = d.u64()?;
    p.flags = d.u64()?;
    let _crash_replay_interval = d.u32()?;
    p.min_size = if struct_v >= 7 {
        d.u8()?
    } else {
        p.size - p.size / 2
    };
    if struct_v >= 14 {
        // Skip to the erasure code profile: quotas, tiers, cache mode, properties, hit sets, stripe
        // width and cache targets precede it.
        d.u64()?; // quota_max_bytes
        d.u64()?; // quota_max_objects
        let n = d.count(8, "tiers")?;
        d.skip(n * 8, "tiers")?;
        d.i64()?; // tier_of
        d.u8()?; // cache_mode
        d.i64()?; // read_tier
        d.i64()?; // write_tier
        decode_string_map(d, "pool properties")?;
        d.versioned("HitSet::Params", u8::MAX, |_, _| Ok(()))?;
        d.u32()?; // hit_set_period
        d.u32()?; // hit_set_count
        d.u32()?; // stripe_width
        d.u64()?; // target_max_bytes
        d.u64()?; // target_max_objects
        d.u32()?; // cache_target_dirty_ratio_micro
        d.u32()?; // cache_target_full_ratio_micro
        d.u32()?; // cache_min_flush_age
        d.u32()?; // cache_min_evict_age
        p.erasure_code_profile = decode_string(d, "erasure_code_profile")?;
    }
    p.calc_masks();
    Ok(p)
}

/// `OSDMap::decode` for a full map.
pub(super) fn decode_full(bytes: &[u8]) -> Result<OsdMap, DecodeError> {
    let mut outer = Decoder::new(bytes);
    let struct_v = outer.u8()?;
    if struct_v < WRAPPER_MIN {
        return Err(DecodeError::invalid(
            "OSDMap",
            format!("pre-luminous encoding v{struct_v}"),
        ));
    }
    let compat = outer.u8()?;
    if compat > WRAPPER_COMPAT {
        return Err(DecodeError::Incompatible {
            what: "OSDMap",
            compat,
            supported: WRAPPER_COMPAT,
        });
    }
    let len = outer.u32()? as usize;
    let body_start = outer.position();
    let body = outer.take(len, "OSDMap")?;
    let mut d = Decoder::new(body);
    let mut map = d.versioned("OSDMap client data", CLIENT_COMPAT, decode_client_part)?;
    // The OSD-only part: skipped whatever its compat, we read nothing of it.
    d.u8()?;
    d.u8()?;
    d.len_prefixed("OSDMap osd-only data")?;
    if struct_v >= 8 {
        let crc_at = body_start + d.position();
        let expected = d.u32()?;
        let tail = &body[d.position()..];
        let actual = ceph_crc32c(ceph_crc32c(0xffff_ffff, &bytes[..crc_at]), tail);
        if actual != expected {
            return Err(DecodeError::invalid(
                "OSDMap",
                format!("bad crc {actual:#x}, expected {expected:#x}"),
            ));
        }
    }
    map.osd_addrs.resize(map.max_osd, AddrVec::default());
    Ok(map)
}

fn decode_client_part(v: u8, d: &mut Decoder<'_>) -> Result<OsdMap, DecodeError> {
    let fsid: Uuid = d.decode()?;
    let epoch = d.u32()?;
    d.skip(16, "created, modified")?;
    let pools = decode_pools(d)?;
    let pool_names = decode_pool_names(d)?;
    let pool_max = d.i32()?;
    let flags = d.u32()?;
    let max_osd = d.i32()?;
    let max_osd = usize::try_from(max_osd)
        .ok()
        .filter(|&n| n <= MAX_OSD)
        .ok_or_else(|| DecodeError::invalid("OSDMap", format!("max_osd {max_osd}")))?;
    let osd_state = if v >= 5 {
        d.vec_u32("osd_state")?
    } else {
        let n = d.count(1, "osd_state")?;
        d.take(n, "osd_state")?
            .iter()
            .map(|&s| u32::from(s))
            .collect()
    };
    let osd_weight = d.vec_u32("osd_weight")?;
    // The shortest entity_addrvec_t is a marker and an empty count.
    let n = d.count(5, "client_addrs")?;
    let mut osd_addrs = Vec::with_capacity(n);
    for _ in 0..n {
        osd_addrs.push(d.decode::<AddrVec>()?);
    }
    let pg_temp = decode_pg_i32_vec_map(d, "pg_temp")?;
    let primary_temp = decode_pg_i32_map(d, "primary_temp")?;
    // Empty means every OSD has the default affinity; a short vector is padded with the default.
    let mut primary_affinity = if v >= 2 {
        d.vec_u32("osd_primary_affinity")?
    } else {
        Vec::new()
    };
    if !primary_affinity.is_empty() && primary_affinity.len() < max_osd {
        primary_affinity.resize(max_osd, super::DEFAULT_PRIMARY_AFFINITY);
    }
    let crush = CrushMap::decode(d.len_prefixed("crush")?)?;
    if v >= 3 {
        skip_profiles(d)?;
    }
    let (pg_upmap, pg_upmap_items) = if v >= 4 {
        (
            decode_pg_i32_vec_map(d, "pg_upmap")?,
            decode_upmap_items(d)?,
        )
    } else {
        Default::default()
    };
    let crush_version = if v >= 6 { d.i32()? } else { 0 };
    Ok(OsdMap {
        fsid,
        epoch,
        pools,
        pool_names,
        pool_max,
        flags,
        max_osd,
        osd_state,
        osd_weight,
        osd_addrs,
        primary_affinity,
        pg_temp,
        primary_temp,
        pg_upmap,
        pg_upmap_items,
        crush,
        crush_version,
    })
}
