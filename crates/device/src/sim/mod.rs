//! The simulated parts: one state machine for the secure element and the secure MCU, which share
//! the identity services (key, certificate, data and secret slots, locks, counters) and differ in
//! their slot layout, status codes and the MCU's fuses, lifecycle and flash.
//!
//! Every command that changes the part is one transaction over its non-volatile memory: the new
//! state is built aside and committed at one point. A power cut armed by the socket before that
//! point leaves the old state, after it the new one, never a mix (`docs/devices.md`,
//! "Anti-tearing").

mod boot;
mod install;
mod layout;
pub mod mcu;

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::digest::{Digest, SHA256};
use aws_lc_rs::signature::EcdsaKeyPair;
use trustfab_pki::PublicKey;
use trustfab_types::{DeviceUid, SecretKeyDer};

use crate::attest::KeyAttestation;
use crate::device::{
    Device, DeviceKind, LockState, ReadPolicy, SlotConfig, SlotId, SlotInfo, SlotKind, WritePolicy,
    Zone,
};
use crate::error::{Error, Op, Refusal, Status};
use crate::secure_boot::SecureBoot;
use crate::vendor::{generate_pair, public_of};

pub use layout::{default_layout, COUNTERS, COUNTER_LIMIT};
pub use mcu::{BootOutcome, BootSlot, ImageRefusal, Lifecycle, SwapOutcome, UpdateRequest};

use mcu::McuState;

/// A P-256 key pair held by a part. Not `Clone` (shared by reference count inside the part's
/// state so that a transaction can be built aside), never printed.
pub(crate) struct SlotKey {
    pair: EcdsaKeyPair,
    public: PublicKey,
}

impl fmt::Debug for SlotKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SlotKey([secret elided])")
    }
}

impl SlotKey {
    pub(crate) fn generate() -> Result<Self, ()> {
        let pair = generate_pair()?;
        let public = public_of(&pair)?;
        Ok(Self { pair, public })
    }

    pub(crate) fn from_pkcs8(der: &SecretKeyDer) -> Result<Self, ()> {
        let pair = EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            der.secret_pkcs8_der(),
        )
        .map_err(|_| ())?;
        let public = public_of(&pair)?;
        Ok(Self { pair, public })
    }

    /// PKCS#8 of the key, for the part's own non-volatile memory image (the device file) only.
    pub(crate) fn secret_pkcs8(&self) -> Result<SecretKeyDer, ()> {
        let doc = self.pair.to_pkcs8v1().map_err(|_| ())?;
        Ok(SecretKeyDer::new(doc.as_ref().to_vec()))
    }

    pub(crate) fn public(&self) -> &PublicKey {
        &self.public
    }

    fn sign_digest(&self, digest: &[u8; 32]) -> Result<Vec<u8>, ()> {
        let d = Digest::import_less_safe(digest, &SHA256).map_err(|_| ())?;
        self.pair
            .sign_digest(&d)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| ())
    }

    fn sign_message(&self, message: &[u8]) -> Result<Vec<u8>, ()> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        self.pair
            .sign(&rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| ())
    }
}

/// A slot's content.
#[derive(Clone, Debug)]
pub(crate) enum Content {
    Empty,
    Data(Arc<[u8]>),
    Key(Arc<SlotKey>),
}

/// One slot of the part's non-volatile memory.
#[derive(Clone, Debug)]
pub(crate) struct Slot {
    pub(crate) id: SlotId,
    pub(crate) config: SlotConfig,
    pub(crate) locked: bool,
    pub(crate) content: Content,
}

/// Everything the part keeps across power cycles.
#[derive(Clone, Debug)]
pub(crate) struct State {
    pub(crate) slots: Vec<Slot>,
    pub(crate) config_locked: bool,
    pub(crate) data_locked: bool,
    pub(crate) counters: [u32; COUNTERS],
    pub(crate) mcu: Option<McuState>,
}

/// A power cut armed for the next command: `point`'s low bit set cuts just after a commit point,
/// clear just before it; with `writes_before` set, the first that many writes of the command
/// complete and reads pass, and power fails at the next write.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PowerCut {
    pub(crate) point: u32,
    pub(crate) writes_before: Option<u32>,
}

