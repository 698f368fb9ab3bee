//! Cut the byte stream at random points — inside the handshake, inside a reconnect, mid-frame — and
//! check the lossless session delivers every message exactly once and in order, both ways; and that a
//! lossy session ends with a reset instead, never delivering anything twice.

mod common;

use std::time::Instant;

use common::*;
use msgr::proto::conn::Policy;
use msgr::proto::sim::{Side, Sim};
use msgr::proto::Event;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

fn sizes(seed: u64, n: usize) -> Vec<usize> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            if rng.random_ratio(1, 20) {
                rng.random_range(16_384..=150_000)
            } else {
                rng.random_range(0..2048)
            }
        })
        .collect()
}

/// Run `sim`, applying `cuts` one after the other (each counts bytes delivered after the previous cut).
fn run_with_cuts(
    sim: &mut Sim,
    mut cuts: Vec<usize>,
    mut on_step: impl FnMut(&mut Sim),
    done: impl Fn(&Sim) -> bool,
) -> bool {
    cuts.reverse();
    for _ in 0..2_000_000 {
        if done(sim) {
            return true;
        }
        if sim.cut_after.is_none() {
            sim.cut_after = cuts.pop();
        }
        on_step(sim);
        if !sim.step() && !sim.advance_clock() {
            break;
        }
    }
    done(sim)
}

fn cut_strategy() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(
        prop_oneof![1usize..400, 400usize..4000, 4000usize..300_000],
        0..6,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, .. ProptestConfig::default() })]

    #[test]
    fn lossless_exactly_once_in_order(seed in any::<u64>(), n in 1usize..80, m in 0usize..40,
                                      cuts in cut_strategy(), chunk in 1usize..70_000) {
        let now = Instant::now();
        let mut sim = Sim::new(arc(client_config(seed)), Policy::lossless_client(), arc(server_config(seed ^ 0x55)), server_addr(), now);
        sim.max_chunk = chunk;
        let pool = PayloadPool::new(seed, 160_000);
        let up = sizes(seed, n);
        let down = sizes(seed.wrapping_add(1), m);
        for (i, len) in up.iter().enumerate() {
            sim.client.send(now, pool.message(i as u64, *len)).unwrap();
        }
        let queued_down = std::cell::Cell::new(false);
        let ok = run_with_cuts(&mut sim, cuts.clone(), |s| {
            if !queued_down.get() && s.server().is_some_and(|c| c.is_ready()) {
                queued_down.set(true);
                let t = s.now;
                let srv = s.server().unwrap();
                for (i, len) in down.iter().enumerate() {
                    srv.send(t, pool.message(i as u64, *len)).unwrap();
                }
            }
        }, |s| s.server_inbox.len() >= n && s.client_inbox.len() >= m && queued_down.get());
        prop_assert!(ok, "did not finish: up {}/{n} down {}/{m}, cuts {cuts:?}, transports {}, client phase {:?}",
            sim.server_inbox.len(), sim.client_inbox.len(), sim.transports, sim.client.phase());
        // Let in-flight duplicates, if any, arrive.
        sim.run_until(10_000, |_| false);
        let up_tids: Vec<u64> = sim.server_inbox.iter().map(|m| m.header.tid).collect();
        prop_assert_eq!(up_tids, (0..n as u64).collect::<Vec<_>>());
        let down_tids: Vec<u64> = sim.client_inbox.iter().map(|m| m.header.tid).collect();
        prop_assert_eq!(down_tids, (0..m as u64).collect::<Vec<_>>());
        prop_assert!(sim.server_inbox.iter().chain(sim.client_inbox.iter()).all(|x| pool.verify(x)));
        prop_assert!(!sim.events.iter().any(|(_, e)| matches!(e, Event::Reset(_) | Event::RemoteReset { .. })),
            "a lossless session must not reset: {:?}", sim.events);
    }

    #[test]
    fn lossy_cut_resets_and_never_duplicates(seed in any::<u64>(), n in 1usize..60, cut in 200usize..60_000) {
        let now = Instant::now();
        let mut server = server_config(seed);
        server.default_policy = Policy::stateless_server();
        let mut sim = Sim::new(arc(client_config(seed)), Policy::lossy_client(), arc(server), server_addr(), now);
        let pool = PayloadPool::new(seed, 160_000);
        for (i, len) in sizes(seed, n).iter().enumerate() {
            sim.client.send(now, pool.message(i as u64, *len)).unwrap();
        }
        sim.cut_after = Some(cut);
        sim.run_until(1_000_000, |s| s.client.is_closed() || s.server_inbox.len() == n);
        let tids: Vec<u64> = sim.server_inbox.iter().map(|m| m.header.tid).collect();
        prop_assert!(tids.windows(2).all(|w| w[0] < w[1]), "duplicate or reordered: {tids:?}");
        prop_assert!(tids.iter().all(|t| (*t as usize) < n));
        if sim.server_inbox.len() < n {
            // Lost messages only with a reset reported to the client.
            prop_assert!(sim.client.is_closed());
            prop_assert!(sim.events.iter().any(|(side, e)| *side == Side::Client && matches!(e, Event::Reset(_))), "events: {:?}", sim.events);
        }
    }
}

#[test]
fn cut_inside_handshake_then_reconnect_delivers_everything() {
    // Deterministic companion to the proptest: cut at every offset of the first handshake.
    for cut in 1..200 {
        let now = Instant::now();
        let mut sim = Sim::new(
            arc(client_config(cut as u64)),
            Policy::lossless_client(),
            arc(server_config(9)),
            server_addr(),
            now,
        );
        let pool = PayloadPool::new(3, 4096);
        for i in 0..10 {
            sim.client.send(now, pool.message(i, 300)).unwrap();
        }
        sim.cut_after = Some(cut);
        assert!(
            sim.run_until(100_000, |s| s.server_inbox.len() == 10),
            "cut at {cut}"
        );
        let tids: Vec<u64> = sim.server_inbox.iter().map(|m| m.header.tid).collect();
        assert_eq!(tids, (0..10).collect::<Vec<_>>(), "cut at {cut}");
    }
}
