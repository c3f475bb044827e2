//! A private SoftHSM2 token for one test (or bench): its own directory, its own SOFTHSM2_CONF,
//! initialised with `softhsm2-util --init-token --free`. Shared by the tests and the bench (the
//! bench includes this file with `#[path]`). SoftHSM2 missing is a loud failure, never a skip.
//!
//! The module reads SOFTHSM2_CONF on every C_Initialize and is global to the process, so a
//! [`SoftHsm`] holds a process-wide lock for as long as it lives: users run one at a time.

use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tempfile::TempDir;
use trustfab_token_pkcs11::{module_path, Pkcs11Config};
use trustfab_types::Passphrase;

/// The token label, user PIN and SO PIN of every test token.
pub(crate) const TOKEN_LABEL: &str = "trustfab-test";
pub(crate) const PIN: &str = "1234";
const SO_PIN: &str = "12345678";

static MODULE_LOCK: Mutex<()> = Mutex::new(());

/// A fresh SoftHSM2 token; the module is pointed at it while this value lives.
pub(crate) struct SoftHsm {
    pub(crate) dir: TempDir,
    _guard: MutexGuard<'static, ()>,
}

impl SoftHsm {
    /// Makes the token; panics (loudly) when SoftHSM2 is not installed.
    pub(crate) fn new() -> Self {
        let guard = MODULE_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        let module = module_path().unwrap_or_else(|e| {
            panic!("SoftHSM2 is required and was not found ({e}); scripts/test.sh installs it")
        });
        assert!(
            module.is_file(),
            "PKCS#11 module {} does not exist",
            module.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        init_token(&conf);
        std::env::set_var("SOFTHSM2_CONF", &conf);
        Self { dir, _guard: guard }
    }

    /// The configuration to open the token with `pin` and at most `sessions` sessions.
    pub(crate) fn config(&self, pin: &str, sessions: usize) -> Pkcs11Config {
        Pkcs11Config {
            module: module_path().unwrap(),
            token_label: TOKEN_LABEL.into(),
            pin: Passphrase::new(pin.into()).unwrap(),
            sessions,
        }
    }
}

fn init_token(conf: &Path) {
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", conf)
        .args(["--init-token", "--free", "--label", TOKEN_LABEL])
        .args(["--so-pin", SO_PIN, "--pin", PIN])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "SoftHSM2 is required: cannot run softhsm2-util ({e}); scripts/test.sh installs it"
            )
        });
    assert!(
        out.status.success(),
        "softhsm2-util --init-token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
