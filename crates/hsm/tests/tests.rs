//! The HSM application on a real token and a real ledger (SQLite file). Where tests go:
//! - `import`: package checks, in the order the HSM makes them
//! - `issue`: issuance, counts, concurrency, re-issue
//! - `crash`: SIGKILL at random moments, then the invariants

// Fixtures unwrap: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::path::Path;
use std::sync::Arc;

use trustfab_hsm::{product_key, wrap_info, DeviceKey, Hsm, ImportError, IssueError};
use trustfab_ledger::SqliteStore;
use trustfab_package::{Contents, SerialRange};
use trustfab_pki::template::EXAMPLE_TEMPLATE;
use trustfab_pki::{
    certify_hsm, intermediate_ca, self_signed_ca, validate, CaRole, CaSpec, Curve, HsmCertificates,
    HsmIdentity, Issuer, Policy, PublicKey, Purpose, Signer, SoftKey,
};
use trustfab_token::Token;
use trustfab_token_soft::{Argon2Cost, SoftToken};
use trustfab_types::{DeviceUid, FixedClock, OemId, Passphrase, ProductId, Serial, UnixTime};

const NOW: UnixTime = UnixTime(1_790_000_000);

fn pass() -> Passphrase {
    Passphrase::new("hsm test passphrase".into()).unwrap()
}

fn cheap() -> Argon2Cost {
    Argon2Cost::new(8 * 1024, 1, 1).unwrap()
}

fn ca(role: CaRole, name: &str, key: &SoftKey, issuer: Option<&Issuer<'_>>) -> Vec<u8> {
    let spec = CaSpec {
        role,
        common_name: name.into(),
        organization: name.into(),
        serial: Serial::from_u64(7).unwrap(),
        not_before: UnixTime(NOW.0 - 86_400),
        days: 3650,
    };
    match issuer {
        None => self_signed_ca(&spec, key).unwrap(),
        Some(i) => {
            let pk = PublicKey::from_point(key.curve(), key.public_point()).unwrap();
            intermediate_ca(&spec, &pk, i).unwrap()
        }
    }
}

/// The vendor: its root certifies HSMs.
struct Vendor {
    key: SoftKey,
    root: Vec<u8>,
}

impl Vendor {
    fn new() -> Self {
        let key = SoftKey::generate(Curve::P256).unwrap();
        let root = ca(CaRole::VendorRoot, "Vendor", &key, None);
        Self { key, root }
    }
}

/// One HSM at a programming center: a soft token and a SQLite ledger in `dir`.
struct Site {
    hsm: Hsm,
    certs: HsmCertificates,
    clock: Arc<FixedClock>,
}

fn site(dir: &Path, id: &str, vendor: &Vendor) -> Site {
    let token = SoftToken::create(&dir.join("token"), &pass(), cheap()).unwrap();
    let req = Hsm::init(&token, id).unwrap();
    let issuer = Issuer::new(&vendor.root, &vendor.key).unwrap();
    let (s1, s2) = (
        Serial::from_u64(100).unwrap(),
        Serial::from_u64(101).unwrap(),
    );
    let certs = certify_hsm(&req, &issuer, (&s1, &s2), UnixTime(NOW.0 - 3600), 365).unwrap();
    let site = reopen(dir, id, &certs);
    drop(token);
    site
}

fn reopen(dir: &Path, id: &str, certs: &HsmCertificates) -> Site {
    let token: Arc<dyn Token> = Arc::new(SoftToken::open(&dir.join("token"), &pass()).unwrap());
    let ledger = Arc::new(SqliteStore::open(&dir.join("ledger.sqlite")).unwrap());
    let clock = Arc::new(FixedClock::new(NOW));
    let hsm = Hsm::open(token, ledger, clock.clone(), id, Some(certs)).unwrap();
    Site {
        hsm,
        certs: certs.clone(),
        clock,
    }
}

/// The OEM: root, device CA, and the wrapping tool.
struct Oem {
    id: OemId,
    root_key: SoftKey,
    root: Vec<u8>,
    ca_key: SoftKey,
    ca: Vec<u8>,
}

