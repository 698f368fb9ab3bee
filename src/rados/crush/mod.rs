//! CRUSH maps: Ceph's `CrushWrapper` encoding decoded into [`CrushMap`], and the mapper
//! ([`CrushMap::do_rule`], in [`mapper`]) that places an input `x` on devices by a rule.
//!
//! Owns: buckets of every algorithm Ceph encodes (uniform, list, tree, straw, straw2), rules and their
//! steps, the type / item / rule names, the tunables, device classes with their per-class shadow trees
//! (`class_bucket`), and `choose_args` (weight sets). Hashes are in [`hash`], straw2's logarithm in [`ln`].
//!
//! Invariants of a decoded map (the mapper relies on them and never panics):
//! - bucket slot `i` is either empty or holds the bucket whose id is `-1 - i`;
//! - every per-item array of a bucket (weights, straws, sums) has exactly one entry per item; a tree
//!   bucket's node array is whatever length it was encoded with and is only read through bounds checks;
//! - a choose_args weight set has one weight per item of its bucket, its `ids` are empty or one per item.
//!
//! Items may still point at missing buckets or form cycles; the mapper treats those as failed draws
//! (Ceph would crash or loop), so a hostile map can give odd placements but not a panic or a hang.

pub mod hash;
pub mod ln;
pub mod mapper;

use std::collections::BTreeMap;

use crate::proto::denc::{DecodeError, Decoder};

/// `CRUSH_MAGIC`, the first word of an encoded map.
pub const CRUSH_MAGIC: u32 = 0x0001_0000;
/// The placeholder for "no device here" in indep (erasure) results.
pub const CRUSH_ITEM_NONE: i32 = 0x7fff_ffff;

/// Bucket algorithms (`CRUSH_BUCKET_*`).
pub const BUCKET_UNIFORM: u8 = 1;
pub const BUCKET_LIST: u8 = 2;
pub const BUCKET_TREE: u8 = 3;
pub const BUCKET_STRAW: u8 = 4;
pub const BUCKET_STRAW2: u8 = 5;

/// Rule step opcodes (`CRUSH_RULE_*`).
pub mod op {
    pub const NOOP: u32 = 0;
    pub const TAKE: u32 = 1;
    pub const CHOOSE_FIRSTN: u32 = 2;
    pub const CHOOSE_INDEP: u32 = 3;
    pub const EMIT: u32 = 4;
    pub const CHOOSELEAF_FIRSTN: u32 = 6;
    pub const CHOOSELEAF_INDEP: u32 = 7;
    pub const SET_CHOOSE_TRIES: u32 = 8;
    pub const SET_CHOOSELEAF_TRIES: u32 = 9;
    pub const SET_CHOOSE_LOCAL_TRIES: u32 = 10;
    pub const SET_CHOOSE_LOCAL_FALLBACK_TRIES: u32 = 11;
    pub const SET_CHOOSELEAF_VARY_R: u32 = 12;
    pub const SET_CHOOSELEAF_STABLE: u32 = 13;
}

/// The per-algorithm part of a bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BucketKind {
    /// All items weigh `item_weight`.
    Uniform {
        item_weight: u32,
    },
    List {
        item_weights: Vec<u32>,
        sum_weights: Vec<u32>,
    },
    Tree {
        node_weights: Vec<u32>,
    },
    Straw {
        item_weights: Vec<u32>,
        straws: Vec<u32>,
    },
    Straw2 {
        item_weights: Vec<u32>,
    },
}

/// A CRUSH bucket: an interior node of the hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    /// Negative: bucket `id` lives in slot `-1 - id`.
    pub id: i32,
    /// The hierarchy level (an index into [`CrushMap::type_names`]); devices are type 0.
    pub bucket_type: u16,
    /// One of the `BUCKET_*` algorithms.
    pub alg: u8,
    /// The hash type (only rjenkins1, 0, exists).
    pub hash: u8,
    /// Total weight, 16.16 fixed point.
    pub weight: u32,
    /// Children: devices (≥ 0) or buckets (< 0).
    pub items: Vec<i32>,
    pub kind: BucketKind,
}

