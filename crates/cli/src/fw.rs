//! `trustfab fw`: the OEM's firmware in MCUboot's image format (`docs/firmware.md`). `keygen`
//! makes the firmware signing key or a family encryption key (encrypted PKCS#8 and public PEM);
//! `master` signs an image and encrypts it for a family or one device; `inspect` prints the
//! header and TLVs; `verify` checks an image against a public key or a root-of-trust key hash;
//! `decrypt` writes the image with its payload in clear, which `imgtool verify` accepts.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand, ValueEnum};
use trustfab_device::sim::{BootOutcome, BootSlot, SwapOutcome, UpdateRequest};
use trustfab_device::{Device as _, DeviceKind, SiliconVendor};
use trustfab_firmware::{
    decrypt, key_hash, master, verify, DecryptionKey, Image, KeyTlv, MasterOptions, Payload,
    SoftDecryptionKey, TlvKind, TrustAnchor, Version, MAX_IMAGE_BYTES,
};
use trustfab_pki::{pem, Curve, PublicKey, Signer as _, SoftKey};
use trustfab_types::{limits, Clock as _, OsRng, Passphrase, SystemClock};

use crate::files;
use crate::secrets::PassphraseArgs;

#[derive(Subcommand, Debug)]
pub(crate) enum FwCommand {
    /// Make a firmware signing key or a device-family encryption key: NAME.key.pem (encrypted
    /// PKCS#8) and NAME.pub.pem.
    Keygen(KeygenArgs),
    /// Sign (and optionally encrypt) a firmware binary into an MCUboot image.
    // `--version` is the image's version here, not the program's.
    #[command(disable_version_flag = true)]
    Master(MasterArgs),
    /// Print an image's header and TLVs.
    Inspect(InspectArgs),
    /// Verify an image against a public key or a root-of-trust key hash.
    Verify(VerifyArgs),
    /// Write an encrypted image with its payload decrypted (for `imgtool verify`).
    Decrypt(DecryptArgs),
}

/// What a key is for.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum KeyKind {
    /// The OEM's firmware signing key (its hash goes into the MCUs' fuses).
    Sign,
    /// A device family's encryption key (its private half goes into each MCU's secret slot).
    Family,
}

#[derive(Args, Debug)]
pub(crate) struct KeygenArgs {
    /// What the key is for.
    #[arg(long, value_enum)]
    kind: KeyKind,
    /// Base name of the files to write (NAME.key.pem, NAME.pub.pem).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    pass: PassphraseArgs,
}

/// How the image names its signing key.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum KeyTlvArg {
    /// The whole key (PUBKEY): for MCUs with only the key's hash in their fuses.
    Full,
    /// The key's hash (KEYHASH), as imgtool writes by default.
    Hash,
}

#[derive(Args, Debug)]
pub(crate) struct MasterArgs {
    /// The firmware binary.
    image: PathBuf,
    /// The image version, X.Y.Z or X.Y.Z+BUILD.
    #[arg(long)]
    version: Version,
    /// The security counter: devices refuse images below theirs.
    #[arg(long)]
    security_counter: u32,
    /// The signing key (encrypted PKCS#8 PEM from `fw keygen --kind sign`).
    #[arg(long)]
    sign_key: PathBuf,
    /// Encrypt for a device family: its public key PEM (`fw keygen --kind family`).
    #[arg(long, conflicts_with = "encrypt_for_device")]
    encrypt_for_family: Option<PathBuf>,
    /// Encrypt for one device: its certificate (PEM or DER); its certified key decrypts.
    #[arg(long)]
    encrypt_for_device: Option<PathBuf>,
    /// How the image names its signing key.
    #[arg(long, value_enum, default_value = "full")]
    key_tlv: KeyTlvArg,
    /// Header size (the payload's offset), as imgtool's -H.
    #[arg(long, default_value_t = 0x200)]
    header_size: u16,
    /// The image file to write.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    pass: PassphraseArgs,
}

#[derive(Args, Debug)]
pub(crate) struct InspectArgs {
    /// The image.
    image: PathBuf,
}

