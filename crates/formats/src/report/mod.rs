//! The production report (`docs/report.md`): its wire format, written by the HSM and read by the
//! OEM. What an HSM issued for one product, streamed record by record and signed by the HSM
//! identity, and the OEM-side verification against its orders ([`verify_report`]).
//!
//! A report is a CBOR sequence (RFC 8742): a header, one item per ledger record from 1 to the
//! head, and a signed trailer. The product's own records are in full (body, effects, stored hash)
//! and each certificate issuance carries its certificate; records of other products carry only
//! their sequence number and hashes, so the chain can be followed without revealing another
//! OEM's production. Nothing is held in memory per record but the duplicate-detection sets.
//!
//! The HSM walks its ledger and signs (`trustfab_hsm::Hsm::report`) with the encoders here:
//! [`ReportWriter`], [`header`], [`own_item`], [`foreign_item`], [`signed_message`], [`trailer`].

use std::collections::HashMap;
use std::io::Write;

use aws_lc_rs::digest::{Context, SHA256};
use ciborium::Value;
use trustfab_ledger::{CounterOp, Kind, Record};
use trustfab_pki::{HsmCertificates, PublicKey};
use trustfab_types::{JobId, ProductKey, UnixTime};

use crate::records::{self, DeviceFailed, DeviceGood, IssuanceRecord, PackageImported, ProductDef};

mod verify;

pub use verify::verify_report;

/// The report format version this build writes and reads.
pub const REPORT_VERSION: u64 = 1;
/// The largest single item of a report (a record with its certificate, or the header).
pub const ITEM_MAX: u64 = 256 * 1024;
const SIGNATURE_LABEL: &[u8] = b"trustfab-report-v1";

/// Why a report was refused by the OEM. Each variant names what failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// An item does not decode.
    #[error("report item {index}: {what}")]
    Format {
        /// 0-based item position in the stream.
        index: u64,
        /// What is wrong.
        what: String,
    },
    /// The report's version is not one this build reads.
    #[error("report version {found} is not supported; this build reads version {REPORT_VERSION}")]
    Version {
        /// The version found.
        found: u64,
    },
    /// The HSM identity does not chain to the vendor root.
    #[error("the HSM identity does not validate to the vendor root: {0}")]
    Identity(trustfab_pki::Error),
    /// The report is for another product or OEM root than the orders.
    #[error("the report does not match the orders: {0}")]
    Order(String),
    /// A record breaks the chain: removed, changed, reordered or inserted.
    #[error("ledger record {seq}: {what}")]
    Record {
        /// The first bad record.
        seq: u64,
        /// What is wrong with it.
        what: String,
    },
    /// A certificate in the report is wrong.
    #[error("ledger record {seq}: certificate: {what}")]
    Certificate {
        /// The record that carries it.
        seq: u64,
        /// What is wrong.
        what: String,
    },
    /// The trailer's signature does not verify under the HSM identity key.
    #[error("report signature does not verify under the HSM identity")]
    Signature,
    /// The totals do not add up.
    #[error("totals: {0}")]
    Totals(String),
    /// Reading or writing failed.
    #[error("report I/O: {0}")]
    Io(#[from] std::io::Error),
}

fn int(n: u64) -> Value {
    Value::Integer(n.into())
}

/// Writes a report's items while hashing every byte (the digest [`signed_message`] covers).
pub struct ReportWriter<W: Write> {
    out: W,
    digest: Context,
}

impl<W: Write> ReportWriter<W> {
    /// A writer over `out`.
    pub fn new(out: W) -> Self {
        Self {
            out,
            digest: Context::new(&SHA256),
        }
    }

    /// Writes one item (the header or a record's item) and hashes it.
    ///
    /// # Errors
    /// An I/O error, or [`ReportError::Format`] when the item does not encode.
    pub fn item(&mut self, v: &Value) -> Result<(), ReportError> {
        let mut buf = Vec::new();
        ciborium::into_writer(v, &mut buf).map_err(|e| ReportError::Format {
            index: 0,
            what: e.to_string(),
        })?;
        self.digest.update(&buf);
        self.out.write_all(&buf)?;
        Ok(())
    }

