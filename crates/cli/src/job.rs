//! `trustfab job` (create, run, close, status, quick): the station at the programming center,
//! over the HSM directory of `trustfab hsm`. The job package format and the ledger records are in
//! `docs/job.md`. `trustfab bench` is in `bench.rs`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use trustfab_device::{file, DeviceKind, SiliconVendor};
use trustfab_hsm::{HsmClient, Reservation};
use trustfab_station::{
    device_kind, run as run_job, Faults, FileSupply, JobSpec, LockPolicy, MadeSupply, PartKind,
    Progress, RunOptions, SlotMap, Summary,
};
use trustfab_types::{Clock as _, JobId, ProductKey, SystemClock, UnixTime};

use crate::files;
use crate::hsm::{self, HsmDir};
use crate::service::{client, RemoteArgs};

/// The largest job package read from a file.
const JOB_FILE_MAX: usize = trustfab_formats::job::MAX_PACKAGE_BYTES;

#[derive(Subcommand, Debug)]
pub(crate) enum JobCommand {
    /// Create a job package: reserves the quantity from the product, signed by the HSM.
    Create(CreateArgs),
    /// Run a job on the station's sockets; resumes where an earlier run stopped.
    ///
    /// Exit status: 0 when the job has its quantity of good devices; 3 when the run ended with
    /// the job incomplete (devices failed, too few parts, or stopped); 4 when the HSM or the
    /// station refused the job (another HSM's, closed, an earlier release's, or not the job's
    /// image); 1 for any other error; 2 for a command-line mistake.
    Run(RunArgs),
    /// Close a job: the quantity never used goes back to the product.
    Close(JobRef),
    /// What the ledger says about a job; with --watch, followed live until it is done.
    Status(StatusArgs),
    /// Create a job, run it on simulated parts and close it, in one step.
    Quick(QuickArgs),
}

#[derive(Args, Debug)]
pub(crate) struct QuickArgs {
    #[command(flatten)]
    at: HsmDir,
    /// The product, as `oem/product`.
    #[arg(long)]
    product: ProductKey,
    /// How many devices.
    #[arg(long)]
    devices: u64,
    /// Where to write the job package.
    #[arg(long, default_value = ".")]
    out_dir: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum KindArg {
    /// A secure element.
    Se,
    /// A secure MCU.
    Mcu,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LockArg {
    /// Lock the data zone.
    Data,
    /// Lock each of the job's lockable slots, then the data zone.
    SlotsAndData,
}

#[derive(Args, Debug)]
pub(crate) struct CreateArgs {
    #[command(flatten)]
    at: HsmDir,
    #[command(flatten)]
    remote: RemoteArgs,
    /// The product, as `oem/product`.
    #[arg(long)]
    product: ProductKey,
    /// How many certificates the job may have issued.
    #[arg(long)]
    quantity: u64,
    /// The job id (default: `job-`, the creation time and 8 random hex digits).
    #[arg(long)]
    job_id: Option<JobId>,
    /// The kind of part.
    #[arg(long, value_enum, default_value = "se")]
    kind: KindArg,
    /// Require a factory key attestation that validates to this silicon vendor root (PEM).
    #[arg(long, value_name = "PEM")]
    attestation_root: Option<PathBuf>,
    /// How devices are locked.
    #[arg(long, value_enum, default_value = "data")]
    lock: LockArg,
    /// Program this mastered image (a secure MCU job of a product with firmware): it must be
    /// signed by the product's boot key; an encrypted one is decrypted only inside each device,
    /// with the family key the HSM wraps for it.
    #[arg(long, value_name = "IMAGE")]
    image: Option<PathBuf>,
    /// The device's secret slot for the family key.
    #[arg(long, default_value_t = 5)]
    secret_slot: u8,
    /// Where to write the job package.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// The job package.
    job: PathBuf,
    #[command(flatten)]
    at: HsmDir,
    #[command(flatten)]
    remote: RemoteArgs,
    /// Sockets driven in parallel.
    #[arg(long, default_value_t = 8)]
    sockets: usize,
    /// Most devices per HSM issuance call.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// A directory of device files (`*.dev`); each part is saved after every command.
    #[arg(long, value_name = "DIR", conflicts_with = "simulate")]
    parts: Option<PathBuf>,
    /// Simulated parts made on demand (default: the job's quantity), dropped once provisioned.
    #[arg(long, value_name = "N")]
    simulate: Option<u64>,
    /// The simulated silicon vendor for --simulate (needed when the job requires attestation).
    #[arg(long, value_name = "FILE")]
    vendor: Option<PathBuf>,
    /// Probability of a socket fault per command (no contact, write error, power loss).
    #[arg(long, default_value_t = 0.0)]
    fault_rate: f64,
    /// The image the job programs (the file it names by SHA-256).
    #[arg(long, value_name = "IMAGE")]
    image: Option<PathBuf>,
    /// Close the job when it has its quantity (an incomplete job is not closed, and the run says
    /// why).
    #[arg(long)]
    close: bool,
    /// Print a JSON summary instead of the progress bar and text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct JobRef {
    /// The job package.
    job: PathBuf,
    #[command(flatten)]
    at: HsmDir,
    #[command(flatten)]
    remote: RemoteArgs,
}

#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    job: JobRef,
    /// Follow the job live: good of quantity, certificates issued, failed attempts, the
    /// reservation left and devices per second, read again every --interval until the job has
    /// its quantity of good devices or is closed (or Ctrl-C). A progress bar on a terminal, a
    /// line per change otherwise.
    #[arg(long)]
    watch: bool,
    /// Seconds between readings with --watch.
    #[arg(long, default_value_t = 1.0, value_parser = interval_secs)]
    interval: f64,
}

fn interval_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if (0.05..=3600.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{s}: between 0.05 and 3600 seconds"))
    }
}

