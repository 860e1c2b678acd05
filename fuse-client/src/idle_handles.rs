//! Writable handles kept open after their user is done with them, for the next writer or
//! locker of the same node (Chubby §2.8: "clients cache open handles ... if a client opens
//! a file it has opened previously, only the first Open() call necessarily leads to an RPC
//! to the master").
//!
//! Handles are records in the replicated database, so an Open and a Close each cost a Paxos
//! instance. A whole-file write through the mount (open, SetContents, close) cost three and
//! an `flock` acquire+release four (issue 21). With a kept handle a write of a file written
//! before costs one (SetContents) and a lock cycle two (Acquire, Release).
//!
//! A kept handle holds no lock and waits for none (a lock handle is kept only after its
//! Release of a *held* lock, so no grant can be in flight for it), has no event mask and no
//! sequencer, and is never one on an ephemeral node: a handle there keeps the node alive, so
//! its last close must reach the master. Keeping it is invisible to other clients: Chubby
//! checks rights on every write and lock call, not only at Open, and a handle on a deleted
//! node is simply bound to nothing.
//!
//! Handles are found by node *instance* (and lock-delay, which the handle carries). Before
//! one is used again the master confirms, with a Reopen, what an Open would check (the
//! path still names that instance, the rights are still granted). Least recently kept go
//! first when the bound is reached; the caller closes them.
//!
//! Pure: no I/O; [`crate::client::Client`] holds one per session.

use std::collections::VecDeque;

use chubby_protocol::{HandleId, InstanceNumber};

/// Default bound on kept handles per session.
pub const IDLE_HANDLES_DEFAULT: usize = 256;

/// What a kept handle can be used for: its node instance and the lock-delay it was opened
/// with (`None`: the cell's default).
pub type IdleKey = (InstanceNumber, Option<u64>);

/// Kept handles, least recently kept first.
#[derive(Debug, Default)]
pub struct IdleHandles {
    bound: usize,
    kept: VecDeque<(IdleKey, HandleId)>,
}

impl IdleHandles {
    /// An empty set holding at most `bound` handles (0: keep none).
    #[must_use]
    pub fn new(bound: usize) -> IdleHandles {
        IdleHandles {
            bound,
            kept: VecDeque::new(),
        }
    }

    /// Takes a kept handle for `key` (the most recently kept one), if any.
    pub fn take(&mut self, key: IdleKey) -> Option<HandleId> {
        let at = self.kept.iter().rposition(|(k, _)| *k == key)?;
        self.kept.remove(at).map(|(_, h)| h)
    }

    /// Keeps `handle` for `key`. Returns the handles to close now: the least recently kept
    /// beyond the bound (`handle` itself when the bound is 0).
    #[must_use]
    pub fn keep(&mut self, key: IdleKey, handle: HandleId) -> Vec<HandleId> {
        if self.kept.iter().any(|(_, h)| *h == handle) {
            return Vec::new(); // kept twice: the caller's bug, but never close a kept one
        }
        self.kept.push_back((key, handle));
        let mut evicted = Vec::new();
        while self.kept.len() > self.bound {
            if let Some((_, h)) = self.kept.pop_front() {
                evicted.push(h);
            }
        }
        evicted
    }

    /// How many handles are kept.
    #[must_use]
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    /// True when none is kept.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> IdleKey {
        (InstanceNumber(i), None)
    }

    #[test]
    fn a_kept_handle_is_taken_once_and_only_for_its_key() {
        let mut idle = IdleHandles::new(4);
        assert!(idle.keep(key(1), HandleId(10)).is_empty());
        assert_eq!(idle.take(key(2)), None);
        assert_eq!(idle.take((InstanceNumber(1), Some(500))), None);
        assert_eq!(idle.take(key(1)), Some(HandleId(10)));
        assert_eq!(idle.take(key(1)), None);
    }

    #[test]
    fn the_least_recently_kept_go_beyond_the_bound() {
        let mut idle = IdleHandles::new(2);
        assert!(idle.keep(key(1), HandleId(1)).is_empty());
        assert!(idle.keep(key(2), HandleId(2)).is_empty());
        assert_eq!(idle.keep(key(3), HandleId(3)), vec![HandleId(1)]);
        assert_eq!(idle.len(), 2);
        assert_eq!(idle.take(key(1)), None);
        assert_eq!(idle.take(key(3)), Some(HandleId(3)));
    }

    #[test]
    fn a_bound_of_zero_keeps_nothing() {
        let mut idle = IdleHandles::new(0);
        assert_eq!(idle.keep(key(1), HandleId(7)), vec![HandleId(7)]);
        assert!(idle.is_empty());
    }

    #[test]
    fn keeping_a_handle_twice_keeps_it_once() {
        let mut idle = IdleHandles::new(8);
        let _ = idle.keep(key(1), HandleId(1));
        assert!(idle.keep(key(1), HandleId(1)).is_empty());
        assert_eq!(idle.len(), 1);
    }
}
