//! The CRUSH mapper: `crush_do_rule` and the bucket choose functions, as Ceph 16's `mapper.c` computes
//! them, so that every placement equals Ceph's bit for bit.
//!
//! Invariants: never panics and always terminates on any decoded map (a draw that lands on a missing
//! bucket, or descends more levels than there are buckets, counts as a failed draw); all arithmetic
//! on `r`, `x` and hashes wraps as Ceph's C does on 32 bits. A mapping makes at most [`DRAW_BUDGET`]
//! bucket draws: a hostile rule (a huge replica count or try count over devices that all fail) stops
//! there with what it has, where Ceph would spin for minutes.

use super::hash::{hash32_2, hash32_3, hash32_4};
use super::ln::crush_ln;
use super::{
    op, Bucket, BucketKind, ChooseArg, ChooseArgMap, CrushMap, BUCKET_UNIFORM, CRUSH_ITEM_NONE,
};

/// Marks a not-yet-chosen position during indep selection.
const ITEM_UNDEF: i32 = 0x7fff_fffe;

/// Bucket draws one mapping may make. Real maps need a few thousand at most (an erasure rule of 20
/// shards with 100 tries over a 4-level hierarchy needs ~16 000).
pub const DRAW_BUDGET: u32 = 1 << 20;

/// A permutation in progress for one bucket (`crush_work_bucket`), reset when `x` changes.
#[derive(Clone, Default)]
struct Perm {
    x: u32,
    n: u32,
    perm: Vec<u32>,
}

/// Per-call scratch state: the uniform / fallback permutations, by bucket slot.
struct Work<'a> {
    map: &'a CrushMap,
    weights: &'a [u32],
    choose_args: Option<&'a ChooseArgMap>,
    perms: Vec<Perm>,
    /// Draws left before the mapping gives up (see [`DRAW_BUDGET`]).
    draws_left: u32,
}

/// Parameters of one choose step that stay fixed through its recursion.
#[derive(Clone, Copy)]
struct Step {
    x: i32,
    local_retries: u32,
    local_fallback_retries: u32,
    vary_r: u32,
    stable: bool,
}

