//! Running a job on many sockets, against the HSM's client boundary.
//!
//! The station holds a `&dyn HsmClient` and the job's [`Reservation`], nothing that reaches the
//! ledger: the HSM spends a certificate from the job's reservation in the same append that
//! records it, and records every device outcome the station reports. So the count is the HSM's
//! by construction; what the station keeps below (how many devices to start) only saves parts
//! from a key generation that the HSM would refuse to certify.
//!
//! Per device: 1 read the UID, 2 key generation inside the device, 3 issuance (batched,
//! [`ISSUERS`] batches in flight), 4 and 5 certificates into write-protected slots, on a job with
//! firmware the family key the HSM wraps for the device's certified key, the root-of-trust
//! fuse, the image as an update and one verified boot, 6 lock, 7 verify. Each device's outcome
//! goes to the HSM, many per transaction.
//!
//! A run rebuilds the job's state from the HSM alone (its certificates and good devices), so the
//! station keeps nothing of its own that a crash could lose.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use trustfab_device::sim::{BootOutcome, BootSlot, SwapOutcome, UpdateRequest};
use trustfab_device::{Device, Error as DeviceError, SlotKind, Zone};
use trustfab_formats::records::{Bytes, DeviceFailed, DeviceGood, Digest};
use trustfab_formats::{JobFirmware, JobSpec, LockPolicy, PartKind};
use trustfab_hsm::{DeviceKey, DeviceOutcome, HsmClient, IssueError, Issued, Reservation};
use trustfab_pki::{validate, Policy, PublicKey, Purpose};
use trustfab_types::{Clock, DeviceUid, Serial};

use trustfab_hsm::JobOpError;

use crate::error::RunError;
use crate::supply::Supply;

/// The device kind a job's part kind names.
pub fn device_kind(k: PartKind) -> trustfab_device::DeviceKind {
    match k {
        PartKind::SecureElement => trustfab_device::DeviceKind::SecureElement,
        PartKind::SecureMcu => trustfab_device::DeviceKind::SecureMcu,
    }
}

/// The per-device steps, numbered as in DESIGN.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Step {
    /// 1: read the device UID.
    ReadUid = 1,
    /// 2: generate the identity key pair inside the device (attested when required).
    KeyGen = 2,
    /// 3: the HSM issues the certificate.
    Issue = 3,
    /// 4: write the device certificate (and the device CA).
    WriteCert = 4,
    /// 5: write the root CA certificate.
    WriteRoot = 5,
    /// 6: lock.
    Lock = 6,
    /// 7: verify: read back, chain to the root, challenge-response.
    Verify = 7,
    /// Between 5 and 6 on a job with firmware: family key, root-of-trust fuse, image, boot.
    Firmware = 8,
}

impl Step {
    /// The step's name in records and reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::ReadUid => "read-uid",
            Self::KeyGen => "keygen",
            Self::Issue => "issue",
            Self::WriteCert => "write-cert",
            Self::WriteRoot => "write-root",
            Self::Lock => "lock",
            Self::Verify => "verify",
            Self::Firmware => "firmware",
        }
    }

    fn number(self) -> u8 {
        self as u8
    }
}

/// The firmware step of a job for `product`, from the image file `image` named `name`: the image
/// must be signed by the product's boot key (checked as far as its ciphertext allows, see
/// [`trustfab_firmware::verify_sealed`]) and carry a security counter; an encrypted image needs
/// the product's family key, which the station installs into `secret_slot`.
///
/// # Errors
/// [`JobOpError::Firmware`] naming what does not fit, or an HSM error.
pub fn job_firmware(
    hsm: &dyn HsmClient,
    product: &str,
    name: &str,
    image: &[u8],
    secret_slot: trustfab_device::SlotId,
) -> Result<JobFirmware, JobOpError> {
    let bad = |m: String| JobOpError::Firmware(m);
    let fw = hsm
        .firmware(product)
        .map_err(|e| bad(format!("{e}")))?
        .ok_or_else(|| bad(format!("product {product} has no firmware in its package")))?;
    let v = trustfab_firmware::verify_sealed(
        image,
        trustfab_firmware::TrustAnchor::KeyHash(&fw.boot_key_hash),
    )
    .map_err(|e| bad(format!("{name}: {e}")))?;
    let security_counter = v
        .security_counter
        .ok_or_else(|| bad(format!("{name}: the image has no security counter")))?;
    let encrypted = v.header.is_encrypted();
    if encrypted && fw.family_key.is_none() {
        return Err(bad(format!(
            "{name} is encrypted and product {product} has no family key to decrypt it"
        )));
    }
    Ok(JobFirmware {
        name: name.to_owned(),
        file_sha256: Bytes(sha256(image).to_vec()),
        image_hash: Bytes(v.hash.to_vec()),
        security_counter,
        boot_key_hash: Bytes(fw.boot_key_hash.to_vec()),
        family: fw.family,
        encrypted,
        secret_slot,
    })
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b).as_ref());
    out
}

