//! `trustfab fw`, run for real, with MCUboot's `imgtool` on the other side: the interop recipe
//! of `docs/firmware.md` in both directions.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use trustfab_test_support::cli::Trustfab;
use trustfab_test_support::{files_under, imgtool};

mod common;
use common::{fails, ok, PASS};

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

/// The 32-byte private scalar of a P-256 key in PKCS#8: PrivateKeyInfo's `privateKey` OCTET
/// STRING holds an ECPrivateKey (RFC 5915), whose second field is the scalar.
fn p256_scalar(pkcs8: &[u8]) -> [u8; 32] {
    /// One DER TLV: its tag, its contents and what follows it.
    fn tlv(b: &[u8]) -> (u8, &[u8], &[u8]) {
        let (tag, first) = (b[0], b[1]);
        let (len, head) = if first < 0x80 {
            (usize::from(first), 2)
        } else {
            let n = usize::from(first & 0x7F);
            let len = b[2..2 + n]
                .iter()
                .fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
            (len, 2 + n)
        };
        (tag, &b[head..head + len], &b[head + len..])
    }
    let (tag, info, _) = tlv(pkcs8);
    assert_eq!(tag, 0x30, "PrivateKeyInfo is a SEQUENCE");
    let (tag, _version, rest) = tlv(info);
    assert_eq!(tag, 0x02);
    let (tag, _algorithm, rest) = tlv(rest);
    assert_eq!(tag, 0x30);
    let (tag, private_key, _) = tlv(rest);
    assert_eq!(tag, 0x04, "privateKey is an OCTET STRING");
    let (tag, ec, _) = tlv(private_key);
    assert_eq!(tag, 0x30, "ECPrivateKey is a SEQUENCE");
    let (tag, version, rest) = tlv(ec);
    assert_eq!((tag, version), (0x02, &[1u8][..]), "ECPrivateKey version 1");
    let (tag, scalar, _) = tlv(rest);
    assert_eq!(tag, 0x04);
    scalar.try_into().expect("a P-256 scalar is 32 bytes")
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The value after `label` on its line of `trustfab device show`'s output.
fn shown<'a>(show: &'a str, label: &str) -> &'a str {
    show.lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} in device show:\n{show}"))
        .trim()
}

