#![doc = include_str!("../README.md")]

mod error;
mod key;
mod mac;
mod wrap;

#[cfg(feature = "conformance")]
pub mod conformance;
mod signer;

use std::fmt;

pub use error::Error;
pub use key::{KeyHandle, KeyInfo, KeyLabel, KeySpec, KeyUsage, Signature, LABEL_MAX};
pub use mac::{check_anchor, MacKeySpec, MacTag, ANCHOR_MAX, MAC_LEN};
pub use signer::TokenSigner;
pub use trustfab_keys::{Curve, PublicKey, SignError, Signer};
pub use wrap::{
    check_unwrap_in, check_wrap_out, kek_from_shared_secret, pkcs8_public_key, unwrap_pkcs8,
    unwrap_with, wrap_for, wrap_known_for, wrapped_header, WrappedKey, INFO_MAX, WRAPPED_MAX,
    WRAPPED_VERSION,
};

/// A token's sessions ([`Token::sessions`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sessions {
    /// Sessions open (logged in), idle or busy.
    pub open: usize,
    /// Sessions an operation holds now.
    pub in_use: usize,
    /// The most the token opens at once.
    pub max: usize,
}

/// A cryptographic token. Keys are addressed by [`KeyHandle`] and never leave it in plaintext:
/// no method returns private key bytes, a key enters only as a [`WrappedKey`], and only a
/// distribution key leaves, only as a [`WrappedKey`] ([`Token::wrap_key`]). Besides EC keys a
/// token holds MAC keys (HMAC-SHA256, made inside, never leaving) and anchors: small named
/// values ([`ANCHOR_MAX`] bytes at most) kept inside the token, replaced whole on each write.
///
/// Implementations are synchronous and thread-safe; a backend that needs per-thread state (a
/// PKCS#11 session) pools it internally. Async callers use `spawn_blocking`.
pub trait Token: fmt::Debug + Send + Sync {
    /// Generates a key pair inside the token.
    ///
    /// # Errors
    /// [`Error::LabelExists`] when the label is taken, [`Error::BadSpec`] for a spec the token
    /// refuses (a P-384 key-transport or distribution key, a non-sensitive distribution key), or
    /// a backend error.
    fn generate(&self, spec: &KeySpec) -> Result<KeyHandle, Error>;

    /// Generates a MAC key (HMAC-SHA256, [`MAC_LEN`] bytes) inside the token: sensitive, never
    /// extractable, usable only by [`Token::mac`] and [`Token::verify_mac`].
    ///
    /// # Errors
    /// [`Error::LabelExists`] when the label is taken (keys and MAC keys share one label space),
    /// or a backend error.
    fn generate_mac(&self, spec: &MacKeySpec) -> Result<KeyHandle, Error>;

    /// The key labelled `label` (a private key or a MAC key), if there is one.
    ///
    /// # Errors
    /// A backend error.
    fn find(&self, label: &KeyLabel) -> Result<Option<KeyHandle>, Error>;

    /// The key's attributes.
    ///
    /// # Errors
    /// [`Error::UnknownKey`] or a backend error.
    fn info(&self, key: KeyHandle) -> Result<KeyInfo, Error>;

    /// The public half of a key pair.
    ///
    /// # Errors
    /// [`Error::UnknownKey`], [`Error::NotPermitted`] for a MAC key (it has no public half), or
    /// a backend error.
    fn public_key(&self, key: KeyHandle) -> Result<PublicKey, Error>;

    /// Signs `message` with ECDSA, hashing it with the curve's hash (SHA-256 for P-256, SHA-384
    /// for P-384) on the host when the token's mechanism wants a digest. Returns DER.
    ///
    /// # Errors
    /// [`Error::UnknownKey`], [`Error::NotPermitted`] for a key that is not a signing key, or a
    /// backend error.
    fn sign(&self, key: KeyHandle, message: &[u8]) -> Result<Signature, Error>;

