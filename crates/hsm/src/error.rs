//! One error enum per operation, each naming what was refused and why.

use trustfab_types::{Fingerprint, HsmId, JobId, OemId, ProductKey, UnixTime};

/// Why `init`, `open` or identity operations failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// The token has no identity key: run `hsm init` first.
    #[error("this token holds no HSM identity (run `trustfab hsm init`)")]
    NotInitialised,
    /// The token already holds an identity.
    #[error("this token already holds an HSM identity")]
    AlreadyInitialised,
    /// The certificates given are not for this HSM's keys.
    #[error("the certificates are for another HSM: {0}")]
    WrongCertificates(String),
    /// A token error.
    #[error(transparent)]
    Token(#[from] trustfab_token::Error),
    /// A PKI error.
    #[error(transparent)]
    Pki(#[from] trustfab_pki::Error),
    /// The ledger does not reach the head this HSM anchored in its token: deleted, cut short,
    /// rolled back or replaced.
    #[error(transparent)]
    Anchor(#[from] AnchorError),
}

/// Why the ledger does not match the HSM's rollback anchor, or the anchor could not be kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnchorError {
    /// The store ends before the record the HSM anchored (deleted, cut short, rolled back).
    #[error("ledger is behind the HSM: record {expected} expected, the store's head is {head}")]
    Behind {
        /// The anchored seq.
        expected: u64,
        /// The store's head seq.
        head: u64,
    },
    /// The store holds another record at the anchored seq (another ledger).
    #[error("ledger record {seq} differs from the one the HSM anchored")]
    Forked {
        /// The anchored seq.
        seq: u64,
    },
    /// An append got a seq the HSM had anchored already: the store was rolled back under it.
    #[error("ledger is behind the HSM: it appended record {seq}, the HSM had anchored record {anchored} already (the store was rolled back); this HSM appends and issues nothing more")]
    RolledBack {
        /// The first seq the append got.
        seq: u64,
        /// The seq anchored before the append.
        anchored: u64,
    },
    /// Refused because a rollback was seen earlier in this process.
    #[error("refused: the ledger was rolled back under this HSM (record {seq} appended, record {anchored} anchored); reopen it against the right ledger")]
    Stopped {
        /// The first seq the rolled-back append got.
        seq: u64,
        /// The seq anchored before it.
        anchored: u64,
    },
    /// The token's anchor value is not one this release writes.
    #[error("the HSM's ledger anchor in the token does not decode")]
    Malformed,
    /// A token error reading or writing the anchor.
    #[error("the HSM's ledger anchor: {0}")]
    Token(trustfab_token::Error),
    /// A ledger error reading the head or the anchored record.
    #[error("checking the ledger against the HSM's anchor: {0}")]
    Ledger(trustfab_ledger::Error),
    /// A product definition in the store is not the one this HSM imported: its SHA-256 differs
    /// from the digest the HSM keeps for it in the token (its template, CA, key or firmware
    /// was changed outside the HSM). The HSM issues nothing for the product.
    #[error("ledger record {seq}: the definition of product {product} is not the one this HSM imported (it differs from its digest in the token)")]
    ProductTampered {
        /// The product the definition claims to be, or was looked up as.
        product: ProductKey,
        /// The `ProductCreated` record.
        seq: u64,
    },
    /// A token error reading or writing a product definition's digest.
    #[error("the product definition's digest in the token: {0}")]
    ProductDigest(trustfab_token::Error),
}

/// Why a package was refused. Nothing was imported when this is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The package does not decode or its signature does not verify under its OEM root.
    #[error(transparent)]
    Package(#[from] trustfab_formats::package::Error),
    /// The HSM has no installed identity certificates, so no package can name it.
    #[error(
        "this HSM has no identity certificates installed (run `trustfab hsm install-identity`)"
    )]
    NoIdentity,
    /// The package was made for another HSM.
    #[error("package is for HSM {expected}, this HSM is {actual}")]
    WrongHsm {
        /// Fingerprint the package names (hex).
        expected: Fingerprint,
        /// This HSM's fingerprint (hex).
        actual: Fingerprint,
    },
    /// Too early.
    #[error("package is not valid before {not_before}")]
    NotYetValid {
        /// Its start.
        not_before: UnixTime,
    },
    /// Too late.
    #[error("package expired at {expired_at}")]
    Expired {
        /// Its end.
        expired_at: UnixTime,
    },
    /// This package id was imported before.
    #[error("package {package} was already imported (ledger record {seq})")]
    Replayed {
        /// The package id (hex).
        package: String,
        /// The record of the first import.
        seq: u64,
    },
    /// The OEM is known here under another root certificate.
    #[error("OEM {oem} is bound to another root certificate here (ledger record {seq})")]
    OemRootMismatch {
        /// The OEM id.
        oem: OemId,
        /// The record that bound it.
        seq: u64,
    },
    /// A top-up for an existing product changes its key, template or certificates.
    #[error(
        "package for existing product {product} changes its {what}; a top-up may only add count"
    )]
    ProductConflict {
        /// The product key.
        product: ProductKey,
        /// What differs.
        what: &'static str,
    },
    /// The package contents are inconsistent (template, certificates, wrapped key).
    #[error("package contents: {0}")]
    Contents(String),
    /// The wrapped key does not unwrap in this HSM.
    #[error("the signing key does not unwrap in this HSM")]
    Unwrap,
    /// The family key does not unwrap under this HSM's key-transport key.
    #[error("the firmware family key does not unwrap in this HSM")]
    FamilyKeyUnwrap,
    /// A token error.
    #[error(transparent)]
    Token(trustfab_token::Error),
    /// A ledger error.
    #[error(transparent)]
    Ledger(trustfab_ledger::Error),
    /// The ledger was rolled back under this HSM, or its anchor could not be advanced.
    #[error(transparent)]
    Anchor(#[from] AnchorError),
}

