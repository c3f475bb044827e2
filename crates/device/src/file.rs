//! A part in a file: the image of its non-volatile memory, versioned, size-limited and
//! checksummed, written atomically (temporary file, fsync, rename, fsync of the directory).
//! The format is in `docs/devices.md`, "Device file". The decoder takes untrusted bytes: every
//! length is checked against the limits before use, and bad input gives an error, never a panic.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::digest::{digest, SHA256};
use trustfab_types::{limits as type_limits, DeviceUid, SecretKeyDer};
use zeroize::Zeroizing;

use crate::device::{DeviceKind, ReadPolicy, SlotConfig, SlotKind, WritePolicy};
use crate::limits::{BOOT_SLOT_BYTES, DEVICE_FILE_BYTES, SLOT_BYTES};
use crate::sim::mcu::{McuState, SwapKind, SwapProgress, UpdateRequest};
use crate::sim::{Content, Lifecycle, SimDevice, Slot, SlotKey, State, COUNTERS};
use crate::vendor::SiliconVendor;

/// The magic at the start of a device file.
pub const DEVICE_MAGIC: &[u8; 8] = b"TFDEVICE";
/// The magic at the start of a silicon vendor file.
pub const VENDOR_MAGIC: &[u8; 8] = b"TFVENDOR";
/// The format version this build writes; it reads every version from 1 up to it. Version 2
/// adds the secure MCU's update state (scratch area, trailers, swap status).
pub const FORMAT_VERSION: u16 = 2;
/// Most slots a device file may declare.
const MAX_SLOTS: usize = 32;
/// Most bytes of a PKCS#8 P-256 key.
const MAX_KEY_BYTES: usize = 512;

/// Why bytes are not a device (or vendor) file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Larger than the limit.
    #[error("device file is {len} bytes, the limit is {limit}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Does not start with the expected magic.
    #[error("not a {expected} file (bad magic)")]
    BadMagic {
        /// What was expected.
        expected: &'static str,
    },
    /// A version this build does not read.
    #[error("file format version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion {
        /// The version found.
        found: u16,
        /// The version supported.
        supported: u16,
    },
    /// Ends before a field.
    #[error("file is truncated at {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// A field holds a value outside its range.
    #[error("file field {field} is invalid")]
    Invalid {
        /// The field.
        field: &'static str,
    },
    /// Bytes after the end of the content.
    #[error("file has {0} bytes after its end")]
    Trailing(usize),
    /// The checksum does not match: the file was changed or damaged.
    #[error("file checksum does not match")]
    Checksum,
}

