//! The deterministic simulator: whole cells of pure Paxos replicas in one thread, driven
//! from one seed (PML §6.3 "Test 1"; TigerBeetle's VOPR; STYLE §9.5).
//!
//! ```text
//!   seed ─► Rng ─► cell size, Paxos timings, network faults, clock drift, fault schedule
//!                 │
//!   event queue (true µs, seq) ─► Deliver / Tick / Submit / Crash / Restart / Partition / Heal
//!                 │
//!   node: the shipped Composite.step(local clock, input) ─► actions ordered by the shipped
//!         Planner (early sends, one merged Persist, the rest), executed with a chance of
//!         crashing between any two (or in the middle of the Persist)
//!                 │
//!   checkers after every event: agreement, delivery_order, promise_monotonic, single_master;
//!   at the end: liveness (faults stop at the end of the safety phase)
//! ```
//!
//! A run is a pure function of its [`SimOptions`]: no wall clock, no threads, no hash-order
//! iteration. `sim paxos --seed N` replays one run with a trace.

pub mod cell;
pub mod checkers;
pub mod clock;
mod faults;
pub mod net;
mod node;
mod reconfigure;
pub mod rng;
mod workload;

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use chubby_protocol::{NodeId, PaxosMsg};
use chubby_server::paxos::{Bugs, Config};

use checkers::agreement::Agreement;
use checkers::delivery_order::DeliveryOrder;
use checkers::liveness::Liveness;
use checkers::promise_monotonic::PromiseMonotonic;
use checkers::single_master::SingleMaster;
use checkers::Violation;
use clock::NodeClock;
use net::{NetConfig, Network};
use node::SimNode;
use rng::Rng;
use workload::Client;

/// What to run.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// The seed; everything else random derives from it.
    pub seed: u64,
    /// Cell size; random (3 or 5) when `None`.
    pub replicas: Option<usize>,
    /// Deliberate bugs to inject.
    pub bugs: Bugs,
    /// Draw clock rates beyond the drift bound the lease math assumes (a negative test).
    pub drift_beyond_bound: bool,
    /// Print every event.
    pub trace: bool,
    /// Length of the fault phase, simulated ms.
    pub safety_ms: u64,
    /// Length of the healed phase, simulated ms.
    pub liveness_ms: u64,
    /// Run the whole cell (database, sessions, clients) with these client-level bugs;
    /// `None`: the replicated log alone.
    pub cell: Option<cell::CellBugs>,
    /// Whether to change membership during faults; `None`: drawn per seed (half of them).
    pub membership: Option<bool>,
}

impl SimOptions {
    /// Defaults for `seed`.
    #[must_use]
    pub fn new(seed: u64) -> SimOptions {
        SimOptions {
            seed,
            replicas: None,
            bugs: Bugs::default(),
            drift_beyond_bound: false,
            trace: false,
            safety_ms: 20_000,
            liveness_ms: 40_000,
            cell: None,
            membership: None,
        }
    }
}

/// What a run covered (STYLE §9.5: pair every "always" with a "sometimes").
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    /// Cell size.
    pub replicas: u64,
    /// Events processed.
    pub events: u64,
    /// Commands submitted (including retries).
    pub submitted: u64,
    /// Commands delivered on the replica they were submitted to.
    pub committed: u64,
    /// Slots chosen (the oracle's count).
    pub slots_chosen: u64,
    /// Deliveries checked.
    pub deliveries: u64,
    /// Crashes between actions.
    pub crashes: u64,
    /// Crashes in the middle of a Persist (unsynced writes lost).
    pub torn_persists: u64,
    /// Restarts with a wiped disk.
    pub wipes: u64,
    /// Restarts that found (and reported) a corrupt record.
    pub corruptions: u64,
    /// Rebuilds that finished (the replica votes again).
    pub rebuilds: u64,
    /// Partitions made.
    pub partitions: u64,
    /// Messages sent.
    pub messages: u64,
    /// Messages dropped.
    pub dropped: u64,
    /// Messages duplicated.
    pub duplicated: u64,
    /// Times a replica became master.
    pub elections: u64,
    /// Checks at which a lease was held.
    pub lease_observations: u64,
    /// Snapshots made durable (the log truncated after each).
    pub snapshots: u64,
    /// Snapshots fetched from a peer and installed.
    pub snapshot_installs: u64,
    /// Membership changes the simulator asked a master for.
    pub changes_proposed: u64,
    /// Of those, changes that removed the master itself.
    pub master_removals: u64,
    /// Membership changes chosen (the oracle's count of valid ones).
    pub changes_chosen: u64,
    /// Removed replicas stopped for good.
    pub retired: u64,
    /// Client-level coverage of `sim cell` runs.
    pub cell: cell::CellStats,
}

