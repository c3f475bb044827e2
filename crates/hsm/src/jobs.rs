//! Jobs: a job's quantity reserved from its product, spent only by issuance within the
//! reservation, and the rest credited back at close. The HSM alone writes these records and
//! their counter operations; a station holds a [`Reservation`] and nothing that reaches the
//! ledger.
//!
//! Each job has its own ledger counter, `job:<id>`, so that the ledger's transaction, not the
//! station's bookkeeping, decides how many certificates a job may still have:
//!
//! 1. reserve: one append — `JobCreated`, the job claim, a spend of the quantity from the
//!    product's counter and the creation of the job's counter with that quantity;
//! 2. issue: every issuance append spends from the job's counter (never the product's), so
//!    however many stations run the same job at once, the job never has more certificates than
//!    its quantity;
//! 3. close: one append — `JobClosed`, the close claim, a credit of what the job's counter has
//!    left to the product, and a spend of that rest from the job's counter, which drains it: an
//!    issuance racing the close either lands first (and the close, whose spend is then refused,
//!    reads again) or finds the job's counter empty.
//!
//! A job created by an earlier release has no counter of its own (it kept its reservation in
//! the product's counter and released it per batch): it is refused for issuance and can only be
//! closed, with that release's accounting.

use std::collections::HashSet;

pub(crate) use trustfab_formats::records::CLAIM_JOB_CLOSED;
use trustfab_formats::records::{
    self, CreditBack, CreditReason, DeviceFailed, DeviceGood, JobClosed, JobCreated, CLAIM_GOOD,
    CLAIM_JOB,
};
use trustfab_formats::{JobFirmware, JobPackage, JobSpec};
use trustfab_ledger::{Append, CounterOp, Kind};
use trustfab_types::{DeviceUid, JobId, ProductKey};

use crate::error::{IssueError, JobOpError};
use crate::{Caller, Hsm, IssuanceRecord};

/// The ledger counter of a job's reservation, `job:<id>`. Product keys never hold a `:`, so it
/// cannot name a product.
pub(crate) fn job_counter(job: &JobId) -> String {
    format!("job:{job}")
}

/// A job's quantity, held for it by the HSM that signed its package: the only thing a station
/// issues within. Made only by [`Hsm::reserve`] or [`Hsm::attach`] (its fields are private), and
/// consumed by [`Hsm::close`]; the HSM checks, on every use, that the reservation is its own.
#[derive(Debug)]
pub struct Reservation {
    package: JobPackage,
    created_seq: u64,
    /// The identity point of the HSM that made it.
    hsm_point: Vec<u8>,
    /// Made by an earlier release: no job counter, cannot issue.
    legacy: bool,
}

impl Reservation {
    /// A reservation as a client of the HSM service holds it: the package the service returned,
    /// checked here to be signed by the service's HSM identity (`hsm_point`). It confers
    /// nothing by itself: the service attaches the job again from its own ledger and checks
    /// every call against it.
    ///
    /// # Errors
    /// A package error when it does not open under `hsm_point`.
    pub fn remote(
        package: &[u8],
        hsm_point: &[u8],
        created_seq: u64,
        legacy: bool,
    ) -> Result<Self, trustfab_formats::JobError> {
        Ok(Self {
            package: JobPackage::open(package, hsm_point)?,
            created_seq,
            hsm_point: hsm_point.to_vec(),
            legacy,
        })
    }

    /// The job package.
    pub fn package(&self) -> &JobPackage {
        &self.package
    }

    /// The job's contents.
    pub fn spec(&self) -> &JobSpec {
        self.package.spec()
    }

    /// The job id.
    pub fn job_id(&self) -> &JobId {
        &self.package.spec().job_id
    }

    /// The product.
    pub fn product(&self) -> &ProductKey {
        &self.package.spec().product
    }

    /// Units reserved.
    pub fn quantity(&self) -> u64 {
        self.package.spec().quantity
    }

