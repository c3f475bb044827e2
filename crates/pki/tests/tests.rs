//! Integration tests of trustfab-pki against the real validators: `openssl verify`, pkilint's
//! RFC 5280 linter, and rustls-webpki. Where new tests go:
//! - chain and profile interop with openssl / pkilint: `chains`
//! - revocation: `revocation`
//! - determinism and refusals of issuance: `issuance`
//! - the HSM service's station CA, station and service certificates, grant: `station`

// Test fixtures outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use trustfab_pki::pem;
use trustfab_pki::template::EXAMPLE_TEMPLATE;
use trustfab_pki::{
    build_crl, intermediate_ca, issue_device, self_signed_ca, validate, CaRole, CaSpec, Curve,
    DeviceRequest, Error, Issuer, Policy, PublicKey, Purpose, Reason, RenderInputs, Revoked,
    Signer, SoftKey, Template,
};
use trustfab_test_support::{openssl, pkilint, Scratch};
use trustfab_types::{DeviceUid, OemId, OsRng, Passphrase, ProductId, Serial, UnixTime};

const NOW: UnixTime = UnixTime(1_790_000_000); // 2026-09-21

mod station;

struct Oem {
    root_key: SoftKey,
    root: Vec<u8>,
    ca: Option<(SoftKey, Vec<u8>)>,
    id: OemId,
}

impl Oem {
    fn new(name: &str, curve: Curve, device_ca: bool) -> Self {
        let root_key = SoftKey::generate(curve).unwrap();
        let spec = |role, cn: &str, serial| CaSpec {
            role,
            common_name: cn.into(),
            organization: name.into(),
            serial: Serial::from_u64(serial).unwrap(),
            not_before: UnixTime(NOW.0 - 86_400),
            days: 3650,
        };
        let root = self_signed_ca(
            &spec(CaRole::OemRoot, &format!("{name} Root CA"), 1),
            &root_key,
        )
        .unwrap();
        let ca = device_ca.then(|| {
            let k = SoftKey::generate(curve).unwrap();
            let issuer = Issuer::new(&root, &root_key).unwrap();
            let pk = PublicKey::from_point(curve, k.public_point()).unwrap();
            let der = intermediate_ca(
                &spec(CaRole::DeviceCa, &format!("{name} Device CA"), 2),
                &pk,
                &issuer,
            )
            .unwrap();
            (k, der)
        });
        Self {
            root_key,
            root,
            ca,
            id: OemId::new(name).unwrap(),
        }
    }

    fn issuer(&self) -> Issuer<'_> {
        match &self.ca {
            Some((k, der)) => Issuer::new(der, k).unwrap(),
            None => Issuer::new(&self.root, &self.root_key).unwrap(),
        }
    }

    fn intermediates(&self) -> Vec<Vec<u8>> {
        self.ca.iter().map(|(_, d)| d.clone()).collect()
    }

    fn issue(&self, template: &Template, uid: u8, serial: u64, curve: Curve) -> Vec<u8> {
        let device = SoftKey::generate(curve).unwrap();
        let pk = PublicKey::from_point(curve, device.public_point()).unwrap();
        let product = ProductId::new("thermostat").unwrap();
        let uid = DeviceUid::new(&[0x01, 0x23, uid]).unwrap();
        let serial = Serial::from_u64(serial).unwrap();
        let req = DeviceRequest {
            inputs: RenderInputs {
                oem: &self.id,
                product: &product,
                uid: &uid,
                serial: &serial,
            },
            public_key: &pk,
            now: NOW,
        };
        issue_device(template, &req, &self.issuer()).unwrap()
    }

    fn policy<'a>(
        &'a self,
        intermediates: &'a [Vec<u8>],
        crls: &'a [Vec<u8>],
        now: UnixTime,
    ) -> Policy<'a> {
        Policy {
            root: &self.root,
            intermediates,
            crls,
            now,
            purpose: Purpose::ClientAuth,
        }
    }
}

mod chains {
    use super::*;