impl<'a> Work<'a> {
    fn bucket(&self, item: i32) -> Option<&'a Bucket> {
        self.map.bucket(item)
    }

    fn choose_arg(&self, b: &Bucket) -> Option<&'a ChooseArg> {
        let slot = u32::try_from(-1i64 - i64::from(b.id)).ok()?;
        self.choose_args?.get(&slot)
    }

    /// `bucket_perm_choose`: the `r`-th entry of a pseudo-random permutation of the bucket's items.
    fn perm_choose(&mut self, b: &Bucket, x: i32, r: i32) -> i32 {
        let size = b.items.len() as u32;
        if size == 0 {
            return CRUSH_ITEM_NONE;
        }
        let slot = (-1i64 - i64::from(b.id)) as usize;
        if self.perms.is_empty() {
            self.perms = vec![Perm::default(); self.map.buckets.len()];
        }
        let Some(w) = self.perms.get_mut(slot) else {
            return CRUSH_ITEM_NONE;
        };
        if w.perm.len() != size as usize {
            w.perm = vec![0; size as usize];
            w.n = 0;
        }
        let pr = (r as u32) % size;
        let hash = |p: u32| hash32_3(x as u32, b.id as u32, p);
        let s;
        if w.x != x as u32 || w.n == 0 {
            w.x = x as u32;
            if pr == 0 {
                // The common r = 0 case: one draw, finish the permutation lazily later.
                s = hash(0) % size;
                w.perm[0] = s;
                w.n = 0xffff;
                return b.items[s as usize];
            }
            for (i, p) in w.perm.iter_mut().enumerate() {
                *p = i as u32;
            }
            w.n = 0;
        } else if w.n == 0xffff {
            for (i, p) in w.perm.iter_mut().enumerate().skip(1) {
                *p = i as u32;
            }
            let first = w.perm[0] as usize;
            w.perm[first] = 0;
            w.n = 1;
        }
        while w.n <= pr {
            let p = w.n;
            if p < size - 1 {
                let i = hash(p) % (size - p);
                if i != 0 {
                    w.perm.swap(p as usize, (p + i) as usize);
                }
            }
            w.n += 1;
        }
        s = w.perm[pr as usize];
        b.items[s as usize]
    }

    fn exhausted(&self) -> bool {
        self.draws_left == 0
    }

    /// Count one draw; false once the budget is spent.
    fn spend_draw(&mut self) -> bool {
        if self.draws_left == 0 {
            return false;
        }
        self.draws_left -= 1;
        true
    }

    /// `crush_bucket_choose`: one draw from bucket `b` for input `x`, replica rank `r`.
    fn bucket_choose(&mut self, b: &Bucket, x: i32, r: i32, position: usize) -> i32 {
        if b.items.is_empty() || !self.spend_draw() {
            return CRUSH_ITEM_NONE;
        }
        let (xu, ru, id) = (x as u32, r as u32, b.id as u32);
        match &b.kind {
            BucketKind::Uniform { .. } => self.perm_choose(b, x, r),
            BucketKind::List {
                item_weights,
                sum_weights,
            } => {
                for i in (0..b.items.len()).rev() {
                    let mut w = u64::from(hash32_4(xu, b.items[i] as u32, ru, id) & 0xffff);
                    w = (w * u64::from(sum_weights[i])) >> 16;
                    if w < u64::from(item_weights[i]) {
                        return b.items[i];
                    }
                }
                b.items[0]
            }
            BucketKind::Tree { node_weights } => {
                let mut n = node_weights.len() >> 1;
                // Descend from the root; each level halves the distance to the leaves.
                while n & 1 == 0 {
                    if n == 0 {
                        return b.items[0];
                    }
                    let h = n.trailing_zeros();
                    let w = u64::from(node_weights.get(n).copied().unwrap_or(0));
                    let t = (u64::from(hash32_4(xu, n as u32, ru, id)) * w) >> 32;
                    let left = n - (1 << (h - 1));
                    let lw = u64::from(node_weights.get(left).copied().unwrap_or(0));
                    n = if t < lw { left } else { n + (1 << (h - 1)) };
                }
                b.items.get(n >> 1).copied().unwrap_or(CRUSH_ITEM_NONE)
            }
            BucketKind::Straw {
                item_weights: _,
                straws,
            } => {
                let mut high = 0;
                let mut high_draw = 0u64;
                for (i, &item) in b.items.iter().enumerate() {
                    let draw =
                        u64::from(hash32_3(xu, item as u32, ru) & 0xffff) * u64::from(straws[i]);
                    if i == 0 || draw > high_draw {
                        high = i;
                        high_draw = draw;
                    }
                }
                b.items[high]
            }
            BucketKind::Straw2 { item_weights } => {
                let arg = self.choose_arg(b);
                let weights = arg
                    .and_then(|a| {
                        let last = a.weight_set.len().checked_sub(1)?;
                        a.weight_set.get(position.min(last))
                    })
                    .unwrap_or(item_weights);
                let ids = arg
                    .map(|a| &a.ids)
                    .filter(|ids| !ids.is_empty())
                    .unwrap_or(&b.items);
                let mut high = 0;
                let mut high_draw = 0i64;
                for i in 0..b.items.len() {
                    let draw = match weights[i] {
                        0 => i64::MIN,
                        w => {
                            let u = hash32_3(xu, ids[i] as u32, ru) & 0xffff;
                            // ln(u/0x10000) in 2^44 units: ≤ 0, so heavier items draw larger.
                            let ln = crush_ln(u) as i64 - 0x1_0000_0000_0000;
                            ln / i64::from(w)
                        }
                    };
                    if i == 0 || draw > high_draw {
                        high = i;
                        high_draw = draw;
                    }
                }
                b.items[high]
            }
        }
    }

    /// `is_out`: whether device `item` is rejected by its reweight (16.16) for input `x`.
    fn is_out(&self, item: i32, x: i32) -> bool {
        let Some(&w) = usize::try_from(item).ok().and_then(|i| self.weights.get(i)) else {
            return true;
        };
        if w >= 0x10000 {
            return false;
        }
        if w == 0 {
            return true;
        }
        (hash32_2(x as u32, item as u32) & 0xffff) >= w
    }

    /// The type of `item` (0 for devices), or `None` for a bucket that does not exist.
    fn item_type(&self, item: i32) -> Option<i32> {
        if item >= 0 {
            Some(0)
        } else {
            self.bucket(item).map(|b| i32::from(b.bucket_type))
        }
    }

    /// `crush_choose_firstn`: fill `out[outpos..]` with up to `numrep - outpos` distinct items of the
    /// step's type (and, for chooseleaf, one device under each into `out2`); returns the new `outpos`.
    #[allow(clippy::too_many_arguments)]
    fn choose_firstn(
        &mut self,
        bucket: &'a Bucket,
        s: &Step,
        numrep: i32,
        item_type: i32,
        out: &mut [i32],
        mut outpos: usize,
        mut count: usize,
        tries: u32,
        recurse_tries: u32,
        recurse_to_leaf: bool,
        mut out2: Option<&mut [i32]>,
        parent_r: i32,
    ) -> usize {
        let max_depth = self.map.buckets.len() + 1;
        let mut rep: i32 = if s.stable { 0 } else { outpos as i32 };
        while rep < numrep && count > 0 && !self.exhausted() {
            let mut ftotal: u32 = 0;
            let mut skip_rep = false;
            let mut item = 0;
            'descent: loop {
                let mut inb = bucket;
                let mut flocal: u32 = 0;
                let mut depth = 0;
                loop {
                    let mut collide = false;
                    let r = rep.wrapping_add(parent_r).wrapping_add(ftotal as i32);
                    let reject;
                    let mut retry_bucket = false;
                    'choose: {
                        if inb.items.is_empty() {
                            reject = true;
                            break 'choose;
                        }
                        let size = inb.items.len() as u32;
                        item = if s.local_fallback_retries > 0
                            && flocal >= (size >> 1)
                            && flocal > s.local_fallback_retries
                        {
                            if self.spend_draw() {
                                self.perm_choose(inb, s.x, r)
                            } else {
                                CRUSH_ITEM_NONE
                            }
                        } else {
                            self.bucket_choose(inb, s.x, r, outpos)
                        };
                        if item >= self.map.max_devices {
                            skip_rep = true;
                            break 'descent;
                        }
                        let Some(itype) = self.item_type(item) else {
                            skip_rep = true;
                            break 'descent;
                        };
                        if itype != item_type {
                            depth += 1;
                            match self.bucket(item) {
                                Some(next) if item < 0 && depth <= max_depth => {
                                    inb = next;
                                    retry_bucket = true;
                                    reject = false;
                                    break 'choose;
                                }
                                _ => {
                                    skip_rep = true;
                                    break 'descent;
                                }
                            }
                        }
                        collide = out[..outpos].contains(&item);
                        let mut rej = false;
                        if !collide && recurse_to_leaf {
                            if item < 0 {
                                let sub_r = if s.vary_r > 0 {
                                    r >> (s.vary_r - 1).min(31)
                                } else {
                                    0
                                };
                                let leaf_numrep = if s.stable { 1 } else { outpos as i32 + 1 };
                                let got = match (self.bucket(item), out2.as_deref_mut()) {
                                    (Some(sub), Some(o2)) => self.choose_firstn(
                                        sub,
                                        s,
                                        leaf_numrep,
                                        0,
                                        o2,
                                        outpos,
                                        count,
                                        recurse_tries,
                                        0,
                                        false,
                                        None,
                                        sub_r,
                                    ),
                                    _ => outpos,
                                };
                                if got <= outpos {
                                    rej = true;
                                }
                            } else if let Some(o2) = out2.as_deref_mut() {
                                o2[outpos] = item;
                            }
                        }
                        if !rej && !collide && itype == 0 {
                            rej = self.is_out(item, s.x);
                        }
                        reject = rej;
                    }
                    if reject || collide {
                        ftotal += 1;
                        flocal += 1;
                        let size = inb.items.len() as u32;
                        // First retry locally (collisions), then an exhaustive search of this
                        // bucket (fallback), then a new descent from the top.
                        let local = collide && flocal <= s.local_retries;
                        let fallback = s.local_fallback_retries > 0
                            && flocal <= size.saturating_add(s.local_fallback_retries);
                        if local || fallback {
                            retry_bucket = true;
                        } else if ftotal < tries {
                            continue 'descent;
                        } else {
                            skip_rep = true;
                            break 'descent;
                        }
                    }
                    if !retry_bucket {
                        break 'descent;
                    }
                }
            }
            if !skip_rep {
                out[outpos] = item;
                outpos += 1;
                count -= 1;
            }
            rep += 1;
        }
        outpos
    }

    /// `crush_choose_indep`: positionally stable selection into `out[outpos..outpos + left]`, failed
    /// positions left as [`CRUSH_ITEM_NONE`].
    #[allow(clippy::too_many_arguments)]
    fn choose_indep(
        &mut self,
        bucket: &'a Bucket,
        s: &Step,
        left: usize,
        numrep: i32,
        item_type: i32,
        out: &mut [i32],
        outpos: usize,
        tries: u32,
        recurse_tries: u32,
        recurse_to_leaf: bool,
        mut out2: Option<&mut [i32]>,
        parent_r: i32,
    ) {
        let endpos = outpos + left;
        let mut left = left;
        let max_depth = self.map.buckets.len() + 1;
        for rep in outpos..endpos {
            out[rep] = ITEM_UNDEF;
            if let Some(o2) = out2.as_deref_mut() {
                o2[rep] = ITEM_UNDEF;
            }
        }
        let mut ftotal: u32 = 0;
        while left > 0 && ftotal < tries && !self.exhausted() {
            for rep in outpos..endpos {
                if out[rep] != ITEM_UNDEF {
                    continue;
                }
                let mut inb = bucket;
                let mut depth = 0;
                loop {
                    let mut r = (rep as i32).wrapping_add(parent_r);
                    let n = if inb.alg == BUCKET_UNIFORM
                        && numrep != 0
                        && (inb.items.len() as i64) % i64::from(numrep) == 0
                    {
                        numrep.wrapping_add(1)
                    } else {
                        numrep
                    };
                    r = r.wrapping_add(n.wrapping_mul(ftotal as i32));
                    if inb.items.is_empty() {
                        break;
                    }
                    let item = self.bucket_choose(inb, s.x, r, outpos);
                    let fail = |out: &mut [i32], out2: &mut Option<&mut [i32]>| {
                        out[rep] = CRUSH_ITEM_NONE;
                        if let Some(o2) = out2.as_deref_mut() {
                            o2[rep] = CRUSH_ITEM_NONE;
                        }
                    };
                    if item >= self.map.max_devices {
                        fail(out, &mut out2);
                        left -= 1;
                        break;
                    }
                    let itype = self.item_type(item);
                    if itype != Some(item_type) {
                        depth += 1;
                        match self.bucket(item) {
                            Some(next) if item < 0 && depth <= max_depth => {
                                inb = next;
                                continue;
                            }
                            _ => {
                                fail(out, &mut out2);
                                left -= 1;
                                break;
                            }
                        }
                    }
                    if out[outpos..endpos].contains(&item) {
                        break;
                    }
                    if recurse_to_leaf {
                        if item < 0 {
                            if let (Some(sub), Some(o2)) = (self.bucket(item), out2.as_deref_mut())
                            {
                                self.choose_indep(
                                    sub,
                                    s,
                                    1,
                                    numrep,
                                    0,
                                    o2,
                                    rep,
                                    recurse_tries,
                                    0,
                                    false,
                                    None,
                                    r,
                                );
                                if o2[rep] == CRUSH_ITEM_NONE {
                                    break;
                                }
                            }
                        } else if let Some(o2) = out2.as_deref_mut() {
                            o2[rep] = item;
                        }
                    }
                    if item_type == 0 && self.is_out(item, s.x) {
                        break;
                    }
                    out[rep] = item;
                    left -= 1;
                    break;
                }
            }
            ftotal += 1;
        }
        for rep in outpos..endpos {
            if out[rep] == ITEM_UNDEF {
                out[rep] = CRUSH_ITEM_NONE;
            }
            if let Some(o2) = out2.as_deref_mut() {
                if o2[rep] == ITEM_UNDEF {
                    o2[rep] = CRUSH_ITEM_NONE;
                }
            }
        }
    }
}

