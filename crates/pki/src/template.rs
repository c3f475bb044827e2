//! The device certificate template: TOML in (`docs/template.md`), a checked [`Template`] out,
//! and rendering of its placeholders for one device.
//!
//! Parse, don't validate: every rule is checked once here, with the line and the field of the
//! offending value, so that issuance only ever sees a template it can render.

use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;
use trustfab_types::{limits, DeviceUid, OemId, ProductId, Rng, Serial};

use crate::Error;

/// The template format version this build reads.
pub const TEMPLATE_VERSION: u32 = 1;

/// A template refused, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, {field}: {message}")]
pub struct TemplateError {
    /// 1-based line of the offending value (1 when the whole file is at fault).
    pub line: usize,
    /// The field, as `[extensions].key_usage`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

// ---------------------------------------------------------------------------------------------
// The TOML as written: every table refuses unknown keys, values keep their spans.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    version: Spanned<u32>,
    subject: Option<Spanned<RawSubject>>,
    subject_alt_name: Option<RawSan>,
    validity: Spanned<RawValidity>,
    extensions: RawExtensions,
    serial: Spanned<RawSerial>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSubject {
    country: Option<Spanned<String>>,
    state: Option<Spanned<String>>,
    locality: Option<Spanned<String>>,
    organization: Option<Spanned<String>>,
    organizational_unit: Option<Spanned<String>>,
    common_name: Option<Spanned<String>>,
    serial_number: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSan {
    hardware_module_name: Option<Spanned<RawHwName>>,
    #[serde(default)]
    uri: Vec<Spanned<String>>,
    #[serde(default)]
    dns: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHwName {
    hw_type: Spanned<String>,
    hw_serial: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawValidity {
    days: Option<Spanned<u32>>,
    no_expiry: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExtensions {
    key_usage: Spanned<Vec<KeyUsage>>,
    #[serde(default)]
    extended_key_usage: Vec<Spanned<String>>,
    basic_constraints: Option<Spanned<RawBasicConstraints>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBasicConstraints {
    ca: Spanned<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, tag = "scheme", rename_all = "lowercase")]
enum RawSerial {
    Random { bits: Option<u32> },
    Sequential { first: u64, last: u64 },
}

// ---------------------------------------------------------------------------------------------
// The checked template.

/// A subject attribute, in the order it appears in the subject name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attr {
    /// countryName (2.5.4.6): PrintableString of exactly 2 letters.
    Country,
    /// stateOrProvinceName (2.5.4.8): ub-state-name 128.
    State,
    /// localityName (2.5.4.7): ub-locality-name 128.
    Locality,
    /// organizationName (2.5.4.10): ub-organization-name 64.
    Organization,
    /// organizationalUnitName (2.5.4.11): ub-organizational-unit-name 64.
    OrganizationalUnit,
    /// commonName (2.5.4.3): ub-common-name 64.
    CommonName,
    /// serialNumber (2.5.4.5): PrintableString, ub-serial-number 64; IEEE 802.1AR §8.6.
    SerialNumber,
}

impl Attr {
    fn key(self) -> &'static str {
        match self {
            Self::Country => "country",
            Self::State => "state",
            Self::Locality => "locality",
            Self::Organization => "organization",
            Self::OrganizationalUnit => "organizational_unit",
            Self::CommonName => "common_name",
            Self::SerialNumber => "serial_number",
        }
    }

    /// RFC 5280 Appendix A.1 upper bound, in characters.
    fn upper_bound(self) -> usize {
        match self {
            Self::Country => 2,
            Self::State | Self::Locality => 128,
            Self::Organization
            | Self::OrganizationalUnit
            | Self::CommonName
            | Self::SerialNumber => 64,
        }
    }

    fn printable(self) -> bool {
        matches!(self, Self::Country | Self::SerialNumber)
    }
}

/// A placeholder a template value may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Var {
    /// `{uid}`: the device unique id, lowercase hexadecimal.
    Uid,
    /// `{serial}`: the certificate serial number, lowercase hexadecimal.
    Serial,
    /// `{product}`: the product id.
    Product,
    /// `{oem}`: the OEM id.
    Oem,
}

/// A template value: literal text and placeholders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern(Vec<Piece>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Var(Var),
}

impl Pattern {
    /// Parses `{uid}`, `{serial}`, `{product}`, `{oem}`; `{{` and `}}` stand for literal braces.
    ///
    /// # Errors
    /// Names the unknown placeholder or the unbalanced brace.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(ch) => name.push(ch),
                            None => return Err(format!("unclosed placeholder {{{name}")),
                        }
                    }
                    let var = match name.as_str() {
                        "uid" => Var::Uid,
                        "serial" => Var::Serial,
                        "product" => Var::Product,
                        "oem" => Var::Oem,
                        _ => {
                            return Err(format!(
                                "unknown placeholder {{{name}}}: use {{uid}}, {{serial}}, {{product}} or {{oem}} (write {{{{ for a literal brace)"
                            ))
                        }
                    };
                    if !lit.is_empty() {
                        pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                    }
                    pieces.push(Piece::Var(var));
                }
                '}' => return Err("unmatched '}' (write }} for a literal brace)".into()),
                _ => lit.push(c),
            }
        }
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        Ok(Self(pieces))
    }

    /// Whether the value holds no placeholder.
    pub fn is_literal(&self) -> bool {
        self.0.iter().all(|p| matches!(p, Piece::Lit(_)))
    }

    /// The placeholders used, in order.
    pub fn vars(&self) -> impl Iterator<Item = Var> + '_ {
        self.0.iter().filter_map(|p| match p {
            Piece::Var(v) => Some(*v),
            Piece::Lit(_) => None,
        })
    }

    /// The value for one device.
    pub fn render(&self, inputs: &RenderInputs<'_>) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Lit(s) => out.push_str(s),
                Piece::Var(Var::Uid) => out.push_str(&inputs.uid.to_hex()),
                Piece::Var(Var::Serial) => out.push_str(&inputs.serial.to_hex()),
                Piece::Var(Var::Product) => out.push_str(inputs.product.as_str()),
                Piece::Var(Var::Oem) => out.push_str(inputs.oem.as_str()),
            }
        }
        out
    }
}

