//! What a master tells a client on its KeepAlive replies (Chubby §2.5, §2.7, §2.8): cache
//! invalidations, handle events, lock grants and the fail-over notice.
//!
//! All traffic flows client → master (Chubby §2.8): the client always has a KeepAlive
//! parked at the master, and the master answers it early when it has something to deliver.
//! Every [`Notice`] a session is sent carries a sequence number, counted per session from
//! 1 within one client epoch; the next KeepAlive acknowledges every notice up to the
//! highest number the client has *processed*. A notice not yet acknowledged is sent again
//! on the next reply, so a lost reply loses nothing; the client skips numbers it has seen.
//!
//! An acknowledged [`Notice::Invalidate`] is the client's promise that it no longer holds
//! those paths in any cache: the master lets a write that waits on it proceed.
//!
//! # Cache tokens
//! A read that may be cached carries a [`CacheToken`]: the epoch and the highest notice
//! number the session had been sent when the master served it. A client installs the
//! result only if it has processed no invalidation numbered above the token (in that
//! epoch): otherwise an invalidation may have overtaken the reply in flight, and the value
//! could be stale by the time it lands.

use bincode::{Decode, Encode};

use crate::db::{HandleId, Sequencer};
use crate::ids::Ballot;

/// The events a handle asks for at Open (Chubby §2.5). The fail-over notice is per
/// session and always delivered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct EventMask(pub u8);

impl EventMask {
    /// None.
    pub const NONE: EventMask = EventMask(0);
    /// File contents modified.
    pub const CONTENTS: EventMask = EventMask(1);
    /// Child node added, removed, or modified (directories).
    pub const CHILDREN: EventMask = EventMask(1 << 1);
    /// The node was deleted (its handle is now invalid).
    pub const DELETED: EventMask = EventMask(1 << 2);
    /// The handle (and its lock) became invalid.
    pub const HANDLE_INVALID: EventMask = EventMask(1 << 3);
    /// Someone acquired the node's lock.
    pub const LOCK_ACQUIRED: EventMask = EventMask(1 << 4);
    /// Another client asked for the lock this handle holds.
    pub const LOCK_CONFLICT: EventMask = EventMask(1 << 5);
    /// Every event.
    pub const ALL: EventMask = EventMask(0b11_1111);

    /// The union of two masks.
    #[must_use]
    pub const fn with(self, other: EventMask) -> EventMask {
        EventMask(self.0 | other.0)
    }

    /// True if every bit of `other` is set here.
    #[must_use]
    pub const fn contains(self, other: EventMask) -> bool {
        self.0 & other.0 == other.0
    }

    /// True if no unknown bit is set.
    #[must_use]
    pub const fn is_valid(self) -> bool {
        self.0 & !Self::ALL.0 == 0
    }
}

/// A handle event (Chubby §2.5), delivered after the action took place.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub enum Event {
    /// The file's contents were replaced.
    ContentsModified,
    /// A child was created (or renamed into this directory).
    ChildAdded {
        /// Its name.
        name: String,
    },
    /// A child was deleted (or renamed away).
    ChildRemoved {
        /// Its name.
        name: String,
    },
    /// A child file's contents were replaced.
    ChildModified {
        /// Its name.
        name: String,
    },
    /// The node was deleted; the handle fails from now on.
    NodeDeleted,
    /// The handle became invalid (its node was renamed over, or its sequencer went stale).
    HandleInvalid,
    /// The node's lock was acquired by some handle.
    LockAcquired,
    /// Another handle asked for the lock this handle holds.
    ConflictingLock,
}

impl Event {
    /// The mask bit that selects this event.
    #[must_use]
    pub fn mask(&self) -> EventMask {
        match self {
            Event::ContentsModified => EventMask::CONTENTS,
            Event::ChildAdded { .. } | Event::ChildRemoved { .. } | Event::ChildModified { .. } => {
                EventMask::CHILDREN
            }
            Event::NodeDeleted => EventMask::DELETED,
            Event::HandleInvalid => EventMask::HANDLE_INVALID,
            Event::LockAcquired => EventMask::LOCK_ACQUIRED,
            Event::ConflictingLock => EventMask::LOCK_CONFLICT,
        }
    }

    /// A short lower-case name (as `chubby watch` prints it).
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Event::ContentsModified => "contents_modified",
            Event::ChildAdded { .. } => "child_added",
            Event::ChildRemoved { .. } => "child_removed",
            Event::ChildModified { .. } => "child_modified",
            Event::NodeDeleted => "node_deleted",
            Event::HandleInvalid => "handle_invalid",
            Event::LockAcquired => "lock_acquired",
            Event::ConflictingLock => "conflicting_lock",
        }
    }
}

/// Why a queued Acquire ended without the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub enum WaitEnd {
    /// Release on the waiting handle.
    Cancelled,
    /// The waiting handle was closed.
    HandleClosed,
    /// The session ended.
    SessionEnded,
    /// The node was deleted.
    NodeDeleted,
}

/// One thing delivered on a KeepAlive reply.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub enum Notice {
    /// Drop everything cached about these paths (contents, metadata, listing, absence),
    /// then acknowledge.
    Invalidate {
        /// The paths.
        paths: Vec<String>,
    },
    /// An event on a handle whose mask selects it.
    Event {
        /// The handle.
        handle: HandleId,
        /// What happened.
        event: Event,
    },
    /// A queued Acquire on `handle` was granted.
    LockGranted {
        /// The handle now holding the lock.
        handle: HandleId,
        /// The lock's sequencer.
        sequencer: Sequencer,
    },
    /// A queued Acquire on `handle` ended without the lock.
    LockWaitEnded {
        /// The handle.
        handle: HandleId,
        /// Why.
        reason: WaitEnd,
    },
    /// A new master took over: drop every cache (invalidations may have been lost) and
    /// rescan what matters; other events may have been lost (Chubby §2.9 step 5).
    FailOver,
}

/// A numbered notice.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub struct Numbered {
    /// Its number within the session and epoch (from 1).
    pub seq: u64,
    /// The notice.
    pub notice: Notice,
}

/// The answer to a KeepAlive.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct KeepAliveReply {
    /// The session's lease runs at least this long from when the master replied.
    pub lease_ms: u64,
    /// Every notice not yet acknowledged, in order.
    pub notices: Vec<Numbered>,
}

/// Marks a read the client may cache (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub struct CacheToken {
    /// The client epoch it was served in.
    pub epoch: Ballot,
    /// The highest notice number the session had been sent.
    pub seq: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_maps_to_one_bit_of_all() {
        let events = [
            Event::ContentsModified,
            Event::ChildAdded { name: "a".into() },
            Event::NodeDeleted,
            Event::HandleInvalid,
            Event::LockAcquired,
            Event::ConflictingLock,
        ];
        let mut union = EventMask::NONE;
        for e in &events {
            assert_eq!(e.mask().0.count_ones(), 1, "{e:?}");
            assert!(EventMask::ALL.contains(e.mask()));
            union = union.with(e.mask());
        }
        assert_eq!(union, EventMask::ALL);
        assert!(!EventMask(0x80).is_valid());
        assert!(EventMask::ALL.is_valid());
    }
}
