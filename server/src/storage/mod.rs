//! Durable acceptor state: the promised ballot, the voter flag, the chosen watermark and the
//! log (PML §4.2, §5.1).
//!
//! Two implementations share one record format ([`record`]): [`WalStorage`] on disk (our
//! own checksummed write-ahead log; `wal.rs` says why not sled) and [`MemStorage`], its
//! in-memory twin for the simulator.
//!
//! Beside the log, a replica's data directory:
//! - [`disk`]: opening the data directory: which cell it belongs to, a founding member's
//!   first start, and what to do with an empty or corrupt store.
//! - [`snapshot_file`]: the database snapshot file, `DATA/snapshot`, replaced whole and
//!   never by an older one (PML §5.5).
pub mod disk;
pub mod mem;
pub mod record;
pub mod snapshot_file;
pub mod wal;

pub use mem::MemStorage;
pub use wal::WalStorage;

use crate::paxos::{DurableState, PersistBatch};

/// Why storage failed. Every variant is fatal to the replica: it stops taking part rather
/// than guess (a failed fsync is never retried as if nothing happened).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The operating system refused a read, write or sync.
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Another process has the store open (another replica using this data directory).
    #[error("the store {0} is in use by another process")]
    Locked(std::path::PathBuf),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paxos::LogEntry;
    use chubby_protocol::{Ballot, NodeId, Slot, Value};

    fn entries(slots: std::ops::RangeInclusive<u64>) -> PersistBatch {
        PersistBatch {
            voter: Some(true),
            chosen_through: Some(Slot(*slots.end())),
            entries: slots
                .map(|s| {
                    let entry = LogEntry {
                        ballot: Ballot {
                            round: 1,
                            node: NodeId(1),
                        },
                        value: Value::commands(vec![s.to_le_bytes().to_vec()]),
                    };
                    (Slot(s), entry)
                })
                .collect(),
            ..PersistBatch::default()
        }
    }

    fn truncate(through: u64) -> PersistBatch {
        PersistBatch {
            truncate_through: Some(Slot(through)),
            ..PersistBatch::default()
        }
    }

    /// Writes a sequence with truncations; returns what `DurableState::apply` makes of it.
    fn write_truncating(store: &mut dyn Storage) -> DurableState {
        let mut expected = DurableState::default();
        // The last is a merged batch whose entries fall at or below its truncation point.
        let mut merged = entries(13..=14);
        merged.merge(truncate(13));
        for batch in [entries(1..=10), truncate(6), entries(11..=12), merged] {
            store.persist(&batch).unwrap();
            expected.apply(&batch);
        }
        assert_eq!(expected.truncated_through, Slot(13));
        assert_eq!(
            expected.log.keys().copied().collect::<Vec<_>>(),
            vec![Slot(14)]
        );
        expected.validate().unwrap();
        expected
    }

    fn state_of(store: &mut dyn Storage) -> DurableState {
        match store.load().unwrap() {
            Loaded::State(state) => state,
            Loaded::Empty => panic!("empty"),
        }
    }

    #[test]
    fn the_wal_truncates_like_apply_across_a_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let expected = write_truncating(&mut WalStorage::open(&dir).unwrap());
        assert_eq!(state_of(&mut WalStorage::open(&dir).unwrap()), expected);
    }

    #[test]
    fn memory_truncates_like_apply_and_a_crash_undoes_an_unsynced_truncation() {
        let mut store = MemStorage::new();
        let expected = write_truncating(&mut store);
        assert_eq!(state_of(&mut store), expected);

        let mut store = MemStorage::new();
        store.persist(&entries(1..=5)).unwrap();
        store.write_unsynced(&truncate(4));
        store.crash();
        let state = state_of(&mut store);
        assert_eq!(state.truncated_through, Slot::ZERO);
        assert_eq!(state.log.len(), 5);
    }
}
