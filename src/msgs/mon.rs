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
        NAMES
            .get(usize::from(release))
            .copied()
            .unwrap_or("unknown")
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
        self.what
            .insert(name.into(), SubscribeItem { start, flags });
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
        let mon_release = if version >= 7 {
            d.u8()?
        } else {
            release::UNKNOWN
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::codec::Tag;
    use crate::proto::control::capture::{frames, MON_C2S, MON_S2C};
    use crate::proto::message::{Message, MSG_PRIO_DEFAULT};
    use crate::proto::types::tests::arb_addrvec;
    use crate::proto::types::EntityAddr;
    use proptest::prelude::*;

    const MONMAP_WIRE: &[u8] = include_bytes!("../../tests/data/ceph16-mon-crc/monmap.wire.bin");
    const MONMAP_JSON: &str = include_str!("../../tests/data/ceph16-mon-crc/monmap.json");
    const MON_C2S_CONN1: &[u8] = include_bytes!("../../tests/data/ceph16-mon-crc/conn1-c2s.bin");

    /// The MESSAGE frames of a capture, in order.
    fn messages(stream: &[u8]) -> Vec<Message> {
        frames(stream)
            .into_iter()
            .filter(|f| f.tag == Tag::Message as u8)
            .map(|f| {
                let segs: Vec<Bytes> = f.segments.into_iter().map(Bytes::from).collect();
                Message::from_segments(&segs).unwrap()
            })
            .collect()
    }

    fn captured(stream: &[u8], msg_type: u16) -> Vec<Message> {
        messages(stream)
            .into_iter()
            .filter(|m| m.msg_type() == msg_type)
            .collect()
    }

    /// Our message has the captured one's type, version, compat and front.
    fn assert_same_as_captured(ours: &Message, theirs: &Message) {
        assert_eq!(ours.header.msg_type, theirs.header.msg_type);
        assert_eq!(ours.header.version, theirs.header.version);
        assert_eq!(ours.header.compat_version, theirs.header.compat_version);
        assert_eq!(ours.front, theirs.front);
        assert!(ours.middle.is_empty() && ours.data.is_empty());
    }

    /// Every strict prefix of a message's front is an error, never a panic.
    fn assert_every_front_prefix_fails<M: CephMessage + fmt::Debug>(m: &Message) {
        for n in 0..m.front.len() {
            let mut cut = m.clone();
            cut.front = m.front.slice(..n);
            assert!(M::from_message(&cut).is_err(), "{} prefix {n}", M::NAME);
        }
    }

    fn v2(s: &str) -> EntityAddr {
        EntityAddr::msgr2(s.parse().unwrap(), 0)
    }

    fn v1(s: &str) -> EntityAddr {
        EntityAddr::legacy(s.parse().unwrap(), 0)
    }

    /// Seconds since the epoch of a UTC civil date (Howard Hinnant's `days_from_civil`).
    fn unix_seconds(y: i64, m: i64, d: i64, hh: i64, mm: i64, ss: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        (era * 146097 + doe - 719468) * 86400 + hh * 3600 + mm * 60 + ss
    }

    /// `2026-11-29T05:29:51.201279Z` as `ceph mon dump` prints a utime_t (microseconds).
    fn parse_json_time(s: &str) -> (i64, u32) {
        let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
        let secs = unix_seconds(n(0..4), n(5..7), n(8..10), n(11..13), n(14..16), n(17..19));
        (secs, n(20..26) as u32)
    }

    fn golden() -> MonMap {
        MonMap::from_bytes(MONMAP_WIRE).unwrap()
    }

    #[test]
    fn golden_monmap_matches_ceph_mon_dump() {
        let m = golden();
        let j: serde_json::Value = serde_json::from_str(MONMAP_JSON).unwrap();
        assert_eq!(m.fsid.to_string(), j["fsid"]);
        assert_eq!(m.fsid.to_string(), "dfb85d94-d46c-4f54-bade-7e0159dac044");
        assert_eq!(u64::from(m.epoch), j["epoch"]);
        for (t, key) in [(m.last_changed, "modified"), (m.created, "created")] {
            let (secs, micros) = parse_json_time(j[key].as_str().unwrap());
            assert_eq!(i64::from(t.sec), secs, "{key}");
            assert_eq!(t.nsec / 1000, micros, "{key}");
        }
        assert_eq!(u64::from(m.min_mon_release), j["min_mon_release"]);
        assert_eq!(release::name(m.min_mon_release), j["min_mon_release_name"]);
        assert_eq!(u64::from(m.election_strategy), j["election_strategy"]);
        assert_eq!(m.stretch_mode_enabled, j["stretch_mode"]);
        assert_eq!(m.tiebreaker_mon, j["tiebreaker_mon"]);
        assert!(m.disallowed_leaders.is_empty() && m.removed_ranks.is_empty());
        assert!(m.stretch_marked_down_mons.is_empty());
        let names = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(
            mon_feature::names(m.persistent_features),
            names(&j["features"]["persistent"])
        );
        assert_eq!(
            mon_feature::names(m.optional_features),
            names(&j["features"]["optional"])
        );
        assert_eq!(m.persistent_features, 0xff);

        let mons = j["mons"].as_array().unwrap();
        assert_eq!(m.len(), mons.len());
        assert_eq!(m.ranks.len(), mons.len());
        for jm in mons {
            let rank = jm["rank"].as_u64().unwrap() as usize;
            let info = m.by_rank(rank).unwrap();
            assert_eq!(info.name, jm["name"]);
            assert_eq!(m.rank(&info.name), Some(rank));
            let jaddrs = jm["public_addrs"]["addrvec"].as_array().unwrap();
            assert_eq!(info.public_addrs.len(), jaddrs.len());
            for (a, ja) in info.public_addrs.0.iter().zip(jaddrs) {
                assert_eq!(a.addr_type.name(), ja["type"]);
                assert_eq!(a.sockaddr.unwrap().to_string(), ja["addr"]);
                assert_eq!(u64::from(a.nonce), ja["nonce"]);
            }
            assert_eq!(u64::from(info.priority), jm["priority"]);
            assert_eq!(u64::from(info.weight), jm["weight"]);
            assert_eq!(jm["crush_location"], "{}");
            assert!(info.crush_loc.is_empty());
        }
        let a = m.get("a").unwrap();
        assert_eq!(
            a.public_addrs,
            AddrVec(vec![v2("127.0.0.1:3300"), v1("127.0.0.1:6789")])
        );
        assert_eq!(
            m.to_string(),
            "e1: 1 mons at {a=[v2:127.0.0.1:3300/0,v1:127.0.0.1:6789/0]}"
        );
    }

    #[test]
    fn golden_monmap_reencodes_to_the_same_bytes() {
        assert_eq!(&golden().to_bytes()[..], MONMAP_WIRE);
        assert_eq!(&MONMAP_WIRE[..2], &[MonMap::STRUCT_V, MonMap::COMPAT]);
    }

    #[test]
    fn every_monmap_prefix_fails() {
        for n in 0..MONMAP_WIRE.len() {
            assert!(MonMap::from_bytes(&MONMAP_WIRE[..n]).is_err(), "prefix {n}");
        }
    }

    /// The golden map re-enveloped as struct version `v` with its last `cut` body bytes dropped.
    fn golden_as_version(v: u8, cut: usize) -> Vec<u8> {
        let body = &MONMAP_WIRE[6..MONMAP_WIRE.len() - cut];
        let mut b = BytesMut::new();
        encode_versioned(&mut b, v, 6, |b| b.put_slice(body));
        b.to_vec()
    }

    #[test]
    fn older_monmap_versions_decode_with_cephs_defaults() {
        let g = golden();
        // v8 lacks the stretch fields (bool, string, set: 9 bytes).
        let v8 = MonMap::from_bytes(&golden_as_version(8, 9)).unwrap();
        assert_eq!(v8, g);
        // v7 also lacks removed_ranks, strategy and disallowed_leaders (9 more bytes).
        let v7 = MonMap::from_bytes(&golden_as_version(7, 18)).unwrap();
        assert_eq!(v7, g);
        assert_eq!(v7.election_strategy, election_strategy::CLASSIC);
        // v6 also lacks min_mon_release: inferred from the persistent features (pacific).
        let v6 = MonMap::from_bytes(&golden_as_version(6, 19)).unwrap();
        assert_eq!(v6, g);
        assert_eq!(v6.min_mon_release, release::PACIFIC);
        // Each of those re-encodes as Ceph 16 would.
        assert_eq!(&v6.to_bytes()[..], MONMAP_WIRE);
    }

    #[test]
    fn newer_monmap_fields_are_skipped_and_pre_nautilus_maps_refused() {
        let mut b = BytesMut::new();
        encode_versioned(&mut b, 10, 6, |b| {
            b.put_slice(&MONMAP_WIRE[6..]);
            b.put_u8(1); // v10's global_stretch_mode_enabled
        });
        assert_eq!(MonMap::from_bytes(&b).unwrap(), golden());

        let mut too_new = MONMAP_WIRE.to_vec();
        too_new[1] = 10;
        assert!(matches!(
            MonMap::from_bytes(&too_new),
            Err(DecodeError::Incompatible { compat: 10, .. })
        ));
        for old in [1u8, 2, 5] {
            let mut b = MONMAP_WIRE.to_vec();
            b[0] = old;
            assert!(MonMap::from_bytes(&b).is_err(), "v{old}");
        }
        let mut trailing = MONMAP_WIRE.to_vec();
        trailing.push(0);
        assert!(MonMap::from_bytes(&trailing).is_err());
    }

    #[test]
    fn mon_info_older_versions() {
        // v1: name and a single legacy address; no priority, weight or location.
        let mut b = BytesMut::new();
        encode_versioned(&mut b, 1, 1, |b| {
            encode_string(b, "x");
            v1("10.0.0.1:6789").encode_legacy(b);
        });
        let i: MonInfo = from_bytes_exact(&b, "mon_info_t").unwrap();
        assert_eq!(i, MonInfo::new("x", AddrVec(vec![v1("10.0.0.1:6789")])));
        // v4: priority and weight, no location.
        let mut b = BytesMut::new();
        encode_versioned(&mut b, 4, 1, |b| {
            encode_string(b, "y");
            AddrVec(vec![v2("10.0.0.2:3300")]).encode(b);
            b.put_u16_le(3);
            b.put_u16_le(7);
        });
        let i: MonInfo = from_bytes_exact(&b, "mon_info_t").unwrap();
        assert_eq!((i.name.as_str(), i.priority, i.weight), ("y", 3, 7));
        assert!(i.crush_loc.is_empty());
    }

    #[test]
    fn monmap_building() {
        let mut m = MonMap::new(Uuid([7; 16]));
        assert!(m.is_empty());
        assert_eq!(m.add(MonInfo::new("b", v2("127.0.0.1:3301").into())), 0);
        assert_eq!(m.add(MonInfo::new("a", v2("127.0.0.1:3300").into())), 1);
        let mut again = MonInfo::new("b", v2("127.0.0.1:3302").into());
        again.priority = 2;
        assert_eq!(m.add(again.clone()), 0);
        assert_eq!(m.len(), 2);
        assert_eq!(m.by_rank(0), Some(&again));
        assert_eq!(m.rank("a"), Some(1));
        assert_eq!(m.rank("c"), None);
        assert!(m.by_rank(2).is_none());
        let names: Vec<&str> = m.iter_ranked().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["b", "a"]);
        assert_eq!(MonMap::from_bytes(&m.to_bytes()).unwrap(), m);
    }

    #[test]
    fn release_and_feature_helpers() {
        assert_eq!(release::name(16), "pacific");
        assert_eq!(release::name(0), "unknown");
        assert_eq!(release::name(200), "unknown");
        assert_eq!(release::from_mon_features(0), release::UNKNOWN);
        assert_eq!(
            release::from_mon_features(mon_feature::KRAKEN | mon_feature::NAUTILUS),
            release::NAUTILUS
        );
        assert_eq!(
            mon_feature::names(mon_feature::MIMIC | mon_feature::PINGING),
            ["mimic", "elector-pinging"]
        );
    }

    #[test]
    fn mmongetmap_matches_capture() {
        let theirs = &captured(MON_C2S, MSG_MON_GET_MAP)[0];
        assert_eq!(MMonGetMap::from_message(theirs).unwrap(), MMonGetMap);
        let ours = MMonGetMap.to_message();
        assert_same_as_captured(&ours, theirs);
        assert_eq!(ours.header.priority, MSG_PRIO_DEFAULT);
        assert_eq!(ours.header.priority, theirs.header.priority);
    }

    #[test]
    fn mmonmap_matches_capture() {
        let caps = captured(MON_S2C, MSG_MON_MAP);
        assert_eq!(caps.len(), 2);
        for theirs in &caps {
            let m = MMonMap::from_message(theirs).unwrap();
            assert_eq!(m.monmap, golden());
            assert_eq!(&theirs.front[4..], MONMAP_WIRE);
            assert_same_as_captured(&m.to_message(), theirs);
            assert_every_front_prefix_fails::<MMonMap>(theirs);
        }
    }

    #[test]
    fn mmonsubscribe_matches_capture() {
        let theirs = &captured(MON_C2S, MSG_MON_SUBSCRIBE)[0];
        let s = MMonSubscribe::from_message(theirs).unwrap();
        let want = MMonSubscribe {
            hostname: "vm".into(),
            ..MMonSubscribe::default()
        }
        .want("monmap", 0, 0)
        .want("config", 0, 0);
        assert_eq!(s, want);
        assert_same_as_captured(&want.to_message(), theirs);
        assert_every_front_prefix_fails::<MMonSubscribe>(theirs);
    }

    #[test]
    fn mmonsubscribe_onetime_osdmap_from_second_connection() {
        let subs: Vec<MMonSubscribe> = captured(MON_C2S_CONN1, MSG_MON_SUBSCRIBE)
            .iter()
            .map(|m| MMonSubscribe::from_message(m).unwrap())
            .collect();
        assert_eq!(subs.len(), 3);
        assert_eq!(
            subs[2].what.get("osdmap"),
            Some(&SubscribeItem {
                start: 0,
                flags: SUBSCRIBE_ONETIME
            })
        );
        assert_eq!(subs[1].what.get("mgrmap"), Some(&SubscribeItem::default()));
    }

    #[test]
    fn mmonsubscribe_older_versions() {
        // v1: old-style items {unused, have, onetime}; `have` is the last epoch seen.
        let mut front = BytesMut::new();
        front.put_u32_le(2);
        encode_string(&mut front, "monmap");
        front.put_u64_le(0);
        front.put_u64_le(4);
        front.put_u8(1);
        encode_string(&mut front, "osdmap");
        front.put_u64_le(0);
        front.put_u64_le(0);
        front.put_u8(0);
        let m = Message::new(MSG_MON_SUBSCRIBE, front.freeze()).with_version(1, 1);
        let s = MMonSubscribe::from_message(&m).unwrap();
        assert_eq!(s.what["monmap"], SubscribeItem { start: 5, flags: 1 });
        assert_eq!(s.what["osdmap"], SubscribeItem { start: 0, flags: 0 });
        // v2: new items, no hostname.
        let v3 = MMonSubscribe::default().want("config", 3, 0).to_message();
        let mut v2 = v3.clone().with_version(2, 1);
        v2.front = v3.front.slice(..v3.front.len() - 4);
        let s = MMonSubscribe::from_message(&v2).unwrap();
        assert_eq!(s.what["config"].start, 3);
        assert_eq!(s.hostname, "");
    }

    #[test]
    fn mconfig_matches_capture_and_round_trips() {
        let theirs = &captured(MON_S2C, MSG_CONFIG)[0];
        let c = MConfig::from_message(theirs).unwrap();
        assert!(c.config.is_empty());
        assert_same_as_captured(&c.to_message(), theirs);
        assert_every_front_prefix_fails::<MConfig>(theirs);

        let mut c = MConfig::default();
        c.config.insert("ms_mon_client_mode".into(), "crc".into());
        c.config.insert("debug_ms".into(), "0/5".into());
        let m = c.to_message();
        assert_eq!(MConfig::from_message(&m).unwrap(), c);
        assert_every_front_prefix_fails::<MConfig>(&m);
    }

    fn probe_reply() -> MMonProbe {
        let mut p = MMonProbe::new(golden().fsid, ProbeOp::Reply, "b", true, release::PACIFIC)
            .with_monmap(&golden());
        p.quorum = [0, 2].into_iter().collect();
        p.leader = 0;
        p.paxos_first_version = 1;
        p.paxos_last_version = 42;
        p.required_features = 0x0c01_0200_0204_0000;
        p
    }

    #[test]
    fn mmonprobe_round_trips_with_ceph16_header() {
        let p = probe_reply();
        let m = p.to_message();
        assert_eq!(
            (m.header.msg_type, m.header.version, m.header.compat_version),
            (67, 8, 5)
        );
        let back = MMonProbe::from_message(&m).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.monmap().unwrap(), Some(golden()));
        assert_every_front_prefix_fails::<MMonProbe>(&m);

        let probe = MMonProbe::new(Uuid([1; 16]), ProbeOp::Probe, "a", false, release::PACIFIC);
        let back = MMonProbe::from_message(&probe.to_message()).unwrap();
        assert_eq!(back, probe);
        assert_eq!(back.leader, -1);
        assert_eq!(back.monmap().unwrap(), None);
    }

    #[test]
    fn mmonprobe_layout() {
        let p = MMonProbe::new(Uuid([0xab; 16]), ProbeOp::Probe, "a", false, 16);
        let mut want = vec![0xab; 16];
        want.extend_from_slice(&1i32.to_le_bytes()); // op
        want.extend_from_slice(&[1, 0, 0, 0, b'a']); // name
        want.extend_from_slice(&[0; 4]); // quorum
        want.extend_from_slice(&[0; 4]); // monmap_bl
        want.push(0); // has_ever_joined
        want.extend_from_slice(&[0; 16]); // paxos first, last
        want.extend_from_slice(&[0; 8]); // required_features
        want.push(16); // mon_release
        want.extend_from_slice(&(-1i32).to_le_bytes()); // leader
        assert_eq!(&p.to_message().front[..], &want[..]);
    }

    #[test]
    fn mmonprobe_older_versions() {
        let p = probe_reply();
        let full = p.to_message();
        let at = |version: u16, cut: usize| {
            let mut m = full.clone().with_version(version, 5);
            m.front = full.front.slice(..full.front.len() - cut);
            MMonProbe::from_message(&m).unwrap()
        };
        // v7: no leader; the lowest quorum rank stands in.
        let v7 = at(7, 4);
        assert_eq!((v7.leader, v7.mon_release), (0, release::PACIFIC));
        // v6: no mon_release either; v5: no required_features.
        let v6 = at(6, 5);
        assert_eq!(
            (v6.mon_release, v6.required_features),
            (release::UNKNOWN, p.required_features)
        );
        let v5 = at(5, 13);
        assert_eq!(v5.required_features, 0);
        assert_eq!(v5.paxos_last_version, 42);
    }

    #[test]
    fn messages_check_type_and_compat() {
        let m = MMonGetMap.to_message();
        assert!(MMonMap::from_message(&m).is_err());
        assert!(MConfig::from_message(&m).is_err());
        let newer = probe_reply().to_message().with_version(10, 9);
        assert!(matches!(
            MMonProbe::from_message(&newer),
            Err(DecodeError::Incompatible {
                compat: 9,
                supported: 8,
                ..
            })
        ));
        // A newer sender's appended fields are ignored.
        let mut longer = probe_reply().to_message().with_version(9, 5);
        let mut front = BytesMut::from(&longer.front[..]);
        front.put_u64_le(0xfeed);
        longer.front = front.freeze();
        assert_eq!(MMonProbe::from_message(&longer).unwrap(), probe_reply());
        // An unknown probe op is malformed.
        let mut bad = probe_reply().to_message();
        let mut front = BytesMut::from(&bad.front[..]);
        front[16..20].copy_from_slice(&9i32.to_le_bytes());
        bad.front = front.freeze();
        assert!(MMonProbe::from_message(&bad).is_err());
    }

    fn arb_name() -> impl Strategy<Value = String> {
        "[a-z0-9.-]{0,6}"
    }

    fn arb_mon_info() -> impl Strategy<Value = MonInfo> {
        (
            arb_name(),
            arb_addrvec(),
            any::<u16>(),
            any::<u16>(),
            proptest::collection::btree_map(arb_name(), arb_name(), 0..3),
        )
            .prop_map(
                |(name, public_addrs, priority, weight, crush_loc)| MonInfo {
                    name,
                    public_addrs,
                    priority,
                    weight,
                    crush_loc,
                },
            )
    }

    prop_compose! {
        fn arb_monmap()(
            fsid in any::<[u8; 16]>(),
            epoch in any::<u32>(),
            times in any::<[u32; 4]>(),
            features in any::<[u64; 2]>(),
            infos in proptest::collection::vec(arb_mon_info(), 0..4),
            min_mon_release in any::<u8>(),
            removed_ranks in proptest::collection::btree_set(any::<i32>(), 0..3),
            election_strategy in 1u8..=3,
            disallowed_leaders in proptest::collection::btree_set(arb_name(), 0..3),
            stretch_mode_enabled in any::<bool>(),
            tiebreaker_mon in arb_name(),
            stretch_marked_down_mons in proptest::collection::btree_set(arb_name(), 0..3),
        ) -> MonMap {
            let mut m = MonMap::new(Uuid(fsid));
            m.epoch = epoch;
            m.last_changed = UTime::new(times[0], times[1]);
            m.created = UTime::new(times[2], times[3]);
            m.persistent_features = features[0];
            m.optional_features = features[1];
            for info in infos {
                m.add(info);
            }
            m.min_mon_release = min_mon_release;
            m.removed_ranks = removed_ranks;
            m.election_strategy = election_strategy;
            m.disallowed_leaders = disallowed_leaders;
            m.stretch_mode_enabled = stretch_mode_enabled;
            m.tiebreaker_mon = tiebreaker_mon;
            m.stretch_marked_down_mons = stretch_marked_down_mons;
            m
        }
    }

    proptest! {
        #[test]
        fn prop_monmap_round_trip(m in arb_monmap()) {
            let b = m.to_bytes();
            prop_assert_eq!(&MonMap::from_bytes(&b).unwrap(), &m);
            let msg = MMonMap { monmap: m.clone() }.to_message();
            prop_assert_eq!(MMonMap::from_message(&msg).unwrap().monmap, m);
        }

        #[test]
        fn prop_monmap_prefixes_fail(m in arb_monmap(), frac in 0.0f64..1.0) {
            let b = m.to_bytes();
            let n = ((b.len() as f64) * frac) as usize;
            prop_assert!(MonMap::from_bytes(&b[..n]).is_err());
        }

        #[test]
        fn prop_mmonprobe_round_trip(
            fsid in any::<[u8; 16]>(),
            op in 1i32..=6,
            name in arb_name(),
            quorum in proptest::collection::btree_set(any::<i32>(), 0..4),
            leader in any::<i32>(),
            monmap_bl in proptest::collection::vec(any::<u8>(), 0..40),
            nums in any::<(bool, u64, u64, u64, u8)>(),
        ) {
            let p = MMonProbe {
                fsid: Uuid(fsid),
                op: ProbeOp::try_from(op).unwrap(),
                name,
                quorum,
                leader,
                monmap_bl: Bytes::from(monmap_bl),
                has_ever_joined: nums.0,
                paxos_first_version: nums.1,
                paxos_last_version: nums.2,
                required_features: nums.3,
                mon_release: nums.4,
            };
            prop_assert_eq!(MMonProbe::from_message(&p.to_message()).unwrap(), p);
        }

        #[test]
        fn prop_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = MonMap::from_bytes(&bytes);
            let _ = from_bytes_exact::<MonInfo>(&bytes, "mon_info_t");
            for (t, v) in [(MSG_MON_MAP, 1), (MSG_MON_SUBSCRIBE, 1), (MSG_MON_SUBSCRIBE, 3),
                           (MSG_CONFIG, 1), (MSG_MON_PROBE, 5), (MSG_MON_PROBE, 8)] {
                let m = Message::new(t, Bytes::from(bytes.clone())).with_version(v, 1);
                let _ = MMonMap::from_message(&m);
                let _ = MMonSubscribe::from_message(&m);
                let _ = MConfig::from_message(&m);
                let _ = MMonProbe::from_message(&m);
            }
        }

        #[test]
        fn prop_monmap_mutations_never_panic(i in 0usize..201, byte in any::<u8>()) {
            let mut b = MONMAP_WIRE.to_vec();
            if let Some(x) = b.get_mut(i) {
                *x = byte;
            }
            let _ = MonMap::from_bytes(&b);
        }
    }
}
