//! Complete mutual authentications per second between two provisioned simulated devices (both
//! sides, chain validation to the root in each device's storage included), beside the raw cost
//! of what one authentication needs, measured in the same run: two device signatures, two
//! signature verifications under the certificate, two chain validations, two ECDH agreements.
//!
//! `cargo bench -p trustfab-auth`

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;

use aws_lc_rs::agreement::{agree_ephemeral, EphemeralPrivateKey, UnparsedPublicKey, ECDH_P256};
use aws_lc_rs::rand::SystemRandom;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rustls_pki_types::CertificateDer;
use trustfab_auth::mutual;
use trustfab_device::Device as _;
use trustfab_pki::{validate, Policy, Purpose};

// The devices are provisioned as the integration tests provision theirs. A fixture that fails
// is a failed run; the bench uses only part of the tests' fixtures.
#[allow(clippy::unwrap_used, dead_code)]
#[path = "../tests/support.rs"]
mod support;

use support::{acme_pair, NOW};

fn bench(c: &mut Criterion) {
    // Two devices provisioned under one OEM root and device CA.
    let (_, _, mut a, mut b) = acme_pair(1, 2);
    let trust = support::trust(NOW);
    let mut g = c.benchmark_group("auth");
    g.throughput(Throughput::Elements(1));

    g.bench_function("mutual authentication (complete, both sides)", |bn| {
        bn.iter(|| black_box(mutual(&mut a, &trust, &mut b, &trust).expect("auth")));
    });

    // The raw parts, each as many times as one mutual authentication needs them.
    let message = [0x5au8; 120];
    let cert_a = a.chain()[0].clone();
    let der = CertificateDer::from(cert_a.as_slice());
    let ee = webpki::EndEntityCert::try_from(&der).expect("cert");
    let sig = a.device_mut().sign_challenge(0, &message).expect("sign");
    g.bench_function("raw: 2 device signatures", |bn| {
        bn.iter(|| {
            for id in [&mut a, &mut b] {
                black_box(id.device_mut().sign_challenge(0, &message).expect("sign"));
            }
        });
    });
    g.bench_function("raw: 2 verifications under the certificate", |bn| {
        bn.iter(|| {
            for _ in 0..2 {
                ee.verify_signature(webpki::aws_lc_rs::ECDSA_P256_SHA256, &message, &sig)
                    .expect("verify");
            }
        });
    });
    let intermediates = [a.chain()[1].clone()];
    let root = a.root().to_vec();
    g.bench_function("raw: 2 chain validations", |bn| {
        bn.iter(|| {
            for _ in 0..2 {
                let policy = Policy {
                    root: &root,
                    intermediates: &intermediates,
                    crls: &[],
                    now: NOW,
                    purpose: Purpose::ClientAuth,
                };
                validate(&cert_a, &policy).expect("valid");
            }
        });
    });
    let rng = SystemRandom::new();
    g.bench_function("raw: 2 ephemeral ECDH (keygen + agree)", |bn| {
        bn.iter(|| {
            let x = EphemeralPrivateKey::generate(&ECDH_P256, &rng).expect("key");
            let y = EphemeralPrivateKey::generate(&ECDH_P256, &rng).expect("key");
            let px = x.compute_public_key().expect("pub");
            let py = y.compute_public_key().expect("pub");
            let k1: Vec<u8> = agree_ephemeral(
                x,
                UnparsedPublicKey::new(&ECDH_P256, py.as_ref()),
                (),
                |k| Ok(k.to_vec()),
            )
            .expect("agree");
            let k2: Vec<u8> = agree_ephemeral(
                y,
                UnparsedPublicKey::new(&ECDH_P256, px.as_ref()),
                (),
                |k| Ok(k.to_vec()),
            )
            .expect("agree");
            black_box((k1, k2));
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
