//! Identifiers, each parsed once at the edge into a type that can only hold a valid value.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::limits;

/// Why a string or byte string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The value is empty.
    #[error("{what} is empty")]
    Empty {
        /// Which identifier.
        what: &'static str,
    },
    /// The value is longer than its limit.
    #[error("{what} is {len} long, the limit is {limit}")]
    TooLong {
        /// Which identifier.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The value holds a character outside its alphabet.
    #[error("{what} may hold only letters, digits, '.', '-' and '_'; found {found:?}")]
    BadChar {
        /// Which identifier.
        what: &'static str,
        /// The first character refused.
        found: char,
    },
    /// The value is not hexadecimal.
    #[error("{what} is not hexadecimal")]
    NotHex {
        /// Which identifier.
        what: &'static str,
    },
    /// A certificate serial number that RFC 5280 forbids.
    #[error("serial number must be positive and at most 20 octets (RFC 5280 4.1.2.2)")]
    BadSerial,
    /// A pair written without its separator (a product key without the `/`).
    #[error("{what} must be written {form}")]
    NoSeparator {
        /// Which identifier.
        what: &'static str,
        /// The form expected, as `oem/product`.
        form: &'static str,
    },
    /// A fixed-length value of another length.
    #[error("{what} is {len} bytes, it must be {expected}")]
    WrongLength {
        /// Which identifier.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The length it must have.
        expected: usize,
    },
}

/// Checks a name-like identifier that has no type of its own (a firmware family, say) by the
/// rule of [`OemId`] and [`ProductId`]: 1 to 64 of `[A-Za-z0-9._-]`. `what` names it in the error.
///
/// # Errors
/// When it is empty, too long, or holds a character outside `[A-Za-z0-9._-]`.
pub fn check_name(what: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { what });
    }
    let len = s.chars().count();
    if len > limits::ID_CHARS {
        return Err(IdError::TooLong {
            what,
            len,
            limit: limits::ID_CHARS,
        });
    }
    if let Some(found) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(IdError::BadChar { what, found });
    }
    Ok(())
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Parses and checks an identifier.
            ///
            /// # Errors
            /// When it is empty, too long, or holds a character outside `[A-Za-z0-9._-]`.
            pub fn new(s: &str) -> Result<Self, IdError> {
                check_name($what, s)?;
                Ok(Self(s.to_owned()))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_id!(
    /// The OEM that owns a product, its root CA and its devices.
    OemId,
    "OEM id"
);
name_id!(
    /// A product of one OEM; bound to the OEM id inside the HSM.
    ProductId,
    "product id"
);
name_id!(
    /// A production job: a quantity of one product reserved for stations.
    JobId,
    "job id"
);
name_id!(
    /// An HSM, as its operator names it at initialisation and its identity certificate says.
    HsmId,
    "HSM id"
);
name_id!(
    /// A station (a programmer on the line) as its certificate from the HSM's station CA names
    /// it; every ledger record it causes through the HSM service names it.
    StationId,
    "station id"
);

/// A product as the HSM and the ledger key it: the (OEM id, product id) pair, written
/// `oem/product`. Neither half may hold a `/` (the id alphabet has none), so the form parses back
/// to the same pair.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProductKey {
    oem: OemId,
    product: ProductId,
}

impl ProductKey {
    /// The key of `product` of `oem`.
    pub fn new(oem: OemId, product: ProductId) -> Self {
        Self { oem, product }
    }

    /// Parses `oem/product`.
    ///
    /// # Errors
    /// [`IdError::NoSeparator`] without a `/`, or the refusal of either id (a second `/` is a
    /// character the product id refuses).
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let (oem, product) = s.split_once('/').ok_or(IdError::NoSeparator {
            what: "product key",
            form: "oem/product",
        })?;
        Ok(Self::new(OemId::new(oem)?, ProductId::new(product)?))
    }

    /// The OEM.
    pub fn oem(&self) -> &OemId {
        &self.oem
    }

    /// The product.
    pub fn product(&self) -> &ProductId {
        &self.product
    }
}

impl From<(OemId, ProductId)> for ProductKey {
    fn from((oem, product): (OemId, ProductId)) -> Self {
        Self::new(oem, product)
    }
}

impl FromStr for ProductKey {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

impl fmt::Display for ProductKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.oem, self.product)
    }
}

impl fmt::Debug for ProductKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProductKey({:?})", self.to_string())
    }
}

impl Serialize for ProductKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ProductKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A SHA-256 fingerprint (of an HSM identity certificate, say): 32 bytes, written as 64
/// lowercase hexadecimal digits. It names public data, so equality is not constant-time.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fingerprint([u8; Self::LEN]);

impl Fingerprint {
    /// The length of a SHA-256 digest.
    pub const LEN: usize = 32;

    /// A fingerprint from a digest.
    pub fn new(digest: [u8; Self::LEN]) -> Self {
        Self(digest)
    }

