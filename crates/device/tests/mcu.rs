//! The secure MCU: fuses, lifecycle, flash boot slots, the security counter and boot.

use trustfab_device::sim::{BootOutcome, BootSlot, Lifecycle};
use trustfab_device::{Device, DeviceKind, Error, Refusal, SecureBoot, Socket, Status, Zone};
use trustfab_firmware::{key_hash, master, MasterOptions, Version};
use trustfab_pki::{Curve, PublicKey, Signer, SoftKey};
use trustfab_types::OsRng;

use crate::{part, refusal};

#[test]
fn only_a_secure_mcu_has_a_boot_stage() {
    let (_, mut se) = part(DeviceKind::SecureElement);
    assert!(se.secure_boot().is_none());
    // The boot commands still exist on the simulator, and a secure element refuses them.
    assert_eq!(refusal(SecureBoot::rot_hash(&mut se)), Refusal::Unsupported);
    let mut s = Socket::with_device(se, 0);
    assert!(s.secure_boot().is_none());
    assert!(Socket::new(0).secure_boot().is_none());

    let (_, mut mcu) = part(DeviceKind::SecureMcu);
    assert_eq!(mcu.secure_boot().unwrap().rot_hash().unwrap(), None);
    let mut s = Socket::with_device(mcu, 0);
    let boot = s.secure_boot().unwrap();
    boot.program_rot_hash(&[7; 32]).unwrap();
    assert_eq!(boot.rot_hash().unwrap(), Some([7; 32]));
}

#[test]
fn lifecycle_moves_forward_only() {
    let (_, mut d) = part(DeviceKind::SecureMcu);
    assert_eq!(d.lifecycle().unwrap(), Lifecycle::Open);
    d.lock(Zone::Config).unwrap();
    assert_eq!(d.lifecycle().unwrap(), Lifecycle::Provisioned);
    assert_eq!(refusal(d.lock(Zone::Data)), Refusal::Lifecycle);
    d.program_rot_hash(&[3; 32]).unwrap();
    d.lock(Zone::Data).unwrap();
    assert_eq!(d.lifecycle().unwrap(), Lifecycle::Locked);
    assert_eq!(refusal(d.lock(Zone::Config)), Refusal::AlreadyLocked);
    assert_eq!(refusal(d.lock(Zone::Data)), Refusal::AlreadyLocked);
    assert_eq!(d.lifecycle().unwrap(), Lifecycle::Locked);
}

#[test]
fn root_of_trust_fuse_is_one_time_programmable() {
    let (_, mut d) = part(DeviceKind::SecureMcu);
    assert_eq!(d.rot_hash().unwrap(), None);
    d.program_rot_hash(&[1; 32]).unwrap();
    let e = d.program_rot_hash(&[2; 32]).unwrap_err();
    assert!(matches!(
        e,
        Error::Refused {
            refusal: Refusal::FuseProgrammed,
            status: Status::Psa(-139),
            ..
        }
    ));
    assert_eq!(d.rot_hash().unwrap(), Some([1; 32]));
}

#[test]
fn security_counter_never_goes_down() {
    let (_, mut d) = part(DeviceKind::SecureMcu);
    d.advance_security_counter(5).unwrap();
    d.advance_security_counter(5).unwrap();
    assert_eq!(refusal(d.advance_security_counter(4)), Refusal::Rollback);
    assert_eq!(d.security_counter().unwrap(), 5);
}

