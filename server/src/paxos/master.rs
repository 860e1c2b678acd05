//! The distinguished proposer: elections (phase 1 once for all open slots), phase 2 per
//! slot with batching and a bounded window, the master lease, and ballot boosting
//! (PML §4.2, §5.2).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use chubby_protocol::{Ballot, Instant, NodeId, PaxosMsg, Slot, Value};

use super::{
    Action, Inflight, LeaseTracker, LogEntry, MasterState, Membership, PersistBatch, Phase1,
    PromiseInfo, Rejection, Replica, Role, RoleKind, LEASE_ROUNDS_MAX, MEMBERSHIP_DELAY,
};

/// How phase 1 ended for the ballot it ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase1Kind {
    Election,
    Boost,
}

impl Replica {
    /// Whether this replica may start phase 1 now: it votes, belongs to the newest member
    /// set, and no lease it granted (or may have granted before a restart) to another
    /// replica still runs.
    pub(super) fn can_campaign(&self, now: Instant) -> bool {
        self.voting()
            && self.membership.newest().contains(&self.cfg.me)
            && self.membership.complete_through() >= self.chosen_through
            && !self.promise_blocked(now, self.cfg.me)
    }

    /// Starts an election with a ballot above everything seen.
    pub(super) fn start_election(&mut self, now: Instant, out: &mut Vec<Action>) {
        let p1 = self.begin_phase1(now, out);
        tracing::info!(me = %self.cfg.me, ballot = %p1.ballot, "starting election");
        self.role = Role::Candidate(p1);
        out.push(Action::Role {
            role: RoleKind::Candidate,
            epoch: None,
        });
        self.maybe_complete_phase1(now, out);
    }

    /// Promises a fresh ballot to ourselves (durably, before any Prepare leaves) and asks
    /// every peer for the same.
    fn begin_phase1(&mut self, now: Instant, out: &mut Vec<Action>) -> Phase1 {
        let ballot = Ballot::next_above(self.promised.max(self.max_seen), self.cfg.me);
        assert!(ballot > self.promised);
        self.promised = ballot;
        self.max_seen = ballot;
        Self::persist(
            out,
            PersistBatch {
                promised: Some(ballot),
                ..PersistBatch::default()
            },
        );
        let from_slot = self.chosen_through.next();
        let own = PromiseInfo {
            chosen_through: self.chosen_through,
            entries: self.promise_entries(from_slot),
        };
        let mut promises = BTreeMap::new();
        promises.insert(self.cfg.me, own);
        self.broadcast(out, &PaxosMsg::Prepare { ballot, from_slot });
        Phase1 {
            ballot,
            from_slot,
            promises,
            retry_at: now.plus_ms(self.cfg.retry_interval_ms),
        }
    }

    pub(super) fn on_promise(
        &mut self,
        now: Instant,
        from: NodeId,
        ballot: Ballot,
        info: PromiseInfo,
        out: &mut Vec<Action>,
    ) {
        let phase1 = match &mut self.role {
            Role::Candidate(p1) => Some(p1),
            Role::Master(m) => m.boost.as_mut(),
            Role::Follower => None,
        };
        let Some(p1) = phase1.filter(|p1| p1.ballot == ballot) else {
            tracing::debug!(%from, %ballot, "ignoring stale Promise");
            return;
        };
        let prefix = info.chosen_through;
        p1.promises.insert(from, info);
        if prefix > self.known_chosen_through {
            // Catch up from it: phase 1 needs every member set inside its prefix.
            self.known_chosen_through = prefix;
            self.catchup.source = Some(from);
        }
        self.maybe_complete_phase1(now, out);
    }

