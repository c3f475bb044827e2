// The import and issuance suites; included once per backend by tests.rs.

/// A new vendor, HSM "hsm-1" in `dir` certified by it, and the OEM "acme": what every test here
/// starts from.
fn acme_site(dir: &Path) -> (Vendor, Site, Oem) {
    let vendor = Vendor::new(NOW);
    let s = site(dir, "hsm-1", &vendor, BACKEND);
    (vendor, s, Oem::new("acme", NOW))
}

/// [`acme_site`] with `count` of acme/thermo imported (package id 1).
fn thermo_site(dir: &Path, count: u64) -> (Vendor, Site, Oem) {
    let (vendor, s, oem) = acme_site(dir);
    s.hsm
        .import(&oem.package(&s.certs, &vendor.root, &spec("thermo", count, 1)))
        .unwrap();
    (vendor, s, oem)
}

mod import {
    use super::*;

    #[test]
    fn a_package_imports_in_its_hsm_and_issues_chained_certificates() {
        let t = tempfile::tempdir().unwrap();
        let (vendor, s, oem) = acme_site(t.path());
        let imported = s
            .hsm
            .import(&oem.package(&s.certs, &vendor.root, &spec("thermo", 10, 1)))
            .unwrap();
        assert!(imported.created);
        assert_eq!(imported.product, pk("acme/thermo"));
        let issued = s.hsm.issue_direct(&pk("acme/thermo"), &[device(1), device(2)]).unwrap();
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
        let (vendor, s, oem) = acme_site(t.path());
        s.hsm
            .import(&oem.package(&s.certs, &vendor.root, &spec("thermo", 10, 1)))
            .unwrap();
        drop(s);
        let token = open_token(t.path(), BACKEND, false);
        let product_label = trustfab_hsm::product_key_label(&pk("acme/thermo")).unwrap();
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
        let vendor = Vendor::new(NOW);
        // The target runs on the soft token: one process holds one PKCS#11 module, so the HSM
        // under test is the one that must refuse.
        let a = site(t1.path(), "hsm-a", &vendor, Backend::Soft);
        let b = site(t2.path(), "hsm-b", &vendor, BACKEND);
        let oem = Oem::new("acme", NOW);
        let for_a = oem.package(&a.certs, &vendor.root, &spec("thermo", 10, 1));
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
        let (vendor, s, oem) = acme_site(t.path());
        let p = oem.package(&s.certs, &vendor.root, &spec("thermo", 10, 1));
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
        let (vendor, s, oem) = acme_site(t.path());
        let p = oem.package(&s.certs, &vendor.root, &spec("thermo", 10, 1));
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
        let (vendor, s, acme) = acme_site(t.path());
        s.hsm
            .import(&acme.package(&s.certs, &vendor.root, &spec("thermo", 10, 1)))
            .unwrap();
        // An impostor with its own root claims to be acme: the OEM is bound to acme's root.
        let impostor = Oem::new("acme", NOW);
        let p = impostor.package(&s.certs, &vendor.root, &spec("thermo", 10, 2));
        assert!(matches!(
            s.hsm.import(&p),
            Err(ImportError::OemRootMismatch { .. })
        ));
        let p = impostor.package(&s.certs, &vendor.root, &spec("other-product", 10, 3));
        assert!(matches!(
            s.hsm.import(&p),
            Err(ImportError::OemRootMismatch { .. })
        ));
        // A package whose signature is not by the root it carries: refused before anything else.
        let mut msg = acme.package(&s.certs, &vendor.root, &spec("thermo", 10, 4));
        let n = msg.len();
        msg[n - 10] ^= 0x01;
        assert!(matches!(
            s.hsm.import(&msg),
            Err(ImportError::Package(trustfab_formats::package::Error::Signature))
        ));
        assert_eq!(s.hsm.products().unwrap()[0].ordered, 10);
    }

