//! The send path. What `writev` and `write_bytes` take is copied into the stream's send buffers
//! (coalesced: a full buffer is posted at once, the last one stays open and the next poll posts it,
//! [`RdmaWorker::flush_open`]) or, for long `Bytes`, sent from the caller's memory through a region of
//! the cache (zero copy). Every SEND returns credits in its immediate data; credits owed with no data
//! to carry them go in a SEND without payload ([`RdmaWorker::send_credit_only`]). Ceph's wire has no
//! immediate data and no credits.
//!
//! Invariants: a data SEND is posted only with a credit for it (given back with `unspend` if the post
//! fails) and room in the send queue (`outstanding() < send_depth`); the byte stream stays in order
//! (what is in the open buffer goes out before or with the next zero-copy piece); a SEND asks for a
//! completion at least every `signal_every` SENDs, when it uses the last free slot, when the send
//! queue is nearly full and for the last piece of a pinned buffer, so slots and regions come back; a
//! write that stops short sets `write_blocked`, and the stream is marked writable when room returns.

use std::io::{self, IoSlice};
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::conn::{Phase, Stream};
use super::{Entry, RdmaWorker};
use crate::stack::rdma::mr_cache::{CacheStats, Refused};
use crate::stack::rdma::pool::{PinnedChunk, SendBuf};
use crate::stack::rdma::verbs::SendOptions;
use crate::stack::rdma::{bump, RdmaConfig, RdmaCounters};
use crate::stack::{SocketId, TransportError, WorkerStack, MAX_IOV};

/// The low bits of a SEND's sequence number that its work-request id carries (see `verbs::wr_id`).
pub(super) const SEQ_MASK: u64 = 0x7f_ffff;

impl RdmaWorker {
    /// Post one SEND of `len` bytes from `buf` with `imm`; the send bookkeeping of `s`. `signal` asks
    /// for a completion whatever the count (the last piece of a pinned buffer, so its region is not
    /// held in use longer than its own sends).
    fn post(
        config: &RdmaConfig,
        counters: &RdmaCounters,
        s: &mut Stream,
        buf: SendBuf,
        len: u32,
        imm: u32,
        signal: bool,
    ) -> Result<(), io::Error> {
        let is_slot = matches!(buf, SendBuf::Slot(_));
        let last_slot = !matches!(buf, SendBuf::Pinned(_)) && s.send_free.is_empty();
        let signaled = signal
            || s.unsignaled + 1 >= config.signal_every
            || last_slot
            || s.outstanding() + 1 >= u64::from(config.send_depth);
        let inline = is_slot && len <= s.link.max_inline();
        let opts = SendOptions {
            len,
            // Ceph's wire has no immediate data (and no credits to carry in it).
            imm: (!s.link.is_ceph()).then_some(imm),
            signaled,
            inline,
            seq: (s.posted_seq & SEQ_MASK) as u32,
        };
        match s.link.post_send(buf, opts) {
            Ok(back) => {
                if let Some(slot) = back.and_then(SendBuf::into_slot) {
                    s.send_free.push(slot);
                }
                s.posted_seq += 1;
                if signaled {
                    s.unsignaled = 0;
                    bump(&counters.signaled_sends, 1);
                } else {
                    s.unsignaled += 1;
                }
                if inline {
                    bump(&counters.inline_sends, 1);
                }
                counters
                    .credit_low_water
                    .fetch_min(s.credits.available(), Ordering::Relaxed);
                Ok(())
            }
            Err((buf, err)) => {
                if let Some(slot) = buf.into_slot() {
                    s.send_free.push(slot);
                }
                Err(err)
            }
        }
    }

