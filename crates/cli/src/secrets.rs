//! Where passphrases come from: an environment variable, a file, or a prompt on the terminal.
//! Never from the command line, where `ps` and shell history would show them.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use trustfab_types::{limits, Passphrase};
use zeroize::Zeroizing;

/// The environment variable read when no file is given.
pub(crate) const PASSPHRASE_ENV: &str = "TRUSTFAB_PASSPHRASE";

/// How a command finds the passphrase of its key files.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct PassphraseArgs {
    /// Read the passphrase from this file (its first line; keep it mode 0600).
    #[arg(long, value_name = "FILE")]
    pub(crate) passphrase_file: Option<PathBuf>,
}

impl PassphraseArgs {
    /// The passphrase: from --passphrase-file, else $TRUSTFAB_PASSPHRASE, else a prompt.
    /// `confirm` asks twice at the prompt (for a new key).
    pub(crate) fn get(&self, what: &str, confirm: bool) -> Result<Passphrase> {
        if let Some(path) = &self.passphrase_file {
            let bytes = crate::files::read_limited(path, limits::PASSPHRASE_BYTES + 2)
                .with_context(|| format!("reading passphrase file {}", path.display()))?;
            let text =
                Zeroizing::new(String::from_utf8(bytes).context("passphrase file is not UTF-8")?);
            let first = text.lines().next().unwrap_or_default().to_owned();
            return Passphrase::new(first).map_err(anyhow::Error::msg);
        }
        if let Ok(v) = std::env::var(PASSPHRASE_ENV) {
            return Passphrase::new(v).map_err(|e| anyhow::anyhow!("${PASSPHRASE_ENV}: {e}"));
        }
        if !std::io::stdin().is_terminal() {
            bail!("no passphrase for {what}: set ${PASSPHRASE_ENV} or give --passphrase-file");
        }
        let first = Zeroizing::new(rpassword::prompt_password(format!(
            "passphrase for {what}: "
        ))?);
        if confirm {
            let again = Zeroizing::new(rpassword::prompt_password("again: ")?);
            if *first != *again {
                bail!("the two passphrases differ");
            }
        }
        Passphrase::new(first.to_string()).map_err(anyhow::Error::msg)
    }
}
