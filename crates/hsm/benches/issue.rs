//! Issuance per second through the HSM, with durable ledger records (SQLite, full sync, one
//! transaction per batch), beside the raw P-256 sign rate of the same token backend in the same
//! run: the soft token, and SoftHSM2 through PKCS#11 with 1 and 2 sessions.
//!
//! `cargo bench -p trustfab-hsm --bench issue`

// Benchmark set-up unwraps: a failure there is a broken benchmark.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use trustfab_hsm::{DeviceKey, Hsm};
use trustfab_ledger_sqlite::SqliteStore;
use trustfab_pki::{Curve, PublicKey, Signer, SoftKey};
use trustfab_test_support::site::{PackageSpec, Site};
use trustfab_test_support::softhsm::{self, SoftHsm2};
use trustfab_token::{KeyLabel, KeySpec, KeyUsage, Token};
use trustfab_token_pkcs11::{Pkcs11Config, Pkcs11Token};
use trustfab_token_soft::{Argon2Cost, SoftToken};
use trustfab_types::ProductKey;
use trustfab_types::{Clock, DeviceUid, Passphrase, SystemClock};

const BATCH: usize = 256;

/// A whole site on `token`: vendor, HSM identity, OEM, a package of 100 million, imported.
fn site(dir: &Path, token: Arc<dyn Token>) -> Hsm {
    let ledger = Arc::new(SqliteStore::open(&dir.join("ledger.sqlite")).unwrap());
    let package = PackageSpec::new("bench", 100_000_000, SystemClock.now()).id(5);
    Site::new(
        token,
        ledger,
        Arc::new(SystemClock),
        "bench-hsm",
        "acme",
        &package,
    )
    .hsm
}

/// `threads` callers at once, each with its share of a batch of `BATCH`.
fn batches(c: &mut Criterion, name: &str, token: Arc<dyn Token>, dir: &Path, threads: usize) {
    let hsm = site(dir, Arc::clone(&token));
    let device = SoftKey::generate(Curve::P256).unwrap();
    let public_key = PublicKey::from_point(Curve::P256, device.public_point()).unwrap();
    let next = AtomicU64::new(1);
    let raw_key = token
        .generate(&KeySpec::new(
            KeyLabel::new("bench-raw").unwrap(),
            Curve::P256,
            KeyUsage::Sign,
        ))
        .unwrap();
    let tbs_sized = vec![0x5a_u8; 450];
    let product = ProductKey::parse("acme/bench").unwrap();

    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function(BenchmarkId::new("raw sign (limit)", BATCH), |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(|| {
                        for _ in 0..BATCH / threads {
                            token.sign(raw_key, &tbs_sized).unwrap();
                        }
                    });
                }
            })
        })
    });
    g.bench_function(BenchmarkId::new("issue, durable records", BATCH), |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(|| {
                        let batch: Vec<DeviceKey> = (0..BATCH / threads)
                            .map(|_| DeviceKey {
                                uid: DeviceUid::new(
                                    &next.fetch_add(1, Ordering::Relaxed).to_be_bytes(),
                                )
                                .unwrap(),
                                public_key: public_key.clone(),
                            })
                            .collect();
                        hsm.issue_direct(&product, &batch).unwrap();
                    });
                }
            })
        })
    });
    g.finish();
}

fn soft(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let pass = Passphrase::new("bench".into()).unwrap();
    let token = SoftToken::create(
        &dir.path().join("token"),
        &pass,
        Argon2Cost::new(8 * 1024, 1, 1).unwrap(),
    )
    .unwrap();
    let token: Arc<dyn Token> = Arc::new(token);
    batches(c, "soft-1-thread", Arc::clone(&token), dir.path(), 1);
    let dir2 = tempfile::tempdir().unwrap();
    let token2 = SoftToken::create(
        &dir2.path().join("token"),
        &pass,
        Argon2Cost::new(8 * 1024, 1, 1).unwrap(),
    )
    .unwrap();
    batches(c, "soft-2-threads", Arc::new(token2), dir2.path(), 2);
}

fn pkcs11(c: &mut Criterion) {
    for sessions in [1, 2] {
        let dir = tempfile::tempdir().unwrap();
        let _softhsm = SoftHsm2::new(dir.path());
        let config = Pkcs11Config {
            module: trustfab_token_pkcs11::module_path().unwrap(),
            token_label: softhsm::TOKEN_LABEL.into(),
            pin: Passphrase::new(softhsm::PIN.into()).unwrap(),
            sessions,
        };
        let token = Pkcs11Token::open(&config).unwrap();
        batches(
            c,
            &format!("pkcs11-{sessions}-session"),
            Arc::new(token),
            dir.path(),
            sessions,
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(4));
    targets = soft, pkcs11
}
criterion_main!(benches);
