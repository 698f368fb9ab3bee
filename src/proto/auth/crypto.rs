//! cephx cryptography: Ceph's `CryptoKey` and its AES-128-CBC envelope.
//!
//! Owns: [`CryptoKey`] (the encoded key a keyring's base64 holds: type, creation time, secret), the
//! cephx cipher (AES-128-CBC, PKCS#7 padding, Ceph's fixed IV `cephsageyudagreg`), the
//! `encode_encrypt` / `decode_decrypt` envelopes (struct_v 1 + `AUTH_ENC_MAGIC` + payload, then
//! encrypted, with or without a `u32` length in front) and the HMAC-SHA256 AUTH_SIGNATURE uses.
//!
//! Invariants: no cipher is written by hand (RustCrypto `aes` + `cbc`); a secret never appears in
//! `Debug` or `Display` output; decryption failures and short or foreign plaintexts are
//! [`CryptoError`] values, never panics.

use std::fmt;
use zeroize::{Zeroize, Zeroizing};

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use bytes::{BufMut, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::proto::denc::{Decode, DecodeError, Decoder, Encode};
use crate::proto::types::UTime;

/// `CEPH_CRYPTO_NONE`: a key type with no secret.
pub const CRYPTO_NONE: u16 = 0;
/// `CEPH_CRYPTO_AES`: AES-128 (the only type cephx uses).
pub const CRYPTO_AES: u16 = 1;
/// AES-128 key length; Ceph refuses AES keys of any other length.
pub const AES_KEY_LEN: usize = 16;
/// Ceph's fixed CBC initialisation vector (`CEPH_AES_IV`).
const CEPH_AES_IV: &[u8; 16] = b"cephsageyudagreg";
/// `AUTH_ENC_MAGIC`: the first field of every cephx plaintext, proof the right key decrypted it.
pub const AUTH_ENC_MAGIC: u64 = 0xff00_9cad_8826_aa55;
/// Largest ciphertext we agree to decrypt (cephx blobs are a few hundred bytes).
const MAX_CIPHERTEXT: usize = 1 << 20;

type Aes128CbcEnc = cbc::Encryptor<aes::Aes128>;
type Aes128CbcDec = cbc::Decryptor<aes::Aes128>;

/// Why a cephx encryption or decryption failed. Carries no key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    #[error("key type {0} is not AES (1)")]
    UnsupportedKeyType(u16),
    #[error("AES key of {0} bytes (expected 16)")]
    BadKeyLength(usize),
    #[error("ciphertext of {0} bytes is not a whole number of AES blocks")]
    BadCiphertextLength(usize),
    /// Wrong key or tampered ciphertext: the padding did not check out.
    #[error("decryption failed (wrong key or corrupted ciphertext)")]
    Decrypt,
    /// Decrypted, but the plaintext does not start with AUTH_ENC_MAGIC: wrong key.
    #[error("decrypted data has bad magic (wrong key)")]
    BadMagic,
    #[error("decrypted data did not decode: {0}")]
    Decode(#[from] DecodeError),
}

/// Ceph's `CryptoKey`: a key type, its creation time and the secret.
///
/// Encoded as `type u16 | created utime_t | len u16 | secret`; a keyring's `key = ...` is this
/// encoding in base64. `Debug` prints the type and creation time, never the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct CryptoKey {
    key_type: u16,
    created: UTime,
    secret: Vec<u8>,
}

impl fmt::Debug for CryptoKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CryptoKey")
            .field("type", &self.key_type)
            .field("created", &self.created)
            .field(
                "secret",
                &format_args!("<{} bytes redacted>", self.secret.len()),
            )
            .finish()
    }
}

impl Drop for CryptoKey {
    fn drop(&mut self) {
        // Wiped with stores the compiler may not elide.
        self.secret.zeroize();
    }
}

impl CryptoKey {
    /// An AES key with the given 16-byte secret.
    pub fn new_aes(secret: [u8; AES_KEY_LEN], created: UTime) -> Self {
        CryptoKey {
            key_type: CRYPTO_AES,
            created,
            secret: secret.to_vec(),
        }
    }

    /// A fresh random AES key (a session key, a service secret).
    pub fn generate(rng: &mut impl rand::Rng, created: UTime) -> Self {
        let mut s = [0u8; AES_KEY_LEN];
        rng.fill(&mut s);
        CryptoKey::new_aes(s, created)
    }

    /// The empty key (`CEPH_CRYPTO_NONE`), what an auth-none session has.
    pub fn none() -> Self {
        CryptoKey {
            key_type: CRYPTO_NONE,
            created: UTime::default(),
            secret: Vec::new(),
        }
    }

    pub fn key_type(&self) -> u16 {
        self.key_type
    }

