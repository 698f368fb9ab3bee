//! The network stack a command runs on: `--stack posix|dpdk|rdma` with the stacks' own options, checked
//! together, and the one place that turns them into a concrete [`NetworkStack`].
//!
//! Owns: [`StackKind`] (the `--stack` values every command shares; `msgr bench` adds its in-memory pair
//! on top), [`StackOptions`] (`--rdma-*`, `--dpdk-args`), [`check`] (the usage errors: a stack this build
//! lacks, options of another stack), [`StackChoice`] (a checked choice with what its stack needs resolved:
//! the RDMA device and address, the DPDK configuration) and [`StackChoice::run`], which calls a
//! [`StackFn`], a function generic over the stack type, with a [`Stacks`] that builds the concrete stack.
//! `Messenger<N>` is generic over `N: NetworkStack`, so each command is written once for every stack.
//!
//! Used by `msgr bench` (in-process server and `bench run ADDR`), `bench serve`, `msgr serve`, `msgr ping`
//! and `msgr recon` (whose posix probe needs no messenger: it only checks the options here).
//! `msgr bench --stack dpdk` without ADDR builds its link itself (`bench::dpdk`) with [`dpdk::build`].
//!
//! Invariants: a [`StackChoice`] exists only for a stack compiled into this build (its variants are
//! cfg-gated: no placeholder types) and only after [`check`] passed; a DPDK stack is built at most once
//! per process (the EAL initialises once).

#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod rdma;

use std::net::IpAddr;

use msgr::stack::posix::PosixStack;
use msgr::stack::NetworkStack;

/// Exit status of a stack that could not be built.
pub const EXIT_FAIL: i32 = 1;
/// Exit status of bad usage.
pub const EXIT_USAGE: i32 = 2;

/// `--stack`: the network stacks a messenger runs over. Every variant exists in every build, so the flag
/// parses everywhere; one whose cargo feature is missing is a usage error naming the build
/// ([`StackKind::check_built`]).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StackKind {
    /// Kernel TCP.
    #[default]
    Posix,
    /// DPDK: userspace TCP on poll-mode queues (cargo feature `dpdk`), configured by --dpdk-args.
    Dpdk,
    /// RDMA: RC queue pairs through libibverbs (cargo feature `rdma`): --rdma-device, --rdma-wire, ….
    Rdma,
}

impl StackKind {
    pub fn name(self) -> &'static str {
        match self {
            StackKind::Posix => "posix",
            StackKind::Dpdk => "dpdk",
            StackKind::Rdma => "rdma",
        }
    }

    /// Whether this build has the stack.
    pub fn is_built(self) -> bool {
        match self {
            StackKind::Posix => true,
            StackKind::Dpdk => cfg!(feature = "dpdk"),
            StackKind::Rdma => cfg!(feature = "rdma"),
        }
    }

    /// A usage error naming the build to make when this build lacks the stack.
    pub fn check_built(self) -> Result<(), StackError> {
        if self.is_built() {
            return Ok(());
        }
        let needs = match self {
            StackKind::Posix => "",
            StackKind::Dpdk => " (DPDK 22.11+ development files, found by pkg-config)",
            StackKind::Rdma => " (libibverbs, librdmacm)",
        };
        let name = self.name();
        Err(StackError::Usage(format!(
            "--stack {name} needs msgr built with the `{name}` cargo feature{needs}: \
             cargo build --release --features {name}"
        )))
    }
}

/// The stacks' own options; each goes with its `--stack` only ([`check`]).
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct StackOptions {
    #[command(flatten)]
    pub rdma: rdma::RdmaArgs,

    /// --stack dpdk: the stack's configuration in one string: `ip=A.B.C.D/len`, key=value options
    /// (queues=, mtu=, …) and EAL options with the device (--vdev=…). `msgr bench` without ADDR
    /// generates them for its link and merges these in (see --dpdk-link).
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub dpdk_args: Option<String>,
}

