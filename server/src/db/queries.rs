//! Read-only questions the master asks the database: what a command may change in clients'
//! caches (before it is proposed), who watches a node (after it is applied), and the
//! lookups clients make without a Paxos round.
//!
//! # What a command touches
//! The master invalidates every cached copy of what a write will change *before* it
//! proposes the write (Chubby §2.7), so it must know the paths in advance. [`Db::touched_paths`]
//! answers conservatively: it may name a path the command then leaves alone (a refused
//! write, a Close that deletes nothing), never miss one it changes. A cached path covers
//! the node's contents and metadata, its listing if it is a directory, and its absence.
//! Lock state is not cached (DESIGN §6: lock generations are read from the master), so
//! lock operations touch nothing.

use std::sync::Arc;

use chubby_protocol::client_msg::LockState;
use chubby_protocol::{Creation, EventMask, HandleId, InstanceNumber, Refusal, SessionId, Stat};

use super::acl;
use super::namespace::parent;
use super::sessions::Handle;
use super::{Db, Op};

impl Db {
    /// The paths whose cached state applying `op` now may change (see the module docs).
    /// `busy(path)` tells whether a write already proposed but not yet applied may change
    /// `path`: an Open that would create a node is then assumed to create it even if the
    /// node exists now.
    #[must_use]
    pub fn touched_paths(&self, op: &Op, busy: impl Fn(&str) -> bool) -> Vec<Arc<str>> {
        let mut out = self.touched_paths_in(op, None, &busy);
        out.sort();
        out.dedup();
        out
    }

    /// [`Self::touched_paths`], unsorted, finding a handle in `kept` (an
    /// [`Op::WithHandle`]'s) if the table does not have it.
    fn touched_paths_in(
        &self,
        op: &Op,
        kept: Option<&Handle>,
        busy: &impl Fn(&str) -> bool,
    ) -> Vec<Arc<str>> {
        let mut out: Vec<Arc<str>> = Vec::new();
        let handle_of = |session: &SessionId, handle: &HandleId| {
            self.sessions
                .handle_of(*session, *handle)
                .or(kept.filter(|h| h.session == *session))
        };
        match op {
            Op::WithHandle { desc, op, .. } => {
                out = self.touched_paths_in(op, Some(desc), busy);
            }
            Op::Open(args) | Op::OpenKept { args, .. } => {
                let Some(dir) = parent_of(&args.path) else {
                    return out;
                };
                let exists = self.ns.get(&args.path).is_some();
                let creates = match args.creation {
                    Creation::Never => false,
                    Creation::Must => true,
                    Creation::IfMissing => !exists || busy(&args.path),
                };
                if creates {
                    out.push(Arc::from(args.path.as_str()));
                    out.push(Arc::from(dir));
                }
            }
            Op::SetContents {
                session, handle, ..
            }
            | Op::SetAcl {
                session, handle, ..
            } => {
                if let Some(h) = handle_of(session, handle) {
                    out.push(Arc::clone(&h.path));
                }
            }
            Op::Delete { session, handle } => {
                if let Some(h) = handle_of(session, handle) {
                    if let Some(dir) = parent_of(&h.path) {
                        out.push(Arc::clone(&h.path));
                        out.push(Arc::from(dir));
                        self.push_reap_chain(dir, None, &mut out);
                    }
                }
            }
            Op::Rename { from, to, .. } => {
                for p in [from.as_str(), to.as_str()] {
                    if let Some(dir) = parent_of(p) {
                        out.push(Arc::from(p));
                        out.push(Arc::from(dir));
                    }
                }
                // A directory's whole subtree moves: each path and where it goes.
                let moves_dir = self.ns.get(from).is_some_and(|n| n.is_dir());
                if moves_dir && from != to && !to.starts_with(&format!("{from}/")) {
                    for d in self.ns.descendants(from) {
                        let rest = &d[from.len()..];
                        out.push(Arc::from(format!("{to}{rest}")));
                        out.push(d);
                    }
                }
                if let Some(dir) = parent_of(from) {
                    self.push_reap_chain(dir, None, &mut out);
                }
            }
            Op::SetAttr { path, .. } => out.push(Arc::from(path.as_str())),
            Op::Close { session, handle } => {
                if let Some(h) = self.sessions.handle_of(*session, *handle) {
                    self.push_reap_chain(&h.path, Some(h.instance), &mut out);
                }
            }
            Op::CloseSession { session } | Op::ExpireSession { session } => {
                if let Some(s) = self.sessions.session(*session) {
                    for id in &s.handles {
                        if let Some(h) = self.sessions.handle(*id) {
                            self.push_reap_chain(&h.path, Some(h.instance), &mut out);
                        }
                    }
                }
            }
            Op::NewEpoch
            | Op::CreateSession { .. }
            | Op::Acquire { .. }
            | Op::TryAcquire { .. }
            | Op::Release { .. }
            | Op::SetSequencer { .. }
            | Op::Noop
            | Op::Checksum => {}
        }
        out
    }

