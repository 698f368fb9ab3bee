//! The per-worker registered buffer pool: fixed-size slots carved out of memory regions that are
//! registered once (`ibv_reg_mr`) and grown a chunk at a time up to a limit.
//!
//! A [`Slot`] is an owned token for one buffer: holding it is the right to read and write its bytes.
//! Posting it to a queue pair moves the token into the QP (see [`super::verbs::CmId::post_recv`]), so no
//! Rust reference can alias memory the device is using. Each slot keeps its chunk alive (`Rc`), and a
//! chunk keeps its protection domain alive, so memory is deregistered only after the last slot is gone.
//!
//! [`MemoryRegion`] registers a caller's `Bytes` instead (zero-copy sends): the region owns a clone of the
//! `Bytes`, and a posted [`PinnedChunk`] owns an `Rc` of the region, so the memory can be neither freed
//! nor deregistered while the device may read it. [`SendBuf`] is what a posted SEND holds: either kind.
//!
//! Registration failures name the likely cause: `RLIMIT_MEMLOCK` (with its current value) for
//! `ENOMEM`/`EPERM`/`EAGAIN`.
#![allow(unsafe_code)] // registered memory handed to the device; see the SAFETY notes

use std::alloc::{self, Layout};
use std::io;
use std::ptr::NonNull;
use std::rc::Rc;

use bytes::Bytes;

use super::sys;
use super::verbs::ProtectionDomain;

const ALIGN: usize = 4096;

/// One registered allocation.
struct Chunk {
    mem: NonNull<u8>,
    layout: Layout,
    mr: NonNull<sys::ibv_mr>,
    lkey: u32,
    _pd: Rc<ProtectionDomain>,
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // No slot of this chunk is left (each holds an Rc), so the device no longer uses the
        // memory; deregister, then free what we allocated with this layout.
        // SAFETY: the conditions just stated hold here.
        unsafe {
            sys::ibv_dereg_mr(self.mr.as_ptr());
            alloc::dealloc(self.mem.as_ptr(), self.layout);
        }
    }
}

/// One buffer of the pool. Not `Clone`: whoever holds it owns its bytes.
pub struct Slot {
    chunk: Rc<Chunk>,
    ptr: NonNull<u8>,
    capacity: u32,
    index: u32,
}

impl Slot {
    /// Pool-wide index of this slot (stable for its life).
    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    pub fn bytes(&self) -> &[u8] {
        // The slot owns [ptr, ptr+capacity) inside its live chunk; while a Slot exists outside a
        // QP the device does not touch that range (posting moves the Slot), so shared access is sound.
        // SAFETY: the conditions just stated hold here.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.capacity as usize) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.capacity as usize) }
    }

    /// The scatter/gather entry for the first `len` bytes.
    pub(super) fn sge(&self, len: u32) -> sys::ibv_sge {
        sys::ibv_sge {
            addr: self.ptr.as_ptr() as u64,
            length: len.min(self.capacity),
            lkey: self.chunk.lkey,
        }
    }
}

/// Fixed-size registered buffers for one worker.
pub struct BufferPool {
    pd: Rc<ProtectionDomain>,
    slot_size: u32,
    chunk_slots: u32,
    max_slots: u32,
    total: u32,
    free: Vec<Slot>,
}

impl BufferPool {
    /// A pool of `slot_size`-byte buffers, registered `chunk_slots` at a time, at most `max_slots`.
    pub fn new(
        pd: &Rc<ProtectionDomain>,
        slot_size: u32,
        chunk_slots: u32,
        max_slots: u32,
    ) -> Self {
        BufferPool {
            pd: pd.clone(),
            slot_size: slot_size.max(64),
            chunk_slots: chunk_slots.max(1),
            max_slots,
            total: 0,
            free: Vec::new(),
        }
    }

