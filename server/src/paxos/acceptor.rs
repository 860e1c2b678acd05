//! The acceptor's rules (Paxos phase 1b and 2b) and the lease it grants (PML §5.2).
//!
//! Every reply is emitted after the [`Action::Persist`] of the state it reports, so a crash
//! can never make an acceptor forget a promise or an acceptance it told anyone about.

use chubby_protocol::{Ballot, Instant, NodeId, PaxosMsg, PromiseEntry, Slot, Value};

use super::{Action, LogEntry, PersistBatch, Replica};

/// The fields of a [`PaxosMsg::Accept`].
pub(super) struct AcceptMsg {
    pub ballot: Ballot,
    pub slot: Slot,
    pub value: Value,
    pub chosen_through: Slot,
    pub lease_seq: u64,
}

impl Replica {
    /// Phase 1b.
    pub(super) fn on_prepare(
        &mut self,
        now: Instant,
        from: NodeId,
        ballot: Ballot,
        from_slot: Slot,
        out: &mut Vec<Action>,
    ) {
        if ballot.node != from {
            tracing::warn!(%from, %ballot, "ignoring Prepare for another replica's ballot");
            return;
        }
        self.note_ballot(ballot);
        if !self.voting() {
            tracing::debug!(%from, %ballot, "rebuilding: no promise");
            return;
        }
        if !self.membership.newest().contains(&from) {
            // A removed replica (or one not yet added, as far as we know) may not lead.
            tracing::debug!(%from, %ballot, "no promise to a replica outside the newest member set");
            return;
        }
        if ballot < self.promised {
            let nack = PaxosMsg::Nack {
                ballot,
                promised: self.promised,
                lease_held: false,
            };
            Self::send(out, from, nack);
            return;
        }
        if self.promise_blocked(now, ballot.node) {
            let nack = PaxosMsg::Nack {
                ballot,
                promised: self.promised,
                lease_held: true,
            };
            Self::send(out, from, nack);
            return;
        }
        assert!(ballot >= self.promised);
        let mut batch = PersistBatch::default();
        if ballot > self.promised {
            self.promised = ballot;
            batch.promised = Some(ballot);
        }
        let promise = PaxosMsg::Promise {
            ballot,
            chosen_through: self.chosen_through,
            entries: self.promise_entries(from_slot),
            members: self.membership.to_wire(),
        };
        self.persist_then_send(out, batch, from, promise);
        // Another replica is trying to lead with our blessing: stop leading, and give it
        // time before campaigning ourselves.
        self.step_down_for(now, ballot, out);
        let wait = self.election_wait();
        self.election_at = Some(now.plus_ms(wait));
    }

    /// Phase 2b. Accepting also grants the master lease and carries the commit watermark.
    pub(super) fn on_accept(
        &mut self,
        now: Instant,
        from: NodeId,
        a: AcceptMsg,
        out: &mut Vec<Action>,
    ) {
        if a.ballot.node != from || a.slot == Slot::ZERO {
            tracing::warn!(%from, ballot = %a.ballot, "ignoring malformed Accept");
            return;
        }
        self.note_ballot(a.ballot);
        if !self.voting() {
            self.heard_from_master(now, a.ballot);
            self.note_commit(from, a.ballot, a.chosen_through);
            return;
        }
        if a.ballot < self.promised || self.lease_held_by_other(now, a.ballot.node) {
            let lease_held = a.ballot >= self.promised;
            let nack = PaxosMsg::Nack {
                ballot: a.ballot,
                promised: self.promised,
                lease_held,
            };
            Self::send(out, from, nack);
            return;
        }
        let mut batch = PersistBatch::default();
        if a.ballot > self.promised {
            self.promised = a.ballot;
            batch.promised = Some(a.ballot);
        }
        // A slot already known chosen keeps its chosen value; the vote is still truthful,
        // because any ballot proposing there proposes that value (Paxos P2c).
        let known_chosen = a.slot <= self.chosen_through || self.chosen_above.contains_key(&a.slot);
        if known_chosen {
            // An strace of a replica reads this to tell a vote that needed no write.
            tracing::trace!(
                slot = a.slot.0,
                "accept for a slot known chosen: nothing to write"
            );
        } else {
            let entry = LogEntry {
                ballot: a.ballot,
                value: a.value,
            };
            self.log.insert(a.slot, entry.clone());
            batch.entries.push((a.slot, entry));
        }
        let reply = PaxosMsg::Accepted {
            ballot: a.ballot,
            slot: a.slot,
            lease_seq: a.lease_seq,
        };
        self.persist_then_send(out, batch, from, reply);
        self.grant_lease(now, a.ballot);
        self.heard_from_master(now, a.ballot);
        self.step_down_for(now, a.ballot, out);
        self.note_commit(from, a.ballot, a.chosen_through);
    }