/// A device or vendor file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// The file system failed.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The content is refused.
    #[error("{path} is refused")]
    Decode {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: DecodeError,
    },
    /// A key in the part could not be serialised.
    #[error("a key could not be serialised")]
    Key,
    /// The vendor could not be restored.
    #[error(transparent)]
    Vendor(#[from] crate::vendor::VendorError),
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// Builds a file image; the buffer is zeroized when dropped since it holds keys.
struct Writer(Zeroizing<Vec<u8>>);

impl Writer {
    fn new(magic: &[u8; 8]) -> Self {
        let mut w = Self(Zeroizing::new(Vec::with_capacity(4096)));
        w.bytes(magic);
        w.u16(FORMAT_VERSION);
        w
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.bytes(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_be_bytes());
    }
    fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    /// A u16-length-prefixed field; lengths were bounded by the part's limits.
    fn var16(&mut self, b: &[u8]) {
        self.u16(u16::try_from(b.len()).unwrap_or(u16::MAX));
        self.bytes(&b[..b.len().min(usize::from(u16::MAX))]);
    }
    fn var32(&mut self, b: &[u8]) {
        self.u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
        self.bytes(b);
    }
    fn finish(mut self) -> Zeroizing<Vec<u8>> {
        let sum = digest(&SHA256, &self.0);
        self.0.extend_from_slice(sum.as_ref());
        self.0
    }
}

fn kind_code(kind: DeviceKind) -> u8 {
    match kind {
        DeviceKind::SecureElement => 1,
        DeviceKind::SecureMcu => 2,
    }
}

fn slot_kind_code(k: SlotKind) -> u8 {
    match k {
        SlotKind::PrivateKey => 1,
        SlotKind::Certificate => 2,
        SlotKind::Data => 3,
        SlotKind::Secret => 4,
    }
}

fn read_code(r: ReadPolicy) -> u8 {
    match r {
        ReadPolicy::Clear => 1,
        ReadPolicy::Never => 2,
    }
}

fn write_code(w: WritePolicy) -> u8 {
    match w {
        WritePolicy::Always => 1,
        WritePolicy::UntilLock => 2,
        WritePolicy::Never => 3,
    }
}

fn lifecycle_code(l: Lifecycle) -> u8 {
    match l {
        Lifecycle::Open => 1,
        Lifecycle::Provisioned => 2,
        Lifecycle::Locked => 3,
    }
}

/// The file image of `device`. It holds the part's private keys, as the part's own memory does:
/// it is zeroized when dropped, and [`save`] writes it readable by its owner only.
///
/// # Errors
/// When a key cannot be serialised.
pub fn encode(device: &SimDevice) -> Result<Zeroizing<Vec<u8>>, FileError> {
    let mut w = Writer::new(DEVICE_MAGIC);
    let kind = crate::device::Device::kind(device);
    w.u8(kind_code(kind));
    let uid = device.uid_label().as_bytes();
    w.u8(u8::try_from(uid.len()).unwrap_or(u8::MAX));
    w.bytes(uid);
    let akey = device
        .attestation_key()
        .secret_pkcs8()
        .map_err(|()| FileError::Key)?;
    w.var16(akey.secret_pkcs8_der());
    w.var16(device.attestation_cert_der());
    let s = device.state();
    w.bool(s.config_locked);
    w.bool(s.data_locked);
    w.u8(u8::try_from(COUNTERS).unwrap_or(u8::MAX));
    for c in s.counters {
        w.u32(c);
    }
    w.u8(u8::try_from(s.slots.len()).unwrap_or(u8::MAX));
    for slot in &s.slots {
        w.u8(slot.id);
        w.u8(slot_kind_code(slot.config.kind));
        w.u8(read_code(slot.config.read));
        w.u8(write_code(slot.config.write));
        w.bool(slot.config.lockable);
        w.bool(slot.locked);
        w.u16(slot.config.capacity);
        match &slot.content {
            Content::Empty => w.u8(0),
            Content::Data(d) => {
                w.u8(1);
                w.var16(d);
            }
            Content::Key(k) => {
                w.u8(2);
                let der = k.secret_pkcs8().map_err(|()| FileError::Key)?;
                w.var16(der.secret_pkcs8_der());
            }
        }
    }
    if let Some(m) = &s.mcu {
        w.u8(lifecycle_code(m.lifecycle));
        match &m.rot_hash {
            Some(h) => {
                w.u8(1);
                w.bytes(h);
            }
            None => w.u8(0),
        }
        w.u32(m.security_counter);
        for img in [&m.primary, &m.secondary, &m.scratch] {
            match img {
                Some(i) => {
                    w.u8(1);
                    w.var32(i);
                }
                None => w.u8(0),
            }
        }
        w.u8(match m.pending {
            None => 0,
            Some(UpdateRequest::Test) => 1,
            Some(UpdateRequest::Permanent) => 2,
        });
        w.bool(m.unconfirmed);
        match m.swap {
            None => w.u8(0),
            Some(p) => {
                w.u8(match p.kind {
                    SwapKind::Test => 1,
                    SwapKind::Permanent => 2,
                    SwapKind::Revert => 3,
                });
                w.u8(p.step);
            }
        }
    }
    Ok(w.finish())
}

// ---------------------------------------------------------------------------------------------
// Decoding

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return Err(DecodeError::Truncated { field });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }
    fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid { field }),
        }
    }
    fn var16(&mut self, limit: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = usize::from(self.u16(field)?);
        if n > limit {
            return Err(DecodeError::Invalid { field });
        }
        self.take(n, field)
    }
    fn var32(&mut self, limit: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = usize::try_from(self.u32(field)?).map_err(|_| DecodeError::Invalid { field })?;
        if n > limit {
            return Err(DecodeError::Invalid { field });
        }
        self.take(n, field)
    }
}

