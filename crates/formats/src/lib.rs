#![doc = include_str!("../README.md")]

mod error;
pub mod job;
pub mod records;

pub use error::JobError;
pub use job::{JobFirmware, JobPackage, JobSpec, LockPolicy, PartKind, SlotMap};
