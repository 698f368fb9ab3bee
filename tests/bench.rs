//! `msgr bench` end to end: its figures must be real. Short runs (a few hundred messages) of every mode
//! check the JSON schema, that the count is what was asked, that percentiles are ordered, that msgs/s is
//! count / elapsed, that the table and the JSON say the same, and — through the messenger's injected
//! read delay — that a 2 ms delay shows up as a p50 of at least 2 ms while without it p50 is far below.
//! Paced runs check coordinated omission: a server too slow for the offered rate makes latencies grow,
//! measured from intended send times. `--policy` runs check that both ends ran the policy asked for (the
//! server says which it applied) and that a lossless run over injected socket failures loses nothing
//! where a lossy one fails; connect mode counts handshakes; the CPU figures are there and positive; the
//! open-file limit is raised when it can be and refused clearly when it cannot. No test asserts a speed.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod msgr_bin;
use msgr_bin::{msgr, MSGR};

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("msgr-bench-{}-{name}", std::process::id()))
}

/// A finished bench run: its stdout table, its JSON report and the wall time of the process.
struct Run {
    table: String,
    report: Value,
    wall: Duration,
}

/// Runs `msgr bench ARGS --json FILE`, asserting success.
fn bench(name: &str, args: &[&str]) -> Run {
    let json = temp_path(&format!("{name}.json"));
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--json", json.to_str().unwrap()]);
    let t0 = Instant::now();
    let out = msgr(&all, Duration::from_secs(180));
    let wall = t0.elapsed();
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "msgr {all:?} failed: {}\n{table}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("JSON written");
    let _ = std::fs::remove_file(&json);
    let report: Value = serde_json::from_str(&text).expect("valid JSON");
    Run {
        table,
        report,
        wall,
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    U64,
    F64,
    Str,
    OptStr,
    OptU64,
    OptF64,
    OptF64x3,
    OptObj,
    Cpus,
    OptCpus,
    Percentiles,
}

fn check_kind(v: &Value, kind: Kind) -> bool {
    let cpus = |v: &Value| {
        v.is_object()
            && ["pinned", "allowed"]
                .iter()
                .all(|k| v[k].as_array().is_some_and(|a| a.iter().all(Value::is_u64)))
    };
    match kind {
        Kind::U64 => v.is_u64(),
        Kind::F64 => v.is_f64() || v.is_u64(),
        Kind::Str => v.is_string(),
        Kind::OptStr => v.is_null() || v.is_string(),
        Kind::OptU64 => v.is_null() || v.is_u64(),
        Kind::OptF64 => v.is_null() || v.is_number(),
        Kind::OptF64x3 => {
            v.is_null()
                || v.as_array()
                    .is_some_and(|a| a.len() == 3 && a.iter().all(Value::is_number))
        }
        Kind::OptObj => v.is_null() || v.is_object(),
        Kind::Cpus => cpus(v),
        Kind::OptCpus => v.is_null() || cpus(v),
        Kind::Percentiles => v.as_array().is_some_and(|a| {
            !a.is_empty()
                && a.iter().all(|p| p["q"].is_number() && p["ns"].is_u64())
                && a.windows(2).all(|w| {
                    w[0]["q"].as_f64() < w[1]["q"].as_f64()
                        && w[0]["ns"].as_u64() <= w[1]["ns"].as_u64()
                })
        }),
    }
}

const HEADER_SCHEMA: &[(&str, Kind)] = &[
    ("msgr_version", Kind::Str),
    ("git_commit", Kind::OptStr),
    ("stack", Kind::Str),
    ("device", Kind::OptStr),
    ("mode", Kind::Str),
    ("policy", Kind::Str),
    ("server_policy", Kind::OptStr),
    ("conn_mode", Kind::Str),
    ("processes", Kind::Str),
    ("server_addr", Kind::OptStr),
    ("workers", Kind::U64),
    ("server_workers", Kind::OptU64),
    ("client_cpus", Kind::Cpus),
    ("server_cpus", Kind::OptCpus),
    ("connections", Kind::U64),
    ("window", Kind::U64),
    ("rate", Kind::OptF64),
    ("warmup", Kind::U64),
    ("count", Kind::U64),
    ("duration_s", Kind::OptF64),
    ("inject_delay_ms", Kind::OptF64),
    ("inject_socket_failures", Kind::OptU64),
    ("open_files_limit", Kind::OptU64),
    ("spin_us", Kind::OptU64),
    ("client_counters", Kind::OptObj),
    ("server_counters", Kind::OptObj),
    ("memory", Kind::OptObj),
    ("wall_ns", Kind::U64),
    ("cpu_model", Kind::OptStr),
    ("kernel", Kind::OptStr),
    ("cpus", Kind::U64),
    ("loadavg_start", Kind::OptF64x3),
    ("loadavg_end", Kind::OptF64x3),
    ("started_unix", Kind::U64),
];

const RECORD_SCHEMA: &[(&str, Kind)] = &[
    ("stack", Kind::Str),
    ("mode", Kind::Str),
    ("policy", Kind::Str),
    ("msg_size", Kind::U64),
    ("wire_bytes", Kind::U64),
    ("connections", Kind::U64),
    ("window", Kind::U64),
    ("rate", Kind::OptF64),
    ("directions", Kind::U64),
    ("count", Kind::U64),
    ("warmup", Kind::U64),
    ("elapsed_ns", Kind::U64),
    ("min_ns", Kind::U64),
    ("mean_ns", Kind::U64),
    ("p50_ns", Kind::U64),
    ("p90_ns", Kind::U64),
    ("p99_ns", Kind::U64),
    ("p999_ns", Kind::U64),
    ("p9999_ns", Kind::U64),
    ("max_ns", Kind::U64),
    ("msgs_per_sec", Kind::F64),
    ("gbit_per_sec", Kind::F64),
    ("percentiles", Kind::Percentiles),
    ("pacer_lag_max_ns", Kind::OptU64),
    ("client_user_us_per_msg", Kind::OptF64),
    ("client_sys_us_per_msg", Kind::OptF64),
    ("server_user_us_per_msg", Kind::OptF64),
    ("server_sys_us_per_msg", Kind::OptF64),
    ("client_frames_out_per_msg", Kind::OptF64),
    ("client_frames_in_per_msg", Kind::OptF64),
    ("client_acks_out_per_msg", Kind::OptF64),
];

/// Every key of `schema` is present with its type, and nothing else is there.
fn check_schema(what: &str, v: &Value, schema: &[(&str, Kind)]) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("{what} is not an object: {v}"));
    for (key, kind) in schema {
        let field = obj
            .get(*key)
            .unwrap_or_else(|| panic!("{what} lacks {key}: {v}"));
        assert!(
            check_kind(field, *kind),
            "{what}.{key} is not {kind:?}: {field}"
        );
    }
    for key in obj.keys() {
        assert!(
            schema.iter().any(|(k, _)| k == key),
            "{what} has {key}, which the schema does not know"
        );
    }
}

