//! The device interface a station drives through a programmer's socket (the identity services of
//! every part; a secure MCU's boot stage is `crate::secure_boot`), and the types of its answers.
//! The interface has no method that returns a private key: a key is generated inside the device
//! and used there (DESIGN.md property 6).

use std::fmt;

use trustfab_pki::PublicKey;
use trustfab_types::DeviceUid;

use crate::attest::KeyAttestation;
use crate::error::Error;
use crate::secure_boot::SecureBoot;

/// A slot number, as the part numbers its key and data slots.
pub type SlotId = u8;

/// What a slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SlotKind {
    /// An ECC P-256 private key, generated inside. Never readable; used by sign.
    PrivateKey,
    /// A certificate (DER), readable, write-protected after lock when so configured.
    Certificate,
    /// General data.
    Data,
    /// A symmetric secret: writable, never readable.
    Secret,
}

/// Who may read a data slot. Key slots are never readable, whatever their policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadPolicy {
    /// Readable (on a secure element only once the data zone is locked).
    Clear,
    /// Never readable (ATECC608 `IsSecret`).
    Never,
}

/// When a slot may be written (for a key slot: when a key may be generated in it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WritePolicy {
    /// Any time, also after the data zone is locked.
    Always,
    /// Until the data zone is locked, then never again (ATECC608 `WriteConfig` = Never).
    UntilLock,
    /// Never through the interface: written by the silicon vendor at manufacture.
    Never,
}

/// One slot's configuration, as the configuration zone declares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotConfig {
    /// What the slot holds.
    pub kind: SlotKind,
    /// Read policy (ignored for key slots, which are never readable).
    pub read: ReadPolicy,
    /// Write policy; for a key slot, the key generation policy.
    pub write: WritePolicy,
    /// Whether the slot may be locked on its own (ATECC608 `KeyConfig.Lockable`).
    pub lockable: bool,
    /// Largest content, in bytes.
    pub capacity: u16,
}

/// A slot as the device reports it: its configuration and state, never its secret content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    /// The slot number.
    pub id: SlotId,
    /// Its configuration.
    pub config: SlotConfig,
    /// Locked on its own.
    pub locked: bool,
    /// Whether it holds content (a key, or data).
    pub filled: bool,
    /// Length of the content, for data slots; 0 for key slots.
    pub len: usize,
}

/// What a lock command locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Zone {
    /// The configuration (slot table). On a secure MCU: lifecycle open → provisioned.
    Config,
    /// The data (write-protects every `UntilLock` slot). On a secure MCU: provisioned → locked.
    Data,
    /// One lockable slot.
    Slot(SlotId),
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config => f.write_str("config"),
            Self::Data => f.write_str("data"),
            Self::Slot(s) => write!(f, "slot {s}"),
        }
    }
}

/// The device's lock state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LockState {
    /// The configuration zone is locked.
    pub config: bool,
    /// The data zone is locked.
    pub data: bool,
}

/// The kind of part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// A secure element (modelled on Microchip ATECC608, with NXP SE050 where noted).
    SecureElement,
    /// A secure MCU (modelled on STM32 with TrustZone / nRF5340, PSA Certified lifecycle).
    SecureMcu,
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::SecureElement => "se",
            Self::SecureMcu => "mcu",
        })
    }
}

impl std::str::FromStr for DeviceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "se" => Ok(Self::SecureElement),
            "mcu" => Ok(Self::SecureMcu),
            other => Err(format!("unknown device kind {other:?}: use se or mcu")),
        }
    }
}

/// A device in a programmer's socket: what a station can ask of it.
///
/// Every method talks to the device, so every method can fail with a socket fault
/// ([`Error::NoContact`], [`Error::PowerLoss`], ...) besides the device's own refusals.
/// No method returns private key material. These are the identity services every part has; a
/// secure MCU's boot stage is the separate [`SecureBoot`] trait, reached through
/// [`Device::secure_boot`].
pub trait Device: Send {
    /// The kind of part.
    fn kind(&self) -> DeviceKind;

