//! RADOS client state that needs no I/O: the cluster's OSD map and CRUSH placement.
//! (The I/O side: [`monc`] the monitor session, [`objecter`] object operations, [`client`] the facade.)
//!
//! Owns: [`crush`] (CRUSH map decoding and the mapper) and [`osdmap`] (the OSDMap as the monitor sends
//! it in `MOSDMap`, full and incremental, and the object → PG → OSD placement computed from it).
//!
//! Invariants: sans-IO and deterministic (placement is a pure function of the map and the name); every
//! byte decoded here may come from an attacker, so decoding never panics, checks element counts
//! against the bytes left before allocating, uses checked arithmetic on peer numbers, and reports bad
//! input as a [`DecodeError`](crate::proto::denc::DecodeError) value. Placement results equal Ceph 16's
//! (`OSDMap::_pg_to_up_acting_osds`, `crush_do_rule`) bit for bit; `tests/crush_oracle.rs` checks that
//! against Ceph's own `crushtool` and `osdmaptool`.

pub mod client;
pub mod crush;
pub mod monc;
pub mod objecter;
pub mod osdmap;

pub use osdmap::{OsdMap, PgId, PgPool, UpActing};
