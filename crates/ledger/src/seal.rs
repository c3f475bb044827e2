//! Seals: a MAC, made by a key outside the ledger (the HSM's token), over the records of one
//! append, stored as that append's last record. The hash chain shows that records follow one
//! another; only a seal shows who wrote them, so that a store written to by someone else cannot
//! pass its own records off as the sealer's. Pure: no I/O, no key.
//!
//! A seal covers the `covered` records just before it, with their kinds, bodies and effects (the
//! append's counter operations and claims). A positional seal also covers the hash of the record
//! before the first covered one, so it holds at one place in the chain only: a copy of it
//! appended again does not verify. The byte layouts are in `docs/ledger.md`, "Seals".

use sha2::{Digest, Sha256};

use crate::append::{encode_effects, Append, CounterOp, NewRecord};
use crate::error::Problem;
use crate::record::{Hash, Kind};

/// Domain-separation tag of the digest a seal's MAC covers (format version 1).
pub const SEAL_TAG: &[u8] = b"trustfab-ledger-seal-v1\0";

/// Version byte that starts a seal body.
pub const SEAL_VERSION: u8 = 1;

/// The length of a seal's MAC tag (HMAC-SHA256).
pub const SEAL_MAC_LEN: usize = 32;

/// Encoded length of a seal body: version, flags, covered, tag.
const SEAL_BODY_LEN: usize = 1 + 1 + 4 + SEAL_MAC_LEN;

/// Flag bit: the seal covers the hash of the record before the append (it is positional).
const FLAG_POSITIONAL: u8 = 1;

/// A decoded seal body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seal {
    /// Whether the digest covers the hash of the record before the first covered one.
    pub positional: bool,
    /// How many records just before the seal it covers (the rest of its append).
    pub covered: u32,
    /// The MAC over [`seal_digest`].
    pub tag: [u8; SEAL_MAC_LEN],
}

impl Seal {
    /// The body: `u8(1) || u8(flags) || u32be(covered) || tag`; flags bit 0 is positional.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(SEAL_BODY_LEN);
        b.push(SEAL_VERSION);
        b.push(if self.positional { FLAG_POSITIONAL } else { 0 });
        b.extend_from_slice(&self.covered.to_be_bytes());
        b.extend_from_slice(&self.tag);
        b
    }

    /// Parses a seal body.
    ///
    /// # Errors
    /// [`Problem::MalformedSeal`] for another version or length, unknown flags, or a seal that
    /// covers no record.
    pub fn decode(body: &[u8]) -> Result<Self, Problem> {
        if body.len() != SEAL_BODY_LEN || body.first() != Some(&SEAL_VERSION) {
            return Err(Problem::MalformedSeal);
        }
        let flags = body.get(1).copied().ok_or(Problem::MalformedSeal)?;
        if flags & !FLAG_POSITIONAL != 0 {
            return Err(Problem::MalformedSeal);
        }
        let mut covered = [0u8; 4];
        covered.copy_from_slice(body.get(2..6).ok_or(Problem::MalformedSeal)?);
        let covered = u32::from_be_bytes(covered);
        if covered == 0 {
            return Err(Problem::MalformedSeal);
        }
        let mut tag = [0u8; SEAL_MAC_LEN];
        tag.copy_from_slice(body.get(6..).ok_or(Problem::MalformedSeal)?);
        Ok(Self {
            positional: flags & FLAG_POSITIONAL != 0,
            covered,
            tag,
        })
    }
}

/// One covered record as the digest sees it: kind code, body, effects.
pub type Covered<'a> = (u16, &'a [u8], &'a [u8]);