    /// The unique id the part reports.
    ///
    /// # Errors
    /// A socket fault.
    fn uid(&mut self) -> Result<DeviceUid, Error>;

    /// The slot table and each slot's state.
    ///
    /// # Errors
    /// A socket fault.
    fn slots(&mut self) -> Result<Vec<SlotInfo>, Error>;

    /// The lock state.
    ///
    /// # Errors
    /// A socket fault.
    fn lock_state(&mut self) -> Result<LockState, Error>;

    /// Generates a P-256 key pair inside `slot`, replacing any key there, and returns its public
    /// key. The private key never leaves the device.
    ///
    /// # Errors
    /// A refusal when the slot is not a key slot or its policy forbids a new key now.
    fn generate_key(&mut self, slot: SlotId) -> Result<PublicKey, Error>;

    /// As [`Device::generate_key`], and returns an attestation of the new public key signed by
    /// the part's factory attestation key over `nonce`.
    ///
    /// # Errors
    /// As [`Device::generate_key`].
    fn generate_key_attested(
        &mut self,
        slot: SlotId,
        nonce: &[u8; 32],
    ) -> Result<KeyAttestation, Error>;

    /// The public key of the key in `slot`.
    ///
    /// # Errors
    /// A refusal when the slot is not a key slot or holds no key.
    fn public_key(&mut self, slot: SlotId) -> Result<PublicKey, Error>;

    /// Signs a SHA-256 digest with the key in `slot`; returns a DER ECDSA-Sig-Value.
    ///
    /// # Errors
    /// A refusal when the slot is not a key slot or holds no key.
    fn sign_digest(&mut self, slot: SlotId, digest: &[u8; 32]) -> Result<Vec<u8>, Error>;

    /// Signs a challenge: SHA-256 of `challenge`, then [`Device::sign_digest`]. The signature
    /// verifies as ECDSA-P256-SHA256 over `challenge`.
    ///
    /// # Errors
    /// As [`Device::sign_digest`].
    fn sign_challenge(&mut self, slot: SlotId, challenge: &[u8]) -> Result<Vec<u8>, Error> {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, challenge);
        let mut d = [0u8; 32];
        d.copy_from_slice(digest.as_ref());
        self.sign_digest(slot, &d)
    }

    /// Reads a data or certificate slot.
    ///
    /// # Errors
    /// A refusal for key slots, secret slots, and (on a secure element) before the data lock.
    fn read_slot(&mut self, slot: SlotId) -> Result<Vec<u8>, Error>;

    /// Replaces a data or certificate slot's content.
    ///
    /// # Errors
    /// A refusal for key slots, write-protected slots, locked slots and data too long.
    fn write_slot(&mut self, slot: SlotId, data: &[u8]) -> Result<(), Error>;

    /// 32 random bytes from the part's generator.
    ///
    /// # Errors
    /// A socket fault.
    fn random(&mut self) -> Result<[u8; 32], Error>;

    /// Locks a zone or slot. One-way: there is no unlock.
    ///
    /// # Errors
    /// A refusal when already locked, or locked out of order (data before config).
    fn lock(&mut self, zone: Zone) -> Result<(), Error>;

    /// The factory attestation certificate (DER), issued by the silicon vendor CA.
    ///
    /// # Errors
    /// A socket fault.
    fn attestation_certificate(&mut self) -> Result<Vec<u8>, Error>;

    /// Increments monotonic counter `counter` and returns its new value.
    ///
    /// # Errors
    /// A refusal for an unknown counter or one at its limit.
    fn counter_increment(&mut self, counter: u8) -> Result<u32, Error>;

    /// Reads monotonic counter `counter`.
    ///
    /// # Errors
    /// A refusal for an unknown counter.
    fn counter_read(&mut self, counter: u8) -> Result<u32, Error>;

    /// The part's boot stage, for a part that has one (a secure MCU); `None` for a part without
    /// (a secure element). Asking costs no command: the kind of part says it.
    fn secure_boot(&mut self) -> Option<&mut dyn SecureBoot> {
        None
    }
}
