//! `trustfab vendor`: the maker of the provisioning system. Its root CA certifies genuine HSMs,
//! so that an OEM wraps its secrets only for an HSM this root vouches for.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use trustfab_pki::Curve;

use crate::ca::{CaDir, InitSpec, Kind, ROOT_CERT, ROOT_KEY};
use crate::secrets::PassphraseArgs;

#[derive(Subcommand, Debug)]
pub(crate) enum VendorCommand {
    /// Create the vendor root CA in a directory (root.pem, root.key encrypted, ca.toml).
    Init(InitArgs),
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
            CaDir::init(&a.dir, &spec, &pass)?;
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
