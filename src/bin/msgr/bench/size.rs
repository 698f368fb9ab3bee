//! Message sizes as the command line writes them: `64`, `4k`, `64k`, `1m` (KiB and MiB, powers of two).

/// Largest message size a benchmark accepts: well under the default 64 MiB frame limit.
pub const MAX_MSG_SIZE: usize = 32 << 20;

/// Parses one size: a decimal number of bytes, optionally followed by `k` (KiB) or `m` (MiB), either
/// case. The error says what was wrong and what is accepted.
///
/// ```
/// use crate::bench::parse_size;
/// assert_eq!(parse_size("64"), Ok(64));
/// assert_eq!(parse_size("4k"), Ok(4096));
/// assert_eq!(parse_size("1M"), Ok(1 << 20));
/// assert!(parse_size("1.5k").is_err());
/// ```
pub fn parse_size(input: &str) -> Result<usize, String> {
    let s = input.trim();
    let (digits, shift) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 10),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 20),
        _ => (s, 0),
    };
    let bad = || {
        format!(
            "invalid message size {input:?}: expected bytes, or a number followed by k (KiB) or m (MiB), \
             e.g. 64, 4k, 64k, 1m"
        )
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: usize = digits.parse().map_err(|_| bad())?;
    let bytes = n
        .checked_mul(1 << shift)
        .filter(|&b| b <= MAX_MSG_SIZE)
        .ok_or_else(|| {
            format!(
                "message size {input:?} is too large (at most {})",
                format_size(MAX_MSG_SIZE)
            )
        })?;
    Ok(bytes)
}

/// Parses a comma-separated list of sizes (`64,4k,64k`); empty items and an empty list are errors.
#[cfg(test)]
pub fn parse_sizes(input: &str) -> Result<Vec<usize>, String> {
    let sizes = input
        .split(',')
        .map(parse_size)
        .collect::<Result<Vec<_>, _>>()?;
    if sizes.is_empty() {
        return Err("no message size given".into());
    }
    Ok(sizes)
}

/// The shortest exact spelling of a size: `64`, `4k`, `1m`, `1536`.
pub fn format_size(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{}m", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes % (1 << 10) == 0 {
        format!("{}k", bytes >> 10)
    } else {
        bytes.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_bytes_kib_and_mib() {
        for (s, n) in [
            ("0", 0),
            ("64", 64),
            ("4k", 4096),
            ("64K", 65536),
            ("1m", 1 << 20),
            ("32m", 32 << 20),
            (" 8k ", 8192),
        ] {
            assert_eq!(parse_size(s), Ok(n), "{s}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for s in [
            "",
            "k",
            "4kb",
            "1.5k",
            "-1",
            "1g",
            "0x10",
            "4 k",
            "33m",
            "99999999999999999999",
        ] {
            assert!(parse_size(s).is_err(), "{s:?} was accepted");
        }
        assert!(parse_size("abc").unwrap_err().contains("e.g. 64, 4k"));
        assert!(parse_size("64m").unwrap_err().contains("too large"));
    }

    #[test]
    fn lists_and_formatting_round_trip() {
        assert_eq!(
            parse_sizes("64,4k,64k,1m"),
            Ok(vec![64, 4096, 65536, 1 << 20])
        );
        assert!(parse_sizes("64,,4k").is_err());
        assert!(parse_sizes("").is_err());
        for n in [0, 64, 1536, 4096, 65536, 1 << 20, 3 << 20] {
            assert_eq!(parse_size(&format_size(n)), Ok(n));
        }
        assert_eq!(format_size(1536), "1536");
        assert_eq!(format_size(4096), "4k");
    }
}