    /// Whether `p1`'s promises hold a majority of every member set that may govern a slot
    /// it covers (docs/paxos.md, "Membership changes"): every change inside any promiser's
    /// chosen prefix must be in our map (promises carry the promisers' maps), and above the
    /// highest prefix, the set carried by each slot's highest-ranked reported value (the
    /// only one there that may have been chosen) needs a majority too.
    pub(super) fn phase1_quorum(membership: &Membership, p1: &Phase1) -> bool {
        let promisers: BTreeSet<NodeId> = p1.promises.keys().copied().collect();
        let prefix = p1
            .promises
            .values()
            .map(|info| info.chosen_through)
            .max()
            .unwrap_or(Slot::ZERO);
        if membership.complete_through() < prefix {
            return false; // catch-up fills the map in, then this is asked again
        }
        let mut best: BTreeMap<Slot, (bool, Ballot, Option<&Vec<NodeId>>)> = BTreeMap::new();
        for e in p1.promises.values().flat_map(|info| &info.entries) {
            if e.slot <= prefix {
                continue;
            }
            let rank = (e.chosen, e.ballot);
            if best.get(&e.slot).is_none_or(|(c, b, _)| rank > (*c, *b)) {
                let set = e.value.change.as_ref().map(|c| &c.members);
                best.insert(e.slot, (e.chosen, e.ballot, set));
            }
        }
        membership.is_quorum_from(p1.from_slot, &promisers)
            && best
                .values()
                .filter_map(|(_, _, set)| *set)
                .all(|set| Membership::is_majority(set, &promisers))
    }

    pub(super) fn maybe_complete_phase1(&mut self, now: Instant, out: &mut Vec<Action>) {
        let membership = &self.membership;
        let done = match &mut self.role {
            Role::Candidate(p1) if Self::phase1_quorum(membership, p1) => {
                Some((p1.clone(), Phase1Kind::Election))
            }
            Role::Master(m) => match m.boost.take() {
                Some(p1) if Self::phase1_quorum(membership, &p1) => Some((p1, Phase1Kind::Boost)),
                other => {
                    m.boost = other;
                    None
                }
            },
            _ => None,
        };
        if let Some((p1, kind)) = done {
            self.complete_phase1(now, p1, kind, out);
        }
    }

    /// Phase 1 succeeded: learn what the promises say is chosen, re-propose the highest-ballot
    /// value (or a no-op) in every other open slot, and lead from there.
    fn complete_phase1(
        &mut self,
        now: Instant,
        p1: Phase1,
        kind: Phase1Kind,
        out: &mut Vec<Action>,
    ) {
        assert!(Self::phase1_quorum(&self.membership, &p1));
        assert!(p1.promises.contains_key(&self.cfg.me));
        let (source, prefix) = p1
            .promises
            .iter()
            .map(|(&node, info)| (node, info.chosen_through))
            .max_by_key(|&(_, ct)| ct)
            .expect("phase 1 has at least our own promise");
        if prefix > self.known_chosen_through {
            self.known_chosen_through = prefix;
            self.catchup.source = Some(source);
        }
        // Per open slot: a value known chosen wins; otherwise the highest ballot's value.
        let mut best: BTreeMap<Slot, (bool, Ballot, Value)> = BTreeMap::new();
        for info in p1.promises.values() {
            for e in info.entries.iter().filter(|e| e.slot > prefix) {
                let rank = (e.chosen, e.ballot);
                let better = best.get(&e.slot).is_none_or(|(c, b, _)| rank > (*c, *b));
                if better {
                    best.insert(e.slot, (e.chosen, e.ballot, e.value.clone()));
                }
            }
        }
        if let (Phase1Kind::Boost, Role::Master(m)) = (kind, &self.role) {
            // A boost that finds values this master never proposed (chosen beyond the slots
            // it assigned, or accepted under another replica's ballot above its own) proves
            // another replica led meanwhile: this master's epoch is over, and leading on would
            // serve reads under a lease without those values (found by `sim cell`).
            let me = self.cfg.me;
            let foreign = prefix >= m.next_slot
                || best.values().any(|(_, b, _)| b.node != me && *b > m.ballot);
            if foreign {
                tracing::warn!(me = %me, epoch = %m.epoch, %prefix, "boost found another master's values: stepping down");
                self.step_down(now, out);
                return;
            }
        }
        let last = best
            .keys()
            .next_back()
            .copied()
            .unwrap_or(Slot::ZERO)
            .max(prefix);
        let last = last.max(self.chosen_through);
        let mut reproposals = Vec::new();
        for slot in (prefix.0 + 1..=last.0).map(Slot) {
            match best.remove(&slot) {
                Some((true, _, value)) => {
                    if slot > self.chosen_through {
                        self.chosen_above.insert(slot, value);
                    }
                }
                Some((false, _, value)) => reproposals.push((slot, value)),
                None => reproposals.push((slot, Value::noop())),
            }
        }
        let ballot = p1.ballot;
        match kind {
            Phase1Kind::Election => self.become_master(now, ballot, last.next()),
            Phase1Kind::Boost => {
                if let Role::Master(m) = &mut self.role {
                    tracing::info!(me = %self.cfg.me, %ballot, epoch = %m.epoch, "ballot boosted");
                    m.ballot = ballot;
                    m.inflight.clear();
                    m.next_slot = m.next_slot.max(last.next());
                }
            }
        }
        for (slot, value) in reproposals {
            if slot > self.chosen_through && !self.chosen_above.contains_key(&slot) {
                self.propose(now, slot, value, out);
            }
        }
        self.send_heartbeat(now, out);
        if let Role::Master(m) = &self.role {
            if matches!(kind, Phase1Kind::Election) {
                out.push(Action::Role {
                    role: RoleKind::Master,
                    epoch: Some(m.epoch),
                });
            }
        }
    }

