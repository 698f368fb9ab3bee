//! Protocol errors, grouped by who is at fault (the rustls way).
//!
//! Every error that ends a transport is a value of [`Error`]; the state machine decides from the variant
//! and the policy whether the session survives (lossless: reconnect and replay) or is reset.

use super::banner::BannerError;
use super::denc::DecodeError;
use super::frame::FrameError;

/// Why a connection (or its current transport) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer's banner was not msgr2 (legacy msgr1, or not Ceph at all).
    #[error("banner: {0}")]
    Banner(#[from] BannerError),
    /// A frame failed its crc, length or layout checks.
    #[error("invalid frame: {0}")]
    InvalidFrame(#[from] FrameError),
    /// A frame's payload did not decode.
    #[error("malformed payload: {0}")]
    Decode(#[from] DecodeError),
    /// The peer sent something the protocol does not allow at this point.
    #[error("peer misbehaved: {0}")]
    PeerMisbehaved(String),
    /// The peer lacks something we require, or requires something we lack.
    #[error("peer incompatible: {0}")]
    PeerIncompatible(String),
    /// Authentication failed or was refused.
    #[error("authentication failed: {0}")]
    AuthFailed(String),
    /// The transport under the connection failed (I/O error, EOF, injected fault).
    #[error("transport failed: {0}")]
    Transport(String),
    /// No progress within the configured time.
    #[error("timed out: {0}")]
    TimedOut(&'static str),
    /// The connection was closed locally (mark_down / shutdown) or replaced by another.
    #[error("connection closed")]
    Closed,
}

impl Error {
    /// Errors that no reconnect can cure: the session ends even on a lossless policy.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Error::Banner(_) | Error::PeerIncompatible(_) | Error::AuthFailed(_) | Error::Closed
        )
    }
}

/// Result alias for the protocol core.
pub type Result<T, E = Error> = std::result::Result<T, E>;
