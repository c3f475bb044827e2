//! The binding strings a key wrap carries as its `info` (`docs/package.md`): what the OEM's
//! wrapping tool must reproduce byte for byte, and what the HSM checks before it unwraps. A
//! wrapped key whose `info` is not the one expected here is bound to another package, HSM or
//! device and is refused.

use trustfab_types::{DeviceUid, Fingerprint, ProductKey};

/// Prefix of the device-signing key's binding.
const PACKAGE_KEY_V1: &[u8] = b"trustfab-package-key-v1";
/// Prefix of the firmware family key's binding in a package.
const PACKAGE_FAMILY_KEY_V1: &[u8] = b"trustfab-package-family-key-v1";
/// Prefix of the family key's binding when the HSM delivers it to one device.
const FAMILY_KEY_DELIVERY_V1: &[u8] = b"trustfab-family-key-delivery-v1";

/// What the key wrap of a package binds: its id and the target HSM,
/// `"trustfab-package-key-v1" ‖ package_id ‖ hsm_fingerprint`.
pub fn wrap_info(package_id: &[u8; 16], hsm_fingerprint: &Fingerprint) -> Vec<u8> {
    let mut v = PACKAGE_KEY_V1.to_vec();
    v.extend_from_slice(package_id);
    v.extend_from_slice(hsm_fingerprint.as_bytes());
    v
}

/// What the family key's wrap in a package binds: its id and the target HSM,
/// `"trustfab-package-family-key-v1" ‖ package_id ‖ hsm_fingerprint`.
pub fn family_wrap_info(package_id: &[u8; 16], hsm_fingerprint: &Fingerprint) -> Vec<u8> {
    let mut v = PACKAGE_FAMILY_KEY_V1.to_vec();
    v.extend_from_slice(package_id);
    v.extend_from_slice(hsm_fingerprint.as_bytes());
    v
}

/// What a family key delivered to a device binds: the product and the device,
/// `"trustfab-family-key-delivery-v1" ‖ product ‖ 0x00 ‖ uid`.
pub fn family_delivery_info(product: &ProductKey, uid: &DeviceUid) -> Vec<u8> {
    let mut v = FAMILY_KEY_DELIVERY_V1.to_vec();
    v.extend_from_slice(product.to_string().as_bytes());
    v.push(0);
    v.extend_from_slice(uid.as_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_are_prefix_then_fields() {
        let w = wrap_info(&[1; 16], &Fingerprint::new([2; 32]));
        assert_eq!(&w[..23], b"trustfab-package-key-v1");
        assert_eq!(w.len(), 23 + 16 + 32);
        let f = family_wrap_info(&[1; 16], &Fingerprint::new([2; 32]));
        assert_eq!(&f[..30], b"trustfab-package-family-key-v1");
        assert_ne!(w, f);
        let uid = DeviceUid::new(&[0xab, 0xcd]).unwrap();
        let d = family_delivery_info(&ProductKey::parse("acme/thermo").unwrap(), &uid);
        assert_eq!(
            d,
            [
                &b"trustfab-family-key-delivery-v1acme/thermo"[..],
                &[0, 0xab, 0xcd]
            ]
            .concat()
        );
    }
}
