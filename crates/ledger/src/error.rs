//! The ledger's error type: refusals of an [`Append`](crate::Append), verification findings,
//! and storage failures. Cloneable, because one failed group commit answers many callers.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

/// Why an append, a query or a verification failed.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A spend asked for more than the product has left. Nothing of the append was written.
    #[error("product {product} has {remaining} left, {asked} asked")]
    Exhausted {
        /// The product key.
        product: String,
        /// What is left.
        remaining: u64,
        /// What the spend asked for.
        asked: u64,
    },
    /// A unique claim was made before. Nothing of the append was written.
    #[error("{namespace} {} was already claimed by ledger record {first_seq}", hex::encode(.key))]
    Duplicate {
        /// The claim's namespace.
        namespace: String,
        /// The claimed key.
        key: Vec<u8>,
        /// The first record of the append that made the claim first.
        first_seq: u64,
    },
    /// A counter was created for a product that already has one.
    #[error("product {product} already exists")]
    ProductExists {
        /// The product key.
        product: String,
    },
    /// A counter operation named a product that was never created.
    #[error("product {product} does not exist")]
    UnknownProduct {
        /// The product key.
        product: String,
    },
    /// A credit would give back more than was spent.
    #[error("product {product} has {issued} issued, a credit of {asked} is more")]
    OverCredit {
        /// The product key.
        product: String,
        /// Units spent and not credited back.
        issued: u64,
        /// What the credit asked for.
        asked: u64,
    },
    /// A top-up would push the product's total past the largest storable count.
    #[error("product {product} count would exceed {limit}")]
    CountOverflow {
        /// The product key.
        product: String,
        /// The largest total.
        limit: u64,
    },
    /// The append required a head the ledger has moved past (optimistic concurrency).
    #[error("ledger head is {actual}, the append expected {expected}")]
    HeadMoved {
        /// The head seq the append required.
        expected: u64,
        /// The head seq found.
        actual: u64,
    },
    /// The append breaks a limit or a rule of the format; caller misuse.
    #[error("invalid append: {0}")]
    Invalid(Invalid),
    /// A checkpoint signature is larger than the format allows.
    #[error("checkpoint signature is {len} bytes, the limit is {limit}")]
    SignatureTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A stored record has a kind this build does not know.
    #[error("ledger record {seq} has unknown kind {code}")]
    UnknownKind {
        /// The record.
        seq: u64,
        /// Its kind code.
        code: u16,
    },
    /// Verification found a bad record: the first one in chain order.
    #[error("ledger record {seq} is bad: {problem}")]
    Tampered {
        /// The first bad record.
        seq: u64,
        /// What is wrong with it.
        problem: Problem,
    },
    /// The database holds a schema from a newer build.
    #[error("ledger schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew {
        /// The stored version.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// A stored value is out of the range the format allows (a row written outside trustfab).
    #[error("ledger database holds an impossible {what}")]
    Corrupt {
        /// Which value.
        what: &'static str,
    },
    /// The checkpoint signer failed.
    #[error("checkpoint signer failed")]
    Signer(#[source] Arc<dyn StdError + Send + Sync>),
    /// The writer thread is gone (the store is shutting down or the writer panicked).
    #[error("ledger writer stopped")]
    WriterStopped,
    /// A transaction kept conflicting with other writers.
    #[error("ledger transaction still conflicting after {attempts} attempts")]
    Contention {
        /// How many times it was tried.
        attempts: u32,
    },
    /// The store's guard (the sealer's anchor) could not be read.
    #[error("ledger guard failed")]
    Guard(#[source] Arc<dyn StdError + Send + Sync>),
    /// The storage backend failed.
    #[error("{backend} ledger: {op}")]
    Storage {
        /// Which backend (`sqlite`, `postgresql`).
        backend: &'static str,
        /// What was being done.
        op: &'static str,
        /// The driver's error.
        #[source]
        source: Arc<dyn StdError + Send + Sync>,
    },
}

/// A rule of the append format that the caller broke.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Invalid {
    /// An append must add at least one record: every change is on record.
    NoRecords,
    /// Too many records in one append.
    TooManyRecords {
        /// How many.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A record body is too large.
    BodyTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Too many counter operations or claims in one append.
    TooManyOperations {
        /// How many.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A counter operation with amount zero.
    ZeroAmount,
    /// An amount larger than the largest storable count.
    AmountTooLarge,
    /// A product key that is empty or too long.
    ProductKey,
    /// A claim namespace that is empty or too long.
    Namespace,
    /// A claim key that is empty or too long.
    ClaimKey,
    /// The same claim twice in one append.
    RepeatedClaim,
    /// A checkpoint record whose body does not parse.
    Checkpoint,
    /// A sealed store takes counter operations only in an append that ends with its seal, and
    /// operations that add units only under a positional seal with an expected head.
    Unsealed,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoRecords => f.write_str("no records"),
            Self::TooManyRecords { count, limit } => {
                write!(f, "{count} records, the limit is {limit}")
            }
            Self::BodyTooLarge { len, limit } => {
                write!(f, "record body is {len} bytes, the limit is {limit}")
            }
            Self::TooManyOperations { count, limit } => {
                write!(
                    f,
                    "{count} counter operations or claims, the limit is {limit}"
                )
            }
            Self::ZeroAmount => f.write_str("counter amount is zero"),
            Self::AmountTooLarge => f.write_str("counter amount is too large"),
            Self::ProductKey => f.write_str("product key is empty or too long"),
            Self::Namespace => f.write_str("claim namespace is empty or too long"),
            Self::ClaimKey => f.write_str("claim key is empty or too long"),
            Self::RepeatedClaim => f.write_str("the same claim appears twice"),
            Self::Checkpoint => f.write_str("checkpoint body is malformed"),
            Self::Unsealed => f.write_str(
                "counter operations need a seal (a positional one, with an expected head, to add units)",
            ),
        }
    }
}

