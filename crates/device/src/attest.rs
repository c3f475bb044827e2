//! Key attestation: proof that a public key was born inside a genuine part. The part signs the new
//! public key, its slot, its UID and a caller's nonce with its factory attestation key; the
//! attestation key is certified by the silicon vendor CA. This follows the ATECC608 TrustFLEX
//! "internal sign private key for key attestation" and the SE050 attestation of generated keys
//! (see `docs/devices.md`, "Factory attestation").

use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use trustfab_pki::{validate, Policy, PublicKey, Purpose};
use trustfab_types::{DeviceUid, UnixTime};
use x509_parser::prelude::FromDer;

use crate::device::SlotId;

/// Domain separation for the attestation message, so that no other signature of the
/// attestation key can be mistaken for one.
const DOMAIN: &[u8] = b"trustfab key attestation v1\0";

/// An attested public key: the key, where it was generated, and the part's signature over them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyAttestation {
    /// The part's unique id.
    pub uid: DeviceUid,
    /// The slot the key was generated in.
    pub slot: SlotId,
    /// The new public key.
    pub public_key: PublicKey,
    /// The caller's nonce, for freshness.
    pub nonce: [u8; 32],
    /// DER ECDSA-P256-SHA256 signature by the attestation key over [`KeyAttestation::message`].
    pub signature: Vec<u8>,
}

/// Why an attestation was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestationError {
    /// The attestation certificate does not chain to the silicon vendor root.
    #[error("attestation certificate does not validate to the silicon vendor root")]
    Chain(#[source] trustfab_pki::Error),
    /// The attestation certificate is malformed.
    #[error("attestation certificate is malformed")]
    Certificate,
    /// The attestation certificate names another device.
    #[error(
        "attestation certificate is for device {certified}, the attestation is from {claimed}"
    )]
    WrongDevice {
        /// The UID in the certificate.
        certified: String,
        /// The UID in the attestation.
        claimed: DeviceUid,
    },
    /// The nonce is not the one the verifier asked for.
    #[error("attestation nonce is not the one asked for")]
    Nonce,
    /// The signature does not verify.
    #[error("attestation signature does not verify")]
    Signature,
}

impl KeyAttestation {
    /// The signed message: domain ‖ len(uid) ‖ uid ‖ slot ‖ len(point) ‖ point ‖ nonce.
    pub fn message(
        uid: &DeviceUid,
        slot: SlotId,
        public_key: &PublicKey,
        nonce: &[u8; 32],
    ) -> Vec<u8> {
        let uid = uid.as_bytes();
        let point = public_key.point();
        let mut m = Vec::with_capacity(DOMAIN.len() + 3 + uid.len() + point.len() + 32);
        m.extend_from_slice(DOMAIN);
        // Lengths fit a byte: a uid is at most 32 bytes, a point at most 97.
        m.push(u8::try_from(uid.len()).unwrap_or(u8::MAX));
        m.extend_from_slice(uid);
        m.push(slot);
        m.push(u8::try_from(point.len()).unwrap_or(u8::MAX));
        m.extend_from_slice(point);
        m.extend_from_slice(nonce);
        m
    }

    /// Verifies the attestation: the attestation certificate validates to `vendor_root` at
    /// `now`, certifies this attestation's device (its commonName is the UID in hex), the nonce is
    /// `expected_nonce`, and the signature verifies under the certified key.
    ///
    /// # Errors
    /// An [`AttestationError`] naming the first check that failed.
    pub fn verify(
        &self,
        attestation_cert: &[u8],
        vendor_root: &[u8],
        expected_nonce: &[u8; 32],
        now: UnixTime,
    ) -> Result<(), AttestationError> {
        validate(
            attestation_cert,
            &Policy {
                root: vendor_root,
                intermediates: &[],
                crls: &[],
                now,
                purpose: Purpose::ClientAuth,
            },
        )
        .map_err(AttestationError::Chain)?;
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(attestation_cert)
            .map_err(|_| AttestationError::Certificate)?;
        let certified = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or(AttestationError::Certificate)?;
        if certified != self.uid.to_hex() {
            return Err(AttestationError::WrongDevice {
                certified: certified.to_owned(),
                claimed: self.uid.clone(),
            });
        }
        if &self.nonce != expected_nonce {
            return Err(AttestationError::Nonce);
        }
        let key = cert.public_key().subject_public_key.data.as_ref();
        let msg = Self::message(&self.uid, self.slot, &self.public_key, &self.nonce);
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key)
            .verify(&msg, &self.signature)
            .map_err(|_| AttestationError::Signature)
    }
}
