//! `trustfab device`: simulated parts in files. `new` makes a secure element or secure MCU from a
//! simulated silicon vendor (kept in its own file, created on first use); `show` prints a part:
//! UID, slots, locks, public keys and certificates in PEM; `update`, `boot` and `confirm` are a
//! secure MCU's field update as its update agent runs it (write the secondary slot, request a
//! test or permanent swap, boot; the running test image confirms itself). See `docs/devices.md`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use trustfab_device::{
    file, BootOutcome, BootSlot, Device, DeviceKind, Fault, ReadPolicy, SiliconVendor, SimDevice,
    SlotKind, Socket, SwapOutcome, Trigger, UpdateRequest, WritePolicy,
};
use trustfab_pki::{pem, validate, Policy, Purpose};
use trustfab_types::{Clock as _, OsRng, SystemClock};

#[derive(Subcommand, Debug)]
pub(crate) enum DeviceCommand {
    /// Make a simulated part and write it to a file.
    New(NewArgs),
    /// Print a simulated part: UID, slots, lock state, public keys and certificates (PEM).
    Show(ShowArgs),
    /// Deliver a field update to a secure MCU as its update agent does: write the image into
    /// the secondary slot, request the swap, boot. A refused update leaves the previous image
    /// running and says why; the part is saved whatever happened, a power cut included.
    Update(UpdateArgs),
    /// Boot a secure MCU: finishes a swap a power cut interrupted, reverts an unconfirmed test
    /// image, installs a pending update, and says what runs.
    Boot(PartArgs),
    /// The running test image confirms itself: the next boot keeps it and raises the security
    /// counter to it.
    Confirm(PartArgs),
    /// Mutual authentication: auth, listen, connect, tls-connect (`docs/auth.md`).
    #[command(flatten)]
    Auth(crate::auth::DeviceAuthCommand),
}

#[derive(Args, Debug)]
pub(crate) struct NewArgs {
    /// Kind of part: se (secure element) or mcu (secure MCU).
    #[arg(long)]
    kind: DeviceKind,
    /// The device file to write.
    #[arg(long)]
    out: PathBuf,
    /// The simulated silicon vendor's file (its CA and UID counter); created if missing.
    #[arg(long, default_value = "silicon-vendor.bin")]
    silicon_vendor: PathBuf,
}

