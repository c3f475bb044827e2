//! Mastering and verifying throughput (MB/s) for 256 KiB to 4 MiB images, beside the raw limit
//! measured in the same run: AES-128-CTR + SHA-256 over the payload + one ECDSA P-256 signature
//! (mastering) or verification (verifying). MCUboot's `imgtool` signs and verifies the same
//! image once per size, timed and printed, for comparison.
//!
//! `cargo bench -p trustfab-firmware`

// criterion's macros generate undocumented functions; a bench fails loudly, as a test does.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Instant;

use aws_lc_rs::cipher::{EncryptingKey, EncryptionContext, UnboundCipherKey, AES_128};
use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use trustfab_firmware::{
    master, verify, DecryptionKey, MasterOptions, Payload, SoftDecryptionKey, TrustAnchor,
};
use trustfab_pki::{Curve, PublicKey, Signer, SoftKey};
use trustfab_test_support::{imgtool, Scratch};
use trustfab_types::OsRng;

const SIZES: [usize; 3] = [256 * 1024, 1024 * 1024, 4 * 1024 * 1024];

fn raw_ctr_sha(payload: &mut [u8]) -> Vec<u8> {
    let key = EncryptingKey::ctr(UnboundCipherKey::new(&AES_128, &[7; 16]).unwrap()).unwrap();
    key.less_safe_encrypt(
        payload,
        EncryptionContext::Iv128(FixedLength::from([0; 16])),
    )
    .unwrap();
    digest(&SHA256, payload).as_ref().to_vec()
}

/// imgtool's time for one image of `size`, signed (encrypted) and verified, printed once.
fn imgtool_once(size: usize, payload: &[u8]) {
    let s = Scratch::new();
    let key = s.path().join("k.pem");
    let enc = s.path().join("e.pem");
    assert!(imgtool::keygen(&key).ok && imgtool::keygen(&enc).ok);
    let enc_pub = s.write("e-pub.pem", imgtool::getpub_pem(&enc).output);
    let input = s.write("app.bin", payload);
    let out = s.path().join("signed.bin");
    let t = Instant::now();
    let r = imgtool::sign(&key, "1.0.0", 1, &[], &input, &out);
    let sign = t.elapsed();
    assert!(r.ok, "{}", r.output);
    let t = Instant::now();
    let r = imgtool::verify(&key, &out);
    let ver = t.elapsed();
    assert!(r.ok, "{}", r.output);
    let t = Instant::now();
    let enc_arg = enc_pub.to_str().unwrap();
    let r = imgtool::sign(&key, "1.0.0", 1, &["--encrypt", enc_arg], &input, &out);
    let sign_enc = t.elapsed();
    assert!(r.ok, "{}", r.output);
    let mb = size as f64 / 1e6;
    println!(
        "imgtool {} KiB (one run, process start included): sign {:.0} ms ({:.1} MB/s), sign --encrypt {:.0} ms ({:.1} MB/s), verify {:.0} ms ({:.1} MB/s)",
        size / 1024,
        sign.as_secs_f64() * 1e3,
        mb / sign.as_secs_f64(),
        sign_enc.as_secs_f64() * 1e3,
        mb / sign_enc.as_secs_f64(),
        ver.as_secs_f64() * 1e3,
        mb / ver.as_secs_f64(),
    );
}

fn bench(c: &mut Criterion) {
    let key = SoftKey::generate(Curve::P256).unwrap();
    let public = PublicKey::from_point(Curve::P256, key.public_point()).unwrap();
    let family = SoftDecryptionKey::generate(&OsRng).unwrap();
    let family_pub = PublicKey::from_point(Curve::P256, &family.public_point().unwrap()).unwrap();
    let keys: [&dyn DecryptionKey; 1] = [&family];
    let mut g = c.benchmark_group("firmware");
    g.sample_size(10)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    for size in SIZES {
        let payload: Vec<u8> = (0..size).map(|i| u8::try_from(i % 251).unwrap()).collect();
        imgtool_once(size, &payload);
        g.throughput(Throughput::Bytes(size as u64));
        let plain = MasterOptions::new("1.0.0".parse().unwrap(), 1);
        let mut encrypted = plain.clone();
        encrypted.encrypt_to = Some(&family_pub);
        g.bench_with_input(BenchmarkId::new("master_signed", size), &payload, |b, p| {
            b.iter(|| master(p, &plain, &key, &OsRng).unwrap())
        });
        g.bench_with_input(
            BenchmarkId::new("master_encrypted", size),
            &payload,
            |b, p| b.iter(|| master(p, &encrypted, &key, &OsRng).unwrap()),
        );
        let img = master(&payload, &encrypted, &key, &OsRng).unwrap();
        g.bench_with_input(
            BenchmarkId::new("verify_decrypting", size),
            &img,
            |b, img| {
                b.iter(|| verify(img, TrustAnchor::Key(&public), Payload::Decrypt(&keys)).unwrap())
            },
        );
        // The limit: the work no implementation can skip.
        g.bench_with_input(
            BenchmarkId::new("raw_ctr_sha_sign", size),
            &payload,
            |b, p| {
                b.iter(|| {
                    let mut buf = p.clone();
                    let h = raw_ctr_sha(&mut buf);
                    black_box(key.sign_der(&h).unwrap())
                })
            },
        );
        let sig = key.sign_der(b"m").unwrap();
        g.bench_with_input(
            BenchmarkId::new("raw_ctr_sha_verify", size),
            &payload,
            |b, p| {
                b.iter(|| {
                    let mut buf = p.clone();
                    black_box(raw_ctr_sha(&mut buf));
                    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, public.point())
                        .verify(b"m", &sig)
                        .unwrap()
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