    /// The ledger record that created the job.
    pub fn created_seq(&self) -> u64 {
        self.created_seq
    }

    /// Whether an earlier release created the job (it can only be closed).
    pub fn is_legacy(&self) -> bool {
        self.legacy
    }
}

/// What happened to one device, as the station reports it; the HSM records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceOutcome {
    /// Programmed, locked and verified.
    Good(DeviceGood),
    /// Failed at a step.
    Failed(DeviceFailed),
}

/// A job's standing, read from the ledger.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobStatus {
    /// The `JobCreated` record.
    pub created_seq: u64,
    /// The `JobClosed` record, once closed.
    pub closed_seq: Option<u64>,
    /// Units reserved.
    pub quantity: u64,
    /// Units the reservation has left for issuance (0 once closed).
    pub remaining: u64,
    /// UIDs of the job with a certificate.
    pub issued: HashSet<Vec<u8>>,
    /// UIDs of the job that ended good.
    pub good: HashSet<Vec<u8>>,
    /// `DeviceFailed` records of the job.
    pub failures: u64,
}

impl Hsm {
    /// Reserves a job's quantity from its product and seals the job package with the identity
    /// key, in one ledger append.
    ///
    /// # Errors
    /// [`JobOpError::WrongHsm`], [`JobOpError::UnknownProduct`], [`JobOpError::Firmware`],
    /// [`JobOpError::OverRemaining`], [`JobOpError::Exists`], a package, token or ledger error.
    /// Nothing is reserved then.
    pub fn reserve(&self, spec: JobSpec) -> Result<Reservation, JobOpError> {
        self.reserve_as(spec, None)
    }

    /// [`Self::reserve`] for a station of the HSM service: the `JobCreated` record names it.
    ///
    /// # Errors
    /// As [`Self::reserve`].
    pub fn reserve_as(
        &self,
        spec: JobSpec,
        caller: Option<&Caller>,
    ) -> Result<Reservation, JobOpError> {
        if spec.hsm_id != self.hsm_id {
            return Err(JobOpError::WrongHsm {
                job: spec.job_id,
                expected: spec.hsm_id,
                actual: self.hsm_id.clone(),
            });
        }
        if let Some(fw) = &spec.firmware {
            self.check_job_firmware(&spec.product, fw)?;
        }
        let product = spec.product.clone();
        // The product's counter is named by its `oem/product` text (never holding a `:`).
        let remaining = match self
            .ledger
            .verified_counter(&product.to_string())
            .map_err(JobOpError::Ledger)?
        {
            Some(c) => c.remaining(),
            None => return Err(JobOpError::UnknownProduct { product }),
        };
        if spec.quantity > remaining {
            return Err(JobOpError::OverRemaining {
                product,
                remaining,
                asked: spec.quantity,
            });
        }
        if let Some(seq) = self
            .ledger
            .claimed(CLAIM_JOB, spec.job_id.as_str().as_bytes())
            .map_err(JobOpError::Ledger)?
        {
            return Err(JobOpError::Exists {
                job: spec.job_id,
                seq,
            });
        }
        let signer = self.identity_signer().map_err(JobOpError::Token)?;
        let package = JobPackage::seal(spec, &signer)?;
        let s = package.spec();
        let body = JobCreated {
            job: s.job_id.clone(),
            product: s.product.clone(),
            quantity: s.quantity,
            package_sha256: records::Digest(package.digest()),
            time: s.created_at,
            station: caller.map(|c| c.id.clone()),
            package: (package.as_bytes().len() <= records::JOB_PACKAGE_IN_RECORD)
                .then(|| records::Bytes(package.as_bytes().to_vec())),
        };
        let append = Append::record(Kind::JobCreated, records::encode(&body))
            .with_counter(CounterOp::Spend {
                product: s.product.to_string(),
                n: s.quantity,
            })
            .with_counter(CounterOp::Create {
                product: job_counter(&s.job_id),
                count: s.quantity,
            })
            .with_claim(CLAIM_JOB, s.job_id.as_str().as_bytes().to_vec());
        let floor = self.anchor.floor()?;
        // It creates units (the job's): sealed at its place in the chain.
        let recs = self
            .append_positional(&append)
            .map_err(JobOpError::Token)?
            .map_err(|e| match e {
                // Only the product's spend can be exhausted (the job counter is created here).
                trustfab_ledger::Error::Exhausted {
                    remaining, asked, ..
                } => JobOpError::OverRemaining {
                    product: s.product.clone(),
                    remaining,
                    asked,
                },
                trustfab_ledger::Error::Duplicate { first_seq, .. } => JobOpError::Exists {
                    job: s.job_id.clone(),
                    seq: first_seq,
                },
                other => JobOpError::Ledger(other),
            })?;
        self.anchor.advance(floor, &recs)?;
        Ok(Reservation {
            created_seq: recs.first().map_or(0, |r| r.seq),
            package,
            hsm_point: self.identity_point.clone(),
            legacy: false,
        })
    }

