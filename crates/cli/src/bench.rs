//! `trustfab bench`: a whole programming center in one process (vendor, HSM, OEM package,
//! station on simulated parts), run for N devices and compared with the limit, the same
//! cryptography back to back with no I/O.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use trustfab_device::{DeviceKind, SiliconVendor};
use trustfab_hsm::{Hsm, HsmClient, IssueError, JobOpError, Reservation};
use trustfab_ledger_sqlite::SqliteStore;
use trustfab_oem::{Firmware, Order};
use trustfab_pki::template::EXAMPLE_TEMPLATE;
use trustfab_pki::{
    certify_hsm, intermediate_ca, issue_device, self_signed_ca, validate, CaRole, CaSpec, Curve,
    DeviceRequest, HsmIdentity, Issuer, Policy, PublicKey, Purpose, RenderInputs, Signer, SoftKey,
    Template,
};
use trustfab_station::{
    run as run_job, Faults, JobSpec, LockPolicy, MadeSupply, PartKind, SlotMap,
};
use trustfab_token_soft::{Argon2Cost, SoftToken};
use trustfab_types::{
    Clock as _, DeviceUid, HsmId, OemId, Passphrase, ProductId, ProductKey, Serial, SystemClock,
    UnixTime,
};

use crate::job::{ms, options, progress_bar};

#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    /// Devices to provision.
    #[arg(long, default_value_t = 100_000)]
    devices: u64,
    /// Sockets (default: 32 per core; a socket waits for the HSM's batch, so many keep it busy).
    #[arg(long)]
    sockets: Option<usize>,
    /// Most devices per HSM issuance call.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Where the HSM token and the ledger go (default: a temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Devices per core for the limit measurement (default: a tenth of --devices, at most 20,000).
    #[arg(long)]
    limit_devices: Option<u64>,
    /// The HSM on a PKCS#11 token with this label (a fresh one: the bench makes its identity
    /// there), its PIN from --passphrase-file or $TRUSTFAB_PASSPHRASE, instead of a soft token.
    #[arg(long, value_name = "LABEL")]
    token_label: Option<String>,
    /// PKCS#11 module for --token-label (default: $TRUSTFAB_PKCS11_MODULE, else SoftHSM2's).
    #[arg(long, requires = "token_label")]
    pkcs11_module: Option<PathBuf>,
    /// PKCS#11 sessions for --token-label.
    #[arg(long, default_value_t = 4, requires = "token_label")]
    pkcs11_sessions: usize,
    #[command(flatten)]
    pass: crate::secrets::PassphraseArgs,
    /// The ledger: an empty PostgreSQL database (`postgresql://…`) instead of a SQLite file in
    /// the bench directory.
    #[arg(long, value_name = "URL")]
    ledger_url: Option<String>,
    /// Secure MCUs with a firmware step: an image of this many KiB, encrypted for the product's
    /// family, installed by each part's secure boot (family key wrapped by the HSM per device).
    #[arg(long, value_name = "KIB")]
    firmware: Option<u32>,
    /// Also run the same flow (a second job of --devices) through the HSM service on a
    /// loopback port, as a station with its certificate over mutual TLS, and compare.
    #[arg(long)]
    service: bool,
    /// With --service: jobs through the service while an operator polls the console (its state
    /// and /metrics) once a second, alternated with jobs not polled (not polled, polled, polled,
    /// not polled, ...), to measure what serving them costs issuance.
    #[arg(long, requires = "service")]
    console_poll: bool,
    /// With --console-poll: pairs of service jobs, one polled and one not, in the alternating
    /// order (the first not-polled job is the --service one).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=50))]
    poll_rounds: u64,
    /// Issuance batches a station keeps in flight through the service.
    #[arg(long, default_value_t = 6)]
    service_issuers: usize,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

/// An [`HsmClient`] that times each issuance batch.
struct Timed<'a> {
    inner: &'a dyn HsmClient,
    batches: std::sync::Mutex<Vec<std::time::Duration>>,
}

