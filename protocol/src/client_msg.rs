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
//! This is the first slice of the client protocol (issue 4: enough to write and read through
//! a real cell and to watch it); sessions with KeepAlives, locks, events and the cache
//! protocol extend these enums (issue 5). Variants are only ever appended, and the wire
//! version byte guards against a peer of another version.

use bincode::{Decode, Encode};

use crate::db::{Generation, HandleId, OpenArgs, SessionId, Stat};
use crate::error::Refusal;
use crate::ids::{Ballot, NodeId, Slot};
use crate::peer_msg::MemberAddr;

/// One call.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Request {
    /// What to do.
    pub call: Call,
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
}

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
        }
    }
}

/// The answer to one call.
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
    },
    /// For [`Call::SetContents`].
    Written {
        /// The new metadata.
        stat: Stat,
    },
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
    /// Every slot up to here is known chosen.
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn requests_round_trip_and_garbage_is_an_error() {
        let req = Request {
            call: Call::SetContents {
                session: SessionId(3),
                handle: HandleId(9),
                contents: b"hello".to_vec(),
                expected: Some(Generation(2)),
            },
        };
        let bytes = codec::encode(&req).unwrap();
        let back: Request = codec::decode(&bytes).unwrap();
        assert_eq!(back, req);
        let mut bad = bytes.clone();
        bad.push(0);
        assert!(codec::decode::<Request>(&bad).is_err(), "trailing byte");
        assert!(codec::decode::<Request>(&bytes[..bytes.len() - 1]).is_err());
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
