//! The cryptography of an image (MCUboot `docs/encrypted_images.md`, "ECIES-P256 encryption"):
//! ECDH P-256 with an ephemeral key, HKDF-SHA256 with no salt and info `MCUBoot_ECIES_v1` to 48
//! bytes (AES-128 key ‖ HMAC-SHA256 key), the image key wrapped in AES-128-CTR with a zero nonce
//! and authenticated with HMAC-SHA256, and the payload in AES-128-CTR with a zero nonce.

use std::fmt;

use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, ECDH_P256};
use aws_lc_rs::cipher::{EncryptingKey, EncryptionContext, UnboundCipherKey, AES_128};
use aws_lc_rs::encoding::{AsBigEndian, EcPrivateKeyBin};
use aws_lc_rs::hkdf;
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;
use trustfab_types::{Rng, SecretBytes};
use zeroize::Zeroizing;

use crate::error::{MasterError, VerifyError};

/// HKDF `info` of MCUboot's ECIES (`boot/bootutil/src/encrypted.c`).
pub const ECIES_INFO: &[u8] = b"MCUBoot_ECIES_v1";
/// AES-128 key length.
pub const AES_KEY_LEN: usize = 16;
/// A P-256 private scalar.
pub const SCALAR_LEN: usize = 32;

/// A private key that can unwrap an image key: ECDH with the ephemeral point of the
/// `ENC_EC256` TLV. Implemented in software here; a device implements it inside its boot stage.
pub trait DecryptionKey {
    /// The ECDH shared secret (the x coordinate) with `peer`, an uncompressed P-256 point.
    ///
    /// # Errors
    /// When `peer` is not a point of the curve or the key fails.
    fn agree(&self, peer: &[u8]) -> Result<Zeroizing<[u8; 32]>, VerifyError>;
}

/// A P-256 decryption key in process memory (a family key, or a test device key). Zeroized by
/// aws-lc-rs when dropped; never printed.
pub struct SoftDecryptionKey {
    key: PrivateKey,
}

impl fmt::Debug for SoftDecryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SoftDecryptionKey([secret elided])")
    }
}

impl SoftDecryptionKey {
    /// A new key from `rng`.
    ///
    /// # Errors
    /// When the random source fails.
    pub fn generate(rng: &dyn Rng) -> Result<Self, MasterError> {
        Ok(Self {
            key: random_scalar_key(rng)?,
        })
    }

    /// The key from its 32-byte big-endian private scalar (the form a device's secret slot
    /// holds).
    ///
    /// # Errors
    /// When the bytes are not a valid P-256 scalar.
    pub fn from_scalar(scalar: &[u8]) -> Result<Self, VerifyError> {
        PrivateKey::from_private_key(&ECDH_P256, scalar)
            .map(|key| Self { key })
            .map_err(|_| VerifyError::Decrypt)
    }

    /// The key from PKCS#8 or RFC 5915 DER (a P-256 key file's content).
    ///
    /// # Errors
    /// When the DER is not a P-256 private key.
    pub fn from_der(der: &[u8]) -> Result<Self, VerifyError> {
        PrivateKey::from_private_key_der(&ECDH_P256, der)
            .map(|key| Self { key })
            .map_err(|_| VerifyError::Decrypt)
    }

    /// The private scalar, for programming into a device's secret slot. Every call is an
    /// audited exposure.
    ///
    /// # Errors
    /// When the key cannot be serialised.
    pub fn secret_scalar(&self) -> Result<SecretBytes, VerifyError> {
        let bin: EcPrivateKeyBin<'static> =
            self.key.as_be_bytes().map_err(|_| VerifyError::Decrypt)?;
        Ok(SecretBytes::new(bin.as_ref().to_vec()))
    }

    /// The public key: an uncompressed SEC1 point, what images are encrypted to.
    ///
    /// # Errors
    /// When the key cannot compute it.
    pub fn public_point(&self) -> Result<Vec<u8>, VerifyError> {
        self.key
            .compute_public_key()
            .map(|p| p.as_ref().to_vec())
            .map_err(|_| VerifyError::Decrypt)
    }
}

impl DecryptionKey for SoftDecryptionKey {
    fn agree(&self, peer: &[u8]) -> Result<Zeroizing<[u8; 32]>, VerifyError> {
        ecdh(&self.key, peer)
    }
}

/// A decryption key for the length of one boot (or one check), remembering its last agreement:
/// MCUboot unwraps an image's key once per boot (`boot_enc_load` into its `enc_state`) and uses
/// it both to validate an update and to decrypt it during the swap; with this, the second use
/// costs no second ECDH either. The remembered secret is zeroized when replaced or dropped.
pub struct LoadedKey<K> {
    key: K,
    last: std::sync::Mutex<Option<Agreement>>,
}

/// A peer point and the secret agreed with it.
type Agreement = (Vec<u8>, Zeroizing<[u8; 32]>);

impl<K> fmt::Debug for LoadedKey<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LoadedKey([secret elided])")
    }
}

impl<K: DecryptionKey> LoadedKey<K> {
    /// `key`, remembering nothing yet.
    pub fn new(key: K) -> Self {
        Self {
            key,
            last: std::sync::Mutex::new(None),
        }
    }
}

impl<K: DecryptionKey> DecryptionKey for LoadedKey<K> {
    fn agree(&self, peer: &[u8]) -> Result<Zeroizing<[u8; 32]>, VerifyError> {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((p, shared)) = last.as_ref() {
            if p.as_slice() == peer {
                return Ok(shared.clone());
            }
        }
        let shared = self.key.agree(peer)?;
        *last = Some((peer.to_vec(), shared.clone()));
        Ok(shared)
    }
}

