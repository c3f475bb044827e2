//! The parallel run of a job over many sockets: one thread per socket takes parts from the
//! supply and runs the flow on each ([`crate::flow`]); [`ISSUERS`] feeder threads batch the
//! sockets' issuance requests to the HSM; one recorder hands the devices' outcomes to the HSM,
//! many per transaction.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Instant;

use trustfab_formats::records::{Bytes, DeviceFailed};
use trustfab_hsm::{DeviceKey, DeviceOutcome, HsmClient, IssueError, Issued, Reservation};
use trustfab_types::{Clock, DeviceUid};

use crate::error::RunError;
use crate::flow::provision;
use crate::lifecycle::open;
use crate::state::{guard, len64, IssueReply, IssueRequest, Outcome, Shared};
use crate::summary::{Elsewhere, Failure, ProgressFn, RunTally, Summary};
use crate::supply::Supply;

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
    /// Issuance batches in flight at once (default [`ISSUERS`]); a station that reaches the
    /// HSM over the network keeps more in flight to cover the round trip.
    pub issuers: usize,
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
            issuers: ISSUERS,
        }
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
    let shared = open(hsm, reservation, opts)?;
    let started = Instant::now();
    let (issue_tx, issue_rx) = mpsc::channel::<IssueRequest>();
    let (record_tx, record_rx) = mpsc::channel::<DeviceOutcome>();
    let results = Mutex::new(RunTally::default());

    let issue_rx = Mutex::new(issue_rx);
    thread::scope(|scope| {
        let sh = &shared;
        let issue_rx = &issue_rx;
        let issuers: Vec<_> = (0..opts.issuers.max(1))
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
    Ok(tally.summary(&shared, started.elapsed()))
}

/// How many batches are in flight at once by default: while the HSM signs one, the next one's issuance
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
        // One device the HSM refuses (a UID it issued before for another key: a blank part
        // that had a certificate) refuses that device alone; the others are asked again. Nothing
        // was spent for the refused batch.
        Err(IssueError::BadRequest { uid, reason })
            if batch.len() > 1 && batch.iter().any(|r| r.key.uid.to_hex() == uid) =>
        {
            let (bad, rest): (Vec<_>, Vec<_>) =
                batch.into_iter().partition(|r| r.key.uid.to_hex() == uid);
            for r in bad {
                let _ = r
                    .reply
                    .send(IssueReply::Refused(format!("device {uid}: {reason}")));
            }
            issue_batch(sh, rest);
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
                let _ = record_tx.send(DeviceOutcome::Good(*g));
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
                    station: None,
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
            Outcome::Elsewhere { uid, job } => t.elsewhere.push(Elsewhere {
                uid: uid.to_hex(),
                job,
            }),
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
