//! What a device operation can fail with: the socket's faults (no contact, a failed write, power
//! lost, no answer in time) and the device's own refusals, each carrying the status code the real
//! part would return (`docs/devices.md`, "Status codes").

use std::fmt;

use crate::device::SlotId;
use crate::sim::{BootSlot, ImageRefusal};

/// The status code a device answers a refused command with, in the part's own code space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// A secure element's one-byte status (Microchip ATECC608 data sheet, "Status/Error Codes"):
    /// `0x03` parse error, `0x0F` execution error, ...
    Atecc(u8),
    /// A secure MCU's PSA Certified Crypto / Storage API status (`psa_status_t`, as TF-M returns
    /// it on STM32 and nRF53 parts): `-133` not permitted, `-137` bad state, ...
    Psa(i32),
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Atecc(code) => write!(f, "status 0x{code:02x}"),
            Self::Psa(code) => write!(f, "psa_status {code}"),
        }
    }
}

/// Why a device refused a command. The simulator maps each reason to the part's [`Status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// The slot number does not exist on this part.
    NoSuchSlot,
    /// The command does not apply to this kind of slot (a sign with a data slot, a write to a
    /// key slot).
    WrongSlotKind,
    /// The slot's read policy forbids reading it (private keys and secrets, always).
    NotReadable,
    /// The slot's write policy forbids writing it now (write-protected after lock, or never).
    WriteProtected,
    /// The slot was locked on its own (per-slot lock) and can never change again.
    SlotLocked,
    /// The data is longer than the slot.
    TooLong,
    /// The configuration is not locked yet, and the command needs it locked.
    ConfigUnlocked,
    /// The data zone is not locked yet, and the command needs it locked.
    DataUnlocked,
    /// The zone or slot is already locked: a lock is one-way and happens once.
    AlreadyLocked,
    /// The slot may not be locked on its own.
    NotLockable,
    /// The key slot holds no key yet.
    NoKey,
    /// The monotonic counter has reached its limit.
    CounterLimit,
    /// No such counter.
    NoSuchCounter,
    /// A one-time-programmable fuse is already programmed.
    FuseProgrammed,
    /// The command is not allowed in the device's lifecycle state.
    Lifecycle,
    /// The new value would move a monotonic counter backwards.
    Rollback,
    /// The command is not supported by this part.
    Unsupported,
    /// Secure boot refused the image, or there is none.
    BootRefused,
    /// An update swap is in progress: the next boot finishes it first.
    SwapInProgress,
    /// A wrapped key blob that does not parse (bad magic, version, length or point).
    MalformedWrappedKey,
    /// The wrapped key is of a type the command does not take (not a P-256 key).
    UnsupportedKeyType,
    /// The part holds no identity key (slot 0) to unwrap with.
    NoUnwrapKey,
    /// The wrapped key does not unwrap under this part's identity key: wrapped for another
    /// part, changed, or not the key it declares. Deliberately without detail.
    UnwrapFailed,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoSuchSlot => "no such slot",
            Self::WrongSlotKind => "wrong kind of slot for this command",
            Self::NotReadable => "slot is not readable",
            Self::WriteProtected => "slot is write-protected",
            Self::SlotLocked => "slot is locked",
            Self::TooLong => "data is longer than the slot",
            Self::ConfigUnlocked => "configuration is not locked",
            Self::DataUnlocked => "data zone is not locked",
            Self::AlreadyLocked => "already locked",
            Self::NotLockable => "slot is not lockable",
            Self::NoKey => "key slot holds no key",
            Self::CounterLimit => "counter is at its limit",
            Self::NoSuchCounter => "no such counter",
            Self::FuseProgrammed => "fuse is already programmed",
            Self::Lifecycle => "not allowed in this lifecycle state",
            Self::Rollback => "counter cannot go backwards",
            Self::Unsupported => "not supported by this part",
            Self::BootRefused => "secure boot refused the image",
            Self::SwapInProgress => "an update swap is in progress",
            Self::MalformedWrappedKey => "wrapped key is malformed",
            Self::UnsupportedKeyType => "wrapped key is not a P-256 key",
            Self::NoUnwrapKey => "no identity key in slot 0 to unwrap with",
            Self::UnwrapFailed => "wrapped key does not unwrap under this device's key",
        })
    }
}

/// A device command, named in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// Read the unique id.
    Uid,
    /// Read the slot configuration and lock state.
    Info,
    /// Generate a key pair in a slot.
    GenKey,
    /// Read a key slot's public key.
    PublicKey,
    /// Sign a digest.
    Sign,
    /// Read a data slot.
    Read,
    /// Write a data slot.
    Write,
    /// Random bytes.
    Random,
    /// Lock a zone or slot.
    Lock,
    /// Read or increment a counter.
    Counter,
    /// Program a fuse.
    Fuse,
    /// Write or read a boot slot in flash.
    Flash,
    /// Boot.
    Boot,
    /// Change the slot configuration.
    Configure,
    /// Unwrap a key inside the part and install it into a secret slot.
    InstallSecret,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Uid => "read uid",
            Self::Info => "read info",
            Self::GenKey => "generate key",
            Self::PublicKey => "read public key",
            Self::Sign => "sign",
            Self::Read => "read",
            Self::Write => "write",
            Self::Random => "random",
            Self::Lock => "lock",
            Self::Counter => "counter",
            Self::Fuse => "program fuse",
            Self::Flash => "flash",
            Self::Boot => "boot",
            Self::Configure => "configure",
            Self::InstallSecret => "install wrapped secret",
        })
    }
}

/// A device operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The socket has no contact with a device (empty socket, bent pin): nothing was executed.
    #[error("no contact with the device")]
    NoContact,
    /// The command did not reach the device intact (bus or CRC error): nothing was executed.
    #[error("{op}: write to the device failed; nothing was changed")]
    WriteFailed {
        /// The command.
        op: Op,
    },
    /// Power was lost while the device executed the command. What the command changes is
    /// either fully done or not done at all; the answer is lost.
    #[error("{op}: power lost during the command")]
    PowerLoss {
        /// The command.
        op: Op,
    },
    /// The device did not answer in time. It may have executed the command.
    #[error("{op}: no answer within {timeout_ms} ms")]
    Timeout {
        /// The command.
        op: Op,
        /// The socket's timeout.
        timeout_ms: u64,
    },
    /// The device refused the command with its own status code.
    #[error("{op}{}: {refusal} ({status})", slot.map(|s| format!(" slot {s}")).unwrap_or_default())]
    Refused {
        /// The command.
        op: Op,
        /// The slot, where the command names one.
        slot: Option<SlotId>,
        /// Why.
        refusal: Refusal,
        /// The part's status code.
        status: Status,
    },
    /// Secure boot refused the image in a boot slot.
    #[error("boot: {slot} image refused: {reason}")]
    ImageRefused {
        /// The slot.
        slot: BootSlot,
        /// Why.
        reason: ImageRefusal,
    },
    /// The device's cryptographic engine failed.
    #[error("{op}: cryptographic engine failed")]
    Crypto {
        /// The command.
        op: Op,
    },
}

impl Error {
    /// The refusal reason, when the device refused the command.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            Self::Refused { refusal, .. } => Some(*refusal),
            _ => None,
        }
    }
}
