//! The simulated silicon vendor: it gives every part a unique id and a factory attestation key
//! with a certificate from its own CA, as Microchip does for Trust&GO parts and NXP for SE050
//! (`docs/devices.md`, "Factory attestation").

use std::fmt;

use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_ASN1_SIGNING};
use trustfab_pki::{
    issue_device, self_signed_ca, CaRole, CaSpec, Curve, DeviceRequest, Issuer, PublicKey,
    RenderInputs, Signer as _, SoftKey, Template,
};
use trustfab_types::{DeviceUid, OemId, ProductId, Rng, SecretKeyDer, Serial, UnixTime};
use zeroize::Zeroizing;

use crate::device::DeviceKind;
use crate::sim::{SimDevice, SlotKey};

/// The profile of the factory attestation certificate: the UID is the commonName.
const ATTESTATION_TEMPLATE: &str = r#"version = 1
[subject]
organization = "Simulated Silicon Vendor"
common_name = "{uid}"
[validity]
no_expiry = true
[extensions]
key_usage = ["digital_signature"]
extended_key_usage = ["client_auth"]
[serial]
scheme = "sequential"
first = 1
last = 4000000000000000000
"#;

/// The silicon vendor could not make a part.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VendorError {
    /// The vendor CA failed to certify.
    #[error("silicon vendor CA failed")]
    Pki(#[from] trustfab_pki::Error),
    /// The random source failed.
    #[error("random number generator failed")]
    Rng,
    /// The key generator failed.
    #[error("key generation failed")]
    KeyGen,
    /// Every UID of this vendor is used.
    #[error("the vendor has used all {0} unique ids")]
    UidsExhausted(u64),
}

/// A silicon vendor: its CA, and the counter its unique ids come from.
pub struct SiliconVendor {
    key: SoftKey,
    root_der: Vec<u8>,
    template: Template,
    uid_key: [u8; 16],
    lot: [u8; 4],
    next: u64,
}

impl fmt::Debug for SiliconVendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SiliconVendor")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

/// Largest number of UIDs one vendor hands out: the 48 variable bits of a secure element's
/// serial number.
pub const MAX_UIDS: u64 = 1 << 48;

impl SiliconVendor {
    /// A new vendor with a fresh P-256 root CA valid from `now`, and a UID permutation key from
    /// `rng`.
    ///
    /// # Errors
    /// When the random source or the CA fails.
    pub fn new(now: UnixTime, rng: &dyn Rng) -> Result<Self, VendorError> {
        let key = SoftKey::generate(Curve::P256)?;
        let mut uid_key = [0u8; 16];
        let mut lot = [0u8; 4];
        rng.fill(&mut uid_key).map_err(|_| VendorError::Rng)?;
        rng.fill(&mut lot).map_err(|_| VendorError::Rng)?;
        let root_der = self_signed_ca(
            &CaSpec {
                role: CaRole::VendorRoot,
                common_name: "Simulated Silicon Vendor Root CA".into(),
                organization: "Simulated Silicon Vendor".into(),
                serial: Serial::from_u64(1).map_err(trustfab_pki::Error::from)?,
                not_before: now,
                days: 36_500,
            },
            &key,
        )?;
        Self::from_parts(key, root_der, uid_key, lot, 0)
    }

    pub(crate) fn from_parts(
        key: SoftKey,
        root_der: Vec<u8>,
        uid_key: [u8; 16],
        lot: [u8; 4],
        next: u64,
    ) -> Result<Self, VendorError> {
        let template = Template::from_toml(ATTESTATION_TEMPLATE)
            .map_err(|e| VendorError::Pki(trustfab_pki::Error::Template(e)))?;
        // Checks that the key is the root's.
        Issuer::new(&root_der, &key)?;
        Ok(Self {
            key,
            root_der,
            template,
            uid_key,
            lot,
            next,
        })
    }

    /// The vendor root certificate (DER): the trust anchor of every attestation.
    pub fn root_der(&self) -> &[u8] {
        &self.root_der
    }

    /// How many parts this vendor has made.
    pub fn made(&self) -> u64 {
        self.next
    }

    pub(crate) fn secret_parts(&self) -> Result<(SecretKeyDer, &[u8; 16], &[u8; 4]), VendorError> {
        Ok((self.key.secret_pkcs8_der()?, &self.uid_key, &self.lot))
    }

    /// The UID of the `index`-th part of `kind`: a keyed permutation of the index, so UIDs look
    /// random and are unique by construction. A secure element's is 9 bytes,
    /// `01 23 ‖ 6 bytes ‖ EE` as the ATECC608 serial number; a secure MCU's is 96 bits as the
    /// STM32 unique device id, here `lot ‖ 8 bytes`.
    ///
    /// # Errors
    /// When `index` is beyond [`MAX_UIDS`].
    pub fn uid(&self, kind: DeviceKind, index: u64) -> Result<DeviceUid, VendorError> {
        if index >= MAX_UIDS {
            return Err(VendorError::UidsExhausted(MAX_UIDS));
        }
        let mut uid = Vec::with_capacity(12);
        match kind {
            DeviceKind::SecureElement => {
                // ATECC608 data sheet, "Serial Number": SN[0:1] = 01 23, SN[8] = EE.
                let bytes = feistel(&self.uid_key, 48, index).to_be_bytes();
                uid.extend_from_slice(&[0x01, 0x23]);
                uid.extend_from_slice(&bytes[2..]);
                uid.push(0xEE);
            }
            DeviceKind::SecureMcu => {
                let bytes = feistel(&self.uid_key, 64, index).to_be_bytes();
                uid.extend_from_slice(&self.lot);
                uid.extend_from_slice(&bytes);
            }
        }
        DeviceUid::new(&uid).map_err(|e| VendorError::Pki(e.into()))
    }

