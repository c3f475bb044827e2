#![doc = include_str!("../README.md")]

mod ids;
mod secret;
mod time;

pub use ids::{
    check_name, DeviceUid, Fingerprint, HsmId, IdError, JobId, OemId, ProductId, ProductKey,
    Serial, StationId,
};
pub use secret::{Passphrase, SecretBytes, SecretKeyDer};
pub use time::{Clock, FixedClock, OsRng, Rng, RngError, SystemClock, UnixTime};

/// Size limits of the inputs trustfab parses. Every decoder checks its input against one of these
/// before it looks inside.
pub mod limits {
    /// A device certificate template (TOML), in bytes.
    pub const TEMPLATE_BYTES: usize = 64 * 1024;
    /// A certificate, PEM or DER, in bytes.
    pub const CERTIFICATE_BYTES: usize = 16 * 1024;
    /// A private key file (encrypted PKCS#8, PEM), in bytes.
    pub const KEY_FILE_BYTES: usize = 16 * 1024;
    /// A SubjectPublicKeyInfo (DER), in bytes.
    pub const PUBLIC_KEY_BYTES: usize = 1024;
    /// A certificate revocation list, in bytes.
    pub const CRL_BYTES: usize = 4 * 1024 * 1024;
    /// A passphrase, in bytes.
    pub const PASSPHRASE_BYTES: usize = 1024;
    /// A device unique id, in bytes.
    pub const DEVICE_UID_BYTES: usize = 32;
    /// An OEM or product id, in characters.
    pub const ID_CHARS: usize = 64;
}
