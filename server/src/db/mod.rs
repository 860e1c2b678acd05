//! The replicated database: Chubby's data model as a pure, deterministic state machine
//! (Chubby §2.3–2.6, §2.9; PML §5.3, §5.5–5.6; DESIGN §3).
//!
//! ```text
//!   Paxos Deliver{slot, value} ─► for each encoded command in value:
//!        Command::decode ─► Db::apply(slot, &cmd) ─► Applied { result, changes }
//!                                 │                        │         └─► master: events,
//!      epoch guard ── StaleEpoch ─┤                        │             invalidations,
//!      time: assert now ≥ last,   │                        │             replies to parked
//!            end due lock-delays ─┤                        │             Acquires
//!      dispatch on Op ────────────┘                        └─► reply to the proposer
//!             │
//!   namespace (nodes, metadata) · acl · sessions (handles) · locks (FIFO, lock-delay)
//!
//!   Db::freeze ─► Frozen (one pointer per 512 entries) ─► encode + drop on another thread
//!   Db::restore(bytes) ◄─ checksum verified, structure validated, or an error
//! ```
//!
//! No clock, randomness or I/O: every time value comes stamped in the command, and every
//! id the database hands out (sessions, handles, instance numbers) comes from counters in
//! its own state, so all replicas that apply the same log agree bit for bit (checked by
//! [`Db::digest`]). The database knows nothing of Paxos beyond the slot number it is given.
//!
//! # Results
//! `apply` returns `Result<Outcome, Refusal>`: a [`Refusal`] is an expected answer (the
//! file exists, the CAS lost) and changes nothing except the time (and a StaleEpoch
//! refusal not even that: the command is not applied at all, its stamp unchecked). Programmer errors (a
//! command stamped earlier than the last one, slots going backwards, broken internal
//! invariants) are assertions. Alongside the result come [`Change`]s: what changed, so the
//! master can send invalidations and events without re-deriving them. Changes can come
//! with a refusal (time moved and ended a lock-delay; a TryAcquire conflicted).
//!
//! # Design choices
//! - Handles and sessions live here (see `sessions.rs`), because held locks and ephemeral
//!   nodes must survive fail-over; their ids come from counters.
//! - The lock waiter queue lives here too: a blocked Acquire is a queued waiter, and the
//!   grant to it appears later as [`Change::LockAcquired`] in the result of whichever
//!   command freed the lock (Release, Close, CloseSession, ExpireSession, a waiter ahead
//!   leaving the queue, or any command stamped at or after a lock-delay's end). A wait that
//!   ends without the lock is reported as [`Change::WaitEnded`]. [`Db::next_deadline`]
//!   tells the master when to propose a Noop so that a lock-delay ends on time.
//! - A handle's lock-delay is chosen at Open (Chubby §2.6), defaulting to the cell's
//!   [`DbConfig::lock_delay_ms_default`], bounded by [`LOCK_DELAY_MS_MAX`].
//! - Several commands may share a slot (a Paxos value is a batch). A snapshot covers
//!   whole slots: the shell takes it between values, never inside one.
//!
//! # Invariants (checked by [`Db::check_invariants`] after every apply in debug builds)
//! - Those of `namespace`, `sessions` and `locks`, and across them: every lock belongs to
//!   a live node and every holder or waiter is a live handle of that node, in its session;
//!   a handle is an opener of its instance iff that node is alive.
//! - No ephemeral file without an opener; no ephemeral directory that is empty and
//!   unopened.
//! - Applied slots and stamped times never decrease.
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

mod acl;
pub mod calls;
pub mod command;
pub mod cow_map;
pub mod locks;
pub mod namespace;
mod ops_locks;
mod ops_nodes;
mod ops_rename;
mod ops_sessions;
mod queries;
pub mod sessions;
pub mod snapshot;
mod snapshot_v2;

#[cfg(test)]
mod model;
#[cfg(test)]
mod proptests;
#[cfg(test)]
pub(crate) mod tests;

use std::sync::Arc;

