//! Factory attestation: every part's attestation certificate validates to the silicon vendor
//! root, and an attested key verifies under it.

use trustfab_device::{AttestationError, Device, DeviceKind};
use trustfab_pki::{validate, Policy, Purpose};

use crate::{part, vendor, KINDS, NOW};

#[test]
fn attestation_certificate_validates_to_the_silicon_vendor_root() {
    for kind in KINDS {
        let (v, mut d) = part(kind);
        let cert = d.attestation_certificate().unwrap();
        validate(
            &cert,
            &Policy {
                root: v.root_der(),
                intermediates: &[],
                crls: &[],
                now: NOW,
                purpose: Purpose::ClientAuth,
            },
        )
        .unwrap();
        // Not to another vendor's root.
        let other = vendor();
        assert!(validate(
            &cert,
            &Policy {
                root: other.root_der(),
                intermediates: &[],
                crls: &[],
                now: NOW,
                purpose: Purpose::ClientAuth,
            },
        )
        .is_err());
    }
}

#[test]
fn an_attested_key_verifies_to_the_silicon_vendor_root() {
    for kind in KINDS {
        let (v, mut d) = part(kind);
        let nonce = [7u8; 32];
        let att = d.generate_key_attested(0, &nonce).unwrap();
        let cert = d.attestation_certificate().unwrap();
        att.verify(&cert, v.root_der(), &nonce, NOW).unwrap();
        assert_eq!(att.public_key, d.public_key(0).unwrap());
        assert_eq!(att.uid, d.uid().unwrap());

        // A stale nonce.
        assert!(matches!(
            att.verify(&cert, v.root_der(), &[8u8; 32], NOW),
            Err(AttestationError::Nonce)
        ));
        // Another vendor: not genuine.
        assert!(matches!(
            att.verify(&cert, vendor().root_der(), &nonce, NOW),
            Err(AttestationError::Chain(_))
        ));
        // A key swapped in by a man in the middle.
        let mut swapped = att.clone();
        swapped.public_key = d.generate_key(2).unwrap();
        assert!(matches!(
            swapped.verify(&cert, v.root_der(), &nonce, NOW),
            Err(AttestationError::Signature)
        ));
        // Another slot claimed.
        let mut moved = att.clone();
        moved.slot = 2;
        assert!(matches!(
            moved.verify(&cert, v.root_der(), &nonce, NOW),
            Err(AttestationError::Signature)
        ));
    }
}

#[test]
fn an_attestation_with_another_parts_certificate_is_refused() {
    let mut v = vendor();
    let mut a = v.manufacture(DeviceKind::SecureElement, NOW).unwrap();
    let mut b = v.manufacture(DeviceKind::SecureElement, NOW).unwrap();
    let nonce = [1u8; 32];
    let att = a.generate_key_attested(0, &nonce).unwrap();
    let err = att
        .verify(
            &b.attestation_certificate().unwrap(),
            v.root_der(),
            &nonce,
            NOW,
        )
        .unwrap_err();
    assert!(matches!(err, AttestationError::WrongDevice { .. }));
    assert!(err
        .to_string()
        .starts_with("attestation certificate is for device "));
}
