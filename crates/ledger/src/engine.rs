//! The backend-independent core: the transaction that applies a batch of appends through a
//! [`Conn`], the group-commit writer thread that feeds it, and chain verification.
//!
//! A batch runs as one transaction: read the head and every claim the batch makes, check each
//! append in memory (reading a product's counter the first time it appears), then insert the
//! rows of the accepted appends in bulk and commit. A refused append has written nothing and
//! the batch goes on without it; a storage error aborts (and, when the backend says the error
//! is a conflict with another writer, retries) the whole batch.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use crate::append::{decode_effects, encode_effects, Append, Counter, CounterOp};
use crate::error::{Error, Problem};
use crate::record::{record_hash, Checkpoint, Head, Kind, Record};
use crate::tracker::{Guard, Tracked, Tracker};

/// The most appends one transaction carries.
pub(crate) const MAX_BATCH_APPENDS: usize = 2048;

/// How often a conflicting batch is retried before its callers get [`Error::Contention`].
pub(crate) const MAX_ATTEMPTS: u32 = 1000;

/// The latest counter event of a product: its number and the counter after it.
pub type CounterState = (u64, Counter);

/// One stored counter event, as read back for verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterEvent {
    /// The product key.
    pub product: String,
    /// Event number within the product, gapless from 1.
    pub event: u64,
    /// First record of the append that made it.
    pub seq: u64,
    /// The operation code (1 create, 2 top-up, 3 spend, 4 credit).
    pub op: i64,
    /// The operation's amount.
    pub amount: u64,
    /// The counter after the event.
    pub after: Counter,
}

/// A stored record as read, before its kind is checked; verification needs rows whose kind
/// is unknown or whose hashes have the wrong length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRecord {
    /// Stored seq.
    pub seq: u64,
    /// Stored kind code.
    pub kind: u16,
    /// Stored body.
    pub body: Vec<u8>,
    /// Stored effects.
    pub effects: Vec<u8>,
    /// Stored previous hash.
    pub prev_hash: Vec<u8>,
    /// Stored hash.
    pub hash: Vec<u8>,
}

impl RawRecord {
    /// The typed record.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownKind`] for a kind code this build does not know, [`Error::Corrupt`] for
    /// a hash that is not 32 bytes.
    pub fn into_record(self) -> Result<Record, Error> {
        let kind = Kind::from_code(self.kind).ok_or(Error::UnknownKind {
            seq: self.seq,
            code: self.kind,
        })?;
        let hash32 = |v: Vec<u8>| {
            <[u8; 32]>::try_from(v).map_err(|_| Error::Corrupt {
                what: "hash length",
            })
        };
        Ok(Record {
            seq: self.seq,
            kind,
            body: self.body,
            effects: self.effects,
            prev_hash: hash32(self.prev_hash)?,
            hash: hash32(self.hash)?,
        })
    }
}

/// A claim key: (namespace, key).
pub type ClaimKey = (String, Vec<u8>);

/// One stored claim row: namespace, key, seq of the first record of its append.
pub struct ClaimRow<'a> {
    /// The claim's namespace.
    pub namespace: &'a str,
    /// The claimed key.
    pub key: &'a [u8],
    /// The first record of the append that made it.
    pub seq: u64,
}

/// One connection's view of the schema, inside a transaction the engine opens. The engine
/// reads what it needs once per batch and writes everything in bulk at its end, so a batch
/// costs a fixed number of round trips however many appends it carries.
pub trait Conn: Send + 'static {
    /// Opens a write transaction.
    ///
    /// # Errors
    /// A storage error.
    fn begin(&mut self) -> Result<(), Error>;
    /// Commits it durably.
    ///
    /// # Errors
    /// A storage error.
    fn commit(&mut self) -> Result<(), Error>;
    /// Rolls it back (best effort after an error).
    fn rollback(&mut self);
    /// The chain head.
    ///
    /// # Errors
    /// A storage error.
    fn head(&mut self) -> Result<Head, Error>;
    /// The latest counter event of a product.
    ///
    /// # Errors
    /// A storage error.
    fn counter(&mut self, product: &str) -> Result<Option<CounterState>, Error>;
    /// Which of these claims exist, with the seq that made each.
    ///
    /// # Errors
    /// A storage error.
    fn claims(&mut self, keys: &[(&str, &[u8])]) -> Result<HashMap<ClaimKey, u64>, Error>;
    /// Inserts the batch's rows.
    ///
    /// # Errors
    /// A storage error.
    fn insert(
        &mut self,
        records: &[&Record],
        events: &[CounterEvent],
        claims: &[ClaimRow<'_>],
    ) -> Result<(), Error>;
    /// Up to `limit` stored records with `seq >= from_seq`, in seq order, read inside the
    /// transaction (a sealed store follows the chain with it).
    ///
    /// # Errors
    /// A storage error.
    fn read_raw(&mut self, from_seq: u64, limit: usize) -> Result<Vec<RawRecord>, Error>;
    /// Whether a storage error is a conflict with another writer worth retrying.
    fn retryable(&self, e: &Error) -> bool;
}

