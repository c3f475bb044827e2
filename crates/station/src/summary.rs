//! What a run reports: the progress snapshots given to a callback while it runs, and the
//! [`Summary`] at its end (the binary prints it, also as JSON), with each device's last failure.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::flow::Step;
use crate::state::Shared;

/// A progress snapshot, given to the callback of [`RunOptions::progress`](crate::RunOptions::progress).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Devices of the job that are good (earlier runs included).
    pub good: u64,
    /// Device attempts that failed in this run.
    pub failed: u64,
    /// Certificates the job has (earlier runs included).
    pub issued: u64,
    /// The job's quantity.
    pub quantity: u64,
    /// Devices that went through a socket in this run.
    pub handled: u64,
}

/// Called with a progress snapshot after every device.
pub type ProgressFn = dyn Fn(&Progress) + Send + Sync;

/// One device's final failure in a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The UID (hex), when it was read.
    pub uid: Option<String>,
    /// The step.
    pub step: Step,
    /// Why.
    pub reason: String,
    /// The certificate serial (hex), when the certificate had been issued.
    pub serial: Option<String>,
}

/// A part that holds a certificate of this product issued for another job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Elsewhere {
    /// The part's UID, hex.
    pub uid: String,
    /// The job whose reservation paid for its certificate; `None` when the HSM operator issued
    /// it outside a job, or an earlier release did.
    pub job: Option<trustfab_types::JobId>,
}

impl fmt::Display for Elsewhere {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.job {
            Some(j) => write!(f, "{}: already provisioned by job {j}", self.uid),
            None => write!(f, "{}: already provisioned outside a job", self.uid),
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// The job id.
    pub job: trustfab_types::JobId,
    /// The product.
    pub product: trustfab_types::ProductKey,
    /// The job's quantity.
    pub quantity: u64,
    /// Certificates the job has, earlier runs included.
    pub issued: u64,
    /// Good devices, earlier runs included.
    pub good: u64,
    /// Devices with a certificate that are not good.
    pub failed_after_issue: u64,
    /// Devices made good in this run.
    pub good_this_run: u64,
    /// Devices that resumed from an earlier attempt's certificate in this run.
    pub resumed: u64,
    /// Devices whose last attempt in this run failed, with the reason.
    pub failures: Vec<Failure>,
    /// Failed attempts in this run (retried ones included).
    pub failed_attempts: u64,
    /// Devices found good already.
    pub already_good: u64,
    /// Devices not needed (the job had its quantity), left untouched.
    pub not_needed: u64,
    /// Parts another job had provisioned (their certificate is that job's): neither good nor
    /// failed for this one, left as they are.
    pub elsewhere: Vec<Elsewhere>,
    /// Whether the run was stopped before the supply was used up.
    pub stopped: bool,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Per-device latency in this run, microseconds, sorted.
    pub latencies_us: Vec<u32>,
}

impl Summary {
    /// Devices made good per second in this run.
    pub fn devices_per_sec(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            u64_f64(self.good_this_run) / s
        } else {
            0.0
        }
    }

    /// The `q`-quantile (0..=1) of the per-device latency.
    pub fn latency_quantile(&self, q: f64) -> Duration {
        if self.latencies_us.is_empty() {
            return Duration::ZERO;
        }
        let last = self.latencies_us.len() - 1;
        let i = (u64_f64(u64::try_from(last).unwrap_or(0)) * q.clamp(0.0, 1.0)).round();
        // `i` is in 0..=last by construction.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let i = (i as usize).min(last);
        Duration::from_micros(u64::from(self.latencies_us.get(i).copied().unwrap_or(0)))
    }

    /// Whether the job has its quantity of good devices.
    pub fn complete(&self) -> bool {
        self.good >= self.quantity
    }
}

#[allow(clippy::cast_precision_loss)] // counts far below 2^53
fn u64_f64(n: u64) -> f64 {
    n as f64
}

/// What the sockets of a run counted, summed up at its end.
#[derive(Default)]
pub(crate) struct RunTally {
    pub(crate) good: u64,
    pub(crate) resumed: u64,
    pub(crate) already_good: u64,
    pub(crate) not_needed: u64,
    pub(crate) elsewhere: Vec<Elsewhere>,
    pub(crate) last_failure: HashMap<Vec<u8>, Failure>,
    pub(crate) latencies_us: Vec<u32>,
}

impl RunTally {
    /// The run's summary: the tally, and the counts the HSM's answers kept in `sh`.
    pub(crate) fn summary(self, sh: &Shared<'_>, elapsed: Duration) -> Summary {
        let spec = sh.spec;
        let mut latencies = self.latencies_us;
        latencies.sort_unstable();
        let issued = sh.issued.load(Ordering::Relaxed);
        let good = sh.good_count.load(Ordering::Relaxed);
        let failures: Vec<Failure> = self.last_failure.into_values().collect();
        Summary {
            job: spec.job_id.clone(),
            product: spec.product.clone(),
            quantity: spec.quantity,
            issued,
            good,
            failed_after_issue: issued.saturating_sub(good),
            good_this_run: self.good,
            resumed: self.resumed,
            failed_attempts: sh.failed_attempts.load(Ordering::Relaxed),
            failures,
            already_good: self.already_good,
            not_needed: self.not_needed,
            elsewhere: self.elsewhere,
            stopped: sh.opts.stop.load(Ordering::Relaxed),
            elapsed,
            latencies_us: latencies,
        }
    }
}
