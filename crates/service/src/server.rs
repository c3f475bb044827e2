//! `trustfab hsm serve`: the HSM behind HTTPS with mutual TLS. The token, its PIN and the
//! ledger live only here; a station holds its certificate and key and calls the operations of
//! [`trustfab_hsm::HsmClient`] over the wire.
//!
//! Every request, in order (`docs/service.md`, "Per-request checks"): the TLS handshake
//! validated the client certificate to the station CA; the certificate parses as a station
//! certificate (its id and grant); the body is read whole, at most [`wire::REQUEST_MAX`]; the
//! path and body parse; the service is not draining; the HSM admits the station (the ledger
//! recorded this certificate for the id, the id is not revoked, the certificate not expired);
//! the product is one the grant names. Only then does the HSM act, in a blocking thread, so that
//! many stations' batches meet in the ledger's group commit. A refusal before admission touches
//! neither the HSM nor the ledger.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;
use trustfab_hsm::{Caller, DeviceKey, Hsm, IssueError, JobOpError, Reservation, StationError};
use trustfab_pki::station::{parse_station_cert, StationCert};
use trustfab_types::{DeviceUid, JobId, OemId, ProductId, ProductKey, UnixTime};

use crate::wire::{self, ErrorBody, ErrorDetail};

/// How the service runs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Where it listens.
    pub listen: SocketAddr,
    /// The DNS names and IP addresses its certificate carries (stations connect by one).
    pub names: Vec<String>,
    /// Days the service certificate (made anew at each start) is valid.
    pub cert_days: u32,
    /// How long a SIGTERM waits for requests in flight before it stops anyway.
    pub drain: Duration,
    /// Most connections at once; one more is accepted and closed at once.
    pub max_connections: usize,
    /// The center's operator CA (DER): a client certificate that validates to it may read
    /// `/metrics` (and nothing else); without one, no operator is admitted.
    pub operator_ca: Option<Vec<u8>>,
    /// A loopback address where the console and `/metrics` are also served, over plain HTTP
    /// and without a certificate, to processes of the service's own host (a Prometheus agent,
    /// a browser on the HSM's machine); the station API is not served there.
    pub console_loopback: Option<SocketAddr>,
}

impl ServeOptions {
    /// Defaults for `listen`: its IP address and `localhost` in the certificate, 30 days, 30 s
    /// of drain, 1024 connections.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            names: vec![listen.ip().to_string(), "localhost".into()],
            cert_days: 30,
            drain: Duration::from_secs(30),
            max_connections: 1024,
            operator_ca: None,
            console_loopback: None,
        }
    }
}

/// Why the service did not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The station CA or the service certificate could not be made.
    #[error(transparent)]
    Station(#[from] StationError),
    /// The TLS configuration was refused.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Listening failed.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The async runtime could not start.
    #[error("starting the service runtime: {0}")]
    Runtime(std::io::Error),
    /// The console's loopback address is not a loopback address.
    #[error(
        "the console's loopback address {0} is not a loopback address (127.0.0.0/8 or ::1): \
         without a certificate the console is served to this host only"
    )]
    NotLoopback(SocketAddr),
}

/// Batch ids seen lately, per station, with a digest of their devices: a retry (same id, same
/// devices) goes on; the same id for other devices is refused. A batch id is a session's 8
/// bytes and a counter (docs/service.md): per station and session the highest counter is kept,
/// and an id more than [`BATCH_WINDOW`] below it that is not remembered is refused as stale, so
/// an id forgotten from the bounded memory cannot come back with other devices.
#[derive(Default)]
struct Batches {
    seen: HashMap<(String, Vec<u8>), [u8; 32]>,
    order: VecDeque<(String, Vec<u8>)>,
    high: HashMap<(String, Vec<u8>), u64>,
    sessions: VecDeque<(String, Vec<u8>)>,
}

/// What [`Batches::check`] says of a batch id.
#[derive(Debug, PartialEq, Eq)]
enum BatchCheck {
    /// New, or a retry of the same devices.
    Go,
    /// Sent before with other devices.
    Reused,
    /// Further below its session's highest counter than the window.
    Stale { high: u64 },
}

/// How long a connection may take to send a request's head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Batch ids remembered.
const BATCHES_KEPT: usize = 1 << 16;

/// Sessions (batch id prefixes) whose highest counter is remembered.
const SESSIONS_KEPT: usize = 1 << 12;

/// How far below its session's highest counter a batch may arrive (batches in flight at once
/// and retries arrive out of order; a station keeps a handful in flight).
const BATCH_WINDOW: u64 = 4096;

impl Batches {
    fn check(&mut self, station: &str, id: &[u8], digest: [u8; 32]) -> BatchCheck {
        let key = (station.to_owned(), id.to_vec());
        if let Some(d) = self.seen.get(&key) {
            return if *d == digest {
                BatchCheck::Go
            } else {
                BatchCheck::Reused
            };
        }
        let (session, counter) = id.split_at(id.len().min(8));
        let n = counter
            .try_into()
            .map(u64::from_be_bytes)
            .unwrap_or_default();
        let skey = (station.to_owned(), session.to_vec());
        match self.high.get_mut(&skey) {
            Some(high) if n.saturating_add(BATCH_WINDOW) < *high => {
                return BatchCheck::Stale { high: *high };
            }
            Some(high) => *high = (*high).max(n),
            None => {
                self.high.insert(skey.clone(), n);
                self.sessions.push_back(skey);
                if self.sessions.len() > SESSIONS_KEPT {
                    if let Some(old) = self.sessions.pop_front() {
                        self.high.remove(&old);
                    }
                }
            }
        }
        self.seen.insert(key.clone(), digest);
        self.order.push_back(key);
        if self.order.len() > BATCHES_KEPT {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        BatchCheck::Go
    }
}

/// A station's issuance on one UTC day, for a grant with a per-day ceiling.
struct Daily {
    day: u64,
    /// Certificates issued that day (read from the ledger at the day's first request, then
    /// counted here).
    used: u64,
    /// Devices of batches in flight.
    pending: u64,
}

/// The service's state, shared by every connection.
pub struct Service {
    hsm: Arc<Hsm>,
    daily: Mutex<HashMap<trustfab_types::StationId, Daily>>,
    /// Jobs attached by some station: the reservation the HSM made from the package.
    jobs: Mutex<HashMap<JobId, Arc<Reservation>>>,
    batches: Mutex<Batches>,
    draining: AtomicBool,
    metrics: crate::metrics::Metrics,
    /// When each station was last admitted (the HSM's clock), for the console.
    last_contact: Mutex<HashMap<String, u64>>,
    station_ca: Vec<u8>,
    operator_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("hsm", &self.hsm)
            .finish_non_exhaustive()
    }
}

