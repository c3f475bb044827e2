//! The station's side: [`RemoteHsm`] is a [`trustfab_hsm::HsmClient`] over HTTPS with mutual
//! TLS, so `trustfab job run --hsm URL` drives the same station code as the in-process HSM.
//!
//! Retries: a request that could not be sent (connection refused or reset before an answer,
//! the service draining or restarting) is sent again, with backoff, until `retry_for` has
//! passed. That is safe for every operation but reserve: an issuance batch sent again carries
//! the same batch id and devices and is answered from the ledger (a UID issued before is
//! rebuilt, never spent again); outcomes recorded twice are recorded once; status, chain and
//! attach only read. A reserve whose answer was lost is sent again: a job that exists with the
//! very same spec is the one it made, fetched from the ledger's record (`GET
//! /v1/jobs/{job}/package`); another spec under that job id stays refused.
//! After a restart of the service a job is attached again from the package the client holds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use trustfab_formats::records::JobClosed;
use trustfab_formats::JobSpec;
use trustfab_hsm::{
    DeviceKey, DeviceOutcome, HsmClient, IssueError, Issued, JobOpError, JobStatus,
    ProductFirmware, ProductStatus, Reservation,
};
use trustfab_types::{DeviceUid, HsmId, JobId, ProductKey, SecretKeyDer, StationId};

use crate::wire::{self, ErrorBody, ErrorDetail};

/// What a station needs to reach the service: the station CA (its only trust anchor for the
/// service), its certificate and its private key (PKCS#8, zeroized on drop).
pub struct StationCredentials {
    /// The station CA certificate, DER.
    pub ca_der: Vec<u8>,
    /// The station's certificate, DER.
    pub cert_der: Vec<u8>,
    /// The station's private key.
    pub key: SecretKeyDer,
}

impl std::fmt::Debug for StationCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StationCredentials")
            .field("key", &"[secret elided]")
            .finish_non_exhaustive()
    }
}

/// Why a call failed: the service's refusal, or no answer.
#[derive(Debug)]
enum Failure {
    Api(Box<ErrorDetail>),
    Transport(String),
}

/// Questions of many sockets at once ("has this UID a certificate?") sent as one request: the
/// first asker sends what is pending, the others wait for its answer; questions that arrive
/// while a request is out go in the next one.
#[derive(Default)]
struct Lookups {
    state: Mutex<LookupState>,
    answered: Condvar,
}

#[derive(Default)]
struct LookupState {
    /// Questions not yet sent, with their ticket and job (a request asks about one job).
    pending: Vec<(u64, JobId, DeviceUid)>,
    /// Answers not yet taken, by ticket.
    done: HashMap<u64, Result<Option<Issued>, String>>,
    /// A caller is sending.
    sending: bool,
    next_ticket: u64,
}

/// The HTTPS client and where it calls.
struct Net {
    base: String,
    http: Client,
    retry_for: Duration,
}

/// The HSM service as a station's [`HsmClient`].
pub struct RemoteHsm {
    net: Net,
    /// What `GET /v1/hsm` said at connect: the HSM and the caller.
    info: wire::HsmInfo,
    batch_counter: AtomicU64,
    batch_salt: [u8; 8],
    lookups: Lookups,
}

impl std::fmt::Debug for RemoteHsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteHsm")
            .field("base", &self.net.base)
            .field("hsm_id", &self.info.hsm_id)
            .finish_non_exhaustive()
    }
}