impl RunStats {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &RunStats) {
        let fields: [(&mut u64, u64); 23] = [
            (&mut self.replicas, other.replicas),
            (&mut self.events, other.events),
            (&mut self.submitted, other.submitted),
            (&mut self.committed, other.committed),
            (&mut self.slots_chosen, other.slots_chosen),
            (&mut self.deliveries, other.deliveries),
            (&mut self.crashes, other.crashes),
            (&mut self.torn_persists, other.torn_persists),
            (&mut self.wipes, other.wipes),
            (&mut self.corruptions, other.corruptions),
            (&mut self.rebuilds, other.rebuilds),
            (&mut self.partitions, other.partitions),
            (&mut self.messages, other.messages),
            (&mut self.dropped, other.dropped),
            (&mut self.duplicated, other.duplicated),
            (&mut self.elections, other.elections),
            (&mut self.lease_observations, other.lease_observations),
            (&mut self.snapshots, other.snapshots),
            (&mut self.snapshot_installs, other.snapshot_installs),
            (&mut self.changes_proposed, other.changes_proposed),
            (&mut self.master_removals, other.master_removals),
            (&mut self.changes_chosen, other.changes_chosen),
            (&mut self.retired, other.retired),
        ];
        for (mine, theirs) in fields {
            *mine += theirs;
        }
        self.cell.add(&other.cell);
    }

    /// One line: operations and faults covered.
    #[must_use]
    pub fn summary(&self) -> String {
        let c = &self.cell;
        let clients = if c.sessions > 0 {
            format!(
                "; clients: {} ops ({} from the cache, {} unknown, {} calls sent again, {} \
                 handles announced again), {} sessions, {} expired, \
                 {} locks, {} trees moved, {} pauses, {} fail-overs followed; {} file histories \
                 linearizable, {} undecided",
                c.ops,
                c.cache_hits,
                c.unknown,
                c.resent,
                c.reannounced,
                c.sessions,
                c.expiries,
                c.locks,
                c.tree_moves,
                c.pauses,
                c.fail_overs,
                c.histories,
                c.undecided
            )
        } else {
            String::new()
        };
        let log = format!(
            "{} events; ops: {} submitted, {} committed, {} slots chosen, {} deliveries checked, {} elections; \
             faults: {} crashes, {} torn persists, {} wiped disks, {} corrupt records, {} rebuilds, \
             {} partitions, {} of {} messages dropped, {} duplicated; \
             {} snapshots, {} installed from peers; membership: {} changes asked ({} of the \
             master), {} chosen, {} removed replicas stopped",
            self.events,
            self.submitted,
            self.committed,
            self.slots_chosen,
            self.deliveries,
            self.elections,
            self.crashes,
            self.torn_persists,
            self.wipes,
            self.corruptions,
            self.rebuilds,
            self.partitions,
            self.dropped,
            self.messages,
            self.duplicated,
            self.snapshots,
            self.snapshot_installs,
            self.changes_proposed,
            self.master_removals,
            self.changes_chosen,
            self.retired,
        );
        log + &clients
    }
}

