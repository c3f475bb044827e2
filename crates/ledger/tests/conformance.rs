//! The store conformance suite: one body per behaviour, run against every backend through
//! `store_suite!`. Tampering is done with raw SQL on the real database.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use trustfab_ledger::{
    record_hash, Append, CounterOp, Error, Head, Invalid, Kind, Problem, RawRecord, Record, Store,
    GENESIS_HASH, MAX_BODY_BYTES,
};
use trustfab_types::UnixTime;

use crate::support::{self, signer, verifier, Fixture};

/// Instantiates every conformance test for one backend fixture.
macro_rules! store_suite {
    ($name:ident, $fixture:ty) => {
        mod $name {
            use crate::conformance as c;
            type F = $fixture;

            #[test]
            fn append_assigns_gapless_seqs_and_verifies() {
                c::append_assigns_gapless_seqs_and_verifies::<F>();
            }
            #[test]
            fn records_stream_in_batches() {
                c::records_stream_in_batches::<F>();
            }
            #[test]
            fn property_4_spend_never_exceeds_count_8_threads() {
                c::property_4_spend_never_exceeds_count_8_threads::<F>();
            }
            #[test]
            fn refused_spend_writes_nothing() {
                c::refused_spend_writes_nothing::<F>();
            }
            #[test]
            fn duplicate_claim_refused_atomically() {
                c::duplicate_claim_refused_atomically::<F>();
            }
            #[test]
            fn counter_operations_and_refusals() {
                c::counter_operations_and_refusals::<F>();
            }
            #[test]
            fn invalid_appends_refused() {
                c::invalid_appends_refused::<F>();
            }
            #[test]
            fn checkpoints_signed_and_checked() {
                c::checkpoints_signed_and_checked::<F>();
            }
            #[test]
            fn checkpoint_under_concurrent_appends() {
                c::checkpoint_under_concurrent_appends::<F>();
            }
            #[test]
            fn verify_while_others_append() {
                c::verify_while_others_append::<F>();
            }
            #[test]
            fn property_5_removed_record_detected() {
                c::property_5_removed_record_detected::<F>();
            }
            #[test]
            fn property_5_changed_record_detected() {
                c::property_5_changed_record_detected::<F>();
            }
            #[test]
            fn property_5_reordered_records_detected() {
                c::property_5_reordered_records_detected::<F>();
            }
            #[test]
            fn property_5_inserted_record_detected() {
                c::property_5_inserted_record_detected::<F>();
            }
            #[test]
            fn property_5_rewritten_chain_caught_by_checkpoint() {
                c::property_5_rewritten_chain_caught_by_checkpoint::<F>();
            }
            #[test]
            fn unknown_kind_refused_on_read() {
                c::unknown_kind_refused_on_read::<F>();
            }
            #[test]
            fn tampered_counters_detected() {
                c::tampered_counters_detected::<F>();
            }
            #[test]
            fn deleted_claim_detected() {
                c::deleted_claim_detected::<F>();
            }
            #[test]
            fn schema_versioned_and_newer_refused() {
                c::schema_versioned_and_newer_refused::<F>();
            }
        }
    };
}

const P: &str = "oem-1/product-1";

fn job(i: u64) -> Append {
    Append::record(Kind::JobCreated, format!("job {i}").into_bytes())
}

fn issue(product: &str, serial: u64) -> Append {
    Append::record(Kind::CertificateIssued, serial.to_be_bytes().to_vec())
        .with_counter(CounterOp::Spend {
            product: product.to_owned(),
            n: 1,
        })
        .with_claim("serial", serial.to_be_bytes().to_vec())
}

fn create(product: &str, count: u64) -> Append {
    Append::record(Kind::ProductCreated, product.as_bytes().to_vec()).with_counter(
        CounterOp::Create {
            product: product.to_owned(),
            count,
        },
    )
}

/// A ledger with `n` plain records.
fn filled<F: Fixture>(n: u64) -> (F, F::S) {
    let f = F::new();
    let s = f.open().unwrap();
    let out = s.append_all((1..=n).map(job).collect());
    assert!(out.iter().all(Result::is_ok));
    (f, s)
}

