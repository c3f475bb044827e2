//! Random command sequences through a faulty socket, with the part's invariants checked after
//! every step on a fault-free copy of its state.

use std::collections::HashMap;

use proptest::prelude::*;
use trustfab_device::{
    Device, DeviceKind, Fault, Refusal, SimDevice, SlotKind, Socket, Trigger, WritePolicy, Zone,
};

use crate::{copy, vendor, verifies, NOW};

#[derive(Clone, Debug)]
enum Cmd {
    GenKey(u8),
    Attest(u8),
    Write(u8, usize),
    Read(u8),
    Sign(u8),
    Lock(u8),
    Counter(u8),
    ProgramRot,
    Random,
}

fn cmd() -> impl Strategy<Value = Cmd> {
    prop_oneof![
        (0u8..16).prop_map(Cmd::GenKey),
        (0u8..16).prop_map(Cmd::Attest),
        ((0u8..16), 0usize..600).prop_map(|(s, n)| Cmd::Write(s, n)),
        (0u8..16).prop_map(Cmd::Read),
        (0u8..16).prop_map(Cmd::Sign),
        (0u8..18).prop_map(Cmd::Lock),
        (0u8..3).prop_map(Cmd::Counter),
        Just(Cmd::ProgramRot),
        Just(Cmd::Random),
    ]
}

/// What a slot shows from outside: its readable content or its public key.
#[derive(Clone, Debug, PartialEq)]
enum Seen {
    Data(Vec<u8>),
    Key(Option<Vec<u8>>),
    Hidden,
}

fn observe(d: &mut SimDevice) -> HashMap<u8, Seen> {
    let mut out = HashMap::new();
    for s in d.slots().unwrap() {
        let seen = match s.config.kind {
            SlotKind::PrivateKey => Seen::Key(d.public_key(s.id).ok().map(|k| k.point().to_vec())),
            SlotKind::Secret => Seen::Hidden,
            _ => match d.read_slot(s.id) {
                Ok(v) => Seen::Data(v),
                Err(_) => Seen::Hidden,
            },
        };
        out.insert(s.id, seen);
    }
    out
}

fn check(
    d: &mut SimDevice,
    prev_lock: (bool, bool),
    frozen: &mut HashMap<u8, Seen>,
) -> (bool, bool) {
    let lock = d.lock_state().unwrap();
    // Locks are one-way.
    assert!(!prev_lock.0 || lock.config, "config lock undone");
    assert!(!prev_lock.1 || lock.data, "data lock undone");
    assert!(!lock.data || lock.config, "data locked before config");
    if d.kind() == DeviceKind::SecureMcu {
        use trustfab_device::sim::Lifecycle;
        let expected = match (lock.config, lock.data) {
            (false, _) => Lifecycle::Open,
            (true, false) => Lifecycle::Provisioned,
            (true, true) => Lifecycle::Locked,
        };
        assert_eq!(d.lifecycle().unwrap(), expected);
    }
    let slots = d.slots().unwrap();
    // A secure element hides its data zone until the data lock: look through a copy locked for
    // the purpose (a lock never changes content).
    let mut probe = copy(d);
    if probe.kind() == DeviceKind::SecureElement && lock.config && !lock.data {
        probe.lock(Zone::Data).unwrap();
    }
    let seen = observe(&mut probe);
    for s in &slots {
        // Key and secret slots are never readable.
        if matches!(s.config.kind, SlotKind::PrivateKey | SlotKind::Secret) {
            assert_eq!(
                d.read_slot(s.id).unwrap_err().refusal(),
                Some(Refusal::NotReadable)
            );
        }
        // A key signs under the public key the part reports.
        if let Some(Seen::Key(Some(point))) = seen.get(&s.id) {
            let sig = d.sign_challenge(s.id, b"invariant").unwrap();
            assert!(verifies(point, b"invariant", &sig));
        }
        // After the data lock, a write-protected slot never changes; a locked slot neither.
        let protected = (lock.data && s.config.write != WritePolicy::Always) || s.locked;
        if protected {
            let now = seen.get(&s.id).cloned().unwrap();
            let first = frozen.entry(s.id).or_insert_with(|| now.clone());
            assert_eq!(*first, now, "protected slot {} changed", s.id);
        }
    }
    (lock.config, lock.data)
}

fn run(kind: DeviceKind, seed: u64, cmds: &[Cmd]) {
    let mut v = vendor();
    let d = v.manufacture(kind, NOW).unwrap();
    let mut s = Socket::with_device(d, seed)
        .fault(Fault::NoContact, Trigger::Probability(0.05))
        .fault(Fault::WriteError, Trigger::Probability(0.05))
        .fault(Fault::PowerLoss, Trigger::Probability(0.1));
    let mut frozen = HashMap::new();
    let mut lock = check(&mut copy(s.device().unwrap()), (false, false), &mut frozen);
    for c in cmds {
        match c {
            Cmd::GenKey(slot) => drop(s.generate_key(*slot)),
            Cmd::Attest(slot) => drop(s.generate_key_attested(*slot, &[3; 32])),
            Cmd::Write(slot, n) => drop(s.write_slot(*slot, &vec![0xA5; *n])),
            Cmd::Read(slot) => drop(s.read_slot(*slot)),
            Cmd::Sign(slot) => drop(s.sign_digest(*slot, &[9; 32])),
            Cmd::Lock(z) => drop(s.lock(match z {
                16 => Zone::Config,
                17 => Zone::Data,
                n => Zone::Slot(*n),
            })),
            Cmd::Counter(c) => drop(s.counter_increment(*c)),
            Cmd::ProgramRot => drop(s.call(trustfab_device::Op::Fuse, true, |d| {
                d.program_rot_hash(&[1; 32])
            })),
            Cmd::Random => drop(s.random()),
        }
        lock = check(&mut copy(s.device().unwrap()), lock, &mut frozen);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn invariants_hold_after_every_command(
        mcu in any::<bool>(),
        seed in any::<u64>(),
        cmds in proptest::collection::vec(cmd(), 1..40),
    ) {
        let kind = if mcu { DeviceKind::SecureMcu } else { DeviceKind::SecureElement };
        run(kind, seed, &cmds);
    }
}
