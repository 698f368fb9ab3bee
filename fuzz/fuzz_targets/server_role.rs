//! A server `Connection` fed arbitrary bytes, after a valid client handshake prefix half the time.
#![no_main]

mod common;

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use msgr::proto::conn::Connection;

fuzz_target!(|data: &[u8]| {
    let (depth, read, hostile) = common::steer(data);
    let now = Instant::now();
    let mut s = Connection::server(common::server_config(), common::server_addr(), now);
    let prefix = common::client_prefix(depth);
    s.handle_input(now, &prefix);
    assert!(!common::pump(&mut s, now, false), "the valid prefix failed");
    common::drive(&mut s, now, hostile, read);
});
