//! The monitor map and the messages a client or a peer monitor exchanges with a Ceph monitor.
//!
//! Owns: [`MonMap`] (Ceph's `MonMap`, struct version 9 as Ceph 16 encodes it for nautilus-or-newer peers)
//! with its per-monitor [`MonInfo`] (`mon_info_t` v5), the monitor feature bits ([`mon_feature`]) and
//! release numbers; and the messages [`MMonGetMap`], [`MMonMap`], [`MMonSubscribe`], [`MConfig`] and
//! [`MMonProbe`] with the header versions Ceph 16 sends.
//!
//! Invariants: decoding accepts the layouts Ceph 16 reads back to nautilus (MonMap v6 and newer; older
//! MonMaps are refused with an error) and skips what a newer encoder appended inside a versioned struct;
//! encoding always writes Ceph 16's layout, so a map decoded from a Ceph 16 monitor re-encodes to the same
//! bytes. Containers are kept in Ceph's order (`std::map`/`std::set` are sorted, so they are `BTree*`s).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use super::{
    decode_bufferlist, decode_i32_set, decode_string, decode_string_map, decode_string_set,
    decode_string_vec, encode_i32_set, encode_string, encode_string_map, encode_string_set,
    encode_string_vec, CephMessage, Uuid,
};
use crate::proto::denc::{
    encode_len_prefixed, encode_versioned, from_bytes_exact, Decode, DecodeError, Decoder, Encode,
};
use crate::proto::message::{
    MSG_CONFIG, MSG_MON_GET_MAP, MSG_MON_MAP, MSG_MON_PROBE, MSG_MON_SUBSCRIBE,
};
use crate::proto::types::{AddrVec, UTime};

/// Monitor feature bits (`ceph::features::mon`), as carried in a [`MonMap`]'s persistent and optional
/// feature sets.
pub mod mon_feature {
    pub const KRAKEN: u64 = 1 << 0;
    pub const LUMINOUS: u64 = 1 << 1;
    pub const MIMIC: u64 = 1 << 2;
    pub const OSDMAP_PRUNE: u64 = 1 << 3;
    pub const NAUTILUS: u64 = 1 << 4;
    pub const OCTOPUS: u64 = 1 << 5;
    pub const PACIFIC: u64 = 1 << 6;
    pub const PINGING: u64 = 1 << 7;

    /// Every bit with the name `ceph mon dump` prints for it, lowest bit first.
    pub const NAMES: [(u64, &str); 8] = [
        (KRAKEN, "kraken"),
        (LUMINOUS, "luminous"),
        (MIMIC, "mimic"),
        (OSDMAP_PRUNE, "osdmap-prune"),
        (NAUTILUS, "nautilus"),
        (OCTOPUS, "octopus"),
        (PACIFIC, "pacific"),
        (PINGING, "elector-pinging"),
    ];

    /// The names of the known bits set in `features`, lowest bit first.
    pub fn names(features: u64) -> Vec<&'static str> {
        NAMES
            .iter()
            .filter(|(bit, _)| features & bit != 0)
            .map(|(_, name)| *name)
            .collect()
    }
}

/// Ceph release numbers (`ceph_release_t`, one byte on the wire); 0 is unknown.
pub mod release {
    pub const UNKNOWN: u8 = 0;
    pub const NAUTILUS: u8 = 14;
    pub const OCTOPUS: u8 = 15;
    pub const PACIFIC: u8 = 16;

    const NAMES: [&str; 20] = [
        "unknown",
        "argonaut",
        "bobtail",
        "cuttlefish",
        "dumpling",
        "emperor",
        "firefly",
        "giant",
        "hammer",
        "infernalis",
        "jewel",
        "kraken",
        "luminous",
        "mimic",
        "nautilus",
        "octopus",
        "pacific",
        "quincy",
        "reef",
        "squid",
    ];

    /// `pacific` for 16; `unknown` for 0 and for numbers past the table.
    pub fn name(release: u8) -> &'static str {
        NAMES.get(usize::from(release)).copied().unwrap_or("unknown")
    }

    /// The newest release whose monitor feature is in `features` (Ceph's
    /// `infer_ceph_release_from_mon_features`, used for maps older than v7).
    pub fn from_mon_features(features: u64) -> u8 {
        use super::mon_feature as f;
        [
            (f::PACIFIC, PACIFIC),
            (f::OCTOPUS, OCTOPUS),
            (f::NAUTILUS, NAUTILUS),
            (f::MIMIC, 13),
            (f::LUMINOUS, 12),
            (f::KRAKEN, 11),
        ]
        .iter()
        .find(|(bit, _)| features & bit != 0)
        .map_or(UNKNOWN, |(_, r)| *r)
    }
}

