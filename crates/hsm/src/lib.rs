#![doc = include_str!("../README.md")]

mod client;
mod error;
mod jobs;
mod records;
pub mod report;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use aws_lc_rs::digest::{digest, SHA256};
use trustfab_ledger::{Append, CounterOp, Kind, Store};
use trustfab_pki::template::SerialScheme;
use trustfab_pki::{
    DeviceRequest, HsmCertificates, HsmRequest, Issuer, PublicKey, RenderInputs, Template,
};
use trustfab_token::{
    Curve, KeyHandle, KeyLabel, KeySpec, KeyUsage, Token, TokenSigner, WrappedKey,
};
use trustfab_types::{Clock, DeviceUid, OemId, ProductId, Serial};

pub use client::HsmClient;
pub use error::{ImportError, InitError, IssueError, JobOpError};
pub use jobs::{DeviceOutcome, JobStatus, Reservation};
pub use records::IssuanceRecord;

/// Token label of the HSM identity key (signs requests, reports, checkpoints).
pub const IDENTITY_LABEL: &str = "hsm-identity";
/// Token label of the key-transport key (packages are wrapped to it).
pub const KT_LABEL: &str = "hsm-key-transport";
/// Most devices in one issuance call.
/// Two claims per device must fit the ledger's operations per append.
pub const BATCH_MAX: usize = 4000;

const CLAIM_PACKAGE: &str = "package";
const CLAIM_PRODUCT: &str = "product";
const CLAIM_OEM: &str = "oem";
pub(crate) const CLAIM_UID: &str = "uid";
const CLAIM_SERIAL: &str = "serial";

fn pki_curve(c: Curve) -> Curve {
    c
}

fn to_pki(pk: &PublicKey) -> Result<PublicKey, trustfab_pki::Error> {
    Ok(PublicKey::from_point(pki_curve(pk.curve()), pk.point())?)
}

/// The token and ledger key of a product: `oem/product`.
pub fn product_key(oem: &OemId, product: &ProductId) -> String {
    format!("{oem}/{product}")
}

/// The token label of a product's signing key: `product:` and 20 hex digits of SHA-256 of the
/// product key (labels are at most 64 characters; ids may be 64 each).
///
/// # Errors
/// Never for a product key; the label type checks its own rules.
pub fn product_key_label(product: &str) -> Result<KeyLabel, trustfab_token::Error> {
    hashed_label("product", product)
}

/// The token label of a product's firmware family decryption key: `family:` and 20 hex digits of
/// SHA-256 of the product key.
///
/// # Errors
/// Never for a product key; the label type checks its own rules.
pub fn family_key_label(product: &str) -> Result<KeyLabel, trustfab_token::Error> {
    hashed_label("family", product)
}

fn hashed_label(prefix: &str, product: &str) -> Result<KeyLabel, trustfab_token::Error> {
    let h = digest(&SHA256, product.as_bytes());
    let hex: String = h
        .as_ref()
        .iter()
        .take(10)
        .map(|b| format!("{b:02x}"))
        .collect();
    KeyLabel::new(&format!("{prefix}:{hex}"))
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, b).as_ref());
    out
}

/// What a successful import did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Imported {
    /// The product key.
    pub product: String,
    /// Whether the product was created (else topped up).
    pub created: bool,
    /// Count added.
    pub count: u64,
    /// Ledger sequence number of the `PackageImported` record.
    pub seq: u64,
}

/// The firmware a product's devices boot, as its package set it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProductFirmware {
    /// The device family images are mastered for.
    pub family: String,
    /// SHA-256 of the OEM firmware signing key's SubjectPublicKeyInfo: the root-of-trust fuse.
    pub boot_key_hash: [u8; 32],
    /// The family decryption key's public point (uncompressed P-256), when images are
    /// encrypted; the private key is in the token and leaves it only wrapped for a device.
    pub family_key: Option<Vec<u8>>,
}

/// One device in an issuance request: its UID and the public key it generated inside.
#[derive(Clone, Debug)]
pub struct DeviceKey {
    /// The device's unique id.
    pub uid: DeviceUid,
    /// The device public key.
    pub public_key: PublicKey,
}

/// One issued certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// The device.
    pub uid: DeviceUid,
    /// Its serial.
    pub serial: Serial,
    /// The certificate, DER.
    pub cert: Vec<u8>,
    /// Whether this is the certificate recorded for an earlier issuance to the same UID.
    pub reissued: bool,
}

/// A product's standing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProductStatus {
    /// `oem/product`.
    pub product: String,
    /// Created plus topped up.
    pub ordered: u64,
    /// Spent.
    pub issued: u64,
    /// Left.
    pub remaining: u64,
}

struct Product {
    key: String,
    def: records::ProductDef,
    oem: OemId,
    product: ProductId,
    template: Template,
    signing_key: KeyHandle,
    /// The firmware family key in the token, when the product has one.
    family_key: Option<KeyHandle>,
    issuer_cert: Vec<u8>,
    /// SHA-256 of `issuer_cert`, the prefix of every serial claim.
    issuer_fp: [u8; 32],
    serials: SerialScheme,
}

/// The HSM application over a token and a ledger.
pub struct Hsm {
    token: Arc<dyn Token>,
    ledger: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    hsm_id: String,
    identity: KeyHandle,
    /// The identity key's uncompressed point: what job packages are checked against.
    identity_point: Vec<u8>,
    kt: KeyHandle,
    fingerprint: Option<[u8; 32]>,
    certs: Option<HsmCertificates>,
    products: RwLock<HashMap<String, Arc<Product>>>,
    /// Serializes sequential serial allocation within this process; claims make it safe across
    /// processes.
    serial_alloc: Mutex<()>,
}

