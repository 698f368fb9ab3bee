//! Payloads of Ceph messages: what travels in a MESSAGE frame's front segment, above the msgr2 protocol.
//!
//! Owns: the [`CephMessage`] trait that turns a typed message into a [`proto::Message`](Message) (type,
//! header version and compat version set as Ceph 16 sets them) and back; Ceph's `uuid_d` ([`Uuid`]); the
//! container encodings messages share (`std::string`, `std::map`, `std::set`); and, per daemon, the
//! messages themselves — [`mon`]: the monitor map and the messages a client or a peer monitor exchanges
//! with a monitor.
//!
//! Like [`proto`](crate::proto), this module is sans-IO and every byte it decodes may come from an
//! attacker: decoding never panics, never allocates more than the input justifies (element counts are
//! checked against the bytes left before any container grows), and reports malformed input as a
//! [`DecodeError`] value.
//!
//! Versions: a message is decoded according to its header's `version` (older layouts where Ceph still
//! reads them); fields a newer sender appended after the ones we know are ignored, as Ceph ignores them.
//! A message whose `compat_version` is newer than the version we speak is refused.

pub mod mon;
pub mod osd;

pub use mon::{MConfig, MMonGetMap, MMonMap, MMonProbe, MMonSubscribe, MonInfo, MonMap};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use bytes::{BufMut, Bytes, BytesMut};

use crate::proto::denc::{encode_len_prefixed, Decode, DecodeError, Decoder, Encode};
use crate::proto::message::{Message, MsgHeader2};

/// A typed Ceph message: its front-segment encoding and the header fields Ceph 16 sends it with.
///
/// [`to_message`](CephMessage::to_message) gives a message with the default priority and no sequence
/// numbers (the session fills those in); a daemon that sends at another priority (a monitor sends
/// everything at `MSG_PRIO_HIGH`) sets it with [`Message::with_priority`].
///
/// ```
/// use msgr::msgs::{mon::SUBSCRIBE_ONETIME, CephMessage, MMonSubscribe};
///
/// let sub = MMonSubscribe::default().want("monmap", 0, 0).want("osdmap", 0, SUBSCRIBE_ONETIME);
/// let msg = sub.to_message();
/// assert_eq!((msg.header.msg_type, msg.header.version, msg.header.compat_version), (15, 3, 1));
/// assert_eq!(MMonSubscribe::from_message(&msg).unwrap(), sub);
/// ```
pub trait CephMessage: Sized {
    /// Ceph's `MSG_*` / `CEPH_MSG_*` type number.
    const MSG_TYPE: u16;
    /// The header `version` Ceph 16 sends (its `HEAD_VERSION`).
    const VERSION: u16;
    /// The header `compat_version` Ceph 16 sends (its `COMPAT_VERSION`, or `VERSION` when the class
    /// leaves it unset, as `Message::encode` fills it in).
    const COMPAT_VERSION: u16;
    /// A short name for errors (`"MMonMap"`).
    const NAME: &'static str;

    /// Append the front segment.
    fn encode_front(&self, front: &mut BytesMut);

    /// Decode the front segment of a message whose header says `version`.
    fn decode_front(version: u16, front: &mut Decoder<'_>) -> Result<Self, DecodeError>;

    /// Build the [`Message`] carrying `self`.
    fn to_message(&self) -> Message {
        let mut front = BytesMut::new();
        self.encode_front(&mut front);
        Message::new(Self::MSG_TYPE, front.freeze())
            .with_version(Self::VERSION, Self::COMPAT_VERSION)
    }

    /// Parse a received [`Message`]: its type must be [`MSG_TYPE`](CephMessage::MSG_TYPE) and its
    /// `compat_version` no newer than [`VERSION`](CephMessage::VERSION).
    fn from_message(m: &Message) -> Result<Self, DecodeError> {
        check_header::<Self>(&m.header)?;
        Self::decode_front(m.header.version, &mut Decoder::new(&m.front))
    }
}

fn check_header<M: CephMessage>(h: &MsgHeader2) -> Result<(), DecodeError> {
    if h.msg_type != M::MSG_TYPE {
        return Err(DecodeError::invalid(
            M::NAME,
            format!("message type {} is not {}", h.msg_type, M::MSG_TYPE),
        ));
    }
    if h.compat_version > M::VERSION {
        return Err(DecodeError::Incompatible {
            what: M::NAME,
            compat: u8::try_from(h.compat_version).unwrap_or(u8::MAX),
            supported: u8::try_from(M::VERSION).unwrap_or(u8::MAX),
        });
    }
    Ok(())
}

/// Ceph's `uuid_d` (a cluster fsid): 16 raw bytes on the wire, printed as `8-4-4-4-12` lowercase hex.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    pub const fn nil() -> Uuid {
        Uuid([0; 16])
    }

    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl Encode for Uuid {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_slice(&self.0);
    }
}

