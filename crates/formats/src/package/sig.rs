//! ECDSA signatures between their two encodings: X.509 and PKCS#11 signers give DER
//! (ECDSA-Sig-Value, RFC 3279 §2.2.3); COSE wants the fixed-size r‖s form (RFC 9053 §2.1).

use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED};
use trustfab_pki::{Curve, PublicKey};

fn scalar_len(curve: Curve) -> usize {
    match curve {
        Curve::P256 => 32,
        Curve::P384 => 48,
    }
}

/// DER ECDSA-Sig-Value to r‖s, each left-padded to the curve's scalar length.
pub(crate) fn der_to_fixed(der: &[u8], curve: Curve) -> Result<Vec<u8>, trustfab_pki::Error> {
    let bad = || trustfab_pki::Error::Crypto("signer returned a malformed DER signature");
    let (r, s, nonneg) = yasna::parse_der(der, |rd| {
        rd.read_sequence(|rd| {
            let (r, r_nonneg) = rd.next().read_bigint_bytes()?;
            let (s, s_nonneg) = rd.next().read_bigint_bytes()?;
            Ok((r, s, r_nonneg && s_nonneg))
        })
    })
    .map_err(|_| bad())?;
    // read_bigint_bytes gives the minimal magnitude, without a sign octet.
    let (r, s) = (strip(&r), strip(&s));
    let n = scalar_len(curve);
    if !nonneg || r.is_empty() || s.is_empty() || r.len() > n || s.len() > n {
        return Err(bad());
    }
    let mut out = vec![0u8; 2 * n];
    out.get_mut(n - r.len()..n)
        .ok_or_else(bad)?
        .copy_from_slice(&r);
    out.get_mut(2 * n - s.len()..)
        .ok_or_else(bad)?
        .copy_from_slice(&s);
    Ok(out)
}

fn strip(b: &[u8]) -> Vec<u8> {
    let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    b.get(first..).unwrap_or_default().to_vec()
}

/// Verifies a fixed-size r‖s signature over `data` with `key`.
pub(crate) fn verify_fixed(key: &PublicKey, data: &[u8], sig: &[u8]) -> Result<(), ()> {
    let alg = match key.curve() {
        Curve::P256 => &ECDSA_P256_SHA256_FIXED,
        Curve::P384 => &ECDSA_P384_SHA384_FIXED,
    };
    UnparsedPublicKey::new(alg, key.point())
        .verify(data, sig)
        .map_err(|_| ())
}