fn len64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// A progress snapshot, given to the callback of [`RunOptions::progress`].
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

/// How to run a job.
#[derive(Clone)]
pub struct RunOptions {
    /// Sockets driven in parallel (threads).
    pub sockets: usize,
    /// Most devices per HSM issuance call.
    pub batch: usize,
    /// Attempts per device before a transient fault is final.
    pub max_attempts: u32,
    /// Set to stop: no new device is started; devices in the sockets finish.
    pub stop: Arc<AtomicBool>,
    /// Called after every device.
    pub progress: Option<Arc<ProgressFn>>,
    /// The time for chain and attestation validation (the HSM's clock, normally).
    pub clock: Arc<dyn Clock>,
    /// The image file of a job with a firmware step (as mastered: encrypted when the job says
    /// so); its SHA-256 must be the job's.
    pub image: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("sockets", &self.sockets)
            .field("batch", &self.batch)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl RunOptions {
    /// `sockets` sockets, batches of 64, 3 attempts.
    pub fn new(sockets: usize, clock: Arc<dyn Clock>) -> Self {
        Self {
            sockets: sockets.max(1),
            batch: 64,
            max_attempts: 3,
            stop: Arc::new(AtomicBool::new(false)),
            progress: None,
            clock,
            image: None,
        }
    }
}

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

/// What a run did.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// The job id.
    pub job: String,
    /// The product key.
    pub product: String,
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

enum Outcome {
    Good(DeviceGood),
    Failed {
        uid: Option<DeviceUid>,
        step: Step,
        reason: String,
        serial: Option<Serial>,
        transient: bool,
    },
    AlreadyGood,
    NotNeeded,
    /// The run was stopped before the device started: it goes back untouched.
    Stopped,
}

impl Outcome {
    /// A device error at `step`: transient when another attempt may succeed.
    fn failed(
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
    fn refused(uid: &DeviceUid, step: Step, serial: Option<&Serial>, reason: String) -> Self {
        Self::Failed {
            uid: Some(uid.clone()),
            step,
            reason,
            serial: serial.cloned(),
            transient: false,
        }
    }
}

struct IssueRequest {
    key: DeviceKey,
    reply: Sender<IssueReply>,
}

/// The HSM's answer for one device.
enum IssueReply {
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
struct StartBudget {
    available: u64,
    in_flight: u64,
}

struct Shared<'a> {
    hsm: &'a dyn HsmClient,
    reservation: &'a Reservation,
    spec: &'a JobSpec,
    opts: &'a RunOptions,
    root: Vec<u8>,
    /// The device CA certificate, when the product has one: the chain's only intermediate.
    intermediates: Vec<Vec<u8>>,
    /// For a job with firmware: the product's family key point (empty when not encrypted).
    family_point: Option<Vec<u8>>,
    good: Mutex<HashSet<Vec<u8>>>,
    budget: Mutex<StartBudget>,
    budget_cv: Condvar,
    attempts: Mutex<HashMap<Vec<u8>, u32>>,
    issued: AtomicU64,
    good_count: AtomicU64,
    failed_attempts: AtomicU64,
    handled: AtomicU64,
    fatal: Mutex<Option<RunError>>,
}

/// The image given for a job with firmware is the one it names; returns the family key point
/// the devices must report (empty for a plaintext image).
fn check_image(
    hsm: &dyn HsmClient,
    spec: &JobSpec,
    fw: &JobFirmware,
    image: Option<&[u8]>,
) -> Result<Vec<u8>, RunError> {
    let bad = |reason: String| RunError::Image {
        job: spec.job_id.clone(),
        reason,
    };
    let image = image.ok_or_else(|| {
        bad(format!(
            "the job programs {} and no image was given",
            fw.name
        ))
    })?;
    if sha256(image).as_slice() != fw.file_sha256.0.as_slice() {
        return Err(bad(format!(
            "the image given is not {} (its SHA-256 differs from the job's)",
            fw.name
        )));
    }
    if !fw.encrypted {
        return Ok(Vec::new());
    }
    hsm.firmware(&spec.product)?
        .and_then(|p| p.family_key)
        .ok_or_else(|| bad("the product has no family key".into()))
}

fn guard<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared<'_> {
    fn progress(&self) -> Progress {
        Progress {
            good: self.good_count.load(Ordering::Relaxed),
            failed: self.failed_attempts.load(Ordering::Relaxed),
            issued: self.issued.load(Ordering::Relaxed),
            quantity: self.spec.quantity,
            handled: self.handled.load(Ordering::Relaxed),
        }
    }

