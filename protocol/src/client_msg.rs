//! Client ↔ replica calls (DESIGN §5): one [`Request`] and one [`Reply`] per bidirectional
//! QUIC stream on ALPN `chubby/1`, each a frame of [`crate::codec`].
//!
//! Any replica answers [`Call::Status`]; everything else is for the master, and a replica
//! that is not master answers [`CallError::NotMaster`] with the master it knows of, so a
//! client finds the master in at most one extra round trip (Chubby §2.2).
//!
//! The caller's principal is never in a message: the replica takes it from the client
//! certificate's CN, so it cannot be forged.
//!
//! # Epochs
//! Every request carries the client epoch it believes current (Chubby §2.9 step 1): the
//! ballot with which the present master began. A master answers a call from another epoch
//! with [`CallError::WrongEpoch`] naming its own, so a packet meant for an earlier master
//! is never acted on. Only [`Call::Status`], [`Call::CreateSession`] and
//! [`Call::CheckSequencer`] may go without one (`None`): the caller has no session yet.
//!
//! # Sessions
//! [`Call::KeepAlive`] is a long poll (see [`crate::events`]); every other session call names
//! its session and is refused with `SessionExpired` once the master has ended it.
//!
//! # Exactly once
//! A session call that changes the database carries a [`CallNumber`]: the session's own
//! count of its calls, and the lowest number it still waits on. The master records each
//! numbered call's outcome in the replicated database with the command that applies it;
//! the same number sent again (to the same master after a lost connection, or to the next
//! one after a fail-over) is answered from that record and never applied twice. A number
//! below `done_below` frees its record (docs/sessions.md, "Exactly once").
//!
//! Variants are only ever appended, and the wire version byte guards against a peer of
//! another version. A [`Request`] of a build before call numbers (no `number`) still
//! decodes ([`Request::decode`]), so older clients keep working, without exactly-once.

use bincode::{Decode, Encode};

use crate::codec::{self, DecodeError};
use crate::db::{
    AclNames, Generation, HandleId, InstanceNumber, LockMode, OpenArgs, OpenMode, Sequencer,
    SessionId, Stat,
};
use crate::error::Refusal;
use crate::events::{CacheToken, KeepAliveReply};
use crate::ids::{Ballot, NodeId, Slot};
use crate::peer_msg::MemberAddr;

/// One call.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Request {
    /// The client epoch the caller believes current (see the module docs).
    pub epoch: Option<Ballot>,
    /// What to do.
    pub call: Call,
    /// The call's number in its session, for a call that changes the database (see the
    /// module docs); `None` for reads, and from clients of earlier builds.
    pub number: Option<CallNumber>,
}

/// A request as builds before call numbers encoded it.
#[derive(Decode)]
struct RequestV1 {
    epoch: Option<Ballot>,
    call: Call,
}

impl Request {
    /// A request without an epoch (Status, CreateSession, CheckSequencer).
    #[must_use]
    pub fn unbound(call: Call) -> Request {
        Request {
            epoch: None,
            call,
            number: None,
        }
    }

    /// The request in `frame`, in this build's encoding or the one before call numbers
    /// (whose bytes are a strict prefix of this one's, so neither is mistaken for the
    /// other: `codec::decode` refuses trailing bytes).
    ///
    /// # Errors
    /// This build's decoding error when neither reads the frame.
    pub fn decode(frame: &[u8]) -> Result<Request, DecodeError> {
        match codec::decode::<Request>(frame) {
            Ok(r) => Ok(r),
            Err(e @ DecodeError::Malformed(_)) => match codec::decode::<RequestV1>(frame) {
                Ok(old) => Ok(Request {
                    epoch: old.epoch,
                    call: old.call,
                    number: None,
                }),
                Err(_) => Err(e),
            },
            Err(e) => Err(e),
        }
    }
}

/// A session call's number (see the module docs, "Exactly once").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub struct CallNumber {
    /// This call's number: the session's calls count from 1, each new call one up; a call
    /// sent again keeps its number.
    pub number: u64,
    /// Every call of the session numbered below this was answered, so the master may
    /// forget their outcomes; never above `number`.
    pub done_below: u64,
}

