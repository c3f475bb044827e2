//! The HSM service and its stations: `trustfab hsm serve`, `hsm certify-station`,
//! `hsm revoke-station`, `hsm stations`, `trustfab station init`, and the `--hsm URL --station
//! DIR` pair with which `job` commands reach the service instead of opening the HSM in process
//! (`docs/service.md`).
//!
//! A station directory holds `station.toml` (its id), `station.key` (its P-256 key, encrypted
//! PKCS#8 under the passphrase), `station.csr` (the request the HSM operator certifies),
//! `station.pem` (its certificate) and `service-ca.pem` (the station CA: the only anchor it
//! trusts the service by).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use trustfab_hsm::{Hsm, HsmClient};
use trustfab_pki::station::{StationGrant, StationRequest};
use trustfab_pki::{pem, Curve, SoftKey};
use trustfab_service::{RemoteHsm, ServeOptions, StationCredentials};
use trustfab_types::{ProductKey, StationId};

use crate::files;
use crate::hsm::{self, HsmDir};
use crate::secrets::PassphraseArgs;

const STATION_FORMAT: u32 = 1;
const STATION_SETTINGS: &str = "station.toml";
const STATION_KEY: &str = "station.key";
const STATION_CSR: &str = "station.csr";
const STATION_CERT: &str = "station.pem";
const SERVICE_CA: &str = "service-ca.pem";
/// The station CA certificate beside the HSM (its key is in the token).
const STATION_CA_FILE: &str = "station-ca.pem";
const PEM_MAX: usize = 64 * 1024;

#[derive(Subcommand, Debug)]
pub(crate) enum StationCommand {
    /// Make a station's key and the request the HSM operator certifies (`station.csr`).
    Init {
        /// The station directory.
        #[arg(long)]
        dir: PathBuf,
        /// The station's id (1-64 of [A-Za-z0-9.-]).
        #[arg(long)]
        station_id: StationId,
        #[command(flatten)]
        pass: PassphraseArgs,
    },
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct StationSettings {
    format: u32,
    station_id: StationId,
}

/// `--hsm URL --station DIR`: reach the HSM service as this station instead of opening the HSM
/// directory.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct RemoteArgs {
    /// The HSM service (`https://host:port`); without it the HSM directory is opened in process.
    #[arg(long, value_name = "URL", requires = "station")]
    pub(crate) hsm: Option<String>,
    /// The station directory (`trustfab station init`, certified by `hsm certify-station`).
    #[arg(long, value_name = "DIR")]
    pub(crate) station: Option<PathBuf>,
    /// How long calls retry while the service cannot be reached, in seconds.
    #[arg(long, default_value_t = 120)]
    pub(crate) retry_for: u64,
}

/// The HSM a `job` command talks to: the service when `--hsm` is given, else the directory.
pub(crate) fn client(at: &HsmDir, remote: &RemoteArgs) -> Result<Box<dyn HsmClient>> {
    match (&remote.hsm, &remote.station) {
        (Some(url), Some(dir)) => Ok(Box::new(connect(url, dir, &at.pass, remote.retry_for)?)),
        (Some(_), None) => bail!("--hsm needs --station DIR"),
        _ => Ok(Box::new(hsm::open(at)?)),
    }
}

/// Connects to the service at `url` as the station in `dir`.
pub(crate) fn connect(
    url: &str,
    dir: &Path,
    pass: &PassphraseArgs,
    retry_for: u64,
) -> Result<RemoteHsm> {
    let creds = credentials(dir, pass)?;
    RemoteHsm::connect(url, &creds, Duration::from_secs(retry_for))
        .with_context(|| format!("connecting to the HSM service at {url}"))
}

fn credentials(dir: &Path, pass: &PassphraseArgs) -> Result<StationCredentials> {
    let not_certified = "is the station certified? `trustfab hsm certify-station`";
    Ok(StationCredentials {
        ca_der: crate::operator::read_cert(&dir.join(SERVICE_CA)).context(not_certified)?,
        cert_der: crate::operator::read_cert(&dir.join(STATION_CERT)).context(not_certified)?,
        key: crate::operator::read_key(&dir.join(STATION_KEY), pass, "the station key")?
            .secret_pkcs8_der()?,
    })
}

