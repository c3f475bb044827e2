//! The conformance suite every [`Token`] backend runs: one body per property, instantiated per
//! backend with [`crate::token_conformance!`]. Verification uses aws-lc-rs directly, never the
//! token under test.
//!
//! This module is test code compiled into the library (feature `conformance`, enabled only by the
//! backends' dev-dependencies): a failed property panics, as in any test. The one property that
//! needs the PKI (a device certificate signed in the token) is in `conformance/pki.rs` beside
//! this crate's sources, which each backend's test binary includes with `#[path]`, so that this
//! crate does not depend on `trustfab-pki`.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, UnparsedPublicKey};
use trustfab_types::SecretKeyDer;

use crate::{
    pkcs8_public_key, unwrap_with, wrap_for, wrapped_header, Curve, Error, KeyHandle, KeyLabel,
    KeySpec, KeyUsage, MacKeySpec, MacTag, PublicKey, Token, TokenSigner, WrappedKey, ANCHOR_MAX,
    INFO_MAX, MAC_LEN,
};

/// What the suite needs from a backend besides the [`Token`] trait. One value is one fresh,
/// empty token (its own file or its own PKCS#11 token in its own directory).
pub trait Backend {
    /// The token type.
    type Token: Token;
    /// Opens the fresh token with the right credential.
    fn open(&self) -> Self::Token;
    /// Closes `token` (file closed, or every session closed and the module finalized) and opens
    /// it again with the right credential.
    fn reopen(&self, token: Self::Token) -> Self::Token;
    /// Closes `token` and tries to open it with a wrong passphrase or PIN.
    ///
    /// # Errors
    /// The refusal, which the suite expects.
    fn reopen_with_wrong_credential(&self, token: Self::Token) -> Result<Self::Token, Error>;
    /// Asks the token for the private value of `key` (PKCS#11: C_GetAttributeValue CKA_VALUE),
    /// returning its length if the token would reveal it.
    ///
    /// # Errors
    /// The token's refusal.
    fn probe_private_value(&self, token: &Self::Token, key: KeyHandle) -> Result<usize, Error>;
    /// Panics unless `err` is this backend's refusal to reveal a sensitive value.
    fn assert_sensitive_refusal(&self, err: &Error);
    /// Every byte the token keeps at rest (its store file, its token directory).
    fn at_rest(&self) -> Vec<u8>;
}

fn label(s: &str) -> KeyLabel {
    KeyLabel::new(s).unwrap()
}

fn verify(curve: Curve, point: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    UnparsedPublicKey::new(curve.verify_alg(), point)
        .verify(msg, sig)
        .is_ok()
}

/// A key in software, as the OEM holds one before wrapping it for a token: its PKCS#8 and its
/// public point.
struct SoftKey {
    der: SecretKeyDer,
    public: PublicKey,
}

impl SoftKey {
    fn public_point(&self) -> &[u8] {
        self.public.point()
    }

    fn secret_pkcs8_der(&self) -> &SecretKeyDer {
        &self.der
    }
}

fn oem_key(curve: Curve) -> SoftKey {
    let doc = EcdsaKeyPair::generate_pkcs8(curve.signing_alg(), &SystemRandom::new()).unwrap();
    let der = SecretKeyDer::new(doc.as_ref().to_vec());
    let public = pkcs8_public_key(&der).unwrap();
    assert_eq!(public.curve(), curve);
    SoftKey { der, public }
}

/// The private scalar of a PKCS#8 key, to look for it where it must not be.
fn scalar_of(key: &SoftKey, curve: Curve) -> Vec<u8> {
    scalar_of_der(key.secret_pkcs8_der(), curve)
}

fn scalar_of_der(der: &SecretKeyDer, curve: Curve) -> Vec<u8> {
    use aws_lc_rs::encoding::AsBigEndian as _;
    let pair = EcdsaKeyPair::from_pkcs8(curve.signing_alg(), der.secret_pkcs8_der()).unwrap();
    let bin = pair.private_key().as_be_bytes().unwrap();
    bin.as_ref().to_vec()
}

/// A device key in software (what a device's secure storage holds): its PKCS#8 and its public
/// key, the recipient of [`Token::wrap_key`].
fn device_key(curve: Curve) -> (SecretKeyDer, PublicKey) {
    let k = oem_key(curve);
    (k.der, k.public)
}

/// `key` wrapped for the key-transport key `kt` of `t`, binding `info`, as it arrives: through
/// its byte encoding.
fn wrapped_to(t: &dyn Token, kt: KeyHandle, key: &SoftKey, info: &[u8]) -> WrappedKey {
    let der = key.secret_pkcs8_der();
    let wrapped = wrap_for(&t.public_key(kt).unwrap(), der, info).unwrap();
    WrappedKey::from_bytes(&wrapped.to_bytes()).unwrap()
}

