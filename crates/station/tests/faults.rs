//! Sockets with 5% injected faults: every device ends good or failed with a reason, issued
//! certificates are good plus failed-after-issue, nothing over the count.

use super::*;

#[test]
fn with_5_percent_socket_faults_every_device_is_accounted_for() {
    let dir = tempfile::tempdir().unwrap();
    let s = site(dir.path(), 400);
    let job = create(&s, "job-faults", 300);
    let mut v = vendor();
    let fl = fleet(&mut v, 300);
    let uids: Vec<Vec<u8>> = fl.uids().map(|u| u.as_bytes().to_vec()).collect();
    let (sum, _) = run_fleet(&s, &job, fl, Faults::line(0.05, 42), 6);
    assert!(sum.failed_attempts > 0, "no fault fired: {sum:?}");

    let ledger = &s.ledger;
    let a = audit(&**ledger, s.hsm.identity_point(), "job-faults");
    let job_issued: HashSet<&Vec<u8>> = uids.iter().filter(|u| a.issued.contains_key(*u)).collect();
    let mut failed_after_issue = 0u64;
    for u in &uids {
        if a.good.contains(u) {
            assert!(a.issued.contains_key(u), "good without a certificate");
            continue;
        }
        // Not good: its last record is a final failure with a step and a reason.
        let f = a
            .failed
            .get(u)
            .unwrap_or_else(|| panic!("device {} unaccounted", hex(u)));
        assert!(!f.retry, "the last attempt of {} was to be retried", hex(u));
        assert!(!f.reason.is_empty() && (1..=7).contains(&f.step));
        if a.issued.contains_key(u) {
            failed_after_issue += 1;
            assert_eq!(
                f.serial.as_ref().map(|b| &b.0),
                a.issued.get(u),
                "serial of a failed device"
            );
        } else {
            assert!(f.serial.is_none());
        }
    }
    assert_eq!(
        job_issued.len() as u64,
        a.good.len() as u64 + failed_after_issue
    );
    assert_eq!(
        (sum.issued, sum.good, sum.failed_after_issue),
        (
            u64::try_from(job_issued.len()).unwrap(),
            u64::try_from(a.good.len()).unwrap(),
            failed_after_issue
        )
    );
    assert!(sum.issued <= 300);
    let c = ledger.counter(PRODUCT).unwrap().unwrap();
    assert!(c.issued <= c.total);
    let closed = close(&s, &job);
    assert_eq!(closed.issued, sum.issued);
    assert_eq!(ledger.counter(PRODUCT).unwrap().unwrap().issued, sum.issued);
}

#[test]
fn parts_made_on_demand_meet_new_faults_when_put_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = site(dir.path(), 100);
    let job = create(&s, "job-made", 100);
    let vendors = vec![vendor(), vendor()];
    let supply = trustfab_station::MadeSupply::new(
        vendors,
        DeviceKind::SecureElement,
        100,
        NOW,
        Faults::line(0.05, 7),
    );
    let sum = run(&s.hsm, &job, &supply, &options(4)).unwrap();
    // Every part ends good or with its last failure; retries are bounded per part.
    assert_eq!(sum.good + sum.failures.len() as u64, 100, "{sum:?}");
    assert!(
        sum.failed_attempts < 100 * 3 + 50,
        "{} attempts failed",
        sum.failed_attempts
    );
    assert_eq!(sum.issued, sum.good + sum.failed_after_issue);
}