#[derive(Args, Debug)]
pub(crate) struct ShowArgs {
    /// The device file.
    file: PathBuf,
    /// Check the attestation certificate against this silicon vendor's root.
    #[arg(long)]
    silicon_vendor: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct UpdateArgs {
    /// The device file (a secure MCU).
    part: PathBuf,
    /// The mastered update image (`trustfab fw master`).
    image: PathBuf,
    /// Install it for one boot only: it reverts at the next boot unless `device confirm` runs
    /// first (MCUboot's test swap); without it the swap is permanent.
    #[arg(long)]
    test: bool,
    /// Cut the power at this write (0-based) of the boot that installs the update, as a fault
    /// test: the part must stay bootable on its old or its new image.
    #[arg(long, value_name = "N")]
    power_loss_at_write: Option<u32>,
    /// With --power-loss-at-write: cut just after that write's commit point, not before it.
    #[arg(long, requires = "power_loss_at_write")]
    after_commit: bool,
}

#[derive(Args, Debug)]
pub(crate) struct PartArgs {
    /// The device file (a secure MCU).
    part: PathBuf,
}

pub(crate) fn run(cmd: DeviceCommand) -> Result<()> {
    match cmd {
        DeviceCommand::New(a) => new(&a),
        DeviceCommand::Show(a) => show(&a),
        DeviceCommand::Update(a) => update(&a),
        DeviceCommand::Boot(a) => boot(&a),
        DeviceCommand::Confirm(a) => confirm(&a),
        DeviceCommand::Auth(c) => crate::auth::run_device(c),
    }
}

fn load_or_create_vendor(path: &Path) -> Result<SiliconVendor> {
    if path.exists() {
        return file::load_vendor(path)
            .with_context(|| format!("reading silicon vendor {}", path.display()));
    }
    let vendor = SiliconVendor::new(SystemClock.now(), &OsRng)
        .context("creating the simulated silicon vendor")?;
    println!("silicon vendor created  {}", path.display());
    Ok(vendor)
}

fn new(a: &NewArgs) -> Result<()> {
    if a.out.exists() {
        anyhow::bail!("{} already exists; a part is made once", a.out.display());
    }
    let mut vendor = load_or_create_vendor(&a.silicon_vendor)?;
    let device = vendor
        .manufacture(a.kind, SystemClock.now())
        .context("making the part")?;
    // The vendor's counter moves first, so that a crash cannot hand out a UID twice.
    file::save_vendor(&vendor, &a.silicon_vendor)
        .with_context(|| format!("writing silicon vendor {}", a.silicon_vendor.display()))?;
    file::save(&device, &a.out).with_context(|| format!("writing {}", a.out.display()))?;
    println!("{} {}  {}", a.kind, device.uid_label(), a.out.display());
    Ok(())
}

fn policy_text(
    kind: SlotKind,
    read: ReadPolicy,
    write: WritePolicy,
) -> (&'static str, &'static str, &'static str) {
    let kind = match kind {
        SlotKind::PrivateKey => "private-key",
        SlotKind::Certificate => "certificate",
        SlotKind::Data => "data",
        SlotKind::Secret => "secret",
    };
    let read = match read {
        ReadPolicy::Clear => "clear",
        ReadPolicy::Never => "never",
    };
    let write = match write {
        WritePolicy::Always => "always",
        WritePolicy::UntilLock => "until-lock",
        WritePolicy::Never => "never",
    };
    (kind, read, write)
}

fn show(a: &ShowArgs) -> Result<()> {
    let mut d: SimDevice =
        file::load(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let locks = d.lock_state()?;
    println!("kind        {}", d.kind());
    println!("uid         {}", d.uid()?);
    println!(
        "locks       config {}, data {}",
        if locks.config { "locked" } else { "open" },
        if locks.data { "locked" } else { "open" }
    );
    if d.kind() == DeviceKind::SecureMcu {
        println!("lifecycle   {:?}", d.lifecycle()?);
        match d.rot_hash()? {
            Some(h) => println!("rot hash    {}", hex::encode(h)),
            None => println!("rot hash    (not programmed)"),
        }
        println!("sec counter {}", d.security_counter()?);
    }
    println!("counters    {} {}", d.counter_read(0)?, d.counter_read(1)?);
    println!();
    println!("slot  kind         read   write       lock      content");
    let slots = d.slots()?;
    for s in &slots {
        let (kind, read, write) = policy_text(s.config.kind, s.config.read, s.config.write);
        let lock = match (s.config.lockable, s.locked) {
            (true, true) => "locked",
            (true, false) => "lockable",
            (false, _) => "-",
        };
        let content = match (s.config.kind, s.filled) {
            (_, false) => "empty".to_owned(),
            (SlotKind::PrivateKey, true) => "key".to_owned(),
            (_, true) => format!("{} bytes", s.len),
        };
        println!(
            "{:<5} {kind:<12} {read:<6} {write:<11} {lock:<9} {content}",
            s.id
        );
    }
    for s in &slots {
        match s.config.kind {
            SlotKind::PrivateKey if s.filled => {
                let pk = d.public_key(s.id)?;
                println!(
                    "\nslot {} public key\n{}",
                    s.id,
                    pem::encode("PUBLIC KEY", &pk.to_spki_der()).trim_end()
                );
            }
            SlotKind::Certificate if s.filled => match d.read_slot(s.id) {
                Ok(der) if x509_parser::parse_x509_certificate(&der).is_ok() => {
                    println!(
                        "\nslot {} certificate\n{}",
                        s.id,
                        pem::cert_pem(&der).trim_end()
                    );
                }
                Ok(bytes) => println!("\nslot {}: {} bytes, not a certificate", s.id, bytes.len()),
                Err(e) => println!("\nslot {}: {e}", s.id),
            },
            _ => {}
        }
    }
    let att = d.attestation_certificate()?;
    println!(
        "\nattestation certificate\n{}",
        pem::cert_pem(&att).trim_end()
    );
    if let Some(path) = &a.silicon_vendor {
        let vendor = file::load_vendor(path)
            .with_context(|| format!("reading silicon vendor {}", path.display()))?;
        validate(
            &att,
            &Policy {
                root: vendor.root_der(),
                intermediates: &[],
                crls: &[],
                now: SystemClock.now(),
                purpose: Purpose::ClientAuth,
            },
        )
        .context("attestation certificate")?;
        println!("attestation certificate validates to the silicon vendor root");
    }
    Ok(())
}

fn load_part(path: &Path) -> Result<SimDevice> {
    let d = file::load(path).with_context(|| format!("reading part {}", path.display()))?;
    if d.kind() != DeviceKind::SecureMcu {
        anyhow::bail!(
            "{} is a {}: only a secure MCU has a boot stage",
            path.display(),
            d.kind()
        );
    }
    Ok(d)
}

fn save_part(d: &SimDevice, path: &Path) -> Result<()> {
    file::save(d, path).with_context(|| format!("saving part {}", path.display()))
}

/// What a boot ran, in words.
fn booted(path: &Path, outcome: &BootOutcome) -> String {
    match outcome {
        BootOutcome::Unverified => format!(
            "{}: booted unverified (no root of trust: a development part)",
            path.display()
        ),
        BootOutcome::Verified {
            counter,
            image_hash,
            swap,
        } => {
            let what = match swap {
                SwapOutcome::None => "booted".to_owned(),
                SwapOutcome::Installed { test: false } => "installed the update and booted it".to_owned(),
                SwapOutcome::Installed { test: true } => {
                    "installed the update for a test boot (it reverts at the next boot unless `trustfab device confirm` runs)".to_owned()
                }
                SwapOutcome::Reverted => "reverted the unconfirmed test image and booted the previous one".to_owned(),
                SwapOutcome::Refused(reason) => {
                    format!("refused the update ({reason}) and booted the previous image")
                }
            };
            format!(
                "{}: {what}: image sha256 {}, security counter {counter}",
                path.display(),
                hex::encode(image_hash)
            )
        }
    }
}

fn update(a: &UpdateArgs) -> Result<()> {
    let part = load_part(&a.part)?;
    let image = crate::files::read_limited(&a.image, trustfab_firmware::MAX_IMAGE_BYTES)
        .with_context(|| format!("reading update image {}", a.image.display()))?;
    let mut socket = Socket::with_device(part, 0);
    let request = if a.test {
        UpdateRequest::Test
    } else {
        UpdateRequest::Permanent
    };
    let staged =
        trustfab_device::SecureBoot::write_boot_slot(&mut socket, BootSlot::Secondary, &image)
            .and_then(|()| trustfab_device::SecureBoot::request_update(&mut socket, request));
    let outcome = staged.and_then(|()| {
        if let Some(write) = a.power_loss_at_write {
            let next = socket.operations() + 1;
            socket = std::mem::replace(&mut socket, Socket::new(0)).fault(
                Fault::PowerLossAtWrite {
                    write,
                    after_commit: a.after_commit,
                },
                Trigger::AtOperation(next),
            );
        }
        trustfab_device::SecureBoot::boot(&mut socket)
    });
    // The part's flash is what it is now, whatever the update did: save it before reporting.
    let part = socket.remove().context("the socket lost the part")?;
    save_part(&part, &a.part)?;
    match outcome {
        Ok(
            o @ BootOutcome::Verified {
                swap: SwapOutcome::Refused(_),
                ..
            },
        ) => anyhow::bail!("{}", booted(&a.part, &o)),
        Ok(o) => {
            println!("{}", booted(&a.part, &o));
            Ok(())
        }
        Err(trustfab_device::Error::PowerLoss { .. }) => anyhow::bail!(
            "{}: power was cut during the update's boot; run `trustfab device boot {}` to \
             finish or undo the swap",
            a.part.display(),
            a.part.display()
        ),
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "{}: the update was not installed",
            a.part.display()
        ))),
    }
}

