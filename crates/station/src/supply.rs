//! Where the parts come from and go back to: the tray feeding the sockets. An in-memory fleet,
//! parts made on demand (benchmarks: nothing kept after provisioning), or a directory of device
//! files that survives the station being killed.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use trustfab_device::file;
use trustfab_device::sim::{BootOutcome, BootSlot, UpdateRequest};
use trustfab_device::{
    Device, DeviceKind, Error as DeviceError, Fault, Fleet, KeyAttestation, LockState, Op,
    SecureBoot, SiliconVendor, SimDevice, SlotId, SlotInfo, Socket, Trigger, Zone,
};
use trustfab_pki::PublicKey;
use trustfab_types::{DeviceUid, UnixTime};

use crate::error::RunError;

/// A source of parts for the sockets.
pub trait Supply: Send + Sync {
    /// A part in a socket.
    type Part: Device;

    /// The next part, in a socket, or `None` when the tray is empty.
    ///
    /// # Errors
    /// When a part cannot be loaded.
    fn take(&self) -> Result<Option<Self::Part>, RunError>;

    /// Takes a part out of its socket; `again` queues it for another attempt.
    ///
    /// # Errors
    /// When the part cannot be stored back.
    fn put_back(&self, part: Self::Part, again: bool) -> Result<(), RunError>;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Faults every socket injects, with a per-socket seed.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// The rules, tried in order.
    pub rules: Vec<(Fault, Trigger)>,
    /// The base seed; each insertion into a socket gets the next one.
    pub seed: u64,
}

impl Faults {
    /// No faults.
    pub fn none() -> Self {
        Self::default()
    }

    /// No-contact, write errors and power loss, each with probability `p / 3` per command.
    pub fn line(p: f64, seed: u64) -> Self {
        Self {
            rules: vec![
                (Fault::NoContact, Trigger::Probability(p / 3.0)),
                (Fault::WriteError, Trigger::Probability(p / 3.0)),
                (Fault::PowerLoss, Trigger::Probability(p / 3.0)),
            ],
            seed,
        }
    }

    fn socket(&self, device: SimDevice, n: u64) -> Socket {
        let mut s = Socket::with_device(device, self.seed.wrapping_add(n));
        for (f, t) in &self.rules {
            s = s.fault(*f, *t);
        }
        s
    }
}

/// An in-memory fleet: every part stays in memory, taken out into a socket and put back.
#[derive(Debug)]
pub struct FleetSupply {
    inner: Mutex<(Fleet, VecDeque<DeviceUid>)>,
    faults: Faults,
    inserted: AtomicU64,
}

impl FleetSupply {
    /// A tray over `fleet`, in manufacturing order.
    pub fn new(fleet: Fleet, faults: Faults) -> Self {
        let queue = fleet.uids().cloned().collect();
        Self {
            inner: Mutex::new((fleet, queue)),
            faults,
            inserted: AtomicU64::new(0),
        }
    }

    /// The fleet back, after the run.
    pub fn into_fleet(self) -> Fleet {
        self.inner
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .0
    }
}

impl Supply for FleetSupply {
    type Part = Socket;

    fn take(&self) -> Result<Option<Socket>, RunError> {
        let mut g = lock(&self.inner);
        let (fleet, queue) = &mut *g;
        while let Some(uid) = queue.pop_front() {
            if let Some(d) = fleet.take(&uid) {
                let n = self.inserted.fetch_add(1, Ordering::Relaxed);
                return Ok(Some(self.faults.socket(d, n)));
            }
        }
        Ok(None)
    }

    fn put_back(&self, mut part: Socket, again: bool) -> Result<(), RunError> {
        let Some(d) = part.remove() else {
            return Ok(());
        };
        let uid = d.uid_label().clone();
        let mut g = lock(&self.inner);
        g.0.put_back(d)
            .map_err(|e| RunError::Supply(e.to_string()))?;
        if again {
            g.1.push_back(uid);
        }
        Ok(())
    }
}

/// Parts made on demand by simulated silicon vendors and dropped once provisioned: memory stays
/// flat however many parts go through (benchmarks).
pub struct MadeSupply {
    vendors: Vec<Mutex<SiliconVendor>>,
    kind: DeviceKind,
    now: UnixTime,
    total: u64,
    made: AtomicU64,
    retried: AtomicU64,
    retries: Mutex<VecDeque<SimDevice>>,
    faults: Faults,
}