/// Why an issuance was refused. When this is returned, no count was spent and no record made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// No such product in this HSM.
    #[error("product {product} is not imported in this HSM")]
    UnknownProduct {
        /// The product key.
        product: ProductKey,
    },
    /// Not enough count left.
    #[error("product {product} has {remaining} certificates left, {asked} asked")]
    CountExhausted {
        /// The product key.
        product: ProductKey,
        /// What remains.
        remaining: u64,
        /// What was asked.
        asked: u64,
    },
    /// A device public key is not on the template's terms (bad curve or point).
    #[error("device {uid}: {reason}")]
    BadRequest {
        /// The device.
        uid: String,
        /// Why.
        reason: String,
    },
    /// The template could not be rendered for a device.
    #[error("device {uid}: {source}")]
    Render {
        /// The device.
        uid: String,
        /// What failed.
        #[source]
        source: trustfab_pki::Error,
    },
    /// The serial range of the product is used up.
    #[error("product {product}: no serial number left in its range")]
    SerialsExhausted {
        /// The product key.
        product: ProductKey,
    },
    /// The same UID appears twice in one batch.
    #[error("device {uid} appears twice in one batch")]
    DuplicateInBatch {
        /// The device.
        uid: String,
    },
    /// Signing failed after the record was made: the count is spent and recorded; the
    /// certificate can be produced again with `certificate_for`.
    #[error("signing failed after the issuance was recorded: {0}")]
    Sign(trustfab_pki::Error),
    /// The product has no family key to deliver.
    #[error("product {product} has no firmware family key")]
    NoFamilyKey {
        /// The product.
        product: ProductKey,
    },
    /// The family key goes only to a device this HSM certified for the product.
    #[error("device {uid} has no certificate for product {product}: the family key goes only to certified devices")]
    NotIssued {
        /// The device.
        uid: String,
        /// The product.
        product: ProductKey,
    },
    /// A device's issuance record is not under this HSM's seal: it, or a record of its append,
    /// was changed, added or moved in the store, or the append was not sealed by this HSM. No
    /// certificate is rebuilt and no key delivered from it.
    #[error("the issuance record of device {uid} (ledger append at record {seq}) is not sealed by this HSM: it was changed or written outside it")]
    UnsealedRecord {
        /// The device's UID, hex.
        uid: String,
        /// The first record of the append its claim names.
        seq: u64,
    },
    /// The ledger claims the UID but holds no issuance record for it: the ledger was tampered
    /// with (`trustfab ledger verify` names the record).
    #[error("device {uid} is claimed at ledger record {seq} but its issuance record is missing")]
    MissingRecord {
        /// The device.
        uid: String,
        /// Where the claim points.
        seq: u64,
    },
    /// No identity certificates are installed: a report must name its HSM.
    #[error(
        "this HSM has no identity certificates installed (run `trustfab hsm install-identity`)"
    )]
    NoIdentity,
    /// Writing a report failed.
    #[error(transparent)]
    Report(#[from] trustfab_formats::report::ReportError),
    /// A ledger error.
    #[error(transparent)]
    Ledger(trustfab_ledger::Error),
    /// A token error.
    #[error(transparent)]
    Token(#[from] trustfab_token::Error),
    /// The reservation was made by another HSM.
    #[error("job {job} was reserved by another HSM")]
    ForeignReservation {
        /// The job.
        job: JobId,
    },
    /// The job's reservation has fewer units left than the batch asks.
    #[error("job {job} has {remaining} of its reserved units left, {asked} asked")]
    ReservationExhausted {
        /// The job.
        job: JobId,
        /// Units left in the reservation.
        remaining: u64,
        /// Units asked.
        asked: u64,
    },
    /// The job is closed: its reservation went back to the product.
    #[error("job {job} is closed (ledger record {seq})")]
    JobClosed {
        /// The job.
        job: JobId,
        /// The `JobClosed` record.
        seq: u64,
    },
    /// The station's ceiling of devices has fewer left than the batch.
    #[error("station {station} has {remaining} devices left of its ceiling, {asked} asked")]
    StationCeiling {
        /// The station.
        station: trustfab_types::StationId,
        /// Devices its ceiling has left.
        remaining: u64,
        /// Devices asked.
        asked: u64,
    },
    /// The HSM service refused or failed the request (the network client's view of an error
    /// it has no other variant for).
    #[error("HSM service: {code}: {message}")]
    Remote {
        /// The service's error code (`docs/service.md`).
        code: String,
        /// The service's message.
        message: String,
    },
    /// The HSM service could not be reached, or its answer was not one.
    #[error("HSM service unreachable: {0}")]
    Transport(String),
    /// The job was created by an earlier release, which kept its reservation in the product's
    /// counter: it can only be closed.
    #[error("job {job} was created by an earlier release and can only be closed (`trustfab job close`); create a new job for the rest")]
    LegacyJob {
        /// The job.
        job: JobId,
    },
    /// The ledger was rolled back under this HSM, or its anchor could not be advanced.
    #[error(transparent)]
    Anchor(#[from] AnchorError),
}

/// Why a job could not be reserved, attached, read or closed. Nothing was reserved or
/// credited then.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobOpError {
    /// The package itself.
    #[error(transparent)]
    Job(#[from] trustfab_formats::JobError),
    /// The job names another HSM.
    #[error("job {job} was made for HSM {expected}, this is {actual}")]
    WrongHsm {
        /// The job.
        job: JobId,
        /// The HSM the job names.
        expected: HsmId,
        /// This HSM.
        actual: HsmId,
    },
    /// The product is not in the HSM.
    #[error("product {product} is not imported in this HSM")]
    UnknownProduct {
        /// The product key.
        product: ProductKey,
    },
    /// The job's firmware step does not match the product.
    #[error("job firmware: {0}")]
    Firmware(String),
    /// The job asks for more than the product has left.
    #[error("job asks for {asked} devices, product {product} has {remaining} left")]
    OverRemaining {
        /// The product key.
        product: ProductKey,
        /// Left.
        remaining: u64,
        /// Asked.
        asked: u64,
    },
    /// The job id is taken.
    #[error("job {job} exists already (ledger record {seq})")]
    Exists {
        /// The job id.
        job: JobId,
        /// The record that created it.
        seq: u64,
    },
    /// The ledger has no `JobCreated` record for this job.
    #[error("job {job} is not in the ledger (was it created here?)")]
    UnknownJob {
        /// The job.
        job: JobId,
    },
    /// The ledger's record of the job is for another package.
    #[error("job {job} in the ledger was created from another package")]
    OtherPackage {
        /// The job.
        job: JobId,
    },
    /// The job is closed.
    #[error("job {job} is closed (ledger record {seq})")]
    Closed {
        /// The job.
        job: JobId,
        /// The `JobClosed` record.
        seq: u64,
    },
    /// The job closed (durably), but the signed checkpoint made after every close failed; the
    /// next checkpoint (another close, a report) covers the close.
    #[error("job {job} is closed (ledger record {seq}), but the checkpoint after it failed")]
    CheckpointAfterClose {
        /// The job.
        job: JobId,
        /// The `JobClosed` record.
        seq: u64,
        /// Why the checkpoint failed.
        #[source]
        source: Box<IssueError>,
    },
    /// A ledger record of this job does not decode.
    #[error("ledger record {seq} of job {job} does not decode")]
    BadRecord {
        /// The job.
        job: JobId,
        /// The record.
        seq: u64,
    },
    /// The reservation or the product.
    #[error(transparent)]
    Issue(#[from] IssueError),
    /// The identity key could not be reached.
    #[error("HSM identity key")]
    Token(#[source] trustfab_token::Error),
    /// A ledger error.
    #[error(transparent)]
    Ledger(trustfab_ledger::Error),
    /// The ledger was rolled back under this HSM, or its anchor could not be advanced.
    #[error(transparent)]
    Anchor(#[from] AnchorError),
}

/// Why a station operation (certify, revoke, admit a request) was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StationError {
    /// The grant names no product.
    #[error("a station certificate must grant at least one product")]
    EmptyGrant,
    /// The grant names a product this HSM has not imported.
    #[error("product {product} is not imported in this HSM")]
    UnknownProduct {
        /// The product.
        product: ProductKey,
    },
    /// The station id was certified before.
    #[error("station {station} is certified already (ledger record {seq}); certify a new id")]
    AlreadyCertified {
        /// The station.
        station: trustfab_types::StationId,
        /// Its certification record.
        seq: u64,
    },
    /// The ledger has no certification of the station.
    #[error("station {station} was not certified by this HSM")]
    UnknownStation {
        /// The station.
        station: trustfab_types::StationId,
    },
    /// The certificate presented is not the one the ledger recorded for its id.
    #[error("station {station}: the certificate presented is not the one this HSM recorded")]
    OtherCertificate {
        /// The station.
        station: trustfab_types::StationId,
    },
    /// The station is revoked.
    #[error("station {station} is revoked")]
    Revoked {
        /// The station.
        station: trustfab_types::StationId,
    },
    /// The station's certificate has expired.
    #[error("station {station}: its certificate has expired")]
    Expired {
        /// The station.
        station: trustfab_types::StationId,
    },
    /// A station record does not decode.
    #[error("ledger record {seq} is not the station record it should be")]
    BadRecord {
        /// The record.
        seq: u64,
    },
    /// Building or reading a certificate failed.
    #[error("station certificate: {0}")]
    Certificate(String),
    /// A PKI error.
    #[error(transparent)]
    Pki(#[from] trustfab_pki::Error),
    /// A token error.
    #[error(transparent)]
    Token(#[from] trustfab_token::Error),
    /// A ledger error.
    #[error(transparent)]
    Ledger(#[from] trustfab_ledger::Error),
    /// The ledger anchor refused.
    #[error(transparent)]
    Anchor(#[from] AnchorError),
}
