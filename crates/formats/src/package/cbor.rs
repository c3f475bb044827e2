//! The payload: a CBOR map with small integer keys (`docs/package.md`). Decoding is strict:
//! every required key once, no unknown key, every value of its type and within its limit.

use ciborium::Value;
use trustfab_types::{Fingerprint, OemId, ProductId, UnixTime};

use super::{Contents, Error, Firmware, SerialRange, PACKAGE_VERSION};

const K_VERSION: u64 = 0;
const K_PACKAGE_ID: u64 = 1;
const K_TARGET_HSM: u64 = 2;
const K_OEM_ID: u64 = 3;
const K_PRODUCT_ID: u64 = 4;
const K_COUNT: u64 = 5;
const K_SERIAL_RANGE: u64 = 6;
const K_NOT_BEFORE: u64 = 7;
const K_NOT_AFTER: u64 = 8;
const K_TEMPLATE: u64 = 9;
const K_ROOT_CERT: u64 = 10;
const K_DEVICE_CA_CERT: u64 = 11;
const K_WRAPPED_KEY: u64 = 12;
const K_FIRMWARE: u64 = 13;
const KEY_NAMES: [&str; 14] = [
    "version",
    "package_id",
    "target_hsm",
    "oem_id",
    "product_id",
    "count",
    "serial_range",
    "not_before",
    "not_after",
    "template",
    "root_cert",
    "device_ca_cert",
    "wrapped_signing_key",
    "firmware",
];
const FW_FAMILY: u64 = 0;
const FW_BOOT_KEY_HASH: u64 = 1;
const FW_WRAPPED_KEY: u64 = 2;

/// Largest production count in one package (2^40: a trillion devices).
pub(crate) const COUNT_MAX: u64 = 1 << 40;
const CERT_MAX: usize = trustfab_types::limits::CERTIFICATE_BYTES;
const WRAPPED_MAX: usize = 4096;

fn int(n: u64) -> Value {
    Value::Integer(n.into())
}

pub(crate) fn encode(c: &Contents) -> Result<Vec<u8>, Error> {
    if c.count == 0 || c.count > COUNT_MAX {
        return Err(Error::Payload(format!(
            "count {} is not between 1 and 2^40",
            c.count
        )));
    }
    let mut map = vec![
        (int(K_VERSION), int(PACKAGE_VERSION)),
        (int(K_PACKAGE_ID), Value::Bytes(c.package_id.to_vec())),
        (
            int(K_TARGET_HSM),
            Value::Bytes(c.target_hsm.as_bytes().to_vec()),
        ),
        (int(K_OEM_ID), Value::Text(c.oem_id.to_string())),
        (int(K_PRODUCT_ID), Value::Text(c.product_id.to_string())),
        (int(K_COUNT), int(c.count)),
    ];
    if let Some(r) = c.serial_range {
        map.push((
            int(K_SERIAL_RANGE),
            Value::Array(vec![int(r.first), int(r.last)]),
        ));
    }
    map.extend([
        (int(K_NOT_BEFORE), int(c.not_before.0)),
        (int(K_NOT_AFTER), int(c.not_after.0)),
        (int(K_TEMPLATE), Value::Text(c.template.clone())),
        (int(K_ROOT_CERT), Value::Bytes(c.root_cert.clone())),
    ]);
    if let Some(ca) = &c.device_ca_cert {
        map.push((int(K_DEVICE_CA_CERT), Value::Bytes(ca.clone())));
    }
    map.push((
        int(K_WRAPPED_KEY),
        Value::Bytes(c.wrapped_signing_key.clone()),
    ));
    if let Some(fw) = &c.firmware {
        check_family(&fw.family)?;
        let mut m = vec![
            (int(FW_FAMILY), Value::Text(fw.family.clone())),
            (
                int(FW_BOOT_KEY_HASH),
                Value::Bytes(fw.boot_key_hash.to_vec()),
            ),
        ];
        if let Some(w) = &fw.wrapped_family_key {
            m.push((int(FW_WRAPPED_KEY), Value::Bytes(w.clone())));
        }
        map.push((int(K_FIRMWARE), Value::Map(m)));
    }
    let mut out = Vec::new();
    ciborium::into_writer(&Value::Map(map), &mut out)
        .map_err(|e| Error::Payload(format!("encoding: {e}")))?;
    Ok(out)
}

