//! The bodies of every ledger record (`docs/ledger.md`, `docs/job.md`), typed, with their
//! encoders and size-limited decoders: ids, counts, public data, digests and reasons; never a
//! secret.
//!
//! Two encodings, each kept byte for byte as the earlier release wrote it:
//! - the HSM's product, package and issuance bodies ([`ProductDef`], [`PackageImported`],
//!   [`IssuanceRecord`]) are CBOR maps with small unsigned integer keys (module `hsm`);
//! - the job and device bodies ([`JobCreated`], [`DeviceGood`], [`DeviceFailed`],
//!   [`JobClosed`], the legacy [`CreditBack`]) are CBOR maps keyed by field name ([`encode`],
//!   [`decode`]).
//!
//! Every decoder refuses a body over [`BODY_MAX`] and returns a [`RecordError`], never panics.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use trustfab_types::{JobId, ProductKey, StationId};

pub use crate::job::serde_bytes_vec::Bytes;

mod hsm;

pub use hsm::{FamilyKeyDef, FirmwareDef, IssuanceRecord, PackageImported, ProductDef};

/// The largest record body, in bytes: the ledger's own limit on a body.
pub const BODY_MAX: usize = 65_536;

/// Why a record body was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Over [`BODY_MAX`].
    #[error("record body is {len} bytes, the limit is {limit}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Not the CBOR this record's body is.
    #[error("{record} body is not well-formed CBOR of its kind ({what})")]
    Malformed {
        /// The record body's name.
        record: &'static str,
        /// What was wrong.
        what: String,
    },
    /// A field is missing or of the wrong type or size.
    #[error("{record} body: field {field} is missing or invalid")]
    Field {
        /// The record body's name.
        record: &'static str,
        /// The field (its name, or its integer key).
        field: &'static str,
    },
}

/// Refuses a body over [`BODY_MAX`].
pub(crate) fn check_len(b: &[u8]) -> Result<(), RecordError> {
    if b.len() > BODY_MAX {
        return Err(RecordError::TooLarge {
            len: b.len(),
            limit: BODY_MAX,
        });
    }
    Ok(())
}

/// A SHA-256 digest, serialised as one 32-byte CBOR byte string; any other length is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Bytes(b) = Bytes::deserialize(d)?;
        b.try_into()
            .map(Self)
            .map_err(|_| serde::de::Error::custom("expected a 32-byte digest"))
    }
}

/// Claim namespace: one `JobCreated` per job id.
pub const CLAIM_JOB: &str = "job";
/// Claim namespace: one `JobClosed` per job id.
pub const CLAIM_JOB_CLOSED: &str = "job-closed";
/// Claim namespace: one good outcome per (product, UID).
pub const CLAIM_GOOD: &str = "device-good";

/// Claim namespace: one `StationCertified` per station id (a station id is certified once).
pub const CLAIM_STATION: &str = "station";
/// Claim namespace: one `StationRevoked` per station id.
pub const CLAIM_STATION_REVOKED: &str = "station-revoked";

/// `StationCertified`: the HSM's station CA certified a station; what the certificate grants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StationCertified {
    /// The station id.
    pub station: StationId,
    /// The certificate serial.
    pub serial: Bytes,
    /// SHA-256 of the certificate.
    pub cert_sha256: Digest,
    /// The products it may provision.
    pub products: Vec<ProductKey>,
    /// Most devices it may have certificates issued for, in all (its ledger counter
    /// `station:<id>` holds the rest).
    pub max_devices: Option<u64>,
    /// Most devices per UTC day.
    pub max_per_day: Option<u64>,
    /// notAfter, Unix seconds.
    pub not_after: u64,
    /// When, Unix seconds.
    pub time: u64,
}

/// `StationRevoked`: the station is cut off; the HSM service refuses its next request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StationRevoked {
    /// The station id.
    pub station: StationId,
    /// Why, as the operator gave it.
    pub reason: String,
    /// When, Unix seconds.
    pub time: u64,
}

/// The largest job package a `JobCreated` record carries whole.
pub const JOB_PACKAGE_IN_RECORD: usize = 16 * 1024;

