//! What one atomic append holds: records, counter operations and unique claims, and the checks
//! on them that need no storage.

use std::collections::HashSet;

use crate::error::{Error, Invalid, Problem};
use crate::record::{Kind, MAX_BODY_BYTES};

/// The most records in one append.
pub const MAX_RECORDS_PER_APPEND: usize = 4096;
/// The most counter operations plus claims in one append.
pub const MAX_OPERATIONS_PER_APPEND: usize = 8192;
/// The longest product key, in bytes.
pub const MAX_PRODUCT_KEY_BYTES: usize = 160;
/// The longest claim namespace, in bytes.
pub const MAX_NAMESPACE_BYTES: usize = 32;
/// The longest claim key, in bytes.
pub const MAX_CLAIM_KEY_BYTES: usize = 256;
/// The largest count or amount: counters are stored as signed 64-bit integers.
pub const MAX_COUNT: u64 = i64::MAX as u64;

/// A record to append; the ledger assigns its seq and hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRecord {
    /// What happened.
    pub kind: Kind,
    /// Canonical bytes, at most [`MAX_BODY_BYTES`].
    pub body: Vec<u8>,
}

impl NewRecord {
    /// A record of `kind` with `body`.
    pub fn new(kind: Kind, body: impl Into<Vec<u8>>) -> Self {
        Self {
            kind,
            body: body.into(),
        }
    }
}

/// A change to a product's production counter, checked in the append's transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CounterOp {
    /// Create the counter with `count` units; refused if the product exists.
    Create {
        /// The product key (for example `oem/product`).
        product: String,
        /// The production count.
        count: u64,
    },
    /// Add `n` units to an existing product.
    TopUp {
        /// The product key.
        product: String,
        /// Units added.
        n: u64,
    },
    /// Spend `n` units; refused with [`Error::Exhausted`] if fewer remain.
    Spend {
        /// The product key.
        product: String,
        /// Units spent.
        n: u64,
    },
    /// Give back `n` spent units (a reservation that was never signed); refused with
    /// [`Error::OverCredit`] if fewer are spent.
    Credit {
        /// The product key.
        product: String,
        /// Units given back.
        n: u64,
    },
}

impl CounterOp {
    /// The product the operation is about.
    pub fn product(&self) -> &str {
        match self {
            Self::Create { product, .. }
            | Self::TopUp { product, .. }
            | Self::Spend { product, .. }
            | Self::Credit { product, .. } => product,
        }
    }

    pub(crate) fn code(&self) -> i64 {
        match self {
            Self::Create { .. } => 1,
            Self::TopUp { .. } => 2,
            Self::Spend { .. } => 3,
            Self::Credit { .. } => 4,
        }
    }

    /// The operation a stored code and amount stand for: the inverse of [`Self::code`].
    pub(crate) fn from_code(code: i64, product: String, amount: u64) -> Option<Self> {
        Some(match code {
            1 => Self::Create {
                product,
                count: amount,
            },
            2 => Self::TopUp { product, n: amount },
            3 => Self::Spend { product, n: amount },
            4 => Self::Credit { product, n: amount },
            _ => return None,
        })
    }

    /// The operation's count or amount.
    pub fn amount(&self) -> u64 {
        match self {
            Self::Create { count, .. } => *count,
            Self::TopUp { n, .. } | Self::Spend { n, .. } | Self::Credit { n, .. } => *n,
        }
    }

    /// The counter after this operation, or the refusal.
    pub(crate) fn apply(&self, before: Option<Counter>) -> Result<Counter, Error> {
        let product = || self.product().to_owned();
        let Some(c) = before else {
            return match self {
                Self::Create { count, .. } => Ok(Counter {
                    total: *count,
                    issued: 0,
                }),
                _ => Err(Error::UnknownProduct { product: product() }),
            };
        };
        match self {
            Self::Create { .. } => Err(Error::ProductExists { product: product() }),
            Self::TopUp { n, .. } => match c.total.checked_add(*n).filter(|t| *t <= MAX_COUNT) {
                Some(total) => Ok(Counter { total, ..c }),
                None => Err(Error::CountOverflow {
                    product: product(),
                    limit: MAX_COUNT,
                }),
            },
            Self::Spend { n, .. } => {
                let remaining = c.remaining();
                if remaining < *n {
                    Err(Error::Exhausted {
                        product: product(),
                        remaining,
                        asked: *n,
                    })
                } else {
                    Ok(Counter {
                        issued: c.issued + n,
                        ..c
                    })
                }
            }
            Self::Credit { n, .. } => match c.issued.checked_sub(*n) {
                Some(issued) => Ok(Counter { issued, ..c }),
                None => Err(Error::OverCredit {
                    product: product(),
                    issued: c.issued,
                    asked: *n,
                }),
            },
        }
    }
}