impl<'a> Timed<'a> {
    fn new(inner: &'a dyn HsmClient) -> Self {
        Self {
            inner,
            batches: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The `per_mille`/1000 quantile of the batch times, in milliseconds.
    fn quantile_ms(&self, per_mille: usize) -> f64 {
        let mut v = self
            .batches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if v.is_empty() {
            return 0.0;
        }
        v.sort();
        let i = (v.len() - 1) * per_mille.min(1000) / 1000;
        v.get(i).copied().map_or(0.0, ms)
    }
}

impl HsmClient for Timed<'_> {
    fn hsm_id(&self) -> &HsmId {
        self.inner.hsm_id()
    }
    fn identity_point(&self) -> &[u8] {
        self.inner.identity_point()
    }
    fn products(&self) -> Result<Vec<trustfab_hsm::ProductStatus>, IssueError> {
        self.inner.products()
    }
    fn chain(&self, p: &ProductKey) -> Result<(Vec<u8>, Option<Vec<u8>>), IssueError> {
        self.inner.chain(p)
    }
    fn firmware(
        &self,
        p: &ProductKey,
    ) -> Result<Option<trustfab_hsm::ProductFirmware>, IssueError> {
        self.inner.firmware(p)
    }
    fn reserve(&self, spec: JobSpec) -> Result<Reservation, JobOpError> {
        self.inner.reserve(spec)
    }
    fn attach(&self, package: &[u8]) -> Result<Reservation, JobOpError> {
        self.inner.attach(package)
    }
    fn job_status(&self, r: &Reservation) -> Result<trustfab_hsm::JobStatus, JobOpError> {
        self.inner.job_status(r)
    }
    fn issue(
        &self,
        r: &Reservation,
        devices: &[trustfab_hsm::DeviceKey],
    ) -> Result<Vec<trustfab_hsm::Issued>, IssueError> {
        let t = Instant::now();
        let out = self.inner.issue(r, devices);
        self.batches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(t.elapsed());
        out
    }
    fn certificate_for(
        &self,
        r: &Reservation,
        uid: &DeviceUid,
    ) -> Result<Option<trustfab_hsm::Issued>, IssueError> {
        self.inner.certificate_for(r, uid)
    }
    fn family_key_for(&self, r: &Reservation, uid: &DeviceUid) -> Result<Vec<u8>, IssueError> {
        self.inner.family_key_for(r, uid)
    }
    fn record_outcomes(
        &self,
        r: &Reservation,
        outcomes: Vec<trustfab_hsm::DeviceOutcome>,
    ) -> Result<(), IssueError> {
        self.inner.record_outcomes(r, outcomes)
    }
    fn close(&self, r: Reservation) -> Result<trustfab_formats::records::JobClosed, JobOpError> {
        self.inner.close(r)
    }
}

/// One measured run: the station's summary and its batch times.
struct Measured {
    summary: trustfab_station::Summary,
    batch_p50: f64,
    batch_p99: f64,
}

/// Reserves a job of `a.devices` through `hsm` and runs it on fresh simulated parts.
fn measure(
    a: &BenchArgs,
    hsm: &dyn HsmClient,
    sockets: usize,
    fw: Option<&BenchFirmware>,
    label: &str,
    issuers: usize,
) -> Result<Measured> {
    let now = SystemClock.now();
    let kind = if fw.is_some() {
        DeviceKind::SecureMcu
    } else {
        DeviceKind::SecureElement
    };
    let job = hsm.reserve(JobSpec {
        job_id: crate::job::job_id_at(label, now)?,
        hsm_id: hsm.hsm_id().clone(),
        product: ProductKey::parse(BENCH_PRODUCT)?,
        quantity: a.devices,
        device_kind: match kind {
            DeviceKind::SecureElement => PartKind::SecureElement,
            DeviceKind::SecureMcu => PartKind::SecureMcu,
        },
        slots: SlotMap::default(),
        attestation_root: None,
        lock: LockPolicy::Data,
        created_at: now.0,
        firmware: match fw {
            Some(fw) => Some(trustfab_station::job_firmware(
                hsm,
                &ProductKey::parse(BENCH_PRODUCT)?,
                "bench.bin",
                &fw.image,
                5,
            )?),
            None => None,
        },
    })?;
    let vendors = (0..sockets)
        .map(|_| SiliconVendor::new(now, &trustfab_types::OsRng))
        .collect::<Result<_, _>>()?;
    let supply = MadeSupply::new(vendors, kind, a.devices, now, Faults::none());
    let pb = (!a.json).then(|| progress_bar(a.devices, 0));
    let mut opts = options(sockets, a.batch, pb.clone());
    opts.image = fw.map(|f| Arc::from(f.image.as_slice()));
    opts.issuers = issuers;
    let timed = Timed::new(hsm);
    let s = run_job(&timed, &job, &supply, &opts)?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    if !s.complete() {
        bail!(
            "the bench job ({label}) ended with {} of {} good ({} failures; first: {})",
            s.good,
            s.quantity,
            s.failures.len(),
            s.failures
                .first()
                .map(|f| format!("step {} {}: {}", f.step as u8, f.step.name(), f.reason))
                .unwrap_or_default()
        );
    }
    Ok(Measured {
        batch_p50: timed.quantile_ms(500),
        batch_p99: timed.quantile_ms(990),
        summary: s,
    })
}

/// The same flow through the HSM service on a loopback port: a station certified by the
/// station CA inside the token, over mutual TLS.
fn measure_service(
    a: &BenchArgs,
    hsm: &Arc<Hsm>,
    sockets: usize,
    fw: Option<&BenchFirmware>,
    poll: bool,
    run: u64,
) -> Result<(Measured, u64)> {
    let ca = hsm.station_ca(None)?;
    let key = SoftKey::generate(Curve::P256)?;
    let id = trustfab_types::StationId::new(&format!(
        "bench-station-{}{run}",
        if poll { "polled-" } else { "" }
    ))?;
    let req = trustfab_pki::station::StationRequest::new(&id, &key)?;
    let grant = trustfab_pki::station::StationGrant {
        products: vec![ProductKey::parse(BENCH_PRODUCT)?],
        max_devices: None,
        max_per_day: None,
    };
    let (cert, _) = hsm.certify_station(&ca, &req, &grant, 1)?;
    // The service as a center runs it, with operators: their CA and one operator.
    let now = SystemClock.now();
    let op_ca_key = SoftKey::generate(Curve::P256)?;
    let op_ca = trustfab_pki::station::operator_ca(
        &trustfab_types::StationId::new("bench-center")?,
        &Serial::from_be_bytes(&[1])?,
        now,
        1,
        &op_ca_key,
    )?;
    let op_key = SoftKey::generate(Curve::P256)?;
    let op_cert = trustfab_pki::station::certify_operator(
        &trustfab_types::StationId::new("bench-operator")?,
        &PublicKey::from_point(Curve::P256, op_key.public_point())?,
        &Serial::from_be_bytes(&[2])?,
        now,
        1,
        &Issuer::new(&op_ca, &op_ca_key)?,
    )?;
    let mut opts =
        trustfab_service::ServeOptions::new(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    opts.operator_ca = Some(op_ca);
    let running = trustfab_service::spawn(Arc::clone(hsm), &ca, &opts)?;
    let operator = trustfab_service::StationCredentials {
        ca_der: ca.clone(),
        cert_der: op_cert,
        key: op_key.secret_pkcs8_der()?,
    };
    let creds = trustfab_service::StationCredentials {
        ca_der: ca,
        cert_der: cert,
        key: key.secret_pkcs8_der()?,
    };
    let remote = trustfab_service::RemoteHsm::connect(
        &running.url(),
        &creds,
        std::time::Duration::from_secs(30),
    )?;
    let url = running.url();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (m, polls) = std::thread::scope(|sc| {
        let poller = poll.then(|| {
            sc.spawn(|| {
                let mut polls = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let t = Instant::now();
                    for path in ["/console/state", "/metrics"] {
                        if trustfab_service::client::operator_get(
                            &url,
                            path,
                            &operator,
                            std::time::Duration::from_secs(30),
                        )
                        .is_ok()
                        {
                            polls += 1;
                        }
                    }
                    let rest = std::time::Duration::from_secs(1).saturating_sub(t.elapsed());
                    std::thread::sleep(rest);
                }
                polls
            })
        });
        let label = if poll {
            "bench-console"
        } else {
            "bench-service"
        };
        let m = measure(a, &remote, sockets, fw, label, a.service_issuers);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let polls = poller.map_or(0, |p| p.join().unwrap_or(0));
        (m, polls)
    });
    running.stop();
    Ok((m?, polls))
}

/// The console's cost: service jobs polled and not polled, alternated.
struct Polled {
    /// The first polled job (its row in the table).
    first: Measured,
    /// (devices good, seconds) of each job not polled, the `--service` one first.
    not_polled: Vec<(u64, f64)>,
    /// (devices good, seconds) of each polled job.
    polled: Vec<(u64, f64)>,
    /// Console and /metrics requests answered.
    requests: u64,
}

impl Polled {
    /// Devices per second over all the jobs of one kind.
    fn rate(runs: &[(u64, f64)]) -> f64 {
        let (n, s) = runs
            .iter()
            .fold((0u64, 0f64), |(n, s), (g, t)| (n + g, s + t));
        if s > 0.0 {
            n as f64 / s
        } else {
            0.0
        }
    }

