//! The learner: which slots are chosen, contiguous delivery, and catch-up (PML §4.2).
//!
//! A slot becomes known chosen in one of three ways: a majority of Accepteds (on the
//! master), a commit watermark from the master for a slot whose entry we accepted in the
//! master's ballot, or a chosen value sent by a peer (catch-up reply, or a promise). Known
//! values above the contiguous prefix wait in `chosen_above`; the prefix advances, is
//! persisted, and is delivered in order.
//!
//! A peer whose log no longer reaches back to the slots asked for says so in its reply
//! (`truncated_through`); the requester then fetches that peer's snapshot ([`super::snapshot`]).

use chubby_protocol::{Ballot, Instant, MemberSets, NodeId, PaxosMsg, Slot, Value};

use super::{Action, LogEntry, PersistBatch, Replica};

/// Catch-up chunks requested ahead of the chosen prefix, so a far-behind replica over a slow
/// link is not limited to one chunk per round trip.
pub(super) const CATCHUP_DEPTH: u64 = 4;

/// The fields of a [`PaxosMsg::CatchUpReply`].
pub(super) struct CatchUpReplyMsg {
    pub entries: Vec<(Slot, Value)>,
    pub chosen_through: Slot,
    pub truncated_through: Slot,
    pub members: MemberSets,
}

impl Replica {
    /// The master `from` says every slot through `chosen_through` is chosen; each of our
    /// entries accepted in its `ballot` holds the chosen value.
    pub(super) fn note_commit(&mut self, from: NodeId, ballot: Ballot, chosen_through: Slot) {
        if chosen_through > self.known_chosen_through {
            self.known_chosen_through = chosen_through;
            self.catchup.source = Some(from);
        }
        if chosen_through <= self.chosen_through {
            return;
        }
        let range = self.chosen_through.next()..=chosen_through;
        let matching: Vec<(Slot, Value)> = self
            .log
            .range(range)
            .filter(|(slot, e)| e.ballot == ballot && !self.chosen_above.contains_key(slot))
            .map(|(slot, e)| (*slot, e.value.clone()))
            .collect();
        self.chosen_above.extend(matching);
    }

    /// Moves the contiguous chosen prefix forward, persists it, and delivers it.
    pub(super) fn advance_chosen(&mut self, now: Instant, out: &mut Vec<Action>) {
        let before = self.chosen_through;
        let mut batch = PersistBatch::default();
        let mut learned = false;
        while let Some(value) = self.chosen_above.remove(&self.chosen_through.next()) {
            let slot = self.chosen_through.next();
            let change = self.membership.observe(slot, value.change.as_ref());
            if change {
                tracing::info!(me = %self.cfg.me, %slot, members = ?self.membership.newest(),
                    in_effect_from = %self.membership.newest_from(), "membership change chosen");
            }
            learned |= change;
            let holds_it = self.log.get(&slot).is_some_and(|e| e.value == value);
            if !holds_it {
                let entry = LogEntry {
                    ballot: Ballot::ZERO,
                    value,
                };
                self.log.insert(slot, entry.clone());
                batch.entries.push((slot, entry));
            }
            self.chosen_through = slot;
        }
        // Values below the prefix that arrived late are already in the log.
        while self
            .chosen_above
            .first_key_value()
            .is_some_and(|(s, _)| *s <= self.chosen_through)
        {
            self.chosen_above.pop_first();
        }
        if self.chosen_through > before {
            // A slot in flight may be learned chosen another way (catch-up, a promise).
            if let super::Role::Master(m) = &mut self.role {
                let chosen_through = self.chosen_through;
                m.inflight.retain(|slot, _| *slot > chosen_through);
            }
            batch.chosen_through = Some(self.chosen_through);
            if learned {
                batch.members = Some(self.membership.to_wire());
                self.on_membership_learned();
            }
            self.known_chosen_through = self.known_chosen_through.max(self.chosen_through);
            Self::persist(out, batch);
            self.announce_commit(now, out);
            self.check_rebuild_done(now, out);
            self.recheck_inflight(now, out);
        }
        self.deliver(out);
    }

    fn deliver(&mut self, out: &mut Vec<Action>) {
        while self.delivered < self.chosen_through {
            let slot = self.delivered.next();
            let entry = self
                .log
                .get(&slot)
                .expect("every slot up to chosen_through is logged");
            out.push(Action::Deliver {
                slot,
                value: entry.value.clone(),
            });
            self.delivered = slot;
        }
    }

    /// Asks a peer for the chosen values we lack: up to [`CATCHUP_DEPTH`] chunks in flight,
    /// starting over from another peer when none arrives in time.
    pub(super) fn tick_catchup(&mut self, now: Instant, out: &mut Vec<Action>) {
        let timed_out = self.catchup.retry_at.is_some_and(|at| now >= at);
        if self.catchup.fetching {
            if !timed_out {
                return;
            }
            tracing::warn!(me = %self.cfg.me, source = ?self.catchup.source,
                "snapshot fetch timed out: asking again");
            self.catchup.fetching = false;
        }
        if self.known_chosen_through <= self.chosen_through {
            self.catchup.requested_through = self.chosen_through;
            // A joining replica that knows no member set yet asks too: the reply carries
            // the sets and the chosen prefix, and starts its catch-up.
            if self.membership.complete_through() < self.chosen_through
                || self.membership.newest().is_empty()
            {
                self.refresh_members(now, timed_out, out);
            } else {
                self.catchup.retry_at = None;
            }
            return;
        }
        self.request_catchup(now, timed_out, out);
    }

