//! Products: their definitions as recorded at import, looked up (and cached) by product key, and
//! their standing (counts, firmware, chain).

use std::sync::{Arc, PoisonError};

use trustfab_formats::records::ProductDef;
use trustfab_ledger::Kind;
use trustfab_pki::template::SerialScheme;
use trustfab_pki::Template;
use trustfab_token::{KeyHandle, KeyLabel};
use trustfab_types::{OemId, ProductId, ProductKey};

use crate::{sha256, Hsm, IssueError, CLAIM_PRODUCT};

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

/// A product's standing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProductStatus {
    /// The product.
    pub product: ProductKey,
    /// Created plus topped up.
    pub ordered: u64,
    /// Spent.
    pub issued: u64,
    /// Left.
    pub remaining: u64,
}

pub(crate) struct Product {
    pub(crate) key: ProductKey,
    pub(crate) def: ProductDef,
    pub(crate) oem: OemId,
    pub(crate) product: ProductId,
    pub(crate) template: Template,
    pub(crate) signing_key: KeyHandle,
    /// The firmware family key in the token, when the product has one.
    pub(crate) family_key: Option<KeyHandle>,
    pub(crate) issuer_cert: Vec<u8>,
    /// SHA-256 of `issuer_cert`, the prefix of every serial claim.
    pub(crate) issuer_fp: [u8; 32],
    pub(crate) serials: SerialScheme,
}

impl Hsm {
    /// The product definition recorded at or just after `seq` (the append that claimed it).
    pub(crate) fn product_def_near(
        &self,
        seq: u64,
    ) -> Result<Option<ProductDef>, trustfab_ledger::Error> {
        for raw in self.ledger.read_raw(seq, 4)? {
            let r = raw.into_record()?;
            if r.kind == Kind::ProductCreated {
                return Ok(ProductDef::decode(&r.body).ok());
            }
        }
        Ok(None)
    }

    /// The firmware a product's devices boot: family, boot key hash, family key; `None` when
    /// its package had no firmware section.
    ///
    /// # Errors
    /// [`IssueError::UnknownProduct`] or a ledger error.
    pub fn firmware(&self, product: &ProductKey) -> Result<Option<ProductFirmware>, IssueError> {
        let p = self.product(product)?;
        Ok(p.def.firmware.as_ref().map(|f| ProductFirmware {
            family: f.family.clone(),
            boot_key_hash: f.boot_key_hash,
            family_key: f.family_key.as_ref().map(|k| k.point.clone()),
        }))
    }

    pub(crate) fn product(&self, key: &ProductKey) -> Result<Arc<Product>, IssueError> {
        if let Some(p) = self
            .products
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            return Ok(Arc::clone(p));
        }
        let unknown = || IssueError::UnknownProduct {
            product: key.clone(),
        };
        let seq = self
            .ledger
            .claimed(CLAIM_PRODUCT, key.to_string().as_bytes())
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
            Some(k) => self.token.find(&KeyLabel::new(&k.label)?)?,
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
            key: key.clone(),
            oem: def.product.oem().clone(),
            product: def.product.product().clone(),
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
            .insert(key.clone(), Arc::clone(&p));
        Ok(p)
    }

    /// The OEM root certificate (DER) and the chain (device CA) of a product.
    ///
    /// # Errors
    /// [`IssueError::UnknownProduct`] or a ledger error.
    pub fn chain(&self, product: &ProductKey) -> Result<(Vec<u8>, Option<Vec<u8>>), IssueError> {
        let p = self.product(product)?;
        Ok((p.def.root_cert.clone(), p.def.device_ca_cert.clone()))
    }

    /// Every product with its counts (the ledger's counters named by a product key; the job
    /// and serial counters, `job:…` and `serials:…`, are not products).
    ///
    /// # Errors
    /// A ledger error.
    pub fn products(&self) -> Result<Vec<ProductStatus>, trustfab_ledger::Error> {
        Ok(self
            .ledger
            .counters()?
            .into_iter()
            .filter(|(product, _)| !product.contains(':'))
            .filter_map(|(product, c)| {
                Some(ProductStatus {
                    product: ProductKey::parse(&product).ok()?,
                    ordered: c.total,
                    issued: c.issued,
                    remaining: c.remaining(),
                })
            })
            .collect())
    }
}
