//! The service's requests and responses (`docs/service.md`, `docs/service-openapi.json`): JSON
//! objects that refuse unknown fields, bytes as lowercase hex (ids, digests, points) or standard
//! base64 (DER, packages), every request under [`REQUEST_MAX`] bytes. Conversions to and from
//! the HSM's types live here, so the server and the client read the wire one way.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use trustfab_formats::records::{self, DeviceFailed, DeviceGood, JobClosed};
use trustfab_formats::JobSpec;
use trustfab_hsm::{DeviceKey, DeviceOutcome, Issued, JobStatus, ProductFirmware, ProductStatus};
use trustfab_pki::PublicKey;
use trustfab_types::{DeviceUid, HsmId, JobId, ProductKey, Serial, StationId};

/// The API version: every path starts with `/v1/`.
pub const API_VERSION: &str = "v1";
/// The largest request body, in bytes: an issuance batch of [`trustfab_hsm::BATCH_MAX`] devices
/// fits with room to spare.
pub const REQUEST_MAX: usize = 2 * 1024 * 1024;
/// The largest response body a client reads, in bytes (a job's status lists its UIDs).
pub const RESPONSE_MAX: usize = 256 * 1024 * 1024;
/// The largest issuance batch the service takes in one request.
pub const BATCH_MAX: usize = trustfab_hsm::BATCH_MAX;
/// The largest number of device outcomes in one request.
pub const OUTCOMES_MAX: usize = 4096;

/// Bytes as lowercase hexadecimal text.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Hex(pub Vec<u8>);

impl Serialize for Hex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(&s)
            .map(Self)
            .map_err(|_| serde::de::Error::custom("expected hexadecimal text"))
    }
}

/// Bytes as standard base64 text (with padding).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct B64(pub Vec<u8>);

impl Serialize for B64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for B64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD
            .decode(s.as_bytes())
            .map(Self)
            .map_err(|_| serde::de::Error::custom("expected standard base64 text"))
    }
}

/// Every refusal: a stable code (`docs/service.md`, "Errors"), a message for people, and the
/// numbers a client acts on when the code has them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// One refusal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorDetail {
    /// The stable code.
    pub code: String,
    /// What was wrong.
    pub message: String,
    /// The job, for job errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobId>,
    /// The ledger record the refusal names (an existing job, a close).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Units left, for the exhausted codes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u64>,
    /// Units asked, for the exhausted codes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked: Option<u64>,
    /// The device (UID in hex) a `bad_device` refusal names: a station leaves it out of the
    /// batch and asks again for the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// `GET /v1/hsm`: the HSM behind the service and the caller as its certificate names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmInfo {
    /// The API version, [`API_VERSION`].
    pub api: String,
    /// The HSM id.
    pub hsm_id: HsmId,
    /// The HSM identity key's uncompressed point: job packages are signed with it.
    pub identity_point: Hex,
    /// The caller.
    pub station: StationId,
    /// The products the caller may provision.
    pub products: Vec<ProductKey>,
    /// The caller's ceiling of devices, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_devices: Option<u64>,
}

/// A product and its counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireProduct {
    /// The product.
    pub product: ProductKey,
    /// Units ordered (created plus topped up).
    pub ordered: u64,
    /// Units spent.
    pub issued: u64,
    /// Units left.
    pub remaining: u64,
}

impl From<ProductStatus> for WireProduct {
    fn from(p: ProductStatus) -> Self {
        Self {
            product: p.product,
            ordered: p.ordered,
            issued: p.issued,
            remaining: p.remaining,
        }
    }
}

impl From<WireProduct> for ProductStatus {
    fn from(p: WireProduct) -> Self {
        Self {
            product: p.product,
            ordered: p.ordered,
            issued: p.issued,
            remaining: p.remaining,
        }
    }
}

/// `GET /v1/products`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductList {
    /// The products the caller may provision, with their counts.
    pub products: Vec<WireProduct>,
}

