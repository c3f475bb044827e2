#![doc = include_str!("../README.md")]
//!
//! The crate root: the [`Store`] trait every backend implements, and the streaming
//! [`Records`] cursor.

mod append;
pub mod backend;
mod engine;
mod error;
mod latency;
mod record;
mod seal;
mod tracker;

use std::error::Error as StdError;

use trustfab_types::UnixTime;

pub use append::{
    decode_effects, encode_effects, Append, Claim, Counter, CounterOp, NewRecord, EFFECTS_VERSION,
    MAX_CLAIM_KEY_BYTES, MAX_COUNT, MAX_NAMESPACE_BYTES, MAX_OPERATIONS_PER_APPEND,
    MAX_PRODUCT_KEY_BYTES, MAX_RECORDS_PER_APPEND,
};
pub use engine::{CounterEvent, RawRecord, Verified};
pub use error::{Error, Invalid, Problem};
pub use latency::{AppendLatency, APPEND_BUCKETS};
pub use record::{
    record_hash, Checkpoint, Hash, Head, Kind, Record, CHECKPOINT_TAG, CHECKPOINT_VERSION,
    GENESIS_HASH, MAX_BODY_BYTES, MAX_SIGNATURE_BYTES, RECORD_HASH_TAG,
};
pub use seal::{adds_units, seal_digest, Covered, Seal, SEAL_MAC_LEN, SEAL_TAG, SEAL_VERSION};
pub use tracker::Guard;

/// Signs a checkpoint message; the HSM identity key stands behind it.
pub type Signer<'a> = dyn Fn(&[u8]) -> Result<Vec<u8>, Box<dyn StdError + Send + Sync>> + 'a;

/// Checks a checkpoint signature: `(message, signature) -> valid`.
pub type Verifier<'a> = dyn Fn(&[u8], &[u8]) -> bool + 'a;

/// How many records a [`Records`] cursor reads per round trip.
pub const READ_BATCH: usize = 1000;

/// How many times [`Store::checkpoint`] retries when other writers keep moving the head.
const CHECKPOINT_ATTEMPTS: u32 = 100;

/// A ledger backend. Every method is safe to call from many threads at once; appends from
/// concurrent callers may share one transaction, but each gets its own outcome.
pub trait Store: Send + Sync {
    /// Appends each [`Append`] atomically, in order, and returns one outcome per append: its
    /// stored records, or why it was refused (then nothing of it was written). The appends
    /// may share a transaction with each other and with other callers'; a refusal of one
    /// does not affect the others. Every `Ok` is durable when this returns.
    fn append_all(&self, appends: Vec<Append>) -> Vec<Result<Vec<Record>, Error>>;

    /// How long this process's calls of [`Store::append_all`] waited for their outcomes
    /// (queueing behind other callers, the transaction and its sync), since the store opened.
    fn append_latency(&self) -> AppendLatency;

    /// Appends one [`Append`] atomically and durably.
    ///
    /// # Errors
    ///
    /// A refusal ([`Error::Exhausted`], [`Error::Duplicate`], [`Error::ProductExists`],
    /// [`Error::UnknownProduct`], [`Error::OverCredit`], [`Error::CountOverflow`],
    /// [`Error::HeadMoved`], [`Error::Invalid`]) or a storage error. In every case nothing of
    /// the append was written.
    fn append(&self, append: Append) -> Result<Vec<Record>, Error> {
        self.append_all(vec![append])
            .into_iter()
            .next()
            .unwrap_or(Err(Error::WriterStopped))
    }

    /// The chain head ([`Head::EMPTY`] for an empty ledger).
    ///
    /// # Errors
    ///
    /// A storage error, or [`Error::Corrupt`] for an impossible stored value.
    fn head(&self) -> Result<Head, Error>;

    /// Up to `limit` stored records with `seq >= from_seq`, in seq order, unchecked.
    ///
    /// # Errors
    ///
    /// A storage error, or [`Error::Corrupt`] for an impossible stored value.
    fn read_raw(&self, from_seq: u64, limit: usize) -> Result<Vec<RawRecord>, Error>;

