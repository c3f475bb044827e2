//! The errors of the key vocabulary: a refused public key or signature, and a failed signing.

/// A public key, or a signature under one, that was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Not a valid public key of a supported curve (off the curve, compressed, malformed DER).
    #[error("public key refused: {0}")]
    BadPublicKey(&'static str),
    /// An input larger than its limit.
    #[error("{what} is {len} bytes, the limit is {limit}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A signature that does not verify under the key. Deliberately without detail.
    #[error("signature does not verify")]
    BadSignature,
}

/// A [`crate::Signer`] could not sign (the token refused, the random source failed). It carries
/// what failed, never key material; the PKI's and the token's errors take it through `?`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct SignError {
    reason: &'static str,
}

impl SignError {
    /// A signing failure described by `reason` (e.g. "token signing failed").
    pub fn new(reason: &'static str) -> Self {
        Self { reason }
    }

    /// What failed.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}
