//! Node operations: Open (with creation), SetContents, Delete, SetAcl, Rename, and the
//! automatic deletion of ephemeral nodes (Chubby §2.3, §2.6; DESIGN §3).
//!
//! # Check order
//! Each operation refuses with the first check that fails, in this order:
//! - Open: session, path syntax, mode not empty and lock-delay within bound, handle bound;
//!   then for an existing node: Must-create → Exists, kind (unless `Creation::Never`), each
//!   right of the mode; for a missing one: Never → NotFound, parent missing → NotFound,
//!   parent a file → NotADirectory, no write right on the parent, contents for a
//!   directory → InvalidArgument, size → TooLarge, ACL names → InvalidArgument, each
//!   right of the mode under the new node's ACL names.
//! - Handle calls: session, handle, the handle's sequencer, node alive; then kind, mode
//!   and right, arguments, CAS.
//!
//! # Ephemeral nodes
//! An ephemeral file is deleted when no handle has it open: when its last handle closes,
//! or when its last opener's session ends. An ephemeral directory is deleted when it is
//! empty and unopened, so a new one survives while its creator's handle is open, and goes
//! when its last child goes after that (Chubby §2.3: "if no client has them open (and, for
//! directories, they are empty)"). Deletions cascade up through ephemeral parents.
//!
//! # POSIX attributes (our extension; docs/mount.md "Modes, owners and times")
//! Every node carries a mode, an owner and POSIX times, stamped from the command's `now`:
//! creation sets all three times; a content write sets mtime and ctime; SetAcl and SetAttr
//! set ctime; a directory gaining or losing an entry (creation, deletion, reaping, rename)
//! sets its mtime and ctime. SetAttr needs write permission under the ACLs, which remain
//! the only access control. A directory's ephemeral-children marker makes every node
//! created in it ephemeral, from any client.
//!
//! # Rename (our extension)
//! Files only; atomic; replaces a target file; refused while the source or the target is
//! locked (held, awaited or in lock-delay), so no lock or sequencer ever changes path.
//! The moved file gets a new instance number (the name's instance numbers must keep
//! growing) and keeps its contents, generations, ACL names and ephemeral flag; its open
//! handles follow it. Handles on a replaced target fail from then on, as after Delete.

use std::sync::Arc;

use chubby_protocol::db::{check_path, FILE_BYTES_MAX, LOCK_DELAY_MS_MAX, MODE_BITS};
use chubby_protocol::{
    AclNames, AttrChange, ContentChecksum, Creation, EventMask, Generation, HandleId,
    InstanceNumber, NodeKind, OpenMode, Posix, Refusal, SessionId, Stat, TimeSet, Timespec,
};

use super::acl::{self, Right};
use super::locks::ReleaseCause;
use super::namespace::{parent, Node};
use super::sessions::Handle;
use super::{Change, Db, OpenArgs, Outcome, WaitEnd};

impl Db {
    pub(super) fn open(
        &mut self,
        args: &OpenArgs,
        changes: &mut Vec<Change>,
    ) -> Result<Outcome, Refusal> {
        let (handle, created, stat) = self.open_node(args, changes)?;
        let handle = self.sessions.open(handle);
        Ok(Outcome::Opened {
            handle,
            created,
            stat,
        })
    }

    /// [`super::Op::OpenKept`]: Open under the master's volatile id `id`; the table keeps
    /// the handle only if the node is ephemeral (a directory's ephemeral-children marker
    /// can make a created node so), else the master keeps it in its memory.
    pub(super) fn open_kept(
        &mut self,
        id: HandleId,
        args: &OpenArgs,
        changes: &mut Vec<Change>,
    ) -> Result<Outcome, Refusal> {
        if !id.is_volatile() || args.events != EventMask::NONE || args.ephemeral {
            return Err(Refusal::InvalidArgument);
        }
        if self.sessions.handle(id).is_some() {
            return Err(Refusal::BadHandle);
        }
        let (handle, created, stat) = self.open_node(args, changes)?;
        if stat.ephemeral {
            self.sessions.insert_volatile(id, handle);
        }
        Ok(Outcome::Opened {
            handle: id,
            created,
            stat,
        })
    }

