//! The vocabulary of the boundary: curves, opaque key handles, labels, key specs with their
//! PKCS#11-style attributes, public keys and DER signatures.

use std::fmt;

use aws_lc_rs::signature::{self as sig, UnparsedPublicKey};

use crate::Error;

/// Elliptic curves a token key may live on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Curve {
    /// NIST P-256 (secp256r1); signatures use SHA-256.
    P256,
    /// NIST P-384 (secp384r1); signatures use SHA-384.
    P384,
}

impl Curve {
    /// Length of an uncompressed SEC1 point.
    pub fn point_len(self) -> usize {
        match self {
            Self::P256 => 65,
            Self::P384 => 97,
        }
    }

    /// Length of a scalar (and of each of r and s).
    pub fn scalar_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
        }
    }

    /// DER of the named-curve OID (the PKCS#11 CKA_EC_PARAMS value).
    pub fn ec_params_der(self) -> &'static [u8] {
        match self {
            Self::P256 => &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
            Self::P384 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
        }
    }

    /// The curve named by CKA_EC_PARAMS DER, if it is one of ours.
    pub fn from_ec_params_der(der: &[u8]) -> Option<Self> {
        [Self::P256, Self::P384]
            .into_iter()
            .find(|c| c.ec_params_der() == der)
    }

    /// The hash the curve's signatures use, applied on the host when the token wants a digest.
    pub fn digest(self, message: &[u8]) -> aws_lc_rs::digest::Digest {
        match self {
            Self::P256 => aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, message),
            Self::P384 => aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA384, message),
        }
    }

    /// The aws-lc-rs verification algorithm for DER signatures on this curve.
    pub fn verify_alg(self) -> &'static sig::EcdsaVerificationAlgorithm {
        match self {
            Self::P256 => &sig::ECDSA_P256_SHA256_ASN1,
            Self::P384 => &sig::ECDSA_P384_SHA384_ASN1,
        }
    }

    /// The aws-lc-rs signing algorithm for DER signatures on this curve.
    pub fn signing_alg(self) -> &'static sig::EcdsaSigningAlgorithm {
        match self {
            Self::P256 => &sig::ECDSA_P256_SHA256_ASN1_SIGNING,
            Self::P384 => &sig::ECDSA_P384_SHA384_ASN1_SIGNING,
        }
    }

    /// A one-byte code used in the wrapped-key and store formats.
    pub fn code(self) -> u8 {
        match self {
            Self::P256 => 1,
            Self::P384 => 2,
        }
    }

    /// The curve for a format code.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::P256),
            2 => Some(Self::P384),
            _ => None,
        }
    }
}

impl fmt::Display for Curve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::P256 => "P-256",
            Self::P384 => "P-384",
        })
    }
}

/// An opaque reference to a key on one token. It carries no key material: holding one grants
/// nothing beyond asking the token that made it to use the key under the key's own attributes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHandle(u64);

impl KeyHandle {
    /// For backends: a handle from the backend's own object number.
    pub fn from_backend(id: u64) -> Self {
        Self(id)
    }

    /// For backends: the backend's object number.
    pub fn backend_id(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for KeyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHandle({})", self.0)
    }
}

/// The limit on a key label, in bytes (PKCS#11 labels are free-form; ours are kept printable).
pub const LABEL_MAX: usize = 64;

/// A key's label (PKCS#11 CKA_LABEL): unique per token, printable ASCII without spaces.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct KeyLabel(String);

impl KeyLabel {
    /// A label from text.
    ///
    /// # Errors
    /// [`Error::BadLabel`] when it is empty, longer than [`LABEL_MAX`] or not `[A-Za-z0-9._:-]`.
    pub fn new(s: &str) -> Result<Self, Error> {
        let bad = |reason| Error::BadLabel {
            label: s.chars().take(LABEL_MAX).collect(),
            reason,
        };
        if s.is_empty() {
            return Err(bad("empty"));
        }
        if s.len() > LABEL_MAX {
            return Err(bad("longer than 64 bytes"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            return Err(bad("only letters, digits and . _ : - are allowed"));
        }
        Ok(Self(s.to_owned()))
    }

    /// The label text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KeyLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyLabel({:?})", self.0)
    }
}

impl fmt::Display for KeyLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a key is for. A key has exactly one usage (PKCS#11: CKA_SIGN only, CKA_DERIVE only, or
/// neither for a distribution key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyUsage {
    /// ECDSA signing (CKA_SIGN).
    Sign,
    /// Key transport: ECDH inside the token to unwrap a [`crate::WrappedKey`] (CKA_DERIVE).
    /// The agreed secret never leaves the token. P-256 only.
    KeyTransport,
    /// Distribution: a P-256 key the token keeps only to hand it, wrapped, to devices
    /// ([`crate::Token::wrap_key`]), such as a firmware family decryption key. It neither signs
    /// nor derives (¬CKA_SIGN, ¬CKA_DERIVE, ¬CKA_DECRYPT, ¬CKA_UNWRAP); it is sensitive and
    /// extractable only under wrap (CKA_SENSITIVE, CKA_EXTRACTABLE when the spec asks for it).
    Distribute,
}

impl KeyUsage {
    /// A one-byte code used in the store format.
    pub fn code(self) -> u8 {
        match self {
            Self::Sign => 1,
            Self::KeyTransport => 2,
            Self::Distribute => 3,
        }
    }

