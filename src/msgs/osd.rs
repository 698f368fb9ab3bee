//! The messages a RADOS client exchanges with OSDs (and the OSD map a monitor or an OSD sends it).
//!
//! Owns: [`MOSDOp`] (type 42, header version 8 / compat 3 as Ceph 16 sends it; [`MOSDOpView`] encodes one
//! from borrowed parts, for senders), [`MOSDOpReply`] (type 43,
//! version 8), [`MOSDMap`] (type 41), the pieces of `osd_types.h` they carry ([`PgT`], [`SpgT`],
//! [`HObject`], [`ReqId`], [`ObjectLocator`], [`OsdOp`], the `pg_nls_response_t` of a listing), the op codes
//! ([`op`]) and op flags ([`flag`]) a client needs.
//!
//! Invariants: op payloads travel in the message's data segment, concatenated in op order, each op's
//! share given by its `payload_len`; decoding slices the received data segment (no copy) and refuses a
//! data segment shorter than the ops claim. Encoding a decoded Ceph 16 message gives back its bytes
//! (the blkin trace and every reserved field are kept). Every count and length comes from the peer and
//! is checked before use.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};

use super::{decode_bufferlist, decode_string, encode_string, CephMessage, Uuid};
use crate::proto::denc::{encode_len_prefixed, encode_versioned, DecodeError, Decoder, Encode};
use crate::proto::message::{Message, MSG_OSD_OP, MSG_OSD_OPREPLY};
use crate::proto::types::UTime;

/// `CEPH_MSG_OSD_MAP`.
pub const MSG_OSD_MAP: u16 = 41;

/// The snapshot id of an object's head (`CEPH_NOSNAP`).
pub const NOSNAP: u64 = u64::MAX - 1;

/// The priority Ceph's Objecter sends ops with (`osd_client_op_priority`).
pub const OSD_CLIENT_OP_PRIORITY: u16 = 63;

/// `CEPH_OSD_OP_*` op codes (rados.h): mode | type | number.
pub mod op {
    pub const READ: u16 = 0x1201;
    pub const STAT: u16 = 0x1202;
    pub const WRITE: u16 = 0x2201;
    pub const WRITEFULL: u16 = 0x2202;
    pub const TRUNCATE: u16 = 0x2203;
    pub const DELETE: u16 = 0x2205;
    pub const CREATE: u16 = 0x220d;
    pub const OMAPGETVALS: u16 = 0x1212;
    pub const OMAPSETVALS: u16 = 0x2215;
    pub const PGNLS: u16 = 0x1505;

    /// Ops that write (`CEPH_OSD_OP_MODE_WR`).
    pub fn is_write(code: u16) -> bool {
        code & 0x2000 != 0
    }

    /// Ops on a placement group rather than an object (`CEPH_OSD_OP_TYPE_PG`).
    pub fn is_pg_op(code: u16) -> bool {
        code & 0x0f00 == 0x0500
    }

    /// Ceph's name for an op code, as its logs print it.
    pub fn name(code: u16) -> &'static str {
        match code {
            READ => "read",
            STAT => "stat",
            WRITE => "write",
            WRITEFULL => "writefull",
            TRUNCATE => "truncate",
            DELETE => "delete",
            CREATE => "create",
            OMAPGETVALS => "omap-get-vals",
            OMAPSETVALS => "omap-set-vals",
            PGNLS => "pgnls",
            _ => "op",
        }
    }
}

/// `CEPH_OSD_FLAG_*` request flags (rados.h).
pub mod flag {
    pub const ACK: u32 = 0x1;
    pub const ONDISK: u32 = 0x4;
    pub const RETRY: u32 = 0x8;
    pub const READ: u32 = 0x10;
    pub const WRITE: u32 = 0x20;
    pub const PGOP: u32 = 0x400;
    pub const KNOWN_REDIR: u32 = 0x40_0000;
}

/// `pg_t`: a pool and a placement seed (`u8` version 1, pool, seed, and the obsolete `preferred` = -1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PgT {
    pub pool: u64,
    pub seed: u32,
}

impl PgT {
    const VERSION: u8 = 1;

    pub fn encode(&self, b: &mut BytesMut) {
        b.put_u8(Self::VERSION);
        b.put_u64_le(self.pool);
        b.put_u32_le(self.seed);
        b.put_i32_le(-1);
    }

    pub fn decode(d: &mut Decoder<'_>) -> Result<PgT, DecodeError> {
        let v = d.u8()?;
        if v != Self::VERSION {
            return Err(DecodeError::invalid("pg_t", format!("version {v}")));
        }
        let pg = PgT {
            pool: d.u64()?,
            seed: d.u32()?,
        };
        d.i32()?;
        Ok(pg)
    }
}

/// `spg_t`: a placement group and its shard (`-1`, `NO_SHARD`, for replicated pools).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SpgT {
    pub pgid: PgT,
    pub shard: i8,
}

impl SpgT {
    pub const NO_SHARD: i8 = -1;

    pub fn new(pgid: PgT) -> SpgT {
        SpgT {
            pgid,
            shard: Self::NO_SHARD,
        }
    }

    pub fn encode(&self, b: &mut BytesMut) {
        encode_versioned(b, 1, 1, |b| {
            self.pgid.encode(b);
            b.put_i8(self.shard);
        });
    }

