//! Expected refusals of database operations: the closed set of ways a well-formed request
//! can fail because of the state it met (DESIGN §5, STYLE habit 8).
//!
//! A [`Refusal`] is a value, not an error of the server: the database returns it in
//! `Result<Outcome, Refusal>` and changes nothing else. Faults of the replica itself
//! (storage, bugs) never take this form. The client-facing error code (with `NotMaster`,
//! `Unavailable` and the like) is a superset built around this enum; each refusal maps to
//! one errno in the FUSE client.

use bincode::{Decode, Encode};

use crate::db::Generation;
use crate::ids::Ballot;
use crate::time::Instant;

/// Why the database refused an operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode, thiserror::Error)]
pub enum Refusal {
    /// No node at that path, or the handle's node was deleted since it was opened.
    #[error("no such node")]
    NotFound,
    /// The node exists and the caller asked to create it.
    #[error("node exists")]
    Exists,
    /// A directory was needed (a parent, or a directory open) and a file was found.
    #[error("not a directory")]
    NotADirectory,
    /// A file was needed and a directory was found.
    #[error("is a directory")]
    IsADirectory,
    /// Delete of a directory that has children.
    #[error("directory not empty")]
    NotEmpty,
    /// The caller's principal is not in the ACL, or the handle lacks the mode.
    #[error("permission denied")]
    PermissionDenied,
    /// A compare-and-swap found another generation.
    #[error("generation mismatch (current {current:?})")]
    CasMismatch {
        /// The generation the node has.
        current: Generation,
    },
    /// TryAcquire of a lock held in a conflicting mode (or with waiters ahead).
    #[error("lock is held")]
    WouldBlock,
    /// TryAcquire of a lock in its lock-delay after its holder's session was lost.
    #[error("lock is in lock-delay until {until}")]
    LockDelayed {
        /// When the lock becomes available.
        until: Instant,
    },
    /// Contents larger than the file size limit.
    #[error("file too large")]
    TooLarge,
    /// A path or name breaks the naming rules.
    #[error("invalid path or name")]
    InvalidPath,
    /// Another argument is out of range (lock-delay above its bound, an empty open mode,
    /// contents for a directory, a malformed principal).
    #[error("invalid argument")]
    InvalidArgument,
    /// The command was proposed under another master epoch (PML §5.3).
    #[error("stale master epoch (current {current})")]
    StaleEpoch {
        /// The database's epoch.
        current: Ballot,
    },
    /// No such handle in this session (never opened, or closed).
    #[error("bad handle")]
    BadHandle,
    /// The session does not exist (expired, closed, or never created).
    #[error("session expired")]
    SessionExpired,
    /// The sequencer given, or the one set on the handle, is no longer valid.
    #[error("stale sequencer")]
    StaleSequencer,
    /// Release by a handle that neither holds nor awaits the lock.
    #[error("lock not held by this handle")]
    NotHeld,
    /// Acquire by a handle that already holds or awaits the lock.
    #[error("lock already held or awaited by this handle")]
    AlreadyHeld,
    /// Rename of (or over) a file whose lock is held, awaited or in lock-delay.
    #[error("node is locked")]
    Locked,
    /// A bound was reached (handles per session).
    #[error("too many")]
    TooMany,
    /// A numbered call sent again after the session said it had its answer (or after the
    /// master dropped the record of it to bound the session's records): nothing was done
    /// now, and its first copy's outcome is no longer known.
    #[error("call {number} was answered before and its outcome is forgotten")]
    CallForgotten {
        /// The call's number.
        number: u64,
    },
}