/// Why a stack cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StackError {
    /// Bad usage, or a stack this build does not have: exit status 2.
    #[error("{0}")]
    Usage(String),
    /// The stack could not be built (no device, port failed): exit status 1.
    #[error("{0}")]
    Failed(String),
}

impl StackError {
    pub fn exit_code(&self) -> i32 {
        match self {
            StackError::Usage(_) => EXIT_USAGE,
            StackError::Failed(_) => EXIT_FAIL,
        }
    }
}

/// Checks `--stack kind` against the options given: the stack must be in this build, and no option of
/// another stack may be there.
pub fn check(kind: StackKind, options: &StackOptions) -> Result<(), StackError> {
    kind.check_built()?;
    check_foreign(Some(kind), kind.name(), options)
}

/// Checks that none of the stacks' options is given with a `--stack` that is none of them (`said`: what
/// `--stack` was, e.g. the bench's `mem`).
pub fn check_none(said: &str, options: &StackOptions) -> Result<(), StackError> {
    check_foreign(None, said, options)
}

fn check_foreign(
    kind: Option<StackKind>,
    said: &str,
    options: &StackOptions,
) -> Result<(), StackError> {
    if kind != Some(StackKind::Rdma) && options.rdma.given() {
        return Err(StackError::Usage(format!(
            "--rdma-device, --rdma-gid-index, --rdma-addr, --rdma-wire and --rdma-buffer-size go \
             with --stack rdma, not --stack {said}"
        )));
    }
    if kind != Some(StackKind::Dpdk) && options.dpdk_args.is_some() {
        return Err(StackError::Usage(format!(
            "--dpdk-args goes with --stack dpdk, not --stack {said}"
        )));
    }
    Ok(())
}

/// What a command asks of its stack, for [`StackChoice::new`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Role {
    /// The command's server listens on the RDMA address from --rdma-addr, $SOFTROCE_ADDR or the device's
    /// GID (a benchmark server without --bind); otherwise --rdma-addr is refused.
    pub listens_on_rdma_addr: bool,
    /// The worker threads the command runs, which a DPDK stack's `queues=` must equal (one poll-mode
    /// worker per queue pair); `None`: as many as the stack has queues ([`StackChoice::fixed_workers`]).
    pub workers: Option<usize>,
}

/// A stack chosen on the command line, checked, with its options resolved; [`StackChoice::run`] builds it.
#[derive(Debug, Clone)]
pub enum StackChoice {
    Posix,
    #[cfg(feature = "dpdk")]
    Dpdk(msgr::stack::dpdk::DpdkConfig),
    #[cfg(feature = "rdma")]
    Rdma(rdma::Target),
}

impl StackChoice {
    /// [`check`]s `kind` against `options`, then resolves what the stack needs: `--stack dpdk` its
    /// configuration from --dpdk-args (queues agreeing with `role.workers`), `--stack rdma` its device
    /// and, for a server listening on it, its address (see [`rdma::resolve`]).
    // `role` only matters to the kernel-bypass stacks.
    #[cfg_attr(not(any(feature = "dpdk", feature = "rdma")), allow(unused_variables))]
    pub fn new(kind: StackKind, options: &StackOptions, role: Role) -> Result<Self, StackError> {
        check(kind, options)?;
        match kind {
            StackKind::Posix => Ok(StackChoice::Posix),
            #[cfg(feature = "dpdk")]
            StackKind::Dpdk => {
                let args = options.dpdk_args.as_deref().ok_or_else(|| {
                    StackError::Usage(
                        "--stack dpdk needs --dpdk-args (ip=…, EAL options, --vdev=…)".into(),
                    )
                })?;
                dpdk::config(args, role.workers).map(StackChoice::Dpdk)
            }
            #[cfg(feature = "rdma")]
            StackKind::Rdma => {
                let env = std::env::var(rdma::ADDR_ENV).ok();
                rdma::resolve(
                    &options.rdma,
                    role.listens_on_rdma_addr,
                    env.as_deref(),
                    std::path::Path::new(rdma::SYSFS_INFINIBAND),
                )
                .map(StackChoice::Rdma)
            }
            // check() refused the stacks this build lacks.
            #[allow(unreachable_patterns)]
            other => Err(StackError::Usage(format!(
                "--stack {} is not in this build",
                other.name()
            ))),
        }
    }

