//! A pure Multi-Paxos replica (Paxos Made Live §3–5; DESIGN §2).
//!
//! ```text
//!  Input::Submit(cmd) ──► master: queue ─► batch ─► propose(slot) ──Persist,Send Accept──►
//!  Input::Peer(msg)   ──► acceptor: Prepare/Accept/Heartbeat ──Persist, then Send reply──►
//!                     ──► master: Promise/Accepted/Nack/HeartbeatAck ─► chosen, lease
//!                     ──► learner: commit watermark, catch-up replies ─► Deliver(slot)
//!                     ──► rebuild: disk-loss rule (no vote until safe)
//!  Input::Tick        ──► timers: election, heartbeat, boost, resends, catch-up, rebuild
//!  Input::Snapshot*   ──► snapshot: truncate the log / adopt a fetched snapshot
//! ```
//!
//! The replica never touches a clock, disk, socket or random source: `now` arrives with every
//! input, writes leave as [`Action::Persist`], messages as [`Action::Send`]. The shell executes
//! actions **in order**, and a `Persist` must be durable before any later `Send` runs. Merging
//! several `Persist`s into one sync, and moving a `Persist` *earlier*, are always allowed
//! (group commit); moving one later never is.
//!
//! # Invariants (checked by [`Replica::check_invariants`] and the simulator)
//! - `delivered <= chosen_through`, and every slot after `truncated` up to `chosen_through`
//!   has a log entry holding its chosen value; values are delivered in slot order, once per
//!   slot per start.
//! - A promise or accept reply is sent only after the state it reports was persisted.
//! - An acceptor refuses to promise another replica's ballot while a lease it granted runs,
//!   and for one lease after it starts (it forgot what it granted).
//! - The master believes its lease for `master_lease_ms·(1-ε)/(1+ε)` from before it sent.
//! - A replica whose store was lost sends no promise, accept or lease ack until the rebuild
//!   rule ([`rebuild`]) is met.
//! - The log holds nothing at or below `truncated`, and `truncated <= delivered`: only what
//!   the application has durably snapshotted is ever dropped ([`snapshot`]).
//!
//! # The master epoch
//! The epoch is the ballot with which a replica *became* master. Boosting (PML §5.2) raises
//! the ballot but keeps the epoch, because PML §5.3 defines the epoch as unchanged exactly
//! while one replica stays master.
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

mod acceptor;
pub mod config;
pub mod durable;
mod learner;
mod master;
pub mod membership;
mod rebuild;
pub mod rng;
mod snapshot;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use chubby_protocol::{
    Ballot, Instant, MemberAddr, MemberChange, MemberSets, NodeId, PaxosMsg, PromiseEntry, Slot,
    Value,
};

pub use config::{Bugs, Config, ConfigError};
pub use durable::{DurableState, LogEntry, PersistBatch};
pub use membership::{ChangeRefusal, Membership, MEMBERSHIP_DELAY};

/// Something that happened to the replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Time passed; the shell delivers it no later than [`Replica::next_deadline`].
    Tick,
    /// A message from another member.
    Peer {
        /// The authenticated sender.
        from: NodeId,
        /// The message.
        msg: PaxosMsg,
    },
    /// A command to append to the log (PML Fig. 2 `submit`).
    Submit {
        /// The encoded command; opaque to Paxos.
        command: Vec<u8>,
    },
    /// The application made a snapshot durable that covers every slot through `slot`: the
    /// log may drop them (PML §5.5). The shell may pass a slot below the snapshot's to keep
    /// a tail of the log for peers that lag a little.
    SnapshotTaken {
        /// Every slot through this one may be dropped.
        slot: Slot,
    },
    /// The application durably installed a peer's snapshot covering every slot through
    /// `slot`, after [`Action::FetchSnapshot`]. Delivery resumes at `slot + 1`.
    SnapshotInstalled {
        /// The snapshot's slot.
        slot: Slot,
        /// The member sets its creator knew when it took it (empty for an old snapshot):
        /// the values that carried those changes are skipped by the install.
        members: MemberSets,
    },
    /// The fetch asked for by [`Action::FetchSnapshot`] failed; catch-up starts over.
    SnapshotFetchFailed,
    /// The application saw another master's epoch start in the log after this replica
    /// became master in `epoch`: another replica led meanwhile, so this one's epoch is stale
    /// (its commands would be refused) and it steps down, if it is still master in `epoch`.
    StepDown {
        /// The epoch the application knows this replica as master of.
        epoch: Ballot,
    },
}

