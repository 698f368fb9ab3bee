//! The hashes placement is built on: CRUSH's `rjenkins1` integer hashes (`crush_hash32_2/3/4`) and the
//! object-name string hashes a pool selects with its `object_hash` (`rjenkins` and `linux` dcache).
//!
//! All arithmetic is modulo 2^32, as in Ceph (Robert Jenkins' 96-bit mix).

/// CRUSH's only hash type (`CRUSH_HASH_RJENKINS1`).
pub const CRUSH_HASH_RJENKINS1: u8 = 0;

const SEED: u32 = 1_315_423_911;
const X: u32 = 231_232;
const Y: u32 = 1232;

/// Jenkins' mix of three 32-bit words; `c` carries the result.
#[inline]
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    macro_rules! step {
        ($p:ident, $q:ident, $r:ident, $dir:tt, $s:expr) => {
            *$p = $p.wrapping_sub(*$q).wrapping_sub(*$r) ^ (*$r $dir $s);
        };
    }
    step!(a, b, c, >>, 13);
    step!(b, c, a, <<, 8);
    step!(c, a, b, >>, 13);
    step!(a, b, c, >>, 12);
    step!(b, c, a, <<, 16);
    step!(c, a, b, >>, 5);
    step!(a, b, c, >>, 3);
    step!(b, c, a, <<, 10);
    step!(c, a, b, >>, 15);
}

/// `crush_hash32_2(RJENKINS1, a, b)`.
pub fn hash32_2(a: u32, b: u32) -> u32 {
    let (mut a, mut b) = (a, b);
    let mut h = SEED ^ a ^ b;
    let (mut x, mut y) = (X, Y);
    mix(&mut a, &mut b, &mut h);
    mix(&mut x, &mut a, &mut h);
    mix(&mut b, &mut y, &mut h);
    h
}

/// `crush_hash32_3(RJENKINS1, a, b, c)`.
pub fn hash32_3(a: u32, b: u32, c: u32) -> u32 {
    let (mut a, mut b, mut c) = (a, b, c);
    let mut h = SEED ^ a ^ b ^ c;
    let (mut x, mut y) = (X, Y);
    mix(&mut a, &mut b, &mut h);
    mix(&mut c, &mut x, &mut h);
    mix(&mut y, &mut a, &mut h);
    mix(&mut b, &mut x, &mut h);
    mix(&mut y, &mut c, &mut h);
    h
}

/// `crush_hash32_4(RJENKINS1, a, b, c, d)`.
pub fn hash32_4(a: u32, b: u32, c: u32, d: u32) -> u32 {
    let (mut a, mut b, mut c, mut d) = (a, b, c, d);
    let mut h = SEED ^ a ^ b ^ c ^ d;
    let (mut x, mut y) = (X, Y);
    mix(&mut a, &mut b, &mut h);
    mix(&mut c, &mut d, &mut h);
    mix(&mut a, &mut x, &mut h);
    mix(&mut y, &mut b, &mut h);
    mix(&mut c, &mut x, &mut h);
    mix(&mut y, &mut d, &mut h);
    h
}

/// `ceph_str_hash_rjenkins`: Jenkins' lookup2 over the bytes, 12 at a time, the length folded into `c`.
pub fn str_hash_rjenkins(s: &[u8]) -> u32 {
    let word = |k: &[u8]| -> u32 {
        k.iter().enumerate().fold(0u32, |acc, (i, &byte)| {
            acc.wrapping_add(u32::from(byte) << (8 * i))
        })
    };
    let mut a: u32 = 0x9e37_79b9;
    let mut b: u32 = a;
    let mut c: u32 = 0;
    let mut chunks = s.chunks_exact(12);
    for k in &mut chunks {
        a = a.wrapping_add(word(&k[0..4]));
        b = b.wrapping_add(word(&k[4..8]));
        c = c.wrapping_add(word(&k[8..12]));
        mix(&mut a, &mut b, &mut c);
    }
    let tail = chunks.remainder();
    // Ceph adds the length as a u32 (it wraps for inputs of 4 GiB and more).
    c = c.wrapping_add(s.len() as u32);
    let (ta, rest) = tail.split_at(tail.len().min(4));
    let (tb, tc) = rest.split_at(rest.len().min(4));
    a = a.wrapping_add(word(ta));
    b = b.wrapping_add(word(tb));
    // The first byte of c is reserved for the length: the tail's bytes 8..11 land one byte up.
    c = c.wrapping_add(word(tc) << 8);
    mix(&mut a, &mut b, &mut c);
    c
}

/// `ceph_str_hash_linux`: the Linux dcache hash.
pub fn str_hash_linux(s: &[u8]) -> u32 {
    s.iter().fold(0u32, |h, &c| {
        let c = u32::from(c);
        h.wrapping_add(c << 4).wrapping_add(c >> 4).wrapping_mul(11)
    })
}

/// A pool's `object_hash` values (`CEPH_STR_HASH_*`).
pub const STR_HASH_LINUX: u8 = 1;
pub const STR_HASH_RJENKINS: u8 = 2;

/// `ceph_str_hash(type, s)`: `None` for a hash type Ceph does not know (Ceph returns -1 there).
pub fn str_hash(hash_type: u8, s: &[u8]) -> Option<u32> {
    match hash_type {
        STR_HASH_LINUX => Some(str_hash_linux(s)),
        STR_HASH_RJENKINS => Some(str_hash_rjenkins(s)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_hash_tail_lengths_differ() {
        // Every tail length 0..=11 and one full block: all distinct, none panics.
        let s = b"abcdefghijklmnopqrstuvwxyz";
        let hs: std::collections::BTreeSet<u32> =
            (0..=s.len()).map(|n| str_hash_rjenkins(&s[..n])).collect();
        assert_eq!(hs.len(), s.len() + 1);
    }

    #[test]
    fn linux_hash_matches_its_recurrence() {
        // h("a") = ((0 + (0x61 << 4) + (0x61 >> 4)) * 11)
        assert_eq!(str_hash_linux(b"a"), (0x610 + 6) * 11);
        assert_eq!(str_hash(STR_HASH_LINUX, b""), Some(0));
        assert_eq!(str_hash(9, b"x"), None);
    }
}
