//! Device operations per second on in-memory parts: key generation, signing, a slot write, a
//! lock, a whole provisioning sequence, and making a part; with raw aws-lc-rs P-256 key
//! generation and signing as the limit to compare with.
//!
//! `cargo bench -p trustfab-device`

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;

use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use trustfab_device::{file, Device, DeviceKind, Fleet, SiliconVendor, Zone};
use trustfab_types::{OsRng, UnixTime};

const NOW: UnixTime = UnixTime(1_764_000_000);
const FLEET: usize = 1_000;

fn fleet(kind: DeviceKind) -> Fleet {
    let mut v = SiliconVendor::new(NOW, &OsRng).expect("vendor");
    Fleet::manufacture(&mut v, kind, FLEET, NOW).expect("fleet")
}

fn ops(c: &mut Criterion) {
    let mut g = c.benchmark_group("device");
    g.throughput(Throughput::Elements(1));
    for kind in [DeviceKind::SecureElement, DeviceKind::SecureMcu] {
        let mut f = fleet(kind);
        let mut i = 0usize;
        let mut next = move || {
            i = (i + 1) % FLEET;
            i
        };
        g.bench_function(format!("{kind}/keygen"), |b| {
            b.iter(|| {
                f.nth_mut(next())
                    .expect("part")
                    .generate_key(2)
                    .expect("keygen")
            });
        });
        g.bench_function(format!("{kind}/sign"), |b| {
            b.iter(|| {
                f.nth_mut(next())
                    .expect("part")
                    .sign_digest(2, black_box(&[7; 32]))
                    .expect("sign")
            });
        });
        let cert = vec![0x30u8; 600];
        g.bench_function(format!("{kind}/write"), |b| {
            b.iter(|| {
                f.nth_mut(next())
                    .expect("part")
                    .write_slot(8, black_box(&cert[..400]))
                    .expect("write");
            });
        });
        // A lock changes a part for good: each iteration locks a fresh copy.
        let blank = {
            let mut d = file::decode(&file::encode(f.nth_mut(0).expect("part")).expect("encode"))
                .expect("decode");
            if kind == DeviceKind::SecureMcu {
                d.lock(Zone::Config).expect("config");
                d.program_rot_hash(&[1; 32]).expect("rot");
            }
            file::encode(&d).expect("encode")
        };
        g.bench_function(format!("{kind}/lock"), |b| {
            b.iter_batched(
                || file::decode(&blank).expect("decode"),
                |mut d| d.lock(Zone::Data).expect("lock"),
                BatchSize::SmallInput,
            );
        });
        g.bench_function(format!("{kind}/provision"), |b| {
            b.iter_batched(
                || file::decode(&blank).expect("decode"),
                |mut d| {
                    let _ = d.uid().expect("uid");
                    let pk = d.generate_key(0).expect("keygen");
                    for slot in [10, 11, 12] {
                        d.write_slot(slot, &cert).expect("write");
                    }
                    d.lock(Zone::Data).expect("lock");
                    let _ = d.read_slot(10).expect("read back");
                    let sig = d.sign_challenge(0, b"challenge").expect("sign");
                    black_box((pk, sig))
                },
                BatchSize::SmallInput,
            );
        });
    }
    let mut v = SiliconVendor::new(NOW, &OsRng).expect("vendor");
    g.bench_function("manufacture", |b| {
        b.iter(|| v.manufacture(DeviceKind::SecureElement, NOW).expect("part"));
    });
    let rng = aws_lc_rs::rand::SystemRandom::new();
    g.bench_function("raw-p256/keygen", |b| {
        b.iter(|| EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).expect("keygen"));
    });
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).expect("keygen");
    g.bench_function("raw-p256/sign", |b| {
        b.iter(|| pair.sign(&rng, black_box(b"challenge")).expect("sign"));
    });
    g.finish();
}

criterion_group!(benches, ops);
criterion_main!(benches);