impl Bucket {
    /// The weight of the item at `pos` (16.16), as `crush_get_bucket_item_weight`.
    pub fn item_weight(&self, pos: usize) -> Option<u32> {
        match &self.kind {
            BucketKind::Uniform { item_weight } => (pos < self.items.len()).then_some(*item_weight),
            BucketKind::List { item_weights, .. }
            | BucketKind::Straw { item_weights, .. }
            | BucketKind::Straw2 { item_weights } => item_weights.get(pos).copied(),
            BucketKind::Tree { node_weights } => node_weights
                .get(pos.checked_mul(2)?.checked_add(1)?)
                .copied(),
        }
    }
}

/// One rule step: an opcode and two arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleStep {
    pub op: u32,
    pub arg1: i32,
    pub arg2: i32,
}

/// A placement rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The legacy ruleset id (equal to the rule id in maps Ceph 12+ writes).
    pub ruleset: u8,
    /// The pool type the rule serves (1 replicated, 3 erasure).
    pub rule_type: u8,
    pub min_size: u8,
    pub max_size: u8,
    pub steps: Vec<RuleStep>,
}

/// The mapper's tunables (jewel values are `Tunables::default()`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tunables {
    pub choose_local_tries: u32,
    pub choose_local_fallback_tries: u32,
    pub choose_total_tries: u32,
    pub chooseleaf_descend_once: u32,
    pub chooseleaf_vary_r: u8,
    pub straw_calc_version: u8,
    pub allowed_bucket_algs: u32,
    pub chooseleaf_stable: u8,
}

impl Default for Tunables {
    /// The jewel / optimal profile every Ceph 16 map uses.
    fn default() -> Self {
        Tunables {
            choose_local_tries: 0,
            choose_local_fallback_tries: 0,
            choose_total_tries: 50,
            chooseleaf_descend_once: 1,
            chooseleaf_vary_r: 1,
            straw_calc_version: 1,
            allowed_bucket_algs: 54,
            chooseleaf_stable: 1,
        }
    }
}

impl Tunables {
    /// What a map without encoded tunables means (`set_tunables_legacy`, argonaut).
    pub fn legacy() -> Self {
        Tunables {
            choose_local_tries: 2,
            choose_local_fallback_tries: 5,
            choose_total_tries: 19,
            chooseleaf_descend_once: 0,
            chooseleaf_vary_r: 0,
            straw_calc_version: 0,
            allowed_bucket_algs: (1 << BUCKET_UNIFORM) | (1 << BUCKET_LIST) | (1 << BUCKET_STRAW),
            chooseleaf_stable: 0,
        }
    }
}

/// Alternative weights (one set per result position) and ids for one bucket (`crush_choose_arg`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ChooseArg {
    /// `weight_set[position][item]`, 16.16; the last set serves positions beyond it.
    pub weight_set: Vec<Vec<u32>>,
    /// Replacement item ids for hashing (empty: the bucket's own).
    pub ids: Vec<i32>,
}

/// A `crush_choose_arg_map`: choose args by bucket slot (`-1 - bucket id`).
pub type ChooseArgMap = BTreeMap<u32, ChooseArg>;

/// The choose_args key that applies to pools without their own (`DEFAULT_CHOOSE_ARGS`).
pub const DEFAULT_CHOOSE_ARGS: i64 = -1;

/// A decoded CRUSH map.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CrushMap {
    /// Bucket slots: slot `i` holds bucket `-1 - i`.
    pub buckets: Vec<Option<Bucket>>,
    /// Rules by rule id.
    pub rules: Vec<Option<Rule>>,
    /// Devices are `0..max_devices`.
    pub max_devices: i32,
    pub type_names: BTreeMap<i32, String>,
    /// Names of devices and buckets.
    pub item_names: BTreeMap<i32, String>,
    pub rule_names: BTreeMap<i32, String>,
    pub tunables: Tunables,
    /// Device (or shadow bucket) id → class id.
    pub class_map: BTreeMap<i32, i32>,
    pub class_names: BTreeMap<i32, String>,
    /// Bucket id → (class id → the shadow bucket holding only that class's devices).
    pub class_buckets: BTreeMap<i32, BTreeMap<i32, i32>>,
    /// Weight sets by key (a pool id, or [`DEFAULT_CHOOSE_ARGS`]).
    pub choose_args: BTreeMap<i64, ChooseArgMap>,
}

