//! The certificates of the HSM network service, whose stations (programming machines)
//! authenticate with mutual TLS.
//!
//! This module owns the service's profiles and the one extension they add:
//! - the **station CA** ([`station_ca`]): self-signed, `CA:true` pathLen 0, keyCertSign and
//!   cRLSign, subject `O=trustfab, CN=station CA, serialNumber=<HSM id>`; its key lives in the
//!   HSM's token and reaches this module only as a [`Signer`];
//! - the **station request** ([`StationRequest`]): `station init`'s PKCS#10 request, signed by
//!   the station's key, subject `CN=station <id>, serialNumber=<id>`;
//! - the **station certificate** ([`certify_station`]): that subject, SAN URI
//!   `urn:trustfab:station:<id>`, digitalSignature, clientAuth only, `CA:false`, and the
//!   station's [`StationGrant`] in a non-critical extension (OID `1.3.6.1.4.1.55555.3.1`);
//! - the service's **TLS server certificate** ([`service_certificate`]): `CN=trustfab HSM
//!   service`, SAN DNS names and IP addresses, digitalSignature, serverAuth only, `CA:false`;
//! - the grant extension's DER ([`encode_grant`], [`decode_grant`]), size-limited and read
//!   only in its canonical form:
//!
//! ```text
//! StationGrant ::= SEQUENCE {
//!     version     INTEGER (1),
//!     products    SEQUENCE SIZE (1..64) OF UTF8String,  -- "oem/product"
//!     maxDevices  [0] IMPLICIT INTEGER OPTIONAL,
//!     maxPerDay   [1] IMPLICIT INTEGER OPTIONAL }
//! ```
//!
//! [`parse_station_cert`] reads a station certificate back (id, serial, notAfter, grant,
//! fingerprint). It validates no path: the service's TLS verifier does that with rustls-webpki,
//! to the station CA as its only anchor. Like the rest of the crate this module does no I/O and
//! keeps no clock: time is an argument.
//!
//! The subject serialNumber is an X.520 PrintableString, whose alphabet has no `_`: a station or
//! HSM id holding one is refused here with an error saying so, rather than encoded against
//! X.520.

use std::net::IpAddr;

use aws_lc_rs::digest::{digest, SHA256};
use rcgen::string::{Ia5String, PrintableString};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType,
};
use trustfab_types::{limits, HsmId, ProductKey, Serial, StationId, UnixTime};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{Oid, OID_X509_COMMON_NAME, OID_X509_SERIALNUMBER};
use x509_parser::prelude::{FromDer as _, GeneralName, X509Name};
use yasna::Tag;

use crate::issue::{add_days, rcgen_serial, to_time, Issuer};
use crate::key::{RcgenPublicKey, RcgenSigner};
use crate::{pem, Error, PublicKey, Signer};

/// The OID of the station grant extension.
pub const GRANT_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 55555, 3, 1];
/// [`GRANT_OID`] in dotted form, as x509-parser prints an extension's OID.
const GRANT_OID_TEXT: &str = "1.3.6.1.4.1.55555.3.1";
/// The grant version this build writes and reads.
const GRANT_VERSION: u64 = 1;
/// The prefix of a station certificate's SAN URI; the station id follows it.
pub const STATION_URI_PREFIX: &str = "urn:trustfab:station:";
/// The PEM label of a station request.
const REQUEST_PEM_LABEL: &str = "CERTIFICATE REQUEST";
/// Largest station request (PEM text) accepted.
const REQUEST_PEM_BYTES: usize = 16 * 1024;
/// X.520 serialNumber attribute.
const OID_AT_SERIAL_NUMBER: &[u64] = &[2, 5, 4, 5];
/// The service certificate's subject commonName.
const SERVICE_COMMON_NAME: &str = "trustfab HSM service";