/// The calls.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Call {
    /// This replica's view of the cell; answered by every replica, master or not.
    Status,
    /// Start a session for the caller's principal.
    CreateSession,
    /// Open (and maybe create) a node.
    Open(OpenArgs),
    /// Close a handle.
    Close {
        /// The session.
        session: SessionId,
        /// The handle.
        handle: HandleId,
    },
    /// Read a whole file and its metadata (served by the master under its lease, with no
    /// Paxos round).
    GetContentsAndStat {
        /// The session.
        session: SessionId,
        /// A handle opened for reading.
        handle: HandleId,
    },
    /// Replace a file's contents atomically, optionally only if its content generation is
    /// `expected`.
    SetContents {
        /// The session.
        session: SessionId,
        /// A handle opened for writing.
        handle: HandleId,
        /// The new contents, whole.
        contents: Vec<u8>,
        /// Compare-and-swap on the content generation.
        expected: Option<Generation>,
    },
    /// Delete the handle's node.
    Delete {
        /// The session.
        session: SessionId,
        /// A handle opened for writing.
        handle: HandleId,
    },
    /// Add or remove one replica (the `admin` principal only). Answered once the master
    /// proposed the change; it takes effect a fixed number of slots after it is chosen,
    /// which `Status` shows.
    ChangeMembers {
        /// The replica to add, with its addresses.
        add: Option<MemberAddr>,
        /// The replica to remove.
        remove: Option<NodeId>,
    },
    /// Keep the session alive; acknowledge notices; wait for new ones (a long poll).
    KeepAlive {
        /// The session.
        session: SessionId,
        /// Every notice numbered up to here was processed (invalidations applied).
        acked: u64,
    },
    /// End the session: its handles close and its locks are released without lock-delay.
    CloseSession {
        /// The session.
        session: SessionId,
    },
    /// A node's metadata.
    GetStat {
        /// The session.
        session: SessionId,
        /// A handle opened for reading.
        handle: HandleId,
    },
    /// Names and metadata of a directory's children.
    ReadDir {
        /// The session.
        session: SessionId,
        /// A directory handle opened for reading.
        handle: HandleId,
    },
    /// Our extension: the metadata of the node at `path`, or its absence, without opening
    /// it (a name lookup). Needs the read right on the parent directory, like `ReadDir`.
    StatPath {
        /// The session.
        session: SessionId,
        /// Absolute path.
        path: String,
    },
    /// Replace the three ACL names, optionally only if the ACL generation is `expected`.
    SetAcl {
        /// The session.
        session: SessionId,
        /// A handle opened for changing the ACL.
        handle: HandleId,
        /// The new names.
        acl: AclNames,
        /// Compare-and-swap on the ACL generation.
        expected: Option<Generation>,
    },
    /// Take the lock, or queue for it: answered at once with the grant or `Queued`; a later
    /// grant arrives as a notice on a KeepAlive.
    Acquire {
        /// The session.
        session: SessionId,
        /// A handle opened for writing.
        handle: HandleId,
        /// Exclusive or shared.
        mode: LockMode,
    },
    /// Take the lock only if that is possible at once.
    TryAcquire {
        /// The session.
        session: SessionId,
        /// A handle opened for writing.
        handle: HandleId,
        /// Exclusive or shared.
        mode: LockMode,
    },
    /// Release the lock, or cancel a queued Acquire.
    Release {
        /// The session.
        session: SessionId,
        /// The handle.
        handle: HandleId,
    },
    /// The handle's lock state: held (with its sequencer), queued, or neither.
    GetSequencer {
        /// The session.
        session: SessionId,
        /// The handle.
        handle: HandleId,
    },
    /// Attach a sequencer to the handle (`None` detaches): later calls on the handle fail
    /// once it is stale.
    SetSequencer {
        /// The session.
        session: SessionId,
        /// The handle.
        handle: HandleId,
        /// The sequencer.
        sequencer: Option<Sequencer>,
    },
    /// Who holds the lock of the node at `path` (read permission): for `F_GETLK`.
    LockHolders {
        /// The session.
        session: SessionId,
        /// The node.
        path: String,
    },
    /// Is this sequencer still valid? Anyone may ask.
    CheckSequencer {
        /// The token.
        sequencer: Sequencer,
    },
    /// Our extension: move a file or a directory (with everything under it) atomically,
    /// replacing a target file or empty directory.
    Rename {
        /// The session.
        session: SessionId,
        /// The node.
        from: String,
        /// Its new path.
        to: String,
    },
    /// Our extension: change a node's POSIX attributes or its ephemeral-children marker
    /// (write permission on the node).
    SetAttr {
        /// The session.
        session: SessionId,
        /// The node.
        path: String,
        /// Only if the node at `path` is still this instance.
        instance: Option<crate::InstanceNumber>,
        /// What to change.
        change: crate::db::AttrChange,
    },
    /// Take a consistent backup of the database now (the `admin` principal only, at the
    /// master): the master freezes its applied state and encodes it as a checksummed
    /// snapshot, held until the next backup; answered with its size. Read it with
    /// [`Call::BackupRead`].
    Backup,
    /// Up to [`BACKUP_CHUNK_BYTES`] of the backup taken at `slot`, from `offset`.
    BackupRead {
        /// The slot the backup covers (from [`Answer::Backup`]).
        slot: Slot,
        /// The first byte wanted.
        offset: u64,
    },
    /// Our extension, for a handle the client kept open to use again (Chubby §2.8 handle
    /// caching): checks what an Open of `path` with the handle's mode would (the node at
    /// `path` is the one the handle is bound to, and the principal still has every right
    /// of the mode) and answers the node's metadata, with no Paxos round and nothing
    /// changed. (Last, so that earlier builds' calls keep their encoding.)
    Reopen {
        /// The session.
        session: SessionId,
        /// The kept handle.
        handle: HandleId,
        /// The path it is to be used at.
        path: String,
    },
    /// A handle the master kept in its memory only ([`HandleId::is_volatile`]), announced
    /// again to a new master after a fail-over from what the handle itself records (Chubby
    /// §2.9 steps 6–8). The master checks what an Open of `path` with `mode` would (the
    /// node at `path` is still `instance`, not ephemeral, and the principal has every right
    /// of the mode), keeps the handle under its old id and answers the node's metadata;
    /// no Paxos round. (Last, so that earlier builds' calls keep their encoding.)
    Reannounce {
        /// The session.
        session: SessionId,
        /// The handle, as an earlier master numbered it.
        handle: HandleId,
        /// The path it was opened at.
        path: String,
        /// The node instance it is bound to.
        instance: InstanceNumber,
        /// The rights it was opened with.
        mode: OpenMode,
        /// The lock-delay it was opened with (`None`: the cell's default).
        lock_delay_ms: Option<u64>,
    },
}

