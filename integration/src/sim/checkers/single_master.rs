//! At most one replica believes it holds a valid master lease at any true instant (PML §5.2:
//! "as long as the master has the lease, it is guaranteed that other replicas cannot
//! successfully submit values"; DESIGN §2).
//!
//! Checked at every event's true time against each live replica's own clock. A belief starts
//! only at a step of that replica, and overlaps always contain the later start, so checking
//! at event times misses none.

use chubby_protocol::{Instant, NodeId};

use super::{violation, Violation};

/// Counts how often a lease was observed, so a run that never had one is visible.
#[derive(Debug, Default)]
pub struct SingleMaster {
    /// Checks at which some replica held a lease.
    pub lease_observations: u64,
}

impl SingleMaster {
    /// `holders`: each live replica believing in its lease at true time `true_us`, with the
    /// lease end on its clock.
    ///
    /// # Errors
    /// Two or more believers.
    pub fn check(&mut self, true_us: u64, holders: &[(NodeId, Instant)]) -> Result<(), Violation> {
        if !holders.is_empty() {
            self.lease_observations += 1;
        }
        if holders.len() > 1 {
            return Err(violation(
                "single_master",
                format!(
                    "at true time {true_us}us several replicas hold a master lease: {holders:?}"
                ),
            ));
        }
        Ok(())
    }
}
