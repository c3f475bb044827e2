//! Secure boot and field updates on the secure MCU (DESIGN.md property 8; `docs/firmware.md`):
//! each refusal with its own error, family and per-device encryption, test updates that revert
//! unless confirmed, and a power loss at every write of an update.

use trustfab_device::sim::{BootOutcome, BootSlot, ImageRefusal, SwapOutcome, UpdateRequest};
use trustfab_device::{Device, DeviceKind, Error, Fault, Refusal, SimDevice, Socket, Trigger};
use trustfab_firmware::{
    key_hash, master, Image, MasterOptions, ParseError, SoftDecryptionKey, TlvKind, VerifyError,
};
use trustfab_pki::{Curve, PublicKey, Signer, SoftKey};
use trustfab_types::OsRng;

use crate::{copy, part, refusal};

/// The OEM's boot key and its public key.
struct Oem {
    key: SoftKey,
    public: PublicKey,
}

fn oem() -> Oem {
    let key = SoftKey::generate(Curve::P256).unwrap();
    let public = PublicKey::from_point(Curve::P256, key.public_point()).unwrap();
    Oem { key, public }
}

/// A family decryption key and its public key.
fn family() -> (SoftDecryptionKey, PublicKey) {
    let k = SoftDecryptionKey::generate(&OsRng).unwrap();
    let p = PublicKey::from_point(Curve::P256, &k.public_point().unwrap()).unwrap();
    (k, p)
}

fn image(oem: &Oem, counter: u32, len: usize, encrypt_to: Option<&PublicKey>) -> Vec<u8> {
    let mut opts = MasterOptions::new(format!("1.0.{counter}").parse().unwrap(), counter);
    opts.header_size = 32;
    opts.encrypt_to = encrypt_to;
    let payload: Vec<u8> = (0..len)
        .map(|i| u8::try_from((i + counter as usize) % 251).unwrap())
        .collect();
    master(&payload, &opts, &oem.key, &OsRng).unwrap()
}

fn hash_of(img: &[u8]) -> [u8; 32] {
    Image::parse(img)
        .unwrap()
        .tlv(TlvKind::Sha256)
        .unwrap()
        .try_into()
        .unwrap()
}

/// An MCU with `oem`'s key hash in its fuses and the family key in its secret slot 5.
fn mcu(oem: &Oem, family_key: Option<&SoftDecryptionKey>) -> SimDevice {
    let (_, mut d) = part(DeviceKind::SecureMcu);
    d.program_rot_hash(&key_hash(&oem.public)).unwrap();
    if let Some(k) = family_key {
        d.write_slot(5, k.secret_scalar().unwrap().expose_secret())
            .unwrap();
    }
    d
}

#[track_caller]
fn image_refusal(r: Result<BootOutcome, Error>) -> ImageRefusal {
    match r {
        Err(Error::ImageRefused { reason, .. }) => reason,
        other => panic!("expected an image refusal, got {other:?}"),
    }
}

#[track_caller]
fn booted(r: Result<BootOutcome, Error>) -> ([u8; 32], u32, SwapOutcome) {
    match r {
        Ok(BootOutcome::Verified {
            counter,
            image_hash,
            swap,
        }) => (image_hash, counter, swap),
        other => panic!("expected a verified boot, got {other:?}"),
    }
}

#[test]
fn property_8_every_single_bit_flip_of_an_image_is_refused_by_secure_boot() {
    let oem = oem();
    let good = image(&oem, 1, 40, None);
    let mut d = mcu(&oem, None);
    d.write_boot_slot(BootSlot::Primary, &good).unwrap();
    booted(d.boot());
    for bit in 0..good.len() * 8 {
        let mut bad = good.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        d.write_boot_slot(BootSlot::Primary, &bad).unwrap();
        assert!(d.boot().is_err(), "bit {bit} booted");
    }
}