    /// The polled jobs' rate over the not-polled jobs' rate.
    fn ratio(&self) -> f64 {
        let base = Self::rate(&self.not_polled);
        if base > 0.0 {
            Self::rate(&self.polled) / base
        } else {
            0.0
        }
    }

    /// Each polled job's rate over the rate of the not-polled job run next to it.
    fn pair_ratios(&self) -> Vec<f64> {
        self.polled
            .iter()
            .zip(&self.not_polled)
            .map(|(p, n)| Self::rate(&[*p]) / Self::rate(&[*n]).max(f64::MIN_POSITIVE))
            .collect()
    }
}

fn good_and_seconds(m: &Measured) -> (u64, f64) {
    (m.summary.good_this_run, m.summary.elapsed.as_secs_f64())
}

/// Runs `2 * --poll-rounds - 1` more service jobs after `first` (not polled), in the order
/// not polled, polled, polled, not polled, not polled, polled, ... so that a drift of the
/// machine over the run (a growing ledger, a noisy neighbour) falls on both kinds alike.
fn poll_rounds(
    a: &BenchArgs,
    hsm: &Arc<Hsm>,
    sockets: usize,
    fw: Option<&BenchFirmware>,
    first: Option<&Measured>,
) -> Result<Polled> {
    let first = first.context("--console-poll needs --service")?;
    let mut not_polled = vec![good_and_seconds(first)];
    let mut polled = Vec::new();
    let mut first_polled = None;
    let mut requests = 0;
    for i in 1..2 * a.poll_rounds {
        // A B B A A B B A ...
        let poll = matches!(i % 4, 1 | 2);
        let (m, n) = measure_service(a, hsm, sockets, fw, poll, i)?;
        requests += n;
        if poll {
            polled.push(good_and_seconds(&m));
            first_polled.get_or_insert(m);
        } else {
            not_polled.push(good_and_seconds(&m));
        }
    }
    Ok(Polled {
        first: first_polled.context("no polled job ran")?,
        not_polled,
        polled,
        requests,
    })
}

/// The OEM's firmware for a bench with `--firmware`: its boot key's hash, its family key and
/// one image.
struct BenchFirmware {
    boot_key_hash: [u8; 32],
    family: SoftKey,
    image: Vec<u8>,
}

impl BenchFirmware {
    fn new(kib: u32) -> Result<Self> {
        let sign = SoftKey::generate(Curve::P256)?;
        let family = SoftKey::generate(Curve::P256)?;
        let family_pub = PublicKey::from_point(Curve::P256, family.public_point())?;
        let len = usize::try_from(kib)? * 1024;
        if len + 4096 > trustfab_device::limits::BOOT_SLOT_BYTES {
            bail!(
                "--firmware {kib}: the simulated MCU's boot slot holds {} KiB",
                trustfab_device::limits::BOOT_SLOT_BYTES / 1024 - 4
            );
        }
        let payload: Vec<u8> = b"bench firmware "
            .iter()
            .copied()
            .cycle()
            .take(len)
            .collect();
        let mut opts = trustfab_firmware::MasterOptions::new("1.0.0".parse()?, 1);
        opts.encrypt_to = Some(&family_pub);
        let image = trustfab_firmware::master(&payload, &opts, &sign, &trustfab_types::OsRng)?;
        Ok(Self {
            boot_key_hash: trustfab_firmware::key_hash(&PublicKey::from_point(
                Curve::P256,
                sign.public_point(),
            )?),
            family,
            image,
        })
    }
}

/// Peak resident set size of this process, in bytes (Linux `VmHWM`).
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

const BENCH_PRODUCT: &str = "acme/bench";

/// The bench's token: a new soft token in `dir`, or the PKCS#11 token `a` names.
fn bench_token(a: &BenchArgs, dir: &Path) -> Result<Arc<dyn trustfab_token::Token>> {
    if let Some(label) = &a.token_label {
        let module = match &a.pkcs11_module {
            Some(m) => m.clone(),
            None => trustfab_token_pkcs11::module_path()?,
        };
        let token =
            trustfab_token_pkcs11::Pkcs11Token::open(&trustfab_token_pkcs11::Pkcs11Config {
                module,
                token_label: label.clone(),
                pin: a.pass.get("the PKCS#11 token's PIN", false)?,
                sessions: a.pkcs11_sessions.max(1),
            })
            .with_context(|| format!("opening PKCS#11 token {label}"))?;
        return Ok(Arc::new(token));
    }
    let mut secret = [0u8; 24];
    aws_lc_rs::rand::fill(&mut secret).map_err(|_| anyhow::anyhow!("random generator failed"))?;
    let pass = || Passphrase::new(hex::encode(secret)).map_err(anyhow::Error::msg);
    let token_path = dir.join("token");
    drop(SoftToken::create(
        &token_path,
        &pass()?,
        Argon2Cost::new(8 * 1024, 1, 1)?,
    )?);
    Ok(Arc::new(SoftToken::open(&token_path, &pass()?)?))
}

/// A bench CA certificate named `name` for `key`: self-signed, or issued by `issuer`. Serial 1,
/// valid from an hour before `now` for ten years.
fn bench_ca(
    role: CaRole,
    name: &str,
    key: &SoftKey,
    issuer: Option<&Issuer<'_>>,
    now: UnixTime,
) -> Result<Vec<u8>> {
    let spec = CaSpec {
        role,
        common_name: name.into(),
        organization: name.into(),
        // Unique per issuer (RFC 5280 §4.1.2.2): a root is serial 1 of its own key, the CA it
        // issues serial 2 (the vendor issues its HSM certificates as 2 and 3, and no CA).
        serial: Serial::from_u64(if issuer.is_none() { 1 } else { 2 })?,
        not_before: UnixTime(now.0 - 3600),
        days: 3650,
    };
    Ok(match issuer {
        None => self_signed_ca(&spec, key)?,
        Some(i) => intermediate_ca(
            &spec,
            &PublicKey::from_point(key.curve(), key.public_point())?,
            i,
        )?,
    })
}

/// A whole programming center in `dir`: vendor CA, HSM on `token`, OEM root and device CA, a
/// package of `count` for this HSM sealed by `trustfab_oem` and imported.
fn bench_site(
    token: Arc<dyn trustfab_token::Token>,
    dir: &Path,
    ledger_url: Option<&str>,
    count: u64,
    fw: Option<&BenchFirmware>,
) -> Result<Hsm> {
    let now = SystemClock.now();
    let ca = |role, name: &str, key: &SoftKey, issuer: Option<&Issuer<'_>>| {
        bench_ca(role, name, key, issuer, now)
    };
    let vendor_key = SoftKey::generate(Curve::P256)?;
    let vendor_root = ca(CaRole::VendorRoot, "Bench vendor", &vendor_key, None)?;
    let hsm_id = HsmId::new("bench-hsm")?;
    let req = Hsm::init(&*token, &hsm_id)
        .context("making the bench HSM's identity (a PKCS#11 token must be a fresh one)")?;
    let vendor_issuer = Issuer::new(&vendor_root, &vendor_key)?;
    let certs = certify_hsm(
        &req,
        &vendor_issuer,
        (&Serial::from_u64(2)?, &Serial::from_u64(3)?),
        UnixTime(now.0 - 3600),
        365,
    )?;
    let ledger: Arc<dyn trustfab_ledger::Store> = match ledger_url {
        Some(url) => {
            let store = trustfab_ledger_postgres::PgStore::connect(url)
                .with_context(|| format!("connecting to the ledger {url}"))?;
            if trustfab_ledger::Store::head(&store)?.seq != 0 {
                bail!("the bench needs an empty ledger; {url} holds records");
            }
            Arc::new(store)
        }
        None => Arc::new(SqliteStore::open(&dir.join("ledger.sqlite"))?),
    };
    let hsm = Hsm::open(token, ledger, Arc::new(SystemClock), &hsm_id, Some(&certs))?;
    let root_key = SoftKey::generate(Curve::P256)?;
    let root = ca(CaRole::OemRoot, "Bench OEM root", &root_key, None)?;
    let ca_key = SoftKey::generate(Curve::P256)?;
    let device_ca = ca(
        CaRole::DeviceCa,
        "Bench device CA",
        &ca_key,
        Some(&Issuer::new(&root, &root_key)?),
    )?;
    let identity = HsmIdentity::validate(&certs, &vendor_root, now)?;
    let mut package_id = [0u8; 16];
    aws_lc_rs::rand::fill(&mut package_id)
        .map_err(|_| anyhow::anyhow!("random generator failed"))?;
    let product = ProductKey::parse(BENCH_PRODUCT)?;
    let order = Order {
        package_id,
        oem_id: product.oem().clone(),
        product_id: product.product().clone(),
        count,
        serial_range: None,
        not_before: UnixTime(now.0 - 60),
        not_after: UnixTime(now.0 + 86_400),
        template: EXAMPLE_TEMPLATE.into(),
        root_cert: root,
        device_ca_cert: Some(device_ca),
    };
    let firmware = fw.map(|fw| Firmware {
        family: "bench",
        boot_key_hash: fw.boot_key_hash,
        family_key: Some(&fw.family),
    });
    hsm.import(&order.seal_for(&identity, &root_key, &ca_key, firmware.as_ref())?)?;
    Ok(hsm)
}

