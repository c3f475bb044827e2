//! The OEM's side of the chain of trust, off-line at the OEM's premises.
//!
//! This crate owns:
//! - [`ca`]: the CA directory (`docs/ca-directory.md`) with the root and the optional device
//!   CA, their encrypted key files, and the state in `ca.toml` (revocations, CRL numbering);
//!   test issuance, revocation, CRL issuance and chain validation against it. The vendor's CA
//!   uses the same directory format, so [`ca::Kind`] names both.
//! - [`order`]: an [`Order`] sealed into a provisioning package for ONE HSM whose identity
//!   validated to the vendor root: the signing key (and the firmware family key) wrapped to that
//!   HSM's key-transport key, the whole signed by the OEM root.
//! - [`report`]: checking an HSM's production report against the orders the OEM sealed.
//!
//! It deliberately does not own the package format (`trustfab-package`), the report format and
//! its rules (`trustfab-hsm`), nor any command line: the binary parses arguments, reads and
//! writes the files it is given and prints.

pub mod ca;
pub mod files;
pub mod order;
pub mod report;

use std::path::PathBuf;

pub use ca::{CaDir, InitSpec, Kind};
pub use order::{Firmware, Order};

/// Why an OEM operation failed. Each variant names the file or the thing that was wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory could not be read, created or written.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done (`reading`, `creating`, `writing`, …).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file is larger than its limit.
    #[error("{} is larger than {limit} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit, in bytes.
        limit: usize,
    },
    /// A text file is not UTF-8.
    #[error("{} is not UTF-8 text", path.display())]
    NotText {
        /// The file.
        path: PathBuf,
    },
    /// An output exists already: outputs are never overwritten.
    #[error("{} exists already; refusing to overwrite it", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// `init` into a directory that holds a CA.
    #[error("{} holds a CA already", dir.display())]
    CaExists {
        /// The directory.
        dir: PathBuf,
    },
    /// `open` of a directory without a CA.
    #[error("{} holds no CA (run `init` first)", dir.display())]
    NoCa {
        /// The directory.
        dir: PathBuf,
        /// Why `ca.toml` could not be read.
        #[source]
        source: Box<Self>,
    },
    /// `ca.toml` does not parse.
    #[error("parsing {}", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// The parser's word.
        #[source]
        source: toml::de::Error,
    },
    /// `ca.toml` could not be encoded (never for a state this crate made).
    #[error("encoding ca.toml")]
    StateEncode(#[from] toml::ser::Error),
    /// `ca.toml` of a format this build does not read.
    #[error("{}: unknown format {found}; this build reads format {}", path.display(), ca::CA_FORMAT)]
    Format {
        /// The file.
        path: PathBuf,
        /// The format found.
        found: u32,
    },
    /// The directory holds the other kind of CA.
    #[error("{} holds a {found:?} CA, not a {wanted:?} CA", dir.display())]
    WrongKind {
        /// The directory.
        dir: PathBuf,
        /// What it holds.
        found: Kind,
        /// What was asked for.
        wanted: Kind,
    },
    /// A validity in years that is zero or does not fit in days.
    #[error("a CA validity of {years} years is refused: at least 1 year, and no more days than fit in 32 bits")]
    Years {
        /// The years asked for.
        years: u32,
    },
    /// An OEM CA directory whose `ca.toml` names no OEM id.
    #[error("ca.toml has no oem_id")]
    NoOemId,
    /// A revocation in `ca.toml` with a serial that does not parse.
    #[error("ca.toml: bad serial {serial:?}")]
    BadSerial {
        /// The serial as written.
        serial: String,
        /// Why it is not one.
        #[source]
        source: trustfab_types::IdError,
    },
    /// A certificate file does not hold a certificate.
    #[error("reading {}", path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: trustfab_pki::Error,
    },
    /// A key file does not open (wrong passphrase, or not an encrypted PKCS#8 key).
    #[error("opening {}", path.display())]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: trustfab_pki::Error,
    },
    /// The CA's key is not the key its certificate certifies.
    #[error("the CA key does not match its certificate")]
    KeyMismatch(#[source] trustfab_pki::Error),
    /// A certificate, key, CRL or chain operation failed.
    #[error(transparent)]
    Pki(#[from] trustfab_pki::Error),
    /// An identifier (a serial number) is out of its range.
    #[error(transparent)]
    Id(#[from] trustfab_types::IdError),
    /// The system random generator failed.
    #[error(transparent)]
    Rng(#[from] trustfab_types::RngError),
    /// Wrapping a key for the HSM failed.
    #[error("wrapping a key for the HSM: {0}")]
    Wrap(#[from] trustfab_token::Error),
    /// Sealing the package, or opening an order, failed.
    #[error(transparent)]
    Package(#[from] trustfab_formats::package::Error),
    /// An order given to report verification is not a package verified under its root.
    #[error("order {index}")]
    Order {
        /// Its 0-based position among the orders.
        index: usize,
        /// Why.
        #[source]
        source: trustfab_formats::package::Error,
    },
    /// The report is refused.
    #[error(transparent)]
    Report(#[from] trustfab_formats::report::ReportError),
}