    fn become_master(&mut self, now: Instant, ballot: Ballot, next_slot: Slot) {
        tracing::info!(me = %self.cfg.me, epoch = %ballot, %next_slot, "became master");
        let boost_at = now.plus_ms(self.cfg.boost_interval_ms);
        self.role = Role::Master(Box::new(MasterState {
            ballot,
            epoch: ballot,
            boost: None,
            next_slot,
            inflight: BTreeMap::new(),
            queue: VecDeque::new(),
            lease: LeaseTracker::default(),
            heartbeat_at: now,
            boost_at,
            noop_wanted: false,
            change: None,
        }));
        self.last_master = Some(self.cfg.me);
        self.election_at = None;
    }

    /// Phase 2a for one slot: ask the peers, and accept it ourselves. The Accept goes out
    /// *before* our own acceptance is persisted, so the two syncs (ours and a follower's)
    /// overlap instead of adding up: an Accept is a proposal, not a vote, and depends on
    /// nothing this step writes. Our own acceptance is counted at once, but no reply can be
    /// counted with it before it is durable: the shell completes this step's Persist before
    /// it steps any later input (a crash in between loses an uncounted vote; the simulator
    /// crashes there too).
    fn propose(&mut self, now: Instant, slot: Slot, value: Value, out: &mut Vec<Action>) {
        let Role::Master(m) = &mut self.role else {
            unreachable!("propose needs a master")
        };
        assert!(slot > self.chosen_through, "proposing in a chosen slot");
        assert!(m.boost.is_none(), "proposing during a boost");
        let ballot = m.ballot;
        let entry = LogEntry {
            ballot,
            value: value.clone(),
        };
        self.log.insert(slot, entry.clone());
        let lease_seq = m.lease.begin_round(now, self.cfg.me);
        let msg = PaxosMsg::Accept {
            ballot,
            slot,
            value: value.clone(),
            chosen_through: self.chosen_through,
            lease_seq,
        };
        let mut acks = BTreeSet::new();
        acks.insert(self.cfg.me);
        let resend_at = now.plus_ms(self.cfg.retry_interval_ms);
        m.inflight.insert(
            slot,
            Inflight {
                value,
                acks,
                resend_at,
            },
        );
        m.next_slot = m.next_slot.max(slot.next());
        self.grant_lease(now, ballot);
        self.broadcast(out, &msg);
        Self::persist(
            out,
            PersistBatch {
                entries: vec![(slot, entry)],
                ..PersistBatch::default()
            },
        );
        self.check_chosen(slot);
    }

    /// Counts an acceptance; a majority makes the slot chosen.
    pub(super) fn on_accepted(
        &mut self,
        now: Instant,
        from: NodeId,
        ballot: Ballot,
        slot: Slot,
        lease_seq: u64,
    ) {
        let Role::Master(m) = &mut self.role else {
            return;
        };
        if ballot != m.ballot {
            tracing::debug!(%from, %ballot, "ignoring Accepted for another ballot");
            return;
        }
        if let Some(inflight) = m.inflight.get_mut(&slot) {
            inflight.acks.insert(from);
        }
        let from_receipt = self.lease_from_receipt();
        self.ack_lease(lease_seq, from, now, from_receipt);
        self.check_chosen(slot);
    }

