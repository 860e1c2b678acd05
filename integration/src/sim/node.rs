//! A simulated replica: the shipped composite ([`Composite`]: Paxos, database, serving,
//! master), its in-memory disk and its drifting clock, and how the simulator executes the
//! composite's actions: in the order the shipped [`Planner`] gives (early sends, one merged
//! persist, the rest), with crash points between them.
//!
//! Its application is a hash chain over delivered values ([`chain`]). Every so many slots
//! it "writes a snapshot" (durable when the write event fires, lost if it crashes first)
//! and then tells the core to truncate; a fetch asked for by the core is served from the
//! source's durable snapshot if the source is up and reachable when the fetch lands.

use chubby_protocol::{Instant, MemberSets, NodeId, PaxosMsg, Slot};
use chubby_server::db::Db;
use chubby_server::paxos::{Action, Config, DurableState, Input, PersistBatch, Replica, RoleKind};
use chubby_server::replica::plan::{Plan, Planner};
use chubby_server::replica::Composite;
use chubby_server::storage::{Loaded, MemStorage, Storage};

use super::checkers::delivery_order::chain;
use super::checkers::liveness::FinalState;
use super::clock::NodeClock;
use super::{Event, Sim};

/// One replica of the simulated cell.
#[derive(Debug)]
pub(super) struct SimNode {
    pub id: NodeId,
    pub cfg: Config,
    pub clock: NodeClock,
    pub storage: MemStorage,
    /// The running replica (none while crashed). In `sim paxos` runs only its Paxos part is
    /// driven; the hash chain below is the application.
    pub replica: Option<Composite>,
    /// How its actions are ordered (the shipped shell's planner; reset by a crash).
    pub planner: Planner,
    pub tick_gen: u64,
    /// False from a wipe until the rebuild finishes: no other disk may be lost meanwhile.
    pub intact_voter: bool,
    /// The application state (lost in a crash).
    pub app: AppState,
    /// The durable snapshot of the application (lost only with the disk).
    pub snapshot: Option<SimSnapshot>,
    /// A snapshot write is under way.
    pub snapshotting: bool,
    /// Bumped by every crash: events of an earlier life are ignored.
    pub incarnation: u64,
    /// `sim cell`: the database and serving state (lost in a crash).
    pub cell: Option<super::cell::CellApp>,
    /// Removed from the cell and stopped for good (never restarted).
    pub retired: bool,
    /// The chosen prefix its disk's log records (lost only with the disk); see
    /// [`SimNode::durably_chosen`].
    pub log_chosen: Slot,
}

/// How long the planner may hold a watermark-only batch (the shipped shell's value).
const CHOSEN_LAG_MAX_MS: u64 = 100;

/// A durable snapshot: the application state and the member sets its creator knew when
/// it took it (they travel with it, as in the shipped snapshot format). In `sim cell` runs
/// it also holds the real database, encoded by the shipped snapshot code.
#[derive(Clone, Debug)]
pub(super) struct SimSnapshot {
    pub state: AppState,
    pub members: MemberSets,
    pub db: Option<std::sync::Arc<Vec<u8>>>,
}

/// The database a `sim cell` snapshot holds, restored by the shipped code (it checks every
/// invariant); `None` in `sim paxos` runs.
fn restore_db(snapshot: &SimSnapshot) -> Result<Option<Db>, String> {
    let Some(bytes) = &snapshot.db else {
        return Ok(None);
    };
    let (db, info) = Db::restore(bytes).map_err(|e| e.to_string())?;
    if info.slot != snapshot.state.applied {
        return Err(format!(
            "database snapshot at {} inside an application snapshot at {}",
            info.slot, snapshot.state.applied
        ));
    }
    Ok(Some(db))
}

/// The simulated application: the slots it applied and the chain hash of their values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct AppState {
    pub applied: Slot,
    pub hash: u64,
}

impl SimNode {
    pub fn new(id: NodeId, cfg: Config, clock: NodeClock) -> SimNode {
        SimNode {
            id,
            cfg,
            clock,
            storage: MemStorage::new(),
            replica: None,
            planner: Planner::new(CHOSEN_LAG_MAX_MS),
            tick_gen: 0,
            intact_voter: true,
            app: AppState::default(),
            snapshot: None,
            snapshotting: false,
            incarnation: 0,
            cell: None,
            retired: false,
            log_chosen: Slot::ZERO,
        }
    }

