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
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

impl DpdkStats {
    /// Frames dropped as malformed (short, bad headers, bad checksums, bad offsets), not merely not ours.
    pub fn malformed(&self) -> u64 {
        self.drop_short
            + self.drop_bad_ip_header
            + self.drop_bad_ip_checksum
            + self.drop_bad_tcp_offset
            + self.drop_bad_tcp_checksum
    }
}
