// The rollback anchor; included once per backend by tests.rs. Each test changes the ledger
// behind the HSM's back, as the factory that administers the database can, and expects the HSM
// to refuse rather than run on it.

mod anchor {
    use super::*;
    use trustfab_hsm::{AnchorError, InitError};

    /// The files of the site's SQLite ledger: the database and its WAL companions.
    fn ledger_files(dir: &Path) -> Vec<std::path::PathBuf> {
        ["ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm"]
            .iter()
            .map(|f| dir.join(f))
            .collect()
    }

    fn remove_ledger(dir: &Path) {
        for f in ledger_files(dir) {
            if f.exists() {
                std::fs::remove_file(f).unwrap();
            }
        }
    }

    /// Opens the site again, returning why the HSM refused.
    fn reopen_err(dir: &Path, certs: &HsmCertificates) -> AnchorError {
        let (token, guard) = open_token_parts(dir, BACKEND, false);
        let ledger = open_ledger(dir);
        let clock = Arc::new(FixedClock::new(NOW));
        let id = HsmId::new("hsm-1").unwrap();
        let res = Hsm::open(token, ledger, clock, &id, Some(certs));
        let err = match res {
            Ok(_) => panic!("the HSM opened on a ledger that does not reach its anchor"),
            Err(InitError::Anchor(e)) => e,
            Err(e) => panic!("{e:?}"),
        };
        drop(guard);
        err
    }

    fn head(s: &Site) -> u64 {
        s.ledger.head().unwrap().seq
    }

    /// Cuts every record after `seq` from a PostgreSQL ledger, with its counter events and claims.
    fn cut_postgres(url: &str, seq: u64) {
        let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
        let seq = i64::try_from(seq).unwrap();
        for table in ["records", "counter_events", "claims"] {
            c.execute(&format!("DELETE FROM {table} WHERE seq > $1"), &[&seq])
                .unwrap();
        }
    }

    /// Cuts every record after `seq` from the SQLite ledger, with its counter events and claims.
    fn cut_sqlite(dir: &Path, seq: u64) {
        let c = rusqlite::Connection::open(dir.join("ledger.sqlite")).unwrap();
        let seq = i64::try_from(seq).unwrap();
        for table in ["records", "counter_events", "claims"] {
            c.execute(&format!("DELETE FROM {table} WHERE seq > ?1"), [seq])
                .unwrap();
        }
    }

    /// The factory's database staff change a product's stored template in place (its subject
    /// becomes a TLS server name): the HSM refuses to issue for the product, naming the record,
    /// instead of signing from it, and its earlier certificate is not re-signed either.
    #[test]
    fn a_product_definition_changed_in_the_store_is_refused() {
        for pg in [false, true] {
            product_definition_changed(pg);
        }
    }

