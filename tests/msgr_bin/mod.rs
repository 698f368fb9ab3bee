//! Running the `msgr` binary from integration tests: every child bounded by a deadline, killed past it.
#![allow(dead_code)]

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const MSGR: &str = env!("CARGO_BIN_EXE_msgr");

/// Runs `msgr ARGS`, killing it if it takes longer than `limit`.
pub fn msgr(args: &[&str], limit: Duration) -> Output {
    wait_bounded(spawn(args), limit, args)
}

/// Starts `msgr ARGS` (no stdin, output captured); finish it with [`wait_bounded`].
pub fn spawn(args: &[&str]) -> Child {
    Command::new(MSGR)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn msgr")
}

pub fn wait_bounded(mut child: Child, limit: Duration, what: &[&str]) -> Output {
    let end = Instant::now() + limit;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "msgr {what:?} did not finish within {limit:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
