//! `--policy`: which session policy a benchmark measures, and how one server serves all of them.
//!
//! The client picks the policy; the server learns it the way a Ceph daemon does, from the entity type the
//! client announces, through its per-peer-type policy table (`proto::Config::accept_policies`):
//! - `lossy`: `client.bench` (type CLIENT), lossy_client ↔ stateless_server, as a Ceph client and an OSD;
//! - `lossless`: `mgr.bench` (type MGR), lossless_client ↔ stateful_server (a Ceph client and an MDS);
//! - `lossless-peer`: `osd.bench` (type OSD), both ends bound to an address, lossless_peer each way (two
//!   OSDs on the cluster network).
//!
//! Invariant: [`BenchPolicy::of_peer_type`] inverts [`BenchPolicy::entity_type`], so the server's view of
//! a connection's policy is the one its table applied.

use msgr::proto::types::entity_type;
use msgr::proto::Policy;

/// `--policy`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BenchPolicy {
    /// lossy_client ↔ stateless_server: a fault ends the session (what clients use with OSDs).
    #[default]
    Lossy,
    /// lossless_client ↔ stateful_server: reconnect and replay after a fault.
    Lossless,
    /// lossless_peer each way, both ends bound to an address (backend links between daemons).
    LosslessPeer,
}

impl BenchPolicy {
    pub const ALL: [BenchPolicy; 3] = [
        BenchPolicy::Lossy,
        BenchPolicy::Lossless,
        BenchPolicy::LosslessPeer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BenchPolicy::Lossy => "lossy",
            BenchPolicy::Lossless => "lossless",
            BenchPolicy::LosslessPeer => "lossless-peer",
        }
    }

    /// The entity type the client announces, which tells the server the policy.
    pub fn entity_type(self) -> u8 {
        match self {
            BenchPolicy::Lossy => entity_type::CLIENT,
            BenchPolicy::Lossless => entity_type::MGR,
            BenchPolicy::LosslessPeer => entity_type::OSD,
        }
    }

    /// The policy announced for a peer of `peer_type` (the server's view).
    pub fn of_peer_type(peer_type: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.entity_type() == peer_type)
    }

    /// The client's side.
    pub fn client(self) -> Policy {
        match self {
            BenchPolicy::Lossy => Policy::lossy_client(),
            BenchPolicy::Lossless => Policy::lossless_client(),
            BenchPolicy::LosslessPeer => Policy::lossless_peer(),
        }
    }

    /// The server's side.
    pub fn server(self) -> Policy {
        match self {
            BenchPolicy::Lossy => Policy::stateless_server(),
            BenchPolicy::Lossless => Policy::stateful_server(),
            BenchPolicy::LosslessPeer => Policy::lossless_peer(),
        }
    }

    /// Whether the client messenger binds an address (the server may dial it back).
    pub fn client_binds(self) -> bool {
        self == BenchPolicy::LosslessPeer
    }

    /// The server's per-peer-type table for all three.
    pub fn accept_table() -> Vec<(u8, Policy)> {
        Self::ALL
            .into_iter()
            .map(|p| (p.entity_type(), p.server()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_policy_has_its_own_entity_type() {
        for p in BenchPolicy::ALL {
            assert_eq!(BenchPolicy::of_peer_type(p.entity_type()), Some(p));
            assert_eq!(p.client().lossy, p.server().lossy, "{p:?}");
        }
        assert_eq!(BenchPolicy::of_peer_type(entity_type::MON), None);
        assert!(BenchPolicy::Lossless.server().server);
        assert!(!BenchPolicy::LosslessPeer.server().server);
    }
}