/// Imports `key` as a distribution key (P-256) through `unwrap_key`, extractable or not.
fn import_distribute(
    t: &dyn Token,
    kt: KeyHandle,
    key: &SoftKey,
    name: &str,
    extractable: bool,
) -> Result<KeyHandle, Error> {
    let wrapped = wrapped_to(t, kt, key, name.as_bytes());
    let mut spec = KeySpec::new(label(name), Curve::P256, KeyUsage::Distribute);
    spec.extractable = extractable;
    t.unwrap_key(kt, &wrapped, &spec)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn transport_key(t: &dyn Token, name: &str) -> KeyHandle {
    t.generate(&KeySpec::new(
        label(name),
        Curve::P256,
        KeyUsage::KeyTransport,
    ))
    .unwrap()
}

fn import(t: &dyn Token, kt: KeyHandle, key: &SoftKey, name: &str, curve: Curve) -> KeyHandle {
    let wrapped = wrapped_to(t, kt, key, name.as_bytes());
    t.unwrap_key(
        kt,
        &wrapped,
        &KeySpec::new(label(name), curve, KeyUsage::Sign),
    )
    .unwrap()
}

/// Generate P-256 and P-384 keys, sign, verify with aws-lc-rs; defaults are sensitive and
/// non-extractable; labels are unique and found again.
pub fn generate_sign_verify<B: Backend>(b: &B) {
    let t = b.open();
    for (name, curve) in [("sign-p256", Curve::P256), ("sign-p384", Curve::P384)] {
        let spec = KeySpec::new(label(name), curve, KeyUsage::Sign);
        let k = t.generate(&spec).unwrap();
        let info = t.info(k).unwrap();
        assert_eq!((info.curve, info.usage), (Some(curve), KeyUsage::Sign));
        assert!(info.sensitive && !info.extractable, "{info:?}");
        let pubk = t.public_key(k).unwrap();
        assert_eq!(pubk.curve(), curve);
        for msg in [&b""[..], b"hello", &[0xa5; 1000]] {
            let sig = t.sign(k, msg).unwrap();
            assert!(
                verify(curve, pubk.point(), msg, sig.der()),
                "{curve} signature"
            );
            assert!(!verify(curve, pubk.point(), b"other", sig.der()));
        }
        assert_eq!(t.find(&label(name)).unwrap(), Some(k));
        assert!(matches!(t.generate(&spec), Err(Error::LabelExists { .. })));
    }
    assert_eq!(t.find(&label("absent")).unwrap(), None);
    let kt = transport_key(&t, "kt");
    assert!(matches!(t.sign(kt, b"x"), Err(Error::NotPermitted { .. })));
    assert!(matches!(
        t.generate(&KeySpec::new(
            label("kt384"),
            Curve::P384,
            KeyUsage::KeyTransport
        )),
        Err(Error::BadSpec(_))
    ));
}

/// A key wrapped on the OEM side unwraps inside the token, keeps its public key, and signs.
pub fn unwrap_then_sign<B: Backend>(b: &B) {
    let t = b.open();
    let kt = transport_key(&t, "kt");
    for (name, curve) in [("oem-p256", Curve::P256), ("oem-p384", Curve::P384)] {
        let oem = oem_key(curve);
        let k = import(&t, kt, &oem, name, curve);
        assert_eq!(t.public_key(k).unwrap().point(), oem.public_point());
        let info = t.info(k).unwrap();
        assert!(info.sensitive && !info.extractable, "{info:?}");
        let sig = t.sign(k, b"device tbs").unwrap();
        assert!(verify(curve, oem.public_point(), b"device tbs", sig.der()));
        assert_eq!(t.find(&label(name)).unwrap(), Some(k));
    }
    // A signing key is no key-transport key.
    let sk = t.find(&label("oem-p256")).unwrap().unwrap();
    let wrapped = wrapped_to(&t, kt, &oem_key(Curve::P256), b"");
    let spec = KeySpec::new(label("x"), Curve::P256, KeyUsage::Sign);
    assert!(matches!(
        t.unwrap_key(sk, &wrapped, &spec),
        Err(Error::NotPermitted { .. })
    ));
    let wrong_curve = KeySpec::new(label("x"), Curve::P384, KeyUsage::Sign);
    assert!(matches!(
        t.unwrap_key(kt, &wrapped, &wrong_curve),
        Err(Error::BadSpec(_))
    ));
}

/// No private key can be read out: the token refuses CKA_VALUE for generated and unwrapped keys,
/// and the unwrapped key's scalar appears neither at rest nor in `Debug` output.
pub fn no_private_key_export<B: Backend>(b: &B) {
    let t = b.open();
    let kt = transport_key(&t, "kt");
    let gen = t
        .generate(&KeySpec::new(label("gen"), Curve::P256, KeyUsage::Sign))
        .unwrap();
    let oem = oem_key(Curve::P256);
    let imported = import(&t, kt, &oem, "oem", Curve::P256);
    for k in [kt, gen, imported] {
        match b.probe_private_value(&t, k) {
            Ok(len) => panic!("token would reveal a {len}-byte private value"),
            Err(e) => b.assert_sensitive_refusal(&e),
        }
    }
    // The probe is real: a key made non-sensitive and extractable on purpose is revealed.
    let mut open_spec = KeySpec::new(label("exportable"), Curve::P256, KeyUsage::Sign);
    open_spec.sensitive = false;
    open_spec.extractable = true;
    let exportable = t.generate(&open_spec).unwrap();
    assert!(b.probe_private_value(&t, exportable).unwrap() > 0);
    let scalar = scalar_of(&oem, Curve::P256);
    assert!(!contains(&b.at_rest(), &scalar), "scalar found at rest");
    let dbg = format!("{t:?}");
    let hex: String = scalar.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!dbg.contains(&hex) && !dbg.contains(&format!("{scalar:?}")));
}