    /// A fingerprint from a byte slice.
    ///
    /// # Errors
    /// [`IdError::WrongLength`] unless it is 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, IdError> {
        <[u8; Self::LEN]>::try_from(bytes)
            .map(Self)
            .map_err(|_| IdError::WrongLength {
                what: "fingerprint",
                len: bytes.len(),
                expected: Self::LEN,
            })
    }

    /// A fingerprint from 64 hexadecimal digits.
    ///
    /// # Errors
    /// [`IdError::NotHex`], or [`IdError::WrongLength`] for another number of bytes.
    pub fn from_hex(s: &str) -> Result<Self, IdError> {
        let bytes = hex::decode(s).map_err(|_| IdError::NotHex {
            what: "fingerprint",
        })?;
        Self::from_slice(&bytes)
    }

    /// The digest.
    pub fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }

    /// Lowercase hexadecimal.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl From<[u8; 32]> for Fingerprint {
    fn from(digest: [u8; Self::LEN]) -> Self {
        Self::new(digest)
    }
}

impl FromStr for Fingerprint {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::from_hex(s)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

/// The unique id a device reports (a secure element's serial number, an MCU's UID): 1 to 32
/// bytes, shown as lowercase hexadecimal.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceUid(Vec<u8>);

impl DeviceUid {
    /// A device uid from its bytes.
    ///
    /// # Errors
    /// When it is empty or longer than [`limits::DEVICE_UID_BYTES`].
    pub fn new(bytes: &[u8]) -> Result<Self, IdError> {
        if bytes.is_empty() {
            return Err(IdError::Empty { what: "device uid" });
        }
        if bytes.len() > limits::DEVICE_UID_BYTES {
            return Err(IdError::TooLong {
                what: "device uid",
                len: bytes.len(),
                limit: limits::DEVICE_UID_BYTES,
            });
        }
        Ok(Self(bytes.to_vec()))
    }

    /// A device uid from hexadecimal text.
    ///
    /// # Errors
    /// When the text is not hexadecimal or the bytes are not a valid uid.
    pub fn from_hex(s: &str) -> Result<Self, IdError> {
        let bytes = hex::decode(s).map_err(|_| IdError::NotHex { what: "device uid" })?;
        Self::new(&bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Lowercase hexadecimal.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

impl fmt::Display for DeviceUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for DeviceUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceUid({})", self.to_hex())
    }
}

impl FromStr for DeviceUid {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::from_hex(s)
    }
}

/// A certificate serial number: a positive integer of at most 20 octets (RFC 5280 §4.1.2.2),
/// held as its minimal unsigned big-endian bytes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Serial(Vec<u8>);

impl Serial {
    /// Most octets of a serial's DER INTEGER content (RFC 5280 §4.1.2.2).
    pub const MAX_OCTETS: usize = 20;

    /// A serial from unsigned big-endian bytes; leading zeros are dropped.
    ///
    /// # Errors
    /// When the value is zero, or its DER encoding (with the sign octet a high bit needs) would
    /// exceed 20 octets.
    pub fn from_be_bytes(bytes: &[u8]) -> Result<Self, IdError> {
        let first = bytes
            .iter()
            .position(|b| *b != 0)
            .ok_or(IdError::BadSerial)?;
        let minimal = &bytes[first..];
        let der_len = minimal.len() + usize::from(minimal[0] & 0x80 != 0);
        if der_len > Self::MAX_OCTETS {
            return Err(IdError::BadSerial);
        }
        Ok(Self(minimal.to_vec()))
    }

    /// A serial from a number.
    ///
    /// # Errors
    /// When the number is zero.
    pub fn from_u64(n: u64) -> Result<Self, IdError> {
        Self::from_be_bytes(&n.to_be_bytes())
    }

    /// A serial from hexadecimal text (an optional `0x` prefix and `:` separators are accepted).
    ///
    /// # Errors
    /// When the text is not hexadecimal or not a valid serial.
    pub fn from_hex(s: &str) -> Result<Self, IdError> {
        let cleaned: String = s
            .trim_start_matches("0x")
            .chars()
            .filter(|c| *c != ':')
            .collect();
        let padded = if cleaned.len() % 2 == 1 {
            format!("0{cleaned}")
        } else {
            cleaned
        };
        let bytes = hex::decode(padded).map_err(|_| IdError::NotHex { what: "serial" })?;
        Self::from_be_bytes(&bytes)
    }

    /// The minimal unsigned big-endian bytes (no sign octet).
    pub fn as_be_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The value as a number, when it fits in 64 bits.
    pub fn to_u64(&self) -> Option<u64> {
        if self.0.len() > 8 {
            return None;
        }
        let mut buf = [0u8; 8];
        buf[8 - self.0.len()..].copy_from_slice(&self.0);
        Some(u64::from_be_bytes(buf))
    }

    /// Lowercase hexadecimal, the form `openssl x509 -serial` prints (upper-cased there).
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({})", self.to_hex())
    }
}

