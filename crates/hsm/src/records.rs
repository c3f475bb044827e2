//! The bodies of the ledger records the HSM writes: canonical CBOR maps with small integer keys
//! (`docs/ledger.md` lists them). Bodies hold ids, public data and fingerprints, never a secret.

use ciborium::Value;
use trustfab_types::{DeviceUid, Serial, UnixTime};

/// A product as imported: everything issuance needs except the count (in the ledger's counter)
/// and the signing key (in the token, by label).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProductDef {
    pub(crate) oem: String,
    pub(crate) product: String,
    pub(crate) package_id: [u8; 16],
    pub(crate) template: String,
    pub(crate) root_cert: Vec<u8>,
    pub(crate) device_ca_cert: Option<Vec<u8>>,
    pub(crate) key_label: String,
    pub(crate) signing_key_spki: Vec<u8>,
    pub(crate) serial_range: Option<(u64, u64)>,
    pub(crate) firmware: Option<FirmwareDef>,
}

/// A product's firmware: the boot key its devices trust and, when its images are encrypted, the
/// family decryption key (in the token, by label; its public point here).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FirmwareDef {
    pub(crate) family: String,
    pub(crate) boot_key_hash: [u8; 32],
    /// (token label, uncompressed P-256 point) of the family key.
    pub(crate) family_key: Option<(String, Vec<u8>)>,
}

/// One issuance, recorded before the certificate is signed. With the product definition it
/// determines the TBSCertificate byte for byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuanceRecord {
    /// The product key (`oem/product`).
    pub product: String,
    /// The device.
    pub uid: DeviceUid,
    /// The certificate serial.
    pub serial: Serial,
    /// The device public key, SubjectPublicKeyInfo DER.
    pub spki: Vec<u8>,
    /// notBefore.
    pub not_before: UnixTime,
    /// The job whose reservation the certificate was spent from; `None` for the HSM
    /// operator's issuance outside a job, and for records of an earlier release.
    pub job: Option<String>,
}

fn int(n: u64) -> Value {
    Value::Integer(n.into())
}

fn to_bytes(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing a Value to a Vec cannot fail.
    ciborium::into_writer(v, &mut out).ok();
    out
}

fn map_of(bytes: &[u8]) -> Option<Vec<(u64, Value)>> {
    let v: Value = ciborium::from_reader(bytes).ok()?;
    let Value::Map(m) = v else { return None };
    m.into_iter()
        .map(|(k, v)| Some((u64::try_from(k.as_integer()?).ok()?, v)))
        .collect()
}

fn get(m: &[(u64, Value)], k: u64) -> Option<&Value> {
    m.iter().find(|(key, _)| *key == k).map(|(_, v)| v)
}

fn text(m: &[(u64, Value)], k: u64) -> Option<String> {
    get(m, k)?.as_text().map(str::to_owned)
}

fn bytes(m: &[(u64, Value)], k: u64) -> Option<Vec<u8>> {
    get(m, k)?.as_bytes().cloned()
}

fn uint(m: &[(u64, Value)], k: u64) -> Option<u64> {
    u64::try_from(get(m, k)?.as_integer()?).ok()
}