pub(crate) fn run(cmd: JobCommand) -> Result<()> {
    match cmd {
        JobCommand::Create(a) => create(&a),
        JobCommand::Quick(a) => {
            let hsm = hsm::open(&a.at)?;
            demo_job(&hsm, &a.out_dir, &a.product, a.devices).map(|_| ())
        }
        JobCommand::Run(a) => run_cmd(&a),
        JobCommand::Close(a) => {
            let hsm = client(&a.at, &a.remote)?;
            let job = read_job(&*hsm, &a.job)?;
            let c = hsm.close(job)?;
            println!(
                "closed job {}: {} issued, {} good, {} failed after issue, {} credited back to {}",
                c.job, c.issued, c.good, c.failed_after_issue, c.credited, c.product
            );
            Ok(())
        }
        JobCommand::Status(a) => {
            let hsm = client(&a.job.at, &a.job.remote)?;
            let job = read_job(&*hsm, &a.job.job)?;
            if a.watch {
                return watch(&*hsm, &job, Duration::from_secs_f64(a.interval));
            }
            let st = hsm.job_status(&job)?;
            let s = job.spec();
            println!(
                "job {} for {} (quantity {})",
                s.job_id, s.product, s.quantity
            );
            println!("  created   ledger record {}", st.created_seq);
            println!("  issued    {}", st.issued.len());
            println!("  reserved  {} units left", st.remaining);
            println!("  good      {}", st.good.len());
            println!("  failures  {} recorded attempts", st.failures);
            match st.closed_seq {
                Some(seq) => println!("  closed    ledger record {seq}"),
                None => println!("  open"),
            }
            Ok(())
        }
    }
}

/// One reading of `job status --watch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Reading {
    good: u64,
    issued: u64,
    failed: u64,
    left: u64,
    closed: bool,
}

impl Reading {
    fn of(st: &trustfab_hsm::JobStatus) -> Self {
        Self {
            good: st.good.len() as u64,
            issued: st.issued.len() as u64,
            failed: st.failures,
            left: st.remaining,
            closed: st.closed_seq.is_some(),
        }
    }
}

