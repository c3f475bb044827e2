//! Certificate profiles and issuance: CA certificates (vendor root, OEM root, device CA, HSM
//! identity) and device certificates built from a [`Template`]. Pure: no clock, no RNG, no I/O;
//! the same inputs give the same TBSCertificate, byte for byte.

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SerialNumber,
};
use time::OffsetDateTime;
use trustfab_types::{Serial, UnixTime};
use yasna::models::ObjectIdentifier;
use yasna::Tag;

use crate::key::{RcgenPublicKey, RcgenSigner};
use crate::template::{Attr, Eku, KeyUsage, RenderInputs, Template, Validity};
use crate::Error;
use crate::{PublicKey, Signer};

/// id-ce-subjectAltName (RFC 5280 §4.2.1.6).
const OID_SUBJECT_ALT_NAME: &[u64] = &[2, 5, 29, 17];
/// id-on-hardwareModuleName (RFC 4108 §5).
const OID_HARDWARE_MODULE_NAME: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 8, 4];
/// X.520 serialNumber attribute.
const OID_AT_SERIAL_NUMBER: &[u64] = &[2, 5, 4, 5];

/// The moment RFC 5280 §4.1.2.5 gives for "no well-defined expiration date".
const NO_EXPIRY_UNIX: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z

pub(crate) fn to_time(t: UnixTime) -> Result<OffsetDateTime, Error> {
    let secs = i64::try_from(t.0).map_err(|_| Error::Time(t))?;
    OffsetDateTime::from_unix_timestamp(secs).map_err(|_| Error::Time(t))
}

pub(crate) fn add_days(t: UnixTime, days: u64) -> Result<OffsetDateTime, Error> {
    let end = days
        .checked_mul(86_400)
        .and_then(|s| t.0.checked_add(s))
        .filter(|s| i64::try_from(*s).is_ok_and(|s| s <= NO_EXPIRY_UNIX))
        .ok_or(Error::Validity("ends after 9999-12-31"))?;
    to_time(UnixTime(end))
}

pub(crate) fn rcgen_serial(serial: &Serial) -> SerialNumber {
    // rcgen writes the bytes as the INTEGER's content; a high bit needs a leading zero octet to
    // keep the serial positive (RFC 5280 §4.1.2.2).
    let b = serial.as_be_bytes();
    if b.first().is_some_and(|f| f & 0x80 != 0) {
        let mut v = Vec::with_capacity(b.len() + 1);
        v.push(0);
        v.extend_from_slice(b);
        SerialNumber::from_slice(&v)
    } else {
        SerialNumber::from_slice(b)
    }
}

/// A CA certificate and the key that signs with it.
pub struct Issuer<'a> {
    cert_der: Vec<u8>,
    inner: rcgen::Issuer<'static, RcgenSigner<'a>>,
}

impl std::fmt::Debug for Issuer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer").finish_non_exhaustive()
    }
}

impl<'a> Issuer<'a> {
    /// Pairs a CA certificate with its signing key.
    ///
    /// No validation of the certificate is done beyond parsing it and checking that `key` is
    /// the key it certifies: callers load certificates they made or already validated.
    ///
    /// # Errors
    /// When the certificate does not parse or certifies another key.
    pub fn new(cert_der: &[u8], key: &'a dyn Signer) -> Result<Self, Error> {
        let (_, x509) = x509_parser::parse_x509_certificate(cert_der)
            .map_err(|e| Error::BadCertificate(e.to_string()))?;
        if x509.public_key().subject_public_key.data.as_ref() != key.public_point() {
            return Err(Error::IssuerKeyMismatch);
        }
        let der = rustls_pki_types::CertificateDer::from(cert_der);
        let inner = rcgen::Issuer::from_ca_cert_der(&der, RcgenSigner(key))?;
        Ok(Self {
            cert_der: cert_der.to_vec(),
            inner,
        })
    }

    /// The issuer's certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    pub(crate) fn rcgen(&self) -> &rcgen::Issuer<'static, RcgenSigner<'a>> {
        &self.inner
    }
}