    /// Open's checks and creation: the handle to number, whether the node was created,
    /// and its metadata.
    fn open_node(
        &mut self,
        args: &OpenArgs,
        changes: &mut Vec<Change>,
    ) -> Result<(Handle, bool, Stat), Refusal> {
        let principal = self.principal(args.session)?.to_owned();
        let lock_delay_ms = self.check_open_args(args)?;
        if !self.sessions.may_open(args.session) {
            return Err(Refusal::TooMany);
        }
        let created = match self.ns.get(&args.path) {
            Some(node) => {
                self.check_open_existing(args, node, &principal)?;
                false
            }
            None => {
                self.create_node(args, &principal, changes)?;
                true
            }
        };
        let node = self.ns.get(&args.path).expect("opened node exists");
        let (instance, stat) = (node.instance, node.stat());
        let path = self.ns.key(&args.path).expect("opened node has a key");
        let handle = Handle {
            session: args.session,
            path,
            instance,
            mode: args.mode,
            lock_delay_ms,
            sequencer: None,
            events: args.events,
        };
        Ok((handle, created, stat))
    }

    /// Open's checks of its arguments, after the session's: the path, the mode, the
    /// lock-delay and the event mask. Returns the handle's lock-delay.
    fn check_open_args(&self, args: &OpenArgs) -> Result<u64, Refusal> {
        check_path(&args.path).map_err(|_| Refusal::InvalidPath)?;
        let lock_delay_ms = args
            .lock_delay_ms
            .unwrap_or(self.config.lock_delay_ms_default);
        if args.mode.is_empty() || lock_delay_ms > LOCK_DELAY_MS_MAX || !args.events.is_valid() {
            return Err(Refusal::InvalidArgument);
        }
        Ok(self.effective_lock_delay(lock_delay_ms))
    }

    /// The lock-delay a handle gets (none with the planted bug that ignores them).
    fn effective_lock_delay(&self, lock_delay_ms: u64) -> u64 {
        if cfg!(feature = "bug-injection") && self.config.bug_ignore_lock_delay {
            0
        } else {
            lock_delay_ms
        }
    }

    /// An Open the master may answer from its memory (`master/kept.rs`, Chubby §2.9):
    /// `Ok(None)` if it must go through the log (no node at the path, so it may create
    /// one; an ephemeral node, whose last close must reach the log; events asked for);
    /// otherwise what the log's Open would answer, checked in the same order: its refusal,
    /// or the handle (to be numbered by the master) and the node's metadata. The master
    /// checks the handle bound against its own table. Changes nothing.
    ///
    /// # Errors
    /// The refusals of Open for an existing node.
    pub fn open_in_memory(&self, args: &OpenArgs) -> Result<Option<(Handle, Stat)>, Refusal> {
        let principal = self.principal(args.session)?;
        let lock_delay_ms = self.check_open_args(args)?;
        if args.events != EventMask::NONE || args.ephemeral {
            return Ok(None);
        }
        let Some(node) = self.ns.get(&args.path) else {
            return Ok(None);
        };
        if node.ephemeral {
            return Ok(None);
        }
        self.check_open_existing(args, node, principal)?;
        let path = self.ns.key(&args.path).expect("a node has a key");
        let handle = Handle {
            session: args.session,
            path,
            instance: node.instance,
            mode: args.mode,
            lock_delay_ms,
            sequencer: None,
            events: EventMask::NONE,
        };
        Ok(Some((handle, node.stat())))
    }

