//! Ceph's little-endian wire encoding ("denc") for the types msgr2 carries.
//!
//! Owns: the [`Decoder`] cursor and [`Encode`]/[`Decode`] traits, the versioned-struct envelope
//! (`struct_v`, `compat`, `u32` length) and the Ceph types the protocol core needs.
//!
//! Invariants: decoding never panics and never allocates more than the input it has seen justifies —
//! every length read from the wire is checked against the bytes remaining before anything is reserved.
//! A short or inconsistent input is a [`DecodeError`] value.

use bytes::{BufMut, BytesMut};

/// Why a byte string did not decode. Inputs here are complete (a whole segment), so running out of
/// bytes is malformed input, not "need more".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before a field of `needed` bytes at offset `at`.
    #[error("truncated: {what} needs {needed} bytes at offset {at}, {remaining} left")]
    Short {
        what: &'static str,
        needed: usize,
        at: usize,
        remaining: usize,
    },
    /// A field holds a value the encoding does not allow.
    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    /// A versioned struct is newer than we understand (its `compat` exceeds what we speak).
    #[error("{what}: compat version {compat} > supported {supported}")]
    Incompatible {
        what: &'static str,
        compat: u8,
        supported: u8,
    },
}

impl DecodeError {
    pub fn invalid(what: &'static str, detail: impl Into<String>) -> Self {
        DecodeError::Invalid {
            what,
            detail: detail.into(),
        }
    }
}

/// A bounds-checked reading cursor over a complete encoded value.
#[derive(Debug, Clone)]
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
}

macro_rules! get_le {
    ($name:ident, $t:ty) => {
        #[inline]
        pub fn $name(&mut self) -> Result<$t, DecodeError> {
            const N: usize = std::mem::size_of::<$t>();
            let b = self.take(N, stringify!($t))?;
            let mut a = [0u8; N];
            a.copy_from_slice(b);
            Ok(<$t>::from_le_bytes(a))
        }
    };
}

impl<'a> Decoder<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Decoder { buf, pos: 0 }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Offset of the cursor from the start of the input.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The unconsumed rest of the input.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// Consume exactly `n` bytes.
    #[inline]
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Short {
                what,
                needed: n,
                at: self.pos,
                remaining: self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Skip `n` bytes.
    pub fn skip(&mut self, n: usize, what: &'static str) -> Result<(), DecodeError> {
        self.take(n, what).map(|_| ())
    }

    get_le!(u8, u8);
    get_le!(u16, u16);
    get_le!(u32, u32);
    get_le!(u64, u64);
    get_le!(i32, i32);
    get_le!(i64, i64);

    /// A Ceph `bool`: one byte, any non-zero value is true.
    pub fn bool(&mut self) -> Result<bool, DecodeError> {
        Ok(self.u8()? != 0)
    }

    /// A `u32`-length-prefixed byte string (Ceph's `bufferlist` / `std::string` encoding).
    pub fn len_prefixed(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n, what)
    }

    /// A `u32` element count, checked so that `count * min_elem_size` bytes are actually present.
    /// Use it before reserving a container for the elements.
    pub fn count(
        &mut self,
        min_elem_size: usize,
        what: &'static str,
    ) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        let need = n.saturating_mul(min_elem_size.max(1));
        if need > self.remaining() {
            return Err(DecodeError::Short {
                what,
                needed: need,
                at: self.pos,
                remaining: self.remaining(),
            });
        }
        Ok(n)
    }

    /// A `vector<u32>`.
    pub fn vec_u32(&mut self, what: &'static str) -> Result<Vec<u32>, DecodeError> {
        let n = self.count(4, what)?;
        (0..n).map(|_| self.u32()).collect()
    }

    /// Decode a value of type `T`.
    pub fn decode<T: Decode>(&mut self) -> Result<T, DecodeError> {
        T::decode(self)
    }

    /// Decode a Ceph versioned struct (`DECODE_START(supported, bl)` … `DECODE_FINISH(bl)`): reads
    /// `struct_v`, `compat` and the `u32` length, refuses a `compat` newer than `supported`, runs `body` on
    /// a decoder limited to the struct's bytes, and skips whatever a newer version appended.
    pub fn versioned<T>(
        &mut self,
        what: &'static str,
        supported: u8,
        body: impl FnOnce(u8, &mut Decoder<'a>) -> Result<T, DecodeError>,
    ) -> Result<T, DecodeError> {
        let struct_v = self.u8()?;
        let compat = self.u8()?;
        if compat > supported {
            return Err(DecodeError::Incompatible {
                what,
                compat,
                supported,
            });
        }
        let len = self.u32()? as usize;
        let inner = self.take(len, what)?;
        let mut sub = Decoder::new(inner);
        let v = body(struct_v, &mut sub)?;
        Ok(v)
    }
}

