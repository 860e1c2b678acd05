//! Acceptor state in sled 0.34.7, really synced.
//!
//! sled 0.34.7's `flush()` writes with `sync_file_range` and never calls fsync on Linux
//! (spacejam/sled#1452; `../shared/STACK.md` §4), and values larger than a quarter of a
//! segment are written as separate blob files that sled never syncs at all. So `persist`
//! does, in order: one atomic `apply_batch`, `flush()`, then `fdatasync` of the `db` file and
//! `fsync` of every blob file created since the last persist and of the blob directory. One
//! persist is one batch and one sync (group commit: the caller merges many Paxos writes into
//! one batch). The segment size is raised so that normal log entries stay inline.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::record::{decode_all, deleted_range, encode_batch, KEY_FORMAT};
use super::{Loaded, Storage, StorageError};
use crate::paxos::PersistBatch;

/// sled segment size: blobs start above a quarter of it, and our records stay below 2 MiB.
const SEGMENT_BYTES: usize = 8 << 20;

/// A sled database holding one replica's acceptor state.
#[derive(Debug)]
pub struct SledStorage {
    db: sled::Db,
    dir: PathBuf,
    db_file: File,
    blobs_synced: BTreeSet<std::ffi::OsString>,
    formatted: bool,
    syncs: u64,
}

impl SledStorage {
    /// Opens (creating if needed) the store in `dir`.
    ///
    /// # Errors
    /// sled cannot open the directory (held by another process, unreadable, not a sled
    /// database), or syncing the new directory fails.
    pub fn open(dir: &Path) -> Result<SledStorage, StorageError> {
        let db = sled::Config::new()
            .path(dir)
            .segment_size(SEGMENT_BYTES)
            .flush_every_ms(None)
            .open()?;
        let db_file = File::open(dir.join("db"))?;
        sync_dir(dir)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        let formatted = db.contains_key(KEY_FORMAT)?;
        let mut store = SledStorage {
            db,
            dir: dir.to_path_buf(),
            db_file,
            blobs_synced: BTreeSet::new(),
            formatted,
            syncs: 0,
        };
        store.blobs_synced = store.blob_names()?;
        Ok(store)
    }

    /// Number of syncs so far.
    #[must_use]
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// Writes raw bytes under `key`, bypassing checksums: for corruption tests only.
    ///
    /// # Errors
    /// sled failures.
    #[doc(hidden)]
    pub fn put_raw_for_test(&mut self, key: &[u8], record: &[u8]) -> Result<(), StorageError> {
        self.db.insert(key, record)?;
        self.sync()?;
        Ok(())
    }

    /// The raw record under `key`: for corruption tests only.
    ///
    /// # Errors
    /// sled failures.
    #[doc(hidden)]
    pub fn get_raw_for_test(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get(key)?.map(|v| v.to_vec()))
    }

    fn blob_names(&self) -> Result<BTreeSet<std::ffi::OsString>, StorageError> {
        let blobs = self.dir.join("blobs");
        if !blobs.exists() {
            return Ok(BTreeSet::new());
        }
        let mut names = BTreeSet::new();
        for entry in std::fs::read_dir(blobs)? {
            names.insert(entry?.file_name());
        }
        Ok(names)
    }

    /// flush, then the fsyncs sled's flush does not do.
    fn sync(&mut self) -> Result<(), StorageError> {
        self.db.flush()?;
        self.db_file.sync_data()?;
        let now = self.blob_names()?;
        let fresh: Vec<_> = now.difference(&self.blobs_synced).cloned().collect();
        if !fresh.is_empty() {
            let blobs = self.dir.join("blobs");
            for name in &fresh {
                File::open(blobs.join(name))?.sync_all()?;
            }
            sync_dir(&blobs)?;
        }
        self.blobs_synced = now;
        self.syncs += 1;
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

impl Storage for SledStorage {
    fn load(&mut self) -> Result<Loaded, StorageError> {
        let records = self.db.iter().map(|item| {
            item.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(StorageError::from)
        });
        decode_all(records)
    }

    fn persist(&mut self, batch: &PersistBatch) -> Result<(), StorageError> {
        let mut sled_batch = sled::Batch::default();
        // encode_batch leaves out the batch's own entries at or below the truncation point.
        if let Some(range) = deleted_range(batch) {
            for key in self.db.range(range) {
                sled_batch.remove(key?.0);
            }
        }
        for (key, record) in encode_batch(batch, !self.formatted) {
            sled_batch.insert(key, record);
        }
        self.db.apply_batch(sled_batch)?;
        self.sync()?;
        self.formatted = true;
        Ok(())
    }

    fn wipe(&mut self) -> Result<(), StorageError> {
        self.db.clear()?;
        self.sync()?;
        self.formatted = false;
        Ok(())
    }
}