    /// Reannounce (Chubby §2.9 steps 6–8): a handle an earlier master kept in its memory,
    /// announced again from what it records. Checks what an Open of `path` with `mode`
    /// would: the node at `path` is still `instance` and not ephemeral, and the principal
    /// has every right of the mode. Returns the handle for the master to keep, and the
    /// node's metadata. Changes nothing.
    ///
    /// # Errors
    /// `SessionExpired`, `InvalidPath`, `InvalidArgument` (not a volatile id, an empty
    /// mode, a lock-delay over the bound), `NotFound`, `BadHandle` (an ephemeral node),
    /// `PermissionDenied`.
    pub fn reannounce_check(
        &self,
        session: SessionId,
        id: HandleId,
        path: &str,
        instance: InstanceNumber,
        mode: OpenMode,
        lock_delay_ms: Option<u64>,
    ) -> Result<(Handle, Stat), Refusal> {
        let principal = self.principal(session)?;
        check_path(path).map_err(|_| Refusal::InvalidPath)?;
        let lock_delay_ms = lock_delay_ms.unwrap_or(self.config.lock_delay_ms_default);
        if !id.is_volatile() || mode.is_empty() || lock_delay_ms > LOCK_DELAY_MS_MAX {
            return Err(Refusal::InvalidArgument);
        }
        let lock_delay_ms = self.effective_lock_delay(lock_delay_ms);
        let node = self
            .ns
            .get_instance(path, instance)
            .ok_or(Refusal::NotFound)?;
        if node.ephemeral {
            return Err(Refusal::BadHandle);
        }
        if !acl::has_mode(&self.ns, &self.config.admin, principal, &node.acl, mode) {
            return Err(Refusal::PermissionDenied);
        }
        let handle = Handle {
            session,
            path: self.ns.key(path).expect("a node has a key"),
            instance,
            mode,
            lock_delay_ms,
            sequencer: None,
            events: EventMask::NONE,
        };
        Ok((handle, node.stat()))
    }

    fn check_open_existing(
        &self,
        args: &OpenArgs,
        node: &Node,
        principal: &str,
    ) -> Result<(), Refusal> {
        if args.creation == Creation::Must {
            return Err(Refusal::Exists);
        }
        if args.creation != Creation::Never && node.kind != args.kind {
            return Err(match args.kind {
                NodeKind::Directory => Refusal::NotADirectory,
                NodeKind::File => Refusal::IsADirectory,
            });
        }
        if !acl::has_mode(
            &self.ns,
            &self.config.admin,
            principal,
            &node.acl,
            args.mode,
        ) {
            return Err(Refusal::PermissionDenied);
        }
        Ok(())
    }

    fn create_node(
        &mut self,
        args: &OpenArgs,
        principal: &str,
        changes: &mut Vec<Change>,
    ) -> Result<(), Refusal> {
        if args.creation == Creation::Never {
            return Err(Refusal::NotFound);
        }
        assert!(args.path != "/", "the root always exists");
        let dir = parent(&args.path);
        let parent_node = self.ns.get(dir).ok_or(Refusal::NotFound)?;
        if !parent_node.is_dir() {
            return Err(Refusal::NotADirectory);
        }
        let admin = &self.config.admin;
        if !acl::has_right(&self.ns, admin, principal, &parent_node.acl, Right::Write) {
            return Err(Refusal::PermissionDenied);
        }
        if args.kind == NodeKind::Directory && !args.contents.is_empty() {
            return Err(Refusal::InvalidArgument);
        }
        if args.contents.len() > FILE_BYTES_MAX {
            return Err(Refusal::TooLarge);
        }
        if args.create_mode.is_some_and(|m| m & !MODE_BITS != 0) {
            return Err(Refusal::InvalidArgument);
        }
        let acl_names = args.acl.clone().unwrap_or_else(|| parent_node.acl.clone());
        if !acl::valid_names(&acl_names) {
            return Err(Refusal::InvalidArgument);
        }
        if !acl::has_mode(&self.ns, admin, principal, &acl_names, args.mode) {
            return Err(Refusal::PermissionDenied);
        }
        let ephemeral = args.ephemeral || parent_node.ephemeral_children;
        let instance = self.ns.allocate_instance();
        let mut node = Node::new(args.kind, instance, self.now, acl_names);
        node.ephemeral = ephemeral;
        node.posix = Posix::new(args.kind, args.create_mode, args.create_owner, self.now);
        node.checksum = ContentChecksum::of(&args.contents);
        node.contents = Arc::new(args.contents.clone());
        let path = self.ns.insert(&args.path, node);
        changes.push(Change::Created {
            path,
            instance,
            kind: args.kind,
        });
        self.entries_changed(dir, changes);
        Ok(())
    }

