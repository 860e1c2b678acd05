//! `flock(2)` and whole-file `fcntl(2)` locks as Chubby locks (DESIGN §6;
//! ../shared/STACK.md §1a', §1d).
//!
//! The kernel names a lock's owner: the open file description for `flock`, the process
//! for `fcntl`. Each (inode, owner) that locks gets its own Chubby handle, opened for the
//! lock. Unlocking a held lock releases it and keeps the handle for the file's next lock or
//! write (`crate::idle_handles`: an `flock` cycle then costs two Paxos instances, not four);
//! a wait given up, or a lock on an ephemeral file, closes its handle, which always gives up
//! both a held lock and a queued wait (and no late grant can reach a reused handle).
//! `flock` locks go at the last close of the description (`release` with the owner),
//! `fcntl` locks at any close by the process (`flush` with the owner). A blocked wait ends
//! with `EINTR` when the caller has a signal pending (fuser passes no FUSE_INTERRUPT):
//! [`signal_pending`] is polled, which is how Ctrl-C and `flock -w` work.

use std::collections::HashMap;
use std::time::Duration;

use chubby_protocol::{HandleId, LockMode, Sequencer};

use crate::idle_handles::IdleKey;

/// How often a blocked wait checks its caller for pending signals.
pub const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// The end of a whole-file lock range as the kernel passes it.
pub const WHOLE_FILE_END: u64 = i64::MAX as u64;

/// Where a lock stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockState {
    /// Queued at the master.
    Waiting,
    /// Held, with its sequencer.
    Held(Sequencer),
}

/// A lock (or wait) of one owner on one inode.
#[derive(Clone, Debug)]
pub struct Lock {
    /// The Chubby handle opened for it.
    pub handle: HandleId,
    /// How the handle may be kept for the file's next lock or write once the lock is
    /// released (`crate::idle_handles`): its instance and lock-delay; `None` on an
    /// ephemeral file, whose handles are always closed.
    pub keep_as: Option<IdleKey>,
    /// The open file description (FUSE file handle) it was taken through: fails with
    /// `EIO` once the lock is lost with its session.
    pub fh: u64,
    /// The session it was taken in.
    pub generation: u64,
    /// Shared or exclusive.
    pub mode: LockMode,
    /// The process that took it (for logs and `F_GETLK`).
    pub pid: u32,
    /// The file.
    pub path: String,
    /// Where it stands.
    pub state: LockState,
    /// The process that took it and its ancestors (pids, nearest first), read when the
    /// call arrived: who may be sparing from the fence if the session is lost while
    /// this is a wait, and who must never be spared if it is held (see `fence`).
    pub lineage: Vec<u32>,
}

/// The mount's locks, by (inode, owner).
#[derive(Debug, Default)]
pub struct Locks {
    by_key: HashMap<(u64, u64), Lock>,
}

impl Locks {
    /// The lock of `owner` on `ino`.
    #[must_use]
    pub fn get(&self, ino: u64, owner: u64) -> Option<&Lock> {
        self.by_key.get(&(ino, owner))
    }

    /// Records a lock or wait.
    pub fn insert(&mut self, ino: u64, owner: u64, lock: Lock) {
        self.by_key.insert((ino, owner), lock);
    }

    /// Marks a wait granted, if it is still the same wait (same handle).
    pub fn granted(&mut self, ino: u64, owner: u64, handle: HandleId, seq: Sequencer) -> bool {
        match self.by_key.get_mut(&(ino, owner)) {
            Some(l) if l.handle == handle => {
                l.state = LockState::Held(seq);
                true
            }
            _ => false,
        }
    }

    /// Removes the lock of `owner` on `ino`.
    pub fn remove(&mut self, ino: u64, owner: u64) -> Option<Lock> {
        self.by_key.remove(&(ino, owner))
    }

    /// True if `owner` holds (or is taking) a lock on `ino` through this table.
    #[must_use]
    pub fn holds(&self, ino: u64, owner: u64) -> bool {
        self.by_key.contains_key(&(ino, owner))
    }

    /// Removes the entry only if it still is the one with `handle`.
    pub fn remove_if(&mut self, ino: u64, owner: u64, handle: HandleId) -> Option<Lock> {
        if self
            .by_key
            .get(&(ino, owner))
            .is_some_and(|l| l.handle == handle)
        {
            return self.by_key.remove(&(ino, owner));
        }
        None
    }

    /// A held lock on `ino` that conflicts with `mode` for `owner`: another owner's
    /// exclusive lock, or any other owner's lock when `mode` is exclusive.
    #[must_use]
    pub fn conflict(&self, ino: u64, owner: u64, mode: LockMode) -> Option<&Lock> {
        self.by_key.iter().find_map(|((i, o), l)| {
            let held = matches!(l.state, LockState::Held(_));
            let clash = mode == LockMode::Exclusive || l.mode == LockMode::Exclusive;
            (*i == ino && *o != owner && held && clash).then_some(l)
        })
    }

