//! Which replicas vote for which slots, and what counts as a quorum (docs/paxos.md,
//! "Membership changes").
//!
//! Member sets are indexed by the first slot they govern. A cell starts with one set, from
//! slot 1 (the founding members); a chosen value may carry a new set ([`MemberChange`]),
//! which governs slots [`MEMBERSHIP_DELAY`] after its own. Every quorum decision of the core
//! goes through here:
//! - phase 2 of slot `s` needs a majority of the set governing `s`;
//! - phase 1 from slot `f`, and a lease round, need a majority of every set governing a slot
//!   at or after `f` (the set in effect there and every later one), and phase 1 also of
//!   every set carried by a value a promise reports.
//!
//! The map grows only from chosen values (or from a peer's map, itself grown only from
//! chosen values), so any two replicas' maps agree where both have an entry.

use std::collections::{BTreeMap, BTreeSet};

use chubby_protocol::{MemberAddr, MemberChange, MemberSets, NodeId, Slot};

/// The most members one set may have (DESIGN §7: cells of up to 9 replicas).
pub const MEMBERS_MAX: usize = 9;

/// Why a membership change was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChangeRefusal {
    /// Only the master proposes changes.
    #[error("not the master")]
    NotMaster {
        /// The probable master.
        hint: Option<NodeId>,
    },
    /// A change is chosen (or proposed) but not yet in effect.
    #[error("another membership change is still pending; retry once it is in effect")]
    Pending,
    /// The new set is not the newest one with exactly one replica added or removed.
    #[error("{0}")]
    Invalid(String),
}

/// Slots between a membership change's own slot and the first slot it governs (α). The
/// master's window must not exceed it, so the master always knows the set of a slot it
/// proposes (every slot `window` below it is chosen).
pub const MEMBERSHIP_DELAY: u64 = 64;

/// The member sets, each from the first slot it governs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    sets: BTreeMap<Slot, Vec<NodeId>>,
    addrs: BTreeMap<NodeId, MemberAddr>,
    /// Every change chosen at or below this slot is in `sets`.
    complete_through: Slot,
}

impl Membership {
    /// One set, `members` (sorted, unique), governing every slot.
    #[must_use]
    pub fn new(members: Vec<NodeId>) -> Membership {
        let mut sets = BTreeMap::new();
        sets.insert(Slot(1), members);
        Membership {
            sets,
            addrs: BTreeMap::new(),
            complete_through: Slot::ZERO,
        }
    }

    /// The sets a store or a peer reported; `founders` when it reported none.
    #[must_use]
    pub fn from_wire(wire: &MemberSets, founders: Vec<NodeId>) -> Membership {
        let mut m = Membership::new(founders);
        m.merge(wire);
        m
    }

    /// The sets and addresses, for a store or a catch-up reply.
    #[must_use]
    pub fn to_wire(&self) -> MemberSets {
        MemberSets {
            sets: self.sets.iter().map(|(s, m)| (*s, m.clone())).collect(),
            addrs: self.addrs.values().cloned().collect(),
            complete_through: self.complete_through,
        }
    }

    /// Every change chosen at or below this slot is known. Below a replica's chosen
    /// prefix only after a snapshot install skipped values, until a peer's map fills in.
    #[must_use]
    pub fn complete_through(&self) -> Slot {
        self.complete_through
    }

    /// Adopts what `wire` knows that we do not: sets are facts about chosen values, so a
    /// set already known at the same slot is the same set. Returns whether a set or an
    /// address changed (a raised `complete_through` alone is not worth storing: a restart
    /// recomputes it from the log).
    pub fn merge(&mut self, wire: &MemberSets) -> bool {
        let mut changed = false;
        for (slot, members) in &wire.sets {
            if !Self::well_formed(members) || *slot == Slot::ZERO {
                continue;
            }
            let known = self.sets.get(slot).filter(|set| !set.is_empty());
            if known.is_none() {
                // A joining replica starts with an empty founding set and adopts its
                // peers'; every other set already known is the same on every replica
                // (so a peer can never replace our founding set).
                self.sets.insert(*slot, members.clone());
                changed = true;
            }
        }
        for addr in &wire.addrs {
            if self.addrs.get(&addr.id) != Some(addr) {
                self.addrs.insert(addr.id, addr.clone());
                changed = true;
            }
        }
        let founded = self.sets.get(&Slot(1)).is_some_and(|s| !s.is_empty());
        if founded {
            self.complete_through = self.complete_through.max(wire.complete_through);
        }
        changed
    }

