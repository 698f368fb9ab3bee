//! Messages: what a MESSAGE frame carries.
//!
//! Owns: `ceph_msg_header2` ([`MsgHeader2`], msgr.h), the [`Message`] (header plus the front, middle and
//! data payloads), the mapping between a message and the MESSAGE frame's four segments, and the Ceph
//! message-type and priority constants the crate uses.
//!
//! Invariants: a message's payloads are `Bytes` handed through without copying; the segment lengths live
//! in the frame preamble, not in the header, so a header never disagrees with its payloads. Decoding
//! refuses a header segment shorter than [`MsgHeader2::LEN`] and more than four segments.

use bytes::{BufMut, Bytes, BytesMut};

use super::denc::{DecodeError, Decoder};
use crate::throttle::Permit;

/// `CEPH_MSG_PRIO_*`: higher is more urgent.
pub const MSG_PRIO_LOW: u16 = 64;
pub const MSG_PRIO_DEFAULT: u16 = 127;
pub const MSG_PRIO_HIGH: u16 = 196;
pub const MSG_PRIO_HIGHEST: u16 = 255;

/// `CEPH_MSG_FOOTER_COMPLETE`: the message was sent whole (header2 `flags`).
pub const MSG_FLAG_COMPLETE: u8 = 1 << 0;
/// `CEPH_MSG_FOOTER_NOCRC`: no per-payload crcs in a footer; msgr2 always sets it (crcs are in the frame).
pub const MSG_FLAG_NOCRC: u8 = 1 << 1;
/// The flags Ceph's ProtocolV2 puts in every header2 it sends.
pub const MSG_FLAGS_DEFAULT: u8 = MSG_FLAG_COMPLETE | MSG_FLAG_NOCRC;

/// Message types (include/ceph_fs.h `CEPH_MSG_*`, msg/Message.h `MSG_*`).
pub const MSG_MON_MAP: u16 = 4;
pub const MSG_MON_GET_MAP: u16 = 5;
pub const MSG_MON_SUBSCRIBE: u16 = 15;
pub const MSG_OSD_OP: u16 = 42;
pub const MSG_OSD_OPREPLY: u16 = 43;
pub const MSG_MON_COMMAND: u16 = 50;
pub const MSG_MON_COMMAND_ACK: u16 = 51;
pub const MSG_CONFIG: u16 = 62;
pub const MSG_MON_PROBE: u16 = 67;

/// Segment alignments a MESSAGE frame announces in its preamble (frames_v2.h `MessageFrame`): header,
/// front and middle at the default (pointer size), data page-aligned.
pub const SEGMENT_ALIGNMENTS: [u16; 4] = [8, 8, 8, 4096];

/// `ceph_msg_header2`: the packed, 41-byte segment 0 of a MESSAGE frame.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MsgHeader2 {
    /// Sequence number of this message in the session.
    pub seq: u64,
    /// Transaction id, for matching replies to requests.
    pub tid: u64,
    pub msg_type: u16,
    pub priority: u16,
    /// Encoding version of the payload.
    pub version: u16,
    pub data_pre_padding_len: u32,
    pub data_off: u16,
    /// The highest sequence number the sender has received (a piggy-backed ACK).
    pub ack_seq: u64,
    pub flags: u8,
    /// Oldest version that can decode the payload.
    pub compat_version: u16,
    pub reserved: u16,
}

impl MsgHeader2 {
    /// Encoded size.
    pub const LEN: usize = 41;

    pub fn encode(&self, buf: &mut BytesMut) {
        buf.reserve(Self::LEN);
        buf.put_u64_le(self.seq);
        buf.put_u64_le(self.tid);
        buf.put_u16_le(self.msg_type);
        buf.put_u16_le(self.priority);
        buf.put_u16_le(self.version);
        buf.put_u32_le(self.data_pre_padding_len);
        buf.put_u16_le(self.data_off);
        buf.put_u64_le(self.ack_seq);
        buf.put_u8(self.flags);
        buf.put_u16_le(self.compat_version);
        buf.put_u16_le(self.reserved);
    }

