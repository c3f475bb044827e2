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
use trustfab_auth::{mutual, Identity, Slots, Trust};
use trustfab_device::{Device, DeviceKind, SiliconVendor, SimDevice, Zone};
use trustfab_pki::template::EXAMPLE_TEMPLATE;
use trustfab_pki::{
    intermediate_ca, issue_device, self_signed_ca, validate, CaRole, CaSpec, Curve, DeviceRequest,
    Issuer, Policy, PublicKey, Purpose, RenderInputs, Signer, SoftKey, Template,
};
use trustfab_types::{OemId, OsRng, ProductId, Serial, UnixTime};

const NOW: UnixTime = UnixTime(1_790_000_000);

fn spec(role: CaRole, cn: &str, serial: u64) -> CaSpec {
    CaSpec {
        role,
        common_name: cn.into(),
        organization: "acme".into(),
        serial: Serial::from_u64(serial).expect("serial"),
        not_before: UnixTime(NOW.0 - 86_400),
        days: 3650,
    }
}

/// Two devices provisioned under one OEM root and device CA.
fn devices() -> [Identity<SimDevice>; 2] {
    let root_key = SoftKey::generate(Curve::P256).expect("key");
    let root = self_signed_ca(&spec(CaRole::OemRoot, "acme Root CA", 1), &root_key).expect("root");
    let ca_key = SoftKey::generate(Curve::P256).expect("key");
    let ca_pk = PublicKey::from_point(Curve::P256, ca_key.public_point()).expect("point");
    let ca = intermediate_ca(
        &spec(CaRole::DeviceCa, "acme Device CA", 2),
        &ca_pk,
        &Issuer::new(&root, &root_key).expect("issuer"),
    )
    .expect("device CA");
    let issuer = Issuer::new(&ca, &ca_key).expect("issuer");
    let template = Template::from_toml(EXAMPLE_TEMPLATE).expect("template");
    let mut vendor = SiliconVendor::new(NOW, &OsRng).expect("vendor");
    let oem = OemId::new("acme").expect("oem");
    let product = ProductId::new("thermostat").expect("product");
    [1u64, 2].map(|n| {
        let mut d = vendor
            .manufacture(DeviceKind::SecureElement, NOW)
            .expect("part");
        let pk = d.generate_key(0).expect("keygen");
        let uid = d.uid().expect("uid");
        let serial = Serial::from_u64(n).expect("serial");
        let req = DeviceRequest {
            inputs: RenderInputs {
                oem: &oem,
                product: &product,
                uid: &uid,
                serial: &serial,
            },
            public_key: &pk,
            now: NOW,
        };
        let cert = issue_device(&template, &req, &issuer).expect("cert");
        d.write_slot(10, &cert).expect("write");
        d.write_slot(11, &ca).expect("write");
        d.write_slot(12, &root).expect("write");
        d.lock(Zone::Data).expect("lock");
        Identity::load(d, Slots::PROVISIONED).expect("identity")
    })
}

fn bench(c: &mut Criterion) {
    let [mut a, mut b] = devices();
    let trust = Trust {
        crls: &[],
        now: NOW,
    };
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
