//! The rollback anchor: the ledger head this HSM has seen, kept inside its token so that a ledger
//! deleted, cut short, rolled back or replaced outside the token's boundary is refused
//! (`docs/ledger.md`, "The HSM's anchor").
//!
//! The value is `version u8 (1) | seq u64 (big-endian) | hash [u8; 32]`, a [`Head`]. It only
//! moves forward. Appends that wait at once share one token write (group commit): one writer at
//! a time writes the highest head waiting, and every append that head covers returns.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use trustfab_ledger::{Head, Record, Store};
use trustfab_token::{KeyLabel, Token};

use crate::error::AnchorError;

/// Token label of the HSM's ledger anchor.
pub const ANCHOR_LABEL: &str = "hsm-ledger-anchor";

/// The encoding's version byte.
const VERSION: u8 = 1;
/// Encoded length: version, seq, hash.
const ENCODED_LEN: usize = 1 + 8 + 32;

/// Encodes `head` as an anchor value.
fn encode(head: &Head) -> Vec<u8> {
    let mut v = Vec::with_capacity(ENCODED_LEN);
    v.push(VERSION);
    v.extend_from_slice(&head.seq.to_be_bytes());
    v.extend_from_slice(&head.hash);
    v
}

/// The head anchored under `label` in `token`, if any.
pub(crate) fn read(token: &dyn Token, label: &KeyLabel) -> Result<Option<Head>, AnchorError> {
    token
        .read_anchor(label)
        .map_err(AnchorError::Token)?
        .map(|v| decode(&v))
        .transpose()
}

