//! The same device identities in standard mutual TLS, with rustls on the aws-lc-rs provider.
//!
//! - [`DeviceSigningKey`]: a rustls `SigningKey` whose signatures are made by the device's sign
//!   command: the handshake's CertificateVerify is signed inside the part, and no private key
//!   exists in memory.
//! - [`TlsIdentity`]: a device identity as a rustls client or server certificate, trusting only
//!   the root from the device's own storage.
//! - [`OemClientVerifier`]: a `ClientCertVerifier` that requires a chain to the pinned OEM root
//!   (with the OEM's CRLs when given) and, when asked, the device EKU.
//! - [`server_config`]: the OEM update server's identity, an ordinary key pair issued by the OEM
//!   CA, verifying device clients with an [`OemClientVerifier`].

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::{CertifiedKey, SigningKey, SingleCertAndKey};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureAlgorithm, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, SubjectPublicKeyInfoDer, UnixTime};
use trustfab_device::{Device, SlotId};
use trustfab_pki::{validate, Policy, Purpose};

use crate::identity::Identity;
use crate::Error;

/// The one crypto provider trustfab uses: aws-lc-rs.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A signing key inside a device: rustls asks it to sign, it asks the device.
pub struct DeviceSigningKey<D> {
    device: Arc<Mutex<D>>,
    slot: SlotId,
    spki: Vec<u8>,
}

impl<D> fmt::Debug for DeviceSigningKey<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceSigningKey")
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

impl<D: Device + 'static> SigningKey for DeviceSigningKey<D> {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        // The part signs ECDSA P-256 over SHA-256 (ATECC608 Sign, PSA ECDSA): nothing else.
        offered
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| {
                Box::new(DeviceSigner {
                    device: Arc::clone(&self.device),
                    slot: self.slot,
                }) as Box<dyn rustls::sign::Signer>
            })
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.spki.as_slice()))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

struct DeviceSigner<D> {
    device: Arc<Mutex<D>>,
    slot: SlotId,
}

impl<D> fmt::Debug for DeviceSigner<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceSigner")
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

impl<D: Device + 'static> rustls::sign::Signer for DeviceSigner<D> {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let mut device = self.device.lock().unwrap_or_else(PoisonError::into_inner);
        // sign_challenge hashes with SHA-256 and returns DER: what TLS wants for
        // ecdsa_secp256r1_sha256 (RFC 8446 §4.2.3).
        device
            .sign_challenge(self.slot, message)
            .map_err(|e| rustls::Error::General(format!("device signature: {e}")))
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

/// A device identity for TLS: the device (shared with the signing key), its chain, and the root
/// from its own storage.
pub struct TlsIdentity<D> {
    device: Arc<Mutex<D>>,
    certified: Arc<CertifiedKey>,
    root: CertificateDer<'static>,
}

impl<D> fmt::Debug for TlsIdentity<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity").finish_non_exhaustive()
    }
}

impl<D: Device + 'static> TlsIdentity<D> {
    /// Turns a loaded [`Identity`] (key checked against the certificate) into a TLS identity.
    ///
    /// # Errors
    /// A device error reading the public key.
    pub fn new(identity: Identity<D>) -> Result<Self, Error> {
        let slot = identity.slots().key;
        let chain: Vec<CertificateDer<'static>> = identity
            .chain()
            .iter()
            .map(|c| CertificateDer::from(c.clone()))
            .collect();
        let root = CertificateDer::from(identity.root().to_vec());
        let mut device = identity.into_device();
        let spki = device.public_key(slot)?.to_spki_der();
        let device = Arc::new(Mutex::new(device));
        let key = DeviceSigningKey {
            device: Arc::clone(&device),
            slot,
            spki,
        };
        Ok(Self {
            device,
            certified: Arc::new(CertifiedKey::new(chain, Arc::new(key))),
            root,
        })
    }

    /// The OEM root from the device's own storage.
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
    }

    /// The device, for other commands between handshakes.
    pub fn device(&self) -> &Arc<Mutex<D>> {
        &self.device
    }

    /// A client configuration: presents the device certificate (signed by the device) and
    /// trusts only the root in the device's storage for the server.
    ///
    /// # Errors
    /// When rustls refuses the configuration.
    pub fn client_config(&self) -> Result<ClientConfig, Error> {
        let mut roots = RootCertStore::empty();
        roots.add(self.root.clone())?;
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| rustls::Error::General(format!("server verifier: {e}")))?;
        Ok(ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(Arc::clone(
                &self.certified,
            )))))
    }

    /// A server configuration: presents the device certificate (signed by the device) and
    /// requires a client certificate that `verifier` accepts.
    ///
    /// # Errors
    /// When rustls refuses the configuration.
    pub fn server_config(&self, verifier: Arc<OemClientVerifier>) -> Result<ServerConfig, Error> {
        Ok(ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(Arc::clone(
                &self.certified,
            )))))
    }
}

