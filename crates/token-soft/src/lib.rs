#![doc = include_str!("../README.md")]

mod sealed;
mod token;

pub use sealed::{Argon2Cost, STORE_MAX, STORE_VERSION};
pub use token::SoftToken;
