//! `--stack rdma`: its options (`--rdma-*`), the checks on them, the device and the address a server
//! listens on, and the stack built from them.
//!
//! The stack itself (`stack::rdma`, cargo feature `rdma`) is only built with the feature; without it
//! `--stack rdma` is a usage error naming the feature (see [`super::StackKind::check_built`]). The options
//! are parsed either way, so a build without the feature still explains itself.
//!
//! rdma_cm resolves routes through the IP layer and cannot use 127.0.0.1 over a RoCE device, so a server
//! listens on an address of the device's network interface: `--rdma-addr`, else `$SOFTROCE_ADDR`
//! (`scripts/softroce-vm.sh` exports it), else the IPv4 address inside the device's RoCE v2 GID at
//! `--rdma-gid-index` (read from sysfs). `msgr bench` spins its workers without sleeping on this stack
//! ([`tune`]: the event loop's idle back-off is zero), as perftest's tools do, so the comparison with
//! them is like with like.

use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use msgr::event::WorkerConfig;

use super::StackError;

/// Where the kernel lists verbs devices.
pub const SYSFS_INFINIBAND: &str = "/sys/class/infiniband";
/// Environment variable naming the address when `--rdma-addr` is not given.
pub const ADDR_ENV: &str = "SOFTROCE_ADDR";
/// Default `--rdma-gid-index`: RoCE v2 over IPv4 on soft-RoCE (index 0 is the link-local RoCE v1 GID).
pub const DEFAULT_GID_INDEX: i32 = 1;
/// The device port used (1-based; RoCE devices have one).
pub const PORT: u8 = 1;

/// The `--rdma-*` options (only with `--stack rdma`).
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct RdmaArgs {
    /// --stack rdma: the verbs device, e.g. rxe0 or mlx5_0 [default: the first one].
    #[arg(long = "rdma-device", id = "rdma_device", value_name = "NAME")]
    pub device: Option<String>,

    /// --stack rdma: the device's GID index [default: 1, RoCE v2 over IPv4 on soft-RoCE].
    #[arg(long = "rdma-gid-index", id = "rdma_gid_index", value_name = "N",
          value_parser = clap::value_parser!(i32).range(0..=65_535))]
    pub gid_index: Option<i32>,

    /// --stack rdma: the IP the server listens on, an address of the device's network interface (not
    /// 127.0.0.1) [default: $SOFTROCE_ADDR, else the IPv4 address in the device's GID].
    #[arg(long = "rdma-addr", id = "rdma_addr", value_name = "IP")]
    pub addr: Option<IpAddr>,

    /// --stack rdma: connection set-up and wire format: msgr (rdma_cm, msgr's own, msgr peers only) or
    /// ceph (Ceph's async+rdma: a TCP side channel to the peer's msgr2 address, then plain SENDs; talks
    /// to Ceph daemons and clients running ms_type = async+rdma) [default: msgr].
    #[arg(long = "rdma-wire", id = "rdma_wire", value_enum, value_name = "WIRE")]
    pub wire: Option<Wire>,

    /// --rdma-wire ceph: the peer's receive buffer size, Ceph's ms_async_rdma_buffer_size (not on the
    /// wire, so both sides must agree; no SEND is larger) [default: 128k].
    #[arg(long = "rdma-buffer-size", id = "rdma_buffer_size", value_name = "BYTES",
          value_parser = parse_buffer_size)]
    pub buffer_size: Option<u32>,
}

/// `--rdma-wire`: see [`RdmaArgs::wire`].
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Wire {
    /// msgr's own (rdma_cm, credits in immediate data).
    #[default]
    Msgr,
    /// Ceph 16's async+rdma (TCP side channel with queue-pair records, plain SENDs).
    Ceph,
}

impl Wire {
    pub fn name(self) -> &'static str {
        match self {
            Wire::Msgr => "msgr",
            Wire::Ceph => "ceph",
        }
    }
}

/// Ceph's default ms_async_rdma_buffer_size.
pub const DEFAULT_CEPH_BUFFER_SIZE: u32 = 128 * 1024;

fn parse_buffer_size(s: &str) -> Result<u32, String> {
    let n = crate::bench::size::parse_size(s)?;
    u32::try_from(n)
        .ok()
        .filter(|n| (4096..=1 << 30).contains(n))
        .ok_or_else(|| format!("{s:?}: expected 4k..=1g"))
}

impl RdmaArgs {
    /// Whether any `--rdma-*` option was given.
    pub fn given(&self) -> bool {
        *self != RdmaArgs::default()
    }
}

/// What an RDMA run uses: the device (`None`: the first), GID index, and the listening address (`None`
/// for a client of a server in another process).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub device: Option<String>,
    pub gid_index: i32,
    pub addr: Option<IpAddr>,
    pub wire: Wire,
    /// The peer's receive buffer size on Ceph's wire.
    pub buffer_size: u32,
}