/// The most bytes one [`Call::BackupRead`] answers (well within a frame).
pub const BACKUP_CHUNK_BYTES: usize = 512 * 1024;

impl Call {
    /// A short name for logs.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Call::Status => "Status",
            Call::CreateSession => "CreateSession",
            Call::Open(_) => "Open",
            Call::Close { .. } => "Close",
            Call::GetContentsAndStat { .. } => "GetContentsAndStat",
            Call::SetContents { .. } => "SetContents",
            Call::Delete { .. } => "Delete",
            Call::ChangeMembers { .. } => "ChangeMembers",
            Call::KeepAlive { .. } => "KeepAlive",
            Call::CloseSession { .. } => "CloseSession",
            Call::GetStat { .. } => "GetStat",
            Call::ReadDir { .. } => "ReadDir",
            Call::StatPath { .. } => "StatPath",
            Call::SetAcl { .. } => "SetAcl",
            Call::Acquire { .. } => "Acquire",
            Call::TryAcquire { .. } => "TryAcquire",
            Call::Release { .. } => "Release",
            Call::GetSequencer { .. } => "GetSequencer",
            Call::SetSequencer { .. } => "SetSequencer",
            Call::CheckSequencer { .. } => "CheckSequencer",
            Call::LockHolders { .. } => "LockHolders",
            Call::Rename { .. } => "Rename",
            Call::SetAttr { .. } => "SetAttr",
            Call::Backup => "Backup",
            Call::BackupRead { .. } => "BackupRead",
            Call::Reopen { .. } => "Reopen",
            Call::Reannounce { .. } => "Reannounce",
        }
    }

    /// The handle a call on a handle names (reads, writes and lock calls through a handle,
    /// and Reopen; not Close, which ends it, nor Reannounce, which makes it known).
    #[must_use]
    pub fn handle(&self) -> Option<HandleId> {
        match self {
            Call::GetContentsAndStat { handle, .. }
            | Call::GetStat { handle, .. }
            | Call::ReadDir { handle, .. }
            | Call::GetSequencer { handle, .. }
            | Call::SetContents { handle, .. }
            | Call::Delete { handle, .. }
            | Call::SetAcl { handle, .. }
            | Call::Acquire { handle, .. }
            | Call::TryAcquire { handle, .. }
            | Call::Release { handle, .. }
            | Call::SetSequencer { handle, .. }
            | Call::Reopen { handle, .. } => Some(*handle),
            Call::Status
            | Call::CreateSession
            | Call::Open(_)
            | Call::Close { .. }
            | Call::KeepAlive { .. }
            | Call::CloseSession { .. }
            | Call::StatPath { .. }
            | Call::LockHolders { .. }
            | Call::CheckSequencer { .. }
            | Call::ChangeMembers { .. }
            | Call::Rename { .. }
            | Call::SetAttr { .. }
            | Call::Backup
            | Call::BackupRead { .. }
            | Call::Reannounce { .. } => None,
        }
    }

    /// True for the calls that may go without an epoch.
    #[must_use]
    pub fn needs_no_epoch(&self) -> bool {
        matches!(
            self,
            Call::Status
                | Call::CreateSession
                | Call::CheckSequencer { .. }
                | Call::ChangeMembers { .. }
                | Call::Backup
                | Call::BackupRead { .. }
        )
    }
}