    pub fn decode(d: &mut Decoder<'_>) -> Result<SpgT, DecodeError> {
        d.versioned("spg_t", 1, |_, d| {
            Ok(SpgT {
                pgid: PgT::decode(d)?,
                shard: d.u8()? as i8,
            })
        })
    }
}

/// `osd_reqid_t`: who sent a request (entity type and number), its tid and the client incarnation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ReqId {
    pub entity_type: u8,
    pub entity_num: i64,
    pub tid: u64,
    pub inc: i32,
}

impl ReqId {
    pub fn encode(&self, b: &mut BytesMut) {
        encode_versioned(b, 2, 2, |b| {
            b.put_u8(self.entity_type);
            b.put_i64_le(self.entity_num);
            b.put_u64_le(self.tid);
            b.put_i32_le(self.inc);
        });
    }

    pub fn decode(d: &mut Decoder<'_>) -> Result<ReqId, DecodeError> {
        d.versioned("osd_reqid_t", 2, |_, d| {
            Ok(ReqId {
                entity_type: d.u8()?,
                entity_num: d.i64()?,
                tid: d.u64()?,
                inc: d.i32()?,
            })
        })
    }
}

/// `object_locator_t`: pool, locator key, namespace and an explicit hash (-1: hash the name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectLocator {
    pub pool: i64,
    pub key: String,
    pub nspace: String,
    pub hash: i64,
}

impl ObjectLocator {
    pub fn new(pool: u64) -> ObjectLocator {
        ObjectLocator {
            pool: pool as i64,
            key: String::new(),
            nspace: String::new(),
            hash: -1,
        }
    }

    pub fn encode(&self, b: &mut BytesMut) {
        encode_versioned(b, 6, 3, |b| {
            b.put_i64_le(self.pool);
            b.put_i32_le(-1); // preferred, obsolete
            encode_string(b, &self.key);
            encode_string(b, &self.nspace);
            b.put_i64_le(self.hash);
        });
    }

    pub fn decode(d: &mut Decoder<'_>) -> Result<ObjectLocator, DecodeError> {
        d.versioned("object_locator_t", 6, |v, d| {
            if v < 3 {
                return Err(DecodeError::invalid(
                    "object_locator_t",
                    format!("version {v}"),
                ));
            }
            let pool = d.i64()?;
            d.i32()?;
            let key = decode_string(d, "object_locator_t key")?;
            let nspace = if v >= 5 {
                decode_string(d, "object_locator_t nspace")?
            } else {
                String::new()
            };
            let hash = if v >= 6 { d.i64()? } else { -1 };
            Ok(ObjectLocator {
                pool,
                key,
                nspace,
                hash,
            })
        })
    }
}

/// `hobject_t` (struct v4): an object in a PG's sort order; also the cursor of a PG listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HObject {
    pub key: String,
    pub oid: String,
    pub snap: u64,
    pub hash: u32,
    pub max: bool,
    pub nspace: String,
    pub pool: i64,
}

impl Default for HObject {
    /// The minimum object (Ceph's `hobject_t()`): where a listing starts.
    fn default() -> Self {
        HObject {
            key: String::new(),
            oid: String::new(),
            snap: 0,
            hash: 0,
            max: false,
            nspace: String::new(),
            pool: i64::MIN,
        }
    }
}

impl HObject {
    pub fn encode(&self, b: &mut BytesMut) {
        encode_versioned(b, 4, 3, |b| {
            encode_string(b, &self.key);
            encode_string(b, &self.oid);
            b.put_u64_le(self.snap);
            b.put_u32_le(self.hash);
            b.put_u8(self.max as u8);
            encode_string(b, &self.nspace);
            b.put_i64_le(self.pool);
        });
    }

    pub fn decode(d: &mut Decoder<'_>) -> Result<HObject, DecodeError> {
        d.versioned("hobject_t", 4, |v, d| {
            if v < 4 {
                return Err(DecodeError::invalid("hobject_t", format!("version {v}")));
            }
            Ok(HObject {
                key: decode_string(d, "hobject_t key")?,
                oid: decode_string(d, "hobject_t oid")?,
                snap: d.u64()?,
                hash: d.u32()?,
                max: d.bool()?,
                nspace: decode_string(d, "hobject_t nspace")?,
                pool: d.i64()?,
            })
        })
    }
}

/// Bytes of `ceph_osd_op`'s union of per-op arguments.
pub const OSD_OP_ARGS_LEN: usize = 28;
/// Bytes of a packed `ceph_osd_op`.
pub const OSD_OP_LEN: usize = 2 + 4 + OSD_OP_ARGS_LEN + 4;

/// One op of a request or reply (`OSDOp`): the packed `ceph_osd_op` plus its payload (request: input
/// data; reply: output data) and, in a reply, its return value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OsdOp {
    pub code: u16,
    pub flags: u32,
    /// The raw union (`extent`, `pgls`, …); see [`OsdOp::extent`] and friends.
    pub args: [u8; OSD_OP_ARGS_LEN],
    /// Input (request) or output (reply) bytes; its length is the wire `payload_len`.
    pub payload: Bytes,
    /// The op's return value (replies only).
    pub rval: i32,
}

