//! The `msgr` binary end to end: help on every subcommand, `bench` over mem and posix with its table and
//! JSON, usage errors (exit 2), `serve` + `ping` + `counters` on loopback, and `ping` to a closed port.
//! Every child process is bounded by a deadline and killed past it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

mod msgr_bin;
use msgr_bin::{msgr, wait_bounded, MSGR};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("msgr-cli-{}-{name}", std::process::id()))
}

#[test]
fn help_lists_every_subcommand_and_each_has_its_own_help() {
    let out = msgr(&["--help"], Duration::from_secs(20));
    assert!(out.status.success());
    let top = text(&out.stdout);
    for sub in ["bench", "serve", "ping", "recon", "counters"] {
        assert!(
            top.contains(sub),
            "`msgr --help` does not mention {sub}:\n{top}"
        );
    }
    let expect: &[(&str, &[&str])] = &[
        (
            "bench",
            &[
                "--stack",
                "--mode",
                "--sizes",
                "--count",
                "--warmup",
                "--workers",
                "--json",
                "--svg",
                "--connections",
                "--window",
                "--rate",
                "--duration",
                "--inject-delay-ms",
                "--client-cpus",
                "--rdma-device",
                "--rdma-gid-index",
                "--rdma-addr",
                "serve",
                "run",
            ],
        ),
        (
            "serve",
            &[
                "--bind",
                "--type",
                "--workers",
                "--admin-socket",
                "--duration",
            ],
        ),
        ("ping", &["ADDR", "--count", "--interval", "--timeout"]),
        ("recon", &["ADDR", "--expect", "--json", "--timeout"]),
        ("counters", &["--admin-socket"]),
    ];
    for (sub, flags) in expect {
        let out = msgr(&[sub, "--help"], Duration::from_secs(20));
        assert!(out.status.success(), "msgr {sub} --help failed");
        let help = text(&out.stdout);
        assert!(help.contains(&format!("Usage: msgr {sub}")), "{help}");
        for f in *flags {
            assert!(
                help.contains(f),
                "msgr {sub} --help does not document {f}:\n{help}"
            );
        }
    }
}

/// Runs a small bench on `stack` and checks the table and the JSON report.
fn bench_reports(stack: &str) {
    let json = temp_path(&format!("bench-{stack}.json"));
    let json_arg = json.to_str().unwrap();
    let out = msgr(
        &[
            "bench", "--stack", stack, "--sizes", "64,4k", "--count", "300", "--warmup", "50",
            "--json", json_arg,
        ],
        Duration::from_secs(120),
    );
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {}\n{stdout}",
        text(&out.stderr)
    );
    for col in [
        "size", "count", "p50", "p90", "p99", "p99.9", "max", "msgs/s", "Gbit/s",
    ] {
        assert!(stdout.contains(col), "table lacks {col}:\n{stdout}");
    }
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::trim_start)
        .filter(|l| l.starts_with("64 ") || l.starts_with("4k "))
        .collect();
    assert_eq!(rows.len(), 2, "one table row per size:\n{stdout}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written")).unwrap();
    let _ = std::fs::remove_file(&json);
    let header = &report["header"];
    assert_eq!(header["stack"], stack);
    assert_eq!(header["mode"], "latency");
    assert_eq!(header["warmup"], 50);
    assert_eq!(header["msgr_version"], env!("CARGO_PKG_VERSION"));
    assert!(header.get("git_commit").is_some() && header.get("cpu_model").is_some());
    assert!(header.get("kernel").is_some() && header.get("workers").is_some());
    let results = report["results"].as_array().expect("results array");
    assert_eq!(results.len(), 2);
    for (r, size) in results.iter().zip([64u64, 4096]) {
        let u = |k: &str| {
            r[k].as_u64()
                .unwrap_or_else(|| panic!("{k} missing in {r}"))
        };
        let f = |k: &str| {
            r[k].as_f64()
                .unwrap_or_else(|| panic!("{k} missing in {r}"))
        };
        assert_eq!(r["stack"], stack);
        assert_eq!(r["mode"], "latency");
        assert_eq!(u("msg_size"), size);
        assert!(u("wire_bytes") > size, "framing adds bytes: {r}");
        assert_eq!(u("count"), 300);
        assert!(u("p50_ns") > 0);
        assert!(u("p50_ns") <= u("p99_ns"), "{r}");
        assert!(u("p99_ns") <= u("p999_ns"), "{r}");
        assert!(u("p999_ns") <= u("max_ns"), "{r}");
        let elapsed_s = u("elapsed_ns") as f64 / 1e9;
        assert!(elapsed_s > 0.0);
        let expected = 300.0 / elapsed_s;
        let rate = f("msgs_per_sec");
        assert!(
            (rate - expected).abs() <= expected * 0.10,
            "msgs_per_sec {rate} vs count/elapsed {expected}"
        );
        let gbit = f("gbit_per_sec");
        let expected_gbit = rate * 2.0 * size as f64 * 8.0 / 1e9;
        assert!((gbit - expected_gbit).abs() <= expected_gbit * 1e-6, "{r}");
        // The slowest round trip cannot exceed the whole measured run.
        assert!(u("max_ns") <= u("elapsed_ns"), "{r}");
    }
}

