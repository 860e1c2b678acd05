//! The disk-loss rule (PML §5.1), made safe under message delay.
//!
//! A replica that starts with an empty or corrupt store while the configuration lists it as
//! a member may have promised ballots and accepted values it no longer remembers. Voting
//! again too early could break a promise someone relies on. PML's rule is: catch up, but send
//! no promise and no accept "until it observes one complete instance of Paxos that was started
//! after the replica started rebuilding its state".
//!
//! Read literally, that rule is not enough when messages can be delayed: a proposer holding a
//! pre-crash promise from us for a ballot *above* the current master's could still complete
//! phase 1 with it later, while we accept the current master's lower ballot. So we make the
//! rule precise with two bounds taken from **every** other member after the restart (of the
//! newest member set we know, and of every newest set a reply names that our map does not
//! show replaced; docs/paxos.md, "Membership changes", says what that leaves out):
//!
//! 1. Every ballot we could have promised was first promised, durably, by its proposer to
//!    itself (a candidate persists its own promise before any Prepare leaves). We adopt the
//!    highest `promised` reported, so we never accept below a ballot we may have promised.
//! 2. Every slot we could have accepted was first accepted, durably, by the master that
//!    proposed it (the master persists its own accept before the Accept leaves). Let `A` be the
//!    highest slot reported as accepted. We vote only once slot `A + 1` is known chosen: its
//!    instance began after the replies, hence after our restart — PML's "one complete instance"
//!    — and by then every slot we might have voted in is chosen and in our log.
//!
//! A master that receives a rebuild query proposes a no-op when idle, so an idle cell still
//! produces that instance. The cost is availability, not safety: the rebuilding replica waits
//! until all other members answered. While rebuilding it also acks no heartbeat.

use std::collections::BTreeSet;

use chubby_protocol::{Ballot, Instant, NodeId, PaxosMsg, Slot};

use super::{Action, Membership, PersistBatch, Replica};

impl Replica {
    pub(super) fn tick_rebuild(&mut self, now: Instant, out: &mut Vec<Action>) {
        let peers = self.rebuild_peers();
        let master = self.last_master;
        let Some(rebuild) = &mut self.rebuild else {
            return;
        };
        if peers.is_empty() {
            // A one-member cell: no other acceptor can hold a promise of ours, so voting is
            // safe at once; but everything it stored is gone.
            tracing::error!(me = %self.cfg.me, "single-member cell lost its disk: its data is gone");
            rebuild.target = Some(Slot::ZERO);
            self.check_rebuild_done(now, out);
            return;
        }
        if now < rebuild.retry_at {
            return;
        }
        rebuild.retry_at = now.plus_ms(self.cfg.retry_interval_ms);
        let msg = PaxosMsg::RebuildQuery {
            nonce: rebuild.nonce,
        };
        let bounding = rebuild.target.is_none();
        // The set whose members must answer may have become known since the last reply
        // (a catch-up reply carries the sets): contacts asked only for want of a set, and
        // perhaps removed and stopped since, are then no longer waited for.
        let bounded = bounding && self.bound_rebuild(out);
        let Some(rebuild) = &mut self.rebuild else {
            return;
        };
        if bounded {
            // Bounds known in a tick: remind the master at once, then every retry.
            rebuild.retry_at = now.plus_ms(self.cfg.retry_interval_ms);
        }
        if bounding && !bounded {
            for to in peers
                .into_iter()
                .filter(|p| !rebuild.replies.contains_key(p))
            {
                out.push(Action::Send {
                    to,
                    msg: msg.clone(),
                });
            }
        } else if let Some(master) = master {
            // Waiting for an instance to complete: remind the master to start one.
            out.push(Action::Send { to: master, msg });
        }
    }

