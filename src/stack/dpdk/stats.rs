//! Counters of the dpdk stack: one [`DpdkCounters`] per worker (written only by that worker, read by
//! anyone), summed into a [`DpdkStats`] snapshot. Ours, not the driver's: memif resets its port counters
//! whenever the peer goes away.

use std::sync::atomic::{AtomicU64, Ordering};

use super::classify::DropReason;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Live counters of one worker.
        #[derive(Debug, Default)]
        pub struct DpdkCounters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A snapshot of [`DpdkCounters`], summed over workers by [`super::DpdkStack::stats`].
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
        pub struct DpdkStats {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl DpdkCounters {
            pub fn snapshot(&self) -> DpdkStats {
                DpdkStats { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl DpdkStats {
            /// Field-wise sum.
            pub fn add(&mut self, other: &DpdkStats) {
                $(self.$name += other.$name;)*
            }
        }
    };
}

counters! {
    /// Frames taken from the NIC queue by rx bursts.
    rx_packets,
    /// Frames the NIC accepted from tx bursts.
    tx_packets,
    /// TCP segments that hashed to another worker and were handed to it through its ring.
    handoff_out,
    /// Segments received from other workers' rings.
    handoff_in,
    /// Hand-offs lost because the owner's ring was full.
    handoff_dropped,
    /// ARP frames copied to the other workers.
    arp_copies,
    /// Frames dropped: shorter than their headers.
    drop_short,
    /// Frames dropped: another MAC or IP.
    drop_not_for_us,
    /// Frames dropped: not IPv4 or ARP.
    drop_not_ipv4,
    /// Frames dropped: bad IPv4 version, header or total length.
    drop_bad_ip_header,
    drop_bad_ip_checksum,
    drop_fragment,
    drop_bad_tcp_offset,
    drop_bad_tcp_checksum,
    /// Frames dropped: IP protocol other than TCP and ICMP.
    drop_unsupported,
    /// Frames dropped: source 255.255.255.255 or our subnet's broadcast.
    drop_src_broadcast,
    /// Frames dropped: multicast source.
    drop_src_multicast,
    /// Frames dropped: our own address as the source.
    drop_src_ours,
    /// Frames dropped: source in 0.0.0.0/8.
    drop_src_this_network,
    /// Frames dropped: source in 127.0.0.0/8.
    drop_src_loopback,
    /// Frames dropped: source in 240.0.0.0/4.
    drop_src_reserved,
    /// Frames smoltcp built but no mbuf was free for.
    tx_nombuf,
    /// Frames dropped because the TX backlog was full.
    tx_dropped,
    /// Connections reset by [`super::DpdkStack::abort_all_connections`].
    aborted,
    /// Times the worker slept in the idle back-off.
    idle_sleeps,
    /// Received segments trimmed to the window we advertised (see `window`).
    rx_trimmed_past_window,
    /// Sockets added to listen pools (on demand, for SYNs waiting for smoltcp, up to `listen_pool_max`).
    listen_pool_grown,
    /// Idle listening sockets removed once a pool had more free ones than `listen_pool` for a while.
    listen_pool_shrunk,
    /// The largest listen pool (LISTEN + SYN-RECEIVED sockets of one listener) this worker has had (summed
    /// over workers in [`super::DpdkStack::stats`]; per worker in `worker_stats`).
    listen_pool_peak,
    /// Half-open connections put back to LISTEN after `syn_timeout` in SYN-RECEIVED.
    syn_received_timeouts,
    /// Half-open connections put back to LISTEN early (oldest first) for new SYNs, the pool at its cap.
    syn_received_evicted,
}

impl DpdkCounters {
    pub fn count_drop(&self, reason: DropReason) {
        let c = match reason {
            DropReason::Short => &self.drop_short,
            DropReason::NotForUs => &self.drop_not_for_us,
            DropReason::NotIpv4 => &self.drop_not_ipv4,
            DropReason::BadIpHeader => &self.drop_bad_ip_header,
            DropReason::BadIpChecksum => &self.drop_bad_ip_checksum,
            DropReason::Fragment => &self.drop_fragment,
            DropReason::BadTcpOffset => &self.drop_bad_tcp_offset,
            DropReason::BadTcpChecksum => &self.drop_bad_tcp_checksum,
            DropReason::Unsupported => &self.drop_unsupported,
            DropReason::SrcBroadcast => &self.drop_src_broadcast,
            DropReason::SrcMulticast => &self.drop_src_multicast,
            DropReason::SrcOurs => &self.drop_src_ours,
            DropReason::SrcThisNetwork => &self.drop_src_this_network,
            DropReason::SrcLoopback => &self.drop_src_loopback,
            DropReason::SrcReserved => &self.drop_src_reserved,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

impl DpdkStats {
    /// Frames dropped for a source address no host on the link can own.
    pub fn impossible_source(&self) -> u64 {
        self.drop_src_broadcast
            + self.drop_src_multicast
            + self.drop_src_ours
            + self.drop_src_this_network
            + self.drop_src_loopback
            + self.drop_src_reserved
    }

    /// Frames dropped as malformed (short, bad headers, bad checksums, bad offsets), not merely not ours.
    pub fn malformed(&self) -> u64 {
        self.drop_short
            + self.drop_bad_ip_header
            + self.drop_bad_ip_checksum
            + self.drop_bad_tcp_offset
            + self.drop_bad_tcp_checksum
    }
}