impl CrushMap {
    /// Decode `CrushWrapper::encode` output (a map exactly, as carried in an OSDMap).
    pub fn decode(bytes: &[u8]) -> Result<CrushMap, DecodeError> {
        decode_map(&mut Decoder::new(bytes))
    }

    /// The bucket with id `id` (< 0).
    pub fn bucket(&self, id: i32) -> Option<&Bucket> {
        let slot = usize::try_from(-1i64 - i64::from(id)).ok()?;
        self.buckets.get(slot)?.as_ref()
    }

    /// A bucket or device id by name.
    pub fn item_id(&self, name: &str) -> Option<i32> {
        self.item_names
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .map(|(id, _)| *id)
    }

    /// A rule id by name.
    pub fn rule_id(&self, name: &str) -> Option<usize> {
        self.rule_names
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .and_then(|(id, _)| usize::try_from(*id).ok())
    }

    /// `crush_find_rule`, as Ceph 16's `CrushWrapper::find_rule` uses it for a pool: the first rule
    /// whose mask matches the pool's `crush_rule` (as ruleset), its type and its size. A pool whose
    /// size is outside its rule's `min_size..=max_size` maps to nothing, as in Ceph 16.
    pub fn find_rule(&self, ruleset: i32, rule_type: i32, size: i32) -> Option<usize> {
        self.rules.iter().position(|r| {
            r.as_ref().is_some_and(|r| {
                i32::from(r.ruleset) == ruleset
                    && i32::from(r.rule_type) == rule_type
                    && i32::from(r.min_size) <= size
                    && i32::from(r.max_size) >= size
            })
        })
    }

    /// The choose_args a pool maps with: its own, else the default set, else none
    /// (`choose_args_get_with_fallback`).
    pub fn choose_args_for(&self, index: i64) -> Option<&ChooseArgMap> {
        self.choose_args
            .get(&index)
            .or_else(|| self.choose_args.get(&DEFAULT_CHOOSE_ARGS))
    }
}

// ---- decoding ----

/// Refuse a count whose elements (at least `min_elem` bytes each) cannot fit in what is left.
fn check_count(
    d: &Decoder<'_>,
    n: usize,
    min_elem: usize,
    what: &'static str,
) -> Result<(), DecodeError> {
    let need = n.saturating_mul(min_elem.max(1));
    if need > d.remaining() {
        return Err(DecodeError::Short {
            what,
            needed: need,
            at: d.position(),
            remaining: d.remaining(),
        });
    }
    Ok(())
}

fn u32_vec(d: &mut Decoder<'_>, n: usize, what: &'static str) -> Result<Vec<u32>, DecodeError> {
    check_count(d, n, 4, what)?;
    (0..n).map(|_| d.u32()).collect()
}

