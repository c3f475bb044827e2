//! The HSM service's certificates (`trustfab_pki::station`): station requests, the station CA,
//! station and service certificates and the grant extension, checked against rustls-webpki (as
//! the service's TLS verifier uses it), openssl and pkilint.

use super::*;
use proptest::prelude::*;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime as PkiTime};
use trustfab_pki::station::{
    certify_station, decode_grant, encode_grant, parse_station_cert, service_certificate,
    station_ca, StationGrant, StationRequest,
};
use trustfab_types::{HsmId, ProductKey, StationId};
use webpki::{EndEntityCert, KeyUsage};

const DAY: u64 = 86_400;

struct StationCa {
    key: SoftKey,
    der: Vec<u8>,
}

impl StationCa {
    fn new() -> Self {
        let key = SoftKey::generate(Curve::P256).unwrap();
        let der = station_ca(
            &HsmId::new("hsm-0001").unwrap(),
            &Serial::from_u64(1).unwrap(),
            UnixTime(NOW.0 - DAY),
            3650,
            &key,
        )
        .unwrap();
        Self { key, der }
    }

    fn issuer(&self) -> Issuer<'_> {
        Issuer::new(&self.der, &self.key).unwrap()
    }

    /// A station key, its request (through PEM) and its certificate.
    fn station(&self, id: &str, grant: &StationGrant, serial: u64) -> (StationRequest, Vec<u8>) {
        let key = SoftKey::generate(Curve::P256).unwrap();
        let req = StationRequest::new(&StationId::new(id).unwrap(), &key).unwrap();
        let req = StationRequest::from_pem(&req.to_pem()).unwrap();
        let der = certify_station(
            &req,
            grant,
            &Serial::from_u64(serial).unwrap(),
            NOW,
            365,
            &self.issuer(),
        )
        .unwrap();
        (req, der)
    }

    fn service(&self, names: &[&str]) -> Result<Vec<u8>, Error> {
        let key = SoftKey::generate(Curve::P256).unwrap();
        let pk = PublicKey::from_point(Curve::P256, key.public_point()).unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        service_certificate(
            &names,
            &pk,
            &Serial::from_u64(7).unwrap(),
            NOW,
            30,
            &self.issuer(),
        )
    }
}

fn product(s: &str) -> ProductKey {
    ProductKey::parse(s).unwrap()
}

fn grant() -> StationGrant {
    StationGrant {
        products: vec![product("acme/thermostat"), product("acme/sensor-1")],
        max_devices: Some(10_000),
        max_per_day: Some(500),
    }
}

/// rustls-webpki's path validation, as the service's verifier does it: the station CA as the
/// only anchor.
fn webpki_verify(anchor: &[u8], leaf: &[u8], usage: KeyUsage) -> Result<(), webpki::Error> {
    let anchor = CertificateDer::from(anchor);
    let anchors = [webpki::anchor_from_trusted_cert(&anchor)?];
    let leaf = CertificateDer::from(leaf);
    let ee = EndEntityCert::try_from(&leaf)?;
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &[],
        PkiTime::since_unix_epoch(std::time::Duration::from_secs(NOW.0)),
        usage,
        None,
        None,
    )?;
    Ok(())
}

/// Replaces the one occurrence of `from` in `der` by `to` (same length).
fn patch(der: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at: Vec<usize> = der
        .windows(from.len())
        .enumerate()
        .filter(|(_, w)| *w == from)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "{from:02x?} occurs {} times", at.len());
    let mut out = der.to_vec();
    out[at[0]..at[0] + to.len()].copy_from_slice(to);
    out
}

