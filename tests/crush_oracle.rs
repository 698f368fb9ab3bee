//! CRUSH and OSDMap placement checked against Ceph's own tools, whole mappings at a time.
//!
//! The tests build their maps with `crushtool --build` (hierarchies of hosts, racks and rows, 16 to 256
//! OSDs, every bucket algorithm) and `osdmaptool` (the same CRUSH maps imported into OSD maps with
//! non-power-of-two `pg_num`, balancer upmaps, OSDs marked out), then compare, one tool call per
//! mapping:
//! - `crushtool --test --show-mappings` for replicated (firstn) and indep rules, with reweights, for
//!   x in 0..10000, NONE holes included;
//! - `osdmaptool --test-map-pgs-dump-all` (raw, up and acting sets with primaries) for every PG,
//!   also of an erasure pool (in a map a real `ceph-mon` wrote, tests/data/crush/osdmap-mon-ec.bin)
//!   with whole hosts weighted out so that shards have no place (NONE holes);
//! - multi-step rules (`choose firstn` then `chooseleaf`, `choose indep` down to devices), rules with
//!   `set_*` steps (local retries, the exhaustive fallback, vary_r and stable off), and the legacy
//!   (argonaut) tunables set with `crushtool --set-*`;
//! - device classes (shadow trees) and `choose_args` weight sets, from a map compiled with
//!   `crushtool -c`, in `crushtool --test` and in an OSD map whose pool uses the weight set;
//! - primary affinity (fractional and zero) in a monitor-written map, replicated and erasure pools;
//! - `osdmaptool --test-map-object` for object names;
//! - a real monitor's incrementals (tests/data/crush/mon-incrementals) applied in order rebuild the
//!   monitor's own full map;
//! - `osdmaptool --dump json` for the decoded fields.
//!
//! The tools come with Debian's `ceph-base` (ci/test.sh installs it); without them the tests fail.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use msgr::rados::crush::{BucketKind, CrushMap, CRUSH_ITEM_NONE};
use msgr::rados::osdmap::OsdMapIncremental;
use msgr::rados::{OsdMap, PgId};

const MAX_X: i32 = 9999;

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("msgr-crush-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run a Ceph tool; a missing tool fails the test with what to install.
fn tool(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run `{cmd}` ({e}): install Debian's ceph-base (crushtool, osdmaptool)")
    });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Parse "[1,2,3]" (NONE is printed as 2147483647).
fn parse_list(s: &str) -> Vec<i32> {
    let inner = s.trim().trim_start_matches('[').trim_end_matches(']');
    if inner.is_empty() {
        return Vec::new();
    }
    inner
        .split(',')
        .map(|v| v.trim().parse().unwrap())
        .collect()
}

/// `crushtool --build` layers: (name, alg, size).
fn build_crush(dir: &TempDir, name: &str, osds: u32, layers: &[(&str, &str, u32)]) -> PathBuf {
    let out = dir.path(name);
    let n = osds.to_string();
    let mut args = vec!["--build", "--num_osds", &n, "-o", p(&out)];
    let sizes: Vec<String> = layers.iter().map(|l| l.2.to_string()).collect();
    for (l, s) in layers.iter().zip(&sizes) {
        args.extend([l.0, l.1, s.as_str()]);
    }
    tool("crushtool", &args);
    out
}

fn add_rule(map: &Path, name: &str, root: &str, ty: &str, mode: &str) {
    let tmp = map.with_extension("tmp");
    tool(
        "crushtool",
        &[
            "-i",
            p(map),
            "--create-simple-rule",
            name,
            root,
            ty,
            mode,
            "-o",
            p(&tmp),
        ],
    );
    std::fs::rename(&tmp, map).unwrap();
}

