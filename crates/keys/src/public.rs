//! [`PublicKey`]: an EC public key checked once, when it is made, to be a point on its curve.

use std::fmt;

use aws_lc_rs::signature::{ParsedPublicKey, UnparsedPublicKey};
use trustfab_types::limits;
use yasna::models::ObjectIdentifier;

use crate::{Curve, Error};

/// id-ecPublicKey, RFC 5480 §2.1.1.
const OID_EC_PUBLIC_KEY: &[u64] = &[1, 2, 840, 10045, 2, 1];

/// An EC public key: a curve and an uncompressed SEC1 point checked to lie on it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicKey {
    curve: Curve,
    point: Vec<u8>,
}

impl PublicKey {
    /// A public key from an uncompressed SEC1 point (`04 || X || Y`).
    ///
    /// # Errors
    /// [`Error::BadPublicKey`] when the point is not an uncompressed point on `curve`.
    pub fn from_point(curve: Curve, point: &[u8]) -> Result<Self, Error> {
        if point.len() != curve.point_len() || point.first() != Some(&0x04) {
            return Err(Error::BadPublicKey(
                "not an uncompressed point of the curve",
            ));
        }
        ParsedPublicKey::new(curve.verify_alg(), point)
            .map_err(|_| Error::BadPublicKey("point is not on the curve"))?;
        Ok(Self {
            curve,
            point: point.to_vec(),
        })
    }

