//! Certificates built and signed per second, beside the raw P-256 signature rate of the same
//! crypto library (aws-lc-rs), measured in the same run, one core.
//!
//! `cargo bench -p trustfab-pki --bench issue`

// Benchmark set-up unwraps: a failure there is a broken benchmark.
#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use trustfab_pki::template::EXAMPLE_TEMPLATE;
use trustfab_pki::{
    issue_device, self_signed_ca, CaRole, CaSpec, Curve, DeviceRequest, Issuer, PublicKey,
    RenderInputs, Signer, SoftKey, Template,
};
use trustfab_types::{DeviceUid, OemId, ProductId, Serial, UnixTime};

fn bench(c: &mut Criterion) {
    let now = UnixTime(1_790_000_000);
    let ca_key = SoftKey::generate(Curve::P256).unwrap();
    let spec = CaSpec {
        role: CaRole::OemRoot,
        common_name: "Bench Root".into(),
        organization: "Bench".into(),
        serial: Serial::from_u64(1).unwrap(),
        not_before: now,
        days: 3650,
    };
    let root = self_signed_ca(&spec, &ca_key).unwrap();
    let issuer = Issuer::new(&root, &ca_key).unwrap();
    let template = Template::from_toml(EXAMPLE_TEMPLATE).unwrap();
    let oem = OemId::new("acme").unwrap();
    let product = ProductId::new("thermostat").unwrap();
    let uid = DeviceUid::new(&[1, 2, 3, 4, 5, 6, 7, 8, 9]).unwrap();
    let serial = Serial::from_u64(0x1234_5678).unwrap();
    let device = SoftKey::generate(Curve::P256).unwrap();
    let device_pk = PublicKey::from_point(Curve::P256, device.public_point()).unwrap();
    // A TBSCertificate is about 450 bytes: sign a message of that size.
    let tbs_sized = vec![0x5a_u8; 450];

    let mut g = c.benchmark_group("p256");
    g.throughput(Throughput::Elements(1));
    g.bench_function("raw sign (limit)", |b| {
        b.iter(|| ca_key.sign_der(&tbs_sized).unwrap())
    });
    g.bench_function("raw keygen + sign (limit per device)", |b| {
        b.iter(|| {
            let k = SoftKey::generate(Curve::P256).unwrap();
            ca_key.sign_der(k.public_point()).unwrap()
        })
    });
    let req = DeviceRequest {
        inputs: RenderInputs {
            oem: &oem,
            product: &product,
            uid: &uid,
            serial: &serial,
        },
        public_key: &device_pk,
        now,
    };
    g.bench_function("certificate build + sign", |b| {
        b.iter(|| issue_device(&template, &req, &issuer).unwrap())
    });
    g.bench_function("device keygen + certificate build + sign", |b| {
        b.iter(|| {
            let k = SoftKey::generate(Curve::P256).unwrap();
            let pk = PublicKey::from_point(Curve::P256, k.public_point()).unwrap();
            let req = DeviceRequest {
                public_key: &pk,
                ..req
            };
            issue_device(&template, &req, &issuer).unwrap()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