/// What a station may do, carried in its certificate: the products it may program and,
/// optionally, how many devices in all and per day.
///
/// The fields are open; the limits (1 to [`Self::MAX_PRODUCTS`] products, none twice) are
/// checked when a certificate is made ([`certify_station`]) and when one is read
/// ([`decode_grant`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StationGrant {
    /// The products the station may program, as `oem/product`.
    pub products: Vec<ProductKey>,
    /// The most devices the station may program in all, if limited.
    pub max_devices: Option<u64>,
    /// The most devices the station may program in one day, if limited.
    pub max_per_day: Option<u64>,
}

impl StationGrant {
    /// The most products one grant lists.
    pub const MAX_PRODUCTS: usize = 64;
    /// The largest grant extension value (DER) [`decode_grant`] reads.
    pub const MAX_DER_BYTES: usize = 16 * 1024;

    /// Whether the grant lets the station program `product`.
    pub fn allows(&self, product: &ProductKey) -> bool {
        self.products.contains(product)
    }

    fn check(&self) -> Result<(), Error> {
        if self.products.is_empty() {
            return Err(Error::BadGrant("it lists no product".into()));
        }
        if self.products.len() > Self::MAX_PRODUCTS {
            return Err(Error::BadGrant(format!(
                "it lists {} products, the limit is {}",
                self.products.len(),
                Self::MAX_PRODUCTS
            )));
        }
        for (i, p) in self.products.iter().enumerate() {
            if self.products[..i].contains(p) {
                return Err(Error::BadGrant(format!("it lists product {p} twice")));
            }
        }
        Ok(())
    }
}

/// The grant's DER (the extension value). It writes whatever the grant holds; a grant outside
/// the limits of [`StationGrant`] encodes, but [`decode_grant`] and [`certify_station`] refuse it.
pub fn encode_grant(g: &StationGrant) -> Vec<u8> {
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_u64(GRANT_VERSION);
            w.next().write_sequence_of(|w| {
                for p in &g.products {
                    w.next().write_utf8_string(&p.to_string());
                }
            });
            if let Some(n) = g.max_devices {
                w.next()
                    .write_tagged_implicit(Tag::context(0), |w| w.write_u64(n));
            }
            if let Some(n) = g.max_per_day {
                w.next()
                    .write_tagged_implicit(Tag::context(1), |w| w.write_u64(n));
            }
        });
    })
}

/// The fields of a version-1 grant as read, before the products are checked.
struct RawGrant {
    products: Vec<String>,
    max_devices: Option<u64>,
    max_per_day: Option<u64>,
}

