//! A connection's life, whatever its wire: the client's first step (`start_connect`), the QP made with
//! the pre-authentication depth (`setup_qp`) and grown to the full depth once the messenger says the
//! peer authenticated (`promote`), accepting (`finish_accept`), connect failures and deadlines, moving a
//! connect request not yet accepted to another worker (`detach_pending`, `attach_pending`), and
//! `close_entry`. What each wire adds is in `cm_events` (rdma_cm) and `side_channel` (Ceph's).
//!
//! Invariants: `setting_up` counts the streams in a connect phase (each leaves it once: established,
//! failed or closed); `cq_used` is the sum of the `cq_share` of the streams that have a QP and never
//! exceeds the CQ's depth; a connection's slots all go back to the pool when it closes (the posted ones
//! when its QP is destroyed); only an `AcceptPending` stream (no QP yet) can be detached.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::conn::{Link, Phase, Stream};
use super::listen::Pending;
use super::side_channel::{CephLink, CephStep};
use super::{Entry, RdmaWorker};
use crate::stack::rdma::ceph_wire::QpRecord;
use crate::stack::rdma::credit::Credits;
use crate::stack::rdma::verbs::{CmId, OwnedQp, QpCaps};
use crate::stack::rdma::{
    bump, hello, PeerParams, PendingAccept, RdmaConfig, RdmaHandoff, RdmaWire,
};
use crate::stack::{ConnectOptions, EventKind, Readiness, SocketEvent, SocketId, TransportError};

impl RdmaWorker {
    /// `WorkerStack::connect`: the first step of a client's set-up (address resolution, or the side
    /// channel's TCP connect); the wire's events do the rest.
    pub(super) fn start_connect(
        &mut self,
        addr: SocketAddr,
        opts: &ConnectOptions,
    ) -> io::Result<SocketId> {
        let id = self.alloc_id();
        let mut s = if self.config.wire == RdmaWire::Ceph {
            // Ceph's wire: the side channel to the peer's msgr2 address first (non-blocking).
            let tcp = mio::net::TcpStream::connect(addr)
                .map_err(|source| TransportError::Connect { addr, source })?;
            let _ = tcp.set_nodelay(true);
            let link = CephLink::new(tcp, CephStep::TcpConnecting);
            Stream::new(Link::Ceph(Box::new(link)), Phase::CephConnecting, addr)
        } else {
            let cm = CmId::new(&self.cm_channel, id.0)
                .map_err(|source| TransportError::Connect { addr, source })?;
            cm.resolve_addr(addr, self.resolve_timeout_ms())
                .map_err(|source| unreachable(addr, source))?;
            Stream::new(Link::Cm(cm), Phase::Resolving, addr)
        };
        s.connect_timeout = opts.timeout;
        s.deadline = opts.timeout.map(|t| Instant::now() + t);
        self.entries.insert(id, Entry::Stream(Box::new(s)));
        self.setting_up += 1;
        Ok(id)
    }

