//! Fixtures: OEMs with a root and a device CA, devices provisioned directly through the device
//! interface (key generated inside, certificate issued from a template, device certificate,
//! device CA and root written to write-protected slots, data zone locked), CRLs, and one
//! complete exchange of the protocol with its frames kept. Shared by the tests and the bench
//! (the bench includes this file with `#[path]`).

use trustfab_auth::{Identity, Initiator, Responder, Slots, Trust};
use trustfab_device::{Device, DeviceKind, SiliconVendor, SimDevice, Zone};
use trustfab_pki::template::EXAMPLE_TEMPLATE;
use trustfab_pki::{
    build_crl, issue_device, DeviceRequest, Issuer, PublicKey, Reason, RenderInputs, Revoked,
    SoftKey, Template,
};
use trustfab_test_support::site;
use trustfab_types::{DeviceUid, OemId, OsRng, ProductId, Serial, UnixTime};

pub(crate) const NOW: UnixTime = UnixTime(1_790_000_000); // 2026-09-21
pub(crate) const DAY: u64 = 86_400;

/// The example template: no expiry, EKU clientAuth and the device EKU 1.3.6.1.4.1.55555.1.1.
pub(crate) fn template() -> Template {
    Template::from_toml(EXAMPLE_TEMPLATE).unwrap()
}

/// The example template with a validity of one day.
pub(crate) fn one_day_template() -> Template {
    Template::from_toml(&EXAMPLE_TEMPLATE.replace("no_expiry = true", "days = 1")).unwrap()
}

/// The example template whose certificates are good for TLS servers as well (a device that
/// serves TLS), still with the device EKU.
pub(crate) fn server_capable_template() -> Template {
    Template::from_toml(&EXAMPLE_TEMPLATE.replace(
        r#"extended_key_usage = ["client_auth","#,
        r#"extended_key_usage = ["client_auth", "server_auth","#,
    ))
    .unwrap()
}

/// The device EKU of the example template.
pub(crate) const DEVICE_EKU: &[u64] = &[1, 3, 6, 1, 4, 1, 55555, 1, 1];

pub(crate) struct Oem {
    pub(crate) id: OemId,
    pub(crate) root: Vec<u8>,
    pub(crate) ca_key: SoftKey,
    pub(crate) ca: Vec<u8>,
}

impl Oem {
    /// A root and a device CA valid from a day before [`NOW`] for ten years (test-support's).
    pub(crate) fn new(name: &str) -> Self {
        let site::Oem {
            id,
            root,
            ca_key,
            ca,
            ..
        } = site::Oem::new(name, NOW);
        Self {
            id,
            root,
            ca_key,
            ca,
        }
    }

