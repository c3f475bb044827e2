//! The TLS of both ends: TLS 1.3 only, aws-lc-rs. The service requires a client certificate
//! that validates to the HSM's station CA (rustls-webpki, EKU clientAuth) and signs its
//! handshakes with its key inside the HSM token; a station trusts only the station CA for the
//! service and presents its own certificate and key.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureAlgorithm, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use trustfab_hsm::Hsm;
use trustfab_types::SecretKeyDer;

/// Why a TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The CA certificate is not a usable trust anchor.
    #[error("the station CA certificate is not a usable trust anchor: {0}")]
    Anchor(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn roots(ca_der: &[u8]) -> Result<Arc<RootCertStore>, TlsError> {
    roots_of(&[ca_der])
}

fn roots_of(cas: &[&[u8]]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots
            .add(CertificateDer::from(ca.to_vec()))
            .map_err(|e| TlsError::Anchor(e.to_string()))?;
    }
    Ok(Arc::new(roots))
}

/// The service's TLS key: a P-256 key in the HSM token that signs handshakes and nothing else.
#[derive(Debug)]
struct HsmKey(Arc<Hsm>);

impl SigningKey for HsmKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| Box::new(HsmSigner(Arc::clone(&self.0))) as Box<dyn Signer>)
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

#[derive(Debug)]
struct HsmSigner(Arc<Hsm>);

impl Signer for HsmSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.0
            .sign_handshake(message)
            .map_err(|e| rustls::Error::General(format!("the HSM's TLS key: {e}")))
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

/// One certificate for every client hello.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

/// The service's configuration: TLS 1.3, a client certificate required and validated to the
/// station CA, the service certificate `cert_der` with its key in the token.
///
/// # Errors
/// A [`TlsError`].
pub fn server_config(
    hsm: Arc<Hsm>,
    ca_der: &[u8],
    operator_ca: Option<&[u8]>,
    cert_der: Vec<u8>,
) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let mut cas = vec![ca_der];
    cas.extend(operator_ca);
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots_of(&cas)?, Arc::clone(&provider))
            .build()
            .map_err(|e| TlsError::Anchor(e.to_string()))?;
    let key = CertifiedKey::new(vec![CertificateDer::from(cert_der)], Arc::new(HsmKey(hsm)));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(Fixed(Arc::new(key))));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A station's configuration: the service must present a certificate from the station CA; the
/// station presents `cert_der` (its certificate) with its private key.
///
/// # Errors
/// A [`TlsError`].
pub fn client_config(
    ca_der: &[u8],
    cert_der: &[u8],
    key: &SecretKeyDer,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let verifier =
        WebPkiServerVerifier::builder_with_provider(roots(ca_der)?, Arc::clone(&provider))
            .build()
            .map_err(|e| TlsError::Anchor(e.to_string()))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.secret_pkcs8_der().to_vec()));
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(vec![CertificateDer::from(cert_der.to_vec())], key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
