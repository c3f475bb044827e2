//! The file discipline of the OEM's CA directory and of every output the binary writes: reads
//! with a size limit, atomic writes (temp file, fsync, rename), secret files created with mode
//! 0600, and new outputs that never replace an existing file, even one made by a racing writer.

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
///
/// # Errors
/// [`Error::Io`] naming `path`, or [`Error::TooLarge`].
pub fn read_limited(path: &Path, limit: usize) -> Result<Vec<u8>, Error> {
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
///
/// # Errors
/// As [`read_limited`], or [`Error::NotText`].
pub fn read_text(path: &Path, limit: usize) -> Result<String, Error> {
    String::from_utf8(read_limited(path, limit)?).map_err(|_| Error::NotText {
        path: path.to_owned(),
    })
}

/// Writes `data` to `path` atomically: a reader sees the old file or the new one, never half.
/// `secret` files are created with mode 0600.
///
/// # Errors
/// [`Error::Io`] naming `path`.
pub fn write_atomic(path: &Path, data: &[u8], secret: bool) -> Result<(), Error> {
    write_via_temp(path, data, secret, false)
}

/// Writes `data` to `path` through a synced temporary file in the same directory; with
/// `new_only`, the temporary is linked to `path` (which fails if anything exists there, however
/// recently made) instead of renamed over it.
fn write_via_temp(path: &Path, data: &[u8], secret: bool, new_only: bool) -> Result<(), Error> {
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
        if new_only {
            fs::hard_link(&tmp, path)?;
            fs::remove_file(&tmp)?;
        } else {
            fs::rename(&tmp, path)?;
        }
        if let Ok(d) = fs::File::open(dir) {
            // Make the rename itself durable.
            d.sync_all().ok();
        }
        Ok(())
    };
    match write() {
        Ok(()) => Ok(()),
        Err(e) => {
            fs::remove_file(&tmp).ok();
            if new_only && e.kind() == std::io::ErrorKind::AlreadyExists {
                return Err(Error::Exists {
                    path: path.to_owned(),
                });
            }
            Err(io("writing", path)(e))
        }
    }
}

/// Writes a new file, refusing to overwrite an existing one: the check and the write are one
/// link, so a file made between them is not replaced either.
///
/// # Errors
/// [`Error::Exists`] when `path` exists, [`Error::Io`] naming `path`.
pub fn write_new(path: &Path, data: &[u8], secret: bool) -> Result<(), Error> {
    if path.exists() {
        return Err(Error::Exists {
            path: path.to_owned(),
        });
    }
    write_via_temp(path, data, secret, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_output_never_replaces_a_file_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.bin");
        write_new(&p, b"first", false).unwrap();
        match write_new(&p, b"second", false) {
            Err(Error::Exists { path }) => assert_eq!(path, p),
            other => panic!("{other:?}"),
        }
        // The linked write refuses too when the file appears after the existence check.
        match write_via_temp(&p, b"third", false, true) {
            Err(Error::Exists { .. }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(fs::read(&p).unwrap(), b"first");
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.bin")]);
    }

    #[test]
    fn a_replacing_write_is_whole_and_a_secret_is_private() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("key");
        write_atomic(&p, b"old", true).unwrap();
        write_atomic(&p, b"new", true).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    #[test]
    fn reads_are_limited_and_text_is_checked() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        fs::write(&p, [0xff, 0xfe, 0xfd]).unwrap();
        assert!(matches!(
            read_limited(&p, 2),
            Err(Error::TooLarge { limit: 2, .. })
        ));
        assert_eq!(read_limited(&p, 3).unwrap().len(), 3);
        assert!(matches!(read_text(&p, 3), Err(Error::NotText { .. })));
        assert!(matches!(
            read_limited(&d.path().join("none"), 3),
            Err(Error::Io { .. })
        ));
    }
}
