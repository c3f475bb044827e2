//! Each part's default slot layout and the mapping of refusals to its own status codes
//! (`docs/devices.md`, "Slot layouts" and "Status codes").

use crate::device::{DeviceKind, ReadPolicy, SlotConfig, SlotId, SlotKind, WritePolicy};
use crate::error::{Refusal, Status};

/// Monotonic counters per part (ATECC608: `Counter[0]` and `Counter[1]`).
pub const COUNTERS: usize = 2;

/// Largest counter value (ATECC608: 2,097,151).
pub const COUNTER_LIMIT: u32 = 2_097_151;

const fn slot(
    kind: SlotKind,
    read: ReadPolicy,
    write: WritePolicy,
    lockable: bool,
    capacity: u16,
) -> SlotConfig {
    SlotConfig {
        kind,
        read,
        write,
        lockable,
        capacity,
    }
}

/// The slot layout a part leaves the silicon vendor with, sorted by slot number.
///
/// The secure element follows the ATECC608 TrustFLEX layout (slot 0 the permanent identity key,
/// slots 2–4 regenerable keys, 5 a secret, 8 a 416-byte data slot, 10–12 device, signer and root
/// certificates); certificate slots hold full DER rather than Microchip's compressed form, so they
/// are larger. The secure MCU keeps the same numbers for the same roles so that a job package can
/// address both alike.
pub fn default_layout(kind: DeviceKind) -> Vec<(SlotId, SlotConfig)> {
    use ReadPolicy::{Clear, Never};
    use SlotKind::{Certificate, Data, PrivateKey, Secret};
    use WritePolicy::{Always, UntilLock};
    match kind {
        DeviceKind::SecureElement => vec![
            (0, slot(PrivateKey, Never, UntilLock, true, 0)),
            (2, slot(PrivateKey, Never, Always, false, 0)),
            (3, slot(PrivateKey, Never, Always, false, 0)),
            (4, slot(PrivateKey, Never, Always, false, 0)),
            (5, slot(Secret, Never, UntilLock, false, 32)),
            (8, slot(Data, Clear, Always, false, 416)),
            (10, slot(Certificate, Clear, UntilLock, true, 2048)),
            (11, slot(Certificate, Clear, UntilLock, true, 2048)),
            (12, slot(Certificate, Clear, UntilLock, true, 2048)),
            (14, slot(Data, Clear, UntilLock, true, 72)),
        ],
        DeviceKind::SecureMcu => vec![
            (0, slot(PrivateKey, Never, UntilLock, false, 0)),
            (2, slot(PrivateKey, Never, Always, false, 0)),
            (5, slot(Secret, Never, UntilLock, false, 32)),
            (8, slot(Data, Clear, Always, false, 4096)),
            (10, slot(Certificate, Clear, UntilLock, false, 4096)),
            (11, slot(Certificate, Clear, UntilLock, false, 4096)),
            (12, slot(Certificate, Clear, UntilLock, false, 4096)),
        ],
    }
}

/// ATECC608 status bytes (data sheet, "Status/Error Codes").
const ATECC_PARSE_ERROR: u8 = 0x03;
const ATECC_EXECUTION_ERROR: u8 = 0x0F;

/// PSA Certified status codes (`psa_status_t`, PSA Certified Crypto API §"Status codes").
const PSA_ERROR_NOT_PERMITTED: i32 = -133;
const PSA_ERROR_NOT_SUPPORTED: i32 = -134;
const PSA_ERROR_INVALID_ARGUMENT: i32 = -135;
const PSA_ERROR_INVALID_HANDLE: i32 = -136;
const PSA_ERROR_BAD_STATE: i32 = -137;
const PSA_ERROR_ALREADY_EXISTS: i32 = -139;
const PSA_ERROR_DOES_NOT_EXIST: i32 = -140;
const PSA_ERROR_INSUFFICIENT_STORAGE: i32 = -142;
const PSA_ERROR_INVALID_SIGNATURE: i32 = -149;

/// The status code `kind` answers `refusal` with.
pub(crate) fn status(kind: DeviceKind, refusal: Refusal) -> Status {
    match kind {
        DeviceKind::SecureElement => Status::Atecc(match refusal {
            // "the length, command opcode, or parameters are illegal regardless of the state"
            Refusal::NoSuchSlot
            | Refusal::TooLong
            | Refusal::NoSuchCounter
            | Refusal::Unsupported
            | Refusal::MalformedWrappedKey
            | Refusal::UnsupportedKeyType => ATECC_PARSE_ERROR,
            // "could not be executed by the device in its current state"
            _ => ATECC_EXECUTION_ERROR,
        }),
        DeviceKind::SecureMcu => Status::Psa(match refusal {
            Refusal::NoSuchSlot | Refusal::NoKey | Refusal::NoSuchCounter => {
                PSA_ERROR_DOES_NOT_EXIST
            }
            // psa_import_key: "the key data is not correctly formatted".
            Refusal::WrongSlotKind | Refusal::MalformedWrappedKey => PSA_ERROR_INVALID_ARGUMENT,
            // A key identifier that names no key.
            Refusal::NoUnwrapKey => PSA_ERROR_INVALID_HANDLE,
            Refusal::TooLong => PSA_ERROR_INSUFFICIENT_STORAGE,
            Refusal::NotReadable
            | Refusal::WriteProtected
            | Refusal::SlotLocked
            | Refusal::NotLockable
            | Refusal::Rollback => PSA_ERROR_NOT_PERMITTED,
            Refusal::FuseProgrammed => PSA_ERROR_ALREADY_EXISTS,
            Refusal::Unsupported | Refusal::UnsupportedKeyType => PSA_ERROR_NOT_SUPPORTED,
            // As psa_aead_decrypt answers a ciphertext that is not authentic.
            Refusal::BootRefused | Refusal::UnwrapFailed => PSA_ERROR_INVALID_SIGNATURE,
            _ => PSA_ERROR_BAD_STATE,
        }),
    }
}