    /// Create the QP for `s` and post its receives: only the pre-authentication depth (the QP and its
    /// CQ share are sized for the full one, taken by `peer_authenticated`).
    pub(super) fn setup_qp(&mut self, id: SocketId) -> io::Result<()> {
        let share = self.config.recv_depth + self.config.send_depth;
        if self.cq_used + share > self.cq.depth() {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!(
                    "worker {}: completion queue full ({} of {} entries in use); raise RdmaConfig::cq_depth",
                    self.index,
                    self.cq_used,
                    self.cq.depth()
                ),
            ));
        }
        let Some(Entry::Stream(s)) = self.entries.get_mut(&id) else {
            return Err(TransportError::UnknownSocket(id).into());
        };
        let caps = QpCaps {
            send_depth: self.config.send_depth,
            recv_depth: self.config.recv_depth,
            max_inline: self.config.max_inline,
        };
        match &mut s.link {
            Link::Cm(cm) => {
                if !cm.is_on(&self.pd) {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrNotAvailable,
                        format!(
                            "{} is reached through RDMA device {}, not the configured {}",
                            s.peer,
                            cm.device_name().unwrap_or_else(|| "(none)".into()),
                            self.pd.context().name()
                        ),
                    ));
                }
                cm.create_qp(&self.pd, &self.cq, caps, id.0)?;
            }
            Link::Ceph(c) => {
                let qp = OwnedQp::create(&self.pd, &self.cq, caps, self.config.port, id.0)?;
                c.local = Some(QpRecord {
                    lid: self.lid,
                    qpn: qp.qp_num(),
                    psn: rand::random::<u32>() & 0x00ff_ffff,
                    peer_qpn: 0,
                    gid: self.gid,
                });
                c.qp = Some(qp);
                // No credits on Ceph's wire; no SEND larger than the peer's receive buffers.
                s.credits = Credits::unlimited();
                s.chunk = self.config.ceph_buffer_size.min(self.config.slot_size()) as usize;
            }
        }
        self.cq_used += share;
        s.cq_share = share;
        let (recv, send) = self.config.preauth_slots();
        let mut slots = self.pool.take((recv + send) as usize)?;
        s.send_free = slots.split_off(recv as usize);
        s.send_slots = send;
        let mut slots = slots.into_iter();
        while let Some(slot) = slots.next() {
            if let Err((slot, err)) = s.link.post_recv(slot) {
                self.pool.give(slot);
                slots.for_each(|slot| self.pool.give(slot));
                return Err(err);
            }
            s.recv_slots += 1;
        }
        Ok(())
    }

    pub(super) fn init_credits(config: &RdmaConfig, s: &mut Stream, params: PeerParams) {
        s.params = Some(params);
        s.credits = Credits::growing(params.depth, params.max_depth, s.recv_slots);
        s.chunk = params.buf_size.min(config.buf_size) as usize;
    }

    /// Give an authenticated connection the rest of its depth (see `peer_authenticated`): take the
    /// slots, post the receives and owe them to the peer as credits, add the send buffers.
    pub(super) fn promote(&mut self, id: SocketId) {
        let Some(Entry::Stream(s)) = self.entries.get_mut(&id) else {
            return;
        };
        if s.authenticated {
            return;
        }
        s.authenticated = true;
        if s.phase != Phase::Established {
            return; // closing or failed: nothing to grow
        }
        // On msgr's wire, the peer must accept returns beyond our first depth (see `PeerParams`).
        let grows = s.link.is_ceph() || s.params.is_some_and(|p| p.grows);
        let more_recv = if grows {
            self.config.recv_depth.saturating_sub(s.recv_slots)
        } else {
            0
        };
        let more_send = self.config.send_depth.saturating_sub(s.send_slots);
        if more_recv + more_send == 0 {
            return;
        }
        let mut slots = match self.pool.take((more_recv + more_send) as usize) {
            Ok(slots) => slots,
            Err(err) => {
                bump(&self.counters.promotions_refused, 1);
                if self.promotion_refusal_logged {
                    tracing::debug!(worker = self.index, %id, error = %err, "rdma connection stays at its pre-authentication depth");
                } else {
                    self.promotion_refusal_logged = true;
                    tracing::warn!(worker = self.index, %id, error = %err,
                        "rdma connection stays at its pre-authentication depth (logged once per worker; counted in promotions_refused)");
                }
                return;
            }
        };
        s.send_free.extend(slots.split_off(more_recv as usize));
        s.send_slots += more_send;
        let mut posted = 0;
        let mut slots = slots.into_iter();
        while let Some(slot) = slots.next() {
            if let Err((slot, err)) = s.link.post_recv(slot) {
                self.pool.give(slot);
                slots.for_each(|slot| self.pool.give(slot));
                let msg = format!("post receive: {err}");
                Self::fail(&mut self.dirty, id, s, err.kind(), msg);
                break;
            }
            posted += 1;
        }
        s.recv_slots += posted;
        // Posted first, announced after: the peer may use them once it hears of them.
        s.credits.grant_more(posted);
        if !s.credit_queued && s.credits.credit_only_due() {
            s.credit_queued = true;
            self.credit_due.push(id);
        }
        if more_send > 0 && s.write_blocked {
            s.write_blocked = false;
            Self::mark(&mut self.dirty, id, s, Readiness::WRITABLE);
        }
        bump(&self.counters.promotions, 1);
        tracing::trace!(worker = self.index, %id, recv = s.recv_slots, send = s.send_slots, "rdma connection at full depth");
    }

    pub(super) fn finish_accept(&mut self, id: SocketId) {
        match self.entries.get(&id) {
            Some(Entry::Stream(s)) if s.phase == Phase::AcceptPending => {}
            _ => return, // detached or closed meanwhile
        }
        let result = self.setup_qp(id).and_then(|()| {
            let s = self.stream_mut(id)?;
            if let Link::Ceph(c) = &mut s.link {
                // Ceph's wire: wait for the client's first record on the side channel.
                c.step = CephStep::AwaitHello;
                s.phase = Phase::Accepting;
                return Ok(());
            }
            let hello = hello(&self.config);
            let config = self.config.clone();
            let s = self.stream_mut(id)?;
            let params = s
                .params
                .ok_or_else(|| io::Error::other("no peer parameters"))?;
            Self::init_credits(&config, s, params);
            if let Link::Cm(cm) = &s.link {
                cm.accept(&hello)?;
            }
            s.phase = Phase::Accepting;
            Ok(())
        });
        if let Err(err) = result {
            if let Some(Entry::Stream(s)) = self.entries.get_mut(&id) {
                s.link.reject();
                Self::fail(&mut self.dirty, id, s, err.kind(), format!("accept: {err}"));
            }
        }
    }

    pub(super) fn connect_failed(&mut self, id: SocketId, err: io::Error) {
        let Some(Entry::Stream(s)) = self.entries.get_mut(&id) else {
            return;
        };
        if !s.phase.is_connecting() {
            return;
        }
        tracing::debug!(worker = self.index, %id, peer = %s.peer, error = %err, "rdma connect failed");
        s.phase = Phase::Dead;
        s.error = Some((err.kind(), err.to_string()));
        s.deadline = None;
        self.setting_up -= 1;
        self.synthetic.push(SocketEvent {
            id,
            kind: EventKind::ConnectFailed(err),
        });
    }

    pub(super) fn expire_connects(&mut self, now: Instant) {
        if self.setting_up == 0 {
            return;
        }
        let expired: Vec<(SocketId, SocketAddr, Duration)> = self
            .entries
            .iter()
            .filter_map(|(id, e)| match e {
                Entry::Stream(s)
                    if s.phase.is_connecting() && s.deadline.is_some_and(|d| d <= now) =>
                {
                    Some((*id, s.peer, s.connect_timeout.unwrap_or_default()))
                }
                _ => None,
            })
            .collect();
        for (id, addr, timeout) in expired {
            self.connect_failed(id, TransportError::ConnectTimeout { addr, timeout }.into());
        }
    }

    pub(super) fn next_connect_deadline(&self) -> Option<Instant> {
        if self.setting_up == 0 {
            return None;
        }
        self.entries
            .values()
            .filter_map(|e| match e {
                Entry::Stream(s) if s.phase.is_connecting() => s.deadline,
                _ => None,
            })
            .min()
    }

    pub(super) fn resolve_timeout_ms(&self) -> i32 {
        i32::try_from(self.config.resolve_timeout.as_millis()).unwrap_or(i32::MAX)
    }

    /// `WorkerStack::close`: tell the peer, destroy the QP and give every slot back to the pool.
    pub(super) fn close_entry(&mut self, id: SocketId) -> io::Result<()> {
        let entry = self
            .entries
            .remove(&id)
            .ok_or(TransportError::UnknownSocket(id))?;
        match entry {
            Entry::Listener {
                listening, backlog, ..
            } => {
                for pending in backlog {
                    if let Pending::Cm(cm, _) = pending {
                        cm.reject();
                    }
                }
                drop(listening);
            }
            Entry::Stream(mut s) => {
                if s.phase.is_connecting() {
                    self.setting_up -= 1;
                }
                if matches!(
                    s.phase,
                    Phase::Established | Phase::PeerClosed | Phase::Accepting
                ) {
                    s.link.disconnect();
                }
                if s.phase == Phase::AcceptPending {
                    s.link.reject();
                }
                for slot in s.link.destroy_qp() {
                    self.pool.give(slot);
                }
                for rx in s.rx.drain(..) {
                    self.pool.give(rx.slot);
                }
                for slot in s.send_free.drain(..) {
                    self.pool.give(slot);
                }
                if let Some((slot, _)) = s.open.take() {
                    self.pool.give(slot);
                }
                self.cq_used -= s.cq_share;
                tracing::trace!(worker = self.index, %id, "rdma closed");
            }
        }
        Ok(())
    }

    /// `WorkerStack::detach`: only a connect request not yet accepted (no QP) can move.
    pub(super) fn detach_pending(&mut self, id: SocketId) -> io::Result<RdmaHandoff> {
        match self.entries.get(&id) {
            Some(Entry::Stream(s)) if s.phase == Phase::AcceptPending => {}
            Some(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "an RDMA connection cannot move once its QP exists",
                ))
            }
            None => return Err(TransportError::UnknownSocket(id).into()),
        }
        let Some(Entry::Stream(s)) = self.entries.remove(&id) else {
            return Err(TransportError::UnknownSocket(id).into());
        };
        let Stream {
            link, peer, params, ..
        } = *s;
        let pending = match link {
            Link::Cm(cm) => PendingAccept::Cm {
                id: cm.detach()?,
                params: params.ok_or_else(|| io::Error::other("no peer parameters"))?,
            },
            Link::Ceph(c) => PendingAccept::Ceph { tcp: c.tcp },
        };
        Ok(RdmaHandoff { peer, pending })
    }

    /// `WorkerStack::attach`: adopt a connect request from another worker; the next poll accepts
    /// it.
    pub(super) fn attach_pending(&mut self, handoff: RdmaHandoff) -> io::Result<SocketId> {
        let id = self.alloc_id();
        let s = match handoff.pending {
            PendingAccept::Cm { id: cm, params } => {
                let cm = cm.attach(&self.cm_channel, id.0)?;
                let mut s = Stream::new(Link::Cm(cm), Phase::AcceptPending, handoff.peer);
                s.params = Some(params);
                s
            }
            PendingAccept::Ceph { tcp } => {
                let link = CephLink::new(tcp, CephStep::AwaitHello);
                Stream::new(
                    Link::Ceph(Box::new(link)),
                    Phase::AcceptPending,
                    handoff.peer,
                )
            }
        };
        bump(&self.counters.handoffs, 1);
        self.entries.insert(id, Entry::Stream(Box::new(s)));
        self.to_accept.push(id);
        Ok(id)
    }
}

pub(super) fn unreachable(addr: SocketAddr, source: io::Error) -> io::Error {
    TransportError::Unreachable { addr, source }.into()
}
