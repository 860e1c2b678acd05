//! Agreement: no slot is ever chosen with two different values (Lamport, *Paxos Made Simple*
//! §2.1 safety; PML §4.1).
//!
//! The checker is its own oracle: it sees every durable acceptance (each `Persist` of a log
//! entry under a real ballot) and declares `(slot, value)` chosen once a majority of members
//! durably accepted it in one ballot. A later majority for another value in any ballot is a
//! violation, even if no replica ever noticed.

use std::collections::{BTreeMap, BTreeSet};

use chubby_protocol::{Ballot, NodeId, Slot, Value};
use chubby_server::paxos::PersistBatch;

use super::{violation, Violation};

/// For one `(slot, ballot)`: which replicas durably accepted each value (by its commands).
type Votes = BTreeMap<Vec<Vec<u8>>, BTreeSet<NodeId>>;

/// Durable votes and the values they chose.
#[derive(Debug, Default)]
pub struct Agreement {
    majority: usize,
    votes: BTreeMap<(Slot, Ballot), Votes>,
    chosen: BTreeMap<Slot, Value>,
}

impl Agreement {
    /// A checker for a cell whose majority is `majority`.
    #[must_use]
    pub fn new(majority: usize) -> Agreement {
        Agreement {
            majority,
            ..Agreement::default()
        }
    }

    /// `node` made `batch` durable.
    ///
    /// # Errors
    /// A slot chosen with a second value.
    pub fn on_persist(&mut self, node: NodeId, batch: &PersistBatch) -> Result<(), Violation> {
        for (slot, entry) in batch
            .entries
            .iter()
            .filter(|(_, e)| e.ballot != Ballot::ZERO)
        {
            let voters = self
                .votes
                .entry((*slot, entry.ballot))
                .or_default()
                .entry(entry.value.commands.clone())
                .or_default();
            voters.insert(node);
            if voters.len() >= self.majority {
                self.choose(*slot, entry.ballot, &entry.value)?;
            }
        }
        Ok(())
    }

    fn choose(&mut self, slot: Slot, ballot: Ballot, value: &Value) -> Result<(), Violation> {
        match self.chosen.get(&slot) {
            Some(earlier) if earlier != value => Err(violation(
                "agreement",
                format!("{slot} chosen twice: {earlier:?} then {value:?} (ballot {ballot})"),
            )),
            Some(_) => Ok(()),
            None => {
                self.chosen.insert(slot, value.clone());
                Ok(())
            }
        }
    }

    /// The value chosen at `slot`, if a majority has durably accepted one.
    #[must_use]
    pub fn chosen(&self, slot: Slot) -> Option<&Value> {
        self.chosen.get(&slot)
    }

    /// Number of slots chosen.
    #[must_use]
    pub fn chosen_count(&self) -> usize {
        self.chosen.len()
    }
}
