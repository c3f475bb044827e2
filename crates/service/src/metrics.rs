//! What the service tells its operators: `GET /metrics` in the Prometheus text format
//! (OpenMetrics, encoded by `prometheus-client`).
//!
//! Two sources. What was made is read from the ledger: a tail that reads each record once, in
//! order, and checks the hash chain as it goes (seq gapless from 1, each `prev_hash` the hash
//! before, each hash recomputed), so a number shown is one the chain carries: certificates per
//! product, job and station; devices good and failed per job, station and step; jobs and their
//! quantities. A break in the chain stops the tally where it is and says so
//! (`trustfab_ledger_chain_ok 0`). The products' ordered, issued and remaining counts are the
//! HSM's own (its sealed account). What the process did is counted as it happens: issuance
//! batch latency, requests refused by code, the ledger's append latency (the store's own
//! histogram) and the token's sessions in use.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use trustfab_formats::records::{
    self, DeviceFailed, DeviceGood, IssuanceRecord, JobClosed, JobCreated, StationRevoked,
};
use trustfab_hsm::Hsm;
use trustfab_ledger::{record_hash, Hash, Kind, GENESIS_HASH};

/// The content type of a `/metrics` answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Records the tail reads at most per scrape (a scrape of a new service on a long ledger
/// catches up over several).
const TAIL_PER_SCRAPE: usize = 1 << 20;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProductLabels {
    product: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuedLabels {
    product: String,
    job: String,
    station: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobStationLabels {
    job: String,
    station: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailedLabels {
    job: String,
    station: String,
    step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    job: String,
    product: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: String,
}

/// A job as its records say.
#[derive(Clone, Debug, Default)]
struct JobInfo {
    product: String,
    quantity: u64,
    closed: bool,
}

/// The ledger as read so far.
#[derive(Debug)]
struct Tally {
    /// The last record read: its seq and hash.
    seq: u64,
    hash: Hash,
    /// Why the tail stopped, when the chain broke or a record did not decode.
    broken: Option<String>,
    issued: HashMap<IssuedLabels, u64>,
    good: HashMap<JobStationLabels, u64>,
    failed: HashMap<FailedLabels, u64>,
    /// Failed attempts by step and reason (for the console).
    reasons: HashMap<(String, String), u64>,
    jobs: HashMap<String, JobInfo>,
    /// Stations revoked, by id.
    revoked: HashSet<String>,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            seq: 0,
            hash: GENESIS_HASH,
            broken: None,
            issued: HashMap::new(),
            good: HashMap::new(),
            failed: HashMap::new(),
            reasons: HashMap::new(),
            jobs: HashMap::new(),
            revoked: HashSet::new(),
        }
    }
}

fn station_label(s: Option<&trustfab_types::StationId>) -> String {
    s.map_or_else(|| "-".to_owned(), |s| s.as_str().to_owned())
}

impl Tally {
    /// Reads the records after the last one read, checking the chain.
    fn catch_up(&mut self, hsm: &Hsm) {
        if self.broken.is_some() {
            return;
        }
        for rec in hsm.ledger().records(self.seq + 1).take(TAIL_PER_SCRAPE) {
            let rec = match rec {
                Ok(r) => r,
                Err(e) => {
                    self.broken = Some(format!("record {}: {e}", self.seq + 1));
                    return;
                }
            };
            if rec.seq != self.seq + 1
                || rec.prev_hash != self.hash
                || record_hash(
                    &rec.prev_hash,
                    rec.seq,
                    rec.kind.code(),
                    &rec.body,
                    &rec.effects,
                ) != rec.hash
            {
                self.broken = Some(format!(
                    "record {}: the hash chain breaks after record {}",
                    rec.seq, self.seq
                ));
                return;
            }
            if let Err(e) = self.count(rec.kind, &rec.body) {
                self.broken = Some(format!("record {}: {e}", rec.seq));
                return;
            }
            self.seq = rec.seq;
            self.hash = rec.hash;
        }
    }

    fn count(&mut self, kind: Kind, body: &[u8]) -> Result<(), records::RecordError> {
        match kind {
            Kind::CertificateIssued => {
                let r = IssuanceRecord::decode(body)?;
                *self
                    .issued
                    .entry(IssuedLabels {
                        product: r.product.to_string(),
                        job: r.job.map_or_else(|| "-".to_owned(), |j| j.to_string()),
                        station: station_label(r.station.as_ref()),
                    })
                    .or_default() += 1;
            }
            Kind::DeviceLocked => {
                let g: DeviceGood = records::decode(body)?;
                *self
                    .good
                    .entry(JobStationLabels {
                        job: g.job.to_string(),
                        station: station_label(g.station.as_ref()),
                    })
                    .or_default() += 1;
            }
            Kind::DeviceFailed => {
                let f: DeviceFailed = records::decode(body)?;
                *self
                    .reasons
                    .entry((f.step_name.clone(), f.reason.clone()))
                    .or_default() += 1;
                *self
                    .failed
                    .entry(FailedLabels {
                        job: f.job.to_string(),
                        station: station_label(f.station.as_ref()),
                        step: f.step_name,
                    })
                    .or_default() += 1;
            }
            Kind::JobCreated => {
                let j: JobCreated = records::decode(body)?;
                self.jobs.insert(
                    j.job.to_string(),
                    JobInfo {
                        product: j.product.to_string(),
                        quantity: j.quantity,
                        closed: false,
                    },
                );
            }
            Kind::JobClosed => {
                let j: JobClosed = records::decode(body)?;
                self.jobs.entry(j.job.to_string()).or_default().closed = true;
            }
            Kind::StationRevoked => {
                let r: StationRevoked = records::decode(body)?;
                self.revoked.insert(r.station.as_str().to_owned());
            }
            _ => {}
        }
        Ok(())
    }
}

/// Samples of the console's devices/s chart kept: ten minutes at one a second.
const HISTORY: usize = 600;

/// The service's metrics: the ledger tail and the process's own counts.
pub(crate) struct Metrics {
    tally: Mutex<Tally>,
    /// (time, devices good, certificates issued) once a second while the console runs, for
    /// its devices/s chart: the last [`HISTORY`] samples.
    history: Mutex<VecDeque<(u64, u64, u64)>>,
    batch_seconds: Histogram,
    refused: Family<CodeLabels, Counter>,
}

/// A counter family with the tally's counts.
fn counters<L>(counts: &HashMap<L, u64>) -> Family<L, Counter>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let f = Family::<L, Counter>::default();
    for (l, n) in counts {
        f.get_or_create(l).inc_by(*n);
    }
    f
}

