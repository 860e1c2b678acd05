//! Rename, our extension (DESIGN §3): moves a file, or a directory with everything under
//! it, atomically, replacing a target file or empty directory. It is one command, so one
//! Paxos write: every replica applies the whole move or none of it, and the master has
//! invalidated every cached path of both subtrees before proposing it
//! (`queries::touched_paths`), so no client reads a half-moved tree.
//!
//! # Check order
//! Session; both paths' syntax; the source exists and is not the root; the write right on
//! the source and on its parent; nothing in the source's subtree is locked (held, awaited or
//! in lock-delay), so no lock or sequencer ever changes path; `from == to` succeeds with no
//! change; a directory's target is not inside it (`InvalidArgument`, POSIX `EINVAL`); then the
//! target: an existing one must be of the source's kind (`NotADirectory` for a directory
//! over a file, `IsADirectory` for a file over a directory), empty if a directory
//! (`NotEmpty`), with the write right and not locked; and the target's parent must be an
//! existing directory with the write right.
//!
//! # What moves
//! Every moved node keeps its contents, generation numbers, ACL names, ephemeral flags and
//! POSIX attributes, and gets a new instance number (a name's instance numbers keep
//! growing); its open handles follow it. The moved node's POSIX ctime and both parents'
//! mtime and ctime are set. Handles on a replaced target fail from then on, as after Delete.

use std::sync::Arc;

use chubby_protocol::db::check_path;
use chubby_protocol::{Refusal, SessionId, Stat};

use super::acl::{self, Right};
use super::namespace::parent;
use super::{Change, Db, Outcome};

impl Db {
    pub(super) fn rename(
        &mut self,
        session: SessionId,
        from: &str,
        to: &str,
        changes: &mut Vec<Change>,
    ) -> Result<Outcome, Refusal> {
        let principal = self.principal(session)?.to_owned();
        check_path(from).map_err(|_| Refusal::InvalidPath)?;
        check_path(to).map_err(|_| Refusal::InvalidPath)?;
        let source = self.ns.get(from).ok_or(Refusal::NotFound)?;
        if from == "/" || to == "/" {
            return Err(Refusal::InvalidArgument);
        }
        let from_dir = self.ns.get(parent(from)).ok_or(Refusal::NotFound)?;
        if !self.may_write(&principal, &source.acl) || !self.may_write(&principal, &from_dir.acl) {
            return Err(Refusal::PermissionDenied);
        }
        if self.subtree_busy(from) {
            return Err(Refusal::Locked);
        }
        if from == to {
            return Ok(Outcome::Renamed {
                stat: source.stat(),
            });
        }
        let inside = to.starts_with(from) && to.as_bytes().get(from.len()) == Some(&b'/');
        if inside && source.is_dir() {
            return Err(Refusal::InvalidArgument);
        }
        self.check_rename_target(source.is_dir(), to, &principal)?;
        let stat = self.move_subtree(from, to, changes);
        Ok(Outcome::Renamed { stat })
    }

    fn may_write(&self, principal: &str, acl_names: &chubby_protocol::AclNames) -> bool {
        acl::has_right(
            &self.ns,
            &self.config.admin,
            principal,
            acl_names,
            Right::Write,
        )
    }

    /// True if the node at `path` or any node under it is locked, awaited or in lock-delay.
    fn subtree_busy(&self, path: &str) -> bool {
        let busy = |p: &str| {
            self.ns
                .get(p)
                .is_some_and(|n| self.locks.is_busy(n.instance))
        };
        busy(path)
            || (self.ns.get(path).is_some_and(|n| n.is_dir())
                && self.ns.descendants(path).iter().any(|d| busy(d)))
    }

    fn check_rename_target(&self, dir: bool, to: &str, principal: &str) -> Result<(), Refusal> {
        if let Some(target) = self.ns.get(to) {
            match (dir, target.is_dir()) {
                (true, false) => return Err(Refusal::NotADirectory),
                (false, true) => return Err(Refusal::IsADirectory),
                (true, true) if self.ns.has_children(to) => return Err(Refusal::NotEmpty),
                _ => {}
            }
            if !self.may_write(principal, &target.acl) {
                return Err(Refusal::PermissionDenied);
            }
            if self.locks.is_busy(target.instance) {
                return Err(Refusal::Locked);
            }
        }
        let dir = self.ns.get(parent(to)).ok_or(Refusal::NotFound)?;
        if !dir.is_dir() {
            return Err(Refusal::NotADirectory);
        }
        if !self.may_write(principal, &dir.acl) {
            return Err(Refusal::PermissionDenied);
        }
        Ok(())
    }

    /// Moves the node at `from` and its subtree to `to`: drops the target, re-inserts each
    /// node under a new instance number, re-points its handles, and reaps the old parent if
    /// it is ephemeral.
    fn move_subtree(&mut self, from: &str, to: &str, changes: &mut Vec<Change>) -> Stat {
        if let Some(target) = self.ns.key(to) {
            self.delete_node(&target, changes);
        }
        let mut paths = vec![self.ns.key(from).expect("source checked")];
        paths.extend(self.ns.descendants(from));
        // Children leave before their parents, and arrive after them.
        let removed: Vec<_> = paths.iter().rev().map(|p| self.ns.remove(p)).collect();
        let now = self.now;
        let mut first = true;
        for (old_key, old) in paths.iter().zip(removed.into_iter().rev()) {
            assert!(!self.locks.is_busy(old.instance), "moving a locked node");
            let instance = self.ns.allocate_instance();
            let mut node = (*old).clone();
            node.instance = instance;
            if first {
                node.touch(now, false);
            }
            let new_path = format!("{to}{}", &old_key[from.len()..]);
            let to_key = self.ns.insert(&new_path, node);
            self.sessions.move_instance(old.instance, instance, &to_key);
            changes.push(Change::Renamed {
                from: Arc::clone(old_key),
                to: to_key,
                old_instance: old.instance,
                instance,
            });
            first = false;
        }
        self.entries_changed(parent(from), changes);
        self.entries_changed(parent(to), changes);
        self.reap(parent(from), changes);
        self.ns.get(to).expect("the source moved").stat()
    }
}
