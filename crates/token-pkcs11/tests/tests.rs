//! The PKCS#11 token's integration tests, against SoftHSM2: one binary.
//!
//! - `conformance`: the shared Token suite (from trustfab-token, with its PKI property from
//!   `conformance/pki.rs`).
//! - `pkcs11`: what only this backend has (CKR codes, the session pool, token lookup, and
//!   OpenSC's pkcs11-tool as an independent client reading attributes and signing).
//!
//! Every test makes its own SoftHSM2 token in its own temporary directory with its own
//! SOFTHSM2_CONF. The module is process-global, so the tests take a lock and run one at a time.
//! A missing SoftHSM2 is a failure, never a skip.

// Fixtures outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod softhsm;

use std::path::{Path, PathBuf};

use softhsm::{SoftHsm, PIN};
use trustfab_token::conformance::Backend;
use trustfab_token::{Error, KeyHandle};
use trustfab_token_pkcs11::Pkcs11Token;

/// CKR_ATTRIBUTE_SENSITIVE (PKCS#11 2.40 §5.1).
const CKR_ATTRIBUTE_SENSITIVE: u64 = 0x11;

fn fixture() -> SoftHsm {
    SoftHsm::new()
}

fn read_all(dir: &Path, out: &mut Vec<u8>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p: PathBuf = e.unwrap().path();
        if p.is_dir() {
            read_all(&p, out);
        } else {
            out.extend(std::fs::read(&p).unwrap());
        }
    }
}

impl Backend for SoftHsm {
    type Token = Pkcs11Token;

    fn open(&self) -> Pkcs11Token {
        Pkcs11Token::open(&self.config(PIN, 2)).unwrap()
    }

    fn reopen(&self, token: Pkcs11Token) -> Pkcs11Token {
        drop(token);
        Pkcs11Token::open(&self.config(PIN, 2)).unwrap()
    }

    fn reopen_with_wrong_credential(&self, token: Pkcs11Token) -> Result<Pkcs11Token, Error> {
        drop(token);
        Pkcs11Token::open(&self.config("4321", 2))
    }

    fn probe_private_value(&self, token: &Pkcs11Token, key: KeyHandle) -> Result<usize, Error> {
        token.private_value_len(key)
    }

    fn assert_sensitive_refusal(&self, err: &Error) {
        match err {
            Error::Pkcs11 { function, rv, .. } => {
                assert_eq!(function, "C_GetAttributeValue");
                assert_eq!(*rv, CKR_ATTRIBUTE_SENSITIVE, "{err}");
            }
            e => panic!("expected CKR_ATTRIBUTE_SENSITIVE, got {e:?}"),
        }
    }

    fn at_rest(&self) -> Vec<u8> {
        let mut out = Vec::new();
        read_all(self.dir.path(), &mut out);
        out
    }
}

mod conformance {
    use super::fixture;
    trustfab_token::token_conformance!(fixture());

    #[test]
    fn device_certificate_signed_in_token() {
        super::conformance_pki::device_certificate_signed_in_token(&fixture());
    }
}

/// The conformance property that needs the PKI (see its module doc).
#[path = "../../token/conformance/pki.rs"]
mod conformance_pki;

mod pkcs11 {
    use super::*;
    use trustfab_pki::{Signer as _, SoftKey};
    use trustfab_token::{
        pkcs8_public_key, unwrap_with, wrap_for, Curve, KeyLabel, KeySpec, KeyUsage, MacKeySpec,
        PublicKey, Token, WrappedKey,
    };

    /// The spec of a key labelled `label`.
    fn key_spec(label: &str, curve: Curve, usage: KeyUsage) -> KeySpec {
        KeySpec::new(KeyLabel::new(label).unwrap(), curve, usage)
    }