/// What the batch has read or decided so far: counters and claims as they stand after the
/// accepted appends.
struct BatchState {
    head: Head,
    counters: HashMap<String, Option<CounterState>>,
    claims: HashMap<ClaimKey, u64>,
    /// The claims of the appends accepted in this batch (a sealed store's account takes them
    /// once the batch commits).
    new_claims: std::collections::HashSet<ClaimKey>,
}

/// The migrations of `migrations` after schema version `current`, in order; a schema newer than
/// this build knows is refused rather than written to. Both backends apply this policy.
///
/// # Errors
/// [`Error::Corrupt`] for a schema newer than this build knows.
pub fn pending_migrations(
    migrations: &'static [(i64, &'static str)],
    current: i64,
) -> Result<impl Iterator<Item = &'static (i64, &'static str)>, Error> {
    let latest = migrations.last().map_or(0, |m| m.0);
    if current > latest {
        return Err(Error::SchemaTooNew {
            found: current,
            supported: latest,
        });
    }
    Ok(migrations.iter().filter(move |m| m.0 > current))
}

/// Checks one append against the batch state (reading counters it has not seen yet), and
/// returns its records and counter events without touching the state: a refused append
/// changes nothing.
fn check_one(
    conn: &mut dyn Conn,
    tracked: Option<&Tracked>,
    st: &mut BatchState,
    a: &Append,
) -> Result<(Vec<Record>, Vec<CounterEvent>), Error> {
    let head = st.head;
    if tracked.is_some() && !a.counters.is_empty() {
        // A sealed store's counters move only under the sealer's seal, positional (and so
        // at an expected head) when units are added.
        let ok = match a.is_sealed() {
            Some(positional) => {
                (positional && a.expect_head.is_some())
                    || !a.counters.iter().any(crate::seal::adds_units)
            }
            None => false,
        };
        if !ok {
            return Err(Error::Invalid(crate::error::Invalid::Unsealed));
        }
    }
    if let Some(expected) = a.expect_head {
        if expected != head.seq {
            return Err(Error::HeadMoved {
                expected,
                actual: head.seq,
            });
        }
    }
    let first_seq = head.seq + 1;
    // A checkpoint must cover the record just before it.
    let mut h = head;
    for r in &a.records {
        if r.kind == Kind::Checkpoint {
            let cp = Checkpoint::decode(&r.body)
                .map_err(|_| Error::Invalid(crate::error::Invalid::Checkpoint))?;
            if cp.head != h {
                return Err(Error::HeadMoved {
                    expected: cp.head.seq,
                    actual: h.seq,
                });
            }
        }
        h.seq += 1;
    }
    for c in &a.claims {
        let key = (c.namespace.clone(), c.key.clone());
        if let Some(t) = tracked {
            // A sealed store's claims are the chain's: a stored claim row deleted or forged is
            // named, not believed.
            let in_chain = t.has_claim(&c.namespace, &c.key) || st.new_claims.contains(&key);
            if in_chain != st.claims.contains_key(&key) {
                return Err(Error::Tampered {
                    seq: head.seq,
                    problem: Problem::StateMismatch {
                        what: format!(
                            "claim {} {}: {}",
                            c.namespace,
                            hex::encode(&c.key),
                            if in_chain {
                                "a record made it, its stored row is gone"
                            } else {
                                "stored, but no record made it"
                            }
                        ),
                    },
                });
            }
        }
        // Claims were read for the whole batch up front; the map also holds the claims of the
        // appends accepted earlier in this batch.
        if let Some(&first_seq) = st.claims.get(&key) {
            return Err(Error::Duplicate {
                namespace: c.namespace.clone(),
                key: c.key.clone(),
                first_seq,
            });
        }
    }
    let mut local: HashMap<&str, Option<CounterState>> = HashMap::new();
    let mut events = Vec::with_capacity(a.counters.len());
    for op in &a.counters {
        let product = op.product();
        let state = match local.get(product) {
            Some(s) => *s,
            None => match st.counters.get(product) {
                Some(s) => *s,
                None => {
                    // A sealed store's counters are the chain's, never the stored rows.
                    let stored = conn.counter(product)?;
                    let s = match tracked {
                        Some(t) => {
                            let chain = t.counters.get(product).copied();
                            if stored != chain {
                                // Rows rewritten or forged: named, and nothing appended.
                                return Err(Error::Tampered {
                                    seq: head.seq,
                                    problem: Problem::StateMismatch {
                                        what: format!(
                                            "counter of product {product}: the stored rows say {}, the chain says {}",
                                            show(stored),
                                            show(chain)
                                        ),
                                    },
                                });
                            }
                            chain
                        }
                        None => stored,
                    };
                    st.counters.insert(product.to_owned(), s);
                    s
                }
            },
        };
        let after = op.apply(state.map(|(_, c)| c))?;
        let event = state.map_or(1, |(e, _)| e + 1);
        local.insert(product, Some((event, after)));
        events.push(CounterEvent {
            product: product.to_owned(),
            event,
            seq: first_seq,
            op: op.code(),
            amount: op.amount(),
            after,
        });
    }
    let mut out = Vec::with_capacity(a.records.len());
    let mut prev = head;
    let mut effects = encode_effects(&a.counters, &a.claims);
    for r in &a.records {
        let rec = Record::new(
            prev.seq + 1,
            r.kind,
            r.body.clone(),
            std::mem::take(&mut effects),
            prev.hash,
        );
        prev = Head {
            seq: rec.seq,
            hash: rec.hash,
        };
        out.push(rec);
    }
    // Accepted: fold it into the batch state.
    st.head = prev;
    for (product, s) in local {
        st.counters.insert(product.to_owned(), s);
    }
    for c in &a.claims {
        st.claims
            .insert((c.namespace.clone(), c.key.clone()), first_seq);
        if tracked.is_some() {
            st.new_claims.insert((c.namespace.clone(), c.key.clone()));
        }
    }
    Ok((out, events))
}

