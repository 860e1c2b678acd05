//! Rename, our extension (DESIGN §3): moves a file atomically, replacing a target file.
//! The rules are in `ops_nodes.rs`; the check order here is: session, both paths' syntax,
//! source exists, is a file, write right on it, not locked; `from == to` succeeds with no
//! change; then the target: an existing one must be a file with the write right and not
//! locked; a missing one needs an existing parent directory with the write right.

use std::sync::Arc;

use chubby_protocol::db::check_path;
use chubby_protocol::{Refusal, SessionId, Stat};

use super::acl::{self, Right};
use super::namespace::parent;
use super::ops_nodes::push_children_changed;
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
        if source.is_dir() {
            return Err(Refusal::IsADirectory);
        }
        if !self.may_write(&principal, &source.acl) {
            return Err(Refusal::PermissionDenied);
        }
        if self.locks.is_busy(source.instance) {
            return Err(Refusal::Locked);
        }
        if from == to {
            return Ok(Outcome::Renamed {
                stat: source.stat(),
            });
        }
        self.check_rename_target(to, &principal)?;
        let stat = self.move_file(from, to, changes);
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

    fn check_rename_target(&self, to: &str, principal: &str) -> Result<(), Refusal> {
        if let Some(target) = self.ns.get(to) {
            if target.is_dir() {
                return Err(Refusal::IsADirectory);
            }
            if !self.may_write(principal, &target.acl) {
                return Err(Refusal::PermissionDenied);
            }
            if self.locks.is_busy(target.instance) {
                return Err(Refusal::Locked);
            }
            return Ok(());
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

    /// Moves the file: drops the target, re-inserts the source under a new instance
    /// number, re-points its handles, and reaps the old parent if it is ephemeral.
    fn move_file(&mut self, from: &str, to: &str, changes: &mut Vec<Change>) -> Stat {
        let from_key = self.ns.key(from).expect("source checked");
        if let Some(target) = self.ns.key(to) {
            self.delete_node(&target, changes);
        }
        let old = self.ns.remove(from);
        assert!(!old.is_dir(), "rename of a directory");
        assert!(!self.locks.is_busy(old.instance), "rename of a locked file");
        let instance = self.ns.allocate_instance();
        let mut node = (*old).clone();
        node.instance = instance;
        let stat = node.stat();
        let to_key = self.ns.insert(to, node);
        self.sessions.move_instance(old.instance, instance, &to_key);
        let old_instance = old.instance;
        changes.push(Change::Renamed {
            from: from_key,
            to: Arc::clone(&to_key),
            old_instance,
            instance,
        });
        push_children_changed(changes, parent(from));
        push_children_changed(changes, parent(to));
        self.reap(parent(from), changes);
        stat
    }
}
