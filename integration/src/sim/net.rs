//! The message-level network: delay, loss, duplication, reordering (independent random
//! delays reorder messages) and directed partitions. QUIC is not simulated (STYLE §0): the
//! cores see exactly what a lossy, reordering, duplicating datagram network could do.

use std::collections::{BTreeMap, BTreeSet};

use chubby_protocol::NodeId;

use super::rng::Rng;

/// Network fault settings for one run.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Per-million chance a message is lost.
    pub loss_ppm: u64,
    /// Per-million chance a message is delivered twice.
    pub dup_ppm: u64,
    /// Usual one-way delay range, microseconds.
    pub delay_us: (u64, u64),
    /// Per-million chance of a long delay instead.
    pub spike_ppm: u64,
    /// Long delay range, microseconds.
    pub spike_us: (u64, u64),
}

impl NetConfig {
    /// A network that only delays (liveness phase).
    #[must_use]
    pub fn calm() -> NetConfig {
        NetConfig {
            loss_ppm: 0,
            dup_ppm: 0,
            delay_us: (200, 5_000),
            spike_ppm: 0,
            spike_us: (0, 0),
        }
    }

    /// Random faulty settings.
    pub fn random(rng: &mut Rng) -> NetConfig {
        let loss_ppm = rng.pick(&[0, 10_000, 50_000, 200_000]).unwrap_or(0);
        let dup_ppm = rng.pick(&[0, 10_000, 50_000]).unwrap_or(0);
        let max_delay = rng.pick(&[2_000, 20_000, 100_000]).unwrap_or(2_000);
        let spike_ppm = rng.pick(&[0, 5_000, 50_000, 250_000]).unwrap_or(0);
        let spike_max = rng.pick(&[300_000, 1_500_000]).unwrap_or(300_000);
        NetConfig {
            loss_ppm,
            dup_ppm,
            delay_us: (100, max_delay),
            spike_ppm,
            spike_us: (max_delay, spike_max),
        }
    }
}

/// Network state: settings, cut links and counters.
#[derive(Clone, Debug)]
pub struct Network {
    /// Current settings.
    pub cfg: NetConfig,
    blocked: BTreeSet<(NodeId, NodeId)>,
    /// Extra one-way latency of slow directed links (a replica in a farther rack).
    slow_links: BTreeMap<(NodeId, NodeId), u64>,
    /// Messages sent.
    pub sent: u64,
    /// Messages dropped (loss or partition).
    pub dropped: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
}

impl Network {
    /// A network with `cfg` and no partitions.
    #[must_use]
    pub fn new(cfg: NetConfig) -> Network {
        Network {
            cfg,
            blocked: BTreeSet::new(),
            slow_links: BTreeMap::new(),
            sent: 0,
            dropped: 0,
            duplicated: 0,
        }
    }

    /// Makes every link *into* `node` slower than the rest, for the whole run: a replica whose
    /// acknowledgements always come back late.
    pub fn slow_inbound(&mut self, rng: &mut Rng, node: NodeId, members: &[NodeId]) {
        for &a in members.iter().filter(|&&a| a != node) {
            self.slow_links
                .insert((a, node), rng.between(30_000, 150_000));
        }
    }

    /// Makes some directed links slower than the rest, for the whole run.
    pub fn slow_some_links(&mut self, rng: &mut Rng, members: &[NodeId], per_million: u64) {
        for &a in members {
            for &b in members.iter().filter(|&&b| b != a) {
                if rng.chance(per_million) {
                    self.slow_links.insert((a, b), rng.between(20_000, 150_000));
                }
            }
        }
    }

    /// Cuts every link between `side` and the other `members`, in the directions given, and
    /// returns the links it cut (to restore exactly those later).
    pub fn partition(
        &mut self,
        side: &[NodeId],
        members: &[NodeId],
        outbound: bool,
        inbound: bool,
    ) -> Vec<(NodeId, NodeId)> {
        let mut cut = Vec::new();
        for &a in side {
            for &b in members.iter().filter(|b| !side.contains(b)) {
                if outbound && self.blocked.insert((a, b)) {
                    cut.push((a, b));
                }
                if inbound && self.blocked.insert((b, a)) {
                    cut.push((b, a));
                }
            }
        }
        cut
    }

    /// Restores the given links (one partition's), leaving other partitions in place.
    pub fn restore(&mut self, links: &[(NodeId, NodeId)]) {
        for link in links {
            self.blocked.remove(link);
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// The slow directed links and their extra latency (µs).
    #[must_use]
    pub fn slow_links(&self) -> &BTreeMap<(NodeId, NodeId), u64> {
        &self.slow_links
    }

    /// Whether `from → to` is cut.
    #[must_use]
    pub fn is_blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.blocked.contains(&(from, to))
    }

    /// Number of cut directed links.
    #[must_use]
    pub fn cut_links(&self) -> usize {
        self.blocked.len()
    }

    /// The delays (µs) after which copies of a message sent now arrive; empty if lost.
    pub fn transmit(&mut self, rng: &mut Rng, from: NodeId, to: NodeId) -> Vec<u64> {
        self.sent += 1;
        if self.is_blocked(from, to) || rng.chance(self.cfg.loss_ppm) {
            self.dropped += 1;
            return Vec::new();
        }
        let extra = self.slow_links.get(&(from, to)).copied().unwrap_or(0);
        let mut delays = vec![extra + self.delay(rng)];
        if rng.chance(self.cfg.dup_ppm) {
            self.duplicated += 1;
            delays.push(extra + self.delay(rng));
        }
        delays
    }

    fn delay(&self, rng: &mut Rng) -> u64 {
        if rng.chance(self.cfg.spike_ppm) {
            rng.between(self.cfg.spike_us.0, self.cfg.spike_us.1)
        } else {
            rng.between(self.cfg.delay_us.0, self.cfg.delay_us.1)
        }
    }
}
