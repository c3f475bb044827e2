//! The HSM service end to end, on a real token (the soft token, cheap Argon2) and a real ledger
//! (a SQLite file): a station over mutual TLS through `RemoteHsm`, and raw requests for what a
//! well-behaved client never sends. Every refusal is checked for its own code and message, and
//! for leaving the books alone: the products' counts, every ledger counter (products, jobs,
//! station ceilings) and the ledger head are the same before and after.

// Fixtures unwrap: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use reqwest::blocking::Client;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Digest as _;
use tempfile::TempDir;
use trustfab_formats::records::{self, DeviceFailed, DeviceGood, IssuanceRecord};
use trustfab_formats::{JobSpec, LockPolicy, PartKind, SlotMap};
use trustfab_hsm::{DeviceKey, DeviceOutcome, Hsm, HsmClient as _, IssueError, JobOpError};
use trustfab_hsm::{ProductStatus, Reservation};
use trustfab_ledger::{Counter, Head, Kind, Store};
use trustfab_ledger_sqlite::SqliteStore;
use trustfab_pki::station::{StationGrant, StationRequest};
use trustfab_pki::{validate, Curve, Policy, PublicKey, Purpose, Signer as _, SoftKey};
use trustfab_service::wire::{self, ErrorBody, ErrorDetail};
use trustfab_service::{RemoteHsm, Running, ServeOptions, StationCredentials};
use trustfab_test_support::site::{Oem, PackageSpec, Site};
use trustfab_token_soft::{Argon2Cost, SoftToken};
use trustfab_types::{
    Clock, DeviceUid, FixedClock, JobId, Passphrase, ProductKey, StationId, SystemClock, UnixTime,
};

/// The product every site has, and its count.
const PRODUCT: &str = "acme/thermo";
const COUNT: u64 = 1000;
/// A second product of the same site, which most stations are not granted.
const OTHER: &str = "acme/spare";
const OTHER_COUNT: u64 = 100;
const DAY: u64 = 86_400;

fn pk(s: &str) -> ProductKey {
    ProductKey::parse(s).unwrap()
}

fn sid(s: &str) -> StationId {
    StationId::new(s).unwrap()
}

fn pass() -> Passphrase {
    Passphrase::new("service test passphrase".into()).unwrap()
}

fn cheap() -> Argon2Cost {
    Argon2Cost::new(8 * 1024, 1, 1).unwrap()
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).unwrap();
    b
}

/// A device with a random 8-byte UID and a fresh P-256 key.
fn device() -> DeviceKey {
    let k = SoftKey::generate(Curve::P256).unwrap();
    DeviceKey {
        uid: DeviceUid::new(&random::<8>()).unwrap(),
        public_key: PublicKey::from_point(Curve::P256, k.public_point()).unwrap(),
    }
}

fn devices(n: usize) -> Vec<DeviceKey> {
    (0..n).map(|_| device()).collect()
}

/// A site: HSM `hsm_id` on a soft token and a SQLite ledger in `dir`, with `COUNT` of
/// acme/thermo imported (and `OTHER_COUNT` of acme/spare when `other`).
fn site(dir: &Path, hsm_id: &str, clock: &Arc<FixedClock>, other: bool) -> Site {
    let token = SoftToken::create(&dir.join("token"), &pass(), cheap()).unwrap();
    let ledger: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("ledger.sqlite")).unwrap());
    let now = clock.now();
    let s = Site::new(
        Arc::new(token),
        ledger,
        Arc::clone(clock) as Arc<dyn Clock>,
        hsm_id,
        "acme",
        &PackageSpec::new("thermo", COUNT, now),
    );
    if other {
        let p = s.oem.package(
            &s.certs,
            &s.vendor.root,
            &PackageSpec::new("spare", OTHER_COUNT, now).id(2),
        );
        s.hsm.import(&p).unwrap();
    }
    s
}

/// What a refusal must leave as it was.
#[derive(Debug, PartialEq)]
struct Books {
    products: Vec<ProductStatus>,
    counters: Vec<(String, Counter)>,
    head: Head,
}

/// One answer of the service to a raw request.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Answer {
    fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "answer {} is not the expected JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The refusal, checked: its status, its code, and a message that mentions `mentions`.
    fn refused(&self, status: u16, code: &str, mentions: &str) -> ErrorDetail {
        let e = self.json::<ErrorBody>().error;
        assert_eq!(
            (self.status, e.code.as_str()),
            (status, code),
            "refusal: {}",
            e.message
        );
        assert!(
            e.message.contains(mentions),
            "the {code} message {:?} does not mention {mentions:?}",
            e.message
        );
        e
    }
}

/// The HSM of a site behind the service, shared with the test through an `Arc`.
struct Fixture {
    // Dropped first: the service stops before the HSM and its files go.
    service: Option<Running>,
    hsm: Arc<Hsm>,
    ledger: Arc<dyn Store>,
    clock: Arc<FixedClock>,
    /// The station CA, DER.
    ca: Vec<u8>,
    oem: Oem,
    /// The vendor root and acme/thermo's package, for the OEM's verification of a report.
    vendor_root: Vec<u8>,
    package: Vec<u8>,
    _dir: TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self::build(None, false)
    }

    /// With the center's operator CA configured: the fixture and an operator's credentials
    /// (its certificate from that CA; the station CA to check the service by).
    fn with_operators() -> (Self, StationCredentials) {
        let key = SoftKey::generate(Curve::P256).unwrap();
        let center = sid("center-1");
        let now = SystemClock.now();
        let ca = trustfab_pki::station::operator_ca(
            &center,
            &trustfab_types::Serial::from_be_bytes(&[1]).unwrap(),
            now,
            30,
            &key,
        )
        .unwrap();
        let op = SoftKey::generate(Curve::P256).unwrap();
        let cert = trustfab_pki::station::certify_operator(
            &sid("alice"),
            &PublicKey::from_point(Curve::P256, op.public_point()).unwrap(),
            &trustfab_types::Serial::from_be_bytes(&[2]).unwrap(),
            now,
            30,
            &trustfab_pki::Issuer::new(&ca, &key).unwrap(),
        )
        .unwrap();
        let fx = Self::build(Some(ca), false);
        let creds = StationCredentials {
            ca_der: fx.ca.clone(),
            cert_der: cert,
            key: op.secret_pkcs8_der().unwrap(),
        };
        (fx, creds)
    }

    /// With the console on a loopback port too (no operator CA).
    fn with_loopback_console() -> Self {
        Self::build(None, true)
    }

    fn build(operator_ca: Option<Vec<u8>>, loopback: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(FixedClock::new(SystemClock.now()));
        let Site {
            hsm,
            ledger,
            oem,
            vendor,
            package,
            ..
        } = site(dir.path(), "hsm-1", &clock, true);
        let hsm = Arc::new(hsm);
        let ca = hsm.station_ca(None).unwrap();
        let mut opts = ServeOptions::new("127.0.0.1:0".parse().unwrap());
        opts.operator_ca = operator_ca;
        if loopback {
            opts.console_loopback = Some("127.0.0.1:0".parse().unwrap());
        }
        let service = trustfab_service::spawn(Arc::clone(&hsm), &ca, &opts).unwrap();
        Self {
            service: Some(service),
            hsm,
            ledger,
            clock,
            ca,
            oem,
            vendor_root: vendor.root,
            package,
            _dir: dir,
        }
    }

    fn running(&self) -> &Running {
        self.service.as_ref().unwrap()
    }

    fn url(&self) -> String {
        self.running().url()
    }

    fn addr(&self) -> SocketAddr {
        self.running().addr()
    }

    fn books(&self) -> Books {
        Books {
            products: self.hsm.products().unwrap(),
            counters: self.ledger.verified_counters().unwrap(),
            head: self.ledger.head().unwrap(),
        }
    }

    /// Certifies station `id` for `products` (and a ceiling), valid for `days` from the HSM's
    /// clock: what `trustfab hsm certify-station` does with the request `station init` made.
    fn station(
        &self,
        id: &str,
        products: &[&str],
        max_devices: Option<u64>,
        days: u32,
    ) -> StationCredentials {
        certify(&self.hsm, &self.ca, id, products, max_devices, days)
    }

    fn remote(&self, creds: &StationCredentials) -> RemoteHsm {
        RemoteHsm::connect(&self.url(), creds, Duration::from_secs(1)).unwrap()
    }

    /// A job of `quantity` of `product` on this HSM.
    fn job(&self, id: &str, product: &str, quantity: u64) -> JobSpec {
        JobSpec {
            job_id: JobId::new(id).unwrap(),
            hsm_id: self.hsm.hsm_id().clone(),
            product: pk(product),
            quantity,
            device_kind: PartKind::SecureElement,
            slots: SlotMap::default(),
            attestation_root: None,
            lock: LockPolicy::Data,
            created_at: self.clock.now().0,
            firmware: None,
        }
    }

    /// One raw request as `creds` over mutual TLS.
    fn send(
        &self,
        http: &Client,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, reqwest::Error> {
        let mut req = http.request(method, format!("{}{path}", self.url()));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send()?;
        let status = resp.status().as_u16();
        let body = resp.bytes()?.to_vec();
        Ok(Answer { status, body })
    }

    fn post(&self, http: &Client, path: &str, body: &Value) -> Answer {
        self.send(
            http,
            Method::POST,
            path,
            Some(body.to_string().into_bytes()),
        )
        .unwrap()
    }

    fn get(&self, http: &Client, path: &str) -> Answer {
        self.send(http, Method::GET, path, None).unwrap()
    }

    /// The issuance records of the ledger.
    fn issuance_records(&self) -> Vec<IssuanceRecord> {
        self.ledger
            .records(1)
            .map(Result::unwrap)
            .filter(|r| r.kind == Kind::CertificateIssued)
            .map(|r| IssuanceRecord::decode(&r.body).unwrap())
            .collect()
    }
}