    /// Slots registered so far.
    pub fn total(&self) -> u32 {
        self.total
    }

    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Take `n` slots at once (all or none), growing the pool if it may.
    pub fn take(&mut self, n: usize) -> io::Result<Vec<Slot>> {
        while self.free.len() < n {
            if !self.grow()? {
                return Err(io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    format!(
                        "RDMA buffer pool exhausted: {n} slots wanted, {} free of {} (max {}); raise \
                         RdmaConfig::max_pool_slots",
                        self.free.len(),
                        self.total,
                        self.max_slots
                    ),
                ));
            }
        }
        let at = self.free.len() - n;
        Ok(self.free.split_off(at))
    }

    /// Return a slot.
    pub fn give(&mut self, slot: Slot) {
        self.free.push(slot);
    }

    fn grow(&mut self) -> io::Result<bool> {
        let count = self
            .chunk_slots
            .min(self.max_slots.saturating_sub(self.total));
        if count == 0 {
            return Ok(false);
        }
        let bytes = count as usize * self.slot_size as usize;
        let layout = Layout::from_size_align(bytes, ALIGN)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        // SAFETY: layout has a non-zero size (count ≥ 1, slot_size ≥ 64).
        let mem = NonNull::new(unsafe { alloc::alloc_zeroed(layout) }).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::OutOfMemory,
                "allocating the RDMA buffer pool",
            )
        })?;
        let access = sys::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0 as i32;
        // [mem, mem+bytes) is a live allocation we own; the PD is live. The MR is deregistered
        // before the memory is freed (Chunk::drop).
        // SAFETY: the conditions just stated hold here.
        let mr = unsafe { sys::msgr_ibv_reg_mr(self.pd.raw(), mem.as_ptr().cast(), bytes, access) };
        let Some(mr) = NonNull::new(mr) else {
            let err = io::Error::last_os_error();
            // SAFETY: allocated above with this layout and never handed out.
            unsafe { alloc::dealloc(mem.as_ptr(), layout) };
            return Err(registration_error(bytes, err));
        };
        // SAFETY: mr is a live MR; lkey is a plain field.
        let lkey = unsafe { (*mr.as_ptr()).lkey };
        let chunk = Rc::new(Chunk {
            mem,
            layout,
            mr,
            lkey,
            _pd: self.pd.clone(),
        });
        for i in 0..count {
            // SAFETY: i * slot_size < bytes: the offset stays inside the allocation.
            let ptr = unsafe { mem.add(i as usize * self.slot_size as usize) };
            self.free.push(Slot {
                chunk: chunk.clone(),
                ptr,
                capacity: self.slot_size,
                index: self.total + i,
            });
        }
        self.total += count;
        tracing::debug!(
            slots = count,
            slot_size = self.slot_size,
            total = self.total,
            "registered RDMA buffers"
        );
        Ok(true)
    }
}

/// A memory region registered over the memory of a `Bytes`, for SENDs that read the caller's buffer
/// directly (zero copy; cached per worker by `super::mr_cache`). It owns a clone of that `Bytes`, so the
/// memory stays allocated and unchanged for as long as it is registered.
pub struct MemoryRegion {
    mr: NonNull<sys::ibv_mr>,
    lkey: u32,
    bytes: Bytes,
    _pd: Rc<ProtectionDomain>,
}

impl MemoryRegion {
    /// Register `bytes` (non-empty) for local reads by the device (SEND sources only).
    pub fn register(pd: &Rc<ProtectionDomain>, bytes: &Bytes) -> io::Result<MemoryRegion> {
        if bytes.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot register an empty buffer",
            ));
        }
        let bytes = bytes.clone();
        // [ptr, ptr+len) is the memory of `bytes`, and the region keeps that clone until Drop has
        // deregistered it: the memory cannot be freed or reused meanwhile, and `Bytes` is immutable (no
        // `BytesMut` can reclaim memory while a clone exists). Access 0: the device only reads it. The PD
        // is live.
        let (ptr, len) = (bytes.as_ptr() as *mut _, bytes.len());
        // SAFETY: the conditions just stated hold here.
        let mr = unsafe { sys::msgr_ibv_reg_mr(pd.raw(), ptr, len, 0) };
        let Some(mr) = NonNull::new(mr) else {
            return Err(registration_error(bytes.len(), io::Error::last_os_error()));
        };
        // SAFETY: mr is a live MR; lkey is a plain field.
        let lkey = unsafe { (*mr.as_ptr()).lkey };
        Ok(MemoryRegion {
            mr,
            lkey,
            bytes,
            _pd: pd.clone(),
        })
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // Nothing posted reads this region any more: every posted chunk holds an Rc of it (see
        // PinnedChunk), so this runs after their completions (or the QP's destruction). Deregister
        // before `bytes` is released (fields drop after this body).
        // SAFETY: the conditions just stated hold here.
        unsafe { sys::ibv_dereg_mr(self.mr.as_ptr()) };
    }
}