    #[test]
    fn an_hsm_identity_not_from_the_pinned_vendor_cannot_be_wrapped_for() {
        let t = tempfile::tempdir().unwrap();
        let vendor = Vendor::new(NOW);
        let rogue = Vendor::new(NOW);
        let s = site(t.path(), "hsm-1", &rogue, BACKEND);
        assert!(HsmIdentity::validate(&s.certs, &vendor.root, NOW).is_err());
    }

    #[test]
    fn every_single_bit_flip_of_a_package_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let (vendor, s, oem) = acme_site(t.path());
        let minimal = "version = 1\n[subject]\ncommon_name = \"{uid}\"\n[validity]\ndays = 1\n[extensions]\nkey_usage = [\"digital_signature\"]\n[serial]\nscheme = \"random\"\n";
        let p = oem.package(&s.certs, &vendor.root, &spec("p", 5, 1).template(minimal));
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
        let (vendor, s, oem) = acme_site(t.path());
        s.hsm
            .import(&oem.package(&s.certs, &vendor.root, &spec("thermo", 10, 1)))
            .unwrap();
        let up = s
            .hsm
            .import(&oem.package(&s.certs, &vendor.root, &spec("thermo", 5, 2)))
            .unwrap();
        assert!(!up.created);
        assert_eq!(s.hsm.products().unwrap()[0].ordered, 15);
        let changed = EXAMPLE_TEMPLATE.replace("Sensors", "Actuators");
        let p = oem.package(&s.certs, &vendor.root, &spec("thermo", 5, 3).template(&changed));
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
        let (_, s, oem) = thermo_site(dir, count);
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
                        match hsm.issue_direct(&pk("acme/thermo"), std::slice::from_ref(d)) {
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
        match s.hsm.issue_direct(&pk("acme/thermo"), &batch) {
            Err(IssueError::CountExhausted {
                remaining: 5,
                asked: 6,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(s.hsm.issue_direct(&pk("acme/thermo"), &batch[..5]).unwrap().len(), 5);
        assert_eq!(s.hsm.products().unwrap()[0].remaining, 0);
    }

    #[test]
    fn a_device_issued_before_gets_its_certificate_again_without_spending() {
        let t = tempfile::tempdir().unwrap();
        let (s, _) = ready(t.path(), 3);
        let d = device(9);
        let first = s
            .hsm
            .issue_direct(&pk("acme/thermo"), std::slice::from_ref(&d))
            .unwrap()
            .remove(0);
        let again = s
            .hsm
            .issue_direct(&pk("acme/thermo"), std::slice::from_ref(&d))
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
            s.hsm.issue_direct(&pk("acme/thermo"), &[other]),
            Err(IssueError::BadRequest { .. })
        ));
        assert!(s
            .hsm
            .certificate_for(&pk("acme/thermo"), &d.uid)
            .unwrap()
            .is_some());
    }

    #[test]
    fn sequential_serials_come_from_the_package_range() {
        let t = tempfile::tempdir().unwrap();
        let (vendor, s, oem) = acme_site(t.path());
        let range = SerialRange {
            first: 5000,
            last: 5009,
        };
        let p = oem.package(&s.certs, &vendor.root, &spec("seq", 10, 1).serials(range));
        s.hsm.import(&p).unwrap();
        let key = ProductKey::new(oem.id, ProductId::new("seq").unwrap());
        let a = s
            .hsm
            .issue_direct(&key, &(0..4).map(device).collect::<Vec<_>>())
            .unwrap();
        let b = s
            .hsm
            .issue_direct(&key, &(4..10).map(device).collect::<Vec<_>>())
            .unwrap();
        let serials: Vec<u64> = a
            .iter()
            .chain(&b)
            .map(|i| i.serial.to_u64().unwrap())
            .collect();
        assert_eq!(serials, (5000..5010).collect::<Vec<_>>());
    }

    /// Jobs reserve count from the product and spend it from their reservations, interleaved
    /// with the operator's direct issuance: sequential serials still start at the range's first
    /// and never repeat.
    #[test]
    fn sequential_serials_ignore_job_reservations() {
        let t = tempfile::tempdir().unwrap();
        let (vendor, s, oem) = acme_site(t.path());
        let range = SerialRange { first: 700, last: 709 };
        let p = oem.package(&s.certs, &vendor.root, &spec("seq", 10, 1).serials(range));
        s.hsm.import(&p).unwrap();
        let a = s.hsm.reserve(job("hsm-1", "job-a", "acme/seq", 6)).unwrap();
        let first = s.hsm.issue(&a, &(0..3).map(device).collect::<Vec<_>>()).unwrap();
        let b = s.hsm.reserve(job("hsm-1", "job-b", "acme/seq", 3)).unwrap();
        let second = s.hsm.issue(&b, &(3..6).map(device).collect::<Vec<_>>()).unwrap();
        s.hsm.close(a).unwrap();
        let third = s.hsm.issue_direct(&pk("acme/seq"), &(6..10).map(device).collect::<Vec<_>>()).unwrap();
        let serials: Vec<u64> = first
            .iter()
            .chain(&second)
            .chain(&third)
            .map(|i| i.serial.to_u64().unwrap())
            .collect();
        assert_eq!(serials, (700..710).collect::<Vec<_>>());
        assert!(s.hsm.products().unwrap().iter().all(|p| !p.product.to_string().contains(':')));
    }

    #[test]
    fn an_unknown_product_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let (s, _) = ready(t.path(), 3);
        assert!(matches!(
            s.hsm.issue_direct(&pk("acme/nope"), &[device(1)]),
            Err(IssueError::UnknownProduct { .. })
        ));
    }
}


