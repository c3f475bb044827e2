//! Why a job package was refused.

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
