#![doc = include_str!("../README.md")]
#![allow(clippy::missing_panics_doc)] // test helpers panic by design, with the reason

use std::path::{Path, PathBuf};
use std::process::Command;

/// A scratch directory that files are written into for the external tools.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    /// A new empty directory, removed on drop.
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `contents` to `name` in the directory and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, contents).expect("write scratch file");
        p
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

/// Every file under `dir`, recursively (directories left out).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read directory") {
        let p = e.expect("directory entry").path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The result of running an external tool.
#[derive(Debug)]
pub struct Outcome {
    /// Whether it exited 0.
    pub ok: bool,
    /// Its standard output and standard error, together.
    pub output: String,
}

fn run(mut cmd: Command, hint: &str) -> Outcome {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}; {hint}"));
    Outcome {
        ok: out.status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

pub mod imgtool;
pub mod site;

/// Drives the `openssl` command line.
pub mod openssl {
    use super::{run, Command, Outcome, Path};

    /// `openssl verify -x509_strict -CAfile root [-untrusted int] [-CRLfile crl -crl_check] [extra] leaf`.
    pub fn verify(
        root: &Path,
        untrusted: Option<&Path>,
        crl: Option<&Path>,
        extra: &[&str],
        leaf: &Path,
    ) -> Outcome {
        let mut cmd = Command::new("openssl");
        cmd.arg("verify")
            .arg("-x509_strict")
            .arg("-CAfile")
            .arg(root);
        if let Some(u) = untrusted {
            cmd.arg("-untrusted").arg(u);
        }
        if let Some(c) = crl {
            cmd.arg("-CRLfile").arg(c).arg("-crl_check");
        }
        cmd.args(extra).arg(leaf);
        run(cmd, "install openssl (scripts/test.sh does)")
    }

    /// `openssl ecparam -name prime256v1 -genkey -noout -out key`, then `openssl pkey -in key
    /// -pubout -out public`: a P-256 key pair made by openssl, as a device maker's tool would.
    pub fn p256_key_pair(key: &Path, public: &Path) {
        let mut genkey = Command::new("openssl");
        genkey
            .args([
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
            ])
            .arg(key);
        let out = run(genkey, "install openssl (scripts/test.sh does)");
        assert!(out.ok, "openssl ecparam: {}", out.output);
        let mut pubout = Command::new("openssl");
        pubout
            .arg("pkey")
            .arg("-in")
            .arg(key)
            .arg("-pubout")
            .arg("-out")
            .arg(public);
        let out = run(pubout, "install openssl (scripts/test.sh does)");
        assert!(out.ok, "openssl pkey: {}", out.output);
    }

    /// `openssl pkey -in key -passin env:VAR -pubout`: reads an encrypted PKCS#8 key.
    pub fn pkey_pubout(key: &Path, passphrase: &str) -> Outcome {
        let mut cmd = Command::new("openssl");
        cmd.arg("pkey")
            .arg("-in")
            .arg(key)
            .arg("-passin")
            .arg("env:TEST_KEY_PASSPHRASE")
            .arg("-pubout")
            .env("TEST_KEY_PASSPHRASE", passphrase);
        run(cmd, "install openssl (scripts/test.sh does)")
    }
}

/// Drives `openssl s_server` and `openssl s_client` for mutual TLS interop tests. Every wait has
/// a timeout: `s_server` may not close cleanly, and a hung peer must fail the test, not stall it.
pub mod openssl_tls {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use super::Outcome;

    /// How long any openssl process may take.
    pub const TIMEOUT: Duration = Duration::from_secs(20);

    /// A free port on 127.0.0.1 (bound, then released for the tool to take).
    pub fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port()
    }

    fn spawn_reader(
        mut from: impl Read + Send + 'static,
        into: Arc<Mutex<String>>,
        ready: Option<mpsc::Sender<()>>,
    ) {
        std::thread::spawn(move || {
            let mut r = BufReader::new(&mut from);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                if line.starts_with("ACCEPT") {
                    if let Some(tx) = &ready {
                        let _ = tx.send(());
                    }
                }
                into.lock().expect("output lock").push_str(&line);
                line.clear();
            }
        });
    }

    /// A running `openssl s_server` that requires a client certificate
    /// (`-Verify 1 -verify_return_error`) and answers one connection (`-naccept 1 -www`).
    pub struct SServer {
        child: Child,
        port: u16,
        output: Arc<Mutex<String>>,
    }

    impl SServer {
        /// Starts it on a free port with `cert` (and the CAs in `chain`) and `key` as its
        /// identity, and `ca` as the only root for client certificates; returns once it accepts
        /// connections.
        pub fn start(cert: &Path, chain: &Path, key: &Path, ca: &Path) -> Self {
            let port = free_port();
            let mut child = Command::new("openssl")
                .arg("s_server")
                .arg("-accept")
                .arg(format!("127.0.0.1:{port}"))
                .arg("-cert")
                .arg(cert)
                .arg("-cert_chain")
                .arg(chain)
                .arg("-key")
                .arg(key)
                .arg("-CAfile")
                .arg(ca)
                .args([
                    "-Verify",
                    "1",
                    "-verify_return_error",
                    "-naccept",
                    "1",
                    "-www",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run openssl s_server: {e}; install openssl (scripts/test.sh does)"
                    )
                });
            let output = Arc::new(Mutex::new(String::new()));
            let (tx, rx) = mpsc::channel();
            spawn_reader(
                child.stdout.take().expect("stdout"),
                Arc::clone(&output),
                Some(tx),
            );
            spawn_reader(
                child.stderr.take().expect("stderr"),
                Arc::clone(&output),
                None,
            );
            if rx.recv_timeout(TIMEOUT).is_err() {
                let _ = child.kill();
                panic!(
                    "openssl s_server did not start: {}",
                    output.lock().expect("output lock")
                );
            }
            Self {
                child,
                port,
                output,
            }
        }

        /// The port it listens on.
        pub fn port(&self) -> u16 {
            self.port
        }

        /// Waits (bounded) for it to exit after its one connection, then returns what it printed.
        pub fn finish(mut self) -> String {
            let deadline = Instant::now() + TIMEOUT;
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            // Let the reader threads drain what is left.
            std::thread::sleep(Duration::from_millis(100));
            let out = self.output.lock().expect("output lock").clone();
            out
        }
    }

    impl Drop for SServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// `openssl s_client -connect 127.0.0.1:port -CAfile ca -cert cert -cert_chain chain -key
    /// key -verify_return_error -ign_eof`, with `input` on its standard input; killed after
    /// [`TIMEOUT`].
    pub fn s_client(
        port: u16,
        ca: &Path,
        cert: &Path,
        chain: &Path,
        key: &Path,
        input: &[u8],
    ) -> Outcome {
        let mut child = Command::new("openssl")
            .arg("s_client")
            .arg("-connect")
            .arg(format!("127.0.0.1:{port}"))
            .arg("-CAfile")
            .arg(ca)
            .arg("-cert")
            .arg(cert)
            .arg("-cert_chain")
            .arg(chain)
            .arg("-key")
            .arg(key)
            .args(["-verify_return_error", "-ign_eof"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run openssl s_client: {e}; install openssl (scripts/test.sh does)")
            });
        let output = Arc::new(Mutex::new(String::new()));
        spawn_reader(
            child.stdout.take().expect("stdout"),
            Arc::clone(&output),
            None,
        );
        spawn_reader(
            child.stderr.take().expect("stderr"),
            Arc::clone(&output),
            None,
        );
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(input);
        }
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Ok(Some(s)) = child.try_wait() {
                break Some(s);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(100));
        let text = output.lock().expect("output lock").clone();
        Outcome {
            ok: status.is_some_and(|s| s.success()),
            output: text,
        }
    }
}

