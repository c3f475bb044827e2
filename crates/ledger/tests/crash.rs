//! Crash safety of the SQLite store: this test binary re-executes itself as a child that
//! appends in a loop from several threads and reports every append it was told is committed;
//! the parent kills it with SIGKILL at a random moment, reopens the file, and checks that the
//! chain verifies, the counter agrees with the chain, and every reported append is there.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use trustfab_ledger::{Append, CounterOp, Kind, Store};
use trustfab_ledger_sqlite::SqliteStore;

use crate::support::{issue_loop, random_u64, verifier, Fixture, Sqlite};

const CHILD_ENV: &str = "TRUSTFAB_LEDGER_CRASH_CHILD_DB";
const PRODUCT: &str = "oem/crash";
const KILLS: usize = 24;

/// The child's work: 4 threads, each appending an issuance (record + spend + unique serial
/// claim) and then a device record, printing `committed <seq> <body hex>` for each append the
/// store returned as durable (when `report`). Stops after `limit` appends per thread, if given.
fn child_loop(path: &Path, limit: Option<u64>, report: bool) {
    let store = Arc::new(SqliteStore::open(path).unwrap());
    issue_loop(
        store,
        PRODUCT,
        4,
        Some(Kind::DeviceProgrammed),
        limit,
        report,
    );
}

/// The child entry point. Run by the parent with the database path in the environment; run
/// alone (as part of the suite) it does a bounded loop on a temporary file and checks it.
#[test]
fn crash_child() {
    match std::env::var_os(CHILD_ENV) {
        Some(path) => child_loop(Path::new(&path), None, true),
        None => {
            let f = Sqlite::new();
            create_product(&f);
            child_loop(f.path(), Some(10), false);
            let s = f.open().unwrap();
            assert_eq!(s.issued(PRODUCT).unwrap(), 40);
            assert_eq!(s.verify(&verifier).unwrap().head.seq, 81);
        }
    }
}

fn create_product(f: &Sqlite) {
    let s = f.open().unwrap();
    s.append(
        Append::record(Kind::ProductCreated, PRODUCT.as_bytes().to_vec()).with_counter(
            CounterOp::Create {
                product: PRODUCT.into(),
                count: 1_000_000_000,
            },
        ),
    )
    .unwrap();
}

#[test]
fn property_4_sqlite_append_survives_sigkill() {
    let f = Sqlite::new();
    create_product(&f);
    let exe = std::env::current_exe().unwrap();
    let mut reported_total = 0usize;
    for round in 0..KILLS {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash::crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, f.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let reader = {
            let lines = lines.clone();
            thread::spawn(move || {
                for l in BufReader::new(stdout).lines() {
                    match l {
                        // libtest may print "test … " before the child's first line.
                        Ok(l) if l.contains("committed ") => {
                            let at = l.find("committed ").unwrap();
                            lines.lock().unwrap().push(l[at..].to_owned());
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            })
        };
        // Wait for the first commit (the child is running), then kill after a random delay so
        // the kill lands anywhere in the append path: inside a transaction, during the sync,
        // between commit and report.
        let start = Instant::now();
        while lines.lock().unwrap().is_empty() && start.elapsed() < Duration::from_secs(30) {
            thread::sleep(Duration::from_millis(1));
        }
        assert!(
            !lines.lock().unwrap().is_empty(),
            "round {round}: child never committed"
        );
        thread::sleep(Duration::from_micros(random_u64() % 150_000));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        reader.join().unwrap();

        let s = f.open().unwrap();
        let v = s
            .verify(&verifier)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let lines = lines.lock().unwrap();
        reported_total += lines.len();
        for l in lines.iter() {
            let mut parts = l.split(' ').skip(1);
            let seq: u64 = parts.next().unwrap().parse().unwrap();
            let body = hex::decode(parts.next().unwrap()).unwrap();
            let r = s.read_raw(seq, 1).unwrap();
            assert_eq!(
                r.first().map(|r| r.seq),
                Some(seq),
                "round {round}: {seq} lost"
            );
            assert_eq!(r[0].body, body, "round {round}: {seq} differs");
            assert_eq!(r[0].kind, Kind::CertificateIssued.code());
            assert_eq!(s.claimed("serial", &body).unwrap(), Some(seq));
        }
        // The counter agrees with the chain (verify replays it) and with the issuances.
        let issued = s
            .records(1)
            .filter(|r| r.as_ref().unwrap().kind == Kind::CertificateIssued)
            .count() as u64;
        assert_eq!(s.issued(PRODUCT).unwrap(), issued);
        assert_eq!(v.head.seq, 1 + 2 * issued);
    }
    assert!(reported_total >= KILLS);
}
