//! `sim cell`: the whole Chubby cell in the simulator. Each replica runs the shipped
//! composite ([`chubby_server::replica::Composite`]: Paxos, the database, serving and the master's session logic,
//! with the same entry stamping, digest checks and step-downs as the replica process);
//! simulated clients ([`client`]) hold sessions with KeepAlives, the
//! real client cache ([`chubby_client::cache::Cache`]) and lease clock
//! ([`chubby_client::session::LeaseClock`]), and read, write, compare-and-swap and lock
//! files while replicas crash and partitions come and go and clients pause past their
//! grace.
//!
//! ```text
//!  client ──Request──► Composite::on_call ──queued Submit──► Composite::step (Paxos)
//!         ◄──Effect::Reply──   ▲                                   │ chosen
//!                              └──── Composite::deliver ◄──────────┘ (every replica)
//! ```
//!
//! Checkers ([`checks`]): no stale read (cache included), the master expires a session only
//! after its client's local lease ended, one believing holder per lock, a fenced resource
//! sees lock holders in order (lock-delay), and every file's history is linearizable.

pub mod checks;
pub mod client;

use std::collections::BTreeMap;

use chubby_protocol::client_msg::{Reply, Request};
use chubby_protocol::{Instant, NodeId};
use chubby_server::db::{Db, DbConfig};
use chubby_server::master::MasterConfig;
use chubby_server::paxos::{Input, RoleKind};
use chubby_server::replica::{CompositeConfig, Effect};
use chubby_server::serve::{CallId, ServeConfig};

use super::{Event, Sim};
use client::SimClient;

/// Deliberate bugs the cell checkers must catch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CellBugs {
    /// The client acknowledges an invalidation before it drops the cached data.
    pub client_acks_before_drop: bool,
    /// The master proposes writes without waiting for caches to be invalidated.
    pub master_skips_cache_wait: bool,
    /// Lock-delay is ignored: a lock of an expired session is free at once.
    pub lock_delay_ignored: bool,
    /// The database forgets the outcomes of numbered calls: a copy sent again after a
    /// fail-over is applied a second time.
    pub forget_call_outcomes: bool,
}

impl CellBugs {
    /// Names accepted by `sim cell --bug`.
    pub const NAMES: [&'static str; 4] = [
        "client-acks-before-drop",
        "master-skips-cache-wait",
        "lock-delay-ignored",
        "forget-call-outcomes",
    ];

    /// Turns on bug `name`; false if unknown.
    pub fn enable(&mut self, name: &str) -> bool {
        match name {
            "client-acks-before-drop" => self.client_acks_before_drop = true,
            "master-skips-cache-wait" => self.master_skips_cache_wait = true,
            "lock-delay-ignored" => self.lock_delay_ignored = true,
            "forget-call-outcomes" => self.forget_call_outcomes = true,
            _ => return false,
        }
        true
    }
}

/// Session and lock timing of one run, drawn per seed.
#[derive(Clone, Copy, Debug)]
pub(super) struct CellTiming {
    pub lease_ms: u64,
    pub grace_ms: u64,
    pub lock_delay_ms: u64,
    pub idle_ms: u64,
    /// How long a client waits for the answer to a numbered call before it sends a copy
    /// (0: a lease plus the call slack, like the library's time-out). Short waits stand for
    /// the library giving a call up on a silent master (conn.rs) while its first copy may
    /// still be applied: copies then race in flight, and only the log's record of the
    /// number keeps the call to one application.
    pub give_up_ms: u64,
}

/// The cell part of a run.
pub(super) struct CellSim {
    pub bugs: CellBugs,
    pub timing: CellTiming,
    pub clients: Vec<SimClient>,
    pub next_call: u64,
    /// Per replica: the skew of its wall clock (the one commands are stamped with).
    pub wall_skew_ms: Vec<u64>,
    pub checks: checks::Checks,
    pub stats: CellStats,
}

impl CellSim {
    /// The end of the run: file histories must be linearizable.
    pub(super) fn finish(&mut self) -> Result<(), super::checkers::Violation> {
        let result = self.checks.linearizability();
        self.stats.histories = self.checks.linearized;
        self.stats.undecided = self.checks.undecided;
        result
    }
}

