//! A posix benchmark server in a child process (`msgr bench serve --stdin-control`), for runs whose
//! sockets do not fit one process: a 10,000-connection fan-in has 20,000 sockets with both ends here,
//! more than a hard open-file limit of 20,000 allows, but 10,000 in each of two processes.
//!
//! Invariant: the child is ours alone; dropping [`ServeChild`] closes its stdin (which stops it) and
//! waits for it, killing it by its pid if it does not stop within seconds.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use super::BenchError;

/// How long the child may take to print its address, and to stop.
const CHILD_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `msgr bench serve` child.
pub struct ServeChild {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Its address as it printed it, `v2:IP:PORT/NONCE`.
    pub addr: String,
}

impl ServeChild {
    /// Starts `msgr bench serve` on a free loopback port with `workers` (pinned to `cpus` if any).
    pub fn spawn(workers: usize, cpus: &[usize]) -> Result<Self, BenchError> {
        let failed = |e: String| BenchError::Failed(format!("server child process: {e}"));
        let exe = std::env::current_exe().map_err(|e| failed(e.to_string()))?;
        let mut cmd = Command::new(exe);
        cmd.args(["bench", "serve", "--bind", "127.0.0.1:0", "--stdin-control"])
            .arg("--workers")
            .arg(workers.to_string());
        if !cpus.is_empty() {
            let list: Vec<String> = cpus.iter().map(usize::to_string).collect();
            cmd.arg("--cpus").arg(list.join(","));
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| failed(e.to_string()))?;
        let stdin = child.stdin.take();
        let (tx, lines) = crossbeam_channel::unbounded();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        let mut me = ServeChild {
            child,
            stdin,
            addr: String::new(),
        };
        let end = Instant::now() + CHILD_TIMEOUT;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = line.split("listening on ").nth(1) {
                        me.addr = a.trim().to_string();
                        return Ok(me);
                    }
                }
                Err(_) => return Err(failed("printed no address".into())),
            }
        }
    }
}

impl Drop for ServeChild {
    fn drop(&mut self) {
        // End of stdin stops it.
        drop(self.stdin.take());
        let end = Instant::now() + CHILD_TIMEOUT;
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
