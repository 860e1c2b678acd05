//! Sessions and open handles, recorded in the database so that locks and ephemeral nodes
//! survive a master fail-over (Chubby §2.9: "the database records each session, held
//! lock, and ephemeral file").
//!
//! # Identity
//! Session and handle ids come from counters in the database, so every replica that
//! applies the same log hands out the same ids, and an id is never reused in a cell. The
//! master learns the id from the outcome of CreateSession or Open. (Chubby's check digits
//! and the "created by which master" sequence number belong to the wire form of a handle,
//! which the master builds around this id.)
//!
//! # Binding
//! A handle is bound to a node *instance*, not a name (Chubby §2.6): it stores the path
//! and instance it opened, and every use checks that the node at that path is still that
//! instance. `openers` indexes the live handles of each instance; it drives ephemeral
//! deletion ("no handle has it open"). A handle whose node was deleted stays in the table,
//! out of `openers`, until it is closed; its calls fail with `NotFound`.
//!
//! # Invariants
//! - Every handle's session exists and lists the handle, and vice versa.
//! - A handle is in `openers[instance]` iff its node is alive (checked by `Db`).
//! - Each session holds at most [`HANDLES_PER_SESSION_MAX`] handles.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bincode::{Decode, Encode};
use chubby_protocol::{HandleId, InstanceNumber, OpenMode, Sequencer, SessionId};

use super::ensure;

/// Bound on open handles per session (STYLE habit 9). Far above what a client needs; it
/// stops one client from growing the replicated state without limit.
pub const HANDLES_PER_SESSION_MAX: usize = 10_000;

/// A client session.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Session {
    /// The authenticated principal (the client certificate's common name).
    pub principal: String,
    /// Its open handles.
    pub handles: BTreeSet<HandleId>,
}

/// An open handle.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Handle {
    /// Its session.
    pub session: SessionId,
    /// The path it was opened at (updated when Rename moves the file).
    pub path: Arc<str>,
    /// The node instance it is bound to.
    pub instance: InstanceNumber,
    /// The rights checked at Open.
    pub mode: OpenMode,
    /// The lock-delay applied if this handle's session is lost while it holds the lock.
    pub lock_delay_ms: u64,
    /// Set by SetSequencer: later calls fail once it is stale (Chubby §2.6).
    pub sequencer: Option<Sequencer>,
}

/// Sessions, handles and the per-instance index of open handles.
#[derive(Clone, Debug, Default, Encode, Decode)]
pub struct Sessions {
    sessions: BTreeMap<SessionId, Session>,
    handles: BTreeMap<HandleId, Handle>,
    openers: BTreeMap<InstanceNumber, BTreeSet<HandleId>>,
    next_session: u64,
    next_handle: u64,
}

impl Sessions {
    /// Registers a session for `principal`.
    pub fn create_session(&mut self, principal: String) -> SessionId {
        self.next_session += 1;
        let id = SessionId(self.next_session);
        let fresh = Session {
            principal,
            handles: BTreeSet::new(),
        };
        assert!(
            self.sessions.insert(id, fresh).is_none(),
            "session id reused"
        );
        id
    }

    /// The session `id`.
    #[must_use]
    pub fn session(&self, id: SessionId) -> Option<&Session> {
        self.sessions.get(&id)
    }

    /// Every session.
    pub fn iter_sessions(&self) -> impl Iterator<Item = (&SessionId, &Session)> {
        self.sessions.iter()
    }

    /// Removes a session that has no handles left.
    pub fn remove_session(&mut self, id: SessionId) {
        let gone = self
            .sessions
            .remove(&id)
            .expect("removing an unknown session");
        assert!(gone.handles.is_empty(), "session removed with open handles");
    }

    /// The handle `id` if it belongs to `session`.
    #[must_use]
    pub fn handle_of(&self, session: SessionId, id: HandleId) -> Option<&Handle> {
        self.handles.get(&id).filter(|h| h.session == session)
    }

    /// The handle `id`.
    #[must_use]
    pub fn handle(&self, id: HandleId) -> Option<&Handle> {
        self.handles.get(&id)
    }

    /// Every handle.
    pub fn iter_handles(&self) -> impl Iterator<Item = (&HandleId, &Handle)> {
        self.handles.iter()
    }