impl std::fmt::Debug for Hsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hsm")
            .field("hsm_id", &self.hsm_id)
            .finish_non_exhaustive()
    }
}

impl Hsm {
    /// Makes the identity and key-transport keys inside `token` and returns the request for the
    /// vendor to certify.
    ///
    /// # Errors
    /// [`InitError::AlreadyInitialised`] when the token has an identity, or a token error.
    pub fn init(token: &dyn Token, hsm_id: &str) -> Result<HsmRequest, InitError> {
        let id_label = KeyLabel::new(IDENTITY_LABEL)?;
        if token.find(&id_label)?.is_some() {
            return Err(InitError::AlreadyInitialised);
        }
        let curve = Curve::P256;
        let identity = token.generate(&KeySpec::new(id_label, curve, KeyUsage::Sign))?;
        let kt_label = KeyLabel::new(KT_LABEL)?;
        let kt = token.generate(&KeySpec::new(kt_label, curve, KeyUsage::KeyTransport))?;
        let signer = TokenSigner::new(token, identity)?;
        let kt_pk = to_pki(&token.public_key(kt)?)?;
        Ok(HsmRequest::new(hsm_id, &signer, &kt_pk)?)
    }

    /// Opens an initialised HSM. `certs`, when given, must certify this token's keys.
    ///
    /// # Errors
    /// [`InitError::NotInitialised`], [`InitError::WrongCertificates`], or a token error.
    pub fn open(
        token: Arc<dyn Token>,
        ledger: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        hsm_id: &str,
        certs: Option<&HsmCertificates>,
    ) -> Result<Self, InitError> {
        let identity = token
            .find(&KeyLabel::new(IDENTITY_LABEL)?)?
            .ok_or(InitError::NotInitialised)?;
        let kt = token
            .find(&KeyLabel::new(KT_LABEL)?)?
            .ok_or(InitError::NotInitialised)?;
        let fingerprint = match certs {
            Some(c) => {
                let key_of = |der: &[u8]| -> Result<PublicKey, InitError> {
                    let (_, x) = x509_parser::parse_x509_certificate(der)
                        .map_err(|e| InitError::WrongCertificates(e.to_string()))?;
                    Ok(PublicKey::from_spki_der(x.public_key().raw)
                        .map_err(trustfab_pki::Error::from)?)
                };
                if key_of(&c.identity)? != to_pki(&token.public_key(identity)?)? {
                    return Err(InitError::WrongCertificates("identity key differs".into()));
                }
                if key_of(&c.key_transport)? != to_pki(&token.public_key(kt)?)? {
                    return Err(InitError::WrongCertificates(
                        "key-transport key differs".into(),
                    ));
                }
                Some(c.fingerprint())
            }
            None => None,
        };
        let identity_point = token.public_key(identity)?.point().to_vec();
        Ok(Self {
            token,
            ledger,
            clock,
            hsm_id: hsm_id.to_owned(),
            identity,
            identity_point,
            kt,
            fingerprint,
            certs: certs.cloned(),
            products: RwLock::new(HashMap::new()),
            serial_alloc: Mutex::new(()),
        })
    }

    /// This HSM's id.
    pub fn hsm_id(&self) -> &str {
        &self.hsm_id
    }

    /// SHA-256 of the installed identity certificate: what packages name.
    pub fn fingerprint(&self) -> Option<[u8; 32]> {
        self.fingerprint
    }

    /// The certification request again (the same keys).
    ///
    /// # Errors
    /// A token or PKI error.
    pub fn request(&self) -> Result<HsmRequest, InitError> {
        let signer = TokenSigner::new(&*self.token, self.identity)?;
        let kt_pk = to_pki(&self.token.public_key(self.kt)?)?;
        Ok(HsmRequest::new(&self.hsm_id, &signer, &kt_pk)?)
    }