    pub fn kind(&self) -> StackKind {
        match self {
            StackChoice::Posix => StackKind::Posix,
            #[cfg(feature = "dpdk")]
            StackChoice::Dpdk(_) => StackKind::Dpdk,
            #[cfg(feature = "rdma")]
            StackChoice::Rdma(_) => StackKind::Rdma,
        }
    }

    /// The worker threads a messenger on this stack must run, if the stack decides: DPDK's `queues=`.
    pub fn fixed_workers(&self) -> Option<usize> {
        match self {
            #[cfg(feature = "dpdk")]
            StackChoice::Dpdk(config) => Some(usize::from(config.queues)),
            _ => None,
        }
    }

    /// The stack's own address, where a server on it listens unless told otherwise: DPDK's `ip=`, or
    /// the resolved RDMA address; `None` on posix (and on RDMA without a listening address).
    pub fn own_ip(&self) -> Option<IpAddr> {
        match self {
            StackChoice::Posix => None,
            #[cfg(feature = "dpdk")]
            StackChoice::Dpdk(config) => Some(IpAddr::V4(config.ip)),
            #[cfg(feature = "rdma")]
            StackChoice::Rdma(target) => target.addr,
        }
    }

    /// Whether a kernel TCP connect to a peer's address says anything about that peer (refused, timed
    /// out): on posix, and on RDMA with Ceph's wire (its side channel is TCP to that very address); not
    /// over DPDK (its addresses are not the kernel's) nor rdma_cm.
    pub fn kernel_tcp_reaches_peer(&self) -> bool {
        match self {
            StackChoice::Posix => true,
            #[cfg(feature = "dpdk")]
            StackChoice::Dpdk(_) => false,
            #[cfg(feature = "rdma")]
            StackChoice::Rdma(target) => target.wire == rdma::Wire::Ceph,
        }
    }

    /// The DPDK configuration string given (`--dpdk-args`), for reports.
    pub fn dpdk_args<'a>(&self, options: &'a StackOptions) -> Option<&'a str> {
        (self.kind() == StackKind::Dpdk)
            .then_some(options.dpdk_args.as_deref())
            .flatten()
    }

    /// Calls `f` with a [`Stacks`] that builds this stack: the one switch from a choice to a type.
    pub fn run<F: StackFn>(&self, f: F) -> F::Output {
        match self {
            StackChoice::Posix => f.call(Stacks::new(self, || Ok((PosixStack::new(), None)))),
            #[cfg(feature = "dpdk")]
            StackChoice::Dpdk(config) => {
                let mut built = false;
                f.call(Stacks::new(self, move || {
                    if std::mem::replace(&mut built, true) {
                        return Err(StackError::Failed(
                            "the dpdk stack exists once per process (the EAL initialises once)"
                                .into(),
                        ));
                    }
                    let stack = dpdk::build(config.clone())?;
                    let driver = stack.driver().to_string();
                    Ok((stack, Some(driver)))
                }))
            }
            #[cfg(feature = "rdma")]
            StackChoice::Rdma(target) => f.call(Stacks::new(self, move || {
                let stack = rdma::stack(target).map_err(StackError::Failed)?;
                let device = format!("{} ({} wire)", stack.device_info().name, target.wire.name());
                Ok((stack, Some(device)))
            })),
        }
    }
}

/// A function over whichever stack was chosen: [`StackChoice::run`] calls it with the concrete type.
pub trait StackFn {
    type Output;
    fn call<N: NetworkStack>(self, stacks: Stacks<'_, N>) -> Self::Output;
}

/// One value (stack instance, device) the maker returns.
type Made<N> = Result<(N, Option<String>), StackError>;

/// Builds the chosen stack, one instance per messenger: any number on posix and RDMA (each opens the
/// device), one per process on DPDK.
pub struct Stacks<'a, N> {
    choice: &'a StackChoice,
    make: Box<dyn FnMut() -> Made<N> + 'a>,
    device: Option<String>,
}

