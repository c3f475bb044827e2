//! What a storage backend crate implements the ledger with: the connection trait the
//! group-commit engine drives ([`Conn`]), the engine itself ([`Writer`]), the migration policy,
//! and the row conversions both SQL backends share. The rules (hash chain, counters, claims) are
//! all in the engine; a backend only reads and writes rows inside the transactions it is given.

use crate::engine::RawRecord;
pub use crate::engine::{pending_migrations, ClaimKey, ClaimRow, Conn, CounterState, Writer};
use crate::error::Error;

/// A stored integer as a `u64`, or [`Error::Corrupt`] naming `what`.
///
/// # Errors
/// [`Error::Corrupt`] for an impossible stored value.
pub fn u64_of(v: i64, what: &'static str) -> Result<u64, Error> {
    u64::try_from(v).map_err(|_| Error::Corrupt { what })
}

/// A `u64` as a stored integer, or [`Error::Corrupt`] above 2^63.
///
/// # Errors
/// [`Error::Corrupt`] for an impossible stored value.
pub fn i64_of(v: u64) -> Result<i64, Error> {
    i64::try_from(v).map_err(|_| Error::Corrupt {
        what: "value above 2^63",
    })
}

/// A records row: seq, kind, body, effects, prev_hash, hash.
pub type RawRow = (i64, i64, Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>);

/// A records row as a [`RawRecord`], checking its integer ranges.
///
/// # Errors
/// [`Error::Corrupt`] for an impossible stored value.
pub fn raw_record((seq, kind, body, effects, prev_hash, hash): RawRow) -> Result<RawRecord, Error> {
    Ok(RawRecord {
        seq: u64_of(seq, "seq")?,
        kind: u16::try_from(kind).map_err(|_| Error::Corrupt { what: "kind" })?,
        body,
        effects,
        prev_hash,
        hash,
    })
}
