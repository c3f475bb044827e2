//! Every rule a part enforces, on both kinds of part.

use trustfab_device::{
    Device, DeviceKind, Error, Op, Refusal, SlotKind, Status, WritePolicy, Zone,
};

use crate::{part, provision_and_lock, refusal, slots_of, verifies, KINDS, NOW};

#[test]
fn property_6_key_and_secret_slots_are_never_readable() {
    for kind in KINDS {
        let (_, mut d) = part(kind);
        let hidden: Vec<u8> = d
            .slots()
            .unwrap()
            .into_iter()
            .filter(|s| matches!(s.config.kind, SlotKind::PrivateKey | SlotKind::Secret))
            .map(|s| s.id)
            .collect();
        assert!(hidden.len() >= 2);
        // Empty, filled, and after lock: never.
        for id in &hidden {
            assert_eq!(
                refusal(d.read_slot(*id)),
                Refusal::NotReadable,
                "{kind} slot {id}"
            );
        }
        provision_and_lock(&mut d);
        for id in &hidden {
            let err = d.read_slot(*id).unwrap_err();
            assert_eq!(err.refusal(), Some(Refusal::NotReadable));
            let expected = match kind {
                DeviceKind::SecureElement => Status::Atecc(0x0F),
                DeviceKind::SecureMcu => Status::Psa(-133),
            };
            assert!(matches!(err, Error::Refused { status, .. } if status == expected));
        }
    }
}

#[test]
fn property_6_write_after_lock_is_refused_for_every_write_protected_slot() {
    for kind in KINDS {
        let (_, mut d) = part(kind);
        provision_and_lock(&mut d);
        let slots = d.slots().unwrap();
        let mut protected = 0;
        for s in &slots {
            if s.config.write == WritePolicy::Always {
                continue;
            }
            protected += 1;
            if s.config.kind == SlotKind::PrivateKey {
                let before = d.public_key(s.id).unwrap();
                assert_eq!(refusal(d.generate_key(s.id)), Refusal::WriteProtected);
                assert_eq!(
                    refusal(d.generate_key_attested(s.id, &[1; 32])),
                    Refusal::WriteProtected
                );
                assert_eq!(d.public_key(s.id).unwrap(), before, "key replaced");
                assert_eq!(refusal(d.write_slot(s.id, b"x")), Refusal::WrongSlotKind);
            } else {
                let err = d.write_slot(s.id, b"overwrite").unwrap_err();
                assert_eq!(
                    err.refusal(),
                    Some(Refusal::WriteProtected),
                    "{kind} slot {}",
                    s.id
                );
                let Error::Refused {
                    op, slot, status, ..
                } = err
                else {
                    unreachable!()
                };
                assert_eq!((op, slot), (Op::Write, Some(s.id)));
                assert_eq!(
                    status,
                    match kind {
                        DeviceKind::SecureElement => Status::Atecc(0x0F),
                        DeviceKind::SecureMcu => Status::Psa(-133),
                    }
                );
                if s.config.kind != SlotKind::Secret {
                    let len = usize::from(s.config.capacity.min(64));
                    assert_eq!(
                        d.read_slot(s.id).unwrap(),
                        vec![s.id; len],
                        "content changed"
                    );
                }
            }
        }
        assert!(protected >= 5, "{kind}: {protected} write-protected slots");
        // Slots whose policy is Always stay writable after lock.
        for s in slots
            .iter()
            .filter(|s| s.config.write == WritePolicy::Always)
        {
            match s.config.kind {
                SlotKind::PrivateKey => {
                    d.generate_key(s.id).unwrap();
                }
                _ => d.write_slot(s.id, b"still writable").unwrap(),
            }
        }
    }
}

#[test]
fn locks_are_one_way_and_ordered() {
    for kind in KINDS {
        let (mut v, _) = part(kind);
        let mut d = v.manufacture_blank(kind, NOW).unwrap();
        assert!(!d.lock_state().unwrap().config);
        // Data before config: refused, nothing changes.
        assert_eq!(refusal(d.lock(Zone::Data)), Refusal::ConfigUnlocked);
        assert!(!d.lock_state().unwrap().data);
        d.lock(Zone::Config).unwrap();
        assert_eq!(refusal(d.lock(Zone::Config)), Refusal::AlreadyLocked);
        if kind == DeviceKind::SecureMcu {
            assert_eq!(refusal(d.lock(Zone::Data)), Refusal::Lifecycle);
            d.program_rot_hash(&[1; 32]).unwrap();
        }
        d.lock(Zone::Data).unwrap();
        assert_eq!(refusal(d.lock(Zone::Data)), Refusal::AlreadyLocked);
        assert_eq!(refusal(d.lock(Zone::Config)), Refusal::AlreadyLocked);
        let state = d.lock_state().unwrap();
        assert!(state.config && state.data);
        // The configuration is frozen too.
        let cfg = d.slots().unwrap()[0].config;
        assert_eq!(refusal(d.configure_slot(0, cfg)), Refusal::AlreadyLocked);
    }
}