    /// Every slot through here is known chosen on its disk (log or snapshot): what a crash
    /// keeps, and what the shipped `chubby status` reports as `chosen_through`.
    pub fn durably_chosen(&self) -> Slot {
        let snapshot = self
            .snapshot
            .as_ref()
            .map_or(Slot::ZERO, |s| s.state.applied);
        self.log_chosen.max(snapshot)
    }

    pub fn is_up(&self) -> bool {
        self.replica.is_some()
    }

    /// The Paxos replica, while up.
    pub fn paxos(&self) -> Option<&Replica> {
        self.replica.as_ref().map(Composite::paxos)
    }

    pub fn final_state(&self) -> FinalState {
        let replica = self.paxos();
        FinalState {
            node: self.id,
            up: replica.is_some(),
            voter: replica.is_some_and(Replica::is_voter),
            epoch: replica.and_then(Replica::epoch),
            chosen_through: replica.map(Replica::chosen_through).unwrap_or_default(),
            applied: if replica.is_some() {
                self.app.applied
            } else {
                Slot::ZERO
            },
        }
    }
}

impl Sim {
    /// First start of a member of a new cell: its store is formatted as a voter.
    pub(super) fn boot(&mut self, i: usize) {
        let batch = PersistBatch {
            voter: Some(true),
            ..PersistBatch::default()
        };
        self.nodes[i]
            .storage
            .persist(&batch)
            .expect("memory storage does not fail");
        self.start(i, DurableState::bootstrap());
    }

    pub(super) fn start(&mut self, i: usize, state: DurableState) {
        let node = &mut self.nodes[i];
        node.app = node.snapshot.as_ref().map(|s| s.state).unwrap_or_default();
        let members = node
            .snapshot
            .as_ref()
            .filter(|_| !self.opts.bugs.snapshot_drops_members)
            .map(|s| s.members.clone())
            .unwrap_or_default();
        let app = node.app;
        let id = node.id;
        let replica = match Replica::new(node.cfg.clone(), state, app.applied) {
            Ok(replica) => replica.with_snapshot_members(&members),
            Err(e) => {
                // The log is truncated only after the snapshot is durable.
                let v = super::checkers::violation("snapshot", format!("{id} cannot restart: {e}"));
                self.fail(Err(v));
                return;
            }
        };
        let (cfg, fresh) = self.composite_parts(i);
        let restored = match self.nodes[i].snapshot.as_ref().map(restore_db) {
            Some(Err(e)) => {
                let v = super::checkers::violation("snapshot", format!("{id}: {e}"));
                self.fail(Err(v));
                return;
            }
            Some(Ok(db)) => db,
            None => None,
        };
        let node = &mut self.nodes[i];
        node.replica = Some(Composite::new(cfg, replica, restored.unwrap_or(fresh)));
        node.planner = Planner::new(CHOSEN_LAG_MAX_MS);
        self.cell_start(i);
        let result = self
            .delivery
            .on_start(id, app.applied, app.hash, &self.agreement);
        self.fail(result);
        self.step(i, Input::Tick);
    }

    /// Restarts a crashed replica, possibly after losing or corrupting its disk.
    pub(super) fn restart(&mut self, i: usize) {
        if self.nodes[i].is_up() || self.nodes[i].retired {
            return;
        }
        let others_intact = (0..self.nodes.len())
            .filter(|&j| j != i)
            .all(|j| self.nodes[j].intact_voter);
        let may_lose = !self.healed && others_intact;
        let id = self.nodes[i].id;
        let mut lost = false;
        if may_lose && self.rng.chance(self.faults.wipe_ppm) {
            self.nodes[i]
                .storage
                .wipe()
                .expect("memory storage does not fail");
            self.nodes[i].log_chosen = Slot::ZERO;
            self.nodes[i].snapshot = None;
            self.stats.wipes += 1;
            self.trace(|| format!("{id} restarts with a wiped disk"));
        } else if may_lose && self.rng.chance(self.faults.corrupt_ppm) {
            let (index, bit) = (self.rng.next_u64() as usize, self.rng.next_u64() as usize);
            self.nodes[i].storage.corrupt_record(index, bit);
        }
        let state = match self.nodes[i].storage.load() {
            Ok(Loaded::State(state)) => state,
            Ok(Loaded::Empty) => {
                lost = true;
                DurableState::lost()
            }
            Err(e) => {
                self.trace(|| {
                    format!("{id} found corruption on start: {e}; rebuilding from peers")
                });
                self.stats.corruptions += 1;
                self.nodes[i]
                    .storage
                    .wipe()
                    .expect("memory storage does not fail");
                self.nodes[i].log_chosen = Slot::ZERO;
                // Like the real shell: a store that starts over keeps no old snapshot.
                self.nodes[i].snapshot = None;
                lost = true;
                DurableState::lost()
            }
        };
        if lost {
            self.nodes[i].intact_voter = false;
            let batch = PersistBatch {
                voter: Some(false),
                ..PersistBatch::default()
            };
            self.nodes[i]
                .storage
                .persist(&batch)
                .expect("memory storage does not fail");
        }
        let result = self.promises.on_restart(id, state.promised, lost);
        self.fail(result);
        self.trace(|| {
            format!(
                "{id} restarts (voter {}, promised {})",
                state.voter, state.promised
            )
        });
        self.start(i, state);
    }

