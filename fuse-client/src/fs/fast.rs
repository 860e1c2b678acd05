//! Answers on fuser's own thread for requests the session's cache settles: no task, no
//! hop to the runtime.
//!
//! Why: a cached `cat` costs the daemon five requests (LOOKUP, OPEN, READ, FLUSH, RELEASE;
//! the kernel drops a file's dentry, and with it the inode and its pages, at the last
//! close, since entries are never cached) and no round trip to the cell. Sent through the runtime each cost about 40 µs
//! (a task spawned and woken on another thread), which capped cached open+read+close at
//! about 4.7 k/s. Answered here they cost the lookup in the cache and the reply.
//!
//! Each function gives the very answer the async path would give for the same state, or
//! `None` when it cannot know without waiting (a cache miss, a session not safe, a file
//! being written, a lock to release): the caller then takes the async path, which stays
//! the reference. A miss costs one cache lookup.

use chubby_protocol::NodeKind;
use fuser::{FileAttr, FopenFlags};

use super::file_ops::slice;
use super::inodes::Share;
use super::{guard, metrics, Desc, File, Shared, ATTR_TTL, NO_TTL};
use crate::session::SessionStatus;
use std::time::Duration;

impl Shared {
    /// The current session's client, if it is safe now.
    fn fast_client(&self) -> Option<super::sessions::Current> {
        self.sessions
            .current()
            .filter(|c| c.client.status() == SessionStatus::Safe)
    }

    /// LOOKUP of a name whose node the cache holds (and that no open owes a retry for, and
    /// no writer's release is committing).
    pub(super) fn fast_lookup(
        &self,
        parent: u64,
        name: &std::ffi::OsStr,
        pid: u32,
    ) -> Option<(FileAttr, Duration)> {
        let path = self.child(parent, name).ok()?;
        if self.releasing.busy(&path) || self.retry_of(pid, &path).is_some() {
            return None;
        }
        let client = self.fast_client()?.client;
        let stat = client.cached_stat(&path).flatten()?;
        let contents = match stat.kind {
            NodeKind::File => client
                .cached_contents(&path)
                .filter(|(_, s)| {
                    s.instance == stat.instance && s.content_generation == stat.content_generation
                })
                .map(|(c, _)| c),
            NodeKind::Directory => None,
        };
        Some(self.entry(&path, &stat, contents))
    }

    /// GETATTR of a file version (its attributes never change) or of a directory the
    /// cache holds; a writer's own inode takes the async path (its size is the buffer's).
    pub(super) fn fast_getattr(&self, ino: u64) -> Option<(FileAttr, Duration)> {
        let file = guard(&self.inodes).file(ino);
        if let Some(f) = file {
            return match f.share {
                // As the async path: the cached node's metadata if it is still this
                // version, a link count of zero once the name no longer names the node.
                Share::Current | Share::Old => {
                    let cached = self.fast_client()?.client.cached_stat(&f.path)?;
                    match cached {
                        Some(s) if s.instance == f.stat.instance => {
                            if s.content_generation == f.stat.content_generation {
                                Some((self.attr(ino, &s), ATTR_TTL))
                            } else {
                                Some((self.attr(ino, &f.stat), ATTR_TTL))
                            }
                        }
                        _ => {
                            let mut attr = self.attr(ino, &f.stat);
                            attr.nlink = 0;
                            Some((attr, NO_TTL))
                        }
                    }
                }
                Share::Private(None) => Some((self.attr(ino, &f.stat), NO_TTL)),
                Share::Private(Some(_)) => None,
            };
        }
        let path = self.path(ino).ok()?;
        let stat = self
            .fast_client()?
            .client
            .cached_stat(&path)
            .flatten()
            .filter(|s| s.instance.0 == ino)?;
        metrics::bump(&self.counters.attrs_cached);
        Some((self.attr(ino, &stat), ATTR_TTL))
    }

    /// A read-only OPEN of a version whose contents the inode holds, that needs no handle
    /// (not ephemeral). No session is needed: the version is the one the lookup found
    /// current.
    pub(super) fn fast_open(&self, ino: u64, flags: i32, pid: u32) -> Option<(u64, FopenFlags)> {
        // `O_TRUNC` truncates even read-only: a writer's open (the async path).
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return None;
        }
        let (path, contents) = {
            let mut inodes = guard(&self.inodes);
            let f = inodes.file(ino)?;
            if f.stat.ephemeral {
                return None;
            }
            let contents = inodes.open_read(ino).ok()??;
            (f.path, contents)
        };
        self.retried(pid);
        let fh = self.new_fh(File {
            path,
            ino,
            generation: self.session_generation(),
            desc: Desc::Read {
                handle: None,
                contents,
            },
            times: None,
            modified: None,
        });
        Some((fh, FopenFlags::FOPEN_KEEP_CACHE))
    }

    /// READ of a read-only description: its version's bytes.
    pub(super) fn fast_read(&self, fh: u64, offset: u64, size: u32) -> Option<Vec<u8>> {
        if guard(&self.lost).contains(&fh) {
            return None;
        }
        let slot = guard(&self.files).get(&fh).cloned()?;
        let file = slot.file.try_lock().ok()?;
        match &file.desc {
            Desc::Read { contents, .. } => Some(slice(contents, offset, size).to_vec()),
            Desc::Write { .. } => None,
        }
    }

    /// FLUSH of a read-only description by an owner that holds no fcntl lock on the file:
    /// nothing to commit, nothing to release.
    pub(super) fn fast_flush(&self, ino: u64, fh: u64, owner: u64) -> bool {
        self.idle_read(fh).is_some() && !self.holds_lock(ino, owner)
    }

    /// RELEASE of a read-only description without a handle, whose flock owner (if any)
    /// holds no lock on the file, and through which no lock (an OFD lock) was taken.
    pub(super) fn fast_release(&self, ino: u64, fh: u64, flock_owner: Option<u64>) -> bool {
        if self.idle_read(fh) != Some(false)
            || flock_owner.is_some_and(|o| self.holds_lock(ino, o))
            || !guard(&self.locks).of_fh(fh).is_empty()
        {
            return false;
        }
        if guard(&self.files).remove(&fh).is_some() {
            guard(&self.inodes).closed(ino);
        }
        true
    }

    /// True if `owner` holds (or is taking) a lock on the file of `ino` on this mount.
    pub(super) fn holds_lock(&self, ino: u64, owner: u64) -> bool {
        let Some(key) = guard(&self.inodes).instance(ino) else {
            return false;
        };
        guard(&self.locks).holds(key, owner)
    }

    /// For a read-only description nobody is using right now and that did not lose its
    /// lock: whether it holds a handle. `None` otherwise.
    fn idle_read(&self, fh: u64) -> Option<bool> {
        if guard(&self.lost).contains(&fh) {
            return None;
        }
        let slot = guard(&self.files).get(&fh).cloned()?;
        let file = slot.file.try_lock().ok()?;
        match &file.desc {
            Desc::Read { handle, .. } => Some(handle.is_some()),
            Desc::Write { .. } => None,
        }
    }
}