use bincode::{Decode, Encode};
use chubby_protocol::db::LOCK_DELAY_MS_MAX;
use chubby_protocol::{
    AclNames, Ballot, Generation, HandleId, InstanceNumber, Instant, LockMode, NodeKind, Refusal,
    Sequencer, SessionId, Slot, Stat,
};

pub use command::{Command, Op, OpenArgs};
pub use locks::ReleaseCause;
pub use snapshot::{Frozen, SnapshotError, SnapshotInfo};

use namespace::{Namespace, Node};
use sessions::{Handle, Sessions};

/// Returns `Err(message)` from a validation function when `cond` is false.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}
pub(crate) use ensure;

/// Cell-wide settings of the database, fixed when the cell is created and carried in
/// every snapshot (every replica must apply the log under the same ones).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct DbConfig {
    /// The principal that may do anything; `/acl/admin` names it at the start.
    pub admin: String,
    /// Lock-delay of handles that ask for none.
    pub lock_delay_ms_default: u64,
    /// A deliberate bug for the simulator's self-test (only with the `bug-injection`
    /// feature): every handle gets lock-delay 0 whatever it asked for.
    pub bug_ignore_lock_delay: bool,
    /// A deliberate bug for the simulator's self-test (only with the `bug-injection`
    /// feature): numbered calls are applied but their outcomes never recorded, so a copy
    /// sent again is applied again.
    pub bug_forget_call_outcomes: bool,
}

impl DbConfig {
    /// The defaults (DESIGN §7) with `admin` as the admin principal.
    #[must_use]
    pub fn new(admin: &str) -> DbConfig {
        DbConfig {
            admin: admin.to_owned(),
            lock_delay_ms_default: chubby_protocol::db::LOCK_DELAY_MS_DEFAULT,
            bug_ignore_lock_delay: false,
            bug_forget_call_outcomes: false,
        }
    }
}

/// Why a configuration cannot start a database.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DbConfigError {
    /// The admin principal could not be listed in an ACL file.
    #[error("admin principal {0:?} is empty, too long or contains a line break or NUL")]
    BadAdmin(String),
    /// The default lock-delay is above the bound.
    #[error("default lock-delay {0} ms exceeds {LOCK_DELAY_MS_MAX} ms")]
    LockDelay(u64),
}

/// A digest of the whole database state, for comparing replicas (PML §6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct Digest(pub u64);

/// What a successful command did.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Outcome {
    /// The epoch moved to the command's.
    EpochStarted,
    /// A session was created.
    SessionCreated {
        /// Its id.
        session: SessionId,
    },
    /// The session ended (closed or expired).
    SessionEnded,
    /// A handle was opened.
    Opened {
        /// The handle.
        handle: HandleId,
        /// True if Open created the node.
        created: bool,
        /// The node's metadata.
        stat: Stat,
    },
    /// The handle was closed.
    Closed,
    /// The contents were replaced.
    ContentsSet {
        /// The new metadata.
        stat: Stat,
    },
    /// The node was deleted.
    Deleted,
    /// The ACL names were replaced.
    AclSet {
        /// The new metadata.
        stat: Stat,
    },
    /// POSIX attributes or the ephemeral-children marker were changed.
    AttrsSet {
        /// The new metadata.
        stat: Stat,
    },
    /// The lock was granted.
    Acquired {
        /// Its sequencer.
        sequencer: Sequencer,
    },
    /// The Acquire waits in the queue; the grant comes later as [`Change::LockAcquired`].
    Queued,
    /// The lock was released, or the queued Acquire cancelled.
    Released,
    /// The handle's sequencer was set or cleared.
    SequencerSet,
    /// The file was moved.
    Renamed {
        /// Its metadata at the new path (a new instance number).
        stat: Stat,
    },
    /// Nothing.
    Noop,
    /// The digest at this point of the log.
    Checksum {
        /// The digest.
        digest: Digest,
    },
}

/// Why a queued Acquire ended without a grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WaitEnd {
    /// Release on the waiting handle.
    Cancelled,
    /// The waiting handle was closed.
    HandleClosed,
    /// The waiter's session closed or expired.
    SessionEnded,
    /// The node was deleted.
    NodeDeleted,
}