/// `JobCreated`: the job reserved `quantity` units of the product's count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCreated {
    /// The job id.
    pub job: JobId,
    /// The product key.
    pub product: ProductKey,
    /// Units reserved.
    pub quantity: u64,
    /// SHA-256 of the job package.
    pub package_sha256: Digest,
    /// When, Unix seconds.
    pub time: u64,
    /// The station that caused it, when it came through the HSM service; absent in process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub station: Option<StationId>,
    /// The signed job package itself (at most [`JOB_PACKAGE_IN_RECORD`] bytes), so that a
    /// station whose reserve answer was lost can fetch it again from the HSM service; its
    /// SHA-256 is `package_sha256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<Bytes>,
}

/// Why count was credited back to a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CreditReason {
    /// Reserved units handed to the product so that the HSM can spend them on these devices.
    Release,
    /// The job closed: its unused reservation goes back.
    Close,
}

/// `CreditBack`: `n` reserved units of the job returned to the product.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditBack {
    /// The job id.
    pub job: JobId,
    /// The product key.
    pub product: ProductKey,
    /// Units returned.
    pub n: u64,
    /// Why.
    pub reason: CreditReason,
    /// For a release: the UIDs the HSM is about to issue for (at most one batch).
    pub uids: Vec<Bytes>,
}

/// `DeviceProgrammed` (certificates written) and `DeviceLocked` (locked and verified): the two
/// records of a good device, appended together.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceGood {
    /// The job id.
    pub job: JobId,
    /// The device UID.
    pub uid: Bytes,
    /// The certificate serial.
    pub serial: Bytes,
    /// SHA-256 of the certificate written.
    pub cert_sha256: Digest,
    /// Whether the certificate was issued in an earlier attempt (a resumed device).
    pub resumed: bool,
    /// The station that caused it, when it came through the HSM service; absent in process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub station: Option<StationId>,
}

/// `DeviceFailed`: a device failed at `step`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceFailed {
    /// The job id.
    pub job: JobId,
    /// The device UID, when it was read.
    pub uid: Option<Bytes>,
    /// The step number (1 read UID … 7 verify).
    pub step: u8,
    /// The step name.
    pub step_name: String,
    /// The reason.
    pub reason: String,
    /// The certificate serial, when the device failed after its certificate was issued.
    pub serial: Option<Bytes>,
    /// Whether the device goes back for another attempt.
    pub retry: bool,
    /// The station that caused it, when it came through the HSM service; absent in process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub station: Option<StationId>,
}

/// `JobClosed`: the job's final accounting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobClosed {
    /// The job id.
    pub job: JobId,
    /// The product key.
    pub product: ProductKey,
    /// Units reserved at creation.
    pub quantity: u64,
    /// Certificates issued for the job.
    pub issued: u64,
    /// Devices good.
    pub good: u64,
    /// Devices whose certificate was issued but which never ended good.
    pub failed_after_issue: u64,
    /// Units credited back.
    pub credited: u64,
    /// When, Unix seconds.
    pub time: u64,
    /// The station that caused it, when it came through the HSM service; absent in process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub station: Option<StationId>,
}

/// Encodes a job or device record body (a CBOR map keyed by field name).
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing plain structs of strings, integers and byte strings to a Vec cannot fail.
    ciborium::into_writer(v, &mut out).ok();
    out
}

/// Decodes a job or device record body (a CBOR map keyed by field name; unknown fields are
/// ignored, as the earlier release's readers did).
///
/// # Errors
/// [`RecordError::TooLarge`] over [`BODY_MAX`], [`RecordError::Malformed`] when the body is not
/// a `T`.
pub fn decode<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, RecordError> {
    check_len(b)?;
    ciborium::from_reader(b).map_err(|e| RecordError::Malformed {
        record: short_type_name::<T>(),
        what: e.to_string(),
    })
}

/// The last path segment of a type's name, for error messages.
fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