    /// A signer over the identity key (reports, ledger checkpoints).
    ///
    /// # Errors
    /// A token error.
    pub fn identity_signer(&self) -> Result<TokenSigner<'_>, trustfab_token::Error> {
        TokenSigner::new(&*self.token, self.identity)
    }

    /// The uncompressed point of the identity key: what job packages are checked against.
    pub fn identity_point(&self) -> &[u8] {
        &self.identity_point
    }

    /// Imports a provisioning package (see the crate doc for the checks, in order).
    ///
    /// # Errors
    /// An [`ImportError`] naming the first check that failed; nothing is imported then.
    pub fn import(&self, bytes: &[u8]) -> Result<Imported, ImportError> {
        let verified = trustfab_package::open(bytes)?;
        let c = verified.contents();
        let fingerprint = self.fingerprint.ok_or(ImportError::NoIdentity)?;
        if c.target_hsm != fingerprint {
            return Err(ImportError::WrongHsm {
                expected: hex(&c.target_hsm),
                actual: hex(&fingerprint),
            });
        }
        let now = self.clock.now();
        if now < c.not_before {
            return Err(ImportError::NotYetValid {
                not_before: c.not_before,
            });
        }
        if now > c.not_after {
            return Err(ImportError::Expired {
                expired_at: c.not_after,
            });
        }
        if let Some(seq) = self
            .ledger
            .claimed(CLAIM_PACKAGE, &c.package_id)
            .map_err(ImportError::Ledger)?
        {
            return Err(ImportError::Replayed {
                package: hex(&c.package_id),
                seq,
            });
        }
        let template = Template::from_toml(&c.template)
            .map_err(|e| ImportError::Contents(format!("template: {e}")))?;
        let issuer_cert = c.device_ca_cert.as_ref().unwrap_or(&c.root_cert);
        if let Some(ca) = &c.device_ca_cert {
            check_issued_by(ca, &c.root_cert).map_err(ImportError::Contents)?;
        }
        let issuer_key = cert_key(issuer_cert).map_err(ImportError::Contents)?;
        let wrapped = WrappedKey::from_bytes(&c.wrapped_signing_key)
            .map_err(|e| ImportError::Contents(format!("wrapped key: {e}")))?;
        if to_pki(wrapped.public_key()).map_err(|e| ImportError::Contents(e.to_string()))?
            != issuer_key
        {
            return Err(ImportError::Contents(
                "the wrapped key is not the key of the issuing certificate".into(),
            ));
        }
        if wrapped.info() != wrap_info(&c.package_id, &fingerprint) {
            return Err(ImportError::Contents(
                "the wrapped key is bound to another package".into(),
            ));
        }
        let template_scheme = template.serial();
        drop(template);
        let firmware = match &c.firmware {
            Some(fw) => Some(check_firmware(fw, &c.package_id, &fingerprint)?),
            None => None,
        };

        let oem = c.oem_id.as_str();
        let key = product_key(&c.oem_id, &c.product_id);
        let root_fp = sha256(&c.root_cert);
        if let Some(seq) = self
            .ledger
            .claimed(CLAIM_OEM, oem.as_bytes())
            .map_err(ImportError::Ledger)?
        {
            let bound = self.product_def_near(seq).map_err(ImportError::Ledger)?;
            if bound.map(|d| sha256(&d.root_cert)) != Some(root_fp) {
                return Err(ImportError::OemRootMismatch {
                    oem: oem.to_owned(),
                    seq,
                });
            }
        }
        let existing = match self
            .ledger
            .claimed(CLAIM_PRODUCT, key.as_bytes())
            .map_err(ImportError::Ledger)?
        {
            Some(seq) => self.product_def_near(seq).map_err(ImportError::Ledger)?,
            None => None,
        };
        let label = product_key_label(&key).map_err(ImportError::Token)?;
        let spki = issuer_key.to_spki_der();
        let imported_body =
            records::package_imported(&c.package_id, &fingerprint, &key, c.count, now);

        let append = if let Some(def) = existing {
            for (same, what) in [
                (def.template == c.template, "template"),
                (def.root_cert == c.root_cert, "root certificate"),
                (
                    def.device_ca_cert == c.device_ca_cert,
                    "device CA certificate",
                ),
                (def.signing_key_spki == spki, "signing key"),
                (
                    def.serial_range == c.serial_range.map(|r| (r.first, r.last)),
                    "serial range",
                ),
                (
                    def.firmware.as_ref().map(|f| {
                        (
                            &f.family,
                            f.boot_key_hash,
                            f.family_key.as_ref().map(|k| k.1.as_slice()),
                        )
                    }) == firmware.as_ref().map(|(f, w)| {
                        (
                            &f.family,
                            f.boot_key_hash,
                            w.as_ref().map(|w| w.public_key().point()),
                        )
                    }),
                    "firmware (family, boot key or family key)",
                ),
            ] {
                if !same {
                    return Err(ImportError::ProductConflict { product: key, what });
                }
            }
            Append::record(Kind::PackageImported, imported_body.clone())
                .with_record(Kind::ProductToppedUp, imported_body)
                .with_counter(CounterOp::TopUp {
                    product: key.clone(),
                    n: c.count,
                })
                .with_claim(CLAIM_PACKAGE, c.package_id.to_vec())
        } else {
            // The key goes into the token first: a crash before the ledger append leaves a key
            // that the same package's next import recognises by its public key.
            match self.token.find(&label).map_err(ImportError::Token)? {
                Some(h) => {
                    let have = to_pki(&self.token.public_key(h).map_err(ImportError::Token)?)
                        .map_err(|e| ImportError::Contents(e.to_string()))?;
                    if have != issuer_key {
                        return Err(ImportError::ProductConflict {
                            product: key,
                            what:
                                "signing key (a different key is stored under this product's label)",
                        });
                    }
                }
                None => {
                    let spec = KeySpec::new(label.clone(), wrapped.key_curve(), KeyUsage::Sign);
                    self.token
                        .unwrap_key(self.kt, &wrapped, &spec)
                        .map_err(|e| match e {
                            trustfab_token::Error::Unwrap => ImportError::Unwrap,
                            other => ImportError::Token(other),
                        })?;
                }
            }
            let firmware = match firmware {
                Some((fw, wrapped)) => Some(records::FirmwareDef {
                    family: fw.family.clone(),
                    boot_key_hash: fw.boot_key_hash,
                    family_key: match wrapped {
                        Some(w) => Some(self.import_family_key(&key, &w)?),
                        None => None,
                    },
                }),
                None => None,
            };
            let def = records::ProductDef {
                oem: oem.to_owned(),
                product: c.product_id.to_string(),
                package_id: c.package_id,
                template: c.template.clone(),
                root_cert: c.root_cert.clone(),
                device_ca_cert: c.device_ca_cert.clone(),
                key_label: label.as_str().to_owned(),
                signing_key_spki: spki,
                serial_range: c.serial_range.map(|r| (r.first, r.last)),
                firmware,
            };
            let mut a = Append::record(Kind::PackageImported, imported_body)
                .with_record(Kind::ProductCreated, def.encode())
                .with_counter(CounterOp::Create {
                    product: key.clone(),
                    count: c.count,
                })
                .with_claim(CLAIM_PACKAGE, c.package_id.to_vec())
                .with_claim(CLAIM_PRODUCT, key.as_bytes().to_vec());
            let scheme = match c.serial_range {
                Some(r) => SerialScheme::Sequential {
                    first: r.first,
                    last: r.last,
                },
                None => template_scheme,
            };
            if let SerialScheme::Sequential { first, last } = scheme {
                // Sequential serials are drawn from their own insert-only counter, spent with
                // every issuance and never credited back: serial k is always `first + k`.
                a = a.with_counter(CounterOp::Create {
                    product: serial_counter(&key),
                    count: last - first + 1,
                });
            }
            if self
                .ledger
                .claimed(CLAIM_OEM, oem.as_bytes())
                .map_err(ImportError::Ledger)?
                .is_none()
            {
                a = a.with_claim(CLAIM_OEM, oem.as_bytes().to_vec());
            }
            a
        };
        let created = append_creates(&append);
        let recs = self.ledger.append(append).map_err(|e| match e {
            trustfab_ledger::Error::Duplicate {
                namespace,
                first_seq,
                ..
            } if namespace == CLAIM_PACKAGE => ImportError::Replayed {
                package: hex(&c.package_id),
                seq: first_seq,
            },
            other => ImportError::Ledger(other),
        })?;
        Ok(Imported {
            product: key,
            created,
            count: c.count,
            seq: recs.first().map_or(0, |r| r.seq),
        })
    }

    /// The product definition recorded at or just after `seq` (the append that claimed it).
    fn product_def_near(
        &self,
        seq: u64,
    ) -> Result<Option<records::ProductDef>, trustfab_ledger::Error> {
        for raw in self.ledger.read_raw(seq, 4)? {
            let r = raw.into_record()?;
            if r.kind == Kind::ProductCreated {
                return Ok(records::ProductDef::decode(&r.body));
            }
        }
        Ok(None)
    }

    /// Unwraps a product's family key into the token as a distribution key (sensitive, extractable
    /// only wrapped), or recognises the one an interrupted import left there. Returns its label
    /// and public point.
    fn import_family_key(
        &self,
        product: &str,
        wrapped: &WrappedKey,
    ) -> Result<(String, Vec<u8>), ImportError> {
        let label = family_key_label(product).map_err(ImportError::Token)?;
        match self.token.find(&label).map_err(ImportError::Token)? {
            Some(h) => {
                let have = self.token.public_key(h).map_err(ImportError::Token)?;
                if &have != wrapped.public_key() {
                    return Err(ImportError::ProductConflict {
                        product: product.to_owned(),
                        what: "family key (a different key is stored under this product's label)",
                    });
                }
            }
            None => {
                let mut spec = KeySpec::new(label.clone(), Curve::P256, KeyUsage::Distribute);
                spec.extractable = true;
                self.token
                    .unwrap_key(self.kt, wrapped, &spec)
                    .map_err(|e| match e {
                        trustfab_token::Error::Unwrap => ImportError::FamilyKeyUnwrap,
                        other => ImportError::Token(other),
                    })?;
            }
        }
        Ok((
            label.as_str().to_owned(),
            wrapped.public_key().point().to_vec(),
        ))
    }

    /// The firmware a product's devices boot: family, boot key hash, family key; `None` when
    /// its package had no firmware section.
    ///
    /// # Errors
    /// [`IssueError::UnknownProduct`] or a ledger error.
    pub fn firmware(&self, product: &str) -> Result<Option<ProductFirmware>, IssueError> {
        let p = self.product(product)?;
        Ok(p.def.firmware.as_ref().map(|f| ProductFirmware {
            family: f.family.clone(),
            boot_key_hash: f.boot_key_hash,
            family_key: f.family_key.as_ref().map(|(_, point)| point.clone()),
        }))
    }

    /// The product's family decryption key, wrapped inside the token for the device `uid`: to
    /// the public key this HSM certified for that device (its issuance record), and to no other
    /// key. The issuance record is the ledger's account of the delivery: every certified device
    /// of a product with a family key may receive it, and only those. Returns the
    /// `trustfab-token` wrapped-key encoding, which the device unwraps inside with its key.
    ///
    /// # Errors
    /// [`IssueError::NoFamilyKey`] when the product has none, [`IssueError::NotIssued`] when no
    /// certificate was issued to `uid` for the product, a token or ledger error.
    pub fn family_key_for(&self, product: &str, uid: &DeviceUid) -> Result<Vec<u8>, IssueError> {
        let p = self.product(product)?;
        let Some(key) = p.family_key else {
            return Err(IssueError::NoFamilyKey {
                product: p.key.clone(),
            });
        };
        let seq = self
            .ledger
            .claimed(CLAIM_UID, &uid_claim(&p.key, uid))
            .map_err(IssueError::Ledger)?
            .ok_or_else(|| IssueError::NotIssued {
                uid: uid.to_hex(),
                product: p.key.clone(),
            })?;
        let rec = self.issuance_near(seq, &p.key, uid)?;
        let device_key =
            PublicKey::from_spki_der(&rec.spki).map_err(|e| IssueError::Sign(e.into()))?;
        let recipient = PublicKey::from_point(Curve::P256, device_key.point()).map_err(|_| {
            IssueError::BadRequest {
                uid: uid.to_hex(),
                reason: "the certified device key is not a P-256 key".into(),
            }
        })?;
        let wrapped = self
            .token
            .wrap_key(key, &recipient, &family_delivery_info(&p.key, uid))?;
        Ok(wrapped.to_bytes())
    }

    fn product(&self, key: &str) -> Result<Arc<Product>, IssueError> {
        if let Some(p) = self
            .products
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            return Ok(Arc::clone(p));
        }
        let unknown = || IssueError::UnknownProduct {
            product: key.to_owned(),
        };
        let seq = self
            .ledger
            .claimed(CLAIM_PRODUCT, key.as_bytes())
            .map_err(IssueError::Ledger)?
            .ok_or_else(unknown)?;
        let def = self
            .product_def_near(seq)
            .map_err(IssueError::Ledger)?
            .ok_or_else(unknown)?;
        let template = Template::from_toml(&def.template).map_err(|e| IssueError::Render {
            uid: "-".into(),
            source: e.into(),
        })?;
        let signing_key = self
            .token
            .find(&KeyLabel::new(&def.key_label)?)?
            .ok_or_else(unknown)?;
        let family_key = match def.firmware.as_ref().and_then(|f| f.family_key.as_ref()) {
            Some((label, _)) => self.token.find(&KeyLabel::new(label)?)?,
            None => None,
        };
        let serials = match def.serial_range {
            Some((first, last)) => SerialScheme::Sequential { first, last },
            None => template.serial(),
        };
        let issuer_cert = def
            .device_ca_cert
            .clone()
            .unwrap_or_else(|| def.root_cert.clone());
        let p = Arc::new(Product {
            key: key.to_owned(),
            oem: OemId::new(&def.oem).map_err(|_| unknown())?,
            product: ProductId::new(&def.product).map_err(|_| unknown())?,
            issuer_fp: sha256(&issuer_cert),
            issuer_cert,
            def,
            template,
            signing_key,
            family_key,
            serials,
        });
        self.products
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.to_owned(), Arc::clone(&p));
        Ok(p)
    }

    /// The OEM root certificate (DER) and the chain (device CA) of a product.
    ///
    /// # Errors
    /// [`IssueError::UnknownProduct`] or a ledger error.
    pub fn chain(&self, product: &str) -> Result<(Vec<u8>, Option<Vec<u8>>), IssueError> {
        let p = self.product(product)?;
        Ok((p.def.root_cert.clone(), p.def.device_ca_cert.clone()))
    }

    /// Issues certificates for a batch of devices within a job's reservation: the units are
    /// spent from the job's reservation, never from the product directly, so the job never has
    /// more certificates than its quantity, whoever calls and however often.
    ///
    /// # Errors
    /// [`IssueError::ForeignReservation`], [`IssueError::LegacyJob`],
    /// [`IssueError::ReservationExhausted`], [`IssueError::JobClosed`], or any error of
    /// [`Self::issue_direct`].
    pub fn issue(&self, r: &Reservation, devices: &[DeviceKey]) -> Result<Vec<Issued>, IssueError> {
        self.own(r)?;
        if r.is_legacy() {
            return Err(IssueError::LegacyJob {
                job: r.job_id().to_owned(),
            });
        }
        self.issue_within(r.product(), Some(r.job_id()), devices)
    }

    /// Issues certificates for a batch of devices of one product outside any job, spending
    /// from the product's count directly: the HSM operator's own issuance (`trustfab hsm
    /// issue`). Stations hold only an [`HsmClient`], which has no such call.
    ///
    /// The count is spent and every issuance recorded in ONE ledger append before any
    /// signature is made; the batch succeeds or fails whole. A UID issued before (by any
    /// station) is not spent again: its recorded certificate is rebuilt and returned with
    /// `reissued = true`.
    ///
    /// # Errors
    /// An [`IssueError`]; unless it is [`IssueError::Sign`], nothing was spent or recorded.
    pub fn issue_direct(
        &self,
        product: &str,
        devices: &[DeviceKey],
    ) -> Result<Vec<Issued>, IssueError> {
        self.issue_within(product, None, devices)
    }

    fn issue_within(
        &self,
        product: &str,
        job: Option<&str>,
        devices: &[DeviceKey],
    ) -> Result<Vec<Issued>, IssueError> {
        if devices.len() > BATCH_MAX {
            return Err(IssueError::BadRequest {
                uid: "-".into(),
                reason: format!(
                    "batch of {} is over the limit of {BATCH_MAX}",
                    devices.len()
                ),
            });
        }
        let p = self.product(product)?;
        let mut seen = HashSet::new();
        for d in devices {
            if !seen.insert(&d.uid) {
                return Err(IssueError::DuplicateInBatch {
                    uid: d.uid.to_hex(),
                });
            }
        }
        let signer = TokenSigner::new(&*self.token, p.signing_key)?;
        let issuer = Issuer::new(&p.issuer_cert, &signer).map_err(IssueError::Sign)?;
        let all: Vec<usize> = (0..devices.len()).collect();
        let mut out: Vec<Option<Issued>> = vec![None; devices.len()];
        // Fast path: every device is new. The UID claims in the append enforce that; only when
        // one is refused are the devices looked up one by one (a device put back in a socket).
        match self.issue_fresh(&p, job, &issuer, devices, &all, &mut out) {
            Err(IssueError::Ledger(trustfab_ledger::Error::Duplicate { namespace, .. }))
                if namespace == CLAIM_UID => {}
            other => {
                other?;
                return Ok(out.into_iter().flatten().collect());
            }
        }
        let mut fresh = Vec::with_capacity(devices.len());
        for (i, d) in devices.iter().enumerate() {
            let claim = uid_claim(&p.key, &d.uid);
            match self
                .ledger
                .claimed(CLAIM_UID, &claim)
                .map_err(IssueError::Ledger)?
            {
                Some(seq) => {
                    let rec = self.issuance_near(seq, &p.key, &d.uid)?;
                    if rec.spki != d.public_key.to_spki_der() {
                        return Err(IssueError::BadRequest {
                            uid: d.uid.to_hex(),
                            reason: "already issued for another public key".into(),
                        });
                    }
                    if let Some(slot) = out.get_mut(i) {
                        *slot = Some(sign_record(&p, &issuer, &rec, &d.public_key, true)?);
                    }
                }
                None => fresh.push(i),
            }
        }
        if !fresh.is_empty() {
            self.issue_fresh(&p, job, &issuer, devices, &fresh, &mut out)?;
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// Spends (from the job's reservation, or the product's count without a job), records and
    /// claims the `which` devices in one append, then signs them into `out`.
    fn issue_fresh(
        &self,
        p: &Product,
        job: Option<&str>,
        issuer: &Issuer<'_>,
        devices: &[DeviceKey],
        which: &[usize],
        out: &mut [Option<Issued>],
    ) -> Result<(), IssueError> {
        let now = self.clock.now();
        let sequential = matches!(p.serials, SerialScheme::Sequential { .. });
        let guard = sequential.then(|| {
            self.serial_alloc
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        });
        let serials = self.allocate_serials(p, which.len())?;
        let mut recs = Vec::with_capacity(which.len());
        let n = u64::try_from(which.len()).unwrap_or(u64::MAX);
        let spend_from = job.map_or_else(|| p.key.clone(), jobs::job_counter);
        let mut append = Append::default().with_counter(CounterOp::Spend {
            product: spend_from.clone(),
            n,
        });
        if sequential {
            append = append.with_counter(CounterOp::Spend {
                product: serial_counter(&p.key),
                n,
            });
        }
        for (&i, serial) in which.iter().zip(serials) {
            let Some(d) = devices.get(i) else { continue };
            let rec = IssuanceRecord {
                product: p.key.clone(),
                uid: d.uid.clone(),
                serial,
                spki: d.public_key.to_spki_der(),
                not_before: now,
                job: job.map(str::to_owned),
            };
            // Render now, so a template that cannot hold this device fails before any count
            // is spent.
            p.template
                .render(&RenderInputs {
                    oem: &p.oem,
                    product: &p.product,
                    uid: &rec.uid,
                    serial: &rec.serial,
                })
                .map_err(|source| IssueError::Render {
                    uid: rec.uid.to_hex(),
                    source,
                })?;
            append = append
                .with_record(Kind::CertificateIssued, rec.encode())
                .with_claim(CLAIM_UID, uid_claim(&p.key, &rec.uid));
            if sequential {
                // Sequential serials are claimed: two processes must never assign the same one.
                // Random serials carry at least 64 bits from the token's generator; their
                // uniqueness is checked where it matters, by the OEM over the whole report.
                append = append.with_claim(CLAIM_SERIAL, serial_claim(&p.issuer_fp, &rec.serial));
            }
            recs.push((i, rec));
        }
        self.ledger.append(append).map_err(|e| match e {
            trustfab_ledger::Error::Exhausted { product, .. }
                if product == serial_counter(&p.key) =>
            {
                IssueError::SerialsExhausted {
                    product: p.key.clone(),
                }
            }
            trustfab_ledger::Error::Exhausted {
                product,
                remaining,
                asked,
            } if product == spend_from && job.is_some() => {
                let job = job.unwrap_or_default().to_owned();
                match self.ledger.claimed(jobs::CLAIM_JOB_CLOSED, job.as_bytes()) {
                    Ok(Some(seq)) => IssueError::JobClosed { job, seq },
                    Ok(None) => IssueError::ReservationExhausted {
                        job,
                        remaining,
                        asked,
                    },
                    Err(e) => IssueError::Ledger(e),
                }
            }
            trustfab_ledger::Error::Exhausted {
                product,
                remaining,
                asked,
            } => IssueError::CountExhausted {
                product,
                remaining,
                asked,
            },
            other => IssueError::Ledger(other),
        })?;
        drop(guard);
        for (i, rec) in recs {
            if let (Some(slot), Some(d)) = (out.get_mut(i), devices.get(i)) {
                *slot = Some(sign_record(p, issuer, &rec, &d.public_key, false)?);
            }
        }
        Ok(())
    }

    fn allocate_serials(&self, p: &Product, n: usize) -> Result<Vec<Serial>, IssueError> {
        match p.serials {
            SerialScheme::Random { .. } => {
                let rng = TokenRng(&*self.token);
                (0..n)
                    .map(|_| {
                        p.serials
                            .random_serial(&rng)
                            .map_err(|source| IssueError::Render {
                                uid: "-".into(),
                                source,
                            })
                    })
                    .collect()
            }
            SerialScheme::Sequential { .. } => {
                // Serial k is `first + k`, k counting the product's serial counter, which every
                // issuance spends and nothing credits back. The spend is in the same append;
                // the serial claims refuse a second process that read the same k.
                let used = self
                    .ledger
                    .counter(&serial_counter(&p.key))
                    .map_err(IssueError::Ledger)?
                    .map_or(0, |c| c.issued);
                (0..n)
                    .map(|k| {
                        p.serials
                            .sequential_serial(used + u64::try_from(k).unwrap_or(u64::MAX))
                            .map_err(|_| IssueError::SerialsExhausted {
                                product: p.key.clone(),
                            })
                    })
                    .collect()
            }
        }
    }

    fn issuance_near(
        &self,
        seq: u64,
        product: &str,
        uid: &DeviceUid,
    ) -> Result<IssuanceRecord, IssueError> {
        // The claim names the first record of the issuing append; the device's record is one of
        // the next BATCH_MAX + 1. Read them in chunks: batches are small (64 by default), and a
        // station asks this for every device of a firmware job.
        const CHUNK: usize = 128;
        let mut from = seq;
        let mut left = BATCH_MAX + 1;
        while left > 0 {
            let chunk = self
                .ledger
                .read_raw(from, CHUNK.min(left))
                .map_err(IssueError::Ledger)?;
            let Some(last) = chunk.last().map(|r| r.seq) else {
                break;
            };
            left = left.saturating_sub(chunk.len());
            from = last + 1;
            for raw in chunk {
                let r = raw.into_record().map_err(IssueError::Ledger)?;
                if r.kind != Kind::CertificateIssued {
                    continue;
                }
                if let Some(rec) = IssuanceRecord::decode(&r.body) {
                    if rec.product == product && &rec.uid == uid {
                        return Ok(rec);
                    }
                }
            }
        }
        Err(IssueError::MissingRecord {
            uid: uid.to_hex(),
            seq,
        })
    }

    /// The certificate recorded for a device, rebuilt from its issuance record (same TBS).
    ///
    /// # Errors
    /// [`IssueError::UnknownProduct`], or a ledger error; `Ok(None)` if the UID was never issued.
    pub fn certificate_for(
        &self,
        product: &str,
        uid: &DeviceUid,
    ) -> Result<Option<Issued>, IssueError> {
        let p = self.product(product)?;
        match self
            .ledger
            .claimed(CLAIM_UID, &uid_claim(&p.key, uid))
            .map_err(IssueError::Ledger)?
        {
            Some(seq) => {
                let rec = self.issuance_near(seq, &p.key, uid)?;
                let signer = TokenSigner::new(&*self.token, p.signing_key)?;
                let issuer = Issuer::new(&p.issuer_cert, &signer).map_err(IssueError::Sign)?;
                let public_key =
                    PublicKey::from_spki_der(&rec.spki).map_err(|e| IssueError::Sign(e.into()))?;
                Ok(Some(sign_record(&p, &issuer, &rec, &public_key, true)?))
            }
            None => Ok(None),
        }
    }

    /// Appends a checkpoint signed by the identity key over the ledger's current head.
    ///
    /// # Errors
    /// A token or ledger error.
    pub fn checkpoint(&self) -> Result<trustfab_ledger::Record, IssueError> {
        let signer = TokenSigner::new(&*self.token, self.identity)?;
        let sign = |m: &[u8]| -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
            Ok(trustfab_pki::Signer::sign_der(&signer, m)?)
        };
        self.ledger
            .checkpoint(self.clock.now(), &sign)
            .map_err(IssueError::Ledger)
    }

    /// Verifies the whole ledger: the hash chain, every checkpoint under this HSM's identity key,
    /// and the counters and claims against the chain.
    ///
    /// # Errors
    /// [`trustfab_ledger::Error::Tampered`] naming the first bad record, or a token or storage
    /// error.
    pub fn verify_ledger(&self) -> Result<trustfab_ledger::Verified, IssueError> {
        let key = to_pki(&self.token.public_key(self.identity)?).map_err(IssueError::Sign)?;
        let verify = |m: &[u8], sig: &[u8]| report::verify_signature(&key, m, sig).is_ok();
        self.ledger.verify(&verify).map_err(IssueError::Ledger)
    }

    /// Writes the production report of `product` to `out` (`docs/report.md`): a checkpoint is
    /// appended first, the whole ledger is verified under this HSM's key, then every record up to
    /// that checkpoint is streamed, the product's own in full with their certificates.
    ///
    /// # Errors
    /// [`IssueError::UnknownProduct`], a ledger that does not verify, or an I/O error.
    pub fn report<W: std::io::Write>(
        &self,
        product: &str,
        out: W,
    ) -> Result<report::Totals, IssueError> {
        let p = self.product(product)?;
        let certs = self.certs.as_ref().ok_or(IssueError::NoIdentity)?;
        let checkpoint = self.checkpoint()?;
        self.verify_ledger()?;
        let signer = TokenSigner::new(&*self.token, p.signing_key)?;
        let issuer = Issuer::new(&p.issuer_cert, &signer).map_err(IssueError::Sign)?;
        let mut w = report::ItemWriter::new(out);
        w.item(&report::header(&p.key, certs, &p.def, self.clock.now()))?;
        let mut jobs = HashMap::new();
        let mut totals = report::Totals::default();
        let mut head_hash = trustfab_ledger::GENESIS_HASH;
        for r in self.ledger.records(1) {
            let r = r.map_err(IssueError::Ledger)?;
            if r.seq > checkpoint.seq {
                break;
            }
            let own = r.kind == Kind::Checkpoint
                || report::product_of(&r, &mut jobs).as_deref() == Some(p.key.as_str());
            let item = if own {
                totals.apply(&r.effects, &p.key).map_err(|what| {
                    IssueError::Report(report::ReportError::Record { seq: r.seq, what })
                })?;
                let cert = match r.kind {
                    Kind::CertificateIssued => {
                        let rec = IssuanceRecord::decode(&r.body).ok_or_else(|| {
                            IssueError::MissingRecord {
                                uid: "-".into(),
                                seq: r.seq,
                            }
                        })?;
                        let public_key = PublicKey::from_spki_der(&rec.spki)
                            .map_err(|e| IssueError::Sign(e.into()))?;
                        Some(sign_record(&p, &issuer, &rec, &public_key, true)?.cert)
                    }
                    _ => None,
                };
                report::own_item(&r, cert)
            } else {
                report::foreign_item(&r)
            };
            w.item(&item)?;
            head_hash = r.hash;
        }
        let message = report::signed_message(&w.digest(), checkpoint.seq, &head_hash, &totals);
        let id_signer = TokenSigner::new(&*self.token, self.identity)?;
        let signature = trustfab_pki::Signer::sign_der(&id_signer, &message)
            .map_err(|e| IssueError::Sign(e.into()))?;
        w.finish(&report::trailer(
            checkpoint.seq,
            &head_hash,
            &totals,
            signature,
        ))?;
        Ok(totals)
    }

    /// Every product with its counts.
    ///
    /// # Errors
    /// A ledger error.
    pub fn products(&self) -> Result<Vec<ProductStatus>, trustfab_ledger::Error> {
        Ok(self
            .ledger
            .counters()?
            .into_iter()
            .filter(|(product, _)| !product.contains(':'))
            .map(|(product, c)| ProductStatus {
                product,
                ordered: c.total,
                issued: c.issued,
                remaining: c.remaining(),
            })
            .collect())
    }
}

