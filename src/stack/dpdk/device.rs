//! smoltcp's `phy::Device` over one DPDK queue pair: the packet seam under the userspace TCP (Demikernel's
//! second seam, smoltcp's `Device`).
//!
//! Owns the worker's [`Queue`] and [`Mempool`], the frames accepted for smoltcp (`rx`, filled by the worker
//! after classification) and the TX batch. Tokens lend mbuf memory directly: an RX token's `consume` reads
//! the received mbuf in place (a multi-segment packet is first copied into a scratch buffer); a TX token
//! allocates an mbuf, appends `len` bytes and lets smoltcp write the frame into it, then queues it for the
//! next burst. No heap allocation per packet: the vectors are sized once.
//!
//! Invariants: `tx` holds at most `TX_BACKLOG` frames (beyond that new frames are dropped and counted;
//! TCP retransmits them); frames go out in the order smoltcp produced them; every frame smoltcp builds and
//! every frame it is given passes the [`WindowGuard`] (which keeps smoltcp 0.12 from panicking on bytes past
//! its advertised window).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::classify::tcp_header_lengths;
use super::ffi::{Mbuf, Mempool, Queue, BURST};
use super::stats::DpdkCounters;
use super::window::WindowGuard;

/// Most frames waiting for the NIC before new ones are dropped.
const TX_BACKLOG: usize = 16 * BURST;
/// Ethernet header bytes, counted in smoltcp's `max_transmission_unit` for Ethernet media.
const ETH_HEADER: usize = 14;

/// The transmit half: the queue, its pool and the pending batch.
pub struct TxSide {
    queue: Queue,
    pool: Arc<Mempool>,
    tx: Vec<Mbuf>,
    checksum_offload: bool,
    counters: Arc<DpdkCounters>,
    /// Where a frame goes when no mbuf is left (it is then dropped).
    spill: Box<[u8]>,
}

impl TxSide {
    /// Push the pending batch to the NIC, a burst at a time; what the NIC does not take stays queued.
    pub fn flush(&mut self) -> usize {
        let mut sent = 0;
        while !self.tx.is_empty() {
            let n = self.queue.tx_burst(&mut self.tx);
            sent += n;
            if n == 0 {
                break;
            }
        }
        if sent > 0 {
            self.counters
                .tx_packets
                .fetch_add(sent as u64, Ordering::Relaxed);
        }
        sent
    }

    pub fn pending(&self) -> usize {
        self.tx.len()
    }

    pub fn pool(&self) -> &Mempool {
        &self.pool
    }

    pub fn queue_mut(&mut self) -> &mut Queue {
        &mut self.queue
    }

    /// Queue a frame built outside smoltcp (tests inject raw frames this way).
    pub fn send_raw(&mut self, frame: &[u8]) -> bool {
        let Some(mut m) = self.pool.alloc() else {
            return false;
        };
        let Some(buf) = m.append(frame.len()) else {
            return false;
        };
        buf.copy_from_slice(frame);
        self.push(m);
        true
    }

    fn push(&mut self, m: Mbuf) {
        if self.tx.len() >= TX_BACKLOG {
            self.counters.tx_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.tx.push(m);
        if self.tx.len() >= BURST {
            self.flush();
        }
    }
}

/// One worker's device.
pub struct MbufDevice {
    /// Frames classified as ours, waiting for smoltcp.
    pub rx: VecDeque<Mbuf>,
    pub tx: TxSide,
    /// Shared by the RX and TX tokens smoltcp holds at once; only this worker's thread touches it.
    pub window: RefCell<WindowGuard>,
    mtu: usize,
    scratch: Box<[u8]>,
}

impl MbufDevice {
    pub fn new(
        queue: Queue,
        pool: Arc<Mempool>,
        mtu: u16,
        checksum_offload: bool,
        counters: Arc<DpdkCounters>,
    ) -> Self {
        let frame_max = usize::from(mtu) + ETH_HEADER;
        MbufDevice {
            rx: VecDeque::with_capacity(4 * BURST),
            window: RefCell::new(WindowGuard::new(counters.clone())),
            tx: TxSide {
                queue,
                pool,
                tx: Vec::with_capacity(TX_BACKLOG),
                checksum_offload,
                counters,
                spill: vec![0; frame_max].into_boxed_slice(),
            },
            mtu: usize::from(mtu),
            scratch: vec![0; 64 * 1024].into_boxed_slice(),
        }
    }
}

pub struct RxToken<'a> {
    mbuf: Mbuf,
    scratch: &'a mut [u8],
    window: &'a RefCell<WindowGuard>,
}

pub struct TxToken<'a> {
    side: &'a mut TxSide,
    window: &'a RefCell<WindowGuard>,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let mut mbuf = self.mbuf;
        if mbuf.segments() <= 1 {
            self.window.borrow_mut().on_receive(mbuf.data_mut());
            f(mbuf.data())
        } else {
            let n = mbuf.copy_out(self.scratch);
            self.window.borrow_mut().on_receive(&mut self.scratch[..n]);
            f(&self.scratch[..n])
        }
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let side = self.side;
        let mut mbuf = side.pool.alloc();
        let appended = mbuf.as_mut().and_then(|m| m.append(len)).is_some();
        match (mbuf, appended) {
            (Some(mut m), true) => {
                let r = f(m.data_mut());
                self.window.borrow_mut().on_transmit(m.data());
                if side.checksum_offload {
                    if let Some((l2, l3)) = tcp_header_lengths(m.data()) {
                        m.offload_tcp_checksum(l2, l3);
                    }
                }
                side.push(m);
                r
            }
            _ => {
                // No mbuf (or the frame is larger than one): let smoltcp build it, then drop it.
                side.counters.tx_nombuf.fetch_add(1, Ordering::Relaxed);
                let n = len.min(side.spill.len());
                let r = f(&mut side.spill[..n]);
                // smoltcp recorded what it advertised in this frame, sent or not.
                self.window.borrow_mut().on_transmit(&side.spill[..n]);
                r
            }
        }
    }
}

impl phy::Device for MbufDevice {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let mbuf = self.rx.pop_front()?;
        Some((
            RxToken {
                mbuf,
                scratch: &mut self.scratch,
                window: &self.window,
            },
            TxToken {
                side: &mut self.tx,
                window: &self.window,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        if self.tx.tx.len() >= TX_BACKLOG {
            // Let smoltcp keep its data until the NIC drains instead of building frames to drop.
            self.tx.flush();
            if self.tx.tx.len() >= TX_BACKLOG {
                return None;
            }
        }
        Some(TxToken {
            side: &mut self.tx,
            window: &self.window,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu + ETH_HEADER;
        caps.max_burst_size = None;
        // Received IPv4 and TCP checksums were verified by the classifier (or the port); ICMP is left to
        // smoltcp. On transmit, the port fills IPv4/TCP checksums when it offers the offload.
        let tx = if self.tx.checksum_offload {
            Checksum::None
        } else {
            Checksum::Tx
        };
        let mut cs = ChecksumCapabilities::default();
        cs.ipv4 = tx;
        cs.tcp = tx;
        cs.udp = Checksum::Both;
        cs.icmpv4 = Checksum::Both;
        caps.checksum = cs;
        caps
    }
}