/// A counter state as a verification finding shows it.
fn show(s: Option<CounterState>) -> String {
    match s {
        Some((event, c)) => format!("{} issued of {} (event {event})", c.issued, c.total),
        None => "no counter".into(),
    }
}

type Outcome = Result<Vec<Record>, Error>;

/// Runs a batch as one transaction; `Err` only for a storage error (nothing committed), or, in
/// a sealed store, for a chain found tampered with.
fn run_batch(
    conn: &mut dyn Conn,
    mut tracker: Option<&mut Tracker>,
    batch: &[&Append],
) -> Result<Vec<Outcome>, Error> {
    conn.begin()?;
    let attempt = (|| {
        // A sealed store follows the chain to the head first; that read is the batch's head.
        let head = match tracker.as_deref_mut() {
            Some(t) => t.sync(conn)?,
            None => conn.head()?,
        };
        let tracked = tracker.as_deref().and_then(|t| t.state.as_ref());
        let keys: Vec<(&str, &[u8])> = batch
            .iter()
            .flat_map(|a| a.claims.iter())
            .map(|c| (c.namespace.as_str(), c.key.as_slice()))
            .collect();
        let claims = if keys.is_empty() {
            HashMap::new()
        } else {
            conn.claims(&keys)?
        };
        let mut st = BatchState {
            head,
            counters: HashMap::new(),
            claims,
            new_claims: std::collections::HashSet::new(),
        };
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut events = Vec::new();
        let mut claim_rows = Vec::new();
        for a in batch {
            match check_one(conn, tracked, &mut st, a) {
                Ok((recs, evs)) => {
                    let first_seq = recs.first().map_or(0, |r| r.seq);
                    claim_rows.extend(a.claims.iter().map(|c| ClaimRow {
                        namespace: &c.namespace,
                        key: &c.key,
                        seq: first_seq,
                    }));
                    events.extend(evs);
                    outcomes.push(Ok(recs));
                }
                Err(e) if e.is_refusal() => outcomes.push(Err(e)),
                Err(e) => return Err(e),
            }
        }
        // The accepted appends' records, borrowed from their outcomes (not copied).
        let records: Vec<&Record> = outcomes
            .iter()
            .filter_map(|o| o.as_ref().ok())
            .flatten()
            .collect();
        if !records.is_empty() {
            conn.insert(&records, &events, &claim_rows)?;
        }
        conn.commit()?;
        // Committed: the batch's own appends are part of the account.
        if let Some(t) = tracker.as_deref_mut().and_then(|t| t.state.as_mut()) {
            t.accept(st.head, st.counters, &st.new_claims);
        }
        Ok(outcomes)
    })();
    if attempt.is_err() {
        conn.rollback();
    }
    attempt
}