/// How a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionEnd {
    /// CloseSession.
    Closed,
    /// ExpireSession.
    Expired,
}

/// Something a command changed, reported so the master can invalidate caches and send
/// events (Chubby §2.5, §2.7) without re-deriving them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A node was created (invalidate cached absence; "child added" for its parent).
    Created {
        /// Its path.
        path: Arc<str>,
        /// Its instance.
        instance: InstanceNumber,
        /// File or directory.
        kind: NodeKind,
    },
    /// A file's contents changed ("file contents modified").
    ContentsChanged {
        /// Its path.
        path: Arc<str>,
        /// Its instance.
        instance: InstanceNumber,
        /// The new content generation.
        content_generation: Generation,
    },
    /// A node's ACL names changed (metadata invalidation).
    AclChanged {
        /// Its path.
        path: Arc<str>,
        /// Its instance.
        instance: InstanceNumber,
        /// The new ACL generation.
        acl_generation: Generation,
    },
    /// A node's POSIX attributes or ephemeral-children marker changed (metadata
    /// invalidation).
    AttrsChanged {
        /// Its path.
        path: Arc<str>,
        /// Its instance.
        instance: InstanceNumber,
    },
    /// A node was deleted; handles on it now fail ("handle invalid" for its openers).
    Deleted {
        /// Its path.
        path: Arc<str>,
        /// The instance that is gone.
        instance: InstanceNumber,
        /// The handles that had it open (they stay, bound to nothing).
        handles: Vec<HandleId>,
    },
    /// A file moved; its open handles follow it to the new instance.
    Renamed {
        /// The old path (now absent).
        from: Arc<str>,
        /// The new path.
        to: Arc<str>,
        /// The instance at `from`.
        old_instance: InstanceNumber,
        /// The instance at `to`.
        instance: InstanceNumber,
    },
    /// The set of children of a directory changed ("child added/removed").
    ChildrenChanged {
        /// The directory.
        dir: Arc<str>,
    },
    /// A lock was granted: at once, or to a waiter whose Acquire is parked at the master.
    LockAcquired {
        /// The new holder's session.
        session: SessionId,
        /// The new holder.
        handle: HandleId,
        /// Its sequencer.
        sequencer: Sequencer,
    },
    /// A holder left the lock.
    LockReleased {
        /// The node.
        path: Arc<str>,
        /// Its instance.
        instance: InstanceNumber,
        /// The former holder's session.
        session: SessionId,
        /// The former holder.
        handle: HandleId,
        /// Why; [`ReleaseCause::SessionLost`] starts a lock-delay.
        cause: ReleaseCause,
    },
    /// An Acquire or TryAcquire met a held lock ("conflicting lock request", for holders).
    LockConflict {
        /// The node.
        path: Arc<str>,
        /// Its instance.
        instance: InstanceNumber,
        /// Who asked.
        requester: (SessionId, HandleId),
        /// Who holds it.
        holders: Vec<(SessionId, HandleId)>,
    },
    /// A queued Acquire ended without the lock; the master answers it.
    WaitEnded {
        /// The node.
        path: Arc<str>,
        /// The waiter's session.
        session: SessionId,
        /// The waiter.
        handle: HandleId,
        /// Why.
        reason: WaitEnd,
    },
    /// The database closed a handle because its session ended.
    HandleClosed {
        /// The session.
        session: SessionId,
        /// The handle.
        handle: HandleId,
    },
    /// A session ended.
    SessionEnded {
        /// The session.
        session: SessionId,
        /// How.
        cause: SessionEnd,
    },
}

/// The result of applying one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The outcome, or the expected refusal.
    pub result: Result<Outcome, Refusal>,
    /// What changed, in the order it happened.
    pub changes: Vec<Change>,
}

/// How big the database is ([`Db::counts`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DbCounts {
    /// Files and directories, `/` included.
    pub nodes: usize,
    /// Live sessions.
    pub sessions: usize,
    /// Open handles.
    pub handles: usize,
    /// Locks held, awaited or in lock-delay.
    pub locks: usize,
}