/// ECDH of a P-256 private key with a peer point, as a [`DecryptionKey`] computes it.
///
/// # Errors
/// When the point is not on the curve.
pub fn ecdh(key: &PrivateKey, peer: &[u8]) -> Result<Zeroizing<[u8; 32]>, VerifyError> {
    agreement::agree(
        key,
        UnparsedPublicKey::new(&ECDH_P256, peer),
        VerifyError::Decrypt,
        |shared| {
            let mut out = Zeroizing::new([0u8; 32]);
            if shared.len() != out.len() {
                return Err(VerifyError::Decrypt);
            }
            out.copy_from_slice(shared);
            Ok(out)
        },
    )
}

/// A P-256 private key from the injected random source (a scalar out of range is redrawn).
fn random_scalar_key(rng: &dyn Rng) -> Result<PrivateKey, MasterError> {
    for _ in 0..64 {
        let mut scalar = Zeroizing::new([0u8; SCALAR_LEN]);
        rng.fill(scalar.as_mut()).map_err(MasterError::Rng)?;
        if let Ok(k) = PrivateKey::from_private_key(&ECDH_P256, scalar.as_ref()) {
            return Ok(k);
        }
    }
    Err(MasterError::Crypto)
}

struct Len48;

impl hkdf::KeyType for Len48 {
    fn len(&self) -> usize {
        48
    }
}

/// HKDF-SHA256 (no salt, info `MCUBoot_ECIES_v1`) of the shared secret: the key-wrapping
/// AES-128 key and the HMAC-SHA256 key.
fn derive(shared: &[u8; 32]) -> Result<Zeroizing<[u8; 48]>, ()> {
    // RFC 5869 §2.2: no salt is HashLen zero bytes, which HMAC treats as the empty key.
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(shared);
    let okm = prk.expand(&[ECIES_INFO], Len48).map_err(|_| ())?;
    let mut out = Zeroizing::new([0u8; 48]);
    okm.fill(out.as_mut()).map_err(|_| ())?;
    Ok(out)
}

/// AES-128-CTR with a zero nonce over `data`, in place (encryption and decryption are the same).
pub(crate) fn aes_ctr(key: &[u8], data: &mut [u8]) -> Result<(), ()> {
    let key = UnboundCipherKey::new(&AES_128, key).map_err(|_| ())?;
    let key = EncryptingKey::ctr(key).map_err(|_| ())?;
    key.less_safe_encrypt(data, EncryptionContext::Iv128(FixedLength::from([0u8; 16])))
        .map(|_| ())
        .map_err(|_| ())
}

/// Wraps `image_key` for `recipient` (an uncompressed P-256 point): the `ENC_EC256` TLV value,
/// ephemeral point ‖ HMAC ‖ encrypted key.
pub(crate) fn wrap_key(
    image_key: &[u8; AES_KEY_LEN],
    recipient: &[u8],
    rng: &dyn Rng,
) -> Result<Vec<u8>, MasterError> {
    let eph = random_scalar_key(rng)?;
    let point = eph.compute_public_key().map_err(|_| MasterError::Crypto)?;
    let shared = ecdh(&eph, recipient).map_err(|_| MasterError::NotP256("encryption"))?;
    let okm = derive(&shared).map_err(|()| MasterError::Crypto)?;
    let (enc_key, mac_key) = okm.split_at(AES_KEY_LEN);
    let mut wrapped = *image_key;
    aes_ctr(enc_key, &mut wrapped).map_err(|()| MasterError::Crypto)?;
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, mac_key), &wrapped);
    let mut tlv = Vec::with_capacity(crate::format::ENC_EC256_LEN);
    tlv.extend_from_slice(point.as_ref());
    tlv.extend_from_slice(tag.as_ref());
    tlv.extend_from_slice(&wrapped);
    Ok(tlv)
}

/// Unwraps the image key from an `ENC_EC256` value with the first of `keys` whose HMAC
/// verifies (in constant time).
pub(crate) fn unwrap_key(
    tlv: &[u8],
    keys: &[&dyn DecryptionKey],
) -> Result<Zeroizing<[u8; AES_KEY_LEN]>, VerifyError> {
    let (point, rest) = tlv.split_at_checked(65).ok_or(VerifyError::Decrypt)?;
    let (tag, wrapped) = rest.split_at_checked(32).ok_or(VerifyError::Decrypt)?;
    if keys.is_empty() {
        return Err(VerifyError::NoDecryptionKey);
    }
    // MCUboot `encrypted.c` accepts the ephemeral key only as an uncompressed point (0x04).
    if point.first() != Some(&0x04) {
        return Err(VerifyError::Decrypt);
    }
    for key in keys {
        let Ok(shared) = key.agree(point) else {
            continue;
        };
        let okm = derive(&shared).map_err(|()| VerifyError::Decrypt)?;
        let (enc_key, mac_key) = okm.split_at(AES_KEY_LEN);
        if hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, mac_key), wrapped, tag).is_err() {
            continue;
        }
        let mut image_key = Zeroizing::new([0u8; AES_KEY_LEN]);
        if image_key.len() != wrapped.len() {
            return Err(VerifyError::Decrypt);
        }
        image_key.copy_from_slice(wrapped);
        aes_ctr(enc_key, image_key.as_mut()).map_err(|()| VerifyError::Decrypt)?;
        return Ok(image_key);
    }
    Err(VerifyError::Decrypt)
}

/// A fresh image key from `rng`.
pub(crate) fn image_key(rng: &dyn Rng) -> Result<Zeroizing<[u8; AES_KEY_LEN]>, MasterError> {
    let mut k = Zeroizing::new([0u8; AES_KEY_LEN]);
    rng.fill(k.as_mut()).map_err(MasterError::Rng)?;
    Ok(k)
}