    /// The package of an existing job as its `JobCreated` record carries it (checked against
    /// the record's digest, then opened under this HSM's identity): what a station whose
    /// reserve answer was lost fetches again. `None` for a job whose record does not carry it
    /// (an earlier release's, or a package over [`records::JOB_PACKAGE_IN_RECORD`]).
    ///
    /// # Errors
    /// [`JobOpError::UnknownJob`], [`JobOpError::BadRecord`], or a ledger error.
    pub fn job_package(&self, job: &JobId) -> Result<Option<Reservation>, JobOpError> {
        let (seq, b) = self.job_created(job)?;
        let bad = || JobOpError::BadRecord {
            job: job.clone(),
            seq,
        };
        let b = b.ok_or_else(bad)?;
        match b.package {
            Some(p) if crate::sha256(&p.0) == b.package_sha256.0 => self.attach(&p.0).map(Some),
            Some(_) => Err(bad()),
            None => Ok(None),
        }
    }

    /// The record the job's claim points at: its seq, and its body when it is this job's
    /// `JobCreated` (`None` when the record there is another).
    ///
    /// # Errors
    /// [`JobOpError::UnknownJob`], [`JobOpError::BadRecord`] for a body that does not decode,
    /// or a ledger error.
    fn job_created(&self, job: &JobId) -> Result<(u64, Option<JobCreated>), JobOpError> {
        let seq = self
            .ledger
            .claimed(CLAIM_JOB, job.as_str().as_bytes())
            .map_err(JobOpError::Ledger)?
            .ok_or_else(|| JobOpError::UnknownJob { job: job.clone() })?;
        let bad = || JobOpError::BadRecord {
            job: job.clone(),
            seq,
        };
        let raw = self
            .ledger
            .read_raw(seq, 1)
            .map_err(JobOpError::Ledger)?
            .into_iter()
            .next()
            .ok_or_else(bad)?;
        let r = raw.into_record().map_err(JobOpError::Ledger)?;
        let b: JobCreated = records::decode(&r.body).map_err(|_| bad())?;
        Ok((
            seq,
            (r.kind == Kind::JobCreated && b.job == *job).then_some(b),
        ))
    }

