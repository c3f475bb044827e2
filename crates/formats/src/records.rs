//! The bodies of the ledger records the station writes (`docs/job.md`, "Ledger records"): CBOR
//! maps of ids, counts, public data and reasons; never a secret.

use serde::{Deserialize, Serialize};

pub use crate::job::serde_bytes_vec::Bytes;

/// Claim namespace: one `JobCreated` per job id.
pub const CLAIM_JOB: &str = "job";
/// Claim namespace: one `JobClosed` per job id.
pub const CLAIM_JOB_CLOSED: &str = "job-closed";
/// Claim namespace: one good outcome per (product, UID).
pub const CLAIM_GOOD: &str = "device-good";

/// `JobCreated`: the job reserved `quantity` units of the product's count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCreated {
    /// The job id.
    pub job: String,
    /// The product key.
    pub product: String,
    /// Units reserved.
    pub quantity: u64,
    /// SHA-256 of the job package.
    pub package_sha256: Bytes,
    /// When, Unix seconds.
    pub time: u64,
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
    pub job: String,
    /// The product key.
    pub product: String,
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
    pub job: String,
    /// The device UID.
    pub uid: Bytes,
    /// The certificate serial.
    pub serial: Bytes,
    /// SHA-256 of the certificate written.
    pub cert_sha256: Bytes,
    /// Whether the certificate was issued in an earlier attempt (a resumed device).
    pub resumed: bool,
}

/// `DeviceFailed`: a device failed at `step`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceFailed {
    /// The job id.
    pub job: String,
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
}

/// `JobClosed`: the job's final accounting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobClosed {
    /// The job id.
    pub job: String,
    /// The product key.
    pub product: String,
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
}

/// Encodes a record body.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing plain structs of strings, integers and byte strings to a Vec cannot fail.
    ciborium::into_writer(v, &mut out).ok();
    out
}

/// Decodes a record body.
pub fn decode<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Option<T> {
    ciborium::from_reader(b).ok()
}

/// The claim key of a good device: `product ‖ 0x00 ‖ uid`.
pub fn good_claim(product: &str, uid: &[u8]) -> Vec<u8> {
    let mut v = product.as_bytes().to_vec();
    v.push(0);
    v.extend_from_slice(uid);
    v
}