    fn check(curve: Curve, device_ca: bool) {
        let oem = Oem::new("acme", curve, device_ca);
        let other = Oem::new("globex", curve, device_ca);
        let template = Template::from_toml(EXAMPLE_TEMPLATE).unwrap();
        let s = Scratch::new();
        let root = s.write("root.pem", pem::cert_pem(&oem.root));
        let other_root = s.write("other-root.pem", pem::cert_pem(&other.root));
        let untrusted = oem
            .ca
            .as_ref()
            .map(|(_, d)| s.write("device-ca.pem", pem::cert_pem(d)));
        let mut to_lint = vec![root.clone()];
        to_lint.extend(untrusted.clone());
        let ints = oem.intermediates();
        for i in 0..3u8 {
            let der = oem.issue(&template, i, 1000 + u64::from(i), curve);
            let leaf = s.write(&format!("device-{i}.pem"), pem::cert_pem(&der));
            let at = ["-attime", "1790000000"];
            let v = openssl::verify(&root, untrusted.as_deref(), None, &at, &leaf);
            assert!(
                v.ok,
                "openssl refused a {curve} device cert (device CA: {device_ca}): {}",
                v.output
            );
            let v = openssl::verify(
                &root,
                untrusted.as_deref(),
                None,
                &["-attime", "1790000000", "-purpose", "sslclient"],
                &leaf,
            );
            assert!(v.ok, "openssl refused it as a TLS client: {}", v.output);
            // Checked against another OEM's root: refused.
            let v = openssl::verify(&other_root, untrusted.as_deref(), None, &at, &leaf);
            assert!(
                !v.ok,
                "another OEM's root accepted our device: {}",
                v.output
            );
            validate(&der, &oem.policy(&ints, &[], NOW)).unwrap();
            let other_ints = other.intermediates();
            let refused = validate(&der, &other.policy(&other_ints, &[], NOW));
            assert!(
                matches!(refused, Err(Error::Invalid(webpki::Error::UnknownIssuer))),
                "{refused:?}"
            );
            to_lint.push(leaf);
        }
        for cert in &to_lint {
            let findings = pkilint::errors(cert, &[]);
            assert!(
                findings.is_empty(),
                "pkilint on {}: {findings:?}",
                cert.display()
            );
        }
    }

    #[test]
    fn p256_root_only_openssl_and_pkilint_accept() {
        check(Curve::P256, false);
    }

    #[test]
    fn p256_with_device_ca_openssl_and_pkilint_accept() {
        check(Curve::P256, true);
    }

    #[test]
    fn p384_root_only_openssl_and_pkilint_accept() {
        check(Curve::P384, false);
    }

    #[test]
    fn p384_with_device_ca_openssl_and_pkilint_accept() {
        check(Curve::P384, true);
    }

    /// pkilint 0.13 flags `urn:` URIs in a SAN as `pkix.invalid_uri_syntax` because the
    /// `validators` library it pins wants an authority component; RFC 8141 URNs have none. That
    /// one finding is allowed, and nothing else.
    #[test]
    fn urn_san_lints_clean_but_for_the_known_false_positive() {
        let text = EXAMPLE_TEMPLATE.replace(
            "dns = [\"{uid}.{product}.devices.acme.example\"]",
            "uri = [\"urn:dev:ops:acme-{product}-{uid}\"]",
        );
        let template = Template::from_toml(&text).unwrap();
        let oem = Oem::new("acme", Curve::P256, true);
        let s = Scratch::new();
        let leaf = s.write(
            "d.pem",
            pem::cert_pem(&oem.issue(&template, 1, 77, Curve::P256)),
        );
        let all = pkilint::errors(&leaf, &[]);
        assert_eq!(all.len(), 1, "{all:?}");
        assert!(all[0].starts_with("pkix.invalid_uri_syntax"), "{all:?}");
        assert!(pkilint::errors(&leaf, &["pkix.invalid_uri_syntax"]).is_empty());
    }

    #[test]
    fn encrypted_key_file_is_read_by_openssl() {
        let key = SoftKey::generate(Curve::P256).unwrap();
        let pass = Passphrase::new("interop passphrase".into()).unwrap();
        let s = Scratch::new();
        let path = s.write(
            "k.pem",
            key.to_encrypted_pem(&pass, &OsRng).unwrap().as_bytes(),
        );
        let out = openssl::pkey_pubout(&path, "interop passphrase");
        assert!(out.ok, "{}", out.output);
        let pk = trustfab_pki::public_key_from_pem(&out.output).unwrap();
        assert_eq!(pk.point(), key.public_point());
        assert!(!openssl::pkey_pubout(&path, "wrong").ok);
    }
}

mod revocation {
    use super::*;