impl OsdOp {
    pub fn new(code: u16) -> OsdOp {
        OsdOp {
            code,
            flags: 0,
            args: [0; OSD_OP_ARGS_LEN],
            payload: Bytes::new(),
            rval: 0,
        }
    }

    /// An op with `extent { offset, length }` set.
    pub fn with_extent(code: u16, offset: u64, length: u64) -> OsdOp {
        let mut o = OsdOp::new(code);
        o.args[..8].copy_from_slice(&offset.to_le_bytes());
        o.args[8..16].copy_from_slice(&length.to_le_bytes());
        o
    }

    pub fn read(offset: u64, length: u64) -> OsdOp {
        OsdOp::with_extent(op::READ, offset, length)
    }

    pub fn write(offset: u64, data: Bytes) -> OsdOp {
        let mut o = OsdOp::with_extent(op::WRITE, offset, data.len() as u64);
        o.payload = data;
        o
    }

    pub fn write_full(data: Bytes) -> OsdOp {
        let mut o = OsdOp::with_extent(op::WRITEFULL, 0, data.len() as u64);
        o.payload = data;
        o
    }

    pub fn stat() -> OsdOp {
        OsdOp::new(op::STAT)
    }

    pub fn delete() -> OsdOp {
        OsdOp::new(op::DELETE)
    }

    /// `omap-get-vals`: up to `max` pairs after `start_after` whose keys start with `prefix`.
    pub fn omap_get_vals(start_after: &str, prefix: &str, max: u64) -> OsdOp {
        let mut b = BytesMut::new();
        encode_string(&mut b, start_after);
        b.put_u64_le(max);
        encode_string(&mut b, prefix);
        let mut o = OsdOp::new(op::OMAPGETVALS);
        o.payload = b.freeze();
        o
    }

    /// `omap-set-vals`: set these keys.
    pub fn omap_set_vals(vals: &BTreeMap<String, Bytes>) -> OsdOp {
        let mut b = BytesMut::new();
        b.put_u32_le(vals.len() as u32);
        for (k, v) in vals {
            encode_string(&mut b, k);
            encode_len_prefixed(&mut b, v);
        }
        let mut o = OsdOp::new(op::OMAPSETVALS);
        o.payload = b.freeze();
        o
    }

    /// `pgnls`: list up to `count` objects of the PG from `cursor` on.
    pub fn pgnls(count: u64, cursor: &HObject, start_epoch: u32) -> OsdOp {
        let mut o = OsdOp::new(op::PGNLS);
        o.args[..8].copy_from_slice(&count.to_le_bytes());
        o.args[8..12].copy_from_slice(&start_epoch.to_le_bytes());
        let mut b = BytesMut::new();
        cursor.encode(&mut b);
        o.payload = b.freeze();
        o
    }

    /// `extent.offset` and `extent.length`.
    pub fn extent(&self) -> (u64, u64) {
        let word = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&self.args[i..i + 8]);
            u64::from_le_bytes(a)
        };
        (word(0), word(8))
    }

    fn encode_packed(&self, b: &mut BytesMut) {
        b.put_u16_le(self.code);
        b.put_u32_le(self.flags);
        b.put_slice(&self.args);
        b.put_u32_le(self.payload.len() as u32);
    }

    /// The packed op and its announced payload length.
    fn decode_packed(d: &mut Decoder<'_>) -> Result<(OsdOp, usize), DecodeError> {
        let code = d.u16()?;
        let flags = d.u32()?;
        let mut args = [0u8; OSD_OP_ARGS_LEN];
        args.copy_from_slice(d.take(OSD_OP_ARGS_LEN, "ceph_osd_op")?);
        let len = d.u32()? as usize;
        let mut o = OsdOp::new(code);
        o.flags = flags;
        o.args = args;
        Ok((o, len))
    }
}

/// Give each op its share of `data` (no copy); refuses shares that overrun it.
fn split_data(ops: &mut [OsdOp], lens: &[usize], data: &Bytes) -> Result<(), DecodeError> {
    let mut at = 0usize;
    for (o, &len) in ops.iter_mut().zip(lens) {
        let end = at
            .checked_add(len)
            .filter(|&e| e <= data.len())
            .ok_or_else(|| {
                DecodeError::invalid(
                    "osd op payload",
                    format!(
                        "op {} claims {len} bytes at {at}, data has {}",
                        op::name(o.code),
                        data.len()
                    ),
                )
            })?;
        o.payload = data.slice(at..end);
        at = end;
    }
    Ok(())
}

/// The data segment of `ops`: their payloads in order (the single payload shared, not copied).
fn join_data(ops: &[OsdOp]) -> Bytes {
    let mut with_data = ops.iter().filter(|o| !o.payload.is_empty());
    match (with_data.next(), with_data.next()) {
        (None, _) => Bytes::new(),
        (Some(only), None) => only.payload.clone(),
        _ => {
            let mut b = BytesMut::with_capacity(ops.iter().map(|o| o.payload.len()).sum());
            for o in ops {
                b.put_slice(&o.payload);
            }
            b.freeze()
        }
    }
}

fn decode_ops(d: &mut Decoder<'_>, n: usize) -> Result<(Vec<OsdOp>, Vec<usize>), DecodeError> {
    let mut ops = Vec::with_capacity(n);
    let mut lens = Vec::with_capacity(n);
    for _ in 0..n {
        let (o, len) = OsdOp::decode_packed(d)?;
        ops.push(o);
        lens.push(len);
    }
    Ok((ops, lens))
}

