//! Snapshots and digests of the database (PML §5.5, §6.2; DESIGN §2).
//!
//! # Without stalling apply
//! PML's snapshots are taken "while the replica keeps participating in Paxos" (their later
//! versions used a shadow structure). Here [`Db::freeze`] makes a copy that shares every
//! node with the live database: the node map holds `Arc`s, so the copy costs one pointer
//! copy per node (and a deep copy of the small session, handle and lock tables). The live
//! database then goes on applying; a node it changes is copied on its first write
//! (`Arc::make_mut`, metadata only: contents are an `Arc` of their own). The frozen copy is
//! encoded on another thread. `cargo bench -p chubby-server --bench db` measures the
//! freeze for 100k files (it is the whole stall).
//!
//! # Format
//! ```text
//! "CHBYSNAP" | format: u8 | body_len: u64 LE | crc32(body): u32 LE | body
//! body = bincode(slot covered, membership, database state)
//! ```
//! [`Db::restore`] checks the magic, format, length and checksum, decodes under a size
//! limit, then validates every structural invariant. Any failure is an error and nothing
//! of the snapshot is used (PML §5.5: the application "can verify integrity and discard").
//!
//! # Digest
//! A 64-bit digest of everything replicated: the namespace's running sum of node hashes
//! (O(1), see `namespace.rs`) combined with a hash of the encoded session, handle and lock
//! tables. Replicas that applied the same log have equal digests.

use bincode::config::{self, Configuration, Limit, LittleEndian, Varint};
use chubby_protocol::db::fnv1a64;
use chubby_protocol::{NodeId, Slot};

use super::{Db, Digest};

/// Start of every snapshot.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"CHBYSNAP";
/// The format this build writes and reads.
pub const SNAPSHOT_FORMAT: u8 = 1;
/// The largest snapshot body accepted (and the decoder's allocation limit).
pub const SNAPSHOT_BYTES_MAX: usize = 1 << 31;
const HEADER_BYTES: usize = 8 + 1 + 8 + 4;

const SNAPSHOT_CONFIG: Configuration<LittleEndian, Varint, Limit<SNAPSHOT_BYTES_MAX>> =
    config::standard().with_limit::<SNAPSHOT_BYTES_MAX>();

/// Why snapshot bytes were refused. Each means: do not use this snapshot.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    /// Shorter than the header, or than the length it states.
    #[error("snapshot truncated")]
    Truncated,
    /// Not a snapshot at all.
    #[error("not a chubby snapshot")]
    NotASnapshot,
    /// Written by a build with another format.
    #[error("unknown snapshot format {0}")]
    UnknownFormat(u8),
    /// More bytes than the header states.
    #[error("{0} bytes after the snapshot body")]
    TrailingBytes(usize),
    /// Body larger than [`SNAPSHOT_BYTES_MAX`].
    #[error("snapshot body too large")]
    TooLarge,
    /// The body does not match its checksum.
    #[error("snapshot checksum mismatch")]
    Checksum,
    /// The body passed its checksum but does not decode.
    #[error("malformed snapshot: {0}")]
    Malformed(String),
    /// The body decoded into a state that breaks an invariant.
    #[error("invalid snapshot state: {0}")]
    Invalid(String),
}

/// What a snapshot says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Every slot up to this one is reflected.
    pub slot: Slot,
    /// The cell's membership at that slot, as given to [`Frozen::encode`].
    pub membership: Vec<NodeId>,
}

/// A frozen copy of the database, sharing nodes with the live one.
#[derive(Clone, Debug)]
pub struct Frozen(pub(super) Db);

impl Frozen {
    /// The slot the copy covers.
    #[must_use]
    pub fn slot(&self) -> Slot {
        self.0.applied
    }

    /// The digest of the copy (may run on another thread).
    #[must_use]
    pub fn digest(&self) -> Digest {
        self.0.digest()
    }

    /// The snapshot bytes (may run on another thread).
    #[must_use]
    pub fn encode(&self, membership: &[NodeId]) -> Vec<u8> {
        let body =
            bincode::encode_to_vec((self.0.applied, membership, &self.0), config::standard())
                .expect("encoding into memory has no failure mode");
        let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
        out.extend_from_slice(&SNAPSHOT_MAGIC);
        out.push(SNAPSHOT_FORMAT);
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }
}

impl Db {
    /// A copy to snapshot or digest off the apply path; O(nodes) pointer copies.
    #[must_use]
    pub fn freeze(&self) -> Frozen {
        Frozen(self.clone())
    }

    /// The database encoded in snapshot `bytes`, with what the snapshot says about itself.
    ///
    /// # Errors
    /// Every way the bytes can be wrong; a snapshot that fails is never used.
    pub fn restore(bytes: &[u8]) -> Result<(Db, SnapshotInfo), SnapshotError> {
        let body = check_header(bytes)?;
        let ((slot, membership, db), used) =
            bincode::decode_from_slice::<(Slot, Vec<NodeId>, Db), _>(body, SNAPSHOT_CONFIG)
                .map_err(|e| SnapshotError::Malformed(e.to_string()))?;
        if used != body.len() {
            return Err(SnapshotError::Malformed(format!(
                "{} bytes unused",
                body.len() - used
            )));
        }
        if slot != db.applied {
            return Err(SnapshotError::Invalid(
                "slot differs from the applied slot".into(),
            ));
        }
        db.validate().map_err(SnapshotError::Invalid)?;
        Ok((db, SnapshotInfo { slot, membership }))
    }
}

fn check_header(bytes: &[u8]) -> Result<&[u8], SnapshotError> {
    if bytes.len() < HEADER_BYTES {
        return Err(SnapshotError::Truncated);
    }
    let (header, body) = bytes.split_at(HEADER_BYTES);
    if header[..8] != SNAPSHOT_MAGIC {
        return Err(SnapshotError::NotASnapshot);
    }
    if header[8] != SNAPSHOT_FORMAT {
        return Err(SnapshotError::UnknownFormat(header[8]));
    }
    let len = u64::from_le_bytes(header[9..17].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(header[17..21].try_into().expect("4 bytes"));
    let len = usize::try_from(len).map_err(|_| SnapshotError::TooLarge)?;
    if len > SNAPSHOT_BYTES_MAX {
        return Err(SnapshotError::TooLarge);
    }
    if body.len() < len {
        return Err(SnapshotError::Truncated);
    }
    if body.len() > len {
        return Err(SnapshotError::TrailingBytes(body.len() - len));
    }
    if crc32fast::hash(body) != crc {
        return Err(SnapshotError::Checksum);
    }
    Ok(body)
}

/// The digest of `db` (see the module docs).
pub(super) fn digest_of(db: &Db) -> Digest {
    let tables = (
        &db.config,
        db.epoch,
        db.now,
        db.applied,
        db.ns.next_instance(),
        &db.sessions,
        &db.locks,
    );
    let bytes = bincode::encode_to_vec(tables, config::standard())
        .expect("encoding into memory has no failure mode");
    let h = fnv1a64(
        chubby_protocol::db::FNV_OFFSET,
        &db.ns.node_sum().to_le_bytes(),
    );
    Digest(fnv1a64(h, &bytes))
}
