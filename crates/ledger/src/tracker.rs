//! A sealed store's own account of its counters: the writer never takes a counter from the
//! store's rows, which whoever administers the database can rewrite, but from the chain itself,
//! walked once from record 1 (reaching the head anchored outside the store) and then followed
//! record by record as other writers add to it. Records up to the anchor are vouched for by it
//! (their hashes lead to it); a record after it that carries counter operations counts only under
//! a seal that verifies ([`Guard::seal_valid`]), and operations that add units only under a
//! positional seal, so a copy appended again adds nothing.

use std::collections::{HashMap, HashSet};

use sha2::{Digest, Sha256};
use std::error::Error as StdError;

use crate::append::{decode_effects, MAX_RECORDS_PER_APPEND};
use crate::engine::{follows, Conn, CounterState, RawRecord};
use crate::error::{Error, Problem};
use crate::record::{Hash, Head, Kind};
use crate::seal::{adds_units, seal_digest, Seal};

/// What a sealed store checks its records with: the sealer's MAC and its anchor, both kept
/// outside the store (the HSM's token).
pub trait Guard: Send + Sync {
    /// Whether `tag` is the sealer's MAC of `digest` (checked in constant time by the sealer).
    fn seal_valid(&self, digest: &Hash, tag: &[u8]) -> bool;

    /// The head the sealer anchored outside the store, if any. Read before the store's head:
    /// the sealer anchors only records the store has committed.
    ///
    /// # Errors
    /// The anchor could not be read.
    fn anchored(&self) -> Result<Option<Head>, Box<dyn StdError + Send + Sync>>;
}

/// How many records one read of the chain takes.
const READ_CHUNK: usize = 1000;

/// One record waiting for the seal that ends its append.
#[derive(Debug)]
struct Waiting {
    seq: u64,
    kind: u16,
    body: Vec<u8>,
    effects: Vec<u8>,
    prev_hash: Hash,
    /// Its operations add units (create, top-up, credit).
    adds: bool,
    /// It carries counter operations.
    counts: bool,
}

/// The counters as the chain says, up to `head`.
#[derive(Debug)]
pub(crate) struct Tracked {
    pub(crate) head: Head,
    pub(crate) counters: HashMap<String, CounterState>,
    /// Records since the last seal, at most [`MAX_RECORDS_PER_APPEND`].
    window: Vec<Waiting>,
    /// A digest of every claim the chain made (16 bytes of SHA-256 each: a million devices'
    /// two claims hold in about 40 MB).
    claims: HashSet<[u8; 16]>,
    /// Records up to here are vouched for by the anchor the first walk reached (the chain's
    /// hashes lead to it), sealed or not: the records of a release before seals.
    vouched: u64,
}

/// The guard and what it has verified so far (nothing until the first sync).
pub(crate) struct Tracker {
    pub(crate) guard: std::sync::Arc<dyn Guard>,
    pub(crate) state: Option<Tracked>,
    /// Why the last sync failed, for a caller that asked only for a sync.
    pub(crate) last_error: Option<Error>,
    /// The tampering this process found; it fails every later sync.
    pub(crate) poisoned: Option<Error>,
}

fn bad(seq: u64, problem: Problem) -> Error {
    Error::Tampered { seq, problem }
}

