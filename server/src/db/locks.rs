//! Advisory reader/writer locks with FIFO waiters and lock-delay (Chubby §2.4; DESIGN §3).
//!
//! ```text
//!                 Acquire/TryAcquire
//!   free ───────────────────────────────► held (lock generation + 1)
//!    ▲   ◄── Release / Close (no delay) ──   │  more Shared holders join while no
//!    │                                       │  waiter is queued ahead of them
//!    │    delay ends (first command with     │
//!    └── now >= until) ◄── delayed ◄─────────┘  last holder's session lost
//! ```
//!
//! # Rules
//! - A lock is held by `(session, handle)` pairs: one in Exclusive mode, any number in
//!   Shared mode. State exists only for locks that are held, awaited or delayed.
//! - Waiters queue FIFO. A request is granted at once only if nobody waits ahead of it
//!   and it is compatible; when holders leave, the queue head is granted, and then every
//!   following Shared waiter while the lock is Shared (strict FIFO: a Shared request never
//!   overtakes a queued Exclusive one, so writers do not starve).
//! - **Lock-delay**: when a holder's session is *lost* (ExpireSession, not Release, Close
//!   or CloseSession), the lock records `until = now + that holder's lock-delay` (the
//!   latest of such ends). While holders are gone and `now < until`, nobody is granted.
//!   The database has no clock: the delay ends when a command stamped `now >= until` is
//!   applied (a Noop will do; `Db::next_deadline` says when one is due).
//! - The lock generation lives in the node's metadata; the caller bumps it for a grant
//!   with `from_free` set.
//! - A lock belongs to a node instance: deleting the node drops its lock, lock-delay
//!   included. So an *ephemeral* lock file whose holder's session is lost is reaped at
//!   once and its lock-delay protects nothing; a re-created file is a new instance with a
//!   free lock. Lock files meant to use lock-delay should be permanent.
//!
//! # Invariants
//! - Exclusive ⇒ exactly one holder. No handle both holds and waits.
//! - The queue head is never grantable (hand-off is eager): a non-empty queue means the
//!   lock is held incompatibly, or free and delayed.
//! - `delays` holds `(until, instance)` exactly for locks with `delayed_until` set.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use bincode::{Decode, Encode};
use chubby_protocol::{HandleId, InstanceNumber, Instant, LockMode, SessionId};

use super::cow_map::{CowMap, EntryDigest, FieldHasher};
use super::ensure;

/// One holder of a lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Holder {
    /// The holder's session.
    pub session: SessionId,
    /// The lock-delay to apply if that session is lost.
    pub lock_delay_ms: u64,
}

/// A queued Acquire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Waiter {
    /// The handle waiting.
    pub handle: HandleId,
    /// Its session.
    pub session: SessionId,
    /// The mode asked for.
    pub mode: LockMode,
    /// Its lock-delay, recorded as the holder's when granted.
    pub lock_delay_ms: u64,
}

/// The state of one node's lock.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct LockState {
    /// The locked node's path (stable: Rename refuses locked files).
    pub path: Arc<str>,
    /// The mode; meaningful while `holders` is not empty.
    pub mode: LockMode,
    /// Current holders.
    pub holders: BTreeMap<HandleId, Holder>,
    /// FIFO queue of blocked Acquires.
    pub waiters: VecDeque<Waiter>,
    /// Set while a lock-delay is pending or running.
    pub delayed_until: Option<Instant>,
}

impl LockState {
    fn idle(&self) -> bool {
        self.holders.is_empty() && self.waiters.is_empty() && self.delayed_until.is_none()
    }

    /// True if a request in `mode` could be granted ahead of everybody queued.
    fn compatible(&self, mode: LockMode) -> bool {
        if self.holders.is_empty() {
            self.delayed_until.is_none()
        } else {
            self.mode == LockMode::Shared && mode == LockMode::Shared
        }
    }

    /// The holders as `(session, handle)` pairs.
    #[must_use]
    pub fn holder_pairs(&self) -> Vec<(SessionId, HandleId)> {
        self.holders
            .iter()
            .map(|(h, holder)| (holder.session, *h))
            .collect()
    }
}

fn mode_bit(mode: LockMode) -> u64 {
    match mode {
        LockMode::Exclusive => 0,
        LockMode::Shared => 1,
    }
}

impl EntryDigest<InstanceNumber> for LockState {
    fn entry_digest(instance: &InstanceNumber, lock: &LockState) -> u64 {
        let mut h = FieldHasher::new("lock").u64(instance.0).str(&lock.path);
        h = h.u64(mode_bit(lock.mode)).u64(lock.holders.len() as u64);
        for (handle, holder) in &lock.holders {
            h = h
                .u64(handle.0)
                .u64(holder.session.0)
                .u64(holder.lock_delay_ms);
        }
        h = h.u64(lock.waiters.len() as u64);
        for w in &lock.waiters {
            h = h
                .u64(w.handle.0)
                .u64(w.session.0)
                .u64(mode_bit(w.mode))
                .u64(w.lock_delay_ms);
        }
        match lock.delayed_until {
            None => h.u64(0),
            Some(until) => h.u64(1).u64(until.0),
        }
        .finish()
    }
}

