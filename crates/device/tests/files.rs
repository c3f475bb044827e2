//! The device file: round trip, atomic writes, and refusal of bad input without a panic.

use proptest::prelude::*;
use trustfab_device::file::{self, DecodeError, FileError};
use trustfab_device::sim::{BootSlot, Lifecycle};
use trustfab_device::{Device, DeviceKind, SimDevice, Zone};

use crate::{part, verifies, KINDS, NOW};

fn rich(kind: DeviceKind) -> SimDevice {
    let (_, mut d) = part(kind);
    d.generate_key(0).unwrap();
    d.write_slot(10, b"device certificate").unwrap();
    d.write_slot(8, b"data").unwrap();
    d.counter_increment(1).unwrap();
    if kind == DeviceKind::SecureMcu {
        d.lock(Zone::Config).unwrap();
        d.program_rot_hash(&[4; 32]).unwrap();
        d.write_boot_slot(BootSlot::Primary, b"firmware").unwrap();
        d.advance_security_counter(9).unwrap();
    }
    d.lock(Zone::Data).unwrap();
    d
}

/// Re-seals an edited image with a fresh checksum, as an attacker with the file could.
fn reseal(mut body: Vec<u8>) -> Vec<u8> {
    body.truncate(body.len() - 32);
    let sum = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body);
    body.extend_from_slice(sum.as_ref());
    body
}

#[test]
fn a_part_round_trips_through_its_file() {
    for kind in KINDS {
        let mut d = rich(kind);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev1");
        file::save(&d, &path).unwrap();
        let mut back = file::load(&path).unwrap();
        assert_eq!(back.uid().unwrap(), d.uid().unwrap());
        assert_eq!(back.slots().unwrap(), d.slots().unwrap());
        assert_eq!(back.lock_state().unwrap(), d.lock_state().unwrap());
        assert_eq!(back.read_slot(10).unwrap(), b"device certificate");
        assert_eq!(back.counter_read(1).unwrap(), 1);
        assert_eq!(
            back.attestation_certificate().unwrap(),
            d.attestation_certificate().unwrap()
        );
        // The same key: the reloaded part signs under the public key reported before.
        let pk = d.public_key(0).unwrap();
        let sig = back.sign_challenge(0, b"reloaded").unwrap();
        assert!(verifies(pk.point(), b"reloaded", &sig));
        if kind == DeviceKind::SecureMcu {
            assert_eq!(back.lifecycle().unwrap(), Lifecycle::Locked);
            assert_eq!(back.rot_hash().unwrap(), Some([4; 32]));
            assert_eq!(back.security_counter().unwrap(), 9);
            assert_eq!(back.read_boot_slot(BootSlot::Primary).unwrap(), b"firmware");
        }
        // Encoding is deterministic.
        assert_eq!(*file::encode(&back).unwrap(), *file::encode(&d).unwrap());
    }
}

#[test]
fn saving_is_atomic_owner_only_and_leaves_no_temporary_file() {
    let d = rich(DeviceKind::SecureElement);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev1");
    std::fs::write(&path, b"previous content").unwrap();
    file::save(&d, &path).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("dev1")]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // A save into a missing directory fails and leaves nothing behind.
    let err = file::save(&d, &dir.path().join("missing/dev2")).unwrap_err();
    assert!(matches!(err, FileError::Io { .. }));
}

#[test]
fn bad_files_are_refused_with_the_reason() {
    let d = rich(DeviceKind::SecureElement);
    let good = file::encode(&d).unwrap().to_vec();

    assert_eq!(
        file::decode(b"NOTADEVICEFILE").unwrap_err(),
        DecodeError::BadMagic { expected: "device" }
    );
    let mut v2 = good.clone();
    v2[9] = 3;
    assert_eq!(
        file::decode(&v2).unwrap_err(),
        DecodeError::UnsupportedVersion {
            found: 3,
            supported: 2
        }
    );
    let mut flipped = good.clone();
    flipped[40] ^= 1;
    assert_eq!(file::decode(&flipped).unwrap_err(), DecodeError::Checksum);
    let big = vec![0u8; trustfab_device::limits::DEVICE_FILE_BYTES + 1];
    assert!(matches!(
        file::decode(&big).unwrap_err(),
        DecodeError::TooLarge { .. }
    ));
    // Trailing bytes, resealed.
    let mut trailing = good.clone();
    trailing.insert(good.len() - 32, 0);
    assert_eq!(
        file::decode(&reseal(trailing)).unwrap_err(),
        DecodeError::Trailing(1)
    );
    // Every truncation is refused.
    for n in 0..good.len() {
        assert!(
            file::decode(&good[..n]).is_err(),
            "prefix of {n} bytes accepted"
        );
    }
    // The error text names the field.
    let e = DecodeError::Invalid {
        field: "slot read policy",
    };
    assert_eq!(e.to_string(), "file field slot read policy is invalid");
}

#[test]
fn a_file_cannot_make_a_key_slot_readable() {
    let (_, mut d) = part(DeviceKind::SecureElement);
    d.generate_key(0).unwrap();
    let good = file::encode(&d).unwrap().to_vec();
    // Slot 0's record: id 0, kind 1 (private key), read 2 (never), write 2, lockable 1,
    // locked 0, capacity 0 (two bytes), then content 2 (key). Set read to 1 (clear).
    let slots_at = good
        .windows(9)
        .position(|w| w == [0, 1, 2, 2, 1, 0, 0, 0, 2])
        .expect("slot 0 record");
    let mut edited = good;
    edited[slots_at + 2] = 1;
    assert_eq!(
        file::decode(&reseal(edited)).unwrap_err(),
        DecodeError::Invalid {
            field: "slot read policy"
        }
    );
}

#[test]
fn vendor_round_trips_and_continues_its_uids() {
    let mut v = crate::vendor();
    let a = v.manufacture(DeviceKind::SecureElement, NOW).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vendor");
    file::save_vendor(&v, &path).unwrap();
    let mut back = file::load_vendor(&path).unwrap();
    assert_eq!(back.root_der(), v.root_der());
    assert_eq!(back.made(), 1);
    let b = back.manufacture(DeviceKind::SecureElement, NOW).unwrap();
    assert_ne!(a.uid_label(), b.uid_label());
    assert_eq!(b.uid_label(), &v.uid(DeviceKind::SecureElement, 1).unwrap());
    assert!(matches!(
        file::load_vendor(&dir.path().join("none")),
        Err(FileError::Io { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = file::decode(&bytes);
        let _ = file::decode_vendor(&bytes);
    }

    #[test]
    fn resealed_mutations_never_panic_the_decoder(at in 10usize..400, value in any::<u8>()) {
        let (_, d) = part(DeviceKind::SecureMcu);
        let mut img = file::encode(&d).unwrap().to_vec();
        let body = img.len() - 32;
        let i = at % body;
        img[i] = value;
        let _ = file::decode(&reseal(img));
    }
}

#[test]
fn fuzz_seeds_replay() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/device_file");
    let mut devices = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        // The fuzz target's entry points, on every seed and every truncation of it.
        for n in 0..=bytes.len() {
            let _ = file::decode(&bytes[..n]);
            let _ = file::decode_vendor(&bytes[..n]);
        }
        if bytes.starts_with(file::DEVICE_MAGIC) {
            file::decode(&bytes).unwrap();
            devices += 1;
        } else {
            file::decode_vendor(&bytes).unwrap();
        }
    }
    assert_eq!(devices, 2);
}