/// Why a submitted command was not taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// This replica is not master; `hint` is the master it last heard from.
    NotMaster {
        /// The probable master.
        hint: Option<NodeId>,
    },
    /// The master's queue is full.
    Busy,
}

/// The replica's role, as reported by [`Action::Role`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleKind {
    /// Accepting, learning, waiting for a master.
    Follower,
    /// Running phase 1 to become master.
    Candidate,
    /// Master: phase 1 done for its ballot.
    Master,
}

/// What the shell must do, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Make the batch durable (fsync) before executing any later action.
    Persist(PersistBatch),
    /// Send a message to a member. Best effort: loss is tolerated.
    Send {
        /// The receiver.
        to: NodeId,
        /// The message.
        msg: PaxosMsg,
    },
    /// `value` is chosen for `slot`. Slots arrive contiguously from the slot after the
    /// `applied` slot given to [`Replica::new`] (and after an [`Input::SnapshotInstalled`],
    /// from the slot after the snapshot), each once per start of the replica.
    Deliver {
        /// The instance.
        slot: Slot,
        /// Its chosen value.
        value: Value,
    },
    /// A submitted command will not be proposed.
    Rejected {
        /// The command, returned.
        command: Vec<u8>,
        /// Why.
        reason: Rejection,
    },
    /// The log this replica needs was truncated at `from`: fetch `from`'s snapshot (it
    /// covers more than `after`), install it durably, then feed
    /// [`Input::SnapshotInstalled`] (or [`Input::SnapshotFetchFailed`]).
    FetchSnapshot {
        /// The peer to fetch from.
        from: NodeId,
        /// What the application already has: a snapshot at or below it is useless.
        after: Slot,
    },
    /// The replica's role changed; `epoch` is set while master.
    Role {
        /// The new role.
        role: RoleKind,
        /// The master epoch, when master.
        epoch: Option<Ballot>,
    },
}

/// Phase 1 in progress: an election, or a master's boost.
#[derive(Clone, Debug)]
struct Phase1 {
    ballot: Ballot,
    from_slot: Slot,
    promises: BTreeMap<NodeId, PromiseInfo>,
    retry_at: Instant,
}

#[derive(Clone, Debug)]
struct PromiseInfo {
    chosen_through: Slot,
    entries: Vec<PromiseEntry>,
}

/// One proposed, not yet chosen instance.
#[derive(Clone, Debug)]
struct Inflight {
    value: Value,
    acks: BTreeSet<NodeId>,
    resend_at: Instant,
}

/// Lease rounds sent and acked; the master's belief in its lease.
#[derive(Clone, Debug, Default)]
struct LeaseTracker {
    until: Option<Instant>,
    next_seq: u64,
    rounds: BTreeMap<u64, (Instant, BTreeSet<NodeId>)>,
}

/// Lease rounds remembered; older unacked rounds are forgotten (which only shortens the
/// lease, never lengthens it).
const LEASE_ROUNDS_MAX: usize = 64;

#[derive(Clone, Debug)]
struct MasterState {
    ballot: Ballot,
    epoch: Ballot,
    boost: Option<Phase1>,
    next_slot: Slot,
    inflight: BTreeMap<Slot, Inflight>,
    queue: VecDeque<Vec<u8>>,
    lease: LeaseTracker,
    heartbeat_at: Instant,
    boost_at: Instant,
    noop_wanted: bool,
    /// A membership change waiting for a slot (proposed before the queue's commands).
    change: Option<MemberChange>,
}

#[derive(Clone, Debug)]
enum Role {
    Follower,
    Candidate(Phase1),
    Master(Box<MasterState>),
}

/// Progress of the disk-loss rule.
#[derive(Clone, Debug)]
struct Rebuild {
    nonce: u64,
    replies: BTreeMap<NodeId, (Ballot, Slot)>,
    /// The newest sets replies named: the members of each one our map does not know to be
    /// superseded must answer.
    named: BTreeSet<Vec<NodeId>>,
    target: Option<Slot>,
    retry_at: Instant,
}

