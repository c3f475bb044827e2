//! The one conformance property that needs the PKI: a device certificate signed inside the token
//! validates. It lives outside `src/` because `trustfab-token` must not depend on
//! `trustfab-pki`; each backend's test binary, which has both as dev-dependencies, includes this
//! file with `#[path]` and runs it beside `token_conformance!`.

use trustfab_pki::{
    issue_device, self_signed_ca, template::EXAMPLE_TEMPLATE, validate, CaRole, CaSpec,
    DeviceRequest, Issuer, Policy, PublicKey, Purpose, RenderInputs, Signer as _, SoftKey,
    Template,
};
use trustfab_token::conformance::Backend;
use trustfab_token::{
    wrap_for, Curve, KeyLabel, KeySpec, KeyUsage, Token, TokenSigner, WrappedKey,
};
use trustfab_types::{DeviceUid, OemId, ProductId, Serial, UnixTime};

/// A device certificate signed inside the token (by an unwrapped OEM key, through
/// [`TokenSigner`]) validates under the OEM root with webpki.
pub(crate) fn device_certificate_signed_in_token<B: Backend>(b: &B) {
    let label = |s: &str| KeyLabel::new(s).unwrap();
    let t = b.open();
    let kt = t
        .generate(&KeySpec::new(
            label("kt"),
            Curve::P256,
            KeyUsage::KeyTransport,
        ))
        .unwrap();
    let oem = SoftKey::generate(Curve::P256).unwrap();
    let now = UnixTime(1_767_225_600); // 2026-01-01
    let root = self_signed_ca(
        &CaSpec {
            role: CaRole::OemRoot,
            common_name: "Acme Root".into(),
            organization: "Acme".into(),
            serial: Serial::from_u64(1).unwrap(),
            not_before: now,
            days: 3650,
        },
        &oem,
    )
    .unwrap();
    let wrapped = wrap_for(
        &t.public_key(kt).unwrap(),
        &oem.secret_pkcs8_der().unwrap(),
        b"oem",
    )
    .unwrap();
    let wrapped = WrappedKey::from_bytes(&wrapped.to_bytes()).unwrap();
    let k = t
        .unwrap_key(
            kt,
            &wrapped,
            &KeySpec::new(label("oem"), Curve::P256, KeyUsage::Sign),
        )
        .unwrap();
    let signer = TokenSigner::new(&t, k).unwrap();
    let issuer = Issuer::new(&root, &signer).unwrap();
    let template = Template::from_toml(EXAMPLE_TEMPLATE).unwrap();
    let device = SoftKey::generate(Curve::P256).unwrap();
    let device_pub = PublicKey::from_point(Curve::P256, device.public_point()).unwrap();
    let (oem_id, product) = (
        OemId::new("acme").unwrap(),
        ProductId::new("widget").unwrap(),
    );
    let uid = DeviceUid::new(&[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
    let serial = Serial::from_u64(0x1234_5678_9abc).unwrap();
    let cert = issue_device(
        &template,
        &DeviceRequest {
            inputs: RenderInputs {
                oem: &oem_id,
                product: &product,
                uid: &uid,
                serial: &serial,
            },
            public_key: &device_pub,
            now,
        },
        &issuer,
    )
    .unwrap();
    let policy = Policy {
        root: &root,
        intermediates: &[],
        crls: &[],
        now: UnixTime(now.0 + 60),
        purpose: Purpose::ClientAuth,
    };
    validate(&cert, &policy).unwrap();
    // A signer of another key cannot pose as the issuer.
    let gen = t
        .generate(&KeySpec::new(label("gen"), Curve::P256, KeyUsage::Sign))
        .unwrap();
    let other = TokenSigner::new(&t, gen).unwrap();
    assert!(Issuer::new(&root, &other).is_err());
    assert!(TokenSigner::new(&t, kt).is_err());
}