    /// Decode from the first [`Self::LEN`] bytes of `buf`; anything after them is ignored.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        if buf.len() < Self::LEN {
            return Err(DecodeError::Short {
                what: "ceph_msg_header2",
                needed: Self::LEN,
                at: 0,
                remaining: buf.len(),
            });
        }
        let d = &mut Decoder::new(buf);
        Ok(MsgHeader2 {
            seq: d.u64()?,
            tid: d.u64()?,
            msg_type: d.u16()?,
            priority: d.u16()?,
            version: d.u16()?,
            data_pre_padding_len: d.u32()?,
            data_off: d.u16()?,
            ack_seq: d.u64()?,
            flags: d.u8()?,
            compat_version: d.u16()?,
            reserved: d.u16()?,
        })
    }
}

/// A Ceph message: header plus three payloads (front: the encoded message struct; middle: rarely used;
/// data: bulk bytes such as object data).
///
/// A message may carry a [`Permit`]: the throttle budget it holds while queued for sending or while the
/// application holds it after dispatch. The budget returns when the message (or the permit taken out of
/// it) is dropped. A clone carries no permit, and equality ignores it.
pub struct Message {
    pub header: MsgHeader2,
    pub front: Bytes,
    pub middle: Bytes,
    pub data: Bytes,
    permit: Option<Permit>,
}

impl Clone for Message {
    fn clone(&self) -> Self {
        Message {
            header: self.header.clone(),
            front: self.front.clone(),
            middle: self.middle.clone(),
            data: self.data.clone(),
            permit: None,
        }
    }
}

impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.header == other.header
            && self.front == other.front
            && self.middle == other.middle
            && self.data == other.data
    }
}

impl Eq for Message {}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("header", &self.header)
            .field("front", &self.front)
            .field("middle", &self.middle)
            .field("data", &self.data)
            .field("permit", &self.permit)
            .finish()
    }
}

impl Message {
    /// A message of `msg_type` with `front`, default priority, version 1, compat 1 and the flags Ceph's
    /// msgr2 sends ([`MSG_FLAGS_DEFAULT`]). Sequence numbers are the session's to fill in.
    pub fn new(msg_type: u16, front: Bytes) -> Message {
        Message {
            header: MsgHeader2 {
                msg_type,
                priority: MSG_PRIO_DEFAULT,
                version: 1,
                compat_version: 1,
                flags: MSG_FLAGS_DEFAULT,
                ..MsgHeader2::default()
            },
            front,
            middle: Bytes::new(),
            data: Bytes::new(),
            permit: None,
        }
    }

    /// Let the message hold `permit` (replacing, and so releasing, any it held): its budget returns
    /// when the message is dropped.
    pub fn attach_permit(&mut self, permit: Permit) {
        self.permit = Some(permit);
    }

    /// Take the permit out (to release the budget early, or to keep it apart from the message).
    pub fn take_permit(&mut self) -> Option<Permit> {
        self.permit.take()
    }

    /// The permit the message holds, if any.
    pub fn permit(&self) -> Option<&Permit> {
        self.permit.as_ref()
    }

    pub fn with_priority(mut self, priority: u16) -> Self {
        self.header.priority = priority;
        self
    }

    pub fn with_version(mut self, version: u16, compat: u16) -> Self {
        self.header.version = version;
        self.header.compat_version = compat;
        self
    }

    pub fn with_middle(mut self, middle: Bytes) -> Self {
        self.middle = middle;
        self
    }

    pub fn with_data(mut self, data: Bytes) -> Self {
        self.data = data;
        self
    }

    pub fn with_tid(mut self, tid: u64) -> Self {
        self.header.tid = tid;
        self
    }

    pub fn msg_type(&self) -> u16 {
        self.header.msg_type
    }

    /// Bytes of front, middle and data together.
    pub fn payload_len(&self) -> usize {
        self.front.len() + self.middle.len() + self.data.len()
    }

