//! The sealed store file: a header in the clear (authenticated), then the store body encrypted
//! with AES-256-GCM under a key from the passphrase (Argon2id). Written atomically.
//!
//! ```text
//! magic "TFSOFTTK" | version u16 | argon2 m_kib u32 | t u32 | p u32 | salt [16] | check [32]
//! | nonce [12] | body_len u32 | AES-256-GCM(body) with the tag appended      (integers big-endian)
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::Path;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use subtle::ConstantTimeEq as _;
use trustfab_token::Error;
use trustfab_types::Passphrase;
use zeroize::Zeroizing;

/// The store format version this build writes and reads.
pub const STORE_VERSION: u16 = 1;
/// The largest store file, in bytes.
pub const STORE_MAX: usize = 16 * 1024 * 1024;
const MAGIC: &[u8; 8] = b"TFSOFTTK";
const HEADER_LEN: usize = 8 + 2 + 12 + 16 + 32 + 12 + 4;
const CHECK_LABEL: &[u8] = b"trustfab-soft-token passphrase check v1";

/// Argon2id cost. The default is RFC 9106's second recommended option (m = 64 MiB, t = 3, p = 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Argon2Cost {
    memory_kib: u32,
    iterations: u32,
    lanes: u32,
}

impl Default for Argon2Cost {
    fn default() -> Self {
        Self {
            memory_kib: 64 * 1024,
            iterations: 3,
            lanes: 4,
        }
    }
}

impl Argon2Cost {
    /// A cost within the bounds every store accepts: memory 8 MiB to 1 GiB, 1 to 16 iterations,
    /// 1 to 16 lanes. The same bounds are checked when a file is read, so a forged header cannot
    /// make an open run for hours.
    ///
    /// # Errors
    /// [`Error::BadSpec`] outside the bounds.
    pub fn new(memory_kib: u32, iterations: u32, lanes: u32) -> Result<Self, Error> {
        if !(8 * 1024..=1024 * 1024).contains(&memory_kib)
            || !(1..=16).contains(&iterations)
            || !(1..=16).contains(&lanes)
        {
            return Err(Error::BadSpec("Argon2id cost out of bounds"));
        }
        Ok(Self {
            memory_kib,
            iterations,
            lanes,
        })
    }
}

/// The keys derived from the passphrase for one store: the AEAD key and the check value.
pub(crate) struct Sealing {
    key: LessSafeKey,
    cost: Argon2Cost,
    salt: [u8; 16],
    check: [u8; 32],
}

impl Sealing {
    fn derive(passphrase: &Passphrase, cost: Argon2Cost, salt: [u8; 16]) -> Result<Self, Error> {
        let params = argon2::Params::new(cost.memory_kib, cost.iterations, cost.lanes, Some(64))
            .map_err(|_| Error::BadSpec("Argon2id parameters"))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; 64]);
        argon
            .hash_password_into(passphrase.expose_secret(), &salt, out.as_mut())
            .map_err(|_| Error::Crypto("Argon2id"))?;
        let key =
            UnboundKey::new(&AES_256_GCM, &out[..32]).map_err(|_| Error::Crypto("AEAD key"))?;
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(CHECK_LABEL);
        ctx.update(&out[32..]);
        let mut check = [0u8; 32];
        check.copy_from_slice(ctx.finish().as_ref());
        Ok(Self {
            key: LessSafeKey::new(key),
            cost,
            salt,
            check,
        })
    }

    /// Fresh sealing keys for a new store.
    pub(crate) fn new(passphrase: &Passphrase, cost: Argon2Cost) -> Result<Self, Error> {
        let mut salt = [0u8; 16];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| Error::Crypto("random salt"))?;
        Self::derive(passphrase, cost, salt)
    }

    fn header(&self, nonce: &[u8; 12], body_len: usize) -> Result<Vec<u8>, Error> {
        let mut h = Vec::with_capacity(HEADER_LEN);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&STORE_VERSION.to_be_bytes());
        h.extend_from_slice(&self.cost.memory_kib.to_be_bytes());
        h.extend_from_slice(&self.cost.iterations.to_be_bytes());
        h.extend_from_slice(&self.cost.lanes.to_be_bytes());
        h.extend_from_slice(&self.salt);
        h.extend_from_slice(&self.check);
        h.extend_from_slice(nonce);
        let len = u32::try_from(body_len).map_err(|_| Error::TooLarge {
            what: "token store",
            len: body_len,
            limit: STORE_MAX,
        })?;
        h.extend_from_slice(&len.to_be_bytes());
        Ok(h)
    }

    /// Seals `body` and replaces the file at `path` atomically.
    pub(crate) fn write(&self, path: &Path, body: &[u8]) -> Result<(), Error> {
        let mut nonce = [0u8; 12];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| Error::Crypto("random nonce"))?;
        let sealed_len = body.len() + AES_256_GCM.tag_len();
        let header = self.header(&nonce, sealed_len)?;
        if header.len() + sealed_len > STORE_MAX {
            return Err(Error::TooLarge {
                what: "token store",
                len: header.len() + sealed_len,
                limit: STORE_MAX,
            });
        }
        let mut out = Zeroizing::new(Vec::with_capacity(header.len() + sealed_len));
        out.extend_from_slice(&header);
        out.extend_from_slice(body);
        let (head, rest) = out.split_at_mut(header.len());
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&*head),
                rest,
            )
            .map_err(|_| Error::Crypto("AEAD seal"))?;
        out.extend_from_slice(tag.as_ref());
        write_atomic(path, &out)
    }

    /// Reads and opens the store at `path`; returns the sealing keys (for later writes) and the
    /// plaintext body.
    pub(crate) fn read(
        path: &Path,
        passphrase: &Passphrase,
    ) -> Result<(Self, Zeroizing<Vec<u8>>), Error> {
        let (mut data, cost, salt) = read_sealed(path)?;
        let sealing = Self::derive(passphrase, cost, salt)?;
        let body = sealing.open(path, &mut data)?;
        Ok((sealing, body))
    }

    /// Reads the store at `path` again with these keys, without deriving them again: what
    /// another process sealed since. A file sealed under another salt or cost is not this store.
    pub(crate) fn reread(&self, path: &Path) -> Result<Zeroizing<Vec<u8>>, Error> {
        let (mut data, cost, salt) = read_sealed(path)?;
        if cost != self.cost || salt != self.salt {
            return Err(Error::StoreTampered {
                path: path.display().to_string(),
            });
        }
        self.open(path, &mut data)
    }

    /// Checks the passphrase check value and opens the body of a file `read_sealed` returned.
    fn open(&self, path: &Path, data: &mut [u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        let check = data.get(38..70).ok_or(Error::StoreFormat {
            path: path.display().to_string(),
            reason: "truncated",
        })?;
        if !bool::from(self.check.ct_eq(check)) {
            return Err(Error::WrongCredential);
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&data[70..82]);
        let (head, rest) = data.split_at_mut(HEADER_LEN);
        let plain_len = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(&*head), rest)
            .map_err(|_| Error::StoreTampered {
                path: path.display().to_string(),
            })?
            .len();
        Ok(Zeroizing::new(rest[..plain_len].to_vec()))
    }
}

