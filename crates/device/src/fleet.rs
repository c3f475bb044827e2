//! An in-memory fleet of simulated parts, for jobs and benchmarks: thousands of parts from one
//! silicon vendor, addressed by UID, each taken out into a socket and put back.

use std::collections::HashMap;

use trustfab_types::{DeviceUid, UnixTime};

use crate::device::DeviceKind;
use crate::sim::SimDevice;
use crate::vendor::{SiliconVendor, VendorError};

/// A fleet could not be made or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// The vendor failed to make a part.
    #[error(transparent)]
    Vendor(#[from] VendorError),
    /// Two parts report the same UID.
    #[error("device uid {0} is already in the fleet")]
    DuplicateUid(DeviceUid),
    /// The part put back was not taken out of this fleet.
    #[error("device uid {0} was not taken out of this fleet")]
    NotTakenOut(DeviceUid),
}

/// Parts in memory, by UID.
#[derive(Debug, Default)]
pub struct Fleet {
    devices: Vec<Option<SimDevice>>,
    index: HashMap<DeviceUid, usize>,
}

impl Fleet {
    /// An empty fleet.
    pub fn new() -> Self {
        Self::default()
    }

    /// `count` new parts of `kind` from `vendor`.
    ///
    /// # Errors
    /// When the vendor fails, or (never, by construction of the UIDs) a UID repeats.
    pub fn manufacture(
        vendor: &mut SiliconVendor,
        kind: DeviceKind,
        count: usize,
        now: UnixTime,
    ) -> Result<Self, FleetError> {
        let mut fleet = Self {
            devices: Vec::with_capacity(count),
            index: HashMap::with_capacity(count),
        };
        for _ in 0..count {
            fleet.insert(vendor.manufacture(kind, now)?)?;
        }
        Ok(fleet)
    }

    /// Adds a part.
    ///
    /// # Errors
    /// When a part with the same UID is already in the fleet.
    pub fn insert(&mut self, device: SimDevice) -> Result<(), FleetError> {
        let uid = device.uid_label().clone();
        if self.index.contains_key(&uid) {
            return Err(FleetError::DuplicateUid(uid));
        }
        self.index.insert(uid, self.devices.len());
        self.devices.push(Some(device));
        Ok(())
    }

    /// Number of parts, in the fleet or out in a socket.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether the fleet has no parts.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Every UID, in manufacturing order.
    pub fn uids(&self) -> impl Iterator<Item = &DeviceUid> + '_ {
        let mut v: Vec<(&DeviceUid, &usize)> = self.index.iter().collect();
        v.sort_by_key(|(_, i)| **i);
        v.into_iter().map(|(u, _)| u)
    }

    /// The part with `uid`, if it is in the fleet (not out in a socket).
    pub fn get_mut(&mut self, uid: &DeviceUid) -> Option<&mut SimDevice> {
        let i = *self.index.get(uid)?;
        self.devices.get_mut(i)?.as_mut()
    }

    /// The `i`th part made, if it is in the fleet.
    pub fn nth_mut(&mut self, i: usize) -> Option<&mut SimDevice> {
        self.devices.get_mut(i)?.as_mut()
    }

    /// Takes the part with `uid` out (into a socket).
    pub fn take(&mut self, uid: &DeviceUid) -> Option<SimDevice> {
        let i = *self.index.get(uid)?;
        self.devices.get_mut(i)?.take()
    }

    /// Puts a part taken out back.
    ///
    /// # Errors
    /// When the part is not one of this fleet's, or it is already back.
    pub fn put_back(&mut self, device: SimDevice) -> Result<(), FleetError> {
        let uid = device.uid_label().clone();
        match self.index.get(&uid).and_then(|i| self.devices.get_mut(*i)) {
            Some(place @ None) => {
                *place = Some(device);
                Ok(())
            }
            _ => Err(FleetError::NotTakenOut(uid)),
        }
    }
}
