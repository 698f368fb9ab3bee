//! Shared by the hostile-input suites: feeding a stream in chunks, and the state input left a
//! connection in (waiting for more bytes, or failed with a typed error), checked against its events.

use std::time::Instant;

use msgr::proto::conn::{Connection, Event};
use msgr::proto::Error;

/// Feeds `stream` in chunks whose sizes cycle through `chunks` (whole if empty), calling `pump` before
/// the first chunk and after each.
pub fn feed_in_chunks(
    conn: &mut Connection,
    now: Instant,
    stream: &[u8],
    chunks: &[usize],
    mut pump: impl FnMut(&mut Connection),
) {
    let mut rest = stream;
    let mut sizes = chunks.iter().copied().cycle();
    pump(conn);
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        conn.handle_input(now, chunk);
        pump(conn);
    }
}

/// What input left a connection in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Waiting,
    Failed(Error),
}

/// The state input left a connection in, checked for consistency with its events: a failure event
/// means the transport is gone; none means it is kept and the connection not closed.
pub fn outcome(conn: &Connection, events: &[Event]) -> Outcome {
    let failure = events.iter().find_map(|e| match e {
        Event::TransportDown(err) | Event::Reset(err) => Some(err.clone()),
        _ => None,
    });
    match failure {
        Some(err) => {
            assert!(
                !conn.has_transport(),
                "failed with {err} but kept its transport"
            );
            Outcome::Failed(err)
        }
        None => {
            assert!(
                conn.has_transport() && !conn.is_closed(),
                "no failure event, yet {:?} without transport",
                conn.phase()
            );
            Outcome::Waiting
        }
    }
}