/// Election strategies (`MonMap::election_strategy`).
pub mod election_strategy {
    /// The original rank-based election; the default.
    pub const CLASSIC: u8 = 1;
    pub const DISALLOW: u8 = 2;
    pub const CONNECTIVITY: u8 = 3;
}

/// One monitor in a [`MonMap`] (Ceph's `mon_info_t`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MonInfo {
    /// `a` in `mon.a`.
    pub name: String,
    /// The addresses clients and other monitors reach it at (`[v2:…:3300/0,v1:…:6789/0]`).
    pub public_addrs: AddrVec,
    /// Lower is preferred.
    pub priority: u16,
    pub weight: u16,
    /// CRUSH location (`datacenter=dc1`), used by stretch mode.
    pub crush_loc: BTreeMap<String, String>,
}

impl MonInfo {
    /// `mon_info_t` struct version and compat Ceph 16 writes.
    pub const STRUCT_V: u8 = 5;
    pub const COMPAT: u8 = 1;

    pub fn new(name: impl Into<String>, public_addrs: AddrVec) -> Self {
        MonInfo {
            name: name.into(),
            public_addrs,
            ..MonInfo::default()
        }
    }
}

impl Encode for MonInfo {
    fn encode(&self, buf: &mut BytesMut) {
        encode_versioned(buf, Self::STRUCT_V, Self::COMPAT, |buf| {
            encode_string(buf, &self.name);
            self.public_addrs.encode(buf);
            buf.put_u16_le(self.priority);
            buf.put_u16_le(self.weight);
            encode_string_map(buf, &self.crush_loc);
        });
    }
}

impl Decode for MonInfo {
    /// v1–v2 carry one legacy address (the [`AddrVec`] decoder takes that form too), v2 adds priority,
    /// v4 weight, v5 the CRUSH location.
    fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        d.versioned("mon_info_t", Self::STRUCT_V, |v, d| {
            let name = decode_string(d, "mon_info_t name")?;
            let public_addrs = AddrVec::decode(d)?;
            let priority = if v >= 2 { d.u16()? } else { 0 };
            let weight = if v >= 4 { d.u16()? } else { 0 };
            let crush_loc = if v >= 5 {
                decode_string_map(d, "mon_info_t crush_loc")?
            } else {
                BTreeMap::new()
            };
            Ok(MonInfo {
                name,
                public_addrs,
                priority,
                weight,
                crush_loc,
            })
        })
    }
}

/// The monitor map: which monitors form the cluster `fsid`, and the rules they elect by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonMap {
    pub fsid: Uuid,
    pub epoch: u32,
    pub last_changed: UTime,
    pub created: UTime,
    /// [`mon_feature`] bits that, once set, are never cleared.
    pub persistent_features: u64,
    pub optional_features: u64,
    /// The monitors by name (Ceph's `mon_info`; the key is normally the monitor's own name).
    pub mons: BTreeMap<String, MonInfo>,
    /// Monitor names in rank order: `ranks[0]` is rank 0.
    pub ranks: Vec<String>,
    /// Oldest release every monitor must run ([`release`]).
    pub min_mon_release: u8,
    /// Ranks removed when this map took effect.
    pub removed_ranks: BTreeSet<i32>,
    /// [`election_strategy`].
    pub election_strategy: u8,
    /// Monitors that may not lead (strategies DISALLOW and CONNECTIVITY).
    pub disallowed_leaders: BTreeSet<String>,
    pub stretch_mode_enabled: bool,
    pub tiebreaker_mon: String,
    /// Monitors that may not lead until they have recovered.
    pub stretch_marked_down_mons: BTreeSet<String>,
}

impl Default for MonMap {
    fn default() -> Self {
        MonMap::new(Uuid::nil())
    }
}