    #[test]
    fn revoked_device_is_refused_by_webpki_and_openssl() {
        let oem = Oem::new("acme", Curve::P256, true);
        let template = Template::from_toml(EXAMPLE_TEMPLATE).unwrap();
        let good = oem.issue(&template, 1, 501, Curve::P256);
        let bad = oem.issue(&template, 2, 502, Curve::P256);
        let revoked = [Revoked {
            serial: Serial::from_u64(502).unwrap(),
            at: NOW,
            reason: Reason::KeyCompromise,
        }];
        let crl = build_crl(
            &oem.issuer(),
            &revoked,
            1,
            NOW,
            UnixTime(NOW.0 + 7 * 86_400),
        )
        .unwrap();
        let crls = [crl.clone()];
        let ints = oem.intermediates();
        validate(&good, &oem.policy(&ints, &crls, NOW)).unwrap();
        let r = validate(&bad, &oem.policy(&ints, &crls, NOW));
        assert!(
            matches!(r, Err(Error::Invalid(webpki::Error::CertRevoked))),
            "{r:?}"
        );
        // Without the CRL the same certificate still validates: revocation comes from the CRL.
        validate(&bad, &oem.policy(&ints, &[], NOW)).unwrap();
        // An expired CRL is refused rather than trusted.
        let late = UnixTime(NOW.0 + 8 * 86_400);
        let r = validate(&good, &oem.policy(&ints, &crls, late));
        assert!(
            matches!(r, Err(Error::Invalid(webpki::Error::CrlExpired { .. }))),
            "{r:?}"
        );

        let s = Scratch::new();
        let root = s.write("root.pem", pem::cert_pem(&oem.root));
        let int = s.write("ca.pem", pem::cert_pem(&ints[0]));
        let crl_path = s.write("crl.pem", pem::encode("X509 CRL", &crl));
        let at = ["-attime", "1790000100"];
        let ok = openssl::verify(
            &root,
            Some(&int),
            Some(&crl_path),
            &at,
            &s.write("g.pem", pem::cert_pem(&good)),
        );
        assert!(ok.ok, "{}", ok.output);
        let no = openssl::verify(
            &root,
            Some(&int),
            Some(&crl_path),
            &at,
            &s.write("b.pem", pem::cert_pem(&bad)),
        );
        assert!(!no.ok && no.output.contains("revoked"), "{}", no.output);
    }

    #[test]
    fn crl_from_another_issuer_fails_closed() {
        let oem = Oem::new("acme", Curve::P256, false);
        let other = Oem::new("globex", Curve::P256, false);
        let template = Template::from_toml(EXAMPLE_TEMPLATE).unwrap();
        let der = oem.issue(&template, 1, 9, Curve::P256);
        let crl = build_crl(&other.issuer(), &[], 1, NOW, UnixTime(NOW.0 + 86_400)).unwrap();
        let crls = [crl];
        let r = validate(&der, &oem.policy(&[], &crls, NOW));
        assert!(
            matches!(
                r,
                Err(Error::Invalid(webpki::Error::UnknownRevocationStatus))
            ),
            "{r:?}"
        );
    }

    #[test]
    fn malformed_crl_is_a_clear_error() {
        let oem = Oem::new("acme", Curve::P256, false);
        let template = Template::from_toml(EXAMPLE_TEMPLATE).unwrap();
        let der = oem.issue(&template, 1, 9, Curve::P256);
        let crls = [b"\x30\x03\x02\x01\x01".to_vec()];
        assert!(matches!(
            validate(&der, &oem.policy(&[], &crls, NOW)),
            Err(Error::BadCrl(_))
        ));
    }
}

mod issuance {
    use super::*;
    use x509_parser::prelude::{parse_x509_certificate, GeneralName};

    fn tbs(der: &[u8]) -> Vec<u8> {
        let (_, c) = parse_x509_certificate(der).unwrap();
        c.tbs_certificate.as_ref().to_vec()
    }

    #[test]
    fn same_inputs_give_the_same_tbs_certificate() {
        let oem = Oem::new("acme", Curve::P256, true);
        let template = Template::from_toml(EXAMPLE_TEMPLATE).unwrap();
        let device = SoftKey::generate(Curve::P256).unwrap();
        let pk = PublicKey::from_point(Curve::P256, device.public_point()).unwrap();
        let product = ProductId::new("thermostat").unwrap();
        let uid = DeviceUid::new(&[9, 9, 9]).unwrap();
        let issue = |serial: u64| {
            let serial = Serial::from_u64(serial).unwrap();
            let req = DeviceRequest {
                inputs: RenderInputs {
                    oem: &oem.id,
                    product: &product,
                    uid: &uid,
                    serial: &serial,
                },
                public_key: &pk,
                now: NOW,
            };
            issue_device(&template, &req, &oem.issuer()).unwrap()
        };
        let (a, b, c) = (issue(42), issue(42), issue(43));
        assert_eq!(tbs(&a), tbs(&b));
        assert_ne!(tbs(&a), tbs(&c));
    }