/// A simulated secure element or secure MCU.
///
/// It enforces every rule of `docs/devices.md` itself: the caller can only ask, as a station asks
/// a real part through a socket. Use it directly for a perfect socket, or in a
/// [`crate::Socket`] for fault injection.
pub struct SimDevice {
    kind: DeviceKind,
    uid: DeviceUid,
    attestation_key: Arc<SlotKey>,
    attestation_cert: Vec<u8>,
    state: State,
    /// Armed by a socket: where power fails during the next command.
    power_cut: Option<PowerCut>,
}

impl fmt::Debug for SimDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimDevice")
            .field("kind", &self.kind)
            .field("uid", &self.uid)
            .field("config_locked", &self.state.config_locked)
            .field("data_locked", &self.state.data_locked)
            .finish_non_exhaustive()
    }
}

impl SimDevice {
    pub(crate) fn new(
        kind: DeviceKind,
        uid: DeviceUid,
        attestation_key: SlotKey,
        attestation_cert: Vec<u8>,
        configured: bool,
    ) -> Self {
        let slots = default_layout(kind)
            .into_iter()
            .map(|(id, config)| Slot {
                id,
                config,
                locked: false,
                content: Content::Empty,
            })
            .collect();
        Self {
            kind,
            uid,
            attestation_key: Arc::new(attestation_key),
            attestation_cert,
            state: State {
                slots,
                // Pre-configured secure elements leave the factory with their configuration
                // locked, as Microchip's Trust&GO / TrustFLEX ATECC608 parts do.
                config_locked: configured && kind == DeviceKind::SecureElement,
                data_locked: false,
                counters: [0; COUNTERS],
                mcu: (kind == DeviceKind::SecureMcu).then(McuState::default),
            },
            power_cut: None,
        }
    }

    pub(crate) fn from_parts(
        kind: DeviceKind,
        uid: DeviceUid,
        attestation_key: SlotKey,
        attestation_cert: Vec<u8>,
        state: State,
    ) -> Self {
        Self {
            kind,
            uid,
            attestation_key: Arc::new(attestation_key),
            attestation_cert,
            state,
            power_cut: None,
        }
    }

    pub(crate) fn state(&self) -> &State {
        &self.state
    }

    pub(crate) fn attestation_key(&self) -> &SlotKey {
        &self.attestation_key
    }

    /// The UID, without a command (the label printed on the part).
    pub fn uid_label(&self) -> &DeviceUid {
        &self.uid
    }

    /// The factory attestation certificate, without a command.
    pub fn attestation_cert_der(&self) -> &[u8] {
        &self.attestation_cert
    }

    /// Arms a power cut for the next command. With the low bit of `point` set, power fails just
    /// after the commit point; otherwise before it, while the shadow copy is being programmed.
    pub(crate) fn arm_power_cut(&mut self, point: u32) {
        self.power_cut = Some(PowerCut {
            point,
            writes_before: None,
        });
    }

    /// Arms a power cut at the `write`th write (0-based) of the next command, just before or
    /// just after its commit point: a command that writes several times (a boot that swaps an
    /// update) can be cut at each of them.
    pub(crate) fn arm_power_cut_at_write(&mut self, write: u32, after_commit: bool) {
        self.power_cut = Some(PowerCut {
            point: u32::from(after_commit),
            writes_before: Some(write),
        });
    }

    /// Disarms a power cut the last command did not reach; says whether one was armed.
    pub(crate) fn disarm_power_cut(&mut self) -> bool {
        self.power_cut.take().is_some()
    }

    /// Changes a slot's configuration, as a write to the configuration zone.
    ///
    /// # Errors
    /// Refused once the configuration is locked, for an unknown slot, or for a private key
    /// slot made readable or a capacity above [`crate::limits::SLOT_BYTES`].
    pub fn configure_slot(&mut self, id: SlotId, config: SlotConfig) -> Result<(), Error> {
        self.transact(Op::Configure, Some(id), |s, _| {
            if config.capacity > crate::limits::SLOT_BYTES {
                return Err(Refusal::TooLong);
            }
            let idx = s.index(id)?;
            if s.config_locked {
                return Err(Refusal::AlreadyLocked);
            }
            s.slots[idx].config = SlotConfig {
                read: if matches!(config.kind, SlotKind::PrivateKey | SlotKind::Secret) {
                    ReadPolicy::Never
                } else {
                    config.read
                },
                ..config
            };
            s.slots[idx].content = Content::Empty;
            Ok(())
        })
    }