/// `mon_feature_t` envelope version (and compat).
const MON_FEATURE_T_V: u8 = 1;
/// Oldest `MonMap` layout we read: nautilus (v6) dropped the legacy `mon_addr` map.
const MONMAP_OLDEST_V: u8 = 6;
/// Fewest bytes one `mon_info` entry takes: key length, envelope, name length.
const MIN_MON_INFO_ENTRY_LEN: usize = 4 + 6 + 4;

impl MonMap {
    /// `MonMap` struct version and compat Ceph 16 writes for nautilus-or-newer peers.
    pub const STRUCT_V: u8 = 9;
    pub const COMPAT: u8 = 6;

    /// An empty epoch-0 map of cluster `fsid` with Ceph's defaults (classic elections).
    pub fn new(fsid: Uuid) -> Self {
        MonMap {
            fsid,
            epoch: 0,
            last_changed: UTime::default(),
            created: UTime::default(),
            persistent_features: 0,
            optional_features: 0,
            mons: BTreeMap::new(),
            ranks: Vec::new(),
            min_mon_release: release::UNKNOWN,
            removed_ranks: BTreeSet::new(),
            election_strategy: election_strategy::CLASSIC,
            disallowed_leaders: BTreeSet::new(),
            stretch_mode_enabled: false,
            tiebreaker_mon: String::new(),
            stretch_marked_down_mons: BTreeSet::new(),
        }
    }

    /// Add a monitor at the next rank (as Ceph does once the map has the nautilus feature) and return
    /// its rank. A monitor of the same name is replaced and keeps its rank.
    pub fn add(&mut self, info: MonInfo) -> usize {
        let rank = match self.rank(&info.name) {
            Some(r) => r,
            None => {
                self.ranks.push(info.name.clone());
                self.ranks.len() - 1
            }
        };
        self.mons.insert(info.name.clone(), info);
        rank
    }

    /// The rank of monitor `name`.
    pub fn rank(&self, name: &str) -> Option<usize> {
        self.ranks.iter().position(|n| n == name)
    }

    /// The monitor at `rank`.
    pub fn by_rank(&self, rank: usize) -> Option<&MonInfo> {
        self.ranks.get(rank).and_then(|n| self.mons.get(n))
    }

    /// The monitor named `name`.
    pub fn get(&self, name: &str) -> Option<&MonInfo> {
        self.mons.get(name)
    }

    /// The monitors in rank order.
    pub fn iter_ranked(&self) -> impl Iterator<Item = &MonInfo> {
        self.ranks.iter().filter_map(|n| self.mons.get(n))
    }

    pub fn len(&self) -> usize {
        self.mons.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mons.is_empty()
    }

    /// Decode an encoded map that fills `buf` exactly (a monmap file, an MMonMap's bufferlist).
    pub fn from_bytes(buf: &[u8]) -> Result<Self, DecodeError> {
        from_bytes_exact(buf, "MonMap")
    }

    /// The encoding Ceph 16 sends.
    pub fn to_bytes(&self) -> Bytes {
        crate::proto::denc::to_bytes(self)
    }

    fn decode_body(v: u8, d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        if v < MONMAP_OLDEST_V {
            return Err(DecodeError::invalid(
                "MonMap",
                format!("struct_v {v} predates nautilus (v{MONMAP_OLDEST_V}); not supported"),
            ));
        }
        let mut m = MonMap::new(d.decode()?);
        m.epoch = d.u32()?;
        m.last_changed = d.decode()?;
        m.created = d.decode()?;
        m.persistent_features = decode_mon_features(d)?;
        m.optional_features = decode_mon_features(d)?;
        let n = d.count(MIN_MON_INFO_ENTRY_LEN, "MonMap mon_info")?;
        for _ in 0..n {
            let key = decode_string(d, "MonMap mon_info key")?;
            m.mons.insert(key, d.decode()?);
        }
        m.ranks = decode_string_vec(d, "MonMap ranks")?;
        m.min_mon_release = if v >= 7 {
            d.u8()?
        } else {
            release::from_mon_features(m.persistent_features)
        };
        if v >= 8 {
            m.removed_ranks = decode_i32_set(d, "MonMap removed_ranks")?;
            m.election_strategy = d.u8()?;
            m.disallowed_leaders = decode_string_set(d, "MonMap disallowed_leaders")?;
        }
        if v >= 9 {
            m.stretch_mode_enabled = d.bool()?;
            m.tiebreaker_mon = decode_string(d, "MonMap tiebreaker_mon")?;
            m.stretch_marked_down_mons = decode_string_set(d, "MonMap stretch_marked_down_mons")?;
        }
        Ok(m)
    }
}

