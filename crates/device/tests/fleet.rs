//! UID uniqueness and the in-memory fleet.

use std::collections::HashSet;

use trustfab_device::{Device, DeviceKind, Fleet, FleetError, Socket};

use crate::{vendor, KINDS, NOW};

#[test]
fn uids_are_unique_across_a_fleet_of_100_000() {
    let mut v = vendor();
    let fleet = Fleet::manufacture(&mut v, DeviceKind::SecureElement, 100_000, NOW).unwrap();
    assert_eq!(fleet.len(), 100_000);
    let uids: HashSet<_> = fleet.uids().cloned().collect();
    assert_eq!(uids.len(), 100_000);
    // The secure element's serial number format: 01 23 ... EE.
    assert!(uids.iter().all(|u| {
        let b = u.as_bytes();
        b.len() == 9 && b[..2] == [0x01, 0x23] && b[8] == 0xEE
    }));
}

#[test]
fn uid_spaces_of_both_kinds_are_unique_and_differ_between_vendors() {
    let v = vendor();
    let w = vendor();
    for kind in KINDS {
        let mine: HashSet<_> = (0..100_000).map(|i| v.uid(kind, i).unwrap()).collect();
        assert_eq!(mine.len(), 100_000);
        let theirs: HashSet<_> = (0..1000).map(|i| w.uid(kind, i).unwrap()).collect();
        assert!(mine.intersection(&theirs).count() < 5);
    }
    assert!(v
        .uid(DeviceKind::SecureMcu, trustfab_device::MAX_UIDS)
        .is_err());
}

#[test]
fn parts_go_to_a_socket_and_come_back() {
    let mut v = vendor();
    let mut fleet = Fleet::manufacture(&mut v, DeviceKind::SecureMcu, 50, NOW).unwrap();
    let uid = fleet.uids().nth(7).unwrap().clone();
    let d = fleet.take(&uid).unwrap();
    assert!(fleet.get_mut(&uid).is_none());
    let mut socket = Socket::with_device(d, 0);
    assert_eq!(socket.uid().unwrap(), uid);
    socket.generate_key(0).unwrap();
    fleet.put_back(socket.remove().unwrap()).unwrap();
    assert!(fleet.get_mut(&uid).unwrap().public_key(0).is_ok());
    // A second part with a UID already in the fleet is refused.
    let again = trustfab_device::file::decode(
        &trustfab_device::file::encode(fleet.nth_mut(7).unwrap()).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        fleet.insert(again),
        Err(FleetError::DuplicateUid(_))
    ));
}