    /// What deleting the node at `path` as an unused ephemeral node would change, and
    /// then its ancestors likewise: each such node and its parent's listing. Nothing if
    /// the node is not ephemeral (or, with `instance`, is another instance).
    fn push_reap_chain(
        &self,
        path: &str,
        instance: Option<InstanceNumber>,
        out: &mut Vec<Arc<str>>,
    ) {
        let mut path = path;
        let mut node = match instance {
            Some(i) => self.ns.get_instance(path, i),
            None => self.ns.get(path),
        };
        while let Some(n) = node {
            if !n.ephemeral || path == "/" {
                return;
            }
            out.push(Arc::from(path));
            path = parent(path);
            out.push(Arc::from(path));
            node = self.ns.get(path);
        }
    }

    /// The handles that have the live node `path` open, with their sessions and event
    /// masks.
    pub fn watchers(&self, path: &str) -> Vec<(SessionId, HandleId, EventMask)> {
        let Some(node) = self.ns.get(path) else {
            return Vec::new();
        };
        self.watchers_of(node.instance)
    }

    /// The handles that have `instance` open, with their sessions and masks.
    pub fn watchers_of(&self, instance: InstanceNumber) -> Vec<(SessionId, HandleId, EventMask)> {
        let Some(openers) = self.sessions.openers(instance) else {
            return Vec::new();
        };
        openers
            .iter()
            .filter_map(|id| {
                self.sessions
                    .handle(*id)
                    .map(|h| (h.session, *id, h.events))
            })
            .collect()
    }

    /// Any handle by id (also one whose node is gone).
    #[must_use]
    pub fn handle_by_id(&self, id: HandleId) -> Option<&Handle> {
        self.sessions.handle(id)
    }

    /// StatPath: the node at `path`, or `None` if there is none. Needs the read right on
    /// the parent directory (the root: on itself), as ReadDir does.
    ///
    /// # Errors
    /// `SessionExpired`, `InvalidPath`, `NotFound` (no parent directory),
    /// `NotADirectory`, `PermissionDenied`.
    pub fn stat_path_checked(
        &self,
        session: SessionId,
        path: &str,
    ) -> Result<Option<Stat>, Refusal> {
        let principal = self.principal(session)?;
        chubby_protocol::db::check_path(path).map_err(|_| Refusal::InvalidPath)?;
        let dir = match parent_of(path) {
            Some(dir) => self.ns.get(dir).ok_or(Refusal::NotFound)?,
            None => self.ns.get("/").ok_or(Refusal::NotFound)?,
        };
        if !dir.is_dir() {
            return Err(Refusal::NotADirectory);
        }
        let admin = &self.config.admin;
        if !acl::has_right(&self.ns, admin, principal, &dir.acl, acl::Right::Read) {
            return Err(Refusal::PermissionDenied);
        }
        Ok(self.ns.get(path).map(|n| n.stat()))
    }

