//! The elliptic curves trustfab uses, and everything that is a pure function of the curve.

use std::fmt;

use aws_lc_rs::digest::{self, Digest};
use aws_lc_rs::signature::{self as sig, EcdsaSigningAlgorithm, EcdsaVerificationAlgorithm};

/// The elliptic curves trustfab issues and keeps keys on. P-256 is the default; P-384 where
/// asked. Serialised, displayed and parsed as `p256` / `p384`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Curve {
    /// NIST P-256 (secp256r1); signatures use SHA-256.
    P256,
    /// NIST P-384 (secp384r1); signatures use SHA-384.
    P384,
}

impl Curve {
    /// Length of an uncompressed SEC1 point.
    pub fn point_len(self) -> usize {
        match self {
            Self::P256 => 65,
            Self::P384 => 97,
        }
    }

    /// Length of a scalar (and of each of r and s).
    pub fn scalar_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
        }
    }

    /// DER of the named-curve OID (RFC 5480 §2.1.1.1; the PKCS#11 CKA_EC_PARAMS value).
    pub fn ec_params_der(self) -> &'static [u8] {
        match self {
            Self::P256 => &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
            Self::P384 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
        }
    }

    /// The curve named by CKA_EC_PARAMS DER, if it is one of ours.
    pub fn from_ec_params_der(der: &[u8]) -> Option<Self> {
        [Self::P256, Self::P384]
            .into_iter()
            .find(|c| c.ec_params_der() == der)
    }

    /// The arcs of the named-curve OID (secp256r1 1.2.840.10045.3.1.7, secp384r1 1.3.132.0.34).
    pub(crate) fn oid(self) -> &'static [u64] {
        match self {
            Self::P256 => &[1, 2, 840, 10045, 3, 1, 7],
            Self::P384 => &[1, 3, 132, 0, 34],
        }
    }

    /// The curve named by the arcs of its OID, if it is one of ours.
    pub(crate) fn from_oid(arcs: &[u64]) -> Option<Self> {
        [Self::P256, Self::P384]
            .into_iter()
            .find(|c| c.oid() == arcs)
    }

    /// The hash the curve's signatures use, applied on the host when a token wants a digest.
    pub fn digest(self, message: &[u8]) -> Digest {
        match self {
            Self::P256 => digest::digest(&digest::SHA256, message),
            Self::P384 => digest::digest(&digest::SHA384, message),
        }
    }

    /// The aws-lc-rs verification algorithm for DER signatures on this curve.
    pub fn verify_alg(self) -> &'static EcdsaVerificationAlgorithm {
        match self {
            Self::P256 => &sig::ECDSA_P256_SHA256_ASN1,
            Self::P384 => &sig::ECDSA_P384_SHA384_ASN1,
        }
    }

    /// The aws-lc-rs signing algorithm for DER signatures on this curve.
    pub fn signing_alg(self) -> &'static EcdsaSigningAlgorithm {
        match self {
            Self::P256 => &sig::ECDSA_P256_SHA256_ASN1_SIGNING,
            Self::P384 => &sig::ECDSA_P384_SHA384_ASN1_SIGNING,
        }
    }

    /// A one-byte code used in the wrapped-key and store formats.
    pub fn code(self) -> u8 {
        match self {
            Self::P256 => 1,
            Self::P384 => 2,
        }
    }

    /// The curve for a format code.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::P256),
            2 => Some(Self::P384),
            _ => None,
        }
    }
}

impl fmt::Display for Curve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::P256 => "p256",
            Self::P384 => "p384",
        })
    }
}

impl std::str::FromStr for Curve {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "p256" | "p-256" | "prime256v1" | "secp256r1" => Ok(Self::P256),
            "p384" | "p-384" | "secp384r1" => Ok(Self::P384),
            _ => Err(format!("unknown curve {s:?}: use p256 or p384")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_params_round_trip_and_are_stable() {
        for (c, code) in [(Curve::P256, 1), (Curve::P384, 2)] {
            assert_eq!(c.code(), code);
            assert_eq!(Curve::from_code(code), Some(c));
            assert_eq!(Curve::from_ec_params_der(c.ec_params_der()), Some(c));
            assert_eq!(Curve::from_oid(c.oid()), Some(c));
            assert_eq!(c.to_string().parse::<Curve>(), Ok(c));
        }
        assert_eq!(Curve::from_code(0), None);
        assert_eq!(Curve::from_code(3), None);
        assert_eq!(Curve::from_ec_params_der(&[0x05, 0x00]), None);
    }

    #[test]
    fn names_parse_and_unknown_names_are_refused() {
        assert_eq!("P-256".parse::<Curve>(), Ok(Curve::P256));
        assert_eq!("secp384r1".parse::<Curve>(), Ok(Curve::P384));
        assert!("p521".parse::<Curve>().is_err());
        assert_eq!(Curve::P256.to_string(), "p256");
    }
}
