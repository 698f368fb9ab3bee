//! Ceph's wire: each connection's TCP side channel ([`CephLink`]) and the worker's driver of the
//! queue-pair exchange over it ([`RdmaWorker::drain_side_channels`]): side channels accepted on the TCP
//! listeners, the client's TCP connect, our records out, the peer's records in and checked by
//! [`ceph_wire`], the QP brought up, and afterwards the watch on the channel (its end, or any byte,
//! faults the connection: that is how Ceph says a connection is over).
//!
//! Invariants: a link's `step` only moves forward (client: TcpConnecting, AwaitReply, Done; server:
//! AwaitHello, AwaitAck, Done); `local` (our record) is set together with the QP by `setup_qp`; once
//! `Done`, the channel must stay silent, except for the one late acknowledgement `late_ack` allows.
//! A fault while the client connects is a connect failure, afterwards an error of that one connection.

use std::io;
use std::time::{Duration, Instant};

use super::conn::{Link, Phase};
use super::listen::{Listening, Pending};
use super::{Entry, RdmaWorker};
use crate::stack::rdma::ceph_wire::{self, QpRecord, RecordError, RecordReader};
use crate::stack::rdma::verbs::{OwnedQp, RemoteQp};
use crate::stack::rdma::{bump, RdmaWire};
use crate::stack::{EventKind, Readiness, SocketEvent, SocketId, TransportError};

/// Ceph's wire: listeners and established side channels are read at most this often (a syscall each;
/// what they bring, accepts and the end of a connection, is not latency-critical). Exchanges under way
/// are read on every rdma_cm check.
const SIDE_CHANNEL_EVERY: Duration = Duration::from_millis(2);

/// Where Ceph's queue-pair exchange stands (see `ceph_wire.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CephStep {
    /// Client: the TCP connect is in progress.
    TcpConnecting,
    /// Client: our record sent, waiting for the server's.
    AwaitReply,
    /// Server: waiting for the client's first record.
    AwaitHello,
    /// Server: answered, waiting for the client's acknowledgement (data may already arrive).
    AwaitAck,
    /// Exchanged: the side channel must stay silent until it closes.
    Done,
}

/// One connection's side of Ceph's set-up: the TCP side channel (open for the connection's life), the
/// hand-made QP, and the records.
pub(super) struct CephLink {
    pub(super) tcp: mio::net::TcpStream,
    pub(super) qp: Option<OwnedQp>,
    pub(super) step: CephStep,
    /// Our record (set when the QP exists).
    pub(super) local: Option<QpRecord>,
    /// The client's first record (server side).
    first: Option<QpRecord>,
    reader: RecordReader,
    /// Record bytes not yet written.
    out: Vec<u8>,
    /// Server: data came before the client's acknowledgement, which may still arrive (once).
    pub(super) late_ack: bool,
}

impl CephLink {
    pub(super) fn new(tcp: mio::net::TcpStream, step: CephStep) -> Self {
        CephLink {
            tcp,
            qp: None,
            step,
            local: None,
            first: None,
            reader: RecordReader::default(),
            out: Vec::new(),
            late_ack: false,
        }
    }