fn bad(key: u64, what: &str) -> Error {
    let name = usize::try_from(key)
        .ok()
        .and_then(|k| KEY_NAMES.get(k))
        .copied()
        .unwrap_or("?");
    Error::Payload(format!("{name} ({key}): {what}"))
}

fn as_u64(key: u64, v: &Value) -> Result<u64, Error> {
    v.as_integer()
        .and_then(|i| u64::try_from(i).ok())
        .ok_or_else(|| bad(key, "not an unsigned integer"))
}

fn as_bytes(key: u64, v: Value, max: usize) -> Result<Vec<u8>, Error> {
    match v {
        Value::Bytes(b) if b.len() <= max => Ok(b),
        Value::Bytes(b) => Err(bad(key, &format!("{} bytes, the limit is {max}", b.len()))),
        _ => Err(bad(key, "not a byte string")),
    }
}

fn as_array<const N: usize>(key: u64, v: Value) -> Result<[u8; N], Error> {
    let b = as_bytes(key, v, N)?;
    b.try_into()
        .map_err(|_| bad(key, &format!("must be {N} bytes")))
}

fn as_text(key: u64, v: Value, max: usize) -> Result<String, Error> {
    match v {
        Value::Text(t) if t.len() <= max => Ok(t),
        Value::Text(_) => Err(bad(key, &format!("longer than {max} bytes"))),
        _ => Err(bad(key, "not a text string")),
    }
}

struct Slots([Option<Value>; 14]);

impl Slots {
    fn take(&mut self, key: u64) -> Option<Value> {
        usize::try_from(key)
            .ok()
            .and_then(|i| self.0.get_mut(i))
            .and_then(Option::take)
    }

    fn need(&mut self, key: u64) -> Result<Value, Error> {
        self.take(key).ok_or_else(|| bad(key, "is missing"))
    }
}

