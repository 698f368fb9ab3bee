//! The open-file limit a benchmark needs: each connection is a socket on each end in this process, so a
//! 10,000-connection fan-in needs some 20,000 descriptors where the usual soft limit is 1,024. The bench
//! raises the soft limit (RLIMIT_NOFILE) up to the hard one, through rustix's safe wrapper, and says so;
//! if the hard limit is too low it raises that too when it may (CAP_SYS_RESOURCE, e.g. root), else it
//! stops before the run with an error naming the limit.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Descriptors besides the connections: epoll, eventfds, listeners, files, stdio.
pub const SPARE_FDS: u64 = 64;

/// What [`ensure_open_files`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit now in effect (`None`: unlimited).
    pub limit: Option<u64>,
    /// It was raised from this.
    pub raised_from: Option<u64>,
    /// The hard limit was raised too, from this.
    pub hard_raised_from: Option<u64>,
}

/// Descriptors `connections` connections need with `sockets_each` sockets in this process.
pub fn needed(connections: usize, sockets_each: u64) -> u64 {
    (connections as u64)
        .saturating_mul(sockets_each)
        .saturating_add(SPARE_FDS)
}

/// Makes sure the soft RLIMIT_NOFILE is at least `needed`, raising it (up to the hard limit) if not.
pub fn ensure_open_files(needed: u64) -> Result<OpenFiles, String> {
    let now = getrlimit(Resource::Nofile);
    let fits = |l: Option<u64>| l.is_none_or(|l| l >= needed);
    if fits(now.current) {
        return Ok(OpenFiles {
            limit: now.current,
            raised_from: None,
            hard_raised_from: None,
        });
    }
    if !fits(now.maximum) {
        // Only with CAP_SYS_RESOURCE; without it the kernel says EPERM.
        let both = Rlimit {
            current: Some(needed),
            maximum: Some(needed),
        };
        if setrlimit(Resource::Nofile, both).is_ok() {
            return Ok(OpenFiles {
                limit: Some(needed),
                raised_from: now.current,
                hard_raised_from: now.maximum,
            });
        }
        return Err(format!(
            "this run needs about {needed} open files, but the hard limit (RLIMIT_NOFILE) is {} and \
             this process may not raise it: raise it (ulimit -Hn as root, or LimitNOFILE=) or use \
             fewer --connections",
            now.maximum.unwrap_or(u64::MAX)
        ));
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(needed),
            maximum: now.maximum,
        },
    )
    .map_err(|e| format!("cannot raise the open-file limit (RLIMIT_NOFILE) to {needed}: {e}"))?;
    Ok(OpenFiles {
        limit: Some(needed),
        raised_from: now.current,
        hard_raised_from: None,
    })
}

/// Raises the soft limit to the hard one (`bench serve`: it cannot know how many clients will come).
pub fn raise_to_hard() -> Result<OpenFiles, String> {
    let now = getrlimit(Resource::Nofile);
    match now.maximum {
        Some(hard) if now.current.is_some_and(|c| c < hard) => ensure_open_files(hard),
        _ => Ok(OpenFiles {
            limit: now.current,
            raised_from: None,
            hard_raised_from: None,
        }),
    }
}

impl OpenFiles {
    /// A line saying what was done, if anything.
    pub fn report(&self, why: &str) -> Option<String> {
        let from = self.raised_from?;
        let hard = self
            .hard_raised_from
            .map_or(String::new(), |h| format!(" (and the hard limit from {h})"));
        Some(format!(
            "# raised the open-file limit (RLIMIT_NOFILE, soft) from {from} to {}{hard}{why}",
            self.limit
                .map_or("unlimited".to_string(), |l| l.to_string())
        ))
    }
}
