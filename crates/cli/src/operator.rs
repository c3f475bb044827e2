//! The center's operators of the HSM service: `trustfab operator ca` makes the center's
//! operator CA (its key encrypted under the passphrase, beside its certificate), `trustfab
//! operator certify` an operator's key and certificate from it, and `trustfab operator metrics`
//! reads the service's `/metrics` as that operator. `hsm serve --operator-ca` names the CA
//! (docs/service.md, "Operators and metrics").
//!
//! An operator directory holds `operator.key` (its P-256 key, encrypted PKCS#8), `operator.pem`
//! (its certificate) and `service-ca.pem` (the HSM's station CA, the anchor it checks the
//! service by).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use trustfab_pki::station::{certify_operator, operator_ca};
use trustfab_pki::{pem, Curve, Issuer, PublicKey, Signer as _, SoftKey};
use trustfab_types::{Clock as _, StationId, SystemClock};

use crate::files;
use crate::secrets::PassphraseArgs;

const CA_KEY: &str = "operator-ca.key";
const CA_CERT: &str = "operator-ca.pem";
const OPERATOR_KEY: &str = "operator.key";
const OPERATOR_CERT: &str = "operator.pem";
const SERVICE_CA: &str = "service-ca.pem";
const PEM_MAX: usize = 64 * 1024;

#[derive(Subcommand, Debug)]
pub(crate) enum OperatorCommand {
    /// Make the center's operator CA in DIR (`operator-ca.pem`, its key encrypted).
    Ca {
        /// Where the CA goes.
        #[arg(long)]
        dir: PathBuf,
        /// The center's id (1-64 of [A-Za-z0-9.-]), in the CA's subject.
        #[arg(long)]
        center_id: StationId,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        #[command(flatten)]
        pass: PassphraseArgs,
    },
    /// Make an operator's key and certificate from the operator CA in --ca.
    Certify {
        /// The operator CA's directory.
        #[arg(long)]
        ca: PathBuf,
        /// The operator's name (1-64 of [A-Za-z0-9.-]).
        #[arg(long)]
        name: StationId,
        /// The HSM's station CA certificate (`station-ca.pem` beside the HSM): what the
        /// operator checks the service by.
        #[arg(long, value_name = "FILE")]
        service_ca: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// The operator directory to make.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        pass: PassphraseArgs,
    },
    /// Print the service's metrics (Prometheus text) as the operator in --operator.
    Metrics {
        /// The HSM service (`https://host:port`).
        #[arg(long, value_name = "URL")]
        hsm: String,
        /// The operator directory.
        #[arg(long, value_name = "DIR")]
        operator: PathBuf,
        #[command(flatten)]
        pass: PassphraseArgs,
    },
}

pub(crate) fn run(cmd: OperatorCommand) -> Result<()> {
    match cmd {
        OperatorCommand::Ca {
            dir,
            center_id,
            days,
            pass,
        } => {
            make_ca(&dir, &center_id, days, &pass)?;
            println!(
                "operator CA of center {center_id}: {}",
                dir.join(CA_CERT).display()
            );
            println!(
                "next: trustfab hsm serve --operator-ca {} …",
                dir.join(CA_CERT).display()
            );
            Ok(())
        }
        OperatorCommand::Certify {
            ca,
            name,
            service_ca,
            days,
            out,
            pass,
        } => {
            certify(&ca, &name, &service_ca, days, &out, &pass)?;
            println!("operator {name}: {}", out.join(OPERATOR_CERT).display());
            Ok(())
        }
        OperatorCommand::Metrics {
            hsm,
            operator,
            pass,
        } => {
            print!("{}", metrics(&hsm, &operator, &pass)?);
            Ok(())
        }
    }
}

/// A certificate (DER) from the PEM file at `path`.
pub(crate) fn read_cert(path: &Path) -> Result<Vec<u8>> {
    let text =
        files::read_text(path, PEM_MAX).with_context(|| format!("reading {}", path.display()))?;
    pem::decode_one(&text, "CERTIFICATE").with_context(|| format!("reading {}", path.display()))
}