#[derive(Clone, Debug, Default)]
struct CatchUp {
    source: Option<NodeId>,
    retry_at: Option<Instant>,
    rotate: usize,
    requested_through: Slot,
    /// A snapshot fetch is under way (until `retry_at`): no catch-up requests meanwhile.
    fetching: bool,
}

/// A Multi-Paxos replica: acceptor, master (distinguished proposer) and learner in one.
#[derive(Debug)]
pub struct Replica {
    cfg: Config,
    /// Who votes for which slots; every quorum decision asks it.
    membership: Membership,
    /// Replicas outside the member sets that contacted us (a replica about to be added,
    /// catching up): they hear heartbeats, so they learn what is chosen.
    warm: BTreeSet<NodeId>,
    rng: rng::SplitMix64,
    last_now: Option<Instant>,
    promise_not_before: Instant,
    // Acceptor.
    voter: bool,
    promised: Ballot,
    max_seen: Ballot,
    log: BTreeMap<Slot, LogEntry>,
    truncated: Slot,
    lease_granted: Option<(Ballot, Instant)>,
    // Learner.
    chosen_through: Slot,
    chosen_above: BTreeMap<Slot, Value>,
    delivered: Slot,
    known_chosen_through: Slot,
    catchup: CatchUp,
    // Roles.
    role: Role,
    last_master: Option<NodeId>,
    election_at: Option<Instant>,
    rebuild: Option<Rebuild>,
    /// Written at the first step: a snapshot the application holds beyond the durable
    /// chosen prefix (it crashed between installing one and [`Input::SnapshotInstalled`]).
    startup_persist: Option<PersistBatch>,
}

impl Replica {
    /// A replica resuming from `durable`, as loaded by the shell, whose application state
    /// already reflects every slot through `applied` (its snapshot; [`Slot::ZERO`] when it
    /// has none). Delivery starts at `applied + 1`.
    ///
    /// # Errors
    /// The configuration is invalid, the durable state fails its structural checks, or the
    /// log was truncated beyond `applied` (the application lost its snapshot: the shell
    /// must treat the store as lost).
    pub fn new(cfg: Config, durable: DurableState, applied: Slot) -> Result<Replica, ConfigError> {
        cfg.validate_safety()?;
        durable
            .validate()
            .map_err(|_| ConfigError::Invalid("durable state is inconsistent"))?;
        if applied < durable.truncated_through {
            return Err(ConfigError::Invalid(
                "log truncated beyond the application's snapshot",
            ));
        }
        let mut durable = durable;
        let mut startup_persist = None;
        if applied > durable.chosen_through {
            // The snapshot is a chosen prefix (it came from a peer's applied state): adopt
            // it as chosen and truncated, exactly as the batch will on disk.
            let batch = PersistBatch {
                chosen_through: Some(applied),
                truncate_through: Some(applied),
                ..PersistBatch::default()
            };
            durable.apply(&batch);
            startup_persist = Some(batch);
        }
        let voter = durable.voter;
        let founders = if cfg.joining {
            Vec::new()
        } else {
            cfg.members.clone()
        };
        let mut membership = Membership::from_wire(&durable.members, founders);
        // The sets are stored when they change; the slots chosen since are read again.
        for (slot, entry) in durable.log.range(..=durable.chosen_through) {
            membership.observe(*slot, entry.value.change.as_ref());
        }
        let rng = rng::SplitMix64::new(cfg.seed ^ 0xC4B8_B1E5);
        let rebuild = (!voter).then(|| Rebuild {
            nonce: cfg.seed.rotate_left(17) ^ durable.promised.round,
            replies: BTreeMap::new(),
            named: BTreeSet::new(),
            target: None,
            retry_at: Instant::ZERO,
        });
        Ok(Replica {
            membership,
            warm: BTreeSet::new(),
            rng,
            last_now: None,
            promise_not_before: Instant::ZERO,
            voter,
            promised: durable.promised,
            max_seen: durable.promised,
            log: durable.log,
            truncated: durable.truncated_through,
            lease_granted: None,
            chosen_through: durable.chosen_through,
            chosen_above: BTreeMap::new(),
            delivered: applied,
            known_chosen_through: durable.chosen_through,
            catchup: CatchUp::default(),
            role: Role::Follower,
            last_master: None,
            election_at: None,
            rebuild,
            startup_persist,
            cfg,
        })
    }

