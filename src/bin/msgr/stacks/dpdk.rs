//! `--stack dpdk` (cargo feature `dpdk`): the stack's configuration from `--dpdk-args` and the stack built
//! from it. How `msgr bench` generates a link's arguments is the bench's (`bench::dpdk`).

use msgr::stack::dpdk::{DpdkConfig, DpdkStack};

use super::StackError;

/// Parses `--dpdk-args` (see `stack::dpdk`'s config docs); with `workers`, its `queues=` must equal them.
pub fn config(args: &str, workers: Option<usize>) -> Result<DpdkConfig, StackError> {
    let config = DpdkConfig::parse(args)
        .and_then(|c| c.validate().map(|()| c))
        .map_err(|e| StackError::Usage(format!("--dpdk-args: {e}")))?;
    match workers {
        Some(n) if n != usize::from(config.queues) => Err(StackError::Usage(format!(
            "--workers {n} but --dpdk-args has queues={}: the dpdk stack runs one poll-mode worker \
             per queue pair",
            config.queues
        ))),
        _ => Ok(config),
    }
}

/// Initialises the EAL and starts the port (once per process).
pub fn build(config: DpdkConfig) -> Result<DpdkStack, StackError> {
    DpdkStack::new(config).map_err(|e| StackError::Failed(format!("dpdk stack: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_must_match_the_workers_asked_for() {
        let args = "ip=10.0.0.1/24 queues=2 --no-huge --vdev=net_null0";
        assert_eq!(config(args, None).unwrap().queues, 2);
        assert_eq!(config(args, Some(2)).unwrap().ip.octets(), [10, 0, 0, 1]);
        let e = config(args, Some(1)).unwrap_err();
        assert!(e.to_string().contains("queues=2"), "{e}");
        let e = config("queues=1", None).unwrap_err();
        assert!(
            matches!(&e, StackError::Usage(m) if m.contains("ip=")),
            "{e}"
        );
    }
}
