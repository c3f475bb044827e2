//! The secure MCU: fuses, lifecycle, flash boot slots, the security counter and the boot hook.

use trustfab_device::sim::{BootOutcome, BootSlot, BootVerifier, Lifecycle};
use trustfab_device::{Device, DeviceKind, Error, Refusal, Status, Zone};

use crate::{part, refusal};

/// A boot verifier for tests: an image is `b"IMG"`, a 4-byte counter, then the SHA-256 of the
/// root-of-trust key it claims; it verifies when that hash is the fused one.
struct TestVerifier;

impl BootVerifier for TestVerifier {
    fn verify(
        &self,
        image: &[u8],
        rot_hash: &[u8; 32],
    ) -> Result<u32, Box<dyn std::error::Error + Send + Sync>> {
        if image.len() != 39 || &image[..3] != b"IMG" || &image[7..] != rot_hash {
            return Err("image not signed by the root of trust".into());
        }
        Ok(u32::from_be_bytes(image[3..7].try_into()?))
    }
}

fn image(counter: u32, rot: &[u8; 32]) -> Vec<u8> {
    let mut v = b"IMG".to_vec();
    v.extend_from_slice(&counter.to_be_bytes());
    v.extend_from_slice(rot);
    v
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
fn boot_hook_verifies_the_image_and_enforces_the_counter() {
    let (_, mut d) = part(DeviceKind::SecureMcu);
    // No image.
    assert_eq!(refusal(d.boot(&TestVerifier)), Refusal::BootRefused);
    let rot = [9u8; 32];
    d.write_boot_slot(BootSlot::Primary, &image(3, &rot))
        .unwrap();
    // No root of trust yet: a development part boots unverified.
    assert_eq!(d.boot(&TestVerifier).unwrap(), BootOutcome::Unverified);
    d.program_rot_hash(&rot).unwrap();
    assert_eq!(
        d.boot(&TestVerifier).unwrap(),
        BootOutcome::Verified { counter: 3 }
    );
    assert_eq!(d.security_counter().unwrap(), 3);
    // An image for another root of trust.
    d.write_boot_slot(BootSlot::Primary, &image(4, &[8; 32]))
        .unwrap();
    assert_eq!(refusal(d.boot(&TestVerifier)), Refusal::BootRefused);
    // An older image.
    d.write_boot_slot(BootSlot::Primary, &image(2, &rot))
        .unwrap();
    assert_eq!(refusal(d.boot(&TestVerifier)), Refusal::Rollback);
    // The update candidate sits in the secondary slot until it is installed.
    d.write_boot_slot(BootSlot::Secondary, &image(7, &rot))
        .unwrap();
    assert_eq!(
        d.read_boot_slot(BootSlot::Secondary).unwrap(),
        image(7, &rot)
    );
    let too_big = vec![0u8; trustfab_device::limits::BOOT_SLOT_BYTES + 1];
    assert_eq!(
        refusal(d.write_boot_slot(BootSlot::Primary, &too_big)),
        Refusal::TooLong
    );
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
    assert_eq!(refusal(d.boot(&TestVerifier)), Refusal::Unsupported);
    assert_eq!(d.kind(), DeviceKind::SecureElement);
}
