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

use trustfab_firmware::{
    decrypt, key_hash, master, verify, DecryptionKey, Image, KeyTlv, MasterOptions, Payload,
    SoftDecryptionKey, TlvKind, TrustAnchor, Version, MAX_IMAGE_BYTES,
};
use trustfab_pki::{pem, Curve, PublicKey, Signer as _, SoftKey};
use trustfab_types::{limits, OsRng, Passphrase};

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
    trustfab_pki::public_key_from_pem(&files::read_text(path, limits::KEY_FILE_BYTES)?)
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

/// What [`demo_master`] made: the OEM's firmware keys and the first image.
pub(crate) struct DemoFirmware {
    /// The firmware signing key (encrypted PKCS#8 PEM) and its public PEM.
    pub(crate) sign_key: PathBuf,
    pub(crate) sign_pub: PathBuf,
    /// The family encryption key (encrypted PKCS#8 PEM).
    pub(crate) family_key: PathBuf,
    /// The image, mastered for the family.
    pub(crate) image: PathBuf,
}

/// For `trustfab demo`: the OEM makes a firmware signing key and a family key in `dir` (as `fw
/// keygen` does) and masters image 1.0.0, signed and encrypted for the family (as `fw master`).
pub(crate) fn demo_master(dir: &Path, pass: &Passphrase) -> Result<DemoFirmware> {
    let (sign_key, sign_pub, _) = write_keypair(&dir.join("firmware-signing"), pass)?;
    let (family_key, _, family_pub) = write_keypair(&dir.join("family"), pass)?;
    let signer = load_key(&sign_key, pass)?;
    let mut opts = MasterOptions::new("1.0.0".parse()?, 1);
    opts.encrypt_to = Some(&family_pub);
    let image = dir.join("gateway-1.0.0.bin");
    files::write_new(
        &image,
        &master(&demo_payload(), &opts, &signer, &OsRng)?,
        false,
    )?;
    Ok(DemoFirmware {
        sign_key,
        sign_pub,
        family_key,
        image,
    })
}

fn demo_payload() -> Vec<u8> {
    b"gateway firmware "
        .iter()
        .copied()
        .cycle()
        .take(64 * 1024)
        .collect()
}

/// For `trustfab demo`: a field update of a provisioned secure MCU (its device file `part`,
/// certificate `cert`): image 2.0.0 encrypted for that one device installs as a test update, is
/// confirmed and raises the counter; then a changed image, an older one and another family's one
/// are each refused by secure boot. Prints what happened.
pub(crate) fn demo_field_update(
    fw: &DemoFirmware,
    pass: &Passphrase,
    part: &Path,
    cert: &[u8],
) -> Result<()> {
    let signer = load_key(&fw.sign_key, pass)?;
    let (_, c) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| anyhow::anyhow!("the device certificate does not parse: {e}"))?;
    let device_key = PublicKey::from_spki_der(c.public_key().raw)?;
    let mut mcu = trustfab_device::file::load(part)?;

    let mut opts = MasterOptions::new("2.0.0".parse()?, 2);
    opts.encrypt_to = Some(&device_key);
    let v2 = master(&demo_payload(), &opts, &signer, &OsRng)?;
    mcu.write_boot_slot(BootSlot::Secondary, &v2)?;
    mcu.request_update(UpdateRequest::Test)?;
    match mcu.boot()? {
        BootOutcome::Verified {
            swap: SwapOutcome::Installed { test: true },
            counter,
            ..
        } => println!(
            "   field update 2.0.0, encrypted for this one device (its certified key): installed for a test boot (counter still {counter})"
        ),
        other => bail!("the MCU did not install the update: {other:?}"),
    }
    mcu.confirm_image()?;
    match mcu.boot()? {
        BootOutcome::Verified { counter, .. } => {
            println!("   the image confirmed itself; the next boot keeps it and the counter rises to {counter}");
        }
        BootOutcome::Unverified => bail!("the MCU booted unverified"),
    }
    let mut changed = v2.clone();
    if let Some(b) = changed.get_mut(0x300) {
        *b ^= 1;
    }
    let mut opts1 = MasterOptions::new("1.0.0".parse()?, 1);
    opts1.encrypt_to = Some(&device_key);
    let older = master(&demo_payload(), &opts1, &signer, &OsRng)?;
    let other_family = SoftKey::generate(Curve::P256)?;
    let other_pub = PublicKey::from_point(Curve::P256, other_family.public_point())?;
    let mut opts3 = MasterOptions::new("3.0.0".parse()?, 3);
    opts3.encrypt_to = Some(&other_pub);
    let foreign = master(&demo_payload(), &opts3, &signer, &OsRng)?;
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
                println!("   {what} is refused: {reason}; 2.0.0 keeps running");
            }
            other => bail!("{what} was not refused: {other:?}"),
        }
    }
    trustfab_device::file::save(&mcu, part)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_masters_a_signed_image_encrypted_for_the_family() {
        let dir = tempfile::tempdir().unwrap();
        let pass = Passphrase::new("demo firmware test".to_owned()).unwrap();
        let fw = demo_master(dir.path(), &pass).unwrap();
        let img = std::fs::read(&fw.image).unwrap();
        let family = load_decryption_key(&fw.family_key, &pass).unwrap();
        let keys: [&dyn DecryptionKey; 1] = [&family];
        let sign_pub = load_public(&fw.sign_pub).unwrap();
        verify(
            &img,
            TrustAnchor::KeyHash(&key_hash(&sign_pub)),
            Payload::Decrypt(&keys),
        )
        .unwrap();
        let text = inspect(&img).unwrap();
        assert!(
            text.contains("ENC_EC256") && text.contains("SEC_CNT"),
            "{text}"
        );
    }
}
