//! A device's identity as the device itself holds it: the certificate chain and the OEM root from
//! its write-protected certificate slots, and the key slot that signs. Nothing here comes from
//! the caller but the device and the slot numbers.

use std::fmt;

use trustfab_device::{Device, SlotId, SlotKind, WritePolicy};
use trustfab_types::DeviceUid;

use crate::Error;

/// Where a provisioned device keeps its identity (`docs/devices.md`, "Slot layouts").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slots {
    /// The identity key.
    pub key: SlotId,
    /// The device certificate.
    pub certificate: SlotId,
    /// The device CA certificate (empty when the root issues devices directly).
    pub device_ca: SlotId,
    /// The OEM root certificate: the trust anchor.
    pub root: SlotId,
}

impl Slots {
    /// The layout a station provisions: key 0, certificates 10 (device), 11 (device CA), 12
    /// (root), on both kinds of part.
    pub const PROVISIONED: Self = Self {
        key: 0,
        certificate: 10,
        device_ca: 11,
        root: 12,
    };
}

impl Default for Slots {
    fn default() -> Self {
        Self::PROVISIONED
    }
}

/// Who a certificate names, for people: subject, serial number and SHA-256 fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    /// The subject distinguished name, RFC 4514 style.
    pub name: String,
    /// The serial number, hex.
    pub serial: String,
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (serial {})", self.name, self.serial)
    }
}

pub(crate) fn parse_subject(der: &[u8]) -> Option<(Subject, Vec<u8>)> {
    let (_, x) = x509_parser::parse_x509_certificate(der).ok()?;
    Some((
        Subject {
            name: x.subject().to_string(),
            // The serial as every command prints it (`Serial::to_hex`: minimal, no sign octet).
            serial: trustfab_types::Serial::from_be_bytes(x.raw_serial()).map_or_else(
                |_| x.raw_serial_as_string().replace(':', ""),
                |s| s.to_hex(),
            ),
        },
        x.public_key().subject_public_key.data.to_vec(),
    ))
}

/// A provisioned device, ready to authenticate.
pub struct Identity<D> {
    device: D,
    slots: Slots,
    uid: DeviceUid,
    chain: Vec<Vec<u8>>,
    root: Vec<u8>,
    subject: Subject,
}

impl<D> fmt::Debug for Identity<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("uid", &self.uid)
            .field("subject", &self.subject)
            .field("slots", &self.slots)
            .finish_non_exhaustive()
    }
}

impl<D: Device> Identity<D> {
    /// Reads the identity out of `device`: the certificate chain and the root from its
    /// certificate slots. Checks that the root is write-protected (the data zone is locked and
    /// the slot's policy does not let it be rewritten) and that the certificate certifies the
    /// key in the key slot.
    ///
    /// # Errors
    /// [`Error::MissingCertificate`], [`Error::RootNotWriteProtected`],
    /// [`Error::OwnCertificate`], [`Error::OwnKeyMismatch`], or a device error.
    pub fn load(device: D, slots: Slots) -> Result<Self, Error> {
        let mut id = Self::read(device, slots)?;
        let point = id.device.public_key(slots.key)?;
        let (_, certified) = parse_subject(&id.chain[0]).ok_or(Error::OwnCertificate {
            slot: slots.certificate,
        })?;
        if certified != point.point() {
            return Err(Error::OwnKeyMismatch { slot: slots.key });
        }
        Ok(id)
    }

    fn read(mut device: D, slots: Slots) -> Result<Self, Error> {
        let uid = device.uid()?;
        let locks = device.lock_state()?;
        let info = device.slots()?;
        let root_slot = info.iter().find(|s| s.id == slots.root);
        let protected = root_slot.is_some_and(|s| {
            s.config.kind == SlotKind::Certificate
                && (s.locked || (locks.data && s.config.write != WritePolicy::Always))
        });
        if !protected {
            return Err(Error::RootNotWriteProtected { slot: slots.root });
        }
        let root = device.read_slot(slots.root)?;
        if root.is_empty() {
            return Err(Error::MissingCertificate { slot: slots.root });
        }
        let cert = device.read_slot(slots.certificate)?;
        if cert.is_empty() {
            return Err(Error::MissingCertificate {
                slot: slots.certificate,
            });
        }
        let (subject, _) = parse_subject(&cert).ok_or(Error::OwnCertificate {
            slot: slots.certificate,
        })?;
        let ca = device.read_slot(slots.device_ca)?;
        let mut chain = vec![cert];
        if !ca.is_empty() {
            chain.push(ca);
        }
        Ok(Self {
            device,
            slots,
            uid,
            chain,
            root,
            subject,
        })
    }

    /// As [`Identity::load`] without the check that the certificate certifies the device's key.
    ///
    /// Danger: only for tests that show the *peer* refuses such a device.
    ///
    /// # Errors
    /// As [`Identity::load`], but never [`Error::OwnKeyMismatch`].
    pub fn danger_load_without_key_check(device: D, slots: Slots) -> Result<Self, Error> {
        Self::read(device, slots)
    }

    /// Signs `message` with the identity key inside the device (ECDSA-P256-SHA256, DER).
    pub(crate) fn sign(&mut self, message: &[u8]) -> Result<Vec<u8>, Error> {
        Ok(self.device.sign_challenge(self.slots.key, message)?)
    }

    /// 32 random bytes from the device's generator.
    pub(crate) fn random(&mut self) -> Result<[u8; 32], Error> {
        Ok(self.device.random()?)
    }
}

impl<D> Identity<D> {
    /// The device's UID.
    pub fn uid(&self) -> &DeviceUid {
        &self.uid
    }

    /// Who the device certificate names.
    pub fn subject(&self) -> &Subject {
        &self.subject
    }

    /// The device certificate, then the device CA when there is one (DER).
    pub fn chain(&self) -> &[Vec<u8>] {
        &self.chain
    }

    /// The OEM root from the device's own storage (DER).
    pub fn root(&self) -> &[u8] {
        &self.root
    }

    /// The slot layout.
    pub fn slots(&self) -> Slots {
        self.slots
    }

    /// The device, for other commands.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// Gives the device back.
    pub fn into_device(self) -> D {
        self.device
    }
}
