//! The chubby client: the connection to a cell, the `chubby` command's subcommands, and
//! (with issues 5 and 6) sessions, the consistent cache and the FUSE mount.
//!
//! - [`conn`]: QUIC connections to a cell's replicas with master discovery.
//!
//! The `chubby` command itself lives in `src/bin/chubby/` (`cell init`, `up`, `status`).
#![warn(missing_docs)]

pub mod conn;

pub use chubby_protocol as protocol;