    fn request_catchup(&mut self, now: Instant, start_over: bool, out: &mut Vec<Action>) {
        // No source yet, or the last one went quiet: the next peer in turn, from scratch.
        let source = match self.catchup.source.filter(|_| !start_over) {
            Some(source) => source,
            None => {
                let Some(source) = self.next_peer() else {
                    return;
                };
                self.catchup.source = Some(source);
                self.catchup.requested_through = self.chosen_through;
                source
            }
        };
        let chunk = u64::from(self.cfg.catchup_entries_max);
        let limit = self
            .known_chosen_through
            .0
            .min(self.chosen_through.0 + CATCHUP_DEPTH * chunk);
        let mut next = self.catchup.requested_through.max(self.chosen_through).0;
        if next >= limit && !start_over && self.catchup.retry_at.is_some() {
            return;
        }
        while next < limit {
            let msg = PaxosMsg::CatchUpRequest {
                from_slot: Slot(next + 1),
                entries_max: self.cfg.catchup_entries_max,
            };
            Self::send(out, source, msg);
            next += chunk;
        }
        self.catchup.requested_through = Slot(next);
        self.catchup.retry_at = Some(now.plus_ms(self.cfg.retry_interval_ms));
    }

    /// Our member sets miss changes inside the chosen prefix (a snapshot install skipped
    /// their values), or we know none (joining): ask a peer for its sets, which every
    /// catch-up reply carries.
    fn refresh_members(&mut self, now: Instant, due: bool, out: &mut Vec<Action>) {
        if self.catchup.retry_at.is_some() && !due {
            return;
        }
        let Some(to) = self.next_peer() else {
            return;
        };
        let msg = PaxosMsg::CatchUpRequest {
            from_slot: self.chosen_through.next(),
            entries_max: 1,
        };
        Self::send(out, to, msg);
        self.catchup.retry_at = Some(now.plus_ms(self.cfg.retry_interval_ms));
    }

    /// A warm replica outside the newest set never campaigns, and a new master does not
    /// know it (only the replicas it talked to count it as warm). Having heard no master
    /// for an election timeout, it asks the next peer in turn for the log: the reply starts
    /// its catch-up, and the peer now counts it as warm (a master then sends it
    /// heartbeats), so it stays caught up until it is added.
    pub(super) fn ask_for_news(&mut self, out: &mut Vec<Action>) {
        let Some(to) = self.next_peer() else {
            return;
        };
        let msg = PaxosMsg::CatchUpRequest {
            from_slot: self.chosen_through.next(),
            entries_max: self.cfg.catchup_entries_max,
        };
        Self::send(out, to, msg);
    }

    /// The next peer in turn to ask for catch-up, if there is any peer.
    fn next_peer(&mut self) -> Option<NodeId> {
        let peers = self.peers();
        if peers.is_empty() {
            return None;
        }
        self.catchup.rotate = self.catchup.rotate.wrapping_add(1);
        Some(peers[self.catchup.rotate % peers.len()])
    }

    /// Sends the chosen values a peer asked for, bounded in count and bytes.
    pub(super) fn serve_catchup(
        &mut self,
        from: NodeId,
        from_slot: Slot,
        entries_max: u32,
        out: &mut Vec<Action>,
    ) {
        let count_max = entries_max.min(self.cfg.catchup_entries_max) as usize;
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        let first = from_slot.max(Slot(1));
        // Slots at or below `truncated` are gone from the log: the reply's
        // `truncated_through` says so, and the requester fetches a snapshot.
        let available = if self.truncated < first && first <= self.chosen_through {
            self.log.range(first..=self.chosen_through)
        } else {
            self.log.range(first..first)
        };
        for (&slot, entry) in available {
            let size = entry.value.payload_bytes();
            if entries.len() >= count_max
                || (!entries.is_empty() && bytes + size > self.cfg.catchup_bytes_max)
            {
                break;
            }
            bytes += size;
            entries.push((slot, entry.value.clone()));
        }
        let reply = PaxosMsg::CatchUpReply {
            entries,
            chosen_through: self.chosen_through,
            truncated_through: self.truncated,
            members: self.membership.to_wire(),
        };
        Self::send(out, from, reply);
    }

    pub(super) fn on_catchup_reply(
        &mut self,
        now: Instant,
        from: NodeId,
        reply: CatchUpReplyMsg,
        out: &mut Vec<Action>,
    ) {
        let CatchUpReplyMsg {
            entries,
            chosen_through,
            truncated_through,
            members,
        } = reply;
        self.merge_members(from, &members, out);
        if entries.is_empty() && self.chosen_through < truncated_through {
            self.known_chosen_through = self.known_chosen_through.max(chosen_through);
            self.start_snapshot_fetch(now, from, out);
            return;
        }
        let progressed = entries
            .first()
            .is_some_and(|(s, _)| *s == self.chosen_through.next());
        for (slot, value) in entries {
            if slot > self.chosen_through && slot <= chosen_through {
                self.chosen_above.insert(slot, value);
            }
        }
        if chosen_through > self.known_chosen_through {
            self.known_chosen_through = chosen_through;
        }
        self.advance_chosen(now, out);
        if progressed {
            // The source is alive: extend its deadline and keep the pipeline full.
            self.catchup.source = Some(from);
            self.catchup.retry_at = Some(now.plus_ms(self.cfg.retry_interval_ms));
            self.tick_catchup(now, out);
        }
    }
}