    /// Post the open (partly filled) send buffer if credits and send-queue room allow: `Ok(true)` if it
    /// went out, `Ok(false)` if it has to wait (or there is nothing to post).
    fn post_open(config: &RdmaConfig, counters: &RdmaCounters, s: &mut Stream) -> io::Result<bool> {
        if s.open.as_ref().is_none_or(|(_, len)| *len == 0) {
            return Ok(false);
        }
        if !s.credits.can_send_data() {
            bump(&counters.credit_stalls, 1);
            return Ok(false);
        }
        if s.outstanding() >= u64::from(config.send_depth) {
            return Ok(false);
        }
        let (Some((slot, len)), Some(imm)) = (s.open.take(), s.credits.take_for_data()) else {
            return Ok(false);
        };
        match Self::post(
            config,
            counters,
            s,
            SendBuf::Slot(slot),
            len as u32,
            imm,
            false,
        ) {
            Ok(()) => {
                bump(&counters.data_sends, 1);
                bump(&counters.bytes_sent, len as u64);
                Ok(true)
            }
            Err(err) => {
                s.credits.unspend(imm);
                Err(err)
            }
        }
    }

    /// Make sure the next poll (or `flush_writes`, between dispatch rounds) posts the open send
    /// buffer: writes are posted once per loop turn, so what one turn writes, e.g. an ACK and a reply,
    /// leaves in one SEND.
    pub(super) fn queue_open(tx_pending: &mut Vec<SocketId>, id: SocketId, s: &mut Stream) {
        if !s.open_queued && s.open.as_ref().is_some_and(|(_, len)| *len > 0) {
            s.open_queued = true;
            tx_pending.push(id);
        }
    }

    pub(super) fn flush_open(&mut self) {
        for id in std::mem::take(&mut self.tx_pending) {
            let Some(Entry::Stream(s)) = self.entries.get_mut(&id) else {
                continue;
            };
            s.open_queued = false;
            if !matches!(s.phase, Phase::Established | Phase::PeerClosed) {
                continue;
            }
            // Not postable now: credits or a send completion will queue it again.
            if let Err(err) = Self::post_open(&self.config, &self.counters, s) {
                Self::fail(
                    &mut self.dirty,
                    id,
                    s,
                    err.kind(),
                    format!("post send: {err}"),
                );
            }
        }
    }