/// The rate of good devices over the readings of the last [`RATE_WINDOW`].
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// `job status --watch`: the job's numbers read from the HSM every `every`, as the console
/// shows them, until the job is done or closed, or Ctrl-C.
fn watch(hsm: &dyn HsmClient, job: &Reservation, every: Duration) -> Result<()> {
    use std::io::IsTerminal as _;
    let spec = job.spec();
    let quantity = spec.quantity;
    let tty = std::io::stdout().is_terminal();
    let pb = tty.then(|| progress_bar(quantity, 0));
    let stop = stop_flag();
    stop.store(false, Ordering::Relaxed);
    let started = std::time::Instant::now();
    let mut window: std::collections::VecDeque<(std::time::Instant, u64)> =
        std::collections::VecDeque::new();
    let mut last: Option<Reading> = None;
    if !tty {
        println!(
            "watching job {} for {} (quantity {quantity})",
            spec.job_id, spec.product
        );
    }
    loop {
        let r = Reading::of(&hsm.job_status(job)?);
        let now = std::time::Instant::now();
        window.push_back((now, r.good));
        while window
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            window.pop_front();
        }
        // A start with nothing made (the watch opened before the run) is no part of the rate.
        while window.len() > 2
            && window
                .get(1)
                .is_some_and(|(_, g)| Some(g) == window.front().map(|(_, g0)| g0))
        {
            window.pop_front();
        }
        let rate = match (window.front(), window.back()) {
            (Some((t0, g0)), Some((t1, g1))) if t1 > t0 => {
                g1.saturating_sub(*g0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        };
        let done = r.closed || r.good >= quantity;
        let text = format!(
            "{} issued, {} failed attempts, {} reserved left, {rate:.0} devices/s{}",
            r.issued,
            r.failed,
            r.left,
            if r.closed { ", closed" } else { "" }
        );
        match &pb {
            Some(pb) => {
                pb.set_position(r.good);
                pb.set_message(text);
            }
            None if last != Some(r) || done => println!(
                "{:>7.1}s  {}/{quantity} good, {text}",
                started.elapsed().as_secs_f64(),
                r.good
            ),
            None => {}
        }
        last = Some(r);
        if done || stop.load(Ordering::Relaxed) {
            if let Some(pb) = &pb {
                pb.finish();
            }
            if done {
                println!(
                    "job {}: {} of {quantity} good{}",
                    spec.job_id,
                    r.good,
                    if r.closed { ", closed" } else { "" }
                );
            }
            return Ok(());
        }
        // Sleep in small steps so that Ctrl-C ends the watch at once.
        let until = now + every;
        while std::time::Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(
                until
                    .saturating_duration_since(std::time::Instant::now())
                    .min(Duration::from_millis(50)),
            );
        }
    }
}

/// A job id made of `prefix`, the time `now` (Unix seconds) and 32 random bits, so that two
/// jobs made in the same second differ: `job-1790000000-9f86d081`.
///
/// # Errors
/// When `prefix` is not a valid start of a job id, or the random source fails.
pub(crate) fn job_id_at(prefix: &str, now: UnixTime) -> Result<JobId> {
    let mut nonce = [0u8; 4];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| anyhow::anyhow!("random generator failed"))?;
    let id = format!("{prefix}-{}-{}", now.0, hex::encode(nonce));
    JobId::new(&id).with_context(|| format!("making the job id {id:?}"))
}

fn read_job(hsm: &dyn HsmClient, path: &Path) -> Result<Reservation> {
    let bytes = files::read_limited(path, JOB_FILE_MAX)
        .with_context(|| format!("reading job package {}", path.display()))?;
    hsm.attach(&bytes)
        .with_context(|| format!("opening job package {}", path.display()))
}