/// The firmware family key: in the package wrapped for the HSM, in the token as a distribution
/// key, out of it only wrapped to a key the HSM certified for the product.
mod family_key {
    use super::*;
    use trustfab_token::{pkcs8_public_key, unwrap_with, KeyUsage, WrappedKey};
    use trustfab_types::SecretKeyDer;

    /// A device whose private key the test keeps, to play the device's unwrap.
    fn device_with_key(i: u32) -> (DeviceKey, SecretKeyDer) {
        let k = SoftKey::generate(Curve::P256).unwrap();
        let mut uid = vec![0x05, 0xee];
        uid.extend_from_slice(&i.to_be_bytes());
        let d = DeviceKey {
            uid: DeviceUid::new(&uid).unwrap(),
            public_key: PublicKey::from_point(Curve::P256, k.public_point()).unwrap(),
        };
        (d, k.secret_pkcs8_der().unwrap())
    }

    #[test]
    fn the_family_key_goes_only_to_certified_devices_and_unwraps_only_there() {
        let t = tempfile::tempdir().unwrap();
        let (vendor, s, oem) = acme_site(t.path());
        let fw = Fw::new();
        s.hsm
            .import(&oem.package(&s.certs, &vendor.root, &spec("thermo", 10, 1).firmware(&fw)))
            .unwrap();
        let got = s.hsm.firmware(&pk("acme/thermo")).unwrap().unwrap();
        assert_eq!(got.family, fw.family);
        assert_eq!(got.boot_key_hash, fw.boot_key_hash);
        assert_eq!(got.family_key, Some(fw.family_point()));

        let (d1, k1) = device_with_key(1);
        let (d2, k2) = device_with_key(2);
        s.hsm.issue_direct(&pk("acme/thermo"), std::slice::from_ref(&d1)).unwrap();
        let blob = s.hsm.family_key_for(&pk("acme/thermo"), &d1.uid).unwrap();
        let wrapped = WrappedKey::from_bytes(&blob).unwrap();
        assert_eq!(
            wrapped.info(),
            trustfab_hsm::family_delivery_info(&pk("acme/thermo"), &d1.uid)
        );
        let family = unwrap_with(&k1, &wrapped).unwrap();
        assert_eq!(
            pkcs8_public_key(&family).unwrap().point(),
            fw.family_point().as_slice()
        );
        // Another device's key cannot unwrap it...
        assert!(unwrap_with(&k2, &wrapped).is_err());
        // ...and the HSM wraps nothing for a device it did not certify.
        match s.hsm.family_key_for(&pk("acme/thermo"), &d2.uid) {
            Err(IssueError::NotIssued { .. }) => {}
            other => panic!("{other:?}"),
        }
        // A second delivery to the same device is to the same certified key.
        let again = WrappedKey::from_bytes(&s.hsm.family_key_for(&pk("acme/thermo"), &d1.uid).unwrap())
            .unwrap();
        unwrap_with(&k1, &again).unwrap();
        assert_ne!(again.ephemeral_point(), wrapped.ephemeral_point());
    }