#[test]
fn boot_verifies_the_image_and_enforces_the_counter() {
    let (_, mut d) = part(DeviceKind::SecureMcu);
    // No image.
    assert_eq!(refusal(d.boot()), Refusal::BootRefused);
    let key = SoftKey::generate(Curve::P256).unwrap();
    let public = PublicKey::from_point(Curve::P256, key.public_point()).unwrap();
    let image = |counter: u32| {
        let opts = MasterOptions::new(Version::default(), counter);
        master(b"firmware", &opts, &key, &OsRng).unwrap()
    };
    d.write_boot_slot(BootSlot::Primary, &image(3)).unwrap();
    // No root of trust yet: a development part boots unverified.
    assert_eq!(d.boot().unwrap(), BootOutcome::Unverified);
    d.program_rot_hash(&key_hash(&public)).unwrap();
    assert!(matches!(
        d.boot().unwrap(),
        BootOutcome::Verified { counter: 3, .. }
    ));
    assert_eq!(d.security_counter().unwrap(), 3);
    // An image for another root of trust.
    let other = SoftKey::generate(Curve::P256).unwrap();
    let theirs = master(
        b"firmware",
        &MasterOptions::new(Version::default(), 4),
        &other,
        &OsRng,
    )
    .unwrap();
    d.write_boot_slot(BootSlot::Primary, &theirs).unwrap();
    assert!(matches!(
        d.boot(),
        Err(Error::ImageRefused {
            slot: BootSlot::Primary,
            ..
        })
    ));
    // An older image.
    d.write_boot_slot(BootSlot::Primary, &image(2)).unwrap();
    assert_eq!(refusal(d.boot()), Refusal::Rollback);
    // The update candidate sits in the secondary slot until it is installed.
    let update = image(7);
    d.write_boot_slot(BootSlot::Secondary, &update).unwrap();
    assert_eq!(d.read_boot_slot(BootSlot::Secondary).unwrap(), update);
    let too_big = vec![0u8; trustfab_device::limits::BOOT_SLOT_BYTES + 1];
    assert_eq!(
        refusal(d.write_boot_slot(BootSlot::Primary, &too_big)),
        Refusal::TooLong
    );
}

/// A blank part (root of trust fused, no image yet) whose first update is refused says why:
/// an image of another key and a tampered image are told apart, and neither reads as "no image".
#[test]
fn a_blank_part_names_why_its_first_image_was_refused() {
    let key = SoftKey::generate(Curve::P256).unwrap();
    let public = PublicKey::from_point(Curve::P256, key.public_point()).unwrap();
    let signed = |k: &SoftKey| {
        master(
            b"firmware",
            &MasterOptions::new(Version::default(), 1),
            k,
            &OsRng,
        )
        .unwrap()
    };
    let first_boot = |image: &[u8]| {
        let (_, mut d) = part(DeviceKind::SecureMcu);
        d.program_rot_hash(&key_hash(&public)).unwrap();
        d.write_boot_slot(BootSlot::Secondary, image).unwrap();
        d.request_update(trustfab_device::UpdateRequest::Permanent)
            .unwrap();
        match d.boot() {
            Err(
                e @ Error::ImageRefused {
                    slot: BootSlot::Secondary,
                    ..
                },
            ) => e.to_string(),
            other => panic!("expected the update's refusal, got {other:?}"),
        }
    };
    let other = SoftKey::generate(Curve::P256).unwrap();
    let foreign = first_boot(&signed(&other));
    let mut tampered = signed(&key);
    let mid = tampered.len() / 2;
    tampered[mid] ^= 1;
    let tampered = first_boot(&tampered);
    assert_ne!(foreign, tampered);
    for reason in [&foreign, &tampered] {
        assert!(!reason.contains("psa_status"), "{reason}");
        assert!(
            reason.starts_with("boot: secondary image refused: "),
            "{reason}"
        );
    }
}

#[test]
fn a_secure_element_refuses_mcu_commands() {
    let (_, mut d) = part(DeviceKind::SecureElement);
    let e = d.program_rot_hash(&[0; 32]).unwrap_err();
    assert!(matches!(
        e,
        Error::Refused {
            refusal: Refusal::Unsupported,
            status: Status::Atecc(0x03),
            ..
        }
    ));
    assert_eq!(refusal(d.lifecycle()), Refusal::Unsupported);
    assert_eq!(
        refusal(d.write_boot_slot(BootSlot::Primary, b"x")),
        Refusal::Unsupported
    );
    assert_eq!(refusal(d.boot()), Refusal::Unsupported);
    assert_eq!(d.kind(), DeviceKind::SecureElement);
}