    pub(super) fn crash(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if node.replica.take().is_some() {
            node.cell = None;
            node.planner.crash();
            node.storage.crash();
            node.tick_gen += 1;
            node.incarnation += 1;
            node.snapshotting = false;
            self.stats.crashes += 1;
            let id = node.id;
            self.trace(|| format!("{id} crashes"));
            let downtime = self.rng.between(50_000, 4_000_000);
            self.schedule(self.now_us + downtime, Event::Restart { node: i });
        }
    }

    /// Steps replica `i` with `input` at its local time and executes what it asks, as the
    /// shipped planner orders it. Returns the commands Paxos rejected in this step.
    pub(super) fn step(&mut self, i: usize, input: Input) -> Vec<Vec<u8>> {
        let is_tick = input == Input::Tick;
        let ((), rejected) = self.drive(i, is_tick, |replica, local, actions| {
            replica.step(local, input, actions);
        });
        rejected
    }

    /// Runs `f` on replica `i`'s composite at its local time, then checks its invariants
    /// and executes the actions `f` produced as the shipped planner orders them. Returns
    /// `f`'s result (`R::default()` when the replica is down) and the commands Paxos
    /// rejected.
    pub(super) fn drive<R: Default>(
        &mut self,
        i: usize,
        is_tick: bool,
        f: impl FnOnce(&mut Composite, Instant, &mut Vec<Action>) -> R,
    ) -> (R, Vec<Vec<u8>>) {
        let local = self.nodes[i].clock.local(self.now_us);
        let mut actions = Vec::new();
        let Some(replica) = self.nodes[i].replica.as_mut() else {
            return (R::default(), Vec::new());
        };
        let result = f(replica, local, &mut actions);
        replica.check_invariants();
        // A tick must move every due timer into the future, or the replica spins.
        if is_tick && replica.paxos().next_deadline().is_some_and(|d| d <= local) {
            let detail = format!(
                "{} left a timer due at {local} after a tick",
                self.nodes[i].id
            );
            self.fail(Err(super::checkers::violation("timer_progress", detail)));
        }
        let rejected = actions
            .iter()
            .filter_map(|a| match a {
                Action::Rejected { command, .. } => Some(command.clone()),
                _ => None,
            })
            .collect();
        let plan = self.nodes[i].planner.plan(local, actions);
        self.execute(i, plan);
        self.maybe_snapshot(i);
        self.reschedule_tick(i);
        self.flush_submits(i);
        (result, rejected)
    }

    /// Starts a snapshot write when enough was applied since the last one.
    fn maybe_snapshot(&mut self, i: usize) {
        let every = self.snapshots.every;
        let node = &mut self.nodes[i];
        let last = node
            .snapshot
            .as_ref()
            .map(|s| s.state.applied)
            .unwrap_or_default();
        // Not while a watermark-only batch is held (see the planner's docs).
        if every == 0
            || node.snapshotting
            || !node.is_up()
            || node.planner.holds_watermark()
            || node.app.applied.0 < last.0 + every
        {
            return;
        }
        let Some(core) = node.replica.as_ref() else {
            return;
        };
        let members = core.paxos().membership().to_wire();
        // `sim cell`: the real database, frozen and encoded as the node shell does.
        let db = (self.cell.is_some() && core.db().applied_slot() == node.app.applied)
            .then(|| std::sync::Arc::new(core.db().freeze().encode(&[], &members)));
        if self.cell.is_some() && db.is_none() {
            return;
        }
        node.snapshotting = true;
        let state = SimSnapshot {
            state: node.app,
            members,
            db,
        };
        let incarnation = node.incarnation;
        let at = self.now_us + self.rng.between(100, 20_000);
        self.schedule(
            at,
            Event::SnapshotWritten {
                node: i,
                incarnation,
                state,
            },
        );
    }

