//! `trustfab vendor`: the maker of the provisioning system. Its root CA certifies genuine HSMs,
//! so that an OEM wraps its secrets only for an HSM this root vouches for.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use trustfab_pki::{Curve, HsmRequest};
use trustfab_types::{Clock, SystemClock};

use crate::ca::{CaDir, InitSpec, Kind, ROOT_CERT, ROOT_KEY};
use crate::files;
use crate::secrets::PassphraseArgs;

#[derive(Subcommand, Debug)]
pub(crate) enum VendorCommand {
    /// Create the vendor root CA in a directory (root.pem, root.key encrypted, ca.toml).
    Init(InitArgs),
    /// Certify an HSM from its request (`hsm init`): identity and key-transport certificates.
    CertifyHsm(CertifyArgs),
}

#[derive(Args, Debug)]
pub(crate) struct CertifyArgs {
    /// The vendor CA directory.
    #[arg(long, default_value = "vendor")]
    dir: PathBuf,
    /// The HSM's request (request.pem from `trustfab hsm init`).
    #[arg(long)]
    request: PathBuf,
    /// Where to write the certificate bundle (identity, key transport).
    #[arg(long)]
    out: PathBuf,
    /// Days of validity.
    #[arg(long, default_value_t = 3650)]
    days: u32,
    #[command(flatten)]
    pass: PassphraseArgs,
}

impl CertifyArgs {
    /// The demo's arguments.
    pub(crate) fn new(dir: &Path, request: &Path, out: &Path, pass: PassphraseArgs) -> Self {
        Self {
            dir: dir.to_owned(),
            request: request.to_owned(),
            out: out.to_owned(),
            days: 3650,
            pass,
        }
    }
}

/// `vendor certify-hsm`, also used by the demo. Returns the HSM id certified.
pub(crate) fn certify_hsm(a: &CertifyArgs) -> Result<String> {
    let ca = CaDir::open(&a.dir, Kind::Vendor)?;
    let text = files::read_text(&a.request, 64 * 1024)?;
    let req =
        HsmRequest::from_pem(&text).with_context(|| format!("checking {}", a.request.display()))?;
    let pass = a.pass.get("the vendor root key", false)?;
    let (cert, key) = ca.signing(&pass)?;
    let issuer = ca.issuer(&cert, &key)?;
    let (s1, s2) = (crate::ca::random_serial()?, crate::ca::random_serial()?);
    let certs = trustfab_pki::certify_hsm(&req, &issuer, (&s1, &s2), SystemClock.now(), a.days)?;
    files::write_new(&a.out, certs.to_pem().as_bytes(), false)?;
    Ok(req.hsm_id)
}

#[derive(Args, Debug)]
pub(crate) struct InitArgs {
    /// Directory for the CA (created if missing; must not hold a CA).
    #[arg(long, default_value = "vendor")]
    dir: PathBuf,
    /// Organisation name in the certificate.
    #[arg(long, default_value = "Trustfab")]
    name: String,
    /// Curve of the root key.
    #[arg(long, default_value = "p256")]
    curve: Curve,
    /// Years of validity.
    #[arg(long, default_value_t = 25)]
    years: u32,
    #[command(flatten)]
    pass: PassphraseArgs,
}

pub(crate) fn run(cmd: VendorCommand) -> Result<()> {
    match cmd {
        VendorCommand::CertifyHsm(a) => {
            let id = certify_hsm(&a)?;
            println!(
                "HSM {id} certified; identity and key-transport certificates in {}",
                a.out.display()
            );
            println!("next: trustfab hsm install-identity {}", a.out.display());
            Ok(())
        }
        VendorCommand::Init(a) => {
            let pass = a.pass.get("the vendor root key", true)?;
            let spec = InitSpec {
                kind: Kind::Vendor,
                name: &a.name,
                oem_id: None,
                curve: a.curve,
                years: a.years,
                device_ca: false,
            };
            CaDir::init(&a.dir, &spec, &pass, SystemClock.now())?;
            println!("vendor root CA created");
            println!("  certificate  {}", a.dir.join(ROOT_CERT).display());
            println!(
                "  key          {} (encrypted PKCS#8, mode 0600)",
                a.dir.join(ROOT_KEY).display()
            );
            Ok(())
        }
    }
}