fn u(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Metrics {
    pub(crate) fn new() -> Self {
        Self {
            tally: Mutex::new(Tally::default()),
            history: Mutex::new(VecDeque::new()),
            // 1 ms to about 16 s.
            batch_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            refused: Family::default(),
        }
    }

    /// One issuance batch took `seconds` in the HSM (admission, spend, record, sign).
    pub(crate) fn batch(&self, seconds: f64) {
        self.batch_seconds.observe(seconds);
    }

    /// A request was refused with `code`.
    pub(crate) fn refused(&self, code: &str) {
        self.refused
            .get_or_create(&CodeLabels {
                code: code.to_owned(),
            })
            .inc();
    }

    /// The text of a scrape: the ledger read up to its current head first.
    pub(crate) fn render(&self, hsm: &Hsm) -> Result<String, String> {
        let mut reg = Registry::with_prefix("trustfab");
        let products = hsm.products().map_err(|e| format!("products: {e}"))?;
        for (name, help, pick) in [
            (
                "product_ordered",
                "Units of the product ordered (created plus topped up), the HSM's sealed count",
                (|p: &trustfab_hsm::ProductStatus| p.ordered) as fn(&_) -> u64,
            ),
            (
                "product_issued",
                "Units of the product spent (certificates, and reservations of open jobs)",
                |p| p.issued,
            ),
            (
                "product_remaining",
                "Units of the product left to reserve or issue",
                |p| p.remaining,
            ),
        ] {
            let f = Family::<ProductLabels, Gauge>::default();
            for p in &products {
                f.get_or_create(&ProductLabels {
                    product: p.product.to_string(),
                })
                .set(u(pick(p)));
            }
            reg.register(name, help, f);
        }

        let mut t = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        t.catch_up(hsm);
        reg.register(
            "certificates_issued",
            "Device certificates issued, from the ledger's CertificateIssued records",
            counters(&t.issued),
        );
        reg.register(
            "devices_good",
            "Devices locked and verified, from the ledger's DeviceLocked records",
            counters(&t.good),
        );
        reg.register(
            "devices_failed",
            "Device attempts that failed, by step, from the ledger's DeviceFailed records",
            counters(&t.failed),
        );
        let quantity = Family::<JobLabels, Gauge>::default();
        let open = Family::<JobLabels, Gauge>::default();
        for (job, j) in &t.jobs {
            let l = JobLabels {
                job: job.clone(),
                product: j.product.clone(),
            };
            quantity.get_or_create(&l).set(u(j.quantity));
            open.get_or_create(&l).set(i64::from(!j.closed));
        }
        reg.register("job_quantity", "Units a job reserved", quantity);
        reg.register("job_open", "1 while a job is not closed", open);
        let head = Gauge::<i64>::default();
        head.set(u(t.seq));
        reg.register(
            "ledger_records_read",
            "Ledger records read and chain-checked by this service (the ledger's head when the chain is whole)",
            head,
        );
        let ok = Gauge::<i64>::default();
        ok.set(i64::from(t.broken.is_none()));
        reg.register(
            "ledger_chain_ok",
            "1 while every record read continues the hash chain and decodes; 0 once one does not",
            ok,
        );
        drop(t);

        reg.register_with_unit(
            "issue_batch",
            "Time an issuance batch took in the HSM (admission, spend and record, signing)",
            Unit::Seconds,
            self.batch_seconds.clone(),
        );
        reg.register(
            "requests_refused",
            "Requests refused, by error code",
            self.refused.clone(),
        );
        reg.register_collector(Box::new(AppendSeconds(hsm.ledger().append_latency())));
        if let Some(s) = hsm.token_sessions() {
            for (name, help, n) in [
                (
                    "token_sessions_in_use",
                    "HSM token sessions an operation holds now",
                    s.in_use,
                ),
                (
                    "token_sessions_open",
                    "HSM token sessions open (logged in), idle or busy",
                    s.open,
                ),
                (
                    "token_sessions_max",
                    "The most HSM token sessions the service opens at once",
                    s.max,
                ),
            ] {
                let g = Gauge::<i64>::default();
                g.set(i64::try_from(n).unwrap_or(i64::MAX));
                reg.register(name, help, g);
            }
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg)
            .map_err(|e| format!("encoding: {e}"))?;
        Ok(out)
    }
}

/// The ledger's append latency as the store read it, encoded as a histogram
/// (`trustfab_ledger_append_seconds`).
#[derive(Debug)]
struct AppendSeconds(trustfab_ledger::AppendLatency);

impl Collector for AppendSeconds {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        // The store's buckets are cumulative; the encoder wants each bucket's own count, the
        // last one unbounded.
        let mut below = 0;
        let mut buckets: Vec<(f64, u64)> = self
            .0
            .buckets
            .iter()
            .map(|(bound, n)| {
                let own = n.saturating_sub(below);
                below = *n;
                (*bound, own)
            })
            .collect();
        buckets.push((f64::MAX, self.0.count.saturating_sub(below)));
        let mut m = encoder.encode_descriptor(
            "ledger_append",
            "Time an append to the ledger waited for its outcome (queue, transaction, sync)",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        m.encode_histogram::<NoLabelSet>(self.0.sum_seconds, self.0.count, &buckets, None)
    }
}

/// A station as the console shows it.
#[derive(Default)]
struct StationView {
    issued: u64,
    good: u64,
    failed: u64,
}

impl Metrics {
    /// Reads the ledger up to its head and keeps a sample for the chart (the console's ticker,
    /// once a second).
    pub(crate) fn tick(&self, hsm: &Hsm) {
        let mut t = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        t.catch_up(hsm);
        let sample = (hsm.now().0, t.good.values().sum(), t.issued.values().sum());
        drop(t);
        let mut h = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        h.push_back(sample);
        while h.len() > HISTORY {
            h.pop_front();
        }
    }

    /// The console's state (`GET /console/state`): products, jobs, stations with their last
    /// contact, failures by step and reason, alarms, the chart's samples and the ledger line.
    pub(crate) fn console(
        &self,
        hsm: &Hsm,
        last_contact: &HashMap<String, u64>,
    ) -> Result<serde_json::Value, String> {
        use serde_json::json;
        let products = hsm.products().map_err(|e| format!("products: {e}"))?;
        let mut t = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        t.catch_up(hsm);
        let now = hsm.now().0;
        let mut jobs: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
        let mut stations: BTreeMap<String, StationView> = BTreeMap::new();
        for (l, n) in &t.issued {
            jobs.entry(l.job.as_str()).or_default().0 += n;
            stations.entry(l.station.clone()).or_default().issued += n;
        }
        for (l, n) in &t.good {
            jobs.entry(l.job.as_str()).or_default().1 += n;
            stations.entry(l.station.clone()).or_default().good += n;
        }
        for (l, n) in &t.failed {
            jobs.entry(l.job.as_str()).or_default().2 += n;
            stations.entry(l.station.clone()).or_default().failed += n;
        }
        for id in last_contact.keys().chain(t.revoked.iter()) {
            stations.entry(id.clone()).or_default();
        }
        stations.remove("-");
        let mut alarms = Vec::new();
        for p in &products {
            if p.ordered > 0 && p.remaining * 10 < p.ordered {
                alarms.push(json!({"level": "warn", "text": format!(
                    "product {}: {} of {} left, under a tenth of the count",
                    p.product, p.remaining, p.ordered
                )}));
            }
        }
        for id in &t.revoked {
            alarms.push(json!({"level": "warn", "text": format!("station {id} is revoked")}));
        }
        if let Some(b) = &t.broken {
            alarms.push(json!({"level": "crit", "text": format!("ledger: {b}")}));
        }
        let good_all: u64 = t.good.values().sum();
        let failed_all: u64 = t.failed.values().sum();
        if failed_all * 20 > good_all + failed_all && failed_all >= 20 {
            alarms.push(json!({"level": "warn", "text": format!(
                "failure rate {failed_all} of {} attempts, over 5%",
                good_all + failed_all
            )}));
        }
        let mut reasons: Vec<_> = t.reasons.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(json!({
            "hsm": hsm.hsm_id().as_str(),
            "now": now,
            "products": products.iter().map(|p| json!({
                "product": p.product.to_string(),
                "ordered": p.ordered,
                "issued": p.issued,
                "remaining": p.remaining,
            })).collect::<Vec<_>>(),
            "jobs": t.jobs.iter().collect::<BTreeMap<_, _>>().into_iter().map(|(j, info)| {
                let (issued, good, failed) = jobs.get(j.as_str()).copied().unwrap_or_default();
                json!({
                    "job": j,
                    "product": info.product,
                    "quantity": info.quantity,
                    "issued": issued,
                    "good": good,
                    "failed": failed,
                    "open": !info.closed,
                })
            }).collect::<Vec<_>>(),
            "stations": stations.iter().map(|(id, s)| json!({
                "station": id,
                "issued": s.issued,
                "good": s.good,
                "failed": s.failed,
                "last_contact": last_contact.get(id),
                "revoked": t.revoked.contains(id),
            })).collect::<Vec<_>>(),
            "failures": reasons.iter().map(|((step, reason), n)| json!({
                "step": step, "reason": reason, "count": n,
            })).collect::<Vec<_>>(),
            "alarms": alarms,
            "rate": history.iter().map(|(t, g, i)| json!({"t": t, "good": g, "issued": i})).collect::<Vec<_>>(),
            "ledger": {
                "records": t.seq,
                "chain_ok": t.broken.is_none(),
                "problem": t.broken,
                "checked_at": now,
            },
        }))
    }
}