/// Blobs that were changed, made for another key-transport key or declaring a foreign public key
/// are refused with [`Error::Unwrap`], and nothing is stored.
pub fn wrong_wrapped_blob_refused<B: Backend>(b: &B) {
    let t = b.open();
    let kt = transport_key(&t, "kt");
    let other_kt = transport_key(&t, "kt2");
    let oem = oem_key(Curve::P256);
    let der = oem.secret_pkcs8_der();
    let good = wrap_for(&t.public_key(kt).unwrap(), der, b"pkg").unwrap();
    let spec = KeySpec::new(label("oem"), Curve::P256, KeyUsage::Sign);
    let refused = |w: &WrappedKey, kt: KeyHandle| {
        assert!(matches!(t.unwrap_key(kt, w, &spec), Err(Error::Unwrap)));
        assert_eq!(t.find(&label("oem")).unwrap(), None);
    };
    refused(&good, other_kt);
    let bytes = good.to_bytes();
    // Every byte of the ephemeral point, info and ciphertext, flipped one at a time, in a few
    // bit positions; changes that no longer parse are refused by the decoder instead.
    for i in 7..bytes.len() {
        for bit in [0u8, 3, 7] {
            let mut v = bytes.clone();
            v[i] ^= 1 << bit;
            if let Ok(w) = WrappedKey::from_bytes(&v) {
                refused(&w, kt);
            }
        }
    }
    // A blob that declares someone else's public key.
    let stranger = oem_key(Curve::P256);
    let mut v = bytes;
    let at = 4 + 3 + 65 + 1;
    v[at..at + 65].copy_from_slice(stranger.public_point());
    refused(&WrappedKey::from_bytes(&v).unwrap(), kt);
    // The good blob still works afterwards.
    t.unwrap_key(kt, &good, &spec).unwrap();
}