impl Net {
    /// One call: JSON in and out; retried while the service cannot be reached (`idempotent`),
    /// or only while it could not even be connected to.
    fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        idempotent: bool,
    ) -> Result<T, Failure> {
        let url = format!("{}{path}", self.base);
        let start = Instant::now();
        let mut attempt = 0u32;
        loop {
            let mut req = self.http.request(method.clone(), &url);
            if let Some(b) = body {
                req = req.json(b);
            }
            let retry = match req.send() {
                Ok(resp) => {
                    let status = resp.status();
                    let bytes = read_limited(resp)?;
                    if status.is_success() {
                        return serde_json::from_slice(&bytes).map_err(|e| {
                            Failure::Transport(format!("the service's answer to {path}: {e}"))
                        });
                    }
                    let detail = serde_json::from_slice::<ErrorBody>(&bytes)
                        .map(|b| b.error)
                        .unwrap_or_else(|_| ErrorDetail {
                            code: format!("http_{}", status.as_u16()),
                            message: String::from_utf8_lossy(&bytes).chars().take(512).collect(),
                            job: None,
                            seq: None,
                            remaining: None,
                            asked: None,
                            uid: None,
                        });
                    // Draining or restarting: the request was not acted on.
                    if status == StatusCode::SERVICE_UNAVAILABLE && detail.code == "draining" {
                        Failure::Transport(detail.message)
                    } else {
                        return Err(Failure::Api(Box::new(detail)));
                    }
                }
                Err(e) => {
                    let sent = !e.is_connect();
                    if sent && !idempotent {
                        return Err(Failure::Transport(format!(
                            "{path}: {e} (the request may have been acted on)"
                        )));
                    }
                    Failure::Transport(format!("{path}: {e}"))
                }
            };
            if start.elapsed() >= self.retry_for {
                return Err(retry);
            }
            std::thread::sleep(backoff(attempt));
            attempt = attempt.saturating_add(1);
        }
    }
}

/// A retry's wait: 50 ms doubling to 1 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(50u64.saturating_mul(1 << attempt.min(5)).min(1000))
}

