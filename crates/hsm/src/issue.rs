//! Issuance: a batch of devices spent (from a job's reservation, or the product's count for the
//! operator), recorded and claimed in one ledger append before any certificate is signed; serial
//! allocation; the recorded certificate rebuilt for a device asked again.

use std::collections::HashSet;
use std::sync::PoisonError;

use trustfab_formats::records::IssuanceRecord;
use trustfab_ledger::{Append, CounterOp, Kind};
use trustfab_pki::template::SerialScheme;
use trustfab_pki::{DeviceRequest, Issuer, PublicKey, RenderInputs};
use trustfab_token::{Token, TokenSigner};
use trustfab_types::{DeviceUid, JobId, ProductKey, Serial};

use crate::product::Product;
use crate::{
    jobs, serial_claim, serial_counter, uid_claim, Caller, Hsm, IssueError, Reservation, BATCH_MAX,
    CLAIM_SERIAL, CLAIM_UID,
};

/// One device in an issuance request: its UID and the public key it generated inside.
#[derive(Clone, Debug)]
pub struct DeviceKey {
    /// The device's unique id.
    pub uid: DeviceUid,
    /// The device public key.
    pub public_key: PublicKey,
}

/// One issued certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// The device.
    pub uid: DeviceUid,
    /// Its serial.
    pub serial: Serial,
    /// The certificate, DER.
    pub cert: Vec<u8>,
    /// Whether this is the certificate recorded for an earlier issuance to the same UID.
    pub reissued: bool,
    /// The job whose reservation paid for it, as its issuance record says; `None` for the HSM
    /// operator's issuance outside a job and for records of an earlier release.
    pub job: Option<JobId>,
}

impl Hsm {
    /// Issues certificates for a batch of devices within a job's reservation: the units are
    /// spent from the job's reservation, never from the product directly, so the job never has
    /// more certificates than its quantity, whoever calls and however often.
    ///
    /// # Errors
    /// [`IssueError::ForeignReservation`], [`IssueError::LegacyJob`],
    /// [`IssueError::ReservationExhausted`], [`IssueError::JobClosed`], or any error of
    /// [`Self::issue_direct`].
    pub fn issue(&self, r: &Reservation, devices: &[DeviceKey]) -> Result<Vec<Issued>, IssueError> {
        self.issue_as(r, devices, None)
    }

    /// [`Self::issue`] for a station of the HSM service: its issuance records name it and, when
    /// it has a ceiling, the batch also spends from its counter (`station:<id>`) in the same
    /// append.
    ///
    /// # Errors
    /// As [`Self::issue`], and [`IssueError::StationCeiling`].
    pub fn issue_as(
        &self,
        r: &Reservation,
        devices: &[DeviceKey],
        caller: Option<&Caller>,
    ) -> Result<Vec<Issued>, IssueError> {
        self.own(r)?;
        if r.is_legacy() {
            return Err(IssueError::LegacyJob {
                job: r.job_id().clone(),
            });
        }
        self.issue_within(r.product(), Some(r.job_id()), devices, caller)
    }

    /// Issues certificates for a batch of devices of one product outside any job, spending
    /// from the product's count directly: the HSM operator's own issuance (`trustfab hsm
    /// issue`). Stations hold only an [`HsmClient`](crate::HsmClient), which has no such call.
    ///
    /// The count is spent and every issuance recorded in ONE ledger append before any
    /// signature is made; the batch succeeds or fails whole. A UID issued before (by any
    /// station) is not spent again: its recorded certificate is rebuilt and returned with
    /// `reissued = true`.
    ///
    /// # Errors
    /// An [`IssueError`]; unless it is [`IssueError::Sign`], nothing was spent or recorded.
    pub fn issue_direct(
        &self,
        product: &ProductKey,
        devices: &[DeviceKey],
    ) -> Result<Vec<Issued>, IssueError> {
        self.issue_within(product, None, devices, None)
    }

