//! The fault schedule of the safety phase (crashes, partitions in one or both directions)
//! and the healing that starts the liveness phase (PML §6.3: inject failures for a while,
//! then stop, let the system recover, and require progress).

use chubby_protocol::NodeId;

use super::net::NetConfig;
use super::{Event, Sim};

impl Sim {
    /// Injects one random fault and schedules the next.
    pub(super) fn inject_fault(&mut self) {
        if self.healed {
            return;
        }
        let [crash, partition, link, power_cut] = self.faults.weights;
        let total = crash + partition + link + power_cut;
        // `sim cell`: one fault in two hits a client instead: a paused process, or a
        // client cut off from the cell.
        if self.cell.is_some() && self.rng.chance(500_000) {
            if self.rng.chance(500_000) {
                self.pause_random_client();
            } else {
                self.cut_random_client();
            }
        } else {
            self.inject_replica_fault(total);
        }
        let (low, high) = self.faults.fault_gap_ms;
        let gap = self.rng.between(low, high) * 1000;
        self.schedule(self.now_us + gap, Event::Fault);
    }

    fn inject_replica_fault(&mut self, total: u64) {
        let [crash, partition, link, _] = self.faults.weights;
        let roll = self.rng.between(0, total.saturating_sub(1));
        if roll < crash {
            self.crash_random();
        } else if roll < crash + partition {
            self.partition_random();
        } else if roll < crash + partition + link {
            self.cut_link_random();
        } else {
            // Several replicas at once: a rack power cut.
            self.crash_random();
            self.crash_random();
        }
    }

    fn crash_random(&mut self) {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_up())
            .collect();
        if let Some(i) = self.rng.pick(&up) {
            self.crash(i);
        }
    }

    fn partition_random(&mut self) {
        let n = self.members.len();
        let size = self.rng.between(1, (n as u64 - 1).max(1)) as usize;
        let mut side: Vec<NodeId> = Vec::new();
        while side.len() < size {
            let pick = self.rng.pick(&self.members).expect("members exist");
            if !side.contains(&pick) {
                side.push(pick);
            }
        }
        let (outbound, inbound) = match self.rng.between(0, 3) {
            0 => (true, false),
            1 => (false, true),
            _ => (true, true),
        };
        let members = self.members.clone();
        let links = self.net.partition(&side, &members, outbound, inbound);
        self.stats.partitions += 1;
        self.trace(|| format!("partition {side:?} out={outbound} in={inbound}"));
        let heal_after = self.rng.between(100_000, 5_000_000);
        self.schedule(self.now_us + heal_after, Event::Heal { links });
    }

    /// Cuts the link between two replicas only, in one or both directions: the old master
    /// unreachable from one follower while it still reaches the others (the case leases
    /// exist for).
    fn cut_link_random(&mut self) {
        let a = self.rng.pick(&self.members).expect("members exist");
        let others: Vec<NodeId> = self.members.iter().copied().filter(|&m| m != a).collect();
        let Some(b) = self.rng.pick(&others) else {
            return;
        };
        let both = self.rng.chance(500_000);
        let links = self.net.partition(&[a], &[a, b], true, both);
        self.stats.partitions += 1;
        self.trace(|| format!("cut link {a} -> {b} (both ways: {both})"));
        let heal_after = self.rng.between(100_000, 5_000_000);
        self.schedule(self.now_us + heal_after, Event::Heal { links });
    }

    /// Ends the safety phase: every link restored, every replica restarted with its disk,
    /// and a network that delays but no longer loses.
    pub(super) fn end_safety(&mut self) {
        self.healed = true;
        self.net.heal();
        self.net.cfg = NetConfig::calm();
        self.trace(|| "faults stop: healing".to_string());
        for i in 0..self.nodes.len() {
            if !self.nodes[i].is_up() && !self.nodes[i].retired {
                self.restart(i);
            }
        }
    }
}