    /// Imports a private key wrapped for the key-transport key `kt` (see [`wrap_for`]): the ECDH,
    /// the KDF and the unwrap all run inside the token, which stores the key under `spec`. The
    /// declared public key is checked against the unwrapped private key.
    ///
    /// `spec.usage` is [`KeyUsage::Sign`] (an OEM signing key) or [`KeyUsage::Distribute`] (a
    /// P-256 key to hand on with [`Token::wrap_key`]; it must be sensitive, and is extractable
    /// only if the spec says so).
    ///
    /// # Errors
    /// [`Error::Unwrap`] (no detail) when the blob does not unwrap under `kt` or the key does not
    /// match its declared public key, [`Error::NotPermitted`] when `kt` is not a key-transport
    /// key, [`Error::BadSpec`] when `spec` disagrees with the blob or asks for a key-transport
    /// key, a non-P-256 or a non-sensitive distribution key, [`Error::LabelExists`].
    fn unwrap_key(
        &self,
        kt: KeyHandle,
        wrapped: &WrappedKey,
        spec: &KeySpec,
    ) -> Result<KeyHandle, Error>;

    /// Wraps the distribution key `key` for `recipient` (a P-256 public key, a device's certified
    /// key), binding `info`, with the construction of [`wrap_for`]: a fresh ephemeral P-256 key,
    /// ECDH with `recipient`, the KDF over the context, RFC 5649 key wrap of the PKCS#8 key. The
    /// recipient opens it with [`unwrap_with`]. With a PKCS#11 token every step runs inside the
    /// token (the ephemeral key, Z and the KEK are session objects destroyed afterwards), so the
    /// key is never in clear outside it. Which recipients deserve the key is the caller's
    /// decision; the token only guarantees that the key leaves wrapped, to that point.
    ///
    /// # Errors
    /// [`Error::UnknownKey`], [`Error::NotPermitted`] when `key` is not a
    /// [`KeyUsage::Distribute`] key or not extractable, [`Error::BadKey`] when `recipient` is not
    /// on P-256, [`Error::TooLarge`] for an `info` over [`INFO_MAX`], or a backend error.
    fn wrap_key(
        &self,
        key: KeyHandle,
        recipient: &PublicKey,
        info: &[u8],
    ) -> Result<WrappedKey, Error>;

    /// HMAC-SHA256 of `message` under the MAC key `key`, computed inside the token (PKCS#11:
    /// CKM_SHA256_HMAC).
    ///
    /// # Errors
    /// [`Error::UnknownKey`], [`Error::NotPermitted`] when `key` is not a [`KeyUsage::Mac`] key,
    /// or a backend error.
    fn mac(&self, key: KeyHandle, message: &[u8]) -> Result<MacTag, Error>;

    /// Checks `tag` (as read back from storage, any length) against `message` under the MAC key
    /// `key`, in constant time inside the token (PKCS#11: C_Verify with CKM_SHA256_HMAC).
    ///
    /// # Errors
    /// [`Error::MacMismatch`] when it does not verify (another message, another key, a changed
    /// or a wrong-length tag), [`Error::UnknownKey`], [`Error::NotPermitted`] when `key` is not a
    /// [`KeyUsage::Mac`] key, or a backend error.
    fn verify_mac(&self, key: KeyHandle, message: &[u8], tag: &[u8]) -> Result<(), Error>;

    /// The anchor labelled `label`, or `None` if the token holds none under that label. Anchors
    /// have their own label space, apart from keys.
    ///
    /// # Errors
    /// A backend error. (A backend that can hold two values at once, after two processes wrote
    /// at the same instant, takes the greater in byte order: `docs/key-policies.md`.)
    fn read_anchor(&self, label: &KeyLabel) -> Result<Option<Vec<u8>>, Error>;

    /// Sets the anchor labelled `label` to `value` (at most [`ANCHOR_MAX`] bytes), creating it
    /// or replacing the whole value atomically: a later [`Token::read_anchor`], after a reopen
    /// too, sees this value or the one before, never a mix. Written to the token's storage when
    /// it returns; how durable that storage is, and what an anchor promises against someone who
    /// can copy it back, is the backend's (`docs/key-policies.md`).
    ///
    /// # Errors
    /// [`Error::TooLarge`] over [`ANCHOR_MAX`] (the anchor is left as it was), or a backend
    /// error.
    fn write_anchor(&self, label: &KeyLabel, value: &[u8]) -> Result<(), Error>;

    /// Fills `out` from the token's random generator.
    ///
    /// # Errors
    /// A backend error.
    fn fill_random(&self, out: &mut [u8]) -> Result<(), Error>;

    /// The token's sessions as of now, for a backend that keeps a pool of them (PKCS#11);
    /// `None` for one without sessions (the soft token).
    fn sessions(&self) -> Option<Sessions> {
        None
    }
}
