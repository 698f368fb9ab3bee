//! Ceph's async+rdma connection set-up, the pure part (no verbs, no sockets): the queue-pair record the
//! two sides exchange over the TCP side channel, its reader, and the checks each step of the exchange
//! makes. The worker (`qp_worker/`) does the I/O and the QP state changes around it.
//!
//! # The record
//! One record is [`RECORD_LEN`] bytes: the ASCII text `LLLL:QQQQQQQQ:PPPPPPPP:RRRRRRRR:GGGG…` (LID, 4
//! hex digits; QPN, PSN and the peer's QPN, 8 hex digits each; the GID, 32 hex digits) and a NUL. The
//! GID's digits are its 16 bytes in order (Ceph writes each 32-bit word in network order, which on the
//! wire is the same thing). This is what Ceph 16's `Infiniband::QueuePair::send_cm_meta` writes and
//! `recv_cm_meta` reads, as one fixed-size record.
//!
//! # The exchange (Ceph's RDMAConnectedSocketImpl, `ms_async_rdma_cm = false`)
//! 1. The client connects TCP to the peer's msgr2 address and sends its record with peer QPN 0.
//! 2. The server moves its QP to RTR/RTS towards the client's QP and answers with its own record, whose
//!    peer QPN is the client's QPN.
//! 3. The client moves its QP to RTR/RTS and sends its record again, now with the server's QPN as peer
//!    QPN. Only then (or when the first data arrives) does the server count as connected.
//!
//! After that the side channel carries nothing: end of file on it (the peer closed or died) or any byte
//! at all faults the connection. Every deviation is a [`RecordError`]: the worker turns it into an
//! error of that one connection, never a panic.

use std::fmt;

/// Bytes of one record: `"%04x:%08x:%08x:%08x:"`, 32 GID digits and a NUL.
pub const RECORD_LEN: usize = 4 + 1 + 8 + 1 + 8 + 1 + 8 + 1 + 32 + 1;

/// Largest queue-pair number and packet sequence number (24 bits).
const MAX_24: u32 = 0x00ff_ffff;

/// One queue-pair record: what a side tells the other about its QP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpRecord {
    /// Local identifier of the port (0 on RoCE).
    pub lid: u16,
    /// The sender's QP number.
    pub qpn: u32,
    /// The sender's initial send packet sequence number.
    pub psn: u32,
    /// The QP number the sender knows of its peer (0 in the client's first record).
    pub peer_qpn: u32,
    /// The sender's GID (RoCE v2 over IPv4: `::ffff:a.b.c.d`).
    pub gid: [u8; 16],
}

/// What is wrong with side-channel input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("side channel closed after {got} of {RECORD_LEN} bytes of a queue-pair record")]
    Short { got: usize },
    #[error("malformed queue-pair record: {what} (record {text:?})")]
    Malformed { what: &'static str, text: String },
    #[error("queue-pair record with an unusable GID {gid}")]
    BadGid { gid: String },
    #[error("queue-pair record out of step: {0}")]
    OutOfStep(String),
    #[error("{0} unexpected bytes on the side channel after the queue-pair exchange")]
    Unexpected(usize),
}

