//! Time as the pure cores see it.
//!
//! An [`Instant`] is a count of milliseconds since an arbitrary origin chosen by each
//! process (its monotonic clock at start, or the simulator's virtual clock). Instants from
//! two processes are never compared: leases are computed on one clock and shortened by a
//! drift bound (see `server/src/paxos/config.rs`). Durations are plain `u64` values whose
//! names end in `_ms`.

use bincode::{Decode, Encode};

/// Milliseconds on one process's monotonic clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct Instant(pub u64);

impl Instant {
    /// The origin of the clock.
    pub const ZERO: Instant = Instant(0);

    /// This instant moved `ms` milliseconds later (saturating at the end of time).
    #[must_use]
    pub fn plus_ms(self, ms: u64) -> Instant {
        Instant(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to `self`, or 0 if `earlier` is later.
    #[must_use]
    pub fn ms_since(self, earlier: Instant) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl std::fmt::Display for Instant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}ms", self.0)
    }
}