    /// A public key from SubjectPublicKeyInfo DER (RFC 5480).
    ///
    /// # Errors
    /// [`Error::TooLarge`] over [`limits::PUBLIC_KEY_BYTES`]; [`Error::BadPublicKey`] when the
    /// DER is malformed, the key is not EC on P-256/P-384, or the point is off the curve.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, Error> {
        if der.len() > limits::PUBLIC_KEY_BYTES {
            return Err(Error::TooLarge {
                what: "public key",
                len: der.len(),
                limit: limits::PUBLIC_KEY_BYTES,
            });
        }
        // SEQUENCE { SEQUENCE { id-ecPublicKey, namedCurve }, BIT STRING point }
        let (alg, param, point) = yasna::parse_der(der, |r| {
            r.read_sequence(|r| {
                let (alg, param) = r.next().read_sequence(|r| {
                    let alg = r.next().read_oid()?;
                    let param = r.next().read_oid()?;
                    Ok((alg, param))
                })?;
                let (bits, _) = r.next().read_bitvec_bytes()?;
                Ok((alg, param, bits))
            })
        })
        .map_err(|_| Error::BadPublicKey("not SubjectPublicKeyInfo DER"))?;
        if alg.components().as_slice() != OID_EC_PUBLIC_KEY {
            return Err(Error::BadPublicKey("not an EC public key"));
        }
        let curve = Curve::from_oid(param.components().as_slice())
            .ok_or(Error::BadPublicKey("curve is not P-256 or P-384"))?;
        Self::from_point(curve, &point)
    }

    /// The curve.
    pub fn curve(&self) -> Curve {
        self.curve
    }

    /// The uncompressed SEC1 point (`04 || X || Y`).
    pub fn point(&self) -> &[u8] {
        &self.point
    }

    /// SubjectPublicKeyInfo DER (RFC 5480 §2: id-ecPublicKey with the named curve, the point as
    /// a BIT STRING with no unused bits).
    pub fn to_spki_der(&self) -> Vec<u8> {
        yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_sequence(|w| {
                    w.next()
                        .write_oid(&ObjectIdentifier::from_slice(OID_EC_PUBLIC_KEY));
                    w.next()
                        .write_oid(&ObjectIdentifier::from_slice(self.curve.oid()));
                });
                w.next()
                    .write_bitvec_bytes(&self.point, self.point.len().saturating_mul(8));
            });
        })
    }

    /// Checks a DER ECDSA signature over `message` (hashed with the curve's hash).
    ///
    /// # Errors
    /// [`Error::BadSignature`] when the signature does not verify.
    pub fn verify(&self, message: &[u8], signature_der: impl AsRef<[u8]>) -> Result<(), Error> {
        UnparsedPublicKey::new(self.curve.verify_alg(), &self.point)
            .verify(message, signature_der.as_ref())
            .map_err(|_| Error::BadSignature)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({}, ", self.curve)?;
        for b in &self.point {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _};

    #[test]
    fn spki_der_is_what_aws_lc_writes_and_parses_back() {
        for (alg, curve) in [
            (&aws_lc_rs::agreement::ECDH_P256, Curve::P256),
            (&aws_lc_rs::agreement::ECDH_P384, Curve::P384),
        ] {
            let k = aws_lc_rs::agreement::PrivateKey::generate(alg).unwrap();
            let pubk = k.compute_public_key().unwrap();
            let ours = PublicKey::from_point(curve, pubk.as_ref()).unwrap();
            let theirs: PublicKeyX509Der<'_> = pubk.as_der().unwrap();
            assert_eq!(ours.to_spki_der(), theirs.as_ref());
            assert_eq!(PublicKey::from_spki_der(theirs.as_ref()).unwrap(), ours);
        }
    }

    #[test]
    fn public_key_refuses_points_off_the_curve() {
        let k =
            aws_lc_rs::agreement::PrivateKey::generate(&aws_lc_rs::agreement::ECDH_P256).unwrap();
        let mut point = k.compute_public_key().unwrap().as_ref().to_vec();
        assert!(PublicKey::from_point(Curve::P256, &point).is_ok());
        assert!(matches!(
            PublicKey::from_point(Curve::P384, &point),
            Err(Error::BadPublicKey(_))
        ));
        point[64] ^= 1;
        assert!(matches!(
            PublicKey::from_point(Curve::P256, &point),
            Err(Error::BadPublicKey("point is not on the curve"))
        ));
        let mut compressed = point.clone();
        compressed[0] = 0x02;
        assert!(PublicKey::from_point(Curve::P256, &compressed).is_err());
    }

    #[test]
    fn spki_refusals() {
        assert!(matches!(
            PublicKey::from_spki_der(b"\x30\x03\x02\x01\x01"),
            Err(Error::BadPublicKey("not SubjectPublicKeyInfo DER"))
        ));
        let big = vec![0x30; limits::PUBLIC_KEY_BYTES + 1];
        assert!(matches!(
            PublicKey::from_spki_der(&big),
            Err(Error::TooLarge { .. })
        ));
        // An RSA SubjectPublicKeyInfo algorithm (rsaEncryption) with an EC-looking body.
        let k =
            aws_lc_rs::agreement::PrivateKey::generate(&aws_lc_rs::agreement::ECDH_P256).unwrap();
        let pk =
            PublicKey::from_point(Curve::P256, k.compute_public_key().unwrap().as_ref()).unwrap();
        let mut der = pk.to_spki_der();
        let at = der.windows(2).position(|w| w == [0x06, 0x07]).unwrap();
        der[at + 8] ^= 0x7f; // the last arc of id-ecPublicKey
        assert!(matches!(
            PublicKey::from_spki_der(&der),
            Err(Error::BadPublicKey("not an EC public key"))
        ));
    }

    #[test]
    fn verify_accepts_its_signatures_and_refuses_others() {
        let rng = SystemRandom::new();
        for curve in [Curve::P256, Curve::P384] {
            let doc = EcdsaKeyPair::generate_pkcs8(curve.signing_alg(), &rng).unwrap();
            let pair = EcdsaKeyPair::from_pkcs8(curve.signing_alg(), doc.as_ref()).unwrap();
            let pk = PublicKey::from_point(curve, pair.public_key().as_ref()).unwrap();
            let sig = pair.sign(&rng, b"m").unwrap();
            pk.verify(b"m", sig.as_ref()).unwrap();
            assert!(matches!(
                pk.verify(b"n", sig.as_ref()),
                Err(Error::BadSignature)
            ));
        }
    }

    #[test]
    fn debug_shows_curve_and_point() {
        let k =
            aws_lc_rs::agreement::PrivateKey::generate(&aws_lc_rs::agreement::ECDH_P256).unwrap();
        let point = k.compute_public_key().unwrap().as_ref().to_vec();
        let pk = PublicKey::from_point(Curve::P256, &point).unwrap();
        let hex: String = point.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(format!("{pk:?}"), format!("PublicKey(p256, {hex})"));
    }
}