fn tampered(r: Result<trustfab_ledger::Verified, Error>) -> (u64, Problem) {
    match r {
        Err(Error::Tampered { seq, problem }) => (seq, problem),
        other => panic!("expected a tampered ledger, got {other:?}"),
    }
}

fn raw(s: &dyn Store, seq: u64) -> RawRecord {
    s.read_raw(seq, 1).unwrap().remove(0)
}

pub(crate) fn append_assigns_gapless_seqs_and_verifies<F: Fixture>() {
    let f = F::new();
    let s = f.open().unwrap();
    assert_eq!(s.head().unwrap(), Head::EMPTY);
    assert_eq!(s.verify(&verifier).unwrap().head, Head::EMPTY);

    let first = s
        .append(
            Append::record(Kind::PackageImported, b"pkg".to_vec())
                .with_record(Kind::ProductCreated, b"prod".to_vec()),
        )
        .unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!(first[0].seq, 1);
    assert_eq!(first[0].prev_hash, GENESIS_HASH);
    assert_eq!(first[1].seq, 2);
    assert_eq!(first[1].prev_hash, first[0].hash);
    assert!(first.iter().all(Record::hash_is_consistent));

    let more = s.append_all((0..5).map(job).collect());
    let seqs: Vec<u64> = more.iter().map(|r| r.as_ref().unwrap()[0].seq).collect();
    assert_eq!(seqs, vec![3, 4, 5, 6, 7]);

    let all: Vec<Record> = s.records(1).map(Result::unwrap).collect();
    assert_eq!(all.len(), 7);
    assert_eq!(&all[..2], &first[..]);
    for w in all.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1);
        assert_eq!(w[1].prev_hash, w[0].hash);
    }
    let head = s.head().unwrap();
    assert_eq!(head.seq, 7);
    assert_eq!(head.hash, all[6].hash);
    drop(s);

    // Durable across reopening, and verifies.
    let s = f.open().unwrap();
    assert_eq!(s.head().unwrap(), head);
    let v = s.verify(&verifier).unwrap();
    assert_eq!(v.head, head);
    assert_eq!(v.checkpoints, 0);
    assert_eq!(v.last_checkpoint, None);
}

pub(crate) fn records_stream_in_batches<F: Fixture>() {
    let f = F::new();
    let s = f.open().unwrap();
    // 25 appends of 100 records: more than two read batches.
    let appends = (0..25)
        .map(|a| Append {
            records: (0..100)
                .map(|i| trustfab_ledger::NewRecord::new(Kind::DeviceLocked, vec![a, i]))
                .collect(),
            ..Append::default()
        })
        .collect();
    assert!(s.append_all(appends).iter().all(Result::is_ok));
    let mut n = 0u64;
    for (i, r) in s.records(1).enumerate() {
        let r = r.unwrap();
        assert_eq!(r.seq, i as u64 + 1);
        n += 1;
    }
    assert_eq!(n, 2500);
    let tail: Vec<u64> = s.records(2401).map(|r| r.unwrap().seq).collect();
    assert_eq!(tail, (2401..=2500).collect::<Vec<_>>());
    assert_eq!(s.records(2501).count(), 0);
    assert_eq!(s.verify(&verifier).unwrap().head.seq, 2500);
}

