//! File helpers of the binary: the same discipline as the OEM's CA directory
//! ([`trustfab_oem::files`]: reads with a size limit, atomic writes, secret files mode 0600, new
//! outputs that never replace a file), with errors as `anyhow` for the commands.

use std::path::Path;

use anyhow::Result;
use trustfab_oem::files;

/// Reads a whole file, refusing one larger than `limit` bytes; an error names the file.
pub(crate) fn read_limited(path: &Path, limit: usize) -> Result<Vec<u8>> {
    Ok(files::read_limited(path, limit)?)
}

/// Reads a UTF-8 text file with a size limit.
pub(crate) fn read_text(path: &Path, limit: usize) -> Result<String> {
    Ok(files::read_text(path, limit)?)
}

/// Writes `data` to `path` atomically; `secret` files are created with mode 0600.
pub(crate) fn write_atomic(path: &Path, data: &[u8], secret: bool) -> Result<()> {
    Ok(files::write_atomic(path, data, secret)?)
}

/// Writes a new file, refusing to overwrite an existing one.
pub(crate) fn write_new(path: &Path, data: &[u8], secret: bool) -> Result<()> {
    Ok(files::write_new(path, data, secret)?)
}
