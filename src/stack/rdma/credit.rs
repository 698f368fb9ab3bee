//! Credit-based flow control for one RC connection (pure accounting; no verbs).
//!
//! Each side posts `depth` receive buffers and tells the peer its depth when connecting (and the
//! largest depth it may grow to); the peer may post that many SENDs before hearing back. Every SEND
//! carries, in its immediate data, the number of buffers its sender has re-posted since its last SEND
//! ("returned credits"). A side with returns piled up and no data to carry them sends a *credit-only*
//! SEND (no payload) once `threshold` have accumulated.
//!
//! Growing: a connection starts at a small depth (the peer is not authenticated yet); a side that
//! posts more receive buffers later ([`Credits::grant_more`]) owes them to the peer exactly like
//! re-posted ones, so they reach it on the next SEND. The peer accepts returns up to the largest depth
//! announced at connect time (`peer_depth`), never more.
//!
//! Invariants (the reason for each rule):
//! - A data SEND needs two credits: the last one is reserved for a credit-only SEND. Without the
//!   reserve, both sides could spend every credit on data and then be unable to return any: deadlock.
//! - `threshold >= 2`: a credit-only SEND consumes one peer buffer, which the peer returns; with a
//!   threshold of 1 the two sides would bounce credit-only SENDs forever. With 2, each round halves.
//! - `received <= granted` always (`granted` = the peer's initial credits + all we returned). A SEND
//!   beyond that is a peer violating the protocol; the device would have hit RNR anyway (the QP uses
//!   `rnr_retry_count = 0`, so an overrun is an error, not a stall). Buffers added by `grant_more`
//!   count in `granted` only once announced, so they must be posted before (they are: the caller posts,
//!   then grants).
//! - A depth of at least 3: a data SEND leaves one credit in reserve and returns go out in pairs
//!   (`threshold` 2), so with 2 buffers one data SEND leaves the sender on its reserve while the
//!   receiver owes a single credit, below its threshold: a one-way stream stalls for good. (The wire
//!   asks for at least 4, see `RdmaConfig::recv_depth`.)

/// Credit state of one connection.
#[derive(Clone, Debug)]
pub struct Credits {
    /// SENDs we may still post (peer buffers known to be free).
    send: u32,
    /// The largest depth the peer may grow to: `send` can never exceed it.
    peer_depth: u32,
    /// Receive buffers we have posted for the peer (grows with `grant_more`); sets `threshold`.
    our_depth: u32,
    /// Buffers we re-posted and have not yet announced.
    to_return: u32,
    threshold: u32,
    /// Credits we ever gave the peer (our depth + everything returned).
    granted: u64,
    /// SENDs we received.
    received: u64,
    /// Fewest credits we ever had left (for counters and tests).
    low_water: u32,
    /// No flow control at all (Ceph's wire: plain SENDs, a full receive queue is waited out by the
    /// device's RNR retry): every send may go, nothing is returned or checked.
    unlimited: bool,
}

/// The peer sent more than we granted, or returned more than it could have borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CreditViolation {
    #[error("peer sent SEND #{received} with only {granted} credits granted")]
    Overrun { received: u64, granted: u64 },
    #[error("peer returned credits beyond our depth ({have} + {returned} > {depth})")]
    OverReturn {
        have: u32,
        returned: u32,
        depth: u32,
    },
}

impl Credits {
    /// `peer_depth`: receive buffers the peer posted for us (and will ever post); `our_depth`: those
    /// we posted for it.
    pub fn new(peer_depth: u32, our_depth: u32) -> Self {
        Self::growing(peer_depth, peer_depth, our_depth)
    }

    /// Like [`Credits::new`] for a peer that posted `peer_depth` buffers and may grow to
    /// `peer_max_depth` (returns up to that are accepted).
    pub fn growing(peer_depth: u32, peer_max_depth: u32, our_depth: u32) -> Self {
        Credits {
            send: peer_depth,
            peer_depth: peer_max_depth.max(peer_depth),
            our_depth,
            to_return: 0,
            threshold: Self::threshold_for(our_depth),
            granted: u64::from(our_depth),
            received: 0,
            low_water: peer_depth,
            unlimited: false,
        }
    }

    fn threshold_for(our_depth: u32) -> u32 {
        (our_depth / 4).max(2)
    }

    /// No credits (see the `unlimited` field): for Ceph's wire, which has none.
    pub fn unlimited() -> Self {
        Credits {
            send: u32::MAX,
            peer_depth: u32::MAX,
            our_depth: u32::MAX,
            to_return: 0,
            threshold: u32::MAX,
            granted: u64::MAX,
            received: 0,
            low_water: u32::MAX,
            unlimited: true,
        }
    }