fn certify(
    hsm: &Hsm,
    ca: &[u8],
    id: &str,
    products: &[&str],
    max_devices: Option<u64>,
    days: u32,
) -> StationCredentials {
    certify_grant(
        hsm,
        ca,
        id,
        &StationGrant {
            products: products.iter().map(|p| pk(p)).collect(),
            max_devices,
            max_per_day: None,
        },
        days,
    )
}

fn certify_grant(
    hsm: &Hsm,
    ca: &[u8],
    id: &str,
    grant: &StationGrant,
    days: u32,
) -> StationCredentials {
    let key = SoftKey::generate(Curve::P256).unwrap();
    let req = StationRequest::new(&sid(id), &key).unwrap();
    let (cert_der, _) = hsm.certify_station(ca, &req, grant, days).unwrap();
    StationCredentials {
        ca_der: ca.to_vec(),
        cert_der,
        key: key.secret_pkcs8_der().unwrap(),
    }
}

/// A raw HTTPS client as the station `creds` name.
fn http(creds: &StationCredentials) -> Client {
    let tls =
        trustfab_service::tls::client_config(&creds.ca_der, &creds.cert_der, &creds.key).unwrap();
    Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Every message of an error and its sources.
fn chain_text(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(" / ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

fn remote_code(e: &IssueError) -> &str {
    match e {
        IssueError::Remote { code, .. } => code,
        other => panic!("not a refusal of the service: {other:?}"),
    }
}

fn job_code(e: &JobOpError) -> &str {
    match e {
        JobOpError::Issue(i) => remote_code(i),
        other => panic!("not a refusal of the service: {other:?}"),
    }
}

fn wire_devices(d: &[DeviceKey]) -> Vec<wire::WireDevice> {
    d.iter().map(wire::WireDevice::from).collect()
}

fn issue_body(batch: &[u8], d: &[DeviceKey]) -> Value {
    serde_json::to_value(wire::IssueRequest {
        batch: wire::Hex(batch.to_vec()),
        devices: wire_devices(d),
    })
    .unwrap()
}

/// A good outcome for an issued device of `r`.
fn good(r: &Reservation, i: &trustfab_hsm::Issued) -> DeviceOutcome {
    DeviceOutcome::Good(DeviceGood {
        job: r.job_id().clone(),
        uid: records::Bytes(i.uid.as_bytes().to_vec()),
        serial: records::Bytes(i.serial.as_be_bytes().to_vec()),
        cert_sha256: records::Digest(sha2::Sha256::digest(&i.cert).into()),
        resumed: false,
        station: None,
    })
}

fn issue_path(r: &Reservation) -> String {
    format!("/v1/jobs/{}/issue", r.job_id())
}

/// A station reserves a job through `RemoteHsm`, issues a batch, records the outcomes and
/// closes the job; every certificate chains to the OEM, and every record names the station.
#[test]
fn a_station_runs_a_job_and_the_ledger_names_it() {
    let fx = Fixture::new();
    let creds = fx.station("line-1", &[PRODUCT], None, 30);
    let remote = fx.remote(&creds);
    assert_eq!(remote.station(), &sid("line-1"));
    assert_eq!(remote.granted(), &[pk(PRODUCT)]);
    assert_eq!(remote.hsm_id(), fx.hsm.hsm_id());

    let r = remote.reserve(fx.job("job-1", PRODUCT, 10)).unwrap();
    let batch = devices(6);
    let issued = remote.issue(&r, &batch).unwrap();
    assert_eq!(issued.len(), batch.len());
    let ints = [fx.oem.ca.clone()];
    for (d, i) in batch.iter().zip(&issued) {
        assert_eq!(i.uid, d.uid);
        assert!(!i.reissued);
        assert_eq!(i.job.as_ref(), Some(r.job_id()));
        validate(
            &i.cert,
            &Policy {
                root: &fx.oem.root,
                intermediates: &ints,
                crls: &[],
                now: fx.clock.now(),
                purpose: Purpose::ClientAuth,
            },
        )
        .unwrap();
    }

    // Five good, one failed after its certificate.
    let mut outcomes: Vec<DeviceOutcome> = issued[..5].iter().map(|i| good(&r, i)).collect();
    outcomes.push(DeviceOutcome::Failed(DeviceFailed {
        job: r.job_id().clone(),
        uid: Some(records::Bytes(issued[5].uid.as_bytes().to_vec())),
        step: 6,
        step_name: "lock".into(),
        reason: "socket lost contact".into(),
        serial: Some(records::Bytes(issued[5].serial.as_be_bytes().to_vec())),
        retry: false,
        station: None,
    }));
    remote.record_outcomes(&r, outcomes).unwrap();
    let status = remote.job_status(&r).unwrap();
    assert_eq!(
        (
            status.quantity,
            status.remaining,
            status.issued.len(),
            status.good.len()
        ),
        (10, 4, 6, 5)
    );
    assert_eq!(status.failures, 1);

    let closed = remote.close(r).unwrap();
    assert_eq!(
        (
            closed.issued,
            closed.good,
            closed.failed_after_issue,
            closed.credited
        ),
        (6, 5, 1, 4)
    );
    assert_eq!(closed.station, Some(sid("line-1")));
    let p = fx.hsm.products().unwrap();
    let thermo = p.iter().find(|p| p.product == pk(PRODUCT)).unwrap();
    assert_eq!((thermo.issued, thermo.remaining), (6, COUNT - 6));

    let recs = fx.issuance_records();
    assert_eq!(recs.len(), 6);
    for rec in &recs {
        assert_eq!(rec.station, Some(sid("line-1")));
        assert_eq!(rec.job, Some(JobId::new("job-1").unwrap()));
        assert!(batch.iter().any(|d| d.uid == rec.uid));
    }
    // The outcome and job records name it too.
    for rec in fx.ledger.records(1).map(Result::unwrap) {
        match rec.kind {
            Kind::DeviceProgrammed | Kind::DeviceLocked => {
                let g: DeviceGood = records::decode(&rec.body).unwrap();
                assert_eq!(g.station, Some(sid("line-1")));
            }
            Kind::DeviceFailed => {
                let f: DeviceFailed = records::decode(&rec.body).unwrap();
                assert_eq!(f.station, Some(sid("line-1")));
            }
            _ => {}
        }
    }
    fx.hsm.verify_ledger().unwrap();
}

/// A TLS client that presents no certificate gets no answer: the service requires one.
#[test]
fn a_handshake_without_a_client_certificate_is_refused() {
    let fx = Fixture::new();
    // A station exists, so the refusal is not for want of one.
    let creds = fx.station("line-1", &[PRODUCT], None, 30);
    let before = fx.books();

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(fx.ca.clone()))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(fx.addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let wrote = tls.write_all(
        b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\
          Connection: close\r\n\r\n{}",
    );
    let mut answer = Vec::new();
    let read = tls.read_to_end(&mut answer);
    let text = format!("{wrote:?} {read:?}");
    assert!(
        wrote.is_err() || read.is_err(),
        "no error without a client certificate: {text}"
    );
    assert!(
        answer.is_empty(),
        "an answer: {}",
        String::from_utf8_lossy(&answer)
    );
    // The service says why: TLS 1.3's alert for a missing certificate.
    assert!(text.contains("CertificateRequired"), "{text}");
    assert_eq!(fx.books(), before);

    // The service is up for a station that presents its certificate.
    assert_eq!(fx.get(&http(&creds), "/v1/health").status, 200);
}

/// A station certificate from another HSM's station CA (same HSM id, so the same issuer
/// name) is refused at the handshake, even for an id this HSM certified.
#[test]
fn a_certificate_from_another_station_ca_is_refused() {
    let fx = Fixture::new();
    let ours = fx.station("line-1", &[PRODUCT], None, 30);
    let dir = tempfile::tempdir().unwrap();
    let other = site(dir.path(), "hsm-1", &fx.clock, false);
    let other_ca = other.hsm.station_ca(None).unwrap();
    let theirs = certify(&other.hsm, &other_ca, "line-1", &[PRODUCT], None, 30);
    assert_ne!(theirs.cert_der, ours.cert_der);
    // The station trusts this service's CA; only its certificate is the other CA's.
    let forged = StationCredentials {
        ca_der: fx.ca.clone(),
        cert_der: theirs.cert_der,
        key: theirs.key,
    };
    let before = fx.books();

    match RemoteHsm::connect(&fx.url(), &forged, Duration::from_millis(200)) {
        Err(IssueError::Transport(_)) => {}
        other => panic!("a foreign certificate was not refused at the handshake: {other:?}"),
    }
    let http = http(&forged);
    let e = fx
        .send(&http, Method::POST, "/v1/jobs", Some(b"{}".to_vec()))
        .expect_err("an answer to a foreign certificate");
    let text = chain_text(&e);
    assert!(
        text.contains("BadSignature") || text.contains("UnknownIssuer") || text.contains("alert"),
        "{text}"
    );
    assert_eq!(fx.books(), before);
    // Ours still works.
    assert_eq!(fx.remote(&ours).products().unwrap().len(), 1);
}

/// A station revoked between two calls: the next is refused with `station_revoked`, and a
/// batch it sends spends nothing.
#[test]
fn a_revoked_station_is_refused_from_the_next_call_on() {
    let fx = Fixture::new();
    let creds = fx.station("line-1", &[PRODUCT], None, 30);
    let remote = fx.remote(&creds);
    assert_eq!(remote.products().unwrap().len(), 1);
    let r = remote.reserve(fx.job("job-1", PRODUCT, 10)).unwrap();
    remote.issue(&r, &devices(2)).unwrap();

    fx.hsm.revoke_station(&sid("line-1"), "stolen").unwrap();
    let before = fx.books();
    let e = remote.products().unwrap_err();
    assert_eq!(remote_code(&e), "station_revoked");
    assert!(e.to_string().contains("line-1"), "{e}");
    let e = remote.issue(&r, &devices(2)).unwrap_err();
    assert_eq!(remote_code(&e), "station_revoked");
    let e = remote.reserve(fx.job("job-2", PRODUCT, 1)).unwrap_err();
    assert_eq!(job_code(&e), "station_revoked");
    let e = remote.close(r).unwrap_err();
    assert_eq!(job_code(&e), "station_revoked");
    // And as a raw request: 403 with its code.
    fx.get(&http(&creds), "/v1/hsm")
        .refused(403, "station_revoked", "line-1");
    assert_eq!(fx.books(), before);
    // A new connection too.
    match RemoteHsm::connect(&fx.url(), &creds, Duration::from_millis(200)) {
        Err(e) => assert_eq!(remote_code(&e), "station_revoked"),
        Ok(_) => panic!("a revoked station connected"),
    }
    assert_eq!(fx.books(), before);
}

/// A station certificate whose notAfter has passed (certified ten days ago for one day) is
/// refused.
#[test]
fn an_expired_station_certificate_is_refused() {
    let fx = Fixture::new();
    let now = fx.clock.now();
    fx.clock.set(UnixTime(now.0 - 10 * DAY));
    let creds = fx.station("line-old", &[PRODUCT], None, 1);
    fx.clock.set(now);
    let before = fx.books();

    match RemoteHsm::connect(&fx.url(), &creds, Duration::from_millis(200)) {
        Err(IssueError::Transport(_)) => {}
        // Were the handshake to let it through, the service's own check names it.
        Err(IssueError::Remote { code, .. }) => assert_eq!(code, "station_expired"),
        other => panic!("an expired station connected: {other:?}"),
    }
    let e = fx
        .send(&http(&creds), Method::GET, "/v1/hsm", None)
        .expect_err("an answer to an expired certificate");
    let text = chain_text(&e);
    assert!(text.contains("Expired"), "{text}");
    assert_eq!(fx.books(), before);
}

/// A product the grant does not name: reserve, chain, firmware and the list of products,
/// and a job of that product attached by another station.
#[test]
fn a_product_outside_the_grant_is_refused() {
    let fx = Fixture::new();
    let creds = fx.station("line-1", &[PRODUCT], None, 30);
    let remote = fx.remote(&creds);
    let before = fx.books();

    let e = remote.reserve(fx.job("job-x", OTHER, 1)).unwrap_err();
    assert_eq!(job_code(&e), "product_not_granted");
    assert!(e.to_string().contains(OTHER), "{e}");
    let e = remote.chain(&pk(OTHER)).unwrap_err();
    assert_eq!(remote_code(&e), "product_not_granted");
    let e = remote.firmware(&pk(OTHER)).unwrap_err();
    assert_eq!(remote_code(&e), "product_not_granted");
    // The list holds only what it may see; the chain of its own product is there.
    let products = remote.products().unwrap();
    assert_eq!(
        products
            .iter()
            .map(|p| p.product.clone())
            .collect::<Vec<_>>(),
        vec![pk(PRODUCT)]
    );
    remote.chain(&pk(PRODUCT)).unwrap();
    let raw = http(&creds);
    fx.get(&raw, "/v1/products/acme/spare/chain")
        .refused(403, "product_not_granted", OTHER);
    assert_eq!(fx.books(), before);

    // Another station reserves a job of the other product; this one may not touch it.
    let both = fx.station("line-2", &[PRODUCT, OTHER], None, 30);
    let r = fx
        .remote(&both)
        .reserve(fx.job("job-spare", OTHER, 5))
        .unwrap();
    let before = fx.books();
    let e = remote.attach(r.package().as_bytes()).unwrap_err();
    assert_eq!(job_code(&e), "product_not_granted");
    let e = remote.issue(&r, &devices(1)).unwrap_err();
    assert_eq!(remote_code(&e), "product_not_granted");
    fx.post(
        &raw,
        &issue_path(&r),
        &issue_body(&random::<16>(), &devices(1)),
    )
    .refused(403, "product_not_granted", OTHER);
    fx.get(&raw, &format!("/v1/jobs/{}/status", r.job_id()))
        .refused(403, "product_not_granted", OTHER);
    fx.post(&raw, &format!("/v1/jobs/{}/close", r.job_id()), &json!({}))
        .refused(403, "product_not_granted", OTHER);
    assert_eq!(fx.books(), before);
}

/// Bodies a client should never send: too large, not JSON, unknown fields, bad hex, too
/// many devices, devices that are not devices. Each is refused naming what is wrong.
#[test]
fn malformed_and_oversized_requests_are_refused_naming_the_field() {
    let fx = Fixture::new();
    let creds = fx.station("line-1", &[PRODUCT], None, 30);
    let r = fx
        .remote(&creds)
        .reserve(fx.job("job-1", PRODUCT, 10))
        .unwrap();
    let raw = http(&creds);
    let issue = issue_path(&r);
    let before = fx.books();

    // Over REQUEST_MAX: 3 MiB of JSON.
    let huge = format!("{{\"spec\":\"{}\"}}", "a".repeat(3 * 1024 * 1024));
    assert!(huge.len() > wire::REQUEST_MAX);
    let a = fx
        .send(&raw, Method::POST, "/v1/jobs", Some(huge.into_bytes()))
        .unwrap();
    a.refused(413, "too_large", &wire::REQUEST_MAX.to_string());
    let huge_batch = format!(
        "{{\"batch\":\"{}\",\"devices\":[{}]}}",
        "00".repeat(16),
        "{\"uid\":\"0102\",\"public_key\":\"AAAA\"},".repeat(70_000)
    );
    fx.send(&raw, Method::POST, &issue, Some(huge_batch.into_bytes()))
        .unwrap()
        .refused(413, "too_large", "over");
    // A large body (under the limit) where none is read, or refused before it is: the answer
    // still reaches the client (the service reads the body before it answers).
    let big = format!("{{\"pad\":\"{}\"}}", "b".repeat(1024 * 1024)).into_bytes();
    fx.send(
        &raw,
        Method::POST,
        "/v1/jobs/bad%20id/close",
        Some(big.clone()),
    )
    .unwrap()
    .refused(400, "bad_request", "job");
    fx.send(
        &raw,
        Method::POST,
        "/v1/jobs/bad%20id/issue",
        Some(big.clone()),
    )
    .unwrap()
    .refused(400, "bad_request", "job");
    fx.send(&raw, Method::POST, "/v1/nothing-here", Some(big.clone()))
        .unwrap()
        .refused(404, "not_found", "/v1/");
    assert_eq!(
        fx.send(&raw, Method::PUT, "/v1/jobs", Some(big))
            .unwrap()
            .status,
        405
    );

    // Not JSON, or cut short.
    fx.send(
        &raw,
        Method::POST,
        "/v1/jobs",
        Some(b"{\"spec\": {".to_vec()),
    )
    .unwrap()
    .refused(400, "bad_request", "EOF");
    fx.send(&raw, Method::POST, &issue, Some(vec![0xff, 0xfe, 0x00]))
        .unwrap()
        .refused(400, "bad_request", "");
    fx.send(&raw, Method::POST, &issue, Some(Vec::new()))
        .unwrap()
        .refused(400, "bad_request", "EOF");

    // Unknown fields, at the top and inside.
    let mut spec = serde_json::to_value(wire::ReserveRequest {
        spec: fx.job("job-2", PRODUCT, 1),
    })
    .unwrap();
    spec["colour"] = json!("red");
    fx.post(&raw, "/v1/jobs", &spec)
        .refused(400, "bad_request", "colour");
    let mut spec = serde_json::to_value(wire::ReserveRequest {
        spec: fx.job("job-2", PRODUCT, 1),
    })
    .unwrap();
    spec["spec"]["priority"] = json!(9);
    fx.post(&raw, "/v1/jobs", &spec).refused(
        400,
        "bad_request",
        "spec.priority: unknown field `priority`",
    );
    let mut body = issue_body(&random::<16>(), &devices(1));
    body["devices"][0]["extra"] = json!(true);
    fx.post(&raw, &issue, &body)
        .refused(400, "bad_request", "devices[0]");
    // A missing field and a wrong type.
    fx.post(&raw, &issue, &json!({ "batch": "00".repeat(16) }))
        .refused(400, "bad_request", "devices");
    fx.post(&raw, &issue, &json!({ "batch": 7, "devices": [] }))
        .refused(400, "bad_request", "batch");

    // Bad hex.
    fx.post(
        &raw,
        &format!("/v1/jobs/{}/certificate", r.job_id()),
        &json!({ "uid": "not hex" }),
    )
    .refused(400, "bad_request", "uid: expected hexadecimal text");
    let mut body = issue_body(&random::<16>(), &devices(2));
    body["devices"][1]["uid"] = json!("0g");
    fx.post(&raw, &issue, &body)
        .refused(400, "bad_request", "devices[1].uid");
    fx.post(&raw, &issue, &json!({ "batch": "abc", "devices": [] }))
        .refused(400, "bad_request", "batch");

    // A batch id of the wrong length, an empty batch, one over BATCH_MAX.
    fx.post(&raw, &issue, &issue_body(&[1; 15], &devices(1)))
        .refused(400, "bad_request", "batch");
    fx.post(&raw, &issue, &issue_body(&random::<16>(), &[]))
        .refused(400, "bad_request", "devices");
    let one = wire::WireDevice::from(&device());
    let over = json!({
        "batch": hex::encode(random::<16>()),
        "devices": vec![serde_json::to_value(&one).unwrap(); wire::BATCH_MAX + 1],
    });
    fx.post(&raw, &issue, &over).refused(
        400,
        "bad_request",
        &format!("devices: a batch holds 1 to {}", wire::BATCH_MAX),
    );

    // Devices that are not devices.
    let mut body = issue_body(&random::<16>(), &devices(2));
    body["devices"][0]["uid"] = json!("");
    fx.post(&raw, &issue, &body)
        .refused(400, "bad_device", "uid");
    let mut body = issue_body(&random::<16>(), &devices(2));
    body["devices"][0]["uid"] = json!("ab".repeat(33));
    fx.post(&raw, &issue, &body)
        .refused(400, "bad_device", "uid");
    let mut body = issue_body(&random::<16>(), &devices(2));
    body["devices"][1]["public_key"] = json!("AAAA");
    fx.post(&raw, &issue, &body)
        .refused(400, "bad_device", "public_key");
    let d = device();
    fx.post(&raw, &issue, &issue_body(&random::<16>(), &[d.clone(), d]))
        .refused(400, "bad_device", "");

    // Outcomes that do not check out.
    let outcomes = format!("/v1/jobs/{}/outcomes", r.job_id());
    fx.post(
        &raw,
        &outcomes,
        &json!({ "outcomes": [{ "outcome": "good", "uid": "01", "serial": "01",
                                "cert_sha256": "00", "resumed": false }] }),
    )
    .refused(400, "bad_request", "cert_sha256");
    fx.post(
        &raw,
        &outcomes,
        &json!({ "outcomes": [{ "outcome": "failed", "step": 300, "step_name": "x",
                                "reason": "y", "retry": false }] }),
    )
    .refused(400, "bad_request", "outcomes[0]");

    // Bad ids in the path, and no such operation.
    fx.get(&raw, "/v1/jobs/no%20such%20job/status")
        .refused(400, "bad_request", "job");
    fx.get(&raw, "/v1/jobs/unknown-job/status")
        .refused(409, "job_not_attached", "unknown-job");
    fx.get(&raw, "/v1/products/ac%2Fme/thermo/chain")
        .refused(400, "bad_request", "oem");
    fx.get(&raw, "/v2/hsm").refused(404, "not_found", "/v1/");

    assert_eq!(fx.books(), before);
    assert!(fx.issuance_records().is_empty());
}

/// A batch sent again (same id, same devices) is answered from the ledger, spending nothing;
/// the same id with other devices is refused.
#[test]
fn a_replayed_batch_spends_nothing_and_a_reused_or_stale_batch_id_is_refused() {
    let fx = Fixture::new();
    let creds = fx.station("line-1", &[PRODUCT], None, 30);
    let r = fx
        .remote(&creds)
        .reserve(fx.job("job-1", PRODUCT, 10))
        .unwrap();
    let raw = http(&creds);
    let batch = random::<16>();
    let d = devices(3);

    let first: wire::IssueResponse = fx
        .post(&raw, &issue_path(&r), &issue_body(&batch, &d))
        .json();
    assert!(first.issued.iter().all(|i| !i.reissued));
    let after_first = fx.books();
    let job_counter = |b: &Books| {
        b.counters
            .iter()
            .find(|(name, _)| name == "job:job-1")
            .map(|(_, c)| *c)
            .unwrap()
    };
    assert_eq!(job_counter(&after_first).issued, 3);

    let again: wire::IssueResponse = fx
        .post(&raw, &issue_path(&r), &issue_body(&batch, &d))
        .json();
    assert_eq!(again.issued.len(), 3);
    for (a, b) in first.issued.iter().zip(&again.issued) {
        assert!(b.reissued);
        assert_eq!((&a.uid, &a.serial, &a.job), (&b.uid, &b.serial, &b.job));
    }
    assert_eq!(fx.books(), after_first);

    // The same id for other devices, or for some of them.
    let e = fx
        .post(&raw, &issue_path(&r), &issue_body(&batch, &devices(3)))
        .refused(409, "batch_reused", &hex::encode(batch));
    assert_eq!(e.job.as_ref(), Some(r.job_id()));
    fx.post(&raw, &issue_path(&r), &issue_body(&batch, &d[..2]))
        .refused(409, "batch_reused", &hex::encode(batch));
    assert_eq!(fx.books(), after_first);
    assert_eq!(fx.issuance_records().len(), 3);

    // The same devices under a new batch id (a station restarted): re-issued, not spent.
    let fresh: wire::IssueResponse = fx
        .post(&raw, &issue_path(&r), &issue_body(&random::<16>(), &d))
        .json();
    assert!(fresh.issued.iter().all(|i| i.reissued));
    assert_eq!(fx.books(), after_first);

    // Out of order within a session (8 bytes, then a big-endian counter): a batch far below
    // the session's highest that the process does not remember is refused, one within the
    // window goes on.
    let session = random::<8>();
    let id = |n: u64| {
        let mut b = session.to_vec();
        b.extend_from_slice(&n.to_be_bytes());
        b
    };
    let _: wire::IssueResponse = fx
        .post(&raw, &issue_path(&r), &issue_body(&id(10_000), &devices(1)))
        .json();
    let books = fx.books();
    let e = fx
        .post(&raw, &issue_path(&r), &issue_body(&id(1), &devices(1)))
        .refused(409, "batch_stale", &hex::encode(id(1)));
    assert_eq!(e.job.as_ref(), Some(r.job_id()));
    assert_eq!(fx.books(), books);
    let _: wire::IssueResponse = fx
        .post(&raw, &issue_path(&r), &issue_body(&id(9_000), &devices(1)))
        .json();
}

/// A batch with one device issued before for another key is refused naming that device
/// (`bad_device` with its `uid`), nothing spent, so the station can ask again without it.
#[test]
fn a_device_issued_before_for_another_key_is_refused_by_name() {
    let fx = Fixture::new();
    let creds = fx.station("line-1", &[PRODUCT], None, 30);
    let remote = fx.remote(&creds);
    let r = remote.reserve(fx.job("job-1", PRODUCT, 10)).unwrap();
    let first = device();
    remote.issue(&r, std::slice::from_ref(&first)).unwrap();
    let before = fx.books();
    let mut batch = devices(3);
    batch.insert(
        1,
        DeviceKey {
            uid: first.uid.clone(),
            public_key: device().public_key,
        },
    );
    match remote.issue(&r, &batch) {
        Err(IssueError::BadRequest { uid, reason }) => {
            assert_eq!(uid, first.uid.to_hex());
            assert_eq!(reason, "already issued for another public key");
        }
        other => panic!("expected bad_device naming the UID, got {other:?}"),
    }
    assert_eq!(fx.books(), before);
    batch.remove(1);
    assert_eq!(remote.issue(&r, &batch).unwrap().len(), 3);
}

/// A station with a ceiling of devices: past it, `station_ceiling`, and neither the job nor
/// the product is spent beyond it.
#[test]
fn a_station_ceiling_stops_issuance_at_it() {
    let fx = Fixture::new();
    let creds = fx.station("line-1", &[PRODUCT], Some(3), 30);
    let remote = fx.remote(&creds);
    assert_eq!(fx.hsm.station(&sid("line-1")).unwrap().remaining, Some(3));
    let r = remote.reserve(fx.job("job-1", PRODUCT, 10)).unwrap();
    remote.issue(&r, &devices(2)).unwrap();
    assert_eq!(fx.hsm.station(&sid("line-1")).unwrap().remaining, Some(1));

    let before = fx.books();
    let e = remote.issue(&r, &devices(2)).unwrap_err();
    assert_eq!(remote_code(&e), "station_ceiling");
    let raw = http(&creds);
    let detail = fx
        .post(
            &raw,
            &issue_path(&r),
            &issue_body(&random::<16>(), &devices(2)),
        )
        .refused(409, "station_ceiling", "line-1");
    assert_eq!((detail.remaining, detail.asked), (Some(1), Some(2)));
    assert_eq!(fx.books(), before);

    remote.issue(&r, &devices(1)).unwrap();
    let before = fx.books();
    let e = remote.issue(&r, &devices(1)).unwrap_err();
    assert_eq!(remote_code(&e), "station_ceiling");
    assert_eq!(fx.books(), before);
    assert_eq!(fx.hsm.station(&sid("line-1")).unwrap().remaining, Some(0));

    let closed = remote.close(r).unwrap();
    assert_eq!((closed.issued, closed.credited), (3, 7));
    let p = fx.hsm.products().unwrap();
    let thermo = p.iter().find(|p| p.product == pk(PRODUCT)).unwrap();
    assert_eq!(thermo.issued, 3);
    assert_eq!(fx.issuance_records().len(), 3);
}

/// A reserve asked again (its first answer lost) is answered with the job it made: the same
/// package, from the ledger's record; another spec under the same job id is refused.
#[test]
fn a_reserve_asked_again_gets_the_job_it_made() {
    let fx = Fixture::new();
    let creds = fx.station("line-3", &[PRODUCT], None, 30);
    let remote = fx.remote(&creds);
    let spec = fx.job("job-r", PRODUCT, 4);
    let first = remote.reserve(spec.clone()).unwrap();
    let before = fx.books();
    let again = remote.reserve(spec.clone()).unwrap();
    assert_eq!(again.package().as_bytes(), first.package().as_bytes());
    assert_eq!(again.created_seq(), first.created_seq());
    assert_eq!(fx.books(), before, "nothing reserved twice");
    let mut other = spec;
    other.quantity = 5;
    let e = remote.reserve(other).unwrap_err();
    assert!(matches!(e, JobOpError::Exists { .. }), "{e:?}");
    assert_eq!(fx.books(), before);
    let raw = http(&creds);
    let w: wire::WireReservation = fx.get(&raw, "/v1/jobs/job-r/package").json();
    assert_eq!(w.package.0, first.package().as_bytes());
    fx.get(&raw, "/v1/jobs/job-none/package")
        .refused(404, "unknown_job", "job-none");
}

/// A per-day ceiling: the day's certificates and the batches in flight bound a batch; a
/// replayed batch (answered from the ledger) does not count again; the station's other limits
/// are untouched.
#[test]
fn a_per_day_ceiling_stops_issuance_for_the_day() {
    let fx = Fixture::new();
    let creds = certify_grant(
        &fx.hsm,
        &fx.ca,
        "line-2",
        &StationGrant {
            products: vec![pk(PRODUCT)],
            max_devices: None,
            max_per_day: Some(5),
        },
        30,
    );
    let remote = fx.remote(&creds);
    let r = remote.reserve(fx.job("job-d", PRODUCT, 20)).unwrap();
    let first = devices(2);
    remote.issue(&r, &first).unwrap();
    // The same devices again are answered from the ledger: not counted twice. (A batch is held
    // whole while in flight, so a replay needs room for its size.)
    assert!(remote.issue(&r, &first).unwrap().iter().all(|i| i.reissued));
    let before = fx.books();
    let raw = http(&creds);
    let detail = fx
        .post(
            &raw,
            &issue_path(&r),
            &issue_body(&random::<16>(), &devices(4)),
        )
        .refused(409, "station_day_ceiling", "line-2");
    assert_eq!((detail.remaining, detail.asked), (Some(3), Some(4)));
    assert_eq!(fx.books(), before);
    remote.issue(&r, &devices(3)).unwrap();
    let e = remote.issue(&r, &devices(1)).unwrap_err();
    assert_eq!(remote_code(&e), "station_day_ceiling");
    let closed = remote.close(r).unwrap();
    assert_eq!((closed.issued, closed.credited), (5, 15));
    // A new service process counts the day from the ledger: still full.
    assert_eq!(
        fx.hsm
            .station_issued_since(&sid("line-2"), UnixTime(0))
            .unwrap(),
        5
    );
}

/// `Running::stop` (what SIGTERM does) while a batch is being signed: the batch finishes and
/// its answer reaches the station; then the service is gone.
#[test]
fn stopping_the_service_lets_a_batch_in_flight_finish() {
    let mut fx = Fixture::new();
    let creds = fx.station("line-1", &[PRODUCT], None, 30);
    let remote = fx.remote(&creds);
    let r = remote.reserve(fx.job("job-1", PRODUCT, 800)).unwrap();
    let base = fx.ledger.head().unwrap().seq;
    let batch = devices(800);
    let worker = {
        let batch = batch.clone();
        std::thread::spawn(move || {
            let out = remote.issue(&r, &batch);
            (remote, r, out)
        })
    };
    // The batch is spent and recorded before it is signed: stop once it is in the ledger.
    let start = Instant::now();
    while fx.ledger.head().unwrap().seq == base {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the batch never arrived"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    fx.service.take().unwrap().stop();
    let (remote, r, out) = worker.join().unwrap();
    let issued = out.unwrap();
    assert_eq!(issued.len(), batch.len());
    assert!(issued.iter().all(|i| !i.reissued));
    assert_eq!(fx.issuance_records().len(), batch.len());
    // Stopped: nothing answers.
    assert!(matches!(
        remote.job_status(&r),
        Err(JobOpError::Issue(IssueError::Transport(_)))
    ));
    fx.hsm.verify_ledger().unwrap();
}

// The API under random requests.

/// The routes, with `{oem}`, `{product}` and `{job}` to fill, and their own method.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/health"),
    ("GET", "/v1/ready"),
    ("GET", "/v1/hsm"),
    ("GET", "/v1/products"),
    ("GET", "/v1/products/{oem}/{product}/chain"),
    ("GET", "/v1/products/{oem}/{product}/firmware"),
    ("POST", "/v1/jobs"),
    ("POST", "/v1/jobs/attach"),
    ("GET", "/v1/jobs/{job}/package"),
    ("GET", "/v1/jobs/{job}/status"),
    ("POST", "/v1/jobs/{job}/issue"),
    ("POST", "/v1/jobs/{job}/certificate"),
    ("POST", "/v1/jobs/{job}/certificates"),
    ("POST", "/v1/jobs/{job}/family-key"),
    ("POST", "/v1/jobs/{job}/outcomes"),
    ("POST", "/v1/jobs/{job}/close"),
    ("GET", "/v1/jobs/{job}"),
    ("GET", "/v1"),
    ("GET", "/"),
];

const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];

/// Stands for a string of 100 000 bytes.
const HUGE: &str = "<huge>";

/// A change to a valid body, at the `at`-th of its values (in a walk of the tree).
#[derive(Clone, Debug)]
enum Mutation {
    /// Removes the value (from its object or array).
    Drop(usize),
    /// Renames the value's key.
    Rename(usize, String),
    /// Replaces the value.
    Replace(usize, Value),
    /// Wraps the value in an array.
    Wrap(usize),
}

#[derive(Clone, Debug)]
enum BodyPlan {
    Empty,
    Valid,
    Mutated(Vec<Mutation>),
    Bytes(Vec<u8>),
    Text(String),
}

#[derive(Clone, Debug)]
struct Case {
    method: Option<usize>,
    route: usize,
    oem: String,
    product: String,
    job: usize,
    body: BodyPlan,
    seed: u64,
}

fn any_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
        Just(json!(1e300)),
        Just(json!(0.5)),
        // Bigger than u64: serde refuses the number.
        Just(serde_json::from_str::<Value>("184467440737095516160000").unwrap()),
        "[ -~]{0,24}".prop_map(Value::from),
        "([0-9a-f]{2}){0,40}".prop_map(Value::from),
        "[A-Za-z0-9+/]{0,60}={0,2}".prop_map(Value::from),
        // Made 100 000 bytes long when applied (kept short in the case as printed).
        Just(Value::from(HUGE)),
        Just(json!([])),
        Just(json!({})),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(|v| json!(v)),
        Just(json!({ "outcome": "good" })),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Drop),
        (any::<usize>(), "[a-z_]{0,12}").prop_map(|(i, k)| Mutation::Rename(i, k)),
        (any::<usize>(), any_value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        any::<usize>().prop_map(Mutation::Wrap),
    ]
}

