//! The CA directory's file discipline: reads with a size limit, atomic writes (temp file,
//! fsync, rename), secret files created with mode 0600, outputs never overwritten.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;

use crate::Error;

fn io<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> Error + 'p {
    move |source| Error::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Reads a whole file, refusing one larger than `limit` bytes.
pub(crate) fn read_limited(path: &Path, limit: usize) -> Result<Vec<u8>, Error> {
    let f = fs::File::open(path).map_err(io("reading", path))?;
    let mut buf = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    f.take(cap)
        .read_to_end(&mut buf)
        .map_err(io("reading", path))?;
    if buf.len() > limit {
        return Err(Error::TooLarge {
            path: path.to_owned(),
            limit,
        });
    }
    Ok(buf)
}

/// Reads a text file with a size limit.
pub(crate) fn read_text(path: &Path, limit: usize) -> Result<String, Error> {
    String::from_utf8(read_limited(path, limit)?).map_err(|_| Error::NotText {
        path: path.to_owned(),
    })
}

/// Writes `data` to `path` atomically: a reader sees the old file or the new one, never half.
/// `secret` files are created with mode 0600.
pub(crate) fn write_atomic(path: &Path, data: &[u8], secret: bool) -> Result<(), Error> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| Error::Io {
        what: "writing",
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"),
    })?;
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
    let write = || -> std::io::Result<()> {
        let mut f = opts.open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
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
    r.map_err(io("writing", path))
}

/// Writes a new file, refusing to overwrite an existing one.
pub(crate) fn write_new(path: &Path, data: &[u8], secret: bool) -> Result<(), Error> {
    if path.exists() {
        return Err(Error::Exists {
            path: path.to_owned(),
        });
    }
    write_atomic(path, data, secret)
}