impl<'a, N: NetworkStack> Stacks<'a, N> {
    fn new(choice: &'a StackChoice, make: impl FnMut() -> Made<N> + 'a) -> Self {
        Stacks {
            choice,
            make: Box::new(make),
            device: None,
        }
    }

    pub fn choice(&self) -> &StackChoice {
        self.choice
    }

    /// A new instance of the stack.
    pub fn build(&mut self) -> Result<N, StackError> {
        let (stack, device) = (self.make)()?;
        self.device = device;
        Ok(stack)
    }

    /// What the last stack built runs on: RDMA `rxe0 (msgr wire)`, DPDK the port's driver
    /// (`net_memif`); `None` on posix or before [`Stacks::build`].
    pub fn device(&self) -> Option<&str> {
        self.device.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rdma_device(name: &str) -> StackOptions {
        let mut o = StackOptions::default();
        o.rdma.device = Some(name.into());
        o
    }

    #[test]
    fn options_of_another_stack_are_usage_errors() {
        let dpdk = StackOptions {
            dpdk_args: Some("ip=10.0.0.1/24".into()),
            ..StackOptions::default()
        };
        for (kind, options, needle) in [
            (
                StackKind::Posix,
                rdma_device("rxe0"),
                "go with --stack rdma",
            ),
            (StackKind::Posix, dpdk.clone(), "goes with --stack dpdk"),
            (StackKind::Rdma, dpdk.clone(), "goes with --stack dpdk"),
            (StackKind::Dpdk, rdma_device("rxe0"), "go with --stack rdma"),
        ] {
            if !kind.is_built() {
                continue;
            }
            let e = check(kind, &options).unwrap_err();
            assert!(
                matches!(&e, StackError::Usage(m) if m.contains(needle)),
                "{kind:?}: {e}"
            );
            assert!(e.to_string().contains(kind.name()), "{e}");
        }
        let e = check_none("mem", &dpdk).unwrap_err();
        assert!(e.to_string().ends_with("not --stack mem"), "{e}");
        assert!(check(StackKind::Posix, &StackOptions::default()).is_ok());
        assert!(check_none("mem", &StackOptions::default()).is_ok());
    }

    #[test]
    fn a_stack_missing_from_the_build_names_the_feature() {
        for kind in [StackKind::Dpdk, StackKind::Rdma] {
            match kind.check_built() {
                Ok(()) => assert!(kind.is_built()),
                Err(e) => {
                    assert_eq!(e.exit_code(), EXIT_USAGE);
                    let hint = format!("cargo build --release --features {}", kind.name());
                    assert!(e.to_string().contains(&hint), "{e}");
                    // The flag parses; choosing it is the error, whatever else is given.
                    let e = StackChoice::new(kind, &StackOptions::default(), Role::default())
                        .unwrap_err();
                    assert!(e.to_string().contains(&hint), "{e}");
                }
            }
        }
        assert!(StackKind::Posix.check_built().is_ok());
    }

    #[test]
    fn the_posix_choice_builds_posix_stacks() {
        struct Name;
        impl StackFn for Name {
            type Output = Result<(&'static str, Option<String>), StackError>;
            fn call<N: NetworkStack>(self, mut stacks: Stacks<'_, N>) -> Self::Output {
                let a = stacks.build()?;
                let b = stacks.build()?;
                assert_eq!(a.name(), b.name());
                Ok((a.name(), stacks.device().map(str::to_string)))
            }
        }
        let choice =
            StackChoice::new(StackKind::Posix, &StackOptions::default(), Role::default()).unwrap();
        assert_eq!(choice.kind(), StackKind::Posix);
        assert!(choice.kernel_tcp_reaches_peer());
        assert_eq!((choice.fixed_workers(), choice.own_ip()), (None, None));
        assert_eq!(choice.run(Name).unwrap(), ("posix", None));
    }
}