pub(crate) fn decode(payload: &[u8]) -> Result<Contents, Error> {
    let value: Value =
        ciborium::from_reader(payload).map_err(|_| Error::Payload("not a CBOR item".into()))?;
    let Value::Map(entries) = value else {
        return Err(Error::Payload("not a CBOR map".into()));
    };
    let mut slots: [Option<Value>; 14] = Default::default();
    for (k, v) in entries {
        let key = k
            .as_integer()
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| Error::Payload("a key is not a small unsigned integer".into()))?;
        let slot = usize::try_from(key)
            .ok()
            .and_then(|i| slots.get_mut(i))
            .ok_or_else(|| Error::Payload(format!("unknown key {key}")))?;
        if slot.replace(v).is_some() {
            return Err(bad(key, "appears twice"));
        }
    }
    let mut slots = Slots(slots);

    let version = as_u64(K_VERSION, &slots.need(K_VERSION)?)?;
    if version != PACKAGE_VERSION {
        return Err(Error::Version { found: version });
    }
    let package_id = as_array::<16>(K_PACKAGE_ID, slots.need(K_PACKAGE_ID)?)?;
    let target_hsm = Fingerprint::new(as_array::<32>(K_TARGET_HSM, slots.need(K_TARGET_HSM)?)?);
    let oem_id = OemId::new(&as_text(K_OEM_ID, slots.need(K_OEM_ID)?, 64)?)
        .map_err(|e| bad(K_OEM_ID, &e.to_string()))?;
    let product_id = ProductId::new(&as_text(K_PRODUCT_ID, slots.need(K_PRODUCT_ID)?, 64)?)
        .map_err(|e| bad(K_PRODUCT_ID, &e.to_string()))?;
    let count = as_u64(K_COUNT, &slots.need(K_COUNT)?)?;
    if count == 0 || count > COUNT_MAX {
        return Err(bad(K_COUNT, "not between 1 and 2^40"));
    }
    let serial_range = match slots.take(K_SERIAL_RANGE) {
        None => None,
        Some(Value::Array(a)) if a.len() == 2 => {
            let first = as_u64(K_SERIAL_RANGE, a.first().unwrap_or(&Value::Null))?;
            let last = as_u64(K_SERIAL_RANGE, a.get(1).unwrap_or(&Value::Null))?;
            if first == 0 || first > last || last - first + 1 < count {
                return Err(bad(
                    K_SERIAL_RANGE,
                    "must be positive, ordered, and hold at least count serials",
                ));
            }
            Some(SerialRange { first, last })
        }
        Some(_) => return Err(bad(K_SERIAL_RANGE, "not an array [first, last]")),
    };
    let not_before = UnixTime(as_u64(K_NOT_BEFORE, &slots.need(K_NOT_BEFORE)?)?);
    let not_after = UnixTime(as_u64(K_NOT_AFTER, &slots.need(K_NOT_AFTER)?)?);
    if not_after <= not_before {
        return Err(bad(K_NOT_AFTER, "is not after not_before"));
    }
    let template = as_text(
        K_TEMPLATE,
        slots.need(K_TEMPLATE)?,
        trustfab_types::limits::TEMPLATE_BYTES,
    )?;
    let root_cert = as_bytes(K_ROOT_CERT, slots.need(K_ROOT_CERT)?, CERT_MAX)?;
    let device_ca_cert = slots
        .take(K_DEVICE_CA_CERT)
        .map(|v| as_bytes(K_DEVICE_CA_CERT, v, CERT_MAX))
        .transpose()?;
    let wrapped_signing_key = as_bytes(K_WRAPPED_KEY, slots.need(K_WRAPPED_KEY)?, WRAPPED_MAX)?;
    let firmware = slots.take(K_FIRMWARE).map(decode_firmware).transpose()?;
    Ok(Contents {
        package_id,
        target_hsm,
        oem_id,
        product_id,
        count,
        serial_range,
        not_before,
        not_after,
        template,
        root_cert,
        device_ca_cert,
        wrapped_signing_key,
        firmware,
    })
}

/// A family name: 1 to 64 of `[A-Za-z0-9._-]`, the rule of the other ids.
fn check_family(family: &str) -> Result<(), Error> {
    trustfab_types::check_name("family", family).map_err(|e| bad(K_FIRMWARE, &e.to_string()))
}

/// The firmware map (key 13): `{0: family, 1: boot key hash, ? 2: wrapped family key}`, strict
/// like the outer map.
fn decode_firmware(v: Value) -> Result<Firmware, Error> {
    let Value::Map(entries) = v else {
        return Err(bad(K_FIRMWARE, "not a map"));
    };
    let mut fields: [Option<Value>; 3] = Default::default();
    for (k, v) in entries {
        let slot = k
            .as_integer()
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| fields.get_mut(i))
            .ok_or_else(|| bad(K_FIRMWARE, "unknown key in the firmware map"))?;
        if slot.replace(v).is_some() {
            return Err(bad(K_FIRMWARE, "a key appears twice in the firmware map"));
        }
    }
    let [family, hash, wrapped] = fields;
    let family = as_text(
        K_FIRMWARE,
        family.ok_or_else(|| bad(K_FIRMWARE, "family is missing"))?,
        64,
    )?;
    check_family(&family)?;
    let boot_key_hash = as_array::<32>(
        K_FIRMWARE,
        hash.ok_or_else(|| bad(K_FIRMWARE, "boot key hash is missing"))?,
    )?;
    let wrapped_family_key = wrapped
        .map(|w| as_bytes(K_FIRMWARE, w, WRAPPED_MAX))
        .transpose()?;
    Ok(Firmware {
        family,
        boot_key_hash,
        wrapped_family_key,
    })
}