/// The result of one run.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The seed run.
    pub seed: u64,
    /// What it covered.
    pub stats: RunStats,
    /// The first violated property, if any.
    pub violation: Option<Violation>,
}

#[derive(Clone, Debug)]
enum Event {
    Deliver {
        to: NodeId,
        from: NodeId,
        msg: PaxosMsg,
    },
    Tick {
        node: usize,
        gen: u64,
    },
    Submit {
        client: usize,
        gen: u64,
    },
    Restart {
        node: usize,
    },
    SnapshotWritten {
        node: usize,
        incarnation: u64,
        state: node::SimSnapshot,
    },
    SnapshotFetched {
        node: usize,
        incarnation: u64,
        from: NodeId,
        after: chubby_protocol::Slot,
    },
    ClientCall {
        node: usize,
        client: usize,
        call: u64,
        request: chubby_protocol::client_msg::Request,
    },
    ClientReply {
        client: usize,
        call: u64,
        reply: chubby_protocol::client_msg::Reply,
    },
    ClientWake {
        client: usize,
        gen: u64,
    },
    ClientLost {
        client: usize,
        call: u64,
    },
    Housekeep {
        node: usize,
        incarnation: u64,
    },
    Resource {
        client: usize,
        generation: chubby_protocol::Generation,
        sent: u64,
    },
    Fault,
    Heal {
        links: Vec<(NodeId, NodeId)>,
    },
    Reconfigure,
    EndSafety,
    End,
}