/// The run's device, GID index and (with `listen`) the address to listen on; see the module docs for
/// where the address comes from. `env_addr` is `$SOFTROCE_ADDR`, `sysfs` the infiniband class directory.
pub fn resolve(
    args: &RdmaArgs,
    listen: bool,
    env_addr: Option<&str>,
    sysfs: &Path,
) -> Result<Target, StackError> {
    let gid_index = args.gid_index.unwrap_or(DEFAULT_GID_INDEX);
    let wire = args.wire.unwrap_or_default();
    if args.buffer_size.is_some() && wire != Wire::Ceph {
        return Err(StackError::Usage(
            "--rdma-buffer-size is the Ceph peer's receive buffer size: it goes with --rdma-wire ceph"
                .into(),
        ));
    }
    let mut target = Target {
        device: args.device.clone(),
        gid_index,
        addr: None,
        wire,
        buffer_size: args.buffer_size.unwrap_or(DEFAULT_CEPH_BUFFER_SIZE),
    };
    if !listen {
        if args.addr.is_some() {
            return Err(StackError::Usage(
                "--rdma-addr is where a benchmark server listens (`msgr bench`, `bench serve` \
                 without --bind); this command's addresses are its own (ADDR, or --bind)"
                    .into(),
            ));
        }
        return Ok(target);
    }
    let addr = match (args.addr, env_addr.map(str::trim).filter(|s| !s.is_empty())) {
        (Some(a), _) => a,
        (None, Some(env)) => env.parse().map_err(|e| {
            StackError::Usage(format!("${ADDR_ENV} {env:?}: {e}; pass --rdma-addr IP"))
        })?,
        (None, None) => {
            let device = match &args.device {
                Some(d) => d.clone(),
                None => first_device(sysfs).ok_or_else(|| {
                    StackError::Failed(format!(
                        "no RDMA device ({} is empty or missing): load rdma_rxe and add one \
                         (scripts/softroce.sh), or run inside scripts/softroce-vm.sh",
                        sysfs.display()
                    ))
                })?,
            };
            let addr = gid_addr(sysfs, &device, gid_index).ok_or_else(|| {
                StackError::Usage(format!(
                    "cannot tell which IP address {device} (port {PORT}, GID index {gid_index}) \
                     has: pass --rdma-addr IP, an address of its network interface (127.0.0.1 \
                     does not work over rdma_cm), or set ${ADDR_ENV}"
                ))
            })?;
            // Name the device that was looked at, so the stack opens the same one.
            target.device = Some(device);
            addr
        }
    };
    if addr.is_loopback() || addr.is_unspecified() {
        return Err(StackError::Usage(format!(
            "--stack rdma cannot listen on {addr}: rdma_cm needs an address of the RDMA device's \
             network interface (--rdma-addr)"
        )));
    }
    target.addr = Some(addr);
    Ok(target)
}

/// The first verbs device by name under `sysfs`.
pub fn first_device(sysfs: &Path) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(sysfs)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names.into_iter().next()
}

/// The IP address in GID `index` of `device`'s port [`PORT`], if that GID carries one.
pub fn gid_addr(sysfs: &Path, device: &str, index: i32) -> Option<IpAddr> {
    let path = sysfs
        .join(device)
        .join("ports")
        .join(PORT.to_string())
        .join("gids")
        .join(index.to_string());
    addr_of_gid(&std::fs::read_to_string(path).ok()?)
}

/// The IP address a RoCE v2 GID stands for: the IPv4 address of an IPv4-mapped GID, or a global IPv6
/// GID itself. Empty, link-local (RoCE v1, from the MAC) and unparsable GIDs have none.
pub fn addr_of_gid(gid: &str) -> Option<IpAddr> {
    let v6: Ipv6Addr = gid.trim().parse().ok()?;
    if let Some(v4) = v6.to_ipv4_mapped() {
        return (!v4.is_unspecified()).then_some(IpAddr::V4(v4));
    }
    let link_local = v6.segments()[0] & 0xffc0 == 0xfe80;
    (!v6.is_unspecified() && !link_local).then_some(IpAddr::V6(v6))
}

/// Worker tuning on this stack: spin without ever sleeping, as perftest does.
pub fn tune(wc: &mut WorkerConfig) {
    wc.loop_config.idle_backoff = Duration::ZERO;
}

/// A stack for one messenger on `target`'s device.
#[cfg(feature = "rdma")]
pub fn stack(target: &Target) -> Result<msgr::stack::rdma::RdmaStack, String> {
    msgr::stack::rdma::RdmaStack::new(config(target)).map_err(|e| format!("RDMA device: {e}"))
}

