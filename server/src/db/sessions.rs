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

use std::collections::BTreeSet;
use std::sync::Arc;

use bincode::{Decode, Encode};
use chubby_protocol::{EventMask, HandleId, InstanceNumber, OpenMode, Sequencer, SessionId};

use super::cow_map::{CowMap, EntryDigest, FieldHasher};
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
    /// The events it delivers (Chubby §2.5), kept here so that they survive fail-over.
    pub events: EventMask,
}

impl EntryDigest<SessionId> for Arc<Session> {
    /// The handle set is derived from the handle table, so it is left out.
    fn entry_digest(id: &SessionId, session: &Arc<Session>) -> u64 {
        FieldHasher::new("session")
            .u64(id.0)
            .str(&session.principal)
            .finish()
    }
}

impl EntryDigest<HandleId> for Handle {
    fn entry_digest(id: &HandleId, h: &Handle) -> u64 {
        let mode = u64::from(h.mode.read) | u64::from(h.mode.write) << 1;
        let mode = mode | u64::from(h.mode.change_acl) << 2;
        let hasher = FieldHasher::new("handle")
            .u64(id.0)
            .u64(h.session.0)
            .str(&h.path);
        let hasher = hasher
            .u64(h.instance.0)
            .u64(mode)
            .u64(h.lock_delay_ms)
            .u64(u64::from(h.events.0));
        match &h.sequencer {
            None => hasher.u64(0),
            Some(seq) => hasher
                .u64(1)
                .str(&seq.path)
                .u64(seq.instance.0)
                .u64(u64::from(seq.mode == chubby_protocol::LockMode::Shared))
                .u64(seq.lock_generation.0),
        }
        .finish()
    }
}

impl EntryDigest<InstanceNumber> for Arc<BTreeSet<HandleId>> {
    /// Derived from the handle table (and checked against it): left out.
    fn entry_digest(_: &InstanceNumber, _: &Arc<BTreeSet<HandleId>>) -> u64 {
        0
    }
}

/// Sessions, handles and the per-instance index of open handles.
#[derive(Clone, Debug, Default, Encode, Decode)]
pub struct Sessions {
    sessions: CowMap<SessionId, Arc<Session>>,
    handles: CowMap<HandleId, Handle>,
    openers: CowMap<InstanceNumber, Arc<BTreeSet<HandleId>>>,
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
            self.sessions.insert(id, Arc::new(fresh)).is_none(),
            "session id reused"
        );
        id
    }

    /// The session `id`.
    #[must_use]
    pub fn session(&self, id: SessionId) -> Option<&Session> {
        self.sessions.get(&id).map(|s| &**s)
    }

    /// Every session.
    pub fn iter_sessions(&self) -> impl Iterator<Item = (&SessionId, &Session)> {
        self.sessions.iter().map(|(id, s)| (id, &**s))
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

    /// How many sessions and handles are live.
    #[must_use]
    pub fn counts(&self) -> (usize, usize) {
        (self.sessions.len(), self.handles.len())
    }

    /// Every handle.
    pub fn iter_handles(&self) -> impl Iterator<Item = (&HandleId, &Handle)> {
        self.handles.iter()
    }

    /// Opens a handle on a live node.
    pub fn open(&mut self, handle: Handle) -> HandleId {
        self.next_handle += 1;
        let id = HandleId(self.next_handle);
        self.link(id, handle);
        id
    }

    /// Puts a handle the master kept in its memory (`id` is volatile) into the table, on
    /// a live node, for an [`super::Op::WithHandle`].
    pub fn insert_volatile(&mut self, id: HandleId, handle: Handle) {
        assert!(id.is_volatile(), "a counter id given as volatile");
        self.link(id, handle);
    }

    /// Files `handle` under `id` in the table, its session and the openers index.
    fn link(&mut self, id: HandleId, handle: Handle) {
        let listed = self.sessions.update(&handle.session, |s| {
            assert!(
                s.handles.len() < HANDLES_PER_SESSION_MAX,
                "handle bound not checked"
            );
            Arc::make_mut(s).handles.insert(id)
        });
        assert_eq!(
            listed,
            Some(true),
            "open in an unknown session, or id reused"
        );
        let added = self
            .openers
            .update(&handle.instance, |set| Arc::make_mut(set).insert(id));
        if added.is_none() {
            self.openers
                .insert(handle.instance, Arc::new(BTreeSet::from([id])));
        }
        assert!(
            self.handles.insert(id, handle).is_none(),
            "handle id reused"
        );
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
        let listed = self
            .sessions
            .update(&handle.session, |s| Arc::make_mut(s).handles.remove(&id));
        assert_eq!(listed, Some(true), "session did not list its handle");
        self.unlink_opener(handle.instance, id);
        handle
    }

    /// The live handles open on `instance`.
    #[must_use]
    pub fn openers(&self, instance: InstanceNumber) -> Option<&BTreeSet<HandleId>> {
        self.openers.get(&instance).map(|o| &**o)
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
        for id in ids.iter() {
            let moved = self.handles.update(id, |h| {
                assert_eq!(h.instance, old, "opener bound elsewhere");
                h.instance = new;
                h.path = Arc::clone(path);
            });
            assert!(moved.is_some(), "opener without handle");
        }
        self.openers.insert(new, ids);
    }

    /// Sets or clears a handle's sequencer.
    pub fn set_sequencer(&mut self, id: HandleId, sequencer: Option<Sequencer>) {
        let set = self.handles.update(&id, |h| h.sequencer = sequencer);
        assert!(set.is_some(), "unknown handle");
    }

    fn unlink_opener(&mut self, instance: InstanceNumber, id: HandleId) {
        let emptied = self.openers.update(&instance, |set| {
            Arc::make_mut(set).remove(&id);
            set.is_empty()
        });
        if emptied == Some(true) {
            self.openers.remove(&instance);
        }
    }

    /// A digest of the tables: O(1), from their running sums and the id counters.
    #[must_use]
    pub fn digest(&self) -> u64 {
        FieldHasher::new("sessions")
            .u64(self.sessions.sum())
            .u64(self.handles.sum())
            .u64(self.next_session)
            .u64(self.next_handle)
            .finish()
    }

    /// Checks the invariants this table can check alone.
    ///
    /// # Errors
    /// The first broken one, described.
    pub fn validate(&self) -> Result<(), String> {
        self.sessions.validate()?;
        self.handles.validate()?;
        self.openers.validate()?;
        for (id, h) in self.handles.iter() {
            let s = self.sessions.get(&h.session);
            ensure!(
                s.is_some_and(|s| s.handles.contains(id)),
                "session does not list {id:?}"
            );
            ensure!(
                id.is_volatile() || id.0 <= self.next_handle,
                "handle id above the counter"
            );
        }
        for (sid, s) in self.sessions.iter() {
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
        for (instance, ids) in self.openers.iter() {
            ensure!(!ids.is_empty(), "empty opener set kept");
            for id in ids.iter() {
                let bound = self.handles.get(id).map(|h| h.instance);
                ensure!(bound == Some(*instance), "opener bound to another instance");
            }
        }
        Ok(())
    }
}
