//! Hostile input against the sans-IO core: arbitrary bytes to both roles, mutated real sessions, hostile
//! lengths and stalls, and a per-thread counting allocator that bounds what hostile input makes us hold.
//!
//! The contract checked everywhere: no panic; afterwards a connection is either still waiting for bytes
//! (no failure event, transport kept, not closed) or failed with a typed error (`TransportDown` / `Reset`,
//! transport gone); a `Message` event only ever carries a message its peer really sent.

mod common;

use std::cell::Cell;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::hostile::{self, feed_in_chunks, Mutation, Outcome};
use common::*;
use msgr::proto::banner::Banner;
use msgr::proto::codec::{FrameDecoder, FrameEncoder, FrameError, Segment, Tag, PREAMBLE_LEN};
use msgr::proto::conn::{Config, Connection, Policy};
use msgr::proto::crc::{ceph_crc32c, PREAMBLE_SEED};
use msgr::proto::message::{Message, SEGMENT_ALIGNMENTS};
use msgr::proto::types::entity_type;
use msgr::proto::{Error, Event, Phase};
use proptest::collection::vec;
use proptest::prelude::*;

mod alloc_meter;
use alloc_meter::{peak_during, LIVE};

#[test]
fn the_allocation_meter_sees_a_large_buffer_and_its_release() {
    let ((), peak) = peak_during(|| {
        let v = std::hint::black_box(vec![7u8; 3 << 20]);
        drop(v);
    });
    assert!((3 << 20..(3 << 20) + 4096).contains(&peak), "peak {peak}");
    let (live_after, _) = peak_during(|| LIVE.with(Cell::get));
    let ((), small) = peak_during(|| {});
    assert_eq!(small, 0);
    assert!(live_after >= 0);
}

// ---------- fixtures ----------

/// The frame limit under test: small enough that "bounded by max_frame_len" is a sharp statement.
const MAX_FRAME: usize = 1 << 20;
/// Slack allowed above `MAX_FRAME` while hostile input is processed. Measured need: the receive buffer
/// reserved for one frame (≤ `MAX_FRAME`), plus the receive buffer's initial 16 KiB, plus the read chunk in
/// flight (64 KiB here, as a socket read would hand over), plus small control-frame and event allocations
/// (< 8 KiB). 256 KiB leaves room for a larger read size without hiding a second frame-sized buffer.
const SLACK: usize = 256 << 10;
/// What refusing an oversized announcement may cost at most (an error value and its formatting).
const REFUSAL_BUDGET: usize = 64 << 10;
const IDLE: Duration = Duration::from_secs(30);
const SEED: u64 = 11;
/// Pieces of each direction up to and including CLIENT_IDENT / SERVER_IDENT: the banner, then HELLO,
/// AUTH_REQUEST / AUTH_DONE, AUTH_SIGNATURE and the ident, one `poll_transmit` piece each.
const HANDSHAKE_PIECES: usize = 5;

fn client_cfg() -> Arc<Config> {
    let mut c = client_config(SEED);
    c.max_frame_len = MAX_FRAME;
    // One limit in every phase: these tests are about the decoder's bound, not the pre-auth default.
    c.max_handshake_frame_len = MAX_FRAME;
    c.idle_timeout = Some(IDLE);
    // The only deadline once ready is the idle timeout these tests wait for.
    c.idle_buffer_release = None;
    arc(c)
}

fn server_cfg() -> Arc<Config> {
    let mut c = server_config(SEED);
    c.max_frame_len = MAX_FRAME;
    // One limit in every phase: these tests are about the decoder's bound, not the pre-auth default.
    c.max_handshake_frame_len = MAX_FRAME;
    c.idle_timeout = Some(IDLE);
    // The only deadline once ready is the idle timeout these tests wait for.
    c.idle_buffer_release = None;
    arc(c)
}

/// A fresh server connection, exactly as the recorded session's server started (fresh config: the
/// config's counters are part of what the handshake sends).
fn fresh_server(now: Instant) -> Connection {
    Connection::server(server_cfg(), server_addr(), now)
}