#[test]
fn a_locked_slot_refuses_writes_even_when_its_policy_allows_them() {
    let (_, mut d) = part(DeviceKind::SecureElement);
    // Slot 14: data, lockable. Slot 8: not lockable.
    d.write_slot(14, b"v1").unwrap();
    d.lock(Zone::Slot(14)).unwrap();
    assert_eq!(refusal(d.write_slot(14, b"v2")), Refusal::SlotLocked);
    assert_eq!(refusal(d.lock(Zone::Slot(14))), Refusal::AlreadyLocked);
    assert_eq!(refusal(d.lock(Zone::Slot(8))), Refusal::NotLockable);
    // Slot 0: identity key, lockable: no new key after its lock.
    d.generate_key(0).unwrap();
    d.lock(Zone::Slot(0)).unwrap();
    assert_eq!(refusal(d.generate_key(0)), Refusal::SlotLocked);
}

#[test]
fn a_slot_signature_verifies_with_the_public_key_it_reported() {
    for kind in KINDS {
        let (_, mut d) = part(kind);
        for slot in slots_of(&mut d, SlotKind::PrivateKey) {
            assert_eq!(refusal(d.sign_challenge(slot, b"c")), Refusal::NoKey);
            let pk = d.generate_key(slot).unwrap();
            assert_eq!(d.public_key(slot).unwrap(), pk);
            let challenge = d.random().unwrap();
            let sig = d.sign_challenge(slot, &challenge).unwrap();
            assert!(verifies(pk.point(), &challenge, &sig));
            assert!(!verifies(pk.point(), b"another challenge", &sig));
            // A new key in the slot: the old public key no longer verifies.
            let pk2 = d.generate_key(slot).unwrap();
            assert_ne!(pk, pk2);
            let sig2 = d.sign_challenge(slot, &challenge).unwrap();
            assert!(verifies(pk2.point(), &challenge, &sig2));
            assert!(!verifies(pk.point(), &challenge, &sig2));
        }
        assert_eq!(refusal(d.sign_challenge(8, b"c")), Refusal::WrongSlotKind);
        assert_eq!(refusal(d.generate_key(8)), Refusal::WrongSlotKind);
    }
}

#[test]
fn secure_element_data_zone_is_unreadable_before_data_lock() {
    let (_, mut d) = part(DeviceKind::SecureElement);
    d.write_slot(10, b"cert").unwrap();
    assert_eq!(refusal(d.read_slot(10)), Refusal::DataUnlocked);
    d.lock(Zone::Data).unwrap();
    assert_eq!(d.read_slot(10).unwrap(), b"cert");
    // The MCU's storage is readable in every state.
    let (_, mut m) = part(DeviceKind::SecureMcu);
    m.write_slot(10, b"cert").unwrap();
    assert_eq!(m.read_slot(10).unwrap(), b"cert");
}

#[test]
fn blank_secure_element_refuses_keys_and_writes_and_gives_the_test_pattern() {
    let mut v = crate::vendor();
    let mut d = v.manufacture_blank(DeviceKind::SecureElement, NOW).unwrap();
    assert_eq!(refusal(d.generate_key(0)), Refusal::ConfigUnlocked);
    assert_eq!(refusal(d.write_slot(8, b"x")), Refusal::ConfigUnlocked);
    let r = d.random().unwrap();
    assert_eq!(&r[..8], &[0xFF, 0xFF, 0, 0, 0xFF, 0xFF, 0, 0]);
    // Reconfigure slot 8 as a write-once certificate slot, then lock.
    let mut cfg = d
        .slots()
        .unwrap()
        .into_iter()
        .find(|s| s.id == 8)
        .unwrap()
        .config;
    cfg.kind = SlotKind::Certificate;
    cfg.write = WritePolicy::UntilLock;
    d.configure_slot(8, cfg).unwrap();
    d.lock(Zone::Config).unwrap();
    assert_ne!(d.random().unwrap(), r);
    d.write_slot(8, b"x").unwrap();
    d.lock(Zone::Data).unwrap();
    assert_eq!(refusal(d.write_slot(8, b"y")), Refusal::WriteProtected);
}