    #[test]
    fn a_product_without_a_family_key_has_none_to_give() {
        let t = tempfile::tempdir().unwrap();
        let (vendor, s, oem) = acme_site(t.path());
        s.hsm
            .import(&oem.package(&s.certs, &vendor.root, &spec("plain", 10, 1)))
            .unwrap();
        let signed_only = Fw {
            family_key: None,
            ..Fw::new()
        };
        s.hsm
            .import(&oem.package(
                &s.certs,
                &vendor.root,
                &spec("signed", 10, 2).firmware(&signed_only),
            ))
            .unwrap();
        assert_eq!(s.hsm.firmware(&pk("acme/plain")).unwrap(), None);
        assert_eq!(
            s.hsm.firmware(&pk("acme/signed")).unwrap().unwrap().family_key,
            None
        );
        for product in [pk("acme/plain"), pk("acme/signed")] {
            let (d, _) = device_with_key(1);
            s.hsm.issue_direct(&product, std::slice::from_ref(&d)).unwrap();
            match s.hsm.family_key_for(&product, &d.uid) {
                Err(IssueError::NoFamilyKey { .. }) => {}
                other => panic!("{product}: {other:?}"),
            }
        }
    }

    /// Inside the token the family key is a distribution key: sensitive, extractable only by
    /// wrapping, and it signs nothing.
    #[test]
    fn the_family_key_is_a_sensitive_distribution_key_in_the_token() {
        let t = tempfile::tempdir().unwrap();
        let (vendor, s, oem) = acme_site(t.path());
        s.hsm
            .import(&oem.package(
                &s.certs,
                &vendor.root,
                &spec("thermo", 10, 1).firmware(&Fw::new()),
            ))
            .unwrap();
        drop(s);
        let token = open_token(t.path(), BACKEND, false);
        let label = trustfab_hsm::family_key_label(&pk("acme/thermo")).unwrap();
        let h = token.find(&label).unwrap().unwrap();
        let info = token.info(h).unwrap();
        assert_eq!(info.usage, KeyUsage::Distribute);
        assert!(info.sensitive && info.extractable);
        assert!(token.sign(h, b"anything").is_err());
    }