impl Oem {
    fn new(id: &str) -> Self {
        let root_key = SoftKey::generate(Curve::P256).unwrap();
        let root = ca(CaRole::OemRoot, &format!("{id} root"), &root_key, None);
        let ca_key = SoftKey::generate(Curve::P256).unwrap();
        let issuer = Issuer::new(&root, &root_key).unwrap();
        let ca = ca(
            CaRole::DeviceCa,
            &format!("{id} device CA"),
            &ca_key,
            Some(&issuer),
        );
        Self {
            id: OemId::new(id).unwrap(),
            root_key,
            root,
            ca_key,
            ca,
        }
    }

    /// `trustfab oem wrap`: validate the HSM identity to the vendor root, wrap the device-CA
    /// key for its key-transport key, sign.
    fn wrap(
        &self,
        vendor: &Vendor,
        target: &HsmCertificates,
        product: &str,
        count: u64,
        id: u8,
    ) -> Vec<u8> {
        self.wrap_with(vendor, target, product, count, id, EXAMPLE_TEMPLATE, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn wrap_with(
        &self,
        vendor: &Vendor,
        target: &HsmCertificates,
        product: &str,
        count: u64,
        id: u8,
        template: &str,
        serial_range: Option<SerialRange>,
    ) -> Vec<u8> {
        let identity = HsmIdentity::validate(target, &vendor.root, NOW).unwrap();
        let package_id = [id; 16];
        let kt = trustfab_token::PublicKey::from_point(
            trustfab_token::Curve::P256,
            identity.kt_key.point(),
        )
        .unwrap();
        let wrapped = trustfab_token::wrap_for(
            &kt,
            &self.ca_key.secret_pkcs8_der().unwrap(),
            &wrap_info(&package_id, &identity.fingerprint),
        )
        .unwrap();
        let contents = Contents {
            package_id,
            target_hsm: identity.fingerprint,
            oem_id: self.id.clone(),
            product_id: ProductId::new(product).unwrap(),
            count,
            serial_range,
            not_before: UnixTime(NOW.0 - 60),
            not_after: UnixTime(NOW.0 + 7 * 86_400),
            template: template.into(),
            root_cert: self.root.clone(),
            device_ca_cert: Some(self.ca.clone()),
            wrapped_signing_key: wrapped.to_bytes(),
        };
        trustfab_package::seal(&contents, &self.root_key).unwrap()
    }
}

fn device(i: u32) -> DeviceKey {
    let k = SoftKey::generate(Curve::P256).unwrap();
    let mut uid = vec![0x04, 0xee];
    uid.extend_from_slice(&i.to_be_bytes());
    DeviceKey {
        uid: DeviceUid::new(&uid).unwrap(),
        public_key: PublicKey::from_point(Curve::P256, k.public_point()).unwrap(),
    }
}

mod import {
    use super::*;

    #[test]
    fn a_package_imports_in_its_hsm_and_issues_chained_certificates() {
        let t = tempfile::tempdir().unwrap();
        let vendor = Vendor::new();
        let s = site(t.path(), "hsm-1", &vendor);
        let oem = Oem::new("acme");
        let imported = s
            .hsm
            .import(&oem.wrap(&vendor, &s.certs, "thermo", 10, 1))
            .unwrap();
        assert!(imported.created);
        assert_eq!(imported.product, "acme/thermo");
        let issued = s.hsm.issue("acme/thermo", &[device(1), device(2)]).unwrap();
        let ints = [oem.ca.clone()];
        for i in &issued {
            validate(
                &i.cert,
                &Policy {
                    root: &oem.root,
                    intermediates: &ints,
                    crls: &[],
                    now: NOW,
                    purpose: Purpose::ClientAuth,
                },
            )
            .unwrap();
        }
        let status = s.hsm.products().unwrap();
        assert_eq!(
            (status[0].ordered, status[0].issued, status[0].remaining),
            (10, 2, 8)
        );
    }

    /// DESIGN.md property 1: the OEM signing key exists in plaintext only inside the token,
    /// as a sensitive, non-extractable key.
    #[test]
    fn the_signing_key_is_sensitive_and_not_extractable_inside_the_token() {
        let t = tempfile::tempdir().unwrap();
        let vendor = Vendor::new();
        let s = site(t.path(), "hsm-1", &vendor);
        let oem = Oem::new("acme");
        s.hsm
            .import(&oem.wrap(&vendor, &s.certs, "thermo", 10, 1))
            .unwrap();
        drop(s);
        let token = SoftToken::open(&t.path().join("token"), &pass()).unwrap();
        let product_label = trustfab_hsm::product_key_label("acme/thermo").unwrap();
        for label in [
            trustfab_token::KeyLabel::new("hsm-identity").unwrap(),
            trustfab_token::KeyLabel::new("hsm-key-transport").unwrap(),
            product_label.clone(),
        ] {
            let h = token.find(&label).unwrap().unwrap();
            let info = token.info(h).unwrap();
            assert!(info.sensitive && !info.extractable, "{label}");
        }
        let h = token.find(&product_label).unwrap().unwrap();
        let pk = token.public_key(h).unwrap();
        assert_eq!(
            pk.point(),
            oem.ca_key.public_point(),
            "the device CA key, unwrapped"
        );
    }

    #[test]
    fn a_package_for_another_hsm_is_refused() {
        let (t1, t2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let vendor = Vendor::new();
        let a = site(t1.path(), "hsm-a", &vendor);
        let b = site(t2.path(), "hsm-b", &vendor);
        let oem = Oem::new("acme");
        let for_a = oem.wrap(&vendor, &a.certs, "thermo", 10, 1);
        assert!(matches!(
            b.hsm.import(&for_a),
            Err(ImportError::WrongHsm { .. })
        ));
        assert!(b.hsm.products().unwrap().is_empty());
        a.hsm.import(&for_a).unwrap();
    }

    #[test]
    fn a_second_import_is_refused_as_a_replay() {
        let t = tempfile::tempdir().unwrap();
        let vendor = Vendor::new();
        let s = site(t.path(), "hsm-1", &vendor);
        let oem = Oem::new("acme");
        let p = oem.wrap(&vendor, &s.certs, "thermo", 10, 1);
        let first = s.hsm.import(&p).unwrap();
        match s.hsm.import(&p) {
            Err(ImportError::Replayed { seq, .. }) => assert_eq!(seq, first.seq),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.hsm.products().unwrap()[0].ordered, 10);
    }

    #[test]
    fn an_expired_or_early_package_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let vendor = Vendor::new();
        let s = site(t.path(), "hsm-1", &vendor);
        let oem = Oem::new("acme");
        let p = oem.wrap(&vendor, &s.certs, "thermo", 10, 1);
        s.clock.set(UnixTime(NOW.0 + 8 * 86_400));
        assert!(matches!(s.hsm.import(&p), Err(ImportError::Expired { .. })));
        s.clock.set(UnixTime(NOW.0 - 3600));
        assert!(matches!(
            s.hsm.import(&p),
            Err(ImportError::NotYetValid { .. })
        ));
        s.clock.set(NOW);
        s.hsm.import(&p).unwrap();
    }

    #[test]
    fn a_package_signed_by_another_oem_key_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let vendor = Vendor::new();
        let s = site(t.path(), "hsm-1", &vendor);
        let acme = Oem::new("acme");
        s.hsm
            .import(&acme.wrap(&vendor, &s.certs, "thermo", 10, 1))
            .unwrap();
        // An impostor with its own root claims to be acme: the OEM is bound to acme's root.
        let impostor = Oem::new("acme");
        let p = impostor.wrap(&vendor, &s.certs, "thermo", 10, 2);
        assert!(matches!(
            s.hsm.import(&p),
            Err(ImportError::OemRootMismatch { .. })
        ));
        let p = impostor.wrap(&vendor, &s.certs, "other-product", 10, 3);
        assert!(matches!(
            s.hsm.import(&p),
            Err(ImportError::OemRootMismatch { .. })
        ));
        // A package whose signature is not by the root it carries: refused before anything else.
        let mut msg = acme.wrap(&vendor, &s.certs, "thermo", 10, 4);
        let n = msg.len();
        msg[n - 10] ^= 0x01;
        assert!(matches!(
            s.hsm.import(&msg),
            Err(ImportError::Package(trustfab_package::Error::Signature))
        ));
        assert_eq!(s.hsm.products().unwrap()[0].ordered, 10);
    }

    #[test]
    fn an_hsm_identity_not_from_the_pinned_vendor_cannot_be_wrapped_for() {
        let t = tempfile::tempdir().unwrap();
        let vendor = Vendor::new();
        let rogue = Vendor::new();
        let s = site(t.path(), "hsm-1", &rogue);
        assert!(HsmIdentity::validate(&s.certs, &vendor.root, NOW).is_err());
    }

    #[test]
    fn every_single_bit_flip_of_a_package_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let vendor = Vendor::new();
        let s = site(t.path(), "hsm-1", &vendor);
        let oem = Oem::new("acme");
        let minimal = "version = 1\n[subject]\ncommon_name = \"{uid}\"\n[validity]\ndays = 1\n[extensions]\nkey_usage = [\"digital_signature\"]\n[serial]\nscheme = \"random\"\n";
        let p = oem.wrap_with(&vendor, &s.certs, "p", 5, 1, minimal, None);
        let mut accepted = Vec::new();
        for bit in 0..p.len() * 8 {
            let mut b = p.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            if s.hsm.import(&b).is_ok() {
                accepted.push(bit);
            }
        }
        assert!(
            accepted.is_empty(),
            "{} flips accepted: {accepted:?}",
            accepted.len()
        );
        assert!(s.hsm.products().unwrap().is_empty());
        s.hsm.import(&p).unwrap();
    }