#[test]
fn bench_mem_prints_table_and_writes_json() {
    bench_reports("mem");
}

#[test]
fn bench_posix_prints_table_and_writes_json() {
    bench_reports("posix");
}

#[test]
fn bench_usage_errors_exit_2_with_a_reason() {
    let cases: &[(&[&str], &str)] = &[
        (&["bench", "--sizes", "1.5k"], "invalid message size"),
        (&["bench", "--sizes", "64,4kb"], "invalid message size"),
        (&["bench", "--sizes", "1g"], "invalid message size"),
        (&["bench", "--sizes", "64m"], "too large"),
        (&["bench", "--count", "0"], "--count"),
        (&["bench", "--dpdk-args", "mtu=9000"], "--stack dpdk"),
        (&["bench", "--window", "4"], "one message in flight"),
        (
            &["bench", "--mode", "latency", "--connections", "2"],
            "one message in flight",
        ),
        (
            &["bench", "--stack", "mem", "--mode", "throughput"],
            "--stack mem",
        ),
        (&["bench", "--stack", "mem", "--rate", "100"], "--stack mem"),
        (
            &["bench", "--mode", "fanin", "--count", "10"],
            "less than --connections",
        ),
        (&["bench", "--rate", "0"], "--rate"),
        (&["bench", "--duration", "0"], "--duration"),
        (&["bench", "--inject-delay-ms=-2"], "--inject-delay-ms"),
        (&["bench", "run"], "ADDR"),
        (&["bench", "run", "not-an-address"], "not-an-address"),
        (&["bench", "serve", "--bind", "nowhere"], "--bind"),
        (
            &["bench", "--rdma-addr", "10.0.0.1"],
            "go with --stack rdma",
        ),
        (
            &["bench", "--stack", "mem", "--rdma-device", "rxe0"],
            "go with --stack rdma",
        ),
        (&["bench", "--rdma-gid-index=-1"], "--rdma-gid-index"),
        (
            &["bench", "serve", "--stack", "mem"],
            "mem is an in-process pair",
        ),
        (
            &["bench", "serve", "--rdma-device", "rxe0"],
            "go with --stack rdma",
        ),
    ];
    // Without the dpdk feature, --stack dpdk (plain, or with any other option) names the build to make.
    #[cfg(not(feature = "dpdk"))]
    let cases = &[
        cases,
        &[
            (
                &["bench", "--stack", "dpdk"][..],
                "cargo build --release --features dpdk",
            ),
            (
                &["bench", "serve", "--stack", "dpdk"][..],
                "--features dpdk",
            ),
            (
                &["bench", "run", "127.0.0.1:1", "--stack", "dpdk"][..],
                "--features dpdk",
            ),
        ][..],
    ]
    .concat();
    for (args, reason) in cases.iter() {
        let stderr = usage_error(args);
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
}

/// Runs `msgr args`, which must exit 2 (usage error) without panicking; returns its stderr.
fn usage_error(args: &[&str]) -> String {
    let out = msgr(args, Duration::from_secs(20));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    stderr
}

/// `--stack rdma` in a build without the `rdma` feature names the feature; with it, addresses rdma_cm
/// cannot use are refused before any device is opened.
#[test]
fn bench_stack_rdma_usage_errors_exit_2() {
    let cases: &[(&[&str], &str)] = if cfg!(feature = "rdma") {
        &[
            (
                &["bench", "--stack", "rdma", "--rdma-addr", "127.0.0.1"],
                "rdma_cm",
            ),
            (
                &[
                    "bench",
                    "run",
                    "10.0.0.1:6800",
                    "--stack",
                    "rdma",
                    "--rdma-addr",
                    "10.0.0.2",
                ],
                "--rdma-addr",
            ),
            (
                &[
                    "bench",
                    "serve",
                    "--stack",
                    "rdma",
                    "--bind",
                    "10.0.0.1:0",
                    "--rdma-addr",
                    "10.0.0.1",
                ],
                "not both",
            ),
        ]
    } else {
        &[
            (&["bench", "--stack", "rdma"], "--features rdma"),
            (
                &[
                    "bench",
                    "--stack",
                    "rdma",
                    "--mode",
                    "throughput",
                    "--sizes",
                    "1m",
                ],
                "--features rdma",
            ),
            (
                &["bench", "run", "10.0.0.1:6800", "--stack", "rdma"],
                "--features rdma",
            ),
            (&["bench", "serve", "--stack", "rdma"], "--features rdma"),
            (
                &["ping", "10.0.0.1:3300", "--stack", "rdma"],
                "--features rdma",
            ),
            (
                &["serve", "--bind", "127.0.0.1:0", "--stack", "rdma"],
                "--features rdma",
            ),
            (
                &["recon", "10.0.0.1:3300", "--stack", "rdma"],
                "--features rdma",
            ),
        ]
    };
    // ping, serve and recon take --stack rdma and the --rdma-* options too (checked before any device
    // is opened); the Ceph peer's buffer size only goes with Ceph's wire.
    let rdma_only: &[(&[&str], &str)] = if cfg!(feature = "rdma") {
        &[
            (
                &[
                    "ping",
                    "10.0.0.1:3300",
                    "--stack",
                    "rdma",
                    "--rdma-buffer-size",
                    "64k",
                ],
                "--rdma-wire ceph",
            ),
            (
                &[
                    "serve",
                    "--bind",
                    "10.0.0.1:0",
                    "--stack",
                    "rdma",
                    "--rdma-buffer-size",
                    "64k",
                ],
                "--rdma-wire ceph",
            ),
            (
                &[
                    "recon",
                    "10.0.0.1:3300",
                    "--stack",
                    "rdma",
                    "--rdma-addr",
                    "10.0.0.2",
                ],
                "--rdma-addr",
            ),
        ]
    } else {
        &[]
    };
    let everywhere: &[(&[&str], &str)] = &[
        (
            &["ping", "127.0.0.1:1", "--rdma-wire", "ceph"],
            "go with --stack rdma",
        ),
        (
            &["serve", "--bind", "127.0.0.1:0", "--rdma-wire", "ceph"],
            "go with --stack rdma",
        ),
        (
            &["recon", "127.0.0.1:1", "--rdma-wire", "ceph"],
            "go with --stack rdma",
        ),
        (
            &[
                "ping",
                "127.0.0.1:1",
                "--stack",
                "rdma",
                "--rdma-wire",
                "rocev1",
            ],
            "--rdma-wire",
        ),
        (
            &["bench", "--stack", "rdma", "--rdma-buffer-size", "1"],
            "--rdma-buffer-size",
        ),
    ];
    for (args, reason) in cases.iter().chain(rdma_only).chain(everywhere) {
        let stderr = usage_error(args);
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
}

/// The stack switch's usage errors, the same on every command: `--stack dpdk|rdma` parses in every build
/// and names the build to make when its feature is missing; an option of another stack is refused; the
/// stack's own options are checked before any device is opened.
#[test]
fn stack_usage_errors_of_every_command_exit_2() {
    let not_built = |stack: &str| format!("cargo build --release --features {stack}");
    let built = |stack: &str| {
        (stack != "dpdk" || cfg!(feature = "dpdk")) && (stack != "rdma" || cfg!(feature = "rdma"))
    };
    // Each command's words before --stack.
    let commands: &[&[&str]] = &[
        &["serve", "--bind", "127.0.0.1:0"],
        &["ping", "127.0.0.1:1"],
        &["recon", "127.0.0.1:1"],
        &["bench", "--sizes", "64"],
        &["bench", "run", "127.0.0.1:1"],
        &["bench", "serve"],
    ];
    let mut cases: Vec<(Vec<&str>, String)> = Vec::new();
    for &command in commands {
        let with = |extra: &[&'static str]| [command, extra].concat();
        for stack in ["dpdk", "rdma"] {
            if !built(stack) {
                cases.push((with(&["--stack", stack]), not_built(stack)));
            }
        }
        // Options of another stack: the error names them and the stack given.
        let foreign: &[(&[&str], &str, &str)] = &[
            (
                &["--dpdk-args", "ip=10.0.0.1/24"],
                "posix",
                "--dpdk-args goes with --stack dpdk",
            ),
            (
                &["--rdma-device", "rxe0"],
                "posix",
                "go with --stack rdma, not --stack posix",
            ),
            (
                &["--stack", "rdma", "--dpdk-args", "ip=10.0.0.1/24"],
                "rdma",
                "--dpdk-args goes with --stack dpdk, not --stack rdma",
            ),
            (
                &["--stack", "dpdk", "--rdma-wire", "ceph"],
                "dpdk",
                "go with --stack rdma, not --stack dpdk",
            ),
        ];
        for (extra, stack, reason) in foreign {
            let reason = if built(stack) {
                reason.to_string()
            } else {
                not_built(stack)
            };
            cases.push((with(extra), reason));
        }
    }
    // The dpdk stack's own checks, before the EAL starts.
    if cfg!(feature = "dpdk") {
        for &command in &commands[..3] {
            let with = |extra: &[&'static str]| [command, extra].concat();
            cases.push((with(&["--stack", "dpdk"]), "needs --dpdk-args".into()));
            cases.push((
                with(&[
                    "--stack",
                    "dpdk",
                    "--dpdk-args",
                    "queues=1 --vdev=net_null0",
                ]),
                "ip=A.B.C.D/len is required".into(),
            ));
            cases.push((
                with(&["--stack", "dpdk", "--dpdk-args", "ip=10.0.0.1/24 queues=0"]),
                "queues=0".into(),
            ));
        }
        cases.push((
            vec![
                "serve",
                "--bind",
                "10.0.0.1:0",
                "--stack",
                "dpdk",
                "--workers",
                "2",
                "--dpdk-args",
                "ip=10.0.0.1/24 --no-huge --vdev=net_null0",
            ],
            "queues=1".into(),
        ));
    }
    cases.push((
        vec!["bench", "--stack", "mem", "--dpdk-link", "tap"],
        "--dpdk-link goes with --stack dpdk".into(),
    ));
    cases.push((
        vec!["bench", "--stack", "mem", "--dpdk-args", "mtu=9000"],
        "not --stack mem".into(),
    ));
    for (args, reason) in &cases {
        let stderr = usage_error(args);
        assert!(stderr.contains(reason.as_str()), "{args:?}: {stderr}");
    }
}

/// serve, ping and recon document --stack with every stack and the stacks' options.
#[test]
fn serve_ping_and_recon_offer_every_stack() {
    for sub in ["serve", "ping", "recon"] {
        let out = msgr(&[sub, "--help"], Duration::from_secs(20));
        assert!(out.status.success(), "msgr {sub} --help failed");
        let help = text(&out.stdout);
        for needle in [
            "--stack",
            "posix",
            "dpdk",
            "rdma",
            "--dpdk-args",
            "--rdma-device",
        ] {
            assert!(
                help.contains(needle),
                "msgr {sub} --help lacks {needle}:\n{help}"
            );
        }
    }
}

#[test]
fn other_usage_errors_exit_2() {
    let cases: &[&[&str]] = &[
        &[],
        &["nonsense"],
        &["serve"],
        &["serve", "--bind", "localhost"],
        &["serve", "--bind", "127.0.0.1:0", "--type", "dragon"],
        &["serve", "--bind", "127.0.0.1:0", "--duration", "-1"],
        &["ping"],
        &["ping", "not-an-address"],
        &["ping", "127.0.0.1:1", "--timeout", "0"],
        &["counters"],
        &["recon", "bogus"],
    ];
    for args in cases {
        let stderr = usage_error(args);
        assert!(!stderr.trim().is_empty(), "{args:?}: no reason given");
    }
}

#[test]
fn serve_answers_ping_and_counters() {
    let asok = temp_path("serve.asok");
    let _ = std::fs::remove_file(&asok);
    let mut serve = Command::new(MSGR)
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--duration",
            "5",
            "--workers",
            "1",
            "--admin-socket",
            asok.to_str().unwrap(),
        ])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn msgr serve");
    // The addresses and the admin socket are printed before the server starts waiting.
    let mut lines = BufReader::new(serve.stdout.take().unwrap()).lines();
    let mut addr = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(a) = line.split("listening on ").nth(1) {
            addr = Some(a.trim().to_string());
        }
        if line.starts_with("admin socket") {
            break;
        }
    }
    let addr = addr.expect("msgr serve printed no address");
    assert!(addr.starts_with("v2:127.0.0.1:"), "{addr}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&asok).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "admin socket mode {mode:o}");
    }

    let ping = msgr(
        &["ping", &addr, "--count", "3", "--interval", "20"],
        Duration::from_secs(30),
    );
    let ping_out = text(&ping.stdout);
    assert!(
        ping.status.success(),
        "ping failed: {}\n{ping_out}",
        text(&ping.stderr)
    );
    assert!(
        ping_out.contains("connected to") && ping_out.contains("(osd"),
        "{ping_out}"
    );
    assert_eq!(ping_out.matches("keepalive ack").count(), 3, "{ping_out}");
    assert!(ping_out.contains("rtt min/avg/max"), "{ping_out}");

    let counters = msgr(
        &["counters", "--admin-socket", asok.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert!(counters.status.success(), "{}", text(&counters.stderr));
    let json: serde_json::Value = serde_json::from_slice(&counters.stdout).expect("counters JSON");
    assert!(json["msgs_in"].is_u64(), "{json}");
    assert!(json["accepted"].as_u64().unwrap() >= 1, "{json}");
    assert!(json["handshakes"].as_u64().unwrap() >= 1, "{json}");

    // The rest of its output arrives when it stops (read on a thread, so a hung server is killed).
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    let status = wait_bounded(serve, Duration::from_secs(30), &["serve"]).status;
    let rest = rest.join().unwrap();
    assert!(status.success(), "serve exited with {status}");
    assert!(rest.iter().any(|l| l.starts_with("served")), "{rest:?}");
    assert!(!asok.exists(), "admin socket left behind");
}

#[test]
fn ping_to_a_closed_port_says_refused() {
    // A port that was just free: nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = msgr(
        &["ping", &format!("127.0.0.1:{port}"), "--timeout", "3"],
        Duration::from_secs(30),
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refused"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[test]
fn counters_without_a_server_fails_clearly() {
    let asok = temp_path("nobody.asok");
    let out = msgr(
        &["counters", "--admin-socket", asok.to_str().unwrap()],
        Duration::from_secs(20),
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot connect to admin socket"),
        "{stderr}"
    );
}
