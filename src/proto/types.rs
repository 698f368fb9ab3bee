//! Ceph's identity and address types as msgr2 puts them on the wire.
//!
//! Owns: entity types, `entity_addr_t` ([`EntityAddr`]), `entity_addrvec_t` ([`AddrVec`]),
//! `entity_name_t` ([`EntityName`]), the auth layer's `EntityName` ([`AuthEntityName`]) and `utime_t`
//! ([`UTime`]), each with Ceph's encoding (always the full-feature form msgr2 frames assume) and Ceph's
//! printed form.
//!
//! Invariants: socket addresses are `core::net` values (no `std::net` in `proto`); decoding accepts every
//! form Ceph's decoder accepts for the address families that exist (IPv4, IPv6, unspecified) and turns
//! anything else into a [`DecodeError`] — unknown families, oversized lengths and unknown address types
//! never panic.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use bytes::{BufMut, BytesMut};

use super::denc::{encode_len_prefixed, encode_versioned, Decode, DecodeError, Decoder, Encode};

/// `CEPH_ENTITY_TYPE_*` (msgr.h): what kind of daemon or client an entity is.
pub mod entity_type {
    pub const MON: u8 = 0x01;
    pub const MDS: u8 = 0x02;
    pub const OSD: u8 = 0x04;
    pub const CLIENT: u8 = 0x08;
    pub const MGR: u8 = 0x10;
    pub const AUTH: u8 = 0x20;
    pub const ANY: u8 = 0xff;
}

/// Ceph's `ceph_entity_type_name`: `"mon"`, `"osd"`, `"client"`, …, `"unknown"` for anything else.
pub fn entity_type_name(t: u8) -> &'static str {
    match t {
        entity_type::MON => "mon",
        entity_type::MDS => "mds",
        entity_type::OSD => "osd",
        entity_type::CLIENT => "client",
        entity_type::MGR => "mgr",
        entity_type::AUTH => "auth",
        _ => "unknown",
    }
}

/// The inverse of [`entity_type_name`] for the named types (Ceph's `str_to_ceph_entity`).
pub fn entity_type_from_name(name: &str) -> Option<u8> {
    Some(match name {
        "mon" => entity_type::MON,
        "mds" => entity_type::MDS,
        "osd" => entity_type::OSD,
        "client" => entity_type::CLIENT,
        "mgr" => entity_type::MGR,
        "auth" => entity_type::AUTH,
        _ => return None,
    })
}

/// What kind of daemon or client an entity is: [`entity_type`]'s wire values as an enum. Values Ceph may
/// add later round-trip through [`EntityType::Unknown`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntityType {
    Mon,
    Mds,
    Osd,
    Client,
    Mgr,
    /// The cephx "auth" service (a monitor's ticket service id).
    Auth,
    /// `CEPH_ENTITY_TYPE_ANY`: no particular type (e.g. `connect_to` whatever answers).
    Any,
    /// Any other wire value, kept as it was.
    Unknown(u8),
}

impl EntityType {
    /// The type a wire byte names.
    pub const fn from_wire(v: u8) -> Self {
        match v {
            entity_type::MON => EntityType::Mon,
            entity_type::MDS => EntityType::Mds,
            entity_type::OSD => EntityType::Osd,
            entity_type::CLIENT => EntityType::Client,
            entity_type::MGR => EntityType::Mgr,
            entity_type::AUTH => EntityType::Auth,
            entity_type::ANY => EntityType::Any,
            other => EntityType::Unknown(other),
        }
    }

    /// Its wire byte.
    pub const fn to_wire(self) -> u8 {
        match self {
            EntityType::Mon => entity_type::MON,
            EntityType::Mds => entity_type::MDS,
            EntityType::Osd => entity_type::OSD,
            EntityType::Client => entity_type::CLIENT,
            EntityType::Mgr => entity_type::MGR,
            EntityType::Auth => entity_type::AUTH,
            EntityType::Any => entity_type::ANY,
            EntityType::Unknown(v) => v,
        }
    }

    /// Ceph's name for it (`"osd"`, …; `"unknown"` for others).
    pub fn name(self) -> &'static str {
        entity_type_name(self.to_wire())
    }

    /// The type Ceph's name `name` stands for.
    pub fn from_name(name: &str) -> Option<Self> {
        entity_type_from_name(name).map(EntityType::from_wire)
    }
}

/// Not known yet: wire value 0.
impl Default for EntityType {
    fn default() -> Self {
        EntityType::Unknown(0)
    }
}

impl From<u8> for EntityType {
    fn from(v: u8) -> Self {
        EntityType::from_wire(v)
    }
}

impl From<EntityType> for u8 {
    fn from(t: EntityType) -> Self {
        t.to_wire()
    }
}

/// Compares with a wire value (an [`entity_type`] constant).
impl PartialEq<u8> for EntityType {
    fn eq(&self, other: &u8) -> bool {
        self.to_wire() == *other
    }
}

impl PartialEq<EntityType> for u8 {
    fn eq(&self, other: &EntityType) -> bool {
        *self == other.to_wire()
    }
}

impl fmt::Display for EntityType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntityType::Unknown(v) => write!(f, "type 0x{v:02x}"),
            t => f.write_str(t.name()),
        }
    }
}

impl std::str::FromStr for EntityType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        EntityType::from_name(s).ok_or_else(|| format!("unknown entity type {s:?}"))
    }
}