/// A P-256 key from the encrypted PKCS#8 PEM file at `path` (`what` names it at the prompt).
pub(crate) fn read_key(path: &Path, pass: &PassphraseArgs, what: &str) -> Result<SoftKey> {
    let text =
        files::read_text(path, PEM_MAX).with_context(|| format!("reading {}", path.display()))?;
    SoftKey::from_encrypted_pem(&text, &pass.get(what, false)?)
        .with_context(|| format!("opening {}", path.display()))
}

/// `operator ca`.
pub(crate) fn make_ca(
    dir: &Path,
    center: &StationId,
    days: u32,
    pass: &PassphraseArgs,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if dir.join(CA_CERT).exists() {
        bail!("{} holds an operator CA already", dir.display());
    }
    let key = SoftKey::generate(Curve::P256)?;
    let cert = operator_ca(
        center,
        &trustfab_oem::ca::random_serial()?,
        SystemClock.now(),
        days,
        &key,
    )?;
    let pass = pass.get("the new operator CA key", true)?;
    files::write_new(
        &dir.join(CA_KEY),
        key.to_encrypted_pem(&pass, &trustfab_types::OsRng)?
            .as_bytes(),
        true,
    )?;
    files::write_new(&dir.join(CA_CERT), pem::cert_pem(&cert).as_bytes(), false)?;
    Ok(())
}

/// `operator certify`.
pub(crate) fn certify(
    ca_dir: &Path,
    name: &StationId,
    service_ca: &Path,
    days: u32,
    out: &Path,
    pass: &PassphraseArgs,
) -> Result<()> {
    let ca_cert = read_cert(&ca_dir.join(CA_CERT))?;
    let ca_key = read_key(&ca_dir.join(CA_KEY), pass, "the operator CA key")?;
    let service_ca_der = read_cert(service_ca)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    if out.join(OPERATOR_CERT).exists() {
        bail!("{} holds an operator already", out.display());
    }
    let key = SoftKey::generate(Curve::P256)?;
    let cert = certify_operator(
        name,
        &PublicKey::from_point(Curve::P256, key.public_point())?,
        &trustfab_oem::ca::random_serial()?,
        SystemClock.now(),
        days,
        &Issuer::new(&ca_cert, &ca_key)?,
    )?;
    files::write_new(
        &out.join(OPERATOR_KEY),
        key.to_encrypted_pem(
            &pass.get("the operator key", false)?,
            &trustfab_types::OsRng,
        )?
        .as_bytes(),
        true,
    )?;
    files::write_new(
        &out.join(OPERATOR_CERT),
        pem::cert_pem(&cert).as_bytes(),
        false,
    )?;
    files::write_new(
        &out.join(SERVICE_CA),
        pem::cert_pem(&service_ca_der).as_bytes(),
        false,
    )?;
    Ok(())
}

/// The operator CA certificate (DER) in a PEM file, for `hsm serve --operator-ca`.
pub(crate) fn read_operator_ca(path: &Path) -> Result<Vec<u8>> {
    read_cert(path)
}

/// `operator metrics`: one scrape.
pub(crate) fn metrics(url: &str, dir: &Path, pass: &PassphraseArgs) -> Result<String> {
    let creds = trustfab_service::StationCredentials {
        ca_der: read_cert(&dir.join(SERVICE_CA))?,
        cert_der: read_cert(&dir.join(OPERATOR_CERT))?,
        key: read_key(&dir.join(OPERATOR_KEY), pass, "the operator key")?.secret_pkcs8_der()?,
    };
    trustfab_service::client::scrape_metrics(url, &creds, Duration::from_secs(30))
        .map_err(|e| anyhow::anyhow!("reading {url}/metrics: {e}"))
}
