//! A RADOS client: monitor session, OSD map, placement and object I/O against a real Ceph cluster.

pub mod client;
pub mod monc;
pub mod objecter;
