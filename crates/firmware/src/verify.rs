//! Verification, as MCUboot's `bootutil_img_validate` does it (`boot/bootutil/src/image_validate.c`):
//! the SHA-256 over header, plaintext payload and protected TLVs must match its TLV, the signing
//! key must be the trusted one, and the ECDSA signature must verify under it. An encrypted
//! payload is decrypted first, since the hash covers the plaintext.

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest::{digest, Context, Digest, SHA256};
use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use trustfab_keys::{Curve, PublicKey};
use zeroize::Zeroizing;

use crate::crypto::{aes_ctr, unwrap_key, DecryptionKey, AES_KEY_LEN};
use crate::error::VerifyError;
use crate::format::{flags, Header, Image, TlvKind};

/// What the image's signing key must be.
#[derive(Clone, Copy, Debug)]
pub enum TrustAnchor<'a> {
    /// This public key (named by the image's KEYHASH or PUBKEY TLV).
    Key(&'a PublicKey),
    /// The key whose SubjectPublicKeyInfo hashes to this (a root-of-trust fuse,
    /// `MCUBOOT_HW_KEY`): the image must carry the key in its PUBKEY TLV.
    KeyHash(&'a [u8; 32]),
}

/// How to treat the payload.
#[derive(Clone, Copy)]
pub enum Payload<'a> {
    /// As it is: plaintext, or (in a primary slot after an update) decrypted in place.
    AsIs,
    /// Decrypt an encrypted payload with the first of these keys that unwraps its key; a
    /// plaintext payload is taken as it is.
    Decrypt(&'a [&'a dyn DecryptionKey]),
}

/// An image that verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Its header.
    pub header: Header,
    /// Its security counter, when it has one.
    pub security_counter: Option<u32>,
    /// The SHA-256 it was signed with.
    pub hash: [u8; 32],
}

/// The SHA-256 of a SubjectPublicKeyInfo: what KEYHASH and a root-of-trust fuse hold.
pub fn key_hash(key: &PublicKey) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, &key.to_spki_der()).as_ref());
    out
}

/// The signing key of `image` when it is the trusted one.
fn signing_key(image: &Image<'_>, anchor: TrustAnchor<'_>) -> Result<PublicKey, VerifyError> {
    let pubkey = image.tlv(TlvKind::PubKey);
    let keyhash = image.tlv(TlvKind::KeyHash);
    match anchor {
        TrustAnchor::Key(key) => {
            let spki = key.to_spki_der();
            let matches = match (pubkey, keyhash) {
                (Some(p), _) => verify_slices_are_equal(p, &spki).is_ok(),
                (None, Some(h)) => verify_slices_are_equal(h, &key_hash(key)).is_ok(),
                (None, None) => return Err(VerifyError::NoKey),
            };
            if !matches {
                return Err(VerifyError::KeyNotTrusted);
            }
            Ok(key.clone())
        }
        TrustAnchor::KeyHash(rot) => {
            let Some(p) = pubkey else {
                return Err(if keyhash.is_some() {
                    VerifyError::PublicKeyMissing
                } else {
                    VerifyError::NoKey
                });
            };
            if verify_slices_are_equal(digest(&SHA256, p).as_ref(), rot).is_err() {
                return Err(VerifyError::KeyNotTrusted);
            }
            let key = PublicKey::from_spki_der(p).map_err(|_| VerifyError::BadPublicKey)?;
            if key.curve() != Curve::P256 {
                return Err(VerifyError::BadPublicKey);
            }
            Ok(key)
        }
    }
}

/// The trusted signing key, the SHA-256 TLV and the signature TLV of `image`, checked in
/// MCUboot's order.
fn signed_parts<'i>(
    image: &Image<'i>,
    anchor: TrustAnchor<'_>,
) -> Result<(PublicKey, &'i [u8], &'i [u8]), VerifyError> {
    let key = signing_key(image, anchor)?;
    let expected = image.tlv(TlvKind::Sha256).ok_or(VerifyError::NoHash)?;
    let signature = image
        .tlv(TlvKind::EcdsaSig)
        .ok_or(VerifyError::NoSignature)?;
    Ok((key, expected, signature))
}

/// ECDSA P-256 over SHA-256 of the signed message, checked against its digest.
fn check_signature(key: &PublicKey, hash: &Digest, signature: &[u8]) -> Result<(), VerifyError> {
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key.point())
        .verify_digest(hash, signature)
        .map_err(|_| VerifyError::Signature)
}

/// The image key of an encrypted image.
fn image_key(
    image: &Image<'_>,
    keys: &[&dyn DecryptionKey],
) -> Result<Zeroizing<[u8; AES_KEY_LEN]>, VerifyError> {
    let h = image.header();
    if h.flags & (flags::ENCRYPTED_AES128 | flags::ENCRYPTED_AES256) != flags::ENCRYPTED_AES128 {
        return Err(VerifyError::UnsupportedEncryption { flags: h.flags });
    }
    let tlv = image
        .tlv(TlvKind::EncEc256)
        .ok_or(VerifyError::NoEncryptionTlv)?;
    unwrap_key(tlv, keys)
}

