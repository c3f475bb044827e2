//! The secure MCU's key-install service: a private key arrives wrapped to the part's own identity
//! key (slot 0) and is unwrapped only inside the part, into a secret slot, as STM32 Secure
//! Secret Provisioning / Secure Firmware Install and a PSA key store's unwrap-and-import do. The
//! programmer that carries the blob never sees the key (`docs/devices.md`, rule 21).
//!
//! The blob is trustfab's [`WrappedKey`] (ECDH-ES P-256 with the identity key, a KDF, RFC 5649
//! key wrap; `crates/token/src/wrap.rs`), what the HSM makes for each device's certified key.

use std::sync::Arc;

use trustfab_firmware::SoftDecryptionKey;
use trustfab_token::{unwrap_with, Curve, Error as TokenError, WrappedKey};
use trustfab_types::SecretBytes;

use crate::device::{DeviceKind, SlotId, SlotKind};
use crate::error::{Error, Op, Refusal};
use crate::sim::{Content, SimDevice, State};

/// The slot of the identity key a wrapped key is unwrapped with.
pub(crate) const UNWRAP_KEY_SLOT: SlotId = 0;

/// A P-256 private scalar's length: what a secret slot holds of an installed key.
const SCALAR_LEN: usize = 32;

/// What the part unwrapped, before it is stored: the private scalar and the public point.
struct Unwrapped {
    scalar: SecretBytes,
    point: Vec<u8>,
}

impl State {
    /// The slot a wrapped key may be installed into now: a secret slot with room for a P-256
    /// scalar whose write policy admits a write (as [`crate::Device::write_slot`] checks it).
    fn install_target(&self, slot: SlotId) -> Result<usize, Refusal> {
        let idx = self.index(slot)?;
        let config = &self.slots[idx].config;
        if config.kind != SlotKind::Secret {
            return Err(Refusal::WrongSlotKind);
        }
        if usize::from(config.capacity) < SCALAR_LEN {
            return Err(Refusal::TooLong);
        }
        self.check_writable(idx)?;
        Ok(idx)
    }
}

impl SimDevice {
    /// Installs a P-256 private key that arrives wrapped to this part's identity key (slot 0)
    /// into secret slot `slot`, and returns the installed key's public point (uncompressed
    /// SEC1), so that the caller can compare it with the key it meant to install without ever
    /// seeing the key. The key is unwrapped inside the part and stored as its 32-byte private
    /// scalar, the form the boot stage decrypts images with; the slot stays unreadable.
    ///
    /// One transaction: a power loss leaves the slot with its old content or the new key.
    ///
    /// # Errors
    /// Refused ([`Error::Refused`]) by a secure element (`Unsupported`); for a slot that does
    /// not exist, is not a secret slot (`WrongSlotKind`), is too small (`TooLong`) or is
    /// write-protected now (`WriteProtected` after the data lock, `SlotLocked`); for a blob
    /// that does not parse (`MalformedWrappedKey`), wraps a key other than P-256
    /// (`UnsupportedKeyType`); when slot 0 holds no key (`NoUnwrapKey`); when the blob does not
    /// unwrap under it (`UnwrapFailed`: another device's, changed, or not the key it declares).
    /// [`Error::Crypto`] when the part's engine fails.
    pub fn install_wrapped_secret(
        &mut self,
        slot: SlotId,
        wrapped: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let Unwrapped { scalar, point } = self.unwrap_inside(slot, wrapped)?;
        self.transact(Op::InstallSecret, Some(slot), |s, _| {
            let idx = s.install_target(slot)?;
            s.slots[idx].content = Content::Data(Arc::from(scalar.expose_secret()));
            Ok(())
        })?;
        Ok(point)
    }

    /// The checks and the unwrap, inside the part and before anything is written: only reads
    /// of its own memory, so a power cut armed for the command waits for its one write.
    fn unwrap_inside(&self, slot: SlotId, wrapped: &[u8]) -> Result<Unwrapped, Error> {
        let op = Op::InstallSecret;
        let refused = |r: Refusal| self.refuse(op, Some(slot), r);
        let crypto = Error::Crypto { op };
        // ATECC608 has no such command: its encrypted writes use a symmetric IO key.
        if self.kind != DeviceKind::SecureMcu {
            return Err(refused(Refusal::Unsupported));
        }
        self.state.install_target(slot).map_err(refused)?;
        let blob =
            WrappedKey::from_bytes(wrapped).map_err(|_| refused(Refusal::MalformedWrappedKey))?;
        if blob.key_curve() != Curve::P256 {
            return Err(refused(Refusal::UnsupportedKeyType));
        }
        let device_key = self
            .key(UNWRAP_KEY_SLOT)
            .map_err(|_| refused(Refusal::NoUnwrapKey))?;
        let recipient = device_key.secret_pkcs8().map_err(|()| crypto.clone())?;
        let plain = match unwrap_with(&recipient, &blob) {
            Ok(plain) => plain,
            Err(TokenError::Unwrap) => return Err(refused(Refusal::UnwrapFailed)),
            Err(_) => return Err(crypto),
        };
        let key = SoftDecryptionKey::from_der(plain.secret_pkcs8_der())
            .map_err(|_| refused(Refusal::UnsupportedKeyType))?;
        let scalar = key.secret_scalar().map_err(|_| crypto.clone())?;
        let point = key.public_point().map_err(|_| crypto.clone())?;
        if scalar.expose_secret().len() != SCALAR_LEN {
            return Err(crypto);
        }
        // `unwrap_with` has checked this already; the part does not store a key that is not
        // the one it will report.
        if point.as_slice() != blob.public_key().point() {
            return Err(refused(Refusal::UnwrapFailed));
        }
        Ok(Unwrapped { scalar, point })
    }
}