impl ProductDef {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut m = vec![
            (int(0), Value::Text(self.oem.clone())),
            (int(1), Value::Text(self.product.clone())),
            (int(2), Value::Bytes(self.package_id.to_vec())),
            (int(3), Value::Text(self.template.clone())),
            (int(4), Value::Bytes(self.root_cert.clone())),
            (int(6), Value::Text(self.key_label.clone())),
            (int(7), Value::Bytes(self.signing_key_spki.clone())),
        ];
        if let Some(ca) = &self.device_ca_cert {
            m.push((int(5), Value::Bytes(ca.clone())));
        }
        if let Some((a, b)) = self.serial_range {
            m.push((int(8), Value::Array(vec![int(a), int(b)])));
        }
        if let Some(fw) = &self.firmware {
            let mut f = vec![
                (int(0), Value::Text(fw.family.clone())),
                (int(1), Value::Bytes(fw.boot_key_hash.to_vec())),
            ];
            if let Some((label, point)) = &fw.family_key {
                f.push((int(2), Value::Text(label.clone())));
                f.push((int(3), Value::Bytes(point.clone())));
            }
            m.push((int(9), Value::Map(f)));
        }
        to_bytes(&Value::Map(m))
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        let m = map_of(b)?;
        let serial_range = match get(&m, 8) {
            Some(Value::Array(a)) => Some((
                u64::try_from(a.first()?.as_integer()?).ok()?,
                u64::try_from(a.get(1)?.as_integer()?).ok()?,
            )),
            Some(_) => return None,
            None => None,
        };
        let firmware = match get(&m, 9) {
            Some(Value::Map(f)) => {
                let f: Vec<(u64, Value)> = f
                    .iter()
                    .map(|(k, v)| Some((u64::try_from(k.as_integer()?).ok()?, v.clone())))
                    .collect::<Option<_>>()?;
                let family_key = match (text(&f, 2), bytes(&f, 3)) {
                    (Some(label), Some(point)) => Some((label, point)),
                    (None, None) => None,
                    _ => return None,
                };
                Some(FirmwareDef {
                    family: text(&f, 0)?,
                    boot_key_hash: bytes(&f, 1)?.try_into().ok()?,
                    family_key,
                })
            }
            Some(_) => return None,
            None => None,
        };
        Some(Self {
            oem: text(&m, 0)?,
            product: text(&m, 1)?,
            package_id: bytes(&m, 2)?.try_into().ok()?,
            template: text(&m, 3)?,
            root_cert: bytes(&m, 4)?,
            device_ca_cert: bytes(&m, 5),
            key_label: text(&m, 6)?,
            signing_key_spki: bytes(&m, 7)?,
            serial_range,
            firmware,
        })
    }
}

/// The body of a `PackageImported` record.
pub(crate) fn package_imported(
    package_id: &[u8; 16],
    hsm_fingerprint: &[u8; 32],
    product: &str,
    count: u64,
    at: UnixTime,
) -> Vec<u8> {
    to_bytes(&Value::Map(vec![
        (int(0), Value::Bytes(package_id.to_vec())),
        (int(1), Value::Bytes(hsm_fingerprint.to_vec())),
        (int(2), Value::Text(product.to_owned())),
        (int(3), int(count)),
        (int(4), int(at.0)),
    ]))
}

impl IssuanceRecord {
    /// Canonical CBOR.
    pub fn encode(&self) -> Vec<u8> {
        let mut m = vec![
            (int(0), Value::Text(self.product.clone())),
            (int(1), Value::Bytes(self.uid.as_bytes().to_vec())),
            (int(2), Value::Bytes(self.serial.as_be_bytes().to_vec())),
            (int(3), Value::Bytes(self.spki.clone())),
            (int(4), int(self.not_before.0)),
        ];
        if let Some(job) = &self.job {
            m.push((int(5), Value::Text(job.clone())));
        }
        to_bytes(&Value::Map(m))
    }

    /// Parses a record body.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let m = map_of(b)?;
        Some(Self {
            product: text(&m, 0)?,
            uid: DeviceUid::new(&bytes(&m, 1)?).ok()?,
            serial: Serial::from_be_bytes(&bytes(&m, 2)?).ok()?,
            spki: bytes(&m, 3)?,
            not_before: UnixTime(uint(&m, 4)?),
            job: match get(&m, 5) {
                Some(v) => Some(v.as_text()?.to_owned()),
                None => None,
            },
        })
    }
}

/// The product key of a `PackageImported` / `ProductToppedUp` body.
pub(crate) fn imported_product(body: &[u8]) -> Option<String> {
    text(&map_of(body)?, 2)
}

/// The package id of a `PackageImported` body.
pub(crate) fn imported_package_id(body: &[u8]) -> Option<[u8; 16]> {
    bytes(&map_of(body)?, 0)?.try_into().ok()
}

/// A text field of a body written as a CBOR map with text keys (the station's records).
pub(crate) fn text_field(body: &[u8], name: &str) -> Option<String> {
    let v: Value = ciborium::from_reader(body).ok()?;
    let Value::Map(m) = v else { return None };
    m.into_iter().find_map(|(k, v)| match (k, v) {
        (Value::Text(k), Value::Text(v)) if k == name => Some(v),
        _ => None,
    })
}
