//! Chain validation with rustls-webpki: path building to a pinned root, validity, basic
//! constraints, key usage and EKU, and revocation from CRLs when the caller has them.

use rustls_pki_types::{CertificateDer, UnixTime as PkiTime};
use trustfab_types::UnixTime;
use webpki::{
    BorrowedCertRevocationList, CertRevocationList, EndEntityCert, ExpirationPolicy, KeyUsage,
    RevocationCheckDepth, RevocationOptionsBuilder, UnknownStatusPolicy,
};

use crate::Error;

/// The purpose a certificate must be good for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A TLS client / device identity: clientAuth if the certificate has an EKU extension.
    ClientAuth,
    /// A TLS server: serverAuth if the certificate has an EKU extension.
    ServerAuth,
}

/// What to check a certificate against.
#[derive(Debug)]
pub struct Policy<'a> {
    /// The pinned root certificate (DER): the only trust anchor.
    pub root: &'a [u8],
    /// Intermediate certificates that may complete the path (DER).
    pub intermediates: &'a [Vec<u8>],
    /// CRLs (DER) from the certificate's issuer. When present, the end-entity certificate's
    /// status must be known from them (a CRL from another issuer fails closed), and an expired
    /// CRL is refused.
    pub crls: &'a [Vec<u8>],
    /// The time of validation.
    pub now: UnixTime,
    /// The purpose.
    pub purpose: Purpose,
}

/// Validates `cert` (DER) under `policy`.
///
/// # Errors
/// [`Error::Invalid`] with webpki's reason (unknown issuer, expired, revoked, ...), or
/// [`Error::BadCrl`] for a CRL that does not parse.
pub fn validate(cert: &[u8], policy: &Policy<'_>) -> Result<(), Error> {
    let root = CertificateDer::from(policy.root);
    let anchor = webpki::anchor_from_trusted_cert(&root)?;
    let anchors = [anchor];
    let ee_der = CertificateDer::from(cert);
    let ee = EndEntityCert::try_from(&ee_der)?;
    let intermediates: Vec<CertificateDer<'_>> = policy
        .intermediates
        .iter()
        .map(|d| CertificateDer::from(d.as_slice()))
        .collect();
    let crls: Vec<CertRevocationList<'_>> = policy
        .crls
        .iter()
        .map(|d| BorrowedCertRevocationList::from_der(d).map(CertRevocationList::from))
        .collect::<Result<_, _>>()
        .map_err(Error::BadCrl)?;
    let crl_refs: Vec<&CertRevocationList<'_>> = crls.iter().collect();
    let revocation = if crl_refs.is_empty() {
        None
    } else {
        Some(
            RevocationOptionsBuilder::new(&crl_refs)
                .map_err(|_| Error::Validity("no CRL given"))?
                .with_depth(RevocationCheckDepth::EndEntity)
                .with_status_policy(UnknownStatusPolicy::Deny)
                .with_expiration_policy(ExpirationPolicy::Enforce)
                .build(),
        )
    };
    let usage = match policy.purpose {
        Purpose::ClientAuth => KeyUsage::client_auth(),
        Purpose::ServerAuth => KeyUsage::server_auth(),
    };
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &intermediates,
        PkiTime::since_unix_epoch(std::time::Duration::from_secs(policy.now.0)),
        usage,
        revocation,
        None,
    )?;
    Ok(())
}