/// `MOSDOp` (type 42): a client's request to the primary OSD of a PG; v8 layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MOSDOp {
    pub pgid: SpgT,
    /// The object's full name hash (the raw PG seed).
    pub hash: u32,
    pub map_epoch: u32,
    pub flags: u32,
    pub reqid: ReqId,
    /// The blkin trace (three words; zeros when not traced).
    pub trace: [u64; 3],
    pub client_inc: u32,
    pub mtime: UTime,
    pub oloc: ObjectLocator,
    pub oid: String,
    pub ops: Vec<OsdOp>,
    pub snapid: u64,
    pub snap_seq: u64,
    pub snaps: Vec<u64>,
    pub retry_attempt: i32,
    pub features: u64,
}

impl MOSDOp {
    /// An op on `oid` at the head, no snap context, first attempt. The message header's tid (the one the
    /// reply echoes) is the sender's to set: [`Message::with_tid`].
    pub fn new(pgid: SpgT, hash: u32, oloc: ObjectLocator, oid: &str, ops: Vec<OsdOp>) -> MOSDOp {
        MOSDOp {
            pgid,
            hash,
            map_epoch: 0,
            flags: 0,
            reqid: ReqId::default(),
            trace: [0; 3],
            client_inc: 0,
            mtime: UTime::default(),
            oloc,
            oid: oid.to_owned(),
            ops,
            snapid: NOSNAP,
            snap_seq: 0,
            snaps: Vec::new(),
            retry_attempt: 0,
            features: 0,
        }
    }
}

const MIN_SNAP_LEN: usize = 8;

/// A borrowed `MOSDOp`: what a sender encodes from its own state without building (and allocating)
/// an [`MOSDOp`] per send.
#[derive(Clone, Copy, Debug)]
pub struct MOSDOpView<'a> {
    pub pgid: SpgT,
    pub hash: u32,
    pub map_epoch: u32,
    pub flags: u32,
    pub reqid: ReqId,
    pub trace: [u64; 3],
    pub client_inc: u32,
    pub mtime: UTime,
    pub oloc: &'a ObjectLocator,
    pub oid: &'a str,
    pub ops: &'a [OsdOp],
    pub snapid: u64,
    pub snap_seq: u64,
    pub snaps: &'a [u64],
    pub retry_attempt: i32,
    pub features: u64,
}

impl MOSDOpView<'_> {
    pub fn encode_front(&self, b: &mut BytesMut) {
        self.pgid.encode(b);
        b.put_u32_le(self.hash);
        b.put_u32_le(self.map_epoch);
        b.put_u32_le(self.flags);
        self.reqid.encode(b);
        for w in self.trace {
            b.put_u64_le(w);
        }
        b.put_u32_le(self.client_inc);
        b.put_u32_le(self.mtime.sec);
        b.put_u32_le(self.mtime.nsec);
        self.oloc.encode(b);
        encode_string(b, self.oid);
        b.put_u16_le(self.ops.len() as u16);
        for o in self.ops {
            o.encode_packed(b);
        }
        b.put_u64_le(self.snapid);
        b.put_u64_le(self.snap_seq);
        b.put_u32_le(self.snaps.len() as u32);
        for s in self.snaps {
            b.put_u64_le(*s);
        }
        b.put_i32_le(self.retry_attempt);
        b.put_u64_le(self.features);
    }

    /// The message (v8, compat 3, the Objecter's priority); the ops' payloads are its data segment.
    pub fn to_message(&self) -> Message {
        let mut front = BytesMut::with_capacity(160 + self.oid.len() + OSD_OP_LEN * self.ops.len());
        self.encode_front(&mut front);
        let mut m = Message::new(MOSDOp::MSG_TYPE, front.freeze())
            .with_version(MOSDOp::VERSION, MOSDOp::COMPAT_VERSION)
            .with_priority(OSD_CLIENT_OP_PRIORITY)
            .with_data(join_data(self.ops));
        if let Some(o) = self.ops.iter().find(|o| o.code == op::WRITE) {
            // Ceph sets data_off to the write offset (truncated to the header's 16 bits).
            m.header.data_off = (o.extent().0 & 0xffff) as u16;
        }
        m
    }
}

impl MOSDOp {
    /// This op, borrowed.
    pub fn view(&self) -> MOSDOpView<'_> {
        MOSDOpView {
            pgid: self.pgid,
            hash: self.hash,
            map_epoch: self.map_epoch,
            flags: self.flags,
            reqid: self.reqid,
            trace: self.trace,
            client_inc: self.client_inc,
            mtime: self.mtime,
            oloc: &self.oloc,
            oid: &self.oid,
            ops: &self.ops,
            snapid: self.snapid,
            snap_seq: self.snap_seq,
            snaps: &self.snaps,
            retry_attempt: self.retry_attempt,
            features: self.features,
        }
    }
}

impl CephMessage for MOSDOp {
    const MSG_TYPE: u16 = MSG_OSD_OP;
    const VERSION: u16 = 8;
    const COMPAT_VERSION: u16 = 3;
    const NAME: &'static str = "MOSDOp";

    fn encode_front(&self, b: &mut BytesMut) {
        self.view().encode_front(b);
    }

