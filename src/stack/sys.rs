//! The posix stack's one meeting with uninitialised memory: receiving from a socket straight into the
//! free capacity of a [`BytesMut`], so received bytes are copied once (kernel to frame buffer), not
//! twice (kernel to a read buffer, then into the frame buffer).
//!
//! Invariant: the buffer's length grows by exactly the byte count the kernel reports written.

#![allow(unsafe_code)] // `BytesMut::set_len` after recv(2) initialised the bytes; see SAFETY below

use std::io;

use bytes::BytesMut;
use socket2::SockRef;

/// Receive at most `max` bytes from `sock`, appending them to `buf` (which must have that much free
/// capacity; less is read otherwise). Returns what recv(2) returned.
pub(crate) fn recv_into(sock: SockRef<'_>, buf: &mut BytesMut, max: usize) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let len = spare.len().min(max);
    let n = sock.recv(&mut spare[..len])?;
    debug_assert!(n <= len);
    let n = n.min(len);
    // recv(2) wrote the first `n` bytes of `spare`: socket2 passes the slice's pointer and length and
    // returns the count the kernel reported, never more than `len`.
    // SAFETY: the `n` bytes after the current length are initialised (above) and within capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}