/// What a cell run covered.
#[derive(Clone, Debug, Default)]
pub struct CellStats {
    /// Client operations completed with a known result.
    pub ops: u64,
    /// Reads answered from the client cache.
    pub cache_hits: u64,
    /// Operations whose outcome stayed unknown.
    pub unknown: u64,
    /// Copies of numbered calls sent again after their outcome became unknown.
    pub resent: u64,
    /// Handles announced again to a new master (Chubby §2.9).
    pub reannounced: u64,
    /// Sessions created.
    pub sessions: u64,
    /// Sessions that expired under their client.
    pub expiries: u64,
    /// Locks acquired.
    pub locks: u64,
    /// Directory trees moved by Rename.
    pub tree_moves: u64,
    /// Client pauses.
    pub pauses: u64,
    /// Master fail-overs a client followed.
    pub fail_overs: u64,
    /// File histories found linearizable.
    pub histories: u64,
    /// File histories the search gave up on (budget).
    pub undecided: u64,
}

impl CellStats {
    /// Adds `o` into `self`.
    pub fn add(&mut self, o: &CellStats) {
        self.ops += o.ops;
        self.cache_hits += o.cache_hits;
        self.unknown += o.unknown;
        self.resent += o.resent;
        self.reannounced += o.reannounced;
        self.sessions += o.sessions;
        self.expiries += o.expiries;
        self.locks += o.locks;
        self.tree_moves += o.tree_moves;
        self.pauses += o.pauses;
        self.fail_overs += o.fail_overs;
        self.histories += o.histories;
        self.undecided += o.undecided;
    }
}

/// What the simulator keeps per replica beside its composite (lost in a crash).
#[derive(Debug, Default)]
pub(super) struct CellApp {
    /// Calls awaiting replies, by call number: which client.
    pub calls: BTreeMap<CallId, usize>,
}

/// Draws the cell part of seed `seed`'s run (from a stream of its own, so the Paxos draws
/// stay what they were): session timing, clients and their clocks. Replica clocks are
/// brought within half the drift bound, and clients drawn within the other half: the
/// client's lease margin (1%) covers the drift between a client and the master.
pub(super) fn setup(
    seed: u64,
    bugs: CellBugs,
    mut nodes: Vec<super::node::SimNode>,
    epsilon_ppm: i64,
) -> (Vec<super::node::SimNode>, CellSim) {
    let mut rng = super::rng::Rng::new(seed ^ 0xC0FF_EE00_CE11_5EED);
    let half = epsilon_ppm / 2;
    for node in &mut nodes {
        node.clock.rate_ppm /= 2;
    }
    let timing = CellTiming {
        lease_ms: rng.pick(&[1_000, 2_000, 4_000]).unwrap_or(2_000),
        grace_ms: rng.pick(&[1_000, 3_000]).unwrap_or(1_000),
        lock_delay_ms: rng.pick(&[1_000, 2_000, 3_000]).unwrap_or(1_000),
        idle_ms: 60_000,
        give_up_ms: 0,
    };
    let count = rng.between(2, 4) as usize;
    let clients = (0..count)
        .map(|c| {
            let rate_ppm = rng.between(0, 2 * half.unsigned_abs()) as i64 - half;
            let clock = super::clock::NodeClock {
                offset_us: rng.between(0, 10_000_000),
                rate_ppm,
            };
            SimClient::new(c, clock, c % nodes.len())
        })
        .collect();
    let wall_skew_ms = nodes.iter().map(|_| rng.between(0, 50)).collect();
    // Drawn last, so that the draws above stay what they were.
    let mut timing = timing;
    timing.give_up_ms = rng.pick(&[0, 0, 20, 60, 200]).unwrap_or(0);
    let cell = CellSim {
        bugs,
        timing,
        clients,
        next_call: 0,
        wall_skew_ms,
        checks: checks::Checks::default(),
        stats: CellStats::default(),
    };
    (nodes, cell)
}

