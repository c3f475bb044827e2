//! The HSM's seal over its ledger appends: an HMAC-SHA256, under a key made inside the token and
//! never leaving it, over the records of each append that moves a count or records an issuance
//! (`docs/ledger.md`, "Seals"). The store checks its chain with the same key ([`SealGuard`]):
//! counters come from sealed records only, so a counter row rewritten or forged in the database
//! moves nothing; an issuance record is believed, to rebuild a certificate or deliver a family
//! key, only under its seal.

use std::sync::Arc;

use trustfab_ledger::{Append, Guard, Hash, Head, Record, Seal, Store};
use trustfab_token::{KeyHandle, KeyLabel, MacKeySpec, Token};

use crate::anchor::ANCHOR_LABEL;

/// Token label of the HSM's seal key (HMAC-SHA256 over its ledger appends).
pub const SEAL_LABEL: &str = "hsm-ledger-seal";

/// How often a positional append is tried again when other writers keep moving the head.
const POSITIONAL_ATTEMPTS: u32 = 1000;

/// The seal key of the token, made now if the token has none (an HSM initialised by a release
/// before seals).
pub(crate) fn seal_key(token: &dyn Token) -> Result<KeyHandle, trustfab_token::Error> {
    let label = KeyLabel::new(SEAL_LABEL)?;
    match token.find(&label)? {
        Some(k) => Ok(k),
        None => match token.generate_mac(&MacKeySpec::new(label.clone())) {
            Ok(k) => Ok(k),
            // Another process of this HSM made it meanwhile.
            Err(trustfab_token::Error::LabelExists { label: l }) => token
                .find(&label)?
                .ok_or(trustfab_token::Error::LabelExists { label: l }),
            Err(e) => Err(e),
        },
    }
}

/// What the store checks its chain with: the seal key's MAC and the anchor, both in the token.
pub(crate) struct SealGuard {
    pub(crate) token: Arc<dyn Token>,
    pub(crate) key: KeyHandle,
}

impl Guard for SealGuard {
    fn seal_valid(&self, digest: &Hash, tag: &[u8]) -> bool {
        self.token.verify_mac(self.key, digest, tag).is_ok()
    }

    fn anchored(&self) -> Result<Option<Head>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(crate::anchor::read(
            &*self.token,
            &KeyLabel::new(ANCHOR_LABEL)?,
        )?)
    }
}

/// Seals `append` without a position (an issuance: it may land anywhere, sharing a transaction
/// with other stations' batches; a copy of it spends again and records what was recorded).
pub(crate) fn seal_free(
    token: &dyn Token,
    key: KeyHandle,
    append: Append,
) -> Result<Append, trustfab_token::Error> {
    let tag = token.mac(key, &append.seal_digest(None))?;
    Ok(append.with_seal(false, tag.to_bytes()))
}

/// Appends `append` sealed at the head it is made for (it adds units: a copy elsewhere must not
/// verify), reading the head and trying again while other writers move it. The outer error is
/// the token's, the inner the ledger's refusal.
pub(crate) fn append_positional(
    token: &dyn Token,
    key: KeyHandle,
    ledger: &dyn Store,
    append: &Append,
) -> Result<Result<Vec<Record>, trustfab_ledger::Error>, trustfab_token::Error> {
    for _ in 0..POSITIONAL_ATTEMPTS {
        let head = match ledger.head() {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        let mut a = append.clone();
        a.expect_head = Some(head.seq);
        let tag = token.mac(key, &a.seal_digest(Some(&head.hash)))?;
        match ledger.append(a.with_seal(true, tag.to_bytes())) {
            Err(trustfab_ledger::Error::HeadMoved { .. }) => {}
            other => return Ok(other),
        }
    }
    Ok(Err(trustfab_ledger::Error::Contention {
        attempts: POSITIONAL_ATTEMPTS,
    }))
}

/// Checks the seal that ends an issuing append: `recs` are its stored records from its first
/// on, the seal among them; returns the covered records when the seal is the token's MAC over
/// exactly them.
pub(crate) fn check_free<'r>(
    token: &dyn Token,
    key: KeyHandle,
    recs: &'r [Record],
) -> Option<&'r [Record]> {
    let (i, seal) = recs
        .iter()
        .enumerate()
        .find(|(_, r)| r.kind == trustfab_ledger::Kind::Seal)?;
    let s = Seal::decode(&seal.body).ok()?;
    if s.positional || usize::try_from(s.covered).ok()? != i {
        return None;
    }
    let covered = recs.get(..i)?;
    let digest = trustfab_ledger::seal_digest(
        None,
        covered
            .iter()
            .map(|r| (r.kind.code(), r.body.as_slice(), r.effects.as_slice())),
    );
    token.verify_mac(key, &digest, &s.tag).ok()?;
    Some(covered)
}

impl crate::Hsm {
    /// [`append_positional`] with this HSM's token, seal key and ledger.
    pub(crate) fn append_positional(
        &self,
        append: &Append,
    ) -> Result<Result<Vec<Record>, trustfab_ledger::Error>, trustfab_token::Error> {
        append_positional(&*self.token, self.seal_key, &*self.ledger, append)
    }
}