    /// SHA-256 of every item written so far.
    pub fn digest(&self) -> [u8; 32] {
        let mut d = [0u8; 32];
        d.copy_from_slice(self.digest.clone().finish().as_ref());
        d
    }

    /// Writes the trailer (not hashed: it carries the signature over the digest) and flushes.
    ///
    /// # Errors
    /// An I/O error, or [`ReportError::Format`] when the trailer does not encode.
    pub fn finish(mut self, trailer: &Value) -> Result<W, ReportError> {
        let mut buf = Vec::new();
        ciborium::into_writer(trailer, &mut buf).map_err(|e| ReportError::Format {
            index: 0,
            what: e.to_string(),
        })?;
        self.out.write_all(&buf)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// The message the HSM identity signs: the digest of every item before the trailer and the
/// totals the trailer states.
pub fn signed_message(
    digest: &[u8; 32],
    head_seq: u64,
    head_hash: &[u8],
    totals: &Totals,
) -> Vec<u8> {
    let mut m = SIGNATURE_LABEL.to_vec();
    m.extend_from_slice(digest);
    m.extend_from_slice(&head_seq.to_be_bytes());
    m.extend_from_slice(head_hash);
    for n in [totals.ordered, totals.issued, totals.remaining] {
        m.extend_from_slice(&n.to_be_bytes());
    }
    m
}

/// A product's counter as the HSM states it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Created plus topped up.
    pub ordered: u64,
    /// Spent.
    pub issued: u64,
    /// Left.
    pub remaining: u64,
}

impl Totals {
    /// Applies the counter operations an append carried (its first record's effects) for
    /// `product` (the counter named by its `oem/product` text): create and top-up add to
    /// `ordered`, spend adds to `issued`, credit takes back.
    ///
    /// # Errors
    /// What is wrong, when the effects do not decode or a total would overflow.
    pub fn apply(&mut self, effects: &[u8], product: &ProductKey) -> Result<(), String> {
        let (ops, _) = trustfab_ledger::decode_effects(effects).map_err(|e| e.to_string())?;
        let counter = product.to_string();
        for op in ops {
            if op.product() != counter {
                continue;
            }
            match op {
                CounterOp::Create { count: n, .. } | CounterOp::TopUp { n, .. } => {
                    self.ordered = self.ordered.checked_add(n).ok_or("ordered overflows")?;
                }
                CounterOp::Spend { n, .. } => {
                    self.issued = self.issued.checked_add(n).ok_or("issued overflows")?;
                }
                CounterOp::Credit { n, .. } => {
                    self.issued = self
                        .issued
                        .checked_sub(n)
                        .ok_or("credit exceeds what was spent")?;
                }
            }
        }
        self.remaining = self.ordered.saturating_sub(self.issued);
        Ok(())
    }
}

/// Which product a record concerns, decoded from its typed body. Records of the HSM name it; the
/// job records name it and their job, recorded in `jobs`; device records name their job, whose
/// `JobCreated` (seen earlier in the chain, recorded in `jobs`) names it. `None` for a
/// checkpoint, an unknown job, or a body that does not decode.
pub fn product_of(r: &Record, jobs: &mut HashMap<JobId, ProductKey>) -> Option<ProductKey> {
    let job_product = |jobs: &mut HashMap<JobId, ProductKey>, job: JobId, product: ProductKey| {
        jobs.insert(job, product.clone());
        Some(product)
    };
    match r.kind {
        Kind::CertificateIssued => IssuanceRecord::decode(&r.body).ok().map(|x| x.product),
        Kind::ProductCreated => ProductDef::decode(&r.body).ok().map(|d| d.product),
        Kind::PackageImported | Kind::ProductToppedUp => {
            PackageImported::decode(&r.body).ok().map(|x| x.product)
        }
        Kind::JobCreated => {
            let b: records::JobCreated = records::decode(&r.body).ok()?;
            job_product(jobs, b.job, b.product)
        }
        Kind::JobClosed => {
            let b: records::JobClosed = records::decode(&r.body).ok()?;
            job_product(jobs, b.job, b.product)
        }
        Kind::CreditBack => {
            let b: records::CreditBack = records::decode(&r.body).ok()?;
            job_product(jobs, b.job, b.product)
        }
        Kind::DeviceProgrammed | Kind::DeviceLocked => {
            let b: DeviceGood = records::decode(&r.body).ok()?;
            jobs.get(&b.job).cloned()
        }
        Kind::DeviceFailed => {
            let b: DeviceFailed = records::decode(&r.body).ok()?;
            jobs.get(&b.job).cloned()
        }
        // `CountReserved` is never written; a checkpoint belongs to every product.
        _ => None,
    }
}

/// The header item: version, product, the HSM's certificates, time, the OEM root and the
/// device CA.
pub fn header(
    product: &ProductKey,
    certs: &HsmCertificates,
    def: &ProductDef,
    now: UnixTime,
) -> Value {
    Value::Map(vec![
        (int(0), int(REPORT_VERSION)),
        (int(1), Value::Text(product.to_string())),
        (int(2), Value::Bytes(certs.identity.clone())),
        (int(3), Value::Bytes(certs.key_transport.clone())),
        (int(4), int(now.0)),
        (int(5), Value::Bytes(def.root_cert.clone())),
        (
            int(6),
            def.device_ca_cert.clone().map_or(Value::Null, Value::Bytes),
        ),
    ])
}

/// The item of one of the product's own records: in full, with its certificate if it issued
/// one.
pub fn own_item(r: &Record, cert: Option<Vec<u8>>) -> Value {
    let mut m = vec![
        (int(0), int(r.seq)),
        (int(1), int(u64::from(r.kind.code()))),
        (int(2), Value::Bytes(r.body.clone())),
        (int(3), Value::Bytes(r.effects.clone())),
        (int(4), Value::Bytes(r.prev_hash.to_vec())),
        (int(5), Value::Bytes(r.hash.to_vec())),
    ];
    if let Some(c) = cert {
        m.push((int(6), Value::Bytes(c)));
    }
    Value::Map(m)
}

/// The item of another product's record: its sequence number and hashes only.
pub fn foreign_item(r: &Record) -> Value {
    Value::Map(vec![
        (int(0), int(r.seq)),
        (int(4), Value::Bytes(r.prev_hash.to_vec())),
        (int(5), Value::Bytes(r.hash.to_vec())),
    ])
}

/// The trailer: the head covered, the totals and the identity's signature over
/// [`signed_message`].
pub fn trailer(head_seq: u64, head_hash: &[u8], totals: &Totals, signature: Vec<u8>) -> Value {
    Value::Map(vec![
        (int(0), int(head_seq)),
        (int(1), Value::Bytes(head_hash.to_vec())),
        (int(2), int(totals.ordered)),
        (int(3), int(totals.issued)),
        (int(4), int(totals.remaining)),
        (int(9), Value::Bytes(signature)),
    ])
}

/// What a verified report says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportSummary {
    /// The HSM that signed it.
    pub hsm_id: String,
    /// The product.
    pub product: ProductKey,
    /// Ledger records walked.
    pub records: u64,
    /// The product's own records among them.
    pub own_records: u64,
    /// Certificates issued, each validated.
    pub certificates: u64,
    /// Packages imported for the product.
    pub packages: u64,
    /// The counter the HSM signed, equal to the one replayed from the records.
    pub totals: Totals,
    /// Units spent but not yet issued as certificates (reserved by open jobs).
    pub reserved: u64,
    /// Sum of the orders' counts.
    pub ordered_by_oem: u64,
    /// Certificates per station that asked for them through the HSM service, by station id;
    /// those issued in process (no station named) are under `None`.
    pub by_station: std::collections::BTreeMap<Option<trustfab_types::StationId>, u64>,
}

