//! What a secure MCU has beyond a secure element's identity services: one-time-programmable
//! fuses (the root-of-trust public key hash and the lifecycle state), flash with two boot slots,
//! and a monotonic security counter. Secure boot itself is a [`BootVerifier`] the firmware code
//! supplies; the MCU calls it and enforces the counter.

use std::sync::Arc;

use crate::device::DeviceKind;
use crate::error::{Error, Op, Refusal};
use crate::limits::BOOT_SLOT_BYTES;
use crate::sim::SimDevice;

/// The lifecycle, burnt in fuses; it only moves forward (PSA Certified Security Model lifecycle:
/// Assembly and Test → PSA RoT Provisioning → Secured).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Lifecycle {
    /// As it leaves the silicon vendor: debug open, configuration changeable.
    #[default]
    Open,
    /// Configuration locked, identity being provisioned.
    Provisioned,
    /// Secured: identity write-protected, debug closed, boot verified.
    Locked,
}

/// One of the two flash boot slots (MCUboot's primary and secondary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BootSlot {
    /// The image that boots.
    Primary,
    /// The update candidate.
    Secondary,
}

/// The MCU's fuses and flash.
#[derive(Clone, Debug, Default)]
pub(crate) struct McuState {
    pub(crate) lifecycle: Lifecycle,
    pub(crate) rot_hash: Option<[u8; 32]>,
    pub(crate) security_counter: u32,
    pub(crate) primary: Option<Arc<[u8]>>,
    pub(crate) secondary: Option<Arc<[u8]>>,
}

/// Secure boot's image check, supplied by the firmware code: verify `image` under the root of
/// trust whose public key hashes to `rot_hash`, and return the image's security counter.
pub trait BootVerifier {
    /// Checks the image.
    ///
    /// # Errors
    /// Any refusal; the MCU then does not boot the image.
    fn verify(
        &self,
        image: &[u8],
        rot_hash: &[u8; 32],
    ) -> Result<u32, Box<dyn std::error::Error + Send + Sync>>;
}

/// What a boot did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootOutcome {
    /// The primary image was verified and booted; the security counter is now `counter`.
    Verified {
        /// The security counter after boot.
        counter: u32,
    },
    /// No root of trust is programmed (development part): the image booted unverified.
    Unverified,
}

impl SimDevice {
    fn mcu(&self) -> Result<&McuState, Refusal> {
        self.state.mcu.as_ref().ok_or(Refusal::Unsupported)
    }

    /// The lifecycle state.
    ///
    /// # Errors
    /// Refused by a secure element.
    pub fn lifecycle(&mut self) -> Result<Lifecycle, Error> {
        self.query(Op::Info, None, |d| Ok(d.mcu()?.lifecycle))
    }

    /// The root-of-trust public key hash fuse, if programmed.
    ///
    /// # Errors
    /// Refused by a secure element.
    pub fn rot_hash(&mut self) -> Result<Option<[u8; 32]>, Error> {
        self.query(Op::Fuse, None, |d| Ok(d.mcu()?.rot_hash))
    }

    /// Programs the root-of-trust public key hash (SHA-256 of the OEM's boot key). OTP: once.
    ///
    /// # Errors
    /// Refused when already programmed, once the part is locked, or by a secure element.
    pub fn program_rot_hash(&mut self, hash: &[u8; 32]) -> Result<(), Error> {
        self.transact(Op::Fuse, None, |s, _| {
            let m = s.mcu.as_mut().ok_or(Refusal::Unsupported)?;
            if m.rot_hash.is_some() {
                return Err(Refusal::FuseProgrammed);
            }
            if m.lifecycle == Lifecycle::Locked {
                return Err(Refusal::Lifecycle);
            }
            m.rot_hash = Some(*hash);
            Ok(())
        })
    }

    /// The security counter (anti-rollback).
    ///
    /// # Errors
    /// Refused by a secure element.
    pub fn security_counter(&mut self) -> Result<u32, Error> {
        self.query(Op::Counter, None, |d| Ok(d.mcu()?.security_counter))
    }

    /// Moves the security counter to `value`; it never goes down.
    ///
    /// # Errors
    /// Refused when `value` is below the counter, or by a secure element.
    pub fn advance_security_counter(&mut self, value: u32) -> Result<(), Error> {
        self.transact(Op::Counter, None, |s, _| {
            let m = s.mcu.as_mut().ok_or(Refusal::Unsupported)?;
            if value < m.security_counter {
                return Err(Refusal::Rollback);
            }
            m.security_counter = value;
            Ok(())
        })
    }

    /// Writes a firmware image to a boot slot (allowed in every lifecycle state: it is how the
    /// field updates; secure boot decides whether it runs).
    ///
    /// # Errors
    /// Refused when the image exceeds [`BOOT_SLOT_BYTES`], or by a secure element.
    pub fn write_boot_slot(&mut self, slot: BootSlot, image: &[u8]) -> Result<(), Error> {
        self.transact(Op::Flash, None, |s, _| {
            let m = s.mcu.as_mut().ok_or(Refusal::Unsupported)?;
            if image.len() > BOOT_SLOT_BYTES {
                return Err(Refusal::TooLong);
            }
            let content = Some(Arc::from(image));
            match slot {
                BootSlot::Primary => m.primary = content,
                BootSlot::Secondary => m.secondary = content,
            }
            Ok(())
        })
    }

    /// Reads a boot slot (empty when erased).
    ///
    /// # Errors
    /// Refused by a secure element.
    pub fn read_boot_slot(&mut self, slot: BootSlot) -> Result<Vec<u8>, Error> {
        self.query(Op::Flash, None, |d| {
            let m = d.mcu()?;
            let img = match slot {
                BootSlot::Primary => &m.primary,
                BootSlot::Secondary => &m.secondary,
            };
            Ok(img.as_deref().map(<[u8]>::to_vec).unwrap_or_default())
        })
    }

    /// Boots the primary image. With a root of trust programmed, `verifier` must accept the image
    /// and its security counter must not be below the part's; the part's counter then moves up to
    /// the image's (MCUboot downgrade prevention with a hardware counter). Without one, the image
    /// boots unverified, as a development part does; a locked part always has one.
    ///
    /// # Errors
    /// Refused when there is no image, the verifier refuses it, or it is older than the counter.
    pub fn boot(&mut self, verifier: &dyn BootVerifier) -> Result<BootOutcome, Error> {
        if self.kind != DeviceKind::SecureMcu {
            return Err(self.refuse(Op::Boot, None, Refusal::Unsupported));
        }
        let (image, rot, current) = self.query(Op::Boot, None, |d| {
            let m = d.mcu()?;
            let image = m.primary.clone().ok_or(Refusal::BootRefused)?;
            Ok((image, m.rot_hash, m.security_counter))
        })?;
        let Some(rot) = rot else {
            return Ok(BootOutcome::Unverified);
        };
        let counter = verifier
            .verify(&image, &rot)
            .map_err(|_| self.refuse(Op::Boot, None, Refusal::BootRefused))?;
        if counter < current {
            return Err(self.refuse(Op::Boot, None, Refusal::Rollback));
        }
        if counter > current {
            self.advance_security_counter(counter)?;
        }
        Ok(BootOutcome::Verified { counter })
    }
}