/// Reads a grant extension value (DER).
///
/// # Errors
/// [`Error::TooLarge`] above [`StationGrant::MAX_DER_BYTES`]; [`Error::BadGrant`] for a version
/// other than 1, bytes that are not the canonical DER of a version-1 grant, a product that is
/// not `oem/product`, no product, more than [`StationGrant::MAX_PRODUCTS`], or one twice.
pub fn decode_grant(der: &[u8]) -> Result<StationGrant, Error> {
    if der.len() > StationGrant::MAX_DER_BYTES {
        return Err(Error::TooLarge {
            what: "station grant",
            len: der.len(),
            limit: StationGrant::MAX_DER_BYTES,
        });
    }
    // The version is kept apart so that a grant of a later version is named as such even when
    // its body is one this build cannot read.
    let mut version = None;
    let parsed = yasna::parse_der(der, |r| {
        r.read_sequence(|r| {
            let v = r.next().read_u64()?;
            version = Some(v);
            if v != GRANT_VERSION {
                while r.read_optional(|r| r.read_der())?.is_some() {}
                return Ok(None);
            }
            let mut products = Vec::new();
            r.next().read_sequence_of(|r| {
                products.push(r.read_utf8string()?);
                Ok(())
            })?;
            let max_devices =
                r.read_optional(|r| r.read_tagged_implicit(Tag::context(0), |r| r.read_u64()))?;
            let max_per_day =
                r.read_optional(|r| r.read_tagged_implicit(Tag::context(1), |r| r.read_u64()))?;
            Ok(Some(RawGrant {
                products,
                max_devices,
                max_per_day,
            }))
        })
    });
    let raw = match (parsed, version) {
        (Ok(Some(raw)), _) => raw,
        (_, Some(v)) if v != GRANT_VERSION => {
            return Err(Error::BadGrant(format!(
                "version {v} is unknown (this build reads version {GRANT_VERSION})"
            )))
        }
        (Ok(None), _) => {
            return Err(Error::BadGrant(format!(
                "it is not a version-{GRANT_VERSION} grant"
            )))
        }
        (Err(e), _) => {
            return Err(Error::BadGrant(format!(
                "not the DER of a version-{GRANT_VERSION} grant ({e})"
            )))
        }
    };
    let products = raw
        .products
        .iter()
        .map(|s| ProductKey::parse(s).map_err(|e| Error::BadGrant(format!("product {s:?}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let grant = StationGrant {
        products,
        max_devices: raw.max_devices,
        max_per_day: raw.max_per_day,
    };
    grant.check()?;
    // One grant, one encoding: what was read must be what this build writes.
    if encode_grant(&grant) != der {
        return Err(Error::BadGrant("it is not in canonical DER".into()));
    }
    Ok(grant)
}

/// An id as a PrintableString subject serialNumber (X.520), or the reason it cannot be one.
fn serial_number_value(what: &str, id: &str) -> Result<DnValue, Error> {
    PrintableString::try_from(id)
        .map(DnValue::PrintableString)
        .map_err(|_| {
            Error::BadCertificate(format!(
                "{what} {id:?} cannot be a subject serialNumber: an X.520 PrintableString has \
                 no '_'"
            ))
        })
}

fn station_common_name(id: &StationId) -> String {
    format!("station {id}")
}

fn station_subject(id: &StationId) -> Result<DistinguishedName, Error> {
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        DnValue::Utf8String(station_common_name(id)),
    );
    dn.push(
        DnType::CustomDnType(OID_AT_SERIAL_NUMBER.to_vec()),
        serial_number_value("station id", id.as_str())?,
    );
    Ok(dn)
}

/// The single value of attribute `oid` in `name`, as text; `what` names it in the errors.
fn single_attribute<'a>(
    name: &'a X509Name<'a>,
    oid: &Oid<'a>,
    what: &str,
) -> Result<&'a str, Error> {
    let mut values = name.iter_by_oid(oid);
    let value = match (values.next(), values.next()) {
        (Some(v), None) => v,
        (None, _) => return Err(Error::BadCertificate(format!("the subject has no {what}"))),
        (Some(_), Some(_)) => {
            return Err(Error::BadCertificate(format!(
                "the subject has more than one {what}"
            )))
        }
    };
    value
        .as_str()
        .map_err(|_| Error::BadCertificate(format!("the subject's {what} is not a string")))
}

/// Sets notBefore and notAfter = notBefore + `days`.
fn set_validity(p: &mut CertificateParams, not_before: UnixTime, days: u32) -> Result<(), Error> {
    if days == 0 {
        return Err(Error::Validity(
            "0 days: notAfter would not be after notBefore",
        ));
    }
    p.not_before = to_time(not_before)?;
    p.not_after = add_days(not_before, u64::from(days))?;
    Ok(())
}

/// `station init`'s output: a PKCS#10 request signed by the station's key, subject
/// `CN=station <id>, serialNumber=<id>`.
///
/// Only the id and the public key are taken from it: [`certify_station`] builds every other
/// field itself, so nothing else a request asks for reaches a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StationRequest {
    /// The station's id (the subject serialNumber of the request).
    pub station_id: StationId,
    /// The station's public key (from the request, whose self-signature was checked).
    pub public_key: PublicKey,
    csr_der: Vec<u8>,
}

