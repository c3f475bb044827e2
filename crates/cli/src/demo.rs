//! `trustfab demo`: the chain of trust end to end on the embedded defaults, in one directory,
//! saying at each step what it made and where. It grows as the system does; the steps that
//! later parts of the system add are named at the end.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use trustfab_pki::template::EXAMPLE_TEMPLATE;
use trustfab_pki::{
    pem, Curve, DeviceRequest, Policy, PublicKey, Purpose, Reason, RenderInputs, Signer, SoftKey,
    Template,
};
use trustfab_types::{Clock, DeviceUid, OemId, OsRng, Passphrase, ProductId, Rng, SystemClock};

use crate::ca::{CaDir, InitSpec, Kind};
use crate::files;

#[derive(Args, Debug)]
pub(crate) struct DemoArgs {
    /// Working directory (default: a new temporary directory, kept afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// How many device certificates to issue.
    #[arg(long, default_value_t = 10)]
    devices: u32,
}

pub(crate) fn run(a: &DemoArgs) -> Result<()> {
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => tempfile::Builder::new()
            .prefix("trustfab-demo-")
            .tempdir()?
            .keep(),
    };
    std::fs::create_dir_all(&dir)?;
    println!("trustfab demo in {}\n", dir.display());

    // A random passphrase for the demo's key files, kept beside them (mode 0600).
    let mut raw = [0u8; 18];
    OsRng.fill(&mut raw)?;
    let pass_text = hex::encode(raw);
    files::write_new(&dir.join("passphrase"), pass_text.as_bytes(), true)?;
    let pass = Passphrase::new(pass_text).map_err(anyhow::Error::msg)?;
    println!(
        "0. passphrase for every key file: {}",
        dir.join("passphrase").display()
    );

    let vendor_dir = dir.join("vendor");
    CaDir::init(
        &vendor_dir,
        &InitSpec {
            kind: Kind::Vendor,
            name: "Trustfab",
            oem_id: None,
            curve: Curve::P256,
            years: 25,
            device_ca: false,
        },
        &pass,
    )?;
    println!(
        "1. vendor root CA (certifies genuine HSMs): {}/root.pem",
        vendor_dir.display()
    );

    let oem_dir = dir.join("oem");
    let oem_id = OemId::new("acme")?;
    let mut oem = CaDir::init(
        &oem_dir,
        &InitSpec {
            kind: Kind::Oem,
            name: "Acme IoT",
            oem_id: Some(oem_id.clone()),
            curve: Curve::P256,
            years: 25,
            device_ca: true,
        },
        &pass,
    )?;
    println!(
        "2. OEM {oem_id}: root CA {0}/root.pem, device CA {0}/device-ca.pem",
        oem_dir.display()
    );

    let template_path = dir.join("template.toml");
    files::write_new(&template_path, EXAMPLE_TEMPLATE.as_bytes(), false)?;
    let template = Template::from_toml(EXAMPLE_TEMPLATE)?;
    println!(
        "3. device certificate template (checked): {}",
        template_path.display()
    );

    let product = ProductId::new("thermostat-v2")?;
    let (ca_cert, ca_key) = oem.signing(&pass)?;
    let root = oem.root_der()?;
    let intermediates = oem.intermediates()?;
    let devices_dir = dir.join("devices");
    std::fs::create_dir_all(&devices_dir)?;
    let issuer = oem.issuer(&ca_cert, &ca_key)?;
    let started = Instant::now();
    let mut issued = Vec::new();
    for i in 0..a.devices {
        // Each device makes its key pair inside; only the public key leaves it.
        let device_key = SoftKey::generate(Curve::P256)?;
        let public = PublicKey::from_point(Curve::P256, device_key.public_point())?;
        let mut uid = [0u8; 9];
        uid[0] = 0x01;
        uid[5..].copy_from_slice(&i.to_be_bytes());
        let uid = DeviceUid::new(&uid)?;
        let serial = template.serial.random_serial(&OsRng)?;
        let req = DeviceRequest {
            inputs: RenderInputs {
                oem: &oem_id,
                product: &product,
                uid: &uid,
                serial: &serial,
            },
            public_key: &public,
            now: SystemClock.now(),
        };
        let der = trustfab_pki::issue_device(&template, &req, &issuer)?;
        let path = devices_dir.join(format!("{uid}.pem"));
        files::write_new(&path, pem::cert_pem(&der).as_bytes(), false)?;
        issued.push((uid, serial, der, path));
    }
    let elapsed = started.elapsed();
    println!(
        "4. {} device certificates issued from the template in {:.1} ms: {}/",
        issued.len(),
        elapsed.as_secs_f64() * 1e3,
        devices_dir.display()
    );

    let policy = Policy {
        root: &root,
        intermediates: &intermediates,
        crls: &[],
        now: SystemClock.now(),
        purpose: Purpose::ClientAuth,
    };
    for (uid, _, der, _) in &issued {
        trustfab_pki::validate(der, &policy).with_context(|| format!("device {uid}"))?;
    }
    println!("5. every certificate validates to the OEM root (rustls-webpki)");
    if let Some((_, _, _, path)) = issued.first() {
        println!(
            "   check one with openssl: openssl verify -CAfile {}/root.pem -untrusted {}/device-ca.pem {}",
            oem_dir.display(),
            oem_dir.display(),
            path.display()
        );
    }

    if let Some((uid, serial, der, _)) = issued.last() {
        oem.revoke(serial, Reason::KeyCompromise, SystemClock.now())?;
        let now = SystemClock.now();
        let crl = trustfab_pki::build_crl(
            &issuer,
            &oem.revoked()?,
            1,
            now,
            trustfab_types::UnixTime(now.0 + 30 * 86_400),
        )?;
        let crl_path = dir.join("crl.pem");
        files::write_new(&crl_path, pem::encode("X509 CRL", &crl).as_bytes(), false)?;
        oem.state.crl_number = 1;
        oem.save()?;
        let crls = [crl];
        let with_crl = Policy {
            crls: &crls,
            ..policy
        };
        let refused = trustfab_pki::validate(der, &with_crl);
        println!(
            "6. device {uid} revoked (key-compromise); CRL {}; validation now says: {}",
            crl_path.display(),
            match refused {
                Err(e) => e.to_string(),
                Ok(()) => "accepted (unexpected)".into(),
            }
        );
    }

    println!("\nnot yet part of the demo (later steps of the system):");
    println!("  HSM init + vendor certification, OEM wrap, HSM import, job of simulated devices,");
    println!("  ledger and signed production report, mutual authentication, mastered firmware");
    Ok(())
}
