//! chubby's integration crate: the deterministic simulator ([`sim`]) that drives the pure
//! cores of `chubby-server` with seeded faults, and (in `tests/`) tests that run real
//! components: child processes, real disks, real cells of `chubby-server` processes
//! ([`real_cell`]) and FUSE mounts ([`mount`]); and the benchmark behind `chubby-bench` ([`bench`]).
#![warn(missing_docs)]

pub mod bench;
pub mod mount;
pub mod netns;
pub mod real_cell;
pub mod sim;
pub mod test_support;