#[test]
fn request_certify_parse_round_trip() {
    let ca = StationCa::new();
    for curve in [Curve::P256, Curve::P384] {
        let key = SoftKey::generate(curve).unwrap();
        let id = StationId::new("line-3.st-01").unwrap();
        let req = StationRequest::new(&id, &key).unwrap();
        let text = req.to_pem();
        assert!(
            text.starts_with("-----BEGIN CERTIFICATE REQUEST-----\n"),
            "{text}"
        );
        let parsed = StationRequest::from_pem(&text).unwrap();
        assert_eq!(parsed, req);
        assert_eq!(parsed.station_id, id);
        assert_eq!(parsed.public_key.point(), key.public_point());

        // A serial with its high bit set stays positive and reads back.
        let serial = Serial::from_u64(0x8000_0000_0000_0001).unwrap();
        let der = certify_station(&parsed, &grant(), &serial, NOW, 365, &ca.issuer()).unwrap();
        let cert = parse_station_cert(&der).unwrap();
        assert_eq!(cert.station_id, id);
        assert_eq!(cert.serial, serial);
        assert_eq!(cert.not_after, UnixTime(NOW.0 + 365 * DAY));
        assert_eq!(cert.grant, grant());
        let sha = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
        assert_eq!(&cert.fingerprint[..], sha.as_ref());
        assert!(cert.grant.allows(&product("acme/sensor-1")));
        assert!(!cert.grant.allows(&product("acme/sensor-2")));
        assert!(!cert.grant.allows(&product("globex/thermostat")));
    }
}

#[test]
fn station_certificate_profile() {
    use x509_parser::prelude::{parse_x509_certificate, GeneralName};
    let ca = StationCa::new();
    let (_, der) = ca.station("st-01", &grant(), 42);
    let (_, c) = parse_x509_certificate(&der).unwrap();
    assert_eq!(
        c.subject().to_string(),
        "CN=station st-01, serialNumber=st-01"
    );
    assert!(!c.is_ca());
    let bc = c.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && !bc.value.ca);
    let ku = c.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign() && !ku.key_agreement());
    let eku = c.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth && eku.other.is_empty() && !eku.any);
    let san = c.subject_alternative_name().unwrap().unwrap();
    assert!(!san.critical);
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::URI("urn:trustfab:station:st-01")]
    );
    assert!(c
        .get_extension_unique(&oid_registry::OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER)
        .unwrap()
        .is_some());
    let ext = c
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == "1.3.6.1.4.1.55555.3.1")
        .expect("grant extension");
    assert!(!ext.critical);
    assert_eq!(ext.value, encode_grant(&grant()).as_slice());

    let (_, root) = parse_x509_certificate(&ca.der).unwrap();
    assert_eq!(
        root.subject().to_string(),
        "O=trustfab, CN=station CA, serialNumber=hsm-0001"
    );
    assert_eq!(root.subject(), root.issuer());
    let bc = root.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca && bc.path_len_constraint == Some(0));
    let ku = root.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
}

#[test]
fn request_with_a_bad_signature_is_refused() {
    let key = SoftKey::generate(Curve::P256).unwrap();
    let req = StationRequest::new(&StationId::new("st-01").unwrap(), &key).unwrap();
    let der = pem::decode_one(&req.to_pem(), "CERTIFICATE REQUEST").unwrap();

    // The last octet of the signature changed.
    let mut bad = der.clone();
    *bad.last_mut().unwrap() ^= 0x01;
    let e = StationRequest::from_pem(&pem::encode("CERTIFICATE REQUEST", &bad)).unwrap_err();
    assert!(
        matches!(&e, Error::BadCertificate(m) if m.contains("signature does not verify")),
        "{e}"
    );

    // The id changed under the signature (subject serialNumber): the signature no longer covers it.
    let renamed = patch(&der, b"\x13\x05st-01", b"\x13\x05st-02");
    let e = StationRequest::from_pem(&pem::encode("CERTIFICATE REQUEST", &renamed)).unwrap_err();
    assert!(e.to_string().contains("signature does not verify"), "{e}");

    // Oversized, not PEM, not a request.
    let big = "x".repeat(16 * 1024 + 1);
    assert!(matches!(
        StationRequest::from_pem(&big),
        Err(Error::TooLarge { .. })
    ));
    assert!(matches!(
        StationRequest::from_pem("hello"),
        Err(Error::Pem { .. })
    ));
    let e = StationRequest::from_pem(&pem::encode("CERTIFICATE REQUEST", b"\x30\x00")).unwrap_err();
    assert!(e.to_string().contains("not a PKCS#10 request"), "{e}");
}