/// The OEM update server's configuration: its certificate chain and ordinary key pair (PKCS#8),
/// requiring device clients that `verifier` accepts.
///
/// # Errors
/// When rustls refuses the key or the configuration.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    verifier: Arc<OemClientVerifier>,
) -> Result<ServerConfig, Error> {
    Ok(ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?)
}

/// The OEM update server (or any party with an ordinary key pair) as a TLS client of a device
/// server: presents `chain`/`key`, trusts only `root`.
///
/// # Errors
/// When rustls refuses the key or the configuration.
pub fn client_config(
    root: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ClientConfig, Error> {
    let mut roots = RootCertStore::empty();
    roots.add(root)?;
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?)
}

/// Requires a client chain to the pinned OEM root: path, validity, clientAuth when the
/// certificate has an EKU, revocation from the OEM's CRLs when given, and the device EKU when
/// one is named.
#[derive(Debug)]
pub struct OemClientVerifier {
    root: Vec<u8>,
    hints: Vec<DistinguishedName>,
    crls: Vec<Vec<u8>>,
    device_eku: Option<x509_parser::oid_registry::Oid<'static>>,
    provider: Arc<CryptoProvider>,
}

impl OemClientVerifier {
    /// A verifier pinned to `root` (DER), with the OEM's `crls`, requiring `device_eku` (OID
    /// arcs, as a template's `extended_key_usage` names it) when given.
    ///
    /// # Errors
    /// When the root does not parse as a trust anchor, or the OID is not valid.
    pub fn new(root: &[u8], crls: Vec<Vec<u8>>, device_eku: Option<&[u64]>) -> Result<Self, Error> {
        let der = CertificateDer::from(root);
        let anchor = webpki::anchor_from_trusted_cert(&der).map_err(|_| Error::InvalidChain)?;
        let hints = vec![DistinguishedName::in_sequence(anchor.subject.as_ref())];
        let device_eku = device_eku
            .map(|arcs| {
                x509_parser::oid_registry::Oid::from(arcs)
                    .map_err(|_| Error::Crypto("device EKU is not a valid OID"))
            })
            .transpose()?;
        Ok(Self {
            root: root.to_vec(),
            hints,
            crls,
            device_eku,
            provider: provider(),
        })
    }

    fn has_device_eku(&self, der: &[u8]) -> bool {
        let Some(want) = &self.device_eku else {
            return true;
        };
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return false;
        };
        matches!(cert.extended_key_usage(), Ok(Some(eku)) if eku.value.other.contains(want))
    }
}

impl ClientCertVerifier for OemClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let intermediates: Vec<Vec<u8>> = intermediates.iter().map(|c| c.to_vec()).collect();
        let policy = Policy {
            root: &self.root,
            intermediates: &intermediates,
            crls: &self.crls,
            now: trustfab_types::UnixTime(now.as_secs()),
            purpose: Purpose::ClientAuth,
        };
        validate(end_entity, &policy).map_err(|e| {
            rustls::Error::InvalidCertificate(match e {
                trustfab_pki::Error::Invalid(w) => match w {
                    webpki::Error::UnknownIssuer => CertificateError::UnknownIssuer,
                    webpki::Error::CertRevoked => CertificateError::Revoked,
                    webpki::Error::CertExpired { .. } => CertificateError::Expired,
                    webpki::Error::CertNotValidYet { .. } => CertificateError::NotValidYet,
                    _ => CertificateError::ApplicationVerificationFailure,
                },
                _ => CertificateError::BadEncoding,
            })
        })?;
        if !self.has_device_eku(end_entity) {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::InvalidPurpose,
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
