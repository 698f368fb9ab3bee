//! The examples run against each other: `echo_server` and `client` from target/*/examples/ (built here
//! if this test was built alone), each bounded in time and killed at the end.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// target/<profile>/examples/<name>, building the examples once if it is missing.
fn example(name: &str) -> PathBuf {
    let dir = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("examples");
    let path = dir.join(name);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let release = dir.parent().is_some_and(|p| p.ends_with("release"));
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--examples", "--quiet"]);
        if release {
            cmd.arg("--release");
        }
        assert!(cmd.status().unwrap().success(), "cargo build --examples");
    }
    assert!(path.exists(), "{} missing", path.display());
    path
}

/// A child killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines of a child's stdout, through a channel (so reads can time out).
fn lines(out: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next line that starts with `prefix`, within `limit`.
fn expect_line(
    rx: &mpsc::Receiver<String>,
    prefix: &str,
    limit: Duration,
    seen: &mut Vec<String>,
) -> String {
    let end = std::time::Instant::now() + limit;
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                seen.push(l.clone());
                if l.starts_with(prefix) {
                    return l;
                }
            }
            Err(_) => panic!("no line starting with {prefix:?} within {limit:?}; saw {seen:?}"),
        }
    }
}

fn start_server(addr: &str) -> (Proc, mpsc::Receiver<String>, String) {
    let mut child = Command::new(example("echo_server"))
        .arg(addr)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines(child.stdout.take().unwrap());
    let line = expect_line(
        &rx,
        "listening on ",
        Duration::from_secs(10),
        &mut Vec::new(),
    );
    let bound = line.trim_start_matches("listening on ").to_string();
    (Proc(child), rx, bound)
}

fn start_client(addr: &str, count: u32, interval_ms: u32) -> (Proc, mpsc::Receiver<String>) {
    let mut child = Command::new(example("client"))
        .args([addr, &count.to_string(), &interval_ms.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines(child.stdout.take().unwrap());
    (Proc(child), rx)
}

fn exit_ok(p: &mut Proc, limit: Duration) -> bool {
    let end = std::time::Instant::now() + limit;
    while std::time::Instant::now() < end {
        if let Some(status) = p.0.try_wait().unwrap() {
            return status.success();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn the_client_example_talks_to_the_echo_server_example() {
    let (_server, _srx, addr) = start_server("127.0.0.1:0");
    let (mut client, rx) = start_client(&addr, 5, 0);
    let mut seen = Vec::new();
    let done = expect_line(&rx, "done:", Duration::from_secs(20), &mut seen);
    assert_eq!(done, "done: 5 replies, 0 resets", "{seen:?}");
    assert_eq!(seen.iter().filter(|l| l.starts_with("reply ")).count(), 5);
    assert!(exit_ok(&mut client, Duration::from_secs(10)));
}

/// The server restarts mid-run on the same port: the client reports the reset, sends the
/// unanswered message again on a new session, and finishes.
#[test]
fn the_client_example_survives_a_server_restart() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let (server, _srx, bound) = start_server(&addr);
    assert_eq!(bound, addr);
    let (mut client, rx) = start_client(&addr, 40, 25);
    let mut seen = Vec::new();
    expect_line(&rx, "reply 10", Duration::from_secs(20), &mut seen);
    drop(server);
    std::thread::sleep(Duration::from_millis(300));
    let (_server, _srx, _) = start_server(&addr);
    let done = expect_line(&rx, "done:", Duration::from_secs(30), &mut seen);
    assert!(done.starts_with("done: 40 replies, "), "{seen:?}");
    assert!(
        seen.iter().any(|l| l.starts_with("session reset")),
        "no reset reported: {seen:?}"
    );
    let replies: Vec<&String> = seen.iter().filter(|l| l.starts_with("reply ")).collect();
    assert_eq!(replies.len(), 40, "{seen:?}");
    assert!(exit_ok(&mut client, Duration::from_secs(10)));
}
