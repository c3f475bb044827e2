#![doc = include_str!("../README.md")]
//! The shared backend: PostgreSQL, written by many stations and HSM processes at once.
//!
//! Every batch is one SERIALIZABLE transaction; a serialization failure (40001), a deadlock
//! (40P01) or a unique violation from a concurrent writer (23505) rolls it back and the batch is
//! retried whole. The chain head, counters and claims are plain rows read inside the
//! transaction, so the database's conflict detection is what keeps seqs gapless, counts within
//! bounds and claims unique across processes. The SQL is deliberately plain (no triggers, no
//! PL/pgSQL, no advisory locks, no `FOR UPDATE SKIP LOCKED`), so CockroachDB-like distributed
//! engines accept it too.

use std::collections::HashMap;
use std::sync::Mutex;

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, NoTls, Statement};

use trustfab_ledger::backend::{
    i64_of, pending_migrations, raw_record, u64_of, ClaimKey, ClaimRow, Conn, CounterState, Writer,
};
use trustfab_ledger::Error;
use trustfab_ledger::{Append, Counter};
use trustfab_ledger::{CounterEvent, RawRecord};
use trustfab_ledger::{Guard, Store};
use trustfab_ledger::{Head, Record};

fn pg_err(op: &'static str) -> impl FnOnce(postgres::Error) -> Error {
    Error::storage("postgresql", op)
}

/// Connection parameters (re-exported from the `postgres` crate): parse one from a URL such
/// as `postgresql://user@host:5432/dbname`.
pub type PgConfig = postgres::Config;

/// Schema migrations, applied in order; each version is recorded in `schema_version`.
/// Append-only: a released migration never changes, a new one gets the next number.
const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    "CREATE TABLE records (
        seq BIGINT PRIMARY KEY,
        kind INTEGER NOT NULL,
        body BYTEA NOT NULL,
        effects BYTEA NOT NULL,
        prev_hash BYTEA NOT NULL,
        hash BYTEA NOT NULL
    );
    CREATE TABLE counter_events (
        product TEXT NOT NULL,
        event BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        op BIGINT NOT NULL,
        amount BIGINT NOT NULL,
        total BIGINT NOT NULL,
        issued BIGINT NOT NULL,
        PRIMARY KEY (product, event)
    );
    CREATE TABLE claims (
        namespace TEXT NOT NULL,
        key BYTEA NOT NULL,
        seq BIGINT NOT NULL,
        PRIMARY KEY (namespace, key)
    );",
)];

/// How often opening retries a migration that raced another process's.
const MIGRATION_ATTEMPTS: u32 = 20;

/// The PostgreSQL ledger. See the crate docs.
pub struct PgStore {
    writer: Writer,
    reader: Mutex<Client>,
    config: PgConfig,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

fn retryable(e: &Error) -> bool {
    e.storage_source::<postgres::Error>()
        .and_then(postgres::Error::code)
        .is_some_and(|c| {
            *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::UNIQUE_VIOLATION
        })
}

fn migrate_once(client: &mut Client) -> Result<(), Error> {
    let mut tx = client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::Serializable)
        .start()
        .map_err(pg_err("starting the migration"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
            version BIGINT PRIMARY KEY,
            applied_at BIGINT NOT NULL
        )",
    )
    .map_err(pg_err("creating schema_version"))?;
    let current: i64 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
        .and_then(|r| r.try_get(0))
        .map_err(pg_err("reading schema_version"))?;
    for (version, sql) in pending_migrations(MIGRATIONS, current)? {
        tx.batch_execute(sql)
            .map_err(pg_err("applying a migration"))?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at)
             VALUES ($1, CAST(EXTRACT(EPOCH FROM now()) AS BIGINT))",
            &[version],
        )
        .map_err(pg_err("recording a migration"))?;
    }
    tx.commit().map_err(pg_err("committing the migration"))
}