/// Compare one whole `crushtool --test` mapping; returns the number of inputs compared.
fn compare_crush(
    map_path: &Path,
    map: &CrushMap,
    rule: usize,
    num_rep: usize,
    reweights: &[(i32, &str)],
) -> usize {
    let (r, n, mx) = (rule.to_string(), num_rep.to_string(), MAX_X.to_string());
    let mut args = vec![
        "-i",
        p(map_path),
        "--test",
        "--show-mappings",
        "--rule",
        &r,
        "--num-rep",
        &n,
        "--min-x",
        "0",
        "--max-x",
        &mx,
    ];
    let devs: Vec<String> = reweights.iter().map(|(d, _)| d.to_string()).collect();
    for ((_, w), d) in reweights.iter().zip(&devs) {
        args.extend(["--weight", d.as_str(), w]);
    }
    let out = tool("crushtool", &args);
    // crushtool's weights: 1.0 for every device present, then the overrides (exact binary fractions).
    let mut weights = vec![0x10000u32; map.max_devices as usize];
    for (d, w) in reweights {
        weights[*d as usize] = (w.parse::<f64>().unwrap() * 65536.0) as u32;
    }
    let mut seen = 0;
    let mut holes = 0;
    for line in out.lines().filter(|l| l.starts_with("CRUSH rule")) {
        // "CRUSH rule R x X [a,b,c]"
        let mut it = line.splitn(6, ' ');
        let x: i32 = it.nth(4).unwrap().parse().unwrap();
        let want = parse_list(it.next().unwrap());
        let got = map.do_rule(rule, x, num_rep, &weights, None);
        assert_eq!(
            got, want,
            "rule {rule} x {x} num_rep {num_rep} reweights {reweights:?}"
        );
        holes += want.iter().filter(|&&o| o == CRUSH_ITEM_NONE).count();
        seen += 1;
    }
    assert_eq!(
        seen,
        MAX_X as usize + 1,
        "crushtool printed {seen} mappings"
    );
    eprintln!("  rule {rule} num_rep {num_rep} reweights {reweights:?}: {seen} x equal ({holes} NONE holes)");
    seen
}

struct Shape {
    name: &'static str,
    osds: u32,
    layers: &'static [(&'static str, &'static str, u32)],
    /// The failure domain for the extra rules.
    domain: &'static str,
}

const SHAPES: &[Shape] = &[
    Shape {
        name: "hosts16",
        osds: 16,
        layers: &[("host", "straw2", 4), ("root", "straw2", 0)],
        domain: "host",
    },
    Shape {
        name: "racks64",
        osds: 64,
        layers: &[
            ("host", "straw2", 4),
            ("rack", "straw2", 4),
            ("root", "straw2", 0),
        ],
        domain: "rack",
    },
    Shape {
        name: "rows256",
        osds: 256,
        layers: &[
            ("host", "straw2", 8),
            ("rack", "straw2", 4),
            ("row", "straw2", 2),
            ("root", "straw2", 0),
        ],
        domain: "row",
    },
    Shape {
        name: "legacy48",
        osds: 48,
        layers: &[
            ("host", "uniform", 4),
            ("rack", "list", 3),
            ("root", "straw", 0),
        ],
        domain: "rack",
    },
    Shape {
        name: "tree40",
        osds: 40,
        layers: &[("host", "tree", 5), ("root", "straw2", 0)],
        domain: "host",
    },
];

#[test]
fn crushtool_mappings_equal_ours() {
    let dir = TempDir::new("crushtool");
    let mut total = 0;
    for shape in SHAPES {
        let path = build_crush(&dir, shape.name, shape.osds, shape.layers);
        add_rule(&path, "indep_host", "root", "host", "indep");
        add_rule(&path, "domain_firstn", "root", shape.domain, "firstn");
        add_rule(&path, "domain_indep", "root", shape.domain, "indep");
        let map = CrushMap::decode(&std::fs::read(&path).unwrap()).unwrap();
        eprintln!("{} ({} OSDs):", shape.name, shape.osds);
        let rules = [
            "replicated_rule",
            "indep_host",
            "domain_firstn",
            "domain_indep",
        ];
        let ids: Vec<usize> = rules.iter().map(|r| map.rule_id(r).unwrap()).collect();
        // Replicated and indep rules at the usual sizes, and more replicas than failure domains
        // (indep leaves NONE holes there, firstn returns short).
        total += compare_crush(&path, &map, ids[0], 3, &[]);
        total += compare_crush(&path, &map, ids[1], 6, &[]);
        total += compare_crush(&path, &map, ids[2], 3, &[]);
        total += compare_crush(&path, &map, ids[3], 5, &[]);
        // Reweights: one device out, others partly in.
        let rw: &[(i32, &str)] = &[
            (1, "0"),
            (2, "0.5"),
            (5, "0.25"),
            (9, "0.75"),
            (12, "0.125"),
        ];
        total += compare_crush(&path, &map, ids[0], 3, rw);
        total += compare_crush(&path, &map, ids[1], 4, rw);
    }
    eprintln!("{total} CRUSH mappings equal crushtool's");
}

// ---- osdmaptool ----

