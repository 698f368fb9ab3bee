//! Listeners: [`RdmaWorker::listen_on`] binds an rdma_cm id and listens (msgr's wire), or binds a TCP
//! listener for Ceph's side channels. Connect requests wait in the listener's backlog ([`Pending`]; the
//! rdma_cm events and the side-channel driver put them there) until
//! [`RdmaWorker::accept_from_backlog`] turns one into an `AcceptPending` stream, whose QP the next poll
//! makes (`finish_accept`), so that it can still be detached to another worker before.
//!
//! Invariants: a listener's rdma_cm id is held for the listener's whole life (dropping it stops
//! listening); a connect request still in a backlog when its listener closes is rejected (rdma_cm) or
//! dropped (TCP).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;

use super::conn::{Link, Phase, Stream};
use super::side_channel::{CephLink, CephStep};
use super::{Entry, RdmaWorker};
use crate::stack::rdma::verbs::CmId;
use crate::stack::rdma::{PeerParams, RdmaWire};
use crate::stack::{ListenOptions, SocketId, TransportError};

/// A listener: an rdma_cm id (msgr's wire) or a TCP listener for Ceph's side channels.
pub(super) enum Listening {
    // Held for its lifetime: dropping the id stops listening.
    Cm(#[allow(dead_code)] CmId),
    Tcp(mio::net::TcpListener),
}

/// A connection waiting in a listener's backlog.
pub(super) enum Pending {
    Cm(CmId, PeerParams),
    Tcp(mio::net::TcpStream, SocketAddr),
}

impl RdmaWorker {
    /// `WorkerStack::listen`: an rdma_cm listener (msgr's wire) or a TCP one (Ceph's side channels).
    pub(super) fn listen_on(
        &mut self,
        addr: SocketAddr,
        opts: &ListenOptions,
    ) -> io::Result<SocketId> {
        let id = self.alloc_id();
        if self.config.wire == RdmaWire::Ceph {
            // Ceph's wire: side channels arrive at the msgr2 address itself, over TCP.
            let listener = mio::net::TcpListener::bind(addr).map_err(|e| listen_error(addr, e))?;
            let local = listener.local_addr().unwrap_or(addr);
            tracing::debug!(worker = self.index, %id, %local, "rdma listening (ceph wire: TCP side channel)");
            self.entries.insert(
                id,
                Entry::Listener {
                    listening: Listening::Tcp(listener),
                    local,
                    backlog: VecDeque::new(),
                },
            );
            return Ok(id);
        }
        let cm = CmId::new(&self.cm_channel, id.0).map_err(|e| listen_error(addr, e))?;
        cm.bind(addr).map_err(|e| {
            let raw = io::Error::last_os_error().raw_os_error();
            let err = raw.map_or(e, io::Error::from_raw_os_error);
            listen_error(addr, err)
        })?;
        if let Some(dev) = cm.device_name() {
            if dev != self.pd.context().name() {
                return Err(TransportError::Listen {
                    addr,
                    source: io::Error::new(
                        io::ErrorKind::AddrNotAvailable,
                        format!(
                            "{addr} belongs to RDMA device {dev}, not the configured {}",
                            self.pd.context().name()
                        ),
                    ),
                }
                .into());
            }
        }
        cm.listen(i32::try_from(opts.backlog).unwrap_or(i32::MAX))
            .map_err(|e| listen_error(addr, e))?;
        let local = cm.local_addr().unwrap_or(addr);
        tracing::debug!(worker = self.index, %id, %local, "rdma listening");
        self.entries.insert(
            id,
            Entry::Listener {
                listening: Listening::Cm(cm),
                local,
                backlog: VecDeque::new(),
            },
        );
        Ok(id)
    }

    /// `WorkerStack::accept`: the next connect request of the backlog as an `AcceptPending` stream.
    pub(super) fn accept_from_backlog(
        &mut self,
        listener: SocketId,
    ) -> io::Result<Option<(SocketId, SocketAddr)>> {
        let pending = match self.entries.get_mut(&listener) {
            Some(Entry::Listener { backlog, .. }) => match backlog.pop_front() {
                Some(pending) => pending,
                None => return Ok(None),
            },
            other => return Err(TransportError::refused(listener, "accept", other)),
        };
        let id = self.alloc_id();
        let (s, peer) = match pending {
            Pending::Cm(mut cm, params) => {
                cm.set_token(id.0);
                let peer = cm
                    .peer_addr()
                    .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
                let mut s = Stream::new(Link::Cm(cm), Phase::AcceptPending, peer);
                s.params = Some(params);
                (s, peer)
            }
            Pending::Tcp(tcp, peer) => {
                let link = CephLink::new(tcp, CephStep::AwaitHello);
                (
                    Stream::new(Link::Ceph(Box::new(link)), Phase::AcceptPending, peer),
                    peer,
                )
            }
        };
        self.entries.insert(id, Entry::Stream(Box::new(s)));
        self.to_accept.push(id);
        tracing::debug!(worker = self.index, %listener, %id, %peer, "rdma connect request taken");
        Ok(Some((id, peer)))
    }
}

fn listen_error(addr: SocketAddr, err: io::Error) -> io::Error {
    match err.raw_os_error() {
        Some(libc::EADDRINUSE) => TransportError::AddrInUse { addr }.into(),
        Some(libc::EADDRNOTAVAIL) | Some(libc::ENODEV) => {
            TransportError::AddrNotAvailable { addr }.into()
        }
        _ => TransportError::Listen { addr, source: err }.into(),
    }
}