/// The station a connection's certificate names, or why it names none; and the operator it
/// names (the certificate's SHA-256, hex), when it validates to the operator CA.
#[derive(Clone, Debug)]
struct Peer(Result<Arc<StationCert>, String>, Option<String>);

/// A refusal: its HTTP status and body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    detail: Box<ErrorDetail>,
}

impl ApiError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            detail: Box::new(ErrorDetail {
                code: code.into(),
                message: message.into(),
                job: None,
                seq: None,
                remaining: None,
                asked: None,
                uid: None,
            }),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn job(mut self, job: &JobId) -> Self {
        self.detail.job = Some(job.clone());
        self
    }

    fn seq(mut self, seq: u64) -> Self {
        self.detail.seq = Some(seq);
        self
    }

    fn device(mut self, uid: String) -> Self {
        self.detail.uid = Some(uid);
        self
    }

    fn counts(mut self, remaining: u64, asked: u64) -> Self {
        self.detail.remaining = Some(remaining);
        self.detail.asked = Some(asked);
        self
    }
}

/// A refusal's code, carried on the response for [`count_refusals`].
#[derive(Clone, Debug)]
struct Refused(String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = Refused(self.detail.code.clone());
        let mut r = (
            self.status,
            Json(ErrorBody {
                error: *self.detail,
            }),
        )
            .into_response();
        r.extensions_mut().insert(code);
        r
    }
}

/// Counts every refusal by its code (`trustfab_requests_refused_total`).
async fn count_refusals(
    State(svc): State<Arc<Service>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let r = next.run(req).await;
    if let Some(Refused(code)) = r.extensions().get::<Refused>() {
        svc.metrics.refused(code);
    }
    r
}

/// Refused unless the connection's certificate is an operator's.
fn operator_only(peer: &Peer) -> Result<(), ApiError> {
    if peer.1.is_some() {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "operator_certificate",
            "metrics and the console are for operators: a client certificate from the center's \
             operator CA (a station's is not one)",
        ))
    }
}

/// Runs `op` for an operator on the blocking pool; its error is `hsm_unavailable`.
async fn for_operator<T: IntoResponse + Send + 'static>(
    svc: Arc<Service>,
    peer: &Peer,
    op: impl FnOnce(&Service) -> Result<T, String> + Send + 'static,
) -> Response {
    if let Err(e) = operator_only(peer) {
        return e.into_response();
    }
    match tokio::task::spawn_blocking(move || op(&svc)).await {
        Ok(Ok(r)) => r.into_response(),
        Ok(Err(m)) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "hsm_unavailable", m).into_response()
        }
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the request's worker failed: {e}"),
        )
        .into_response(),
    }
}

/// `GET /metrics`, for an operator: the Prometheus text of [`crate::metrics`].
async fn metrics(State(svc): State<Arc<Service>>, Extension(peer): Extension<Peer>) -> Response {
    for_operator(svc, &peer, |s| {
        let text = s.metrics.render(&s.hsm)?;
        Ok((
            [(
                axum::http::header::CONTENT_TYPE,
                crate::metrics::CONTENT_TYPE,
            )],
            text,
        ))
    })
    .await
}

/// The console's page, script and style, served from the binary.
const CONSOLE_HTML: &str = include_str!("../console/index.html");
const CONSOLE_JS: &str = include_str!("../console/console.js");
const CONSOLE_CSS: &str = include_str!("../console/console.css");

/// Everything from this origin only, nothing inline, no framing.
const CONSOLE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                           connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; \
                           base-uri 'none'; form-action 'none'";