pub(crate) fn property_4_spend_never_exceeds_count_8_threads<F: Fixture>() {
    const COUNT: u64 = 600;
    let f = F::new();
    // Two store handles (two writers, two sets of connections), four threads on each: the
    // threads of one handle share transactions, the handles compete like two processes.
    let a: Arc<dyn Store> = Arc::new(f.open().unwrap());
    let b: Arc<dyn Store> = Arc::new(f.open().unwrap());
    a.append(create(P, COUNT)).unwrap();
    let next = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let s = if t % 2 == 0 { a.clone() } else { b.clone() };
            let next = next.clone();
            thread::spawn(move || {
                let mut mine = Vec::new();
                let mut refused = 0;
                while refused < 3 {
                    let serial = next.fetch_add(1, Ordering::SeqCst);
                    match s.append(issue(P, serial)) {
                        Ok(recs) => mine.push((recs[0].seq, serial)),
                        Err(Error::Exhausted {
                            product,
                            remaining: 0,
                            asked: 1,
                        }) => {
                            assert_eq!(product, P);
                            refused += 1;
                        }
                        Err(e) => panic!("unexpected {e:?}"),
                    }
                }
                mine
            })
        })
        .collect();
    let issued: Vec<(u64, u64)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(issued.len() as u64, COUNT);
    assert_eq!(a.issued(P).unwrap(), COUNT);
    assert_eq!(b.remaining(P).unwrap(), 0);
    let seqs: HashSet<u64> = issued.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs.len() as u64, COUNT);
    // Every success is on record with its serial, and nothing else was issued.
    let on_record: Vec<Record> = a
        .records(1)
        .map(Result::unwrap)
        .filter(|r| r.kind == Kind::CertificateIssued)
        .collect();
    assert_eq!(on_record.len() as u64, COUNT);
    for (seq, serial) in issued {
        assert_eq!(raw(&*a, seq).body, serial.to_be_bytes());
    }
    let v = a.verify(&verifier).unwrap();
    assert_eq!(v.head.seq, COUNT + 1);
    assert_eq!(v.claims, COUNT);
    assert_eq!(v.counter_events, COUNT + 1);
}

pub(crate) fn refused_spend_writes_nothing<F: Fixture>() {
    let f = F::new();
    let s = f.open().unwrap();
    s.append(create(P, 3)).unwrap();
    s.append(issue(P, 1)).unwrap();
    let head = s.head().unwrap();
    let big = Append::record(Kind::CountReserved, b"r".to_vec())
        .with_record(Kind::CertificateIssued, b"c".to_vec())
        .with_counter(CounterOp::Spend {
            product: P.into(),
            n: 3,
        })
        .with_claim("serial", b"never".to_vec());
    let e = s.append(big.clone()).unwrap_err();
    assert!(
        matches!(&e, Error::Exhausted { product, remaining: 2, asked: 3 } if product == P),
        "{e:?}"
    );
    assert_eq!(e.to_string(), format!("product {P} has 2 left, 3 asked"));
    assert_eq!(s.head().unwrap(), head);
    assert_eq!(s.claimed("serial", b"never").unwrap(), None);
    assert_eq!(s.remaining(P).unwrap(), 2);

    // In one batch, the refused append is skipped and the others go through, gapless.
    let out = s.append_all(vec![issue(P, 2), big, issue(P, 3), issue(P, 4)]);
    assert_eq!(out[0].as_ref().unwrap()[0].seq, head.seq + 1);
    assert!(matches!(out[1], Err(Error::Exhausted { remaining: 1, .. })));
    assert_eq!(out[2].as_ref().unwrap()[0].seq, head.seq + 2);
    assert!(matches!(out[3], Err(Error::Exhausted { remaining: 0, .. })));
    assert_eq!(s.head().unwrap().seq, head.seq + 2);
    assert_eq!(s.issued(P).unwrap(), 3);
    s.verify(&verifier).unwrap();
}

