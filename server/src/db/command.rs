//! The database's log entries: what a master proposes and every replica applies.
//!
//! A [`Command`] is an [`Op`] plus the two things the master stamps on every entry:
//! - `epoch`: the master epoch (its Paxos ballot at election) it was proposed under. The
//!   database applies a command only if its epoch is still the database's, so a request
//!   is aborted if mastership was lost or regained meanwhile (PML §5.3, §5.6 "every
//!   database operation is conditional on the epoch"). [`Op::NewEpoch`] is how a new
//!   master moves the database's epoch forward.
//! - `now`: the master's time. The database has no clock; mtimes and lock-delays come from
//!   here, and lock-delays end when a command with a late enough `now` is applied. The
//!   master stamps `max(its clock, every stamp it has seen in the log)`, so stamps never go
//!   backwards (TigerBeetle's rule; the database asserts it). At fail-over a new master
//!   must include the stamps of the values it re-proposes from phase 1.
//!
//! - `call`: for a client's call, the session's number for it ([`CallNumber`]), so that a
//!   copy sent again is answered from the record of the first (`calls.rs`).
//!
//! Commands travel as opaque bytes inside Paxos values ([`chubby_protocol::Value`]):
//! [`Command::encode`] and [`Command::decode`] use the size-limited wire codec, and
//! decoding arbitrary bytes never panics.

use bincode::{Decode, Encode};
use chubby_protocol::client_msg::CallNumber;
use chubby_protocol::codec::{self, DecodeError, EncodeError};
use chubby_protocol::{
    AclNames, AttrChange, Ballot, Generation, HandleId, InstanceNumber, Instant, LockMode,
    Sequencer, SessionId,
};

pub use chubby_protocol::db::OpenArgs;

use super::sessions::Handle;

/// One log entry for the database.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Command {
    /// The master epoch it was proposed under.
    pub epoch: Ballot,
    /// The master's time stamp; never below an earlier applied stamp.
    pub now: Instant,
    /// What to do.
    pub op: Op,
    /// The client's number for the call, if it numbered it. Last, so that a command of an
    /// earlier build, which has no such field, encodes as a strict prefix of this one's:
    /// the log's entries of such a build still decode (`replica::entry`).
    pub call: Option<CallNumber>,
}