/// A firmware family key imported as a distribution key (`unwrap_key` of a `wrap_for` blob) is
/// handed out with `wrap_key` to a device's public key, and the device's `unwrap_with` gives
/// back the very key: same public key, same scalar. Only that device opens it, the info is
/// bound, every wrap has its own ephemeral key, the key is sensitive (its value is refused) and
/// not at rest in clear, and all of it holds after a reopen.
pub fn distribute_key_wraps_out_to_a_device<B: Backend>(b: &B) {
    let t = b.open();
    let kt = transport_key(&t, "kt");
    let family = oem_key(Curve::P256);
    let family_der = family.secret_pkcs8_der();
    let family_pub = pkcs8_public_key(family_der).unwrap();
    let d = import_distribute(&t, kt, &family, "family:widget", true).unwrap();
    let info = t.info(d).unwrap();
    assert_eq!(
        (info.curve, info.usage),
        (Some(Curve::P256), KeyUsage::Distribute)
    );
    assert!(info.sensitive && info.extractable, "{info:?}");
    assert_eq!(t.public_key(d).unwrap(), family_pub);
    assert_eq!(t.find(&label("family:widget")).unwrap(), Some(d));
    match b.probe_private_value(&t, d) {
        Ok(len) => panic!("token would reveal a {len}-byte distribution key"),
        Err(e) => b.assert_sensitive_refusal(&e),
    }

    let (device_der, device) = device_key(Curve::P256);
    let (other_der, _) = device_key(Curve::P256);
    let w = t.wrap_key(d, &device, b"device 0001").unwrap();
    let w = WrappedKey::from_bytes(&w.to_bytes()).unwrap();
    assert_eq!(w.info(), b"device 0001");
    assert_eq!(w.key_curve(), Curve::P256);
    assert_eq!(w.public_key(), &family_pub);
    let got = unwrap_with(&device_der, &w).unwrap();
    assert_eq!(pkcs8_public_key(&got).unwrap(), family_pub);
    assert_eq!(
        scalar_of_der(&got, Curve::P256),
        scalar_of(&family, Curve::P256)
    );
    // Whatever the backend's own PKCS#8 encoding, the device gets the canonical one.
    assert_eq!(got.secret_pkcs8_der(), family_der.secret_pkcs8_der());
    // Another device cannot open it; the same blob claiming another info cannot be opened.
    assert!(matches!(unwrap_with(&other_der, &w), Err(Error::Unwrap)));
    let relabelled = wrapped_header(w.ephemeral_point(), family_pub.clone(), b"device 0002")
        .unwrap()
        .with_ciphertext(w.ciphertext().to_vec())
        .unwrap();
    assert!(matches!(
        unwrap_with(&device_der, &relabelled),
        Err(Error::Unwrap)
    ));
    // Each wrap is made with a fresh ephemeral key.
    let w2 = t.wrap_key(d, &device, b"device 0001").unwrap();
    assert_ne!(w2.ephemeral_point(), w.ephemeral_point());
    assert_ne!(w2.ciphertext(), w.ciphertext());
    unwrap_with(&device_der, &w2).unwrap();

    let scalar = scalar_of(&family, Curve::P256);
    assert!(!contains(&b.at_rest(), &scalar), "family key found at rest");
    let dbg = format!("{t:?} {w:?}");
    let hex: String = scalar.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!dbg.contains(&hex));

    let t = b.reopen(t);
    let d = t.find(&label("family:widget")).unwrap().unwrap();
    let info = t.info(d).unwrap();
    assert_eq!(info.usage, KeyUsage::Distribute);
    assert!(info.sensitive && info.extractable, "{info:?}");
    let w3 = t.wrap_key(d, &device, b"after reopen").unwrap();
    let got = unwrap_with(&device_der, &w3).unwrap();
    assert_eq!(pkcs8_public_key(&got).unwrap(), family_pub);
}