pub(crate) fn duplicate_claim_refused_atomically<F: Fixture>() {
    let f = F::new();
    let s = f.open().unwrap();
    s.append(create(P, 10)).unwrap();
    let first = s
        .append(
            Append::record(Kind::PackageImported, b"p1".to_vec()).with_claim("package", b"pkg-1"),
        )
        .unwrap();
    let head = s.head().unwrap();
    let replay = Append::record(Kind::CertificateIssued, b"x".to_vec())
        .with_counter(CounterOp::Spend {
            product: P.into(),
            n: 1,
        })
        .with_claim("uid", b"uid-new")
        .with_claim("package", b"pkg-1");
    let e = s.append(replay).unwrap_err();
    match &e {
        Error::Duplicate {
            namespace,
            key,
            first_seq,
        } => {
            assert_eq!(namespace, "package");
            assert_eq!(key, b"pkg-1");
            assert_eq!(*first_seq, first[0].seq);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        e.to_string(),
        format!(
            "package 706b672d31 was already claimed by ledger record {}",
            first[0].seq
        )
    );
    // Nothing of the refused append: no record, no spend, no claim of the other key.
    assert_eq!(s.head().unwrap(), head);
    assert_eq!(s.remaining(P).unwrap(), 10);
    assert_eq!(s.claimed("uid", b"uid-new").unwrap(), None);
    assert_eq!(s.claimed("package", b"pkg-1").unwrap(), Some(first[0].seq));

    // Two appends of one batch claiming the same key: the second is refused, naming the first.
    let out = s.append_all(vec![issue(P, 7), issue(P, 7)]);
    let seq = out[0].as_ref().unwrap()[0].seq;
    assert!(matches!(&out[1], Err(Error::Duplicate { first_seq, .. }) if *first_seq == seq));
    // The same key in another namespace is another claim.
    s.append(
        Append::record(Kind::DeviceLocked, b"d".to_vec()).with_claim("uid", 7u64.to_be_bytes()),
    )
    .unwrap();
    assert_eq!(s.issued(P).unwrap(), 1);
    s.verify(&verifier).unwrap();
}

pub(crate) fn counter_operations_and_refusals<F: Fixture>() {
    let f = F::new();
    let s = f.open().unwrap();
    let q = "oem-1/product-2";
    assert!(matches!(s.remaining(P), Err(Error::UnknownProduct { .. })));
    assert_eq!(s.counter(P).unwrap(), None);
    let e = s
        .append(job(0).with_counter(CounterOp::TopUp {
            product: P.into(),
            n: 1,
        }))
        .unwrap_err();
    assert_eq!(e.to_string(), format!("product {P} does not exist"));
    s.append(create(P, 5)).unwrap();
    let e = s.append(create(P, 5)).unwrap_err();
    assert_eq!(e.to_string(), format!("product {P} already exists"));
    // Create and spend in one append; two products in one append.
    s.append(
        create(q, 2)
            .with_counter(CounterOp::Spend {
                product: q.into(),
                n: 2,
            })
            .with_counter(CounterOp::TopUp {
                product: P.into(),
                n: 5,
            }),
    )
    .unwrap();
    assert_eq!(s.remaining(q).unwrap(), 0);
    assert_eq!(s.remaining(P).unwrap(), 10);
    let e = s
        .append(job(1).with_counter(CounterOp::Credit {
            product: q.into(),
            n: 3,
        }))
        .unwrap_err();
    assert!(matches!(
        e,
        Error::OverCredit {
            issued: 2,
            asked: 3,
            ..
        }
    ));
    assert_eq!(
        e.to_string(),
        format!("product {q} has 2 issued, a credit of 3 is more")
    );
    s.append(
        Append::record(Kind::CreditBack, b"c".to_vec()).with_counter(CounterOp::Credit {
            product: q.into(),
            n: 1,
        }),
    )
    .unwrap();
    assert_eq!(s.issued(q).unwrap(), 1);
    assert_eq!(s.remaining(q).unwrap(), 1);
    let e = s
        .append(job(2).with_counter(CounterOp::TopUp {
            product: P.into(),
            n: trustfab_ledger::MAX_COUNT,
        }))
        .unwrap_err();
    assert!(matches!(e, Error::CountOverflow { .. }));
    assert_eq!(
        e.to_string(),
        format!("product {P} count would exceed 9223372036854775807")
    );
    let all = s.counters().unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].0, P);
    assert_eq!(all[0].1.total, 10);
    assert_eq!(all[1].0, q);
    assert_eq!(all[1].1.issued, 1);
    let v = s.verify(&verifier).unwrap();
    assert_eq!(v.counter_events, 5);
}

