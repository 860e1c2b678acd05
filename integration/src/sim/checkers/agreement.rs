//! Agreement: no slot is ever chosen with two different values (Lamport, *Paxos Made Simple*
//! §2.1 safety; PML §4.1), across membership changes (docs/paxos.md "Membership changes").
//!
//! The checker is its own oracle: it sees every durable acceptance (each `Persist` of a log
//! entry under a real ballot) and declares `(slot, value)` chosen once a majority of the
//! member set governing the slot durably accepted it in one ballot. A later majority for
//! another value in any ballot is a violation, even if no replica ever noticed.
//!
//! Which set governs a slot is itself decided by chosen values: a change chosen at slot `c`
//! governs from `c + α` ([`MEMBERSHIP_DELAY`]). The oracle keeps its own map, written here
//! from the design rather than borrowed from the code under test: it judges the chosen
//! values in slot order (a change chosen while another is pending, or that is not the
//! newest set with exactly one replica added or removed, is ignored, as every replica must
//! ignore it), and judges a slot's votes only once every change that could govern it is
//! known. Votes that arrive before then wait; a violation may therefore be found late, never
//! missed.

use std::collections::{BTreeMap, BTreeSet};

use chubby_protocol::{Ballot, MemberChange, NodeId, Slot, Value};
use chubby_server::paxos::{PersistBatch, MEMBERSHIP_DELAY};

use super::{violation, Violation};

/// A value as the oracle tells values apart: its commands and its member set, if any.
type Key = (Vec<Vec<u8>>, Option<Vec<NodeId>>);

/// For one `(slot, ballot)`: which replicas durably accepted each value.
type Votes = BTreeMap<Key, (Value, BTreeSet<NodeId>)>;

/// Durable votes, the values they chose, and the member sets those values made.
#[derive(Debug)]
pub struct Agreement {
    votes: BTreeMap<(Slot, Ballot), Votes>,
    chosen: BTreeMap<Slot, Value>,
    /// The member sets, each from the first slot it governs.
    sets: BTreeMap<Slot, BTreeSet<NodeId>>,
    /// Every slot up to here is chosen and its change (if any) judged.
    judged_through: Slot,
    /// Changes chosen and judged valid.
    changes: u64,
    /// Changes chosen but ignored (pending another, or not a one-replica change).
    ignored: u64,
}

impl Agreement {
    /// A checker for a cell founded by `founders`.
    #[must_use]
    pub fn new(founders: &[NodeId]) -> Agreement {
        let mut sets = BTreeMap::new();
        sets.insert(Slot(1), founders.iter().copied().collect());
        Agreement {
            votes: BTreeMap::new(),
            chosen: BTreeMap::new(),
            sets,
            judged_through: Slot::ZERO,
            changes: 0,
            ignored: 0,
        }
    }

    /// `node` made `batch` durable.
    ///
    /// # Errors
    /// A slot chosen with a second value.
    pub fn on_persist(&mut self, node: NodeId, batch: &PersistBatch) -> Result<(), Violation> {
        let mut touched = BTreeSet::new();
        for (slot, entry) in batch
            .entries
            .iter()
            .filter(|(_, e)| e.ballot != Ballot::ZERO)
        {
            let key = key_of(&entry.value);
            self.votes
                .entry((*slot, entry.ballot))
                .or_default()
                .entry(key)
                .or_insert_with(|| (entry.value.clone(), BTreeSet::new()))
                .1
                .insert(node);
            touched.insert(*slot);
        }
        for slot in touched {
            self.judge_slot(slot)?;
        }
        Ok(())
    }

    /// Whether the set governing `slot` is known: every change that could govern it (one
    /// chosen at or below `slot - α`) is judged.
    fn set_known(&self, slot: Slot) -> bool {
        slot.0 <= self.judged_through.0.saturating_add(MEMBERSHIP_DELAY)
    }