    /// Reopen: a handle the session kept, to be used again at `path` (Chubby §2.8 handle
    /// caching). Checks what an Open of `path` with the handle's mode would check: the
    /// handle is the session's and its sequencer not stale, the node at `path` is the
    /// instance it is bound to, and the principal still has every right of its mode (so a
    /// right revoked since shows at the open, not at the first write). Changes nothing.
    ///
    /// # Errors
    /// `BadHandle`, `StaleSequencer`, `InvalidPath`, `NotFound` (no node at `path`, or
    /// another one than the handle's), `PermissionDenied`.
    pub fn reopen(
        &self,
        session: SessionId,
        handle: HandleId,
        path: &str,
    ) -> Result<Stat, Refusal> {
        self.reopen_in(session, handle, path, None)
    }

    /// [`Self::reopen`] of a handle the table has or `kept` (the master's memory) is.
    ///
    /// # Errors
    /// As [`Self::reopen`].
    pub fn reopen_in(
        &self,
        session: SessionId,
        handle: HandleId,
        path: &str,
        kept: Option<&Handle>,
    ) -> Result<Stat, Refusal> {
        let principal = self.principal(session)?;
        chubby_protocol::db::check_path(path).map_err(|_| Refusal::InvalidPath)?;
        let (h, node) = self.use_handle_in(session, handle, kept)?;
        if self.ns.get_instance(path, h.instance).is_none() {
            return Err(Refusal::NotFound);
        }
        // The check Open makes (ops_nodes.rs), with the handle's mode.
        if !acl::has_mode(&self.ns, &self.config.admin, principal, &node.acl, h.mode) {
            return Err(Refusal::PermissionDenied);
        }
        Ok(node.stat())
    }

    /// LockHolders: the mode and holders of the lock of the node at `path` (`None`: free),
    /// for a session that may read it (`F_GETLK` on a mount).
    ///
    /// # Errors
    /// As StatPath, `NotFound` if there is no node at `path`, `PermissionDenied`.
    pub fn lock_holders_checked(
        &self,
        session: SessionId,
        path: &str,
    ) -> Result<LockHolders, Refusal> {
        let stat = self
            .stat_path_checked(session, path)?
            .ok_or(Refusal::NotFound)?;
        let principal = self.principal(session)?;
        let admin = &self.config.admin;
        if !acl::has_right(&self.ns, admin, principal, &stat.acl, acl::Right::Read) {
            return Err(Refusal::PermissionDenied);
        }
        Ok(match self.lock_holders(path) {
            Some((mode, holders)) => (Some(mode), holders),
            None => (None, Vec::new()),
        })
    }

    /// GetSequencer as the wire answers it: held (with the sequencer), queued, or neither.
    ///
    /// # Errors
    /// The refusals of any handle call.
    pub fn lock_state(&self, session: SessionId, handle: HandleId) -> Result<LockState, Refusal> {
        self.lock_state_in(session, handle, None)
    }

    /// [`Self::lock_state`] of a handle the table has or `kept` (the master's memory) is:
    /// a handle that only the master's memory has holds no lock and awaits none.
    ///
    /// # Errors
    /// As [`Self::lock_state`].
    pub fn lock_state_in(
        &self,
        session: SessionId,
        handle: HandleId,
        kept: Option<&Handle>,
    ) -> Result<LockState, Refusal> {
        if self.sessions.handle_of(session, handle).is_none() {
            self.use_handle_in(session, handle, kept)?;
            return Ok(LockState::None);
        }
        if let Some(seq) = self.get_sequencer(session, handle)? {
            return Ok(LockState::Held(seq));
        }
        let (h, _) = self.use_handle(session, handle)?;
        Ok(if self.locks.involves(h.instance, handle) {
            LockState::Waiting
        } else {
            LockState::None
        })
    }
}

/// A lock's mode while held (`None`: free) and its holders.
pub type LockHolders = (
    Option<chubby_protocol::LockMode>,
    Vec<(SessionId, HandleId)>,
);

/// The parent of a valid non-root path; `None` for the root or an invalid path (which the
/// command itself will refuse).
fn parent_of(path: &str) -> Option<&str> {
    if path == "/" || chubby_protocol::db::check_path(path).is_err() {
        return None;
    }
    Some(parent(path))
}