impl RemoteHsm {
    /// Connects to the service at `url` (`https://host:port`) as the station `creds` name, and
    /// reads which HSM it is. Calls that find the service down retry for `retry_for`.
    ///
    /// # Errors
    /// [`IssueError::Transport`] when the TLS configuration is refused or the service does
    /// not answer within `retry_for`, [`IssueError::Remote`] when it refuses the station.
    pub fn connect(
        url: &str,
        creds: &StationCredentials,
        retry_for: Duration,
    ) -> Result<Self, IssueError> {
        let tls = crate::tls::client_config(&creds.ca_der, &creds.cert_der, &creds.key)
            .map_err(|e| IssueError::Transport(e.to_string()))?;
        let http = Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(120))
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| IssueError::Transport(e.to_string()))?;
        let mut salt = [0u8; 8];
        getrandom::fill(&mut salt).map_err(|e| IssueError::Transport(e.to_string()))?;
        let net = Net {
            base: url.trim_end_matches('/').to_owned(),
            http,
            retry_for,
        };
        let info: wire::HsmInfo = net
            .call(Method::GET, "/v1/hsm", None::<&()>, true)
            .map_err(issue_error)?;
        if info.api != wire::API_VERSION {
            return Err(IssueError::Transport(format!(
                "the service speaks API {}, this station {}",
                info.api,
                wire::API_VERSION
            )));
        }
        Ok(Self {
            net,
            info,
            batch_counter: AtomicU64::new(0),
            batch_salt: salt,
            lookups: Lookups::default(),
        })
    }

    /// The station as the service's certificate check names it.
    pub fn station(&self) -> &StationId {
        &self.info.station
    }

    /// The products this station may provision.
    pub fn granted(&self) -> &[ProductKey] {
        &self.info.products
    }

    /// A job call: attaches the job again when the service no longer has it (it restarted).
    fn job_call<B: Serialize, T: DeserializeOwned>(
        &self,
        r: &Reservation,
        method: Method,
        op: &str,
        body: Option<&B>,
    ) -> Result<T, Failure> {
        let path = format!("/v1/jobs/{}/{op}", r.job_id());
        let start = Instant::now();
        loop {
            match self.net.call(method.clone(), &path, body, true) {
                // The service restarted (again, perhaps between the attach and the call).
                Err(Failure::Api(d))
                    if d.code == "job_not_attached" && start.elapsed() < self.net.retry_for =>
                {
                    self.attach_wire(r.package().as_bytes())?;
                }
                other => return other,
            }
        }
    }

    fn attach_wire(&self, package: &[u8]) -> Result<wire::WireReservation, Failure> {
        self.net.call(
            Method::POST,
            "/v1/jobs/attach",
            Some(&wire::AttachRequest {
                package: wire::B64(package.to_vec()),
            }),
            true,
        )
    }

    fn reservation(&self, w: wire::WireReservation) -> Result<Reservation, JobOpError> {
        Ok(Reservation::remote(
            &w.package.0,
            &self.info.identity_point.0,
            w.created_seq,
            w.legacy,
        )?)
    }

    /// The recorded certificate of `uid`, asked together with the other sockets' questions.
    fn lookup(&self, r: &Reservation, uid: &DeviceUid) -> Result<Option<Issued>, IssueError> {
        let l = &self.lookups;
        let mut st = l.state.lock().unwrap_or_else(PoisonError::into_inner);
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.pending.push((ticket, r.job_id().clone(), uid.clone()));
        loop {
            if let Some(answer) = st.done.remove(&ticket) {
                return answer.map_err(IssueError::Transport);
            }
            if st.sending {
                st = l.answered.wait(st).unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            // Nobody is sending: this caller sends what is pending for its job, its own question
            // too; another job's questions wait for their own asker.
            st.sending = true;
            let (mut batch, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut st.pending)
                .into_iter()
                .partition(|(_, job, _)| job == r.job_id());
            st.pending = rest;
            if batch.len() > wire::BATCH_MAX {
                st.pending.extend(batch.split_off(wire::BATCH_MAX));
            }
            let batch: Vec<(u64, DeviceUid)> = batch.into_iter().map(|(t, _, u)| (t, u)).collect();
            drop(st);
            let answers = self.certificates(r, &batch);
            st = l.state.lock().unwrap_or_else(PoisonError::into_inner);
            st.sending = false;
            match answers {
                Ok(mut found) => {
                    for (t, u) in batch {
                        st.done.insert(t, Ok(found.remove(u.as_bytes())));
                    }
                }
                Err(e) => {
                    let m = e.to_string();
                    for (t, _) in batch {
                        st.done.insert(t, Err(m.clone()));
                    }
                }
            }
            l.answered.notify_all();
        }
    }

    fn certificates(
        &self,
        r: &Reservation,
        batch: &[(u64, DeviceUid)],
    ) -> Result<HashMap<Vec<u8>, Issued>, IssueError> {
        let req = wire::UidsRequest {
            uids: batch
                .iter()
                .map(|(_, u)| wire::Hex(u.as_bytes().to_vec()))
                .collect(),
        };
        let out: wire::CertificatesResponse = self
            .job_call(r, Method::POST, "certificates", Some(&req))
            .map_err(issue_error)?;
        out.issued
            .into_iter()
            .map(|w| Issued::try_from(w).map(|i| (i.uid.as_bytes().to_vec(), i)))
            .collect::<Result<_, _>>()
            .map_err(IssueError::Transport)
    }

    fn batch_id(&self) -> wire::Hex {
        let n = self.batch_counter.fetch_add(1, Ordering::Relaxed);
        let mut id = self.batch_salt.to_vec();
        id.extend_from_slice(&n.to_be_bytes());
        wire::Hex(id)
    }
}

fn read_limited(resp: reqwest::blocking::Response) -> Result<Vec<u8>, Failure> {
    use std::io::Read as _;
    let mut out = Vec::new();
    let limit = u64::try_from(wire::RESPONSE_MAX).unwrap_or(u64::MAX);
    resp.take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| Failure::Transport(format!("reading the service's answer: {e}")))?;
    if out.len() > wire::RESPONSE_MAX {
        return Err(Failure::Transport(format!(
            "the service's answer is over {} bytes",
            wire::RESPONSE_MAX
        )));
    }
    Ok(out)
}