/// A distribution key does nothing but leave wrapped: it does not sign or unwrap, and nothing
/// else leaves: `wrap_key` refuses signing keys (even one made extractable on purpose),
/// key-transport keys and a distribution key that is not extractable, and recipients off P-256.
/// Distribution specs are P-256 and sensitive.
pub fn distribute_key_policy<B: Backend>(b: &B) {
    let t = b.open();
    let kt = transport_key(&t, "kt");
    let family = oem_key(Curve::P256);
    let d = import_distribute(&t, kt, &family, "family", true).unwrap();
    let (_, device) = device_key(Curve::P256);
    let not_permitted = |k: KeyHandle, what: &str| {
        let r = t.wrap_key(k, &device, b"x");
        assert!(
            matches!(r, Err(Error::NotPermitted { .. })),
            "{what}: {r:?}"
        );
    };

    // It neither signs nor unwraps.
    assert!(matches!(t.sign(d, b"x"), Err(Error::NotPermitted { .. })));
    assert!(TokenSigner::new(&t, d).is_err());
    let blob = wrapped_to(&t, kt, &oem_key(Curve::P256), b"");
    let spec = KeySpec::new(label("via-family"), Curve::P256, KeyUsage::Sign);
    assert!(matches!(
        t.unwrap_key(d, &blob, &spec),
        Err(Error::NotPermitted { .. })
    ));

    // Only an extractable distribution key leaves.
    let gen = t
        .generate(&KeySpec::new(label("gen"), Curve::P256, KeyUsage::Sign))
        .unwrap();
    not_permitted(gen, "generated signing key");
    let mut open_spec = KeySpec::new(label("exportable"), Curve::P256, KeyUsage::Sign);
    open_spec.extractable = true;
    let exportable = t.generate(&open_spec).unwrap();
    not_permitted(exportable, "extractable signing key");
    let oem = import(&t, kt, &oem_key(Curve::P256), "oem", Curve::P256);
    not_permitted(oem, "imported signing key");
    not_permitted(kt, "key-transport key");
    let fixed = import_distribute(&t, kt, &oem_key(Curve::P256), "family-fixed", false).unwrap();
    let info = t.info(fixed).unwrap();
    assert_eq!(info.usage, KeyUsage::Distribute);
    assert!(info.sensitive && !info.extractable, "{info:?}");
    not_permitted(fixed, "non-extractable distribution key");

    // Recipients are P-256 keys; info has its limit.
    let (_, p384) = device_key(Curve::P384);
    assert!(matches!(t.wrap_key(d, &p384, b"x"), Err(Error::BadKey(_))));
    assert!(matches!(
        t.wrap_key(d, &device, &[0; INFO_MAX + 1]),
        Err(Error::TooLarge { .. })
    ));
    t.wrap_key(d, &device, &[0; INFO_MAX]).unwrap();

    // Distribution specs: P-256 and sensitive, for import and generation alike.
    let p384_blob = wrapped_to(&t, kt, &oem_key(Curve::P384), b"");
    let mut bad = KeySpec::new(label("bad"), Curve::P384, KeyUsage::Distribute);
    bad.extractable = true;
    assert!(matches!(
        t.unwrap_key(kt, &p384_blob, &bad),
        Err(Error::BadSpec(_))
    ));
    assert!(matches!(t.generate(&bad), Err(Error::BadSpec(_))));
    let mut clear = KeySpec::new(label("bad"), Curve::P256, KeyUsage::Distribute);
    clear.sensitive = false;
    clear.extractable = true;
    assert!(matches!(
        t.unwrap_key(kt, &blob, &clear),
        Err(Error::BadSpec(_))
    ));
    assert!(matches!(t.generate(&clear), Err(Error::BadSpec(_))));
    assert_eq!(t.find(&label("bad")).unwrap(), None);
    let kt_spec = KeySpec::new(label("bad"), Curve::P256, KeyUsage::KeyTransport);
    assert!(matches!(
        t.unwrap_key(kt, &blob, &kt_spec),
        Err(Error::BadSpec(_))
    ));

    // A distribution key generated inside the token leaves the same way.
    let mut gen_spec = KeySpec::new(label("family-gen"), Curve::P256, KeyUsage::Distribute);
    gen_spec.extractable = true;
    let g = t.generate(&gen_spec).unwrap();
    assert!(matches!(t.sign(g, b"x"), Err(Error::NotPermitted { .. })));
    let (device_der, device) = device_key(Curve::P256);
    let w = t.wrap_key(g, &device, b"gen").unwrap();
    let got = unwrap_with(&device_der, &w).unwrap();
    assert_eq!(pkcs8_public_key(&got).unwrap(), t.public_key(g).unwrap());
}

/// Handles the token never issued are refused.
pub fn unknown_handle_refused<B: Backend>(b: &B) {
    let t = b.open();
    let k = t
        .generate(&KeySpec::new(label("k"), Curve::P256, KeyUsage::Sign))
        .unwrap();
    for bogus in [0xdead_beef_u64, k.backend_id() + 1000, u64::MAX] {
        let h = KeyHandle::from_backend(bogus);
        assert!(matches!(t.sign(h, b"x"), Err(Error::UnknownKey)), "{bogus}");
        assert!(matches!(t.public_key(h), Err(Error::UnknownKey)));
        assert!(matches!(t.info(h), Err(Error::UnknownKey)));
        let (_, device) = device_key(Curve::P256);
        assert!(matches!(
            t.wrap_key(h, &device, b""),
            Err(Error::UnknownKey)
        ));
    }
}

/// Keys survive closing and reopening the token.
pub fn persistence_across_reopen<B: Backend>(b: &B) {
    let t = b.open();
    let kt = transport_key(&t, "kt");
    let gen = t
        .generate(&KeySpec::new(label("gen"), Curve::P384, KeyUsage::Sign))
        .unwrap();
    let oem = oem_key(Curve::P256);
    import(&t, kt, &oem, "oem", Curve::P256);
    let gen_pub = t.public_key(gen).unwrap();
    let kt_pub = t.public_key(kt).unwrap();
    let t = b.reopen(t);
    let gen = t.find(&label("gen")).unwrap().unwrap();
    assert_eq!(t.public_key(gen).unwrap(), gen_pub);
    let sig = t.sign(gen, b"after").unwrap();
    assert!(verify(Curve::P384, gen_pub.point(), b"after", sig.der()));
    let k = t.find(&label("oem")).unwrap().unwrap();
    let sig = t.sign(k, b"after").unwrap();
    assert!(verify(Curve::P256, oem.public_point(), b"after", sig.der()));
    let kt = t.find(&label("kt")).unwrap().unwrap();
    assert_eq!(t.public_key(kt).unwrap(), kt_pub);
    // The key-transport key still unwraps after the reopen.
    import(&t, kt, &oem_key(Curve::P384), "oem2", Curve::P384);
    let info = t.info(k).unwrap();
    assert!(info.sensitive && !info.extractable);
}

