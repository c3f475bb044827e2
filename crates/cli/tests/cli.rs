//! The `trustfab` binary, run for real in a temporary directory, the way a user runs it.

// Fixtures outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};

use trustfab_test_support::cli::Trustfab;
use trustfab_test_support::{files_under, openssl};

mod common;
use common::{fails, ok, tf, PASS};

#[test]
fn oem_flow_issue_verify_revoke_with_openssl() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok(d, &["oem", "init", "--oem-id", "acme", "--device-ca"]);
    ok(d, &["oem", "template", "new", "--out", "template.toml"]);
    let checked = ok(d, &["oem", "template", "check", "template.toml"]);
    assert!(checked.contains("template.toml: ok"), "{checked}");

    // A device key made by openssl, as a device maker's tool would.
    openssl::p256_key_pair(&d.join("dev.key"), &d.join("dev.pub"));
    ok(
        d,
        &[
            "oem",
            "issue-test",
            "--template",
            "template.toml",
            "--product",
            "thermo",
            "--uid",
            "0123456789abcdef01",
            "--public-key",
            "dev.pub",
            "--out",
            "dev.pem",
        ],
    );
    let root = d.join("oem/root.pem");
    let int = d.join("oem/device-ca.pem");
    let v = openssl::verify(&root, Some(&int), None, &[], &d.join("dev.pem"));
    assert!(v.ok, "{}", v.output);
    assert!(ok(d, &["oem", "verify", "dev.pem"]).contains("valid"));

    // The certificate carries the key openssl made.
    let cert_pub = Command::new("openssl")
        .args(["x509", "-in", "dev.pem", "-noout", "-pubkey"])
        .current_dir(d)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&cert_pub.stdout),
        std::fs::read_to_string(d.join("dev.pub")).unwrap()
    );

    ok(
        d,
        &[
            "oem",
            "revoke",
            "--cert",
            "dev.pem",
            "--reason",
            "key-compromise",
        ],
    );
    ok(d, &["oem", "crl", "--out", "crl.pem"]);
    let e = fails(d, &["oem", "verify", "dev.pem", "--crl", "crl.pem"]);
    assert!(e.contains("CertRevoked"), "{e}");
    let v = openssl::verify(
        &root,
        Some(&int),
        Some(&d.join("crl.pem")),
        &[],
        &d.join("dev.pem"),
    );
    assert!(!v.ok && v.output.contains("revoked"), "{}", v.output);

    // Checked against another OEM, the same certificate is refused.
    let other = tempfile::tempdir().unwrap();
    ok(other.path(), &["oem", "init", "--oem-id", "globex"]);
    let e = fails(
        other.path(),
        &["oem", "verify", d.join("dev.pem").to_str().unwrap()],
    );
    assert!(e.contains("UnknownIssuer"), "{e}");
}

#[test]
fn private_keys_are_never_written_in_plaintext() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok(d, &["vendor", "init"]);
    ok(
        d,
        &[
            "oem",
            "init",
            "--oem-id",
            "acme",
            "--device-ca",
            "--curve",
            "p384",
        ],
    );
    for key in ["vendor/root.key", "oem/root.key", "oem/device-ca.key"] {
        let path = d.join(key);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
            "{key}"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{key}");
        }
        // openssl opens it with the passphrase and only with it.
        assert!(openssl::pkey_pubout(&path, PASS).ok, "{key}");
        assert!(!openssl::pkey_pubout(&path, "not it").ok, "{key}");
    }
    for entry in files_under(d) {
        let bytes = std::fs::read(&entry).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("BEGIN PRIVATE KEY"), "{}", entry.display());
        assert!(
            !text.contains("BEGIN EC PRIVATE KEY"),
            "{}",
            entry.display()
        );
    }
}

