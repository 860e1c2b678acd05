//! Opening a replica's data directory: which cell it belongs to, whether this is a founding
//! member's first start, and what to do with an empty or corrupt store.
//!
//! ```text
//! DATA/cell-id     hex fingerprint of the cell CA (FNV-1a of its DER); written on first
//!                  start, checked after
//! DATA/NEW-CELL    written by `chubby cell init`; present only until a founding member's
//!                  first start formats its store as a voter
//! DATA/paxos/      the acceptor's write-ahead log (storage::WalStorage)
//! DATA/snapshot    the latest database snapshot (super::snapshot_file)
//! ```
//!
//! The three start cases (PML §5.1):
//! - store holds state → resume it;
//! - store empty and `NEW-CELL` present → a member of a new cell, which never promised
//!   anything: format as a voter;
//! - store empty without `NEW-CELL` (wiped disk, a new replica added later), or any record
//!   failing its checksum → start as a non-voter that rebuilds from its peers before it
//!   votes. Corruption is logged as an error, the store wiped, never used.
//!
//! A resumed store comes with the snapshot its log was truncated against. A snapshot that
//! fails its checks is discarded (logged as an error); if the log was truncated beyond what
//! the remaining snapshot covers, the store cannot be replayed and is treated as corrupt.
//! A store that starts over never keeps an old snapshot.

use std::io::Write;
use std::path::{Path, PathBuf};

use chubby_protocol::ContentChecksum;

use super::snapshot_file::SnapshotFile;
use crate::db::snapshot::{founding_snapshot, SnapshotInfo};
use crate::db::Db;
use crate::paxos::{DurableState, PersistBatch};
use crate::storage::{Loaded, Storage, StorageError, WalStorage};

pub use crate::cell::{NEW_CELL_MARKER, RESTORE_FILE, RESTORE_MARKER_KEY};
/// The file naming the cell a data directory belongs to.
pub const CELL_ID_FILE: &str = "cell-id";
/// The acceptor store's subdirectory.
pub const STORE_DIR: &str = "paxos";

/// How the store was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartKind {
    /// Resumed from intact state.
    Resumed,
    /// First start of a founding member: formatted as a voter.
    Founded,
    /// Empty store of a configured member: rebuilding from peers before voting.
    Empty,
    /// Corrupt store: wiped; rebuilding from peers before voting.
    Corrupt(String),
}

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The data directory belongs to another cell.
    #[error(
        "{dir} belongs to another cell (its cell-id is {found}, this configuration's CA is \
         {expected}); point data_dir at this replica's own directory"
    )]
    OtherCell {
        /// The directory.
        dir: PathBuf,
        /// The id found.
        found: String,
        /// This cell's id.
        expected: String,
    },
    /// Another process (a running replica) holds the store.
    #[error("{0} is in use by another running chubby-server (its store is locked)")]
    InUse(PathBuf),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The backup to found this replica's cell from (`chubby cell restore`) is unusable.
    #[error("{path}: cannot restore from this backup: {reason}")]
    Restore {
        /// The backup file (DATA/RESTORE).
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The store could not be opened or written.
    #[error("{path}: {source}")]
    Storage {
        /// The store's directory.
        path: PathBuf,
        /// What failed.
        source: StorageError,
    },
}

/// The cell's fingerprint: FNV-1a 64 of the CA certificate (DER).
#[must_use]
pub fn cell_id(ca_der: &[u8]) -> String {
    format!("{:016x}", ContentChecksum::of(ca_der).0)
}

/// An opened store and the state to start the Paxos core from.
#[derive(Debug)]
pub struct Opened {
    /// The store.
    pub storage: WalStorage,
    /// What it held (or the state to start with).
    pub state: DurableState,
    /// Which start case this was.
    pub kind: StartKind,
    /// The snapshot file of this directory.
    pub snapshots: SnapshotFile,
    /// The database as of the last snapshot, when resuming from one.
    pub snapshot: Option<(Db, SnapshotInfo)>,
}