    /// Segment 0 of the MESSAGE frame: the encoded header.
    pub fn header_segment(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(MsgHeader2::LEN);
        self.header.encode(&mut b);
        b.freeze()
    }

    /// All four MESSAGE-frame segments in order (header, front, middle, data), for the frame codec;
    /// pair them with [`SEGMENT_ALIGNMENTS`].
    pub fn segments(&self) -> [Bytes; 4] {
        [
            self.header_segment(),
            self.front.clone(),
            self.middle.clone(),
            self.data.clone(),
        ]
    }

    /// Rebuild a message from a MESSAGE frame's segments (1 to 4; missing trailing segments are empty, as a
    /// sender leaves off trailing empty segments). Payload segments are shared, not copied.
    pub fn from_segments(segments: &[Bytes]) -> Result<Message, DecodeError> {
        check_message_segments(segments.len())?;
        let mut shared: [Bytes; 4] = Default::default();
        shared[..segments.len()].clone_from_slice(segments);
        Self::take_from_segments(&mut shared[..segments.len()])
    }

    /// As [`Message::from_segments`], moving the payload segments out of `segments` (left empty)
    /// instead of sharing them: the receive path's form, with no reference counting per segment.
    pub fn take_from_segments(segments: &mut [Bytes]) -> Result<Message, DecodeError> {
        check_message_segments(segments.len())?;
        let header = MsgHeader2::decode(&segments[0])?;
        let mut payload = |i: usize| segments.get_mut(i).map(std::mem::take).unwrap_or_default();
        Ok(Message {
            header,
            front: payload(1),
            middle: payload(2),
            data: payload(3),
            permit: None,
        })
    }
}

