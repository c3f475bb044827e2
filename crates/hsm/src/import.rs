//! Package import: a provisioning package checked (target HSM, window, replay, OEM root binding,
//! key bindings) and its product created or topped up in one ledger append, with the signing key
//! and the firmware family key unwrapped inside the token.

use trustfab_formats::binding::{family_wrap_info, wrap_info};
use trustfab_formats::records::{FamilyKeyDef, FirmwareDef, PackageImported, ProductDef};
use trustfab_ledger::{Append, CounterOp, Kind};
use trustfab_pki::template::SerialScheme;
use trustfab_pki::{PublicKey, Template};
use trustfab_token::{Curve, KeySpec, KeyUsage, WrappedKey};
use trustfab_types::{Fingerprint, ProductKey};

use crate::{
    family_key_label, hex, product_key_label, serial_counter, sha256, Hsm, ImportError, CLAIM_OEM,
    CLAIM_PACKAGE, CLAIM_PRODUCT,
};

/// What a successful import did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Imported {
    /// The product.
    pub product: ProductKey,
    /// Whether the product was created (else topped up).
    pub created: bool,
    /// Count added.
    pub count: u64,
    /// Ledger sequence number of the `PackageImported` record.
    pub seq: u64,
}

impl Hsm {
    /// Imports a provisioning package (see the crate doc for the checks, in order).
    ///
    /// # Errors
    /// An [`ImportError`] naming the first check that failed; nothing is imported then.
    pub fn import(&self, bytes: &[u8]) -> Result<Imported, ImportError> {
        let verified = trustfab_formats::package::open(bytes)?;
        let c = verified.contents();
        let fingerprint = self.fingerprint.ok_or(ImportError::NoIdentity)?;
        if c.target_hsm != fingerprint {
            return Err(ImportError::WrongHsm {
                expected: c.target_hsm,
                actual: fingerprint,
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
        if *wrapped.public_key() != issuer_key {
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
        let key = ProductKey::new(c.oem_id.clone(), c.product_id.clone());
        // The ledger names the product's counter and claim by its `oem/product` text.
        let counter = key.to_string();
        let root_fp = sha256(&c.root_cert);
        if let Some(seq) = self
            .ledger
            .claimed(CLAIM_OEM, oem.as_bytes())
            .map_err(ImportError::Ledger)?
        {
            let bound = self.product_def_near(seq, None)?;
            if bound.map(|d| sha256(&d.root_cert)) != Some(root_fp) {
                return Err(ImportError::OemRootMismatch {
                    oem: c.oem_id.clone(),
                    seq,
                });
            }
        }
        let existing = match self
            .ledger
            .claimed(CLAIM_PRODUCT, counter.as_bytes())
            .map_err(ImportError::Ledger)?
        {
            Some(seq) => self.product_def_near(seq, Some(&key))?,
            None => None,
        };
        let label = product_key_label(&key).map_err(ImportError::Token)?;
        let spki = issuer_key.to_spki_der();
        let imported_body = PackageImported {
            package_id: c.package_id,
            hsm_fingerprint: fingerprint,
            product: key.clone(),
            count: c.count,
            time: now,
        }
        .encode();

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
                            f.family_key.as_ref().map(|k| k.point.as_slice()),
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
                    product: counter,
                    n: c.count,
                })
                .with_claim(CLAIM_PACKAGE, c.package_id.to_vec())
        } else {
            // The key goes into the token first: a crash before the ledger append leaves a key
            // that the same package's next import recognises by its public key.
            match self.token.find(&label).map_err(ImportError::Token)? {
                Some(h) => {
                    let have = self.token.public_key(h).map_err(ImportError::Token)?;
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
                Some((fw, wrapped)) => Some(FirmwareDef {
                    family: fw.family.clone(),
                    boot_key_hash: fw.boot_key_hash,
                    family_key: match wrapped {
                        Some(w) => Some(self.import_family_key(&key, &w)?),
                        None => None,
                    },
                }),
                None => None,
            };
            let def = ProductDef {
                product: key.clone(),
                package_id: c.package_id,
                template: c.template.clone(),
                root_cert: c.root_cert.clone(),
                device_ca_cert: c.device_ca_cert.clone(),
                key_label: label.as_str().to_owned(),
                signing_key_spki: spki,
                serial_range: c.serial_range.map(|r| (r.first, r.last)),
                firmware,
            };
            let def_body = def.encode();
            self.keep_def_digest(&key, &def_body)?;
            let mut a = Append::record(Kind::PackageImported, imported_body)
                .with_record(Kind::ProductCreated, def_body)
                .with_counter(CounterOp::Create {
                    product: counter.clone(),
                    count: c.count,
                })
                .with_claim(CLAIM_PACKAGE, c.package_id.to_vec())
                .with_claim(CLAIM_PRODUCT, counter.into_bytes());
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
        let floor = self.anchor.floor()?;
        // It creates or adds units: sealed at its place in the chain.
        let recs = self
            .append_positional(&append)
            .map_err(ImportError::Token)?
            .map_err(|e| match e {
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
        self.anchor.advance(floor, &recs)?;
        Ok(Imported {
            product: key,
            created,
            count: c.count,
            seq: recs.first().map_or(0, |r| r.seq),
        })
    }

    /// Unwraps a product's family key into the token as a distribution key (sensitive, extractable
    /// only wrapped), or recognises the one an interrupted import left there. Returns its label
    /// and public point.
    fn import_family_key(
        &self,
        product: &ProductKey,
        wrapped: &WrappedKey,
    ) -> Result<FamilyKeyDef, ImportError> {
        let label = family_key_label(product).map_err(ImportError::Token)?;
        match self.token.find(&label).map_err(ImportError::Token)? {
            Some(h) => {
                let have = self.token.public_key(h).map_err(ImportError::Token)?;
                if &have != wrapped.public_key() {
                    return Err(ImportError::ProductConflict {
                        product: product.clone(),
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
        Ok(FamilyKeyDef {
            label: label.as_str().to_owned(),
            point: wrapped.public_key().point().to_vec(),
        })
    }
}

type CheckedFirmware<'a> = (&'a trustfab_formats::package::Firmware, Option<WrappedKey>);

/// The package's firmware section, checked: the family key (if any) is a P-256 key wrapped for
/// this package and this HSM.
fn check_firmware<'a>(
    fw: &'a trustfab_formats::package::Firmware,
    package_id: &[u8; 16],
    fingerprint: &Fingerprint,
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