#[test]
fn an_id_with_an_underscore_cannot_be_a_subject_serial_number() {
    let key = SoftKey::generate(Curve::P256).unwrap();
    let e = StationRequest::new(&StationId::new("line_3").unwrap(), &key).unwrap_err();
    assert!(e.to_string().contains("PrintableString"), "{e}");
    let e = station_ca(
        &HsmId::new("hsm_1").unwrap(),
        &Serial::from_u64(1).unwrap(),
        NOW,
        10,
        &key,
    )
    .unwrap_err();
    assert!(e.to_string().contains("PrintableString"), "{e}");
}

#[test]
fn grants_outside_their_limits_are_not_certified() {
    let ca = StationCa::new();
    let key = SoftKey::generate(Curve::P256).unwrap();
    let req = StationRequest::new(&StationId::new("st-01").unwrap(), &key).unwrap();
    let serial = Serial::from_u64(5).unwrap();
    let certify = |g: &StationGrant| certify_station(&req, g, &serial, NOW, 30, &ca.issuer());
    let mut g = grant();
    g.products.clear();
    assert!(matches!(certify(&g), Err(Error::BadGrant(m)) if m.contains("no product")));
    let mut g = grant();
    g.products.push(product("acme/thermostat"));
    assert!(matches!(certify(&g), Err(Error::BadGrant(m)) if m.contains("twice")));
    let mut g = grant();
    g.products = (0..65).map(|i| product(&format!("acme/p{i}"))).collect();
    assert!(matches!(certify(&g), Err(Error::BadGrant(m)) if m.contains("65 products")));
    g.products.truncate(64);
    certify(&g).unwrap();
    assert!(matches!(
        certify_station(&req, &grant(), &serial, NOW, 0, &ca.issuer()),
        Err(Error::Validity(_))
    ));
}

