//! The session registry: which connection holds the session with a peer, by the peer's addresses.
//!
//! Owns the map only; the locking discipline is the messenger's (`Shared::registry`: `connect_to` and a
//! worker resolving an incoming session look up, decide and insert under one lock).
//!
//! Invariant: every operation touches at most one entry. Closing a connection removes its entry by the
//! key it was registered under (`Conn::reg_key` on its worker), never by scanning: with thousands of
//! sessions a close costs the same as with one. `entries_visited` counts the entries operations touched,
//! so tests can check that.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;

use super::{ConnId, ConnectionRef};
use crate::proto::types::AddrVec;

#[derive(Default)]
pub(crate) struct SessionRegistry {
    by_addrs: HashMap<AddrVec, ConnectionRef>,
    /// Server-policy sessions, oldest first: the candidates for eviction (entries whose session has
    /// gone are skipped and dropped when met).
    evictable: VecDeque<(AddrVec, ConnId)>,
    /// Entries looked at by `remove_conn` since the messenger started.
    entries_visited: u64,
}

/// How many candidates one eviction looks at before giving up (sessions that are not in Standby stay
/// candidates for later).
const EVICTION_SCAN: usize = 256;

impl SessionRegistry {
    pub fn get(&self, addrs: &AddrVec) -> Option<&ConnectionRef> {
        self.by_addrs.get(addrs)
    }

    /// Every registered session's handle.
    pub fn handles(&self) -> Vec<ConnectionRef> {
        self.by_addrs.values().cloned().collect()
    }

    /// Register `conn` as the session with `addrs`, replacing whatever was there. `evictable`: a
    /// server-policy session, which `evict_oldest` may end to make room.
    pub fn insert(&mut self, addrs: AddrVec, conn: ConnectionRef, evictable: bool) {
        if evictable {
            self.evictable.push_back((addrs.clone(), conn.id()));
            if self.evictable.len() > 2 * self.by_addrs.len() + 1024 {
                let live = &self.by_addrs;
                self.evictable
                    .retain(|(k, id)| live.get(k).is_some_and(|h| h.id() == *id));
            }
        }
        self.by_addrs.insert(addrs, conn);
    }

    /// Unregister the oldest evictable session that waits in Standby and return it, for its worker to
    /// end it; None if none of the oldest candidates is in Standby.
    pub fn evict_oldest(&mut self) -> Option<ConnectionRef> {
        for _ in 0..EVICTION_SCAN.min(self.evictable.len()) {
            let (key, id) = self.evictable.pop_front()?;
            let Some(h) = self.by_addrs.get(&key).filter(|h| h.id() == id) else {
                continue; // gone or replaced
            };
            if h.0.standby.load(Ordering::Relaxed) && !h.is_closed() {
                return self.by_addrs.remove(&key);
            }
            self.evictable.push_back((key, id));
        }
        None
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