/// Verifies an ECDSA signature (DER) by `key` over `message`: the trailer's, and the ledger's
/// checkpoints'.
///
/// # Errors
/// [`ReportError::Signature`] when it does not verify.
pub fn verify_signature(key: &PublicKey, message: &[u8], der: &[u8]) -> Result<(), ReportError> {
    aws_lc_rs::signature::UnparsedPublicKey::new(key.curve().verify_alg(), key.point())
        .verify(message, der)
        .map_err(|_| ReportError::Signature)
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{encode, Bytes, Digest, JobClosed, JobCreated};

    fn key(s: &str) -> ProductKey {
        ProductKey::parse(s).unwrap()
    }

    fn record(kind: Kind, body: Vec<u8>) -> Record {
        Record {
            seq: 1,
            kind,
            body,
            effects: Vec::new(),
            prev_hash: [0; 32],
            hash: [0; 32],
        }
    }

    #[test]
    fn a_record_names_its_product_through_its_typed_body() {
        let mut jobs = HashMap::new();
        let created = encode(&JobCreated {
            job: JobId::new("j1").unwrap(),
            product: key("acme/thermo"),
            quantity: 5,
            package_sha256: Digest([1; 32]),
            time: 0,
            package: None,
            station: None,
        });
        let good = encode(&DeviceGood {
            job: JobId::new("j1").unwrap(),
            uid: Bytes(vec![1]),
            serial: Bytes(vec![2]),
            cert_sha256: Digest([3; 32]),
            resumed: false,
            station: None,
        });
        // A device record of a job not seen yet belongs to no product.
        let r = record(Kind::DeviceLocked, good.clone());
        assert_eq!(product_of(&r, &mut jobs), None);
        let r = record(Kind::JobCreated, created);
        assert_eq!(product_of(&r, &mut jobs), Some(key("acme/thermo")));
        for kind in [Kind::DeviceProgrammed, Kind::DeviceLocked] {
            let r = record(kind, good.clone());
            assert_eq!(product_of(&r, &mut jobs), Some(key("acme/thermo")));
        }
        let closed = encode(&JobClosed {
            job: JobId::new("j2").unwrap(),
            product: key("acme/gateway"),
            quantity: 1,
            issued: 0,
            good: 0,
            failed_after_issue: 0,
            credited: 1,
            time: 0,
            station: None,
        });
        let r = record(Kind::JobClosed, closed);
        assert_eq!(product_of(&r, &mut jobs), Some(key("acme/gateway")));
        let imported = PackageImported {
            package_id: [0; 16],
            hsm_fingerprint: trustfab_types::Fingerprint::new([0; 32]),
            product: key("acme/thermo"),
            count: 1,
            time: UnixTime(0),
        }
        .encode();
        let r = record(Kind::ProductToppedUp, imported);
        assert_eq!(product_of(&r, &mut jobs), Some(key("acme/thermo")));
        // A body that does not decode, and a checkpoint, name no product.
        let r = record(Kind::JobCreated, b"\xa1\x67product\x61x".to_vec());
        assert_eq!(product_of(&r, &mut jobs), None);
        assert_eq!(
            product_of(&record(Kind::Checkpoint, Vec::new()), &mut jobs),
            None
        );
    }

    #[test]
    fn the_signed_message_is_label_digest_head_and_totals() {
        let totals = Totals {
            ordered: 3,
            issued: 2,
            remaining: 1,
        };
        let m = signed_message(&[7; 32], 9, &[8; 32], &totals);
        assert_eq!(m.len(), SIGNATURE_LABEL.len() + 32 + 8 + 32 + 24);
        assert!(m.starts_with(b"trustfab-report-v1"));
        assert!(m.ends_with(&[0, 0, 0, 0, 0, 0, 0, 1]));
    }
}
