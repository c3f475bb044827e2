//! The secure MCU's key-install service (`docs/devices.md`, rule 21): a family decryption key
//! wrapped to the device's identity key is unwrapped inside the part into secret slot 5, where
//! the boot stage decrypts family images with it; every other blob, slot or state is refused with
//! its own error, and a power loss leaves the slot old or new.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, EcdsaSigningAlgorithm, ECDSA_P256_SHA256_ASN1_SIGNING,
    ECDSA_P384_SHA384_ASN1_SIGNING,
};
use trustfab_device::sim::{BootOutcome, BootSlot, SwapOutcome, UpdateRequest};
use trustfab_device::{
    file, Device, DeviceKind, Error, Fault, Op, Refusal, SecureBoot, SimDevice, SlotId, Socket,
    Status, Trigger, Zone,
};
use trustfab_firmware::{key_hash, master, MasterOptions};
use trustfab_pki::{Curve, PublicKey, Signer as _, SoftKey};
use trustfab_token::{pkcs8_public_key, wrap_for, WrappedKey, WRAPPED_MAX};
use trustfab_types::{OsRng, SecretKeyDer};

use crate::{part, refusal};

/// The family key's secret slot.
const FAMILY_SLOT: SlotId = 5;

/// A family decryption key (PKCS#8, as the OEM holds it) and its public point.
struct Family {
    pkcs8: SecretKeyDer,
    point: Vec<u8>,
}

fn key_pkcs8(alg: &'static EcdsaSigningAlgorithm) -> SecretKeyDer {
    let doc = EcdsaKeyPair::generate_pkcs8(alg, &SystemRandom::new()).unwrap();
    SecretKeyDer::new(doc.as_ref().to_vec())
}

fn family() -> Family {
    let pkcs8 = key_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING);
    let point = pkcs8_public_key(&pkcs8).unwrap().point().to_vec();
    Family { pkcs8, point }
}

/// The OEM's boot key.
fn boot_key() -> (SoftKey, PublicKey) {
    let key = SoftKey::generate(Curve::P256).unwrap();
    let public = PublicKey::from_point(Curve::P256, key.public_point()).unwrap();
    (key, public)
}

/// A signed image with security counter `counter`, encrypted for `family`.
fn family_image(key: &SoftKey, counter: u32, family: &Family) -> Vec<u8> {
    let to = PublicKey::from_point(Curve::P256, &family.point).unwrap();
    let mut opts = MasterOptions::new(format!("1.0.{counter}").parse().unwrap(), counter);
    opts.header_size = 32;
    opts.encrypt_to = Some(&to);
    master(&[0xa5; 200], &opts, key, &OsRng).unwrap()
}

/// `key` wrapped (HSM side) for the identity key in slot 0 of `d`.
fn wrap_for_device(d: &mut impl Device, key: &SecretKeyDer) -> Vec<u8> {
    let device_key = d.public_key(0).unwrap();
    let recipient = PublicKey::from_point(Curve::P256, device_key.point()).unwrap();
    wrap_for(&recipient, key, b"family thermo for this device")
        .unwrap()
        .to_bytes()
}

/// A secure MCU with its identity key made (as during a job) and `boot`'s hash in its fuses.
fn mcu(boot: &PublicKey) -> SimDevice {
    let (_, mut d) = part(DeviceKind::SecureMcu);
    d.generate_key(0).unwrap();
    d.program_rot_hash(&key_hash(boot)).unwrap();
    d
}

/// The part's whole non-volatile memory.
fn nvm(d: &SimDevice) -> Vec<u8> {
    file::encode(d).unwrap().to_vec()
}

/// Whether an update encrypted for `family` installs on (a copy of) `d`: the test of what slot 5
/// holds, since it is never readable.
fn decrypts_for(d: &SimDevice, key: &SoftKey, family: &Family) -> bool {
    let mut d = crate::copy(d);
    let counter = d.security_counter().unwrap() + 1;
    d.write_boot_slot(BootSlot::Secondary, &family_image(key, counter, family))
        .unwrap();
    d.request_update(UpdateRequest::Permanent).unwrap();
    match d.boot() {
        Ok(BootOutcome::Verified {
            swap: SwapOutcome::Installed { test: false },
            ..
        }) => true,
        // Refused and erased: the old image boots, or, with none in the primary slot, the
        // boot fails with the update's refusal.
        Ok(BootOutcome::Verified {
            swap: SwapOutcome::Refused(_),
            ..
        })
        | Err(Error::ImageRefused {
            slot: BootSlot::Secondary,
            ..
        }) => false,
        other => panic!("unexpected boot: {other:?}"),
    }
}