impl std::fmt::Debug for MadeSupply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MadeSupply")
            .field("total", &self.total)
            .field("made", &self.made)
            .finish_non_exhaustive()
    }
}

impl MadeSupply {
    /// `total` parts of `kind`, made by `vendors` in turn (one vendor per socket keeps the
    /// sockets from waiting on each other).
    pub fn new(
        vendors: Vec<SiliconVendor>,
        kind: DeviceKind,
        total: u64,
        now: UnixTime,
        faults: Faults,
    ) -> Self {
        Self {
            vendors: vendors.into_iter().map(Mutex::new).collect(),
            kind,
            now,
            total,
            made: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            retries: Mutex::new(VecDeque::new()),
            faults,
        }
    }
}

impl MadeSupply {
    /// The vendors back (their part counters moved on), after the run.
    pub fn into_vendors(self) -> Vec<SiliconVendor> {
        self.vendors
            .into_iter()
            .map(|m| m.into_inner().unwrap_or_else(PoisonError::into_inner))
            .collect()
    }

    /// Parts made so far.
    pub fn made(&self) -> u64 {
        self.made.load(Ordering::Relaxed).min(self.total)
    }
}

impl Supply for MadeSupply {
    type Part = Socket;

    fn take(&self) -> Result<Option<Socket>, RunError> {
        if let Some(d) = lock(&self.retries).pop_front() {
            // A fresh seed per insertion: a part put back meets other faults.
            let n = self.retried.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(self.faults.socket(d, self.total.wrapping_add(n))));
        }
        let n = self.made.fetch_add(1, Ordering::Relaxed);
        if n >= self.total || self.vendors.is_empty() {
            return Ok(None);
        }
        let i = usize::try_from(n % u64::try_from(self.vendors.len()).unwrap_or(1)).unwrap_or(0);
        let Some(vendor) = self.vendors.get(i) else {
            return Ok(None);
        };
        let d = lock(vendor)
            .manufacture(self.kind, self.now)
            .map_err(|e| RunError::Supply(e.to_string()))?;
        Ok(Some(self.faults.socket(d, n)))
    }

    fn put_back(&self, mut part: Socket, again: bool) -> Result<(), RunError> {
        if let (true, Some(d)) = (again, part.remove()) {
            lock(&self.retries).push_back(d);
        }
        Ok(())
    }
}

/// A directory of device files (`*.dev`): each part's memory is saved after every command that
/// changes it, so a station killed at any moment leaves every part as the part itself would be.
#[derive(Debug)]
pub struct FileSupply {
    queue: Mutex<VecDeque<PathBuf>>,
    faults: Faults,
    inserted: AtomicU64,
}

impl FileSupply {
    /// Every `*.dev` file in `dir`, in name order.
    ///
    /// # Errors
    /// When the directory cannot be read.
    pub fn open(dir: &Path, faults: Faults) -> Result<Self, RunError> {
        let rd = std::fs::read_dir(dir)
            .map_err(|e| RunError::Supply(format!("reading {}: {e}", dir.display())))?;
        let mut paths = Vec::new();
        for entry in rd {
            let p = entry
                .map_err(|e| RunError::Supply(format!("reading {}: {e}", dir.display())))?
                .path();
            if p.extension().is_some_and(|e| e == "dev") {
                paths.push(p);
            }
        }
        paths.sort();
        Ok(Self {
            queue: Mutex::new(paths.into()),
            faults,
            inserted: AtomicU64::new(0),
        })
    }
}

impl Supply for FileSupply {
    type Part = FilePart;

    fn take(&self) -> Result<Option<FilePart>, RunError> {
        let Some(path) = lock(&self.queue).pop_front() else {
            return Ok(None);
        };
        let d = file::load(&path).map_err(|e| RunError::Supply(e.to_string()))?;
        let n = self.inserted.fetch_add(1, Ordering::Relaxed);
        Ok(Some(FilePart {
            socket: self.faults.socket(d, n),
            path,
        }))
    }

    fn put_back(&self, part: FilePart, again: bool) -> Result<(), RunError> {
        part.save()
            .map_err(|e| RunError::Supply(format!("saving {}: {e}", part.path.display())))?;
        if again {
            lock(&self.queue).push_back(part.path);
        }
        Ok(())
    }
}

/// A part from a device file, in a socket; saved after every command that changes it.
#[derive(Debug)]
pub struct FilePart {
    socket: Socket,
    path: PathBuf,
}