fn create(a: &CreateArgs) -> Result<()> {
    let hsm = client(&a.at, &a.remote)?;
    let now = SystemClock.now();
    let attestation_root = match &a.attestation_root {
        Some(p) => {
            let text = files::read_text(p, 64 * 1024)?;
            Some(trustfab_formats::records::Bytes(
                trustfab_pki::pem::decode_one(&text, "CERTIFICATE")
                    .with_context(|| format!("reading {}", p.display()))?,
            ))
        }
        None => None,
    };
    let spec = JobSpec {
        job_id: match &a.job_id {
            Some(id) => id.clone(),
            None => job_id_at("job", now)?,
        },
        hsm_id: hsm.hsm_id().clone(),
        product: a.product.clone(),
        quantity: a.quantity,
        device_kind: match a.kind {
            KindArg::Se => PartKind::SecureElement,
            KindArg::Mcu => PartKind::SecureMcu,
        },
        slots: SlotMap::default(),
        attestation_root,
        lock: match a.lock {
            LockArg::Data => LockPolicy::Data,
            LockArg::SlotsAndData => LockPolicy::SlotsAndData,
        },
        created_at: now.0,
        firmware: match &a.image {
            Some(path) => {
                let bytes = files::read_limited(path, trustfab_firmware::MAX_IMAGE_BYTES)?;
                let name = path
                    .file_name()
                    .map_or_else(|| "image".into(), |n| n.to_string_lossy().into_owned());
                Some(trustfab_station::job_firmware(
                    &*hsm,
                    &a.product,
                    &name,
                    &bytes,
                    a.secret_slot,
                )?)
            }
            None => None,
        },
    };
    if a.out.exists() {
        bail!("{} exists; not overwriting it", a.out.display());
    }
    let created = hsm.reserve(spec)?;
    files::write_atomic(&a.out, created.package().as_bytes(), false)
        .with_context(|| format!("writing job package {}", a.out.display()))?;
    let s = created.spec();
    println!(
        "job {} for {}: {} devices reserved (ledger record {}), package {}",
        s.job_id,
        s.product,
        s.quantity,
        created.created_seq(),
        a.out.display()
    );
    Ok(())
}

/// The Ctrl-C flag, set up once per process.
fn stop_flag() -> Arc<AtomicBool> {
    static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    STOP.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let f = Arc::clone(&flag);
        // Without a handler Ctrl-C ends the process, which a resume also handles.
        let _ = ctrlc::set_handler(move || f.store(true, Ordering::Relaxed));
        flag
    })
    .clone()
}

