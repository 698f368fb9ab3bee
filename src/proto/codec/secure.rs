//! msgr2.1 secure mode: AES-128-GCM frames (Ceph's crypto_onwire.cc and frames_v2.cc, rev1 rules).
//!
//! The connection secret (64 bytes from cephx) gives one AES-128 key (bytes 0..16), an rx nonce
//! (16..28) and a tx nonce (28..40); the server side crosses the two nonces, so each direction uses one
//! key/nonce stream. A nonce is `fixed le32 | counter le64`; rev1 advances the counter by one per GCM
//! message. There is no rekeying: coming back to the initial nonce is fatal ([`FrameError::NonceExhausted`]).
//!
//! Layout of one frame (no AAD, 16-byte tags):
//! ```text
//! GCM( preamble (32) | segment 0's first 48 bytes, zero-padded ) | tag          = 96 bytes
//! [ GCM( rest of segment 0, padded to 16 ) | tag ]        if padded segment 0 > 48
//! [ GCM( segments 1.., each padded to 16 | epilogue (late_status + 15 zero) ) | tag ]  if > 1 segment
//! ```
//! Invariants: a frame is handed out only after every one of its tags verified; a failed tag is a fatal
//! [`FrameError::AuthFailed`] (tampering, a replayed frame, or the wrong key); key material never
//! reaches `Debug` output.

use std::fmt;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes128Gcm, KeyInit, Nonce, Tag as GcmTag};

use super::FrameError;

/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Secure segments are padded to this (`CRYPTO_BLOCK_SIZE`).
pub const BLOCK: usize = 16;
/// Bytes of segment 0 carried inside the first GCM message (`FRAME_PREAMBLE_INLINE_SIZE`).
pub const INLINE_LEN: usize = 48;
/// Preamble + inline buffer (`FRAME_PREAMBLE_WITH_INLINE_SIZE`).
pub const PREAMBLE_WITH_INLINE: usize = super::PREAMBLE_LEN + INLINE_LEN;
/// The first GCM message on the wire.
pub const FIRST_BLOCK_LEN: usize = PREAMBLE_WITH_INLINE + TAG_LEN;
/// `sizeof(epilogue_secure_rev1_block_t)`: late_status and padding to a block.
pub const EPILOGUE_LEN: usize = BLOCK;
/// Connection secret bytes secure mode uses: key + two nonces (cephx sends 64).
pub const CONNECTION_SECRET_MIN: usize = 16 + 2 * 12;
/// The connection secret length cephx generates for secure mode (`get_connection_secret_length`).
pub const CONNECTION_SECRET_LEN: usize = 64;

/// `x` rounded up to a multiple of [`BLOCK`].
#[inline]
pub(crate) fn padded(x: u64) -> u64 {
    x.div_ceil(BLOCK as u64) * BLOCK as u64
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct GcmNonce {
    fixed: u32,
    counter: u64,
}

impl GcmNonce {
    fn from_bytes(b: &[u8; 12]) -> Self {
        GcmNonce {
            fixed: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            counter: u64::from_le_bytes([b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11]]),
        }
    }

    fn bytes(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[..4].copy_from_slice(&self.fixed.to_le_bytes());
        b[4..].copy_from_slice(&self.counter.to_le_bytes());
        b
    }
}

/// One direction's key and nonce stream.
struct Stream {
    cipher: Aes128Gcm,
    nonce: GcmNonce,
    initial: GcmNonce,
    used_initial: bool,
}

impl Stream {
    /// The nonce for the next GCM message, then advance (Ceph's `reset_*_handler`).
    fn next_nonce(&mut self) -> Result<[u8; 12], FrameError> {
        if self.nonce == self.initial {
            if self.used_initial {
                return Err(FrameError::NonceExhausted);
            }
            self.used_initial = true;
        }
        let n = self.nonce.bytes();
        self.nonce.counter = self.nonce.counter.wrapping_add(1);
        Ok(n)
    }
}

/// The sending half: seals GCM messages.
pub struct SecureTx(Stream);
/// The receiving half: opens GCM messages and checks their tags.
pub struct SecureRx(Stream);

impl fmt::Debug for SecureTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecureTx(AES-128-GCM, <key redacted>)")
    }
}

impl fmt::Debug for SecureRx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecureRx(AES-128-GCM, <key redacted>)")
    }
}