    /// Records `from`'s ack of lease round `seq` (the caller checked the ballot). The
    /// quorum is a majority of every member set governing a slot after the chosen prefix.
    fn ack_lease(&mut self, seq: u64, from: NodeId, now: Instant, from_receipt: bool) {
        let (membership, lease_from) = (&self.membership, self.chosen_through.next());
        let quorum = |acks: &BTreeSet<NodeId>| membership.is_quorum_from(lease_from, acks);
        let believed_ms = self.cfg.master_lease_believed_ms();
        if let Role::Master(m) = &mut self.role {
            m.lease
                .ack(seq, from, now, &quorum, believed_ms, from_receipt);
        }
    }

    /// A slot whose acks hold a majority of its member set is chosen. The set is known only
    /// once every slot `MEMBERSHIP_DELAY` below it is chosen (a value there may change it),
    /// so until then the slot waits ([`Replica::recheck_inflight`] looks again).
    fn check_chosen(&mut self, slot: Slot) {
        if slot.0 > self.chosen_through.0.saturating_add(MEMBERSHIP_DELAY) {
            return;
        }
        let Role::Master(m) = &mut self.role else {
            return;
        };
        let governing = if cfg!(feature = "bug-injection") && self.cfg.bugs.phase2_founders_set {
            Slot(1)
        } else {
            slot
        };
        let chosen = m
            .inflight
            .get(&slot)
            .is_some_and(|i| self.membership.is_quorum_at(governing, &i.acks));
        if chosen {
            let inflight = m.inflight.remove(&slot).expect("checked above");
            if slot > self.chosen_through {
                self.chosen_above.insert(slot, inflight.value);
            }
        }
    }

    /// The chosen prefix moved: slots whose member set was unknown may be decided now, and
    /// a master whose set no longer includes it leaves.
    pub(super) fn recheck_inflight(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Role::Master(m) = &self.role else {
            return;
        };
        let waiting: Vec<Slot> = m.inflight.keys().copied().collect();
        for slot in waiting {
            self.check_chosen(slot);
        }
        let next = self.chosen_through.next();
        let boosting = matches!(&self.role, Role::Master(m) if m.boost.is_some());
        if boosting && !self.membership.newest().contains(&self.cfg.me) {
            // Acceptors that know we are leaving ignore our Prepares: the boost could
            // never finish, and proposals wait for it.
            tracing::info!(me = %self.cfg.me, "leaving the member set while boosting: stepping down");
            self.step_down(now, out);
            return;
        }
        // A replica being added may lead before its set is in effect (its own votes count
        // only where it is a member); one being removed leads until the set without it is.
        let me = self.cfg.me;
        if !self.membership.at(next).contains(&me) && !self.membership.newest().contains(&me) {
            tracing::info!(me = %self.cfg.me, slot = %next,
                "no longer a member from this slot on: stepping down");
            self.step_down(now, out);
        }
    }

    /// A change was learned: lease rounds counted under the old sets no longer prove the
    /// lease (a candidate may now need a majority of a set they did not cover), so the
    /// master forgets them and renews under the new sets at the next heartbeat.
    pub(super) fn on_membership_learned(&mut self) {
        if let Role::Master(m) = &mut self.role {
            m.lease.until = None;
            m.lease.rounds.clear();
        }
    }

    pub(super) fn on_heartbeat_ack(
        &mut self,
        now: Instant,
        from: NodeId,
        ballot: Ballot,
        lease_seq: u64,
    ) {
        if matches!(&self.role, Role::Master(m) if m.ballot == ballot) {
            let from_receipt = self.lease_from_receipt();
            self.ack_lease(lease_seq, from, now, from_receipt);
        }
    }

    pub(super) fn on_nack(
        &mut self,
        now: Instant,
        from: NodeId,
        ballot: Ballot,
        promised: Ballot,
        lease_held: bool,
        out: &mut Vec<Action>,
    ) {
        self.note_ballot(promised);
        if promised.node == self.cfg.me && !lease_held {
            // Our own later ballot (a boost) outranks the one refused: nothing to do.
            return;
        }
        let mine = match &self.role {
            Role::Candidate(p1) => p1.ballot == ballot,
            Role::Master(m) => {
                m.ballot == ballot || m.boost.as_ref().is_some_and(|p| p.ballot == ballot)
            }
            Role::Follower => false,
        };
        if !mine || self.boost_past(now, promised, lease_held, out) {
            return;
        }
        tracing::info!(me = %self.cfg.me, %from, %ballot, %promised, lease_held, "refused; stepping down");
        if promised > ballot || matches!(self.role, Role::Candidate(_)) {
            self.step_down(now, out);
        }
    }

