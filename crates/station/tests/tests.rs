//! The station on a real HSM (soft token), a real SQLite ledger and simulated parts. Where tests go:
//! - `jobs`: creating and closing jobs (reservation, refusals, credit-back)
//! - `end_to_end`: a job of 1,000 devices, certificates checked with `openssl verify`
//! - `faults`: sockets with injected faults; every device accounted for
//! - `resume`: devices put back after a failure, runs stopped and resumed
//! - `kill`: the station process SIGKILLed at random moments and resumed
//! - `firmware`: jobs that program a mastered image into secure MCUs

// Fixtures unwrap: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use trustfab_device::{DeviceKind, Fleet, SiliconVendor};
use trustfab_formats::records::{DeviceFailed, DeviceGood};
use trustfab_hsm::{Hsm, IssuanceRecord};
use trustfab_ledger::{Kind, Store};
use trustfab_ledger_sqlite::SqliteStore;
use trustfab_pki::{Curve, HsmCertificates, PublicKey, Signer, SoftKey};
use trustfab_station::{
    run, Faults, FleetSupply, JobPackage, JobSpec, LockPolicy, PartKind, Reservation, RunOptions,
    SlotMap, Summary,
};
use trustfab_test_support::site::{self as fixture, Firmware, PackageSpec};
use trustfab_token_soft::{Argon2Cost, SoftToken};
use trustfab_types::{FixedClock, HsmId, JobId, Passphrase, ProductKey, UnixTime};

mod end_to_end;
mod faults;
mod firmware;
mod fuzz_seeds;
mod jobs;
mod kill;
mod resume;

const NOW: UnixTime = UnixTime(1_790_000_000);
const PRODUCT: &str = "acme/thermo";
const HSM_ID: &str = "hsm-1";

/// [`PRODUCT`], parsed.
fn product() -> ProductKey {
    ProductKey::parse(PRODUCT).unwrap()
}

/// [`HSM_ID`], parsed.
fn hsm_id() -> HsmId {
    HsmId::new(HSM_ID).unwrap()
}

/// Lowercase hexadecimal, as the station prints UIDs and serials.
fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn pass() -> Passphrase {
    Passphrase::new("station test passphrase".into()).unwrap()
}

/// A programming center with one product of `count` imported: HSM on a soft token and a SQLite
/// ledger in `dir`. The HSM certificates are saved to `dir/hsm.pem` for reopening.
struct Site {
    hsm: Hsm,
    /// The HSM's ledger, for the tests' own audit.
    ledger: Arc<dyn Store>,
    root: Vec<u8>,
    device_ca: Vec<u8>,
}

fn open_site(dir: &Path) -> Hsm {
    open_site_with_ledger(dir).0
}

/// The HSM of [`site`] reopened from `dir`, with its ledger.
fn open_site_with_ledger(dir: &Path) -> (Hsm, Arc<dyn Store>) {
    let certs =
        HsmCertificates::from_pem(&std::fs::read_to_string(dir.join("hsm.pem")).unwrap()).unwrap();
    let token = SoftToken::open(&dir.join("token"), &pass()).unwrap();
    let ledger: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("ledger.sqlite")).unwrap());
    let hsm = Hsm::open(
        Arc::new(token),
        Arc::clone(&ledger),
        Arc::new(FixedClock::new(NOW)),
        &hsm_id(),
        Some(&certs),
    )
    .unwrap();
    (hsm, ledger)
}

fn site(dir: &Path, count: u64) -> Site {
    site_with(dir, count, None)
}

/// The OEM's firmware keys for a product of secure MCUs: the boot (signing) key whose hash
/// goes into the fuses, and the family encryption key.
struct FwKeys {
    sign: SoftKey,
    family: Arc<SoftKey>,
}

impl FwKeys {
    fn new() -> Self {
        Self {
            sign: SoftKey::generate(Curve::P256).unwrap(),
            family: Arc::new(SoftKey::generate(Curve::P256).unwrap()),
        }
    }

    fn boot_key_hash(&self) -> [u8; 32] {
        trustfab_firmware::key_hash(
            &PublicKey::from_point(Curve::P256, self.sign.public_point()).unwrap(),
        )
    }

    fn family_public(&self) -> PublicKey {
        PublicKey::from_point(Curve::P256, self.family.public_point()).unwrap()
    }

    /// An image of `len` bytes, counter `counter`, encrypted for `to` (the family by default).
    fn master(&self, len: usize, counter: u32, to: Option<&PublicKey>) -> (Vec<u8>, Vec<u8>) {
        let plain: Vec<u8> = (0..len)
            .map(|i| u8::try_from(i * 7 % 251).unwrap())
            .collect();
        let family = self.family_public();
        let mut opts = trustfab_firmware::MasterOptions::new("1.0.0".parse().unwrap(), counter);
        opts.encrypt_to = Some(to.unwrap_or(&family));
        let img =
            trustfab_firmware::master(&plain, &opts, &self.sign, &trustfab_types::OsRng).unwrap();
        (img, plain)
    }
}