/// Runs a batch, retrying it whole on conflicts; every append gets an outcome.
pub(crate) fn commit_batch(
    conn: &mut dyn Conn,
    mut tracker: Option<&mut Tracker>,
    batch: &[&Append],
) -> Vec<Outcome> {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match run_batch(conn, tracker.as_deref_mut(), batch) {
            Ok(outcomes) => return outcomes,
            Err(e) if conn.retryable(&e) => {
                if attempt >= MAX_ATTEMPTS {
                    return vec![Err(Error::Contention { attempts: attempt }); batch.len()];
                }
                // Back off a little, more each time, with jitter from the clock's low bits,
                // so that competing writers stop colliding.
                let jitter = u64::from(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.subsec_nanos())
                        % 1000,
                );
                let micros = u64::from(attempt.min(20)) * 200 + jitter;
                thread::sleep(Duration::from_micros(micros));
            }
            Err(e) => return vec![Err(e); batch.len()],
        }
    }
}

struct Job {
    appends: Vec<Append>,
    reply: mpsc::SyncSender<Vec<Outcome>>,
}

/// The group-commit writer: one thread owns the write connection; callers hand it their
/// appends and wait for their own outcomes. Whatever is queued while a transaction commits
/// goes into the next one, so concurrent callers share one transaction and one sync.
pub struct Writer {
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
    /// The sealed store's guard and account, once [`Writer::seal_with`] installed one.
    tracker: Arc<Mutex<Option<Tracker>>>,
    /// How long callers of [`Writer::submit`] waited.
    latency: crate::latency::Latency,
}