    #[test]
    fn device_certificate_follows_the_template() {
        let oem = Oem::new("acme", Curve::P256, true);
        let template = Template::from_toml(EXAMPLE_TEMPLATE).unwrap();
        let der = oem.issue(&template, 0xaa, 0x8000_0000_0000_0001, Curve::P256);
        let (_, c) = parse_x509_certificate(&der).unwrap();
        // Serial with the high bit set stays positive.
        assert_eq!(c.raw_serial(), &[0x00, 0x80, 0, 0, 0, 0, 0, 0, 0x01]);
        assert_eq!(c.validity().not_after.to_datetime().year(), 9999);
        assert!(!c.is_ca());
        let bc = c.basic_constraints().unwrap().unwrap();
        assert!(bc.critical && !bc.value.ca);
        assert!(c.key_usage().unwrap().unwrap().value.digital_signature());
        assert!(c
            .get_extension_unique(&oid_registry::OID_X509_EXT_SUBJECT_KEY_IDENTIFIER)
            .unwrap()
            .is_some());
        assert!(c
            .get_extension_unique(&oid_registry::OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER)
            .unwrap()
            .is_some());
        let subject = c.subject().to_string();
        assert!(subject.contains("CN=thermostat 0123aa"), "{subject}");
        let san = c.subject_alternative_name().unwrap().unwrap();
        let other = san.value.general_names.iter().find_map(|g| match g {
            GeneralName::OtherName(oid, value) => Some((oid.to_id_string(), value.to_vec())),
            _ => None,
        });
        let (oid, value) = other.expect("hardwareModuleName");
        assert_eq!(oid, "1.3.6.1.5.5.7.8.4");
        // [0] EXPLICIT SEQUENCE { hwType OID, hwSerialNum OCTET STRING "0123aa" }
        assert!(value.ends_with(b"\x04\x060123aa"), "{value:02x?}");
    }

    #[test]
    fn expired_certificate_is_refused() {
        let oem = Oem::new("acme", Curve::P256, false);
        let text = EXAMPLE_TEMPLATE.replace("no_expiry = true", "days = 1");
        let template = Template::from_toml(&text).unwrap();
        let der = oem.issue(&template, 1, 5, Curve::P256);
        validate(&der, &oem.policy(&[], &[], NOW)).unwrap();
        let later = UnixTime(NOW.0 + 2 * 86_400);
        let r = validate(&der, &oem.policy(&[], &[], later));
        assert!(
            matches!(r, Err(Error::Invalid(webpki::Error::CertExpired { .. }))),
            "{r:?}"
        );
        let s = Scratch::new();
        let v = openssl::verify(
            &s.write("r.pem", pem::cert_pem(&oem.root)),
            None,
            None,
            &["-attime", &later.0.to_string()],
            &s.write("d.pem", pem::cert_pem(&der)),
        );
        assert!(!v.ok && v.output.contains("expired"), "{}", v.output);
    }

    #[test]
    fn serial_outside_a_sequential_range_is_refused() {
        let oem = Oem::new("acme", Curve::P256, false);
        let text = EXAMPLE_TEMPLATE.replace(
            "scheme = \"random\"  # positive, from a CSPRNG; or: scheme = \"sequential\", first = 1, last = 100000\nbits = 64",
            "scheme = \"sequential\"\nfirst = 100\nlast = 199",
        );
        let template = Template::from_toml(&text).unwrap();
        let device = SoftKey::generate(Curve::P256).unwrap();
        let pk = PublicKey::from_point(Curve::P256, device.public_point()).unwrap();
        let product = ProductId::new("p").unwrap();
        let uid = DeviceUid::new(&[1]).unwrap();
        let serial = Serial::from_u64(200).unwrap();
        let req = DeviceRequest {
            inputs: RenderInputs {
                oem: &oem.id,
                product: &product,
                uid: &uid,
                serial: &serial,
            },
            public_key: &pk,
            now: NOW,
        };
        assert!(matches!(
            issue_device(&template, &req, &oem.issuer()),
            Err(Error::SerialOutOfRange { .. })
        ));
    }

