#![doc = include_str!("../README.md")]

mod attest;
mod device;
mod error;
pub mod file;
mod fleet;
mod secure_boot;
pub mod sim;
mod socket;
mod vendor;

pub use attest::{AttestationError, KeyAttestation};
pub use device::{
    Device, DeviceKind, LockState, ReadPolicy, SlotConfig, SlotId, SlotInfo, SlotKind, WritePolicy,
    Zone,
};
pub use error::{Error, Op, Refusal, Status};
pub use fleet::{Fleet, FleetError};
pub use secure_boot::{
    BootOutcome, BootSlot, ImageRefusal, SecureBoot, SwapOutcome, UpdateRequest,
};
pub use sim::SimDevice;
pub use socket::{Fault, FaultCounts, FaultRule, Socket, Trigger};
pub use vendor::{SiliconVendor, VendorError, MAX_UIDS};

/// Size limits of the simulated parts and their files.
pub mod limits {
    /// Largest data or certificate slot, in bytes.
    pub const SLOT_BYTES: u16 = 4096;
    /// Largest firmware image in one boot slot of a secure MCU, in bytes.
    pub const BOOT_SLOT_BYTES: usize = 128 * 1024;
    /// Largest device file, in bytes: two full boot slots, a full scratch area and 32 full
    /// slots fit.
    pub const DEVICE_FILE_BYTES: usize = 640 * 1024;
}
