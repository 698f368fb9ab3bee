//! Configuration of the dpdk stack, from one string (the CLI's `--dpdk-args "…"`) or built in code.
//!
//! The string is whitespace-separated: `key=value` tokens configure the stack, tokens starting with `-`
//! are EAL arguments, as is a token without `=` right after one (`-m 512`); everything after a bare `--` is
//! EAL too. Example, one end of a memif link:
//!
//! ```text
//! ip=10.9.0.1/24 queues=1 --no-huge --no-pci -m 512 --vdev=net_memif0,role=server,id=0
//! ```
//!
//! Keys: `ip=A.B.C.D/len` (required), `gateway=A.B.C.D`, `port=N` (ethdev port, default 0), `queues=N`
//! (RX/TX queue pairs = workers, default 1), `mtu=N` (default 1500), `mbufs=N` (per queue, default 8192),
//! `rx_desc=N`, `tx_desc=N` (default 1024), `tcp_buffer=N` (bytes per socket and direction, default
//! 256 KiB), `link_wait_ms=N` (default 10000), `hw_rss=0|1`, `tx_checksum=0|1` (use the offloads when the
//! port has them, default 1), `keepalive_ms=N` (0 = off, default 10000), `tcp_timeout_ms=N` (abort after
//! this long without an ACK, default 30000), `ack_delay_ms=N` (delayed ACK, 0 = off, default 10).
//!
//! SYN handling (per listener and worker; see `listen`): `listen_pool=N` (free sockets kept in LISTEN, and
//! what the pool shrinks back to, default 16), `listen_pool_max=N` (LISTEN + SYN-RECEIVED sockets at most,
//! default 256: the pool grows on demand for the SYNs waiting for smoltcp, and at the cap a new SYN takes
//! the oldest half-open socket), `syn_timeout_ms=N` (a half-open connection goes back to LISTEN after this
//! long in SYN-RECEIVED, default 5000: smoltcp sends the SYN-ACK four times in that time, its first
//! retransmission timeout being 700 ms; 0 = only `tcp_timeout_ms`).
//!
//! EAL defaults added when absent: `-l 0` (the main lcore; msgr's workers register as non-EAL lcores),
//! `--no-telemetry` (no telemetry socket), and
//! `--no-shconf --file-prefix=msgr-<pid>` (no shared config files, and a prefix of its own, so any number of
//! processes can run side by side) unless one of those or `--in-memory` is given.

use std::io;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

/// Everything the dpdk stack needs to start.
#[derive(Debug, Clone)]
pub struct DpdkConfig {
    /// EAL arguments (no program name).
    pub eal_args: Vec<String>,
    pub port: u16,
    pub queues: u16,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub mtu: u16,
    pub mbufs_per_queue: u32,
    pub rx_desc: u16,
    pub tx_desc: u16,
    pub tcp_buffer: usize,
    /// Free LISTEN sockets kept per listener and worker.
    pub listen_pool: usize,
    /// LISTEN + SYN-RECEIVED sockets per listener and worker at most.
    pub listen_pool_max: usize,
    /// How long a half-open (SYN-RECEIVED) connection keeps its socket.
    pub syn_timeout: Option<Duration>,
    pub link_wait: Duration,
    pub hw_rss: bool,
    pub tx_checksum: bool,
    pub keepalive: Option<Duration>,
    pub tcp_timeout: Option<Duration>,
    pub ack_delay: Option<Duration>,
}

impl DpdkConfig {
    /// A configuration with defaults for everything but the address and the EAL arguments.
    pub fn new(ip: Ipv4Addr, prefix_len: u8, eal_args: Vec<String>) -> Self {
        DpdkConfig {
            eal_args,
            port: 0,
            queues: 1,
            ip,
            prefix_len,
            gateway: None,
            mtu: 1500,
            mbufs_per_queue: 8192,
            rx_desc: 1024,
            tx_desc: 1024,
            tcp_buffer: 256 * 1024,
            listen_pool: 16,
            listen_pool_max: 256,
            syn_timeout: Some(Duration::from_secs(5)),
            link_wait: Duration::from_secs(10),
            hw_rss: true,
            tx_checksum: true,
            keepalive: Some(Duration::from_secs(10)),
            tcp_timeout: Some(Duration::from_secs(30)),
            ack_delay: Some(Duration::from_millis(10)),
        }
    }