    /// [`super::Input::StepDown`]: the application saw another master's epoch in the log.
    pub(super) fn on_step_down(&mut self, now: Instant, epoch: Ballot, out: &mut Vec<Action>) {
        if matches!(&self.role, Role::Master(m) if m.epoch == epoch) {
            tracing::warn!(me = %self.cfg.me, %epoch, "another master's epoch was applied after ours began: stepping down");
            self.step_down(now, out);
        }
    }

    /// Steps down if `ballot`, owned by another replica, is above ours.
    pub(super) fn step_down_for(&mut self, now: Instant, ballot: Ballot, out: &mut Vec<Action>) {
        if ballot.node == self.cfg.me {
            return;
        }
        let ours = match &self.role {
            Role::Follower => return,
            Role::Candidate(p1) => p1.ballot,
            Role::Master(m) => m.boost.as_ref().map_or(m.ballot, |p| p.ballot),
        };
        if ballot > ours {
            self.step_down(now, out);
        }
    }

    fn step_down(&mut self, now: Instant, out: &mut Vec<Action>) {
        let old = std::mem::replace(&mut self.role, Role::Follower);
        if self.last_master == Some(self.cfg.me) {
            // We no longer know who leads; never name ourselves (a removed master that hears
            // no heartbeats would otherwise point clients at itself for good).
            self.last_master = None;
        }
        if let Role::Master(m) = old {
            tracing::info!(me = %self.cfg.me, epoch = %m.epoch, "stepped down as master");
            for command in m.queue {
                let reason = Rejection::NotMaster { hint: None };
                out.push(Action::Rejected { command, reason });
            }
        }
        out.push(Action::Role {
            role: RoleKind::Follower,
            epoch: None,
        });
        let wait = self.election_wait();
        self.election_at = Some(now.plus_ms(wait));
    }

    pub(super) fn tick_candidate(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Role::Candidate(p1) = &self.role else {
            return;
        };
        if now >= p1.retry_at {
            let peers = self.peers();
            let Role::Candidate(p1) = &mut self.role else {
                return;
            };
            Self::resend_prepare(&self.cfg, &peers, p1, now, out);
        }
    }

    fn resend_prepare(
        cfg: &super::Config,
        peers: &[NodeId],
        p1: &mut Phase1,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        p1.retry_at = now.plus_ms(cfg.retry_interval_ms);
        let msg = PaxosMsg::Prepare {
            ballot: p1.ballot,
            from_slot: p1.from_slot,
        };
        for to in peers
            .iter()
            .copied()
            .filter(|n| !p1.promises.contains_key(n))
        {
            out.push(Action::Send {
                to,
                msg: msg.clone(),
            });
        }
    }

    pub(super) fn tick_master(&mut self, now: Instant, out: &mut Vec<Action>) {
        // A master leaving the member set does not boost: acceptors that know it left
        // ignore its Prepares, and it steps down once the new set is in effect.
        let staying = self.membership.newest().contains(&self.cfg.me);
        let resend = matches!(&self.role, Role::Master(m)
            if m.boost.as_ref().is_some_and(|p1| now >= p1.retry_at));
        let peers = if resend { self.peers() } else { Vec::new() };
        let Role::Master(m) = &mut self.role else {
            return;
        };
        if let Some(p1) = &mut m.boost {
            if resend {
                Self::resend_prepare(&self.cfg, &peers, p1, now, out);
            }
        } else if now >= m.boost_at {
            if staying {
                tracing::debug!(me = %self.cfg.me, "boosting ballot");
                self.start_boost(now, out);
            } else {
                // Not boosting still moves the timer on, or every tick finds it due.
                m.boost_at = now.plus_ms(self.cfg.boost_interval_ms);
            }
        }
        self.resend_accepts(now, out);
        let heartbeat_due = matches!(&self.role, Role::Master(m) if now >= m.heartbeat_at);
        if heartbeat_due {
            self.send_heartbeat(now, out);
        }
    }

