//! The OEM's order sealed for one HSM, opened by a real HSM application (on the soft token,
//! with a SQLite ledger) as `trustfab-test-support`'s site does it: the package verifies, the
//! HSM it names imports it and issues from it, another HSM refuses it, and the HSM's report
//! verifies against the order at the OEM.

// Fixtures unwrap: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use trustfab_hsm::{DeviceKey, Hsm};
use trustfab_ledger_sqlite::SqliteStore;
use trustfab_oem::{Firmware, Order};
use trustfab_pki::template::EXAMPLE_TEMPLATE;
use trustfab_pki::{Curve, HsmCertificates, HsmIdentity, PublicKey, Signer, SoftKey};
use trustfab_test_support::site::{Oem, Vendor};
use trustfab_token_soft::{Argon2Cost, SoftToken};
use trustfab_types::{
    DeviceUid, Fingerprint, FixedClock, HsmId, Passphrase, ProductId, ProductKey, UnixTime,
};

const NOW: UnixTime = UnixTime(1_750_000_000);

/// An HSM `id` on a new soft token and SQLite ledger in `dir`, certified by `vendor`.
fn hsm(dir: &Path, id: &str, vendor: &Vendor) -> (Hsm, HsmCertificates) {
    let pass = || Passphrase::new("oem test passphrase".into()).unwrap();
    let path = dir.join(format!("{id}.token"));
    drop(SoftToken::create(&path, &pass(), Argon2Cost::new(8 * 1024, 1, 1).unwrap()).unwrap());
    let token = Arc::new(SoftToken::open(&path, &pass()).unwrap());
    let hsm_id = HsmId::new(id).unwrap();
    let certs = vendor.certify(&Hsm::init(&*token, &hsm_id).unwrap(), NOW);
    let ledger = Arc::new(SqliteStore::open(&dir.join(format!("{id}.sqlite"))).unwrap());
    let hsm = Hsm::open(
        token,
        ledger,
        Arc::new(FixedClock::new(NOW)),
        &hsm_id,
        Some(&certs),
    )
    .unwrap();
    (hsm, certs)
}

fn order(oem: &Oem, count: u64) -> Order {
    Order {
        package_id: [5; 16],
        oem_id: oem.id.clone(),
        product_id: ProductId::new("thermo").unwrap(),
        count,
        serial_range: None,
        not_before: UnixTime(NOW.0 - 60),
        not_after: UnixTime(NOW.0 + 86_400),
        template: EXAMPLE_TEMPLATE.into(),
        root_cert: oem.root.clone(),
        device_ca_cert: Some(oem.ca.clone()),
    }
}

fn device(uid: u8) -> DeviceKey {
    let key = SoftKey::generate(Curve::P256).unwrap();
    DeviceKey {
        uid: DeviceUid::new(&[uid; 9]).unwrap(),
        public_key: PublicKey::from_point(Curve::P256, key.public_point()).unwrap(),
    }
}

#[test]
fn a_sealed_order_verifies_and_opens_only_in_the_hsm_it_names() {
    let t = tempfile::tempdir().unwrap();
    let vendor = Vendor::new(NOW);
    let (target, certs) = hsm(t.path(), "hsm-a", &vendor);
    let (other, _) = hsm(t.path(), "hsm-b", &vendor);
    let oem = Oem::new("acme", NOW);
    let identity = HsmIdentity::validate(&certs, &vendor.root, NOW).unwrap();
    let family = SoftKey::generate(Curve::P256).unwrap();
    let firmware = Firmware {
        family: "thermo-mcu",
        boot_key_hash: [0x42; 32],
        family_key: Some(&family),
    };
    let package = order(&oem, 3)
        .seal_for(&identity, &oem.root_key, &oem.ca_key, Some(&firmware))
        .unwrap();

    // It verifies under the OEM root it carries and names this HSM.
    let verified = trustfab_formats::package::open(&package).unwrap();
    let c = verified.contents();
    assert_eq!(c.target_hsm, Fingerprint::new(identity.fingerprint));
    assert_eq!(c.root_cert, oem.root);
    assert_eq!(c.count, 3);
    let fw = c.firmware.as_ref().unwrap();
    assert_eq!(fw.family, "thermo-mcu");
    assert!(fw.wrapped_family_key.is_some());

    // Another HSM refuses it; the one it names imports it and signs with the unwrapped key.
    assert!(other.import(&package).is_err());
    let imported = target.import(&package).unwrap();
    let thermo = ProductKey::parse("acme/thermo").unwrap();
    assert_eq!(imported.product, thermo);
    let issued = target
        .issue_direct(&thermo, &[device(1), device(2)])
        .unwrap();
    assert_eq!(issued.len(), 2);
    for i in &issued {
        trustfab_pki::validate(
            &i.cert,
            &trustfab_pki::Policy {
                root: &oem.root,
                intermediates: std::slice::from_ref(&oem.ca),
                crls: &[],
                now: NOW,
                purpose: trustfab_pki::Purpose::ClientAuth,
            },
        )
        .unwrap();
    }

    // The HSM's report verifies at the OEM against the order.
    let mut report = Vec::new();
    target.report(&thermo, &mut report).unwrap();
    let s = trustfab_oem::report::verify(
        report.as_slice(),
        std::slice::from_ref(&package),
        &vendor.root,
        NOW,
    )
    .unwrap();
    assert_eq!(s.certificates, 2);
    assert_eq!(s.totals.ordered, 3);
    assert_eq!(s.totals.remaining, 1);
    // Against a rogue vendor root, or with an order that is not a package, it is refused.
    let rogue = Vendor::new(NOW);
    assert!(matches!(
        trustfab_oem::report::verify(
            report.as_slice(),
            std::slice::from_ref(&package),
            &rogue.root,
            NOW
        ),
        Err(trustfab_oem::Error::Report(_))
    ));
    assert!(matches!(
        trustfab_oem::report::verify(
            report.as_slice(),
            &[package, b"not a package".to_vec()],
            &vendor.root,
            NOW
        ),
        Err(trustfab_oem::Error::Order { index: 1, .. })
    ));
}

#[test]
fn sealing_refuses_a_foreign_root_key_and_the_hsm_refuses_another_root_for_a_known_oem() {
    let t = tempfile::tempdir().unwrap();
    let vendor = Vendor::new(NOW);
    let (target, certs) = hsm(t.path(), "hsm-a", &vendor);
    let oem = Oem::new("acme", NOW);
    let impostor = Oem::new("acme", NOW);
    let identity = HsmIdentity::validate(&certs, &vendor.root, NOW).unwrap();
    // Sealing with a key that is not the order's root is refused: no package comes out.
    let e = order(&oem, 3)
        .seal_for(&identity, &impostor.root_key, &oem.ca_key, None)
        .unwrap_err();
    assert!(
        matches!(e, trustfab_oem::Error::Package(_)),
        "not refused by the package: {e:?}"
    );
    // An order whose root the impostor swapped in imports only as that impostor's product,
    // never under the root the HSM already bound to acme.
    let genuine = order(&oem, 3)
        .seal_for(&identity, &oem.root_key, &oem.ca_key, None)
        .unwrap();
    target.import(&genuine).unwrap();
    let mut forged = order(&impostor, 3);
    forged.package_id = [6; 16];
    let forged = forged
        .seal_for(&identity, &impostor.root_key, &impostor.ca_key, None)
        .unwrap();
    assert!(target.import(&forged).is_err());
    assert_eq!(target.products().unwrap().len(), 1);
}
