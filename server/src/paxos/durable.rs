//! What an acceptor keeps on disk, and the batches in which it asks the shell to write it.
//!
//! The core never writes: it emits [`super::Action::Persist`] with a [`PersistBatch`], and the
//! shell makes that batch durable (fsync) before it executes any later action. On start the
//! shell hands back the [`DurableState`] it loaded.

use std::collections::BTreeMap;

use chubby_protocol::{Ballot, MemberSets, Slot, Value};

/// One accepted (or, at or below the chosen watermark, chosen) log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// The ballot it was accepted in ([`Ballot::ZERO`] for a value learned as chosen).
    pub ballot: Ballot,
    /// The value.
    pub value: Value,
}

/// Everything an acceptor must not forget across a crash.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DurableState {
    /// False while the replica rebuilds after losing its disk (PML §5.1): it must not vote.
    pub voter: bool,
    /// The highest ballot promised.
    pub promised: Ballot,
    /// Every slot up to here is chosen, and its entry in `log` holds the chosen value
    /// (unless it is at or below `truncated_through`).
    pub chosen_through: Slot,
    /// The log holds nothing at or below this slot: an application snapshot covers it
    /// (PML §5.5). Never above `chosen_through`.
    pub truncated_through: Slot,
    /// Accepted entries, and chosen values at or below `chosen_through`.
    pub log: BTreeMap<Slot, LogEntry>,
    /// Member sets learned from chosen changes (empty: only the founding set).
    pub members: MemberSets,
}

impl DurableState {
    /// The state of a member of a newly created cell: nothing promised, nothing accepted,
    /// and a voter (nobody can have relied on a promise it never made).
    #[must_use]
    pub fn bootstrap() -> DurableState {
        DurableState {
            voter: true,
            ..DurableState::default()
        }
    }

    /// The state of a configured member whose store was empty or corrupt: it must rebuild
    /// before it votes.
    #[must_use]
    pub fn lost() -> DurableState {
        DurableState {
            voter: false,
            ..DurableState::default()
        }
    }

    /// Applies a batch, exactly as storage does on disk. Storage twins and tests use it so
    /// the meaning of a batch is defined once.
    pub fn apply(&mut self, batch: &PersistBatch) {
        if let Some(voter) = batch.voter {
            self.voter = voter;
        }
        if let Some(promised) = batch.promised {
            self.promised = promised;
        }
        for (slot, entry) in &batch.entries {
            self.log.insert(*slot, entry.clone());
        }
        if let Some(chosen_through) = batch.chosen_through {
            self.chosen_through = chosen_through;
        }
        if let Some(members) = &batch.members {
            self.members = members.clone();
        }
        if let Some(through) = batch.truncate_through {
            self.truncated_through = self.truncated_through.max(through);
            self.log = self.log.split_off(&through.next());
        }
    }

    /// Structural checks that must hold after every load (STYLE habit 4: pair the checks
    /// on both sides of the disk).
    ///
    /// # Errors
    /// A description of the first violated rule.
    pub fn validate(&self) -> Result<(), String> {
        if self.log.contains_key(&Slot::ZERO) {
            return Err("slot 0 is never used".into());
        }
        if self.truncated_through > self.chosen_through {
            return Err(format!(
                "truncated through {} beyond chosen_through {}",
                self.truncated_through, self.chosen_through
            ));
        }
        if let Some((&first, _)) = self.log.first_key_value() {
            if first <= self.truncated_through {
                return Err(format!(
                    "slot {first} kept although truncated through {}",
                    self.truncated_through
                ));
            }
        }
        let missing = (self.truncated_through.0 + 1..=self.chosen_through.0)
            .find(|s| !self.log.contains_key(&Slot(*s)));
        if let Some(s) = missing {
            return Err(format!(
                "chosen_through {} but slot {s} missing",
                self.chosen_through
            ));
        }
        Ok(())
    }
}

/// Writes the shell must make durable, atomically, before executing any later action.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PersistBatch {
    /// New voter flag.
    pub voter: Option<bool>,
    /// New promised ballot.
    pub promised: Option<Ballot>,
    /// New chosen watermark.
    pub chosen_through: Option<Slot>,
    /// Log entries to write (replacing any at the same slot).
    pub entries: Vec<(Slot, LogEntry)>,
    /// Delete every log entry at or below this slot (after writing `entries`): a durable
    /// snapshot covers them.
    pub truncate_through: Option<Slot>,
    /// The member sets, replaced whole.
    pub members: Option<MemberSets>,
}

impl PersistBatch {
    /// True when there is nothing to write.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.voter.is_none()
            && self.promised.is_none()
            && self.chosen_through.is_none()
            && self.entries.is_empty()
            && self.truncate_through.is_none()
            && self.members.is_none()
    }

    /// Folds `later` into this batch, as if both were written in order.
    pub fn merge(&mut self, later: PersistBatch) {
        self.voter = later.voter.or(self.voter);
        self.promised = later.promised.or(self.promised);
        self.chosen_through = later.chosen_through.or(self.chosen_through);
        self.entries.extend(later.entries);
        self.truncate_through = self.truncate_through.max(later.truncate_through);
        self.members = later.members.or(self.members.take());
    }

    /// True when the batch only raises `chosen_through`: no vote (promise, accepted entry,
    /// voter flag), no truncation, no member sets. What it records stays true whether or not
    /// it reaches the disk, so a shell may write it lazily.
    #[must_use]
    pub fn raises_only_chosen(&self) -> bool {
        self.chosen_through.is_some() && self.record_count() == 1
    }

    /// Number of records the batch writes.
    #[must_use]
    pub fn record_count(&self) -> usize {
        usize::from(self.voter.is_some())
            + usize::from(self.promised.is_some())
            + usize::from(self.chosen_through.is_some())
            + usize::from(self.truncate_through.is_some())
            + usize::from(self.members.is_some())
            + self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bare_chosen_raise_may_be_written_lazily() {
        let chosen = PersistBatch {
            chosen_through: Some(Slot(7)),
            ..PersistBatch::default()
        };
        assert!(chosen.raises_only_chosen());
        assert!(!PersistBatch::default().raises_only_chosen());
        let with_vote = PersistBatch {
            promised: Some(Ballot::ZERO),
            ..chosen.clone()
        };
        assert!(!with_vote.raises_only_chosen());
        let with_truncation = PersistBatch {
            truncate_through: Some(Slot(3)),
            ..chosen.clone()
        };
        assert!(!with_truncation.raises_only_chosen());
        let with_voter = PersistBatch {
            voter: Some(true),
            ..chosen
        };
        assert!(!with_voter.raises_only_chosen());
    }
}
