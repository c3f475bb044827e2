//! Drives MCUboot's `imgtool` (PyPI `imgtool`, installed by `scripts/test.sh`): key generation,
//! signing (plain and `--encrypt`ed), verification and `dumpinfo`.

use std::path::Path;
use std::process::Command;

use super::{run, Outcome};

const HINT: &str = "install MCUboot's imgtool: python3 -m pip install imgtool==2.5.0";

fn imgtool() -> Command {
    Command::new("imgtool")
}

/// `imgtool keygen -k key -t ecdsa-p256` (unencrypted PKCS#8 PEM).
pub fn keygen(key: &Path) -> Outcome {
    let mut c = imgtool();
    c.arg("keygen")
        .arg("-k")
        .arg(key)
        .args(["-t", "ecdsa-p256"]);
    run(c, HINT)
}

/// `imgtool getpub -k key -e pem`: the public key PEM on standard output.
pub fn getpub_pem(key: &Path) -> Outcome {
    let mut c = imgtool();
    c.arg("getpub").arg("-k").arg(key).args(["-e", "pem"]);
    run(c, HINT)
}

/// `imgtool sign -k key --align 8 -v version -s counter -H 0x200 --pad-header -S 0x1000000
/// [extra] input output`. `extra` adds e.g. `--public-key-format full` or `--encrypt pub.pem`.
pub fn sign(
    key: &Path,
    version: &str,
    security_counter: u32,
    extra: &[&str],
    input: &Path,
    output: &Path,
) -> Outcome {
    let mut c = imgtool();
    c.arg("sign")
        .arg("-k")
        .arg(key)
        .args(["--align", "8", "-v", version, "-s"])
        .arg(security_counter.to_string())
        .args(["-H", "0x200", "--pad-header", "-S", "0x1000000"])
        .args(extra)
        .arg(input)
        .arg(output);
    run(c, HINT)
}

/// `imgtool verify -k key image` (exit 0 when the hash and the signature check).
pub fn verify(key: &Path, image: &Path) -> Outcome {
    let mut c = imgtool();
    c.arg("verify").arg("-k").arg(key).arg(image);
    run(c, HINT)
}

/// `imgtool dumpinfo image`.
pub fn dumpinfo(image: &Path) -> Outcome {
    let mut c = imgtool();
    c.arg("dumpinfo").arg(image);
    run(c, HINT)
}