fn console_file(content_type: &'static str, body: &'static str) -> Response {
    use axum::http::header;
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONSOLE_CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// `GET /console/`, its script and its style: the operator's dashboard (read-only).
fn console_asset(peer: &Peer, content_type: &'static str, body: &'static str) -> Response {
    match operator_only(peer) {
        Ok(()) => console_file(content_type, body),
        Err(e) => e.into_response(),
    }
}

/// `GET /console/state`: what the dashboard shows, as JSON.
async fn console_state(
    State(svc): State<Arc<Service>>,
    Extension(peer): Extension<Peer>,
) -> Response {
    for_operator(svc, &peer, |s| {
        let contact = s
            .last_contact
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        s.metrics.console(&s.hsm, &contact).map(Json)
    })
    .await
}

/// `GET /console/report/{oem}/{product}`: the product's signed production report
/// (`docs/report.md`), made now (a checkpoint is appended and the ledger verified first).
async fn console_report(
    State(svc): State<Arc<Service>>,
    Extension(peer): Extension<Peer>,
    Path((oem, product)): Path<(String, String)>,
) -> Response {
    let key = match product_of(&oem, &product) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    for_operator(svc, &peer, move |s| {
        let mut out = Vec::new();
        s.hsm
            .report(&key, &mut out)
            .map_err(|e| format!("report of {key}: {e}"))?;
        let name = format!(
            "attachment; filename=\"{}-{}.report\"",
            key.oem(),
            key.product()
        );
        Ok((
            [
                (
                    axum::http::header::CONTENT_TYPE,
                    "application/octet-stream".to_owned(),
                ),
                (axum::http::header::CONTENT_DISPOSITION, name),
            ],
            out,
        ))
    })
    .await
}

impl From<StationError> for ApiError {
    fn from(e: StationError) -> Self {
        let m = e.to_string();
        match e {
            StationError::Revoked { .. } => Self::new(StatusCode::FORBIDDEN, "station_revoked", m),
            StationError::Expired { .. } => Self::new(StatusCode::FORBIDDEN, "station_expired", m),
            StationError::UnknownStation { .. } => {
                Self::new(StatusCode::FORBIDDEN, "station_unknown", m)
            }
            StationError::OtherCertificate { .. } => {
                Self::new(StatusCode::FORBIDDEN, "station_other_certificate", m)
            }
            _ => Self::new(StatusCode::SERVICE_UNAVAILABLE, "hsm_unavailable", m),
        }
    }
}

impl From<IssueError> for ApiError {
    fn from(e: IssueError) -> Self {
        let m = e.to_string();
        let conflict = StatusCode::CONFLICT;
        match e {
            IssueError::UnknownProduct { .. } => {
                Self::new(StatusCode::NOT_FOUND, "unknown_product", m)
            }
            IssueError::CountExhausted {
                remaining, asked, ..
            } => Self::new(conflict, "count_exhausted", m).counts(remaining, asked),
            IssueError::ReservationExhausted {
                job,
                remaining,
                asked,
            } => Self::new(conflict, "reservation_exhausted", m)
                .job(&job)
                .counts(remaining, asked),
            IssueError::StationCeiling {
                remaining, asked, ..
            } => Self::new(conflict, "station_ceiling", m).counts(remaining, asked),
            IssueError::JobClosed { job, seq } => {
                Self::new(conflict, "job_closed", m).job(&job).seq(seq)
            }
            IssueError::LegacyJob { job } => Self::new(conflict, "legacy_job", m).job(&job),
            IssueError::SerialsExhausted { .. } => Self::new(conflict, "serials_exhausted", m),
            IssueError::BadRequest { uid, .. }
            | IssueError::DuplicateInBatch { uid }
            | IssueError::Render { uid, .. } => {
                Self::new(StatusCode::BAD_REQUEST, "bad_device", m).device(uid)
            }
            IssueError::NoFamilyKey { .. } | IssueError::NotIssued { .. } => {
                Self::new(conflict, "no_family_key", m)
            }
            IssueError::ForeignReservation { .. } => {
                Self::new(StatusCode::BAD_REQUEST, "foreign_reservation", m)
            }
            // Spent and recorded, not signed: the devices resume from the record.
            IssueError::Sign(_) => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "sign_failed", m),
            _ => Self::new(StatusCode::SERVICE_UNAVAILABLE, "hsm_unavailable", m),
        }
    }
}

