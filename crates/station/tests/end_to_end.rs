//! A job of 1,000 devices: every device locked and verified, a sample of certificates checked by
//! `openssl verify`, the ledger's counts matching.

use super::*;
use trustfab_device::Device;
use trustfab_test_support::openssl;

#[test]
fn a_job_of_1000_devices_locks_every_device_and_the_ledger_counts_match() {
    let dir = tempfile::tempdir().unwrap();
    let s = site(dir.path(), 1500);
    let job = create(&s, "job-1000", 1000);
    let mut v = vendor();
    let (sum, mut fleet) = run_fleet(&s, &job, fleet(&mut v, 1000), Faults::none(), 8);
    assert!(sum.complete(), "{sum:?}");
    assert_eq!(
        (sum.good, sum.issued, sum.good_this_run),
        (1000, 1000, 1000)
    );
    assert!(sum.failures.is_empty(), "{:?}", sum.failures);
    assert_eq!(sum.latencies_us.len(), 1000);

    let ledger = &s.ledger;
    let a = audit(&**ledger, s.hsm.identity_point(), "job-1000");
    assert_eq!(a.issued.len(), 1000);
    assert_eq!(a.good.len(), 1000);
    assert_eq!(a.good_records, 1000);
    assert!(a.failed.is_empty());
    assert_eq!(ledger.counter(PRODUCT).unwrap().unwrap().issued, 1000);

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root.pem");
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&root, trustfab_pki::pem::encode("CERTIFICATE", &s.root)).unwrap();
    std::fs::write(&ca, trustfab_pki::pem::encode("CERTIFICATE", &s.device_ca)).unwrap();
    let uids: Vec<_> = fleet.uids().cloned().collect();
    for (i, uid) in uids.iter().enumerate() {
        let d = fleet.get_mut(uid).unwrap();
        assert!(d.lock_state().unwrap().data, "device {i} is not locked");
        let cert = d.read_slot(10).unwrap();
        assert_eq!(d.read_slot(11).unwrap(), s.device_ca);
        assert_eq!(d.read_slot(12).unwrap(), s.root);
        assert!(a.good.contains(uid.as_bytes()));
        // A locked device refuses to have its certificate replaced.
        assert!(d.write_slot(10, b"x").is_err());
        if i % 50 == 0 {
            let leaf = tmp.path().join(format!("dev{i}.pem"));
            std::fs::write(&leaf, trustfab_pki::pem::encode("CERTIFICATE", &cert)).unwrap();
            let out = openssl::verify(&root, Some(&ca), None, &[], &leaf);
            assert!(out.ok, "openssl verify: {}", out.output);
        }
    }

    let closed = close(&s, &job);
    assert_eq!(
        (closed.issued, closed.good, closed.credited),
        (1000, 1000, 0)
    );
    let c = ledger.counter(PRODUCT).unwrap().unwrap();
    assert_eq!((c.issued, c.remaining()), (1000, 500));
}
