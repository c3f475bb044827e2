//! Every socket fault, and the part's consistency after it.

use std::time::{Duration, Instant};

use trustfab_device::{
    file, Device, DeviceKind, Error, Fault, Op, Refusal, SimDevice, Socket, Trigger, Zone,
};

use crate::{copy, part, verifies, KINDS};

/// The part's whole non-volatile image, to compare before and after a fault.
fn image(s: &Socket) -> Vec<u8> {
    file::encode(s.device().unwrap()).unwrap().to_vec()
}

/// A part with data lock done (so a secure element's data slots read back) and slot 8 = "old".
fn locked_part(kind: DeviceKind) -> SimDevice {
    let (_, mut d) = part(kind);
    crate::provision_and_lock(&mut d);
    d.write_slot(8, b"old").unwrap();
    d
}

#[test]
fn no_contact_executes_nothing_and_the_part_is_unchanged() {
    let mut empty = Socket::new(1);
    assert_eq!(empty.uid(), Err(Error::NoContact));

    let mut s = Socket::with_device(locked_part(DeviceKind::SecureElement), 1)
        .fault(Fault::NoContact, Trigger::AtOperation(2));
    let before = image(&s);
    s.uid().unwrap();
    assert_eq!(s.write_slot(8, b"new"), Err(Error::NoContact));
    assert_eq!(image(&s), before);
    assert_eq!(s.read_slot(8).unwrap(), b"old");
    assert_eq!(s.fault_counts().no_contact, 1);
}

#[test]
fn write_error_leaves_the_slot_unchanged_and_spares_reads() {
    for kind in KINDS {
        let mut s = Socket::with_device(locked_part(kind), 2)
            .fault(Fault::WriteError, Trigger::AtOperation(1))
            .fault(Fault::WriteError, Trigger::AtOperation(2));
        // Operation 1 is a read: the write error does not apply.
        assert_eq!(s.read_slot(8).unwrap(), b"old");
        let before = image(&s);
        assert_eq!(
            s.write_slot(8, b"new"),
            Err(Error::WriteFailed { op: Op::Write })
        );
        assert_eq!(image(&s), before);
        assert_eq!(s.read_slot(8).unwrap(), b"old");
        // The station retries and succeeds.
        s.write_slot(8, b"new").unwrap();
        assert_eq!(s.read_slot(8).unwrap(), b"new");
        assert_eq!(s.fault_counts().write_error, 1);
    }
}

#[test]
fn power_loss_during_a_write_leaves_the_slot_old_or_new_never_torn() {
    for kind in KINDS {
        let mut d = locked_part(kind);
        let old = vec![0x11u8; 300];
        let new = vec![0x22u8; 300];
        let (mut saw_old, mut saw_new) = (0, 0);
        for seed in 0..60 {
            d.write_slot(8, &old).unwrap();
            let mut s =
                Socket::with_device(d, seed).fault(Fault::PowerLoss, Trigger::AtOperation(1));
            assert_eq!(
                s.write_slot(8, &new),
                Err(Error::PowerLoss { op: Op::Write })
            );
            let got = s.read_slot(8).unwrap();
            if got == old {
                saw_old += 1;
            } else if got == new {
                saw_new += 1;
            } else {
                panic!("torn slot: {got:?}");
            }
            d = s.remove().unwrap();
            // Everything else is as it was: the part is still consistent.
            assert!(d.lock_state().unwrap().data);
            let _ = copy(&d);
        }
        assert!(
            saw_old > 0 && saw_new > 0,
            "{kind}: old {saw_old}, new {saw_new}"
        );
    }
}