#[track_caller]
fn refused_with(r: Result<Vec<u8>, Error>, want: Refusal, status: Status) {
    match r {
        Err(Error::Refused {
            op: Op::InstallSecret,
            refusal,
            status: s,
            ..
        }) => {
            assert_eq!(refusal, want);
            assert_eq!(s, status);
        }
        other => panic!("expected {want:?} ({status}), got {other:?}"),
    }
}

#[test]
fn a_family_key_wrapped_to_the_device_key_installs_and_decrypts_family_images() {
    let (boot, boot_pub) = boot_key();
    let fam = family();
    let mut d = mcu(&boot_pub);
    assert!(!decrypts_for(&d, &boot, &fam));

    let blob = wrap_for_device(&mut d, &fam.pkcs8);
    let point = d.install_wrapped_secret(FAMILY_SLOT, &blob).unwrap();
    assert_eq!(point, fam.point);
    let info = d.slots().unwrap();
    let slot5 = info.iter().find(|s| s.id == FAMILY_SLOT).unwrap();
    assert!(slot5.filled);
    assert_eq!(refusal(d.read_slot(FAMILY_SLOT)), Refusal::NotReadable);

    // The station's sequence: the image into the secondary slot, a permanent update, one boot.
    let img = family_image(&boot, 1, &fam);
    d.write_boot_slot(BootSlot::Secondary, &img).unwrap();
    d.request_update(UpdateRequest::Permanent).unwrap();
    match d.boot().unwrap() {
        BootOutcome::Verified {
            counter,
            swap: SwapOutcome::Installed { test: false },
            ..
        } => assert_eq!(counter, 1),
        other => panic!("the family image did not install: {other:?}"),
    }
    // Installed again (the same key, a retried job step) it is the same key.
    assert_eq!(
        d.install_wrapped_secret(FAMILY_SLOT, &blob).unwrap(),
        fam.point
    );
    // After the lock the secret is still never readable, nor replaceable.
    d.lock(Zone::Config).unwrap();
    d.lock(Zone::Data).unwrap();
    assert_eq!(refusal(d.read_slot(FAMILY_SLOT)), Refusal::NotReadable);
    assert!(decrypts_for(&d, &boot, &fam));
}

#[test]
fn a_key_wrapped_for_another_device_is_refused_and_slot_5_is_unchanged() {
    let (boot, boot_pub) = boot_key();
    let old = family();
    let fam = family();
    let mut d = mcu(&boot_pub);
    let mut other = mcu(&boot_pub);
    let blob = wrap_for_device(&mut d, &old.pkcs8);
    d.install_wrapped_secret(FAMILY_SLOT, &blob).unwrap();
    let before = nvm(&d);

    let foreign = wrap_for_device(&mut other, &fam.pkcs8);
    refused_with(
        d.install_wrapped_secret(FAMILY_SLOT, &foreign),
        Refusal::UnwrapFailed,
        Status::Psa(-149),
    );
    let e = d.install_wrapped_secret(FAMILY_SLOT, &foreign).unwrap_err();
    assert_eq!(
        e.to_string(),
        "install wrapped secret slot 5: wrapped key does not unwrap under this device's key \
         (psa_status -149)"
    );
    assert_eq!(nvm(&d), before);
    assert!(decrypts_for(&d, &boot, &old));
    assert!(!decrypts_for(&d, &boot, &fam));
    // The other device takes its own blob.
    assert_eq!(
        other.install_wrapped_secret(FAMILY_SLOT, &foreign).unwrap(),
        fam.point
    );
}

#[test]
fn every_changed_byte_of_a_blob_is_refused_and_changes_nothing() {
    let (_, boot_pub) = boot_key();
    let fam = family();
    let mut d = mcu(&boot_pub);
    let blob = wrap_for_device(&mut d, &fam.pkcs8);
    let before = nvm(&d);
    let ciphertext_at = blob.len() - WrappedKey::from_bytes(&blob).unwrap().ciphertext().len();
    for i in 0..blob.len() {
        let mut bad = blob.clone();
        bad[i] ^= 0x01;
        let r = refusal(d.install_wrapped_secret(FAMILY_SLOT, &bad));
        assert!(
            matches!(
                r,
                Refusal::MalformedWrappedKey | Refusal::UnsupportedKeyType | Refusal::UnwrapFailed
            ),
            "byte {i}: {r:?}"
        );
        if i >= ciphertext_at {
            assert_eq!(r, Refusal::UnwrapFailed, "ciphertext byte {i}");
        }
    }
    assert_eq!(nvm(&d), before);
}

