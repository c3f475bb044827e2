//! One error enum per operation: decoding a job package, creating or closing a job, running it.

/// Why a job package was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// Over the size limit.
    #[error("job package is {len} bytes, the limit is {limit}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Not a job package.
    #[error("job package is malformed ({0})")]
    Malformed(&'static str),
    /// A version this build does not read.
    #[error("job package version {version} is not supported (this build reads {supported})")]
    Version {
        /// The package's version.
        version: u8,
        /// The version this build reads.
        supported: u8,
    },
    /// The signature does not verify under the HSM identity key.
    #[error("job package signature does not verify")]
    Signature,
    /// A field breaks a rule.
    #[error("job field {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// The rule.
        reason: String,
    },
    /// Encoding failed.
    #[error("job package could not be encoded")]
    Encode,
    /// The identity key could not sign.
    #[error("signing the job package")]
    Sign(#[source] trustfab_pki::Error),
}

/// Why a job could not be created or closed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CreateError {
    /// The package itself.
    #[error(transparent)]
    Job(#[from] JobError),
    /// The product is not in the HSM.
    #[error("product {product} is not imported in this HSM")]
    UnknownProduct {
        /// The product key.
        product: String,
    },
    /// The job's firmware step does not match the product, or its image does not check.
    #[error("job firmware: {0}")]
    Firmware(String),
    /// The job asks for more than the product has left.
    #[error("job asks for {asked} devices, product {product} has {remaining} left")]
    OverRemaining {
        /// The product key.
        product: String,
        /// Left.
        remaining: u64,
        /// Asked.
        asked: u64,
    },
    /// The job id is taken.
    #[error("job {job} exists already (ledger record {seq})")]
    Exists {
        /// The job id.
        job: String,
        /// The record that created it.
        seq: u64,
    },
    /// The identity key could not be reached.
    #[error("HSM identity key")]
    Token(#[source] trustfab_token::Error),
    /// A ledger error.
    #[error(transparent)]
    Ledger(trustfab_ledger::Error),
}

/// Why a job run stopped before it could account for its devices.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The package does not belong to this HSM or product.
    #[error("job {job} was made for HSM {expected}, this is {actual}")]
    WrongHsm {
        /// The job.
        job: String,
        /// The HSM the job names.
        expected: String,
        /// This HSM.
        actual: String,
    },
    /// The ledger has no `JobCreated` record for this job.
    #[error("job {job} is not in the ledger (was it created here?)")]
    UnknownJob {
        /// The job.
        job: String,
    },
    /// The ledger's record of the job is for another package.
    #[error("job {job} in the ledger was created from another package")]
    OtherPackage {
        /// The job.
        job: String,
    },
    /// The job is closed.
    #[error("job {job} is closed (ledger record {seq})")]
    Closed {
        /// The job.
        job: String,
        /// The `JobClosed` record.
        seq: u64,
    },
    /// A ledger record of this job does not decode.
    #[error("ledger record {seq} of job {job} does not decode")]
    BadRecord {
        /// The job.
        job: String,
        /// The record.
        seq: u64,
    },
    /// The product of the job.
    #[error(transparent)]
    Issue(#[from] trustfab_hsm::IssueError),
    /// A ledger error.
    #[error(transparent)]
    Ledger(#[from] trustfab_ledger::Error),
    /// The supply of parts failed.
    #[error("device supply: {0}")]
    Supply(String),
    /// The job programs firmware and the image given is missing or not the one it names.
    #[error("job {job}: {reason}")]
    Image {
        /// The job.
        job: String,
        /// What is wrong with the image.
        reason: String,
    },
}
