//! The HSM's identity: initialisation (the identity and key-transport keys made inside the
//! token), opening against the vendor's certificates, the fingerprint packages name, and the
//! identity key's signatures over the ledger (checkpoints) and their verification.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use trustfab_ledger::Store;
use trustfab_pki::{HsmCertificates, HsmRequest, PublicKey};
use trustfab_token::{Curve, KeyLabel, KeySpec, KeyUsage, Token, TokenSigner};
use trustfab_types::{Clock, Fingerprint, HsmId};

use crate::{Hsm, InitError, IssueError, IDENTITY_LABEL, KT_LABEL};

impl Hsm {
    /// Makes the identity and key-transport keys inside `token` and returns the request for the
    /// vendor to certify.
    ///
    /// # Errors
    /// [`InitError::AlreadyInitialised`] when the token has an identity, or a token error.
    pub fn init(token: &dyn Token, hsm_id: &HsmId) -> Result<HsmRequest, InitError> {
        let id_label = KeyLabel::new(IDENTITY_LABEL)?;
        if token.find(&id_label)?.is_some() {
            return Err(InitError::AlreadyInitialised);
        }
        let curve = Curve::P256;
        let identity = token.generate(&KeySpec::new(id_label, curve, KeyUsage::Sign))?;
        let kt_label = KeyLabel::new(KT_LABEL)?;
        let kt = token.generate(&KeySpec::new(kt_label, curve, KeyUsage::KeyTransport))?;
        crate::seal::seal_key(token)?;
        let signer = TokenSigner::new(token, identity)?;
        let kt_pk = token.public_key(kt)?;
        Ok(HsmRequest::new(hsm_id.as_str(), &signer, &kt_pk)?)
    }

    /// Opens an initialised HSM. `certs`, when given, must certify this token's keys.
    ///
    /// # Errors
    /// [`InitError::NotInitialised`], [`InitError::WrongCertificates`], [`InitError::Anchor`]
    /// when the ledger does not reach the head anchored in the token (deleted, cut short,
    /// rolled back, replaced), or a token error.
    pub fn open(
        token: Arc<dyn Token>,
        ledger: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        hsm_id: &HsmId,
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
                    PublicKey::from_spki_der(x.public_key().raw)
                        .map_err(|e| InitError::WrongCertificates(e.to_string()))
                };
                if key_of(&c.identity)? != token.public_key(identity)? {
                    return Err(InitError::WrongCertificates("identity key differs".into()));
                }
                if key_of(&c.key_transport)? != token.public_key(kt)? {
                    return Err(InitError::WrongCertificates(
                        "key-transport key differs".into(),
                    ));
                }
                Some(Fingerprint::new(c.fingerprint()))
            }
            None => None,
        };
        let identity_point = token.public_key(identity)?.point().to_vec();
        let anchor = crate::anchor::Anchor::open(Arc::clone(&token), &*ledger)?;
        // From here on the store takes counters from sealed records only, walking the chain to
        // the anchor before its first append.
        let seal_key = crate::seal::seal_key(&*token)?;
        ledger.seal_with(Arc::new(crate::seal::SealGuard {
            token: Arc::clone(&token),
            key: seal_key,
        }));
        Ok(Self {
            token,
            ledger,
            clock,
            hsm_id: hsm_id.clone(),
            identity,
            identity_point,
            kt,
            fingerprint,
            certs: certs.cloned(),
            products: RwLock::new(HashMap::new()),
            serial_alloc: Mutex::new(()),
            anchor,
            seal_key,
            checkpoint_every: std::sync::atomic::AtomicU64::new(crate::CHECKPOINT_EVERY),
            admitted: RwLock::new(std::collections::HashSet::new()),
            service_key: std::sync::OnceLock::new(),
        })
    }

    /// This HSM's id.
    pub fn hsm_id(&self) -> &HsmId {
        &self.hsm_id
    }

    /// SHA-256 of the installed identity certificate: what packages name.
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.fingerprint
    }

    /// The certification request again (the same keys).
    ///
    /// # Errors
    /// A token or PKI error.
    pub fn request(&self) -> Result<HsmRequest, InitError> {
        let signer = TokenSigner::new(&*self.token, self.identity)?;
        let kt_pk = self.token.public_key(self.kt)?;
        Ok(HsmRequest::new(self.hsm_id.as_str(), &signer, &kt_pk)?)
    }

    /// A signer over the identity key (reports, ledger checkpoints).
    ///
    /// # Errors
    /// A token error.
    pub fn identity_signer(&self) -> Result<TokenSigner<'_>, trustfab_token::Error> {
        TokenSigner::new(&*self.token, self.identity)
    }

    /// The ledger store, to read: what it returns is the untrusted center's (a reader checks
    /// the hash chain, and the HSM's own verified accessors are the ones to believe).
    pub fn ledger(&self) -> &Arc<dyn Store> {
        &self.ledger
    }

    /// The token's sessions now (a PKCS#11 token's pool), `None` for a token without them.
    pub fn token_sessions(&self) -> Option<trustfab_token::Sessions> {
        self.token.sessions()
    }

    /// The uncompressed point of the identity key: what job packages are checked against.
    pub fn identity_point(&self) -> &[u8] {
        &self.identity_point
    }

    /// Makes a checkpoint when `recs` (just appended) crossed a multiple of the checkpoint
    /// interval ([`Hsm::set_checkpoint_every`], [`CHECKPOINT_EVERY`](crate::CHECKPOINT_EVERY)
    /// records by default), so that the OEM's verification has a signed head at most that many
    /// records back. Best effort: what was appended stands either way, and a checkpoint that
    /// cannot be made now (the head kept moving) is made at the next crossing, close or report.
    pub(crate) fn checkpoint_if_due(&self, recs: &[trustfab_ledger::Record]) {
        let every = self
            .checkpoint_every
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(1);
        let (Some(first), Some(last)) = (
            recs.iter().map(|r| r.seq).min(),
            recs.iter().map(|r| r.seq).max(),
        ) else {
            return;
        };
        if (first - 1) / every != last / every {
            // Best effort, as said: nothing of the append depends on it.
            let _ = self.checkpoint();
        }
    }

    /// Sets the automatic checkpoint interval, in records (at least 1).
    pub fn set_checkpoint_every(&self, records: u64) {
        self.checkpoint_every
            .store(records.max(1), std::sync::atomic::Ordering::Relaxed);
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
        let floor = self.anchor.floor()?;
        let rec = self
            .ledger
            .checkpoint(self.clock.now(), &sign)
            .map_err(IssueError::Ledger)?;
        self.anchor.advance(floor, std::slice::from_ref(&rec))?;
        Ok(rec)
    }

    /// Verifies the whole ledger: the hash chain, every checkpoint under this HSM's identity key,
    /// and the counters and claims against the chain.
    ///
    /// # Errors
    /// [`trustfab_ledger::Error::Tampered`] naming the first bad record, or a token or storage
    /// error.
    pub fn verify_ledger(&self) -> Result<trustfab_ledger::Verified, IssueError> {
        let key = self.token.public_key(self.identity)?;
        let verify =
            |m: &[u8], sig: &[u8]| trustfab_formats::report::verify_signature(&key, m, sig).is_ok();
        self.ledger.verify(&verify).map_err(IssueError::Ledger)
    }
}