    /// Takes a unit of the job's quantity for a fresh device; `false` when the job needs no more.
    fn acquire(&self) -> bool {
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
    fn exhausted(&self) {
        guard(&self.budget).available = 0;
        self.budget_cv.notify_all();
    }

    /// Ends a fresh device's hold: `spent` when its certificate was issued.
    fn release(&self, spent: bool) {
        let mut p = guard(&self.budget);
        p.in_flight = p.in_flight.saturating_sub(1);
        if !spent {
            p.available += 1;
        }
        drop(p);
        self.budget_cv.notify_all();
    }

    fn fail(&self, e: RunError) {
        guard(&self.fatal).get_or_insert(e);
        self.opts.stop.store(true, Ordering::Relaxed);
        self.budget_cv.notify_all();
    }
}

/// Runs a job on the parts of `supply`, `opts.sockets` at a time, until the job has its
/// quantity, the supply is used up, or `opts.stop` is set. Resumes where any earlier run
/// stopped; other stations may run the same job at once.
///
/// # Errors
/// [`RunError::Job`] (another HSM's job, or a closed one), or an HSM or supply error that
/// stopped the run. Device failures are not errors: they are in the [`Summary`].
pub fn run<S: Supply>(
    hsm: &dyn HsmClient,
    reservation: &Reservation,
    supply: &S,
    opts: &RunOptions,
) -> Result<Summary, RunError> {
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
    let shared = Shared {
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
    };
    let started = Instant::now();
    let (issue_tx, issue_rx) = mpsc::channel::<IssueRequest>();
    let (record_tx, record_rx) = mpsc::channel::<DeviceOutcome>();
    let results = Mutex::new(RunTally::default());

    let issue_rx = Mutex::new(issue_rx);
    thread::scope(|scope| {
        let sh = &shared;
        let issue_rx = &issue_rx;
        let issuers: Vec<_> = (0..ISSUERS)
            .map(|_| scope.spawn(move || issuer_loop(sh, issue_rx)))
            .collect();
        let recorder = scope.spawn(move || recorder_loop(sh, &record_rx));
        let mut sockets = Vec::new();
        for _ in 0..opts.sockets {
            let issue_tx = issue_tx.clone();
            let record_tx = record_tx.clone();
            let results = &results;
            sockets.push(scope.spawn(move || {
                socket_loop(sh, supply, &issue_tx, &record_tx, results);
            }));
        }
        drop(issue_tx);
        drop(record_tx);
        for s in sockets {
            if s.join().is_err() {
                sh.fail(RunError::Supply("a socket thread panicked".into()));
            }
        }
        let issuers_ok = issuers.into_iter().all(|h| h.join().is_ok());
        if !issuers_ok || recorder.join().is_err() {
            sh.fail(RunError::Supply(
                "the issuer or recorder thread panicked".into(),
            ));
        }
    });

    if let Some(e) = guard(&shared.fatal).take() {
        return Err(e);
    }
    let tally = results.into_inner().unwrap_or_else(PoisonError::into_inner);
    let mut latencies = tally.latencies_us;
    latencies.sort_unstable();
    let issued = shared.issued.load(Ordering::Relaxed);
    let good = shared.good_count.load(Ordering::Relaxed);
    let failures: Vec<Failure> = tally.last_failure.into_values().collect();
    Ok(Summary {
        job: spec.job_id.clone(),
        product: spec.product.clone(),
        quantity: spec.quantity,
        issued,
        good,
        failed_after_issue: issued.saturating_sub(good),
        good_this_run: tally.good,
        resumed: tally.resumed,
        failed_attempts: shared.failed_attempts.load(Ordering::Relaxed),
        failures,
        already_good: tally.already_good,
        not_needed: tally.not_needed,
        stopped: opts.stop.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        latencies_us: latencies,
    })
}

#[derive(Default)]
struct RunTally {
    good: u64,
    resumed: u64,
    already_good: u64,
    not_needed: u64,
    last_failure: HashMap<Vec<u8>, Failure>,
    latencies_us: Vec<u32>,
}

/// How many batches are in flight at once: while the HSM signs one, the next one's issuance
/// records are being made durable (they share fsyncs through the ledger's group commit).
pub const ISSUERS: usize = 3;

/// One of the HSM's feeders: collects requests from the sockets into a batch and has the HSM
/// issue it within the job's reservation. When the reservation has fewer units left than the
/// batch (other stations of the job spent them), the HSM is asked again for what it has left and
/// the rest are told the job is full.
fn issuer_loop(sh: &Shared<'_>, rx: &Mutex<Receiver<IssueRequest>>) {
    loop {
        let batch = {
            let rx = guard(rx);
            let Ok(first) = rx.recv() else {
                break;
            };
            let mut batch = vec![first];
            while batch.len() < sh.opts.batch.clamp(1, trustfab_hsm::BATCH_MAX) {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            batch
        };
        issue_batch(sh, batch);
    }
}

/// Has the HSM issue one batch and answers every device of it. When the reservation has fewer
/// units left than the batch, the HSM is asked once more for what it has left.
fn issue_batch(sh: &Shared<'_>, mut batch: Vec<IssueRequest>) {
    let keys: Vec<DeviceKey> = batch.iter().map(|r| r.key.clone()).collect();
    match sh.hsm.issue(sh.reservation, &keys) {
        Ok(out) => {
            sh.issued.fetch_add(
                len64(out.iter().filter(|i| !i.reissued).count()),
                Ordering::Relaxed,
            );
            let mut by_uid: HashMap<DeviceUid, Issued> =
                out.into_iter().map(|i| (i.uid.clone(), i)).collect();
            for r in batch {
                let _ = r.reply.send(by_uid.remove(&r.key.uid).map_or_else(
                    || IssueReply::Refused("the HSM returned no certificate".into()),
                    IssueReply::Issued,
                ));
            }
        }
        Err(IssueError::ReservationExhausted { remaining, .. }) => {
            sh.exhausted();
            let keep = usize::try_from(remaining).unwrap_or(usize::MAX);
            let full = batch.split_off(keep.min(batch.len()));
            for r in full {
                let _ = r.reply.send(IssueReply::Full);
            }
            // The HSM refused because fewer than the batch are left, so what remains is smaller:
            // the retries end.
            if !batch.is_empty() {
                issue_batch(sh, batch);
            }
        }
        Err(e) => {
            let msg = e.to_string();
            if matches!(e, IssueError::Sign(_)) {
                // The count was spent and recorded: the devices resume on their next attempt
                // from the recorded certificate.
                sh.issued.fetch_add(len64(batch.len()), Ordering::Relaxed);
            }
            if matches!(e, IssueError::JobClosed { .. }) {
                sh.exhausted();
            }
            for r in batch {
                let _ = r.reply.send(IssueReply::Refused(msg.clone()));
            }
        }
    }
}

/// Hands device outcomes to the HSM, many per call (one transaction: group commit).
fn recorder_loop(sh: &Shared<'_>, rx: &Receiver<DeviceOutcome>) {
    while let Ok(first) = rx.recv() {
        let mut v = vec![first];
        while v.len() < 512 {
            match rx.try_recv() {
                Ok(a) => v.push(a),
                Err(_) => break,
            }
        }
        if let Err(e) = sh.hsm.record_outcomes(sh.reservation, v) {
            sh.fail(RunError::Issue(e));
        }
    }
}

fn socket_loop<S: Supply>(
    sh: &Shared<'_>,
    supply: &S,
    issue_tx: &Sender<IssueRequest>,
    record_tx: &Sender<DeviceOutcome>,
    tally: &Mutex<RunTally>,
) {
    while !sh.opts.stop.load(Ordering::Relaxed) {
        let mut part = match supply.take() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e) => {
                sh.fail(e);
                break;
            }
        };
        let t0 = Instant::now();
        let outcome = provision(sh, &mut part, issue_tx);
        let spec = sh.spec;
        let mut again = false;
        let mut t = guard(tally);
        match outcome {
            Outcome::Good(g) => {
                t.good += 1;
                if g.resumed {
                    t.resumed += 1;
                }
                t.last_failure.remove(&g.uid.0);
                t.latencies_us
                    .push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
                guard(&sh.good).insert(g.uid.0.clone());
                sh.good_count.fetch_add(1, Ordering::Relaxed);
                let _ = record_tx.send(DeviceOutcome::Good(g));
            }
            Outcome::Failed {
                uid,
                step,
                reason,
                serial,
                transient,
            } => {
                sh.failed_attempts.fetch_add(1, Ordering::Relaxed);
                let key = uid.as_ref().map(|u| u.as_bytes().to_vec());
                if transient {
                    if let Some(k) = &key {
                        let mut a = guard(&sh.attempts);
                        let n = a.entry(k.clone()).or_insert(0);
                        *n += 1;
                        again = *n < sh.opts.max_attempts;
                    } else {
                        again = true;
                    }
                }
                let body = DeviceFailed {
                    job: spec.job_id.clone(),
                    uid: key.clone().map(Bytes),
                    step: step.number(),
                    step_name: step.name().into(),
                    reason: reason.clone(),
                    serial: serial.as_ref().map(|s| Bytes(s.as_be_bytes().to_vec())),
                    retry: again,
                };
                let _ = record_tx.send(DeviceOutcome::Failed(body));
                if let Some(k) = key {
                    t.last_failure.insert(
                        k,
                        Failure {
                            uid: uid.map(|u| u.to_hex()),
                            step,
                            reason,
                            serial: serial.map(|s| s.to_hex()),
                        },
                    );
                } else if !again {
                    let k = format!("unread-{}", t.last_failure.len()).into_bytes();
                    t.last_failure.insert(
                        k,
                        Failure {
                            uid: None,
                            step,
                            reason,
                            serial: None,
                        },
                    );
                }
            }
            Outcome::AlreadyGood => t.already_good += 1,
            Outcome::NotNeeded => t.not_needed += 1,
            Outcome::Stopped => again = true,
        }
        drop(t);
        sh.handled.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = supply.put_back(part, again) {
            sh.fail(e);
            break;
        }
        if let Some(p) = &sh.opts.progress {
            p(&sh.progress());
        }
    }
}

fn transient(e: &DeviceError) -> bool {
    matches!(
        e,
        DeviceError::NoContact
            | DeviceError::WriteFailed { .. }
            | DeviceError::PowerLoss { .. }
            | DeviceError::Timeout { .. }
    )
}

/// Steps 1 to 7 on one device; resumes at the step an earlier attempt reached.
fn provision<D: Device>(sh: &Shared<'_>, dev: &mut D, issue_tx: &Sender<IssueRequest>) -> Outcome {
    let spec = sh.spec;
    let fail = |uid: Option<&DeviceUid>, step, e: &DeviceError, serial: Option<&Serial>| {
        Outcome::failed(uid, step, serial, e)
    };
    let refuse = |uid: &DeviceUid, step, reason: String, serial: Option<&Serial>| {
        Outcome::refused(uid, step, serial, reason)
    };

    // 1: UID.
    let uid = match dev.uid() {
        Ok(u) => u,
        Err(e) => return fail(None, Step::ReadUid, &e, None),
    };
    if guard(&sh.good).contains(uid.as_bytes()) {
        return Outcome::AlreadyGood;
    }
    let want_kind = device_kind(spec.device_kind);
    if dev.kind() != want_kind {
        return refuse(
            &uid,
            Step::ReadUid,
            format!("the part is a {}, the job is for {want_kind}", dev.kind()),
            None,
        );
    }
    let recorded = match sh.hsm.certificate_for(sh.reservation, &uid) {
        Ok(r) => r,
        Err(e) => return refuse(&uid, Step::Issue, format!("HSM: {e}"), None),
    };
    let recorded_serial = recorded.as_ref().map(|i| i.serial.clone());
    let locks = match dev.lock_state() {
        Ok(l) => l,
        Err(e) => return fail(Some(&uid), Step::KeyGen, &e, recorded_serial.as_ref()),
    };

    // 2 and 3: key and certificate, or the ones an earlier attempt made.
    let (issued, resumed) = if let Some(issued) = recorded {
        let serial = issued.serial.clone();
        let Some(cert_key) = cert_public_key(&issued.cert) else {
            return refuse(
                &uid,
                Step::Issue,
                "the recorded certificate does not parse".into(),
                Some(&serial),
            );
        };
        match dev.public_key(spec.slots.key) {
            Ok(k) if k == cert_key => {}
            Ok(_) => {
                return refuse(
                    &uid,
                    Step::KeyGen,
                    "the device key is not the key of its issued certificate".into(),
                    Some(&serial),
                )
            }
            Err(e) => return fail(Some(&uid), Step::KeyGen, &e, Some(&serial)),
        }
        (issued, true)
    } else {
        if locks.data {
            return refuse(
                &uid,
                Step::KeyGen,
                "the device is locked and has no certificate".into(),
                None,
            );
        }
        if !sh.acquire() {
            if sh.opts.stop.load(Ordering::Relaxed) {
                return Outcome::Stopped;
            }
            return Outcome::NotNeeded;
        }
        match keygen_and_issue(sh, dev, &uid, issue_tx) {
            Ok(i) => {
                sh.release(!i.reissued);
                (i, false)
            }
            Err(o) => {
                // A full reservation gives no unit back to start another device with.
                sh.release(matches!(o, Outcome::NotNeeded));
                return o;
            }
        }
    };
    let serial = Some(&issued.serial);

    // 4 and 5: write the certificates (a locked device had them written before).
    let mut writes = vec![(
        Step::WriteCert,
        spec.slots.device_cert,
        issued.cert.as_slice(),
    )];
    if let (Some(slot), Some(ca)) = (spec.slots.device_ca, sh.intermediates.first()) {
        writes.push((Step::WriteCert, slot, ca.as_slice()));
    }
    writes.push((Step::WriteRoot, spec.slots.root, sh.root.as_slice()));
    if !locks.data {
        for (step, slot, der) in &writes {
            if let Err(e) = dev.write_slot(*slot, der) {
                return fail(Some(&uid), *step, &e, serial);
            }
        }
    }

    // Firmware (a locked device had it programmed before).
    if let (Some(fw), false) = (&spec.firmware, locks.data) {
        if let Err(o) = program_firmware(sh, dev, &uid, fw, serial) {
            return *o;
        }
    }

    // 6: lock.
    if !locks.data {
        if spec.lock == LockPolicy::SlotsAndData {
            let slots = match dev.slots() {
                Ok(s) => s,
                Err(e) => return fail(Some(&uid), Step::Lock, &e, serial),
            };
            let mut ours: Vec<u8> = writes.iter().map(|w| w.1).collect();
            ours.push(spec.slots.key);
            for s in slots {
                if ours.contains(&s.id) && s.config.lockable && !s.locked {
                    if let Err(e) = dev.lock(Zone::Slot(s.id)) {
                        return fail(Some(&uid), Step::Lock, &e, serial);
                    }
                }
            }
        }
        // A secure MCU leaves its vendor with its configuration open (lifecycle open); the
        // configuration lock moves it to provisioned, the data lock to locked.
        if !locks.config {
            if let Err(e) = dev.lock(Zone::Config) {
                return fail(Some(&uid), Step::Lock, &e, serial);
            }
        }
        if let Err(e) = dev.lock(Zone::Data) {
            return fail(Some(&uid), Step::Lock, &e, serial);
        }
    }

    // 7: verify.
    let cert = match verify(sh, dev, &uid, &issued, &writes, serial) {
        Ok(c) => c,
        Err(o) => return o,
    };
    Outcome::Good(DeviceGood {
        job: spec.job_id.clone(),
        uid: Bytes(uid.as_bytes().to_vec()),
        serial: Bytes(issued.serial.as_be_bytes().to_vec()),
        cert_sha256: Digest(sha256(&cert)),
        resumed,
    })
}

fn keygen_and_issue<D: Device>(
    sh: &Shared<'_>,
    dev: &mut D,
    uid: &DeviceUid,
    issue_tx: &Sender<IssueRequest>,
) -> Result<Issued, Outcome> {
    let spec = sh.spec;
    let fail = |step, e: &DeviceError| Outcome::failed(Some(uid), step, None, e);
    let refuse = |step, reason: String| Outcome::refused(uid, step, None, reason);
    let public_key = match &spec.attestation_root {
        Some(vendor_root) => {
            let mut nonce = [0u8; 32];
            aws_lc_rs::rand::fill(&mut nonce)
                .map_err(|_| refuse(Step::KeyGen, "the random generator failed".into()))?;
            let att = dev
                .generate_key_attested(spec.slots.key, &nonce)
                .map_err(|e| fail(Step::KeyGen, &e))?;
            let cert = dev
                .attestation_certificate()
                .map_err(|e| fail(Step::KeyGen, &e))?;
            if &att.uid != uid {
                return Err(refuse(
                    Step::KeyGen,
                    format!("attestation is from device {}", att.uid),
                ));
            }
            att.verify(&cert, &vendor_root.0, &nonce, sh.opts.clock.now())
                .map_err(|e| refuse(Step::KeyGen, format!("key attestation refused: {e}")))?;
            att.public_key
        }
        None => dev
            .generate_key(spec.slots.key)
            .map_err(|e| fail(Step::KeyGen, &e))?,
    };
    let (tx, rx) = mpsc::channel();
    issue_tx
        .send(IssueRequest {
            key: DeviceKey {
                uid: uid.clone(),
                public_key,
            },
            reply: tx,
        })
        .map_err(|_| refuse(Step::Issue, "the HSM feeder stopped".into()))?;
    match rx.recv() {
        Ok(IssueReply::Issued(i)) => Ok(i),
        Ok(IssueReply::Full) => Err(Outcome::NotNeeded),
        Ok(IssueReply::Refused(reason)) => Err(refuse(Step::Issue, reason)),
        Err(_) => Err(refuse(Step::Issue, "the HSM feeder stopped".into())),
    }
}

/// The firmware step on one device: the family key the HSM wrapped for this device's certified
/// key into the secret slot (unwrapped inside the part), the root-of-trust fuse, the image into
/// the secondary slot as an update, and one boot that must install and run exactly this image.
fn program_firmware<D: Device>(
    sh: &Shared<'_>,
    dev: &mut D,
    uid: &DeviceUid,
    fw: &JobFirmware,
    serial: Option<&Serial>,
) -> Result<(), Box<Outcome>> {
    let fail = |e: &DeviceError| Box::new(Outcome::failed(Some(uid), Step::Firmware, serial, e));
    let refuse = |reason: String| Box::new(Outcome::refused(uid, Step::Firmware, serial, reason));
    let image = sh
        .opts
        .image
        .as_deref()
        .ok_or_else(|| refuse("no image".into()))?;
    if fw.encrypted {
        let wrapped = sh
            .hsm
            .family_key_for(sh.reservation, uid)
            .map_err(|e| refuse(format!("HSM: {e}")))?;
        let installed = dev
            .install_wrapped_secret(fw.secret_slot, &wrapped)
            .map_err(|e| fail(&e))?;
        if Some(&installed) != sh.family_point.as_ref() {
            return Err(refuse(
                "the device installed another family key than the product's".into(),
            ));
        }
    }
    let boot_key_hash: [u8; 32] = fw
        .boot_key_hash
        .0
        .as_slice()
        .try_into()
        .map_err(|_| refuse("the job's boot key hash is not 32 bytes".into()))?;
    match dev.rot_hash().map_err(|e| fail(&e))? {
        Some(h) if h == boot_key_hash => {}
        Some(_) => {
            return Err(refuse(
                "the root-of-trust fuse holds another key hash".into(),
            ))
        }
        None => dev.program_rot_hash(&boot_key_hash).map_err(|e| fail(&e))?,
    }
    dev.write_boot_slot(BootSlot::Secondary, image)
        .map_err(|e| fail(&e))?;
    dev.request_update(UpdateRequest::Permanent)
        .map_err(|e| fail(&e))?;
    match dev.boot().map_err(|e| fail(&e))? {
        BootOutcome::Verified {
            image_hash, swap, ..
        } => {
            if let SwapOutcome::Refused(reason) = swap {
                return Err(refuse(format!("secure boot refused the image: {reason}")));
            }
            if image_hash.as_slice() != fw.image_hash.0.as_slice() {
                return Err(refuse(format!(
                    "the device booted another image than {}",
                    fw.name
                )));
            }
            Ok(())
        }
        BootOutcome::Unverified => Err(refuse(
            "the device booted without verifying (no root of trust)".into(),
        )),
    }
}

fn cert_public_key(der: &[u8]) -> Option<PublicKey> {
    let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
    PublicKey::from_spki_der(c.public_key().raw).ok()
}

fn verify<D: Device>(
    sh: &Shared<'_>,
    dev: &mut D,
    uid: &DeviceUid,
    issued: &Issued,
    writes: &[(Step, u8, &[u8])],
    serial: Option<&Serial>,
) -> Result<Vec<u8>, Outcome> {
    let spec = sh.spec;
    let fail = |e: &DeviceError| Outcome::failed(Some(uid), Step::Verify, serial, e);
    let refuse = |reason: String| Outcome::refused(uid, Step::Verify, serial, reason);
    let locks = dev.lock_state().map_err(|e| fail(&e))?;
    if !locks.data {
        return Err(refuse("the device reports its data zone unlocked".into()));
    }
    let mut cert = issued.cert.clone();
    for (_, slot, der) in writes {
        let back = dev.read_slot(*slot).map_err(|e| fail(&e))?;
        if back == *der {
            continue;
        }
        // A certificate written in an earlier attempt and rebuilt now has the same TBS (the HSM
        // records everything it is built from) but another ECDSA signature.
        if *slot == spec.slots.device_cert && same_tbs(&back, der) {
            cert = back;
            continue;
        }
        return Err(refuse(format!("slot {slot} reads back different content")));
    }
    let slots = dev.slots().map_err(|e| fail(&e))?;
    let key_slot = slots.iter().find(|s| s.id == spec.slots.key);
    if !key_slot.is_some_and(|s| s.config.kind == SlotKind::PrivateKey && s.filled) {
        return Err(refuse(format!(
            "slot {} holds no private key",
            spec.slots.key
        )));
    }
    validate(
        &cert,
        &Policy {
            root: &sh.root,
            intermediates: &sh.intermediates,
            crls: &[],
            now: sh.opts.clock.now(),
            purpose: Purpose::ClientAuth,
        },
    )
    .map_err(|e| {
        refuse(format!(
            "the certificate does not validate to the OEM root: {e}"
        ))
    })?;
    let cert_key = cert_public_key(&cert)
        .ok_or_else(|| refuse("the certificate's key does not parse".into()))?;
    let mut challenge = [0u8; 32];
    aws_lc_rs::rand::fill(&mut challenge)
        .map_err(|_| refuse("the random generator failed".into()))?;
    let sig = dev
        .sign_challenge(spec.slots.key, &challenge)
        .map_err(|e| fail(&e))?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, cert_key.point())
        .verify(&challenge, &sig)
        .map_err(|_| {
            refuse("the challenge answer does not verify under the certificate key".into())
        })?;
    Ok(cert)
}

fn same_tbs(a: &[u8], b: &[u8]) -> bool {
    match (
        x509_parser::parse_x509_certificate(a),
        x509_parser::parse_x509_certificate(b),
    ) {
        (Ok((_, x)), Ok((_, y))) => x.tbs_certificate.as_ref() == y.tbs_certificate.as_ref(),
        _ => false,
    }
}
