//! The replica's database snapshot file, `DATA/snapshot` (PML §5.5).
//!
//! Written whole to `snapshot.tmp`, synced, renamed over `snapshot`, and the directory
//! synced: a crash leaves the old snapshot or the new one, never a mixture, and readers
//! (the peer serving a fetch) see one complete file. The Paxos log is truncated only after
//! [`SnapshotFile::store`] returned, so the log plus this file always cover every slot.
//!
//! Two writers exist — the replica's own periodic snapshot and a snapshot fetched from a
//! peer — and they may race. [`SnapshotFile::store`] serialises them and never replaces a
//! snapshot with an older one: the log may already be truncated against the newer.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chubby_protocol::Slot;

use crate::db::snapshot::{SnapshotError, SnapshotInfo};
use crate::db::Db;

/// The file's name in the data directory.
pub const SNAPSHOT_FILE: &str = "snapshot";
const SNAPSHOT_TMP: &str = "snapshot.tmp";

/// Why the snapshot file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bytes failed a check.
    #[error("{path}: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        source: SnapshotError,
    },
}

/// A data directory's snapshot file; clones share the writer lock.
#[derive(Clone, Debug)]
pub struct SnapshotFile {
    dir: PathBuf,
    /// Held while writing or removing (blocking threads only: it is held across fsyncs).
    writer: Arc<Mutex<()>>,
    /// The slot of the snapshot on disk (zero for none); read without the lock, so the
    /// core task never waits for a snapshot's fsync.
    latest: Arc<AtomicU64>,
}

impl SnapshotFile {
    /// The snapshot file of data directory `dir`.
    #[must_use]
    pub fn new(dir: &Path) -> SnapshotFile {
        SnapshotFile {
            dir: dir.to_path_buf(),
            writer: Arc::new(Mutex::new(())),
            latest: Arc::new(AtomicU64::new(0)),
        }
    }

    /// `DATA/snapshot`.
    #[must_use]
    pub fn path(&self) -> PathBuf {
        self.dir.join(SNAPSHOT_FILE)
    }

    /// The slot of the snapshot on disk (zero for none).
    #[must_use]
    pub fn latest(&self) -> Slot {
        Slot(self.latest.load(Ordering::Acquire))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // The lock guards no data: a panic while holding it leaves nothing half-written.
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads and verifies the snapshot; `None` when there is none. Blocking.
    ///
    /// # Errors
    /// The file cannot be read, or fails a check (it must then not be used).
    pub fn load(&self) -> Result<Option<(Db, SnapshotInfo)>, SnapshotFileError> {
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(SnapshotFileError::Io { path, source }),
        };
        let (db, info) =
            Db::restore(&bytes).map_err(|source| SnapshotFileError::Invalid { path, source })?;
        let _writer = self.lock();
        self.latest.store(info.slot.0, Ordering::Release);
        Ok(Some((db, info)))
    }

    /// Durably replaces the snapshot with `bytes`, which cover every slot through `slot`.
    /// Returns false (and writes nothing) when the snapshot on disk already covers as much.
    /// Blocking.
    ///
    /// # Errors
    /// A write, sync or rename failed; the previous snapshot is then still in place.
    pub fn store(&self, slot: Slot, bytes: &[u8]) -> Result<bool, SnapshotFileError> {
        let _writer = self.lock();
        if slot <= self.latest() {
            return Ok(false);
        }
        let tmp = self.dir.join(SNAPSHOT_TMP);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SnapshotFileError::Io { path, source }
        };
        let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        file.write_all(bytes).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        drop(file);
        let path = self.path();
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        self.latest.store(slot.0, Ordering::Release);
        Ok(true)
    }

    /// Removes the snapshot (a store that starts over must not pair with an old one).
    ///
    /// # Errors
    /// The removal failed for another reason than the file being absent.
    pub fn discard(&self) -> Result<(), std::io::Error> {
        let _writer = self.lock();
        for name in [SNAPSHOT_FILE, SNAPSHOT_TMP] {
            match std::fs::remove_file(self.dir.join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.latest.store(0, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::DbConfig;

    fn snapshot_at(slot: u64) -> Vec<u8> {
        let mut db = Db::new(DbConfig::new("admin")).unwrap();
        db.advance_slot(Slot(slot));
        db.freeze()
            .encode(&[], &chubby_protocol::MemberSets::default())
    }

    #[test]
    fn stores_loads_and_never_goes_back() {
        let tmp = tempfile::tempdir().unwrap();
        let file = SnapshotFile::new(tmp.path());
        assert!(file.load().unwrap().is_none());
        assert!(file.store(Slot(10), &snapshot_at(10)).unwrap());
        assert!(
            !file.store(Slot(5), &snapshot_at(5)).unwrap(),
            "older refused"
        );
        let again = SnapshotFile::new(tmp.path());
        let (_, info) = again.load().unwrap().unwrap();
        assert_eq!(info.slot, Slot(10));
        assert_eq!(again.latest(), Slot(10));
        assert!(!tmp.path().join(SNAPSHOT_TMP).exists());
    }

    #[test]
    fn a_flipped_byte_is_refused_and_discard_removes() {
        let tmp = tempfile::tempdir().unwrap();
        let file = SnapshotFile::new(tmp.path());
        file.store(Slot(3), &snapshot_at(3)).unwrap();
        let mut bytes = std::fs::read(file.path()).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(file.path(), &bytes).unwrap();
        let err = file.load().unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
        file.discard().unwrap();
        assert!(file.load().unwrap().is_none());
        assert_eq!(file.latest(), Slot::ZERO);
    }
}