    /// Only the v8 layout (what every Ceph since nautilus sends); the ops' payloads are left empty
    /// ([`from_message`](CephMessage::from_message) fills them from the data segment).
    fn decode_front(version: u16, d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(decode_osd_op(version, d)?.0)
    }

    fn to_message(&self) -> Message {
        self.view().to_message()
    }

    fn from_message(m: &Message) -> Result<Self, DecodeError> {
        super::check_header::<Self>(&m.header)?;
        let (mut op, lens) = decode_osd_op(m.header.version, &mut Decoder::new(&m.front))?;
        split_data(&mut op.ops, &lens, &m.data)?;
        Ok(op)
    }
}

fn decode_osd_op(version: u16, d: &mut Decoder<'_>) -> Result<(MOSDOp, Vec<usize>), DecodeError> {
    if version != 8 {
        return Err(DecodeError::invalid(
            "MOSDOp",
            format!("header version {version}: only v8 is supported"),
        ));
    }
    let pgid = SpgT::decode(d)?;
    let hash = d.u32()?;
    let map_epoch = d.u32()?;
    let flags = d.u32()?;
    let reqid = ReqId::decode(d)?;
    let trace = [d.u64()?, d.u64()?, d.u64()?];
    let client_inc = d.u32()?;
    let mtime = UTime::new(d.u32()?, d.u32()?);
    let oloc = ObjectLocator::decode(d)?;
    let oid = decode_string(d, "MOSDOp oid")?;
    let n = d.u16()? as usize;
    if n.saturating_mul(OSD_OP_LEN) > d.remaining() {
        return Err(DecodeError::invalid("MOSDOp", format!("{n} ops")));
    }
    let (ops, lens) = decode_ops(d, n)?;
    let snapid = d.u64()?;
    let snap_seq = d.u64()?;
    let ns = d.count(MIN_SNAP_LEN, "MOSDOp snaps")?;
    let snaps = (0..ns).map(|_| d.u64()).collect::<Result<_, _>>()?;
    let retry_attempt = d.i32()?;
    let features = d.u64()?;
    Ok((
        MOSDOp {
            pgid,
            hash,
            map_epoch,
            flags,
            reqid,
            trace,
            client_inc,
            mtime,
            oloc,
            oid,
            ops,
            snapid,
            snap_seq,
            snaps,
            retry_attempt,
            features,
        },
        lens,
    ))
}

/// `eversion_t`: a PG log version (`u64` version, `u32` epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EVersion {
    pub version: u64,
    pub epoch: u32,
}

impl EVersion {
    fn encode(&self, b: &mut BytesMut) {
        b.put_u64_le(self.version);
        b.put_u32_le(self.epoch);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<EVersion, DecodeError> {
        Ok(EVersion {
            version: d.u64()?,
            epoch: d.u32()?,
        })
    }
}

/// `MOSDOpReply` (type 43): the OSD's answer, with a result per op and their output data; v7/v8 layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MOSDOpReply {
    pub oid: String,
    pub pgid: PgT,
    pub flags: u64,
    /// The overall result: 0 or a negative errno (`-ENOENT`, `-EAGAIN`, …).
    pub result: i32,
    pub bad_replay_version: EVersion,
    pub map_epoch: u32,
    pub ops: Vec<OsdOp>,
    pub retry_attempt: i32,
    pub replay_version: EVersion,
    pub user_version: u64,
    /// The encoded `request_redirect_t`, when the OSD redirects the op (a cache tier); kept as bytes.
    pub redirect: Option<Bytes>,
    pub trace: [u64; 3],
}

impl CephMessage for MOSDOpReply {
    const MSG_TYPE: u16 = MSG_OSD_OPREPLY;
    const VERSION: u16 = 8;
    const COMPAT_VERSION: u16 = 2;
    const NAME: &'static str = "MOSDOpReply";

    fn encode_front(&self, b: &mut BytesMut) {
        encode_string(b, &self.oid);
        self.pgid.encode(b);
        b.put_u64_le(self.flags);
        b.put_i32_le(self.result);
        self.bad_replay_version.encode(b);
        b.put_u32_le(self.map_epoch);
        b.put_u32_le(self.ops.len() as u32);
        for o in &self.ops {
            o.encode_packed(b);
        }
        b.put_i32_le(self.retry_attempt);
        for o in &self.ops {
            b.put_i32_le(o.rval);
        }
        self.replay_version.encode(b);
        b.put_u64_le(self.user_version);
        b.put_u8(self.redirect.is_some() as u8);
        if let Some(r) = &self.redirect {
            b.put_slice(r);
        }
        for w in self.trace {
            b.put_u64_le(w);
        }
    }

    fn decode_front(version: u16, d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(decode_osd_op_reply(version, d)?.0)
    }

    fn to_message(&self) -> Message {
        let mut front = BytesMut::with_capacity(160);
        self.encode_front(&mut front);
        Message::new(Self::MSG_TYPE, front.freeze())
            .with_version(Self::VERSION, Self::COMPAT_VERSION)
            .with_priority(OSD_CLIENT_OP_PRIORITY)
            .with_data(join_data(&self.ops))
    }