fn decode_mon_features(d: &mut Decoder<'_>) -> Result<u64, DecodeError> {
    d.versioned("mon_feature_t", MON_FEATURE_T_V, |_, d| d.u64())
}

fn encode_mon_features(buf: &mut BytesMut, features: u64) {
    encode_versioned(buf, MON_FEATURE_T_V, MON_FEATURE_T_V, |buf| {
        buf.put_u64_le(features)
    });
}

impl Encode for MonMap {
    fn encode(&self, buf: &mut BytesMut) {
        encode_versioned(buf, Self::STRUCT_V, Self::COMPAT, |buf| {
            self.fsid.encode(buf);
            buf.put_u32_le(self.epoch);
            self.last_changed.encode(buf);
            self.created.encode(buf);
            encode_mon_features(buf, self.persistent_features);
            encode_mon_features(buf, self.optional_features);
            buf.put_u32_le(self.mons.len() as u32);
            for (name, info) in &self.mons {
                encode_string(buf, name);
                info.encode(buf);
            }
            encode_string_vec(buf, &self.ranks);
            buf.put_u8(self.min_mon_release);
            encode_i32_set(buf, &self.removed_ranks);
            buf.put_u8(self.election_strategy);
            encode_string_set(buf, &self.disallowed_leaders);
            buf.put_u8(u8::from(self.stretch_mode_enabled));
            encode_string(buf, &self.tiebreaker_mon);
            encode_string_set(buf, &self.stretch_marked_down_mons);
        });
    }
}

impl Decode for MonMap {
    /// Struct versions 6 to 9, and newer ones whose compat is at most 9 (their extra fields skipped).
    fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        // Before v3 the map opened with a bare u16 version; refuse it here rather than misread it as an
        // envelope.
        match d.rest().first() {
            Some(&v) if v < MONMAP_OLDEST_V => Self::decode_body(v, d),
            _ => d.versioned("MonMap", Self::STRUCT_V, Self::decode_body),
        }
    }
}

impl fmt::Display for MonMap {
    /// Ceph's `MonMap::print_summary`: `e1: 1 mons at {a=[v2:127.0.0.1:3300/0,v1:127.0.0.1:6789/0]}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e{}: {} mons at {{", self.epoch, self.mons.len())?;
        for (i, (name, info)) in self.mons.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{name}={}", info.public_addrs)?;
        }
        f.write_str("}")
    }
}

/// `MMonGetMap` (type 5): a client asks for the current monitor map. Empty front.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MMonGetMap;

impl CephMessage for MMonGetMap {
    const MSG_TYPE: u16 = MSG_MON_GET_MAP;
    const VERSION: u16 = 1;
    const COMPAT_VERSION: u16 = 1;
    const NAME: &'static str = "MMonGetMap";

    fn encode_front(&self, _front: &mut BytesMut) {}

    fn decode_front(_version: u16, _front: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(MMonGetMap)
    }
}

/// `MMonMap` (type 4): the monitor map, sent in reply to [`MMonGetMap`] and to `monmap` subscribers.
/// Front: a bufferlist (`u32` length) holding the encoded [`MonMap`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MMonMap {
    pub monmap: MonMap,
}

impl CephMessage for MMonMap {
    const MSG_TYPE: u16 = MSG_MON_MAP;
    const VERSION: u16 = 1;
    const COMPAT_VERSION: u16 = 1;
    const NAME: &'static str = "MMonMap";

    fn encode_front(&self, front: &mut BytesMut) {
        encode_len_prefixed(front, &self.monmap.to_bytes());
    }

    fn decode_front(_version: u16, front: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        let bl = front.len_prefixed("MMonMap monmapbl")?;
        Ok(MMonMap {
            monmap: MonMap::from_bytes(bl)?,
        })
    }
}

/// Subscription flag: send one update, then drop the subscription (`CEPH_SUBSCRIBE_ONETIME`).
pub const SUBSCRIBE_ONETIME: u8 = 1;