/// The state machine. Cloning it is cheap-ish (O(nodes) pointer copies): see
/// [`Db::freeze`].
#[derive(Clone, Debug, Encode, Decode)]
pub struct Db {
    config: DbConfig,
    epoch: Ballot,
    now: Instant,
    applied: Slot,
    ns: Namespace,
    sessions: Sessions,
    locks: locks::Locks,
    calls: calls::Calls,
}

impl Db {
    /// A new cell's database: `/`, `/acl` and `/acl/admin` naming the admin, all three
    /// ACL names `admin`; epoch zero, nothing applied.
    ///
    /// # Errors
    /// The configuration is unusable.
    pub fn new(config: DbConfig) -> Result<Db, DbConfigError> {
        if !acl::valid_principal(&config.admin) {
            return Err(DbConfigError::BadAdmin(config.admin));
        }
        if config.lock_delay_ms_default > LOCK_DELAY_MS_MAX {
            return Err(DbConfigError::LockDelay(config.lock_delay_ms_default));
        }
        let owners = AclNames::all("admin");
        let mut ns = Namespace::new(Instant::ZERO, owners.clone());
        let acl_dir = ns.allocate_instance();
        ns.insert(
            "/acl",
            Node::new(NodeKind::Directory, acl_dir, Instant::ZERO, owners.clone()),
        );
        let mut admin = Node::new(
            NodeKind::File,
            ns.allocate_instance(),
            Instant::ZERO,
            owners,
        );
        admin.contents = Arc::new(format!("{}\n", config.admin).into_bytes());
        admin.checksum = chubby_protocol::ContentChecksum::of(&admin.contents);
        ns.insert("/acl/admin", admin);
        let db = Db {
            config,
            epoch: Ballot::ZERO,
            now: Instant::ZERO,
            applied: Slot::ZERO,
            ns,
            sessions: Sessions::default(),
            locks: locks::Locks::default(),
            calls: calls::Calls::default(),
        };
        db.check_invariants();
        Ok(db)
    }

    /// Applies one command from slot `slot`.
    ///
    /// # Panics
    /// If `slot` is below an earlier one, or if a command that passes the epoch guard is
    /// stamped earlier than the previous one: both are bugs of the caller or the master.
    pub fn apply(&mut self, slot: Slot, cmd: &Command) -> Applied {
        assert!(slot > Slot::ZERO, "slot 0 is never used");
        assert!(
            slot >= self.applied,
            "slot {slot} applied after {}",
            self.applied
        );
        self.applied = slot;
        let mut changes = Vec::new();
        let result = match self.guard(cmd) {
            Err(refusal) => Err(refusal),
            Ok(()) => {
                self.advance_time(cmd.now, &mut changes);
                self.dispatch_once(cmd, &mut changes)
            }
        };
        if cfg!(debug_assertions) {
            self.check_invariants();
        }
        Applied { result, changes }
    }

    /// Records that `slot` was delivered with no command for the database (an empty
    /// Paxos value), so that [`Db::applied_slot`] and a snapshot's slot keep up with the
    /// log. Replicas must treat such slots alike: the slot is part of the digest.
    ///
    /// # Panics
    /// If `slot` is below the last applied one.
    pub fn advance_slot(&mut self, slot: Slot) {
        assert!(slot >= self.applied, "slot {slot} after {}", self.applied);
        self.applied = slot;
    }

    /// The epoch guard (PML §5.3): NewEpoch must raise the epoch; everything else must
    /// carry the current one.
    fn guard(&self, cmd: &Command) -> Result<(), Refusal> {
        let ok = if let Op::NewEpoch = cmd.op {
            cmd.epoch > self.epoch
        } else {
            cmd.epoch == self.epoch
        };
        if ok {
            Ok(())
        } else {
            Err(Refusal::StaleEpoch {
                current: self.epoch,
            })
        }
    }

    fn advance_time(&mut self, now: Instant, changes: &mut Vec<Change>) {
        assert!(
            now >= self.now,
            "stamped time went backwards: {} then {now}",
            self.now
        );
        self.now = now;
        for instance in self.locks.expire_delays(now) {
            self.hand_off(instance, changes);
        }
    }