impl super::mr_cache::Registered for MemoryRegion {
    fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

/// Registers buffers on one protection domain (the stack's [`super::mr_cache::Registrar`]).
pub struct PdRegistrar(pub Rc<ProtectionDomain>);

impl super::mr_cache::Registrar for PdRegistrar {
    type Region = MemoryRegion;
    fn register(&mut self, bytes: &Bytes) -> io::Result<MemoryRegion> {
        MemoryRegion::register(&self.0, bytes)
    }
}

/// A piece of a registered caller buffer, posted as one SEND: it keeps the buffer (a `Bytes` clone) and
/// its region alive until the completion that covers the SEND.
pub struct PinnedChunk {
    region: Rc<MemoryRegion>,
    bytes: Bytes,
}

impl PinnedChunk {
    /// `bytes` must lie inside `region`'s memory and be at most `u32::MAX` long; `None` otherwise.
    pub fn new(region: Rc<MemoryRegion>, bytes: Bytes) -> Option<PinnedChunk> {
        let (start, len) = (bytes.as_ptr() as usize, bytes.len());
        let (rstart, rlen) = (region.bytes.as_ptr() as usize, region.bytes.len());
        let inside = start >= rstart && start + len <= rstart + rlen;
        (inside && u32::try_from(len).is_ok()).then_some(PinnedChunk { region, bytes })
    }

    /// The scatter/gather entry for the whole chunk (inside the region, checked by `new`).
    pub(super) fn sge(&self) -> sys::ibv_sge {
        sys::ibv_sge {
            addr: self.bytes.as_ptr() as u64,
            length: self.bytes.len() as u32,
            lkey: self.region.lkey,
        }
    }
}

/// What one posted SEND reads from: a pool slot (the copy path), a piece of a caller's buffer, or both
/// (the copied bytes that precede a large buffer in the stream, then its first piece: one SEND).
pub enum SendBuf {
    Slot(Slot),
    Pinned(PinnedChunk),
    /// The first `.1` bytes of the slot, then the chunk.
    Joined(Slot, u32, PinnedChunk),
}

impl SendBuf {
    /// Fill `out` with the scatter/gather list (a slot: its first `len` bytes; a pinned chunk: all of
    /// it); returns how many entries were used and their total length.
    pub(super) fn sges(&self, len: u32, out: &mut [sys::ibv_sge; 2]) -> (i32, u32) {
        match self {
            SendBuf::Slot(slot) => {
                out[0] = slot.sge(len);
                let len = out[0].length;
                (i32::from(len > 0), len)
            }
            SendBuf::Pinned(chunk) => {
                out[0] = chunk.sge();
                (1, out[0].length)
            }
            SendBuf::Joined(slot, head, chunk) => {
                out[0] = slot.sge(*head);
                out[1] = chunk.sge();
                (2, out[0].length + out[1].length)
            }
        }
    }

    /// The pool slot in this buffer, if any (given back to the stream when the SEND completes).
    pub fn into_slot(self) -> Option<Slot> {
        match self {
            SendBuf::Slot(slot) | SendBuf::Joined(slot, _, _) => Some(slot),
            SendBuf::Pinned(_) => None,
        }
    }
}

/// The error for a failed `ibv_reg_mr`, naming the memlock limit when that is the likely cause.
fn registration_error(bytes: usize, err: io::Error) -> io::Error {
    let errno = err.raw_os_error().unwrap_or(0);
    if matches!(errno, libc::ENOMEM | libc::EPERM | libc::EAGAIN) {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into lim.
        let have = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } == 0;
        let show = |v: libc::rlim_t| {
            if v == libc::RLIM_INFINITY {
                "unlimited".to_string()
            } else {
                format!("{v} bytes")
            }
        };
        let limit = if have {
            format!(
                "RLIMIT_MEMLOCK is {} (hard {})",
                show(lim.rlim_cur),
                show(lim.rlim_max)
            )
        } else {
            "RLIMIT_MEMLOCK is unknown".to_string()
        };
        return io::Error::new(
            err.kind(),
            format!(
                "ibv_reg_mr of {bytes} bytes failed: {err}; {limit}: raise it (ulimit -l, \
                 LimitMEMLOCK= in systemd, /etc/security/limits.conf) or shrink the RDMA buffer pool"
            ),
        );
    }
    io::Error::new(
        err.kind(),
        format!("ibv_reg_mr of {bytes} bytes failed: {err}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_error_names_memlock() {
        let err = registration_error(1 << 20, io::Error::from_raw_os_error(libc::ENOMEM));
        let text = err.to_string();
        assert!(text.contains("RLIMIT_MEMLOCK"), "{text}");
        assert!(text.contains("1048576 bytes"), "{text}");
        let err = registration_error(4096, io::Error::from_raw_os_error(libc::EINVAL));
        assert!(!err.to_string().contains("RLIMIT_MEMLOCK"));
    }
}