impl Writer {
    /// Starts the writer thread over `conn`.
    ///
    /// # Errors
    /// The writer thread could not be started.
    pub fn start<C: Conn>(name: &str, mut conn: C) -> Result<Self, std::io::Error> {
        let (tx, rx) = mpsc::channel::<Job>();
        let tracker: Arc<Mutex<Option<Tracker>>> = Arc::new(Mutex::new(None));
        let shared = Arc::clone(&tracker);
        let thread = thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![first];
                    let mut n = jobs[0].appends.len();
                    while n < MAX_BATCH_APPENDS {
                        match rx.try_recv() {
                            Ok(j) => {
                                n += j.appends.len();
                                jobs.push(j);
                            }
                            Err(_) => break,
                        }
                    }
                    let batch: Vec<&Append> = jobs.iter().flat_map(|j| j.appends.iter()).collect();
                    let mut guard = shared.lock().unwrap_or_else(PoisonError::into_inner);
                    let mut outcomes = commit_batch(&mut conn, guard.as_mut(), &batch).into_iter();
                    drop(guard);
                    for j in &jobs {
                        // A sync request (no appends) gets no outcome; it reads the account.
                        let mine: Vec<Outcome> = outcomes.by_ref().take(j.appends.len()).collect();
                        // A caller that gave up waiting is no error of the ledger's.
                        let _ = j.reply.send(mine);
                    }
                }
            })?;
        Ok(Self {
            queue: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            tracker,
            latency: crate::latency::Latency::default(),
        })
    }

    /// How long callers of [`Writer::submit`] waited for their outcomes.
    pub fn append_latency(&self) -> crate::AppendLatency {
        self.latency.read()
    }

    /// Makes this a sealed store under `guard`: from the next transaction on, counters are the
    /// chain's (walked once from record 1 to the anchored head, then followed), counter
    /// operations are accepted only in sealed appends, and a chain found tampered with fails
    /// every append ([`Error::Tampered`]).
    pub fn seal_with(&self, guard: Arc<dyn Guard>) {
        let mut t = self.tracker.lock().unwrap_or_else(PoisonError::into_inner);
        *t = Some(Tracker {
            guard,
            state: None,
            last_error: None,
            poisoned: None,
        });
    }

    /// A product's counter as the chain says, brought up to the store's head first; in a store
    /// that is not sealed, what `stored` reads from the rows ([`crate::Store::verified_counter`]).
    ///
    /// # Errors
    /// [`Error::Tampered`] when following the chain finds it tampered with, or a storage error.
    pub fn verified_counter(
        &self,
        product: &str,
        stored: impl FnOnce() -> Result<Option<Counter>, Error>,
    ) -> Result<Option<Counter>, Error> {
        match self.account(|t| t.counters.get(product).map(|(_, c)| *c))? {
            Some(c) => Ok(c),
            None => stored(),
        }
    }

    /// Every counter as the chain says, ordered by product key, brought up to the store's head
    /// first (one transaction); in a store that is not sealed, what `stored` reads from the rows
    /// ([`crate::Store::verified_counters`]).
    ///
    /// # Errors
    /// [`Error::Tampered`] when following the chain finds it tampered with, or a storage error.
    pub fn verified_counters(
        &self,
        stored: impl FnOnce() -> Result<Vec<(String, Counter)>, Error>,
    ) -> Result<Vec<(String, Counter)>, Error> {
        let all = self.account(|t| {
            let mut all: Vec<(String, Counter)> = t
                .counters
                .iter()
                .map(|(p, (_, c))| (p.clone(), *c))
                .collect();
            all.sort_by(|a, b| a.0.cmp(&b.0));
            all
        })?;
        match all {
            Some(all) => Ok(all),
            None => stored(),
        }
    }

    /// Whether a claim exists as the chain says, brought up to the store's head first; in a
    /// store that is not sealed, what `stored` reads from the rows
    /// ([`crate::Store::verified_claim`]).
    ///
    /// # Errors
    /// [`Error::Tampered`] when following the chain finds it tampered with, or a storage error.
    pub fn verified_claim(
        &self,
        namespace: &str,
        key: &[u8],
        stored: impl FnOnce() -> Result<Option<u64>, Error>,
    ) -> Result<bool, Error> {
        match self.account(|t| t.has_claim(namespace, key))? {
            Some(b) => Ok(b),
            None => Ok(stored()?.is_some()),
        }
    }

    /// Whether the sealed store's account, as of this process's last transaction (no new one
    /// is run), holds a claim; `None` in a store that is not sealed or not yet walked
    /// ([`crate::Store::claim_in_account`]).
    pub fn claim_in_account(&self, namespace: &str, key: &[u8]) -> Option<bool> {
        let t = self.tracker.lock().unwrap_or_else(PoisonError::into_inner);
        t.as_ref()
            .and_then(|t| t.state.as_ref())
            .map(|s| s.has_claim(namespace, key))
    }

    /// `read` of the sealed store's account, brought up to the store's head first; `None` in a
    /// store that is not sealed.
    fn account<T>(&self, read: impl FnOnce(&Tracked) -> T) -> Result<Option<T>, Error> {
        if self
            .tracker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
        {
            return Ok(None);
        }
        self.sync()?;
        let t = self.tracker.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(t.as_ref().and_then(|t| t.state.as_ref()).map(read))
    }

    /// Runs an empty transaction: a sealed store follows the chain to its head.
    fn sync(&self) -> Result<(), Error> {
        let (reply, answer) = mpsc::sync_channel(1);
        let sent = match self.queue.lock() {
            Ok(q) => q.as_ref().is_some_and(|q| {
                q.send(Job {
                    appends: Vec::new(),
                    reply,
                })
                .is_ok()
            }),
            Err(_) => false,
        };
        if !sent {
            return Err(Error::WriterStopped);
        }
        answer.recv().map_err(|_| Error::WriterStopped)?;
        let t = self.tracker.lock().unwrap_or_else(PoisonError::into_inner);
        match t.as_ref().map(|t| t.last_error.clone()) {
            Some(Some(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// Validates, submits and waits: one outcome per append, in order.
    pub fn submit(&self, appends: Vec<Append>) -> Vec<Outcome> {
        let total = appends.len();
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(total);
        let mut valid = Vec::with_capacity(total);
        for a in appends {
            match a.validate() {
                Ok(()) => {
                    outcomes.push(None);
                    valid.push(a);
                }
                Err(e) => outcomes.push(Some(Err(Error::Invalid(e)))),
            }
        }
        if !valid.is_empty() {
            let t0 = std::time::Instant::now();
            let answered = self.send(valid);
            self.latency.observe(t0.elapsed());
            let mut answered = answered.into_iter();
            for slot in outcomes.iter_mut().filter(|o| o.is_none()) {
                *slot = Some(answered.next().unwrap_or(Err(Error::WriterStopped)));
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Err(Error::WriterStopped)))
            .collect()
    }

    fn send(&self, appends: Vec<Append>) -> Vec<Outcome> {
        let n = appends.len();
        let (reply, answer) = mpsc::sync_channel(1);
        let sent = match self.queue.lock() {
            Ok(q) => q
                .as_ref()
                .is_some_and(|q| q.send(Job { appends, reply }).is_ok()),
            Err(_) => false,
        };
        if !sent {
            return vec![Err(Error::WriterStopped); n];
        }
        answer
            .recv()
            .unwrap_or_else(|_| vec![Err(Error::WriterStopped); n])
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Ok(mut q) = self.queue.lock() {
            q.take();
        }
        if let Ok(mut t) = self.thread.lock() {
            if let Some(t) = t.take() {
                // A panicked writer has already failed its callers; nothing more to report.
                let _ = t.join();
            }
        }
    }
}

/// Checks that stored record `r` is the one after `prev`: the next seq, its hash the hash of its
/// fields, committing to `prev`'s hash, of a known kind. Returns its hash and kind.
///
/// # Errors
/// [`Error::Tampered`] naming the record expected and what is wrong.
pub(crate) fn follows(prev: &Head, r: &RawRecord) -> Result<(crate::Hash, Kind), Error> {
    let expected = prev.seq + 1;
    let bad = |problem| Error::Tampered {
        seq: expected,
        problem,
    };
    if r.seq != expected {
        // Rows come back ordered by seq, so a higher one means `expected` is gone.
        return Err(bad(Problem::Missing { next_found: r.seq }));
    }
    let recomputed = record_hash(&prev.hash, r.seq, r.kind, &r.body, &r.effects);
    if r.hash[..] != recomputed[..] {
        // Either this record changed, or it does not follow the previous one.
        if r.prev_hash[..] != prev.hash[..] {
            return Err(bad(Problem::BrokenLink));
        }
        return Err(bad(Problem::HashMismatch));
    }
    if r.prev_hash[..] != prev.hash[..] {
        return Err(bad(Problem::BrokenLink));
    }
    let kind = Kind::from_code(r.kind).ok_or(bad(Problem::UnknownKind { code: r.kind }))?;
    Ok((recomputed, kind))
}

/// What a successful verification covered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The head of the verified chain.
    pub head: Head,
    /// Checkpoint records, each with a valid signature.
    pub checkpoints: u64,
    /// The seq of the last checkpoint; records after it are chained but not yet signed.
    pub last_checkpoint: Option<u64>,
    /// Counter events checked against the chain.
    pub counter_events: u64,
    /// Claims checked against the chain.
    pub claims: u64,
}

/// What the chain says a product's counter is: the counter, how many events made it, and the
/// last record that changed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Replayed {
    pub(crate) counter: Counter,
    pub(crate) events: u64,
    pub(crate) last_seq: u64,
}

/// Walks the chain from record 1, stopping at the first bad record, and replays the counter
/// operations and claims the records carry.
pub(crate) struct ChainWalk<'v> {
    verifier: &'v crate::Verifier<'v>,
    prev: Head,
    checkpoints: u64,
    last_checkpoint: Option<u64>,
    pub(crate) counters: HashMap<String, Replayed>,
    pub(crate) claims: u64,
}