    pub(crate) fn issuer(&self) -> Issuer<'_> {
        Issuer::new(&self.ca, &self.ca_key).unwrap()
    }

    /// A device certificate for `public_key` from `template`.
    pub(crate) fn issue(
        &self,
        template: &Template,
        uid: &DeviceUid,
        serial: u64,
        public_key: &PublicKey,
    ) -> Vec<u8> {
        let product = ProductId::new("thermostat").unwrap();
        let serial = Serial::from_u64(serial).unwrap();
        let req = DeviceRequest {
            inputs: RenderInputs {
                oem: &self.id,
                product: &product,
                uid,
                serial: &serial,
            },
            public_key,
            now: NOW,
        };
        issue_device(template, &req, &self.issuer()).unwrap()
    }

    /// A CRL from the device CA revoking `serials`, current from [`NOW`] for a year (TLS tests
    /// validate at the real time).
    pub(crate) fn crl(&self, serials: &[u64]) -> Vec<u8> {
        let revoked: Vec<Revoked> = serials
            .iter()
            .map(|s| Revoked {
                serial: Serial::from_u64(*s).unwrap(),
                at: NOW,
                reason: Reason::KeyCompromise,
            })
            .collect();
        build_crl(
            &self.issuer(),
            &revoked,
            1,
            UnixTime(NOW.0 - DAY),
            UnixTime(NOW.0 + 365 * DAY),
        )
        .unwrap()
    }

    /// Generates `d`'s key inside its key slot and returns its certificate from `template`
    /// with `serial`.
    fn certify(&self, d: &mut SimDevice, template: &Template, serial: u64) -> Vec<u8> {
        let pk = d.generate_key(Slots::PROVISIONED.key).unwrap();
        let uid = d.uid().unwrap();
        self.issue(template, &uid, serial, &pk)
    }

    /// Writes `cert`, this OEM's device CA and `root` into `d`'s write-protected slots.
    fn write_certificates(&self, d: &mut SimDevice, cert: &[u8], root: &[u8]) {
        d.write_slot(Slots::PROVISIONED.certificate, cert).unwrap();
        d.write_slot(Slots::PROVISIONED.device_ca, &self.ca)
            .unwrap();
        d.write_slot(Slots::PROVISIONED.root, root).unwrap();
    }

    /// Provisions a fresh part: key generated inside slot 0, certificate from `template` with
    /// `serial`, certificates into slots 10–12, data zone locked. When `cert_override` is given,
    /// that certificate is written instead of the one for the part's key (a station's mistake or
    /// a cloned certificate).
    pub(crate) fn provision_with(
        &self,
        vendor: &mut SiliconVendor,
        template: &Template,
        serial: u64,
        cert_override: Option<&[u8]>,
    ) -> SimDevice {
        let mut d = vendor.manufacture(DeviceKind::SecureElement, NOW).unwrap();
        let cert = self.certify(&mut d, template, serial);
        self.write_certificates(&mut d, cert_override.unwrap_or(&cert), &self.root);
        d.lock(Zone::Data).unwrap();
        d
    }

    /// Provisions a part with this OEM's certificate but `root` as its trust anchor.
    pub(crate) fn provision_trusting(
        &self,
        vendor: &mut SiliconVendor,
        serial: u64,
        root: &[u8],
    ) -> SimDevice {
        let mut d = vendor.manufacture(DeviceKind::SecureElement, NOW).unwrap();
        let cert = self.certify(&mut d, &template(), serial);
        self.write_certificates(&mut d, &cert, root);
        d.lock(Zone::Data).unwrap();
        d
    }

    /// Provisions a secure MCU: lifecycle open → provisioned, key generated inside, certificates
    /// written, root-of-trust hash programmed, lifecycle → locked.
    pub(crate) fn provision_mcu(&self, vendor: &mut SiliconVendor, serial: u64) -> SimDevice {
        let mut d = vendor.manufacture(DeviceKind::SecureMcu, NOW).unwrap();
        d.lock(Zone::Config).unwrap();
        let cert = self.certify(&mut d, &template(), serial);
        self.write_certificates(&mut d, &cert, &self.root);
        d.program_rot_hash(&[7; 32]).unwrap();
        d.lock(Zone::Data).unwrap();
        d
    }

    pub(crate) fn provision(&self, vendor: &mut SiliconVendor, serial: u64) -> SimDevice {
        self.provision_with(vendor, &template(), serial, None)
    }

    pub(crate) fn identity(&self, vendor: &mut SiliconVendor, serial: u64) -> Identity<SimDevice> {
        Identity::load(self.provision(vendor, serial), Slots::PROVISIONED).unwrap()
    }
}

pub(crate) fn vendor() -> SiliconVendor {
    SiliconVendor::new(UnixTime(NOW.0 - DAY), &OsRng).unwrap()
}

pub(crate) fn trust(now: UnixTime) -> Trust<'static> {
    Trust { crls: &[], now }
}

/// acme's OEM, a vendor, and two acme devices loaded as identities with serials `a` and `b`
/// (the OEM and the vendor for tests that make more).
pub(crate) fn acme_pair(
    a: u64,
    b: u64,
) -> (Oem, SiliconVendor, Identity<SimDevice>, Identity<SimDevice>) {
    let oem = Oem::new("acme");
    let mut v = vendor();
    let a = oem.identity(&mut v, a);
    let b = oem.identity(&mut v, b);
    (oem, v, a, b)
}

/// `a` opens an exchange with `b`, and `b` answers it at [`NOW`]: the initiator (not finished),
/// the responder (not finished), `a`'s hello, and `b`'s hello and answer.
pub(crate) fn open_exchange(
    a: &mut Identity<SimDevice>,
    b: &mut Identity<SimDevice>,
) -> (Initiator, Responder, Vec<u8>, [Vec<u8>; 2]) {
    let (init, hello_i) = Initiator::start(a).unwrap();
    let (resp, frames) = Responder::respond(b, &trust(NOW), &hello_i).unwrap();
    (init, resp, hello_i, frames)
}

/// One complete exchange, with every frame kept.
pub(crate) struct Recorded {
    pub(crate) hello_i: Vec<u8>,
    pub(crate) hello_r: Vec<u8>,
    pub(crate) answer_r: Vec<u8>,
    pub(crate) answer_i: Vec<u8>,
}

/// A complete exchange at [`NOW`], `a` the initiator and `b` the responder.
pub(crate) fn record(a: &mut Identity<SimDevice>, b: &mut Identity<SimDevice>) -> Recorded {
    let (init, resp, hello_i, [hello_r, answer_r]) = open_exchange(a, b);
    let (_, answer_i) = init.finish(a, &trust(NOW), &hello_r, &answer_r).unwrap();
    resp.finish(&answer_i).unwrap();
    Recorded {
        hello_i,
        hello_r,
        answer_r,
        answer_i,
    }
}