    pub fn created(&self) -> UTime {
        self.created
    }

    pub fn is_empty(&self) -> bool {
        self.secret.is_empty()
    }

    /// The raw secret (the HMAC key of AUTH_SIGNATURE, the AES key). Handle with care.
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// Decode the base64 of a keyring's `key = ...` line.
    pub fn from_base64(s: &str) -> Result<Self, String> {
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|e| format!("key is not valid base64: {e}"))?;
        let d = &mut Decoder::new(&raw);
        let key = CryptoKey::decode(d).map_err(|e| format!("key does not decode: {e}"))?;
        if d.remaining() != 0 {
            return Err(format!(
                "key has {} trailing bytes after the encoded CryptoKey",
                d.remaining()
            ));
        }
        key.check().map_err(|e| e.to_string())?;
        Ok(key)
    }

    /// The base64 form a keyring holds.
    pub fn to_base64(&self) -> String {
        use base64::Engine;
        let mut b = BytesMut::new();
        self.encode(&mut b);
        base64::engine::general_purpose::STANDARD.encode(&b)
    }

    fn check(&self) -> Result<(), CryptoError> {
        match self.key_type {
            CRYPTO_AES if self.secret.len() == AES_KEY_LEN => Ok(()),
            CRYPTO_AES => Err(CryptoError::BadKeyLength(self.secret.len())),
            CRYPTO_NONE if self.secret.is_empty() => Ok(()),
            t => Err(CryptoError::UnsupportedKeyType(t)),
        }
    }

    fn aes_key(&self) -> Result<&[u8; AES_KEY_LEN], CryptoError> {
        if self.key_type != CRYPTO_AES {
            return Err(CryptoError::UnsupportedKeyType(self.key_type));
        }
        self.secret
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::BadKeyLength(self.secret.len()))
    }

    /// AES-128-CBC with PKCS#7 padding and Ceph's IV (`CryptoAESKeyHandler::encrypt`).
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let key = self.aes_key()?;
        Ok(Aes128CbcEnc::new(key.into(), CEPH_AES_IV.into())
            .encrypt_padded_vec_mut::<Pkcs7>(plaintext))
    }

    /// The inverse of [`CryptoKey::encrypt`]; a wrong key almost always fails the padding check.
    /// The plaintext is wiped when dropped.
    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let key = self.aes_key()?;
        if ciphertext.is_empty() || ciphertext.len() % 16 != 0 || ciphertext.len() > MAX_CIPHERTEXT
        {
            return Err(CryptoError::BadCiphertextLength(ciphertext.len()));
        }
        Aes128CbcDec::new(key.into(), CEPH_AES_IV.into())
            .decrypt_padded_vec_mut::<Pkcs7>(ciphertext)
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Decrypt)
    }

    /// HMAC-SHA256 keyed with the secret (`CryptoKey::hmac_sha256`); 32 zero bytes for an empty key.
    pub fn hmac_sha256(&self, data: &[u8]) -> [u8; 32] {
        hmac_sha256(&self.secret, data)
    }
}

impl Encode for CryptoKey {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u16_le(self.key_type);
        self.created.encode(buf);
        // Secrets are 16 bytes (checked when decoded or built), so the length fits a u16.
        buf.put_u16_le(self.secret.len() as u16);
        buf.put_slice(&self.secret);
    }
}

impl Decode for CryptoKey {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        let key_type = d.u16()?;
        let created = UTime::decode(d)?;
        let len = usize::from(d.u16()?);
        let secret = d.take(len, "CryptoKey secret")?.to_vec();
        let key = CryptoKey {
            key_type,
            created,
            secret,
        };
        key.check()
            .map_err(|e| DecodeError::invalid("CryptoKey", e.to_string()))?;
        Ok(key)
    }
}

/// HMAC-SHA256 of `data` keyed with `key`; 32 zero bytes when `key` is empty (auth none), as Ceph
/// sends AUTH_SIGNATURE without a session key.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    if key.is_empty() {
        return [0; 32];
    }
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return [0; 32]; // unreachable: HMAC takes keys of any length
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Ceph's `encode_encrypt_enc_bl`: encrypt `struct_v 1 | AUTH_ENC_MAGIC | payload` (no length prefix).
pub fn encrypt_envelope(key: &CryptoKey, payload: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut pt = Vec::with_capacity(9 + payload.len());
    pt.push(1u8);
    pt.extend_from_slice(&AUTH_ENC_MAGIC.to_le_bytes());
    pt.extend_from_slice(payload);
    key.encrypt(&pt)
}