    fn status(&self, refusal: Refusal) -> Status {
        layout::status(self.kind, refusal)
    }

    fn refuse(&self, op: Op, slot: Option<SlotId>, refusal: Refusal) -> Error {
        Error::Refused {
            op,
            slot,
            refusal,
            status: self.status(refusal),
        }
    }

    /// A command that only reads: a power cut loses the answer, nothing else.
    fn query<T>(
        &mut self,
        op: Op,
        slot: Option<SlotId>,
        f: impl FnOnce(&Self) -> Result<T, Refusal>,
    ) -> Result<T, Error> {
        if self.power_cut.is_some_and(|c| c.writes_before.is_none()) {
            self.power_cut = None;
            return Err(Error::PowerLoss { op });
        }
        f(self).map_err(|r| self.refuse(op, slot, r))
    }

    /// A command that changes the part: built aside in a shadow copy, then committed at one
    /// point, as an anti-tearing journal does.
    fn transact<T>(
        &mut self,
        op: Op,
        slot: Option<SlotId>,
        f: impl FnOnce(&mut State, DeviceKind) -> Result<T, Refusal>,
    ) -> Result<T, Error> {
        let cut = match &mut self.power_cut {
            Some(PowerCut {
                writes_before: Some(n),
                ..
            }) if *n > 0 => {
                *n -= 1;
                None
            }
            _ => self.power_cut.take().map(|c| c.point),
        };
        let mut shadow = self.state.clone();
        let out = match f(&mut shadow, self.kind) {
            Ok(out) => out,
            Err(r) => {
                if cut.is_some() {
                    return Err(Error::PowerLoss { op });
                }
                return Err(self.refuse(op, slot, r));
            }
        };
        if let Some(point) = cut {
            if point & 1 == 1 {
                // Power failed after the commit: the change is done, the answer is lost.
                self.state = shadow;
            }
            // Otherwise the shadow copy is abandoned half-written and the old state stays.
            return Err(Error::PowerLoss { op });
        }
        self.state = shadow;
        Ok(out)
    }

    fn generate(&mut self, slot: SlotId) -> Result<Arc<SlotKey>, Error> {
        // The key is made first and only stored if the slot admits it.
        let key = Arc::new(SlotKey::generate().map_err(|()| Error::Crypto { op: Op::GenKey })?);
        self.transact(Op::GenKey, Some(slot), |s, kind| {
            let idx = s.index(slot)?;
            let sl = &s.slots[idx];
            if sl.config.kind != SlotKind::PrivateKey {
                return Err(Refusal::WrongSlotKind);
            }
            // ATECC608 GenKey: the configuration zone must be locked.
            if kind == DeviceKind::SecureElement && !s.config_locked {
                return Err(Refusal::ConfigUnlocked);
            }
            s.check_writable(idx)?;
            s.slots[idx].content = Content::Key(Arc::clone(&key));
            Ok(key)
        })
    }

    fn key(&self, slot: SlotId) -> Result<&Arc<SlotKey>, Refusal> {
        let sl = &self.state.slots[self.state.index(slot)?];
        if sl.config.kind != SlotKind::PrivateKey {
            return Err(Refusal::WrongSlotKind);
        }
        match &sl.content {
            Content::Key(k) => Ok(k),
            _ => Err(Refusal::NoKey),
        }
    }
}

impl State {
    pub(crate) fn index(&self, slot: SlotId) -> Result<usize, Refusal> {
        self.slots
            .binary_search_by_key(&slot, |s| s.id)
            .map_err(|_| Refusal::NoSuchSlot)
    }

    /// The slot's write policy admits a write now.
    fn check_writable(&self, idx: usize) -> Result<(), Refusal> {
        let sl = &self.slots[idx];
        if sl.locked {
            return Err(Refusal::SlotLocked);
        }
        match sl.config.write {
            WritePolicy::Always => Ok(()),
            WritePolicy::UntilLock if !self.data_locked => Ok(()),
            WritePolicy::UntilLock | WritePolicy::Never => Err(Refusal::WriteProtected),
        }
    }
}