/// Results are at most this long (a pool's size is a `u8`).
const MAX_RESULT: usize = 256;

impl CrushMap {
    /// `crush_do_rule`: map input `x` through rule `rule`, with up to `result_max` results, device
    /// reweights `weights` (16.16, indexed by device id; a device beyond it is out) and optional
    /// choose_args. Indep rules leave [`CRUSH_ITEM_NONE`] holes. A missing rule maps to nothing.
    pub fn do_rule(
        &self,
        rule: usize,
        x: i32,
        result_max: usize,
        weights: &[u32],
        choose_args: Option<&ChooseArgMap>,
    ) -> Vec<i32> {
        let result_max = result_max.min(MAX_RESULT);
        let mut result = Vec::with_capacity(result_max);
        let Some(Some(rule)) = self.rules.get(rule) else {
            return result;
        };
        let mut work = Work {
            map: self,
            weights,
            choose_args,
            perms: Vec::new(),
            draws_left: DRAW_BUDGET,
        };
        let t = &self.tunables;
        // Ceph's choose_total_tries counted retries; the mapper counts tries.
        let mut choose_tries = t.choose_total_tries.wrapping_add(1);
        let mut choose_leaf_tries: u32 = 0;
        let mut local_retries = t.choose_local_tries;
        let mut local_fallback_retries = t.choose_local_fallback_tries;
        let mut vary_r = u32::from(t.chooseleaf_vary_r);
        let mut stable = u32::from(t.chooseleaf_stable);

        // The working set and the two output buffers live on the stack (3 KiB): no allocation
        // per mapping but the result.
        let mut w_buf = [0i32; MAX_RESULT];
        let mut w_len = 0usize;
        let mut o_buf = [0i32; MAX_RESULT];
        let mut c_buf = [0i32; MAX_RESULT];
        let o = &mut o_buf[..result_max];
        let c = &mut c_buf[..result_max];

        for step in &rule.steps {
            let (a1, a2) = (step.arg1, step.arg2);
            match step.op {
                op::TAKE => {
                    let valid = if a1 >= 0 {
                        a1 < self.max_devices
                    } else {
                        self.bucket(a1).is_some()
                    };
                    if valid {
                        w_buf[0] = a1;
                        w_len = 1;
                    }
                }
                op::SET_CHOOSE_TRIES if a1 > 0 => choose_tries = a1 as u32,
                op::SET_CHOOSELEAF_TRIES if a1 > 0 => choose_leaf_tries = a1 as u32,
                op::SET_CHOOSE_LOCAL_TRIES if a1 >= 0 => local_retries = a1 as u32,
                op::SET_CHOOSE_LOCAL_FALLBACK_TRIES if a1 >= 0 => {
                    local_fallback_retries = a1 as u32
                }
                op::SET_CHOOSELEAF_VARY_R if a1 >= 0 => vary_r = a1 as u32,
                op::SET_CHOOSELEAF_STABLE if a1 >= 0 => stable = a1 as u32,
                op::CHOOSE_FIRSTN
                | op::CHOOSELEAF_FIRSTN
                | op::CHOOSE_INDEP
                | op::CHOOSELEAF_INDEP => {
                    if w_len == 0 {
                        continue;
                    }
                    let firstn = matches!(step.op, op::CHOOSE_FIRSTN | op::CHOOSELEAF_FIRSTN);
                    let recurse_to_leaf =
                        matches!(step.op, op::CHOOSELEAF_FIRSTN | op::CHOOSELEAF_INDEP);
                    let mut osize = 0usize;
                    for &wi in &w_buf[..w_len] {
                        let mut numrep = a1;
                        if numrep <= 0 {
                            numrep = numrep.saturating_add(result_max as i32);
                            if numrep <= 0 {
                                continue;
                            }
                        }
                        let Some(b) = (if wi < 0 { self.bucket(wi) } else { None }) else {
                            continue;
                        };
                        let s = Step {
                            x,
                            local_retries,
                            local_fallback_retries,
                            vary_r,
                            stable: stable != 0,
                        };
                        let room = result_max - osize;
                        if firstn {
                            let recurse_tries = if choose_leaf_tries > 0 {
                                choose_leaf_tries
                            } else if t.chooseleaf_descend_once != 0 {
                                1
                            } else {
                                choose_tries
                            };
                            let got = work.choose_firstn(
                                b,
                                &s,
                                numrep,
                                a2,
                                &mut o[osize..],
                                0,
                                room,
                                choose_tries,
                                recurse_tries,
                                recurse_to_leaf,
                                Some(&mut c[osize..]),
                                0,
                            );
                            osize += got;
                        } else {
                            let out_size = (numrep as usize).min(room);
                            work.choose_indep(
                                b,
                                &s,
                                out_size,
                                numrep,
                                a2,
                                &mut o[osize..],
                                0,
                                choose_tries,
                                if choose_leaf_tries > 0 {
                                    choose_leaf_tries
                                } else {
                                    1
                                },
                                recurse_to_leaf,
                                Some(&mut c[osize..]),
                                0,
                            );
                            osize += out_size;
                        }
                    }
                    if recurse_to_leaf {
                        o[..osize].copy_from_slice(&c[..osize]);
                    }
                    w_buf[..osize].copy_from_slice(&o[..osize]);
                    w_len = osize;
                }
                op::EMIT => {
                    for &item in &w_buf[..w_len] {
                        if result.len() >= result_max {
                            break;
                        }
                        result.push(item);
                    }
                    w_len = 0;
                }
                _ => {}
            }
        }
        result
    }
}
