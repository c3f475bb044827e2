//! The wrapped-key format and the OEM-side wrapping function: ECDH-ES on P-256 with the token's
//! key-transport key, a KDF the token computes itself, and AES key wrap with padding (RFC 5649).
//! The construction is chosen so that a PKCS#11 token runs every step after the ECDH inside the
//! token (C_DeriveKey twice, then C_UnwrapKey); see `docs/key-policies.md` for the full text.
//!
//! ```text
//! Z       = ECDH(kt_private, ephemeral_public).x             (32 bytes; CKM_ECDH1_DERIVE, CKD_NULL)
//! context = SHA-256("trustfab-wrap-v1" || 0x00 || key_curve || ephemeral_point || kt_point
//!                   || len8(public_point) || public_point || len16(info) || info)
//! KEK     = AES-256-CBC(key = Z, iv = 0^16, context)          (32 bytes; CKM_AES_CBC_ENCRYPT_DATA)
//! blob    = AES-256-KWP(KEK, PKCS#8 PrivateKeyInfo)           (RFC 5649; CKM_AES_KEY_WRAP_PAD)
//! ```

use aws_lc_rs::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, ECDH_P256};
use aws_lc_rs::cipher::{EncryptingKey, UnboundCipherKey, AES_256};
use aws_lc_rs::encoding::AsBigEndian as _;
use aws_lc_rs::key_wrap::{AesKek, KeyWrapPadded as _, AES_256 as KW_AES_256};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _};
use trustfab_types::SecretKeyDer;
use zeroize::Zeroizing;

use crate::{Curve, Error, KeyInfo, KeySpec, KeyUsage, PublicKey};

/// The format version this build writes and reads.
pub const WRAPPED_VERSION: u8 = 1;
/// The largest encoded [`WrappedKey`], in bytes.
pub const WRAPPED_MAX: usize = 1024;
/// The largest `info` a wrapped key may bind, in bytes.
pub const INFO_MAX: usize = 256;
/// The largest wrapped PKCS#8 key, in bytes.
const CIPHERTEXT_MAX: usize = 512;
const MAGIC: &[u8; 4] = b"TFWK";
const KDF_LABEL: &[u8] = b"trustfab-wrap-v1";

/// A private key wrapped for one key-transport key. Public data only: it reveals nothing about
/// the key without the key-transport private key.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    key_curve: Curve,
    ephemeral_point: Vec<u8>,
    public_key: PublicKey,
    info: Vec<u8>,
    ciphertext: Vec<u8>,
}

impl std::fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WrappedKey")
            .field("key_curve", &self.key_curve)
            .field("public_key", &self.public_key)
            .field("info_len", &self.info.len())
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

impl WrappedKey {
    /// The curve of the wrapped key.
    pub fn key_curve(&self) -> Curve {
        self.key_curve
    }

    /// The public half of the wrapped key, as the wrapping side declared it. A token checks it
    /// against the unwrapped private key before it accepts the key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    /// The sender's ephemeral P-256 point.
    pub fn ephemeral_point(&self) -> &[u8] {
        &self.ephemeral_point
    }

    /// Context bound into the KDF (a package id, for example).
    pub fn info(&self) -> &[u8] {
        &self.info
    }

    /// The RFC 5649 ciphertext.
    pub fn ciphertext(&self) -> &[u8] {
        &self.ciphertext
    }