fn segment(known: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just(known.to_owned()),
        1 => Just("spare".to_owned()),
        1 => Just("nope".to_owned()),
        1 => Just("%ff%fe".to_owned()),
        1 => Just("a%2Fb".to_owned()),
        1 => Just("x".repeat(300)),
        1 => "[A-Za-z0-9._~%-]{0,40}",
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let body = prop_oneof![
        1 => Just(BodyPlan::Empty),
        4 => Just(BodyPlan::Valid),
        5 => prop::collection::vec(mutation(), 1..4).prop_map(BodyPlan::Mutated),
        1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(BodyPlan::Bytes),
        1 => "[ -~]{0,80}".prop_map(BodyPlan::Text),
    ];
    (
        prop::option::weighted(0.3, 0..METHODS.len()),
        0..ROUTES.len(),
        segment("acme"),
        segment("thermo"),
        0..6usize,
        body,
        any::<u64>(),
    )
        .prop_map(|(method, route, oem, product, job, body, seed)| Case {
            method,
            route,
            oem,
            product,
            job,
            body,
            seed,
        })
}

/// Every value of `v` in a walk of the tree, as the path to it.
fn paths(v: &Value, here: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                here.push(Step::Key(k.clone()));
                out.push(here.clone());
                paths(x, here, out);
                here.pop();
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                here.push(Step::Index(i));
                out.push(here.clone());
                paths(x, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

#[derive(Clone, Debug)]
enum Step {
    Key(String),
    Index(usize),
}

fn mutate(body: &mut Value, m: &Mutation) {
    let mut all = Vec::new();
    paths(body, &mut Vec::new(), &mut all);
    let at = match m {
        Mutation::Drop(i)
        | Mutation::Rename(i, _)
        | Mutation::Replace(i, _)
        | Mutation::Wrap(i) => *i,
    };
    if all.is_empty() {
        if let Mutation::Replace(_, v) = m {
            *body = v.clone();
        }
        return;
    }
    let m = &match m {
        Mutation::Replace(i, v) if v == HUGE => {
            Mutation::Replace(*i, Value::from("a".repeat(100_000)))
        }
        other => other.clone(),
    };
    let path = &all[at % all.len()];
    let (last, parents) = path.split_last().unwrap();
    let mut parent = &mut *body;
    for s in parents {
        parent = match s {
            Step::Key(k) => &mut parent[k.as_str()],
            Step::Index(i) => &mut parent[*i],
        };
    }
    match (m, last, parent) {
        (Mutation::Drop(_), Step::Key(k), Value::Object(o)) => {
            o.remove(k);
        }
        (Mutation::Drop(_), Step::Index(i), Value::Array(a)) => {
            a.remove(*i);
        }
        (Mutation::Rename(_, new), Step::Key(k), Value::Object(o)) => {
            if let Some(v) = o.remove(k) {
                o.insert(new.clone(), v);
            }
        }
        (Mutation::Rename(_, new), Step::Index(i), Value::Array(a)) => {
            let mut o = serde_json::Map::new();
            o.insert(new.clone(), a[*i].take());
            a[*i] = Value::Object(o);
        }
        (Mutation::Replace(_, v), Step::Key(k), Value::Object(o)) => {
            o.insert(k.clone(), v.clone());
        }
        (Mutation::Replace(_, v), Step::Index(i), Value::Array(a)) => {
            a[*i] = v.clone();
        }
        (Mutation::Wrap(_), Step::Key(k), Value::Object(o)) => {
            if let Some(v) = o.remove(k) {
                o.insert(k.clone(), json!([v]));
            }
        }
        (Mutation::Wrap(_), Step::Index(i), Value::Array(a)) => {
            a[*i] = json!([a[*i].take()]);
        }
        _ => {}
    }
}

/// What the fuzzer starts from: jobs in several states, and devices.
struct FuzzContext {
    jobs: Vec<String>,
    attached: Reservation,
    pool: Vec<DeviceKey>,
}

impl FuzzContext {
    fn valid_body(&self, fx: &Fixture, route: &str, job: &str, seed: u64) -> Option<Value> {
        let pick = |n: usize| {
            let start = usize::try_from(seed % 7).unwrap_or(0);
            let len = 1 + usize::try_from((seed >> 8) % u64::try_from(n).unwrap()).unwrap();
            self.pool
                .iter()
                .cycle()
                .skip(start)
                .take(len)
                .cloned()
                .collect::<Vec<_>>()
        };
        let uid = |i: u64| {
            let d = &self.pool[usize::try_from(i % 8).unwrap()];
            hex::encode(d.uid.as_bytes())
        };
        Some(match route {
            "/v1/jobs" => {
                let product = if seed.is_multiple_of(3) {
                    OTHER
                } else {
                    PRODUCT
                };
                serde_json::to_value(wire::ReserveRequest {
                    spec: fx.job(&format!("fz-{seed:x}"), product, 1 + seed % 4),
                })
                .unwrap()
            }
            "/v1/jobs/attach" => json!({
                "package": base64_of(self.attached.package().as_bytes()),
            }),
            "/v1/jobs/{job}/issue" => {
                let mut batch = [0u8; 16];
                batch[..8].copy_from_slice(&seed.to_be_bytes());
                batch[8..].copy_from_slice(&(seed % 5).to_be_bytes());
                issue_body(&batch, &pick(4))
            }
            "/v1/jobs/{job}/certificate" | "/v1/jobs/{job}/family-key" => {
                json!({ "uid": uid(seed) })
            }
            "/v1/jobs/{job}/certificates" => json!({ "uids": [uid(seed), uid(seed + 1)] }),
            "/v1/jobs/{job}/outcomes" => json!({
                "outcomes": [
                    { "outcome": "good", "uid": uid(seed), "serial": "7f01",
                      "cert_sha256": hex::encode([seed.to_le_bytes()[0]; 32]), "resumed": false },
                    { "outcome": "failed", "uid": uid(seed + 1), "step": 3,
                      "step_name": "generate key", "reason": "timeout", "retry": true },
                    { "outcome": "failed", "step": 1, "step_name": "read uid",
                      "reason": format!("job {job}"), "retry": false },
                ]
            }),
            _ => return None,
        })
    }
}

fn base64_of(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn random_requests_never_fail_the_service() {
    let fx = Fixture::new();
    let creds = fx.station("fuzz-1", &[PRODUCT, OTHER], Some(500), 30);
    let remote = fx.remote(&creds);
    let attached = remote.reserve(fx.job("fz-open", PRODUCT, 200)).unwrap();
    let closed = remote.reserve(fx.job("fz-closed", PRODUCT, 2)).unwrap();
    remote.close(closed).unwrap();
    let spare = remote.reserve(fx.job("fz-spare", OTHER, 50)).unwrap();
    remote.reserve(fx.job("fz-closable", PRODUCT, 3)).unwrap();
    let pool = devices(8);
    remote.issue(&attached, &pool[..2]).unwrap();
    let ctx = FuzzContext {
        jobs: vec![
            "fz-open".into(),
            "fz-open".into(),
            "fz-closed".into(),
            spare.job_id().to_string(),
            "never-made".into(),
            "bad job!".into(),
        ],
        attached,
        pool,
    };
    let raw = http(&creds);

    // 96 cases, or PROPTEST_CASES for a longer run.
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(96);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::<(String, u16), u32>::new());
    runner
        .run(&case(), |c| {
            let (own, route) = ROUTES[c.route];
            let method = c.method.map_or(own, |m| METHODS[m]);
            // The open jobs stay open: a close goes to a job of its own.
            let job = match (route, c.job) {
                ("/v1/jobs/{job}/close", 0 | 1 | 3) => "fz-closable",
                _ => ctx.jobs[c.job].as_str(),
            };
            let path = route
                .replace("{oem}", &c.oem)
                .replace("{product}", &c.product)
                .replace("{job}", &urlencode(job));
            let body = match &c.body {
                BodyPlan::Empty => None,
                BodyPlan::Valid => ctx
                    .valid_body(&fx, route, job, c.seed)
                    .map(|v| v.to_string().into_bytes()),
                BodyPlan::Mutated(ms) => {
                    let mut v = ctx
                        .valid_body(&fx, route, job, c.seed)
                        .unwrap_or_else(|| json!({ "spec": {} }));
                    for m in ms {
                        mutate(&mut v, m);
                    }
                    Some(v.to_string().into_bytes())
                }
                BodyPlan::Bytes(b) => Some(b.clone()),
                BodyPlan::Text(t) => Some(t.clone().into_bytes()),
            };
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let a = fx
                .send(&raw, method.clone(), &path, body.clone())
                .map_err(|e| TestCaseError::fail(format!("{method} {path}: {}", chain_text(&e))))?;
            *seen
                .lock()
                .unwrap()
                .entry((route.to_owned(), a.status))
                .or_default() += 1;
            prop_assert!(
                a.status < 500,
                "{method} {path} {:?} -> {}: {}",
                body.as_deref().map(|b| String::from_utf8_lossy(b)
                    .chars()
                    .take(300)
                    .collect::<String>()),
                a.status,
                String::from_utf8_lossy(&a.body)
            );
            // A refusal of the API itself is an error body with a code.
            if a.status >= 400 && a.body.starts_with(b"{") {
                let e: ErrorBody = serde_json::from_slice(&a.body)
                    .map_err(|e| TestCaseError::fail(format!("{path}: {e}")))?;
                prop_assert!(!e.error.code.is_empty());
            }
            Ok(())
        })
        .unwrap();

    // The cases reached the HSM, not only the parsers: some were answered, some refused.
    let seen = seen.into_inner().unwrap();
    eprintln!("route and status: cases {seen:?}");
    assert!(seen.keys().any(|(_, s)| (200..300).contains(s)), "{seen:?}");
    assert!(seen.keys().any(|(_, s)| (400..500).contains(s)), "{seen:?}");

    // Still up, still the same books underneath.
    let health: wire::Health = fx.get(&raw, "/v1/health").json();
    assert_eq!(health.status, "ok");
    let ready: wire::Health = fx.get(&raw, "/v1/ready").json();
    assert_eq!(ready.status, "ready");
    assert!(!remote.products().unwrap().is_empty());
    fx.hsm.verify_ledger().unwrap();
    for p in fx.hsm.products().unwrap() {
        assert!(p.issued <= p.ordered, "{p:?}");
    }
    let status = fx.hsm.station(&sid("fuzz-1")).unwrap();
    assert!(status.remaining.unwrap() <= 500);
}

/// A path segment as the URL carries it.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A scrape of `/metrics`, as `name{labels}` → value.
fn scrape(fx: &Fixture, http: &Client) -> HashMap<String, f64> {
    let a = fx.get(http, "/metrics");
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let text = String::from_utf8(a.body).unwrap();
    assert!(text.ends_with("# EOF\n"), "not OpenMetrics text: {text}");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_owned(), v.parse::<f64>().unwrap())
        })
        .collect()
}

