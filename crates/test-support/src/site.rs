//! A programming centre with an imported product, as the HSM and station tests and the HSM
//! bench set it up: the vendor certifies an HSM identity made in a token, the OEM seals an order
//! for that HSM with `trustfab_oem::Order` (its device-CA key wrapped inside), the HSM imports it.
//!
//! The token, the ledger and the clock are the caller's (a soft token or SoftHSM2, SQLite or
//! PostgreSQL, a fixed or the system clock); so is `now`, the time every certificate and package
//! validity is placed around.

use std::sync::Arc;

use trustfab_formats::package::SerialRange;
use trustfab_hsm::Hsm;
use trustfab_ledger::Store;
use trustfab_oem::Order;
use trustfab_pki::template::EXAMPLE_TEMPLATE;
use trustfab_pki::{
    certify_hsm, intermediate_ca, self_signed_ca, CaRole, CaSpec, Curve, HsmCertificates,
    HsmIdentity, HsmRequest, Issuer, PublicKey, Signer, SoftKey,
};
use trustfab_token::Token;
use trustfab_types::{Clock, OemId, ProductId, Serial, UnixTime};

/// A CA certificate (DER) named `name`, for `key`: self-signed, or issued by `issuer`. Serial 7,
/// valid from a day before `now` for ten years.
pub fn ca(
    role: CaRole,
    name: &str,
    key: &SoftKey,
    issuer: Option<&Issuer<'_>>,
    now: UnixTime,
) -> Vec<u8> {
    let spec = CaSpec {
        role,
        common_name: name.into(),
        organization: name.into(),
        // Unique per issuer (RFC 5280 §4.1.2.2): a root is serial 1 of its own key, the one CA
        // it issues here is serial 2.
        serial: Serial::from_u64(if issuer.is_none() { 1 } else { 2 }).expect("serial"),
        not_before: UnixTime(now.0 - 86_400),
        days: 3650,
    };
    match issuer {
        None => self_signed_ca(&spec, key).expect("self-signed CA"),
        Some(i) => {
            let pk = PublicKey::from_point(key.curve(), key.public_point()).expect("CA key");
            intermediate_ca(&spec, &pk, i).expect("intermediate CA")
        }
    }
}

/// The vendor of the provisioning system: its root certifies HSMs.
pub struct Vendor {
    /// The root key.
    pub key: SoftKey,
    /// The root certificate, DER.
    pub root: Vec<u8>,
}

impl Vendor {
    /// A fresh P-256 root, valid around `now`.
    pub fn new(now: UnixTime) -> Self {
        let key = SoftKey::generate(Curve::P256).expect("vendor key");
        let root = ca(CaRole::VendorRoot, "Vendor", &key, None, now);
        Self { key, root }
    }

    /// `trustfab vendor certify`: the HSM's identity and key-transport certificates (serials
    /// 100 and 101), valid from an hour before `now` for a year.
    pub fn certify(&self, req: &HsmRequest, now: UnixTime) -> HsmCertificates {
        let issuer = Issuer::new(&self.root, &self.key).expect("vendor issuer");
        let (s1, s2) = (
            Serial::from_u64(100).expect("serial 100"),
            Serial::from_u64(101).expect("serial 101"),
        );
        certify_hsm(req, &issuer, (&s1, &s2), UnixTime(now.0 - 3600), 365).expect("certify HSM")
    }
}

/// The OEM: its root, which signs packages, and its device CA, whose key the HSM signs with.
pub struct Oem {
    /// The OEM id.
    pub id: OemId,
    /// The root key.
    pub root_key: SoftKey,
    /// The root certificate, DER.
    pub root: Vec<u8>,
    /// The device-CA key: what a package wraps for the HSM.
    pub ca_key: SoftKey,
    /// The device-CA certificate, DER.
    pub ca: Vec<u8>,
}