    /// Notes that `value`'s change (if any) was chosen at `slot`, in slot order. Only when
    /// the map is complete just below `slot` is the change judged and the map extended: a
    /// change chosen while another is pending, or that is not the newest set with one
    /// replica added or removed, is ignored alike by every replica (masters refuse such
    /// changes, but a new master re-proposes whatever phase 1 found). Returns whether the
    /// sets or addresses changed.
    pub fn observe(&mut self, slot: Slot, change: Option<&MemberChange>) -> bool {
        if self.complete_through.next() != slot {
            return false;
        }
        self.complete_through = slot;
        let Some(change) = change else {
            return false;
        };
        if self.newest_from() > slot {
            tracing::warn!(%slot, "ignoring a membership change chosen while another is pending");
            return false;
        }
        if let Err(why) = self.check_change(&change.members) {
            tracing::warn!(%slot, %why, "ignoring an invalid membership change");
            return false;
        }
        self.learn(slot, change)
    }

    /// Records that `change` was chosen at `slot`; returns whether it was new.
    fn learn(&mut self, slot: Slot, change: &MemberChange) -> bool {
        if !Self::well_formed(&change.members) {
            // Every replica decodes the same bytes, so every one skips it alike.
            tracing::error!(%slot, "ignoring a malformed membership change");
            return false;
        }
        let from = Slot(slot.0.saturating_add(MEMBERSHIP_DELAY));
        let mut changed = self.sets.insert(from, change.members.clone()).is_none();
        for addr in &change.addrs {
            changed |= self.addrs.insert(addr.id, addr.clone()).as_ref() != Some(addr);
        }
        changed
    }

    /// 1 to [`MEMBERS_MAX`] distinct non-zero ids in order.
    #[must_use]
    pub fn well_formed(members: &[NodeId]) -> bool {
        !members.is_empty()
            && members.len() <= MEMBERS_MAX
            && members.windows(2).all(|w| w[0] < w[1])
            && members.iter().all(|m| m.0 != 0)
    }

    /// The first slot the newest set governs.
    #[must_use]
    pub fn newest_from(&self) -> Slot {
        self.sets.last_key_value().map_or(Slot(1), |(s, _)| *s)
    }

    /// Whether `set` is one of our sets that a later one replaced (and not the newest):
    /// a peer that names it as its newest lags behind a change we know was chosen.
    #[must_use]
    pub fn is_superseded(&self, set: &[NodeId]) -> bool {
        self.newest() != set
            && self
                .sets
                .values()
                .any(|known| !known.is_empty() && known.as_slice() == set)
    }

    /// Addresses learned from changes.
    #[must_use]
    pub fn addrs(&self) -> &BTreeMap<NodeId, MemberAddr> {
        &self.addrs
    }

    /// Every replica of every set.
    #[must_use]
    pub fn everyone(&self) -> BTreeSet<NodeId> {
        self.sets.values().flatten().copied().collect()
    }