/// The role a CA certificate plays; it fixes the profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaRole {
    /// The maker of the provisioning system: certifies genuine HSMs. Self-signed, pathLen 0.
    VendorRoot,
    /// The OEM's root of trust. Self-signed; pathLen 1 so it may certify one device CA.
    OemRoot,
    /// The OEM's intermediate that signs device certificates: pathLen 0.
    DeviceCa,
}

/// What goes into a CA certificate.
#[derive(Clone, Debug)]
pub struct CaSpec {
    /// The role.
    pub role: CaRole,
    /// Subject commonName.
    pub common_name: String,
    /// Subject organizationName.
    pub organization: String,
    /// Serial number.
    pub serial: Serial,
    /// notBefore.
    pub not_before: UnixTime,
    /// Days of validity.
    pub days: u32,
}

fn ca_params(spec: &CaSpec) -> Result<CertificateParams, Error> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, spec.organization.as_str());
    dn.push(DnType::CommonName, spec.common_name.as_str());
    p.distinguished_name = dn;
    p.serial_number = Some(rcgen_serial(&spec.serial));
    p.not_before = to_time(spec.not_before)?;
    p.not_after = add_days(spec.not_before, u64::from(spec.days))?;
    p.is_ca = IsCa::Ca(match spec.role {
        CaRole::OemRoot => BasicConstraints::Constrained(1),
        CaRole::VendorRoot | CaRole::DeviceCa => BasicConstraints::Constrained(0),
    });
    // RFC 5280 §4.2.1.3: a CA key signs certificates and CRLs; nothing else.
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.use_authority_key_identifier_extension = spec.role == CaRole::DeviceCa;
    Ok(p)
}

/// A self-signed root CA certificate (vendor or OEM root), DER.
///
/// # Errors
/// When the spec is out of range or the key fails to sign.
pub fn self_signed_ca(spec: &CaSpec, key: &dyn Signer) -> Result<Vec<u8>, Error> {
    let params = ca_params(spec)?;
    Ok(params.self_signed(&RcgenSigner(key))?.der().to_vec())
}

/// An intermediate CA certificate for `subject_key`, signed by `issuer`, DER.
///
/// # Errors
/// When the spec is out of range or the issuer fails to sign.
pub fn intermediate_ca(
    spec: &CaSpec,
    subject_key: &PublicKey,
    issuer: &Issuer<'_>,
) -> Result<Vec<u8>, Error> {
    let params = ca_params(spec)?;
    Ok(params
        .signed_by(&RcgenPublicKey(subject_key), issuer.rcgen())?
        .der()
        .to_vec())
}

/// The inputs of one device certificate besides the template.
#[derive(Clone, Copy, Debug)]
pub struct DeviceRequest<'a> {
    /// Placeholder values (OEM, product, device UID, serial).
    pub inputs: RenderInputs<'a>,
    /// The device's public key, generated inside the device.
    pub public_key: &'a PublicKey,
    /// Issuance time: notBefore.
    pub now: UnixTime,
}