/// Drives pkilint's generic RFC 5280 linter.
pub mod pkilint {
    use super::{run, Command, Path};

    /// Findings at ERROR or above for the certificate at `cert` (PEM), one line each
    /// (`code (SEVERITY): message`), with every code in `allow` removed. Empty means clean.
    pub fn errors(cert: &Path, allow: &[&str]) -> Vec<String> {
        let mut cmd = Command::new("python3");
        cmd.args([
            "-m",
            "pkilint.bin.lint_pkix_cert",
            "lint",
            "-s",
            "ERROR",
            "-f",
            "TEXT",
        ])
        .arg(cert);
        let out = run(cmd, "pip install pkilint (scripts/test.sh does)");
        assert!(
            !out.output.contains("No module named"),
            "pkilint is not installed: pip install pkilint (scripts/test.sh does)\n{}",
            out.output
        );
        let findings: Vec<String> = out
            .output
            .lines()
            .map(str::trim)
            .filter(|l| l.contains(" (ERROR): ") || l.contains(" (FATAL): "))
            .map(str::to_owned)
            .collect();
        // The exit code is the number of findings: a non-zero code with none parsed means the
        // output format changed under us, which must not pass as clean.
        assert!(
            out.ok || !findings.is_empty(),
            "pkilint failed without findings we can read:\n{}",
            out.output
        );
        findings
            .into_iter()
            .filter(|l| !allow.iter().any(|a| l.starts_with(a)))
            .collect()
    }
}

