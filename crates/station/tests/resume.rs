//! Devices put back after a failure resume with their recorded certificate; stopped runs resume.

use super::*;
use std::sync::atomic::Ordering;
use trustfab_device::{Device, Fault, Trigger};

#[test]
fn a_device_put_back_after_a_failure_resumes_without_a_second_unit() {
    let dir = tempfile::tempdir().unwrap();
    let s = site(dir.path(), 100);
    let job = create(&s, "job-r", 20);
    let mut v = vendor();
    // Command 5 of every part is the certificate write, after issuance (UID, key slot, locks,
    // key generation before it): it fails once.
    let faults = Faults {
        rules: vec![(Fault::WriteError, Trigger::AtOperation(5))],
        seed: 1,
    };
    let supply = FleetSupply::new(fleet(&mut v, 10), faults);
    let mut o = options(3);
    o.max_attempts = 1;
    let first = run(&s.hsm, &job, &supply, &o).unwrap();
    assert_eq!(
        (first.good, first.issued, first.failed_after_issue),
        (0, 10, 10)
    );
    for f in &first.failures {
        assert_eq!(f.step, trustfab_station::Step::WriteCert);
        assert_eq!(
            f.reason,
            "write: write to the device failed; nothing was changed"
        );
        assert!(f.serial.is_some());
    }
    let serials: HashMap<String, String> = first
        .failures
        .iter()
        .map(|f| (f.uid.clone().unwrap(), f.serial.clone().unwrap()))
        .collect();
    let spent = s.ledger.counter(PRODUCT).unwrap().unwrap().issued;

    // Put back into sockets without faults: the same certificates, no count spent.
    let supply = FleetSupply::new(supply.into_fleet(), Faults::none());
    let second = run(&s.hsm, &job, &supply, &options(3)).unwrap();
    assert_eq!((second.good, second.issued, second.resumed), (10, 10, 10));
    assert_eq!(s.ledger.counter(PRODUCT).unwrap().unwrap().issued, spent);
    let mut fleet = supply.into_fleet();
    let uids: Vec<_> = fleet.uids().cloned().collect();
    let a = audit(&*s.ledger, s.hsm.identity_point(), "job-r");
    for u in uids {
        let d = fleet.get_mut(&u).unwrap();
        assert!(d.lock_state().unwrap().data);
        assert_eq!(
            hex(a.issued.get(u.as_bytes()).unwrap()),
            *serials.get(&u.to_hex()).unwrap()
        );
    }
}

#[test]
fn a_stopped_run_resumes_and_ends_with_exactly_the_quantity() {
    let dir = tempfile::tempdir().unwrap();
    let s = site(dir.path(), 100);
    let job = create(&s, "job-s", 40);
    let mut v = vendor();
    let supply = FleetSupply::new(fleet(&mut v, 60), Faults::none());
    let mut o = options(4);
    let stop = o.stop.clone();
    o.progress = Some(Arc::new(move |p: &trustfab_station::Progress| {
        if p.good >= 10 {
            stop.store(true, Ordering::Relaxed);
        }
    }));
    let first = run(&s.hsm, &job, &supply, &o).unwrap();
    assert!(first.stopped);
    assert!(first.good >= 10 && first.good < 40, "{first:?}");
    let second = run(&s.hsm, &job, &supply, &options(4)).unwrap();
    assert!(second.complete());
    assert_eq!((second.good, second.issued), (40, 40));
    assert_eq!(first.good_this_run + second.good_this_run, 40);
    assert_eq!(second.already_good, 0, "good devices were not put back");
    let a = audit(&*s.ledger, s.hsm.identity_point(), "job-s");
    assert_eq!((a.good.len(), a.issued.len()), (40, 40));
    close(&s, &job);
    assert_eq!(s.ledger.counter(PRODUCT).unwrap().unwrap().issued, 40);
}

#[test]
fn a_blank_part_whose_uid_has_a_certificate_is_refused_alone_and_its_batch_goes_on() {
    use trustfab_hsm::DeviceKey;
    let dir = tempfile::tempdir().unwrap();
    let s = site(dir.path(), 100);
    let job = create(&s, "job-b", 20);
    let mut v = vendor();
    let fleet = fleet(&mut v, 12);
    // The HSM already issued a certificate for one UID, for a key the part never had (its
    // key slot is blank): the station does not ask the HSM about a blank part, so the refusal
    // comes from the issuance, in a batch with other parts.
    let taken = fleet.uids().nth(5).cloned().unwrap();
    let other = SoftKey::generate(Curve::P256).unwrap();
    let first = s
        .hsm
        .issue(
            &job,
            &[DeviceKey {
                uid: taken.clone(),
                public_key: PublicKey::from_point(Curve::P256, other.public_point()).unwrap(),
            }],
        )
        .unwrap();
    assert_eq!(first.len(), 1);
    let spent = s.ledger.counter("job:job-b").unwrap().unwrap().issued;

    let supply = FleetSupply::new(fleet, Faults::none());
    let mut o = options(12);
    o.batch = 12;
    let out = run(&s.hsm, &job, &supply, &o).unwrap();
    assert_eq!(out.good, 11, "{:?}", out.failures);
    let refused: Vec<_> = out
        .failures
        .iter()
        .filter(|f| f.uid.as_deref() == Some(taken.to_hex().as_str()))
        .collect();
    assert!(!refused.is_empty());
    for f in refused {
        assert_eq!(f.step, trustfab_station::Step::Issue);
        assert!(
            f.reason.contains("already issued for another public key"),
            "{}",
            f.reason
        );
    }
    // Eleven units for the eleven others, none for the refused part.
    // The job has twelve certificates: the one issued first and the eleven of the run.
    assert_eq!(out.issued, 12);
    assert_eq!(
        s.ledger.counter("job:job-b").unwrap().unwrap().issued,
        spent + 11
    );
}