fn decode_bucket(d: &mut Decoder<'_>, slot: usize) -> Result<Option<Bucket>, DecodeError> {
    let alg = d.u32()?;
    if alg == 0 {
        return Ok(None);
    }
    if !(u32::from(BUCKET_UNIFORM)..=u32::from(BUCKET_STRAW2)).contains(&alg) {
        return Err(DecodeError::invalid(
            "crush bucket",
            format!("unsupported bucket algorithm {alg}"),
        ));
    }
    let id = d.i32()?;
    if i64::from(id) != -1 - slot as i64 {
        return Err(DecodeError::invalid(
            "crush bucket",
            format!("bucket id {id} in slot {slot}"),
        ));
    }
    let bucket_type = d.u16()?;
    let inner_alg = d.u8()?;
    if u32::from(inner_alg) != alg {
        return Err(DecodeError::invalid(
            "crush bucket",
            format!("algorithm {inner_alg} after {alg}"),
        ));
    }
    let hash = d.u8()?;
    let weight = d.u32()?;
    let size = d.u32()? as usize;
    check_count(d, size, 4, "crush bucket items")?;
    let items = (0..size).map(|_| d.i32()).collect::<Result<Vec<_>, _>>()?;
    let kind = match inner_alg {
        BUCKET_UNIFORM => BucketKind::Uniform {
            item_weight: d.u32()?,
        },
        BUCKET_LIST => {
            check_count(d, size, 8, "crush list bucket")?;
            let mut item_weights = Vec::with_capacity(size);
            let mut sum_weights = Vec::with_capacity(size);
            for _ in 0..size {
                item_weights.push(d.u32()?);
                sum_weights.push(d.u32()?);
            }
            BucketKind::List {
                item_weights,
                sum_weights,
            }
        }
        BUCKET_TREE => {
            let num_nodes = usize::from(d.u8()?);
            BucketKind::Tree {
                node_weights: u32_vec(d, num_nodes, "crush tree bucket")?,
            }
        }
        BUCKET_STRAW => {
            check_count(d, size, 8, "crush straw bucket")?;
            let mut item_weights = Vec::with_capacity(size);
            let mut straws = Vec::with_capacity(size);
            for _ in 0..size {
                item_weights.push(d.u32()?);
                straws.push(d.u32()?);
            }
            BucketKind::Straw {
                item_weights,
                straws,
            }
        }
        _ => BucketKind::Straw2 {
            item_weights: u32_vec(d, size, "crush straw2 bucket")?,
        },
    };
    Ok(Some(Bucket {
        id,
        bucket_type,
        alg: inner_alg,
        hash,
        weight,
        items,
        kind,
    }))
}

fn decode_rule(d: &mut Decoder<'_>) -> Result<Option<Rule>, DecodeError> {
    if d.u32()? == 0 {
        return Ok(None);
    }
    let len = d.u32()? as usize;
    let ruleset = d.u8()?;
    let rule_type = d.u8()?;
    let min_size = d.u8()?;
    let max_size = d.u8()?;
    check_count(d, len, 12, "crush rule steps")?;
    let steps = (0..len)
        .map(|_| {
            Ok(RuleStep {
                op: d.u32()?,
                arg1: d.i32()?,
                arg2: d.i32()?,
            })
        })
        .collect::<Result<Vec<_>, DecodeError>>()?;
    Ok(Some(Rule {
        ruleset,
        rule_type,
        min_size,
        max_size,
        steps,
    }))
}

/// Ceph's `decode_32_or_64_string_map`: keys were once encoded as 64-bit, which shows as a zero
/// string length (names are never empty); then the real length follows.
fn decode_name_map(d: &mut Decoder<'_>) -> Result<BTreeMap<i32, String>, DecodeError> {
    let n = d.count(8, "crush name map")?;
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let key = d.i32()?;
        let mut len = d.u32()? as usize;
        if len == 0 {
            len = d.u32()? as usize;
        }
        let raw = d.take(len, "crush name")?;
        let name = String::from_utf8(raw.to_vec())
            .map_err(|e| DecodeError::invalid("crush name", e.to_string()))?;
        m.insert(key, name);
    }
    Ok(m)
}

fn decode_i32_map(d: &mut Decoder<'_>) -> Result<BTreeMap<i32, i32>, DecodeError> {
    let n = d.count(8, "crush class map")?;
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let k = d.i32()?;
        m.insert(k, d.i32()?);
    }
    Ok(m)
}