    /// `dir` gained or lost an entry: its POSIX mtime and ctime are now (POSIX), and its
    /// watchers are told.
    pub(super) fn entries_changed(&mut self, dir: &str, changes: &mut Vec<Change>) {
        let now = self.now;
        if self.ns.get(dir).is_some() {
            self.ns.update(dir, |n| n.touch(now, true));
        }
        push_children_changed(changes, dir);
    }

    pub(super) fn set_contents(
        &mut self,
        session: SessionId,
        handle: HandleId,
        contents: &[u8],
        expected: Option<Generation>,
        changes: &mut Vec<Change>,
    ) -> Result<Outcome, Refusal> {
        let principal = self.principal(session)?;
        let (h, node) = self.use_handle(session, handle)?;
        if node.is_dir() {
            return Err(Refusal::IsADirectory);
        }
        self.handle_permits(principal, h, node, Right::Write)?;
        if contents.len() > FILE_BYTES_MAX {
            return Err(Refusal::TooLarge);
        }
        if expected.is_some_and(|e| e != node.content_generation) {
            return Err(Refusal::CasMismatch {
                current: node.content_generation,
            });
        }
        let (path, instance, now) = (Arc::clone(&h.path), node.instance, self.now);
        let stat = self.ns.update(&path, |n| {
            n.contents = Arc::new(contents.to_vec());
            n.checksum = ContentChecksum::of(contents);
            n.content_generation = n.content_generation.next();
            n.mtime = now;
            n.touch(now, true);
            n.stat()
        });
        let content_generation = stat.content_generation;
        changes.push(Change::ContentsChanged {
            path,
            instance,
            content_generation,
        });
        Ok(Outcome::ContentsSet { stat })
    }

    pub(super) fn delete(
        &mut self,
        session: SessionId,
        handle: HandleId,
        changes: &mut Vec<Change>,
    ) -> Result<Outcome, Refusal> {
        let principal = self.principal(session)?;
        let (h, node) = self.use_handle(session, handle)?;
        if &*h.path == "/" {
            return Err(Refusal::InvalidArgument);
        }
        self.handle_permits(principal, h, node, Right::Write)?;
        if self.ns.has_children(&h.path) {
            return Err(Refusal::NotEmpty);
        }
        let path = Arc::clone(&h.path);
        self.delete_node(&path, changes);
        self.reap(parent(&path), changes);
        Ok(Outcome::Deleted)
    }

    /// Removes a childless node with its lock; its handles stay, bound to nothing.
    pub(super) fn delete_node(&mut self, path: &Arc<str>, changes: &mut Vec<Change>) {
        let instance = self.ns.get(path).expect("deleting a missing node").instance;
        if let Some(lock) = self.locks.remove(instance) {
            for (handle, holder) in &lock.holders {
                let (path, session, handle) = (Arc::clone(path), holder.session, *handle);
                let cause = ReleaseCause::NodeDeleted;
                changes.push(Change::LockReleased {
                    path,
                    instance,
                    session,
                    handle,
                    cause,
                });
            }
            for w in &lock.waiters {
                let (path, session, handle) = (Arc::clone(path), w.session, w.handle);
                let reason = WaitEnd::NodeDeleted;
                changes.push(Change::WaitEnded {
                    path,
                    session,
                    handle,
                    reason,
                });
            }
        }
        let handles = self
            .sessions
            .openers(instance)
            .map(|o| o.iter().copied().collect())
            .unwrap_or_default();
        self.sessions.forget_instance(instance);
        let gone = self.ns.remove(path);
        assert_eq!(gone.instance, instance);
        changes.push(Change::Deleted {
            path: Arc::clone(path),
            instance,
            handles,
        });
        self.entries_changed(parent(path), changes);
    }