/// What fills a template's placeholders for one device.
#[derive(Clone, Copy, Debug)]
pub struct RenderInputs<'a> {
    /// The OEM.
    pub oem: &'a OemId,
    /// The product.
    pub product: &'a ProductId,
    /// The device's unique id.
    pub uid: &'a DeviceUid,
    /// The certificate serial number.
    pub serial: &'a Serial,
}

/// Key usage bits a device certificate may carry (RFC 5280 §4.2.1.3). CA bits are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyUsage {
    /// digitalSignature: the device signs challenges and TLS handshakes.
    DigitalSignature,
    /// nonRepudiation, renamed contentCommitment in X.509 (2008).
    ContentCommitment,
    /// keyAgreement: ECDH with the certified key.
    KeyAgreement,
    /// keyCertSign: refused in a device template.
    KeyCertSign,
    /// cRLSign: refused in a device template.
    CrlSign,
}

/// An extended key usage (RFC 5280 §4.2.1.12).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Eku {
    /// id-kp-clientAuth (1.3.6.1.5.5.7.3.2).
    ClientAuth,
    /// id-kp-serverAuth (1.3.6.1.5.5.7.3.1).
    ServerAuth,
    /// Any other purpose, by OID.
    Other(Vec<u64>),
}

/// How long a device certificate is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// From issuance for this many days.
    Days(u32),
    /// No well-defined expiration: notAfter is 99991231235959Z (RFC 5280 §4.1.2.5, IEEE 802.1AR §8.5).
    NoExpiry,
}

/// How the HSM picks serial numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SerialScheme {
    /// Positive random integers with this many bits from a CSPRNG (64 to 152).
    Random {
        /// Bits of randomness.
        bits: u32,
    },
    /// Sequential within an inclusive range.
    Sequential {
        /// The first serial.
        first: u64,
        /// The last serial.
        last: u64,
    },
}

