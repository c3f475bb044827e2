//! What the command-line test binaries share: the `trustfab` binary run with this suite's
//! passphrase, and its `ok` and `fails` wrappers (`trustfab_test_support::cli::Trustfab` does
//! the running and asserting); reading what stations and `hsm products` print; the OEM's check
//! of a report.

// Each test binary uses a part of this module.
#![allow(dead_code)]

use std::cell::Cell;
use std::path::Path;
use std::process::Child;

use trustfab_test_support::cli::Trustfab;

/// The passphrase of every key file these tests make.
pub(crate) const PASS: &str = "cli test passphrase";

thread_local! {
    /// This test's passphrase: [`PASS`] unless it said otherwise ([`use_passphrase`]).
    static PASS_NOW: Cell<&'static str> = const { Cell::new(PASS) };
}

/// Makes `pass` the passphrase of this test's commands (a PKCS#11 token's PIN on SoftHSM2).
pub(crate) fn use_passphrase(pass: &'static str) {
    PASS_NOW.set(pass);
}

/// The binary under test, with this test's passphrase ([`PASS`] by default).
pub(crate) fn tf() -> Trustfab {
    Trustfab::new(env!("CARGO_BIN_EXE_trustfab"), PASS_NOW.get())
}

/// Runs `trustfab args` in `dir`, asserts success, returns standard output.
pub(crate) fn ok(dir: &Path, args: &[&str]) -> String {
    tf().ok(dir, args)
}

/// Runs `trustfab args` in `dir`, asserts failure, returns standard error.
pub(crate) fn fails(dir: &Path, args: &[&str]) -> String {
    tf().fails(dir, args)
}

/// Waits for a station run and asserts its exit status is one of `codes`; returns its standard
/// output.
pub(crate) fn wait_for(c: Child, codes: &[i32]) -> String {
    let out = c.wait_with_output().expect("waiting for a station");
    assert!(
        out.status.code().is_some_and(|c| codes.contains(&c)),
        "a station failed ({:?}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A station that ran beside others: it may end while a sibling still has the job's last
/// devices in its sockets, so it exits 0 (the job was complete when it ended) or 3 (not yet);
/// anything else is a failure.
pub(crate) fn wait_done(c: Child) -> String {
    wait_for(c, &[0, 3])
}

/// `(ordered, issued, remaining)` of `acme/thermo` as `hsm products` prints it.
pub(crate) fn products(dir: &Path) -> (u64, u64, u64) {
    let out = ok(dir, &["hsm", "products"]);
    let line = out
        .lines()
        .find(|l| l.starts_with("acme/thermo"))
        .unwrap_or_else(|| panic!("{out}"));
    let n: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|w| w.parse().expect("a count"))
        .collect();
    (n[0], n[1], n[2])
}

/// The number after `label` in `text`.
pub(crate) fn number_after(text: &str, label: &str) -> u64 {
    let rest = text
        .split(label)
        .nth(1)
        .unwrap_or_else(|| panic!("no {label:?} in {text}"));
    rest.split(|c: char| !c.is_ascii_digit())
        .find(|w| !w.is_empty())
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no number after {label:?} in {text}"))
}

/// The signed report of `acme/thermo` (`r.report`, made anew) checked by the OEM against the
/// order `p.pkg`; returns what `oem verify-report` printed.
pub(crate) fn verified_report(dir: &Path) -> String {
    std::fs::remove_file(dir.join("r.report")).ok();
    ok(
        dir,
        &[
            "hsm",
            "report",
            "--product",
            "acme/thermo",
            "--out",
            "r.report",
        ],
    );
    ok(
        dir,
        &[
            "oem",
            "verify-report",
            "r.report",
            "--order",
            "p.pkg",
            "--vendor-root",
            "vendor/root.pem",
        ],
    )
}
