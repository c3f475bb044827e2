#![doc = include_str!("../README.md")]

mod error;
mod handshake;
mod identity;
pub mod tcp;
pub mod tls;
pub mod wire;

pub use error::Error;
pub use handshake::{mutual, Initiator, Refused, Responder, Session, SessionKey, Trust};
pub use identity::{Identity, Slots, Subject};
pub use wire::Role;
