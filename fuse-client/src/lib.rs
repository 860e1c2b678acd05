//! The chubby client: the connection to a cell, the `chubby` command's subcommands, and
//! (with issues 5 and 6) sessions, the consistent cache and the FUSE mount.
//!
//! - [`conn`]: QUIC connections to a cell's replicas with master discovery.
//! - [`session`]: the session's local lease, jeopardy and grace (pure).
//! - [`cache`]: the consistent cache of contents, metadata, listings and absence (pure).
//! - [`client`]: the async library: a session with KeepAlives, the cache, events, calls.
//! - [`idle_handles`]: writable handles kept open for the next writer of their node (pure).
//! - [`fs`]: `chubby mount`, the namespace as a FUSE filesystem bound to the cache.
//!
//! The `chubby` command itself lives in `src/bin/chubby/` (`cell init`, `up`, `status`).
#![warn(missing_docs)]

pub mod cache;
pub mod client;
pub mod conn;
pub mod fs;
pub mod idle_handles;
pub mod session;

pub use chubby_protocol as protocol;