impl FilePart {
    fn save(&self) -> Result<(), file::FileError> {
        match self.socket.device() {
            Some(d) => file::save(d, &self.path),
            None => Ok(()),
        }
    }

    /// Runs a command that changes the part, then saves it. A save that fails looks to the
    /// station like a power loss: the command's effect is not known to have persisted.
    fn write<T>(
        &mut self,
        op: Op,
        f: impl FnOnce(&mut Socket) -> Result<T, DeviceError>,
    ) -> Result<T, DeviceError> {
        let r = f(&mut self.socket);
        match self.save() {
            Ok(()) => r,
            Err(_) => Err(DeviceError::PowerLoss { op }),
        }
    }
}

impl Device for FilePart {
    fn kind(&self) -> DeviceKind {
        self.socket.kind()
    }
    fn uid(&mut self) -> Result<DeviceUid, DeviceError> {
        self.socket.uid()
    }
    fn slots(&mut self) -> Result<Vec<SlotInfo>, DeviceError> {
        self.socket.slots()
    }
    fn lock_state(&mut self) -> Result<LockState, DeviceError> {
        self.socket.lock_state()
    }
    fn generate_key(&mut self, slot: SlotId) -> Result<PublicKey, DeviceError> {
        self.write(Op::GenKey, |s| s.generate_key(slot))
    }
    fn generate_key_attested(
        &mut self,
        slot: SlotId,
        nonce: &[u8; 32],
    ) -> Result<KeyAttestation, DeviceError> {
        self.write(Op::GenKey, |s| s.generate_key_attested(slot, nonce))
    }
    fn public_key(&mut self, slot: SlotId) -> Result<PublicKey, DeviceError> {
        self.socket.public_key(slot)
    }
    fn sign_digest(&mut self, slot: SlotId, digest: &[u8; 32]) -> Result<Vec<u8>, DeviceError> {
        self.socket.sign_digest(slot, digest)
    }
    fn read_slot(&mut self, slot: SlotId) -> Result<Vec<u8>, DeviceError> {
        self.socket.read_slot(slot)
    }
    fn write_slot(&mut self, slot: SlotId, data: &[u8]) -> Result<(), DeviceError> {
        self.write(Op::Write, |s| s.write_slot(slot, data))
    }
    fn random(&mut self) -> Result<[u8; 32], DeviceError> {
        self.socket.random()
    }
    fn lock(&mut self, zone: Zone) -> Result<(), DeviceError> {
        self.write(Op::Lock, |s| s.lock(zone))
    }
    fn attestation_certificate(&mut self) -> Result<Vec<u8>, DeviceError> {
        self.socket.attestation_certificate()
    }
    fn counter_increment(&mut self, counter: u8) -> Result<u32, DeviceError> {
        self.write(Op::Counter, |s| s.counter_increment(counter))
    }
    fn counter_read(&mut self, counter: u8) -> Result<u32, DeviceError> {
        self.socket.counter_read(counter)
    }
    fn secure_boot(&mut self) -> Option<&mut dyn SecureBoot> {
        if self.kind() == DeviceKind::SecureMcu {
            Some(self)
        } else {
            None
        }
    }
}

/// The boot commands of the part in the file; each one that changes the part is saved.
impl SecureBoot for FilePart {
    fn program_rot_hash(&mut self, hash: &[u8; 32]) -> Result<(), DeviceError> {
        self.write(Op::Fuse, |s| s.program_rot_hash(hash))
    }
    fn rot_hash(&mut self) -> Result<Option<[u8; 32]>, DeviceError> {
        self.socket.rot_hash()
    }
    fn install_wrapped_secret(
        &mut self,
        slot: SlotId,
        wrapped: &[u8],
    ) -> Result<Vec<u8>, DeviceError> {
        self.write(Op::InstallSecret, |s| {
            s.install_wrapped_secret(slot, wrapped)
        })
    }
    fn write_boot_slot(&mut self, slot: BootSlot, image: &[u8]) -> Result<(), DeviceError> {
        self.write(Op::Flash, |s| s.write_boot_slot(slot, image))
    }
    fn request_update(&mut self, request: UpdateRequest) -> Result<(), DeviceError> {
        self.write(Op::Flash, |s| s.request_update(request))
    }
    fn boot(&mut self) -> Result<BootOutcome, DeviceError> {
        self.write(Op::Boot, SecureBoot::boot)
    }
    fn security_counter(&mut self) -> Result<u32, DeviceError> {
        self.socket.security_counter()
    }
}