impl QpRecord {
    /// The record's bytes on the wire.
    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut out = [0u8; RECORD_LEN];
        let text = format!(
            "{:04x}:{:08x}:{:08x}:{:08x}:{}",
            self.lid,
            self.qpn & MAX_24,
            self.psn & MAX_24,
            self.peer_qpn & MAX_24,
            hex(&self.gid)
        );
        // The text is exactly RECORD_LEN - 1 ASCII bytes (fixed-width fields); the NUL stays.
        for (dst, src) in out.iter_mut().zip(text.as_bytes()) {
            *dst = *src;
        }
        out
    }

    /// Parse one whole record (exactly [`RECORD_LEN`] bytes).
    pub fn parse(bytes: &[u8]) -> Result<QpRecord, RecordError> {
        let malformed = |what: &'static str| RecordError::Malformed {
            what,
            text: String::from_utf8_lossy(bytes).into_owned(),
        };
        if bytes.len() != RECORD_LEN {
            return Err(malformed("wrong length"));
        }
        if bytes.last() != Some(&0) {
            return Err(malformed("not NUL-terminated"));
        }
        for at in [4, 13, 22, 31] {
            if bytes.get(at) != Some(&b':') {
                return Err(malformed("':' missing between fields"));
            }
        }
        let field = |from: usize, len: usize, what: &'static str| -> Result<u32, RecordError> {
            let digits = bytes.get(from..from + len).ok_or_else(|| malformed(what))?;
            parse_hex(digits).ok_or_else(|| malformed(what))
        };
        let lid = field(0, 4, "LID is not 4 hex digits")?;
        let qpn = field(5, 8, "QPN is not 8 hex digits")?;
        let psn = field(14, 8, "PSN is not 8 hex digits")?;
        let peer_qpn = field(23, 8, "peer QPN is not 8 hex digits")?;
        let mut gid = [0u8; 16];
        for (i, byte) in gid.iter_mut().enumerate() {
            let at = 32 + 2 * i;
            let pair = field(at, 2, "GID is not 32 hex digits")?;
            *byte = u8::try_from(pair).map_err(|_| malformed("GID is not 32 hex digits"))?;
        }
        if qpn == 0 || qpn > MAX_24 {
            return Err(malformed("QPN is 0 or wider than 24 bits"));
        }
        if psn > MAX_24 {
            return Err(malformed("PSN is wider than 24 bits"));
        }
        if peer_qpn > MAX_24 {
            return Err(malformed("peer QPN is wider than 24 bits"));
        }
        if gid == [0; 16] {
            return Err(RecordError::BadGid { gid: hex(&gid) });
        }
        Ok(QpRecord {
            lid: u16::try_from(lid).map_err(|_| malformed("LID is not 4 hex digits"))?,
            qpn,
            psn,
            peer_qpn,
            gid,
        })
    }

    /// The GID as an IPv6 address text.
    pub fn gid_text(&self) -> String {
        std::net::Ipv6Addr::from(self.gid).to_string()
    }
}

impl fmt::Display for QpRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "lid {} qpn {:#x} psn {:#x} peer qpn {:#x} gid {}",
            self.lid,
            self.qpn,
            self.psn,
            self.peer_qpn,
            self.gid_text()
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The value of 1..=8 hex digits (either case); `None` for anything else.
fn parse_hex(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    digits.iter().try_fold(0u32, |acc, &d| {
        let v = char::from(d).to_digit(16)?;
        Some((acc << 4) | v)
    })
}

/// Collects one record from side-channel reads that may split or join it.
#[derive(Clone, Debug)]
pub struct RecordReader {
    buf: [u8; RECORD_LEN],
    len: usize,
}

impl Default for RecordReader {
    fn default() -> Self {
        RecordReader {
            buf: [0; RECORD_LEN],
            len: 0,
        }
    }
}

impl RecordReader {
    /// Bytes still wanted for the current record.
    pub fn wanted(&self) -> usize {
        RECORD_LEN - self.len
    }

    /// Bytes of the current record received so far.
    pub fn have(&self) -> usize {
        self.len
    }

    /// Take `data` (at most [`Self::wanted`] bytes are used; the caller reads no more than that).
    /// A complete record is parsed and returned, and the reader starts over.
    pub fn feed(&mut self, data: &[u8]) -> Option<Result<QpRecord, RecordError>> {
        let take = data.len().min(self.wanted());
        self.buf[self.len..self.len + take].copy_from_slice(&data[..take]);
        self.len += take;
        if self.len < RECORD_LEN {
            return None;
        }
        self.len = 0;
        Some(QpRecord::parse(&self.buf))
    }

