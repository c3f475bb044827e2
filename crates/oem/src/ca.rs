//! A certificate authority on disk: the directory layout the OEM CA and the vendor CA share
//! (`docs/ca-directory.md`). Certificates are PEM; private keys are encrypted PKCS#8, mode 0600;
//! `ca.toml` holds the settings, the CRL number and the revocations.
//!
//! Invariants: keys are only ever written encrypted; a revoked serial stays revoked (there is
//! no way to remove a revocation); each CRL's number is greater than every earlier one, and is
//! recorded in `ca.toml` before the CRL is handed out.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use trustfab_pki::{
    pem, CaRole, CaSpec, Curve, DeviceRequest, Issuer, Policy, PublicKey, Purpose, Reason,
    RenderInputs, Revoked, Signer, SoftKey, Template,
};
use trustfab_types::{limits, DeviceUid, OemId, OsRng, Passphrase, ProductId, Serial, UnixTime};

use crate::{files, Error};

/// The `ca.toml` format version this build reads.
pub(crate) const CA_FORMAT: u32 = 1;
/// Largest `ca.toml` accepted (it grows with revocations).
const CA_TOML_BYTES: usize = 8 * 1024 * 1024;

/// The root certificate's file name.
pub const ROOT_CERT: &str = "root.pem";
/// The root key's file name (encrypted PKCS#8).
pub const ROOT_KEY: &str = "root.key";
/// The device CA certificate's file name.
pub const DEVICE_CA_CERT: &str = "device-ca.pem";
/// The device CA key's file name (encrypted PKCS#8).
pub const DEVICE_CA_KEY: &str = "device-ca.key";
const STATE: &str = "ca.toml";

/// Which CA a directory holds.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The provisioning-system vendor's root, which certifies HSMs.
    Vendor,
    /// An OEM's root (and device CA), which signs packages and devices.
    Oem,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
struct RevokedEntry {
    serial: String,
    at: u64,
    reason: Reason,
}

/// `ca.toml`.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct CaState {
    format: u32,
    kind: Kind,
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    oem_id: Option<OemId>,
    curve: Curve,
    device_ca: bool,
    crl_number: u64,
    #[serde(default)]
    revoked: Vec<RevokedEntry>,
}

/// A CA directory, opened.
pub struct CaDir {
    dir: PathBuf,
    state: CaState,
}

/// What [`CaDir::init`] needs.
#[derive(Clone, Debug)]
pub struct InitSpec<'a> {
    /// Vendor or OEM.
    pub kind: Kind,
    /// The organisation name in the certificates.
    pub name: &'a str,
    /// The OEM id (for an OEM CA).
    pub oem_id: Option<OemId>,
    /// The curve of the CA keys.
    pub curve: Curve,
    /// Years of validity of the root.
    pub years: u32,
    /// Also make a device CA under the root; it signs device certificates.
    pub device_ca: bool,
}

/// A CRL [`CaDir::issue_crl`] made.
#[derive(Clone, Debug)]
pub struct Crl {
    /// The CRL, DER.
    pub der: Vec<u8>,
    /// Its CRL number, already recorded in `ca.toml`.
    pub number: u64,
    /// How many certificates it lists.
    pub revoked: usize,
}

/// What a test issuance ([`CaDir::issue_test`]) certifies.
#[derive(Clone, Copy, Debug)]
pub struct TestIssue<'a> {
    /// The device certificate template.
    pub template: &'a Template,
    /// The product id for `{product}`.
    pub product: &'a ProductId,
    /// The device UID for `{uid}`.
    pub uid: &'a DeviceUid,
    /// The serial number.
    pub serial: &'a Serial,
    /// The device public key.
    pub public_key: &'a PublicKey,
    /// The issuance time.
    pub now: UnixTime,
}

/// A random positive 16-octet serial (127 bits of randomness; RFC 5280 §4.1.2.2).
///
/// # Errors
/// The system random generator failed.
pub fn random_serial() -> Result<Serial, Error> {
    let mut b = [0u8; 16];
    trustfab_types::Rng::fill(&OsRng, &mut b)?;
    if let Some(first) = b.first_mut() {
        *first &= 0x7f;
        *first |= 0x01; // never zero, 16 octets: 127 bits of randomness
    }
    Ok(Serial::from_be_bytes(&b)?)
}