/// An OSD map from `osdmaptool --createsimple` with `crush` imported, OSDs marked up and in and the
/// balancer's upmaps saved.
fn build_osdmap(
    dir: &TempDir,
    name: &str,
    crush: &Path,
    osds: u32,
    pg_bits: u32,
    pgp_bits: u32,
) -> PathBuf {
    let path = dir.path(name);
    let (n, pb, ppb) = (osds.to_string(), pg_bits.to_string(), pgp_bits.to_string());
    tool(
        "osdmaptool",
        &[
            "--createsimple",
            &n,
            "--with-default-pool",
            "--clobber",
            "--pg-bits",
            &pb,
            "--pgp-bits",
            &ppb,
            p(&path),
        ],
    );
    tool("osdmaptool", &[p(&path), "--import-crush", p(crush)]);
    let upmaps = dir.path(&format!("{name}.upmap"));
    tool(
        "osdmaptool",
        &[
            p(&path),
            "--mark-up-in",
            "--upmap",
            p(&upmaps),
            "--upmap-max",
            "40",
            "--upmap-deviation",
            "1",
            "--save",
        ],
    );
    path
}

/// One `--test-map-pgs-dump-all` line: "1.a raw ([..], pN) up ([..], pN) acting ([..], pN)".
fn parse_dump_all(line: &str) -> (String, [(Vec<i32>, i32); 3]) {
    let (pg, rest) = line.split_once(' ').unwrap();
    let mut sets = Vec::new();
    for part in rest.split(") ").map(|s| s.trim_end_matches(')')) {
        let (_, body) = part.split_once('(').unwrap();
        let (list, prim) = body.rsplit_once(", p").unwrap();
        sets.push((parse_list(list), prim.parse().unwrap()));
    }
    (pg.to_string(), sets.try_into().unwrap())
}

fn compare_pgs(path: &Path, map: &OsdMap, pool: u64, extra: &[&str]) -> (usize, usize) {
    let pool_s = pool.to_string();
    let mut args = vec![p(path)];
    args.extend_from_slice(extra);
    args.extend(["--test-map-pgs-dump-all", "--pool", &pool_s]);
    let out = tool("osdmaptool", &args);
    let pg_num = map.pool(pool).unwrap().pg_num;
    let (mut n, mut upmapped) = (0, 0);
    for line in out.lines().filter(|l| l.starts_with(&format!("{pool}."))) {
        let (pg, [raw, up, acting]) = parse_dump_all(line);
        let seed = u32::from_str_radix(pg.split_once('.').unwrap().1, 16).unwrap();
        let id = PgId { pool, seed };
        let pool_ref = map.pool(pool).unwrap();
        let (our_raw, _) = map.pg_to_raw_osds(pool_ref, id);
        let raw_primary = our_raw
            .iter()
            .copied()
            .find(|&o| o != CRUSH_ITEM_NONE)
            .unwrap_or(-1);
        assert_eq!((our_raw, raw_primary), raw, "raw of {pg} {extra:?}");
        let ua = map.pg_to_up_acting(id);
        assert_eq!((ua.up.clone(), ua.up_primary), up, "up of {pg} {extra:?}");
        assert_eq!(
            (ua.acting, ua.acting_primary),
            acting,
            "acting of {pg} {extra:?}"
        );
        if ua.up != raw.0 {
            upmapped += 1;
        }
        n += 1;
    }
    assert_eq!(n, pg_num as usize, "osdmaptool printed {n} PGs");
    (n, upmapped)
}

/// The fields of `osdmaptool --dump json` we decode.
fn compare_dump(path: &Path, map: &OsdMap) {
    let v: serde_json::Value =
        serde_json::from_str(&tool("osdmaptool", &[p(path), "--dump", "json"])).unwrap();
    assert_eq!(v["epoch"].as_u64().unwrap(), u64::from(map.epoch()));
    assert_eq!(v["fsid"].as_str().unwrap(), map.fsid().to_string());
    assert_eq!(v["max_osd"].as_u64().unwrap(), map.max_osd() as u64);
    for pool in v["pools"].as_array().unwrap() {
        let id = pool["pool"].as_u64().unwrap();
        let ours = map.pool(id).unwrap();
        assert_eq!(map.pool_id(pool["pool_name"].as_str().unwrap()), Some(id));
        assert_eq!(pool["size"].as_u64().unwrap(), u64::from(ours.size));
        assert_eq!(pool["min_size"].as_u64().unwrap(), u64::from(ours.min_size));
        assert_eq!(
            pool["crush_rule"].as_u64().unwrap(),
            u64::from(ours.crush_rule)
        );
        assert_eq!(
            pool["object_hash"].as_u64().unwrap(),
            u64::from(ours.object_hash)
        );
        assert_eq!(pool["pg_num"].as_u64().unwrap(), u64::from(ours.pg_num));
        assert_eq!(
            pool["pg_placement_num"].as_u64().unwrap(),
            u64::from(ours.pgp_num)
        );
        assert_eq!(pool["flags"].as_u64().unwrap(), ours.flags);
        assert_eq!(pool["type"].as_u64().unwrap(), u64::from(ours.pool_type));
    }
    for osd in v["osds"].as_array().unwrap() {
        let id = osd["osd"].as_i64().unwrap() as i32;
        assert_eq!(
            osd["up"].as_i64().unwrap() == 1,
            map.is_up(id),
            "osd.{id} up"
        );
        let w = osd["weight"].as_f64().unwrap();
        assert_eq!(
            (w * 65536.0).round() as u32,
            map.osd_weight(id),
            "osd.{id} weight"
        );
    }
    let mut items: BTreeMap<String, Vec<(i32, i32)>> = BTreeMap::new();
    for m in v["pg_upmap_items"].as_array().unwrap() {
        let pairs = m["mappings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["from"].as_i64().unwrap() as i32,
                    p["to"].as_i64().unwrap() as i32,
                )
            })
            .collect();
        items.insert(m["pgid"].as_str().unwrap().to_string(), pairs);
    }
    let ours: BTreeMap<String, Vec<(i32, i32)>> = map
        .pg_upmap_items
        .iter()
        .map(|(pg, v)| (pg.to_string(), v.clone()))
        .collect();
    assert_eq!(ours, items);
    assert!(!items.is_empty(), "the balancer made no upmaps");
}

