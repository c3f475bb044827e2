#![doc = include_str!("../README.md")]
//! The embedded backend: one SQLite file in WAL mode with `synchronous=FULL`, written by one
//! group-commit thread (`BEGIN IMMEDIATE`, so other processes on the same file wait their
//! turn), read through a separate connection.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use trustfab_ledger::backend::{
    i64_of, pending_migrations, raw_record, u64_of, ClaimKey, ClaimRow, Conn, CounterState, RawRow,
    Writer,
};
use trustfab_ledger::Error;
use trustfab_ledger::{Append, Counter};
use trustfab_ledger::{CounterEvent, RawRecord};
use trustfab_ledger::{Guard, Store};
use trustfab_ledger::{Head, Record};

fn sqlite_err(op: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
    Error::storage("sqlite", op)
}

/// Schema migrations, applied in order; each version is recorded in `schema_version`.
/// Append-only: a released migration never changes, a new one gets the next number.
const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    "CREATE TABLE records (
        seq INTEGER PRIMARY KEY,
        kind INTEGER NOT NULL,
        body BLOB NOT NULL,
        effects BLOB NOT NULL,
        prev_hash BLOB NOT NULL,
        hash BLOB NOT NULL
    );
    CREATE TABLE counter_events (
        product TEXT NOT NULL,
        event INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        op INTEGER NOT NULL,
        amount INTEGER NOT NULL,
        total INTEGER NOT NULL,
        issued INTEGER NOT NULL,
        PRIMARY KEY (product, event)
    ) WITHOUT ROWID;
    CREATE TABLE claims (
        namespace TEXT NOT NULL,
        key BLOB NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (namespace, key)
    ) WITHOUT ROWID;",
)];

/// How long a connection waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// The SQLite ledger. See the crate docs.
pub struct SqliteStore {
    writer: Writer,
    reader: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

fn connect(path: &Path) -> Result<Connection, Error> {
    let conn = Connection::open(path).map_err(sqlite_err("opening the database"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(sqlite_err("setting the busy timeout"))?;
    // WAL: readers never block the writer. FULL: every commit is synced before it returns,
    // so a record the caller was told about survives power loss, not only a process crash.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(sqlite_err("enabling WAL"))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sqlite_err("setting synchronous=FULL"))?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), Error> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite_err("starting the migration"))?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
            version INTEGER PRIMARY KEY,
            applied_at INTEGER NOT NULL
        )",
    )
    .map_err(sqlite_err("creating schema_version"))?;
    let current: i64 = tx
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_version",
            [],
            |r| r.get(0),
        )
        .map_err(sqlite_err("reading schema_version"))?;
    for (version, sql) in pending_migrations(MIGRATIONS, current)? {
        tx.execute_batch(sql)
            .map_err(sqlite_err("applying a migration"))?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?1, strftime('%s','now'))",
            params![version],
        )
        .map_err(sqlite_err("recording a migration"))?;
    }
    tx.commit().map_err(sqlite_err("committing the migration"))
}

impl SqliteStore {
    /// Opens (creating if needed) the ledger in the SQLite file at `path` and migrates its
    /// schema.
    ///
    /// # Errors
    ///
    /// [`Error::SchemaTooNew`] for a file from a newer build, or a storage error.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let mut w = connect(path)?;
        migrate(&mut w)?;
        let reader = connect(path)?;
        let writer = Writer::start("ledger-sqlite-writer", WriteConn(w))
            .map_err(|_| Error::WriterStopped)?;
        Ok(Self {
            writer,
            reader: Mutex::new(reader),
        })
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T, Error>) -> Result<T, Error> {
        let conn = self.reader.lock().map_err(|_| Error::WriterStopped)?;
        f(&conn)
    }
}

fn raw_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn head_of(row: Option<(i64, Vec<u8>)>) -> Result<Head, Error> {
    match row {
        None => Ok(Head::EMPTY),
        Some((seq, hash)) => Ok(Head {
            seq: u64_of(seq, "seq")?,
            hash: <[u8; 32]>::try_from(hash).map_err(|_| Error::Corrupt {
                what: "hash length",
            })?,
        }),
    }
}

fn counter_of(total: i64, issued: i64) -> Result<Counter, Error> {
    Ok(Counter {
        total: u64_of(total, "counter total")?,
        issued: u64_of(issued, "counter issued")?,
    })
}

const HEAD_SQL: &str = "SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1";
const COUNTER_SQL: &str = "SELECT event, total, issued FROM counter_events
    WHERE product = ?1 ORDER BY event DESC LIMIT 1";