    /// Deletes `path` if it is an unused ephemeral node, then its parent likewise, and so on.
    pub(super) fn reap(&mut self, path: &str, changes: &mut Vec<Change>) {
        let mut path: Arc<str> = Arc::from(path);
        while let Some(node) = self.ns.get(&path) {
            let opened = self.sessions.is_open(node.instance);
            let nonempty = node.is_dir() && self.ns.has_children(&path);
            if !node.ephemeral || opened || nonempty {
                return;
            }
            assert!(&*path != "/", "the root is never ephemeral");
            self.delete_node(&path, changes);
            path = Arc::from(parent(&path));
        }
    }

    pub(super) fn set_acl(
        &mut self,
        session: SessionId,
        handle: HandleId,
        acl_names: &AclNames,
        expected: Option<Generation>,
        changes: &mut Vec<Change>,
    ) -> Result<Outcome, Refusal> {
        let principal = self.principal(session)?;
        let (h, node) = self.use_handle(session, handle)?;
        self.handle_permits(principal, h, node, Right::ChangeAcl)?;
        if !acl::valid_names(acl_names) {
            return Err(Refusal::InvalidArgument);
        }
        if expected.is_some_and(|e| e != node.acl_generation) {
            return Err(Refusal::CasMismatch {
                current: node.acl_generation,
            });
        }
        let (path, instance, now) = (Arc::clone(&h.path), node.instance, self.now);
        let stat = self.ns.update(&path, |n| {
            n.acl = acl_names.clone();
            n.acl_generation = n.acl_generation.next();
            n.touch(now, false);
            n.stat()
        });
        let acl_generation = stat.acl_generation;
        changes.push(Change::AclChanged {
            path,
            instance,
            acl_generation,
        });
        Ok(Outcome::AclSet { stat })
    }
}

impl Db {
    /// SetAttr: POSIX attributes and the ephemeral-children marker of the node at `path`
    /// (if still `instance`), with write permission on it.
    pub(super) fn set_attr(
        &mut self,
        session: SessionId,
        path: &str,
        instance: Option<InstanceNumber>,
        change: &AttrChange,
        changes: &mut Vec<Change>,
    ) -> Result<Outcome, Refusal> {
        let principal = self.principal(session)?.to_owned();
        check_path(path).map_err(|_| Refusal::InvalidPath)?;
        let node = self.ns.get(path).ok_or(Refusal::NotFound)?;
        if instance.is_some_and(|i| i != node.instance) {
            return Err(Refusal::NotFound);
        }
        let admin = &self.config.admin;
        if !acl::has_right(&self.ns, admin, &principal, &node.acl, Right::Write) {
            return Err(Refusal::PermissionDenied);
        }
        if !change.is_valid() {
            return Err(Refusal::InvalidArgument);
        }
        if change.ephemeral_children.is_some() && !node.is_dir() {
            return Err(Refusal::NotADirectory);
        }
        let (key, instance, now) = (
            self.ns.key(path).expect("node exists"),
            node.instance,
            self.now,
        );
        let at = |t: TimeSet| match t {
            TimeSet::Now => Timespec::from_instant(now),
            TimeSet::At(t) => t,
        };
        let stat = self.ns.update(path, |n| {
            if let Some(mode) = change.mode {
                n.posix.mode = mode;
            }
            if let Some(owner) = change.owner {
                n.posix.owner = Some(owner);
            }
            if let Some(on) = change.ephemeral_children {
                n.ephemeral_children = on;
            }
            n.touch(now, false);
            if let Some(t) = change.atime {
                n.posix.atime = at(t);
            }
            if let Some(t) = change.mtime {
                n.posix.mtime = at(t);
            }
            n.stat()
        });
        changes.push(Change::AttrsChanged {
            path: key,
            instance,
        });
        Ok(Outcome::AttrsSet { stat })
    }
}

/// Reports that `dir`'s children changed, once per command.
pub(super) fn push_children_changed(changes: &mut Vec<Change>, dir: &str) {
    let seen = changes
        .iter()
        .any(|c| matches!(c, Change::ChildrenChanged { dir: d } if &**d == dir));
    if !seen {
        changes.push(Change::ChildrenChanged {
            dir: Arc::from(dir),
        });
    }
}
