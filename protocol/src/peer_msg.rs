//! Messages between replicas of one cell: Multi-Paxos (PML §4), master leases (PML §5.2),
//! catch-up (PML §4.2) and the disk-loss rebuild query (PML §5.1).
//!
//! Paxos values are opaque to this layer: a [`Value`] is a batch of submitted commands,
//! each an encoded database command that only `server/src/db` interprets.

use bincode::{Decode, Encode};

use crate::ids::{Ballot, NodeId, Slot};

/// The value of one Paxos instance: a batch of commands submitted to the master, or a
/// membership change. An empty batch without a change is a no-op, used to fill gaps a new
/// master finds in the log and to start an instance on demand.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Encode, Decode)]
pub struct Value {
    /// The commands, in the order the master received them.
    pub commands: Vec<Vec<u8>>,
    /// A new member set, in effect a fixed number of slots after this value's own
    /// (docs/paxos.md, "Membership changes").
    pub change: Option<MemberChange>,
}

/// Where a replica listens, as a membership change tells every replica.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub struct MemberAddr {
    /// The replica.
    pub id: NodeId,
    /// Its host name or IP (also its certificate's SAN).
    pub host: String,
    /// UDP port for replicas.
    pub peer_port: u16,
    /// UDP port for clients.
    pub client_port: u16,
}

/// A membership change: the whole new member set, and the addresses of members the cell
/// may not know yet.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub struct MemberChange {
    /// Every member of the new set, sorted.
    pub members: Vec<NodeId>,
    /// Addresses of (new) members.
    pub addrs: Vec<MemberAddr>,
}

/// The member sets a replica knows, each from the first slot it governs, and the
/// addresses learned with them: sent with catch-up replies (a snapshot may have truncated
/// the values that created them) and kept in the acceptor's store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct MemberSets {
    /// `(first slot governed, members)`, in slot order.
    pub sets: Vec<(Slot, Vec<NodeId>)>,
    /// Addresses learned from changes.
    pub addrs: Vec<MemberAddr>,
    /// Every change chosen at or below this slot is in `sets` (a replica that installed a
    /// snapshot may know less than its chosen prefix until a peer tells it).
    pub complete_through: Slot,
}

impl Value {
    /// The no-op value.
    #[must_use]
    pub fn noop() -> Value {
        Value::default()
    }

    /// A batch of commands.
    #[must_use]
    pub fn commands(commands: Vec<Vec<u8>>) -> Value {
        Value {
            commands,
            change: None,
        }
    }

    /// True for the no-op value.
    #[must_use]
    pub fn is_noop(&self) -> bool {
        self.commands.is_empty() && self.change.is_none()
    }

    /// Bytes of command payload carried.
    #[must_use]
    pub fn payload_bytes(&self) -> usize {
        self.commands.iter().map(Vec::len).sum()
    }
}

/// One log entry reported in a [`PaxosMsg::Promise`].
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct PromiseEntry {
    /// Its slot.
    pub slot: Slot,
    /// The ballot it was accepted in (meaningless when `chosen`).
    pub ballot: Ballot,
    /// True when the acceptor knows this value is chosen; it then outranks every ballot.
    pub chosen: bool,
    /// The value.
    pub value: Value,
}