/// The answer to one call.
// A reply lives only between decoding and its caller (never in bulk), so the size of a
// `Stat` inline costs nothing worth a box on every answer.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Reply {
    /// The call succeeded.
    Ok(Answer),
    /// It did not; nothing changed unless the error says the outcome is unknown.
    Err(CallError),
}

/// What a successful call returns.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Answer {
    /// For [`Call::Status`].
    Status(Box<StatusReport>),
    /// For [`Call::CreateSession`].
    Session {
        /// The new session.
        session: SessionId,
        /// The client epoch to put on its calls.
        epoch: Ballot,
        /// Its lease runs at least this long from the reply.
        lease_ms: u64,
    },
    /// For [`Call::Open`].
    Opened {
        /// The handle.
        handle: HandleId,
        /// True if Open created the node.
        created: bool,
        /// The node's metadata.
        stat: Stat,
    },
    /// For [`Call::Close`] and [`Call::Delete`].
    Done,
    /// For [`Call::GetContentsAndStat`].
    Contents {
        /// The whole file.
        contents: Vec<u8>,
        /// Its metadata.
        stat: Stat,
        /// Set when the client may cache the answer.
        cache: Option<CacheToken>,
    },
    /// For [`Call::SetContents`].
    Written {
        /// The new metadata.
        stat: Stat,
    },
    /// For [`Call::KeepAlive`].
    KeepAlive(KeepAliveReply),
    /// For [`Call::GetStat`] and [`Call::StatPath`]; `None`: no node at that path.
    Stat {
        /// The metadata, or absence.
        stat: Option<Stat>,
        /// Set when the client may cache the answer.
        cache: Option<CacheToken>,
    },
    /// For [`Call::ReadDir`]: children in name order.
    Dir {
        /// Names and metadata.
        children: Vec<(String, Stat)>,
        /// Set when the client may cache the answer.
        cache: Option<CacheToken>,
    },
    /// For [`Call::Acquire`] and [`Call::TryAcquire`]: the lock is held.
    Acquired {
        /// Its sequencer.
        sequencer: Sequencer,
    },
    /// For [`Call::Acquire`]: queued; the grant comes as a notice.
    Queued,
    /// For [`Call::GetSequencer`].
    Lock(LockState),
    /// For [`Call::LockHolders`]: the mode the lock is held in (`None`: free) and its
    /// holders.
    Holders {
        /// The mode, while held.
        mode: Option<LockMode>,
        /// The holding (session, handle) pairs.
        holders: Vec<(SessionId, HandleId)>,
    },
    /// For [`Call::CheckSequencer`].
    SequencerValid(bool),
    /// For [`Call::Backup`]: the backup taken.
    Backup {
        /// Every slot up to this one is in it.
        slot: Slot,
        /// Its length in bytes.
        bytes: u64,
    },
    /// For [`Call::BackupRead`]: the bytes from the offset asked (empty past the end).
    BackupBytes(Vec<u8>),
}

/// A handle's standing with its node's lock.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum LockState {
    /// It holds the lock.
    Held(Sequencer),
    /// Its Acquire is queued.
    Waiting,
    /// Neither.
    None,
}

/// Why a call failed.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, thiserror::Error)]
pub enum CallError {
    /// This replica is not the master; try `master` if known.
    #[error("not the master{}", match .master { Some(m) => format!(" (master is replica {} at {})", m.id.0, m.addr), None => String::new() })]
    NotMaster {
        /// The master this replica last heard from.
        master: Option<MasterHint>,
    },
    /// The master cannot serve now (starting its epoch, queue full, lease lapsed); retry.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The call was proposed but its fate is unknown (mastership was lost meanwhile): it
    /// may or may not have been applied.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The database refused the call; nothing changed.
    #[error("{0}")]
    Refused(Refusal),
    /// The request was malformed or is not allowed on this endpoint.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The call carried another client epoch (or none): a new master took over. Nothing
    /// was done; the client flushes its caches and retries with `current`.
    #[error("wrong client epoch (the master's is {current})")]
    WrongEpoch {
        /// The master's epoch.
        current: Ballot,
    },
}

