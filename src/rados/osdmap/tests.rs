use bytes::{BufMut, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::proto::crc::ceph_crc32c;
use crate::proto::denc::{encode_versioned, Encode};
use crate::proto::types::EntityAddr;

/// osdmaptool's 24-OSD map with pool 1 (pg_num 192, pgp_num 96) and upmaps (tests/data/README.md).
const MAP: &[u8] = include_bytes!("../../../tests/data/crush/osdmap-24osd.bin");

fn map() -> OsdMap {
    OsdMap::decode(MAP).unwrap()
}

fn pg(seed: u32) -> PgId {
    PgId { pool: 1, seed }
}

/// Rewrite the trailing crc of a full map after editing it.
fn fix_crc(b: &mut [u8]) {
    let n = b.len();
    let crc = ceph_crc32c(0xffff_ffff, &b[..n - 4]);
    b[n - 4..].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn decodes_an_osdmaptool_map() {
    let m = map();
    assert_eq!(m.epoch(), 5);
    assert!(m.fsid().is_nil());
    assert_eq!(m.max_osd(), 24);
    assert!((0..24).all(|o| m.is_up(o) && m.osd_weight(o) == OSD_IN));
    assert!(!m.is_up(24) && !m.exists(-1));
    assert_eq!(m.pool_id("rbd"), Some(1));
    let p = m.pool(1).unwrap();
    assert_eq!(
        (p.pool_type, p.size, p.min_size, p.crush_rule),
        (1, 3, 2, 0)
    );
    assert_eq!((p.pg_num, p.pgp_num, p.object_hash), (192, 96, 2));
    assert!(p.has_flag(POOL_FLAG_HASHPSPOOL));
    assert_eq!(m.pg_upmap_items.len(), 10);
    assert_eq!(m.pg_upmap_items.get(&pg(0x15)), Some(&vec![(11, 23)]));
    assert!(m.pg_temp.is_empty() && m.primary_temp.is_empty());
    assert_eq!(m.crush.max_devices, 24);
}

#[test]
fn stable_mod_and_masks() {
    assert_eq!(pg_mask(192), 255);
    assert_eq!(pg_mask(256), 255);
    assert_eq!(pg_mask(1), 0);
    assert_eq!(pg_mask(0), 0);
    assert_eq!(ceph_stable_mod(200, 192, 255), 200 & 127);
    assert_eq!(ceph_stable_mod(100, 192, 255), 100);
    let m = map();
    assert_eq!(m.raw_pg_to_pg(pg(0xffff_ffc8)).seed, 0xc8 & 0x7f);
}

#[test]
fn upmap_items_apply_and_ignore_out_targets() {
    let mut m = map();
    let ua = m.pg_to_up_acting(pg(0x15));
    assert!(ua.up.contains(&23) && !ua.up.contains(&11));
    // Target out: the item is ignored and CRUSH's choice stands.
    m.set_weight(23, 0);
    let ua = m.pg_to_up_acting(pg(0x15));
    assert!(!ua.up.contains(&23));
}

#[test]
fn down_osds_leave_up_and_temp_overrides_acting() {
    let mut m = map();
    let target = pg(7);
    let before = m.pg_to_up_acting(target);
    assert_eq!(before.up.len(), 3);
    assert_eq!(before.acting, before.up);
    assert_eq!(before.up_primary, before.up[0]);
    let first = before.up[0];
    m.set_state(first, OSD_EXISTS); // down, still in
    let down = m.pg_to_up_acting(target);
    assert_eq!(down.up, before.up[1..].to_vec());
    assert_eq!(down.up_primary, before.up[1]);

    let mut m = map();
    m.pg_temp.insert(target, vec![20, 21, 22]);
    let t = m.pg_to_up_acting(target);
    assert_eq!(t.up, before.up);
    assert_eq!((t.acting, t.acting_primary), (vec![20, 21, 22], 20));
    m.primary_temp.insert(target, 22);
    assert_eq!(m.pg_to_up_acting(target).acting_primary, 22);
    // pg_temp members that are down are dropped (replicated).
    m.set_state(20, OSD_EXISTS);
    assert_eq!(m.pg_to_up_acting(target).acting, vec![21, 22]);
    // A raw seed reaches the same PG's overrides.
    assert_eq!(m.pg_to_up_acting(pg(7 + 256)).acting, vec![21, 22]);
}

#[test]
fn erasure_pools_keep_positions() {
    let mut m = map();
    let mut ec = m.pool(1).unwrap().clone();
    ec.pool_type = POOL_TYPE_ERASURE;
    ec.crush_rule = 1; // the indep rule
    ec.size = 8; // more shards than hosts: holes
    m.crush.rules[1].as_mut().unwrap().rule_type = POOL_TYPE_ERASURE;
    m.pools.insert(2, ec);
    let target = PgId { pool: 2, seed: 3 };
    let ua = m.pg_to_up_acting(target);
    assert_eq!(ua.up.len(), 8);
    assert_eq!(ua.up.iter().filter(|&&o| o == CRUSH_ITEM_NONE).count(), 2);
    let victim = *ua.up.iter().find(|&&o| o != CRUSH_ITEM_NONE).unwrap();
    let pos = ua.up.iter().position(|&o| o == victim).unwrap();
    m.set_state(victim, OSD_EXISTS);
    let ua2 = m.pg_to_up_acting(target);
    assert_eq!(ua2.up[pos], CRUSH_ITEM_NONE);
    assert_eq!(ua2.up.len(), 8);
}

#[test]
fn primary_affinity_zero_moves_the_primary() {
    let mut m = map();
    let target = pg(9);
    let before = m.pg_to_up_acting(target);
    m.set_primary_affinity(before.up[0], 0);
    let after = m.pg_to_up_acting(target);
    assert_ne!(after.up_primary, before.up[0]);
    assert_eq!(after.up[0], after.up_primary);
    let mut sorted = after.up.clone();
    sorted.sort();
    let mut orig = before.up.clone();
    orig.sort();
    assert_eq!(sorted, orig);
}

#[test]
fn objects_hash_into_pool_pgs() {
    let m = map();
    let a = m.object_to_raw_pg(1, "foo", "", "").unwrap();
    assert_eq!(a.seed, crate::rados::crush::hash::str_hash_rjenkins(b"foo"));
    // A locator key replaces the name; a namespace prefixes it with \x1f.
    assert_eq!(m.object_to_raw_pg(1, "bar", "", "foo"), Some(a));
    let ns = m.object_to_raw_pg(1, "foo", "ns", "").unwrap();
    assert_eq!(
        ns.seed,
        crate::rados::crush::hash::str_hash_rjenkins(b"ns\x1ffoo")
    );
    assert_eq!(m.object_to_raw_pg(7, "foo", "", ""), None);
    let none = m.pg_to_up_acting(PgId { pool: 7, seed: 0 });
    assert_eq!((none.up_primary, none.acting_primary), (-1, -1));
}

#[test]
fn bad_crc_and_truncations_are_errors() {
    let mut b = MAP.to_vec();
    b[100] ^= 1;
    assert!(OsdMap::decode(&b).is_err());
    for n in 0..MAP.len() {
        assert!(OsdMap::decode(&MAP[..n]).is_err(), "prefix {n}");
    }
    // Pre-luminous encodings are refused, not misread.
    let mut old = MAP.to_vec();
    old[0] = 6;
    assert!(OsdMap::decode(&old).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Mutations (with the crc fixed up so they reach the decoder) never panic; maps that still decode
    /// place every PG without panicking.
    #[test]
    fn mutated_maps_never_panic(edits in proptest::collection::vec((0usize..4927, any::<u8>()), 1..6)) {
        let mut b = MAP.to_vec();
        for (at, v) in edits {
            b[at] = v;
        }
        fix_crc(&mut b);
        if let Ok(m) = OsdMap::decode(&b) {
            for seed in 0..8 {
                let ua = m.pg_to_up_acting(pg(seed));
                prop_assert!(ua.up.len() <= 256);
            }
        }
    }
}

// ---- incrementals ----

/// A test-side encoder for the client-visible part of `OSDMap::Incremental`.
#[derive(Default)]
struct Inc {
    fsid: [u8; 16],
    epoch: u32,
    new_max_osd: i32,
    /// (id, size, pg_num) of new replicated pools, encoded as pg_pool_t v7.
    new_pools: Vec<(i64, u8, u32)>,
    new_pool_names: Vec<(i64, &'static str)>,
    old_pools: Vec<i64>,
    new_up_client: Vec<(i32, AddrVec)>,
    new_state: Vec<(i32, u32)>,
    new_weight: Vec<(i32, u32)>,
    new_pg_temp: Vec<(PgId, Vec<i32>)>,
    new_primary_temp: Vec<(PgId, i32)>,
    new_primary_affinity: Vec<(i32, u32)>,
    new_pg_upmap_items: Vec<(PgId, Vec<(i32, i32)>)>,
    old_pg_upmap_items: Vec<PgId>,
    crush: Vec<u8>,
}

fn put_pg(b: &mut BytesMut, pg: PgId) {
    b.put_u8(1);
    b.put_u64_le(pg.pool);
    b.put_u32_le(pg.seed);
    b.put_i32_le(-1);
}

/// A replicated, hashpspool `pg_pool_t` in its v7 layout (rule 0, rjenkins).
fn put_pool_v7(b: &mut BytesMut, size: u8, pg_num: u32) {
    b.put_u8(7);
    b.put_u8(5);
    encode_versioned_body(b, |b| {
        b.put_slice(&[POOL_TYPE_REPLICATED, size, 0, 2]);
        b.put_u32_le(pg_num);
        b.put_u32_le(pg_num); // pgp_num
        b.put_u64_le(0); // lpg_num, lpgp_num
        b.put_u32_le(1); // last_change
        b.put_u64_le(0); // snap_seq
        b.put_u32_le(0); // snap_epoch
        b.put_u32_le(0); // snaps
        b.put_u32_le(0); // removed_snaps
        b.put_u64_le(0); // auid
        b.put_u64_le(POOL_FLAG_HASHPSPOOL);
        b.put_u32_le(0); // crash_replay_interval
        b.put_u8(size - 1); // min_size
    });
}

/// A `u32` length and the bytes `body` writes (the tail of a versioned envelope).
fn encode_versioned_body(b: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    let at = b.len();
    b.put_u32_le(0);
    body(b);
    let len = (b.len() - at - 4) as u32;
    b[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

fn put_i32_u32(b: &mut BytesMut, m: &[(i32, u32)]) {
    b.put_u32_le(m.len() as u32);
    for (k, v) in m {
        b.put_i32_le(*k);
        b.put_u32_le(*v);
    }
}

impl Inc {
    fn encode(&self) -> Vec<u8> {
        let mut b = BytesMut::new();
        encode_versioned(&mut b, 8, 7, |b| {
            encode_versioned(b, 8, 1, |b| {
                b.put_slice(&self.fsid);
                b.put_u32_le(self.epoch);
                b.put_u64_le(0); // modified
                b.put_i64_le(-1); // new_pool_max
                b.put_i32_le(-1); // new_flags
                b.put_u32_le(0); // fullmap
                b.put_u32_le(self.crush.len() as u32);
                b.put_slice(&self.crush);
                b.put_i32_le(self.new_max_osd);
                b.put_u32_le(self.new_pools.len() as u32);
                for &(id, size, pg_num) in &self.new_pools {
                    b.put_i64_le(id);
                    put_pool_v7(b, size, pg_num);
                }
                b.put_u32_le(self.new_pool_names.len() as u32);
                for (id, n) in &self.new_pool_names {
                    b.put_i64_le(*id);
                    b.put_u32_le(n.len() as u32);
                    b.put_slice(n.as_bytes());
                }
                b.put_u32_le(self.old_pools.len() as u32);
                for id in &self.old_pools {
                    b.put_i64_le(*id);
                }
                b.put_u32_le(self.new_up_client.len() as u32);
                for (osd, a) in &self.new_up_client {
                    b.put_i32_le(*osd);
                    a.encode(b);
                }
                put_i32_u32(b, &self.new_state);
                put_i32_u32(b, &self.new_weight);
                b.put_u32_le(self.new_pg_temp.len() as u32);
                for (pg, v) in &self.new_pg_temp {
                    put_pg(b, *pg);
                    b.put_u32_le(v.len() as u32);
                    v.iter().for_each(|o| b.put_i32_le(*o));
                }
                b.put_u32_le(self.new_primary_temp.len() as u32);
                for (pg, o) in &self.new_primary_temp {
                    put_pg(b, *pg);
                    b.put_i32_le(*o);
                }
                put_i32_u32(b, &self.new_primary_affinity);
                b.put_u32_le(0); // new_erasure_code_profiles
                b.put_u32_le(0); // old_erasure_code_profiles
                b.put_u32_le(0); // new_pg_upmap
                b.put_u32_le(0); // old_pg_upmap
                b.put_u32_le(self.new_pg_upmap_items.len() as u32);
                for (pg, v) in &self.new_pg_upmap_items {
                    put_pg(b, *pg);
                    b.put_u32_le(v.len() as u32);
                    for (f, t) in v {
                        b.put_i32_le(*f);
                        b.put_i32_le(*t);
                    }
                }
                b.put_u32_le(self.old_pg_upmap_items.len() as u32);
                for pg in &self.old_pg_upmap_items {
                    put_pg(b, *pg);
                }
            });
            encode_versioned(b, 10, 1, |b| b.put_u32_le(0xdead_beef)); // osd-only: skipped
            b.put_u32_le(0); // inc_crc, filled below
            b.put_u32_le(0x1234_5678); // full_crc
        });
        let mut v = b.to_vec();
        let n = v.len();
        let crc = ceph_crc32c(ceph_crc32c(0xffff_ffff, &v[..n - 8]), &v[n - 4..]);
        v[n - 8..n - 4].copy_from_slice(&crc.to_le_bytes());
        v
    }
}

#[test]
fn incrementals_apply_in_order() {
    let mut m = map();
    let addr: AddrVec = EntityAddr::msgr2("127.0.0.1:6800".parse().unwrap(), 7).into();
    let target = pg(7);
    let before = m.pg_to_up_acting(target);
    let inc = Inc {
        epoch: 6,
        new_max_osd: 26,
        new_pools: vec![(5, 2, 12)],
        new_pool_names: vec![(1, "renamed"), (5, "five")],
        new_up_client: vec![(25, addr.clone())],
        new_state: vec![(before.up[0], OSD_UP)], // xor: mark down
        new_weight: vec![(25, OSD_IN)],
        new_pg_temp: vec![(target, vec![1, 2, 3])],
        new_primary_temp: vec![(target, 3)],
        new_primary_affinity: vec![(4, 0x8000)],
        new_pg_upmap_items: vec![(pg(0x20), vec![(1, 2)])],
        old_pg_upmap_items: vec![pg(0x15)],
        ..Inc::default()
    };
    m.apply_incremental(&inc.encode()).unwrap();
    assert_eq!(m.epoch(), 6);
    assert_eq!(m.max_osd(), 26);
    assert!(m.is_up(25) && m.osd_addrs(25) == Some(&addr));
    assert!(!m.exists(24));
    assert!(!m.is_up(before.up[0]) && m.exists(before.up[0]));
    assert_eq!(m.pool_id("renamed"), Some(1));
    let five = m.pool(m.pool_id("five").unwrap()).unwrap();
    assert_eq!(
        (five.size, five.min_size, five.pg_num, five.pgp_num),
        (2, 1, 12, 12)
    );
    assert_eq!((five.last_change, five.object_hash), (6, 2));
    let ua5 = m.pg_to_up_acting(m.object_to_raw_pg(5, "x", "", "").unwrap());
    assert_eq!(ua5.up.len(), 2);
    assert_eq!(m.primary_affinity(4), 0x8000);
    let ua = m.pg_to_up_acting(target);
    assert!(!ua.up.contains(&before.up[0]));
    assert_eq!((ua.acting, ua.acting_primary), (vec![1, 2, 3], 3));
    assert_eq!(m.pg_upmap_items.get(&pg(0x20)), Some(&vec![(1, 2)]));
    assert!(!m.pg_upmap_items.contains_key(&pg(0x15)));

    // Removing overrides and the pool; a new CRUSH map.
    let inc = Inc {
        epoch: 7,
        new_max_osd: -1,
        old_pools: vec![1],
        new_pg_temp: vec![(target, vec![])],
        new_primary_temp: vec![(target, -1)],
        crush: crate::rados::crush::tests_map().to_vec(),
        ..Inc::default()
    };
    m.crush = crate::rados::crush::CrushMap::default();
    m.apply_incremental(&inc.encode()).unwrap();
    assert_eq!(m.crush.rule_id("ec"), Some(1));
    assert_eq!(m.epoch(), 7);
    assert!(m.pool(1).is_none() && m.pool_id("renamed").is_none());
    assert!(m.pg_temp.is_empty() && m.primary_temp.is_empty());
}

#[test]
fn bad_incrementals_leave_the_map_untouched() {
    let m0 = map();
    let ok = Inc {
        epoch: 6,
        new_max_osd: -1,
        ..Inc::default()
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "skipped epoch",
            Inc {
                epoch: 7,
                new_max_osd: -1,
                ..Inc::default()
            }
            .encode(),
        ),
        (
            "old epoch",
            Inc {
                epoch: 5,
                new_max_osd: -1,
                ..Inc::default()
            }
            .encode(),
        ),
        (
            "other cluster",
            Inc {
                epoch: 6,
                fsid: [9; 16],
                new_max_osd: -1,
                ..Inc::default()
            }
            .encode(),
        ),
        (
            "osd beyond max_osd",
            Inc {
                epoch: 6,
                new_max_osd: -1,
                new_weight: vec![(24, 0)],
                ..Inc::default()
            }
            .encode(),
        ),
        (
            "huge max_osd",
            Inc {
                epoch: 6,
                new_max_osd: i32::MAX,
                ..Inc::default()
            }
            .encode(),
        ),
        (
            "bad crush",
            Inc {
                epoch: 6,
                new_max_osd: -1,
                crush: vec![1, 2, 3],
                ..Inc::default()
            }
            .encode(),
        ),
        ("bad crc", {
            let mut b = ok.encode();
            b[12] ^= 0x40;
            b
        }),
    ];
    for (what, bytes) in cases {
        let mut m = map();
        assert!(m.apply_incremental(&bytes).is_err(), "{what}");
        assert_eq!(m.epoch(), m0.epoch(), "{what}");
        assert_eq!(m.max_osd(), m0.max_osd(), "{what}");
    }
    let bytes = ok.encode();
    for n in 0..bytes.len() {
        assert!(
            OsdMapIncremental::decode(&bytes[..n]).is_err(),
            "prefix {n}"
        );
    }
    let mut m = map();
    m.apply_incremental(&bytes).unwrap();
    assert_eq!(m.epoch(), 6);
}
