use proptest::prelude::*;

use super::*;

/// 24 devices, 6 straw2 hosts in 3 straw racks, rules `replicated_rule` and `ec` (see tests/data/README.md).
pub(super) const MAP: &[u8] = include_bytes!("../../../tests/data/crush/crushmap-24osd.bin");

fn all_in(n: usize) -> Vec<u32> {
    vec![0x10000; n]
}

#[test]
fn decodes_a_crushtool_map() {
    let m = CrushMap::decode(MAP).unwrap();
    assert_eq!(m.max_devices, 24);
    assert_eq!(m.buckets.iter().flatten().count(), 10);
    assert_eq!(m.tunables, Tunables::default());
    let host0 = m.bucket(m.item_id("host0").unwrap()).unwrap();
    assert_eq!(host0.alg, BUCKET_STRAW2);
    assert_eq!(host0.items, vec![0, 1, 2, 3]);
    assert_eq!(host0.item_weight(2), Some(0x10000));
    assert_eq!(host0.weight, 4 * 0x10000);
    let rack0 = m.bucket(m.item_id("rack0").unwrap()).unwrap();
    assert!(matches!(rack0.kind, BucketKind::Straw { .. }));
    assert_eq!(m.type_names.get(&1).map(String::as_str), Some("host"));
    let ec = m.rule_id("ec").unwrap();
    assert_eq!(ec, 1);
    let steps: Vec<u32> = m.rules[ec]
        .as_ref()
        .unwrap()
        .steps
        .iter()
        .map(|s| s.op)
        .collect();
    assert_eq!(
        steps,
        [
            op::SET_CHOOSELEAF_TRIES,
            op::SET_CHOOSE_TRIES,
            op::TAKE,
            op::CHOOSELEAF_INDEP,
            op::EMIT
        ]
    );
    assert_eq!(m.find_rule(0, 1, 3), Some(0));
    assert_eq!(m.find_rule(0, 3, 3), None);
}

#[test]
fn replicated_rule_picks_distinct_hosts_and_respects_out_devices() {
    let m = CrushMap::decode(MAP).unwrap();
    let mut w = all_in(24);
    for x in 0..500 {
        let r = m.do_rule(0, x, 3, &w, None);
        assert_eq!(r.len(), 3);
        let hosts: std::collections::BTreeSet<i32> = r.iter().map(|o| o / 4).collect();
        assert_eq!(hosts.len(), 3, "x={x} {r:?}");
    }
    // Take out all of host0: nothing maps there any more.
    w[..4].fill(0);
    for x in 0..500 {
        assert!(m.do_rule(0, x, 3, &w, None).iter().all(|&o| o >= 4));
    }
}

#[test]
fn indep_leaves_holes_where_nothing_fits() {
    let m = CrushMap::decode(MAP).unwrap();
    // Only 6 hosts: an 8-wide indep mapping has exactly 2 NONE holes, in place.
    let r = m.do_rule(1, 7, 8, &all_in(24), None);
    assert_eq!(r.len(), 8);
    assert_eq!(r.iter().filter(|&&o| o == CRUSH_ITEM_NONE).count(), 2);
}

#[test]
fn missing_rule_or_weights_map_to_nothing() {
    let m = CrushMap::decode(MAP).unwrap();
    assert!(m.do_rule(9, 1, 3, &all_in(24), None).is_empty());
    // No weights at all: every device is out.
    assert!(m.do_rule(0, 1, 3, &[], None).is_empty());
}

#[test]
fn cycles_and_dangling_items_terminate() {
    let mut m = CrushMap::decode(MAP).unwrap();
    // host0 contains itself and a bucket that does not exist.
    let host0 = m.item_id("host0").unwrap();
    let slot = (-1 - host0) as usize;
    if let Some(b) = m.buckets[slot].as_mut() {
        b.items[0] = host0;
        b.items[1] = -1000;
    }
    for rule in 0..2 {
        for x in 0..300 {
            let r = m.do_rule(rule, x, 4, &all_in(24), None);
            assert!(r.len() <= 4);
        }
    }
}