/// A set of entity types, as the wire ORs their bits (cephx's `want_keys`, a service mask). Not an
/// [`EntityType`]: `ANY` here is every bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct EntityTypes(u32);

impl EntityTypes {
    pub const NONE: EntityTypes = EntityTypes(0);
    /// Every type (`CEPH_ENTITY_TYPE_ANY` as a mask).
    pub const ANY: EntityTypes = EntityTypes(entity_type::ANY as u32);

    /// The set of `types`.
    pub const fn of(types: &[EntityType]) -> Self {
        let mut bits = 0u32;
        let mut i = 0;
        while i < types.len() {
            bits |= types[i].to_wire() as u32;
            i += 1;
        }
        EntityTypes(bits)
    }

    pub const fn from_bits(bits: u32) -> Self {
        EntityTypes(bits)
    }

    pub const fn bits(self) -> u32 {
        self.0
    }

    pub const fn contains(self, t: EntityType) -> bool {
        let b = t.to_wire() as u32;
        b != 0 && self.0 & b == b
    }

    #[must_use]
    pub const fn with(self, t: EntityType) -> Self {
        EntityTypes(self.0 | t.to_wire() as u32)
    }
}

impl std::ops::BitOr for EntityTypes {
    type Output = EntityTypes;
    fn bitor(self, o: EntityTypes) -> EntityTypes {
        EntityTypes(self.0 | o.0)
    }
}

impl From<EntityType> for EntityTypes {
    fn from(t: EntityType) -> Self {
        EntityTypes(u32::from(t.to_wire()))
    }
}

/// `entity_addr_t::type_t`: which protocol an address speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum AddrType {
    None = 0,
    /// msgr1 (`v1:`).
    Legacy = 1,
    /// msgr2 (`v2:`).
    Msgr2 = 2,
    /// Either protocol; what clients advertise for themselves (printed without a prefix).
    Any = 3,
    /// A network range; the nonce holds the prefix length.
    Cidr = 4,
}

impl TryFrom<u32> for AddrType {
    type Error = u32;
    fn try_from(v: u32) -> Result<Self, u32> {
        Ok(match v {
            0 => AddrType::None,
            1 => AddrType::Legacy,
            2 => AddrType::Msgr2,
            3 => AddrType::Any,
            4 => AddrType::Cidr,
            other => return Err(other),
        })
    }
}

impl AddrType {
    /// Ceph's `entity_addr_t::get_type_name`.
    pub fn name(self) -> &'static str {
        match self {
            AddrType::None => "none",
            AddrType::Legacy => "v1",
            AddrType::Msgr2 => "v2",
            AddrType::Any => "any",
            AddrType::Cidr => "cidr",
        }
    }
}

/// Linux `AF_INET`, as Ceph puts it on the wire.
const AF_INET: u16 = 2;
/// Linux `AF_INET6` (Ceph translates other platforms' value to this one on the wire).
const AF_INET6: u16 = 10;
/// `sizeof(sockaddr_in)`.
const SOCKADDR_IN_LEN: usize = 16;
/// `sizeof(sockaddr_in6)`, also the size of `entity_addr_t`'s sockaddr union.
const SOCKADDR_IN6_LEN: usize = 28;
/// `sizeof(sockaddr_storage)` in the legacy encoding.
const SOCKADDR_STORAGE_LEN: usize = 128;
/// Smallest new-style encoded `entity_addr_t`: marker, envelope, type, nonce, elen.
const MIN_ADDR_ENCODED_LEN: usize = 1 + 6 + 4 + 4 + 4;

/// Ceph's `entity_addr_t`: a protocol type, a nonce that tells apart process instances on one address, and
/// an optional IP socket address (`None` is Ceph's `AF_UNSPEC`, a blank address).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EntityAddr {
    pub addr_type: AddrType,
    pub nonce: u32,
    pub sockaddr: Option<SocketAddr>,
}

impl EntityAddr {
    /// A `v2:` address.
    pub fn msgr2(sockaddr: SocketAddr, nonce: u32) -> Self {
        EntityAddr {
            addr_type: AddrType::Msgr2,
            nonce,
            sockaddr: Some(sockaddr),
        }
    }

    /// A `v1:` address.
    pub fn legacy(sockaddr: SocketAddr, nonce: u32) -> Self {
        EntityAddr {
            addr_type: AddrType::Legacy,
            nonce,
            sockaddr: Some(sockaddr),
        }
    }

    /// An address of type ANY, what a client advertises for itself.
    pub fn any(sockaddr: SocketAddr, nonce: u32) -> Self {
        EntityAddr {
            addr_type: AddrType::Any,
            nonce,
            sockaddr: Some(sockaddr),
        }
    }

    /// The blank address (`entity_addr_t()`): type NONE, nonce 0, no socket address.
    pub fn none() -> Self {
        EntityAddr {
            addr_type: AddrType::None,
            nonce: 0,
            sockaddr: None,
        }
    }

    /// Ceph's `is_blank_ip`: no socket address, or the unspecified IP (`0.0.0.0` / `::`).
    pub fn is_blank_ip(&self) -> bool {
        match self.sockaddr {
            None => true,
            Some(sa) => sa.ip().is_unspecified(),
        }
    }

    /// The port, 0 when there is no socket address.
    pub fn port(&self) -> u16 {
        self.sockaddr.map_or(0, |sa| sa.port())
    }

