//! The secure MCU's boot stage, modelled on MCUboot (design.md "Image validation", "Swap",
//! "Reverting", "Downgrade prevention", "Hardware key"): every image is checked against the
//! root-of-trust key hash in the fuses before it runs; an update waits in the secondary slot,
//! is validated (decrypted with the device's own keys), then swapped into the primary slot in
//! steps that each record their progress, so that a boot after a power loss at any step
//! resumes the swap; a test update that does not confirm itself is reverted at the next boot.

use std::sync::Arc;

use trustfab_firmware::{
    apply_payload_cipher, verify, DecryptionKey, Image, LoadedKey, Payload, SoftDecryptionKey,
    TrustAnchor, VerifyError,
};

use crate::device::{DeviceKind, SlotKind};
use crate::error::{Error, Op, Refusal};
use crate::sim::mcu::{
    BootOutcome, BootSlot, ImageRefusal, SwapKind, SwapOutcome, SwapProgress, UpdateRequest,
};
use crate::sim::{Content, SimDevice};

impl SimDevice {
    /// Marks the image in the secondary slot for installation at the next boot (MCUboot
    /// `boot_set_pending`).
    ///
    /// # Errors
    /// Refused when the secondary slot is empty, during a swap, or by a secure element.
    pub fn request_update(&mut self, request: UpdateRequest) -> Result<(), Error> {
        self.transact(Op::Flash, None, |s, _| {
            let m = s.mcu.as_mut().ok_or(Refusal::Unsupported)?;
            if m.swap.is_some() {
                return Err(Refusal::SwapInProgress);
            }
            if m.secondary.is_none() {
                return Err(Refusal::BootRefused);
            }
            m.pending = Some(request);
            Ok(())
        })
    }

    /// The running image confirms itself after a test update (MCUboot `boot_set_confirmed`):
    /// the next boot keeps it, and raises the security counter to it.
    ///
    /// # Errors
    /// Refused by a secure element.
    pub fn confirm_image(&mut self) -> Result<(), Error> {
        self.transact(Op::Flash, None, |s, _| {
            let m = s.mcu.as_mut().ok_or(Refusal::Unsupported)?;
            m.unconfirmed = false;
            Ok(())
        })
    }

    /// Whether the running image still has to confirm itself.
    ///
    /// # Errors
    /// Refused by a secure element.
    pub fn image_unconfirmed(&mut self) -> Result<bool, Error> {
        self.query(Op::Info, None, |d| {
            Ok(d.state
                .mcu
                .as_ref()
                .ok_or(Refusal::Unsupported)?
                .unconfirmed)
        })
    }

