//! File helpers: reads with a size limit, atomic writes (temp file, fsync, rename), and secret
//! files created with mode 0600.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Reads a whole file, refusing one larger than `limit` bytes.
pub(crate) fn read_limited(path: &Path, limit: usize) -> Result<Vec<u8>> {
    let f = fs::File::open(path)?;
    let mut buf = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    f.take(cap).read_to_end(&mut buf)?;
    if buf.len() > limit {
        bail!("{} is larger than {limit} bytes", path.display());
    }
    Ok(buf)
}

/// Reads a text file with a size limit.
pub(crate) fn read_text(path: &Path, limit: usize) -> Result<String> {
    let bytes = read_limited(path, limit).with_context(|| format!("reading {}", path.display()))?;
    String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8 text", path.display()))
}

/// Writes `data` to `path` atomically: a reader sees the old file or the new one, never half.
/// `secret` files are created with mode 0600.
pub(crate) fn write_atomic(path: &Path, data: &[u8], secret: bool) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    let write = || -> Result<()> {
        let mut f = opts
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
        if let Ok(d) = fs::File::open(dir) {
            // Make the rename itself durable.
            d.sync_all().ok();
        }
        Ok(())
    };
    let r = write();
    if r.is_err() {
        fs::remove_file(&tmp).ok();
    }
    r.with_context(|| format!("writing {}", path.display()))
}

/// Writes a new file, refusing to overwrite an existing one.
pub(crate) fn write_new(path: &Path, data: &[u8], secret: bool) -> Result<()> {
    if path.exists() {
        bail!(
            "{} exists already; refusing to overwrite it",
            path.display()
        );
    }
    write_atomic(path, data, secret)
}