impl SerialScheme {
    /// A fresh random serial.
    ///
    /// # Errors
    /// When the scheme is sequential, or the random source fails.
    pub fn random_serial(&self, rng: &dyn Rng) -> Result<Serial, Error> {
        let Self::Random { bits } = *self else {
            return Err(Error::Validity(
                "random serial asked of a sequential scheme",
            ));
        };
        let bytes = usize::try_from(bits.div_ceil(8)).map_err(|_| Error::Validity("bits"))?;
        let mut buf = vec![0u8; bytes];
        loop {
            rng.fill(&mut buf)
                .map_err(|_| Error::Crypto("rng failed"))?;
            let spare = u32::try_from(bytes * 8).map_err(|_| Error::Validity("bits"))? - bits;
            buf[0] &= 0xff >> spare;
            if let Ok(s) = Serial::from_be_bytes(&buf) {
                return Ok(s);
            }
        }
    }

    /// The `index`-th serial (0-based) of a sequential scheme.
    ///
    /// # Errors
    /// When the scheme is random or the range is used up.
    pub fn sequential_serial(&self, index: u64) -> Result<Serial, Error> {
        let Self::Sequential { first, last } = *self else {
            return Err(Error::Validity(
                "sequential serial asked of a random scheme",
            ));
        };
        let n = first
            .checked_add(index)
            .filter(|n| *n <= last)
            .ok_or_else(|| Error::SerialOutOfRange {
                serial: format!("{first}+{index}"),
                first: first.to_string(),
                last: last.to_string(),
            })?;
        Ok(Serial::from_u64(n)?)
    }

    /// Checks that `serial` may be used under this scheme.
    ///
    /// # Errors
    /// When a sequential scheme's range does not hold it.
    pub fn admits(&self, serial: &Serial) -> Result<(), Error> {
        if let Self::Sequential { first, last } = *self {
            let ok = serial.to_u64().is_some_and(|n| (first..=last).contains(&n));
            if !ok {
                return Err(Error::SerialOutOfRange {
                    serial: serial.to_hex(),
                    first: first.to_string(),
                    last: last.to_string(),
                });
            }
        }
        Ok(())
    }
}

/// The hardwareModuleName otherName of RFC 4108 §5 (IEEE 802.1AR §8.7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HardwareModuleName {
    /// hwType: the OID naming the hardware module type.
    pub hw_type: Vec<u64>,
    /// hwSerialNum: rendered to text, encoded as its UTF-8 bytes in the OCTET STRING.
    pub hw_serial: Pattern,
}

/// A checked device certificate template. The only way to one is [`Template::from_toml`], which
/// refuses CA:true, CA key usages, unknown keys and placeholders and an empty subject: its fields
/// are private, so no caller can put a CA key usage into a device certificate by building or
/// changing a `Template` itself.
///
/// ```compile_fail
/// # use trustfab_pki::template::*;
/// fn grant_cert_sign(t: &mut trustfab_pki::Template) {
///     t.key_usage.push(KeyUsage::KeyCertSign); // private: refused at compile time
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    /// Subject attributes in name order.
    pub(crate) subject: Vec<(Attr, Pattern)>,
    /// SAN hardwareModuleName.
    pub(crate) hardware_module_name: Option<HardwareModuleName>,
    /// SAN uniformResourceIdentifier entries.
    pub(crate) uris: Vec<Pattern>,
    /// SAN dNSName entries.
    pub(crate) dns_names: Vec<Pattern>,
    /// Validity.
    pub(crate) validity: Validity,
    /// Key usage bits.
    pub(crate) key_usage: Vec<KeyUsage>,
    /// Extended key usages (none: the extension is left out).
    pub(crate) extended_key_usage: Vec<Eku>,
    /// Serial number scheme.
    pub(crate) serial: SerialScheme,
}

impl Template {
    /// Subject attributes in name order.
    pub fn subject(&self) -> &[(Attr, Pattern)] {
        &self.subject
    }

    /// SAN hardwareModuleName.
    pub fn hardware_module_name(&self) -> Option<&HardwareModuleName> {
        self.hardware_module_name.as_ref()
    }

    /// SAN uniformResourceIdentifier entries.
    pub fn uris(&self) -> &[Pattern] {
        &self.uris
    }

    /// SAN dNSName entries.
    pub fn dns_names(&self) -> &[Pattern] {
        &self.dns_names
    }

    /// Validity.
    pub fn validity(&self) -> &Validity {
        &self.validity
    }

