//! Signing keys as the PKI sees them: the software key, which implements `trustfab_keys::Signer`
//! as a token key does, its file form, encrypted PKCS#8 (PBES2 with scrypt and AES-256-CBC,
//! RFC 8018 / RFC 7914), and the adapters that hand a `Signer` and a `PublicKey` to rcgen.

use std::fmt;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _};
use pkcs8::der::pem::LineEnding;
use pkcs8::pkcs5::{pbes2, scrypt};
use pkcs8::{EncryptedPrivateKeyInfo, SecretDocument};
use trustfab_keys::{Curve, PublicKey, SignError, Signer};
use trustfab_types::{limits, Passphrase, Rng, SecretKeyDer};
use zeroize::Zeroizing;

use crate::Error;

/// rcgen's signature algorithm for a curve's ECDSA signatures.
pub(crate) fn rcgen_alg(curve: Curve) -> &'static rcgen::SignatureAlgorithm {
    match curve {
        Curve::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        Curve::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
    }
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

    fn sign_der(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        self.pair
            .sign(&self.rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| SignError::new("signing failed"))
    }
}

/// Adapts any [`Signer`] to rcgen's signing interface.
pub(crate) struct RcgenSigner<'a>(pub(crate) &'a dyn Signer);

impl rcgen::PublicKeyData for RcgenSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0.public_point()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        rcgen_alg(self.0.curve())
    }
}

impl rcgen::SigningKey for RcgenSigner<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0
            .sign_der(msg)
            .map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

/// A public key from PEM (`-----BEGIN PUBLIC KEY-----`, as `openssl pkey -pubout` writes).
///
/// # Errors
/// When the text is not such a PEM block or the key inside is refused.
pub fn public_key_from_pem(pem: &str) -> Result<PublicKey, Error> {
    let der = crate::pem::decode_one(pem, "PUBLIC KEY")?;
    Ok(PublicKey::from_spki_der(&der)?)
}

/// Adapts a subject [`PublicKey`] to rcgen's public-key interface.
pub(crate) struct RcgenPublicKey<'a>(pub(crate) &'a PublicKey);

impl rcgen::PublicKeyData for RcgenPublicKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0.point()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        rcgen_alg(self.0.curve())
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