/// Verifies `bytes` against `anchor`.
///
/// Trust assumption: `anchor` is taken as trusted; nothing about it is checked here.
///
/// # Errors
/// The first check that fails, one [`VerifyError`] variant per check.
pub fn verify(
    bytes: &[u8],
    anchor: TrustAnchor<'_>,
    payload: Payload<'_>,
) -> Result<Verified, VerifyError> {
    let image = Image::parse(bytes)?;
    let (key, expected, signature) = signed_parts(&image, anchor)?;
    let header = *image.header();
    let hashed = image.hashed();
    let start = image.payload_offset();
    let end = start + image.payload().len();
    let (head, rest) = hashed
        .split_at_checked(start)
        .ok_or(VerifyError::HashMismatch)?;
    let (_, tail) = rest
        .split_at_checked(end - start)
        .ok_or(VerifyError::HashMismatch)?;

    // The signed message with the payload as MCUboot hashes it (plaintext).
    let plaintext;
    let body: &[u8] = match payload {
        Payload::Decrypt(keys) if header.is_encrypted() => {
            let key = image_key(&image, keys)?;
            let mut p = image.payload().to_vec();
            aes_ctr(key.as_ref(), &mut p).map_err(|()| VerifyError::Decrypt)?;
            plaintext = p;
            &plaintext
        }
        _ => image.payload(),
    };
    let mut ctx = Context::new(&SHA256);
    ctx.update(head);
    ctx.update(body);
    ctx.update(tail);
    let hash = ctx.finish();
    verify_slices_are_equal(hash.as_ref(), expected).map_err(|_| VerifyError::HashMismatch)?;

    // ECDSA over SHA-256 of the same message: verify the digest just computed and checked.
    check_signature(&key, &hash, signature)?;

    let mut out = [0u8; 32];
    out.copy_from_slice(hash.as_ref());
    Ok(Verified {
        header,
        security_counter: image.security_counter(),
        hash: out,
    })
}

/// Checks what can be checked of an image without its decryption key, as a programming
/// center holding only the ciphertext can: the image is well formed, its signing key is the
/// trusted one, and the ECDSA signature verifies over the image's SHA-256 TLV. For a plaintext
/// image that is [`verify`] in full (the hash is recomputed); for an encrypted one the hash
/// covers the plaintext, so whether the payload matches it is left to the device's boot stage,
/// which decrypts. Returns the hash TLV's value as `hash`.
///
/// # Errors
/// As [`verify`], without [`VerifyError::Decrypt`] and [`VerifyError::NoDecryptionKey`].
pub fn verify_sealed(bytes: &[u8], anchor: TrustAnchor<'_>) -> Result<Verified, VerifyError> {
    let image = Image::parse(bytes)?;
    if !image.header().is_encrypted() {
        return verify(bytes, anchor, Payload::AsIs);
    }
    let (key, expected, signature) = signed_parts(&image, anchor)?;
    let hash: [u8; 32] = expected.try_into().map_err(|_| VerifyError::NoHash)?;
    let digest = Digest::import_less_safe(&hash, &SHA256).map_err(|_| VerifyError::NoHash)?;
    check_signature(&key, &digest, signature)?;
    Ok(Verified {
        header: *image.header(),
        security_counter: image.security_counter(),
        hash,
    })
}

/// Applies the image's AES-128-CTR keystream to its payload in place: decrypts an encrypted
/// payload, or encrypts again one that was decrypted (MCUboot does the latter when an update
/// swap moves the primary image back to the secondary slot). The header keeps its flag.
///
/// # Errors
/// When the image is not well formed, not encrypted, or no key unwraps its image key.
pub fn apply_payload_cipher(
    image: &mut [u8],
    keys: &[&dyn DecryptionKey],
) -> Result<(), VerifyError> {
    let (key, start, len) = {
        let parsed = Image::parse(image)?;
        if !parsed.header().is_encrypted() {
            return Err(VerifyError::NotEncrypted);
        }
        (
            image_key(&parsed, keys)?,
            parsed.payload_offset(),
            parsed.payload().len(),
        )
    };
    let body = image
        .get_mut(start..start + len)
        .ok_or(VerifyError::Decrypt)?;
    aes_ctr(key.as_ref(), body).map_err(|()| VerifyError::Decrypt)
}

/// The image with its payload decrypted and everything else unchanged: what `imgtool verify`
/// can check, since the hash covers the plaintext.
///
/// # Errors
/// As [`apply_payload_cipher`].
pub fn decrypt(image: &[u8], keys: &[&dyn DecryptionKey]) -> Result<Vec<u8>, VerifyError> {
    let mut out = image.to_vec();
    apply_payload_cipher(&mut out, keys)?;
    Ok(out)
}
