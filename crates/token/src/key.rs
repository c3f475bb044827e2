//! The vocabulary of the boundary: opaque key handles, labels, key specs with their
//! PKCS#11-style attributes and DER signatures. Curves and public keys are `trustfab-keys`'s.

use std::fmt;

use crate::{Curve, Error};

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

/// What a key is for. A key has exactly one usage (PKCS#11: CKA_SIGN only, CKA_DERIVE only,
/// neither for a distribution key, CKA_SIGN and CKA_VERIFY on a secret key for a MAC key).
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
    /// Message authentication: an HMAC-SHA256 secret key ([`crate::Token::generate_mac`],
    /// [`crate::Token::mac`], [`crate::Token::verify_mac`]). It has no curve and no public key,
    /// is sensitive and never extractable, and does nothing else (PKCS#11: CKO_SECRET_KEY,
    /// CKK_GENERIC_SECRET, CKA_SIGN and CKA_VERIFY only).
    Mac,
}

impl KeyUsage {
    /// A one-byte code used in the store format.
    pub fn code(self) -> u8 {
        match self {
            Self::Sign => 1,
            Self::KeyTransport => 2,
            Self::Distribute => 3,
            Self::Mac => 4,
        }
    }

    /// The usage for a format code.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Sign),
            2 => Some(Self::KeyTransport),
            3 => Some(Self::Distribute),
            4 => Some(Self::Mac),
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
    /// distribution keys are P-256, a distribution key is sensitive (it leaves the token only
    /// wrapped, never in clear), and no EC spec is a MAC key (those are made from a
    /// [`crate::MacKeySpec`]).
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
            KeyUsage::Mac => Err(Error::BadSpec(
                "MAC keys have no curve: they are made with generate_mac",
            )),
        }
    }
}

/// The attributes of a key on a token, as the token reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// CKA_LABEL.
    pub label: KeyLabel,
    /// The curve of an EC key; `None` for a [`KeyUsage::Mac`] key, which has none.
    pub curve: Option<Curve>,
    /// CKA_SIGN, CKA_DERIVE, neither (distribution), or MAC.
    pub usage: KeyUsage,
    /// CKA_SENSITIVE.
    pub sensitive: bool,
    /// CKA_EXTRACTABLE.
    pub extractable: bool,
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

impl AsRef<[u8]> for Signature {
    fn as_ref(&self) -> &[u8] {
        &self.0
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
    use crate::PublicKey;
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
    fn usage_codes_round_trip_and_are_stable() {
        for (u, c) in [
            (KeyUsage::Sign, 1),
            (KeyUsage::KeyTransport, 2),
            (KeyUsage::Distribute, 3),
            (KeyUsage::Mac, 4),
        ] {
            assert_eq!(u.code(), c);
            assert_eq!(KeyUsage::from_code(c), Some(u));
        }
        assert_eq!(KeyUsage::from_code(0), None);
        assert_eq!(KeyUsage::from_code(5), None);
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
}
