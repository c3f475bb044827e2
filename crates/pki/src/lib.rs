#![doc = include_str!("../README.md")]

mod crl;
mod error;
mod hsm;
mod issue;
mod key;
pub mod pem;
pub mod station;
pub mod template;
mod validate;

pub use crl::{build_crl, Reason, Revoked};
pub use error::Error;
pub use hsm::{certify_hsm, HsmCertificates, HsmIdentity, HsmRequest, BINDING_PEM_LABEL};
pub use issue::{
    intermediate_ca, issue_device, self_signed_ca, CaRole, CaSpec, DeviceRequest, Issuer,
};
pub use key::{public_key_from_pem, SoftKey};
pub use station::{
    certify_station, decode_grant, encode_grant, parse_station_cert, service_certificate,
    station_ca, StationCert, StationGrant, StationRequest, GRANT_OID, STATION_URI_PREFIX,
};
pub use template::{RenderInputs, Template, TemplateError};
pub use trustfab_keys::{Curve, PublicKey, SignError, Signer};
pub use validate::{validate, Policy, Purpose};