struct MapShape {
    name: &'static str,
    osds: u32,
    layers: &'static [(&'static str, &'static str, u32)],
    pg_bits: u32,
    pgp_bits: u32,
}

const MAP_SHAPES: &[MapShape] = &[
    // pg_num 24 << 4 = 384, pgp_num 24 << 3 = 192: neither a power of two.
    MapShape {
        name: "hosts24",
        osds: 24,
        layers: &[("host", "straw2", 4), ("root", "straw2", 0)],
        pg_bits: 4,
        pgp_bits: 3,
    },
    // 40 OSDs, 5 per host, 2 hosts per rack: pg_num 320.
    MapShape {
        name: "racks40",
        osds: 40,
        layers: &[
            ("host", "straw2", 5),
            ("rack", "straw2", 2),
            ("root", "straw2", 0),
        ],
        pg_bits: 3,
        pgp_bits: 3,
    },
    // 96 OSDs over rows: pg_num 96 << 2 = 384.
    MapShape {
        name: "rows96",
        osds: 96,
        layers: &[
            ("host", "straw2", 6),
            ("rack", "straw2", 4),
            ("row", "straw2", 2),
            ("root", "straw2", 0),
        ],
        pg_bits: 2,
        pgp_bits: 2,
    },
];

#[test]
fn osdmaptool_pg_mappings_equal_ours() {
    let dir = TempDir::new("osdmaptool");
    let mut total = 0;
    for shape in MAP_SHAPES {
        let crush = build_crush(
            &dir,
            &format!("{}.crush", shape.name),
            shape.osds,
            shape.layers,
        );
        let path = build_osdmap(
            &dir,
            shape.name,
            &crush,
            shape.osds,
            shape.pg_bits,
            shape.pgp_bits,
        );
        let mut map = OsdMap::decode(&std::fs::read(&path).unwrap()).unwrap();
        compare_dump(&path, &map);
        let (n, upmapped) = compare_pgs(&path, &map, 1, &[]);
        eprintln!(
            "{}: {n} PGs equal ({upmapped} changed by upmaps)",
            shape.name
        );
        total += n;
        // An OSD marked out (in memory, on both sides; osdmaptool takes one --mark-out).
        map.set_weight(17, 0);
        let (n, _) = compare_pgs(&path, &map, 1, &["--mark-out", "17"]);
        eprintln!("{}: {n} PGs equal with osd.17 out", shape.name);
        total += n;
    }
    eprintln!("{total} PG mappings equal osdmaptool's");
}