pub(crate) fn invalid_appends_refused<F: Fixture>() {
    let f = F::new();
    let s = f.open().unwrap();
    let e = s.append(Append::default()).unwrap_err();
    assert!(matches!(e, Error::Invalid(Invalid::NoRecords)));
    assert_eq!(e.to_string(), "invalid append: no records");
    let e = s
        .append(Append::record(
            Kind::JobCreated,
            vec![0; MAX_BODY_BYTES + 1],
        ))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid append: record body is 65537 bytes, the limit is 65536"
    );
    // The largest body is fine.
    s.append(Append::record(Kind::JobCreated, vec![0; MAX_BODY_BYTES]))
        .unwrap();
    let e = s
        .append(job(0).with_counter(CounterOp::Spend {
            product: P.into(),
            n: 0,
        }))
        .unwrap_err();
    assert!(matches!(e, Error::Invalid(Invalid::ZeroAmount)));
    // A checkpoint that does not cover the head is refused (checkpoints go through
    // `checkpoint`, which signs the current head).
    let e = s
        .append(Append::record(
            Kind::Checkpoint,
            b"not a checkpoint".to_vec(),
        ))
        .unwrap_err();
    assert!(matches!(e, Error::Invalid(Invalid::Checkpoint)));
    // An append that expects another head.
    let mut a = job(9);
    a.expect_head = Some(99);
    let e = s.append(a).unwrap_err();
    assert!(matches!(
        e,
        Error::HeadMoved {
            expected: 99,
            actual: 1
        }
    ));
    assert_eq!(e.to_string(), "ledger head is 1, the append expected 99");
    let mut a = job(9);
    a.expect_head = Some(1);
    s.append(a).unwrap();
    // A valid one in a batch with invalid ones: only it is written.
    let out = s.append_all(vec![Append::default(), job(1), Append::default()]);
    assert!(out[0].is_err() && out[1].is_ok() && out[2].is_err());
    assert_eq!(s.head().unwrap().seq, 3);
    s.verify(&verifier).unwrap();
}

pub(crate) fn checkpoints_signed_and_checked<F: Fixture>() {
    let (f, s) = filled::<F>(5);
    let cp = s.checkpoint(UnixTime(1_700_000_000), &signer).unwrap();
    assert_eq!(cp.seq, 6);
    assert_eq!(cp.kind, Kind::Checkpoint);
    let body = trustfab_ledger::Checkpoint::decode(&cp.body).unwrap();
    assert_eq!(body.head.seq, 5);
    assert_eq!(body.head.hash, cp.prev_hash);
    assert_eq!(body.time, UnixTime(1_700_000_000));
    s.append_all((6..9).map(job).collect());
    let cp2 = s.checkpoint(UnixTime(1_700_000_100), &signer).unwrap();
    assert_eq!(cp2.seq, 10);
    let v = s.verify(&verifier).unwrap();
    assert_eq!(v.checkpoints, 2);
    assert_eq!(v.last_checkpoint, Some(10));
    // Another key's verifier: the first checkpoint fails.
    let other = |m: &[u8], sig: &[u8]| support::sign_with(b"another key", m) == sig;
    let e = s.verify(&other).unwrap_err();
    assert_eq!(
        e.to_string(),
        "ledger record 6 is bad: checkpoint signature does not verify"
    );
    assert_eq!(tampered(Err(e)), (6, Problem::BadSignature));
    // A failing signer appends nothing.
    let failing = |_: &[u8]| -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
        Err("token removed".into())
    };
    let e = s.checkpoint(UnixTime(1), &failing).unwrap_err();
    assert!(matches!(e, Error::Signer(_)));
    assert_eq!(e.to_string(), "checkpoint signer failed");
    assert_eq!(s.head().unwrap().seq, 10);
    drop(f);
}

pub(crate) fn checkpoint_under_concurrent_appends<F: Fixture>() {
    let f = F::new();
    let s: Arc<dyn Store> = Arc::new(f.open().unwrap());
    let other: Arc<dyn Store> = Arc::new(f.open().unwrap());
    let writer = {
        let other = other.clone();
        thread::spawn(move || {
            for i in 0..200 {
                other.append(job(i)).unwrap();
            }
        })
    };
    let mut checkpoints = 0;
    for t in 0..10 {
        s.checkpoint(UnixTime(t), &signer).unwrap();
        checkpoints += 1;
    }
    writer.join().unwrap();
    let v = s.verify(&verifier).unwrap();
    assert_eq!(v.checkpoints, checkpoints);
    assert_eq!(v.head.seq, 200 + checkpoints);
}

pub(crate) fn verify_while_others_append<F: Fixture>() {
    let f = F::new();
    let s: Arc<dyn Store> = Arc::new(f.open().unwrap());
    s.append(create(P, 1_000_000)).unwrap();
    let writer = {
        let other: Arc<dyn Store> = Arc::new(f.open().unwrap());
        thread::spawn(move || {
            for serial in 0..300 {
                other.append(issue(P, serial)).unwrap();
            }
        })
    };
    let mut last = 0;
    while !writer.is_finished() {
        let v = s.verify(&verifier).unwrap();
        assert!(v.head.seq >= last);
        last = v.head.seq;
    }
    writer.join().unwrap();
    let v = s.verify(&verifier).unwrap();
    assert_eq!(v.head.seq, 301);
    assert_eq!(v.claims, 300);
}