/// A unique claim: the append is refused with [`Error::Duplicate`] if `(namespace, key)` was
/// claimed before. For example `("package", package id)` against replay, `("uid", product ‖
/// uid)` and `("serial", issuer ‖ serial)` against duplicates.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Claim {
    /// A short name of the kind of key.
    pub namespace: String,
    /// The claimed key.
    pub key: Vec<u8>,
}

impl Claim {
    /// A claim of `key` in `namespace`.
    pub fn new(namespace: &str, key: impl Into<Vec<u8>>) -> Self {
        Self {
            namespace: namespace.to_owned(),
            key: key.into(),
        }
    }
}

/// One atomic append: every record, counter operation and claim is durable together, or none
/// is. Counter operations apply in order, so one append may create a product and spend from it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Append {
    /// The records, in order; at least one.
    pub records: Vec<NewRecord>,
    /// Counter operations checked and applied in the same transaction.
    pub counters: Vec<CounterOp>,
    /// Unique claims made in the same transaction, attributed to the first record.
    pub claims: Vec<Claim>,
    /// If set, the append is refused with [`Error::HeadMoved`] unless the ledger's last seq is
    /// exactly this (optimistic concurrency; checkpoints use it).
    pub expect_head: Option<u64>,
}

impl Append {
    /// An append of one record.
    pub fn record(kind: Kind, body: impl Into<Vec<u8>>) -> Self {
        Self {
            records: vec![NewRecord::new(kind, body)],
            ..Self::default()
        }
    }

    /// Adds a record.
    #[must_use]
    pub fn with_record(mut self, kind: Kind, body: impl Into<Vec<u8>>) -> Self {
        self.records.push(NewRecord::new(kind, body));
        self
    }

    /// Adds a counter operation.
    #[must_use]
    pub fn with_counter(mut self, op: CounterOp) -> Self {
        self.counters.push(op);
        self
    }

    /// Adds a unique claim.
    #[must_use]
    pub fn with_claim(mut self, namespace: &str, key: impl Into<Vec<u8>>) -> Self {
        self.claims.push(Claim::new(namespace, key));
        self
    }

    /// The checks that need no storage: limits and format rules.
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        if self.records.is_empty() {
            return Err(Invalid::NoRecords);
        }
        if self.records.len() > MAX_RECORDS_PER_APPEND {
            return Err(Invalid::TooManyRecords {
                count: self.records.len(),
                limit: MAX_RECORDS_PER_APPEND,
            });
        }
        for r in &self.records {
            if r.body.len() > MAX_BODY_BYTES {
                return Err(Invalid::BodyTooLarge {
                    len: r.body.len(),
                    limit: MAX_BODY_BYTES,
                });
            }
        }
        let ops = self.counters.len() + self.claims.len();
        if ops > MAX_OPERATIONS_PER_APPEND {
            return Err(Invalid::TooManyOperations {
                count: ops,
                limit: MAX_OPERATIONS_PER_APPEND,
            });
        }
        for op in &self.counters {
            let p = op.product();
            if p.is_empty() || p.len() > MAX_PRODUCT_KEY_BYTES {
                return Err(Invalid::ProductKey);
            }
            let amount = op.amount();
            if amount > MAX_COUNT {
                return Err(Invalid::AmountTooLarge);
            }
            if amount == 0 && !matches!(op, CounterOp::Create { .. }) {
                return Err(Invalid::ZeroAmount);
            }
        }
        let mut seen = HashSet::with_capacity(self.claims.len());
        for c in &self.claims {
            if c.namespace.is_empty() || c.namespace.len() > MAX_NAMESPACE_BYTES {
                return Err(Invalid::Namespace);
            }
            if c.key.is_empty() || c.key.len() > MAX_CLAIM_KEY_BYTES {
                return Err(Invalid::ClaimKey);
            }
            if !seen.insert(c) {
                return Err(Invalid::RepeatedClaim);
            }
        }
        Ok(())
    }
}

/// Version byte that starts a non-empty effects encoding.
pub const EFFECTS_VERSION: u8 = 1;