    /// Opens a handle on a live node.
    pub fn open(&mut self, handle: Handle) -> HandleId {
        let session = self
            .sessions
            .get_mut(&handle.session)
            .expect("open in unknown session");
        assert!(
            session.handles.len() < HANDLES_PER_SESSION_MAX,
            "handle bound not checked"
        );
        self.next_handle += 1;
        let id = HandleId(self.next_handle);
        session.handles.insert(id);
        self.openers.entry(handle.instance).or_default().insert(id);
        assert!(
            self.handles.insert(id, handle).is_none(),
            "handle id reused"
        );
        id
    }

    /// True if the session may open one more handle.
    #[must_use]
    pub fn may_open(&self, session: SessionId) -> bool {
        self.sessions
            .get(&session)
            .is_some_and(|s| s.handles.len() < HANDLES_PER_SESSION_MAX)
    }

    /// Closes a handle; returns it.
    pub fn close(&mut self, id: HandleId) -> Handle {
        let handle = self.handles.remove(&id).expect("closing an unknown handle");
        let session = self
            .sessions
            .get_mut(&handle.session)
            .expect("handle without session");
        assert!(
            session.handles.remove(&id),
            "session did not list its handle"
        );
        self.unlink_opener(handle.instance, id);
        handle
    }

    /// The live handles open on `instance`.
    #[must_use]
    pub fn openers(&self, instance: InstanceNumber) -> Option<&BTreeSet<HandleId>> {
        self.openers.get(&instance)
    }

    /// True if some handle has `instance` open.
    #[must_use]
    pub fn is_open(&self, instance: InstanceNumber) -> bool {
        self.openers.contains_key(&instance)
    }

    /// The node `instance` was deleted: its handles stay, bound to nothing alive.
    pub fn forget_instance(&mut self, instance: InstanceNumber) {
        self.openers.remove(&instance);
    }

    /// The file `old` now lives at `path` as instance `new`: its handles follow it.
    pub fn move_instance(&mut self, old: InstanceNumber, new: InstanceNumber, path: &Arc<str>) {
        assert!(
            !self.openers.contains_key(&new),
            "moving onto an opened instance"
        );
        let Some(ids) = self.openers.remove(&old) else {
            return;
        };
        for id in &ids {
            let h = self.handles.get_mut(id).expect("opener without handle");
            assert_eq!(h.instance, old, "opener bound elsewhere");
            h.instance = new;
            h.path = Arc::clone(path);
        }
        self.openers.insert(new, ids);
    }

    /// Sets or clears a handle's sequencer.
    pub fn set_sequencer(&mut self, id: HandleId, sequencer: Option<Sequencer>) {
        self.handles.get_mut(&id).expect("unknown handle").sequencer = sequencer;
    }

    fn unlink_opener(&mut self, instance: InstanceNumber, id: HandleId) {
        if let Some(set) = self.openers.get_mut(&instance) {
            set.remove(&id);
            if set.is_empty() {
                self.openers.remove(&instance);
            }
        }
    }

    /// The id counters, for the digest.
    #[must_use]
    pub fn counters(&self) -> (u64, u64) {
        (self.next_session, self.next_handle)
    }

    /// Checks the invariants this table can check alone.
    ///
    /// # Errors
    /// The first broken one, described.
    pub fn validate(&self) -> Result<(), String> {
        for (id, h) in &self.handles {
            let s = self.sessions.get(&h.session);
            ensure!(
                s.is_some_and(|s| s.handles.contains(id)),
                "session does not list {id:?}"
            );
            ensure!(id.0 <= self.next_handle, "handle id above the counter");
        }
        for (sid, s) in &self.sessions {
            ensure!(
                s.handles.len() <= HANDLES_PER_SESSION_MAX,
                "handle bound broken"
            );
            ensure!(sid.0 <= self.next_session, "session id above the counter");
            for id in &s.handles {
                let owner = self.handles.get(id).map(|h| h.session);
                ensure!(owner == Some(*sid), "session lists a stray handle {id:?}");
            }
        }
        for (instance, ids) in &self.openers {
            ensure!(!ids.is_empty(), "empty opener set kept");
            for id in ids {
                let bound = self.handles.get(id).map(|h| h.instance);
                ensure!(bound == Some(*instance), "opener bound to another instance");
            }
        }
        Ok(())
    }
}
