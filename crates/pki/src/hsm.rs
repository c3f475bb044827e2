//! The HSM identity: what makes one HSM at a programming center nameable and targetable.
//!
//! An HSM has two key pairs made inside it: an identity key (signs reports and ledger
//! checkpoints, and its certification request) and a key-transport key (ECDH only: packages are
//! wrapped to it). `hsm init` produces a [`HsmRequest`]: a PKCS#10 request for the identity key
//! plus the key-transport public key, bound to it by an identity-key signature. The vendor checks
//! both and issues two certificates with the same subject (`serialNumber` = HSM id): identity
//! (digitalSignature) and key transport (keyAgreement). An OEM validates both to the pinned vendor
//! root before it wraps anything for that HSM ([`HsmIdentity::validate`]).

use aws_lc_rs::digest::{digest, SHA256};
use rcgen::{CertificateParams, DistinguishedName, DnType, DnValue, IsCa, KeyUsagePurpose};
use trustfab_types::{HsmId, Serial, UnixTime};
use x509_parser::oid_registry::OID_X509_SERIALNUMBER;
use x509_parser::prelude::FromDer as _;

use crate::issue::{rcgen_serial, to_time, Issuer};
use crate::key::{RcgenPublicKey, RcgenSigner};
use crate::{pem, validate, Error, Policy, Purpose};
use crate::{PublicKey, Signer};

const OID_AT_SERIAL_NUMBER: &[u64] = &[2, 5, 4, 5];
const BINDING_LABEL: &[u8] = b"trustfab-hsm-kt-binding-v1";
/// PEM label of the key-transport binding signature in a request bundle.
pub const BINDING_PEM_LABEL: &str = "TRUSTFAB KT BINDING";

/// Checks an HSM id by the rule of [`HsmId`]: 1 to 64 of `[A-Za-z0-9._-]`.
fn check_hsm_id(id: &str) -> Result<(), Error> {
    HsmId::new(id)
        .map(drop)
        .map_err(|_| Error::BadCertificate(format!("HSM id {id:?} is not 1-64 of [A-Za-z0-9._-]")))
}

fn binding_message(hsm_id: &str, kt: &PublicKey) -> Vec<u8> {
    let mut m = BINDING_LABEL.to_vec();
    m.push(0);
    m.extend_from_slice(hsm_id.as_bytes());
    m.push(0);
    m.extend_from_slice(&kt.to_spki_der());
    m
}

fn subject(hsm_id: &str, cn: &str) -> Result<DistinguishedName, Error> {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(
        DnType::CustomDnType(OID_AT_SERIAL_NUMBER.to_vec()),
        DnValue::PrintableString(
            rcgen::string::PrintableString::try_from(hsm_id)
                .map_err(|_| Error::BadCertificate("HSM id is not printable".into()))?,
        ),
    );
    Ok(dn)
}

/// What `hsm init` hands to the vendor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HsmRequest {
    /// The HSM's unique id.
    pub hsm_id: String,
    /// The identity public key (from the PKCS#10 request, whose self-signature was checked).
    pub identity_key: PublicKey,
    /// The key-transport public key.
    pub kt_key: PublicKey,
    csr_der: Vec<u8>,
    binding: Vec<u8>,
}

impl HsmRequest {
    /// Builds a request: a PKCS#10 request signed by the identity key, and the key-transport key
    /// bound to it by an identity-key signature.
    ///
    /// # Errors
    /// When the id is invalid or the identity key fails to sign.
    pub fn new(hsm_id: &str, identity: &dyn Signer, kt_key: &PublicKey) -> Result<Self, Error> {
        check_hsm_id(hsm_id)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(hsm_id, &format!("HSM {hsm_id}"))?;
        let csr = params.serialize_request(&RcgenSigner(identity))?;
        let binding = identity.sign_der(&binding_message(hsm_id, kt_key))?;
        Ok(Self {
            hsm_id: hsm_id.to_owned(),
            identity_key: PublicKey::from_point(identity.curve(), identity.public_point())?,
            kt_key: kt_key.clone(),
            csr_der: csr.der().to_vec(),
            binding,
        })
    }