/// The canonical encoding of an append's counter operations and claims, which its first record
/// carries and hashes, so the chain alone shows every count change and claim:
///
/// empty when there are none; otherwise `u8(1) || u16be(n) || n × (u8(op) || u16be(len) ||
/// product || u64be(amount)) || u16be(m) || m × (u8(len) || namespace || u16be(len) || key)`
/// with op 1 create, 2 top-up, 3 spend, 4 credit.
///
/// The inputs must be within the append limits (as every stored append is); lengths beyond
/// them would not fit their prefixes.
pub fn encode_effects(counters: &[CounterOp], claims: &[Claim]) -> Vec<u8> {
    if counters.is_empty() && claims.is_empty() {
        return Vec::new();
    }
    // Lengths are bounded by validate(): products ≤ 160, namespaces ≤ 32, keys ≤ 256 bytes,
    // at most 8192 operations, so each fits its prefix.
    let u16_len = |n: usize| u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes();
    let mut b = vec![EFFECTS_VERSION];
    b.extend_from_slice(&u16_len(counters.len()));
    for op in counters {
        b.push(u8::try_from(op.code()).unwrap_or(0));
        b.extend_from_slice(&u16_len(op.product().len()));
        b.extend_from_slice(op.product().as_bytes());
        b.extend_from_slice(&op.amount().to_be_bytes());
    }
    b.extend_from_slice(&u16_len(claims.len()));
    for c in claims {
        b.push(u8::try_from(c.namespace.len()).unwrap_or(u8::MAX));
        b.extend_from_slice(c.namespace.as_bytes());
        b.extend_from_slice(&u16_len(c.key.len()));
        b.extend_from_slice(&c.key);
    }
    b
}

/// Parses [`encode_effects`] output, refusing anything that is not its canonical form.
///
/// # Errors
///
/// [`Problem::MalformedEffects`].
pub fn decode_effects(b: &[u8]) -> Result<(Vec<CounterOp>, Vec<Claim>), Problem> {
    if b.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut r = Reader(b);
    if r.u8()? != EFFECTS_VERSION {
        return Err(Problem::MalformedEffects);
    }
    let n = r.u16()?;
    let mut counters = Vec::with_capacity(usize::from(n).min(MAX_OPERATIONS_PER_APPEND));
    for _ in 0..n {
        let op = r.u8()?;
        let len = usize::from(r.u16()?);
        let product =
            String::from_utf8(r.take(len)?.to_vec()).map_err(|_| Problem::MalformedEffects)?;
        let amount = u64::from_be_bytes(r.array::<8>()?);
        counters.push(
            CounterOp::from_code(i64::from(op), product, amount)
                .ok_or(Problem::MalformedEffects)?,
        );
    }
    let m = r.u16()?;
    let mut claims = Vec::with_capacity(usize::from(m).min(MAX_OPERATIONS_PER_APPEND));
    for _ in 0..m {
        let len = usize::from(r.u8()?);
        let namespace =
            String::from_utf8(r.take(len)?.to_vec()).map_err(|_| Problem::MalformedEffects)?;
        let len = usize::from(r.u16()?);
        claims.push(Claim {
            namespace,
            key: r.take(len)?.to_vec(),
        });
    }
    if !r.0.is_empty() || (counters.is_empty() && claims.is_empty()) {
        return Err(Problem::MalformedEffects);
    }
    Ok((counters, claims))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Problem> {
        let (head, rest) = self
            .0
            .split_at_checked(n)
            .ok_or(Problem::MalformedEffects)?;
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Problem> {
        <[u8; N]>::try_from(self.take(N)?).map_err(|_| Problem::MalformedEffects)
    }

    fn u8(&mut self) -> Result<u8, Problem> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, Problem> {
        Ok(u16::from_be_bytes(self.array::<2>()?))
    }
}

/// A product's production counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counter {
    /// Units created plus topped up.
    pub total: u64,
    /// Units spent minus units credited back.
    pub issued: u64,
}

