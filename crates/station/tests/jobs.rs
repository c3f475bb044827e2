//! Creating and closing jobs: the reservation, the refusals, the credit-back.

use super::*;
use trustfab_hsm::JobOpError;
use trustfab_station::RunError;

#[test]
fn creating_a_job_reserves_its_quantity_and_closing_credits_back_the_unused() {
    let dir = tempfile::tempdir().unwrap();
    let s = site(dir.path(), 100);
    let job = create(&s, "job-a", 10);
    let ledger = &s.ledger;
    let c = ledger.counter(PRODUCT).unwrap().unwrap();
    assert_eq!((c.total, c.issued, c.remaining()), (100, 10, 90));

    let mut v = vendor();
    let (sum, _) = run_fleet(&s, &job, fleet(&mut v, 4), Faults::none(), 2);
    assert_eq!((sum.good, sum.issued, sum.failed_after_issue), (4, 4, 0));
    assert!(!sum.complete());

    let closed = close(&s, &job);
    assert_eq!((closed.issued, closed.good, closed.credited), (4, 4, 6));
    let c = ledger.counter(PRODUCT).unwrap().unwrap();
    assert_eq!(
        (c.total, c.issued),
        (100, 4),
        "issued is exactly the certificates"
    );
    assert_eq!(c.issued + c.remaining(), c.total);
    let a = audit(&**ledger, s.hsm.identity_point(), "job-a");
    assert_eq!(a.issued.len(), 4);

    // A closed job neither runs nor closes again.
    let supply = FleetSupply::new(fleet(&mut v, 1), Faults::none());
    let e = run(&s.hsm, &job, &supply, &options(1)).unwrap_err();
    assert!(matches!(e, RunError::Job(JobOpError::Closed { .. })), "{e}");
    let e = s.hsm.close(attach(&s, &job)).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("job job-a is closed (ledger record"),
        "{e}"
    );
}

#[test]
fn a_job_over_the_remaining_count_or_with_a_taken_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = site(dir.path(), 20);
    create(&s, "job-a", 15);
    let e = s.hsm.reserve(spec("job-b", 6)).unwrap_err();
    assert!(matches!(
        e,
        JobOpError::OverRemaining {
            remaining: 5,
            asked: 6,
            ..
        }
    ));
    assert_eq!(
        e.to_string(),
        "job asks for 6 devices, product acme/thermo has 5 left"
    );
    let e = s.hsm.reserve(spec("job-a", 1)).unwrap_err();
    assert!(matches!(e, JobOpError::Exists { .. }), "{e}");
    let mut other = spec("job-c", 1);
    other.product = ProductKey::parse("acme/other").unwrap();
    let e = s.hsm.reserve(other).unwrap_err();
    assert_eq!(
        e.to_string(),
        "product acme/other is not imported in this HSM"
    );
    // Nothing of the refusals was reserved.
    assert_eq!(s.ledger.counter(PRODUCT).unwrap().unwrap().issued, 15);
}

#[test]
fn a_station_accepts_only_packages_signed_by_its_hsm() {
    let dir = tempfile::tempdir().unwrap();
    let s = site(dir.path(), 20);
    let job = create(&s, "job-a", 5);
    assert_eq!(attach(&s, &job).package(), job.package());
    // The same contents signed by another key.
    let forged =
        JobPackage::seal(job.spec().clone(), &SoftKey::generate(Curve::P256).unwrap()).unwrap();
    let e = s.hsm.attach(forged.as_bytes()).unwrap_err();
    assert_eq!(e.to_string(), "job package signature does not verify");
    // A package of a job the ledger does not know does not run.
    let signer = s.hsm.identity_signer().unwrap();
    let unknown = JobPackage::seal(spec("job-z", 5), &signer).unwrap();
    let e = s.hsm.attach(unknown.as_bytes()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "job job-z is not in the ledger (was it created here?)"
    );
}

#[test]
fn attestation_is_checked_when_the_job_requires_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = site(dir.path(), 20);
    let mut genuine = vendor();
    let mut sp = spec("job-att", 6);
    sp.attestation_root = Some(trustfab_formats::records::Bytes(
        genuine.root_der().to_vec(),
    ));
    sp.lock = LockPolicy::SlotsAndData;
    let job = s.hsm.reserve(sp).unwrap();
    let (sum, _) = run_fleet(&s, &job, fleet(&mut genuine, 3), Faults::none(), 2);
    assert_eq!(sum.good, 3);
    // Parts of another silicon vendor are refused at keygen, before any count is spent.
    let (sum, _) = run_fleet(&s, &job, fleet(&mut vendor(), 2), Faults::none(), 2);
    assert_eq!((sum.good, sum.issued), (3, 3));
    assert_eq!(sum.failures.len(), 2);
    for f in &sum.failures {
        assert_eq!(f.step, trustfab_station::Step::KeyGen);
        assert!(
            f.reason
                .starts_with("key attestation refused: attestation certificate does not validate"),
            "{}",
            f.reason
        );
        assert_eq!(f.serial, None);
    }
}