#[test]
fn object_names_map_to_the_pgs_osdmaptool_gives() {
    let dir = TempDir::new("objects");
    let shape = &MAP_SHAPES[0];
    let crush = build_crush(&dir, "objects.crush", shape.osds, shape.layers);
    let path = build_osdmap(
        &dir,
        "objects",
        &crush,
        shape.osds,
        shape.pg_bits,
        shape.pgp_bits,
    );
    let map = OsdMap::decode(&std::fs::read(&path).unwrap()).unwrap();
    let names: Vec<String> = (0..100)
        .map(|i| match i % 4 {
            0 => format!("obj{i}"),
            1 => format!("rbd_data.{i:012x}.{:016x}", i * 7919),
            2 => format!("benchmark_data_host_{i}_object{}", i * 31),
            _ => "x".repeat(i % 29 + 1),
        })
        .collect();
    for name in &names {
        // " object 'NAME' -> 1.6 -> [a,b,c]"
        let out = tool(
            "osdmaptool",
            &[p(&path), "--test-map-object", name, "--pool", "1"],
        );
        let line = out.lines().find(|l| l.contains(" -> ")).unwrap();
        let mut parts = line.split(" -> ");
        parts.next();
        let pg = parts.next().unwrap().trim();
        let acting = parse_list(parts.next().unwrap());
        let raw = map.object_to_raw_pg(1, name, "", "").unwrap();
        let folded = map.raw_pg_to_pg(raw);
        assert_eq!(folded.to_string(), pg, "pg of {name:?}");
        assert_eq!(
            map.pg_to_up_acting(raw).acting,
            acting,
            "acting of {name:?}"
        );
    }
    eprintln!("{} object names map as osdmaptool maps them", names.len());
}

/// `osdmaptool --adjust-crush-weight OSD:0,…` in memory: the devices weigh 0 in their (straw2)
/// buckets and every ancestor's item weight is the sum below it again.
fn zero_crush_weights(map: &mut CrushMap, osds: &[i32]) {
    for b in map.buckets.iter_mut().flatten() {
        if let BucketKind::Straw2 { item_weights } = &mut b.kind {
            for (i, item) in b.items.iter().enumerate() {
                if osds.contains(item) {
                    item_weights[i] = 0;
                }
            }
        }
    }
    for _ in 0..map.buckets.len() {
        let weights: Vec<Option<u32>> = map
            .buckets
            .iter()
            .map(|b| {
                b.as_ref().map(|b| match &b.kind {
                    BucketKind::Straw2 { item_weights } => item_weights.iter().sum(),
                    _ => b.weight,
                })
            })
            .collect();
        for b in map.buckets.iter_mut().flatten() {
            if let BucketKind::Straw2 { item_weights } = &mut b.kind {
                for (i, &item) in b.items.iter().enumerate() {
                    if item < 0 {
                        if let Some(Some(w)) = weights.get((-1 - item) as usize) {
                            item_weights[i] = *w;
                        }
                    }
                }
                b.weight = item_weights.iter().sum();
            }
        }
    }
}

#[test]
fn erasure_pool_of_a_monitor_written_map() {
    let dir = TempDir::new("mon-ec");
    let path = dir.path("osdmap");
    std::fs::write(&path, include_bytes!("data/crush/osdmap-mon-ec.bin")).unwrap();
    let mut map = OsdMap::decode(&std::fs::read(&path).unwrap()).unwrap();
    compare_dump(&path, &map);
    let ec = map.pool_id("ecpool").unwrap();
    assert!(map.pool(ec).unwrap().is_erasure());
    let mut total = 0;
    for pool in [map.pool_id("rep").unwrap(), ec] {
        total += compare_pgs(&path, &map, pool, &[]).0;
    }
    // Hosts 0-2 (osd.0-11) weighted out of CRUSH: 5 hosts left for 6 shards.
    let out: Vec<i32> = (0..12).collect();
    let arg = out
        .iter()
        .map(|o| format!("{o}:0"))
        .collect::<Vec<_>>()
        .join(",");
    zero_crush_weights(&mut map.crush, &out);
    for pool in [map.pool_id("rep").unwrap(), ec] {
        total += compare_pgs(&path, &map, pool, &["--adjust-crush-weight", &arg]).0;
    }
    let holes: usize = (0..map.pool(ec).unwrap().pg_num)
        .map(|seed| {
            let ua = map.pg_to_up_acting(PgId { pool: ec, seed });
            ua.up.iter().filter(|&&o| o == CRUSH_ITEM_NONE).count()
        })
        .sum();
    assert!(holes > 0, "no NONE holes to compare");
    eprintln!("{total} PG mappings of a monitor's map equal osdmaptool's ({holes} erasure holes)");
}

