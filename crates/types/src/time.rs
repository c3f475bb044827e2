//! Time and randomness come in through these traits, so that the format crates stay pure and
//! tests stay deterministic (a fixed clock, a seeded generator), with no runtime switch.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixTime(pub u64);

impl fmt::Display for UnixTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (unix)", self.0)
    }
}

/// A source of the current time.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> UnixTime;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        // A clock before 1970 is treated as the epoch: every validity check then fails closed.
        UnixTime(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        )
    }
}

/// A clock that says what it is told; for tests and reproducible runs.
#[derive(Debug, Default)]
pub struct FixedClock(AtomicU64);

impl FixedClock {
    /// A clock stopped at `t`.
    pub fn new(t: UnixTime) -> Self {
        Self(AtomicU64::new(t.0))
    }

    /// Moves the clock to `t`.
    pub fn set(&self, t: UnixTime) {
        self.0.store(t.0, Ordering::SeqCst);
    }
}

impl Clock for FixedClock {
    fn now(&self) -> UnixTime {
        UnixTime(self.0.load(Ordering::SeqCst))
    }
}

/// The random source failed.
#[derive(Debug, thiserror::Error)]
#[error("random number generator failed")]
pub struct RngError;

/// A cryptographically secure random source.
pub trait Rng: Send + Sync {
    /// Fills `out` with random bytes.
    ///
    /// # Errors
    /// When the source fails; the buffer must then not be used.
    fn fill(&self, out: &mut [u8]) -> Result<(), RngError>;
}

/// The operating system's generator.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRng;

impl Rng for OsRng {
    fn fill(&self, out: &mut [u8]) -> Result<(), RngError> {
        getrandom::fill(out).map_err(|_| RngError)
    }
}
