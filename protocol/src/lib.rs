//! Wire types shared by every chubby component.
//!
//! This crate holds only data: identifiers with their units ([`ids`], [`time`]), the
//! messages replicas exchange to run Multi-Paxos ([`peer_msg`]), the vocabulary of the
//! replicated database ([`db`]) with its refusals ([`error`]) and the framing that puts
//! any of them on a stream ([`codec`]). Without the `net` feature it depends on nothing that
//! does I/O, so the pure cores in `chubby-server` and `chubby-client` can use it freely.
//! With `net`, it also holds what replicas and clients share about the network and the
//! cell's files: `cell` (cell files, CA and certificates) and `net` (TLS configs, framing,
//! certificate identity).
//!
//! # Versioning
//! Every frame starts with [`codec::WIRE_VERSION`]; a peer speaking another version gets
//! [`codec::DecodeError::UnknownVersion`], never a mis-parse.
//!
//! # Size limits
//! Decoding is bounded by [`codec::FRAME_BYTES_MAX`] *before* anything is allocated, and a
//! frame with trailing bytes is rejected (bincode 2 neither limits nor checks by default;
//! see `../shared/STACK.md` §3).
#![deny(missing_docs)]

#[cfg(feature = "net")]
pub mod cell;
pub mod client_msg;
pub mod codec;
pub mod db;
pub mod error;
pub mod events;
pub mod ids;
#[cfg(feature = "net")]
pub mod metrics;
#[cfg(feature = "net")]
pub mod net;
pub mod peer_msg;
pub mod time;

pub use db::{
    AclNames, AttrChange, ContentChecksum, Creation, Generation, HandleId, InstanceNumber,
    LockMode, NodeKind, OpenMode, PathError, Posix, Sequencer, SessionId, Stat, TimeSet, Timespec,
};
pub use error::Refusal;
pub use events::{CacheToken, Event, EventMask, KeepAliveReply, Notice, Numbered};
pub use ids::{Ballot, NodeId, Slot};
pub use peer_msg::{MemberAddr, MemberChange, MemberSets, PaxosMsg, PromiseEntry, Value};
pub use time::Instant;
