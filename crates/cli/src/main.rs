//! The `trustfab` command line: one subcommand per role of the chain of trust (vendor, OEM,
//! demo), a thin layer over the library crates. This is the only crate that picks backends.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `println!` and `print!` for this binary: standard output that is closed early (`trustfab ...
/// | head`) loses the rest of the text but stops nothing, where std's macros would panic. The
/// work a command does (a job, an import) goes on and its errors still reach stderr.
macro_rules! println {
    () => { $crate::stdout_text(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::stdout_text(format_args!("{}\n", format_args!($($arg)*))) };
}

macro_rules! print {
    ($($arg:tt)*) => { $crate::stdout_text(format_args!($($arg)*)) };
}

/// Writes to standard output, ignoring a reader that went away (and any other write error:
/// output is a report of the work, never part of it).
fn stdout_text(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = std::io::stdout().lock().write_fmt(args);
}

mod auth;
mod bench;
mod ca;
mod demo;
mod device;
mod files;
mod fw;
mod hsm;
mod job;
mod oem;
mod secrets;
mod vendor;

/// trustfab: provision IoT devices at a factory you do not trust.
///
/// The OEM keeps its keys inside an HSM; every device gets its own key pair and a certificate
/// chained to the OEM root; the production count cannot be exceeded.
///
/// Start with `trustfab demo`, which runs the whole chain of trust in a temporary directory
/// and prints what each step made. Passphrases for key files come from the environment variable
/// TRUSTFAB_PASSPHRASE, a file (--passphrase-file), or a prompt; never from the command line.
#[derive(Parser, Debug)]
#[command(name = "trustfab", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The provisioning-system vendor: its root CA certifies genuine HSMs.
    #[command(subcommand)]
    Vendor(vendor::VendorCommand),
    /// The OEM: root CA, device CA, certificate template, test issuance, revocation, wrapping.
    #[command(subcommand)]
    Oem(oem::OemCommand),
    /// The HSM at the programming center: identity, package import, products, issuance.
    #[command(subcommand)]
    Hsm(hsm::HsmCommand),
    /// Simulated devices (secure element, secure MCU) in files: make one, show one.
    #[command(subcommand)]
    Device(device::DeviceCommand),
    /// The ledger: verify its hash chain, checkpoints, counters and claims.
    #[command(subcommand)]
    Ledger(hsm::LedgerCommand),
    /// The OEM's update server: mutual TLS with devices chained to the OEM root.
    #[command(subcommand)]
    Server(auth::ServerCommand),
    /// Provisioning jobs at the station: create, run (resumable), close, status.
    #[command(subcommand)]
    Job(job::JobCommand),
    /// Provision N simulated devices through the full flow and compare with the crypto limit.
    Bench(bench::BenchArgs),
    /// Firmware in MCUboot's image format: keygen, master, inspect, verify, decrypt.
    #[command(subcommand)]
    Fw(fw::FwCommand),
    /// Run the chain of trust end to end on the embedded defaults and say what each step made.
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Vendor(c) => vendor::run(c),
        Command::Oem(c) => oem::run(c),
        Command::Hsm(c) => hsm::run(c),
        Command::Ledger(c) => hsm::run_ledger(c),
        Command::Device(c) => device::run(c),
        Command::Server(c) => auth::run_server(c),
        Command::Job(c) => job::run(c),
        Command::Bench(a) => bench::run(&a),
        Command::Fw(c) => fw::run(c),
        Command::Demo(a) => demo::run(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
