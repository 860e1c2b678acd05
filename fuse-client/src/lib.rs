//! The chubby client: session and cache cores, the async client library, the `chubby`
//! command and the FUSE mount.
//!
//! Only the crate exists so far; the client arrives with the sessions-and-client issue.
//! It will depend on [`chubby_protocol`] for every wire type.

pub use chubby_protocol as protocol;
