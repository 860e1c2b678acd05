//! From what a command changed to what sessions are told (Chubby §2.5): handle events by
//! mask, lock grants and ended waits, and the end of sessions.
//!
//! Events are derived from the database's [`Change`] list after the command is applied, so
//! each is delivered after its action (the paper's one ordering guarantee). Child events
//! come from creations, deletions, renames and content changes of the child; the
//! database's `ChildrenChanged` summary is not needed. There is no ACL event (SPEC C.1).

use chubby_protocol::db::SessionId;
use chubby_protocol::{Event, EventMask, HandleId, Instant, Notice};

use super::{Master, MasterAction};
use crate::db::namespace::{name, parent};
use crate::db::{Change, Db, Op};

impl Master {
    /// Turns the changes of one applied command into notices. `op` is the command (an
    /// immediate grant to the Acquire that asked is its own reply, not a notice).
    pub fn applied(
        &mut self,
        op: &Op,
        changes: &[Change],
        db: &Db,
        now: Instant,
        out: &mut Vec<MasterAction>,
    ) {
        let op = match op {
            Op::WithHandle { op, .. } => op.as_ref(),
            op => op,
        };
        let asker = match op {
            Op::Acquire {
                session, handle, ..
            }
            | Op::TryAcquire {
                session, handle, ..
            } => Some((*session, *handle)),
            Op::NewEpoch
            | Op::CreateSession { .. }
            | Op::CloseSession { .. }
            | Op::ExpireSession { .. }
            | Op::Open(_)
            | Op::Close { .. }
            | Op::SetContents { .. }
            | Op::Delete { .. }
            | Op::SetAcl { .. }
            | Op::Release { .. }
            | Op::SetSequencer { .. }
            | Op::Rename { .. }
            | Op::SetAttr { .. }
            | Op::Noop
            | Op::Checksum
            | Op::WithHandle { .. }
            | Op::OpenKept { .. } => None,
        };
        for change in changes {
            match change {
                Change::Created { path, .. } => {
                    self.child_event(db, path, |n| Event::ChildAdded { name: n }, now, out);
                }
                Change::ContentsChanged { path, instance, .. } => {
                    for (s, h, mask) in db.watchers_of(*instance) {
                        self.event(s, h, mask, Event::ContentsModified, now, out);
                    }
                    self.child_event(db, path, |n| Event::ChildModified { name: n }, now, out);
                }
                Change::Deleted { path, handles, .. } => {
                    for h in handles {
                        if let Some(handle) = db.handle_by_id(*h) {
                            let (s, mask) = (handle.session, handle.events);
                            self.event(s, *h, mask, Event::NodeDeleted, now, out);
                            self.event(s, *h, mask, Event::HandleInvalid, now, out);
                        }
                    }
                    self.child_event(db, path, |n| Event::ChildRemoved { name: n }, now, out);
                }
                Change::Renamed {
                    from,
                    to,
                    old_instance,
                    instance,
                } => {
                    self.kept.renamed(*old_instance, *instance, to);
                    self.child_event(db, from, |n| Event::ChildRemoved { name: n }, now, out);
                    self.child_event(db, to, |n| Event::ChildAdded { name: n }, now, out);
                }
                Change::LockAcquired {
                    session,
                    handle,
                    sequencer,
                } => {
                    if asker != Some((*session, *handle)) {
                        let notice = Notice::LockGranted {
                            handle: *handle,
                            sequencer: sequencer.clone(),
                        };
                        self.notify(*session, notice, now, out);
                    }
                    for (s, h, mask) in db.watchers_of(sequencer.instance) {
                        self.event(s, h, mask, Event::LockAcquired, now, out);
                    }
                }
                Change::LockConflict { holders, .. } => {
                    for (s, h) in holders {
                        if let Some(handle) = db.handle_by_id(*h) {
                            let mask = handle.events;
                            self.event(*s, *h, mask, Event::ConflictingLock, now, out);
                        }
                    }
                }
                Change::WaitEnded {
                    session,
                    handle,
                    reason,
                    ..
                } => {
                    let notice = Notice::LockWaitEnded {
                        handle: *handle,
                        reason: wire_wait_end(*reason),
                    };
                    self.notify(*session, notice, now, out);
                }
                Change::SessionEnded { session, .. } => self.session_ended(*session, out),
                Change::AclChanged { .. }
                | Change::AttrsChanged { .. }
                | Change::ChildrenChanged { .. }
                | Change::LockReleased { .. }
                | Change::HandleClosed { .. } => {}
            }
        }
    }

    /// An event for the handles on the parent directory of `path` that asked for child
    /// events.
    fn child_event(
        &mut self,
        db: &Db,
        path: &str,
        event: impl Fn(String) -> Event,
        now: Instant,
        out: &mut Vec<MasterAction>,
    ) {
        if path == "/" {
            return;
        }
        let child = name(path).to_owned();
        for (s, h, mask) in db.watchers(parent(path)) {
            self.event(s, h, mask, event(child.clone()), now, out);
        }
    }

    fn event(
        &mut self,
        session: SessionId,
        handle: HandleId,
        mask: EventMask,
        event: Event,
        now: Instant,
        out: &mut Vec<MasterAction>,
    ) {
        if mask.contains(event.mask()) {
            self.notify(session, Notice::Event { handle, event }, now, out);
        }
    }
}

fn wire_wait_end(reason: crate::db::WaitEnd) -> chubby_protocol::events::WaitEnd {
    use chubby_protocol::events::WaitEnd as W;
    match reason {
        crate::db::WaitEnd::Cancelled => W::Cancelled,
        crate::db::WaitEnd::HandleClosed => W::HandleClosed,
        crate::db::WaitEnd::SessionEnded => W::SessionEnded,
        crate::db::WaitEnd::NodeDeleted => W::NodeDeleted,
    }
}