/// Opens `data_dir` for the cell with id `cell`.
///
/// # Errors
/// [`DiskError::OtherCell`], or an I/O or storage failure (including the store's lock held by
/// another running replica).
pub fn open(data_dir: &Path, cell: &str) -> Result<Opened, DiskError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DiskError::Io { path, source }
    };
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let id_path = data_dir.join(CELL_ID_FILE);
    match std::fs::read_to_string(&id_path) {
        Ok(found) if found.trim() == cell => {}
        Ok(found) => {
            return Err(DiskError::OtherCell {
                dir: data_dir.to_path_buf(),
                found: found.trim().to_owned(),
                expected: cell.to_owned(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_synced(&id_path, &format!("{cell}\n")).map_err(io(&id_path))?;
        }
        Err(e) => return Err(io(&id_path)(e)),
    }

    let store_dir = data_dir.join(STORE_DIR);
    let storage_err = |source| DiskError::Storage {
        path: store_dir.clone(),
        source,
    };
    let mut storage = WalStorage::open(&store_dir).map_err(|e| match e {
        StorageError::Locked(_) => DiskError::InUse(data_dir.to_path_buf()),
        e => storage_err(e),
    })?;
    let marker = data_dir.join(NEW_CELL_MARKER);
    let (mut state, mut kind) = match storage.load() {
        Ok(Loaded::State(state)) => (state, StartKind::Resumed),
        Ok(Loaded::Empty) if marker.exists() => (DurableState::bootstrap(), StartKind::Founded),
        Ok(Loaded::Empty) => (DurableState::lost(), StartKind::Empty),
        Err(StorageError::Corrupt { key, reason }) => {
            let what = format!("record {key}: {reason}");
            tracing::error!(
                store = %store_dir.display(),
                corruption = %what,
                "CORRUPT STORE: discarding every record and rebuilding from peers; \
                 this replica casts no vote until it has seen a complete new instance"
            );
            storage.wipe().map_err(storage_err)?;
            (DurableState::lost(), StartKind::Corrupt(what))
        }
        Err(e) => return Err(storage_err(e)),
    };
    let snapshots = SnapshotFile::new(data_dir);
    let snapshot = if kind == StartKind::Resumed {
        match snapshots.load() {
            Ok(snapshot) => snapshot,
            Err(e) => {
                tracing::error!(file = %snapshots.path().display(), error = %e,
                    "CORRUPT SNAPSHOT: discarding it");
                snapshots.discard().map_err(io(&snapshots.path()))?;
                None
            }
        }
    } else {
        snapshots.discard().map_err(io(&snapshots.path()))?;
        None
    };
    // A founding member of a cell restored from a backup starts from it: the backup becomes
    // its snapshot and its log starts after the backup's slot. Every founder holds the same
    // backup, so they all start equal.
    let restore = data_dir.join(RESTORE_FILE);
    let mut snapshot = snapshot;
    let mut founding = PersistBatch::default();
    let named_crc = if kind == StartKind::Founded {
        restore_named_by(&marker).map_err(io(&marker))?
    } else {
        None
    };
    if kind == StartKind::Founded && (restore.exists() || named_crc.is_some()) {
        let invalid = |reason: String| DiskError::Restore {
            path: restore.clone(),
            reason,
        };
        let bytes = match std::fs::read(&restore) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(invalid(
                    "missing: this founding replica's NEW-CELL marker says its cell is \
                     restored from a backup; put the same backup file there (the one given to \
                     `chubby cell restore`) and start it again"
                        .into(),
                ))
            }
            Err(e) => return Err(io(&restore)(e)),
        };
        let crc = bytes
            .get(17..21)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        if let Some(named) = named_crc.filter(|n| Some(*n) != crc) {
            return Err(invalid(format!(
                "not the backup this cell was restored from (its checksum is {}, the marker \
                 names {named:08x})",
                crc.map_or_else(|| "unreadable".to_owned(), |c| format!("{c:08x}"))
            )));
        }
        let (db, info, snapshot_bytes) =
            founding_snapshot(&bytes).map_err(|e| invalid(e.to_string()))?;
        snapshots
            .store(info.slot, &snapshot_bytes)
            .map_err(|e| invalid(e.to_string()))?;
        tracing::info!(backup = %restore.display(), slot = %info.slot,
            nodes = db.counts().nodes, "founding this cell from a backup");
        state.chosen_through = info.slot;
        state.truncated_through = info.slot;
        founding.chosen_through = Some(info.slot);
        founding.truncate_through = Some(info.slot);
        // No membership change is chosen in the new cell's log so far: the founding set
        // (from the configs) governs, and that is known through the backup's slot.
        let members = chubby_protocol::MemberSets {
            complete_through: info.slot,
            ..chubby_protocol::MemberSets::default()
        };
        state.members = members.clone();
        founding.members = Some(members);
        snapshot = Some((db, info));
    }
    let applied = snapshot
        .as_ref()
        .map(|(_, info)| info.slot)
        .unwrap_or_default();
    if kind == StartKind::Resumed && state.truncated_through > applied {
        let what = format!(
            "the log was truncated through slot {} but no usable snapshot covers it (snapshot \
             slot {applied})",
            state.truncated_through
        );
        tracing::error!(store = %store_dir.display(), corruption = %what,
            "CORRUPT STORE: discarding every record and rebuilding from peers");
        storage.wipe().map_err(storage_err)?;
        state = DurableState::lost();
        kind = StartKind::Corrupt(what);
    }
    if kind != StartKind::Resumed {
        // Record the voter flag durably before anything else happens, so a crash right
        // after does not turn a rebuilding replica into a voter on the next start.
        let batch = PersistBatch {
            voter: Some(state.voter),
            ..founding
        };
        storage.persist(&batch).map_err(storage_err)?;
    }
    // Consumed by a founding start; left over by a crash right after one (the store holds
    // state now, so it means nothing, but if the store were wiped later it would make the
    // replica a founding voter again).
    if kind == StartKind::Founded || (kind == StartKind::Resumed && marker.exists()) {
        std::fs::remove_file(&marker).map_err(io(&marker))?;
    }
    // Used (its contents are now the snapshot and the store says so), or left over from a
    // start that got that far before a crash.
    if restore.exists() {
        if kind != StartKind::Founded {
            tracing::warn!(file = %restore.display(),
                "removing a backup left in the data directory: this replica's store already \
                 holds its state, so it was not used");
        }
        std::fs::remove_file(&restore).map_err(io(&restore))?;
    }
    Ok(Opened {
        storage,
        state,
        kind,
        snapshots,
        snapshot,
    })
}

