//! Timing and sizing of the Paxos core, with the relationships between them.
//!
//! # Leases and clock drift (PML §5.2, STYLE §9.4)
//! An acceptor that acks a master's Accept or Heartbeat refuses to promise any other
//! replica's ballot for `master_lease_ms` **on its own clock, counted from receipt**. The
//! master counts its lease from **before it sent** the request and shortens it by the drift
//! bound ε (`drift_ppm`, parts per million of clock *rate* difference from true time):
//!
//! ```text
//! master believes until  sent_at + master_lease_ms * (1 - ε) / (1 + ε)
//! ```
//!
//! If every clock's rate is within `[1-ε, 1+ε]` of true time, the master's belief ends (in
//! true time) no later than any acceptor's grant. A restarted replica has forgotten the
//! leases it granted, so it promises nothing for `master_lease_ms` after it starts.
//!
//! The default ε is 1% (10 000 ppm): far above real quartz drift (≈50 ppm), so that a
//! misbehaving clock (NTP slew, VM pause accounting) is still covered. The simulator draws
//! clock rates inside this bound, and a negative test draws them outside it.

use chubby_protocol::NodeId;

/// Default master lease. DESIGN §7 says 1 s; a fail-over costs about one lease (followers
/// cannot elect a successor before the lease they granted lapses), and issue 21 asks for
/// fail-over in well under a second, so the lease is 300 ms (docs/paxos.md "Timings").
pub const MASTER_LEASE_MS_DEFAULT: u64 = 300;
/// Default heartbeat interval: four per lease, so two lost heartbeats in a row do not
/// cost the lease.
pub const HEARTBEAT_INTERVAL_MS_DEFAULT: u64 = 75;
/// Default drift bound ε, parts per million.
pub const DRIFT_PPM_DEFAULT: u64 = 10_000;
/// Default election timeout: how long after the last lease it granted (or the last word
/// from a master) a follower waits before campaigning. It is the lease plus the drift
/// margin, so a follower campaigns as soon as the lease it granted can have lapsed on
/// every acceptor that got the same heartbeat (see [`drift_margin_ms`]).
pub const ELECTION_TIMEOUT_MS_DEFAULT: u64 =
    MASTER_LEASE_MS_DEFAULT + drift_margin_ms(MASTER_LEASE_MS_DEFAULT, DRIFT_PPM_DEFAULT);
/// Default election jitter: each wait adds a random `[0, j)` ms, so followers that heard
/// the same heartbeat rarely campaign together (and when they do, the higher ballot wins
/// in one round: the lower candidate promises it and steps down).
pub const ELECTION_JITTER_MS_DEFAULT: u64 = 50;
/// Default interval between sequence-number boosts (PML §5.2: "the right frequency" is not
/// stated; every 30 s keeps full rounds far below 1% of instances under load).
pub const BOOST_INTERVAL_MS_DEFAULT: u64 = 30_000;

// Two heartbeats fit in a lease, so one lost heartbeat does not cost the lease.
const _: () = assert!(2 * HEARTBEAT_INTERVAL_MS_DEFAULT < MASTER_LEASE_MS_DEFAULT);
// A follower waits out the lease (and the drift margin) before campaigning, so it does not
// bang on acceptors that must refuse it while the old master's lease runs.
const _: () = assert!(MASTER_LEASE_MS_DEFAULT < ELECTION_TIMEOUT_MS_DEFAULT);

/// How much longer than `lease_ms` on its own clock a follower waits so that another
/// acceptor's grant of the same length, counted from the same heartbeat, has ended too:
/// their clock rates may differ by up to 2ε, so `2·ε·lease`, rounded up, plus 1 ms for
/// the heartbeat's arrival times differing.
#[must_use]
pub const fn drift_margin_ms(lease_ms: u64, drift_ppm: u64) -> u64 {
    (2 * lease_ms * drift_ppm).div_ceil(1_000_000) + 1
}
// The drift bound must leave a positive lease.
const _: () = assert!(DRIFT_PPM_DEFAULT < 1_000_000);

/// Deliberate protocol bugs, for proving the simulator's checkers (PML §6.3: "deliberately
/// leaving known protocol bugs in and confirming the test caught them"). All off by default;
/// only built with the `bug-injection` feature.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bugs {
    /// An acceptor sends its Promise/Accepted before persisting it.
    pub reply_before_persist: bool,
    /// An acceptor promises other ballots while a master lease it granted still runs.
    pub acceptor_ignores_lease: bool,
    /// The master counts its lease from when the ack arrived instead of when it sent.
    pub lease_from_receipt: bool,
    /// A replica that lost its disk votes at once instead of rebuilding first.
    pub skip_no_vote_rule: bool,
    /// A shell installs a peer's snapshot without the member sets it carries (the gap
    /// before snapshot format 4). Read by the simulator's shell, not by the core.
    pub snapshot_drops_members: bool,
    /// The master counts a slot chosen by a majority of the founding member set, as if
    /// membership never changed (docs/paxos.md "Membership changes": phase 2 for slot `j`
    /// needs a majority of the set governing `j`).
    pub phase2_founders_set: bool,
}