    /// Runs phase 1 for a higher ballot while staying master (PML §5.2); proposals wait
    /// until it completes. Replaces a boost under way.
    fn start_boost(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Role::Master(m) = &mut self.role else {
            return;
        };
        m.boost = None;
        m.boost_at = now.plus_ms(self.cfg.boost_interval_ms);
        let p1 = self.begin_phase1(now, out);
        if let Role::Master(m) = &mut self.role {
            m.boost = Some(p1);
        }
        self.maybe_complete_phase1(now, out);
    }

    /// A master whose lease runs, refused by an acceptor that promised some other replica's
    /// higher ballot without granting it a lease, boosts past that ballot instead of
    /// stepping down. This is the restarted follower that heard no heartbeat in time and
    /// called an election: while our lease runs a majority refuses every other candidate,
    /// so no other master can exist, and stepping down would only cost the cell an election
    /// (and a new epoch, failing every client's handles). Returns whether it handled the
    /// refusal.
    fn boost_past(
        &mut self,
        now: Instant,
        promised: Ballot,
        lease_held: bool,
        out: &mut Vec<Action>,
    ) -> bool {
        if lease_held || promised.node == self.cfg.me {
            return false;
        }
        if !self.membership.newest().contains(&self.cfg.me) {
            // Leaving: acceptors ignore our Prepares, so a boost could never finish (and
            // would pause proposals); step down instead.
            return false;
        }
        let Role::Master(m) = &self.role else {
            return false;
        };
        if m.lease.until.is_none_or(|until| now >= until) {
            return false;
        }
        if m.boost.as_ref().is_some_and(|p1| p1.ballot > promised) {
            return true; // the boost under way already outranks it
        }
        tracing::info!(me = %self.cfg.me, %promised, "refused for a ballot of a candidate that cannot win while our lease runs: boosting past it");
        self.start_boost(now, out);
        true
    }

    /// Resends Accepts nobody answered in time, to the peers that have not acked.
    fn resend_accepts(&mut self, now: Instant, out: &mut Vec<Action>) {
        let chosen_through = self.chosen_through;
        let due_any = matches!(&self.role, Role::Master(m)
            if m.boost.is_none() && m.inflight.values().any(|i| now >= i.resend_at));
        if !due_any {
            return;
        }
        let peers = self.peers();
        let Role::Master(m) = &mut self.role else {
            return;
        };
        let due: Vec<Slot> = m
            .inflight
            .iter()
            .filter(|(_, i)| now >= i.resend_at)
            .map(|(s, _)| *s)
            .collect();
        if due.is_empty() {
            return;
        }
        let lease_seq = m.lease.begin_round(now, self.cfg.me);
        for slot in due {
            let inflight = m.inflight.get_mut(&slot).expect("listed above");
            inflight.resend_at = now.plus_ms(self.cfg.retry_interval_ms);
            let msg = PaxosMsg::Accept {
                ballot: m.ballot,
                slot,
                value: inflight.value.clone(),
                chosen_through,
                lease_seq,
            };
            for to in peers.iter().copied().filter(|n| !inflight.acks.contains(n)) {
                out.push(Action::Send {
                    to,
                    msg: msg.clone(),
                });
            }
        }
    }

    /// Renews the lease and announces the chosen watermark.
    fn send_heartbeat(&mut self, now: Instant, out: &mut Vec<Action>) {
        let chosen_through = self.chosen_through;
        let Role::Master(m) = &mut self.role else {
            return;
        };
        // Only the ballot whose phase 1 completed may ask for a lease: a boost ballot was not
        // promised yet, and a lease granted to it would not come with a current log.
        let ballot = m.ballot;
        m.heartbeat_at = now.plus_ms(self.cfg.heartbeat_interval_ms);
        let lease_seq = m.lease.begin_round(now, self.cfg.me);
        self.grant_lease(now, ballot);
        self.broadcast(
            out,
            &PaxosMsg::Heartbeat {
                ballot,
                chosen_through,
                lease_seq,
            },
        );
        // A single-member cell is its own majority.
        self.ack_lease(lease_seq, self.cfg.me, now, false);
    }