fn boot(a: &PartArgs) -> Result<()> {
    let mut part = load_part(&a.part)?;
    let outcome = part.boot();
    save_part(&part, &a.part)?;
    let o = outcome.with_context(|| format!("{}: boot", a.part.display()))?;
    println!("{}", booted(&a.part, &o));
    Ok(())
}

fn confirm(a: &PartArgs) -> Result<()> {
    let mut part = load_part(&a.part)?;
    if !part
        .image_unconfirmed()
        .with_context(|| format!("{}: reading the boot state", a.part.display()))?
    {
        println!(
            "{}: the running image is confirmed already",
            a.part.display()
        );
        return Ok(());
    }
    part.confirm_image()
        .with_context(|| format!("{}: confirming the image", a.part.display()))?;
    save_part(&part, &a.part)?;
    println!(
        "{}: the running image is confirmed: the next boot keeps it",
        a.part.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_then_show_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let vendor = dir.path().join("vendor.bin");
        for (kind, name) in [
            (DeviceKind::SecureElement, "se"),
            (DeviceKind::SecureMcu, "mcu"),
        ] {
            let out = dir.path().join(name);
            let args = NewArgs {
                kind,
                out: out.clone(),
                silicon_vendor: vendor.clone(),
            };
            new(&args).unwrap();
            // A part is made once.
            let err = new(&args).unwrap_err();
            assert!(format!("{err:#}").contains("already exists"));
            show(&ShowArgs {
                file: out,
                silicon_vendor: Some(vendor.clone()),
            })
            .unwrap();
        }
        // Both parts came from the same vendor: it counted two.
        assert_eq!(file::load_vendor(&vendor).unwrap().made(), 2);
        let bad = dir.path().join("bad");
        std::fs::write(&bad, b"junk").unwrap();
        let err = show(&ShowArgs {
            file: bad,
            silicon_vendor: None,
        })
        .unwrap_err();
        assert!(format!("{err:#}").ends_with("is refused: not a device file (bad magic)"));
    }
}