/// The backup CRC a new-cell marker names (`chubby cell restore`), if any.
fn restore_named_by(marker: &Path) -> std::io::Result<Option<u32>> {
    let text = std::fs::read_to_string(marker)?;
    Ok(text.lines().find_map(|l| {
        let hex = l.strip_prefix(RESTORE_MARKER_KEY)?.trim();
        u32::from_str_radix(hex, 16).ok()
    }))
}

fn write_synced(path: &Path, text: &str) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::DbConfig;
    use crate::paxos::LogEntry;
    use chubby_protocol::{Ballot, Slot, Value};

    #[test]
    fn start_cases() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join(NEW_CELL_MARKER), "new").unwrap();

        let first = open(&data, "abc").unwrap();
        assert_eq!(first.kind, StartKind::Founded);
        assert!(first.state.voter);
        assert!(!data.join(NEW_CELL_MARKER).exists(), "marker consumed");
        drop(first);

        let again = open(&data, "abc").unwrap();
        assert_eq!(again.kind, StartKind::Resumed);
        assert!(again.state.voter);
        drop(again);

        let err = open(&data, "other").unwrap_err();
        assert!(matches!(err, DiskError::OtherCell { .. }), "{err}");
        assert!(err.to_string().contains("another cell"), "{err}");

        // A wiped directory (no marker) rebuilds before voting, and stays a non-voter
        // across a restart.
        std::fs::remove_dir_all(&data).unwrap();
        let wiped = open(&data, "abc").unwrap();
        assert_eq!(wiped.kind, StartKind::Empty);
        assert!(!wiped.state.voter);
        drop(wiped);
        let restarted = open(&data, "abc").unwrap();
        assert_eq!(restarted.kind, StartKind::Resumed);
        assert!(!restarted.state.voter);
    }

    /// A backup of a database that applied slots 1..=5.
    fn backup() -> Vec<u8> {
        let mut db = Db::new(DbConfig::new("admin")).unwrap();
        db.advance_slot(Slot(5));
        db.freeze()
            .encode(&[], &chubby_protocol::MemberSets::default())
    }

    fn restoring_dir(tmp: &Path, name: &str, bytes: Option<&[u8]>, crc_of: &[u8]) -> PathBuf {
        let data = tmp.join(name);
        std::fs::create_dir_all(&data).unwrap();
        let crc = u32::from_le_bytes(crc_of[17..21].try_into().unwrap());
        std::fs::write(data.join(NEW_CELL_MARKER), crate::cell::restore_marker(crc)).unwrap();
        if let Some(b) = bytes {
            std::fs::write(data.join(RESTORE_FILE), b).unwrap();
        }
        data
    }

    #[test]
    fn a_restored_founder_starts_from_its_backup_and_only_from_it() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes = backup();
        let data = restoring_dir(tmp.path(), "ok", Some(&bytes), &bytes);
        let first = open(&data, "abc").unwrap();
        assert_eq!(first.kind, StartKind::Founded);
        assert!(first.state.voter);
        assert_eq!(first.state.chosen_through, Slot(5));
        assert_eq!(first.state.truncated_through, Slot(5));
        assert_eq!(first.state.members.complete_through, Slot(5));
        let (db, info) = first.snapshot.as_ref().expect("the backup is the snapshot");
        assert_eq!(info.slot, Slot(5));
        assert_eq!(db.epoch(), Ballot::ZERO);
        assert!(!data.join(NEW_CELL_MARKER).exists());
        assert!(!data.join(RESTORE_FILE).exists(), "consumed");
        drop(first);
        // The next start resumes from what the first made durable.
        let again = open(&data, "abc").unwrap();
        assert_eq!(again.kind, StartKind::Resumed);
        assert_eq!(again.state.truncated_through, Slot(5));
        assert_eq!(again.snapshot.as_ref().map(|(_, i)| i.slot), Some(Slot(5)));
        drop(again);

        // The marker names a backup that is missing, or another one: refused, nothing made.
        let missing = restoring_dir(tmp.path(), "missing", None, &bytes);
        let err = open(&missing, "abc").unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        let mut other = backup();
        other[17] ^= 1; // another checksum in the header
        let wrong = restoring_dir(tmp.path(), "wrong", Some(&bytes), &other);
        let err = open(&wrong, "abc").unwrap_err();
        assert!(err.to_string().contains("not the backup"), "{err}");
        // A damaged backup is refused by its checksum.
        let mut damaged = bytes.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 0xff;
        let bad = restoring_dir(tmp.path(), "damaged", Some(&damaged), &damaged);
        let err = open(&bad, "abc").unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
    }

    #[test]
    fn a_truncated_log_needs_its_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join(NEW_CELL_MARKER), "new").unwrap();
        let mut first = open(&data, "abc").unwrap();
        let entry = LogEntry {
            ballot: Ballot::ZERO,
            value: Value::noop(),
        };
        let batch = PersistBatch {
            chosen_through: Some(Slot(3)),
            entries: (1..=3).map(|s| (Slot(s), entry.clone())).collect(),
            truncate_through: Some(Slot(2)),
            ..PersistBatch::default()
        };
        first.storage.persist(&batch).unwrap();
        let mut db = Db::new(DbConfig::new("admin")).unwrap();
        db.advance_slot(Slot(2));
        assert!(first
            .snapshots
            .store(
                Slot(2),
                &db.freeze()
                    .encode(&[], &chubby_protocol::MemberSets::default())
            )
            .unwrap());
        drop(first);

        let resumed = open(&data, "abc").unwrap();
        assert_eq!(resumed.kind, StartKind::Resumed);
        let (_, info) = resumed.snapshot.as_ref().expect("snapshot loaded");
        assert_eq!(info.slot, Slot(2));
        assert_eq!(resumed.state.truncated_through, Slot(2));
        drop(resumed);

        // Without the snapshot the log cannot be replayed: treated as corrupt, rebuilt.
        std::fs::remove_file(data.join(super::super::snapshot_file::SNAPSHOT_FILE)).unwrap();
        let lost = open(&data, "abc").unwrap();
        assert!(matches!(&lost.kind, StartKind::Corrupt(what) if what.contains("truncated")));
        assert!(!lost.state.voter);
        assert!(lost.state.log.is_empty());
    }
}