impl Decode for Uuid {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        let mut u = [0u8; 16];
        u.copy_from_slice(d.take(16, "uuid_d")?);
        Ok(Uuid(u))
    }
}

/// Where the dashes go in the text form: after these many bytes.
const UUID_DASH_AFTER: [usize; 4] = [4, 6, 8, 10];

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if UUID_DASH_AFTER.contains(&i) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for Uuid {
    type Err = DecodeError;

    /// The hyphenated form `dfb85d94-d46c-4f54-bade-7e0159dac044`, either case.
    fn from_str(s: &str) -> Result<Self, DecodeError> {
        let bad = |why: &str| DecodeError::invalid("uuid", format!("{s:?}: {why}"));
        let groups: Vec<&str> = s.split('-').collect();
        let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        if lens != [8, 4, 4, 4, 12] {
            return Err(bad("not 8-4-4-4-12 hex digits"));
        }
        let hex: Vec<u8> = groups.concat().into_bytes();
        let mut u = [0u8; 16];
        for (byte, pair) in u.iter_mut().zip(hex.chunks_exact(2)) {
            let digit = |c: u8| (c as char).to_digit(16).ok_or_else(|| bad("not hex"));
            *byte = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
        }
        Ok(Uuid(u))
    }
}

// Container encodings shared by the messages (Ceph's `encoding.h`).

/// A `std::string`: `u32` length and bytes. Ceph strings are bytes; these must be UTF-8.
pub(crate) fn decode_string(
    d: &mut Decoder<'_>,
    what: &'static str,
) -> Result<String, DecodeError> {
    let raw = d.len_prefixed(what)?;
    core::str::from_utf8(raw)
        .map(str::to_owned)
        .map_err(|e| DecodeError::invalid(what, e.to_string()))
}

pub(crate) fn encode_string(buf: &mut BytesMut, s: &str) {
    encode_len_prefixed(buf, s.as_bytes());
}

/// A `bufferlist`: `u32` length and bytes.
pub(crate) fn decode_bufferlist(
    d: &mut Decoder<'_>,
    what: &'static str,
) -> Result<Bytes, DecodeError> {
    Ok(Bytes::copy_from_slice(d.len_prefixed(what)?))
}

/// The fewest bytes one string takes (its length).
const MIN_STRING_LEN: usize = 4;

/// A `std::map<std::string, std::string>`.
pub(crate) fn decode_string_map(
    d: &mut Decoder<'_>,
    what: &'static str,
) -> Result<BTreeMap<String, String>, DecodeError> {
    let n = d.count(2 * MIN_STRING_LEN, what)?;
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let k = decode_string(d, what)?;
        let v = decode_string(d, what)?;
        m.insert(k, v);
    }
    Ok(m)
}

pub(crate) fn encode_string_map(buf: &mut BytesMut, m: &BTreeMap<String, String>) {
    buf.put_u32_le(m.len() as u32);
    for (k, v) in m {
        encode_string(buf, k);
        encode_string(buf, v);
    }
}

/// A `std::set<std::string>`.
pub(crate) fn decode_string_set(
    d: &mut Decoder<'_>,
    what: &'static str,
) -> Result<BTreeSet<String>, DecodeError> {
    let n = d.count(MIN_STRING_LEN, what)?;
    (0..n).map(|_| decode_string(d, what)).collect()
}

pub(crate) fn encode_string_set(buf: &mut BytesMut, s: &BTreeSet<String>) {
    buf.put_u32_le(s.len() as u32);
    for v in s {
        encode_string(buf, v);
    }
}

/// A `std::vector<std::string>`.
pub(crate) fn decode_string_vec(
    d: &mut Decoder<'_>,
    what: &'static str,
) -> Result<Vec<String>, DecodeError> {
    let n = d.count(MIN_STRING_LEN, what)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(decode_string(d, what)?);
    }
    Ok(v)
}

pub(crate) fn encode_string_vec(buf: &mut BytesMut, v: &[String]) {
    buf.put_u32_le(v.len() as u32);
    for s in v {
        encode_string(buf, s);
    }
}

/// A `std::set<int32_t>`.
pub(crate) fn decode_i32_set(
    d: &mut Decoder<'_>,
    what: &'static str,
) -> Result<BTreeSet<i32>, DecodeError> {
    let n = d.count(4, what)?;
    (0..n).map(|_| d.i32()).collect()
}

