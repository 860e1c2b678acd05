//! The in-memory twin of [`super::SledStorage`] for the deterministic simulator.
//!
//! It stores the same checksummed records, so corruption is detected by the same code. Writes
//! go to an unsynced layer first; [`MemStorage::crash`] drops whatever was not synced, and the
//! simulator can wipe the store or corrupt a record.

use std::collections::BTreeMap;

use super::record::{decode_all, deleted_range, encode_batch, KEY_FORMAT};
use super::{Loaded, Storage, StorageError};
use crate::paxos::PersistBatch;

/// Records in memory, with a synced and an unsynced layer.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    synced: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Pending writes; `None` deletes the key.
    unsynced: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    syncs: u64,
}

impl MemStorage {
    /// An empty store.
    #[must_use]
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// Writes a batch without syncing it (what a crash in the middle of `persist` leaves).
    pub fn write_unsynced(&mut self, batch: &PersistBatch) {
        let format = !self.synced.contains_key(KEY_FORMAT)
            && !self.unsynced.get(KEY_FORMAT).is_some_and(Option::is_some);
        if let Some(range) = deleted_range(batch) {
            let doomed: Vec<Vec<u8>> = self
                .synced
                .range(range.clone())
                .map(|(k, _)| k.clone())
                .chain(self.unsynced.range(range).map(|(k, _)| k.clone()))
                .collect();
            self.unsynced.extend(doomed.into_iter().map(|k| (k, None)));
        }
        let writes = encode_batch(batch, format).into_iter();
        self.unsynced.extend(writes.map(|(k, v)| (k, Some(v))));
    }

    /// Makes every unsynced write durable.
    pub fn sync(&mut self) {
        for (key, record) in std::mem::take(&mut self.unsynced) {
            match record {
                Some(record) => self.synced.insert(key, record),
                None => self.synced.remove(&key),
            };
        }
        self.syncs += 1;
    }

    /// The process died: unsynced writes are lost.
    pub fn crash(&mut self) {
        self.unsynced.clear();
    }

    /// Number of syncs so far.
    #[must_use]
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// Number of durable records.
    #[must_use]
    pub fn record_count(&self) -> usize {
        self.synced.len()
    }

    /// Flips one bit of the `index`-th durable record (modulo the count); false when empty.
    pub fn corrupt_record(&mut self, index: usize, bit: usize) -> bool {
        let count = self.synced.len();
        let Some(record) = self.synced.values_mut().nth(index % count.max(1)) else {
            return false;
        };
        if record.is_empty() {
            return false;
        }
        let bit = bit % (record.len() * 8);
        record[bit / 8] ^= 1 << (bit % 8);
        true
    }
}

impl Storage for MemStorage {
    fn load(&mut self) -> Result<Loaded, StorageError> {
        let records: Vec<_> = self
            .synced
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.clone())))
            .collect();
        decode_all(records)
    }

    fn persist(&mut self, batch: &PersistBatch) -> Result<(), StorageError> {
        self.write_unsynced(batch);
        self.sync();
        Ok(())
    }

    fn wipe(&mut self) -> Result<(), StorageError> {
        self.synced.clear();
        self.unsynced.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chubby_protocol::{Ballot, NodeId};

    fn promise(round: u64) -> PersistBatch {
        PersistBatch {
            promised: Some(Ballot {
                round,
                node: NodeId(1),
            }),
            ..PersistBatch::default()
        }
    }

    #[test]
    fn crash_loses_exactly_the_unsynced_writes() {
        let mut store = MemStorage::new();
        store.persist(&promise(1)).unwrap();
        store.write_unsynced(&promise(2));
        store.crash();
        let Loaded::State(state) = store.load().unwrap() else {
            panic!("empty")
        };
        assert_eq!(state.promised.round, 1);
    }

    #[test]
    fn corruption_is_reported_and_wipe_empties() {
        let mut store = MemStorage::new();
        store.persist(&promise(1)).unwrap();
        assert!(store.corrupt_record(0, 3));
        assert!(matches!(store.load(), Err(StorageError::Corrupt { .. })));
        store.wipe().unwrap();
        assert!(matches!(store.load(), Ok(Loaded::Empty)));
    }
}