pub(crate) fn property_5_removed_record_detected<F: Fixture>() {
    let (f, s) = filled::<F>(10);
    f.exec("DELETE FROM records WHERE seq = 5");
    let e = s.verify(&verifier).unwrap_err();
    assert_eq!(
        e.to_string(),
        "ledger record 5 is bad: missing (the next stored record is 6)"
    );
    assert_eq!(tampered(Err(e)), (5, Problem::Missing { next_found: 6 }));
    // Removing and renumbering the rest breaks the link instead.
    let (f, s) = filled::<F>(10);
    f.exec(
        "DELETE FROM records WHERE seq = 5;
         UPDATE records SET seq = seq - 1 WHERE seq > 5",
    );
    let e = s.verify(&verifier).unwrap_err();
    assert_eq!(
        e.to_string(),
        "ledger record 5 is bad: does not commit to the previous record (removed, inserted or reordered)"
    );
}

pub(crate) fn property_5_changed_record_detected<F: Fixture>() {
    let (f, s) = filled::<F>(10);
    let mut r = raw(&s, 7);
    r.body = b"job 700".to_vec();
    f.exec("DELETE FROM records WHERE seq = 7");
    f.insert_raw(&r);
    let e = s.verify(&verifier).unwrap_err();
    assert_eq!(
        e.to_string(),
        "ledger record 7 is bad: changed (hash does not match its contents)"
    );
    // A changed kind too.
    let (f, s) = filled::<F>(10);
    f.exec("UPDATE records SET kind = 10 WHERE seq = 3");
    assert_eq!(tampered(s.verify(&verifier)), (3, Problem::HashMismatch));
}

pub(crate) fn property_5_reordered_records_detected<F: Fixture>() {
    let (f, s) = filled::<F>(10);
    f.exec(
        "UPDATE records SET seq = 1000 WHERE seq = 4;
         UPDATE records SET seq = 4 WHERE seq = 5;
         UPDATE records SET seq = 5 WHERE seq = 1000",
    );
    assert_eq!(tampered(s.verify(&verifier)), (4, Problem::BrokenLink));
}

pub(crate) fn property_5_inserted_record_detected<F: Fixture>() {
    let (f, s) = filled::<F>(10);
    let r4 = raw(&s, 4);
    // Make room at 5, then insert a record correctly chained to 4: record 6 (the old 5) no
    // longer follows it.
    f.exec(
        "UPDATE records SET seq = seq + 1000 WHERE seq >= 5;
         UPDATE records SET seq = seq - 999 WHERE seq >= 1000",
    );
    let prev: [u8; 32] = r4.hash.clone().try_into().unwrap();
    let body = b"forged".to_vec();
    f.insert_raw(&RawRecord {
        seq: 5,
        kind: Kind::CertificateIssued.code(),
        hash: record_hash(&prev, 5, Kind::CertificateIssued.code(), &body, b"").to_vec(),
        body,
        effects: Vec::new(),
        prev_hash: r4.hash,
    });
    assert_eq!(tampered(s.verify(&verifier)), (6, Problem::BrokenLink));
}

pub(crate) fn property_5_rewritten_chain_caught_by_checkpoint<F: Fixture>() {
    let (f, s) = filled::<F>(5);
    s.checkpoint(UnixTime(100), &signer).unwrap();
    s.append_all((5..8).map(job).collect());
    // The attacker changes record 3 and recomputes every hash after it, including the
    // checkpoint's head field; only the signature cannot be redone.
    let mut rows: Vec<RawRecord> = s.read_raw(1, 100).unwrap();
    rows[2].body = b"job forged".to_vec();
    let mut prev: [u8; 32] = rows[1].hash.clone().try_into().unwrap();
    for r in rows.iter_mut().skip(2) {
        if r.kind == Kind::Checkpoint.code() {
            let mut cp = trustfab_ledger::Checkpoint::decode(&r.body).unwrap();
            cp.head.hash = prev;
            r.body = cp.encode().unwrap();
        }
        r.prev_hash = prev.to_vec();
        prev = record_hash(&prev, r.seq, r.kind, &r.body, &r.effects);
        r.hash = prev.to_vec();
    }
    f.exec("DELETE FROM records WHERE seq >= 3");
    for r in rows.iter().skip(2) {
        f.insert_raw(r);
    }
    assert_eq!(tampered(s.verify(&verifier)), (6, Problem::BadSignature));
}