impl StationRequest {
    /// Builds and signs a request for `station_id` with the station's key.
    ///
    /// # Errors
    /// When the id holds a `_` (see the module's documentation) or the key fails to sign.
    pub fn new(station_id: &StationId, key: &dyn Signer) -> Result<Self, Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = station_subject(station_id)?;
        let csr = params.serialize_request(&RcgenSigner(key))?;
        Ok(Self {
            station_id: station_id.clone(),
            public_key: PublicKey::from_point(key.curve(), key.public_point())?,
            csr_der: csr.der().to_vec(),
        })
    }

    /// The request as PEM (`CERTIFICATE REQUEST`).
    pub fn to_pem(&self) -> String {
        pem::encode(REQUEST_PEM_LABEL, &self.csr_der)
    }

    /// Reads a request written by [`Self::to_pem`] and checks it: its self-signature (proof that
    /// the station holds the key), its station id, and that its commonName agrees with the id.
    ///
    /// # Errors
    /// [`Error::TooLarge`] above 16 KiB; [`Error::Pem`]/[`Error::PemCount`] without exactly one
    /// `CERTIFICATE REQUEST` block; [`Error::BadCertificate`] naming what is wrong with the
    /// request otherwise; the key's error for an unsupported public key.
    pub fn from_pem(text: &str) -> Result<Self, Error> {
        if text.len() > REQUEST_PEM_BYTES {
            return Err(Error::TooLarge {
                what: "station request",
                len: text.len(),
                limit: REQUEST_PEM_BYTES,
            });
        }
        let csr_der = pem::decode_one(text, REQUEST_PEM_LABEL)?;
        let (rest, csr) = X509CertificationRequest::from_der(&csr_der).map_err(|e| {
            Error::BadCertificate(format!("station request is not a PKCS#10 request: {e}"))
        })?;
        if !rest.is_empty() {
            return Err(Error::BadCertificate(
                "station request has bytes after its PKCS#10 request".into(),
            ));
        }
        csr.verify_signature().map_err(|_| {
            Error::BadCertificate(
                "station request signature does not verify under its own public key".into(),
            )
        })?;
        let info = &csr.certification_request_info;
        let id_text = single_attribute(
            &info.subject,
            &OID_X509_SERIALNUMBER,
            "serialNumber (station id)",
        )?;
        let station_id = StationId::new(id_text).map_err(|e| {
            Error::BadCertificate(format!("station request names station {id_text:?}: {e}"))
        })?;
        let cn = single_attribute(&info.subject, &OID_X509_COMMON_NAME, "commonName")?;
        let expected = station_common_name(&station_id);
        if cn != expected {
            return Err(Error::BadCertificate(format!(
                "station request commonName is {cn:?}, expected {expected:?}"
            )));
        }
        let public_key = PublicKey::from_spki_der(info.subject_pki.raw)?;
        Ok(Self {
            station_id,
            public_key,
            csr_der,
        })
    }
}

/// The station CA certificate (DER): self-signed by `key`, `CA:true` pathLen 0, keyCertSign and
/// cRLSign, subject `O=trustfab, CN=station CA, serialNumber=<hsm_id>`, valid from `not_before`
/// for `days`. The key is the HSM token's; the caller passes it as a [`Signer`].
///
/// # Errors
/// When the HSM id holds a `_`, the validity is empty or out of range, or the key fails to sign.
pub fn station_ca(
    hsm_id: &HsmId,
    serial: &Serial,
    not_before: UnixTime,
    days: u32,
    key: &dyn Signer,
) -> Result<Vec<u8>, Error> {
    issuing_ca(
        "station CA",
        ("HSM id", hsm_id.as_str()),
        serial,
        not_before,
        days,
        key,
    )
}

