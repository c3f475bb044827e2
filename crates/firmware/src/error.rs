//! What mastering, parsing and verifying an image can fail with: one enum per operation, one
//! variant per refusal (`docs/firmware.md`, "Refusals").

use std::fmt;

/// The two TLV areas of an image (MCUboot `bootutil_tlv_iter`'s `prot` argument).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Area {
    /// The protected TLVs: covered by the hash and the signature (`IMAGE_TLV_PROT_INFO_MAGIC`).
    Protected,
    /// The unprotected TLVs after them (`IMAGE_TLV_INFO_MAGIC`).
    Unprotected,
}

impl fmt::Display for Area {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Protected => "protected",
            Self::Unprotected => "unprotected",
        })
    }
}

/// Why bytes are not an MCUboot image.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Larger than [`crate::MAX_IMAGE_BYTES`].
    #[error("image is {len} bytes, the limit is {limit}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Ends before a field.
    #[error("image is truncated: {field} needs {needed} bytes, {available} are left")]
    Truncated {
        /// The field.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left.
        available: usize,
    },
    /// The header does not start with `IMAGE_MAGIC`.
    #[error("not an MCUboot image: magic is {found:#010x}, expected 0x96f3b83d")]
    BadMagic {
        /// The magic found.
        found: u32,
    },
    /// `ih_hdr_size` is smaller than the header itself.
    #[error("header size {hdr_size} is smaller than the 32-byte header")]
    HeaderTooSmall {
        /// `ih_hdr_size`.
        hdr_size: u16,
    },
    /// A TLV area does not start with its info magic.
    #[error("{area} TLV area has magic {found:#06x}, expected {expected:#06x}")]
    BadTlvInfoMagic {
        /// The area.
        area: Area,
        /// The magic found.
        found: u16,
        /// The magic expected.
        expected: u16,
    },
    /// The protected area's size disagrees with `ih_protect_tlv_size`.
    #[error("protected TLV area is {area} bytes, the header says {header}")]
    ProtectedSizeMismatch {
        /// `ih_protect_tlv_size`.
        header: u16,
        /// The area's own `it_tlv_tot`.
        area: u16,
    },
    /// A TLV area's total is smaller than its info header.
    #[error("{area} TLV area total {total} is smaller than its 4-byte info")]
    BadTlvTotal {
        /// The area.
        area: Area,
        /// `it_tlv_tot`.
        total: u16,
    },
    /// A TLV's length runs past the end of its area.
    #[error("{area} TLV at offset {offset} runs past the end of its area")]
    TlvOverrun {
        /// The area.
        area: Area,
        /// Offset of the TLV in the image.
        offset: usize,
    },
    /// A known TLV has a length its kind does not allow.
    #[error("TLV {kind:#04x} has length {len}, which its kind does not allow")]
    BadTlvLength {
        /// The TLV type.
        kind: u16,
        /// Its length.
        len: u16,
    },
    /// A known TLV appears twice.
    #[error("TLV {kind:#04x} appears more than once")]
    DuplicateTlv {
        /// The TLV type.
        kind: u16,
    },
    /// A known TLV is in the wrong area (the security counter must be protected; the hash,
    /// key, signature and encryption TLVs must not be).
    #[error("TLV {kind:#04x} is in the {area} area, where it does not belong")]
    MisplacedTlv {
        /// The TLV type.
        kind: u16,
        /// The area it was found in.
        area: Area,
    },
    /// Bytes after the last TLV.
    #[error("image has {count} bytes after its last TLV")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
}

/// Why an image does not verify.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The bytes are not a well-formed image.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// No SHA-256 TLV.
    #[error("image has no SHA-256 TLV")]
    NoHash,
    /// The SHA-256 TLV does not match the image: it was changed after signing (or decrypted
    /// with the wrong key).
    #[error("image hash does not match its SHA-256 TLV")]
    HashMismatch,
    /// Neither a key hash nor a public key TLV.
    #[error("image names no signing key (no KEYHASH or PUBKEY TLV)")]
    NoKey,
    /// Checked against a root-of-trust key hash, the image carries only a key hash: the
    /// bootloader then has no key to verify with (`MCUBOOT_HW_KEY` needs the PUBKEY TLV).
    #[error("image carries only a key hash, a root-of-trust check needs the full public key TLV")]
    PublicKeyMissing,
    /// The image's key is not the trusted one.
    #[error("image is signed by a key other than the trusted one")]
    KeyNotTrusted,
    /// The PUBKEY TLV is not a P-256 SubjectPublicKeyInfo.
    #[error("image's public key TLV is not a P-256 public key")]
    BadPublicKey,
    /// No ECDSA signature TLV.
    #[error("image has no ECDSA signature TLV")]
    NoSignature,
    /// The signature does not verify.
    #[error("image signature does not verify")]
    Signature,
    /// The image must carry a security counter (hardware rollback protection) and does not.
    #[error("image has no security counter TLV")]
    NoSecurityCounter,
    /// An encryption this crate does not implement (AES-256, or both flags).
    #[error("image encryption flags {flags:#x} are not supported (AES-128 with ENC_EC256 only)")]
    UnsupportedEncryption {
        /// `ih_flags`.
        flags: u32,
    },
    /// The image is flagged encrypted and has no `ENC_EC256` TLV.
    #[error("image is flagged encrypted and has no ENC_EC256 TLV")]
    NoEncryptionTlv,
    /// The image is encrypted and no decryption key was given.
    #[error("image is encrypted and no decryption key was given")]
    NoDecryptionKey,
    /// The image is not encrypted, where an encrypted one was asked for.
    #[error("image is not encrypted")]
    NotEncrypted,
    /// None of the keys unwraps the image key (HMAC mismatch): an image for another family or
    /// device.
    #[error("image does not decrypt with this key")]
    Decrypt,
}

/// Why an image could not be mastered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MasterError {
    /// The payload does not fit in an image.
    #[error("payload is {len} bytes, the limit is {limit}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The header size is below 32 bytes.
    #[error("header size {0} is smaller than the 32-byte header")]
    HeaderTooSmall(u16),
    /// The signing or encryption key is not P-256.
    #[error("{0} key is not P-256")]
    NotP256(&'static str),
    /// The signer failed.
    #[error("signing the image")]
    Sign(#[source] trustfab_keys::SignError),
    /// The random source failed.
    #[error("random source failed")]
    Rng(#[source] trustfab_types::RngError),
    /// The cryptographic library refused an operation.
    #[error("cryptographic operation failed while encrypting the image")]
    Crypto,
}