impl From<JobOpError> for ApiError {
    fn from(e: JobOpError) -> Self {
        let m = e.to_string();
        let conflict = StatusCode::CONFLICT;
        match e {
            JobOpError::Issue(i) => i.into(),
            JobOpError::Job(_) => Self::new(StatusCode::BAD_REQUEST, "bad_job", m),
            JobOpError::WrongHsm { job, .. } => {
                Self::new(StatusCode::BAD_REQUEST, "wrong_hsm", m).job(&job)
            }
            JobOpError::UnknownProduct { .. } => {
                Self::new(StatusCode::NOT_FOUND, "unknown_product", m)
            }
            JobOpError::Firmware(_) => Self::new(StatusCode::BAD_REQUEST, "bad_firmware", m),
            JobOpError::OverRemaining {
                remaining, asked, ..
            } => Self::new(conflict, "over_remaining", m).counts(remaining, asked),
            JobOpError::Exists { job, seq } => {
                Self::new(conflict, "job_exists", m).job(&job).seq(seq)
            }
            JobOpError::UnknownJob { job } => {
                Self::new(StatusCode::NOT_FOUND, "unknown_job", m).job(&job)
            }
            JobOpError::OtherPackage { job } => Self::new(conflict, "other_package", m).job(&job),
            JobOpError::Closed { job, seq } => {
                Self::new(conflict, "job_closed", m).job(&job).seq(seq)
            }
            _ => Self::new(StatusCode::SERVICE_UNAVAILABLE, "hsm_unavailable", m),
        }
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

impl Service {
    /// The service over an open HSM.
    pub fn new(hsm: Arc<Hsm>, station_ca: Vec<u8>, operator_ca: Option<Vec<u8>>) -> Self {
        Self {
            hsm,
            jobs: Mutex::new(HashMap::new()),
            batches: Mutex::new(Batches::default()),
            daily: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            metrics: crate::metrics::Metrics::new(),
            last_contact: Mutex::new(HashMap::new()),
            station_ca,
            operator_ca,
        }
    }

    /// What a connection's leaf certificate is. The handshake accepted it under the station CA
    /// or the operator CA; which one is decided here, each by its own validation, so that an
    /// operator CA cannot make a station nor the station CA an operator.
    fn classify(&self, leaf: &[u8]) -> Peer {
        let now = self.hsm.now();
        let chains_to = |root: &[u8]| {
            trustfab_pki::validate(
                leaf,
                &trustfab_pki::Policy {
                    root,
                    intermediates: &[],
                    crls: &[],
                    now,
                    purpose: trustfab_pki::Purpose::ClientAuth,
                },
            )
        };
        // Without an operator CA the handshake validated to the station CA alone (an expired
        // certificate is the HSM's `station_expired`, from its own clock): nothing to redo.
        let to_station_ca = match &self.operator_ca {
            Some(_) => chains_to(&self.station_ca),
            None => Ok(()),
        };
        let station = match to_station_ca {
            Err(e) => Err(format!(
                "the client certificate does not validate to the station CA: {e}"
            )),
            Ok(()) => parse_station_cert(leaf)
                .map(Arc::new)
                .map_err(|e| format!("the client certificate is not a station's: {e}")),
        };
        let operator = self.operator_ca.as_deref().and_then(|ca| {
            chains_to(ca).ok().map(|()| {
                use sha2::Digest as _;
                hex::encode(sha2::Sha256::digest(leaf))
            })
        });
        Peer(station, operator)
    }

    /// The station a request comes from, admitted by the HSM (certified here, not revoked, not
    /// expired).
    fn admit(&self, peer: &Peer) -> Result<Arc<StationCert>, ApiError> {
        let cert = peer
            .0
            .as_ref()
            .map_err(|m| ApiError::new(StatusCode::FORBIDDEN, "station_certificate", m.clone()))?;
        self.hsm.admit_station(cert)?;
        if self.operator_ca.is_some() {
            let now = self.hsm.now().0;
            let mut seen = self
                .last_contact
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match seen.get_mut(cert.station_id.as_str()) {
                Some(t) => *t = now,
                None => {
                    seen.insert(cert.station_id.as_str().to_owned(), now);
                }
            }
        }
        Ok(Arc::clone(cert))
    }

    fn granted(cert: &StationCert, product: &ProductKey) -> Result<(), ApiError> {
        if cert.grant.allows(product) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "product_not_granted",
                format!(
                    "station {} may not provision product {product}",
                    cert.station_id
                ),
            ))
        }
    }

    /// The attached reservation of `job`, for a station granted its product.
    fn attached(&self, cert: &StationCert, job: &JobId) -> Result<Arc<Reservation>, ApiError> {
        let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        let r = jobs.get(job).ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "job_not_attached",
                format!("job {job} is not attached to this service: POST its package to /v1/jobs/attach"),
            )
            .job(job)
        })?;
        Self::granted(cert, r.product())?;
        Ok(Arc::clone(r))
    }

    /// Holds `n` devices of the station's day (UTC) for a batch when its grant has a per-day
    /// ceiling: refused when the day's certificates and the batches in flight leave fewer.
    fn hold_day(&self, cert: &StationCert, n: u64) -> Result<(), ApiError> {
        let Some(max) = cert.grant.max_per_day else {
            return Ok(());
        };
        // The HSM's clock: the one its issuance records are dated by.
        let day = self.hsm.now().0 / 86_400;
        let mut daily = self.daily.lock().unwrap_or_else(PoisonError::into_inner);
        let d = daily.entry(cert.station_id.clone()).or_insert(Daily {
            day: u64::MAX,
            used: 0,
            pending: 0,
        });
        if d.day != day {
            *d = Daily {
                day,
                used: self
                    .hsm
                    .station_issued_since(&cert.station_id, UnixTime(day * 86_400))?,
                pending: 0,
            };
        }
        let left = max.saturating_sub(d.used.saturating_add(d.pending));
        if n > left {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "station_day_ceiling",
                format!(
                    "station {} has {left} devices left of its {max} for today (UTC), {n} asked",
                    cert.station_id
                ),
            )
            .counts(left, n));
        }
        d.pending += n;
        Ok(())
    }

    /// Releases a batch's hold: `issued` of its `n` devices became certificates of the day.
    fn settle_day(&self, cert: &StationCert, n: u64, issued: u64) {
        if cert.grant.max_per_day.is_none() {
            return;
        }
        let mut daily = self.daily.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(d) = daily.get_mut(&cert.station_id) {
            d.pending = d.pending.saturating_sub(n);
            d.used = d.used.saturating_add(issued);
        }
    }

    fn keep(&self, r: Reservation) {
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(r.job_id().clone(), Arc::new(r));
    }

    fn wire_reservation(r: &Reservation) -> wire::WireReservation {
        wire::WireReservation {
            job_id: r.job_id().clone(),
            package: wire::B64(r.package().as_bytes().to_vec()),
            created_seq: r.created_seq(),
            legacy: r.is_legacy(),
        }
    }
}

/// Runs `op` for an admitted station in a blocking thread.
async fn blocking<T: Serialize + Send + 'static>(
    svc: Arc<Service>,
    peer: Peer,
    op: impl FnOnce(&Service, &StationCert) -> Result<T, ApiError> + Send + 'static,
) -> ApiResult<T> {
    if svc.draining.load(Ordering::Relaxed) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "the service is stopping; try again",
        ));
    }
    tokio::task::spawn_blocking(move || {
        let cert = svc.admit(&peer)?;
        op(&svc, &cert)
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the request's worker failed: {e}"),
        )
    })?
    .map(Json)
}

fn product_of(oem: &str, product: &str) -> Result<ProductKey, ApiError> {
    let oem = OemId::new(oem).map_err(|e| ApiError::bad_request(format!("oem: {e}")))?;
    let product =
        ProductId::new(product).map_err(|e| ApiError::bad_request(format!("product: {e}")))?;
    Ok(ProductKey::new(oem, product))
}

fn job_of(job: &str) -> Result<JobId, ApiError> {
    JobId::new(job).map_err(|e| ApiError::bad_request(format!("job: {e}")))
}

/// A request's JSON body ([`read_body`] has bounded it to [`wire::REQUEST_MAX`]).
fn body<T: serde::de::DeserializeOwned>(b: &Bytes) -> Result<T, ApiError> {
    wire::parse(b).map_err(ApiError::bad_request)
}

/// The most body bytes read, and dropped, of a request over [`wire::REQUEST_MAX`] before its
/// refusal is sent.
const DRAIN_MAX: usize = 8 * wire::REQUEST_MAX;

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("request body is over {} bytes", wire::REQUEST_MAX),
    )
}