/// Builds and signs the certificate an issuance record determines.
///
/// `public_key` is the key `rec.spki` encodes: the caller's device key when it has one, so a
/// fresh issuance does not parse back the SPKI it just encoded.
fn sign_record(
    p: &Product,
    issuer: &Issuer<'_>,
    rec: &IssuanceRecord,
    public_key: &PublicKey,
    reissued: bool,
) -> Result<Issued, IssueError> {
    let req = DeviceRequest {
        inputs: RenderInputs {
            oem: &p.oem,
            product: &p.product,
            uid: &rec.uid,
            serial: &rec.serial,
        },
        public_key,
        now: rec.not_before,
    };
    let cert = trustfab_pki::issue_device(&p.template, &req, issuer).map_err(IssueError::Sign)?;
    Ok(Issued {
        uid: rec.uid.clone(),
        serial: rec.serial.clone(),
        cert,
        reissued,
    })
}

/// What the key wrap of a package binds: its id and the target HSM.
pub fn wrap_info(package_id: &[u8; 16], hsm_fingerprint: &[u8; 32]) -> Vec<u8> {
    let mut v = b"trustfab-package-key-v1".to_vec();
    v.extend_from_slice(package_id);
    v.extend_from_slice(hsm_fingerprint);
    v
}

/// What the family key's wrap in a package binds: its id and the target HSM.
pub fn family_wrap_info(package_id: &[u8; 16], hsm_fingerprint: &[u8; 32]) -> Vec<u8> {
    let mut v = b"trustfab-package-family-key-v1".to_vec();
    v.extend_from_slice(package_id);
    v.extend_from_slice(hsm_fingerprint);
    v
}