/// `GET /v1/products/{oem}/{product}/chain`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chain {
    /// The OEM root certificate, DER.
    pub root: B64,
    /// The device CA certificate, DER, when the root does not sign devices itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_ca: Option<B64>,
}

/// `GET /v1/products/{oem}/{product}/firmware`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Firmware {
    /// The product's firmware, when its package set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<WireFirmware>,
}

/// A product's firmware.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireFirmware {
    /// The device family.
    pub family: String,
    /// SHA-256 of the boot key's SubjectPublicKeyInfo.
    pub boot_key_hash: Hex,
    /// The family key's uncompressed point, when images are encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_key: Option<Hex>,
}

impl From<ProductFirmware> for WireFirmware {
    fn from(f: ProductFirmware) -> Self {
        Self {
            family: f.family,
            boot_key_hash: Hex(f.boot_key_hash.to_vec()),
            family_key: f.family_key.map(Hex),
        }
    }
}

impl TryFrom<WireFirmware> for ProductFirmware {
    type Error = String;
    fn try_from(f: WireFirmware) -> Result<Self, String> {
        Ok(Self {
            family: f.family,
            boot_key_hash: f
                .boot_key_hash
                .0
                .try_into()
                .map_err(|_| "boot_key_hash is not 32 bytes".to_owned())?,
            family_key: f.family_key.map(|h| h.0),
        })
    }
}

/// `POST /v1/jobs`: reserve a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReserveRequest {
    /// The job's contents (`docs/job.md`); `hsm_id` must be the service's.
    pub spec: JobSpec,
}

/// `POST /v1/jobs/attach`: the reservation of an existing job from its package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    /// The job package.
    pub package: B64,
}

/// A reservation: the signed job package and where the ledger created the job. The service
/// keeps the job attached; a client sends its package again after `job_not_attached`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireReservation {
    /// The job id.
    pub job_id: JobId,
    /// The job package, signed by the HSM identity.
    pub package: B64,
    /// The `JobCreated` record.
    pub created_seq: u64,
    /// Made by an earlier release (it can only be closed).
    pub legacy: bool,
}

/// One device of an issuance batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireDevice {
    /// The device UID.
    pub uid: Hex,
    /// The device public key, SubjectPublicKeyInfo DER.
    pub public_key: B64,
}

impl From<&DeviceKey> for WireDevice {
    fn from(d: &DeviceKey) -> Self {
        Self {
            uid: Hex(d.uid.as_bytes().to_vec()),
            public_key: B64(d.public_key.to_spki_der()),
        }
    }
}

impl TryFrom<&WireDevice> for DeviceKey {
    type Error = String;
    fn try_from(d: &WireDevice) -> Result<Self, String> {
        let uid = DeviceUid::new(&d.uid.0).map_err(|e| format!("uid: {e}"))?;
        let public_key = PublicKey::from_spki_der(&d.public_key.0)
            .map_err(|e| format!("device {}: public_key: {e}", uid.to_hex()))?;
        Ok(Self { uid, public_key })
    }
}

/// `POST /v1/jobs/{job}/issue`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueRequest {
    /// A batch id the client picks at random (16 bytes): a retry of the batch sends the same
    /// id and the same devices; the same id with other devices is refused (`batch_reused`).
    pub batch: Hex,
    /// The devices, at most [`BATCH_MAX`].
    pub devices: Vec<WireDevice>,
}

/// One issued certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireIssued {
    /// The device UID.
    pub uid: Hex,
    /// The certificate serial, big-endian.
    pub serial: Hex,
    /// The certificate, DER.
    pub cert: B64,
    /// Whether it is the certificate recorded for an earlier issuance to the UID.
    pub reissued: bool,
    /// The job that paid for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobId>,
}