    /// Parse the `--dpdk-args` string (see the module docs).
    pub fn parse(args: &str) -> io::Result<Self> {
        let mut eal = Vec::new();
        let mut keys = Vec::new();
        let mut eal_only = false;
        let mut after_eal_flag = false;
        for token in args.split_whitespace() {
            let eal_value = after_eal_flag && !token.contains('=');
            after_eal_flag = false;
            if eal_only || token.starts_with('-') || eal_value {
                if token == "--" && !eal_only {
                    eal_only = true;
                } else {
                    // `-m 256`: a flag without `=` may take the next token as its value.
                    after_eal_flag = token.starts_with('-') && !token.contains('=');
                    eal.push(token.to_string());
                }
            } else {
                let (k, v) = token
                    .split_once('=')
                    .ok_or_else(|| invalid(format!("`{token}`: expected key=value")))?;
                keys.push((k, v));
            }
        }
        let ip = keys
            .iter()
            .find(|(k, _)| *k == "ip")
            .map(|(_, v)| *v)
            .ok_or_else(|| invalid("ip=A.B.C.D/len is required".into()))?;
        let (ip, prefix_len) = parse_cidr(ip)?;
        let mut c = DpdkConfig::new(ip, prefix_len, eal);
        for (k, v) in keys {
            match k {
                "ip" => {}
                "gateway" => c.gateway = Some(num(k, v)?),
                "port" => c.port = num(k, v)?,
                "queues" => c.queues = num(k, v)?,
                "mtu" => c.mtu = num(k, v)?,
                "mbufs" => c.mbufs_per_queue = num(k, v)?,
                "rx_desc" => c.rx_desc = num(k, v)?,
                "tx_desc" => c.tx_desc = num(k, v)?,
                "tcp_buffer" => c.tcp_buffer = num(k, v)?,
                "listen_pool" => c.listen_pool = num(k, v)?,
                "listen_pool_max" => c.listen_pool_max = num(k, v)?,
                "syn_timeout_ms" => c.syn_timeout = millis(num(k, v)?),
                "link_wait_ms" => c.link_wait = Duration::from_millis(num(k, v)?),
                "hw_rss" => c.hw_rss = flag(k, v)?,
                "tx_checksum" => c.tx_checksum = flag(k, v)?,
                "keepalive_ms" => c.keepalive = millis(num(k, v)?),
                "tcp_timeout_ms" => c.tcp_timeout = millis(num(k, v)?),
                "ack_delay_ms" => c.ack_delay = millis(num(k, v)?),
                _ => return Err(invalid(format!("unknown dpdk option `{k}`"))),
            }
        }
        c.validate()?;
        Ok(c)
    }

    /// Check ranges (queues, MTU, buffer sizes).
    pub fn validate(&self) -> io::Result<()> {
        if self.queues == 0 || self.queues > 64 {
            return Err(invalid(format!("queues={} (1..=64)", self.queues)));
        }
        if !(576..=9000).contains(&self.mtu) {
            return Err(invalid(format!("mtu={} (576..=9000)", self.mtu)));
        }
        if self.prefix_len > 32 {
            return Err(invalid(format!("prefix length /{}", self.prefix_len)));
        }
        if !(4096..=64 << 20).contains(&self.tcp_buffer) {
            return Err(invalid(format!(
                "tcp_buffer={} (4 KiB..=64 MiB)",
                self.tcp_buffer
            )));
        }
        if self.listen_pool == 0 || self.listen_pool > self.listen_pool_max {
            return Err(invalid(format!(
                "listen_pool={} listen_pool_max={} (1 <= listen_pool <= listen_pool_max)",
                self.listen_pool, self.listen_pool_max
            )));
        }
        if self.listen_pool_max > 65536 {
            return Err(invalid(format!(
                "listen_pool_max={} (at most 65536)",
                self.listen_pool_max
            )));
        }
        if self.mbufs_per_queue < 1024 {
            return Err(invalid(format!(
                "mbufs={} (at least 1024)",
                self.mbufs_per_queue
            )));
        }
        Ok(())
    }

