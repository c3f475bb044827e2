//! The record format: kinds, the hash chain and the checkpoint body. Pure: no I/O, no clock.
//!
//! The byte layouts here are specified in `docs/ledger.md`; a change to any of them is a new
//! format version.

use std::fmt;

use sha2::{Digest, Sha256};
use trustfab_types::UnixTime;

use crate::error::{Error, Problem};

/// Domain-separation tag of the record hash (format version 1).
pub const RECORD_HASH_TAG: &[u8] = b"trustfab-ledger-record-v1\0";

/// Domain-separation tag of the message a checkpoint signature covers (format version 1).
pub const CHECKPOINT_TAG: &[u8] = b"trustfab-ledger-checkpoint-v1\0";

/// Version byte that starts a checkpoint body.
pub const CHECKPOINT_VERSION: u8 = 1;

/// The largest record body, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The largest checkpoint signature, in bytes.
pub const MAX_SIGNATURE_BYTES: usize = 1024;

/// The `prev_hash` of record 1.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// A SHA-256 digest.
pub type Hash = [u8; 32];

macro_rules! kinds {
    ($($(#[$doc:meta])* $name:ident = $code:literal,)*) => {
        /// What a record says happened. The numeric code is part of the hash input and never
        /// changes meaning; a reader refuses codes it does not know.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum Kind {
            $($(#[$doc])* $name = $code,)*
        }

        impl Kind {
            /// Every kind this build knows, in code order.
            pub const ALL: &'static [Self] = &[$(Self::$name,)*];

            /// The stable numeric code.
            pub fn code(self) -> u16 {
                self as u16
            }

            /// The kind with this code, if this build knows it.
            pub fn from_code(code: u16) -> Option<Self> {
                match code {
                    $($code => Some(Self::$name),)*
                    _ => None,
                }
            }

            /// The name used in documents and reports.
            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$name => stringify!($name),)*
                }
            }
        }
    };
}

kinds! {
    /// A provisioning package was imported into an HSM.
    PackageImported = 1,
    /// A product (OEM id, product id) was created with its count.
    ProductCreated = 2,
    /// A later package added count to an existing product.
    ProductToppedUp = 3,
    /// Count was reserved for an issuance that is about to be signed.
    CountReserved = 4,
    /// A certificate was issued (recorded before the signature leaves the HSM).
    CertificateIssued = 5,
    /// A device was programmed with its certificates.
    DeviceProgrammed = 6,
    /// A device failed a provisioning step.
    DeviceFailed = 7,
    /// A device was locked.
    DeviceLocked = 8,
    /// A job was created.
    JobCreated = 9,
    /// A job was closed.
    JobClosed = 10,
    /// Count that was reserved but never signed was given back.
    CreditBack = 11,
    /// A signed checkpoint over the chain head.
    Checkpoint = 12,
    /// The sealer's MAC over the records of its append, the append's last record
    /// ([`Seal`](crate::Seal)).
    Seal = 13,
    /// The HSM's station CA certified a station (its id, certificate and grant).
    StationCertified = 14,
    /// A station was revoked: the HSM service refuses its next request.
    StationRevoked = 15,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One stored ledger record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Position in the chain, gapless from 1.
    pub seq: u64,
    /// What happened.
    pub kind: Kind,
    /// The canonical bytes the writer gave; opaque to the ledger.
    pub body: Vec<u8>,
    /// The counter operations and claims of the append this record starts, encoded by
    /// [`encode_effects`](crate::encode_effects); empty for every other record.
    pub effects: Vec<u8>,
    /// The hash of record `seq - 1`, or [`GENESIS_HASH`] for record 1.
    pub prev_hash: Hash,
    /// [`record_hash`] of this record.
    pub hash: Hash,
}

impl Record {
    /// Builds the record that follows `prev_hash` at `seq`, computing its hash.
    pub fn new(seq: u64, kind: Kind, body: Vec<u8>, effects: Vec<u8>, prev_hash: Hash) -> Self {
        let hash = record_hash(&prev_hash, seq, kind.code(), &body, &effects);
        Self {
            seq,
            kind,
            body,
            effects,
            prev_hash,
            hash,
        }
    }