/// Checks size, magic, version and checksum; returns the body after the header and the version.
fn open<'a>(
    bytes: &'a [u8],
    magic: &[u8; 8],
    what: &'static str,
) -> Result<(Reader<'a>, u16), DecodeError> {
    if bytes.len() > DEVICE_FILE_BYTES {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            limit: DEVICE_FILE_BYTES,
        });
    }
    let mut r = Reader { buf: bytes };
    if r.take(8, "magic")
        .map_err(|_| DecodeError::BadMagic { expected: what })?
        != magic
    {
        return Err(DecodeError::BadMagic { expected: what });
    }
    let version = r.u16("version")?;
    if version == 0 || version > FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let Some(body_len) = bytes.len().checked_sub(32) else {
        return Err(DecodeError::Truncated { field: "checksum" });
    };
    let (content, sum) = bytes.split_at(body_len);
    if body_len < 10 {
        return Err(DecodeError::Truncated { field: "checksum" });
    }
    if digest(&SHA256, content).as_ref() != sum {
        return Err(DecodeError::Checksum);
    }
    r.buf = content
        .get(10..)
        .ok_or(DecodeError::Truncated { field: "header" })?;
    Ok((r, version))
}

fn decode_key(der: &[u8], field: &'static str) -> Result<SlotKey, DecodeError> {
    SlotKey::from_pkcs8(&SecretKeyDer::new(der.to_vec()))
        .map_err(|()| DecodeError::Invalid { field })
}