/// A fresh client connection with its transport up, as the recorded session's client started.
fn fresh_client(now: Instant) -> Connection {
    let mut c = Connection::client(
        client_cfg(),
        Policy::lossless_client(),
        entity_type::OSD,
        server_addr(),
        now,
    );
    assert_eq!(c.poll_event(), Some(Event::OpenTransport));
    c.on_transport_connected(now);
    c
}

/// Answers what a messenger owning only this connection would, and takes its output (discarded).
fn pump(conn: &mut Connection, now: Instant, sink: &mut impl FnMut(Event)) {
    let mut out = Vec::new();
    loop {
        out.clear();
        conn.poll_transmit(now, &mut out);
        let Some(ev) = conn.poll_event() else { break };
        if let Event::SessionRequest(_) = ev {
            conn.resolve_session(now, None);
        }
        sink(ev);
    }
}

/// Feeds `stream` in chunks whose sizes cycle through `chunks` (whole if empty), pumping after each.
fn feed_with(
    conn: &mut Connection,
    now: Instant,
    stream: &[u8],
    chunks: &[usize],
    mut sink: impl FnMut(Event),
) {
    feed_in_chunks(conn, now, stream, chunks, |c| pump(c, now, &mut sink));
}

fn feed(conn: &mut Connection, now: Instant, stream: &[u8], chunks: &[usize]) -> Vec<Event> {
    let mut events = Vec::new();
    feed_with(conn, now, stream, chunks, |e| events.push(e));
    events
}

/// What input left a connection in (see `hostile::outcome`); here also: no close without an error.
fn outcome(conn: &Connection, events: &[Event]) -> Outcome {
    let o = hostile::outcome(conn, events);
    if o == Outcome::Waiting {
        assert!(
            !events.iter().any(|e| matches!(e, Event::Closed)),
            "closed without an error: {events:?}"
        );
    }
    o
}

fn no_messages(events: &[Event]) -> bool {
    !events.iter().any(|e| matches!(e, Event::Message(_)))
}

/// The messages among `events`, in order.
fn delivered(events: &[Event]) -> Vec<&Message> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m),
            _ => None,
        })
        .collect()
}

// ---------- a recorded session ----------

/// A real session's bytes: handshake, then a few messages with known payloads each way.
struct Recording {
    /// What the client wrote, one element per `poll_transmit` piece (the banner and every control
    /// frame are one piece each; a MESSAGE frame is several).
    c2s: Vec<Bytes>,
    s2c: Vec<Bytes>,
    /// The messages each side received, as received.
    to_server: Vec<Message>,
    to_client: Vec<Message>,
}

fn client_messages(pool: &PayloadPool) -> Vec<Message> {
    vec![
        pool.message(0, 0),
        pool.message(1, 100),
        pool.message(2, 4096)
            .with_middle(pool.payload(20, 10))
            .with_data(pool.payload(21, 20_000)),
        pool.message(3, 1),
        pool.message(4, 30_000),
    ]
}

fn server_messages(pool: &PayloadPool) -> Vec<Message> {
    vec![
        pool.message(100, 50),
        pool.message(101, 5000).with_data(pool.payload(102, 3000)),
        pool.message(103, 0).with_middle(pool.payload(104, 64)),
    ]
}