    /// Whether the stored hash is the hash of the stored fields.
    pub fn hash_is_consistent(&self) -> bool {
        record_hash(
            &self.prev_hash,
            self.seq,
            self.kind.code(),
            &self.body,
            &self.effects,
        ) == self.hash
    }
}

/// The record hash:
/// `SHA-256(RECORD_HASH_TAG || prev_hash || u64be(seq) || u16be(kind) || u32be(len(body)) ||
/// body || u32be(len(effects)) || effects)`.
///
/// Takes the raw kind code so that a verifier can hash a record whose kind it does not know.
pub fn record_hash(
    prev_hash: &Hash,
    seq: u64,
    kind_code: u16,
    body: &[u8],
    effects: &[u8],
) -> Hash {
    // Bodies and effects are bounded far below 4 GiB on every write; a longer one cannot be
    // stored, and saturating keeps the hash well-defined for any input.
    let len = |b: &[u8]| u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes();
    let mut h = Sha256::new();
    h.update(RECORD_HASH_TAG);
    h.update(prev_hash);
    h.update(seq.to_be_bytes());
    h.update(kind_code.to_be_bytes());
    h.update(len(body));
    h.update(body);
    h.update(len(effects));
    h.update(effects);
    h.finalize().into()
}

/// The head of the chain: the last record's seq and hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// Seq of the last record (0 for an empty ledger).
    pub seq: u64,
    /// Hash of the last record ([`GENESIS_HASH`] for an empty ledger).
    pub hash: Hash,
}

impl Head {
    /// The head of an empty ledger.
    pub const EMPTY: Self = Self {
        seq: 0,
        hash: GENESIS_HASH,
    };
}

/// A decoded checkpoint body: the head it covers, when, and the signature over
/// [`Checkpoint::message`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The head the checkpoint covers; always the record just before the checkpoint record.
    pub head: Head,
    /// When the checkpoint was made.
    pub time: UnixTime,
    /// The signer's signature over [`Checkpoint::message`].
    pub signature: Vec<u8>,
}

impl Checkpoint {
    /// The signed message:
    /// `CHECKPOINT_TAG || u64be(head.seq) || head.hash || u64be(time)`.
    pub fn message(head: &Head, time: UnixTime) -> Vec<u8> {
        let mut m = Vec::with_capacity(CHECKPOINT_TAG.len() + 8 + 32 + 8);
        m.extend_from_slice(CHECKPOINT_TAG);
        m.extend_from_slice(&head.seq.to_be_bytes());
        m.extend_from_slice(&head.hash);
        m.extend_from_slice(&time.0.to_be_bytes());
        m
    }

    /// The body of a checkpoint record:
    /// `u8(1) || u64be(head.seq) || head.hash || u64be(time) || u16be(len(sig)) || sig`.
    ///
    /// # Errors
    ///
    /// [`Error::SignatureTooLarge`] when the signature exceeds [`MAX_SIGNATURE_BYTES`].
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        let len = u16::try_from(self.signature.len())
            .ok()
            .filter(|_| self.signature.len() <= MAX_SIGNATURE_BYTES)
            .ok_or(Error::SignatureTooLarge {
                len: self.signature.len(),
                limit: MAX_SIGNATURE_BYTES,
            })?;
        let mut b = Vec::with_capacity(1 + 8 + 32 + 8 + 2 + self.signature.len());
        b.push(CHECKPOINT_VERSION);
        b.extend_from_slice(&self.head.seq.to_be_bytes());
        b.extend_from_slice(&self.head.hash);
        b.extend_from_slice(&self.time.0.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(&self.signature);
        Ok(b)
    }