/// One subscription (`ceph_mon_subscribe_item`, packed: `le64 start`, `u8 flags`): send maps from epoch
/// `start` on (0: the current one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SubscribeItem {
    pub start: u64,
    /// [`SUBSCRIBE_ONETIME`] or 0.
    pub flags: u8,
}

/// `MMonSubscribe` (type 15): what a client wants the monitor to keep sending it — map name (`monmap`,
/// `config`, `osdmap`, `mgrmap`, …) to [`SubscribeItem`] — and, since v3, its hostname.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MMonSubscribe {
    pub what: BTreeMap<String, SubscribeItem>,
    pub hostname: String,
}

/// Packed sizes of the subscription items: v2+ and the pre-SUBSCRIBE2 `ceph_mon_subscribe_item_old`
/// (`le64 unused`, `le64 have`, `u8 onetime`).
const SUBSCRIBE_ITEM_LEN: usize = 9;
const SUBSCRIBE_ITEM_OLD_LEN: usize = 17;

impl MMonSubscribe {
    /// Subscribe to `name` from epoch `start` (Ceph's `sub_want`).
    pub fn want(mut self, name: impl Into<String>, start: u64, flags: u8) -> Self {
        self.what.insert(name.into(), SubscribeItem { start, flags });
        self
    }
}

impl CephMessage for MMonSubscribe {
    const MSG_TYPE: u16 = MSG_MON_SUBSCRIBE;
    const VERSION: u16 = 3;
    const COMPAT_VERSION: u16 = 1;
    const NAME: &'static str = "MMonSubscribe";

    fn encode_front(&self, front: &mut BytesMut) {
        front.put_u32_le(self.what.len() as u32);
        for (name, item) in &self.what {
            encode_string(front, name);
            front.put_u64_le(item.start);
            front.put_u8(item.flags);
        }
        encode_string(front, &self.hostname);
    }

    /// v1 carries old-style items (`have` is the last epoch seen), v2 the new ones, v3 adds the hostname.
    fn decode_front(version: u16, d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        let old = version < 2;
        let item_len = if old {
            SUBSCRIBE_ITEM_OLD_LEN
        } else {
            SUBSCRIBE_ITEM_LEN
        };
        let n = d.count(4 + item_len, "MMonSubscribe what")?;
        let mut what = BTreeMap::new();
        for _ in 0..n {
            let name = decode_string(d, "MMonSubscribe name")?;
            let item = if old {
                let _unused = d.u64()?;
                let have = d.u64()?;
                let onetime = d.bool()?;
                SubscribeItem {
                    start: if have == 0 { 0 } else { have.wrapping_add(1) },
                    flags: if onetime { SUBSCRIBE_ONETIME } else { 0 },
                }
            } else {
                SubscribeItem {
                    start: d.u64()?,
                    flags: d.u8()?,
                }
            };
            what.insert(name, item);
        }
        let hostname = if version >= 3 {
            decode_string(d, "MMonSubscribe hostname")?
        } else {
            String::new()
        };
        Ok(MMonSubscribe { what, hostname })
    }
}

/// `MConfig` (type 62): the configuration options the monitor holds for the receiver, name to value.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MConfig {
    pub config: BTreeMap<String, String>,
}

impl CephMessage for MConfig {
    const MSG_TYPE: u16 = MSG_CONFIG;
    const VERSION: u16 = 1;
    const COMPAT_VERSION: u16 = 1;
    const NAME: &'static str = "MConfig";

    fn encode_front(&self, front: &mut BytesMut) {
        encode_string_map(front, &self.config);
    }

    fn decode_front(_version: u16, d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(MConfig {
            config: decode_string_map(d, "MConfig config")?,
        })
    }
}

/// What an [`MMonProbe`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum ProbeOp {
    /// "Who is out there?" — sent by a monitor bootstrapping.
    Probe = 1,
    /// The answer: the replier's quorum, monmap and paxos versions.
    Reply = 2,
    Slurp = 3,
    SlurpLatest = 4,
    Data = 5,
    /// The prober lacks features the cluster requires (`required_features`).
    MissingFeatures = 6,
}

impl TryFrom<i32> for ProbeOp {
    type Error = DecodeError;

    fn try_from(op: i32) -> Result<Self, DecodeError> {
        Ok(match op {
            1 => ProbeOp::Probe,
            2 => ProbeOp::Reply,
            3 => ProbeOp::Slurp,
            4 => ProbeOp::SlurpLatest,
            5 => ProbeOp::Data,
            6 => ProbeOp::MissingFeatures,
            other => {
                return Err(DecodeError::invalid(
                    "MMonProbe op",
                    format!("unknown op {other}"),
                ))
            }
        })
    }
}

