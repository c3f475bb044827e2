//! `trustfab fw`, run for real, with MCUboot's `imgtool` on the other side: the interop recipe
//! of `docs/firmware.md` in both directions.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use trustfab_test_support::cli::Trustfab;
use trustfab_test_support::imgtool;

const PASS: &str = "fw test passphrase";

fn tf() -> Trustfab {
    Trustfab::new(env!("CARGO_BIN_EXE_trustfab"), PASS)
}

fn ok(dir: &Path, args: &[&str]) -> String {
    tf().ok(dir, args)
}

fn fails(dir: &Path, args: &[&str]) -> String {
    tf().fails(dir, args)
}

#[test]
fn mastered_images_pass_imgtool_and_imgtool_images_pass_fw_verify() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let out = ok(d, &["fw", "keygen", "--kind", "sign", "--out", "oem"]);
    let rot = out.split("fuses): ").nth(1).unwrap().trim().to_owned();
    ok(d, &["fw", "keygen", "--kind", "family", "--out", "family"]);
    std::fs::write(d.join("app.bin"), vec![0x5A; 50_000]).unwrap();
    let base = [
        "--version",
        "1.2.3",
        "--security-counter",
        "4",
        "--sign-key",
        "oem.key.pem",
    ];

    // Signed: imgtool verifies it with the public key; fw verify with the fuse hash.
    let args: Vec<&str> = ["fw", "master", "app.bin"]
        .into_iter()
        .chain(base)
        .chain(["--out", "signed.bin"])
        .collect();
    ok(d, &args);
    let out = imgtool::verify(&d.join("oem.pub.pem"), &d.join("signed.bin"));
    assert!(out.ok, "{}", out.output);
    let out = ok(d, &["fw", "verify", "signed.bin", "--key-hash", &rot]);
    assert!(out.contains("security counter 4"), "{out}");
    let out = ok(d, &["fw", "inspect", "signed.bin"]);
    assert!(out.contains("PUBKEY") && out.contains("ECDSA_SIG"), "{out}");

    // Encrypted for the family: imgtool cannot verify it; decrypted by fw, it can.
    let args: Vec<&str> = ["fw", "master", "app.bin"]
        .into_iter()
        .chain(base)
        .chain(["--encrypt-for-family", "family.pub.pem", "--out", "enc.bin"])
        .collect();
    ok(d, &args);
    assert!(!imgtool::verify(&d.join("oem.pub.pem"), &d.join("enc.bin")).ok);
    ok(
        d,
        &[
            "fw",
            "verify",
            "enc.bin",
            "--key",
            "oem.pub.pem",
            "--decrypt-key",
            "family.key.pem",
        ],
    );
    let e = fails(d, &["fw", "verify", "enc.bin", "--key", "oem.pub.pem"]);
    assert!(e.contains("no decryption key"), "{e}");
    ok(
        d,
        &[
            "fw",
            "decrypt",
            "enc.bin",
            "--key",
            "family.key.pem",
            "--out",
            "clear.bin",
        ],
    );
    let out = imgtool::verify(&d.join("oem.pub.pem"), &d.join("clear.bin"));
    assert!(out.ok, "{}", out.output);

    // imgtool's own signed and encrypted image, checked by fw verify.
    let ik = d.join("imgtool.pem");
    assert!(imgtool::keygen(&ik).ok);
    std::fs::write(d.join("imgtool.pub.pem"), imgtool::getpub_pem(&ik).output).unwrap();
    let enc_pub = d.join("family.pub.pem");
    let out = imgtool::sign(
        &ik,
        "3.0.0",
        9,
        &["--encrypt", enc_pub.to_str().unwrap()],
        &d.join("app.bin"),
        &d.join("theirs.bin"),
    );
    assert!(out.ok, "{}", out.output);
    let out = ok(
        d,
        &[
            "fw",
            "verify",
            "theirs.bin",
            "--key",
            "imgtool.pub.pem",
            "--decrypt-key",
            "family.key.pem",
        ],
    );
    assert!(
        out.contains("version 3.0.0") && out.contains("security counter 9"),
        "{out}"
    );
    // Under our key it is refused.
    let e = fails(
        d,
        &[
            "fw",
            "verify",
            "theirs.bin",
            "--key",
            "oem.pub.pem",
            "--decrypt-key",
            "family.key.pem",
        ],
    );
    assert!(e.contains("other than the trusted one"), "{e}");
}

#[test]
fn an_image_for_one_device_decrypts_only_with_that_devices_key() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok(d, &["fw", "keygen", "--kind", "sign", "--out", "oem"]);
    std::fs::write(d.join("app.bin"), vec![1; 1000]).unwrap();
    let sh = |args: &[&str]| {
        let s = Command::new("openssl")
            .current_dir(d)
            .args(args)
            .status()
            .unwrap();
        assert!(s.success(), "openssl {args:?}");
    };
    for n in ["dev", "other"] {
        sh(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{n}.plain.pem"),
            "-out",
            &format!("{n}.crt"),
            "-subj",
            "/CN=dev",
            "-days",
            "1",
        ]);
        sh(&[
            "pkcs8",
            "-topk8",
            "-scrypt",
            "-in",
            &format!("{n}.plain.pem"),
            "-out",
            &format!("{n}.key.pem"),
            "-passout",
            &format!("pass:{PASS}"),
        ]);
    }
    ok(
        d,
        &[
            "fw",
            "master",
            "app.bin",
            "--version",
            "1.0.0",
            "--security-counter",
            "1",
            "--sign-key",
            "oem.key.pem",
            "--encrypt-for-device",
            "dev.crt",
            "--out",
            "dev.bin",
        ],
    );
    ok(
        d,
        &[
            "fw",
            "decrypt",
            "dev.bin",
            "--key",
            "dev.key.pem",
            "--out",
            "clear.bin",
        ],
    );
    let e = fails(
        d,
        &[
            "fw",
            "decrypt",
            "dev.bin",
            "--key",
            "other.key.pem",
            "--out",
            "no.bin",
        ],
    );
    assert!(e.contains("does not decrypt with this key"), "{e}");
    let e = fails(
        d,
        &[
            "fw",
            "master",
            "app.bin",
            "--version",
            "1.0",
            "--security-counter",
            "1",
            "--sign-key",
            "oem.key.pem",
            "--out",
            "bad.bin",
        ],
    );
    assert!(e.contains("X.Y.Z"), "{e}");
}
