//! What the command-line test binaries share: the `trustfab` binary run with this suite's
//! passphrase, and its `ok` and `fails` wrappers (`trustfab_test_support::cli::Trustfab` does
//! the running and asserting).

// Each test binary uses a part of this module.
#![allow(dead_code)]

use std::path::Path;

use trustfab_test_support::cli::Trustfab;

/// The passphrase of every key file these tests make.
pub(crate) const PASS: &str = "cli test passphrase";

/// The binary under test, with [`PASS`].
pub(crate) fn tf() -> Trustfab {
    Trustfab::new(env!("CARGO_BIN_EXE_trustfab"), PASS)
}

/// Runs `trustfab args` in `dir`, asserts success, returns standard output.
pub(crate) fn ok(dir: &Path, args: &[&str]) -> String {
    tf().ok(dir, args)
}

/// Runs `trustfab args` in `dir`, asserts failure, returns standard error.
pub(crate) fn fails(dir: &Path, args: &[&str]) -> String {
    tf().fails(dir, args)
}