    /// Credits left for sending.
    pub fn available(&self) -> u32 {
        self.send
    }

    pub fn low_water(&self) -> u32 {
        self.low_water
    }

    pub fn to_return(&self) -> u32 {
        self.to_return
    }

    /// Enough returns have piled up for a credit-only SEND.
    pub fn credit_only_due(&self) -> bool {
        self.to_return >= self.threshold
    }

    pub fn can_send_data(&self) -> bool {
        self.send >= 2
    }

    /// Spend a credit on a data SEND: the immediate data to put on it (returned credits), or `None` if
    /// only the reserved credit is left.
    pub fn take_for_data(&mut self) -> Option<u32> {
        if !self.can_send_data() {
            return None;
        }
        Some(self.spend())
    }

    /// Whether a credit-only SEND is due, and if so spend a credit on it (the reserve may be used).
    pub fn take_for_credit_only(&mut self) -> Option<u32> {
        if self.to_return < self.threshold || self.send == 0 {
            return None;
        }
        Some(self.spend())
    }

    fn spend(&mut self) -> u32 {
        if self.unlimited {
            return 0;
        }
        self.send -= 1;
        self.low_water = self.low_water.min(self.send);
        let returned = self.to_return;
        self.to_return = 0;
        self.granted += u64::from(returned);
        returned
    }

    /// Undo the last `take_*` whose SEND could not be posted.
    pub fn unspend(&mut self, returned: u32) {
        if self.unlimited {
            return;
        }
        self.send += 1;
        self.to_return += returned;
        self.granted -= u64::from(returned);
    }

    /// A SEND arrived carrying `returned` credits.
    pub fn on_receive(&mut self, returned: u32) -> Result<(), CreditViolation> {
        if self.unlimited {
            return Ok(());
        }
        self.received += 1;
        if self.received > self.granted {
            return Err(CreditViolation::Overrun {
                received: self.received,
                granted: self.granted,
            });
        }
        match self.send.checked_add(returned) {
            Some(sum) if sum <= self.peer_depth => {
                self.send = sum;
                Ok(())
            }
            _ => Err(CreditViolation::OverReturn {
                have: self.send,
                returned,
                depth: self.peer_depth,
            }),
        }
    }

    /// We re-posted one receive buffer: it is owed to the peer.
    pub fn on_reposted(&mut self) {
        if !self.unlimited {
            self.to_return += 1;
        }
    }

    /// We posted `more` receive buffers beyond our depth (already posted: the peer may use them as
    /// soon as it hears of them). They are owed to the peer like re-posted ones and count in `granted`
    /// once announced; the credit-only threshold follows the new depth. The caller keeps our depth
    /// within the largest one it announced (the peer refuses returns beyond it).
    pub fn grant_more(&mut self, more: u32) {
        if self.unlimited {
            return;
        }
        self.our_depth = self.our_depth.saturating_add(more);
        self.to_return = self.to_return.saturating_add(more);
        self.threshold = Self::threshold_for(self.our_depth);
    }