/// A store file's bytes, its Argon2id cost and its salt.
type SealedFile = (Zeroizing<Vec<u8>>, Argon2Cost, [u8; 16]);

/// The store file's bytes, size-limited, with its header checked: magic, version, Argon2id cost
/// within bounds, lengths.
fn read_sealed(path: &Path) -> Result<SealedFile, Error> {
    let shown = path.display().to_string();
    let io = |action, source| Error::Io {
        action,
        path: shown.clone(),
        source,
    };
    let format = |reason| Error::StoreFormat {
        path: shown.clone(),
        reason,
    };
    let file = File::open(path).map_err(|e| io("opening", e))?;
    let len = file.metadata().map_err(|e| io("reading", e))?.len();
    if len > STORE_MAX as u64 {
        return Err(Error::TooLarge {
            what: "token store",
            len: usize::try_from(len).unwrap_or(usize::MAX),
            limit: STORE_MAX,
        });
    }
    let mut data = Zeroizing::new(Vec::new());
    file.take(STORE_MAX as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|e| io("reading", e))?;
    if data.len() < 10 || &data[..8] != MAGIC {
        return Err(format("bad magic"));
    }
    let version = u16::from_be_bytes([data[8], data[9]]);
    if version != STORE_VERSION {
        return Err(Error::StoreVersion {
            path: shown,
            found: version,
            supported: STORE_VERSION,
        });
    }
    if data.len() < HEADER_LEN + AES_256_GCM.tag_len() {
        return Err(format("truncated"));
    }
    let be32 = |at: usize| u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
    let cost = Argon2Cost::new(be32(10), be32(14), be32(18))
        .map_err(|_| format("Argon2id parameters out of bounds"))?;
    let mut salt = [0u8; 16];
    salt.copy_from_slice(&data[22..38]);
    let body_len = usize::try_from(be32(82)).unwrap_or(usize::MAX);
    if body_len != data.len() - HEADER_LEN {
        return Err(format("length field does not match the file"));
    }
    Ok((data, cost, salt))
}

/// Writes `data` to a temporary file next to `path`, syncs it, renames it over `path` and syncs
/// the directory. The file is readable by its owner only.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), Error> {
    let shown = path.display().to_string();
    let io = |action, source| Error::Io {
        action,
        path: shown.clone(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io("naming", std::io::Error::other("no file name")))?;
    let mut suffix = [0u8; 8];
    SystemRandom::new()
        .fill(&mut suffix)
        .map_err(|_| Error::Crypto("random name"))?;
    let tmp = dir.join(format!(
        ".{}.{:016x}.tmp",
        name.to_string_lossy(),
        u64::from_be_bytes(suffix)
    ));
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let result = (|| {
        let mut f = opts
            .open(&tmp)
            .map_err(|e| io("creating a temporary file for", e))?;
        f.write_all(data).map_err(|e| io("writing", e))?;
        f.sync_all().map_err(|e| io("syncing", e))?;
        fs::rename(&tmp, path).map_err(|e| io("replacing", e))?;
        #[cfg(unix)]
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("syncing the directory of", e))?;
        Ok(())
    })();
    if result.is_err() {
        // Best effort: the temporary file is garbage either way and holds only sealed bytes.
        let _ = fs::remove_file(&tmp);
    }
    result
}
