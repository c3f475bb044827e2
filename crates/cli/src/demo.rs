//! `trustfab demo`: the chain of trust end to end on the embedded defaults, in one directory,
//! saying at each step what it made and where. It grows as the system does; the steps that
//! later parts of the system add are named at the end.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use std::sync::Arc;

use trustfab_device::{Device as _, DeviceKind, SiliconVendor};
use trustfab_hsm::{DeviceKey, HsmClient as _};
use trustfab_pki::template::EXAMPLE_TEMPLATE;
use trustfab_pki::{pem, Curve, PublicKey, Reason, Signer, SoftKey};
use trustfab_station::{Faults, FileSupply, JobSpec, LockPolicy, PartKind, RunOptions, SlotMap};
use trustfab_types::{
    Clock, DeviceUid, HsmId, OemId, OsRng, Passphrase, ProductId, ProductKey, Rng, SystemClock,
};

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
    /// How many simulated devices the provisioning job makes.
    #[arg(long, default_value_t = 10_000)]
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
        SystemClock.now(),
    )?;
    println!(
        "1. vendor root CA (certifies genuine HSMs): {}/root.pem",
        vendor_dir.display()
    );

    let hsm_at = HsmDir {
        dir: dir.join("hsm"),
        pass: pass_args.clone(),
    };
    let request = hsm::init(&hsm::InitArgs::soft(
        hsm_at.clone(),
        HsmId::new("hsm-demo-01")?,
    ))?;
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
        SystemClock.now(),
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
        dir: oem_dir,
        hsm: hsm_certs.clone(),
        vendor_root: vendor_dir.join("root.pem"),
        template: template_path.clone(),
        product,
        count: u64::from(a.devices) + 2,
        serial_range: None,
        valid_days: 30,
        out: package.clone(),
        firmware: crate::oem::FirmwareArgs::default(),
        pass: pass_args.clone(),
    })?;
    println!(
        "5. OEM wrapped the device CA key, template and count {} for that HSM only: {}",
        u64::from(a.devices) + 2,
        package.display()
    );

    let hsm = Arc::new(hsm::open(&hsm_at)?);
    let imported = import_file(&hsm, &package)?;
    println!(
        "6. HSM imported it: product {} with count {} (signing key unwrapped inside the token; ledger record {})",
        imported.product, imported.count, imported.seq
    );
    match import_file(&hsm, &package) {
        Err(e) => println!("   importing it again is refused: {e}"),
        Ok(_) => anyhow::bail!("a second import of the same package was accepted"),
    }

    let product_key = imported.product;
    let summary = crate::job::demo_job(&*hsm, &dir, &product_key, u64::from(a.devices))?;
    println!(
        "7. the station provisioned {} devices ({} failed after issue): key made inside, certificate from the HSM, root in write-protected storage, locked, verified",
        summary.good, summary.failed_after_issue
    );

    // Two more parts as files, provisioned by a job of 2, then authenticating each other.
    let parts = dir.join("parts");
    std::fs::create_dir_all(&parts)?;
    let mut silicon = SiliconVendor::new(SystemClock.now(), &OsRng)?;
    let mut uids = Vec::new();
    for name in ["device-1.dev", "device-2.dev"] {
        let mut part = silicon.manufacture(DeviceKind::SecureElement, SystemClock.now())?;
        uids.push(part.uid()?);
        trustfab_device::file::save(&part, &parts.join(name))?;
    }
    let now = SystemClock.now();
    let spec = JobSpec {
        job_id: crate::job::job_id_at("demo-files", now)?,
        hsm_id: hsm.hsm_id().clone(),
        product: product_key.clone(),
        quantity: 2,
        device_kind: PartKind::SecureElement,
        slots: SlotMap::default(),
        attestation_root: None,
        lock: LockPolicy::Data,
        created_at: now.0,
        firmware: None,
    };
    let job = hsm.reserve(spec)?;
    let opts = RunOptions::new(2, Arc::new(SystemClock));
    let s2 = trustfab_station::run(
        &*hsm,
        &job,
        &FileSupply::open(&parts, Faults::none())?,
        &opts,
    )?;
    hsm.close(job)?;
    println!(
        "8. a job of 2 provisioned device files ({} good): {}/device-1.dev, device-2.dev",
        s2.good,
        parts.display()
    );
    let extra = DeviceKey {
        uid: DeviceUid::new(&[0xff; 9])?,
        public_key: PublicKey::from_point(
            Curve::P256,
            SoftKey::generate(Curve::P256)?.public_point(),
        )?,
    };
    match hsm.issue_direct(&product_key, &[extra]) {
        Err(e) => println!("   one more certificate is refused: {e}"),
        Ok(_) => anyhow::bail!("the HSM issued past the count"),
    }

    let (dev1, dev2) = (parts.join("device-1.dev"), parts.join("device-2.dev"));
    println!("9. mutual authentication, each device checking the other against the root in its own storage:");
    crate::auth::demo_auth(&dev1, &dev2, &[])?;

    // Revoke device 2: with the OEM's CRL, device 1 refuses it.
    let uid2 = uids.get(1).context("no second device")?;
    let cert2 = hsm
        .certificate_for(&product_key, uid2)?
        .context("device 2 has no certificate")?;
    oem.revoke(&cert2.serial, Reason::KeyCompromise, SystemClock.now())?;
    let crl = oem.issue_crl(&pass, SystemClock.now(), 30)?.der;
    let crl_path = dir.join("crl.pem");
    files::write_new(&crl_path, pem::encode("X509 CRL", &crl).as_bytes(), false)?;
    match crate::auth::demo_auth(&dev1, &dev2, &[crl]) {
        Err(e) => println!(
            "10. device 2 revoked (key-compromise, CRL {}); authentication now refused: {e:#}",
            crl_path.display()
        ),
        Ok(()) => anyhow::bail!("a revoked device was authenticated"),
    }

    for p in hsm.products()? {
        println!(
            "11. HSM products: {} ordered {}, issued {}, remaining {}",
            p.product, p.ordered, p.issued, p.remaining
        );
    }

    let v = hsm.verify_ledger()?;
    println!(
        "12. ledger verified under the HSM identity: {} records, hash chain, counters and claims",
        v.head.seq
    );
    let report_path = dir.join("thermostat-v2.report");
    let totals = hsm.report(
        &ProductKey::parse("acme/thermostat-v2")?,
        std::io::BufWriter::new(std::fs::File::create(&report_path)?),
    )?;
    let order = trustfab_formats::package::open(&files::read_limited(
        &package,
        trustfab_formats::package::PACKAGE_MAX,
    )?)?;
    let vendor_root = pem::decode_one(
        &files::read_text(&vendor_dir.join("root.pem"), 64 * 1024)?,
        "CERTIFICATE",
    )?;
    let summary = trustfab_formats::report::verify_report(
        std::io::BufReader::new(std::fs::File::open(&report_path)?),
        &vendor_root,
        &[order.into_contents()],
        SystemClock.now(),
    )?;
    println!(
        "13. production report signed by the HSM ({} issued of {}): {}; the OEM verified it: {} certificates valid, none twice, within the order",
        totals.issued,
        totals.ordered,
        report_path.display(),
        summary.certificates
    );

    println!("14. firmware for a secure MCU product: mastered, programmed in a job, updated in the field:");
    let fw = crate::fw::demo_master(&dir, &pass)?;
    println!(
        "   OEM firmware signing key {}, family key {}; image 1.0.0 signed and encrypted for the family: {}",
        fw.sign_key.display(),
        fw.family_key.display(),
        fw.image.display()
    );
    let mcu_package = dir.join("gateway-v1.package");
    crate::oem::wrap(&crate::oem::WrapArgs {
        dir: dir.join("oem"),
        hsm: hsm_certs.clone(),
        vendor_root: vendor_dir.join("root.pem"),
        template: template_path,
        product: ProductId::new("gateway-v1")?,
        count: 3,
        serial_range: None,
        valid_days: 30,
        out: mcu_package.clone(),
        firmware: crate::oem::FirmwareArgs {
            family: Some("gateway".into()),
            boot_key: Some(fw.sign_pub.clone()),
            family_key: Some(fw.family_key.clone()),
        },
        pass: pass_args.clone(),
    })?;
    let imported = import_file(&hsm, &mcu_package)?;
    println!(
        "   OEM wrapped product {} with its firmware (root-of-trust key hash; family key wrapped for the HSM like the signing key): {}; the HSM imported it",
        imported.product,
        mcu_package.display()
    );
    let mcu_parts = dir.join("mcu-parts");
    std::fs::create_dir_all(&mcu_parts)?;
    let mut mcu_uids = Vec::new();
    for i in 1..=3 {
        let mut part = silicon.manufacture(DeviceKind::SecureMcu, SystemClock.now())?;
        mcu_uids.push(part.uid()?);
        trustfab_device::file::save(&part, &mcu_parts.join(format!("mcu-{i}.dev")))?;
    }
    let image: Arc<[u8]> =
        files::read_limited(&fw.image, trustfab_firmware::MAX_IMAGE_BYTES)?.into();
    let now = SystemClock.now();
    let spec = JobSpec {
        job_id: crate::job::job_id_at("demo-mcu", now)?,
        hsm_id: hsm.hsm_id().clone(),
        product: imported.product.clone(),
        quantity: 3,
        device_kind: PartKind::SecureMcu,
        slots: SlotMap::default(),
        attestation_root: None,
        lock: LockPolicy::Data,
        created_at: now.0,
        firmware: Some(trustfab_station::job_firmware(
            &*hsm,
            &imported.product,
            "gateway-1.0.0.bin",
            &image,
            5,
        )?),
    };
    let job = hsm.reserve(spec)?;
    let mut opts = RunOptions::new(3, Arc::new(SystemClock));
    opts.image = Some(image);
    let s3 = trustfab_station::run(
        &*hsm,
        &job,
        &FileSupply::open(&mcu_parts, Faults::none())?,
        &opts,
    )?;
    hsm.close(job)?;
    if s3.good != 3 {
        anyhow::bail!("the MCU job provisioned {} of 3 parts", s3.good);
    }
    println!(
        "   a job of 3 secure MCUs ({} good) in {}: each got its certificate, the family key wrapped by the HSM to its certified key and unwrapped inside the part, its root-of-trust fuse, and image 1.0.0 installed by secure boot; then it was locked. The station held ciphertext only.",
        s3.good,
        mcu_parts.display()
    );
    let uid1 = mcu_uids.first().context("no MCU")?;
    let cert1 = hsm
        .certificate_for(&imported.product, uid1)?
        .context("MCU 1 has no certificate")?;
    crate::fw::demo_field_update(&fw, &pass, &mcu_parts.join("mcu-1.dev"), &cert1.cert)?;

    demo_service(&dir, &hsm_at, &hsm, &hsm_certs, &vendor_dir, &pass_args)
}