/// A secure MCU product's firmware from the OEM to the parts, through the command line only:
/// the OEM's firmware keys and image, a package carrying the boot key hash and the family key
/// wrapped for the HSM, the import, a job naming the image and its run on three device files.
/// Then the parts are locked with the fuse programmed and the image booting, and a field update
/// encrypted for one part installs on it and on no other. Refused on the way: an image signed by
/// another key, a run given another image file, a family key without a family. The family
/// private key is in no file of the directory but its encrypted key file and the parts.
fn firmware_programmed_by_a_job_through_the_command_line(d: &Path, backend: &str, pass: &str) {
    use trustfab_device::sim::{BootOutcome, SwapOutcome};

    let tf = Trustfab::new(env!("CARGO_BIN_EXE_trustfab"), pass);
    let ok = |args: &[&str]| tf.ok(d, args);
    let fails = |args: &[&str]| tf.fails(d, args);

    // The programming center's HSM, certified by the vendor; the OEM's CA and template.
    let mut init = vec!["--hsm-id", "hsm-fw", "--backend", backend];
    if backend == "pkcs11" {
        init.extend(["--token-label", trustfab_test_support::softhsm::TOKEN_LABEL]);
    }
    tf.programming_centre(d, &init);

    // The OEM's firmware keys and image 1.0.0, signed and encrypted for the family.
    let out = ok(&["fw", "keygen", "--kind", "sign", "--out", "fwsign"]);
    let rot = out
        .split("fuses): ")
        .nth(1)
        .expect("keygen prints the root-of-trust key hash")
        .trim()
        .to_owned();
    ok(&["fw", "keygen", "--kind", "family", "--out", "family"]);
    std::fs::write(
        d.join("payload.bin"),
        b"gw firmware ".repeat(3000), // 36,000 bytes
    )
    .unwrap();
    let master = |sign_key: &str, encrypt: [&str; 2], out: &str, version: &str, counter: &str| {
        ok(&[
            "fw",
            "master",
            "payload.bin",
            "--version",
            version,
            "--security-counter",
            counter,
            "--sign-key",
            sign_key,
            encrypt[0],
            encrypt[1],
            "--out",
            out,
        ])
    };
    let family = ["--encrypt-for-family", "family.pub.pem"];
    let out = master("fwsign.key.pem", family, "app.bin", "1.0.0", "3");
    assert!(out.contains("security counter 3, encrypted"), "{out}");
    let out = ok(&[
        "fw",
        "verify",
        "app.bin",
        "--key-hash",
        &rot,
        "--decrypt-key",
        "family.key.pem",
    ]);
    let app_hash = out
        .split("SHA-256 ")
        .nth(1)
        .expect("verify prints the image hash")
        .trim()
        .to_owned();

    // A family key without a family: clap refuses before anything is read or written.
    let wrap = |product: &str, firmware: &[&str], out: &str| {
        let mut args = Trustfab::wrap_args("vendor/root.pem", product, 3, out);
        args.extend(firmware.iter().map(|&a| a.to_owned()));
        args
    };

    let e = fails(&strs(&wrap(
        "gw",
        &["--family-key", "family.key.pem"],
        "bad.pkg",
    )));
    assert!(
        e.contains("required arguments were not provided") && e.contains("--family <FAMILY>"),
        "{e}"
    );
    assert!(!d.join("bad.pkg").exists());

    // The package carries the boot key's hash and the family key wrapped for this HSM.
    ok(&strs(&wrap(
        "gw",
        &[
            "--family",
            "gw",
            "--boot-key",
            "fwsign.pub.pem",
            "--family-key",
            "family.key.pem",
        ],
        "gw.pkg",
    )));
    let out = ok(&["hsm", "import", "gw.pkg"]);
    assert!(out.contains("created product acme/gw"), "{out}");

    // Three secure MCUs from the silicon vendor, in their device files.
    std::fs::create_dir(d.join("parts")).unwrap();
    for i in 1..=3 {
        let part = format!("parts/mcu-{i}.dev");
        ok(&["device", "new", "--kind", "mcu", "--out", &part]);
        let show = ok(&["device", "show", &part]);
        assert_eq!(shown(&show, "lifecycle"), "Open", "{show}");
        assert_eq!(shown(&show, "rot hash"), "(not programmed)", "{show}");
    }

    // An image signed by another key is not the product's: the job is refused and names it.
    ok(&["fw", "keygen", "--kind", "sign", "--out", "other"]);
    master("other.key.pem", family, "other.bin", "1.0.0", "3");
    let job = |image: &str, out: &str| {
        vec![
            "job",
            "create",
            "--product",
            "acme/gw",
            "--quantity",
            "3",
            "--kind",
            "mcu",
            "--image",
            image,
            "--job-id",
            "gw-1",
            "--out",
            out,
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>()
    };
    let args = job("other.bin", "other-job.bin");
    let e = fails(&strs(&args));
    assert!(
        e.contains("other.bin") && e.contains("other than the trusted one"),
        "{e}"
    );
    assert!(!d.join("other-job.bin").exists());

    // The job names app.bin (the refused one reserved nothing: it gets the whole count).
    let args = job("app.bin", "job.bin");
    let out = ok(&strs(&args));
    assert!(out.contains("3 devices reserved"), "{out}");

    // The same payload mastered again by the same key for the same family is a valid image of
    // the product, but not the file the job names: the run is refused before any part is touched.
    master("fwsign.key.pem", family, "app-again.bin", "1.0.0", "3");
    let e = fails(&[
        "job",
        "run",
        "job.bin",
        "--parts",
        "parts",
        "--image",
        "app-again.bin",
    ]);
    assert!(
        e.contains("the image given is not app.bin") && e.contains("SHA-256"),
        "{e}"
    );
    let e = fails(&["job", "run", "job.bin", "--parts", "parts"]);
    assert!(e.contains("no image was given"), "{e}");
    let show = ok(&["device", "show", "parts/mcu-1.dev"]);
    assert_eq!(shown(&show, "lifecycle"), "Open", "{show}");

    let out = ok(&[
        "job", "run", "job.bin", "--parts", "parts", "--image", "app.bin", "--close",
    ]);
    assert!(
        out.contains("3 of 3 good, 3 certificates issued, 0 failed after issue"),
        "{out}"
    );
    assert!(out.contains("closed: 0 credited back to acme/gw"), "{out}");
    let products = ok(&["hsm", "products"]);
    assert!(products.contains("3          3          0"), "{products}");
    assert!(ok(&["ledger", "verify"]).contains("ledger verified"));

    // Every part: locked, the fuse holds the boot key's hash, the family key in its secret slot,
    // the counter is the image's; and it boots app.bin, verified.
    for i in 1..=3 {
        let part = format!("parts/mcu-{i}.dev");
        let show = ok(&["device", "show", &part]);
        assert_eq!(shown(&show, "lifecycle"), "Locked", "{show}");
        assert_eq!(
            shown(&show, "locks"),
            "config locked, data locked",
            "{show}"
        );
        assert_eq!(shown(&show, "rot hash"), rot, "{show}");
        assert_eq!(shown(&show, "sec counter"), "3", "{show}");
        assert!(
            show.lines()
                .any(|l| l.starts_with("5 ") && l.contains("secret") && l.ends_with("32 bytes")),
            "{show}"
        );
        let mut mcu = trustfab_device::file::load(&d.join(&part)).unwrap();
        match mcu.boot().unwrap() {
            BootOutcome::Verified {
                counter: 3,
                image_hash,
                swap: SwapOutcome::None,
            } => assert_eq!(hex::encode(image_hash), app_hash),
            other => panic!("{part} booted {other:?}"),
        }
    }

    // A field update for part 1 only: 2.0.0 encrypted for its certified key (the certificate
    // the job wrote into slot 10). Part 1's secure boot installs it; part 2 cannot decrypt it.
    let show = ok(&["device", "show", "parts/mcu-1.dev"]);
    let cert = show
        .split("slot 10 certificate\n")
        .nth(1)
        .and_then(|s| s.split_inclusive("-----END CERTIFICATE-----").next())
        .expect("device show prints the device certificate");
    std::fs::write(d.join("mcu-1.pem"), format!("{cert}\n")).unwrap();
    let out = master(
        "fwsign.key.pem",
        ["--encrypt-for-device", "mcu-1.pem"],
        "app-2.0.0-mcu-1.bin",
        "2.0.0",
        "4",
    );
    assert!(out.contains("encrypted"), "{out}");
    // The field update, delivered as the part's update agent would: mcu-1 installs it, mcu-2
    // (another part) cannot decrypt it, refuses it, says why and keeps its image.
    let out = ok(&["device", "update", "parts/mcu-1.dev", "app-2.0.0-mcu-1.bin"]);
    assert!(out.contains("installed the update and booted it"), "{out}");
    assert!(out.contains("security counter 4"), "{out}");
    let e = fails(&["device", "update", "parts/mcu-2.dev", "app-2.0.0-mcu-1.bin"]);
    assert!(e.contains("refused the update ("), "{e}");
    assert!(e.contains("booted the previous image"), "{e}");
    assert!(e.contains("security counter 3"), "{e}");
    let show = ok(&["device", "show", "parts/mcu-1.dev"]);
    assert_eq!(shown(&show, "sec counter"), "4", "{show}");
    let show = ok(&["device", "show", "parts/mcu-2.dev"]);
    assert_eq!(shown(&show, "sec counter"), "3", "{show}");

    // A test swap reverts at the next boot unless the image confirms itself; confirmed, it
    // stays and raises the counter.
    master(
        "fwsign.key.pem",
        ["--encrypt-for-device", "mcu-1.pem"],
        "app-3.0.0-mcu-1.bin",
        "3.0.0",
        "5",
    );
    std::fs::copy(d.join("parts/mcu-1.dev"), d.join("trial.dev")).unwrap();
    let out = ok(&[
        "device",
        "update",
        "trial.dev",
        "app-3.0.0-mcu-1.bin",
        "--test",
    ]);
    assert!(
        out.contains("installed the update for a test boot"),
        "{out}"
    );
    assert!(out.contains("security counter 4"), "{out}");
    let out = ok(&["device", "boot", "trial.dev"]);
    assert!(out.contains("reverted the unconfirmed test image"), "{out}");
    ok(&[
        "device",
        "update",
        "trial.dev",
        "app-3.0.0-mcu-1.bin",
        "--test",
    ]);
    assert!(ok(&["device", "confirm", "trial.dev"]).contains("the next boot keeps it"));
    let out = ok(&["device", "boot", "trial.dev"]);
    assert!(
        out.contains(": booted: ") && out.contains("security counter 5"),
        "{out}"
    );
    let new_image = out
        .split("image sha256 ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_owned();

    // A power cut at every write of the installing boot, before and after its commit point:
    // the part boots afterwards, on its old image (counter 4) or on the new one.
    let old_image = {
        let out = ok(&["device", "boot", "parts/mcu-1.dev"]);
        out.split("image sha256 ")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .to_owned()
    };
    let mut cuts = 0;
    'writes: for write in 0..64u32 {
        for after in [false, true] {
            std::fs::copy(d.join("parts/mcu-1.dev"), d.join("cut.dev")).unwrap();
            let n = write.to_string();
            let mut args = vec!["device", "update", "cut.dev", "app-3.0.0-mcu-1.bin"];
            args.extend(["--power-loss-at-write", &n]);
            if after {
                args.push("--after-commit");
            }
            let run = tf.run(d, &args);
            if run.status.success() {
                // The boot made fewer writes than this: the update went through whole.
                assert!(write > 0, "no write was cut");
                break 'writes;
            }
            let e = String::from_utf8_lossy(&run.stderr);
            assert!(e.contains("power was cut during the update's boot"), "{e}");
            cuts += 1;
            let out = ok(&["device", "boot", "cut.dev"]);
            assert!(
                out.contains(&old_image) || out.contains(&new_image),
                "write {write} (after commit: {after}): {out}"
            );
        }
    }
    assert!(cuts >= 4, "only {cuts} power cuts were tried");
    // The copies are parts too; the search below counts the job's three.
    for copy in ["trial.dev", "cut.dev"] {
        std::fs::remove_file(d.join(copy)).unwrap();
    }

    // The family private key in the clear is nowhere but inside the parts. The device files are
    // the parts' memory (secret slot 5 holds the key the part unwrapped inside), so they are
    // left out of the search, and checked to hold it: the search finds what it looks for.
    // Everything else is searched: the encrypted key files, the provisioning and job packages,
    // the images, the HSM directory with its ledger and token store (and SoftHSM2's token
    // directory on that backend), the silicon vendor's file.
    let key = trustfab_pki::SoftKey::from_encrypted_pem(
        &std::fs::read_to_string(d.join("family.key.pem")).unwrap(),
        &trustfab_types::Passphrase::new(pass.to_owned()).unwrap(),
    )
    .unwrap();
    let scalar = p256_scalar(key.secret_pkcs8_der().unwrap().secret_pkcs8_der());
    let holds = |path: &Path| {
        std::fs::read(path)
            .unwrap()
            .windows(scalar.len())
            .any(|w| w == scalar)
    };
    let files = files_under(d);
    let (parts, others): (Vec<_>, Vec<_>) = files
        .iter()
        .partition(|p| p.extension().is_some_and(|e| e == "dev"));
    assert_eq!(parts.len(), 3);
    for p in parts {
        assert!(holds(p), "{} does not hold the family key", p.display());
    }
    for must in ["gw.pkg", "job.bin", "hsm/ledger.sqlite", "family.key.pem"] {
        assert!(others.contains(&&d.join(must)), "{must} was not searched");
    }
    let store = d.join(if backend == "pkcs11" {
        "softhsm-tokens"
    } else {
        "hsm/token"
    });
    assert!(
        others.iter().any(|p| p.starts_with(&store)),
        "the token store {} was not searched",
        store.display()
    );
    for p in others {
        assert!(!holds(p), "{} holds the family private key", p.display());
    }
}

#[test]
fn firmware_programmed_by_a_job_through_the_command_line_on_the_soft_token() {
    let t = tempfile::tempdir().unwrap();
    firmware_programmed_by_a_job_through_the_command_line(t.path(), "soft", PASS);
}

#[test]
fn firmware_programmed_by_a_job_through_the_command_line_on_softhsm2_through_pkcs11() {
    let t = tempfile::tempdir().unwrap();
    let softhsm = trustfab_test_support::softhsm::SoftHsm2::new(t.path());
    // The child processes find the token through the same configuration.
    assert!(softhsm.conf().exists());
    firmware_programmed_by_a_job_through_the_command_line(
        t.path(),
        "pkcs11",
        trustfab_test_support::softhsm::PIN,
    );
}