    #[test]
    fn a_top_up_adds_count_and_may_not_change_the_product() {
        let t = tempfile::tempdir().unwrap();
        let vendor = Vendor::new();
        let s = site(t.path(), "hsm-1", &vendor);
        let oem = Oem::new("acme");
        s.hsm
            .import(&oem.wrap(&vendor, &s.certs, "thermo", 10, 1))
            .unwrap();
        let up = s
            .hsm
            .import(&oem.wrap(&vendor, &s.certs, "thermo", 5, 2))
            .unwrap();
        assert!(!up.created);
        assert_eq!(s.hsm.products().unwrap()[0].ordered, 15);
        let changed = EXAMPLE_TEMPLATE.replace("Sensors", "Actuators");
        let p = oem.wrap_with(&vendor, &s.certs, "thermo", 5, 3, &changed, None);
        match s.hsm.import(&p) {
            Err(ImportError::ProductConflict { what, .. }) => assert_eq!(what, "template"),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.hsm.products().unwrap()[0].ordered, 15);
    }
}

mod issue {
    use super::*;

    fn ready(dir: &Path, count: u64) -> (Site, Oem) {
        let vendor = Vendor::new();
        let s = site(dir, "hsm-1", &vendor);
        let oem = Oem::new("acme");
        s.hsm
            .import(&oem.wrap(&vendor, &s.certs, "thermo", count, 1))
            .unwrap();
        (s, oem)
    }

