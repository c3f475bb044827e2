//! Why an authentication failed. Every refusal of `docs/auth.md` is its own variant; the
//! variants of a failed verification say which check refused and nothing more.

use trustfab_device::SlotId;

use crate::wire::{DecodeError, EncodeError, Role};

/// An authentication, or the loading of an identity, failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- the local device ----
    /// The device refused a command or could not be reached.
    #[error("device: {0}")]
    Device(#[from] trustfab_device::Error),
    /// A certificate slot the identity needs is empty.
    #[error("certificate slot {slot} of the device is empty")]
    MissingCertificate {
        /// The slot.
        slot: SlotId,
    },
    /// The root is not in write-protected storage (the data zone is not locked, or the slot's
    /// policy lets it be rewritten): it cannot be a trust anchor.
    #[error("the root in slot {slot} is not write-protected: lock the device first")]
    RootNotWriteProtected {
        /// The slot.
        slot: SlotId,
    },
    /// The device's own certificate does not parse.
    #[error("the device's own certificate in slot {slot} is malformed")]
    OwnCertificate {
        /// The slot.
        slot: SlotId,
    },
    /// The device's own certificate certifies another key than the one in its key slot.
    #[error("the device's certificate does not certify the key in slot {slot}")]
    OwnKeyMismatch {
        /// The key slot.
        slot: SlotId,
    },

    // ---- the peer's messages ----
    /// A message does not decode.
    #[error("peer message: {0}")]
    Decode(#[from] DecodeError),
    /// A message of another type than the protocol expects at this point.
    #[error("expected a {expected} message from the peer, got a {got}")]
    Unexpected {
        /// The expected type.
        expected: &'static str,
        /// The type received.
        got: &'static str,
    },
    /// A message claims our own role, or carries our own nonce or ephemeral key: our own message
    /// sent back to us.
    #[error("reflected message: the peer's message claims to be from the {role}, as we are")]
    Reflected {
        /// Our role.
        role: Role,
    },
    /// An answer to another challenge than the one we sent: a replayed answer.
    #[error("replayed answer: the peer's answer is not to this session's challenge")]
    Replayed,
    /// The peer's chain does not lead to the OEM root in our storage: another OEM's device.
    #[error("peer certificate is not issued under this device's OEM root")]
    UntrustedIssuer,
    /// The peer's certificate is revoked by the OEM's CRL.
    #[error("peer certificate is revoked")]
    Revoked,
    /// The peer's certificate has expired.
    #[error("peer certificate has expired")]
    Expired,
    /// The peer's certificate is not valid yet.
    #[error("peer certificate is not valid yet")]
    NotYetValid,
    /// The peer's chain is refused for another reason (usage, constraints, a CRL that does not
    /// parse, an unknown revocation status, ...).
    #[error("peer certificate chain is invalid")]
    InvalidChain,
    /// The peer's ephemeral key is not a valid P-256 point.
    #[error("peer ephemeral key is not a valid P-256 point")]
    Ephemeral,
    /// The peer's key confirmation does not match our transcript: a message was changed on the
    /// way, or the peer saw another exchange.
    #[error("transcript mismatch: the peer's key confirmation does not match this exchange")]
    Transcript,
    /// The peer's answer is not signed by the key its certificate certifies: the peer does not
    /// hold the certified key.
    #[error("the peer's answer is not signed by the key its certificate certifies")]
    Signature,

    // ---- transport and local faults ----
    /// The transport failed.
    #[error("transport: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent nothing within the transport's timeout.
    #[error("the peer sent nothing for {secs} s (timed out)")]
    Timeout {
        /// The timeout, in seconds.
        secs: u64,
    },
    /// A message could not be encoded (a local certificate over the wire limit).
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// rustls refused a configuration.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// A local cryptographic operation failed.
    #[error("cryptographic operation failed: {0}")]
    Crypto(&'static str),
}