/// A message from one replica to another.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum PaxosMsg {
    /// Phase 1a: "promise me `ballot` for every slot from `from_slot` on".
    Prepare {
        /// The would-be master's ballot.
        ballot: Ballot,
        /// The first slot the sender does not know to be chosen.
        from_slot: Slot,
    },
    /// Phase 1b: the acceptor promised `ballot`; `entries` are everything it accepted (or
    /// knows chosen) above `max(from_slot, chosen_through + 1)`.
    Promise {
        /// The ballot promised.
        ballot: Ballot,
        /// The acceptor's contiguous chosen prefix: the sender learns those by catch-up.
        chosen_through: Slot,
        /// Accepted or chosen entries above that prefix.
        entries: Vec<PromiseEntry>,
        /// The acceptor's member sets: changes inside its chosen prefix are not among
        /// `entries`, so the candidate learns them here.
        members: MemberSets,
    },
    /// Phase 2a, sent only by a master whose phase 1 completed for `ballot`.
    Accept {
        /// The master's ballot.
        ballot: Ballot,
        /// The instance.
        slot: Slot,
        /// The proposed value.
        value: Value,
        /// Commit piggyback: every slot up to here is chosen (PML §4.1 phase 3).
        chosen_through: Slot,
        /// Lease round this message renews (echoed in the reply).
        lease_seq: u64,
    },
    /// Phase 2b: the acceptor durably accepted `ballot` at `slot`.
    Accepted {
        /// The ballot accepted.
        ballot: Ballot,
        /// The instance.
        slot: Slot,
        /// Echo of the Accept's lease round: it also grants the master lease.
        lease_seq: u64,
    },
    /// Master heartbeat: renews the lease and tells what is chosen (PML §5.2).
    Heartbeat {
        /// The master's ballot.
        ballot: Ballot,
        /// Every slot up to here is chosen.
        chosen_through: Slot,
        /// Lease round this message renews.
        lease_seq: u64,
    },
    /// The replica granted the lease asked for by `lease_seq`.
    HeartbeatAck {
        /// The master's ballot.
        ballot: Ballot,
        /// Echo of the heartbeat's lease round.
        lease_seq: u64,
    },
    /// Refusal of a Prepare, Accept or Heartbeat carrying `ballot`.
    Nack {
        /// The ballot refused.
        ballot: Ballot,
        /// The highest ballot the acceptor has promised or seen.
        promised: Ballot,
        /// True when the refusal is because another replica's master lease still runs.
        lease_held: bool,
    },
    /// Catch-up: "send me chosen values from `from_slot` on, at most `entries_max` of them".
    CatchUpRequest {
        /// The first slot wanted.
        from_slot: Slot,
        /// Bound on the reply's length.
        entries_max: u32,
    },
    /// Chosen values, contiguous from the requested slot.
    CatchUpReply {
        /// `(slot, value)` pairs in slot order.
        entries: Vec<(Slot, Value)>,
        /// The sender's contiguous chosen prefix.
        chosen_through: Slot,
        /// The sender's log starts after this slot (a snapshot covers the rest): a replica
        /// that needs a slot at or below it must fetch a snapshot (PML §5.5).
        truncated_through: Slot,
        /// The sender's member sets (the values that made them may be truncated).
        members: MemberSets,
    },
    /// A replica rebuilding after disk loss asks a peer for bounds on what it could have
    /// promised or accepted before it lost its disk.
    RebuildQuery {
        /// Matches the reply to this query.
        nonce: u64,
    },
    /// The peer's durable promise and the highest slot it has accepted or knows chosen.
    RebuildReply {
        /// Echo of the query's nonce.
        nonce: u64,
        /// The peer's promised ballot.
        promised: Ballot,
        /// The highest slot the peer has accepted or learned.
        accepted_through: Slot,
        /// The newest member set the peer knows: the rebuilding replica needs a reply
        /// from each of them.
        newest: Vec<NodeId>,
    },
}

impl PaxosMsg {
    /// The instance an Accept or Accepted is about (for logs).
    #[must_use]
    pub fn slot(&self) -> Option<Slot> {
        match self {
            PaxosMsg::Accept { slot, .. } | PaxosMsg::Accepted { slot, .. } => Some(*slot),
            _ => None,
        }
    }

    /// A short name for logs and statistics.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            PaxosMsg::Prepare { .. } => "prepare",
            PaxosMsg::Promise { .. } => "promise",
            PaxosMsg::Accept { .. } => "accept",
            PaxosMsg::Accepted { .. } => "accepted",
            PaxosMsg::Heartbeat { .. } => "heartbeat",
            PaxosMsg::HeartbeatAck { .. } => "heartbeat_ack",
            PaxosMsg::Nack { .. } => "nack",
            PaxosMsg::CatchUpRequest { .. } => "catch_up_request",
            PaxosMsg::CatchUpReply { .. } => "catch_up_reply",
            PaxosMsg::RebuildQuery { .. } => "rebuild_query",
            PaxosMsg::RebuildReply { .. } => "rebuild_reply",
        }
    }
}
