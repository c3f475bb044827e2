// The store written to behind the HSM's back, as whoever administers the database can; included
// once per token backend by tests.rs, and each test runs on SQLite and on PostgreSQL. The HSM
// must believe nothing of it that its own seal and anchor do not vouch for.

mod tamper {
    use super::*;
    use trustfab_hsm::IssuanceRecord;
    use trustfab_ledger::{Error as LedgerError, Kind, Problem};

    /// The database under a site, reached with its own driver as an attacker would.
    enum Db {
        Sqlite(rusqlite::Connection),
        Pg(postgres::Client),
    }

    /// One stored record row.
    type Row = (i64, i64, Vec<u8>, Vec<u8>);

    impl Db {
        fn exec(&mut self, sql: &str) -> u64 {
            match self {
                Self::Sqlite(c) => u64::try_from(c.execute(sql, []).unwrap()).unwrap(),
                Self::Pg(c) => c.execute(sql, &[]).unwrap(),
            }
        }

        /// Every record, in seq order: seq, kind, body, effects.
        fn records(&mut self) -> Vec<Row> {
            let sql = "SELECT seq, CAST(kind AS BIGINT), body, effects FROM records ORDER BY seq";
            match self {
                Self::Sqlite(c) => c
                    .prepare(sql)
                    .unwrap()
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap(),
                Self::Pg(c) => c
                    .query(sql, &[])
                    .unwrap()
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                    .collect(),
            }
        }

        /// Replaces the whole chain with `rows`, numbered from 1 and hashed again: a chain
        /// that checks out on its own, as a careful attacker leaves it.
        fn rewrite_chain(&mut self, rows: Vec<(i64, Vec<u8>, Vec<u8>)>) {
            self.exec("DELETE FROM records");
            let mut prev = trustfab_ledger::GENESIS_HASH;
            for (i, (kind, body, effects)) in rows.into_iter().enumerate() {
                let seq = i64::try_from(i + 1).unwrap();
                let code = u16::try_from(kind).unwrap();
                let hash = trustfab_ledger::record_hash(
                    &prev,
                    u64::try_from(seq).unwrap(),
                    code,
                    &body,
                    &effects,
                );
                self.insert(seq, kind, &body, &effects, &prev, &hash);
                prev = hash;
            }
        }

        fn insert(
            &mut self,
            seq: i64,
            kind: i64,
            body: &[u8],
            effects: &[u8],
            prev: &[u8],
            hash: &[u8],
        ) {
            match self {
                Self::Sqlite(c) => {
                    c.execute(
                        "INSERT INTO records (seq, kind, body, effects, prev_hash, hash)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        rusqlite::params![seq, kind, body, effects, prev, hash],
                    )
                    .unwrap();
                }
                Self::Pg(c) => {
                    let kind = i32::try_from(kind).unwrap();
                    c.execute(
                        "INSERT INTO records (seq, kind, body, effects, prev_hash, hash)
                         VALUES ($1, $2, $3, $4, $5, $6)",
                        &[&seq, &kind, &body, &effects, &prev, &hash],
                    )
                    .unwrap();
                }
            }
        }

        fn insert_claim(&mut self, namespace: &str, key: &[u8], seq: i64) {
            match self {
                Self::Sqlite(c) => {
                    c.execute(
                        "INSERT INTO claims (namespace, key, seq) VALUES (?1, ?2, ?3)",
                        rusqlite::params![namespace, key, seq],
                    )
                    .unwrap();
                }
                Self::Pg(c) => {
                    c.execute(
                        "INSERT INTO claims (namespace, key, seq) VALUES ($1, $2, $3)",
                        &[&namespace, &key, &seq],
                    )
                    .unwrap();
                }
            }
        }
    }

    /// A site with `count` of acme/thermo, on SQLite and then on PostgreSQL, and its database.
    fn on_both(count: u64, f: impl Fn(&Path, Site, &mut Db)) {
        for pg in [false, true] {
            let t = tempfile::tempdir().unwrap();
            let fresh = pg.then(FreshDatabase::new);
            if let Some(db) = &fresh {
                std::fs::write(t.path().join("ledger-url"), db.url()).unwrap();
            }
            let (_, s, _) = thermo_site(t.path(), count);
            let mut db = match &fresh {
                Some(d) => Db::Pg(postgres::Client::connect(d.url(), postgres::NoTls).unwrap()),
                None => Db::Sqlite(rusqlite::Connection::open(t.path().join("ledger.sqlite")).unwrap()),
            };
            f(t.path(), s, &mut db);
        }
    }

