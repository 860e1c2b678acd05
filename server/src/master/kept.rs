//! Handles the master keeps in its memory only (Chubby §2.9: "handles ... are in the
//! master's memory"; docs/sessions.md "Handles").
//!
//! # Why
//! A handle recorded in the replicated database costs a Paxos instance to open and
//! another to close, so a write through the mount of an existing file cost three instances
//! and an `flock` four. Chubby kept handles in the master's memory and let the client
//! re-create them at a new master from what the handle itself records (steps 6–8 of its
//! fail-over). So does this table: an Open of an existing node that needs nothing of the
//! log (no creation, not ephemeral, no events) is checked against the applied state under
//! the lease, as the log's Open would check it, and answered from here.
//!
//! # What still goes through the log
//! A call that changes the database through such a handle carries the handle whole
//! ([`crate::db::Op::WithHandle`]): every replica applies it exactly as it would through a
//! handle of its own table. A lock held or awaited and a sequencer need the handle to
//! outlive a fail-over, so those operations leave the handle in the replicated table, and
//! the table's copy is the handle from then on (this one is dropped). Handles on ephemeral
//! nodes are always opened through the log: their last close must delete the node even if
//! the master fails meanwhile.
//!
//! # Identity
//! Ids carry [`HandleId::VOLATILE`] and this master's epoch ([`tag`]), so a new master
//! never hands out an id a client still holds from an earlier one; an id already in this
//! table (re-announced) is skipped.
//!
//! # Bounds
//! At most [`HANDLES_PER_SESSION_MAX`] per session, as the database bounds its own.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chubby_protocol::{Ballot, HandleId, InstanceNumber, SessionId};

use crate::db::sessions::{Handle, HANDLES_PER_SESSION_MAX};

/// The bits of the master's epoch in each id it hands out: 23 bits of the round and 8 of
/// the replica, above a 32-bit counter.
#[must_use]
pub fn tag(epoch: Ballot) -> u64 {
    HandleId::VOLATILE | (epoch.round & 0x7f_ffff) << 40 | (u64::from(epoch.node.0) & 0xff) << 32
}

/// The master's in-memory handles (see the module docs).
#[derive(Debug)]
pub struct KeptHandles {
    tag: u64,
    next: u32,
    by_session: BTreeMap<SessionId, BTreeMap<HandleId, Handle>>,
    by_instance: BTreeMap<InstanceNumber, BTreeSet<(SessionId, HandleId)>>,
    len: usize,
}

impl KeptHandles {
    /// An empty table for the master of `epoch`.
    #[must_use]
    pub fn new(epoch: Ballot) -> KeptHandles {
        KeptHandles {
            tag: tag(epoch),
            next: 0,
            by_session: BTreeMap::new(),
            by_instance: BTreeMap::new(),
            len: 0,
        }
    }

    /// Handles kept, over all sessions.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if none is kept.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many `session` has here.
    #[must_use]
    pub fn count(&self, session: SessionId) -> usize {
        self.by_session.get(&session).map_or(0, BTreeMap::len)
    }

    /// True if `session` may have one more here.
    #[must_use]
    pub fn may_open(&self, session: SessionId) -> bool {
        self.count(session) < HANDLES_PER_SESSION_MAX
    }

    /// Handle `id` of `session`, if kept here.
    #[must_use]
    pub fn get(&self, session: SessionId, id: HandleId) -> Option<&Handle> {
        self.by_session.get(&session)?.get(&id)
    }

    /// Keeps `handle` under a fresh id of this master's, which it returns. The caller
    /// checked [`Self::may_open`].
    pub fn open(&mut self, handle: Handle) -> HandleId {
        let id = self.fresh_id(handle.session);
        self.insert(id, handle);
        id
    }

    /// An id no handle of `session` here has, for a handle to be opened through the log
    /// ([`crate::db::Op::OpenKept`]) and kept here once that is applied.
    pub fn fresh_id(&mut self, session: SessionId) -> HandleId {
        loop {
            self.next = self.next.wrapping_add(1);
            let id = HandleId(self.tag | u64::from(self.next));
            if self.get(session, id).is_none() {
                return id;
            }
        }
    }

    /// Keeps `handle` under the id a client announced again (Chubby §2.9). False if the
    /// session has another handle under that id here.
    pub fn reannounce(&mut self, id: HandleId, handle: Handle) -> bool {
        match self.get(handle.session, id) {
            Some(h) => *h == handle,
            None => {
                self.insert(id, handle);
                true
            }
        }
    }

    fn insert(&mut self, id: HandleId, handle: Handle) {
        let (session, instance) = (handle.session, handle.instance);
        self.by_session
            .entry(session)
            .or_default()
            .insert(id, handle);
        self.by_instance
            .entry(instance)
            .or_default()
            .insert((session, id));
        self.len += 1;
    }