/// A part from its file image.
///
/// # Errors
/// A [`DecodeError`] naming the first field refused.
pub fn decode(bytes: &[u8]) -> Result<SimDevice, DecodeError> {
    let (mut r, version) = open(bytes, DEVICE_MAGIC, "device")?;
    let kind = match r.u8("kind")? {
        1 => DeviceKind::SecureElement,
        2 => DeviceKind::SecureMcu,
        _ => return Err(DecodeError::Invalid { field: "kind" }),
    };
    let uid_len = usize::from(r.u8("uid")?);
    let uid = DeviceUid::new(r.take(uid_len, "uid")?)
        .map_err(|_| DecodeError::Invalid { field: "uid" })?;
    let akey = decode_key(
        r.var16(MAX_KEY_BYTES, "attestation key")?,
        "attestation key",
    )?;
    let acert = r
        .var16(type_limits::CERTIFICATE_BYTES, "attestation certificate")?
        .to_vec();
    let config_locked = r.bool("config lock")?;
    let data_locked = r.bool("data lock")?;
    if data_locked && !config_locked {
        return Err(DecodeError::Invalid { field: "data lock" });
    }
    if usize::from(r.u8("counters")?) != COUNTERS {
        return Err(DecodeError::Invalid { field: "counters" });
    }
    let mut counters = [0u32; COUNTERS];
    for c in &mut counters {
        *c = r.u32("counter")?;
        if *c > crate::sim::COUNTER_LIMIT {
            return Err(DecodeError::Invalid { field: "counter" });
        }
    }
    let n = usize::from(r.u8("slot count")?);
    if n > MAX_SLOTS {
        return Err(DecodeError::Invalid {
            field: "slot count",
        });
    }
    let mut slots: Vec<Slot> = Vec::with_capacity(n);
    for _ in 0..n {
        let id = r.u8("slot id")?;
        if slots.last().is_some_and(|s| s.id >= id) {
            return Err(DecodeError::Invalid { field: "slot id" });
        }
        let kind = match r.u8("slot kind")? {
            1 => SlotKind::PrivateKey,
            2 => SlotKind::Certificate,
            3 => SlotKind::Data,
            4 => SlotKind::Secret,
            _ => return Err(DecodeError::Invalid { field: "slot kind" }),
        };
        let read = match r.u8("slot read policy")? {
            1 => ReadPolicy::Clear,
            2 => ReadPolicy::Never,
            _ => {
                return Err(DecodeError::Invalid {
                    field: "slot read policy",
                })
            }
        };
        // A private key or a secret is never readable, whatever a file says.
        if read == ReadPolicy::Clear && matches!(kind, SlotKind::PrivateKey | SlotKind::Secret) {
            return Err(DecodeError::Invalid {
                field: "slot read policy",
            });
        }
        let write = match r.u8("slot write policy")? {
            1 => WritePolicy::Always,
            2 => WritePolicy::UntilLock,
            3 => WritePolicy::Never,
            _ => {
                return Err(DecodeError::Invalid {
                    field: "slot write policy",
                })
            }
        };
        let lockable = r.bool("slot lockable")?;
        let locked = r.bool("slot locked")?;
        if locked && !lockable {
            return Err(DecodeError::Invalid {
                field: "slot locked",
            });
        }
        let capacity = r.u16("slot capacity")?;
        if capacity > SLOT_BYTES {
            return Err(DecodeError::Invalid {
                field: "slot capacity",
            });
        }
        let content = match (r.u8("slot content")?, kind) {
            (0, _) => Content::Empty,
            (1, SlotKind::Certificate | SlotKind::Data | SlotKind::Secret) => {
                Content::Data(Arc::from(r.var16(usize::from(capacity), "slot data")?))
            }
            (2, SlotKind::PrivateKey) => Content::Key(Arc::new(decode_key(
                r.var16(MAX_KEY_BYTES, "slot key")?,
                "slot key",
            )?)),
            _ => {
                return Err(DecodeError::Invalid {
                    field: "slot content",
                })
            }
        };
        slots.push(Slot {
            id,
            config: SlotConfig {
                kind,
                read,
                write,
                lockable,
                capacity,
            },
            locked,
            content,
        });
    }
    let mcu = match kind {
        DeviceKind::SecureElement => None,
        DeviceKind::SecureMcu => {
            let lifecycle = match r.u8("lifecycle")? {
                1 => Lifecycle::Open,
                2 => Lifecycle::Provisioned,
                3 => Lifecycle::Locked,
                _ => return Err(DecodeError::Invalid { field: "lifecycle" }),
            };
            let expected = match (config_locked, data_locked) {
                (false, _) => Lifecycle::Open,
                (true, false) => Lifecycle::Provisioned,
                (true, true) => Lifecycle::Locked,
            };
            if lifecycle != expected {
                return Err(DecodeError::Invalid { field: "lifecycle" });
            }
            let rot_hash = if r.bool("root of trust hash")? {
                Some(r.array::<32>("root of trust hash")?)
            } else {
                None
            };
            if lifecycle == Lifecycle::Locked && rot_hash.is_none() {
                return Err(DecodeError::Invalid {
                    field: "root of trust hash",
                });
            }
            let security_counter = r.u32("security counter")?;
            let mut images = [None, None];
            for img in &mut images {
                if r.bool("boot slot")? {
                    *img = Some(Arc::from(r.var32(BOOT_SLOT_BYTES, "boot slot")?));
                }
            }
            let [primary, secondary] = images;
            let mut mcu = McuState {
                lifecycle,
                rot_hash,
                security_counter,
                primary,
                secondary,
                ..McuState::default()
            };
            if version >= 2 {
                if r.bool("scratch area")? {
                    mcu.scratch = Some(Arc::from(r.var32(BOOT_SLOT_BYTES, "scratch area")?));
                }
                mcu.pending = match r.u8("update request")? {
                    0 => None,
                    1 => Some(UpdateRequest::Test),
                    2 => Some(UpdateRequest::Permanent),
                    _ => {
                        return Err(DecodeError::Invalid {
                            field: "update request",
                        })
                    }
                };
                mcu.unconfirmed = r.bool("image confirmation")?;
                let kind = match r.u8("swap status")? {
                    0 => None,
                    1 => Some(SwapKind::Test),
                    2 => Some(SwapKind::Permanent),
                    3 => Some(SwapKind::Revert),
                    _ => {
                        return Err(DecodeError::Invalid {
                            field: "swap status",
                        })
                    }
                };
                if let Some(kind) = kind {
                    let step = r.u8("swap step")?;
                    if !(1..=2).contains(&step) {
                        return Err(DecodeError::Invalid { field: "swap step" });
                    }
                    mcu.swap = Some(SwapProgress { kind, step });
                }
            }
            Some(mcu)
        }
    };
    if !r.buf.is_empty() {
        return Err(DecodeError::Trailing(r.buf.len()));
    }
    Ok(SimDevice::from_parts(
        kind,
        uid,
        akey,
        acert,
        State {
            slots,
            config_locked,
            data_locked,
            counters,
            mcu,
        },
    ))
}

// ---------------------------------------------------------------------------------------------
// Vendor file

/// The file image of a silicon vendor: its CA key, root certificate and UID state.
///
/// # Errors
/// When the key cannot be serialised.
pub fn encode_vendor(vendor: &SiliconVendor) -> Result<Zeroizing<Vec<u8>>, FileError> {
    let mut w = Writer::new(VENDOR_MAGIC);
    let (key, uid_key, lot) = vendor.secret_parts()?;
    w.var16(key.secret_pkcs8_der());
    w.var16(vendor.root_der());
    w.bytes(uid_key);
    w.bytes(lot);
    w.u64(vendor.made());
    Ok(w.finish())
}