    /// Checks that `members` is the newest set with exactly one replica added or removed
    /// (so any majority of one meets any majority of the other).
    ///
    /// # Errors
    /// [`ChangeRefusal::Invalid`] saying what is wrong.
    pub fn check_change(&self, members: &[NodeId]) -> Result<(), ChangeRefusal> {
        if !Self::well_formed(members) {
            return Err(ChangeRefusal::Invalid(format!(
                "a member set must be 1 to {MEMBERS_MAX} distinct non-zero ids in order"
            )));
        }
        let newest: BTreeSet<NodeId> = self.newest().iter().copied().collect();
        let wanted: BTreeSet<NodeId> = members.iter().copied().collect();
        let diff = newest.symmetric_difference(&wanted).count();
        if diff != 1 {
            return Err(ChangeRefusal::Invalid(format!(
                "a change adds or removes exactly one replica; the members are {} and the \
                 change asks for {}",
                show(&newest),
                show(&wanted)
            )));
        }
        Ok(())
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

    /// Whether `id` is in a set governing a slot at or after `from`, or in the newest set.
    #[must_use]
    pub fn is_current(&self, from: Slot, id: NodeId) -> bool {
        self.sets_from(from).any(|set| set.contains(&id)) || self.newest().contains(&id)
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

fn show(set: &BTreeSet<NodeId>) -> String {
    let ids: Vec<String> = set.iter().map(|n| n.0.to_string()).collect();
    format!("{{{}}}", ids.join(", "))
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

    fn change(v: &[u32]) -> MemberChange {
        MemberChange {
            members: ids(v),
            addrs: vec![MemberAddr {
                id: NodeId(4),
                host: "h".into(),
                peer_port: 1,
                client_port: 2,
            }],
        }
    }

    #[test]
    fn a_chosen_change_governs_from_its_slot_plus_the_delay_and_travels_whole() {
        let mut m = Membership::new(ids(&[1, 2, 3]));
        assert!(m.learn(Slot(10), &change(&[1, 2, 3, 4])));
        assert!(!m.learn(Slot(10), &change(&[1, 2, 3, 4])), "learned twice");
        let from = Slot(10 + MEMBERSHIP_DELAY);
        assert_eq!(m.newest_from(), from);
        assert_eq!(m.at(Slot(from.0 - 1)), ids(&[1, 2, 3]).as_slice());
        assert_eq!(m.at(from), ids(&[1, 2, 3, 4]).as_slice());
        assert_eq!(m.addrs()[&NodeId(4)].host, "h");
        // A replica that knows only the founders adopts the whole map from a peer.
        let mut other = Membership::new(ids(&[1, 2, 3]));
        assert!(other.merge(&m.to_wire()));
        assert_eq!(other, m);
        assert!(!other.merge(&m.to_wire()), "nothing new the second time");
        // A peer cannot replace the founding set.
        let mut forged = m.to_wire();
        forged.sets[0].1 = ids(&[7]);
        let mut third = Membership::new(ids(&[1, 2, 3]));
        third.merge(&forged);
        assert_eq!(third.at(Slot(1)), ids(&[1, 2, 3]).as_slice());
        // A joining replica, knowing no set, adopts the founders from its peer.
        let mut joiner = Membership::new(Vec::new());
        assert!(joiner.newest().is_empty());
        assert!(joiner.merge(&m.to_wire()));
        assert_eq!(joiner, m);
    }

    #[test]
    fn chosen_changes_are_judged_alike_in_slot_order_and_only_with_a_complete_map() {
        let mut m = Membership::new(ids(&[1, 2, 3]));
        assert!(!m.observe(Slot(1), None));
        assert_eq!(m.complete_through(), Slot(1));
        assert!(
            !m.observe(Slot(3), Some(&change(&[1, 2, 3, 4]))),
            "gap at slot 2: not judged"
        );
        assert_eq!(m.complete_through(), Slot(1));
        assert!(m.observe(Slot(2), Some(&change(&[1, 2, 3, 4]))));
        assert_eq!(m.newest_from(), Slot(2 + MEMBERSHIP_DELAY));
        // A second change while the first is pending is ignored (a new master may have
        // re-proposed it), and so is one that is not a single step from the newest set.
        assert!(!m.observe(Slot(3), Some(&change(&[1, 2, 3, 4, 5]))));
        for s in 4..2 + MEMBERSHIP_DELAY {
            m.observe(Slot(s), None);
        }
        let far = Slot(2 + MEMBERSHIP_DELAY);
        assert!(
            !m.observe(far, Some(&change(&[1, 4]))),
            "two replicas at once"
        );
        assert!(m.observe(far.next(), Some(&change(&[1, 2, 3, 4, 5]))));
        assert_eq!(m.newest(), ids(&[1, 2, 3, 4, 5]).as_slice());
    }

    #[test]
    fn only_single_replica_changes_of_the_newest_set_are_accepted() {
        let m = Membership::new(ids(&[1, 2, 3]));
        assert!(m.check_change(&ids(&[1, 2, 3, 4])).is_ok());
        assert!(m.check_change(&ids(&[1, 3])).is_ok());
        for bad in [
            &[1, 2, 3][..],
            &[1, 2, 3, 4, 5],
            &[1, 4, 3],
            &[2],
            &[],
            &[0, 1, 2, 3],
        ] {
            assert!(m.check_change(&ids(bad)).is_err(), "{bad:?}");
        }
        let mut m = m;
        assert!(!m.learn(Slot(3), &change(&[3, 1])), "unsorted set ignored");
        assert_eq!(m.newest(), ids(&[1, 2, 3]).as_slice());
    }
}