/// Reads every request's body before any handler runs: up to [`wire::REQUEST_MAX`] kept for
/// the handler, beyond it dropped (up to [`DRAIN_MAX`]) and refused `too_large`. A refusal
/// answered while the client still writes its body, with the body left unread, closes the
/// connection under the client: it sees a reset, never the answer (a route that takes no
/// body, a bad id in the path, a body over the limit).
async fn read_body(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use http_body_util::BodyExt as _;
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > u64::try_from(DRAIN_MAX).unwrap_or(u64::MAX)) {
        return too_large().into_response();
    }
    let (parts, mut body) = req.into_parts();
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => return ApiError::bad_request(format!("request body: {e}")).into_response(),
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen = seen.saturating_add(data.len());
        if seen <= wire::REQUEST_MAX {
            kept.extend_from_slice(&data);
        } else {
            kept = Vec::new();
            if seen > DRAIN_MAX {
                break;
            }
        }
    }
    if seen > wire::REQUEST_MAX {
        return too_large().into_response();
    }
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(kept),
    ))
    .await
}

async fn health() -> Json<wire::Health> {
    Json(wire::Health::of("ok"))
}

async fn ready(State(svc): State<Arc<Service>>) -> Response {
    if svc.draining.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(wire::Health::of("draining")),
        )
            .into_response();
    }
    let hsm = Arc::clone(&svc.hsm);
    // The ledger answers and its chain checks out to the head.
    match tokio::task::spawn_blocking(move || hsm.products()).await {
        Ok(Ok(_)) => Json(wire::Health::of("ready")).into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(wire::Health::of("unavailable")),
        )
            .into_response(),
    }
}

async fn hsm_info(
    State(svc): State<Arc<Service>>,
    Extension(peer): Extension<Peer>,
) -> ApiResult<wire::HsmInfo> {
    blocking(svc, peer, |s, cert| {
        Ok(wire::HsmInfo {
            api: wire::API_VERSION.into(),
            hsm_id: s.hsm.hsm_id().clone(),
            identity_point: wire::Hex(s.hsm.identity_point().to_vec()),
            station: cert.station_id.clone(),
            products: cert.grant.products.clone(),
            max_devices: cert.grant.max_devices,
        })
    })
    .await
}

async fn products(
    State(svc): State<Arc<Service>>,
    Extension(peer): Extension<Peer>,
) -> ApiResult<wire::ProductList> {
    blocking(svc, peer, |s, cert| {
        let all = s.hsm.products().map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "hsm_unavailable",
                e.to_string(),
            )
        })?;
        Ok(wire::ProductList {
            products: all
                .into_iter()
                .filter(|p| cert.grant.allows(&p.product))
                .map(Into::into)
                .collect(),
        })
    })
    .await
}

async fn chain(
    State(svc): State<Arc<Service>>,
    Extension(peer): Extension<Peer>,
    Path((oem, product)): Path<(String, String)>,
) -> ApiResult<wire::Chain> {
    let product = product_of(&oem, &product)?;
    blocking(svc, peer, move |s, cert| {
        Service::granted(cert, &product)?;
        let (root, ca) = s.hsm.chain(&product)?;
        Ok(wire::Chain {
            root: wire::B64(root),
            device_ca: ca.map(wire::B64),
        })
    })
    .await
}

async fn firmware(
    State(svc): State<Arc<Service>>,
    Extension(peer): Extension<Peer>,
    Path((oem, product)): Path<(String, String)>,
) -> ApiResult<wire::Firmware> {
    let product = product_of(&oem, &product)?;
    blocking(svc, peer, move |s, cert| {
        Service::granted(cert, &product)?;
        Ok(wire::Firmware {
            firmware: s.hsm.firmware(&product)?.map(Into::into),
        })
    })
    .await
}

async fn reserve(
    State(svc): State<Arc<Service>>,
    Extension(peer): Extension<Peer>,
    b: Bytes,
) -> ApiResult<wire::WireReservation> {
    let req: wire::ReserveRequest = body(&b)?;
    blocking(svc, peer, move |s, cert| {
        Service::granted(cert, &req.spec.product)?;
        let r = s.hsm.reserve_as(req.spec, Some(&Caller::of(cert)))?;
        let w = Service::wire_reservation(&r);
        s.keep(r);
        Ok(w)
    })
    .await
}

async fn attach(
    State(svc): State<Arc<Service>>,
    Extension(peer): Extension<Peer>,
    b: Bytes,
) -> ApiResult<wire::WireReservation> {
    let req: wire::AttachRequest = body(&b)?;
    blocking(svc, peer, move |s, cert| {
        let r = s.hsm.attach(&req.package.0)?;
        Service::granted(cert, r.product())?;
        let w = Service::wire_reservation(&r);
        s.keep(r);
        Ok(w)
    })
    .await
}

async fn job_package(
    State(svc): State<Arc<Service>>,
    Extension(peer): Extension<Peer>,
    Path(job): Path<String>,
) -> ApiResult<wire::WireReservation> {
    let job = job_of(&job)?;
    blocking(svc, peer, move |s, cert| {
        let Some(r) = s.hsm.job_package(&job)? else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no_package",
                format!("the ledger's record of job {job} does not carry its package"),
            )
            .job(&job));
        };
        Service::granted(cert, r.product())?;
        let w = Service::wire_reservation(&r);
        s.keep(r);
        Ok(w)
    })
    .await
}

async fn job_status(
    State(svc): State<Arc<Service>>,
    Extension(peer): Extension<Peer>,
    Path(job): Path<String>,
) -> ApiResult<wire::WireStatus> {
    let job = job_of(&job)?;
    blocking(svc, peer, move |s, cert| {
        let r = s.attached(cert, &job)?;
        Ok(s.hsm.job_status(&r)?.into())
    })
    .await
}