/// The 32-OSD rack map with device classes (every third OSD `ssd`, the rest `hdd`), a firstn rule
/// over the ssd shadow tree, an indep rule over the hdd one, and a two-position weight set for
/// host0 under choose_args key 1 (pool 1): compiled by `crushtool -c` from the decompiled text.
fn classes_and_choose_args_map(dir: &TempDir) -> PathBuf {
    let built = build_crush(
        dir,
        "classes.base",
        32,
        &[
            ("host", "straw2", 4),
            ("rack", "straw2", 2),
            ("root", "straw2", 0),
        ],
    );
    let text = tool("crushtool", &["-d", p(&built)]);
    let mut out = String::new();
    for line in text.lines() {
        out.push_str(line);
        if let Some(rest) = line.strip_prefix("device ") {
            let id: u32 = rest.split(' ').next().unwrap().parse().unwrap();
            out.push_str(if id % 3 == 0 {
                " class ssd"
            } else {
                " class hdd"
            });
        }
        out.push('\n');
    }
    let extra = "rule ssd_rule {\n id 1\n type replicated\n min_size 1\n max_size 10\n \
                 step take root class ssd\n step chooseleaf firstn 0 type host\n step emit\n}\n\
                 rule hdd_indep {\n id 2\n type erasure\n min_size 1\n max_size 10\n \
                 step take root class hdd\n step chooseleaf indep 0 type rack\n step emit\n}\n\
                 choose_args 1 {\n {\n bucket_id -1\n weight_set [\n \
                 [ 3.000 1.000 0.500 0.000 ]\n [ 1.000 1.000 2.000 1.000 ]\n ]\n }\n}\n";
    let out = out.replace("# end crush map", &format!("{extra}# end crush map"));
    let src = dir.path("classes.txt");
    std::fs::write(&src, out).unwrap();
    let compiled = dir.path("classes.crush");
    tool("crushtool", &["-c", p(&src), "-o", p(&compiled)]);
    compiled
}

#[test]
fn device_classes_and_choose_args_map_as_ceph_maps_them() {
    let dir = TempDir::new("classes");
    let path = classes_and_choose_args_map(&dir);
    let crush = CrushMap::decode(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(crush.class_map.iter().filter(|(&d, _)| d >= 0).count(), 32);
    assert_eq!(crush.class_names.len(), 2);
    assert_eq!(
        crush.class_buckets.len(),
        13,
        "a shadow bucket per class for every bucket"
    );
    assert_eq!(crush.choose_args.get(&1).map(|a| a.len()), Some(1));
    let mut total = 0;
    for (rule, reps) in [("ssd_rule", 3), ("hdd_indep", 4)] {
        let id = crush.rule_id(rule).unwrap();
        total += compare_crush(&path, &crush, id, reps, &[]);
        total += compare_crush(&path, &crush, id, reps, &[(3, "0"), (4, "0.5")]);
    }
    // Pool 1 maps with choose_args 1 (its own weight set).
    let map_path = build_osdmap(&dir, "classes.osdmap", &path, 32, 3, 3);
    let map = OsdMap::decode(&std::fs::read(&map_path).unwrap()).unwrap();
    assert!(map.crush.choose_args_for(1).is_some());
    let (n, _) = compare_pgs(&map_path, &map, 1, &[]);
    // The weight set matters: without it some PGs map elsewhere.
    let mut plain = map.clone();
    plain.crush.choose_args.clear();
    let moved = (0..n as u32)
        .filter(|&seed| {
            let pg = PgId { pool: 1, seed };
            plain.pg_to_up_acting(pg).up != map.pg_to_up_acting(pg).up
        })
        .count();
    assert!(moved > 0, "the weight set changed no placement");
    eprintln!("{total} class-rule CRUSH mappings and {n} PGs with a weight set equal Ceph's");
}

/// Epochs 1..=18 of a real `ceph-mon` (16.2.15): its incrementals and full maps 1 and 18, read from its
/// store with `ceph-kvstore-tool` (see tests/data/README.md).
fn mon_file(name: &str) -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/crush/mon-incrementals");
    std::fs::read(dir.join(name)).unwrap()
}