fn record() -> Recording {
    let now = Instant::now();
    let pool = PayloadPool::new(SEED, 64 << 10);
    let mut client = fresh_client(now);
    let mut server = fresh_server(now);
    for m in client_messages(&pool) {
        client.send(now, m).unwrap();
    }
    let mut rec = Recording {
        c2s: Vec::new(),
        s2c: Vec::new(),
        to_server: Vec::new(),
        to_client: Vec::new(),
    };
    let mut out = Vec::new();
    for _ in 0..1000 {
        let mut progress = false;
        client.poll_transmit(now, &mut out);
        for b in out.drain(..) {
            server.handle_input(now, &b);
            rec.c2s.push(b);
            progress = true;
        }
        server.poll_transmit(now, &mut out);
        for b in out.drain(..) {
            client.handle_input(now, &b);
            rec.s2c.push(b);
            progress = true;
        }
        while let Some(ev) = server.poll_event() {
            progress = true;
            match ev {
                Event::SessionRequest(_) => {
                    server.resolve_session(now, None);
                }
                Event::Connected { .. } => {
                    for m in server_messages(&pool) {
                        server.send(now, m).unwrap();
                    }
                }
                Event::Message(m) => rec.to_server.push(m),
                other => panic!("server: {other:?}"),
            }
        }
        while let Some(ev) = client.poll_event() {
            progress = true;
            match ev {
                Event::Connected { .. } => {}
                Event::Message(m) => rec.to_client.push(m),
                other => panic!("client: {other:?}"),
            }
        }
        if !progress {
            break;
        }
    }
    assert_eq!(rec.to_server.len(), client_messages(&pool).len());
    assert_eq!(rec.to_client.len(), server_messages(&pool).len());
    for (sent, got) in client_messages(&pool).iter().zip(&rec.to_server) {
        assert_eq!(
            (&sent.front, &sent.middle, &sent.data),
            (&got.front, &got.middle, &got.data)
        );
    }
    rec
}

/// The session is recorded once per test binary; it is deterministic for a given config and seed.
fn recording() -> &'static Recording {
    static REC: OnceLock<Recording> = OnceLock::new();
    REC.get_or_init(record)
}

/// A server that has completed the handshake from the recorded client bytes.
fn ready_server(now: Instant) -> Connection {
    let mut s = fresh_server(now);
    let prefix = recording().c2s[..HANDSHAKE_PIECES].concat();
    let events = feed(&mut s, now, &prefix, &[]);
    assert_eq!(s.phase(), Phase::Ready, "{events:?}");
    s
}

/// A client that has completed the handshake from the recorded server bytes.
fn ready_client(now: Instant) -> Connection {
    let mut c = fresh_client(now);
    let prefix = recording().s2c[..HANDSHAKE_PIECES].concat();
    let events = feed(&mut c, now, &prefix, &[]);
    assert_eq!(c.phase(), Phase::Ready, "{events:?}");
    c
}

#[test]
fn the_recording_has_the_expected_handshake_pieces() {
    let rec = recording();
    for (dir, pieces, tags) in [
        (
            "c2s",
            &rec.c2s,
            [
                Tag::Hello,
                Tag::AuthRequest,
                Tag::AuthSignature,
                Tag::ClientIdent,
            ],
        ),
        (
            "s2c",
            &rec.s2c,
            [
                Tag::Hello,
                Tag::AuthDone,
                Tag::AuthSignature,
                Tag::ServerIdent,
            ],
        ),
    ] {
        let (_, n) = Banner::decode(&pieces[0]).unwrap().unwrap();
        assert_eq!(n, pieces[0].len(), "{dir}: banner piece");
        for (piece, tag) in pieces[1..HANDSHAKE_PIECES].iter().zip(tags) {
            let mut rx = BytesMut::from(&piece[..]);
            let f = FrameDecoder::new(MAX_FRAME)
                .decode(&mut rx)
                .unwrap()
                .unwrap();
            assert_eq!((f.tag, rx.len()), (tag, 0), "{dir}");
        }
    }
}

#[test]
fn clean_replays_deliver_every_recorded_message() {
    let rec = recording();
    for chunks in [vec![], vec![1], vec![7, 300, 4096]] {
        let now = Instant::now();
        let mut s = fresh_server(now);
        let events = feed(&mut s, now, &rec.c2s.concat(), &chunks);
        assert_eq!(delivered(&events), rec.to_server.iter().collect::<Vec<_>>());
        assert_eq!(outcome(&s, &events), Outcome::Waiting);

        let mut c = fresh_client(now);
        let events = feed(&mut c, now, &rec.s2c.concat(), &chunks);
        assert_eq!(delivered(&events), rec.to_client.iter().collect::<Vec<_>>());
        assert_eq!(outcome(&c, &events), Outcome::Waiting);
    }
}

