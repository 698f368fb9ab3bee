//! Shared fixtures for the protocol tests: configs, addresses, verifiable payloads, a scripted raw peer.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use msgr::proto::banner::Banner;
use msgr::proto::codec::{Frame, FrameDecoder, FrameEncoder, Tag};
use msgr::proto::conn::{Config, Connection, Event, Policy, MSGR2_REQUIRED, MSGR2_SUPPORTED};
use msgr::proto::control::ControlFrame;
use msgr::proto::message::Message;
use msgr::proto::types::{entity_type, AddrVec, AuthEntityName, EntityAddr};

pub fn server_addr() -> EntityAddr {
    EntityAddr::msgr2("127.0.0.1:6800".parse().unwrap(), 7777)
}

pub fn client_addr() -> EntityAddr {
    EntityAddr::msgr2("127.0.0.1:40000".parse().unwrap(), 4242)
}

pub fn server_config(seed: u64) -> Config {
    let mut c = Config::new(entity_type::OSD, AuthEntityName::new(entity_type::OSD, "0"));
    c.gid = 0;
    c.my_addrs = AddrVec(vec![server_addr()]);
    c.rng_seed = Some(seed);
    c.default_policy = Policy::stateful_server();
    // The simulator jumps its clock to the next deadline when nothing moves: no idle closes there.
    c.idle_timeout = None;
    c.initial_backoff = Duration::from_millis(1);
    c.max_backoff = Duration::from_millis(8);
    c
}

pub fn client_config(seed: u64) -> Config {
    let mut c = Config::new(
        entity_type::CLIENT,
        AuthEntityName::new(entity_type::CLIENT, "admin"),
    );
    c.gid = 4100;
    c.my_addrs = AddrVec(vec![client_addr()]);
    c.rng_seed = Some(seed.wrapping_add(1));
    c.idle_timeout = None;
    c.initial_backoff = Duration::from_millis(1);
    c.max_backoff = Duration::from_millis(8);
    c
}

/// A pool of random bytes; message payloads are zero-copy slices of it, so they can be verified cheaply.
pub struct PayloadPool {
    buf: Bytes,
}

impl PayloadPool {
    pub fn new(seed: u64, len: usize) -> Self {
        let mut x = seed | 1;
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.truncate(len);
        PayloadPool {
            buf: Bytes::from(v),
        }
    }

    /// Payload for message `i` of `len` bytes (len <= pool size).
    pub fn payload(&self, i: u64, len: usize) -> Bytes {
        let max_off = self.buf.len() - len;
        let off = if max_off == 0 {
            0
        } else {
            (i.wrapping_mul(7919) as usize) % max_off
        };
        self.buf.slice(off..off + len)
    }

    /// Message `i`: its tid is `i`, its front the payload.
    pub fn message(&self, i: u64, len: usize) -> Message {
        Message::new(0x4000, self.payload(i, len)).with_tid(i)
    }

    pub fn verify(&self, m: &Message) -> bool {
        m.front == self.payload(m.header.tid, m.front.len())
    }
}

/// A peer driven by hand: encodes frames we choose and decodes what the connection under test sends.
pub struct RawPeer {
    pub enc: FrameEncoder,
    pub dec: FrameDecoder,
    pub rx: BytesMut,
    pub banner_seen: bool,
}

impl Default for RawPeer {
    fn default() -> Self {
        Self::new()
    }
}

impl RawPeer {
    pub fn new() -> Self {
        RawPeer {
            enc: FrameEncoder::new(),
            dec: FrameDecoder::new(64 << 20),
            rx: BytesMut::new(),
            banner_seen: false,
        }
    }

    pub fn banner() -> Vec<u8> {
        Self::banner_with(MSGR2_SUPPORTED, MSGR2_REQUIRED)
    }

    pub fn banner_with(supported: u64, required: u64) -> Vec<u8> {
        let mut b = BytesMut::new();
        Banner {
            supported,
            required,
        }
        .encode(&mut b);
        b.to_vec()
    }

    pub fn frame(&mut self, cf: &ControlFrame) -> Vec<u8> {
        let mut p = BytesMut::new();
        cf.encode_payload(&mut p);
        let mut out = Vec::new();
        self.enc.encode_control(cf.tag(), &p, &mut out).unwrap();
        out.concat()
    }

    /// Take everything `conn` wants to send and decode it into frames.
    pub fn recv_from(&mut self, conn: &mut Connection, now: Instant) -> Vec<Frame> {
        let mut out = Vec::new();
        conn.poll_transmit(now, &mut out);
        for b in out {
            self.rx.extend_from_slice(&b);
        }
        if !self.banner_seen {
            match Banner::decode(&self.rx).unwrap() {
                Some((_, n)) => {
                    let _ = self.rx.split_to(n);
                    self.banner_seen = true;
                }
                None => return Vec::new(),
            }
        }
        let mut frames = Vec::new();
        while let Some(f) = self.dec.decode(&mut self.rx).unwrap() {
            frames.push(f);
        }
        frames
    }

    /// Control frames only (panics on a MESSAGE).
    pub fn recv_control(&mut self, conn: &mut Connection, now: Instant) -> Vec<ControlFrame> {
        self.recv_from(conn, now)
            .into_iter()
            .map(|f| {
                assert_ne!(f.tag, Tag::Message, "unexpected MESSAGE");
                ControlFrame::decode(f.tag, f.payload()).unwrap()
            })
            .collect()
    }
}

pub fn drain_events(conn: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| conn.poll_event()).collect()
}

pub fn arc(c: Config) -> Arc<Config> {
    Arc::new(c)
}
pub mod ceph;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod hostile;
pub mod net;
pub mod suite;
