//! PEM in and out, with the size limits of `trustfab_types::limits`.

use pem::{EncodeConfig, LineEnding, Pem};

use crate::Error;

/// Largest PEM text accepted by the helpers here (a chain or a CRL).
const MAX_PEM_BYTES: usize = trustfab_types::limits::CRL_BYTES * 2;

/// Every block with `label` in `text`, decoded, in order.
///
/// # Errors
/// When the text is too large or not PEM.
pub fn decode_all(text: &str, label: &str) -> Result<Vec<Vec<u8>>, Error> {
    if text.len() > MAX_PEM_BYTES {
        return Err(Error::TooLarge {
            what: "PEM text",
            len: text.len(),
            limit: MAX_PEM_BYTES,
        });
    }
    let blocks = pem::parse_many(text).map_err(|_| Error::Pem {
        label: label.into(),
    })?;
    Ok(blocks
        .into_iter()
        .filter(|p| p.tag() == label)
        .map(Pem::into_contents)
        .collect())
}

/// The single block with `label` in `text`.
///
/// # Errors
/// When there is none, more than one, or the text is not PEM.
pub fn decode_one(text: &str, label: &str) -> Result<Vec<u8>, Error> {
    let mut all = decode_all(text, label)?;
    match all.len() {
        1 => Ok(all.remove(0)),
        0 => Err(Error::Pem {
            label: label.into(),
        }),
        n => Err(Error::PemCount {
            label: label.into(),
            found: n,
        }),
    }
}

/// PEM text of `der` under `label`, with LF line endings.
pub fn encode(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &Pem::new(label, der),
        EncodeConfig::new().set_line_ending(LineEnding::LF),
    )
}

/// A certificate as PEM.
pub fn cert_pem(der: &[u8]) -> String {
    encode("CERTIFICATE", der)
}

/// The certificate in PEM text, or DER if the bytes are not text.
///
/// # Errors
/// When the input is too large or holds no single certificate.
pub fn cert_from_pem_or_der(bytes: &[u8]) -> Result<Vec<u8>, Error> {
    let limit = trustfab_types::limits::CERTIFICATE_BYTES;
    if bytes.len() > limit {
        return Err(Error::TooLarge {
            what: "certificate",
            len: bytes.len(),
            limit,
        });
    }
    match std::str::from_utf8(bytes) {
        Ok(text) if text.contains("-----BEGIN") => decode_one(text, "CERTIFICATE"),
        _ => Ok(bytes.to_vec()),
    }
}
