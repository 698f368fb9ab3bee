//! msgr's wire: the rdma_cm events of this worker's ids, drained from its event channel
//! ([`RdmaWorker::drain_cm`]): connect requests into their listener's backlog (only with msgr's hello
//! as private data; others are rejected), a client's address and route resolution up to
//! `rdma_connect`, ESTABLISHED (the peer's parameters set the credits), rejects, errors, disconnects
//! and the removal of the device.
//!
//! Invariants: an event's token is the [`SocketId`] of its id (for a connect request, its listener's),
//! so the event of a closed connection finds no entry and is dropped; address, route and ESTABLISHED
//! events count only in the phase that waits for them; a failure while connecting is reported once, as
//! ConnectFailed; a later one becomes the stream's error.

use std::io;

use super::conn::{Link, Phase};
use super::lifecycle::unreachable;
use super::listen::Pending;
use super::{Entry, RdmaWorker};
use crate::stack::rdma::verbs::CmEventKind;
use crate::stack::rdma::{bump, hello, parse_hello};
use crate::stack::{EventKind, Readiness, SocketEvent, SocketId, TransportError};

impl RdmaWorker {
    pub(super) fn drain_cm(&mut self) -> io::Result<()> {
        while let Some(ev) = self.cm_channel.next_event()? {
            let id = SocketId(ev.token);
            match ev.kind {
                CmEventKind::ConnectRequest => {
                    let Some(new_id) = ev.new_id else { continue };
                    let params = parse_hello(&ev.private_data);
                    match (self.entries.get_mut(&id), params) {
                        (Some(Entry::Listener { backlog, .. }), Some(params)) => {
                            backlog.push_back(Pending::Cm(new_id, params));
                            self.synthetic.push(SocketEvent {
                                id,
                                kind: EventKind::Acceptable,
                            });
                        }
                        (_, params) => {
                            if params.is_none() {
                                tracing::warn!(
                                    worker = self.index,
                                    "rejecting an RDMA connect request that is not msgr's"
                                );
                            }
                            new_id.reject();
                        }
                    }
                }
                CmEventKind::AddrResolved => {
                    let timeout = self.resolve_timeout_ms();
                    let Some(Entry::Stream(s)) = self.entries.get_mut(&id) else {
                        continue;
                    };
                    if s.phase != Phase::Resolving {
                        continue;
                    }
                    let peer = s.peer;
                    let Link::Cm(cm) = &s.link else { continue };
                    match cm.resolve_route(timeout) {
                        Ok(()) => s.phase = Phase::Routing,
                        Err(err) => self.connect_failed(id, unreachable(peer, err)),
                    }
                }
                CmEventKind::RouteResolved => {
                    match self.entries.get(&id) {
                        Some(Entry::Stream(s)) if s.phase == Phase::Routing => {}
                        _ => continue,
                    }
                    let hello = hello(&self.config);
                    let result = self.setup_qp(id).and_then(|()| {
                        let s = self.stream_mut(id)?;
                        if let Link::Cm(cm) = &s.link {
                            cm.connect(&hello)?;
                        }
                        s.phase = Phase::Connecting;
                        Ok(())
                    });
                    if let Err(err) = result {
                        let peer = self.stream_mut(id).map(|s| s.peer);
                        if let Ok(peer) = peer {
                            self.connect_failed(
                                id,
                                TransportError::Connect {
                                    addr: peer,
                                    source: err,
                                }
                                .into(),
                            );
                        }
                    }
                }
                CmEventKind::Established => self.on_established(id, &ev.private_data),
                CmEventKind::Rejected
                | CmEventKind::Unreachable
                | CmEventKind::ConnectError
                | CmEventKind::AddrError
                | CmEventKind::RouteError => {
                    let Some(Entry::Stream(s)) = self.entries.get_mut(&id) else {
                        continue;
                    };
                    let peer = s.peer;
                    if s.phase.is_connecting() {
                        let err = match ev.kind {
                            CmEventKind::Rejected => {
                                TransportError::ConnectionRefused { addr: peer }.into()
                            }
                            other => unreachable(
                                peer,
                                io::Error::new(
                                    io::ErrorKind::HostUnreachable,
                                    format!("rdma_cm: {other:?} (status {})", ev.status),
                                ),
                            ),
                        };
                        self.connect_failed(id, err);
                    } else {
                        let msg = format!("rdma_cm: {:?} (status {})", ev.kind, ev.status);
                        Self::fail(&mut self.dirty, id, s, io::ErrorKind::ConnectionReset, msg);
                    }
                }
                CmEventKind::Disconnected => {
                    let Some(Entry::Stream(s)) = self.entries.get_mut(&id) else {
                        continue;
                    };
                    // Complete the disconnect handshake (DREP) at once.
                    s.link.disconnect();
                    if s.phase.is_connecting() {
                        let peer = s.peer;
                        let err = io::Error::new(
                            io::ErrorKind::ConnectionReset,
                            "peer disconnected during connection setup",
                        );
                        self.connect_failed(
                            id,
                            TransportError::Connect {
                                addr: peer,
                                source: err,
                            }
                            .into(),
                        );
                        continue;
                    }
                    match s.phase {
                        Phase::Established => s.phase = Phase::PeerClosed,
                        Phase::Dead | Phase::PeerClosed => {}
                        _ => {
                            let msg = "peer disconnected during setup".to_string();
                            Self::fail(&mut self.dirty, id, s, io::ErrorKind::ConnectionReset, msg);
                        }
                    }
                    Self::mark(&mut self.dirty, id, s, Readiness::BOTH);
                }
                CmEventKind::DeviceRemoval => {
                    tracing::error!(worker = self.index, "RDMA device removed");
                    if let Some(Entry::Stream(s)) = self.entries.get_mut(&id) {
                        let msg = "RDMA device removed".to_string();
                        Self::fail(
                            &mut self.dirty,
                            id,
                            s,
                            io::ErrorKind::ConnectionAborted,
                            msg,
                        );
                    }
                }
                CmEventKind::ConnectResponse
                | CmEventKind::TimewaitExit
                | CmEventKind::Other(_) => {}
            }
        }
        Ok(())
    }

    fn on_established(&mut self, id: SocketId, private: &[u8]) {
        let config = self.config.clone();
        let Some(Entry::Stream(s)) = self.entries.get_mut(&id) else {
            return;
        };
        match s.phase {
            Phase::Connecting => {
                let Some(params) = parse_hello(private) else {
                    let peer = s.peer;
                    let err = TransportError::Connect {
                        addr: peer,
                        source: io::Error::new(
                            io::ErrorKind::InvalidData,
                            "the peer is not an msgr RDMA endpoint (no MRD1 private data)",
                        ),
                    };
                    self.connect_failed(id, err.into());
                    return;
                };
                Self::init_credits(&config, s, params);
                s.phase = Phase::Established;
                s.deadline = None;
                self.setting_up -= 1;
                bump(&self.counters.established, 1);
                tracing::debug!(worker = self.index, %id, peer = %s.peer, "rdma connected");
                self.synthetic.push(SocketEvent {
                    id,
                    kind: EventKind::Connected,
                });
            }
            Phase::Accepting => {
                s.phase = Phase::Established;
                bump(&self.counters.established, 1);
                tracing::debug!(worker = self.index, %id, peer = %s.peer, "rdma accepted");
                Self::mark(&mut self.dirty, id, s, Readiness::BOTH);
            }
            _ => {}
        }
    }
}