/// `side`'s CPU per message is there, not negative, and adds up to more than nothing.
fn check_cpu(r: &Value, side: &str) {
    let user = f(r, &format!("{side}_user_us_per_msg"));
    let sys = f(r, &format!("{side}_sys_us_per_msg"));
    assert!(user >= 0.0 && sys >= 0.0, "{side} CPU: {r}");
    assert!(user + sys > 0.0, "{side} CPU per message is zero: {r}");
}

fn u(r: &Value, k: &str) -> u64 {
    r[k].as_u64()
        .unwrap_or_else(|| panic!("{k} missing in {r}"))
}

fn f(r: &Value, k: &str) -> f64 {
    r[k].as_f64()
        .unwrap_or_else(|| panic!("{k} missing in {r}"))
}

fn results(run: &Run) -> &Vec<Value> {
    run.report["results"].as_array().expect("results array")
}

/// The schema, and the figures every record must satisfy whatever the machine's speed.
fn check_report(run: &Run, mode: &str, sizes: &[u64], count: u64, directions: f64) {
    check_schema("header", &run.report["header"], HEADER_SCHEMA);
    let h = &run.report["header"];
    assert_eq!(h["mode"], mode);
    assert_eq!(h["stack"], "posix");
    assert_eq!(h["msgr_version"], env!("CARGO_PKG_VERSION"));
    assert!(
        u(h, "wall_ns") as f64 <= run.wall.as_nanos() as f64,
        "the run cannot take longer than the process"
    );
    let rs = results(run);
    assert_eq!(rs.len(), sizes.len(), "one record per size");
    let mut elapsed_sum = 0;
    for (r, &size) in rs.iter().zip(sizes) {
        check_schema("record", r, RECORD_SCHEMA);
        assert_eq!(r["mode"], mode);
        assert_eq!(u(r, "msg_size"), size);
        if mode != "connect" {
            assert!(u(r, "wire_bytes") > size, "framing adds bytes: {r}");
        }
        assert_eq!(u(r, "count"), count, "count as asked: {r}");
        assert!(u(r, "min_ns") > 0, "{r}");
        assert!(u(r, "min_ns") <= u(r, "p50_ns"), "{r}");
        assert!(u(r, "p50_ns") <= u(r, "p90_ns"), "{r}");
        assert!(u(r, "p90_ns") <= u(r, "p99_ns"), "{r}");
        assert!(u(r, "p99_ns") <= u(r, "p999_ns"), "{r}");
        assert!(u(r, "p999_ns") <= u(r, "p9999_ns"), "{r}");
        assert!(u(r, "p9999_ns") <= u(r, "max_ns"), "{r}");
        assert_eq!(r["policy"], h["policy"], "{r}");
        check_cpu(r, "client");
        // Every message crossed as a frame at least, each way (a worker publishes its counters once per
        // loop turn: the last turn's frames may not show yet, hence a margin).
        assert!(f(r, "client_frames_out_per_msg") >= 0.9, "{r}");
        assert!(f(r, "client_frames_in_per_msg") >= 0.9, "{r}");
        assert!(
            f(r, "client_acks_out_per_msg") <= f(r, "client_frames_out_per_msg"),
            "{r}"
        );
        // A server in this process, or a `bench serve`, reports its CPU.
        check_cpu(r, "server");
        let elapsed = u(r, "elapsed_ns");
        elapsed_sum += elapsed;
        assert!(u(r, "max_ns") <= elapsed, "no latency exceeds the run: {r}");
        let expected = count as f64 / (elapsed as f64 / 1e9);
        let rate = f(r, "msgs_per_sec");
        assert!(
            (rate - expected).abs() <= expected * 0.10,
            "msgs_per_sec {rate} vs count/elapsed {expected}"
        );
        let gbit = expected * directions * size as f64 * 8.0 / 1e9;
        assert!(
            (f(r, "gbit_per_sec") - gbit).abs() <= gbit * 0.10 + 1e-9,
            "{r}"
        );
    }
    assert!(
        elapsed_sum <= u(h, "wall_ns"),
        "sizes together within the run"
    );
    check_table_matches(run);
}