impl SecureTx {
    /// Encrypt `buf` in place and return its tag.
    pub fn seal(&mut self, buf: &mut [u8]) -> Result<[u8; TAG_LEN], FrameError> {
        let n = self.0.next_nonce()?;
        let tag = self
            .0
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&n), b"", buf)
            .map_err(|_| FrameError::AuthFailed)?;
        Ok(tag.into())
    }
}

impl SecureRx {
    /// Decrypt `buf` in place if `tag` authenticates it.
    pub fn open(&mut self, buf: &mut [u8], tag: &[u8]) -> Result<(), FrameError> {
        let n = self.0.next_nonce()?;
        if tag.len() != TAG_LEN {
            return Err(FrameError::AuthFailed);
        }
        self.0
            .cipher
            .decrypt_in_place_detached(Nonce::from_slice(&n), b"", buf, GcmTag::from_slice(tag))
            .map_err(|_| FrameError::AuthFailed)
    }
}

/// The two halves for one side of a connection. `crossed` is false on the client, true on the server
/// (Ceph's `create_handler_pair`).
pub fn session_ciphers(
    connection_secret: &[u8],
    crossed: bool,
) -> Result<(SecureTx, SecureRx), FrameError> {
    if connection_secret.len() < CONNECTION_SECRET_MIN {
        return Err(FrameError::BadConnectionSecret(connection_secret.len()));
    }
    let key = &connection_secret[..16];
    let nonce_at = |at: usize| {
        let mut b = [0u8; 12];
        b.copy_from_slice(&connection_secret[at..at + 12]);
        GcmNonce::from_bytes(&b)
    };
    let (rx_nonce, tx_nonce) = (nonce_at(16), nonce_at(28));
    let (rx_nonce, tx_nonce) = if crossed {
        (tx_nonce, rx_nonce)
    } else {
        (rx_nonce, tx_nonce)
    };
    let cipher =
        Aes128Gcm::new_from_slice(key).map_err(|_| FrameError::BadConnectionSecret(key.len()))?;
    let stream = |nonce| Stream {
        cipher: cipher.clone(),
        nonce,
        initial: nonce,
        used_initial: false,
    };
    Ok((SecureTx(stream(tx_nonce)), SecureRx(stream(rx_nonce))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> ((SecureTx, SecureRx), (SecureTx, SecureRx)) {
        let secret: Vec<u8> = (0..64).collect();
        (
            session_ciphers(&secret, false).unwrap(),
            session_ciphers(&secret, true).unwrap(),
        )
    }

    #[test]
    fn crossed_sides_talk_and_tags_are_checked() {
        let ((mut ctx, mut crx), (mut stx, mut srx)) = pair();
        let mut m = *b"client to server";
        let tag = ctx.seal(&mut m).unwrap();
        assert_ne!(&m, b"client to server");
        let mut bad = m;
        bad[3] ^= 1;
        let mut srx2 = {
            let secret: Vec<u8> = (0..64).collect();
            session_ciphers(&secret, true).unwrap().1
        };
        assert_eq!(srx2.open(&mut bad, &tag), Err(FrameError::AuthFailed));
        srx.open(&mut m, &tag).unwrap();
        assert_eq!(&m, b"client to server");
        // Replaying the same ciphertext fails: the receiver's nonce moved on.
        let mut again = m;
        let tag2 = {
            let secret: Vec<u8> = (0..64).collect();
            let (mut t, _) = session_ciphers(&secret, false).unwrap();
            t.seal(&mut again).unwrap()
        };
        assert_eq!(srx.open(&mut again, &tag2), Err(FrameError::AuthFailed));
        let mut r = *b"reply";
        let t = stx.seal(&mut r).unwrap();
        crx.open(&mut r, &t).unwrap();
        assert_eq!(&r, b"reply");
    }

    #[test]
    fn nonce_wrap_is_fatal() {
        let mut secret = vec![0u8; 64];
        // tx nonce counter (bytes 28+4..28+12) = u64::MAX: the second message wraps to 0, the third
        // would come back to... start at MAX-1 so the stream returns to its initial value after 2^64.
        secret[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        let (mut tx, _) = session_ciphers(&secret, false).unwrap();
        tx.seal(&mut [0u8; 4]).unwrap();
        // Force the counter back to the initial nonce, as 2^64 messages would.
        tx.0.nonce = tx.0.initial;
        assert_eq!(tx.seal(&mut [0u8; 4]), Err(FrameError::NonceExhausted));
        assert!(matches!(
            session_ciphers(&[0; 39], false),
            Err(FrameError::BadConnectionSecret(39))
        ));
        assert!(!format!("{tx:?}").contains('0'));
    }
}