impl Sim {
    /// Liveness of sessions: clients stop 10 s before the end (their sessions' leases and
    /// the slack of a parked KeepAlive are shorter), so by then the serving master must have
    /// ended every session, freeing every lock and ephemeral file.
    pub(super) fn sessions_ended(&self) -> Result<(), super::checkers::Violation> {
        // The master holding its lease now (a deposed one may still believe it serves).
        let serving = (0..self.nodes.len()).find_map(|i| {
            let core = self.nodes[i].replica.as_ref()?;
            let view = core.view(self.nodes[i].clock.local(self.now_us));
            let current = view.role == RoleKind::Master && view.lease_held;
            core.serve()
                .serving_epoch()
                .filter(|_| current)
                .map(|_| (self.nodes[i].id, core))
        });
        let Some((id, core)) = serving else {
            // The log's liveness checker reports a cell without a master.
            return Ok(());
        };
        let left: Vec<u64> = core.db().sessions().map(|(s, _)| s.0).collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(super::checkers::violation(
                "sessions_end",
                format!(
                    "at the end, long after every client stopped, master {id} still has \
                     sessions {left:?}"
                ),
            ))
        }
    }
}

/// Housekeeping period of a replica (the real shell's is 50 ms).
const HOUSEKEEPING_US: u64 = 50_000;
/// How often a master proposes a checksum, so digest checks run in every seed.
const CHECKSUM_INTERVAL_MS: u64 = 2_000;

impl Sim {
    pub(super) fn wall(&self, i: usize) -> Instant {
        let skew = self.cell.as_ref().map_or(0, |c| c.wall_skew_ms[i]);
        Instant(self.now_us / 1000 + skew)
    }

    /// The configuration and the fresh database replica `i`'s composite starts with (it
    /// replays the log): `sim cell` draws session timing and bugs, `sim paxos` drives only
    /// the Paxos part and takes defaults.
    pub(super) fn composite_parts(&self, i: usize) -> (CompositeConfig, Db) {
        let node = &self.nodes[i];
        let origin = (u64::from(node.id.0) << 32) | node.incarnation;
        let (timing, bugs) = match &self.cell {
            Some(cell) => (cell.timing, cell.bugs),
            None => (
                CellTiming {
                    lease_ms: 2_000,
                    grace_ms: 1_000,
                    lock_delay_ms: 1_000,
                    idle_ms: 60_000,
                    give_up_ms: 0,
                },
                CellBugs::default(),
            ),
        };
        let mut db_cfg = DbConfig::new(client::PRINCIPAL);
        db_cfg.bug_ignore_lock_delay = bugs.lock_delay_ignored;
        db_cfg.bug_forget_call_outcomes = bugs.forget_call_outcomes;
        let db = Db::new(db_cfg).expect("the default database configuration is valid");
        let cfg = CompositeConfig {
            serve: ServeConfig {
                master: MasterConfig {
                    session_lease_ms: timing.lease_ms,
                    session_idle_ms: timing.idle_ms,
                    bug_skip_cache_wait: bugs.master_skips_cache_wait,
                },
                request_timeout_ms: 10_000,
            },
            origin,
            checksum_interval_ms: CHECKSUM_INTERVAL_MS,
            client_addrs: self
                .members
                .iter()
                .map(|id| (*id, id.0.to_string()))
                .collect(),
        };
        (cfg, db)
    }

    /// Replica `i` (re)starts: no call of an earlier life is awaited.
    pub(super) fn cell_start(&mut self, i: usize) {
        if self.cell.is_none() {
            return;
        }
        self.nodes[i].cell = Some(CellApp::default());
        let incarnation = self.nodes[i].incarnation;
        self.schedule(
            self.now_us + HOUSEKEEPING_US,
            Event::Housekeep {
                node: i,
                incarnation,
            },
        );
    }

    pub(super) fn housekeep(&mut self, i: usize, incarnation: u64) {
        if self.nodes[i].incarnation != incarnation || self.nodes[i].cell.is_none() {
            return;
        }
        let (local, wall) = (self.nodes[i].clock.local(self.now_us), self.wall(i));
        let mut effects = Vec::new();
        if let Some(core) = self.nodes[i].replica.as_mut() {
            core.tick(local, wall, &mut effects);
        }
        self.cell_effects(i, effects);
        self.flush_submits(i);
        self.schedule(
            self.now_us + HOUSEKEEPING_US,
            Event::Housekeep {
                node: i,
                incarnation,
            },
        );
    }

