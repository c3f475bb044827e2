//! Certificate revocation lists (RFC 5280 §5) signed by the CA that issued the revoked
//! certificates. Pure: the caller keeps the list of revocations and the CRL number.

use std::fmt;
use std::str::FromStr;

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams};
use trustfab_types::{Serial, UnixTime};

use crate::issue::{rcgen_serial, to_time, Issuer};
use crate::Error;

/// Why a certificate was revoked (RFC 5280 §5.3.1 CRLReason).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// unspecified (0).
    Unspecified,
    /// keyCompromise (1): the device key leaked.
    KeyCompromise,
    /// affiliationChanged (3).
    AffiliationChanged,
    /// superseded (4): the device was re-provisioned.
    Superseded,
    /// cessationOfOperation (5): the device was scrapped.
    CessationOfOperation,
}

impl Reason {
    fn rcgen(self) -> RevocationReason {
        match self {
            Self::Unspecified => RevocationReason::Unspecified,
            Self::KeyCompromise => RevocationReason::KeyCompromise,
            Self::AffiliationChanged => RevocationReason::AffiliationChanged,
            Self::Superseded => RevocationReason::Superseded,
            Self::CessationOfOperation => RevocationReason::CessationOfOperation,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unspecified => "unspecified",
            Self::KeyCompromise => "key-compromise",
            Self::AffiliationChanged => "affiliation-changed",
            Self::Superseded => "superseded",
            Self::CessationOfOperation => "cessation-of-operation",
        })
    }
}

impl FromStr for Reason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "unspecified" => Self::Unspecified,
            "key-compromise" => Self::KeyCompromise,
            "affiliation-changed" => Self::AffiliationChanged,
            "superseded" => Self::Superseded,
            "cessation-of-operation" => Self::CessationOfOperation,
            _ => {
                return Err(format!(
                    "unknown reason {s:?}: use unspecified, key-compromise, affiliation-changed, superseded or cessation-of-operation"
                ))
            }
        })
    }
}

/// One revoked certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    /// Its serial number.
    pub serial: Serial,
    /// When the CA processed the revocation.
    pub at: UnixTime,
    /// Why.
    pub reason: Reason,
}

/// Builds and signs a CRL.
///
/// # Errors
/// When `next_update` is not after `this_update`, a time is out of range, or signing fails.
pub fn build_crl(
    issuer: &Issuer<'_>,
    revoked: &[Revoked],
    crl_number: u64,
    this_update: UnixTime,
    next_update: UnixTime,
) -> Result<Vec<u8>, Error> {
    if next_update <= this_update {
        return Err(Error::Validity("CRL nextUpdate must be after thisUpdate"));
    }
    let number = Serial::from_u64(crl_number.max(1))?;
    let revoked_certs = revoked
        .iter()
        .map(|r| {
            Ok(RevokedCertParams {
                serial_number: rcgen_serial(&r.serial),
                revocation_time: to_time(r.at)?,
                reason_code: Some(r.reason.rcgen()),
                invalidity_date: None,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let params = CertificateRevocationListParams {
        this_update: to_time(this_update)?,
        next_update: to_time(next_update)?,
        crl_number: rcgen_serial(&number),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    Ok(params.signed_by(issuer.rcgen())?.der().to_vec())
}
