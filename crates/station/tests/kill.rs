//! The station process is killed with SIGKILL at random moments and resumed, at least 20 times;
//! after every resume the count is not exceeded, every certificate belongs to a part of the
//! tray, and every good record stands for a locked part holding that certificate. The last run
//! ends with exactly the quantity.

use super::*;
use std::time::{Duration, Instant};
use trustfab_device::{file, Device};
use trustfab_station::FileSupply;
use trustfab_types::Rng;

const CHILD_ENV: &str = "TRUSTFAB_STATION_KILL_CHILD";
const QUANTITY: u64 = 300;
const PARTS: usize = 320;
const KILLS: usize = 20;

fn random_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    trustfab_types::OsRng.fill(&mut b).unwrap();
    u64::from_le_bytes(b) % n
}

/// The child: the station, run on the tray of device files until the job is done.
#[test]
#[ignore = "child process of sigkill_at_random_moments_then_resume_ends_with_exactly_the_quantity"]
fn child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = Path::new(&dir);
    let hsm = open_site(dir);
    let job = hsm
        .attach(&std::fs::read(dir.join("job.bin")).unwrap())
        .unwrap();
    let supply = FileSupply::open(&dir.join("parts"), Faults::none()).unwrap();
    let sum = run(&hsm, &job, &supply, &options(4)).unwrap();
    for f in &sum.failures {
        println!("FAILED {f:?}");
    }
    println!("DONE good={} issued={}", sum.good, sum.issued);
}

fn run_child(dir: &Path, kill_after: Option<Duration>) -> Vec<String> {
    let dir = dir.to_string_lossy();
    trustfab_test_support::child::run("kill::child", &[(CHILD_ENV, dir.as_ref())], kill_after)
}

/// The invariants after any run, killed or not. Returns (issued, good) of the job.
fn check(dir: &Path, job: &[u8], parts: &HashMap<Vec<u8>, std::path::PathBuf>) -> (u64, u64) {
    let (hsm, ledger) = open_site_with_ledger(dir);
    let a = audit(&*ledger, hsm.identity_point(), "job-kill");
    let c = ledger.counter(PRODUCT).unwrap().unwrap();
    assert!(c.issued <= c.total, "over the count: {c:?}");
    let st = hsm.job_status(&hsm.attach(job).unwrap()).unwrap();
    assert!(
        st.issued.len() as u64 <= QUANTITY,
        "the job has {} certificates",
        st.issued.len()
    );
    // The product spent the whole reservation; the reservation spent one unit per certificate.
    assert_eq!(c.issued, QUANTITY);
    assert_eq!(st.remaining, QUANTITY - a.issued.len() as u64);
    for uid in a.issued.keys() {
        assert!(
            parts.contains_key(uid),
            "a certificate for a part not in the tray"
        );
        assert!(st.issued.contains(uid));
    }
    for uid in &a.good {
        let serial = a
            .issued
            .get(uid)
            .expect("a good part without a certificate");
        let mut d = file::load(parts.get(uid).unwrap()).unwrap();
        assert!(d.lock_state().unwrap().data, "a good part is not locked");
        let cert = d.read_slot(10).unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(&cert).unwrap();
        let strip = |b: &[u8]| {
            b.iter()
                .skip_while(|x| **x == 0)
                .copied()
                .collect::<Vec<u8>>()
        };
        assert_eq!(
            strip(x.raw_serial()),
            strip(serial),
            "a good part holds another certificate"
        );
    }
    (st.issued.len() as u64, a.good.len() as u64)
}

#[test]
fn sigkill_at_random_moments_then_resume_ends_with_exactly_the_quantity() {
    let dir = tempfile::tempdir().unwrap();
    let s = site(dir.path(), QUANTITY + 50);
    let job = create(&s, "job-kill", QUANTITY);
    std::fs::write(dir.path().join("job.bin"), job.package().as_bytes()).unwrap();
    let parts_dir = dir.path().join("parts");
    std::fs::create_dir(&parts_dir).unwrap();
    let mut v = vendor();
    let mut parts = HashMap::new();
    for i in 0..PARTS {
        let d = v.manufacture(DeviceKind::SecureElement, NOW).unwrap();
        let path = parts_dir.join(format!("{i:04}.dev"));
        file::save(&d, &path).unwrap();
        parts.insert(d.uid_label().as_bytes().to_vec(), path);
    }
    drop(s);

    // Kill at random moments until 20 kills have landed before the run finished.
    let mut landed = 0;
    let mut runs = 0;
    while landed < KILLS {
        runs += 1;
        assert!(runs <= 100, "the job finished before 20 kills landed");
        let t0 = Instant::now();
        let out = run_child(
            dir.path(),
            Some(Duration::from_millis(20 + random_below(250))),
        );
        if !out.iter().any(|l| l.contains("DONE")) {
            landed += 1;
        }
        eprintln!("run {runs}: {:?} landed {landed}", t0.elapsed());
        check(dir.path(), job.package().as_bytes(), &parts);
    }
    let out = run_child(dir.path(), None);
    assert!(out.iter().any(|l| l.contains("DONE")), "{out:?}");
    assert!(!out.iter().any(|l| l.contains("FAILED")), "{out:?}");
    let (issued, good) = check(dir.path(), job.package().as_bytes(), &parts);
    assert_eq!((issued, good), (QUANTITY, QUANTITY));

    let (hsm, ledger) = open_site_with_ledger(dir.path());
    let s = Site {
        hsm,
        ledger,
        root: Vec::new(),
        device_ca: Vec::new(),
    };
    let closed = close(&s, &job);
    assert_eq!((closed.issued, closed.good), (QUANTITY, QUANTITY));
    assert_eq!(s.ledger.counter(PRODUCT).unwrap().unwrap().issued, QUANTITY);
}