/// A private SoftHSM2 token for one test: its own directory and `SOFTHSM2_CONF`. The PKCS#11
/// module reads that variable on every `C_Initialize`, so a process-wide lock is held for the
/// fixture's lifetime: tests that use SoftHSM2 run one at a time.
pub mod softhsm {
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::{Mutex, MutexGuard, PoisonError};

    static LOCK: Mutex<()> = Mutex::new(());

    /// The token label every fixture uses.
    pub const TOKEN_LABEL: &str = "trustfab-test";
    /// The user PIN.
    pub const PIN: &str = "1234";
    /// The security officer PIN.
    pub const SO_PIN: &str = "12345678";

    /// A SoftHSM2 token in a directory.
    pub struct SoftHsm2 {
        conf: PathBuf,
        _guard: MutexGuard<'static, ()>,
    }

    impl SoftHsm2 {
        /// Initialises a token under `dir` (or reuses the one there) and points
        /// `SOFTHSM2_CONF` at it.
        pub fn new(dir: &Path) -> Self {
            let guard = LOCK.lock().unwrap_or_else(PoisonError::into_inner);
            let tokens = dir.join("softhsm-tokens");
            let conf = dir.join("softhsm2.conf");
            let fresh = !tokens.exists();
            std::fs::create_dir_all(&tokens).expect("token directory");
            std::fs::write(
                &conf,
                format!(
                    "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                    tokens.display()
                ),
            )
            .expect("softhsm2.conf");
            if fresh {
                let out = Command::new("softhsm2-util")
                    .env("SOFTHSM2_CONF", &conf)
                    .args(["--init-token", "--free", "--label", TOKEN_LABEL])
                    .args(["--so-pin", SO_PIN, "--pin", PIN])
                    .output()
                    .unwrap_or_else(|e| {
                        panic!("SoftHSM2 is required: cannot run softhsm2-util ({e}); scripts/test.sh installs it")
                    });
                assert!(
                    out.status.success(),
                    "softhsm2-util --init-token failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::env::set_var("SOFTHSM2_CONF", &conf);
            Self {
                conf,
                _guard: guard,
            }
        }

        /// The configuration file (for child processes).
        pub fn conf(&self) -> &Path {
            &self.conf
        }
    }
}

/// A fresh PostgreSQL database for one test, on the server named by `TRUSTFAB_TEST_PG` (default
/// the local server), dropped when the fixture is. An unreachable server fails the test.
pub mod pg {
    use postgres::{Client, NoTls};

    /// The administrative connection URL.
    pub fn admin_url() -> String {
        std::env::var("TRUSTFAB_TEST_PG")
            .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/postgres".to_owned())
    }

    /// A database with a random name.
    pub struct FreshDatabase {
        name: String,
        url: String,
    }

