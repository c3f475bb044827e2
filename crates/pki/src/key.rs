//! Signing keys as the PKI sees them: the [`Signer`] trait every issuing key implements (a software
//! key here, an HSM token key in `trustfab-hsm`), the software key itself, and its file form,
//! encrypted PKCS#8 (PBES2 with scrypt and AES-256-CBC, RFC 8018 / RFC 7914).

use std::fmt;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING,
    ECDSA_P384_SHA384_ASN1, ECDSA_P384_SHA384_ASN1_SIGNING,
};
use pkcs8::der::pem::LineEnding;
use pkcs8::pkcs5::{pbes2, scrypt};
use pkcs8::{EncryptedPrivateKeyInfo, SecretDocument};
use trustfab_types::{limits, Passphrase, Rng, SecretKeyDer};
use zeroize::Zeroizing;

use crate::Error;

/// The elliptic curves trustfab issues with. P-256 is the default; P-384 where asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Curve {
    /// NIST P-256 (secp256r1) with ECDSA-SHA256.
    P256,
    /// NIST P-384 (secp384r1) with ECDSA-SHA384.
    P384,
}

impl Curve {
    pub(crate) fn rcgen_alg(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Self::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        }
    }

    fn signing_alg(self) -> &'static aws_lc_rs::signature::EcdsaSigningAlgorithm {
        match self {
            Self::P256 => &ECDSA_P256_SHA256_ASN1_SIGNING,
            Self::P384 => &ECDSA_P384_SHA384_ASN1_SIGNING,
        }
    }

    /// The verification algorithm for this curve's DER signatures.
    pub fn verify_alg(self) -> &'static aws_lc_rs::signature::EcdsaVerificationAlgorithm {
        match self {
            Self::P256 => &ECDSA_P256_SHA256_ASN1,
            Self::P384 => &ECDSA_P384_SHA384_ASN1,
        }
    }

    /// Length of an uncompressed SEC1 point on this curve.
    pub fn point_len(self) -> usize {
        match self {
            Self::P256 => 65,
            Self::P384 => 97,
        }
    }
}

impl fmt::Display for Curve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::P256 => "p256",
            Self::P384 => "p384",
        })
    }
}

impl std::str::FromStr for Curve {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "p256" | "p-256" | "prime256v1" | "secp256r1" => Ok(Self::P256),
            "p384" | "p-384" | "secp384r1" => Ok(Self::P384),
            _ => Err(format!("unknown curve {s:?}: use p256 or p384")),
        }
    }
}

/// A key that signs certificates and CRLs. The private half stays wherever the implementation
/// keeps it (process memory for [`SoftKey`], an HSM for the token-backed signer).
pub trait Signer: Send + Sync {
    /// The key's curve, which fixes the signature algorithm.
    fn curve(&self) -> Curve;
    /// The public key as an uncompressed SEC1 point.
    fn public_point(&self) -> &[u8];
    /// Signs `message` (hashing it with the curve's hash) and returns a DER ECDSA-Sig-Value.
    ///
    /// # Errors
    /// When the key cannot sign (a token error, for example).
    fn sign_der(&self, message: &[u8]) -> Result<Vec<u8>, Error>;
}

/// An ECDSA key pair in process memory (aws-lc-rs; its private scalar is cleared when dropped).
pub struct SoftKey {
    curve: Curve,
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl fmt::Debug for SoftKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SoftKey({}, [secret elided])", self.curve)
    }
}