    /// Write what is left of our records; `Ok(true)` once all is out.
    fn flush(&mut self) -> io::Result<bool> {
        use std::io::Write;
        while !self.out.is_empty() {
            match self.tcp.write(&self.out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn send_record(&mut self, record: &QpRecord) -> io::Result<()> {
        self.out.extend_from_slice(&record.encode());
        self.flush().map(drop)
    }
}

impl RdmaWorker {
    /// Ceph's wire: accept waiting side channels, advance queue-pair exchanges, and watch the side
    /// channels of established connections (end of file or any byte faults the connection). Runs on
    /// the rdma_cm channel's cadence.
    pub(super) fn drain_side_channels(&mut self) {
        if self.config.wire != RdmaWire::Ceph {
            return;
        }
        // Listeners and established connections cost a syscall each and bring nothing urgent
        // (accepts, the end of a connection): at most every SIDE_CHANNEL_EVERY. Exchanges under way:
        // every call.
        let now = Instant::now();
        let due = now >= self.next_side_check;
        if due {
            self.next_side_check = now + SIDE_CHANNEL_EVERY;
        }
        // A scratch list kept across calls: no allocation on this (busy-poll) path.
        let mut ids = std::mem::take(&mut self.side_ids);
        ids.clear();
        ids.extend(
            self.entries
                .iter()
                .filter(|(_, e)| match e {
                    Entry::Listener { listening, .. } => {
                        due && matches!(listening, Listening::Tcp(_))
                    }
                    // Not yet accepted (AcceptPending): no QP to describe yet; the first poll after
                    // `accept` makes it.
                    Entry::Stream(s) => {
                        s.link.is_ceph()
                            && match s.phase {
                                Phase::CephConnecting | Phase::Accepting => true,
                                Phase::Established | Phase::PeerClosed => due,
                                _ => false,
                            }
                    }
                })
                .map(|(id, _)| *id),
        );
        for &id in &ids {
            match self.entries.get_mut(&id) {
                Some(Entry::Listener {
                    listening: Listening::Tcp(listener),
                    backlog,
                    ..
                }) => {
                    let before = backlog.len();
                    loop {
                        match listener.accept() {
                            Ok((tcp, peer)) => {
                                let _ = tcp.set_nodelay(true);
                                backlog.push_back(Pending::Tcp(tcp, peer));
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                tracing::warn!(worker = self.index, %id, error = %e, "side-channel accept failed");
                                break;
                            }
                        }
                    }
                    if backlog.len() > before {
                        self.synthetic.push(SocketEvent {
                            id,
                            kind: EventKind::Acceptable,
                        });
                    }
                }
                Some(Entry::Stream(_)) => self.service_ceph(id),
                _ => {}
            }
        }
        self.side_ids = ids;
    }

    /// Advance one Ceph connection: its TCP connect, its records, or the watch on its side channel.
    fn service_ceph(&mut self, id: SocketId) {
        let Some(Entry::Stream(s)) = self.entries.get_mut(&id) else {
            return;
        };
        let Link::Ceph(link) = &mut s.link else {
            return;
        };
        if link.step == CephStep::TcpConnecting {
            let connected = match link.tcp.take_error() {
                Ok(Some(e)) | Err(e) => Err(e),
                Ok(None) => match link.tcp.peer_addr() {
                    Ok(_) => Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
                    Err(e) => Err(e),
                },
            };
            match connected {
                Ok(false) => return,
                Ok(true) => {
                    link.step = CephStep::AwaitReply;
                    let result = self.setup_qp(id).and_then(|()| {
                        let s = self.stream_mut(id)?;
                        let Link::Ceph(link) = &mut s.link else {
                            return Ok(());
                        };
                        let local = link.local.ok_or_else(|| io::Error::other("no QP record"))?;
                        tracing::debug!(%id, peer = %s.peer, record = %local, "ceph side channel: sending our QP record");
                        link.send_record(&local)
                    });
                    if let Err(err) = result {
                        self.ceph_connect_failed(id, err);
                    }
                    return;
                }
                Err(err) => {
                    let peer = s.peer;
                    let err = if err.kind() == io::ErrorKind::ConnectionRefused {
                        TransportError::ConnectionRefused { addr: peer }.into()
                    } else {
                        TransportError::Connect {
                            addr: peer,
                            source: err,
                        }
                        .into()
                    };
                    self.connect_failed(id, err);
                    return;
                }
            }
        }
        if let Err(err) = link.flush() {
            self.ceph_fault(id, err.kind(), format!("side channel: {err}"));
            return;
        }
        let mut buf = [0u8; ceph_wire::RECORD_LEN];
        loop {
            let Some(Entry::Stream(s)) = self.entries.get_mut(&id) else {
                return;
            };
            let Link::Ceph(link) = &mut s.link else {
                return;
            };
            let expecting = link.step != CephStep::Done || link.late_ack;
            let want = if expecting {
                link.reader.wanted()
            } else {
                buf.len()
            };
            let n = match std::io::Read::read(&mut link.tcp, &mut buf[..want]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.ceph_fault(id, e.kind(), format!("side channel: {e}"));
                    return;
                }
            };
            if n == 0 {
                // Ceph learns of a close exactly so: the side channel ends.
                let msg = if expecting && link.reader.have() > 0 {
                    link.reader.eof().to_string()
                } else if link.step == CephStep::Done {
                    "the peer closed the connection (side channel closed)".to_string()
                } else {
                    "side channel closed during the queue-pair exchange".to_string()
                };
                self.ceph_fault(id, io::ErrorKind::ConnectionReset, msg);
                return;
            }
            if !expecting {
                let err = RecordError::Unexpected(n);
                self.ceph_fault(id, io::ErrorKind::InvalidData, err.to_string());
                return;
            }
            match link.reader.feed(&buf[..n]) {
                None => {}
                Some(Err(err)) => {
                    self.ceph_fault(id, io::ErrorKind::InvalidData, err.to_string());
                    return;
                }
                Some(Ok(record)) => {
                    if let Err(err) = self.on_ceph_record(id, record) {
                        self.ceph_fault(id, io::ErrorKind::InvalidData, err.to_string());
                        return;
                    }
                }
            }
        }
    }

    /// One complete record from the peer, in whatever step the exchange is.
    fn on_ceph_record(&mut self, id: SocketId, record: QpRecord) -> io::Result<()> {
        let gid_index = u8::try_from(self.config.gid_index).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "GID index {} does not fit a QP's address vector",
                    self.config.gid_index
                ),
            )
        })?;
        let Some(Entry::Stream(s)) = self.entries.get_mut(&id) else {
            return Ok(());
        };
        let peer = s.peer;
        let Link::Ceph(link) = &mut s.link else {
            return Ok(());
        };
        let local = link
            .local
            .ok_or_else(|| io::Error::other("queue-pair record before our QP exists"))?;
        let remote = |r: &QpRecord| RemoteQp {
            qpn: r.qpn,
            psn: r.psn,
            lid: r.lid,
            gid: r.gid,
        };
        let to_io = |e: RecordError| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
        tracing::debug!(%id, %peer, step = ?link.step, %record, "ceph side channel: peer's QP record");
        match link.step {
            CephStep::AwaitReply => {
                ceph_wire::check_server_reply(&local, &record).map_err(to_io)?;
                let qp = link.qp.as_ref().ok_or_else(|| io::Error::other("no QP"))?;
                qp.ready(&remote(&record), gid_index, local.psn)?;
                let ack = QpRecord {
                    peer_qpn: record.qpn,
                    ..local
                };
                link.local = Some(ack);
                link.send_record(&ack)?;
                link.step = CephStep::Done;
                s.phase = Phase::Established;
                s.deadline = None;
                self.setting_up -= 1;
                bump(&self.counters.established, 1);
                tracing::debug!(worker = self.index, %id, %peer, "rdma connected (ceph wire)");
                self.synthetic.push(SocketEvent {
                    id,
                    kind: EventKind::Connected,
                });
            }
            CephStep::AwaitHello => {
                ceph_wire::check_client_hello(&record).map_err(to_io)?;
                let qp = link.qp.as_ref().ok_or_else(|| io::Error::other("no QP"))?;
                qp.ready(&remote(&record), gid_index, local.psn)?;
                let answer = QpRecord {
                    peer_qpn: record.qpn,
                    ..local
                };
                link.local = Some(answer);
                link.first = Some(record);
                link.send_record(&answer)?;
                link.step = CephStep::AwaitAck;
            }
            CephStep::AwaitAck | CephStep::Done => {
                let first = link
                    .first
                    .ok_or_else(|| io::Error::other("acknowledgement without a first record"))?;
                ceph_wire::check_client_ack(&first, &local, &record).map_err(to_io)?;
                link.late_ack = false;
                if link.step == CephStep::AwaitAck {
                    link.step = CephStep::Done;
                    s.phase = Phase::Established;
                    bump(&self.counters.established, 1);
                    tracing::debug!(worker = self.index, %id, %peer, "rdma accepted (ceph wire)");
                    Self::mark(&mut self.dirty, id, s, Readiness::BOTH);
                }
            }
            CephStep::TcpConnecting => {}
        }
        Ok(())
    }

    /// A client's set-up failed (reported as ConnectFailed).
    fn ceph_connect_failed(&mut self, id: SocketId, err: io::Error) {
        let Ok(peer) = self.stream_mut(id).map(|s| s.peer) else {
            return;
        };
        self.connect_failed(
            id,
            TransportError::Connect {
                addr: peer,
                source: err,
            }
            .into(),
        );
    }

    /// Bad or missing side-channel input: a connect failure while the client connects, otherwise an
    /// error of that one connection.
    fn ceph_fault(&mut self, id: SocketId, kind: io::ErrorKind, msg: String) {
        let Some(Entry::Stream(s)) = self.entries.get_mut(&id) else {
            return;
        };
        tracing::debug!(worker = self.index, %id, peer = %s.peer, %msg, "ceph side channel fault");
        if s.phase.is_connecting() {
            self.ceph_connect_failed(id, io::Error::new(kind, msg));
            return;
        }
        Self::fail(&mut self.dirty, id, s, kind, msg);
    }
}