    /// Adopts the member sets of the snapshot the application restored at start (the
    /// snapshot's creator knew them; the values that carried them may be gone from every
    /// log). Call right after [`Replica::new`], before the first step.
    #[must_use]
    pub fn with_snapshot_members(mut self, members: &MemberSets) -> Replica {
        if self.membership.merge(members) || members.complete_through > Slot::ZERO {
            self.observe_logged_chosen();
            let batch = PersistBatch {
                members: Some(self.membership.to_wire()),
                ..PersistBatch::default()
            };
            match &mut self.startup_persist {
                Some(b) => b.merge(batch),
                None => self.startup_persist = Some(batch),
            }
        }
        self
    }

    /// Feeds one input; appends the actions it causes to `out`, in execution order.
    pub fn step(&mut self, now: Instant, input: Input, out: &mut Vec<Action>) {
        self.observe_time(now);
        if let Some(batch) = self.startup_persist.take() {
            Self::persist(out, batch);
        }
        match input {
            Input::Tick => self.on_tick(now, out),
            Input::Peer { from, msg } => self.on_peer(now, from, msg, out),
            Input::Submit { command } => self.on_submit(now, command, out),
            Input::SnapshotTaken { slot } => self.on_snapshot_taken(slot, out),
            Input::SnapshotInstalled { slot, members } => {
                self.on_snapshot_installed(now, slot, &members, out);
            }
            Input::SnapshotFetchFailed => self.on_snapshot_fetch_failed(now),
            Input::StepDown { epoch } => self.on_step_down(now, epoch, out),
        }
        self.advance_chosen(now, out);
        // Phase 1 may have waited for the member sets that this input completed.
        self.maybe_complete_phase1(now, out);
        self.tick_catchup(now, out);
        self.pump(now, out);
        // A single-member cell chooses while pumping.
        self.advance_chosen(now, out);
        if cfg!(debug_assertions) {
            self.check_invariants();
        }
    }