pub(crate) fn unknown_kind_refused_on_read<F: Fixture>() {
    let (f, s) = filled::<F>(3);
    let head = s.head().unwrap();
    let body = b"from the future".to_vec();
    f.insert_raw(&RawRecord {
        seq: 4,
        kind: 999,
        hash: record_hash(&head.hash, 4, 999, &body, b"").to_vec(),
        body,
        effects: Vec::new(),
        prev_hash: head.hash.to_vec(),
    });
    let read: Vec<_> = s.records(1).collect();
    assert_eq!(read.len(), 4);
    let e = read[3].as_ref().unwrap_err();
    assert!(matches!(e, Error::UnknownKind { seq: 4, code: 999 }));
    assert_eq!(e.to_string(), "ledger record 4 has unknown kind 999");
    assert_eq!(
        tampered(s.verify(&verifier)),
        (4, Problem::UnknownKind { code: 999 })
    );
}

pub(crate) fn tampered_counters_detected<F: Fixture>() {
    // A changed balance.
    let f = F::new();
    let s = f.open().unwrap();
    s.append(create(P, 5)).unwrap();
    s.append(issue(P, 1)).unwrap();
    f.exec("UPDATE counter_events SET total = total + 100");
    assert_eq!(s.remaining(P).unwrap(), 104);
    let (seq, problem) = tampered(s.verify(&verifier));
    assert_eq!(seq, 1);
    assert!(matches!(
        problem,
        Problem::CounterInconsistent { event: 1, .. }
    ));

    // A forged top-up that is consistent with the stored events, but not with the chain.
    let f = F::new();
    let s = f.open().unwrap();
    s.append(create(P, 5)).unwrap();
    s.append(issue(P, 1)).unwrap();
    f.exec(&format!(
        "INSERT INTO counter_events (product, event, seq, op, amount, total, issued)
         VALUES ('{P}', 3, 2, 2, 100, 105, 1)"
    ));
    assert_eq!(s.remaining(P).unwrap(), 104);
    let e = s.verify(&verifier).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "ledger record 2 is bad: stored state differs from the chain: counter of product {P}"
        )
    );
    assert!(matches!(
        e,
        Error::Tampered {
            seq: 2,
            problem: Problem::StateMismatch { .. }
        }
    ));
    // And the forged count cannot be spent unnoticed: verify names the same record.
    drop(s);
}

pub(crate) fn deleted_claim_detected<F: Fixture>() {
    let f = F::new();
    let s = f.open().unwrap();
    s.append(Append::record(Kind::PackageImported, b"p".to_vec()).with_claim("package", b"pkg"))
        .unwrap();
    s.append(job(1)).unwrap();
    // Deleting the claim would let the package be imported again.
    f.exec("DELETE FROM claims");
    let (seq, problem) = tampered(s.verify(&verifier));
    assert_eq!(seq, 2);
    assert!(matches!(problem, Problem::StateMismatch { .. }));
}

pub(crate) fn schema_versioned_and_newer_refused<F: Fixture>() {
    let f = F::new();
    drop(f.open().unwrap());
    // Opening again applies nothing twice.
    let s = f.open().unwrap();
    s.append(job(0)).unwrap();
    drop(s);
    f.exec("INSERT INTO schema_version (version, applied_at) VALUES (99, 0)");
    let e = f.open().unwrap_err();
    assert!(matches!(
        e,
        Error::SchemaTooNew {
            found: 99,
            supported: 1
        }
    ));
    assert_eq!(
        e.to_string(),
        "ledger schema version 99 is newer than this build supports (1)"
    );
}