/// Builds the certificate parameters for one device from the template: pure and deterministic.
fn device_params(template: &Template, req: &DeviceRequest<'_>) -> Result<CertificateParams, Error> {
    template.serial.admits(req.inputs.serial)?;
    let r = template.render(&req.inputs)?;
    let mut p = CertificateParams::default();

    let mut dn = DistinguishedName::new();
    for (attr, value) in &r.subject {
        let (ty, val) = match attr {
            Attr::Country => (DnType::CountryName, printable(value)?),
            Attr::State => (
                DnType::StateOrProvinceName,
                DnValue::Utf8String(value.clone()),
            ),
            Attr::Locality => (DnType::LocalityName, DnValue::Utf8String(value.clone())),
            Attr::Organization => (DnType::OrganizationName, DnValue::Utf8String(value.clone())),
            Attr::OrganizationalUnit => (
                DnType::OrganizationalUnitName,
                DnValue::Utf8String(value.clone()),
            ),
            Attr::CommonName => (DnType::CommonName, DnValue::Utf8String(value.clone())),
            // X.520: serialNumber is a PrintableString (IEEE 802.1AR §8.6).
            Attr::SerialNumber => (
                DnType::CustomDnType(OID_AT_SERIAL_NUMBER.to_vec()),
                printable(value)?,
            ),
        };
        dn.push(ty, val);
    }
    p.distinguished_name = dn;

    if r.hardware_module_name.is_some() || !r.uris.is_empty() || !r.dns_names.is_empty() {
        let san = yasna::construct_der(|w| {
            w.write_sequence(|w| {
                if let Some((hw_type, hw_serial)) = &r.hardware_module_name {
                    // GeneralName otherName [0] IMPLICIT OtherName (RFC 5280 §4.2.1.6);
                    // value [0] EXPLICIT HardwareModuleName (RFC 4108 §5).
                    w.next().write_tagged_implicit(Tag::context(0), |w| {
                        w.write_sequence(|w| {
                            w.next()
                                .write_oid(&ObjectIdentifier::from_slice(OID_HARDWARE_MODULE_NAME));
                            w.next().write_tagged(Tag::context(0), |w| {
                                w.write_sequence(|w| {
                                    w.next().write_oid(&ObjectIdentifier::from_slice(hw_type));
                                    w.next().write_bytes(hw_serial);
                                });
                            });
                        });
                    });
                }
                for d in &r.dns_names {
                    w.next()
                        .write_tagged_implicit(Tag::context(2), |w| w.write_ia5_string(d));
                }
                for u in &r.uris {
                    w.next()
                        .write_tagged_implicit(Tag::context(6), |w| w.write_ia5_string(u));
                }
            });
        });
        // RFC 5280 §4.2.1.6: non-critical, since the subject name is never empty.
        p.custom_extensions
            .push(CustomExtension::from_oid_content(OID_SUBJECT_ALT_NAME, san));
    }

    p.serial_number = Some(rcgen_serial(req.inputs.serial));
    p.not_before = to_time(req.now)?;
    p.not_after = match template.validity {
        Validity::Days(d) => add_days(req.now, u64::from(d))?,
        Validity::NoExpiry => to_time(UnixTime(NO_EXPIRY_UNIX.unsigned_abs()))?,
    };
    if p.not_after <= p.not_before {
        return Err(Error::Validity("notAfter is not after notBefore"));
    }
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = template
        .key_usage
        .iter()
        .map(|k| match k {
            KeyUsage::DigitalSignature => KeyUsagePurpose::DigitalSignature,
            KeyUsage::ContentCommitment => KeyUsagePurpose::ContentCommitment,
            KeyUsage::KeyAgreement => KeyUsagePurpose::KeyAgreement,
            KeyUsage::KeyCertSign => KeyUsagePurpose::KeyCertSign,
            KeyUsage::CrlSign => KeyUsagePurpose::CrlSign,
        })
        .collect();
    p.extended_key_usages = template
        .extended_key_usage
        .iter()
        .map(|e| match e {
            Eku::ClientAuth => ExtendedKeyUsagePurpose::ClientAuth,
            Eku::ServerAuth => ExtendedKeyUsagePurpose::ServerAuth,
            Eku::Other(arcs) => ExtendedKeyUsagePurpose::Other(arcs.clone()),
        })
        .collect();
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

fn printable(v: &str) -> Result<DnValue, Error> {
    rcgen::string::PrintableString::try_from(v)
        .map(DnValue::PrintableString)
        .map_err(|_| Error::Render {
            field: "subject".into(),
            problem: format!("{v:?} is not a PrintableString"),
        })
}

/// Issues one device certificate from `template`, signed by `issuer`; returns DER.
///
/// The caller supplies a public key and placeholder values, never a certificate body: every
/// field of the certificate comes from the template (DESIGN.md property 3).
///
/// # Errors
/// When a rendered value is refused, the serial is outside the template's scheme, the validity
/// is out of range, or the issuer fails to sign.
pub fn issue_device(
    template: &Template,
    req: &DeviceRequest<'_>,
    issuer: &Issuer<'_>,
) -> Result<Vec<u8>, Error> {
    let params = device_params(template, req)?;
    Ok(params
        .signed_by(&RcgenPublicKey(req.public_key), issuer.rcgen())?
        .der()
        .to_vec())
}
