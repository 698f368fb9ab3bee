//! Test-only protocol interceptor (cargo feature `interceptor`), after Ceph's `Interceptor` (the
//! `INTERCEPT(step)` points of ProtocolV2 that test_msgr.cc's race tests drive).
//!
//! Owns: the named protocol steps a [`Connection`](super::Connection) reports, what it tells the
//! interceptor about itself ([`InterceptPoint`]) and the actions an interceptor can answer.
//!
//! A normal build has none of this: the module, the `Config::interceptor` field and every hook call are
//! compiled out, so the protocol core pays nothing for it.
//!
//! # Steps and when they are reported
//! - reported *in place* (the step's work has not happened yet): [`InterceptStep::Hello`] (the peer's
//!   banner arrived, our HELLO is about to go out), [`InterceptStep::ClientIdent`],
//!   [`InterceptStep::Reconnect`] (CLIENT_IDENT / SESSION_RECONNECT about to go out) and
//!   [`InterceptStep::Message`] (a MESSAGE frame arrived and is about to be handled);
//! - reported *once the owner has acted on the state change* ([`InterceptStep::Banner`] when a
//!   transport came up, [`InterceptStep::ServerIdent`], [`InterceptStep::ReconnectOk`],
//!   [`InterceptStep::Retry`] after a session decision, [`InterceptStep::Ready`]): the core records the
//!   step, holds back everything it would transmit and stops reading input until the owner calls
//!   [`Connection::run_deferred_intercepts`](super::Connection::run_deferred_intercepts). The messenger
//!   does so after it has handled the connection's events, so a paused step never holds the session
//!   registry's lock, and the connect / accept callbacks precede it, as in Ceph (ProtocolV2 registers
//!   and announces an accepted session before `INTERCEPT(12)`, and intercepts READY inside `ready()`).
//!
//! # Actions
//! [`InterceptAction::Continue`] goes on; [`InterceptAction::Fail`] faults the transport as a socket
//! error would (the policy decides: reconnect, standby or reset); [`InterceptAction::Stop`] ends the
//! session as a fatal error does (`ms_handle_reset`). To *pause* a step, the interceptor blocks in
//! [`Interceptor::intercept`] until the test releases it, as Ceph's TestInterceptor does: that blocks
//! the calling worker thread and every connection on it, so race tests give each messenger more than
//! one worker (the messenger counts its listener as load, so connections avoid the accepting worker
//! while others are free).

use super::conn::Role;
use super::types::EntityAddr;

/// A named protocol step (Ceph's `Interceptor::STEP`, coarser).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InterceptStep {
    /// A transport came up; our banner is about to go out (Ceph's START_*_BANNER_EXCHANGE and
    /// BANNER_EXCHANGE*).
    Banner,
    /// The peer's banner arrived; our HELLO is about to go out (HANDLE_PEER_BANNER_PAYLOAD*).
    Hello,
    /// Client: CLIENT_IDENT is about to go out (SEND_CLIENT_IDENTITY).
    ClientIdent,
    /// Server: a new session was decided; SERVER_IDENT is about to go out (SEND_SERVER_IDENTITY).
    ServerIdent,
    /// Client: SESSION_RECONNECT is about to go out (SEND_RECONNECT).
    Reconnect,
    /// Server: a session was resumed; SESSION_RECONNECT_OK is about to go out (SEND_RECONNECT_OK).
    ReconnectOk,
    /// Server: SESSION_RETRY or SESSION_RETRY_GLOBAL is about to go out (SESSION_RETRY).
    Retry,
    /// The session is ready on this transport (READY).
    Ready,
    /// A MESSAGE frame arrived and is about to be handled (HANDLE_MESSAGE).
    Message,
}

impl InterceptStep {
    /// Whether the step is reported after the owner has acted on it (see the module docs).
    pub fn is_deferred(self) -> bool {
        matches!(
            self,
            InterceptStep::Banner
                | InterceptStep::ServerIdent
                | InterceptStep::ReconnectOk
                | InterceptStep::Retry
                | InterceptStep::Ready
        )
    }
}

/// What the interceptor answers (Ceph's `Interceptor::ACTION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterceptAction {
    Continue,
    /// Fault the transport as a socket error would.
    Fail,
    /// End the session as a fatal error does.
    Stop,
}

/// Which connection reached which step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterceptPoint {
    /// The id the owner gave the connection (the messenger: its `ConnectionRef::id`). A session taken
    /// over by another transport keeps the id of the connection it lived on.
    pub id: u64,
    pub role: Role,
    /// Client: the address we dial. Server: the peer's msgr2 address once it identified itself, its
    /// socket address before.
    pub peer: EntityAddr,
    pub step: InterceptStep,
}

/// A test's hook into the protocol steps of every connection of a messenger.
pub trait Interceptor: Send + Sync + std::fmt::Debug {
    /// Called on the connection's worker thread at `at.step`. May block to pause the step.
    fn intercept(&self, at: &InterceptPoint) -> InterceptAction;
}

/// A connection's interceptor state: its id and the steps waiting for the owner.
#[derive(Debug, Default)]
pub(crate) struct Hook {
    pub id: u64,
    pub deferred: Vec<InterceptStep>,
}