#[test]
fn monitor_incrementals_rebuild_the_monitors_full_map() {
    let want = OsdMap::decode(&mon_file("full_18")).unwrap();
    assert_eq!(want.epoch(), 18);
    // From nothing (epoch 1 sets the fsid), and from the monitor's first full map.
    let mut from_empty = OsdMap::default();
    let mut from_full = OsdMap::decode(&mon_file("full_1")).unwrap();
    for e in 1..=18 {
        let inc = mon_file(&format!("inc_{e}"));
        from_empty
            .apply_incremental(&inc)
            .unwrap_or_else(|err| panic!("inc {e}: {err}"));
        if e > 1 {
            from_full
                .apply_incremental(&inc)
                .unwrap_or_else(|err| panic!("inc {e}: {err}"));
        }
    }
    for (how, got) in [
        ("from epoch 0", &from_empty),
        ("from full map 1", &from_full),
    ] {
        assert_eq!(got.epoch(), 18, "{how}");
        assert_eq!(got.fsid(), want.fsid(), "{how}");
        assert_eq!(got.pools, want.pools, "{how}");
        assert_eq!(got.pool_names, want.pool_names, "{how}");
        assert_eq!(got.max_osd(), want.max_osd(), "{how}");
        for osd in 0..want.max_osd() as i32 + 1 {
            assert_eq!(
                got.osd_state(osd),
                want.osd_state(osd),
                "{how}: state of osd.{osd}"
            );
            assert_eq!(
                got.osd_weight(osd),
                want.osd_weight(osd),
                "{how}: weight of osd.{osd}"
            );
            assert_eq!(
                got.osd_addrs(osd),
                want.osd_addrs(osd),
                "{how}: addrs of osd.{osd}"
            );
        }
        assert_eq!(got.pg_temp, want.pg_temp, "{how}");
        assert_eq!(got.primary_temp, want.primary_temp, "{how}");
        assert_eq!(got.pg_upmap, want.pg_upmap, "{how}");
        assert_eq!(got.pg_upmap_items, want.pg_upmap_items, "{how}");
        assert_eq!(got.crush, want.crush, "{how}");
        for (&pool, p) in &want.pools {
            for seed in 0..p.pg_num {
                let pg = PgId { pool, seed };
                assert_eq!(
                    got.pg_to_up_acting(pg),
                    want.pg_to_up_acting(pg),
                    "{how}: {pg}"
                );
            }
        }
    }
    // What the monitor did in those epochs: every kind of change was in some incremental.
    let incs: Vec<OsdMapIncremental> = (1..=18)
        .map(|e| OsdMapIncremental::decode(&mon_file(&format!("inc_{e}"))).unwrap())
        .collect();
    let any = |f: Check| incs.iter().any(f);
    // (The monitor drops pg_temp / primary_temp / upmap items naming OSDs that are down or redundant
    // before it commits, so those arrive as removals here; the unit tests cover setting them.)
    type Check<'a> = &'a dyn Fn(&OsdMapIncremental) -> bool;
    let kinds: [(&str, Check); 11] = [
        ("a full map", &|i| !i.fullmap.is_empty()),
        ("a new CRUSH map", &|i| !i.crush.is_empty()),
        ("new pools", &|i| !i.new_pools.is_empty()),
        ("a new max_osd", &|i| i.new_max_osd > 0),
        ("new OSDs", &|i| i.new_state.values().any(|&s| s & 8 != 0)),
        ("an OSD out", &|i| i.new_weight.values().any(|&w| w == 0)),
        ("a pg_temp removed", &|i| {
            i.new_pg_temp.values().any(|v| v.is_empty())
        }),
        ("a primary_temp removed", &|i| {
            i.new_primary_temp.values().any(|&o| o == -1)
        }),
        ("a pg_upmap", &|i| !i.new_pg_upmap.is_empty()),
        ("a pool renamed", &|i| {
            i.new_pool_names.values().any(|n| n == "repl")
        }),
        ("an erasure pool", &|i| {
            i.new_pools.values().any(|p| p.is_erasure())
        }),
    ];
    for (what, f) in kinds {
        assert!(any(f), "no incremental has {what}");
    }
    assert_eq!(want.pool_id("repl"), Some(1));
    assert_eq!(want.max_osd(), 20);
    eprintln!("18 monitor incrementals rebuild the monitor's epoch-18 map");
}

/// Rules beyond what `--create-simple-rule` makes, appended to a decompiled map's text.
const EXTRA_RULES: &str = "rule two_racks {\n id 3\n type replicated\n min_size 1\n max_size 10\n \
    step take root\n step choose firstn 2 type rack\n step chooseleaf firstn 2 type host\n step emit\n}\n\
    rule choose_indep_osds {\n id 4\n type erasure\n min_size 1\n max_size 10\n step take root\n \
    step choose indep 3 type host\n step choose indep 1 type osd\n step emit\n}\n\
    rule legacy_steps {\n id 5\n type replicated\n min_size 1\n max_size 10\n \
    step set_choose_local_tries 2\n step set_choose_local_fallback_tries 5\n \
    step set_chooseleaf_vary_r 0\n step set_chooseleaf_stable 0\n step take root\n \
    step chooseleaf firstn 0 type host\n step emit\n}\n";

