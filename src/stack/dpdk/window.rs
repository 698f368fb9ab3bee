//! Receive-window guard between the wire and smoltcp: no received byte reaches smoltcp beyond the right
//! edge of the window we last advertised on that flow.
//!
//! Why: smoltcp 0.12 accepts segment bytes past that edge whenever its buffer has room, and then panics
//! ("attempt to subtract sequence numbers with underflow" in `Socket::last_scaled_window`) the next time
//! it builds a segment for the socket, killing the worker (upstream smoltcp-rs/smoltcp#1048, fixed by
//! #1079 in 0.13, whose rust-version is above ours). Any peer can cause it: a hostile one sending past the
//! window on purpose, and an honest one acting on an older ACK after window scaling rounded our advertised
//! edge down (our stress test over memif with injected faults met this within seconds). The guard does
//! what #1079 makes smoltcp do itself: it trims such segments to the window.
//!
//! How: every frame smoltcp transmits passes [`WindowGuard::on_transmit`], which records per flow the
//! right edge it advertised (ack + window << our scale; SYN windows are never scaled) and learns the
//! scales from the SYN options; every frame handed to smoltcp passes [`WindowGuard::on_receive`] first,
//! which cuts payload past the edge (IPv4 total length shortened, FIN cleared since the cut data precedes
//! it). Received TCP checksums are not verified by smoltcp (the classifier did that), so the stale TCP
//! checksum of a trimmed segment is harmless.
//!
//! Invariant: a flow's recorded edge is at most smoltcp's own (last ack + last window << shift), because
//! the recorded one comes from the very segment smoltcp recorded, scaled no more than smoltcp scales it;
//! so smoltcp never sees a byte past its own edge. A flow whose handshake was not seen (scale unknown) is
//! left alone. Flows are forgotten on a RST we send and when the worker reaps the socket.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::classify::{checksum, ETHERTYPE_IPV4, ETH_HEADER, IP_PROTO_TCP};
use super::stats::DpdkCounters;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;
/// TCP option kinds.
const OPT_END: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_WINDOW_SCALE: u8 = 3;

/// (remote address, remote port, local port).
type FlowKey = (Ipv4Addr, u16, u16);

#[derive(Debug, Default, Clone, Copy)]
struct Flow {
    /// The window scale we offered in our SYN or SYN-ACK (None: not seen, or not offered).
    our_scale: Option<u8>,
    /// Whether the peer's SYN or SYN-ACK carried a window scale option (None: not seen).
    peer_scales: Option<bool>,
    /// Right edge of the window we last advertised.
    edge: Option<u32>,
}

impl Flow {
    /// The shift our advertised windows carry: ours if both sides offered scaling, else 0; None while
    /// the handshake has not shown it.
    fn shift(&self) -> Option<u8> {
        match (self.our_scale, self.peer_scales?) {
            (Some(s), true) => Some(s),
            (None, true) => None,
            (_, false) => Some(0),
        }
    }
}

/// The fields of an Ethernet/IPv4/TCP frame the guard needs.
struct Segment {
    ip: usize,
    ihl: usize,
    tcp: usize,
    header: usize,
    payload: usize,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    window_scale: Option<u8>,
}