/// Each table row says what its JSON record says (same rounding).
fn check_table_matches(run: &Run) {
    let rows: Vec<Vec<&str>> = run
        .table
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect())
        .filter(|cols: &Vec<&str>| {
            cols.first()
                .is_some_and(|c| c.as_bytes()[0].is_ascii_digit())
        })
        .collect();
    let rs = results(run);
    assert_eq!(rows.len(), rs.len(), "one row per record:\n{}", run.table);
    for (cols, r) in rows.iter().zip(rs) {
        assert_eq!(cols.len(), 15, "{cols:?}");
        let cpu = |k: &str| {
            r[k].as_f64()
                .map_or("n/a".to_string(), |v| format!("{v:.2}"))
        };
        let us = |k: &str| format!("{:.1}", u(r, k) as f64 / 1000.0);
        let expect = [
            u(r, "wire_bytes").to_string(),
            u(r, "connections").to_string(),
            u(r, "count").to_string(),
            us("p50_ns"),
            us("p90_ns"),
            us("p99_ns"),
            us("p999_ns"),
            us("max_ns"),
            format!("{:.0}", f(r, "msgs_per_sec")),
            format!("{:.3}", f(r, "gbit_per_sec")),
            cpu("client_user_us_per_msg"),
            cpu("client_sys_us_per_msg"),
            cpu("server_user_us_per_msg"),
            cpu("server_sys_us_per_msg"),
        ];
        for (i, e) in expect.iter().enumerate() {
            assert_eq!(cols[i + 1], e, "table column {} vs JSON {r}", i + 1);
        }
    }
}

