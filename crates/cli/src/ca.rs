//! A certificate authority on disk: the directory layout shared by the vendor CA and the OEM CA
//! (`docs/ca-directory.md`). Certificates are PEM; private keys are encrypted PKCS#8, mode 0600;
//! `ca.toml` holds the settings, the CRL number and the revocations.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use trustfab_pki::{pem, CaRole, CaSpec, Curve, Issuer, Reason, Revoked, Signer, SoftKey};
use trustfab_types::{limits, Clock, OemId, OsRng, Passphrase, Serial, SystemClock, UnixTime};

use crate::files;

/// The `ca.toml` format version this build reads.
const CA_FORMAT: u32 = 1;
/// Largest `ca.toml` accepted (it grows with revocations).
const CA_TOML_BYTES: usize = 8 * 1024 * 1024;

/// Which CA a directory holds.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Kind {
    Vendor,
    Oem,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct RevokedEntry {
    pub(crate) serial: String,
    pub(crate) at: u64,
    pub(crate) reason: Reason,
}

/// `ca.toml`.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct CaState {
    pub(crate) format: u32,
    pub(crate) kind: Kind,
    pub(crate) name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) oem_id: Option<OemId>,
    pub(crate) curve: Curve,
    pub(crate) device_ca: bool,
    pub(crate) crl_number: u64,
    #[serde(default)]
    pub(crate) revoked: Vec<RevokedEntry>,
}

/// A CA directory.
pub(crate) struct CaDir {
    pub(crate) dir: PathBuf,
    pub(crate) state: CaState,
}

pub(crate) const ROOT_CERT: &str = "root.pem";
pub(crate) const ROOT_KEY: &str = "root.key";
pub(crate) const DEVICE_CA_CERT: &str = "device-ca.pem";
pub(crate) const DEVICE_CA_KEY: &str = "device-ca.key";
const STATE: &str = "ca.toml";

pub(crate) fn random_serial() -> Result<Serial> {
    let mut b = [0u8; 16];
    trustfab_types::Rng::fill(&OsRng, &mut b)?;
    b[0] &= 0x7f;
    b[0] |= 0x01; // never zero, 16 octets: 127 bits of randomness
    Ok(Serial::from_be_bytes(&b)?)
}

/// What `init` needs.
pub(crate) struct InitSpec<'a> {
    pub(crate) kind: Kind,
    pub(crate) name: &'a str,
    pub(crate) oem_id: Option<OemId>,
    pub(crate) curve: Curve,
    pub(crate) years: u32,
    pub(crate) device_ca: bool,
}

impl CaDir {
    /// Creates a new CA in `dir` (which must not hold one already).
    pub(crate) fn init(dir: &Path, spec: &InitSpec<'_>, pass: &Passphrase) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        if dir.join(STATE).exists() {
            bail!("{} holds a CA already", dir.display());
        }
        let now = SystemClock.now();
        let days = spec
            .years
            .checked_mul(365)
            .filter(|d| *d > 0)
            .context("--years must be between 1 and 100")?;
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
            let public = trustfab_pki::PublicKey::from_point(spec.curve, ca_key.public_point())?;
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
    pub(crate) fn open(dir: &Path, kind: Kind) -> Result<Self> {
        let path = dir.join(STATE);
        let text = files::read_text(&path, CA_TOML_BYTES)
            .with_context(|| format!("{} holds no CA (run `init` first)", dir.display()))?;
        let state: CaState =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if state.format != CA_FORMAT {
            bail!(
                "{}: unknown format {}; this build reads format {CA_FORMAT}",
                path.display(),
                state.format
            );
        }
        if state.kind != kind {
            bail!(
                "{} holds a {:?} CA, not a {kind:?} CA",
                dir.display(),
                state.kind
            );
        }
        Ok(Self {
            dir: dir.to_owned(),
            state,
        })
    }

    pub(crate) fn save(&self) -> Result<()> {
        let text = toml::to_string(&self.state)?;
        files::write_atomic(&self.dir.join(STATE), text.as_bytes(), false)
    }

    fn cert(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.dir.join(name);
        let bytes = files::read_limited(&path, limits::CERTIFICATE_BYTES)
            .with_context(|| format!("reading {}", path.display()))?;
        pem::cert_from_pem_or_der(&bytes).with_context(|| format!("reading {}", path.display()))
    }

    /// The root certificate, DER.
    pub(crate) fn root_der(&self) -> Result<Vec<u8>> {
        self.cert(ROOT_CERT)
    }

    /// Intermediates between a device certificate and the root (the device CA, if any).
    pub(crate) fn intermediates(&self) -> Result<Vec<Vec<u8>>> {
        if self.state.device_ca {
            Ok(vec![self.cert(DEVICE_CA_CERT)?])
        } else {
            Ok(Vec::new())
        }
    }

    /// The certificate and key of the CA that signs end-entity certificates (and their CRL):
    /// the device CA when there is one, else the root.
    pub(crate) fn signing(&self, pass: &Passphrase) -> Result<(Vec<u8>, SoftKey)> {
        let (cert, key) = if self.state.device_ca {
            (DEVICE_CA_CERT, DEVICE_CA_KEY)
        } else {
            (ROOT_CERT, ROOT_KEY)
        };
        let key_path = self.dir.join(key);
        let pem_text = files::read_text(&key_path, limits::KEY_FILE_BYTES)?;
        let key = SoftKey::from_encrypted_pem(&pem_text, pass)
            .with_context(|| format!("opening {}", key_path.display()))?;
        Ok((self.cert(cert)?, key))
    }

    /// The root key, which signs provisioning packages.
    pub(crate) fn root_key(&self, pass: &Passphrase) -> Result<SoftKey> {
        let key_path = self.dir.join(ROOT_KEY);
        let pem_text = files::read_text(&key_path, limits::KEY_FILE_BYTES)?;
        SoftKey::from_encrypted_pem(&pem_text, pass)
            .with_context(|| format!("opening {}", key_path.display()))
    }

    /// Records a revocation (idempotent per serial).
    pub(crate) fn revoke(&mut self, serial: &Serial, reason: Reason, at: UnixTime) -> Result<bool> {
        let hex = serial.to_hex();
        if self.state.revoked.iter().any(|r| r.serial == hex) {
            return Ok(false);
        }
        self.state.revoked.push(RevokedEntry {
            serial: hex,
            at: at.0,
            reason,
        });
        self.save()?;
        Ok(true)
    }

    /// The revocations, parsed.
    pub(crate) fn revoked(&self) -> Result<Vec<Revoked>> {
        self.state
            .revoked
            .iter()
            .map(|r| {
                Ok(Revoked {
                    serial: Serial::from_hex(&r.serial)
                        .with_context(|| format!("ca.toml: bad serial {:?}", r.serial))?,
                    at: UnixTime(r.at),
                    reason: r.reason,
                })
            })
            .collect()
    }

    /// The key a signing call would use matches this CA's issuing certificate.
    pub(crate) fn issuer<'k>(&self, cert: &[u8], key: &'k SoftKey) -> Result<Issuer<'k>> {
        Issuer::new(cert, key).context("the CA key does not match its certificate")
    }
}
