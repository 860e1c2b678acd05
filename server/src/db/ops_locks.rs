//! Lock operations: Acquire, TryAcquire, Release, SetSequencer, and sequencer checks
//! (Chubby §2.4, §2.6). The queue and lock-delay rules are in `locks.rs`; this module adds
//! the handle and permission checks, the lock generation, and the change reports.
//!
//! Check order of Acquire/TryAcquire (each refusal is the first that applies): session,
//! handle, handle's sequencer, node alive, write mode and write right (Chubby §2.4:
//! "acquiring a lock in either mode requires write permission"), AlreadyHeld, then the
//! lock state: granted, or WouldBlock/LockDelayed (TryAcquire), or Queued (Acquire).

use std::sync::Arc;

use chubby_protocol::{HandleId, InstanceNumber, LockMode, Refusal, Sequencer, SessionId};

use super::acl::Right;
use super::locks::{Attempt, Grant, ReleaseCause, Waiter};
use super::{Change, Db, Outcome, WaitEnd};

impl Db {
    pub(super) fn acquire(
        &mut self,
        session: SessionId,
        handle: HandleId,
        mode: LockMode,
        block: bool,
        changes: &mut Vec<Change>,
    ) -> Result<Outcome, Refusal> {
        let principal = self.principal(session)?;
        let (h, node) = self.use_handle(session, handle)?;
        self.handle_permits(principal, h, node, Right::Write)?;
        let (instance, path) = (node.instance, Arc::clone(&h.path));
        if self.locks.involves(instance, handle) {
            return Err(Refusal::AlreadyHeld);
        }
        let waiter = Waiter {
            handle,
            session,
            mode,
            lock_delay_ms: h.lock_delay_ms,
        };
        match self.locks.try_grant(instance, &path, waiter) {
            Attempt::Granted(grant) => {
                let sequencer = self.record_grant(instance, &path, grant, changes);
                Ok(Outcome::Acquired { sequencer })
            }
            Attempt::Conflict(holders) => {
                let requester = (session, handle);
                changes.push(Change::LockConflict {
                    path,
                    instance,
                    requester,
                    holders,
                });
                self.queue_or_refuse(instance, waiter, block, Refusal::WouldBlock)
            }
            Attempt::Delayed(until) => {
                self.queue_or_refuse(instance, waiter, block, Refusal::LockDelayed { until })
            }
        }
    }

    fn queue_or_refuse(
        &mut self,
        instance: InstanceNumber,
        waiter: Waiter,
        block: bool,
        refusal: Refusal,
    ) -> Result<Outcome, Refusal> {
        if block {
            self.locks.enqueue(instance, waiter);
            Ok(Outcome::Queued)
        } else {
            Err(refusal)
        }
    }

    /// Bumps the lock generation for a free→held grant and reports the grant.
    fn record_grant(
        &mut self,
        instance: InstanceNumber,
        path: &Arc<str>,
        grant: Grant,
        changes: &mut Vec<Change>,
    ) -> Sequencer {
        let before = self
            .ns
            .get_instance(path, instance)
            .expect("grant on a dead node");
        let before = before.lock_generation;
        if grant.from_free {
            self.ns
                .update(path, |n| n.lock_generation = n.lock_generation.next());
        }
        let lock_generation = self.ns.get(path).expect("granted node").lock_generation;
        assert_eq!(
            lock_generation > before,
            grant.from_free,
            "lock generation bump"
        );
        let sequencer = Sequencer {
            path: path.to_string(),
            instance,
            mode: grant.mode,
            lock_generation,
        };
        assert!(self.check_sequencer(&sequencer), "fresh sequencer invalid");
        let (session, handle) = (grant.session, grant.handle);
        changes.push(Change::LockAcquired {
            session,
            handle,
            sequencer: sequencer.clone(),
        });
        sequencer
    }

    /// Grants whatever the lock's queue allows now.
    pub(super) fn hand_off(&mut self, instance: InstanceNumber, changes: &mut Vec<Change>) {
        let Some(path) = self.locks.get(instance).map(|l| Arc::clone(&l.path)) else {
            return;
        };
        for grant in self.locks.hand_off(instance) {
            self.record_grant(instance, &path, grant, changes);
        }
    }

    pub(super) fn release(
        &mut self,
        session: SessionId,
        handle: HandleId,
        changes: &mut Vec<Change>,
    ) -> Result<Outcome, Refusal> {
        let (h, node) = self.use_handle(session, handle)?;
        let (instance, path) = (node.instance, Arc::clone(&h.path));
        if !self.locks.involves(instance, handle) {
            return Err(Refusal::NotHeld);
        }
        let who = (session, handle);
        self.leave_lock(
            instance,
            &path,
            who,
            ReleaseCause::Released,
            WaitEnd::Cancelled,
            changes,
        );
        assert!(
            !self.locks.involves(instance, handle),
            "handle still in the lock"
        );
        Ok(Outcome::Released)
    }

    /// Takes `who` out of the lock (as holder or waiter), reports it, and hands off.
    pub(super) fn leave_lock(
        &mut self,
        instance: InstanceNumber,
        path: &Arc<str>,
        who: (SessionId, HandleId),
        cause: ReleaseCause,
        wait_end: WaitEnd,
        changes: &mut Vec<Change>,
    ) {
        let (session, handle) = who;
        let path = Arc::clone(path);
        match self.locks.leave(instance, handle, cause, self.now) {
            None => return,
            Some(true) => {
                changes.push(Change::LockReleased {
                    path,
                    instance,
                    session,
                    handle,
                    cause,
                });
            }
            Some(false) => {
                changes.push(Change::WaitEnded {
                    path,
                    session,
                    handle,
                    reason: wait_end,
                });
            }
        }
        self.hand_off(instance, changes);
    }

    pub(super) fn set_sequencer(
        &mut self,
        session: SessionId,
        handle: HandleId,
        sequencer: Option<&Sequencer>,
    ) -> Result<Outcome, Refusal> {
        self.use_handle(session, handle)?;
        if sequencer.is_some_and(|s| !self.check_sequencer(s)) {
            return Err(Refusal::StaleSequencer);
        }
        self.sessions.set_sequencer(handle, sequencer.cloned());
        Ok(Outcome::SequencerSet)
    }

    /// CheckSequencer: true while that node instance's lock is held in that mode and that
    /// lock generation (Chubby §2.4).
    #[must_use]
    pub fn check_sequencer(&self, sequencer: &Sequencer) -> bool {
        let Some(node) = self.ns.get_instance(&sequencer.path, sequencer.instance) else {
            return false;
        };
        node.lock_generation == sequencer.lock_generation
            && self.locks.held_mode(sequencer.instance) == Some(sequencer.mode)
    }

    /// GetSequencer: the sequencer of the lock this handle holds, if it holds it.
    ///
    /// # Errors
    /// The refusals of any handle call.
    pub fn get_sequencer(
        &self,
        session: SessionId,
        handle: HandleId,
    ) -> Result<Option<Sequencer>, Refusal> {
        let (h, node) = self.use_handle(session, handle)?;
        let lock = self
            .locks
            .get(node.instance)
            .filter(|l| l.holders.contains_key(&handle));
        Ok(lock.map(|l| Sequencer {
            path: h.path.to_string(),
            instance: node.instance,
            mode: l.mode,
            lock_generation: node.lock_generation,
        }))
    }
}