    /// The reservation of an existing job, from its package: a second station (or process) of
    /// the same job, or a run after a restart. The package must be signed by this HSM and be
    /// the one the ledger's `JobCreated` names.
    ///
    /// # Errors
    /// A package error, [`JobOpError::WrongHsm`], [`JobOpError::UnknownJob`],
    /// [`JobOpError::OtherPackage`], [`JobOpError::BadRecord`], or a ledger error.
    pub fn attach(&self, package: &[u8]) -> Result<Reservation, JobOpError> {
        let package = JobPackage::open(package, &self.identity_point)?;
        let spec = package.spec();
        let id = &spec.job_id;
        if spec.hsm_id != self.hsm_id {
            return Err(JobOpError::WrongHsm {
                job: id.clone(),
                expected: spec.hsm_id.clone(),
                actual: self.hsm_id.clone(),
            });
        }
        let (created_seq, b) = self.job_created(id)?;
        if b.is_none_or(|b| b.package_sha256.0 != package.digest()) {
            return Err(JobOpError::OtherPackage { job: id.clone() });
        }
        let legacy = self
            .ledger
            .verified_counter(&job_counter(id))
            .map_err(JobOpError::Ledger)?
            .is_none();
        Ok(Reservation {
            package,
            created_seq,
            hsm_point: self.identity_point.clone(),
            legacy,
        })
    }

    /// Refuses a reservation another HSM made.
    pub(crate) fn own(&self, r: &Reservation) -> Result<(), IssueError> {
        if r.hsm_point != self.identity_point || r.spec().hsm_id != self.hsm_id {
            return Err(IssueError::ForeignReservation {
                job: r.job_id().clone(),
            });
        }
        Ok(())
    }

    /// The job's standing: its certificates, good devices and failures, and what its
    /// reservation has left.
    ///
    /// # Errors
    /// [`JobOpError::Issue`] for another HSM's reservation, or a ledger error.
    pub fn job_status(&self, r: &Reservation) -> Result<JobStatus, JobOpError> {
        Ok(self.scan(r)?.0)
    }