    /// The usage for a format code.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Sign),
            2 => Some(Self::KeyTransport),
            3 => Some(Self::Distribute),
            _ => None,
        }
    }
}

/// How to create (generate or unwrap) a key. Defaults follow PKCS#11 best practice: sensitive and
/// not extractable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySpec {
    /// CKA_LABEL.
    pub label: KeyLabel,
    /// The curve.
    pub curve: Curve,
    /// CKA_SIGN, CKA_DERIVE, or neither (distribution).
    pub usage: KeyUsage,
    /// CKA_SENSITIVE: the private value is never revealed in plaintext. Default `true`; a
    /// distribution key must be sensitive.
    pub sensitive: bool,
    /// CKA_EXTRACTABLE: the key may be wrapped out of the token. Default `false`; only a
    /// distribution key is ever wrapped out, and only by [`crate::Token::wrap_key`].
    pub extractable: bool,
}

impl KeySpec {
    /// A sensitive, non-extractable key.
    pub fn new(label: KeyLabel, curve: Curve, usage: KeyUsage) -> Self {
        Self {
            label,
            curve,
            usage,
            sensitive: true,
            extractable: false,
        }
    }

    /// The rules every token applies to a spec before it makes a key: key-transport and
    /// distribution keys are P-256, and a distribution key is sensitive (it leaves the token
    /// only wrapped, never in clear).
    ///
    /// # Errors
    /// [`Error::BadSpec`] naming the broken rule.
    pub fn check(&self) -> Result<(), Error> {
        match self.usage {
            KeyUsage::Sign => Ok(()),
            KeyUsage::KeyTransport if self.curve != Curve::P256 => {
                Err(Error::BadSpec("key-transport keys are P-256"))
            }
            KeyUsage::KeyTransport => Ok(()),
            KeyUsage::Distribute if self.curve != Curve::P256 => {
                Err(Error::BadSpec("distribution keys are P-256"))
            }
            KeyUsage::Distribute if !self.sensitive => {
                Err(Error::BadSpec("distribution keys are sensitive"))
            }
            KeyUsage::Distribute => Ok(()),
        }
    }
}

/// The attributes of a key on a token, as the token reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// CKA_LABEL.
    pub label: KeyLabel,
    /// The curve.
    pub curve: Curve,
    /// CKA_SIGN, CKA_DERIVE, or neither (distribution).
    pub usage: KeyUsage,
    /// CKA_SENSITIVE.
    pub sensitive: bool,
    /// CKA_EXTRACTABLE.
    pub extractable: bool,
}

/// An EC public key: a curve and an uncompressed SEC1 point checked to lie on it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicKey {
    curve: Curve,
    point: Vec<u8>,
}

impl PublicKey {
    /// A public key from an uncompressed SEC1 point.
    ///
    /// # Errors
    /// [`Error::BadKey`] when the point is not an uncompressed point on `curve`.
    pub fn from_point(curve: Curve, point: &[u8]) -> Result<Self, Error> {
        if point.len() != curve.point_len() || point.first() != Some(&0x04) {
            return Err(Error::BadKey("not an uncompressed point of the curve"));
        }
        sig::ParsedPublicKey::new(curve.verify_alg(), point)
            .map_err(|_| Error::BadKey("point is not on the curve"))?;
        Ok(Self {
            curve,
            point: point.to_vec(),
        })
    }

    /// The curve.
    pub fn curve(&self) -> Curve {
        self.curve
    }

    /// The uncompressed SEC1 point (`04 || X || Y`).
    pub fn point(&self) -> &[u8] {
        &self.point
    }

    /// SubjectPublicKeyInfo DER (RFC 5480).
    pub fn to_spki_der(&self) -> Vec<u8> {
        // SEQUENCE { SEQUENCE { id-ecPublicKey, namedCurve }, BIT STRING (0 unused bits) point }
        const EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
        let params = self.curve.ec_params_der();
        let mut alg = vec![0x30];
        push_len(&mut alg, EC_PUBLIC_KEY.len() + params.len());
        alg.extend_from_slice(EC_PUBLIC_KEY);
        alg.extend_from_slice(params);
        let mut bits = vec![0x03];
        push_len(&mut bits, self.point.len() + 1);
        bits.push(0);
        bits.extend_from_slice(&self.point);
        let mut out = vec![0x30];
        push_len(&mut out, alg.len() + bits.len());
        out.extend_from_slice(&alg);
        out.extend_from_slice(&bits);
        out
    }