/// `hsm import` of the package file at `path`.
fn import_file(hsm: &trustfab_hsm::Hsm, path: &std::path::Path) -> Result<trustfab_hsm::Imported> {
    Ok(hsm.import(&files::read_limited(
        path,
        trustfab_formats::package::PACKAGE_MAX,
    )?)?)
}

/// Step 15: the HSM as a network service on a loopback port, two stations with their own
/// certificates provisioning one job each through it, one of them then revoked.
fn demo_service(
    dir: &std::path::Path,
    hsm_at: &HsmDir,
    hsm: &Arc<trustfab_hsm::Hsm>,
    hsm_certs: &std::path::Path,
    vendor_dir: &std::path::Path,
    pass_args: &PassphraseArgs,
) -> Result<()> {
    let package = dir.join("sensor-v1.package");
    crate::oem::wrap(&crate::oem::WrapArgs {
        dir: dir.join("oem"),
        hsm: hsm_certs.to_path_buf(),
        vendor_root: vendor_dir.join("root.pem"),
        template: dir.join("template.toml"),
        product: ProductId::new("sensor-v1")?,
        count: 24,
        serial_range: None,
        valid_days: 30,
        out: package.clone(),
        firmware: crate::oem::FirmwareArgs::default(),
        pass: pass_args.clone(),
    })?;
    let product = import_file(hsm, &package)?.product;
    println!(
        "15. the HSM as a network service: product {product} (count 24) for stations on other machines; each station makes its key and is certified by the station CA inside the HSM token:"
    );
    let mut stations = Vec::new();
    for (name, ceiling) in [("line-1.station-a", None), ("line-1.station-b", Some(10))] {
        let st_dir = dir.join(name);
        let id = trustfab_types::StationId::new(name)?;
        let csr = crate::service::init_station(&st_dir, &id, pass_args)?;
        crate::service::certify(&crate::service::CertifyArgs::new(
            hsm_at.clone(),
            csr,
            vec![product.clone()],
            ceiling,
            st_dir.clone(),
        ))?;
        stations.push(st_dir);
    }
    let ca = crate::service::station_ca(hsm, &hsm_at.dir)?;
    // The center's operators: their CA (the center's own), one operator certified by it.
    let center = dir.join("operators");
    let center_id = trustfab_types::StationId::new("center-1")?;
    crate::operator::make_ca(&center, &center_id, 30, pass_args)?;
    let operator = dir.join("operator-alice");
    std::fs::write(dir.join("station-ca.pem"), pem::cert_pem(&ca))?;
    crate::operator::certify(
        &center,
        &trustfab_types::StationId::new("alice")?,
        &dir.join("station-ca.pem"),
        30,
        &operator,
        pass_args,
    )?;
    let mut opts =
        trustfab_service::ServeOptions::new(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    opts.operator_ca = Some(crate::operator::read_operator_ca(
        &center.join("operator-ca.pem"),
    )?);
    let running = trustfab_service::spawn(Arc::clone(hsm), &ca, &opts)?;
    let url = running.url();
    println!(
        "   service on {url}: TLS 1.3, a station certificate required, its TLS key inside the HSM token; operators of center {center_id} read /metrics"
    );
    let mut remotes = Vec::new();
    for st in &stations {
        let remote = crate::service::connect(&url, st, pass_args, 30)?;
        let s = crate::job::demo_job(&remote, dir, &product, 8)?;
        println!(
            "   station {} provisioned {} devices through the service",
            remote.station(),
            s.good
        );
        remotes.push(remote);
    }
    for s in hsm.stations()? {
        println!(
            "   ledger: station {} certified at record {}, named by {} issuance records, {}",
            s.certified.station,
            s.seq,
            s.issued,
            s.remaining.map_or_else(
                || "no ceiling".into(),
                |r| format!("{r} devices left of its ceiling")
            )
        );
    }
    let text = crate::operator::metrics(&url, &operator, pass_args)?;
    for line in text.lines().filter(|l| {
        l.starts_with("trustfab_certificates_issued_total{")
            || l.starts_with("trustfab_product_remaining{product=\"acme/sensor-v1\"")
    }) {
        println!("   metrics (operator alice): {line}");
    }
    let id = remotes.first().context("no station")?.station().clone();
    let seq = hsm.revoke_station(&id, "demo")?;
    match remotes.first().map(|r| r.products()) {
        Some(Err(e)) => println!(
            "   station {id} revoked (ledger record {seq}); its next request is refused: {e}"
        ),
        _ => anyhow::bail!("a revoked station was served"),
    }
    running.stop();
    Ok(())
}
