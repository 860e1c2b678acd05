//! Reading snapshots and backups of formats 2 to 4. Formats 3 and 4 hold today's database
//! without the call records and the configuration's `bug_forget_call_outcomes` ([`DbV4`]);
//! format 2, described below, lacks more.
//!
//! Format 2 was written written before nodes carried POSIX
//! attributes and the ephemeral-children marker (`protocol::db::SNAPSHOT_FORMAT_OLDEST`).
//!
//! Format 2's body is format 3's with each node lacking its last two fields, so this
//! module mirrors the node and namespace of that time and upgrades them: every node gets
//! the default mode of its kind, no owner (a mount shows it as the mounting user's), POSIX
//! times equal to its Chubby modification time, and no ephemeral-children marker. Sessions,
//! handles and locks did not change and are decoded as they are.
//! `server/tests/data/backup-format2.snap`, written by `chubby admin backup` of the last
//! format-2 build, keeps this honest (`db::tests`).

use std::collections::BTreeMap;
use std::sync::Arc;

use bincode::Decode;
use chubby_protocol::{
    AclNames, Ballot, ContentChecksum, Generation, InstanceNumber, Instant, NodeKind, Posix, Slot,
    Timespec,
};

use super::calls::Calls;
use super::locks::Locks;
use super::namespace::{Namespace, Node};
use super::sessions::Sessions;
use super::{Db, DbConfig};

/// The configuration as formats 2 to 4 stored it.
#[derive(Decode)]
pub(super) struct DbConfigV4 {
    admin: String,
    lock_delay_ms_default: u64,
    bug_ignore_lock_delay: bool,
}

impl DbConfigV4 {
    fn upgrade(self) -> DbConfig {
        DbConfig {
            admin: self.admin,
            lock_delay_ms_default: self.lock_delay_ms_default,
            bug_ignore_lock_delay: self.bug_ignore_lock_delay,
            bug_forget_call_outcomes: false,
        }
    }
}

/// The database as formats 3 and 4 stored it.
#[derive(Decode)]
pub(super) struct DbV4 {
    config: DbConfigV4,
    epoch: Ballot,
    now: Instant,
    applied: Slot,
    ns: Namespace,
    sessions: Sessions,
    locks: Locks,
}

impl DbV4 {
    /// The database of today's format, with no call records (validated by the caller).
    pub(super) fn upgrade(self) -> Db {
        Db {
            config: self.config.upgrade(),
            epoch: self.epoch,
            now: self.now,
            applied: self.applied,
            ns: self.ns,
            sessions: self.sessions,
            locks: self.locks,
            calls: Calls::default(),
        }
    }
}

/// A node as format 2 stored it.
#[derive(Decode)]
struct NodeV2 {
    kind: NodeKind,
    ephemeral: bool,
    instance: InstanceNumber,
    content_generation: Generation,
    lock_generation: Generation,
    acl_generation: Generation,
    checksum: ContentChecksum,
    ctime: Instant,
    mtime: Instant,
    acl: AclNames,
    contents: Arc<Vec<u8>>,
}

impl NodeV2 {
    fn upgrade(self) -> Node {
        let t = Timespec::from_instant(self.mtime);
        let mut posix = Posix::new(self.kind, None, None, self.mtime);
        posix.atime = t;
        Node {
            kind: self.kind,
            ephemeral: self.ephemeral,
            instance: self.instance,
            content_generation: self.content_generation,
            lock_generation: self.lock_generation,
            acl_generation: self.acl_generation,
            checksum: self.checksum,
            ctime: self.ctime,
            mtime: self.mtime,
            acl: self.acl,
            contents: self.contents,
            posix,
            ephemeral_children: false,
            subdirs: 0, // counted by `Namespace::from_nodes`
        }
    }
}

/// The namespace as format 2 stored it (a `CowMap` encodes like a `BTreeMap`).
#[derive(Decode)]
struct NamespaceV2 {
    nodes: BTreeMap<Arc<str>, NodeV2>,
    next_instance: u64,
}

/// The database as format 2 stored it.
#[derive(Decode)]
pub(super) struct DbV2 {
    config: DbConfigV4,
    epoch: Ballot,
    now: Instant,
    applied: Slot,
    ns: NamespaceV2,
    sessions: Sessions,
    locks: Locks,
}

impl DbV2 {
    /// The database of today's format (validated by the caller, like any snapshot's).
    pub(super) fn upgrade(self) -> Db {
        let nodes = self.ns.nodes.into_iter().map(|(k, n)| (k, n.upgrade()));
        Db {
            config: self.config.upgrade(),
            epoch: self.epoch,
            now: self.now,
            applied: self.applied,
            ns: Namespace::from_nodes(nodes, self.ns.next_instance),
            sessions: self.sessions,
            locks: self.locks,
            calls: Calls::default(),
        }
    }
}
