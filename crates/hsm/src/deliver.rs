//! Family key delivery: a product's firmware family key wrapped inside the token for one
//! device, to the public key this HSM certified for it and to no other key.

use trustfab_formats::binding::family_delivery_info;
use trustfab_pki::PublicKey;
use trustfab_token::Curve;
use trustfab_types::{DeviceUid, ProductKey};

use crate::{uid_claim, Hsm, IssueError, CLAIM_UID};

impl Hsm {
    /// The product's family decryption key, wrapped inside the token for the device `uid`: to
    /// the public key this HSM certified for that device (its issuance record), and to no other
    /// key. The issuance record is the ledger's account of the delivery: every certified device
    /// of a product with a family key may receive it, and only those. Returns the
    /// `trustfab-token` wrapped-key encoding, which the device unwraps inside with its key.
    ///
    /// # Errors
    /// [`IssueError::NoFamilyKey`] when the product has none, [`IssueError::NotIssued`] when no
    /// certificate was issued to `uid` for the product, a token or ledger error.
    pub fn family_key_for(
        &self,
        product: &ProductKey,
        uid: &DeviceUid,
    ) -> Result<Vec<u8>, IssueError> {
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
}