    /// `Ok` if `s` takes writes now; otherwise its error, or `WouldBlock` while it is being set up.
    fn check_writable(s: &mut Stream) -> io::Result<()> {
        match s.phase {
            Phase::Established => Ok(()),
            Phase::PeerClosed => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("{} disconnected", s.peer),
            )),
            Phase::Dead => Err(s
                .error()
                .unwrap_or_else(|| io::ErrorKind::NotConnected.into())),
            _ => {
                s.write_blocked = true;
                Err(io::ErrorKind::WouldBlock.into())
            }
        }
    }

    /// [`Self::post_open`] in the middle of a write: `true` if the buffer went out and the write goes on;
    /// `false` if the write stops here, the stream marked write-blocked (no room yet) or the posting
    /// error kept in `result`.
    fn post_open_in_write(
        config: &RdmaConfig,
        counters: &RdmaCounters,
        s: &mut Stream,
        result: &mut io::Result<()>,
    ) -> bool {
        match Self::post_open(config, counters, s) {
            Ok(true) => true,
            Ok(false) => {
                s.write_blocked = true;
                false
            }
            Err(err) => {
                *result = Err(err);
                false
            }
        }
    }

    /// Copy as much of `bufs` as send buffers and credits allow into the stream's send buffers
    /// (coalescing; full buffers are posted at once, the last one stays open). Returns the bytes
    /// taken and the first posting error.
    fn copy_in(
        config: &RdmaConfig,
        counters: &RdmaCounters,
        s: &mut Stream,
        bufs: &[IoSlice<'_>],
    ) -> (usize, io::Result<()>) {
        let mut total = 0usize;
        let (mut bi, mut bo) = (0usize, 0usize); // cursor: buffer index, offset in it
        let mut result = Ok(());
        loop {
            while bi < bufs.len() && bo >= bufs[bi].len() {
                bi += 1;
                bo = 0;
            }
            if bi >= bufs.len() {
                break;
            }
            if s.open.is_none() {
                match s.send_free.pop() {
                    Some(slot) => s.open = Some((slot, 0)),
                    None => {
                        s.write_blocked = true;
                        break;
                    }
                }
            }
            let Some((slot, len)) = s.open.as_mut() else {
                break;
            };
            let room = s.chunk.min(slot.capacity() as usize).saturating_sub(*len);
            if room == 0 {
                // The open buffer is full: post it, then go on with a new one.
                if Self::post_open_in_write(config, counters, s, &mut result) {
                    continue;
                }
                break;
            }
            let dst = &mut slot.bytes_mut()[*len..*len + room];
            let mut copied = 0;
            while copied < room && bi < bufs.len() {
                let src = &bufs[bi][bo..];
                let take = src.len().min(room - copied);
                dst[copied..copied + take].copy_from_slice(&src[..take]);
                copied += take;
                bo += take;
                if bo >= bufs[bi].len() {
                    bi += 1;
                    bo = 0;
                }
            }
            *len += copied;
            total += copied;
        }
        bump(&counters.copied_bytes, total as u64);
        (total, result)
    }

    /// The end of every write: fail the stream on a posting error, queue the open buffer for the
    /// next poll, and say how much was taken (`WouldBlock` for nothing).
    fn finish_write(
        dirty: &mut Vec<SocketId>,
        tx_pending: &mut Vec<SocketId>,
        id: SocketId,
        s: &mut Stream,
        total: usize,
        result: io::Result<()>,
    ) -> io::Result<usize> {
        if let Err(err) = result {
            let kind = err.kind();
            Self::fail(dirty, id, s, kind, format!("post send: {err}"));
            if total == 0 {
                return Err(err);
            }
        }
        Self::queue_open(tx_pending, id, s);
        if total == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(total)
    }

    /// Publish what the region cache did during one write.
    fn count_cache(counters: &RdmaCounters, before: CacheStats, after: CacheStats) {
        bump(&counters.mr_cache_hits, after.hits - before.hits);
        bump(&counters.mr_cache_misses, after.misses - before.misses);
        bump(
            &counters.mr_registrations,
            after.registrations - before.registrations,
        );
        bump(
            &counters.mr_register_failures,
            after.failures - before.failures,
        );
        bump(&counters.mr_evictions, after.evictions - before.evictions);
    }

    fn can_post(config: &RdmaConfig, s: &Stream) -> bool {
        !s.send_free.is_empty() && s.outstanding() < u64::from(config.send_depth)
    }

    pub(super) fn send_credit_only(&mut self, id: SocketId) {
        let Some(Entry::Stream(s)) = self.entries.get_mut(&id) else {
            return;
        };
        s.credit_queued = false;
        if !matches!(s.phase, Phase::Established | Phase::PeerClosed) {
            return;
        }
        if s.open.as_ref().is_some_and(|(_, len)| *len > 0) {
            // Data is waiting: it carries the credits.
            Self::queue_open(&mut self.tx_pending, id, s);
            return;
        }
        if !Self::can_post(&self.config, s) {
            // Retried when a send completion frees a slot.
            s.credit_queued = true;
            self.credit_due.push(id);
            return;
        }
        let Some(imm) = s.credits.take_for_credit_only() else {
            return;
        };
        let Some(slot) = s.send_free.pop() else {
            s.credits.unspend(imm);
            return;
        };
        match Self::post(
            &self.config,
            &self.counters,
            s,
            SendBuf::Slot(slot),
            0,
            imm,
            false,
        ) {
            Ok(()) => bump(&self.counters.credit_only_sends, 1),
            Err(err) => {
                s.credits.unspend(imm);
                Self::fail(&mut self.dirty, id, s, err.kind(), err.to_string());
            }
        }
    }

    /// `WorkerStack::writev`: copy into the send buffers.
    pub(super) fn write_copied(&mut self, id: SocketId, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let Some(Entry::Stream(s)) = self.entries.get_mut(&id) else {
            return Err(self.not_a_stream(id, "writev"));
        };
        Self::check_writable(s)?;
        let (total, result) = Self::copy_in(&self.config, &self.counters, s, bufs);
        Self::finish_write(&mut self.dirty, &mut self.tx_pending, id, s, total, result)
    }

    /// `WorkerStack::write_bytes`: long buffers are sent from their own memory (registered through the
    /// region cache), short ones (and long ones that cannot be registered) are copied.
    pub(super) fn write_zero_copy(&mut self, id: SocketId, bufs: &[Bytes]) -> io::Result<usize> {
        let zc_min = self.config.zero_copy_min as usize;
        if zc_min == 0 || !bufs.iter().any(|b| b.len() >= zc_min) {
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let count = bufs.len().min(MAX_IOV);
            for (slot, buf) in slices.iter_mut().zip(bufs) {
                *slot = IoSlice::new(buf);
            }
            return self.writev(id, &slices[..count]);
        }
        let config = &self.config;
        let counters = &self.counters;
        let cache = &mut self.mr_cache;
        let Some(Entry::Stream(s)) = self.entries.get_mut(&id) else {
            return Err(TransportError::refused(id, "writev", self.entries.get(&id)));
        };
        Self::check_writable(s)?;
        let stats_before = cache.stats();
        let mut total = 0usize;
        let mut result = Ok(());
        let mut i = 0;
        while i < bufs.len() {
            // A run of short buffers (or a long one that could not be registered) is copied.
            let region = match bufs.get(i).filter(|b| b.len() >= zc_min) {
                Some(buf) => match cache.get(buf) {
                    Ok(region) => Some(region),
                    Err(refused) => {
                        if let Refused::Failed(err) = &refused {
                            tracing::debug!(%id, error = %err, "zero-copy registration failed: copying");
                        }
                        bump(&counters.zero_copy_fallbacks, 1);
                        None
                    }
                },
                None => None,
            };
            let Some(region) = region else {
                let mut j = i + 1;
                while j < bufs.len() && j - i < MAX_IOV && bufs[j].len() < zc_min {
                    j += 1;
                }
                let mut slices = [IoSlice::new(&[]); MAX_IOV];
                for (slot, buf) in slices.iter_mut().zip(&bufs[i..j]) {
                    *slot = IoSlice::new(buf);
                }
                let want: usize = bufs[i..j].iter().map(Bytes::len).sum();
                let (n, r) = Self::copy_in(config, counters, s, &slices[..j - i]);
                total += n;
                if r.is_err() || n < want {
                    result = r;
                    break;
                }
                i = j;
                continue;
            };
            let buf = &bufs[i];
            // What is already copied into the open buffer goes first (the stream stays in order): as
            // the head of the first piece's SEND, or alone if it fills a SEND already.
            if s.open.as_ref().is_some_and(|(_, len)| *len >= s.chunk)
                && !Self::post_open_in_write(config, counters, s, &mut result)
            {
                break;
            }
            let mut off = 0;
            while off < buf.len() {
                if !s.credits.can_send_data() {
                    bump(&counters.credit_stalls, 1);
                    s.write_blocked = true;
                    break;
                }
                if s.outstanding() >= u64::from(config.send_depth) {
                    s.write_blocked = true;
                    break;
                }
                let head = s.open.as_ref().map_or(0, |(_, len)| *len);
                if head >= s.chunk {
                    // Not reached: a full open buffer was posted above, and pieces consume it.
                    s.write_blocked = true;
                    break;
                }
                let n = (buf.len() - off).min(s.chunk - head);
                let Some(chunk) = PinnedChunk::new(region.clone(), buf.slice(off..off + n)) else {
                    result = Err(io::Error::other("pinned chunk outside its region"));
                    break;
                };
                let Some(imm) = s.credits.take_for_data() else {
                    s.write_blocked = true;
                    break;
                };
                // The first piece carries the copied head, if any (two SGEs, one SEND).
                let send = match s.open.take() {
                    Some((slot, head)) if head > 0 => SendBuf::Joined(slot, head as u32, chunk),
                    other => {
                        s.open = other;
                        SendBuf::Pinned(chunk)
                    }
                };
                let last = off + n == buf.len();
                let len = (head + n) as u32;
                if let Err(err) = Self::post(config, counters, s, send, len, imm, last) {
                    s.credits.unspend(imm);
                    result = Err(err);
                    break;
                }
                bump(&counters.data_sends, 1);
                bump(&counters.bytes_sent, (head + n) as u64);
                bump(&counters.zero_copy_bytes, n as u64);
                off += n;
                total += n;
            }
            if off < buf.len() {
                break;
            }
            i += 1;
        }
        Self::count_cache(counters, stats_before, cache.stats());
        Self::finish_write(&mut self.dirty, &mut self.tx_pending, id, s, total, result)
    }
}