    /// Key usage bits (never a CA usage).
    pub fn key_usage(&self) -> &[KeyUsage] {
        &self.key_usage
    }

    /// Extended key usages (none: the extension is left out).
    pub fn extended_key_usage(&self) -> &[Eku] {
        &self.extended_key_usage
    }

    /// Serial number scheme.
    pub fn serial(&self) -> SerialScheme {
        self.serial
    }
}

fn line_of(text: &str, span: &Range<usize>) -> usize {
    let end = span.start.min(text.len());
    text.get(..end).map_or(1, |s| s.matches('\n').count() + 1)
}

struct Ctx<'a> {
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: &Range<usize>, field: &str, message: impl Into<String>) -> TemplateError {
        TemplateError {
            line: line_of(self.text, span),
            field: field.into(),
            message: message.into(),
        }
    }
}

fn field_name(path: &serde_path_to_error::Path) -> String {
    // serde_path_to_error also reports toml's Spanned wrapper and sequence indexes: drop both,
    // the user wrote neither.
    let parts: Vec<String> = path
        .iter()
        .map(ToString::to_string)
        .filter(|p| !p.starts_with("$__") && !p.starts_with('[') && p != "?")
        .collect();
    match parts.as_slice() {
        [] => "template".into(),
        [one] => one.clone(),
        [table, rest @ ..] => format!("[{table}].{}", rest.join(".")),
    }
}

fn parse_oid(s: &str) -> Option<Vec<u64>> {
    let arcs: Option<Vec<u64>> = s.split('.').map(|a| a.parse().ok()).collect();
    let arcs = arcs?;
    // X.660: the first arc is 0, 1 or 2; under 0 and 1 the second is below 40.
    let ok = arcs.len() >= 2
        && arcs[0] <= 2
        && (arcs[0] == 2 || arcs[1] < 40)
        && s.split('.').all(|a| a == "0" || !a.starts_with('0'));
    ok.then_some(arcs)
}

