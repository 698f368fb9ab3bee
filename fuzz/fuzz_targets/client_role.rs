//! A client `Connection` (transport up) fed arbitrary bytes, after a valid server handshake prefix
//! half the time.
#![no_main]

mod common;

use std::time::Instant;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (depth, read, hostile) = common::steer(data);
    let now = Instant::now();
    let mut c = common::fresh_client(now);
    let prefix = common::server_prefix(depth);
    c.handle_input(now, &prefix);
    assert!(!common::pump(&mut c, now, false), "the valid prefix failed");
    common::drive(&mut c, now, hostile, read);
});