    /// Boots: finishes a swap a power loss interrupted, reverts an unconfirmed test update, or
    /// installs a pending one; then verifies the primary image under the root-of-trust key hash
    /// and refuses it when its security counter is below the part's. The counter rises to a
    /// confirmed image's. Without a root of trust (a development part) the primary image boots
    /// unverified; a locked part always has one.
    ///
    /// # Errors
    /// [`Error::ImageRefused`] with the reason, `Refusal::Rollback` for an older image,
    /// `Refusal::BootRefused` with no image, a power loss.
    pub fn boot(&mut self) -> Result<BootOutcome, Error> {
        if self.kind != DeviceKind::SecureMcu {
            return Err(self.refuse(Op::Boot, None, Refusal::Unsupported));
        }
        let rot = self.query(Op::Boot, None, |d| {
            Ok(d.state.mcu.as_ref().ok_or(Refusal::Unsupported)?.rot_hash)
        })?;
        let Some(rot) = rot else {
            self.query(Op::Boot, None, |d| {
                let m = d.state.mcu.as_ref().ok_or(Refusal::Unsupported)?;
                m.primary.as_ref().map(|_| ()).ok_or(Refusal::BootRefused)
            })?;
            return Ok(BootOutcome::Unverified);
        };
        // MCUboot unwraps an image's key once per boot (`boot_enc_load` into its `enc_state`)
        // and uses it to validate the update and to decrypt it in the swap.
        let keys: Vec<LoadedKey<SoftDecryptionKey>> =
            self.boot_keys().into_iter().map(LoadedKey::new).collect();
        let key_refs: Vec<&dyn DecryptionKey> =
            keys.iter().map(|k| k as &dyn DecryptionKey).collect();
        let swap = self.settle_swap(&rot, &key_refs)?;

        let (image, current, unconfirmed) = {
            let m = self.mcu_state()?;
            (m.primary.clone(), m.security_counter, m.unconfirmed)
        };
        let Some(image) = image else {
            // A part with no image yet whose first update was refused: the refusal is the
            // update's, with its reason (tampered, another family, a rollback), not "no image".
            if let SwapOutcome::Refused(reason) = swap {
                return Err(Error::ImageRefused {
                    slot: BootSlot::Secondary,
                    reason,
                });
            }
            return Err(self.refuse(Op::Boot, None, Refusal::BootRefused));
        };
        let refused = |reason: ImageRefusal| Error::ImageRefused {
            slot: BootSlot::Primary,
            reason,
        };
        let verified = verify(&image, TrustAnchor::KeyHash(&rot), Payload::AsIs)
            .map_err(|e| refused(e.into()))?;
        let counter = verified
            .security_counter
            .ok_or_else(|| refused(VerifyError::NoSecurityCounter.into()))?;
        if counter < current {
            return Err(self.refuse(Op::Boot, None, Refusal::Rollback));
        }
        // MCUboot raises the hardware counter only for a confirmed image, so that an
        // unconfirmed test image can still be reverted to the older one.
        let counter = if counter > current && !unconfirmed {
            self.advance_security_counter(counter)?;
            counter
        } else {
            current
        };
        Ok(BootOutcome::Verified {
            counter,
            image_hash: verified.hash,
            swap,
        })
    }

    fn mcu_state(&self) -> Result<&super::mcu::McuState, Error> {
        self.state
            .mcu
            .as_ref()
            .ok_or(Error::Crypto { op: Op::Boot })
    }

    /// The keys the boot stage decrypts with, inside the part, in the order it tries them: the
    /// family key (a P-256 scalar in a secret slot), which most images are for, then the
    /// device's own identity key (slot 0), for images mastered for this one device.
    fn boot_keys(&self) -> Vec<SoftDecryptionKey> {
        let mut family = Vec::new();
        let mut own = Vec::new();
        for slot in &self.state.slots {
            match (&slot.config.kind, &slot.content) {
                (SlotKind::Secret, Content::Data(d)) if d.len() == 32 => {
                    if let Ok(k) = SoftDecryptionKey::from_scalar(d) {
                        family.push(k);
                    }
                }
                (SlotKind::PrivateKey, Content::Key(k)) if slot.id == 0 => {
                    if let Ok(der) = k.secret_pkcs8() {
                        if let Ok(k) = SoftDecryptionKey::from_der(der.secret_pkcs8_der()) {
                            own.push(k);
                        }
                    }
                }
                _ => {}
            }
        }
        family.extend(own);
        family
    }

    /// Validates an image of the secondary slot as MCUboot does before swapping it in.
    fn validate_secondary(
        image: &[u8],
        rot: &[u8; 32],
        keys: &[&dyn DecryptionKey],
        device_counter: u32,
    ) -> Result<(), ImageRefusal> {
        let v = verify(image, TrustAnchor::KeyHash(rot), Payload::Decrypt(keys))?;
        let image = v.security_counter.ok_or(VerifyError::NoSecurityCounter)?;
        if image < device_counter {
            return Err(ImageRefusal::Rollback {
                image,
                device: device_counter,
            });
        }
        Ok(())
    }