fn site_with(dir: &Path, count: u64, fw: Option<&FwKeys>) -> Site {
    let token = SoftToken::create(
        &dir.join("token"),
        &pass(),
        Argon2Cost::new(8 * 1024, 1, 1).unwrap(),
    )
    .unwrap();
    let ledger = Arc::new(SqliteStore::open(&dir.join("ledger.sqlite")).unwrap());
    let firmware = fw.map(|fw| Firmware {
        family: "thermo-mcu".into(),
        boot_key_hash: fw.boot_key_hash(),
        family_key: Some(Arc::clone(&fw.family)),
        info: None,
    });
    let (oem, product) = PRODUCT.split_once('/').unwrap();
    let mut package = PackageSpec::new(product, count, NOW).id(9);
    package.firmware = firmware.as_ref();
    let site = fixture::Site::new(
        Arc::new(token),
        ledger,
        Arc::new(FixedClock::new(NOW)),
        HSM_ID,
        oem,
        &package,
    );
    std::fs::write(dir.join("hsm.pem"), site.certs.to_pem()).unwrap();
    Site {
        hsm: site.hsm,
        ledger: site.ledger,
        root: site.oem.root,
        device_ca: site.oem.ca,
    }
}

fn spec(job: &str, quantity: u64) -> JobSpec {
    JobSpec {
        job_id: JobId::new(job).unwrap(),
        hsm_id: hsm_id(),
        product: product(),
        quantity,
        device_kind: PartKind::SecureElement,
        slots: SlotMap::default(),
        attestation_root: None,
        lock: LockPolicy::Data,
        created_at: NOW.0,
        firmware: None,
    }
}

fn vendor() -> SiliconVendor {
    SiliconVendor::new(NOW, &trustfab_types::OsRng).unwrap()
}

fn fleet(vendor: &mut SiliconVendor, n: usize) -> Fleet {
    Fleet::manufacture(vendor, DeviceKind::SecureElement, n, NOW).unwrap()
}

fn options(sockets: usize) -> RunOptions {
    RunOptions::new(sockets, Arc::new(FixedClock::new(NOW)))
}

/// What the ledger says about a job, read independently of the station's own loader.
#[derive(Debug, Default)]
struct Audit {
    /// Certificates issued for the product, by UID.
    issued: HashMap<Vec<u8>, Vec<u8>>,
    /// Good devices of the job.
    good: HashSet<Vec<u8>>,
    /// Good records (with duplicates).
    good_records: u64,
    /// Final failures (no retry) of the job, by UID.
    failed: HashMap<Vec<u8>, DeviceFailed>,
}

/// `identity` is the HSM identity key's point: every checkpoint (one follows each close) must
/// verify under it.
fn audit(ledger: &dyn Store, identity: &[u8], job: &str) -> Audit {
    let key = PublicKey::from_point(Curve::P256, identity).unwrap();
    ledger
        .verify(&|m, sig| trustfab_formats::report::verify_signature(&key, m, sig).is_ok())
        .unwrap();
    let mut a = Audit::default();
    for r in ledger.records(1) {
        let r = r.unwrap();
        match r.kind {
            Kind::CertificateIssued => {
                let rec = IssuanceRecord::decode(&r.body).unwrap();
                let old = a.issued.insert(
                    rec.uid.as_bytes().to_vec(),
                    rec.serial.as_be_bytes().to_vec(),
                );
                assert!(old.is_none(), "a UID was issued twice");
            }
            Kind::DeviceLocked => {
                let g: DeviceGood = ciborium::from_reader(r.body.as_slice()).unwrap();
                if g.job.as_str() == job {
                    a.good_records += 1;
                    a.good.insert(g.uid.0);
                }
            }
            Kind::DeviceFailed => {
                let f: DeviceFailed = ciborium::from_reader(r.body.as_slice()).unwrap();
                if f.job.as_str() == job {
                    if let Some(u) = &f.uid {
                        a.failed.insert(u.0.clone(), f);
                    }
                }
            }
            _ => {}
        }
    }
    a
}

fn create(site: &Site, job: &str, quantity: u64) -> Reservation {
    site.hsm.reserve(spec(job, quantity)).unwrap()
}

/// The job's reservation again, from its package: what a second station process holds.
fn attach(site: &Site, job: &Reservation) -> Reservation {
    site.hsm.attach(job.package().as_bytes()).unwrap()
}

fn run_fleet(
    site: &Site,
    job: &Reservation,
    fleet: Fleet,
    faults: Faults,
    sockets: usize,
) -> (Summary, Fleet) {
    let supply = FleetSupply::new(fleet, faults);
    let s = run(&site.hsm, job, &supply, &options(sockets)).unwrap();
    (s, supply.into_fleet())
}

fn close(site: &Site, job: &Reservation) -> trustfab_formats::records::JobClosed {
    site.hsm.close(attach(site, job)).unwrap()
}