/// A type with a Ceph wire encoding.
pub trait Encode {
    fn encode(&self, buf: &mut BytesMut);
}

/// A type decodable from Ceph's wire encoding.
pub trait Decode: Sized {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError>;
}

/// Encode a versioned struct envelope (`ENCODE_START(v, compat, bl)` … `ENCODE_FINISH(bl)`) around `body`.
pub fn encode_versioned(
    buf: &mut BytesMut,
    struct_v: u8,
    compat: u8,
    body: impl FnOnce(&mut BytesMut),
) {
    buf.put_u8(struct_v);
    buf.put_u8(compat);
    let len_at = buf.len();
    buf.put_u32_le(0);
    body(buf);
    let len = (buf.len() - len_at - 4) as u32;
    buf[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
}

/// Encode a `u32`-length-prefixed byte string.
pub fn encode_len_prefixed(buf: &mut BytesMut, data: &[u8]) {
    buf.put_u32_le(data.len() as u32);
    buf.put_slice(data);
}

/// Encode a `vector<u32>`.
pub fn encode_vec_u32(buf: &mut BytesMut, v: &[u32]) {
    buf.put_u32_le(v.len() as u32);
    for x in v {
        buf.put_u32_le(*x);
    }
}

/// Encode `v` into a fresh buffer.
pub fn to_bytes<T: Encode + ?Sized>(v: &T) -> bytes::Bytes {
    let mut b = BytesMut::new();
    v.encode(&mut b);
    b.freeze()
}

/// Decode a `T` that must fill `buf` exactly.
pub fn from_bytes_exact<T: Decode>(buf: &[u8], what: &'static str) -> Result<T, DecodeError> {
    let mut d = Decoder::new(buf);
    let v = T::decode(&mut d)?;
    if d.remaining() != 0 {
        return Err(DecodeError::invalid(
            what,
            format!("{} trailing bytes", d.remaining()),
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_is_an_error_not_a_panic() {
        let mut d = Decoder::new(&[1, 2, 3]);
        assert!(matches!(d.u32(), Err(DecodeError::Short { needed: 4, .. })));
        assert_eq!(d.u16().unwrap(), 0x0201);
        assert!(d.u16().is_err());
        assert_eq!(d.u8().unwrap(), 3);
    }

    #[test]
    fn count_refuses_impossible_lengths_before_allocating() {
        // Claims 2^32-1 u32 elements with 4 bytes of input.
        let mut d = Decoder::new(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        assert!(d.vec_u32("v").is_err());
    }

    #[test]
    fn versioned_round_trip_and_skips_newer_fields() {
        let mut b = BytesMut::new();
        encode_versioned(&mut b, 3, 1, |b| {
            b.put_u32_le(7);
            b.put_u64_le(99); // a field a newer encoder appended
        });
        b.put_u8(0xaa);
        let mut d = Decoder::new(&b);
        let v = d.versioned("t", 2, |sv, d| {
            assert_eq!(sv, 3);
            d.u32()
        });
        assert_eq!(v.unwrap(), 7);
        assert_eq!(d.u8().unwrap(), 0xaa);
    }

    #[test]
    fn versioned_refuses_newer_compat_and_bad_length() {
        let mut b = BytesMut::new();
        encode_versioned(&mut b, 5, 5, |b| b.put_u8(1));
        assert!(matches!(
            Decoder::new(&b).versioned("t", 4, |_, d| d.u8()),
            Err(DecodeError::Incompatible { compat: 5, .. })
        ));
        let bad = [1u8, 1, 0xff, 0xff, 0, 0, 0];
        assert!(Decoder::new(&bad).versioned("t", 1, |_, d| d.u8()).is_err());
    }
}
