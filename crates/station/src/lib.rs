#![doc = include_str!("../README.md")]

mod error;
pub mod job;
pub mod records;
mod station;
pub mod supply;

pub use error::{CreateError, JobError, RunError};
pub use job::{JobFirmware, JobPackage, JobSpec, LockPolicy, PartKind, SlotMap};
pub use station::{
    close_job, create_job, identity_point, job_firmware, open_job, run, CreatedJob, Failure,
    JobState, Progress, ProgressFn, RunOptions, Step, Summary, ISSUERS,
};
pub use supply::{Faults, FilePart, FileSupply, FleetSupply, MadeSupply, Supply};
