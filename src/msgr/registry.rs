//! The session registry: which connection holds the session with a peer, by the peer's addresses.
//!
//! Owns the map only; the locking discipline is the messenger's (`Shared::registry`: `connect_to` and a
//! worker resolving an incoming session look up, decide and insert under one lock).
//!
//! Invariant: every operation touches at most one entry. Closing a connection removes its entry by the
//! key it was registered under (`Conn::reg_key` on its worker), never by scanning: with thousands of
//! sessions a close costs the same as with one. `entries_visited` counts the entries operations touched,
//! so tests can check that.

use std::collections::HashMap;

use super::{ConnId, ConnectionRef};
use crate::proto::types::AddrVec;

#[derive(Default)]
pub(crate) struct SessionRegistry {
    by_addrs: HashMap<AddrVec, ConnectionRef>,
    /// Entries looked at by `remove_conn` since the messenger started.
    entries_visited: u64,
}

impl SessionRegistry {
    pub fn get(&self, addrs: &AddrVec) -> Option<&ConnectionRef> {
        self.by_addrs.get(addrs)
    }

    /// Register `conn` as the session with `addrs`, replacing whatever was there.
    pub fn insert(&mut self, addrs: AddrVec, conn: ConnectionRef) {
        self.by_addrs.insert(addrs, conn);
    }

    /// Remove the entry under `addrs` if it is connection `id`'s (a newer session may have replaced it).
    pub fn remove_conn(&mut self, addrs: &AddrVec, id: ConnId) {
        if let Some(h) = self.by_addrs.get(addrs) {
            self.entries_visited += 1;
            if h.id() == id {
                self.by_addrs.remove(addrs);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_addrs.len()
    }

    pub fn entries_visited(&self) -> u64 {
        self.entries_visited
    }
}
