//! `trustfab oem`: the OEM's premise, as commands. Its root CA (and optional device CA), the
//! device certificate template, test issuance, revocation and CRLs, chain validation, sealing an
//! order for one HSM and checking that HSM's report. The work is `trustfab_oem`'s; this module
//! parses arguments, reads and writes the files and prints.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use trustfab_formats::package::SerialRange;
use trustfab_oem::ca::TestIssue;
use trustfab_oem::{Firmware, Order};
use trustfab_pki::template::EXAMPLE_TEMPLATE;
use trustfab_pki::{
    pem, Curve, HsmCertificates, HsmIdentity, PublicKey, Reason, RenderInputs, Signer, SoftKey,
    Template,
};
use trustfab_types::{
    limits, Clock, DeviceUid, OemId, OsRng, Passphrase, ProductId, Rng as _, Serial, SystemClock,
    UnixTime,
};

use crate::ca::{CaDir, InitSpec, Kind, DEVICE_CA_CERT, DEVICE_CA_KEY, ROOT_CERT, ROOT_KEY};
use crate::files;
use crate::secrets::PassphraseArgs;

#[derive(Subcommand, Debug)]
pub(crate) enum OemCommand {
    /// Create the OEM identity: root CA, and with --device-ca an intermediate that signs devices.
    Init(InitArgs),
    /// Device certificate templates (docs/template.md).
    #[command(subcommand)]
    Template(TemplateCommand),
    /// Issue one device certificate from a template, to look at with `openssl x509 -text`.
    IssueTest(IssueTestArgs),
    /// Revoke a device certificate (recorded in ca.toml; publish it with `oem crl`).
    Revoke(RevokeArgs),
    /// Write a CRL of every revoked certificate, signed by the CA that issued them.
    Crl(CrlArgs),
    /// Validate a device certificate against this OEM's root (and CRL, if given).
    Verify(VerifyArgs),
    /// Wrap a provisioning package for ONE HSM: template, certificates, count and the
    /// device-signing key, encrypted to that HSM's key-transport key and signed by the root.
    Wrap(WrapArgs),
    /// Verify an HSM's production report against the packages you wrapped (your orders).
    VerifyReport {
        /// The report (`trustfab hsm report`).
        report: PathBuf,
        /// A package wrapped for this product (repeat for top-ups).
        #[arg(long = "order", required = true)]
        orders: Vec<PathBuf>,
        /// The pinned vendor root: the HSM's identity must chain to it.
        #[arg(long)]
        vendor_root: PathBuf,
    },
}

#[derive(Args, Debug)]
pub(crate) struct WrapArgs {
    /// The OEM CA directory.
    #[arg(long, default_value = "oem")]
    pub(crate) dir: PathBuf,
    /// The target HSM's certificates (from `vendor certify-hsm`, or `hsm identity`).
    #[arg(long)]
    pub(crate) hsm: PathBuf,
    /// The pinned vendor root: the HSM's certificates must chain to it.
    #[arg(long)]
    pub(crate) vendor_root: PathBuf,
    /// The device certificate template.
    #[arg(long)]
    pub(crate) template: PathBuf,
    /// The product id.
    #[arg(long)]
    pub(crate) product: ProductId,
    /// The production count: certificates the HSM may issue.
    #[arg(long)]
    pub(crate) count: u64,
    /// Serial numbers to assign, as FIRST-LAST (decimal); default: the template's scheme.
    #[arg(long)]
    pub(crate) serial_range: Option<String>,
    /// Days the package may be imported.
    #[arg(long, default_value_t = 30)]
    pub(crate) valid_days: u32,
    /// Where to write the package.
    #[arg(long)]
    pub(crate) out: PathBuf,
    #[command(flatten)]
    pub(crate) firmware: FirmwareArgs,
    #[command(flatten)]
    pub(crate) pass: PassphraseArgs,
}

/// The product's firmware, for secure MCUs: the boot key their fuses trust and the family key
/// their secret slot receives (wrapped for the HSM like the signing key).
#[derive(Args, Debug, Default)]
pub(crate) struct FirmwareArgs {
    /// The device family the product's images are mastered for.
    #[arg(long, requires = "boot_key")]
    pub(crate) family: Option<String>,
    /// The firmware signing public key (`fw keygen --kind sign`): its hash is programmed into
    /// each device's root-of-trust fuse.
    #[arg(long, requires = "family")]
    pub(crate) boot_key: Option<PathBuf>,
    /// The family encryption private key (`fw keygen --kind family`, encrypted PKCS#8; same
    /// passphrase): it goes to the HSM wrapped, and from there to each device wrapped for it.
    #[arg(long, requires = "family")]
    pub(crate) family_key: Option<PathBuf>,
}