    impl FreshDatabase {
        /// Creates it.
        pub fn new() -> Self {
            let admin = admin_url();
            let mut c = Client::connect(&admin, NoTls).unwrap_or_else(|e| {
                panic!("PostgreSQL at {admin} is needed by this test (TRUSTFAB_TEST_PG): {e}")
            });
            let mut random = [0u8; 8];
            getrandom::fill(&mut random).expect("random name");
            let name = format!(
                "trustfab_test_{}",
                random
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            );
            c.batch_execute(&format!("CREATE DATABASE {name}"))
                .expect("create database");
            let base = admin
                .rsplit_once('/')
                .map_or(admin.as_str(), |(b, _)| b)
                .to_owned();
            Self {
                url: format!("{base}/{name}"),
                name,
            }
        }

        /// Its connection URL.
        pub fn url(&self) -> &str {
            &self.url
        }
    }

    impl Default for FreshDatabase {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Drop for FreshDatabase {
        fn drop(&mut self) {
            if let Ok(mut c) = Client::connect(&admin_url(), NoTls) {
                c.batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .ok();
            }
        }
    }
}

/// The `trustfab` binary, run for real in a directory with a passphrase in its environment and
/// no terminal, as the command-line tests of every crate run it.
pub mod cli {
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output, Stdio};

    /// What is wrong with the `error:` lines of a command's standard error: a segment said twice
    /// (`X: X`, or a cause repeated at the end of the text before it), or an operating-system
    /// error (`(os error N)`) with nothing before it to name the file it was about. Empty when each line names the
    /// thing that was wrong once.
    pub fn message_faults(stderr: &str) -> Vec<String> {
        let mut faults = Vec::new();
        for line in stderr.lines().filter_map(|l| l.strip_prefix("error: ")) {
            let segments: Vec<&str> = line.split(": ").map(str::trim).collect();
            for i in 1..segments.len() {
                let before = segments[..i].join(": ");
                let rest = segments[i..].join(": ");
                if !rest.is_empty()
                    && (before.ends_with(&rest) || segments[..i].contains(&segments[i]))
                {
                    faults.push(format!("says {rest:?} twice"));
                    break;
                }
            }
            if segments.first().is_some_and(|s| s.contains("(os error")) {
                faults.push("is a bare OS error that names no file".into());
            }
        }
        faults
    }

    /// A binary and the passphrase its commands get through `TRUSTFAB_PASSPHRASE`.
    pub struct Trustfab {
        exe: PathBuf,
        pass: String,
    }

    impl Trustfab {
        /// `exe` is the test's `env!("CARGO_BIN_EXE_trustfab")`.
        pub fn new(exe: &str, pass: &str) -> Self {
            Self {
                exe: exe.into(),
                pass: pass.to_owned(),
            }
        }

        /// The command, ready to run in `dir`.
        pub fn command(&self, dir: &Path, args: &[&str]) -> Command {
            let mut c = Command::new(&self.exe);
            c.current_dir(dir)
                .args(args)
                .env("TRUSTFAB_PASSPHRASE", &self.pass)
                .stdin(Stdio::null());
            c
        }

        /// Runs it to completion.
        pub fn run(&self, dir: &Path, args: &[&str]) -> Output {
            self.command(dir, args).output().expect("run trustfab")
        }