/// A wrong passphrase or PIN is refused.
pub fn wrong_credential_refused<B: Backend>(b: &B) {
    let t = b.open();
    t.generate(&KeySpec::new(label("k"), Curve::P256, KeyUsage::Sign))
        .unwrap();
    match b.reopen_with_wrong_credential(t) {
        Ok(t) => panic!("opened with a wrong credential: {t:?}"),
        Err(e) => assert!(matches!(e, Error::WrongCredential), "{e:?}"),
    }
}

/// The token's generator fills buffers, and not with a constant.
pub fn fill_random<B: Backend>(b: &B) {
    let t = b.open();
    let mut a = [0u8; 32];
    let mut c = [0u8; 32];
    t.fill_random(&mut a).unwrap();
    t.fill_random(&mut c).unwrap();
    assert_ne!(a, c);
    assert_ne!(a, [0u8; 32]);
}

fn mac_key(t: &dyn Token, name: &str) -> KeyHandle {
    t.generate_mac(&MacKeySpec::new(label(name))).unwrap()
}

fn mismatch(r: Result<(), Error>) {
    assert!(matches!(r, Err(Error::MacMismatch)), "{r:?}");
}

/// A MAC key is made inside the token (sensitive, not extractable, usage MAC, no curve), found by
/// its label, and MACs deterministically; a tag verifies for its key and message only: not for
/// another message, another key, a changed tag or a tag of another length. Keys and MAC keys
/// share one label space.
pub fn mac_round_trip<B: Backend>(b: &B) {
    let t = b.open();
    let k = mac_key(&t, "ledger-mac");
    let info = t.info(k).unwrap();
    assert_eq!((info.curve, info.usage), (None, KeyUsage::Mac));
    assert!(info.sensitive && !info.extractable, "{info:?}");
    assert_eq!(info.label, label("ledger-mac"));
    assert_eq!(t.find(&label("ledger-mac")).unwrap(), Some(k));

    let other = mac_key(&t, "other-mac");
    for msg in [&b""[..], b"record 1", &[0x5a; 4096]] {
        let tag = t.mac(k, msg).unwrap();
        assert_eq!(tag, t.mac(k, msg).unwrap(), "HMAC is deterministic");
        t.verify_mac(k, msg, tag.as_bytes()).unwrap();
        mismatch(t.verify_mac(k, b"record 2", tag.as_bytes()));
        mismatch(t.verify_mac(other, msg, tag.as_bytes()));
        assert_ne!(tag, t.mac(other, msg).unwrap(), "another key, another tag");
        let mut changed = tag.to_bytes();
        changed[MAC_LEN - 1] ^= 1;
        mismatch(t.verify_mac(k, msg, &changed));
        mismatch(t.verify_mac(k, msg, &tag.as_bytes()[..MAC_LEN - 1]));
        mismatch(t.verify_mac(k, msg, &[tag.as_bytes(), &[0][..]].concat()));
        mismatch(t.verify_mac(k, msg, &[]));
        assert_eq!(MacTag::try_from(&tag.as_bytes()[..]).unwrap(), tag);
    }
    assert_ne!(t.mac(k, b"a").unwrap(), t.mac(k, b"b").unwrap());

    // One label space: a MAC key's label is taken for EC keys and the other way round.
    assert!(matches!(
        t.generate_mac(&MacKeySpec::new(label("ledger-mac"))),
        Err(Error::LabelExists { .. })
    ));
    assert!(matches!(
        t.generate(&KeySpec::new(
            label("ledger-mac"),
            Curve::P256,
            KeyUsage::Sign
        )),
        Err(Error::LabelExists { .. })
    ));
    t.generate(&KeySpec::new(label("ec"), Curve::P256, KeyUsage::Sign))
        .unwrap();
    assert!(matches!(
        t.generate_mac(&MacKeySpec::new(label("ec"))),
        Err(Error::LabelExists { .. })
    ));
}