const CLAIM_SQL: &str = "SELECT seq FROM claims WHERE namespace = ?1 AND key = ?2";

fn head(c: &Connection) -> Result<Head, Error> {
    let row = c
        .prepare_cached(HEAD_SQL)
        .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(sqlite_err("reading the head"))?;
    head_of(row)
}

fn counter(c: &Connection, product: &str) -> Result<Option<CounterState>, Error> {
    let row: Option<(i64, i64, i64)> = c
        .prepare_cached(COUNTER_SQL)
        .and_then(|mut s| {
            s.query_row(params![product], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
        })
        .map_err(sqlite_err("reading a counter"))?;
    row.map(|(e, t, i)| Ok((u64_of(e, "counter event")?, counter_of(t, i)?)))
        .transpose()
}

fn claimed(c: &Connection, namespace: &str, key: &[u8]) -> Result<Option<u64>, Error> {
    let row: Option<i64> = c
        .prepare_cached(CLAIM_SQL)
        .and_then(|mut s| {
            s.query_row(params![namespace, key], |r| r.get(0))
                .optional()
        })
        .map_err(sqlite_err("reading a claim"))?;
    row.map(|s| u64_of(s, "claim seq")).transpose()
}

fn read_raw(c: &Connection, from_seq: u64, limit: usize) -> Result<Vec<RawRecord>, Error> {
    let from = i64::try_from(from_seq).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = c
        .prepare_cached(
            "SELECT seq, kind, body, effects, prev_hash, hash FROM records
             WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
        )
        .and_then(|mut s| {
            s.query_map(params![from, limit], raw_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sqlite_err("reading records"))?;
    rows.into_iter().map(raw_record).collect()
}

struct WriteConn(Connection);

impl Conn for WriteConn {
    fn begin(&mut self) -> Result<(), Error> {
        // IMMEDIATE takes the write lock now, so no other process can slip in between our
        // read of the head and our insert.
        self.0
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(sqlite_err("beginning a transaction"))
    }

    fn commit(&mut self) -> Result<(), Error> {
        self.0
            .execute_batch("COMMIT")
            .map_err(sqlite_err("committing"))
    }

    fn rollback(&mut self) {
        if !self.0.is_autocommit() {
            // If the rollback fails too, the connection has already rolled back.
            let _ = self.0.execute_batch("ROLLBACK");
        }
    }

    fn head(&mut self) -> Result<Head, Error> {
        head(&self.0)
    }

    fn counter(&mut self, product: &str) -> Result<Option<CounterState>, Error> {
        counter(&self.0, product)
    }

    fn claims(&mut self, keys: &[(&str, &[u8])]) -> Result<HashMap<ClaimKey, u64>, Error> {
        // In-process: one cached statement per key costs no round trip.
        let mut found = HashMap::new();
        for (namespace, key) in keys {
            if let Some(seq) = claimed(&self.0, namespace, key)? {
                found.insert(((*namespace).to_owned(), key.to_vec()), seq);
            }
        }
        Ok(found)
    }

    fn insert(
        &mut self,
        records: &[&Record],
        events: &[CounterEvent],
        claims: &[ClaimRow<'_>],
    ) -> Result<(), Error> {
        let c = &self.0;
        let mut st = c
            .prepare_cached(
                "INSERT INTO records (seq, kind, body, effects, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(sqlite_err("inserting a record"))?;
        for r in records {
            st.execute(params![
                i64_of(r.seq)?,
                r.kind.code(),
                r.body,
                r.effects,
                &r.prev_hash[..],
                &r.hash[..]
            ])
            .map_err(sqlite_err("inserting a record"))?;
        }
        let mut st = c
            .prepare_cached(
                "INSERT INTO counter_events (product, event, seq, op, amount, total, issued)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(sqlite_err("inserting a counter event"))?;
        for e in events {
            st.execute(params![
                e.product,
                i64_of(e.event)?,
                i64_of(e.seq)?,
                e.op,
                i64_of(e.amount)?,
                i64_of(e.after.total)?,
                i64_of(e.after.issued)?
            ])
            .map_err(sqlite_err("inserting a counter event"))?;
        }
        let mut st = c
            .prepare_cached("INSERT INTO claims (namespace, key, seq) VALUES (?1, ?2, ?3)")
            .map_err(sqlite_err("inserting a claim"))?;
        for cl in claims {
            st.execute(params![cl.namespace, cl.key, i64_of(cl.seq)?])
                .map_err(sqlite_err("inserting a claim"))?;
        }
        Ok(())
    }

    fn read_raw(&mut self, from_seq: u64, limit: usize) -> Result<Vec<RawRecord>, Error> {
        read_raw(&self.0, from_seq, limit)
    }

    fn retryable(&self, e: &Error) -> bool {
        matches!(
            e.storage_source::<rusqlite::Error>()
                .and_then(rusqlite::Error::sqlite_error_code),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    }
}

impl Store for SqliteStore {
    fn append_all(&self, appends: Vec<Append>) -> Vec<Result<Vec<Record>, Error>> {
        self.writer.submit(appends)
    }

    fn append_latency(&self) -> trustfab_ledger::AppendLatency {
        self.writer.append_latency()
    }

    fn head(&self) -> Result<Head, Error> {
        self.read(head)
    }

    fn read_raw(&self, from_seq: u64, limit: usize) -> Result<Vec<RawRecord>, Error> {
        self.read(|c| read_raw(c, from_seq, limit))
    }

    fn read_counter_events(
        &self,
        after: Option<(&str, u64)>,
        limit: usize,
    ) -> Result<Vec<CounterEvent>, Error> {
        let (product, event) = after.unwrap_or(("", 0));
        let event = i64_of(event)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|c| {
            let rows: Vec<(String, i64, i64, i64, i64, i64, i64)> = c
                .prepare_cached(
                    "SELECT product, event, seq, op, amount, total, issued FROM counter_events
                     WHERE (product, event) > (?1, ?2) ORDER BY product, event LIMIT ?3",
                )
                .and_then(|mut s| {
                    s.query_map(params![product, event, limit], |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                            r.get(6)?,
                        ))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(sqlite_err("reading counter events"))?;
            rows.into_iter()
                .map(|(product, event, seq, op, amount, total, issued)| {
                    Ok(CounterEvent {
                        product,
                        event: u64_of(event, "counter event")?,
                        seq: u64_of(seq, "counter seq")?,
                        op,
                        amount: u64_of(amount, "counter amount")?,
                        after: counter_of(total, issued)?,
                    })
                })
                .collect()
        })
    }

    fn counter(&self, product: &str) -> Result<Option<Counter>, Error> {
        self.read(|c| Ok(counter(c, product)?.map(|(_, c)| c)))
    }

    fn seal_with(&self, guard: std::sync::Arc<dyn Guard>) {
        self.writer.seal_with(guard);
    }

    fn verified_counter(&self, product: &str) -> Result<Option<Counter>, Error> {
        self.writer
            .verified_counter(product, || self.counter(product))
    }

    fn verified_claim(&self, namespace: &str, key: &[u8]) -> Result<bool, Error> {
        self.writer
            .verified_claim(namespace, key, || self.claimed(namespace, key))
    }

    fn claim_in_account(&self, namespace: &str, key: &[u8]) -> Option<bool> {
        self.writer.claim_in_account(namespace, key)
    }

    fn verified_counters(&self) -> Result<Vec<(String, Counter)>, Error> {
        self.writer.verified_counters(|| self.counters())
    }

    fn counters(&self) -> Result<Vec<(String, Counter)>, Error> {
        self.read(|c| {
            let rows: Vec<(String, i64, i64)> = c
                .prepare_cached(
                    "SELECT c.product, c.total, c.issued FROM counter_events c
                     WHERE c.event = (SELECT MAX(e.event) FROM counter_events e
                                      WHERE e.product = c.product)
                     ORDER BY c.product",
                )
                .and_then(|mut s| {
                    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(sqlite_err("reading counters"))?;
            rows.into_iter()
                .map(|(p, t, i)| Ok((p, counter_of(t, i)?)))
                .collect()
        })
    }

    fn claimed(&self, namespace: &str, key: &[u8]) -> Result<Option<u64>, Error> {
        self.read(|c| claimed(c, namespace, key))
    }

    fn claim_count(&self, up_to_seq: u64) -> Result<u64, Error> {
        let up_to = i64::try_from(up_to_seq).unwrap_or(i64::MAX);
        self.read(|c| {
            let n: i64 = c
                .query_row(
                    "SELECT COUNT(*) FROM claims WHERE seq <= ?1",
                    params![up_to],
                    |r| r.get(0),
                )
                .map_err(sqlite_err("counting claims"))?;
            u64_of(n, "claim count")
        })
    }
}