/// The claim key of a good device: `product ‖ 0x00 ‖ uid`, the product as its `oem/product`
/// text.
pub fn good_claim(product: &ProductKey, uid: &[u8]) -> Vec<u8> {
    let mut v = product.to_string().into_bytes();
    v.push(0);
    v.extend_from_slice(uid);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobId {
        JobId::new("j1").unwrap()
    }

    fn product() -> ProductKey {
        ProductKey::parse("acme/thermo").unwrap()
    }

    fn round_trip<T>(v: &T)
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        let b = encode(v);
        assert_eq!(&decode::<T>(&b).unwrap(), v);
        for cut in 0..b.len() {
            assert!(decode::<T>(&b[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn job_created_round_trips() {
        round_trip(&JobCreated {
            job: job(),
            product: product(),
            quantity: 10,
            package_sha256: Digest([7; 32]),
            time: 1_700_000_000,
            package: None,
            station: None,
        });
    }

    #[test]
    fn credit_back_round_trips() {
        round_trip(&CreditBack {
            job: job(),
            product: product(),
            n: 3,
            reason: CreditReason::Release,
            uids: vec![Bytes(vec![1, 2]), Bytes(vec![3])],
        });
        round_trip(&CreditBack {
            job: job(),
            product: product(),
            n: 0,
            reason: CreditReason::Close,
            uids: vec![],
        });
    }

    #[test]
    fn device_records_round_trip() {
        round_trip(&DeviceGood {
            job: job(),
            uid: Bytes(vec![0xab; 8]),
            serial: Bytes(vec![1, 2, 3]),
            cert_sha256: Digest([9; 32]),
            resumed: true,
            station: None,
        });
        round_trip(&DeviceFailed {
            job: job(),
            uid: Some(Bytes(vec![1])),
            step: 4,
            step_name: "issue".into(),
            reason: "socket lost power".into(),
            serial: None,
            retry: false,
            station: None,
        });
        round_trip(&DeviceFailed {
            job: job(),
            uid: None,
            step: 1,
            step_name: "read-uid".into(),
            reason: "no answer".into(),
            serial: Some(Bytes(vec![5])),
            retry: true,
            station: None,
        });
    }

    #[test]
    fn job_closed_round_trips() {
        round_trip(&JobClosed {
            job: job(),
            product: product(),
            quantity: 10,
            issued: 8,
            good: 7,
            failed_after_issue: 1,
            credited: 2,
            time: 1_700_000_001,
            station: None,
        });
    }

    #[test]
    fn a_digest_of_another_length_is_refused() {
        #[derive(Serialize)]
        struct Short {
            job: String,
            product: String,
            quantity: u64,
            package_sha256: Bytes,
            time: u64,
        }
        let b = encode(&Short {
            job: "j".into(),
            product: "a/p".into(),
            quantity: 1,
            package_sha256: Bytes(vec![0; 31]),
            time: 0,
        });
        assert!(matches!(
            decode::<JobCreated>(&b),
            Err(RecordError::Malformed { .. })
        ));
    }

    #[test]
    fn typed_ids_encode_as_the_text_of_the_earlier_release() {
        // The earlier release's `JobClosed`, its ids plain strings.
        #[derive(Serialize)]
        struct Earlier {
            job: String,
            product: String,
            quantity: u64,
            issued: u64,
            good: u64,
            failed_after_issue: u64,
            credited: u64,
            time: u64,
        }
        let typed = JobClosed {
            job: job(),
            product: product(),
            quantity: 10,
            issued: 8,
            good: 7,
            failed_after_issue: 1,
            credited: 2,
            time: 1_700_000_001,
            station: None,
        };
        let earlier = Earlier {
            job: "j1".into(),
            product: "acme/thermo".into(),
            quantity: 10,
            issued: 8,
            good: 7,
            failed_after_issue: 1,
            credited: 2,
            time: 1_700_000_001,
        };
        assert_eq!(encode(&typed), encode(&earlier));
        assert_eq!(good_claim(&product(), &[1, 2]), b"acme/thermo\x00\x01\x02");
    }

    #[test]
    fn an_id_that_does_not_parse_is_refused() {
        #[derive(Serialize)]
        struct Loose {
            job: String,
            uid: Option<Bytes>,
            step: u8,
            step_name: String,
            reason: String,
            serial: Option<Bytes>,
            retry: bool,
        }
        let b = encode(&Loose {
            job: "job 1".into(),
            uid: None,
            step: 1,
            step_name: "read-uid".into(),
            reason: "no answer".into(),
            serial: None,
            retry: true,
        });
        assert!(matches!(
            decode::<DeviceFailed>(&b),
            Err(RecordError::Malformed { .. })
        ));
    }

    #[test]
    fn an_oversized_body_is_refused() {
        let b = vec![0u8; BODY_MAX + 1];
        assert!(matches!(
            decode::<JobClosed>(&b),
            Err(RecordError::TooLarge { .. })
        ));
        assert!(matches!(
            ProductDef::decode(&b),
            Err(RecordError::TooLarge { .. })
        ));
    }
}
