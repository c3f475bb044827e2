//! The secure boot stage of a part that has one (a secure MCU: `docs/devices.md`, rules 15–21),
//! and the types of its answers. A secure element has no boot stage: it is reached only through
//! [`Device`](crate::Device), and [`Device::secure_boot`](crate::Device::secure_boot) gives
//! `None` for it.

use crate::device::SlotId;
use crate::error::Error;

/// One of the two flash boot slots (MCUboot's primary and secondary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BootSlot {
    /// The image that boots.
    Primary,
    /// The update candidate.
    Secondary,
}

/// What the secondary slot's trailer asks the next boot to do with the image there (MCUboot
/// `boot_set_pending(permanent)`, design.md "Swap").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpdateRequest {
    /// Swap it in for one boot; revert at the next boot unless the image confirms itself
    /// (`BOOT_SWAP_TYPE_TEST`).
    Test,
    /// Swap it in for good (`BOOT_SWAP_TYPE_PERM`).
    Permanent,
}

impl std::fmt::Display for BootSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Primary => "primary",
            Self::Secondary => "secondary",
        })
    }
}

/// What a boot did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootOutcome {
    /// The primary image was verified and booted.
    Verified {
        /// The part's security counter after boot.
        counter: u32,
        /// The SHA-256 of the booted image (its `IMAGE_TLV_SHA256`).
        image_hash: [u8; 32],
        /// What happened to an update or an unconfirmed image first.
        swap: SwapOutcome,
    },
    /// No root of trust is programmed (development part): the image booted unverified.
    Unverified,
}

/// What a boot did before booting the primary image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwapOutcome {
    /// Nothing pending.
    None,
    /// The update in the secondary slot was installed; `test` when it must still confirm
    /// itself.
    Installed {
        /// Installed for one boot only, until confirmed.
        test: bool,
    },
    /// The unconfirmed image was swapped back for the previous one.
    Reverted,
    /// The update was refused and erased; the previous image boots.
    Refused(ImageRefusal),
}

/// Why secure boot refused an image.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ImageRefusal {
    /// The image does not verify (layout, key, hash, signature, decryption, no counter).
    #[error(transparent)]
    Image(#[from] trustfab_firmware::VerifyError),
    /// The image's security counter is below the part's.
    #[error("image security counter {image} is below the device's {device}")]
    Rollback {
        /// The image's counter.
        image: u32,
        /// The part's counter.
        device: u32,
    },
}

/// A part's boot stage: its root-of-trust fuse, the installation of a wrapped key for image
/// decryption, its flash boot slots, update requests, boot and security counter.
///
/// Every method talks to the part, so every method can fail with a socket fault besides the
/// part's own refusals. Reached through [`Device::secure_boot`](crate::Device::secure_boot) for
/// a part that has one; an implementation that is handed a part without a boot stage refuses
/// each command as `Refusal::Unsupported`.
pub trait SecureBoot {
    /// Programs the root-of-trust public key hash fuse (SHA-256 of the OEM's boot key). OTP:
    /// once.
    ///
    /// # Errors
    /// A refusal when already programmed (`FuseProgrammed`), once the part is locked
    /// (`Lifecycle`), or by a secure element.
    fn program_rot_hash(&mut self, hash: &[u8; 32]) -> Result<(), Error>;

    /// The root-of-trust public key hash fuse, if programmed.
    ///
    /// # Errors
    /// A refusal by a secure element.
    fn rot_hash(&mut self) -> Result<Option<[u8; 32]>, Error>;

    /// Installs a P-256 private key wrapped to this part's identity key (slot 0, see
    /// `trustfab_token::WrappedKey`) into secret slot `slot`: unwrapped inside the part, never
    /// seen by the caller. Returns the installed key's public point (uncompressed SEC1), to
    /// compare with the key meant to be installed.
    ///
    /// # Errors
    /// A refusal for a slot that is not a writable secret slot, a malformed blob, a key other
    /// than P-256, no identity key, a blob that does not unwrap under it (`UnwrapFailed`), or
    /// by a secure element.
    fn install_wrapped_secret(&mut self, slot: SlotId, wrapped: &[u8]) -> Result<Vec<u8>, Error>;

    /// Writes a firmware image (MCUboot format) to a flash boot slot.
    ///
    /// # Errors
    /// A refusal for an image over the slot size, during a swap, or by a secure element.
    fn write_boot_slot(&mut self, slot: BootSlot, image: &[u8]) -> Result<(), Error>;

    /// Marks the image in the secondary slot for installation at the next boot.
    ///
    /// # Errors
    /// A refusal when the secondary slot is empty, during a swap, or by a secure element.
    fn request_update(&mut self, request: UpdateRequest) -> Result<(), Error>;

    /// Boots: settles a pending update or swap, then verifies the primary image under the
    /// root-of-trust key hash and the security counter.
    ///
    /// # Errors
    /// [`Error::ImageRefused`] for an image that does not verify, a refusal for an older image,
    /// no image, or by a secure element.
    fn boot(&mut self) -> Result<BootOutcome, Error>;

    /// The security counter (anti-rollback).
    ///
    /// # Errors
    /// A refusal by a secure element.
    fn security_counter(&mut self) -> Result<u32, Error>;
}