    /// A client's request reaches replica `i`.
    pub(super) fn call_arrives(&mut self, i: usize, client: usize, call: u64, request: Request) {
        let (local, wall) = (self.nodes[i].clock.local(self.now_us), self.wall(i));
        let mut effects = Vec::new();
        let node = &mut self.nodes[i];
        let (Some(core), Some(app)) = (node.replica.as_mut(), node.cell.as_mut()) else {
            return;
        };
        app.calls.insert(CallId(call), client);
        core.on_call(
            local,
            wall,
            client::PRINCIPAL,
            request,
            CallId(call),
            &mut effects,
        );
        self.cell_effects(i, effects);
        self.flush_submits(i);
    }

    /// Executes what replica `i`'s composite asked for: replies travel to clients; expiries
    /// and lock grants are checked, and so are the composite's invariants.
    pub(super) fn cell_effects(&mut self, i: usize, effects: Vec<Effect>) {
        // Every layer's invariants after every step that reached serving or the database.
        if let Some(core) = self.nodes[i].replica.as_ref() {
            core.check_invariants();
        }
        // Grants per (slot, command), numbered in the order the database made them.
        let mut grants: BTreeMap<(chubby_protocol::Slot, usize), usize> = BTreeMap::new();
        for effect in effects {
            match effect {
                Effect::Reply { call, reply } => {
                    let Some(client) = self.nodes[i]
                        .cell
                        .as_mut()
                        .and_then(|app| app.calls.remove(&call))
                    else {
                        continue;
                    };
                    self.send_to_client(self.nodes[i].id, client, call.0, reply);
                }
                Effect::Expiring { session } => self.check_expiry(session),
                Effect::LockGranted {
                    slot,
                    command,
                    generation,
                } => {
                    let j = grants.entry((slot, command)).or_default();
                    let at = (slot, command, *j);
                    *j += 1;
                    if let Some(cell) = self.cell.as_mut() {
                        let result = cell.checks.lock_granted(at, generation);
                        self.fail(result);
                    }
                }
                Effect::Proposed { .. }
                | Effect::OwnApplied { .. }
                | Effect::OwnRejected { .. }
                | Effect::MastershipEnded => {}
            }
        }
    }

    /// Steps the Paxos inputs replica `i`'s composite queued (proposals, step-downs), after
    /// the step that queued them, as the real shell does in its next round.
    pub(super) fn flush_submits(&mut self, i: usize) {
        loop {
            let Some(core) = self.nodes[i].replica.as_mut() else {
                return;
            };
            let queued = core.take_queued();
            if queued.is_empty() {
                return;
            }
            for input in queued {
                if !self.nodes[i].is_up() {
                    return;
                }
                let Input::Submit { command } = input else {
                    self.step(i, input);
                    continue;
                };
                let rejected = self.step(
                    i,
                    Input::Submit {
                        command: command.clone(),
                    },
                );
                // Commands a master takes after healing must be delivered everywhere.
                let tracking =
                    self.now_us >= self.track_from_us && self.now_us <= self.track_until_us;
                if let (false, true, Some(replica)) =
                    (rejected.contains(&command), tracking, self.nodes[i].paxos())
                {
                    if let Some(epoch) = replica.epoch() {
                        let id = self.nodes[i].id;
                        self.liveness.on_taken(command, id, epoch);
                    }
                }
            }
        }
    }

    fn send_to_client(&mut self, from: NodeId, client: usize, call: u64, reply: Reply) {
        let to = client::net_id(client);
        // A stream transport: delayed or lost (the connection broke, which the client
        // learns when QUIC's idle timeout fires), never duplicated.
        match self.net.transmit(&mut self.rng, from, to).first().copied() {
            Some(delay) => self.schedule(
                self.now_us + delay,
                Event::ClientReply {
                    client,
                    call,
                    reply,
                },
            ),
            None => self.schedule(
                self.now_us + client::CONNECTION_LOST_US,
                Event::ClientLost { client, call },
            ),
        }
    }
}