    fn issue_within(
        &self,
        product: &ProductKey,
        job: Option<&JobId>,
        devices: &[DeviceKey],
        caller: Option<&Caller>,
    ) -> Result<Vec<Issued>, IssueError> {
        if devices.len() > BATCH_MAX {
            return Err(IssueError::BadRequest {
                uid: "-".into(),
                reason: format!(
                    "batch of {} is over the limit of {BATCH_MAX}",
                    devices.len()
                ),
            });
        }
        let p = self.product(product)?;
        let mut seen = HashSet::new();
        for d in devices {
            if !seen.insert(&d.uid) {
                return Err(IssueError::DuplicateInBatch {
                    uid: d.uid.to_hex(),
                });
            }
        }
        let signer = TokenSigner::new(&*self.token, p.signing_key)?;
        let issuer = Issuer::new(&p.issuer_cert, &signer).map_err(IssueError::Sign)?;
        let all: Vec<usize> = (0..devices.len()).collect();
        let mut out: Vec<Option<Issued>> = vec![None; devices.len()];
        // Fast path: every device is new. The UID claims in the append enforce that; only when
        // one is refused are the devices looked up one by one (a device put back in a socket).
        match self.issue_fresh(&p, job, caller, &issuer, devices, &all, &mut out) {
            Err(IssueError::Ledger(trustfab_ledger::Error::Duplicate { namespace, .. }))
                if namespace == CLAIM_UID => {}
            other => {
                other?;
                return Ok(out.into_iter().flatten().collect());
            }
        }
        let mut fresh = Vec::with_capacity(devices.len());
        for (i, d) in devices.iter().enumerate() {
            let claim = uid_claim(&p.key, &d.uid);
            match self
                .ledger
                .claimed(CLAIM_UID, &claim)
                .map_err(IssueError::Ledger)?
            {
                Some(seq) => {
                    let rec = self.issuance_near(seq, &p.key, &d.uid)?;
                    if rec.spki != d.public_key.to_spki_der() {
                        return Err(IssueError::BadRequest {
                            uid: d.uid.to_hex(),
                            reason: "already issued for another public key".into(),
                        });
                    }
                    if let Some(slot) = out.get_mut(i) {
                        *slot = Some(sign_record(&p, &issuer, &rec, &d.public_key, true)?);
                    }
                }
                None => fresh.push(i),
            }
        }
        if !fresh.is_empty() {
            self.issue_fresh(&p, job, caller, &issuer, devices, &fresh, &mut out)?;
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// Spends (from the job's reservation, or the product's count without a job), records and
    /// claims the `which` devices in one append, then signs them into `out`.
    #[allow(clippy::too_many_arguments)]
    fn issue_fresh(
        &self,
        p: &Product,
        job: Option<&JobId>,
        caller: Option<&Caller>,
        issuer: &Issuer<'_>,
        devices: &[DeviceKey],
        which: &[usize],
        out: &mut [Option<Issued>],
    ) -> Result<(), IssueError> {
        let now = self.clock.now();
        let sequential = matches!(p.serials, SerialScheme::Sequential { .. });
        let guard = sequential.then(|| {
            self.serial_alloc
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        });
        let serials = self.allocate_serials(p, which.len())?;
        let mut recs = Vec::with_capacity(which.len());
        let n = u64::try_from(which.len()).unwrap_or(u64::MAX);
        // The ledger names the counters by text: the product's `oem/product`, a job's `job:<id>`.
        let spend_from = job.map_or_else(|| p.key.to_string(), jobs::job_counter);
        let mut append = Append::default().with_counter(CounterOp::Spend {
            product: spend_from.clone(),
            n,
        });
        if sequential {
            append = append.with_counter(CounterOp::Spend {
                product: serial_counter(&p.key),
                n,
            });
        }
        let ceiling = caller
            .filter(|c| c.metered)
            .map(|c| (crate::station::station_counter(&c.id), c.id.clone()));
        if let Some((counter, _)) = &ceiling {
            append = append.with_counter(CounterOp::Spend {
                product: counter.clone(),
                n,
            });
        }
        for (&i, serial) in which.iter().zip(serials) {
            let Some(d) = devices.get(i) else { continue };
            let rec = IssuanceRecord {
                product: p.key.clone(),
                uid: d.uid.clone(),
                serial,
                spki: d.public_key.to_spki_der(),
                not_before: now,
                job: job.cloned(),
                station: caller.map(|c| c.id.clone()),
            };
            // Render now, so a template that cannot hold this device fails before any count
            // is spent.
            p.template
                .render(&RenderInputs {
                    oem: &p.oem,
                    product: &p.product,
                    uid: &rec.uid,
                    serial: &rec.serial,
                })
                .map_err(|source| IssueError::Render {
                    uid: rec.uid.to_hex(),
                    source,
                })?;
            append = append
                .with_record(Kind::CertificateIssued, rec.encode())
                .with_claim(CLAIM_UID, uid_claim(&p.key, &rec.uid));
            if sequential {
                // Sequential serials are claimed: two processes must never assign the same one.
                // Random serials carry at least 64 bits from the token's generator; their
                // uniqueness is checked where it matters, by the OEM over the whole report.
                append = append.with_claim(CLAIM_SERIAL, serial_claim(&p.issuer_fp, &rec.serial));
            }
            recs.push((i, rec));
        }
        // Sealed without a position: the batch may share a transaction with other stations'.
        let append = crate::seal::seal_free(&*self.token, self.seal_key, append)?;
        let floor = self.anchor.floor()?;
        let res = self.ledger.append(append);
        if let (
            Err(trustfab_ledger::Error::Exhausted {
                product,
                remaining,
                asked,
            }),
            Some((counter, station)),
        ) = (&res, &ceiling)
        {
            if product == counter {
                return Err(IssueError::StationCeiling {
                    station: station.clone(),
                    remaining: *remaining,
                    asked: *asked,
                });
            }
        }
        let appended = res.map_err(|e| match (e, job) {
            (trustfab_ledger::Error::Exhausted { product, .. }, _)
                if product == serial_counter(&p.key) =>
            {
                IssueError::SerialsExhausted {
                    product: p.key.clone(),
                }
            }

            (
                trustfab_ledger::Error::Exhausted {
                    product,
                    remaining,
                    asked,
                },
                Some(job),
            ) if product == spend_from => {
                let job = job.clone();
                match self
                    .ledger
                    .claimed(jobs::CLAIM_JOB_CLOSED, job.as_str().as_bytes())
                {
                    Ok(Some(seq)) => IssueError::JobClosed { job, seq },
                    Ok(None) => IssueError::ReservationExhausted {
                        job,
                        remaining,
                        asked,
                    },
                    Err(e) => IssueError::Ledger(e),
                }
            }
            // The only other counter spent is the product's own.
            (
                trustfab_ledger::Error::Exhausted {
                    remaining, asked, ..
                },
                _,
            ) => IssueError::CountExhausted {
                product: p.key.clone(),
                remaining,
                asked,
            },
            (other, _) => IssueError::Ledger(other),
        })?;
        drop(guard);
        // Anchored before anything is signed; other threads' appends share the token write.
        self.anchor.advance(floor, &appended)?;
        for (i, rec) in recs {
            if let (Some(slot), Some(d)) = (out.get_mut(i), devices.get(i)) {
                *slot = Some(sign_record(p, issuer, &rec, &d.public_key, false)?);
            }
        }
        self.checkpoint_if_due(&appended);
        Ok(())
    }

    fn allocate_serials(&self, p: &Product, n: usize) -> Result<Vec<Serial>, IssueError> {
        match p.serials {
            SerialScheme::Random { .. } => {
                let rng = TokenRng(&*self.token);
                (0..n)
                    .map(|_| {
                        p.serials
                            .random_serial(&rng)
                            .map_err(|source| IssueError::Render {
                                uid: "-".into(),
                                source,
                            })
                    })
                    .collect()
            }
            SerialScheme::Sequential { .. } => {
                // Serial k is `first + k`, k counting the product's serial counter, which every
                // issuance spends and nothing credits back. The spend is in the same append;
                // the serial claims refuse a second process that read the same k.
                let used = self
                    .ledger
                    .verified_counter(&serial_counter(&p.key))
                    .map_err(IssueError::Ledger)?
                    .map_or(0, |c| c.issued);
                (0..n)
                    .map(|k| {
                        p.serials
                            .sequential_serial(used + u64::try_from(k).unwrap_or(u64::MAX))
                            .map_err(|_| IssueError::SerialsExhausted {
                                product: p.key.clone(),
                            })
                    })
                    .collect()
            }
        }
    }

    /// The issuance record of `uid` in the append whose first record is `seq` (what its claim
    /// names), believed only under that append's seal: the token's MAC over exactly its records.
    /// A record changed, added or moved in the store, or an append the HSM did not seal, is
    /// refused naming the record.
    pub(crate) fn issuance_near(
        &self,
        seq: u64,
        product: &ProductKey,
        uid: &DeviceUid,
    ) -> Result<IssuanceRecord, IssueError> {
        // The append is the device's batch (at most BATCH_MAX records) and its seal. Read it in
        // chunks: batches are small (64 by default), and a station asks this for every device
        // of a firmware job.
        const CHUNK: usize = 128;
        let unsealed = || IssueError::UnsealedRecord {
            uid: uid.to_hex(),
            seq,
        };
        let mut recs = Vec::new();
        let mut from = seq;
        while recs.len() <= BATCH_MAX {
            let want = CHUNK.min(BATCH_MAX + 1 - recs.len());
            let chunk = self
                .ledger
                .read_raw(from, want)
                .map_err(IssueError::Ledger)?;
            if chunk.is_empty() {
                break;
            }
            let mut sealed = false;
            for raw in chunk {
                if raw.seq != from {
                    return Err(unsealed());
                }
                from += 1;
                let r = raw.into_record().map_err(IssueError::Ledger)?;
                sealed = r.kind == Kind::Seal;
                recs.push(r);
                if sealed {
                    break;
                }
            }
            if sealed {
                break;
            }
        }
        if recs.is_empty() {
            return Err(IssueError::MissingRecord {
                uid: uid.to_hex(),
                seq,
            });
        }
        let covered =
            crate::seal::check_free(&*self.token, self.seal_key, &recs).ok_or_else(unsealed)?;
        for r in covered {
            if r.kind != Kind::CertificateIssued {
                continue;
            }
            if let Ok(rec) = IssuanceRecord::decode(&r.body) {
                if rec.product == *product && &rec.uid == uid {
                    return Ok(rec);
                }
            }
        }
        Err(IssueError::MissingRecord {
            uid: uid.to_hex(),
            seq,
        })
    }

    /// The certificate recorded for a device, rebuilt from its issuance record (same TBS).
    ///
    /// # Errors
    /// [`IssueError::UnknownProduct`], or a ledger error; `Ok(None)` if the UID was never issued.
    pub fn certificate_for(
        &self,
        product: &ProductKey,
        uid: &DeviceUid,
    ) -> Result<Option<Issued>, IssueError> {
        let p = self.product(product)?;
        match self
            .ledger
            .claimed(CLAIM_UID, &uid_claim(&p.key, uid))
            .map_err(IssueError::Ledger)?
        {
            Some(seq) => {
                let rec = self.issuance_near(seq, &p.key, uid)?;
                let signer = TokenSigner::new(&*self.token, p.signing_key)?;
                let issuer = Issuer::new(&p.issuer_cert, &signer).map_err(IssueError::Sign)?;
                let public_key =
                    PublicKey::from_spki_der(&rec.spki).map_err(|e| IssueError::Sign(e.into()))?;
                Ok(Some(sign_record(&p, &issuer, &rec, &public_key, true)?))
            }
            None => Ok(None),
        }
    }
}

/// Builds and signs the certificate an issuance record determines.
///
/// `public_key` is the key `rec.spki` encodes: the caller's device key when it has one, so a
/// fresh issuance does not parse back the SPKI it just encoded.
pub(crate) fn sign_record(
    p: &Product,
    issuer: &Issuer<'_>,
    rec: &IssuanceRecord,
    public_key: &PublicKey,
    reissued: bool,
) -> Result<Issued, IssueError> {
    let req = DeviceRequest {
        inputs: RenderInputs {
            oem: &p.oem,
            product: &p.product,
            uid: &rec.uid,
            serial: &rec.serial,
        },
        public_key,
        now: rec.not_before,
    };
    let cert = trustfab_pki::issue_device(&p.template, &req, issuer).map_err(IssueError::Sign)?;
    Ok(Issued {
        uid: rec.uid.clone(),
        serial: rec.serial.clone(),
        cert,
        reissued,
        job: rec.job.clone(),
    })
}

/// The token's random generator as a `trustfab_types::Rng`.
struct TokenRng<'a>(&'a dyn Token);

impl trustfab_types::Rng for TokenRng<'_> {
    fn fill(&self, out: &mut [u8]) -> Result<(), trustfab_types::RngError> {
        self.0
            .fill_random(out)
            .map_err(|_| trustfab_types::RngError)
    }
}