impl<'v> ChainWalk<'v> {
    pub(crate) fn new(verifier: &'v crate::Verifier<'v>) -> Self {
        Self {
            verifier,
            prev: Head::EMPTY,
            checkpoints: 0,
            last_checkpoint: None,
            counters: HashMap::new(),
            claims: 0,
        }
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.prev.seq + 1
    }

    pub(crate) fn head(&self) -> Head {
        self.prev
    }

    pub(crate) fn step(&mut self, r: &RawRecord) -> Result<(), Error> {
        let expected = self.prev.seq + 1;
        let bad = |problem| Error::Tampered {
            seq: expected,
            problem,
        };
        let (recomputed, kind) = follows(&self.prev, r)?;
        if kind == Kind::Checkpoint {
            let cp = Checkpoint::decode(&r.body).map_err(bad)?;
            if cp.head != self.prev {
                return Err(bad(Problem::CheckpointMismatch));
            }
            if !(self.verifier)(&Checkpoint::message(&cp.head, cp.time), &cp.signature) {
                return Err(bad(Problem::BadSignature));
            }
            self.checkpoints += 1;
            self.last_checkpoint = Some(r.seq);
        }
        let (ops, claims) = decode_effects(&r.effects).map_err(bad)?;
        for op in &ops {
            let entry = self.counters.get(op.product()).copied();
            let counter = op
                .apply(entry.map(|e| e.counter))
                .map_err(|_| bad(Problem::ImpossibleEffect))?;
            self.counters.insert(
                op.product().to_owned(),
                Replayed {
                    counter,
                    events: entry.map_or(0, |e| e.events) + 1,
                    last_seq: r.seq,
                },
            );
        }
        self.claims += u64::try_from(claims.len()).unwrap_or(u64::MAX);
        self.prev = Head {
            seq: r.seq,
            hash: recomputed,
        };
        Ok(())
    }