#[test]
fn power_loss_during_key_generation_leaves_the_old_key_or_a_whole_new_one() {
    let (_, mut d) = part(DeviceKind::SecureElement);
    let mut current = d.generate_key(2).unwrap();
    let (mut kept, mut replaced) = (0, 0);
    for seed in 0..40 {
        let mut s = Socket::with_device(d, seed).fault(Fault::PowerLoss, Trigger::AtOperation(1));
        assert_eq!(
            s.generate_key(2).unwrap_err(),
            Error::PowerLoss { op: Op::GenKey }
        );
        let now = s.public_key(2).unwrap();
        if now == current {
            kept += 1;
        } else {
            replaced += 1;
        }
        // Whichever key is there signs and verifies under what the part reports.
        let sig = s.sign_challenge(2, b"after power loss").unwrap();
        assert!(verifies(now.point(), b"after power loss", &sig));
        current = now;
        d = s.remove().unwrap();
    }
    assert!(kept > 0 && replaced > 0, "kept {kept}, replaced {replaced}");
}

#[test]
fn power_loss_during_lock_leaves_it_locked_or_unlocked() {
    let (mut saw_locked, mut saw_unlocked) = (0, 0);
    for seed in 0..30 {
        let (_, d) = part(DeviceKind::SecureElement);
        let mut s = Socket::with_device(d, seed).fault(Fault::PowerLoss, Trigger::AtOperation(1));
        assert_eq!(s.lock(Zone::Data), Err(Error::PowerLoss { op: Op::Lock }));
        if s.lock_state().unwrap().data {
            saw_locked += 1;
            // A lock that happened stays: writes are refused.
            assert_eq!(
                s.write_slot(10, b"x").unwrap_err().refusal(),
                Some(Refusal::WriteProtected)
            );
        } else {
            saw_unlocked += 1;
            s.write_slot(10, b"x").unwrap();
            s.lock(Zone::Data).unwrap();
        }
    }
    assert!(saw_locked > 0 && saw_unlocked > 0);
}

#[test]
fn slow_answers_time_out_but_the_part_executed_the_command() {
    let d = locked_part(DeviceKind::SecureMcu);
    let mut s = Socket::with_device(d, 3)
        .fault(
            Fault::Slow {
                delay: Duration::from_millis(30),
            },
            Trigger::AtOperation(1),
        )
        .fault(
            Fault::Slow {
                delay: Duration::from_millis(2),
            },
            Trigger::AtOperation(3),
        )
        .timeout(Duration::from_millis(10));
    let t = Instant::now();
    assert_eq!(
        s.write_slot(8, b"slow"),
        Err(Error::Timeout {
            op: Op::Write,
            timeout_ms: 10
        })
    );
    assert!(t.elapsed() >= Duration::from_millis(10));
    assert_eq!(s.read_slot(8).unwrap(), b"slow");
    // Slow but within the timeout: answered.
    let t = Instant::now();
    assert_eq!(s.read_slot(8).unwrap(), b"slow");
    assert!(t.elapsed() >= Duration::from_millis(2));
    assert_eq!(s.fault_counts().slow, 2);
}

#[test]
fn probabilistic_faults_are_seeded_and_near_their_rate() {
    let run = |seed: u64| {
        let (_, d) = part(DeviceKind::SecureElement);
        let mut s =
            Socket::with_device(d, seed).fault(Fault::NoContact, Trigger::Probability(0.25));
        let outcomes: Vec<bool> = (0..2000).map(|_| s.uid().is_ok()).collect();
        (outcomes, s.fault_counts().no_contact)
    };
    let (a, fired) = run(42);
    let (b, _) = run(42);
    let (c, _) = run(43);
    assert_eq!(a, b, "same seed, same faults");
    assert_ne!(a, c);
    assert!((400..600).contains(&fired), "fired {fired} of 2000");
}