    /// Everything that happens before the primary image boots.
    fn settle_swap(
        &mut self,
        rot: &[u8; 32],
        keys: &[&dyn DecryptionKey],
    ) -> Result<SwapOutcome, Error> {
        let m = self.mcu_state()?.clone();
        if let Some(progress) = m.swap {
            self.swap_from(progress.kind, progress.step, keys)?;
            return Ok(match progress.kind {
                SwapKind::Test => SwapOutcome::Installed { test: true },
                SwapKind::Permanent => SwapOutcome::Installed { test: false },
                SwapKind::Revert => SwapOutcome::Reverted,
            });
        }
        if m.unconfirmed {
            let Some(old) = m.secondary.as_deref() else {
                return Ok(SwapOutcome::None);
            };
            // MCUboot validates the image it reverts to as well; if it does not validate, the
            // revert fails and the running image boots as it is.
            if let Err(reason) = Self::validate_secondary(old, rot, keys, m.security_counter) {
                return Ok(SwapOutcome::Refused(reason));
            }
            self.swap_from(SwapKind::Revert, 0, keys)?;
            return Ok(SwapOutcome::Reverted);
        }
        let Some(request) = m.pending else {
            return Ok(SwapOutcome::None);
        };
        let Some(new) = m.secondary.as_deref() else {
            return Ok(SwapOutcome::None);
        };
        if let Err(reason) = Self::validate_secondary(new, rot, keys, m.security_counter) {
            // An invalid update is erased, and the current image boots.
            self.transact(Op::Flash, None, |s, _| {
                let m = s.mcu.as_mut().ok_or(Refusal::Unsupported)?;
                m.secondary = None;
                m.pending = None;
                Ok(())
            })?;
            return Ok(SwapOutcome::Refused(reason));
        }
        let (kind, test) = match request {
            UpdateRequest::Test => (SwapKind::Test, true),
            UpdateRequest::Permanent => (SwapKind::Permanent, false),
        };
        self.swap_from(kind, 0, keys)?;
        Ok(SwapOutcome::Installed { test })
    }

    /// Runs a swap from after step `done`: 1 the incoming image (decrypted) into scratch, 2 the
    /// outgoing image (encrypted again when it was) into the secondary slot, 3 scratch into the
    /// primary slot. Each step is one write, recorded in the swap status with its data.
    fn swap_from(
        &mut self,
        kind: SwapKind,
        done: u8,
        keys: &[&dyn DecryptionKey],
    ) -> Result<(), Error> {
        if done < 1 {
            let incoming = self.mcu_state()?.secondary.clone();
            let incoming = incoming.map(|img| cipher_if_encrypted(&img, keys));
            self.transact(Op::Flash, None, |s, _| {
                let m = s.mcu.as_mut().ok_or(Refusal::Unsupported)?;
                m.scratch = incoming;
                m.pending = None;
                m.swap = Some(SwapProgress { kind, step: 1 });
                Ok(())
            })?;
        }
        if done < 2 {
            let outgoing = self.mcu_state()?.primary.clone();
            let outgoing = outgoing.map(|img| cipher_if_encrypted(&img, keys));
            self.transact(Op::Flash, None, |s, _| {
                let m = s.mcu.as_mut().ok_or(Refusal::Unsupported)?;
                m.secondary = outgoing;
                m.swap = Some(SwapProgress { kind, step: 2 });
                Ok(())
            })?;
        }
        self.transact(Op::Flash, None, |s, _| {
            let m = s.mcu.as_mut().ok_or(Refusal::Unsupported)?;
            m.primary = m.scratch.take();
            m.swap = None;
            m.unconfirmed = kind == SwapKind::Test;
            Ok(())
        })
    }
}

/// The image with its payload's keystream applied when it is flagged encrypted: decrypted on
/// its way into the primary slot, encrypted again on its way out (MCUboot keeps images in the
/// secondary slot encrypted, in the primary slot in clear).
fn cipher_if_encrypted(image: &Arc<[u8]>, keys: &[&dyn DecryptionKey]) -> Arc<[u8]> {
    let encrypted = Image::parse(image).is_ok_and(|i| i.header().is_encrypted());
    if !encrypted {
        return Arc::clone(image);
    }
    let mut out = image.to_vec();
    match apply_payload_cipher(&mut out, keys) {
        Ok(()) => Arc::from(out),
        // Not this device's image: it moves unchanged (and will not validate).
        Err(_) => Arc::clone(image),
    }
}
