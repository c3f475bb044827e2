//! Records per second of each backend, beside a plain INSERT loop of the same durability
//! (every row committed and synced before the next) on the same database in the same run.
//!
//! `cargo bench -p trustfab-ledger`. PostgreSQL comes from `TRUSTFAB_TEST_PG` (default: the
//! local server); a fresh database is created and dropped.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use postgres::NoTls;
use trustfab_ledger::{Append, CounterOp, Kind, Store};
use trustfab_ledger_postgres::{PgConfig, PgStore};
use trustfab_ledger_sqlite::SqliteStore;

/// Concurrent callers, as the issuing threads of an HSM service.
const THREADS: u64 = 8;
/// Appends per measured iteration (all threads together).
const PER_ITER: u64 = 400;
const PRODUCT: &str = "bench/product";

fn issuance(serial: u64) -> Append {
    let mut body = vec![0u8; 200];
    body[..8].copy_from_slice(&serial.to_be_bytes());
    Append::record(Kind::CertificateIssued, body)
        .with_counter(CounterOp::Spend {
            product: PRODUCT.into(),
            n: 1,
        })
        .with_claim("serial", serial.to_be_bytes().to_vec())
}

fn setup(store: &dyn Store) {
    store
        .append(
            Append::record(Kind::ProductCreated, b"bench".to_vec()).with_counter(
                CounterOp::Create {
                    product: PRODUCT.into(),
                    count: trustfab_ledger::MAX_COUNT,
                },
            ),
        )
        .unwrap();
}

/// `PER_ITER` issuances from `THREADS` threads; returns the elapsed time.
fn ledger_round(store: &Arc<dyn Store>, next: &mut u64) -> Duration {
    let base = *next;
    *next += PER_ITER;
    let start = Instant::now();
    let per_thread = PER_ITER / THREADS;
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = store.clone();
            thread::spawn(move || {
                for i in 0..per_thread {
                    store
                        .append(issuance(base + t * per_thread + i))
                        .expect("bench append");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    start.elapsed()
}

fn bench_sqlite(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.sqlite");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
    setup(&*store);
    let plain = rusqlite::Connection::open(&path).unwrap();
    plain
        .execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
             CREATE TABLE plain (id INTEGER PRIMARY KEY, body BLOB NOT NULL)",
        )
        .unwrap();

    let mut g = c.benchmark_group("sqlite");
    g.sample_size(10);
    g.throughput(Throughput::Elements(PER_ITER));
    let mut next = 0;
    g.bench_function(
        "ledger append, 8 threads, group commit, synchronous=FULL",
        |b| b.iter_custom(|iters| (0..iters).map(|_| ledger_round(&store, &mut next)).sum()),
    );
    let mut id = 0i64;
    g.bench_function("plain INSERT loop, autocommit, synchronous=FULL", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters * PER_ITER {
                id += 1;
                plain
                    .execute(
                        "INSERT INTO plain (id, body) VALUES (?1, ?2)",
                        rusqlite::params![id, vec![0u8; 200]],
                    )
                    .unwrap();
            }
            start.elapsed()
        })
    });
    g.finish();
}

fn bench_postgres(c: &mut Criterion) {
    let url = std::env::var("TRUSTFAB_TEST_PG")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/postgres".to_owned());
    let admin: PgConfig = url.parse().unwrap();
    let name = format!("trustfab_bench_{}", std::process::id());
    let mut admin_client = admin.connect(NoTls).expect("PostgreSQL for the bench");
    // Two calls: DROP/CREATE DATABASE cannot share an implicit transaction.
    admin_client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .unwrap();
    admin_client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    let mut config = admin;
    config.dbname(&name);
    {
        let store: Arc<dyn Store> = Arc::new(PgStore::with_config(&config).unwrap());
        setup(&*store);
        let mut plain = config.connect(NoTls).unwrap();
        plain
            .batch_execute("CREATE TABLE plain (id BIGINT PRIMARY KEY, body BYTEA NOT NULL)")
            .unwrap();
        let insert = plain
            .prepare("INSERT INTO plain (id, body) VALUES ($1, $2)")
            .unwrap();

        let mut g = c.benchmark_group("postgres");
        g.sample_size(10);
        g.throughput(Throughput::Elements(PER_ITER));
        let mut next = 0;
        g.bench_function(
            "ledger append, 8 threads, group commit, serializable",
            |b| b.iter_custom(|iters| (0..iters).map(|_| ledger_round(&store, &mut next)).sum()),
        );
        let mut id = 0i64;
        g.bench_function("plain INSERT loop, autocommit", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters * PER_ITER {
                    id += 1;
                    plain.execute(&insert, &[&id, &vec![0u8; 200]]).unwrap();
                }
                start.elapsed()
            })
        });
        g.finish();
    }
    admin_client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .unwrap();
}

/// What a sealed store needs of its guard for a chain that lies wholly under the anchor: the
/// anchor (the head), and no seal to check (records up to the anchor need none).
struct AnchoredAt(trustfab_ledger::Head);

impl trustfab_ledger::Guard for AnchoredAt {
    fn seal_valid(&self, _: &trustfab_ledger::Hash, _: &[u8]) -> bool {
        false
    }

    fn anchored(
        &self,
    ) -> Result<Option<trustfab_ledger::Head>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Some(self.0))
    }
}

/// Records in the ledger whose first walk is measured.
const WALK_RECORDS: u64 = 100_000;

/// The first walk of a sealed store (once per process): every record read, hashed and its
/// effects and claims taken into the account, on a SQLite ledger of `WALK_RECORDS` issuances.
fn bench_first_walk(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walk.sqlite");
    {
        let store = SqliteStore::open(&path).unwrap();
        setup(&store);
        for chunk in 0..WALK_RECORDS / 1000 {
            let appends = (0..1000).map(|i| issuance(chunk * 1000 + i)).collect();
            for r in store.append_all(appends) {
                r.unwrap();
            }
        }
    }
    let mut g = c.benchmark_group("sealed store");
    g.sample_size(10);
    g.throughput(Throughput::Elements(WALK_RECORDS));
    g.bench_function("first walk, SQLite, 100k records with claims", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let store = SqliteStore::open(&path).unwrap();
                let head = store.head().unwrap();
                store.seal_with(Arc::new(AnchoredAt(head)));
                let start = Instant::now();
                let c = store.verified_counter(PRODUCT).unwrap().unwrap();
                total += start.elapsed();
                assert_eq!(c.issued, WALK_RECORDS);
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, bench_sqlite, bench_postgres, bench_first_walk);
criterion_main!(benches);