/// A self-signed CA of this module: `O=trustfab, CN=<cn>, serialNumber=<id>`, `CA:true`
/// pathLen 0, keyCertSign and cRLSign only (RFC 5280 §4.2.1.3: a CA key signs certificates and
/// CRLs; nothing else).
fn issuing_ca(
    cn: &str,
    (what, id): (&str, &str),
    serial: &Serial,
    not_before: UnixTime,
    days: u32,
    key: &dyn Signer,
) -> Result<Vec<u8>, Error> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "trustfab");
    dn.push(DnType::CommonName, cn);
    dn.push(
        DnType::CustomDnType(OID_AT_SERIAL_NUMBER.to_vec()),
        serial_number_value(what, id)?,
    );
    p.distinguished_name = dn;
    p.serial_number = Some(rcgen_serial(serial));
    set_validity(&mut p, not_before, days)?;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(p.self_signed(&RcgenSigner(key))?.der().to_vec())
}

/// A station certificate (DER) for a checked request, signed by `ca` (the station CA): subject
/// `CN=station <id>, serialNumber=<id>`, SAN URI `urn:trustfab:station:<id>`, digitalSignature,
/// clientAuth only, `CA:false`, AKI, and `grant` in its extension; valid from `not_before` for
/// `days`.
///
/// # Errors
/// [`Error::BadGrant`] for a grant outside its limits; otherwise when the validity is empty or
/// out of range or the CA key fails to sign.
pub fn certify_station(
    req: &StationRequest,
    grant: &StationGrant,
    serial: &Serial,
    not_before: UnixTime,
    days: u32,
    ca: &Issuer<'_>,
) -> Result<Vec<u8>, Error> {
    grant.check()?;
    let mut p = client_leaf(
        station_subject(&req.station_id)?,
        &format!("{STATION_URI_PREFIX}{}", req.station_id),
        serial,
        not_before,
        days,
    )?;
    // Non-critical: a verifier that does not know it still validates the path; the service
    // reads it with `parse_station_cert`.
    p.custom_extensions.push(CustomExtension::from_oid_content(
        GRANT_OID,
        encode_grant(grant),
    ));
    Ok(p.signed_by(&RcgenPublicKey(&req.public_key), ca.rcgen())?
        .der()
        .to_vec())
}

/// The SAN URI prefix of an operator certificate: `urn:trustfab:operator:<name>`.
pub const OPERATOR_URI_PREFIX: &str = "urn:trustfab:operator:";

/// The center's operator CA certificate (DER): self-signed by `key`, `CA:true` pathLen 0,
/// keyCertSign and cRLSign, subject `O=trustfab, CN=operator CA, serialNumber=<center>`, valid
/// from `not_before` for `days`. The center makes and keeps it: its operators read the HSM
/// service's metrics and console, and nothing else (the service tells them from stations by
/// which CA their certificate validates to).
///
/// # Errors
/// When the center id holds a `_`, the validity is empty or out of range, or the key fails to
/// sign.
pub fn operator_ca(
    center: &StationId,
    serial: &Serial,
    not_before: UnixTime,
    days: u32,
    key: &dyn Signer,
) -> Result<Vec<u8>, Error> {
    issuing_ca(
        "operator CA",
        ("center id", center.as_str()),
        serial,
        not_before,
        days,
        key,
    )
}

/// An operator certificate (DER) for `key`, signed by `ca` (the operator CA): subject
/// `CN=operator <name>, serialNumber=<name>`, SAN URI `urn:trustfab:operator:<name>`,
/// digitalSignature, clientAuth only, `CA:false`, AKI, no grant; valid from `not_before` for
/// `days`. Names follow the rules of station ids.
///
/// # Errors
/// When the name holds a `_`, the validity is empty or out of range, or the CA key fails to
/// sign.
pub fn certify_operator(
    name: &StationId,
    key: &PublicKey,
    serial: &Serial,
    not_before: UnixTime,
    days: u32,
    ca: &Issuer<'_>,
) -> Result<Vec<u8>, Error> {
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        DnValue::Utf8String(format!("operator {name}")),
    );
    dn.push(
        DnType::CustomDnType(OID_AT_SERIAL_NUMBER.to_vec()),
        serial_number_value("operator name", name.as_str())?,
    );
    let p = client_leaf(
        dn,
        &format!("{OPERATOR_URI_PREFIX}{name}"),
        serial,
        not_before,
        days,
    )?;
    Ok(p.signed_by(&RcgenPublicKey(key), ca.rcgen())?
        .der()
        .to_vec())
}

