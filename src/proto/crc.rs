//! Ceph's crc32c.
//!
//! Ceph's `ceph_crc32c(seed, data)` is the raw Castagnoli (CRC-32C) register update: the caller's seed goes in
//! as the register value and the result comes out uninverted. The standard CRC-32C (what `crc32c::crc32c`
//! returns) inverts on the way in and out, so the two agree only by accident. msgr2 uses seed 0 for the
//! preamble and seed `0xffff_ffff` for segments, which makes an empty segment's crc `0xffff_ffff`.

/// Seed Ceph uses for the frame preamble crc.
pub const PREAMBLE_SEED: u32 = 0;
/// Seed Ceph uses for segment crcs (`-1` in Ceph's source).
pub const SEGMENT_SEED: u32 = 0xffff_ffff;

/// `ceph_crc32c(seed, data)`: the raw Castagnoli update, no final inversion.
#[inline]
pub fn ceph_crc32c(seed: u32, data: &[u8]) -> u32 {
    // crc32c_append(c, d) computes !raw(!c, d); pre- and post-inverting turns it into raw(seed, d).
    !crc32c::crc32c_append(!seed, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors from Ceph's src/test/common/test_crc32c.cc.
    #[test]
    fn ceph_vectors() {
        let a = b"foo bar baz";
        let b = b"whiz bang boom";
        assert_eq!(ceph_crc32c(0, a), 4119623852);
        assert_eq!(ceph_crc32c(1234, a), 881700046);
        assert_eq!(ceph_crc32c(0, b), 2360230088);
        assert_eq!(ceph_crc32c(5678, b), 3743019208);
    }

    #[test]
    fn ceph_vectors_partial_word_and_big() {
        assert_eq!(ceph_crc32c(0, &[1u8; 5]), 2715569182);
        assert_eq!(ceph_crc32c(0, &[1u8; 35]), 440531800);
        let big = vec![1u8; 4_096_000];
        assert_eq!(ceph_crc32c(0, &big), 31583199);
        assert_eq!(ceph_crc32c(1234, &big), 1400919119);
    }

    #[test]
    fn empty_segment_crc_is_all_ones() {
        assert_eq!(ceph_crc32c(SEGMENT_SEED, &[]), 0xffff_ffff);
        assert_eq!(ceph_crc32c(PREAMBLE_SEED, &[]), 0);
    }

    #[test]
    fn differs_from_standard_crc32c() {
        // The standard check value for "123456789" is 0xe3069283; Ceph's raw form with seed -1 is its inverse.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(ceph_crc32c(SEGMENT_SEED, b"123456789"), !0xe306_9283);
    }

    #[test]
    fn chaining_equals_one_pass() {
        let data = b"the quick brown fox jumps over the lazy dog";
        let one = ceph_crc32c(SEGMENT_SEED, data);
        let two = ceph_crc32c(ceph_crc32c(SEGMENT_SEED, &data[..10]), &data[10..]);
        assert_eq!(one, two);
    }
}
