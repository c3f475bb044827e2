//! The job package (`docs/job.md`): what one batch makes and how, signed by the HSM identity key.
//!
//! Wire format: a CBOR array `["trustfab-job", 1, payload, signature]`, where `payload` is the
//! CBOR map of a [`JobSpec`] and `signature` an ECDSA P-256 SHA-256 signature (DER) by the HSM
//! identity key over [`SIGNATURE_TAG`] ‖ `payload`. Pure: no I/O, no clock.

use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use serde::{Deserialize, Serialize};
use trustfab_device::{DeviceKind, SlotId};
use trustfab_pki::Signer;

use crate::error::JobError;

/// The magic string that starts a job package.
pub const MAGIC: &str = "trustfab-job";
/// The format version this build writes and reads.
pub const VERSION: u8 = 1;
/// The largest job package, in bytes.
pub const MAX_PACKAGE_BYTES: usize = 64 * 1024;
/// The largest quantity in one job.
pub const MAX_QUANTITY: u64 = 100_000_000;
/// Domain separation of the signature.
pub const SIGNATURE_TAG: &[u8] = b"trustfab-job-signature-v1\0";

/// Where the job writes what, by the part's slot numbers (`docs/devices.md`, "Slot layouts").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotMap {
    /// The key slot the device identity key is generated in.
    pub key: SlotId,
    /// The certificate slot for the device certificate.
    pub device_cert: SlotId,
    /// The certificate slot for the device CA certificate, when the product has one.
    pub device_ca: Option<SlotId>,
    /// The certificate slot for the OEM root CA certificate.
    pub root: SlotId,
}

impl Default for SlotMap {
    /// The layout of the simulated secure element: key 0, certificates 10 (device), 11 (device
    /// CA), 12 (root).
    fn default() -> Self {
        Self {
            key: 0,
            device_cert: 10,
            device_ca: Some(11),
            root: 12,
        }
    }
}

/// What locking a device means for this job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LockPolicy {
    /// Lock the data zone: every until-lock slot (the key and the certificates) is frozen.
    Data,
    /// Lock each certificate slot and the key slot on its own, then the data zone.
    SlotsAndData,
}

/// The kind of part, as the job names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartKind {
    /// A secure element.
    SecureElement,
    /// A secure MCU.
    SecureMcu,
}

impl From<PartKind> for DeviceKind {
    fn from(k: PartKind) -> Self {
        match k {
            PartKind::SecureElement => Self::SecureElement,
            PartKind::SecureMcu => Self::SecureMcu,
        }
    }
}

impl From<DeviceKind> for PartKind {
    fn from(k: DeviceKind) -> Self {
        match k {
            DeviceKind::SecureElement => Self::SecureElement,
            DeviceKind::SecureMcu => Self::SecureMcu,
        }
    }
}

/// The contents of a job package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The job id: `[A-Za-z0-9._-]{1,64}`, unique in the ledger.
    pub job_id: String,
    /// The id of the HSM that signed the package and issues the certificates.
    pub hsm_id: String,
    /// The product key, `oem/product`.
    pub product: String,
    /// How many certificates the job may have issued, 1 to [`MAX_QUANTITY`].
    pub quantity: u64,
    /// The kind of part the job is for.
    pub device_kind: PartKind,
    /// Where the key and the certificates go.
    pub slots: SlotMap,
    /// When set, the device's key must come with a factory attestation that validates to this
    /// silicon vendor root (DER).
    pub attestation_root: Option<serde_bytes_vec::Bytes>,
    /// How the device is locked.
    pub lock: LockPolicy,
    /// Creation time, Unix seconds.
    pub created_at: u64,
}

/// A byte string that serialises as a CBOR byte string (not an array of integers).
pub mod serde_bytes_vec {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Bytes, serialised as one CBOR byte string.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Bytes(pub Vec<u8>);

    impl Serialize for Bytes {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }

    impl<'de> Deserialize<'de> for Bytes {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let v = ciborium::Value::deserialize(d)?;
            match v {
                ciborium::Value::Bytes(b) => Ok(Self(b)),
                _ => Err(serde::de::Error::custom("expected a byte string")),
            }
        }
    }
}

impl JobSpec {
    /// Checks the rules a decoder cannot: id syntax, quantity range, distinct slots.
    ///
    /// # Errors
    /// [`JobError::Invalid`] naming the field.
    pub fn check(&self) -> Result<(), JobError> {
        let id_ok = |s: &str| {
            (1..=64).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        };
        if !id_ok(&self.job_id) {
            return Err(JobError::Invalid {
                field: "job_id",
                reason: "must be 1 to 64 of A-Z a-z 0-9 . _ -".into(),
            });
        }
        if !(1..=MAX_QUANTITY).contains(&self.quantity) {
            return Err(JobError::Invalid {
                field: "quantity",
                reason: format!("must be 1 to {MAX_QUANTITY}"),
            });
        }
        let mut slots = vec![self.slots.key, self.slots.device_cert, self.slots.root];
        slots.extend(self.slots.device_ca);
        let mut sorted = slots.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != slots.len() {
            return Err(JobError::Invalid {
                field: "slots",
                reason: "every slot must be different".into(),
            });
        }
        match self.product.split_once('/') {
            Some((o, p)) if id_ok(o) && id_ok(p) => Ok(()),
            _ => Err(JobError::Invalid {
                field: "product",
                reason: "must be oem/product".into(),
            }),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope(String, u8, serde_bytes_vec::Bytes, serde_bytes_vec::Bytes);

/// A job package whose signature was checked: the only way to a [`JobSpec`] from bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobPackage {
    spec: JobSpec,
    bytes: Vec<u8>,
}

impl JobPackage {
    /// Signs `spec` with the HSM identity key and encodes the package.
    ///
    /// # Errors
    /// [`JobError::Invalid`] for a spec that breaks a rule, [`JobError::Sign`] when the key
    /// cannot sign.
    pub fn seal(spec: JobSpec, identity: &dyn Signer) -> Result<Self, JobError> {
        spec.check()?;
        let mut payload = Vec::new();
        ciborium::into_writer(&spec, &mut payload).map_err(|_| JobError::Encode)?;
        let mut msg = SIGNATURE_TAG.to_vec();
        msg.extend_from_slice(&payload);
        let signature = identity.sign_der(&msg).map_err(JobError::Sign)?;
        let mut bytes = Vec::new();
        ciborium::into_writer(
            &Envelope(
                MAGIC.into(),
                VERSION,
                serde_bytes_vec::Bytes(payload),
                serde_bytes_vec::Bytes(signature),
            ),
            &mut bytes,
        )
        .map_err(|_| JobError::Encode)?;
        if bytes.len() > MAX_PACKAGE_BYTES {
            return Err(JobError::TooLarge {
                len: bytes.len(),
                limit: MAX_PACKAGE_BYTES,
            });
        }
        Ok(Self { spec, bytes })
    }

    /// Decodes a package and checks its signature under `identity_point`, the uncompressed
    /// P-256 point of the HSM identity key the station trusts.
    ///
    /// # Errors
    /// [`JobError::TooLarge`], [`JobError::Malformed`], [`JobError::Version`],
    /// [`JobError::Signature`] (no detail), or [`JobError::Invalid`].
    pub fn open(bytes: &[u8], identity_point: &[u8]) -> Result<Self, JobError> {
        if bytes.len() > MAX_PACKAGE_BYTES {
            return Err(JobError::TooLarge {
                len: bytes.len(),
                limit: MAX_PACKAGE_BYTES,
            });
        }
        let env: Envelope =
            ciborium::from_reader(bytes).map_err(|_| JobError::Malformed("envelope"))?;
        if env.0 != MAGIC {
            return Err(JobError::Malformed("magic"));
        }
        if env.1 != VERSION {
            return Err(JobError::Version {
                version: env.1,
                supported: VERSION,
            });
        }
        // One encoding only: the bytes must be exactly what this build writes (no trailing
        // bytes, no longer forms, no extra array items).
        let mut again = Vec::new();
        ciborium::into_writer(&env, &mut again).map_err(|_| JobError::Encode)?;
        if again != bytes {
            return Err(JobError::Malformed("not the canonical encoding"));
        }
        let Envelope(_, _, payload, signature) = env;
        let mut msg = SIGNATURE_TAG.to_vec();
        msg.extend_from_slice(&payload.0);
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, identity_point)
            .verify(&msg, &signature.0)
            .map_err(|_| JobError::Signature)?;
        let spec: JobSpec =
            ciborium::from_reader(payload.0.as_slice()).map_err(|_| JobError::Malformed("spec"))?;
        spec.check()?;
        Ok(Self {
            spec,
            bytes: bytes.to_vec(),
        })
    }

    /// The checked contents.
    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }

    /// The encoded package.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// SHA-256 of the encoded package: what the ledger records.
    pub fn digest(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &self.bytes).as_ref(),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trustfab_pki::{Curve, SoftKey};

    fn spec() -> JobSpec {
        JobSpec {
            job_id: "job-1".into(),
            hsm_id: "hsm-1".into(),
            product: "acme/thermo".into(),
            quantity: 10,
            device_kind: PartKind::SecureElement,
            slots: SlotMap::default(),
            attestation_root: None,
            lock: LockPolicy::Data,
            created_at: 1,
        }
    }

    #[test]
    fn seal_then_open_round_trips() {
        let k = SoftKey::generate(Curve::P256).unwrap();
        let p = JobPackage::seal(spec(), &k).unwrap();
        let q = JobPackage::open(p.as_bytes(), k.public_point()).unwrap();
        assert_eq!(q.spec(), &spec());
    }

    #[test]
    fn every_changed_byte_is_refused() {
        let k = SoftKey::generate(Curve::P256).unwrap();
        let p = JobPackage::seal(spec(), &k).unwrap();
        for i in 0..p.as_bytes().len() {
            let mut b = p.as_bytes().to_vec();
            b[i] ^= 0x01;
            assert!(JobPackage::open(&b, k.public_point()).is_err(), "byte {i}");
        }
    }

    #[test]
    fn another_key_is_refused_without_detail() {
        let k = SoftKey::generate(Curve::P256).unwrap();
        let other = SoftKey::generate(Curve::P256).unwrap();
        let p = JobPackage::seal(spec(), &k).unwrap();
        let e = JobPackage::open(p.as_bytes(), other.public_point()).unwrap_err();
        assert!(matches!(e, JobError::Signature));
        assert_eq!(e.to_string(), "job package signature does not verify");
    }

    #[test]
    fn unknown_version_and_oversize_are_refused() {
        let k = SoftKey::generate(Curve::P256).unwrap();
        let p = JobPackage::seal(spec(), &k).unwrap();
        let Envelope(m, _, pl, sig) = ciborium::from_reader(p.as_bytes()).unwrap();
        let mut b = Vec::new();
        ciborium::into_writer(&Envelope(m, 2, pl, sig), &mut b).unwrap();
        let e = JobPackage::open(&b, k.public_point()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "job package version 2 is not supported (this build reads 1)"
        );
        let big = vec![0u8; MAX_PACKAGE_BYTES + 1];
        assert!(matches!(
            JobPackage::open(&big, k.public_point()),
            Err(JobError::TooLarge { .. })
        ));
    }

    #[test]
    fn bad_specs_are_refused_by_field() {
        let k = SoftKey::generate(Curve::P256).unwrap();
        let mut s = spec();
        s.quantity = 0;
        let e = JobPackage::seal(s, &k).unwrap_err();
        assert_eq!(e.to_string(), "job field quantity: must be 1 to 100000000");
        let mut s = spec();
        s.slots.root = s.slots.device_cert;
        let e = JobPackage::seal(s, &k).unwrap_err();
        assert_eq!(
            e.to_string(),
            "job field slots: every slot must be different"
        );
    }
}