fn migrate(client: &mut Client) -> Result<(), Error> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match migrate_once(client) {
            // Two processes creating the same tables at once: one wins, the other retries and
            // then finds the version recorded.
            Err(e) if attempt < MIGRATION_ATTEMPTS && is_migration_race(&e) => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

fn is_migration_race(e: &Error) -> bool {
    retryable(e)
        || e.storage_source::<postgres::Error>()
            .and_then(postgres::Error::code)
            .is_some_and(|c| *c == SqlState::DUPLICATE_TABLE || *c == SqlState::DUPLICATE_OBJECT)
}

impl PgStore {
    /// Connects to the database named by `url` (for example
    /// `postgresql://user@host:5432/ledger`) and migrates its schema.
    ///
    /// # Errors
    ///
    /// A storage error (unparsable URL, unreachable server, failed migration) or
    /// [`Error::SchemaTooNew`].
    pub fn connect(url: &str) -> Result<Self, Error> {
        let config: PgConfig = url.parse().map_err(pg_err("parsing the URL"))?;
        Self::with_config(&config)
    }

    /// Connects with explicit parameters and migrates the schema. The connection is not
    /// encrypted: run it over a trusted network or a local socket.
    ///
    /// # Errors
    ///
    /// As [`PgStore::connect`].
    pub fn with_config(config: &PgConfig) -> Result<Self, Error> {
        let mut w = config.connect(NoTls).map_err(pg_err("connecting"))?;
        migrate(&mut w)?;
        let reader = config.connect(NoTls).map_err(pg_err("connecting"))?;
        let conn = WriteConn::new(w, config.clone())?;
        let writer = Writer::start("ledger-pg-writer", conn).map_err(|_| Error::WriterStopped)?;
        Ok(Self {
            writer,
            reader: Mutex::new(reader),
            config: config.clone(),
        })
    }

    fn read<T>(&self, f: impl FnOnce(&mut Client) -> Result<T, Error>) -> Result<T, Error> {
        let mut c = self.reader.lock().map_err(|_| Error::WriterStopped)?;
        if c.is_closed() {
            // The server restarted or the network dropped: one new connection, then on.
            *c = self.config.connect(NoTls).map_err(pg_err("reconnecting"))?;
        }
        f(&mut c)
    }
}

const HEAD_SQL: &str = "SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1";
const COUNTER_SQL: &str = "SELECT event, total, issued FROM counter_events
    WHERE product = $1 ORDER BY event DESC LIMIT 1";
const CLAIM_SQL: &str = "SELECT seq FROM claims WHERE namespace = $1 AND key = $2";

fn head_of(row: Option<postgres::Row>) -> Result<Head, Error> {
    let Some(row) = row else {
        return Ok(Head::EMPTY);
    };
    let seq: i64 = row.try_get(0).map_err(pg_err("reading the head"))?;
    let hash: Vec<u8> = row.try_get(1).map_err(pg_err("reading the head"))?;
    Ok(Head {
        seq: u64_of(seq, "seq")?,
        hash: <[u8; 32]>::try_from(hash).map_err(|_| Error::Corrupt {
            what: "hash length",
        })?,
    })
}

fn counter_of(row: &postgres::Row, at: usize) -> Result<Counter, Error> {
    let total: i64 = row.try_get(at).map_err(pg_err("reading a counter"))?;
    let issued: i64 = row.try_get(at + 1).map_err(pg_err("reading a counter"))?;
    Ok(Counter {
        total: u64_of(total, "counter total")?,
        issued: u64_of(issued, "counter issued")?,
    })
}

fn counter_state(row: Option<postgres::Row>) -> Result<Option<CounterState>, Error> {
    let Some(row) = row else {
        return Ok(None);
    };
    let event: i64 = row.try_get(0).map_err(pg_err("reading a counter"))?;
    Ok(Some((
        u64_of(event, "counter event")?,
        counter_of(&row, 1)?,
    )))
}

fn claim_of(row: Option<postgres::Row>) -> Result<Option<u64>, Error> {
    let Some(row) = row else {
        return Ok(None);
    };
    let seq: i64 = row.try_get(0).map_err(pg_err("reading a claim"))?;
    Ok(Some(u64_of(seq, "claim seq")?))
}

struct Statements {
    head: Statement,
    counter: Statement,
    /// Multi-row statements by (table, rows): batch sizes repeat, so each shape is prepared
    /// once per connection.
    bulk: HashMap<(Bulk, usize), Statement>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Bulk {
    Records,
    Events,
    Claims,
    ClaimLookup,
}

impl Bulk {
    fn sql(self, rows: usize) -> String {
        let (head, cols, tail) = match self {
            Self::Records => (
                "INSERT INTO records (seq, kind, body, effects, prev_hash, hash) VALUES ",
                6,
                "",
            ),
            Self::Events => (
                "INSERT INTO counter_events (product, event, seq, op, amount, total, issued) \
                 VALUES ",
                7,
                "",
            ),
            Self::Claims => ("INSERT INTO claims (namespace, key, seq) VALUES ", 3, ""),
            Self::ClaimLookup => (
                "SELECT namespace, key, seq FROM claims WHERE (namespace, key) IN (",
                2,
                ")",
            ),
        };
        let mut sql = String::from(head);
        let mut n = 0;
        for r in 0..rows {
            if r > 0 {
                sql.push(',');
            }
            sql.push('(');
            for c in 0..cols {
                if c > 0 {
                    sql.push(',');
                }
                n += 1;
                sql.push_str(&format!("${n}"));
            }
            sql.push(')');
        }
        sql.push_str(tail);
        sql
    }
}

/// Rows per multi-row statement (well under PostgreSQL's 65,535 parameters).
const BULK_ROWS: usize = 500;

type Param<'a> = Box<dyn ToSql + Sync + 'a>;

struct WriteConn {
    client: Client,
    st: Statements,
    config: PgConfig,
}

impl WriteConn {
    fn new(mut client: Client, config: PgConfig) -> Result<Self, Error> {
        let st = Statements::prepare(&mut client)?;
        Ok(Self { client, st, config })
    }

    fn bulk_statement(&mut self, kind: Bulk, rows: usize) -> Result<Statement, Error> {
        if let Some(st) = self.st.bulk.get(&(kind, rows)) {
            return Ok(st.clone());
        }
        let st = self
            .client
            .prepare(&kind.sql(rows))
            .map_err(pg_err("preparing"))?;
        self.st.bulk.insert((kind, rows), st.clone());
        Ok(st)
    }

    /// Runs `kind` over `rows` in chunks of [`BULK_ROWS`], returning the rows it reads.
    fn bulk(
        &mut self,
        kind: Bulk,
        rows: Vec<Vec<Param<'_>>>,
        op: &'static str,
    ) -> Result<Vec<postgres::Row>, Error> {
        let mut out = Vec::new();
        for chunk in rows.chunks(BULK_ROWS) {
            let st = self.bulk_statement(kind, chunk.len())?;
            let params: Vec<&(dyn ToSql + Sync)> = chunk
                .iter()
                .flat_map(|r| r.iter().map(|p| &**p as &(dyn ToSql + Sync)))
                .collect();
            out.extend(self.client.query(&st, &params).map_err(pg_err(op))?);
        }
        Ok(out)
    }
}

impl Statements {
    fn prepare(client: &mut Client) -> Result<Self, Error> {
        let mut p = |sql: &str| client.prepare(sql).map_err(pg_err("preparing"));
        Ok(Self {
            head: p(HEAD_SQL)?,
            counter: p(COUNTER_SQL)?,
            bulk: HashMap::new(),
        })
    }
}

fn read_raw(c: &mut Client, from_seq: u64, limit: usize) -> Result<Vec<RawRecord>, Error> {
    let from = i64::try_from(from_seq).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = c
        .query(
            "SELECT seq, CAST(kind AS BIGINT), body, effects, prev_hash, hash FROM records
             WHERE seq >= $1 ORDER BY seq LIMIT $2",
            &[&from, &limit],
        )
        .map_err(pg_err("reading records"))?;
    rows.iter()
        .map(|r| {
            let t = (|| {
                Ok::<_, postgres::Error>((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                    r.try_get(5)?,
                ))
            })()
            .map_err(pg_err("reading records"))?;
            raw_record(t)
        })
        .collect()
}

impl Conn for WriteConn {
    fn begin(&mut self) -> Result<(), Error> {
        if self.client.is_closed() {
            // The server restarted or the network dropped: reconnect before the batch.
            let mut client = self.config.connect(NoTls).map_err(pg_err("reconnecting"))?;
            self.st = Statements::prepare(&mut client)?;
            self.client = client;
        }
        self.client
            .batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
            .map_err(pg_err("beginning a transaction"))
    }

    fn commit(&mut self) -> Result<(), Error> {
        self.client
            .batch_execute("COMMIT")
            .map_err(pg_err("committing"))
    }

    fn rollback(&mut self) {
        // Outside a transaction PostgreSQL only warns; a broken connection has no
        // transaction left to roll back.
        let _ = self.client.batch_execute("ROLLBACK");
    }

    fn head(&mut self) -> Result<Head, Error> {
        let row = self
            .client
            .query_opt(&self.st.head, &[])
            .map_err(pg_err("reading the head"))?;
        head_of(row)
    }

    fn counter(&mut self, product: &str) -> Result<Option<CounterState>, Error> {
        let row = self
            .client
            .query_opt(&self.st.counter, &[&product])
            .map_err(pg_err("reading a counter"))?;
        counter_state(row)
    }

    fn claims(&mut self, keys: &[(&str, &[u8])]) -> Result<HashMap<ClaimKey, u64>, Error> {
        let rows: Vec<Vec<Param<'_>>> = keys
            .iter()
            .map(|(n, k)| vec![Box::new(*n) as Param<'_>, Box::new(*k)])
            .collect();
        let found = self.bulk(Bulk::ClaimLookup, rows, "reading claims")?;
        let mut out = HashMap::with_capacity(found.len());
        for r in found {
            let (namespace, key, seq): (String, Vec<u8>, i64) =
                (|| Ok::<_, postgres::Error>((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))()
                    .map_err(pg_err("reading claims"))?;
            out.insert((namespace, key), u64_of(seq, "claim seq")?);
        }
        Ok(out)
    }

    fn insert(
        &mut self,
        records: &[&Record],
        events: &[CounterEvent],
        claims: &[ClaimRow<'_>],
    ) -> Result<(), Error> {
        let mut rows: Vec<Vec<Param<'_>>> = Vec::with_capacity(records.len());
        for r in records {
            rows.push(vec![
                Box::new(i64_of(r.seq)?),
                Box::new(i32::from(r.kind.code())),
                Box::new(&r.body[..]),
                Box::new(&r.effects[..]),
                Box::new(&r.prev_hash[..]),
                Box::new(&r.hash[..]),
            ]);
        }
        self.bulk(Bulk::Records, rows, "inserting records")?;
        let mut rows: Vec<Vec<Param<'_>>> = Vec::with_capacity(events.len());
        for e in events {
            rows.push(vec![
                Box::new(e.product.as_str()),
                Box::new(i64_of(e.event)?),
                Box::new(i64_of(e.seq)?),
                Box::new(e.op),
                Box::new(i64_of(e.amount)?),
                Box::new(i64_of(e.after.total)?),
                Box::new(i64_of(e.after.issued)?),
            ]);
        }
        self.bulk(Bulk::Events, rows, "inserting counter events")?;
        let mut rows: Vec<Vec<Param<'_>>> = Vec::with_capacity(claims.len());
        for c in claims {
            rows.push(vec![
                Box::new(c.namespace),
                Box::new(c.key),
                Box::new(i64_of(c.seq)?),
            ]);
        }
        self.bulk(Bulk::Claims, rows, "inserting claims")?;
        Ok(())
    }

    fn read_raw(&mut self, from_seq: u64, limit: usize) -> Result<Vec<RawRecord>, Error> {
        read_raw(&mut self.client, from_seq, limit)
    }

    fn retryable(&self, e: &Error) -> bool {
        retryable(e)
    }
}

impl Store for PgStore {
    fn append_all(&self, appends: Vec<Append>) -> Vec<Result<Vec<Record>, Error>> {
        self.writer.submit(appends)
    }

    fn append_latency(&self) -> trustfab_ledger::AppendLatency {
        self.writer.append_latency()
    }

    fn head(&self) -> Result<Head, Error> {
        self.read(|c| {
            let row = c
                .query_opt(HEAD_SQL, &[])
                .map_err(pg_err("reading the head"))?;
            head_of(row)
        })
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
            let rows = c
                .query(
                    "SELECT product, event, seq, op, amount, total, issued FROM counter_events
                     WHERE (product, event) > ($1, $2) ORDER BY product, event LIMIT $3",
                    &[&product, &event, &limit],
                )
                .map_err(pg_err("reading counter events"))?;
            rows.iter()
                .map(|r| {
                    let (product, event, seq, op, amount): (String, i64, i64, i64, i64) = (|| {
                        Ok::<_, postgres::Error>((
                            r.try_get(0)?,
                            r.try_get(1)?,
                            r.try_get(2)?,
                            r.try_get(3)?,
                            r.try_get(4)?,
                        ))
                    })(
                    )
                    .map_err(pg_err("reading counter events"))?;
                    Ok(CounterEvent {
                        product,
                        event: u64_of(event, "counter event")?,
                        seq: u64_of(seq, "counter seq")?,
                        op,
                        amount: u64_of(amount, "counter amount")?,
                        after: counter_of(r, 5)?,
                    })
                })
                .collect()
        })
    }

    fn counter(&self, product: &str) -> Result<Option<Counter>, Error> {
        self.read(|c| {
            let row = c
                .query_opt(COUNTER_SQL, &[&product])
                .map_err(pg_err("reading a counter"))?;
            Ok(counter_state(row)?.map(|(_, c)| c))
        })
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
            let rows = c
                .query(
                    "SELECT c.product, c.total, c.issued FROM counter_events c
                     WHERE c.event = (SELECT MAX(e.event) FROM counter_events e
                                      WHERE e.product = c.product)
                     ORDER BY c.product",
                    &[],
                )
                .map_err(pg_err("reading counters"))?;
            rows.iter()
                .map(|r| {
                    let p: String = r.try_get(0).map_err(pg_err("reading counters"))?;
                    Ok((p, counter_of(r, 1)?))
                })
                .collect()
        })
    }

    fn claimed(&self, namespace: &str, key: &[u8]) -> Result<Option<u64>, Error> {
        self.read(|c| {
            let row = c
                .query_opt(CLAIM_SQL, &[&namespace, &key])
                .map_err(pg_err("reading a claim"))?;
            claim_of(row)
        })
    }

    fn claim_count(&self, up_to_seq: u64) -> Result<u64, Error> {
        let up_to = i64::try_from(up_to_seq).unwrap_or(i64::MAX);
        self.read(|c| {
            let n: i64 = c
                .query_one("SELECT COUNT(*) FROM claims WHERE seq <= $1", &[&up_to])
                .and_then(|r| r.try_get(0))
                .map_err(pg_err("counting claims"))?;
            u64_of(n, "claim count")
        })
    }
}