impl SoftKey {
    /// Generates a fresh key pair.
    ///
    /// # Errors
    /// When the random source fails.
    pub fn generate(curve: Curve) -> Result<Self, Error> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(curve.signing_alg(), &rng)
            .map_err(|_| Error::Crypto("key generation failed"))?;
        let der = SecretKeyDer::new(doc.as_ref().to_vec());
        Self::from_pkcs8(curve, &der)
    }

    /// Loads a key pair from unencrypted PKCS#8 DER.
    ///
    /// # Errors
    /// When the bytes are not a PKCS#8 key on `curve`.
    pub fn from_pkcs8(curve: Curve, der: &SecretKeyDer) -> Result<Self, Error> {
        let pair = EcdsaKeyPair::from_pkcs8(curve.signing_alg(), der.secret_pkcs8_der())
            .map_err(|_| Error::KeyFile("not a PKCS#8 key on the expected curve"))?;
        Ok(Self {
            curve,
            pair,
            rng: SystemRandom::new(),
        })
    }

    /// Loads a key from encrypted PKCS#8 PEM (`-----BEGIN ENCRYPTED PRIVATE KEY-----`); the
    /// curve is found from the key itself.
    ///
    /// # Errors
    /// When the file is too large, not encrypted PKCS#8, does not decrypt under `passphrase`, or
    /// holds a key on another curve.
    pub fn from_encrypted_pem(pem: &str, passphrase: &Passphrase) -> Result<Self, Error> {
        if pem.len() > limits::KEY_FILE_BYTES {
            return Err(Error::TooLarge {
                what: "key file",
                len: pem.len(),
                limit: limits::KEY_FILE_BYTES,
            });
        }
        let (label, doc) =
            SecretDocument::from_pem(pem).map_err(|_| Error::KeyFile("not a PEM document"))?;
        if label != "ENCRYPTED PRIVATE KEY" {
            return Err(Error::KeyFile(
                "not an encrypted private key (expected ENCRYPTED PRIVATE KEY)",
            ));
        }
        let info = EncryptedPrivateKeyInfo::try_from(doc.as_bytes())
            .map_err(|_| Error::KeyFile("not encrypted PKCS#8"))?;
        let plain = info
            .decrypt(passphrase.expose_secret())
            .map_err(|_| Error::WrongPassphrase)?;
        let der = SecretKeyDer::new(plain.as_bytes().to_vec());
        Self::from_pkcs8(Curve::P256, &der).or_else(|_| Self::from_pkcs8(Curve::P384, &der))
    }

    /// Encrypts the key under `passphrase` as PKCS#8 PEM, readable by
    /// `openssl pkey -in FILE -passin ...`. The scrypt cost is N=2^14, r=8, p=1 (16 MiB): the
    /// parameters `openssl pkcs8 -scrypt` uses, inside OpenSSL's 32 MiB decryption limit.
    ///
    /// # Errors
    /// When the random source or the encoder fails.
    pub fn to_encrypted_pem(
        &self,
        passphrase: &Passphrase,
        rng: &dyn Rng,
    ) -> Result<Zeroizing<String>, Error> {
        self.to_encrypted_pem_with_cost(passphrase, rng, 14)
    }

    pub(crate) fn to_encrypted_pem_with_cost(
        &self,
        passphrase: &Passphrase,
        rng: &dyn Rng,
        log_n: u8,
    ) -> Result<Zeroizing<String>, Error> {
        let mut salt = [0u8; 16];
        let mut iv = [0u8; 16];
        rng.fill(&mut salt)
            .map_err(|_| Error::Crypto("rng failed"))?;
        rng.fill(&mut iv).map_err(|_| Error::Crypto("rng failed"))?;
        let params =
            scrypt::Params::new(log_n, 8, 1, 32).map_err(|_| Error::Crypto("scrypt parameters"))?;
        let pbes2 = pbes2::Parameters::scrypt_aes256cbc(params, &salt, &iv)
            .map_err(|_| Error::Crypto("pbes2 parameters"))?;
        let plain = self.pkcs8_der()?;
        let info = pkcs8::PrivateKeyInfo::try_from(plain.secret_pkcs8_der())
            .map_err(|_| Error::Crypto("key serialisation failed"))?;
        let enc = info
            .encrypt_with_params(pbes2, passphrase.expose_secret())
            .map_err(|_| Error::Crypto("key encryption failed"))?;
        enc.to_pem("ENCRYPTED PRIVATE KEY", LineEnding::LF)
            .map_err(|_| Error::Crypto("pem encoding failed"))
    }

    /// The key as unencrypted PKCS#8 DER, for encryption or for wrapping to an HSM.
    fn pkcs8_der(&self) -> Result<SecretKeyDer, Error> {
        // aws-lc-rs serialises the private key only through `to_pkcs8v1`.
        let doc = self
            .pair
            .to_pkcs8v1()
            .map_err(|_| Error::Crypto("key serialisation failed"))?;
        Ok(SecretKeyDer::new(doc.as_ref().to_vec()))
    }

    /// The key as unencrypted PKCS#8 DER. This is the OEM wrapping tool's path into a provisioning
    /// package; every call site is an audited exposure.
    ///
    /// # Errors
    /// When the key cannot be serialised.
    pub fn secret_pkcs8_der(&self) -> Result<SecretKeyDer, Error> {
        self.pkcs8_der()
    }
}

impl Signer for SoftKey {
    fn curve(&self) -> Curve {
        self.curve
    }

    fn public_point(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    fn sign_der(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        self.pair
            .sign(&self.rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| Error::Crypto("signing failed"))
    }
}

/// Adapts any [`Signer`] to rcgen's signing interface.
pub(crate) struct RcgenSigner<'a>(pub(crate) &'a dyn Signer);

impl rcgen::PublicKeyData for RcgenSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0.public_point()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.0.curve().rcgen_alg()
    }
}

impl rcgen::SigningKey for RcgenSigner<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0
            .sign_der(msg)
            .map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

/// A device (subject) public key: an EC point on P-256 or P-384, checked to lie on its curve.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    curve: Curve,
    point: Vec<u8>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({}, {})", self.curve, hex::encode(&self.point))
    }
}