/// The digest a claim is known by: `SHA-256(u8(len(namespace)) || namespace || key)`, first 16
/// bytes.
fn claim_digest(namespace: &str, key: &[u8]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update([u8::try_from(namespace.len()).unwrap_or(u8::MAX)]);
    h.update(namespace.as_bytes());
    h.update(key);
    let d: [u8; 32] = h.finalize().into();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

impl Tracked {
    /// Whether the chain made this claim.
    pub(crate) fn has_claim(&self, namespace: &str, key: &[u8]) -> bool {
        self.claims.contains(&claim_digest(namespace, key))
    }

    fn empty() -> Self {
        Self {
            head: Head::EMPTY,
            counters: HashMap::new(),
            window: Vec::new(),
            claims: HashSet::new(),
            vouched: 0,
        }
    }

    /// Follows one stored record: it must link to the head, hash right, and its counter
    /// operations must come under a seal that verifies.
    fn step(&mut self, guard: &dyn Guard, r: RawRecord) -> Result<(), Error> {
        let (hash, kind) = follows(&self.head, &r)?;
        let (ops, claims) = decode_effects(&r.effects).map_err(|p| bad(r.seq, p))?;
        for c in &claims {
            if !self.claims.insert(claim_digest(&c.namespace, &c.key)) {
                // No honest append makes a claim made before.
                return Err(bad(r.seq, Problem::ImpossibleEffect));
            }
        }
        let prev_hash = self.head.hash;
        self.head = Head { seq: r.seq, hash };
        let vouched = r.seq <= self.vouched;
        if kind == Kind::Seal && !vouched {
            return self.seal(guard, r.seq, &r.body);
        }
        for op in &ops {
            let before = self.counters.get(op.product()).copied();
            let after = op
                .apply(before.map(|(_, c)| c))
                .map_err(|_| bad(r.seq, Problem::ImpossibleEffect))?;
            let event = before.map_or(1, |(e, _)| e + 1);
            self.counters
                .insert(op.product().to_owned(), (event, after));
        }
        if vouched {
            return Ok(());
        }
        if self.window.len() >= MAX_RECORDS_PER_APPEND {
            // No seal covers more than an append holds: the oldest waits in vain.
            let oldest = self.window.remove(0);
            if oldest.counts {
                return Err(bad(oldest.seq, Problem::Unsealed));
            }
        }
        self.window.push(Waiting {
            seq: r.seq,
            kind: r.kind,
            body: r.body,
            effects: r.effects,
            prev_hash,
            adds: ops.iter().any(adds_units),
            counts: !ops.is_empty(),
        });
        Ok(())
    }

    /// A seal at `seq`: it must cover records that are there, verify, and leave no record with
    /// counter operations before it uncovered.
    fn seal(&mut self, guard: &dyn Guard, seq: u64, body: &[u8]) -> Result<(), Error> {
        let seal = Seal::decode(body).map_err(|p| bad(seq, p))?;
        let n = usize::try_from(seal.covered).unwrap_or(usize::MAX);
        let Some(start) = self.window.len().checked_sub(n) else {
            return Err(bad(seq, Problem::MalformedSeal));
        };
        let window = std::mem::take(&mut self.window);
        let (before, covered) = window.split_at(start);
        if let Some(w) = before.iter().find(|w| w.counts) {
            return Err(bad(w.seq, Problem::Unsealed));
        }
        let prev = covered.first().map(|w| w.prev_hash);
        let digest = seal_digest(
            if seal.positional { prev.as_ref() } else { None },
            covered
                .iter()
                .map(|w| (w.kind, w.body.as_slice(), w.effects.as_slice())),
        );
        if !guard.seal_valid(&digest, &seal.tag) {
            return Err(bad(seq, Problem::BadSeal));
        }
        if !seal.positional {
            if let Some(w) = covered.iter().find(|w| w.adds) {
                return Err(bad(w.seq, Problem::Unsealed));
            }
        }
        Ok(())
    }

    /// The batch's own appends, committed: the head and counters they left. They were checked
    /// to be sealed, so nothing waits for a seal any more.
    pub(crate) fn accept(
        &mut self,
        head: Head,
        counters: HashMap<String, Option<CounterState>>,
        claims: &HashSet<(String, Vec<u8>)>,
    ) {
        self.head = head;
        for (n, k) in claims {
            self.claims.insert(claim_digest(n, k));
        }
        for (p, c) in counters {
            if let Some(c) = c {
                self.counters.insert(p, c);
            }
        }
        self.window.clear();
    }

    /// At the head: nothing with counter operations may still wait for its seal (an append is
    /// committed whole, seal included).
    fn settled(&self) -> Result<(), Error> {
        match self.window.iter().find(|w| w.counts) {
            Some(w) => Err(bad(w.seq, Problem::Unsealed)),
            None => Ok(()),
        }
    }
}

impl Tracker {
    /// Brings the account up to the store's head inside the batch's transaction: the whole
    /// chain the first time (it must reach the anchored head), then what other writers added.
    /// Leaves the account as it was when the store is found tampered with.
    /// Returns the head it brought the account to, the store's head in this transaction.
    pub(crate) fn sync(&mut self, conn: &mut dyn Conn) -> Result<Head, Error> {
        if let Some(e) = &self.poisoned {
            return Err(e.clone());
        }
        let res = self.follow(conn);
        if let Err(e @ Error::Tampered { .. }) = &res {
            // Once seen tampered with, this process appends nothing more to the store; a new
            // one walks it again from record 1 and the anchor.
            self.poisoned = Some(e.clone());
        }
        self.last_error = res.as_ref().err().cloned();
        res
    }

    fn follow(&mut self, conn: &mut dyn Conn) -> Result<Head, Error> {
        match self.state.as_mut() {
            Some(t) => {
                let head = conn.head()?;
                if head.seq < t.head.seq || (head.seq == t.head.seq && head.hash != t.head.hash) {
                    return Err(bad(t.head.seq, Problem::RolledBack { head: head.seq }));
                }
                // What other writers added; what is applied stays applied, a storage error
                // leaves the account at the last record it checked.
                walk(conn, &*self.guard, t, &head, None)?;
                Ok(head)
            }
            None => {
                // The anchor first, then the head: the sealer anchors only committed records.
                let anchored = self.guard.anchored().map_err(|e| Error::Guard(e.into()))?;
                let head = conn.head()?;
                let mut t = Tracked::empty();
                t.vouched = anchored.map_or(0, |a| a.seq);
                walk(conn, &*self.guard, &mut t, &head, anchored)?;
                self.state = Some(t);
                Ok(head)
            }
        }
    }
}

/// Follows the chain from `t`'s head to `head`; with `anchored`, the walk must pass through it.
fn walk(
    conn: &mut dyn Conn,
    guard: &dyn Guard,
    t: &mut Tracked,
    head: &Head,
    anchored: Option<Head>,
) -> Result<(), Error> {
    let mut at_anchor: Option<Hash> = anchored.filter(|a| a.seq == 0).map(|a| a.hash);
    while t.head.seq < head.seq {
        let want = usize::try_from(head.seq - t.head.seq).unwrap_or(usize::MAX);
        let chunk = conn.read_raw(t.head.seq + 1, want.min(READ_CHUNK))?;
        if chunk.is_empty() {
            return Err(bad(t.head.seq + 1, Problem::Missing { next_found: 0 }));
        }
        for r in chunk {
            t.step(guard, r)?;
            if anchored.is_some_and(|a| a.seq == t.head.seq) {
                at_anchor = Some(t.head.hash);
            }
        }
    }
    if t.head.hash != head.hash {
        return Err(bad(head.seq, Problem::HashMismatch));
    }
    if let Some(a) = anchored {
        if at_anchor != Some(a.hash) {
            return Err(bad(a.seq, Problem::BehindAnchor { anchored: a.seq }));
        }
    }
    t.settled()
}