/// Parse a frame as Ethernet/IPv4/TCP; None for anything else or anything that does not add up.
fn parse(frame: &[u8]) -> Option<Segment> {
    let eth = frame.get(..ETH_HEADER)?;
    if u16::from_be_bytes([eth[12], eth[13]]) != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = ETH_HEADER;
    let iph = frame.get(ip..ip + 20)?;
    if iph[9] != IP_PROTO_TCP {
        return None;
    }
    let ihl = usize::from(iph[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([iph[2], iph[3]]));
    let tcp = ip + ihl;
    let t = frame.get(tcp..tcp + 20)?;
    let header = usize::from(t[12] >> 4) * 4;
    if ihl < 20 || header < 20 || total < ihl + header || frame.len() < ip + total {
        return None;
    }
    let options = frame.get(tcp + 20..tcp + header)?;
    Some(Segment {
        ip,
        ihl,
        tcp,
        header,
        payload: total - ihl - header,
        src: Ipv4Addr::new(iph[12], iph[13], iph[14], iph[15]),
        dst: Ipv4Addr::new(iph[16], iph[17], iph[18], iph[19]),
        sport: u16::from_be_bytes([t[0], t[1]]),
        dport: u16::from_be_bytes([t[2], t[3]]),
        seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        ack: u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
        flags: t[13],
        window: u16::from_be_bytes([t[14], t[15]]),
        window_scale: window_scale(options),
    })
}

/// The window scale option's shift, if present.
fn window_scale(mut options: &[u8]) -> Option<u8> {
    while let Some(&kind) = options.first() {
        match kind {
            OPT_END => return None,
            OPT_NOP => options = &options[1..],
            _ => {
                let len = usize::from(*options.get(1)?);
                if len < 2 || len > options.len() {
                    return None;
                }
                if kind == OPT_WINDOW_SCALE && len == 3 {
                    return Some(options[2]);
                }
                options = &options[len..];
            }
        }
    }
    None
}

/// Sequence number `a` is after `b` (modulo 2^32).
fn after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// One worker's guard (see the module docs).
pub struct WindowGuard {
    flows: HashMap<FlowKey, Flow>,
    counters: Arc<DpdkCounters>,
}

impl WindowGuard {
    pub fn new(counters: Arc<DpdkCounters>) -> Self {
        WindowGuard {
            flows: HashMap::new(),
            counters,
        }
    }

    /// A frame smoltcp built (sent or not: smoltcp recorded it either way).
    pub fn on_transmit(&mut self, frame: &[u8]) {
        let Some(s) = parse(frame) else {
            return;
        };
        let key = (s.dst, s.dport, s.sport);
        if s.flags & RST != 0 {
            self.flows.remove(&key);
            return;
        }
        if s.flags & SYN != 0 {
            let flow = if s.flags & ACK == 0 {
                // Our SYN opens a fresh connection on this tuple.
                self.flows.insert(key, Flow::default());
                self.flows.get_mut(&key).expect("just inserted")
            } else {
                self.flows.entry(key).or_default()
            };
            flow.our_scale = s.window_scale;
            if s.flags & ACK != 0 {
                flow.edge = Some(s.ack.wrapping_add(u32::from(s.window)));
            }
            return;
        }
        if s.flags & ACK == 0 {
            return;
        }
        if let Some(flow) = self.flows.get_mut(&key) {
            // Scale unknown (or past RFC 7323's 14): stop guarding the flow rather than keep a stale edge.
            flow.edge = flow
                .shift()
                .filter(|&shift| shift <= 14)
                .map(|shift| s.ack.wrapping_add(u32::from(s.window) << shift));
        }
    }

    /// A frame about to reach smoltcp: learn the peer's scaling from its SYN, trim payload past the
    /// window's edge. Returns whether the frame was trimmed.
    pub fn on_receive(&mut self, frame: &mut [u8]) -> bool {
        let Some(s) = parse(frame) else {
            return false;
        };
        let key = (s.src, s.sport, s.dport);
        if s.flags & SYN != 0 {
            let peer_scales = Some(s.window_scale.is_some());
            if s.flags & ACK == 0 {
                // A peer's SYN starts over on this tuple (a repeated SYN on a live flow then leaves the
                // flow unguarded: safe, if less protected).
                self.flows.insert(
                    key,
                    Flow {
                        peer_scales,
                        ..Flow::default()
                    },
                );
            } else {
                self.flows.entry(key).or_default().peer_scales = peer_scales;
            }
            return false;
        }
        if s.payload == 0 || s.flags & RST != 0 {
            return false;
        }
        let Some(edge) = self.flows.get(&key).and_then(|f| f.edge) else {
            return false;
        };
        let end = s.seq.wrapping_add(s.payload as u32);
        if !after(end, edge) {
            return false;
        }
        let keep = if after(edge, s.seq) {
            edge.wrapping_sub(s.seq) as usize
        } else {
            0
        };
        let total = (s.ihl + s.header + keep) as u16;
        frame[s.ip + 2..s.ip + 4].copy_from_slice(&total.to_be_bytes());
        frame[s.ip + 10..s.ip + 12].copy_from_slice(&[0, 0]);
        let sum = !checksum(0, &frame[s.ip..s.ip + s.ihl]);
        frame[s.ip + 10..s.ip + 12].copy_from_slice(&sum.to_be_bytes());
        // The cut bytes come before the FIN.
        frame[s.tcp + 13] &= !FIN;
        self.counters
            .rx_trimmed_past_window
            .fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The socket of this flow is gone.
    pub fn forget(&mut self, peer: SocketAddrV4, local_port: u16) {
        self.flows.remove(&(*peer.ip(), peer.port(), local_port));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const PEER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    /// An Ethernet/IPv4/TCP frame; `scale` adds a window scale option.
    #[allow(clippy::too_many_arguments)]
    fn frame(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        window: u16,
        scale: Option<u8>,
        payload: usize,
    ) -> Vec<u8> {
        let options: Vec<u8> = scale.map_or(Vec::new(), |s| vec![OPT_NOP, OPT_WINDOW_SCALE, 3, s]);
        let header = 20 + options.len();
        let mut f = vec![0u8; ETH_HEADER];
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let total = (20 + header + payload) as u16;
        let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, IP_PROTO_TCP, 0, 0];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&src.octets());
        ip.extend_from_slice(&dst.octets());
        f.extend_from_slice(&ip);
        let mut t = Vec::new();
        t.extend_from_slice(&sport.to_be_bytes());
        t.extend_from_slice(&dport.to_be_bytes());
        t.extend_from_slice(&seq.to_be_bytes());
        t.extend_from_slice(&ack.to_be_bytes());
        t.push(((header / 4) as u8) << 4);
        t.push(flags);
        t.extend_from_slice(&window.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 0]);
        t.extend_from_slice(&options);
        f.extend_from_slice(&t);
        f.extend(std::iter::repeat_n(0xab, payload));
        f
    }

    fn guard() -> WindowGuard {
        WindowGuard::new(Arc::default())
    }

    /// A passive open with scaling on both sides (our shift 2), then our ACK advertising 1000 << 2
    /// at ack 5000: edge 9000.
    fn scaled_flow() -> WindowGuard {
        let mut g = guard();
        g.on_receive(&mut frame(
            PEER,
            US,
            40000,
            6800,
            99,
            0,
            SYN,
            65535,
            Some(7),
            0,
        ));
        g.on_transmit(&frame(
            US,
            PEER,
            6800,
            40000,
            1,
            100,
            SYN | ACK,
            65535,
            Some(2),
            0,
        ));
        g.on_transmit(&frame(US, PEER, 6800, 40000, 2, 5000, ACK, 1000, None, 0));
        g
    }

    fn payload_len(f: &[u8]) -> usize {
        parse(f).unwrap().payload
    }

    #[test]
    fn data_within_the_window_passes_untouched() {
        let mut g = scaled_flow();
        let mut f = frame(PEER, US, 40000, 6800, 5000, 2, ACK | FIN, 512, None, 4000);
        let before = f.clone();
        assert!(!g.on_receive(&mut f));
        assert_eq!(f, before);
    }

    #[test]
    fn data_past_the_edge_is_trimmed_and_loses_its_fin() {
        let mut g = scaled_flow();
        let mut f = frame(PEER, US, 40000, 6800, 8000, 2, ACK | FIN, 512, None, 1460);
        assert!(g.on_receive(&mut f));
        let s = parse(&f).unwrap();
        assert_eq!(
            s.payload, 1000,
            "only the bytes up to the edge (9000) remain"
        );
        assert_eq!(s.flags & FIN, 0);
        assert_eq!(
            checksum(0, &f[s.ip..s.ip + s.ihl]),
            0xffff,
            "IPv4 checksum fixed"
        );
        // Wholly past the edge: nothing left but the ACK.
        let mut f = frame(PEER, US, 40000, 6800, 9500, 2, ACK, 512, None, 100);
        assert!(g.on_receive(&mut f));
        assert_eq!(payload_len(&f), 0);
        assert_eq!(g.counters.rx_trimmed_past_window.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn without_scaling_on_one_side_windows_are_unscaled() {
        let mut g = guard();
        // Active open: our SYN offers scale 2, the peer's SYN-ACK does not scale.
        g.on_transmit(&frame(US, PEER, 50000, 6800, 1, 0, SYN, 65535, Some(2), 0));
        g.on_receive(&mut frame(
            PEER,
            US,
            6800,
            50000,
            70,
            2,
            SYN | ACK,
            65535,
            None,
            0,
        ));
        g.on_transmit(&frame(US, PEER, 50000, 6800, 2, 71, ACK, 1000, None, 0));
        let mut f = frame(PEER, US, 6800, 50000, 71, 2, ACK, 512, None, 1460);
        assert!(g.on_receive(&mut f));
        assert_eq!(payload_len(&f), 1000);
    }

    #[test]
    fn edges_wrap_around_the_sequence_space() {
        let mut g = guard();
        g.on_receive(&mut frame(
            PEER,
            US,
            1,
            2,
            u32::MAX - 10,
            0,
            SYN,
            100,
            None,
            0,
        ));
        g.on_transmit(&frame(
            US,
            PEER,
            2,
            1,
            7,
            u32::MAX - 9,
            SYN | ACK,
            100,
            None,
            0,
        ));
        // Edge: (2^32 - 9) + 100 wraps to 91.
        let mut f = frame(PEER, US, 1, 2, u32::MAX - 9, 8, ACK, 100, None, 200);
        assert!(g.on_receive(&mut f));
        assert_eq!(payload_len(&f), 100);
    }

    #[test]
    fn unknown_flows_and_forgotten_flows_are_left_alone() {
        let mut g = guard();
        // An ACK with no handshake seen: the scale is unknown, nothing is recorded.
        g.on_transmit(&frame(US, PEER, 6800, 40001, 2, 5000, ACK, 1, None, 0));
        let mut f = frame(PEER, US, 40001, 6800, 5000, 2, ACK, 1, None, 1000);
        assert!(!g.on_receive(&mut f));
        let mut g = scaled_flow();
        g.forget(SocketAddrV4::new(PEER, 40000), 6800);
        assert!(g.flows.is_empty());
        let mut f = frame(PEER, US, 40000, 6800, 8000, 2, ACK, 512, None, 1460);
        assert!(!g.on_receive(&mut f));
        // Our RST ends the flow too.
        let mut g = scaled_flow();
        g.on_transmit(&frame(US, PEER, 6800, 40000, 2, 0, RST, 0, None, 0));
        assert!(g.flows.is_empty());
    }

    #[test]
    fn malformed_frames_are_ignored_without_panicking() {
        let mut g = scaled_flow();
        let good = frame(PEER, US, 40000, 6800, 8000, 2, ACK, 512, Some(3), 100);
        for n in 0..good.len() {
            let mut f = good[..n].to_vec();
            g.on_receive(&mut f);
            g.on_transmit(&f);
        }
        // Option lengths that lie.
        let mut f = good.clone();
        let opt = ETH_HEADER + 20 + 20 + 2;
        f[opt] = 200;
        assert!(window_scale(&f[opt - 2..opt + 2]).is_none());
        g.on_transmit(&f);
    }
}