impl Template {
    /// Parses and checks a template.
    ///
    /// # Errors
    /// A [`TemplateError`] naming the line, the field and the problem.
    pub fn from_toml(text: &str) -> Result<Self, TemplateError> {
        if text.len() > limits::TEMPLATE_BYTES {
            return Err(TemplateError {
                line: 1,
                field: "template".into(),
                message: format!(
                    "is {} bytes, the limit is {}",
                    text.len(),
                    limits::TEMPLATE_BYTES
                ),
            });
        }
        let ctx = Ctx { text };
        let de = toml::Deserializer::new(text);
        let raw: RawTemplate = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = field_name(e.path());
            let inner = e.into_inner();
            TemplateError {
                line: inner.span().map_or(1, |s| line_of(text, &s)),
                field,
                message: inner.message().trim().to_owned(),
            }
        })?;

        if *raw.version.get_ref() != TEMPLATE_VERSION {
            return Err(ctx.err(
                &raw.version.span(),
                "version",
                format!(
                    "unknown template version {}; this build reads version {TEMPLATE_VERSION}",
                    raw.version.get_ref()
                ),
            ));
        }

        let subject = Self::check_subject(&ctx, raw.subject.as_ref())?;
        let (hardware_module_name, uris, dns_names) = match &raw.subject_alt_name {
            Some(san) => Self::check_san(&ctx, san)?,
            None => (None, Vec::new(), Vec::new()),
        };

        let v_span = raw.validity.span();
        let v = raw.validity.get_ref();
        let no_expiry = v.no_expiry.as_ref().map(|n| (*n.get_ref(), n.span()));
        let validity = match (&v.days, no_expiry) {
            (Some(d), Some((true, _))) => {
                return Err(ctx.err(
                    &d.span(),
                    "[validity]",
                    "give either days or no_expiry = true, not both",
                ));
            }
            (Some(d), _) => {
                let n = *d.get_ref();
                if !(1..=36_500).contains(&n) {
                    return Err(ctx.err(
                        &d.span(),
                        "[validity].days",
                        format!("{n} is not between 1 and 36500"),
                    ));
                }
                Validity::Days(n)
            }
            (None, Some((true, _))) => Validity::NoExpiry,
            (None, Some((false, span))) => {
                return Err(ctx.err(
                    &span,
                    "[validity].no_expiry",
                    "false needs days = N instead",
                ));
            }
            (None, None) => {
                return Err(ctx.err(&v_span, "[validity]", "give days = N or no_expiry = true"));
            }
        };

        let ext = &raw.extensions;
        let ku = ext.key_usage.get_ref();
        if ku.is_empty() {
            return Err(ctx.err(
                &ext.key_usage.span(),
                "[extensions].key_usage",
                "is empty: a device key needs at least digital_signature",
            ));
        }
        for k in ku {
            if matches!(k, KeyUsage::KeyCertSign | KeyUsage::CrlSign) {
                return Err(ctx.err(
                    &ext.key_usage.span(),
                    "[extensions].key_usage",
                    "key_cert_sign and crl_sign are CA usages; a device certificate may not carry them",
                ));
            }
        }
        let mut key_usage = ku.clone();
        key_usage.dedup();
        if let Some(bc) = &ext.basic_constraints {
            if *bc.get_ref().ca.get_ref() {
                return Err(ctx.err(
                    &bc.get_ref().ca.span(),
                    "[extensions].basic_constraints.ca",
                    "a device certificate must be CA:false",
                ));
            }
        }
        let mut extended_key_usage = Vec::new();
        for e in &ext.extended_key_usage {
            let eku = match e.get_ref().as_str() {
                "client_auth" => Eku::ClientAuth,
                "server_auth" => Eku::ServerAuth,
                other => Eku::Other(parse_oid(other).ok_or_else(|| {
                    ctx.err(
                        &e.span(),
                        "[extensions].extended_key_usage",
                        format!(
                            "unknown value {other:?}: use client_auth, server_auth or a dotted OID"
                        ),
                    )
                })?),
            };
            if extended_key_usage.contains(&eku) {
                return Err(ctx.err(
                    &e.span(),
                    "[extensions].extended_key_usage",
                    format!("{:?} is listed twice", e.get_ref()),
                ));
            }
            extended_key_usage.push(eku);
        }

        let s_span = raw.serial.span();
        let serial = match raw.serial.get_ref() {
            RawSerial::Random { bits } => {
                let bits = bits.unwrap_or(64);
                if !(64..=152).contains(&bits) {
                    return Err(ctx.err(
                        &s_span,
                        "[serial].bits",
                        format!("{bits} is not between 64 and 152"),
                    ));
                }
                SerialScheme::Random { bits }
            }
            RawSerial::Sequential { first, last } => {
                if *first == 0 || first > last {
                    return Err(ctx.err(
                        &s_span,
                        "[serial]",
                        format!("range {first}..={last} must be positive and first <= last"),
                    ));
                }
                SerialScheme::Sequential {
                    first: *first,
                    last: *last,
                }
            }
        };

        Ok(Self {
            subject,
            hardware_module_name,
            uris,
            dns_names,
            validity,
            key_usage,
            extended_key_usage,
            serial,
        })
    }

    fn pattern(ctx: &Ctx<'_>, v: &Spanned<String>, field: &str) -> Result<Pattern, TemplateError> {
        let p = Pattern::parse(v.get_ref()).map_err(|m| ctx.err(&v.span(), field, m))?;
        if p.0.is_empty() {
            return Err(ctx.err(&v.span(), field, "is empty"));
        }
        Ok(p)
    }

    fn check_subject(
        ctx: &Ctx<'_>,
        raw: Option<&Spanned<RawSubject>>,
    ) -> Result<Vec<(Attr, Pattern)>, TemplateError> {
        let Some(raw) = raw else {
            return Err(ctx.err(
                &(0..0),
                "[subject]",
                "is missing: a device certificate needs a subject name",
            ));
        };
        let s = raw.get_ref();
        let fields = [
            (Attr::Country, &s.country),
            (Attr::State, &s.state),
            (Attr::Locality, &s.locality),
            (Attr::Organization, &s.organization),
            (Attr::OrganizationalUnit, &s.organizational_unit),
            (Attr::CommonName, &s.common_name),
            (Attr::SerialNumber, &s.serial_number),
        ];
        let mut out = Vec::new();
        for (attr, value) in fields {
            let Some(v) = value else { continue };
            let field = format!("[subject].{}", attr.key());
            let p = Self::pattern(ctx, v, &field)?;
            if p.is_literal() {
                // A literal is known now: check it now rather than at the first issuance.
                check_attr(attr, &p.render_literal()).map_err(|m| ctx.err(&v.span(), &field, m))?;
            }
            out.push((attr, p));
        }
        if out.is_empty() {
            return Err(ctx.err(
                &raw.span(),
                "[subject]",
                "is empty: give at least common_name or serial_number",
            ));
        }
        Ok(out)
    }

    #[allow(clippy::type_complexity)]
    fn check_san(
        ctx: &Ctx<'_>,
        san: &RawSan,
    ) -> Result<(Option<HardwareModuleName>, Vec<Pattern>, Vec<Pattern>), TemplateError> {
        let hw = match &san.hardware_module_name {
            Some(h) => {
                let h = h.get_ref();
                let hw_type = parse_oid(h.hw_type.get_ref()).ok_or_else(|| {
                    ctx.err(
                        &h.hw_type.span(),
                        "[subject_alt_name].hardware_module_name.hw_type",
                        format!("{:?} is not a dotted OID", h.hw_type.get_ref()),
                    )
                })?;
                let hw_serial = Self::pattern(
                    ctx,
                    &h.hw_serial,
                    "[subject_alt_name].hardware_module_name.hw_serial",
                )?;
                Some(HardwareModuleName { hw_type, hw_serial })
            }
            None => None,
        };
        let mut uris = Vec::new();
        for u in &san.uri {
            let p = Self::pattern(ctx, u, "[subject_alt_name].uri")?;
            if p.is_literal() {
                check_uri(&p.render_literal())
                    .map_err(|m| ctx.err(&u.span(), "[subject_alt_name].uri", m))?;
            }
            uris.push(p);
        }
        let mut dns = Vec::new();
        for d in &san.dns {
            let p = Self::pattern(ctx, d, "[subject_alt_name].dns")?;
            if p.is_literal() {
                check_dns(&p.render_literal())
                    .map_err(|m| ctx.err(&d.span(), "[subject_alt_name].dns", m))?;
            }
            dns.push(p);
        }
        if hw.is_none() && uris.is_empty() && dns.is_empty() {
            return Err(ctx.err(
                &(0..0),
                "[subject_alt_name]",
                "is empty: remove the table or give an entry",
            ));
        }
        Ok((hw, uris, dns))
    }

    /// Renders every field for one device and checks it against its ASN.1 type and RFC 5280
    /// upper bound.
    ///
    /// # Errors
    /// [`Error::Render`] naming the field when a rendered value is refused.
    pub fn render(&self, inputs: &RenderInputs<'_>) -> Result<Rendered, Error> {
        let mut subject = Vec::with_capacity(self.subject.len());
        for (attr, p) in &self.subject {
            let v = p.render(inputs);
            check_attr(*attr, &v).map_err(|problem| Error::Render {
                field: format!("[subject].{}", attr.key()),
                problem,
            })?;
            subject.push((*attr, v));
        }
        let hardware_module_name = match &self.hardware_module_name {
            Some(h) => {
                let serial = h.hw_serial.render(inputs);
                if serial.len() > 64 {
                    return Err(Error::Render {
                        field: "[subject_alt_name].hardware_module_name.hw_serial".into(),
                        problem: format!("renders to {} bytes, the limit is 64", serial.len()),
                    });
                }
                Some((h.hw_type.clone(), serial.into_bytes()))
            }
            None => None,
        };
        let mut uris = Vec::with_capacity(self.uris.len());
        for p in &self.uris {
            let v = p.render(inputs);
            check_uri(&v).map_err(|problem| Error::Render {
                field: "[subject_alt_name].uri".into(),
                problem,
            })?;
            uris.push(v);
        }
        let mut dns_names = Vec::with_capacity(self.dns_names.len());
        for p in &self.dns_names {
            let v = p.render(inputs);
            check_dns(&v).map_err(|problem| Error::Render {
                field: "[subject_alt_name].dns".into(),
                problem,
            })?;
            dns_names.push(v);
        }
        Ok(Rendered {
            subject,
            hardware_module_name,
            uris,
            dns_names,
        })
    }
}