/// The operations. Every variant is one atomic change (or a refusal that changes nothing
/// but the time).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Op {
    /// A new master took over under `Command::epoch`, which must exceed the database's.
    NewEpoch,
    /// Start a session for an authenticated principal.
    CreateSession {
        /// The client certificate's common name.
        principal: String,
    },
    /// The client ended its session: its handles close, locks free without lock-delay.
    CloseSession {
        /// The session.
        session: SessionId,
    },
    /// The master declared the session expired: locks it held go into lock-delay.
    ExpireSession {
        /// The session.
        session: SessionId,
    },
    /// Open (and maybe create) a node; returns a handle.
    Open(Box<OpenArgs>),
    /// Close a handle: releases its lock, cancels its wait, may delete an ephemeral node.
    Close {
        /// The session.
        session: SessionId,
        /// The handle.
        handle: HandleId,
    },
    /// Replace a file's contents, optionally only if its content generation is `expected`.
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
    /// Delete the handle's node, which must have no children.
    Delete {
        /// The session.
        session: SessionId,
        /// A handle opened for writing.
        handle: HandleId,
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
    /// Take the lock, or queue for it.
    Acquire {
        /// The session.
        session: SessionId,
        /// A handle opened for writing.
        handle: HandleId,
        /// Exclusive or shared.
        mode: LockMode,
    },
    /// Take the lock if that is possible at once; never queues.
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
    /// Attach a sequencer to the handle (or detach with `None`); later calls on the handle
    /// fail once it is stale.
    SetSequencer {
        /// The session.
        session: SessionId,
        /// The handle.
        handle: HandleId,
        /// The sequencer, which must be valid now.
        sequencer: Option<Sequencer>,
    },
    /// Our extension: move a file or a directory with its subtree atomically, replacing
    /// a target file or empty directory.
    Rename {
        /// The session.
        session: SessionId,
        /// The node to move.
        from: String,
        /// Its new path.
        to: String,
    },
    /// Our extension: change POSIX attributes or the ephemeral-children marker.
    SetAttr {
        /// The session.
        session: SessionId,
        /// The node.
        path: String,
        /// Only if the node at `path` is still this instance.
        instance: Option<InstanceNumber>,
        /// What to change.
        change: AttrChange,
    },
    /// Nothing but the time stamp (ends due lock-delays; fills gaps).
    Noop,
    /// Every replica reports its digest at this point of the log (PML §6.2).
    Checksum,
    /// `op` (a call on a handle) through a handle the master keeps in its memory only
    /// ([`HandleId::is_volatile`], Chubby §2.9): the log does not know the handle, so the
    /// command carries it whole. Each replica puts it in its table for the operation and
    /// takes it out again after, unless the operation needs it to last (a lock held or
    /// awaited, a sequencer set): then it stays, as any handle opened through the log.
    /// (Last, so that earlier builds' commands keep their encoding.)
    WithHandle {
        /// The handle's id, as the master numbered it.
        handle: HandleId,
        /// The handle, as the master keeps it.
        desc: Handle,
        /// The call on it.
        op: Box<Op>,
    },
    /// An Open whose handle the master keeps in its memory ([`HandleId::is_volatile`],
    /// Chubby §2.9) while what it creates goes through the log: each replica applies it
    /// exactly as [`Op::Open`] (the same checks, the same creation), under the id the
    /// master chose, and keeps the handle in its table only if the opened node is
    /// ephemeral (its last close must reach the log). The master proposes it for an Open
    /// that may create and asks for no events, so a new file's handle costs no Paxos
    /// instance to close. (Last, so that earlier builds' commands keep their encoding.)
    OpenKept {
        /// The handle's id, as the master numbered it (volatile).
        handle: HandleId,
        /// The Open.
        args: Box<OpenArgs>,
    },
}

impl Op {
    /// A short name for logs.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Op::NewEpoch => "NewEpoch",
            Op::CreateSession { .. } => "CreateSession",
            Op::CloseSession { .. } => "CloseSession",
            Op::ExpireSession { .. } => "ExpireSession",
            Op::Open(_) => "Open",
            Op::Close { .. } => "Close",
            Op::SetContents { .. } => "SetContents",
            Op::Delete { .. } => "Delete",
            Op::SetAcl { .. } => "SetAcl",
            Op::Acquire { .. } => "Acquire",
            Op::TryAcquire { .. } => "TryAcquire",
            Op::Release { .. } => "Release",
            Op::SetSequencer { .. } => "SetSequencer",
            Op::Rename { .. } => "Rename",
            Op::SetAttr { .. } => "SetAttr",
            Op::Noop => "Noop",
            Op::Checksum => "Checksum",
            Op::WithHandle { .. } => "WithHandle",
            Op::OpenKept { .. } => "OpenKept",
        }
    }
}

impl Command {
    /// The command as bytes for a Paxos value.
    ///
    /// # Errors
    /// [`EncodeError::TooLarge`] if it exceeds a frame; the master checks sizes (a file is
    /// at most 256 KiB) before it proposes, so this means a caller bug.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        codec::encode(self)
    }

    /// The command encoded in `bytes`.
    ///
    /// # Errors
    /// Any malformation; never panics, never allocates beyond the frame limit.
    pub fn decode(bytes: &[u8]) -> Result<Command, DecodeError> {
        codec::decode(bytes)
    }

    /// A command without a call number.
    #[must_use]
    pub fn new(epoch: Ballot, now: Instant, op: Op) -> Command {
        Command {
            epoch,
            now,
            op,
            call: None,
        }
    }
}

