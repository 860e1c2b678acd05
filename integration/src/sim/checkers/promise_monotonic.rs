//! Promises never regress, even across crashes (Paxos Made Simple §2.3: "an acceptor must
//! remember ... even if it fails and then restarts"; PML §4.2: flush before replying).
//!
//! For each replica it tracks the highest ballot it *told* anyone it promised and the highest
//! it made durable. After a restart with an intact disk, the loaded promise must cover every
//! promise sent. A wiped disk resets the record: that is the disk-loss rule's business.

use std::collections::BTreeMap;

use chubby_protocol::{Ballot, NodeId};

use super::{violation, Violation};

#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    sent: Ballot,
    durable: Ballot,
}

/// Per-replica promise records.
#[derive(Debug, Default)]
pub struct PromiseMonotonic {
    seen: BTreeMap<NodeId, Seen>,
}

impl PromiseMonotonic {
    /// `node` sent a Promise for `ballot`.
    pub fn on_send_promise(&mut self, node: NodeId, ballot: Ballot) {
        let seen = self.seen.entry(node).or_default();
        seen.sent = seen.sent.max(ballot);
    }

    /// `node` made a promise of `ballot` durable.
    ///
    /// # Errors
    /// The durable promise went down.
    pub fn on_persist_promise(&mut self, node: NodeId, ballot: Ballot) -> Result<(), Violation> {
        let seen = self.seen.entry(node).or_default();
        if ballot < seen.durable {
            return Err(violation(
                "promise_monotonic",
                format!("{node} persisted {ballot} below {}", seen.durable),
            ));
        }
        seen.durable = ballot;
        Ok(())
    }

    /// `node` restarted and loaded `loaded`; `wiped` if its store was lost.
    ///
    /// # Errors
    /// An intact store forgot a promise that was sent.
    pub fn on_restart(
        &mut self,
        node: NodeId,
        loaded: Ballot,
        wiped: bool,
    ) -> Result<(), Violation> {
        if wiped {
            self.seen.insert(node, Seen::default());
            return Ok(());
        }
        let seen = self.seen.entry(node).or_default();
        if loaded < seen.sent {
            return Err(violation(
                "promise_monotonic",
                format!(
                    "{node} restarted promising {loaded} but had sent a promise for {}",
                    seen.sent
                ),
            ));
        }
        seen.durable = loaded;
        Ok(())
    }
}