impl Pattern {
    fn render_literal(&self) -> String {
        self.0
            .iter()
            .map(|p| match p {
                Piece::Lit(s) => s.as_str(),
                Piece::Var(_) => "",
            })
            .collect()
    }
}

/// A template's values for one device, each checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// Subject attributes in name order.
    pub subject: Vec<(Attr, String)>,
    /// (hwType OID arcs, hwSerialNum bytes).
    pub hardware_module_name: Option<(Vec<u64>, Vec<u8>)>,
    /// URIs.
    pub uris: Vec<String>,
    /// DNS names.
    pub dns_names: Vec<String>,
}

/// X.680 PrintableString alphabet.
fn is_printable(c: char) -> bool {
    c.is_ascii_alphanumeric() || " '()+,-./:=?".contains(c)
}

fn check_attr(attr: Attr, v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err("renders to an empty value".into());
    }
    let len = v.chars().count();
    if len > attr.upper_bound() {
        return Err(format!(
            "renders to {len} characters, RFC 5280 allows at most {}",
            attr.upper_bound()
        ));
    }
    if attr == Attr::Country && (len != 2 || !v.chars().all(|c| c.is_ascii_uppercase())) {
        return Err(format!("{v:?} is not a two-letter ISO 3166 code"));
    }
    if attr.printable() {
        if let Some(c) = v.chars().find(|c| !is_printable(*c)) {
            return Err(format!("{c:?} is not allowed in a PrintableString"));
        }
    }
    if let Some(c) = v.chars().find(|c| c.is_control()) {
        return Err(format!("control character {c:?} is not allowed"));
    }
    Ok(())
}

