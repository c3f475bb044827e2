//! The job package (`docs/job.md`): what one batch makes and how, signed by the HSM identity key.
//!
//! Wire format: a CBOR array `["trustfab-job", 1, payload, signature]`, where `payload` is the
//! CBOR map of a [`JobSpec`] and `signature` an ECDSA P-256 SHA-256 signature (DER) by the HSM
//! identity key over [`SIGNATURE_TAG`] ‖ `payload`. Pure: no I/O, no clock.

use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use serde::{Deserialize, Serialize};
use trustfab_pki::Signer;
use trustfab_types::{HsmId, JobId, ProductKey};

use crate::error::JobError;

/// A device slot number (`docs/devices.md`, "Slot layouts").
pub type SlotId = u8;

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

/// The contents of a job package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The job id (`[A-Za-z0-9._-]{1,64}`), unique in the ledger.
    pub job_id: JobId,
    /// The id of the HSM that signed the package and issues the certificates.
    pub hsm_id: HsmId,
    /// The product key, `oem/product` text on the wire.
    pub product: ProductKey,
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
    /// The firmware the job programs (secure MCU jobs of a product with firmware), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<JobFirmware>,
}

/// The firmware step of a job: which image, and what the product's package says devices trust.
/// The station programs the image as it is (encrypted for the family: it never holds the
/// plaintext), installs the family key the HSM wraps for each device, programs the
/// root-of-trust fuse and boots the device once, expecting this image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFirmware {
    /// The image's file name, for people (at most 255 bytes).
    pub name: String,
    /// SHA-256 of the image file: the station programs exactly these bytes.
    pub file_sha256: serde_bytes_vec::Bytes,
    /// The image's SHA-256 TLV (the hash of its plaintext): what the device reports once it
    /// booted the image.
    pub image_hash: serde_bytes_vec::Bytes,
    /// The image's security counter.
    pub security_counter: u32,
    /// The root-of-trust key hash, from the product's package.
    pub boot_key_hash: serde_bytes_vec::Bytes,
    /// The device family, from the product's package.
    pub family: String,
    /// Whether the image is encrypted: the family key is then installed into `secret_slot`.
    pub encrypted: bool,
    /// The device's secret slot for the family key.
    pub secret_slot: SlotId,
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
            // JSON (the HSM service's wire) writes bytes as an array of integers 0-255; CBOR
            // (packages, ledger bodies) only as a byte string.
            if d.is_human_readable() {
                return Vec::<u8>::deserialize(d).map(Self);
            }
            let v = ciborium::Value::deserialize(d)?;
            match v {
                ciborium::Value::Bytes(b) => Ok(Self(b)),
                _ => Err(serde::de::Error::custom("expected a byte string")),
            }
        }
    }
}

impl JobSpec {
    /// Checks the rules a decoder cannot: quantity range, distinct slots, the firmware step.
    /// The ids are valid by their types (a package whose ids do not parse is malformed).
    ///
    /// # Errors
    /// [`JobError::Invalid`] naming the field.
    pub fn check(&self) -> Result<(), JobError> {
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
        match &self.firmware {
            Some(fw) => fw.check(self)?,
            // A secure MCU enters its locked lifecycle state only with its root-of-trust fuse
            // programmed (docs/devices.md rule 16): without the firmware step every part would
            // fail at the lock.
            None if self.device_kind == PartKind::SecureMcu => {
                return Err(JobError::Invalid {
                    field: "firmware",
                    reason: "a secure MCU job programs firmware (its root-of-trust fuse must be \
                             set before the lock): name an image"
                        .into(),
                })
            }
            None => {}
        }
        Ok(())
    }
}