/// The same numbers as the service's, read by the test from the ledger's first `upto` records.
fn ledger_metrics(ledger: &dyn Store, upto: u64) -> HashMap<String, f64> {
    let mut m: HashMap<String, f64> = HashMap::new();
    let station = |s: Option<&StationId>| s.map_or("-".to_owned(), |s| s.as_str().to_owned());
    for r in ledger.records(1).map(Result::unwrap) {
        if r.seq > upto {
            break;
        }
        let key = match r.kind {
            Kind::CertificateIssued => {
                let i = IssuanceRecord::decode(&r.body).unwrap();
                format!(
                    "trustfab_certificates_issued_total{{product=\"{}\",job=\"{}\",station=\"{}\"}}",
                    i.product,
                    i.job.unwrap(),
                    station(i.station.as_ref())
                )
            }
            Kind::DeviceLocked => {
                let g: DeviceGood = records::decode(&r.body).unwrap();
                format!(
                    "trustfab_devices_good_total{{job=\"{}\",station=\"{}\"}}",
                    g.job,
                    station(g.station.as_ref())
                )
            }
            Kind::DeviceFailed => {
                let f: DeviceFailed = records::decode(&r.body).unwrap();
                format!(
                    "trustfab_devices_failed_total{{job=\"{}\",station=\"{}\",step=\"{}\"}}",
                    f.job,
                    station(f.station.as_ref()),
                    f.step_name
                )
            }
            _ => continue,
        };
        *m.entry(key).or_default() += 1.0;
    }
    m
}