    #[test]
    fn a_family_key_bound_to_another_package_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let (vendor, s, oem) = acme_site(t.path());
        let fw = Fw {
            info: Some(trustfab_hsm::family_wrap_info(&[9; 16], &trustfab_types::Fingerprint::new([0; 32]))),
            ..Fw::new()
        };
        match s
            .hsm
            .import(&oem.package(&s.certs, &vendor.root, &spec("thermo", 10, 1).firmware(&fw)))
        {
            Err(ImportError::Contents(m)) => assert!(m.contains("family key"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(s.hsm.products().unwrap().is_empty());
    }

    #[test]
    fn a_top_up_may_not_change_the_firmware() {
        let t = tempfile::tempdir().unwrap();
        let (vendor, s, oem) = acme_site(t.path());
        let fw = Fw::new();
        s.hsm
            .import(&oem.package(&s.certs, &vendor.root, &spec("thermo", 10, 1).firmware(&fw)))
            .unwrap();
        // The same firmware, wrapped afresh: a top-up.
        s.hsm
            .import(&oem.package(&s.certs, &vendor.root, &spec("thermo", 5, 2).firmware(&fw)))
            .unwrap();
        let other_key = Fw {
            family: fw.family.clone(),
            boot_key_hash: fw.boot_key_hash,
            ..Fw::new()
        };
        let other_boot = Fw {
            boot_key_hash: [0x43; 32],
            family_key: fw.family_key,
            ..Fw::new()
        };
        for (id, changed) in [(3, &other_key), (4, &other_boot)] {
            match s
                .hsm
                .import(&oem.package(
                    &s.certs,
                    &vendor.root,
                    &spec("thermo", 5, id).firmware(changed),
                ))
            {
                Err(ImportError::ProductConflict { what, .. }) => {
                    assert!(what.starts_with("firmware"), "{what}");
                }
                other => panic!("{other:?}"),
            }
        }
        // Dropping the firmware is a change too.
        match s.hsm.import(&oem.package(&s.certs, &vendor.root, &spec("thermo", 5, 5))) {
            Err(ImportError::ProductConflict { what, .. }) => assert!(what.starts_with("firmware")),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.hsm.products().unwrap()[0].ordered, 15);
    }
}

/// The HSM alone owns the count: a job's quantity moves from its product to its reservation,
/// issuance spends only from the reservation, and close gives back exactly what was not spent,
/// however many callers race on it.
mod reservation {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use trustfab_hsm::{JobOpError, Reservation};

    fn thermo(dir: &Path, count: u64) -> Site {
        thermo_site(dir, count).1
    }

    fn counter(s: &Site, key: &str) -> (u64, u64) {
        let c = s.ledger.counter(key).unwrap().unwrap();
        (c.total, c.issued)
    }

    /// Certificates on record for `job`.
    fn certificates_of(s: &Site, job: &str) -> u64 {
        let mut n = 0;
        for r in s.ledger.records(1) {
            let r = r.unwrap();
            if r.kind == trustfab_ledger::Kind::CertificateIssued {
                let rec = trustfab_hsm::IssuanceRecord::decode(&r.body).unwrap();
                if rec.job.as_ref().map(JobId::as_str) == Some(job) {
                    n += 1;
                }
            }
        }
        n
    }

    static NEXT_DEVICE: AtomicU32 = AtomicU32::new(1_000_000);

    fn fresh(n: usize) -> Vec<DeviceKey> {
        (0..n)
            .map(|_| device(NEXT_DEVICE.fetch_add(1, Ordering::Relaxed)))
            .collect()
    }

    /// Issues batches of `batch` within `r` until the HSM says the reservation is used up or
    /// closed; returns how many certificates it was given.
    fn issue_until_refused(s: &Site, r: &Reservation, batch: usize) -> u64 {
        issue_until_refused_pausing(s, r, batch, std::time::Duration::ZERO)
    }

    /// The same, pausing between batches as a station does while its sockets work.
    fn issue_until_refused_pausing(
        s: &Site,
        r: &Reservation,
        batch: usize,
        pause: std::time::Duration,
    ) -> u64 {
        let mut got = 0;
        let mut cap = batch;
        loop {
            std::thread::sleep(pause);
            match s.hsm.issue(r, &fresh(cap)) {
                Ok(v) => got += v.len() as u64,
                Err(IssueError::ReservationExhausted { remaining, .. }) if remaining > 0 => {
                    cap = usize::try_from(remaining).unwrap();
                }
                Err(IssueError::ReservationExhausted { .. } | IssueError::JobClosed { .. }) => {
                    return got
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn a_reservation_moves_the_quantity_to_the_job_and_back_at_close() {
        let t = tempfile::tempdir().unwrap();
        let s = thermo(t.path(), 100);
        let r = s.hsm.reserve(job("hsm-1", "job-a", "acme/thermo", 10)).unwrap();
        assert_eq!(counter(&s, "acme/thermo"), (100, 10));
        assert_eq!(counter(&s, "job:job-a"), (10, 0));
        assert_eq!(s.hsm.issue(&r, &fresh(4)).unwrap().len(), 4);
        // The product is not spent again: the job's units are.
        assert_eq!(counter(&s, "acme/thermo"), (100, 10));
        let st = s.hsm.job_status(&r).unwrap();
        assert_eq!((st.issued.len(), st.remaining), (4, 6));
        let closed = s.hsm.close(r).unwrap();
        assert_eq!((closed.issued, closed.credited), (4, 6));
        assert_eq!(counter(&s, "acme/thermo"), (100, 4));
        assert_eq!(counter(&s, "job:job-a"), (10, 10), "drained at close");
        assert_eq!(certificates_of(&s, "job-a"), 4);
        // The close is followed by a checkpoint the HSM identity signed.
        let head = s.ledger.head().unwrap().seq;
        let last: Vec<_> = s.ledger.records(head - 2).map(|r| r.unwrap().kind).collect();
        assert_eq!(
            last,
            vec![
                trustfab_ledger::Kind::JobClosed,
                trustfab_ledger::Kind::Seal,
                trustfab_ledger::Kind::Checkpoint
            ]
        );
        let verified = s.hsm.verify_ledger().unwrap();
        assert_eq!(verified.last_checkpoint, Some(head), "{verified:?}");
        let p = s.hsm.products().unwrap();
        assert_eq!(p.len(), 1, "job counters are not products: {p:?}");
        assert_eq!((p[0].ordered, p[0].issued, p[0].remaining), (100, 4, 96));
    }

    #[test]
    fn eight_threads_on_one_reservation_spend_at_most_its_quantity() {
        let t = tempfile::tempdir().unwrap();
        let s = thermo(t.path(), 200);
        let r = s.hsm.reserve(job("hsm-1", "job-a", "acme/thermo", 50)).unwrap();
        let bytes = r.package().as_bytes().to_vec();
        let got: u64 = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let (s, bytes) = (&s, &bytes);
                    scope.spawn(move || {
                        // Each thread is its own station: it attaches to the job from its package.
                        let mine = s.hsm.attach(bytes).unwrap();
                        issue_until_refused(s, &mine, 3)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(got, 50);
        assert_eq!(certificates_of(&s, "job-a"), 50);
        assert_eq!(counter(&s, "job:job-a"), (50, 50));
        let closed = s.hsm.close(r).unwrap();
        assert_eq!((closed.issued, closed.credited), (50, 0));
        assert_eq!(counter(&s, "acme/thermo"), (200, 50));
    }

    #[test]
    fn a_close_during_issuance_credits_back_only_what_was_not_spent() {
        let t = tempfile::tempdir().unwrap();
        let s = thermo(t.path(), 400);
        let r = s.hsm.reserve(job("hsm-1", "job-a", "acme/thermo", 400)).unwrap();
        let bytes = r.package().as_bytes().to_vec();
        let (got, closed) = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let (s, bytes) = (&s, &bytes);
                    scope.spawn(move || {
                        let mine = s.hsm.attach(bytes).unwrap();
                        issue_until_refused_pausing(s, &mine, 2, std::time::Duration::from_millis(5))
                    })
                })
                .collect();
            // Close once issuance is well under way.
            while counter(&s, "job:job-a").1 < 20 {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            let closed = s.hsm.close(r).unwrap();
            let got: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
            (got, closed)
        });
        assert!(got < 400, "the close landed after everything was issued");
        assert_eq!(certificates_of(&s, "job-a"), got);
        assert_eq!(closed.issued, got, "the close saw every certificate before it");
        assert_eq!(closed.credited + got, 400);
        assert_eq!(counter(&s, "acme/thermo"), (400, got));
        // A job for the rest fits exactly; one more unit does not.
        let rest = 400 - got;
        let e = s
            .hsm
            .reserve(job("hsm-1", "job-b", "acme/thermo", rest + 1))
            .unwrap_err();
        assert!(matches!(e, JobOpError::OverRemaining { .. }), "{e}");
        let b = s.hsm.reserve(job("hsm-1", "job-b", "acme/thermo", rest)).unwrap();
        assert_eq!(issue_until_refused(&s, &b, 64), rest);
        s.hsm.close(b).unwrap();
        assert_eq!(counter(&s, "acme/thermo"), (400, 400));
        s.hsm.verify_ledger().unwrap();
    }

    #[test]
    fn eight_jobs_racing_on_one_product_never_pass_its_count() {
        let t = tempfile::tempdir().unwrap();
        let s = thermo(t.path(), 100);
        let got: u64 = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let s = &s;
                    scope.spawn(move || {
                        match s.hsm.reserve(job("hsm-1", &format!("job-{i}"), "acme/thermo", 30)) {
                            Ok(r) => {
                                let n = issue_until_refused(s, &r, 4);
                                s.hsm.close(r).unwrap();
                                n
                            }
                            Err(JobOpError::OverRemaining { .. }) => 0,
                            Err(e) => panic!("{e}"),
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(got, 90, "three jobs of 30 fit in 100");
        assert_eq!(counter(&s, "acme/thermo"), (100, 90));
        s.hsm.verify_ledger().unwrap();
    }

    #[test]
    fn a_closed_or_foreign_reservation_cannot_issue() {
        let t = tempfile::tempdir().unwrap();
        let s = thermo(t.path(), 100);
        let r = s.hsm.reserve(job("hsm-1", "job-a", "acme/thermo", 10)).unwrap();
        let again = s.hsm.attach(r.package().as_bytes()).unwrap();
        s.hsm.close(r).unwrap();
        match s.hsm.issue(&again, &fresh(1)) {
            Err(IssueError::JobClosed { job, .. }) => assert_eq!(job.as_str(), "job-a"),
            other => panic!("{other:?}"),
        }
        let e = s.hsm.close(again).unwrap_err();
        assert!(matches!(e, JobOpError::Closed { .. }), "{e}");
        // A job for another HSM is not reserved here.
        let e = s.hsm.reserve(job("hsm-2", "job-b", "acme/thermo", 1)).unwrap_err();
        assert!(matches!(e, JobOpError::WrongHsm { .. }), "{e}");

        // Another HSM with the same product: its reservation is refused here, and its package
        // does not open here.
        let t2 = tempfile::tempdir().unwrap();
        let vendor = Vendor::new(NOW);
        // (A soft token: one SoftHSM2 at a time per test process.)
        let other = site(t2.path(), "hsm-1", &vendor, Backend::Soft);
        other
            .hsm
            .import(&Oem::new("acme", NOW).package(&other.certs, &vendor.root, &spec("thermo", 10, 1)))
            .unwrap();
        let foreign = other.hsm.reserve(job("hsm-1", "job-c", "acme/thermo", 5)).unwrap();
        match s.hsm.issue(&foreign, &fresh(1)) {
            Err(IssueError::ForeignReservation { job }) => assert_eq!(job.as_str(), "job-c"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.hsm.job_status(&foreign),
            Err(JobOpError::Issue(IssueError::ForeignReservation { .. }))
        ));
        let e = s.hsm.attach(foreign.package().as_bytes()).unwrap_err();
        assert_eq!(e.to_string(), "job package signature does not verify");
        assert_eq!(counter(&s, "acme/thermo"), (100, 0));
    }
}

mod checkpoints {
    use super::*;

    #[test]
    fn a_checkpoint_is_made_each_time_the_ledger_passes_the_interval() {
        let t = tempfile::tempdir().unwrap();
        let (_, s, _) = thermo_site(t.path(), 100);
        s.hsm.set_checkpoint_every(10);
        let mut crossings = 0;
        for i in 0..6u32 {
            let before = s.ledger.head().unwrap().seq;
            s.hsm
                .issue_direct(&pk("acme/thermo"), &[device(2 * i), device(2 * i + 1)])
                .unwrap();
            // The batch's records: two issuances and the seal.
            if before / 10 != (before + 3) / 10 {
                crossings += 1;
            }
        }
        let checkpoints: Vec<u64> = s
            .ledger
            .records(1)
            .map(|r| r.unwrap())
            .filter(|r| r.kind == trustfab_ledger::Kind::Checkpoint)
            .map(|r| r.seq)
            .collect();
        assert!(crossings >= 1);
        assert_eq!(checkpoints.len(), crossings, "{checkpoints:?}");
        let v = s.hsm.verify_ledger().unwrap();
        assert_eq!(v.checkpoints, u64::try_from(crossings).unwrap());
        assert_eq!(v.last_checkpoint, checkpoints.last().copied());
    }
}