/// What a family key delivered to a device binds: the product and the device.
pub fn family_delivery_info(product: &str, uid: &DeviceUid) -> Vec<u8> {
    let mut v = b"trustfab-family-key-delivery-v1".to_vec();
    v.extend_from_slice(product.as_bytes());
    v.push(0);
    v.extend_from_slice(uid.as_bytes());
    v
}

type CheckedFirmware<'a> = (&'a trustfab_package::Firmware, Option<WrappedKey>);

/// The package's firmware section, checked: the family key (if any) is a P-256 key wrapped for
/// this package and this HSM.
fn check_firmware<'a>(
    fw: &'a trustfab_package::Firmware,
    package_id: &[u8; 16],
    fingerprint: &[u8; 32],
) -> Result<CheckedFirmware<'a>, ImportError> {
    let Some(bytes) = &fw.wrapped_family_key else {
        return Ok((fw, None));
    };
    let wrapped = WrappedKey::from_bytes(bytes)
        .map_err(|e| ImportError::Contents(format!("wrapped family key: {e}")))?;
    if wrapped.key_curve() != Curve::P256 {
        return Err(ImportError::Contents(
            "the family key is not a P-256 key (MCUboot ENC_EC256)".into(),
        ));
    }
    if wrapped.info() != family_wrap_info(package_id, fingerprint) {
        return Err(ImportError::Contents(
            "the wrapped family key is bound to another package".into(),
        ));
    }
    Ok((fw, Some(wrapped)))
}