    /// Encode in the pre-`MSG_ADDR2` ("legacy") form: `u32` 0, nonce, 128-byte `sockaddr_storage` with a
    /// big-endian family. The address type is not carried; decoders infer legacy (or none when blank).
    pub fn encode_legacy(&self, buf: &mut BytesMut) {
        buf.put_u32_le(0);
        buf.put_u32_le(self.nonce);
        let mut storage = [0u8; SOCKADDR_STORAGE_LEN];
        let family = sockaddr_family(self.sockaddr);
        storage[0..2].copy_from_slice(&family.to_be_bytes());
        if let Some(sa) = self.sockaddr {
            let data = sockaddr_data(sa);
            storage[2..2 + data.len()].copy_from_slice(&data);
        }
        buf.put_slice(&storage);
    }

    /// The legacy form after Ceph's first marker byte: 3 pad bytes, nonce, `sockaddr_storage`.
    fn decode_legacy_after_marker(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        d.skip(3, "entity_addr_t legacy pad")?;
        let nonce = d.u32()?;
        let storage = d.take(
            SOCKADDR_STORAGE_LEN,
            "entity_addr_t legacy sockaddr_storage",
        )?;
        let (family_bytes, data) = storage.split_at(2);
        let family = u16::from_be_bytes([family_bytes[0], family_bytes[1]]);
        let sockaddr = sockaddr_from_parts(family, data)?;
        let addr_type = if sockaddr.is_some() {
            AddrType::Legacy
        } else {
            AddrType::None
        };
        Ok(EntityAddr {
            addr_type,
            nonce,
            sockaddr,
        })
    }

    /// The body of the new-style (`marker 1`) encoding, inside the versioned envelope.
    fn decode_v1_body(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        let raw_type = d.u32()?;
        let addr_type = AddrType::try_from(raw_type).map_err(|t| {
            DecodeError::invalid("entity_addr_t type", format!("unknown address type {t}"))
        })?;
        let nonce = d.u32()?;
        let elen = d.u32()? as usize;
        let sockaddr = if elen == 0 {
            None
        } else {
            if elen < 2 {
                return Err(DecodeError::invalid(
                    "entity_addr_t elen",
                    format!("{elen} is smaller than the family field"),
                ));
            }
            let family = d.u16()?;
            let max = match family {
                AF_INET => SOCKADDR_IN_LEN,
                // Ceph's sockaddr union is sockaddr_in6-sized; AF_UNSPEC uses the whole union.
                AF_INET6 | 0 => SOCKADDR_IN6_LEN,
                other => {
                    return Err(DecodeError::invalid(
                        "entity_addr_t family",
                        format!("unknown address family {other}"),
                    ))
                }
            };
            if elen > max {
                return Err(DecodeError::invalid(
                    "entity_addr_t elen",
                    format!("{elen} exceeds {max} for family {family}"),
                ));
            }
            let data = d.take(elen - 2, "entity_addr_t sockaddr")?;
            sockaddr_from_parts(family, data)?
        };
        Ok(EntityAddr {
            addr_type,
            nonce,
            sockaddr,
        })
    }
}

/// The `sa_family` Ceph would store for `sa` (0 = `AF_UNSPEC`).
fn sockaddr_family(sa: Option<SocketAddr>) -> u16 {
    match sa {
        None => 0,
        Some(SocketAddr::V4(_)) => AF_INET,
        Some(SocketAddr::V6(_)) => AF_INET6,
    }
}

/// The bytes after `sa_family` in Linux's `sockaddr_in` / `sockaddr_in6`: big-endian port, then the address
/// (IPv4: 4 bytes + 8 zero bytes; IPv6: flowinfo, 16 bytes, scope id). Flowinfo and scope id are stored as
/// `core::net` hands them out, little-endian like the rest of the encoding.
fn sockaddr_data(sa: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(SOCKADDR_IN6_LEN - 2);
    out.extend_from_slice(&sa.port().to_be_bytes());
    match sa {
        SocketAddr::V4(v4) => {
            out.extend_from_slice(&v4.ip().octets());
            out.extend_from_slice(&[0u8; 8]);
        }
        SocketAddr::V6(v6) => {
            out.extend_from_slice(&v6.flowinfo().to_le_bytes());
            out.extend_from_slice(&v6.ip().octets());
            out.extend_from_slice(&v6.scope_id().to_le_bytes());
        }
    }
    out
}

/// Rebuild a socket address from its family and the (possibly short) bytes after the family field.
/// Missing trailing bytes read as zero, as Ceph's copy into a zeroed union does.
fn sockaddr_from_parts(family: u16, data: &[u8]) -> Result<Option<SocketAddr>, DecodeError> {
    let mut full = [0u8; SOCKADDR_STORAGE_LEN];
    let n = data.len().min(full.len());
    full[..n].copy_from_slice(&data[..n]);
    let port = u16::from_be_bytes([full[0], full[1]]);
    let u32_at =
        |at: usize| u32::from_le_bytes([full[at], full[at + 1], full[at + 2], full[at + 3]]);
    match family {
        0 => Ok(None),
        AF_INET => {
            let ip = Ipv4Addr::new(full[2], full[3], full[4], full[5]);
            Ok(Some(SocketAddr::V4(SocketAddrV4::new(ip, port))))
        }
        AF_INET6 => {
            let flowinfo = u32_at(2);
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&full[6..22]);
            let scope_id = u32_at(22);
            let ip = Ipv6Addr::from(octets);
            Ok(Some(SocketAddr::V6(SocketAddrV6::new(
                ip, port, flowinfo, scope_id,
            ))))
        }
        other => Err(DecodeError::invalid(
            "entity_addr_t family",
            format!("unknown address family {other}"),
        )),
    }
}