    /// Applies a numbered call at most once (`calls.rs` gives the rule); anything else as
    /// it comes.
    fn dispatch_once(
        &mut self,
        cmd: &Command,
        changes: &mut Vec<Change>,
    ) -> Result<Outcome, Refusal> {
        let numbered = cmd
            .call
            .zip(cmd.op.session())
            .filter(|(_, s)| self.sessions.session(*s).is_some());
        let Some((call, session)) = numbered else {
            return self.dispatch(cmd, changes);
        };
        self.calls
            .acknowledge(session, call.done_below.min(call.number));
        match self.calls.seen(session, call.number) {
            calls::Seen::Answered(result) => *result,
            calls::Seen::Forgotten => Err(Refusal::CallForgotten {
                number: call.number,
            }),
            calls::Seen::New => {
                let result = self.dispatch(cmd, changes);
                let forget =
                    cfg!(feature = "bug-injection") && self.config.bug_forget_call_outcomes;
                if self.sessions.session(session).is_some() && !forget {
                    self.calls.record(session, call.number, result.clone());
                }
                result
            }
        }
    }

    fn dispatch(&mut self, cmd: &Command, changes: &mut Vec<Change>) -> Result<Outcome, Refusal> {
        self.dispatch_op(cmd, &cmd.op, changes)
    }

    fn dispatch_op(
        &mut self,
        cmd: &Command,
        op: &Op,
        changes: &mut Vec<Change>,
    ) -> Result<Outcome, Refusal> {
        match op {
            Op::WithHandle { handle, desc, op } => {
                self.with_handle(cmd, *handle, desc, op, changes)
            }
            Op::NewEpoch => {
                assert!(cmd.epoch > self.epoch, "guard let a stale NewEpoch through");
                self.epoch = cmd.epoch;
                Ok(Outcome::EpochStarted)
            }
            Op::CreateSession { principal } => self.create_session(principal),
            Op::CloseSession { session } => self.end_session(*session, SessionEnd::Closed, changes),
            Op::ExpireSession { session } => {
                self.end_session(*session, SessionEnd::Expired, changes)
            }
            Op::Open(args) => self.open(args, changes),
            Op::OpenKept { handle, args } => self.open_kept(*handle, args, changes),
            Op::Close { session, handle } => self.close(*session, *handle, changes),
            Op::SetContents {
                session,
                handle,
                contents,
                expected,
            } => self.set_contents(*session, *handle, contents, *expected, changes),
            Op::Delete { session, handle } => self.delete(*session, *handle, changes),
            Op::SetAcl {
                session,
                handle,
                acl,
                expected,
            } => self.set_acl(*session, *handle, acl, *expected, changes),
            Op::Acquire {
                session,
                handle,
                mode,
            } => self.acquire(*session, *handle, *mode, true, changes),
            Op::TryAcquire {
                session,
                handle,
                mode,
            } => self.acquire(*session, *handle, *mode, false, changes),
            Op::Release { session, handle } => self.release(*session, *handle, changes),
            Op::SetSequencer {
                session,
                handle,
                sequencer,
            } => self.set_sequencer(*session, *handle, sequencer.as_ref()),
            Op::Rename { session, from, to } => self.rename(*session, from, to, changes),
            Op::SetAttr {
                session,
                path,
                instance,
                change,
            } => self.set_attr(*session, path, *instance, change, changes),
            Op::Noop => Ok(Outcome::Noop),
            Op::Checksum => Ok(Outcome::Checksum {
                digest: self.digest(),
            }),
        }
    }

