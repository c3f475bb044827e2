//! Test fixtures: real SQLite files and real PostgreSQL databases (a fresh one per test, dropped
//! afterwards), raw SQL to tamper with them, and a keyed-hash checkpoint signer.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use postgres::NoTls;
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use trustfab_ledger::{Append, CounterOp, Error, Kind, RawRecord, Store};
use trustfab_ledger_postgres::{PgConfig, PgStore};
use trustfab_ledger_sqlite::SqliteStore;

/// The checkpoint "signature" of the tests: SHA-256 over a secret and the message. The ledger
/// only sees a closure, so any scheme with a secret exercises it the same way.
pub(crate) fn sign_with(secret: &[u8], message: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(secret);
    h.update(message);
    h.finalize().to_vec()
}

/// The test signer's secret.
pub(crate) const KEY: &[u8] = b"test checkpoint key";

/// Signs as the test HSM.
pub(crate) fn signer(message: &[u8]) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
    Ok(sign_with(KEY, message))
}

/// Verifies the test HSM's signature.
pub(crate) fn verifier(message: &[u8], signature: &[u8]) -> bool {
    sign_with(KEY, message) == signature
}

/// A database for one test, and raw access to it.
pub(crate) trait Fixture {
    /// The backend.
    type S: Store + std::fmt::Debug + 'static;
    /// A fresh, empty database.
    fn new() -> Self;
    /// A new store handle on the database (its own connections and writer).
    fn open(&self) -> Result<Self::S, Error>;
    /// Runs raw SQL against the database, bypassing the ledger.
    fn exec(&self, sql: &str);
    /// Inserts a raw records row, bypassing the ledger.
    fn insert_raw(&self, r: &RawRecord);
}

/// A temporary SQLite file.
pub(crate) struct Sqlite {
    _dir: TempDir,
    path: PathBuf,
}

impl Sqlite {
    pub(crate) fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Fixture for Sqlite {
    type S = SqliteStore;

    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        Self { _dir: dir, path }
    }

    fn open(&self) -> Result<SqliteStore, Error> {
        SqliteStore::open(&self.path)
    }

    fn exec(&self, sql: &str) {
        let c = rusqlite::Connection::open(&self.path).unwrap();
        c.execute_batch(sql).unwrap();
    }

    fn insert_raw(&self, r: &RawRecord) {
        let c = rusqlite::Connection::open(&self.path).unwrap();
        c.execute(
            "INSERT INTO records (seq, kind, body, effects, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            rusqlite::params![
                i64::try_from(r.seq).unwrap(),
                r.kind,
                r.body,
                r.effects,
                r.prev_hash,
                r.hash
            ],
        )
        .unwrap();
    }
}

/// The server the PostgreSQL tests use: `TRUSTFAB_TEST_PG`, or the local default.
pub(crate) fn pg_admin_url() -> String {
    std::env::var("TRUSTFAB_TEST_PG")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fresh PostgreSQL database with a random name, dropped when the test ends (pass or fail).
/// An unreachable server fails the test: there is no silent skip.
pub(crate) struct Pg {
    admin: PgConfig,
    config: PgConfig,
    name: String,
}

impl Pg {
    /// The database's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Waits until no other session is connected to the database: a killed client's last
    /// COMMIT may still be running in the server after the client is gone.
    pub(crate) fn wait_for_no_sessions(&self) {
        let mut c = self.admin.connect(NoTls).unwrap();
        let start = std::time::Instant::now();
        loop {
            let n: i64 = c
                .query_one(
                    "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1",
                    &[&self.name],
                )
                .unwrap()
                .get(0);
            if n == 0 {
                return;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(60),
                "sessions of killed clients still open"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Opens a store on the database `name` of the test server (for child processes).
    pub(crate) fn open_named(name: &str) -> PgStore {
        let mut config: PgConfig = pg_admin_url().parse().unwrap();
        config.dbname(name);
        PgStore::with_config(&config).unwrap()
    }
}

impl Fixture for Pg {
    type S = PgStore;

    fn new() -> Self {
        let url = pg_admin_url();
        let admin: PgConfig = url.parse().unwrap();
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).unwrap();
        let name = format!("trustfab_test_{}", hex::encode(random));
        let mut client = admin.connect(NoTls).unwrap_or_else(|e| {
            panic!("PostgreSQL at {url} is needed by the ledger tests (TRUSTFAB_TEST_PG): {e}")
        });
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let mut config = admin.clone();
        config.dbname(&name);
        Self {
            admin,
            config,
            name,
        }
    }

    fn open(&self) -> Result<PgStore, Error> {
        PgStore::with_config(&self.config)
    }

    fn exec(&self, sql: &str) {
        let mut c = self.config.connect(NoTls).unwrap();
        c.batch_execute(sql).unwrap();
    }

    fn insert_raw(&self, r: &RawRecord) {
        let mut c = self.config.connect(NoTls).unwrap();
        c.execute(
            "INSERT INTO records (seq, kind, body, effects, prev_hash, hash)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &i64::try_from(r.seq).unwrap(),
                &i32::from(r.kind),
                &r.body,
                &r.effects,
                &r.prev_hash,
                &r.hash,
            ],
        )
        .unwrap();
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if let Ok(mut c) = self.admin.connect(NoTls) {
            let _ = c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// 64 random bits.
pub(crate) fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_le_bytes(b)
}

/// The station-like child loop of the process tests: `threads` threads, each appending an
/// issuance of `product` (a `CertificateIssued` record, then an `extra` record with the same
/// body if given, a spend of 1 and a unique `serial` claim on the body), until the product is
/// exhausted or `limit` appends each. Prints `committed <seq> <body hex>` for each append the
/// store returned as durable, if `report`. Returns how many appends were made.
pub(crate) fn issue_loop(
    store: Arc<dyn Store>,
    product: &'static str,
    threads: u64,
    extra: Option<Kind>,
    limit: Option<u64>,
    report: bool,
) -> u64 {
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let run = random_u64();
    let threads: Vec<_> = (0..threads)
        .map(|t| {
            let store = store.clone();
            let out = out.clone();
            std::thread::spawn(move || {
                let mut i = 0u64;
                while limit.is_none_or(|l| i < l) {
                    let mut body = run.to_be_bytes().to_vec();
                    body.extend_from_slice(&t.to_be_bytes());
                    body.extend_from_slice(&i.to_be_bytes());
                    let mut append = Append::record(Kind::CertificateIssued, body.clone());
                    if let Some(kind) = extra {
                        append = append.with_record(kind, body.clone());
                    }
                    let append = append
                        .with_counter(CounterOp::Spend {
                            product: product.into(),
                            n: 1,
                        })
                        .with_claim("serial", body.clone());
                    match store.append(append) {
                        Ok(recs) if report => {
                            let mut o = out.lock().unwrap();
                            writeln!(o, "committed {} {}", recs[0].seq, hex::encode(&body))
                                .unwrap();
                            o.flush().unwrap();
                        }
                        Ok(_) => {}
                        Err(Error::Exhausted { .. }) => break,
                        Err(e) => panic!("append failed: {e}"),
                    }
                    i += 1;
                }
                i
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).sum()
}
