//! `crush_ln`: straw2's fixed-point logarithm, 2^44·log2(x+1) for x in 0..=0xffff, from two tables.
//!
//! The tables are computed here from their definitions with exact integer arithmetic (a 78-bit
//! fixed-point atanh series for the logarithms; the reciprocals are exact integer divisions):
//! - `RH[k] = ⌈2^48 / (1 + k/128)⌉` and `LH[k] = ⌊2^48·log2(1 + k/128)⌋` for k in 0..=128;
//! - `LL[k] = ⌊2^48·log2(1 + k/2^15)⌋` for k in 0..256.
//!
//! Ceph's `crush_ln_table.h` follows those definitions for every `RH` entry and every `LH` entry but the
//! last, and for only some `LL` entries; mappings must be bit-identical to Ceph's, so the places where
//! Ceph's shipped table departs from its definition are reproduced explicitly below
//! (`LH_LAST`, `LL_SHIFT`, `LL_UNSHIFTED`, `LL_CEPH_VALUES`): 212 of the 256 `LL` entries are
//! the definition plus a constant, 21 the definition itself, 23 follow no formula. A unit test checks
//! both tables, entry for entry, against a SHA-256 of Ceph's shipped tables; the oracle tests
//! (`tests/crush_oracle.rs`) compare whole straw2 mappings with Ceph's `crushtool`.

use std::sync::OnceLock;

/// Fractional bits of the fixed-point logarithms.
const FRAC_BITS: u32 = 78;

/// ln(num/den) · 2^FRAC_BITS, truncated, for num > den > 0 with num/den ≤ 2: the series
/// ln(num/den) = 2·Σ z^(2n+1)/(2n+1) with z = (num−den)/(num+den) ≤ 1/3.
fn ln_ratio_fixed(num: u128, den: u128) -> u128 {
    let p = num - den;
    let q = num + den;
    let (p2, q2) = (p * p, q * q);
    let mut zpow = (p << FRAC_BITS) / q;
    let mut sum = 0u128;
    let mut n = 0u128;
    while zpow != 0 {
        sum += zpow / (2 * n + 1);
        zpow = zpow * p2 / q2;
        n += 1;
    }
    2 * sum
}

/// ⌊2^48 · log2(num/den)⌋.
fn log2_scaled_48(num: u128, den: u128, ln2: u128) -> u64 {
    if num == den {
        return 0;
    }
    ((ln_ratio_fixed(num, den) << 48) / ln2) as u64
}

/// Ceph's last `LH` entry is 2^48 − 2^32 where its definition gives 2^48.
const LH_LAST: u64 = 0x0000_ffff_0000_0000;

/// Most of Ceph's `LL` entries are their definition plus this constant.
const LL_SHIFT: u64 = 0x1_4770_0000;

/// `LL` entries that are exactly their definition, without [`LL_SHIFT`].
const LL_UNSHIFTED: [usize; 21] = [
    0, 1, 203, 216, 222, 233, 237, 238, 239, 243, 244, 245, 246, 248, 249, 250, 251, 252, 253, 254,
    255,
];

/// `LL` entries of Ceph's table that follow no formula (as shipped in `crush_ln_table.h`).
const LL_CEPH_VALUES: [(usize, u64); 23] = [
    (56, 0xa2_b07f_3458),
    (127, 0x16d_f6ca_19bd),
    (134, 0x182_b07f_3458),
    (181, 0x209_c06e_6212),
    (184, 0x212_b07f_3458),
    (188, 0x21d_6a73_a78f),
    (193, 0x22c_2367_9b4e),
    (198, 0x23a_2c3b_0ea4),
    (199, 0x23d_13ee_805b),
    (200, 0x240_35e9_221f),
    (207, 0x254_9264_4d65),
    (210, 0x25d_13ee_805b),
    (212, 0x262_9645_3882),
    (225, 0x287_bdbf_5255),
    (227, 0x28d_13ee_805b),
    (228, 0x290_35e9_221f),
    (229, 0x292_9645_3882),
    (231, 0x299_02a3_7aab),
    (235, 0x2a4_c760_5d61),
    (236, 0x2a7_bdbf_5255),
    (240, 0x2b2_9645_3882),
    (241, 0x2b5_d022_d80f),
    (247, 0x2c6_1a5e_8f4c),
];

