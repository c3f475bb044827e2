//! Round trips and refusals of the provisioning package.
#![allow(clippy::indexing_slicing)] // tests index what they just built

use trustfab_pki::{self_signed_ca, CaRole, CaSpec, Curve, SoftKey};
use trustfab_types::Serial;

use super::*;

const MINIMAL_TEMPLATE: &str = "version = 1\n[subject]\ncommon_name = \"{uid}\"\n[validity]\ndays = 1\n[extensions]\nkey_usage = [\"digital_signature\"]\n[serial]\nscheme = \"random\"\n";

fn oem(curve: Curve) -> (SoftKey, Vec<u8>) {
    let key = SoftKey::generate(curve).unwrap();
    let spec = CaSpec {
        role: CaRole::OemRoot,
        common_name: "R".into(),
        organization: "O".into(),
        serial: Serial::from_u64(1).unwrap(),
        not_before: UnixTime(1_700_000_000),
        days: 3650,
    };
    let root = self_signed_ca(&spec, &key).unwrap();
    (key, root)
}

fn contents(root: Vec<u8>) -> Contents {
    Contents {
        package_id: [7; 16],
        target_hsm: Fingerprint::new([9; 32]),
        oem_id: OemId::new("acme").unwrap(),
        product_id: ProductId::new("thermo").unwrap(),
        count: 1000,
        serial_range: Some(SerialRange {
            first: 1,
            last: 1000,
        }),
        not_before: UnixTime(1_790_000_000),
        not_after: UnixTime(1_790_086_400),
        template: MINIMAL_TEMPLATE.into(),
        root_cert: root,
        device_ca_cert: None,
        wrapped_signing_key: vec![0xab; 40],
        firmware: None,
    }
}

fn firmware() -> Firmware {
    Firmware {
        family: "thermo-v2".into(),
        boot_key_hash: [0x5a; 32],
        wrapped_family_key: Some(vec![0xcd; 48]),
    }
}

#[test]
fn seal_then_open_round_trips_on_both_curves() {
    for curve in [Curve::P256, Curve::P384] {
        let (key, root) = oem(curve);
        let c = contents(root);
        let bytes = seal(&c, &key).unwrap();
        assert_eq!(open(&bytes).unwrap().contents(), &c);
    }
}

#[test]
fn every_single_bit_flip_is_refused() {
    let (key, root) = oem(Curve::P256);
    let bytes = seal(&contents(root), &key).unwrap();
    let mut accepted = Vec::new();
    for bit in 0..bytes.len() * 8 {
        let mut b = bytes.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        if open(&b).is_ok() {
            accepted.push(bit);
        }
    }
    assert!(accepted.is_empty(), "flips accepted at bits {accepted:?}");
}

#[test]
fn a_package_signed_by_another_key_is_refused() {
    let (_, root) = oem(Curve::P256);
    let (other_key, _) = oem(Curve::P256);
    // The seal refuses outright to sign with a key that is not the root's...
    assert!(matches!(
        seal(&contents(root.clone()), &other_key),
        Err(Error::Root(_))
    ));
    // ...and a message forged around that check fails verification.
    let (key2, root2) = oem(Curve::P256);
    let genuine = seal(&contents(root2), &key2).unwrap();
    let mut msg = CoseSign1::from_tagged_slice(&genuine).unwrap();
    let mut swapped = contents(root);
    swapped.count = 1_000_000;
    swapped.serial_range = None;
    msg.payload = Some(cbor::encode(&swapped).unwrap());
    let forged = msg.to_tagged_vec().unwrap();
    assert!(matches!(open(&forged), Err(Error::Signature)));
}

#[test]
fn unknown_version_and_unknown_keys_are_refused() {
    let (key, root) = oem(Curve::P256);
    let c = contents(root);
    let mut payload = payload_value(&seal(&c, &key).unwrap()).unwrap();
    if let Value::Map(m) = &mut payload {
        m[0].1 = Value::Integer(2.into());
    }
    let mut raw = Vec::new();
    ciborium::into_writer(&payload, &mut raw).unwrap();
    assert!(matches!(
        cbor::decode(&raw),
        Err(Error::Version { found: 2 })
    ));

    let mut payload = payload_value(&seal(&c, &key).unwrap()).unwrap();
    if let Value::Map(m) = &mut payload {
        m.push((Value::Integer(99.into()), Value::Null));
    }
    let mut raw = Vec::new();
    ciborium::into_writer(&payload, &mut raw).unwrap();
    let e = cbor::decode(&raw).unwrap_err();
    assert!(e.to_string().contains("unknown key 99"), "{e}");
}