#[test]
fn passphrase_sources_and_refusals() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok(d, &["oem", "init", "--oem-id", "acme"]);
    ok(d, &["oem", "template", "new", "--out", "t.toml"]);
    let issue = [
        "oem",
        "issue-test",
        "--template",
        "t.toml",
        "--product",
        "p",
        "--uid",
        "01",
    ];

    // Wrong passphrase from a file: refused, nothing written.
    std::fs::write(d.join("wrong"), "not the passphrase\n").unwrap();
    let mut args = issue.to_vec();
    args.extend(["--out", "a.pem", "--passphrase-file", "wrong"]);
    let e = fails(d, &args);
    assert!(e.contains("does not decrypt"), "{e}");
    assert!(!d.join("a.pem").exists());

    // Right passphrase from a file works.
    std::fs::write(d.join("right"), format!("{PASS}\n")).unwrap();
    let mut args = issue.to_vec();
    args.extend(["--out", "b.pem", "--passphrase-file", "right"]);
    ok(d, &args);

    // No passphrase anywhere and no terminal: a clear error naming the sources.
    let mut args = issue.to_vec();
    args.extend(["--out", "c.pem"]);
    let out = tf()
        .command(d, &args)
        .env_remove("TRUSTFAB_PASSPHRASE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("TRUSTFAB_PASSPHRASE") && e.contains("--passphrase-file"),
        "{e}"
    );

    // An existing output is never overwritten.
    let mut args = issue.to_vec();
    args.extend(["--out", "b.pem"]);
    assert!(fails(d, &args).contains("refusing to overwrite"));
    // Nor an existing CA.
    assert!(fails(d, &["oem", "init", "--oem-id", "acme"]).contains("holds a CA already"));
}

#[test]
fn template_check_names_line_and_field() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok(d, &["oem", "template", "new", "--out", "t.toml"]);
    let good = std::fs::read_to_string(d.join("t.toml")).unwrap();
    let cases = [
        (
            good.replace("\"digital_signature\"", "\"sign\""),
            "[extensions].key_usage",
            "unknown variant `sign`",
        ),
        (
            good.replace("{uid}.{product}", "{mac}.{product}"),
            "[subject_alt_name].dns",
            "unknown placeholder {mac}",
        ),
        (
            good.replace(
                "basic_constraints = { ca = false }",
                "basic_constraints = { ca = true }",
            ),
            "[extensions].basic_constraints.ca",
            "CA:false",
        ),
        (
            good.replace("[validity]", "[validity]\nweeks = 3"),
            "[validity].weeks",
            "unknown field `weeks`",
        ),
    ];
    for (i, (text, field, message)) in cases.iter().enumerate() {
        let name = format!("bad{i}.toml");
        std::fs::write(d.join(&name), text).unwrap();
        let e = fails(d, &["oem", "template", "check", &name]);
        assert!(
            e.contains(field) && e.contains(message) && e.contains("line "),
            "case {i}: {e}"
        );
    }
}

#[test]
fn demo_runs_end_to_end() {
    let t = tempfile::tempdir().unwrap();
    let out = ok(t.path(), &["demo", "--dir", "demo", "--devices", "5"]);
    for expected in [
        "was already imported",
        "the station provisioned 5 devices (0 failed after issue)",
        "a job of 2 provisioned device files (2 good)",
        "has 0 certificates left",
        "mutual authentication both ways: ok",
        "authentication now refused",
        "peer certificate is revoked",
        "ordered 7, issued 7, remaining 0",
        "the OEM verified it: 7 certificates valid",
        "the HSM imported it",
        "a job of 3 secure MCUs (3 good)",
        "installed for a test boot",
        "the counter rises to 2",
        "a changed image is refused",
        "an older image is refused",
        "another family's image is refused",
        "the HSM as a network service",
        "station line-1.station-a provisioned 8 devices through the service",
        "station line-1.station-b provisioned 8 devices through the service",
        "named by 8 issuance records, 2 devices left of its ceiling",
        "operators of center center-1 read /metrics",
        "station=\"line-1.station-a\"} 8",
        "station=\"line-1.station-b\"} 8",
        "metrics (operator alice): trustfab_product_remaining{product=\"acme/sensor-v1\"} 8",
        "its next request is refused: HSM service: station_revoked",
    ] {
        assert!(
            out.contains(expected),
            "{expected:?} missing from the demo:\n{out}"
        );
    }
    let parts: Vec<_> = std::fs::read_dir(t.path().join("demo/parts"))
        .unwrap()
        .collect();
    assert_eq!(parts.len(), 2);
    // The image the station programmed is ciphertext: no run of the firmware's plaintext is in it.
    let family = std::fs::read(t.path().join("demo/gateway-1.0.0.bin")).unwrap();
    assert!(!family.windows(17).any(|w| w == b"gateway firmware "));
}

