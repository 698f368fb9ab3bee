//! First look at every received frame, before smoltcp sees it: validate Ethernet / IPv4 / TCP headers and
//! checksums, drop (and count by reason) whatever is malformed or not ours, and say which worker owns a TCP
//! segment (the software RSS hash: DPDK's Toeplitz over the 4-tuple with the port's key, then a 128-entry
//! redirection table spread round-robin over the queues, as ethdev sets a RETA up by default).
//!
//! Source addresses no host on the link can own are dropped here too (broadcast and multicast, our own
//! address, 0.0.0.0/8, 127.0.0.0/8, 240.0.0.0/4): smoltcp would answer such a SYN with a SYN-ACK nobody can
//! receive and hold a half-open socket for it.
//!
//! Pure functions over byte slices: no panics on any input (every length is checked before it is used), so
//! a hostile frame can cost a drop counter, never the worker.

use std::net::Ipv4Addr;

use super::ffi::{softrss, RxChecksum, RSS_KEY_LEN};

pub const ETH_HEADER: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const IP_PROTO_ICMP: u8 = 1;
pub const IP_PROTO_TCP: u8 = 6;
/// Entries of the redirection table hashes index (ethdev's common RETA size).
pub const RETA_SIZE: u32 = 128;

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than the headers it claims (Ethernet, IPv4 total length, TCP header).
    Short,
    /// Addressed to another MAC or IP (a promiscuous port sees everything on the link).
    NotForUs,
    /// An ethertype we do not speak (IPv6, LLDP, …).
    NotIpv4,
    /// IPv4 header: bad version, header length or total length.
    BadIpHeader,
    BadIpChecksum,
    /// A fragment (we never send fragments; TCP segments fit the MTU).
    Fragment,
    /// TCP data offset below 5 or past the segment.
    BadTcpOffset,
    BadTcpChecksum,
    /// An IP protocol other than TCP and ICMP.
    Unsupported,
    /// Source 255.255.255.255 or our subnet's broadcast address.
    SrcBroadcast,
    /// Source in 224.0.0.0/4.
    SrcMulticast,
    /// Source is our own address.
    SrcOurs,
    /// Source in 0.0.0.0/8 ("this network": never a sender on the wire).
    SrcThisNetwork,
    /// Source in 127.0.0.0/8 (loopback never leaves a host).
    SrcLoopback,
    /// Source in 240.0.0.0/4 (reserved).
    SrcReserved,
}

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A valid TCP segment for us, owned by the worker of queue `owner`.
    Tcp {
        owner: u16,
    },
    /// ARP: every worker keeps its own neighbour cache, so each gets a copy.
    Arp,
    /// Valid IPv4 for us that is not TCP (ICMP): the receiving worker answers it.
    Local,
    Drop(DropReason),
}

/// Who we are on the link, and how flows spread over queues.
#[derive(Debug, Clone)]
pub struct Local {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    /// Our subnet's prefix length (for its broadcast address).
    pub prefix_len: u8,
    pub queues: u16,
    pub rss_key: [u8; RSS_KEY_LEN],
    /// Skip checksum verification the port already did (or that smoltcp will do).
    pub verify_checksums: bool,
}