    /// Checks a DER ECDSA signature over `message` (hashed with the curve's hash).
    ///
    /// # Errors
    /// [`Error::Crypto`] when the signature does not verify.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<(), Error> {
        UnparsedPublicKey::new(self.curve.verify_alg(), &self.point)
            .verify(message, signature.der())
            .map_err(|_| Error::Crypto("signature does not verify"))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({}, ", self.curve)?;
        for b in &self.point {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

/// A DER length (short or long form).
fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len.to_be_bytes()[7]);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | u8::try_from(8 - skip).unwrap_or(8));
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// A DER ECDSA-Sig-Value (`SEQUENCE { r INTEGER, s INTEGER }`), as X.509 wants it.
#[derive(Clone, PartialEq, Eq)]
pub struct Signature(Vec<u8>);

impl Signature {
    /// Takes DER bytes as produced by a signer that already speaks DER.
    pub fn from_der(der: Vec<u8>) -> Self {
        Self(der)
    }

    /// Converts the raw `r || s` form PKCS#11 CKM_ECDSA returns (IEEE P1363) to DER.
    ///
    /// # Errors
    /// [`Error::Crypto`] when `raw` is not twice the curve's scalar length or r or s is zero.
    pub fn from_p1363(curve: Curve, raw: &[u8]) -> Result<Self, Error> {
        let n = curve.scalar_len();
        if raw.len() != 2 * n {
            return Err(Error::Crypto(
                "token returned a signature of the wrong length",
            ));
        }
        let mut body = Vec::with_capacity(2 * n + 8);
        for half in [&raw[..n], &raw[n..]] {
            let trimmed: &[u8] = {
                let skip = half.iter().take_while(|b| **b == 0).count();
                &half[skip..]
            };
            if trimmed.is_empty() {
                return Err(Error::Crypto("token returned a zero signature component"));
            }
            let pad = trimmed[0] & 0x80 != 0;
            body.push(0x02);
            push_len(&mut body, trimmed.len() + usize::from(pad));
            if pad {
                body.push(0);
            }
            body.extend_from_slice(trimmed);
        }
        let mut der = vec![0x30];
        push_len(&mut der, body.len());
        der.extend_from_slice(&body);
        Ok(Self(der))
    }

    /// The DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.0
    }

    /// The DER bytes, by value.
    pub fn into_der(self) -> Vec<u8> {
        self.0
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({} bytes DER)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};

    #[test]
    fn p1363_to_der_verifies_with_aws_lc() {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref()).unwrap();
        let pk = PublicKey::from_point(Curve::P256, pair.public_key().as_ref()).unwrap();
        // Enough signatures that r or s with a high bit or a leading zero byte both occur.
        for i in 0..64u8 {
            let raw = pair.sign(&rng, &[i]).unwrap();
            let der = Signature::from_p1363(Curve::P256, raw.as_ref()).unwrap();
            pk.verify(&[i], &der).unwrap();
            assert!(pk.verify(&[i, 0], &der).is_err());
        }
        assert!(Signature::from_p1363(Curve::P256, &[1; 63]).is_err());
        assert!(Signature::from_p1363(Curve::P256, &[0; 64]).is_err());
    }

    #[test]
    fn spki_der_is_what_aws_lc_writes() {
        use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
        for (alg, curve) in [
            (&aws_lc_rs::agreement::ECDH_P256, Curve::P256),
            (&aws_lc_rs::agreement::ECDH_P384, Curve::P384),
        ] {
            let k = aws_lc_rs::agreement::PrivateKey::generate(alg).unwrap();
            let pubk = k.compute_public_key().unwrap();
            let ours = PublicKey::from_point(curve, pubk.as_ref()).unwrap();
            let theirs: PublicKeyX509Der<'_> = pubk.as_der().unwrap();
            assert_eq!(ours.to_spki_der(), theirs.as_ref());
        }
    }

    #[test]
    fn usage_codes_round_trip_and_are_stable() {
        for (u, c) in [
            (KeyUsage::Sign, 1),
            (KeyUsage::KeyTransport, 2),
            (KeyUsage::Distribute, 3),
        ] {
            assert_eq!(u.code(), c);
            assert_eq!(KeyUsage::from_code(c), Some(u));
        }
        assert_eq!(KeyUsage::from_code(0), None);
        assert_eq!(KeyUsage::from_code(4), None);
    }

    #[test]
    fn labels_are_checked() {
        assert!(KeyLabel::new("oem:acme/prod-1").is_err());
        assert!(KeyLabel::new("").is_err());
        assert!(KeyLabel::new(&"a".repeat(65)).is_err());
        assert_eq!(
            KeyLabel::new("oem:acme.prod_1-a").unwrap().as_str(),
            "oem:acme.prod_1-a"
        );
    }

    #[test]
    fn public_key_refuses_points_off_the_curve() {
        let k =
            aws_lc_rs::agreement::PrivateKey::generate(&aws_lc_rs::agreement::ECDH_P256).unwrap();
        let mut point = k.compute_public_key().unwrap().as_ref().to_vec();
        assert!(PublicKey::from_point(Curve::P256, &point).is_ok());
        assert!(PublicKey::from_point(Curve::P384, &point).is_err());
        point[64] ^= 1;
        assert!(PublicKey::from_point(Curve::P256, &point).is_err());
    }
}