fn check_uri(v: &str) -> Result<(), String> {
    if v.len() > 1024 {
        return Err(format!("renders to {} bytes, the limit is 1024", v.len()));
    }
    if !v.is_ascii() || v.chars().any(|c| c.is_ascii_control() || c == ' ') {
        return Err(format!("{v:?} is not an IA5String URI without spaces"));
    }
    let scheme = v.split_once(':').map(|(s, _)| s).unwrap_or_default();
    let scheme_ok = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok {
        return Err(format!("{v:?} has no URI scheme (RFC 3986)"));
    }
    Ok(())
}

fn check_dns(v: &str) -> Result<(), String> {
    if v.len() > 253 {
        return Err(format!("renders to {} bytes, the limit is 253", v.len()));
    }
    let ok = !v.is_empty()
        && v.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !ok {
        return Err(format!(
            "{v:?} is not a DNS name (RFC 1034 preferred syntax)"
        ));
    }
    Ok(())
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "subject attributes: {}", self.subject.len())?;
        writeln!(f, "validity: {:?}", self.validity)?;
        writeln!(f, "key usage: {:?}", self.key_usage)?;
        writeln!(f, "extended key usage: {:?}", self.extended_key_usage)?;
        write!(f, "serial: {:?}", self.serial)
    }
}

/// An example template, the one `trustfab oem template new` writes and `docs/template.md` shows.
pub const EXAMPLE_TEMPLATE: &str = r#"# trustfab device certificate template, format version 1 (docs/template.md)
version = 1

[subject]
country = "US"
organization = "Acme IoT"
organizational_unit = "Sensors"
common_name = "{product} {uid}"
serial_number = "{uid}"

[subject_alt_name]
# IEEE 802.1AR DevID: the hardware module name (RFC 4108 otherName)
hardware_module_name = { hw_type = "1.3.6.1.4.1.55555.2.1", hw_serial = "{uid}" }
dns = ["{uid}.{product}.devices.acme.example"]

[validity]
no_expiry = true   # 99991231235959Z, as IEEE 802.1AR allows; or: days = 3650

[extensions]
key_usage = ["digital_signature", "key_agreement"]
extended_key_usage = ["client_auth", "1.3.6.1.4.1.55555.1.1"]
basic_constraints = { ca = false }

[serial]
scheme = "random"  # positive, from a CSPRNG; or: scheme = "sequential", first = 1, last = 100000
bits = 64
"#;

#[cfg(test)]
mod tests;