#[test]
fn parse_refuses_what_is_not_a_station_certificate() {
    let ca = StationCa::new();
    // No grant extension.
    let service = ca.service(&["localhost"]).unwrap();
    let e = parse_station_cert(&service).unwrap_err();
    assert!(
        matches!(&e, Error::BadCertificate(m) if m.contains("no station grant extension")),
        "{e}"
    );

    let (_, der) = ca.station("st-01", &grant(), 9);
    // An unknown grant version (the certificate's signature breaks too; parsing checks none).
    let g = encode_grant(&grant());
    assert_eq!(&g[2..5], &[0x02, 0x01, 0x01], "{g:02x?}");
    let mut g2 = g.clone();
    g2[4] = 2;
    let e = parse_station_cert(&patch(&der, &g, &g2)).unwrap_err();
    assert!(
        matches!(&e, Error::BadGrant(m) if m.contains("version 2 is unknown")),
        "{e}"
    );

    // A malformed id in the SAN URI.
    let e = parse_station_cert(&patch(&der, b"station:st-01", b"station:st!01")).unwrap_err();
    assert!(
        matches!(&e, Error::BadCertificate(m) if m.contains("in the SAN URI is malformed")),
        "{e}"
    );

    // A SAN URI that disagrees with the subject serialNumber.
    let e = parse_station_cert(&patch(&der, b"station:st-01", b"station:st-02")).unwrap_err();
    assert!(e.to_string().contains("subject serialNumber"), "{e}");

    // Not a certificate, trailing bytes, too large.
    assert!(matches!(
        parse_station_cert(b"\x30\x03\x02\x01\x01"),
        Err(Error::BadCertificate(_))
    ));
    let mut long = der;
    long.push(0);
    assert!(parse_station_cert(&long).is_err());
    assert!(matches!(
        parse_station_cert(&[0x30; 16 * 1024 + 1]),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn webpki_validates_a_station_for_client_auth_only() {
    let ca = StationCa::new();
    let (_, der) = ca.station("st-01", &grant(), 10);
    webpki_verify(&ca.der, &der, KeyUsage::client_auth()).unwrap();
    let r = webpki_verify(&ca.der, &der, KeyUsage::server_auth());
    assert!(
        matches!(r, Err(webpki::Error::RequiredEkuNotFoundContext(_))),
        "{:?}",
        r.err()
    );
    // Another station CA (another HSM) is not an anchor for it.
    let other = StationCa::new();
    let r = webpki_verify(&other.der, &der, KeyUsage::client_auth());
    assert!(r.is_err(), "another station CA accepted our station");
}

#[test]
fn webpki_validates_the_service_for_server_auth_and_its_names() {
    let ca = StationCa::new();
    let der = ca
        .service(&["localhost", "hsm.factory.example", "127.0.0.1", "::1"])
        .unwrap();
    webpki_verify(&ca.der, &der, KeyUsage::server_auth()).unwrap();
    let leaf = CertificateDer::from(der.as_slice());
    let ee = EndEntityCert::try_from(&leaf).unwrap();
    for name in ["localhost", "127.0.0.1", "hsm.factory.example", "::1"] {
        ee.verify_is_valid_for_subject_name(&ServerName::try_from(name).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
    }
    for name in ["other.example", "127.0.0.2"] {
        assert!(ee
            .verify_is_valid_for_subject_name(&ServerName::try_from(name).unwrap())
            .is_err());
    }
    assert!(webpki_verify(&ca.der, &der, KeyUsage::client_auth()).is_err());
}

#[test]
fn service_names_are_checked() {
    let ca = StationCa::new();
    for bad in [
        &[][..],
        &["foo_bar.example"],
        &["*.example.com"],
        &["a..b"],
        &["example.com."],
        &["-a.example"],
        &["[::1]"],
        &["localhost", "LOCALHOST"],
        &["127.0.0.1", "127.0.0.1"],
    ] {
        let r = ca.service(bad);
        assert!(
            matches!(r, Err(Error::BadCertificate(_))),
            "{bad:?}: {:?}",
            r.map(|_| ())
        );
    }
}

/// `openssl x509 -text` reads all three; `openssl verify` accepts the station as a TLS client
/// only and the service as a TLS server; pkilint finds nothing but its known `urn:` false
/// positive (see `chains::urn_san_lints_clean_but_for_the_known_false_positive`).
#[test]
fn openssl_and_pkilint_accept_the_station_and_service_certificates() {
    let ca = StationCa::new();
    let (_, station) = ca.station("st-01", &grant(), 11);
    let service = ca.service(&["localhost", "127.0.0.1"]).unwrap();
    let s = Scratch::new();
    let ca_pem = s.write("ca.pem", pem::cert_pem(&ca.der));
    let station_pem = s.write("station.pem", pem::cert_pem(&station));
    let service_pem = s.write("service.pem", pem::cert_pem(&service));

    let text = |path: &std::path::Path| {
        let out = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(path)
            .output()
            .expect("run openssl (scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let t = text(&ca_pem);
    assert!(t.contains("CA:TRUE, pathlen:0"), "{t}");
    assert!(t.contains("Certificate Sign, CRL Sign"), "{t}");
    let t = text(&station_pem);
    for want in [
        "URI:urn:trustfab:station:st-01",
        "TLS Web Client Authentication",
        "Digital Signature",
        "CA:FALSE",
        "1.3.6.1.4.1.55555.3.1",
        "serialNumber = st-01",
    ] {
        assert!(t.contains(want), "{want:?} not in\n{t}");
    }
    assert!(!t.contains("TLS Web Server Authentication"), "{t}");
    let t = text(&service_pem);
    for want in [
        "DNS:localhost",
        "IP Address:127.0.0.1",
        "TLS Web Server Authentication",
        "CA:FALSE",
    ] {
        assert!(t.contains(want), "{want:?} not in\n{t}");
    }

    let verify = |leaf: &std::path::Path, purpose: &str| {
        openssl::verify(
            &ca_pem,
            None,
            None,
            &["-attime", &NOW.0.to_string(), "-purpose", purpose],
            leaf,
        )
    };
    let v = verify(&station_pem, "sslclient");
    assert!(v.ok, "{}", v.output);
    let v = verify(&station_pem, "sslserver");
    assert!(
        !v.ok,
        "openssl accepted a station as a TLS server: {}",
        v.output
    );
    let v = verify(&service_pem, "sslserver");
    assert!(v.ok, "{}", v.output);

    let findings = pkilint::errors(&ca_pem, &[]);
    assert!(findings.is_empty(), "station CA: {findings:?}");
    // pkilint's domain name check (the `validators` library) wants a dot: it flags the single
    // label `localhost` and nothing else; a service certificate without it lints clean.
    let findings = pkilint::errors(&service_pem, &[]);
    assert!(
        findings.len() == 1 && findings[0].contains("\"localhost\""),
        "service: {findings:?}"
    );
    let fqdn = ca
        .service(&["hsm.factory.example", "192.0.2.7", "2001:db8::7"])
        .unwrap();
    let fqdn_pem = s.write("service-fqdn.pem", pem::cert_pem(&fqdn));
    let v = verify(&fqdn_pem, "sslserver");
    assert!(v.ok, "{}", v.output);
    let findings = pkilint::errors(&fqdn_pem, &[]);
    assert!(findings.is_empty(), "service: {findings:?}");
    let findings = pkilint::errors(&station_pem, &["pkix.invalid_uri_syntax"]);
    assert!(findings.is_empty(), "station: {findings:?}");
}

#[test]
fn grant_decoder_refuses_oversized_and_foreign_input() {
    let big = vec![0u8; StationGrant::MAX_DER_BYTES + 1];
    assert!(matches!(decode_grant(&big), Err(Error::TooLarge { .. })));
    // Not DER, a wrong tag, a non-minimal length, an unknown element after the body.
    for bad in [
        &b""[..],
        b"\x30",
        b"\x31\x00",
        b"\x30\x81\x03\x02\x01\x01",
        b"\x30\x0b\x02\x01\x01\x30\x03\x0c\x01\x61\x05\x00",
    ] {
        assert!(
            matches!(decode_grant(bad), Err(Error::BadGrant(_))),
            "{bad:02x?}"
        );
    }
    // A product that is not `oem/product`.
    let e = decode_grant(b"\x30\x08\x02\x01\x01\x30\x03\x0c\x01\x61").unwrap_err();
    assert!(e.to_string().contains("product \"a\""), "{e}");
    // A later version, even one whose body this build cannot read, is named as such.
    let e = decode_grant(b"\x30\x05\x02\x01\x07\x05\x00").unwrap_err();
    assert!(e.to_string().contains("version 7 is unknown"), "{e}");
}

fn id_strategy() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,64}"
}

fn grant_strategy() -> impl Strategy<Value = StationGrant> {
    let key = (id_strategy(), id_strategy()).prop_map(|(o, p)| product(&format!("{o}/{p}")));
    (
        prop::collection::vec(key, 1..=64),
        any::<Option<u64>>(),
        any::<Option<u64>>(),
    )
        .prop_map(|(mut products, max_devices, max_per_day)| {
            let mut seen = std::collections::HashSet::new();
            products.retain(|p| seen.insert(p.clone()));
            StationGrant {
                products,
                max_devices,
                max_per_day,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn grant_encode_decode_round_trip(g in grant_strategy()) {
        let der = encode_grant(&g);
        prop_assert!(der.len() <= StationGrant::MAX_DER_BYTES);
        prop_assert_eq!(decode_grant(&der).unwrap(), g);
    }

    #[test]
    fn grant_decoder_never_panics_on_random_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..2048)
    ) {
        if let Ok(g) = decode_grant(&bytes) {
            prop_assert_eq!(encode_grant(&g), bytes);
        }
    }

    /// Valid encodings with one octet changed, truncated or extended: never a panic, and
    /// whatever is accepted is canonical.
    #[test]
    fn grant_decoder_never_panics_on_damaged_grants(
        g in grant_strategy(),
        at in any::<prop::sample::Index>(),
        xor in 1u8..,
        cut in any::<prop::sample::Index>(),
        tail in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        let der = encode_grant(&g);
        let mut flipped = der.clone();
        flipped[at.index(der.len())] ^= xor;
        let mut cut_short = der.clone();
        cut_short.truncate(cut.index(der.len()));
        let mut extended = der;
        extended.extend_from_slice(&tail);
        for damaged in [flipped, cut_short, extended] {
            if let Ok(back) = decode_grant(&damaged) {
                prop_assert_eq!(encode_grant(&back), damaged);
            }
        }
    }
}
