//! Membership changes during faults (docs/paxos.md "Membership changes"): in half the seeds
//! the cell has one or two spare replicas, started warm with `joining` set as an operator
//! starts one (`chubby cell issue-replica`, then `--join`), and every few seconds of the
//! safety phase the simulator asks the master to add a replica or remove one, the master
//! itself included (a replace is a removal and an add). Sets stay between 3 and 7 members.
//!
//! A removed replica is stopped for good once every member of the set without it knows
//! that set in effect, as docs/paxos.md's known limits tell operators to do. In `sim cell` runs the change goes
//! through the admin call (`Composite::change_members`); in `sim paxos` runs, which drive
//! the log alone, straight to Paxos (`Composite::propose_members`).
//!
//! Draws come from a stream of their own, so a seed without changes runs exactly the
//! history it ran before they existed.

use chubby_protocol::{MemberAddr, NodeId};
use chubby_server::paxos::Config;
use chubby_server::replica::ADMIN_PRINCIPAL;

use super::clock::NodeClock;
use super::node::SimNode;
use super::rng::Rng;
use super::{Event, Sim};

/// The fewest and most members a change may leave.
const MEMBERS_MIN: usize = 3;
const MEMBERS_MAX: usize = 7;

/// Membership-change state of one run.
#[derive(Debug)]
pub(super) struct Reconfig {
    /// Whether this run changes membership at all.
    pub enabled: bool,
    pub rng: Rng,
    /// The changes the oracle had seen chosen when removed replicas were last stopped.
    retired_for: u64,
}

impl Reconfig {
    /// Draws whether a run with `seed` changes membership (`forced` overrides the draw).
    pub fn new(seed: u64, forced: Option<bool>) -> Reconfig {
        let mut rng = Rng::new(seed ^ 0x6D65_6D62_6572_7321);
        let drawn = rng.chance(500_000);
        Reconfig {
            enabled: forced.unwrap_or(drawn),
            rng,
            retired_for: 0,
        }
    }

    /// Spare replicas, started warm and joining: none when changes are off.
    pub fn spares(&mut self, founders: &[NodeId], base: &Config, epsilon: i64) -> Vec<SimNode> {
        if !self.enabled {
            return Vec::new();
        }
        let count = self.rng.between(1, 2) as u32;
        let first = founders.len() as u32 + 1;
        (first..first + count)
            .map(|id| {
                let rate_ppm = self.rng.between(0, 2 * epsilon as u64) as i64 - epsilon;
                let clock = NodeClock {
                    offset_us: self.rng.between(0, 10_000_000),
                    rate_ppm,
                };
                let mut cfg = base.clone();
                cfg.me = NodeId(id);
                cfg.joining = true;
                cfg.seed = self.rng.next_u64();
                SimNode::new(NodeId(id), cfg, clock)
            })
            .collect()
    }
}

/// Where the simulator says a replica listens (the address travels in the change).
fn sim_addr(id: NodeId) -> MemberAddr {
    MemberAddr {
        id,
        host: format!("replica-{}", id.0),
        peer_port: 7000,
        client_port: 7001,
    }
}

impl Sim {
    /// Schedules the first change, when this run changes membership.
    pub(super) fn start_reconfig(&mut self) {
        if self.reconfig.enabled {
            let at = self.reconfig.rng.between(1_000_000, 4_000_000);
            self.schedule(at, Event::Reconfigure);
        }
    }

    /// Asks the master for one change, and schedules the next until the faults stop.
    pub(super) fn reconfigure(&mut self) {
        if self.healed {
            return;
        }
        let gap = self.reconfig.rng.between(500_000, 4_000_000);
        self.schedule(self.now_us + gap, Event::Reconfigure);
        let masters: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].paxos().is_some_and(|p| p.epoch().is_some()))
            .collect();
        let Some(i) = self.reconfig.rng.pick(&masters) else {
            return;
        };
        let Some(paxos) = self.nodes[i].paxos() else {
            return;
        };
        if paxos.change_pending() {
            return;
        }
        let newest: Vec<NodeId> = paxos.membership().newest().to_vec();
        let master = self.nodes[i].id;
        let ever = self.agreement.ever_members();
        let joinable: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|n| !n.retired && !ever.contains(&n.id) && !newest.contains(&n.id))
            .map(|n| n.id)
            .collect();
        let can_add = newest.len() < MEMBERS_MAX && !joinable.is_empty();
        let can_remove = newest.len() > MEMBERS_MIN;
        let add = match (can_add, can_remove) {
            (false, false) => return,
            (true, false) => true,
            (false, true) => false,
            (true, true) => self.reconfig.rng.chance(500_000),
        };
        let (added, removed) = if add {
            (self.reconfig.rng.pick(&joinable), None)
        } else if newest.contains(&master) && self.reconfig.rng.chance(333_333) {
            (None, Some(master))
        } else {
            (None, self.reconfig.rng.pick(&newest))
        };
        let mut members = newest.clone();
        members.retain(|m| Some(*m) != removed);
        members.extend(added);
        members.sort();
        self.stats.changes_proposed += 1;
        if removed == Some(master) {
            self.stats.master_removals += 1;
        }
        self.trace(|| format!("{master} asked to change members {newest:?} -> {members:?}"));
        let cell = self.cell.is_some();
        let (refused, _) = self.drive(i, false, |core, local, actions| {
            if cell {
                core.change_members(
                    local,
                    ADMIN_PRINCIPAL,
                    added.map(sim_addr),
                    removed,
                    actions,
                )
                .err()
                .map(|e| e.to_string())
            } else {
                core.propose_members(
                    local,
                    members,
                    added.map(sim_addr).into_iter().collect(),
                    actions,
                )
                .err()
                .map(|e| e.to_string())
            }
        });
        if let Some(why) = refused {
            self.trace(|| format!("{master} refused the change: {why}"));
        }
    }

    /// Stops, for good, every replica the newest set removed, once every member of that
    /// set knows it in effect (its chosen prefix reaches the set's first slot), which is
    /// when `chubby admin remove-replica` says it may be stopped. Stopping earlier can cost
    /// liveness, not safety: slots just below the new set may be known chosen only to the
    /// removed master, and rediscovering them takes a majority of the old set.
    pub(super) fn retire_removed(&mut self) {
        let (changes, _) = self.agreement.change_counts();
        if changes == self.reconfig.retired_for || !self.agreement.newest_in_effect() {
            return;
        }
        let from = self.agreement.newest_from();
        let newest = self.agreement.newest().clone();
        // Known on disk, not only in memory (what `chubby status` reports): a member that
        // knew it only in memory and crashed would need the old set, the removed replica
        // included, to learn the slots just below `from` again (seed 1961 of `sim cell`).
        let all_know = newest.iter().all(|&id| {
            let node = &self.nodes[self.index(id)];
            node.is_up() && node.durably_chosen().next() >= from
        });
        if !all_know {
            return;
        }
        self.reconfig.retired_for = changes;
        let ever = self.agreement.ever_members();
        for i in 0..self.nodes.len() {
            let id = self.nodes[i].id;
            if ever.contains(&id) && !newest.contains(&id) && !self.nodes[i].retired {
                self.trace(|| format!("{id} is removed and stopped for good"));
                self.crash(i);
                let node = &mut self.nodes[i];
                node.retired = true;
                node.intact_voter = true;
                self.stats.retired += 1;
            }
        }
    }
}
