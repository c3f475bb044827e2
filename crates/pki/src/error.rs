//! The PKI crate's errors: structured, naming what was wrong, never carrying secret material.

use trustfab_types::{IdError, UnixTime};

use crate::template::TemplateError;

/// What went wrong in the PKI layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An input is larger than its limit.
    #[error("{what} is {len} bytes, the limit is {limit}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// No PEM block with the expected label.
    #[error("no PEM block labelled {label:?} found")]
    Pem {
        /// The expected label.
        label: String,
    },
    /// More PEM blocks than expected.
    #[error("expected one PEM block labelled {label:?}, found {found}")]
    PemCount {
        /// The label.
        label: String,
        /// How many were found.
        found: usize,
    },
    /// A key file could not be read.
    #[error("key file: {0}")]
    KeyFile(&'static str),
    /// The passphrase does not decrypt the key file.
    #[error("key file does not decrypt with this passphrase")]
    WrongPassphrase,
    /// A public key was refused.
    #[error("public key refused: {0}")]
    BadPublicKey(&'static str),
    /// A cryptographic operation failed.
    #[error("cryptographic operation failed: {0}")]
    Crypto(&'static str),
    /// The device certificate template is not valid.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// A rendered field is not valid for its ASN.1 type or exceeds its RFC 5280 upper bound.
    #[error("{field}: {problem}")]
    Render {
        /// The template field, as `[subject].common_name`.
        field: String,
        /// What is wrong with the rendered value.
        problem: String,
    },
    /// An identifier is not valid.
    #[error(transparent)]
    Id(#[from] IdError),
    /// A serial number outside the template's sequential range.
    #[error("serial {serial} is outside the template's range {first}..={last}")]
    SerialOutOfRange {
        /// The serial given.
        serial: String,
        /// First serial of the range.
        first: String,
        /// Last serial of the range.
        last: String,
    },
    /// A certificate is malformed.
    #[error("certificate is malformed: {0}")]
    BadCertificate(String),
    /// A station grant (the extension of a station certificate) is malformed, of an unknown
    /// version, or outside its limits.
    #[error("station grant refused: {0}")]
    BadGrant(String),
    /// The issuer certificate's key does not match the signing key given.
    #[error("the signing key does not belong to the issuer certificate")]
    IssuerKeyMismatch,
    /// A certificate's validity would end before it begins, or outside what X.509 encodes.
    #[error("validity: {0}")]
    Validity(&'static str),
    /// The time given is not representable.
    #[error("time {0} is out of range")]
    Time(UnixTime),
    /// rcgen refused to build the certificate or CRL.
    #[error("building the certificate failed: {0}")]
    Build(#[from] rcgen::Error),
    /// Chain validation refused the certificate.
    #[error("certificate does not validate: {0}")]
    Invalid(#[from] webpki::Error),
    /// A CRL could not be parsed.
    #[error("CRL is malformed: {0}")]
    BadCrl(webpki::Error),
}

impl From<trustfab_keys::Error> for Error {
    fn from(e: trustfab_keys::Error) -> Self {
        match e {
            trustfab_keys::Error::BadPublicKey(reason) => Self::BadPublicKey(reason),
            trustfab_keys::Error::TooLarge { what, len, limit } => {
                Self::TooLarge { what, len, limit }
            }
            trustfab_keys::Error::BadSignature => Self::Crypto("signature does not verify"),
            _ => Self::Crypto("key operation failed"),
        }
    }
}

impl From<trustfab_keys::SignError> for Error {
    fn from(e: trustfab_keys::SignError) -> Self {
        Self::Crypto(e.reason())
    }
}
