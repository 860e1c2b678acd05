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
//! - [`paxos`]: the pure Multi-Paxos replica (Paxos Made Live §3–5).
//! - [`storage`]: the durable acceptor state and log: sled (really synced) and an
//!   in-memory twin for the simulator.
#![warn(missing_docs)]

pub mod paxos;
pub mod storage;