#[test]
fn latency_figures_are_real_and_an_injected_delay_shows() {
    let plain = bench(
        "latency",
        &[
            "bench", "--mode", "latency", "--sizes", "64,4k", "--count", "300", "--warmup", "30",
        ],
    );
    check_report(&plain, "latency", &[64, 4096], 300, 2.0);
    let h = &plain.report["header"];
    assert_eq!(h["processes"], "one");
    assert_eq!((u(h, "connections"), u(h, "window")), (1, 1));
    assert!(h["inject_delay_ms"].is_null());
    for r in results(&plain) {
        // One message in flight: the round trips, end to end, fit in the measured time.
        assert!(u(r, "count") * u(r, "min_ns") <= u(r, "elapsed_ns"), "{r}");
    }

    let delayed = bench(
        "latency-delay",
        &[
            "bench",
            "--mode",
            "latency",
            "--sizes",
            "64",
            "--count",
            "200",
            "--warmup",
            "10",
            "--inject-delay-ms",
            "2",
            // Spinning workers change how soon a worker notices work, never what the figures mean.
            "--spin-us",
            "100",
        ],
    );
    check_report(&delayed, "latency", &[64], 200, 2.0);
    assert_eq!(f(&delayed.report["header"], "inject_delay_ms"), 2.0);
    assert_eq!(u(&delayed.report["header"], "spin_us"), 100);
    assert!(h["spin_us"].is_null());
    let d = &results(&delayed)[0];
    assert!(
        u(d, "p50_ns") >= 2_000_000,
        "p50 with a 2 ms delay below 2 ms: {d}"
    );
    assert!(
        u(d, "min_ns") >= 2_000_000,
        "every round trip carries the delay: {d}"
    );
    // 200 round trips of at least 2 ms each.
    assert!(u(d, "elapsed_ns") >= 200 * 2_000_000, "{d}");
    let p = &results(&plain)[0];
    assert!(
        u(p, "p50_ns") * 2 < u(d, "p50_ns") && u(p, "p50_ns") < 1_000_000,
        "without the delay p50 ({}) is far below 2 ms",
        u(p, "p50_ns")
    );
}

#[test]
fn throughput_streams_with_a_window_and_counts_one_direction() {
    let run = bench(
        "throughput",
        &[
            "bench",
            "--mode",
            "throughput",
            "--sizes",
            "4k,64k",
            "--count",
            "400",
            "--warmup",
            "40",
            "--window",
            "8",
            "--connections",
            "2",
        ],
    );
    check_report(&run, "throughput", &[4096, 65536], 400, 1.0);
    let h = &run.report["header"];
    assert_eq!((u(h, "connections"), u(h, "window")), (2, 8));
    for r in results(&run) {
        assert_eq!(u(r, "directions"), 1);
        assert_eq!(u(r, "window"), 8);
    }
}