struct Tables {
    /// `RH[k], LH[k]` interleaved, k in 0..=128 (Ceph's `__RH_LH_tbl` layout).
    rh_lh: [u64; 258],
    ll: [u64; 256],
}

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let ln2 = ln_ratio_fixed(2, 1);
        let mut rh_lh = [0u64; 258];
        for k in 0..=128u128 {
            let den = 128 + k;
            let i = 2 * k as usize;
            rh_lh[i] = (1u128 << 55).div_ceil(den) as u64;
            rh_lh[i + 1] = log2_scaled_48(den, 128, ln2);
        }
        rh_lh[257] = LH_LAST;
        let mut ll = [0u64; 256];
        for (k, e) in ll.iter_mut().enumerate() {
            *e = log2_scaled_48((1 << 15) + k as u128, 1 << 15, ln2) + LL_SHIFT;
        }
        for &k in &LL_UNSHIFTED {
            ll[k] -= LL_SHIFT;
        }
        for &(k, v) in &LL_CEPH_VALUES {
            ll[k] = v;
        }
        Tables { rh_lh, ll }
    })
}

/// `crush_ln(xin)`: 2^44·log2(xin+1), in Ceph's fixed point (using Ceph's tables, see the module doc).
pub fn crush_ln(xin: u32) -> u64 {
    let t = tables();
    let mut x = (xin & 0xffff) + 1;
    let mut iexpon: u64 = 15;
    if x & 0x18000 == 0 {
        // Normalise x into [0x8000, 0x10000) in one shift.
        let bits = (x & 0x1ffff).leading_zeros() - 16;
        x <<= bits;
        iexpon = 15 - u64::from(bits);
    }
    let k2 = (((x >> 8) << 1) - 256) as usize;
    let rh = t.rh_lh[k2];
    let lh = t.rh_lh[k2 + 1];
    // x·RH ≈ 2^48·(2^15 + xf); Ceph multiplies as unsigned 64-bit (it can reach 2^63).
    let xl64 = u64::from(x).wrapping_mul(rh) >> 48;
    let ll = t.ll[(xl64 & 0xff) as usize];
    (iexpon << 44) + (lh.wrapping_add(ll) >> 4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn sha256_le(v: &[u64]) -> String {
        let mut h = Sha256::new();
        for x in v {
            h.update(x.to_le_bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Every entry equals Ceph 16's `crush_ln_table.h`: SHA-256 of its two tables as little-endian
    /// u64s (`__RH_LH_tbl`, then `__LL_tbl`).
    #[test]
    fn tables_equal_cephs_entry_for_entry() {
        let t = tables();
        assert_eq!(
            sha256_le(&t.rh_lh),
            "304b097c8de73930d785af5802b1f6b4e9827a69175038f910f6120565e8364c"
        );
        assert_eq!(
            sha256_le(&t.ll),
            "56fecbea65b1d35d0d20f0327d783a870652a56356e9a5326b6ab16d6c31b6ca"
        );
    }

    #[test]
    fn definition_spot_values() {
        let t = tables();
        // RH[0] = 2^48, RH[128] = 2^47; LH[0] = 0; LL[0] = 0.
        assert_eq!(t.rh_lh[0], 1 << 48);
        assert_eq!(t.rh_lh[256], 1 << 47);
        assert_eq!(t.rh_lh[1], 0);
        assert_eq!(t.ll[0], 0);
        // RH[64] = ⌈2^48 / 1.5⌉ = ⌈0xaaaa_aaaa_aaaa.aa…⌉.
        assert_eq!(t.rh_lh[128], 0xaaaa_aaaa_aaab);
        // LH[64] = ⌊2^48·log2(1.5)⌋: log2(1.5) = 0.584962500721156…
        let approx = (0.584_962_500_721_156_2_f64 * (1u64 << 48) as f64) as i64;
        assert!((t.rh_lh[129] as i64 - approx).abs() < 64);
    }

    #[test]
    fn ln_is_close_to_its_real_value() {
        // Ceph's table departures are all far below 2^33 once scaled (2^44 is one unit of log2).
        for x in 0..=0xffffu32 {
            let real = ((x + 1) as f64).log2() * (1u64 << 44) as f64;
            let err = (crush_ln(x) as f64 - real).abs();
            assert!(err < (1u64 << 33) as f64, "x={x} err={err}");
        }
        assert_eq!(crush_ln(0), 0);
        assert!(crush_ln(0xffff) <= 16 << 44);
    }
}
