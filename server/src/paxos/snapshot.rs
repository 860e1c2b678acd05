//! Log truncation and snapshot catch-up (PML §5.5).
//!
//! The application, not Paxos, takes snapshots: the shell tells the core when one covering
//! a slot is durable ([`Input::SnapshotTaken`](super::Input::SnapshotTaken)), and only then
//! does the core drop log entries through that slot — never past what it delivered, so a
//! restart can always resume from the snapshot plus the log.
//!
//! A replica that asks for slots a peer has dropped gets a catch-up reply saying where that
//! peer's log starts; it then emits [`Action::FetchSnapshot`] and sends no catch-up
//! requests until the shell reports the snapshot installed, the fetch failed, or
//! `snapshot_fetch_timeout_ms` passed. An installed snapshot is a chosen prefix (a peer's
//! applied state), so the replica adopts its slot as chosen, delivered and truncated, and
//! catches up from the log after it.

use chubby_protocol::{Instant, MemberSets, NodeId, Slot};

use super::{Action, PersistBatch, Replica, Role};

impl Replica {
    /// The application durably snapshotted through `slot`: drop the log up to it.
    pub(super) fn on_snapshot_taken(&mut self, slot: Slot, out: &mut Vec<Action>) {
        let through = slot.min(self.delivered);
        if through < slot {
            tracing::warn!(me = %self.cfg.me, %slot, delivered = %self.delivered,
                "snapshot beyond the delivered slot: truncating only to what was delivered");
        }
        if through <= self.truncated {
            return;
        }
        self.truncate_log(through);
        tracing::info!(me = %self.cfg.me, %through, kept = self.log.len(), "log truncated");
        Self::persist(
            out,
            PersistBatch {
                truncate_through: Some(through),
                // The values that built the sets are going: store the sets as of now.
                members: Some(self.membership.to_wire()),
                ..PersistBatch::default()
            },
        );
    }

    /// The application durably installed a peer's snapshot covering through `slot`.
    pub(super) fn on_snapshot_installed(
        &mut self,
        now: Instant,
        slot: Slot,
        members: &MemberSets,
        out: &mut Vec<Action>,
    ) {
        self.catchup.fetching = false;
        self.catchup.retry_at = None;
        if slot <= self.delivered {
            tracing::debug!(me = %self.cfg.me, %slot, delivered = %self.delivered,
                "installed snapshot is not ahead of the application: nothing to adopt");
            return;
        }
        let mut batch = PersistBatch::default();
        // The install skips the values that carried membership changes below `slot`: the
        // creator's sets stand in for them (without them, once the creator is gone, no
        // replica's map would cover its chosen prefix and none could campaign).
        if self.membership.merge(members) || members.complete_through > Slot::ZERO {
            batch.members = Some(self.membership.to_wire());
        }
        self.delivered = slot;
        if slot > self.chosen_through {
            self.chosen_through = slot;
            batch.chosen_through = Some(slot);
            self.chosen_above = self.chosen_above.split_off(&slot.next());
        }
        self.truncate_log(slot);
        batch.truncate_through = Some(slot);
        self.known_chosen_through = self.known_chosen_through.max(slot);
        self.catchup.requested_through = self.chosen_through;
        if let Role::Master(m) = &mut self.role {
            m.inflight.retain(|s, _| *s > slot);
            m.next_slot = m.next_slot.max(slot.next());
        }
        if self.observe_logged_chosen() {
            batch.members = Some(self.membership.to_wire());
        }
        tracing::info!(me = %self.cfg.me, %slot, known_chosen = %self.known_chosen_through,
            complete_through = %self.membership.complete_through(),
            "snapshot installed: catching up from the log after it");
        Self::persist(out, batch);
        self.check_rebuild_done(now, out);
    }

    /// The shell could not fetch or install the snapshot: start catch-up over (from the
    /// next peer in turn) at once; [`Replica::step`] runs the catch-up timer next.
    pub(super) fn on_snapshot_fetch_failed(&mut self, now: Instant) {
        if !self.catchup.fetching {
            return;
        }
        tracing::warn!(me = %self.cfg.me, source = ?self.catchup.source,
            "snapshot fetch failed: trying again");
        self.catchup.fetching = false;
        self.catchup.source = None;
        self.catchup.retry_at = Some(now);
    }

    /// `from`'s log no longer holds what we need: ask the shell for its snapshot.
    pub(super) fn start_snapshot_fetch(
        &mut self,
        now: Instant,
        from: NodeId,
        out: &mut Vec<Action>,
    ) {
        if self.catchup.fetching {
            return;
        }
        tracing::info!(me = %self.cfg.me, %from, applied = %self.delivered,
            "peer's log is truncated beyond ours: fetching its snapshot");
        self.catchup.fetching = true;
        self.catchup.source = Some(from);
        self.catchup.retry_at = Some(now.plus_ms(self.cfg.snapshot_fetch_timeout_ms));
        out.push(Action::FetchSnapshot {
            from,
            after: self.delivered,
        });
    }

    fn truncate_log(&mut self, through: Slot) {
        self.truncated = self.truncated.max(through);
        self.log = self.log.split_off(&through.next());
    }
}