#[derive(Debug)]
struct Scheduled {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Fault intensities for the safety phase, drawn per seed.
#[derive(Clone, Debug)]
struct FaultConfig {
    /// Relative weights of crash, group partition, single link cut, double crash.
    weights: [u64; 4],
    fault_gap_ms: (u64, u64),
    crash_between_actions_ppm: u64,
    torn_persist_ppm: u64,
    wipe_ppm: u64,
    corrupt_ppm: u64,
}

/// When replicas snapshot and how much log they keep below a snapshot, drawn per seed.
#[derive(Clone, Copy, Debug)]
struct SnapshotPolicy {
    /// Slots applied between snapshots; zero: never.
    every: u64,
    /// Log entries kept below a snapshot.
    keep: u64,
}

/// One simulated cell.
struct Sim {
    opts: SimOptions,
    rng: Rng,
    now_us: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    nodes: Vec<SimNode>,
    members: Vec<NodeId>,
    net: Network,
    faults: FaultConfig,
    snapshots: SnapshotPolicy,
    healed: bool,
    track_from_us: u64,
    track_until_us: u64,
    clients: Vec<Client>,
    stats: RunStats,
    agreement: Agreement,
    delivery: DeliveryOrder,
    promises: PromiseMonotonic,
    single_master: SingleMaster,
    liveness: Liveness,
    violation: Option<Violation>,
    /// The cell part of a `sim cell` run.
    cell: Option<cell::CellSim>,
    /// Membership changes during faults.
    reconfig: reconfigure::Reconfig,
}

/// Runs one seed to completion or to its first violation.
#[must_use]
pub fn run(opts: &SimOptions) -> Outcome {
    let mut sim = Sim::new(opts.clone());
    sim.run();
    if let Some(cell) = &sim.cell {
        sim.stats.cell = cell.stats.clone();
    }
    sim.stats.slots_chosen = sim.agreement.chosen_count() as u64;
    sim.stats.changes_chosen = sim.agreement.change_counts().0;
    sim.stats.deliveries = sim.delivery.delivered;
    sim.stats.messages = sim.net.sent;
    sim.stats.dropped = sim.net.dropped;
    sim.stats.duplicated = sim.net.duplicated;
    sim.stats.lease_observations = sim.single_master.lease_observations;
    Outcome {
        seed: opts.seed,
        stats: sim.stats,
        violation: sim.violation,
    }
}

impl Sim {
    fn new(opts: SimOptions) -> Sim {
        let mut rng = Rng::new(opts.seed);
        let n = opts
            .replicas
            .unwrap_or_else(|| if rng.chance(500_000) { 3 } else { 5 });
        let members: Vec<NodeId> = (1..=n as u32).map(NodeId).collect();
        let base = random_paxos_config(&mut rng, &members, opts.bugs);
        let epsilon = i64::try_from(base.drift_ppm).unwrap_or(0);
        let nodes: Vec<SimNode> = members
            .iter()
            .map(|&id| {
                let bound = if opts.drift_beyond_bound {
                    4 * epsilon
                } else {
                    epsilon
                };
                let rate_ppm = rng.between(0, 2 * bound as u64) as i64 - bound;
                let clock = NodeClock {
                    offset_us: rng.between(0, 10_000_000),
                    rate_ppm,
                };
                let mut cfg = base.clone();
                cfg.me = id;
                cfg.seed = rng.next_u64();
                SimNode::new(id, cfg, clock)
            })
            .collect();
        let mut net = Network::new(NetConfig::random(&mut rng));
        let slow_ppm = rng.pick(&[0, 0, 300_000]).unwrap_or(0);
        net.slow_some_links(&mut rng, &members, slow_ppm);
        if rng.chance(250_000) {
            let node = rng.pick(&members).expect("members exist");
            net.slow_inbound(&mut rng, node, &members);
        }
        let faults = FaultConfig {
            weights: [
                rng.pick(&[0, 1, 4]).unwrap_or(1),
                rng.pick(&[1, 3]).unwrap_or(1),
                rng.pick(&[1, 3]).unwrap_or(1),
                rng.pick(&[0, 1]).unwrap_or(0),
            ],
            fault_gap_ms: (rng.pick(&[50, 200, 1_000]).unwrap_or(200), 3_000),
            crash_between_actions_ppm: rng.pick(&[0, 500, 3_000]).unwrap_or(0),
            torn_persist_ppm: rng.pick(&[0, 2_000]).unwrap_or(0),
            wipe_ppm: rng.pick(&[0, 150_000, 400_000]).unwrap_or(0),
            corrupt_ppm: rng.pick(&[0, 100_000]).unwrap_or(0),
        };
        // From a stream of its own, so the draws above stay what they were per seed.
        let mut snap_rng = Rng::new(opts.seed ^ 0x5AA9_5107_C0DE_F00D);
        let snapshots = SnapshotPolicy {
            every: snap_rng.pick(&[0, 5, 20, 100]).unwrap_or(20),
            keep: snap_rng.pick(&[0, 3, 50]).unwrap_or(0),
        };
        let clients: Vec<Client> = (0..rng.between(1, 4) as usize)
            .map(|i| Client::new(i, members[0]))
            .collect();
        // Spare replicas (membership changes), from a stream of their own.
        let founders = members.clone();
        let mut reconfig = reconfigure::Reconfig::new(opts.seed, opts.membership);
        let spares = reconfig.spares(&founders, &base, epsilon);
        let mut nodes = nodes;
        let mut members = members;
        for spare in spares {
            members.push(spare.id);
            nodes.push(spare);
        }
        let (clients, snapshots, nodes, cell) = match opts.cell {
            None => (clients, snapshots, nodes, None),
            Some(bugs) => {
                let (nodes, cell) = cell::setup(opts.seed, bugs, nodes, epsilon);
                // Snapshots of the real database, taken, fetched and restored by the
                // shipped code.
                (Vec::new(), snapshots, nodes, Some(cell))
            }
        };
        let safety_us = opts.safety_ms * 1000;
        let healed_us = safety_us + 10_000_000;
        let end_us = safety_us + opts.liveness_ms * 1000;
        Sim {
            rng,
            now_us: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            members,
            net,
            faults,
            snapshots,
            healed: false,
            track_from_us: healed_us,
            track_until_us: end_us.saturating_sub(10_000_000),
            clients,
            stats: RunStats {
                replicas: n as u64,
                ..RunStats::default()
            },
            agreement: Agreement::new(&founders),
            delivery: DeliveryOrder::default(),
            promises: PromiseMonotonic::default(),
            single_master: SingleMaster::default(),
            liveness: Liveness::default(),
            violation: None,
            cell,
            reconfig,
            opts,
        }
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            event,
        }));
    }

    fn trace(&self, line: impl FnOnce() -> String) {
        if self.opts.trace {
            println!("[{:>11}us] {}", self.now_us, line());
        }
    }

    fn fail(&mut self, result: Result<(), Violation>) {
        if let Err(v) = result {
            if self.violation.is_none() {
                self.trace(|| format!("VIOLATION {v}"));
                self.violation = Some(v);
            }
        }
    }

    fn run(&mut self) {
        self.trace(|| {
            let cfg = &self.nodes[0].cfg;
            let clocks: Vec<i64> = self.nodes.iter().map(|n| n.clock.rate_ppm).collect();
            format!(
                "setup: {} replicas, lease {}ms, heartbeat {}ms, election {}ms + [0, {}ms), window {}, batch {}, \
                 clock ppm {clocks:?}, net {:?}, slow links {:?}, faults {:?}, snapshots {:?}",
                self.members.len(),
                cfg.master_lease_ms,
                cfg.heartbeat_interval_ms,
                cfg.election_timeout_ms,
                cfg.election_jitter_ms,
                cfg.window,
                cfg.batch_commands_max,
                self.net.cfg,
                self.net.slow_links(),
                self.faults,
                self.snapshots,
            )
        });
        for i in 0..self.nodes.len() {
            self.boot(i);
        }
        for c in 0..self.clients.len() {
            let at = self.rng.between(0, 100_000);
            self.wake_client(c, at);
        }
        self.start_cell_clients();
        self.start_reconfig();
        let first_fault = self.rng.between(500_000, 3_000_000);
        self.schedule(first_fault, Event::Fault);
        self.schedule(self.opts.safety_ms * 1000, Event::EndSafety);
        self.schedule(
            (self.opts.safety_ms + self.opts.liveness_ms) * 1000,
            Event::End,
        );
        while let Some(Reverse(next)) = self.queue.pop() {
            assert!(next.at >= self.now_us, "simulated time went backwards");
            self.now_us = next.at;
            self.stats.events += 1;
            let done = matches!(next.event, Event::End);
            self.handle(next.event);
            self.check_single_master();
            self.retire_removed();
            if self.violation.is_some() || done {
                return;
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver { to, from, msg } => self.deliver(to, from, msg),
            Event::Tick { node, gen } => {
                if self.nodes[node].tick_gen == gen && self.nodes[node].is_up() {
                    self.step(node, chubby_server::paxos::Input::Tick);
                }
            }
            Event::Submit { client, gen } => self.submit(client, gen),
            Event::Restart { node } => self.restart(node),
            Event::SnapshotWritten {
                node,
                incarnation,
                state,
            } => self.snapshot_written(node, incarnation, state),
            Event::SnapshotFetched {
                node,
                incarnation,
                from,
                after,
            } => self.snapshot_fetched(node, incarnation, from, after),
            Event::ClientCall {
                node,
                client,
                call,
                request,
            } => self.call_arrives(node, client, call, request),
            Event::ClientReply {
                client,
                call,
                reply,
            } => self.client_reply(client, call, reply),
            Event::ClientWake { client, gen } => self.client_wake(client, gen),
            Event::ClientLost { client, call } => self.client_lost(client, call),
            Event::Housekeep { node, incarnation } => self.housekeep(node, incarnation),
            Event::Resource {
                client,
                generation,
                sent,
            } => self.resource(client, generation, sent),
            Event::Fault => self.inject_fault(),
            Event::Reconfigure => self.reconfigure(),
            Event::Heal { links } => self.net.restore(&links),
            Event::EndSafety => self.end_safety(),
            Event::End => self.finish(),
        }
    }

    fn deliver(&mut self, to: NodeId, from: NodeId, msg: PaxosMsg) {
        // A partition cuts messages sent while it lasts (checked in `Network::transmit`);
        // those already in flight still arrive, like packets queued past the cut.
        let i = self.index(to);
        if !self.nodes[i].is_up() {
            return;
        }
        self.trace(|| format!("{to} <- {from} {msg:?}"));
        self.step(i, chubby_server::paxos::Input::Peer { from, msg });
    }

    fn index(&self, id: NodeId) -> usize {
        self.members
            .iter()
            .position(|&m| m == id)
            .expect("only members are addressed")
    }

    fn check_single_master(&mut self) {
        let now = self.now_us;
        let holders: Vec<_> = self
            .nodes
            .iter()
            .filter_map(|n| {
                let replica = n.paxos()?;
                replica
                    .lease_until(n.clock.local(now))
                    .map(|until| (n.id, until))
            })
            .collect();
        let result = self.single_master.check(now, &holders);
        self.fail(result);
    }

    fn finish(&mut self) {
        let states: Vec<_> = self
            .nodes
            .iter()
            .filter(|n| !n.retired)
            .map(SimNode::final_state)
            .collect();
        self.trace(|| format!("final: {states:?}"));
        let result = self.liveness.check(&states);
        self.fail(result);
        if let Some(cell) = self.cell.as_mut() {
            let result = cell.finish();
            self.fail(result);
            let result = self.sessions_ended();
            self.fail(result);
        }
    }
}