#[test]
fn fanin_opens_256_sessions_by_default() {
    let run = bench(
        "fanin",
        &[
            "bench", "--mode", "fanin", "--sizes", "64", "--count", "768", "--warmup", "256",
        ],
    );
    check_report(&run, "fanin", &[64], 768, 2.0);
    let h = &run.report["header"];
    assert_eq!((u(h, "connections"), u(h, "window")), (256, 1));
    assert_eq!(u(&results(&run)[0], "connections"), 256);
    // Memory per idle session: both ends are in this process.
    let m = &h["memory"];
    assert_eq!(m["scope"], "client and server", "{m}");
    assert_eq!(u(m, "sessions"), 256);
    assert!(u(m, "rss_after_bytes") > u(m, "rss_before_bytes"), "{m}");
    let per = f(m, "bytes_per_session");
    let expect = (u(m, "rss_after_bytes") - u(m, "rss_before_bytes")) as f64 / 256.0;
    assert!((per - expect).abs() < 1.0, "{m}");
    assert!(run.table.contains("KiB per session"), "{}", run.table);
}

#[test]
fn paced_runs_measure_from_the_intended_send_time() {
    // 400 messages offered at 2000/s: the last is due 199.5 ms after the first, so the measured span
    // cannot be shorter whatever the machine.
    let run = bench(
        "paced",
        &[
            "bench", "--sizes", "64", "--count", "400", "--warmup", "20", "--rate", "2000",
        ],
    );
    check_report(&run, "latency", &[64], 400, 2.0);
    let r = &results(&run)[0];
    assert_eq!(f(r, "rate"), 2000.0);
    assert!(u(r, "elapsed_ns") >= 399 * 500_000, "{r}");
    assert!(f(r, "msgs_per_sec") <= 2000.0 * 1.01, "{r}");
    assert!(r["pacer_lag_max_ns"].is_u64(), "{r}");

    // Offered 1000/s against round trips of at least 2 ms with one in flight: the schedule runs ahead
    // and each message waits for those before it. Measured from intended send times the median is the
    // queue's length (~100 ms here); measured from actual sends it would stay near 2 ms.
    let run = bench(
        "paced-slow",
        &[
            "bench",
            "--sizes",
            "64",
            "--count",
            "200",
            "--warmup",
            "0",
            "--rate",
            "1000",
            "--inject-delay-ms",
            "2",
        ],
    );
    let r = &results(&run)[0];
    assert_eq!(u(r, "count"), 200);
    assert!(
        u(r, "p50_ns") >= 20_000_000,
        "coordinated omission hidden: {r}"
    );
    assert!(u(r, "max_ns") >= 150_000_000, "{r}");
}

#[test]
fn svg_has_both_plots() {
    let svg = temp_path("plot.svg");
    let out = msgr(
        &[
            "bench",
            "--sizes",
            "64,4k",
            "--count",
            "200",
            "--warmup",
            "10",
            "--svg",
            svg.to_str().unwrap(),
        ],
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&svg).expect("SVG written");
    let _ = std::fs::remove_file(&svg);
    assert!(text.starts_with("<svg"), "{}", &text[..text.len().min(200)]);
    assert!(text.contains("latency by percentile"), "latency plot");
    assert!(
        text.contains("throughput by message size"),
        "throughput plot"
    );
    assert!(text.contains("99.9%"), "percentile axis");
    assert!(
        text.matches("<polyline").count() >= 3,
        "one line per size and the throughput line"
    );
}

