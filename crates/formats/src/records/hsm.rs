//! The bodies of the HSM's product, package and issuance records: deterministic CBOR maps with small
//! unsigned integer keys (`docs/ledger.md`, "Record bodies"). Bodies hold ids, public data and
//! fingerprints, never a secret.

use ciborium::Value;
use trustfab_types::{
    DeviceUid, Fingerprint, JobId, OemId, ProductId, ProductKey, Serial, StationId, UnixTime,
};

use super::{check_len, RecordError};

/// `ProductCreated`: a product as imported, everything issuance needs except the count (in the
/// ledger's counter) and the signing key (in the token, by label).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProductDef {
    /// The product: its OEM id (key 0) and product id (key 1), two text fields on the wire.
    pub product: ProductKey,
    /// The id of the package that created the product.
    pub package_id: [u8; 16],
    /// The device certificate template (TOML), as the OEM signed it.
    pub template: String,
    /// The OEM root certificate, DER.
    pub root_cert: Vec<u8>,
    /// The device CA certificate, DER, when the root does not issue devices itself.
    pub device_ca_cert: Option<Vec<u8>>,
    /// The token label of the product's signing key.
    pub key_label: String,
    /// The signing key's SubjectPublicKeyInfo, DER.
    pub signing_key_spki: Vec<u8>,
    /// The package's serial range `(first, last)`, when it set one.
    pub serial_range: Option<(u64, u64)>,
    /// The firmware the product's devices boot, when its package had a firmware section.
    pub firmware: Option<FirmwareDef>,
}

/// A product's firmware: the boot key its devices trust and, when its images are encrypted, the
/// family decryption key (in the token, by label; its public point here).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirmwareDef {
    /// The device family images are mastered for.
    pub family: String,
    /// SHA-256 of the OEM firmware signing key's SubjectPublicKeyInfo.
    pub boot_key_hash: [u8; 32],
    /// The family key, when images are encrypted.
    pub family_key: Option<FamilyKeyDef>,
}

/// Where a product's family key is and what it is: its token label and public point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyKeyDef {
    /// The token label.
    pub label: String,
    /// The uncompressed P-256 point.
    pub point: Vec<u8>,
}

/// `PackageImported` and `ProductToppedUp` (the same body): a package was imported for a
/// product and added `count`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageImported {
    /// The package id (claimed: a package is imported once).
    pub package_id: [u8; 16],
    /// SHA-256 of the identity certificate of the HSM that imported it.
    pub hsm_fingerprint: Fingerprint,
    /// The product key, `oem/product` text on the wire.
    pub product: ProductKey,
    /// Units added.
    pub count: u64,
    /// When.
    pub time: UnixTime,
}

/// `CertificateIssued`: one issuance, recorded before the certificate is signed. With the
/// product definition it determines the TBSCertificate byte for byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuanceRecord {
    /// The product key, `oem/product` text on the wire.
    pub product: ProductKey,
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
    pub job: Option<JobId>,
    /// The station that asked, when it came through the HSM service (key 6); `None` in process.
    pub station: Option<StationId>,
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

/// A decoded integer-keyed map, with the name of the body for errors.
struct Fields {
    record: &'static str,
    map: Vec<(u64, Value)>,
}

impl Fields {
    fn parse(record: &'static str, b: &[u8]) -> Result<Self, RecordError> {
        check_len(b)?;
        let v: Value = ciborium::from_reader(b).map_err(|e| RecordError::Malformed {
            record,
            what: e.to_string(),
        })?;
        let Value::Map(m) = v else {
            return Err(RecordError::Malformed {
                record,
                what: "not a map".into(),
            });
        };
        Self::of(record, m)
    }

    fn of(record: &'static str, m: Vec<(Value, Value)>) -> Result<Self, RecordError> {
        let map = m
            .into_iter()
            .map(|(k, v)| Some((u64::try_from(k.as_integer()?).ok()?, v)))
            .collect::<Option<_>>()
            .ok_or_else(|| RecordError::Malformed {
                record,
                what: "a key is not an unsigned integer".into(),
            })?;
        Ok(Self { record, map })
    }

    fn get(&self, k: u64) -> Option<&Value> {
        self.map.iter().find(|(key, _)| *key == k).map(|(_, v)| v)
    }

    fn bad(&self, field: &'static str) -> RecordError {
        RecordError::Field {
            record: self.record,
            field,
        }
    }

    fn text(&self, k: u64, field: &'static str) -> Result<String, RecordError> {
        self.opt_text(k).ok_or_else(|| self.bad(field))
    }

    fn opt_text(&self, k: u64) -> Option<String> {
        self.get(k)?.as_text().map(str::to_owned)
    }

    fn bytes(&self, k: u64, field: &'static str) -> Result<Vec<u8>, RecordError> {
        self.opt_bytes(k).ok_or_else(|| self.bad(field))
    }

    fn opt_bytes(&self, k: u64) -> Option<Vec<u8>> {
        self.get(k)?.as_bytes().cloned()
    }