/// The digest a seal's MAC covers:
/// `SHA-256(SEAL_TAG || u8(flags) || u32be(n) || [prev_hash if positional] || n × (u16be(kind)
/// || u32be(len(body)) || body || u32be(len(effects)) || effects))`.
pub fn seal_digest<'a>(
    prev_hash: Option<&Hash>,
    covered: impl ExactSizeIterator<Item = Covered<'a>>,
) -> Hash {
    let len = |b: &[u8]| u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes();
    let mut h = Sha256::new();
    h.update(SEAL_TAG);
    h.update([if prev_hash.is_some() {
        FLAG_POSITIONAL
    } else {
        0
    }]);
    h.update(
        u32::try_from(covered.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    if let Some(p) = prev_hash {
        h.update(p);
    }
    for (kind, body, effects) in covered {
        h.update(kind.to_be_bytes());
        h.update(len(body));
        h.update(body);
        h.update(len(effects));
        h.update(effects);
    }
    h.finalize().into()
}

/// Whether an operation adds units (creates, tops up, credits back): an append carrying one must
/// be sealed at its place in the chain, or a copy of it would add them again.
pub fn adds_units(op: &CounterOp) -> bool {
    !matches!(op, CounterOp::Spend { .. })
}

impl Append {
    /// The digest this append's seal covers, were it stored now: its records, the first
    /// carrying the effects. `prev_hash` is `Some` for a positional seal (the append must then
    /// set [`Append::expect_head`] to the head whose hash it is).
    pub fn seal_digest(&self, prev_hash: Option<&Hash>) -> Hash {
        let effects = encode_effects(&self.counters, &self.claims);
        let covered = self.records.iter().enumerate().map(|(i, r)| {
            let e: &[u8] = if i == 0 { &effects } else { &[] };
            (r.kind.code(), r.body.as_slice(), e)
        });
        seal_digest(prev_hash, covered)
    }

    /// Adds the seal record over every record so far, `tag` being the MAC of
    /// [`Append::seal_digest`] with the same `positional` choice.
    #[must_use]
    pub fn with_seal(mut self, positional: bool, tag: [u8; SEAL_MAC_LEN]) -> Self {
        let covered = u32::try_from(self.records.len()).unwrap_or(u32::MAX);
        let seal = Seal {
            positional,
            covered,
            tag,
        };
        self.records.push(NewRecord::new(Kind::Seal, seal.encode()));
        self
    }

    /// Whether the last record is a seal (the appends of a sealed store must end with one).
    pub(crate) fn is_sealed(&self) -> Option<bool> {
        let last = self.records.last()?;
        if last.kind != Kind::Seal {
            return None;
        }
        Seal::decode(&last.body).ok().map(|s| s.positional)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trips_and_refuses_malformed_bodies() {
        let s = Seal {
            positional: true,
            covered: 3,
            tag: [7; 32],
        };
        let b = s.encode();
        assert_eq!(b.len(), SEAL_BODY_LEN);
        assert_eq!(Seal::decode(&b), Ok(s.clone()));
        for cut in 0..b.len() {
            assert_eq!(Seal::decode(&b[..cut]), Err(Problem::MalformedSeal));
        }
        let mut long = b.clone();
        long.push(0);
        assert_eq!(Seal::decode(&long), Err(Problem::MalformedSeal));
        let mut v2 = b.clone();
        v2[0] = 2;
        assert_eq!(Seal::decode(&v2), Err(Problem::MalformedSeal));
        let mut flags = b;
        flags[1] = 2;
        assert_eq!(Seal::decode(&flags), Err(Problem::MalformedSeal));
        let none = Seal { covered: 0, ..s };
        assert_eq!(Seal::decode(&none.encode()), Err(Problem::MalformedSeal));
    }

    #[test]
    fn the_digest_covers_every_record_field_the_position_and_the_count() {
        let base = seal_digest(None, [(5u16, &b"ab"[..], &b"e"[..])].into_iter());
        let other = |d: Hash| assert_ne!(base, d);
        other(seal_digest(
            None,
            [(6u16, &b"ab"[..], &b"e"[..])].into_iter(),
        ));
        other(seal_digest(
            None,
            [(5u16, &b"ab"[..], &b""[..])].into_iter(),
        ));
        other(seal_digest(
            None,
            [(5u16, &b"a"[..], &b"be"[..])].into_iter(),
        ));
        other(seal_digest(
            Some(&[0; 32]),
            [(5u16, &b"ab"[..], &b"e"[..])].into_iter(),
        ));
        other(seal_digest(
            None,
            [(5u16, &b"ab"[..], &b"e"[..]), (5u16, &b""[..], &b""[..])].into_iter(),
        ));
        assert_ne!(
            seal_digest(Some(&[0; 32]), [(5u16, &b"ab"[..], &b"e"[..])].into_iter()),
            seal_digest(Some(&[1; 32]), [(5u16, &b"ab"[..], &b"e"[..])].into_iter())
        );
    }

    #[test]
    fn an_appends_digest_is_the_digest_of_the_records_it_stores() {
        let a = Append::record(Kind::CertificateIssued, b"one".to_vec())
            .with_record(Kind::CertificateIssued, b"two".to_vec())
            .with_counter(CounterOp::Spend {
                product: "p".into(),
                n: 2,
            })
            .with_claim("uid", b"k".to_vec());
        let effects = encode_effects(&a.counters, &a.claims);
        let expect = seal_digest(
            None,
            [
                (5u16, &b"one"[..], &effects[..]),
                (5u16, &b"two"[..], &b""[..]),
            ]
            .into_iter(),
        );
        assert_eq!(a.seal_digest(None), expect);
        let sealed = a.with_seal(false, [1; 32]);
        assert_eq!(sealed.is_sealed(), Some(false));
        assert_eq!(sealed.records.len(), 3);
    }

    proptest::proptest! {
        #[test]
        fn seal_decoder_never_panics_and_what_parses_encodes_back(
            b in proptest::collection::vec(proptest::num::u8::ANY, 0..80)
        ) {
            if let Ok(s) = Seal::decode(&b) {
                proptest::prop_assert_eq!(s.encode(), b);
            }
        }
    }
}