fn random_paxos_config(rng: &mut Rng, members: &[NodeId], bugs: Bugs) -> Config {
    let mut cfg = Config::new(members[0], members.to_vec());
    cfg.master_lease_ms = rng.pick(&[300, 1_000, 2_000]).unwrap_or(1_000);
    cfg.heartbeat_interval_ms = cfg.master_lease_ms / rng.pick(&[3, 4, 8]).unwrap_or(4);
    // The shipped default campaigns as soon as the lease can have lapsed (the drift margin
    // alone); the others wait longer.
    let drift = chubby_server::paxos::config::drift_margin_ms(cfg.master_lease_ms, cfg.drift_ppm);
    let margin_ms = rng
        .pick(&[
            drift,
            drift,
            50,
            cfg.master_lease_ms / 2,
            cfg.master_lease_ms,
        ])
        .unwrap_or(drift);
    cfg.election_timeout_ms = cfg.master_lease_ms + margin_ms;
    // 1 ms makes followers that heard the same heartbeat campaign together.
    cfg.election_jitter_ms = rng
        .pick(&[1, 20, 50, cfg.heartbeat_interval_ms, cfg.master_lease_ms])
        .unwrap_or(50);
    if rng.chance(250_000) {
        // Campaign faster than a lease (safety must not depend on the waiting): candidates are
        // refused until the lease ends and win right after, so the lease arithmetic alone
        // stands between two masters.
        // Still above two and a half heartbeats, so a healthy master is not challenged.
        cfg.election_timeout_ms = (5 * cfg.heartbeat_interval_ms / 2).max(cfg.master_lease_ms / 2);
    }
    cfg.boost_interval_ms = rng.pick(&[700, 5_000, 30_000]).unwrap_or(30_000);
    cfg.retry_interval_ms = rng.pick(&[30, 100, 300]).unwrap_or(100);
    cfg.window = rng.pick(&[1, 2, 4, 16, 32]).unwrap_or(16);
    cfg.batch_commands_max = rng.pick(&[1, 3, 16, 256]).unwrap_or(16);
    cfg.batch_bytes_max = rng.pick(&[64, 4096, 1 << 20]).unwrap_or(4096);
    cfg.catchup_entries_max = rng.pick(&[8, 64]).unwrap_or(64) as u32;
    cfg.bugs = bugs;
    cfg
}
