//! Reading sockets under the receive throttles and the per-turn read budget, and the run list that
//! brings back connections which stopped short of draining their socket.

use super::*;

impl<S: WorkerStack> Handler<S> {
    /// Whether connection `conn` may read now. A ready connection whose receive throttle or the
    /// dispatch throttle is used up may not: it parks on that throttle (once) and comes back through the
    /// run list when it has room. Handshake frames are never held back.
    pub(super) fn may_read(dispatch: &Arc<Throttle>, conn: &mut Conn) -> bool {
        if !conn.proto.is_ready() {
            return true;
        }
        let full = conn
            .recv_throttle
            .iter()
            .chain(std::iter::once(dispatch))
            .find(|t| t.is_full());
        let Some(full) = full else {
            return true;
        };
        if conn.parked_on.is_none() {
            conn.parked_on = Some(full.clone());
            tracing::trace!(
                conn = conn.handle.id(),
                "receive budget used up: pausing reads"
            );
            full.park(conn.handle.0.clone());
        }
        false
    }

    /// Put `conn` on the run list unless it is on it already.
    pub(super) fn queue_read(run_list: &mut VecDeque<ConnId>, conn: &mut Conn, id: ConnId) {
        if !conn.on_run_list {
            conn.on_run_list = true;
            run_list.push_back(id);
        }
    }

    /// Read a connection from the run list again (if it still has a socket to read).
    pub(super) fn read_again(&mut self, c: &mut EventCenter<S>, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.on_run_list = false;
        if let (Some(sid), false) = (conn.socket, conn.connecting) {
            self.on_readable(c, id, sid);
        }
    }

    pub(super) fn on_readable(&mut self, c: &mut EventCenter<S>, id: ConnId, sid: SocketId) {
        let mut pumped = false;
        let mut read = 0usize;
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            if conn.socket != Some(sid) {
                return;
            }
            if read >= self.shared.config.read_budget.max(1) {
                // Budget used, socket maybe not drained: come back after the others.
                Self::queue_read(&mut self.run_list, conn, id);
                return;
            }
            if !Self::may_read(&self.shared.dispatch_throttle, conn) {
                break;
            }
            let now = Instant::now();
            let stack = c.stack_mut();
            let scratch = &mut self.rbuf;
            let mut asked = 0;
            // Straight into the protocol's receive buffer where the stack can (posix); stacks that own
            // their receive buffers (RDMA, DPDK) copy from those.
            let result = conn.proto.read_input(now, |buf, max| {
                asked = max;
                stack.read_into(sid, buf, max, scratch)
            });
            match result {
                Ok(0) => {
                    conn.proto.on_transport_error(
                        now,
                        TransportError::new(
                            TransportErrorKind::ClosedByPeer,
                            "connection closed by peer",
                        ),
                    );
                    break;
                }
                Ok(n) => {
                    read = read.saturating_add(n);
                    let drained = n < asked && c.stack().short_read_drains(sid);
                    // Dispatch as we go, so one busy socket cannot buffer without bound.
                    self.pump(c, id);
                    pumped = true;
                    if drained {
                        // A short read: nothing more was there, and a later arrival raises a new event.
                        return;
                    }
                }
                // Drained: the last read was pumped already; with nothing read, pump once below
                // (the event may also say writable).
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && pumped => return,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    conn.proto
                        .on_transport_error(now, TransportError::io("read", &e));
                    break;
                }
            }
        }
        self.pump(c, id);
    }
}