    /// Up to `limit` counter events after `(product, event)` in (product, event) order.
    ///
    /// # Errors
    ///
    /// A storage error, or [`Error::Corrupt`] for an impossible stored value.
    fn read_counter_events(
        &self,
        after: Option<(&str, u64)>,
        limit: usize,
    ) -> Result<Vec<CounterEvent>, Error>;

    /// A product's counter, if the product exists.
    ///
    /// # Errors
    ///
    /// A storage error, or [`Error::Corrupt`] for an impossible stored value.
    fn counter(&self, product: &str) -> Result<Option<Counter>, Error>;

    /// Makes this a sealed store under `guard` (the HSM's token): counters are then taken from
    /// the chain, walked once to the anchored head and followed after, never from the stored
    /// counter rows; counter operations are accepted only in sealed appends; a chain found
    /// tampered with fails every append with [`Error::Tampered`] naming the record.
    fn seal_with(&self, guard: std::sync::Arc<dyn Guard>);

    /// A product's counter: in a sealed store the chain's, brought up to the head first; in
    /// any other, the stored one ([`Store::counter`]).
    ///
    /// # Errors
    ///
    /// [`Error::Tampered`] in a sealed store whose chain does not check out, or a storage
    /// error.
    fn verified_counter(&self, product: &str) -> Result<Option<Counter>, Error>;

    /// Every product's counter, ordered by product key: in a sealed store the chain's (names
    /// included), brought up to the head first; in any other, the stored ones
    /// ([`Store::counters`]).
    ///
    /// # Errors
    ///
    /// [`Error::Tampered`] in a sealed store whose chain does not check out, or a storage
    /// error.
    fn verified_counters(&self) -> Result<Vec<(String, Counter)>, Error>;

    /// Every product's counter, ordered by product key.
    ///
    /// # Errors
    ///
    /// A storage error, or [`Error::Corrupt`] for an impossible stored value.
    fn counters(&self) -> Result<Vec<(String, Counter)>, Error>;

    /// The first record of the append that claimed `(namespace, key)`, if any.
    ///
    /// # Errors
    ///
    /// A storage error, or [`Error::Corrupt`] for an impossible stored value.
    fn claimed(&self, namespace: &str, key: &[u8]) -> Result<Option<u64>, Error>;

    /// Whether `(namespace, key)` is claimed: in a sealed store as the chain says, brought up to
    /// the head first (a claim row deleted or forged in the store does not change the answer);
    /// in any other, whether a stored row says so ([`Store::claimed`]).
    ///
    /// # Errors
    ///
    /// [`Error::Tampered`] in a sealed store whose chain does not check out, or a storage
    /// error.
    fn verified_claim(&self, namespace: &str, key: &[u8]) -> Result<bool, Error>;

    /// Whether the sealed account holds `(namespace, key)` as of this process's last
    /// transaction, without running one (cheap: no writer round trip); `None` in a store that
    /// is not sealed or not yet walked. A caller that must also see other processes' latest
    /// claims reads [`Store::claimed`] beside it.
    fn claim_in_account(&self, namespace: &str, key: &[u8]) -> Option<bool>;

    /// How many stored claims were made by records up to `up_to_seq`.
    ///
    /// # Errors
    ///
    /// A storage error, or [`Error::Corrupt`] for an impossible stored value.
    fn claim_count(&self, up_to_seq: u64) -> Result<u64, Error>;

    /// Units a product has left.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownProduct`] or a storage error.
    fn remaining(&self, product: &str) -> Result<u64, Error> {
        self.counter(product)?
            .map(|c| c.remaining())
            .ok_or_else(|| Error::UnknownProduct {
                product: product.to_owned(),
            })
    }

    /// Units a product has spent (and not credited back).
    ///
    /// # Errors
    ///
    /// [`Error::UnknownProduct`] or a storage error.
    fn issued(&self, product: &str) -> Result<u64, Error> {
        self.counter(product)?
            .map(|c| c.issued)
            .ok_or_else(|| Error::UnknownProduct {
                product: product.to_owned(),
            })
    }

