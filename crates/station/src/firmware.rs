//! The firmware step (step 8, between 5 and 6) of a job with firmware: preparing it from the
//! product's package and the image file ([`job_firmware`]), checking the image a run is given,
//! and on each secure MCU, through its [`SecureBoot`](trustfab_device::SecureBoot) stage: the family key the HSM wrapped for
//! the device's certified key, the root-of-trust fuse, the image as an update, one verified boot.

use trustfab_device::{
    BootOutcome, BootSlot, Device, Error as DeviceError, SwapOutcome, UpdateRequest,
};
use trustfab_formats::records::Bytes;
use trustfab_formats::{JobFirmware, JobSpec};
use trustfab_hsm::{HsmClient, JobOpError};
use trustfab_types::{DeviceUid, ProductKey, Serial};

use crate::error::RunError;
use crate::flow::Step;
use crate::state::{Outcome, Shared};

/// The firmware step of a job for `product`, from the image file `image` named `name`: the image
/// must be signed by the product's boot key (checked as far as its ciphertext allows, see
/// [`trustfab_firmware::verify_sealed`]) and carry a security counter; an encrypted image needs
/// the product's family key, which the station installs into `secret_slot`.
///
/// # Errors
/// [`JobOpError::Firmware`] naming what does not fit, or an HSM error.
pub fn job_firmware(
    hsm: &dyn HsmClient,
    product: &ProductKey,
    name: &str,
    image: &[u8],
    secret_slot: trustfab_device::SlotId,
) -> Result<JobFirmware, JobOpError> {
    let bad = |m: String| JobOpError::Firmware(m);
    let fw = hsm
        .firmware(product)
        .map_err(|e| bad(format!("{e}")))?
        .ok_or_else(|| bad(format!("product {product} has no firmware in its package")))?;
    let v = trustfab_firmware::verify_sealed(
        image,
        trustfab_firmware::TrustAnchor::KeyHash(&fw.boot_key_hash),
    )
    .map_err(|e| bad(format!("{name}: {e}")))?;
    let security_counter = v
        .security_counter
        .ok_or_else(|| bad(format!("{name}: the image has no security counter")))?;
    let encrypted = v.header.is_encrypted();
    if encrypted && fw.family_key.is_none() {
        return Err(bad(format!(
            "{name} is encrypted and product {product} has no family key to decrypt it"
        )));
    }
    Ok(JobFirmware {
        name: name.to_owned(),
        file_sha256: Bytes(sha256(image).to_vec()),
        image_hash: Bytes(v.hash.to_vec()),
        security_counter,
        boot_key_hash: Bytes(fw.boot_key_hash.to_vec()),
        family: fw.family,
        encrypted,
        secret_slot,
    })
}

pub(crate) fn sha256(b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b).as_ref());
    out
}

/// The image given for a job with firmware is the one it names; returns the family key point
/// the devices must report (empty for a plaintext image).
pub(crate) fn check_image(
    hsm: &dyn HsmClient,
    spec: &JobSpec,
    fw: &JobFirmware,
    image: Option<&[u8]>,
) -> Result<Vec<u8>, RunError> {
    let bad = |reason: String| RunError::Image {
        job: spec.job_id.clone(),
        reason,
    };
    let image = image.ok_or_else(|| {
        bad(format!(
            "the job programs {} and no image was given",
            fw.name
        ))
    })?;
    if sha256(image).as_slice() != fw.file_sha256.0.as_slice() {
        return Err(bad(format!(
            "the image given is not {} (its SHA-256 differs from the job's)",
            fw.name
        )));
    }
    if !fw.encrypted {
        return Ok(Vec::new());
    }
    hsm.firmware(&spec.product)?
        .and_then(|p| p.family_key)
        .ok_or_else(|| bad("the product has no family key".into()))
}

/// The firmware step on one device: the family key the HSM wrapped for this device's certified
/// key into the secret slot (unwrapped inside the part), the root-of-trust fuse, the image into
/// the secondary slot as an update, and one boot that must install and run exactly this image.
pub(crate) fn program_firmware<D: Device>(
    sh: &Shared<'_>,
    dev: &mut D,
    uid: &DeviceUid,
    fw: &JobFirmware,
    serial: Option<&Serial>,
) -> Result<(), Box<Outcome>> {
    let fail = |e: &DeviceError| Box::new(Outcome::failed(Some(uid), Step::Firmware, serial, e));
    let refuse = |reason: String| Box::new(Outcome::refused(uid, Step::Firmware, serial, reason));
    let image = sh
        .opts
        .image
        .as_deref()
        .ok_or_else(|| refuse("no image".into()))?;
    // A job with firmware is for secure MCUs only (the job format refuses others), and the kind
    // was checked at step 1; a part without a boot stage is refused all the same.
    let Some(boot) = dev.secure_boot() else {
        return Err(refuse("the part has no secure boot stage".into()));
    };
    if fw.encrypted {
        let wrapped = sh
            .hsm
            .family_key_for(sh.reservation, uid)
            .map_err(|e| refuse(format!("HSM: {e}")))?;
        let installed = boot
            .install_wrapped_secret(fw.secret_slot, &wrapped)
            .map_err(|e| fail(&e))?;
        if Some(&installed) != sh.family_point.as_ref() {
            return Err(refuse(
                "the device installed another family key than the product's".into(),
            ));
        }
    }
    let boot_key_hash: [u8; 32] = fw
        .boot_key_hash
        .0
        .as_slice()
        .try_into()
        .map_err(|_| refuse("the job's boot key hash is not 32 bytes".into()))?;
    match boot.rot_hash().map_err(|e| fail(&e))? {
        Some(h) if h == boot_key_hash => {}
        Some(_) => {
            return Err(refuse(
                "the root-of-trust fuse holds another key hash".into(),
            ))
        }
        None => boot
            .program_rot_hash(&boot_key_hash)
            .map_err(|e| fail(&e))?,
    }
    boot.write_boot_slot(BootSlot::Secondary, image)
        .map_err(|e| fail(&e))?;
    boot.request_update(UpdateRequest::Permanent)
        .map_err(|e| fail(&e))?;
    match boot.boot().map_err(|e| fail(&e))? {
        BootOutcome::Verified {
            image_hash, swap, ..
        } => {
            if let SwapOutcome::Refused(reason) = swap {
                return Err(refuse(format!("secure boot refused the image: {reason}")));
            }
            if image_hash.as_slice() != fw.image_hash.0.as_slice() {
                return Err(refuse(format!(
                    "the device booted another image than {}",
                    fw.name
                )));
            }
            Ok(())
        }
        BootOutcome::Unverified => Err(refuse(
            "the device booted without verifying (no root of trust)".into(),
        )),
    }
}