async fn issue(
    State(svc): State<Arc<Service>>,
    Extension(peer): Extension<Peer>,
    Path(job): Path<String>,
    b: Bytes,
) -> ApiResult<wire::IssueResponse> {
    let job = job_of(&job)?;
    let req: wire::IssueRequest = body(&b)?;
    if req.batch.0.len() != 16 {
        return Err(ApiError::bad_request("batch: a batch id is 16 bytes"));
    }
    if req.devices.is_empty() || req.devices.len() > wire::BATCH_MAX {
        return Err(ApiError::bad_request(format!(
            "devices: a batch holds 1 to {} devices, this one {}",
            wire::BATCH_MAX,
            req.devices.len()
        )));
    }
    let devices = req
        .devices
        .iter()
        .map(DeviceKey::try_from)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "bad_device", m))?;
    let digest = batch_digest(&req.devices);
    blocking(svc, peer, move |s, cert| {
        let r = s.attached(cert, &job)?;
        let check = s
            .batches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .check(cert.station_id.as_str(), &req.batch.0, digest);
        match check {
            BatchCheck::Go => {}
            BatchCheck::Reused => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "batch_reused",
                    format!(
                        "batch {} was sent before with other devices",
                        hex::encode(&req.batch.0)
                    ),
                )
                .job(&job));
            }
            BatchCheck::Stale { high } => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "batch_stale",
                    format!(
                        "batch {} is more than {BATCH_WINDOW} below its session's batch {high}: \
                         out of order or replayed",
                        hex::encode(&req.batch.0)
                    ),
                )
                .job(&job));
            }
        }
        let n = u64::try_from(devices.len()).unwrap_or(u64::MAX);
        s.hold_day(cert, n)?;
        let t0 = std::time::Instant::now();
        let out = s.hsm.issue_as(&r, &devices, Some(&Caller::of(cert)));
        s.metrics.batch(t0.elapsed().as_secs_f64());
        let issued = match &out {
            Ok(v) => u64::try_from(v.iter().filter(|i| !i.reissued).count()).unwrap_or(n),
            // Spent and recorded, not signed: they count.
            Err(IssueError::Sign(_)) => n,
            Err(_) => 0,
        };
        s.settle_day(cert, n, issued);
        Ok(wire::IssueResponse {
            issued: out?.into_iter().map(Into::into).collect(),
        })
    })
    .await
}

fn batch_digest(devices: &[wire::WireDevice]) -> [u8; 32] {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for d in devices {
        for part in [&d.uid.0, &d.public_key.0] {
            h.update(u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
            h.update(part);
        }
    }
    h.finalize().into()
}

async fn certificate(
    State(svc): State<Arc<Service>>,
    Extension(peer): Extension<Peer>,
    Path(job): Path<String>,
    b: Bytes,
) -> ApiResult<wire::CertificateResponse> {
    let job = job_of(&job)?;
    let req: wire::UidRequest = body(&b)?;
    let uid = DeviceUid::new(&req.uid.0).map_err(|e| ApiError::bad_request(format!("uid: {e}")))?;
    blocking(svc, peer, move |s, cert| {
        let r = s.attached(cert, &job)?;
        Ok(wire::CertificateResponse {
            issued: trustfab_hsm::HsmClient::certificate_for(&*s.hsm, &r, &uid)?.map(Into::into),
        })
    })
    .await
}

async fn certificates(
    State(svc): State<Arc<Service>>,
    Extension(peer): Extension<Peer>,
    Path(job): Path<String>,
    b: Bytes,
) -> ApiResult<wire::CertificatesResponse> {
    let job = job_of(&job)?;
    let req: wire::UidsRequest = body(&b)?;
    if req.uids.len() > wire::BATCH_MAX {
        return Err(ApiError::bad_request(format!(
            "uids: at most {} per request",
            wire::BATCH_MAX
        )));
    }
    let uids = req
        .uids
        .iter()
        .map(|h| DeviceUid::new(&h.0))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::bad_request(format!("uids: {e}")))?;
    blocking(svc, peer, move |s, cert| {
        let r = s.attached(cert, &job)?;
        let mut issued = Vec::new();
        for uid in &uids {
            if let Some(i) = trustfab_hsm::HsmClient::certificate_for(&*s.hsm, &r, uid)? {
                issued.push(i.into());
            }
        }
        Ok(wire::CertificatesResponse { issued })
    })
    .await
}

async fn family_key(
    State(svc): State<Arc<Service>>,
    Extension(peer): Extension<Peer>,
    Path(job): Path<String>,
    b: Bytes,
) -> ApiResult<wire::FamilyKeyResponse> {
    let job = job_of(&job)?;
    let req: wire::UidRequest = body(&b)?;
    let uid = DeviceUid::new(&req.uid.0).map_err(|e| ApiError::bad_request(format!("uid: {e}")))?;
    blocking(svc, peer, move |s, cert| {
        let r = s.attached(cert, &job)?;
        Ok(wire::FamilyKeyResponse {
            wrapped: wire::B64(trustfab_hsm::HsmClient::family_key_for(&*s.hsm, &r, &uid)?),
        })
    })
    .await
}

async fn outcomes(
    State(svc): State<Arc<Service>>,
    Extension(peer): Extension<Peer>,
    Path(job): Path<String>,
    b: Bytes,
) -> ApiResult<wire::Health> {
    let job = job_of(&job)?;
    let req: wire::OutcomesRequest = body(&b)?;
    if req.outcomes.len() > wire::OUTCOMES_MAX {
        return Err(ApiError::bad_request(format!(
            "outcomes: at most {} per request",
            wire::OUTCOMES_MAX
        )));
    }
    let list = req
        .outcomes
        .into_iter()
        .map(|o| o.into_outcome(&job))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ApiError::bad_request)?;
    blocking(svc, peer, move |s, cert| {
        let r = s.attached(cert, &job)?;
        s.hsm
            .record_outcomes_as(&r, list, Some(&Caller::of(cert)))?;
        Ok(wire::Health::of("recorded"))
    })
    .await
}

