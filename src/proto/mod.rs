//! The sans-IO msgr2.1 protocol core: [`Connection`] is one connection's whole protocol — feed it the
//! bytes read from a transport, take out the bytes to write, the events, and the next deadline; time
//! comes in as an argument. Embed it in any event loop (the messenger is one such loop).
//!
//! The API: [`Connection`], [`Config`], [`Policy`], [`Event`], [`Message`], [`Error`] (with
//! [`TransportError`] and [`Limit`]), [`auth`] (none and cephx in their client, monitor and service
//! roles; keyrings) and [`types`] (entity names and addresses).
//!
//! Owns everything that is *protocol*: Ceph's encodings, crc32c, the banner, frame layout and secure mode
//! (AES-128-GCM), control-frame payloads, messages, authentication and the connection state machine with
//! its session. Modules hidden from these docs (`banner`, `codec`, `control`, `crc`, `denc`, `conn`,
//! `sim`, …) are there for msgr's own tests, fuzz targets and benches: not part of the API, they may
//! change at any time.
//!
//! Invariants: no `std::net`, no threads, no clock reads — time comes in as an argument; every byte may come
//! from an attacker, so decoding returns errors as values and never panics.

pub mod auth;
#[doc(hidden)]
pub mod banner;
#[doc(hidden)]
pub mod codec;
#[doc(hidden)]
pub mod conn;
#[doc(hidden)]
pub mod control;
#[doc(hidden)]
pub mod crc;
#[doc(hidden)]
pub mod denc;
#[doc(hidden)]
pub mod error;
#[cfg(feature = "interceptor")]
pub mod intercept;
#[doc(hidden)]
pub mod message;
pub(crate) mod session;
#[doc(hidden)]
pub mod sim;
pub mod types;

pub use conn::{
    Config, ConnStats, Connection, Event, Phase, Policy, Resolution, Role, SessionRequest,
    SessionRequestKind, Settlement,
};
pub use error::{Error, Limit, TransportError, TransportErrorKind};
pub use message::Message;
pub use session::{GlobalSeq, Released};
