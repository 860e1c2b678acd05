//! Answers on fuser's own thread for requests the session's cache settles: no task, no
//! hop to the runtime.
//!
//! Why: a cached `cat` costs the daemon five requests (LOOKUP, OPEN, GETATTR, FLUSH,
//! RELEASE) and no round trip to the cell. Sent through the runtime each cost about 40 µs
//! (a task spawned and woken on another thread), which capped cached open+read+close at
//! about 4.7 k/s. Answered here they cost the lookup in the cache and the reply.
//!
//! Each function gives the very answer the async path would give for the same state, or
//! `None` when it cannot know without waiting (a cache miss, a session not safe, a file
//! being written, a lock to release): the caller then takes the async path, which stays
//! the reference. A miss costs one cache lookup.

use chubby_protocol::NodeKind;
use fuser::{FileAttr, FopenFlags};

use super::{guard, metrics, Desc, File, Shared};
use crate::session::SessionStatus;

impl Shared {
    /// The current session's client, if it is safe now.
    fn fast_client(&self) -> Option<super::sessions::Current> {
        self.sessions
            .current()
            .filter(|c| c.client.status() == SessionStatus::Safe)
    }

    /// The cached metadata of `path`, if a node is there.
    fn fast_stat(&self, path: &str) -> Option<chubby_protocol::Stat> {
        self.fast_client()?.client.cached_stat(path).flatten()
    }

    /// LOOKUP of a name whose node the cache holds.
    pub(super) fn fast_lookup(&self, parent: u64, name: &std::ffi::OsStr) -> Option<FileAttr> {
        let path = self.child(parent, name).ok()?;
        let stat = self.fast_stat(&path)?;
        guard(&self.inodes).remember(stat.instance.0, &path);
        Some(self.attr(&stat))
    }

    /// GETATTR of a node the cache holds, unless the description is a write with unsaved
    /// bytes (its size is the buffer's).
    pub(super) fn fast_getattr(&self, ino: u64, fh: Option<u64>) -> Option<FileAttr> {
        if let Some(fh) = fh {
            let file = guard(&self.files).get(&fh).cloned()?;
            let file = file.try_lock().ok()?;
            if matches!(&file.desc, Desc::Write { buf, .. } if buf.is_dirty()) {
                return None;
            }
        }
        let path = self.path(ino).ok()?;
        let stat = self.fast_stat(&path).filter(|s| s.instance.0 == ino)?;
        metrics::bump(&self.counters.attrs_cached);
        Some(self.attr(&stat))
    }

    /// A read-only OPEN of a cached file that needs no handle (not ephemeral).
    pub(super) fn fast_open(&self, ino: u64, flags: i32) -> Option<(u64, FopenFlags)> {
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            return None;
        }
        let path = self.path(ino).ok()?;
        let cur = self.fast_client()?;
        let (contents, stat) = cur.client.cached_contents(&path)?;
        if stat.instance.0 != ino || stat.kind == NodeKind::Directory || stat.ephemeral {
            return None;
        }
        let fh = self.new_fh(File {
            path,
            generation: cur.generation,
            desc: Desc::Read {
                handle: None,
                snapshot: Some(contents),
            },
        });
        Some((fh, FopenFlags::FOPEN_KEEP_CACHE))
    }

    /// FLUSH of a read-only description by an owner that holds no fcntl lock on the file:
    /// nothing to commit, nothing to release.
    pub(super) fn fast_flush(&self, ino: u64, fh: u64, owner: u64) -> bool {
        self.idle_read(fh).is_some() && !guard(&self.locks).holds(ino, owner)
    }

    /// RELEASE of a read-only description without a handle, whose flock owner (if any)
    /// holds no lock on the file.
    pub(super) fn fast_release(&self, ino: u64, fh: u64, flock_owner: Option<u64>) -> bool {
        if self.idle_read(fh) != Some(false)
            || flock_owner.is_some_and(|o| guard(&self.locks).holds(ino, o))
        {
            return false;
        }
        guard(&self.files).remove(&fh);
        true
    }

    /// For a read-only description nobody is using right now and that did not lose its
    /// lock: whether it holds a handle. `None` otherwise.
    fn idle_read(&self, fh: u64) -> Option<bool> {
        if guard(&self.lost).contains(&fh) {
            return None;
        }
        let file = guard(&self.files).get(&fh).cloned()?;
        let file = file.try_lock().ok()?;
        match &file.desc {
            Desc::Read { handle, .. } => Some(handle.is_some()),
            Desc::Write { .. } => None,
        }
    }
}