/// A lock handed to a handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The new holder.
    pub handle: HandleId,
    /// Its session.
    pub session: SessionId,
    /// The mode granted.
    pub mode: LockMode,
    /// The lock went from free to held: bump the lock generation.
    pub from_free: bool,
}

/// What an acquire attempt found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// Granted.
    Granted(Grant),
    /// Held incompatibly, or others wait ahead; these hold it.
    Conflict(Vec<(SessionId, HandleId)>),
    /// Free but in lock-delay until then.
    Delayed(Instant),
}

/// Why a holder left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReleaseCause {
    /// Release.
    Released,
    /// Close of the handle, or CloseSession: a clean end, no delay.
    Closed,
    /// ExpireSession: the holder may still think it holds the lock; lock-delay applies.
    SessionLost,
    /// The node was deleted: the lock (and its sequencers) went with it; no delay, since
    /// a re-created node is another instance with its own lock.
    NodeDeleted,
}

/// All lock state, keyed by node instance.
#[derive(Clone, Debug, Default, Encode, Decode)]
pub struct Locks {
    locks: CowMap<InstanceNumber, LockState>,
    delays: BTreeSet<(Instant, InstanceNumber)>,
}

impl Locks {
    /// The lock state of `instance`, if it is held, awaited or delayed.
    #[must_use]
    pub fn get(&self, instance: InstanceNumber) -> Option<&LockState> {
        self.locks.get(&instance)
    }

    /// How many locks are held, awaited or delayed.
    #[must_use]
    pub fn count(&self) -> usize {
        self.locks.len()
    }

    /// Every active lock.
    pub fn iter(&self) -> impl Iterator<Item = (&InstanceNumber, &LockState)> {
        self.locks.iter()
    }

    /// True if the lock is held, awaited or delayed (Rename refuses such files).
    #[must_use]
    pub fn is_busy(&self, instance: InstanceNumber) -> bool {
        self.locks.contains_key(&instance)
    }

    /// True if `handle` holds or awaits the lock.
    #[must_use]
    pub fn involves(&self, instance: InstanceNumber, handle: HandleId) -> bool {
        self.locks.get(&instance).is_some_and(|l| {
            l.holders.contains_key(&handle) || l.waiters.iter().any(|w| w.handle == handle)
        })
    }

    /// The mode `instance` is held in, if held.
    #[must_use]
    pub fn held_mode(&self, instance: InstanceNumber) -> Option<LockMode> {
        self.locks
            .get(&instance)
            .filter(|l| !l.holders.is_empty())
            .map(|l| l.mode)
    }

    /// Grants `w` at once if it may be; otherwise reports why not. Changes nothing unless
    /// granted.
    pub fn try_grant(&mut self, instance: InstanceNumber, path: &Arc<str>, w: Waiter) -> Attempt {
        assert!(
            !self.involves(instance, w.handle),
            "caller checks AlreadyHeld"
        );
        match self.locks.get(&instance) {
            Some(lock) => {
                assert_eq!(lock.path, *path, "lock path out of step with its node");
                if !lock.waiters.is_empty() || !lock.compatible(w.mode) {
                    return match (lock.holders.is_empty(), lock.delayed_until) {
                        (true, Some(until)) => Attempt::Delayed(until),
                        _ => Attempt::Conflict(lock.holder_pairs()),
                    };
                }
            }
            None => {
                let fresh = LockState {
                    path: Arc::clone(path),
                    mode: w.mode,
                    holders: BTreeMap::new(),
                    waiters: VecDeque::new(),
                    delayed_until: None,
                };
                self.locks.insert(instance, fresh);
            }
        }
        let grant = self.locks.update(&instance, |lock| Self::grant(lock, w));
        Attempt::Granted(grant.expect("lock state just checked"))
    }

    fn grant(lock: &mut LockState, w: Waiter) -> Grant {
        assert!(lock.compatible(w.mode), "granting an incompatible request");
        let from_free = lock.holders.is_empty();
        lock.mode = w.mode;
        let holder = Holder {
            session: w.session,
            lock_delay_ms: w.lock_delay_ms,
        };
        assert!(
            lock.holders.insert(w.handle, holder).is_none(),
            "double grant"
        );
        Grant {
            handle: w.handle,
            session: w.session,
            mode: w.mode,
            from_free,
        }
    }