    /// [`Op::WithHandle`]: `op` through a handle the master kept in its memory. The handle
    /// joins the table for the operation and leaves it after, unless the operation keeps
    /// it (a lock held or awaited, a sequencer set). If the table has it already (an
    /// earlier command kept it), that copy is used.
    fn with_handle(
        &mut self,
        cmd: &Command,
        id: HandleId,
        desc: &Handle,
        op: &Op,
        changes: &mut Vec<Change>,
    ) -> Result<Outcome, Refusal> {
        let Some((named, keeps)) = op.handle_call() else {
            return Err(Refusal::InvalidArgument);
        };
        if named != id || !id.is_volatile() || op.session() != Some(desc.session) {
            return Err(Refusal::InvalidArgument);
        }
        self.principal(desc.session)?;
        let inserted = match self.sessions.handle(id) {
            Some(h) if h.session == desc.session => false,
            Some(_) => return Err(Refusal::BadHandle),
            None => {
                // The master keeps no sequencer, and no handle on an ephemeral node, in
                // its memory: those need the log (docs/sessions.md "Handles").
                if desc.sequencer.is_some() {
                    return Err(Refusal::InvalidArgument);
                }
                let node = self
                    .ns
                    .get_instance(&desc.path, desc.instance)
                    .ok_or(Refusal::NotFound)?;
                if node.ephemeral {
                    return Err(Refusal::BadHandle);
                }
                if !self.sessions.may_open(desc.session) {
                    return Err(Refusal::TooMany);
                }
                self.sessions.insert_volatile(id, desc.clone());
                true
            }
        };
        let result = self.dispatch_op(cmd, op, changes);
        if inserted && !(keeps && result.is_ok()) && self.sessions.handle(id).is_some() {
            self.sessions.close(id);
        }
        result
    }

    /// The principal of a live session.
    fn principal(&self, session: SessionId) -> Result<&str, Refusal> {
        self.sessions
            .session(session)
            .map(|s| s.principal.as_str())
            .ok_or(Refusal::SessionExpired)
    }

    /// Resolves a handle for a call: the session is alive, the handle is its own, the
    /// handle's sequencer (if set) is still valid, and its node is still the instance it
    /// opened. Returns the handle and node.
    fn use_handle(
        &self,
        session: SessionId,
        id: HandleId,
    ) -> Result<(&Handle, &Arc<Node>), Refusal> {
        self.use_handle_in(session, id, None)
    }

