//! Liveness after faults heal (PML §6.3 "liveness mode"): once every fault stops, the cell
//! elects a master, every replica rebuilds and converges, and every command submitted to a
//! master that survives is delivered on every replica (rebuilt ones included) within the
//! liveness window. "Delivered on every replica" is checked as: the command was delivered
//! at some slot, and every replica's application has applied that slot (by delivery or
//! through a snapshot, which [`super::delivery_order`] checks is the chosen prefix).

use std::collections::BTreeMap;

use chubby_protocol::{Ballot, NodeId, Slot};

use super::{violation, Violation};

/// A command a master took during the liveness phase.
#[derive(Clone, Debug)]
struct Taken {
    master: NodeId,
    epoch: Ballot,
}

/// Commands taken in the liveness phase, and where they were delivered.
#[derive(Debug, Default)]
pub struct Liveness {
    taken: BTreeMap<Vec<u8>, Taken>,
    /// The slot each taken command was delivered at.
    slot_of: BTreeMap<Vec<u8>, Slot>,
}

/// A replica's state at the end of the run.
#[derive(Clone, Debug)]
pub struct FinalState {
    /// The replica.
    pub node: NodeId,
    /// Whether it is running.
    pub up: bool,
    /// Whether it votes (rebuild finished).
    pub voter: bool,
    /// Its master epoch, if master.
    pub epoch: Option<Ballot>,
    /// Its chosen prefix.
    pub chosen_through: Slot,
    /// The last slot its application applied.
    pub applied: Slot,
}

impl Liveness {
    /// `master`, in `epoch`, queued `command` without rejecting it.
    pub fn on_taken(&mut self, command: Vec<u8>, master: NodeId, epoch: Ballot) {
        self.taken.insert(command, Taken { master, epoch });
    }

    /// `command` was delivered at `slot` (on any replica: delivery order checks they agree).
    pub fn on_deliver(&mut self, slot: Slot, command: &[u8]) {
        if self.taken.contains_key(command) {
            self.slot_of.insert(command.to_vec(), slot);
        }
    }

    /// Commands taken so far.
    #[must_use]
    pub fn taken_count(&self) -> usize {
        self.taken.len()
    }

    /// The verdict at the end of the liveness window.
    ///
    /// # Errors
    /// No master, a replica down or rebuilding, or a surviving master's command missing.
    pub fn check(&self, nodes: &[FinalState]) -> Result<(), Violation> {
        let masters: Vec<&FinalState> = nodes.iter().filter(|n| n.epoch.is_some()).collect();
        if masters.len() != 1 {
            return Err(violation(
                "liveness",
                format!("{} masters after healing: {nodes:?}", masters.len()),
            ));
        }
        if let Some(stuck) = nodes.iter().find(|n| !n.up || !n.voter) {
            return Err(violation(
                "liveness",
                format!("replica not back as a voter: {stuck:?}"),
            ));
        }
        if self.taken.is_empty() {
            return Err(violation(
                "liveness",
                "no command was taken after healing".into(),
            ));
        }
        for (command, taken) in &self.taken {
            let survived = nodes
                .iter()
                .any(|n| n.node == taken.master && n.epoch == Some(taken.epoch));
            if !survived {
                continue;
            }
            let name = String::from_utf8_lossy(command);
            let Some(&slot) = self.slot_of.get(command) else {
                return Err(violation(
                    "liveness",
                    format!("{name} taken by {} delivered nowhere", taken.master),
                ));
            };
            if let Some(n) = nodes.iter().find(|n| n.applied < slot) {
                return Err(violation(
                    "liveness",
                    format!(
                        "{name} taken by {} (slot {slot}) not applied on {} (applied {})",
                        taken.master, n.node, n.applied
                    ),
                ));
            }
        }
        Ok(())
    }
}
