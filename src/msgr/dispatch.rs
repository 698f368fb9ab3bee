//! The messenger's dispatchers: an ordered chain (Ceph's `add_dispatcher_head` / `add_dispatcher_tail`),
//! fixed when the messenger starts.
//!
//! Invariant: a message goes to exactly one dispatcher, the first whose [`Dispatcher::ms_handles`]
//! takes it (none: it is dropped, counted and logged); connection events (connect, accept, resets,
//! keepalive acks, failed connects) go to every dispatcher in chain order, as in Ceph.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::{ConnectionRef, Dispatcher};
use crate::proto::{self, Message};

/// The dispatchers, in order. Empty until the messenger starts.
#[derive(Default)]
pub(crate) struct DispatchChain {
    list: OnceLock<Box<[Arc<dyn Dispatcher>]>>,
}

impl DispatchChain {
    /// Fix the chain (at start). A second call changes nothing.
    pub fn set(&self, list: Vec<Arc<dyn Dispatcher>>) {
        let _ = self.list.set(list.into_boxed_slice());
    }

    fn all(&self) -> &[Arc<dyn Dispatcher>] {
        self.list.get().map_or(&[], |l| l)
    }

    /// Hand `msg` to the first dispatcher that takes it; `Err(msg)` if none does.
    #[allow(clippy::result_large_err)] // the message comes back by value, to be dropped by the caller
    pub fn dispatch(&self, conn: &ConnectionRef, msg: Message) -> Result<(), Message> {
        match self.all() {
            [only] => only.ms_dispatch(conn, msg),
            list => match list.iter().find(|d| d.ms_handles(&msg)) {
                Some(d) => d.ms_dispatch(conn, msg),
                None => return Err(msg),
            },
        }
        Ok(())
    }

    pub fn connect(&self, conn: &ConnectionRef) {
        self.all().iter().for_each(|d| d.ms_handle_connect(conn));
    }

    pub fn accept(&self, conn: &ConnectionRef) {
        self.all().iter().for_each(|d| d.ms_handle_accept(conn));
    }

    pub fn reset(&self, conn: &ConnectionRef, why: &proto::Error) {
        self.all().iter().for_each(|d| d.ms_handle_reset(conn, why));
    }

    pub fn remote_reset(&self, conn: &ConnectionRef) {
        self.all()
            .iter()
            .for_each(|d| d.ms_handle_remote_reset(conn));
    }

    pub fn connect_failed(&self, conn: &ConnectionRef, reason: &proto::TransportError) {
        self.all()
            .iter()
            .for_each(|d| d.ms_handle_connect_failed(conn, reason));
    }

    pub fn keepalive_ack(&self, conn: &ConnectionRef, rtt: Duration) {
        self.all()
            .iter()
            .for_each(|d| d.ms_handle_keepalive_ack(conn, rtt));
    }
}