impl Encode for EntityAddr {
    /// `entity_addr_t::encode` with `MSG_ADDR2` and `SERVER_NAUTILUS`: marker 1, envelope v1/c1, type,
    /// nonce, `elen`, then `elen` bytes of sockaddr (le16 family + `sa_data`). Like Ceph, a blank address
    /// is the whole 28-byte union with family 0.
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(1);
        encode_versioned(buf, 1, 1, |buf| {
            buf.put_u32_le(self.addr_type as u32);
            buf.put_u32_le(self.nonce);
            match self.sockaddr {
                None => {
                    buf.put_u32_le(SOCKADDR_IN6_LEN as u32);
                    buf.put_bytes(0, SOCKADDR_IN6_LEN);
                }
                Some(sa) => {
                    let data = sockaddr_data(sa);
                    buf.put_u32_le((data.len() + 2) as u32);
                    buf.put_u16_le(sockaddr_family(Some(sa)));
                    buf.put_slice(&data);
                }
            }
        });
    }
}

impl Decode for EntityAddr {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        match d.u8()? {
            0 => EntityAddr::decode_legacy_after_marker(d),
            1 => d.versioned("entity_addr_t", 1, |_, d| EntityAddr::decode_v1_body(d)),
            other => Err(DecodeError::invalid(
                "entity_addr_t marker",
                format!("{other} is not 0 or 1"),
            )),
        }
    }
}

/// Ceph's `operator<<(sockaddr*)`.
fn fmt_sockaddr(sa: Option<SocketAddr>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match sa {
        None => write!(f, "(unrecognized address family 0)"),
        Some(sa) => match sa.ip() {
            IpAddr::V4(ip) => write!(f, "{ip}:{}", sa.port()),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}", sa.port()),
        },
    }
}

impl fmt::Display for EntityAddr {
    /// As Ceph prints `entity_addr_t`: `-` for NONE, `v2:127.0.0.1:3300/0`, no prefix for ANY.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.addr_type == AddrType::None {
            return f.write_str("-");
        }
        if self.addr_type != AddrType::Any {
            write!(f, "{}:", self.addr_type.name())?;
        }
        fmt_sockaddr(self.sockaddr, f)?;
        write!(f, "/{}", self.nonce)
    }
}

/// Ceph's `entity_addrvec_t`: the addresses one entity listens on (e.g. `[v2:…:3300/0,v1:…:6789/0]`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct AddrVec(pub Vec<EntityAddr>);

impl AddrVec {
    /// The first address, if any.
    pub fn front(&self) -> Option<&EntityAddr> {
        self.0.first()
    }

    /// The address to use for msgr2, as Ceph's `pick_addr(TYPE_MSGR2)`: the first non-blank `v2` address,
    /// else the first ANY address, else a blank `v2` address.
    pub fn msgr2(&self) -> Option<&EntityAddr> {
        let first_of = |t: AddrType| self.0.iter().find(|a| a.addr_type == t);
        self.0
            .iter()
            .find(|a| a.addr_type == AddrType::Msgr2 && !a.is_blank_ip())
            .or_else(|| first_of(AddrType::Any))
            .or_else(|| first_of(AddrType::Msgr2))
    }

    /// Whether `addr` is one of these addresses (exact match, as Ceph's `contains`).
    pub fn contains(&self, addr: &EntityAddr) -> bool {
        self.0.iter().any(|a| a == addr)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl From<EntityAddr> for AddrVec {
    fn from(a: EntityAddr) -> Self {
        AddrVec(vec![a])
    }
}

impl Encode for AddrVec {
    /// `entity_addrvec_t::encode` with `MSG_ADDR2`: marker 2, `u32` count, the addresses.
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(2);
        buf.put_u32_le(self.0.len() as u32);
        for a in &self.0 {
            a.encode(buf);
        }
    }
}

impl Decode for AddrVec {
    /// Markers 0 (one legacy address), 1 (one new-style address without its own marker) and 2 (a vector).
    fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        match d.u8()? {
            0 => Ok(AddrVec(vec![EntityAddr::decode_legacy_after_marker(d)?])),
            1 => {
                let a = d.versioned("entity_addrvec_t", 1, |_, d| EntityAddr::decode_v1_body(d))?;
                Ok(AddrVec(vec![a]))
            }
            2 => {
                let n = d.count(MIN_ADDR_ENCODED_LEN, "entity_addrvec_t")?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(EntityAddr::decode(d)?);
                }
                Ok(AddrVec(v))
            }
            other => Err(DecodeError::invalid(
                "entity_addrvec_t marker",
                format!("{other} > 2"),
            )),
        }
    }
}

impl fmt::Display for AddrVec {
    /// As Ceph prints `entity_addrvec_t`: nothing when empty, the address alone when single, else `[a,b]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [] => Ok(()),
            [one] => one.fmt(f),
            many => {
                f.write_str("[")?;
                for (i, a) in many.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    a.fmt(f)?;
                }
                f.write_str("]")
            }
        }
    }
}

/// Ceph's `entity_name_t`: an entity type and a number (`client.4123`, `osd.0`, `mon.0`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EntityName {
    pub entity_type: u8,
    pub num: i64,
}

impl EntityName {
    pub fn new(entity_type: u8, num: i64) -> Self {
        EntityName { entity_type, num }
    }
}