    /// The request as a PEM bundle: CERTIFICATE REQUEST, PUBLIC KEY, TRUSTFAB KT BINDING.
    pub fn to_pem(&self) -> String {
        let mut s = pem::encode("CERTIFICATE REQUEST", &self.csr_der);
        s.push_str(&pem::encode("PUBLIC KEY", &self.kt_key.to_spki_der()));
        s.push_str(&pem::encode(BINDING_PEM_LABEL, &self.binding));
        s
    }

    /// Parses a PEM bundle and checks both signatures: the request's self-signature (proof of
    /// the identity key) and the binding of the key-transport key to it.
    ///
    /// # Errors
    /// When a part is missing or malformed, or a signature does not verify.
    pub fn from_pem(text: &str) -> Result<Self, Error> {
        let csr_der = pem::decode_one(text, "CERTIFICATE REQUEST")?;
        let kt_key = PublicKey::from_spki_der(&pem::decode_one(text, "PUBLIC KEY")?)?;
        let binding = pem::decode_one(text, BINDING_PEM_LABEL)?;
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&csr_der)
                .map_err(|e| Error::BadCertificate(format!("certification request: {e}")))?;
        csr.verify_signature().map_err(|_| {
            Error::BadCertificate("certification request signature does not verify".into())
        })?;
        let identity_key =
            PublicKey::from_spki_der(csr.certification_request_info.subject_pki.raw)?;
        let hsm_id = csr
            .certification_request_info
            .subject
            .iter_by_oid(&OID_X509_SERIALNUMBER)
            .next()
            .and_then(|a| a.as_str().ok())
            .ok_or_else(|| Error::BadCertificate("request has no serialNumber (HSM id)".into()))?
            .to_owned();
        check_hsm_id(&hsm_id)?;
        identity_key
            .verify(&binding_message(&hsm_id, &kt_key), &binding)
            .map_err(|_| {
                Error::BadCertificate(
                    "key-transport binding does not verify under the identity key".into(),
                )
            })?;
        Ok(Self {
            hsm_id,
            identity_key,
            kt_key,
            csr_der,
            binding,
        })
    }
}

/// The vendor's certification of one HSM: identity and key-transport certificates (DER).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HsmCertificates {
    /// The identity certificate (digitalSignature).
    pub identity: Vec<u8>,
    /// The key-transport certificate (keyAgreement).
    pub key_transport: Vec<u8>,
}

impl HsmCertificates {
    /// Both certificates as PEM, identity first: the bundle an OEM's wrapping tool takes.
    pub fn to_pem(&self) -> String {
        let mut s = pem::cert_pem(&self.identity);
        s.push_str(&pem::cert_pem(&self.key_transport));
        s
    }

    /// SHA-256 of the identity certificate (DER): the name a provisioning package gives its
    /// target HSM.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(digest(&SHA256, &self.identity).as_ref());
        fingerprint
    }

    /// Reads the bundle written by [`Self::to_pem`].
    ///
    /// # Errors
    /// When it does not hold exactly two certificates.
    pub fn from_pem(text: &str) -> Result<Self, Error> {
        let mut certs = pem::decode_all(text, "CERTIFICATE")?;
        if certs.len() != 2 {
            return Err(Error::PemCount {
                label: "CERTIFICATE".into(),
                found: certs.len(),
            });
        }
        let key_transport = certs.remove(1);
        let identity = certs.remove(0);
        Ok(Self {
            identity,
            key_transport,
        })
    }
}

