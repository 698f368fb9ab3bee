//! The sans-IO msgr2.1 protocol core.
//!
//! Owns everything that is *protocol*: Ceph's encodings ([`denc`], [`types`]), crc32c ([`crc`]), the banner
//! ([`banner`]), frame layout ([`codec`]), control-frame payloads ([`control`]), messages ([`message`]),
//! authentication ([`auth`]: none and cephx in its client, monitor and service roles; keyrings) and the
//! connection state machine with its session; secure mode (AES-128-GCM) lives in [`codec::secure`].
//!
//! Invariants: no `std::net`, no threads, no clock reads — time comes in as an argument; every byte may come
//! from an attacker, so decoding returns errors as values and never panics.

pub mod auth;
pub mod banner;
pub mod codec;
pub mod conn;
pub mod control;
pub mod crc;
pub mod denc;
pub mod error;
#[cfg(feature = "interceptor")]
pub mod intercept;
pub mod message;
pub(crate) mod session;
pub mod sim;
pub mod types;

pub use conn::{
    Config, ConnStats, Connection, Event, Phase, Policy, Resolution, Role, SessionRequest,
    SessionRequestKind, Settlement,
};
pub use error::{Error, Limit, TransportError, TransportErrorKind};
pub use message::Message;
pub use session::{GlobalSeq, Released};