impl Encode for EntityName {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(self.entity_type);
        buf.put_i64_le(self.num);
    }
}

impl Decode for EntityName {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(EntityName {
            entity_type: d.u8()?,
            num: d.i64()?,
        })
    }
}

impl fmt::Display for EntityName {
    /// `client.4123`; a negative number (a new, unassigned entity) prints as `client.?`, as in Ceph.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = entity_type_name(self.entity_type);
        if self.num < 0 {
            write!(f, "{t}.?")
        } else {
            write!(f, "{t}.{}", self.num)
        }
    }
}

/// The auth layer's `EntityName` (`client.admin`): a `u32` entity type and a string id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AuthEntityName {
    pub entity_type: u32,
    pub id: String,
}

impl AuthEntityName {
    pub fn new(entity_type: u8, id: impl Into<String>) -> Self {
        AuthEntityName {
            entity_type: u32::from(entity_type),
            id: id.into(),
        }
    }

    /// Parse `type.id` as Ceph's `EntityName::from_str` does: the type is the text before the first `.`
    /// and must be a known entity type; the id is the rest (it may contain dots, or be empty).
    pub fn parse(s: &str) -> Result<Self, DecodeError> {
        let (type_name, id) = s
            .split_once('.')
            .ok_or_else(|| DecodeError::invalid("entity name", format!("no '.' in {s:?}")))?;
        let t = entity_type_from_name(type_name).ok_or_else(|| {
            DecodeError::invalid("entity name", format!("unknown entity type {type_name:?}"))
        })?;
        Ok(AuthEntityName::new(t, id))
    }

    fn type_name(&self) -> &'static str {
        u8::try_from(self.entity_type).map_or("unknown", entity_type_name)
    }
}

impl core::str::FromStr for AuthEntityName {
    type Err = DecodeError;
    fn from_str(s: &str) -> Result<Self, DecodeError> {
        AuthEntityName::parse(s)
    }
}

impl Encode for AuthEntityName {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u32_le(self.entity_type);
        encode_len_prefixed(buf, self.id.as_bytes());
    }
}

impl Decode for AuthEntityName {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        let entity_type = d.u32()?;
        let raw = d.len_prefixed("EntityName id")?;
        let id = core::str::from_utf8(raw)
            .map_err(|e| DecodeError::invalid("EntityName id", e.to_string()))?
            .to_owned();
        Ok(AuthEntityName { entity_type, id })
    }
}

impl fmt::Display for AuthEntityName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.type_name(), self.id)
    }
}

/// Ceph's `utime_t`: seconds and nanoseconds, both `u32` on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct UTime {
    pub sec: u32,
    pub nsec: u32,
}

impl UTime {
    pub fn new(sec: u32, nsec: u32) -> Self {
        UTime { sec, nsec }
    }
}

impl Encode for UTime {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u32_le(self.sec);
        buf.put_u32_le(self.nsec);
    }
}