/// `MMonProbe` (type 67): how monitors find each other before an election. Ceph 16 sends header
/// version 8, compat 5.
///
/// Written from Ceph's source, not yet checked against captured bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MMonProbe {
    pub fsid: Uuid,
    pub op: ProbeOp,
    /// The sender's monitor name (`a`).
    pub name: String,
    /// Ranks in the sender's quorum (empty unless it is in one).
    pub quorum: BTreeSet<i32>,
    /// The quorum's leader rank, -1 if none (v8; older senders imply the lowest quorum rank).
    pub leader: i32,
    /// The sender's encoded [`MonMap`] (replies carry it; probes leave it empty). See
    /// [`monmap`](MMonProbe::monmap).
    pub monmap_bl: Bytes,
    pub has_ever_joined: bool,
    pub paxos_first_version: u64,
    pub paxos_last_version: u64,
    /// Features the cluster requires (v6).
    pub required_features: u64,
    /// The sender's release ([`release`], v7).
    pub mon_release: u8,
}

impl MMonProbe {
    /// A message with Ceph's defaults for the fields its constructor leaves out: no quorum, no leader,
    /// no monmap, paxos versions and required features 0.
    pub fn new(
        fsid: Uuid,
        op: ProbeOp,
        name: impl Into<String>,
        has_ever_joined: bool,
        mon_release: u8,
    ) -> Self {
        MMonProbe {
            fsid,
            op,
            name: name.into(),
            quorum: BTreeSet::new(),
            leader: -1,
            monmap_bl: Bytes::new(),
            has_ever_joined,
            paxos_first_version: 0,
            paxos_last_version: 0,
            required_features: 0,
            mon_release,
        }
    }

    /// Carry `monmap` (encoded as Ceph 16 encodes it).
    pub fn with_monmap(mut self, monmap: &MonMap) -> Self {
        self.monmap_bl = monmap.to_bytes();
        self
    }

    /// The carried monitor map, if any.
    pub fn monmap(&self) -> Result<Option<MonMap>, DecodeError> {
        if self.monmap_bl.is_empty() {
            return Ok(None);
        }
        MonMap::from_bytes(&self.monmap_bl).map(Some)
    }
}

impl CephMessage for MMonProbe {
    const MSG_TYPE: u16 = MSG_MON_PROBE;
    const VERSION: u16 = 8;
    const COMPAT_VERSION: u16 = 5;
    const NAME: &'static str = "MMonProbe";

    fn encode_front(&self, front: &mut BytesMut) {
        self.fsid.encode(front);
        front.put_i32_le(self.op as i32);
        encode_string(front, &self.name);
        encode_i32_set(front, &self.quorum);
        encode_len_prefixed(front, &self.monmap_bl);
        front.put_u8(u8::from(self.has_ever_joined));
        front.put_u64_le(self.paxos_first_version);
        front.put_u64_le(self.paxos_last_version);
        front.put_u64_le(self.required_features);
        front.put_u8(self.mon_release);
        front.put_i32_le(self.leader);
    }

    fn decode_front(version: u16, d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        let fsid = d.decode()?;
        let op = ProbeOp::try_from(d.i32()?)?;
        let name = decode_string(d, "MMonProbe name")?;
        let quorum = decode_i32_set(d, "MMonProbe quorum")?;
        let monmap_bl = decode_bufferlist(d, "MMonProbe monmap_bl")?;
        let has_ever_joined = d.bool()?;
        let paxos_first_version = d.u64()?;
        let paxos_last_version = d.u64()?;
        let required_features = if version >= 6 { d.u64()? } else { 0 };
        let mon_release = if version >= 7 { d.u8()? } else { release::UNKNOWN };
        let leader = if version >= 8 {
            d.i32()?
        } else {
            quorum.first().copied().unwrap_or(-1)
        };
        Ok(MMonProbe {
            fsid,
            op,
            name,
            quorum,
            leader,
            monmap_bl,
            has_ever_joined,
            paxos_first_version,
            paxos_last_version,
            required_features,
            mon_release,
        })
    }
}