    pub(crate) fn finish(self, counter_events: u64) -> Verified {
        Verified {
            head: self.prev,
            checkpoints: self.checkpoints,
            last_checkpoint: self.last_checkpoint,
            counter_events,
            claims: self.claims,
        }
    }
}

/// Checks the stream of stored counter events, ordered by (product, event): each follows from
/// the one before and names an existing record; and each product's final state is what the
/// chain says.
pub(crate) struct CounterWalk<'c> {
    chain: &'c HashMap<String, Replayed>,
    head_seq: u64,
    last: Option<(String, u64, Counter)>,
    seen: std::collections::HashSet<String>,
    pub(crate) count: u64,
}

impl<'c> CounterWalk<'c> {
    pub(crate) fn new(chain: &'c HashMap<String, Replayed>, head_seq: u64) -> Self {
        Self {
            chain,
            head_seq,
            last: None,
            seen: std::collections::HashSet::new(),
            count: 0,
        }
    }

    fn mismatch(&self, product: &str) -> Error {
        Error::Tampered {
            seq: self
                .chain
                .get(product)
                .map_or(self.head_seq, |r| r.last_seq),
            problem: Problem::StateMismatch {
                what: format!("counter of product {product}"),
            },
        }
    }

    /// The last product is complete: its stored final state must be the chain's.
    fn close_product(&self) -> Result<(), Error> {
        if let Some((p, n, c)) = &self.last {
            match self.chain.get(p) {
                Some(r) if r.events == *n && r.counter == *c => {}
                _ => return Err(self.mismatch(p)),
            }
        }
        Ok(())
    }

    pub(crate) fn step(&mut self, e: &CounterEvent) -> Result<(), Error> {
        let bad = || Error::Tampered {
            seq: e.seq,
            problem: Problem::CounterInconsistent {
                product: e.product.clone(),
                event: e.event,
            },
        };
        if e.seq == 0 {
            return Err(Error::Tampered {
                seq: e.seq,
                problem: Problem::DanglingReference,
            });
        }
        if e.seq > self.head_seq {
            // Appended after the chain walk (events of a product are in seq order, so the
            // rest of this product is too): the next verification covers it.
            return Ok(());
        }
        let before = match &self.last {
            Some((p, n, c)) if *p == e.product => {
                if e.event != n + 1 {
                    return Err(bad());
                }
                Some(*c)
            }
            _ => {
                self.close_product()?;
                if e.event != 1 {
                    return Err(bad());
                }
                None
            }
        };
        let op = CounterOp::from_code(e.op, e.product.clone(), e.amount).ok_or_else(bad)?;
        match op.apply(before) {
            Ok(after) if after == e.after => {}
            _ => return Err(bad()),
        }
        if e.event == 1 {
            self.seen.insert(e.product.clone());
        }
        self.last = Some((e.product.clone(), e.event, e.after));
        self.count += 1;
        Ok(())
    }

    /// After the last event: the final product checks, and no product the chain knows is
    /// missing from the stored counters.
    pub(crate) fn finish(self) -> Result<u64, Error> {
        self.close_product()?;
        let mut missing: Vec<&String> = self
            .chain
            .keys()
            .filter(|p| !self.seen.contains(*p))
            .collect();
        missing.sort();
        if let Some(p) = missing.first() {
            return Err(self.mismatch(p));
        }
        Ok(self.count)
    }
}
