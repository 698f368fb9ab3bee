//! msgr: a messenger speaking Ceph's msgr2.1 wire protocol over pluggable network stacks.
//!
//! The crate is split the way DESIGN.md describes: [`proto`] is the sans-IO msgr2.1 core (bytes in,
//! events and bytes out, no sockets, no clock); [`stack`] moves bytes (posix sockets now; DPDK and RDMA
//! behind features later); [`event`] runs one event loop per worker thread; [`msgr`] joins them into the
//! messenger API. [`msgs`] holds the payloads of the Ceph messages we speak with real daemons.
//! [`throttle`] holds the byte and message budgets that messages carry as RAII permits.
//! Nothing below `proto` knows about frames, and `proto` knows nothing about transports.
#![deny(unsafe_code)]

pub mod bench;
pub mod event;
pub mod msgr;
pub mod msgs;
pub mod proto;
pub mod recon;
pub mod stack;
pub mod throttle;