/// The firmware section of a package, read from the files the command line names.
struct FirmwareFiles {
    family: String,
    boot_key_hash: [u8; 32],
    family_key: Option<SoftKey>,
}

impl FirmwareFiles {
    fn read(a: &FirmwareArgs, pass: &Passphrase) -> Result<Option<Self>> {
        let (Some(family), Some(boot_key)) = (&a.family, &a.boot_key) else {
            return Ok(None);
        };
        let boot_key =
            trustfab_pki::public_key_from_pem(&files::read_text(boot_key, limits::KEY_FILE_BYTES)?)
                .with_context(|| format!("reading boot key {}", boot_key.display()))?;
        if boot_key.curve() != Curve::P256 {
            bail!(
                "the boot key is not a P-256 key: MCUboot images here are signed with ECDSA P-256"
            );
        }
        let family_key = match &a.family_key {
            Some(path) => {
                let key = SoftKey::from_encrypted_pem(
                    &files::read_text(path, limits::KEY_FILE_BYTES)?,
                    pass,
                )
                .with_context(|| format!("opening family key {}", path.display()))?;
                if key.curve() != Curve::P256 {
                    bail!(
                        "the family key {} is not P-256 (MCUboot ENC_EC256)",
                        path.display()
                    );
                }
                Some(key)
            }
            None => None,
        };
        Ok(Some(Self {
            family: family.clone(),
            boot_key_hash: trustfab_firmware::key_hash(&boot_key),
            family_key,
        }))
    }

    fn section(&self) -> Firmware<'_> {
        Firmware {
            family: &self.family,
            boot_key_hash: self.boot_key_hash,
            family_key: self.family_key.as_ref(),
        }
    }
}

/// Reads a certificate file, PEM or DER.
fn read_cert(path: &Path) -> Result<Vec<u8>> {
    pem::cert_from_pem_or_der(&files::read_limited(path, limits::CERTIFICATE_BYTES)?)
        .with_context(|| format!("reading {}", path.display()))
}

/// `oem wrap`, also used by the demo; returns what it made, in one line.
pub(crate) fn wrap(a: &WrapArgs) -> Result<String> {
    let ca = CaDir::open(&a.dir, Kind::Oem)?;
    let oem_id = ca.oem_id()?.clone();
    let now = SystemClock.now();
    let vendor_root = read_cert(&a.vendor_root)?;
    let certs = HsmCertificates::from_pem(&files::read_text(&a.hsm, 64 * 1024)?)
        .with_context(|| format!("reading {}", a.hsm.display()))?;
    let target = HsmIdentity::validate(&certs, &vendor_root, now).context(
        "the HSM's certificates do not validate to the vendor root: refusing to wrap for it",
    )?;
    let template = files::read_text(&a.template, limits::TEMPLATE_BYTES)?;
    Template::from_toml(&template).with_context(|| format!("template {}", a.template.display()))?;
    let serial_range = match &a.serial_range {
        Some(r) => {
            let (f, l) = r.split_once('-').context("--serial-range is FIRST-LAST")?;
            Some(SerialRange {
                first: f.trim().parse().context("--serial-range FIRST")?,
                last: l.trim().parse().context("--serial-range LAST")?,
            })
        }
        None => None,
    };
    let pass = a.pass.get("the OEM CA keys", false)?;
    let root_key = ca.root_key(&pass)?;
    let (_, signing_key) = ca.signing(&pass)?;
    let firmware = FirmwareFiles::read(&a.firmware, &pass)?;
    let mut package_id = [0u8; 16];
    OsRng.fill(&mut package_id)?;
    let order = Order {
        package_id,
        oem_id,
        product_id: a.product.clone(),
        count: a.count,
        serial_range,
        not_before: UnixTime(now.0.saturating_sub(300)),
        not_after: UnixTime(now.0 + u64::from(a.valid_days.max(1)) * 86_400),
        template,
        root_cert: ca.root_der()?,
        device_ca_cert: ca.intermediates()?.into_iter().next(),
    };
    let section = firmware.as_ref().map(FirmwareFiles::section);
    let bytes = order.seal_for(&target, &root_key, &signing_key, section.as_ref())?;
    files::write_new(&a.out, &bytes, false)?;
    Ok(format!(
        "package {} for HSM {} ({}): product {}, count {}, {} bytes, written to {}",
        hex::encode(package_id),
        target.hsm_id,
        hex::encode(&target.fingerprint[..8]),
        a.product,
        a.count,
        bytes.len(),
        a.out.display()
    ))
}