#[test]
fn bad_parameters_get_the_parts_parse_status() {
    let (_, mut se) = part(DeviceKind::SecureElement);
    let (_, mut mcu) = part(DeviceKind::SecureMcu);
    let e = se.read_slot(1).unwrap_err();
    assert!(matches!(
        e,
        Error::Refused {
            refusal: Refusal::NoSuchSlot,
            status: Status::Atecc(0x03),
            ..
        }
    ));
    assert_eq!(e.to_string(), "read slot 1: no such slot (status 0x03)");
    let e = mcu.read_slot(1).unwrap_err();
    assert!(matches!(
        e,
        Error::Refused {
            refusal: Refusal::NoSuchSlot,
            status: Status::Psa(-140),
            ..
        }
    ));
    let too_long = vec![0u8; 417];
    assert_eq!(refusal(se.write_slot(8, &too_long)), Refusal::TooLong);
    let e = se.write_slot(8, &too_long).unwrap_err();
    assert!(matches!(
        e,
        Error::Refused {
            status: Status::Atecc(0x03),
            ..
        }
    ));
    se.lock(Zone::Data).unwrap();
    assert_eq!(
        se.write_slot(10, b"x").unwrap_err().to_string(),
        "write slot 10: slot is write-protected (status 0x0f)"
    );
}

#[test]
fn counters_only_go_up() {
    for kind in KINDS {
        let (_, mut d) = part(kind);
        assert_eq!(d.counter_read(0).unwrap(), 0);
        assert_eq!(d.counter_increment(0).unwrap(), 1);
        assert_eq!(d.counter_increment(0).unwrap(), 2);
        assert_eq!(d.counter_read(1).unwrap(), 0);
        assert_eq!(refusal(d.counter_increment(2)), Refusal::NoSuchCounter);
    }
    let (_, mut d) = part(DeviceKind::SecureElement);
    for _ in 0..5 {
        d.counter_increment(1).unwrap();
    }
    assert_eq!(d.counter_read(1).unwrap(), 5);
}

#[test]
fn debug_output_never_shows_key_material() {
    let (_, mut d) = part(DeviceKind::SecureElement);
    d.generate_key(0).unwrap();
    let text = format!("{d:?}");
    assert!(text.contains("SimDevice"));
    assert!(!text.contains("pair"));
    let der = trustfab_device::file::encode(&d).unwrap();
    // No run of 16 bytes of the file image (which holds the keys) appears in the debug text.
    assert!(!text.contains(&hex::encode(&der[40..56])));
}

#[test]
fn a_counter_at_its_limit_refuses_to_count() {
    use trustfab_device::{file, sim::COUNTER_LIMIT};
    let (_, d) = part(DeviceKind::SecureElement);
    let mut img = file::encode(&d).unwrap().to_vec();
    // Header: magic 8, version 2, kind 1, uid length + uid, then the attestation key and
    // certificate (u16 length each), the two lock bytes and the counter count.
    let mut at = 11;
    at += 1 + usize::from(img[at]);
    for _ in 0..2 {
        at += 2 + usize::from(u16::from_be_bytes([img[at], img[at + 1]]));
    }
    at += 3;
    img[at..at + 4].copy_from_slice(&(COUNTER_LIMIT - 1).to_be_bytes());
    let body = img.len() - 32;
    let sum = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &img[..body]);
    img[body..].copy_from_slice(sum.as_ref());
    let mut d = file::decode(&img).unwrap();
    assert_eq!(d.counter_read(0).unwrap(), COUNTER_LIMIT - 1);
    assert_eq!(d.counter_increment(0).unwrap(), COUNTER_LIMIT);
    assert_eq!(refusal(d.counter_increment(0)), Refusal::CounterLimit);
    assert_eq!(d.counter_read(0).unwrap(), COUNTER_LIMIT);
    // Past the limit is not a valid file.
    img[at..at + 4].copy_from_slice(&(COUNTER_LIMIT + 1).to_be_bytes());
    let sum = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &img[..body]);
    img[body..].copy_from_slice(sum.as_ref());
    assert!(file::decode(&img).is_err());
}