impl Oem {
    /// Fresh P-256 keys, certificates `"{id} root"` and `"{id} device CA"` valid around `now`.
    pub fn new(id: &str, now: UnixTime) -> Self {
        let root_key = SoftKey::generate(Curve::P256).expect("OEM root key");
        let root = ca(CaRole::OemRoot, &format!("{id} root"), &root_key, None, now);
        let ca_key = SoftKey::generate(Curve::P256).expect("device CA key");
        let issuer = Issuer::new(&root, &root_key).expect("OEM root issuer");
        let ca = ca(
            CaRole::DeviceCa,
            &format!("{id} device CA"),
            &ca_key,
            Some(&issuer),
            now,
        );
        Self {
            id: OemId::new(id).expect("OEM id"),
            root_key,
            root,
            ca_key,
            ca,
        }
    }

    /// `trustfab oem wrap`: validates the HSM identity `target` to `vendor_root` at `spec.now`
    /// and seals the order `spec` for it with [`trustfab_oem::Order::seal_for`] (device-CA key
    /// and firmware family key wrapped for its key-transport key, signed by the root key).
    pub fn package(
        &self,
        target: &HsmCertificates,
        vendor_root: &[u8],
        spec: &PackageSpec<'_>,
    ) -> Vec<u8> {
        let identity = HsmIdentity::validate(target, vendor_root, spec.now).expect("HSM identity");
        let order = Order {
            package_id: spec.package_id,
            oem_id: self.id.clone(),
            product_id: ProductId::new(spec.product).expect("product id"),
            count: spec.count,
            serial_range: spec.serial_range,
            not_before: spec.not_before,
            not_after: spec.not_after,
            template: spec.template.into(),
            root_cert: self.root.clone(),
            device_ca_cert: Some(self.ca.clone()),
        };
        let firmware = spec.firmware.map(|fw| trustfab_oem::Firmware {
            family: &fw.family,
            boot_key_hash: fw.boot_key_hash,
            family_key: fw.family_key.as_deref(),
        });
        let Some(info) = spec.firmware.and_then(|fw| fw.info.as_deref()) else {
            return order
                .seal_for(&identity, &self.root_key, &self.ca_key, firmware.as_ref())
                .expect("seal the package");
        };
        // A family key wrap bound to another `info`: what the HSM must refuse.
        let mut contents = order
            .contents_for(&identity, &self.ca_key, firmware.as_ref())
            .expect("package contents");
        if let (Some(section), Some(key)) = (
            contents.firmware.as_mut(),
            spec.firmware.and_then(|fw| fw.family_key.as_deref()),
        ) {
            let der = key.secret_pkcs8_der().expect("PKCS#8 of the family key");
            section.wrapped_family_key = Some(
                trustfab_token::wrap_for(&identity.kt_key, &der, info)
                    .expect("wrap for the HSM")
                    .to_bytes(),
            );
        }
        trustfab_formats::package::seal(&contents, &self.root_key).expect("seal the package")
    }
}

/// A product's firmware, as the OEM puts it in a package.
#[derive(Clone, Debug)]
pub struct Firmware {
    /// The device family.
    pub family: String,
    /// What the devices' root-of-trust fuse holds.
    pub boot_key_hash: [u8; 32],
    /// The family decryption key; `None` for images signed but not encrypted.
    pub family_key: Option<Arc<SoftKey>>,
    /// The family key wrap's `info`, when a test binds it to something else than
    /// [`trustfab_hsm::family_wrap_info`] of the package and the HSM.
    pub info: Option<Vec<u8>>,
}

impl Firmware {
    /// Family `thermo-mcu`, boot key hash `0x42…`, a fresh family key, the right `info`.
    pub fn new() -> Self {
        Self {
            family: "thermo-mcu".into(),
            boot_key_hash: [0x42; 32],
            family_key: Some(Arc::new(
                SoftKey::generate(Curve::P256).expect("family key"),
            )),
            info: None,
        }
    }

