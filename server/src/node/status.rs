//! What a replica says about itself: `chubby status` reports and role-change logs.

use chubby_protocol::client_msg::{MasterHint, ReplicaRole, StatusReport};
use chubby_protocol::{Ballot, NodeId};
use tracing::{info, warn};

use super::core::Core;
use crate::paxos::RoleKind;

impl Core {
    /// Logs a role change with this replica's id (serving logs the rest).
    pub(super) fn role_changed(&self, role: RoleKind, epoch: Option<Ballot>) {
        if role == RoleKind::Master {
            info!(
                replica = self.me.0,
                ?epoch,
                "became master; starting the epoch"
            );
        } else if self.composite.serve().serving_epoch().is_some() {
            warn!(replica = self.me.0, ?role, "lost mastership");
        }
    }

    /// Replica `id`'s client address: learned from a membership change, else configured.
    pub(super) fn hint_of(&self, id: NodeId) -> Option<MasterHint> {
        self.composite.hint_of(id)
    }

    pub(super) fn status(&self) -> StatusReport {
        let now = self.now();
        let replica = self.composite.paxos();
        let db = self.composite.db();
        let role = if !replica.is_voter() {
            ReplicaRole::Rebuilding
        } else {
            match replica.role() {
                RoleKind::Follower => ReplicaRole::Follower,
                RoleKind::Candidate => ReplicaRole::Candidate,
                RoleKind::Master => ReplicaRole::Master,
            }
        };
        StatusReport {
            id: self.me,
            role,
            epoch: db.epoch(),
            master: replica.master_hint().and_then(|id| self.hint_of(id)),
            lease_remaining_ms: replica.lease_until(now).map(|until| until.ms_since(now)),
            applied: db.applied_slot(),
            // Known on disk (a snapshot counts): what a crash keeps.
            chosen_through: replica
                .chosen_through()
                .min(self.durable_chosen.max(self.snapshots.latest())),
            known_chosen: replica.known_chosen_through(),
            snapshot: self.snapshots.latest(),
            log_entries: replica.log_len() as u64,
            digest: db.digest().0,
            last_checksum: self.composite.last_checksum(),
            divergence: self.composite.divergence().map(str::to_owned),
            members: {
                let mut ids = replica.membership().everyone();
                ids.extend(self.cfg.members.iter().map(|m| NodeId(m.id)));
                ids.extend(replica.membership().addrs().keys().copied());
                ids.into_iter().filter_map(|id| self.hint_of(id)).collect()
            },
            member_sets: replica.membership().to_wire().sets,
            sessions: db.sessions().count() as u64,
            client_calls: self.client_calls,
        }
    }
}
