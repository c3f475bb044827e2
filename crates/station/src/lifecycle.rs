//! Opening a job on this station: the reservation must be the current kind and its job open;
//! the product's chain and, for a job with firmware, the image given are checked; the
//! per-device state starts from what the HSM says the job has (see [`crate::state`]). The
//! station never closes a job: the HSM's `close` credits back what the reservation has left.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Condvar, Mutex};

use trustfab_formats::PartKind;
use trustfab_hsm::{HsmClient, IssueError, JobOpError, Reservation};

use crate::error::RunError;
use crate::firmware::check_image;
use crate::run::RunOptions;
use crate::state::{len64, Shared, StartBudget};

/// The device kind a job's part kind names.
pub fn device_kind(k: PartKind) -> trustfab_device::DeviceKind {
    match k {
        PartKind::SecureElement => trustfab_device::DeviceKind::SecureElement,
        PartKind::SecureMcu => trustfab_device::DeviceKind::SecureMcu,
    }
}

/// Opens the job of `reservation` for a run: refuses a legacy reservation and a closed job,
/// checks the firmware image, and rebuilds the run's state from the HSM alone (its
/// certificates, good devices and the reservation's units left).
pub(crate) fn open<'a>(
    hsm: &'a dyn HsmClient,
    reservation: &'a Reservation,
    opts: &'a RunOptions,
) -> Result<Shared<'a>, RunError> {
    let spec = reservation.spec();
    if reservation.is_legacy() {
        return Err(RunError::Issue(IssueError::LegacyJob {
            job: spec.job_id.clone(),
        }));
    }
    let st = hsm.job_status(reservation)?;
    if let Some(seq) = st.closed_seq {
        return Err(RunError::Job(JobOpError::Closed {
            job: spec.job_id.clone(),
            seq,
        }));
    }
    let (root, device_ca) = hsm.chain(&spec.product)?;
    let family_point = match &spec.firmware {
        Some(fw) => Some(check_image(hsm, spec, fw, opts.image.as_deref())?),
        None => None,
    };
    let issued_start = len64(st.issued.len());
    Ok(Shared {
        hsm,
        reservation,
        spec,
        opts,
        root,
        intermediates: device_ca.into_iter().collect(),
        family_point,
        budget: Mutex::new(StartBudget {
            available: st.remaining,
            in_flight: 0,
        }),
        budget_cv: Condvar::new(),
        attempts: Mutex::new(HashMap::new()),
        issued: AtomicU64::new(issued_start),
        good_count: AtomicU64::new(len64(st.good.len())),
        failed_attempts: AtomicU64::new(0),
        handled: AtomicU64::new(0),
        fatal: Mutex::new(None),
        good: Mutex::new(st.good),
    })
}
