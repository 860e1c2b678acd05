//! chubby's integration crate: the deterministic simulator ([`sim`]) that drives the pure
//! cores of `chubby-server` with seeded faults, and (in `tests/`) tests that run real
//! components: child processes, real disks, later real cells and mounts.
#![warn(missing_docs)]

pub mod sim;