/// A replica's id and client address (where the master is, or a member).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct MasterHint {
    /// Its replica id.
    pub id: NodeId,
    /// Its client address (`host:port`).
    pub addr: String,
}

/// A replica's role, as reported by [`Call::Status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum ReplicaRole {
    /// Accepting and learning.
    Follower,
    /// Running an election.
    Candidate,
    /// The master.
    Master,
    /// Rebuilding after losing its disk: casts no vote yet (PML §5.1).
    Rebuilding,
}

impl ReplicaRole {
    /// Lower-case name, as `chubby status` prints it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaRole::Follower => "follower",
            ReplicaRole::Candidate => "candidate",
            ReplicaRole::Master => "master",
            ReplicaRole::Rebuilding => "rebuilding",
        }
    }
}

/// One replica's view of itself and the cell.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct StatusReport {
    /// Its id.
    pub id: NodeId,
    /// Its role.
    pub role: ReplicaRole,
    /// The database's epoch: the ballot with which the current master began.
    pub epoch: Ballot,
    /// The master it knows of (itself when master).
    pub master: Option<MasterHint>,
    /// Milliseconds of master lease left, when it is the master.
    pub lease_remaining_ms: Option<u64>,
    /// The last slot applied to its database.
    pub applied: Slot,
    /// Every slot up to here is known chosen, durably: on its disk (log or snapshot), so a
    /// crash keeps the knowledge. In memory it may know a little more (`known_chosen`).
    pub chosen_through: Slot,
    /// The highest chosen slot it has heard of (catch-up target); `applied` trails it by
    /// the replica's lag.
    pub known_chosen: Slot,
    /// The slot of its newest snapshot (zero: none yet).
    pub snapshot: Slot,
    /// Log entries held in memory and on disk.
    pub log_entries: u64,
    /// The database digest at `applied`.
    pub digest: u64,
    /// The last divergence check: `(slot, digest)` this replica computed there.
    pub last_checksum: Option<(Slot, u64)>,
    /// A detected divergence from the master's digest, described; `None` if none seen.
    pub divergence: Option<String>,
    /// Every replica it knows of (members, past and pending): id and client address.
    pub members: Vec<MasterHint>,
    /// The member sets it knows, each with the first slot it governs; the set governing
    /// `chosen_through + 1` is in effect, a later one is pending.
    pub member_sets: Vec<(Slot, Vec<NodeId>)>,
    /// Sessions in its database.
    pub sessions: u64,
    /// Client calls this replica answered since it started (KeepAlives and status calls
    /// not counted): how a test sees that a read never reached the cell.
    pub client_calls: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn requests_round_trip_and_garbage_is_an_error() {
        let req = Request {
            epoch: Some(Ballot {
                round: 4,
                node: NodeId(1),
            }),
            call: Call::SetContents {
                session: SessionId(3),
                handle: HandleId(9),
                contents: b"hello".to_vec(),
                expected: Some(Generation(2)),
            },
            number: Some(CallNumber {
                number: 12,
                done_below: 10,
            }),
        };
        let bytes = codec::encode(&req).unwrap();
        let back = Request::decode(&bytes).unwrap();
        assert_eq!(back, req);
        let mut bad = bytes.clone();
        bad.push(0);
        assert!(Request::decode(&bad).is_err(), "trailing byte");
        // A cut frame is refused, except the one cut just before the number: that is the
        // same call as a client of the build before numbers sent it.
        let unnumbered = Request {
            number: None,
            ..req.clone()
        };
        for cut in 1..bytes.len() {
            match Request::decode(&bytes[..cut]) {
                Err(_) => {}
                Ok(r) => assert_eq!(r, unnumbered, "cut at {cut}"),
            }
        }
    }

    /// A client of the build before call numbers sent `(epoch, call)`: its requests still
    /// decode, as unnumbered.
    #[test]
    fn requests_without_a_number_from_earlier_builds_decode() {
        #[derive(Encode)]
        struct Old {
            epoch: Option<Ballot>,
            call: Call,
        }
        let call = Call::Close {
            session: SessionId(3),
            handle: HandleId(9),
        };
        let bytes = codec::encode(&Old {
            epoch: None,
            call: call.clone(),
        })
        .unwrap();
        let back = Request::decode(&bytes).unwrap();
        assert_eq!(back, Request::unbound(call));
    }

    #[test]
    fn not_master_names_the_master() {
        let err = CallError::NotMaster {
            master: Some(MasterHint {
                id: NodeId(2),
                addr: "127.0.0.1:7003".into(),
            }),
        };
        assert_eq!(
            err.to_string(),
            "not the master (master is replica 2 at 127.0.0.1:7003)"
        );
    }
}