/// Decodes an anchor value; anything but a version-1 value of the exact length is refused.
fn decode(b: &[u8]) -> Result<Head, AnchorError> {
    if b.len() != ENCODED_LEN || b.first() != Some(&VERSION) {
        return Err(AnchorError::Malformed);
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(b.get(1..9).ok_or(AnchorError::Malformed)?);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(b.get(9..).ok_or(AnchorError::Malformed)?);
    Ok(Head {
        seq: u64::from_be_bytes(seq),
        hash,
    })
}

/// What this process knows of the anchor.
struct State {
    /// The highest head known to be anchored in the token.
    anchored: Head,
    /// The highest head an append waits to have anchored, not yet taken by a writer.
    wanted: Option<Head>,
    /// A writer is at the token.
    writing: bool,
    /// Set when the store was seen rolled back under this HSM: it appends and issues no more.
    /// `(seq appended, seq anchored)`.
    stopped: Option<(u64, u64)>,
}

/// The anchor of one open HSM.
pub(crate) struct Anchor {
    token: Arc<dyn Token>,
    label: KeyLabel,
    state: Mutex<State>,
    written: Condvar,
}

impl Anchor {
    /// Reads the token's anchor and checks that `ledger` reaches it: its head at or past the
    /// anchored seq, and the record there the anchored one. Without an anchor (a new HSM, or one
    /// of a release before anchors) the store's current head is anchored.
    pub(crate) fn open(token: Arc<dyn Token>, ledger: &dyn Store) -> Result<Self, AnchorError> {
        let label = KeyLabel::new(ANCHOR_LABEL).map_err(AnchorError::Token)?;
        // The anchor first, then the head: another process anchors only what its store has
        // committed, so a head read after the anchor reaches it; read the other way round, an
        // append committed and anchored between the two reads looks like a ledger behind.
        let anchor = read(&*token, &label)?;
        let head = ledger.head().map_err(AnchorError::Ledger)?;
        let anchored = match anchor {
            Some(a) => {
                check_reaches(ledger, &head, &a)?;
                a
            }
            None => {
                token
                    .write_anchor(&label, &encode(&head))
                    .map_err(AnchorError::Token)?;
                head
            }
        };
        Ok(Self {
            token,
            label,
            state: Mutex::new(State {
                anchored,
                wanted: None,
                writing: false,
                stopped: None,
            }),
            written: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The anchored seq an append made from now on must pass, or why this HSM appends no more.
    /// Taken before the append: a later value may already cover appends made meanwhile.
    pub(crate) fn floor(&self) -> Result<u64, AnchorError> {
        let s = self.lock();
        match s.stopped {
            Some((seq, anchored)) => Err(AnchorError::Stopped { seq, anchored }),
            None => Ok(s.anchored.seq),
        }
    }

    /// Checks the records one append (or several) returned against `floor` (from
    /// [`Anchor::floor`] before the append) and returns once the anchor covers the last of them.
    pub(crate) fn advance(&self, floor: u64, recs: &[Record]) -> Result<(), AnchorError> {
        let (Some(first), Some(last)) = (
            recs.iter().map(|r| r.seq).min(),
            recs.iter().max_by_key(|r| r.seq),
        ) else {
            return Ok(());
        };
        let target = Head {
            seq: last.seq,
            hash: last.hash,
        };
        let mut s = self.lock();
        if first <= floor {
            // An honest store hands out seqs past every one anchored before the append.
            let e = AnchorError::RolledBack {
                seq: first,
                anchored: floor,
            };
            s.stopped = Some((first, floor));
            self.written.notify_all();
            return Err(e);
        }
        loop {
            if let Some((seq, anchored)) = s.stopped {
                return Err(AnchorError::Stopped { seq, anchored });
            }
            if s.anchored.seq >= target.seq {
                return Ok(());
            }
            if s.writing {
                if s.wanted.is_none_or(|w| w.seq < target.seq) {
                    s.wanted = Some(target);
                }
                s = self.written.wait(s).unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            // This caller writes, for itself and every one waiting.
            let w = match s.wanted.take() {
                Some(w) if w.seq > target.seq => w,
                _ => target,
            };
            s.writing = true;
            drop(s);
            let res = self.write_max(&w);
            s = self.lock();
            s.writing = false;
            self.written.notify_all();
            match res {
                Ok(h) => {
                    if h.seq > s.anchored.seq {
                        s.anchored = h;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes `w` unless the token already holds a higher anchor (another process of this HSM
    /// wrote it); returns what the token now holds.
    fn write_max(&self, w: &Head) -> Result<Head, AnchorError> {
        if let Some(cur) = read(&*self.token, &self.label)? {
            if cur.seq > w.seq {
                return Ok(cur);
            }
            if cur.seq == w.seq {
                if cur.hash != w.hash {
                    return Err(AnchorError::Forked { seq: w.seq });
                }
                return Ok(cur);
            }
        }
        self.token
            .write_anchor(&self.label, &encode(w))
            .map_err(AnchorError::Token)?;
        Ok(*w)
    }
}

/// Checks that `ledger` (whose head is `head`) reaches the anchored head `a`.
fn check_reaches(ledger: &dyn Store, head: &Head, a: &Head) -> Result<(), AnchorError> {
    if head.seq < a.seq {
        return Err(AnchorError::Behind {
            expected: a.seq,
            head: head.seq,
        });
    }
    if a.seq == 0 {
        return Ok(());
    }
    let raw = ledger.read_raw(a.seq, 1).map_err(AnchorError::Ledger)?;
    match raw.first() {
        Some(r) if r.seq == a.seq && r.hash.as_slice() == a.hash.as_slice() => Ok(()),
        Some(_) => Err(AnchorError::Forked { seq: a.seq }),
        None => Err(AnchorError::Behind {
            expected: a.seq,
            head: head.seq,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_and_refuses_other_versions_and_lengths() {
        let h = Head {
            seq: 0x0102_0304_0506_0708,
            hash: [7; 32],
        };
        let v = encode(&h);
        assert_eq!(v.len(), ENCODED_LEN);
        assert_eq!(decode(&v).ok(), Some(h));
        let mut other = v.clone();
        other[0] = 2;
        assert!(matches!(decode(&other), Err(AnchorError::Malformed)));
        assert!(matches!(decode(&v[..40]), Err(AnchorError::Malformed)));
        assert!(matches!(decode(&[]), Err(AnchorError::Malformed)));
    }
}