#[test]
fn hostile_rule_parameters_stop_at_the_draw_budget() {
    let mut m = CrushMap::decode(MAP).unwrap();
    let rule = m.rules[0].as_mut().unwrap();
    // A huge replica count and try count over devices that are all out: every draw fails.
    rule.steps.insert(
        0,
        RuleStep {
            op: op::SET_CHOOSE_TRIES,
            arg1: i32::MAX,
            arg2: 0,
        },
    );
    for s in rule
        .steps
        .iter_mut()
        .filter(|s| s.op == op::CHOOSELEAF_FIRSTN)
    {
        s.arg1 = i32::MAX;
    }
    assert!(m.do_rule(0, 1, 3, &[0; 24], None).is_empty());
    let ec = m.rules[1].as_mut().unwrap();
    for s in ec.steps.iter_mut() {
        if s.op == op::SET_CHOOSE_TRIES || s.op == op::SET_CHOOSELEAF_TRIES {
            s.arg1 = i32::MAX;
        }
    }
    let r = m.do_rule(1, 1, 4, &[0; 24], None);
    assert_eq!(r, vec![CRUSH_ITEM_NONE; 4]);
}

#[test]
fn choose_args_weights_steer_straw2() {
    let m = CrushMap::decode(MAP).unwrap();
    let host0 = m.item_id("host0").unwrap();
    let slot = (-1 - host0) as u32;
    // A weight set that gives all of host0's weight to osd.2.
    let mut args = ChooseArgMap::new();
    args.insert(
        slot,
        ChooseArg {
            weight_set: vec![vec![0, 0, 0x10000, 0]],
            ids: vec![],
        },
    );
    for x in 0..300 {
        let r = m.do_rule(0, x, 3, &all_in(24), Some(&args));
        assert!(
            !r.iter().any(|&o| o == 0 || o == 1 || o == 3),
            "x={x} {r:?}"
        );
    }
}

#[test]
fn hostile_counts_fail_before_allocating() {
    // magic, max_buckets = i32::MAX, max_rules, max_devices: refused by the byte count, not by OOM.
    let mut b = CRUSH_MAGIC.to_le_bytes().to_vec();
    b.extend(i32::MAX.to_le_bytes());
    b.extend(0u32.to_le_bytes());
    b.extend(1i32.to_le_bytes());
    assert!(matches!(
        CrushMap::decode(&b),
        Err(DecodeError::Short { .. })
    ));
    let mut neg = CRUSH_MAGIC.to_le_bytes().to_vec();
    neg.extend((-1i32).to_le_bytes());
    neg.extend([0; 8]);
    assert!(CrushMap::decode(&neg).is_err());
    assert!(CrushMap::decode(&[0, 0, 1, 0]).is_err());
    // A bucket whose id does not match its slot.
    let mut m = MAP.to_vec();
    // First bucket: alg u32 at 16, then its id.
    m[20..24].copy_from_slice(&(-5i32).to_le_bytes());
    assert!(CrushMap::decode(&m).is_err());
}

#[test]
fn every_truncation_is_an_error_or_a_shorter_valid_map() {
    for n in 0..MAP.len() {
        if let Ok(m) = CrushMap::decode(&MAP[..n]) {
            // Only the optional trailing groups can be missing.
            assert_eq!(m.buckets.iter().flatten().count(), 10, "prefix {n}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Mutated maps decode or fail cleanly; whatever decodes maps without panicking or hanging.
    #[test]
    fn mutated_maps_never_panic(
        edits in proptest::collection::vec((0usize..1234, any::<u8>()), 1..8),
        cut in 0usize..1300,
    ) {
        let mut b = MAP.to_vec();
        for (at, v) in edits {
            if let Some(x) = b.get_mut(at) {
                *x = v;
            }
        }
        b.truncate(cut.max(16));
        if let Ok(m) = CrushMap::decode(&b) {
            let w = all_in(m.max_devices.clamp(0, 64) as usize);
            for rule in 0..m.rules.len().min(4) {
                for x in 0..20 {
                    let r = m.do_rule(rule, x, 5, &w, None);
                    prop_assert!(r.len() <= 5);
                }
            }
        }
    }
}
