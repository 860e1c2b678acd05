//! The core loop: owns the Paxos replica, the database, the store and the transport, and
//! runs every input through them in one task (see the module docs of [`super`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chubby_protocol::cell::ReplicaConfig;
use chubby_protocol::client_msg::{CallError, Reply};
use chubby_protocol::{Instant, MemberAddr, NodeId, PaxosMsg, Slot};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use super::metrics::{Metrics, PageRequest};
use super::snapshots::SnapshotEvent;
use super::NodeError;
use crate::db::Db;
use crate::master::MasterConfig;
use crate::paxos::{Action, Input, PersistBatch, Replica};
use crate::replica::plan::Planner;
use crate::replica::{Composite, CompositeConfig, Effect};
use crate::serve::{CallId, ServeConfig};
use crate::storage::snapshot_file::SnapshotFile;
use crate::storage::{Storage, WalStorage};
use crate::transport::client_port::ClientCall;
use crate::transport::{PeerAddr, PeerTransport};

/// Inputs stepped before the actions they caused are executed (bounds a group commit).
const INPUTS_PER_ROUND: usize = 1024;
/// Housekeeping period: request time-outs, lock-delay Noops, checksum requests.
const HOUSEKEEPING: Duration = Duration::from_millis(50);
/// How long a batch that only raises the chosen watermark may wait for the next sync, ms.
const CHOSEN_LAG_MAX_MS: u64 = 100;

/// What [`Core::new`] needs.
pub(super) struct CoreParts {
    pub cfg: ReplicaConfig,
    pub replica: Replica,
    pub db: Db,
    pub storage: WalStorage,
    pub transport: PeerTransport,
    pub origin: u64,
    pub snapshots: SnapshotFile,
    pub members: Vec<NodeId>,
}

/// A call whose reply is not sent yet: where to, and what to count it as.
pub(super) struct Parked {
    pub tx: oneshot::Sender<Reply>,
    pub call: &'static str,
    pub since: std::time::Instant,
}