/// A TLS client leaf of this module: `subject`, one SAN URI, digitalSignature, clientAuth
/// only, `CA:false`, AKI; valid from `not_before` for `days`.
fn client_leaf(
    subject: DistinguishedName,
    uri: &str,
    serial: &Serial,
    not_before: UnixTime,
    days: u32,
) -> Result<CertificateParams, Error> {
    let mut p = CertificateParams::default();
    p.distinguished_name = subject;
    p.subject_alt_names = vec![SanType::URI(Ia5String::try_from(uri)?)];
    p.serial_number = Some(rcgen_serial(serial));
    set_validity(&mut p, not_before, days)?;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

/// One service name as a SAN entry: an IP address literal, or a DNS name in the preferred name
/// syntax (RFC 5280 §4.2.1.6, RFC 1034 §3.5: letters, digits and `-` in dot-separated labels).
fn service_name(name: &str) -> Result<SanType, Error> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let is_dns = rustls_pki_types::DnsName::try_from(name).is_ok()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.ends_with('.');
    if !is_dns {
        return Err(Error::BadCertificate(format!(
            "service name {name:?} is neither an IP address nor a DNS name (letters, digits and \
             '-' in dot-separated labels)"
        )));
    }
    Ok(SanType::DnsName(Ia5String::try_from(name)?))
}

/// The HSM service's TLS server certificate (DER) for `key`, signed by `ca`: `CN=trustfab HSM
/// service`, SAN with every name of `names` (each a DNS name or an IP address literal),
/// digitalSignature, serverAuth only, `CA:false`, AKI; valid from `not_before` for `days`.
///
/// # Errors
/// [`Error::BadCertificate`] when `names` is empty, holds a name that is neither a DNS name nor
/// an IP address, or holds one twice; otherwise when the validity is empty or out of range or
/// the CA key fails to sign.
pub fn service_certificate(
    names: &[String],
    key: &PublicKey,
    serial: &Serial,
    not_before: UnixTime,
    days: u32,
    ca: &Issuer<'_>,
) -> Result<Vec<u8>, Error> {
    if names.is_empty() {
        return Err(Error::BadCertificate(
            "a service certificate needs at least one DNS name or IP address".into(),
        ));
    }
    let mut sans: Vec<SanType> = Vec::with_capacity(names.len());
    for name in names {
        let san = service_name(name)?;
        let twice = sans.iter().any(|s| match (s, &san) {
            (SanType::DnsName(a), SanType::DnsName(b)) => {
                a.as_str().eq_ignore_ascii_case(b.as_str())
            }
            (a, b) => a == b,
        });
        if twice {
            return Err(Error::BadCertificate(format!(
                "service name {name:?} is given twice"
            )));
        }
        sans.push(san);
    }
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, SERVICE_COMMON_NAME);
    p.distinguished_name = dn;
    p.subject_alt_names = sans;
    p.serial_number = Some(rcgen_serial(serial));
    set_validity(&mut p, not_before, days)?;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    Ok(p.signed_by(&RcgenPublicKey(key), ca.rcgen())?
        .der()
        .to_vec())
}

/// A station certificate as the service reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StationCert {
    /// The station's id (from the SAN URI, equal to the subject serialNumber).
    pub station_id: StationId,
    /// The certificate's serial number.
    pub serial: Serial,
    /// The certificate's notAfter.
    pub not_after: UnixTime,
    /// What the station may do.
    pub grant: StationGrant,
    /// SHA-256 of the certificate (DER).
    pub fingerprint: [u8; 32],
}