#[test]
fn two_processes_serve_and_run() {
    let mut serve = Command::new(MSGR)
        .args([
            "bench",
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--duration",
            "60",
        ])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn msgr bench serve");
    let mut lines = BufReader::new(serve.stdout.take().unwrap()).lines();
    let addr = lines.by_ref().map_while(Result::ok).find_map(|l| {
        l.split("listening on ")
            .nth(1)
            .map(|a| a.trim().to_string())
    });
    let Some(addr) = addr else {
        let _ = serve.kill();
        let _ = serve.wait();
        panic!("msgr bench serve printed no address");
    };
    let outcome = std::panic::catch_unwind(|| {
        let run = bench(
            "two-process",
            &[
                "bench", "run", &addr, "--sizes", "64,4k", "--count", "200", "--warmup", "20",
            ],
        );
        check_report(&run, "latency", &[64, 4096], 200, 2.0);
        let h = &run.report["header"];
        assert_eq!(h["processes"], "two");
        // The server has nonce 0, so IP:PORT alone names it.
        let plain = addr
            .strip_prefix("v2:")
            .and_then(|a| a.strip_suffix("/0"))
            .unwrap_or_else(|| panic!("bench serve prints v2:IP:PORT/0, not {addr}"));
        assert_eq!(h["server_addr"].as_str(), Some(plain));
        assert!(h["server_cpus"].is_null() && h["server_workers"].is_null());
        let tp = bench(
            "two-process-tp",
            &[
                "bench",
                "run",
                plain,
                "--mode",
                "throughput",
                "--sizes",
                "64k",
                "--count",
                "200",
                "--warmup",
                "20",
            ],
        );
        check_report(&tp, "throughput", &[65536], 200, 1.0);
        // The server has no flag: the client's policy decides, and the server says which it applied.
        for policy in ["lossless", "lossy"] {
            let run = bench(
                &format!("two-process-{policy}"),
                &[
                    "bench", "run", plain, "--policy", policy, "--sizes", "64", "--count", "100",
                    "--warmup", "10",
                ],
            );
            check_report(&run, "latency", &[64], 100, 2.0);
            assert_eq!(run.report["header"]["policy"], policy);
            assert_eq!(run.report["header"]["server_policy"], policy);
        }
    });
    // Stopped by its PID, whatever happened.
    let _ = serve.kill();
    let _ = serve.wait();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e);
    }
}