    /// Forgets handle `id` of `session` (closed, or kept by the database from now on).
    pub fn remove(&mut self, session: SessionId, id: HandleId) -> Option<Handle> {
        let handles = self.by_session.get_mut(&session)?;
        let handle = handles.remove(&id)?;
        if handles.is_empty() {
            self.by_session.remove(&session);
        }
        self.unindex(handle.instance, session, id);
        self.len -= 1;
        Some(handle)
    }

    fn unindex(&mut self, instance: InstanceNumber, session: SessionId, id: HandleId) {
        if let Some(set) = self.by_instance.get_mut(&instance) {
            set.remove(&(session, id));
            if set.is_empty() {
                self.by_instance.remove(&instance);
            }
        }
    }

    /// The session ended: its handles go.
    pub fn session_ended(&mut self, session: SessionId) {
        for (id, handle) in self.by_session.remove(&session).unwrap_or_default() {
            self.unindex(handle.instance, session, id);
            self.len -= 1;
        }
    }

    /// A Rename moved the file `old` to `path` as instance `new`: its handles follow it,
    /// as the database's own do.
    pub fn renamed(&mut self, old: InstanceNumber, new: InstanceNumber, path: &Arc<str>) {
        let Some(set) = self.by_instance.remove(&old) else {
            return;
        };
        for (session, id) in &set {
            if let Some(h) = self
                .by_session
                .get_mut(session)
                .and_then(|hs| hs.get_mut(id))
            {
                h.instance = new;
                h.path = Arc::clone(path);
            }
        }
        self.by_instance.entry(new).or_default().extend(set);
    }

    /// The table agrees with its index and count.
    ///
    /// # Panics
    /// When it does not: a bug in this module.
    pub fn check_invariants(&self) {
        let mut n = 0;
        for (session, handles) in &self.by_session {
            assert!(!handles.is_empty(), "empty session entry kept");
            for (id, h) in handles {
                assert!(id.is_volatile(), "a kept handle without the volatile bit");
                assert_eq!(h.session, *session, "handle filed under another session");
                assert!(
                    self.by_instance
                        .get(&h.instance)
                        .is_some_and(|s| s.contains(&(*session, *id))),
                    "handle missing from the instance index"
                );
                n += 1;
            }
        }
        assert_eq!(n, self.len, "count drifted");
        let indexed: usize = self.by_instance.values().map(BTreeSet::len).sum();
        assert_eq!(indexed, self.len, "instance index has strays");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chubby_protocol::{EventMask, NodeId, OpenMode};

    fn handle(session: u64, instance: u64, path: &str) -> Handle {
        Handle {
            session: SessionId(session),
            path: Arc::from(path),
            instance: InstanceNumber(instance),
            mode: OpenMode::READ_WRITE,
            lock_delay_ms: 0,
            sequencer: None,
            events: EventMask::NONE,
        }
    }

    fn epoch(round: u64, node: u32) -> Ballot {
        Ballot {
            round,
            node: NodeId(node),
        }
    }

    /// Two masters never number a handle alike, and the database's counter never
    /// reaches their ids.
    #[test]
    fn ids_carry_the_epoch_and_the_volatile_bit() {
        let mut a = KeptHandles::new(epoch(3, 1));
        let mut b = KeptHandles::new(epoch(4, 2));
        let ia = a.open(handle(1, 10, "/f"));
        let ib = b.open(handle(1, 10, "/f"));
        assert_ne!(ia, ib);
        assert!(ia.is_volatile() && ib.is_volatile());
        a.check_invariants();
    }

    /// A re-announced id is kept under that id, and a fresh id skips it.
    #[test]
    fn reannounced_ids_are_kept_and_skipped() {
        let mut t = KeptHandles::new(epoch(5, 1));
        let next = HandleId(tag(epoch(5, 1)) | 1);
        assert!(t.reannounce(next, handle(1, 10, "/f")));
        assert!(
            !t.reannounce(next, handle(1, 11, "/g")),
            "another handle under that id"
        );
        let fresh = t.open(handle(1, 12, "/h"));
        assert_ne!(fresh, next);
        assert_eq!(t.count(SessionId(1)), 2);
        t.check_invariants();
    }

    /// Renames move handles with their file; a session's end drops its handles only.
    #[test]
    fn handles_follow_renames_and_go_with_their_session() {
        let mut t = KeptHandles::new(epoch(1, 1));
        let a = t.open(handle(1, 10, "/f"));
        let b = t.open(handle(2, 10, "/f"));
        let c = t.open(handle(2, 11, "/g"));
        t.renamed(InstanceNumber(10), InstanceNumber(20), &Arc::from("/d/f"));
        assert_eq!(
            t.get(SessionId(1), a).map(|h| h.instance),
            Some(InstanceNumber(20))
        );
        assert_eq!(t.get(SessionId(2), b).map(|h| &*h.path), Some("/d/f"));
        t.session_ended(SessionId(2));
        assert!(t.get(SessionId(2), c).is_none());
        assert_eq!(t.len(), 1);
        assert!(t.remove(SessionId(1), a).is_some());
        assert!(t.is_empty());
        t.check_invariants();
    }
}
