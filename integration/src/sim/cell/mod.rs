//! `sim cell`: the whole Chubby cell in the simulator. Each replica runs the real database
//! ([`Db`]) and the real master logic ([`Serve`], [`chubby_server::master::Master`]) over
//! its Paxos replica; simulated clients ([`client`]) hold sessions with KeepAlives, the
//! real client cache ([`chubby_client::cache::Cache`]) and lease clock
//! ([`chubby_client::session::LeaseClock`]), and read, write, compare-and-swap and lock
//! files while replicas crash and partitions come and go and clients pause past their
//! grace.
//!
//! ```text
//!  client ──Request──► replica: Serve::on_call ──Propose──► stamp, encode, Paxos Submit
//!         ◄──Reply───           ▲                               │ chosen
//!                               └── Serve::applied ◄── Db::apply ◄┘ (every replica)
//! ```
//!
//! Checkers ([`checks`]): no stale read (cache included), the master expires a session only
//! after its client's local lease ended, one believing holder per lock, a fenced resource
//! sees lock holders in order (lock-delay), and every file's history is linearizable.

pub mod checks;
pub mod client;

use std::collections::BTreeMap;

use chubby_protocol::client_msg::{MasterHint, Reply, Request};
use chubby_protocol::{Ballot, Instant, NodeId, Slot, Value};
use chubby_server::db::{Command, Db, DbConfig};
use chubby_server::master::MasterConfig;
use chubby_server::node::entry::{Entry, Stamper};
use chubby_server::paxos::{Input, Rejection, RoleKind};
use chubby_server::serve::{CallId, ReplicaView, Serve, ServeAction, ServeConfig};

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
}

impl CellBugs {
    /// Names accepted by `sim cell --bug`.
    pub const NAMES: [&'static str; 3] = [
        "client-acks-before-drop",
        "master-skips-cache-wait",
        "lock-delay-ignored",
    ];