#[test]
fn malformed_blobs_and_keys_that_are_not_p256_are_refused() {
    let (_, boot_pub) = boot_key();
    let mut d = mcu(&boot_pub);
    let before = nvm(&d);
    for bad in [
        Vec::new(),
        b"TFWK".to_vec(),
        vec![0u8; 300],
        vec![0u8; WRAPPED_MAX + 1],
    ] {
        refused_with(
            d.install_wrapped_secret(FAMILY_SLOT, &bad),
            Refusal::MalformedWrappedKey,
            Status::Psa(-135),
        );
    }
    let good = wrap_for_device(&mut d, &family().pkcs8);
    refused_with(
        d.install_wrapped_secret(FAMILY_SLOT, &good[..good.len() - 1]),
        Refusal::MalformedWrappedKey,
        Status::Psa(-135),
    );
    let p384 = wrap_for_device(&mut d, &key_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING));
    refused_with(
        d.install_wrapped_secret(FAMILY_SLOT, &p384),
        Refusal::UnsupportedKeyType,
        Status::Psa(-134),
    );
    assert_eq!(nvm(&d), before);
}

#[test]
fn install_after_the_data_lock_is_refused() {
    let (_, boot_pub) = boot_key();
    let fam = family();
    let mut d = mcu(&boot_pub);
    let blob = wrap_for_device(&mut d, &fam.pkcs8);
    d.lock(Zone::Config).unwrap();
    // Between the locks (lifecycle provisioned) it is still allowed.
    let mut provisioned = crate::copy(&d);
    provisioned
        .install_wrapped_secret(FAMILY_SLOT, &blob)
        .unwrap();
    d.lock(Zone::Data).unwrap();
    let before = nvm(&d);
    refused_with(
        d.install_wrapped_secret(FAMILY_SLOT, &blob),
        Refusal::WriteProtected,
        Status::Psa(-133),
    );
    assert_eq!(nvm(&d), before);
}

#[test]
fn install_into_a_slot_that_is_not_a_secret_slot_is_refused() {
    let (_, boot_pub) = boot_key();
    let fam = family();
    let mut d = mcu(&boot_pub);
    let blob = wrap_for_device(&mut d, &fam.pkcs8);
    let before = nvm(&d);
    for slot in [0, 2, 8, 10, 11, 12] {
        refused_with(
            d.install_wrapped_secret(slot, &blob),
            Refusal::WrongSlotKind,
            Status::Psa(-135),
        );
    }
    refused_with(
        d.install_wrapped_secret(6, &blob),
        Refusal::NoSuchSlot,
        Status::Psa(-140),
    );
    assert_eq!(nvm(&d), before);
}

#[test]
fn install_without_an_identity_key_is_refused() {
    let (_, boot_pub) = boot_key();
    let fam = family();
    // A part whose identity key was never generated has nothing to unwrap with.
    let mut other = mcu(&boot_pub);
    let blob = wrap_for_device(&mut other, &fam.pkcs8);
    let (_, mut d) = part(DeviceKind::SecureMcu);
    let before = nvm(&d);
    refused_with(
        d.install_wrapped_secret(FAMILY_SLOT, &blob),
        Refusal::NoUnwrapKey,
        Status::Psa(-136),
    );
    assert_eq!(nvm(&d), before);
}

#[test]
fn a_secure_element_refuses_install_as_unsupported() {
    let (_, mut se) = part(DeviceKind::SecureElement);
    se.generate_key(0).unwrap();
    let blob = wrap_for_device(&mut se, &family().pkcs8);
    let before = nvm(&se);
    refused_with(
        se.install_wrapped_secret(FAMILY_SLOT, &blob),
        Refusal::Unsupported,
        Status::Atecc(0x03),
    );
    assert_eq!(nvm(&se), before);
}