pub(crate) fn progress_bar(quantity: u64, done: u64) -> ProgressBar {
    let pb = ProgressBar::new(quantity);
    if let Ok(style) = ProgressStyle::with_template(
        "{elapsed_precise} [{bar:40}] {pos}/{len} good  {per_sec}  ETA {eta}  {msg}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_position(done);
    pb
}

pub(crate) fn options(sockets: usize, batch: usize, show: Option<ProgressBar>) -> RunOptions {
    let mut o = RunOptions::new(sockets, Arc::new(SystemClock));
    o.batch = batch;
    o.stop = stop_flag();
    o.stop.store(false, Ordering::Relaxed);
    if let Some(pb) = show {
        let last = AtomicU64::new(0);
        o.progress = Some(Arc::new(move |p: &Progress| {
            pb.set_position(p.good);
            // The message is text: refresh it every 64 devices.
            let h = p.handled;
            if h.saturating_sub(last.load(Ordering::Relaxed)) >= 64 {
                last.store(h, Ordering::Relaxed);
                pb.set_message(format!("{} failed attempts, {} issued", p.failed, p.issued));
            }
        }));
    }
    o
}

fn run_cmd(a: &RunArgs) -> Result<()> {
    let hsm = client(&a.at, &a.remote)?;
    let job = read_job(&*hsm, &a.job)?;
    let spec = job.spec().clone();
    let st = hsm.job_status(&job)?;
    let pb = (!a.json).then(|| progress_bar(spec.quantity, st.good.len() as u64));
    let mut opts = options(a.sockets, a.batch, pb.clone());
    if let Some(path) = &a.image {
        opts.image = Some(files::read_limited(path, trustfab_firmware::MAX_IMAGE_BYTES)?.into());
    }
    let faults = if a.fault_rate > 0.0 {
        Faults::line(a.fault_rate, SystemClock.now().0)
    } else {
        Faults::none()
    };
    let summary = if let Some(dir) = &a.parts {
        let supply = FileSupply::open(dir, faults)?;
        run_job(&*hsm, &job, &supply, &opts)?
    } else {
        let n = a.simulate.unwrap_or(spec.quantity);
        let kind = device_kind(spec.device_kind);
        let now = SystemClock.now();
        let vendors = match &a.vendor {
            Some(p) => vec![file::load_vendor(p)
                .with_context(|| format!("reading silicon vendor {}", p.display()))?],
            None => (0..a.sockets.max(1))
                .map(|_| SiliconVendor::new(now, &trustfab_types::OsRng))
                .collect::<Result<_, _>>()?,
        };
        let supply = MadeSupply::new(vendors, kind, n, now, faults);
        let s = run_job(&*hsm, &job, &supply, &opts)?;
        if let Some(p) = &a.vendor {
            if let Some(v) = supply.into_vendors().first() {
                file::save_vendor(v, p)
                    .with_context(|| format!("saving silicon vendor {}", p.display()))?;
            }
        }
        s
    };
    if let Some(pb) = &pb {
        pb.finish_and_clear();
    }
    let incomplete = (!summary.complete()).then(|| Incomplete {
        job: summary.job.clone(),
        good: summary.good,
        quantity: summary.quantity,
        failed_attempts: summary.failed_attempts,
    });
    let closed = if a.close && incomplete.is_none() {
        Some(hsm.close(job)?)
    } else {
        None
    };
    let not_closed = match (&incomplete, a.close) {
        (Some(i), true) => Some(format!(
            "not closed: the job has {} of {} good; run it again with more parts, or close it \
             as it is with `trustfab job close`",
            i.good, i.quantity
        )),
        _ => None,
    };
    if a.json {
        let mut v = summary_json(&summary, closed.as_ref().map(|c| c.credited));
        v["not_closed"] = serde_json::json!(not_closed);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_summary(&summary);
        if let Some(c) = closed {
            println!("  closed: {} credited back to {}", c.credited, c.product);
        }
        if let Some(why) = &not_closed {
            println!("  {why}");
        }
    }
    match incomplete {
        Some(i) => Err(i.into()),
        None => Ok(()),
    }
}

/// `job run` ended without the job's quantity of good devices: the exit status is
/// [`EXIT_INCOMPLETE`], not success, so that a line controller sees it.
#[derive(Debug)]
pub(crate) struct Incomplete {
    job: JobId,
    good: u64,
    quantity: u64,
    failed_attempts: u64,
}

impl std::fmt::Display for Incomplete {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "job {} is incomplete: {} of {} good after {} failed attempts",
            self.job, self.good, self.quantity, self.failed_attempts
        )
    }
}

impl std::error::Error for Incomplete {}

/// Exit status of `job run` when the run ended with the job incomplete.
pub(crate) const EXIT_INCOMPLETE: u8 = 3;
/// Exit status when the HSM or the station refused the job (another HSM's, closed, an earlier
/// release's, or an image that is not the job's).
pub(crate) const EXIT_REFUSED: u8 = 4;

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary_json(s: &Summary, credited: Option<u64>) -> serde_json::Value {
    serde_json::json!({
        "job": s.job,
        "product": s.product,
        "quantity": s.quantity,
        "issued": s.issued,
        "good": s.good,
        "failed_after_issue": s.failed_after_issue,
        "good_this_run": s.good_this_run,
        "resumed": s.resumed,
        "already_good": s.already_good,
        "not_needed": s.not_needed,
        "provisioned_elsewhere": s.elsewhere.iter().map(|e| serde_json::json!({
            "uid": e.uid, "job": e.job,
        })).collect::<Vec<_>>(),
        "failed_attempts": s.failed_attempts,
        "failures": s.failures.iter().map(|f| serde_json::json!({
            "uid": f.uid, "step": f.step as u8, "step_name": f.step.name(),
            "reason": f.reason, "serial": f.serial,
        })).collect::<Vec<_>>(),
        "complete": s.complete(),
        "stopped": s.stopped,
        "closed": credited.is_some(),
        "credited": credited,
        "elapsed_s": s.elapsed.as_secs_f64(),
        "devices_per_s": s.devices_per_sec(),
        "latency_p50_ms": ms(s.latency_quantile(0.5)),
        "latency_p99_ms": ms(s.latency_quantile(0.99)),
    })
}