impl From<Issued> for WireIssued {
    fn from(i: Issued) -> Self {
        Self {
            uid: Hex(i.uid.as_bytes().to_vec()),
            serial: Hex(i.serial.as_be_bytes().to_vec()),
            cert: B64(i.cert),
            reissued: i.reissued,
            job: i.job,
        }
    }
}

impl TryFrom<WireIssued> for Issued {
    type Error = String;
    fn try_from(i: WireIssued) -> Result<Self, String> {
        Ok(Self {
            uid: DeviceUid::new(&i.uid.0).map_err(|e| format!("uid: {e}"))?,
            serial: Serial::from_be_bytes(&i.serial.0).map_err(|e| format!("serial: {e}"))?,
            cert: i.cert.0,
            reissued: i.reissued,
            job: i.job,
        })
    }
}

/// The answer to an issuance batch: one certificate per device, in the request's order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueResponse {
    /// The certificates.
    pub issued: Vec<WireIssued>,
}

/// `POST /v1/jobs/{job}/certificate` and `/family-key`: one device of the job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UidRequest {
    /// The device UID.
    pub uid: Hex,
}

/// The certificate recorded for a device, if any.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateResponse {
    /// The certificate, rebuilt from its issuance record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued: Option<WireIssued>,
}

/// `POST /v1/jobs/{job}/certificates`: several devices of the job at once (a station's sockets
/// ask before they make a key; the client sends their questions together).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UidsRequest {
    /// The device UIDs, at most [`BATCH_MAX`].
    pub uids: Vec<Hex>,
}

/// The certificates recorded for those of the UIDs that have one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificatesResponse {
    /// The certificates, rebuilt from their issuance records; a UID without one is absent.
    pub issued: Vec<WireIssued>,
}

/// The product's family key wrapped for one device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FamilyKeyResponse {
    /// The wrapped key (`docs/firmware.md`).
    pub wrapped: B64,
}

/// One device outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "lowercase", deny_unknown_fields)]
pub enum WireOutcome {
    /// Programmed, locked and verified.
    Good {
        /// The device UID.
        uid: Hex,
        /// The certificate serial.
        serial: Hex,
        /// SHA-256 of the certificate written.
        cert_sha256: Hex,
        /// The certificate was issued in an earlier attempt.
        resumed: bool,
    },
    /// Failed at a step.
    Failed {
        /// The device UID, when read.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uid: Option<Hex>,
        /// The step (1 read UID … 7 verify).
        step: u8,
        /// The step's name.
        step_name: String,
        /// Why.
        reason: String,
        /// The certificate serial, when issued.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        serial: Option<Hex>,
        /// The device goes back for another attempt.
        retry: bool,
    },
}

/// The most bytes of a failure's step name and reason.
const TEXT_MAX: usize = 1024;

impl From<&DeviceOutcome> for WireOutcome {
    fn from(o: &DeviceOutcome) -> Self {
        match o {
            DeviceOutcome::Good(g) => Self::Good {
                uid: Hex(g.uid.0.clone()),
                serial: Hex(g.serial.0.clone()),
                cert_sha256: Hex(g.cert_sha256.0.to_vec()),
                resumed: g.resumed,
            },
            DeviceOutcome::Failed(f) => Self::Failed {
                uid: f.uid.as_ref().map(|u| Hex(u.0.clone())),
                step: f.step,
                step_name: f.step_name.clone(),
                reason: f.reason.clone(),
                serial: f.serial.as_ref().map(|s| Hex(s.0.clone())),
                retry: f.retry,
            },
        }
    }
}