    /// The KDF context for a key-transport public point (see the module doc).
    pub fn kdf_context(&self, kt_point: &[u8]) -> [u8; 32] {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(KDF_LABEL);
        ctx.update(&[0, self.key_curve.code()]);
        ctx.update(&self.ephemeral_point);
        ctx.update(kt_point);
        let point = self.public_key.point();
        ctx.update(&[u8::try_from(point.len()).unwrap_or(u8::MAX)]);
        ctx.update(point);
        ctx.update(
            &u16::try_from(self.info.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        ctx.update(&self.info);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// Encodes the blob (see `docs/key-policies.md` for the layout).
    pub fn to_bytes(&self) -> Vec<u8> {
        let point = self.public_key.point();
        let mut out = Vec::with_capacity(WRAPPED_MAX);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[WRAPPED_VERSION, Curve::P256.code(), self.key_curve.code()]);
        out.extend_from_slice(&self.ephemeral_point);
        // Lengths fit: points are at most 97 bytes, info and ciphertext are capped on creation.
        out.push(u8::try_from(point.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(point);
        out.extend_from_slice(
            &u16::try_from(self.info.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(&self.info);
        out.extend_from_slice(
            &u16::try_from(self.ciphertext.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Decodes a blob, checking its size, version and every length.
    ///
    /// # Errors
    /// [`Error::TooLarge`], [`Error::WrappedVersion`] or [`Error::WrappedFormat`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() > WRAPPED_MAX {
            return Err(Error::TooLarge {
                what: "wrapped key",
                len: bytes.len(),
                limit: WRAPPED_MAX,
            });
        }
        let mut r = Reader(bytes);
        if r.take(4)? != MAGIC {
            return Err(Error::WrappedFormat("not a trustfab wrapped key"));
        }
        let version = r.u8()?;
        if version != WRAPPED_VERSION {
            return Err(Error::WrappedVersion {
                found: version,
                supported: WRAPPED_VERSION,
            });
        }
        if r.u8()? != Curve::P256.code() {
            return Err(Error::WrappedFormat("key-transport curve is not P-256"));
        }
        let key_curve =
            Curve::from_code(r.u8()?).ok_or(Error::WrappedFormat("unknown key curve"))?;
        let ephemeral_point = r.take(Curve::P256.point_len())?.to_vec();
        PublicKey::from_point(Curve::P256, &ephemeral_point)
            .map_err(|_| Error::WrappedFormat("ephemeral point is not on P-256"))?;
        let plen = usize::from(r.u8()?);
        let public_key = PublicKey::from_point(key_curve, r.take(plen)?)
            .map_err(|_| Error::WrappedFormat("public key is not a point of the key curve"))?;
        let ilen = usize::from(r.u16()?);
        if ilen > INFO_MAX {
            return Err(Error::WrappedFormat("info is longer than 256 bytes"));
        }
        let info = r.take(ilen)?.to_vec();
        let clen = usize::from(r.u16()?);
        if !is_wrap_len(clen) {
            return Err(Error::WrappedFormat(
                "ciphertext length is not a key wrap length",
            ));
        }
        let ciphertext = r.take(clen)?.to_vec();
        if !r.0.is_empty() {
            return Err(Error::WrappedFormat("trailing bytes"));
        }
        Ok(Self {
            key_curve,
            ephemeral_point,
            public_key,
            info,
            ciphertext,
        })
    }
}

/// Refuses an `info` over [`INFO_MAX`] bytes.
fn check_info(info: &[u8]) -> Result<(), Error> {
    if info.len() > INFO_MAX {
        return Err(Error::TooLarge {
            what: "wrap info",
            len: info.len(),
            limit: INFO_MAX,
        });
    }
    Ok(())
}

/// Whether `len` is a length an RFC 5649 ciphertext of this format may have.
fn is_wrap_len(len: usize) -> bool {
    (24..=CIPHERTEXT_MAX).contains(&len) && len.is_multiple_of(8)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.0.len() < n {
            return Err(Error::WrappedFormat("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
}

/// The KEK from the agreed secret `z` and the KDF context: AES-256-CBC with a zero IV over the
/// 32-byte context, keyed by `z`. This is exactly what PKCS#11 `CKM_AES_CBC_ENCRYPT_DATA`
/// computes, so a token derives the same KEK without `z` or the KEK ever leaving it.
///
/// # Errors
/// [`Error::Crypto`] when `z` is not 32 bytes.
pub fn kek_from_shared_secret(z: &[u8], context: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, Error> {
    let key = UnboundCipherKey::new(&AES_256, z).map_err(|_| Error::Crypto("ECDH output"))?;
    let ecb = EncryptingKey::ecb(key).map_err(|_| Error::Crypto("AES key"))?;
    let mut out = Zeroizing::new([0u8; 32]);
    // CBC with a zero IV, spelled out over ECB: C1 = E(P1), C2 = E(P2 xor C1).
    out[..16].copy_from_slice(&context[..16]);
    ecb.encrypt(&mut out[..16])
        .map_err(|_| Error::Crypto("AES"))?;
    for i in 0..16 {
        out[16 + i] = context[16 + i] ^ out[i];
    }
    ecb.encrypt(&mut out[16..])
        .map_err(|_| Error::Crypto("AES"))?;
    Ok(out)
}

/// Unwraps `ciphertext` under `kek` (RFC 5649) into PKCS#8 DER. For in-process tokens.
///
/// # Errors
/// [`Error::Unwrap`] when the integrity check fails.
pub fn unwrap_pkcs8(kek: &[u8; 32], ciphertext: &[u8]) -> Result<SecretKeyDer, Error> {
    let kek = AesKek::new(&KW_AES_256, kek).map_err(|_| Error::Unwrap)?;
    let mut out = Zeroizing::new(vec![0u8; ciphertext.len()]);
    let n = kek
        .unwrap_with_padding(ciphertext, &mut out)
        .map_err(|_| Error::Unwrap)?
        .len();
    Ok(SecretKeyDer::new(out[..n].to_vec()))
}

/// The curve and public point of a PKCS#8 EC private key.
///
/// # Errors
/// [`Error::BadKey`] when the bytes are not a PKCS#8 key on P-256 or P-384.
pub fn pkcs8_public_key(key: &SecretKeyDer) -> Result<PublicKey, Error> {
    for curve in [Curve::P256, Curve::P384] {
        if let Ok(pair) = EcdsaKeyPair::from_pkcs8(curve.signing_alg(), key.secret_pkcs8_der()) {
            return Ok(PublicKey::from_point(curve, pair.public_key().as_ref())?);
        }
    }
    Err(Error::BadKey("not a PKCS#8 EC key on P-256 or P-384"))
}

/// Wraps `key` (PKCS#8 DER, P-256 or P-384) for the token whose key-transport public key is `kt`,
/// binding `info` (at most [`INFO_MAX`] bytes). Runs on the OEM side, outside any token; the
/// ephemeral key is used once and dropped.
///
/// # Errors
/// [`Error::BadKey`] when `kt` is not P-256 or `key` is not an EC PKCS#8 key,
/// [`Error::TooLarge`] for a long `info`, [`Error::Crypto`] when a primitive fails.
pub fn wrap_for(kt: &PublicKey, key: &SecretKeyDer, info: &[u8]) -> Result<WrappedKey, Error> {
    if kt.curve() != Curve::P256 {
        return Err(Error::BadKey("key-transport keys are P-256"));
    }
    check_info(info)?;
    let public_key = pkcs8_public_key(key)?;
    seal(kt, key, public_key, info)
}

/// [`wrap_for`] for a holder that already knows `key`'s public key (a token that loaded the key
/// once), so the PKCS#8 is not parsed again for every wrap. `public_key` must be `key`'s: the
/// recipient refuses a blob whose key is not the declared one.
///
/// # Errors
/// As [`wrap_for`].
pub fn wrap_known_for(
    kt: &PublicKey,
    key: &SecretKeyDer,
    public_key: &PublicKey,
    info: &[u8],
) -> Result<WrappedKey, Error> {
    if kt.curve() != Curve::P256 {
        return Err(Error::BadKey("key-transport keys are P-256"));
    }
    check_info(info)?;
    seal(kt, key, public_key.clone(), info)
}

/// The construction of [`wrap_for`] once its inputs are checked.
fn seal(
    kt: &PublicKey,
    key: &SecretKeyDer,
    public_key: PublicKey,
    info: &[u8],
) -> Result<WrappedKey, Error> {
    let eph = EphemeralPrivateKey::generate(&ECDH_P256, &SystemRandom::new())
        .map_err(|_| Error::Crypto("ephemeral key generation"))?;
    let ephemeral_point = eph
        .compute_public_key()
        .map_err(|_| Error::Crypto("ephemeral public key"))?
        .as_ref()
        .to_vec();
    let mut wrapped = WrappedKey {
        key_curve: public_key.curve(),
        ephemeral_point,
        public_key,
        info: info.to_vec(),
        ciphertext: Vec::new(),
    };
    let context = wrapped.kdf_context(kt.point());
    let kek = agreement::agree_ephemeral(
        eph,
        UnparsedPublicKey::new(&ECDH_P256, kt.point()),
        Error::Crypto("ECDH"),
        |z| kek_from_shared_secret(z, &context),
    )?;
    let plain = key.secret_pkcs8_der();
    let aes = AesKek::new(&KW_AES_256, kek.as_ref()).map_err(|_| Error::Crypto("KEK"))?;
    let mut out = vec![0u8; plain.len() + 16];
    let n = aes
        .wrap_with_padding(plain, &mut out)
        .map_err(|_| Error::Crypto("key wrap"))?
        .len();
    out.truncate(n);
    if n > CIPHERTEXT_MAX {
        return Err(Error::TooLarge {
            what: "wrapped key",
            len: n,
            limit: CIPHERTEXT_MAX,
        });
    }
    wrapped.ciphertext = out;
    Ok(wrapped)
}

/// The half-built wrapped key a token fills in when it wraps a key out (see
/// [`crate::Token::wrap_key`]): everything but the ciphertext, so that the token can compute the
/// KDF context over its own ephemeral point before it derives the KEK.
///
/// # Errors
/// [`Error::BadKey`] when `ephemeral_point` is not a P-256 point, [`Error::TooLarge`] for a long
/// `info`.
pub fn wrapped_header(
    ephemeral_point: &[u8],
    public_key: PublicKey,
    info: &[u8],
) -> Result<WrappedKey, Error> {
    PublicKey::from_point(Curve::P256, ephemeral_point)
        .map_err(|_| Error::BadKey("ephemeral point is not on P-256"))?;
    check_info(info)?;
    Ok(WrappedKey {
        key_curve: public_key.curve(),
        ephemeral_point: ephemeral_point.to_vec(),
        public_key,
        info: info.to_vec(),
        ciphertext: Vec::new(),
    })
}

impl WrappedKey {
    /// The blob with `ciphertext` (the RFC 5649 output) set, as a token finishes it.
    ///
    /// # Errors
    /// [`Error::WrappedFormat`] when the ciphertext is not a key wrap length.
    pub fn with_ciphertext(mut self, ciphertext: Vec<u8>) -> Result<Self, Error> {
        if !is_wrap_len(ciphertext.len()) {
            return Err(Error::WrappedFormat(
                "ciphertext length is not a key wrap length",
            ));
        }
        self.ciphertext = ciphertext;
        Ok(self)
    }
}

/// The one PKCS#8 document in a key wrap's plaintext, re-encoded canonically.
///
/// The plaintext is exactly one DER `PrivateKeyInfo`, optionally followed by fewer than 8 zero
/// bytes that end on an 8-byte boundary: SoftHSM 2.6 zero-pads every key to a multiple of 8
/// before it wraps (`SoftHSM::WrapKeySym` pads for `CKM_AES_KEY_WRAP` and applies it to
/// `CKM_AES_KEY_WRAP_PAD` too), so the RFC 5649 length covers the padding. Anything else after
/// the DER is refused (aws-lc's parser alone would ignore it). The key is returned as aws-lc
/// writes PKCS#8 v1, with its public key: a PKCS#11 token's encoding may lack it (SoftHSM2's
/// `ECPrivateKey` holds only the scalar), and the recipient gets the same bytes from every
/// backend. The key must be `declared`: its point is checked on the parse made here.
fn canonical_pkcs8(plain: &[u8], declared: &PublicKey) -> Result<SecretKeyDer, Error> {
    let bad = Error::BadKey("not one PKCS#8 key of the declared curve");
    let der_len = match plain {
        [0x30, n, ..] if *n < 0x80 => 2 + usize::from(*n),
        [0x30, 0x81, n, ..] if *n >= 0x80 => 3 + usize::from(*n),
        [0x30, 0x82, hi, lo, ..] => 4 + usize::from(u16::from_be_bytes([*hi, *lo])),
        _ => return Err(bad),
    };
    let (der, pad) = plain.split_at_checked(der_len).ok_or(Error::BadKey(
        "PKCS#8 is longer than the unwrapped plaintext",
    ))?;
    let padded = pad.is_empty() || (pad.len() < 8 && plain.len().is_multiple_of(8));
    if !padded || pad.iter().any(|b| *b != 0) {
        return Err(Error::BadKey("bytes after the PKCS#8 key"));
    }
    let alg = declared.curve().signing_alg();
    let pair = EcdsaKeyPair::from_pkcs8(alg, der).map_err(|_| bad)?;
    if pair.public_key().as_ref() != declared.point() {
        return Err(Error::BadKey("not the declared key"));
    }
    // aws-lc re-encodes a parsed key as it found it (without a public key if it had none), so
    // the pair is rebuilt from its scalar and point. The scalar buffer zeroizes on drop.
    let scalar = pair
        .private_key()
        .as_be_bytes()
        .map_err(|_| Error::Crypto("private key"))?;
    let full = EcdsaKeyPair::from_private_key_and_public_key(
        alg,
        scalar.as_ref(),
        pair.public_key().as_ref(),
    )
    .map_err(|_| Error::Crypto("private key"))?;
    let doc = full
        .to_pkcs8v1()
        .map_err(|_| Error::Crypto("PKCS#8 encoding"))?;
    Ok(SecretKeyDer::new(doc.as_ref().to_vec()))
}

/// The rules every backend applies before [`crate::Token::wrap_key`] wraps a key out: only a
/// distribution key that is extractable, only to a P-256 recipient, with at most [`INFO_MAX`]
/// bytes of `info`.
///
/// # Errors
/// [`Error::NotPermitted`] for another usage or a non-extractable key, [`Error::BadKey`] for a
/// recipient not on P-256, [`Error::TooLarge`] for a long `info`.
pub fn check_wrap_out(key: &KeyInfo, recipient: &PublicKey, info: &[u8]) -> Result<(), Error> {
    if key.usage != KeyUsage::Distribute {
        return Err(Error::NotPermitted { operation: "wrap" });
    }
    if !key.extractable {
        return Err(Error::NotPermitted {
            operation: "wrap (not extractable)",
        });
    }
    if recipient.curve() != Curve::P256 {
        return Err(Error::BadKey(
            "the recipient of a wrapped key must be on P-256",
        ));
    }
    check_info(info)
}

/// The rules every backend applies before [`crate::Token::unwrap_key`] imports a key: the spec
/// names the wrapped key's curve, is for a signing or a distribution key (key-transport keys are
/// made inside, never imported), and passes [`KeySpec::check`].
///
/// # Errors
/// [`Error::BadSpec`] naming the rule.
pub fn check_unwrap_in(spec: &KeySpec, wrapped: &WrappedKey) -> Result<(), Error> {
    if spec.curve != wrapped.key_curve() {
        return Err(Error::BadSpec(
            "spec curve differs from the wrapped key's curve",
        ));
    }
    if spec.usage == KeyUsage::KeyTransport {
        return Err(Error::BadSpec(
            "only signing and distribution keys are imported",
        ));
    }
    spec.check()
}

/// Unwraps `wrapped` with the recipient's P-256 private key (PKCS#8 or RFC 5915 DER) in process
/// memory: the inverse of [`wrap_for`] and of [`crate::Token::wrap_key`], for a recipient that is
/// not a token (a device's secure storage, which keeps its keys in its own memory). The unwrapped
/// key must be the public key the blob declares.
///
/// The key comes back as canonical PKCS#8 v1 with its public key, whichever backend wrapped it: a
/// PKCS#11 token wraps its own encoding (SoftHSM2's has no public key and is zero-padded to a
/// multiple of 8 bytes); see `canonical_pkcs8`.
///
/// # Errors
/// [`Error::Unwrap`] (no detail) when the blob is not for this key, was changed, holds anything
/// but one PKCS#8 key (and a token's zero padding), or its key is not the declared one;
/// [`Error::BadKey`] when `recipient` is not a P-256 private key.
pub fn unwrap_with(recipient: &SecretKeyDer, wrapped: &WrappedKey) -> Result<SecretKeyDer, Error> {
    let key = agreement::PrivateKey::from_private_key_der(&ECDH_P256, recipient.secret_pkcs8_der())
        .map_err(|_| Error::BadKey("recipient is not a P-256 private key"))?;
    let own_point = key
        .compute_public_key()
        .map_err(|_| Error::BadKey("recipient public key"))?;
    let context = wrapped.kdf_context(own_point.as_ref());
    let kek = agreement::agree(
        &key,
        UnparsedPublicKey::new(&ECDH_P256, wrapped.ephemeral_point()),
        Error::Unwrap,
        |z| kek_from_shared_secret(z, &context).map_err(|_| Error::Unwrap),
    )?;
    let plain = unwrap_pkcs8(&kek, wrapped.ciphertext())?;
    canonical_pkcs8(plain.secret_pkcs8_der(), wrapped.public_key()).map_err(|_| Error::Unwrap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kt() -> (agreement::PrivateKey, PublicKey) {
        let k = agreement::PrivateKey::generate(&ECDH_P256).unwrap();
        let p =
            PublicKey::from_point(Curve::P256, k.compute_public_key().unwrap().as_ref()).unwrap();
        (k, p)
    }

    fn oem_key(curve: Curve) -> SecretKeyDer {
        let doc = EcdsaKeyPair::generate_pkcs8(curve.signing_alg(), &SystemRandom::new()).unwrap();
        SecretKeyDer::new(doc.as_ref().to_vec())
    }

    fn open(
        k: &agreement::PrivateKey,
        kt: &PublicKey,
        w: &WrappedKey,
    ) -> Result<SecretKeyDer, Error> {
        let ctx = w.kdf_context(kt.point());
        let kek = agreement::agree(
            k,
            UnparsedPublicKey::new(&ECDH_P256, w.ephemeral_point()),
            Error::Unwrap,
            |z| kek_from_shared_secret(z, &ctx),
        )?;
        unwrap_pkcs8(&kek, w.ciphertext())
    }

    #[test]
    fn round_trip_through_bytes_for_both_curves() {
        let (k, p) = kt();
        for curve in [Curve::P256, Curve::P384] {
            let key = oem_key(curve);
            let w = wrap_for(&p, &key, b"package-1").unwrap();
            let back = WrappedKey::from_bytes(&w.to_bytes()).unwrap();
            assert_eq!(back, w);
            assert_eq!(back.key_curve(), curve);
            let plain = open(&k, &p, &back).unwrap();
            assert_eq!(plain.secret_pkcs8_der(), key.secret_pkcs8_der());
        }
    }

    #[test]
    fn kek_matches_an_independent_cbc() {
        // AES-256-CBC, zero IV, no padding, via aws-lc-rs's own CBC mode.
        use aws_lc_rs::cipher::{EncryptionContext, PaddedBlockEncryptingKey};
        let z = [7u8; 32];
        let ctx = [9u8; 32];
        let ours = kek_from_shared_secret(&z, &ctx).unwrap();
        let key = UnboundCipherKey::new(&AES_256, &z).unwrap();
        let cbc = PaddedBlockEncryptingKey::cbc_pkcs7(key).unwrap();
        let mut buf = ctx.to_vec();
        cbc.less_safe_encrypt(
            &mut buf,
            EncryptionContext::Iv128(aws_lc_rs::iv::FixedLength::from([0u8; 16])),
        )
        .unwrap();
        assert_eq!(&buf[..32], ours.as_ref());
    }

    #[test]
    fn another_kt_key_or_changed_info_does_not_unwrap() {
        let (k, p) = kt();
        let (k2, p2) = kt();
        let w = wrap_for(&p, &oem_key(Curve::P256), b"a").unwrap();
        assert!(matches!(open(&k2, &p2, &w), Err(Error::Unwrap)));
        let mut bytes = w.to_bytes();
        let info_at = 4 + 3 + 65 + 1 + 65 + 2;
        bytes[info_at] ^= 1;
        let changed = WrappedKey::from_bytes(&bytes).unwrap();
        assert!(matches!(open(&k, &p, &changed), Err(Error::Unwrap)));
    }

    /// A software recipient unwraps what `wrap_for` made for its key, and nothing else: another
    /// recipient, a changed ciphertext, or a blob whose declared key is not the wrapped one.
    #[test]
    fn unwrap_with_is_the_inverse_of_wrap_for_and_refuses_others() {
        let recipient = oem_key(Curve::P256);
        let other = oem_key(Curve::P256);
        let rp = pkcs8_public_key(&recipient).unwrap();
        let family = oem_key(Curve::P256);
        let w = wrap_for(&rp, &family, b"device 1").unwrap();
        let got = unwrap_with(&recipient, &w).unwrap();
        assert_eq!(
            pkcs8_public_key(&got).unwrap(),
            pkcs8_public_key(&family).unwrap()
        );
        assert!(matches!(unwrap_with(&other, &w), Err(Error::Unwrap)));
        let mut bytes = w.to_bytes();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let changed = WrappedKey::from_bytes(&bytes).unwrap();
        assert!(matches!(
            unwrap_with(&recipient, &changed),
            Err(Error::Unwrap)
        ));
        // A header declaring another public key: the KDF context differs, so it cannot unwrap.
        let liar = wrapped_header(
            w.ephemeral_point(),
            pkcs8_public_key(&other).unwrap(),
            w.info(),
        )
        .unwrap()
        .with_ciphertext(w.ciphertext().to_vec())
        .unwrap();
        assert!(matches!(unwrap_with(&recipient, &liar), Err(Error::Unwrap)));
        // The header rebuilt as it was unwraps: `wrapped_header` + `with_ciphertext` is the
        // path a token takes.
        let same = wrapped_header(w.ephemeral_point(), w.public_key().clone(), w.info())
            .unwrap()
            .with_ciphertext(w.ciphertext().to_vec())
            .unwrap();
        assert_eq!(same, w);
        assert!(wrapped_header(&[4u8; 65], rp, b"").is_err());
    }

    /// What SoftHSM2 wraps out for an EC key: PKCS#8 whose `ECPrivateKey` holds only the scalar
    /// (no parameters, no public key), zero-padded to a multiple of 8 before RFC 5649. The
    /// recipient gets aws-lc's canonical PKCS#8 of the same key; anything but that zero padding
    /// after the DER is refused.
    #[test]
    fn unwrap_with_canonicalises_a_tokens_pkcs8_and_refuses_trailing_bytes() {
        let recipient = oem_key(Curve::P256);
        let rp = pkcs8_public_key(&recipient).unwrap();
        let family = oem_key(Curve::P256);
        let pair =
            EcdsaKeyPair::from_pkcs8(Curve::P256.signing_alg(), family.secret_pkcs8_der()).unwrap();
        let d = pair.private_key().as_be_bytes().unwrap();
        // PrivateKeyInfo { 0, { id-ecPublicKey, prime256v1 }, OCTET STRING { ECPrivateKey {
        // 1, OCTET STRING d } } }: 67 bytes, as SoftHSM 2.6 encodes it.
        let mut bare = vec![0x30, 0x41, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07];
        bare.extend_from_slice(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]);
        bare.extend_from_slice(Curve::P256.ec_params_der());
        bare.extend_from_slice(&[0x04, 0x27, 0x30, 0x25, 0x02, 0x01, 0x01, 0x04, 0x20]);
        bare.extend_from_slice(d.as_ref());
        assert_eq!(bare.len(), 67);
        // `wrap_for` wraps whatever bytes aws-lc parses, so it can stand in for the token.
        let wrap = |plain: &[u8]| wrap_for(&rp, &SecretKeyDer::new(plain.to_vec()), b"").unwrap();
        for padding in [0usize, 5] {
            let mut plain = bare.clone();
            plain.resize(67 + padding, 0);
            let got = unwrap_with(&recipient, &wrap(&plain)).unwrap();
            assert_eq!(got.secret_pkcs8_der(), family.secret_pkcs8_der());
        }
        // The canonical form passes through unchanged.
        let w = wrap_for(&rp, &family, b"").unwrap();
        let got = unwrap_with(&recipient, &w).unwrap();
        assert_eq!(got.secret_pkcs8_der(), family.secret_pkcs8_der());
        for tail in [&[0u8, 0, 0, 0, 1][..], &[0; 13], &[0; 2]] {
            let mut plain = bare.clone();
            plain.extend_from_slice(tail);
            assert!(
                matches!(unwrap_with(&recipient, &wrap(&plain)), Err(Error::Unwrap)),
                "tail {tail:?}"
            );
        }
    }

    /// Wycheproof's AES-KWP vectors (RFC 5649) with 256-bit KEKs, the size this format uses,
    /// through the same unwrap the soft token runs, and the wrap direction through aws-lc-rs.
    #[test]
    fn wycheproof_aes_kwp_256() {
        use wycheproof::keywrap::{TestName, TestSet};
        use wycheproof::TestResult;
        let set = TestSet::load(TestName::AesKeyWrapWithPadding).unwrap();
        let mut ran = 0;
        for group in set.test_groups.iter().filter(|g| g.key_size == 256) {
            for t in &group.tests {
                let kek: [u8; 32] = t.key.as_slice().try_into().unwrap();
                let got = unwrap_pkcs8(&kek, &t.ct);
                match t.result {
                    TestResult::Invalid => assert!(got.is_err(), "tc {} unwrapped", t.tc_id),
                    TestResult::Valid => {
                        let got = got.unwrap_or_else(|e| panic!("tc {}: {e}", t.tc_id));
                        assert_eq!(got.secret_pkcs8_der(), t.pt.as_slice(), "tc {}", t.tc_id);
                        let aes = AesKek::new(&KW_AES_256, &kek).unwrap();
                        let mut out = vec![0u8; t.pt.len() + 16];
                        let ct = aes.wrap_with_padding(&t.pt, &mut out).unwrap();
                        assert_eq!(&*ct, t.ct.as_slice(), "tc {} wrap", t.tc_id);
                    }
                    TestResult::Acceptable => {}
                }
                ran += 1;
            }
        }
        assert!(ran > 50, "only {ran} vectors ran");
    }

    /// Wycheproof's P-256 ECDH vectors with uncompressed points: points the vectors call invalid
    /// (off the curve, wrong curve) never get past the wrapped-key decoder; for valid ones the
    /// agreement the soft token runs gives the published shared secret.
    #[test]
    fn wycheproof_ecdh_p256_ephemeral_points() {
        use wycheproof::ecdh::{TestName, TestSet};
        use wycheproof::TestResult;
        let (_, p) = kt();
        let blob = wrap_for(&p, &oem_key(Curve::P256), b"").unwrap().to_bytes();
        let set = TestSet::load(TestName::EcdhSecp256r1Ecpoint).unwrap();
        let (mut valid, mut invalid) = (0, 0);
        for group in &set.test_groups {
            for t in group.tests.iter().filter(|t| t.public_key.len() == 65) {
                let mut v = blob.clone();
                v[7..72].copy_from_slice(&t.public_key);
                let decoded = WrappedKey::from_bytes(&v);
                match t.result {
                    TestResult::Invalid => {
                        assert!(decoded.is_err(), "tc {} accepted", t.tc_id);
                        invalid += 1;
                    }
                    TestResult::Valid | TestResult::Acceptable => {
                        let w = decoded.unwrap_or_else(|e| panic!("tc {}: {e}", t.tc_id));
                        let d = t.private_key.as_slice();
                        let d = &d[d.len().saturating_sub(32)..];
                        let mut scalar = [0u8; 32];
                        scalar[32 - d.len()..].copy_from_slice(d);
                        let k =
                            agreement::PrivateKey::from_private_key(&ECDH_P256, &scalar).unwrap();
                        let z = agreement::agree(
                            &k,
                            UnparsedPublicKey::new(&ECDH_P256, w.ephemeral_point()),
                            (),
                            |z| Ok(z.to_vec()),
                        )
                        .unwrap();
                        assert_eq!(z, t.shared_secret.as_slice(), "tc {}", t.tc_id);
                        valid += 1;
                    }
                }
            }
        }
        assert!(
            valid > 10 && invalid > 0,
            "valid {valid}, invalid {invalid}"
        );
    }

    #[test]
    fn decoder_refuses_bad_blobs() {
        let (_, p) = kt();
        let bytes = wrap_for(&p, &oem_key(Curve::P256), b"").unwrap().to_bytes();
        let mut v = bytes.clone();
        v[4] = 2;
        assert!(matches!(
            WrappedKey::from_bytes(&v),
            Err(Error::WrappedVersion {
                found: 2,
                supported: 1
            })
        ));
        for cut in 0..bytes.len() {
            assert!(
                WrappedKey::from_bytes(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut long = bytes;
        long.push(0);
        assert!(WrappedKey::from_bytes(&long).is_err());
        assert!(matches!(
            WrappedKey::from_bytes(&vec![0; WRAPPED_MAX + 1]),
            Err(Error::TooLarge { .. })
        ));
        assert!(wrap_for(&p, &SecretKeyDer::new(vec![1, 2, 3]), b"").is_err());
        assert!(wrap_for(&p, &oem_key(Curve::P256), &[0; INFO_MAX + 1]).is_err());
    }
}