/// The limit: per device the same cryptography as the flow — the part's attestation key and
/// its vendor certificate (making the part), the device key, the device certificate built from
/// the template and signed, the chain validated (two signatures), a challenge signed and
/// verified — back to back on `threads` threads, no I/O. With firmware, also the family key
/// wrapped to the device key and unwrapped with it, and what secure boot does with the image:
/// validate it decrypting, decrypt it into the primary slot, validate that. Returns devices per
/// second.
fn crypto_limit(threads: usize, per_thread: u64, fw: Option<&BenchFirmware>) -> Result<f64> {
    let now = SystemClock.now();
    let template = Template::from_toml(EXAMPLE_TEMPLATE)?;
    let root_key = SoftKey::generate(Curve::P256)?;
    let root = bench_ca(CaRole::OemRoot, "Limit root", &root_key, None, now)?;
    let ca_key = SoftKey::generate(Curve::P256)?;
    let ca = bench_ca(
        CaRole::DeviceCa,
        "Limit CA",
        &ca_key,
        Some(&Issuer::new(&root, &root_key)?),
        now,
    )?;
    let oem = OemId::new("acme")?;
    let product = ProductId::new("bench")?;
    let start = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let mut hs = Vec::new();
        for t in 0..threads {
            let (template, root, ca, ca_key, oem, product) =
                (&template, &root, &ca, &ca_key, &oem, &product);
            hs.push(scope.spawn(move || -> Result<()> {
                let issuer = Issuer::new(ca, ca_key)?;
                let intermediates = vec![ca.clone()];
                for i in 0..per_thread {
                    let uid = DeviceUid::new(
                        &[(t as u64 * per_thread + i).to_be_bytes(), [0; 8]].concat(),
                    )?;
                    let serial = Serial::from_u64(i + 1)?;
                    let certify = |key: &SoftKey| -> Result<Vec<u8>> {
                        let pk = PublicKey::from_point(Curve::P256, key.public_point())?;
                        Ok(issue_device(
                            template,
                            &DeviceRequest {
                                inputs: RenderInputs {
                                    oem,
                                    product,
                                    uid: &uid,
                                    serial: &serial,
                                },
                                public_key: &pk,
                                now,
                            },
                            &issuer,
                        )?)
                    };
                    // Making the part: its attestation key and certificate.
                    let attestation = SoftKey::generate(Curve::P256)?;
                    certify(&attestation)?;
                    // Steps 2, 3 and 7.
                    let device = SoftKey::generate(Curve::P256)?;
                    let cert = certify(&device)?;
                    validate(
                        &cert,
                        &Policy {
                            root,
                            intermediates: &intermediates,
                            crls: &[],
                            now,
                            purpose: Purpose::ClientAuth,
                        },
                    )?;
                    let challenge = [7u8; 32];
                    let sig = device.sign_der(&challenge)?;
                    aws_lc_rs::signature::UnparsedPublicKey::new(
                        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
                        device.public_point(),
                    )
                    .verify(&challenge, &sig)
                    .map_err(|_| anyhow::anyhow!("challenge signature does not verify"))?;
                    if let Some(fw) = fw {
                        firmware_crypto(fw, &device)?;
                    }
                }
                Ok(())
            }));
        }
        for h in hs {
            h.join()
                .map_err(|_| anyhow::anyhow!("a limit thread panicked"))??;
        }
        Ok(())
    })?;
    let total = per_thread * threads as u64;
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// The firmware step's cryptography for one device, as the limit counts it.
fn firmware_crypto(fw: &BenchFirmware, device: &SoftKey) -> Result<()> {
    let device_pub = PublicKey::from_point(Curve::P256, device.public_point())?;
    let wrapped = trustfab_token::wrap_for(&device_pub, &fw.family.secret_pkcs8_der()?, b"limit")?;
    let family = trustfab_token::unwrap_with(&device.secret_pkcs8_der()?, &wrapped)?;
    let key = trustfab_firmware::LoadedKey::new(trustfab_firmware::SoftDecryptionKey::from_der(
        family.secret_pkcs8_der(),
    )?);
    let keys: [&dyn trustfab_firmware::DecryptionKey; 1] = [&key];
    let anchor = trustfab_firmware::TrustAnchor::KeyHash(&fw.boot_key_hash);
    // What MCUboot does on the part: validate the update decrypting it, decrypt it into the
    // primary slot during the swap (the image key unwrapped once), validate the primary slot.
    trustfab_firmware::verify(
        &fw.image,
        anchor,
        trustfab_firmware::Payload::Decrypt(&keys),
    )?;
    let clear = trustfab_firmware::decrypt(&fw.image, &keys)?;
    trustfab_firmware::verify(&clear, anchor, trustfab_firmware::Payload::AsIs)?;
    Ok(())
}