impl Decode for UTime {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(UTime {
            sec: d.u32()?,
            nsec: d.u32()?,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::proto::denc::{from_bytes_exact, to_bytes};
    use proptest::prelude::*;

    fn v4(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn round_trip<T: Encode + Decode + PartialEq + fmt::Debug>(v: &T) -> T {
        let b = to_bytes(v);
        let back: T = from_bytes_exact(&b, "test").unwrap();
        assert_eq!(&back, v);
        back
    }

    fn assert_every_prefix_fails<T: Decode + fmt::Debug>(bytes: &[u8]) {
        for n in 0..bytes.len() {
            assert!(
                from_bytes_exact::<T>(&bytes[..n], "prefix").is_err(),
                "prefix of {n} bytes decoded"
            );
        }
    }

    /// The HELLO peer address in tests/data/ceph16-mon-crc/conn0-c2s.bin.
    const V2_LOCALHOST_3300: [u8; 35] = [
        0x01, 0x01, 0x01, 0x1c, 0, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0x02, 0, 0x0c,
        0xe4, 0x7f, 0, 0, 0x01, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    #[test]
    fn ceph_bytes_v2_address() {
        let a: EntityAddr = from_bytes_exact(&V2_LOCALHOST_3300, "a").unwrap();
        assert_eq!(a, EntityAddr::msgr2(v4("127.0.0.1:3300"), 0));
        assert_eq!(to_bytes(&a).as_ref(), &V2_LOCALHOST_3300);
        assert_eq!(a.to_string(), "v2:127.0.0.1:3300/0");
    }

    #[test]
    fn every_address_type_round_trips() {
        let v6: SocketAddr = SocketAddr::V6(SocketAddrV6::new(
            "fe80::1:2".parse().unwrap(),
            6800,
            0x1234,
            3,
        ));
        for a in [
            EntityAddr::msgr2(v4("10.0.0.1:3300"), 7),
            EntityAddr::legacy(v4("10.0.0.1:6789"), 0),
            EntityAddr::any(v4("127.0.0.1:0"), 550859949),
            EntityAddr::msgr2(v6, 9),
            EntityAddr::none(),
            EntityAddr {
                addr_type: AddrType::Cidr,
                nonce: 24,
                sockaddr: Some(v4("192.168.1.0:0")),
            },
            EntityAddr {
                addr_type: AddrType::Msgr2,
                nonce: 1,
                sockaddr: None,
            },
        ] {
            let b = to_bytes(&a);
            let expect_elen = match a.sockaddr {
                Some(SocketAddr::V4(_)) => 16,
                _ => 28,
            };
            assert_eq!(&b[15..19], &(expect_elen as u32).to_le_bytes(), "{a:?}");
            round_trip(&a);
            assert_every_prefix_fails::<EntityAddr>(&b);
        }
    }

    #[test]
    fn ipv6_layout_is_sockaddr_in6() {
        let sa = SocketAddr::V6(SocketAddrV6::new("::1".parse().unwrap(), 3300, 0, 0));
        let b = to_bytes(&EntityAddr::msgr2(sa, 0));
        assert_eq!(b.len(), 1 + 6 + 12 + 28);
        assert_eq!(&b[19..21], &10u16.to_le_bytes());
        assert_eq!(&b[21..23], &3300u16.to_be_bytes());
        assert_eq!(b[46], 0);
        assert_eq!(b[42], 1, "last address byte of ::1");
    }

    #[test]
    fn elen_zero_and_short_elen_decode_like_ceph() {
        let mut b = BytesMut::new();
        b.put_u8(1);
        encode_versioned(&mut b, 1, 1, |b| {
            b.put_u32_le(2);
            b.put_u32_le(5);
            b.put_u32_le(0);
        });
        let a: EntityAddr = from_bytes_exact(&b, "a").unwrap();
        assert_eq!(
            a,
            EntityAddr {
                addr_type: AddrType::Msgr2,
                nonce: 5,
                sockaddr: None
            }
        );
        // elen 4: family + port only; the rest of the sockaddr reads as zero.
        let mut b = BytesMut::new();
        b.put_u8(1);
        encode_versioned(&mut b, 1, 1, |b| {
            b.put_u32_le(1);
            b.put_u32_le(0);
            b.put_u32_le(4);
            b.put_u16_le(2);
            b.put_u16(6789);
        });
        let a: EntityAddr = from_bytes_exact(&b, "a").unwrap();
        assert_eq!(a, EntityAddr::legacy(v4("0.0.0.0:6789"), 0));
        assert!(a.is_blank_ip());
    }

    fn addr_with(family: u16, elen: u32, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u8(1);
        encode_versioned(&mut b, 1, 1, |b| {
            b.put_u32_le(2);
            b.put_u32_le(0);
            b.put_u32_le(elen);
            b.put_u16_le(family);
            b.put_slice(body);
        });
        b
    }

    #[test]
    fn bad_family_elen_type_marker_are_errors() {
        assert!(from_bytes_exact::<EntityAddr>(&addr_with(1, 16, &[0; 14]), "a").is_err());
        assert!(from_bytes_exact::<EntityAddr>(&addr_with(2, 18, &[0; 16]), "a").is_err());
        assert!(from_bytes_exact::<EntityAddr>(&addr_with(10, 30, &[0; 28]), "a").is_err());
        assert!(from_bytes_exact::<EntityAddr>(&addr_with(2, 1, &[]), "a").is_err());
        // elen larger than the envelope.
        assert!(from_bytes_exact::<EntityAddr>(&addr_with(2, 16, &[0; 2]), "a").is_err());
        let mut bad_type = to_bytes(&EntityAddr::msgr2(v4("1.2.3.4:5"), 0)).to_vec();
        bad_type[7] = 9;
        assert!(from_bytes_exact::<EntityAddr>(&bad_type, "a").is_err());
        let mut bad_marker = bad_type.clone();
        bad_marker[0] = 2;
        assert!(from_bytes_exact::<EntityAddr>(&bad_marker, "a").is_err());
        let mut bad_compat = to_bytes(&EntityAddr::none()).to_vec();
        bad_compat[2] = 2;
        assert!(matches!(
            from_bytes_exact::<EntityAddr>(&bad_compat, "a"),
            Err(DecodeError::Incompatible { .. })
        ));
    }

    #[test]
    fn newer_envelope_with_extra_fields_is_accepted() {
        let a = EntityAddr::msgr2(v4("1.2.3.4:5"), 6);
        let mut b = BytesMut::new();
        b.put_u8(1);
        encode_versioned(&mut b, 2, 1, |b| {
            b.put_u32_le(2);
            b.put_u32_le(6);
            b.put_u32_le(16);
            b.put_u16_le(2);
            b.put_slice(&sockaddr_data(a.sockaddr.unwrap()));
            b.put_u64_le(0xdead); // a field from a future version
        });
        assert_eq!(from_bytes_exact::<EntityAddr>(&b, "a").unwrap(), a);
    }

    #[test]
    fn legacy_form_decodes() {
        for (a, expect) in [
            (
                EntityAddr::legacy(v4("192.168.0.9:6789"), 77),
                EntityAddr::legacy(v4("192.168.0.9:6789"), 77),
            ),
            (
                EntityAddr::legacy("[2001:db8::5]:6800".parse().unwrap(), 1),
                EntityAddr::legacy("[2001:db8::5]:6800".parse().unwrap(), 1),
            ),
            // The type is not carried: a v2 address comes back as legacy, a blank one as NONE.
            (
                EntityAddr::msgr2(v4("1.1.1.1:1"), 3),
                EntityAddr::legacy(v4("1.1.1.1:1"), 3),
            ),
            (
                EntityAddr {
                    addr_type: AddrType::Any,
                    nonce: 4,
                    sockaddr: None,
                },
                EntityAddr {
                    addr_type: AddrType::None,
                    nonce: 4,
                    sockaddr: None,
                },
            ),
        ] {
            let mut b = BytesMut::new();
            a.encode_legacy(&mut b);
            assert_eq!(b.len(), 136);
            // Family is big-endian in the legacy sockaddr_storage.
            assert_eq!(b[8], 0);
            assert_eq!(from_bytes_exact::<EntityAddr>(&b, "a").unwrap(), expect);
            assert_eq!(
                from_bytes_exact::<AddrVec>(&b, "v").unwrap(),
                AddrVec(vec![expect])
            );
            assert_every_prefix_fails::<EntityAddr>(&b);
        }
        let mut bad_family = BytesMut::new();
        EntityAddr::legacy(v4("1.1.1.1:1"), 3).encode_legacy(&mut bad_family);
        bad_family[9] = 7;
        assert!(from_bytes_exact::<EntityAddr>(&bad_family, "a").is_err());
    }

    #[test]
    fn display_like_ceph() {
        let any = EntityAddr::any(v4("127.0.0.1:0"), 550859949);
        assert_eq!(any.to_string(), "127.0.0.1:0/550859949");
        assert_eq!(
            EntityAddr::legacy(v4("127.0.0.1:6789"), 0).to_string(),
            "v1:127.0.0.1:6789/0"
        );
        let v6 = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 3300, 0, 2));
        assert_eq!(
            EntityAddr::msgr2(v6, 12).to_string(),
            "v2:[fe80::1]:3300/12"
        );
        assert_eq!(EntityAddr::none().to_string(), "-");
        let cidr = EntityAddr {
            addr_type: AddrType::Cidr,
            nonce: 24,
            sockaddr: Some(v4("10.1.2.0:0")),
        };
        assert_eq!(cidr.to_string(), "cidr:10.1.2.0:0/24");
        let blank_v2 = EntityAddr {
            addr_type: AddrType::Msgr2,
            nonce: 0,
            sockaddr: None,
        };
        assert_eq!(blank_v2.to_string(), "v2:(unrecognized address family 0)/0");
        let mon = AddrVec(vec![
            EntityAddr::msgr2(v4("127.0.0.1:3300"), 0),
            EntityAddr::legacy(v4("127.0.0.1:6789"), 0),
        ]);
        assert_eq!(mon.to_string(), "[v2:127.0.0.1:3300/0,v1:127.0.0.1:6789/0]");
        assert_eq!(AddrVec::from(any).to_string(), "127.0.0.1:0/550859949");
        assert_eq!(AddrVec::default().to_string(), "");
    }

    #[test]
    fn blank_ip() {
        assert!(EntityAddr::none().is_blank_ip());
        assert!(EntityAddr::msgr2(v4("0.0.0.0:3300"), 0).is_blank_ip());
        assert!(EntityAddr::msgr2("[::]:3300".parse().unwrap(), 0).is_blank_ip());
        assert!(!EntityAddr::msgr2(v4("127.0.0.1:3300"), 0).is_blank_ip());
    }

    #[test]
    fn entity_types_round_trip_every_wire_value() {
        for v in 0..=u8::MAX {
            let t = EntityType::from_wire(v);
            assert_eq!(t.to_wire(), v);
            assert_eq!(t, v);
        }
        assert_eq!(EntityType::from_wire(0x40), EntityType::Unknown(0x40));
        assert_eq!(EntityType::from_wire(entity_type::OSD), EntityType::Osd);
        assert_eq!("mgr".parse::<EntityType>(), Ok(EntityType::Mgr));
        assert!("disk".parse::<EntityType>().is_err());
        assert_eq!(EntityType::Osd.to_string(), "osd");
        assert_eq!(EntityType::Unknown(0x40).to_string(), "type 0x40");
    }

    #[test]
    fn entity_type_masks_are_sets() {
        let keys = EntityTypes::of(&[EntityType::Mon, EntityType::Osd]);
        assert_eq!(keys.bits(), 0x05);
        assert!(keys.contains(EntityType::Osd) && !keys.contains(EntityType::Mgr));
        assert!(EntityTypes::ANY.contains(EntityType::Mgr));
        assert!(!EntityTypes::NONE.contains(EntityType::Unknown(0)));
        assert_eq!(keys.with(EntityType::Mgr), keys | EntityType::Mgr.into());
    }

    #[test]
    fn addrvec_accessors() {
        let v2 = EntityAddr::msgr2(v4("127.0.0.1:3300"), 0);
        let v1 = EntityAddr::legacy(v4("127.0.0.1:6789"), 0);
        let any = EntityAddr::any(v4("127.0.0.1:0"), 5);
        let mon = AddrVec(vec![v1.clone(), v2.clone()]);
        assert_eq!(mon.front(), Some(&v1));
        assert_eq!(mon.msgr2(), Some(&v2));
        assert!(mon.contains(&v2));
        assert!(!mon.contains(&any));
        assert_eq!(AddrVec(vec![v1.clone(), any.clone()]).msgr2(), Some(&any));
        assert_eq!(AddrVec(vec![v1.clone()]).msgr2(), None);
        let blank_v2 = EntityAddr::msgr2(v4("0.0.0.0:3300"), 0);
        assert_eq!(
            AddrVec(vec![blank_v2.clone(), any.clone()]).msgr2(),
            Some(&any)
        );
        assert_eq!(AddrVec(vec![blank_v2.clone()]).msgr2(), Some(&blank_v2));
        assert!(AddrVec::default().is_empty());
        assert_eq!(AddrVec::default().front(), None);
    }

    #[test]
    fn addrvec_markers() {
        let v2 = EntityAddr::msgr2(v4("127.0.0.1:3300"), 0);
        let vec = AddrVec(vec![
            v2.clone(),
            EntityAddr::legacy(v4("127.0.0.1:6789"), 0),
        ]);
        let b = to_bytes(&vec);
        assert_eq!(b[0], 2);
        assert_eq!(&b[1..5], &2u32.to_le_bytes());
        round_trip(&vec);
        assert_every_prefix_fails::<AddrVec>(&b);
        round_trip(&AddrVec::default());
        // Marker 1: a single new-style address whose own marker doubles as the vector's.
        let single = to_bytes(&v2);
        assert_eq!(
            from_bytes_exact::<AddrVec>(&single, "v").unwrap(),
            AddrVec(vec![v2])
        );
        let mut bad = b.to_vec();
        bad[0] = 3;
        assert!(from_bytes_exact::<AddrVec>(&bad, "v").is_err());
        // A count far beyond the input is refused before allocating.
        let huge = [2u8, 0xff, 0xff, 0xff, 0xff];
        assert!(from_bytes_exact::<AddrVec>(&huge, "v").is_err());
    }

    #[test]
    fn entity_name() {
        let n = EntityName::new(entity_type::CLIENT, 4123);
        assert_eq!(n.to_string(), "client.4123");
        let b = to_bytes(&n);
        assert_eq!(b.as_ref(), &[8, 0x1b, 0x10, 0, 0, 0, 0, 0, 0]);
        round_trip(&n);
        assert_every_prefix_fails::<EntityName>(&b);
        assert_eq!(EntityName::new(entity_type::OSD, -1).to_string(), "osd.?");
        assert_eq!(EntityName::new(0x40, 1).to_string(), "unknown.1");
    }

    #[test]
    fn auth_entity_name() {
        let n = AuthEntityName::parse("client.admin").unwrap();
        assert_eq!(n, AuthEntityName::new(entity_type::CLIENT, "admin"));
        assert_eq!(n.to_string(), "client.admin");
        let b = to_bytes(&n);
        assert_eq!(b.as_ref(), b"\x08\0\0\0\x05\0\0\0admin");
        round_trip(&n);
        assert_every_prefix_fails::<AuthEntityName>(&b);
        assert_eq!("osd.rgw.a".parse::<AuthEntityName>().unwrap().id, "rgw.a");
        assert!(AuthEntityName::parse("admin").is_err());
        assert!(AuthEntityName::parse("bogus.admin").is_err());
        let not_utf8 = b"\x08\0\0\0\x02\0\0\0\xff\xfe";
        assert!(from_bytes_exact::<AuthEntityName>(not_utf8, "n").is_err());
    }

    #[test]
    fn utime() {
        let t = UTime::new(1_700_000_000, 999_999_999);
        let b = to_bytes(&t);
        assert_eq!(b.len(), 8);
        assert_eq!(&b[..4], &1_700_000_000u32.to_le_bytes());
        round_trip(&t);
        assert_every_prefix_fails::<UTime>(&b);
    }

    #[test]
    fn type_names() {
        assert_eq!(entity_type_name(entity_type::MON), "mon");
        assert_eq!(entity_type_name(entity_type::OSD), "osd");
        assert_eq!(entity_type_name(entity_type::CLIENT), "client");
        assert_eq!(entity_type_name(entity_type::ANY), "unknown");
        for t in [1u8, 2, 4, 8, 0x10, 0x20] {
            assert_eq!(entity_type_from_name(entity_type_name(t)), Some(t));
        }
        for v in 0u32..8 {
            match AddrType::try_from(v) {
                Ok(t) => assert_eq!(t as u32, v),
                Err(e) => assert!(e == v && v > 4),
            }
        }
    }

    pub(crate) fn arb_sockaddr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::V4(SocketAddrV4::new(ip.into(), port))),
            (any::<[u8; 16]>(), any::<u16>(), any::<u32>(), any::<u32>()).prop_map(
                |(ip, port, flow, scope)| SocketAddr::V6(SocketAddrV6::new(
                    ip.into(),
                    port,
                    flow,
                    scope
                ))
            ),
        ]
    }

    pub(crate) fn arb_addr() -> impl Strategy<Value = EntityAddr> {
        (0u32..=4, any::<u32>(), proptest::option::of(arb_sockaddr())).prop_map(
            |(t, nonce, sockaddr)| EntityAddr {
                addr_type: AddrType::try_from(t).unwrap(),
                nonce,
                sockaddr,
            },
        )
    }

    pub(crate) fn arb_addrvec() -> impl Strategy<Value = AddrVec> {
        proptest::collection::vec(arb_addr(), 0..4).prop_map(AddrVec)
    }

    proptest! {
        #[test]
        fn prop_addr_round_trip(a in arb_addr()) {
            let b = to_bytes(&a);
            prop_assert_eq!(from_bytes_exact::<EntityAddr>(&b, "a").unwrap(), a);
        }

        #[test]
        fn prop_addrvec_round_trip(v in arb_addrvec()) {
            let b = to_bytes(&v);
            prop_assert_eq!(from_bytes_exact::<AddrVec>(&b, "v").unwrap(), v);
        }

        #[test]
        fn prop_addr_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = from_bytes_exact::<EntityAddr>(&bytes, "a");
            let _ = from_bytes_exact::<AddrVec>(&bytes, "v");
        }
    }
}
