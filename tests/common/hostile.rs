//! Shared by the hostile-input suites: feeding a stream in chunks, the state input left a connection
//! in (waiting for more bytes, or failed with a typed error) checked against its events, and mutations
//! of recorded streams.

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

/// An edit to a byte stream; positions wrap around its length, so every value applies.
#[derive(Debug, Clone)]
pub enum Mutation {
    Flip { at: usize, bit: u8 },
    Insert { at: usize, byte: u8 },
    Delete { at: usize, len: usize },
    Overwrite { at: usize, byte: u8 },
    Truncate { at: usize },
}

impl Mutation {
    pub fn apply(&self, s: &mut Vec<u8>) {
        if s.is_empty() {
            return;
        }
        match *self {
            Mutation::Flip { at, bit } => {
                let i = at % s.len();
                s[i] ^= 1 << bit;
            }
            Mutation::Insert { at, byte } => s.insert(at % (s.len() + 1), byte),
            Mutation::Delete { at, len } => {
                let i = at % s.len();
                s.drain(i..(i + len).min(s.len()));
            }
            Mutation::Overwrite { at, byte } => {
                let i = at % s.len();
                s[i] = byte;
            }
            Mutation::Truncate { at } => s.truncate(at % s.len()),
        }
    }
}