#[test]
fn help_explains_the_roles() {
    let t = tempfile::tempdir().unwrap();
    let out = ok(t.path(), &["--help"]);
    for word in ["vendor", "oem", "hsm", "demo", "TRUSTFAB_PASSPHRASE"] {
        assert!(out.contains(word), "{word} missing from --help:\n{out}");
    }
}

#[test]
fn ids_are_parsed_at_the_edge_and_a_bad_one_is_named() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let e = fails(d, &["hsm", "report", "--product", "acme", "--out", "r.bin"]);
    assert!(e.contains("'acme'"), "{e}");
    assert!(e.contains("product key must be written oem/product"), "{e}");
    let e = fails(
        d,
        &[
            "job",
            "create",
            "--product",
            "acme/thermo",
            "--quantity",
            "1",
        ]
        .into_iter()
        .chain(["--job-id", "job 1", "--out", "j.bin"])
        .collect::<Vec<_>>(),
    );
    assert!(e.contains("'job 1'"), "{e}");
    assert!(e.contains("job id may hold only"), "{e}");
    let e = fails(d, &["hsm", "init", "--hsm-id", "hsm/1"]);
    assert!(e.contains("'hsm/1'"), "{e}");
}

/// A file that cannot be read is named in the error, once, beside the operating system's reason
/// (`fails` checks every refusal of these tests for a doubled segment or a bare OS error).
#[test]
fn an_unreadable_input_is_named_once() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    tf().programming_centre(d, &["--hsm-id", "hsm-files"]);
    std::fs::create_dir(d.join("a-directory")).unwrap();
    let e = fails(d, &["hsm", "import", "a-directory"]);
    assert!(e.contains("a-directory"), "{e}");
    assert!(e.contains("Is a directory"), "{e}");
    let e = fails(d, &["hsm", "import", "missing.pkg"]);
    assert_eq!(e.matches("missing.pkg").count(), 1, "{e}");
    let e = fails(d, &["oem", "verify", "a-directory"]);
    assert!(e.contains("a-directory"), "{e}");
}