    /// The EAL arguments with msgr's defaults added (see the module docs).
    pub fn effective_eal_args(&self) -> Vec<String> {
        let mut args = self.eal_args.clone();
        let has = |args: &[String], prefixes: &[&str]| {
            args.iter().any(|a| {
                prefixes
                    .iter()
                    .any(|p| a == p || a.starts_with(&format!("{p}=")))
            })
        };
        let lcores_given =
            has(&args, &["-c", "--lcores"]) || args.iter().any(|a| a.starts_with("-l"));
        if !lcores_given {
            args.push("-l".into());
            args.push("0".into());
        }
        if !has(&args, &["--telemetry", "--no-telemetry"]) {
            args.push("--no-telemetry".into());
        }
        if !has(&args, &["--file-prefix", "--in-memory", "--no-shconf"]) {
            args.push("--no-shconf".into());
            args.push(format!("--file-prefix=msgr-{}", std::process::id()));
        }
        args
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn num<T: FromStr>(key: &str, value: &str) -> io::Result<T> {
    value
        .parse()
        .map_err(|_| invalid(format!("{key}={value}: not a valid value")))
}

fn flag(key: &str, value: &str) -> io::Result<bool> {
    match value {
        "1" | "true" | "on" | "yes" => Ok(true),
        "0" | "false" | "off" | "no" => Ok(false),
        _ => Err(invalid(format!("{key}={value}: expected 0 or 1"))),
    }
}

fn millis(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

fn parse_cidr(s: &str) -> io::Result<(Ipv4Addr, u8)> {
    let (ip, len) = s.split_once('/').unwrap_or((s, "24"));
    Ok((num("ip", ip)?, num("ip prefix", len)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys_and_eal_arguments() {
        let c = DpdkConfig::parse(
            "ip=10.9.0.1/24 queues=2 mtu=9000 ack_delay_ms=0 --no-huge --no-pci -m 512 -- --vdev=net_memif0,role=server",
        )
        .unwrap();
        assert_eq!(c.ip, Ipv4Addr::new(10, 9, 0, 1));
        assert_eq!(c.prefix_len, 24);
        assert_eq!(c.queues, 2);
        assert_eq!(c.mtu, 9000);
        assert_eq!(c.ack_delay, None);
        assert_eq!((c.listen_pool, c.listen_pool_max), (16, 256));
        assert_eq!(c.syn_timeout, Some(Duration::from_secs(5)));
        let syn =
            DpdkConfig::parse("ip=10.0.0.1 listen_pool=4 listen_pool_max=64 syn_timeout_ms=0")
                .unwrap();
        assert_eq!((syn.listen_pool, syn.listen_pool_max), (4, 64));
        assert_eq!(syn.syn_timeout, None);
        assert_eq!(
            c.eal_args,
            [
                "--no-huge",
                "--no-pci",
                "-m",
                "512",
                "--vdev=net_memif0,role=server"
            ]
        );
        let eal = c.effective_eal_args();
        assert!(eal.contains(&"--no-shconf".to_string()));
        assert!(eal.iter().any(|a| a.starts_with("--file-prefix=msgr-")));
        assert_eq!(eal[5..8], ["-l", "0", "--no-telemetry"]);
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            "queues=2",
            "ip=10.0.0.1 queues=0",
            "ip=10.0.0.1 bogus=1",
            "ip=10.0.0.300",
            "ip=10.0.0.1 mtu=100",
            "ip=10.0.0.1 hw_rss=maybe",
            "ip=10.0.0.1 stray",
            "ip=10.0.0.1 listen_pool=0",
            "ip=10.0.0.1 listen_pool=64 listen_pool_max=32",
        ] {
            assert!(DpdkConfig::parse(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn user_lcores_and_prefix_are_kept() {
        let c = DpdkConfig::parse("ip=10.0.0.1/8 --lcores=0@0 --file-prefix=a").unwrap();
        assert_eq!(
            c.effective_eal_args(),
            ["--lcores=0@0", "--file-prefix=a", "--no-telemetry"]
        );
    }
}