const OID_EC_PUBLIC_KEY: &[u64] = &[1, 2, 840, 10045, 2, 1];
const OID_P256: &[u64] = &[1, 2, 840, 10045, 3, 1, 7];
const OID_P384: &[u64] = &[1, 3, 132, 0, 34];

impl PublicKey {
    /// A public key from an uncompressed SEC1 point.
    ///
    /// # Errors
    /// When the point is not on the curve.
    pub fn from_point(curve: Curve, point: &[u8]) -> Result<Self, Error> {
        if point.len() != curve.point_len() || point.first() != Some(&0x04) {
            return Err(Error::BadPublicKey(
                "not an uncompressed point of the curve",
            ));
        }
        aws_lc_rs::signature::ParsedPublicKey::new(curve.verify_alg(), point)
            .map_err(|_| Error::BadPublicKey("point is not on the curve"))?;
        Ok(Self {
            curve,
            point: point.to_vec(),
        })
    }

    /// A public key from SubjectPublicKeyInfo DER (RFC 5480).
    ///
    /// # Errors
    /// When the DER is malformed, the key is not EC on P-256/P-384, or the point is off the curve.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, Error> {
        if der.len() > 1024 {
            return Err(Error::TooLarge {
                what: "public key",
                len: der.len(),
                limit: 1024,
            });
        }
        let parsed = yasna::parse_der(der, |r| {
            r.read_sequence(|r| {
                let (alg, param) = r.next().read_sequence(|r| {
                    let alg = r.next().read_oid()?;
                    let param = r.next().read_oid()?;
                    Ok((alg, param))
                })?;
                let (bits, _) = r.next().read_bitvec_bytes()?;
                Ok((alg, param, bits))
            })
        })
        .map_err(|_| Error::BadPublicKey("not SubjectPublicKeyInfo DER"))?;
        let (alg, param, point) = parsed;
        if alg.components().as_slice() != OID_EC_PUBLIC_KEY {
            return Err(Error::BadPublicKey("not an EC public key"));
        }
        let curve = match param.components().as_slice() {
            c if c == OID_P256 => Curve::P256,
            c if c == OID_P384 => Curve::P384,
            _ => return Err(Error::BadPublicKey("curve is not P-256 or P-384")),
        };
        Self::from_point(curve, &point)
    }

    /// A public key from PEM (`-----BEGIN PUBLIC KEY-----`, as `openssl pkey -pubout` writes).
    ///
    /// # Errors
    /// When the text is not such a PEM block or the key inside is refused.
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        let der = crate::pem::decode_one(pem, "PUBLIC KEY")?;
        Self::from_spki_der(&der)
    }

    /// The curve.
    pub fn curve(&self) -> Curve {
        self.curve
    }

    /// The uncompressed SEC1 point.
    pub fn point(&self) -> &[u8] {
        &self.point
    }

    /// SubjectPublicKeyInfo DER.
    pub fn to_spki_der(&self) -> Vec<u8> {
        rcgen::PublicKeyData::subject_public_key_info(self)
    }
}

impl rcgen::PublicKeyData for PublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.curve.rcgen_alg()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trustfab_types::OsRng;

    #[test]
    fn encrypted_key_round_trips_and_refuses_a_wrong_passphrase() {
        let key = SoftKey::generate(Curve::P384).unwrap();
        let pass = Passphrase::new("correct horse".into()).unwrap();
        let pem = key.to_encrypted_pem_with_cost(&pass, &OsRng, 10).unwrap();
        assert!(pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
        let back = SoftKey::from_encrypted_pem(&pem, &pass).unwrap();
        assert_eq!(back.public_point(), key.public_point());
        assert_eq!(back.curve(), Curve::P384);
        let wrong = Passphrase::new("battery staple".into()).unwrap();
        assert!(matches!(
            SoftKey::from_encrypted_pem(&pem, &wrong),
            Err(Error::WrongPassphrase)
        ));
    }

    #[test]
    fn public_key_refuses_points_off_the_curve() {
        let key = SoftKey::generate(Curve::P256).unwrap();
        let pk = PublicKey::from_point(Curve::P256, key.public_point()).unwrap();
        let back = PublicKey::from_spki_der(&pk.to_spki_der()).unwrap();
        assert_eq!(back, pk);
        let mut bad = key.public_point().to_vec();
        bad[64] ^= 1;
        assert!(PublicKey::from_point(Curve::P256, &bad).is_err());
        assert!(PublicKey::from_point(Curve::P384, key.public_point()).is_err());
        assert!(PublicKey::from_spki_der(b"\x30\x03\x02\x01\x01").is_err());
    }

    #[test]
    fn debug_hides_the_private_key() {
        let key = SoftKey::generate(Curve::P256).unwrap();
        assert_eq!(format!("{key:?}"), "SoftKey(p256, [secret elided])");
    }
}
