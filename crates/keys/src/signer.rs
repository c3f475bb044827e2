//! The [`Signer`] trait: a key that signs, wherever its private half lives.

use crate::{Curve, SignError};

/// A key that signs certificates, CRLs, packages, images and records. The private half stays
/// wherever the implementation keeps it (process memory for `trustfab_pki::SoftKey`, a token for
/// `trustfab_token::TokenSigner`).
pub trait Signer: Send + Sync {
    /// The key's curve, which fixes the signature algorithm.
    fn curve(&self) -> Curve;

    /// The public key as an uncompressed SEC1 point.
    fn public_point(&self) -> &[u8];

    /// Signs `message` (hashing it with the curve's hash) and returns a DER ECDSA-Sig-Value.
    ///
    /// # Errors
    /// [`SignError`] when the key cannot sign (a token error, a failed random source).
    fn sign_der(&self, message: &[u8]) -> Result<Vec<u8>, SignError>;
}