        /// Runs it, asserts success, returns standard output.
        pub fn ok(&self, dir: &Path, args: &[&str]) -> String {
            let out = self.run(dir, args);
            assert!(
                out.status.success(),
                "trustfab {args:?} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }

        /// Runs it, asserts failure and that its error message is one a user can act on
        /// ([`message_faults`] finds nothing), returns standard error.
        pub fn fails(&self, dir: &Path, args: &[&str]) -> String {
            let out = self.run(dir, args);
            assert!(!out.status.success(), "trustfab {args:?} succeeded");
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            let faults = message_faults(&err);
            assert!(
                faults.is_empty(),
                "trustfab {args:?}: its error message {faults:?}:\n{err}"
            );
            err
        }

        /// The arguments of `oem wrap` for the HSM of [`Self::programming_centre`]: its
        /// certificates `hsm.pem` checked against `vendor_root`, template `t.toml`, `count` of
        /// `product`, written to `out`.
        pub fn wrap_args(vendor_root: &str, product: &str, count: u64, out: &str) -> Vec<String> {
            [
                "oem",
                "wrap",
                "--hsm",
                "hsm.pem",
                "--vendor-root",
                vendor_root,
                "--template",
                "t.toml",
                "--product",
                product,
                "--count",
                &count.to_string(),
                "--out",
                out,
            ]
            .iter()
            .map(|a| (*a).to_owned())
            .collect()
        }

        /// A product in the HSM of [`Self::programming_centre`]: `oem wrap` of `count` of
        /// `product` into `package` for it (trusting `vendor/root.pem`), then `hsm import
        /// package`, both asserted to succeed. Returns what `hsm import` printed.
        pub fn import_product(
            &self,
            dir: &Path,
            product: &str,
            count: u64,
            package: &str,
        ) -> String {
            let wrap = Self::wrap_args("vendor/root.pem", product, count, package);
            self.ok(dir, &wrap.iter().map(String::as_str).collect::<Vec<_>>());
            self.ok(dir, &["hsm", "import", package])
        }

        /// A programming centre and an OEM in `dir`, through the command line: `vendor init`,
        /// `hsm init` with `hsm_init` (its id, backend or ledger), the vendor certifying the HSM's
        /// request into `hsm.pem`, `hsm install-identity hsm.pem`, `oem init --oem-id acme
        /// --device-ca` and `oem template new --out t.toml`. Ready for `oem wrap`.
        pub fn programming_centre(&self, dir: &Path, hsm_init: &[&str]) {
            self.ok(dir, &["vendor", "init"]);
            let mut init = vec!["hsm", "init"];
            init.extend_from_slice(hsm_init);
            self.ok(dir, &init);
            self.ok(
                dir,
                &[
                    "vendor",
                    "certify-hsm",
                    "--request",
                    "hsm/request.pem",
                    "--out",
                    "hsm.pem",
                ],
            );
            self.ok(dir, &["hsm", "install-identity", "hsm.pem"]);
            self.ok(dir, &["oem", "init", "--oem-id", "acme", "--device-ca"]);
            self.ok(dir, &["oem", "template", "new", "--out", "t.toml"]);
        }
    }

    #[cfg(test)]
    mod tests {
        use super::message_faults;

        #[test]
        fn doubled_segments_and_bare_os_errors_are_faults() {
            for bad in [
                "error: peer certificate is revoked: peer certificate is revoked",
                "error: reading dir: reading dir: Is a directory (os error 21)",
                "error: opening x: failed to fill whole buffer: failed to fill whole buffer",
                "error: Is a directory (os error 21)",
                "error: checking the job: the job is closed: job j1 is closed: the job is closed",
            ] {
                assert!(!message_faults(bad).is_empty(), "{bad}");
            }
            for good in [
                "error: reading job package job.tfj: Is a directory (os error 21)",
                "error: job j1 is closed: nothing more can be issued for it",
                "warning: not an error line: not an error line",
                "",
            ] {
                assert_eq!(message_faults(good), Vec::<String>::new(), "{good}");
            }
        }
    }
}

/// The test binary itself as a child process: the kill tests re-run one of their own
/// `#[ignore]`d tests as a worker, optionally SIGKILL it after a while, and read what it printed.
pub mod child {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// Runs the ignored test `test` of this test binary with `env`, kills it with SIGKILL after
    /// `kill_after` (unless it ended first), and returns the lines it printed on stdout. The test
    /// harness may prefix the first line (`test name ... `): match lines by substring.
    pub fn run(test: &str, env: &[(&str, &str)], kill_after: Option<Duration>) -> Vec<String> {
        let mut cmd = Command::new(std::env::current_exe().expect("test binary path"));
        cmd.args([
            test,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("start the child test process");
        let stdout = child.stdout.take().expect("piped stdout");
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        });
        if let Some(d) = kill_after {
            let start = Instant::now();
            while start.elapsed() < d {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            child.kill().ok(); // SIGKILL on Unix
        }
        child.wait().expect("wait for the child");
        reader.join().expect("child output reader")
    }
}