    #[test]
    fn an_issuer_key_that_does_not_match_its_certificate_is_refused() {
        let oem = Oem::new("acme", Curve::P256, false);
        let stranger = SoftKey::generate(Curve::P256).unwrap();
        assert!(matches!(
            Issuer::new(&oem.root, &stranger),
            Err(Error::IssuerKeyMismatch)
        ));
    }
}

/// The fuzz seeds (`fuzz/seeds/`), replayed through the fuzz targets' entry points on every
/// `cargo test`: none may panic, and the valid ones must be accepted.
mod fuzz_seeds {
    use super::*;
    use std::path::PathBuf;

    fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/seeds")
            .join(target);
        let mut out: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| {
                let p = e.unwrap().path();
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        out.sort();
        assert!(!out.is_empty(), "no seeds in {}", dir.display());
        out
    }

    #[test]
    fn template_seeds_parse() {
        for (name, bytes) in seeds("template") {
            let text = std::str::from_utf8(&bytes).unwrap();
            Template::from_toml(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn spki_seeds_parse() {
        for (name, bytes) in seeds("spki") {
            let pk = match std::str::from_utf8(&bytes) {
                Ok(text) if text.contains("-----BEGIN") => trustfab_pki::public_key_from_pem(text),
                _ => PublicKey::from_spki_der(&bytes).map_err(Error::from),
            };
            assert_eq!(
                pk.unwrap_or_else(|e| panic!("{name}: {e}")).curve(),
                Curve::P256
            );
        }
    }

    #[test]
    fn certificate_seeds_parse() {
        for (name, bytes) in seeds("certificate") {
            let der = pem::cert_from_pem_or_der(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(x509_parser::parse_x509_certificate(&der).is_ok(), "{name}");
        }
    }

    /// Key files made by openssl (scrypt and PBKDF2 flavours of PBES2) open with their
    /// passphrase and refuse another.
    #[test]
    fn key_file_seeds_open() {
        let pass = Passphrase::new("fuzz".into()).unwrap();
        let wrong = Passphrase::new("fuzzy".into()).unwrap();
        for (name, bytes) in seeds("key_file") {
            let text = std::str::from_utf8(&bytes).unwrap();
            SoftKey::from_encrypted_pem(text, &pass).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                matches!(
                    SoftKey::from_encrypted_pem(text, &wrong),
                    Err(Error::WrongPassphrase)
                ),
                "{name}"
            );
        }
    }
}

mod hsm_identity {
    use super::*;
    use trustfab_pki::{certify_hsm, HsmCertificates, HsmIdentity, HsmRequest};

    fn vendor() -> (SoftKey, Vec<u8>) {
        let key = SoftKey::generate(Curve::P256).unwrap();
        let spec = CaSpec {
            role: CaRole::VendorRoot,
            common_name: "Vendor Root".into(),
            organization: "Vendor".into(),
            serial: Serial::from_u64(1).unwrap(),
            not_before: UnixTime(NOW.0 - 86_400),
            days: 3650,
        };
        let root = self_signed_ca(&spec, &key).unwrap();
        (key, root)
    }

    fn certified(vendor_key: &SoftKey, vendor_root: &[u8]) -> (HsmRequest, HsmCertificates) {
        let identity = SoftKey::generate(Curve::P256).unwrap();
        let kt = SoftKey::generate(Curve::P256).unwrap();
        let kt_pk = PublicKey::from_point(Curve::P256, kt.public_point()).unwrap();
        let req = HsmRequest::new("hsm-0001", &identity, &kt_pk).unwrap();
        let parsed = HsmRequest::from_pem(&req.to_pem()).unwrap();
        assert_eq!(parsed, req);
        let issuer = Issuer::new(vendor_root, vendor_key).unwrap();
        let (s1, s2) = (Serial::from_u64(10).unwrap(), Serial::from_u64(11).unwrap());
        let certs = certify_hsm(&parsed, &issuer, (&s1, &s2), NOW, 365).unwrap();
        (req, certs)
    }

    #[test]
    fn vendor_certifies_an_hsm_and_an_oem_validates_it() {
        let (vk, vroot) = vendor();
        let (req, certs) = certified(&vk, &vroot);
        let bundle = HsmCertificates::from_pem(&certs.to_pem()).unwrap();
        let id = HsmIdentity::validate(&bundle, &vroot, NOW).unwrap();
        assert_eq!(id.hsm_id, "hsm-0001");
        assert_eq!(id.kt_key, req.kt_key);
        assert_eq!(id.identity_key, req.identity_key);
        let s = Scratch::new();
        let root = s.write("v.pem", pem::cert_pem(&vroot));
        for (name, der) in [
            ("id.pem", &certs.identity),
            ("kt.pem", &certs.key_transport),
        ] {
            let p = s.write(name, pem::cert_pem(der));
            let v = openssl::verify(&root, None, None, &["-attime", "1790000000"], &p);
            assert!(v.ok, "{}", v.output);
            assert!(pkilint::errors(&p, &[]).is_empty(), "{name}");
        }
    }

    #[test]
    fn an_hsm_certified_by_another_vendor_is_refused() {
        let (vk, vroot) = vendor();
        let (other_k, other_root) = vendor();
        let (_, certs) = certified(&other_k, &other_root);
        // The impostor vendor copies the genuine vendor's name: the path is found and the
        // signature check refuses it.
        let r = HsmIdentity::validate(&certs, &vroot, NOW);
        assert!(
            matches!(
                r,
                Err(Error::Invalid(webpki::Error::InvalidSignatureForPublicKey))
            ),
            "{r:?}"
        );
        drop(vk);
    }

    #[test]
    fn swapped_or_mixed_certificates_are_refused() {
        let (vk, vroot) = vendor();
        let (_, a) = certified(&vk, &vroot);
        let swapped = HsmCertificates {
            identity: a.key_transport.clone(),
            key_transport: a.identity.clone(),
        };
        assert!(HsmIdentity::validate(&swapped, &vroot, NOW).is_err());
        // Same id on both, but from two different HSMs' requests: keys differ, ids equal; a
        // mixed pair is caught when the ids differ.
        let identity = SoftKey::generate(Curve::P256).unwrap();
        let kt = SoftKey::generate(Curve::P256).unwrap();
        let kt_pk = PublicKey::from_point(Curve::P256, kt.public_point()).unwrap();
        let other = HsmRequest::new("hsm-0002", &identity, &kt_pk).unwrap();
        let issuer = Issuer::new(&vroot, &vk).unwrap();
        let (s1, s2) = (Serial::from_u64(20).unwrap(), Serial::from_u64(21).unwrap());
        let b = certify_hsm(&other, &issuer, (&s1, &s2), NOW, 365).unwrap();
        let mixed = HsmCertificates {
            identity: a.identity,
            key_transport: b.key_transport,
        };
        let e = HsmIdentity::validate(&mixed, &vroot, NOW).unwrap_err();
        assert!(e.to_string().contains("names HSM"), "{e}");
    }

    #[test]
    fn a_request_whose_binding_was_changed_is_refused() {
        let identity = SoftKey::generate(Curve::P256).unwrap();
        let kt = SoftKey::generate(Curve::P256).unwrap();
        let attacker = SoftKey::generate(Curve::P256).unwrap();
        let kt_pk = PublicKey::from_point(Curve::P256, kt.public_point()).unwrap();
        let req = HsmRequest::new("hsm-0001", &identity, &kt_pk).unwrap();
        // Replace the key-transport key with the attacker's: the binding no longer verifies.
        let att_pk = PublicKey::from_point(Curve::P256, attacker.public_point()).unwrap();
        let text = req.to_pem().replace(
            &pem::encode("PUBLIC KEY", &kt_pk.to_spki_der()),
            &pem::encode("PUBLIC KEY", &att_pk.to_spki_der()),
        );
        let e = HsmRequest::from_pem(&text).unwrap_err();
        assert!(e.to_string().contains("binding does not verify"), "{e}");
    }
}

/// The HSM request and identity seeds (`fuzz/seeds/hsm_request`) parse and verify.
#[test]
fn hsm_request_seeds_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/hsm_request");
    let request = std::fs::read_to_string(dir.join("request.pem")).unwrap();
    let req = trustfab_pki::HsmRequest::from_pem(&request).unwrap();
    assert_eq!(req.hsm_id, "hsm-demo-01");
    let identity = std::fs::read_to_string(dir.join("identity.pem")).unwrap();
    trustfab_pki::HsmCertificates::from_pem(&identity).unwrap();
}