/// A MAC key does nothing but MAC: it has no public key, does not sign, unwrap or leave, and its
/// value is refused; an EC key does not MAC; an EC spec cannot ask for a MAC key.
pub fn mac_key_policy<B: Backend>(b: &B) {
    let t = b.open();
    let k = mac_key(&t, "mac");
    let not_permitted = |r: Result<(), Error>, what: &str| {
        assert!(
            matches!(r, Err(Error::NotPermitted { .. })),
            "{what}: {r:?}"
        );
    };
    not_permitted(t.sign(k, b"x").map(drop), "sign");
    not_permitted(t.public_key(k).map(drop), "public_key");
    assert!(TokenSigner::new(&t, k).is_err());
    let (_, device) = device_key(Curve::P256);
    not_permitted(t.wrap_key(k, &device, b"").map(drop), "wrap_key");
    let kt = transport_key(&t, "kt");
    let blob = wrapped_to(&t, kt, &oem_key(Curve::P256), b"");
    let spec = KeySpec::new(label("via-mac"), Curve::P256, KeyUsage::Sign);
    not_permitted(t.unwrap_key(k, &blob, &spec).map(drop), "unwrap_key");
    assert_eq!(t.find(&label("via-mac")).unwrap(), None);
    match b.probe_private_value(&t, k) {
        Ok(len) => panic!("token would reveal a {len}-byte MAC key"),
        Err(e) => b.assert_sensitive_refusal(&e),
    }

    // EC keys of every usage refuse to MAC.
    let sign = t
        .generate(&KeySpec::new(label("sign"), Curve::P256, KeyUsage::Sign))
        .unwrap();
    let d = import_distribute(&t, kt, &oem_key(Curve::P256), "family", true).unwrap();
    for ec in [sign, kt, d] {
        not_permitted(t.mac(ec, b"x").map(drop), "mac with an EC key");
        let tag = t.mac(k, b"x").unwrap();
        not_permitted(
            t.verify_mac(ec, b"x", tag.as_bytes()),
            "verify with an EC key",
        );
    }
    let bogus = KeyHandle::from_backend(0xdead_beef);
    assert!(matches!(t.mac(bogus, b"x"), Err(Error::UnknownKey)));
    assert!(matches!(
        t.verify_mac(bogus, b"x", &[0; MAC_LEN]),
        Err(Error::UnknownKey)
    ));

    // A MAC key is not made from an EC spec, generated or imported.
    let mac_spec = KeySpec::new(label("bad"), Curve::P256, KeyUsage::Mac);
    assert!(matches!(t.generate(&mac_spec), Err(Error::BadSpec(_))));
    assert!(matches!(
        t.unwrap_key(kt, &blob, &mac_spec),
        Err(Error::BadSpec(_))
    ));
    assert_eq!(t.find(&label("bad")).unwrap(), None);
}

/// A MAC key survives closing and reopening the token: found by label, same tags.
pub fn mac_key_survives_reopen<B: Backend>(b: &B) {
    let t = b.open();
    let k = mac_key(&t, "ledger-mac");
    let tag = t.mac(k, b"head").unwrap();
    let t = b.reopen(t);
    let k = t.find(&label("ledger-mac")).unwrap().unwrap();
    let info = t.info(k).unwrap();
    assert_eq!(info.usage, KeyUsage::Mac);
    assert!(info.sensitive && !info.extractable, "{info:?}");
    t.verify_mac(k, b"head", tag.as_bytes()).unwrap();
    assert_eq!(t.mac(k, b"head").unwrap(), tag);
    mismatch(t.verify_mac(k, b"tail", tag.as_bytes()));
}

/// Anchors: an unknown label reads `None`; a write is read back, replaced whole by the next
/// (longer or shorter, empty included), kept across a reopen; a value over [`ANCHOR_MAX`] is
/// refused and leaves the anchor as it was; anchors and keys have their own label spaces.
pub fn anchor_write_read_replace<B: Backend>(b: &B) {
    let t = b.open();
    let a = label("ledger-anchor");
    assert_eq!(t.read_anchor(&a).unwrap(), None);
    t.write_anchor(&a, b"seq 1 head 0000").unwrap();
    assert_eq!(
        t.read_anchor(&a).unwrap().as_deref(),
        Some(&b"seq 1 head 0000"[..])
    );
    t.write_anchor(&a, &[0xa5; ANCHOR_MAX]).unwrap();
    assert_eq!(t.read_anchor(&a).unwrap(), Some(vec![0xa5; ANCHOR_MAX]));
    t.write_anchor(&a, b"short").unwrap();
    assert_eq!(t.read_anchor(&a).unwrap().as_deref(), Some(&b"short"[..]));
    let r = t.write_anchor(&a, &[0; ANCHOR_MAX + 1]);
    assert!(
        matches!(r, Err(Error::TooLarge { len, limit, .. }) if len == ANCHOR_MAX + 1 && limit == ANCHOR_MAX),
        "{r:?}"
    );
    assert_eq!(t.read_anchor(&a).unwrap().as_deref(), Some(&b"short"[..]));
    let fresh = label("too-large");
    assert!(t.write_anchor(&fresh, &[0; ANCHOR_MAX + 1]).is_err());
    assert_eq!(t.read_anchor(&fresh).unwrap(), None);

    // Another label is another anchor; a key may bear an anchor's label.
    let b2 = label("other-anchor");
    t.write_anchor(&b2, b"").unwrap();
    assert_eq!(t.read_anchor(&b2).unwrap(), Some(Vec::new()));
    let k = mac_key(&t, "ledger-anchor");
    let tag = t.mac(k, b"x").unwrap();
    assert_eq!(t.read_anchor(&a).unwrap().as_deref(), Some(&b"short"[..]));

    t.write_anchor(&a, b"seq 2 head 1111").unwrap();
    let t = b.reopen(t);
    assert_eq!(
        t.read_anchor(&a).unwrap().as_deref(),
        Some(&b"seq 2 head 1111"[..])
    );
    assert_eq!(t.read_anchor(&b2).unwrap(), Some(Vec::new()));
    assert_eq!(t.read_anchor(&label("never-written")).unwrap(), None);
    let k = t.find(&label("ledger-anchor")).unwrap().unwrap();
    t.verify_mac(k, b"x", tag.as_bytes()).unwrap();
    t.write_anchor(&a, b"seq 3").unwrap();
    let t = b.reopen(t);
    assert_eq!(t.read_anchor(&a).unwrap().as_deref(), Some(&b"seq 3"[..]));
}

