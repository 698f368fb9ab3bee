//! msgr: a messenger speaking Ceph's msgr2.1 wire protocol over pluggable network stacks.
//!
//! The crate root is the messenger API: a [`Messenger`] over a network stack (posix sockets by
//! default, DPDK and RDMA behind features) connects to peers and accepts them, a [`Dispatcher`] hears
//! what arrives, and a [`ConnectionRef`] sends. [`proto`] is the sans-IO msgr2.1 core on its own (bytes
//! in, events and bytes out, no sockets, no clock), for embedding in another event loop. [`stack`] and
//! [`event`] are public as far as someone writing another network stack needs them. [`msgs`] holds the
//! payloads of the Ceph messages we speak with real daemons; [`rados`] the client-side cluster state
//! that needs no I/O (the OSD map, CRUSH and object placement).
//!
//! Nothing below `proto` knows about frames, and `proto` knows nothing about transports.
#![deny(unsafe_code)]

pub mod event;
mod msgr;
pub mod msgs;
pub mod proto;
pub mod rados;
pub mod stack;
mod throttle;

pub use crate::event::WorkerConfig;
pub use crate::msgr::{
    ConnId, ConnectionRef, CountersSnapshot, Dispatcher, Messenger, MessengerConfig,
    MessengerHandle, MsgrError as Error, PeerInfo, PeerThrottleStats, Permit, RecvThrottle,
    RegistryStats, StopHandle, Throttle, ThrottleStats, ThrottlesSnapshot, TrySendError,
};
pub use crate::proto::types::{
    entity_type, AddrType, AddrVec, AuthEntityName, EntityAddr, EntityType, EntityTypes,
};
pub use crate::proto::{Message, Policy};
pub use crate::stack::posix::PosixStack;
pub use crate::stack::{ConnectOptions, ListenOptions, NetworkStack};