/// What verification found wrong with a record.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The record with this seq is missing: the next stored one has a higher seq.
    Missing {
        /// The seq found where this one was expected.
        next_found: u64,
    },
    /// The stored hash is not the hash of the stored fields (the record was changed).
    HashMismatch,
    /// The record does not commit to the hash of the record before it (a record was removed,
    /// inserted or reordered before it).
    BrokenLink,
    /// The record's kind code is unknown.
    UnknownKind {
        /// The code.
        code: u16,
    },
    /// A checkpoint body does not parse.
    MalformedCheckpoint,
    /// A record's effects (counter operations and claims) do not parse.
    MalformedEffects,
    /// The chain's counter operations are impossible (a spend past the count, an unknown
    /// product, …): the record's effects do not follow from the ones before it.
    ImpossibleEffect,
    /// A checkpoint does not cover the record just before it.
    CheckpointMismatch,
    /// A checkpoint's signature does not verify.
    BadSignature,
    /// A counter event does not follow from the one before it.
    CounterInconsistent {
        /// The product.
        product: String,
        /// The event number.
        event: u64,
    },
    /// A counter event or claim names a record that does not exist.
    DanglingReference,
    /// The stored counters or claims differ from what the chain's records say.
    StateMismatch {
        /// What differs.
        what: String,
    },
    /// A seal body does not parse, or covers records that are not there.
    MalformedSeal,
    /// A seal's MAC does not verify: a covered record was changed, or the seal was not made by
    /// the sealer (or, positional, not at this place in the chain).
    BadSeal,
    /// A record carries counter operations no valid seal covers (operations that add units
    /// need a positional one): it was not written by the sealer.
    Unsealed,
    /// The store is behind what this process saw of it: records it read are gone or replaced.
    RolledBack {
        /// The store's head seq now.
        head: u64,
    },
    /// The store does not reach the head anchored outside it.
    BehindAnchor {
        /// The anchored seq.
        anchored: u64,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { next_found } => {
                write!(f, "missing (the next stored record is {next_found})")
            }
            Self::HashMismatch => f.write_str("changed (hash does not match its contents)"),
            Self::BrokenLink => f.write_str(
                "does not commit to the previous record (removed, inserted or reordered)",
            ),
            Self::UnknownKind { code } => write!(f, "unknown kind {code}"),
            Self::MalformedCheckpoint => f.write_str("malformed checkpoint"),
            Self::MalformedEffects => f.write_str("malformed counter operations or claims"),
            Self::ImpossibleEffect => {
                f.write_str("counter operation impossible after the records before it")
            }
            Self::CheckpointMismatch => {
                f.write_str("checkpoint does not cover the record before it")
            }
            Self::BadSignature => f.write_str("checkpoint signature does not verify"),
            Self::CounterInconsistent { product, event } => {
                write!(
                    f,
                    "counter event {event} of product {product} is inconsistent"
                )
            }
            Self::DanglingReference => {
                f.write_str("a counter event or claim refers to a missing record")
            }
            Self::StateMismatch { what } => {
                write!(f, "stored state differs from the chain: {what}")
            }
            Self::MalformedSeal => f.write_str("malformed seal, or one covering missing records"),
            Self::BadSeal => f.write_str(
                "seal does not verify (a covered record changed, or the seal is not the sealer's or not at its place)",
            ),
            Self::Unsealed => f.write_str(
                "carries counter operations no valid seal covers (not written by the sealer)",
            ),
            Self::RolledBack { head } => write!(
                f,
                "is gone or replaced: the store rolled back under this process (its head is {head})"
            ),
            Self::BehindAnchor { anchored } => write!(
                f,
                "does not lead to the anchored head: the store is behind the HSM (record {anchored} expected)"
            ),
        }
    }
}

impl Error {
    /// A storage failure of `backend` while doing `op`, for a backend's `map_err`.
    pub fn storage<E: StdError + Send + Sync + 'static>(
        backend: &'static str,
        op: &'static str,
    ) -> impl FnOnce(E) -> Self {
        move |e| Self::Storage {
            backend,
            op,
            source: Arc::new(e),
        }
    }

    /// The driver error of a storage failure, when it is an `E`.
    pub fn storage_source<E: StdError + 'static>(&self) -> Option<&E> {
        match self {
            Self::Storage { source, .. } => source.downcast_ref::<E>(),
            _ => None,
        }
    }

    /// Whether this refusal is about the append's content (it fails only that append) rather
    /// than the storage (which fails the whole batch).
    pub(crate) fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::Exhausted { .. }
                | Self::Duplicate { .. }
                | Self::ProductExists { .. }
                | Self::UnknownProduct { .. }
                | Self::OverCredit { .. }
                | Self::CountOverflow { .. }
                | Self::HeadMoved { .. }
                | Self::Invalid(_)
        )
    }
}