async fn close(
    State(svc): State<Arc<Service>>,
    Extension(peer): Extension<Peer>,
    Path(job): Path<String>,
) -> ApiResult<wire::CloseResponse> {
    let job = job_of(&job)?;
    blocking(svc, peer, move |s, cert| {
        // Close takes a reservation of its own, made again from the attached one's package.
        let r = s.hsm.attach(s.attached(cert, &job)?.package().as_bytes())?;
        let closed = s.hsm.close_as(r, Some(&Caller::of(cert)))?;
        Ok(wire::CloseResponse { closed })
    })
    .await
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this operation takes another method (docs/service.md)",
    )
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such operation (the API is under /v1/, docs/service.md)",
    )
}

/// The API's routes over `svc`.
pub fn router(svc: Arc<Service>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/ready", get(ready))
        .route("/v1/hsm", get(hsm_info))
        .route("/v1/products", get(products))
        .route("/v1/products/{oem}/{product}/chain", get(chain))
        .route("/v1/products/{oem}/{product}/firmware", get(firmware))
        .route("/v1/jobs", post(reserve))
        .route("/v1/jobs/attach", post(attach))
        .route("/v1/jobs/{job}/package", get(job_package))
        .route("/v1/jobs/{job}/status", get(job_status))
        .route("/v1/jobs/{job}/issue", post(issue))
        .route("/v1/jobs/{job}/certificate", post(certificate))
        .route("/v1/jobs/{job}/certificates", post(certificates))
        .route("/v1/jobs/{job}/family-key", post(family_key))
        .route("/v1/jobs/{job}/outcomes", post(outcomes))
        .route("/v1/jobs/{job}/close", post(close))
        .route("/metrics", get(metrics))
        .route(
            "/console/",
            get(|Extension(p): Extension<Peer>| async move {
                console_asset(&p, "text/html; charset=utf-8", CONSOLE_HTML)
            }),
        )
        .route(
            "/console/console.js",
            get(|Extension(p): Extension<Peer>| async move {
                console_asset(&p, "text/javascript; charset=utf-8", CONSOLE_JS)
            }),
        )
        .route(
            "/console/console.css",
            get(|Extension(p): Extension<Peer>| async move {
                console_asset(&p, "text/css; charset=utf-8", CONSOLE_CSS)
            }),
        )
        .route("/console/state", get(console_state))
        .route("/console/report/{oem}/{product}", get(console_report))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(wire::REQUEST_MAX))
        .layer(axum::middleware::from_fn(read_body))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&svc),
            count_refusals,
        ))
        .with_state(svc)
}

/// Serves `hsm` until SIGTERM or SIGINT, then drains: no new connection or request is taken,
/// requests in flight finish (up to `opts.drain`), and it returns. What it acknowledged is in
/// the ledger before the answer left (every operation appends before it answers), so a SIGKILL
/// loses nothing acknowledged. The address it listens on goes to standard error first.
///
/// # Errors
/// A [`ServeError`].
pub fn serve(hsm: Arc<Hsm>, ca_der: &[u8], opts: &ServeOptions) -> Result<(), ServeError> {
    let listener = bind(opts.listen)?;
    let addr = listener.local_addr().unwrap_or(opts.listen);
    let loopback = bind_loopback(opts)?;
    let tls = tls_for(&hsm, ca_der, opts)?;
    let rt = runtime()?;
    eprintln!(
        "trustfab HSM service {} listening on https://{addr}",
        hsm.hsm_id()
    );
    if let Some((_, a)) = &loopback {
        eprintln!("console for this host on http://{a}/console/");
    }
    rt.block_on(async move {
        let listener = TcpListener::from_std(listener)
            .map_err(|source| ServeError::Listen { addr, source })?;
        let loopback = match loopback {
            Some((l, a)) => Some(
                TcpListener::from_std(l)
                    .map_err(|source| ServeError::Listen { addr: a, source })?,
            ),
            None => None,
        };
        let svc = Arc::new(Service::new(hsm, ca_der.to_vec(), opts.operator_ca.clone()));
        run(listener, loopback, tls, svc, opts, shutdown_signal()).await;
        Ok(())
    })
}

/// The console's loopback listener and its address, when `opts` asks for one.
fn bind_loopback(
    opts: &ServeOptions,
) -> Result<Option<(std::net::TcpListener, SocketAddr)>, ServeError> {
    let Some(at) = opts.console_loopback else {
        return Ok(None);
    };
    if !at.ip().is_loopback() {
        return Err(ServeError::NotLoopback(at));
    }
    let l = bind(at)?;
    let a = l.local_addr().unwrap_or(at);
    Ok(Some((l, a)))
}

fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, ServeError> {
    let l =
        std::net::TcpListener::bind(addr).map_err(|source| ServeError::Listen { addr, source })?;
    l.set_nonblocking(true)
        .map_err(|source| ServeError::Listen { addr, source })?;
    Ok(l)
}

fn tls_for(
    hsm: &Arc<Hsm>,
    ca_der: &[u8],
    opts: &ServeOptions,
) -> Result<Arc<rustls::ServerConfig>, ServeError> {
    let cert = hsm.service_tls(ca_der, &opts.names, opts.cert_days)?;
    Ok(Arc::new(crate::tls::server_config(
        Arc::clone(hsm),
        ca_der,
        opts.operator_ca.as_deref(),
        cert,
    )?))
}

fn runtime() -> Result<tokio::runtime::Runtime, ServeError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(256)
        .build()
        .map_err(ServeError::Runtime)
}

/// A service running on a thread of this process (the demo's, and tests'): stopped, with its
/// drain, by [`Running::stop`] or on drop.
pub struct Running {
    addr: SocketAddr,
    console: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The console's loopback address, when it serves one.
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console
    }

    /// Its URL, `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Stops it: drains and waits for its thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts the service on a thread of this process.
