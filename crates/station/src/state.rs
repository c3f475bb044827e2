//! The station's per-device state for one run, and how it resumes: the HSM's good devices and
//! issued count at the start, the budget of fresh devices it may still start, the attempts per
//! UID, and each device's [`Outcome`]. Nothing here is kept across runs: a run rebuilds it from
//! the HSM (see [`crate::lifecycle`]), so a crash loses nothing.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

use trustfab_device::Error as DeviceError;
use trustfab_formats::records::DeviceGood;
use trustfab_formats::JobSpec;
use trustfab_hsm::{DeviceKey, HsmClient, Issued, Reservation};
use trustfab_types::{DeviceUid, Serial};

use crate::error::RunError;
use crate::flow::Step;
use crate::run::RunOptions;
use crate::summary::Progress;

pub(crate) fn len64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// How one device's attempt ended.
pub(crate) enum Outcome {
    Good(Box<DeviceGood>),
    Failed {
        uid: Option<DeviceUid>,
        step: Step,
        reason: String,
        serial: Option<Serial>,
        transient: bool,
    },
    AlreadyGood,
    /// The part holds a certificate another job (or the HSM operator, outside a job) had
    /// issued for it: neither good nor failed for this job, left as it is.
    Elsewhere {
        uid: DeviceUid,
        job: Option<trustfab_types::JobId>,
    },
    NotNeeded,
    /// The run was stopped before the device started: it goes back untouched.
    Stopped,
}

impl Outcome {
    /// A device error at `step`: transient when another attempt may succeed.
    pub(crate) fn failed(
        uid: Option<&DeviceUid>,
        step: Step,
        serial: Option<&Serial>,
        e: &DeviceError,
    ) -> Self {
        Self::Failed {
            uid: uid.cloned(),
            step,
            reason: e.to_string(),
            serial: serial.cloned(),
            transient: transient(e),
        }
    }

    /// A final refusal at `step`.
    pub(crate) fn refused(
        uid: &DeviceUid,
        step: Step,
        serial: Option<&Serial>,
        reason: String,
    ) -> Self {
        Self::Failed {
            uid: Some(uid.clone()),
            step,
            reason,
            serial: serial.cloned(),
            transient: false,
        }
    }
}

pub(crate) struct IssueRequest {
    pub(crate) key: DeviceKey,
    pub(crate) reply: Sender<IssueReply>,
}

/// The HSM's answer for one device.
pub(crate) enum IssueReply {
    Issued(Issued),
    /// The job's reservation has no unit left for it (other stations used them).
    Full,
    Refused(String),
}

/// How many fresh devices the station may still start: the reservation's units left when the
/// run began, less the devices in flight. Scheduling only, never accounting: the HSM refuses
/// what the reservation does not hold whatever this says; it only spares parts a key
/// generation that could not be certified.
#[derive(Default)]
pub(crate) struct StartBudget {
    pub(crate) available: u64,
    pub(crate) in_flight: u64,
}

pub(crate) struct Shared<'a> {
    pub(crate) hsm: &'a dyn HsmClient,
    pub(crate) reservation: &'a Reservation,
    pub(crate) spec: &'a JobSpec,
    pub(crate) opts: &'a RunOptions,
    pub(crate) root: Vec<u8>,
    /// The device CA certificate, when the product has one: the chain's only intermediate.
    pub(crate) intermediates: Vec<Vec<u8>>,
    /// For a job with firmware: the product's family key point (empty when not encrypted).
    pub(crate) family_point: Option<Vec<u8>>,
    pub(crate) good: Mutex<HashSet<Vec<u8>>>,
    pub(crate) budget: Mutex<StartBudget>,
    pub(crate) budget_cv: Condvar,
    pub(crate) attempts: Mutex<HashMap<Vec<u8>, u32>>,
    pub(crate) issued: AtomicU64,
    pub(crate) good_count: AtomicU64,
    pub(crate) failed_attempts: AtomicU64,
    pub(crate) handled: AtomicU64,
    pub(crate) fatal: Mutex<Option<RunError>>,
}

pub(crate) fn guard<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared<'_> {
    pub(crate) fn progress(&self) -> Progress {
        Progress {
            good: self.good_count.load(Ordering::Relaxed),
            failed: self.failed_attempts.load(Ordering::Relaxed),
            issued: self.issued.load(Ordering::Relaxed),
            quantity: self.spec.quantity,
            handled: self.handled.load(Ordering::Relaxed),
        }
    }

    /// Takes a unit of the job's quantity for a fresh device; `false` when the job needs no more.
    pub(crate) fn acquire(&self) -> bool {
        let mut p = guard(&self.budget);
        loop {
            if p.available > 0 {
                p.available -= 1;
                p.in_flight += 1;
                return true;
            }
            if p.in_flight == 0 || self.opts.stop.load(Ordering::Relaxed) {
                return false;
            }
            p = self
                .budget_cv
                .wait_timeout(p, Duration::from_millis(50))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The reservation is used up (by other stations too): start no more fresh devices.
    pub(crate) fn exhausted(&self) {
        guard(&self.budget).available = 0;
        self.budget_cv.notify_all();
    }

    /// Ends a fresh device's hold: `spent` when its certificate was issued.
    pub(crate) fn release(&self, spent: bool) {
        let mut p = guard(&self.budget);
        p.in_flight = p.in_flight.saturating_sub(1);
        if !spent {
            p.available += 1;
        }
        drop(p);
        self.budget_cv.notify_all();
    }

    pub(crate) fn fail(&self, e: RunError) {
        guard(&self.fatal).get_or_insert(e);
        self.opts.stop.store(true, Ordering::Relaxed);
        self.budget_cv.notify_all();
    }
}

/// A socket fault another attempt may get past.
pub(crate) fn transient(e: &DeviceError) -> bool {
    matches!(
        e,
        DeviceError::NoContact
            | DeviceError::WriteFailed { .. }
            | DeviceError::PowerLoss { .. }
            | DeviceError::Timeout { .. }
    )
}