    /// Receive buffers we have posted for the peer.
    pub fn our_depth(&self) -> u32 {
        self.our_depth
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_stalls_and_never_owes() {
        let mut c = Credits::unlimited();
        for _ in 0..10_000 {
            assert_eq!(c.take_for_data(), Some(0));
            c.on_receive(5).unwrap();
            c.on_reposted();
        }
        assert!(c.can_send_data());
        assert!(!c.credit_only_due());
        assert_eq!(c.take_for_credit_only(), None);
        c.unspend(0);
        assert_eq!(c.available(), u32::MAX);
    }

    /// Two ends wired back to back: `a` sends to `b` and `b` to `a`, messages in flight in queues.
    /// Each side's posted receive buffers are counted: a SEND that finds none is what the device
    /// would refuse (RNR, a QP error with `rnr_retry_count = 0`), and fails the test.
    struct Pair {
        a: Credits,
        b: Credits,
        to_b: Vec<u32>,
        to_a: Vec<u32>,
        a_posted: u32,
        b_posted: u32,
    }

    impl Pair {
        fn new(depth: u32) -> Self {
            Self::growing(depth, depth)
        }

        /// Both sides start at `depth` buffers and announce they may grow to `max`.
        fn growing(depth: u32, max: u32) -> Self {
            Pair {
                a: Credits::growing(depth, max, depth),
                b: Credits::growing(depth, max, depth),
                to_b: Vec::new(),
                to_a: Vec::new(),
                a_posted: depth,
                b_posted: depth,
            }
        }

        /// `a` posts `more` receive buffers, then grants them (the worker's order).
        fn grow_a(&mut self, more: u32) {
            self.a_posted += more;
            self.a.grant_more(more);
        }

        /// Deliver everything in flight; each receiver consumes and re-posts at once.
        fn deliver(&mut self) {
            for imm in std::mem::take(&mut self.to_b) {
                assert!(
                    self.b_posted > 0,
                    "RNR: a SEND reached b with no buffer posted"
                );
                self.b.on_receive(imm).unwrap();
                self.b.on_reposted();
            }
            for imm in std::mem::take(&mut self.to_a) {
                assert!(
                    self.a_posted > 0,
                    "RNR: a SEND reached a with no buffer posted"
                );
                self.a.on_receive(imm).unwrap();
                self.a.on_reposted();
            }
        }

        fn credit_only(&mut self) -> usize {
            let mut sent = 0;
            while let Some(imm) = self.a.take_for_credit_only() {
                self.to_b.push(imm);
                sent += 1;
            }
            while let Some(imm) = self.b.take_for_credit_only() {
                self.to_a.push(imm);
                sent += 1;
            }
            sent
        }

        /// `b` streams to `a` for `turns` turns, each SEND at most once in flight and every buffer
        /// it hits counted against `a`'s posted ones. Returns (SENDs, most in flight at once).
        fn stream_b_to_a(&mut self, turns: usize) -> (u64, usize) {
            let (mut sent, mut most) = (0u64, 0usize);
            for _ in 0..turns {
                while let Some(imm) = self.b.take_for_data() {
                    self.to_a.push(imm);
                    sent += 1;
                }
                most = most.max(self.to_a.len());
                assert!(
                    self.to_a.len() as u32 <= self.a_posted,
                    "{} SENDs in flight to {} posted buffers",
                    self.to_a.len(),
                    self.a_posted
                );
                self.deliver();
                self.credit_only();
                self.deliver();
            }
            (sent, most)
        }
    }

    #[test]
    fn data_keeps_one_credit_in_reserve() {
        let mut c = Credits::new(4, 4);
        assert_eq!(c.take_for_data(), Some(0));
        assert_eq!(c.take_for_data(), Some(0));
        assert_eq!(c.take_for_data(), Some(0));
        assert_eq!(c.take_for_data(), None);
        assert_eq!(c.available(), 1);
        assert_eq!(c.low_water(), 1);
    }

    #[test]
    fn returns_ride_on_data() {
        let mut c = Credits::new(8, 8);
        c.on_reposted();
        c.on_reposted();
        c.on_reposted();
        assert_eq!(c.take_for_data(), Some(3));
        assert_eq!(c.to_return(), 0);
        assert_eq!(c.take_for_data(), Some(0));
    }

    #[test]
    fn credit_only_waits_for_threshold_and_may_use_reserve() {
        let mut c = Credits::new(8, 8); // threshold 2
        for _ in 0..7 {
            c.take_for_data();
        }
        assert_eq!(c.available(), 1);
        c.on_reposted();
        assert!(!c.credit_only_due());
        assert_eq!(c.take_for_credit_only(), None);
        c.on_reposted();
        assert!(c.credit_only_due());
        assert_eq!(c.take_for_credit_only(), Some(2));
        assert_eq!(c.available(), 0);
    }

    #[test]
    fn overrun_is_a_violation() {
        let mut c = Credits::new(4, 2);
        assert!(c.on_receive(0).is_ok());
        assert!(c.on_receive(0).is_ok());
        assert_eq!(
            c.on_receive(0),
            Err(CreditViolation::Overrun {
                received: 3,
                granted: 2
            })
        );
    }

    #[test]
    fn over_return_is_a_violation() {
        let mut c = Credits::new(4, 4);
        assert!(matches!(
            c.on_receive(1),
            Err(CreditViolation::OverReturn { .. })
        ));
    }

    #[test]
    fn both_sides_exhausted_still_recover() {
        // Both sides fill each other's buffers with data; credit-only SENDs must get both going again.
        let mut p = Pair::new(8);
        while let Some(imm) = p.a.take_for_data() {
            p.to_b.push(imm);
        }
        while let Some(imm) = p.b.take_for_data() {
            p.to_a.push(imm);
        }
        assert!(!p.a.can_send_data() && !p.b.can_send_data());
        p.deliver();
        assert!(p.credit_only() > 0);
        p.deliver();
        assert!(p.a.can_send_data() && p.b.can_send_data());
    }

    #[test]
    fn credit_only_ping_pong_dies_out() {
        let mut p = Pair::new(16);
        for _ in 0..10 {
            if let Some(imm) = p.a.take_for_data() {
                p.to_b.push(imm);
            }
        }
        p.deliver();
        let mut rounds = 0;
        while p.credit_only() > 0 {
            p.deliver();
            rounds += 1;
            assert!(rounds < 20, "credit-only SENDs never stop");
        }
    }

    #[test]
    fn one_way_stream_never_stalls() {
        // a streams to b; b never has data, only credit-only returns.
        let mut p = Pair::new(32);
        let mut sent = 0u64;
        for _ in 0..10_000 {
            if let Some(imm) = p.a.take_for_data() {
                p.to_b.push(imm);
                sent += 1;
            }
            p.deliver();
            p.credit_only();
            p.deliver();
        }
        assert!(sent > 9_000, "only {sent} sends in 10000 turns");
    }

    #[test]
    fn grown_depth_widens_the_window_and_is_never_overrun() {
        // a starts at 4 receive buffers and grows to 32; b streams to it throughout.
        let mut p = Pair::growing(4, 32);
        let (sent, most) = p.stream_b_to_a(100);
        assert!(sent >= 100, "small window stalled: {sent} SENDs");
        assert_eq!(
            most, 3,
            "before growing, b keeps one of a's 4 credits in reserve"
        );
        p.grow_a(28);
        assert!(p.a.credit_only_due(), "the grant must reach b at once");
        assert_eq!(p.a.our_depth(), 32);
        p.credit_only();
        p.deliver();
        assert_eq!(p.b.available(), 32);
        let (_, most) = p.stream_b_to_a(100);
        assert_eq!(
            most, 31,
            "after growing, b uses a's whole depth but its reserve"
        );
    }

    #[test]
    fn grown_buffers_count_only_once_announced() {
        // A peer that sends into buffers we posted but have not announced yet overruns its grant.
        let mut a = Credits::growing(4, 32, 4);
        a.grant_more(28);
        for _ in 0..4 {
            a.on_receive(0).unwrap();
        }
        assert_eq!(
            a.on_receive(0),
            Err(CreditViolation::Overrun {
                received: 5,
                granted: 4
            })
        );
        let mut a = Credits::growing(4, 32, 4);
        a.grant_more(28);
        assert_eq!(a.take_for_credit_only(), Some(28));
        for _ in 0..32 {
            a.on_receive(0).unwrap();
        }
        assert!(matches!(
            a.on_receive(0),
            Err(CreditViolation::Overrun { received: 33, .. })
        ));
    }

    #[test]
    fn returns_beyond_the_announced_max_are_refused() {
        let mut b = Credits::growing(4, 32, 4);
        b.on_receive(28).unwrap();
        assert_eq!(b.available(), 32);
        assert_eq!(
            b.on_receive(1),
            Err(CreditViolation::OverReturn {
                have: 32,
                returned: 1,
                depth: 32
            })
        );
        // A peer that announced no larger depth (an older msgr) refuses any growth: never grow for it.
        let mut old = Credits::new(4, 4);
        assert!(matches!(
            old.on_receive(28),
            Err(CreditViolation::OverReturn { .. })
        ));
    }

    #[test]
    fn threshold_follows_the_grown_depth() {
        let mut c = Credits::growing(4, 32, 4); // threshold 2
        c.on_reposted();
        c.on_reposted();
        assert!(c.credit_only_due());
        assert_eq!(c.take_for_credit_only(), Some(2));
        c.grant_more(28); // depth 32: threshold 8
        assert_eq!(c.take_for_credit_only(), Some(28));
        for _ in 0..7 {
            c.on_reposted();
        }
        assert!(!c.credit_only_due());
        c.on_reposted();
        assert!(c.credit_only_due());
    }

    #[test]
    fn depth_two_stalls_a_one_way_stream_three_does_not() {
        // Why the smallest depth is at least 3 (see the module docs).
        let (sent, _) = Pair::new(2).stream_b_to_a(1000);
        assert_eq!(
            sent, 1,
            "with 2 buffers the receiver never owes enough to return"
        );
        let (sent, _) = Pair::new(3).stream_b_to_a(1000);
        assert!(sent >= 1000, "depth 3 stalled after {sent} SENDs");
    }

    #[test]
    fn unlimited_ignores_grants() {
        let mut c = Credits::unlimited();
        c.grant_more(28);
        assert!(!c.credit_only_due());
        assert_eq!(c.take_for_credit_only(), None);
    }
}