/// The status of `msgr ARGS` that must fail, with its stderr.
fn bench_fails(args: &[&str]) -> (Option<i32>, String) {
    let out = msgr(args, Duration::from_secs(120));
    assert!(!out.status.success(), "msgr {args:?} succeeded");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn each_policy_runs_on_both_ends_and_is_reported() {
    for policy in ["lossy", "lossless", "lossless-peer"] {
        let run = bench(
            &format!("policy-{policy}"),
            &[
                "bench", "--policy", policy, "--sizes", "64,4k", "--count", "200", "--warmup", "20",
            ],
        );
        check_report(&run, "latency", &[64, 4096], 200, 2.0);
        let h = &run.report["header"];
        assert_eq!(h["policy"], policy);
        // The server's view: the policy its per-peer-type table applied to this client.
        assert_eq!(h["server_policy"], policy, "{h}");
        assert!(
            run.table.starts_with(&format!("# posix latency {policy}:")),
            "{}",
            run.table
        );
        // Every message and its echo went through both messengers.
        let client = &h["client_counters"];
        let server = &h["server_counters"];
        assert!(u(client, "msgs_out") >= 2 * 220, "{client}");
        assert_eq!(u(client, "msgs_out"), u(server, "msgs_in"), "{h}");
        assert_eq!(u(server, "accepted"), 1, "one connection: {server}");
    }
    // lossless-peer binds the client: one session per peer.
    let (code, err) = bench_fails(&[
        "bench",
        "--policy",
        "lossless-peer",
        "--mode",
        "throughput",
        "--connections",
        "2",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("one connection"), "{err}");
}

#[test]
fn a_bad_policy_is_a_usage_error() {
    let (code, err) = bench_fails(&["bench", "--policy", "lossier", "--count", "10"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("lossless-peer"),
        "the error lists the values: {err}"
    );
}

#[test]
fn lossless_loses_nothing_over_injected_socket_failures() {
    let args = |policy: &'static str| {
        [
            "bench",
            "--policy",
            policy,
            "--sizes",
            "64,4k",
            "--count",
            "1500",
            "--warmup",
            "50",
            "--inject-socket-failures",
            "100",
        ]
    };
    let run = bench("lossless-faults", &args("lossless"));
    check_report(&run, "latency", &[64, 4096], 1500, 2.0);
    let h = &run.report["header"];
    assert_eq!(u(h, "inject_socket_failures"), 100);
    let client = &h["client_counters"];
    // Faults hit (the client reconnected) and every message was still answered, in order, once.
    assert!(
        u(client, "reconnects") > 0,
        "no fault was injected: {client}"
    );
    assert_eq!(u(client, "resets"), 0, "{client}");
    assert!(u(client, "msgs_in") >= 2 * 1550, "{client}");
    // The same faults end a lossy run.
    let (code, err) = bench_fails(&args("lossy"));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("reset"), "{err}");
}

#[test]
fn connect_mode_counts_full_handshakes() {
    let run = bench(
        "connect",
        &[
            "bench",
            "--mode",
            "connect",
            "--connections",
            "3",
            "--count",
            "150",
            "--warmup",
            "15",
        ],
    );
    check_report(&run, "connect", &[0], 150, 0.0);
    let h = &run.report["header"];
    assert_eq!(u(h, "connections"), 3);
    let r = &results(&run)[0];
    assert!(f(r, "msgs_per_sec") > 0.0, "handshakes/s: {r}");
    // Each handshake is a session of its own: warm-up, measured, and the stats connection.
    let server = &h["server_counters"];
    assert_eq!(u(server, "accepted"), 150 + 15 + 1, "{server}");
    assert!(u(&h["client_counters"], "handshakes") >= 166, "{h}");
    assert!(run.table.contains("handshakes/s"), "{}", run.table);
}

/// `msgr ARGS` under `sh -c '<limits>; exec msgr …'`; a root shell first drops CAP_SYS_RESOURCE (with
/// setpriv), so that the bench cannot raise the hard limit back.
fn limited(name: &str, limits: &str, args: &[&str]) -> (std::process::Output, PathBuf) {
    let json = temp_path(&format!("{name}.json"));
    let mut script = format!("{limits}; exec \"$0\"");
    for a in args
        .iter()
        .copied()
        .chain(["--json", json.to_str().unwrap()])
    {
        script.push_str(&format!(" '{a}'"));
    }
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .is_some_and(|l| l.split_whitespace().nth(2) == Some("0"))
    });
    let mut cmd = if root {
        let mut c = Command::new("setpriv");
        c.args(["--bounding-set", "-sys_resource", "sh", "-c"]);
        c
    } else {
        let mut c = Command::new("sh");
        c.arg("-c");
        c
    };
    let child = cmd
        .arg(&script)
        .arg(MSGR)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    (
        msgr_bin::wait_bounded(child, Duration::from_secs(120), args),
        json,
    )
}

#[test]
fn the_open_file_limit_is_raised_or_refused_clearly() {
    let fanin = [
        "bench",
        "--mode",
        "fanin",
        "--connections",
        "300",
        "--sizes",
        "64",
        "--count",
        "300",
        "--warmup",
        "0",
    ];
    // A soft limit of 200 cannot hold 600 sockets: the bench raises it and says so.
    let (out, json) = limited("rlimit-soft", "ulimit -Sn 200", &fanin);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("raised the open-file limit (RLIMIT_NOFILE, soft) from 200 to"),
        "{stdout}"
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    assert!(u(&report["header"], "open_files_limit") >= 600, "{report}");
    assert_eq!(report["header"]["processes"], "one");

    // A hard limit of 450 holds one end's 300 sockets, not both: the server runs in a child process.
    let (out, json) = limited("rlimit-child", "ulimit -n 450", &fanin);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("child process"), "{stdout}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    assert_eq!(report["header"]["processes"], "two");
    assert_eq!(report["header"]["memory"]["scope"], "server process");

    // A hard limit of 200 holds neither: a clear error before the run.
    let (out, json) = limited("rlimit-hard", "ulimit -n 200", &fanin);
    let _ = std::fs::remove_file(&json);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("hard limit (RLIMIT_NOFILE) is 200"),
        "{stderr}"
    );
}
