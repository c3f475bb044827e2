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
mod operator;
mod secrets;
mod service;
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
    /// A station of the HSM service: its key and certification request.
    #[command(subcommand)]
    Station(service::StationCommand),
    /// The center's operators of the HSM service: their CA, certificates and metrics.
    #[command(subcommand)]
    Operator(operator::OperatorCommand),
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
        Command::Station(c) => service::run_station(c),
        Command::Operator(c) => operator::run(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            exit_code(&e)
        }
    }
}

/// Whether the HSM refused the job itself (as opposed to failing to reach its token or ledger).
fn job_refused(e: &trustfab_hsm::JobOpError) -> bool {
    use trustfab_hsm::JobOpError as E;
    match e {
        E::Issue(i) => issue_refused(i),
        E::Ledger(_) | E::Token(_) | E::CheckpointAfterClose { .. } => false,
        _ => true,
    }
}

/// Whether an issuance was refused for the job's reservation: another HSM's, closed, an earlier
/// release's, or spent.
fn issue_refused(e: &trustfab_hsm::IssueError) -> bool {
    use trustfab_hsm::IssueError as E;
    matches!(
        e,
        E::ForeignReservation { .. }
            | E::JobClosed { .. }
            | E::LegacyJob { .. }
            | E::ReservationExhausted { .. }
    )
}

/// The exit status of a failed command: [`job::EXIT_INCOMPLETE`] for a run that left its job
/// incomplete, [`job::EXIT_REFUSED`] for a job the HSM or the station refused, else 1.
fn exit_code(e: &anyhow::Error) -> ExitCode {
    use trustfab_station::RunError;
    for cause in e.chain() {
        if cause.is::<job::Incomplete>() {
            return ExitCode::from(job::EXIT_INCOMPLETE);
        }
        let refused = match cause.downcast_ref::<RunError>() {
            Some(RunError::Job(e)) => job_refused(e),
            Some(RunError::Issue(e)) => issue_refused(e),
            Some(RunError::Image { .. }) => true,
            _ => cause
                .downcast_ref::<trustfab_hsm::JobOpError>()
                .is_some_and(job_refused),
        };
        if refused {
            return ExitCode::from(job::EXIT_REFUSED);
        }
    }
    ExitCode::FAILURE
}

/// An error and its causes on one line, `outer: cause: root cause`, each said once: a cause
/// whose text its parent's message already ends with (a library error that shows its source
/// in its own message) is not repeated.
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut last = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || last.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
        last = text;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::fmt;

    use super::report;

    /// A library error that shows its source in its own message, as many do.
    #[derive(Debug)]
    struct Shows(Root);

    impl fmt::Display for Shows {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "certificate does not validate: {}", self.0)
        }
    }

    impl std::error::Error for Shows {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[derive(Debug)]
    struct Root;

    impl fmt::Display for Root {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("CertRevoked")
        }
    }

    impl std::error::Error for Root {}

    #[test]
    fn a_cause_its_parent_already_shows_is_said_once() {
        let e = anyhow::Error::new(Shows(Root)).context("dev.pem");
        assert_eq!(
            report(&e),
            "dev.pem: certificate does not validate: CertRevoked"
        );
        let plain = anyhow::anyhow!("no such job").context("job status j1");
        assert_eq!(report(&plain), "job status j1: no such job");
    }
}