impl Local {
    /// The queue whose worker owns a flow, from the tuple as it appears in frames we *receive*.
    pub fn owner(&self, src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> u16 {
        if self.queues <= 1 {
            return 0;
        }
        let tuple = [
            u32::from(src),
            u32::from(dst),
            (u32::from(sport) << 16) | u32::from(dport),
        ];
        let hash = softrss(&tuple, &self.rss_key);
        ((hash % RETA_SIZE) % u32::from(self.queues)) as u16
    }

    /// Why no frame may come from `src`, or `None` when a host on the link may own it.
    pub fn impossible_source(&self, src: Ipv4Addr) -> Option<DropReason> {
        let first = src.octets()[0];
        let subnet_broadcast = (self.prefix_len <= 30).then(|| {
            let host_mask = u32::MAX >> self.prefix_len;
            Ipv4Addr::from(u32::from(self.ip) | host_mask)
        });
        if src.is_broadcast() || Some(src) == subnet_broadcast {
            Some(DropReason::SrcBroadcast)
        } else if src.is_multicast() {
            Some(DropReason::SrcMulticast)
        } else if src == self.ip {
            Some(DropReason::SrcOurs)
        } else if first == 0 {
            Some(DropReason::SrcThisNetwork)
        } else if src.is_loopback() {
            Some(DropReason::SrcLoopback)
        } else if first >= 240 {
            Some(DropReason::SrcReserved)
        } else {
            None
        }
    }

    /// Classify one received frame. `offload` is what the port's RX checksum offload reported.
    pub fn classify(&self, frame: &[u8], offload: RxChecksum) -> Verdict {
        let Some(eth) = frame.get(..ETH_HEADER) else {
            return Verdict::Drop(DropReason::Short);
        };
        let dst_mac = &eth[0..6];
        let ethertype = u16::from_be_bytes([eth[12], eth[13]]);
        let broadcast = dst_mac == [0xff; 6];
        if dst_mac != self.mac && !broadcast {
            return Verdict::Drop(DropReason::NotForUs);
        }
        match ethertype {
            ETHERTYPE_ARP => {
                if frame.len() < ETH_HEADER + 28 {
                    Verdict::Drop(DropReason::Short)
                } else {
                    Verdict::Arp
                }
            }
            ETHERTYPE_IPV4 if !broadcast => self.classify_ipv4(&frame[ETH_HEADER..], offload),
            ETHERTYPE_IPV4 => Verdict::Drop(DropReason::NotForUs),
            _ => Verdict::Drop(DropReason::NotIpv4),
        }
    }

    fn classify_ipv4(&self, ip: &[u8], offload: RxChecksum) -> Verdict {
        if ip.len() < 20 {
            return Verdict::Drop(DropReason::Short);
        }
        if ip[0] >> 4 != 4 {
            return Verdict::Drop(DropReason::BadIpHeader);
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        if ihl < 20 || total < ihl {
            return Verdict::Drop(DropReason::BadIpHeader);
        }
        // Ethernet pads short frames, so the frame may be longer than the datagram, never shorter.
        let Some(ip) = ip.get(..total) else {
            return Verdict::Drop(DropReason::Short);
        };
        if offload.ip_bad
            || (self.verify_checksums && !offload.ip_good && checksum(0, &ip[..ihl]) != 0xffff)
        {
            return Verdict::Drop(DropReason::BadIpChecksum);
        }
        let flags_frag = u16::from_be_bytes([ip[6], ip[7]]);
        if flags_frag & 0x3fff != 0 {
            return Verdict::Drop(DropReason::Fragment);
        }
        let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        if dst != self.ip {
            return Verdict::Drop(DropReason::NotForUs);
        }
        if let Some(reason) = self.impossible_source(src) {
            return Verdict::Drop(reason);
        }
        match ip[9] {
            IP_PROTO_TCP => {
                let tcp = &ip[ihl..];
                if tcp.len() < 20 {
                    return Verdict::Drop(DropReason::Short);
                }
                let offset = usize::from(tcp[12] >> 4) * 4;
                if offset < 20 || offset > tcp.len() {
                    return Verdict::Drop(DropReason::BadTcpOffset);
                }
                if offload.l4_bad
                    || (self.verify_checksums
                        && !offload.l4_good
                        && tcp_checksum(src, dst, tcp) != 0xffff)
                {
                    return Verdict::Drop(DropReason::BadTcpChecksum);
                }
                let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
                let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
                Verdict::Tcp {
                    owner: self.owner(src, dst, sport, dport),
                }
            }
            IP_PROTO_ICMP => Verdict::Local,
            _ => Verdict::Drop(DropReason::Unsupported),
        }
    }
}

/// The ones' complement sum of `data` (16-bit big-endian words, odd tail padded) added to `initial`,
/// folded to 16 bits. A valid header or segment sums to `0xffff`.
///
/// Sums native-endian 32-bit words into a 64-bit accumulator (the compiler vectorises the inner loop)
/// and swaps bytes at the end: the ones' complement sum commutes with byte order (RFC 1071 §2(B)).
pub fn checksum(initial: u32, data: &[u8]) -> u16 {
    let mut acc: u64 = 0;
    let mut blocks = data.chunks_exact(64);
    for block in &mut blocks {
        let mut part: u64 = 0;
        for w in block.chunks_exact(4) {
            part += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
        }
        acc += part;
    }
    let mut words = blocks.remainder().chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    }
    let mut tail = [0u8; 4];
    let rest = words.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    acc += u64::from(u32::from_ne_bytes(tail));
    // Fold to 16 bits in memory order, then to network order.
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    let folded = acc as u16;
    let network = if cfg!(target_endian = "little") {
        folded.swap_bytes()
    } else {
        folded
    };
    let mut sum = u32::from(network) + initial;
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// TCP checksum over the IPv4 pseudo-header and `segment`: `0xffff` when the segment's checksum is right.
pub fn tcp_checksum(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> u16 {
    let s = src.octets();
    let d = dst.octets();
    let pseudo = u32::from(u16::from_be_bytes([s[0], s[1]]))
        + u32::from(u16::from_be_bytes([s[2], s[3]]))
        + u32::from(u16::from_be_bytes([d[0], d[1]]))
        + u32::from(u16::from_be_bytes([d[2], d[3]]))
        + u32::from(IP_PROTO_TCP)
        + (segment.len() as u32 & 0xffff);
    checksum(pseudo, segment)
}

/// The destination port of a connection request (SYN without ACK or RST) in a frame [`Local::classify`]
/// accepted as TCP; `None` for any other segment (or headers not in `frame`).
pub fn syn_port(frame: &[u8]) -> Option<u16> {
    let ip = frame.get(ETH_HEADER..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    if *ip.get(9)? != IP_PROTO_TCP {
        return None;
    }
    let tcp = ip.get(ihl..ihl + 14)?;
    let flags = tcp[13];
    const FIN_SYN_RST_ACK: u8 = 0x17;
    (flags & FIN_SYN_RST_ACK == 0x02).then(|| u16::from_be_bytes([tcp[2], tcp[3]]))
}

/// Where an IPv4/TCP frame's headers are, for TX checksum offload: `(l2_len, l3_len)`, or `None` if the
/// frame is not IPv4/TCP.
pub fn tcp_header_lengths(frame: &[u8]) -> Option<(u16, u16)> {
    let eth = frame.get(..ETH_HEADER)?;
    if u16::from_be_bytes([eth[12], eth[13]]) != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = frame.get(ETH_HEADER..ETH_HEADER + 20)?;
    if ip[9] != IP_PROTO_TCP {
        return None;
    }
    let ihl = u16::from(ip[0] & 0x0f) * 4;
    Some((ETH_HEADER as u16, ihl))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn local(queues: u16) -> Local {
        Local {
            mac: MAC,
            ip: Ipv4Addr::new(10, 0, 0, 1),
            prefix_len: 24,
            queues,
            rss_key: super::super::ffi::DEFAULT_RSS_KEY,
            verify_checksums: true,
        }
    }

    /// A valid Ethernet/IPv4/TCP frame from 10.0.0.2:sport to 10.0.0.1:dport carrying `payload`.
    fn tcp_frame(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        tcp_frame_from(Ipv4Addr::new(10, 0, 0, 2), sport, dport, 0x18, payload)
    }

    /// A valid frame from `src`:sport to 10.0.0.1:dport with TCP `flags`.
    fn tcp_frame_from(src: Ipv4Addr, sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        let dst = Ipv4Addr::new(10, 0, 0, 1);
        let mut f = Vec::new();
        f.extend_from_slice(&MAC);
        f.extend_from_slice(&PEER_MAC);
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let total = (20 + 20 + payload.len()) as u16;
        let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, IP_PROTO_TCP, 0, 0];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&src.octets());
        ip.extend_from_slice(&dst.octets());
        let c = !checksum(0, &ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        let mut tcp = Vec::new();
        tcp.extend_from_slice(&sport.to_be_bytes());
        tcp.extend_from_slice(&dport.to_be_bytes());
        tcp.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        tcp.extend_from_slice(payload);
        let c = !tcp_checksum(src, dst, &tcp);
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&tcp);
        f
    }

    #[test]
    fn valid_segment_is_tcp_for_the_hashed_owner() {
        let l = local(2);
        let f = tcp_frame(40000, 6800, b"hello");
        let owner = l.owner(Ipv4Addr::new(10, 0, 0, 2), l.ip, 40000, 6800);
        assert_eq!(
            l.classify(&f, RxChecksum::default()),
            Verdict::Tcp { owner }
        );
        // Padding after the datagram (minimum-size Ethernet frames) is fine.
        let mut padded = f.clone();
        padded.extend_from_slice(&[0; 20]);
        assert_eq!(
            l.classify(&padded, RxChecksum::default()),
            Verdict::Tcp { owner }
        );
    }

    #[test]
    fn owners_spread_over_both_queues() {
        let l = local(2);
        let peer = Ipv4Addr::new(10, 0, 0, 2);
        let owners: Vec<u16> = (40000..40064)
            .map(|p| l.owner(peer, l.ip, p, 6800))
            .collect();
        assert!(owners.contains(&0) && owners.contains(&1), "{owners:?}");
        assert!(local(1).owner(peer, l.ip, 1, 2) == 0);
    }

    #[test]
    fn softrss_matches_the_published_toeplitz_vector() {
        // Microsoft's RSS verification suite: 66.9.149.187:2794 -> 161.142.100.80:1766 hashes to 0x51ccc178.
        let tuple = [
            u32::from(Ipv4Addr::new(66, 9, 149, 187)),
            u32::from(Ipv4Addr::new(161, 142, 100, 80)),
            (2794u32 << 16) | 1766,
        ];
        assert_eq!(
            softrss(&tuple, &super::super::ffi::DEFAULT_RSS_KEY),
            0x51cc_c178
        );
    }

    #[test]
    fn malformed_frames_are_dropped_by_reason() {
        let l = local(1);
        let good = tcp_frame(1000, 2000, b"data");
        let none = RxChecksum::default();
        let drop = |f: &[u8]| match l.classify(f, none) {
            Verdict::Drop(r) => Some(r),
            _ => None,
        };
        for n in 0..good.len() - 4 {
            assert!(
                drop(&good[..n]).is_some(),
                "truncated to {n} bytes must drop"
            );
        }
        let mut f = good.clone();
        f[ETH_HEADER + 10] ^= 0xff;
        assert_eq!(drop(&f), Some(DropReason::BadIpChecksum));
        let mut f = good.clone();
        f[ETH_HEADER + 20 + 16] ^= 0x01;
        assert_eq!(drop(&f), Some(DropReason::BadTcpChecksum));
        let mut f = good.clone();
        f[ETH_HEADER + 20 + 12] = 0x40; // data offset 4 words
        assert_eq!(drop(&f), Some(DropReason::BadTcpOffset));
        let mut f = good.clone();
        f[ETH_HEADER + 20 + 12] = 0xf0; // 60 bytes: past the segment
        assert_eq!(drop(&f), Some(DropReason::BadTcpOffset));
        let mut f = good.clone();
        f[ETH_HEADER] = 0x65; // version 6
        assert_eq!(drop(&f), Some(DropReason::BadIpHeader));
        let mut f = good.clone();
        f[ETH_HEADER] = 0x44; // ihl 16 bytes
        assert_eq!(drop(&f), Some(DropReason::BadIpHeader));
        let mut f = good.clone();
        f[0] = 0x04;
        assert_eq!(drop(&f), Some(DropReason::NotForUs));
        let mut f = good.clone();
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        assert_eq!(drop(&f), Some(DropReason::NotIpv4));
        let mut f = good.clone();
        f[ETH_HEADER + 9] = 17;
        // Changing the protocol breaks the IP checksum first; fix it to reach the protocol check.
        f[ETH_HEADER + 10..ETH_HEADER + 12].copy_from_slice(&[0, 0]);
        let c = !checksum(0, &f[ETH_HEADER..ETH_HEADER + 20]);
        f[ETH_HEADER + 10..ETH_HEADER + 12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(drop(&f), Some(DropReason::Unsupported));
    }

    #[test]
    fn offload_verdicts_win_over_software_checks() {
        let l = local(1);
        let mut f = tcp_frame(1, 2, b"x");
        f[ETH_HEADER + 20 + 16] ^= 0x01; // bad TCP checksum, but the port says good
        let good = RxChecksum {
            ip_good: true,
            l4_good: true,
            ..Default::default()
        };
        assert!(matches!(l.classify(&f, good), Verdict::Tcp { .. }));
        let bad = RxChecksum {
            l4_bad: true,
            ..Default::default()
        };
        let ok = tcp_frame(1, 2, b"x");
        assert_eq!(
            l.classify(&ok, bad),
            Verdict::Drop(DropReason::BadTcpChecksum)
        );
    }

    #[test]
    fn arp_and_header_lengths() {
        let l = local(1);
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&PEER_MAC);
        arp.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        arp.extend_from_slice(&[0; 28]);
        assert_eq!(l.classify(&arp, RxChecksum::default()), Verdict::Arp);
        assert_eq!(
            l.classify(&arp[..30], RxChecksum::default()),
            Verdict::Drop(DropReason::Short)
        );
        assert_eq!(tcp_header_lengths(&tcp_frame(1, 2, b"")), Some((14, 20)));
        assert_eq!(tcp_header_lengths(&arp), None);
    }

    #[test]
    fn impossible_sources_are_dropped_by_reason() {
        let l = local(1);
        let cases = [
            (Ipv4Addr::BROADCAST, DropReason::SrcBroadcast),
            (Ipv4Addr::new(10, 0, 0, 255), DropReason::SrcBroadcast),
            (Ipv4Addr::new(224, 0, 0, 1), DropReason::SrcMulticast),
            (Ipv4Addr::new(239, 255, 255, 250), DropReason::SrcMulticast),
            (Ipv4Addr::new(10, 0, 0, 1), DropReason::SrcOurs),
            (Ipv4Addr::UNSPECIFIED, DropReason::SrcThisNetwork),
            (Ipv4Addr::new(0, 1, 2, 3), DropReason::SrcThisNetwork),
            (Ipv4Addr::LOCALHOST, DropReason::SrcLoopback),
            (Ipv4Addr::new(127, 9, 9, 9), DropReason::SrcLoopback),
            (Ipv4Addr::new(240, 0, 0, 1), DropReason::SrcReserved),
        ];
        for (src, reason) in cases {
            let syn = tcp_frame_from(src, 1000, 6800, 0x02, b"");
            assert_eq!(
                l.classify(&syn, RxChecksum::default()),
                Verdict::Drop(reason),
                "SYN from {src}"
            );
        }
        // Ordinary sources, on the link and beyond it, pass; so does the subnet's network address.
        for src in [
            Ipv4Addr::new(10, 0, 0, 2),
            Ipv4Addr::new(10, 0, 0, 0),
            Ipv4Addr::new(192, 168, 1, 1),
            Ipv4Addr::new(223, 255, 255, 254),
        ] {
            let syn = tcp_frame_from(src, 1000, 6800, 0x02, b"");
            assert!(
                matches!(l.classify(&syn, RxChecksum::default()), Verdict::Tcp { .. }),
                "SYN from {src} must pass"
            );
        }
        // A /31 or /32 has no broadcast address to refuse.
        let mut p2p = local(1);
        p2p.prefix_len = 31;
        assert_eq!(p2p.impossible_source(Ipv4Addr::new(10, 0, 0, 255)), None);
        assert_eq!(
            p2p.impossible_source(Ipv4Addr::BROADCAST),
            Some(DropReason::SrcBroadcast)
        );
    }

    #[test]
    fn syn_port_sees_connection_requests_only() {
        let src = Ipv4Addr::new(10, 0, 0, 2);
        assert_eq!(
            syn_port(&tcp_frame_from(src, 1, 6800, 0x02, b"")),
            Some(6800)
        );
        for flags in [0x12, 0x10, 0x18, 0x04, 0x06, 0x03] {
            assert_eq!(
                syn_port(&tcp_frame_from(src, 1, 6800, flags, b"")),
                None,
                "flags {flags:#x}"
            );
        }
        let syn = tcp_frame_from(src, 1, 6800, 0x02, b"");
        for n in 0..ETH_HEADER + 20 + 14 {
            assert_eq!(syn_port(&syn[..n]), None, "truncated to {n}");
        }
    }

    /// The plain RFC 1071 loop, to check the fast one against.
    fn reference(initial: u32, data: &[u8]) -> u16 {
        let mut sum = u64::from(initial);
        for c in data.chunks(2) {
            sum += u64::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    #[test]
    fn fast_checksum_matches_the_reference_for_every_length_and_seed() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7919 % 251) as u8 ^ 0xa5).collect();
        for len in 0..data.len() {
            for initial in [0, 1, 0xffff, 0x1_2345, 0x3_fffd] {
                assert_eq!(
                    checksum(initial, &data[..len]),
                    reference(initial, &data[..len]),
                    "len {len} initial {initial:#x}"
                );
            }
        }
        let ones = vec![0xffu8; 1500];
        assert_eq!(checksum(0, &ones), reference(0, &ones));
    }

    #[test]
    fn checksum_of_odd_lengths() {
        assert_eq!(checksum(0, &[0x12]), 0x1200);
        assert_eq!(checksum(0, &[0xff, 0xff, 0x00, 0x01]), 0x0001);
        assert_eq!(checksum(0, &[]), 0);
    }
}
