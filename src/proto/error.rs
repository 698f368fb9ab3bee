//! Protocol errors, grouped by who is at fault (the rustls way).
//!
//! Every error that ends a transport is a value of [`Error`]; the state machine decides from the variant
//! and the policy whether the session survives (lossless: reconnect and replay) or is reset.

use super::banner::BannerError;
use super::codec::FrameError;
use super::denc::DecodeError;

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
    /// The transport under the connection failed (refused, reset, closed by the peer, …): match on
    /// [`TransportError::kind`].
    #[error("transport failed: {0}")]
    Transport(TransportError),
    /// No progress within the configured time.
    #[error("timed out: {0}")]
    TimedOut(&'static str),
    /// The connection was closed locally (mark_down / shutdown) or replaced by another.
    #[error("connection closed")]
    Closed,
    /// The peer made us reach one of our resource limits; this connection ends (its session survives
    /// on a lossless policy, as after any fault).
    #[error("{limit} limit exceeded: {value} > {max}")]
    LimitExceeded { limit: Limit, value: u64, max: u64 },
}

/// A failed transport: what kind of failure (to match on) and what happened (for people).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct TransportError {
    kind: TransportErrorKind,
    detail: String,
}

/// The kinds of transport failure an application may want to tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransportErrorKind {
    /// Nobody listens at the address (ECONNREFUSED).
    Refused,
    /// The connection was reset or aborted under us (ECONNRESET, EPIPE, a QP error).
    Reset,
    /// The peer closed its end (EOF).
    ClosedByPeer,
    /// Connecting or an I/O operation timed out.
    TimedOut,
    /// No route to the host or network.
    Unreachable,
    /// The local address is in use.
    AddrInUse,
    /// The address is not one this host has (or none to connect to).
    AddrNotAvailable,
    /// The transport was taken away on purpose: the session moved to another worker, a newer
    /// connection from the peer replaced it, or the peer asked us to WAIT.
    Replaced,
    /// Anything else (see the detail).
    Other,
}

impl TransportErrorKind {
    /// A short name (`"refused"`, `"reset"`, …).
    pub fn name(self) -> &'static str {
        match self {
            TransportErrorKind::Refused => "refused",
            TransportErrorKind::Reset => "reset",
            TransportErrorKind::ClosedByPeer => "closed by peer",
            TransportErrorKind::TimedOut => "timed out",
            TransportErrorKind::Unreachable => "unreachable",
            TransportErrorKind::AddrInUse => "address in use",
            TransportErrorKind::AddrNotAvailable => "address not available",
            TransportErrorKind::Replaced => "replaced",
            TransportErrorKind::Other => "failed",
        }
    }

    /// The kind of an I/O error.
    pub fn of_io(kind: std::io::ErrorKind) -> Self {
        use std::io::ErrorKind as K;
        match kind {
            K::ConnectionRefused => TransportErrorKind::Refused,
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::NotConnected => {
                TransportErrorKind::Reset
            }
            K::UnexpectedEof => TransportErrorKind::ClosedByPeer,
            K::TimedOut => TransportErrorKind::TimedOut,
            K::HostUnreachable | K::NetworkUnreachable | K::NetworkDown => {
                TransportErrorKind::Unreachable
            }
            K::AddrInUse => TransportErrorKind::AddrInUse,
            K::AddrNotAvailable => TransportErrorKind::AddrNotAvailable,
            _ => TransportErrorKind::Other,
        }
    }
}

impl std::fmt::Display for TransportErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl TransportError {
    pub fn new(kind: TransportErrorKind, detail: impl Into<String>) -> Self {
        TransportError {
            kind,
            detail: detail.into(),
        }
    }

    /// An I/O error while doing `what` (e.g. `"read"`, `"connect 10.0.0.1:6800"`).
    pub fn io(what: impl std::fmt::Display, e: &std::io::Error) -> Self {
        TransportError::new(TransportErrorKind::of_io(e.kind()), format!("{what}: {e}"))
    }

    pub fn kind(&self) -> TransportErrorKind {
        self.kind
    }

    /// What happened, for people.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

/// A free-form reason: kind [`TransportErrorKind::Other`].
impl From<&str> for TransportError {
    fn from(detail: &str) -> Self {
        TransportError::new(TransportErrorKind::Other, detail)
    }
}

/// A free-form reason: kind [`TransportErrorKind::Other`].
impl From<String> for TransportError {
    fn from(detail: String) -> Self {
        TransportError::new(TransportErrorKind::Other, detail)
    }
}

/// The resource limits a peer can trip (each a `proto::Config` or `MessengerConfig` field); the
/// messenger counts trips per limit. Names are the configuration fields' (Ceph's option where it has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Limit {
    /// A frame before the session is ready (`Config::max_handshake_frame_len`).
    HandshakeFrame,
    /// A frame on a ready session (`Config::max_frame_len`).
    Frame,
    /// AUTH_REQUESTs on one transport (`Config::max_auth_attempts`).
    AuthAttempts,
    /// Bytes recorded for AUTH_SIGNATURE (`Config::max_transcript_len`).
    Transcript,
    /// Entries in a peer's address vector (`Config::max_addrvec_len`).
    AddrVec,
    /// Connections of one messenger (`MessengerConfig::max_connections`).
    Connections,
    /// Connections not yet authenticated from one source address
    /// (`MessengerConfig::max_half_open_per_source`).
    HalfOpenPerSource,
    /// Sessions of one messenger (`MessengerConfig::max_sessions`).
    Sessions,
}

impl Limit {
    /// Every limit, in counter order.
    pub const ALL: [Limit; 8] = [
        Limit::HandshakeFrame,
        Limit::Frame,
        Limit::AuthAttempts,
        Limit::Transcript,
        Limit::AddrVec,
        Limit::Connections,
        Limit::HalfOpenPerSource,
        Limit::Sessions,
    ];

    /// The configuration field that sets it.
    pub fn name(self) -> &'static str {
        match self {
            Limit::HandshakeFrame => "max_handshake_frame_len",
            Limit::Frame => "max_frame_len",
            Limit::AuthAttempts => "max_auth_attempts",
            Limit::Transcript => "max_transcript_len",
            Limit::AddrVec => "max_addrvec_len",
            Limit::Connections => "max_connections",
            Limit::HalfOpenPerSource => "max_half_open_per_source",
            Limit::Sessions => "max_sessions",
        }
    }

    /// Its index in [`Limit::ALL`].
    pub fn index(self) -> usize {
        Limit::ALL.iter().position(|l| *l == self).unwrap_or(0)
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Error {
    pub(crate) fn limit(limit: Limit, value: impl TryInto<u64>, max: impl TryInto<u64>) -> Self {
        Error::LimitExceeded {
            limit,
            value: value.try_into().unwrap_or(u64::MAX),
            max: max.try_into().unwrap_or(u64::MAX),
        }
    }

    /// The transport failure's kind, if this is a [`Error::Transport`].
    pub fn transport_kind(&self) -> Option<TransportErrorKind> {
        match self {
            Error::Transport(t) => Some(t.kind()),
            _ => None,
        }
    }

    /// The limit this error tripped, if it is a [`Error::LimitExceeded`].
    pub fn tripped_limit(&self) -> Option<Limit> {
        match self {
            Error::LimitExceeded { limit, .. } => Some(*limit),
            _ => None,
        }
    }
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
