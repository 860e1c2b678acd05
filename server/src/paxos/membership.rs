//! Which replicas vote for which slots, and what counts as a quorum (docs/paxos.md,
//! "Membership changes").
//!
//! Member sets are indexed by the first slot they govern. Today a cell has one set, from
//! slot 1 (the configured members); the design lets a chosen value carry a new set that
//! governs slots [`MEMBERSHIP_DELAY`] later. Every quorum decision of the core goes through
//! here, so that change touches one module:
//! - phase 2 of slot `s` needs a majority of the set governing `s`;
//! - phase 1 from slot `f`, and a lease round, need a majority of every set governing a slot
//!   at or after `f` (the set in effect there and every later one).

use std::collections::{BTreeMap, BTreeSet};

use chubby_protocol::{NodeId, Slot};

/// Slots between a membership change's own slot and the first slot it governs (α). The
/// master's window must not exceed it, so the master always knows the set of a slot it
/// proposes (every slot `window` below it is chosen).
pub const MEMBERSHIP_DELAY: u64 = 64;

/// The member sets, each from the first slot it governs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    sets: BTreeMap<Slot, Vec<NodeId>>,
}

impl Membership {
    /// One set, `members` (sorted, unique), governing every slot.
    #[must_use]
    pub fn new(members: Vec<NodeId>) -> Membership {
        let mut sets = BTreeMap::new();
        sets.insert(Slot(1), members);
        Membership { sets }
    }

    /// The set governing `slot`.
    #[must_use]
    pub fn at(&self, slot: Slot) -> &[NodeId] {
        self.sets
            .range(..=slot.max(Slot(1)))
            .next_back()
            .or_else(|| self.sets.first_key_value())
            .map_or(&[], |(_, set)| set.as_slice())
    }

    /// The newest set: the one a replica must belong to in order to campaign.
    #[must_use]
    pub fn newest(&self) -> &[NodeId] {
        self.sets
            .last_key_value()
            .map_or(&[], |(_, s)| s.as_slice())
    }

    /// Every set governing a slot at or after `from`.
    pub fn sets_from(&self, from: Slot) -> impl Iterator<Item = &[NodeId]> {
        std::iter::once(self.at(from)).chain(
            self.sets
                .range(from.next()..)
                .map(|(_, set)| set.as_slice()),
        )
    }

    /// Every replica in a set governing a slot at or after `from`.
    #[must_use]
    pub fn members_from(&self, from: Slot) -> BTreeSet<NodeId> {
        self.sets_from(from).flatten().copied().collect()
    }

    /// Whether `voters` hold a majority of `set`.
    #[must_use]
    pub fn is_majority(set: &[NodeId], voters: &BTreeSet<NodeId>) -> bool {
        let votes = set.iter().filter(|n| voters.contains(n)).count();
        votes > set.len() / 2
    }

    /// Whether `voters` hold a majority of every set governing a slot at or after `from`.
    #[must_use]
    pub fn is_quorum_from(&self, from: Slot, voters: &BTreeSet<NodeId>) -> bool {
        self.sets_from(from)
            .all(|set| Self::is_majority(set, voters))
    }

    /// Whether `voters` hold a majority of the set governing `slot`.
    #[must_use]
    pub fn is_quorum_at(&self, slot: Slot, voters: &BTreeSet<NodeId>) -> bool {
        Self::is_majority(self.at(slot), voters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u32]) -> Vec<NodeId> {
        v.iter().map(|&n| NodeId(n)).collect()
    }

    fn set(v: &[u32]) -> BTreeSet<NodeId> {
        v.iter().map(|&n| NodeId(n)).collect()
    }

    #[test]
    fn majorities_of_one_set() {
        let m = Membership::new(ids(&[1, 2, 3]));
        assert_eq!(m.at(Slot::ZERO), ids(&[1, 2, 3]).as_slice());
        assert_eq!(m.at(Slot(1000)), ids(&[1, 2, 3]).as_slice());
        assert!(m.is_quorum_at(Slot(5), &set(&[1, 3])));
        assert!(!m.is_quorum_at(Slot(5), &set(&[2])));
        assert!(
            !m.is_quorum_at(Slot(5), &set(&[2, 4, 5])),
            "non-members do not count"
        );
        assert!(m.is_quorum_from(Slot(1), &set(&[1, 2])));
        assert_eq!(m.members_from(Slot(9)), set(&[1, 2, 3]));
        let single = Membership::new(ids(&[7]));
        assert!(single.is_quorum_from(Slot(1), &set(&[7])));
    }

    #[test]
    fn a_later_set_must_be_covered_from_any_slot_before_it() {
        let mut m = Membership::new(ids(&[1, 2, 3]));
        m.sets.insert(Slot(100), ids(&[1, 2, 3, 4]));
        assert_eq!(m.at(Slot(99)), ids(&[1, 2, 3]).as_slice());
        assert_eq!(m.at(Slot(100)), ids(&[1, 2, 3, 4]).as_slice());
        assert_eq!(m.newest(), ids(&[1, 2, 3, 4]).as_slice());
        // {1, 2} is a majority of the first set but not of the second (needs 3 of 4).
        assert!(!m.is_quorum_from(Slot(50), &set(&[1, 2])));
        assert!(m.is_quorum_from(Slot(50), &set(&[1, 2, 4])));
        assert!(m.is_quorum_at(Slot(50), &set(&[1, 2])));
        assert!(!m.is_quorum_at(Slot(100), &set(&[1, 2])));
        assert_eq!(m.members_from(Slot(50)), set(&[1, 2, 3, 4]));
        assert_eq!(m.sets_from(Slot(100)).count(), 1);
    }
}