    /// The session pool as `sessions()` reports it: one session open and idle after login;
    /// while threads sign, some are in use and never more than the limit are open; once they
    /// are done, none is in use.
    #[test]
    fn the_session_pool_reports_its_sessions() {
        let hsm = fixture();
        let token = Pkcs11Token::open(&hsm.config(PIN, 3)).unwrap();
        let s = token.sessions().unwrap();
        assert_eq!((s.open, s.in_use, s.max), (1, 0, 3));
        let key = token
            .generate(&key_spec("pooled", Curve::P256, KeyUsage::Sign))
            .unwrap();
        let done = std::sync::atomic::AtomicUsize::new(0);
        let mut busy_seen = 0;
        std::thread::scope(|sc| {
            for _ in 0..3 {
                sc.spawn(|| {
                    for _ in 0..300 {
                        token.sign(key, b"pool").unwrap();
                    }
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
            while done.load(std::sync::atomic::Ordering::SeqCst) < 3 {
                let s = token.sessions().unwrap();
                assert!(s.open <= 3 && s.in_use <= s.open, "{s:?}");
                busy_seen = busy_seen.max(s.in_use);
                std::thread::yield_now();
            }
        });
        assert!(
            busy_seen >= 1,
            "no session was seen in use while 3 threads signed"
        );
        let s = token.sessions().unwrap();
        assert_eq!(s.in_use, 0);
        assert!((1..=3).contains(&s.open), "{s:?}");
    }

    /// Two handles of one token in one process share the module's initialized context: both
    /// work at once, closing one leaves the other working, a second open with another PIN is
    /// refused although the token is logged in already, and once both are closed the module
    /// opens again.
    #[test]
    fn two_handles_in_one_process_share_the_module() {
        let hsm = fixture();
        let first = hsm.open();
        let key = first
            .generate(&key_spec("shared", Curve::P256, KeyUsage::Sign))
            .unwrap();
        let second = Pkcs11Token::open(&hsm.config(PIN, 2)).unwrap();
        let again = second
            .find(&KeyLabel::new("shared").unwrap())
            .unwrap()
            .unwrap();
        let public = first.public_key(key).unwrap();
        assert!(public
            .verify(b"one", first.sign(key, b"one").unwrap())
            .is_ok());
        assert!(public
            .verify(b"two", second.sign(again, b"two").unwrap())
            .is_ok());
        assert!(matches!(
            Pkcs11Token::open(&hsm.config("4321", 2)),
            Err(Error::WrongCredential)
        ));
        drop(first);
        assert!(public
            .verify(b"three", second.sign(again, b"three").unwrap())
            .is_ok());
        drop(second);
        let reopened = hsm.open();
        assert!(reopened
            .find(&KeyLabel::new("shared").unwrap())
            .unwrap()
            .is_some());
    }

    /// A P-256 key-transport key generated in the token under `label`, as an HSM has one.
    fn key_transport(t: &Pkcs11Token, label: &str) -> KeyHandle {
        t.generate(&key_spec(label, Curve::P256, KeyUsage::KeyTransport))
            .unwrap()
    }

    /// A software key on `spec`'s curve, wrapped for the key-transport key `kt` with `info` and
    /// unwrapped into the token as `spec`: a key imported as a package brings it. Returns the
    /// key in the token and the software key.
    fn import(t: &Pkcs11Token, kt: KeyHandle, info: &[u8], spec: &KeySpec) -> (KeyHandle, SoftKey) {
        let key = SoftKey::generate(spec.curve).unwrap();
        let wrapped = wrap_for(
            &t.public_key(kt).unwrap(),
            &key.secret_pkcs8_der().unwrap(),
            info,
        )
        .unwrap();
        (t.unwrap_key(kt, &wrapped, spec).unwrap(), key)
    }

    /// DESIGN.md property 1: the OEM signing key is unwrapped inside the token as sensitive and
    /// non-extractable, and the token refuses its CKA_VALUE with CKR_ATTRIBUTE_SENSITIVE.
    #[test]
    fn property_1_unwrapped_oem_key_refuses_cka_value() {
        let hsm = fixture();
        let t = hsm.open();
        let kt = key_transport(&t, "hsm-kt");
        let spec = key_spec("oem:acme:widget", Curve::P256, KeyUsage::Sign);
        let (k, oem) = import(&t, kt, b"package", &spec);
        let info = t.info(k).unwrap();
        assert!(info.sensitive && !info.extractable);
        let err = t.private_value_len(k).unwrap_err();
        hsm.assert_sensitive_refusal(&err);
        assert!(err.to_string().contains("AttributeSensitive"), "{err}");
        assert_eq!(t.public_key(k).unwrap().point(), oem.public_point());
    }

    /// CKR_KEY_UNEXTRACTABLE (PKCS#11 2.40 §5.1).
    const CKR_KEY_UNEXTRACTABLE: u64 = 0x6a;

    /// Not even wrapped can a key leave: C_WrapKey is refused for every key trustfab makes, and
    /// allowed for a key made extractable on purpose (so the probe can tell).
    #[test]
    fn no_key_can_be_wrapped_out() {
        let hsm = fixture();
        let t = hsm.open();
        let kt = key_transport(&t, "kt");
        let spec = key_spec("oem", Curve::P384, KeyUsage::Sign);
        let (imported, _) = import(&t, kt, b"", &spec);
        let generated = t
            .generate(&key_spec("gen", Curve::P256, KeyUsage::Sign))
            .unwrap();
        for k in [kt, imported, generated] {
            match t.wrap_out_len(k) {
                Err(Error::Pkcs11 { function, rv, .. }) => {
                    assert_eq!(function, "C_WrapKey");
                    assert_eq!(rv, CKR_KEY_UNEXTRACTABLE);
                }
                other => panic!("C_WrapKey was not refused: {other:?}"),
            }
        }
        let mut open = key_spec("open", Curve::P256, KeyUsage::Sign);
        open.extractable = true;
        let k = t.generate(&open).unwrap();
        assert!(t.wrap_out_len(k).unwrap() > 0);
    }

    /// Runs OpenSC's pkcs11-tool, a PKCS#11 client independent of ours, on the test token.
    fn pkcs11_tool(args: &[&str], stdin_file: Option<&Path>) -> String {
        let module = trustfab_token_pkcs11::module_path().unwrap();
        let mut cmd = std::process::Command::new("pkcs11-tool");
        cmd.arg("--module")
            .arg(module)
            .args([
                "--token-label",
                softhsm::TOKEN_LABEL,
                "--login",
                "--pin",
                PIN,
            ])
            .args(args);
        if let Some(f) = stdin_file {
            cmd.arg("--input-file").arg(f);
        }
        let out = cmd.output().unwrap_or_else(|e| {
            panic!("pkcs11-tool (OpenSC) is required: {e}; scripts/test.sh installs it")
        });
        assert!(
            out.status.success(),
            "pkcs11-tool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The "Access:", "Usage:" and "ID:" fields pkcs11-tool prints for the private key labelled
    /// `label`.
    fn access_usage_id(listing: &str, label: &str) -> (Vec<String>, Vec<String>, String) {
        let block = listing
            .split("Private Key Object")
            .find(|b| {
                b.lines()
                    .any(|l| l.trim() == format!("label:      {label}"))
            })
            .unwrap_or_else(|| panic!("no private key {label} in:\n{listing}"));
        let field = |name: &str| -> Vec<String> {
            block
                .lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .map(|v| v.split(',').map(|x| x.trim().to_owned()).collect())
                .unwrap_or_default()
        };
        let id = field("ID:").concat();
        (field("Access:"), field("Usage:"), id)
    }

    /// An independent PKCS#11 client sees what we claim: the unwrapped OEM key and the generated
    /// keys are sensitive and not extractable, and each has only its one usage. It also signs
    /// with the unwrapped key, and the signature verifies under the OEM's public key: the key
    /// in the token is the OEM's key.
    #[test]
    fn pkcs11_tool_sees_the_attributes_and_signs_with_the_unwrapped_key() {
        let hsm = fixture();
        let t = hsm.open();
        let kt = key_transport(&t, "hsm-kt");
        t.generate(&key_spec("hsm-identity", Curve::P256, KeyUsage::Sign))
            .unwrap();
        let spec = key_spec("oem", Curve::P256, KeyUsage::Sign);
        let (_, oem) = import(&t, kt, b"", &spec);
        drop(t);

        let listing = pkcs11_tool(&["--list-objects", "--type", "privkey"], None);
        for (label, usage) in [
            ("hsm-kt", "derive"),
            ("hsm-identity", "sign"),
            ("oem", "sign"),
        ] {
            let (access, usages, _) = access_usage_id(&listing, label);
            assert!(
                access.iter().any(|a| a == "sensitive"),
                "{label}: {access:?}"
            );
            assert!(
                !access.iter().any(|a| a == "extractable"),
                "{label}: {access:?}"
            );
            assert_eq!(usages, vec![usage.to_owned()], "{label}");
        }

        // pkcs11-tool picks the signing key by CKA_ID: it does not filter --sign by label.
        let (_, _, oem_id) = access_usage_id(&listing, "oem");
        assert_eq!(oem_id.len(), 32, "{oem_id}");
        let digest = Curve::P256.digest(b"signed by pkcs11-tool");
        let input = hsm.dir.path().join("digest.bin");
        std::fs::write(&input, digest.as_ref()).unwrap();
        let sig_path = hsm.dir.path().join("sig.raw");
        // Raw r || s, verified by aws-lc-rs as such: no conversion of ours is involved.
        pkcs11_tool(
            &[
                "--sign",
                "--mechanism",
                "ECDSA",
                "--signature-format",
                "rs",
                "--id",
                &oem_id,
                "--output-file",
                sig_path.to_str().unwrap(),
            ],
            Some(&input),
        );
        let sig = std::fs::read(&sig_path).unwrap();
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            oem.public_point(),
        )
        .verify(b"signed by pkcs11-tool", &sig)
        .unwrap();
    }

    /// A family key imported as a distribution key, as the HSM imports it.
    fn import_family(t: &Pkcs11Token, extractable: bool) -> (KeyHandle, KeyHandle, SoftKey) {
        let kt = key_transport(t, "hsm-kt");
        let mut spec = key_spec("family", Curve::P256, KeyUsage::Distribute);
        spec.extractable = extractable;
        let (d, family) = import(t, kt, b"package", &spec);
        (kt, d, family)
    }

    /// The distribution key in the token: CKA_VALUE refused with CKR_ATTRIBUTE_SENSITIVE;
    /// C_WrapKey allowed (it is CKA_EXTRACTABLE); and, seen by pkcs11-tool, sensitive and
    /// extractable with no usage at all (no CKA_SIGN, CKA_DERIVE, CKA_DECRYPT, CKA_UNWRAP, ...),
    /// its public object without usage either.
    #[test]
    fn distribution_key_is_sensitive_extractable_and_has_no_usage() {
        let hsm = fixture();
        let t = hsm.open();
        let (_, d, family) = import_family(&t, true);
        let err = t.private_value_len(d).unwrap_err();
        hsm.assert_sensitive_refusal(&err);
        assert!(t.wrap_out_len(d).unwrap() > 0);
        assert_eq!(t.public_key(d).unwrap().point(), family.public_point());
        drop(t);

        let listing = pkcs11_tool(&["--list-objects", "--type", "privkey"], None);
        let (access, usages, _) = access_usage_id(&listing, "family");
        assert!(access.iter().any(|a| a == "sensitive"), "{access:?}");
        assert!(access.iter().any(|a| a == "extractable"), "{access:?}");
        assert_eq!(usages, vec!["none".to_owned()], "{listing}");
        let public = pkcs11_tool(&["--list-objects", "--type", "pubkey"], None);
        let block = public
            .split("Public Key Object")
            .find(|b| b.lines().any(|l| l.trim() == "label:      family"))
            .unwrap_or_else(|| panic!("no public key object: {public}"));
        assert!(
            block.lines().any(|l| l.trim() == "Usage:      none"),
            "{block}"
        );
        // The same after a reopen: the token reports the key as a distribution key.
        let t = hsm.open();
        let d = t.find(&KeyLabel::new("family").unwrap()).unwrap().unwrap();
        let info = t.info(d).unwrap();
        assert_eq!(info.usage, KeyUsage::Distribute);
        assert!(info.sensitive && info.extractable, "{info:?}");
    }

    /// Wrapping out and importing a distribution key leave no session objects behind (the
    /// ephemeral key pair, Z, the KEK, the signing check copy), on success and on failure.
    #[test]
    fn distribution_key_operations_leave_no_session_objects() {
        let hsm = fixture();
        let t = hsm.open();
        let (kt, d, family) = import_family(&t, true);
        let device = SoftKey::generate(Curve::P256).unwrap();
        let recipient = PublicKey::from_point(Curve::P256, device.public_point()).unwrap();
        let before = t.object_count().unwrap();
        for i in 0..5u8 {
            let w = t.wrap_key(d, &recipient, &[i]).unwrap();
            let got = unwrap_with(&device.secret_pkcs8_der().unwrap(), &w).unwrap();
            // The device gets the canonical PKCS#8, not SoftHSM2's zero-padded encoding.
            assert_eq!(
                got.secret_pkcs8_der(),
                family.secret_pkcs8_der().unwrap().secret_pkcs8_der()
            );
        }
        assert_eq!(t.object_count().unwrap(), before, "after wrap_key");

        // An import: a key pair more (private and public object), nothing else.
        let other = SoftKey::generate(Curve::P256).unwrap();
        let other_der = other.secret_pkcs8_der().unwrap();
        let mut spec = key_spec("family-2", Curve::P256, KeyUsage::Distribute);
        spec.extractable = true;
        // A blob that declares a foreign public key unwraps but fails the signing check of the
        // session copy: refused, and the copy and the KEK are gone.
        let liar = forge(&t, kt, &other_der, &recipient);
        assert!(matches!(t.unwrap_key(kt, &liar, &spec), Err(Error::Unwrap)));
        assert_eq!(t.object_count().unwrap(), before, "after a refused import");
        // The positive control: the same forgery declaring the true key is imported.
        let honest = forge(&t, kt, &other_der, &pkcs8_public_key(&other_der).unwrap());
        t.unwrap_key(kt, &honest, &spec).unwrap();
        assert_eq!(t.object_count().unwrap(), before + 2, "after an import");
    }

    /// `key` wrapped for `kt` under a header that declares `declared` instead of the key's own
    /// public key: what a sender that lies about the key makes. The KDF binds the declared key,
    /// so the liar computes the KEK over the lying header; the blob unwraps, and only the token's
    /// signing check can tell.
    fn forge(
        t: &Pkcs11Token,
        kt: KeyHandle,
        key: &trustfab_types::SecretKeyDer,
        declared: &PublicKey,
    ) -> WrappedKey {
        use aws_lc_rs::agreement::{self, UnparsedPublicKey, ECDH_P256};
        use aws_lc_rs::key_wrap::{AesKek, KeyWrapPadded as _, AES_256};
        let kt_pub = t.public_key(kt).unwrap();
        let eph = agreement::PrivateKey::generate(&ECDH_P256).unwrap();
        let eph_point = eph.compute_public_key().unwrap();
        let header =
            trustfab_token::wrapped_header(eph_point.as_ref(), declared.clone(), b"").unwrap();
        let context = header.kdf_context(kt_pub.point());
        let kek = agreement::agree(
            &eph,
            UnparsedPublicKey::new(&ECDH_P256, kt_pub.point()),
            (),
            |z| Ok(trustfab_token::kek_from_shared_secret(z, &context).unwrap()),
        )
        .unwrap();
        let aes = AesKek::new(&AES_256, kek.as_ref()).unwrap();
        let plain = key.secret_pkcs8_der();
        let mut out = vec![0u8; plain.len() + 16];
        let n = aes.wrap_with_padding(plain, &mut out).unwrap().len();
        out.truncate(n);
        header.with_ciphertext(out).unwrap()
    }

    /// An independent PKCS#11 client sees the MAC key as we claim it: a generic secret key of
    /// 32 bytes, sensitive, never extractable, with no usage but MAC (pkcs11-tool 0.23 prints
    /// only CKA_VERIFY of a secret key's sign/verify pair, so CKA_SIGN is shown by its making an
    /// HMAC-SHA256 with the key, which our `verify_mac` accepts); and the anchor as one private
    /// CKO_DATA object (the older generation destroyed) holding `generation u64 | value`.
    #[test]
    fn pkcs11_tool_sees_the_mac_key_and_the_anchor() {
        let hsm = fixture();
        let t = hsm.open();
        let mac_label = KeyLabel::new("ledger-mac").unwrap();
        t.generate_mac(&MacKeySpec::new(mac_label.clone())).unwrap();
        let anchor = KeyLabel::new("ledger-anchor").unwrap();
        t.write_anchor(&anchor, b"seq 7").unwrap();
        t.write_anchor(&anchor, b"seq 8").unwrap();
        drop(t);

        let listing = pkcs11_tool(&["--list-objects", "--type", "secrkey"], None);
        let block = listing
            .split("Secret Key Object")
            .find(|b| b.lines().any(|l| l.trim() == "label:      ledger-mac"))
            .unwrap_or_else(|| panic!("no secret key ledger-mac in:\n{listing}"));
        assert!(block.starts_with("; Generic secret length 32"), "{block}");
        let field = |name: &str| -> Vec<String> {
            block
                .lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .map(|v| v.split(',').map(|x| x.trim().to_owned()).collect())
                .unwrap_or_default()
        };
        assert_eq!(field("Usage:"), vec!["verify".to_owned()], "{block}");
        let access = field("Access:");
        for want in [
            "sensitive",
            "always sensitive",
            "never extractable",
            "local",
        ] {
            assert!(access.iter().any(|a| a == want), "{want}: {access:?}");
        }
        assert!(!access.iter().any(|a| a == "extractable"), "{access:?}");

        let id = field("ID:").concat();
        let input = hsm.dir.path().join("message.bin");
        std::fs::write(&input, b"ledger head").unwrap();
        let tag_path = hsm.dir.path().join("tag.bin");
        pkcs11_tool(
            &[
                "--sign",
                "--mechanism",
                "SHA256-HMAC",
                "--id",
                &id,
                "--output-file",
                tag_path.to_str().unwrap(),
            ],
            Some(&input),
        );
        let tag = std::fs::read(&tag_path).unwrap();

        let data = pkcs11_tool(&["--list-objects", "--type", "data"], None);
        assert_eq!(
            data.matches("label:          'ledger-anchor'").count(),
            1,
            "{data}"
        );
        assert!(data.contains("application:    'trustfab anchor'"), "{data}");
        assert!(data.contains("flags:           private"), "{data}");
        let value_path = hsm.dir.path().join("anchor.bin");
        pkcs11_tool(
            &[
                "--read-object",
                "--type",
                "data",
                "--label",
                "ledger-anchor",
                "--output-file",
                value_path.to_str().unwrap(),
            ],
            None,
        );
        let stored = std::fs::read(&value_path).unwrap();
        assert_eq!(stored, [&2u64.to_be_bytes()[..], b"seq 8"].concat());

        let t = hsm.open();
        let k = t.find(&mac_label).unwrap().unwrap();
        t.verify_mac(k, b"ledger head", &tag).unwrap();
        assert_eq!(t.mac(k, b"ledger head").unwrap().as_bytes()[..], tag[..]);
        assert_eq!(
            t.read_anchor(&anchor).unwrap().as_deref(),
            Some(&b"seq 8"[..])
        );
    }

    /// Writes an anchor object as trustfab does (`generation u64 | value`), with pkcs11-tool:
    /// what a write that stopped before destroying the older generation, or a second writing
    /// process, leaves behind.
    fn write_anchor_object(hsm: &SoftHsm, label: &str, generation: u64, value: &[u8]) {
        let file = hsm.dir.path().join(format!("anchor-{generation}.bin"));
        std::fs::write(&file, [&generation.to_be_bytes()[..], value].concat()).unwrap();
        pkcs11_tool(
            &[
                "--write-object",
                file.to_str().unwrap(),
                "--type",
                "data",
                "--label",
                label,
                "--application-label",
                "trustfab anchor",
                "--private",
            ],
            None,
        );
    }

    /// Two generations of one anchor (a write stopped between creating the new object and
    /// destroying the old): the newest is read, and the next write leaves one object. Two
    /// objects of the same generation (two processes writing at once) read as the greater
    /// value, the same answer every time; an object without a generation is refused as
    /// malformed.
    #[test]
    fn anchor_generations_newest_wins_and_a_tie_takes_the_greater_value() {
        let hsm = fixture();
        let t = hsm.open();
        let label = KeyLabel::new("ledger-anchor").unwrap();
        t.write_anchor(&label, b"seq 1").unwrap();
        drop(t);
        write_anchor_object(&hsm, "ledger-anchor", 5, b"seq 5");
        let t = hsm.open();
        assert_eq!(
            t.read_anchor(&label).unwrap().as_deref(),
            Some(&b"seq 5"[..])
        );
        let before = t.object_count().unwrap();
        t.write_anchor(&label, b"seq 6").unwrap();
        assert_eq!(
            t.object_count().unwrap(),
            before - 1,
            "older generations destroyed"
        );
        assert_eq!(
            t.read_anchor(&label).unwrap().as_deref(),
            Some(&b"seq 6"[..])
        );
        drop(t);

        // Another process wrote generation 6 at the same instant: the greater value is taken,
        // and the next write leaves one object.
        write_anchor_object(&hsm, "ledger-anchor", 6, b"seq 6 by another process");
        let t = hsm.open();
        assert_eq!(
            t.read_anchor(&label).unwrap().as_deref(),
            Some(&b"seq 6 by another process"[..])
        );
        let before = t.object_count().unwrap();
        t.write_anchor(&label, b"seq 7").unwrap();
        assert_eq!(
            t.object_count().unwrap(),
            before - 1,
            "both of generation 6 destroyed"
        );
        assert_eq!(
            t.read_anchor(&label).unwrap().as_deref(),
            Some(&b"seq 7"[..])
        );
        drop(t);

        let file = hsm.dir.path().join("short.bin");
        std::fs::write(&file, b"short").unwrap();
        pkcs11_tool(
            &[
                "--write-object",
                file.to_str().unwrap(),
                "--type",
                "data",
                "--label",
                "bad-anchor",
                "--application-label",
                "trustfab anchor",
                "--private",
            ],
            None,
        );
        let t = hsm.open();
        let r = t.read_anchor(&KeyLabel::new("bad-anchor").unwrap());
        assert!(matches!(r, Err(Error::BadObject(_))), "{r:?}");
    }

    /// The speed of `write_anchor` on SoftHSM2 (C_FindObjects, C_GetAttributeValue,
    /// C_CreateObject, C_DestroyObject per write), printed, never asserted:
    /// `cargo test -p trustfab-token-pkcs11 -- --ignored --nocapture measure`.
    #[test]
    #[ignore = "a measurement, not a test"]
    fn measure_write_anchor_per_second() {
        let hsm = fixture();
        let t = hsm.open();
        let per_s = trustfab_token::conformance::anchor_writes_per_second(&t, 500);
        println!("PKCS#11 (SoftHSM2): {per_s:.0} write_anchor per second");
    }

    #[test]
    fn two_sessions_sign_in_parallel() {
        let hsm = fixture();
        let t = Pkcs11Token::open(&hsm.config(PIN, 2)).unwrap();
        let k = t
            .generate(&key_spec("par", Curve::P256, KeyUsage::Sign))
            .unwrap();
        let pk = t.public_key(k).unwrap();
        std::thread::scope(|sc| {
            for n in 0..4u8 {
                let (t, pk) = (&t, &pk);
                sc.spawn(move || {
                    for i in 0..50u8 {
                        let sig = t.sign(k, &[n, i]).unwrap();
                        pk.verify(&[n, i], &sig).unwrap();
                    }
                });
            }
        });
    }

    #[test]
    fn an_absent_token_label_is_refused() {
        let hsm = fixture();
        let mut c = hsm.config(PIN, 1);
        c.token_label = "no-such-token".into();
        assert!(matches!(Pkcs11Token::open(&c), Err(Error::NoToken(_))));
        // The module was finalized again: a good open still works.
        Pkcs11Token::open(&hsm.config(PIN, 1)).unwrap();
    }

    #[test]
    fn pin_does_not_print() {
        let c = fixture().config(PIN, 1);
        let s = format!("{c:?}");
        assert!(s.contains("elided") && !s.contains("\"1234\""), "{s}");
    }
}