    /// A sequencer of a lock held on `ino`, preferring one taken by `pid`.
    #[must_use]
    pub fn sequencer(&self, ino: u64, pid: u32) -> Option<Sequencer> {
        let mut found = None;
        for ((i, _), l) in &self.by_key {
            if *i != ino {
                continue;
            }
            if let LockState::Held(s) = &l.state {
                if l.pid == pid {
                    return Some(s.clone());
                }
                found = Some(s.clone());
            }
        }
        found
    }

    /// The (instance, owner) keys of the locks taken through the description `fh`.
    #[must_use]
    pub fn of_fh(&self, fh: u64) -> Vec<(u64, u64)> {
        self.by_key
            .iter()
            .filter(|(_, l)| l.fh == fh)
            .map(|(k, _)| *k)
            .collect()
    }

    /// Removes every lock of session `generation` (it expired), returning them.
    pub fn lose_session(&mut self, generation: u64) -> Vec<Lock> {
        let keys: Vec<(u64, u64)> = self
            .by_key
            .iter()
            .filter(|(_, l)| l.generation == generation)
            .map(|(k, _)| *k)
            .collect();
        keys.into_iter()
            .filter_map(|k| self.by_key.remove(&k))
            .collect()
    }
}

/// True if process `pid` has a signal pending that it does not block (or is gone): a
/// blocked lock wait must then end with `EINTR`. Read from `/proc/<pid>/status`.
#[must_use]
pub fn signal_pending(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true; // gone
    };
    pending_in(&status)
}

/// The test of [`signal_pending`] on the text of a status file.
#[must_use]
pub fn pending_in(status: &str) -> bool {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    ((field("SigPnd:") | field("ShdPnd:")) & !field("SigBlk:")) != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use chubby_protocol::{Generation, InstanceNumber};

    fn lock(handle: u64, mode: LockMode, held: bool) -> Lock {
        Lock {
            handle: HandleId(handle),
            keep_as: None,
            fh: handle,
            generation: 1,
            mode,
            pid: 10 + u32::try_from(handle).unwrap_or(0),
            path: "/l".into(),
            lineage: Vec::new(),
            state: if held {
                LockState::Held(Sequencer {
                    path: "/l".into(),
                    instance: InstanceNumber(5),
                    mode,
                    lock_generation: Generation(handle),
                })
            } else {
                LockState::Waiting
            },
        }
    }

    #[test]
    fn conflicts_follow_shared_and_exclusive() {
        let mut l = Locks::default();
        l.insert(5, 1, lock(1, LockMode::Shared, true));
        assert!(l.conflict(5, 2, LockMode::Shared).is_none());
        assert!(l.conflict(5, 2, LockMode::Exclusive).is_some());
        assert!(l.conflict(5, 1, LockMode::Exclusive).is_none(), "own lock");
        assert!(
            l.conflict(6, 2, LockMode::Exclusive).is_none(),
            "other file"
        );
        l.insert(5, 3, lock(3, LockMode::Exclusive, false));
        assert!(
            l.conflict(5, 2, LockMode::Shared).is_none(),
            "a wait holds nothing"
        );
    }

    #[test]
    fn grants_and_removals_match_the_handle() {
        let mut l = Locks::default();
        l.insert(5, 1, lock(1, LockMode::Exclusive, false));
        let seq = Sequencer {
            path: "/l".into(),
            instance: InstanceNumber(5),
            mode: LockMode::Exclusive,
            lock_generation: Generation(9),
        };
        assert!(!l.granted(5, 1, HandleId(2), seq.clone()), "a stale grant");
        assert!(l.granted(5, 1, HandleId(1), seq.clone()));
        assert_eq!(l.sequencer(5, 0), Some(seq));
        assert!(l.remove_if(5, 1, HandleId(2)).is_none());
        assert!(l.remove_if(5, 1, HandleId(1)).is_some());
        assert!(l.get(5, 1).is_none());
    }

    #[test]
    fn a_lost_session_takes_its_locks() {
        let mut l = Locks::default();
        l.insert(5, 1, lock(1, LockMode::Exclusive, true));
        let mut other = lock(2, LockMode::Shared, true);
        other.generation = 2;
        l.insert(6, 1, other);
        let lost = l.lose_session(1);
        assert_eq!(lost.len(), 1);
        assert!(l.get(6, 1).is_some());
    }

    #[test]
    fn pending_signals_are_read_from_status() {
        let s = "Name:\tflock\nSigQ:\t0/1\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000002\nSigBlk:\t0000000000000000\n";
        assert!(pending_in(s));
        let blocked = s.replace("SigBlk:\t0000000000000000", "SigBlk:\t0000000000000002");
        assert!(!pending_in(&blocked));
        assert!(!pending_in("SigPnd:\t0\nShdPnd:\t0\n"));
        assert!(signal_pending(u32::MAX), "a process that is gone");
        assert!(!signal_pending(std::process::id()));
    }
}