#[test]
fn property_8_each_refusal_has_its_own_error() {
    let oem = oem();
    let (fk, fp) = family();
    let mut d = mcu(&oem, Some(&fk));
    let good = image(&oem, 5, 300, None);
    d.write_boot_slot(BootSlot::Primary, &good).unwrap();
    assert_eq!(booted(d.boot()).1, 5);

    // Truncated.
    d.write_boot_slot(BootSlot::Primary, &good[..good.len() - 1])
        .unwrap();
    assert!(matches!(
        image_refusal(d.boot()),
        ImageRefusal::Image(VerifyError::Parse(ParseError::Truncated { .. }))
    ));
    // A bad TLV length.
    let mut bad = good.clone();
    let at = Image::parse(&good)
        .unwrap()
        .tlvs()
        .iter()
        .find(|t| t.kind == TlvKind::Sha256 as u16)
        .unwrap()
        .offset;
    bad[at + 2] = 31;
    assert_eq!(
        image_refusal({
            d.write_boot_slot(BootSlot::Primary, &bad).unwrap();
            d.boot()
        }),
        ImageRefusal::Image(VerifyError::Parse(ParseError::BadTlvLength {
            kind: 0x10,
            len: 31
        }))
    );
    // A changed payload byte.
    let mut bad = good.clone();
    bad[40] ^= 0x80;
    d.write_boot_slot(BootSlot::Primary, &bad).unwrap();
    assert_eq!(
        image_refusal(d.boot()),
        ImageRefusal::Image(VerifyError::HashMismatch)
    );
    // Another OEM's image.
    let other = self::oem();
    d.write_boot_slot(BootSlot::Primary, &image(&other, 6, 300, None))
        .unwrap();
    assert_eq!(
        image_refusal(d.boot()),
        ImageRefusal::Image(VerifyError::KeyNotTrusted)
    );
    // Another key's signature under our key: the other key signed, our PUBKEY put in its place.
    let mut forged = image(&other, 6, 300, None);
    let parsed = Image::parse(&forged).unwrap();
    let pk = parsed
        .tlvs()
        .iter()
        .find(|t| t.kind == TlvKind::PubKey as u16)
        .unwrap()
        .offset;
    let spki = oem.public.to_spki_der();
    forged[pk + 4..pk + 4 + spki.len()].copy_from_slice(&spki);
    d.write_boot_slot(BootSlot::Primary, &forged).unwrap();
    assert_eq!(
        image_refusal(d.boot()),
        ImageRefusal::Image(VerifyError::Signature)
    );
    // An older security counter.
    d.write_boot_slot(BootSlot::Primary, &image(&oem, 4, 300, None))
        .unwrap();
    assert_eq!(refusal(d.boot()), Refusal::Rollback);
    // No security counter.
    let mut opts = MasterOptions::new("2.0.0".parse().unwrap(), 0);
    opts.security_counter = None;
    let no_counter = master(&[1; 64], &opts, &oem.key, &OsRng).unwrap();
    d.write_boot_slot(BootSlot::Primary, &no_counter).unwrap();
    assert_eq!(
        image_refusal(d.boot()),
        ImageRefusal::Image(VerifyError::NoSecurityCounter)
    );
    // An encrypted image written straight to the primary slot does not run: only an update
    // through the secondary slot is decrypted (MCUboot keeps the primary slot in clear).
    d.write_boot_slot(BootSlot::Primary, &image(&oem, 6, 300, Some(&fp)))
        .unwrap();
    assert_eq!(
        image_refusal(d.boot()),
        ImageRefusal::Image(VerifyError::HashMismatch)
    );

    // Through the update path, each refusal erases the update and the old image boots.
    d.write_boot_slot(BootSlot::Primary, &good).unwrap();
    let (other_family, other_fp) = family();
    drop(other_family);
    for (update, want) in [
        (
            image(&oem, 6, 300, Some(&other_fp)),
            ImageRefusal::Image(VerifyError::Decrypt),
        ),
        (
            image(&oem, 4, 300, Some(&fp)),
            ImageRefusal::Rollback {
                image: 4,
                device: 5,
            },
        ),
        (
            image(&other, 6, 300, None),
            ImageRefusal::Image(VerifyError::KeyNotTrusted),
        ),
    ] {
        d.write_boot_slot(BootSlot::Secondary, &update).unwrap();
        d.request_update(UpdateRequest::Permanent).unwrap();
        let (hash, counter, swap) = booted(d.boot());
        assert_eq!(swap, SwapOutcome::Refused(want));
        assert_eq!((hash, counter), (hash_of(&good), 5));
        assert!(d.read_boot_slot(BootSlot::Secondary).unwrap().is_empty());
    }
}