    /// [`Self::use_handle`], finding the handle in `kept` (the master's memory) if the
    /// table does not have it.
    fn use_handle_in<'a>(
        &'a self,
        session: SessionId,
        id: HandleId,
        kept: Option<&'a Handle>,
    ) -> Result<(&'a Handle, &'a Arc<Node>), Refusal> {
        self.principal(session)?;
        let handle = self
            .sessions
            .handle_of(session, id)
            .or(kept.filter(|h| h.session == session))
            .ok_or(Refusal::BadHandle)?;
        if let Some(seq) = &handle.sequencer {
            if !self.check_sequencer(seq) {
                return Err(Refusal::StaleSequencer);
            }
        }
        let node = self
            .ns
            .get_instance(&handle.path, handle.instance)
            .ok_or(Refusal::NotFound)?;
        Ok((handle, node))
    }

    // ---- Queries: the master serves these from its applied state under its lease. ----

    /// The master epoch the database is in.
    #[must_use]
    pub fn epoch(&self) -> Ballot {
        self.epoch
    }

    /// The latest stamped time applied.
    #[must_use]
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The latest slot applied.
    #[must_use]
    pub fn applied_slot(&self) -> Slot {
        self.applied
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &DbConfig {
        &self.config
    }

    /// When the earliest lock-delay ends: the master should get a command (a Noop)
    /// stamped at or after it applied, so that waiters are granted on time.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        self.locks.next_deadline()
    }

    /// Metadata of the node at `path`, without access checks (for the master's own use).
    #[must_use]
    pub fn stat_path(&self, path: &str) -> Option<Stat> {
        self.ns.get(path).map(|n| n.stat())
    }

    /// The open handle `handle` of `session`.
    #[must_use]
    pub fn handle(&self, session: SessionId, handle: HandleId) -> Option<&Handle> {
        self.sessions.handle_of(session, handle)
    }

    /// What the records say of call `number` of `session` (`calls.rs`): the master
    /// answers a copy sent again from them without a Paxos round.
    #[must_use]
    pub fn call_seen(&self, session: SessionId, number: u64) -> calls::Seen {
        self.calls.seen(session, number)
    }

    /// Call outcomes recorded, over all sessions.
    #[must_use]
    pub fn call_records(&self) -> usize {
        self.calls.len()
    }

    /// The session `id`, if it is live.
    #[must_use]
    pub fn session(&self, id: SessionId) -> Option<&sessions::Session> {
        self.sessions.session(id)
    }

    /// Sizes for metrics, each O(1): nodes, sessions, handles, and locks held, awaited or
    /// delayed.
    #[must_use]
    pub fn counts(&self) -> DbCounts {
        let (sessions, handles) = self.sessions.counts();
        DbCounts {
            nodes: self.ns.len(),
            sessions,
            handles,
            locks: self.locks.count(),
        }
    }

    /// Every session, with its principal and handles (to rebuild the master at fail-over).
    pub fn sessions(&self) -> impl Iterator<Item = (&SessionId, &sessions::Session)> {
        self.sessions.iter_sessions()
    }

    /// GetContentsAndStat: needs a handle opened for reading and the read right.
    ///
    /// # Errors
    /// The refusals of a handle call, `IsADirectory`, `PermissionDenied`.
    pub fn read(
        &self,
        session: SessionId,
        handle: HandleId,
    ) -> Result<(Stat, Arc<Vec<u8>>), Refusal> {
        self.read_in(session, handle, None)
    }

    /// [`Self::read`] through a handle the table has or `kept` (the master's memory) is.
    ///
    /// # Errors
    /// As [`Self::read`].
    pub fn read_in(
        &self,
        session: SessionId,
        handle: HandleId,
        kept: Option<&Handle>,
    ) -> Result<(Stat, Arc<Vec<u8>>), Refusal> {
        let node = self.readable(session, handle, kept)?;
        if node.is_dir() {
            return Err(Refusal::IsADirectory);
        }
        Ok((node.stat(), Arc::clone(&node.contents)))
    }

    /// GetStat: needs a handle opened for reading and the read right.
    ///
    /// # Errors
    /// The refusals of a handle call, `PermissionDenied`.
    pub fn stat(&self, session: SessionId, handle: HandleId) -> Result<Stat, Refusal> {
        self.stat_in(session, handle, None)
    }

    /// [`Self::stat`] through a handle the table has or `kept` (the master's memory) is.
    ///
    /// # Errors
    /// As [`Self::stat`].
    pub fn stat_in(
        &self,
        session: SessionId,
        handle: HandleId,
        kept: Option<&Handle>,
    ) -> Result<Stat, Refusal> {
        Ok(self.readable(session, handle, kept)?.stat())
    }

    /// ReadDir: names and metadata of the children, in name order.
    ///
    /// # Errors
    /// The refusals of a handle call, `NotADirectory`, `PermissionDenied`.
    pub fn read_dir(
        &self,
        session: SessionId,
        handle: HandleId,
    ) -> Result<Vec<(String, Stat)>, Refusal> {
        self.read_dir_in(session, handle, None)
    }

    /// [`Self::read_dir`] through a handle the table has or `kept` (the master's memory)
    /// is.
    ///
    /// # Errors
    /// As [`Self::read_dir`].
    pub fn read_dir_in(
        &self,
        session: SessionId,
        handle: HandleId,
        kept: Option<&Handle>,
    ) -> Result<Vec<(String, Stat)>, Refusal> {
        let (h, node) = self.use_handle_in(session, handle, kept)?;
        if !node.is_dir() {
            return Err(Refusal::NotADirectory);
        }
        self.readable(session, handle, kept)?;
        let children = self.ns.children(&h.path);
        Ok(children
            .iter()
            .map(|(p, n)| (namespace::name(p).to_owned(), n.stat()))
            .collect())
    }

    /// Refuses unless `h` was opened in the mode `right` needs and `principal` holds `right`
    /// in the node's ACL *now* (Chubby checks ACLs at each call, not only at open).
    fn handle_permits(
        &self,
        principal: &str,
        h: &Handle,
        node: &Node,
        right: acl::Right,
    ) -> Result<(), Refusal> {
        let opened_for = match right {
            acl::Right::Read => h.mode.read,
            acl::Right::Write => h.mode.write,
            acl::Right::ChangeAcl => h.mode.change_acl,
        };
        let granted = acl::has_right(&self.ns, &self.config.admin, principal, &node.acl, right);
        if opened_for && granted {
            Ok(())
        } else {
            Err(Refusal::PermissionDenied)
        }
    }

    fn readable<'a>(
        &'a self,
        session: SessionId,
        handle: HandleId,
        kept: Option<&'a Handle>,
    ) -> Result<&'a Arc<Node>, Refusal> {
        let principal = self.principal(session)?;
        let (h, node) = self.use_handle_in(session, handle, kept)?;
        self.handle_permits(principal, h, node, acl::Right::Read)?;
        Ok(node)
    }

    /// The lock state of the node at `path`: mode and holders, if held.
    #[must_use]
    pub fn lock_holders(&self, path: &str) -> Option<(LockMode, Vec<(SessionId, HandleId)>)> {
        let node = self.ns.get(path)?;
        let lock = self
            .locks
            .get(node.instance)
            .filter(|l| !l.holders.is_empty())?;
        Some((lock.mode, lock.holder_pairs()))
    }

    /// Checks the invariants of the module docs. O(size of the database).
    ///
    /// # Panics
    /// When one is broken: a bug in this module.
    pub fn check_invariants(&self) {
        if let Err(broken) = self.validate() {
            panic!("database invariant broken: {broken}");
        }
    }

    /// The invariants as a value, so a restored snapshot can be refused instead of used.
    fn validate(&self) -> Result<(), String> {
        self.ns.validate()?;
        self.sessions.validate()?;
        self.locks.validate()?;
        self.calls.validate()?;
        for session in self.calls.sessions() {
            ensure!(
                self.sessions.session(session).is_some(),
                "call records of ended session {session:?}"
            );
        }
        ensure!(
            acl::valid_principal(&self.config.admin),
            "bad admin principal"
        );
        ensure!(
            self.config.lock_delay_ms_default <= LOCK_DELAY_MS_MAX,
            "default lock-delay"
        );
        self.validate_handles()?;
        self.validate_locks()?;
        self.validate_ephemerals()
    }

    fn validate_handles(&self) -> Result<(), String> {
        for (id, h) in self.sessions.iter_handles() {
            let alive = self.ns.get_instance(&h.path, h.instance).is_some();
            let listed = self
                .sessions
                .openers(h.instance)
                .is_some_and(|o| o.contains(id));
            ensure!(
                alive == listed,
                "handle {id:?}: alive {alive} but opener {listed}"
            );
            ensure!(
                h.lock_delay_ms <= LOCK_DELAY_MS_MAX,
                "handle {id:?} lock-delay"
            );
        }
        Ok(())
    }

    fn validate_locks(&self) -> Result<(), String> {
        for (instance, lock) in self.locks.iter() {
            let node = self.ns.get_instance(&lock.path, *instance);
            ensure!(node.is_some(), "lock of a dead node {}", lock.path);
            let members = lock.holders.iter().map(|(h, x)| (*h, x.session));
            let waiting = lock.waiters.iter().map(|w| (w.handle, w.session));
            for (handle, session) in members.chain(waiting) {
                let h = self.sessions.handle_of(session, handle);
                ensure!(
                    h.is_some_and(|h| h.instance == *instance),
                    "stray lock member {handle:?}"
                );
            }
        }
        Ok(())
    }

    fn validate_ephemerals(&self) -> Result<(), String> {
        for (path, node) in self.ns.iter() {
            if node.ephemeral && !self.sessions.is_open(node.instance) {
                ensure!(node.is_dir(), "unopened ephemeral file {path}");
                ensure!(
                    self.ns.has_children(path),
                    "empty unopened ephemeral dir {path}"
                );
            }
        }
        Ok(())
    }

    /// A digest of the whole state: equal on replicas that applied the same log.
    #[must_use]
    pub fn digest(&self) -> Digest {
        snapshot::digest_of(self)
    }
}
