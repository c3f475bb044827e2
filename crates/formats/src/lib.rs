#![doc = include_str!("../README.md")]

pub mod binding;
mod error;
pub mod job;
pub mod package;
pub mod records;
pub mod report;

pub use error::JobError;
pub use job::{JobFirmware, JobPackage, JobSpec, LockPolicy, PartKind, SlotMap};
