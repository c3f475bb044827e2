//! MAC keys and token-held anchors: the primitives that let an application authenticate state it
//! keeps outside the token (HMAC-SHA256 under a key that never leaves the token) and hold a small
//! rollback anchor inside it (a named data object of at most [`ANCHOR_MAX`] bytes).

use std::fmt;

use subtle::ConstantTimeEq as _;

use crate::{Error, KeyLabel};

/// The length of a MAC key (HMAC-SHA256, 256 bits) and of its tag, in bytes.
pub const MAC_LEN: usize = 32;

/// The largest anchor value a token holds, in bytes.
pub const ANCHOR_MAX: usize = 256;

/// How to generate a MAC key: an HMAC-SHA256 key of [`MAC_LEN`] bytes, made inside the token.
/// Its attributes are fixed, not chosen: sensitive, never extractable, usage MAC only (PKCS#11:
/// CKO_SECRET_KEY, CKK_GENERIC_SECRET, CKA_SIGN and CKA_VERIFY, nothing else). It has no curve
/// and no public key; [`crate::KeyInfo::curve`] is `None` for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MacKeySpec {
    /// CKA_LABEL. Keys and MAC keys share one label space on a token.
    pub label: KeyLabel,
}

impl MacKeySpec {
    /// The spec of a MAC key labelled `label`.
    pub fn new(label: KeyLabel) -> Self {
        Self { label }
    }
}

/// An HMAC-SHA256 tag. Not secret, but compared only in constant time: `==` is `ct_eq`, so a
/// variable-time comparison cannot be written by accident.
#[derive(Clone, Copy)]
pub struct MacTag([u8; MAC_LEN]);

impl MacTag {
    /// A tag from its bytes (as stored beside what it authenticates).
    pub fn from_bytes(bytes: [u8; MAC_LEN]) -> Self {
        Self(bytes)
    }

    /// The tag's bytes.
    pub fn as_bytes(&self) -> &[u8; MAC_LEN] {
        &self.0
    }

    /// The tag's bytes, by value.
    pub fn to_bytes(self) -> [u8; MAC_LEN] {
        self.0
    }
}

impl TryFrom<&[u8]> for MacTag {
    type Error = Error;

    /// A tag from a slice read back from storage.
    ///
    /// # Errors
    /// [`Error::MacMismatch`] when the slice is not [`MAC_LEN`] bytes: no tag of another length
    /// verifies.
    fn try_from(bytes: &[u8]) -> Result<Self, Error> {
        <[u8; MAC_LEN]>::try_from(bytes)
            .map(Self)
            .map_err(|_| Error::MacMismatch)
    }
}

impl PartialEq for MacTag {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for MacTag {}

impl fmt::Debug for MacTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MacTag(")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

/// The rule every token applies to an anchor value before it writes it: at most [`ANCHOR_MAX`]
/// bytes.
///
/// # Errors
/// [`Error::TooLarge`].
pub fn check_anchor(value: &[u8]) -> Result<(), Error> {
    if value.len() > ANCHOR_MAX {
        return Err(Error::TooLarge {
            what: "anchor",
            len: value.len(),
            limit: ANCHOR_MAX,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_compare_by_value_and_refuse_other_lengths() {
        let a = MacTag::from_bytes([7; MAC_LEN]);
        let mut other = [7; MAC_LEN];
        other[31] = 8;
        assert_eq!(a, MacTag::try_from(&[7u8; MAC_LEN][..]).unwrap());
        assert_ne!(a, MacTag::from_bytes(other));
        assert!(matches!(
            MacTag::try_from(&[7u8; 31][..]),
            Err(Error::MacMismatch)
        ));
        assert!(format!("{a:?}").starts_with("MacTag(0707"));
    }

    #[test]
    fn anchors_have_a_limit() {
        check_anchor(&[0; ANCHOR_MAX]).unwrap();
        check_anchor(&[]).unwrap();
        assert!(matches!(
            check_anchor(&[0; ANCHOR_MAX + 1]),
            Err(Error::TooLarge {
                limit: ANCHOR_MAX,
                ..
            })
        ));
    }
}
