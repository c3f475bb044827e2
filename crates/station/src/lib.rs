#![doc = include_str!("../README.md")]
//!
//! # Running a job on many sockets, against the HSM's client boundary
//!
//! The station holds a `&dyn HsmClient` and the job's [`Reservation`], nothing that reaches the
//! ledger: the HSM spends a certificate from the job's reservation in the same append that
//! records it, and records every device outcome the station reports. So the count is the HSM's
//! by construction; what the station keeps (how many devices to start) only saves parts from a
//! key generation that the HSM would refuse to certify.
//!
//! Per device: 1 read the UID, 2 key generation inside the device, 3 issuance (batched,
//! [`ISSUERS`] batches in flight), 4 and 5 certificates into write-protected slots, on a job with
//! firmware the family key the HSM wraps for the device's certified key, the root-of-trust
//! fuse, the image as an update and one verified boot, 6 lock, 7 verify. Each device's outcome
//! goes to the HSM, many per transaction.
//!
//! A run rebuilds the job's state from the HSM alone (its certificates and good devices), so the
//! station keeps nothing of its own that a crash could lose.
//!
//! The modules follow the run: `lifecycle` opens the job, `state` is the per-device state and
//! resume, `run` drives the sockets in parallel, `flow` is steps 1 to 7 on one device,
//! `firmware` the firmware step, `summary` what a run reports; `supply` gives the parts.

mod error;
mod firmware;
mod flow;
mod lifecycle;
mod run;
mod state;
mod summary;
pub mod supply;

pub use error::RunError;
pub use firmware::job_firmware;
pub use flow::Step;
pub use lifecycle::device_kind;
pub use run::{run, RunOptions, ISSUERS};
pub use summary::{Elsewhere, Failure, Progress, ProgressFn, Summary};
pub use supply::{Faults, FilePart, FileSupply, FleetSupply, MadeSupply, Supply};
pub use trustfab_formats::{JobFirmware, JobPackage, JobSpec, LockPolicy, PartKind, SlotMap};
pub use trustfab_hsm::{HsmClient, JobStatus, Reservation};