pub(crate) fn run(a: &BenchArgs) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let sockets = a.sockets.unwrap_or(cores * 32);
    let tmp;
    let dir = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir().context("creating a temporary directory")?;
            tmp.path().to_owned()
        }
    };
    let fw = a.firmware.map(BenchFirmware::new).transpose()?;
    let token = bench_token(a, &dir)?;
    let service_jobs = if a.console_poll {
        2 * a.poll_rounds
    } else {
        u64::from(a.service)
    };
    let count = a.devices * (1 + service_jobs);
    let hsm = Arc::new(
        bench_site(token, &dir, a.ledger_url.as_deref(), count, fw.as_ref())
            .context("setting up the bench site")?,
    );
    let local = measure(
        a,
        &*hsm,
        sockets,
        fw.as_ref(),
        "bench",
        trustfab_station::ISSUERS,
    )?;
    let rss = peak_rss();
    let remote = if a.service {
        Some(measure_service(a, &hsm, sockets, fw.as_ref(), false, 0)?.0)
    } else {
        None
    };
    let polled = if a.console_poll {
        Some(poll_rounds(a, &hsm, sockets, fw.as_ref(), remote.as_ref())?)
    } else {
        None
    };
    let s = &local.summary;
    let per_thread = a
        .limit_devices
        .unwrap_or_else(|| (a.devices / 10).clamp(100, 20_000))
        .div_ceil(cores as u64);
    let limit = crypto_limit(cores, per_thread, fw.as_ref())?;
    let hsm_name = if a.token_label.is_some() {
        "PKCS#11"
    } else {
        "soft-token"
    };
    let ledger_name = if a.ledger_url.is_some() {
        "PostgreSQL (SERIALIZABLE)"
    } else {
        "SQLite (WAL, synchronous=FULL)"
    };
    let rate = s.devices_per_sec();
    let rss_mb = rss.map(|b| b as f64 / 1_048_576.0);
    if a.json {
        let v = serde_json::json!({
            "devices": a.devices, "sockets": sockets, "batch": a.batch, "cores": cores,
            "ledger": ledger_name, "hsm": hsm_name,
            "firmware_kib": a.firmware,
            "devices_per_s": rate, "p50_ms": ms(s.latency_quantile(0.5)),
            "p99_ms": ms(s.latency_quantile(0.99)), "peak_rss_mb": rss_mb,
            "limit_devices_per_s": limit, "ratio": rate / limit,
            "batch_p50_ms": local.batch_p50, "batch_p99_ms": local.batch_p99,
            "service": remote.as_ref().map(|r| serde_json::json!({
                "devices_per_s": r.summary.devices_per_sec(),
                "p50_ms": ms(r.summary.latency_quantile(0.5)),
                "p99_ms": ms(r.summary.latency_quantile(0.99)),
                "batch_p50_ms": r.batch_p50, "batch_p99_ms": r.batch_p99,
                "ratio_to_in_process": r.summary.devices_per_sec() / rate,
            })),
            "service_console_polled": polled.as_ref().map(|p| serde_json::json!({
                "devices_per_s": Polled::rate(&p.polled),
                "not_polled_devices_per_s": Polled::rate(&p.not_polled),
                "jobs_each": p.polled.len(),
                "p50_ms": ms(p.first.summary.latency_quantile(0.5)),
                "p99_ms": ms(p.first.summary.latency_quantile(0.99)),
                "batch_p50_ms": p.first.batch_p50, "batch_p99_ms": p.first.batch_p99,
                "console_requests": p.requests,
                "ratio_to_not_polled": p.ratio(),
                "pair_ratios": p.pair_ratios(),
            })),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "trustfab bench: {} devices, {sockets} sockets, batch {}, {cores} cores, {hsm_name} HSM, {ledger_name} ledger{}",
        a.devices,
        a.batch,
        a.firmware.map_or(String::new(), |k| format!(
            ", secure MCUs with a {k} KiB encrypted image"
        ))
    )?;
    writeln!(
        out,
        "{:<34} {:>11} {:>9} {:>9} {:>9} {:>9} {:>13}",
        "", "devices/s", "p50 ms", "p99 ms", "batch p50", "batch p99", "peak RSS MB"
    )?;
    writeln!(
        out,
        "{:<34} {:>11.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>13}",
        "station, full flow, in process",
        rate,
        ms(s.latency_quantile(0.5)),
        ms(s.latency_quantile(0.99)),
        local.batch_p50,
        local.batch_p99,
        rss_mb.map_or("-".into(), |m| format!("{m:.0}"))
    )?;
    let row = |out: &mut std::io::StdoutLock<'_>, label: &str, m: &Measured| {
        writeln!(
            out,
            "{:<34} {:>11.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>13}",
            label,
            m.summary.devices_per_sec(),
            ms(m.summary.latency_quantile(0.5)),
            ms(m.summary.latency_quantile(0.99)),
            m.batch_p50,
            m.batch_p99,
            "-"
        )
    };
    if let Some(r) = &remote {
        row(&mut out, "station through the service (mTLS)", r)?;
    }
    if let Some(p) = &polled {
        row(&mut out, "  the same, console polled 1/s", &p.first)?;
    }
    writeln!(
        out,
        "{:<34} {:>11.0} {:>9} {:>9} {:>9} {:>9} {:>13}",
        "limit, same crypto, no I/O", limit, "-", "-", "-", "-", "-"
    )?;
    if let Some(r) = &remote {
        writeln!(
            out,
            "{:<34} {:>10.0}%",
            "service / in process",
            100.0 * r.summary.devices_per_sec() / rate
        )?;
    }
    if let Some(p) = &polled {
        let pairs: Vec<String> = p
            .pair_ratios()
            .iter()
            .map(|r| format!("{:.0}%", 100.0 * r))
            .collect();
        writeln!(
            out,
            "{:<34} {:>10.0}%  ({} jobs each, {:.0} / {:.0} devices/s; pairs {}; {} console requests answered)",
            "console polled / not polled",
            100.0 * p.ratio(),
            p.polled.len(),
            Polled::rate(&p.polled),
            Polled::rate(&p.not_polled),
            pairs.join(" "),
            p.requests
        )?;
    }
    writeln!(
        out,
        "{:<34} {:>10.0}%",
        "station / limit",
        100.0 * rate / limit
    )?;
    Ok(())
}