/// `station init`.
pub(crate) fn run_station(cmd: StationCommand) -> Result<()> {
    match cmd {
        StationCommand::Init {
            dir,
            station_id,
            pass,
        } => {
            let path = init_station(&dir, &station_id, &pass)?;
            println!("station {station_id}: key made in {}", dir.display());
            println!("  request for the HSM operator: {}", path.display());
            println!(
                "next: trustfab hsm certify-station --request {} --product OEM/PRODUCT --out {}",
                path.display(),
                dir.display()
            );
            Ok(())
        }
    }
}

/// `station init`, also used by the demo: returns the request's path.
pub(crate) fn init_station(
    dir: &Path,
    station_id: &StationId,
    pass: &PassphraseArgs,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if dir.join(STATION_SETTINGS).exists() {
        bail!("{} holds a station already", dir.display());
    }
    let key = SoftKey::generate(Curve::P256)?;
    let req = StationRequest::new(station_id, &key)?;
    let pass = pass.get("the new station key", true)?;
    files::write_new(
        &dir.join(STATION_KEY),
        key.to_encrypted_pem(&pass, &trustfab_types::OsRng)?
            .as_bytes(),
        true,
    )?;
    let csr = dir.join(STATION_CSR);
    files::write_new(&csr, req.to_pem().as_bytes(), false)?;
    files::write_new(
        &dir.join(STATION_SETTINGS),
        toml::to_string(&StationSettings {
            format: STATION_FORMAT,
            station_id: station_id.clone(),
        })?
        .as_bytes(),
        false,
    )?;
    Ok(csr)
}

/// The station CA certificate of the HSM in `dir`, kept in `station-ca.pem` beside it (made,
/// with its key inside the token, the first time).
pub(crate) fn station_ca(hsm: &Hsm, dir: &Path) -> Result<Vec<u8>> {
    let path = dir.join(STATION_CA_FILE);
    let stored = if path.exists() {
        Some(pem::decode_one(
            &files::read_text(&path, PEM_MAX)?,
            "CERTIFICATE",
        )?)
    } else {
        None
    };
    let der = hsm.station_ca(stored.as_deref())?;
    if stored.as_deref() != Some(der.as_slice()) {
        files::write_atomic(&path, pem::cert_pem(&der).as_bytes(), false)?;
    }
    Ok(der)
}

#[derive(Args, Debug)]
pub(crate) struct CertifyArgs {
    #[command(flatten)]
    at: HsmDir,
    /// The station's request (`station.csr` of `trustfab station init`).
    #[arg(long)]
    request: PathBuf,
    /// A product the station may provision (`oem/product`; repeat for more).
    #[arg(long = "product", required = true)]
    products: Vec<ProductKey>,
    /// Most devices the station may have certificates issued for, in all.
    #[arg(long)]
    max_devices: Option<u64>,
    /// Most devices per UTC day (counted by the service from the ledger's records).
    #[arg(long)]
    max_per_day: Option<u64>,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = 365)]
    days: u32,
    /// The station directory to write `station.pem` and `service-ca.pem` into.
    #[arg(long)]
    out: PathBuf,
}

impl CertifyArgs {
    /// The demo's certification of a station for `products`.
    pub(crate) fn new(
        at: HsmDir,
        request: PathBuf,
        products: Vec<ProductKey>,
        max_devices: Option<u64>,
        out: PathBuf,
    ) -> Self {
        Self {
            at,
            request,
            products,
            max_devices,
            max_per_day: None,
            days: 365,
            out,
        }
    }
}

/// `hsm certify-station`, also used by the demo.
pub(crate) fn certify(a: &CertifyArgs) -> Result<()> {
    let hsm = hsm::open(&a.at)?;
    let ca = station_ca(&hsm, &a.at.dir)?;
    let req = StationRequest::from_pem(&files::read_text(&a.request, PEM_MAX)?)
        .with_context(|| format!("reading {}", a.request.display()))?;
    let grant = StationGrant {
        products: a.products.clone(),
        max_devices: a.max_devices,
        max_per_day: a.max_per_day,
    };
    let cert_path = a.out.join(STATION_CERT);
    if cert_path.exists() {
        bail!("{} exists; not overwriting it", cert_path.display());
    }
    let (cert, seq) = hsm.certify_station(&ca, &req, &grant, a.days)?;
    std::fs::create_dir_all(&a.out)?;
    files::write_atomic(
        &a.out.join(SERVICE_CA),
        pem::cert_pem(&ca).as_bytes(),
        false,
    )?;
    files::write_new(&cert_path, pem::cert_pem(&cert).as_bytes(), false)?;
    println!(
        "station {} certified (ledger record {seq}) for {}{}; certificate {}",
        req.station_id,
        a.products
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        a.max_devices
            .map(|m| format!(", at most {m} devices"))
            .unwrap_or_default(),
        cert_path.display()
    );
    Ok(())
}