    /// The latest time by which [`Input::Tick`] must be delivered.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        let rebuild = self.rebuild.as_ref().map(|r| r.retry_at);
        let role = match &self.role {
            Role::Follower => None,
            Role::Candidate(p1) => Some(p1.retry_at),
            // While boosting, phase 1's retry replaces the boost timer and the resends.
            Role::Master(m) => match &m.boost {
                Some(p1) => Some(p1.retry_at.min(m.heartbeat_at)),
                None => {
                    let resend = m.inflight.values().map(|i| i.resend_at).min();
                    [Some(m.heartbeat_at), Some(m.boost_at), resend]
                        .into_iter()
                        .flatten()
                        .min()
                }
            },
        };
        let election = self
            .election_at
            .filter(|_| matches!(self.role, Role::Follower));
        [election, self.catchup.retry_at, rebuild, role]
            .into_iter()
            .flatten()
            .min()
    }

    /// This replica's id.
    #[must_use]
    pub fn id(&self) -> NodeId {
        self.cfg.me
    }

    /// The current role.
    #[must_use]
    pub fn role(&self) -> RoleKind {
        match self.role {
            Role::Follower => RoleKind::Follower,
            Role::Candidate(_) => RoleKind::Candidate,
            Role::Master(_) => RoleKind::Master,
        }
    }

    /// The master epoch, while master.
    #[must_use]
    pub fn epoch(&self) -> Option<Ballot> {
        match &self.role {
            Role::Master(m) => Some(m.epoch),
            _ => None,
        }
    }

    /// The end of the master lease this replica believes it holds at `now`, if any. While
    /// this is `Some`, no other replica can get a value chosen (PML §5.2).
    #[must_use]
    pub fn lease_until(&self, now: Instant) -> Option<Instant> {
        match &self.role {
            Role::Master(m) => m.lease.until.filter(|&until| now < until),
            _ => None,
        }
    }

    /// The highest ballot promised.
    #[must_use]
    pub fn promised(&self) -> Ballot {
        self.promised
    }

    /// Every slot up to this one is known chosen here.
    #[must_use]
    pub fn chosen_through(&self) -> Slot {
        self.chosen_through
    }

    /// The highest slot this replica has heard is chosen (its catch-up target).
    #[must_use]
    pub fn known_chosen_through(&self) -> Slot {
        self.known_chosen_through.max(self.chosen_through)
    }

    /// Log entries held.
    #[must_use]
    pub fn log_len(&self) -> usize {
        self.log.len()
    }

    /// The log holds nothing at or below this slot.
    #[must_use]
    pub fn truncated_through(&self) -> Slot {
        self.truncated
    }

    /// The last slot handed to the application.
    #[must_use]
    pub fn delivered(&self) -> Slot {
        self.delivered
    }

    /// The member sets and the addresses learned with them.
    #[must_use]
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Proposes a new member set: the newest one with exactly one replica added or removed,
    /// in effect [`MEMBERSHIP_DELAY`] slots after the slot that chooses it. `addrs` tells
    /// every replica where new members listen. The master fills the slots in between with
    /// no-ops, so the change takes effect even in an idle cell.
    ///
    /// # Errors
    /// [`ChangeRefusal`]: not the master, another change still pending, or not a
    /// single-replica change of the newest set.
    pub fn propose_change(
        &mut self,
        now: Instant,
        members: Vec<NodeId>,
        addrs: Vec<MemberAddr>,
        out: &mut Vec<Action>,
    ) -> Result<(), ChangeRefusal> {
        self.observe_time(now);
        if !matches!(self.role, Role::Master(_)) {
            return Err(ChangeRefusal::NotMaster {
                hint: self.last_master,
            });
        }
        if self.change_pending() {
            return Err(ChangeRefusal::Pending);
        }
        self.membership.check_change(&members)?;
        tracing::info!(me = %self.cfg.me, members = ?members, "proposing a membership change");
        if let Role::Master(m) = &mut self.role {
            m.change = Some(MemberChange { members, addrs });
        }
        self.pump(now, out);
        self.advance_chosen(now, out);
        Ok(())
    }

    /// Whether a membership change is proposed, or chosen but not yet in effect.
    #[must_use]
    pub fn change_pending(&self) -> bool {
        let next = self.chosen_through.next();
        self.membership.newest_from() > next
            || self
                .log
                .range(next..)
                .any(|(_, e)| e.value.change.is_some())
            || self.chosen_above.values().any(|v| v.change.is_some())
            || matches!(&self.role, Role::Master(m) if m.change.is_some())
    }

    /// False while rebuilding after disk loss.
    #[must_use]
    pub fn is_voter(&self) -> bool {
        self.voter
    }

    /// The master this replica last heard from.
    #[must_use]
    pub fn master_hint(&self) -> Option<NodeId> {
        match self.role {
            Role::Master(_) => Some(self.cfg.me),
            _ => self.last_master,
        }
    }

    /// Structural invariants; cheap. Called after every step in debug builds and by the
    /// simulator after every event.
    ///
    /// # Panics
    /// When an invariant is broken: that is a bug in this module.
    pub fn check_invariants(&self) {
        assert!(
            self.delivered <= self.chosen_through,
            "delivered beyond chosen"
        );
        if let Some((&first_above, _)) = self.chosen_above.first_key_value() {
            assert!(
                first_above > self.chosen_through.next(),
                "chosen_above not pruned"
            );
        }
        if self.chosen_through > self.truncated {
            assert!(
                self.log.contains_key(&self.chosen_through),
                "chosen slot has no entry"
            );
        }
        assert!(!self.log.contains_key(&Slot::ZERO), "slot 0 used");
        assert!(
            self.truncated <= self.delivered,
            "truncated beyond delivered"
        );
        assert!(
            self.log
                .first_key_value()
                .is_none_or(|(s, _)| *s > self.truncated),
            "entry kept at or below the truncation point"
        );
        assert!(
            self.voter == self.rebuild.is_none(),
            "rebuild state out of step with voter"
        );
        if let Role::Master(m) = &self.role {
            assert!(m.ballot >= m.epoch, "master ballot below its epoch");
            assert!(m.ballot.node == self.cfg.me, "master with a foreign ballot");
            assert!(
                self.promised >= m.ballot,
                "master ballot not promised by itself"
            );
            assert!(
                m.queue.len() <= self.cfg.queue_commands_max,
                "queue over its bound"
            );
            for slot in m.inflight.keys() {
                assert!(*slot < m.next_slot, "in-flight slot not yet allocated");
                assert!(*slot > self.chosen_through, "in-flight slot already chosen");
            }
        }
        if let Role::Candidate(p1) = &self.role {
            assert!(
                p1.ballot.node == self.cfg.me,
                "candidate with a foreign ballot"
            );
        }
    }

    fn observe_time(&mut self, now: Instant) {
        match self.last_now {
            None => {
                // We forgot any lease we granted before this start: promise nothing to
                // anyone for one lease (DESIGN §7).
                self.promise_not_before = now.plus_ms(self.cfg.master_lease_ms);
                // Twice the usual wait: a running master's heartbeats reach a restarted
                // replica first (its peers' connections to it are being replaced), so a
                // restart costs the cell no election.
                let wait = self.cfg.election_timeout_ms + self.election_wait();
                self.election_at = Some(now.plus_ms(wait));
            }
            Some(last) => assert!(now >= last, "time went backwards: {last} then {now}"),
        }
        self.last_now = Some(now);
    }

    fn on_peer(&mut self, now: Instant, from: NodeId, msg: PaxosMsg, out: &mut Vec<Action>) {
        if from == self.cfg.me {
            tracing::debug!(%from, kind = msg.kind(), "ignoring a message from myself");
            return;
        }
        // Any replica of the cell may talk to us (the transport checked its certificate);
        // its votes count only where it is a member. One outside the sets is warming up.
        let next = self.chosen_through.next();
        if !self.warm.contains(&from)
            && !self.membership.is_current(next, from)
            && self.warm.insert(from)
        {
            tracing::info!(me = %self.cfg.me, %from, "a replica outside the member set is catching up from us");
        }
        match msg {
            PaxosMsg::Prepare { ballot, from_slot } => {
                self.on_prepare(now, from, ballot, from_slot, out);
            }
            PaxosMsg::Promise {
                ballot,
                chosen_through,
                entries,
                members,
            } => {
                self.merge_members(from, &members, out);
                self.on_promise(
                    now,
                    from,
                    ballot,
                    PromiseInfo {
                        chosen_through,
                        entries,
                    },
                    out,
                );
            }
            PaxosMsg::Accept {
                ballot,
                slot,
                value,
                chosen_through,
                lease_seq,
            } => {
                let accept = acceptor::AcceptMsg {
                    ballot,
                    slot,
                    value,
                    chosen_through,
                    lease_seq,
                };
                self.on_accept(now, from, accept, out);
            }
            PaxosMsg::Accepted {
                ballot,
                slot,
                lease_seq,
            } => {
                self.on_accepted(now, from, ballot, slot, lease_seq);
            }
            PaxosMsg::Heartbeat {
                ballot,
                chosen_through,
                lease_seq,
            } => {
                self.on_heartbeat(now, from, ballot, chosen_through, lease_seq, out);
            }
            PaxosMsg::HeartbeatAck { ballot, lease_seq } => {
                self.on_heartbeat_ack(now, from, ballot, lease_seq);
            }
            PaxosMsg::Nack {
                ballot,
                promised,
                lease_held,
            } => {
                self.on_nack(now, from, ballot, promised, lease_held, out);
            }
            PaxosMsg::CatchUpRequest {
                from_slot,
                entries_max,
            } => {
                self.serve_catchup(from, from_slot, entries_max, out);
            }
            PaxosMsg::CatchUpReply {
                entries,
                chosen_through,
                truncated_through,
                members,
            } => {
                let reply = learner::CatchUpReplyMsg {
                    entries,
                    chosen_through,
                    truncated_through,
                    members,
                };
                self.on_catchup_reply(now, from, reply, out);
            }
            PaxosMsg::RebuildQuery { nonce } => self.serve_rebuild_query(from, nonce, out),
            PaxosMsg::RebuildReply {
                nonce,
                promised,
                accepted_through,
                newest,
            } => {
                let reply = (promised, accepted_through, newest);
                self.on_rebuild_reply(from, nonce, reply, out);
            }
        }
    }

    fn on_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.tick_catchup(now, out);
        self.tick_rebuild(now, out);
        match &self.role {
            Role::Follower => {
                if self.election_at.is_some_and(|at| now >= at) {
                    if self.can_campaign(now) {
                        self.start_election(now, out);
                    } else {
                        let newest = self.membership.newest();
                        if !newest.is_empty() && !newest.contains(&self.cfg.me) {
                            self.ask_for_news(out);
                        }
                        let wait = self.election_wait();
                        self.election_at = Some(now.plus_ms(wait));
                    }
                }
            }
            Role::Candidate(_) => self.tick_candidate(now, out),
            Role::Master(_) => self.tick_master(now, out),
        }
    }

    /// A random election wait in `[t, t + jitter)`: counted from the last word of a
    /// master (when the lease granted with it began), it ends once that lease can have
    /// lapsed on every acceptor (see [`config::drift_margin_ms`]).
    fn election_wait(&mut self) -> u64 {
        let t = self.cfg.election_timeout_ms;
        self.rng.range(t, t + self.cfg.election_jitter_ms.max(1))
    }

    /// Whether this replica currently counts as a voter (the bug switch can fake it).
    fn voting(&self) -> bool {
        self.voter || (cfg!(feature = "bug-injection") && self.cfg.bugs.skip_no_vote_rule)
    }

    fn note_ballot(&mut self, ballot: Ballot) {
        self.max_seen = self.max_seen.max(ballot);
    }

    fn send(out: &mut Vec<Action>, to: NodeId, msg: PaxosMsg) {
        out.push(Action::Send { to, msg });
    }

    /// Adopts what a peer's member sets add to ours (persisted, so a restart keeps them).
    fn merge_members(
        &mut self,
        from: NodeId,
        members: &chubby_protocol::MemberSets,
        out: &mut Vec<Action>,
    ) {
        let learned = self.membership.merge(members);
        // The map may now be complete just below chosen slots we delivered while it was
        // not (after a snapshot install skipped values): judge them now, from the log, as
        // delivery would have. Left for later, they could be truncated away, leaving every
        // replica's map short of its chosen prefix and no replica able to campaign.
        let observed = self.observe_logged_chosen();
        if !learned && !observed {
            return;
        }
        tracing::info!(me = %self.cfg.me, %from, newest = ?self.membership.newest(),
            "member sets learned from a peer");
        self.on_membership_learned();
        Self::persist(
            out,
            PersistBatch {
                members: Some(self.membership.to_wire()),
                ..PersistBatch::default()
            },
        );
    }

    /// Extends the member map over chosen slots still in the log, in slot order. Returns
    /// whether a set changed (a raised completeness alone is recomputed from the log at the
    /// next start, so it need not be stored).
    fn observe_logged_chosen(&mut self) -> bool {
        let mut changed = false;
        loop {
            let next = self.membership.complete_through().next();
            if next > self.chosen_through {
                return changed;
            }
            let Some(entry) = self.log.get(&next) else {
                return changed;
            };
            changed |= self.membership.observe(next, entry.value.change.as_ref());
            if self.membership.complete_through() < next {
                return changed;
            }
        }
    }

    /// Members of every set from the next unchosen slot on, and of the newest set.
    fn current_members(&self) -> BTreeSet<NodeId> {
        let mut members = self.membership.members_from(self.chosen_through.next());
        members.extend(self.membership.newest().iter().copied());
        members
    }

    /// Whom the replica talks to: the current members, warm replicas and (while joining,
    /// before it knows the sets) the replicas its configuration names; never itself.
    fn peers(&self) -> Vec<NodeId> {
        let mut peers = self.current_members();
        peers.extend(self.warm.iter().copied());
        if self.membership.newest().is_empty() {
            peers.extend(self.cfg.members.iter().copied());
        }
        peers.remove(&self.cfg.me);
        peers.into_iter().collect()
    }

    fn broadcast(&self, out: &mut Vec<Action>, msg: &PaxosMsg) {
        for to in self.peers() {
            out.push(Action::Send {
                to,
                msg: msg.clone(),
            });
        }
    }

    fn persist(out: &mut Vec<Action>, batch: PersistBatch) {
        if !batch.is_empty() {
            out.push(Action::Persist(batch));
        }
    }

    /// Emits `persist` then `reply`, the order durability demands (or the reverse under the
    /// `reply_before_persist` bug).
    fn persist_then_send(
        &self,
        out: &mut Vec<Action>,
        batch: PersistBatch,
        to: NodeId,
        reply: PaxosMsg,
    ) {
        if cfg!(feature = "bug-injection") && self.cfg.bugs.reply_before_persist {
            Self::send(out, to, reply);
            Self::persist(out, batch);
        } else {
            Self::persist(out, batch);
            Self::send(out, to, reply);
        }
    }
}

#[cfg(test)]
mod tests;