/// The service's refusal as the HSM's own error, where the station acts on it.
fn issue_error(f: Failure) -> IssueError {
    match f {
        Failure::Transport(m) => IssueError::Transport(m),
        Failure::Api(d) => match (d.code.as_str(), d.job.clone(), d.seq) {
            ("reservation_exhausted", Some(job), _) => IssueError::ReservationExhausted {
                job,
                remaining: d.remaining.unwrap_or(0),
                asked: d.asked.unwrap_or(0),
            },
            ("job_closed", Some(job), Some(seq)) => IssueError::JobClosed { job, seq },
            ("legacy_job", Some(job), _) => IssueError::LegacyJob { job },
            // Spent and recorded in the service: the devices resume from the record.
            ("sign_failed", _, _) => {
                IssueError::Sign(trustfab_pki::Error::BadCertificate(d.message))
            }
            ("bad_device", _, _) if d.uid.is_some() => {
                let uid = d.uid.clone().unwrap_or_default();
                let prefix = format!("device {uid}: ");
                IssueError::BadRequest {
                    reason: d
                        .message
                        .strip_prefix(&prefix)
                        .unwrap_or(&d.message)
                        .to_owned(),
                    uid,
                }
            }
            _ => IssueError::Remote {
                code: d.code,
                message: d.message,
            },
        },
    }
}

fn job_error(f: Failure) -> JobOpError {
    match f {
        Failure::Api(d) => match (d.code.as_str(), d.job.clone(), d.seq) {
            ("job_exists", Some(job), Some(seq)) => JobOpError::Exists { job, seq },
            ("job_closed", Some(job), Some(seq)) => JobOpError::Closed { job, seq },
            ("unknown_job", Some(job), _) => JobOpError::UnknownJob { job },
            ("other_package", Some(job), _) => JobOpError::OtherPackage { job },
            _ => JobOpError::Issue(issue_error(Failure::Api(d))),
        },
        other => JobOpError::Issue(issue_error(other)),
    }
}

fn product_path(p: &ProductKey, what: &str) -> String {
    format!("/v1/products/{}/{}/{what}", p.oem(), p.product())
}

impl HsmClient for RemoteHsm {
    fn hsm_id(&self) -> &HsmId {
        &self.info.hsm_id
    }

    fn identity_point(&self) -> &[u8] {
        &self.info.identity_point.0
    }

    fn products(&self) -> Result<Vec<ProductStatus>, IssueError> {
        let l: wire::ProductList = self
            .net
            .call(Method::GET, "/v1/products", None::<&()>, true)
            .map_err(issue_error)?;
        Ok(l.products.into_iter().map(Into::into).collect())
    }

    fn chain(&self, product: &ProductKey) -> Result<(Vec<u8>, Option<Vec<u8>>), IssueError> {
        let c: wire::Chain = self
            .net
            .call(
                Method::GET,
                &product_path(product, "chain"),
                None::<&()>,
                true,
            )
            .map_err(issue_error)?;
        Ok((c.root.0, c.device_ca.map(|b| b.0)))
    }

    fn firmware(&self, product: &ProductKey) -> Result<Option<ProductFirmware>, IssueError> {
        let f: wire::Firmware = self
            .net
            .call(
                Method::GET,
                &product_path(product, "firmware"),
                None::<&()>,
                true,
            )
            .map_err(issue_error)?;
        f.firmware
            .map(ProductFirmware::try_from)
            .transpose()
            .map_err(IssueError::Transport)
    }

    fn reserve(&self, spec: JobSpec) -> Result<Reservation, JobOpError> {
        let req = wire::ReserveRequest { spec };
        let start = Instant::now();
        loop {
            match self.net.call(Method::POST, "/v1/jobs", Some(&req), false) {
                Ok(w) => return self.reservation(w),
                // Sent, and no answer: it may have been reserved. Ask again; a job that exists
                // with this very spec is this reserve's.
                Err(Failure::Transport(_)) if start.elapsed() < self.net.retry_for => {
                    std::thread::sleep(backoff(3));
                }
                Err(Failure::Api(d)) if d.code == "job_exists" => {
                    let path = format!("/v1/jobs/{}/package", req.spec.job_id);
                    let existing = match self.net.call(Method::GET, &path, None::<&()>, true) {
                        Ok(w) => self.reservation(w)?,
                        Err(_) => return Err(job_error(Failure::Api(d))),
                    };
                    if existing.spec() == &req.spec {
                        return Ok(existing);
                    }
                    return Err(job_error(Failure::Api(d)));
                }
                Err(f) => return Err(job_error(f)),
            }
        }
    }

