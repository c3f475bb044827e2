//! The provisioning package (`docs/package.md`): what the OEM's wrapping tool sends to one HSM at
//! a programming center. A COSE_Sign1 (RFC 9052) by the OEM root key over a CBOR payload that
//! names the target HSM (the SHA-256 of its identity certificate), the OEM id, the product id, a
//! random package id, the production count, an optional serial range and a validity window, and
//! carries the device certificate template, the OEM root (and device CA) certificate and the
//! device-signing key wrapped for the HSM's key-transport key (the `trustfab-token` wrapped-key
//! format).
//!
//! This module only encodes, decodes and verifies. It never sees a private key in plaintext: the
//! signing key arrives already wrapped, and opening it is the HSM's business.
#![warn(clippy::indexing_slicing)]

mod cbor;
mod sig;

use ciborium::Value;
use coset::{
    iana, CborSerializable, CoseSign1, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable,
};
use trustfab_pki::{Curve, PublicKey, Signer};
use trustfab_types::{Fingerprint, OemId, ProductId, UnixTime};

/// The package format version this build writes and reads.
pub const PACKAGE_VERSION: u64 = 1;
/// The largest encoded package, in bytes.
pub const PACKAGE_MAX: usize = 256 * 1024;
/// The COSE content type of the payload.
pub const CONTENT_TYPE: &str = "application/trustfab-package+cbor";

/// Why a package was refused. Signature failures carry no detail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The package is larger than [`PACKAGE_MAX`].
    #[error("package is {len} bytes, the limit is {limit}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Not a tagged COSE_Sign1, or a malformed one.
    #[error("package is not a COSE_Sign1 message")]
    NotCose,
    /// The protected header is not what this format requires.
    #[error("package header: {0}")]
    Header(&'static str),
    /// The payload is not valid for this format.
    #[error("package payload: {0}")]
    Payload(String),
    /// The payload's version is not one this build reads.
    #[error(
        "package version {found} is not supported; this build reads version {PACKAGE_VERSION}"
    )]
    Version {
        /// The version found.
        found: u64,
    },
    /// The signature does not verify under the OEM root certificate in the package.
    #[error("package signature does not verify under the OEM root")]
    Signature,
    /// The OEM root certificate in the package is unusable.
    #[error("OEM root certificate: {0}")]
    Root(String),
    /// Signing failed.
    #[error("signing the package failed: {0}")]
    Sign(#[from] trustfab_pki::Error),
}

/// An inclusive range of sequential serial numbers the HSM may assign for this package.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SerialRange {
    /// First serial.
    pub first: u64,
    /// Last serial.
    pub last: u64,
}

/// The contents of a provisioning package (the signed payload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contents {
    /// Random, unique per package: the HSM refuses a second import of the same id.
    pub package_id: [u8; 16],
    /// SHA-256 of the target HSM's identity certificate (DER): the only HSM that may import it.
    pub target_hsm: Fingerprint,
    /// The OEM.
    pub oem_id: OemId,
    /// The product.
    pub product_id: ProductId,
    /// Certificates this package allows the HSM to issue.
    pub count: u64,
    /// Serial numbers to use, if the OEM assigns them.
    pub serial_range: Option<SerialRange>,
    /// The package may not be imported before this time.
    pub not_before: UnixTime,
    /// The package may not be imported after this time.
    pub not_after: UnixTime,
    /// The device certificate template, TOML (`docs/template.md`).
    pub template: String,
    /// The OEM root certificate, DER. Its key signs the package.
    pub root_cert: Vec<u8>,
    /// The device CA certificate, DER, when devices are signed by an intermediate.
    pub device_ca_cert: Option<Vec<u8>>,
    /// The device-signing private key, wrapped for the HSM's key-transport key
    /// (`trustfab_token::WrappedKey` encoding).
    pub wrapped_signing_key: Vec<u8>,
    /// What the product's devices boot, when the OEM masters firmware for them.
    pub firmware: Option<Firmware>,
}

/// The firmware part of a product: the key its devices' secure boot trusts and, for encrypted
/// images, the family decryption key (`docs/package.md`, key 13).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Firmware {
    /// The device family the images are mastered for (`[A-Za-z0-9._-]{1,64}`).
    pub family: String,
    /// SHA-256 of the OEM firmware signing key's SubjectPublicKeyInfo: what each device's
    /// root-of-trust fuse is programmed with (MCUboot `MCUBOOT_HW_KEY`).
    pub boot_key_hash: [u8; 32],
    /// The family decryption key (P-256), wrapped for the HSM's key-transport key like the
    /// signing key; absent when the product's images are signed but not encrypted.
    pub wrapped_family_key: Option<Vec<u8>>,
}

