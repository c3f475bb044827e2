//! What a secure MCU has beyond a secure element's identity services: one-time-programmable
//! fuses (the root-of-trust public key hash and the lifecycle state), flash with two boot slots
//! and a scratch area, and a monotonic security counter. Secure boot and the update swap are in
//! [`SimDevice::boot`](crate::SimDevice::boot).

use std::sync::Arc;

use crate::error::{Error, Op, Refusal};
use crate::limits::BOOT_SLOT_BYTES;
use crate::sim::SimDevice;

// The boot stage's types are the `SecureBoot` trait's; re-exported here, where they were first.
pub use crate::secure_boot::{BootOutcome, BootSlot, ImageRefusal, SwapOutcome, UpdateRequest};

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

/// A swap under way, as the swap status area records it: which swap, and the last step done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SwapProgress {
    pub(crate) kind: SwapKind,
    /// 1: the incoming image is in the scratch area; 2: the outgoing one is in the secondary.
    pub(crate) step: u8,
}

/// The kind of a swap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum SwapKind {
    Test,
    Permanent,
    Revert,
}

/// The MCU's fuses and flash.
#[derive(Clone, Debug, Default)]
pub(crate) struct McuState {
    pub(crate) lifecycle: Lifecycle,
    pub(crate) rot_hash: Option<[u8; 32]>,
    pub(crate) security_counter: u32,
    pub(crate) primary: Option<Arc<[u8]>>,
    pub(crate) secondary: Option<Arc<[u8]>>,
    /// The scratch area a swap moves the incoming image through.
    pub(crate) scratch: Option<Arc<[u8]>>,
    /// The secondary slot's trailer.
    pub(crate) pending: Option<UpdateRequest>,
    /// The swap status area.
    pub(crate) swap: Option<SwapProgress>,
    /// The primary slot's trailer after a test swap: copied, not yet confirmed (`image_ok`
    /// unset). The next boot reverts unless [`SimDevice::confirm_image`] is called first.
    pub(crate) unconfirmed: bool,
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
            if m.swap.is_some() {
                return Err(Refusal::SwapInProgress);
            }
            let content = Some(Arc::from(image));
            match slot {
                BootSlot::Primary => m.primary = content,
                BootSlot::Secondary => {
                    // Programming the slot rewrites its trailer: nothing is pending any more.
                    m.secondary = content;
                    m.pending = None;
                }
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
}
