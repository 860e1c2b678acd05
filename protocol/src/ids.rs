//! Identifier newtypes. No bare integer crosses a module boundary (STYLE habit 6).

use bincode::{Decode, Encode};

/// A replica's identity within its cell (1-based, as in `replica-<n>`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct NodeId(pub u32);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// A position in the replicated log: one Paxos instance. Slot 0 is never used, so
/// "chosen through slot 0" means "nothing chosen yet".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct Slot(pub u64);

impl Slot {
    /// The slot before the first real one.
    pub const ZERO: Slot = Slot(0);

    /// The slot after this one.
    #[must_use]
    pub fn next(self) -> Slot {
        Slot(self.0 + 1)
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// A Paxos ballot (PML §4.1 "sequence number"): totally ordered by `round`, then by `node`,
/// so two replicas never use the same ballot. The ballot under which a replica became master
/// is the cell's master epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct Ballot {
    /// Grows each time a replica starts phase 1.
    pub round: u64,
    /// The replica that owns this ballot.
    pub node: NodeId,
}

impl Ballot {
    /// Lower than every ballot a replica can use (rounds start at 1).
    pub const ZERO: Ballot = Ballot {
        round: 0,
        node: NodeId(0),
    };

    /// The smallest ballot owned by `node` that is above `seen`.
    #[must_use]
    pub fn next_above(seen: Ballot, node: NodeId) -> Ballot {
        let candidate = Ballot {
            round: seen.round,
            node,
        };
        if candidate > seen {
            candidate
        } else {
            Ballot {
                round: seen.round + 1,
                node,
            }
        }
    }
}

impl std::fmt::Display for Ballot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "b{}.{}", self.round, self.node.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ballots_order_by_round_then_node() {
        let a = Ballot {
            round: 1,
            node: NodeId(3),
        };
        let b = Ballot {
            round: 2,
            node: NodeId(1),
        };
        let c = Ballot {
            round: 2,
            node: NodeId(2),
        };
        assert!(a < b && b < c);
        assert!(Ballot::ZERO < a);
    }

    #[test]
    fn next_above_is_strictly_greater_and_owned() {
        let seen = Ballot {
            round: 5,
            node: NodeId(2),
        };
        let mine = Ballot::next_above(seen, NodeId(3));
        assert_eq!(
            mine,
            Ballot {
                round: 5,
                node: NodeId(3)
            }
        );
        let mine = Ballot::next_above(seen, NodeId(1));
        assert_eq!(
            mine,
            Ballot {
                round: 6,
                node: NodeId(1)
            }
        );
        assert!(Ballot::next_above(Ballot::ZERO, NodeId(1)) > Ballot::ZERO);
    }
}