/// A package whose signature has been checked against the root certificate it carries.
/// Whether that root is the one the HSM expects for the OEM is the importer's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedPackage {
    contents: Contents,
}

impl VerifiedPackage {
    /// The verified contents.
    pub fn contents(&self) -> &Contents {
        &self.contents
    }

    /// Takes the verified contents.
    pub fn into_contents(self) -> Contents {
        self.contents
    }
}

fn cose_alg(curve: Curve) -> iana::Algorithm {
    match curve {
        Curve::P256 => iana::Algorithm::ES256,
        Curve::P384 => iana::Algorithm::ES384,
    }
}

/// The OEM root's public key, from its certificate.
fn root_key(root_der: &[u8]) -> Result<PublicKey, Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(root_der)
        .map_err(|e| Error::Root(format!("does not parse: {e}")))?;
    PublicKey::from_spki_der(cert.public_key().raw).map_err(|e| Error::Root(e.to_string()))
}

/// Encodes `contents` and signs it with the OEM root key (`signer` must be the key of
/// `contents.root_cert`; checked).
///
/// # Errors
/// When the signer is not the root's key, the contents are out of range, or signing fails.
pub fn seal(contents: &Contents, signer: &dyn Signer) -> Result<Vec<u8>, Error> {
    let root = root_key(&contents.root_cert)?;
    if root.point() != signer.public_point() {
        return Err(Error::Root(
            "the signing key is not the key of the root certificate".into(),
        ));
    }
    let payload = cbor::encode(contents)?;
    let protected = HeaderBuilder::new()
        .algorithm(cose_alg(signer.curve()))
        .content_type(CONTENT_TYPE.to_owned())
        .build();
    let msg = CoseSign1Builder::new()
        .protected(protected)
        .payload(payload)
        .try_create_signature(&[], |tbs| {
            let der = signer.sign_der(tbs).map_err(trustfab_pki::Error::from)?;
            sig::der_to_fixed(&der, signer.curve()).map_err(Error::from)
        })?
        .build();
    let bytes = msg.to_tagged_vec().map_err(|_| Error::NotCose)?;
    if bytes.len() > PACKAGE_MAX {
        return Err(Error::TooLarge {
            len: bytes.len(),
            limit: PACKAGE_MAX,
        });
    }
    Ok(bytes)
}

/// Decodes a package and verifies its signature under the OEM root certificate it carries.
///
/// # Errors
/// [`Error::TooLarge`], [`Error::NotCose`], [`Error::Header`], [`Error::Payload`],
/// [`Error::Version`], [`Error::Root`] or [`Error::Signature`].
pub fn open(bytes: &[u8]) -> Result<VerifiedPackage, Error> {
    if bytes.len() > PACKAGE_MAX {
        return Err(Error::TooLarge {
            len: bytes.len(),
            limit: PACKAGE_MAX,
        });
    }
    let msg = CoseSign1::from_tagged_slice(bytes).map_err(|_| Error::NotCose)?;
    let Some(coset::RegisteredLabelWithPrivate::Assigned(alg)) = msg.protected.header.alg else {
        return Err(Error::Header("no algorithm"));
    };
    match &msg.protected.header.content_type {
        Some(coset::ContentType::Text(t)) if t == CONTENT_TYPE => {}
        _ => {
            return Err(Error::Header(
                "content type is not application/trustfab-package+cbor",
            ))
        }
    }
    if !msg.unprotected.is_empty() {
        return Err(Error::Header("unprotected header must be empty"));
    }
    let payload = msg
        .payload
        .as_deref()
        .ok_or(Error::Header("detached payload"))?;
    let contents = cbor::decode(payload)?;
    let root = root_key(&contents.root_cert)?;
    if alg != cose_alg(root.curve()) {
        return Err(Error::Header(
            "algorithm does not match the root key's curve",
        ));
    }
    msg.verify_signature(&[], |sig, data| {
        sig::verify_fixed(&root, data, sig).map_err(|()| Error::Signature)
    })?;
    Ok(VerifiedPackage { contents })
}

/// Re-encodes a payload value for tests and tools that inspect packages.
///
/// # Errors
/// When the bytes are not a COSE_Sign1 with a payload.
pub fn payload_value(bytes: &[u8]) -> Result<Value, Error> {
    let msg = CoseSign1::from_tagged_slice(bytes).map_err(|_| Error::NotCose)?;
    let payload = msg.payload.ok_or(Error::Header("detached payload"))?;
    Value::from_slice(&payload).map_err(|_| Error::Payload("not CBOR".into()))
}

#[cfg(test)]
mod tests;