// ---------- arbitrary bytes ----------

fn chunking() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![Just(vec![]), Just(vec![1]), vec(1usize..600, 1..16),]
}

/// Feeds `prefix` (which must leave `conn` waiting), then `data` in `chunks`: no message may come of it.
fn arbitrary_bytes_after(
    mut conn: Connection,
    now: Instant,
    prefix: &[u8],
    data: &[u8],
    chunks: &[usize],
) -> Result<(), TestCaseError> {
    let before = feed(&mut conn, now, prefix, &[]);
    prop_assert_eq!(outcome(&conn, &before), Outcome::Waiting);
    let events = feed(&mut conn, now, data, chunks);
    prop_assert!(no_messages(&events), "{:?}", events);
    outcome(&conn, &events);
    Ok(())
}

/// How many recorded handshake pieces precede the garbage: none half the time.
fn depth() -> impl Strategy<Value = usize> {
    prop_oneof![Just(0), 0..=HANDSHAKE_PIECES]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_to_a_server(
        data in vec(any::<u8>(), 0..4096),
        chunks in chunking(),
        depth in depth(),
    ) {
        let now = Instant::now();
        let prefix = recording().c2s[..depth].concat();
        arbitrary_bytes_after(fresh_server(now), now, &prefix, &data, &chunks)?;
    }

    #[test]
    fn arbitrary_bytes_to_a_client(
        data in vec(any::<u8>(), 0..4096),
        chunks in chunking(),
        depth in depth(),
    ) {
        let now = Instant::now();
        let prefix = recording().s2c[..depth].concat();
        arbitrary_bytes_after(fresh_client(now), now, &prefix, &data, &chunks)?;
    }
}

// ---------- well-framed garbage: valid crcs, arbitrary tags and payloads ----------