/// A silicon vendor from its file image.
///
/// # Errors
/// A [`DecodeError`] wrapped in [`FileError::Decode`], or the vendor refusing its parts.
pub fn decode_vendor(bytes: &[u8]) -> Result<SiliconVendor, FileError> {
    let inner = |bytes: &[u8]| -> Result<_, DecodeError> {
        let (mut r, _) = open(bytes, VENDOR_MAGIC, "silicon vendor")?;
        let key = SecretKeyDer::new(r.var16(MAX_KEY_BYTES, "vendor key")?.to_vec());
        let root = r
            .var16(type_limits::CERTIFICATE_BYTES, "vendor root")?
            .to_vec();
        let uid_key = r.array::<16>("uid key")?;
        let lot = r.array::<4>("lot")?;
        let next = r.u64("next")?;
        if !r.buf.is_empty() {
            return Err(DecodeError::Trailing(r.buf.len()));
        }
        Ok((key, root, uid_key, lot, next))
    };
    let (key, root, uid_key, lot, next) = inner(bytes).map_err(|source| FileError::Decode {
        path: PathBuf::new(),
        source,
    })?;
    Ok(SiliconVendor::restore(&key, root, uid_key, lot, next)?)
}

// ---------------------------------------------------------------------------------------------
// Files

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, created
/// owner-only, written and fsynced, renamed over `path`, then the directory fsynced. A crash
/// leaves either the old file or the new one.
///
/// # Errors
/// When any step fails; the temporary file is then removed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let io = |action: &'static str| {
        move |source| FileError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io("naming")(io::Error::from(io::ErrorKind::InvalidInput)))?;
    let mut suffix = [0u8; 8];
    aws_lc_rs::rand::fill(&mut suffix)
        .map_err(|_| io("naming")(io::Error::other("random source failed")))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        hex::encode(suffix)
    ));
    let result = (|| {
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let mut f = opts
            .open(&tmp)
            .map_err(io("creating a temporary file for"))?;
        f.write_all(bytes).map_err(io("writing"))?;
        f.sync_all().map_err(io("syncing"))?;
        drop(f);
        fs::rename(&tmp, path).map_err(io("renaming over"))?;
        #[cfg(unix)]
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing the directory of"))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads at most [`DEVICE_FILE_BYTES`] from `path`.
fn read_limited(path: &Path) -> Result<Zeroizing<Vec<u8>>, FileError> {
    let io = |action: &'static str| {
        move |source| FileError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    };
    let f = File::open(path).map_err(io("opening"))?;
    let mut buf = Zeroizing::new(Vec::new());
    let limit = u64::try_from(DEVICE_FILE_BYTES).unwrap_or(u64::MAX);
    f.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(io("reading"))?;
    if buf.len() > DEVICE_FILE_BYTES {
        return Err(FileError::Decode {
            path: path.to_owned(),
            source: DecodeError::TooLarge {
                len: buf.len(),
                limit: DEVICE_FILE_BYTES,
            },
        });
    }
    Ok(buf)
}

/// Saves a part to `path`, atomically.
///
/// # Errors
/// When a key cannot be serialised or the file cannot be written.
pub fn save(device: &SimDevice, path: &Path) -> Result<(), FileError> {
    write_atomic(path, &encode(device)?)
}

/// Loads a part from `path`.
///
/// # Errors
/// When the file cannot be read or is refused.
pub fn load(path: &Path) -> Result<SimDevice, FileError> {
    let bytes = read_limited(path)?;
    decode(&bytes).map_err(|source| FileError::Decode {
        path: path.to_owned(),
        source,
    })
}

/// Saves a silicon vendor to `path`, atomically and owner-only.
///
/// # Errors
/// When the key cannot be serialised or the file cannot be written.
pub fn save_vendor(vendor: &SiliconVendor, path: &Path) -> Result<(), FileError> {
    write_atomic(path, &encode_vendor(vendor)?)
}

/// Loads a silicon vendor from `path`.
///
/// # Errors
/// When the file cannot be read or is refused.
pub fn load_vendor(path: &Path) -> Result<SiliconVendor, FileError> {
    let bytes = read_limited(path)?;
    decode_vendor(&bytes).map_err(|e| match e {
        FileError::Decode { source, .. } => FileError::Decode {
            path: path.to_owned(),
            source,
        },
        other => other,
    })
}