    fn product() -> ProductKey {
        pk("acme/thermo")
    }

    fn stored_issued(s: &Site) -> u64 {
        s.ledger.counter("acme/thermo").unwrap().unwrap().issued
    }

    /// The SPKI a certificate certifies.
    fn spki_of(cert: &[u8]) -> Vec<u8> {
        let (_, x) = x509_parser::parse_x509_certificate(cert).unwrap();
        x.public_key().raw.to_vec()
    }

    /// The first record of `kind` whose body decodes as an issuance record of `uid`.
    fn issuance_row(db: &mut Db, uid: &DeviceUid) -> Row {
        let code = i64::from(Kind::CertificateIssued.code());
        db.records()
            .into_iter()
            .find(|r| {
                r.1 == code && IssuanceRecord::decode(&r.2).is_ok_and(|rec| rec.uid == *uid)
            })
            .unwrap()
    }

    #[test]
    fn an_issuance_records_key_changed_in_place_gets_no_certificate_for_it() {
        for rehash in [false, true] {
            on_both(10, |_, s, db| {
                let d = device(1);
                let first = s
                    .hsm
                    .issue_direct(&product(), std::slice::from_ref(&d))
                    .unwrap();
                let claim_seq = s.ledger.head().unwrap().seq - 1;
                let attacker = device(99).public_key;
                let (seq, _, body, _) = issuance_row(db, &d.uid);
                let mut rec = IssuanceRecord::decode(&body).unwrap();
                rec.spki = attacker.to_spki_der();
                if rehash {
                    let rows = db
                        .records()
                        .into_iter()
                        .map(|(q, k, b, e)| (k, if q == seq { rec.encode() } else { b }, e))
                        .collect();
                    db.rewrite_chain(rows);
                } else {
                    let sql = format!(
                        "UPDATE records SET body = {} WHERE seq = {seq}",
                        match db {
                            Db::Sqlite(_) => format!("X'{}'", hex(&rec.encode())),
                            Db::Pg(_) => format!("'\\x{}'::bytea", hex(&rec.encode())),
                        }
                    );
                    assert_eq!(db.exec(&sql), 1);
                }
                // Asked for its certificate again: nothing is rebuilt from the changed record.
                match s.hsm.certificate_for(&product(), &d.uid) {
                    Err(IssueError::UnsealedRecord { uid, seq }) => {
                        assert_eq!((uid, seq), (d.uid.to_hex(), claim_seq));
                    }
                    other => panic!("{other:?}"),
                }
                // Asked for it with the attacker's key: refused, nothing spent.
                let again = DeviceKey {
                    uid: d.uid.clone(),
                    public_key: attacker.clone(),
                };
                match s.hsm.issue_direct(&product(), &[again]) {
                    Ok(certs) => panic!("issued again: {certs:?}"),
                    Err(e) => assert!(!e.to_string().is_empty()),
                }
                assert_eq!(stored_issued(&s), 1);
                assert_ne!(spki_of(&first[0].cert), attacker.to_spki_der());
            });
        }
    }