/// The paper's whole OEM → programming center path through the command line: vendor, HSM
/// init and certification, OEM wrap for that HSM only, import, issuance within the count.
fn hsm_flow(d: &Path, backend: &str, pass: &str) {
    let tf = Trustfab::new(env!("CARGO_BIN_EXE_trustfab"), pass);
    let ok = |args: &[&str]| tf.ok(d, args);
    let fails = |args: &[&str]| tf.fails(d, args);
    let mut init = vec!["--hsm-id", "hsm-7", "--backend", backend];
    if backend == "pkcs11" {
        init.extend(["--token-label", trustfab_test_support::softhsm::TOKEN_LABEL]);
    }
    tf.programming_centre(d, &init);
    assert!(ok(&["hsm", "identity"]).contains("fingerprint"));

    // A rogue vendor's root: the wrapping tool refuses to wrap for an HSM it does not vouch for.
    let rogue = tempfile::tempdir().unwrap();
    tf.ok(rogue.path(), &["vendor", "init"]);
    let rogue_root = rogue.path().join("vendor/root.pem");
    let refused = Trustfab::wrap_args(rogue_root.to_str().unwrap(), "thermo", 3, "bad.pkg");
    let e = fails(&refused.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(e.contains("do not validate to the vendor root"), "{e}");

    let imported = tf.import_product(d, "thermo", 3, "p.pkg");
    assert!(
        imported.contains("created product acme/thermo"),
        "{imported}"
    );
    assert!(fails(&["hsm", "import", "p.pkg"]).contains("already imported"));
    assert!(ok(&["hsm", "products"]).contains("acme/thermo"));

    openssl::p256_key_pair(&d.join("dev.key"), &d.join("dev.pub"));
    for (i, uid) in ["01", "02", "03"].iter().enumerate() {
        let out = format!("d{i}.pem");
        ok(&[
            "hsm",
            "issue",
            "--product",
            "acme/thermo",
            "--uid",
            uid,
            "--public-key",
            "dev.pub",
            "--out",
            &out,
        ]);
        let v = openssl::verify(
            &d.join("oem/root.pem"),
            Some(&d.join("oem/device-ca.pem")),
            None,
            &[],
            &d.join(&out),
        );
        assert!(v.ok, "{}", v.output);
    }
    let e = fails(&[
        "hsm",
        "issue",
        "--product",
        "acme/thermo",
        "--uid",
        "04",
        "--public-key",
        "dev.pub",
        "--out",
        "d4.pem",
    ]);
    assert!(e.contains("0 certificates left"), "{e}");
    let products = ok(&["hsm", "products"]);
    assert!(products.contains("3          3          0"), "{products}");

    assert!(ok(&["ledger", "verify"]).contains("ledger verified"));
    ok(&[
        "hsm",
        "report",
        "--product",
        "acme/thermo",
        "--out",
        "r.report",
    ]);
    let v = ok(&[
        "oem",
        "verify-report",
        "r.report",
        "--order",
        "p.pkg",
        "--vendor-root",
        "vendor/root.pem",
    ]);
    assert!(v.contains("3 issued and valid"), "{v}");
    // A report checked against a rogue vendor's root is refused.
    let e = fails(&[
        "oem",
        "verify-report",
        "r.report",
        "--order",
        "p.pkg",
        "--vendor-root",
        rogue_root.to_str().unwrap(),
    ]);
    assert!(e.contains("does not validate to the vendor root"), "{e}");
}

#[test]
fn hsm_flow_on_the_soft_token() {
    let t = tempfile::tempdir().unwrap();
    hsm_flow(t.path(), "soft", PASS);
}

#[test]
fn hsm_flow_on_softhsm2_through_pkcs11() {
    let t = tempfile::tempdir().unwrap();
    let softhsm = trustfab_test_support::softhsm::SoftHsm2::new(t.path());
    // The child processes find the token through the same configuration.
    assert!(softhsm.conf().exists());
    hsm_flow(t.path(), "pkcs11", trustfab_test_support::softhsm::PIN);
}

/// Many stations, one PostgreSQL ledger (DESIGN.md "Scale"): four `trustfab job run` processes
/// of one HSM directory whose ledger is a fresh PostgreSQL database, one product of 10,000.
/// Exactly 10,000 are issued, every one is in the signed report, and the report verifies.
#[test]
fn four_station_processes_on_one_postgres_ledger() {
    let db = trustfab_test_support::pg::FreshDatabase::new();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    tf().programming_centre(d, &["--hsm-id", "hsm-pg", "--ledger-url", db.url()]);
    tf().import_product(d, "thermo", 10_000, "p.pkg");
    for i in 0..4 {
        let out = format!("job{i}.bin");
        ok(
            d,
            &[
                "job",
                "create",
                "--product",
                "acme/thermo",
                "--quantity",
                "2500",
                "--job-id",
                &format!("station-{i}"),
                "--out",
                &out,
            ],
        );
    }
    let stations: Vec<_> = (0..4)
        .map(|i| {
            tf().command(
                d,
                &[
                    "job",
                    "run",
                    &format!("job{i}.bin"),
                    "--sockets",
                    "4",
                    "--close",
                    "--json",
                ],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for s in stations {
        let out = s.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "station failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let products = ok(d, &["hsm", "products"]);
    assert!(
        products.contains("10000      10000          0"),
        "{products}"
    );
    assert!(ok(d, &["ledger", "verify"]).contains("ledger verified"));
    ok(
        d,
        &[
            "hsm",
            "report",
            "--product",
            "acme/thermo",
            "--out",
            "r.report",
        ],
    );
    let v = ok(
        d,
        &[
            "oem",
            "verify-report",
            "r.report",
            "--order",
            "p.pkg",
            "--vendor-root",
            "vendor/root.pem",
        ],
    );
    assert!(v.contains("10000 issued and valid"), "{v}");
}

/// `trustfab ... | head`: a reader that goes away early loses the rest of the text; the command
/// neither panics nor fails because of it.
#[test]
fn output_into_a_closed_pipe_is_not_a_panic() {
    let t = tempfile::tempdir().unwrap();
    ok(
        t.path(),
        &["device", "new", "--kind", "mcu", "--out", "p.dev"],
    );
    for args in [
        &["device", "show", "p.dev"][..],
        &["oem", "template", "new"][..],
    ] {
        let mut child = tf()
            .command(t.path(), args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the reading end before the command writes.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// `trustfab bench` runs the whole flow and its limit (here tiny, so the test is quick; the
/// figures are measured by running it, never asserted).
#[test]
fn bench_runs_the_flow_and_its_limit_with_and_without_firmware() {
    let t = tempfile::tempdir().unwrap();
    for extra in [&[][..], &["--firmware", "4"][..]] {
        let mut args = vec![
            "bench",
            "--devices",
            "40",
            "--limit-devices",
            "10",
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = ok(t.path(), &args);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["devices"], 40, "{out}");
        assert!(v["devices_per_s"].as_f64().unwrap() > 0.0, "{out}");
        assert!(v["limit_devices_per_s"].as_f64().unwrap() > 0.0, "{out}");
        let fw = if extra.is_empty() {
            serde_json::Value::Null
        } else {
            4.into()
        };
        assert_eq!(v["firmware_kib"], fw, "{out}");
    }
    // On a PostgreSQL ledger, which must be empty.
    let db = trustfab_test_support::pg::FreshDatabase::new();
    let args = [
        "bench",
        "--devices",
        "20",
        "--limit-devices",
        "10",
        "--json",
        "--ledger-url",
        db.url(),
    ];
    let v: serde_json::Value = serde_json::from_str(&ok(t.path(), &args)).unwrap();
    assert_eq!(v["ledger"], "PostgreSQL (SERIALIZABLE)");
    assert!(fails(t.path(), &args).contains("needs an empty ledger"));
    // With the HSM on a PKCS#11 token (SoftHSM2), which must be a fresh one.
    let softhsm = trustfab_test_support::softhsm::SoftHsm2::new(t.path());
    assert!(softhsm.conf().exists());
    let label = trustfab_test_support::softhsm::TOKEN_LABEL;
    let args = [
        "bench",
        "--devices",
        "20",
        "--limit-devices",
        "10",
        "--json",
        "--token-label",
        label,
    ];
    let tf = Trustfab::new(
        env!("CARGO_BIN_EXE_trustfab"),
        trustfab_test_support::softhsm::PIN,
    );
    let v: serde_json::Value = serde_json::from_str(&tf.ok(t.path(), &args)).unwrap();
    assert_eq!(v["hsm"], "PKCS#11");
    assert!(tf.fails(t.path(), &args).contains("must be a fresh one"));
}