    fn from_message(m: &Message) -> Result<Self, DecodeError> {
        super::check_header::<Self>(&m.header)?;
        let (mut r, lens) = decode_osd_op_reply(m.header.version, &mut Decoder::new(&m.front))?;
        split_data(&mut r.ops, &lens, &m.data)?;
        Ok(r)
    }
}

fn decode_osd_op_reply(
    version: u16,
    d: &mut Decoder<'_>,
) -> Result<(MOSDOpReply, Vec<usize>), DecodeError> {
    if !(7..=8).contains(&version) {
        return Err(DecodeError::invalid(
            "MOSDOpReply",
            format!("header version {version}: only v7 and v8 are supported"),
        ));
    }
    let oid = decode_string(d, "MOSDOpReply oid")?;
    let pgid = PgT::decode(d)?;
    let flags = d.u64()?;
    let result = d.i32()?;
    let bad_replay_version = EVersion::decode(d)?;
    let map_epoch = d.u32()?;
    let n = d.count(OSD_OP_LEN, "MOSDOpReply ops")?;
    let (mut ops, lens) = decode_ops(d, n)?;
    let retry_attempt = d.i32()?;
    for o in &mut ops {
        o.rval = d.i32()?;
    }
    let replay_version = EVersion::decode(d)?;
    let user_version = d.u64()?;
    let redirect = if d.bool()? {
        let start = d.rest();
        d.versioned("request_redirect_t", 1, |_, _| Ok(()))?;
        let used = start.len() - d.rest().len();
        Some(Bytes::copy_from_slice(&start[..used]))
    } else {
        None
    };
    let trace = if version >= 8 {
        [d.u64()?, d.u64()?, d.u64()?]
    } else {
        [0; 3]
    };
    Ok((
        MOSDOpReply {
            oid,
            pgid,
            flags,
            result,
            bad_replay_version,
            map_epoch,
            ops,
            retry_attempt,
            replay_version,
            user_version,
            redirect,
            trace,
        },
        lens,
    ))
}

/// `MOSDMap` (type 41): full and incremental OSD maps by epoch, plus the range the sender has.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MOSDMap {
    pub fsid: Uuid,
    /// Encoded `OSDMap::Incremental`s by epoch.
    pub incremental_maps: BTreeMap<u32, Bytes>,
    /// Encoded full `OSDMap`s by epoch.
    pub maps: BTreeMap<u32, Bytes>,
    pub oldest_map: u32,
    pub newest_map: u32,
}

impl MOSDMap {
    /// The newest epoch this message carries (full or incremental), 0 if none.
    pub fn last_epoch(&self) -> u32 {
        let inc = self
            .incremental_maps
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0);
        let full = self.maps.keys().next_back().copied().unwrap_or(0);
        inc.max(full)
    }
}

fn decode_epoch_map(
    d: &mut Decoder<'_>,
    what: &'static str,
) -> Result<BTreeMap<u32, Bytes>, DecodeError> {
    let n = d.count(8, what)?;
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let e = d.u32()?;
        m.insert(e, decode_bufferlist(d, what)?);
    }
    Ok(m)
}

fn encode_epoch_map(b: &mut BytesMut, m: &BTreeMap<u32, Bytes>) {
    b.put_u32_le(m.len() as u32);
    for (e, bl) in m {
        b.put_u32_le(*e);
        encode_len_prefixed(b, bl);
    }
}

impl CephMessage for MOSDMap {
    const MSG_TYPE: u16 = MSG_OSD_MAP;
    const VERSION: u16 = 4;
    const COMPAT_VERSION: u16 = 3;
    const NAME: &'static str = "MOSDMap";

    fn encode_front(&self, b: &mut BytesMut) {
        self.fsid.encode(b);
        encode_epoch_map(b, &self.incremental_maps);
        encode_epoch_map(b, &self.maps);
        b.put_u32_le(self.oldest_map);
        b.put_u32_le(self.newest_map);
        b.put_u32_le(0); // gap_removed_snaps: none
    }

    fn decode_front(version: u16, d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        let fsid = d.decode::<Uuid>()?;
        let incremental_maps = decode_epoch_map(d, "MOSDMap incremental maps")?;
        let maps = decode_epoch_map(d, "MOSDMap maps")?;
        let (oldest_map, newest_map) = if version >= 2 {
            (d.u32()?, d.u32()?)
        } else {
            (0, 0)
        };
        // v4's gap_removed_snaps are of no use to a client.
        Ok(MOSDMap {
            fsid,
            incremental_maps,
            maps,
            oldest_map,
            newest_map,
        })
    }
}

/// One entry of a PG listing: namespace, object name and locator key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListEntry {
    pub nspace: String,
    pub oid: String,
    pub locator: String,
}

/// `pg_nls_response_t`: the next cursor (`max` set when the PG is done) and the objects found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgNlsResponse {
    pub handle: HObject,
    pub entries: Vec<ListEntry>,
}