#[test]
fn every_fault_kind_fires_and_the_part_stays_consistent() {
    for kind in KINDS {
        let d = locked_part(kind);
        let mut s = Socket::with_device(d, 9)
            .fault(Fault::NoContact, Trigger::Probability(0.1))
            .fault(Fault::WriteError, Trigger::Probability(0.1))
            .fault(Fault::PowerLoss, Trigger::Probability(0.1))
            .fault(
                Fault::Slow {
                    delay: Duration::from_micros(10),
                },
                Trigger::Probability(0.1),
            );
        let mut last_good = b"old".to_vec();
        for i in 0..400u32 {
            let value = i.to_be_bytes().to_vec();
            match s.write_slot(8, &value) {
                Ok(()) => last_good = value,
                Err(Error::PowerLoss { .. }) => {
                    // Either value is fine; learn which one holds.
                    let mut d = copy(s.device().unwrap());
                    let now = d.read_slot(8).unwrap();
                    assert!(now == value || now == last_good, "torn");
                    last_good = now;
                }
                Err(Error::NoContact | Error::WriteFailed { .. }) => {}
                Err(e) => panic!("unexpected {e}"),
            }
            let mut d = copy(s.device().unwrap());
            assert_eq!(d.read_slot(8).unwrap(), last_good);
            assert_eq!(
                d.read_slot(0).unwrap_err().refusal(),
                Some(Refusal::NotReadable)
            );
            assert!(d.lock_state().unwrap().data);
        }
        let c = s.fault_counts();
        assert!(
            c.no_contact > 0 && c.write_error > 0 && c.power_loss > 0 && c.slow > 0,
            "{c:?}"
        );
    }
}

/// A station's provisioning sequence with retries, driven through `dyn Device` as a station
/// drives any part: each step is retried after a fault until the part answers; a lock that
/// already happened counts as done.
fn provision_with_retries(d: &mut dyn Device, certs: &[Vec<u8>; 3]) -> usize {
    let mut faults = 0;
    loop {
        match d.generate_key(0) {
            Ok(_) => break,
            Err(e) => {
                assert!(e.refusal().is_none(), "{e}");
                faults += 1;
            }
        }
    }
    for (slot, cert) in [10u8, 11, 12].into_iter().zip(certs) {
        while let Err(e) = d.write_slot(slot, cert) {
            assert!(e.refusal().is_none(), "{e}");
            faults += 1;
        }
    }
    loop {
        match d.lock(Zone::Data) {
            Ok(()) => break,
            Err(e) if e.refusal() == Some(Refusal::AlreadyLocked) => break,
            Err(e) => {
                assert!(e.refusal().is_none(), "{e}");
                faults += 1;
            }
        }
    }
    faults
}

#[test]
fn provisioning_survives_a_power_loss_at_every_step() {
    let certs = [vec![0xC1; 500], vec![0xC2; 400], vec![0xC3; 300]];
    // A clean run counts the operations.
    let (mut v, d) = part(DeviceKind::SecureElement);
    let mut clean = Socket::with_device(d, 0);
    assert_eq!(provision_with_retries(&mut clean, &certs), 0);
    let n = clean.operations();
    assert_eq!(n, 5);
    for i in 1..=n {
        for seed in 0..4 {
            let d = v
                .manufacture(DeviceKind::SecureElement, crate::NOW)
                .unwrap();
            let mut s =
                Socket::with_device(d, seed).fault(Fault::PowerLoss, Trigger::AtOperation(i));
            assert_eq!(provision_with_retries(&mut s, &certs), 1, "step {i}");
            // Whatever the cut hit, the part ends fully provisioned and consistent.
            let mut d = copy(s.device().unwrap());
            assert!(d.lock_state().unwrap().data);
            for (slot, cert) in [10u8, 11, 12].into_iter().zip(&certs) {
                assert_eq!(&d.read_slot(slot).unwrap(), cert);
            }
            let pk = d.public_key(0).unwrap();
            let sig = d.sign_challenge(0, b"verify").unwrap();
            assert!(verifies(pk.point(), b"verify", &sig));
            assert_eq!(
                d.read_slot(0).unwrap_err().refusal(),
                Some(Refusal::NotReadable)
            );
        }
    }
}
