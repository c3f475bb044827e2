//! The device crate's one integration test binary. Where new tests go:
//!
//! - `rules`: every rule a part enforces (key slots, write protection, locks, signatures,
//!   status codes, counters);
//! - `attestation`: factory attestation to the silicon vendor root;
//! - `mcu`: fuses, lifecycle, flash, security counter;
//! - `boot`: secure boot of MCUboot images and the update swap (power loss at every write);
//! - `install`: keys wrapped to the device's identity key, unwrapped inside into a secret slot;
//! - `faults`: every socket fault and the part's consistency after it;
//! - `files`: the device file: round trip, atomic writes, refusals of bad input;
//! - `fleet`: UID uniqueness and the in-memory fleet;
//! - `props`: random command sequences with invariants checked after every step.

// Fixtures outside #[test] functions panic on failure, as the tests do.
#![allow(clippy::unwrap_used)]

mod attestation;
mod boot;
mod faults;
mod files;
mod fleet;
mod install;
mod mcu;
mod props;
mod rules;

use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use trustfab_device::{
    file, Device, DeviceKind, Error, Refusal, SiliconVendor, SimDevice, SlotKind,
};
use trustfab_types::{OsRng, UnixTime};

/// A fixed "now" for certificates: 2025-11-24.
pub const NOW: UnixTime = UnixTime(1_764_000_000);

/// Both kinds of part.
pub const KINDS: [DeviceKind; 2] = [DeviceKind::SecureElement, DeviceKind::SecureMcu];

/// A fresh silicon vendor.
pub fn vendor() -> SiliconVendor {
    SiliconVendor::new(NOW, &OsRng).unwrap()
}

/// A vendor and one part of `kind` from it.
pub fn part(kind: DeviceKind) -> (SiliconVendor, SimDevice) {
    let mut v = vendor();
    let d = v.manufacture(kind, NOW).unwrap();
    (v, d)
}

/// The refusal of a result, panicking on success or on a fault.
#[track_caller]
pub fn refusal<T: std::fmt::Debug>(r: Result<T, Error>) -> Refusal {
    match r {
        Err(Error::Refused { refusal, .. }) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Verifies a DER ECDSA-P256-SHA256 signature over `msg` with an uncompressed point.
pub fn verifies(point: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
        .verify(msg, sig)
        .is_ok()
}

/// Ids of the slots of `kind` in `d`.
pub fn slots_of(d: &mut SimDevice, kind: SlotKind) -> Vec<u8> {
    d.slots()
        .unwrap()
        .into_iter()
        .filter(|s| s.config.kind == kind)
        .map(|s| s.id)
        .collect()
}

/// A fault-free copy of a part, through its file image (also checks the round trip).
pub fn copy(d: &SimDevice) -> SimDevice {
    file::decode(&file::encode(d).unwrap()).unwrap()
}

/// Takes a part to its final state: keys generated, every writable slot written, root of trust
/// programmed (MCU), configuration and data locked.
pub fn provision_and_lock(d: &mut SimDevice) {
    if d.kind() == DeviceKind::SecureMcu {
        d.lock(trustfab_device::Zone::Config).unwrap();
        d.program_rot_hash(&[0x5a; 32]).unwrap();
    }
    for s in d.slots().unwrap() {
        match s.config.kind {
            SlotKind::PrivateKey => {
                d.generate_key(s.id).unwrap();
            }
            _ => d
                .write_slot(s.id, &vec![s.id; usize::from(s.config.capacity.min(64))])
                .unwrap(),
        }
    }
    d.lock(trustfab_device::Zone::Data).unwrap();
}