    /// The family key's public point.
    pub fn family_point(&self) -> Vec<u8> {
        self.family_key
            .as_ref()
            .expect("a family key")
            .public_point()
            .to_vec()
    }
}

impl Default for Firmware {
    fn default() -> Self {
        Self::new()
    }
}

/// What a package orders: [`PackageSpec::new`] gives the defaults, the builder methods and the
/// fields change them.
#[derive(Clone, Copy, Debug)]
pub struct PackageSpec<'a> {
    /// The product id (without the OEM).
    pub product: &'a str,
    /// Certificates ordered.
    pub count: u64,
    /// The package id.
    pub package_id: [u8; 16],
    /// The device certificate template, TOML.
    pub template: &'a str,
    /// Serial numbers assigned by the OEM.
    pub serial_range: Option<SerialRange>,
    /// When the OEM validates the HSM identity.
    pub now: UnixTime,
    /// The package may not be imported before this time.
    pub not_before: UnixTime,
    /// The package may not be imported after this time.
    pub not_after: UnixTime,
    /// The firmware section.
    pub firmware: Option<&'a Firmware>,
}

impl<'a> PackageSpec<'a> {
    /// `count` of `product` at `now`: package id `[1; 16]`, the example template, no serial
    /// range, importable from a minute before `now` for a week, no firmware.
    pub fn new(product: &'a str, count: u64, now: UnixTime) -> Self {
        Self {
            product,
            count,
            package_id: [1; 16],
            template: EXAMPLE_TEMPLATE,
            serial_range: None,
            now,
            not_before: UnixTime(now.0 - 60),
            not_after: UnixTime(now.0 + 7 * 86_400),
            firmware: None,
        }
    }

    /// Package id `[id; 16]`.
    #[must_use]
    pub fn id(mut self, id: u8) -> Self {
        self.package_id = [id; 16];
        self
    }

    /// Another template.
    #[must_use]
    pub fn template(mut self, template: &'a str) -> Self {
        self.template = template;
        self
    }

    /// Serial numbers assigned by the OEM.
    #[must_use]
    pub fn serials(mut self, range: SerialRange) -> Self {
        self.serial_range = Some(range);
        self
    }

    /// A firmware section.
    #[must_use]
    pub fn firmware(mut self, firmware: &'a Firmware) -> Self {
        self.firmware = Some(firmware);
        self
    }
}

/// A programming centre with one product imported.
pub struct Site {
    /// The HSM, open on the caller's token, ledger and clock.
    pub hsm: Hsm,
    /// The ledger the HSM records into: what a test audits (a station never holds it).
    pub ledger: Arc<dyn Store>,
    /// Its certificates.
    pub certs: HsmCertificates,
    /// The vendor that certified it.
    pub vendor: Vendor,
    /// The OEM whose product it is.
    pub oem: Oem,
    /// The package imported.
    pub package: Vec<u8>,
}

impl Site {
    /// Makes HSM `hsm_id` on `token` (an uninitialised one), has a new vendor certify it, opens
    /// it on `ledger` and `clock`, and imports the package a new OEM `oem_id` makes for it
    /// from `spec`.
    pub fn new(
        token: Arc<dyn Token>,
        ledger: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        hsm_id: &str,
        oem_id: &str,
        spec: &PackageSpec<'_>,
    ) -> Self {
        let vendor = Vendor::new(spec.now);
        let hsm_id = trustfab_types::HsmId::new(hsm_id).expect("HSM id");
        let req = Hsm::init(&*token, &hsm_id).expect("HSM init");
        let certs = vendor.certify(&req, spec.now);
        let hsm =
            Hsm::open(token, Arc::clone(&ledger), clock, &hsm_id, Some(&certs)).expect("HSM open");
        let oem = Oem::new(oem_id, spec.now);
        let package = oem.package(&certs, &vendor.root, spec);
        hsm.import(&package).expect("package import");
        Self {
            hsm,
            ledger,
            certs,
            vendor,
            oem,
            package,
        }
    }
}
