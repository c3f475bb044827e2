//! Raw ECDSA P-256 sign rate of each Token backend, measured in one run so the numbers compare:
//! the soft token, and SoftHSM2 through PKCS#11 with one session and with two sessions used by
//! two threads at once. `cargo bench -p trustfab-token-pkcs11`; under `cargo test --benches`
//! each case runs once. SoftHSM2 must be installed (the bench makes its own token).

// A bench fixture that fails is a failed run; criterion_group! makes an undocumented fn.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use trustfab_token::{Curve, KeyHandle, KeyLabel, KeySpec, KeyUsage, Token};
use trustfab_token_pkcs11::Pkcs11Token;
use trustfab_token_soft::{Argon2Cost, SoftToken};
use trustfab_types::Passphrase;

#[path = "../tests/softhsm.rs"]
mod softhsm;

const MSG: &[u8] = b"a to-be-signed certificate body of a typical length, give or take";

fn sign_key(t: &dyn Token) -> KeyHandle {
    t.generate(&KeySpec::new(
        KeyLabel::new("bench").unwrap(),
        Curve::P256,
        KeyUsage::Sign,
    ))
    .unwrap()
}

/// `threads` threads share `t` and sign `iters` times in all; returns the wall time.
fn parallel(t: &dyn Token, k: KeyHandle, threads: u64, iters: u64) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for i in 0..threads {
            let n = iters / threads + u64::from(i < iters % threads);
            s.spawn(move || {
                for _ in 0..n {
                    std::hint::black_box(t.sign(k, MSG).unwrap());
                }
            });
        }
    });
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let softhsm = softhsm::SoftHsm::new();
    let soft = SoftToken::create(
        &softhsm.dir.path().join("soft.sealed"),
        &Passphrase::new("bench passphrase".into()).unwrap(),
        Argon2Cost::new(8 * 1024, 1, 1).unwrap(),
    )
    .unwrap();
    let hsm = Pkcs11Token::open(&softhsm.config(softhsm::PIN, 2)).unwrap();
    let mut g = c.benchmark_group("p256_sign");
    g.throughput(Throughput::Elements(1));
    for (name, t) in [("soft", &soft as &dyn Token), ("pkcs11_softhsm2", &hsm)] {
        let k = sign_key(t);
        g.bench_function(format!("{name}/1_thread"), |b| {
            b.iter(|| t.sign(k, MSG).unwrap());
        });
        g.bench_function(format!("{name}/2_threads"), |b| {
            b.iter_custom(|iters| parallel(t, k, 2, iters));
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
