//! Many processes on one PostgreSQL ledger: this test binary re-executes itself as station-like
//! children that issue against one product until it is exhausted, reporting every append they
//! were told is committed. Exactly the count is issued across processes, every report is on
//! record, and the same holds when children are killed with SIGKILL at random moments.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use trustfab_ledger::{Append, CounterOp, Kind, Store};
use trustfab_ledger_postgres::PgStore;

use crate::support::{issue_loop, random_u64, verifier, Fixture, Pg};

const CHILD_ENV: &str = "TRUSTFAB_LEDGER_PG_CHILD_DB";
const PRODUCT: &str = "oem/multi";

/// Two threads issuing (record + spend + unique serial claim) until the product is exhausted
/// or `limit` appends each; prints `committed <seq> <body hex>` per durable append if `report`.
fn station(store: PgStore, limit: Option<u64>, report: bool) -> u64 {
    issue_loop(Arc::new(store), PRODUCT, 2, None, limit, report)
}

/// The child entry point; alone (in the suite), a bounded run on a fresh database.
#[test]
fn pg_station_child() {
    match std::env::var(CHILD_ENV) {
        Ok(name) => {
            station(Pg::open_named(&name), None, true);
        }
        Err(_) => {
            let f = Pg::new();
            create_product(&f, 15);
            assert_eq!(station(f.open().unwrap(), Some(10), false), 15);
            let s = f.open().unwrap();
            assert_eq!(s.remaining(PRODUCT).unwrap(), 0);
            assert_eq!(s.verify(&verifier).unwrap().claims, 15);
        }
    }
}

fn create_product(f: &Pg, count: u64) {
    f.open()
        .unwrap()
        .append(
            Append::record(Kind::ProductCreated, PRODUCT.as_bytes().to_vec()).with_counter(
                CounterOp::Create {
                    product: PRODUCT.into(),
                    count,
                },
            ),
        )
        .unwrap();
}

/// Appends a child reported as committed: (seq, body).
type Reported = Vec<(u64, Vec<u8>)>;

struct Station {
    child: Child,
    lines: Arc<Mutex<Reported>>,
    reader: thread::JoinHandle<()>,
}

fn spawn_station(f: &Pg) -> Station {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "processes::pg_station_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, f.name())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let lines = lines.clone();
        thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                // libtest may print "test … " before the first line of the child's output.
                let Some(at) = l.find("committed ") else {
                    continue;
                };
                let rest = &l[at + "committed ".len()..];
                let (seq, body) = rest.split_once(' ').unwrap();
                lines
                    .lock()
                    .unwrap()
                    .push((seq.parse().unwrap(), hex::decode(body).unwrap()));
            }
        })
    };
    Station {
        child,
        lines,
        reader,
    }
}

fn finish(st: Station) -> Reported {
    st.reader.join().unwrap();
    Arc::try_unwrap(st.lines).unwrap().into_inner().unwrap()
}

/// Every reported append is on record with its body and claim.
fn check_reported(s: &dyn Store, reported: &[(u64, Vec<u8>)]) {
    for (seq, body) in reported {
        let r = s.read_raw(*seq, 1).unwrap();
        assert_eq!(r.first().map(|r| r.seq), Some(*seq), "{seq} lost");
        assert_eq!(&r[0].body, body);
        assert_eq!(s.claimed("serial", body).unwrap(), Some(*seq));
    }
}

#[test]
fn property_4_pg_four_processes_issue_exactly_the_count() {
    const COUNT: u64 = 400;
    let f = Pg::new();
    create_product(&f, COUNT);
    let stations: Vec<Station> = (0..4).map(|_| spawn_station(&f)).collect();
    let mut reported = Vec::new();
    for mut st in stations {
        assert!(st.child.wait().unwrap().success());
        reported.extend(finish(st));
    }
    assert_eq!(reported.len() as u64, COUNT);
    let s = f.open().unwrap();
    assert_eq!(s.issued(PRODUCT).unwrap(), COUNT);
    assert_eq!(s.remaining(PRODUCT).unwrap(), 0);
    check_reported(&s, &reported);
    let v = s.verify(&verifier).unwrap();
    assert_eq!(v.head.seq, COUNT + 1);
    assert_eq!(v.claims, COUNT);
}

#[test]
fn property_4_pg_stations_killed_at_random() {
    const ROUNDS: usize = 8;
    let f = Pg::new();
    create_product(&f, 1_000_000_000);
    let mut total = 0;
    for round in 0..ROUNDS {
        let stations: Vec<Station> = (0..2).map(|_| spawn_station(&f)).collect();
        let start = Instant::now();
        while stations.iter().any(|s| s.lines.lock().unwrap().is_empty())
            && start.elapsed() < Duration::from_secs(60)
        {
            thread::sleep(Duration::from_millis(1));
        }
        thread::sleep(Duration::from_micros(random_u64() % 200_000));
        let mut reported = Vec::new();
        for mut st in stations {
            st.child.kill().unwrap(); // SIGKILL
            st.child.wait().unwrap();
            reported.extend(finish(st));
        }
        assert!(!reported.is_empty(), "round {round}: nothing committed");
        total += reported.len();
        // The server finishes (commits or rolls back) what the killed clients had in flight.
        f.wait_for_no_sessions();
        let s = f.open().unwrap();
        let v = s
            .verify(&verifier)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        check_reported(&s, &reported);
        assert_eq!(s.issued(PRODUCT).unwrap(), v.head.seq - 1);
        assert_eq!(v.claims, v.head.seq - 1);
    }
    assert!(total >= ROUNDS);
}