impl FromStr for Serial {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::from_hex(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_refuse_empty_long_and_odd_characters() {
        assert_eq!(OemId::new(""), Err(IdError::Empty { what: "OEM id" }));
        assert!(matches!(
            ProductId::new(&"a".repeat(65)),
            Err(IdError::TooLong { len: 65, .. })
        ));
        assert_eq!(
            ProductId::new("sensor/1"),
            Err(IdError::BadChar {
                what: "product id",
                found: '/'
            })
        );
        assert_eq!(OemId::new("acme-iot_1.0").unwrap().as_str(), "acme-iot_1.0");
    }

    #[test]
    fn job_and_hsm_ids_follow_the_name_rules() {
        assert_eq!(
            JobId::new("job-2026.01_a").unwrap().to_string(),
            "job-2026.01_a"
        );
        assert_eq!(JobId::new(""), Err(IdError::Empty { what: "job id" }));
        assert!(matches!(
            JobId::new("job 1"),
            Err(IdError::BadChar { found: ' ', .. })
        ));
        assert!(matches!(
            HsmId::new(&"h".repeat(65)),
            Err(IdError::TooLong { what: "HSM id", .. })
        ));
        assert_eq!("hsm-1".parse::<HsmId>().unwrap().as_str(), "hsm-1");
    }

    #[test]
    fn product_key_parses_and_displays_as_oem_slash_product() {
        let k: ProductKey = "acme/sensor-1".parse().unwrap();
        assert_eq!(k.oem().as_str(), "acme");
        assert_eq!(k.product().as_str(), "sensor-1");
        assert_eq!(k.to_string(), "acme/sensor-1");
        assert_eq!(format!("{k:?}"), r#"ProductKey("acme/sensor-1")"#);
        let pair = (
            OemId::new("acme").unwrap(),
            ProductId::new("sensor-1").unwrap(),
        );
        assert_eq!(ProductKey::from(pair), k);
    }

    #[test]
    fn product_key_refusals() {
        assert_eq!(
            ProductKey::parse("acme"),
            Err(IdError::NoSeparator {
                what: "product key",
                form: "oem/product"
            })
        );
        assert_eq!(
            ProductKey::parse("/p"),
            Err(IdError::Empty { what: "OEM id" })
        );
        assert_eq!(
            ProductKey::parse("acme/"),
            Err(IdError::Empty { what: "product id" })
        );
        assert_eq!(
            ProductKey::parse("acme/a/b"),
            Err(IdError::BadChar {
                what: "product id",
                found: '/'
            })
        );
        assert!(matches!(
            ProductKey::parse("ac me/p"),
            Err(IdError::BadChar { what: "OEM id", .. })
        ));
    }

    #[test]
    fn fingerprint_is_32_bytes_in_hex() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let f: Fingerprint = hex.parse().unwrap();
        assert_eq!(f.to_string(), hex);
        assert_eq!(f.as_bytes()[1], 0x11);
        assert_eq!(Fingerprint::from_hex(&hex.to_uppercase()), Ok(f));
        assert_eq!(Fingerprint::from_slice(f.as_bytes()), Ok(f));
        assert_eq!(Fingerprint::from([7; 32]).as_bytes(), &[7; 32]);
        assert_eq!(
            Fingerprint::from_hex(&hex[..62]),
            Err(IdError::WrongLength {
                what: "fingerprint",
                len: 31,
                expected: 32
            })
        );
        assert!(matches!(
            Fingerprint::from_slice(&[0; 33]),
            Err(IdError::WrongLength { len: 33, .. })
        ));
        assert_eq!(
            Fingerprint::from_hex(&format!("{}zz", &hex[..62])),
            Err(IdError::NotHex {
                what: "fingerprint"
            })
        );
        assert!(Fingerprint::from_hex("").is_err());
    }

    #[test]
    fn uid_limits() {
        assert!(DeviceUid::new(&[]).is_err());
        assert!(DeviceUid::new(&[0; 33]).is_err());
        assert_eq!(DeviceUid::from_hex("0123ee").unwrap().to_hex(), "0123ee");
        assert!(DeviceUid::from_hex("xyz").is_err());
    }

    #[test]
    fn serial_rules_of_rfc5280() {
        assert_eq!(Serial::from_u64(0), Err(IdError::BadSerial));
        assert_eq!(Serial::from_u64(1).unwrap().as_be_bytes(), &[1]);
        assert_eq!(Serial::from_hex("00:00:ab").unwrap().as_be_bytes(), &[0xab]);
        // 20 octets with a high bit need a 21st sign octet: refused.
        assert!(Serial::from_be_bytes(&[0x80; 20]).is_err());
        assert!(Serial::from_be_bytes(&[0x7f; 20]).is_ok());
        assert_eq!(Serial::from_u64(0x1234).unwrap().to_u64(), Some(0x1234));
    }

    proptest! {
        #[test]
        fn serial_hex_round_trips(n in 1u64..) {
            let s = Serial::from_u64(n).unwrap();
            prop_assert_eq!(s.to_u64(), Some(n));
            prop_assert_eq!(Serial::from_hex(&s.to_hex()).unwrap(), s);
        }
    }
}