#[test]
fn multi_step_rules_and_legacy_tunables() {
    let dir = TempDir::new("steps");
    let built = build_crush(
        &dir,
        "steps.base",
        64,
        &[
            ("host", "straw2", 4),
            ("rack", "straw2", 4),
            ("root", "straw2", 0),
        ],
    );
    let text = tool("crushtool", &["-d", p(&built)]);
    let src = dir.path("steps.txt");
    std::fs::write(
        &src,
        text.replace("# end crush map", &format!("{EXTRA_RULES}# end crush map")),
    )
    .unwrap();
    let jewel = dir.path("steps.crush");
    tool("crushtool", &["-c", p(&src), "-o", p(&jewel)]);
    let legacy = dir.path("steps.legacy");
    tool(
        "crushtool",
        &[
            "-i",
            p(&jewel),
            "--set-choose-local-tries",
            "2",
            "--set-choose-local-fallback-tries",
            "5",
            "--set-choose-total-tries",
            "19",
            "--set-chooseleaf-descend-once",
            "0",
            "--set-chooseleaf-vary-r",
            "0",
            "--set-chooseleaf-stable",
            "0",
            "-o",
            p(&legacy),
        ],
    );
    let mut total = 0;
    for path in [&jewel, &legacy] {
        let map = CrushMap::decode(&std::fs::read(path).unwrap()).unwrap();
        eprintln!("{} tunables {:?}:", path.display(), map.tunables);
        let rw: &[(i32, &str)] = &[(1, "0"), (6, "0.5"), (17, "0"), (18, "0"), (19, "0")];
        for (rule, reps) in [
            ("two_racks", 4),
            ("choose_indep_osds", 3),
            ("legacy_steps", 3),
            ("replicated_rule", 3),
        ] {
            let id = map.rule_id(rule).unwrap();
            total += compare_crush(path, &map, id, reps, &[]);
            total += compare_crush(path, &map, id, reps, rw);
        }
    }
    let legacy_map = CrushMap::decode(&std::fs::read(&legacy).unwrap()).unwrap();
    let (t, l) = (legacy_map.tunables, msgr::rados::crush::Tunables::legacy());
    assert_eq!(
        (
            t.choose_local_tries,
            t.choose_local_fallback_tries,
            t.choose_total_tries
        ),
        (
            l.choose_local_tries,
            l.choose_local_fallback_tries,
            l.choose_total_tries
        )
    );
    assert_eq!(
        (
            t.chooseleaf_descend_once,
            t.chooseleaf_vary_r,
            t.chooseleaf_stable
        ),
        (
            l.chooseleaf_descend_once,
            l.chooseleaf_vary_r,
            l.chooseleaf_stable
        )
    );
    eprintln!("{total} mappings of multi-step rules and legacy tunables equal crushtool's");
}

/// A pool larger than its rule's `max_size` maps to nothing in Ceph 16; ours too.
#[test]
fn rule_size_limits_apply_to_pools() {
    let dir = TempDir::new("sizes");
    let built = build_crush(
        &dir,
        "sizes.base",
        32,
        &[("host", "straw2", 4), ("root", "straw2", 0)],
    );
    let text = tool("crushtool", &["-d", p(&built)]).replace("max_size 10", "max_size 2");
    let src = dir.path("sizes.txt");
    std::fs::write(&src, text).unwrap();
    let crush = dir.path("sizes.crush");
    tool("crushtool", &["-c", p(&src), "-o", p(&crush)]);
    let path = build_osdmap(&dir, "sizes", &crush, 32, 2, 2);
    let map = OsdMap::decode(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(map.pool(1).unwrap().size, 3);
    let (n, _) = compare_pgs(&path, &map, 1, &[]);
    assert!(map.pg_to_up_acting(PgId { pool: 1, seed: 0 }).up.is_empty());
    eprintln!("{n} PGs of a size-3 pool under a max_size-2 rule map to nothing, as in Ceph");
}

#[test]
fn primary_affinity_of_a_monitor_written_map() {
    let dir = TempDir::new("affinity");
    let path = dir.path("osdmap");
    std::fs::write(&path, include_bytes!("data/crush/osdmap-mon-affinity.bin")).unwrap();
    let map = OsdMap::decode(&std::fs::read(&path).unwrap()).unwrap();
    compare_dump(&path, &map);
    assert_eq!(map.primary_affinity(3), 0x8000);
    assert_eq!(map.primary_affinity(9), 0);
    let mut total = 0;
    let mut moved = 0;
    for pool in [1, 2] {
        total += compare_pgs(&path, &map, pool, &[]).0;
        let mut plain = map.clone();
        for osd in 0..32 {
            plain.set_primary_affinity(osd, 0x10000);
        }
        moved += (0..map.pool(pool).unwrap().pg_num)
            .filter(|&seed| {
                let pg = PgId { pool, seed };
                plain.pg_to_up_acting(pg).up_primary != map.pg_to_up_acting(pg).up_primary
            })
            .count();
    }
    assert!(moved > 0, "primary affinity moved no primary");
    eprintln!(
        "{total} PGs with primary affinity equal osdmaptool's ({moved} primaries moved by it)"
    );
}
