//! A client session's lease, as the client keeps it (Chubby §2.8, Figure 2), pure: time is
//! milliseconds on the client's monotonic clock, passed in.
//!
//! ```text
//!   Safe ──(local lease ends)──► Jeopardy ──(KeepAlive answered)──► Safe
//!                                    └──────(grace ends)──────────► Expired
//! ```
//!
//! The local lease is a conservative copy of the master's: it is measured from when the
//! KeepAlive was *sent* (the master extended the lease after receiving it) and shortened
//! by [`DRIFT_PERMILLE`], the bound on how much faster the master's clock may run than
//! ours. So when the local lease ends the master's has not, and the client has emptied its
//! cache before the master can let a write past it.

mod machine;
mod numbers;

pub use machine::{ClientSession, SessionConfig, SessionEvent};
pub use numbers::CallNumbers;

/// How much faster (per thousand) the master's clock may run than the client's. The
/// paper requires such a bound and gives none (SPEC C.1); 1% is far above the drift of
/// any working quartz clock.
pub const DRIFT_PERMILLE: u64 = 10;

/// The grace period after the local lease ends (Chubby §2.8: 45 s).
pub const GRACE_MS_DEFAULT: u64 = 45_000;

/// Where a session stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionStatus {
    /// The local lease holds: the cache serves, calls go through.
    Safe,
    /// The local lease ended: the cache is empty and disabled, calls wait.
    Jeopardy,
    /// The grace period ended without contact, or the master ended the session: handles
    /// and locks are gone.
    Expired,
}

/// A change of [`SessionStatus`] for the application to hear about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Safe → Jeopardy.
    Jeopardy,
    /// Jeopardy → Safe.
    Safe,
    /// → Expired.
    Expired,
}

/// The local lease and the grace period.
#[derive(Clone, Debug)]
pub struct LeaseClock {
    status: SessionStatus,
    local_end: u64,
    grace_ms: u64,
    grace_end: u64,
}

/// The end of the local lease for a KeepAlive sent at `sent` whose reply granted
/// `lease_ms`.
#[must_use]
pub fn local_lease_end(sent: u64, lease_ms: u64) -> u64 {
    sent.saturating_add(lease_ms - lease_ms * DRIFT_PERMILLE / 1000)
}

impl LeaseClock {
    /// A session whose creation was requested at `sent` and granted `lease_ms`.
    #[must_use]
    pub fn new(sent: u64, lease_ms: u64, grace_ms: u64) -> LeaseClock {
        LeaseClock {
            status: SessionStatus::Safe,
            local_end: local_lease_end(sent, lease_ms),
            grace_ms,
            grace_end: u64::MAX,
        }
    }

    /// Where the session stands.
    #[must_use]
    pub fn status(&self) -> SessionStatus {
        self.status
    }

    /// When the local lease ends.
    #[must_use]
    pub fn local_end(&self) -> u64 {
        self.local_end
    }

    /// A KeepAlive sent at `sent` was answered with `lease_ms`. The lease never moves
    /// backwards.
    pub fn renewed(&mut self, sent: u64, lease_ms: u64) -> Option<Transition> {
        if self.status == SessionStatus::Expired {
            return None;
        }
        self.local_end = self.local_end.max(local_lease_end(sent, lease_ms));
        if self.status == SessionStatus::Jeopardy {
            self.status = SessionStatus::Safe;
            self.grace_end = u64::MAX;
            return Some(Transition::Safe);
        }
        None
    }

    /// The master said the session is gone.
    pub fn ended(&mut self) -> Option<Transition> {
        if self.status == SessionStatus::Expired {
            return None;
        }
        self.status = SessionStatus::Expired;
        Some(Transition::Expired)
    }

    /// Time passes.
    pub fn tick(&mut self, now: u64) -> Option<Transition> {
        match self.status {
            SessionStatus::Safe if now >= self.local_end => {
                self.status = SessionStatus::Jeopardy;
                self.grace_end = self.local_end.saturating_add(self.grace_ms);
                if now >= self.grace_end {
                    self.status = SessionStatus::Expired;
                    return Some(Transition::Expired);
                }
                Some(Transition::Jeopardy)
            }
            SessionStatus::Jeopardy if now >= self.grace_end => {
                self.status = SessionStatus::Expired;
                Some(Transition::Expired)
            }
            _ => None,
        }
    }

    /// When [`LeaseClock::tick`] next has something to do.
    #[must_use]
    pub fn next_deadline(&self) -> Option<u64> {
        match self.status {
            SessionStatus::Safe => Some(self.local_end),
            SessionStatus::Jeopardy => Some(self.grace_end),
            SessionStatus::Expired => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_lease_ends_before_the_masters_by_the_drift_bound() {
        assert_eq!(local_lease_end(1_000, 12_000), 1_000 + 12_000 - 120);
    }

    /// Chubby Figure 2: lease lapses → jeopardy; a reply within the grace → safe; no reply
    /// within the grace → expired.
    #[test]
    fn jeopardy_then_safe_or_expired() {
        let mut l = LeaseClock::new(0, 1_000, 5_000);
        assert_eq!(l.tick(989), None);
        assert_eq!(l.tick(990), Some(Transition::Jeopardy));
        assert_eq!(l.status(), SessionStatus::Jeopardy);
        assert_eq!(l.next_deadline(), Some(5_990));
        assert_eq!(l.renewed(3_000, 1_000), Some(Transition::Safe));
        assert_eq!(l.local_end(), 3_990);
        assert_eq!(l.tick(3_990), Some(Transition::Jeopardy));
        assert_eq!(l.tick(8_989), None);
        assert_eq!(l.tick(8_990), Some(Transition::Expired));
        assert_eq!(l.renewed(9_000, 1_000), None, "expired is final");
        assert_eq!(l.status(), SessionStatus::Expired);
    }

    #[test]
    fn a_late_reply_never_shortens_the_lease() {
        let mut l = LeaseClock::new(100, 10_000, 1_000);
        l.renewed(50, 10_000);
        assert_eq!(l.local_end(), local_lease_end(100, 10_000));
    }
}