impl Device for SimDevice {
    fn kind(&self) -> DeviceKind {
        self.kind
    }

    fn uid(&mut self) -> Result<DeviceUid, Error> {
        self.query(Op::Uid, None, |d| Ok(d.uid.clone()))
    }

    fn slots(&mut self) -> Result<Vec<SlotInfo>, Error> {
        self.query(Op::Info, None, |d| {
            Ok(d.state
                .slots
                .iter()
                .map(|s| SlotInfo {
                    id: s.id,
                    config: s.config,
                    locked: s.locked,
                    filled: !matches!(s.content, Content::Empty),
                    len: match &s.content {
                        Content::Data(d) => d.len(),
                        _ => 0,
                    },
                })
                .collect())
        })
    }

    fn lock_state(&mut self) -> Result<LockState, Error> {
        self.query(Op::Info, None, |d| {
            Ok(LockState {
                config: d.state.config_locked,
                data: d.state.data_locked,
            })
        })
    }

    fn generate_key(&mut self, slot: SlotId) -> Result<PublicKey, Error> {
        Ok(self.generate(slot)?.public.clone())
    }

    fn generate_key_attested(
        &mut self,
        slot: SlotId,
        nonce: &[u8; 32],
    ) -> Result<KeyAttestation, Error> {
        let key = self.generate(slot)?;
        let public_key = key.public.clone();
        let message = KeyAttestation::message(&self.uid, slot, &public_key, nonce);
        let signature = self
            .attestation_key
            .sign_message(&message)
            .map_err(|()| Error::Crypto { op: Op::GenKey })?;
        Ok(KeyAttestation {
            uid: self.uid.clone(),
            slot,
            public_key,
            nonce: *nonce,
            signature,
        })
    }

    fn public_key(&mut self, slot: SlotId) -> Result<PublicKey, Error> {
        self.query(Op::PublicKey, Some(slot), |d| {
            Ok(d.key(slot)?.public.clone())
        })
    }

    fn sign_digest(&mut self, slot: SlotId, digest: &[u8; 32]) -> Result<Vec<u8>, Error> {
        let key = self.query(Op::Sign, Some(slot), |d| Ok(Arc::clone(d.key(slot)?)))?;
        key.sign_digest(digest)
            .map_err(|()| Error::Crypto { op: Op::Sign })
    }

    fn read_slot(&mut self, slot: SlotId) -> Result<Vec<u8>, Error> {
        self.query(Op::Read, Some(slot), |d| {
            let s = &d.state;
            let sl = &s.slots[s.index(slot)?];
            // A private key is never readable, whatever the configuration says.
            if matches!(sl.config.kind, SlotKind::PrivateKey | SlotKind::Secret)
                || sl.config.read == ReadPolicy::Never
            {
                return Err(Refusal::NotReadable);
            }
            // ATECC608: the data zone cannot be read before it is locked.
            if d.kind == DeviceKind::SecureElement && !s.data_locked {
                return Err(Refusal::DataUnlocked);
            }
            Ok(match &sl.content {
                Content::Data(bytes) => bytes.to_vec(),
                Content::Empty | Content::Key(_) => Vec::new(),
            })
        })
    }

    fn write_slot(&mut self, slot: SlotId, data: &[u8]) -> Result<(), Error> {
        self.transact(Op::Write, Some(slot), |s, kind| {
            let idx = s.index(slot)?;
            // A private key is only ever generated inside, never written.
            if s.slots[idx].config.kind == SlotKind::PrivateKey {
                return Err(Refusal::WrongSlotKind);
            }
            if data.len() > usize::from(s.slots[idx].config.capacity) {
                return Err(Refusal::TooLong);
            }
            // ATECC608: nothing is written to the data zone before the configuration is locked.
            if kind == DeviceKind::SecureElement && !s.config_locked {
                return Err(Refusal::ConfigUnlocked);
            }
            s.check_writable(idx)?;
            s.slots[idx].content = Content::Data(Arc::from(data));
            Ok(())
        })
    }