    /// The set governing `slot` (only meaningful when [`Self::set_known`]).
    fn set_at(&self, slot: Slot) -> &BTreeSet<NodeId> {
        self.sets
            .range(..=slot.max(Slot(1)))
            .next_back()
            .map(|(_, s)| s)
            .expect("the founding set governs from slot 1")
    }

    /// Declares chosen every value at `slot` a majority of its set accepted in one ballot,
    /// if its set is known; then judges newly complete slots in order.
    fn judge_slot(&mut self, slot: Slot) -> Result<(), Violation> {
        if !self.set_known(slot) {
            return Ok(());
        }
        self.count_votes(slot)?;
        self.advance()
    }

    /// Chooses at `slot` (whose set is known) every value a majority of that set accepted
    /// in one ballot.
    fn count_votes(&mut self, slot: Slot) -> Result<(), Violation> {
        let set = self.set_at(slot).clone();
        let mut found = Vec::new();
        for ((_, ballot), votes) in self
            .votes
            .range((slot, Ballot::ZERO)..)
            .take_while(|((s, _), _)| *s == slot)
        {
            for (value, voters) in votes.values() {
                let count = voters.iter().filter(|v| set.contains(v)).count();
                if count > set.len() / 2 {
                    found.push((*ballot, value.clone()));
                }
            }
        }
        for (ballot, value) in found {
            self.choose(slot, ballot, &value)?;
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

    /// Judges chosen slots in order past `judged_through`; each step may make the set of
    /// a later slot known, whose waiting votes are then judged.
    fn advance(&mut self) -> Result<(), Violation> {
        loop {
            let next = self.judged_through.next();
            let Some(value) = self.chosen.get(&next) else {
                return Ok(());
            };
            let change = value.change.clone();
            self.judged_through = next;
            if let Some(change) = change {
                self.judge_change(next, &change);
            }
            // Slot next + α now has a known set: judge its waiting votes.
            self.count_votes(Slot(next.0.saturating_add(MEMBERSHIP_DELAY)))?;
        }
    }

    /// A change chosen at `slot`, judged as the design says every replica judges it.
    fn judge_change(&mut self, slot: Slot, change: &MemberChange) {
        let newest_from = self.sets.last_key_value().map_or(Slot(1), |(s, _)| *s);
        let newest = self.newest().clone();
        let wanted: BTreeSet<NodeId> = change.members.iter().copied().collect();
        let well_formed = !change.members.is_empty()
            && change.members.windows(2).all(|w| w[0] < w[1])
            && change.members.iter().all(|m| m.0 != 0);
        let one_replica = newest.symmetric_difference(&wanted).count() == 1;
        if newest_from > slot || !well_formed || !one_replica {
            self.ignored += 1;
            return;
        }
        self.changes += 1;
        self.sets
            .insert(Slot(slot.0.saturating_add(MEMBERSHIP_DELAY)), wanted);
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

    /// The newest member set chosen.
    #[must_use]
    pub fn newest(&self) -> &BTreeSet<NodeId> {
        self.sets
            .last_key_value()
            .map(|(_, s)| s)
            .expect("the founding set is never removed")
    }

    /// The first slot the newest set governs.
    #[must_use]
    pub fn newest_from(&self) -> Slot {
        self.sets.last_key_value().map_or(Slot(1), |(s, _)| *s)
    }

    /// Whether the newest set is in effect: every slot before it governs is chosen.
    #[must_use]
    pub fn newest_in_effect(&self) -> bool {
        self.judged_through.next() >= self.newest_from()
    }

    /// Every replica that was ever in a chosen set.
    #[must_use]
    pub fn ever_members(&self) -> BTreeSet<NodeId> {
        self.sets.values().flatten().copied().collect()
    }

    /// Membership changes chosen and in the map, and chosen ones every replica ignores.
    #[must_use]
    pub fn change_counts(&self) -> (u64, u64) {
        (self.changes, self.ignored)
    }
}

fn key_of(value: &Value) -> Key {
    (
        value.commands.clone(),
        value.change.as_ref().map(|c| c.members.clone()),
    )
}
