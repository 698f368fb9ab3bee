//! msgr: a messenger speaking Ceph's msgr2.1 wire protocol over pluggable network stacks.
//!
//! The crate is split the way ../DESIGN.md describes: [`proto`] is the sans-IO msgr2.1 core (bytes in,
//! events and bytes out, no sockets, no clock); `event`, `stack` and `msgr` move bytes between that core and
//! a transport. Nothing below `proto` knows about frames, and `proto` knows nothing about transports.
#![deny(unsafe_code)]

pub mod event;
pub mod proto;
pub mod recon;
pub mod stack;
