//! The programmer's socket: holds one simulated part and injects the faults a production line
//! has (no contact, a failed write, power lost during a write, a part that answers slowly), at
//! the Nth operation or with a seeded probability, so that a station's error paths are tested.

use std::thread;
use std::time::Duration;

use trustfab_pki::PublicKey;
use trustfab_types::DeviceUid;

use crate::attest::KeyAttestation;
use crate::device::{Device, DeviceKind, LockState, SlotId, SlotInfo, Zone};
use crate::error::{Error, Op};
use crate::secure_boot::{BootOutcome, BootSlot, SecureBoot, UpdateRequest};
use crate::sim::SimDevice;

/// A fault a socket can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The part does not answer at all: the command is not executed.
    NoContact,
    /// The command reaches the part corrupted and is not executed (only for commands that
    /// write; other commands pass).
    WriteError,
    /// Power fails during the command, before or after its commit point.
    PowerLoss,
    /// Power fails at the `write`th write (0-based) of the command, before or after its commit
    /// point: for commands that write several times, such as a boot that swaps an update.
    PowerLossAtWrite {
        /// Which write.
        write: u32,
        /// After its commit point (the write is done) or before (it is not).
        after_commit: bool,
    },
    /// The part answers after `delay`; with a socket timeout shorter than that, the station sees
    /// [`Error::Timeout`] although the part executed the command.
    Slow {
        /// How long the part takes.
        delay: Duration,
    },
}

/// When a fault fires.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Trigger {
    /// At the `n`th operation of this socket (1-based), once.
    AtOperation(u64),
    /// At each operation with this probability, drawn from the socket's seeded generator.
    Probability(f64),
}

/// A fault with its trigger.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaultRule {
    /// The fault.
    pub fault: Fault,
    /// When.
    pub trigger: Trigger,
}

/// A small deterministic generator (SplitMix64) for fault decisions; not for keys.
#[derive(Clone, Debug)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        // 53 random bits give every double in [0, 1) on the 2^-53 grid.
        let bits = self.next() >> 11;
        #[allow(clippy::cast_precision_loss)] // 53 bits are exact in an f64
        let v = bits as f64;
        v / 9_007_199_254_740_992.0
    }
}

/// How often each fault fired, for reports and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// No-contact faults.
    pub no_contact: u64,
    /// Write errors.
    pub write_error: u64,
    /// Power losses.
    pub power_loss: u64,
    /// Slow answers.
    pub slow: u64,
}

/// A programmer's socket holding at most one part.
#[derive(Debug)]
pub struct Socket {
    device: Option<SimDevice>,
    rules: Vec<FaultRule>,
    rng: SplitMix,
    ops: u64,
    timeout: Option<Duration>,
    counts: FaultCounts,
}

impl Socket {
    /// An empty socket with no faults; `seed` drives probabilistic faults.
    pub fn new(seed: u64) -> Self {
        Self {
            device: None,
            rules: Vec::new(),
            rng: SplitMix(seed),
            ops: 0,
            timeout: None,
            counts: FaultCounts::default(),
        }
    }

    /// A socket holding `device`.
    pub fn with_device(device: SimDevice, seed: u64) -> Self {
        let mut s = Self::new(seed);
        s.device = Some(device);
        s
    }

    /// Adds a fault rule; rules are tried in the order added, the first that fires wins.
    #[must_use]
    pub fn fault(mut self, fault: Fault, trigger: Trigger) -> Self {
        self.rules.push(FaultRule { fault, trigger });
        self
    }

    /// Sets the time the station waits for an answer.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Puts a part in the socket, returning the one that was there.
    pub fn insert(&mut self, device: SimDevice) -> Option<SimDevice> {
        self.device.replace(device)
    }

    /// Takes the part out.
    pub fn remove(&mut self) -> Option<SimDevice> {
        self.device.take()
    }

    /// The part, bypassing the socket (for inspection after a run).
    pub fn device(&self) -> Option<&SimDevice> {
        self.device.as_ref()
    }

    /// Operations this socket has carried.
    pub fn operations(&self) -> u64 {
        self.ops
    }

    /// Faults fired so far.
    pub fn fault_counts(&self) -> FaultCounts {
        self.counts
    }

    fn pick_fault(&mut self, writes: bool) -> Option<Fault> {
        let ops = self.ops;
        let mut fired = None;
        for rule in &self.rules {
            let hit = match rule.trigger {
                Trigger::AtOperation(n) => n == ops,
                Trigger::Probability(p) => self.rng.unit() < p,
            };
            if hit && (writes || rule.fault != Fault::WriteError) {
                fired = Some(rule.fault);
                break;
            }
        }
        fired
    }