#[derive(Args, Debug)]
pub(crate) struct VerifyArgs {
    /// The image.
    image: PathBuf,
    /// The signing key's public PEM.
    #[arg(
        long,
        required_unless_present = "key_hash",
        conflicts_with = "key_hash"
    )]
    key: Option<PathBuf>,
    /// The root-of-trust key hash (hex SHA-256 of the key's SubjectPublicKeyInfo), as an MCU's
    /// fuses hold it.
    #[arg(long)]
    key_hash: Option<String>,
    /// Decrypt an encrypted image with this family key (encrypted PKCS#8 PEM).
    #[arg(long)]
    decrypt_key: Option<PathBuf>,
    #[command(flatten)]
    pass: PassphraseArgs,
}

#[derive(Args, Debug)]
pub(crate) struct DecryptArgs {
    /// The encrypted image.
    image: PathBuf,
    /// The family key (encrypted PKCS#8 PEM).
    #[arg(long)]
    key: PathBuf,
    /// The image file to write.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    pass: PassphraseArgs,
}

pub(crate) fn run(cmd: FwCommand) -> Result<()> {
    match cmd {
        FwCommand::Keygen(a) => keygen(&a),
        FwCommand::Master(a) => master_cmd(&a),
        FwCommand::Inspect(a) => {
            print!("{}", inspect(&read_image(&a.image)?)?);
            Ok(())
        }
        FwCommand::Verify(a) => verify_cmd(&a),
        FwCommand::Decrypt(a) => decrypt_cmd(&a),
    }
}

fn read_image(path: &Path) -> Result<Vec<u8>> {
    files::read_limited(path, MAX_IMAGE_BYTES)
        .with_context(|| format!("reading image {}", path.display()))
}

fn public_pem(key: &PublicKey) -> String {
    pem::encode("PUBLIC KEY", &key.to_spki_der())
}

fn write_keypair(out: &Path, pass: &Passphrase) -> Result<(PathBuf, PathBuf, PublicKey)> {
    let key = SoftKey::generate(Curve::P256)?;
    let public = PublicKey::from_point(Curve::P256, key.public_point())?;
    let base = out.to_string_lossy();
    let key_path = PathBuf::from(format!("{base}.key.pem"));
    let pub_path = PathBuf::from(format!("{base}.pub.pem"));
    files::write_new(
        &key_path,
        key.to_encrypted_pem(pass, &OsRng)?.as_bytes(),
        true,
    )?;
    files::write_new(&pub_path, public_pem(&public).as_bytes(), false)?;
    Ok((key_path, pub_path, public))
}

fn keygen(a: &KeygenArgs) -> Result<()> {
    let pass = a.pass.get("the new key", true)?;
    let (key_path, pub_path, public) = write_keypair(&a.out, &pass)?;
    println!("wrote {} and {}", key_path.display(), pub_path.display());
    if matches!(a.kind, KeyKind::Sign) {
        println!(
            "root-of-trust key hash (for the MCUs' fuses): {}",
            hex::encode(key_hash(&public))
        );
    }
    Ok(())
}

fn load_key(path: &Path, pass: &Passphrase) -> Result<SoftKey> {
    let text = files::read_text(path, limits::KEY_FILE_BYTES)?;
    SoftKey::from_encrypted_pem(&text, pass)
        .with_context(|| format!("opening key {}", path.display()))
}

fn load_decryption_key(path: &Path, pass: &Passphrase) -> Result<SoftDecryptionKey> {
    let key = load_key(path, pass)?;
    let der = key.secret_pkcs8_der()?;
    SoftDecryptionKey::from_der(der.secret_pkcs8_der())
        .with_context(|| format!("{} is not a P-256 key", path.display()))
}

fn load_public(path: &Path) -> Result<PublicKey> {
    PublicKey::from_pem(&files::read_text(path, limits::KEY_FILE_BYTES)?)
        .with_context(|| format!("reading public key {}", path.display()))
}