    /// A text field that must parse as `T`.
    fn parsed<T, E>(
        &self,
        k: u64,
        field: &'static str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<T, RecordError> {
        let text = self
            .get(k)
            .and_then(Value::as_text)
            .ok_or_else(|| self.bad(field))?;
        parse(text).map_err(|_| self.bad(field))
    }

    fn array<const N: usize>(&self, k: u64, field: &'static str) -> Result<[u8; N], RecordError> {
        self.bytes(k, field)?
            .try_into()
            .map_err(|_| self.bad(field))
    }

    fn uint(&self, k: u64, field: &'static str) -> Result<u64, RecordError> {
        self.get(k)
            .and_then(Value::as_integer)
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| self.bad(field))
    }
}

impl ProductDef {
    /// The body's CBOR, byte for byte as the earlier release wrote it.
    pub fn encode(&self) -> Vec<u8> {
        let mut m = vec![
            (int(0), Value::Text(self.product.oem().to_string())),
            (int(1), Value::Text(self.product.product().to_string())),
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
            if let Some(k) = &fw.family_key {
                f.push((int(2), Value::Text(k.label.clone())));
                f.push((int(3), Value::Bytes(k.point.clone())));
            }
            m.push((int(9), Value::Map(f)));
        }
        to_bytes(&Value::Map(m))
    }

    /// Parses a `ProductCreated` body.
    ///
    /// # Errors
    /// A [`RecordError`] naming what is wrong.
    pub fn decode(b: &[u8]) -> Result<Self, RecordError> {
        let m = Fields::parse("ProductCreated", b)?;
        let serial_range = match m.get(8) {
            Some(Value::Array(a)) => {
                let at = |i: usize| {
                    a.get(i)
                        .and_then(Value::as_integer)
                        .and_then(|n| u64::try_from(n).ok())
                        .ok_or_else(|| m.bad("8 serial range"))
                };
                Some((at(0)?, at(1)?))
            }
            Some(_) => return Err(m.bad("8 serial range")),
            None => None,
        };
        let firmware = match m.get(9) {
            Some(Value::Map(f)) => {
                let f = Fields::of("ProductCreated firmware", f.clone())?;
                let family_key = match (f.opt_text(2), f.opt_bytes(3)) {
                    (Some(label), Some(point)) => Some(FamilyKeyDef { label, point }),
                    (None, None) => None,
                    _ => return Err(f.bad("2 and 3 family key (both or neither)")),
                };
                Some(FirmwareDef {
                    family: f.text(0, "0 family")?,
                    boot_key_hash: f.array(1, "1 boot key hash")?,
                    family_key,
                })
            }
            Some(_) => return Err(m.bad("9 firmware")),
            None => None,
        };
        Ok(Self {
            product: ProductKey::new(
                m.parsed(0, "0 OEM id", OemId::new)?,
                m.parsed(1, "1 product id", ProductId::new)?,
            ),
            package_id: m.array(2, "2 package id")?,
            template: m.text(3, "3 template")?,
            root_cert: m.bytes(4, "4 root certificate")?,
            device_ca_cert: m.opt_bytes(5),
            key_label: m.text(6, "6 key label")?,
            signing_key_spki: m.bytes(7, "7 signing key")?,
            serial_range,
            firmware,
        })
    }
}

impl PackageImported {
    /// The body's CBOR, byte for byte as the earlier release wrote it.
    pub fn encode(&self) -> Vec<u8> {
        to_bytes(&Value::Map(vec![
            (int(0), Value::Bytes(self.package_id.to_vec())),
            (
                int(1),
                Value::Bytes(self.hsm_fingerprint.as_bytes().to_vec()),
            ),
            (int(2), Value::Text(self.product.to_string())),
            (int(3), int(self.count)),
            (int(4), int(self.time.0)),
        ]))
    }

    /// Parses a `PackageImported` or `ProductToppedUp` body.
    ///
    /// # Errors
    /// A [`RecordError`] naming what is wrong.
    pub fn decode(b: &[u8]) -> Result<Self, RecordError> {
        let m = Fields::parse("PackageImported", b)?;
        Ok(Self {
            package_id: m.array(0, "0 package id")?,
            hsm_fingerprint: Fingerprint::new(m.array(1, "1 HSM fingerprint")?),
            product: m.parsed(2, "2 product", ProductKey::parse)?,
            count: m.uint(3, "3 count")?,
            time: UnixTime(m.uint(4, "4 time")?),
        })
    }
}

impl IssuanceRecord {
    /// The body's CBOR, byte for byte as the earlier release wrote it.
    pub fn encode(&self) -> Vec<u8> {
        let mut m = vec![
            (int(0), Value::Text(self.product.to_string())),
            (int(1), Value::Bytes(self.uid.as_bytes().to_vec())),
            (int(2), Value::Bytes(self.serial.as_be_bytes().to_vec())),
            (int(3), Value::Bytes(self.spki.clone())),
            (int(4), int(self.not_before.0)),
        ];
        if let Some(job) = &self.job {
            m.push((int(5), Value::Text(job.to_string())));
        }
        if let Some(station) = &self.station {
            m.push((int(6), Value::Text(station.to_string())));
        }
        to_bytes(&Value::Map(m))
    }

