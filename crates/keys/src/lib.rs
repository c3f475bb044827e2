#![doc = include_str!("../README.md")]

mod curve;
mod error;
mod public;
mod signer;

pub use curve::Curve;
pub use error::{Error, SignError};
pub use public::PublicKey;
pub use signer::Signer;