impl Counter {
    /// Units left to spend.
    pub fn remaining(&self) -> u64 {
        self.total.saturating_sub(self.issued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spend(n: u64) -> CounterOp {
        CounterOp::Spend {
            product: "p".into(),
            n,
        }
    }

    #[test]
    fn counter_rules() {
        let c = Counter {
            total: 10,
            issued: 7,
        };
        assert_eq!(
            spend(3).apply(Some(c)).unwrap(),
            Counter {
                total: 10,
                issued: 10
            }
        );
        assert!(matches!(
            spend(4).apply(Some(c)),
            Err(Error::Exhausted {
                remaining: 3,
                asked: 4,
                ..
            })
        ));
        assert!(matches!(
            spend(1).apply(None),
            Err(Error::UnknownProduct { .. })
        ));
        let create = CounterOp::Create {
            product: "p".into(),
            count: 5,
        };
        assert!(matches!(
            create.apply(Some(c)),
            Err(Error::ProductExists { .. })
        ));
        let credit = CounterOp::Credit {
            product: "p".into(),
            n: 8,
        };
        assert!(matches!(
            credit.apply(Some(c)),
            Err(Error::OverCredit {
                issued: 7,
                asked: 8,
                ..
            })
        ));
        let top = CounterOp::TopUp {
            product: "p".into(),
            n: MAX_COUNT,
        };
        assert!(matches!(
            top.apply(Some(c)),
            Err(Error::CountOverflow { .. })
        ));
    }

    #[test]
    fn effects_round_trip_and_only_the_canonical_form_parses() {
        assert!(encode_effects(&[], &[]).is_empty());
        assert_eq!(decode_effects(&[]).unwrap(), (vec![], vec![]));
        let ops = vec![
            CounterOp::Create {
                product: "o/p".into(),
                count: 10,
            },
            spend(3),
        ];
        let claims = vec![Claim::new("uid", b"\x01\x02".to_vec())];
        let b = encode_effects(&ops, &claims);
        // Annotated: version, 2 ops, [create "o/p" 10], [spend "p" 3], 1 claim ["uid" 0102].
        assert_eq!(
            hex::encode(&b),
            concat!(
                "01",
                "0002",
                "01",
                "0003",
                "6f2f70",
                "000000000000000a",
                "03",
                "0001",
                "70",
                "0000000000000003",
                "0001",
                "03",
                "756964",
                "0002",
                "0102"
            )
        );
        assert_eq!(decode_effects(&b).unwrap(), (ops, claims));
        for cut in 1..b.len() {
            assert_eq!(decode_effects(&b[..cut]), Err(Problem::MalformedEffects));
        }
        let mut long = b.clone();
        long.push(0);
        assert_eq!(decode_effects(&long), Err(Problem::MalformedEffects));
        // A version byte with nothing in it is not canonical (that is the empty encoding).
        assert_eq!(
            decode_effects(&[1, 0, 0, 0, 0]),
            Err(Problem::MalformedEffects)
        );
        let mut bad_op = b;
        bad_op[3] = 9;
        assert_eq!(decode_effects(&bad_op), Err(Problem::MalformedEffects));
    }

    fn op_strategy() -> impl proptest::strategy::Strategy<Value = CounterOp> {
        use proptest::prelude::*;
        ("[a-z/]{1,20}", 1u64..=MAX_COUNT, 0u8..4).prop_map(|(product, n, code)| match code {
            0 => CounterOp::Create { product, count: n },
            1 => CounterOp::TopUp { product, n },
            2 => CounterOp::Spend { product, n },
            _ => CounterOp::Credit { product, n },
        })
    }

    proptest::proptest! {
        #[test]
        fn effects_round_trip(
            ops in proptest::collection::vec(op_strategy(), 0..8),
            claims in proptest::collection::vec(
                ("[a-z]{1,32}", proptest::collection::vec(proptest::num::u8::ANY, 1..256)),
                0..8,
            ),
        ) {
            let claims: Vec<Claim> = claims
                .into_iter()
                .map(|(n, k)| Claim { namespace: n, key: k })
                .collect();
            let b = encode_effects(&ops, &claims);
            proptest::prop_assert_eq!(decode_effects(&b).unwrap(), (ops, claims));
        }

        #[test]
        fn effects_decoder_never_panics(b in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            if let Ok((ops, claims)) = decode_effects(&b) {
                // Whatever parses is canonical: it encodes back to the same bytes.
                proptest::prop_assert_eq!(encode_effects(&ops, &claims), b);
            }
        }

        #[test]
        fn checkpoint_decoder_never_panics(b in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            if let Ok(cp) = crate::Checkpoint::decode(&b) {
                proptest::prop_assert_eq!(cp.encode().unwrap(), b);
            }
        }
    }

    #[test]
    fn validation_refuses_each_rule() {
        let ok = Append::record(Kind::JobCreated, b"j".to_vec());
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(Append::default().validate(), Err(Invalid::NoRecords));
        let big = Append::record(Kind::JobCreated, vec![0; MAX_BODY_BYTES + 1]);
        assert!(matches!(big.validate(), Err(Invalid::BodyTooLarge { .. })));
        assert_eq!(
            ok.clone().with_counter(spend(0)).validate(),
            Err(Invalid::ZeroAmount)
        );
        assert_eq!(
            ok.clone()
                .with_claim("uid", b"a".to_vec())
                .with_claim("uid", b"a".to_vec())
                .validate(),
            Err(Invalid::RepeatedClaim)
        );
        assert_eq!(
            ok.clone().with_claim("", b"a".to_vec()).validate(),
            Err(Invalid::Namespace)
        );
        assert_eq!(
            ok.with_claim("uid", Vec::new()).validate(),
            Err(Invalid::ClaimKey)
        );
    }
}