    /// Makes one part of `kind`: a fresh UID, a factory attestation key generated inside and its
    /// certificate, and the part's default slot layout. The part leaves the factory with its
    /// configuration zone locked (secure element) or in the open lifecycle state (secure MCU).
    ///
    /// # Errors
    /// When the UIDs are used up, key generation fails or the CA fails.
    pub fn manufacture(
        &mut self,
        kind: DeviceKind,
        now: UnixTime,
    ) -> Result<SimDevice, VendorError> {
        self.make(kind, now, true)
    }

    /// As [`SiliconVendor::manufacture`], but a secure element leaves the factory with its
    /// configuration zone unlocked (a blank ATECC608 with the default configuration), so that
    /// its slots can be configured before the configuration is locked.
    ///
    /// # Errors
    /// As [`SiliconVendor::manufacture`].
    pub fn manufacture_blank(
        &mut self,
        kind: DeviceKind,
        now: UnixTime,
    ) -> Result<SimDevice, VendorError> {
        self.make(kind, now, false)
    }

    fn make(
        &mut self,
        kind: DeviceKind,
        now: UnixTime,
        configured: bool,
    ) -> Result<SimDevice, VendorError> {
        let index = self.next;
        let uid = self.uid(kind, index)?;
        let key = SlotKey::generate().map_err(|()| VendorError::KeyGen)?;
        let cert = self.certify(&uid, key.public(), index, now)?;
        self.next += 1;
        Ok(SimDevice::new(kind, uid, key, cert, configured))
    }

    fn certify(
        &self,
        uid: &DeviceUid,
        public_key: &PublicKey,
        index: u64,
        now: UnixTime,
    ) -> Result<Vec<u8>, VendorError> {
        let issuer = Issuer::new(&self.root_der, &self.key)?;
        let oem = OemId::new("silicon-vendor").map_err(trustfab_pki::Error::from)?;
        let product = ProductId::new("attestation").map_err(trustfab_pki::Error::from)?;
        let serial = Serial::from_u64(index + 1).map_err(trustfab_pki::Error::from)?;
        Ok(issue_device(
            &self.template,
            &DeviceRequest {
                inputs: RenderInputs {
                    oem: &oem,
                    product: &product,
                    uid,
                    serial: &serial,
                },
                public_key,
                now,
            },
            &issuer,
        )?)
    }

    pub(crate) fn restore(
        key_der: &SecretKeyDer,
        root_der: Vec<u8>,
        uid_key: [u8; 16],
        lot: [u8; 4],
        next: u64,
    ) -> Result<Self, VendorError> {
        let key = SoftKey::from_pkcs8(Curve::P256, key_der)?;
        Self::from_parts(key, root_der, uid_key, lot, next)
    }

    /// The root's public key point, for display.
    pub fn root_public_point(&self) -> &[u8] {
        self.key.public_point()
    }
}

/// A 4-round Feistel permutation of the `bits`-bit integers (`bits` even, at most 64) under
/// `key`: a bijection, so distinct indices give distinct outputs.
fn feistel(key: &[u8; 16], bits: u32, x: u64) -> u64 {
    let half = bits / 2;
    let mask = (1u64 << half) - 1;
    let (mut l, mut r) = ((x >> half) & mask, x & mask);
    for round in 0u8..4 {
        let mut input = Zeroizing::new(Vec::with_capacity(25));
        input.extend_from_slice(key);
        input.push(round);
        input.extend_from_slice(&r.to_be_bytes());
        let h = digest(&SHA256, &input);
        let mut f = [0u8; 8];
        f.copy_from_slice(&h.as_ref()[..8]);
        let next = l ^ (u64::from_be_bytes(f) & mask);
        l = r;
        r = next;
    }
    (l << half) | r
}

/// Makes an ECDSA P-256 key pair with aws-lc-rs (its private scalar is cleansed when dropped).
pub(crate) fn generate_pair() -> Result<EcdsaKeyPair, ()> {
    EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).map_err(|_| ())
}

/// The public point of a key pair, checked.
pub(crate) fn public_of(pair: &EcdsaKeyPair) -> Result<PublicKey, ()> {
    PublicKey::from_point(Curve::P256, pair.public_key().as_ref()).map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn feistel_is_a_permutation_on_a_small_domain() {
        let key = [7u8; 16];
        let seen: HashSet<u64> = (0..1u64 << 12).map(|x| feistel(&key, 12, x)).collect();
        assert_eq!(seen.len(), 1 << 12);
        assert!(seen.iter().all(|v| *v < 1 << 12));
    }
}