    /// Parses a checkpoint body.
    ///
    /// # Errors
    ///
    /// [`Problem::MalformedCheckpoint`] for a wrong version, a short or long body, or an
    /// oversized signature.
    pub fn decode(body: &[u8]) -> Result<Self, Problem> {
        let (&version, rest) = body.split_first().ok_or(Problem::MalformedCheckpoint)?;
        if version != CHECKPOINT_VERSION {
            return Err(Problem::MalformedCheckpoint);
        }
        let (seq, rest) = take::<8>(rest)?;
        let (hash, rest) = take::<32>(rest)?;
        let (time, rest) = take::<8>(rest)?;
        let (len, rest) = take::<2>(rest)?;
        let len = usize::from(u16::from_be_bytes(len));
        if len > MAX_SIGNATURE_BYTES || rest.len() != len {
            return Err(Problem::MalformedCheckpoint);
        }
        Ok(Self {
            head: Head {
                seq: u64::from_be_bytes(seq),
                hash,
            },
            time: UnixTime(u64::from_be_bytes(time)),
            signature: rest.to_vec(),
        })
    }
}

fn take<const N: usize>(b: &[u8]) -> Result<([u8; N], &[u8]), Problem> {
    let (head, rest) = b.split_at_checked(N).ok_or(Problem::MalformedCheckpoint)?;
    let head = <[u8; N]>::try_from(head).map_err(|_| Problem::MalformedCheckpoint)?;
    Ok((head, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_codes_round_trip_and_unknown_codes_are_refused() {
        for &k in Kind::ALL {
            assert_eq!(Kind::from_code(k.code()), Some(k));
        }
        assert_eq!(Kind::from_code(0), None);
        assert_eq!(Kind::from_code(16), None);
    }

    #[test]
    fn record_hash_known_answer() {
        // SHA-256 of the hash input of record 1, kind PackageImported (1), body "abc", no
        // effects, computed independently with:
        // printf 'trustfab-ledger-record-v1\0' > in; head -c 32 /dev/zero >> in;
        // printf '\0\0\0\0\0\0\0\1\0\1\0\0\0\3abc\0\0\0\0' >> in; sha256sum in
        let h = record_hash(&GENESIS_HASH, 1, 1, b"abc", b"");
        assert_eq!(
            hex::encode(h),
            "cac2d090ba9804ecceaa6813b0ce26db18223619e7f550d62c58221e86cea6d9"
        );
    }

    #[test]
    fn every_field_changes_the_hash() {
        let base = record_hash(&GENESIS_HASH, 1, 1, b"abc", b"");
        assert_ne!(base, record_hash(&[1; 32], 1, 1, b"abc", b""));
        assert_ne!(base, record_hash(&GENESIS_HASH, 2, 1, b"abc", b""));
        assert_ne!(base, record_hash(&GENESIS_HASH, 1, 2, b"abc", b""));
        assert_ne!(base, record_hash(&GENESIS_HASH, 1, 1, b"abd", b""));
        assert_ne!(base, record_hash(&GENESIS_HASH, 1, 1, b"ab", b""));
        assert_ne!(base, record_hash(&GENESIS_HASH, 1, 1, b"abc", b"\x01"));
        // Moving bytes between body and effects changes the hash (length prefixes).
        assert_ne!(
            record_hash(&GENESIS_HASH, 1, 1, b"ab", b"c"),
            record_hash(&GENESIS_HASH, 1, 1, b"a", b"bc")
        );
    }

    #[test]
    fn checkpoint_round_trips_and_refuses_malformed_bodies() {
        let c = Checkpoint {
            head: Head {
                seq: 7,
                hash: [9; 32],
            },
            time: UnixTime(1_700_000_000),
            signature: vec![1, 2, 3],
        };
        let body = c.encode().unwrap();
        assert_eq!(body.len(), 1 + 8 + 32 + 8 + 2 + 3);
        assert_eq!(Checkpoint::decode(&body).unwrap(), c);
        for cut in 0..body.len() {
            assert_eq!(
                Checkpoint::decode(&body[..cut]),
                Err(Problem::MalformedCheckpoint)
            );
        }
        let mut long = body.clone();
        long.push(0);
        assert_eq!(Checkpoint::decode(&long), Err(Problem::MalformedCheckpoint));
        let mut v2 = body;
        v2[0] = 2;
        assert_eq!(Checkpoint::decode(&v2), Err(Problem::MalformedCheckpoint));
        let big = Checkpoint {
            signature: vec![0; MAX_SIGNATURE_BYTES + 1],
            ..c
        };
        assert!(matches!(
            big.encode(),
            Err(Error::SignatureTooLarge { len: 1025, .. })
        ));
    }
}