/// What `hsm serve --config FILE` reads; flags override it.
#[derive(Serialize, Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct ServeFile {
    listen: Option<SocketAddr>,
    names: Option<Vec<String>>,
    cert_days: Option<u32>,
    drain_seconds: Option<u64>,
    max_connections: Option<usize>,
    pkcs11_sessions: Option<usize>,
    operator_ca: Option<PathBuf>,
    console_loopback: Option<SocketAddr>,
}

#[derive(Args, Debug)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    at: HsmDir,
    /// Where to listen (default 127.0.0.1:7443).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// A TOML file with the same settings (`listen`, `names`, `cert_days`, `drain_seconds`,
    /// `max_connections`, `pkcs11_sessions`, `operator_ca`, `console_loopback`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// A DNS name or IP address for the service certificate (repeat; default: the listen
    /// address and `localhost`).
    #[arg(long = "name")]
    names: Vec<String>,
    /// The center's operator CA certificate (PEM, `trustfab operator ca`): its operators may
    /// read `/metrics`. Without it no operator is admitted.
    #[arg(long, value_name = "FILE")]
    operator_ca: Option<PathBuf>,
    /// Also serve the console and `/metrics` over plain HTTP on this loopback address (e.g.
    /// 127.0.0.1:9443), without a certificate, to processes of this host only; the station API
    /// is not served there.
    #[arg(long, value_name = "ADDR")]
    console_loopback: Option<SocketAddr>,
}

/// `hsm serve`.
pub(crate) fn serve(a: &ServeArgs) -> Result<()> {
    let file: ServeFile = match &a.config {
        Some(p) => toml::from_str(&files::read_text(p, PEM_MAX)?)
            .with_context(|| format!("parsing {}", p.display()))?,
        None => ServeFile::default(),
    };
    let listen = a
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7443)));
    let mut opts = ServeOptions::new(listen);
    if let Some(n) = file.names {
        opts.names = n;
    }
    if !a.names.is_empty() {
        opts.names.clone_from(&a.names);
    }
    if let Some(d) = file.cert_days {
        opts.cert_days = d;
    }
    if let Some(s) = file.drain_seconds {
        opts.drain = Duration::from_secs(s);
    }
    if let Some(m) = file.max_connections {
        opts.max_connections = m;
    }
    if let Some(p) = a.operator_ca.as_ref().or(file.operator_ca.as_ref()) {
        opts.operator_ca = Some(crate::operator::read_operator_ca(p)?);
    }
    opts.console_loopback = a.console_loopback.or(file.console_loopback);
    if let Some(at) = opts.console_loopback {
        if !at.ip().is_loopback() {
            anyhow::bail!(trustfab_service::ServeError::NotLoopback(at));
        }
    }
    let hsm = Arc::new(hsm::open_sessions(
        &a.at,
        file.pkcs11_sessions.unwrap_or(8),
    )?);
    let ca = station_ca(&hsm, &a.at.dir)?;
    trustfab_service::serve(hsm, &ca, &opts)?;
    eprintln!("trustfab HSM service stopped");
    Ok(())
}

/// `hsm revoke-station`.
pub(crate) fn revoke(at: &HsmDir, id: &StationId, reason: &str) -> Result<()> {
    let hsm = hsm::open(at)?;
    let seq = hsm.revoke_station(id, reason)?;
    println!("station {id} revoked (ledger record {seq}); the service refuses its next request");
    Ok(())
}

/// `hsm stations`.
pub(crate) fn list(at: &HsmDir) -> Result<()> {
    let hsm = hsm::open(at)?;
    println!(
        "{:<24} {:>8} {:>10} {:>12} {:>10}  products",
        "station", "record", "issued", "left", "state"
    );
    for s in hsm.stations()? {
        println!(
            "{:<24} {:>8} {:>10} {:>12} {:>10}  {}",
            s.certified.station.to_string(),
            s.seq,
            s.issued,
            s.remaining.map_or_else(|| "-".into(), |r| r.to_string()),
            if s.revoked_seq.is_some() {
                "revoked"
            } else {
                "active"
            },
            s.certified
                .products
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    Ok(())
}
