#![doc = include_str!("../README.md")]
// The parser takes untrusted bytes: no indexing that could panic.
#![warn(clippy::indexing_slicing)]

mod crypto;
mod error;
mod format;
mod master;
mod verify;

pub use crypto::{
    ecdh, DecryptionKey, LoadedKey, SoftDecryptionKey, AES_KEY_LEN, ECIES_INFO, SCALAR_LEN,
};
pub use error::{Area, MasterError, ParseError, VerifyError};
pub use format::{
    flags, Header, Image, Tlv, TlvKind, Version, VersionError, ENC_EC256_LEN, HEADER_LEN,
    IMAGE_MAGIC, MAX_IMAGE_BYTES, TLV_HEADER_LEN, TLV_INFO_MAGIC, TLV_PROT_INFO_MAGIC,
};
pub use master::{master, KeyTlv, MasterOptions};
pub use verify::{
    apply_payload_cipher, decrypt, key_hash, verify, verify_sealed, Payload, TrustAnchor, Verified,
};