/// Two threads writing anchors at once, each its own and one shared, lose no write and leave a
/// store that opens again: each thread's own anchor holds its last value, the shared one the
/// last value of one of them, and a key made meanwhile is still there.
pub fn anchor_writes_from_two_threads<B: Backend>(b: &B) {
    const ROUNDS: u32 = 25;
    let t = b.open();
    let shared = label("shared");
    std::thread::scope(|sc| {
        for n in 0..2u32 {
            let (t, shared) = (&t, &shared);
            sc.spawn(move || {
                let own = label(&format!("own-{n}"));
                for i in 0..ROUNDS {
                    let value = format!("thread {n} round {i}");
                    t.write_anchor(&own, value.as_bytes()).unwrap();
                    t.write_anchor(shared, value.as_bytes()).unwrap();
                    assert_eq!(t.read_anchor(&own).unwrap(), Some(value.into_bytes()));
                }
            });
        }
        sc.spawn(|| mac_key(&t, "made-meanwhile"));
    });
    let check = |t: &B::Token| {
        for n in 0..2u32 {
            let last = format!("thread {n} round {}", ROUNDS - 1);
            assert_eq!(
                t.read_anchor(&label(&format!("own-{n}"))).unwrap(),
                Some(last.into_bytes())
            );
        }
        let s = t.read_anchor(&shared).unwrap().unwrap();
        assert!(
            (0..2).any(|n| s == format!("thread {n} round {}", ROUNDS - 1).into_bytes()),
            "{}",
            String::from_utf8_lossy(&s)
        );
        assert!(t.find(&label("made-meanwhile")).unwrap().is_some());
    };
    check(&t);
    let t = b.reopen(t);
    check(&t);
}

/// Writes `n` anchors of the HSM's size (41 bytes) one after another and returns the writes per
/// second: a measurement for the backends' ignored `measure_write_anchor_per_second`, printed,
/// never asserted.
pub fn anchor_writes_per_second<T: Token>(t: &T, n: u32) -> f64 {
    let anchor = KeyLabel::new("ledger-anchor").unwrap();
    let start = std::time::Instant::now();
    for i in 0..n {
        let value = [&[1u8][..], &u64::from(i).to_be_bytes()[..], &[0xab; 32]].concat();
        t.write_anchor(&anchor, &value).unwrap();
    }
    f64::from(n) / start.elapsed().as_secs_f64()
}

/// Instantiates every conformance test for a backend: `token_conformance!(fixture_expr);` where
/// the expression makes a fresh [`Backend`] for each test.
#[macro_export]
macro_rules! token_conformance {
    ($fixture:expr) => {
        $crate::token_conformance!(@tests $fixture;
            generate_sign_verify, unwrap_then_sign, no_private_key_export,
            wrong_wrapped_blob_refused, unknown_handle_refused, persistence_across_reopen,
            wrong_credential_refused, fill_random,
            distribute_key_wraps_out_to_a_device, distribute_key_policy,
            mac_round_trip, mac_key_policy, mac_key_survives_reopen,
            anchor_write_read_replace, anchor_writes_from_two_threads);
    };
    (@tests $fixture:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let fixture = $fixture;
                $crate::conformance::$name(&fixture);
            }
        )*
    };
}