pub(crate) fn encode_i32_set(buf: &mut BytesMut, s: &BTreeSet<i32>) {
    buf.put_u32_le(s.len() as u32);
    for v in s {
        buf.put_i32_le(*v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::denc::{from_bytes_exact, to_bytes};
    use proptest::prelude::*;

    const FSID: &str = "dfb85d94-d46c-4f54-bade-7e0159dac044";
    const FSID_BYTES: [u8; 16] = [
        0xdf, 0xb8, 0x5d, 0x94, 0xd4, 0x6c, 0x4f, 0x54, 0xba, 0xde, 0x7e, 0x01, 0x59, 0xda, 0xc0,
        0x44,
    ];

    #[test]
    fn uuid_text_and_wire_forms() {
        let u: Uuid = FSID.parse().unwrap();
        assert_eq!(u, Uuid(FSID_BYTES));
        assert_eq!(u.to_string(), FSID);
        assert_eq!(FSID.to_uppercase().parse::<Uuid>().unwrap(), u);
        assert_eq!(&to_bytes(&u)[..], &FSID_BYTES);
        assert_eq!(from_bytes_exact::<Uuid>(&FSID_BYTES, "uuid").unwrap(), u);
        assert!(Uuid::nil().is_nil() && !u.is_nil());
        assert_eq!(
            Uuid::nil().to_string(),
            "00000000-0000-0000-0000-000000000000"
        );
    }

    #[test]
    fn uuid_rejects_malformed_text() {
        for s in [
            "",
            "dfb85d94d46c4f54bade7e0159dac044",
            "dfb85d94-d46c-4f54-bade-7e0159dac04",
            "dfb85d94-d46c-4f54-bade-7e0159dac0445",
            "dfb85d94-d46c-4f54-bade7e01-59dac044",
            "gfb85d94-d46c-4f54-bade-7e0159dac044",
            "dfb85d94-d46c-4f54-bade-7e0159dac04é",
            "+fb85d94-d46c-4f54-bade-7e0159dac044",
        ] {
            assert!(s.parse::<Uuid>().is_err(), "{s:?}");
        }
    }

    #[test]
    fn uuid_short_input_errors() {
        for n in 0..16 {
            assert!(Decoder::new(&FSID_BYTES[..n]).decode::<Uuid>().is_err());
        }
    }

    #[test]
    fn containers_refuse_counts_larger_than_input() {
        let huge = [0xff, 0xff, 0xff, 0x7f, 1, 0, 0, 0, b'a'];
        assert!(decode_string_map(&mut Decoder::new(&huge), "m").is_err());
        assert!(decode_string_set(&mut Decoder::new(&huge), "s").is_err());
        assert!(decode_string_vec(&mut Decoder::new(&huge), "v").is_err());
        assert!(decode_i32_set(&mut Decoder::new(&huge), "i").is_err());
        assert!(decode_string(&mut Decoder::new(&huge), "s").is_err());
    }

    #[test]
    fn strings_must_be_utf8() {
        let b = [2, 0, 0, 0, 0xc3, 0x28];
        assert!(matches!(
            decode_string(&mut Decoder::new(&b), "s"),
            Err(DecodeError::Invalid { .. })
        ));
    }

    #[test]
    fn bufferlist_is_length_prefixed() {
        let input = [9, 3, 0, 0, 0, b'a', b'b', b'c', 7];
        let mut d = Decoder::new(&input);
        d.u8().unwrap();
        assert_eq!(&decode_bufferlist(&mut d, "bl").unwrap()[..], b"abc");
        assert_eq!(d.u8().unwrap(), 7);
        assert!(decode_bufferlist(&mut Decoder::new(&input[1..7]), "bl").is_err());
    }

    proptest! {
        #[test]
        fn prop_uuid_text_round_trip(b in any::<[u8; 16]>()) {
            let u = Uuid(b);
            prop_assert_eq!(u.to_string().parse::<Uuid>().unwrap(), u);
        }

        #[test]
        fn prop_string_containers_round_trip(
            m in proptest::collection::btree_map(".{0,8}", ".{0,8}", 0..5),
            s in proptest::collection::btree_set(".{0,8}", 0..5),
            i in proptest::collection::btree_set(any::<i32>(), 0..5),
        ) {
            let mut b = BytesMut::new();
            encode_string_map(&mut b, &m);
            encode_string_set(&mut b, &s);
            encode_i32_set(&mut b, &i);
            let v: Vec<String> = s.iter().cloned().collect();
            encode_string_vec(&mut b, &v);
            let mut d = Decoder::new(&b);
            prop_assert_eq!(decode_string_map(&mut d, "m").unwrap(), m);
            prop_assert_eq!(decode_string_set(&mut d, "s").unwrap(), s);
            prop_assert_eq!(decode_i32_set(&mut d, "i").unwrap(), i);
            prop_assert_eq!(decode_string_vec(&mut d, "v").unwrap(), v);
            prop_assert_eq!(d.remaining(), 0);
        }
    }
}