    fn random(&mut self) -> Result<[u8; 32], Error> {
        let mut fresh = [0u8; 32];
        aws_lc_rs::rand::fill(&mut fresh).map_err(|_| Error::Crypto { op: Op::Random })?;
        self.query(Op::Random, None, |d| {
            if d.kind == DeviceKind::SecureElement && !d.state.config_locked {
                // ATECC608 Random: a fixed FF FF 00 00 pattern until the configuration is locked.
                let mut pattern = [0u8; 32];
                for (i, b) in pattern.iter_mut().enumerate() {
                    *b = if i % 4 < 2 { 0xFF } else { 0x00 };
                }
                return Ok(pattern);
            }
            Ok(fresh)
        })
    }

    fn lock(&mut self, zone: Zone) -> Result<(), Error> {
        let slot = match zone {
            Zone::Slot(s) => Some(s),
            Zone::Config | Zone::Data => None,
        };
        self.transact(Op::Lock, slot, |s, _| {
            match zone {
                Zone::Config => {
                    if s.config_locked {
                        return Err(Refusal::AlreadyLocked);
                    }
                    s.config_locked = true;
                    if let Some(m) = s.mcu.as_mut() {
                        m.lifecycle = Lifecycle::Provisioned;
                    }
                }
                Zone::Data => {
                    if !s.config_locked {
                        return Err(Refusal::ConfigUnlocked);
                    }
                    if s.data_locked {
                        return Err(Refusal::AlreadyLocked);
                    }
                    if let Some(m) = s.mcu.as_mut() {
                        // PSA lifecycle: a part enters Secured only with its root of trust
                        // provisioned.
                        if m.rot_hash.is_none() {
                            return Err(Refusal::Lifecycle);
                        }
                        m.lifecycle = Lifecycle::Locked;
                    }
                    s.data_locked = true;
                }
                Zone::Slot(id) => {
                    let idx = s.index(id)?;
                    if !s.slots[idx].config.lockable {
                        return Err(Refusal::NotLockable);
                    }
                    if s.slots[idx].locked {
                        return Err(Refusal::AlreadyLocked);
                    }
                    s.slots[idx].locked = true;
                }
            }
            Ok(())
        })
    }

    fn attestation_certificate(&mut self) -> Result<Vec<u8>, Error> {
        self.query(Op::Read, None, |d| Ok(d.attestation_cert.clone()))
    }

    fn counter_increment(&mut self, counter: u8) -> Result<u32, Error> {
        self.transact(Op::Counter, None, |s, _| {
            let c = s
                .counters
                .get_mut(usize::from(counter))
                .ok_or(Refusal::NoSuchCounter)?;
            if *c >= COUNTER_LIMIT {
                return Err(Refusal::CounterLimit);
            }
            *c += 1;
            Ok(*c)
        })
    }

    fn counter_read(&mut self, counter: u8) -> Result<u32, Error> {
        self.query(Op::Counter, None, |d| {
            d.state
                .counters
                .get(usize::from(counter))
                .copied()
                .ok_or(Refusal::NoSuchCounter)
        })
    }

    fn secure_boot(&mut self) -> Option<&mut dyn SecureBoot> {
        if self.kind == DeviceKind::SecureMcu {
            Some(self)
        } else {
            None
        }
    }
}

// The secure MCU's commands are inherent methods too (usable without the trait in scope); the
// trait's are the same commands, and a secure element refuses each as `Refusal::Unsupported`.
impl SecureBoot for SimDevice {
    fn program_rot_hash(&mut self, hash: &[u8; 32]) -> Result<(), Error> {
        Self::program_rot_hash(self, hash)
    }

    fn rot_hash(&mut self) -> Result<Option<[u8; 32]>, Error> {
        Self::rot_hash(self)
    }

    fn install_wrapped_secret(&mut self, slot: SlotId, wrapped: &[u8]) -> Result<Vec<u8>, Error> {
        Self::install_wrapped_secret(self, slot, wrapped)
    }

    fn write_boot_slot(&mut self, slot: BootSlot, image: &[u8]) -> Result<(), Error> {
        Self::write_boot_slot(self, slot, image)
    }

    fn request_update(&mut self, request: UpdateRequest) -> Result<(), Error> {
        Self::request_update(self, request)
    }

    fn boot(&mut self) -> Result<BootOutcome, Error> {
        Self::boot(self)
    }

    fn security_counter(&mut self) -> Result<u32, Error> {
        Self::security_counter(self)
    }
}