fn certificate_key(path: &Path) -> Result<PublicKey> {
    let bytes = files::read_limited(path, limits::CERTIFICATE_BYTES)?;
    let der = pem::cert_from_pem_or_der(&bytes)
        .with_context(|| format!("reading certificate {}", path.display()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow::anyhow!("parsing certificate {}: {e}", path.display()))?;
    Ok(PublicKey::from_spki_der(cert.public_key().raw)?)
}

fn master_cmd(a: &MasterArgs) -> Result<()> {
    let payload = read_image(&a.image)?;
    let recipient = match (&a.encrypt_for_family, &a.encrypt_for_device) {
        (Some(f), _) => Some(load_public(f)?),
        (None, Some(c)) => Some(certificate_key(c)?),
        (None, None) => None,
    };
    let pass = a.pass.get("the signing key", false)?;
    let key = load_key(&a.sign_key, &pass)?;
    let mut opts = MasterOptions::new(a.version, a.security_counter);
    opts.header_size = a.header_size;
    opts.key_tlv = match a.key_tlv {
        KeyTlvArg::Full => KeyTlv::Full,
        KeyTlvArg::Hash => KeyTlv::Hash,
    };
    opts.encrypt_to = recipient.as_ref();
    let image = master(&payload, &opts, &key, &OsRng).context("mastering the image")?;
    files::write_new(&a.out, &image, false)?;
    println!(
        "wrote {} ({} bytes, version {}, security counter {}{})",
        a.out.display(),
        image.len(),
        a.version,
        a.security_counter,
        if recipient.is_some() {
            ", encrypted"
        } else {
            ""
        }
    );
    Ok(())
}

/// The header and TLVs of an image, one per line.
pub(crate) fn inspect(bytes: &[u8]) -> Result<String> {
    let img = Image::parse(bytes)?;
    let h = img.header();
    let mut out = String::new();
    writeln!(out, "version             {}", h.version)?;
    writeln!(out, "header size         {:#x}", h.hdr_size)?;
    writeln!(out, "payload size        {}", h.img_size)?;
    writeln!(out, "load address        {:#010x}", h.load_addr)?;
    writeln!(
        out,
        "flags               {:#010x}{}",
        h.flags,
        if h.is_encrypted() { " (encrypted)" } else { "" }
    )?;
    writeln!(out, "protected TLV size  {}", h.protect_tlv_size)?;
    for t in img.tlvs() {
        let name = match TlvKind::from_u16(t.kind) {
            Some(TlvKind::KeyHash) => "KEYHASH",
            Some(TlvKind::PubKey) => "PUBKEY",
            Some(TlvKind::Sha256) => "SHA256",
            Some(TlvKind::EcdsaSig) => "ECDSA_SIG",
            Some(TlvKind::EncEc256) => "ENC_EC256",
            Some(TlvKind::SecCnt) => "SEC_CNT",
            None => "unknown",
        };
        let value = if t.kind == TlvKind::SecCnt as u16 {
            img.security_counter().unwrap_or_default().to_string()
        } else {
            hex::encode(t.value)
        };
        writeln!(
            out,
            "TLV {:#06x} {name:<10} {:<11} {value}",
            t.kind,
            t.area.to_string()
        )?;
    }
    Ok(out)
}

fn verify_cmd(a: &VerifyArgs) -> Result<()> {
    let bytes = read_image(&a.image)?;
    let key = a.key.as_deref().map(load_public).transpose()?;
    let hash = match &a.key_hash {
        Some(h) => {
            let v = hex::decode(h).context("--key-hash is not hex")?;
            Some(
                <[u8; 32]>::try_from(v.as_slice())
                    .map_err(|_| anyhow::anyhow!("--key-hash is not 32 bytes"))?,
            )
        }
        None => None,
    };
    let anchor = match (&key, &hash) {
        (Some(k), _) => TrustAnchor::Key(k),
        (None, Some(h)) => TrustAnchor::KeyHash(h),
        (None, None) => bail!("give --key or --key-hash"),
    };
    let dk = match &a.decrypt_key {
        Some(p) => Some(load_decryption_key(
            p,
            &a.pass.get("the family key", false)?,
        )?),
        None => None,
    };
    let keys: Vec<&dyn DecryptionKey> = dk.iter().map(|k| k as &dyn DecryptionKey).collect();
    let v = verify(&bytes, anchor, Payload::Decrypt(&keys))
        .with_context(|| format!("verifying {}", a.image.display()))?;
    println!(
        "{}: verified, version {}, security counter {}, SHA-256 {}",
        a.image.display(),
        v.header.version,
        v.security_counter
            .map_or_else(|| "none".to_owned(), |c| c.to_string()),
        hex::encode(v.hash)
    );
    Ok(())
}

fn decrypt_cmd(a: &DecryptArgs) -> Result<()> {
    let bytes = read_image(&a.image)?;
    let key = load_decryption_key(&a.key, &a.pass.get("the family key", false)?)?;
    let clear =
        decrypt(&bytes, &[&key]).with_context(|| format!("decrypting {}", a.image.display()))?;
    files::write_new(&a.out, &clear, false)?;
    println!("wrote {}", a.out.display());
    Ok(())
}

/// For `trustfab demo`: the OEM makes a firmware signing key and a family key in `dir`, masters
/// an image encrypted for the family, and a simulated secure MCU (root-of-trust hash fused,
/// family key in its secret slot) installs it as an update and boots it; then a changed image,
/// an older one and another family's one are each refused. Prints what happened.
pub(crate) fn demo_firmware(dir: &Path, pass: &Passphrase) -> Result<()> {
    let (sign_path, _, sign_pub) = write_keypair(&dir.join("firmware-signing"), pass)?;
    let (family_path, _, family_pub) = write_keypair(&dir.join("family"), pass)?;
    let signer = load_key(&sign_path, pass)?;
    let family = load_decryption_key(&family_path, pass)?;
    let payload: Vec<u8> = b"thermostat firmware "
        .iter()
        .copied()
        .cycle()
        .take(64 * 1024)
        .collect();
    let mut opts = MasterOptions::new("1.0.0".parse()?, 1);
    opts.encrypt_to = Some(&family_pub);
    let v1 = master(&payload, &opts, &signer, &OsRng)?;
    files::write_new(&dir.join("firmware-1.0.0.bin"), &v1, false)?;
    println!(
        "firmware: mastered firmware-1.0.0.bin (MCUboot image, signed, encrypted for the family)"
    );

    let mut vendor = SiliconVendor::new(SystemClock.now(), &OsRng)?;
    let mut mcu = vendor.manufacture(DeviceKind::SecureMcu, SystemClock.now())?;
    mcu.program_rot_hash(&key_hash(&sign_pub))?;
    mcu.write_slot(5, family.secret_scalar()?.expose_secret())?;
    mcu.write_boot_slot(BootSlot::Secondary, &v1)?;
    mcu.request_update(UpdateRequest::Permanent)?;
    match mcu.boot()? {
        BootOutcome::Verified {
            counter,
            swap: SwapOutcome::Installed { .. },
            ..
        } => {
            println!("   a secure MCU installed and booted it (security counter {counter})");
        }
        other => bail!("the MCU did not install the image: {other:?}"),
    }
    let mut changed = v1.clone();
    if let Some(b) = changed.get_mut(0x300) {
        *b ^= 1;
    }
    let mut opts0 = MasterOptions::new("0.9.0".parse()?, 0);
    opts0.encrypt_to = Some(&family_pub);
    let older = master(&payload, &opts0, &signer, &OsRng)?;
    let other_family = SoftKey::generate(Curve::P256)?;
    let other_pub = PublicKey::from_point(Curve::P256, other_family.public_point())?;
    let mut opts2 = MasterOptions::new("2.0.0".parse()?, 2);
    opts2.encrypt_to = Some(&other_pub);
    let foreign = master(&payload, &opts2, &signer, &OsRng)?;
    for (what, img) in [
        ("a changed image", changed),
        ("an older image", older),
        ("another family's image", foreign),
    ] {
        mcu.write_boot_slot(BootSlot::Secondary, &img)?;
        mcu.request_update(UpdateRequest::Permanent)?;
        match mcu.boot()? {
            BootOutcome::Verified {
                swap: SwapOutcome::Refused(reason),
                ..
            } => {
                println!("   {what} is refused: {reason}; 1.0.0 keeps running");
            }
            other => bail!("{what} was not refused: {other:?}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_installs_the_image_and_refuses_the_three_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let pass = Passphrase::new("demo firmware test".to_owned()).unwrap();
        demo_firmware(dir.path(), &pass).unwrap();
        let img = std::fs::read(dir.path().join("firmware-1.0.0.bin")).unwrap();
        let text = inspect(&img).unwrap();
        assert!(
            text.contains("ENC_EC256") && text.contains("SEC_CNT"),
            "{text}"
        );
    }
}
