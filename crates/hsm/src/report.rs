//! The HSM's side of the production report (`docs/report.md`): walk the ledger up to a fresh
//! checkpoint and sign. The wire format and the OEM's verification are `trustfab_formats::report`.

use std::collections::HashMap;

use trustfab_formats::records::IssuanceRecord;
use trustfab_formats::report::{self, ReportError, ReportWriter, Totals};
use trustfab_ledger::Kind;
use trustfab_pki::{Issuer, PublicKey};
use trustfab_token::TokenSigner;
use trustfab_types::ProductKey;

use crate::issue::sign_record;
use crate::{Hsm, IssueError};

impl Hsm {
    /// Writes the production report of `product` to `out` (`docs/report.md`): a checkpoint is
    /// appended first, the whole ledger is verified under this HSM's key, then every record up to
    /// that checkpoint is streamed, the product's own in full with their certificates.
    ///
    /// # Errors
    /// [`IssueError::UnknownProduct`], a ledger that does not verify, or an I/O error.
    pub fn report<W: std::io::Write>(
        &self,
        product: &ProductKey,
        out: W,
    ) -> Result<Totals, IssueError> {
        let p = self.product(product)?;
        let certs = self.certs.as_ref().ok_or(IssueError::NoIdentity)?;
        let checkpoint = self.checkpoint()?;
        self.verify_ledger()?;
        let signer = TokenSigner::new(&*self.token, p.signing_key)?;
        let issuer = Issuer::new(&p.issuer_cert, &signer).map_err(IssueError::Sign)?;
        let mut w = ReportWriter::new(out);
        w.item(&report::header(&p.key, certs, &p.def, self.clock.now()))?;
        let mut jobs = HashMap::new();
        let mut totals = Totals::default();
        let mut head_hash = trustfab_ledger::GENESIS_HASH;
        for r in self.ledger.records(1) {
            let r = r.map_err(IssueError::Ledger)?;
            if r.seq > checkpoint.seq {
                break;
            }
            let own = r.kind == Kind::Checkpoint
                || report::product_of(&r, &mut jobs).as_ref() == Some(&p.key);
            let item = if own {
                totals
                    .apply(&r.effects, &p.key)
                    .map_err(|what| IssueError::Report(ReportError::Record { seq: r.seq, what }))?;
                let cert = match r.kind {
                    Kind::CertificateIssued => {
                        let rec = IssuanceRecord::decode(&r.body).map_err(|_| {
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
}