    fn product_definition_changed(pg: bool) {
        use trustfab_formats::records::ProductDef;
        let t = tempfile::tempdir().unwrap();
        let fresh = pg.then(FreshDatabase::new);
        if let Some(db) = &fresh {
            std::fs::write(t.path().join("ledger-url"), db.url()).unwrap();
        }
        let (_, s, _) = thermo_site(t.path(), 10);
        let product = pk("acme/thermo");
        let d = device(1);
        s.hsm
            .issue_direct(&product, std::slice::from_ref(&d))
            .unwrap();
        let certs = s.certs.clone();
        drop(s);

        let code = i64::from(trustfab_ledger::Kind::ProductCreated.code());
        let change = |body: &[u8]| {
            let mut def = ProductDef::decode(body).unwrap();
            assert!(def.template.contains("common_name = "), "{}", def.template);
            def.template = def
                .template
                .replacen("common_name = ", "common_name = \"update.acme.example\" # ", 1);
            def.encode()
        };
        let seq: i64 = match &fresh {
            Some(db) => {
                let mut c = postgres::Client::connect(db.url(), postgres::NoTls).unwrap();
                let code = i32::try_from(code).unwrap();
                let row = c
                    .query_one("SELECT seq, body FROM records WHERE kind = $1", &[&code])
                    .unwrap();
                let (seq, body): (i64, Vec<u8>) = (row.get(0), row.get(1));
                c.execute(
                    "UPDATE records SET body = $1 WHERE seq = $2",
                    &[&change(&body), &seq],
                )
                .unwrap();
                seq
            }
            None => {
                let c = rusqlite::Connection::open(t.path().join("ledger.sqlite")).unwrap();
                let (seq, body): (i64, Vec<u8>) = c
                    .query_row(
                        "SELECT seq, body FROM records WHERE kind = ?1",
                        [code],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .unwrap();
                c.execute(
                    "UPDATE records SET body = ?1 WHERE seq = ?2",
                    rusqlite::params![change(&body), seq],
                )
                .unwrap();
                seq
            }
        };

        let s = reopen(t.path(), "hsm-1", &certs, BACKEND);
        let want = u64::try_from(seq).unwrap();
        for r in [
            s.hsm
                .issue_direct(&product, &[device(2)])
                .map(drop),
            s.hsm
                .certificate_for(&product, &d.uid)
                .map(drop),
        ] {
            match r {
                Err(IssueError::Anchor(AnchorError::ProductTampered { product: p, seq }))
                    if p == product && seq == want => {}
                other => panic!("{other:?}"),
            }
        }
        // Nothing spent (the stored row; the HSM itself counts only from a chain that checks
        // out, and this one does not).
        assert_eq!(s.ledger.counter("acme/thermo").unwrap().unwrap().issued, 1);
    }

    #[test]
    fn a_deleted_ledger_is_refused_and_the_package_does_not_import_again() {
        let t = tempfile::tempdir().unwrap();
        let (vendor, s, oem) = acme_site(t.path());
        let p = oem.package(&s.certs, &vendor.root, &spec("thermo", 10, 1));
        s.hsm.import(&p).unwrap();
        let anchored = head(&s);
        let certs = s.certs.clone();
        drop(s);
        remove_ledger(t.path());
        match reopen_err(t.path(), &certs) {
            AnchorError::Behind { expected, head } => {
                assert_eq!((expected, head), (anchored, 0));
            }
            e => panic!("{e:?}"),
        }
        // Nothing opens, so the package cannot import a second time; the refusal says why.
        let msg = reopen_err(t.path(), &certs).to_string();
        assert_eq!(
            msg,
            format!("ledger is behind the HSM: record {anchored} expected, the store's head is 0")
        );
    }

    #[test]
    fn a_postgres_ledger_dropped_and_made_again_empty_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let db = FreshDatabase::new();
        std::fs::write(t.path().join("ledger-url"), db.url()).unwrap();
        let (_, s, _) = thermo_site(t.path(), 10);
        let anchored = head(&s);
        let certs = s.certs.clone();
        drop(s);
        drop(db);
        let empty = FreshDatabase::new();
        std::fs::write(t.path().join("ledger-url"), empty.url()).unwrap();
        match reopen_err(t.path(), &certs) {
            AnchorError::Behind { expected, head } => {
                assert_eq!((expected, head), (anchored, 0));
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn the_newest_records_cut_off_are_refused_with_the_record_expected() {
        let t = tempfile::tempdir().unwrap();
        let (_, s, _) = thermo_site(t.path(), 10);
        let kept = head(&s);
        s.hsm
            .issue_direct(&pk("acme/thermo"), &[device(1), device(2)])
            .unwrap();
        let anchored = head(&s);
        assert!(anchored > kept);
        let certs = s.certs.clone();
        drop(s);
        cut_sqlite(t.path(), kept);
        match reopen_err(t.path(), &certs) {
            AnchorError::Behind { expected, head } => {
                assert_eq!((expected, head), (anchored, kept));
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn the_newest_records_cut_off_a_postgres_ledger_are_refused_at_open() {
        let t = tempfile::tempdir().unwrap();
        let db = FreshDatabase::new();
        std::fs::write(t.path().join("ledger-url"), db.url()).unwrap();
        let (_, s, _) = thermo_site(t.path(), 10);
        let kept = head(&s);
        s.hsm
            .issue_direct(&pk("acme/thermo"), &[device(1), device(2)])
            .unwrap();
        let anchored = head(&s);
        let certs = s.certs.clone();
        drop(s);
        cut_postgres(db.url(), kept);
        match reopen_err(t.path(), &certs) {
            AnchorError::Behind { expected, head } => {
                assert_eq!((expected, head), (anchored, kept));
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn the_file_rolled_back_to_an_older_copy_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let (vendor, s, oem) = acme_site(t.path());
        let p = oem.package(&s.certs, &vendor.root, &spec("thermo", 10, 1));
        s.hsm.import(&p).unwrap();
        let old = head(&s);
        let certs = s.certs.clone();
        drop(s);
        let copy = t.path().join("copy");
        std::fs::create_dir(&copy).unwrap();
        for f in ledger_files(t.path()) {
            if f.exists() {
                std::fs::copy(&f, copy.join(f.file_name().unwrap())).unwrap();
            }
        }
        let s = reopen(t.path(), "hsm-1", &certs, BACKEND);
        s.hsm
            .issue_direct(&pk("acme/thermo"), &[device(1)])
            .unwrap();
        let anchored = head(&s);
        drop(s);
        remove_ledger(t.path());
        for f in ledger_files(&copy) {
            if f.exists() {
                std::fs::copy(&f, t.path().join(f.file_name().unwrap())).unwrap();
            }
        }
        match reopen_err(t.path(), &certs) {
            AnchorError::Behind { expected, head } => {
                assert_eq!((expected, head), (anchored, old));
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn another_ledger_of_the_same_length_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let (vendor, s, oem) = thermo_site(t.path(), 10);
        let anchored = head(&s);
        let certs = s.certs.clone();
        // The same steps with another count make another chain of the same length.
        let other = t.path().join("other");
        std::fs::create_dir(&other).unwrap();
        let o = site(&other, "hsm-1", &vendor, Backend::Soft);
        o.hsm
            .import(&oem.package(&o.certs, &vendor.root, &spec("thermo", 11, 1)))
            .unwrap();
        assert_eq!(head(&o), anchored);
        drop(o);
        drop(s);
        remove_ledger(t.path());
        for f in ledger_files(&other) {
            if f.exists() {
                std::fs::copy(&f, t.path().join(f.file_name().unwrap())).unwrap();
            }
        }
        match reopen_err(t.path(), &certs) {
            AnchorError::Forked { seq } => assert_eq!(seq, anchored),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn a_ledger_rolled_back_under_a_running_hsm_issues_nothing_more() {
        let t = tempfile::tempdir().unwrap();
        let db = FreshDatabase::new();
        std::fs::write(t.path().join("ledger-url"), db.url()).unwrap();
        let (_, s, _) = thermo_site(t.path(), 10);
        s.hsm
            .issue_direct(&pk("acme/thermo"), &[device(1)])
            .unwrap();
        let kept = head(&s);
        s.hsm
            .issue_direct(&pk("acme/thermo"), &[device(2)])
            .unwrap();
        let anchored = head(&s);
        cut_postgres(db.url(), kept);
        // The store follows the chain it has seen: records it read are gone.
        let rolled_back = |r: Result<Vec<_>, IssueError>| match r {
            Err(IssueError::Ledger(trustfab_ledger::Error::Tampered {
                seq,
                problem: trustfab_ledger::Problem::RolledBack { head },
            })) => assert_eq!((seq, head), (anchored, kept)),
            other => panic!("{other:?}"),
        };
        rolled_back(s.hsm.issue_direct(&pk("acme/thermo"), &[device(3)]));
        // Nothing more: not another device, not the one whose record was cut.
        for d in [device(4), device(2)] {
            rolled_back(s.hsm.issue_direct(&pk("acme/thermo"), &[d]));
        }
    }

    #[test]
    fn the_anchor_is_the_ledger_head_in_its_versioned_encoding() {
        let t = tempfile::tempdir().unwrap();
        let (_, s, _) = thermo_site(t.path(), 10);
        let anchored = head(&s);
        let certs = s.certs.clone();
        let hash = s.ledger.head().unwrap().hash;
        drop(s);
        // version 1 | seq (big-endian) | hash
        let token = open_token(t.path(), BACKEND, false);
        let label = trustfab_token::KeyLabel::new(trustfab_hsm::ANCHOR_LABEL).unwrap();
        let v = token.read_anchor(&label).unwrap().unwrap();
        assert_eq!(v.len(), 41);
        assert_eq!(v[0], 1);
        assert_eq!(u64::from_be_bytes(v[1..9].try_into().unwrap()), anchored);
        assert_eq!(&v[9..], hash.as_slice());
        drop(token);
        let s = reopen(t.path(), "hsm-1", &certs, BACKEND);
        assert_eq!(head(&s), anchored);
    }
}