/// The stack configuration for `target` (device, GID index, wire and its buffer size).
#[cfg(feature = "rdma")]
pub fn config(target: &Target) -> msgr::stack::rdma::RdmaConfig {
    use msgr::stack::rdma::{RdmaConfig, RdmaWire};
    let mut config = RdmaConfig::new(target.device.clone(), target.gid_index, PORT);
    config.ceph_buffer_size = target.buffer_size;
    let wire = match target.wire {
        Wire::Msgr => RdmaWire::Msgr,
        Wire::Ceph => RdmaWire::Ceph,
    };
    config.with_wire(wire)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn args(device: Option<&str>, addr: Option<&str>) -> RdmaArgs {
        RdmaArgs {
            device: device.map(str::to_string),
            gid_index: None,
            addr: addr.map(|a| a.parse().unwrap()),
            wire: None,
            buffer_size: None,
        }
    }

    /// A fake sysfs with `rxe0` whose GIDs 0 and 1 are the given texts.
    fn fake_sysfs(tag: &str, gids: &[&str]) -> std::path::PathBuf {
        let root = std::env::temp_dir().join(format!("msgr-rdma-{}-{tag}", std::process::id()));
        let dir = root.join("rxe0/ports/1/gids");
        std::fs::create_dir_all(&dir).unwrap();
        for (i, g) in gids.iter().enumerate() {
            std::fs::write(dir.join(i.to_string()), format!("{g}\n")).unwrap();
        }
        root
    }

    #[test]
    fn gid_texts_map_to_addresses() {
        assert_eq!(
            addr_of_gid("0000:0000:0000:0000:0000:ffff:c0a8:4d01\n"),
            Some(IpAddr::V4(Ipv4Addr::new(192, 168, 77, 1)))
        );
        assert_eq!(addr_of_gid("fe80:0000:0000:0000:5054:00ff:fe12:3456"), None);
        assert_eq!(addr_of_gid("0000:0000:0000:0000:0000:0000:0000:0000"), None);
        assert_eq!(addr_of_gid("junk"), None);
        assert_eq!(
            addr_of_gid("2001:0db8:0000:0000:0000:0000:0000:0001"),
            Some("2001:db8::1".parse().unwrap())
        );
    }

    #[test]
    fn address_comes_from_option_then_env_then_gid() {
        let sysfs = fake_sysfs(
            "order",
            &[
                "fe80:0000:0000:0000:5054:00ff:fe12:3456",
                "0000:0000:0000:0000:0000:ffff:c0a8:4d01",
            ],
        );
        let from = |a: &RdmaArgs, env: Option<&str>| resolve(a, true, env, &sysfs).unwrap();
        let t = from(&args(None, Some("10.0.0.5")), Some("10.9.9.9"));
        assert_eq!(t.addr, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(t.device, None);
        let t = from(&args(None, None), Some("10.9.9.9"));
        assert_eq!(t.addr, Some("10.9.9.9".parse().unwrap()));
        let t = from(&args(None, None), None);
        assert_eq!(t.addr, Some("192.168.77.1".parse().unwrap()));
        assert_eq!(t.device.as_deref(), Some("rxe0"));
        assert_eq!(t.gid_index, DEFAULT_GID_INDEX);

        // GID 0 is link-local: no address, and the error says what to pass.
        let mut a = args(None, None);
        a.gid_index = Some(0);
        let e = resolve(&a, true, None, &sysfs).unwrap_err();
        assert!(
            matches!(&e, StackError::Usage(m) if m.contains("--rdma-addr")),
            "{e}"
        );
        // An unknown device has no GIDs either.
        let e = resolve(&args(Some("mlx5_9"), None), true, None, &sysfs).unwrap_err();
        assert!(e.to_string().contains("mlx5_9"), "{e}");
        let _ = std::fs::remove_dir_all(&sysfs);
    }

    #[test]
    fn bad_addresses_and_misplaced_options_are_usage_errors() {
        let none = Path::new("/nonexistent-msgr-sysfs");
        for (a, env) in [
            (args(None, Some("127.0.0.1")), None),
            (args(None, Some("0.0.0.0")), None),
            (args(None, None), Some("not-an-ip")),
        ] {
            let e = resolve(&a, true, env, none).unwrap_err();
            assert!(matches!(e, StackError::Usage(_)), "{a:?} {env:?}: {e}");
        }
        // No device at all: a failure naming how to get one.
        let e = resolve(&args(None, None), true, None, none).unwrap_err();
        assert!(e.to_string().contains("no RDMA device"), "{e}");
        // A client of another process's server takes no listening address.
        assert!(resolve(&args(None, Some("10.0.0.5")), false, None, none).is_err());
        let t = resolve(&args(Some("rxe0"), None), false, None, none).unwrap();
        assert_eq!((t.device.as_deref(), t.addr), (Some("rxe0"), None));
        assert!(args(Some("rxe0"), None).given());
        assert!(!RdmaArgs::default().given());
        // The Ceph peer's buffer size only goes with Ceph's wire; the wire defaults to msgr's.
        let mut a = args(Some("rxe0"), None);
        a.buffer_size = Some(65536);
        assert!(resolve(&a, false, None, none).is_err());
        a.wire = Some(Wire::Ceph);
        let t = resolve(&a, false, None, none).unwrap();
        assert_eq!((t.wire, t.buffer_size), (Wire::Ceph, 65536));
        let t = resolve(&args(None, None), false, None, none).unwrap();
        assert_eq!(
            (t.wire, t.buffer_size),
            (Wire::Msgr, DEFAULT_CEPH_BUFFER_SIZE)
        );
        assert!(parse_buffer_size("128k").is_ok());
        assert!(parse_buffer_size("1").is_err());
        assert!(a.given());
    }
}