    /// Carries one command to the part through the fault rules. `writes` says whether the
    /// command changes the part. Use it for the secure MCU's own commands (fuses, flash, boot).
    ///
    /// # Errors
    /// A fault, or the part's own error.
    pub fn call<T>(
        &mut self,
        op: Op,
        writes: bool,
        f: impl FnOnce(&mut SimDevice) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.ops += 1;
        let fault = self.pick_fault(writes);
        let mut power_step = None;
        let mut at_write = None;
        let mut slow = None;
        match fault {
            Some(Fault::NoContact) => {
                self.counts.no_contact += 1;
                return Err(Error::NoContact);
            }
            Some(Fault::WriteError) => {
                self.counts.write_error += 1;
                if self.device.is_none() {
                    return Err(Error::NoContact);
                }
                return Err(Error::WriteFailed { op });
            }
            Some(Fault::PowerLoss) => {
                self.counts.power_loss += 1;
                // Half before the commit point, half after: both outcomes happen.
                let point = u32::try_from(self.rng.next() >> 32).unwrap_or(0);
                power_step = Some(point);
            }
            Some(Fault::PowerLossAtWrite {
                write,
                after_commit,
            }) => {
                self.counts.power_loss += 1;
                at_write = Some((write, after_commit));
            }
            Some(Fault::Slow { delay }) => {
                self.counts.slow += 1;
                slow = Some(delay);
            }
            None => {}
        }
        let device = self.device.as_mut().ok_or(Error::NoContact)?;
        if let Some(step) = power_step {
            device.arm_power_cut(step);
        }
        if let Some((write, after_commit)) = at_write {
            device.arm_power_cut_at_write(write, after_commit);
        }
        let mut result = f(device);
        if power_step.is_some() && device.disarm_power_cut() {
            // The command never reached a point where the part programs or answers.
            result = Err(Error::PowerLoss { op });
        }
        if at_write.is_some() {
            // The command made fewer writes than the one the cut waited for: it ran whole.
            device.disarm_power_cut();
        }
        if let Some(delay) = slow {
            match self.timeout {
                Some(timeout) if delay > timeout => {
                    thread::sleep(timeout);
                    return Err(Error::Timeout {
                        op,
                        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                    });
                }
                _ => thread::sleep(delay),
            }
        }
        result
    }
}

impl Device for Socket {
    fn kind(&self) -> DeviceKind {
        self.device
            .as_ref()
            .map_or(DeviceKind::SecureElement, Device::kind)
    }

    fn uid(&mut self) -> Result<DeviceUid, Error> {
        self.call(Op::Uid, false, Device::uid)
    }

    fn slots(&mut self) -> Result<Vec<SlotInfo>, Error> {
        self.call(Op::Info, false, Device::slots)
    }

    fn lock_state(&mut self) -> Result<LockState, Error> {
        self.call(Op::Info, false, Device::lock_state)
    }

    fn generate_key(&mut self, slot: SlotId) -> Result<PublicKey, Error> {
        self.call(Op::GenKey, true, |d| d.generate_key(slot))
    }

    fn generate_key_attested(
        &mut self,
        slot: SlotId,
        nonce: &[u8; 32],
    ) -> Result<KeyAttestation, Error> {
        self.call(Op::GenKey, true, |d| d.generate_key_attested(slot, nonce))
    }

    fn public_key(&mut self, slot: SlotId) -> Result<PublicKey, Error> {
        self.call(Op::PublicKey, false, |d| d.public_key(slot))
    }

    fn sign_digest(&mut self, slot: SlotId, digest: &[u8; 32]) -> Result<Vec<u8>, Error> {
        self.call(Op::Sign, false, |d| d.sign_digest(slot, digest))
    }

    fn read_slot(&mut self, slot: SlotId) -> Result<Vec<u8>, Error> {
        self.call(Op::Read, false, |d| d.read_slot(slot))
    }

    fn write_slot(&mut self, slot: SlotId, data: &[u8]) -> Result<(), Error> {
        self.call(Op::Write, true, |d| d.write_slot(slot, data))
    }

    fn random(&mut self) -> Result<[u8; 32], Error> {
        self.call(Op::Random, false, Device::random)
    }

    fn lock(&mut self, zone: Zone) -> Result<(), Error> {
        self.call(Op::Lock, true, |d| d.lock(zone))
    }

    fn attestation_certificate(&mut self) -> Result<Vec<u8>, Error> {
        self.call(Op::Read, false, Device::attestation_certificate)
    }

    fn counter_increment(&mut self, counter: u8) -> Result<u32, Error> {
        self.call(Op::Counter, true, |d| d.counter_increment(counter))
    }

    fn counter_read(&mut self, counter: u8) -> Result<u32, Error> {
        self.call(Op::Counter, false, |d| d.counter_read(counter))
    }

    fn secure_boot(&mut self) -> Option<&mut dyn SecureBoot> {
        if self.kind() == DeviceKind::SecureMcu {
            Some(self)
        } else {
            None
        }
    }
}

/// The boot commands through the socket, with its faults; a secure element in the socket
/// refuses each as `Refusal::Unsupported`, as it would without the socket.
impl SecureBoot for Socket {
    fn program_rot_hash(&mut self, hash: &[u8; 32]) -> Result<(), Error> {
        self.call(Op::Fuse, true, |d| d.program_rot_hash(hash))
    }

    fn rot_hash(&mut self) -> Result<Option<[u8; 32]>, Error> {
        self.call(Op::Fuse, false, SimDevice::rot_hash)
    }

    fn install_wrapped_secret(&mut self, slot: SlotId, wrapped: &[u8]) -> Result<Vec<u8>, Error> {
        self.call(Op::InstallSecret, true, |d| {
            d.install_wrapped_secret(slot, wrapped)
        })
    }

    fn write_boot_slot(&mut self, slot: BootSlot, image: &[u8]) -> Result<(), Error> {
        self.call(Op::Flash, true, |d| d.write_boot_slot(slot, image))
    }

    fn request_update(&mut self, request: UpdateRequest) -> Result<(), Error> {
        self.call(Op::Flash, true, |d| d.request_update(request))
    }

    fn boot(&mut self) -> Result<BootOutcome, Error> {
        self.call(Op::Boot, true, SimDevice::boot)
    }

    fn security_counter(&mut self) -> Result<u32, Error> {
        self.call(Op::Counter, false, SimDevice::security_counter)
    }
}
