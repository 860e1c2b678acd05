//! Session and handle lifetimes: CreateSession, CloseSession, ExpireSession and Close
//! (Chubby §2.6, §2.8).
//!
//! Ending a session closes each of its handles in id order, exactly as Close would,
//! except that on ExpireSession the locks it held enter lock-delay (the holder may still
//! believe it holds them; Chubby §2.4). Closing a handle releases its lock or cancels its
//! queued Acquire, then deletes its node if that node is ephemeral and now unused.

use chubby_protocol::{HandleId, Refusal, SessionId};

use super::locks::ReleaseCause;
use super::{acl, Change, Db, Outcome, SessionEnd, WaitEnd};

impl Db {
    pub(super) fn create_session(&mut self, principal: &str) -> Result<Outcome, Refusal> {
        if !acl::valid_principal(principal) {
            return Err(Refusal::InvalidArgument);
        }
        let session = self.sessions.create_session(principal.to_owned());
        Ok(Outcome::SessionCreated { session })
    }

    pub(super) fn end_session(
        &mut self,
        session: SessionId,
        cause: SessionEnd,
        changes: &mut Vec<Change>,
    ) -> Result<Outcome, Refusal> {
        let handles: Vec<HandleId> = match self.sessions.session(session) {
            Some(s) => s.handles.iter().copied().collect(),
            None => return Err(Refusal::SessionExpired),
        };
        let release = match cause {
            SessionEnd::Closed => ReleaseCause::Closed,
            SessionEnd::Expired => ReleaseCause::SessionLost,
        };
        for handle in handles {
            self.close_handle(handle, release, WaitEnd::SessionEnded, changes);
            changes.push(Change::HandleClosed { session, handle });
        }
        self.sessions.remove_session(session);
        self.calls.end_session(session);
        assert!(
            self.sessions.session(session).is_none(),
            "session survived its end"
        );
        changes.push(Change::SessionEnded { session, cause });
        Ok(Outcome::SessionEnded)
    }

    /// Close never looks at the handle's sequencer or node: it must always be possible to
    /// let go of a handle (Chubby §2.6: "this call never fails").
    pub(super) fn close(
        &mut self,
        session: SessionId,
        handle: HandleId,
        changes: &mut Vec<Change>,
    ) -> Result<Outcome, Refusal> {
        self.principal(session)?;
        self.sessions
            .handle_of(session, handle)
            .ok_or(Refusal::BadHandle)?;
        self.close_handle(handle, ReleaseCause::Closed, WaitEnd::HandleClosed, changes);
        Ok(Outcome::Closed)
    }

    fn close_handle(
        &mut self,
        id: HandleId,
        cause: ReleaseCause,
        wait_end: WaitEnd,
        changes: &mut Vec<Change>,
    ) {
        let handle = self.sessions.close(id);
        assert!(
            self.sessions.handle(id).is_none(),
            "handle survived its close"
        );
        if self
            .ns
            .get_instance(&handle.path, handle.instance)
            .is_none()
        {
            // Its node was deleted (and its lock with it): nothing else to undo.
            assert!(
                !self.locks.is_busy(handle.instance),
                "lock outlived its node"
            );
            return;
        }
        let who = (handle.session, id);
        self.leave_lock(handle.instance, &handle.path, who, cause, wait_end, changes);
        self.reap(&handle.path, changes);
    }
}