    /// The records from `from_seq` on, read [`READ_BATCH`] at a time: a million records never
    /// sit in memory at once.
    fn records(&self, from_seq: u64) -> Records<'_> {
        Records {
            fetch: Box::new(move |from| self.read_raw(from, READ_BATCH)),
            next_seq: from_seq.max(1),
            buffer: Vec::new().into_iter(),
            done: false,
        }
    }

    /// Appends a checkpoint over the current head, signed by `signer` over
    /// [`Checkpoint::message`]. Retries when concurrent appends move the head meanwhile.
    ///
    /// # Errors
    ///
    /// [`Error::Signer`], [`Error::SignatureTooLarge`], [`Error::Contention`] when the head
    /// kept moving, or a storage error.
    fn checkpoint(&self, now: UnixTime, signer: &Signer<'_>) -> Result<Record, Error> {
        for _ in 0..CHECKPOINT_ATTEMPTS {
            let head = self.head()?;
            let message = Checkpoint::message(&head, now);
            let signature = signer(&message).map_err(|e| Error::Signer(e.into()))?;
            let body = Checkpoint {
                head,
                time: now,
                signature,
            }
            .encode()?;
            let mut append = Append::record(Kind::Checkpoint, body);
            append.expect_head = Some(head.seq);
            match self.append(append) {
                Ok(mut recs) => return recs.pop().ok_or(Error::WriterStopped),
                Err(Error::HeadMoved { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Contention {
            attempts: CHECKPOINT_ATTEMPTS,
        })
    }

    /// Walks the whole chain and every checkpoint (through `verifier`), replaying the counter
    /// operations and claims the records carry, then checks the stored counter events and
    /// claims against that replay; streaming, and safe while other writers append (what they
    /// add after the walk is left for the next verification).
    ///
    /// # Errors
    ///
    /// [`Error::Tampered`] naming the first bad record and what is wrong with it: a missing
    /// record, a changed one, one that does not commit to its predecessor (removed, inserted or
    /// reordered), a bad checkpoint, or an inconsistent counter event. Or a storage error.
    fn verify(&self, verifier: &Verifier<'_>) -> Result<Verified, Error> {
        let mut walk = engine::ChainWalk::new(verifier);
        loop {
            let batch = self.read_raw(walk.next_seq(), READ_BATCH)?;
            if batch.is_empty() {
                break;
            }
            for r in &batch {
                walk.step(r)?;
            }
        }
        let head = walk.head();
        let mut counters = engine::CounterWalk::new(&walk.counters, head.seq);
        let mut after: Option<(String, u64)> = None;
        loop {
            let batch = self
                .read_counter_events(after.as_ref().map(|(p, e)| (p.as_str(), *e)), READ_BATCH)?;
            let Some(last) = batch.last() else {
                break;
            };
            after = Some((last.product.clone(), last.event));
            for e in &batch {
                counters.step(e)?;
            }
        }
        let events = counters.finish()?;
        // Appends committed after the walk are beyond `head` and not counted.
        let claims = self.claim_count(head.seq)?;
        if claims != walk.claims {
            return Err(Error::Tampered {
                seq: head.seq,
                problem: Problem::StateMismatch {
                    what: format!("{claims} claims stored, the chain makes {}", walk.claims),
                },
            });
        }
        Ok(walk.finish(events))
    }
}

/// A streaming cursor over stored records, in seq order. Yields [`Error::UnknownKind`] for a
/// record whose kind this build does not know, and stops after the first error.
pub struct Records<'a> {
    fetch: Box<dyn FnMut(u64) -> Result<Vec<RawRecord>, Error> + 'a>,
    next_seq: u64,
    buffer: std::vec::IntoIter<RawRecord>,
    done: bool,
}

impl Iterator for Records<'_> {
    type Item = Result<Record, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let raw = match self.buffer.next() {
            Some(r) => r,
            None => {
                let batch = match (self.fetch)(self.next_seq) {
                    Ok(b) => b,
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                };
                self.buffer = batch.into_iter();
                match self.buffer.next() {
                    Some(r) => r,
                    None => {
                        self.done = true;
                        return None;
                    }
                }
            }
        };
        self.next_seq = raw.seq.saturating_add(1);
        let rec = raw.into_record();
        if rec.is_err() {
            self.done = true;
        }
        Some(rec)
    }
}