///
/// # Errors
/// A [`ServeError`].
pub fn spawn(hsm: Arc<Hsm>, ca_der: &[u8], opts: &ServeOptions) -> Result<Running, ServeError> {
    let listener = bind(opts.listen)?;
    let addr = listener.local_addr().unwrap_or(opts.listen);
    let loopback = bind_loopback(opts)?;
    let console = loopback.as_ref().map(|(_, a)| *a);
    let tls = tls_for(&hsm, ca_der, opts)?;
    let rt = runtime()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let opts = opts.clone();
    let ca_der = ca_der.to_vec();
    let thread = std::thread::Builder::new()
        .name("hsm-service".into())
        .spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = TcpListener::from_std(listener) else {
                    return;
                };
                let loopback = match loopback.map(|(l, _)| TcpListener::from_std(l)) {
                    Some(Ok(l)) => Some(l),
                    Some(Err(_)) => return,
                    None => None,
                };
                let svc = Arc::new(Service::new(hsm, ca_der, opts.operator_ca.clone()));
                run(listener, loopback, tls, svc, &opts, async {
                    let _ = rx.await;
                })
                .await;
            });
        })
        .map_err(ServeError::Runtime)?;
    Ok(Running {
        addr,
        console,
        stop: Some(tx),
        thread: Some(thread),
    })
}

/// The next connection of `listener`, or never without one.
async fn accept_some(
    listener: Option<&TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// The `Host` names a loopback console request may carry: an address of this host, or
/// `localhost` (a name another site resolves to 127.0.0.1, the DNS rebinding of a page in a
/// browser on this host, is refused).
fn loopback_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((n, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => host,
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Refused unless the request names this host (see [`loopback_host`]).
async fn loopback_only(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let host = req
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if loopback_host(host) {
        next.run(req).await
    } else {
        ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "not_loopback",
            format!(
                "the console without a certificate answers requests for this host only, not \
                 for {host:?}"
            ),
        )
        .into_response()
    }
}

/// One connection of the console's loopback listener: plain HTTP, the operator's routes as an
/// operator named `loopback`, no station.
fn serve_loopback(
    tcp: tokio::net::TcpStream,
    from: SocketAddr,
    app: &Router,
    graceful: &hyper_util::server::graceful::GracefulShutdown,
    open: &Arc<AtomicUsize>,
    max: usize,
) {
    if !from.ip().is_loopback() || open.load(Ordering::Relaxed) >= max {
        return;
    }
    let _ = tcp.set_nodelay(true);
    let peer = Peer(
        Err("the console's loopback listener serves no station".into()),
        Some("loopback".into()),
    );
    let app = app
        .clone()
        .layer(axum::middleware::from_fn(loopback_only))
        .layer(Extension(peer));
    let watcher = graceful.watcher();
    let open = Arc::clone(open);
    open.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        serve_http(tcp, app, watcher).await;
        open.fetch_sub(1, Ordering::Relaxed);
    });
}

/// HTTP/1.1 with keep-alive over `io` until it closes or the drain ends it; a connection that
/// sends no request head in time is closed.
async fn serve_http<I>(io: I, app: Router, watcher: hyper_util::server::graceful::Watcher)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let hyper_svc = hyper::service::service_fn(move |req| app.clone().oneshot(req));
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), hyper_svc);
    let _ = watcher.watch(conn).await;
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        // Without signal handlers the process ends on the signal, as a SIGKILL would.
        _ => std::future::pending::<()>().await,
    }
}

/// The accept loop over `listener` until `stop` completes, then the drain.
pub async fn run(
    listener: TcpListener,
    loopback: Option<TcpListener>,
    tls: Arc<rustls::ServerConfig>,
    svc: Arc<Service>,
    opts: &ServeOptions,
    stop: impl std::future::Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let app = router(Arc::clone(&svc));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // With operators, the console's ticker: the ledger read to its head and a chart sample,
    // once a second.
    let ticker = (svc.operator_ca.is_some() || loopback.is_some()).then(|| {
        let svc = Arc::clone(&svc);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                every.tick().await;
                let svc = Arc::clone(&svc);
                let _ = tokio::task::spawn_blocking(move || svc.metrics.tick(&svc.hsm)).await;
            }
        })
    });
    let open = Arc::new(AtomicUsize::new(0));
    tokio::pin!(stop);
    loop {
        let (tcp, _) = tokio::select! {
            () = &mut stop => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            r = accept_some(loopback.as_ref()) => {
                if let Ok((tcp, from)) = r {
                    serve_loopback(tcp, from, &app, &graceful, &open, opts.max_connections);
                }
                continue;
            }
        };
        if open.load(Ordering::Relaxed) >= opts.max_connections {
            drop(tcp);
            continue;
        }
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        let open = Arc::clone(&open);
        let svc = Arc::clone(&svc);
        open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let handshake =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await;
            if let Ok(Ok(stream)) = handshake {
                let peer = match stream.get_ref().1.peer_certificates() {
                    Some([leaf, ..]) => svc.classify(leaf.as_ref()),
                    _ => Peer(Err("no client certificate".into()), None),
                };
                serve_http(stream, app.layer(Extension(peer)), watcher).await;
            }
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    svc.draining.store(true, Ordering::Relaxed);
    if let Some(t) = ticker {
        t.abort();
    }
    drop(listener);
    drop(loopback);
    let _ = tokio::time::timeout(opts.drain, graceful.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::loopback_host;

    #[test]
    fn only_names_of_this_host_are_loopback_hosts() {
        for ok in [
            "127.0.0.1:9443",
            "127.9.8.7",
            "localhost:1",
            "LOCALHOST",
            "[::1]:9443",
            "[::1]",
        ] {
            assert!(loopback_host(ok), "{ok}");
        }
        for refused in [
            "",
            "rebind.example:9443",
            "localhost.example",
            "10.0.0.1:9443",
            "[::2]:1",
            "127.0.0.1.nip.io",
            "localhost:x",
            "0.0.0.0",
        ] {
            assert!(!loopback_host(refused), "{refused}");
        }
    }
}