/// Ceph's `encode_encrypt`: [`encrypt_envelope`] appended to `out` as a `u32`-length-prefixed blob.
pub fn encode_encrypt(
    key: &CryptoKey,
    payload: &[u8],
    out: &mut BytesMut,
) -> Result<(), CryptoError> {
    let ct = encrypt_envelope(key, payload)?;
    // Ciphertexts here are a few hundred bytes: the length fits a u32.
    out.put_u32_le(ct.len() as u32);
    out.put_slice(&ct);
    Ok(())
}

/// Ceph's `decode_decrypt_enc_bl`: decrypt, check struct_v and magic, return the payload after them.
pub fn decrypt_envelope(
    key: &CryptoKey,
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let pt = key.decrypt(ciphertext)?;
    let d = &mut Decoder::new(&pt);
    let _struct_v = d.u8()?;
    if d.u64()? != AUTH_ENC_MAGIC {
        return Err(CryptoError::BadMagic);
    }
    Ok(Zeroizing::new(pt[9..].to_vec()))
}

/// Ceph's `decode_decrypt`: a `u32`-length-prefixed ciphertext read from `d`, decrypted by
/// [`decrypt_envelope`].
pub fn decode_decrypt(
    key: &CryptoKey,
    d: &mut Decoder<'_>,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let ct = d.len_prefixed("encrypted blob")?;
    decrypt_envelope(key, ct)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &str = "AQD6uAtrJ6AxChAAWOI+7K90ygtmsTa0r8b4Hw==";

    #[test]
    fn keyring_key_decodes_and_round_trips() {
        let k = CryptoKey::from_base64(ADMIN).unwrap();
        assert_eq!(k.key_type(), CRYPTO_AES);
        assert_eq!(k.secret().len(), 16);
        assert_eq!(k.created().sec, 0x6b0b_b8fa);
        assert_eq!(k.to_base64(), ADMIN);
        let dbg = format!("{k:?}");
        assert!(dbg.contains("redacted"), "{dbg}");
        assert!(!dbg.contains(&format!("{:?}", k.secret())));
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(CryptoKey::from_base64("not base64!").is_err());
        // A raw 16-byte secret in base64 is not an encoded CryptoKey.
        assert!(CryptoKey::from_base64("AAECAwQFBgcICQoLDA0ODw==").is_err());
        // Type 2, otherwise well formed.
        let mut raw = BytesMut::new();
        raw.put_u16_le(2);
        UTime::new(1, 2).encode(&mut raw);
        raw.put_u16_le(16);
        raw.put_slice(&[7; 16]);
        use base64::Engine;
        let s = base64::engine::general_purpose::STANDARD.encode(&raw);
        assert!(CryptoKey::from_base64(&s).unwrap_err().contains("type 2"));
    }

    /// Checked against `openssl enc -aes-128-cbc -K 000102..0f -iv $(echo -n cephsageyudagreg | xxd -p)`.
    #[test]
    fn aes_cbc_matches_openssl_with_ceph_iv() {
        let key = CryptoKey::new_aes(core::array::from_fn(|i| i as u8), UTime::default());
        let ct = key.encrypt(b"hello cephx").unwrap();
        let expect = [
            0x88, 0x30, 0x48, 0xfe, 0x4b, 0xcd, 0x9d, 0xc0, 0x7d, 0x67, 0xb0, 0x17, 0x76, 0x0a,
            0x5e, 0x98,
        ];
        assert_eq!(ct, expect);
        assert_eq!(key.decrypt(&ct).unwrap().as_slice(), b"hello cephx");
        let full = key.encrypt(&[0u8; 16]).unwrap();
        assert_eq!(full.len(), 32, "PKCS#7 adds a whole block to a full one");
        assert_eq!(
            key.decrypt(&ct[..15]),
            Err(CryptoError::BadCiphertextLength(15))
        );
    }

    #[test]
    fn envelope_round_trip_and_wrong_key() {
        let k1 = CryptoKey::from_base64(ADMIN).unwrap();
        let k2 = CryptoKey::new_aes([9; 16], UTime::default());
        let mut out = BytesMut::new();
        encode_encrypt(&k1, b"payload", &mut out).unwrap();
        let d = &mut Decoder::new(&out);
        assert_eq!(decode_decrypt(&k1, d).unwrap().as_slice(), b"payload");
        assert_eq!(d.remaining(), 0);
        let err = decode_decrypt(&k2, &mut Decoder::new(&out)).unwrap_err();
        assert!(
            matches!(err, CryptoError::Decrypt | CryptoError::BadMagic),
            "{err}"
        );
        for n in 0..out.len() {
            assert!(decode_decrypt(&k1, &mut Decoder::new(&out[..n])).is_err());
        }
    }

    #[test]
    fn hmac_rfc4231_case2() {
        let sig = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(sig[..4], [0x5b, 0xdc, 0xc1, 0x46]);
        assert_eq!(hmac_sha256(&[], b"x"), [0; 32]);
    }
}