    /// Parses a `CertificateIssued` body.
    ///
    /// # Errors
    /// A [`RecordError`] naming what is wrong.
    pub fn decode(b: &[u8]) -> Result<Self, RecordError> {
        let m = Fields::parse("CertificateIssued", b)?;
        Ok(Self {
            product: m.parsed(0, "0 product", ProductKey::parse)?,
            uid: DeviceUid::new(&m.bytes(1, "1 UID")?).map_err(|_| m.bad("1 UID"))?,
            serial: Serial::from_be_bytes(&m.bytes(2, "2 serial")?)
                .map_err(|_| m.bad("2 serial"))?,
            spki: m.bytes(3, "3 device key")?,
            not_before: UnixTime(m.uint(4, "4 notBefore")?),
            job: match m.get(5) {
                Some(_) => Some(m.parsed(5, "5 job", JobId::new)?),
                None => None,
            },
            station: match m.get(6) {
                Some(_) => Some(m.parsed(6, "6 station", StationId::new)?),
                None => None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product_def(firmware: Option<FirmwareDef>) -> ProductDef {
        ProductDef {
            product: ProductKey::parse("acme/thermo").unwrap(),
            package_id: [3; 16],
            template: "[subject]\n".into(),
            root_cert: vec![0x30, 1, 2],
            device_ca_cert: Some(vec![0x30, 4]),
            key_label: "product:0123456789abcdef0123".into(),
            signing_key_spki: vec![0x30, 9],
            serial_range: Some((1, 1000)),
            firmware,
        }
    }

    #[test]
    fn product_def_round_trips() {
        for fw in [
            None,
            Some(FirmwareDef {
                family: "mcu-a".into(),
                boot_key_hash: [5; 32],
                family_key: None,
            }),
            Some(FirmwareDef {
                family: "mcu-a".into(),
                boot_key_hash: [5; 32],
                family_key: Some(FamilyKeyDef {
                    label: "family:00".into(),
                    point: vec![4; 65],
                }),
            }),
        ] {
            let d = product_def(fw);
            assert_eq!(ProductDef::decode(&d.encode()).unwrap(), d);
        }
        let bare = ProductDef {
            device_ca_cert: None,
            serial_range: None,
            ..product_def(None)
        };
        assert_eq!(ProductDef::decode(&bare.encode()).unwrap(), bare);
    }

    #[test]
    fn package_imported_round_trips_and_is_stable() {
        let p = PackageImported {
            package_id: [1; 16],
            hsm_fingerprint: Fingerprint::new([2; 32]),
            product: ProductKey::parse("acme/thermo").unwrap(),
            count: 100,
            time: UnixTime(1_700_000_000),
        };
        let b = p.encode();
        assert_eq!(PackageImported::decode(&b).unwrap(), p);
        // The wire bytes as the earlier release wrote them: a 5-entry map, keys 0..4 in order.
        assert_eq!(b.first(), Some(&0xa5));
        assert_eq!(b.get(1..4), Some(&[0x00, 0x50, 0x01][..]));
    }

    #[test]
    fn issuance_record_round_trips() {
        let jobs = [None, Some(JobId::new("j1").unwrap())];
        let stations = [None, Some(StationId::new("line-1.st-02").unwrap())];
        for (job, station) in jobs.into_iter().zip(stations) {
            let r = IssuanceRecord {
                product: ProductKey::parse("acme/thermo").unwrap(),
                uid: DeviceUid::new(&[0xab; 8]).unwrap(),
                serial: Serial::from_be_bytes(&[0x01, 0x02]).unwrap(),
                spki: vec![0x30, 0x59],
                not_before: UnixTime(1_700_000_000),
                job,
                station,
            };
            assert_eq!(IssuanceRecord::decode(&r.encode()).unwrap(), r);
        }
    }

    #[test]
    fn truncated_or_mistyped_bodies_are_errors() {
        let b = product_def(None).encode();
        for cut in 0..b.len() {
            assert!(ProductDef::decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        // A PackageImported whose package id is 15 bytes.
        let short = to_bytes(&Value::Map(vec![
            (int(0), Value::Bytes(vec![1; 15])),
            (int(1), Value::Bytes(vec![2; 32])),
            (int(2), Value::Text("a/b".into())),
            (int(3), int(1)),
            (int(4), int(0)),
        ]));
        assert!(matches!(
            PackageImported::decode(&short),
            Err(RecordError::Field { .. })
        ));
        assert!(IssuanceRecord::decode(b"\xa1\x61a\x00").is_err());
        // A product key without its `/` names the field.
        let slashless = to_bytes(&Value::Map(vec![
            (int(0), Value::Bytes(vec![1; 16])),
            (int(1), Value::Bytes(vec![2; 32])),
            (int(2), Value::Text("acme".into())),
            (int(3), int(1)),
            (int(4), int(0)),
        ]));
        assert_eq!(
            PackageImported::decode(&slashless).unwrap_err().to_string(),
            "PackageImported body: field 2 product is missing or invalid"
        );
    }
}