/// Reads a station certificate (DER): its id, serial, notAfter, grant and fingerprint.
///
/// No path is validated and no signature checked: the TLS verifier (rustls-webpki, to the
/// station CA) does that before this is called.
///
/// # Errors
/// [`Error::TooLarge`] above `limits::CERTIFICATE_BYTES`; [`Error::BadGrant`] for a grant
/// extension that is malformed or of an unknown version; [`Error::BadCertificate`] for a
/// certificate that does not parse, has no grant extension (or two), has not exactly one SAN URI
/// `urn:trustfab:station:<id>`, names a malformed id there, whose subject serialNumber is not
/// that id, or whose serial or notAfter is out of range.
pub fn parse_station_cert(der: &[u8]) -> Result<StationCert, Error> {
    let limit = limits::CERTIFICATE_BYTES;
    if der.len() > limit {
        return Err(Error::TooLarge {
            what: "station certificate",
            len: der.len(),
            limit,
        });
    }
    let (rest, c) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| Error::BadCertificate(format!("station certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(Error::BadCertificate(
            "station certificate has bytes after it".into(),
        ));
    }

    let mut grants = c
        .extensions()
        .iter()
        .filter(|e| e.oid.to_id_string() == GRANT_OID_TEXT);
    let grant = match (grants.next(), grants.next()) {
        (Some(ext), None) => decode_grant(ext.value)?,
        (None, _) => {
            return Err(Error::BadCertificate(format!(
                "not a station certificate: it has no station grant extension ({GRANT_OID_TEXT})"
            )))
        }
        (Some(_), Some(_)) => {
            return Err(Error::BadCertificate(
                "station certificate has two station grant extensions".into(),
            ))
        }
    };

    let san = c
        .subject_alternative_name()
        .map_err(|e| Error::BadCertificate(format!("station certificate SAN: {e}")))?
        .ok_or_else(|| {
            Error::BadCertificate(format!(
                "station certificate has no subjectAltName (URI {STATION_URI_PREFIX}<id>)"
            ))
        })?;
    let mut ids = san.value.general_names.iter().filter_map(|g| match g {
        GeneralName::URI(u) => u.strip_prefix(STATION_URI_PREFIX),
        _ => None,
    });
    let id_text = match (ids.next(), ids.next()) {
        (Some(id), None) => id,
        (None, _) => {
            return Err(Error::BadCertificate(format!(
                "station certificate has no SAN URI {STATION_URI_PREFIX}<id>"
            )))
        }
        (Some(_), Some(_)) => {
            return Err(Error::BadCertificate(format!(
                "station certificate has more than one SAN URI {STATION_URI_PREFIX}<id>"
            )))
        }
    };
    let station_id = StationId::new(id_text).map_err(|e| {
        Error::BadCertificate(format!(
            "station id {id_text:?} in the SAN URI is malformed: {e}"
        ))
    })?;
    let subject_id = single_attribute(
        c.subject(),
        &OID_X509_SERIALNUMBER,
        "serialNumber (station id)",
    )?;
    if subject_id != station_id.as_str() {
        return Err(Error::BadCertificate(format!(
            "the SAN URI names station {station_id} but the subject serialNumber is \
             {subject_id:?}"
        )));
    }

    let raw_serial = c.raw_serial();
    if raw_serial.first().is_some_and(|b| b & 0x80 != 0) {
        return Err(Error::BadCertificate(
            "station certificate serial number is negative".into(),
        ));
    }
    let serial = Serial::from_be_bytes(raw_serial)
        .map_err(|e| Error::BadCertificate(format!("station certificate serial number: {e}")))?;
    let not_after = u64::try_from(c.validity().not_after.timestamp())
        .map(UnixTime)
        .map_err(|_| Error::BadCertificate("station certificate notAfter is before 1970".into()))?;

    let mut fingerprint = [0u8; 32];
    fingerprint.copy_from_slice(digest(&SHA256, der).as_ref());
    Ok(StationCert {
        station_id,
        serial,
        not_after,
        grant,
        fingerprint,
    })
}