/// The ledger-derived series of a scrape.
fn ledger_series(m: &HashMap<String, f64>) -> HashMap<String, f64> {
    m.iter()
        .filter(|(k, _)| {
            ["issued_total{", "good_total{", "failed_total{"]
                .iter()
                .any(|p| k.contains(p))
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// `/metrics` scraped while stations issue and record outcomes, and after: every number is the
/// ledger's at the head the scrape read, exactly; the products' counts are the HSM's. Only an
/// operator certificate reads it; a station's is refused, and an operator's is no station.
#[test]
fn metrics_match_the_ledger_during_and_after_a_job() {
    let (fx, operator) = Fixture::with_operators();
    let op = http(&operator);
    let creds = [
        fx.station("line-1", &[PRODUCT], None, 30),
        fx.station("line-2", &[PRODUCT], None, 30),
    ];
    let before = fx.hsm.products().unwrap();
    let r = fx
        .remote(&creds[0])
        .reserve(fx.job("job-m", PRODUCT, 200))
        .unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let scrapes = std::thread::scope(|sc| {
        for c in &creds {
            let remote = fx.remote(c);
            let r = remote.attach(r.package().as_bytes()).unwrap();
            let done = &done;
            sc.spawn(move || {
                for round in 0..8u8 {
                    let issued = remote.issue(&r, &devices(10)).unwrap();
                    let outcomes = issued
                        .iter()
                        .enumerate()
                        .filter(|(n, _)| *n != 9)
                        .map(|(n, i)| {
                            if n < 7 {
                                good(&r, i)
                            } else {
                                let (step, name) = if round % 2 == 0 {
                                    (4, "write-cert")
                                } else {
                                    (6, "lock")
                                };
                                DeviceOutcome::Failed(DeviceFailed {
                                    job: r.job_id().clone(),
                                    uid: Some(records::Bytes(i.uid.as_bytes().to_vec())),
                                    step,
                                    step_name: name.into(),
                                    reason: "socket lost contact".into(),
                                    serial: Some(records::Bytes(i.serial.as_be_bytes().to_vec())),
                                    retry: false,
                                    station: None,
                                })
                            }
                        })
                        .collect();
                    remote.record_outcomes(&r, outcomes).unwrap();
                }
                done.store(true, std::sync::atomic::Ordering::Relaxed);
            });
        }
        let mut n = 0;
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            let m = scrape(&fx, &op);
            let read = m["trustfab_ledger_records_read"];
            assert_eq!(m["trustfab_ledger_chain_ok"], 1.0);
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let want = ledger_metrics(&*fx.ledger, read as u64);
            assert_eq!(ledger_series(&m), want, "at record {read}");
            n += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        n
    });
    assert!(scrapes > 0);

    let m = scrape(&fx, &op);
    let head = fx.ledger.head().unwrap().seq;
    #[allow(clippy::cast_precision_loss)]
    let head_f = head as f64;
    assert_eq!(m["trustfab_ledger_records_read"], head_f);
    assert_eq!(ledger_series(&m), ledger_metrics(&*fx.ledger, head));
    // Both stations' series, and the numbers the rounds made: 8 rounds of 10 per station.
    for st in ["line-1", "line-2"] {
        let l = format!("job=\"job-m\",station=\"{st}\"");
        assert_eq!(
            m[&format!("trustfab_certificates_issued_total{{product=\"{PRODUCT}\",{l}}}")],
            80.0
        );
        assert_eq!(m[&format!("trustfab_devices_good_total{{{l}}}")], 56.0);
        assert_eq!(
            m[&format!("trustfab_devices_failed_total{{{l},step=\"write-cert\"}}")],
            8.0
        );
        assert_eq!(
            m[&format!("trustfab_devices_failed_total{{{l},step=\"lock\"}}")],
            8.0
        );
    }
    let after = fx.hsm.products().unwrap();
    for p in &after {
        let l = format!("{{product=\"{}\"}}", p.product);
        #[allow(clippy::cast_precision_loss)]
        let (o, i, rem) = (p.ordered as f64, p.issued as f64, p.remaining as f64);
        assert_eq!(m[&format!("trustfab_product_ordered{l}")], o);
        assert_eq!(m[&format!("trustfab_product_issued{l}")], i);
        assert_eq!(m[&format!("trustfab_product_remaining{l}")], rem);
    }
    let thermo = |v: &[ProductStatus]| {
        v.iter()
            .find(|p| p.product == pk(PRODUCT))
            .unwrap()
            .remaining
    };
    assert_eq!(thermo(&before) - thermo(&after), 200);
    assert_eq!(
        m["trustfab_job_quantity{job=\"job-m\",product=\"acme/thermo\"}"],
        200.0
    );
    assert_eq!(
        m["trustfab_job_open{job=\"job-m\",product=\"acme/thermo\"}"],
        1.0
    );
    assert_eq!(m["trustfab_issue_batch_seconds_count"], 16.0);
    // The ledger's append latency is the store's own histogram: every append this process
    // made (the fixture's, the job's 16 batches and the outcomes), its buckets cumulative up
    // to +Inf; the soft token has no sessions to report.
    #[allow(clippy::cast_precision_loss)]
    let appends = fx.ledger.append_latency().count as f64;
    assert_eq!(m["trustfab_ledger_append_seconds_count"], appends);
    assert!(appends >= 16.0 + 2.0 * 8.0, "{appends} appends");
    assert_eq!(
        m["trustfab_ledger_append_seconds_bucket{le=\"+Inf\"}"],
        appends
    );
    let mut buckets: Vec<(f64, f64)> = m
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix("trustfab_ledger_append_seconds_bucket{le=\"")?;
            let le = le.strip_suffix("\"}")?;
            Some((le.parse().unwrap_or(f64::INFINITY), *v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert_eq!(buckets.len(), trustfab_ledger::APPEND_BUCKETS.len() + 1);
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    assert!(m["trustfab_ledger_append_seconds_sum"] > 0.0);
    assert!(!m.keys().any(|k| k.starts_with("trustfab_token_sessions")));

    // A station's certificate reads no metrics; an operator's is no station's.
    fx.get(&http(&creds[0]), "/metrics")
        .refused(403, "operator_certificate", "operator");
    fx.get(&op, "/v1/products")
        .refused(403, "station_certificate", "station CA");
    let m = scrape(&fx, &op);
    assert_eq!(
        m["trustfab_requests_refused_total{code=\"operator_certificate\"}"],
        1.0
    );
    assert_eq!(
        m["trustfab_requests_refused_total{code=\"station_certificate\"}"],
        1.0
    );
}

/// The console: its page, script and state for an operator, with a policy that allows this
/// origin only; nothing of it for a station; the state's numbers are the ledger's; the report
/// downloads and verifies.
#[test]
fn the_console_serves_operators_only_and_shows_the_ledgers_numbers() {
    let (fx, operator) = Fixture::with_operators();
    let op = http(&operator);
    let creds = fx.station("line-1", &[PRODUCT], None, 30);
    let remote = fx.remote(&creds);
    let r = remote.reserve(fx.job("job-c", PRODUCT, 20)).unwrap();
    let issued = remote.issue(&r, &devices(5)).unwrap();
    remote
        .record_outcomes(&r, issued.iter().map(|i| good(&r, i)).collect())
        .unwrap();

    let raw =
        |client: &Client, path: &str| client.get(format!("{}{path}", fx.url())).send().unwrap();
    let page = raw(&op, "/console/");
    assert_eq!(page.status().as_u16(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
    assert!(page.text().unwrap().contains("/console/console.js"));
    assert_eq!(raw(&op, "/console/console.js").status().as_u16(), 200);
    let station = http(&creds);
    for path in ["/console/", "/console/console.js", "/console/state"] {
        fx.get(&station, path)
            .refused(403, "operator_certificate", "operator");
    }

    let state: Value = fx.get(&op, "/console/state").json();
    let job = state["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job"] == "job-c")
        .unwrap();
    assert_eq!(
        (&job["quantity"], &job["issued"], &job["good"], &job["open"]),
        (&json!(20), &json!(5), &json!(5), &json!(true))
    );
    let st = &state["stations"][0];
    assert_eq!((&st["station"], &st["good"]), (&json!("line-1"), &json!(5)));
    assert!(st["last_contact"].is_u64());
    assert_eq!(state["ledger"]["chain_ok"], json!(true));
    assert_eq!(
        state["ledger"]["records"],
        json!(fx.ledger.head().unwrap().seq)
    );
    let thermo = fx.hsm.products().unwrap();
    let thermo = thermo.iter().find(|p| p.product == pk(PRODUCT)).unwrap();
    let shown = state["products"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["product"] == PRODUCT)
        .unwrap();
    assert_eq!(shown["remaining"], json!(thermo.remaining));

    let report = raw(&op, "/console/report/acme/thermo");
    assert_eq!(report.status().as_u16(), 200);
    let bytes = report.bytes().unwrap();
    let order = trustfab_formats::package::open(&fx.package).unwrap();
    let summary = trustfab_formats::report::verify_report(
        bytes.as_ref(),
        &fx.vendor_root,
        &[order.into_contents()],
        fx.clock.now(),
    )
    .unwrap();
    assert_eq!(summary.certificates, 5);
}

/// A plain HTTP/1.1 GET of `path` on `addr` with `host` as its Host: (status, headers, body).
fn plain_get(addr: SocketAddr, host: &str, path: &str) -> (u16, String, String) {
    use std::io::{Read as _, Write as _};
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = String::new();
    c.read_to_string(&mut all).unwrap();
    let (head, body) = all.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

/// The console on a loopback port: the metrics and the page to this host without a
/// certificate, the same numbers as the ledger's; no station route; a Host of another name (a
/// DNS rebinding) refused; a loopback address that is not one refused at start.
#[test]
fn the_loopback_console_serves_this_host_only_and_no_station() {
    let fx = Fixture::with_loopback_console();
    let at = fx.running().console_addr().unwrap();
    assert!(at.ip().is_loopback());
    let creds = fx.station("line-1", &[PRODUCT], None, 30);
    let r = fx
        .remote(&creds)
        .reserve(fx.job("job-l", PRODUCT, 20))
        .unwrap();
    let remote = fx.remote(&creds);
    let job = remote.attach(r.package().as_bytes()).unwrap();
    assert_eq!(remote.issue(&job, &devices(5)).unwrap().len(), 5);

    let host = at.to_string();
    let (status, head, body) = plain_get(at, &host, "/metrics");
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(body.ends_with("# EOF\n"));
    let line = format!("trustfab_certificates_issued_total{{product=\"{PRODUCT}\",job=\"job-l\",station=\"line-1\"}} 5");
    assert!(body.lines().any(|l| l == line), "{line} missing:\n{body}");
    let (status, head, body) = plain_get(at, &format!("localhost:{}", at.port()), "/console/");
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-security-policy"),
        "{head}"
    );
    assert!(body.contains("console.js"));
    let (status, _, body) = plain_get(at, &host, "/console/state");
    assert_eq!(status, 200);
    let state: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(state["jobs"][0]["job"], "job-l");
    assert_eq!(state["jobs"][0]["issued"], 5);

    // No station API there, and no other host's name.
    let (status, _, body) = plain_get(at, &host, "/v1/products");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("station_certificate"), "{body}");
    let (status, _, body) = plain_get(at, &format!("rebind.example:{}", at.port()), "/metrics");
    assert_eq!(status, 421, "{body}");
    assert!(body.contains("not_loopback"), "{body}");
    // The TLS port still admits no operator: there is no operator CA.
    fx.get(&http(&creds), "/metrics")
        .refused(403, "operator_certificate", "operator");

    // A console address that is not a loopback one is refused before anything is served.
    let mut opts = ServeOptions::new("127.0.0.1:0".parse().unwrap());
    opts.console_loopback = Some("0.0.0.0:0".parse().unwrap());
    let e = trustfab_service::spawn(Arc::clone(&fx.hsm), &fx.ca, &opts).unwrap_err();
    assert!(e.to_string().contains("not a loopback address"), "{e}");
}
