//! The chubby replica.
//!
//! ```text
//!            Submit(cmd)                 PaxosMsg from peers             Tick(now)
//!                 \                            |                          /
//!                  v                           v                         v
//!            +--------------------------------------------------------------+
//!            |  paxos::Replica  (pure: no clock, disk, network or RNG)      |
//!            |   acceptor  | master (leader + lease + boost) | learner      |
//!            |   rebuild (disk-loss rule)                                   |
//!            +--------------------------------------------------------------+
//!                  |  Vec<Action>, executed IN ORDER by the shell
//!                  v
//!     Persist(batch) -> storage::Storage::persist (fsync)   -- must finish before
//!     Send{to,msg}   -> transport                             -- any later Send
//!     Deliver{slot,value} -> the database (exactly once per slot, in order)
//! ```
//!
//! Module map:
//! - [`cell`]: creating a cell: its CA, replica/admin/client certificates and the
//!   replica `config.toml` / client `cell.toml` files, with their loaders.
//! - [`db`]: the pure replicated database: Chubby's nodes, ACLs, sessions, handles, locks
//!   and snapshots, applied one log command at a time (Chubby §2.3–2.9, PML §5.3–5.6).
//! - [`master`]: the master's pure session logic: leases, KeepAlive long polls, cache
//!   invalidation before writes, events, and the fail-over steps (Chubby §2.5–2.9).
//! - [`node`]: the async shell that runs one replica process: Paxos, database, store,
//!   peer and client ports, one core loop with group commit.
//! - [`paxos`]: the pure Multi-Paxos replica (Paxos Made Live §3–5).
//! - [`replica`]: one replica's pure composite of the pure layers (Paxos, database,
//!   serving, master), its log entries and stamps, and the plan a shell executes a round's
//!   actions by; the node and the simulator both drive it.
//! - [`serve`]: serving client calls at the master (pure): checks, reads under the lease,
//!   writes gated by the master and proposed, KeepAlives parked, answers of applied writes.
//! - [`storage`]: the durable acceptor state and log: a checksummed write-ahead log that
//!   tells corruption from a torn write, and an in-memory twin for the simulator; the data
//!   directory and the snapshot file.
//! - [`transport`]: QUIC with mutual TLS: rustls configs, the connection's principal,
//!   length-prefixed framing, the replica-to-replica [`transport::PeerTransport`] and the
//!   client port.
#![warn(missing_docs)]

pub mod db;
pub mod master;
pub mod node;
pub mod paxos;
pub mod replica;
pub mod serve;
pub mod storage;
pub mod transport;

pub use chubby_protocol::cell;