    /// Queues `w` behind everybody else.
    pub fn enqueue(&mut self, instance: InstanceNumber, w: Waiter) {
        let queued = self.locks.update(&instance, |lock| {
            assert!(!lock.holders.contains_key(&w.handle), "holder queued");
            assert!(
                lock.waiters.iter().all(|q| q.handle != w.handle),
                "queued twice"
            );
            lock.waiters.push_back(w);
        });
        assert!(queued.is_some(), "enqueue on an idle lock");
    }

    /// Removes `handle` as holder (true) or waiter (false); `None` if it was neither.
    /// Hand-off is the caller's next step.
    pub fn leave(
        &mut self,
        instance: InstanceNumber,
        handle: HandleId,
        cause: ReleaseCause,
        now: Instant,
    ) -> Option<bool> {
        if !self.involves(instance, handle) {
            return None;
        }
        let delays = &mut self.delays;
        self.locks.update(&instance, |lock| {
            if let Some(holder) = lock.holders.remove(&handle) {
                if cause == ReleaseCause::SessionLost && holder.lock_delay_ms > 0 {
                    let until = now.plus_ms(holder.lock_delay_ms);
                    if let Some(old) = lock.delayed_until {
                        delays.remove(&(old, instance));
                    }
                    let until = lock.delayed_until.map_or(until, |old| old.max(until));
                    lock.delayed_until = Some(until);
                    delays.insert((until, instance));
                }
                return true;
            }
            let at = lock.waiters.iter().position(|w| w.handle == handle);
            lock.waiters.remove(at.expect("involved: holder or waiter"));
            false
        })
    }

    /// Grants the queue head, and then each following compatible waiter, as far as the
    /// state allows; drops idle state.
    pub fn hand_off(&mut self, instance: InstanceNumber) -> Vec<Grant> {
        let mut grants = Vec::new();
        let grantable = |l: &LockState| l.waiters.front().is_some_and(|w| l.compatible(w.mode));
        if self.locks.get(&instance).is_some_and(grantable) {
            self.locks.update(&instance, |lock| {
                while let Some(&head) = lock.waiters.front() {
                    if !lock.compatible(head.mode) {
                        break;
                    }
                    lock.waiters.pop_front();
                    grants.push(Self::grant(lock, head));
                }
            });
        }
        self.gc(instance);
        grants
    }

    /// Ends every lock-delay with `until <= now`; returns the locks to hand off.
    pub fn expire_delays(&mut self, now: Instant) -> Vec<InstanceNumber> {
        let mut due = Vec::new();
        while let Some(&(until, instance)) = self.delays.first() {
            if until > now {
                break;
            }
            self.delays.pop_first();
            let ended = self.locks.update(&instance, |lock| {
                assert_eq!(lock.delayed_until, Some(until), "delay index out of step");
                lock.delayed_until = None;
            });
            assert!(ended.is_some(), "delay of a missing lock");
            due.push(instance);
        }
        due
    }

    /// The node was deleted: forget its lock.
    pub fn remove(&mut self, instance: InstanceNumber) -> Option<LockState> {
        let lock = self.locks.remove(&instance)?;
        if let Some(until) = lock.delayed_until {
            assert!(
                self.delays.remove(&(until, instance)),
                "delay index out of step"
            );
        }
        Some(lock)
    }

    /// A digest of the lock table: O(1), from its running sum (`delays` is derived).
    #[must_use]
    pub fn digest(&self) -> u64 {
        self.locks.sum()
    }

    /// The earliest pending lock-delay end.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        self.delays.first().map(|&(until, _)| until)
    }

    fn gc(&mut self, instance: InstanceNumber) {
        if self.locks.get(&instance).is_some_and(LockState::idle) {
            self.locks.remove(&instance);
        }
    }

    /// Checks the invariants in the module docs.
    ///
    /// # Errors
    /// The first broken one, described.
    pub fn validate(&self) -> Result<(), String> {
        let mut delayed = BTreeSet::new();
        self.locks.validate()?;
        for (instance, lock) in self.locks.iter() {
            ensure!(!lock.idle(), "idle lock state kept for {instance:?}");
            let exclusive = lock.mode == LockMode::Exclusive;
            ensure!(
                !exclusive || lock.holders.len() <= 1,
                "two exclusive holders"
            );
            for w in &lock.waiters {
                ensure!(!lock.holders.contains_key(&w.handle), "holder also waits");
            }
            let mut queued = BTreeSet::new();
            ensure!(
                lock.waiters.iter().all(|w| queued.insert(w.handle)),
                "queued twice"
            );
            if let Some(head) = lock.waiters.front() {
                ensure!(!lock.compatible(head.mode), "grantable head left waiting");
            }
            if let Some(until) = lock.delayed_until {
                delayed.insert((until, *instance));
            }
        }
        ensure!(delayed == self.delays, "delay index out of step");
        Ok(())
    }
}