    /// A snapshot write finished: it is durable; the core may truncate.
    pub(super) fn snapshot_written(&mut self, i: usize, incarnation: u64, snapshot: SimSnapshot) {
        let node = &mut self.nodes[i];
        if node.incarnation != incarnation || !node.is_up() {
            return;
        }
        node.snapshotting = false;
        let state = snapshot.state;
        if node
            .snapshot
            .as_ref()
            .is_some_and(|s| s.state.applied >= state.applied)
        {
            return;
        }
        node.snapshot = Some(snapshot);
        self.stats.snapshots += 1;
        let id = node.id;
        let through = Slot(state.applied.0.saturating_sub(self.snapshots.keep));
        self.trace(|| {
            format!(
                "{id} snapshot at {} durable; truncating through {through}",
                state.applied
            )
        });
        self.step(i, Input::SnapshotTaken { slot: through });
    }

    /// A fetch asked for by replica `i` lands: served from `from`'s durable snapshot.
    pub(super) fn snapshot_fetched(
        &mut self,
        i: usize,
        incarnation: u64,
        from: NodeId,
        after: Slot,
    ) {
        if self.nodes[i].incarnation != incarnation || !self.nodes[i].is_up() {
            return;
        }
        let id = self.nodes[i].id;
        let j = self.index(from);
        let reachable = self.nodes[j].is_up()
            && !self.net.is_blocked(id, from)
            && !self.net.is_blocked(from, id);
        let offered = self.nodes[j]
            .snapshot
            .clone()
            .filter(|s| reachable && s.state.applied > after);
        let Some(snapshot) = offered else {
            self.trace(|| format!("{id} snapshot fetch from {from} failed"));
            self.step(i, Input::SnapshotFetchFailed);
            return;
        };
        let state = snapshot.state;
        let members = if self.opts.bugs.snapshot_drops_members {
            MemberSets::default()
        } else {
            snapshot.members.clone()
        };
        if state.applied > self.nodes[i].app.applied {
            // `sim cell`: the fetched database replaces the applied one, as in the node.
            match restore_db(&snapshot) {
                Ok(Some(db)) => {
                    if let Some(core) = self.nodes[i].replica.as_mut() {
                        drop(core.install(db));
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    let v = super::checkers::violation("snapshot", format!("{id}: {e}"));
                    self.fail(Err(v));
                    return;
                }
            }
            let node = &mut self.nodes[i];
            node.app = state;
            if node
                .snapshot
                .as_ref()
                .is_none_or(|s| s.state.applied < state.applied)
            {
                node.snapshot = Some(snapshot);
            }
            let result = self
                .delivery
                .on_install(id, state.applied, state.hash, &self.agreement);
            self.fail(result);
            self.stats.snapshot_installs += 1;
        }
        self.trace(|| format!("{id} installed {from}'s snapshot at {}", state.applied));
        self.step(
            i,
            Input::SnapshotInstalled {
                slot: state.applied,
                members,
            },
        );
    }

    fn reschedule_tick(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let Some(replica) = node.replica.as_ref().map(Composite::paxos) else {
            return;
        };
        if replica.is_voter() {
            node.intact_voter = true;
        }
        node.tick_gen += 1;
        if let Some(deadline) = replica.next_deadline() {
            let at = node.clock.true_time_of(deadline).max(self.now_us + 1);
            let gen = node.tick_gen;
            self.schedule(at, Event::Tick { node: i, gen });
        }
    }

    /// Executes one round's plan, with a chance of crashing between any two actions or in
    /// the middle of the persist.
    fn execute(&mut self, i: usize, plan: Plan) {
        let Plan {
            early,
            persist,
            after,
        } = plan;
        let mut k = 0;
        for action in early {
            if self.crash_point(i, k) {
                return;
            }
            k += 1;
            self.execute_one(i, action);
        }
        if let Some(batch) = persist {
            if self.crash_point(i, k) {
                return;
            }
            k += 1;
            if !self.healed && self.rng.chance(self.faults.torn_persist_ppm) {
                self.nodes[i].storage.write_unsynced(&batch);
                self.stats.torn_persists += 1;
                self.crash(i);
                return;
            }
            self.persist(i, &batch);
        }
        for action in after {
            if self.crash_point(i, k) {
                return;
            }
            k += 1;
            self.execute_one(i, action);
        }
    }

    /// Maybe crashes replica `i` before its action number `k` (never before the first).
    fn crash_point(&mut self, i: usize, k: usize) -> bool {
        if !self.healed && k > 0 && self.rng.chance(self.faults.crash_between_actions_ppm) {
            self.crash(i);
            return true;
        }
        !self.nodes[i].is_up()
    }

    fn execute_one(&mut self, i: usize, action: Action) {
        let id = self.nodes[i].id;
        match action {
            Action::Persist(batch) => self.persist(i, &batch),
            Action::Send { to, msg } => self.send(id, to, &msg),
            Action::Deliver { slot, value } => {
                let result = self.delivery.on_deliver(id, slot, &value, &self.agreement);
                self.fail(result);
                let app = &mut self.nodes[i].app;
                app.applied = slot;
                app.hash = chain(app.hash, &value);
                for command in &value.commands {
                    self.liveness.on_deliver(slot, command);
                    self.on_delivered(id, command);
                }
                if self.cell.is_some() {
                    let (local, wall) = (self.nodes[i].clock.local(self.now_us), self.wall(i));
                    let mut effects = Vec::new();
                    if let Some(core) = self.nodes[i].replica.as_mut() {
                        core.deliver(local, wall, slot, &value, &mut effects);
                    }
                    self.cell_effects(i, effects);
                    let diverged = self.nodes[i]
                        .replica
                        .as_ref()
                        .and_then(|core| core.divergence().map(str::to_owned));
                    if let Some(what) = diverged {
                        let v = super::checkers::violation("digest", format!("{id}: {what}"));
                        self.fail(Err(v));
                    }
                }
            }
            Action::Rejected { command, reason } => {
                if self.cell.is_some() {
                    let (local, wall) = (self.nodes[i].clock.local(self.now_us), self.wall(i));
                    let mut effects = Vec::new();
                    if let Some(core) = self.nodes[i].replica.as_mut() {
                        core.rejected(local, wall, &command, &reason, &mut effects);
                    }
                    self.cell_effects(i, effects);
                } else {
                    self.on_rejected(&command, &reason);
                }
            }
            Action::FetchSnapshot { from, after } => {
                let incarnation = self.nodes[i].incarnation;
                let at = self.now_us + self.rng.between(500, 30_000);
                let event = Event::SnapshotFetched {
                    node: i,
                    incarnation,
                    from,
                    after,
                };
                self.schedule(at, event);
            }
            Action::Role { role, epoch } => {
                if role == RoleKind::Master {
                    self.stats.elections += 1;
                }
                self.trace(|| format!("{id} is now {role:?} {epoch:?}"));
                if self.cell.is_some() {
                    let (local, wall) = (self.nodes[i].clock.local(self.now_us), self.wall(i));
                    let mut effects = Vec::new();
                    if let Some(core) = self.nodes[i].replica.as_mut() {
                        core.role_changed(local, wall, role, epoch, &mut effects);
                    }
                    self.cell_effects(i, effects);
                }
            }
        }
    }

    fn persist(&mut self, i: usize, batch: &PersistBatch) {
        let id = self.nodes[i].id;
        self.nodes[i]
            .storage
            .persist(batch)
            .expect("memory storage does not fail");
        if let Some(chosen) = batch.chosen_through {
            let node = &mut self.nodes[i];
            node.log_chosen = node.log_chosen.max(chosen);
        }
        if let Some(promised) = batch.promised {
            let result = self.promises.on_persist_promise(id, promised);
            self.fail(result);
        }
        if batch.voter == Some(true) && self.stats.events > 0 {
            self.stats.rebuilds += 1;
        }
        let result = self.agreement.on_persist(id, batch);
        self.fail(result);
    }

    fn send(&mut self, from: NodeId, to: NodeId, msg: &PaxosMsg) {
        if let PaxosMsg::Promise { ballot, .. } = msg {
            self.promises.on_send_promise(from, *ballot);
        }
        for delay in self.net.transmit(&mut self.rng, from, to) {
            let event = Event::Deliver {
                to,
                from,
                msg: msg.clone(),
            };
            self.schedule(self.now_us + delay, event);
        }
    }
}