impl CaDir {
    /// Creates a new CA in `dir` (created if missing; it must not hold a CA already), its
    /// validity starting at `now`. The keys are written encrypted under `pass`, mode 0600.
    ///
    /// # Errors
    /// The directory holds a CA, `spec.years` is zero or too large, or a file could not be
    /// written.
    pub fn init(
        dir: &Path,
        spec: &InitSpec<'_>,
        pass: &Passphrase,
        now: UnixTime,
    ) -> Result<Self, Error> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            what: "creating",
            path: dir.to_owned(),
            source,
        })?;
        if dir.join(STATE).exists() {
            return Err(Error::CaExists {
                dir: dir.to_owned(),
            });
        }
        let days = spec
            .years
            .checked_mul(365)
            .filter(|d| *d > 0)
            .ok_or(Error::Years { years: spec.years })?;
        let root_key = SoftKey::generate(spec.curve)?;
        let (root_role, root_cn) = match spec.kind {
            Kind::Vendor => (CaRole::VendorRoot, format!("{} Vendor Root CA", spec.name)),
            Kind::Oem => (CaRole::OemRoot, format!("{} Root CA", spec.name)),
        };
        let root_spec = CaSpec {
            role: root_role,
            common_name: root_cn,
            organization: spec.name.to_owned(),
            serial: random_serial()?,
            not_before: now,
            days,
        };
        let root = trustfab_pki::self_signed_ca(&root_spec, &root_key)?;
        files::write_new(
            &dir.join(ROOT_KEY),
            root_key.to_encrypted_pem(pass, &OsRng)?.as_bytes(),
            true,
        )?;
        files::write_new(&dir.join(ROOT_CERT), pem::cert_pem(&root).as_bytes(), false)?;
        if spec.device_ca {
            let ca_key = SoftKey::generate(spec.curve)?;
            let issuer = Issuer::new(&root, &root_key)?;
            let ca_spec = CaSpec {
                role: CaRole::DeviceCa,
                common_name: format!("{} Device CA", spec.name),
                organization: spec.name.to_owned(),
                serial: random_serial()?,
                not_before: now,
                days: days.saturating_sub(365).max(365),
            };
            let public = PublicKey::from_point(spec.curve, ca_key.public_point())
                .map_err(trustfab_pki::Error::from)?;
            let ca = trustfab_pki::intermediate_ca(&ca_spec, &public, &issuer)?;
            files::write_new(
                &dir.join(DEVICE_CA_KEY),
                ca_key.to_encrypted_pem(pass, &OsRng)?.as_bytes(),
                true,
            )?;
            files::write_new(
                &dir.join(DEVICE_CA_CERT),
                pem::cert_pem(&ca).as_bytes(),
                false,
            )?;
        }
        let state = CaState {
            format: CA_FORMAT,
            kind: spec.kind,
            name: spec.name.to_owned(),
            oem_id: spec.oem_id.clone(),
            curve: spec.curve,
            device_ca: spec.device_ca,
            crl_number: 0,
            revoked: Vec::new(),
        };
        let ca = Self {
            dir: dir.to_owned(),
            state,
        };
        ca.save()?;
        Ok(ca)
    }

    /// Opens the CA in `dir`, checking it is of `kind`.
    ///
    /// # Errors
    /// No `ca.toml`, one that does not parse or of another format, or a CA of another kind.
    pub fn open(dir: &Path, kind: Kind) -> Result<Self, Error> {
        let path = dir.join(STATE);
        let text = files::read_text(&path, CA_TOML_BYTES).map_err(|e| Error::NoCa {
            dir: dir.to_owned(),
            source: Box::new(e),
        })?;
        let state: CaState = toml::from_str(&text).map_err(|source| Error::State {
            path: path.clone(),
            source,
        })?;
        if state.format != CA_FORMAT {
            return Err(Error::Format {
                path,
                found: state.format,
            });
        }
        if state.kind != kind {
            return Err(Error::WrongKind {
                dir: dir.to_owned(),
                found: state.kind,
                wanted: kind,
            });
        }
        Ok(Self {
            dir: dir.to_owned(),
            state,
        })
    }

    fn save(&self) -> Result<(), Error> {
        let text = toml::to_string(&self.state)?;
        files::write_atomic(&self.dir.join(STATE), text.as_bytes(), false)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The organisation name.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The curve of the CA keys.
    pub fn curve(&self) -> Curve {
        self.state.curve
    }

    /// Whether a device CA under the root signs end-entity certificates.
    pub fn has_device_ca(&self) -> bool {
        self.state.device_ca
    }

    /// The number of the last CRL issued (0: none yet).
    pub fn crl_number(&self) -> u64 {
        self.state.crl_number
    }

    /// The OEM id of an OEM CA.
    ///
    /// # Errors
    /// [`Error::NoOemId`]: `ca.toml` names none (a vendor CA).
    pub fn oem_id(&self) -> Result<&OemId, Error> {
        self.state.oem_id.as_ref().ok_or(Error::NoOemId)
    }

    fn cert(&self, name: &str) -> Result<Vec<u8>, Error> {
        let path = self.dir.join(name);
        let bytes = files::read_limited(&path, limits::CERTIFICATE_BYTES)?;
        pem::cert_from_pem_or_der(&bytes).map_err(|source| Error::Certificate { path, source })
    }

    fn key(&self, name: &str, pass: &Passphrase) -> Result<SoftKey, Error> {
        let path = self.dir.join(name);
        let text = files::read_text(&path, limits::KEY_FILE_BYTES)?;
        SoftKey::from_encrypted_pem(&text, pass).map_err(|source| Error::KeyFile { path, source })
    }

    /// The root certificate, DER.
    ///
    /// # Errors
    /// The file does not read or holds no certificate.
    pub fn root_der(&self) -> Result<Vec<u8>, Error> {
        self.cert(ROOT_CERT)
    }

    /// Intermediates between a device certificate and the root (the device CA, if any).
    ///
    /// # Errors
    /// The file does not read or holds no certificate.
    pub fn intermediates(&self) -> Result<Vec<Vec<u8>>, Error> {
        if self.state.device_ca {
            Ok(vec![self.cert(DEVICE_CA_CERT)?])
        } else {
            Ok(Vec::new())
        }
    }

    /// The certificate and key of the CA that signs end-entity certificates (and their CRL):
    /// the device CA when there is one, else the root.
    ///
    /// # Errors
    /// A file does not read, or the key does not open under `pass`.
    pub fn signing(&self, pass: &Passphrase) -> Result<(Vec<u8>, SoftKey), Error> {
        let (cert, key) = if self.state.device_ca {
            (DEVICE_CA_CERT, DEVICE_CA_KEY)
        } else {
            (ROOT_CERT, ROOT_KEY)
        };
        let key = self.key(key, pass)?;
        Ok((self.cert(cert)?, key))
    }

    /// The root key, which signs provisioning packages.
    ///
    /// # Errors
    /// The file does not read, or the key does not open under `pass`.
    pub fn root_key(&self, pass: &Passphrase) -> Result<SoftKey, Error> {
        self.key(ROOT_KEY, pass)
    }

    /// An issuer of `cert` signing with `key`, refused unless `key` is the certified key.
    ///
    /// # Errors
    /// [`Error::KeyMismatch`].
    pub fn issuer<'k>(&self, cert: &[u8], key: &'k SoftKey) -> Result<Issuer<'k>, Error> {
        Issuer::new(cert, key).map_err(Error::KeyMismatch)
    }

    /// Records a revocation, durably, before returning. Idempotent per serial: `false` when it
    /// was revoked already (the first time and reason stay).
    ///
    /// # Errors
    /// `ca.toml` could not be written.
    pub fn revoke(&mut self, serial: &Serial, reason: Reason, at: UnixTime) -> Result<bool, Error> {
        let hex = serial.to_hex();
        if self.state.revoked.iter().any(|r| r.serial == hex) {
            return Ok(false);
        }
        self.state.revoked.push(RevokedEntry {
            serial: hex,
            at: at.0,
            reason,
        });
        if let Err(e) = self.save() {
            self.state.revoked.pop();
            return Err(e);
        }
        Ok(true)
    }

    /// The revocations, parsed.
    ///
    /// # Errors
    /// [`Error::BadSerial`]: a serial in `ca.toml` does not parse.
    pub fn revoked(&self) -> Result<Vec<Revoked>, Error> {
        self.state
            .revoked
            .iter()
            .map(|r| {
                Ok(Revoked {
                    serial: Serial::from_hex(&r.serial).map_err(|source| Error::BadSerial {
                        serial: r.serial.clone(),
                        source,
                    })?,
                    at: UnixTime(r.at),
                    reason: r.reason,
                })
            })
            .collect()
    }

    /// A CRL of every revoked certificate, signed by the CA that issued them, valid from `now`
    /// for `days` (at least 1). Its number is one more than the last and is recorded in
    /// `ca.toml` before the CRL is returned, so no two CRLs ever carry one number.
    ///
    /// # Errors
    /// The key does not open, the CRL cannot be built, or `ca.toml` cannot be written.
    pub fn issue_crl(&mut self, pass: &Passphrase, now: UnixTime, days: u32) -> Result<Crl, Error> {
        let (cert, key) = self.signing(pass)?;
        let issuer = self.issuer(&cert, &key)?;
        let next = UnixTime(now.0.saturating_add(u64::from(days.max(1)) * 86_400));
        let number = self.state.crl_number.saturating_add(1);
        let revoked = self.revoked()?;
        let der = trustfab_pki::build_crl(&issuer, &revoked, number, now, next)?;
        let last = self.state.crl_number;
        self.state.crl_number = number;
        if let Err(e) = self.save() {
            self.state.crl_number = last;
            return Err(e);
        }
        Ok(Crl {
            der,
            number,
            revoked: revoked.len(),
        })
    }

    /// One device certificate from `req.template`, signed by this OEM's signing CA: to look at,
    /// not to ship (production certificates come only from the HSM).
    ///
    /// # Errors
    /// No OEM id, the key does not open, or issuance refuses the inputs.
    pub fn issue_test(&self, req: &TestIssue<'_>, pass: &Passphrase) -> Result<Vec<u8>, Error> {
        let oem = self.oem_id()?;
        let (cert, key) = self.signing(pass)?;
        let issuer = self.issuer(&cert, &key)?;
        let request = DeviceRequest {
            inputs: RenderInputs {
                oem,
                product: req.product,
                uid: req.uid,
                serial: req.serial,
            },
            public_key: req.public_key,
            now: req.now,
        };
        Ok(trustfab_pki::issue_device(req.template, &request, &issuer)?)
    }

    /// Validates a device certificate (DER) to this CA's root, through its device CA, as a
    /// client certificate at `now`, with `crls` checked for revocation.
    ///
    /// # Errors
    /// [`Error::Pki`] with the validation's reason.
    pub fn validate(&self, der: &[u8], crls: &[Vec<u8>], now: UnixTime) -> Result<(), Error> {
        let root = self.root_der()?;
        let intermediates = self.intermediates()?;
        trustfab_pki::validate(
            der,
            &Policy {
                root: &root,
                intermediates: &intermediates,
                crls,
                now,
                purpose: Purpose::ClientAuth,
            },
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixTime = UnixTime(1_750_000_000);

    fn pass(s: &str) -> Passphrase {
        Passphrase::new(s.into()).unwrap()
    }

    fn oem(dir: &Path, device_ca: bool) -> CaDir {
        let spec = InitSpec {
            kind: Kind::Oem,
            name: "Acme",
            oem_id: Some(OemId::new("acme").unwrap()),
            curve: Curve::P256,
            years: 5,
            device_ca,
        };
        CaDir::init(dir, &spec, &pass("right"), NOW).unwrap()
    }

    #[test]
    fn revocation_persists_across_reopen_and_stays() {
        let t = tempfile::tempdir().unwrap();
        let mut ca = oem(t.path(), true);
        let serial = Serial::from_u64(0x1234).unwrap();
        assert!(ca.revoke(&serial, Reason::KeyCompromise, NOW).unwrap());
        drop(ca);
        let mut ca = CaDir::open(t.path(), Kind::Oem).unwrap();
        let revoked = ca.revoked().unwrap();
        assert_eq!(revoked.len(), 1);
        assert_eq!(revoked[0].serial, serial);
        assert_eq!(revoked[0].reason, Reason::KeyCompromise);
        // Revoking again changes nothing: the first time and reason stay.
        assert!(!ca
            .revoke(&serial, Reason::Superseded, UnixTime(NOW.0 + 9))
            .unwrap());
        let ca = CaDir::open(t.path(), Kind::Oem).unwrap();
        let revoked = ca.revoked().unwrap();
        assert_eq!(revoked.len(), 1);
        assert_eq!(revoked[0].at, NOW);
        assert_eq!(revoked[0].reason, Reason::KeyCompromise);
    }

    #[test]
    fn crl_numbers_strictly_increase_across_reopen() {
        let t = tempfile::tempdir().unwrap();
        let mut ca = oem(t.path(), true);
        assert_eq!(ca.crl_number(), 0);
        ca.revoke(&Serial::from_u64(7).unwrap(), Reason::Unspecified, NOW)
            .unwrap();
        let mut last = 0;
        for i in 0..3 {
            let mut ca = CaDir::open(t.path(), Kind::Oem).unwrap();
            let crl = ca
                .issue_crl(&pass("right"), UnixTime(NOW.0 + i), 30)
                .unwrap();
            assert!(crl.number > last, "CRL {} after {last}", crl.number);
            assert_eq!(crl.revoked, 1);
            assert_eq!(
                CaDir::open(t.path(), Kind::Oem).unwrap().crl_number(),
                crl.number
            );
            last = crl.number;
        }
        assert_eq!(last, 3);
        // A refused issuance (wrong passphrase) uses no number.
        assert!(ca.issue_crl(&pass("wrong"), NOW, 30).is_err());
        let mut ca = CaDir::open(t.path(), Kind::Oem).unwrap();
        assert_eq!(ca.issue_crl(&pass("right"), NOW, 30).unwrap().number, 4);
    }

    #[test]
    fn wrong_passphrase_is_refused_and_keys_are_only_written_encrypted() {
        let t = tempfile::tempdir().unwrap();
        let ca = oem(t.path(), true);
        for e in [
            ca.root_key(&pass("wrong")).err(),
            ca.signing(&pass("wrong")).err(),
        ] {
            assert!(
                matches!(e, Some(Error::KeyFile { .. })),
                "not refused: {e:?}"
            );
        }
        assert!(ca.root_key(&pass("right")).is_ok());
        assert!(ca.signing(&pass("right")).is_ok());
        for key in [ROOT_KEY, DEVICE_CA_KEY] {
            let text = std::fs::read_to_string(t.path().join(key)).unwrap();
            assert!(text.contains("BEGIN ENCRYPTED PRIVATE KEY"), "{key}");
            assert!(!text.contains("BEGIN PRIVATE KEY"), "{key}");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(t.path().join(key))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{key}");
            }
        }
    }

    #[test]
    fn init_refuses_a_directory_with_a_ca_and_open_the_other_kind() {
        let t = tempfile::tempdir().unwrap();
        oem(t.path(), false);
        let spec = InitSpec {
            kind: Kind::Oem,
            name: "Acme",
            oem_id: None,
            curve: Curve::P256,
            years: 5,
            device_ca: false,
        };
        assert!(matches!(
            CaDir::init(t.path(), &spec, &pass("right"), NOW),
            Err(Error::CaExists { .. })
        ));
        assert!(matches!(
            CaDir::open(t.path(), Kind::Vendor),
            Err(Error::WrongKind { .. })
        ));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            CaDir::open(empty.path(), Kind::Oem),
            Err(Error::NoCa { .. })
        ));
    }

    #[test]
    fn a_test_certificate_validates_to_the_root_until_revoked() {
        let t = tempfile::tempdir().unwrap();
        let mut ca = oem(t.path(), true);
        let template = Template::from_toml(trustfab_pki::template::EXAMPLE_TEMPLATE).unwrap();
        let key = SoftKey::generate(Curve::P256).unwrap();
        let public_key = PublicKey::from_point(Curve::P256, key.public_point()).unwrap();
        let serial = Serial::from_u64(42).unwrap();
        let der = ca
            .issue_test(
                &TestIssue {
                    template: &template,
                    product: &ProductId::new("thermo").unwrap(),
                    uid: &DeviceUid::new(&[1, 2, 3]).unwrap(),
                    serial: &serial,
                    public_key: &public_key,
                    now: NOW,
                },
                &pass("right"),
            )
            .unwrap();
        let later = UnixTime(NOW.0 + 60);
        ca.validate(&der, &[], later).unwrap();
        ca.revoke(&serial, Reason::KeyCompromise, later).unwrap();
        let crl = ca.issue_crl(&pass("right"), later, 30).unwrap();
        assert!(ca
            .validate(&der, &[crl.der], UnixTime(later.0 + 1))
            .is_err());
    }
}
