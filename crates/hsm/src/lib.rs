#![doc = include_str!("../README.md")]

mod anchor;
mod client;
mod deliver;
mod error;
mod identity;
mod import;
mod issue;
mod jobs;
mod product;
mod report;
mod seal;
mod station;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use aws_lc_rs::digest::{digest, SHA256};
use trustfab_ledger::Store;
use trustfab_pki::HsmCertificates;
use trustfab_token::{KeyHandle, KeyLabel, Token};
use trustfab_types::{Clock, DeviceUid, Fingerprint, HsmId, ProductKey, Serial};

pub use anchor::ANCHOR_LABEL;
pub use client::HsmClient;
pub use error::{AnchorError, ImportError, InitError, IssueError, JobOpError, StationError};
pub use import::Imported;
pub use issue::{DeviceKey, Issued};
pub use jobs::{DeviceOutcome, JobStatus, Reservation};
pub use product::{ProductFirmware, ProductStatus};
pub use seal::SEAL_LABEL;
pub use station::{Caller, StationStatus, SERVICE_TLS_LABEL, STATION_CA_LABEL};
pub use trustfab_formats::binding::{family_delivery_info, family_wrap_info, wrap_info};
pub use trustfab_formats::records::IssuanceRecord;

/// Token label of the HSM identity key (signs requests, reports, checkpoints).
pub const IDENTITY_LABEL: &str = "hsm-identity";
/// Token label of the key-transport key (packages are wrapped to it).
pub const KT_LABEL: &str = "hsm-key-transport";
/// The default automatic checkpoint interval: a signed checkpoint each time the ledger passes a
/// multiple of this many records (besides one after every job close and one per report).
pub const CHECKPOINT_EVERY: u64 = 10_000;
/// Most devices in one issuance call.
/// Two claims per device must fit the ledger's operations per append.
pub const BATCH_MAX: usize = 4000;

pub(crate) const CLAIM_PACKAGE: &str = "package";
pub(crate) const CLAIM_PRODUCT: &str = "product";
pub(crate) const CLAIM_OEM: &str = "oem";
pub(crate) const CLAIM_UID: &str = "uid";
pub(crate) const CLAIM_SERIAL: &str = "serial";

/// The token label of a product's signing key: `product:` and 20 hex digits of SHA-256 of the
/// product key's `oem/product` text (labels are at most 64 characters; ids may be 64 each).
///
/// # Errors
/// Never for a product key; the label type checks its own rules.
pub fn product_key_label(product: &ProductKey) -> Result<KeyLabel, trustfab_token::Error> {
    hashed_label("product", product)
}

/// The token label of a product's firmware family decryption key: `family:` and 20 hex digits of
/// SHA-256 of the product key.
///
/// # Errors
/// Never for a product key; the label type checks its own rules.
pub fn family_key_label(product: &ProductKey) -> Result<KeyLabel, trustfab_token::Error> {
    hashed_label("family", product)
}

fn hashed_label(prefix: &str, product: &ProductKey) -> Result<KeyLabel, trustfab_token::Error> {
    let h = digest(&SHA256, product.to_string().as_bytes());
    let hex: String = h
        .as_ref()
        .iter()
        .take(10)
        .map(|b| format!("{b:02x}"))
        .collect();
    KeyLabel::new(&format!("{prefix}:{hex}"))
}

pub(crate) fn sha256(b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, b).as_ref());
    out
}

/// The HSM application over a token and a ledger.
pub struct Hsm {
    token: Arc<dyn Token>,
    ledger: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    hsm_id: HsmId,
    identity: KeyHandle,
    /// The identity key's uncompressed point: what job packages are checked against.
    identity_point: Vec<u8>,
    kt: KeyHandle,
    fingerprint: Option<Fingerprint>,
    certs: Option<HsmCertificates>,
    products: RwLock<HashMap<ProductKey, Arc<product::Product>>>,
    /// Serializes sequential serial allocation within this process; claims make it safe across
    /// processes.
    serial_alloc: Mutex<()>,
    /// The ledger head anchored in the token; every append advances it before returning.
    anchor: anchor::Anchor,
    /// The MAC key that seals this HSM's appends (`docs/ledger.md`, "Seals").
    seal_key: KeyHandle,
    /// A checkpoint is made each time the ledger passes a multiple of this many records.
    checkpoint_every: std::sync::atomic::AtomicU64,
    /// Fingerprints of station certificates found recorded in the ledger (a certification is
    /// never undone; revocation is checked on every request).
    admitted: RwLock<std::collections::HashSet<[u8; 32]>>,
    /// The service's TLS key, once looked up.
    service_key: std::sync::OnceLock<KeyHandle>,
}

impl std::fmt::Debug for Hsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hsm")
            .field("hsm_id", &self.hsm_id)
            .finish_non_exhaustive()
    }
}

/// The ledger counter that numbers a sequential product's serials: `serials:oem/product`.
pub(crate) fn serial_counter(product: &ProductKey) -> String {
    format!("serials:{product}")
}

/// The claim key of a device's issuance: `oem/product ‖ 0x00 ‖ uid`.
pub(crate) fn uid_claim(product: &ProductKey, uid: &DeviceUid) -> Vec<u8> {
    let mut v = product.to_string().into_bytes();
    v.push(0);
    v.extend_from_slice(uid.as_bytes());
    v
}

pub(crate) fn serial_claim(issuer_fp: &[u8; 32], serial: &Serial) -> Vec<u8> {
    let mut v = issuer_fp.to_vec();
    v.extend_from_slice(serial.as_be_bytes());
    v
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