    #[test]
    fn the_count_is_never_exceeded_by_eight_threads() {
        let t = tempfile::tempdir().unwrap();
        let (s, _) = ready(t.path(), 1000);
        let hsm = Arc::new(s.hsm);
        let devices: Vec<DeviceKey> = (0..1100).map(device).collect();
        let devices = Arc::new(devices);
        let handles: Vec<_> = (0..8)
            .map(|th| {
                let hsm = Arc::clone(&hsm);
                let devices = Arc::clone(&devices);
                std::thread::spawn(move || {
                    let (mut ok, mut refused) = (Vec::new(), 0);
                    for d in devices.iter().skip(th).step_by(8) {
                        match hsm.issue("acme/thermo", std::slice::from_ref(d)) {
                            Ok(mut v) => ok.push(v.remove(0)),
                            Err(IssueError::CountExhausted { remaining: 0, .. }) => refused += 1,
                            Err(e) => panic!("{e}"),
                        }
                    }
                    (ok, refused)
                })
            })
            .collect();
        let mut certs = Vec::new();
        let mut refused = 0;
        for h in handles {
            let (ok, r) = h.join().unwrap();
            certs.extend(ok);
            refused += r;
        }
        assert_eq!(certs.len(), 1000);
        assert_eq!(refused, 100);
        let mut serials: Vec<_> = certs.iter().map(|c| c.serial.clone()).collect();
        serials.sort();
        serials.dedup();
        assert_eq!(serials.len(), 1000, "serials are unique");
        let st = &hsm.products().unwrap()[0];
        assert_eq!((st.issued, st.remaining), (1000, 0));
    }

