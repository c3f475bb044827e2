//! An order sealed into a provisioning package (`docs/package.md`) for ONE HSM: the one place
//! the OEM side assembles a package, for `trustfab oem wrap`, the bench's programming centre
//! and the test sites alike.
//!
//! The target is an [`HsmIdentity`], which exists only after the HSM's certificates validated
//! to the pinned vendor root: a package is never wrapped for a key the vendor did not certify.
//! The signing key (and the firmware family key) are wrapped to that HSM's key-transport key
//! with the `info` that binds them to this package and this HSM, so only that HSM can unwrap
//! them, and the whole is signed by the OEM root.

use trustfab_formats::package::{Contents, SerialRange};
use trustfab_pki::{HsmIdentity, Signer, SoftKey};
use trustfab_types::{Fingerprint, OemId, ProductId, UnixTime};

use crate::Error;

/// What an OEM orders from one HSM: everything in the package but the wrapped keys.
#[derive(Clone, Debug)]
pub struct Order {
    /// The package id (random per package; an HSM imports a package once).
    pub package_id: [u8; 16],
    /// The OEM.
    pub oem_id: OemId,
    /// The product.
    pub product_id: ProductId,
    /// Certificates the HSM may issue.
    pub count: u64,
    /// Serial numbers assigned by the OEM; `None`: the template's scheme.
    pub serial_range: Option<SerialRange>,
    /// The package may not be imported before this time.
    pub not_before: UnixTime,
    /// The package may not be imported after this time.
    pub not_after: UnixTime,
    /// The device certificate template, TOML (`docs/template.md`), as the OEM wrote it.
    pub template: String,
    /// The OEM root certificate, DER: the package's signature verifies under it.
    pub root_cert: Vec<u8>,
    /// The device CA certificate, DER, when the signing key is a device CA's.
    pub device_ca_cert: Option<Vec<u8>>,
}

/// The product's firmware for secure MCUs, as the OEM puts it in a package.
#[derive(Clone, Copy, Debug)]
pub struct Firmware<'a> {
    /// The device family the images are mastered for.
    pub family: &'a str,
    /// SHA-256 of the firmware signing key: what each device's root-of-trust fuse holds.
    pub boot_key_hash: [u8; 32],
    /// The family decryption key, wrapped for the HSM; `None` for images signed but not
    /// encrypted.
    pub family_key: Option<&'a SoftKey>,
}

impl Order {
    /// The package contents for `target`: `signing_key` (the key the HSM signs device
    /// certificates with, certified by `device_ca_cert` or the root) and the firmware's family
    /// key wrapped to the target's key-transport key, each bound to this package id and the
    /// target's fingerprint (`trustfab_formats::binding::wrap_info`, `family_wrap_info`).
    ///
    /// # Errors
    /// [`Error::Wrap`]: a key could not be wrapped (not a P-256 key-transport key).
    pub fn contents_for(
        &self,
        target: &HsmIdentity,
        signing_key: &SoftKey,
        firmware: Option<&Firmware<'_>>,
    ) -> Result<Contents, Error> {
        let kt = trustfab_token::PublicKey::from_point(
            trustfab_token::Curve::P256,
            target.kt_key.point(),
        )
        .map_err(trustfab_token::Error::from)?;
        let wrap = |key: &SoftKey, info: &[u8]| -> Result<Vec<u8>, Error> {
            Ok(trustfab_token::wrap_for(&kt, &key.secret_pkcs8_der()?, info)?.to_bytes())
        };
        let target_hsm = Fingerprint::new(target.fingerprint);
        let wrapped_signing_key = wrap(
            signing_key,
            &trustfab_formats::binding::wrap_info(&self.package_id, &target_hsm),
        )?;
        let firmware = match firmware {
            Some(fw) => Some(trustfab_formats::package::Firmware {
                family: fw.family.to_owned(),
                boot_key_hash: fw.boot_key_hash,
                wrapped_family_key: match fw.family_key {
                    Some(k) => Some(wrap(
                        k,
                        &trustfab_formats::binding::family_wrap_info(&self.package_id, &target_hsm),
                    )?),
                    None => None,
                },
            }),
            None => None,
        };
        Ok(Contents {
            package_id: self.package_id,
            target_hsm,
            oem_id: self.oem_id.clone(),
            product_id: self.product_id.clone(),
            count: self.count,
            serial_range: self.serial_range,
            not_before: self.not_before,
            not_after: self.not_after,
            template: self.template.clone(),
            root_cert: self.root_cert.clone(),
            device_ca_cert: self.device_ca_cert.clone(),
            wrapped_signing_key,
            firmware,
        })
    }

    /// The sealed package for `target` ([`Self::contents_for`] signed by `root_key`, the key
    /// of [`Self::root_cert`]), ready for the HSM to import.
    ///
    /// # Errors
    /// A key could not be wrapped, or signing failed.
    pub fn seal_for(
        &self,
        target: &HsmIdentity,
        root_key: &dyn Signer,
        signing_key: &SoftKey,
        firmware: Option<&Firmware<'_>>,
    ) -> Result<Vec<u8>, Error> {
        let contents = self.contents_for(target, signing_key, firmware)?;
        Ok(trustfab_formats::package::seal(&contents, root_key)?)
    }
}