/// Issues the identity and key-transport certificates for a checked request, from the vendor CA.
///
/// # Errors
/// When the validity is out of range or signing fails.
pub fn certify_hsm(
    req: &HsmRequest,
    vendor: &Issuer<'_>,
    serials: (&Serial, &Serial),
    now: UnixTime,
    days: u32,
) -> Result<HsmCertificates, Error> {
    let build = |cn: String, usage: KeyUsagePurpose, key: &PublicKey, serial: &Serial| {
        let mut p = CertificateParams::default();
        p.distinguished_name = subject(&req.hsm_id, &cn)?;
        p.serial_number = Some(rcgen_serial(serial));
        p.not_before = to_time(now)?;
        p.not_after = to_time(UnixTime(now.0 + u64::from(days) * 86_400))?;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![usage];
        p.use_authority_key_identifier_extension = true;
        Ok::<_, Error>(
            p.signed_by(&RcgenPublicKey(key), vendor.rcgen())?
                .der()
                .to_vec(),
        )
    };
    Ok(HsmCertificates {
        identity: build(
            format!("HSM {}", req.hsm_id),
            KeyUsagePurpose::DigitalSignature,
            &req.identity_key,
            serials.0,
        )?,
        key_transport: build(
            format!("HSM {} key transport", req.hsm_id),
            KeyUsagePurpose::KeyAgreement,
            &req.kt_key,
            serials.1,
        )?,
    })
}

/// An HSM identity validated to the vendor root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HsmIdentity {
    /// The HSM's unique id (subject serialNumber of both certificates).
    pub hsm_id: String,
    /// The identity key.
    pub identity_key: PublicKey,
    /// The key-transport key: packages for this HSM are wrapped to it.
    pub kt_key: PublicKey,
    /// SHA-256 of the identity certificate (DER): how a package names its target.
    pub fingerprint: [u8; 32],
}

fn subject_id_and_key(der: &[u8]) -> Result<(String, PublicKey, u16), Error> {
    let (_, c) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| Error::BadCertificate(e.to_string()))?;
    let id = c
        .subject()
        .iter_by_oid(&OID_X509_SERIALNUMBER)
        .next()
        .and_then(|a| a.as_str().ok())
        .ok_or_else(|| Error::BadCertificate("no serialNumber (HSM id) in the subject".into()))?
        .to_owned();
    let ku = c
        .key_usage()
        .map_err(|e| Error::BadCertificate(e.to_string()))?
        .map_or(0, |k| k.value.flags);
    let key = PublicKey::from_spki_der(c.public_key().raw)?;
    Ok((id, key, ku))
}

impl HsmIdentity {
    /// Validates both certificates to the pinned vendor root at `now` and reads the identity.
    ///
    /// # Errors
    /// When either certificate does not validate, they name different HSMs, or their key usages
    /// are not identity = digitalSignature and key transport = keyAgreement.
    pub fn validate(
        certs: &HsmCertificates,
        vendor_root: &[u8],
        now: UnixTime,
    ) -> Result<Self, Error> {
        let policy = Policy {
            root: vendor_root,
            intermediates: &[],
            crls: &[],
            now,
            purpose: Purpose::ClientAuth,
        };
        validate(&certs.identity, &policy)?;
        validate(&certs.key_transport, &policy)?;
        let (id, identity_key, id_ku) = subject_id_and_key(&certs.identity)?;
        let (kt_id, kt_key, kt_ku) = subject_id_and_key(&certs.key_transport)?;
        if id != kt_id {
            return Err(Error::BadCertificate(format!(
                "identity names HSM {id} but the key-transport certificate names {kt_id}"
            )));
        }
        // x509-parser KeyUsage flags: bit 0 digitalSignature, bit 4 keyAgreement.
        if id_ku & 1 == 0 || kt_ku & (1 << 4) == 0 {
            return Err(Error::BadCertificate(
                "identity must have digitalSignature and key transport keyAgreement".into(),
            ));
        }
        let fingerprint = certs.fingerprint();
        Ok(Self {
            hsm_id: id,
            identity_key,
            kt_key,
            fingerprint,
        })
    }
}
