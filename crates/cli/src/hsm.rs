//! `trustfab hsm`: the HSM at the programming center. A directory holds its settings
//! (`hsm.toml`), its ledger (`ledger.sqlite`), its installed identity (`identity.pem`) and, for
//! the embedded soft token, the sealed key store (`token`). With `--backend pkcs11` the keys live
//! in a PKCS#11 token instead (SoftHSM2 in tests, any PKCS#11 HSM in production).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use trustfab_hsm::{DeviceKey, Hsm};
use trustfab_ledger_sqlite::SqliteStore;
use trustfab_pki::{pem, HsmCertificates};
use trustfab_token::Token;
use trustfab_token_pkcs11::{Pkcs11Config, Pkcs11Token};
use trustfab_token_soft::{Argon2Cost, SoftToken};
use trustfab_types::{limits, DeviceUid, HsmId, Passphrase, ProductKey, SystemClock};

use crate::files;
use crate::secrets::PassphraseArgs;

const HSM_FORMAT: u32 = 1;
const SETTINGS: &str = "hsm.toml";
const TOKEN_FILE: &str = "token";
const LEDGER_FILE: &str = "ledger.sqlite";
const IDENTITY_FILE: &str = "identity.pem";
/// The largest package accepted from a file.
const PACKAGE_FILE_MAX: usize = trustfab_formats::package::PACKAGE_MAX;

#[derive(Subcommand, Debug)]
pub(crate) enum HsmCommand {
    /// Make the identity and key-transport keys inside a new HSM and write the request the
    /// vendor certifies (request.pem).
    Init(InitArgs),
    /// Install the certificates the vendor issued for this HSM (`vendor certify-hsm`).
    InstallIdentity {
        #[command(flatten)]
        at: HsmDir,
        /// The certificate bundle (identity, key transport).
        certs: PathBuf,
    },
    /// Print this HSM's id, fingerprint and identity certificates.
    Identity {
        #[command(flatten)]
        at: HsmDir,
    },
    /// Import a provisioning package (`oem wrap`): verify, check the target, unwrap inside.
    Import {
        #[command(flatten)]
        at: HsmDir,
        /// The package file.
        package: PathBuf,
    },
    /// List products with ordered / issued / remaining counts.
    Products {
        #[command(flatten)]
        at: HsmDir,
    },
    /// Issue one device certificate through the HSM (spends one unit of count).
    Issue(IssueArgs),
    /// Export the signed production report of a product (docs/report.md), streaming.
    Report {
        #[command(flatten)]
        at: HsmDir,
        /// The product, as `oem/product`.
        #[arg(long)]
        product: ProductKey,
        /// Where to write the report.
        #[arg(long)]
        out: PathBuf,
    },
    /// Append a checkpoint signed by the HSM identity over the ledger's head.
    Checkpoint {
        #[command(flatten)]
        at: HsmDir,
    },
    /// Serve the HSM to stations over HTTPS with mutual TLS (docs/service.md) until SIGTERM.
    Serve(crate::service::ServeArgs),
    /// Certify a station (`trustfab station init`) from the station CA inside the token: which
    /// products it may provision and how many devices in all.
    CertifyStation(crate::service::CertifyArgs),
    /// Revoke a station: the service refuses its next request.
    RevokeStation {
        #[command(flatten)]
        at: HsmDir,
        /// The station.
        #[arg(long)]
        station_id: trustfab_types::StationId,
        /// Why (recorded in the ledger).
        #[arg(long, default_value = "revoked by the HSM operator")]
        reason: String,
    },
    /// List the stations this HSM certified, with their state and ceiling.
    Stations {
        #[command(flatten)]
        at: HsmDir,
    },
}