fn print_summary(s: &Summary) {
    println!(
        "job {} for {}: {} of {} good, {} certificates issued, {} failed after issue",
        s.job, s.product, s.good, s.quantity, s.issued, s.failed_after_issue
    );
    println!(
        "  this run: {} good ({} resumed), {} failed attempts, {} already good, {} not needed, {:.1} s, {:.0} devices/s, p50 {:.2} ms, p99 {:.2} ms",
        s.good_this_run,
        s.resumed,
        s.failed_attempts,
        s.already_good,
        s.not_needed,
        s.elapsed.as_secs_f64(),
        s.devices_per_sec(),
        ms(s.latency_quantile(0.5)),
        ms(s.latency_quantile(0.99)),
    );
    if !s.elsewhere.is_empty() {
        println!(
            "  {} parts left as they are, provisioned by another job:",
            s.elsewhere.len()
        );
        for e in s.elsewhere.iter().take(20) {
            println!("    {e}");
        }
    }
    for f in s.failures.iter().take(20) {
        println!(
            "  failed {} at step {} ({}): {}{}",
            f.uid.as_deref().unwrap_or("(uid unread)"),
            f.step as u8,
            f.step.name(),
            f.reason,
            f.serial
                .as_ref()
                .map(|s| format!(" [certificate {s}]"))
                .unwrap_or_default()
        );
    }
    if s.failures.len() > 20 {
        println!("  … and {} more failures", s.failures.len() - 20);
    }
    if s.stopped {
        println!("  stopped: run `trustfab job run` again to resume");
    }
}

/// For the demo: creates a job of `devices` for `product` on `hsm`, runs it on simulated parts
/// made on demand, closes it, prints what it made, and returns the summary. The job package is
/// written to `dir/job-<id>.bin`.
pub(crate) fn demo_job(
    hsm: &dyn HsmClient,
    dir: &Path,
    product: &ProductKey,
    devices: u64,
) -> Result<Summary> {
    let now = SystemClock.now();
    let spec = JobSpec {
        job_id: job_id_at("demo", now)?,
        hsm_id: hsm.hsm_id().clone(),
        product: product.clone(),
        quantity: devices,
        device_kind: PartKind::SecureElement,
        slots: SlotMap::default(),
        attestation_root: None,
        lock: LockPolicy::Data,
        created_at: now.0,
        firmware: None,
    };
    let created = hsm.reserve(spec)?;
    let path = dir.join(format!("job-{}.bin", created.job_id()));
    files::write_atomic(&path, created.package().as_bytes(), false)
        .with_context(|| format!("writing job package {}", path.display()))?;
    println!(
        "job {}: {devices} devices of {product} reserved, package {}",
        created.job_id(),
        path.display()
    );
    let sockets = 8;
    let vendors = (0..sockets)
        .map(|_| SiliconVendor::new(now, &trustfab_types::OsRng))
        .collect::<Result<_, _>>()?;
    let supply = MadeSupply::new(
        vendors,
        DeviceKind::SecureElement,
        devices,
        now,
        Faults::none(),
    );
    let pb = progress_bar(devices, 0);
    let s = run_job(
        hsm,
        &created,
        &supply,
        &options(sockets, 64, Some(pb.clone())),
    )?;
    pb.finish_and_clear();
    print_summary(&s);
    let c = hsm.close(created)?;
    println!(
        "  closed: {} credited back; every device has its key inside, its certificate and the root in write-protected slots, locked and verified",
        c.credited
    );
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_job_ids_of_one_second_differ() {
        let now = UnixTime(1_790_000_000);
        let a = job_id_at("job", now).unwrap();
        let b = job_id_at("job", now).unwrap();
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("job-1790000000-"), "{a}");
        assert_eq!(a.as_str().len(), "job-1790000000-".len() + 8);
    }
}