impl Bugs {
    /// The names accepted by [`Bugs::enable`].
    pub const NAMES: [&'static str; 6] = [
        "reply-before-persist",
        "acceptor-ignores-lease",
        "lease-from-receipt",
        "skip-no-vote-rule",
        "snapshot-drops-members",
        "phase2-founders-set",
    ];

    /// Turns on the bug called `name`; false if there is no such bug.
    pub fn enable(&mut self, name: &str) -> bool {
        match name {
            "reply-before-persist" => self.reply_before_persist = true,
            "acceptor-ignores-lease" => self.acceptor_ignores_lease = true,
            "lease-from-receipt" => self.lease_from_receipt = true,
            "skip-no-vote-rule" => self.skip_no_vote_rule = true,
            "snapshot-drops-members" => self.snapshot_drops_members = true,
            "phase2-founders-set" => self.phase2_founders_set = true,
            _ => return false,
        }
        true
    }
}

/// Configuration of one replica's Paxos core.
#[derive(Clone, Debug)]
pub struct Config {
    /// This replica.
    pub me: NodeId,
    /// The founding members of the cell, `me` included; or, when `joining`, the replicas to
    /// contact first.
    pub members: Vec<NodeId>,
    /// This replica was not a founding member: it learns the member sets from its peers
    /// and votes only where a chosen change made it a member.
    pub joining: bool,
    /// How long an acceptor's lease grant lasts, on its own clock.
    pub master_lease_ms: u64,
    /// How often the master renews its lease and announces what is chosen.
    pub heartbeat_interval_ms: u64,
    /// Election timeout `t`: a follower starts phase 1 once it has heard no master for `t`
    /// plus a random jitter in `[0, election_jitter_ms)` (at start, `2t` plus jitter, so a
    /// restarted replica first hears from a running master).
    pub election_timeout_ms: u64,
    /// The random part of each election wait.
    pub election_jitter_ms: u64,
    /// Clock-rate drift bound ε in parts per million.
    pub drift_ppm: u64,
    /// How often the master boosts its ballot with a full phase 1 (PML §5.2).
    pub boost_interval_ms: u64,
    /// How long to wait before resending an unanswered Prepare, Accept, catch-up or
    /// rebuild query.
    pub retry_interval_ms: u64,
    /// α: the most instances the master has in flight at once (pipelining).
    pub window: usize,
    /// The most commands batched into one instance.
    pub batch_commands_max: usize,
    /// The most command bytes batched into one instance.
    pub batch_bytes_max: usize,
    /// The most commands waiting for a slot; beyond it submissions are refused.
    pub queue_commands_max: usize,
    /// The most entries in one catch-up reply.
    pub catchup_entries_max: u32,
    /// The most bytes of values in one catch-up reply.
    pub catchup_bytes_max: usize,
    /// How long a snapshot fetch ([`super::Action::FetchSnapshot`]) may take before the
    /// replica gives up on it and asks again (from the next peer).
    pub snapshot_fetch_timeout_ms: u64,
    /// Seeds the core's own PRNG (election jitter); never read from the environment.
    pub seed: u64,
    /// Deliberate bugs (simulator self-tests only).
    pub bugs: Bugs,
}

/// Why a [`Config`] was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The relationship named is violated.
    #[error("invalid Paxos configuration: {0}")]
    Invalid(&'static str),
}

impl Config {
    /// The defaults of DESIGN §7 for replica `me` of `members`.
    #[must_use]
    pub fn new(me: NodeId, members: Vec<NodeId>) -> Config {
        Config {
            me,
            members,
            joining: false,
            master_lease_ms: MASTER_LEASE_MS_DEFAULT,
            heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS_DEFAULT,
            election_timeout_ms: ELECTION_TIMEOUT_MS_DEFAULT,
            election_jitter_ms: ELECTION_JITTER_MS_DEFAULT,
            drift_ppm: DRIFT_PPM_DEFAULT,
            boost_interval_ms: BOOST_INTERVAL_MS_DEFAULT,
            retry_interval_ms: 200,
            window: 16,
            batch_commands_max: 1_024,
            batch_bytes_max: 512 * 1024,
            queue_commands_max: 65_536,
            catchup_entries_max: 64,
            catchup_bytes_max: 512 * 1024,
            snapshot_fetch_timeout_ms: 60_000,
            seed: u64::from(me.0),
            bugs: Bugs::default(),
        }
    }