/// Where the HSM lives and how to unlock it.
#[derive(Args, Debug, Clone)]
pub(crate) struct HsmDir {
    /// The HSM directory.
    #[arg(long, default_value = "hsm")]
    pub(crate) dir: PathBuf,
    #[command(flatten)]
    pub(crate) pass: PassphraseArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Backend {
    /// Keys in process, sealed in one file under the passphrase (Argon2id, AES-256-GCM).
    Soft,
    /// A PKCS#11 token; the passphrase is its user PIN.
    Pkcs11,
}

#[derive(Args, Debug)]
pub(crate) struct InitArgs {
    #[command(flatten)]
    at: HsmDir,
    /// This HSM's unique id (1-64 of [A-Za-z0-9._-]).
    #[arg(long)]
    hsm_id: HsmId,
    /// Where the keys live.
    #[arg(long, value_enum, default_value = "soft")]
    backend: Backend,
    /// PKCS#11 module (default: $TRUSTFAB_PKCS11_MODULE, else SoftHSM2's).
    #[arg(long)]
    pkcs11_module: Option<PathBuf>,
    /// PKCS#11 token label.
    #[arg(long, default_value = "trustfab")]
    token_label: String,
    /// A PostgreSQL ledger shared by many stations and HSM processes
    /// (`postgresql://user@host:5432/db`); default: `ledger.sqlite` in the HSM directory.
    #[arg(long)]
    ledger_url: Option<String>,
}

impl InitArgs {
    /// A soft-token HSM (the demo's).
    pub(crate) fn soft(at: HsmDir, hsm_id: HsmId) -> Self {
        Self {
            at,
            hsm_id,
            backend: Backend::Soft,
            pkcs11_module: None,
            token_label: "trustfab".into(),
            ledger_url: None,
        }
    }
}

#[derive(Args, Debug)]
pub(crate) struct IssueArgs {
    #[command(flatten)]
    at: HsmDir,
    /// The product, as `oem/product`.
    #[arg(long)]
    product: ProductKey,
    /// The device unique id, hexadecimal.
    #[arg(long)]
    uid: DeviceUid,
    /// The device public key (PEM).
    #[arg(long)]
    public_key: PathBuf,
    /// Where to write the certificate (PEM).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Settings {
    format: u32,
    hsm_id: HsmId,
    backend: Backend,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pkcs11_module: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ledger_url: Option<String>,
}

fn pkcs11_config(s: &Settings, pin: Passphrase) -> Result<Pkcs11Config> {
    pkcs11_config_sessions(s, pin, 2)
}

fn pkcs11_config_sessions(s: &Settings, pin: Passphrase, sessions: usize) -> Result<Pkcs11Config> {
    let module = match &s.pkcs11_module {
        Some(m) => m.clone(),
        None => trustfab_token_pkcs11::module_path()?,
    };
    Ok(Pkcs11Config {
        module,
        token_label: s.token_label.clone().unwrap_or_else(|| "trustfab".into()),
        pin,
        sessions,
    })
}

fn read_settings(dir: &Path) -> Result<Settings> {
    let path = dir.join(SETTINGS);
    let text = files::read_text(&path, 64 * 1024)
        .with_context(|| format!("{} holds no HSM (run `trustfab hsm init`)", dir.display()))?;
    let s: Settings =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if s.format != HSM_FORMAT {
        bail!(
            "{}: unknown format {}; this build reads format {HSM_FORMAT}",
            path.display(),
            s.format
        );
    }
    Ok(s)
}

/// The HSM's ledger: PostgreSQL when the settings name one, else the SQLite file.
fn open_ledger(dir: &Path, s: &Settings) -> Result<Arc<dyn trustfab_ledger::Store>> {
    Ok(match &s.ledger_url {
        Some(url) => Arc::new(
            trustfab_ledger_postgres::PgStore::connect(url)
                .context("connecting to the PostgreSQL ledger")?,
        ),
        None => Arc::new(
            SqliteStore::open(&dir.join(LEDGER_FILE))
                .with_context(|| format!("opening the ledger in {}", dir.display()))?,
        ),
    })
}

fn open_token_sessions(
    dir: &Path,
    s: &Settings,
    pass: Passphrase,
    sessions: usize,
) -> Result<Arc<dyn Token>> {
    Ok(match s.backend {
        Backend::Soft => Arc::new(
            SoftToken::open(&dir.join(TOKEN_FILE), &pass)
                .with_context(|| format!("opening the token in {}", dir.display()))?,
        ),
        Backend::Pkcs11 => Arc::new(Pkcs11Token::open(&pkcs11_config_sessions(
            s, pass, sessions,
        )?)?),
    })
}

/// Opens the HSM in `at.dir`: its token (unlocked with the passphrase), its ledger and, when
/// installed, its identity certificates.
pub(crate) fn open(at: &HsmDir) -> Result<Hsm> {
    open_sessions(at, 2)
}

/// Opens the HSM in `at.dir` for the service: a PKCS#11 token gets `sessions` sessions, so that
/// many stations' requests sign at once.
pub(crate) fn open_sessions(at: &HsmDir, sessions: usize) -> Result<Hsm> {
    let identity_path = at.dir.join(IDENTITY_FILE);
    let certs = if identity_path.exists() {
        Some(HsmCertificates::from_pem(&files::read_text(
            &identity_path,
            64 * 1024,
        )?)?)
    } else {
        None
    };
    open_inner(at, certs.as_ref(), sessions.max(1))
}

/// Opens the HSM in `at.dir` with `certs` as its identity (checked to certify the token's keys).
fn open_with(at: &HsmDir, certs: Option<&HsmCertificates>) -> Result<Hsm> {
    open_inner(at, certs, 2)
}

fn open_inner(at: &HsmDir, certs: Option<&HsmCertificates>, sessions: usize) -> Result<Hsm> {
    let s = read_settings(&at.dir)?;
    let token = open_token_sessions(&at.dir, &s, at.pass.get("the HSM token", false)?, sessions)?;
    let ledger = open_ledger(&at.dir, &s)?;
    Ok(Hsm::open(
        token,
        ledger,
        Arc::new(SystemClock),
        &s.hsm_id,
        certs,
    )?)
}

/// `hsm init`, also used by the demo: returns the path of the request it wrote.
pub(crate) fn init(a: &InitArgs) -> Result<PathBuf> {
    let dir = &a.at.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if dir.join(SETTINGS).exists() {
        bail!("{} holds an HSM already", dir.display());
    }
    let settings = Settings {
        format: HSM_FORMAT,
        hsm_id: a.hsm_id.clone(),
        backend: a.backend,
        pkcs11_module: a.pkcs11_module.clone(),
        token_label: (a.backend == Backend::Pkcs11).then(|| a.token_label.clone()),
        ledger_url: a.ledger_url.clone(),
    };
    let pass = a.at.pass.get("the HSM token", a.backend == Backend::Soft)?;
    let token: Box<dyn Token> = match a.backend {
        Backend::Soft => Box::new(SoftToken::create(
            &dir.join(TOKEN_FILE),
            &pass,
            Argon2Cost::default(),
        )?),
        Backend::Pkcs11 => Box::new(Pkcs11Token::open(&pkcs11_config(&settings, pass)?)?),
    };
    let req = Hsm::init(&*token, &a.hsm_id)?;
    files::write_new(
        &dir.join(SETTINGS),
        toml::to_string(&settings)?.as_bytes(),
        false,
    )?;
    let req_path = dir.join("request.pem");
    files::write_atomic(&req_path, req.to_pem().as_bytes(), false)?;
    Ok(req_path)
}

/// `hsm install-identity`, also used by the demo.
pub(crate) fn install_identity(at: &HsmDir, certs_path: &Path) -> Result<()> {
    let text = files::read_text(certs_path, 64 * 1024)?;
    let certs = HsmCertificates::from_pem(&text)
        .with_context(|| format!("reading {}", certs_path.display()))?;
    // Opening with the certificates checks they certify this token's keys.
    open_with(at, Some(&certs))?;
    files::write_atomic(
        &at.dir.join(IDENTITY_FILE),
        certs.to_pem().as_bytes(),
        false,
    )
}

pub(crate) fn run(cmd: HsmCommand) -> Result<()> {
    match cmd {
        HsmCommand::Init(a) => {
            let req = init(&a)?;
            println!(
                "HSM {} initialised ({:?} backend) in {}",
                a.hsm_id,
                a.backend,
                a.at.dir.display()
            );
            println!("  identity and key-transport keys made inside the token");
            println!("  request for the vendor: {}", req.display());
            println!(
                "next: trustfab vendor certify-hsm --request {} --out hsm-identity.pem",
                req.display()
            );
            Ok(())
        }
        HsmCommand::InstallIdentity { at, certs } => {
            install_identity(&at, &certs)?;
            let hsm = open(&at)?;
            println!(
                "identity installed; fingerprint {}",
                hsm.fingerprint().map(|f| f.to_hex()).unwrap_or_default()
            );
            Ok(())
        }
        HsmCommand::Identity { at } => {
            let s = read_settings(&at.dir)?;
            println!("HSM id       {}", s.hsm_id);
            println!("backend      {:?}", s.backend);
            let path = at.dir.join(IDENTITY_FILE);
            if path.exists() {
                let text = files::read_text(&path, 64 * 1024)?;
                let certs = HsmCertificates::from_pem(&text)?;
                println!("fingerprint  {}", hex::encode(certs.fingerprint()));
                print!("{text}");
            } else {
                println!("no identity installed yet (trustfab hsm install-identity)");
            }
            Ok(())
        }
        HsmCommand::Import { at, package } => {
            let hsm = open(&at)?;
            let bytes = files::read_limited(&package, PACKAGE_FILE_MAX)
                .with_context(|| format!("reading {}", package.display()))?;
            let r = hsm
                .import(&bytes)
                .with_context(|| format!("importing {}", package.display()))?;
            println!(
                "{} {} with {} certificates (ledger record {})",
                if r.created {
                    "created product"
                } else {
                    "topped up product"
                },
                r.product,
                r.count,
                r.seq
            );
            Ok(())
        }
        HsmCommand::Products { at } => {
            let hsm = open(&at)?;
            println!(
                "{:<40} {:>10} {:>10} {:>10}",
                "product", "ordered", "issued", "remaining"
            );
            for p in hsm.products()? {
                println!(
                    "{:<40} {:>10} {:>10} {:>10}",
                    p.product, p.ordered, p.issued, p.remaining
                );
            }
            Ok(())
        }
        HsmCommand::Report { at, product, out } => {
            let hsm = open(&at)?;
            if out.exists() {
                bail!("{} exists already; refusing to overwrite it", out.display());
            }
            let tmp = out.with_extension("partial");
            let file = std::fs::File::create(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            let totals = hsm.report(&product, std::io::BufWriter::new(file));
            let totals = match totals {
                Ok(t) => t,
                Err(e) => {
                    std::fs::remove_file(&tmp).ok();
                    return Err(e).context("writing the report");
                }
            };
            std::fs::rename(&tmp, &out)?;
            println!(
                "report for {product}: ordered {}, issued {}, remaining {}; signed by HSM {}; written to {}",
                totals.ordered,
                totals.issued,
                totals.remaining,
                hsm.hsm_id(),
                out.display()
            );
            Ok(())
        }
        HsmCommand::Serve(a) => crate::service::serve(&a),
        HsmCommand::CertifyStation(a) => crate::service::certify(&a),
        HsmCommand::RevokeStation {
            at,
            station_id,
            reason,
        } => crate::service::revoke(&at, &station_id, &reason),
        HsmCommand::Stations { at } => crate::service::list(&at),
        HsmCommand::Checkpoint { at } => {
            let hsm = open(&at)?;
            let r = hsm.checkpoint()?;
            println!("checkpoint at ledger record {}", r.seq);
            Ok(())
        }
        HsmCommand::Issue(a) => {
            let hsm = open(&a.at)?;
            let public_key = trustfab_pki::public_key_from_pem(&files::read_text(
                &a.public_key,
                limits::CERTIFICATE_BYTES,
            )?)
            .with_context(|| format!("reading {}", a.public_key.display()))?;
            let issued = hsm.issue_direct(
                &a.product,
                &[DeviceKey {
                    uid: a.uid.clone(),
                    public_key,
                }],
            )?;
            let Some(i) = issued.first() else {
                bail!("the HSM returned no certificate");
            };
            files::write_new(&a.out, pem::cert_pem(&i.cert).as_bytes(), false)?;
            println!(
                "{} certificate for {}, serial {}, written to {}",
                if i.reissued { "recorded" } else { "new" },
                i.uid,
                i.serial,
                a.out.display()
            );
            Ok(())
        }
    }
}

#[derive(Subcommand, Debug)]
pub(crate) enum LedgerCommand {
    /// Walk the whole chain and every checkpoint (under the HSM identity key) and check the
    /// counters and claims against it; names the first bad record.
    Verify {
        #[command(flatten)]
        at: HsmDir,
    },
}

pub(crate) fn run_ledger(cmd: LedgerCommand) -> Result<()> {
    match cmd {
        LedgerCommand::Verify { at } => {
            let hsm = open(&at)?;
            let v = hsm.verify_ledger().context("the ledger does not verify")?;
            println!(
                "ledger verified: {} records, {} signed checkpoints (last at record {}), {} counter events, {} claims",
                v.head.seq,
                v.checkpoints,
                v.last_checkpoint.map_or_else(|| "-".to_owned(), |s| s.to_string()),
                v.counter_events,
                v.claims
            );
            Ok(())
        }
    }
}