    pub(super) fn serve_rebuild_query(&mut self, from: NodeId, nonce: u64, out: &mut Vec<Action>) {
        let accepted_through = [
            self.log.keys().next_back().copied(),
            self.chosen_above.keys().next_back().copied(),
            Some(self.chosen_through),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(Slot::ZERO);
        let reply = PaxosMsg::RebuildReply {
            nonce,
            promised: self.promised,
            accepted_through,
            newest: self.membership.newest().to_vec(),
        };
        Self::send(out, from, reply);
        self.want_noop();
    }

    /// Whom the rebuild must hear from: every other member of the newest set we know, of
    /// every newest set a reply named (unless our map shows a later set replaced it: the
    /// replier lags, and a replica removed since need not, and after removal should not,
    /// be running), and (while we know no set) of our configuration.
    fn rebuild_peers(&self) -> Vec<NodeId> {
        let mut peers: BTreeSet<NodeId> = self.membership.newest().iter().copied().collect();
        if peers.is_empty() {
            peers.extend(self.cfg.members.iter().copied());
        }
        if let Some(rebuild) = &self.rebuild {
            for set in &rebuild.named {
                if !self.membership.is_superseded(set) {
                    peers.extend(set.iter().copied());
                }
            }
        }
        peers.remove(&self.cfg.me);
        peers.into_iter().collect()
    }

    pub(super) fn on_rebuild_reply(
        &mut self,
        from: NodeId,
        nonce: u64,
        (promised, accepted_through, newest): (Ballot, Slot, Vec<NodeId>),
        out: &mut Vec<Action>,
    ) {
        let Some(rebuild) = &mut self.rebuild else {
            return;
        };
        if nonce != rebuild.nonce || rebuild.target.is_some() {
            return;
        }
        rebuild.replies.insert(from, (promised, accepted_through));
        let named_more = Membership::well_formed(&newest) && rebuild.named.insert(newest);
        if !self.bound_rebuild(out) && named_more {
            if let Some(rebuild) = &mut self.rebuild {
                rebuild.retry_at = Instant::ZERO; // ask the newly named at once
            }
        }
    }

    /// Once every replica [`Self::rebuild_peers`] names has answered, adopts the highest
    /// promise reported and sets the slot whose choice ends the rebuild. Returns whether it
    /// did.
    fn bound_rebuild(&mut self, out: &mut Vec<Action>) -> bool {
        let peers = self.rebuild_peers();
        let Some(rebuild) = &mut self.rebuild else {
            return false;
        };
        if rebuild.target.is_some() || peers.iter().any(|p| !rebuild.replies.contains_key(p)) {
            return false;
        }
        let promised_max = rebuild
            .replies
            .values()
            .map(|(b, _)| *b)
            .max()
            .unwrap_or(Ballot::ZERO);
        let accepted_max = rebuild
            .replies
            .values()
            .map(|(_, s)| *s)
            .max()
            .unwrap_or(Slot::ZERO);
        let target = accepted_max.next();
        rebuild.target = Some(target);
        rebuild.retry_at = Instant::ZERO;
        tracing::info!(me = %self.cfg.me, %promised_max, %target, "rebuild: bounds known; waiting for a new instance");
        if promised_max > self.promised {
            self.promised = promised_max;
            self.max_seen = self.max_seen.max(promised_max);
            Self::persist(
                out,
                PersistBatch {
                    promised: Some(promised_max),
                    ..PersistBatch::default()
                },
            );
        }
        true
    }

    /// Becomes a voter once an instance begun after the restart is known chosen.
    pub(super) fn check_rebuild_done(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(rebuild) = &self.rebuild else { return };
        let Some(target) = rebuild.target else { return };
        if self.chosen_through < target {
            return;
        }
        tracing::info!(me = %self.cfg.me, %target, "rebuild complete: voting again");
        self.rebuild = None;
        self.voter = true;
        Self::persist(
            out,
            PersistBatch {
                voter: Some(true),
                ..PersistBatch::default()
            },
        );
        let wait = self.election_wait();
        self.election_at = Some(now.plus_ms(wait));
    }
}