    /// Turns on bug `name`; false if unknown.
    pub fn enable(&mut self, name: &str) -> bool {
        match name {
            "client-acks-before-drop" => self.client_acks_before_drop = true,
            "master-skips-cache-wait" => self.master_skips_cache_wait = true,
            "lock-delay-ignored" => self.lock_delay_ignored = true,
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

/// The database and serving state of one replica (lost in a crash).
#[derive(Debug)]
pub(super) struct CellApp {
    pub db: Db,
    pub serve: Serve,
    pub stamper: Stamper,
    /// Calls awaiting replies, by call number: which client.
    pub calls: BTreeMap<CallId, usize>,
    /// Commands to submit once the current step's actions are executed.
    pub queued: Vec<Vec<u8>>,
    /// Serving asked the replica to step down from this epoch (done after the step).
    pub step_down: Option<Ballot>,
}

impl CellApp {
    fn new(bugs: CellBugs, timing: CellTiming, origin: u64) -> CellApp {
        let mut db_cfg = DbConfig::new(client::PRINCIPAL);
        db_cfg.bug_ignore_lock_delay = bugs.lock_delay_ignored;
        CellApp {
            db: Db::new(db_cfg).expect("the default database configuration is valid"),
            serve: Serve::new(
                ServeConfig {
                    master: MasterConfig {
                        session_lease_ms: timing.lease_ms,
                        session_idle_ms: timing.idle_ms,
                        bug_skip_cache_wait: bugs.master_skips_cache_wait,
                    },
                    request_timeout_ms: 10_000,
                },
                origin,
            ),
            stamper: Stamper::default(),
            calls: BTreeMap::new(),
            queued: Vec::new(),
            step_down: None,
        }
    }
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
            let view = self.view(i)?;
            let app = self.nodes[i].cell.as_ref()?;
            let current = view.role == RoleKind::Master && view.lease_held;
            app.serve
                .serving_epoch()
                .filter(|_| current)
                .map(|_| (self.nodes[i].id, app))
        });
        let Some((id, app)) = serving else {
            // The log's liveness checker reports a cell without a master.
            return Ok(());
        };
        let left: Vec<u64> = app.db.sessions().map(|(s, _)| s.0).collect();
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

impl Sim {
    fn view(&self, i: usize) -> Option<ReplicaView> {
        let node = &self.nodes[i];
        let replica = node.replica.as_ref()?;
        let local = node.clock.local(self.now_us);
        Some(ReplicaView {
            role: replica.role(),
            lease_held: replica.lease_until(local).is_some(),
            hint: replica.master_hint().map(|id| MasterHint {
                id,
                addr: id.0.to_string(),
            }),
        })
    }

    fn wall(&self, i: usize) -> Instant {
        let skew = self.cell.as_ref().map_or(0, |c| c.wall_skew_ms[i]);
        Instant(self.now_us / 1000 + skew)
    }

    /// Replica `i` (re)starts: a fresh database (it replays the log) and serving state.
    pub(super) fn cell_start(&mut self, i: usize) {
        let Some(cell) = &self.cell else { return };
        let node = &self.nodes[i];
        let origin = (u64::from(node.id.0) << 32) | node.incarnation;
        let app = CellApp::new(cell.bugs, cell.timing, origin);
        self.nodes[i].cell = Some(app);
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
        if let Some(view) = self.view(i) {
            let now = self.nodes[i].clock.local(self.now_us);
            let wall = self.wall(i);
            let mut out = Vec::new();
            if let Some(app) = self.nodes[i].cell.as_mut() {
                app.serve.tick(&view, &app.db, now, wall, &mut out);
            }
            self.serve_actions(i, out);
            self.flush_submits(i);
        }
        self.schedule(
            self.now_us + HOUSEKEEPING_US,
            Event::Housekeep {
                node: i,
                incarnation,
            },
        );
    }

    /// A value was delivered at replica `i`: its commands are applied to the database.
    pub(super) fn cell_deliver(&mut self, i: usize, slot: Slot, value: &Value) {
        let Some(view) = self.view(i) else { return };
        let now = self.nodes[i].clock.local(self.now_us);
        if self.nodes[i].cell.is_none() {
            return;
        }
        if value.commands.is_empty() {
            if let Some(app) = self.nodes[i].cell.as_mut() {
                app.db.advance_slot(slot);
            }
        }
        for (k, bytes) in value.commands.iter().enumerate() {
            let mut out = Vec::new();
            let mut granted = Vec::new();
            let Some(app) = self.nodes[i].cell.as_mut() else {
                return;
            };
            match Entry::decode(bytes) {
                Ok(Entry::Db {
                    origin,
                    request,
                    mut cmd,
                }) => {
                    app.stamper.note(cmd.now);
                    if cmd.now < app.db.now() {
                        cmd.now = app.db.now();
                    }
                    let applied = app.db.apply(slot, &cmd);
                    // Every grant, immediate or handed to a waiter, is a LockAcquired change.
                    for change in &applied.changes {
                        if let chubby_server::db::Change::LockAcquired { sequencer, .. } = change {
                            granted.push(sequencer.lock_generation);
                        }
                    }
                    let own = (origin == app.serve.origin()).then_some(request);
                    app.serve
                        .applied(&view, &app.db, now, slot, own, &cmd, &applied, &mut out);
                }
                Ok(Entry::DigestCheck { .. }) | Err(_) => app.db.advance_slot(slot),
            }
            for (j, generation) in granted.into_iter().enumerate() {
                if let Some(cell) = self.cell.as_mut() {
                    let result = cell.checks.lock_granted((slot, k, j), generation);
                    self.fail(result);
                }
            }
            self.serve_actions(i, out);
        }
    }

    pub(super) fn cell_rejected(&mut self, i: usize, command: &[u8], reason: &Rejection) {
        let Some(view) = self.view(i) else { return };
        let now = self.nodes[i].clock.local(self.now_us);
        let Ok(Entry::Db {
            origin,
            request,
            cmd,
        }) = Entry::decode(command)
        else {
            return;
        };
        let mut out = Vec::new();
        let Some(app) = self.nodes[i].cell.as_mut() else {
            return;
        };
        if origin != app.serve.origin() {
            return;
        }
        app.serve
            .rejected(&view, &app.db, now, request, &cmd.op, reason, &mut out);
        self.serve_actions(i, out);
    }

    pub(super) fn cell_role(&mut self, i: usize, role: RoleKind, epoch: Option<Ballot>) {
        let Some(view) = self.view(i) else { return };
        let mut out = Vec::new();
        if let Some(app) = self.nodes[i].cell.as_mut() {
            app.serve.role_changed(&view, role, epoch, &mut out);
        }
        self.serve_actions(i, out);
    }

    /// A client's request reaches replica `i`.
    pub(super) fn call_arrives(&mut self, i: usize, client: usize, call: u64, request: Request) {
        let Some(view) = self.view(i) else { return };
        let now = self.nodes[i].clock.local(self.now_us);
        let mut out = Vec::new();
        let Some(app) = self.nodes[i].cell.as_mut() else {
            return;
        };
        app.calls.insert(CallId(call), client);
        app.serve.on_call(
            &view,
            &app.db,
            now,
            client::PRINCIPAL,
            request,
            CallId(call),
            &mut out,
        );
        self.serve_actions(i, out);
        self.flush_submits(i);
    }

    /// Executes what serving asked of replica `i`: replies travel to clients, proposals are
    /// stamped, encoded and queued for the replica.
    fn serve_actions(&mut self, i: usize, out: Vec<ServeAction>) {
        for action in out {
            match action {
                ServeAction::Reply { call, reply } => {
                    let Some(client) = self.nodes[i]
                        .cell
                        .as_mut()
                        .and_then(|app| app.calls.remove(&call))
                    else {
                        continue;
                    };
                    self.send_to_client(self.nodes[i].id, client, call.0, reply);
                }
                ServeAction::Expiring { session } => self.check_expiry(session),
                ServeAction::StepDown { epoch } => {
                    if let Some(app) = self.nodes[i].cell.as_mut() {
                        app.step_down = Some(epoch);
                    }
                }
                ServeAction::Propose { request, epoch, op } => {
                    let wall = self.wall(i);
                    let Some(app) = self.nodes[i].cell.as_mut() else {
                        continue;
                    };
                    let cmd = Command {
                        epoch,
                        now: app.stamper.stamp(wall),
                        op,
                    };
                    let entry = Entry::Db {
                        origin: app.serve.origin(),
                        request,
                        cmd,
                    };
                    if let Ok(bytes) = entry.encode() {
                        app.queued.push(bytes);
                    }
                }
            }
        }
    }

    /// Submits the commands serving proposed during the last step (after that step's
    /// actions, as the real shell does).
    pub(super) fn flush_submits(&mut self, i: usize) {
        loop {
            let Some(app) = self.nodes[i].cell.as_mut() else {
                return;
            };
            if let Some(epoch) = app.step_down.take() {
                self.step(i, Input::StepDown { epoch });
                continue;
            }
            if app.queued.is_empty() {
                return;
            }
            let queued = std::mem::take(&mut app.queued);
            for command in queued {
                if !self.nodes[i].is_up() {
                    return;
                }
                let actions = self.step(
                    i,
                    Input::Submit {
                        command: command.clone(),
                    },
                );
                // Commands a master takes after healing must be delivered everywhere.
                let rejected = actions.iter().any(|a| {
                    matches!(a, chubby_server::paxos::Action::Rejected { command: r, .. } if *r == command)
                });
                let tracking =
                    self.now_us >= self.track_from_us && self.now_us <= self.track_until_us;
                if let (false, true, Some(replica)) =
                    (rejected, tracking, self.nodes[i].replica.as_ref())
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