/// A frame with correct crcs around arbitrary segments, under an arbitrary known tag.
fn framed_garbage() -> impl Strategy<Value = Vec<u8>> {
    (1u8..=20, vec(vec(any::<u8>(), 0..200), 1..=4)).prop_map(|(tag, segs)| {
        let tag = Tag::try_from(tag).unwrap_or(Tag::Message);
        let segs: Vec<Segment> = segs.into_iter().map(|s| Segment::new(s, 8)).collect();
        let mut out = Vec::new();
        FrameEncoder::new().encode(tag, &segs, &mut out).unwrap();
        out.concat()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Frames that pass every crc but carry nonsense, at every handshake depth: the control-frame and
    /// message decoders and the state machine must refuse them as values.
    #[test]
    fn framed_garbage_after_a_valid_prefix(
        frames in vec(framed_garbage(), 1..6),
        chunks in chunking(),
        depth in 1..=HANDSHAKE_PIECES,
        server_side in any::<bool>(),
    ) {
        let now = Instant::now();
        let rec = recording();
        let (mut conn, prefix) = if server_side {
            (fresh_server(now), rec.c2s[..depth].concat())
        } else {
            (fresh_client(now), rec.s2c[..depth].concat())
        };
        let before = feed(&mut conn, now, &prefix, &[]);
        prop_assert_eq!(outcome(&conn, &before), Outcome::Waiting);
        let events = feed(&mut conn, now, &frames.concat(), &chunks);
        outcome(&conn, &events);
    }
}

// ---------- mutated real streams ----------

fn mutation() -> impl Strategy<Value = Mutation> {
    // Half the positions land in the first KiB (banner, handshake, first frames), half anywhere.
    let at = || prop_oneof![0usize..1024, any::<usize>()];
    prop_oneof![
        (at(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (at(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        (at(), 1usize..64).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (at(), any::<u8>()).prop_map(|(at, byte)| Mutation::Overwrite { at, byte }),
    ]
}

fn mutated(pieces: &[Bytes], muts: &[Mutation]) -> Vec<u8> {
    let mut s = pieces.concat();
    for m in muts {
        m.apply(&mut s);
    }
    s
}

/// Feeds `stream` in `chunks`: every message delivered must be one of `sent`.
fn delivers_only_sent(
    mut conn: Connection,
    now: Instant,
    stream: &[u8],
    chunks: &[usize],
    sent: &[Message],
) -> Result<(), TestCaseError> {
    let events = feed(&mut conn, now, stream, chunks);
    for m in delivered(&events) {
        prop_assert!(
            sent.contains(m),
            "corrupted message delivered: {:?}",
            m.header
        );
    }
    outcome(&conn, &events);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(384))]

    #[test]
    fn mutated_client_stream_never_delivers_a_corrupted_message(
        muts in vec(mutation(), 1..6),
        chunks in chunking(),
    ) {
        let rec = recording();
        let now = Instant::now();
        let stream = mutated(&rec.c2s, &muts);
        delivers_only_sent(fresh_server(now), now, &stream, &chunks, &rec.to_server)?;
    }

    #[test]
    fn mutated_server_stream_never_delivers_a_corrupted_message(
        muts in vec(mutation(), 1..6),
        chunks in chunking(),
    ) {
        let rec = recording();
        let now = Instant::now();
        let stream = mutated(&rec.s2c, &muts);
        delivers_only_sent(fresh_client(now), now, &stream, &chunks, &rec.to_client)?;
    }
}

// ---------- hostile lengths and stalls ----------

/// A preamble with a correct crc announcing segments of `lens` (at most four).
fn preamble(tag: Tag, lens: &[u32]) -> Vec<u8> {
    let mut b = [0u8; PREAMBLE_LEN];
    b[0] = tag.as_u8();
    b[1] = lens.len() as u8;
    for (i, len) in lens.iter().enumerate() {
        b[2 + i * 6..6 + i * 6].copy_from_slice(&len.to_le_bytes());
        b[6 + i * 6..8 + i * 6].copy_from_slice(&8u16.to_le_bytes());
    }
    let crc = ceph_crc32c(PREAMBLE_SEED, &b[..PREAMBLE_LEN - 4]);
    b[PREAMBLE_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
    b.to_vec()
}

/// On-wire length of a one-segment frame with a `len`-byte segment: preamble, segment, its crc.
fn one_segment_frame_len(len: u32) -> usize {
    PREAMBLE_LEN + len as usize + 4
}

fn too_large(o: &Outcome) -> Option<(u64, usize)> {
    match o {
        Outcome::Failed(Error::InvalidFrame(FrameError::TooLarge { len, max })) => {
            Some((*len, *max))
        }
        Outcome::Failed(Error::LimitExceeded { value, max, .. }) => {
            Some((*value, usize::try_from(*max).unwrap_or(usize::MAX)))
        }
        _ => None,
    }
}

/// Connections in the states a hostile length can reach: server before HELLO, both roles ready.
fn targets(now: Instant) -> Vec<(&'static str, Connection)> {
    let mut after_banner = fresh_server(now);
    let banner = recording().c2s[0].clone();
    let _ = feed(&mut after_banner, now, &banner, &[]);
    assert_eq!(after_banner.phase(), Phase::Hello);
    vec![
        ("server waiting for HELLO", after_banner),
        ("ready server", ready_server(now)),
        ("ready client", ready_client(now)),
    ]
}

#[test]
fn a_4_gib_announcement_is_refused_allocating_under_64_kib() {
    let now = Instant::now();
    for lens in [
        vec![u32::MAX],
        vec![16, u32::MAX],
        vec![u32::MAX, u32::MAX, u32::MAX, u32::MAX],
    ] {
        for (name, mut conn) in targets(now) {
            let bytes = preamble(Tag::Message, &lens);
            let (events, peak) = peak_during(|| feed(&mut conn, now, &bytes, &[]));
            let o = outcome(&conn, &events);
            let (len, max) = too_large(&o).unwrap_or_else(|| panic!("{name} {lens:?}: {o:?}"));
            assert!(
                len > u64::from(u32::MAX) && max == MAX_FRAME,
                "{name}: {len} {max}"
            );
            assert!(peak < REFUSAL_BUDGET, "{name} {lens:?}: {peak} bytes");
        }
    }
}

#[test]
fn a_frame_one_byte_over_max_frame_len_is_refused() {
    let now = Instant::now();
    let over = (MAX_FRAME - PREAMBLE_LEN - 4 + 1) as u32;
    assert_eq!(one_segment_frame_len(over), MAX_FRAME + 1);
    for (name, mut conn) in targets(now) {
        let bytes = preamble(Tag::Message, &[over]);
        let (events, peak) = peak_during(|| feed(&mut conn, now, &bytes, &[]));
        let o = outcome(&conn, &events);
        assert_eq!(
            too_large(&o),
            Some((MAX_FRAME as u64 + 1, MAX_FRAME)),
            "{name}"
        );
        assert!(peak < REFUSAL_BUDGET, "{name}: {peak} bytes");
    }
}

#[test]
fn a_frame_of_exactly_max_frame_len_is_awaited_and_a_stall_times_out() {
    let now = Instant::now();
    let exact = (MAX_FRAME - PREAMBLE_LEN - 4) as u32;
    for (name, mut conn) in targets(now) {
        let mut bytes = preamble(Tag::Message, &[exact]);
        bytes.resize(MAX_FRAME - 1, 0x5a); // all but the last byte of the frame
        let (events, peak) = peak_during(|| feed(&mut conn, now, &bytes, &[64 << 10]));
        assert_eq!(outcome(&conn, &events), Outcome::Waiting, "{name}");
        assert!(peak < MAX_FRAME + SLACK, "{name}: {peak} bytes");
        // The peer stalls one byte short: the handshake or idle timer ends it.
        let deadline = conn.poll_timeout().expect("a deadline while waiting");
        assert!(deadline <= now + IDLE.max(Duration::from_secs(10)));
        conn.handle_timeout(deadline);
        let mut events = Vec::new();
        pump(&mut conn, deadline, &mut |e| events.push(e));
        assert!(
            matches!(outcome(&conn, &events), Outcome::Failed(Error::TimedOut(_))),
            "{name}: {events:?}"
        );
    }
}

#[test]
fn a_truncated_banner_waits_then_times_out() {
    let banner = recording().c2s[0].clone();
    for n in 0..banner.len() {
        let now = Instant::now();
        let mut s = fresh_server(now);
        let events = feed(&mut s, now, &banner[..n], &[1]);
        assert_eq!(outcome(&s, &events), Outcome::Waiting, "{n} bytes");
        assert_eq!(s.phase(), Phase::Banner);
        let deadline = s.poll_timeout().expect("handshake deadline");
        s.handle_timeout(deadline);
        let events: Vec<Event> = std::iter::from_fn(|| s.poll_event()).collect();
        assert_eq!(
            outcome(&s, &events),
            Outcome::Failed(Error::TimedOut("handshake")),
            "{n} bytes"
        );
    }
}

#[test]
fn a_stall_mid_frame_waits_then_times_out() {
    let rec = recording();
    let now = Instant::now();
    // Mid-handshake: the banner and half of HELLO.
    let mut s = fresh_server(now);
    let hello = &rec.c2s[1];
    let mut bytes = rec.c2s[0].to_vec();
    bytes.extend_from_slice(&hello[..hello.len() / 2]);
    let events = feed(&mut s, now, &bytes, &[3]);
    assert_eq!(outcome(&s, &events), Outcome::Waiting);
    assert_eq!(s.phase(), Phase::Hello);
    let deadline = s.poll_timeout().unwrap();
    s.handle_timeout(deadline);
    let events: Vec<Event> = std::iter::from_fn(|| s.poll_event()).collect();
    assert_eq!(
        outcome(&s, &events),
        Outcome::Failed(Error::TimedOut("handshake"))
    );

    // Ready: the preamble and part of the first MESSAGE frame (after the handshake pieces).
    let mut c = ready_client(now);
    let message = rec.s2c[HANDSHAKE_PIECES..].concat();
    let events = feed(&mut c, now, &message[..PREAMBLE_LEN + 10], &[5]);
    assert_eq!(outcome(&c, &events), Outcome::Waiting);
    assert_eq!(c.poll_timeout(), Some(now + IDLE));
    c.handle_timeout(now + IDLE);
    let events: Vec<Event> = std::iter::from_fn(|| c.poll_event()).collect();
    assert_eq!(
        outcome(&c, &events),
        Outcome::Failed(Error::TimedOut("idle connection"))
    );
}

// ---------- memory bound under hostile input ----------

fn noise(seed: u64, len: usize) -> Vec<u8> {
    PayloadPool::new(seed, len).payload(0, len).to_vec()
}

/// Encodes MESSAGE frames with seqs `first_seq..` whose fronts have the given lengths.
fn message_frames(first_seq: u64, fronts: &[usize]) -> Vec<u8> {
    let pool = PayloadPool::new(3, MAX_FRAME);
    let mut enc = FrameEncoder::new();
    let mut out = Vec::new();
    for (i, &len) in fronts.iter().enumerate() {
        let mut m = pool.message(i as u64, len);
        m.header.seq = first_seq + i as u64;
        let segs: Vec<Segment> = m
            .segments()
            .into_iter()
            .zip(SEGMENT_ALIGNMENTS)
            .map(|(d, a)| Segment::new(d, a))
            .collect();
        enc.encode(Tag::Message, &segs, &mut out).unwrap();
    }
    out.concat()
}

/// Small valid control frames (ACK, KEEPALIVE2) for a ready connection.
fn control_frames(n: usize) -> Vec<u8> {
    let mut p = RawPeer::new();
    let mut v = Vec::new();
    for i in 0..n {
        let cf = if i % 2 == 0 {
            msgr::proto::control::ControlFrame::Ack(msgr::proto::control::Ack { seq: 0 })
        } else {
            msgr::proto::control::ControlFrame::Keepalive2(msgr::proto::control::Keepalive2 {
                timestamp: Default::default(),
            })
        };
        v.extend(p.frame(&cf));
    }
    v
}

/// Feeds hostile input to `conn`, dropping every event at once (an owner that hands messages on), and
/// returns the outcome and the peak heap above the start.
fn measure(conn: &mut Connection, now: Instant, input: &[u8], chunk: usize) -> (Outcome, usize) {
    let mut failure = None;
    let ((), peak) = peak_during(|| {
        feed_with(conn, now, input, &[chunk], |e| {
            if let Event::TransportDown(err) | Event::Reset(err) = e {
                failure.get_or_insert(err);
            }
        })
    });
    let o = match failure {
        Some(e) => Outcome::Failed(e),
        None => Outcome::Waiting,
    };
    (o, peak)
}

#[test]
fn hostile_input_holds_under_max_frame_len_plus_slack() {
    const READ: usize = 64 << 10;
    let now = Instant::now();
    let garbage = noise(5, 4 << 20);
    let exact = (MAX_FRAME - PREAMBLE_LEN - 4) as u32;
    let mut almost_max = preamble(Tag::Message, &[exact]);
    almost_max.resize(MAX_FRAME - 1, 0);
    let mut partial_frames = control_frames(4000);
    partial_frames.extend(message_frames(1, &[200 << 10; 12]));

    let mut report = Vec::new();
    let mut check = |name: &str, mut conn: Connection, input: &[u8], chunk: usize, failed: bool| {
        let (o, peak) = measure(&mut conn, now, input, chunk);
        assert_eq!(matches!(o, Outcome::Failed(_)), failed, "{name}: {o:?}");
        report.push(format!("{name}: peak {peak} B"));
        assert!(peak < MAX_FRAME + SLACK, "{name}: peak {peak} B");
        peak
    };
    check(
        "4 MiB garbage to a fresh server",
        fresh_server(now),
        &garbage,
        READ,
        true,
    );
    let mut after_banner = fresh_server(now);
    let _ = feed(&mut after_banner, now, &recording().c2s[0], &[]);
    check(
        "4 MiB garbage after the banner",
        after_banner,
        &garbage,
        READ,
        true,
    );
    check(
        "garbage to a ready client",
        ready_client(now),
        &garbage,
        READ,
        true,
    );
    let big = check(
        "max-size frame, stalled",
        ready_server(now),
        &almost_max,
        READ,
        false,
    );
    assert!(
        big >= MAX_FRAME - 64,
        "the meter missed the frame buffer: {big}"
    );
    check(
        "4000 control frames and 12 x 200 KiB messages in 1500 B reads",
        ready_client(now),
        &partial_frames,
        1500,
        false,
    );
    check(
        "the same in 3 B reads",
        ready_client(now),
        &partial_frames[..256 << 10],
        3,
        false,
    );
    let mut repeated = Vec::new();
    for _ in 0..16 {
        repeated.extend(preamble(Tag::Message, &[u32::MAX]));
    }
    check(
        "16 x 4 GiB announcements",
        ready_server(now),
        &repeated,
        READ,
        true,
    );
    eprintln!("{}", report.join("\n"));
}

/// Back-to-back frames of exactly `MAX_FRAME` bytes; with `aborted`, each carries late_status ABORTED,
/// which the receiver must consume and drop without faulting: a peer can send them forever.
fn max_size_frames(n: u64, aborted: bool) -> Vec<u8> {
    let front = MAX_FRAME - 90; // + header 41 + its crc 4 + preamble 32 + epilogue 13
    let mut out = Vec::new();
    for i in 0..n {
        let mut f = message_frames(1 + i, &[front]);
        assert_eq!(f.len(), MAX_FRAME);
        if aborted {
            f[MAX_FRAME - 13] = 0x01;
        }
        out.extend(f);
    }
    out
}

/// FOUND (fixed in `Connection::handle_input`): a read straddling two frames was appended whole to the
/// receive buffer the decoder had sized for one frame, so the buffer doubled. Four aborted max-size
/// frames in 1500-byte reads made a connection with max_frame_len 1 MiB hold 2 MiB (3,130,370 B peak
/// counting the realloc) while delivering nothing. Now the peak is one frame plus a few hundred bytes.
#[test]
fn aborted_max_size_frames_do_not_double_the_receive_buffer() {
    let now = Instant::now();
    let input = max_size_frames(4, true);
    for read in [1500, 64 << 10, 1 << 20] {
        let mut c = ready_client(now);
        let mut delivered = 0;
        let ((), peak) = peak_during(|| {
            feed_with(&mut c, now, &input, &[read], |e| {
                assert!(
                    !matches!(e, Event::TransportDown(_) | Event::Reset(_)),
                    "{e:?}"
                );
                delivered += usize::from(matches!(e, Event::Message(_)));
            })
        });
        assert_eq!(delivered, 0, "an aborted frame was delivered");
        assert!(peak < MAX_FRAME + SLACK, "{read} B reads: peak {peak} B");
    }
}

/// Valid max-size messages: a message delivered in the same read as the next frame's start is still
/// in the event queue (the owner's memory) when the next frame's buffer is reserved, so the bound is
/// two frames; before the fix it was three.
#[test]
fn max_size_messages_hold_at_most_two_frames() {
    let now = Instant::now();
    let input = max_size_frames(4, false);
    for read in [1500, 64 << 10, 1 << 20] {
        let mut c = ready_client(now);
        let mut delivered = 0;
        let ((), peak) = peak_during(|| {
            feed_with(&mut c, now, &input, &[read], |e| {
                delivered += usize::from(matches!(e, Event::Message(_)));
            })
        });
        assert_eq!(delivered, 4);
        assert!(
            peak < 2 * MAX_FRAME + SLACK,
            "{read} B reads: peak {peak} B"
        );
    }
}