impl PgNlsResponse {
    pub fn decode(bytes: &[u8]) -> Result<PgNlsResponse, DecodeError> {
        Decoder::new(bytes).versioned("pg_nls_response_t", 1, |_, d| {
            let handle = HObject::decode(d)?;
            let n = d.count(12, "pg_nls_response_t entries")?;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                entries.push(ListEntry {
                    nspace: decode_string(d, "list entry nspace")?,
                    oid: decode_string(d, "list entry oid")?,
                    locator: decode_string(d, "list entry locator")?,
                });
            }
            Ok(PgNlsResponse { handle, entries })
        })
    }

    pub fn encode(&self, b: &mut BytesMut) {
        encode_versioned(b, 1, 1, |b| {
            self.handle.encode(b);
            b.put_u32_le(self.entries.len() as u32);
            for e in &self.entries {
                encode_string(b, &e.nspace);
                encode_string(b, &e.oid);
                encode_string(b, &e.locator);
            }
        });
    }
}

/// The output of `omap-get-vals`: the pairs and whether more follow.
pub fn decode_omap_vals(bytes: &[u8]) -> Result<(BTreeMap<String, Bytes>, bool), DecodeError> {
    let d = &mut Decoder::new(bytes);
    let n = d.count(8, "omap vals")?;
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let k = decode_string(d, "omap key")?;
        m.insert(k, decode_bufferlist(d, "omap value")?);
    }
    let more = if d.remaining() > 0 { d.bool()? } else { false };
    Ok((m, more))
}