#[test]
fn family_and_per_device_encrypted_updates_install_decrypted() {
    let oem = oem();
    let (fk, fp) = family();
    let mut d = mcu(&oem, Some(&fk));
    let device_key = d.generate_key(0).unwrap();
    let v1 = image(&oem, 1, 500, None);
    d.write_boot_slot(BootSlot::Primary, &v1).unwrap();
    booted(d.boot());
    for (counter, to) in [(2, &fp), (3, &device_key)] {
        let update = image(&oem, counter, 500, Some(to));
        d.write_boot_slot(BootSlot::Secondary, &update).unwrap();
        d.request_update(UpdateRequest::Permanent).unwrap();
        let (hash, c, swap) = booted(d.boot());
        assert_eq!(swap, SwapOutcome::Installed { test: false });
        assert_eq!((hash, c), (hash_of(&update), counter));
        // The primary slot holds the image in clear; the payload is no longer the ciphertext.
        assert_ne!(d.read_boot_slot(BootSlot::Primary).unwrap(), update);
        assert_eq!(d.security_counter().unwrap(), counter);
    }
    // Another device's image does not decrypt on this one.
    let (_, mut other) = part(DeviceKind::SecureMcu);
    let other_key = other.generate_key(0).unwrap();
    d.write_boot_slot(BootSlot::Secondary, &image(&oem, 9, 100, Some(&other_key)))
        .unwrap();
    d.request_update(UpdateRequest::Permanent).unwrap();
    assert_eq!(
        booted(d.boot()).2,
        SwapOutcome::Refused(ImageRefusal::Image(VerifyError::Decrypt))
    );
}

#[test]
fn a_test_update_reverts_unless_confirmed_and_the_counter_waits_for_confirmation() {
    let oem = oem();
    let (fk, fp) = family();
    let mut d = mcu(&oem, Some(&fk));
    let old = image(&oem, 1, 400, Some(&fp));
    let new = image(&oem, 2, 400, Some(&fp));
    // Factory programming: the encrypted image through the secondary slot, for good.
    d.write_boot_slot(BootSlot::Secondary, &old).unwrap();
    d.request_update(UpdateRequest::Permanent).unwrap();
    assert_eq!(booted(d.boot()).0, hash_of(&old));

    d.write_boot_slot(BootSlot::Secondary, &new).unwrap();
    d.request_update(UpdateRequest::Test).unwrap();
    let (hash, counter, swap) = booted(d.boot());
    assert_eq!(swap, SwapOutcome::Installed { test: true });
    assert_eq!((hash, counter), (hash_of(&new), 1));
    assert!(d.image_unconfirmed().unwrap());
    // Not confirmed: the next boot goes back to the old image, which still validates (the
    // swap encrypted it again on its way to the secondary slot).
    let (hash, counter, swap) = booted(d.boot());
    assert_eq!(swap, SwapOutcome::Reverted);
    assert_eq!((hash, counter), (hash_of(&old), 1));
    assert_eq!(d.read_boot_slot(BootSlot::Secondary).unwrap(), {
        let mut n = new.clone();
        trustfab_firmware::apply_payload_cipher(&mut n, &[&fk]).unwrap();
        trustfab_firmware::apply_payload_cipher(&mut n, &[&fk]).unwrap();
        n
    });
    // Again, and this time the new image confirms itself.
    d.request_update(UpdateRequest::Test).unwrap();
    booted(d.boot());
    d.confirm_image().unwrap();
    let (hash, counter, swap) = booted(d.boot());
    assert_eq!(swap, SwapOutcome::None);
    assert_eq!((hash, counter), (hash_of(&new), 2));
}

/// Boots `d` through a socket that cuts the power at write `write` of the boot; returns the part
/// as it is read back from its non-volatile memory, and whether the cut happened.
fn boot_with_cut(d: SimDevice, write: u32, after_commit: bool) -> (SimDevice, bool) {
    let mut s = Socket::with_device(d, 0).fault(
        Fault::PowerLossAtWrite {
            write,
            after_commit,
        },
        Trigger::AtOperation(1),
    );
    let r = s.call(trustfab_device::Op::Boot, true, SimDevice::boot);
    let cut = matches!(r, Err(Error::PowerLoss { .. }));
    assert!(cut || r.is_ok(), "{r:?}");
    (copy(s.device().unwrap()), cut)
}