    pub(super) fn on_submit(&mut self, _now: Instant, command: Vec<u8>, out: &mut Vec<Action>) {
        let hint = self.last_master;
        let queue_max = self.cfg.queue_commands_max;
        match &mut self.role {
            Role::Master(m) if m.queue.len() < queue_max => m.queue.push_back(command),
            Role::Master(_) => out.push(Action::Rejected {
                command,
                reason: Rejection::Busy,
            }),
            Role::Follower | Role::Candidate(_) => {
                let reason = Rejection::NotMaster { hint };
                out.push(Action::Rejected { command, reason });
            }
        }
    }

    /// Fills the window from the queue, one batch per slot; a pending membership change
    /// goes first, and while a chosen change is not yet in effect, no-ops fill the slots
    /// up to it. The window bounds both the slots in flight and the distance from the chosen
    /// prefix (so the member set of every slot proposed is known: window <= delay).
    pub(super) fn pump(&mut self, now: Instant, out: &mut Vec<Action>) {
        let window_end = self.chosen_through.0 + self.cfg.window as u64;
        let newest_from = self.membership.newest_from();
        loop {
            let Role::Master(m) = &mut self.role else {
                return;
            };
            if m.boost.is_some()
                || m.inflight.len() >= self.cfg.window
                || m.next_slot.0 > window_end
            {
                return;
            }
            if let Some(change) = m.change.take() {
                let slot = m.next_slot;
                let value = Value {
                    commands: Vec::new(),
                    change: Some(change),
                };
                self.propose(now, slot, value, out);
                continue;
            }
            let fill = m.next_slot < newest_from;
            if m.queue.is_empty() && !m.noop_wanted && !fill {
                return;
            }
            m.noop_wanted = false;
            let mut commands = Vec::new();
            let mut bytes = 0usize;
            while let Some(next) = m.queue.front() {
                let fits = commands.is_empty()
                    || (commands.len() < self.cfg.batch_commands_max
                        && bytes + next.len() <= self.cfg.batch_bytes_max);
                if !fits {
                    break;
                }
                bytes += next.len();
                commands.push(m.queue.pop_front().expect("front exists"));
            }
            let slot = m.next_slot;
            self.propose(now, slot, Value::commands(commands), out);
        }
    }

    fn lease_from_receipt(&self) -> bool {
        // Planted only in builds that inject bugs (the simulator's) and in this crate's
        // own unit tests.
        (cfg!(feature = "bug-injection") || cfg!(test)) && self.cfg.bugs.lease_from_receipt
    }

    /// Called when the chosen watermark moved on a master: tell the followers now if no
    /// Accept is about to carry the news.
    pub(super) fn announce_commit(&mut self, now: Instant, out: &mut Vec<Action>) {
        let idle = matches!(&self.role, Role::Master(m) if m.inflight.is_empty() && m.queue.is_empty() && m.boost.is_none());
        if idle {
            self.send_heartbeat(now, out);
        }
    }

    /// A rebuilding peer needs an instance that starts after its restart.
    pub(super) fn want_noop(&mut self) {
        if let Role::Master(m) = &mut self.role {
            m.noop_wanted = true;
        }
    }
}

impl LeaseTracker {
    /// Starts a lease round sent at `now`, acked by ourselves.
    fn begin_round(&mut self, now: Instant, me: NodeId) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut acks = BTreeSet::new();
        acks.insert(me);
        self.rounds.insert(seq, (now, acks));
        while self.rounds.len() > LEASE_ROUNDS_MAX {
            self.rounds.pop_first();
        }
        seq
    }

    /// Records `from`'s ack of round `seq`; a quorum extends the lease from the round's
    /// send time (PML §5.2), never from the ack's arrival. The quorum is a majority of every
    /// member set governing a slot after the chosen prefix (docs/paxos.md, "Membership
    /// changes": a candidate's phase 1 needs the same, so a granting acceptor is in its way).
    fn ack(
        &mut self,
        seq: u64,
        from: NodeId,
        now: Instant,
        quorum: &dyn Fn(&BTreeSet<NodeId>) -> bool,
        believed_ms: u64,
        from_receipt: bool,
    ) {
        let Some((sent_at, acks)) = self.rounds.get_mut(&seq) else {
            return;
        };
        acks.insert(from);
        if !quorum(acks) {
            return;
        }
        let start = if from_receipt { now } else { *sent_at };
        let until = start.plus_ms(believed_ms);
        self.until = Some(self.until.map_or(until, |u| u.max(until)));
        self.rounds.retain(|&s, _| s > seq);
    }
}