impl Op {
    /// The session the operation acts for, if any.
    #[must_use]
    pub fn session(&self) -> Option<SessionId> {
        match self {
            Op::Open(args) | Op::OpenKept { args, .. } => Some(args.session),
            Op::WithHandle { op, .. } => op.session(),
            Op::CloseSession { session }
            | Op::ExpireSession { session }
            | Op::Close { session, .. }
            | Op::SetContents { session, .. }
            | Op::Delete { session, .. }
            | Op::SetAcl { session, .. }
            | Op::Acquire { session, .. }
            | Op::TryAcquire { session, .. }
            | Op::Release { session, .. }
            | Op::SetSequencer { session, .. }
            | Op::Rename { session, .. }
            | Op::SetAttr { session, .. } => Some(*session),
            Op::NewEpoch | Op::CreateSession { .. } | Op::Noop | Op::Checksum => None,
        }
    }

    /// The handle a call on a handle names, and whether the operation keeps a handle
    /// that [`Op::WithHandle`] brought (`None`: not a call on a handle).
    #[must_use]
    pub fn handle_call(&self) -> Option<(HandleId, bool)> {
        match self {
            Op::SetContents { handle, .. }
            | Op::Delete { handle, .. }
            | Op::SetAcl { handle, .. }
            | Op::Release { handle, .. } => Some((*handle, false)),
            Op::Acquire { handle, .. }
            | Op::TryAcquire { handle, .. }
            | Op::SetSequencer { handle, .. } => Some((*handle, true)),
            Op::NewEpoch
            | Op::CreateSession { .. }
            | Op::CloseSession { .. }
            | Op::ExpireSession { .. }
            | Op::Open(_)
            | Op::Close { .. }
            | Op::Rename { .. }
            | Op::SetAttr { .. }
            | Op::Noop
            | Op::Checksum
            | Op::WithHandle { .. }
            | Op::OpenKept { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chubby_protocol::{Creation, NodeId, NodeKind, OpenMode};
    use proptest::prelude::*;

    fn open() -> Command {
        Command {
            epoch: Ballot {
                round: 3,
                node: NodeId(2),
            },
            now: Instant(1234),
            op: Op::Open(Box::new(OpenArgs {
                session: SessionId(7),
                path: "/a/b".into(),
                mode: OpenMode::READ_WRITE,
                creation: Creation::IfMissing,
                kind: NodeKind::File,
                ephemeral: true,
                contents: b"hello".to_vec(),
                acl: Some(AclNames::all("g")),
                lock_delay_ms: Some(500),
                events: chubby_protocol::EventMask::NONE,
                create_mode: Some(0o600),
                create_owner: Some((1000, 100)),
            })),
            call: Some(CallNumber {
                number: 5,
                done_below: 3,
            }),
        }
    }

    /// Commands travel as opaque Paxos values: encode ∘ decode is the identity.
    #[test]
    fn round_trip() {
        let bytes = open().encode().unwrap();
        assert_eq!(Command::decode(&bytes).unwrap(), open());
        let noop = Command {
            epoch: Ballot::ZERO,
            now: Instant(1),
            op: Op::Noop,
            call: None,
        };
        assert_eq!(Command::decode(&noop.encode().unwrap()).unwrap(), noop);
    }

    /// Truncated or extended encodings are errors, not panics or different commands.
    #[test]
    fn damaged_encodings_are_refused() {
        let bytes = open().encode().unwrap();
        for cut in 0..bytes.len() {
            assert!(
                Command::decode(&bytes[..cut]).is_err(),
                "prefix of {cut} bytes decoded"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Command::decode(&longer), Err(DecodeError::TrailingBytes(1)));
    }

    proptest! {
        /// Decoding arbitrary bytes never panics (the log is input).
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Command::decode(&bytes);
            let mut framed = vec![codec::WIRE_VERSION];
            framed.extend_from_slice(&bytes);
            let _ = Command::decode(&framed);
        }
    }
}