    /// Checks every relationship the protocol relies on: [`Config::validate_safety`] plus the
    /// timing relationships that keep a healthy cell quiet. An operator's configuration must
    /// pass this.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first violated relationship.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_safety()?;
        // Followers wait out a lease (with the drift margin) before campaigning, so they do
        // not bang on acceptors that must refuse them. Safety does not depend on it
        // (acceptors refuse promises during a lease), so the simulator may break it on
        // purpose.
        if self.election_timeout_ms
            < self.master_lease_ms + drift_margin_ms(self.master_lease_ms, self.drift_ppm)
        {
            return Err(ConfigError::Invalid(
                "election timeout below the master lease plus its drift margin",
            ));
        }
        if self.election_jitter_ms == 0 {
            return Err(ConfigError::Invalid(
                "election jitter must be at least 1 ms",
            ));
        }
        Ok(())
    }

    /// Checks the relationships safety relies on; [`super::Replica::new`] enforces these.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first violated relationship.
    pub fn validate_safety(&self) -> Result<(), ConfigError> {
        let check = |ok: bool, what: &'static str| if ok { Ok(()) } else { Err(what) };
        check(
            self.joining || self.members.contains(&self.me),
            "members must include me",
        )
        .and(check(
            !self.members.is_empty() && self.members.len() <= 9,
            "1 to 9 members",
        ))
        .and(check(
            self.members.windows(2).all(|w| w[0] < w[1]),
            "members sorted, unique",
        ))
        .and(check(self.drift_ppm < 1_000_000, "drift bound below 100%"))
        .and(check(
            2 * self.heartbeat_interval_ms < self.master_lease_ms,
            "two heartbeats must fit in a master lease",
        ))
        .and(check(self.window >= 1, "window at least 1"))
        .and(check(
            self.window as u64 <= super::MEMBERSHIP_DELAY,
            "window at most MEMBERSHIP_DELAY (a master must know the member set of every \
                 slot it proposes)",
        ))
        .and(check(
            self.batch_commands_max >= 1,
            "batch at least 1 command",
        ))
        .and(check(
            self.catchup_entries_max >= 1,
            "catch-up at least 1 entry",
        ))
        .map_err(ConfigError::Invalid)
    }

    /// Votes needed for a majority of the members.
    #[must_use]
    pub fn majority(&self) -> usize {
        self.members.len() / 2 + 1
    }

    /// How long the master may believe its lease after sending, on its own clock:
    /// `master_lease_ms * (1 - ε) / (1 + ε)`, rounded down.
    #[must_use]
    pub fn master_lease_believed_ms(&self) -> u64 {
        let million = 1_000_000u128;
        let eps = u128::from(self.drift_ppm);
        let believed = u128::from(self.master_lease_ms) * (million - eps) / (million + eps);
        u64::try_from(believed).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Config {
        Config::new(NodeId(1), vec![NodeId(1), NodeId(2), NodeId(3)])
    }

    #[test]
    fn defaults_validate() {
        assert_eq!(three().validate(), Ok(()));
        assert_eq!(three().majority(), 2);
    }

    #[test]
    fn believed_lease_is_shorter_by_the_drift_bound() {
        let mut c = three();
        c.master_lease_ms = 1_000;
        // 1000 * 0.99 / 1.01 = 980.19...
        assert_eq!(c.master_lease_believed_ms(), 980);
        // 300 * 0.99 / 1.01 = 294.05...
        assert_eq!(three().master_lease_believed_ms(), 294);
    }

    #[test]
    fn bad_relationships_are_refused() {
        let mut c = three();
        c.heartbeat_interval_ms = 150;
        assert!(c.validate().is_err());
        let mut c = three();
        // The lease plus 2·1%·300 ms + 1 ms: campaigning a millisecond earlier could meet
        // an acceptor whose grant from the same heartbeat still runs.
        assert_eq!(c.election_timeout_ms, 307);
        c.election_timeout_ms = 306;
        assert!(c.validate().is_err());
        let mut c = three();
        c.election_jitter_ms = 0;
        assert!(c.validate().is_err());
        let mut c = three();
        c.members = vec![NodeId(2), NodeId(3)];
        assert!(c.validate().is_err());
        let mut c = three();
        c.window = super::super::MEMBERSHIP_DELAY as usize;
        assert_eq!(c.validate(), Ok(()));
        c.window += 1;
        assert!(c.validate_safety().is_err());
    }
}