    /// The side channel reached end of file: an error if a record was under way.
    pub fn eof(&self) -> RecordError {
        RecordError::Short { got: self.len }
    }
}

/// Server side, step 1: the client's first record must not name a peer QP yet.
pub fn check_client_hello(first: &QpRecord) -> Result<(), RecordError> {
    if first.peer_qpn != 0 {
        return Err(RecordError::OutOfStep(format!(
            "the client's first record names peer QPN {:#x} (expected 0)",
            first.peer_qpn
        )));
    }
    Ok(())
}

/// Client side, step 2: the server's answer must name our QP.
pub fn check_server_reply(ours: &QpRecord, reply: &QpRecord) -> Result<(), RecordError> {
    if reply.peer_qpn != ours.qpn {
        return Err(RecordError::OutOfStep(format!(
            "the server's answer names peer QPN {:#x}, ours is {:#x}",
            reply.peer_qpn, ours.qpn
        )));
    }
    Ok(())
}

/// Server side, step 3: the client's second record is its first again with our QPN as peer QPN.
pub fn check_client_ack(
    first: &QpRecord,
    ours: &QpRecord,
    ack: &QpRecord,
) -> Result<(), RecordError> {
    if ack.peer_qpn != ours.qpn {
        return Err(RecordError::OutOfStep(format!(
            "the client's acknowledgement names peer QPN {:#x}, ours is {:#x}",
            ack.peer_qpn, ours.qpn
        )));
    }
    if ack.gid != first.gid {
        return Err(RecordError::BadGid {
            gid: format!(
                "{} (the client's first record had {})",
                ack.gid_text(),
                first.gid_text()
            ),
        });
    }
    if (ack.qpn, ack.psn, ack.lid) != (first.qpn, first.psn, first.lid) {
        return Err(RecordError::OutOfStep(format!(
            "the client's acknowledgement ({ack}) describes another QP than its first record ({first})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record() -> QpRecord {
        QpRecord {
            lid: 0,
            qpn: 0x11,
            psn: 0x00ab_cdef,
            peer_qpn: 0,
            // ::ffff:192.168.77.1, GID index 1 of rxe0 in the soft-RoCE guest
            gid: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 168, 77, 1],
        }
    }

    #[test]
    fn encodes_as_ceph_writes_it() {
        let bytes = record().encode();
        assert_eq!(bytes.len(), 65);
        assert_eq!(
            &bytes[..64],
            b"0000:00000011:00abcdef:00000000:00000000000000000000ffffc0a84d01"
        );
        assert_eq!(bytes[64], 0);
        assert_eq!(QpRecord::parse(&bytes), Ok(record()));
    }

    #[test]
    fn parses_upper_case_and_round_trips_every_field() {
        let text = b"00AB:00FFFFFF:00000000:00000022:FE800000000000000000000000000001\0";
        let r = QpRecord::parse(text).unwrap();
        assert_eq!(
            (r.lid, r.qpn, r.psn, r.peer_qpn),
            (0xab, 0xff_ffff, 0, 0x22)
        );
        assert_eq!(r.gid_text(), "fe80::1");
        assert_eq!(QpRecord::parse(&r.encode()), Ok(r));
    }

    #[test]
    fn hostile_records_are_errors() {
        let good = record().encode();
        let with = |at: usize, byte: u8| {
            let mut b = good;
            b[at] = byte;
            b
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (Vec::new(), "wrong length"),
            (good[..64].to_vec(), "wrong length"),
            ([&good[..], b"x"].concat(), "wrong length"),
            (with(64, b'0').to_vec(), "NUL"),
            (with(4, b'-').to_vec(), "':'"),
            (with(31, 0).to_vec(), "':'"),
            (with(0, b'g').to_vec(), "LID"),
            (with(6, b' ').to_vec(), "QPN"),
            (with(15, b'+').to_vec(), "PSN"),
            (with(25, 0xff).to_vec(), "peer QPN"),
            (with(40, b'z').to_vec(), "GID"),
            (with(63, 0).to_vec(), "GID"),
            // 25-bit QPN / PSN / peer QPN, and QPN 0
            (with(5, b'1').to_vec(), "QPN"),
            (with(14, b'f').to_vec(), "PSN"),
            (with(23, b'1').to_vec(), "peer QPN"),
            (
                QpRecord { qpn: 0, ..record() }.encode().to_vec(),
                "QPN is 0",
            ),
        ];
        for (bytes, want) in cases {
            let err = QpRecord::parse(&bytes).expect_err(want);
            assert!(err.to_string().contains(want), "{want}: {err}");
        }
        let zero_gid = QpRecord {
            gid: [0; 16],
            ..record()
        };
        assert!(matches!(
            QpRecord::parse(&zero_gid.encode()),
            Err(RecordError::BadGid { .. })
        ));
    }

    #[test]
    fn reader_joins_split_reads_and_reports_short_input() {
        let bytes = record().encode();
        let mut r = RecordReader::default();
        assert!(r.feed(&bytes[..1]).is_none());
        assert!(r.feed(&bytes[1..40]).is_none());
        assert_eq!(r.have(), 40);
        assert_eq!(r.eof(), RecordError::Short { got: 40 });
        assert_eq!(r.wanted(), 25);
        assert_eq!(r.feed(&bytes[40..]), Some(Ok(record())));
        assert_eq!(r.have(), 0);
        // A second record right behind the first one (the caller reads at most `wanted`).
        let mut twice = bytes.to_vec();
        twice.extend_from_slice(&bytes);
        assert_eq!(r.feed(&twice), Some(Ok(record())));
        assert_eq!(r.feed(&twice[RECORD_LEN..]), Some(Ok(record())));
    }

    #[test]
    fn exchange_steps_check_the_peer_qpns() {
        let client = record();
        assert!(check_client_hello(&client).is_ok());
        let server = QpRecord {
            qpn: 0x22,
            peer_qpn: client.qpn,
            ..record()
        };
        assert!(check_client_hello(&server).is_err());
        assert!(check_server_reply(&client, &server).is_ok());
        let stray = QpRecord {
            peer_qpn: 0x99,
            ..server
        };
        assert!(check_server_reply(&client, &stray).is_err());
        let ack = QpRecord {
            peer_qpn: server.qpn,
            ..client
        };
        assert!(check_client_ack(&client, &server, &ack).is_ok());
        // Acknowledging another QP, from another GID, or for a different QP of its own: errors.
        let wrong_peer = QpRecord {
            peer_qpn: 0x33,
            ..ack
        };
        assert!(check_client_ack(&client, &server, &wrong_peer).is_err());
        let mut moved = ack;
        moved.gid[15] = 2;
        assert!(matches!(
            check_client_ack(&client, &server, &moved),
            Err(RecordError::BadGid { .. })
        ));
        let other_qp = QpRecord { qpn: 0x12, ..ack };
        assert!(check_client_ack(&client, &server, &other_qp).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = QpRecord::parse(&data);
            let mut r = RecordReader::default();
            let mut rest = &data[..];
            while !rest.is_empty() {
                let n = rest.len().min(r.wanted());
                let _ = r.feed(&rest[..n]);
                rest = &rest[n..];
            }
            let _ = r.eof();
        }

        #[test]
        fn valid_records_round_trip(lid in any::<u16>(), qpn in 1u32..=0xff_ffff, psn in 0u32..=0xff_ffff,
                                    peer in 0u32..=0xff_ffff, gid in any::<[u8; 16]>()) {
            prop_assume!(gid != [0; 16]);
            let r = QpRecord { lid, qpn, psn, peer_qpn: peer, gid };
            prop_assert_eq!(QpRecord::parse(&r.encode()), Ok(r));
        }
    }
}
