#![doc = include_str!("../README.md")]

mod error;
mod station;
pub mod supply;

pub use error::RunError;
pub use station::{
    device_kind, job_firmware, run, Failure, Progress, ProgressFn, RunOptions, Step, Summary,
    ISSUERS,
};
pub use supply::{Faults, FilePart, FileSupply, FleetSupply, MadeSupply, Supply};
pub use trustfab_formats::{JobFirmware, JobPackage, JobSpec, LockPolicy, PartKind, SlotMap};
pub use trustfab_hsm::{HsmClient, JobStatus, Reservation};