fn decode_choose_args(
    d: &mut Decoder<'_>,
    buckets: &[Option<Bucket>],
) -> Result<BTreeMap<i64, ChooseArgMap>, DecodeError> {
    let n = d.count(12, "crush choose_args")?;
    let mut all = BTreeMap::new();
    for _ in 0..n {
        let key = d.i64()?;
        let nargs = d.count(12, "crush choose_arg_map")?;
        let mut map = ChooseArgMap::new();
        for _ in 0..nargs {
            let slot = d.u32()?;
            let bucket = buckets
                .get(slot as usize)
                .and_then(|b| b.as_ref())
                .ok_or_else(|| {
                    DecodeError::invalid("crush choose_arg", format!("no bucket in slot {slot}"))
                })?;
            let size = bucket.items.len();
            let positions = d.count(4, "crush weight_set")?;
            let mut weight_set = Vec::with_capacity(positions);
            for _ in 0..positions {
                let w = d.vec_u32("crush weight_set weights")?;
                if w.len() != size {
                    return Err(DecodeError::invalid(
                        "crush weight_set",
                        format!("{} weights for {size} items", w.len()),
                    ));
                }
                weight_set.push(w);
            }
            let ids = d.vec_u32("crush choose_arg ids")?;
            if !ids.is_empty() && ids.len() != size {
                return Err(DecodeError::invalid(
                    "crush choose_arg",
                    format!("{} ids for {size} items", ids.len()),
                ));
            }
            let ids = ids.into_iter().map(|v| v as i32).collect();
            map.insert(slot, ChooseArg { weight_set, ids });
        }
        all.insert(key, map);
    }
    Ok(all)
}

fn decode_map(d: &mut Decoder<'_>) -> Result<CrushMap, DecodeError> {
    let magic = d.u32()?;
    if magic != CRUSH_MAGIC {
        return Err(DecodeError::invalid(
            "crush map",
            format!("bad magic {magic:#x}"),
        ));
    }
    let max_buckets = d.i32()?;
    let max_rules = d.u32()?;
    let max_devices = d.i32()?;
    let nb = usize::try_from(max_buckets)
        .map_err(|_| DecodeError::invalid("crush map", format!("max_buckets {max_buckets}")))?;
    if max_devices < 0 {
        return Err(DecodeError::invalid(
            "crush map",
            format!("max_devices {max_devices}"),
        ));
    }
    check_count(d, nb, 4, "crush buckets")?;
    let buckets = (0..nb)
        .map(|slot| decode_bucket(d, slot))
        .collect::<Result<Vec<_>, _>>()?;
    check_count(d, max_rules as usize, 4, "crush rules")?;
    let rules = (0..max_rules)
        .map(|_| decode_rule(d))
        .collect::<Result<Vec<_>, _>>()?;
    let type_names = decode_name_map(d)?;
    let item_names = decode_name_map(d)?;
    let rule_names = decode_name_map(d)?;
    let mut map = CrushMap {
        buckets,
        rules,
        max_devices,
        type_names,
        item_names,
        rule_names,
        tunables: Tunables::legacy(),
        ..CrushMap::default()
    };
    // Tunables and the rest were appended over the years: each group is present only if bytes remain.
    let t = &mut map.tunables;
    if d.remaining() > 0 {
        t.choose_local_tries = d.u32()?;
        t.choose_local_fallback_tries = d.u32()?;
        t.choose_total_tries = d.u32()?;
    }
    if d.remaining() > 0 {
        t.chooseleaf_descend_once = d.u32()?;
    }
    if d.remaining() > 0 {
        t.chooseleaf_vary_r = d.u8()?;
    }
    if d.remaining() > 0 {
        t.straw_calc_version = d.u8()?;
    }
    if d.remaining() > 0 {
        t.allowed_bucket_algs = d.u32()?;
    }
    if d.remaining() > 0 {
        t.chooseleaf_stable = d.u8()?;
    }
    if d.remaining() > 0 {
        map.class_map = decode_i32_map(d)?;
        map.class_names = decode_name_map(d)?;
        let n = d.count(8, "crush class_bucket")?;
        for _ in 0..n {
            let k = d.i32()?;
            map.class_buckets.insert(k, decode_i32_map(d)?);
        }
    }
    if d.remaining() > 0 {
        map.choose_args = decode_choose_args(d, &map.buckets)?;
    }
    // Newer releases append MSR tunables; Ceph 16 mappings ignore them.
    Ok(map)
}

#[cfg(test)]
mod tests;

/// The crushtool map of tests/data/crush (for unit tests elsewhere in `rados`).
#[cfg(test)]
pub(crate) fn tests_map() -> &'static [u8] {
    tests::MAP
}