pub(super) struct Core {
    pub(super) cfg: ReplicaConfig,
    pub(super) me: NodeId,
    /// Paxos, database, serving and master logic (pure; see crate::replica).
    pub(super) composite: Composite,
    storage: Option<WalStorage>,
    pub(super) transport: PeerTransport,
    /// Reply channels of calls serving has not answered yet.
    pub(super) replies: BTreeMap<CallId, Parked>,
    /// What the metrics endpoint shows.
    pub(super) metrics: Metrics,
    /// The last backup taken here, read in chunks by `chubby admin backup`.
    pub(super) backup: Option<(Slot, Arc<Vec<u8>>)>,
    pub(super) next_call: u64,
    /// Client calls served, KeepAlives and status calls not counted (StatusReport).
    pub(super) client_calls: u64,
    start: tokio::time::Instant,
    pub(super) inputs: Vec<Input>,
    actions: Vec<Action>,
    pub(super) snapshots: SnapshotFile,
    pub(super) members: Vec<NodeId>,
    /// A snapshot of our own is being written.
    pub(super) snapshotting: bool,
    /// The next own snapshot is due once this slot is applied.
    pub(super) snapshot_due: Slot,
    pub(super) snap_tx: mpsc::UnboundedSender<SnapshotEvent>,
    snap_rx: Option<mpsc::UnboundedReceiver<SnapshotEvent>>,
    /// The addresses learned from membership changes that the transport was given.
    peer_addrs: BTreeMap<NodeId, MemberAddr>,
    /// The order a round's actions are executed in (pure; see crate::replica::plan).
    pub(super) planner: Planner,
    /// Every slot through here is known chosen on disk: a crash keeps that knowledge. The
    /// replica's own chosen prefix may run ahead of it while a watermark-only batch waits
    /// for the next sync (`CHOSEN_LAG_MAX_MS`); `chubby status` reports the lower of the two,
    /// so "every member knows the new set in effect" survives a crash (docs/paxos.md).
    pub(super) durable_chosen: Slot,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl Core {
    pub(super) fn new(parts: CoreParts) -> Core {
        let me = NodeId(parts.cfg.id);
        let (snap_tx, snap_rx) = mpsc::unbounded_channel();
        let snapshot_due =
            Slot(parts.snapshots.latest().0 + parts.cfg.tuning.snapshot_every_entries);
        let durable_chosen = parts.replica.chosen_through();
        let composite = Composite::new(
            CompositeConfig {
                serve: ServeConfig {
                    master: MasterConfig {
                        session_lease_ms: parts.cfg.tuning.session_lease_ms,
                        session_idle_ms: parts.cfg.tuning.session_idle_ms,
                        ..MasterConfig::default()
                    },
                    request_timeout_ms: parts.cfg.tuning.request_timeout_ms,
                },
                origin: parts.origin,
                checksum_interval_ms: parts.cfg.tuning.checksum_interval_ms,
                client_addrs: parts
                    .cfg
                    .members
                    .iter()
                    .map(|m| (NodeId(m.id), m.client_endpoint()))
                    .collect(),
            },
            parts.replica,
            parts.db,
        );
        Core {
            me,
            composite,
            storage: Some(parts.storage),
            transport: parts.transport,
            replies: BTreeMap::new(),
            metrics: Metrics::default(),
            backup: None,
            next_call: 0,
            client_calls: 0,
            start: tokio::time::Instant::now(),
            inputs: Vec::new(),
            actions: Vec::new(),
            snapshots: parts.snapshots,
            members: parts.members,
            snapshotting: false,
            snapshot_due,
            durable_chosen,
            snap_tx,
            snap_rx: Some(snap_rx),
            peer_addrs: BTreeMap::new(),
            planner: Planner::new(CHOSEN_LAG_MAX_MS),
            cfg: parts.cfg,
        }
    }

    /// Milliseconds since this process started: the Paxos clock.
    pub(super) fn now(&self) -> Instant {
        let ms = self.start.elapsed().as_millis();
        Instant(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// Wall-clock milliseconds since the Unix epoch: the database's clock, before stamping.
    pub(super) fn wall() -> Instant {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        Instant(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    pub(super) async fn run(
        mut self,
        mut peer_rx: mpsc::Receiver<(NodeId, PaxosMsg)>,
        mut client_rx: mpsc::Receiver<ClientCall>,
        mut pages_rx: mpsc::Receiver<PageRequest>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), NodeError> {
        tokio::pin!(shutdown);
        let mut snap_rx = self
            .snap_rx
            .take()
            .ok_or_else(|| NodeError::Internal("core started twice".into()))?;
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first step happens at once: it starts the election timer.
        self.inputs.push(Input::Tick);
        let result = loop {
            if self.inputs.is_empty() {
                let deadline = self
                    .composite
                    .paxos()
                    .next_deadline()
                    .map(|at| self.start + Duration::from_millis(at.0));
                let timer = async {
                    match deadline {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = &mut shutdown => break Ok(()),
                    msg = peer_rx.recv() => match msg {
                        Some((from, msg)) => self.inputs.push(Input::Peer { from, msg }),
                        None => break Err(NodeError::Internal("peer transport stopped".into())),
                    },
                    call = client_rx.recv() => match call {
                        Some(call) => self.on_call(call),
                        None => break Err(NodeError::Internal("client port stopped".into())),
                    },
                    () = timer => self.inputs.push(Input::Tick),
                    Some(event) = snap_rx.recv() => self.on_snapshot_event(event),
                    _ = housekeeping.tick() => self.housekeeping(),
                    Some(page) = pages_rx.recv() => {
                        let _ = page.send(self.render_metrics());
                    }
                }
            }
            // Take whatever else is ready, so one sync covers it all.
            while self.inputs.len() < INPUTS_PER_ROUND {
                if let Ok((from, msg)) = peer_rx.try_recv() {
                    self.inputs.push(Input::Peer { from, msg });
                } else if let Ok(call) = client_rx.try_recv() {
                    self.on_call(call);
                } else {
                    break;
                }
            }
            if let Err(e) = self.round().await {
                break Err(e);
            }
        };
        if let Err(e) = &result {
            error!(replica = self.me.0, error = %e, "replica stopping on a fatal error");
        }
        if let Some(batch) = self.planner.take_held() {
            if result.is_ok() {
                if let Err(e) = self.persist(batch).await {
                    warn!(replica = self.me.0, error = %e, "cannot record the chosen watermark at stop");
                }
            }
        }
        let mut effects = Vec::new();
        self.composite.stop(self.now(), &mut effects);
        self.effects(effects);
        self.transport.shutdown().await;
        result
    }

    /// Steps every queued input, then executes the actions as [`Planner`] orders them:
    /// early sends, one merged sync, then the rest in order.
    async fn round(&mut self) -> Result<(), NodeError> {
        let now = self.now();
        let mut inputs = std::mem::take(&mut self.inputs);
        inputs.extend(self.composite.take_queued());
        for input in inputs {
            self.composite.step(now, input, &mut self.actions);
        }
        // Under a steady stream of inputs the loop never waits on the timer: tick here so
        // timers still fire.
        if self
            .composite
            .paxos()
            .next_deadline()
            .is_some_and(|d| d <= now)
        {
            self.composite.step(now, Input::Tick, &mut self.actions);
        }
        let plan = self.planner.plan(now, std::mem::take(&mut self.actions));
        for action in plan.early {
            self.execute(action);
        }
        if let Some(batch) = plan.persist {
            self.persist(batch).await?;
        }
        for action in plan.after {
            self.execute(action);
        }
        self.maybe_snapshot();
        self.sync_peers();
        Ok(())
    }

    /// Executes one action of a round's plan (every Persist is merged into its sync).
    fn execute(&mut self, action: Action) {
        let (now, wall) = (self.now(), Self::wall());
        let mut effects = Vec::new();
        match action {
            Action::Persist(_) => {}
            Action::Send { to, msg } => {
                // Loss is tolerated by Paxos; the transport logs drops.
                let _ = self.transport.send(to, msg);
            }
            Action::Deliver { slot, value } => {
                self.metrics.chosen_value(value.commands.len());
                self.composite
                    .deliver(now, wall, slot, &value, &mut effects);
            }
            Action::Rejected { command, reason } => {
                self.composite
                    .rejected(now, wall, &command, &reason, &mut effects);
            }
            Action::Role { role, epoch } => {
                if role == crate::paxos::RoleKind::Candidate {
                    self.metrics.election_started();
                }
                self.role_changed(role, epoch);
                self.composite
                    .role_changed(now, wall, role, epoch, &mut effects);
            }
            Action::FetchSnapshot { from, after } => self.fetch_snapshot(from, after),
        }
        self.effects(effects);
    }

    /// Executes what the composite asked for: replies, and what metrics count.
    pub(super) fn effects(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Reply { call, reply } => self.reply(call, reply),
                Effect::Proposed { request } => self.metrics.proposed(request),
                Effect::OwnApplied { request } => self.metrics.own_applied(request),
                Effect::OwnRejected { request } => self.metrics.forget(request),
                Effect::MastershipEnded => {
                    self.metrics.forget_proposals();
                    // A backup is only read at the master that took it.
                    self.backup = None;
                }
                // Logged by serving itself; observed by the simulator.
                Effect::Expiring { .. } | Effect::LockGranted { .. } => {}
            }
        }
    }

    /// Gives the transport every replica address a membership change taught us.
    fn sync_peers(&mut self) {
        if self.composite.paxos().membership().addrs() == &self.peer_addrs {
            return;
        }
        let addrs = self.composite.paxos().membership().addrs().clone();
        for (id, addr) in &addrs {
            if self.peer_addrs.get(id) == Some(addr) || *id == self.me {
                continue;
            }
            let endpoint =
                chubby_protocol::cell::config::join_host_port(&addr.host, addr.peer_port);
            match std::net::ToSocketAddrs::to_socket_addrs(&endpoint).map(|mut a| a.next()) {
                Ok(Some(sock)) => {
                    info!(replica = self.me.0, peer = id.0, addr = %endpoint, "peer address learned from a membership change");
                    self.transport.add_peer(
                        *id,
                        PeerAddr {
                            addr: sock,
                            server_name: addr.host.clone(),
                        },
                    );
                }
                Ok(None) | Err(_) => {
                    warn!(replica = self.me.0, peer = id.0, addr = %endpoint, "cannot resolve a new member's address");
                }
            }
        }
        self.peer_addrs = addrs;
    }

    async fn persist(&mut self, batch: PersistBatch) -> Result<(), NodeError> {
        let mut storage = self
            .storage
            .take()
            .ok_or_else(|| NodeError::Internal("store lost by an earlier failure".into()))?;
        let since = std::time::Instant::now();
        let chosen = batch.chosen_through;
        let (storage, result) = tokio::task::spawn_blocking(move || {
            let result = storage.persist(&batch);
            (storage, result)
        })
        .await
        .map_err(|e| NodeError::Internal(format!("storage thread: {e}")))?;
        self.storage = Some(storage);
        self.metrics.synced(since);
        result.map_err(NodeError::Storage)?;
        if let Some(chosen) = chosen {
            self.durable_chosen = self.durable_chosen.max(chosen);
        }
        Ok(())
    }

    // ---- Client calls (the rest is in calls.rs). ----

    /// `chubby admin add-replica` / `remove-replica` (see [`Composite::change_members`]).
    pub(super) fn change_members(
        &mut self,
        principal: &str,
        add: Option<MemberAddr>,
        remove: Option<NodeId>,
    ) -> Result<(), CallError> {
        let now = self.now();
        self.composite
            .change_members(now, principal, add, remove, &mut self.actions)
    }

    // ---- Housekeeping. ----

    fn housekeeping(&mut self) {
        let mut effects = Vec::new();
        self.composite.tick(self.now(), Self::wall(), &mut effects);
        self.effects(effects);
    }
}