/// The output of `stat`: size and modification time.
pub fn decode_stat(bytes: &[u8]) -> Result<(u64, UTime), DecodeError> {
    let d = &mut Decoder::new(bytes);
    Ok((d.u64()?, UTime::new(d.u32()?, d.u32()?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::codec::Tag;
    use crate::proto::control::capture::{frames, OSD_C2S, OSD_S2C};

    fn captured_message(stream: &[u8]) -> (Vec<Bytes>, Message) {
        let f = frames(stream)
            .into_iter()
            .find(|f| f.tag == Tag::Message as u8)
            .expect("a MESSAGE frame");
        let segs: Vec<Bytes> = f.segments.into_iter().map(Bytes::from).collect();
        let m = Message::from_segments(&segs).unwrap();
        (segs, m)
    }

    #[test]
    fn captured_osd_op_decodes_and_reencodes_identically() {
        let (segs, m) = captured_message(OSD_C2S);
        let op = MOSDOp::from_message(&m).unwrap();
        assert_eq!(op.pgid, SpgT::new(PgT { pool: 1, seed: 0 }));
        // Ceph printed the object as 1:104778fc:::obj2:head: the hash's bits reversed.
        assert_eq!(op.hash.reverse_bits(), 0x1047_78fc);
        assert_eq!(op.map_epoch, 14);
        assert_eq!(op.flags, flag::ONDISK | flag::WRITE | flag::KNOWN_REDIR);
        assert_eq!(op.oid, "obj2");
        assert_eq!(op.oloc, ObjectLocator::new(1));
        assert_eq!(op.snapid, NOSNAP);
        assert!(op.snaps.is_empty() && op.snap_seq == 0);
        assert_eq!(op.ops.len(), 1);
        assert_eq!(op.ops[0].code, op::WRITEFULL);
        assert_eq!(op.ops[0].extent(), (0, 3));
        assert_eq!(&op.ops[0].payload[..], b"vm\n");
        // The payload is the received data segment, shared.
        assert_eq!(op.ops[0].payload.as_ptr(), m.data.as_ptr());
        let back = op.to_message();
        assert_eq!(back.front, segs[1]);
        assert_eq!(back.data, segs[3]);
        assert_eq!(
            (
                back.header.msg_type,
                back.header.version,
                back.header.compat_version
            ),
            (42, 8, 3)
        );
        assert_eq!(back.header.priority, 63);
        // Ceph leaves reqid empty: the OSD takes the tid from the header, which the sender sets.
        assert_eq!(op.reqid, ReqId::default());
        assert_eq!(back.header.data_off, m.header.data_off);
    }

    #[test]
    fn captured_osd_op_reply_decodes_and_reencodes_identically() {
        let (segs, m) = captured_message(OSD_S2C);
        let r = MOSDOpReply::from_message(&m).unwrap();
        assert_eq!(r.oid, "obj2");
        assert_eq!(r.pgid, PgT { pool: 1, seed: 0 });
        assert_eq!(r.result, 0);
        assert_eq!(r.map_epoch, 14);
        assert_eq!(r.ops.len(), 1);
        assert_eq!((r.ops[0].code, r.ops[0].rval), (op::WRITEFULL, 0));
        assert_eq!(
            r.replay_version,
            EVersion {
                version: 8844,
                epoch: 14
            }
        );
        assert_eq!(r.user_version, 8844);
        assert!(r.redirect.is_none());
        let back = r.to_message();
        assert_eq!(back.front, segs[1]);
        assert!(back.data.is_empty());
    }

    #[test]
    fn truncated_fronts_are_errors() {
        let (_, m) = captured_message(OSD_C2S);
        for n in 0..m.front.len() {
            let mut cut = m.clone();
            cut.front = m.front.slice(..n);
            assert!(MOSDOp::from_message(&cut).is_err(), "{n}");
        }
        let (_, r) = captured_message(OSD_S2C);
        for n in 0..r.front.len() {
            let mut cut = r.clone();
            cut.front = r.front.slice(..n);
            assert!(MOSDOpReply::from_message(&cut).is_err(), "{n}");
        }
    }

    #[test]
    fn payload_longer_than_data_is_refused() {
        let (_, mut m) = captured_message(OSD_C2S);
        m.data = m.data.slice(..2);
        assert!(MOSDOp::from_message(&m).is_err());
    }

    #[test]
    fn op_with_several_payloads_round_trips() {
        let mut vals = BTreeMap::new();
        vals.insert("k1".to_owned(), Bytes::from_static(b"v1"));
        vals.insert("k2".to_owned(), Bytes::new());
        let mut op = MOSDOp::new(
            SpgT::new(PgT { pool: 3, seed: 7 }),
            0xdead_beef,
            ObjectLocator::new(3),
            "o",
            vec![
                OsdOp::write(4096, Bytes::from_static(b"abc")),
                OsdOp::omap_set_vals(&vals),
                OsdOp::stat(),
                OsdOp::pgnls(10, &HObject::default(), 5),
            ],
        );
        op.reqid.tid = 9;
        let m = op.to_message();
        assert_eq!(m.header.data_off, 4096);
        assert_eq!(MOSDOp::from_message(&m).unwrap(), op);
    }

    #[test]
    fn reply_with_outputs_and_redirect_round_trips() {
        let mut vals = BTreeMap::new();
        vals.insert("a".to_owned(), Bytes::from_static(b"1"));
        let mut out = BytesMut::new();
        out.put_u32_le(1);
        encode_string(&mut out, "a");
        encode_len_prefixed(&mut out, b"1");
        out.put_u8(1);
        let mut read = OsdOp::read(0, 3);
        read.payload = Bytes::from_static(b"xyz");
        let mut omap = OsdOp::omap_get_vals("", "", 10);
        omap.payload = out.freeze();
        omap.rval = 0;
        let mut redirect = BytesMut::new();
        encode_versioned(&mut redirect, 1, 1, |b| b.put_u32_le(7));
        let r = MOSDOpReply {
            oid: "o".into(),
            pgid: PgT { pool: 1, seed: 2 },
            flags: 4,
            result: -2,
            bad_replay_version: EVersion::default(),
            map_epoch: 20,
            ops: vec![read, omap],
            retry_attempt: 1,
            replay_version: EVersion {
                version: 3,
                epoch: 20,
            },
            user_version: 3,
            redirect: Some(redirect.freeze()),
            trace: [1, 2, 3],
        };
        let back = MOSDOpReply::from_message(&r.to_message()).unwrap();
        assert_eq!(back, r);
        let (m, more) = decode_omap_vals(&back.ops[1].payload).unwrap();
        assert_eq!((m, more), (vals, true));
    }

    #[test]
    fn osd_map_and_listing_round_trip() {
        let mut m = MOSDMap {
            fsid: Uuid([7; 16]),
            oldest_map: 1,
            newest_map: 12,
            ..MOSDMap::default()
        };
        m.maps.insert(10, Bytes::from_static(b"full"));
        m.incremental_maps.insert(11, Bytes::from_static(b"i11"));
        m.incremental_maps.insert(12, Bytes::from_static(b"i12"));
        assert_eq!(m.last_epoch(), 12);
        let msg = m.to_message();
        assert_eq!((msg.header.msg_type, msg.header.version), (41, 4));
        assert_eq!(MOSDMap::from_message(&msg).unwrap(), m);

        let resp = PgNlsResponse {
            handle: HObject {
                max: true,
                ..HObject::default()
            },
            entries: vec![ListEntry {
                nspace: String::new(),
                oid: "obj".into(),
                locator: String::new(),
            }],
        };
        let mut b = BytesMut::new();
        resp.encode(&mut b);
        assert_eq!(PgNlsResponse::decode(&b).unwrap(), resp);
        assert!(PgNlsResponse::decode(&b[..b.len() - 1]).is_err());
    }

    proptest::proptest! {
        /// Whatever a peer sends, decoding returns a value or an error, never a panic.
        #[test]
        fn prop_hostile_bytes_never_panic(
            front in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            version in 0u16..10,
        ) {
            let front = Bytes::from(front);
            let data = Bytes::from(data);
            for t in [MSG_OSD_OP, MSG_OSD_OPREPLY, MSG_OSD_MAP] {
                let m = Message::new(t, front.clone()).with_version(version, 1).with_data(data.clone());
                let _ = MOSDOp::from_message(&m);
                let _ = MOSDOpReply::from_message(&m);
                let _ = MOSDMap::from_message(&m);
            }
            let _ = PgNlsResponse::decode(&front);
            let _ = decode_omap_vals(&front);
            let _ = decode_stat(&front);
        }

        /// A captured reply with one byte changed still decodes or errs, never panics.
        #[test]
        fn prop_mutated_capture_never_panics(at in 0usize..148, byte in proptest::prelude::any::<u8>()) {
            let (_, m) = captured_message(OSD_S2C);
            let mut front = m.front.to_vec();
            let at = at % front.len();
            front[at] = byte;
            let mut cut = m.clone();
            cut.front = Bytes::from(front);
            let _ = MOSDOpReply::from_message(&cut);
        }
    }

    #[test]
    fn osd_map_counts_beyond_input_are_refused() {
        let mut b = BytesMut::new();
        b.put_slice(&[0; 16]);
        b.put_u32_le(u32::MAX);
        let m = Message::new(MSG_OSD_MAP, b.freeze()).with_version(4, 3);
        assert!(MOSDMap::from_message(&m).is_err());
    }
}
