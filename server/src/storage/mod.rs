//! Durable acceptor state: the promised ballot, the voter flag, the chosen watermark and the
//! log (PML §4.2, §5.1).
//!
//! Two implementations share one record format ([`record`]): [`SledStorage`] on disk and
//! [`MemStorage`], its in-memory twin for the simulator.
pub mod mem;
pub mod record;
pub mod sled_store;

pub use mem::MemStorage;
pub use sled_store::SledStorage;

use crate::paxos::{DurableState, PersistBatch};

/// Why storage failed. Every variant is fatal to the replica: it stops taking part rather
/// than guess (a failed fsync is never retried as if nothing happened).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The operating system refused a read, write or sync.
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// sled reported an error.
    #[error("sled error: {0}")]
    Sled(#[from] sled::Error),
    /// A stored record failed its checksum or could not be decoded.
    #[error("corrupt record {key}: {reason}")]
    Corrupt {
        /// The record's key, printable.
        key: String,
        /// What was wrong.
        reason: String,
    },
}

/// What a load found.
#[derive(Debug)]
pub enum Loaded {
    /// The store has never been written: a new cell's member, or a member that lost its disk.
    Empty,
    /// The state as last persisted.
    State(DurableState),
}

/// Durable storage of acceptor state.
pub trait Storage {
    /// Loads what was persisted.
    ///
    /// # Errors
    /// [`StorageError::Corrupt`] when any record fails its checksum: the caller must not use
    /// any of the store, report it, and rebuild from peers (PML §5.1).
    fn load(&mut self) -> Result<Loaded, StorageError>;

    /// Writes `batch` atomically.
    ///
    /// # Contract
    /// When this returns `Ok`, the batch survives a crash (it was synced to stable storage).
    ///
    /// # Errors
    /// Any failure; the replica must stop, since the batch may or may not be durable.
    fn persist(&mut self, batch: &PersistBatch) -> Result<(), StorageError>;

    /// Deletes everything, so the next load returns [`Loaded::Empty`].
    ///
    /// # Errors
    /// Any I/O failure.
    fn wipe(&mut self) -> Result<(), StorageError>;
}