fn append_creates(a: &Append) -> bool {
    a.counters
        .iter()
        .any(|c| matches!(c, CounterOp::Create { .. }))
}

/// The ledger counter that numbers a sequential product's serials.
fn serial_counter(product: &str) -> String {
    format!("serials:{product}")
}

pub(crate) fn uid_claim(product: &str, uid: &DeviceUid) -> Vec<u8> {
    let mut v = product.as_bytes().to_vec();
    v.push(0);
    v.extend_from_slice(uid.as_bytes());
    v
}

fn serial_claim(issuer_fp: &[u8; 32], serial: &Serial) -> Vec<u8> {
    let mut v = issuer_fp.to_vec();
    v.extend_from_slice(serial.as_be_bytes());
    v
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn cert_key(der: &[u8]) -> Result<PublicKey, String> {
    let (_, c) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("certificate: {e}"))?;
    PublicKey::from_spki_der(c.public_key().raw).map_err(|e| e.to_string())
}

fn check_issued_by(cert: &[u8], issuer: &[u8]) -> Result<(), String> {
    let (_, c) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| format!("device CA: {e}"))?;
    let (_, i) = x509_parser::parse_x509_certificate(issuer).map_err(|e| format!("root: {e}"))?;
    c.verify_signature(Some(i.public_key()))
        .map_err(|_| "the device CA certificate is not signed by the root".to_owned())
}

/// The token's random generator as a `trustfab_types::Rng`.
struct TokenRng<'a>(&'a dyn Token);

impl trustfab_types::Rng for TokenRng<'_> {
    fn fill(&self, out: &mut [u8]) -> Result<(), trustfab_types::RngError> {
        self.0
            .fill_random(out)
            .map_err(|_| trustfab_types::RngError)
    }
}
