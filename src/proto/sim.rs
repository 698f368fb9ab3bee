//! An in-memory network that drives a client [`Connection`] against a server with a virtual clock.
//!
//! Owns: the bytes in flight on the current "transport", the server side's table of connections (the
//! part of a messenger that `resolve_session` needs), and delivered messages. Used by tests (cut the
//! stream anywhere, deliver byte by byte), by the criterion benches and by `msgr bench --stack mem`.
//!
//! Invariants: time only moves when nothing else can make progress (to the earliest connection
//! deadline), so runs are deterministic for a given seed and cut schedule.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes};

use super::conn::{Config, Connection, Event, Policy};
use super::message::Message;
use super::types::EntityAddr;

/// A client and its server wired back to back.
pub struct Sim {
    pub now: Instant,
    pub client: Connection,
    /// Server-side connections (the current session holder and any not yet cleaned up).
    servers: Vec<Connection>,
    /// Index into `servers` of the connection on the current transport.
    active: Option<usize>,
    c2s: VecDeque<Bytes>,
    s2c: VecDeque<Bytes>,
    server_cfg: Arc<Config>,
    /// Messages the client received, in order.
    pub client_inbox: Vec<Message>,
    /// Messages the server side received, in order.
    pub server_inbox: Vec<Message>,
    /// Every non-message event, tagged with the side that produced it.
    pub events: Vec<(Side, Event)>,
    /// Deliver at most this many bytes per direction per step (1 = byte by byte).
    pub max_chunk: usize,
    /// Deliver through [`Connection::read_input`] (the receiver's buffer decides how much each read
    /// takes) instead of [`Connection::handle_input`].
    pub read_into: bool,
    /// Fail the transport once this many more bytes have been delivered (both directions).
    pub cut_after: Option<usize>,
    /// Transports opened so far.
    pub transports: usize,
    scratch: Vec<Bytes>,
}

/// Which end produced an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

impl Sim {
    /// A client with `client_policy` dialling `server_addr`, where a server with `server_cfg` listens.
    pub fn new(
        client_cfg: Arc<Config>,
        client_policy: Policy,
        server_cfg: Arc<Config>,
        server_addr: EntityAddr,
        now: Instant,
    ) -> Sim {
        let peer_type = server_cfg.entity_type;
        let client = Connection::client(
            client_cfg,
            client_policy,
            peer_type,
            server_addr.clone(),
            now,
        );
        Sim {
            now,
            client,
            servers: Vec::new(),
            active: None,
            c2s: VecDeque::new(),
            s2c: VecDeque::new(),
            server_cfg,
            client_inbox: Vec::new(),
            server_inbox: Vec::new(),
            events: Vec::new(),
            max_chunk: 64 * 1024,
            read_into: false,
            cut_after: None,
            transports: 0,
            scratch: Vec::new(),
        }
    }

    /// The server-side connection that holds the session (the most recent one still open).
    pub fn server(&mut self) -> Option<&mut Connection> {
        self.servers.iter_mut().rev().find(|c| !c.is_closed())
    }

    /// Bytes sent and not delivered yet, both directions.
    pub fn in_flight(&self) -> usize {
        self.c2s.iter().chain(&self.s2c).map(|b| b.len()).sum()
    }

    /// Fail the current transport now, losing whatever is in flight.
    pub fn cut(&mut self) {
        self.c2s.clear();
        self.s2c.clear();
        let now = self.now;
        if self.client.has_transport() {
            self.client.on_transport_error(now, "sim: cut");
        }
        if let Some(i) = self.active.take() {
            if self.servers[i].has_transport() {
                self.servers[i].on_transport_error(now, "sim: cut");
            }
        }
    }

    /// One round: events, transmit, deliver. Returns whether anything happened.
    pub fn step(&mut self) -> bool {
        let mut progress = self.pump_events();
        let now = self.now;
        self.scratch.clear();
        if self.client.poll_transmit(now, &mut self.scratch) > 0 {
            progress = true;
        }
        self.c2s.extend(self.scratch.drain(..));
        if let Some(i) = self.active {
            if self.servers[i].poll_transmit(now, &mut self.scratch) > 0 {
                progress = true;
            }
            self.s2c.extend(self.scratch.drain(..));
        }
        progress |= self.deliver();
        progress
    }

    /// Step until `done` holds, advancing the virtual clock when idle. Gives up after `max_steps`.
    pub fn run_until(&mut self, max_steps: usize, mut done: impl FnMut(&Sim) -> bool) -> bool {
        for _ in 0..max_steps {
            if done(self) {
                // Collect what the last step left queued, so callers see every event.
                self.pump_events();
                return true;
            }
            if !self.step() && !self.advance_clock() {
                return done(self);
            }
        }
        done(self)
    }

    /// Move time to the earliest deadline and fire timers. False if no timer is pending.
    pub fn advance_clock(&mut self) -> bool {
        let deadline = std::iter::once(self.client.poll_timeout())
            .chain(self.servers.iter().map(|s| s.poll_timeout()))
            .flatten()
            .min();
        let Some(d) = deadline else { return false };
        if d > self.now {
            self.now = d;
        }
        let now = self.now;
        self.client.handle_timeout(now);
        for s in &mut self.servers {
            s.handle_timeout(now);
        }
        true
    }

