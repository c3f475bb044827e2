//! `trustfab demo`: the chain of trust end to end on the embedded defaults, in one directory,
//! saying at each step what it made and where. It grows as the system does; the steps that
//! later parts of the system add are named at the end.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use trustfab_hsm::DeviceKey;
use trustfab_pki::template::EXAMPLE_TEMPLATE;
use trustfab_pki::{pem, Curve, Policy, PublicKey, Purpose, Reason, Signer, SoftKey};
use trustfab_types::{Clock, DeviceUid, OemId, OsRng, Passphrase, ProductId, Rng, SystemClock};

use crate::ca::{CaDir, InitSpec, Kind};
use crate::files;
use crate::hsm::{self, HsmDir};
use crate::secrets::PassphraseArgs;
use crate::vendor;

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

    let pass_args = PassphraseArgs {
        passphrase_file: Some(dir.join("passphrase")),
    };
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

    let hsm_at = HsmDir {
        dir: dir.join("hsm"),
        pass: pass_args.clone(),
    };
    let request = hsm::init(&hsm::InitArgs::soft(hsm_at.clone(), "hsm-demo-01"))?;
    let hsm_certs = dir.join("hsm-identity.pem");
    vendor::certify_hsm(&vendor::CertifyArgs::new(
        &vendor_dir,
        &request,
        &hsm_certs,
        pass_args.clone(),
    ))?;
    hsm::install_identity(&hsm_at, &hsm_certs)?;
    println!(
        "2. HSM hsm-demo-01: keys made inside its token, request {}, certified by the vendor: {}",
        request.display(),
        hsm_certs.display()
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
        "3. OEM {oem_id}: root CA {0}/root.pem, device CA {0}/device-ca.pem",
        oem_dir.display()
    );

    let template_path = dir.join("template.toml");
    files::write_new(&template_path, EXAMPLE_TEMPLATE.as_bytes(), false)?;
    println!(
        "4. device certificate template (checked): {}",
        template_path.display()
    );

    let product = ProductId::new("thermostat-v2")?;
    let package = dir.join("thermostat-v2.package");
    crate::oem::wrap(&crate::oem::WrapArgs {
        dir: oem_dir.clone(),
        hsm: hsm_certs,
        vendor_root: vendor_dir.join("root.pem"),
        template: template_path,
        product,
        count: u64::from(a.devices),
        serial_range: None,
        valid_days: 30,
        out: package.clone(),
        pass: pass_args,
    })?;
    println!(
        "5. OEM wrapped the device CA key, template and count {} for that HSM only: {}",
        a.devices,
        package.display()
    );

    let hsm = hsm::open(&hsm_at)?;
    let imported = hsm.import(&files::read_limited(
        &package,
        trustfab_package::PACKAGE_MAX,
    )?)?;
    println!(
        "6. HSM imported it: product {} with count {} (signing key unwrapped inside the token; ledger record {})",
        imported.product, imported.count, imported.seq
    );
    match hsm.import(&files::read_limited(
        &package,
        trustfab_package::PACKAGE_MAX,
    )?) {
        Err(e) => println!("   importing it again is refused: {e}"),
        Ok(_) => anyhow::bail!("a second import of the same package was accepted"),
    }

    let devices_dir = dir.join("devices");
    std::fs::create_dir_all(&devices_dir)?;
    let started = Instant::now();
    let mut requests = Vec::new();
    for i in 0..a.devices {
        // Each device makes its key pair inside; only the public key leaves it.
        let device_key = SoftKey::generate(Curve::P256)?;
        let mut uid = [0u8; 9];
        uid[0] = 0x01;
        uid[5..].copy_from_slice(&i.to_be_bytes());
        requests.push(DeviceKey {
            uid: DeviceUid::new(&uid)?,
            public_key: PublicKey::from_point(Curve::P256, device_key.public_point())?,
        });
    }
    let mut issued = Vec::new();
    for batch in requests.chunks(256) {
        issued.extend(hsm.issue(&imported.product, batch)?);
    }
    let elapsed = started.elapsed();
    for i in &issued {
        files::write_new(
            &devices_dir.join(format!("{}.pem", i.uid)),
            pem::cert_pem(&i.cert).as_bytes(),
            false,
        )?;
    }
    println!(
        "7. the HSM issued {} device certificates from the template in {:.1} ms (count spent and recorded before signing): {}/",
        issued.len(),
        elapsed.as_secs_f64() * 1e3,
        devices_dir.display()
    );
    let extra = DeviceKey {
        uid: DeviceUid::new(&[0xff; 9])?,
        public_key: requests
            .first()
            .map(|r| r.public_key.clone())
            .context("no devices")?,
    };
    match hsm.issue(&imported.product, &[extra]) {
        Err(e) => println!("   one more is refused: {e}"),
        Ok(_) => anyhow::bail!("the HSM issued past the count"),
    }

    let root = oem.root_der()?;
    let intermediates = oem.intermediates()?;
    let policy = Policy {
        root: &root,
        intermediates: &intermediates,
        crls: &[],
        now: SystemClock.now(),
        purpose: Purpose::ClientAuth,
    };
    for i in &issued {
        trustfab_pki::validate(&i.cert, &policy).with_context(|| format!("device {}", i.uid))?;
    }
    println!("8. every certificate validates to the OEM root (rustls-webpki)");
    if let Some(i) = issued.first() {
        println!(
            "   check one with openssl: openssl verify -CAfile {0}/root.pem -untrusted {0}/device-ca.pem {1}/{2}.pem",
            oem_dir.display(),
            devices_dir.display(),
            i.uid
        );
    }

    if let Some(last) = issued.last() {
        let (ca_cert, ca_key) = oem.signing(&pass)?;
        let issuer = oem.issuer(&ca_cert, &ca_key)?;
        oem.revoke(&last.serial, Reason::KeyCompromise, SystemClock.now())?;
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
        let refused = trustfab_pki::validate(&last.cert, &with_crl);
        println!(
            "9. device {} revoked (key-compromise); CRL {}; validation now says: {}",
            last.uid,
            crl_path.display(),
            match refused {
                Err(e) => e.to_string(),
                Ok(()) => "accepted (unexpected)".into(),
            }
        );
    }
    for p in hsm.products()? {
        println!(
            "10. HSM products: {} ordered {}, issued {}, remaining {}",
            p.product, p.ordered, p.issued, p.remaining
        );
    }

    let v = hsm.verify_ledger()?;
    println!(
        "11. ledger verified under the HSM identity: {} records, hash chain, counters and claims",
        v.head.seq
    );
    let report_path = dir.join("thermostat-v2.report");
    let totals = hsm.report(
        "acme/thermostat-v2",
        std::io::BufWriter::new(std::fs::File::create(&report_path)?),
    )?;
    let order = trustfab_package::open(&files::read_limited(
        &package,
        trustfab_package::PACKAGE_MAX,
    )?)?;
    let vendor_root = pem::decode_one(
        &files::read_text(&vendor_dir.join("root.pem"), 64 * 1024)?,
        "CERTIFICATE",
    )?;
    let summary = trustfab_hsm::report::verify_report(
        std::io::BufReader::new(std::fs::File::open(&report_path)?),
        &vendor_root,
        &[order.into_contents()],
        SystemClock.now(),
    )?;
    println!(
        "12. production report signed by the HSM ({} issued of {}): {}; the OEM verified it: {} certificates valid, none twice, within the order",
        totals.issued,
        totals.ordered,
        report_path.display(),
        summary.certificates
    );

    println!("\nnot yet part of the demo (later steps of the system):");
    println!("  a provisioning job on simulated devices, mutual authentication, mastered firmware");
    Ok(())
}