    /// A master's heartbeat: grant the lease (no disk write: a restarted replica waits one
    /// lease before promising anything) and learn the commit watermark.
    pub(super) fn on_heartbeat(
        &mut self,
        now: Instant,
        from: NodeId,
        ballot: Ballot,
        chosen_through: Slot,
        lease_seq: u64,
        out: &mut Vec<Action>,
    ) {
        if ballot.node != from {
            tracing::warn!(%from, %ballot, "ignoring Heartbeat for another replica's ballot");
            return;
        }
        self.note_ballot(ballot);
        if !self.voting() {
            self.heard_from_master(now, ballot);
            self.note_commit(from, ballot, chosen_through);
            return;
        }
        if ballot < self.promised || self.lease_held_by_other(now, ballot.node) {
            let lease_held = ballot >= self.promised;
            let nack = PaxosMsg::Nack {
                ballot,
                promised: self.promised,
                lease_held,
            };
            Self::send(out, from, nack);
            return;
        }
        Self::send(out, from, PaxosMsg::HeartbeatAck { ballot, lease_seq });
        self.grant_lease(now, ballot);
        self.heard_from_master(now, ballot);
        self.step_down_for(now, ballot, out);
        self.note_commit(from, ballot, chosen_through);
    }

    /// True when a lease this acceptor granted to a replica other than `node` still runs: it
    /// then processes no Paxos message of `node`'s (PML §5.2), so `node` can neither gain
    /// a lease nor get a value accepted here until the lease ends.
    pub(super) fn lease_held_by_other(&self, now: Instant, node: NodeId) -> bool {
        if cfg!(feature = "bug-injection") && self.cfg.bugs.acceptor_ignores_lease {
            return false;
        }
        self.lease_granted
            .is_some_and(|(holder, until)| holder.node != node && now < until)
    }

    /// True when a promise to `node` must be refused: another replica's lease runs here, or
    /// this replica restarted less than a lease ago and may have granted one it forgot.
    pub(super) fn promise_blocked(&self, now: Instant, node: NodeId) -> bool {
        if cfg!(feature = "bug-injection") && self.cfg.bugs.acceptor_ignores_lease {
            return false;
        }
        self.lease_held_by_other(now, node) || now < self.promise_not_before
    }

    /// Records the lease granted to `ballot`'s replica, on our own clock from now.
    pub(super) fn grant_lease(&mut self, now: Instant, ballot: Ballot) {
        self.lease_granted = Some((ballot, now.plus_ms(self.cfg.master_lease_ms)));
    }

    fn heard_from_master(&mut self, now: Instant, ballot: Ballot) {
        if ballot.node != self.cfg.me {
            self.last_master = Some(ballot.node);
            let wait = self.election_wait();
            self.election_at = Some(now.plus_ms(wait));
        }
    }

    /// What a promise reports: every entry above `max(from_slot - 1, chosen_through)`, with
    /// values learned as chosen marked so they outrank any ballot.
    pub(super) fn promise_entries(&self, from_slot: Slot) -> Vec<PromiseEntry> {
        let start = from_slot.max(self.chosen_through.next());
        let mut entries: Vec<PromiseEntry> = self
            .log
            .range(start..)
            .map(|(&slot, entry)| match self.chosen_above.get(&slot) {
                Some(value) => PromiseEntry {
                    slot,
                    ballot: entry.ballot,
                    chosen: true,
                    value: value.clone(),
                },
                None => PromiseEntry {
                    slot,
                    ballot: entry.ballot,
                    chosen: false,
                    value: entry.value.clone(),
                },
            })
            .collect();
        for (&slot, value) in self.chosen_above.range(start..) {
            if !self.log.contains_key(&slot) {
                entries.push(PromiseEntry {
                    slot,
                    ballot: Ballot::ZERO,
                    chosen: true,
                    value: value.clone(),
                });
            }
        }
        entries.sort_by_key(|e| e.slot);
        entries
    }
}
