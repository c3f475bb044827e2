//! Products: their definitions as recorded at import, looked up (and cached) by product key, and
//! their standing (counts, firmware, chain).

use std::sync::{Arc, PoisonError};

use trustfab_formats::records::ProductDef;
use trustfab_ledger::Kind;
use trustfab_pki::template::SerialScheme;
use trustfab_pki::Template;
use trustfab_token::{KeyHandle, KeyLabel};
use trustfab_types::{OemId, ProductId, ProductKey};

use crate::{hashed_label, sha256, AnchorError, Hsm, IssueError, CLAIM_PRODUCT};

/// Why a product definition could not be read from the store.
pub(crate) enum DefError {
    Ledger(trustfab_ledger::Error),
    Anchor(AnchorError),
}

impl From<DefError> for IssueError {
    fn from(e: DefError) -> Self {
        match e {
            DefError::Ledger(e) => Self::Ledger(e),
            DefError::Anchor(e) => Self::Anchor(e),
        }
    }
}

impl From<DefError> for crate::ImportError {
    fn from(e: DefError) -> Self {
        match e {
            DefError::Ledger(e) => Self::Ledger(e),
            DefError::Anchor(e) => Self::Anchor(e),
        }
    }
}

fn digest_err(e: trustfab_token::Error) -> DefError {
    DefError::Anchor(AnchorError::ProductDigest(e))
}

/// The token label of a product definition's digest: `pdef:` and 20 hex digits of SHA-256 of the
/// product key (an anchor label: anchors have their own label space).
fn def_digest_label(product: &ProductKey) -> Result<KeyLabel, DefError> {
    hashed_label("pdef", product).map_err(digest_err)
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
    /// The product definition of `product` recorded at or just after `seq` (the append that
    /// claimed it), checked against the digest the HSM keeps for it in the token: the store is
    /// outside the HSM's boundary, and a definition changed there (another template, CA or
    /// key) is refused, naming its record. A product imported by an earlier release, before
    /// these digests, has none yet: its definition is taken as it is now, once, and its digest
    /// kept from then on.
    ///
    /// `product` is the key it was looked up by; `None` when any product's definition will do
    /// (the OEM's first, which binds its root), checked under the key it names.
    pub(crate) fn product_def_near(
        &self,
        seq: u64,
        product: Option<&ProductKey>,
    ) -> Result<Option<ProductDef>, DefError> {
        for raw in self.ledger.read_raw(seq, 4).map_err(DefError::Ledger)? {
            let r = raw.into_record().map_err(DefError::Ledger)?;
            if r.kind != Kind::ProductCreated {
                continue;
            }
            let tampered = |product: &ProductKey| {
                DefError::Anchor(AnchorError::ProductTampered {
                    product: product.clone(),
                    seq: r.seq,
                })
            };
            let def = match (ProductDef::decode(&r.body), product) {
                (Ok(d), Some(p)) if &d.product != p => return Err(tampered(p)),
                (Ok(d), _) => d,
                (Err(_), Some(p)) => return Err(tampered(p)),
                (Err(_), None) => return Ok(None),
            };
            let product = &def.product;
            let label = def_digest_label(product)?;
            let digest = sha256(&r.body);
            match self.token.read_anchor(&label).map_err(digest_err)? {
                Some(kept) if kept.as_slice() == digest.as_slice() => {}
                Some(_) => return Err(tampered(product)),
                None => self
                    .token
                    .write_anchor(&label, &digest)
                    .map_err(digest_err)?,
            }
            return Ok(Some(def));
        }
        Ok(None)
    }

    /// Keeps the digest of a product definition about to be appended in the token, before the
    /// append: a crash between the two leaves a digest that the same import writes again.
    pub(crate) fn keep_def_digest(
        &self,
        product: &ProductKey,
        body: &[u8],
    ) -> Result<(), DefError> {
        self.token
            .write_anchor(&def_digest_label(product)?, &sha256(body))
            .map_err(digest_err)
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
        let def = self.product_def_near(seq, Some(key))?.ok_or_else(unknown)?;
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
        // The chain's counters, names and counts, as the HSM checked them, not what the rows
        // say (`Store::verified_counters`).
        Ok(self
            .ledger
            .verified_counters()?
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