    fn attach(&self, package: &[u8]) -> Result<Reservation, JobOpError> {
        let w = self.attach_wire(package).map_err(job_error)?;
        self.reservation(w)
    }

    fn job_status(&self, r: &Reservation) -> Result<JobStatus, JobOpError> {
        let s: wire::WireStatus = self
            .job_call(r, Method::GET, "status", None::<&()>)
            .map_err(job_error)?;
        Ok(s.into())
    }

    fn issue(&self, r: &Reservation, devices: &[DeviceKey]) -> Result<Vec<Issued>, IssueError> {
        let req = wire::IssueRequest {
            batch: self.batch_id(),
            devices: devices.iter().map(Into::into).collect(),
        };
        let out: wire::IssueResponse = self
            .job_call(r, Method::POST, "issue", Some(&req))
            .map_err(issue_error)?;
        out.issued
            .into_iter()
            .map(Issued::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(IssueError::Transport)
    }

    fn certificate_for(
        &self,
        r: &Reservation,
        uid: &DeviceUid,
    ) -> Result<Option<Issued>, IssueError> {
        self.lookup(r, uid)
    }

    fn family_key_for(&self, r: &Reservation, uid: &DeviceUid) -> Result<Vec<u8>, IssueError> {
        let req = wire::UidRequest {
            uid: wire::Hex(uid.as_bytes().to_vec()),
        };
        let out: wire::FamilyKeyResponse = self
            .job_call(r, Method::POST, "family-key", Some(&req))
            .map_err(issue_error)?;
        Ok(out.wrapped.0)
    }

    fn record_outcomes(
        &self,
        r: &Reservation,
        outcomes: Vec<DeviceOutcome>,
    ) -> Result<(), IssueError> {
        for chunk in outcomes.chunks(wire::OUTCOMES_MAX) {
            let req = wire::OutcomesRequest {
                outcomes: chunk.iter().map(Into::into).collect(),
            };
            let _: wire::Health = self
                .job_call(r, Method::POST, "outcomes", Some(&req))
                .map_err(issue_error)?;
        }
        Ok(())
    }

    fn close(&self, r: Reservation) -> Result<JobClosed, JobOpError> {
        let out: wire::CloseResponse = self
            .job_call(&r, Method::POST, "close", None::<&()>)
            .map_err(job_error)?;
        Ok(out.closed)
    }
}

/// One scrape of the service's `/metrics` as the operator `creds` name (an operator
/// certificate, the station CA to check the service by): the Prometheus text.
///
/// # Errors
/// A message naming what failed: TLS setup, the connection, or the service's refusal (its
/// code and message).
pub fn scrape_metrics(
    url: &str,
    creds: &StationCredentials,
    timeout: Duration,
) -> Result<String, String> {
    operator_get(url, "/metrics", creds, timeout)
}

/// `GET path` of the service as the operator `creds` name; the body as text.
///
/// # Errors
/// As [`scrape_metrics`].
pub fn operator_get(
    url: &str,
    path: &str,
    creds: &StationCredentials,
    timeout: Duration,
) -> Result<String, String> {
    let tls = crate::tls::client_config(&creds.ca_der, &creds.cert_der, &creds.key)
        .map_err(|e| e.to_string())?;
    let client = Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(timeout)
        .build()
        .map_err(|e| e.to_string())?;
    let resp = client
        .get(format!("{}{path}", url.trim_end_matches('/')))
        .send()
        .map_err(|e| format!("reaching {url}: {e}"))?;
    let status = resp.status();
    let body = read_limited(resp).map_err(|e| match e {
        Failure::Transport(m) => m,
        Failure::Api(d) => d.message,
    })?;
    let text = String::from_utf8_lossy(&body).into_owned();
    if !status.is_success() {
        return Err(match wire::parse::<ErrorBody>(&body) {
            Ok(e) => format!("{status} {}: {}", e.error.code, e.error.message),
            Err(_) => format!("{status}: {text}"),
        });
    }
    Ok(text)
}