impl JobFirmware {
    fn check(&self, job: &JobSpec) -> Result<(), JobError> {
        let bad = |reason: &str| JobError::Invalid {
            field: "firmware",
            reason: reason.into(),
        };
        if job.device_kind != PartKind::SecureMcu {
            return Err(bad("firmware is programmed into secure MCUs only"));
        }
        if self.name.is_empty() || self.name.len() > 255 {
            return Err(bad("the image name must be 1 to 255 bytes"));
        }
        for (b, what) in [
            (&self.file_sha256, "file_sha256"),
            (&self.image_hash, "image_hash"),
            (&self.boot_key_hash, "boot_key_hash"),
        ] {
            if b.0.len() != 32 {
                return Err(bad(&format!("{what} must be 32 bytes")));
            }
        }
        let mut used = vec![job.slots.key, job.slots.device_cert, job.slots.root];
        used.extend(job.slots.device_ca);
        if self.encrypted && used.contains(&self.secret_slot) {
            return Err(bad(
                "the secret slot is already used for a key or certificate",
            ));
        }
        Ok(())
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
        let signature = identity
            .sign_der(&msg)
            .map_err(|e| JobError::Sign(e.into()))?;
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
    use super::serde_bytes_vec::Bytes;
    use super::*;
    use trustfab_pki::{Curve, SoftKey};

    fn spec() -> JobSpec {
        JobSpec {
            job_id: JobId::new("job-1").unwrap(),
            hsm_id: HsmId::new("hsm-1").unwrap(),
            product: ProductKey::parse("acme/thermo").unwrap(),
            quantity: 10,
            device_kind: PartKind::SecureElement,
            slots: SlotMap::default(),
            attestation_root: None,
            lock: LockPolicy::Data,
            created_at: 1,
            firmware: None,
        }
    }

    /// The HSM service carries a spec as JSON: its byte fields as arrays of integers, read back
    /// the same; CBOR still takes only byte strings.
    #[test]
    fn a_spec_with_bytes_round_trips_through_json() {
        let mut s = spec();
        s.attestation_root = Some(Bytes(vec![0x30, 0x82, 0xff, 0]));
        s.firmware = Some(JobFirmware {
            name: "fw.bin".into(),
            file_sha256: Bytes(vec![7; 32]),
            image_hash: Bytes(vec![8; 32]),
            security_counter: 2,
            boot_key_hash: Bytes(vec![9; 32]),
            family: "gw".into(),
            encrypted: true,
            secret_slot: 5,
        });
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("[48,130,255,0]"), "{json}");
        let back: JobSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert!(serde_json::from_str::<Bytes>("[256]").is_err());
        let mut cbor = Vec::new();
        ciborium::into_writer(&vec![1u8, 2], &mut cbor).unwrap();
        assert!(ciborium::from_reader::<Bytes, _>(cbor.as_slice()).is_err());
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

    fn firmware() -> JobFirmware {
        JobFirmware {
            name: "app.signed.bin".into(),
            file_sha256: Bytes(vec![1; 32]),
            image_hash: Bytes(vec![2; 32]),
            security_counter: 3,
            boot_key_hash: Bytes(vec![4; 32]),
            family: "thermo".into(),
            encrypted: true,
            secret_slot: 5,
        }
    }

    #[test]
    fn a_firmware_step_round_trips_and_its_rules_are_named() {
        let k = SoftKey::generate(Curve::P256).unwrap();
        let point = k.public_point().to_vec();
        let mut s = spec();
        s.device_kind = PartKind::SecureMcu;
        s.firmware = Some(firmware());
        let p = JobPackage::seal(s.clone(), &k).unwrap();
        assert_eq!(JobPackage::open(p.as_bytes(), &point).unwrap().spec(), &s);
        // A job without firmware encodes as before the field existed.
        let plain = JobPackage::seal(spec(), &k).unwrap();
        assert!(!plain.as_bytes().windows(8).any(|w| w == b"firmware"));

        let refused = |f: &dyn Fn(&mut JobSpec)| {
            let mut s = spec();
            s.device_kind = PartKind::SecureMcu;
            s.firmware = Some(firmware());
            f(&mut s);
            JobPackage::seal(s, &k).unwrap_err().to_string()
        };
        assert!(refused(&|s| s.device_kind = PartKind::SecureElement).contains("secure MCUs only"));
        assert!(
            refused(&|s| s.firmware.as_mut().unwrap().image_hash = Bytes(vec![0; 31]))
                .contains("image_hash must be 32 bytes")
        );
        assert!(
            refused(&|s| s.firmware.as_mut().unwrap().secret_slot = s.slots.root)
                .contains("secret slot is already used")
        );
        assert!(
            refused(&|s| s.firmware.as_mut().unwrap().name = String::new()).contains("image name")
        );
    }
}
