#![doc = include_str!("../README.md")]

mod pool;
mod token;

pub use token::{module_path, Pkcs11Config, Pkcs11Token, MODULE_ENV};