    fn deliver(&mut self) -> bool {
        let mut progress = false;
        let now = self.now;
        for dir in [Side::Client, Side::Server] {
            let mut budget = self.max_chunk;
            if let Some(c) = self.cut_after {
                budget = budget.min(c);
            }
            let queue = if dir == Side::Client {
                &mut self.c2s
            } else {
                &mut self.s2c
            };
            let mut delivered = 0;
            while budget > 0 {
                let Some(front) = queue.front_mut() else {
                    break;
                };
                let mut n = front.len().min(budget);
                let receiver = match dir {
                    Side::Client => self.active.map(|i| &mut self.servers[i]),
                    Side::Server => Some(&mut self.client),
                };
                match receiver {
                    Some(conn) if self.read_into => {
                        let offered = front.slice(..n);
                        let read = conn.read_input(now, |buf, max| {
                            let m = offered.len().min(max);
                            buf.extend_from_slice(&offered[..m]);
                            Ok(m)
                        });
                        // A connection without a transport takes nothing: the bytes are dropped.
                        if let Ok(m) = read {
                            n = m;
                        }
                    }
                    Some(conn) => conn.handle_input(now, &front[..n]),
                    None => {}
                }
                front.advance(n);
                if front.is_empty() {
                    queue.pop_front();
                }
                budget -= n;
                delivered += n;
                progress = true;
            }
            if let Some(c) = self.cut_after.as_mut() {
                *c -= delivered.min(*c);
                if *c == 0 {
                    self.cut_after = None;
                    self.cut();
                    return true;
                }
            }
        }
        progress
    }

    fn pump_events(&mut self) -> bool {
        let mut progress = false;
        while let Some(ev) = self.client.poll_event() {
            progress = true;
            match ev {
                Event::OpenTransport => self.open_transport(),
                Event::Message(m) => self.client_inbox.push(m),
                Event::TransportDown(_) => {
                    self.c2s.clear();
                    self.s2c.clear();
                    if let Some(i) = self.active.take() {
                        self.servers[i].on_transport_error(self.now, "sim: peer closed");
                    }
                    self.events.push((Side::Client, ev));
                }
                other => self.events.push((Side::Client, other)),
            }
        }
        for i in 0..self.servers.len() {
            while let Some(ev) = self.servers[i].poll_event() {
                progress = true;
                match ev {
                    Event::Message(m) => self.server_inbox.push(m),
                    Event::SessionRequest(req) => {
                        let now = self.now;
                        let existing = (0..self.servers.len()).find(|&j| {
                            j != i
                                && !self.servers[j].is_closed()
                                && *self.servers[j].peer_addrs() == req.peer_addrs
                        });
                        match existing {
                            Some(j) => {
                                let (a, b) = pair_mut(&mut self.servers, i, j);
                                a.resolve_session(now, Some(b));
                            }
                            None => {
                                self.servers[i].resolve_session(now, None);
                            }
                        }
                        self.events.push((Side::Server, Event::SessionRequest(req)));
                    }
                    Event::TransportDown(_) => {
                        if self.active == Some(i) {
                            self.active = None;
                            self.c2s.clear();
                            self.s2c.clear();
                            self.client.on_transport_error(self.now, "sim: peer closed");
                        }
                        self.events.push((Side::Server, ev));
                    }
                    other => self.events.push((Side::Server, other)),
                }
            }
        }
        // Forget closed server connections that are not on the wire.
        let active = self.active;
        if self
            .servers
            .iter()
            .enumerate()
            .any(|(i, c)| c.is_closed() && Some(i) != active)
        {
            let mut kept = Vec::with_capacity(self.servers.len());
            let mut new_active = None;
            for (idx, c) in self.servers.drain(..).enumerate() {
                if !c.is_closed() || Some(idx) == active {
                    if Some(idx) == active {
                        new_active = Some(kept.len());
                    }
                    kept.push(c);
                }
            }
            self.servers = kept;
            self.active = new_active;
        }
        progress
    }

    fn open_transport(&mut self) {
        self.c2s.clear();
        self.s2c.clear();
        if let Some(i) = self.active.take() {
            if self.servers[i].has_transport() {
                self.servers[i].on_transport_error(self.now, "sim: replaced");
            }
        }
        self.transports += 1;
        let peer = EntityAddr::msgr2(core::net::SocketAddr::from(([127, 0, 0, 1], 50_000)), 0);
        let s = Connection::server(self.server_cfg.clone(), peer, self.now);
        self.servers.push(s);
        self.active = Some(self.servers.len() - 1);
        self.client.on_transport_connected(self.now);
    }
}

fn pair_mut<T>(v: &mut [T], i: usize, j: usize) -> (&mut T, &mut T) {
    assert!(i != j);
    if i < j {
        let (a, b) = v.split_at_mut(j);
        (&mut a[i], &mut b[0])
    } else {
        let (a, b) = v.split_at_mut(i);
        (&mut b[0], &mut a[j])
    }
}