#[test]
fn a_power_loss_at_the_install_write_leaves_the_old_secret_or_the_new_key() {
    let (boot, boot_pub) = boot_key();
    let old = family();
    let new = family();
    let mut base = mcu(&boot_pub);
    let old_blob = wrap_for_device(&mut base, &old.pkcs8);
    let new_blob = wrap_for_device(&mut base, &new.pkcs8);
    base.install_wrapped_secret(FAMILY_SLOT, &old_blob).unwrap();
    let before = nvm(&base);

    for after_commit in [false, true] {
        let mut s = Socket::with_device(crate::copy(&base), 0).fault(
            Fault::PowerLossAtWrite {
                write: 0,
                after_commit,
            },
            Trigger::AtOperation(1),
        );
        assert_eq!(
            s.install_wrapped_secret(FAMILY_SLOT, &new_blob),
            Err(Error::PowerLoss {
                op: Op::InstallSecret
            })
        );
        // The part as its non-volatile memory holds it after the power comes back.
        let d = crate::copy(s.device().unwrap());
        if after_commit {
            assert!(decrypts_for(&d, &boot, &new), "new key after the commit");
            assert!(!decrypts_for(&d, &boot, &old));
        } else {
            assert_eq!(nvm(&d), before, "old secret before the commit");
            assert!(decrypts_for(&d, &boot, &old));
        }
        // The station retries and the new key is in.
        let mut s = Socket::with_device(d, 0);
        assert_eq!(
            s.install_wrapped_secret(FAMILY_SLOT, &new_blob).unwrap(),
            new.point
        );
        assert!(decrypts_for(s.device().unwrap(), &boot, &new));
    }

    // A power loss cut at a random point, many times: always old or new, never neither.
    let empty = mcu(&boot_pub);
    let blob = wrap_for_device(&mut crate::copy(&empty), &old.pkcs8);
    let mut seen = [false; 2];
    for seed in 0..16 {
        let mut s = Socket::with_device(crate::copy(&empty), seed)
            .fault(Fault::PowerLoss, Trigger::AtOperation(1));
        let r = s.install_wrapped_secret(FAMILY_SLOT, &blob);
        assert!(matches!(r, Err(Error::PowerLoss { .. })), "{r:?}");
        let d = s.device().unwrap();
        let installed = decrypts_for(d, &boot, &old);
        if !installed {
            assert_eq!(nvm(d), nvm(&empty));
        }
        seen[usize::from(installed)] = true;
    }
    assert_eq!(
        seen,
        [true, true],
        "cuts fell both before and after the commit"
    );
}

/// What a station does on a secure MCU, through its boot stage.
fn program<D: SecureBoot + ?Sized>(
    d: &mut D,
    rot: &[u8; 32],
    blob: &[u8],
    image: &[u8],
) -> Result<(Vec<u8>, BootOutcome), Error> {
    if d.rot_hash()?.is_none() {
        d.program_rot_hash(rot)?;
    }
    let point = d.install_wrapped_secret(FAMILY_SLOT, blob)?;
    d.write_boot_slot(BootSlot::Secondary, image)?;
    d.request_update(UpdateRequest::Permanent)?;
    Ok((point, d.boot()?))
}

#[test]
fn a_station_programs_firmware_through_a_socket_and_its_faults() {
    let (boot, boot_pub) = boot_key();
    let fam = family();
    let (_, mut d) = part(DeviceKind::SecureMcu);
    d.generate_key(0).unwrap();
    let blob = wrap_for_device(&mut d, &fam.pkcs8);
    let image = family_image(&boot, 3, &fam);
    let rot = key_hash(&boot_pub);

    // Operation 3 is the install: a write error executes nothing; 4 finds no contact.
    let mut s = Socket::with_device(d, 7)
        .fault(Fault::WriteError, Trigger::AtOperation(3))
        .fault(Fault::NoContact, Trigger::AtOperation(4));
    assert_eq!(s.rot_hash().unwrap(), None);
    s.program_rot_hash(&rot).unwrap();
    let before = nvm(s.device().unwrap());
    assert_eq!(
        s.install_wrapped_secret(FAMILY_SLOT, &blob),
        Err(Error::WriteFailed {
            op: Op::InstallSecret
        })
    );
    assert_eq!(nvm(s.device().unwrap()), before);
    assert_eq!(s.security_counter(), Err(Error::NoContact));
    // The station retries the whole step.
    let (point, outcome) = program(&mut s, &rot, &blob, &image).unwrap();
    assert_eq!(point, fam.point);
    assert!(matches!(
        outcome,
        BootOutcome::Verified {
            counter: 3,
            swap: SwapOutcome::Installed { test: false },
            ..
        }
    ));
    assert_eq!(s.security_counter().unwrap(), 3);
    assert_eq!(s.rot_hash().unwrap(), Some(rot));
    assert_eq!(refusal(s.read_slot(FAMILY_SLOT)), Refusal::NotReadable);
    assert_eq!(s.fault_counts().write_error, 1);
    assert_eq!(s.fault_counts().no_contact, 1);

    // The same commands on a secure element through the trait: refused as unsupported.
    let (_, mut se) = part(DeviceKind::SecureElement);
    se.generate_key(0).unwrap();
    let blob = wrap_for_device(&mut se, &fam.pkcs8);
    let mut s = Socket::with_device(se, 1);
    assert_eq!(
        refusal(program(&mut s, &rot, &blob, &image)),
        Refusal::Unsupported
    );
    assert_eq!(
        refusal(s.install_wrapped_secret(FAMILY_SLOT, &blob)),
        Refusal::Unsupported
    );
}