    /// The job's standing, and for an earlier release's job the units its `CreditBack`
    /// releases handed to the product (0 otherwise): one walk of the job's records.
    fn scan(&self, r: &Reservation) -> Result<(JobStatus, u64), JobOpError> {
        self.own(r)?;
        let id = r.job_id();
        let closed_seq = self
            .ledger
            .claimed(CLAIM_JOB_CLOSED, id.as_str().as_bytes())
            .map_err(JobOpError::Ledger)?;
        let remaining = if r.legacy {
            0
        } else {
            self.ledger
                .verified_counter(&job_counter(id))
                .map_err(JobOpError::Ledger)?
                .map_or(0, |c| c.remaining())
        };
        let mut st = JobStatus {
            created_seq: r.created_seq,
            closed_seq,
            quantity: r.quantity(),
            remaining,
            ..JobStatus::default()
        };
        let mut released_uids = HashSet::new();
        let mut released = 0u64;
        for rec in self.ledger.records(r.created_seq) {
            let rec = rec.map_err(JobOpError::Ledger)?;
            match rec.kind {
                Kind::CreditBack if r.legacy => {
                    if let Ok(b) = records::decode::<CreditBack>(&rec.body) {
                        if b.job == *id && b.reason == CreditReason::Release {
                            released = released.saturating_add(b.n);
                            released_uids.extend(b.uids.into_iter().map(|u| u.0));
                        }
                    }
                }
                Kind::CertificateIssued => {
                    if let Ok(i) = IssuanceRecord::decode(&rec.body) {
                        let ours = match &i.job {
                            Some(j) => j == id,
                            None => r.legacy && released_uids.contains(i.uid.as_bytes()),
                        };
                        if ours && i.product == *r.product() {
                            st.issued.insert(i.uid.as_bytes().to_vec());
                        }
                    }
                }
                Kind::DeviceLocked => {
                    if let Ok(b) = records::decode::<DeviceGood>(&rec.body) {
                        if b.job == *id {
                            st.good.insert(b.uid.0);
                        }
                    }
                }
                Kind::DeviceFailed => {
                    if let Ok(b) = records::decode::<DeviceFailed>(&rec.body) {
                        if b.job == *id {
                            st.failures += 1;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok((st, released))
    }

    /// Records device outcomes of a job, many per transaction; a device recorded good once is not
    /// recorded again. What a good outcome claims is the station's word (the truthful-station
    /// checks that tie it to this job's certificate are the HSM's next step); the certificates
    /// it can have are bounded by the reservation whatever it says.
    ///
    /// # Errors
    /// [`IssueError::ForeignReservation`], [`IssueError::BadRequest`] for an outcome of another
    /// job (nothing is recorded then), or a ledger error.
    pub fn record_outcomes(
        &self,
        r: &Reservation,
        outcomes: Vec<DeviceOutcome>,
    ) -> Result<(), IssueError> {
        self.record_outcomes_as(r, outcomes, None)
    }

    /// [`Self::record_outcomes`] for a station of the HSM service: each record names the
    /// caller (whatever station the outcome itself named).
    ///
    /// # Errors
    /// As [`Self::record_outcomes`].
    pub fn record_outcomes_as(
        &self,
        r: &Reservation,
        outcomes: Vec<DeviceOutcome>,
        caller: Option<&Caller>,
    ) -> Result<(), IssueError> {
        self.own(r)?;
        let station = caller.map(|c| c.id.clone());
        let id = r.job_id();
        let mut appends = Vec::with_capacity(outcomes.len());
        for o in outcomes {
            appends.push(match o {
                DeviceOutcome::Good(mut g) => {
                    g.station.clone_from(&station);
                    let uid = DeviceUid::new(&g.uid.0).map_err(|_| IssueError::BadRequest {
                        uid: "-".into(),
                        reason: "a good device's UID is not a UID".into(),
                    })?;
                    if g.job != *id {
                        return Err(other_job(&uid.to_hex(), &g.job, id));
                    }
                    let claim = records::good_claim(r.product(), &g.uid.0);
                    let body = records::encode(&g);
                    Append::record(Kind::DeviceProgrammed, body.clone())
                        .with_record(Kind::DeviceLocked, body)
                        .with_claim(CLAIM_GOOD, claim)
                }
                DeviceOutcome::Failed(mut f) => {
                    f.station.clone_from(&station);
                    if f.job != *id {
                        let uid = f
                            .uid
                            .as_ref()
                            .map_or_else(|| "-".into(), |u| crate::hex(&u.0));
                        return Err(other_job(&uid, &f.job, id));
                    }
                    Append::record(Kind::DeviceFailed, records::encode(&f))
                }
            });
        }
        let floor = self.anchor.floor()?;
        let mut appended = Vec::new();
        let mut failed = None;
        for res in self.ledger.append_all(appends) {
            match res {
                Ok(recs) => appended.extend(recs),
                Err(trustfab_ledger::Error::Duplicate { .. }) => {}
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        // What was appended is anchored even when another append of the batch was refused.
        self.anchor.advance(floor, &appended)?;
        self.checkpoint_if_due(&appended);
        match failed {
            Some(e) => Err(IssueError::Ledger(e)),
            None => Ok(()),
        }
    }

    /// Closes a job: records `JobClosed` and credits back to the product what the reservation
    /// has left, draining it in the same append, so that the product's spent count is exactly
    /// its certificates once every job is closed. Returns the closing record.
    ///
    /// # Errors
    /// [`JobOpError::Closed`] when it is closed already, or a ledger error.
    pub fn close(&self, r: Reservation) -> Result<JobClosed, JobOpError> {
        self.close_as(r, None)
    }

    /// [`Self::close`] for a station of the HSM service: the `JobClosed` record names it.
    ///
    /// # Errors
    /// As [`Self::close`].
    pub fn close_as(
        &self,
        r: Reservation,
        caller: Option<&Caller>,
    ) -> Result<JobClosed, JobOpError> {
        let spec = r.spec();
        let (st, released) = self.scan(&r)?;
        let good = u64::try_from(st.good.len()).unwrap_or(u64::MAX);
        let counter = job_counter(&spec.job_id);
        // Each refused attempt means an issuance of the job landed in between and spent at
        // least one unit, so the attempts are bounded by the quantity.
        let mut attempts = 0u64;
        loop {
            if let Some(seq) = self
                .ledger
                .claimed(CLAIM_JOB_CLOSED, spec.job_id.as_str().as_bytes())
                .map_err(JobOpError::Ledger)?
            {
                return Err(JobOpError::Closed {
                    job: spec.job_id.clone(),
                    seq,
                });
            }
            let (credited, issued) = if r.legacy {
                let issued = u64::try_from(st.issued.len()).unwrap_or(u64::MAX);
                (spec.quantity.saturating_sub(released), issued)
            } else {
                let left = self
                    .ledger
                    .verified_counter(&counter)
                    .map_err(JobOpError::Ledger)?
                    .map_or(0, |c| c.remaining());
                (left, spec.quantity.saturating_sub(left))
            };
            let body = JobClosed {
                job: spec.job_id.clone(),
                product: spec.product.clone(),
                quantity: spec.quantity,
                issued,
                good,
                failed_after_issue: issued.saturating_sub(good),
                credited,
                time: self.clock.now().0,
                station: caller.map(|c| c.id.clone()),
            };
            let mut append = Append::record(Kind::JobClosed, records::encode(&body))
                .with_claim(CLAIM_JOB_CLOSED, spec.job_id.as_str().as_bytes().to_vec());
            if credited > 0 {
                append = append.with_counter(CounterOp::Credit {
                    product: spec.product.to_string(),
                    n: credited,
                });
                if !r.legacy {
                    append = append.with_counter(CounterOp::Spend {
                        product: counter.clone(),
                        n: credited,
                    });
                }
            }
            let floor = self.anchor.floor()?;
            let res = if append.counters.is_empty() {
                self.ledger.append(append)
            } else {
                // It credits units back: sealed at its place in the chain.
                self.append_positional(&append).map_err(JobOpError::Token)?
            };
            match res {
                Ok(recs) => {
                    self.anchor.advance(floor, &recs)?;
                    // A signed checkpoint right after every close, so that the OEM sees any
                    // later rewrite of the job's history (`docs/ledger.md`).
                    let closed_seq = recs.first().map_or(0, |r| r.seq);
                    self.checkpoint()
                        .map_err(|source| JobOpError::CheckpointAfterClose {
                            job: spec.job_id.clone(),
                            seq: closed_seq,
                            source: Box::new(source),
                        })?;
                    return Ok(body);
                }
                // An issuance spent from the job after we read it: read again.
                Err(trustfab_ledger::Error::Exhausted { product, .. })
                    if product == counter && attempts <= spec.quantity =>
                {
                    attempts += 1;
                }
                Err(trustfab_ledger::Error::Duplicate { first_seq, .. }) => {
                    return Err(JobOpError::Closed {
                        job: spec.job_id.clone(),
                        seq: first_seq,
                    })
                }
                Err(e) => return Err(JobOpError::Ledger(e)),
            }
        }
    }

    /// The HSM signs a job's firmware step only when it is the product's.
    fn check_job_firmware(&self, product: &ProductKey, fw: &JobFirmware) -> Result<(), JobOpError> {
        let bad = |m: &str| JobOpError::Firmware(m.to_owned());
        let Some(p) = self.firmware(product).map_err(|e| bad(&e.to_string()))? else {
            return Err(bad(&format!(
                "product {product} has no firmware in its package"
            )));
        };
        if fw.boot_key_hash.0 != p.boot_key_hash {
            return Err(bad("the boot key hash is not the product's"));
        }
        if fw.family != p.family {
            return Err(bad(&format!(
                "the family {} is not the product's ({})",
                fw.family, p.family
            )));
        }
        if fw.encrypted && p.family_key.is_none() {
            return Err(bad(
                "the image is encrypted and the product has no family key",
            ));
        }
        Ok(())
    }
}

fn other_job(uid: &str, theirs: &JobId, ours: &JobId) -> IssueError {
    IssueError::BadRequest {
        uid: uid.to_owned(),
        reason: format!("outcome of job {theirs} given for job {ours}"),
    }
}
