//! The order in which a shell executes one round of Paxos actions: pure, so the replica
//! process and the simulator execute the same plan (and the simulator's crashes land
//! between its stages).
//!
//! ```text
//!  actions of every input stepped this round
//!     │
//!     ├─ early: Sends that come before any Persist holding a vote or an entry
//!     ├─ persist: every Persist merged into ONE batch (group commit), made durable
//!     │           before anything below; a batch that only raises the chosen watermark
//!     │           may be held for the next round (at most `lag_max_ms`)
//!     └─ after: every other action in its original order (Sends, Deliver, Rejected,
//!               Role, FetchSnapshot)
//! ```
//!
//! Why each rule is safe:
//! - Moving a Persist earlier is always allowed (it only makes state durable sooner).
//! - A Send before the first vote-holding Persist reports nothing that Persist holds: a
//!   master's Accept precedes its own acceptance, so the two replicas' syncs overlap.
//! - A watermark-only batch says "these slots are chosen", which stays true whether or not
//!   it is on disk, so it need not delay the deliveries and replies behind it. While one is
//!   held, no snapshot may be taken ([`Planner::holds_watermark`]): a snapshot ahead of the
//!   durable watermark would make the next start adopt its slot as chosen without the
//!   member map's completeness for it.

use chubby_protocol::Instant;

use crate::paxos::{Action, PersistBatch};

/// One round's actions in execution order (see the module docs).
#[derive(Debug, Default)]
pub struct Plan {
    /// Sends to make before the sync.
    pub early: Vec<Action>,
    /// The merged batch to make durable now.
    pub persist: Option<PersistBatch>,
    /// The rest, in order, after the sync.
    pub after: Vec<Action>,
}

/// Plans rounds, holding a watermark-only batch across them.
#[derive(Debug)]
pub struct Planner {
    lag_max_ms: u64,
    held: Option<(PersistBatch, Instant)>,
}

impl Planner {
    /// A planner that holds a watermark-only batch at most `lag_max_ms` (Paxos clock).
    #[must_use]
    pub fn new(lag_max_ms: u64) -> Planner {
        Planner {
            lag_max_ms,
            held: None,
        }
    }

    /// Orders `actions`, stepped at `now`.
    #[must_use]
    pub fn plan(&mut self, now: Instant, actions: Vec<Action>) -> Plan {
        let mut plan = Plan::default();
        let mut batch: Option<PersistBatch> = None;
        let mut barrier = false;
        for action in actions {
            match action {
                Action::Send { .. } if !barrier => plan.early.push(action),
                Action::Persist(b) => {
                    barrier |= !b.raises_only_chosen();
                    match &mut batch {
                        Some(merged) => merged.merge(b),
                        None => batch = Some(b),
                    }
                }
                Action::Send { .. }
                | Action::Deliver { .. }
                | Action::Rejected { .. }
                | Action::Role { .. }
                | Action::FetchSnapshot { .. } => plan.after.push(action),
            }
        }
        let batch = match (self.held.take(), batch) {
            (Some((mut held, since)), b) => {
                if let Some(b) = b {
                    held.merge(b);
                }
                Some((held, since))
            }
            (None, b) => b.map(|b| (b, now)),
        };
        if let Some((batch, since)) = batch {
            if batch.raises_only_chosen() && now.ms_since(since) < self.lag_max_ms {
                self.held = Some((batch, since));
            } else {
                plan.persist = Some(batch);
            }
        }
        plan
    }

    /// A watermark-only batch is held (not yet durable): no snapshot now.
    #[must_use]
    pub fn holds_watermark(&self) -> bool {
        self.held.is_some()
    }

    /// The held batch, to write at a clean stop.
    pub fn take_held(&mut self) -> Option<PersistBatch> {
        self.held.take().map(|(b, _)| b)
    }

    /// Forgets the held batch (the process crashed: it was never durable).
    pub fn crash(&mut self) {
        self.held = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chubby_protocol::{NodeId, PaxosMsg, Slot};

    fn send(to: u32) -> Action {
        Action::Send {
            to: NodeId(to),
            msg: PaxosMsg::Nack {
                ballot: chubby_protocol::Ballot::ZERO,
                promised: chubby_protocol::Ballot::ZERO,
                lease_held: false,
            },
        }
    }

    fn watermark(slot: u64) -> Action {
        Action::Persist(PersistBatch {
            chosen_through: Some(Slot(slot)),
            ..PersistBatch::default()
        })
    }

    fn vote() -> Action {
        Action::Persist(PersistBatch {
            voter: Some(true),
            ..PersistBatch::default()
        })
    }

    #[test]
    fn sends_before_the_first_vote_go_early_and_persists_merge() {
        let mut p = Planner::new(100);
        let plan = p.plan(
            Instant(0),
            vec![send(1), vote(), send(2), watermark(3), send(3)],
        );
        assert_eq!(plan.early.len(), 1);
        assert_eq!(plan.after.len(), 2);
        let batch = plan.persist.expect("a vote is written now");
        assert_eq!(batch.voter, Some(true));
        assert_eq!(batch.chosen_through, Some(Slot(3)));
        assert!(!p.holds_watermark());
    }

    #[test]
    fn a_watermark_alone_is_held_until_the_next_batch_or_its_lag() {
        let mut p = Planner::new(100);
        let plan = p.plan(Instant(0), vec![watermark(5), send(1)]);
        assert!(plan.persist.is_none());
        assert_eq!(plan.early.len(), 1, "a watermark is no barrier");
        assert!(p.holds_watermark());
        // Still young, nothing new: held on.
        assert!(p.plan(Instant(50), Vec::new()).persist.is_none());
        // The next vote carries it.
        let plan = p.plan(Instant(60), vec![vote()]);
        let batch = plan.persist.expect("merged with the vote");
        assert_eq!(batch.chosen_through, Some(Slot(5)));
        assert!(!p.holds_watermark());
        // Or its lag runs out.
        let _ = p.plan(Instant(200), vec![watermark(6)]);
        assert!(p.holds_watermark());
        let plan = p.plan(Instant(300), Vec::new());
        assert_eq!(plan.persist.and_then(|b| b.chosen_through), Some(Slot(6)));
    }
}