    #[test]
    fn an_issuance_forged_at_the_tail_gets_no_certificate() {
        on_both(10, |_, s, db| {
            s.hsm.issue_direct(&product(), &[device(1)]).unwrap();
            let head = s.ledger.head().unwrap();
            let forged = device(7);
            let rec = IssuanceRecord {
                product: product(),
                uid: forged.uid.clone(),
                serial: trustfab_types::Serial::from_be_bytes(&[0x11; 9]).unwrap(),
                spki: forged.public_key.to_spki_der(),
                not_before: NOW,
                job: None,
                station: None,
            };
            let mut claim = b"acme/thermo".to_vec();
            claim.push(0);
            claim.extend_from_slice(forged.uid.as_bytes());
            let effects =
                trustfab_ledger::encode_effects(&[], &[trustfab_ledger::Claim::new("uid", claim.clone())]);
            // The forged append, chained right and ending in a seal the attacker made up.
            let seal = trustfab_ledger::Seal {
                positional: false,
                covered: 1,
                tag: [0x5a; 32],
            }
            .encode();
            let seq = i64::try_from(head.seq + 1).unwrap();
            let kind = i64::from(Kind::CertificateIssued.code());
            let h1 = trustfab_ledger::record_hash(&head.hash, head.seq + 1, 5, &rec.encode(), &effects);
            db.insert(seq, kind, &rec.encode(), &effects, &head.hash, &h1);
            let code = Kind::Seal.code();
            let h2 = trustfab_ledger::record_hash(&h1, head.seq + 2, code, &seal, &[]);
            db.insert(seq + 1, i64::from(code), &seal, &[], &h1, &h2);
            db.insert_claim("uid", &claim, seq);
            match s.hsm.certificate_for(&product(), &forged.uid) {
                Err(IssueError::UnsealedRecord { uid, seq: at }) => {
                    assert_eq!((uid, at), (forged.uid.to_hex(), head.seq + 1));
                }
                other => panic!("{other:?}"),
            }
            // The forged seal is refused where the store follows the chain, too.
            match s.hsm.issue_direct(&product(), &[device(2)]) {
                Err(IssueError::Ledger(LedgerError::Tampered { seq, problem })) => {
                    assert_eq!((seq, problem), (head.seq + 2, Problem::BadSeal));
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(stored_issued(&s), 1);
        });
    }

    fn refused_as_rewritten(r: Result<Vec<trustfab_hsm::Issued>, IssueError>) {
        match r {
            Err(IssueError::Ledger(LedgerError::Tampered {
                problem: Problem::StateMismatch { what },
                ..
            })) => assert!(
                what.starts_with("counter of product acme/thermo: the stored rows say"),
                "{what}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn count_rows_rewritten_issue_nothing_past_the_count() {
        on_both(3, |dir, s, db| {
            s.hsm
                .issue_direct(&product(), &[device(1), device(2), device(3)])
                .unwrap();
            // The count raised, then the spent units forgotten.
            for sql in [
                "UPDATE counter_events SET total = 1000 WHERE product = 'acme/thermo'",
                "UPDATE counter_events SET issued = 0 WHERE product = 'acme/thermo'",
            ] {
                assert!(db.exec(sql) > 0);
                refused_as_rewritten(s.hsm.issue_direct(&product(), &[device(4)]));
            }
            // A new process walks the chain, not the rows: the same refusal.
            let certs = s.certs.clone();
            drop(s);
            let s = reopen(dir, "hsm-1", &certs, BACKEND);
            refused_as_rewritten(s.hsm.issue_direct(&product(), &[device(4)]));
            // Put back, the count is exhausted, as it was.
            db.exec(
                "UPDATE counter_events SET total = 3,
                 issued = CASE WHEN event = 1 THEN 0 ELSE 3 END WHERE product = 'acme/thermo'",
            );
            match s.hsm.issue_direct(&product(), &[device(4)]) {
                Err(IssueError::CountExhausted { remaining: 0, .. }) => {}
                other => panic!("{other:?}"),
            }
        });
    }

    #[test]
    fn a_counter_row_forged_past_the_head_adds_nothing() {
        on_both(3, |_, s, db| {
            s.hsm
                .issue_direct(&product(), &[device(1), device(2), device(3)])
                .unwrap();
            let head = s.ledger.head().unwrap().seq;
            // A top-up of 1000 that no record made.
            let n = db.exec(&format!(
                "INSERT INTO counter_events (product, event, seq, op, amount, total, issued)
                 VALUES ('acme/thermo', 3, {}, 2, 1000, 1003, 3)",
                head + 1
            ));
            assert_eq!(n, 1);
            assert_eq!(s.ledger.remaining("acme/thermo").unwrap(), 1000, "the rows say so");
            refused_as_rewritten(s.hsm.issue_direct(&product(), &[device(4)]));
            let p = s.hsm.products().unwrap();
            assert_eq!((p[0].ordered, p[0].remaining), (3, 0), "the HSM's own account");
        });
    }

    #[test]
    fn checkpoints_stripped_and_the_chain_rebuilt_are_refused() {
        on_both(10, |dir, s, db| {
            s.hsm.issue_direct(&product(), &[device(1)]).unwrap();
            s.hsm.checkpoint().unwrap();
            s.hsm.issue_direct(&product(), &[device(2)]).unwrap();
            let anchored = s.ledger.head().unwrap().seq;
            let cp = i64::from(Kind::Checkpoint.code());
            let rows: Vec<_> = db
                .records()
                .into_iter()
                .filter(|r| r.1 != cp)
                .map(|(_, k, b, e)| (k, b, e))
                .collect();
            db.rewrite_chain(rows);
            match s.hsm.issue_direct(&product(), &[device(3)]) {
                Err(IssueError::Ledger(LedgerError::Tampered {
                    problem: Problem::RolledBack { head },
                    ..
                })) => assert_eq!(head, anchored - 1),
                other => panic!("{other:?}"),
            }
            let certs = s.certs.clone();
            drop(s);
            let (token, guard) = open_token_parts(dir, BACKEND, false);
            let clock = Arc::new(FixedClock::new(NOW));
            let id = HsmId::new("hsm-1").unwrap();
            match Hsm::open(token, open_ledger(dir), clock, &id, Some(&certs)) {
                Err(trustfab_hsm::InitError::Anchor(trustfab_hsm::AnchorError::Behind {
                    expected,
                    head,
                })) => assert_eq!((expected, head), (anchored, anchored - 1)),
                other => panic!("{:?}", other.map(drop)),
            }
            drop(guard);
        });
    }

    /// What the station asks, or what the database's administrator does, between two calls.
    #[derive(Clone, Debug)]
    enum Step {
        /// The station issues these devices (their own keys).
        Issue(Vec<usize>),
        /// A device's issuance record gets the attacker's key, for one call.
        SwapKey(usize),
        /// The product's count rows raised by this much, for one call.
        RaiseCount(u64),
        /// A top-up event no record made, for one call.
        ForgeRow,
        /// A device's UID claim deleted, for one call.
        DropClaim(usize),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            3 => proptest::collection::vec(0..6usize, 1..4).prop_map(Step::Issue),
            1 => (0..6usize).prop_map(Step::SwapKey),
            1 => (1..50u64).prop_map(Step::RaiseCount),
            1 => Just(Step::ForgeRow),
            1 => (0..6usize).prop_map(Step::DropClaim),
        ]
    }

    fn uid_claim(d: &DeviceKey) -> Vec<u8> {
        let mut k = b"acme/thermo".to_vec();
        k.push(0);
        k.extend_from_slice(d.uid.as_bytes());
        k
    }

    /// One run: every certificate the HSM returns, tampered with or not, is one the untampered
    /// history gives: for a device's own key, the same one each time, and no more devices
    /// than the count.
    fn run(steps: &[Step]) {
        const COUNT: u64 = 4;
        let t = tempfile::tempdir().unwrap();
        let (_, s, _) = thermo_site(t.path(), COUNT);
        let mut db = Db::Sqlite(rusqlite::Connection::open(t.path().join("ledger.sqlite")).unwrap());
        let devs: Vec<DeviceKey> = (0..6).map(device).collect();
        let attackers: Vec<DeviceKey> = (0..6)
            .map(|i| DeviceKey {
                uid: devs[i].uid.clone(),
                public_key: device(100).public_key,
            })
            .collect();
        type Certified = std::collections::HashMap<DeviceUid, Vec<u8>>;
        let mut certified: Certified = Default::default();
        // A certificate returned for `asked` (the keys of the call, `None` for a look-up) must
        // be for the key asked, and for the key the UID was first certified for, if it was.
        let check = |certs: &[trustfab_hsm::Issued], asked: Option<&[DeviceKey]>, certified: &mut Certified| {
            for c in certs {
                let spki = spki_of(&c.cert);
                if let Some(asked) = asked {
                    let want = asked.iter().find(|d| d.uid == c.uid).unwrap();
                    assert_eq!(spki, want.public_key.to_spki_der(), "a certificate for a key not asked");
                }
                match certified.get(&c.uid) {
                    Some(first) => assert_eq!(&spki, first, "a second key certified for one UID"),
                    None => {
                        assert!(asked.is_some(), "a look-up found a UID never certified");
                        certified.insert(c.uid.clone(), spki);
                    }
                }
            }
            assert!(certified.len() as u64 <= COUNT, "more devices than the count");
        };
        for st in steps {
            // The calls an attacker would make while the store is tampered with.
            let probe = |certified: &mut Certified| {
                for (d, a) in devs.iter().zip(&attackers) {
                    if let Ok(Some(c)) = s.hsm.certificate_for(&product(), &d.uid) {
                        check(std::slice::from_ref(&c), None, certified);
                    }
                    let ask = std::slice::from_ref(a);
                    if let Ok(certs) = s.hsm.issue_direct(&product(), ask) {
                        check(&certs, Some(ask), certified);
                    }
                }
            };
            match st {
                Step::Issue(ix) => {
                    let mut batch: Vec<DeviceKey> = Vec::new();
                    for &i in ix {
                        if !batch.iter().any(|d| d.uid == devs[i].uid) {
                            batch.push(devs[i].clone());
                        }
                    }
                    if let Ok(certs) = s.hsm.issue_direct(&product(), &batch) {
                        check(&certs, Some(&batch), &mut certified);
                    }
                }
                Step::SwapKey(i) => {
                    let code = i64::from(Kind::CertificateIssued.code());
                    let row = db.records().into_iter().find(|r| {
                        r.1 == code
                            && IssuanceRecord::decode(&r.2).is_ok_and(|rec| rec.uid == devs[*i].uid)
                    });
                    let Some((seq, _, body, _)) = row else { continue };
                    let mut rec = IssuanceRecord::decode(&body).unwrap();
                    rec.spki = attackers[*i].public_key.to_spki_der();
                    let Db::Sqlite(c) = &db else { unreachable!() };
                    c.execute("UPDATE records SET body = ?1 WHERE seq = ?2", rusqlite::params![rec.encode(), seq]).unwrap();
                    probe(&mut certified);
                    c.execute("UPDATE records SET body = ?1 WHERE seq = ?2", rusqlite::params![body, seq]).unwrap();
                }
                Step::RaiseCount(k) => {
                    db.exec(&format!("UPDATE counter_events SET total = total + {k} WHERE product = 'acme/thermo'"));
                    probe(&mut certified);
                    db.exec(&format!("UPDATE counter_events SET total = total - {k} WHERE product = 'acme/thermo'"));
                }
                Step::ForgeRow => {
                    db.exec(
                        "INSERT INTO counter_events (product, event, seq, op, amount, total, issued)
                         SELECT product, event + 1, seq + 1000, 2, 1000, total + 1000, issued
                         FROM counter_events WHERE product = 'acme/thermo'
                         ORDER BY event DESC LIMIT 1",
                    );
                    probe(&mut certified);
                    db.exec("DELETE FROM counter_events WHERE product = 'acme/thermo' AND amount = 1000 AND op = 2");
                }
                Step::DropClaim(i) => {
                    let key = uid_claim(&devs[*i]);
                    let Db::Sqlite(c) = &db else { unreachable!() };
                    let seq: Option<i64> = c
                        .query_row("SELECT seq FROM claims WHERE namespace = 'uid' AND key = ?1", [&key], |r| r.get(0))
                        .ok();
                    let Some(seq) = seq else { continue };
                    c.execute("DELETE FROM claims WHERE namespace = 'uid' AND key = ?1", [&key]).unwrap();
                    probe(&mut certified);
                    db.insert_claim("uid", &key, seq);
                }
            }
        }
        // Untampered again, the store still verifies and the HSM's count is the certificates.
        s.hsm.verify_ledger().unwrap();
        assert_eq!(stored_issued(&s), certified.len() as u64);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 12, ..Default::default() })]
        #[test]
        fn random_tampering_between_issuances_never_yields_a_certificate_the_untampered_history_would_not(
            steps in proptest::collection::vec(step(), 1..10)
        ) {
            run(&steps);
        }
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