impl WireOutcome {
    /// The outcome for `job`, checked: a UID is a UID, a digest 32 bytes, texts bounded.
    ///
    /// # Errors
    /// Text naming the field that is wrong.
    pub fn into_outcome(self, job: &JobId) -> Result<DeviceOutcome, String> {
        let uid_of = |h: &Hex| {
            DeviceUid::new(&h.0)
                .map(|_| records::Bytes(h.0.clone()))
                .map_err(|e| format!("uid: {e}"))
        };
        let serial_of = |h: &Hex| {
            Serial::from_be_bytes(&h.0)
                .map(|_| records::Bytes(h.0.clone()))
                .map_err(|e| format!("serial: {e}"))
        };
        Ok(match self {
            Self::Good {
                uid,
                serial,
                cert_sha256,
                resumed,
            } => DeviceOutcome::Good(DeviceGood {
                job: job.clone(),
                uid: uid_of(&uid)?,
                serial: serial_of(&serial)?,
                cert_sha256: records::Digest(
                    cert_sha256
                        .0
                        .try_into()
                        .map_err(|_| "cert_sha256 is not 32 bytes".to_owned())?,
                ),
                resumed,
                station: None,
            }),
            Self::Failed {
                uid,
                step,
                step_name,
                reason,
                serial,
                retry,
            } => {
                if step_name.len() > TEXT_MAX || reason.len() > TEXT_MAX {
                    return Err(format!("step_name and reason are at most {TEXT_MAX} bytes"));
                }
                DeviceOutcome::Failed(DeviceFailed {
                    job: job.clone(),
                    uid: uid.as_ref().map(uid_of).transpose()?,
                    step,
                    step_name,
                    reason,
                    serial: serial.as_ref().map(serial_of).transpose()?,
                    retry,
                    station: None,
                })
            }
        })
    }
}

/// `POST /v1/jobs/{job}/outcomes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomesRequest {
    /// At most [`OUTCOMES_MAX`] outcomes.
    pub outcomes: Vec<WireOutcome>,
}

/// `GET /v1/jobs/{job}/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireStatus {
    /// The `JobCreated` record.
    pub created_seq: u64,
    /// The `JobClosed` record, once closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_seq: Option<u64>,
    /// Units reserved.
    pub quantity: u64,
    /// Units the reservation has left.
    pub remaining: u64,
    /// UIDs with a certificate.
    pub issued: Vec<Hex>,
    /// UIDs that ended good.
    pub good: Vec<Hex>,
    /// Failed attempts recorded.
    pub failures: u64,
}

impl From<JobStatus> for WireStatus {
    fn from(s: JobStatus) -> Self {
        let mut issued: Vec<Hex> = s.issued.into_iter().map(Hex).collect();
        let mut good: Vec<Hex> = s.good.into_iter().map(Hex).collect();
        issued.sort_by(|a, b| a.0.cmp(&b.0));
        good.sort_by(|a, b| a.0.cmp(&b.0));
        Self {
            created_seq: s.created_seq,
            closed_seq: s.closed_seq,
            quantity: s.quantity,
            remaining: s.remaining,
            issued,
            good,
            failures: s.failures,
        }
    }
}

impl From<WireStatus> for JobStatus {
    fn from(s: WireStatus) -> Self {
        Self {
            created_seq: s.created_seq,
            closed_seq: s.closed_seq,
            quantity: s.quantity,
            remaining: s.remaining,
            issued: s.issued.into_iter().map(|h| h.0).collect(),
            good: s.good.into_iter().map(|h| h.0).collect(),
            failures: s.failures,
        }
    }
}

/// `POST /v1/jobs/{job}/close`: the job's final accounting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloseResponse {
    /// The `JobClosed` body (`docs/job.md`).
    pub closed: JobClosed,
}

/// `GET /v1/health` and `/v1/ready`, and the answer to outcomes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// `ok`, `ready`, `draining`, `unavailable`, or `recorded` (outcomes).
    pub status: String,
}

impl Health {
    /// The answer with `status`.
    pub fn of(status: &str) -> Self {
        Self {
            status: status.into(),
        }
    }
}

/// Parses a request body: size-limited, and the error names the field that is wrong.
///
/// # Errors
/// Text for a `bad_request` or `too_large` refusal.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    if body.len() > REQUEST_MAX {
        return Err(format!(
            "request body is {} bytes, the limit is {REQUEST_MAX}",
            body.len()
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })
}