/// A message frame has a header segment and up to three payload segments.
fn check_message_segments(n: usize) -> Result<(), DecodeError> {
    if (1..=4).contains(&n) {
        return Ok(());
    }
    Err(DecodeError::invalid(
        "message frame",
        format!("{n} segments, expected 1 to 4"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::codec::Tag;
    use crate::proto::control::capture::{frames, MON_C2S, MON_S2C, OSD_C2S, OSD_S2C};
    use proptest::prelude::*;

    /// The MESSAGE frames of a capture as (segments, preamble alignments are not checked here).
    fn messages(stream: &[u8]) -> Vec<(Vec<Bytes>, Message)> {
        frames(stream)
            .into_iter()
            .filter(|f| f.tag == Tag::Message as u8)
            .map(|f| {
                let segs: Vec<Bytes> = f.segments.into_iter().map(Bytes::from).collect();
                let m = Message::from_segments(&segs).unwrap();
                (segs, m)
            })
            .collect()
    }

    /// The re-encoded header is byte-identical and every carried segment comes back unchanged.
    fn assert_reencodes(segs: &[Bytes], m: &Message) {
        assert_eq!(m.header_segment(), segs[0]);
        let out = m.segments();
        for (i, s) in segs.iter().enumerate() {
            assert_eq!(&out[i], s, "segment {i}");
        }
        for s in &out[segs.len()..] {
            assert!(s.is_empty());
        }
    }

    #[test]
    fn golden_mon_client_messages() {
        let msgs = messages(MON_C2S);
        assert_eq!(msgs.len(), 2);
        let (segs, get_map) = &msgs[0];
        assert_eq!(segs.len(), 1);
        assert_eq!(
            get_map,
            &Message {
                header: MsgHeader2 {
                    seq: 1,
                    ..Message::new(MSG_MON_GET_MAP, Bytes::new()).header
                },
                front: Bytes::new(),
                middle: Bytes::new(),
                data: Bytes::new(),
                permit: None,
            }
        );
        assert_reencodes(segs, get_map);
        let (segs, sub) = &msgs[1];
        assert_eq!(sub.header.msg_type, MSG_MON_SUBSCRIBE);
        assert_eq!((sub.header.seq, sub.header.version), (2, 3));
        assert_eq!(sub.front.len(), 48);
        assert_eq!(sub.payload_len(), 48);
        assert_reencodes(segs, sub);
    }

    #[test]
    fn golden_mon_server_messages() {
        let msgs = messages(MON_S2C);
        let types: Vec<(u16, u64)> = msgs
            .iter()
            .map(|(_, m)| (m.header.msg_type, m.header.seq))
            .collect();
        assert_eq!(types, [(MSG_MON_MAP, 1), (MSG_CONFIG, 2), (MSG_MON_MAP, 3)]);
        let (segs, monmap) = &msgs[0];
        let h = &monmap.header;
        assert_eq!(
            (h.priority, h.ack_seq, h.version, h.compat_version, h.flags),
            (MSG_PRIO_HIGH, 2, 1, 1, MSG_FLAGS_DEFAULT)
        );
        assert_eq!(monmap.front.len(), 205);
        let wire = include_bytes!("../../tests/data/ceph16-mon-crc/monmap.wire.bin");
        assert_eq!(&monmap.front[..4], &201u32.to_le_bytes());
        assert_eq!(&monmap.front[4..], &wire[..]);
        assert_reencodes(segs, monmap);
        assert_eq!(msgs[1].1.front.len(), 4);
        for (segs, m) in &msgs {
            assert_reencodes(segs, m);
        }
    }

    #[test]
    fn golden_osd_op_and_reply() {
        let ops = messages(OSD_C2S);
        assert_eq!(ops.len(), 1);
        let (segs, op) = &ops[0];
        assert_eq!(segs.len(), 4);
        assert_eq!(
            op.header,
            MsgHeader2 {
                seq: 1,
                tid: 1,
                msg_type: MSG_OSD_OP,
                priority: 63,
                version: 8,
                data_pre_padding_len: 0,
                data_off: 0,
                ack_seq: 0,
                flags: MSG_FLAGS_DEFAULT,
                compat_version: 3,
                reserved: 0,
            }
        );
        assert_eq!(
            (op.front.len(), op.middle.len(), op.data.as_ref()),
            (213, 0, &b"vm\n"[..])
        );
        let built = Message::new(MSG_OSD_OP, op.front.clone())
            .with_priority(63)
            .with_version(8, 3)
            .with_tid(1)
            .with_data(Bytes::from_static(b"vm\n"));
        assert_eq!(
            built.header,
            MsgHeader2 {
                seq: 0,
                ..op.header.clone()
            }
        );
        assert_reencodes(segs, op);

        let replies = messages(OSD_S2C);
        let (segs, reply) = &replies[0];
        let h = &reply.header;
        assert_eq!(
            (
                h.msg_type,
                h.version,
                h.compat_version,
                h.seq,
                h.tid,
                h.ack_seq
            ),
            (MSG_OSD_OPREPLY, 8, 2, 1, 1, 1)
        );
        assert_eq!(reply.front.len(), 148);
        assert_reencodes(segs, reply);
    }

    #[test]
    fn header_layout() {
        let h = MsgHeader2 {
            seq: 0x0102030405060708,
            tid: 9,
            msg_type: 0x2a,
            priority: 0x3f,
            version: 8,
            data_pre_padding_len: 0x11223344,
            data_off: 0x5566,
            ack_seq: 0xaabb,
            flags: 3,
            compat_version: 2,
            reserved: 0x7788,
        };
        let mut b = BytesMut::new();
        h.encode(&mut b);
        assert_eq!(b.len(), MsgHeader2::LEN);
        assert_eq!(&b[..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[16..18], &[0x2a, 0]);
        assert_eq!(&b[22..26], &[0x44, 0x33, 0x22, 0x11]);
        assert_eq!(b[36], 3);
        assert_eq!(&b[39..41], &[0x88, 0x77]);
        assert_eq!(MsgHeader2::decode(&b).unwrap(), h);
        for n in 0..MsgHeader2::LEN {
            assert!(MsgHeader2::decode(&b[..n]).is_err());
        }
        // Bytes after the header are not ours.
        b.put_u8(0xff);
        assert_eq!(MsgHeader2::decode(&b).unwrap(), h);
    }

    #[test]
    fn from_segments_shapes() {
        let m = Message::new(MSG_MON_COMMAND, Bytes::from_static(b"front"))
            .with_middle(Bytes::from_static(b"mid"))
            .with_data(Bytes::from_static(b"data"));
        assert_eq!(m.payload_len(), 12);
        let segs = m.segments();
        assert_eq!(Message::from_segments(&segs).unwrap(), m);
        assert_eq!(
            Message::from_segments(&segs[..2]).unwrap(),
            Message::new(MSG_MON_COMMAND, Bytes::from_static(b"front"))
        );
        assert!(Message::from_segments(&[]).is_err());
        let five = [
            segs[0].clone(),
            Bytes::new(),
            Bytes::new(),
            Bytes::new(),
            Bytes::new(),
        ];
        assert!(Message::from_segments(&five).is_err());
        let short = [segs[0].slice(..40)];
        assert!(Message::from_segments(&short).is_err());
        // The taking form decodes the same and leaves the payload segments empty.
        let mut taken = segs.clone();
        assert_eq!(Message::take_from_segments(&mut taken).unwrap(), m);
        assert!(taken[1..].iter().all(|s| s.is_empty()));
        assert!(Message::take_from_segments(&mut five.clone()).is_err());
        assert!(Message::take_from_segments(&mut []).is_err());
    }

    #[test]
    fn defaults_and_builders() {
        let m = Message::new(MSG_MON_GET_MAP, Bytes::new());
        assert_eq!(
            (m.header.priority, m.header.version, m.header.compat_version),
            (127, 1, 1)
        );
        assert_eq!(m.msg_type(), MSG_MON_GET_MAP);
        let m = m
            .with_priority(MSG_PRIO_HIGHEST)
            .with_version(4, 2)
            .with_tid(77);
        assert_eq!(
            (
                m.header.priority,
                m.header.version,
                m.header.compat_version,
                m.header.tid
            ),
            (255, 4, 2, 77)
        );
        assert_eq!(SEGMENT_ALIGNMENTS, [8, 8, 8, 4096]);
        assert_eq!(
            [
                MSG_PRIO_LOW,
                MSG_PRIO_DEFAULT,
                MSG_PRIO_HIGH,
                MSG_PRIO_HIGHEST
            ],
            [64, 127, 196, 255]
        );
    }

    fn arb_header() -> impl Strategy<Value = MsgHeader2> {
        (
            any::<(u64, u64, u16, u16, u16, u32)>(),
            any::<(u16, u64, u8, u16, u16)>(),
        )
            .prop_map(|((seq, tid, t, p, v, pad), (off, ack, flags, compat, r))| {
                MsgHeader2 {
                    seq,
                    tid,
                    msg_type: t,
                    priority: p,
                    version: v,
                    data_pre_padding_len: pad,
                    data_off: off,
                    ack_seq: ack,
                    flags,
                    compat_version: compat,
                    reserved: r,
                }
            })
    }

    proptest! {
        #[test]
        fn prop_header_round_trip(h in arb_header()) {
            let mut b = BytesMut::new();
            h.encode(&mut b);
            prop_assert_eq!(b.len(), MsgHeader2::LEN);
            prop_assert_eq!(MsgHeader2::decode(&b).unwrap(), h);
        }
    }

    #[test]
    fn permit_travels_with_the_message_not_its_clones() {
        use crate::throttle::Throttle;
        use std::sync::Arc;
        let t = Arc::new(Throttle::new(0, 0));
        let mut m = Message::new(1, Bytes::from_static(b"abc"));
        m.attach_permit(t.force_acquire(3));
        let c = m.clone();
        assert!(c.permit().is_none());
        assert_eq!(c, m, "equality ignores the permit");
        drop(c);
        assert_eq!(t.stats().current_bytes, 3, "only the original holds budget");
        let p = m.take_permit().unwrap();
        drop(m);
        assert_eq!(t.stats().current_msgs, 1);
        drop(p);
        assert!(t.stats().is_idle());
    }
}