#[derive(Args, Debug)]
pub(crate) struct InitArgs {
    /// Directory for the OEM CA (created if missing; must not hold a CA).
    #[arg(long, default_value = "oem")]
    dir: PathBuf,
    /// The OEM id bound to products inside the HSM ([A-Za-z0-9._-], at most 64).
    #[arg(long)]
    oem_id: OemId,
    /// Organisation name in the certificates (defaults to the OEM id).
    #[arg(long)]
    name: Option<String>,
    /// Also create a device CA under the root; it signs device certificates.
    #[arg(long)]
    device_ca: bool,
    /// Curve of the CA keys.
    #[arg(long, default_value = "p256")]
    curve: Curve,
    /// Years of validity of the root.
    #[arg(long, default_value_t = 25)]
    years: u32,
    #[command(flatten)]
    pass: PassphraseArgs,
}

#[derive(Subcommand, Debug)]
pub(crate) enum TemplateCommand {
    /// Write an example template to start from.
    New {
        /// Where to write it (stdout if absent).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check a template; explain every error with its line and field.
    Check {
        /// The template file.
        file: PathBuf,
    },
}

#[derive(Args, Debug)]
pub(crate) struct IssueTestArgs {
    /// The OEM CA directory.
    #[arg(long, default_value = "oem")]
    dir: PathBuf,
    /// The device certificate template.
    #[arg(long)]
    template: PathBuf,
    /// Product id for {product}.
    #[arg(long)]
    product: ProductId,
    /// Device unique id, hexadecimal, for {uid}.
    #[arg(long)]
    uid: DeviceUid,
    /// The device public key (PEM SubjectPublicKeyInfo). Without it a throwaway key pair is
    /// generated and its private half discarded.
    #[arg(long)]
    public_key: Option<PathBuf>,
    /// Serial number, hexadecimal (default: from the template's scheme).
    #[arg(long)]
    serial: Option<Serial>,
    /// Where to write the certificate (PEM).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    pass: PassphraseArgs,
}

#[derive(Args, Debug)]
pub(crate) struct RevokeArgs {
    /// The OEM CA directory.
    #[arg(long, default_value = "oem")]
    dir: PathBuf,
    /// The certificate to revoke (PEM or DER).
    #[arg(long, conflicts_with = "serial", required_unless_present = "serial")]
    cert: Option<PathBuf>,
    /// Or its serial number, hexadecimal.
    #[arg(long)]
    serial: Option<Serial>,
    /// Why.
    #[arg(long, default_value = "unspecified")]
    reason: Reason,
}

#[derive(Args, Debug)]
pub(crate) struct CrlArgs {
    /// The OEM CA directory.
    #[arg(long, default_value = "oem")]
    dir: PathBuf,
    /// Where to write the CRL (PEM).
    #[arg(long)]
    out: PathBuf,
    /// Days until nextUpdate.
    #[arg(long, default_value_t = 30)]
    days: u32,
    #[command(flatten)]
    pass: PassphraseArgs,
}

#[derive(Args, Debug)]
pub(crate) struct VerifyArgs {
    /// The OEM CA directory (its root is the only trust anchor).
    #[arg(long, default_value = "oem")]
    dir: PathBuf,
    /// The certificate to check (PEM or DER).
    cert: PathBuf,
    /// A CRL to check revocation against (PEM or DER).
    #[arg(long)]
    crl: Option<PathBuf>,
}

pub(crate) fn run(cmd: OemCommand) -> Result<()> {
    match cmd {
        OemCommand::Init(a) => init(&a),
        OemCommand::Template(TemplateCommand::New { out }) => match out {
            Some(path) => {
                files::write_new(&path, EXAMPLE_TEMPLATE.as_bytes(), false)?;
                println!("example template written to {}", path.display());
                Ok(())
            }
            None => {
                print!("{EXAMPLE_TEMPLATE}");
                Ok(())
            }
        },
        OemCommand::Template(TemplateCommand::Check { file }) => check_template(&file),
        OemCommand::IssueTest(a) => issue_test(&a),
        OemCommand::Revoke(a) => revoke(&a),
        OemCommand::Crl(a) => crl(&a),
        OemCommand::Verify(a) => verify(&a),
        OemCommand::VerifyReport {
            report,
            orders,
            vendor_root,
        } => verify_report(&report, &orders, &vendor_root),
        OemCommand::Wrap(a) => {
            println!("{}", wrap(&a)?);
            Ok(())
        }
    }
}

fn init(a: &InitArgs) -> Result<()> {
    let pass = a.pass.get("the OEM CA keys", true)?;
    let name = a.name.clone().unwrap_or_else(|| a.oem_id.to_string());
    let spec = InitSpec {
        kind: Kind::Oem,
        name: &name,
        oem_id: Some(a.oem_id.clone()),
        curve: a.curve,
        years: a.years,
        device_ca: a.device_ca,
    };
    CaDir::init(&a.dir, &spec, &pass, SystemClock.now())?;
    println!("OEM {} created ({})", a.oem_id, a.curve);
    println!(
        "  root certificate       {}",
        a.dir.join(ROOT_CERT).display()
    );
    println!(
        "  root key               {} (encrypted PKCS#8, mode 0600)",
        a.dir.join(ROOT_KEY).display()
    );
    if a.device_ca {
        println!(
            "  device CA certificate  {}",
            a.dir.join(DEVICE_CA_CERT).display()
        );
        println!(
            "  device CA key          {} (encrypted PKCS#8, mode 0600)",
            a.dir.join(DEVICE_CA_KEY).display()
        );
    }
    Ok(())
}

pub(crate) fn load_template(path: &Path) -> Result<Template> {
    let text = files::read_text(path, limits::TEMPLATE_BYTES)?;
    Template::from_toml(&text).with_context(|| format!("template {}", path.display()))
}

fn check_template(path: &Path) -> Result<()> {
    let t = load_template(path)?;
    // Render once with sample values of realistic size (a 9-byte secure-element serial).
    let oem = OemId::new("example-oem")?;
    let product = ProductId::new("example-product")?;
    let uid = DeviceUid::new(&[0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xee])?;
    let serial = Serial::from_u64(0x1234_5678_9abc_def0)?;
    let r = t
        .render(&RenderInputs {
            oem: &oem,
            product: &product,
            uid: &uid,
            serial: &serial,
        })
        .context("rendering with sample values")?;
    println!("{}: ok", path.display());
    println!("{t}");
    println!("sample subject (uid {uid}):");
    for (attr, v) in &r.subject {
        println!("  {attr:?} = {v}");
    }
    for d in &r.dns_names {
        println!("  SAN dNSName = {d}");
    }
    for u in &r.uris {
        println!("  SAN URI = {u}");
    }
    Ok(())
}

fn issue_test(a: &IssueTestArgs) -> Result<()> {
    let ca = CaDir::open(&a.dir, Kind::Oem)?;
    let template = load_template(&a.template)?;
    let public_key = match &a.public_key {
        Some(p) => {
            trustfab_pki::public_key_from_pem(&files::read_text(p, limits::CERTIFICATE_BYTES)?)
                .with_context(|| format!("reading public key {}", p.display()))?
        }
        None => {
            let k = SoftKey::generate(ca.curve())?;
            println!(
                "no --public-key: generated a throwaway key pair; its private key is discarded"
            );
            PublicKey::from_point(k.curve(), k.public_point())?
        }
    };
    let serial = match &a.serial {
        Some(s) => s.clone(),
        None => match template.serial() {
            trustfab_pki::template::SerialScheme::Random { .. } => {
                template.serial().random_serial(&OsRng)?
            }
            trustfab_pki::template::SerialScheme::Sequential { .. } => {
                template.serial().sequential_serial(0)?
            }
        },
    };
    let pass = a.pass.get("the OEM CA key", false)?;
    let der = ca.issue_test(
        &TestIssue {
            template: &template,
            product: &a.product,
            uid: &a.uid,
            serial: &serial,
            public_key: &public_key,
            now: SystemClock.now(),
        },
        &pass,
    )?;
    files::write_new(&a.out, pem::cert_pem(&der).as_bytes(), false)?;
    println!(
        "device certificate, serial {serial}, written to {}",
        a.out.display()
    );
    println!(
        "look at it with: openssl x509 -noout -text -in {}",
        a.out.display()
    );
    Ok(())
}

fn revoke(a: &RevokeArgs) -> Result<()> {
    let mut ca = CaDir::open(&a.dir, Kind::Oem)?;
    let serial = match (&a.cert, &a.serial) {
        (Some(path), _) => {
            let bytes = files::read_limited(path, limits::CERTIFICATE_BYTES)?;
            let der = pem::cert_from_pem_or_der(&bytes)?;
            let (_, x509) = x509_parser::parse_x509_certificate(&der)
                .map_err(|e| anyhow::anyhow!("{}: not a certificate: {e}", path.display()))?;
            Serial::from_be_bytes(x509.raw_serial())?
        }
        (None, Some(s)) => s.clone(),
        (None, None) => bail!("give --cert or --serial"),
    };
    if ca.revoke(&serial, a.reason, SystemClock.now())? {
        println!(
            "serial {serial} revoked ({}); publish with `trustfab oem crl`",
            a.reason
        );
    } else {
        println!("serial {serial} was already revoked");
    }
    Ok(())
}

fn crl(a: &CrlArgs) -> Result<()> {
    let mut ca = CaDir::open(&a.dir, Kind::Oem)?;
    let pass = a.pass.get("the OEM CA key", false)?;
    // The CRL number is recorded before the file is written: a failed write skips a number,
    // never reuses one.
    let crl = ca.issue_crl(&pass, SystemClock.now(), a.days)?;
    files::write_atomic(&a.out, pem::encode("X509 CRL", &crl.der).as_bytes(), false)?;
    println!(
        "CRL number {} with {} revoked certificate(s) written to {}",
        crl.number,
        crl.revoked,
        a.out.display()
    );
    Ok(())
}

pub(crate) fn read_crl(path: &Path) -> Result<Vec<u8>> {
    let bytes = files::read_limited(path, limits::CRL_BYTES)
        .with_context(|| format!("reading {}", path.display()))?;
    match std::str::from_utf8(&bytes) {
        Ok(t) if t.contains("-----BEGIN") => Ok(pem::decode_one(t, "X509 CRL")?),
        _ => Ok(bytes),
    }
}

fn verify(a: &VerifyArgs) -> Result<()> {
    let ca = CaDir::open(&a.dir, Kind::Oem)?;
    let der = read_cert(&a.cert)?;
    let crls = match &a.crl {
        Some(p) => vec![read_crl(p)?],
        None => Vec::new(),
    };
    ca.validate(&der, &crls, SystemClock.now())
        .with_context(|| format!("{}", a.cert.display()))?;
    println!(
        "{}: valid, chains to the root of OEM {}{}",
        a.cert.display(),
        ca.oem_id().map_or("?", OemId::as_str),
        if crls.is_empty() { "" } else { ", not revoked" }
    );
    Ok(())
}

fn verify_report(report: &Path, orders: &[PathBuf], vendor_root: &Path) -> Result<()> {
    let root = read_cert(vendor_root)?;
    let packages = orders
        .iter()
        .map(|o| {
            files::read_limited(o, trustfab_formats::package::PACKAGE_MAX)
                .with_context(|| format!("reading {}", o.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let file =
        std::fs::File::open(report).with_context(|| format!("opening {}", report.display()))?;
    let s = trustfab_oem::report::verify(
        std::io::BufReader::new(file),
        &packages,
        &root,
        SystemClock.now(),
    )
    .map_err(|e| match e {
        trustfab_oem::Error::Order { index, source } => {
            let path = orders.get(index).map_or(PathBuf::new(), PathBuf::clone);
            anyhow::Error::new(source).context(format!("order {}", path.display()))
        }
        e => anyhow::Error::new(e).context(format!("report {} is refused", report.display())),
    })?;
    println!("report {} verified", report.display());
    println!("  HSM            {}", s.hsm_id);
    println!("  product        {}", s.product);
    println!(
        "  ledger records {} walked, {} of this product",
        s.records, s.own_records
    );
    println!(
        "  packages       {} imported, all among the {} order(s)",
        s.packages,
        orders.len()
    );
    println!(
        "  certificates   {} issued and valid, no serial or device twice",
        s.certificates
    );
    println!(
        "  counts         ordered {} (orders total {}), issued {}, remaining {}, reserved by open jobs {}",
        s.totals.ordered, s.ordered_by_oem, s.totals.issued, s.totals.remaining, s.reserved
    );
    if s.by_station.keys().any(Option::is_some) {
        for (station, n) in &s.by_station {
            match station {
                Some(id) => println!("  by station     {id}: {n} certificates"),
                None => println!("  by station     (in process, no station): {n} certificates"),
            }
        }
    }
    Ok(())
}