#[test]
fn bad_fields_are_named() {
    let (key, root) = oem(Curve::P256);
    let mut c = contents(root);
    c.count = 0;
    assert!(seal(&c, &key).unwrap_err().to_string().contains("count 0"));
    c.count = 2000; // more than the serial range holds
    let e = cbor::decode(&cbor::encode(&c).unwrap()).unwrap_err();
    assert!(e.to_string().contains("serial_range"), "{e}");
    c.serial_range = None;
    c.not_after = c.not_before;
    let e = cbor::decode(&cbor::encode(&c).unwrap()).unwrap_err();
    assert!(e.to_string().contains("not_after"), "{e}");
}

#[test]
fn the_firmware_section_round_trips_with_and_without_a_family_key() {
    let (key, root) = oem(Curve::P256);
    let mut c = contents(root);
    c.firmware = Some(firmware());
    let bytes = seal(&c, &key).unwrap();
    assert_eq!(open(&bytes).unwrap().contents(), &c);
    c.firmware = Some(Firmware {
        wrapped_family_key: None,
        ..firmware()
    });
    assert_eq!(open(&seal(&c, &key).unwrap()).unwrap().contents(), &c);
}

#[test]
fn bad_firmware_sections_are_refused_by_field() {
    let (key, root) = oem(Curve::P256);
    let mut c = contents(root);
    c.firmware = Some(Firmware {
        family: "no spaces".into(),
        ..firmware()
    });
    let e = seal(&c, &key).unwrap_err().to_string();
    assert!(e.contains("firmware (13)") && e.contains("family"), "{e}");

    // Hand-made payloads: each broken firmware map is named.
    c.firmware = Some(firmware());
    let good = payload_value(&seal(&c, &key).unwrap()).unwrap();
    let with_firmware = |f: Value| {
        let mut p = good.clone();
        if let Value::Map(m) = &mut p {
            for (k, v) in m.iter_mut() {
                if k.as_integer() == Some(13.into()) {
                    *v = f.clone();
                }
            }
        }
        let mut raw = Vec::new();
        ciborium::into_writer(&p, &mut raw).unwrap();
        cbor::decode(&raw).unwrap_err().to_string()
    };
    let int = |n: u64| Value::Integer(n.into());
    for (f, expect) in [
        (Value::Bool(true), "not a map"),
        (
            Value::Map(vec![(int(1), Value::Bytes(vec![0; 32]))]),
            "family is missing",
        ),
        (
            Value::Map(vec![(int(0), Value::Text("f".into()))]),
            "boot key hash is missing",
        ),
        (
            Value::Map(vec![
                (int(0), Value::Text("f".into())),
                (int(1), Value::Bytes(vec![0; 31])),
            ]),
            "must be 32 bytes",
        ),
        (
            Value::Map(vec![
                (int(0), Value::Text("f".into())),
                (int(1), Value::Bytes(vec![0; 32])),
                (int(7), Value::Null),
            ]),
            "unknown key in the firmware map",
        ),
        (
            Value::Map(vec![
                (int(0), Value::Text("f".into())),
                (int(1), Value::Bytes(vec![0; 32])),
                (int(2), Value::Bytes(vec![0; 5000])),
            ]),
            "the limit is 4096",
        ),
    ] {
        let e = with_firmware(f);
        assert!(e.contains("firmware (13)") && e.contains(expect), "{e}");
    }
}

#[test]
fn oversized_and_non_cose_inputs_are_refused() {
    assert!(matches!(
        open(&vec![0; PACKAGE_MAX + 1]),
        Err(Error::TooLarge { .. })
    ));
    assert!(matches!(open(b"not cbor"), Err(Error::NotCose)));
    assert!(matches!(open(&[]), Err(Error::NotCose)));
}

proptest::proptest! {
    /// Arbitrary bytes never panic the decoder.
    #[test]
    fn open_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
        let _ = open(&bytes);
        let _ = cbor::decode(&bytes);
    }
}

/// The fuzz seeds (`fuzz/seeds/package`) decode and verify: the demo's package is a valid one.
#[test]
fn fuzz_seeds_open() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/package");
    let (mut n, mut with_firmware) = (0, 0);
    for e in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(e.unwrap().path()).unwrap();
        let p = open(&bytes).unwrap();
        assert_eq!(p.contents().oem_id.as_str(), "acme");
        with_firmware += usize::from(p.contents().firmware.is_some());
        n += 1;
    }
    assert!(n > 0, "no seeds in {}", dir.display());
    assert!(with_firmware > 0, "no seed has a firmware section");
}