#[test]
fn an_update_survives_a_power_loss_at_every_write_and_a_revert_too() {
    let oem = oem();
    let (fk, fp) = family();
    let old = image(&oem, 1, 300, Some(&fp));
    let new = image(&oem, 2, 300, Some(&fp));
    let mut base = mcu(&oem, Some(&fk));
    base.write_boot_slot(BootSlot::Secondary, &old).unwrap();
    base.request_update(UpdateRequest::Permanent).unwrap();
    booted(base.boot());
    base.write_boot_slot(BootSlot::Secondary, &new).unwrap();

    for request in [UpdateRequest::Permanent, UpdateRequest::Test] {
        let mut cuts = 0;
        for write in 0..8 {
            for after_commit in [false, true] {
                let mut d = copy(&base);
                d.request_update(request).unwrap();
                let (mut d, cut) = boot_with_cut(d, write, after_commit);
                cuts += u32::from(cut);
                if !cut && request == UpdateRequest::Test {
                    // The boot ran whole: the new image runs and confirms itself.
                    d.confirm_image().unwrap();
                }
                // Whatever the cut hit, the part boots: the old image or the new one.
                let (hash, _, _) = booted(d.boot());
                assert!(
                    hash == hash_of(&old) || hash == hash_of(&new),
                    "write {write}"
                );
                if d.image_unconfirmed().unwrap() {
                    d.confirm_image().unwrap();
                }
                // And settles: a permanent update on the new image; a test update on the new
                // one if it ran and confirmed itself, or on the old one when the cut came after
                // the swap, before the new image could confirm (its one boot was lost: MCUboot
                // reverts it, as it would any test image that did not confirm).
                let (hash, counter, _) = booted(d.boot());
                let settled = (hash, counter);
                if request == UpdateRequest::Permanent || !(write == 2 && after_commit) {
                    assert_eq!(settled, (hash_of(&new), 2), "write {write} {after_commit}");
                } else {
                    assert_eq!(settled, (hash_of(&old), 1), "write {write} {after_commit}");
                }
            }
        }
        // Three swap steps (+ the counter for a permanent update), each cut before and after.
        let writes = if request == UpdateRequest::Permanent {
            4
        } else {
            3
        };
        assert_eq!(cuts, writes * 2, "{request:?}");
    }

    // A revert cut at every write still ends on the old image.
    let mut unconfirmed = copy(&base);
    unconfirmed.request_update(UpdateRequest::Test).unwrap();
    assert_eq!(booted(unconfirmed.boot()).0, hash_of(&new));
    for write in 0..4 {
        for after_commit in [false, true] {
            let (mut d, _) = boot_with_cut(copy(&unconfirmed), write, after_commit);
            let (hash, _, _) = booted(d.boot());
            assert!(hash == hash_of(&old) || hash == hash_of(&new));
            let (hash, counter, _) = booted(d.boot());
            assert_eq!((hash, counter), (hash_of(&old), 1), "revert write {write}");
        }
    }
}

#[test]
fn flash_refuses_writes_during_a_swap_and_an_empty_update() {
    let oem = oem();
    let mut d = mcu(&oem, None);
    assert_eq!(
        refusal(d.request_update(UpdateRequest::Test)),
        Refusal::BootRefused
    );
    d.write_boot_slot(BootSlot::Primary, &image(&oem, 1, 64, None))
        .unwrap();
    d.write_boot_slot(BootSlot::Secondary, &image(&oem, 2, 64, None))
        .unwrap();
    d.request_update(UpdateRequest::Permanent).unwrap();
    // Cut after the first swap step: the swap is under way until the next boot finishes it.
    let (mut d, cut) = boot_with_cut(d, 0, true);
    assert!(cut);
    assert_eq!(
        refusal(d.write_boot_slot(BootSlot::Secondary, b"x")),
        Refusal::SwapInProgress
    );
    assert_eq!(booted(d.boot()).2, SwapOutcome::Installed { test: false });
}