    #[test]
    fn a_batch_that_does_not_fit_spends_nothing() {
        let t = tempfile::tempdir().unwrap();
        let (s, _) = ready(t.path(), 5);
        let batch: Vec<_> = (0..6).map(device).collect();
        match s.hsm.issue("acme/thermo", &batch) {
            Err(IssueError::CountExhausted {
                remaining: 5,
                asked: 6,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(s.hsm.issue("acme/thermo", &batch[..5]).unwrap().len(), 5);
        assert_eq!(s.hsm.products().unwrap()[0].remaining, 0);
    }

    #[test]
    fn a_device_issued_before_gets_its_certificate_again_without_spending() {
        let t = tempfile::tempdir().unwrap();
        let (s, _) = ready(t.path(), 3);
        let d = device(9);
        let first = s
            .hsm
            .issue("acme/thermo", std::slice::from_ref(&d))
            .unwrap()
            .remove(0);
        let again = s
            .hsm
            .issue("acme/thermo", std::slice::from_ref(&d))
            .unwrap()
            .remove(0);
        assert!(again.reissued && !first.reissued);
        assert_eq!(again.serial, first.serial);
        let tbs = |der: &[u8]| {
            let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
            c.tbs_certificate.as_ref().to_vec()
        };
        assert_eq!(tbs(&again.cert), tbs(&first.cert));
        assert_eq!(s.hsm.products().unwrap()[0].issued, 1);
        // The same UID with another key is refused: one device, one identity.
        let other = DeviceKey {
            uid: d.uid.clone(),
            public_key: device(10).public_key,
        };
        assert!(matches!(
            s.hsm.issue("acme/thermo", &[other]),
            Err(IssueError::BadRequest { .. })
        ));
        assert!(s
            .hsm
            .certificate_for("acme/thermo", &d.uid)
            .unwrap()
            .is_some());
    }

    #[test]
    fn sequential_serials_come_from_the_package_range() {
        let t = tempfile::tempdir().unwrap();
        let vendor = Vendor::new();
        let s = site(t.path(), "hsm-1", &vendor);
        let oem = Oem::new("acme");
        let range = SerialRange {
            first: 5000,
            last: 5009,
        };
        let p = oem.wrap_with(
            &vendor,
            &s.certs,
            "seq",
            10,
            1,
            EXAMPLE_TEMPLATE,
            Some(range),
        );
        s.hsm.import(&p).unwrap();
        let key = product_key(&oem.id, &ProductId::new("seq").unwrap());
        let a = s
            .hsm
            .issue(&key, &(0..4).map(device).collect::<Vec<_>>())
            .unwrap();
        let b = s
            .hsm
            .issue(&key, &(4..10).map(device).collect::<Vec<_>>())
            .unwrap();
        let serials: Vec<u64> = a
            .iter()
            .chain(&b)
            .map(|i| i.serial.to_u64().unwrap())
            .collect();
        assert_eq!(serials, (5000..5010).collect::<Vec<_>>());
    }

    #[test]
    fn an_unknown_product_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let (s, _) = ready(t.path(), 3);
        assert!(matches!(
            s.hsm.issue("acme/nope", &[device(1)]),
            Err(IssueError::UnknownProduct { .. })
        ));
    }
}

/// DESIGN.md property 4 across crashes: a process issuing in a loop is killed with SIGKILL at
/// random moments; after every restart the count is not exceeded, every certificate the process
/// ever returned is on record, and every unit spent has its issuance record.
mod crash {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    use trustfab_ledger::{Kind, Store};
    use trustfab_types::Rng;

    const CHILD_ENV: &str = "TRUSTFAB_HSM_CRASH_CHILD";
    const COUNT: u64 = 2000;

    fn random_below(n: u64) -> u64 {
        let mut b = [0u8; 8];
        trustfab_types::OsRng.fill(&mut b).unwrap();
        u64::from_le_bytes(b) % n
    }

    /// The child: issue small batches until the count runs out, printing every serial as soon as
    /// its certificate is returned.
    #[test]
    #[ignore = "child process of sigkill_at_random_moments_loses_nothing; it runs it"]
    fn child() {
        let Ok(dir) = std::env::var(CHILD_ENV) else {
            return;
        };
        let dir = Path::new(&dir);
        let certs =
            HsmCertificates::from_pem(&std::fs::read_to_string(dir.join("hsm.pem")).unwrap())
                .unwrap();
        let s = reopen(dir, "hsm-1", &certs);
        s.clock.set(NOW);
        let mut out = std::io::stdout().lock();
        loop {
            let n = 1 + random_below(4);
            let batch: Vec<DeviceKey> = (0..n)
                .map(|_| {
                    let mut uid = [0u8; 16];
                    trustfab_types::OsRng.fill(&mut uid).unwrap();
                    DeviceKey {
                        uid: DeviceUid::new(&uid).unwrap(),
                        public_key: device(0).public_key,
                    }
                })
                .collect();
            match s.hsm.issue("acme/thermo", &batch) {
                Ok(issued) => {
                    for i in issued {
                        writeln!(out, "ISSUED {}", i.serial.to_hex()).unwrap();
                    }
                    out.flush().unwrap();
                }
                Err(IssueError::CountExhausted { .. }) if n > 1 => continue,
                Err(IssueError::CountExhausted { .. }) => {
                    writeln!(out, "DONE").unwrap();
                    out.flush().unwrap();
                    return;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn run_child(dir: &Path, kill_after: Option<Duration>) -> Vec<String> {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "crash::child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        });
        if let Some(d) = kill_after {
            let start = Instant::now();
            while start.elapsed() < d {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            child.kill().ok(); // SIGKILL on Unix
        }
        child.wait().unwrap();
        reader.join().unwrap()
    }

    /// The serials the child printed (the test harness may prefix its first line).
    fn serials(lines: &[String]) -> Vec<String> {
        lines
            .iter()
            .filter_map(|l| l.split("ISSUED ").nth(1))
            .map(|s| s.trim().to_owned())
            .collect()
    }

    fn check(dir: &Path, returned: &[String]) -> u64 {
        let ledger = SqliteStore::open(&dir.join("ledger.sqlite")).unwrap();
        ledger.verify(&|_, _| false).unwrap();
        let counter = ledger.counter("acme/thermo").unwrap().unwrap();
        assert!(counter.issued <= COUNT, "over the count: {counter:?}");
        let mut recorded = std::collections::HashSet::new();
        for r in ledger.records(1) {
            let r = r.unwrap();
            if r.kind == Kind::CertificateIssued {
                let rec = trustfab_hsm::IssuanceRecord::decode(&r.body).unwrap();
                assert!(
                    recorded.insert(rec.serial.to_hex()),
                    "serial recorded twice"
                );
            }
        }
        assert_eq!(
            u64::try_from(recorded.len()).unwrap(),
            counter.issued,
            "every unit spent has exactly one issuance record"
        );
        for s in returned {
            assert!(
                recorded.contains(s),
                "certificate {s} was returned but is not on record"
            );
        }
        counter.issued
    }

    #[test]
    fn sigkill_at_random_moments_loses_nothing() {
        let t = tempfile::tempdir().unwrap();
        let vendor = Vendor::new();
        let s = site(t.path(), "hsm-1", &vendor);
        std::fs::write(t.path().join("hsm.pem"), s.certs.to_pem()).unwrap();
        let oem = Oem::new("acme");
        s.hsm
            .import(&oem.wrap(&vendor, &s.certs, "thermo", COUNT, 1))
            .unwrap();
        drop(s);

        let mut returned = Vec::new();
        let mut kills = 0;
        let mut last = 0;
        while kills < 60 {
            let wait = Duration::from_millis(20 + random_below(150));
            let lines = run_child(t.path(), Some(wait));
            let done = lines.iter().any(|l| l.ends_with("DONE"));
            returned.extend(serials(&lines));
            let issued = check(t.path(), &returned);
            assert!(issued >= last);
            last = issued;
            kills += 1;
            if done {
                break;
            }
        }
        // Finish the job: the count is reached exactly, and still nothing is lost.
        let lines = run_child(t.path(), None);
        assert!(lines.iter().any(|l| l.ends_with("DONE")), "{lines:?}");
        returned.extend(serials(&lines));
        assert_eq!(check(t.path(), &returned), COUNT);
        assert!(
            kills >= 50,
            "only {kills} kills before the count ran out: raise COUNT"
        );
    }
}
